//! The Taobao Open Platform gateway at `/router/rest`.
//!
//! Parameters come from the query string and/or the form body (the body wins
//! on a duplicate name). Checks run in the gateway's order: method, app key,
//! timestamp, version, format, signature; then faults; then the method.
//! Errors are `error_response {code, msg, sub_code, sub_msg, request_id}`
//! with HTTP 200, in the requested `format` (`xml` by default).

use axum::extract::{Request, State};
use axum::response::Response;
use http::{header, HeaderValue, StatusCode};
use rescind_wire::sign::{signatures_match, top_sign, DamaiHeadFields, SignMethod};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use crate::accounts::{SessionCheck, REFRESH_METHOD};
use crate::book::{refund_phase, RefundPhase, Refusal, RequestSummary, DAMAI, TMALL_TBC};
use crate::defaults::{CANCEL_METHOD, DAMAI_CANCEL_METHOD};
use crate::faults::{self, Decision, FaultKind, FaultReplies};
use crate::http_util::{self, BodyError};
use crate::Sim;

/// Response format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

/// A TOP platform error (`error_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopError {
    /// Top-level code (e.g. 25 Invalid Signature).
    pub code: u32,
    /// Top-level message.
    pub msg: &'static str,
    /// Sub code (`isv.*`, `isp.*`, ...), empty when none.
    pub sub_code: String,
    /// Sub message.
    pub sub_msg: String,
}

impl TopError {
    fn new(
        code: u32,
        msg: &'static str,
        sub_code: impl Into<String>,
        sub_msg: impl Into<String>,
    ) -> Self {
        TopError {
            code,
            msg,
            sub_code: sub_code.into(),
            sub_msg: sub_msg.into(),
        }
    }
    fn missing_arg(name: &str) -> Self {
        Self::new(
            40,
            "Missing Required Arguments",
            format!("isv.missing-parameter:{name}"),
            format!("missing required parameter: {name}"),
        )
    }
    fn invalid_arg(name: &str, why: &str) -> Self {
        Self::new(
            41,
            "Invalid Arguments",
            format!("isv.invalid-parameter:{name}"),
            format!("invalid parameter {name}: {why}"),
        )
    }
}

struct Reply {
    format: Format,
    simplify: bool,
    request_id: String,
}

impl Reply {
    fn render(&self, root: &str, mut inner: Value) -> Response {
        if let Value::Object(m) = &mut inner {
            m.insert("request_id".into(), Value::String(self.request_id.clone()));
        }
        match self.format {
            Format::Json => {
                let v = if self.simplify && root != "error_response" {
                    inner
                } else {
                    json!({ root: inner })
                };
                http_util::json_response(StatusCode::OK, &v)
            }
            Format::Xml => {
                let mut s = String::from("<?xml version=\"1.0\" encoding=\"utf-8\" ?>");
                http_util::to_xml(root, &inner, &mut s);
                let mut r = Response::new(axum::body::Body::from(s));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/xml;charset=UTF-8"),
                );
                r
            }
        }
    }

    fn error(&self, e: TopError) -> Response {
        let mut v = json!({"code": e.code, "msg": e.msg});
        if !e.sub_code.is_empty() {
            v["sub_code"] = Value::String(e.sub_code);
            v["sub_msg"] = Value::String(e.sub_msg);
        }
        self.render("error_response", v)
    }
}

fn response_root(method: &str) -> String {
    // TOP drops the `taobao.` prefix of its own platform methods
    // (`taobao.top.auth.token.refresh` → `top_auth_token_refresh_response`,
    // `taobao.tmc.messages.consume` → `tmc_messages_consume_response`).
    let m = method.strip_prefix("taobao.").unwrap_or(method);
    format!("{}_response", m.replace('.', "_"))
}

