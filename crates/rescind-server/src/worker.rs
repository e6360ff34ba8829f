//! The worker's HTTP API: start and inspect sagas, the PandaPon callback
//! receiver, Prometheus metrics and a health check — embeddable as an axum
//! `Router`, and run by `rescind worker`.
//!
//! | route | what |
//! |---|---|
//! | `POST /sagas` | start a saga ([`StartRequest`]); with `key`, idempotently |
//! | `GET /sagas?order=&state=&channel=&kind=&account=&since=&set=&cursor=&limit=` | one page of saga summaries (`{"sagas", "unreadable", "next_cursor"}`), in saga id order |
//! | `GET /sagas/{id}` | one saga's summary and timeline; `?wait_ms=N` (≤ 60 000) long-polls until it finishes or is stuck |
//! | `POST /sagas/{id}/abort` | abort with compensation (`{"reason": ...}`) |
//! | `POST /sagas/{id}/resume` | resume a stuck saga |
//! | `POST /sagas/{id}/resolve` | an operator's answer for the in-doubt step ([`ResolveRequest`]) |
//! | `GET /stats` | engine counters and journal counts (JSON) |
//! | `GET /metrics` | the same for Prometheus |
//! | `GET /healthz` | `ok`, or 503 naming the journal or callback store that refuses writes |
//! | `GET /readyz` | `ready` once start-up recovery finished, 503 before |
//! | `POST /callbacks/pandapon` | PandaPon message callbacks (configurable path) |
//! | `GET /ui` | the web console ([`crate::ui`]) |

use crate::inspect::{self, SagaSummary};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rescind_core::{
    Engine, Error, InputError, Journal, OrderRef, RefundId, SagaId, SagaInput, SagaSet,
    StockLockRef,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A request to start one saga.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// `cancel_unpaid`, `cancel_paid`, `withdraw_refund`, or a registered custom kind.
    pub kind: String,
    /// The channel the order lives on (as named in the config).
    pub channel: String,
    /// The channel's order id (a string, even for numeric ids).
    pub order_id: String,
    /// The account (shop, seller) the saga acts for, where the channel
    /// serves many; its credentials are used for every call.
    #[serde(default)]
    pub account: Option<String>,
    /// The refund to withdraw (`withdraw_refund`).
    #[serde(default)]
    pub refund_id: Option<String>,
    /// A stock lock to release after the cancel.
    #[serde(default)]
    pub stock_lock: Option<StockLockSpec>,
    /// Reason sent upstream.
    #[serde(default)]
    pub reason: Option<String>,
    /// Idempotency key: the same key always names the same saga.
    #[serde(default)]
    pub key: Option<String>,
    /// Parameters for custom sagas.
    #[serde(default)]
    pub params: serde_json::Value,
}

/// A stock lock in a [`StartRequest`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StockLockSpec {
    /// The channel holding the lock (e.g. `damai`).
    pub channel: String,
    /// The lock id.
    pub lock_id: String,
}

impl StartRequest {
    /// The first of `channel` and `order_id` that is empty or blank, as the
    /// input error that names it.
    pub fn blank_field(&self) -> Option<InputError> {
        [("channel", &self.channel), ("order_id", &self.order_id)]
            .into_iter()
            .find(|(_, v)| v.trim().is_empty())
            .map(|(field, v)| {
                let why = if v.is_empty() { "is empty" } else { "is blank" };
                InputError::new(field, v, why)
            })
    }

    /// The saga input this request describes; an error says what is missing.
    pub fn to_input(&self) -> Result<SagaInput, String> {
        let order = OrderRef::new(self.channel.as_str(), self.order_id.as_str());
        if self.channel.trim().is_empty() || self.order_id.trim().is_empty() {
            return Err("channel and order_id must not be empty".into());
        }
        let mut input = match self.kind.as_str() {
            rescind_core::sagas::CANCEL_UNPAID => SagaInput::cancel_unpaid(order),
            rescind_core::sagas::CANCEL_PAID => SagaInput::cancel_paid(order),
            rescind_core::sagas::WITHDRAW_REFUND => {
                let refund = self
                    .refund_id
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .ok_or("withdraw_refund needs refund_id")?;
                SagaInput::withdraw_refund(order, RefundId::from(refund))
            }
            other => SagaInput::custom(other, order, self.params.clone()),
        };
        if let Some(l) = &self.stock_lock {
            input =
                input.with_stock_lock(StockLockRef::new(l.channel.as_str(), l.lock_id.as_str()));
        }
        if let Some(r) = &self.reason {
            input = input.with_reason(r.clone());
        }
        if let Some(a) = &self.account {
            input = input.with_account(a.as_str());
        }
        Ok(input)
    }
}

