//! Classification: from what the gateway (or the network) said to the
//! [`ChannelError`] class the engine acts on. Pure functions, table-tested.
//!
//! | what came back | class |
//! |---|---|
//! | transport: not sent | Retryable, not applied |
//! | transport: no response; HTTP 5xx (504 included) | Retryable, **may have been applied** (in doubt) |
//! | HTTP 4xx | Retryable, not applied |
//! | body that is not a TOP envelope | Retryable, in doubt (the effect is unknown) |
//! | codes 4–8 (call limits) | Retryable after the ban's wait (`sub_msg` "This ban will last for N more seconds"), not applied |
//! | code 31 (invalid timestamp) | Permanent(ClockSkew): the local clock is off |
//! | codes 26, 27 (missing / invalid session) | Permanent(InvalidSession): re-authorise |
//! | codes 9, 11–13, 21–25, 28, 29, 32–34, 40–43 | Permanent (Auth for credentials and signature, InvalidRequest otherwise) |
//! | any other `isv.*` sub-code | Permanent(InvalidRequest) |
//! | any `isp.*` sub-code; codes 10, 15, 50 | Retryable, in doubt |
//! | any other code | Permanent(Other) |
//!
//! Every error keeps the gateway's `code` and `sub_code`; its `msg` and
//! `sub_msg` are in the message.

use crate::envelope::{bool_of, kind, parse_envelope, text_of, Envelope, TopErrorResponse};
use rescind_core::{Applied, ChannelError, Conflict, ErrorClass, PermanentReason};
use rescind_wire::transport::TransportError;
use serde_json::Value;
use std::time::Duration;

/// The success key of a method: dots become underscores, plus `_response`;
/// TOP drops the `taobao.` prefix of its own methods
/// (`taobao.top.auth.token.refresh` → `top_auth_token_refresh_response`).
pub fn response_key(method: &str) -> String {
    let m = method.strip_prefix("taobao.").unwrap_or(method);
    format!("{}_response", m.replace('.', "_"))
}

/// Classify a transport failure.
pub fn classify_transport(e: &TransportError) -> ChannelError {
    match e {
        TransportError::NotSent(why) => {
            ChannelError::not_applied(format!("TOP request not sent: {why}"))
        }
        TransportError::NoResponse(why) => ChannelError::in_doubt(format!(
            "no response from the TOP gateway (the call may have been applied): {why}"
        )),
    }
}

/// Classify an HTTP response to `method`: the value inside
/// `<method>_response` on success, a classified error otherwise. Business
/// results inside that value (`success: false`) are checked by the caller,
/// per API ([`check_tbc_result`], [`crate::damai::check_damai_result`]).
///
/// ```
/// use rescind_channel_top::classify_response;
/// use rescind_core::{Applied, ErrorClass};
///
/// let body = br#"{"error_response":{"code":7,"msg":"App Call Limited",
///     "sub_code":"accesscontrol.limited-by-app-access-count",
///     "sub_msg":"This ban will last for 12 more seconds"}}"#;
/// let e = classify_response(200, body, "tmall.tbc.order.cancel").unwrap_err();
/// assert_eq!(e.class, ErrorClass::Retryable { wait_ms: Some(12_000), applied: Applied::No });
/// assert_eq!(e.code.as_deref(), Some("7"));
/// ```
pub fn classify_response(status: u16, body: &[u8], method: &str) -> Result<Value, ChannelError> {
    if status != 200 {
        let codes = match parse_envelope(body) {
            Ok(Envelope::Error(e)) => (e.code, e.sub_code),
            _ => (None, None),
        };
        let message = format!("HTTP {status} from the TOP gateway for {method}");
        let err = if status == 429 {
            ChannelError::rate_limited(None, message)
        } else if (400..500).contains(&status) {
            ChannelError::not_applied(message)
        } else {
            // 5xx (a 504 is a lost response) and anything unexpected: the
            // request may have reached the API.
            ChannelError::in_doubt(message)
        };
        return Err(err.with_codes(codes.0, codes.1));
    }
    match parse_envelope(body) {
        Ok(Envelope::Error(e)) => Err(classify_error_response(&e)),
        Ok(Envelope::Success { key, value }) => {
            let expected = response_key(method);
            if key == expected {
                Ok(value)
            } else {
                Err(ChannelError::in_doubt(format!(
                    "malformed TOP response for {method}: expected {expected:?}, got {key:?}"
                )))
            }
        }
        Err(e) => Err(ChannelError::in_doubt(format!(
            "malformed TOP response for {method}: {e}"
        ))),
    }
}

