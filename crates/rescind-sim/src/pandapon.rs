//! The PandaPon OpenAPI: header authentication and the
//! `{requestId, code, developId, msg, data}` envelope.
//!
//! Every answer is HTTP 200 with the code in the envelope, except injected
//! gateway faults (HTTP 5xx) and lost responses. Codes are those of
//! `docs/channels/assumed-protocol.md` §2.

use axum::extract::{Path, Request, State};
use axum::response::Response;
use http::{Method, StatusCode};
use rescind_wire::sign::{signatures_match, Secret};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::book::{order_id_json, Refusal, RequestSummary, PANDAPON_1688, PANDAPON_TAOBAO};
use crate::faults::{self, endpoints, Decision, FaultKind, FaultReplies};
use crate::http_util::{self, BodyError};
use crate::{lock, Sim};

/// A PandaPon envelope error: code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PandaponError {
    /// Envelope `code`.
    pub code: u32,
    /// Envelope `msg`.
    pub msg: String,
}

fn err(code: u32, msg: impl Into<String>) -> PandaponError {
    PandaponError {
        code,
        msg: msg.into(),
    }
}

fn envelope(sim: &Sim, request_id: &str, r: Result<Value, PandaponError>) -> Response {
    let (code, msg, data) = match r {
        Ok(data) => (200, "成功".to_owned(), data),
        Err(e) => (e.code, e.msg, Value::Null),
    };
    http_util::json_response(
        StatusCode::OK,
        &json!({
            "requestId": request_id,
            "code": code,
            "developId": sim.inner.cfg.pandapon_develop_id,
            "msg": msg,
            "data": data,
        }),
    )
}

fn refusal(r: Refusal) -> PandaponError {
    match r {
        Refusal::NotFound => err(404, "order or refund not found"),
        Refusal::AlreadyCancelled => err(1001, "order already cancelled"),
        Refusal::Paid => err(1002, "order already paid"),
        Refusal::Shipped => err(1003, "order already shipped"),
        Refusal::NotPaid => err(400, "order not paid: cancel it before payment instead"),
        Refusal::RefundWithdrawn => err(1101, "refund already cancelled"),
        Refusal::RefundCompleted => err(1102, "refund already completed"),
        Refusal::RefundRefused => err(1103, "refund closed by the seller"),
        Refusal::RefundAlreadyOpen => err(1104, "a refund is already open for this order"),
        Refusal::LockReleased | Refusal::NoSuchLock => err(400, "invalid request"),
    }
}

/// What a route does once the request is authenticated.
enum Op {
    TaobaoRefundCancel(String),
    AlibabaOrderCancel,
    TaobaoOrderCancel,
    TaobaoRefundSubmit,
    TaobaoOrderDetail(String),
    TaobaoRefundDetail(String),
    AlibabaOrderDetail(String),
    AlibabaRefundDetail(String),
}

impl Op {
    fn endpoint(&self) -> &'static str {
        match self {
            Op::TaobaoRefundCancel(_) => endpoints::TAOBAO_REFUND_CANCEL,
            Op::AlibabaOrderCancel => endpoints::ALIBABA_ORDER_CANCEL,
            Op::TaobaoOrderCancel => endpoints::TAOBAO_ORDER_CANCEL,
            Op::TaobaoRefundSubmit => endpoints::TAOBAO_REFUND_SUBMIT,
            Op::TaobaoOrderDetail(_) => endpoints::TAOBAO_ORDER_DETAIL,
            Op::TaobaoRefundDetail(_) => endpoints::TAOBAO_REFUND_DETAIL,
            Op::AlibabaOrderDetail(_) => endpoints::ALIBABA_ORDER_DETAIL,
            Op::AlibabaRefundDetail(_) => endpoints::ALIBABA_REFUND_DETAIL,
        }
    }
    fn http_method(&self) -> Method {
        match self {
            Op::AlibabaOrderCancel | Op::TaobaoOrderCancel | Op::TaobaoRefundSubmit => Method::POST,
            _ => Method::GET,
        }
    }
}

fn header<'a>(req: &'a http::request::Parts, name: &str) -> Result<Option<&'a str>, PandaponError> {
    match req.headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| err(400, format!("header {name} is not visible ASCII"))),
    }
}

/// One extra PandaPon key the simulator accepts (`POST /_admin/pandapon/keys`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySeed {
    /// The `access-key` header.
    pub access_key: String,
    /// The signing secret.
    pub secret: String,
    /// The `user-id` the key belongs to.
    pub user_id: String,
}

impl std::fmt::Debug for KeySeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySeed")
            .field("access_key", &self.access_key)
            .field("secret", &"***")
            .field("user_id", &self.user_id)
            .finish()
    }
}

