//! Configuration: gateway credentials, per-channel settings, transport limits.
//!
//! Every struct deserializes with serde (the CLI reads TOML), rejects unknown
//! fields, and has documented defaults. Secrets are [`Secret`]s: they print as
//! `***` in `Debug`, and nothing in this crate logs them.

use rescind_wire::sign::{DamaiHeadSigner, DamaiMd5HeadSigner, Secret, SignMethod};
pub use rescind_wire::transport::TransportSettings;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::sync::Arc;

/// A configuration value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid TOP configuration: {field}: {reason}")]
pub struct ConfigError {
    /// The field, e.g. `gateway.app_key`.
    pub field: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// One TOP application on one gateway: where to call, as whom, how to sign.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The gateway, e.g. `https://eco.taobao.com/router/rest`.
    pub url: String,
    /// The app key TOP assigned.
    pub app_key: String,
    /// The app secret (signing only; never sent, never logged).
    #[serde(deserialize_with = "de_secret")]
    pub app_secret: Secret,
    /// The user authorisation (`session`), for APIs that need one.
    #[serde(default, deserialize_with = "de_opt_secret")]
    pub session: Option<Secret>,
    /// `md5`, `hmac` or `hmac-sha256` (default).
    #[serde(default, deserialize_with = "de_sign_method")]
    pub sign_method: SignMethod,
    /// `partner_id`, sent when set.
    #[serde(default)]
    pub partner_id: Option<String>,
    /// Timeouts, rate limit, retries (`[...gateway.transport]`; the keys are
    /// [`TransportSettings`], shared by every channel).
    #[serde(default)]
    pub transport: TransportSettings,
}

impl GatewayConfig {
    /// A gateway with the default sign method, no session and default limits.
    pub fn new(url: impl Into<String>, app_key: impl Into<String>, app_secret: Secret) -> Self {
        GatewayConfig {
            url: url.into(),
            app_key: app_key.into(),
            app_secret,
            session: None,
            sign_method: SignMethod::default(),
            partner_id: None,
            transport: TransportSettings::default(),
        }
    }

    /// Check what can be checked without calling the gateway.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("gateway.url", format!("{url:?} is not an http(s) URL")));
        }
        if self.app_key.trim().is_empty() {
            return Err(bad("gateway.app_key", "empty"));
        }
        if self.app_secret.is_empty() {
            return Err(bad("gateway.app_secret", "empty"));
        }
        if let Err(e) = self.transport.validate() {
            return Err(ConfigError {
                field: match e.key {
                    "connect_timeout_ms" => "gateway.transport.connect_timeout_ms",
                    "timeout_ms" => "gateway.transport.timeout_ms",
                    _ => "gateway.transport.rate_per_s",
                },
                reason: e.reason.to_owned(),
            });
        }
        Ok(())
    }
}

/// The Tmall TBC channel (`tmall-tbc`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopConfig {
    /// The gateway and credentials.
    pub gateway: GatewayConfig,
    /// `source_site` sent with every call. Default `LAZADA_SG` (the documented example).
    #[serde(default = "default_source_site")]
    pub source_site: String,
    /// Cancel before payment. Default `tmall.tbc.order.cancel` (documented).
    #[serde(default = "default_cancel_method")]
    pub cancel_method: String,
    /// Cancel after payment. **Assumed** (not public); default `tmall.tbc.order.paidcancel`.
    #[serde(default = "default_paid_cancel_method")]
    pub paid_cancel_method: String,
    /// Order lookup. **Assumed** (not public); default `tmall.tbc.order.get`.
    #[serde(default = "default_order_get_method")]
    pub order_get_method: String,
    /// The TOP message service consumer (`[channels.NAME.tmc]`): refund and
    /// order-close news pushed to waiting sagas. Off by default.
    #[serde(default)]
    pub tmc: crate::tmc::TmcConfig,
}

fn default_source_site() -> String {
    "LAZADA_SG".into()
}
fn default_cancel_method() -> String {
    "tmall.tbc.order.cancel".into()
}
fn default_paid_cancel_method() -> String {
    "tmall.tbc.order.paidcancel".into()
}
fn default_order_get_method() -> String {
    "tmall.tbc.order.get".into()
}
fn default_damai_method() -> String {
    "alibaba.damai.yuntoc.order.cancellockstock".into()
}
fn default_damai_version() -> String {
    "1.0".into()
}
fn default_head_signer() -> Arc<dyn DamaiHeadSigner> {
    Arc::new(DamaiMd5HeadSigner)
}

impl TopConfig {
    /// The documented and assumed defaults on `gateway`.
    pub fn new(gateway: GatewayConfig) -> Self {
        TopConfig {
            gateway,
            source_site: default_source_site(),
            cancel_method: default_cancel_method(),
            paid_cancel_method: default_paid_cancel_method(),
            order_get_method: default_order_get_method(),
            tmc: crate::tmc::TmcConfig::default(),
        }
    }

