//! The default [`Credentials`] provider: one accounts file (thousands of
//! `[[account]]` tables, no secrets), one secrets file (mode 0600) and
//! environment variables, reloaded without a restart.
//!
//! ```toml
//! # accounts.toml
//! [[account]]
//! id = "shopA"                        # the seller nick
//! channels = ["tmall-tbc", "damai"]    # optional: every channel when absent
//! damai_supplier_key = "supplier-a"    # optional
//! pandapon_user_id = "2100007341207"   # optional
//! top_session_env = "SHOPA_SESSION"    # optional: a secret from the environment
//!
//! # secrets.toml (chmod 600), one table per account
//! [shopA]
//! top_session = "..."
//! top_session_expires_at_ms = 1790000000000
//! top_refresh_token = "..."
//! top_refresh_expires_at_ms = 1792000000000
//! damai_supplier_secret = "..."
//! pandapon_access_key = "..."
//! pandapon_secret = "..."
//! ```
//!
//! A secret key written in the accounts file is refused (it belongs in the
//! secrets file or the environment). A secrets file readable by group or
//! others is refused, naming its path and mode. A session refreshed through
//! `taobao.top.auth.token.refresh` is written (atomically, mode 0600) to
//! `<secrets_file>.refreshed` beside the secrets file, with a fingerprint of
//! the session it replaced: on load it is used while the secrets file still
//! holds that session, and dropped as soon as an operator writes another one.

use rescind_wire::credentials::{
    AccountCredentials, Changes, Credentials, CredentialsError, DamaiSupplier, PandaponKey,
    StaticCredentials, TopSession,
};
use rescind_wire::sign::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Secret keys: only in the secrets file or (as `KEY_env`) from the environment.
pub const SECRET_KEYS: [&str; 5] = [
    "top_session",
    "top_refresh_token",
    "damai_supplier_secret",
    "pandapon_access_key",
    "pandapon_secret",
];

/// `[accounts]` of the configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsConfig {
    /// The accounts file (relative paths: to the configuration file).
    pub file: PathBuf,
    /// The secrets file (mode 0600), if any.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// A session expiring within this many seconds is refreshed before a
    /// call, when a refresh token is held. Default 600.
    #[serde(default = "default_margin_s")]
    pub refresh_margin_s: u64,
}

fn default_margin_s() -> u64 {
    600
}

impl AccountsConfig {
    /// The refresh margin in ms.
    pub fn refresh_margin_ms(&self) -> u64 {
        self.refresh_margin_s.saturating_mul(1000)
    }
}

/// Why the accounts could not be loaded. Names the file, the account and
/// the key, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountsError {
    /// A file could not be read or written.
    #[error("accounts: {path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The secrets file is readable or writable by group or others.
    #[error(
        "accounts: secrets file {path} has mode {mode:04o}; it must be 0600 (chmod 600 {path})"
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is not the expected TOML.
    #[error("accounts: {path}: {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key (`account[3].id`, `shopA.top_session`, ...).
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(path: &Path, key: impl Into<String>, reason: impl Into<String>) -> AccountsError {
    AccountsError::Invalid {
        path: path.to_owned(),
        key: key.into(),
        reason: reason.into(),
    }
}

