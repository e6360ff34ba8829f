//! [`PgConfig`]: who this worker is, how long its leases last, how appends are batched.

use crate::error::PgError;
use std::ops::Range;
use std::path::PathBuf;

/// Settings of one [`PgJournal`](crate::PgJournal) (one worker).
///
/// Every limit has a default that suits a few workers on one database; see
/// `docs/operations.md` ("Several workers on PostgreSQL") for sizing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    /// This worker's identity in the `sagas.worker_id` column. Two live
    /// processes must never share one. Default: `hostname-pid-random`.
    /// A fixed id lets a restarted worker take back its own sagas at once
    /// instead of after their leases expire.
    pub worker_id: String,
    /// How long a lease lasts without renewal. A worker that stops (crash,
    /// pause, partition) holds its sagas this long before another worker
    /// may take them over. Default 30 000.
    pub lease_ttl_ms: u64,
    /// How often held leases are renewed. Must be below `lease_ttl_ms`
    /// (a third of it leaves room for two missed renewals); 0 turns renewal
    /// off, so leases then last `lease_ttl_ms` from the last claim or append
    /// (tests use it to play a paused worker). Default 10 000.
    pub lease_renew_interval_ms: u64,
    /// Most appends written in one group-commit transaction. Default 512.
    pub batch_records_max: usize,
    /// How long the committer waits for more appends once one is queued,
    /// in microseconds. 0 = write whatever is queued at once (appends that
    /// arrive while a batch is in flight still form the next batch).
    /// Default 0.
    pub batch_wait_max_us: u64,
    /// Appends queued and not yet written before `append` waits for room.
    /// Default 8 192.
    pub queue_records_max: usize,
    /// Database connections for reads, claims and lease updates (the
    /// committer has one more of its own). Default 4.
    pub pool_size: usize,
    /// Most sagas one [`claim_unfinished`](rescind_core::Journal::claim_unfinished)
    /// takes over. Default 1 000.
    pub claim_batch_max: usize,
    /// PostgreSQL schema holding rescind's tables, created if absent.
    /// `None` = the connection's default (`public`, or the URL's
    /// `options=-c search_path=...`). Letters, digits and `_` only.
    pub schema: Option<String>,
    /// Give up connecting after this long. Default 5 000.
    pub connect_timeout_ms: u64,
    /// PEM file of the CA certificate(s) the server's certificate must
    /// chain up to, for `sslmode=verify-ca` / `verify-full` (and `require`,
    /// which then checks the chain as libpq does). The same as the URL's
    /// `sslrootcert=PATH`; giving both with different paths is an error.
    /// Default `None`. See `docs/security.md` ("PostgreSQL TLS").
    pub ca_file: Option<PathBuf>,
}

impl Default for PgConfig {
    fn default() -> Self {
        PgConfig {
            worker_id: default_worker_id(),
            lease_ttl_ms: 30_000,
            lease_renew_interval_ms: 10_000,
            batch_records_max: 512,
            batch_wait_max_us: 0,
            queue_records_max: 8_192,
            pool_size: 4,
            claim_batch_max: 1_000,
            schema: None,
            connect_timeout_ms: 5_000,
            ca_file: None,
        }
    }
}

