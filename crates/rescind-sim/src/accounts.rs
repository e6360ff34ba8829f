//! Seller accounts and their TOP sessions.
//!
//! An account (its id is the seller nick) holds one or more TOP session keys,
//! each with an expiry, and optionally a refresh token. While **no** account
//! is registered the gateway checks sessions exactly as before (only
//! [`crate::SimConfig::session`], when set). Once one is, every TOP call that
//! carries a `session` is checked against the accounts:
//!
//! | the session | answer |
//! |---|---|
//! | unknown, replaced, or its account revoked | code 27 `Invalid Session`, sub_code `invalid-sessionkey` |
//! | past its expiry | code 27, sub_code `invalid-sessionkey`, sub_msg saying it expired |
//! | valid, but the order belongs to another account | code 11 `Insufficient ISV Permissions`, sub_code `isv.permission-denied` |
//!
//! `taobao.top.auth.token.refresh` (param `refresh_token`, signed with the
//! app secret, no session) issues a new session and a new refresh token.
//! The **old session stays valid until its own expiry** (the simulator's
//! choice; TOP's behaviour is ASSUMED, see `docs/simulator.md`); the old
//! refresh token stops working.
//!
//! Every accepted call, refusal and refresh is counted per account and per
//! session, for tests (`GET /_admin/accounts`, [`crate::Sim::accounts`]).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The TOP method that refreshes a session.
pub const REFRESH_METHOD: &str = "taobao.top.auth.token.refresh";

/// Lifetime of a session issued by a refresh when the account does not say, ms (1 day).
pub const REFRESHED_SESSION_TTL_MS: u64 = 86_400_000;

/// Lifetime of a refresh token issued by a refresh when the account does not say, ms (30 days).
pub const REFRESHED_TOKEN_TTL_MS: u64 = 30 * 86_400_000;

/// One account as registered by `POST /_admin/accounts` or
/// [`crate::Sim::add_account`]. Adding an account that exists replaces it:
/// its earlier sessions and refresh token stop working, its counters stay.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSeed {
    /// The account id (the seller nick, `taobao_user_nick`).
    pub id: String,
    /// The TOP session key the account's calls carry.
    pub session: String,
    /// When the session expires, epoch ms of the simulator's clock.
    pub expires_at_ms: u64,
    /// A refresh token for `taobao.top.auth.token.refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the refresh token expires, epoch ms; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at_ms: Option<u64>,
    /// Lifetime of sessions issued by a refresh, ms; default
    /// [`REFRESHED_SESSION_TTL_MS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refreshed_ttl_ms: Option<u64>,
}

impl std::fmt::Debug for AccountSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSeed")
            .field("id", &self.id)
            .field("session", &"***")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("refresh_expires_at_ms", &self.refresh_expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// Why an account row was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Empty account id.
    #[error("empty account id")]
    EmptyId,
    /// Empty session key.
    #[error("account {0}: empty session")]
    EmptySession(String),
    /// The session key is already another account's.
    #[error("account {account}: its session is already account {owner}'s")]
    SessionTaken {
        /// The account being added.
        account: String,
        /// The account holding the session.
        owner: String,
    },
    /// No such account.
    #[error("no account {0}")]
    Unknown(String),
}

/// One session of an account as the admin API shows it (never the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    /// Position among the account's sessions, from 0 (0 is the seeded one).
    pub index: usize,
    /// When it was issued (seeded or refreshed), epoch ms.
    pub issued_at_ms: u64,
    /// When it expires, epoch ms.
    pub expires_at_ms: u64,
    /// Whether it still works (not expired, not revoked, not replaced).
    pub valid: bool,
    /// Calls that carried it while it was valid.
    pub calls: u64,
}

/// One account as the admin API and [`crate::Sim::accounts`] show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    /// The account id.
    pub id: String,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Whether it holds a usable refresh token.
    pub refreshable: bool,
    /// The current (latest) session's expiry, epoch ms.
    pub expires_at_ms: u64,
    /// Calls that carried one of its sessions while it was valid (a call
    /// then refused for another account's order included: it is also in
    /// `refused`).
    pub calls: u64,
    /// Calls refused for its session (expired, revoked) or for acting on
    /// another account's order.
    pub refused: u64,
    /// Successful `taobao.top.auth.token.refresh` calls.
    pub refreshes: u64,
    /// Its sessions, oldest first.
    pub sessions: Vec<SessionView>,
}

struct Session {
    key: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    /// Replaced by a later `POST /_admin/accounts` or revoked.
    dead: bool,
    calls: u64,
}

struct Account {
    id: String,
    sessions: Vec<Session>,
    refresh_token: Option<String>,
    refresh_expires_at_ms: Option<u64>,
    refreshed_ttl_ms: u64,
    revoked: bool,
    calls: u64,
    refused: u64,
    refreshes: u64,
}

/// What a session check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// No accounts registered, or no session sent: nothing to check.
    Unchecked,
    /// A valid session of this account.
    Valid(String),
    /// Unknown, replaced or revoked.
    Invalid,
    /// Past its expiry (the account's id).
    Expired(String),
}