fn io(path: &Path, e: &std::io::Error) -> AccountsError {
    AccountsError::Io {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountsFile {
    #[serde(default)]
    account: Vec<toml::value::Table>,
}

/// One account's secrets, merged from the secrets file and the environment.
#[derive(Default, Clone)]
struct Secrets {
    top_session: Option<String>,
    top_session_expires_at_ms: Option<u64>,
    top_refresh_token: Option<String>,
    top_refresh_expires_at_ms: Option<u64>,
    damai_supplier_secret: Option<String>,
    pandapon_access_key: Option<String>,
    pandapon_secret: Option<String>,
}

type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// One account as `GET /accounts` shows it: no secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AccountInfo {
    /// The account id.
    pub id: String,
    /// The channels it serves (empty: all).
    pub channels: Vec<String>,
    /// Whether a TOP session is held.
    pub top_session: bool,
    /// The TOP session's expiry, epoch ms.
    pub session_expires_at_ms: Option<u64>,
    /// Whether a refresh token is held.
    pub refreshable: bool,
    /// Whether Damai supplier credentials are held.
    pub damai: bool,
    /// Whether a PandaPon key is held.
    pub pandapon: bool,
    /// Revoked by the operator.
    pub revoked: bool,
}

impl From<&AccountCredentials> for AccountInfo {
    fn from(a: &AccountCredentials) -> Self {
        AccountInfo {
            id: a.account.clone(),
            channels: a.channels.clone(),
            top_session: a.top.is_some(),
            session_expires_at_ms: a.top.as_ref().and_then(|t| t.expires_at_ms),
            refreshable: a.top.as_ref().is_some_and(|t| t.refresh_token.is_some()),
            damai: a.damai.is_some(),
            pandapon: a.pandapon.is_some(),
            revoked: a.revoked,
        }
    }
}

/// The file provider.
pub struct FileCredentials {
    file: PathBuf,
    secrets_file: Option<PathBuf>,
    env: Env,
    inner: StaticCredentials,
    /// Serialises writes of the refreshed-sessions file.
    write: Mutex<()>,
}

impl std::fmt::Debug for FileCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCredentials")
            .field("file", &self.file)
            .field("secrets_file", &self.secrets_file)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn fingerprint(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<String, AccountsError> {
    std::fs::read_to_string(path).map_err(|e| io(path, &e))
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), AccountsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| io(path, &e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AccountsError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), AccountsError> {
    Ok(())
}

fn opt_string(
    t: &mut toml::value::Table,
    path: &Path,
    key: &str,
    name: &str,
) -> Result<Option<String>, AccountsError> {
    match t.remove(name) {
        None => Ok(None),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(invalid(
            path,
            format!("{key}.{name}"),
            "must be a non-empty string",
        )),
    }
}

fn opt_ms(
    t: &mut toml::value::Table,
    path: &Path,
    key: &str,
    name: &str,
) -> Result<Option<u64>, AccountsError> {
    match t.remove(name) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) if n >= 0 => Ok(Some(n as u64)),
        Some(_) => Err(invalid(
            path,
            format!("{key}.{name}"),
            "must be epoch milliseconds (a whole number)",
        )),
    }
}

fn parse_secrets(
    t: &mut toml::value::Table,
    path: &Path,
    key: &str,
) -> Result<Secrets, AccountsError> {
    let s = Secrets {
        top_session: opt_string(t, path, key, "top_session")?,
        top_session_expires_at_ms: opt_ms(t, path, key, "top_session_expires_at_ms")?,
        top_refresh_token: opt_string(t, path, key, "top_refresh_token")?,
        top_refresh_expires_at_ms: opt_ms(t, path, key, "top_refresh_expires_at_ms")?,
        damai_supplier_secret: opt_string(t, path, key, "damai_supplier_secret")?,
        pandapon_access_key: opt_string(t, path, key, "pandapon_access_key")?,
        pandapon_secret: opt_string(t, path, key, "pandapon_secret")?,
    };
    Ok(s)
}

/// A refreshed session as stored beside the secrets file.
struct Refreshed {
    replaces: String,
    secrets: Secrets,
}

