//! Helpers shared by the gateways: bounded body reading, strict form
//! decoding, fault responses, lost responses.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

use crate::faults::LostResponseMode;

/// Marks a response as lost: [`crate::SimTransport`] turns it into
/// `TransportError::NoResponse`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LostResponse;

/// Why a body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Io,
}

pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            // axum wraps length-limit errors; anything else is a broken stream.
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(BodyError::TooLarge);
                }
                src = s.source();
            }
            if e.to_string().contains("length limit") {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Io)
            }
        }
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode one `application/x-www-form-urlencoded` component strictly: `+` is
/// a space, `%XY` must be two hex digits, and the result must be UTF-8.
pub(crate) fn decode_component(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_val(*s.get(i + 1)?)?;
                let lo = hex_val(*s.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Parse a form body or query string strictly; `None` on bad encoding.
pub(crate) fn parse_form(s: &[u8]) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for part in s.split(|b| *b == b'&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = match part.iter().position(|b| *b == b'=') {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        out.push((decode_component(k)?, decode_component(v)?));
    }
    Some(out)
}

/// The body of a gateway 5xx (as a fronting proxy sends it).
pub(crate) fn gateway_5xx(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let text = format!(
        "<html><head><title>{code}</title></head><body><center><h1>{code}</h1></center></body></html>"
    );
    let mut r = (code, text).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// A lost response: the effect was applied; the client gets no answer.
pub(crate) fn lost(mode: LostResponseMode) -> Response {
    let mut r = match mode {
        LostResponseMode::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT.into_response(),
        LostResponseMode::Drop => {
            // A body that fails makes hyper abort the connection mid-response.
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "simulated lost response",
                ))
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
    };
    r.extensions_mut().insert(LostResponse);
    r
}

pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    r
}

fn xml_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Render a JSON value as TOP-style XML under element `name`.
pub(crate) fn to_xml(name: &str, v: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match v {
        Value::Array(items) => {
            for i in items {
                to_xml(name, i, out);
            }
        }
        _ => {
            out.push('<');
            out.push_str(name);
            out.push('>');
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        to_xml(k, x, out);
                    }
                }
                Value::String(s) => xml_escape(s, out),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            }
            out.push_str("</");
            out.push_str(name);
            out.push('>');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_form_decoding() {
        assert_eq!(
            parse_form(b"a=1&timestamp=2025-11-04+01%3A00%3A40&&b").unwrap(),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("timestamp".to_owned(), "2025-11-04 01:00:40".to_owned()),
                ("b".to_owned(), String::new())
            ]
        );
        assert_eq!(parse_form(b"a=%zz"), None);
        assert_eq!(parse_form(b"a=%4"), None);
        assert_eq!(parse_form(b"a=%FF%FE"), None);
        assert_eq!(
            parse_form("k=%E5%8F%96%E6%B6%88".as_bytes()).unwrap()[0].1,
            "取消"
        );
    }

    #[test]
    fn xml_rendering_escapes() {
        let mut s = String::new();
        to_xml(
            "r",
            &serde_json::json!({"a": "<&>", "b": 1, "c": true}),
            &mut s,
        );
        assert_eq!(s, "<r><a>&lt;&amp;&gt;</a><b>1</b><c>true</c></r>");
    }
}