/// A successful refresh.
pub(crate) struct Refreshed {
    pub account: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in_s: u64,
    pub re_expires_in_s: u64,
}

/// The accounts of a simulator.
#[derive(Default)]
pub(crate) struct Accounts {
    by_id: BTreeMap<String, Account>,
    /// Session key → (account id, index in its sessions).
    by_session: HashMap<String, (String, usize)>,
    /// Order owners: (channel, order id) → account id.
    owners: HashMap<(String, String), String>,
    /// Issued tokens, for unique keys.
    seq: u64,
}

impl Accounts {
    pub fn upsert(&mut self, seed: AccountSeed, now_ms: u64) -> Result<(), AccountError> {
        if seed.id.trim().is_empty() {
            return Err(AccountError::EmptyId);
        }
        if seed.session.is_empty() {
            return Err(AccountError::EmptySession(seed.id));
        }
        if let Some((owner, _)) = self.by_session.get(&seed.session) {
            if *owner != seed.id {
                return Err(AccountError::SessionTaken {
                    account: seed.id,
                    owner: owner.clone(),
                });
            }
        }
        let (calls, refused, refreshes) = match self.by_id.remove(&seed.id) {
            Some(old) => {
                for s in &old.sessions {
                    self.by_session.remove(&s.key);
                }
                (old.calls, old.refused, old.refreshes)
            }
            None => (0, 0, 0),
        };
        self.by_session
            .insert(seed.session.clone(), (seed.id.clone(), 0));
        self.by_id.insert(
            seed.id.clone(),
            Account {
                id: seed.id,
                sessions: vec![Session {
                    key: seed.session,
                    issued_at_ms: now_ms,
                    expires_at_ms: seed.expires_at_ms,
                    dead: false,
                    calls: 0,
                }],
                refresh_token: seed.refresh_token,
                refresh_expires_at_ms: seed.refresh_expires_at_ms,
                refreshed_ttl_ms: seed.refreshed_ttl_ms.unwrap_or(REFRESHED_SESSION_TTL_MS),
                revoked: false,
                calls,
                refused,
                refreshes,
            },
        );
        Ok(())
    }

