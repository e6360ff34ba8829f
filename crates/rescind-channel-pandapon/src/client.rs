//! The PandaPon OpenAPI client: signed headers, envelopes, typed operations.

use crate::config::PandaponConfig;
use crate::envelope::{classify, classify_transport, malformed, Envelope};
use crate::json::{exact_opt, exact_req};
use crate::Result;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rescind_core::{AccountId, ChannelError, Clock, PermanentReason, Rng, SplitMix64, TokioClock};
use rescind_wire::credentials::{attribute, provider_error, Credentials};
use rescind_wire::sign::{PandaponSigner, Secret, SortedMd5Signer};
use rescind_wire::transport::{layered_transport, HttpRequest, Transport};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;

/// Characters kept as-is in a path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A PandaPon OpenAPI client. Cheap to share (`Arc`); the two channels
/// ([`crate::PandaponTaobao`], [`crate::Pandapon1688`]) wrap one client.
///
/// Every request carries `access-key`, `nonce-str` (unless disabled),
/// `timestamp` (epoch ms from the [`Clock`]), `user-id` and `signature`
/// computed by the pluggable [`PandaponSigner`] (default: the assumed
/// [`SortedMd5Signer`]). Headers are never logged.
#[derive(Clone)]
pub struct PandaponClient {
    transport: Arc<dyn Transport>,
    clock: Arc<dyn Clock>,
    signer: Arc<dyn PandaponSigner>,
    rng: Arc<dyn Rng>,
    config: PandaponConfig,
    /// Where per-account keys come from, and the channel name to ask under.
    accounts: Option<(Arc<dyn Credentials>, String)>,
    /// The account this client signs for ([`PandaponClient::as_account`]);
    /// refusals of its key name it.
    acting_for: Option<String>,
}