impl PgConfig {
    /// The defaults with this worker id.
    pub fn with_worker_id(worker_id: impl Into<String>) -> Self {
        PgConfig {
            worker_id: worker_id.into(),
            ..PgConfig::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PgError> {
        let bad = |what: String| Err(PgError::InvalidConfig(what));
        if self.worker_id.is_empty() || self.worker_id.len() > 200 {
            return bad(format!(
                "worker_id must be 1..=200 bytes, got {}",
                self.worker_id.len()
            ));
        }
        if self.lease_ttl_ms < 10 || self.lease_ttl_ms > 86_400_000 {
            return bad(format!(
                "lease_ttl_ms must be 10..=86400000, got {}",
                self.lease_ttl_ms
            ));
        }
        if self.lease_renew_interval_ms >= self.lease_ttl_ms {
            return bad(format!(
                "lease_renew_interval_ms ({}) must be below lease_ttl_ms ({}), or 0 for no renewal",
                self.lease_renew_interval_ms, self.lease_ttl_ms
            ));
        }
        for (name, v, max) in [
            ("batch_records_max", self.batch_records_max, 100_000),
            ("queue_records_max", self.queue_records_max, 10_000_000),
            ("pool_size", self.pool_size, 1_000),
            ("claim_batch_max", self.claim_batch_max, 1_000_000),
        ] {
            if v == 0 || v > max {
                return bad(format!("{name} must be 1..={max}, got {v}"));
            }
        }
        if let Some(s) = &self.schema {
            let ok = !s.is_empty()
                && s.len() <= 63
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !s.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                return bad(format!(
                    "schema {s:?}: use 1..=63 letters, digits or '_', not starting with a digit"
                ));
            }
        }
        Ok(())
    }
}

/// `hostname-pid-random`: unique per process, readable in `sagas.worker_id`.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..8])
}

/// `user@host:port/dbname` of a connection config: what error messages and
/// logs name. Never contains the password.
pub(crate) fn describe_target(cfg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = cfg
                .get_ports()
                .get(i)
                .or_else(|| cfg.get_ports().first())
                .copied()
                .unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let user = cfg.get_user().unwrap_or("(default user)");
    let db = cfg.get_dbname().unwrap_or("(default db)");
    format!("{user}@{hosts}/{db}")
}

/// The URL with any password replaced by `***`, for printing.
///
/// ```
/// use rescind_journal_postgres::redact_url;
/// assert_eq!(
///     redact_url("postgres://rescind:s3cret@db:5432/rescind"),
///     "postgres://rescind:***@db:5432/rescind"
/// );
/// assert_eq!(redact_url("host=db password=s3cret user=x"), "host=db password=*** user=x");
/// assert_eq!(redact_url("host=db password='s3 cret' user=x"), "host=db password=*** user=x");
/// ```
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = split_scheme(url) {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let tail = redact_query_password(tail);
        if let Some(at) = authority.rfind('@') {
            let (userinfo, host) = authority.split_at(at);
            if let Some(colon) = userinfo.find(':') {
                return format!("{scheme}{}:***{host}{tail}", &userinfo[..colon]);
            }
        }
        return format!("{scheme}{authority}{tail}");
    }
    // key=value form
    let Some(pairs) = kv_pairs(url) else {
        // Unbalanced quotes: no telling where a password ends.
        return if url.to_ascii_lowercase().contains("password") {
            "(a malformed connection string, not shown: it may hold a password)".to_owned()
        } else {
            url.to_owned()
        };
    };
    let mut out = String::with_capacity(url.len());
    let mut at = 0;
    for p in pairs
        .iter()
        .filter(|p| p.key.eq_ignore_ascii_case("password"))
    {
        out.push_str(&url[at..p.span.start]);
        out.push_str(&p.key);
        out.push_str("=***");
        at = p.span.end;
    }
    out.push_str(&url[at..]);
    out
}

fn split_scheme(url: &str) -> Option<(&'static str, &str)> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|s| url.strip_prefix(s).map(|r| (s, r)))
}

fn redact_query_password(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let q: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", q.join("&"))
}