    /// Every session of `id` expires now.
    pub fn expire(&mut self, id: &str, now_ms: u64) -> Result<(), AccountError> {
        let a = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| AccountError::Unknown(id.to_owned()))?;
        for s in &mut a.sessions {
            s.expires_at_ms = s.expires_at_ms.min(now_ms);
        }
        Ok(())
    }

    /// Every session and the refresh token of `id` stop working.
    pub fn revoke(&mut self, id: &str) -> Result<(), AccountError> {
        let a = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| AccountError::Unknown(id.to_owned()))?;
        a.revoked = true;
        a.refresh_token = None;
        for s in &mut a.sessions {
            s.dead = true;
        }
        Ok(())
    }

    pub fn set_owner(&mut self, channel: &str, order_id: &str, account: Option<String>) {
        let key = (channel.to_owned(), order_id.to_owned());
        match account {
            Some(a) => {
                self.owners.insert(key, a);
            }
            None => {
                self.owners.remove(&key);
            }
        }
    }

    pub fn owner(&self, channel: &str, order_id: &str) -> Option<&str> {
        self.owners
            .get(&(channel.to_owned(), order_id.to_owned()))
            .map(String::as_str)
    }

    /// Check a call's `session` (counting the refusal, not yet the call).
    pub fn check(&mut self, session: Option<&str>, now_ms: u64) -> SessionCheck {
        let Some(key) = session else {
            return SessionCheck::Unchecked;
        };
        if self.by_id.is_empty() {
            return SessionCheck::Unchecked;
        }
        let Some((id, idx)) = self.by_session.get(key).cloned() else {
            return SessionCheck::Invalid;
        };
        let Some(a) = self.by_id.get_mut(&id) else {
            return SessionCheck::Invalid;
        };
        let Some(s) = a.sessions.get(idx) else {
            return SessionCheck::Invalid;
        };
        if a.revoked || s.dead {
            a.refused += 1;
            return SessionCheck::Invalid;
        }
        if s.expires_at_ms <= now_ms {
            a.refused += 1;
            return SessionCheck::Expired(id);
        }
        SessionCheck::Valid(id)
    }

    /// Count an accepted call of `session`.
    pub fn count_call(&mut self, session: &str) {
        if let Some((id, idx)) = self.by_session.get(session).cloned() {
            if let Some(a) = self.by_id.get_mut(&id) {
                a.calls += 1;
                if let Some(s) = a.sessions.get_mut(idx) {
                    s.calls += 1;
                }
            }
        }
    }

    /// Count a refusal for acting on another account's order.
    pub fn count_refusal(&mut self, account: &str) {
        if let Some(a) = self.by_id.get_mut(account) {
            a.refused += 1;
        }
    }

    /// Exchange a refresh token for a new session; `None` when the token is
    /// unknown, expired or revoked.
    pub fn refresh(&mut self, token: &str, now_ms: u64) -> Option<Refreshed> {
        self.seq += 1;
        let seq = self.seq;
        let a = self.by_id.values_mut().find(|a| {
            !a.revoked
                && a.refresh_token.as_deref() == Some(token)
                && !matches!(a.refresh_expires_at_ms, Some(t) if t <= now_ms)
        })?;
        let access_token = format!("sim-session-{}-{seq}", a.id);
        let refresh_token = format!("sim-refresh-{}-{seq}", a.id);
        let expires_at_ms = now_ms.saturating_add(a.refreshed_ttl_ms);
        a.sessions.push(Session {
            key: access_token.clone(),
            issued_at_ms: now_ms,
            expires_at_ms,
            dead: false,
            calls: 0,
        });
        a.refresh_token = Some(refresh_token.clone());
        a.refresh_expires_at_ms = Some(now_ms.saturating_add(REFRESHED_TOKEN_TTL_MS));
        a.refreshes += 1;
        let out = Refreshed {
            account: a.id.clone(),
            access_token: access_token.clone(),
            refresh_token,
            expires_in_s: a.refreshed_ttl_ms / 1000,
            re_expires_in_s: REFRESHED_TOKEN_TTL_MS / 1000,
        };
        let idx = a.sessions.len() - 1;
        self.by_session
            .insert(access_token, (out.account.clone(), idx));
        Some(out)
    }

    pub fn views(&self, now_ms: u64) -> Vec<AccountView> {
        self.by_id
            .values()
            .map(|a| AccountView {
                id: a.id.clone(),
                revoked: a.revoked,
                refreshable: !a.revoked
                    && a.refresh_token.is_some()
                    && !matches!(a.refresh_expires_at_ms, Some(t) if t <= now_ms),
                expires_at_ms: a.sessions.last().map(|s| s.expires_at_ms).unwrap_or(0),
                calls: a.calls,
                refused: a.refused,
                refreshes: a.refreshes,
                sessions: a
                    .sessions
                    .iter()
                    .enumerate()
                    .map(|(index, s)| SessionView {
                        index,
                        issued_at_ms: s.issued_at_ms,
                        expires_at_ms: s.expires_at_ms,
                        valid: !a.revoked && !s.dead && s.expires_at_ms > now_ms,
                        calls: s.calls,
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(id: &str, session: &str, exp: u64) -> AccountSeed {
        AccountSeed {
            id: id.into(),
            session: session.into(),
            expires_at_ms: exp,
            refresh_token: Some(format!("r-{id}")),
            refresh_expires_at_ms: None,
            refreshed_ttl_ms: None,
        }
    }

    #[test]
    fn sessions_expire_revoke_replace_and_refresh() {
        let mut a = Accounts::default();
        assert_eq!(a.check(Some("s1"), 0), SessionCheck::Unchecked);
        a.upsert(seed("A", "s1", 1_000), 0).unwrap();
        a.upsert(seed("B", "s2", 1_000), 0).unwrap();
        assert_eq!(
            a.upsert(seed("C", "s1", 1_000), 0),
            Err(AccountError::SessionTaken {
                account: "C".into(),
                owner: "A".into()
            })
        );
        assert_eq!(a.check(None, 0), SessionCheck::Unchecked);
        assert_eq!(a.check(Some("s1"), 10), SessionCheck::Valid("A".into()));
        assert_eq!(a.check(Some("nope"), 10), SessionCheck::Invalid);
        assert_eq!(
            a.check(Some("s1"), 1_000),
            SessionCheck::Expired("A".into())
        );
        // Refresh: a new session, the old one still valid until its expiry.
        let r = a.refresh("r-A", 500).unwrap();
        assert_eq!(r.account, "A");
        assert_eq!(
            a.check(Some(&r.access_token), 900),
            SessionCheck::Valid("A".into())
        );
        assert_eq!(a.check(Some("s1"), 900), SessionCheck::Valid("A".into()));
        assert!(
            a.refresh("r-A", 600).is_none(),
            "old refresh token is spent"
        );
        // Expire: every session of A.
        a.expire("A", 901).unwrap();
        assert_eq!(
            a.check(Some(&r.access_token), 902),
            SessionCheck::Expired("A".into())
        );
        // Replace: the old sessions are unknown.
        a.upsert(seed("A", "s3", 5_000), 903).unwrap();
        assert_eq!(a.check(Some("s1"), 904), SessionCheck::Invalid);
        assert_eq!(a.check(Some("s3"), 904), SessionCheck::Valid("A".into()));
        // Revoke.
        a.revoke("B").unwrap();
        assert_eq!(a.check(Some("s2"), 905), SessionCheck::Invalid);
        assert!(a.refresh("r-B", 905).is_none());
        assert_eq!(a.expire("Z", 0), Err(AccountError::Unknown("Z".into())));
        let v = a.views(906);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].refreshes, 1);
        assert!(v[1].revoked);
        assert!(v[0].refused >= 2);
        let dbg = format!("{:?}", seed("A", "very-secret", 0));
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }
}