/// What the API shares between handlers.
#[derive(Clone)]
pub struct ApiState {
    /// The engine.
    pub engine: Engine,
    /// The journal it writes.
    pub journal: Arc<dyn Journal>,
    /// The callback receiver, whose store `/healthz` probes (if any).
    pub callbacks: Option<rescind_channel_pandapon::callback::CallbackReceiver>,
    /// Set once recovery and the replay of stored callbacks finished (`/readyz`).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// The API's authentication, whose refusals `/metrics` counts. The
    /// router does not apply it: layer [`crate::auth::middleware`] on top.
    pub auth: crate::auth::ApiAuth,
    /// The metrics `/metrics` encodes; the engine should have been built
    /// with it as its sink (`EngineBuilder::metrics`) for the labelled series.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
    /// The `[accounts]` credentials, for `GET /accounts` and
    /// `POST /accounts/reload` (`None`: no accounts configured).
    pub accounts: Option<Arc<crate::accounts::FileCredentials>>,
}

impl ApiState {
    /// State for an engine and its journal, ready at once, with no callbacks.
    pub fn new(engine: Engine, journal: Arc<dyn Journal>) -> Self {
        ApiState {
            engine,
            journal,
            callbacks: None,
            ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            auth: crate::auth::ApiAuth::open(),
            metrics: Arc::default(),
            accounts: None,
        }
    }
}

/// The JSON body of every API error: `error` in words, plus the fields that
/// let a program act on it (`field`/`value` for refused input,
/// `saga_id`/`fields` for an idempotency-key conflict).
#[derive(Serialize, Default)]
struct ApiError {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    saga_id: Option<SagaId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Vec<&'static str>>,
}

fn err(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = ApiError {
        error: msg.into(),
        ..ApiError::default()
    };
    (status, Json(body)).into_response()
}

/// The HTTP status of an engine error, chosen by its variant.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::UnknownSagaKind { .. } | Error::InvalidInput { .. } | Error::Rejected(_) => {
            StatusCode::BAD_REQUEST
        }
        Error::AlreadyFinished { .. }
        | Error::AlreadyRunning { .. }
        | Error::KeyConflict { .. }
        | Error::NotResolvable { .. } => StatusCode::CONFLICT,
        Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        Error::Journal(rescind_core::JournalError::UnknownSaga(_)) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn engine_err(e: Error) -> Response {
    let mut body = ApiError {
        error: e.to_string(),
        ..ApiError::default()
    };
    match &e {
        Error::Rejected(r) => {
            body.field = Some(r.field.clone());
            body.value = Some(r.value.clone());
        }
        Error::KeyConflict { saga, fields, .. } => {
            body.saga_id = Some(*saga);
            body.fields = Some(fields.clone());
        }
        _ => {}
    }
    (status_of(&e), Json(body)).into_response()
}

/// The API router (without the callback receiver; merge it in with
/// [`Router::merge`]).
pub fn router(state: ApiState) -> Router {
    state.metrics.attach(crate::metrics::Sources {
        engine: state.engine.clone(),
        journal: state.journal.clone(),
        callbacks: state.callbacks.clone(),
        auth: state.auth.clone(),
    });
    Router::new()
        .route("/sagas", post(start).get(list))
        .route("/sagas/{id}", get(show))
        .route("/sagas/{id}/abort", post(abort))
        .route("/sagas/{id}/resume", post(resume))
        .route("/sagas/{id}/resolve", post(resolve))
        .route("/accounts", get(accounts_list))
        .route("/accounts/reload", post(accounts_reload))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::ui::router())
        .with_state(state)
}

#[derive(Serialize)]
struct Started {
    saga_id: SagaId,
    created: bool,
}

/// The name journaled for an action: the API token's name, or
/// `unauthenticated` on a worker without tokens.
fn actor_name(actor: &Option<axum::Extension<crate::auth::Actor>>) -> String {
    actor
        .as_ref()
        .map(|axum::Extension(a)| a.0.clone())
        .unwrap_or_else(|| "unauthenticated".into())
}