/// The handler of `/router/rest` (GET or POST).
pub async fn handle(State(sim): State<Sim>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut reply = Reply {
        format: Format::Xml,
        simplify: false,
        request_id: sim.request_id(),
    };
    let query = match http_util::parse_form(parts.uri.query().unwrap_or("").as_bytes()) {
        Some(q) => q,
        None => return reply.error(TopError::new(47, "Invalid Encoding", "", "")),
    };
    // The format is known from the query before the body is read, so even a
    // body error answers in the requested format.
    if let Some((_, f)) = query.iter().rev().find(|(k, _)| k == "format") {
        if f == "json" {
            reply.format = Format::Json;
        }
    }
    let body = match http_util::read_body(body, sim.inner.cfg.body_bytes_max).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return reply.error(TopError::new(
                41,
                "Invalid Arguments",
                "isv.invalid-parameter",
                format!(
                    "request body exceeds {} bytes",
                    sim.inner.cfg.body_bytes_max
                ),
            ))
        }
        Err(BodyError::Io) => {
            return reply.error(TopError::new(
                41,
                "Invalid Arguments",
                "isv.invalid-parameter",
                "unreadable body",
            ))
        }
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let is_form =
        content_type.is_empty() || content_type.starts_with("application/x-www-form-urlencoded");
    let mut params: BTreeMap<String, String> = query.into_iter().collect();
    let mut raw_body: Option<&[u8]> = None;
    if is_form {
        match http_util::parse_form(&body) {
            Some(form) => params.extend(form),
            None => {
                return reply.error(TopError::new(
                    47,
                    "Invalid Encoding",
                    "isv.invalid-encoding",
                    "the form body is not valid UTF-8 url encoding",
                ))
            }
        }
    } else if content_type.starts_with("multipart/") {
        return reply.error(TopError::new(
            41,
            "Invalid Arguments",
            "isv.invalid-parameter",
            "multipart bodies are not supported by this simulator",
        ));
    } else if !body.is_empty() {
        raw_body = Some(&body);
    }
    // Empty values are neither sent nor signed.
    params.retain(|_, v| !v.is_empty());

    match params.get("format").map(String::as_str) {
        None | Some("xml") => reply.format = Format::Xml,
        Some("json") => reply.format = Format::Json,
        Some(_) => {
            reply.format = Format::Xml;
            return reply.error(TopError::new(23, "Invalid Format", "", ""));
        }
    }
    reply.simplify =
        reply.format == Format::Json && params.get("simplify").map(String::as_str) == Some("true");

    let acting = match check_system(&sim, &params, raw_body) {
        Ok(a) => a,
        Err(e) => return reply.error(e),
    };
    let method = params.get("method").cloned().unwrap_or_default();
    // Flow control per app key, over every call that passed the system checks.
    let app_key = params.get("app_key").map(String::as_str).unwrap_or("");
    let admitted = crate::lock(&sim.inner.flow).admit(app_key, sim.now_ms());
    if let Err(secs) = admitted {
        return reply.error(TopError::new(
            7,
            "App Call Limited",
            "accesscontrol.limited-by-app-access-count",
            format!("This ban will last for {secs} more seconds"),
        ));
    }

    let replies = TopFaultReplies { reply: &reply };
    faults::guard(&sim, &method, &replies, || {
        dispatch(
            &sim,
            &Call {
                method: &method,
                p: &params,
                reply: &reply,
                http_method: parts.method.as_str(),
                path: parts.uri.path(),
                acting: acting.as_deref(),
            },
        )
    })
    .await
}

/// Injected refusals in the TOP `error_response` envelope.
struct TopFaultReplies<'a> {
    reply: &'a Reply,
}

impl FaultReplies for TopFaultReplies<'_> {
    fn refuse(&self, sim: &Sim, kind: FaultKind, d: &Decision) -> Response {
        let e = match kind {
            FaultKind::Isp => {
                if sim.inner.rng_below(2) == 0 {
                    TopError::new(
                        15,
                        "Remote service error",
                        "isp.top-remote-connection-timeout",
                        "remote service timed out",
                    )
                } else {
                    TopError::new(
                        10,
                        "Service Currently Unavailable",
                        "isp.top-remote-service-unavailable",
                        "remote service unavailable",
                    )
                }
            }
            FaultKind::RateLimit => TopError::new(
                7,
                "App Call Limited",
                "accesscontrol.limited-by-app-access-count",
                format!("This ban will last for {} more seconds", d.ban_secs),
            ),
            FaultKind::Permanent => TopError::new(
                41,
                "Invalid Arguments",
                "isv.invalid-parameter",
                "injected fault: the API rejected a parameter",
            ),
            FaultKind::Auth => TopError::new(25, "Invalid Signature", "", ""),
            FaultKind::InvalidSession => TopError::new(
                27,
                "Invalid Session",
                "isv.invalid-session",
                "the session is invalid or expired; authorise the app again",
            ),
            // Answered by `faults::guard` itself; never asked here.
            FaultKind::None | FaultKind::Http5xx | FaultKind::LostResponse => {
                TopError::new(15, "Remote service error", "isp.unexpected-fault", "")
            }
        };
        self.reply.error(e)
    }
}

