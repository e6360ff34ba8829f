//! The rescind configuration file (TOML): journal, engine limits, worker, and
//! channels. Secrets are never written in the file: a key `NAME_env = "VAR"`
//! reads the secret `NAME` from environment variable `VAR`. Every error names
//! the key and what is wrong with it.
//!
//! A complete, commented example is `rescind.example.toml` at the repository root.

use rescind_channel_pandapon::PandaponConfig;
use rescind_channel_top::{DamaiConfig, TopConfig};
use rescind_core::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `channels.tmall-tbc.gateway.url`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "bad configuration: {}", self.reason)
        } else {
            write!(f, "bad configuration: `{}`: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Where the journal lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JournalConfig {
    /// An embedded sled journal in this directory (one process at a time).
    Sled {
        /// The directory.
        path: PathBuf,
    },
    /// A PostgreSQL journal shared by several workers.
    Postgres {
        /// The connection URL (its password is never printed).
        url: String,
        /// How long a worker's lease on a saga lasts without renewal: after a
        /// worker dies, its sagas wait this long before another takes them.
        /// `None`: the journal's default (30 s).
        lease_ttl_ms: Option<u64>,
        /// This worker's identity in the leases. `None`: host-pid-random.
        /// A worker restarted with the same id takes its own sagas back at once.
        worker_id: Option<String>,
        /// The CA certificate(s) (PEM) the server's certificate must chain
        /// up to (`ca_file`, relative to the configuration file); the same
        /// as `sslrootcert=` in the URL.
        ca_file: Option<PathBuf>,
    },
}

/// The worker's HTTP side.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Address the HTTP API listens on (private: the API and `/metrics`).
    pub listen: String,
    /// Address the PandaPon callback route listens on, when it must be
    /// reachable from outside while the API is not. Unset: the callback
    /// route is served on `listen` too.
    pub callback_listen: Option<String>,
    /// The environment variable holding the API tokens:
    /// `NAME:read|write:TOKEN[,NAME:read|write:TOKEN...]` (at least 16
    /// characters each). Every route but `/healthz` and `/readyz` then needs
    /// `Authorization: Bearer TOKEN`; the token's name is journaled as who
    /// acted.
    pub api_tokens_env: Option<String>,
    /// Serve the API without tokens on a non-loopback address. Without
    /// this, such a worker refuses to start.
    pub allow_unauthenticated: bool,
    /// Path of the PandaPon callback receiver.
    pub callback_path: String,
    /// File the callback receiver journals messages to (relative paths are
    /// relative to the configuration file).
    pub callback_store: PathBuf,
    /// Size bound of the callback store, in MiB (at least 1). A callback
    /// that would make the file larger is answered 503 and not stored
    /// (PandaPon re-pushes it later); compaction frees room.
    pub callback_store_max_mb: u64,
    /// How long stored callbacks are kept once no unfinished saga is on
    /// their order (unknown or unmappable messages: once this old). Dropped
    /// by the worker's compaction, every `compact_interval_ms`. Keep it well
    /// above PandaPon's re-push window (5 re-pushes, 30 minutes apart).
    pub callback_retention_ms: u64,
    /// How often the worker claims and resumes unfinished sagas (takeover of
    /// sagas whose worker died, on a shared journal).
    pub recover_interval_ms: u64,
    /// On SIGTERM, how long running sagas get to reach a safe point.
    pub shutdown_grace_ms: u64,
    /// How often the worker compacts finished sagas past the sled journal's
    /// retention (a PostgreSQL journal is not compacted here) and the
    /// callback store past `callback_retention_ms` (`0`: never).
    pub compact_interval_ms: u64,
    /// A connection that has not sent a whole request head this long after
    /// it opened (or after its last response) is closed (100–60000).
    pub header_read_timeout_ms: u64,
    /// A request not answered in this time gets 408 (100–600000).
    pub request_timeout_ms: u64,
    /// Connections open at once on each listener (16–1000000). At the cap,
    /// the oldest connection still waiting for a request head is closed to
    /// admit the new one. Lowered at start, with a warning, if the process's
    /// open-file limit would not fit it.
    pub max_connections: usize,
    /// Largest request body, in KiB (1–65536); larger ones get 413.
    pub max_body_kb: usize,
}