/// The wait a rate-limit message asks for: "This ban will last for N more seconds".
pub fn ban_wait(text: &str) -> Option<Duration> {
    const MARK: &str = "last for ";
    let start = text.find(MARK)? + MARK.len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let secs: u64 = digits.parse().ok()?;
    let rest = text[start + digits.len()..].trim_start();
    rest.starts_with("more second")
        .then(|| Duration::from_secs(secs))
}

/// The ban an error imposes on its whole app key: codes 4–8 (call limits;
/// TOP keeps its flow control per app key, CHANNELS.md), for the wait the
/// answer states ("This ban will last for N more seconds"), or 1 s when it
/// states none. `None` for every other error.
pub fn app_ban(e: &ChannelError) -> Option<Duration> {
    let code: i64 = e.code.as_deref()?.trim().parse().ok()?;
    if !(4..=8).contains(&code) {
        return None;
    }
    match &e.class {
        ErrorClass::Retryable { wait_ms, .. } => {
            Some(Duration::from_millis(wait_ms.unwrap_or(1_000)))
        }
        _ => None,
    }
}

/// Codes whose meaning is fixed whatever the sub-code: (code, reason, hint).
const PERMANENT_CODES: &[(i64, PermanentReason, &str)] = &[
    (
        9,
        PermanentReason::InvalidRequest,
        "HTTP action not allowed",
    ),
    (
        11,
        PermanentReason::Auth,
        "the app lacks the permission for this API",
    ),
    (
        12,
        PermanentReason::Auth,
        "the user lacks the permission for this API",
    ),
    (
        13,
        PermanentReason::Auth,
        "the partner lacks the permission for this API",
    ),
    (21, PermanentReason::InvalidRequest, "missing method"),
    (
        22,
        PermanentReason::Unsupported,
        "invalid method: check the configured method name",
    ),
    (23, PermanentReason::InvalidRequest, "invalid format"),
    (24, PermanentReason::Auth, "missing signature"),
    (
        25,
        PermanentReason::Auth,
        "invalid signature: check app_secret and sign_method",
    ),
    (28, PermanentReason::Auth, "missing app_key"),
    (29, PermanentReason::Auth, "invalid app_key"),
    (32, PermanentReason::InvalidRequest, "invalid encoding"),
    (33, PermanentReason::InvalidRequest, "too many parameters"),
    (34, PermanentReason::InvalidRequest, "invalid parameter"),
    (
        40,
        PermanentReason::InvalidRequest,
        "missing required arguments",
    ),
    (41, PermanentReason::InvalidRequest, "invalid arguments"),
    (42, PermanentReason::InvalidRequest, "forbidden request"),
    (43, PermanentReason::InvalidRequest, "parameter error"),
];

fn fixed_code(code: i64) -> Option<(PermanentReason, &'static str)> {
    PERMANENT_CODES
        .iter()
        .find(|(k, _, _)| *k == code)
        .map(|(_, reason, hint)| (reason.clone(), *hint))
}

fn top_words(e: &TopErrorResponse) -> String {
    match (&e.msg, &e.sub_msg) {
        (Some(m), Some(s)) => format!("{m}: {s}"),
        (Some(m), None) => m.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => "(no message)".into(),
    }
}

