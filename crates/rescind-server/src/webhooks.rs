//! Outcome webhooks: the worker tells a backend when a saga finishes
//! (completed, failed, aborted), becomes stuck, or leaves stuck, by a signed
//! `POST` to `[webhooks] url` — at least once, from a durable outbox.
//!
//! How an event travels:
//! 1. The engine's [`SagaObserver`] hook ([`WebhookObserver`]) hears of the
//!    change once it is durable in the journal and queues it (no I/O on the
//!    saga's task).
//! 2. The outbox task writes it to the outbox (a small sled database,
//!    `[webhooks] outbox`) and flushes it before the first delivery attempt.
//! 3. Deliveries are retried with capped exponential back-off and jitter on
//!    connection errors, timeouts, 5xx, 408 and 429, up to `max_attempts`;
//!    any other answer that is not 2xx gives the event up (a warning, counted
//!    in [`WebhookStats::given_up`], and kept in the outbox's `dead` tree).
//! 4. A kill between the journal's finish and the outbox write would lose the
//!    hook's call: at start the outbox task reconciles the journal's finished
//!    set against the sagas it has enqueued (`seen`), and enqueues the
//!    finished sagas it never saw that finished since it was last alive. Event
//!    ids are stable (`SAGA.finished`), so a receiver dedupes by
//!    `X-Rescind-Event-Id`.
//!
//! Signature: `X-Rescind-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, computed at each attempt ([`signature_header`],
//! [`verify_signature`]).

use rescind_core::{
    Journal, JournalError, SagaChange, SagaId, SagaNotice, SagaObserver, SagaOutcome, SagaSet,
    SagaState,
};
use rescind_wire::sign::{pandapon_message_signature, signatures_match, Secret};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// The events a webhook can carry (`[webhooks] events`).
pub const EVENTS: [&str; 5] = ["completed", "failed", "aborted", "stuck", "unstuck"];

/// How long before its last sign of life the outbox reconciles finished
/// sagas at start (the alive mark is written about once a second).
const RECONCILE_MARGIN_MS: u64 = 10_000;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// Sagas read from the journal per batch while reconciling.
const RECONCILE_BATCH: usize = 256;

/// The `[webhooks]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Where events are `POST`ed (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of `X-Rescind-Signature` (`secret_env`; never logged).
    pub secret: Secret,
    /// Which events are sent (a subset of [`EVENTS`]; default all).
    pub events: Vec<String>,
    /// Attempts per event before it is given up (1–100, default 12).
    pub max_attempts: u32,
    /// The wait after the first failed attempt (ms, default 1 000); doubled
    /// at each further failure, with jitter.
    pub backoff_initial_ms: u64,
    /// The longest wait between attempts (ms, default 300 000).
    pub backoff_max_ms: u64,
    /// How long one attempt may take (ms, default 10 000).
    pub timeout_ms: u64,
    /// The outbox directory (a sled database; relative paths are relative to
    /// the configuration file; default `rescind-webhooks`).
    pub outbox: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhooksToml {
    url: String,
    secret: Option<String>,
    events: Option<Vec<String>>,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_backoff_initial")]
    backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    backoff_max_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    outbox: Option<PathBuf>,
}

