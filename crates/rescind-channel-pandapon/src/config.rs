//! Client configuration: endpoint, credentials, limits and (assumed) paths.

use crate::{Error, Result};
use rescind_wire::sign::Secret;
pub use rescind_wire::transport::TransportSettings;
use serde::{Deserialize, Deserializer};

/// How to reach PandaPon. Deserializable (the CLI reads it from TOML); the
/// secret is redacted in `Debug` and usually comes from an environment
/// variable rather than the file (see [`PandaponConfig::secret_from_env`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PandaponConfig {
    /// Base URL, e.g. `https://openapi.pandapon.example`; paths are appended.
    pub base_url: String,
    /// The `access-key` header. Treated as a secret: redacted in `Debug`
    /// and errors (the CLI reads it from `access_key_env` or the file).
    #[serde(deserialize_with = "secret")]
    pub access_key: Secret,
    /// The secret the signature is made with. Never logged.
    #[serde(default, deserialize_with = "secret")]
    pub secret: Secret,
    /// The `user-id` header.
    pub user_id: String,
    /// Send (and sign) a 32-character `nonce-str` (one doc page marks it
    /// required, a newer one omits it). Default: true.
    #[serde(default = "yes")]
    pub send_nonce: bool,
    /// Timeouts, client-side rate limit (PandaPon answers 429 beyond its
    /// own), retries of requests that were never sent: the `[transport]`
    /// table, with the keys every channel shares ([`TransportSettings`]).
    #[serde(default)]
    pub transport: TransportSettings,
    /// Request paths (several are assumed; see the docs).
    #[serde(default)]
    pub paths: PandaponPaths,
}

fn yes() -> bool {
    true
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

/// Request paths. `{refundId}` / `{orderId}` are replaced by the
/// percent-encoded id. Defaults marked *assumed* are not public
/// (`docs/channels/assumed-protocol.md` §2).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PandaponPaths {
    /// Documented: `GET /v2/taobao/order/refund/cancel/{refundId}`.
    pub taobao_refund_cancel: String,
    /// Assumed: `POST /v2/taobao/order/cancel`.
    pub taobao_order_cancel: String,
    /// Assumed: `POST /v2/taobao/order/refund/submit` (reverse-order submission).
    pub taobao_refund_submit: String,
    /// Assumed: `GET /v2/taobao/order/detail/{orderId}`.
    pub taobao_order_detail: String,
    /// Assumed: `GET /v2/taobao/order/refund/detail/{refundId}`.
    pub taobao_refund_detail: String,
    /// Documented: `POST /v2/alibaba/order/cancel`.
    pub alibaba_order_cancel: String,
    /// Assumed: `GET /v2/alibaba/order/detail/{orderId}`.
    pub alibaba_order_detail: String,
    /// Assumed: `GET /v2/alibaba/refund/detail/{refundId}`.
    pub alibaba_refund_detail: String,
}

impl Default for PandaponPaths {
    fn default() -> Self {
        PandaponPaths {
            taobao_refund_cancel: "/v2/taobao/order/refund/cancel/{refundId}".into(),
            taobao_order_cancel: "/v2/taobao/order/cancel".into(),
            taobao_refund_submit: "/v2/taobao/order/refund/submit".into(),
            taobao_order_detail: "/v2/taobao/order/detail/{orderId}".into(),
            taobao_refund_detail: "/v2/taobao/order/refund/detail/{refundId}".into(),
            alibaba_order_cancel: "/v2/alibaba/order/cancel".into(),
            alibaba_order_detail: "/v2/alibaba/order/detail/{orderId}".into(),
            alibaba_refund_detail: "/v2/alibaba/refund/detail/{refundId}".into(),
        }
    }
}

impl PandaponPaths {
    fn check(&self) -> Result<()> {
        let need: [(&str, &str, Option<&str>); 8] = [
            (
                "paths.taobao_refund_cancel",
                &self.taobao_refund_cancel,
                Some("{refundId}"),
            ),
            ("paths.taobao_order_cancel", &self.taobao_order_cancel, None),
            (
                "paths.taobao_refund_submit",
                &self.taobao_refund_submit,
                None,
            ),
            (
                "paths.taobao_order_detail",
                &self.taobao_order_detail,
                Some("{orderId}"),
            ),
            (
                "paths.taobao_refund_detail",
                &self.taobao_refund_detail,
                Some("{refundId}"),
            ),
            (
                "paths.alibaba_order_cancel",
                &self.alibaba_order_cancel,
                None,
            ),
            (
                "paths.alibaba_order_detail",
                &self.alibaba_order_detail,
                Some("{orderId}"),
            ),
            (
                "paths.alibaba_refund_detail",
                &self.alibaba_refund_detail,
                Some("{refundId}"),
            ),
        ];
        for (field, path, placeholder) in need {
            if !path.starts_with('/') {
                return Err(Error::config(field, "must start with '/'"));
            }
            if let Some(p) = placeholder {
                if !path.contains(p) {
                    return Err(Error::config(field, format!("must contain {p}")));
                }
            }
        }
        Ok(())
    }
}