/// Whether `url` carries a password: `postgres://user:PASSWORD@host/…`,
/// a `password=` query parameter, or a `password=` key in the `key=value`
/// form (an empty password does not count). A connection string too
/// malformed to tell counts as carrying one if it mentions `password`.
///
/// A URL written in a configuration file should not: use
/// [`refuse_url_password`] there, and take URLs with passwords from the
/// environment (`postgres_url_env`).
///
/// ```
/// use rescind_journal_postgres::url_has_password;
/// assert!(url_has_password("postgres://rescind:s3cret@db/rescind"));
/// assert!(url_has_password("postgres://rescind@db/rescind?password=s3cret"));
/// assert!(url_has_password("host=db user=rescind password='s3 cret'"));
/// assert!(!url_has_password("postgres://rescind@db/rescind?sslmode=verify-full"));
/// assert!(!url_has_password("host=db user=rescind"));
/// ```
pub fn url_has_password(url: &str) -> bool {
    if let Some((_, rest)) = split_scheme(url) {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let in_userinfo = authority
            .rfind('@')
            .and_then(|at| authority[..at].split_once(':'))
            .is_some_and(|(_, pw)| !pw.is_empty());
        let in_query = tail.split_once('?').is_some_and(|(_, q)| {
            q.split('&').any(|kv| {
                kv.split_once('=')
                    .is_some_and(|(k, v)| k.eq_ignore_ascii_case("password") && !v.is_empty())
            })
        });
        return in_userinfo || in_query;
    }
    match kv_pairs(url) {
        Some(pairs) => pairs
            .iter()
            .any(|p| p.key.eq_ignore_ascii_case("password") && !p.value.is_empty()),
        None => url.to_ascii_lowercase().contains("password"),
    }
}

/// A PostgreSQL URL that carries a password where none may be written (a
/// configuration file). The message names where the URL came from and shows
/// it redacted; neither it nor `Debug` ever contains the password.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{origin}: the PostgreSQL URL {url} carries a password; a password must not be written \
     in a configuration file: put the URL in an environment variable (postgres_url_env) instead"
)]
pub struct PasswordInUrl {
    /// Where the URL was found (e.g. `journal.postgres_url in rescind.toml`).
    pub origin: String,
    /// The URL, password redacted.
    pub url: String,
}

/// `Err` if `url` carries a password (see [`url_has_password`]); `origin`
/// says where the URL was written, for the message.
///
/// ```
/// use rescind_journal_postgres::refuse_url_password;
/// let e = refuse_url_password("postgres://u:s3cret@db/x", "journal.postgres_url").unwrap_err();
/// assert!(e.to_string().starts_with("journal.postgres_url: "));
/// assert!(!e.to_string().contains("s3cret") && !format!("{e:?}").contains("s3cret"));
/// assert!(refuse_url_password("postgres://u@db/x?sslmode=verify-full", "x").is_ok());
/// ```
pub fn refuse_url_password(url: &str, origin: &str) -> Result<(), PasswordInUrl> {
    if url_has_password(url) {
        return Err(PasswordInUrl {
            origin: origin.to_owned(),
            url: redact_url(url),
        });
    }
    Ok(())
}

/// One `key=value` of a libpq connection string.
pub(crate) struct KvPair {
    pub(crate) key: String,
    /// Unquoted and unescaped.
    pub(crate) value: String,
    /// From the key's first byte to the value's last.
    pub(crate) span: Range<usize>,
}