/// The extra keys and the calls each key (the configured one included) signed.
#[derive(Default)]
pub struct Keys {
    extra: BTreeMap<String, (Secret, String)>,
    /// Authenticated calls per access key.
    pub calls: BTreeMap<String, u64>,
}

impl Keys {
    /// Add or replace a key.
    pub fn add(&mut self, k: KeySeed) -> Result<(), String> {
        if k.access_key.trim().is_empty() || k.secret.is_empty() || k.user_id.trim().is_empty() {
            return Err("access_key, secret and user_id must not be empty".into());
        }
        self.extra
            .insert(k.access_key, (Secret::new(k.secret), k.user_id));
        Ok(())
    }
}

fn authenticate(sim: &Sim, parts: &http::request::Parts) -> Result<(), PandaponError> {
    let cfg = &sim.inner.cfg;
    let need = |name: &str| -> Result<&str, PandaponError> {
        header(parts, name)?.ok_or_else(|| err(401, format!("missing header {name}")))
    };
    let access_key = need("access-key")?;
    let timestamp = need("timestamp")?;
    let user_id = need("user-id")?;
    let signature = need("signature")?;
    let nonce = header(parts, "nonce-str")?;
    let (secret, owner) = if access_key == cfg.pandapon_access_key {
        (cfg.pandapon_secret.clone(), cfg.pandapon_user_id.clone())
    } else {
        match lock(&sim.inner.pandapon_keys).extra.get(access_key) {
            Some((secret, owner)) => (secret.clone(), owner.clone()),
            None => return Err(err(401, "unknown access-key")),
        }
    };
    if user_id != owner {
        return Err(err(401, "user-id does not belong to this access-key"));
    }
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| err(400, "header timestamp must be epoch milliseconds"))?;
    let now = sim.now_ms();
    if now.abs_diff(ts) > cfg.pandapon_timestamp_skew_max_ms {
        return Err(err(
            403,
            format!(
                "timestamp expired: {} ms from server time, at most {} ms allowed",
                now.abs_diff(ts),
                cfg.pandapon_timestamp_skew_max_ms
            ),
        ));
    }
    let mut signed: Vec<(&str, &str)> = vec![("access-key", access_key), ("timestamp", timestamp)];
    if let Some(n) = nonce {
        signed.push(("nonce-str", n));
    }
    let expected = cfg.pandapon_signer.sign(&signed, &secret);
    if !signatures_match(signature, &expected) {
        return Err(err(401, "signature mismatch"));
    }
    *lock(&sim.inner.pandapon_keys)
        .calls
        .entry(access_key.to_owned())
        .or_default() += 1;
    Ok(())
}

async fn run(sim: Sim, op: Op, req: Request) -> Response {
    let request_id = sim.request_id();
    let (parts, body) = req.into_parts();
    if parts.method != op.http_method() {
        return envelope(
            &sim,
            &request_id,
            Err(err(400, format!("method {} not allowed", parts.method))),
        );
    }
    if let Err(e) = authenticate(&sim, &parts) {
        return envelope(&sim, &request_id, Err(e));
    }
    let body: Option<Value> = if op.http_method() == Method::POST {
        let bytes = match http_util::read_body(body, sim.inner.cfg.body_bytes_max).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return envelope(
                    &sim,
                    &request_id,
                    Err(err(
                        400,
                        format!("body exceeds {} bytes", sim.inner.cfg.body_bytes_max),
                    )),
                )
            }
            Err(BodyError::Io) => {
                return envelope(&sim, &request_id, Err(err(400, "unreadable body")))
            }
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(_) => {
                return envelope(
                    &sim,
                    &request_id,
                    Err(err(400, "body must be a JSON object")),
                )
            }
            Err(e) => {
                return envelope(
                    &sim,
                    &request_id,
                    Err(err(400, format!("malformed JSON body: {e}"))),
                )
            }
        }
    } else {
        None
    };
    let endpoint = op.endpoint();
    let summary = |params: BTreeMap<String, String>| RequestSummary {
        endpoint: endpoint.to_owned(),
        http_method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        request_id: request_id.clone(),
        params,
    };
    let replies = PandaponFaultReplies {
        request_id: &request_id,
    };
    faults::guard(&sim, endpoint, &replies, || {
        let result = execute(&sim, op, body.as_ref(), summary);
        envelope(&sim, &request_id, result)
    })
    .await
}

/// Injected refusals in the PandaPon envelope.
struct PandaponFaultReplies<'a> {
    request_id: &'a str,
}