async fn start(
    State(s): State<ApiState>,
    actor: Option<axum::Extension<crate::auth::Actor>>,
    body: Result<Json<StartRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("bad start request: {}", e.body_text()),
            )
        }
    };
    // A blank channel or order id is refused like any other input the
    // channels cannot take: 400 naming the field and the value.
    if let Some(e) = req.blank_field() {
        return engine_err(Error::Rejected(e));
    }
    let input = match req.to_input() {
        Ok(i) => i,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    let result = match &req.key {
        Some(k) => s.engine.start_by(Some(k), input, &actor_name(&actor)).await,
        None => s.engine.start_by(None, input, &actor_name(&actor)).await,
    };
    match result {
        Ok((saga_id, created)) => {
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (code, Json(Started { saga_id, created })).into_response()
        }
        Err(e) => engine_err(e),
    }
}

async fn list(State(s): State<ApiState>, Query(q): Query<inspect::ListParams>) -> Response {
    let query = match q.to_query() {
        Ok(query) => query,
        Err(e @ rescind_core::QueryError::BadParameter { parameter, .. }) => {
            let value = match parameter {
                "order" => q.order.clone(),
                "state" => q.state.clone(),
                "since" => q.since.clone(),
                "set" => q.set.clone(),
                "cursor" => q.cursor.clone(),
                "limit" => q.limit.clone(),
                _ => None,
            };
            let body = ApiError {
                error: e.to_string(),
                field: Some(parameter.to_owned()),
                value,
                ..ApiError::default()
            };
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    match inspect::list_page(s.journal.as_ref(), &query).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The longest `GET /sagas/{id}?wait_ms=` long-poll.
pub const WAIT_MAX_MS: u64 = 60_000;

#[derive(Deserialize)]
struct ShowQuery {
    wait_ms: Option<String>,
}

async fn show(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<ShowQuery>,
) -> Response {
    let Ok(id) = id.parse::<SagaId>() else {
        return err(StatusCode::BAD_REQUEST, format!("{id:?} is not a saga id"));
    };
    // Long-poll: answer once the saga's task here ends (finished, stuck or
    // stopped) or at the timeout, woken by the engine, not by polling.
    if let Some(w) = q.wait_ms.as_deref() {
        let wait_ms = match w.parse::<u64>() {
            Ok(n) if n <= WAIT_MAX_MS => n,
            _ => {
                let body = ApiError {
                    error: format!(
                        "wait_ms must be a whole number of milliseconds from 0 to {WAIT_MAX_MS}"
                    ),
                    field: Some("wait_ms".into()),
                    value: Some(w.escape_debug().to_string()),
                    ..ApiError::default()
                };
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
        };
        if wait_ms > 0 && s.engine.is_running(id) {
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(wait_ms), s.engine.wait(id))
                    .await;
        }
    }
    match inspect::load(s.journal.as_ref(), id).await {
        Ok((state, entries)) => Json(serde_json::json!({
            "summary": SagaSummary::of(&state),
            "running": s.engine.is_running(id),
            "timeline": inspect::timeline(&entries),
        }))
        .into_response(),
        Err(e) => engine_err(e),
    }
}

#[derive(Deserialize, Default)]
struct AbortBody {
    reason: Option<String>,
}

async fn abort(
    State(s): State<ApiState>,
    actor: Option<axum::Extension<crate::auth::Actor>>,
    Path(id): Path<String>,
    body: Option<Json<AbortBody>>,
) -> Response {
    let Ok(id) = id.parse::<SagaId>() else {
        return err(StatusCode::BAD_REQUEST, format!("{id:?} is not a saga id"));
    };
    let reason = body
        .and_then(|Json(b)| b.reason)
        .unwrap_or_else(|| "aborted by operator".into());
    match s.engine.abort_by(id, reason, &actor_name(&actor)).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "saga_id": id, "abort": "requested" })),
        )
            .into_response(),
        Err(e) => engine_err(e),
    }
}

fn saga_id(id: &str) -> Result<SagaId, Box<Response>> {
    id.parse::<SagaId>().map_err(|_| {
        Box::new(err(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a saga id", id.escape_debug().to_string()),
        ))
    })
}

async fn resume(
    State(s): State<ApiState>,
    actor: Option<axum::Extension<crate::auth::Actor>>,
    Path(id): Path<String>,
) -> Response {
    let id = match saga_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    match s.engine.resume_by(id, &actor_name(&actor)).await {
        Ok(in_doubt) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "saga_id": id, "resumed": true, "in_doubt": in_doubt })),
        )
            .into_response(),
        Err(e) => engine_err(e),
    }
}

