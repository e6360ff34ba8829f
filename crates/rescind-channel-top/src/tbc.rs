//! Tmall TBC: cancel before payment (`tmall.tbc.order.cancel`), cancel after
//! payment and order lookup (method names assumed, configurable).

use crate::classify::check_tbc_result;
use crate::client::{paced_parts, TopClient};
use crate::config::TopConfig;
use crate::envelope::{kind, text_of};
use crate::session::{attribute, AccountSessions};
use crate::Error;
use async_trait::async_trait;
use rescind_core::{
    AccountId, CancelOrder, CancelOutcome, CancelRequest, ChannelError, Clock, OrderLookup,
    OrderRef, OrderState, OrderStatus, PermanentReason, RefundId, RefundOpened, RefundState,
    RefundStatus,
};
use rescind_wire::credentials::Credentials;
use rescind_wire::flow::{AppKeyLimiter, AppKeyLimiters};
use rescind_wire::transport::Transport;
use serde_json::Value;
use std::sync::Arc;

/// What a TBC order status says, before any refund on it is considered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TbcOrderClass {
    /// Waiting for the buyer's payment.
    PendingPay,
    /// Paid (shipped or not, finished or not): Paid, or Refunding while a
    /// refund is open, or Refunded once its refund completed.
    Paid,
    /// Closed before payment.
    ClosedUnpaid,
    /// Closed after a full refund (needs the `refund_id`).
    ClosedRefunded,
}

/// TBC order statuses (assumed: the Taobao trade vocabulary) → rescind.
pub const TBC_ORDER_STATUSES: &[(&str, TbcOrderClass)] = &[
    ("WAIT_BUYER_PAY", TbcOrderClass::PendingPay),
    ("WAIT_SELLER_SEND_GOODS", TbcOrderClass::Paid),
    ("WAIT_BUYER_CONFIRM_GOODS", TbcOrderClass::Paid),
    ("TRADE_FINISHED", TbcOrderClass::Paid),
    ("TRADE_CLOSED_BY_TAOBAO", TbcOrderClass::ClosedUnpaid),
    ("TRADE_CLOSED", TbcOrderClass::ClosedRefunded),
];

/// Taobao refund statuses → rescind's refund states.
pub const TBC_REFUND_STATUSES: &[(&str, RefundState)] = &[
    ("WAIT_SELLER_AGREE", RefundState::Requested),
    ("WAIT_BUYER_RETURN_GOODS", RefundState::Requested),
    ("WAIT_SELLER_CONFIRM_GOODS", RefundState::Requested),
    ("SELLER_REFUSE_BUYER", RefundState::Refused { reason: None }),
    ("CLOSED", RefundState::Withdrawn),
    ("SUCCESS", RefundState::Completed),
];

fn malformed(message: String) -> ChannelError {
    ChannelError::permanent(PermanentReason::MalformedResponse, message)
}

/// Map a TBC refund status; an unknown one is an error naming it.
pub fn map_tbc_refund_status(status: &str) -> Result<RefundState, ChannelError> {
    TBC_REFUND_STATUSES
        .iter()
        .find(|(k, _)| *k == status)
        .map(|(_, s)| s.clone())
        .ok_or_else(|| malformed(format!("unknown TBC refund status {status:?}")))
}

/// Map a TBC order status, with the order's refund if it has one; an
/// unknown status is an error naming it.
pub fn map_tbc_order_status(
    status: &str,
    refund: Option<(&str, &str)>,
) -> Result<OrderState, ChannelError> {
    let class = TBC_ORDER_STATUSES
        .iter()
        .find(|(k, _)| *k == status)
        .map(|(_, c)| *c)
        .ok_or_else(|| malformed(format!("unknown TBC order status {status:?}")))?;
    let refund = match refund {
        Some((id, rs)) => Some((RefundId::from(id), map_tbc_refund_status(rs)?)),
        None => None,
    };
    Ok(match (class, refund) {
        (TbcOrderClass::PendingPay, _) => OrderState::PendingPay,
        (TbcOrderClass::ClosedUnpaid, _) => OrderState::Cancelled,
        (TbcOrderClass::Paid, None) => OrderState::Paid,
        (TbcOrderClass::Paid, Some((refund_id, RefundState::Requested))) => {
            OrderState::Refunding { refund_id }
        }
        (TbcOrderClass::Paid, Some((refund_id, RefundState::Completed))) => {
            OrderState::Refunded { refund_id }
        }
        (TbcOrderClass::Paid, Some((_, RefundState::Withdrawn | RefundState::Refused { .. }))) => {
            OrderState::Paid
        }
        (TbcOrderClass::ClosedRefunded, Some((refund_id, _))) => OrderState::Refunded { refund_id },
        (TbcOrderClass::ClosedRefunded, None) => {
            return Err(malformed(format!(
                "TBC order status {status:?} without a refund_id"
            )))
        }
    })
}