impl FileCredentials {
    /// Load `config`'s files; environment variables from `env` (pass
    /// `|v| std::env::var(v).ok()`).
    pub fn load(
        config: &AccountsConfig,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, AccountsError> {
        let p = FileCredentials {
            file: config.file.clone(),
            secrets_file: config.secrets_file.clone(),
            env: Arc::new(env),
            inner: StaticCredentials::new(),
            write: Mutex::new(()),
        };
        p.reload()?;
        Ok(p)
    }

    /// Read the files again; the accounts whose credentials changed. On
    /// an error nothing changes.
    pub fn reload(&self) -> Result<Changes, AccountsError> {
        let before = self.inner.generation();
        let all = self.read_all()?;
        self.inner.replace_all(all);
        Ok(self.inner.changed_since(before))
    }

    /// Every account, without secrets, by id.
    pub fn infos(&self) -> Vec<AccountInfo> {
        self.inner.all().iter().map(AccountInfo::from).collect()
    }

    /// Where refreshed sessions are written.
    pub fn refreshed_file(&self) -> Option<PathBuf> {
        self.secrets_file.as_ref().map(|p| {
            let mut s = p.clone().into_os_string();
            s.push(".refreshed");
            PathBuf::from(s)
        })
    }

    fn read_all(&self) -> Result<Vec<AccountCredentials>, AccountsError> {
        self.read_accounts(true)
    }

    fn read_accounts(
        &self,
        with_refreshed: bool,
    ) -> Result<Vec<AccountCredentials>, AccountsError> {
        let path = &self.file;
        let parsed: AccountsFile = toml::from_str(&read(path)?)
            .map_err(|e| invalid(path, "", format!("not valid TOML: {}", e.message())))?;
        let mut secrets: BTreeMap<String, Secrets> = BTreeMap::new();
        if let Some(sp) = &self.secrets_file {
            check_mode(sp)?;
            // toml's message may quote the line: never show it.
            let root: toml::value::Table = toml::from_str(&read(sp)?).map_err(|_| {
                invalid(
                    sp,
                    "",
                    "not valid TOML (the text is not shown: it holds secrets)",
                )
            })?;
            for (id, v) in root {
                let toml::Value::Table(mut t) = v else {
                    return Err(invalid(sp, id, "must be a table of the account's secrets"));
                };
                let s = parse_secrets(&mut t, sp, &id)?;
                if let Some(k) = t.keys().next() {
                    return Err(invalid(sp, format!("{id}.{k}"), "unknown key"));
                }
                secrets.insert(id, s);
            }
        }
        let refreshed = if with_refreshed {
            self.read_refreshed()?
        } else {
            BTreeMap::new()
        };
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(parsed.account.len());
        for (i, mut t) in parsed.account.into_iter().enumerate() {
            let key = format!("account[{i}]");
            let id = match t.remove("id") {
                Some(toml::Value::String(s)) if !s.trim().is_empty() => s,
                _ => {
                    return Err(invalid(
                        path,
                        format!("{key}.id"),
                        "required, a non-empty string",
                    ))
                }
            };
            let key = format!("account[{i}] ({id})");
            if !seen.insert(id.clone()) {
                return Err(invalid(path, key, "duplicate account id"));
            }
            for k in SECRET_KEYS {
                if t.contains_key(k) {
                    return Err(invalid(
                        path,
                        format!("{key}.{k}"),
                        format!("secrets are not written in the accounts file: put it in the secrets file or write `{k}_env = \"SOME_VAR\"`"),
                    ));
                }
            }
            let mut s = secrets.remove(&id).unwrap_or_default();
            for k in SECRET_KEYS {
                let env_key = format!("{k}_env");
                let Some(v) = t.remove(&env_key) else {
                    continue;
                };
                let toml::Value::String(var) = v else {
                    return Err(invalid(
                        path,
                        format!("{key}.{env_key}"),
                        "must be the name of an environment variable",
                    ));
                };
                let value = (self.env)(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
                    invalid(
                        path,
                        format!("{key}.{env_key}"),
                        format!("environment variable {var} is not set"),
                    )
                })?;
                let slot = match k {
                    "top_session" => &mut s.top_session,
                    "top_refresh_token" => &mut s.top_refresh_token,
                    "damai_supplier_secret" => &mut s.damai_supplier_secret,
                    "pandapon_access_key" => &mut s.pandapon_access_key,
                    _ => &mut s.pandapon_secret,
                };
                *slot = Some(value);
            }
            let channels = match t.remove("channels") {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a
                    .into_iter()
                    .map(|v| match v {
                        toml::Value::String(s) if !s.is_empty() => Ok(s),
                        _ => Err(invalid(
                            path,
                            format!("{key}.channels"),
                            "must be a list of channel names",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(invalid(
                        path,
                        format!("{key}.channels"),
                        "must be a list of channel names",
                    ))
                }
            };
            let revoked = match t.remove("revoked") {
                None => false,
                Some(toml::Value::Boolean(b)) => b,
                Some(_) => {
                    return Err(invalid(
                        path,
                        format!("{key}.revoked"),
                        "must be true or false",
                    ))
                }
            };
            let damai_key = opt_string(&mut t, path, &key, "damai_supplier_key")?;
            let user_id = opt_string(&mut t, path, &key, "pandapon_user_id")?;
            if let Some(exp) = opt_ms(&mut t, path, &key, "top_session_expires_at_ms")? {
                s.top_session_expires_at_ms = Some(exp);
            }
            if let Some(k) = t.keys().next() {
                return Err(invalid(
                    path,
                    format!("{key}.{k}"),
                    "unknown key (expected id, channels, revoked, damai_supplier_key, pandapon_user_id, top_session_expires_at_ms, or a secret as KEY_env)",
                ));
            }
            // A refreshed session is used while the secrets still hold the
            // session it replaced.
            if let (Some(r), Some(base)) = (refreshed.get(&id), s.top_session.as_deref()) {
                if r.replaces == fingerprint(base) {
                    s.top_session = r.secrets.top_session.clone();
                    s.top_session_expires_at_ms = r.secrets.top_session_expires_at_ms;
                    if r.secrets.top_refresh_token.is_some() {
                        s.top_refresh_token = r.secrets.top_refresh_token.clone();
                        s.top_refresh_expires_at_ms = r.secrets.top_refresh_expires_at_ms;
                    }
                }
            }
            let damai = match (damai_key, s.damai_supplier_secret.take()) {
                (Some(k), Some(sec)) => Some(DamaiSupplier {
                    supplier_key: k,
                    supplier_secret: Secret::new(sec),
                }),
                (None, None) => None,
                _ => {
                    return Err(invalid(
                        path,
                        key,
                        "damai_supplier_key and damai_supplier_secret go together",
                    ))
                }
            };
            let pandapon = match (
                user_id,
                s.pandapon_access_key.take(),
                s.pandapon_secret.take(),
            ) {
                (Some(u), Some(k), Some(sec)) => Some(PandaponKey {
                    access_key: Secret::new(k),
                    secret: Secret::new(sec),
                    user_id: u,
                }),
                (None, None, None) => None,
                _ => {
                    return Err(invalid(
                        path,
                        key,
                        "pandapon_user_id, pandapon_access_key and pandapon_secret go together",
                    ))
                }
            };
            let top = s.top_session.take().map(|sess| TopSession {
                session: Secret::new(sess),
                expires_at_ms: s.top_session_expires_at_ms,
                refresh_token: s.top_refresh_token.take().map(Secret::new),
                refresh_expires_at_ms: s.top_refresh_expires_at_ms,
            });
            out.push(AccountCredentials {
                account: id,
                channels,
                top,
                pandapon,
                damai,
                revoked,
            });
        }
        if let Some(sp) = &self.secrets_file {
            if let Some(id) = secrets.keys().next() {
                return Err(invalid(
                    sp,
                    id.clone(),
                    "secrets of an account that is not in the accounts file",
                ));
            }
        }
        Ok(out)
    }

    fn read_refreshed(&self) -> Result<BTreeMap<String, Refreshed>, AccountsError> {
        let Some(path) = self.refreshed_file() else {
            return Ok(BTreeMap::new());
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(io(&path, &e)),
        };
        check_mode(&path)?;
        let root: toml::value::Table = toml::from_str(&text).map_err(|_| {
            invalid(
                &path,
                "",
                "not valid TOML (the text is not shown: it holds secrets)",
            )
        })?;
        let mut out = BTreeMap::new();
        for (id, v) in root {
            let toml::Value::Table(mut t) = v else {
                return Err(invalid(&path, id, "must be a table"));
            };
            let replaces = opt_string(&mut t, &path, &id, "replaces")?
                .ok_or_else(|| invalid(&path, format!("{id}.replaces"), "required"))?;
            let secrets = parse_secrets(&mut t, &path, &id)?;
            out.insert(id, Refreshed { replaces, secrets });
        }
        Ok(out)
    }

    /// Write `account`'s refreshed session beside the secrets file.
    fn persist(&self, account: &str, session: &TopSession) -> Result<(), AccountsError> {
        let Some(path) = self.refreshed_file() else {
            return Ok(());
        };
        // The session in the secrets file (or environment) it replaces: read
        // again, so an operator's new session is never shadowed.
        let base = self
            .read_all_base(account)?
            .ok_or_else(|| invalid(&self.file, account, "has no TOP session to refresh"))?;
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut root: toml::value::Table = match std::fs::read_to_string(&path) {
            Ok(t) => toml::from_str(&t).unwrap_or_default(),
            Err(_) => toml::value::Table::new(),
        };
        let mut t = toml::value::Table::new();
        t.insert("replaces".into(), toml::Value::String(fingerprint(&base)));
        t.insert(
            "top_session".into(),
            toml::Value::String(session.session.expose().to_owned()),
        );
        if let Some(ms) = session.expires_at_ms {
            t.insert(
                "top_session_expires_at_ms".into(),
                toml::Value::Integer(ms as i64),
            );
        }
        if let Some(r) = &session.refresh_token {
            t.insert(
                "top_refresh_token".into(),
                toml::Value::String(r.expose().to_owned()),
            );
        }
        if let Some(ms) = session.refresh_expires_at_ms {
            t.insert(
                "top_refresh_expires_at_ms".into(),
                toml::Value::Integer(ms as i64),
            );
        }
        root.insert(account.to_owned(), toml::Value::Table(t));
        let text = toml::to_string(&root).map_err(|e| invalid(&path, account, e.to_string()))?;
        write_private(&path, text.as_bytes())
    }

    /// The base (secrets file or environment) TOP session of `account`,
    /// without any refreshed one.
    fn read_all_base(&self, account: &str) -> Result<Option<String>, AccountsError> {
        Ok(self
            .read_accounts(false)?
            .into_iter()
            .find(|a| a.account == account)
            .and_then(|a| a.top)
            .map(|t| t.session.expose().to_owned()))
    }
}

/// Write `bytes` to `path` atomically (a temporary file beside it, mode
/// 0600, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AccountsError> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| io(&tmp, &e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, &e))?;
    f.sync_all().map_err(|e| io(&tmp, &e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io(path, &e))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Credentials for FileCredentials {
    async fn top_session(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<TopSession, CredentialsError> {
        self.inner.top_session(channel, account).await
    }

    async fn pandapon_key(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<PandaponKey, CredentialsError> {
        self.inner.pandapon_key(channel, account).await
    }

    async fn damai_supplier(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<DamaiSupplier, CredentialsError> {
        self.inner.damai_supplier(channel, account).await
    }

    async fn store_top_session(
        &self,
        account: &str,
        session: TopSession,
    ) -> Result<(), CredentialsError> {
        self.inner
            .store_top_session(account, session.clone())
            .await?;
        self.persist(account, &session)
            .map_err(|e| CredentialsError::Store {
                account: account.to_owned(),
                reason: e.to_string(),
            })
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    fn changed_since(&self, generation: u64) -> Changes {
        self.inner.changed_since(generation)
    }
}

#[cfg(test)]
mod tests;