/// `GET /accounts`: every account (no secrets) with the sagas stuck on it.
async fn accounts_list(State(s): State<ApiState>) -> Response {
    let Some(creds) = &s.accounts else {
        return err(StatusCode::NOT_FOUND, "no [accounts] configured");
    };
    match crate::accounts_api::list(creds, s.journal.as_ref()).await {
        Ok(rows) => Json(serde_json::json!({ "accounts": rows })).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `POST /accounts/reload`: re-read the accounts and secrets files, then
/// resume the sagas stuck on an account whose credentials changed.
async fn accounts_reload(
    State(s): State<ApiState>,
    actor: Option<axum::Extension<crate::auth::Actor>>,
) -> Response {
    let Some(creds) = &s.accounts else {
        return err(StatusCode::NOT_FOUND, "no [accounts] configured");
    };
    match crate::accounts_api::reload(creds, &s.engine, &s.journal, &actor_name(&actor)).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => err(StatusCode::BAD_REQUEST, e),
    }
}

/// `POST /sagas/{id}/resolve`: an operator's resolution of the in-doubt step.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// The in-doubt step.
    pub step: u32,
    /// Whether the step took effect upstream (verified by hand).
    pub applied: bool,
    /// What was verified; journaled.
    pub reason: String,
    /// Who resolves it; journaled.
    #[serde(default)]
    pub operator: Option<String>,
    /// For an applied paid cancel: the refund it opened.
    #[serde(default)]
    pub refund_id: Option<String>,
    /// For an applied custom step: its result.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

impl ResolveRequest {
    /// The engine's form of this request.
    pub fn to_resolution(&self) -> Result<rescind_core::Resolution, String> {
        if self.reason.trim().is_empty() {
            return Err("reason must say what was verified".into());
        }
        let applied = self.applied.then(|| rescind_core::OperatorApplied {
            refund_id: self.refund_id.as_deref().map(RefundId::from),
            value: self.value.clone(),
        });
        Ok(rescind_core::Resolution {
            step: self.step,
            applied,
            operator: self
                .operator
                .clone()
                .filter(|o| !o.trim().is_empty())
                .unwrap_or_else(|| "api".into()),
            reason: self.reason.clone(),
        })
    }
}

async fn resolve(
    State(s): State<ApiState>,
    actor: Option<axum::Extension<crate::auth::Actor>>,
    Path(id): Path<String>,
    body: Result<Json<ResolveRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let id = match saga_id(&id) {
        Ok(id) => id,
        Err(r) => return *r,
    };
    let req = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("bad resolve request: {}", e.body_text()),
            )
        }
    };
    let mut resolution = match req.to_resolution() {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, e),
    };
    // The token's name is who acted; a name in the body is kept beside it.
    let by = actor_name(&actor);
    if by != "unauthenticated" {
        resolution.operator = match &req.operator {
            Some(o) if !o.trim().is_empty() && o != &by => format!("{by} ({o})"),
            _ => by,
        };
    }
    match s.engine.resolve(id, resolution).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(
                serde_json::json!({ "saga_id": id, "resolved": req.step, "applied": req.applied }),
            ),
        )
            .into_response(),
        Err(e) => engine_err(e),
    }
}

/// `/healthz`: `ok`, or 503 with the reason when the journal refuses
/// writes or the callback store cannot be written.
async fn healthz(State(s): State<ApiState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = s.journal.probe().await {
        problems.push(format!("journal: {e}"));
    }
    if let Some(cb) = &s.callbacks {
        if let Err(e) = cb.probe() {
            problems.push(format!("callback store: {e}"));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ok").into_response()
    } else {
        err(StatusCode::SERVICE_UNAVAILABLE, problems.join("; "))
    }
}

/// `/readyz`: `ready` once recovery and the callback replay finished, 503 before.
async fn readyz(State(s): State<ApiState>) -> Response {
    if s.ready.load(std::sync::atomic::Ordering::Acquire) {
        (StatusCode::OK, "ready").into_response()
    } else {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "recovering: unfinished sagas and stored callbacks are being resumed",
        )
    }
}

/// Engine counters and journal counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stats {
    /// Engine counters since the worker started.
    pub engine: serde_json::Value,
    /// Unfinished sagas in the journal.
    pub unfinished: usize,
    /// Finished sagas in the journal.
    pub finished: usize,
}

async fn collect(s: &ApiState) -> Result<Stats, String> {
    let unfinished = s
        .journal
        .list(SagaSet::Unfinished)
        .await
        .map_err(|e| e.to_string())?
        .len();
    let finished = s
        .journal
        .list(SagaSet::Finished)
        .await
        .map_err(|e| e.to_string())?
        .len();
    Ok(Stats {
        engine: serde_json::to_value(s.engine.stats()).unwrap_or_default(),
        unfinished,
        finished,
    })
}