/// Classify an `error_response`.
pub fn classify_error_response(e: &TopErrorResponse) -> ChannelError {
    let words = top_words(e);
    let code = e.code_num();
    let sub = e.sub_code.as_deref().unwrap_or("");
    let err = match code {
        Some(4..=8) => {
            let wait = e.sub_msg.as_deref().and_then(ban_wait).or_else(|| e.msg.as_deref().and_then(ban_wait));
            ChannelError::rate_limited(wait, format!("TOP call limit reached: {words}"))
        }
        Some(31) => ChannelError::permanent(
            PermanentReason::ClockSkew,
            format!(
                "TOP rejected the timestamp: the local clock is off by more than the 10 minutes the gateway accepts; fix the host's clock (NTP). TOP said: {words}"
            ),
        ),
        Some(26 | 27) => ChannelError::permanent(
            PermanentReason::InvalidSession,
            format!(
                "TOP session invalid or missing: re-authorise the app for this seller and update `session` in the configuration; not retried. TOP said: {words}"
            ),
        ),
        Some(c) if fixed_code(c).is_some() => {
            let (reason, hint) = fixed_code(c).unwrap_or((PermanentReason::Other, ""));
            ChannelError::permanent(reason, format!("{hint}. TOP said: {words}"))
        }
        _ if sub.starts_with("isv.") => {
            ChannelError::permanent(PermanentReason::InvalidRequest, format!("TOP rejected the request: {words}"))
        }
        _ if sub.starts_with("isp.") => ChannelError::in_doubt(format!("TOP platform fault, retry later: {words}")),
        Some(10 | 15 | 50) => ChannelError::in_doubt(format!("TOP service unavailable or remote error: {words}")),
        _ => ChannelError::permanent(PermanentReason::Other, format!("TOP error: {words}")),
    };
    err.with_codes(e.code.clone(), e.sub_code.clone())
}

/// Business `error_code`s inside a TBC `result` (assumed, see
/// `docs/channels/assumed-protocol.md`); any other code is Permanent(Other).
pub const TBC_RESULT_CODES: &[(&str, ErrorClass)] = &[
    ("ORDER_ALREADY_CANCELLED", ErrorClass::AlreadyDone),
    ("ORDER_PAID", ErrorClass::Conflict(Conflict::PaidMeanwhile)),
    (
        "ORDER_NOT_PAID",
        ErrorClass::Conflict(Conflict::Other {
            detail: String::new(),
        }),
    ),
    (
        "ORDER_SHIPPED",
        ErrorClass::Conflict(Conflict::AlreadyShipped),
    ),
    ("REFUND_ALREADY_OPEN", ErrorClass::AlreadyDone),
    (
        "ORDER_NOT_FOUND",
        ErrorClass::Permanent(PermanentReason::NotFound),
    ),
];

/// Check a TBC `result` object (`{success, error_code, error_message, ...}`):
/// `success: true` gives the result; `success: false` is never success and is
/// classified by its `error_code`; a missing or odd `success` is in doubt.
pub fn check_tbc_result<'a>(response: &'a Value, method: &str) -> Result<&'a Value, ChannelError> {
    let Some(result) = response.get("result").filter(|r| r.is_object()) else {
        return Err(ChannelError::in_doubt(format!(
            "malformed {method} response: no result object"
        )));
    };
    match result.get("success").and_then(bool_of) {
        Some(true) => Ok(result),
        Some(false) => {
            let code = result.get("error_code").and_then(text_of);
            let message = result.get("error_message").and_then(text_of);
            let words = format!(
                "{method} failed: {} ({})",
                message.as_deref().unwrap_or("no message"),
                code.as_deref().unwrap_or("no error_code")
            );
            let class = code
                .as_deref()
                .and_then(|c| TBC_RESULT_CODES.iter().find(|(k, _)| *k == c))
                .map(|(_, class)| class.clone())
                .unwrap_or(ErrorClass::Permanent(PermanentReason::Other));
            let class = match class {
                ErrorClass::Conflict(Conflict::Other { .. }) => {
                    ErrorClass::Conflict(Conflict::Other {
                        detail: words.clone(),
                    })
                }
                other => other,
            };
            Err(ChannelError::new(class, words).with_codes(code, None))
        }
        None => Err(ChannelError::in_doubt(format!(
            "malformed {method} response: result.success is {}",
            result.get("success").map(kind).unwrap_or("missing")
        ))),
    }
}