impl fmt::Debug for PandaponClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `config` prints its secret as `***`.
        f.debug_struct("PandaponClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Take-once random seed for the default nonce generator.
fn random_seed() -> u64 {
    let v = uuid::Uuid::new_v4().as_u128();
    (v >> 64) as u64 ^ v as u64
}

impl PandaponClient {
    /// A client sending through `transport`, with time from `clock`. The
    /// transport is used as given: wrap it in the `rescind_wire` layers you
    /// want (the simulator's in-process transport and virtual time plug in here).
    pub fn new(
        config: PandaponConfig,
        transport: Arc<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        config.validate()?;
        let mut config = config;
        config.base_url = config.base_url.trim().trim_end_matches('/').to_owned();
        Ok(PandaponClient {
            transport,
            clock,
            signer: Arc::new(SortedMd5Signer),
            rng: Arc::new(SplitMix64::new(random_seed())),
            config,
            accounts: None,
            acting_for: None,
        })
    }

    /// Sign each account's calls with its own PandaPon key (access key,
    /// secret, user id), resolved from `credentials` under the channel name
    /// `channel` at call time ([`PandaponClient::as_account`]). Calls without
    /// an account keep the configured key.
    pub fn with_credentials(mut self, credentials: Arc<dyn Credentials>, channel: &str) -> Self {
        self.accounts = Some((credentials, channel.to_owned()));
        self
    }

    /// The client to call with for `account`: this one when there is no
    /// account or no credentials provider; otherwise a copy signing with the
    /// account's key, whose refusals (401) name the account. A key the
    /// provider cannot give (unknown account, revoked, missing) is a
    /// `credentials: account X: …` error: the engine parks the saga stuck,
    /// never failed, until the accounts are fixed and reloaded.
    pub async fn as_account(
        self: &Arc<Self>,
        account: Option<&AccountId>,
    ) -> std::result::Result<Arc<Self>, ChannelError> {
        let (Some(account), Some((credentials, channel))) = (account, &self.accounts) else {
            return Ok(self.clone());
        };
        let key = credentials
            .pandapon_key(channel, account.as_str())
            .await
            .map_err(|e| provider_error(&e))?;
        let mut client = (**self).clone();
        client.config.access_key = key.access_key;
        client.config.secret = key.secret;
        client.config.user_id = key.user_id;
        client.acting_for = Some(account.as_str().to_owned());
        Ok(Arc::new(client))
    }

    /// A production client: reqwest with the configured timeouts, wrapped in
    /// the timeout, rate-limit and retry(not sent) layers of `rescind_wire`
    /// (`config.transport`), on the system clock.
    pub fn connect(config: PandaponConfig) -> Result<Self> {
        config.validate()?;
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::system());
        let transport = layered_transport(&config.transport, clock.clone())
            .map_err(|e| crate::Error::Transport(e.to_string()))?;
        Self::new(config, transport, clock)
    }

    /// Use another signer (when the real formula is known).
    pub fn with_signer(mut self, signer: Arc<dyn PandaponSigner>) -> Self {
        self.signer = signer;
        self
    }

    /// Draw nonces from `rng` (deterministic simulation).
    pub fn with_rng(mut self, rng: Arc<dyn Rng>) -> Self {
        self.rng = rng;
        self
    }

    /// The configuration (secret redacted in `Debug`).
    pub fn config(&self) -> &PandaponConfig {
        &self.config
    }

    fn nonce(&self) -> String {
        format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64())
    }

    /// The authentication headers for one request at `now_ms`.
    pub fn auth_headers(&self, now_ms: u64, nonce: Option<&str>) -> Vec<(String, String)> {
        let ts = now_ms.to_string();
        let mut signed: Vec<(&str, &str)> = vec![
            ("access-key", self.config.access_key.expose()),
            ("timestamp", &ts),
        ];
        if let Some(n) = nonce {
            signed.push(("nonce-str", n));
        }
        let signature = self.signer.sign(&signed, &self.config.secret);
        let mut h: Vec<(String, String)> = signed
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        h.push(("user-id".into(), self.config.user_id.clone()));
        h.push(("signature".into(), signature));
        h
    }

    fn url(&self, template: &str, placeholder: &str, id: &str) -> String {
        let seg = utf8_percent_encode(id, SEGMENT).to_string();
        format!(
            "{}{}",
            self.config.base_url,
            template.replace(placeholder, &seg)
        )
    }

    /// Send one signed request and classify its reply. `op` names the
    /// operation in logs and errors.
    pub async fn call(
        &self,
        op: &str,
        method: http::Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> std::result::Result<Envelope, ChannelError> {
        let nonce = self.config.send_nonce.then(|| self.nonce());
        let mut headers = self.auth_headers(self.clock.now_ms(), nonce.as_deref());
        let body = match body {
            Some(v) => {
                headers.push(("content-type".into(), "application/json".into()));
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let started = self.clock.now_ms();
        let res = self
            .transport
            .send(HttpRequest {
                method,
                url,
                headers,
                body,
            })
            .await;
        let elapsed_ms = self.clock.now_ms().saturating_sub(started);
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                let err = classify_transport(&e);
                tracing::debug!(op, elapsed_ms, error = %err, "pandapon call failed");
                return Err(err);
            }
        };
        let out = classify(resp.status, &resp.body);
        match &out {
            Ok(env) => tracing::debug!(
                op,
                elapsed_ms,
                http_status = resp.status,
                request_id = env.request_id.as_deref().unwrap_or(""),
                "pandapon call ok"
            ),
            Err(e) => {
                tracing::debug!(op, elapsed_ms, http_status = resp.status, error = %e, "pandapon call refused")
            }
        }
        out.map_err(|e| {
            let e = ChannelError {
                message: format!("{op}: {}", e.message),
                ..e
            };
            match &self.acting_for {
                Some(account) => attribute(account, "PandaPon", "access key", e),
                None => e,
            }
        })
    }

    /// Documented: withdraw a Taobao reverse order (`GET …/refund/cancel/{refundId}`).
    /// `cancelSuccess: false` in a 200 envelope is an error, classified by the
    /// refund status the reply reports.
    pub async fn taobao_refund_cancel(
        &self,
        refund_id: &str,
    ) -> std::result::Result<CancelRefundData, ChannelError> {
        let url = self.url(
            &self.config.paths.taobao_refund_cancel,
            "{refundId}",
            refund_id,
        );
        let env = self
            .call("taobao refund cancel", http::Method::GET, url, None)
            .await?;
        let data: CancelRefundData = env.data_as("taobao refund cancel")?;
        match data.cancel_success {
            Some(true) => Ok(data),
            Some(false) => Err(cancel_not_successful(refund_id, &data)),
            // No verdict in a success envelope: we cannot tell; the engine resolves by lookup.
            None => Err(ChannelError::in_doubt(format!(
                "taobao refund cancel {refund_id}: cancelSuccess missing in a 200 reply"
            ))),
        }
    }

    /// Documented: cancel a 1688 order before payment (`POST /v2/alibaba/order/cancel`).
    /// `order_id` must be a decimal integer (it is sent as a JSON integer, exactly).
    pub async fn alibaba_order_cancel(
        &self,
        order_id: &str,
        reason: Option<&str>,
        remark: Option<&str>,
    ) -> std::result::Result<(), ChannelError> {
        let body = alibaba_cancel_body(order_id, reason, remark)?;
        let url = format!(
            "{}{}",
            self.config.base_url, self.config.paths.alibaba_order_cancel
        );
        let env = self
            .call("1688 order cancel", http::Method::POST, url, Some(body))
            .await?;
        match env.data_as::<bool>("1688 order cancel")? {
            true => Ok(()),
            false => Err(ChannelError::permanent(
                PermanentReason::Other,
                format!("1688 order cancel {order_id}: PandaPon answered data=false"),
            )
            .with_codes(Some("200".into()), None)),
        }
    }

    /// Assumed: cancel a Taobao order before payment (`POST /v2/taobao/order/cancel`).
    pub async fn taobao_order_cancel(
        &self,
        order_id: &str,
        reason: Option<&str>,
    ) -> std::result::Result<(), ChannelError> {
        let mut body = serde_json::Map::new();
        body.insert("orderId".into(), order_id.into());
        if let Some(r) = reason {
            body.insert("cancelReason".into(), r.into());
        }
        let url = format!(
            "{}{}",
            self.config.base_url, self.config.paths.taobao_order_cancel
        );
        let env = self
            .call(
                "taobao order cancel",
                http::Method::POST,
                url,
                Some(body.into()),
            )
            .await?;
        match env.data_as::<bool>("taobao order cancel")? {
            true => Ok(()),
            false => Err(ChannelError::permanent(
                PermanentReason::Other,
                format!("taobao order cancel {order_id}: PandaPon answered data=false"),
            )),
        }
    }

    /// Assumed: submit a Taobao reverse order (cancel after payment);
    /// returns the new `refundId`.
    pub async fn taobao_refund_submit(
        &self,
        order_id: &str,
        reason: Option<&str>,
    ) -> std::result::Result<String, ChannelError> {
        let mut body = serde_json::Map::new();
        body.insert("orderId".into(), order_id.into());
        if let Some(r) = reason {
            body.insert("refundReason".into(), r.into());
        }
        let url = format!(
            "{}{}",
            self.config.base_url, self.config.paths.taobao_refund_submit
        );
        let env = self
            .call(
                "taobao refund submit",
                http::Method::POST,
                url,
                Some(body.into()),
            )
            .await?;
        #[derive(Deserialize)]
        struct Submitted {
            #[serde(rename = "refundId", deserialize_with = "exact_req")]
            refund_id: String,
        }
        Ok(env.data_as::<Submitted>("taobao refund submit")?.refund_id)
    }

    /// Assumed: Taobao order detail.
    pub async fn taobao_order_detail(
        &self,
        order_id: &str,
    ) -> std::result::Result<OrderDetail, ChannelError> {
        let url = self.url(
            &self.config.paths.taobao_order_detail,
            "{orderId}",
            order_id,
        );
        let env = self
            .call("taobao order detail", http::Method::GET, url, None)
            .await?;
        env.data_as("taobao order detail")
    }

    /// Assumed: Taobao reverse-order detail.
    pub async fn taobao_refund_detail(
        &self,
        refund_id: &str,
    ) -> std::result::Result<RefundOrder, ChannelError> {
        let url = self.url(
            &self.config.paths.taobao_refund_detail,
            "{refundId}",
            refund_id,
        );
        let env = self
            .call("taobao refund detail", http::Method::GET, url, None)
            .await?;
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "refundOrder")]
            refund_order: RefundOrder,
        }
        Ok(env.data_as::<Detail>("taobao refund detail")?.refund_order)
    }

    /// Assumed: 1688 order detail.
    pub async fn alibaba_order_detail(
        &self,
        order_id: &str,
    ) -> std::result::Result<OrderDetail, ChannelError> {
        let url = self.url(
            &self.config.paths.alibaba_order_detail,
            "{orderId}",
            order_id,
        );
        let env = self
            .call("1688 order detail", http::Method::GET, url, None)
            .await?;
        env.data_as("1688 order detail")
    }

    /// Assumed: 1688 refund detail.
    pub async fn alibaba_refund_detail(
        &self,
        refund_id: &str,
    ) -> std::result::Result<AlibabaRefund, ChannelError> {
        let url = self.url(
            &self.config.paths.alibaba_refund_detail,
            "{refundId}",
            refund_id,
        );
        let env = self
            .call("1688 refund detail", http::Method::GET, url, None)
            .await?;
        env.data_as("1688 refund detail")
    }

    /// The secret, for signers that need it outside `auth_headers` (never log it).
    pub fn secret(&self) -> &Secret {
        &self.config.secret
    }
}