/// One TBC order as the lookup reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TbcOrder {
    /// `out_order_no`.
    pub out_order_no: String,
    /// `status`, as TBC spells it.
    pub status: String,
    /// `refund_id` and `refund_status`, when a refund exists.
    pub refund: Option<(String, String)>,
}

impl TbcOrder {
    /// Read the `order` object of a lookup result.
    pub fn from_result(result: &Value, method: &str) -> Result<Self, ChannelError> {
        let order = result
            .get("order")
            .filter(|o| o.is_object())
            .ok_or_else(|| malformed(format!("{method}: result has no order object")))?;
        let field = |name: &str| order.get(name).and_then(text_of);
        let status = field("status").ok_or_else(|| {
            malformed(format!(
                "{method}: order.status is {}",
                order.get("status").map(kind).unwrap_or("missing")
            ))
        })?;
        let refund = match (field("refund_id"), field("refund_status")) {
            (Some(id), Some(rs)) => Some((id, rs)),
            (None, None) => None,
            (Some(id), None) => {
                return Err(malformed(format!(
                    "{method}: refund {id} without refund_status"
                )))
            }
            (None, Some(rs)) => {
                return Err(malformed(format!(
                    "{method}: refund_status {rs:?} without refund_id"
                )))
            }
        };
        Ok(TbcOrder {
            out_order_no: field("out_order_no").unwrap_or_default(),
            status,
            refund,
        })
    }

    /// The order's state in rescind's terms.
    pub fn state(&self) -> Result<OrderState, ChannelError> {
        map_tbc_order_status(
            &self.status,
            self.refund.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        )
    }
}

/// The Tmall TBC channel: [`CancelOrder`] and [`OrderLookup`].
///
/// An already-cancelled order answers `AlreadyDone`; a paid one
/// `Conflict(PaidMeanwhile)`; a lost reply is in doubt, and the engine resolves
/// it with [`OrderLookup::order_status`] before cancelling again.
///
/// With [`TbcChannel::with_credentials`], a call for an account carries that
/// account's session (see [`crate::session`]); a call without an account
/// carries the configured `gateway.session`.
#[derive(Debug)]
pub struct TbcChannel {
    client: TopClient,
    config: TopConfig,
    accounts: Option<AccountSessions>,
}

impl TbcChannel {
    /// The channel over `transport` (layered already, or the simulator's),
    /// with timestamps from `clock`.
    pub fn new(
        config: TopConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let client = TopClient::new(config.gateway.clone(), transport, clock)?;
        Ok(TbcChannel {
            client,
            config,
            accounts: None,
        })
    }

    /// Resolve each account's session from `credentials`, asked under the
    /// channel name `channel`; a session expiring within `refresh_margin_ms`
    /// is refreshed before the call when a refresh token is held.
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

    /// The account sessions, when a credentials provider is set.
    pub fn account_sessions(&self) -> Option<&AccountSessions> {
        self.accounts.as_ref()
    }

    /// The channel on reqwest with the configured timeout and retry layers,
    /// paced by its app key's limiter in the process-wide registry
    /// ([`AppKeyLimiters::global`]), on the system clock.
    pub fn connect(config: TopConfig) -> Result<Self, Error> {
        Self::connect_with(config, AppKeyLimiters::global())
    }

