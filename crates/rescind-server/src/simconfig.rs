//! The `[channels.*]` tables that point rescind's four channels at a
//! simulator ([`rescind_sim`]), rendered as TOML for [`crate::config`].
//!
//! One template for every caller that wires rescind to a simulator (the CLI's
//! `demo`, its real-process tests, the benchmarks): the simulator's default
//! credentials ([`rescind_sim::defaults`]) are written in, the secrets stay
//! in environment variables whose names the caller chooses
//! ([`SimSecretsEnv`]), as the configuration file requires. Callers add their
//! own `[journal]`, `[engine]` and `[worker]` sections.
//!
//! ```
//! use rescind_server::simconfig::{simulator_channels_toml, SimRateLimits, SimSecretsEnv};
//!
//! let env = SimSecretsEnv {
//!     top_app_secret: "MY_TOP_SECRET",
//!     damai_supplier_secret: "MY_DAMAI_SECRET",
//!     pandapon_secret: "MY_PANDAPON_SECRET",
//! };
//! let channels = simulator_channels_toml("http://127.0.0.1:8080", &env, None);
//! let text = format!("[journal]\npath = \"journal\"\n\n{channels}");
//! let config = rescind_server::config::Config::from_toml_str(
//!     &text,
//!     std::path::Path::new("."),
//!     &|v| env.lookup(v),
//! )
//! .unwrap();
//! assert_eq!(config.channels.len(), 4);
//! # let _ = SimRateLimits { top_rate_per_sec: 20.0, top_rate_burst: 20, pandapon_requests_per_sec_max: 20 };
//! ```

use rescind_sim::defaults;
use std::fmt::Write as _;

/// Names of the environment variables the rendered channels read the
/// simulator's secrets from (`*_env` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimSecretsEnv<'a> {
    /// Holds the TOP app secret (`tmall-tbc` and `damai` gateways):
    /// [`defaults::APP_SECRET`].
    pub top_app_secret: &'a str,
    /// Holds the Damai supplier secret: [`defaults::SUPPLIER_SECRET`].
    pub damai_supplier_secret: &'a str,
    /// Holds the PandaPon secret (both PandaPon channels):
    /// [`defaults::PANDAPON_SECRET`].
    pub pandapon_secret: &'a str,
}

impl SimSecretsEnv<'_> {
    /// Each variable with the simulator's default secret it must hold, e.g.
    /// to set in a child process's environment.
    pub fn vars(&self) -> [(&str, &'static str); 3] {
        [
            (self.top_app_secret, defaults::APP_SECRET),
            (self.damai_supplier_secret, defaults::SUPPLIER_SECRET),
            (self.pandapon_secret, defaults::PANDAPON_SECRET),
        ]
    }

    /// An environment lookup for [`crate::config::Config::from_toml_str`]
    /// that answers these variables with the simulator's default secrets and
    /// nothing else.
    pub fn lookup(&self, var: &str) -> Option<String> {
        self.vars()
            .into_iter()
            .find(|(name, _)| *name == var)
            .map(|(_, secret)| secret.to_owned())
    }
}

/// Client-side rate limits for the rendered channels. Without them
/// ([`simulator_channels_toml`] with `None`) each channel keeps its default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimRateLimits {
    /// `gateway.transport.rate_per_s` of both TOP channels (0 disables).
    pub top_rate_per_sec: f64,
    /// `gateway.transport.burst` of both TOP channels.
    pub top_rate_burst: u32,
    /// `transport.rate_per_s` and `transport.burst` of both PandaPon
    /// channels (0: no limit).
    pub pandapon_requests_per_sec_max: u32,
}

/// A TOML value as written in the file (quoted and escaped strings, floats
/// with a decimal point).
fn lit(v: impl Into<toml::Value>) -> String {
    v.into().to_string()
}