impl crate::Inner {
    pub(crate) fn rng_below(&self, n: u64) -> u64 {
        use rescind_core::Rng;
        self.rng.below(n)
    }
}

/// The system checks; `Ok(Some(account))` when the call carries a valid
/// session of a registered account.
fn check_system(
    sim: &Sim,
    p: &BTreeMap<String, String>,
    raw_body: Option<&[u8]>,
) -> Result<Option<String>, TopError> {
    let cfg = &sim.inner.cfg;
    let method = p
        .get("method")
        .ok_or_else(|| TopError::new(21, "Missing Method", "", ""))?;
    let app_key = p
        .get("app_key")
        .ok_or_else(|| TopError::new(28, "Missing App Key", "", ""))?;
    if *app_key != cfg.app_key {
        return Err(TopError::new(29, "Invalid App Key", "", ""));
    }
    let known = [
        CANCEL_METHOD,
        DAMAI_CANCEL_METHOD,
        cfg.paid_cancel_method.as_str(),
        cfg.order_get_method.as_str(),
        crate::tmc::CONSUME_METHOD,
        crate::tmc::CONFIRM_METHOD,
        REFRESH_METHOD,
    ];
    if !known.contains(&method.as_str()) {
        return Err(TopError::new(22, "Invalid Method", "", ""));
    }
    let ts = p
        .get("timestamp")
        .ok_or_else(|| TopError::new(30, "Missing Timestamp", "", ""))?;
    let ts_ms = rescind_wire::sign::parse_top_timestamp(ts).ok_or_else(|| {
        TopError::new(
            31,
            "Invalid Timestamp",
            "isv.invalid-timestamp",
            "timestamp must be yyyy-MM-dd HH:mm:ss (GMT+8) or epoch milliseconds",
        )
    })?;
    let now = sim.now_ms();
    if now.abs_diff(ts_ms) > cfg.top_timestamp_skew_max_ms {
        return Err(TopError::new(
            31,
            "Invalid Timestamp",
            "isv.invalid-timestamp",
            format!(
                "timestamp is {} ms away from the server time; at most {} ms allowed",
                now.abs_diff(ts_ms),
                cfg.top_timestamp_skew_max_ms
            ),
        ));
    }
    match p.get("v").map(String::as_str) {
        None => return Err(TopError::new(32, "Missing Version", "", "")),
        Some("2.0") => {}
        Some(v) if v.parse::<f64>().is_ok() => {
            return Err(TopError::new(34, "Unsupported Version", "", ""))
        }
        Some(_) => return Err(TopError::new(33, "Invalid Version", "", "")),
    }
    let sign = p
        .get("sign")
        .ok_or_else(|| TopError::new(24, "Missing Signature", "", ""))?;
    let sign_method: SignMethod = match p.get("sign_method") {
        None => SignMethod::Md5,
        Some(m) => m.parse().map_err(|_| {
            TopError::new(
                25,
                "Invalid Signature",
                "isv.invalid-signature-method",
                "sign_method must be md5, hmac or hmac-sha256",
            )
        })?,
    };
    let expected = top_sign(
        p.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        raw_body,
        &cfg.app_secret,
        sign_method,
    );
    if !signatures_match(sign, &expected) {
        return Err(TopError::new(25, "Invalid Signature", "", ""));
    }
    // The refresh call carries no session: it is how a session is obtained.
    if method == REFRESH_METHOD {
        return Ok(None);
    }
    if let Some(session) = &cfg.session {
        match p.get("session") {
            None => return Err(TopError::new(26, "Missing Session", "", "")),
            Some(s) if s != session.expose() => {
                return Err(TopError::new(
                    27,
                    "Invalid Session",
                    "isv.invalid-session",
                    "the session is invalid or expired; authorise the app again",
                ))
            }
            Some(_) => {}
        }
    }
    check_account_session(sim, p.get("session").map(String::as_str))
}

