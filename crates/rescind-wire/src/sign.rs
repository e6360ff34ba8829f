//! Signing shared by clients and the simulator.
//!
//! - TOP (`signTopRequest` of the official SDK): sort every sent text parameter
//!   except `sign` by name, concatenate `name` + `value`, append a raw body if
//!   any, then `md5` = MD5(secret + s + secret), `hmac` = HMAC-MD5(secret, s),
//!   `hmac-sha256` = HMAC-SHA256(secret, s); uppercase hex. Empty values are
//!   neither sent nor signed.
//! - PandaPon: the formula is **not public**; [`PandaponSigner`] is a trait and
//!   [`SortedMd5Signer`] is the assumed default (see `docs/channels/pandapon.md`).
//! - Damai `head.signed`: **not public** either; [`DamaiHeadSigner`] is a trait
//!   with [`DamaiMd5HeadSigner`] as the assumed default.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use std::fmt;

/// A secret (app secret, supplier secret, access key secret). Its `Debug` and
/// `Display` print `***`, so it cannot leak through logs or error messages.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for signing only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TOP `sign_method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SignMethod {
    /// `md5`: MD5(secret + string + secret).
    Md5,
    /// `hmac`: HMAC-MD5 keyed with the secret.
    Hmac,
    /// `hmac-sha256`: HMAC-SHA256 keyed with the secret (the default).
    #[default]
    HmacSha256,
}

impl SignMethod {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignMethod::Md5 => "md5",
            SignMethod::Hmac => "hmac",
            SignMethod::HmacSha256 => "hmac-sha256",
        }
    }
}

impl fmt::Display for SignMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `sign_method` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown sign method {0:?}: expected md5, hmac or hmac-sha256")]
pub struct UnknownSignMethod(pub String);

impl std::str::FromStr for SignMethod {
    type Err = UnknownSignMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "md5" => Ok(SignMethod::Md5),
            "hmac" => Ok(SignMethod::Hmac),
            "hmac-sha256" => Ok(SignMethod::HmacSha256),
            other => Err(UnknownSignMethod(other.to_owned())),
        }
    }
}

/// The string TOP signs: sorted `name` + `value` pairs (skipping `sign` and
/// empty values), then the raw body if any.
pub fn top_string_to_sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut pairs: Vec<(&str, &str)> = params
        .into_iter()
        .filter(|(k, v)| *k != "sign" && !v.is_empty())
        .collect();
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out =
        Vec::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + 64);
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    out
}

/// Sign TOP parameters; uppercase hex.
pub fn top_sign<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: Option<&[u8]>,
    secret: &Secret,
    method: SignMethod,
) -> String {
    let s = top_string_to_sign(params, body);
    let key = secret.expose().as_bytes();
    let digest: Vec<u8> = match method {
        SignMethod::Md5 => {
            let mut h = Md5::new();
            h.update(key);
            h.update(&s);
            h.update(key);
            h.finalize().to_vec()
        }
        SignMethod::Hmac => {
            // HMAC accepts keys of any length; new_from_slice cannot fail here.
            let mut m = <Hmac<Md5> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
            m.update(&s);
            m.finalize().into_bytes().to_vec()
        }
        SignMethod::HmacSha256 => {
            let mut m =
                <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
            m.update(&s);
            m.finalize().into_bytes().to_vec()
        }
    };
    hex::encode_upper(digest)
}

/// What a PandaPon push message's signature is computed over.
///
/// PandaPon's message-service manual says a pushed message carries
/// `Authorization: HEX_ENCODE(HMAC-SHA256(Base, AccessSecret))`; the exact
/// `Base` is not visible in the public copy of the manual. **Assumed**
/// default: the raw request body ([`RawBodyBase`]). Plug another base in if
/// the real gateway signs something else (see `docs/channels/pandapon.md`).
pub trait MessageSignatureBase: Send + Sync + 'static {
    /// The bytes signed for a message with this raw body.
    fn base<'a>(&self, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]>;
}