/// The `[channels.tmall-tbc]`, `[channels.damai]`, `[channels.pandapon-taobao]`
/// and `[channels.pandapon-1688]` tables for a simulator at `sim_url` (its
/// base URL, no trailing slash; the TOP gateway is `{sim_url}/router/rest`),
/// with the simulator's default keys, secrets read from the variables named
/// in `env`, and optional client-side rate limits.
pub fn simulator_channels_toml(
    sim_url: &str,
    env: &SimSecretsEnv<'_>,
    rates: Option<SimRateLimits>,
) -> String {
    let gateway = lit(format!("{sim_url}/router/rest"));
    let base_url = lit(sim_url);
    let app_key = lit(defaults::APP_KEY);
    let top_secret_env = lit(env.top_app_secret);
    let mut out = String::new();
    let top_transport = |out: &mut String, name: &str| {
        if let Some(r) = rates {
            let _ = write!(
                out,
                "[channels.{name}.gateway.transport]\nrate_per_s = {}\nburst = {}\n",
                lit(r.top_rate_per_sec),
                r.top_rate_burst,
            );
        }
    };

    let _ = write!(
        out,
        "[channels.tmall-tbc]\ntype = \"tmall-tbc\"\n[channels.tmall-tbc.gateway]\n\
         url = {gateway}\napp_key = {app_key}\napp_secret_env = {top_secret_env}\n\
         sign_method = \"hmac-sha256\"\n",
    );
    top_transport(&mut out, "tmall-tbc");

    let _ = write!(
        out,
        "\n[channels.damai]\ntype = \"damai\"\nsupplier_key = {}\nsupplier_secret_env = {}\n\
         [channels.damai.gateway]\nurl = {gateway}\napp_key = {app_key}\n\
         app_secret_env = {top_secret_env}\n",
        lit(defaults::SUPPLIER_KEY),
        lit(env.damai_supplier_secret),
    );
    top_transport(&mut out, "damai");

    for ty in ["pandapon-taobao", "pandapon-1688"] {
        let _ = write!(
            out,
            "\n[channels.{ty}]\ntype = \"{ty}\"\nbase_url = {base_url}\naccess_key = {}\n\
             secret_env = {}\nuser_id = {}\n",
            lit(defaults::PANDAPON_ACCESS_KEY),
            lit(env.pandapon_secret),
            lit(defaults::PANDAPON_USER_ID),
        );
        if let Some(r) = rates {
            let rps = r.pandapon_requests_per_sec_max;
            let _ = writeln!(
                out,
                "transport = {{ rate_per_s = {}, burst = {} }}",
                lit(f64::from(rps)),
                rps.max(1)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelConfig, Config};
    use std::path::Path;

    const ENV: SimSecretsEnv<'static> = SimSecretsEnv {
        top_app_secret: "T_TOP",
        damai_supplier_secret: "T_DAMAI",
        pandapon_secret: "T_PP",
    };

    fn parse(text: &str) -> Config {
        Config::from_toml_str(text, Path::new("."), &|v| ENV.lookup(v))
            .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn rendered_channels_parse_into_the_four_simulator_channels() {
        let rates = SimRateLimits {
            top_rate_per_sec: 2000.0,
            top_rate_burst: 200,
            pandapon_requests_per_sec_max: 0,
        };
        let text = simulator_channels_toml("http://127.0.0.1:9", &ENV, Some(rates));
        let c = parse(&text);
        let types: Vec<(&str, &str)> = c
            .channels
            .iter()
            .map(|(n, c)| (n.as_str(), c.type_name()))
            .collect();
        assert_eq!(
            types,
            [
                ("damai", "damai"),
                ("pandapon-1688", "pandapon-1688"),
                ("pandapon-taobao", "pandapon-taobao"),
                ("tmall-tbc", "tmall-tbc"),
            ]
        );
        match &c.channels["tmall-tbc"] {
            ChannelConfig::TmallTbc(t) => {
                assert_eq!(t.gateway.url, "http://127.0.0.1:9/router/rest");
                assert_eq!(t.gateway.app_key, defaults::APP_KEY);
                assert_eq!(t.gateway.app_secret.expose(), defaults::APP_SECRET);
                assert_eq!(t.gateway.transport.rate_per_s, 2000.0);
                assert_eq!(t.gateway.transport.burst, 200);
            }
            other => panic!("{other:?}"),
        }
        match &c.channels["damai"] {
            ChannelConfig::Damai(d) => {
                assert_eq!(d.supplier_key, defaults::SUPPLIER_KEY);
                assert_eq!(d.supplier_secret.expose(), defaults::SUPPLIER_SECRET);
                assert_eq!(d.gateway.app_secret.expose(), defaults::APP_SECRET);
                assert_eq!(d.gateway.transport.burst, 200);
            }
            other => panic!("{other:?}"),
        }
        for name in ["pandapon-taobao", "pandapon-1688"] {
            match &c.channels[name] {
                ChannelConfig::PandaponTaobao(p) | ChannelConfig::Pandapon1688(p) => {
                    assert_eq!(p.base_url, "http://127.0.0.1:9");
                    assert_eq!(p.access_key.expose(), defaults::PANDAPON_ACCESS_KEY);
                    assert_eq!(p.secret.expose(), defaults::PANDAPON_SECRET);
                    assert_eq!(p.user_id, defaults::PANDAPON_USER_ID);
                    assert_eq!(p.transport.rate_per_s, 0.0);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn without_rates_the_channel_defaults_stay_and_sections_can_follow() {
        let text = format!(
            "[journal]\npath = \"j\"\n\n{}\n[worker]\nlisten = \"127.0.0.1:0\"\n",
            simulator_channels_toml("http://h:1", &ENV, None)
        );
        assert!(!text.contains("rate"), "{text}");
        let c = parse(&text);
        assert_eq!(c.channels.len(), 4);
        assert_eq!(c.worker.listen, "127.0.0.1:0");
        // The secrets come from the variables the caller named, nowhere else.
        let missing = Config::from_toml_str(&text, Path::new("."), &|_| None).unwrap_err();
        assert!(missing.reason.contains("T_"), "{missing}");
    }
}
