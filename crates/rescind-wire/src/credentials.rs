//! Per-account credentials, resolved at call time.
//!
//! A deployment serving many shops (accounts) through one TOP app key keeps
//! each shop's TOP session (with its expiry and refresh token), its PandaPon
//! access key and user id, and its Damai supplier key and secret behind the
//! [`Credentials`] trait. Channels ask for the credentials of `(channel,
//! account)` on every call, so a reloaded or refreshed credential is used by
//! the next call without rebuilding anything.
//!
//! Every secret is a [`Secret`]; [`CredentialsError`] names the account and
//! what is wrong, never a secret. Providers count a **generation** that moves
//! whenever an account's credentials change, and say which accounts changed
//! since a generation ([`Credentials::changed_since`]), so a caller can resume
//! the work that waited on exactly those accounts.
//!
//! [`StaticCredentials`] is the in-memory provider for tests and embedders;
//! `rescind-server` has the file provider.

use crate::sign::Secret;
use async_trait::async_trait;
use rescind_core::{ChannelError, ErrorClass, PermanentReason};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

/// A TOP user authorisation (`session`) of one account.
#[derive(Clone, PartialEq, Eq)]
pub struct TopSession {
    /// The session key sent as `session`.
    pub session: Secret,
    /// When it expires, epoch ms; `None`: unknown (used until TOP refuses it).
    pub expires_at_ms: Option<u64>,
    /// The refresh token for `taobao.top.auth.token.refresh`, if held.
    pub refresh_token: Option<Secret>,
    /// When the refresh token expires, epoch ms; `None`: unknown.
    pub refresh_expires_at_ms: Option<u64>,
}

impl TopSession {
    /// A session with an expiry and no refresh token.
    pub fn new(session: Secret, expires_at_ms: Option<u64>) -> Self {
        TopSession {
            session,
            expires_at_ms,
            refresh_token: None,
            refresh_expires_at_ms: None,
        }
    }

    /// Is it past its expiry at `now_ms`?
    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expires_at_ms, Some(t) if t <= now_ms)
    }

    /// Does it expire within `margin_ms` of `now_ms` (or already has)?
    pub fn expires_within(&self, now_ms: u64, margin_ms: u64) -> bool {
        matches!(self.expires_at_ms, Some(t) if t <= now_ms.saturating_add(margin_ms))
    }

    /// Is a refresh token held that has not expired at `now_ms`?
    pub fn can_refresh(&self, now_ms: u64) -> bool {
        self.refresh_token.as_ref().is_some_and(|t| !t.is_empty())
            && !matches!(self.refresh_expires_at_ms, Some(t) if t <= now_ms)
    }
}

impl fmt::Debug for TopSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopSession")
            .field("session", &self.session)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("refresh_token", &self.refresh_token)
            .field("refresh_expires_at_ms", &self.refresh_expires_at_ms)
            .finish()
    }
}

/// PandaPon credentials of one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PandaponKey {
    /// `access-key` (kept as a secret: it identifies the account to the API).
    pub access_key: Secret,
    /// The secret signing the account's requests.
    pub secret: Secret,
    /// `user-id`.
    pub user_id: String,
}

/// Damai supplier credentials of one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamaiSupplier {
    /// `head.supplier_key`.
    pub supplier_key: String,
    /// `head.supplier_secret`.
    pub supplier_secret: Secret,
}

/// Everything one account holds. Which channels it is for is
/// `channels` (empty: every channel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountCredentials {
    /// The account id (for TOP, the seller nick).
    pub account: String,
    /// The channel names this account's credentials serve; empty: all.
    pub channels: Vec<String>,
    /// Its TOP session.
    pub top: Option<TopSession>,
    /// Its PandaPon key.
    pub pandapon: Option<PandaponKey>,
    /// Its Damai supplier credentials.
    pub damai: Option<DamaiSupplier>,
    /// Revoked by the operator: every lookup fails with
    /// [`CredentialsError::Revoked`].
    pub revoked: bool,
}

impl AccountCredentials {
    /// Does this account serve `channel`?
    pub fn serves(&self, channel: &str) -> bool {
        self.channels.is_empty() || self.channels.iter().any(|c| c == channel)
    }
}

/// Which kind of credential was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// A TOP session.
    TopSession,
    /// A PandaPon access key.
    Pandapon,
    /// Damai supplier credentials.
    Damai,
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::TopSession => "TOP session",
            CredentialKind::Pandapon => "PandaPon access key",
            CredentialKind::Damai => "Damai supplier credentials",
        })
    }
}