/// The 1688 cancel body: `orderId` as an exact JSON integer.
pub fn alibaba_cancel_body(
    order_id: &str,
    reason: Option<&str>,
    remark: Option<&str>,
) -> std::result::Result<serde_json::Value, ChannelError> {
    let invalid = |why: String| {
        ChannelError::permanent(
            PermanentReason::InvalidRequest,
            format!("1688 order id {:?} {why}", crate::json::clip(order_id)),
        )
    };
    rescind_core::channel::check_decimal_u64(order_id).map_err(invalid)?;
    let id: u64 = order_id
        .parse()
        .map_err(|_| invalid("is not a decimal integer".into()))?;
    let mut body = serde_json::Map::new();
    body.insert("webSite".into(), "1688".into());
    body.insert(
        "orderId".into(),
        serde_json::Value::Number(serde_json::Number::from(id)),
    );
    if let Some(r) = reason {
        body.insert("cancelReason".into(), r.into());
    }
    if let Some(r) = remark {
        body.insert("remark".into(), r.into());
    }
    Ok(body.into())
}

fn cancel_not_successful(refund_id: &str, data: &CancelRefundData) -> ChannelError {
    let status = data
        .refund_order_aggregate
        .as_ref()
        .and_then(|a| a.refund_order.as_ref())
        .and_then(|r| r.refund_status.clone())
        .unwrap_or_default();
    let msg =
        format!("taobao refund cancel {refund_id}: cancelSuccess false (refundStatus {status:?})");
    let err = match crate::status::refund_word(crate::status::Platform::Taobao, &status) {
        Ok(crate::status::RefundWord::Withdrawn) => {
            ChannelError::new(rescind_core::ErrorClass::AlreadyDone, msg)
        }
        Ok(crate::status::RefundWord::Completed) => {
            ChannelError::conflict(rescind_core::Conflict::RefundAlreadyCompleted, msg)
        }
        Ok(crate::status::RefundWord::Refused) => {
            ChannelError::conflict(rescind_core::Conflict::RefundClosed, msg)
        }
        _ => ChannelError::permanent(PermanentReason::Other, msg),
    };
    err.with_codes(Some("cancelSuccess=false".into()), None)
}