fn default_attempts() -> u32 {
    12
}
fn default_backoff_initial() -> u64 {
    1_000
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_timeout() -> u64 {
    10_000
}

impl WebhooksConfig {
    /// Parse the `[webhooks]` table whose `secret_env` was already resolved
    /// into `secret`; relative paths are resolved against `base_dir`. Every
    /// error names its key.
    pub(crate) fn from_table(
        value: toml::Value,
        base_dir: &std::path::Path,
    ) -> Result<WebhooksConfig, crate::config::ConfigError> {
        let bad = |key: &str, reason: String| crate::config::ConfigError {
            key: format!("webhooks.{key}"),
            reason,
        };
        let t: WebhooksToml =
            value
                .try_into()
                .map_err(|e: toml::de::Error| crate::config::ConfigError {
                    key: "webhooks".into(),
                    reason: e.message().to_owned(),
                })?;
        if !(t.url.starts_with("http://") || t.url.starts_with("https://"))
            || reqwest::Url::parse(&t.url).is_err()
        {
            return Err(bad("url", "must be an http:// or https:// URL".into()));
        }
        let secret = match t.secret {
            Some(s) if !s.is_empty() => Secret::new(s),
            _ => {
                return Err(bad(
                    "secret_env",
                    "is required: the environment variable holding the signing secret".into(),
                ))
            }
        };
        let events = match t.events {
            None => EVENTS.iter().map(|e| e.to_string()).collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(bad(
                        "events",
                        format!("must name at least one of {EVENTS:?}"),
                    ));
                }
                for e in &list {
                    if !EVENTS.contains(&e.as_str()) {
                        return Err(bad(
                            "events",
                            format!("unknown event {e:?} (expected some of {EVENTS:?})"),
                        ));
                    }
                }
                list
            }
        };
        for (key, v, lo, hi) in [
            ("max_attempts", u64::from(t.max_attempts), 1, 100),
            ("backoff_initial_ms", t.backoff_initial_ms, 10, 3_600_000),
            ("backoff_max_ms", t.backoff_max_ms, 10, 86_400_000),
            ("timeout_ms", t.timeout_ms, 100, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return Err(bad(key, format!("must be between {lo} and {hi} (got {v})")));
            }
        }
        if t.backoff_max_ms < t.backoff_initial_ms {
            return Err(bad(
                "backoff_max_ms",
                "must be at least backoff_initial_ms".into(),
            ));
        }
        Ok(WebhooksConfig {
            url: t.url,
            secret,
            events,
            max_attempts: t.max_attempts,
            backoff_initial_ms: t.backoff_initial_ms,
            backoff_max_ms: t.backoff_max_ms,
            timeout_ms: t.timeout_ms,
            outbox: base_dir.join(
                t.outbox
                    .unwrap_or_else(|| PathBuf::from("rescind-webhooks")),
            ),
        })
    }
}

/// The JSON body of one webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Stable id: `SAGA.finished` for a finish, `SAGA.stuck.AT_MS` and
    /// `SAGA.unstuck.AT_MS` otherwise. The same event re-sent keeps its id.
    pub event_id: String,
    /// One of [`EVENTS`].
    pub event: String,
    /// The saga.
    pub saga_id: SagaId,
    /// Its kind (`cancel_unpaid`, …).
    pub kind: String,
    /// The order's channel.
    pub channel: String,
    /// The order.
    pub order_id: String,
    /// The account (shop) the saga acts for, if any.
    pub account: Option<String>,
    /// `completed`, `failed` or `aborted` for a finish; `null` otherwise.
    pub outcome: Option<String>,
    /// The saga's state now: `finished`, `stuck` or `running`.
    pub state: String,
    /// Why (failure, abort or stuck reason; a completion's note), if any.
    pub reason: Option<String>,
    /// When it happened (ms since the Unix epoch).
    pub at_ms: u64,
}

fn finished_parts(o: &SagaOutcome) -> (&'static str, Option<String>) {
    match o {
        SagaOutcome::Completed { note, .. } => ("completed", note.clone()),
        SagaOutcome::Failed { reason } => ("failed", Some(reason.clone())),
        SagaOutcome::Aborted { reason, .. } => ("aborted", Some(reason.clone())),
    }
}

impl WebhookEvent {
    fn base(saga: SagaId, input: &rescind_core::SagaInput, at_ms: u64) -> WebhookEvent {
        WebhookEvent {
            event_id: String::new(),
            event: String::new(),
            saga_id: saga,
            kind: input.kind.as_str().to_owned(),
            channel: input.order.channel.as_str().to_owned(),
            order_id: input.order.order_id.as_str().to_owned(),
            account: input.account.as_ref().map(|a| a.as_str().to_owned()),
            outcome: None,
            state: String::new(),
            reason: None,
            at_ms,
        }
    }