/// Sessions of registered accounts (`crate::accounts`): nothing is checked
/// while no account is registered.
fn check_account_session(sim: &Sim, session: Option<&str>) -> Result<Option<String>, TopError> {
    let now = sim.now_ms();
    let mut accounts = crate::lock(&sim.inner.accounts);
    match accounts.check(session, now) {
        SessionCheck::Unchecked => Ok(None),
        SessionCheck::Valid(id) => {
            if let Some(s) = session {
                accounts.count_call(s);
            }
            Ok(Some(id))
        }
        SessionCheck::Invalid => Err(TopError::new(
            27,
            "Invalid session",
            "invalid-sessionkey",
            "the session key is unknown, replaced or revoked; authorise the app again",
        )),
        SessionCheck::Expired(_) => Err(TopError::new(
            27,
            "Invalid session",
            "invalid-sessionkey",
            "the session key has expired; refresh it or authorise the app again",
        )),
    }
}

/// A call by a session of `acting` on an order owned by another account is
/// refused (`isv.permission-denied`); unowned orders are anyone's.
fn check_owner(
    sim: &Sim,
    acting: Option<&str>,
    channel: &str,
    order_id: &str,
) -> Result<(), TopError> {
    let Some(acting) = acting else {
        return Ok(());
    };
    let mut accounts = crate::lock(&sim.inner.accounts);
    match accounts.owner(channel, order_id) {
        Some(owner) if owner != acting => {
            let msg = format!("the session's seller {acting} does not own order {order_id}");
            accounts.count_refusal(acting);
            Err(TopError::new(
                11,
                "Insufficient ISV Permissions",
                "isv.permission-denied",
                msg,
            ))
        }
        _ => Ok(()),
    }
}

fn summary(
    method: &str,
    reply: &Reply,
    http_method: &str,
    path: &str,
    params: BTreeMap<String, String>,
) -> RequestSummary {
    RequestSummary {
        endpoint: method.to_owned(),
        http_method: http_method.to_owned(),
        path: path.to_owned(),
        request_id: reply.request_id.clone(),
        params,
    }
}

fn business_params(p: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    p.iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "sign"
                    | "session"
                    | "app_key"
                    | "timestamp"
                    | "v"
                    | "format"
                    | "sign_method"
                    | "param_cancel_stock_lock_request"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn tbc_refusal(r: &Refusal) -> (&'static str, &'static str) {
    match r {
        Refusal::NotFound => ("ORDER_NOT_FOUND", "order not found"),
        Refusal::AlreadyCancelled => ("ORDER_ALREADY_CANCELLED", "order already cancelled"),
        Refusal::Paid => (
            "ORDER_PAID",
            "the buyer has paid; use the post-payment cancel",
        ),
        Refusal::NotPaid => (
            "ORDER_NOT_PAID",
            "the order is not paid; use the pre-payment cancel",
        ),
        Refusal::Shipped => (
            "ORDER_SHIPPED",
            "the order has shipped and cannot be cancelled",
        ),
        Refusal::RefundAlreadyOpen => (
            "REFUND_ALREADY_OPEN",
            "a refund is already open for this order",
        ),
        _ => ("SYSTEM_ERROR", "unexpected state"),
    }
}

fn required<'a>(p: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, TopError> {
    p.get(name)
        .map(String::as_str)
        .ok_or_else(|| TopError::missing_arg(name))
}

/// One checked call on its way to its method.
struct Call<'a> {
    method: &'a str,
    p: &'a BTreeMap<String, String>,
    reply: &'a Reply,
    http_method: &'a str,
    path: &'a str,
    /// The account whose valid session the call carries.
    acting: Option<&'a str>,
}