/// The assumed default: the raw request body, byte for byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBodyBase;

impl MessageSignatureBase for RawBodyBase {
    fn base<'a>(&self, body: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        std::borrow::Cow::Borrowed(body)
    }
}

/// The `Authorization` value of a PandaPon push: lowercase hex of
/// HMAC-SHA256(base, secret).
pub fn pandapon_message_signature(base: &[u8], secret: &Secret) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(base);
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time comparison of two signatures (case-insensitive hex).
pub fn signatures_match(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_uppercase() ^ y.to_ascii_uppercase())
    }) == 0
}

const GMT8_SECS: i32 = 8 * 3600;

/// Format epoch milliseconds as TOP's `yyyy-MM-dd HH:mm:ss` in GMT+8.
pub fn top_timestamp(epoch_ms: u64) -> String {
    let offset = chrono::FixedOffset::east_opt(GMT8_SECS).unwrap_or_else(|| unreachable!());
    match chrono::DateTime::from_timestamp_millis(epoch_ms as i64) {
        Some(dt) => dt
            .with_timezone(&offset)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => "1970-01-01 08:00:00".to_owned(),
    }
}

/// Parse a TOP `timestamp`: `yyyy-MM-dd HH:mm:ss` (GMT+8) or epoch milliseconds.
pub fn parse_top_timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").ok()?;
    let ms = naive.and_utc().timestamp_millis() - i64::from(GMT8_SECS) * 1000;
    u64::try_from(ms).ok()
}

/// Signs PandaPon request headers. The real formula is not public: swap this
/// component when it is known; the simulator verifies with the same trait.
pub trait PandaponSigner: Send + Sync + 'static {
    /// Sign the signed headers that are present (`access-key`, `timestamp`,
    /// and `nonce-str` when sent). Returns 32 uppercase hex characters.
    fn sign(&self, signed_headers: &[(&str, &str)], secret: &Secret) -> String;
}

/// The assumed default PandaPon signer: sort the present signed headers by
/// name, join as `name=value` with `&`, append `&secret=<secret>`, MD5,
/// uppercase hex.
#[derive(Clone, Copy, Debug, Default)]
pub struct SortedMd5Signer;

impl PandaponSigner for SortedMd5Signer {
    fn sign(&self, signed_headers: &[(&str, &str)], secret: &Secret) -> String {
        let mut pairs: Vec<(&str, &str)> = signed_headers.to_vec();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let mut s = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        s.push_str("&secret=");
        s.push_str(secret.expose());
        hex::encode_upper(Md5::digest(s.as_bytes()))
    }
}

/// The PandaPon headers that are signed, in the docs' words.
pub const PANDAPON_SIGNED_HEADERS: [&str; 3] = ["access-key", "nonce-str", "timestamp"];

/// The fields of a Damai request `head` that a signature may cover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamaiHeadFields<'a> {
    /// `msg_id`.
    pub msg_id: &'a str,
    /// `supplier_key`.
    pub supplier_key: &'a str,
    /// `time_stamp`.
    pub time_stamp: &'a str,
    /// `version`.
    pub version: &'a str,
}

/// Computes Damai's `head.signed`. The formula is not public: pluggable.
pub trait DamaiHeadSigner: Send + Sync + 'static {
    /// The `signed` value for this head.
    fn sign(&self, head: &DamaiHeadFields<'_>, supplier_secret: &Secret) -> String;
}

/// Assumed default: uppercase hex MD5 of
/// `supplier_key + msg_id + time_stamp + version + supplier_secret`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DamaiMd5HeadSigner;