    /// As `connect`, paced by the app key's limiter in `limiters` (shared
    /// with every other channel on that app key that uses the registry).
    pub fn connect_with(config: TopConfig, limiters: &AppKeyLimiters) -> Result<Self, Error> {
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

    /// The configuration (secrets print as `***`).
    pub fn config(&self) -> &TopConfig {
        &self.config
    }

    async fn call_result(
        &self,
        method: &str,
        params: &[(&str, &str)],
        account: Option<&str>,
    ) -> Result<Value, ChannelError> {
        let response = match (account, &self.accounts) {
            (Some(account), Some(sessions)) => {
                let session = sessions.session(&self.client, account).await?;
                self.client
                    .call_with_session(method, params, Some(&session), Some(account))
                    .await
                    .map_err(|e| attribute(account, e))?
            }
            _ => self.client.call_as(method, params, account).await?,
        };
        check_tbc_result(&response, method).cloned()
    }

    /// Look an order up (with the configured session).
    pub async fn get_order(&self, order: &OrderRef) -> Result<TbcOrder, ChannelError> {
        self.get_order_as(order, None).await
    }

    /// Look an order up for `account` (its session; `None`: the configured one).
    pub async fn get_order_as(
        &self,
        order: &OrderRef,
        account: Option<&str>,
    ) -> Result<TbcOrder, ChannelError> {
        let method = self.config.order_get_method.as_str();
        let result = self
            .call_result(
                method,
                &[
                    ("out_order_no", order.order_id.as_str()),
                    ("source_site", &self.config.source_site),
                ],
                account,
            )
            .await?;
        TbcOrder::from_result(&result, method)
    }

    /// Cancel an unpaid order for `account` (its session; `None`: the configured one).
    pub async fn cancel_unpaid_as(
        &self,
        req: &CancelRequest,
        account: Option<&str>,
    ) -> Result<CancelOutcome, ChannelError> {
        self.call_result(
            &self.config.cancel_method,
            &[
                ("out_order_no", req.order.order_id.as_str()),
                ("source_site", &self.config.source_site),
            ],
            account,
        )
        .await?;
        Ok(CancelOutcome { already: false })
    }

    /// Cancel a paid order for `account` (its session; `None`: the configured one).
    pub async fn cancel_paid_as(
        &self,
        req: &CancelRequest,
        account: Option<&str>,
    ) -> Result<RefundOpened, ChannelError> {
        let method = self.config.paid_cancel_method.as_str();
        let reason = req.reason.as_deref().unwrap_or("");
        let result = self
            .call_result(
                method,
                &[
                    ("out_order_no", req.order.order_id.as_str()),
                    ("source_site", &self.config.source_site),
                    ("reason", reason),
                ],
                account,
            )
            .await?;
        match result.get("refund_id").and_then(text_of) {
            Some(id) => Ok(RefundOpened {
                refund_id: RefundId(id),
            }),
            // It succeeded but we cannot tell which refund: the lookup can.
            None => Err(ChannelError::in_doubt(format!(
                "{method} succeeded without a refund_id"
            ))),
        }
    }

    /// An order's status for `account`.
    pub async fn order_status_as(
        &self,
        order: &OrderRef,
        account: Option<&str>,
    ) -> Result<OrderStatus, ChannelError> {
        let o = self.get_order_as(order, account).await?;
        Ok(OrderStatus {
            state: o.state()?,
            upstream: o.status,
        })
    }

    /// A refund's status for `account`.
    pub async fn refund_status_as(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&str>,
    ) -> Result<RefundStatus, ChannelError> {
        let o = self.get_order_as(order, account).await?;
        match &o.refund {
            Some((id, status)) if id == refund_id.as_str() => Ok(RefundStatus {
                state: map_tbc_refund_status(status)?,
                upstream: status.clone(),
            }),
            Some((id, _)) => Err(ChannelError::permanent(
                PermanentReason::NotFound,
                format!("order {order} has refund {id}, not {refund_id}"),
            )),
            None => Err(ChannelError::permanent(
                PermanentReason::NotFound,
                format!("order {order} has no refund (looking for {refund_id})"),
            )),
        }
    }
}

fn account_str(account: Option<&AccountId>) -> Option<&str> {
    account.map(AccountId::as_str)
}

#[async_trait]
impl CancelOrder for TbcChannel {
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError> {
        self.cancel_unpaid_as(req, account_str(req.account.as_ref()))
            .await
    }