async fn stats(State(s): State<ApiState>) -> Response {
    match collect(&s).await {
        Ok(st) => Json(st).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `/metrics`: every series from counters kept as things happen; a scrape
/// costs O(number of series), never a read of the journal.
async fn metrics(State(s): State<ApiState>) -> Response {
    match s.metrics.encode() {
        Ok(out) => (
            [(
                axum::http::header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            out,
        )
            .into_response(),
        Err(e) => err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        ),
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, WorkerError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WorkerError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

fn local_addr(
    l: &tokio::net::TcpListener,
    what: &str,
) -> Result<std::net::SocketAddr, WorkerError> {
    l.local_addr().map_err(|source| WorkerError::Listen {
        addr: what.to_owned(),
        source,
    })
}

/// The API's authentication: the tokens in `api_tokens_env`; with none, an
/// open API only on a loopback address or with `allow_unauthenticated`.
fn api_auth(
    w: &crate::config::WorkerConfig,
    addr: &str,
) -> Result<crate::auth::ApiAuth, WorkerError> {
    let list = w
        .api_tokens_env
        .as_deref()
        .and_then(|var| std::env::var(var).ok())
        .unwrap_or_default();
    let tokens = crate::auth::Tokens::parse(&list).map_err(WorkerError::Tokens)?;
    if !tokens.is_empty() {
        return Ok(crate::auth::ApiAuth::tokens(tokens));
    }
    let loopback = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(addr.starts_with("localhost:"));
    if loopback {
        tracing::warn!(%addr, "the API has no tokens (worker.api_tokens_env): anyone on this host can drive it");
        return Ok(crate::auth::ApiAuth::open());
    }
    if w.allow_unauthenticated {
        tracing::warn!(%addr, "the API is served WITHOUT authentication on a non-loopback address (allow_unauthenticated = true)");
        return Ok(crate::auth::ApiAuth::open());
    }
    Err(WorkerError::Unauthenticated {
        addr: addr.to_owned(),
    })
}

/// Resume every unfinished saga, then hand stored callbacks to their sagas.
async fn recover_and_replay(
    engine: &Engine,
    callbacks: &rescind_channel_pandapon::callback::CallbackReceiver,
) -> Result<rescind_core::RecoveryReport, WorkerError> {
    let recovered = engine.recover().await.map_err(WorkerError::Recovery)?;
    for (id, e) in &recovered.failed {
        tracing::error!(saga = %id, error = %e, "saga could not be resumed; it stays in the journal for an operator");
    }
    // Messages journaled before a crash but not yet processed reach their sagas now.
    callbacks.replay().await.map_err(WorkerError::Replay)?;
    Ok(recovered)
}

/// A worker running in this process: engine, journal, callback receiver and
/// HTTP API, as `rescind worker` runs them.
pub struct RunningWorker {
    /// The address the HTTP API listens on.
    pub addr: std::net::SocketAddr,
    /// The address the PandaPon callback route listens on (`addr` unless
    /// `callback_listen` is set).
    pub callback_addr: std::net::SocketAddr,
    /// The engine.
    pub engine: Engine,
    /// The journal.
    pub journal: crate::wiring::OpenJournal,
    /// The callback receiver.
    pub callbacks: rescind_channel_pandapon::callback::CallbackReceiver,
    /// What recovery found at start.
    pub recovered: rescind_core::RecoveryReport,
    /// The API listener's connection counters.
    pub api_connections: crate::serve::Served,
    /// The callback listener's connection counters (the API's when the
    /// callback route shares its listener).
    pub callback_connections: crate::serve::Served,
    /// The TOP message service consumers, by channel (counters, liveness).
    pub tmc: Vec<(String, rescind_channel_top::TmcProbe)>,
    /// The TOP app keys' limiters of this worker (their share is `1 / live
    /// workers`, refreshed every `recover_interval_ms`).
    pub flow: Arc<rescind_wire::flow::AppKeyLimiters>,
    /// The outcome webhooks' counters (`None`: no `[webhooks]`).
    pub webhooks: Option<Arc<crate::webhooks::WebhookStats>>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    reclaimer: tokio::task::JoinHandle<()>,
    tmc_handles: Vec<rescind_channel_top::TmcHandle>,
    grace: std::time::Duration,
}

impl std::fmt::Debug for RunningWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWorker")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a worker could not start; each variant names what could not be had.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The journal did not open (locked, corrupt, unreachable database).
    #[error("cannot open the journal: {0}")]
    Journal(#[source] rescind_core::JournalError),
    /// A channel's configuration could not be turned into a client.
    #[error(transparent)]
    Channels(#[from] crate::config::ConfigError),
    /// The callback store did not open.
    #[error("cannot open the callback store: {0}")]
    CallbackStore(#[source] rescind_channel_pandapon::Error),
    /// Recovery could not run (the journal failed while listing).
    #[error("recovery failed: {0}")]
    Recovery(#[source] Error),
    /// Stored callbacks could not be replayed.
    #[error("callback replay failed: {0}")]
    Replay(#[source] rescind_channel_pandapon::Error),
    /// The API token list in the environment is unusable.
    #[error("worker.api_tokens_env: {0}")]
    Tokens(#[source] crate::auth::TokensError),
    /// A non-loopback address with no API tokens, without the explicit opt-out.
    #[error("refusing to serve the API on {addr} without authentication: set worker.api_tokens_env (tokens NAME:read|write:TOKEN in that variable), listen on 127.0.0.1, or set worker.allow_unauthenticated = true")]
    Unauthenticated {
        /// The address.
        addr: String,
    },
    /// The webhook outbox did not open.
    #[error(transparent)]
    Webhooks(crate::webhooks::WebhookError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Start a worker from a configuration: open the journal, build the
/// channels, bind the API's address and serve (`/readyz` answers 503 until
/// the next two are done), recover every unfinished saga, replay stored
/// callbacks, then report ready. A journal or a port that cannot be had is
/// an error that says which.
pub async fn start_worker(
    config: &crate::config::Config,
    listen: Option<&str>,
) -> Result<RunningWorker, WorkerError> {
    let journal = crate::wiring::open_journal(&config.journal)
        .await
        .map_err(WorkerError::Journal)?;
    let flow = Arc::new(rescind_wire::flow::AppKeyLimiters::new(Arc::new(
        rescind_core::TokioClock::system(),
    )));
    // `[accounts]`: per-account credentials resolved by the TOP channels at call time.
    let credentials = crate::wiring::load_credentials(config)?;
    let channels = crate::wiring::build_channels_with(
        config,
        &flow,
        credentials
            .clone()
            .map(|c| c as Arc<dyn rescind_wire::credentials::Credentials>),
    )?;
    // Each worker takes 1/live of every app key's rate, from the start.
    refresh_flow_share(&journal, &flow).await;
    let metrics = Arc::new(crate::metrics::WorkerMetrics::default());
    let mut webhooks = match &config.webhooks {
        Some(w) => Some(crate::webhooks::Webhooks::open(w.clone()).map_err(WorkerError::Webhooks)?),
        None => None,
    };
    let mut builder = Engine::builder(journal.journal())
        .channels(channels)
        .limits(config.engine.clone())
        .metrics(metrics.clone());
    if let Some(w) = &webhooks {
        builder = builder.observer(w.observer());
        metrics.watch_webhooks(w.stats());
    }
    let engine = builder.build();
    // On a shared journal, news for a saga another worker runs is left for it.
    let tmc_sink: Arc<dyn rescind_channel_top::TmcSink> = if journal.is_shared() {
        Arc::new(crate::wiring::SharedJournalTmcSink {
            engine: engine.clone(),
            journal: journal.journal(),
        })
    } else {
        Arc::new(engine.clone())
    };
    let consumers = crate::wiring::build_tmc_consumers(config, tmc_sink)?;
    // A torn last line or a corrupt line is logged (warn) by open, never fatal.
    let store = rescind_channel_pandapon::callback::FileCallbackStore::open_with(
        &config.worker.callback_store,
        rescind_channel_pandapon::callback::FileStoreOptions {
            max_bytes: config
                .worker
                .callback_store_max_mb
                .saturating_mul(1024 * 1024),
        },
    )
    .map_err(WorkerError::CallbackStore)?;
    let callbacks = rescind_channel_pandapon::callback::CallbackReceiver::new(
        Arc::new(store),
        Arc::new(engine.clone()),
    )
    .with_path(config.worker.callback_path.clone())
    .with_channels(crate::wiring::callback_channels(config));
    let addr = listen.unwrap_or(&config.worker.listen);
    let auth = api_auth(&config.worker, addr)?;
    let callbacks = callbacks.with_auth(crate::wiring::callback_auth(config));
    let listener = bind(addr).await?;
    let addr = local_addr(&listener, addr)?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let api = router(ApiState {
        engine: engine.clone(),
        journal: journal.journal(),
        callbacks: Some(callbacks.clone()),
        ready: ready.clone(),
        auth: auth.clone(),
        metrics: metrics.clone(),
        accounts: credentials.clone(),
    })
    .layer(axum::middleware::from_fn_with_state(
        auth,
        crate::auth::middleware,
    ));
    // The callback route has its own authentication (signed pushes); it is
    // served on `callback_listen` when set (public), else beside the API.
    let callback_listener = match config.worker.callback_listen.as_deref() {
        Some(cb) if cb != addr.to_string() => Some(bind(cb).await?),
        _ => None,
    };
    let callback_addr = match &callback_listener {
        Some(l) => local_addr(l, "callback_listen")?,
        None => addr,
    };
    let app = match callback_listener {
        Some(_) => api,
        None => api.merge(callbacks.router()),
    };
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let mut stopped2 = stopped.clone();
    let mut limits = config.worker.serve_limits();
    limits.max_connections = crate::serve::fit_max_connections(limits.max_connections);
    let served_api = crate::serve::Served::default();
    let served_callbacks = crate::serve::Served::default();
    metrics.watch_listener("api", served_api.clone());
    if callback_listener.is_some() {
        metrics.watch_listener("callbacks", served_callbacks.clone());
    }
    if let Some(l) = callback_listener {
        let cb_app = callbacks.router();
        let mut cb_stopped = stop.subscribe();
        let served = served_callbacks.clone();
        tokio::spawn(async move {
            crate::serve::serve(l, cb_app, limits, served, async move {
                let _ = cb_stopped.wait_for(|s| *s).await;
            })
            .await;
        });
    }
    let served = served_api.clone();
    let server = tokio::spawn(async move {
        crate::serve::serve(listener, app, limits, served, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await;
    });
    // Outcome webhooks: reconcile the outbox with the journal, then deliver.
    if let Some(w) = webhooks.as_mut() {
        w.spawn(journal.journal(), stop.subscribe());
    }
    let recovered = match recover_and_replay(&engine, &callbacks).await {
        Ok(r) => r,
        Err(e) => {
            let _ = stop.send(true);
            engine.kill();
            let _ = server.await;
            return Err(e);
        }
    };
    // Pushed news after recovery: a message for a saga not running here yet
    // would reach no one (it is confirmed; the saga's fallback poll finds it).
    let tmc_handles: Vec<rescind_channel_top::TmcHandle> =
        consumers.into_iter().map(|c| c.spawn()).collect();
    let tmc: Vec<(String, rescind_channel_top::TmcProbe)> = tmc_handles
        .iter()
        .map(|h| (h.channel().to_string(), h.probe()))
        .collect();
    for (channel, probe) in &tmc {
        metrics.watch_tmc(channel, probe.clone());
    }
    if let Some(creds) = &credentials {
        crate::accounts_api::reload_on_sighup(creds.clone(), engine.clone(), journal.journal());
    }
    ready.store(true, std::sync::atomic::Ordering::Release);
    // Claim and resume sagas whose worker died (shared journal); stuck ones
    // wait for their operator (resume, resolve) or the next start.
    let e2 = engine.clone();
    let every = std::time::Duration::from_millis(config.worker.recover_interval_ms.max(100));
    let reclaimer = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped2.wait_for(|s| *s) => return,
            }
            if let Err(e) = e2.recover_orphans().await {
                tracing::warn!(error = %e, "periodic recovery failed");
            }
        }
    });
    // Flow control across workers: the share follows the live workers.
    {
        let (journal, flow) = (journal.clone(), flow.clone());
        let mut stopped5 = stop.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped5.wait_for(|s| *s) => return,
                }
                refresh_flow_share(&journal, &flow).await;
            }
        });
    }
    // Retention: finished sagas past the journal's age/count limits are compacted.
    if let (crate::wiring::OpenJournal::Sled(sled), true) =
        (&journal, config.worker.compact_interval_ms > 0)
    {
        let (sled, e3) = (sled.clone(), engine.clone());
        let mut stopped3 = stop.subscribe();
        let every = std::time::Duration::from_millis(config.worker.compact_interval_ms.max(1_000));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped3.wait_for(|s| *s) => return,
                }
                match sled.compact(e3.clock().now_ms()).await {
                    Ok(r) if r.sagas_removed > 0 => {
                        tracing::info!(
                            sagas = r.sagas_removed,
                            records = r.records_removed,
                            "compacted finished sagas"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "compaction failed"),
                }
            }
        });
    }
    // Retention of the callback store: old messages no unfinished saga needs.
    if config.worker.compact_interval_ms > 0 {
        let (rx, e4) = (callbacks.clone(), engine.clone());
        let retention_ms = config.worker.callback_retention_ms;
        let mut stopped4 = stop.subscribe();
        let every = std::time::Duration::from_millis(config.worker.compact_interval_ms.max(1_000));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped4.wait_for(|s| *s) => return,
                }
                let live = match live_orders(e4.journal()).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "callback compaction skipped: unfinished sagas unreadable");
                        continue;
                    }
                };
                let now = e4.clock().now_ms();
                match rx.compact(now, retention_ms, &|o| live.contains(o)).await {
                    Ok(r) if r.dropped + r.unreadable_dropped > 0 => tracing::info!(
                        dropped = r.dropped,
                        unreadable = r.unreadable_dropped,
                        kept = r.kept,
                        bytes = r.bytes_after,
                        "compacted the callback store"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "callback compaction failed"),
                }
            }
        });
    }
    Ok(RunningWorker {
        addr,
        callback_addr,
        engine,
        journal,
        callbacks,
        recovered,
        api_connections: served_api.clone(),
        callback_connections: if callback_addr == addr {
            served_api
        } else {
            served_callbacks
        },
        tmc,
        flow,
        webhooks: webhooks.as_ref().map(|w| w.stats()),
        stop,
        server,
        reclaimer,
        tmc_handles,
        grace: std::time::Duration::from_millis(config.worker.shutdown_grace_ms),
    })
}