fn dispatch(sim: &Sim, c: &Call<'_>) -> Response {
    let (method, p, reply, http_method, path) = (c.method, c.p, c.reply, c.http_method, c.path);
    let root = response_root(method);
    let cfg = &sim.inner.cfg;
    let owner_ok = |channel: &str, name: &str| match p.get(name) {
        Some(id) => check_owner(sim, c.acting, channel, id),
        None => Ok(()),
    };
    let result = if method == REFRESH_METHOD {
        token_refresh(sim, p)
    } else if method == CANCEL_METHOD {
        owner_ok(TMALL_TBC, "out_order_no")
            .and_then(|()| tbc_cancel(sim, method, p, reply, http_method, path))
    } else if method == cfg.paid_cancel_method {
        owner_ok(TMALL_TBC, "out_order_no")
            .and_then(|()| tbc_paid_cancel(sim, method, p, reply, http_method, path))
    } else if method == cfg.order_get_method {
        owner_ok(TMALL_TBC, "out_order_no").and_then(|()| tbc_get(sim, p))
    } else if method == DAMAI_CANCEL_METHOD {
        damai_cancel(sim, method, p, reply, http_method, path, c.acting)
    } else if method == crate::tmc::CONSUME_METHOD || method == crate::tmc::CONFIRM_METHOD {
        tmc_call(sim, method, p)
    } else {
        Err(TopError::new(22, "Invalid Method", "", ""))
    };
    match result {
        Ok(v) => reply.render(&root, v),
        Err(e) => reply.error(e),
    }
}

/// `taobao.top.auth.token.refresh`: a new session for a refresh token. The
/// `token_result` is a JSON **string** (ASSUMED shape, see `docs/simulator.md`).
fn token_refresh(sim: &Sim, p: &BTreeMap<String, String>) -> Result<Value, TopError> {
    let token = required(p, "refresh_token")?;
    let now = sim.now_ms();
    let r = crate::lock(&sim.inner.accounts)
        .refresh(token, now)
        .ok_or_else(|| {
            TopError::new(
                15,
                "Remote service error",
                "isv.refresh-token-invalid",
                "the refresh token is unknown, spent, expired or revoked",
            )
        })?;
    let token_result = json!({
        "access_token": r.access_token,
        "refresh_token": r.refresh_token,
        "expires_in": r.expires_in_s,
        "re_expires_in": r.re_expires_in_s,
        "expire_time": now.saturating_add(r.expires_in_s.saturating_mul(1000)),
        "refresh_token_valid_time": now.saturating_add(r.re_expires_in_s.saturating_mul(1000)),
        "taobao_user_nick": r.account,
        "token_type": "Bearer",
    });
    Ok(json!({"token_result": token_result.to_string()}))
}

fn tbc_result(r: Result<Value, Refusal>) -> Value {
    match r {
        Ok(mut extra) => {
            extra["success"] = Value::Bool(true);
            extra["error_code"] = Value::String(String::new());
            extra["error_message"] = Value::String(String::new());
            json!({ "result": extra })
        }
        Err(e) => {
            let (code, msg) = tbc_refusal(&e);
            json!({"result": {"success": false, "error_code": code, "error_message": msg}})
        }
    }
}

fn tbc_cancel(
    sim: &Sim,
    method: &str,
    p: &BTreeMap<String, String>,
    reply: &Reply,
    hm: &str,
    path: &str,
) -> Result<Value, TopError> {
    let order_id = required(p, "out_order_no")?;
    required(p, "source_site")?;
    let req = summary(method, reply, hm, path, business_params(p));
    let r = sim.with_book(|b, now, n| b.cancel_unpaid(TMALL_TBC, order_id, now, &req, n));
    Ok(tbc_result(r.map(|()| json!({}))))
}

fn tbc_paid_cancel(
    sim: &Sim,
    method: &str,
    p: &BTreeMap<String, String>,
    reply: &Reply,
    hm: &str,
    path: &str,
) -> Result<Value, TopError> {
    let order_id = required(p, "out_order_no")?;
    required(p, "source_site")?;
    let req = summary(method, reply, hm, path, business_params(p));
    let r = sim.with_book(|b, now, n| b.cancel_paid(TMALL_TBC, order_id, now, &req, n));
    Ok(tbc_result(r.map(|rid| json!({ "refund_id": rid }))))
}

