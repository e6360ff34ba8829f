//! API authentication: bearer tokens with a name and a scope.
//!
//! Tokens come from one environment variable (`[worker] api_tokens_env`), a
//! comma-separated list of `NAME:SCOPE:TOKEN` (scope `read` or `write`;
//! `write` includes `read`). Several tokens may be live at once, which is how
//! they are rotated: add the new one, move the callers, remove the old one.
//! Tokens are compared in constant time; a token never appears in a log, an
//! error or `Debug` output — only its name does, and the name is what the
//! journal records as the operator of an action.
//!
//! | scope | routes |
//! |---|---|
//! | none | `GET /healthz`, `GET /readyz`, the console's page and assets ([`crate::ui::PUBLIC_PATHS`]) |
//! | `read` | `GET /sagas`, `GET /sagas/{id}`, `GET /accounts`, `GET /stats`, `GET /metrics`, `GET /ui/api/overview` |
//! | `write` | `POST /sagas`, `POST /sagas/{id}/abort`, `…/resume`, `…/resolve`, `POST /accounts/reload` |

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// List, show, stats, metrics.
    Read,
    /// Start, abort, resume, resolve (and everything `read` may).
    Write,
}

/// Who acted: the name of the token that authenticated the request, or
/// `unauthenticated` when the worker runs without tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

struct Token {
    name: String,
    scope: Scope,
    secret: Vec<u8>,
}

/// The live tokens. `Debug` shows names and scopes, never the tokens.
#[derive(Default)]
pub struct Tokens {
    tokens: Vec<Token>,
    /// Refusals by reason: missing, unknown, scope.
    refused: [AtomicU64; 3],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, Scope)> = self
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.scope))
            .collect();
        f.debug_struct("Tokens").field("tokens", &names).finish()
    }
}

/// A token list that cannot be used; names the entry (by position and
/// name), never the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("api token entry {index} ({name}): {reason}; expected NAME:read|write:TOKEN")]
pub struct TokensError {
    /// 1-based position in the list.
    pub index: usize,
    /// The entry's name, when it had one.
    pub name: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Shortest token accepted: guessable tokens are refused.
pub const TOKEN_LEN_MIN: usize = 16;

impl Tokens {
    /// No tokens: every request is refused unless the worker was explicitly
    /// started with `allow_unauthenticated`.
    pub fn none() -> Self {
        Tokens::default()
    }

    /// Parse `NAME:SCOPE:TOKEN[,NAME:SCOPE:TOKEN...]`.
    pub fn parse(list: &str) -> Result<Self, TokensError> {
        let mut tokens: Vec<Token> = Vec::new();
        for (i, entry) in list.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let bad = |name: &str, reason| TokensError {
                index: i + 1,
                name: name.chars().filter(|c| !c.is_control()).take(40).collect(),
                reason,
            };
            let mut parts = entry.splitn(3, ':');
            let (name, scope, secret) = match (parts.next(), parts.next(), parts.next()) {
                (Some(n), Some(s), Some(t)) => (n.trim(), s.trim(), t.trim()),
                _ => return Err(bad("?", "not NAME:SCOPE:TOKEN")),
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    name,
                    "the name must be letters, digits, '-', '_' or '.'",
                ));
            }
            let scope = match scope {
                "read" => Scope::Read,
                "write" => Scope::Write,
                _ => return Err(bad(name, "the scope must be read or write")),
            };
            if secret.len() < TOKEN_LEN_MIN {
                return Err(bad(name, "the token is shorter than 16 characters"));
            }
            if tokens.iter().any(|t| t.name == name) {
                return Err(bad(name, "the name is used twice"));
            }
            tokens.push(Token {
                name: name.to_owned(),
                scope,
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(Tokens {
            tokens,
            refused: Default::default(),
        })
    }

    /// Are any tokens configured?
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Requests refused (401 or 403) since start.
    pub fn refused(&self) -> u64 {
        self.refused_by_reason().iter().map(|(_, n)| n).sum()
    }

    /// Requests refused since start, by reason (`missing`, `unknown`,
    /// `scope`): the `reason` label of `rescind_api_refused_total`.
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 3] {
        let g = |i: usize| self.refused[i].load(Ordering::Relaxed);
        [("missing", g(0)), ("unknown", g(1)), ("scope", g(2))]
    }

    /// The token's name and scope, comparing every configured token in
    /// constant time (no early exit on the first match).
    fn find(&self, presented: &[u8]) -> Option<(&str, Scope)> {
        let mut found = None;
        for t in &self.tokens {
            if bool::from(t.secret.as_slice().ct_eq(presented)) {
                found = Some((t.name.as_str(), t.scope));
            }
        }
        found
    }
}

/// How the API authenticates.
#[derive(Clone, Debug)]
pub struct ApiAuth {
    tokens: Arc<Tokens>,
    allow_unauthenticated: bool,
}

impl ApiAuth {
    /// Authenticate with these tokens.
    pub fn tokens(tokens: Tokens) -> Self {
        ApiAuth {
            tokens: Arc::new(tokens),
            allow_unauthenticated: false,
        }
    }

    /// Let every request through as `unauthenticated` (tests, a worker on
    /// loopback with no tokens; `allow_unauthenticated = true` elsewhere).
    pub fn open() -> Self {
        ApiAuth {
            tokens: Arc::new(Tokens::none()),
            allow_unauthenticated: true,
        }
    }