/// Set every app key's share to `1 / live workers` (a registry that cannot
/// be read keeps the share it had, and says so), and share app-key bans
/// with the other workers ([`crate::wiring::OpenJournal::share_bans`]).
async fn refresh_flow_share(
    journal: &crate::wiring::OpenJournal,
    flow: &rescind_wire::flow::AppKeyLimiters,
) {
    match journal.live_workers().await {
        Ok(live) => flow.set_live_workers(live),
        Err(e) => {
            tracing::warn!(error = %e, "cannot count live workers; the flow share stays as it was")
        }
    }
    match journal.share_bans(flow).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            bans = n,
            "app-key bans met by other workers: paused here too"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot share app-key bans with the other workers"),
    }
}

/// The orders unfinished sagas run on: stored callbacks about them are kept.
async fn live_orders(
    journal: &Arc<dyn Journal>,
) -> Result<std::collections::HashSet<OrderRef>, String> {
    let ids = journal
        .list(SagaSet::Unfinished)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::collections::HashSet::new();
    for chunk in ids.chunks(256) {
        for (id, entries) in chunk.iter().zip(journal.read_many(chunk).await) {
            let entries = entries.map_err(|e| format!("saga {id}: {e}"))?;
            let state = rescind_core::SagaState::fold(*id, &entries)
                .map_err(|e| format!("saga {id}: {e}"))?;
            out.insert(state.input.order);
        }
    }
    Ok(out)
}