    /// The event of an engine notice (`None` for a change it does not know).
    pub fn of_notice(n: &SagaNotice<'_>) -> Option<WebhookEvent> {
        let mut e = WebhookEvent::base(n.saga, n.input, n.at_ms);
        match n.change {
            SagaChange::Finished(o) => {
                let (label, reason) = finished_parts(o);
                e.event = label.into();
                e.event_id = format!("{}.finished", n.saga);
                e.outcome = Some(label.into());
                e.state = "finished".into();
                e.reason = reason;
            }
            SagaChange::Stuck { reason } => {
                e.event = "stuck".into();
                e.event_id = format!("{}.stuck.{}", n.saga, n.at_ms);
                e.state = "stuck".into();
                e.reason = Some(reason.to_owned());
            }
            SagaChange::Unstuck => {
                e.event = "unstuck".into();
                e.event_id = format!("{}.unstuck.{}", n.saga, n.at_ms);
                e.state = "running".into();
            }
            _ => return None,
        }
        Some(e)
    }

    /// The finish event of a saga read from the journal (`None` while it is
    /// unfinished), as the hook would have sent it.
    pub fn of_finished(state: &SagaState, at_ms: u64) -> Option<WebhookEvent> {
        let o = state.outcome.as_ref()?;
        let (label, reason) = finished_parts(o);
        let mut e = WebhookEvent::base(state.id, &state.input, at_ms);
        e.event = label.into();
        e.event_id = format!("{}.finished", state.id);
        e.outcome = Some(label.into());
        e.state = "finished".into();
        e.reason = reason;
        Some(e)
    }
}

/// The `X-Rescind-Signature` value for `body` sent at `t_ms`:
/// `t=<t_ms>,v1=<hex HMAC-SHA256(secret, "<t_ms>.<body>")>`.
pub fn signature_header(secret: &Secret, t_ms: u64, body: &[u8]) -> String {
    let mut base = format!("{t_ms}.").into_bytes();
    base.extend_from_slice(body);
    format!("t={t_ms},v1={}", pandapon_message_signature(&base, secret))
}

/// Does `header` sign `body` with `secret`, at a time within `tolerance_ms`
/// of `now_ms`? (What a receiver checks; constant-time comparison.)
pub fn verify_signature(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now_ms: u64,
    tolerance_ms: u64,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now_ms) > tolerance_ms {
        return false;
    }
    let expected = signature_header(secret, t, body);
    let expected = expected.rsplit_once("v1=").map(|(_, s)| s).unwrap_or("");
    signatures_match(expected, v1)
}

/// Delivery counters since start.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events written to the outbox.
    pub enqueued: AtomicU64,
    /// Events the receiver acknowledged (2xx).
    pub delivered: AtomicU64,
    /// Failed attempts that will be retried.
    pub retried: AtomicU64,
    /// Events given up (a 4xx other than 408/429, or `max_attempts` spent).
    pub given_up: AtomicU64,
    /// Events waiting in the outbox now.
    pub pending: AtomicU64,
}

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The outbox database did not open.
    #[error("cannot open the webhook outbox at {path}: {detail}")]
    Outbox {
        /// Where it is.
        path: String,
        /// What sled said.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

/// The engine hook: queues an event for the outbox task. Cheap, never blocks.
#[derive(Debug)]
pub struct WebhookObserver {
    events: HashSet<String>,
    tx: tokio::sync::mpsc::UnboundedSender<WebhookEvent>,
}

impl SagaObserver for WebhookObserver {
    fn saga_changed(&self, notice: &SagaNotice<'_>) {
        if let Some(e) = WebhookEvent::of_notice(notice) {
            if self.events.contains(&e.event) {
                // The outbox task is gone only at shutdown; a finish it
                // misses then is reconciled at the next start.
                let _ = self.tx.send(e);
            }
        }
    }
}

/// One event waiting in the outbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    /// The JSON body as sent (fixed, so every attempt signs the same bytes).
    body: String,
    saga: SagaId,
    event: String,
    attempts: u32,
    due_ms: u64,
}