/// Why credentials could not be resolved or stored. Names the account and
/// the channel, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// No such account.
    #[error("account {account}: unknown account (not in the accounts file)")]
    UnknownAccount {
        /// The account asked for.
        account: String,
    },
    /// The account does not serve this channel, or holds no credential of this kind.
    #[error("account {account}: no {kind} for channel {channel}")]
    Missing {
        /// The account.
        account: String,
        /// The channel asking.
        channel: String,
        /// What is missing.
        kind: CredentialKind,
    },
    /// The credential is past its expiry and cannot be refreshed.
    #[error(
        "account {account}: the {kind} expired at {expired_at_ms} (epoch ms); renew it and reload"
    )]
    Expired {
        /// The account.
        account: String,
        /// What expired.
        kind: CredentialKind,
        /// When, epoch ms.
        expired_at_ms: u64,
    },
    /// The operator revoked the account.
    #[error("account {account}: revoked")]
    Revoked {
        /// The account.
        account: String,
    },
    /// The provider could not read or write its store.
    #[error("account {account}: credentials store: {reason}")]
    Store {
        /// The account.
        account: String,
        /// What failed (a path and an OS error, never a secret).
        reason: String,
    },
}

impl CredentialsError {
    /// The account the error is about.
    pub fn account(&self) -> &str {
        match self {
            CredentialsError::UnknownAccount { account }
            | CredentialsError::Missing { account, .. }
            | CredentialsError::Expired { account, .. }
            | CredentialsError::Revoked { account }
            | CredentialsError::Store { account, .. } => account,
        }
    }
}

/// An `InvalidSession` error for `account`, message `credentials: account X:
/// why`: the engine parks such a saga as stuck, naming the account, never
/// failed.
pub fn credentials_error(account: &str, why: impl fmt::Display) -> ChannelError {
    ChannelError::permanent(
        PermanentReason::InvalidSession,
        format!("credentials: account {account}: {why}"),
    )
}

/// The channel error for a provider's refusal (its message already starts
/// `account X: `).
pub fn provider_error(e: &CredentialsError) -> ChannelError {
    ChannelError::permanent(PermanentReason::InvalidSession, format!("credentials: {e}"))
}

/// Re-word an upstream refusal of an account's credentials (an auth or
/// session failure) so it names the account: `credentials: account X:
/// {upstream} refused the account's {what}: …`, codes kept. Other errors
/// pass unchanged.
pub fn attribute(account: &str, upstream: &str, what: &str, e: ChannelError) -> ChannelError {
    match &e.class {
        ErrorClass::Permanent(PermanentReason::InvalidSession | PermanentReason::Auth) => {
            let mut out = credentials_error(
                account,
                format_args!("{upstream} refused the account's {what}: {}", e.message),
            );
            out.code = e.code;
            out.sub_code = e.sub_code;
            out
        }
        _ => e,
    }
}

/// Accounts whose credentials changed after a generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The provider's generation now.
    pub generation: u64,
    /// Accounts added, changed or removed after the asked generation.
    pub accounts: Vec<String>,
}