impl RunningWorker {
    /// Graceful stop: stop serving and claiming, let sagas reach a safe
    /// point (the grace period), stop the rest, then release the leases this
    /// worker holds ([`Journal::release_all`]), so that on a shared journal
    /// another worker takes its unfinished sagas over at its next claim
    /// rather than after `lease_ttl_ms`. Everything unfinished resumes there,
    /// or on the next start. A release that fails (or takes longer than the
    /// grace period, at least 1 s) is logged: the leases then expire as after
    /// a crash.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        // No more pushed news: an interrupted round's messages come back later.
        for h in self.tmc_handles {
            h.stop().await;
        }
        let bound = self.grace.max(std::time::Duration::from_secs(1));
        // A claim in progress finishes first, so nothing is claimed after the
        // release (one stuck past the bound is abandoned: its claims expire).
        let mut reclaimer = self.reclaimer;
        if tokio::time::timeout(bound, &mut reclaimer).await.is_err() {
            reclaimer.abort();
        }
        self.engine.shutdown(self.grace).await;
        if let Err(e) = self.journal.deregister().await {
            tracing::warn!(error = %e, "could not leave the worker registry; this worker counts as live until its heartbeat expires");
        }
        match tokio::time::timeout(bound, self.journal.journal().release_all()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(leases = n, "released this worker's leases"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not release leases; they expire after lease_ttl_ms")
            }
            Err(_) => {
                tracing::warn!("releasing leases took too long; they expire after lease_ttl_ms")
            }
        }
        let _ = self.server.await;
    }
}
