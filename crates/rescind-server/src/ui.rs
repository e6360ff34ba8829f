//! The web console at `/ui`: a page of plain HTML, vanilla JavaScript and
//! CSS embedded in the binary, plus one JSON endpoint of its own.
//!
//! | route | scope | what |
//! |---|---|---|
//! | `GET /ui`, `GET /ui/` | none | the page ([`PUBLIC_PATHS`]) |
//! | `GET /ui/assets/app.js`, `GET /ui/assets/app.css` | none | its script and style |
//! | `GET /ui/api/overview` | `read` | counts by state and channel, recent failures by error code ([`Overview`]) |
//!
//! The page and its assets hold no data and are served without a token.
//! Everything else the page shows comes from the API with the token the
//! operator types once (kept in the tab's `sessionStorage`, sent as
//! `Authorization: Bearer …`); actions (`resume`, `abort`, `resolve`) go to
//! the API's own routes and need the `write` scope there.
//!
//! Every `/ui` response carries a strict `Content-Security-Policy` (scripts
//! and styles from the worker only, no inline script, no framing) and
//! `X-Content-Type-Options: nosniff`. The script inserts journal text (order
//! ids, upstream messages, reasons) only as text nodes, never as HTML.

use crate::inspect::SagaSummary;
use crate::worker::ApiState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rescind_core::{Entry, ErrorClass, Record, SagaSet, SagaState, StepOutcome};
use serde::Serialize;
use std::collections::BTreeMap;

/// The paths served without a token: the page and its static assets.
pub const PUBLIC_PATHS: [&str; 4] = ["/ui", "/ui/", "/ui/assets/app.js", "/ui/assets/app.css"];

/// The `Content-Security-Policy` of every `/ui` response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// How many failed or stuck sagas [`Overview::recent_failures`] lists.
pub const RECENT_FAILURES_MAX: usize = 20;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");

/// The console's routes, to merge into the API router (which
/// [`crate::worker::router`] does). The API's authentication middleware
/// lets [`PUBLIC_PATHS`] through without a token
/// ([`crate::auth::required_scope`]).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/assets/app.js", get(app_js))
        .route("/ui/assets/app.css", get(app_css))
        .route("/ui/api/overview", get(overview))
        .layer(axum::middleware::map_response(secure_headers))
}

async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// `GET /ui/api/overview`: what the console's first page shows.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Overview {
    /// Sagas in the journal that could be read.
    pub total: usize,
    /// Sagas by state (`running`, `stuck`, `completed`, `failed`, `aborted`).
    pub by_state: BTreeMap<String, usize>,
    /// Sagas by channel, then by state.
    pub by_channel: BTreeMap<String, BTreeMap<String, usize>>,
    /// Failed and stuck sagas by error code ([`failure_code`]), most first.
    pub failures_by_code: Vec<CodeCount>,
    /// The latest failed or stuck sagas, newest first
    /// (at most [`RECENT_FAILURES_MAX`]).
    pub recent_failures: Vec<Failure>,
    /// Sagas that could not be read or folded (named by `GET /sagas`).
    pub unreadable: usize,
    /// The engine's counters since this worker started (as `GET /stats`).
    pub engine: serde_json::Value,
}

/// How many failed or stuck sagas share one error code.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CodeCount {
    /// The code ([`failure_code`]).
    pub code: String,
    /// Sagas with it.
    pub count: usize,
    /// The latest of them (ms since the epoch).
    pub last_at_ms: u64,
}

/// One failed or stuck saga in [`Overview::recent_failures`].
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Failure {
    /// The saga's summary.
    #[serde(flatten)]
    pub summary: SagaSummary,
    /// Its error code ([`failure_code`]).
    pub code: String,
}

/// The error code of a failed or stuck saga: the upstream `code` (and
/// `/sub_code`) of its last failed step; else the `code …` a channel error
/// wrote into the reason; else `http_NNN` for an `HTTP NNN` status in it
/// (an in-doubt step whose lookups got 5xx); else the reason's leading word
/// before `:` (such as `credentials`); else `none`.
pub fn failure_code(state: &SagaState, entries: &[Entry]) -> String {
    let failed = entries.iter().rev().find_map(|e| match &e.record {
        Record::Outcome {
            outcome: StepOutcome::Failed { error },
            ..
        } => Some(error),
        _ => None,
    });
    if let Some(e) = failed {
        return match (&e.code, &e.sub_code) {
            (Some(c), Some(s)) => format!("{c}/{s}"),
            (Some(c), None) => c.clone(),
            (None, Some(s)) => s.clone(),
            (None, None) => class_name(&e.class).to_owned(),
        };
    }
    let reason = match (&state.outcome, &state.stuck) {
        (Some(rescind_core::SagaOutcome::Failed { reason }), _) => reason.as_str(),
        (None, Some(r)) => r.as_str(),
        _ => "",
    };
    code_in_text(reason).unwrap_or_else(|| "none".to_owned())
}