impl WorkerConfig {
    /// The limits each listener is served under.
    pub fn serve_limits(&self) -> crate::serve::ServeLimits {
        crate::serve::ServeLimits {
            header_read_timeout: std::time::Duration::from_millis(self.header_read_timeout_ms),
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            max_connections: self.max_connections,
            body_limit_bytes: self.max_body_kb.saturating_mul(1024),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            listen: "127.0.0.1:7878".into(),
            callback_listen: None,
            api_tokens_env: None,
            allow_unauthenticated: false,
            callback_path: "/callbacks/pandapon".into(),
            callback_store: PathBuf::from("rescind-callbacks.jsonl"),
            callback_store_max_mb: 64,
            callback_retention_ms: 7 * 24 * 3_600_000,
            recover_interval_ms: 5_000,
            shutdown_grace_ms: 5_000,
            compact_interval_ms: 3_600_000,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 1024,
            max_body_kb: 256,
        }
    }
}

/// One configured channel.
#[derive(Clone, Debug)]
pub enum ChannelConfig {
    /// Tmall TBC on the TOP gateway (cancel before/after payment, lookup).
    TmallTbc(TopConfig),
    /// Damai ticket stock locks on the TOP gateway (stock release).
    Damai(DamaiConfig),
    /// PandaPon Taobao (cancel, reverse-order submit/withdraw, lookups).
    PandaponTaobao(PandaponConfig),
    /// PandaPon 1688 (cancel before payment, lookups).
    Pandapon1688(PandaponConfig),
}

impl ChannelConfig {
    /// The `type` value naming this implementation.
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelConfig::TmallTbc(_) => "tmall-tbc",
            ChannelConfig::Damai(_) => "damai",
            ChannelConfig::PandaponTaobao(_) => "pandapon-taobao",
            ChannelConfig::Pandapon1688(_) => "pandapon-1688",
        }
    }
}

/// `[telemetry]`: where traces go. Exporting them needs a build with the
/// `otel` feature; see `docs/operations.md`, "Traces (OpenTelemetry)".
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (a collector), e.g.
    /// `http://127.0.0.1:4318`: spans are sent to `{otlp_endpoint}/v1/traces`
    /// as protobuf. The environment variable `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// overrides it. Unset (and no variable): no traces are exported.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans. Unset: `rescind`.
    pub service_name: Option<String>,
}

/// The whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The journal.
    pub journal: JournalConfig,
    /// Engine limits (`[engine]`, every field optional).
    pub engine: Limits,
    /// The worker (`[worker]`).
    pub worker: WorkerConfig,
    /// Channels by the name sagas use (`[channels.NAME]`, with `type = ...`).
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Per-account credentials (`[accounts]`): `file`, `secrets_file`,
    /// `refresh_margin_s`; paths relative to the configuration file.
    pub accounts: Option<crate::accounts::AccountsConfig>,
    /// Outcome webhooks (`[webhooks]`: `url`, `secret_env`, `events`,
    /// `max_attempts`, `backoff_initial_ms`, `backoff_max_ms`, `timeout_ms`,
    /// `outbox`); `None`: none are sent.
    pub webhooks: Option<crate::webhooks::WebhooksConfig>,
    /// Traces (`[telemetry]`): checked against this build by
    /// [`check_telemetry`] when the configuration is parsed.
    pub telemetry: TelemetryConfig,
}

/// Keys that hold secrets: they may only come from the environment.
const SECRET_KEYS: [&str; 5] = [
    "app_secret",
    "secret",
    "supplier_secret",
    "session",
    "password",
];

/// Replace every `NAME_env = "VAR"` by `NAME = <value of VAR>`; refuse
/// secrets written in the file.
fn resolve_env(
    table: &mut toml::value::Table,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let here = format!("{path}.{key}");
        if SECRET_KEYS.contains(&key.as_str()) {
            return Err(bad(
                here,
                format!("secrets are read from the environment, not the file: write `{key}_env = \"SOME_VAR\"`"),
            ));
        }
        if let Some(name) = key.strip_suffix("_env") {
            let var = match table.get(&key) {
                Some(toml::Value::String(v)) => v.clone(),
                _ => {
                    return Err(bad(
                        here,
                        "must be the name of an environment variable (a string)",
                    ))
                }
            };
            let value = env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                bad(
                    here.clone(),
                    format!("environment variable {var} is not set"),
                )
            })?;
            table.remove(&key);
            table.insert(name.to_owned(), toml::Value::String(value));
            continue;
        }
        if let Some(toml::Value::Table(inner)) = table.get_mut(&key) {
            resolve_env(inner, &here, env)?;
        }
    }
    Ok(())
}