/// Split a libpq `key=value` connection string (`key = 'quoted \' value'`
/// allowed, as libpq and tokio-postgres read it); `None` if malformed.
pub(crate) fn kv_pairs(s: &str) -> Option<Vec<KvPair>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_owned();
        i = skip_ws(i);
        if key.is_empty() || i == b.len() || b[i] != b'=' {
            return None;
        }
        i = skip_ws(i + 1);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return None,
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        value.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    value.push(*b.get(i + 1)?);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        out.push(KvPair {
            key,
            value: String::from_utf8(value).ok()?,
            span: start..i,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_table() {
        for (url, want) in [
            ("postgres://u:p@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:p%40x@h:1/db?sslmode=disable",
                "postgresql://u:***@h:1/db?sslmode=disable",
            ),
            (
                "postgres://u@h/db?password=p&x=1",
                "postgres://u@h/db?password=***&x=1",
            ),
            ("postgres://h/db", "postgres://h/db"),
            ("postgres://u:p@h", "postgres://u:***@h"),
            ("host=h password=p", "host=h password=***"),
        ] {
            assert_eq!(redact_url(url), want, "{url}");
            assert!(
                !redact_url(url).contains(":p@") && !redact_url(url).contains("=p"),
                "{url}"
            );
        }
    }

    #[test]
    fn config_validation_rejects_each_bad_limit() {
        assert!(PgConfig::default().validate().is_ok());
        let cases: Vec<(&str, PgConfig)> = vec![
            ("worker_id", PgConfig::with_worker_id("")),
            (
                "lease_renew_interval_ms",
                PgConfig {
                    lease_renew_interval_ms: 30_000,
                    ..PgConfig::default()
                },
            ),
            (
                "lease_ttl_ms",
                PgConfig {
                    lease_ttl_ms: 1,
                    lease_renew_interval_ms: 0,
                    ..PgConfig::default()
                },
            ),
            (
                "pool_size",
                PgConfig {
                    pool_size: 0,
                    ..PgConfig::default()
                },
            ),
            (
                "batch_records_max",
                PgConfig {
                    batch_records_max: 0,
                    ..PgConfig::default()
                },
            ),
            (
                "schema",
                PgConfig {
                    schema: Some("x; drop".into()),
                    ..PgConfig::default()
                },
            ),
            (
                "schema",
                PgConfig {
                    schema: Some("1abc".into()),
                    ..PgConfig::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            match cfg.validate() {
                Err(PgError::InvalidConfig(msg)) => assert!(msg.contains(field), "{field}: {msg}"),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn quoted_and_spaced_passwords_are_redacted_whole() {
        for url in [
            "host=h password='hun ter2' user=u",
            "host=h password = 'hun\\'ter2' user=u",
            "host=h password=hun\\ ter2 user=u",
            "host=h password='hun ter2",
        ] {
            let r = redact_url(url);
            assert!(!r.contains("hun") && !r.contains("ter2"), "{url} -> {r}");
        }
        assert_eq!(
            redact_url("host=h password = 'a b' user=u"),
            "host=h password=*** user=u"
        );
    }

    #[test]
    fn password_detection_table() {
        for (url, has) in [
            ("postgres://u:pw@h/db", true),
            ("postgresql://u:p%40w@h:1,h2:2/db?sslmode=require", true),
            ("postgres://u@h/db?password=pw", true),
            (
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem",
                false,
            ),
            ("postgres://u:@h/db", false),
            ("postgres://h/db", false),
            ("host=h user=u password=pw", true),
            ("host=h user=u password=''", false),
            ("host=h user=u PASSWORD='a b'", true),
            ("host=h user=u", false),
            ("host=h password='unterminated", true),
        ] {
            assert_eq!(url_has_password(url), has, "{url}");
            let refused = refuse_url_password(url, "journal.postgres_url");
            assert_eq!(refused.is_err(), has, "{url}");
            if let Err(e) = refused {
                for shown in [e.to_string(), format!("{e:?}")] {
                    assert!(!shown.contains("pw") && !shown.contains("a b"), "{shown}");
                    assert!(
                        !shown.contains("p%40w") && !shown.contains("unterminated"),
                        "{shown}"
                    );
                }
                assert!(e.to_string().contains("journal.postgres_url"), "{e}");
                assert!(e.to_string().contains("postgres_url_env"), "{e}");
            }
        }
    }

    #[test]
    fn kv_pairs_reads_libpq_quoting() {
        let pairs = kv_pairs(" a=1  b = 'x y\\'z' c=p\\ q ").unwrap_or_else(|| panic!("parse"));
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(got, [("a", "1"), ("b", "x y'z"), ("c", "p q")]);
        assert!(kv_pairs("a='x").is_none() && kv_pairs("a").is_none() && kv_pairs("=x").is_none());
    }

    #[test]
    fn config_debug_shows_no_secret() {
        // PgConfig holds no password; its Debug is safe to log whole.
        let cfg = PgConfig {
            ca_file: Some("/etc/rescind/pg-ca.pem".into()),
            ..PgConfig::with_worker_id("w1")
        };
        let dbg = format!("{cfg:?}");
        assert!(dbg.contains("pg-ca.pem") && dbg.contains("w1"), "{dbg}");
    }

    #[test]
    fn default_worker_ids_differ() {
        let (a, b) = (default_worker_id(), default_worker_id());
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }
}