fn class_name(c: &ErrorClass) -> &'static str {
    match c {
        ErrorClass::Retryable { .. } => "retryable",
        ErrorClass::AlreadyDone => "already_done",
        ErrorClass::Conflict(_) => "conflict",
        ErrorClass::Permanent(_) => "permanent",
    }
}

/// `code X[; sub_code Y]` as a channel error's `Display` writes it, an
/// `HTTP NNN` status, or a leading `word:`.
fn code_in_text(reason: &str) -> Option<String> {
    let token = |after: &str| -> Option<String> {
        let i = reason.find(after)? + after.len();
        let t: String = reason[i..]
            .chars()
            .take_while(|c| !c.is_whitespace() && !";,:)".contains(*c))
            .take(64)
            .collect();
        (!t.is_empty()).then_some(t)
    };
    if let Some(code) = token("; code ") {
        return Some(match token("; sub_code ") {
            Some(sub) => format!("{code}/{sub}"),
            None => code,
        });
    }
    if let Some(status) =
        token("HTTP ").filter(|t| t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()))
    {
        return Some(format!("http_{status}"));
    }
    let (head, _) = reason.split_once(':')?;
    let word = head.trim();
    (!word.is_empty()
        && word.len() <= 32
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
    .then(|| word.to_owned())
}

/// Fold every saga in the journal into an [`Overview`]. Reads the whole
/// journal (like `GET /sagas`), 256 sagas per read.
pub async fn collect_overview(s: &ApiState) -> Result<Overview, rescind_core::JournalError> {
    let mut o = Overview {
        engine: serde_json::to_value(s.engine.stats()).unwrap_or_default(),
        ..Overview::default()
    };
    let mut failures: Vec<Failure> = Vec::new();
    for set in [SagaSet::Unfinished, SagaSet::Finished] {
        let ids = s.journal.list(set).await?;
        for chunk in ids.chunks(256) {
            for (id, entries) in chunk.iter().zip(s.journal.read_many(chunk).await) {
                let Ok(entries) = entries else {
                    o.unreadable += 1;
                    continue;
                };
                let Ok(state) = SagaState::fold(*id, &entries) else {
                    o.unreadable += 1;
                    continue;
                };
                let summary = SagaSummary::of(&state);
                o.total += 1;
                *o.by_state.entry(summary.state.clone()).or_default() += 1;
                *o.by_channel
                    .entry(summary.channel.clone())
                    .or_default()
                    .entry(summary.state.clone())
                    .or_default() += 1;
                if matches!(summary.state.as_str(), "failed" | "stuck") {
                    let code = failure_code(&state, &entries);
                    failures.push(Failure { summary, code });
                }
            }
        }
    }
    let mut by_code: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for f in &failures {
        let c = by_code.entry(f.code.as_str()).or_default();
        c.0 += 1;
        c.1 = c.1.max(f.summary.updated_at_ms);
    }
    o.failures_by_code = by_code
        .into_iter()
        .map(|(code, (count, last_at_ms))| CodeCount {
            code: code.to_owned(),
            count,
            last_at_ms,
        })
        .collect();
    o.failures_by_code
        .sort_by(|a, b| b.count.cmp(&a.count).then(b.last_at_ms.cmp(&a.last_at_ms)));
    failures.sort_by_key(|f| std::cmp::Reverse(f.summary.updated_at_ms));
    failures.truncate(RECENT_FAILURES_MAX);
    o.recent_failures = failures;
    Ok(o)
}

async fn overview(State(s): State<ApiState>) -> Response {
    match collect_overview(&s).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "error": format!("reading the journal: {e}") })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{required_scope, Scope};
    use axum::http::Method;

    #[test]
    fn the_page_is_public_its_data_is_not() {
        for p in PUBLIC_PATHS {
            assert_eq!(required_scope(&Method::GET, p), None, "{p}");
        }
        assert_eq!(
            required_scope(&Method::GET, "/ui/api/overview"),
            Some(Scope::Read)
        );
        assert_eq!(
            required_scope(&Method::GET, "/ui/assets/../api/overview"),
            Some(Scope::Read)
        );
        assert_eq!(required_scope(&Method::POST, "/ui"), Some(Scope::Write));
    }

    #[test]
    fn codes_come_from_the_reason_when_no_step_failed() {
        let code = |r: &str| code_in_text(r);
        assert_eq!(
            code("the cancel failed: permanent (Other); code isv.x; sub_code y.z: nope").as_deref(),
            Some("isv.x/y.z")
        );
        assert_eq!(
            code("lookup: retryable; code 7: busy").as_deref(),
            Some("7")
        );
        assert_eq!(
            code("credentials: the session expired").as_deref(),
            Some("credentials")
        );
        assert_eq!(code("step 0 is still in doubt after 3 lookups"), None);
        assert_eq!(
            code("in doubt (last error: retryable: HTTP 503 from the TOP gateway)").as_deref(),
            Some("http_503")
        );
        assert_eq!(code("<b>x</b> y: z"), None, "not a word: no code");
    }
}
