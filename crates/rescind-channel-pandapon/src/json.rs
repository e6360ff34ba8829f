//! Exact JSON helpers: ids and codes that arrive as numbers *or* strings.
//!
//! PandaPon sends `developId` as a number in one page and a string in another,
//! and 1688 order ids are integers that exceed 2^53. Everything here reads the
//! raw JSON text of such a field (serde_json's `RawValue`), so a number never
//! passes through `f64`: its digits are kept verbatim as a decimal string.

use serde::de::{Deserialize, Deserializer, Error as _};
use serde_json::value::RawValue;

/// A JSON scalar read exactly as text: a string's content, or a number's
/// digits verbatim. `null` reads as `None`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ExactText(pub Option<String>);

impl<'de> Deserialize<'de> for ExactText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Box<RawValue> = Deserialize::deserialize(d)?;
        raw_to_text(raw.get())
            .map(ExactText)
            .map_err(D::Error::custom)
    }
}

/// Read a raw JSON scalar as exact text. Objects, arrays and booleans are errors.
pub(crate) fn raw_to_text(raw: &str) -> Result<Option<String>, String> {
    let raw = raw.trim();
    match raw.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(raw)
            .map(Some)
            .map_err(|e| format!("bad string: {e}")),
        Some(b'n') if raw == "null" => Ok(None),
        Some(b'-' | b'0'..=b'9') => {
            // Keep the number's digits exactly as sent; only plain integers
            // are ids or codes (a fraction or exponent is not).
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(Some(raw.to_owned()))
            } else {
                Err(format!("expected an integer, found {}", clip(raw)))
            }
        }
        _ => Err(format!(
            "expected a string or an integer, found {}",
            clip(raw)
        )),
    }
}

/// At most 64 characters of `s`, for error messages about untrusted input.
pub(crate) fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// `#[serde(deserialize_with = "exact_opt")]` for `Option<String>` fields
/// that may arrive as numbers or strings (missing fields need `default`).
pub(crate) fn exact_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    ExactText::deserialize(d).map(|t| t.0)
}

/// Like [`exact_opt`], but the value is required and must not be null or empty.
pub(crate) fn exact_req<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match ExactText::deserialize(d)?.0 {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(D::Error::custom("required id is null or empty")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "exact_opt")]
        id: Option<String>,
    }

    #[test]
    fn exact_text_table() {
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            (
                r#"{"id":2542285634920880794}"#,
                Ok(Some("2542285634920880794")),
            ),
            (
                r#"{"id":"1110890638347337996"}"#,
                Ok(Some("1110890638347337996")),
            ),
            (
                r#"{"id":1110890638347337996}"#,
                Ok(Some("1110890638347337996")),
            ),
            // Beyond u64: still exact, digits kept.
            (
                r#"{"id":123456789012345678901234567890}"#,
                Ok(Some("123456789012345678901234567890")),
            ),
            (r#"{"id":-5}"#, Ok(Some("-5"))),
            (r#"{"id":null}"#, Ok(None)),
            (r#"{}"#, Ok(None)),
            (r#"{"id":1.5}"#, Err(())),
            (r#"{"id":1e3}"#, Err(())),
            (r#"{"id":true}"#, Err(())),
            (r#"{"id":{"a":1}}"#, Err(())),
        ];
        for (input, want) in cases {
            let got = serde_json::from_str::<T>(input)
                .map(|t| t.id)
                .map_err(|_| ());
            assert_eq!(got, want.map(|o| o.map(str::to_owned)), "{input}");
        }
    }
}