impl FaultReplies for PandaponFaultReplies<'_> {
    fn refuse(&self, sim: &Sim, kind: FaultKind, d: &Decision) -> Response {
        let e = match kind {
            FaultKind::RateLimit => err(
                429,
                format!("rate limited, retry after {} seconds", d.ban_secs),
            ),
            FaultKind::Permanent => err(400, "invalid request (injected fault)"),
            FaultKind::Auth => err(401, "signature mismatch"),
            // PandaPon has no sessions: a revoked key is its only auth failure.
            FaultKind::InvalidSession => err(401, "access-key disabled or expired"),
            // Isp; the others are answered by `faults::guard` itself.
            FaultKind::Isp | FaultKind::None | FaultKind::Http5xx | FaultKind::LostResponse => {
                err(500, "upstream service error, please retry")
            }
        };
        envelope(sim, self.request_id, Err(e))
    }
}

/// An order id from a JSON body: a string, or an integer kept exact (1688 ids
/// exceed 2^53; serde_json keeps integers up to 2^64 exact).
fn order_id_field(
    body: Option<&Value>,
    name: &str,
    integer: bool,
) -> Result<String, PandaponError> {
    let v = body
        .and_then(|b| b.get(name))
        .ok_or_else(|| err(400, format!("{name} is required")))?;
    let id = match v {
        Value::Number(n) if n.is_u64() => n.to_string(),
        Value::String(s) if !s.is_empty() => s.clone(),
        _ => return Err(err(400, format!("{name} must be an integer or a string"))),
    };
    if integer && (id.parse::<u64>().is_err()) {
        return Err(err(400, format!("{name} must be a decimal integer")));
    }
    Ok(id)
}

