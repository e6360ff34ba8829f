//! Per-account TOP sessions: which `session` a call for an account carries,
//! refreshed through `taobao.top.auth.token.refresh` shortly before it expires.
//!
//! A call for an account asks the [`Credentials`] provider for the account's
//! session at call time. A session within the refresh margin of its expiry is
//! refreshed first when a refresh token is held, one refresh per account at a
//! time (single-flight: concurrent calls wait for it and use its result), and
//! the new session is handed to [`Credentials::store_top_session`]. A
//! session that is missing, expired (and not refreshable) or revoked, and a
//! TOP code 26/27 on an account's call, are `Permanent(InvalidSession)`
//! errors whose message starts `credentials: account X: `, so the engine
//! parks the saga as stuck (never failed) until the credentials are fixed.
//!
//! The refresh answer (`token_result`, a JSON string with `access_token`,
//! `refresh_token`, `expires_in`, `re_expires_in` in seconds) is ASSUMED
//! from public descriptions; see `docs/channels/top.md`.

use crate::client::TopClient;
use crate::envelope::text_of;
use rescind_core::{ChannelError, PermanentReason};
use rescind_wire::credentials::{Credentials, CredentialsError, TopSession};
use rescind_wire::sign::Secret;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The TOP method that exchanges a refresh token for a new session.
pub const REFRESH_METHOD: &str = "taobao.top.auth.token.refresh";

/// Default refresh margin: a session expiring within 10 minutes is refreshed
/// before the call, ms.
pub const REFRESH_MARGIN_MS: u64 = 600_000;

pub use rescind_wire::credentials::credentials_error;
use rescind_wire::credentials::provider_error as from_provider;

/// Re-word a TOP refusal of an account's session (codes 26/27, or any auth
/// failure) so it names the account; other errors pass unchanged.
pub fn attribute(account: &str, e: ChannelError) -> ChannelError {
    rescind_wire::credentials::attribute(account, "TOP", "session", e)
}

/// Account sessions of one channel: the provider, the channel name it is
/// asked under, the refresh margin, and the single-flight locks.
pub struct AccountSessions {
    credentials: Arc<dyn Credentials>,
    channel: String,
    refresh_margin_ms: u64,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for AccountSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSessions")
            .field("channel", &self.channel)
            .field("refresh_margin_ms", &self.refresh_margin_ms)
            .finish_non_exhaustive()
    }
}