/// Resolves credentials per `(channel, account)` at call time.
#[async_trait]
pub trait Credentials: Send + Sync {
    /// The TOP session of `account` for `channel`.
    async fn top_session(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<TopSession, CredentialsError>;
    /// The PandaPon key of `account` for `channel`.
    async fn pandapon_key(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<PandaponKey, CredentialsError>;
    /// The Damai supplier credentials of `account` for `channel`.
    async fn damai_supplier(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<DamaiSupplier, CredentialsError>;
    /// Keep a refreshed TOP session of `account` (durably, for providers
    /// that have a store), so later calls and a restart use it.
    async fn store_top_session(
        &self,
        account: &str,
        session: TopSession,
    ) -> Result<(), CredentialsError>;
    /// The generation: it moves whenever any account's credentials change.
    fn generation(&self) -> u64;
    /// The accounts that changed after `generation`, and the generation now.
    fn changed_since(&self, generation: u64) -> Changes;
}

struct Entry {
    creds: AccountCredentials,
    /// Generation of the last change.
    changed_at: u64,
}

#[derive(Default)]
struct State {
    generation: u64,
    accounts: BTreeMap<String, Entry>,
    /// Removed accounts and the generation they were removed at.
    removed: BTreeMap<String, u64>,
}

/// In-memory credentials: set, replace, revoke and remove accounts at run
/// time; each change moves the generation.
#[derive(Default)]
pub struct StaticCredentials {
    state: Mutex<State>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("StaticCredentials")
            .field("generation", &st.generation)
            .field("accounts", &st.accounts.len())
            .finish()
    }
}

impl StaticCredentials {
    /// An empty provider at generation 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A provider holding `accounts`.
    pub fn with_accounts(accounts: impl IntoIterator<Item = AccountCredentials>) -> Self {
        let p = Self::new();
        for a in accounts {
            p.set(a);
        }
        p
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add or replace an account (a change only when it differs); the
    /// generation after.
    pub fn set(&self, creds: AccountCredentials) -> u64 {
        let mut st = self.lock();
        let same = st
            .accounts
            .get(&creds.account)
            .is_some_and(|e| e.creds == creds);
        if !same {
            st.generation += 1;
            let g = st.generation;
            st.removed.remove(&creds.account);
            st.accounts.insert(
                creds.account.clone(),
                Entry {
                    creds,
                    changed_at: g,
                },
            );
        }
        st.generation
    }

    /// Replace every account by `all` in one generation step: accounts that
    /// differ, appear or disappear are the changes. The generation after.
    pub fn replace_all(&self, all: impl IntoIterator<Item = AccountCredentials>) -> u64 {
        let mut st = self.lock();
        let next = st.generation + 1;
        let mut fresh: BTreeMap<String, Entry> = BTreeMap::new();
        let mut changed = false;
        for creds in all {
            let changed_at = match st.accounts.get(&creds.account) {
                Some(e) if e.creds == creds => e.changed_at,
                _ => {
                    changed = true;
                    next
                }
            };
            st.removed.remove(&creds.account);
            fresh.insert(creds.account.clone(), Entry { creds, changed_at });
        }
        let gone: Vec<String> = st
            .accounts
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for id in gone {
            changed = true;
            st.removed.insert(id, next);
        }
        st.accounts = fresh;
        if changed {
            st.generation = next;
        }
        st.generation
    }

    /// Mark an account revoked; the generation after.
    pub fn revoke(&self, account: &str) -> Result<u64, CredentialsError> {
        let mut creds = self.get(account)?;
        creds.revoked = true;
        Ok(self.set(creds))
    }

    /// Remove an account; the generation after.
    pub fn remove(&self, account: &str) -> u64 {
        let mut st = self.lock();
        if st.accounts.remove(account).is_some() {
            st.generation += 1;
            let g = st.generation;
            st.removed.insert(account.to_owned(), g);
        }
        st.generation
    }

    /// One account's credentials.
    pub fn get(&self, account: &str) -> Result<AccountCredentials, CredentialsError> {
        self.lock()
            .accounts
            .get(account)
            .map(|e| e.creds.clone())
            .ok_or_else(|| CredentialsError::UnknownAccount {
                account: account.to_owned(),
            })
    }

    /// Every account, by id.
    pub fn all(&self) -> Vec<AccountCredentials> {
        self.lock()
            .accounts
            .values()
            .map(|e| e.creds.clone())
            .collect()
    }

    fn usable(
        &self,
        channel: &str,
        account: &str,
        kind: CredentialKind,
    ) -> Result<AccountCredentials, CredentialsError> {
        let creds = self.get(account)?;
        if creds.revoked {
            return Err(CredentialsError::Revoked {
                account: account.to_owned(),
            });
        }
        if !creds.serves(channel) {
            return Err(CredentialsError::Missing {
                account: account.to_owned(),
                channel: channel.to_owned(),
                kind,
            });
        }
        Ok(creds)
    }
}

fn missing(channel: &str, account: &str, kind: CredentialKind) -> CredentialsError {
    CredentialsError::Missing {
        account: account.to_owned(),
        channel: channel.to_owned(),
        kind,
    }
}

#[async_trait]
impl Credentials for StaticCredentials {
    async fn top_session(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<TopSession, CredentialsError> {
        let kind = CredentialKind::TopSession;
        self.usable(channel, account, kind)?
            .top
            .ok_or_else(|| missing(channel, account, kind))
    }

    async fn pandapon_key(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<PandaponKey, CredentialsError> {
        let kind = CredentialKind::Pandapon;
        self.usable(channel, account, kind)?
            .pandapon
            .ok_or_else(|| missing(channel, account, kind))
    }

    async fn damai_supplier(
        &self,
        channel: &str,
        account: &str,
    ) -> Result<DamaiSupplier, CredentialsError> {
        let kind = CredentialKind::Damai;
        self.usable(channel, account, kind)?
            .damai
            .ok_or_else(|| missing(channel, account, kind))
    }

    async fn store_top_session(
        &self,
        account: &str,
        session: TopSession,
    ) -> Result<(), CredentialsError> {
        let mut creds = self.get(account)?;
        creds.top = Some(session);
        self.set(creds);
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    fn changed_since(&self, generation: u64) -> Changes {
        let st = self.lock();
        let mut accounts: Vec<String> = st
            .accounts
            .iter()
            .filter(|(_, e)| e.changed_at > generation)
            .map(|(k, _)| k.clone())
            .chain(
                st.removed
                    .iter()
                    .filter(|(_, g)| **g > generation)
                    .map(|(k, _)| k.clone()),
            )
            .collect();
        accounts.sort();
        accounts.dedup();
        Changes {
            generation: st.generation,
            accounts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: &str, session: &str) -> AccountCredentials {
        AccountCredentials {
            account: id.into(),
            channels: vec!["tmall-tbc".into()],
            top: Some(TopSession {
                session: Secret::new(session),
                expires_at_ms: Some(1_000),
                refresh_token: Some(Secret::new(format!("refresh-{session}"))),
                refresh_expires_at_ms: None,
            }),
            pandapon: None,
            damai: Some(DamaiSupplier {
                supplier_key: "k".into(),
                supplier_secret: Secret::new(format!("supplier-{session}")),
            }),
            revoked: false,
        }
    }

    #[tokio::test]
    async fn lookups_generations_and_changes() {
        let p = StaticCredentials::with_accounts([acct("A", "sa"), acct("B", "sb")]);
        assert_eq!(p.generation(), 2);
        let s = p.top_session("tmall-tbc", "A").await.unwrap();
        assert_eq!(s.session.expose(), "sa");
        assert!(s.expires_within(900, 100) && !s.expires_within(800, 100));
        assert!(s.is_expired(1_000) && !s.is_expired(999));
        assert!(s.can_refresh(0));
        assert!(matches!(
            p.top_session("damai", "A").await,
            Err(CredentialsError::Missing { .. })
        ));
        assert!(matches!(
            p.pandapon_key("tmall-tbc", "A").await,
            Err(CredentialsError::Missing {
                kind: CredentialKind::Pandapon,
                ..
            })
        ));
        assert!(matches!(
            p.top_session("tmall-tbc", "Z").await,
            Err(CredentialsError::UnknownAccount { .. })
        ));

        let g = p.generation();
        // Setting the same credentials is no change.
        assert_eq!(p.set(acct("A", "sa")), g);
        assert!(p.changed_since(g).accounts.is_empty());
        // A refreshed session is a change of A only.
        p.store_top_session("A", TopSession::new(Secret::new("sa2"), Some(5_000)))
            .await
            .unwrap();
        assert_eq!(p.changed_since(g).accounts, ["A"]);
        // replace_all: B changes, C appears, A disappears.
        let g2 = p.generation();
        p.replace_all([acct("B", "sb2"), acct("C", "sc")]);
        assert_eq!(p.changed_since(g2).accounts, ["A", "B", "C"]);
        let g3 = p.generation();
        p.replace_all([acct("B", "sb2"), acct("C", "sc")]);
        assert_eq!(p.generation(), g3, "no change, no new generation");
        p.revoke("C").unwrap();
        assert_eq!(
            p.top_session("tmall-tbc", "C").await,
            Err(CredentialsError::Revoked {
                account: "C".into()
            })
        );
        assert_eq!(p.changed_since(g3).accounts, ["C"]);
    }

    #[test]
    fn no_secret_in_debug_or_errors() {
        let a = acct("A", "topsecret");
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        let e = CredentialsError::Expired {
            account: "A".into(),
            kind: CredentialKind::TopSession,
            expired_at_ms: 5,
        };
        assert_eq!(
            e.to_string(),
            "account A: the TOP session expired at 5 (epoch ms); renew it and reload"
        );
        assert_eq!(e.account(), "A");
    }
}