fn take_typed<T: for<'de> Deserialize<'de>>(
    value: toml::Value,
    key: &str,
) -> Result<T, ConfigError> {
    value
        .try_into()
        .map_err(|e: toml::de::Error| bad(key, e.message().to_owned()))
}

/// Does a PostgreSQL URL carry a password (`user:PASSWORD@`, or a
/// `password=` parameter)?
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let userinfo_password = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let param_password = url.split(['?', '&', ' ']).any(|kv| {
        kv.trim_start()
            .to_ascii_lowercase()
            .starts_with("password=")
    });
    userinfo_password || param_password
}

impl Config {
    /// Parse a configuration from TOML text; `env` looks up environment
    /// variables (pass `|v| std::env::var(v).ok()`); relative paths are
    /// resolved against `base_dir`.
    pub fn from_toml_str(
        text: &str,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::value::Table = toml::from_str(text)
            .map_err(|e: toml::de::Error| bad("", format!("not valid TOML: {}", e.message())))?;
        for key in root.keys() {
            if ![
                "journal",
                "engine",
                "worker",
                "channels",
                "accounts",
                "webhooks",
                "telemetry",
            ]
            .contains(&key.as_str())
            {
                return Err(bad(
                    key.clone(),
                    "unknown section (expected journal, engine, worker, channels, accounts, webhooks, telemetry)",
                ));
            }
        }
        let journal = match root.remove("journal") {
            None => JournalConfig::Sled {
                path: base_dir.join("rescind-journal"),
            },
            Some(toml::Value::Table(mut t)) => {
                // Checked before `postgres_url_env` is resolved: a URL from
                // the environment may carry its password; one in the file may not.
                if let Some(toml::Value::String(u)) = t.get("postgres_url") {
                    if url_has_password(u) {
                        return Err(bad(
                            "journal.postgres_url",
                            "carries a password, and secrets are never written in the file: put the URL in an environment variable and write `postgres_url_env = \"SOME_VAR\"` (the URL is not shown here)",
                        ));
                    }
                }
                resolve_env(&mut t, "journal", env)?;
                let path = t.remove("path");
                let url = t.remove("postgres_url");
                let lease_ttl_ms = match t.remove("lease_ttl_ms") {
                    None => None,
                    Some(toml::Value::Integer(n)) if n >= 100 => Some(n as u64),
                    Some(_) => {
                        return Err(bad(
                            "journal.lease_ttl_ms",
                            "must be a whole number of milliseconds, at least 100",
                        ))
                    }
                };
                let worker_id = match t.remove("worker_id") {
                    None => None,
                    Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s),
                    Some(_) => return Err(bad("journal.worker_id", "must be a non-empty string")),
                };
                let ca_file = match t.remove("ca_file") {
                    None => None,
                    Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(base_dir.join(s)),
                    Some(_) => return Err(bad("journal.ca_file", "must be a non-empty path")),
                };
                if let Some(k) = t.keys().next() {
                    return Err(bad(
                        format!("journal.{k}"),
                        "unknown key (expected path, or postgres_url / postgres_url_env with lease_ttl_ms, worker_id and ca_file)",
                    ));
                }
                if url.is_none()
                    && (lease_ttl_ms.is_some() || worker_id.is_some() || ca_file.is_some())
                {
                    return Err(bad(
                        "journal",
                        "lease_ttl_ms, worker_id and ca_file apply to a postgres_url journal only",
                    ));
                }
                match (path, url) {
                    (Some(_), Some(_)) => {
                        return Err(bad(
                            "journal",
                            "give either path (sled) or postgres_url, not both",
                        ))
                    }
                    (Some(toml::Value::String(p)), None) => JournalConfig::Sled {
                        path: base_dir.join(p),
                    },
                    (None, Some(toml::Value::String(u))) => {
                        if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                            return Err(bad(
                                "journal.postgres_url",
                                "must start with postgres:// or postgresql://",
                            ));
                        }
                        JournalConfig::Postgres {
                            url: u,
                            lease_ttl_ms,
                            worker_id,
                            ca_file,
                        }
                    }
                    (None, None) => JournalConfig::Sled {
                        path: base_dir.join("rescind-journal"),
                    },
                    _ => return Err(bad("journal", "path and postgres_url must be strings")),
                }
            }
            Some(_) => return Err(bad("journal", "must be a table")),
        };
        let engine: Limits = match root.remove("engine") {
            None => Limits::default(),
            Some(v) => take_typed(v, "engine")?,
        };
        engine
            .validate()
            .map_err(|e| bad(format!("engine.{}", e.limit), e.rule))?;
        let mut worker: WorkerConfig = match root.remove("worker") {
            None => WorkerConfig::default(),
            Some(v) => take_typed(v, "worker")?,
        };
        if worker.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "worker.listen",
                format!("{:?} is not an address like 127.0.0.1:7878", worker.listen),
            ));
        }
        worker.callback_store = base_dir.join(&worker.callback_store);
        if worker.callback_store_max_mb == 0 || worker.callback_store_max_mb > 1 << 20 {
            return Err(bad(
                "worker.callback_store_max_mb",
                "must be between 1 and 1048576 (MiB)",
            ));
        }
        for (key, v, lo, hi) in [
            (
                "worker.header_read_timeout_ms",
                worker.header_read_timeout_ms,
                100,
                60_000,
            ),
            (
                "worker.request_timeout_ms",
                worker.request_timeout_ms,
                100,
                600_000,
            ),
            (
                "worker.max_connections",
                worker.max_connections as u64,
                16,
                1_000_000,
            ),
            ("worker.max_body_kb", worker.max_body_kb as u64, 1, 65_536),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(bad(key, format!("must be between {lo} and {hi} (got {v})")));
            }
        }
        let mut channels = BTreeMap::new();
        match root.remove("channels") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (name, value) in t {
                    let key = format!("channels.{name}");
                    let mut table = match value {
                        toml::Value::Table(t) => t,
                        _ => return Err(bad(key, "must be a table")),
                    };
                    resolve_env(&mut table, &key, env)?;
                    let ty = match table.remove("type") {
                        Some(toml::Value::String(s)) => s,
                        Some(_) => return Err(bad(format!("{key}.type"), "must be a string")),
                        None => name.clone(),
                    };
                    let v = toml::Value::Table(table);
                    let cfg = match ty.as_str() {
                        "tmall-tbc" => {
                            let c: TopConfig = take_typed(v, &key)?;
                            c.validate().map_err(|e| bad(format!("{key}.{}", e.field), e.reason))?;
                            ChannelConfig::TmallTbc(c)
                        }
                        "damai" => {
                            let c: DamaiConfig = take_typed(v, &key)?;
                            c.validate().map_err(|e| bad(format!("{key}.{}", e.field), e.reason))?;
                            ChannelConfig::Damai(c)
                        }
                        "pandapon-taobao" | "pandapon-1688" => {
                            let c: PandaponConfig = take_typed(v, &key)?;
                            c.validate().map_err(|e| bad(key.clone(), e.to_string()))?;
                            if ty == "pandapon-taobao" {
                                ChannelConfig::PandaponTaobao(c)
                            } else {
                                ChannelConfig::Pandapon1688(c)
                            }
                        }
                        other => {
                            return Err(bad(
                                format!("{key}.type"),
                                format!("unknown channel type {other:?} (expected tmall-tbc, damai, pandapon-taobao or pandapon-1688)"),
                            ))
                        }
                    };
                    channels.insert(name, cfg);
                }
            }
            Some(_) => return Err(bad("channels", "must be a table of channel tables")),
        }
        check_app_keys(&channels)?;
        let accounts = match root.remove("accounts") {
            None => None,
            Some(v) => {
                let mut a: crate::accounts::AccountsConfig = take_typed(v, "accounts")?;
                a.file = base_dir.join(&a.file);
                a.secrets_file = a.secrets_file.map(|p| base_dir.join(p));
                Some(a)
            }
        };
        let webhooks = match root.remove("webhooks") {
            None => None,
            Some(toml::Value::Table(mut t)) => {
                resolve_env(&mut t, "webhooks", env)?;
                Some(crate::webhooks::WebhooksConfig::from_table(
                    toml::Value::Table(t),
                    base_dir,
                )?)
            }
            Some(_) => return Err(bad("webhooks", "must be a table")),
        };
        let telemetry: TelemetryConfig = match root.remove("telemetry") {
            None => TelemetryConfig::default(),
            Some(v) => take_typed(v, "telemetry")?,
        };
        check_telemetry(&telemetry, cfg!(feature = "otel"))?;
        Ok(Config {
            journal,
            engine,
            worker,
            channels,
            accounts,
            webhooks,
            telemetry,
        })
    }

    /// Read and parse a configuration file, with secrets from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad("", format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml_str(&text, base, &|v| std::env::var(v).ok())
    }
}