impl AccountSessions {
    /// Sessions from `credentials` for the channel registered as `channel`.
    pub fn new(
        credentials: Arc<dyn Credentials>,
        channel: impl Into<String>,
        refresh_margin_ms: u64,
    ) -> Self {
        AccountSessions {
            credentials,
            channel: channel.into(),
            refresh_margin_ms,
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The provider.
    pub fn credentials(&self) -> &Arc<dyn Credentials> {
        &self.credentials
    }

    /// The channel name the provider is asked under.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    fn flight(&self, account: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(account.to_owned()).or_default().clone()
    }

    /// The session a call for `account` must carry now, refreshed first when
    /// it is within the margin of its expiry and a refresh token is held.
    pub async fn session(&self, client: &TopClient, account: &str) -> Result<Secret, ChannelError> {
        let s = self.current(account).await?;
        let now = client.clock().now_ms();
        if !s.expires_within(now, self.refresh_margin_ms) {
            return Ok(s.session);
        }
        if !s.can_refresh(now) {
            return self.unrefreshed(account, s, now);
        }
        // Single flight: whoever holds the lock refreshes; the others find
        // the fresh session when they get it.
        let flight = self.flight(account);
        let _guard = flight.lock().await;
        let s = self.current(account).await?;
        let now = client.clock().now_ms();
        if !s.expires_within(now, self.refresh_margin_ms) {
            return Ok(s.session);
        }
        if !s.can_refresh(now) {
            return self.unrefreshed(account, s, now);
        }
        match self.refresh(client, account, &s, now).await {
            Ok(fresh) => {
                let session = fresh.session.clone();
                if let Err(e) = self.credentials.store_top_session(account, fresh).await {
                    // The fresh session still works for this process.
                    tracing::warn!(account, error = %e, "refreshed TOP session not stored");
                }
                tracing::info!(account, channel = %self.channel, "TOP session refreshed");
                Ok(session)
            }
            Err(e) if !s.is_expired(now) => {
                tracing::warn!(account, error = %e, "TOP session refresh failed; using the current session until it expires");
                Ok(s.session)
            }
            Err(e) => Err(credentials_error(
                account,
                format_args!(
                    "the TOP session expired and its refresh failed: {}",
                    e.message
                ),
            )),
        }
    }

    async fn current(&self, account: &str) -> Result<TopSession, ChannelError> {
        self.credentials
            .top_session(&self.channel, account)
            .await
            .map_err(|e| from_provider(&e))
    }

    fn unrefreshed(&self, account: &str, s: TopSession, now: u64) -> Result<Secret, ChannelError> {
        match s.expires_at_ms {
            Some(at) if at <= now => Err(from_provider(&CredentialsError::Expired {
                account: account.to_owned(),
                kind: rescind_wire::credentials::CredentialKind::TopSession,
                expired_at_ms: at,
            })),
            _ => Ok(s.session),
        }
    }

    async fn refresh(
        &self,
        client: &TopClient,
        account: &str,
        s: &TopSession,
        now: u64,
    ) -> Result<TopSession, ChannelError> {
        let token = s
            .refresh_token
            .as_ref()
            .ok_or_else(|| credentials_error(account, "no refresh token"))?;
        let v = client
            .call_with_session(
                REFRESH_METHOD,
                &[("refresh_token", token.expose())],
                None,
                Some(account),
            )
            .await?;
        parse_token_result(&v, now).map_err(|why| {
            ChannelError::permanent(
                PermanentReason::MalformedResponse,
                format!("{REFRESH_METHOD}: {why}"),
            )
        })
    }
}

/// Read a refresh answer's `token_result` (a JSON string, or an object from
/// a lenient server) into a session, expiries counted from `now_ms`. The
/// error says which field is wrong, never a value.
pub fn parse_token_result(response: &Value, now_ms: u64) -> Result<TopSession, String> {
    let raw = response
        .get("token_result")
        .ok_or_else(|| "no token_result".to_owned())?;
    let parsed;
    let t = match raw {
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|e| format!("token_result is not JSON (at column {})", e.column()))?;
            &parsed
        }
        v => v,
    };
    let text = |k: &str| t.get(k).and_then(text_of).filter(|s| !s.is_empty());
    let secs = |k: &str| -> Option<u64> {
        match t.get(k)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    let access =
        text("access_token").ok_or_else(|| "token_result has no access_token".to_owned())?;
    let expires_in =
        secs("expires_in").ok_or_else(|| "token_result has no expires_in".to_owned())?;
    let at = |s: u64| now_ms.saturating_add(s.saturating_mul(1000));
    Ok(TopSession {
        session: Secret::new(access),
        expires_at_ms: Some(at(expires_in)),
        refresh_token: text("refresh_token").map(Secret::new),
        refresh_expires_at_ms: secs("re_expires_in").map(at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_results() {
        let v = serde_json::json!({"token_result": "{\"access_token\":\"a\",\"refresh_token\":\"r\",\"expires_in\":86400,\"re_expires_in\":\"100\"}"});
        let s = parse_token_result(&v, 1_000).unwrap();
        assert_eq!(s.session.expose(), "a");
        assert_eq!(s.expires_at_ms, Some(1_000 + 86_400_000));
        assert_eq!(s.refresh_expires_at_ms, Some(101_000));
        assert_eq!(s.refresh_token.as_ref().map(Secret::expose), Some("r"));
        for (bad, words) in [
            (serde_json::json!({}), "no token_result"),
            (serde_json::json!({"token_result": "{"}), "not JSON"),
            (
                serde_json::json!({"token_result": {"expires_in": 1}}),
                "no access_token",
            ),
            (
                serde_json::json!({"token_result": {"access_token": "secret-xyz"}}),
                "no expires_in",
            ),
        ] {
            let e = parse_token_result(&bad, 0).unwrap_err();
            assert!(e.contains(words), "{e}");
            assert!(!e.contains("secret-xyz"), "{e}");
        }
    }

    #[test]
    fn attribution_names_the_account() {
        let e = ChannelError::permanent(PermanentReason::InvalidSession, "TOP said: expired")
            .with_codes(Some("27".into()), Some("invalid-sessionkey".into()));
        let a = attribute("shopA", e);
        assert!(a.message.starts_with("credentials: account shopA: "), "{a}");
        assert_eq!(a.code.as_deref(), Some("27"));
        let other = ChannelError::in_doubt("x");
        assert_eq!(attribute("shopA", other.clone()), other);
    }
}