impl PandaponConfig {
    /// A configuration with default paths, limits and nonce.
    pub fn new(
        base_url: impl Into<String>,
        access_key: impl Into<String>,
        secret: Secret,
        user_id: impl Into<String>,
    ) -> Self {
        PandaponConfig {
            base_url: base_url.into(),
            access_key: Secret::new(access_key.into()),
            secret,
            user_id: user_id.into(),
            send_nonce: true,
            transport: TransportSettings::default(),
            paths: PandaponPaths::default(),
        }
    }

    /// Take the secret from environment variable `var` (an error names the
    /// variable, never its value).
    pub fn secret_from_env(mut self, var: &str) -> Result<Self> {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                self.secret = Secret::new(v);
                Ok(self)
            }
            _ => Err(Error::config(
                "secret",
                format!("environment variable {var} is not set"),
            )),
        }
    }

    /// Check the configuration; every error names the field.
    pub fn validate(&self) -> Result<()> {
        let url = self.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::config(
                "base_url",
                "must start with http:// or https://",
            ));
        }
        if self.access_key.expose().trim().is_empty() {
            return Err(Error::config("access_key", "is empty"));
        }
        if self.secret.is_empty() {
            return Err(Error::config("secret", "is empty"));
        }
        if self.user_id.trim().is_empty() {
            return Err(Error::config("user_id", "is empty"));
        }
        if let Err(e) = self.transport.validate() {
            return Err(Error::config(&format!("transport.{}", e.key), e.reason));
        }
        self.paths.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_defaults_and_redacted_debug() {
        let cfg: PandaponConfig = toml::from_str(
            r#"
base_url = "http://127.0.0.1:9"
access_key = "ak"
secret = "very-secret-value"
user_id = "2100007341207"
[paths]
taobao_order_detail = "/x/{orderId}"
"#,
        )
        .unwrap();
        assert!(cfg.send_nonce);
        assert_eq!(cfg.transport, TransportSettings::default());
        assert_eq!(cfg.paths.taobao_order_detail, "/x/{orderId}");
        assert_eq!(cfg.paths.alibaba_order_cancel, "/v2/alibaba/order/cancel");
        cfg.validate().unwrap();
        assert!(!format!("{cfg:?}").contains("very-secret-value"));
    }

    #[test]
    fn validation_names_fields() {
        let ok = PandaponConfig::new("http://h", "ak", Secret::new("s"), "u");
        ok.validate().unwrap();
        let cases: Vec<(PandaponConfig, &str)> = vec![
            (
                PandaponConfig {
                    base_url: "h".into(),
                    ..ok.clone()
                },
                "base_url",
            ),
            (
                PandaponConfig {
                    access_key: Secret::new(" "),
                    ..ok.clone()
                },
                "access_key",
            ),
            (
                PandaponConfig {
                    secret: Secret::default(),
                    ..ok.clone()
                },
                "secret",
            ),
            (
                PandaponConfig {
                    user_id: "".into(),
                    ..ok.clone()
                },
                "user_id",
            ),
            (
                PandaponConfig {
                    paths: PandaponPaths {
                        taobao_refund_detail: "/no/placeholder".into(),
                        ..Default::default()
                    },
                    ..ok.clone()
                },
                "paths.taobao_refund_detail",
            ),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        assert!(toml::from_str::<PandaponConfig>(
            "base_url='x'\naccess_key='a'\nuser_id='u'\nbogus=1"
        )
        .is_err());
        let e = PandaponConfig {
            transport: TransportSettings {
                timeout_ms: 0,
                ..Default::default()
            },
            ..ok.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("transport.timeout_ms"), "{e}");
    }

    #[test]
    fn transport_table_has_the_shared_keys() {
        let base = "base_url = 'http://h'\naccess_key = 'a'\nsecret = 's'\nuser_id = 'u'\n";
        let cfg: PandaponConfig = toml::from_str(&format!(
            "{base}[transport]\ntimeout_ms = 4000\nrate_per_s = 0.0\nburst = 5\n"
        ))
        .unwrap();
        assert_eq!(cfg.transport.timeout_ms, 4_000);
        assert_eq!(cfg.transport.rate_per_s, 0.0);
        assert_eq!(cfg.transport.burst, 5);
        assert_eq!(cfg.transport.connect_timeout_ms, 3_000);
        // The tables of earlier releases are refused, naming the key.
        for old in [
            "timeouts = { request_timeout_ms = 1 }",
            "rate_limit = { requests_per_sec_max = 1 }",
        ] {
            let e = toml::from_str::<PandaponConfig>(&format!("{base}{old}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("unknown field"), "{e}");
        }
    }
}