/// `data` of the refund withdraw (`CancelRefundOrderVO`); unknown fields ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRefundData {
    /// `distributorId`.
    #[serde(default, deserialize_with = "exact_opt")]
    pub distributor_id: Option<String>,
    /// `currency`.
    #[serde(default)]
    pub currency: Option<String>,
    /// `cancelSuccess`: only `true` is success.
    #[serde(default)]
    pub cancel_success: Option<bool>,
    /// `refundOrderAggregate`.
    #[serde(default)]
    pub refund_order_aggregate: Option<RefundOrderAggregate>,
}

/// `refundOrderAggregate` (only the refund order is read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundOrderAggregate {
    /// `refundOrder`.
    #[serde(default)]
    pub refund_order: Option<RefundOrder>,
}

/// A Taobao reverse order (`refundOrder`); ids kept exact.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundOrder {
    /// `refundId`.
    #[serde(default, deserialize_with = "exact_opt")]
    pub refund_id: Option<String>,
    /// `payOrderId`.
    #[serde(default, deserialize_with = "exact_opt")]
    pub pay_order_id: Option<String>,
    /// `refundStatus` (Taobao refund vocabulary).
    #[serde(default)]
    pub refund_status: Option<String>,
    /// `refundType`.
    #[serde(default, deserialize_with = "exact_opt")]
    pub refund_type: Option<String>,
    /// `refundFee`, as sent (number or string).
    #[serde(default, deserialize_with = "fee_text")]
    pub refund_fee: Option<String>,
    /// `sellerRefuseReason`.
    #[serde(default)]
    pub seller_refuse_reason: Option<String>,
}

