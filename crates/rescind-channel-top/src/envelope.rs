//! TOP response envelopes, in JSON and XML.
//!
//! A TOP answer is one object with one key: `<method with dots as
//! underscores>_response` on success, `error_response` on failure. Both
//! formats are parsed into the same [`Envelope`]; XML elements become JSON
//! values (leaves are strings, repeated elements arrays), so the business
//! checks downstream see one shape. Parsing never panics, whatever the bytes.

use serde_json::{Map, Value};

/// Deepest XML nesting accepted (deeper input is rejected, not recursed into).
pub const XML_DEPTH_MAX: usize = 64;

/// The gateway's `error_response`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopErrorResponse {
    /// `code` (a number on the wire, kept as text; absent when missing).
    pub code: Option<String>,
    /// `msg`.
    pub msg: Option<String>,
    /// `sub_code`, e.g. `isv.invalid-parameter`.
    pub sub_code: Option<String>,
    /// `sub_msg`.
    pub sub_msg: Option<String>,
}

impl TopErrorResponse {
    /// The numeric code, when it is one.
    pub fn code_num(&self) -> Option<i64> {
        self.code.as_deref().and_then(|c| c.trim().parse().ok())
    }
}

/// A parsed envelope.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    /// `{"<key>": value}` with a key other than `error_response`.
    Success {
        /// The key, e.g. `tmall_tbc_order_cancel_response`.
        key: String,
        /// What it holds.
        value: Value,
    },
    /// `{"error_response": {...}}`.
    Error(TopErrorResponse),
}

/// Why an envelope could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Empty body.
    #[error("empty response body")]
    Empty,
    /// Not JSON (or not XML, for a body starting with `<`).
    #[error("not a valid {format} document: {detail}")]
    Syntax {
        /// `json` or `xml`.
        format: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// Valid syntax, but not a one-key object.
    #[error("not a TOP envelope: {0}")]
    Shape(String),
}

/// Parse a response body: XML when its first non-blank byte is `<`, JSON otherwise.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    let doc = match first {
        None => return Err(EnvelopeError::Empty),
        Some(b'<') => xml_to_value(body)?,
        Some(_) => serde_json::from_slice::<Value>(body).map_err(|e| EnvelopeError::Syntax {
            format: "json",
            detail: e.to_string(),
        })?,
    };
    envelope_of(doc)
}

fn envelope_of(doc: Value) -> Result<Envelope, EnvelopeError> {
    let Value::Object(map) = doc else {
        return Err(EnvelopeError::Shape(format!(
            "expected an object, got {}",
            kind(&doc)
        )));
    };
    if let Some(err) = map.get("error_response") {
        return Ok(Envelope::Error(error_of(err)));
    }
    let mut it = map.into_iter();
    match (it.next(), it.next()) {
        (Some((key, value)), None) if key.ends_with("_response") => {
            Ok(Envelope::Success { key, value })
        }
        (Some((key, _)), None) => Err(EnvelopeError::Shape(format!(
            "unexpected top-level key {key:?}"
        ))),
        (None, _) => Err(EnvelopeError::Shape("empty object".into())),
        (Some(_), Some(_)) => Err(EnvelopeError::Shape("more than one top-level key".into())),
    }
}

fn error_of(v: &Value) -> TopErrorResponse {
    let field = |name: &str| v.get(name).and_then(text_of);
    TopErrorResponse {
        code: field("code"),
        msg: field("msg"),
        sub_code: field("sub_code"),
        sub_msg: field("sub_msg"),
    }
}

/// A scalar as text: strings as they are, numbers and booleans printed;
/// empty strings, null, arrays and objects give `None`.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A boolean that may arrive as JSON `true`/`false` or as text (XML).
pub fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// The JSON kind of a value, for messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct Open {
    name: String,
    children: Map<String, Value>,
    text: String,
}

fn xml_err(detail: impl std::fmt::Display) -> EnvelopeError {
    EnvelopeError::Syntax {
        format: "xml",
        detail: detail.to_string(),
    }
}

fn insert_child(parent: &mut Map<String, Value>, name: String, value: Value) {
    match parent.get_mut(&name) {
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            parent.insert(name, value);
        }
    }
}