fn text_field(body: Option<&Value>, name: &str) -> Option<String> {
    match body?.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn execute(
    sim: &Sim,
    op: Op,
    body: Option<&Value>,
    summary: impl Fn(BTreeMap<String, String>) -> RequestSummary,
) -> Result<Value, PandaponError> {
    match op {
        Op::TaobaoRefundCancel(refund_id) => {
            let req = summary(BTreeMap::from([("refundId".to_owned(), refund_id.clone())]));
            sim.with_book(|b, now, n| {
                b.withdraw_refund(PANDAPON_TAOBAO, &refund_id, now, &req, n)
                    .map_err(refusal)?;
                let r = b.refund_view(PANDAPON_TAOBAO, &refund_id);
                let (order_id, status) = r.map(|r| (r.order_id, r.status)).unwrap_or_default();
                Ok(json!({
                    "distributorId": sim.inner.cfg.pandapon_user_id,
                    "currency": "CNY",
                    "cancelSuccess": true,
                    "refundOrderAggregate": {"refundOrder": {
                        "refundId": refund_id,
                        "payOrderId": order_id,
                        "refundStatus": status,
                        "refundType": 1,
                        "refundFee": 0,
                    }},
                }))
            })
        }
        Op::AlibabaOrderCancel => {
            match body.and_then(|b| b.get("webSite")) {
                Some(Value::String(s)) if s == "1688" => {}
                _ => return Err(err(400, "webSite must be \"1688\"")),
            }
            let order_id = order_id_field(body, "orderId", true)?;
            let mut params = BTreeMap::from([("orderId".to_owned(), order_id.clone())]);
            params.extend(text_field(body, "cancelReason").map(|r| ("cancelReason".to_owned(), r)));
            let req = summary(params);
            sim.with_book(|b, now, n| b.cancel_unpaid(PANDAPON_1688, &order_id, now, &req, n))
                .map_err(refusal)?;
            Ok(Value::Bool(true))
        }
        Op::TaobaoOrderCancel => {
            let order_id = order_id_field(body, "orderId", false)?;
            let mut params = BTreeMap::from([("orderId".to_owned(), order_id.clone())]);
            params.extend(text_field(body, "cancelReason").map(|r| ("cancelReason".to_owned(), r)));
            let req = summary(params);
            sim.with_book(|b, now, n| b.cancel_unpaid(PANDAPON_TAOBAO, &order_id, now, &req, n))
                .map_err(refusal)?;
            Ok(Value::Bool(true))
        }
        Op::TaobaoRefundSubmit => {
            let order_id = order_id_field(body, "orderId", false)?;
            let mut params = BTreeMap::from([("orderId".to_owned(), order_id.clone())]);
            params.extend(text_field(body, "refundReason").map(|r| ("refundReason".to_owned(), r)));
            let req = summary(params);
            let rid = sim
                .with_book(|b, now, n| b.cancel_paid(PANDAPON_TAOBAO, &order_id, now, &req, n))
                .map_err(refusal)?;
            Ok(json!({ "refundId": rid }))
        }
        Op::TaobaoOrderDetail(id) => order_detail(sim, PANDAPON_TAOBAO, &id),
        Op::AlibabaOrderDetail(id) => order_detail(sim, PANDAPON_1688, &id),
        Op::TaobaoRefundDetail(id) => {
            let r = sim
                .with_book(|b, _, _| b.refund_view(PANDAPON_TAOBAO, &id))
                .ok_or_else(|| refusal(Refusal::NotFound))?;
            Ok(json!({"refundOrder": {
                "refundId": r.refund_id,
                "payOrderId": r.order_id,
                "refundStatus": r.status,
                "refundType": 1,
                "refundFee": 0,
            }}))
        }
        Op::AlibabaRefundDetail(id) => {
            let r = sim
                .with_book(|b, _, _| b.refund_view(PANDAPON_1688, &id))
                .ok_or_else(|| refusal(Refusal::NotFound))?;
            Ok(json!({
                "refundId": r.refund_id,
                "orderId": order_id_json(PANDAPON_1688, &r.order_id),
                "status": r.status,
            }))
        }
    }
}

fn order_detail(sim: &Sim, channel: &str, id: &str) -> Result<Value, PandaponError> {
    let v = sim
        .with_book(|b, _, _| b.order_view(channel, id))
        .ok_or_else(|| refusal(Refusal::NotFound))?;
    let mut d = json!({"orderId": order_id_json(channel, &v.order_id), "status": v.status});
    if let (Some(rid), Some(rs)) = (v.refund_id, v.refund_status) {
        d["refundId"] = Value::String(rid);
        d["refundStatus"] = Value::String(rs);
    }
    Ok(d)
}

type PathResult = Result<Path<String>, axum::extract::rejection::PathRejection>;

async fn with_path(sim: Sim, p: PathResult, req: Request, make: fn(String) -> Op) -> Response {
    match p {
        Ok(Path(id)) => run(sim, make(id), req).await,
        Err(_) => {
            let rid = sim.request_id();
            envelope(&sim, &rid, Err(err(400, "malformed path parameter")))
        }
    }
}

/// `GET /v2/taobao/order/refund/cancel/{refundId}`.
pub async fn taobao_refund_cancel(State(sim): State<Sim>, p: PathResult, req: Request) -> Response {
    with_path(sim, p, req, Op::TaobaoRefundCancel).await
}

/// `POST /v2/alibaba/order/cancel`.
pub async fn alibaba_order_cancel(State(sim): State<Sim>, req: Request) -> Response {
    run(sim, Op::AlibabaOrderCancel, req).await
}

/// `POST /v2/taobao/order/cancel` (assumed).
pub async fn taobao_order_cancel(State(sim): State<Sim>, req: Request) -> Response {
    run(sim, Op::TaobaoOrderCancel, req).await
}

/// `POST /v2/taobao/order/refund/submit` (assumed).
pub async fn taobao_refund_submit(State(sim): State<Sim>, req: Request) -> Response {
    run(sim, Op::TaobaoRefundSubmit, req).await
}

/// `GET /v2/taobao/order/detail/{orderId}` (assumed).
pub async fn taobao_order_detail(State(sim): State<Sim>, p: PathResult, req: Request) -> Response {
    with_path(sim, p, req, Op::TaobaoOrderDetail).await
}

/// `GET /v2/taobao/order/refund/detail/{refundId}` (assumed).
pub async fn taobao_refund_detail(State(sim): State<Sim>, p: PathResult, req: Request) -> Response {
    with_path(sim, p, req, Op::TaobaoRefundDetail).await
}

/// `GET /v2/alibaba/order/detail/{orderId}` (assumed).
pub async fn alibaba_order_detail(State(sim): State<Sim>, p: PathResult, req: Request) -> Response {
    with_path(sim, p, req, Op::AlibabaOrderDetail).await
}

/// `GET /v2/alibaba/refund/detail/{refundId}` (assumed).
pub async fn alibaba_refund_detail(
    State(sim): State<Sim>,
    p: PathResult,
    req: Request,
) -> Response {
    with_path(sim, p, req, Op::AlibabaRefundDetail).await
}

/// Unknown paths: a PandaPon 404 envelope under `/v2/`, a plain JSON 404 elsewhere.
pub async fn fallback(State(sim): State<Sim>, req: Request) -> Response {
    let rid = sim.request_id();
    if req.uri().path().starts_with("/v2/") {
        envelope(
            &sim,
            &rid,
            Err(err(404, format!("no such API: {}", req.uri().path()))),
        )
    } else {
        http_util::json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "not found", "path": req.uri().path()}),
        )
    }
}