/// A fee as exact text: an integer or a decimal (never rounded through `f64`).
fn fee_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    let t = raw.get().trim();
    if t.starts_with('"') {
        serde_json::from_str::<String>(t)
            .map(Some)
            .map_err(serde::de::Error::custom)
    } else if t == "null" {
        Ok(None)
    } else if t.parse::<f64>().is_ok() {
        Ok(Some(t.to_owned()))
    } else {
        Err(serde::de::Error::custom("refundFee is not a number"))
    }
}

/// An order detail (Taobao and 1688 share this shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderDetail {
    /// `orderId`: a string, or an integer kept exact.
    #[serde(default, deserialize_with = "exact_opt")]
    pub order_id: Option<String>,
    /// `status` in the platform's order vocabulary.
    pub status: String,
    /// `refundId` of the order's refund, if any.
    #[serde(default, deserialize_with = "exact_opt")]
    pub refund_id: Option<String>,
    /// `refundStatus` of that refund.
    #[serde(default)]
    pub refund_status: Option<String>,
}

/// A 1688 refund detail `{refundId, orderId, status}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlibabaRefund {
    /// `refundId`.
    #[serde(default, deserialize_with = "exact_opt")]
    pub refund_id: Option<String>,
    /// `orderId`, exact.
    #[serde(default, deserialize_with = "exact_opt")]
    pub order_id: Option<String>,
    /// `status` in the 1688 refund vocabulary.
    pub status: String,
}