/// Check `[telemetry]`: an `otlp_endpoint` is an `http://` or `https://`
/// URL with a host and no password (an exporter's credentials go in
/// `OTEL_EXPORTER_OTLP_HEADERS`), `service_name` is not empty, and a build
/// without OpenTelemetry (`otel_built` false: no `otel` feature) refuses an
/// endpoint rather than silently export nothing.
pub fn check_telemetry(t: &TelemetryConfig, otel_built: bool) -> Result<(), ConfigError> {
    if let Some(name) = &t.service_name {
        if name.trim().is_empty() {
            return Err(bad("telemetry.service_name", "must not be empty"));
        }
    }
    let Some(url) = &t.otlp_endpoint else {
        return Ok(());
    };
    const KEY: &str = "telemetry.otlp_endpoint";
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let host = rest.and_then(|r| r.split(['/', '?', '#']).next());
    match host {
        None => {
            return Err(bad(
                KEY,
                format!(
                    "{:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)",
                    redact_url(url)
                ),
            ))
        }
        Some("") => return Err(bad(KEY, "names no host (e.g. http://127.0.0.1:4318)")),
        Some(h) if h.rsplit_once('@').is_some_and(|(user, _)| user.contains(':')) => {
            return Err(bad(
                KEY,
                "carries a password, and secrets are never written in the file: give the receiver's credentials as headers in OTEL_EXPORTER_OTLP_HEADERS (the URL is not shown here)",
            ))
        }
        Some(_) => {}
    }
    if !otel_built {
        return Err(bad(
            KEY,
            "this rescind was built without OpenTelemetry support: build it with `--features otel` to export traces, or remove the key",
        ));
    }
    Ok(())
}

