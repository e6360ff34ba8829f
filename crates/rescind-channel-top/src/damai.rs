//! Damai ticketing: `alibaba.damai.yuntoc.order.cancellockstock`, used as the
//! stock-release step after a cancel.

use crate::client::{paced_parts, TopClient};
use crate::config::DamaiConfig;
use crate::envelope::text_of;
use crate::session::{attribute, credentials_error, AccountSessions};
use crate::Error;
use async_trait::async_trait;
use rescind_core::{ChannelError, Clock, ErrorClass, PermanentReason, ReleaseStock, StockLockRef};
use rescind_wire::credentials::{Credentials, CredentialsError};
use rescind_wire::flow::{AppKeyLimiter, AppKeyLimiters};
use rescind_wire::sign::{DamaiHeadFields, Secret};
use rescind_wire::transport::Transport;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `result.head.return_code` values (assumed) → rescind; `None` is success.
/// Any other code is Permanent(Other), its code kept.
pub const DAMAI_RETURN_CODES: &[(&str, Option<ErrorClass>)] = &[
    ("0", None),
    ("1001", Some(ErrorClass::AlreadyDone)),
    (
        "1002",
        Some(ErrorClass::Permanent(PermanentReason::NotFound)),
    ),
    ("1003", Some(ErrorClass::Permanent(PermanentReason::Auth))),
];

/// Check the `result` of a cancel-lock-stock response by its
/// `head.return_code`; a missing head is in doubt (the effect is unknown).
pub fn check_damai_result(response: &Value, method: &str) -> Result<(), ChannelError> {
    let head = response.get("result").and_then(|r| r.get("head"));
    let Some(code) = head.and_then(|h| h.get("return_code")).and_then(text_of) else {
        return Err(ChannelError::in_doubt(format!(
            "malformed {method} response: no result.head.return_code"
        )));
    };
    let desc = head
        .and_then(|h| h.get("return_desc"))
        .and_then(text_of)
        .unwrap_or_default();
    let class = DAMAI_RETURN_CODES
        .iter()
        .find(|(k, _)| *k == code)
        .map(|(_, c)| c.clone())
        .unwrap_or(Some(ErrorClass::Permanent(PermanentReason::Other)));
    match class {
        None => Ok(()),
        Some(class) => {
            let hint = if class == ErrorClass::Permanent(PermanentReason::Auth) {
                " (check supplier_key, supplier_secret and the head signer)"
            } else {
                ""
            };
            Err(
                ChannelError::new(class, format!("{method} returned {code}: {desc}{hint}"))
                    .with_codes(Some(code), None),
            )
        }
    }
}

/// The Damai channel: [`ReleaseStock`] by cancel-lock-stock. The lock id is
/// Damai's order id. Releasing twice answers `AlreadyDone`.
///
/// With [`DamaiChannel::with_credentials`], a release for an account uses
/// that account's supplier key and secret and its TOP session, each falling
/// back to the configured one when the account holds none.
pub struct DamaiChannel {
    client: TopClient,
    config: DamaiConfig,
    seq: AtomicU64,
    accounts: Option<AccountSessions>,
}

impl std::fmt::Debug for DamaiChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DamaiChannel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DamaiChannel {
    /// The channel over `transport`, with timestamps and `msg_id`s from `clock`.
    pub fn new(
        config: DamaiConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let client = TopClient::new(config.gateway.clone(), transport, clock)?;
        Ok(DamaiChannel {
            client,
            config,
            seq: AtomicU64::new(0),
            accounts: None,
        })
    }

    /// Resolve each account's supplier credentials and session from
    /// `credentials`, asked under the channel name `channel` (see
    /// [`crate::TbcChannel::with_credentials`]).
    pub fn with_credentials(
        mut self,
        credentials: Arc<dyn Credentials>,
        channel: impl Into<String>,
        refresh_margin_ms: u64,
    ) -> Self {
        self.accounts = Some(AccountSessions::new(
            credentials,
            channel,
            refresh_margin_ms,
        ));
        self
    }

    /// Release a stock lock for `account` (its credentials; `None`: the
    /// configured ones).
    pub async fn release_stock_as(
        &self,
        lock: &StockLockRef,
        account: Option<&str>,
    ) -> Result<(), ChannelError> {
        let method = self.config.method.as_str();
        let (Some(account), Some(sessions)) = (account, &self.accounts) else {
            let param = self.cancel_param(lock.lock_id.as_str());
            let response = self
                .client
                .call_as(
                    method,
                    &[("param_cancel_stock_lock_request", &param)],
                    account,
                )
                .await?;
            return check_damai_result(&response, method);
        };
        let creds = sessions.credentials();
        let supplier = match creds.damai_supplier(sessions.channel(), account).await {
            Ok(s) => Some(s),
            Err(CredentialsError::Missing { .. }) => None,
            Err(e) => return Err(credentials_error(account, strip_account(&e))),
        };
        let session = match creds.top_session(sessions.channel(), account).await {
            Ok(_) => Some(sessions.session(&self.client, account).await?),
            Err(CredentialsError::Missing { .. }) => self.config.gateway.session.clone(),
            Err(e) => return Err(credentials_error(account, strip_account(&e))),
        };
        let param = match &supplier {
            Some(s) => {
                self.cancel_param_with(lock.lock_id.as_str(), &s.supplier_key, &s.supplier_secret)
            }
            None => self.cancel_param(lock.lock_id.as_str()),
        };
        let response = self
            .client
            .call_with_session(
                method,
                &[("param_cancel_stock_lock_request", &param)],
                session.as_ref(),
                Some(account),
            )
            .await
            .map_err(|e| attribute(account, e))?;
        check_damai_result(&response, method).map_err(|e| attribute(account, e))
    }

