//! The PandaPon envelope `{requestId, code, developId, msg, data}` and the
//! classification of every reply into success or a [`ChannelError`].
//!
//! [`classify`] is a pure function of (HTTP status, body), table-tested
//! against the code table of `docs/channels/assumed-protocol.md` §2.

use crate::json::{clip, exact_opt, ExactText};
use rescind_core::{ChannelError, Conflict, ErrorClass, PermanentReason};
use rescind_wire::transport::TransportError;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::Duration;

/// A parsed PandaPon envelope. `data` is kept as raw JSON text so each
/// operation parses it into its own type without passing ids through `f64`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// `requestId`, when sent (useful when asking PandaPon about a call).
    pub request_id: Option<String>,
    /// `code`: 200 is success.
    pub code: i64,
    /// `developId` as exact text: it arrives as a number or as a string.
    pub develop_id: Option<String>,
    /// `msg`.
    pub msg: String,
    /// `data` as raw JSON text (`None` when absent or `null`).
    pub data: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEnvelope {
    #[serde(default, deserialize_with = "exact_opt")]
    request_id: Option<String>,
    #[serde(default)]
    code: ExactText,
    #[serde(default, deserialize_with = "exact_opt")]
    develop_id: Option<String>,
    #[serde(default)]
    msg: Option<Box<RawValue>>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

impl Envelope {
    /// Parse an envelope from a reply body. Never panics; a body that is not
    /// an envelope is a `Permanent(MalformedResponse)` error saying why.
    pub fn parse(body: &[u8]) -> Result<Envelope, ChannelError> {
        let text = std::str::from_utf8(body).map_err(|_| malformed("reply body is not UTF-8"))?;
        // serde's derived structs also accept arrays; an envelope is an object.
        if !text.trim_start().starts_with('{') {
            return Err(malformed("reply is not a JSON object"));
        }
        let wire: WireEnvelope = serde_json::from_str(text)
            .map_err(|e| malformed(format!("reply is not a PandaPon envelope: {e}")))?;
        let code_text = wire
            .code
            .0
            .ok_or_else(|| malformed("reply envelope has no code"))?;
        let code: i64 = code_text.trim().parse().map_err(|_| {
            malformed(format!(
                "envelope code {:?} is not an integer",
                clip(&code_text)
            ))
        })?;
        let msg = match wire.msg {
            None => String::new(),
            Some(raw) => match serde_json::from_str::<Option<String>>(raw.get()) {
                Ok(m) => m.unwrap_or_default(),
                // A non-string msg is odd but not worth failing on: keep its text.
                Err(_) => clip(raw.get()),
            },
        };
        let data = wire
            .data
            .map(|d| d.get().to_owned())
            .filter(|d| d.trim() != "null");
        Ok(Envelope {
            request_id: wire.request_id.filter(|s| !s.is_empty()),
            code,
            develop_id: wire.develop_id,
            msg,
            data,
        })
    }

    /// Parse `data` into `T`; absent or mismatched data is `MalformedResponse`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, ChannelError> {
        let raw = self
            .data
            .as_deref()
            .ok_or_else(|| malformed(format!("{what}: envelope has no data")))?;
        serde_json::from_str(raw).map_err(|e| malformed(format!("{what}: unexpected data: {e}")))
    }
}

pub(crate) fn malformed(msg: impl Into<String>) -> ChannelError {
    ChannelError::permanent(PermanentReason::MalformedResponse, msg)
}