    async fn cancel_paid(&self, req: &CancelRequest) -> Result<RefundOpened, ChannelError> {
        self.cancel_paid_as(req, account_str(req.account.as_ref()))
            .await
    }
}

#[async_trait]
impl OrderLookup for TbcChannel {
    async fn order_status(
        &self,
        order: &OrderRef,
        account: Option<&AccountId>,
    ) -> Result<OrderStatus, ChannelError> {
        self.order_status_as(order, account_str(account)).await
    }

    async fn refund_status(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&AccountId>,
    ) -> Result<RefundStatus, ChannelError> {
        self.refund_status_as(order, refund_id, account_str(account))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (status, refund, expected state or words of the error).
    type Case = (
        &'static str,
        Option<(&'static str, &'static str)>,
        Result<OrderState, &'static str>,
    );

    #[test]
    fn status_table() {
        let r = |s: &str| RefundId::from(s);
        let cases: &[Case] = &[
            ("WAIT_BUYER_PAY", None, Ok(OrderState::PendingPay)),
            ("WAIT_SELLER_SEND_GOODS", None, Ok(OrderState::Paid)),
            (
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", "WAIT_SELLER_AGREE")),
                Ok(OrderState::Refunding { refund_id: r("R1") }),
            ),
            (
                "WAIT_BUYER_CONFIRM_GOODS",
                Some(("R1", "WAIT_BUYER_RETURN_GOODS")),
                Ok(OrderState::Refunding { refund_id: r("R1") }),
            ),
            (
                "WAIT_BUYER_CONFIRM_GOODS",
                Some(("R1", "CLOSED")),
                Ok(OrderState::Paid),
            ),
            (
                "TRADE_FINISHED",
                Some(("R1", "SELLER_REFUSE_BUYER")),
                Ok(OrderState::Paid),
            ),
            ("TRADE_FINISHED", None, Ok(OrderState::Paid)),
            (
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", "SUCCESS")),
                Ok(OrderState::Refunded { refund_id: r("R1") }),
            ),
            ("TRADE_CLOSED_BY_TAOBAO", None, Ok(OrderState::Cancelled)),
            (
                "TRADE_CLOSED",
                Some(("R9", "SUCCESS")),
                Ok(OrderState::Refunded { refund_id: r("R9") }),
            ),
            ("TRADE_CLOSED", None, Err("without a refund_id")),
            ("FOO", None, Err("unknown TBC order status \"FOO\"")),
            (
                "WAIT_SELLER_SEND_GOODS",
                Some(("R1", "BAR")),
                Err("unknown TBC refund status \"BAR\""),
            ),
        ];
        for (status, refund, expected) in cases {
            match (map_tbc_order_status(status, *refund), expected) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{status} {refund:?}"),
                (Err(e), Err(words)) => {
                    assert_eq!(
                        e.class,
                        rescind_core::ErrorClass::Permanent(PermanentReason::MalformedResponse)
                    );
                    assert!(e.message.contains(words), "{e}");
                }
                (got, want) => panic!("{status} {refund:?}: got {got:?}, want {want:?}"),
            }
        }
        // Every refund status in the table maps.
        for (s, state) in TBC_REFUND_STATUSES {
            assert_eq!(&map_tbc_refund_status(s).unwrap(), state);
        }
    }

    #[test]
    fn lookup_result_shapes() {
        let v: Value = serde_json::json!({"success": true, "order": {"out_order_no": "O1", "status": "WAIT_SELLER_SEND_GOODS", "refund_id": "R1", "refund_status": "WAIT_SELLER_AGREE"}});
        let o = TbcOrder::from_result(&v, "m").unwrap();
        assert_eq!(
            o.state().unwrap(),
            OrderState::Refunding {
                refund_id: RefundId::from("R1")
            }
        );
        for bad in [
            serde_json::json!({"success": true}),
            serde_json::json!({"success": true, "order": {"status": {}}}),
            serde_json::json!({"success": true, "order": {"status": "TRADE_FINISHED", "refund_id": "R1"}}),
            serde_json::json!({"success": true, "order": "x"}),
        ] {
            assert!(TbcOrder::from_result(&bad, "m").is_err(), "{bad}");
        }
    }
}