/// Convert an XML document to a JSON value: `{"<root>": ...}`, where an
/// element with children is an object, a leaf is its text, and repeated
/// elements become an array. Attributes are ignored (TOP does not use them).
pub fn xml_to_value(body: &[u8]) -> Result<Value, EnvelopeError> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Value> = None;
    let mut buf = Vec::new();
    loop {
        let event = reader.read_event_into(&mut buf).map_err(xml_err)?;
        match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err(xml_err("content after the root element"));
                }
                if stack.len() >= XML_DEPTH_MAX {
                    return Err(xml_err(format!(
                        "nested deeper than {XML_DEPTH_MAX} elements"
                    )));
                }
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                stack.push(Open {
                    name,
                    children: Map::new(),
                    text: String::new(),
                });
            }
            Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                match stack.last_mut() {
                    Some(parent) => {
                        insert_child(&mut parent.children, name, Value::String(String::new()))
                    }
                    None if root.is_none() => {
                        let mut m = Map::new();
                        m.insert(name, Value::String(String::new()));
                        root = Some(Value::Object(m));
                    }
                    None => return Err(xml_err("content after the root element")),
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(xml_err)?;
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(xml_err("text outside the root element")),
                }
            }
            Event::CData(t) => {
                let s = String::from_utf8_lossy(&t).into_owned();
                match stack.last_mut() {
                    Some(open) => open.text.push_str(&s),
                    None => return Err(xml_err("CDATA outside the root element")),
                }
            }
            Event::End(_) => {
                let Some(open) = stack.pop() else {
                    return Err(xml_err("unbalanced end tag"));
                };
                let value = if open.children.is_empty() {
                    Value::String(open.text)
                } else {
                    Value::Object(open.children)
                };
                match stack.last_mut() {
                    Some(parent) => insert_child(&mut parent.children, open.name, value),
                    None => {
                        let mut m = Map::new();
                        m.insert(open.name, value);
                        root = Some(Value::Object(m));
                    }
                }
            }
            Event::Eof => break,
            // Declarations, comments, processing instructions, doctypes.
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(xml_err("unexpected end of document"));
    }
    root.ok_or_else(|| xml_err("no root element"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_examples_parse_in_both_formats() {
        let cases: &[(&[u8], Envelope)] = &[
            (
                r#"{"error_response":{"msg":"Remote service error","code":50,"sub_msg":"非法参数","sub_code":"isv.invalid-parameter"}}"#.as_bytes(),
                Envelope::Error(TopErrorResponse {
                    code: Some("50".into()),
                    msg: Some("Remote service error".into()),
                    sub_code: Some("isv.invalid-parameter".into()),
                    sub_msg: Some("非法参数".into()),
                }),
            ),
            (
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<error_response>\n<code>50</code>\n<msg>Remote service error</msg>\n<sub_code>isv.invalid-parameter</sub_code>\n<sub_msg>非法参数</sub_msg>\n</error_response>".as_bytes(),
                Envelope::Error(TopErrorResponse {
                    code: Some("50".into()),
                    msg: Some("Remote service error".into()),
                    sub_code: Some("isv.invalid-parameter".into()),
                    sub_msg: Some("非法参数".into()),
                }),
            ),
            (
                br#"{"tmall_tbc_order_cancel_response":{"result":{"error_code":"","error_message":"","success":true}}}"#,
                Envelope::Success {
                    key: "tmall_tbc_order_cancel_response".into(),
                    value: json!({"result":{"error_code":"","error_message":"","success":true}}),
                },
            ),
            (
                b"<tmall_tbc_order_cancel_response><result><error_code></error_code><error_message/><success>true</success></result></tmall_tbc_order_cancel_response>",
                Envelope::Success {
                    key: "tmall_tbc_order_cancel_response".into(),
                    value: json!({"result":{"error_code":"","error_message":"","success":"true"}}),
                },
            ),
            (
                b"<a_response><list><i>1</i><i>2</i><i>3</i></list></a_response>",
                Envelope::Success {
                    key: "a_response".into(),
                    value: json!({"list":{"i":["1","2","3"]}}),
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(
                &parse_envelope(body).unwrap(),
                expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b"{",
            b"[1,2]",
            b"{}",
            b"{\"a\":1}",
            b"{\"a_response\":1,\"b_response\":2}",
            b"<a_response><b></a_response>",
            b"<a_response>",
            b"<a/><b/>",
            b"<a>x</a>trailing",
            b"<a>&bogus;</a>",
        ];
        for body in cases {
            assert!(
                parse_envelope(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let deep = format!(
            "{}{}",
            "<a>".repeat(XML_DEPTH_MAX + 1),
            "</a>".repeat(XML_DEPTH_MAX + 1)
        );
        assert!(parse_envelope(deep.as_bytes()).is_err());
    }
}