/// Check that an id the channel echoed matches the one asked for.
pub(crate) fn check_echo(
    what: &str,
    asked: &str,
    got: Option<&str>,
) -> std::result::Result<(), ChannelError> {
    match got {
        Some(g) if !g.is_empty() && g != asked => Err(malformed(format!(
            "{what}: asked for {asked}, the reply is about {}",
            crate::json::clip(g)
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_body_keeps_big_ids_exact() {
        let body = alibaba_cancel_body("2542285634920880794", Some("不想要了"), None).unwrap();
        let text = body.to_string();
        assert!(text.contains(r#""orderId":2542285634920880794"#), "{text}");
        assert!(text.contains(r#""webSite":"1688""#));
        assert!(!text.contains("remark"));
        let e = alibaba_cancel_body("25x", None, None).unwrap_err();
        assert_eq!(
            e.class,
            rescind_core::ErrorClass::Permanent(PermanentReason::InvalidRequest)
        );
        assert!(alibaba_cancel_body("99999999999999999999999", None, None).is_err());
    }

    const SEED_002: &str = r#"{
"requestId": "",
"code": 0,
"developId": 0,
"msg": "",
"data": {
"distributorId": "",
"currency": "",
"cancelSuccess": false,
"refundOrderAggregate": {
"refundOrder": {
"goodsStatus": 0,
"refundDesc": "",
"refundStatus": "",
"refundType": 0,
"timeoutDate": "",
"feeTips": "",
"timeoutType": "",
"refundId": "",
"payOrderId": "",
"reasonId": 0,
"canEditFee": false,
"sellerRefuseReasonDescribe": "",
"remainingTime": "",
"reasonDesc": "",
"sellerRefuseReason": "",
"refundFee": 0
},
"purchaseOrderLine": {
"salesOrderId": "",
"supplierId": "",
"quantity": 0,
"totalPrice": 0,
"itemTitle": "",
"postFee": 0,
"productFee": 0,
"salesMarket": "",
"purchaseOrderLineId": "",
"createTime": 0,
"purchaseOrderId": "",
"price": 0,
"supplierNick": "",
"currency": "",
"properties": {
"valueId": 0,
"valueName": "",
"propId": 0,
"propName": ""
},
"itemImageUrl": ""
},
"logistics": {
"returnGoodsDesc": "",
"buyerPhone": "",
"sellerAgreeReturnDescribe": "",
"logisticsNo": "",
"receiverAddress": {
"receiver": "",
"phone": "",
"detailAddress": ""
},
"logisticsCompany": {
"logisticsCompanyName": "",
"logisticCompanyCode": ""
}
}
}
}
}"#;

    #[test]
    fn seed_002_parses_and_is_not_success() {
        // As printed (code 0): an error envelope, classified, with its data intact.
        let env = Envelope::parse(SEED_002.as_bytes()).unwrap();
        assert_eq!(
            (
                env.code,
                env.develop_id.as_deref(),
                env.request_id.as_deref()
            ),
            (0, Some("0"), None)
        );
        let data: CancelRefundData = env.data_as("seed").unwrap();
        assert_eq!(data.cancel_success, Some(false));
        let ro = data
            .refund_order_aggregate
            .as_ref()
            .unwrap()
            .refund_order
            .as_ref()
            .unwrap();
        assert_eq!(ro.refund_fee.as_deref(), Some("0"));
        assert_eq!(ro.refund_type.as_deref(), Some("0"));
        assert!(classify(200, SEED_002.as_bytes()).is_err());
        // With code 200 the envelope is fine, but cancelSuccess false is still no success.
        let ok_env = SEED_002.replacen("\"code\": 0", "\"code\": 200", 1);
        let env = classify(200, ok_env.as_bytes()).unwrap();
        let data: CancelRefundData = env.data_as("seed").unwrap();
        let e = cancel_not_successful("R1", &data);
        assert!(!e.is_retryable());
        assert_ne!(e.class, rescind_core::ErrorClass::AlreadyDone);
        assert!(e.message.contains("cancelSuccess false"));
    }

    #[test]
    fn cancel_not_successful_uses_reported_status() {
        let data = |s: &str| CancelRefundData {
            cancel_success: Some(false),
            refund_order_aggregate: Some(RefundOrderAggregate {
                refund_order: Some(RefundOrder {
                    refund_status: Some(s.into()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        use rescind_core::{Conflict, ErrorClass};
        assert_eq!(
            cancel_not_successful("R", &data("CLOSED")).class,
            ErrorClass::AlreadyDone
        );
        assert_eq!(
            cancel_not_successful("R", &data("SUCCESS")).class,
            ErrorClass::Conflict(Conflict::RefundAlreadyCompleted)
        );
        assert_eq!(
            cancel_not_successful("R", &data("SELLER_REFUSE_BUYER")).class,
            ErrorClass::Conflict(Conflict::RefundClosed)
        );
        assert_eq!(
            cancel_not_successful("R", &data("WAIT_SELLER_AGREE")).class,
            ErrorClass::Permanent(PermanentReason::Other)
        );
    }

    #[test]
    fn order_detail_ids_exact() {
        let d: OrderDetail = serde_json::from_str(
            r#"{"orderId":2542285634920880794,"status":"terminated","refundId":9007199254740993,"refundStatus":"refundsuccess"}"#,
        )
        .unwrap();
        assert_eq!(d.order_id.as_deref(), Some("2542285634920880794"));
        assert_eq!(d.refund_id.as_deref(), Some("9007199254740993"));
    }
}