    /// The channel on reqwest with the configured timeout and retry layers,
    /// paced by its app key's limiter in the process-wide registry
    /// ([`AppKeyLimiters::global`]), on the system clock.
    pub fn connect(config: DamaiConfig) -> Result<Self, Error> {
        Self::connect_with(config, AppKeyLimiters::global())
    }

    /// As `connect`, paced by the app key's limiter in `limiters` (shared
    /// with every other channel on that app key that uses the registry).
    pub fn connect_with(config: DamaiConfig, limiters: &AppKeyLimiters) -> Result<Self, Error> {
        let (transport, clock, limiter) = paced_parts(&config.gateway, limiters)?;
        Ok(Self::new(config, transport, clock)?.with_limiter(limiter))
    }

    /// Pace calls by `limiter`, the app key's shared limiter (see
    /// [`TopClient::with_limiter`]).
    pub fn with_limiter(mut self, limiter: Arc<AppKeyLimiter>) -> Self {
        self.client = self.client.with_limiter(limiter);
        self
    }

    /// The underlying gateway client.
    pub fn client(&self) -> &TopClient {
        &self.client
    }

    /// The `param_cancel_stock_lock_request` JSON for `order_id`, with a fresh
    /// `msg_id`, the clock's `time_stamp` (epoch ms) and the signed head. It
    /// holds the supplier secret: never log it.
    pub fn cancel_param(&self, order_id: &str) -> String {
        let c = &self.config;
        self.cancel_param_with(order_id, &c.supplier_key, &c.supplier_secret)
    }

    /// [`DamaiChannel::cancel_param`] with these supplier credentials. It
    /// holds the supplier secret: never log it.
    pub fn cancel_param_with(
        &self,
        order_id: &str,
        supplier_key: &str,
        supplier_secret: &Secret,
    ) -> String {
        let c = &self.config;
        let time_stamp = self.client.clock().now_ms().to_string();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let msg_id = format!("{time_stamp}-{}-{n}", std::process::id());
        let signed = c.head_signer.sign(
            &DamaiHeadFields {
                msg_id: &msg_id,
                supplier_key,
                time_stamp: &time_stamp,
                version: &c.version,
            },
            supplier_secret,
        );
        json!({
            "cancel_stock_lock_request_body": {"cancel_stock_lock_req_param": {"order_id": order_id}},
            "head": {
                "msg_id": msg_id,
                "signed": signed,
                "supplier_key": supplier_key,
                "supplier_secret": supplier_secret.expose(),
                "time_stamp": time_stamp,
                "version": c.version,
            }
        })
        .to_string()
    }
}

/// A provider error's words after its leading `account X: `.
fn strip_account(e: &CredentialsError) -> String {
    let text = e.to_string();
    let prefix = format!("account {}: ", e.account());
    text.strip_prefix(&prefix)
        .map(str::to_owned)
        .unwrap_or(text)
}

#[async_trait]
impl ReleaseStock for DamaiChannel {
    async fn release_stock(
        &self,
        lock: &StockLockRef,
        account: Option<&rescind_core::AccountId>,
    ) -> Result<(), ChannelError> {
        self.release_stock_as(lock, account.map(rescind_core::AccountId::as_str))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::Applied;

    #[test]
    fn return_codes() {
        let m = "alibaba.damai.yuntoc.order.cancellockstock";
        let body = |code: &str| json!({"result": {"cancel_stock_lock_result_body": {"order_id": "1"}, "head": {"return_code": code, "return_desc": "d"}}});
        assert!(check_damai_result(&body("0"), m).is_ok());
        let cases: &[(&str, ErrorClass)] = &[
            ("1001", ErrorClass::AlreadyDone),
            ("1002", ErrorClass::Permanent(PermanentReason::NotFound)),
            ("1003", ErrorClass::Permanent(PermanentReason::Auth)),
            ("77", ErrorClass::Permanent(PermanentReason::Other)),
        ];
        for (code, class) in cases {
            let e = check_damai_result(&body(code), m).unwrap_err();
            assert_eq!(&e.class, class, "{code}");
            assert_eq!(e.code.as_deref(), Some(*code));
        }
        // Numeric code, as a lenient server might send it.
        let v = json!({"result": {"head": {"return_code": 0}}});
        assert!(check_damai_result(&v, m).is_ok());
        for bad in [
            json!({}),
            json!({"result": {}}),
            json!({"result": {"head": {"return_desc": "x"}}}),
        ] {
            let e = check_damai_result(&bad, m).unwrap_err();
            assert_eq!(
                e.class,
                ErrorClass::Retryable {
                    wait_ms: None,
                    applied: Applied::Maybe
                },
                "{bad}"
            );
        }
    }
}