/// Parse "rate limited, retry after N seconds" (any text with "after N").
pub fn parse_retry_after(msg: &str) -> Option<Duration> {
    let lower = msg.to_ascii_lowercase();
    let rest = &lower[lower.find("after")? + "after".len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let n: u64 = digits.parse().ok()?;
    let unit = rest.trim_start()[digits.len()..].trim_start();
    if unit.starts_with("ms") || unit.starts_with("milli") {
        Some(Duration::from_millis(n))
    } else {
        Some(Duration::from_secs(n))
    }
}

/// The class of an envelope code other than 200 (assumed-protocol.md §2).
pub fn class_of_code(code: i64, msg: &str) -> ErrorClass {
    use PermanentReason as P;
    match code {
        400 => ErrorClass::Permanent(P::InvalidRequest),
        401 => ErrorClass::Permanent(P::Auth),
        403 => ErrorClass::Permanent(P::ClockSkew),
        404 => ErrorClass::Permanent(P::NotFound),
        429 => ErrorClass::Retryable {
            wait_ms: parse_retry_after(msg).map(|d| d.as_millis() as u64),
            applied: rescind_core::Applied::No,
        },
        500..=599 => ErrorClass::Retryable {
            wait_ms: None,
            applied: rescind_core::Applied::Maybe,
        },
        1001 | 1101 | 1104 => ErrorClass::AlreadyDone,
        1002 => ErrorClass::Conflict(Conflict::PaidMeanwhile),
        1003 => ErrorClass::Conflict(Conflict::AlreadyShipped),
        1102 => ErrorClass::Conflict(Conflict::RefundAlreadyCompleted),
        1103 => ErrorClass::Conflict(Conflict::RefundClosed),
        _ => ErrorClass::Permanent(P::Other),
    }
}

/// Classify one reply: `Ok(envelope)` when the envelope's code is 200,
/// otherwise the classified error carrying PandaPon's code and `msg`.
///
/// HTTP 5xx (gateway faults, 504) is in doubt (retryable, maybe applied);
/// HTTP 429 is a rate limit; any other non-200 status without an envelope is
/// permanent. A 200 whose body is not an envelope is `MalformedResponse`.
pub fn classify(http_status: u16, body: &[u8]) -> Result<Envelope, ChannelError> {
    let parsed = Envelope::parse(body);
    if http_status >= 500 {
        let msg = parsed.as_ref().map(|e| e.msg.clone()).unwrap_or_default();
        return Err(ChannelError::in_doubt(format!(
            "PandaPon gateway answered HTTP {http_status}{}",
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        ))
        .with_codes(Some(format!("http-{http_status}")), None));
    }
    if http_status == 429 && parsed.is_err() {
        let text = String::from_utf8_lossy(body);
        return Err(ChannelError::rate_limited(
            parse_retry_after(&text),
            format!("PandaPon rate limit (HTTP 429): {}", clip(&text)),
        )
        .with_codes(Some("http-429".into()), None));
    }
    let env = match parsed {
        Ok(env) => env,
        Err(e) if http_status == 200 => return Err(e),
        Err(_) => {
            return Err(ChannelError::permanent(
                PermanentReason::Other,
                format!(
                "HTTP {http_status} without a PandaPon envelope (is the path configured right?)"
            ),
            )
            .with_codes(Some(format!("http-{http_status}")), None))
        }
    };
    if env.code == 200 {
        return Ok(env);
    }
    let class = class_of_code(env.code, &env.msg);
    let msg = if env.msg.is_empty() {
        format!("PandaPon code {}", env.code)
    } else {
        env.msg.clone()
    };
    Err(ChannelError::new(class, msg).with_codes(Some(env.code.to_string()), None))
}

/// Classify a transport failure: no response is in doubt, not sent is not applied.
pub fn classify_transport(e: &TransportError) -> ChannelError {
    match e {
        TransportError::NoResponse(m) => {
            ChannelError::in_doubt(format!("PandaPon: no response: {m}"))
        }
        TransportError::NotSent(m) => {
            ChannelError::not_applied(format!("PandaPon: request not sent: {m}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::Applied;

    const SEED_003: &str = r#"{
    "requestId": "0d1de79d9f4540308d14c558f86cb3da",
    "code": 200,
    "developId": "1110890638347337996",
    "msg": "成功",
    "data": true
}"#;

    #[test]
    fn seed_003_parses_exactly() {
        let env = classify(200, SEED_003.as_bytes()).unwrap();
        assert_eq!(
            env.request_id.as_deref(),
            Some("0d1de79d9f4540308d14c558f86cb3da")
        );
        assert_eq!(env.code, 200);
        assert_eq!(env.develop_id.as_deref(), Some("1110890638347337996"));
        assert_eq!(env.msg, "成功");
        assert!(env.data_as::<bool>("cancel").unwrap());
    }

    #[test]
    fn develop_id_as_number_is_exact() {
        let body = br#"{"requestId":"r","code":200,"developId":1110890638347337996,"msg":"ok","data":null}"#;
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.develop_id.as_deref(), Some("1110890638347337996"));
        assert_eq!(env.data, None);
    }

    fn class(status: u16, body: &str) -> Result<(), (ErrorClass, Option<String>)> {
        classify(status, body.as_bytes())
            .map(|_| ())
            .map_err(|e| (e.class, e.code))
    }

    fn env(code: i64, msg: &str) -> String {
        format!(r#"{{"requestId":"x","code":{code},"developId":1,"msg":"{msg}","data":null}}"#)
    }

    #[test]
    fn code_table() {
        use ErrorClass as C;
        use PermanentReason as P;
        let retry = |wait_ms, applied| C::Retryable { wait_ms, applied };
        let cases: Vec<(u16, String, Result<(), ErrorClass>)> = vec![
            (200, env(200, "ok"), Ok(())),
            (200, env(400, "bad"), Err(C::Permanent(P::InvalidRequest))),
            (200, env(401, "sig"), Err(C::Permanent(P::Auth))),
            (200, env(403, "skew"), Err(C::Permanent(P::ClockSkew))),
            (200, env(404, "none"), Err(C::Permanent(P::NotFound))),
            (
                200,
                env(429, "rate limited, retry after 7 seconds"),
                Err(retry(Some(7000), Applied::No)),
            ),
            (200, env(429, "rate limited"), Err(retry(None, Applied::No))),
            (200, env(500, "x"), Err(retry(None, Applied::Maybe))),
            (200, env(502, "x"), Err(retry(None, Applied::Maybe))),
            (200, env(503, "x"), Err(retry(None, Applied::Maybe))),
            (200, env(1001, "x"), Err(C::AlreadyDone)),
            (
                200,
                env(1002, "x"),
                Err(C::Conflict(Conflict::PaidMeanwhile)),
            ),
            (
                200,
                env(1003, "x"),
                Err(C::Conflict(Conflict::AlreadyShipped)),
            ),
            (200, env(1101, "x"), Err(C::AlreadyDone)),
            (
                200,
                env(1102, "x"),
                Err(C::Conflict(Conflict::RefundAlreadyCompleted)),
            ),
            (
                200,
                env(1103, "x"),
                Err(C::Conflict(Conflict::RefundClosed)),
            ),
            (200, env(1104, "x"), Err(C::AlreadyDone)),
            (200, env(0, ""), Err(C::Permanent(P::Other))),
            (200, env(7777, "?"), Err(C::Permanent(P::Other))),
            (500, String::new(), Err(retry(None, Applied::Maybe))),
            (
                502,
                "<html>bad gateway</html>".into(),
                Err(retry(None, Applied::Maybe)),
            ),
            (504, env(200, "ok"), Err(retry(None, Applied::Maybe))),
            (
                429,
                "retry after 3 seconds".into(),
                Err(retry(Some(3000), Applied::No)),
            ),
            (
                404,
                "<html>not found</html>".into(),
                Err(C::Permanent(P::Other)),
            ),
            (
                404,
                env(404, "no such order"),
                Err(C::Permanent(P::NotFound)),
            ),
            (
                200,
                "not json".into(),
                Err(C::Permanent(P::MalformedResponse)),
            ),
            (200, "{}".into(), Err(C::Permanent(P::MalformedResponse))),
            (200, r#"{"code":"200","msg":"ok"}"#.into(), Ok(())),
            (
                200,
                r#"{"code":2.5}"#.into(),
                Err(C::Permanent(P::MalformedResponse)),
            ),
            (200, "[1,2]".into(), Err(C::Permanent(P::MalformedResponse))),
        ];
        for (status, body, want) in cases {
            let got = class(status, &body).map_err(|(c, _)| c);
            assert_eq!(got, want, "HTTP {status} {body}");
        }
    }

    #[test]
    fn errors_keep_code_and_msg() {
        let e = classify(200, env(1002, "order already paid").as_bytes()).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("1002"));
        assert_eq!(e.message, "order already paid");
        let e = classify(503, b"").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("http-503"));
    }

    #[test]
    fn retry_after_parses() {
        assert_eq!(
            parse_retry_after("rate limited, retry after 12 seconds"),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after("Retry After 250ms"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_retry_after("retry later"), None);
        assert_eq!(parse_retry_after("after"), None);
        assert_eq!(parse_retry_after("after ü"), None);
    }

    #[test]
    fn transport_errors() {
        let e = classify_transport(&TransportError::NoResponse("timeout".into()));
        assert!(matches!(
            e.class,
            ErrorClass::Retryable {
                applied: Applied::Maybe,
                ..
            }
        ));
        let e = classify_transport(&TransportError::NotSent("refused".into()));
        assert!(matches!(
            e.class,
            ErrorClass::Retryable {
                applied: Applied::No,
                ..
            }
        ));
    }
}