/// The outbox: sled trees `pending` (event id → [`Pending`]), `seen` (saga
/// id → nothing: its finish was enqueued), `dead` (given-up events), `meta`.
struct Outbox {
    db: sled::Db,
    pending: sled::Tree,
    seen: sled::Tree,
    dead: sled::Tree,
    meta: sled::Tree,
}

fn sled_err(e: sled::Error) -> String {
    e.to_string()
}

impl Outbox {
    fn open(path: &std::path::Path) -> Result<Outbox, String> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()
            .map_err(sled_err)?;
        let tree = |n: &str| db.open_tree(n).map_err(sled_err);
        Ok(Outbox {
            pending: tree("pending")?,
            seen: tree("seen")?,
            dead: tree("dead")?,
            meta: tree("meta")?,
            db,
        })
    }

    fn meta_u64(&self, key: &str) -> Option<u64> {
        let v = self.meta.get(key).ok()??;
        let bytes: [u8; 8] = v.as_ref().try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }

    fn set_meta_u64(&self, key: &str, v: u64) -> Result<(), String> {
        self.meta
            .insert(key, &v.to_be_bytes())
            .map(|_| ())
            .map_err(sled_err)
    }

    /// Write an event (a finish only once per saga). `None`: already there.
    fn put(&self, e: &WebhookEvent, now_ms: u64) -> Result<Option<Pending>, String> {
        if e.state == "finished" {
            let first = self
                .seen
                .insert(seen_key(&e.saga_id).as_bytes(), &[])
                .map_err(sled_err)?
                .is_none();
            if !first {
                return Ok(None);
            }
        }
        let body = serde_json::to_string(e).map_err(|e| e.to_string())?;
        let p = Pending {
            body,
            saga: e.saga_id,
            event: e.event.clone(),
            attempts: 0,
            due_ms: now_ms,
        };
        let v = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
        self.pending
            .insert(e.event_id.as_bytes(), v)
            .map_err(sled_err)?;
        Ok(Some(p))
    }

    fn all_pending(&self) -> Vec<(String, Pending)> {
        self.pending
            .iter()
            .filter_map(|kv| {
                let (k, v) = kv.ok()?;
                match serde_json::from_slice::<Pending>(&v) {
                    Ok(p) => Some((String::from_utf8_lossy(&k).into_owned(), p)),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable webhook outbox entry skipped");
                        None
                    }
                }
            })
            .collect()
    }

    async fn flush(&self) -> Result<(), String> {
        self.db.flush_async().await.map(|_| ()).map_err(sled_err)
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    Retry(String),
    GiveUp(String),
}