    /// Check what can be checked without calling the gateway.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gateway.validate()?;
        for (field, v) in [
            ("source_site", &self.source_site),
            ("cancel_method", &self.cancel_method),
            ("paid_cancel_method", &self.paid_cancel_method),
            ("order_get_method", &self.order_get_method),
        ] {
            if v.trim().is_empty() {
                return Err(bad(field, "empty"));
            }
        }
        self.tmc.validate()
    }
}

/// The Damai channel (`damai`): cancel an order and release its stock lock.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DamaiConfig {
    /// The gateway and credentials.
    pub gateway: GatewayConfig,
    /// `head.supplier_key`.
    pub supplier_key: String,
    /// `head.supplier_secret`: sent in the head as the API requires, a
    /// secret everywhere else.
    #[serde(deserialize_with = "de_secret")]
    pub supplier_secret: Secret,
    /// `head.version`. Default `1.0` (assumed).
    #[serde(default = "default_damai_version")]
    pub version: String,
    /// The method. Default `alibaba.damai.yuntoc.order.cancellockstock`.
    #[serde(default = "default_damai_method")]
    pub method: String,
    /// Computes `head.signed`. **Assumed** formula; default
    /// [`DamaiMd5HeadSigner`]. Not read from files: set it in code.
    #[serde(skip, default = "default_head_signer")]
    pub head_signer: Arc<dyn DamaiHeadSigner>,
}

impl fmt::Debug for DamaiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DamaiConfig")
            .field("gateway", &self.gateway)
            .field("supplier_key", &self.supplier_key)
            .field("supplier_secret", &self.supplier_secret)
            .field("version", &self.version)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl DamaiConfig {
    /// Defaults on `gateway` with these supplier credentials.
    pub fn new(
        gateway: GatewayConfig,
        supplier_key: impl Into<String>,
        supplier_secret: Secret,
    ) -> Self {
        DamaiConfig {
            gateway,
            supplier_key: supplier_key.into(),
            supplier_secret,
            version: default_damai_version(),
            method: default_damai_method(),
            head_signer: default_head_signer(),
        }
    }

    /// Use another `head.signed` formula.
    pub fn with_head_signer(mut self, signer: Arc<dyn DamaiHeadSigner>) -> Self {
        self.head_signer = signer;
        self
    }

    /// Check what can be checked without calling the gateway.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gateway.validate()?;
        if self.supplier_key.trim().is_empty() {
            return Err(bad("supplier_key", "empty"));
        }
        if self.supplier_secret.is_empty() {
            return Err(bad("supplier_secret", "empty"));
        }
        if self.method.trim().is_empty() {
            return Err(bad("method", "empty"));
        }
        Ok(())
    }
}

fn de_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

fn de_opt_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(Secret::new))
}

fn de_sign_method<'de, D: Deserializer<'de>>(d: D) -> Result<SignMethod, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializes_with_defaults_and_hides_secrets() {
        let v = serde_json::json!({
            "gateway": {"url": "http://127.0.0.1:1/router/rest", "app_key": "12129701", "app_secret": "s3cr3t-app", "session": "s3cr3t-session"},
        });
        let c: TopConfig = serde_json::from_value(v).unwrap();
        c.validate().unwrap();
        assert_eq!(c.gateway.sign_method, SignMethod::HmacSha256);
        assert_eq!(c.paid_cancel_method, "tmall.tbc.order.paidcancel");
        assert_eq!(c.order_get_method, "tmall.tbc.order.get");
        assert_eq!(c.source_site, "LAZADA_SG");
        assert_eq!(c.gateway.transport, TransportSettings::default());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");

        let v = serde_json::json!({
            "gateway": {"url": "https://x/router/rest", "app_key": "k", "app_secret": "s", "sign_method": "md5",
                        "transport": {"timeout_ms": 500}},
            "supplier_key": "sk", "supplier_secret": "s3cr3t-supplier",
        });
        let d: DamaiConfig = serde_json::from_value(v).unwrap();
        d.validate().unwrap();
        assert_eq!(d.gateway.sign_method, SignMethod::Md5);
        assert_eq!(d.gateway.transport.timeout_ms, 500);
        assert_eq!(d.gateway.transport.burst, 20);
        assert!(!format!("{d:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let bad_method = serde_json::json!({"gateway": {"url": "http://x", "app_key": "k", "app_secret": "s", "sign_method": "sha1"}});
        let e = serde_json::from_value::<TopConfig>(bad_method)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown sign method"), "{e}");
        let typo = serde_json::json!({"gateway": {"url": "http://x", "app_key": "k", "app_secret": "s"}, "paid_cancel_metod": "x"});
        assert!(serde_json::from_value::<TopConfig>(typo).is_err());

        let mut c = TopConfig::new(GatewayConfig::new("ftp://x", "k", Secret::new("s")));
        assert_eq!(c.validate().unwrap_err().field, "gateway.url");
        c.gateway.url = "http://x".into();
        c.gateway.app_secret = Secret::new("");
        assert_eq!(c.validate().unwrap_err().field, "gateway.app_secret");
        c.gateway.app_secret = Secret::new("s");
        c.paid_cancel_method.clear();
        assert_eq!(c.validate().unwrap_err().field, "paid_cancel_method");
    }
}