    /// Requests refused since start.
    pub fn refused(&self) -> u64 {
        self.tokens.refused()
    }

    /// Requests refused since start, by reason (see [`Tokens::refused_by_reason`]).
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 3] {
        self.tokens.refused_by_reason()
    }

    /// Who may make this request, or the response refusing it.
    pub fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Actor, Refusal> {
        let needed = match required_scope(method, path) {
            None => return Ok(Actor("anonymous".into())),
            Some(s) => s,
        };
        if self.allow_unauthenticated && self.tokens.is_empty() {
            return Ok(Actor("unauthenticated".into()));
        }
        let presented = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(presented) = presented else {
            return Err(self.refuse(Refusal::Missing));
        };
        match self.tokens.find(presented.as_bytes()) {
            None => Err(self.refuse(Refusal::Unknown)),
            Some((name, scope)) if scope < needed => Err(self.refuse(Refusal::Scope {
                name: name.to_owned(),
            })),
            Some((name, _)) => Ok(Actor(name.to_owned())),
        }
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        let i = match r {
            Refusal::Missing => 0,
            Refusal::Unknown => 1,
            Refusal::Scope { .. } => 2,
        };
        self.tokens.refused[i].fetch_add(1, Ordering::Relaxed);
        r
    }
}

/// Why a request was refused. Never carries the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// A token that matches none configured.
    #[error("unknown token")]
    Unknown,
    /// A read token on a write route.
    #[error("token {name} has the read scope; this route needs write")]
    Scope {
        /// The token's name.
        name: String,
    },
}

impl Refusal {
    /// 401 for a missing or unknown token, 403 for a token without the scope.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Missing | Refusal::Unknown => StatusCode::UNAUTHORIZED,
            Refusal::Scope { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// The scope a route needs; `None` for the open health routes and the web
/// console's page and assets (which hold no data).
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/healthz" || path == "/readyz" {
        return None;
    }
    let read = method == Method::GET || method == Method::HEAD;
    if read && crate::ui::PUBLIC_PATHS.contains(&path) {
        return None;
    }
    if method == Method::GET || method == Method::HEAD {
        Some(Scope::Read)
    } else {
        Some(Scope::Write)
    }
}

/// The axum middleware: refuses with 401/403 and a JSON error (logged
/// without the token), or passes the request on with its [`Actor`] as an
/// extension.
pub async fn middleware(State(auth): State<ApiAuth>, mut req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match auth.check(req.method(), req.uri().path(), authorization) {
        Ok(actor) => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(refusal) => {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path().escape_debug(),
                refusal = %refusal,
                "api request refused"
            );
            let body = serde_json::json!({ "error": refusal.to_string() });
            let mut resp = (refusal.status(), axum::Json(body)).into_response();
            if refusal.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "ops:write:0123456789abcdef-write";
    const R: &str = "grafana:read:0123456789abcdef-read";

    #[test]
    fn parses_names_scopes_and_refuses_bad_entries_without_echoing_tokens() {
        let t = Tokens::parse(&format!("{W}, {R}")).unwrap();
        assert_eq!(t.tokens.len(), 2);
        let dbg = format!("{t:?}");
        assert!(dbg.contains("ops") && !dbg.contains("abcdef"), "{dbg}");
        for (list, says) in [
            ("ops:admin:0123456789abcdef", "read or write"),
            ("ops:write:short", "shorter than 16"),
            ("ops:write", "not NAME:SCOPE:TOKEN"),
            ("o ps:write:0123456789abcdef", "the name must be"),
        ] {
            let e = Tokens::parse(list).unwrap_err().to_string();
            assert!(e.contains(says), "{list}: {e}");
            assert!(!e.contains("0123456789abcdef"), "{e}");
        }
        let dup = format!("{W},ops:read:fedcba9876543210x");
        assert!(Tokens::parse(&dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn routes_need_their_scope() {
        let auth = ApiAuth::tokens(Tokens::parse(&format!("{W},{R}")).unwrap());
        let bearer = |t: &str| format!("Bearer {t}");
        let write = bearer("0123456789abcdef-write");
        let read = bearer("0123456789abcdef-read");
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            auth.check(&get, "/healthz", None),
            Ok(Actor("anonymous".into()))
        );
        assert_eq!(auth.check(&get, "/sagas", None), Err(Refusal::Missing));
        assert_eq!(
            auth.check(&get, "/sagas", Some("Bearer nope-nope-nope-nope")),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            auth.check(&get, "/sagas", Some(&read)),
            Ok(Actor("grafana".into()))
        );
        assert_eq!(
            auth.check(&post, "/sagas/x/abort", Some(&read)),
            Err(Refusal::Scope {
                name: "grafana".into()
            })
        );
        assert_eq!(
            auth.check(&post, "/sagas", Some(&write)),
            Ok(Actor("ops".into()))
        );
        assert_eq!(
            auth.check(&get, "/metrics", Some(&write)),
            Ok(Actor("ops".into()))
        );
        assert_eq!(auth.refused(), 3);
        assert_eq!(
            auth.refused_by_reason(),
            [("missing", 1), ("unknown", 1), ("scope", 1)]
        );
        // No tokens and not explicitly open: everything but health is refused.
        let closed = ApiAuth::tokens(Tokens::none());
        assert_eq!(
            closed.check(&get, "/sagas", Some(&read)),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            ApiAuth::open().check(&post, "/sagas", None),
            Ok(Actor("unauthenticated".into()))
        );
    }
}