fn tbc_get(sim: &Sim, p: &BTreeMap<String, String>) -> Result<Value, TopError> {
    let order_id = required(p, "out_order_no")?;
    required(p, "source_site")?;
    let view = sim.with_book(|b, _, _| b.order_view(TMALL_TBC, order_id));
    if let Some(v) = &view {
        let open = v
            .refund_status
            .as_deref()
            .and_then(|rs| refund_phase(TMALL_TBC, rs))
            == Some(RefundPhase::Open);
        sim.tmc_count_lookup(order_id, open);
    }
    Ok(match view {
        None => tbc_result(Err(Refusal::NotFound)),
        Some(v) => {
            let mut order = json!({"out_order_no": v.order_id, "status": v.status});
            if let (Some(rid), Some(rs)) = (v.refund_id, v.refund_status) {
                order["refund_id"] = Value::String(rid);
                order["refund_status"] = Value::String(rs);
            }
            json!({"result": {"success": true, "order": order}})
        }
    })
}

/// `taobao.tmc.messages.consume` / `.confirm` (the queues live in `tmc.rs`).
fn tmc_call(sim: &Sim, method: &str, p: &BTreeMap<String, String>) -> Result<Value, TopError> {
    use crate::tmc::TmcRefusal;
    let app_key = p.get("app_key").map(String::as_str).unwrap_or_default();
    let group = p.get("group_name").map(String::as_str);
    let r = if method == crate::tmc::CONSUME_METHOD {
        sim.tmc_consume(app_key, group, p.get("quantity").map(String::as_str))
    } else {
        sim.tmc_confirm(app_key, group, p.get("s_message_ids").map(String::as_str))
    };
    r.map_err(|e| match e {
        TmcRefusal::Disabled => TopError::new(
            11,
            "Insufficient ISV Permissions",
            "isv.tmc-not-enabled",
            "the message service is not enabled for this app",
        ),
        TmcRefusal::Quantity(why) => TopError::invalid_arg("quantity", &why),
        TmcRefusal::Ids(why) => TopError::invalid_arg("s_message_ids", &why),
    })
}

fn damai_cancel(
    sim: &Sim,
    method: &str,
    p: &BTreeMap<String, String>,
    reply: &Reply,
    hm: &str,
    path: &str,
    acting: Option<&str>,
) -> Result<Value, TopError> {
    const PARAM: &str = "param_cancel_stock_lock_request";
    let raw = required(p, PARAM)?;
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| TopError::invalid_arg(PARAM, &format!("not JSON: {e}")))?;
    let text = |path: &[&str]| -> Option<String> {
        let mut cur = &v;
        for k in path {
            cur = cur.get(*k)?;
        }
        match cur {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let order_id = text(&[
        "cancel_stock_lock_request_body",
        "cancel_stock_lock_req_param",
        "order_id",
    ])
    .filter(|s| !s.is_empty())
    .ok_or_else(|| {
        TopError::invalid_arg(
            PARAM,
            "cancel_stock_lock_request_body.cancel_stock_lock_req_param.order_id is required",
        )
    })?;
    check_owner(sim, acting, DAMAI, &order_id)?;
    let head = |k: &str| text(&["head", k]).unwrap_or_default();
    let (msg_id, supplier_key, supplier_secret, signed, time_stamp, version) = (
        head("msg_id"),
        head("supplier_key"),
        head("supplier_secret"),
        head("signed"),
        head("time_stamp"),
        head("version"),
    );
    let cfg = &sim.inner.cfg;
    let expected = cfg.damai_signer.sign(
        &DamaiHeadFields {
            msg_id: &msg_id,
            supplier_key: &supplier_key,
            time_stamp: &time_stamp,
            version: &version,
        },
        &cfg.supplier_secret,
    );
    let head_ok = supplier_key == cfg.supplier_key
        && signatures_match(&supplier_secret, cfg.supplier_secret.expose())
        && signatures_match(&signed, &expected);
    let answer = |code: &str, desc: &str| {
        json!({"result": {
            "cancel_stock_lock_result_body": {"order_id": order_id},
            "head": {"return_code": code, "return_desc": desc},
        }})
    };
    if !head_ok {
        return Ok(answer("1003", "head signature invalid"));
    }
    let mut params = business_params(p);
    params.insert("order_id".into(), order_id.clone());
    params.insert("msg_id".into(), msg_id.clone());
    let req = summary(method, reply, hm, path, params);
    let r = sim.with_book(|b, now, _| b.release_stock(&order_id, now, &req));
    Ok(match r {
        Ok(()) => answer("0", "success"),
        Err(Refusal::LockReleased) => answer("1001", "stock lock already released"),
        Err(_) => answer("1002", "no such stock lock"),
    })
}