/// Whether an error may have been applied (for logs).
pub fn maybe_applied(e: &ChannelError) -> bool {
    matches!(
        e.class,
        ErrorClass::Retryable {
            applied: Applied::Maybe,
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(wait_ms: Option<u64>, applied: Applied) -> ErrorClass {
        ErrorClass::Retryable { wait_ms, applied }
    }
    fn perm(r: PermanentReason) -> ErrorClass {
        ErrorClass::Permanent(r)
    }
    fn err(code: i64, sub: &str, msg: &str, sub_msg: &str) -> String {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), code.into());
        m.insert("msg".into(), msg.into());
        if !sub.is_empty() {
            m.insert("sub_code".into(), sub.into());
        }
        if !sub_msg.is_empty() {
            m.insert("sub_msg".into(), sub_msg.into());
        }
        serde_json::json!({ "error_response": m }).to_string()
    }

    /// (HTTP status, body, expected class, expected code, expected sub_code).
    type Case = (
        u16,
        String,
        ErrorClass,
        Option<&'static str>,
        Option<&'static str>,
    );

    #[test]
    fn classification_table() {
        use Applied::*;
        use PermanentReason::*;
        let m = "tmall.tbc.order.cancel";
        let cases: Vec<Case> = vec![
            (504, String::new(), retry(None, Maybe), None, None),
            (
                502,
                "<html>bad gateway</html>".into(),
                retry(None, Maybe),
                None,
                None,
            ),
            (400, String::new(), retry(None, No), None, None),
            (429, String::new(), retry(None, No), None, None),
            (200, "garbage".into(), retry(None, Maybe), None, None),
            (
                200,
                r#"{"other_response":{}}"#.into(),
                retry(None, Maybe),
                None,
                None,
            ),
            (
                200,
                err(
                    7,
                    "accesscontrol.limited-by-app-access-count",
                    "App Call Limited",
                    "This ban will last for 3 more seconds",
                ),
                retry(Some(3000), No),
                Some("7"),
                Some("accesscontrol.limited-by-app-access-count"),
            ),
            (
                200,
                err(5, "", "limited", ""),
                retry(None, No),
                Some("5"),
                None,
            ),
            (
                200,
                err(31, "", "Invalid Timestamp", ""),
                perm(ClockSkew),
                Some("31"),
                None,
            ),
            (
                200,
                err(27, "", "Invalid Session", ""),
                perm(InvalidSession),
                Some("27"),
                None,
            ),
            (
                200,
                err(26, "", "Missing Session", ""),
                perm(InvalidSession),
                Some("26"),
                None,
            ),
            (
                200,
                err(25, "isv.invalid-signature", "Invalid signature", ""),
                perm(Auth),
                Some("25"),
                Some("isv.invalid-signature"),
            ),
            (
                200,
                err(29, "", "Invalid App Key", ""),
                perm(Auth),
                Some("29"),
                None,
            ),
            (
                200,
                err(22, "", "Invalid Method", ""),
                perm(Unsupported),
                Some("22"),
                None,
            ),
            (
                200,
                err(41, "", "Invalid Arguments", ""),
                perm(InvalidRequest),
                Some("41"),
                None,
            ),
            (
                200,
                err(
                    50,
                    "isv.invalid-parameter",
                    "Remote service error",
                    "非法参数",
                ),
                perm(InvalidRequest),
                Some("50"),
                Some("isv.invalid-parameter"),
            ),
            (
                200,
                err(15, "isv.order-invalid", "Remote service error", ""),
                perm(InvalidRequest),
                Some("15"),
                Some("isv.order-invalid"),
            ),
            (
                200,
                err(
                    15,
                    "isp.top-remote-connection-timeout",
                    "Remote service error",
                    "",
                ),
                retry(None, Maybe),
                Some("15"),
                Some("isp.top-remote-connection-timeout"),
            ),
            (
                200,
                err(
                    50,
                    "isp.top-remote-service-unavailable",
                    "Remote service error",
                    "",
                ),
                retry(None, Maybe),
                Some("50"),
                Some("isp.top-remote-service-unavailable"),
            ),
            (
                200,
                err(15, "", "Remote service error", ""),
                retry(None, Maybe),
                Some("15"),
                None,
            ),
            (
                200,
                err(10, "", "Service currently unavailable", ""),
                retry(None, Maybe),
                Some("10"),
                None,
            ),
            (
                200,
                err(99, "", "Something new", ""),
                perm(Other),
                Some("99"),
                None,
            ),
        ];
        for (status, body, class, code, sub) in cases {
            let e = classify_response(status, body.as_bytes(), m).unwrap_err();
            assert_eq!(e.class, class, "{status} {body}: {e}");
            assert_eq!(e.code.as_deref(), code, "{status} {body}");
            assert_eq!(e.sub_code.as_deref(), sub, "{status} {body}");
        }
    }

    #[test]
    fn messages_say_what_to_do_and_keep_top_words() {
        let e = classify_response(
            200,
            err(31, "", "Invalid Timestamp", "time off").as_bytes(),
            "m",
        )
        .unwrap_err();
        assert!(
            e.message.contains("local clock is off")
                && e.message.contains("Invalid Timestamp: time off"),
            "{e}"
        );
        let e =
            classify_response(200, err(27, "", "Invalid Session", "").as_bytes(), "m").unwrap_err();
        assert!(e.message.contains("re-authorise"), "{e}");
        let e = classify_response(
            200,
            err(
                50,
                "isv.invalid-parameter",
                "Remote service error",
                "非法参数",
            )
            .as_bytes(),
            "m",
        )
        .unwrap_err();
        assert!(e.message.contains("Remote service error: 非法参数"), "{e}");
        assert!(e.to_string().contains("isv.invalid-parameter"), "{e}");
    }

    #[test]
    fn ban_waits() {
        let cases: &[(&str, Option<u64>)] = &[
            ("This ban will last for 71 more seconds", Some(71)),
            ("This ban will last for 1 more second", Some(1)),
            ("this ban will last for  more seconds", None),
            ("This ban will last for 12 minutes", None),
            ("", None),
            ("last for 99999999999999999999999 more seconds", None),
        ];
        for (text, secs) in cases {
            assert_eq!(ban_wait(text), secs.map(Duration::from_secs), "{text}");
        }
    }

    #[test]
    fn success_envelopes_and_business_results() {
        let m = "tmall.tbc.order.cancel";
        let ok = classify_response(
            200,
            br#"{"tmall_tbc_order_cancel_response":{"result":{"success":true}}}"#,
            m,
        )
        .unwrap();
        assert!(check_tbc_result(&ok, m).is_ok());
        // XML: success arrives as text.
        let ok = classify_response(200, b"<tmall_tbc_order_cancel_response><result><success>true</success></result></tmall_tbc_order_cancel_response>", m).unwrap();
        assert!(check_tbc_result(&ok, m).is_ok());

        let cases: &[(&str, ErrorClass)] = &[
            (
                r#"{"result":{"success":false,"error_code":"ORDER_ALREADY_CANCELLED","error_message":"x"}}"#,
                ErrorClass::AlreadyDone,
            ),
            (
                r#"{"result":{"success":false,"error_code":"ORDER_PAID","error_message":"x"}}"#,
                ErrorClass::Conflict(Conflict::PaidMeanwhile),
            ),
            (
                r#"{"result":{"success":false,"error_code":"ORDER_SHIPPED"}}"#,
                ErrorClass::Conflict(Conflict::AlreadyShipped),
            ),
            (
                r#"{"result":{"success":false,"error_code":"REFUND_ALREADY_OPEN"}}"#,
                ErrorClass::AlreadyDone,
            ),
            (
                r#"{"result":{"success":false,"error_code":"ORDER_NOT_FOUND"}}"#,
                perm(PermanentReason::NotFound),
            ),
            (
                r#"{"result":{"success":false,"error_code":"SOMETHING_ELSE"}}"#,
                perm(PermanentReason::Other),
            ),
            (
                r#"{"result":{"success":false}}"#,
                perm(PermanentReason::Other),
            ),
            (
                r#"{"result":{"success":"false","error_code":"ORDER_PAID"}}"#,
                ErrorClass::Conflict(Conflict::PaidMeanwhile),
            ),
            (
                r#"{"result":{"error_code":""}}"#,
                retry(None, Applied::Maybe),
            ),
            (
                r#"{"result":{"success":"yes"}}"#,
                retry(None, Applied::Maybe),
            ),
            (r#"{"result":7}"#, retry(None, Applied::Maybe)),
            (r#"{}"#, retry(None, Applied::Maybe)),
        ];
        for (v, class) in cases {
            let v: Value = serde_json::from_str(v).unwrap();
            let e = check_tbc_result(&v, m).unwrap_err();
            assert_eq!(&e.class, class, "{v}");
        }
        let v: Value = serde_json::from_str(r#"{"result":{"success":false,"error_code":"ORDER_NOT_PAID","error_message":"not paid"}}"#).unwrap();
        let e = check_tbc_result(&v, m).unwrap_err();
        assert!(
            matches!(&e.class, ErrorClass::Conflict(Conflict::Other { detail }) if detail.contains("not paid")),
            "{e:?}"
        );
        assert_eq!(e.code.as_deref(), Some("ORDER_NOT_PAID"));
    }
}