impl DamaiHeadSigner for DamaiMd5HeadSigner {
    fn sign(&self, h: &DamaiHeadFields<'_>, secret: &Secret) -> String {
        let mut m = Md5::new();
        for part in [
            h.supplier_key,
            h.msg_id,
            h.time_stamp,
            h.version,
            secret.expose(),
        ] {
            m.update(part.as_bytes());
        }
        hex::encode_upper(m.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_PARAMS: [(&str, &str); 8] = [
        ("app_key", "12129701"),
        ("format", "json"),
        ("method", "tmall.tbc.order.cancel"),
        ("partner_id", "apidoc"),
        ("timestamp", "2025-11-04 01:00:40"),
        ("v", "2.0"),
        ("out_order_no", "1231231"),
        ("source_site", "LAZADA_SG"),
    ];

    /// CHANNELS.md §1 vectors: (sign_method, secret, extra params, expected).
    #[test]
    fn channels_md_vectors() {
        let cases: &[(&str, &str, bool, &str)] = &[
            (
                "md5",
                "test-secret",
                true,
                "920403741304ECD364C147DC2251EB8B",
            ),
            (
                "hmac",
                "test-secret",
                true,
                "1C4BD47043064AA2607150EC660B7A41",
            ),
        ];
        for (method, secret, with_vector, expected) in cases {
            let m: SignMethod = method.parse().unwrap();
            let mut params: Vec<(&str, &str)> = if *with_vector {
                VECTOR_PARAMS.to_vec()
            } else {
                vec![]
            };
            params.push(("sign_method", method));
            let got = top_sign(params.iter().copied(), None, &Secret::new(*secret), m);
            assert_eq!(&got, expected, "{method}");
        }
        let public = top_sign(
            [("key", "value")],
            None,
            &Secret::new("919fa294a24538d2ae685aaf849d0a67"),
            SignMethod::Md5,
        );
        assert_eq!(public, "7E57E0619CD614ACEBF2876C4705A66D");
    }

    #[test]
    fn string_to_sign_matches_channels_md() {
        let mut params = VECTOR_PARAMS.to_vec();
        params.push(("sign_method", "md5"));
        params.push(("sign", "ignored"));
        params.push(("session", ""));
        let s = top_string_to_sign(params, None);
        assert_eq!(
            String::from_utf8(s).unwrap(),
            "app_key12129701formatjsonmethodtmall.tbc.order.cancelout_order_no1231231partner_idapidocsign_methodmd5source_siteLAZADA_SGtimestamp2025-11-04 01:00:40v2.0"
        );
    }

    #[test]
    fn timestamps_round_trip_both_forms() {
        let ms = parse_top_timestamp("2025-11-04 01:00:40").unwrap();
        assert_eq!(top_timestamp(ms), "2025-11-04 01:00:40");
        assert_eq!(parse_top_timestamp(&ms.to_string()), Some(ms));
        // 2025-11-04 01:00:40 GMT+8 is 2025-11-03 17:00:40 UTC.
        assert_eq!(ms, 1_762_189_240_000);
        assert_eq!(parse_top_timestamp("not a time"), None);
        assert_eq!(parse_top_timestamp(""), None);
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?} {s}").contains("hunter2"));
    }

    #[test]
    fn pandapon_default_signer_is_sorted_md5() {
        let sig = SortedMd5Signer.sign(
            &[
                ("timestamp", "1715669977082"),
                ("access-key", "ak"),
                ("nonce-str", "n"),
            ],
            &Secret::new("s"),
        );
        let expect = hex::encode_upper(Md5::digest(
            b"access-key=ak&nonce-str=n&timestamp=1715669977082&secret=s",
        ));
        assert_eq!(sig, expect);
        assert_eq!(sig.len(), 32);
        assert!(signatures_match(&sig, &sig.to_lowercase()));
        assert!(!signatures_match(&sig, "00"));
    }
}

#[cfg(test)]
mod message_signature_tests {
    use super::*;

    #[test]
    fn message_signature_is_hmac_sha256_hex_of_the_base() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = pandapon_message_signature(
            RawBodyBase.base(b"what do ya want for nothing?").as_ref(),
            &Secret::new("Jefe"),
        );
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