/// TOP flow control is per app key: the channels on one (gateway URL, app
/// key) share one limiter, whose budget is their `gateway.transport`'s
/// `rate_per_s`, `burst` and `rate_wait_max_ms`. Channels that share an app
/// key must therefore give the same three values; a difference is an error
/// naming both channels and the key (rather than a silent pick).
fn check_app_keys(channels: &BTreeMap<String, ChannelConfig>) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<(String, String), (&str, &rescind_wire::transport::TransportSettings)> =
        BTreeMap::new();
    for (name, cfg) in channels {
        let gateway = match cfg {
            ChannelConfig::TmallTbc(c) => &c.gateway,
            ChannelConfig::Damai(c) => &c.gateway,
            ChannelConfig::PandaponTaobao(_) | ChannelConfig::Pandapon1688(_) => continue,
        };
        let key = (
            gateway.url.trim().to_owned(),
            gateway.app_key.trim().to_owned(),
        );
        let t = &gateway.transport;
        match seen.get(&key) {
            None => {
                seen.insert(key, (name.as_str(), t));
            }
            Some((first, u)) => {
                for (field, differs) in [
                    ("rate_per_s", t.rate_per_s != u.rate_per_s),
                    ("burst", t.burst != u.burst),
                    ("rate_wait_max_ms", t.rate_wait_max_ms != u.rate_wait_max_ms),
                ] {
                    if differs {
                        return Err(bad(
                            format!("channels.{name}.gateway.transport.{field}"),
                            format!(
                                "differs from channels.{first}.gateway.transport.{field}, but both use TOP app key {} on {}: \
                                 an app key has one flow-control budget, shared by its channels; give them the same value",
                                key.1, key.0
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Hide a URL's password: `postgres://u:secret@h/db` → `postgres://u:***@h/db`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.rsplit_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[journal]
path = "j"

[engine]
in_flight_max = 64

[channels.tmall-tbc]
type = "tmall-tbc"
[channels.tmall-tbc.gateway]
url = "http://127.0.0.1:9/router/rest"
app_key = "12129701"
app_secret_env = "TOP_SECRET"

[channels.pp]
type = "pandapon-1688"
base_url = "http://127.0.0.1:9"
access_key = "ak"
secret_env = "PP_SECRET"
user_id = "u"
"#;

    fn env(v: &str) -> Option<String> {
        match v {
            "TOP_SECRET" => Some("s3cr3t-top".into()),
            "PP_SECRET" => Some("s3cr3t-pp".into()),
            _ => None,
        }
    }

    /// `[telemetry]` parses into the config; a build without `otel` refuses
    /// an endpoint naming the feature to build with, and accepts a config
    /// without one.
    #[test]
    fn telemetry_needs_the_otel_feature_for_an_endpoint() {
        let text =
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nservice_name = \"rescind-eu\"";
        let want = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            service_name: Some("rescind-eu".into()),
        };
        let otel_built = cfg!(feature = "otel");
        match Config::from_toml_str(text, Path::new("."), &env) {
            Ok(c) => {
                assert!(otel_built, "parsed without the feature");
                assert_eq!(c.telemetry, want);
            }
            Err(e) => {
                assert!(!otel_built, "refused with the feature: {e}");
                assert_eq!(e.key, "telemetry.otlp_endpoint");
            }
        }
        assert_eq!(check_telemetry(&want, true), Ok(()));
        let err = check_telemetry(&want, false).expect_err("no otel, an endpoint");
        assert_eq!(err.key, "telemetry.otlp_endpoint");
        assert!(err.reason.contains("--features otel"), "{err}");
        let unnamed = TelemetryConfig {
            otlp_endpoint: None,
            service_name: Some("rescind".into()),
        };
        assert_eq!(check_telemetry(&unnamed, false), Ok(()));
        let c = Config::from_toml_str("", Path::new("."), &env).unwrap();
        assert_eq!(c.telemetry, TelemetryConfig::default());
    }

    #[test]
    fn good_config_parses_and_never_prints_secrets() {
        let c = Config::from_toml_str(GOOD, Path::new("/etc/rescind"), &env).unwrap();
        assert_eq!(
            c.journal,
            JournalConfig::Sled {
                path: PathBuf::from("/etc/rescind/j")
            }
        );
        assert_eq!(c.engine.in_flight_max, 64);
        assert_eq!(c.channels.len(), 2);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
    }

    /// Each bad config names its key.
    #[test]
    fn bad_configs_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("[journal]\npath = 1", "journal", "strings"),
            ("[jurnal]\n", "jurnal", "unknown section"),
            ("[engine]\nin_flight_maxx = 3", "engine", "in_flight_maxx"),
            ("[engine]\njitter_pct = 300", "engine.jitter_pct", "between"),
            ("[engine]\nbackoff_initial_ms = 10\nbackoff_max_ms = 5", "engine.backoff_max_ms", "at least backoff_initial_ms"),
            ("[worker]\nlisten = \"nowhere\"", "worker.listen", "not an address"),
            ("[worker]\ncallback_store_max_mb = 0", "worker.callback_store_max_mb", "between 1"),
            ("[worker]\nheader_read_timeout_ms = 0", "worker.header_read_timeout_ms", "between 100 and 60000 (got 0)"),
            ("[worker]\nrequest_timeout_ms = 99", "worker.request_timeout_ms", "between 100"),
            ("[worker]\nmax_connections = 2", "worker.max_connections", "between 16"),
            ("[worker]\nmax_body_kb = 0", "worker.max_body_kb", "between 1"),
            ("[journal]\npostgres_url = \"mysql://x\"", "journal.postgres_url", "postgres://"),
            (
                "[journal]\npostgres_url = \"postgres://u:hunter2-secret@h/d\"",
                "journal.postgres_url",
                "carries a password",
            ),
            (
                "[journal]\npostgres_url = \"postgres://u@h/d?password=hunter2-secret\"",
                "journal.postgres_url",
                "postgres_url_env",
            ),
            ("[journal]\npath = \"j\"\nlease_ttl_ms = 500", "journal", "postgres_url journal only"),
            ("[journal]\npath = \"j\"\nca_file = \"ca.pem\"", "journal", "postgres_url journal only"),
            ("[journal]\npostgres_url = \"postgres://h/d\"\nca_file = 3", "journal.ca_file", "non-empty path"),
            ("[journal]\npostgres_url = \"postgres://h/d\"\nlease_ttl_ms = 5", "journal.lease_ttl_ms", "at least 100"),
            ("[channels.x]\ntype = \"ebay\"", "channels.x.type", "unknown channel type"),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret = \"inline!\"",
                "channels.t.gateway.app_secret",
                "environment",
            ),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret_env = \"MISSING\"",
                "channels.t.gateway.app_secret_env",
                "MISSING is not set",
            ),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"ftp://h\"\napp_key = \"k\"\napp_secret_env = \"TOP_SECRET\"",
                "channels.t.gateway.url",
                "http",
            ),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret_env = \"TOP_SECRET\"\n[channels.t.tmc]\nenabled = true\nquantity = 500",
                "channels.t.tmc.quantity",
                "between 1 and 200",
            ),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret_env = \"TOP_SECRET\"\n[channels.t.tmc]\nenabled = true\npoll_intervall_ms = 5",
                "channels.t",
                "poll_intervall_ms",
            ),
            ("this is = not toml [", "", "not valid TOML"),
            ("[telemetry]\notlp_endpoint = \"udp://h:4318\"", "telemetry.otlp_endpoint", "not an http:// or https:// URL"),
            ("[telemetry]\notlp_endpoint = \"http://\"", "telemetry.otlp_endpoint", "names no host"),
            (
                "[telemetry]\notlp_endpoint = \"https://u:hunter2-secret@h:4318\"",
                "telemetry.otlp_endpoint",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            ("[telemetry]\nservice_name = \" \"", "telemetry.service_name", "must not be empty"),
            ("[telemetry]\nendpoint = \"http://h\"", "telemetry", "endpoint"),
            (
                "[channels.t]\ntype = \"tmall-tbc\"\n[channels.t.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret_env = \"TOP_SECRET\"\n\
                 [channels.u]\ntype = \"tmall-tbc\"\n[channels.u.gateway]\nurl = \"http://h\"\napp_key = \"k\"\napp_secret_env = \"TOP_SECRET\"\n\
                 [channels.u.gateway.transport]\nrate_per_s = 5.0",
                "channels.u.gateway.transport.rate_per_s",
                "differs from channels.t.gateway.transport.rate_per_s, but both use TOP app key k",
            ),
        ];
        for (text, key, reason) in cases {
            let err = Config::from_toml_str(text, Path::new("."), &env).expect_err(text);
            assert_eq!(&err.key, key, "{text}: {err}");
            assert!(err.reason.contains(reason), "{text}: {err}");
            assert!(!err.to_string().contains("inline!"), "secret echoed: {err}");
            assert!(
                !err.to_string().contains("hunter2"),
                "password echoed: {err}"
            );
        }
    }

    /// The shipped example parses, and the defaults it shows are the real ones.
    #[test]
    fn example_file_is_true() {
        let text = include_str!("../../../rescind.example.toml");
        let env = |v: &str| match v {
            "RESCIND_TOP_APP_SECRET"
            | "RESCIND_DAMAI_SUPPLIER_SECRET"
            | "RESCIND_PANDAPON_SECRET" => Some("x".to_owned()),
            _ => None,
        };
        let c = Config::from_toml_str(text, Path::new("/srv"), &env).unwrap();
        assert_eq!(
            c.engine,
            Limits::default(),
            "[engine] in the example must show the defaults"
        );
        let mut w = WorkerConfig::default();
        w.callback_store = Path::new("/srv").join(&w.callback_store);
        assert_eq!(
            c.worker, w,
            "[worker] in the example must show the defaults"
        );
        let types: Vec<&str> = c.channels.values().map(|c| c.type_name()).collect();
        assert_eq!(
            types,
            ["damai", "pandapon-1688", "pandapon-taobao", "tmall-tbc"]
        );
        // The transport tables show the shared defaults, in one vocabulary.
        let defaults = rescind_wire::transport::TransportSettings::default();
        match (&c.channels["tmall-tbc"], &c.channels["pandapon-taobao"]) {
            (ChannelConfig::TmallTbc(t), ChannelConfig::PandaponTaobao(p)) => {
                assert_eq!(t.gateway.transport, defaults);
                assert_eq!(
                    t.tmc,
                    rescind_channel_top::TmcConfig::default(),
                    "[channels.tmall-tbc.tmc] in the example must show the defaults"
                );
                assert_eq!(p.transport, defaults);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.journal,
            JournalConfig::Sled {
                path: PathBuf::from("/srv/rescind-journal")
            }
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