async fn attempt(
    http: &reqwest::Client,
    cfg: &WebhooksConfig,
    event_id: &str,
    body: &str,
) -> Attempt {
    let t = now_ms();
    let sig = signature_header(&cfg.secret, t, body.as_bytes());
    let sent = http
        .post(&cfg.url)
        .header("content-type", "application/json")
        .header("x-rescind-event-id", event_id)
        .header("x-rescind-signature", sig)
        .body(body.to_owned())
        .send()
        .await;
    match sent {
        Ok(r) => {
            let s = r.status();
            if s.is_success() {
                Attempt::Delivered
            } else if s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429 {
                Attempt::Retry(format!("HTTP {}", s.as_u16()))
            } else {
                Attempt::GiveUp(format!("HTTP {}", s.as_u16()))
            }
        }
        // Connection refused or reset, timeout, TLS: the receiver may come back.
        Err(e) => Attempt::Retry(if e.is_timeout() {
            "timeout".into()
        } else if e.is_connect() {
            "connection failed".into()
        } else {
            "request failed".into()
        }),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wait after `attempts` failed attempts: `initial · 2^(attempts-1)`,
/// capped at `max`, of which a random half is jitter.
pub fn backoff_ms(initial_ms: u64, max_ms: u64, attempts: u32, rand: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(40);
    let d = initial_ms.saturating_mul(1u64 << exp).min(max_ms).max(1);
    let half = d / 2;
    d - half + rand % (half + 1)
}

/// Running outcome webhooks: the hook to give the engine, the outbox task,
/// and its counters.
pub struct Webhooks {
    cfg: Arc<WebhooksConfig>,
    outbox: Arc<Outbox>,
    observer: Arc<WebhookObserver>,
    rx: Option<tokio::sync::mpsc::UnboundedReceiver<WebhookEvent>>,
    http: reqwest::Client,
    stats: Arc<WebhookStats>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("events", &self.cfg.events)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    /// Open the outbox and build the hook. Nothing is sent until
    /// [`Webhooks::spawn`].
    pub fn open(cfg: WebhooksConfig) -> Result<Webhooks, WebhookError> {
        let outbox = Outbox::open(&cfg.outbox).map_err(|detail| WebhookError::Outbox {
            path: cfg.outbox.display().to_string(),
            detail,
        })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let observer = Arc::new(WebhookObserver {
            events: cfg.events.iter().cloned().collect(),
            tx,
        });
        Ok(Webhooks {
            cfg: Arc::new(cfg),
            outbox: Arc::new(outbox),
            observer,
            rx: Some(rx),
            http,
            stats: Arc::default(),
        })
    }

    /// The hook for `EngineBuilder::observer`.
    pub fn observer(&self) -> Arc<WebhookObserver> {
        self.observer.clone()
    }

    /// The delivery counters.
    pub fn stats(&self) -> Arc<WebhookStats> {
        self.stats.clone()
    }

    /// Reconcile the outbox against the journal, then deliver until `stop`
    /// turns true. Call once; a second call does nothing.
    pub fn spawn(
        &mut self,
        journal: Arc<dyn Journal>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let rx = self.rx.take()?;
        let task = OutboxTask {
            cfg: self.cfg.clone(),
            outbox: self.outbox.clone(),
            http: self.http.clone(),
            stats: self.stats.clone(),
            rng: rescind_core::SplitMix64::new(now_ms()),
        };
        Some(tokio::spawn(task.run(journal, rx, stop)))
    }
}

struct OutboxTask {
    cfg: Arc<WebhooksConfig>,
    outbox: Arc<Outbox>,
    http: reqwest::Client,
    stats: Arc<WebhookStats>,
    rng: rescind_core::SplitMix64,
}

impl OutboxTask {
    async fn run(
        self,
        journal: Arc<dyn Journal>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<WebhookEvent>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        match reconcile(&self.outbox, journal.as_ref(), &self.cfg.events, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "webhooks: finished sagas the outbox missed were enqueued"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: reconciliation with the journal failed; finishes missed before a crash may not be sent")
            }
        }
        let mut queue: BTreeSet<(u64, String)> = BTreeSet::new();
        let mut items: HashMap<String, Pending> = HashMap::new();
        for (id, p) in self.outbox.all_pending() {
            queue.insert((p.due_ms, id.clone()));
            items.insert(id, p);
        }
        self.stats.pending.store(items.len() as u64, Relaxed);
        let mut inflight: tokio::task::JoinSet<(String, Attempt)> = tokio::task::JoinSet::new();
        let mut last_alive = 0u64;
        loop {
            let now = now_ms();
            if now.saturating_sub(last_alive) >= 1_000 {
                last_alive = now;
                let _ = self.outbox.set_meta_u64("alive_ms", now);
            }
            while inflight.len() < CONCURRENCY {
                let Some((due, id)) = queue.first().cloned() else {
                    break;
                };
                if due > now {
                    break;
                }
                queue.remove(&(due, id.clone()));
                let Some(p) = items.get(&id) else { continue };
                let (http, cfg, body) = (self.http.clone(), self.cfg.clone(), p.body.clone());
                inflight.spawn(async move {
                    let r = attempt(&http, &cfg, &id, &body).await;
                    (id, r)
                });
            }
            let next_due = queue
                .first()
                .map(|(d, _)| *d)
                .filter(|_| inflight.len() < CONCURRENCY);
            let sleep = next_due.map_or(Duration::from_secs(1), |d| {
                Duration::from_millis(d.saturating_sub(now)).min(Duration::from_secs(1))
            });
            tokio::select! {
                got = rx.recv() => {
                    let Some(first) = got else { return };
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    self.write(batch, &mut queue, &mut items).await;
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    if let Ok((id, result)) = done {
                        self.settle(id, result, &mut queue, &mut items);
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
                // The guard `wait_for` returns is not `Send`: drop it inside.
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            }
        }
        let _ = self.outbox.flush().await;
    }

    async fn write(
        &self,
        batch: Vec<WebhookEvent>,
        queue: &mut BTreeSet<(u64, String)>,
        items: &mut HashMap<String, Pending>,
    ) {
        let now = now_ms();
        let mut added = Vec::new();
        for e in batch {
            match self.outbox.put(&e, now) {
                Ok(Some(p)) => added.push((e.event_id, p)),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(event_id = %e.event_id, error = %err, "webhooks: outbox write failed; the event is sent from memory only")
                }
            }
        }
        // Durable before the first attempt: a receiver never hears of an
        // event the outbox could forget.
        if let Err(err) = self.outbox.flush().await {
            tracing::warn!(error = %err, "webhooks: outbox flush failed");
        }
        for (id, p) in added {
            self.stats.enqueued.fetch_add(1, Relaxed);
            queue.insert((p.due_ms, id.clone()));
            items.insert(id, p);
        }
        self.stats.pending.store(items.len() as u64, Relaxed);
    }

    fn settle(
        &self,
        id: String,
        result: Attempt,
        queue: &mut BTreeSet<(u64, String)>,
        items: &mut HashMap<String, Pending>,
    ) {
        let Some(mut p) = items.remove(&id) else {
            return;
        };
        p.attempts = p.attempts.saturating_add(1);
        match result {
            Attempt::Delivered => {
                self.stats.delivered.fetch_add(1, Relaxed);
                tracing::debug!(event_id = %id, attempts = p.attempts, "webhook delivered");
                let _ = self.outbox.pending.remove(id.as_bytes());
            }
            Attempt::Retry(why) if p.attempts < self.cfg.max_attempts => {
                self.stats.retried.fetch_add(1, Relaxed);
                let wait = backoff_ms(
                    self.cfg.backoff_initial_ms,
                    self.cfg.backoff_max_ms,
                    p.attempts,
                    rescind_core::Rng::next_u64(&self.rng),
                );
                p.due_ms = now_ms().saturating_add(wait);
                tracing::info!(event_id = %id, attempts = p.attempts, retry_in_ms = wait, %why, "webhook not delivered; retrying");
                if let Ok(v) = serde_json::to_vec(&p) {
                    let _ = self.outbox.pending.insert(id.as_bytes(), v);
                }
                queue.insert((p.due_ms, id.clone()));
                items.insert(id, p);
            }
            Attempt::Retry(why) | Attempt::GiveUp(why) => {
                self.stats.given_up.fetch_add(1, Relaxed);
                tracing::warn!(event_id = %id, saga = %p.saga, event = %p.event, attempts = p.attempts, %why, "webhook given up");
                if let Ok(v) = serde_json::to_vec(&p) {
                    let _ = self.outbox.dead.insert(id.as_bytes(), v);
                }
                let _ = self.outbox.pending.remove(id.as_bytes());
            }
        }
        self.stats.pending.store(items.len() as u64, Relaxed);
    }
}

/// Enqueue the finish of every saga in the journal's finished set that the
/// outbox has not seen and that finished since the outbox was last alive
/// (less a margin); mark the others seen. A new outbox only takes the
/// finished set as seen. Returns how many events were enqueued.
async fn reconcile(
    outbox: &Outbox,
    journal: &dyn Journal,
    events: &[String],
    now: u64,
) -> Result<usize, String> {
    let finished = journal
        .list(SagaSet::Finished)
        .await
        .map_err(|e: JournalError| e.to_string())?;
    let alive = outbox.meta_u64("alive_ms");
    let unseen: Vec<SagaId> = finished
        .iter()
        .filter(|id| {
            !outbox
                .seen
                .contains_key(seen_key(id).as_bytes())
                .unwrap_or(false)
        })
        .copied()
        .collect();
    // Sagas compacted out of the journal need no memory here.
    let live: HashSet<SagaId> = finished.iter().copied().collect();
    for (k, _) in outbox.seen.iter().flatten() {
        let gone = saga_of_key(&k).is_none_or(|id| !live.contains(&id));
        if gone {
            let _ = outbox.seen.remove(k);
        }
    }
    let mut enqueued = 0;
    match alive {
        None => {
            for id in &unseen {
                outbox
                    .seen
                    .insert(seen_key(id).as_bytes(), &[])
                    .map_err(sled_err)?;
            }
        }
        Some(alive) => {
            let since = alive.saturating_sub(RECONCILE_MARGIN_MS);
            for chunk in unseen.chunks(RECONCILE_BATCH) {
                for (id, entries) in chunk.iter().zip(journal.read_many(chunk).await) {
                    let event = entries
                        .ok()
                        .and_then(|entries| {
                            let at = entries.last().map_or(0, |e| e.at_ms);
                            let state = SagaState::fold(*id, &entries).ok()?;
                            WebhookEvent::of_finished(&state, at)
                        })
                        .filter(|e| e.at_ms >= since && events.contains(&e.event));
                    match event {
                        Some(e) => {
                            if outbox.put(&e, now)?.is_some() {
                                enqueued += 1;
                            }
                        }
                        None => {
                            outbox
                                .seen
                                .insert(seen_key(id).as_bytes(), &[])
                                .map_err(sled_err)?;
                        }
                    }
                }
            }
        }
    }
    outbox.set_meta_u64("alive_ms", now)?;
    outbox.flush().await?;
    Ok(enqueued)
}

/// The `seen` key of a saga: its id as text.
fn seen_key(id: &SagaId) -> String {
    id.to_string()
}

fn saga_of_key(k: &[u8]) -> Option<SagaId> {
    std::str::from_utf8(k).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::{Entry, MemoryJournal, OrderRef, OrderState, Record, SagaInput};

    fn cfg(dir: &std::path::Path) -> WebhooksConfig {
        WebhooksConfig {
            url: "http://127.0.0.1:9/hook".into(),
            secret: Secret::new("s3cret-value"),
            events: EVENTS.iter().map(|e| e.to_string()).collect(),
            max_attempts: 3,
            backoff_initial_ms: 10,
            backoff_max_ms: 100,
            timeout_ms: 1_000,
            outbox: dir.join("outbox"),
        }
    }

    async fn finished_saga(j: &MemoryJournal, order: &str, at_ms: u64) -> SagaId {
        let id = SagaId::from_key(order);
        let input = SagaInput::cancel_unpaid(OrderRef::new("tbc", order));
        let entries = [
            Entry {
                seq: 0,
                at_ms,
                record: Record::Started { input, by: None },
            },
            Entry {
                seq: 1,
                at_ms,
                record: Record::Finished {
                    outcome: SagaOutcome::Completed {
                        order: OrderState::Cancelled,
                        note: None,
                    },
                },
            },
        ];
        j.append_batch(id, &entries, true).await.unwrap();
        id
    }

    #[test]
    fn signatures_verify_and_refuse_tampering() {
        let s = Secret::new("k");
        let h = signature_header(&s, 1_700_000_000_000, b"{\"a\":1}");
        assert!(h.starts_with("t=1700000000000,v1="), "{h}");
        assert!(verify_signature(
            &s,
            &h,
            b"{\"a\":1}",
            1_700_000_000_500,
            60_000
        ));
        assert!(!verify_signature(
            &s,
            &h,
            b"{\"a\":2}",
            1_700_000_000_500,
            60_000
        ));
        assert!(!verify_signature(
            &Secret::new("x"),
            &h,
            b"{\"a\":1}",
            1_700_000_000_500,
            60_000
        ));
        assert!(
            !verify_signature(&s, &h, b"{\"a\":1}", 1_700_000_900_000, 60_000),
            "stale"
        );
        assert!(!verify_signature(&s, "v1=00", b"", 0, 60_000));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        for (attempts, base) in [(1u32, 100u64), (2, 200), (3, 400), (10, 1_000)] {
            for r in [0u64, 7, u64::MAX] {
                let d = backoff_ms(100, 1_000, attempts, r);
                assert!(d >= base / 2 && d <= base, "{attempts} {r} {d}");
            }
        }
    }

    #[test]
    fn the_config_names_bad_keys_and_hides_the_secret() {
        let dir = std::path::Path::new("/srv");
        let parse = |s: &str| WebhooksConfig::from_table(toml::from_str(s).unwrap(), dir);
        let c = parse("url = \"https://b.example/h\"\nsecret = \"topsecret\"").unwrap();
        assert_eq!(c.events.len(), 5);
        assert_eq!(c.outbox, dir.join("rescind-webhooks"));
        assert!(!format!("{c:?}").contains("topsecret"));
        for (text, key) in [
            ("url = \"ftp://x\"\nsecret = \"s\"", "webhooks.url"),
            ("url = \"http://x\"", "webhooks.secret_env"),
            ("url = \"http://x\"\nsecret = \"s\"\nevents = [\"done\"]", "webhooks.events"),
            ("url = \"http://x\"\nsecret = \"s\"\nmax_attempts = 0", "webhooks.max_attempts"),
            ("url = \"http://x\"\nsecret = \"s\"\nbackoff_initial_ms = 500\nbackoff_max_ms = 100", "webhooks.backoff_max_ms"),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
        assert!(parse("url = \"http://x\"\nsecret = \"s\"\nretries = 3")
            .unwrap_err()
            .reason
            .contains("retries"));
        // Through the whole file: the secret only from the environment.
        let full = |s: &str| {
            crate::config::Config::from_toml_str(s, dir, &|v| {
                (v == "HOOK_SECRET").then(|| "from-env".to_owned())
            })
        };
        let c = full("[webhooks]\nurl = \"http://x\"\nsecret_env = \"HOOK_SECRET\"").unwrap();
        assert_eq!(c.webhooks.unwrap().secret.expose(), "from-env");
        assert_eq!(
            full("[webhooks]\nurl = \"http://x\"\nsecret = \"inline\"")
                .unwrap_err()
                .key,
            "webhooks.secret"
        );
        assert_eq!(
            full("[webhooks]\nurl = \"http://x\"\nsecret_env = \"UNSET\"")
                .unwrap_err()
                .key,
            "webhooks.secret_env"
        );
    }

    #[tokio::test]
    async fn reconcile_enqueues_a_finish_the_hook_missed_once_and_not_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let j = MemoryJournal::new();
        let now = now_ms();
        let old = finished_saga(&j, "old", now - 3_600_000).await;
        // A new outbox takes what is finished as seen: nothing is sent.
        {
            let ob = Outbox::open(&cfg(dir.path()).outbox).unwrap();
            assert_eq!(
                reconcile(&ob, &j, &cfg(dir.path()).events, now)
                    .await
                    .unwrap(),
                0
            );
            assert!(ob.seen.contains_key(seen_key(&old).as_bytes()).unwrap());
        }
        // A saga finished after the outbox's last sign of life, before its
        // hook's call reached the outbox (a kill -9 in between).
        let missed = finished_saga(&j, "missed", now + 5).await;
        let ob = Outbox::open(&cfg(dir.path()).outbox).unwrap();
        let events = cfg(dir.path()).events;
        assert_eq!(reconcile(&ob, &j, &events, now + 10).await.unwrap(), 1);
        let pending = ob.all_pending();
        assert_eq!(pending.len(), 1);
        let (id, p) = &pending[0];
        assert_eq!(id, &format!("{missed}.finished"));
        let e: WebhookEvent = serde_json::from_str(&p.body).unwrap();
        assert_eq!(
            (e.event.as_str(), e.order_id.as_str(), e.state.as_str()),
            ("completed", "missed", "finished")
        );
        // Twice: nothing more.
        assert_eq!(reconcile(&ob, &j, &events, now + 20).await.unwrap(), 0);
        // The hook's own call for it now is a duplicate the outbox drops.
        assert!(ob.put(&e, now).unwrap().is_none());
    }
}
