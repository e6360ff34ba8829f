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
//! 4. A kill between the journal's write and the outbox write would lose the
//!    hook's call: at start the outbox task reconciles. It asks the
//!    journal's time index for the sagas updated since the outbox was last
//!    alive (less [`RECONCILE_MARGIN_MS`]), re-derives their finish, stuck
//!    and unstuck events from their records ([`journal_events`]), and
//!    enqueues those the outbox has not already taken. Event ids are
//!    deterministic (`SAGA.finished`, `SAGA.stuck.SEQ`, `SAGA.unstuck.SEQ`
//!    with SEQ the journal sequence of the stuck record), so a receiver
//!    dedupes by `X-Rescind-Event-Id`.
//!
//! Counters ([`WebhookStats`]) are served in `/metrics` as the
//! `rescind_webhook_*` series.
//!
//! Signature: `X-Rescind-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, computed at each attempt ([`signature_header`],
//! [`verify_signature`]).

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::TypedMetric;
use rescind_core::{
    Entry, Journal, JournalError, Record, SagaChange, SagaId, SagaNotice, SagaObserver,
    SagaOutcome, SagaQuery, SagaState,
};
use rescind_wire::sign::{pandapon_message_signature, signatures_match, Secret};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The events a webhook can carry (`[webhooks] events`).
pub const EVENTS: [&str; 5] = ["completed", "failed", "aborted", "stuck", "unstuck"];

/// How long before its last sign of life the outbox reconciles at start: the
/// events of records written from then on are re-derived from the journal
/// (the alive mark is written about once a second; the margin also covers
/// clocks of other workers on a shared journal a little behind this one's).
pub const RECONCILE_MARGIN_MS: u64 = 10_000;
/// Deliveries in flight at once.
const CONCURRENCY: usize = 8;
/// Sagas read from the journal per batch while reconciling.
const RECONCILE_BATCH: usize = 256;
/// The test hook's environment variable: a comma-separated list of events
/// (`stuck`, `unstuck`, …) the engine hook drops instead of queueing them
/// for the outbox, as if the worker died between the journal write and the
/// outbox write. For tests of the reconciliation only; never set it in
/// production (each dropped event is logged as a warning).
pub const TEST_DROP_EVENTS_ENV: &str = "RESCIND_WEBHOOKS_TEST_DROP_EVENTS";

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
    /// Deterministic id: `SAGA.finished` for a finish; `SAGA.stuck.SEQ` for
    /// the stuck record SEQ of the saga's journal and `SAGA.unstuck.SEQ`
    /// when the saga leaves that stuck record. The same event re-sent or
    /// re-derived from the journal keeps its id. (`SAGA.stuck.tAT_MS` when
    /// the journal could not be read to find SEQ.)
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
            // Provisional ids: the outbox task replaces them with the
            // journal's (`SAGA.stuck.SEQ`) before the event is written.
            SagaChange::Stuck { reason } => {
                e.event = "stuck".into();
                e.event_id = format!("{}.stuck.t{}", n.saga, n.at_ms);
                e.state = "stuck".into();
                e.reason = Some(reason.to_owned());
            }
            SagaChange::Unstuck => {
                e.event = "unstuck".into();
                e.event_id = format!("{}.unstuck.t{}", n.saga, n.at_ms);
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
    fn stuck(state: &SagaState, seq: u64, at_ms: u64, reason: &str) -> WebhookEvent {
        let mut e = WebhookEvent::base(state.id, &state.input, at_ms);
        e.event = "stuck".into();
        e.event_id = format!("{}.stuck.{seq}", state.id);
        e.state = "stuck".into();
        e.reason = Some(reason.to_owned());
        e
    }

    fn unstuck(state: &SagaState, stuck_seq: u64, at_ms: u64) -> WebhookEvent {
        let mut e = WebhookEvent::base(state.id, &state.input, at_ms);
        e.event = "unstuck".into();
        e.event_id = format!("{}.unstuck.{stuck_seq}", state.id);
        e.state = "running".into();
        e
    }
}

/// Does this record take a stuck saga out of stuck? (What the journal's
/// state index counts as running again, and a finish.)
fn leaves_stuck(r: &Record) -> bool {
    matches!(
        r,
        Record::Intent { .. }
            | Record::Outcome { .. }
            | Record::Resolved { .. }
            | Record::Resumed { .. }
            | Record::Finished { .. }
    )
}

/// The webhook events a saga's records imply, in record order, keeping
/// those that happened at or after `since_ms`: a `stuck` event per stuck
/// record (id `SAGA.stuck.SEQ`, at the record's time, with its reason), an
/// `unstuck` event when a later record leaves it (an intent, an outcome, an
/// operator's resolution or resume, a finish, or another stuck record — a
/// restart resumed it in between; id `SAGA.unstuck.SEQ` of the stuck record,
/// at the time of the record that left it), and the finish. A restart that
/// resumes a stuck saga writes no record of its own: that `unstuck` is only
/// told live (with the same id). Empty when the records do not fold.
pub fn journal_events(saga: SagaId, entries: &[Entry], since_ms: u64) -> Vec<WebhookEvent> {
    let Ok(state) = SagaState::fold(saga, entries) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut open: Option<u64> = None;
    for e in entries {
        let stuck_reason = match &e.record {
            Record::Stuck { reason } => Some(reason.as_str()),
            _ => None,
        };
        if stuck_reason.is_some() || leaves_stuck(&e.record) {
            if let Some(seq) = open.take() {
                if e.at_ms >= since_ms {
                    out.push(WebhookEvent::unstuck(&state, seq, e.at_ms));
                }
            }
        }
        if let Some(reason) = stuck_reason {
            open = Some(e.seq);
            if e.at_ms >= since_ms {
                out.push(WebhookEvent::stuck(&state, e.seq, e.at_ms, reason));
            }
        }
    }
    let last_at = entries.last().map_or(0, |e| e.at_ms);
    if let Some(f) = WebhookEvent::of_finished(&state, last_at).filter(|f| f.at_ms >= since_ms) {
        out.push(f);
    }
    out
}

/// The journal's form of a live `stuck` or `unstuck` notice `e` (told at
/// `e.at_ms`) of a saga whose records are `entries`: the stuck record the
/// notice is about is the last one written at or before the notice (else the
/// last one). A `stuck` event takes that record's id, time and reason; an
/// `unstuck` event its id and, when a record already left it, that record's
/// time. `None` when the journal has no stuck record for it.
fn journal_form(e: &WebhookEvent, entries: &[Entry]) -> Option<WebhookEvent> {
    let derived = journal_events(e.saga_id, entries, 0);
    let stucks: Vec<&WebhookEvent> = derived.iter().filter(|d| d.event == "stuck").collect();
    let stuck = stucks
        .iter()
        .rev()
        .find(|d| d.at_ms <= e.at_ms)
        .or(stucks.last())?;
    match e.event.as_str() {
        "stuck" => Some((*stuck).clone()),
        "unstuck" => {
            let seq = stuck.event_id.rsplit('.').next()?;
            let id = format!("{}.unstuck.{seq}", e.saga_id);
            Some(match derived.iter().find(|d| d.event_id == id) {
                Some(d) => d.clone(),
                None => WebhookEvent {
                    event_id: id,
                    ..e.clone()
                },
            })
        }
        _ => None,
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

/// Latency buckets of `rescind_webhook_delivery_latency_ms` (ms, from the
/// outbox write to the receiver's 2xx).
pub const DELIVERY_LATENCY_BUCKETS_MS: [f64; 14] = [
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    3_600_000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    event: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GiveUpLabels {
    event: String,
    reason: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(DELIVERY_LATENCY_BUCKETS_MS)
}

/// Why an event was given up (the `reason` label of
/// `rescind_webhook_given_up_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The receiver answered a 4xx other than 408/429, or a redirect.
    Rejected,
    /// `max_attempts` attempts failed.
    Exhausted,
}

impl GiveUpReason {
    /// `rejected` or `exhausted`.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Rejected => "rejected",
            GiveUpReason::Exhausted => "exhausted",
        }
    }
}

/// Delivery counters since start, by event (`completed`, `stuck`, …); served
/// in `/metrics` as the `rescind_webhook_*` series ([`WebhookStats::encode`]).
#[derive(Debug)]
pub struct WebhookStats {
    enqueued: Family<SourceLabels, Counter>,
    delivered: Family<EventLabels, Counter>,
    retried: Family<EventLabels, Counter>,
    given_up: Family<GiveUpLabels, Counter>,
    pending: Family<EventLabels, Gauge>,
    latency: Family<EventLabels, Histogram, fn() -> Histogram>,
}

impl Default for WebhookStats {
    fn default() -> Self {
        WebhookStats {
            enqueued: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            given_up: Family::default(),
            pending: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

fn ev(event: &str) -> EventLabels {
    EventLabels {
        event: event.to_owned(),
    }
}

impl WebhookStats {
    /// Events written to the outbox of this `event`, by the engine's hook
    /// (`source` `hook`) or by the reconciliation at start (`reconciled`).
    pub fn enqueued(&self, event: &str, source: &str) -> u64 {
        self.enqueued
            .get_or_create(&SourceLabels {
                event: event.to_owned(),
                source: source.to_owned(),
            })
            .get()
    }

    /// Events of this kind the receiver acknowledged (2xx).
    pub fn delivered(&self, event: &str) -> u64 {
        self.delivered.get_or_create(&ev(event)).get()
    }

    /// Failed attempts that were retried (every attempt after an event's first).
    pub fn retried(&self, event: &str) -> u64 {
        self.retried.get_or_create(&ev(event)).get()
    }

    /// Events given up for `reason`.
    pub fn given_up(&self, event: &str, reason: GiveUpReason) -> u64 {
        self.given_up
            .get_or_create(&GiveUpLabels {
                event: event.to_owned(),
                reason: reason.as_str().to_owned(),
            })
            .get()
    }

    /// Events waiting in the outbox now.
    pub fn pending(&self, event: &str) -> i64 {
        self.pending.get_or_create(&ev(event)).get()
    }

    fn add_pending(&self, event: &str) {
        self.pending.get_or_create(&ev(event)).inc();
    }

    fn remove_pending(&self, event: &str) {
        self.pending.get_or_create(&ev(event)).dec();
    }

    /// Write the `rescind_webhook_*` series (for a `prometheus-client`
    /// collector): `enqueued_total{event, source}`, `delivered_total{event}`,
    /// `retries_total{event}`, `given_up_total{event, reason}`,
    /// `pending{event}` (gauge) and `delivery_latency_ms{event}` (histogram).
    pub fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        fn one<M: EncodeMetric + TypedMetric>(
            enc: &mut DescriptorEncoder<'_>,
            name: &str,
            help: &str,
            m: &M,
        ) -> Result<(), std::fmt::Error> {
            m.encode(enc.encode_descriptor(name, help, None, M::TYPE)?)
        }
        one(
            enc,
            "rescind_webhook_enqueued",
            "Webhook events written to the outbox, by event and source (hook: the engine told; reconciled: re-derived from the journal at start)",
            &self.enqueued,
        )?;
        one(
            enc,
            "rescind_webhook_delivered",
            "Webhook events the receiver acknowledged (2xx), by event",
            &self.delivered,
        )?;
        one(
            enc,
            "rescind_webhook_retries",
            "Failed webhook attempts that were retried, by event",
            &self.retried,
        )?;
        one(
            enc,
            "rescind_webhook_given_up",
            "Webhook events given up, by event and reason (rejected: a 4xx other than 408/429 or a redirect; exhausted: max_attempts spent)",
            &self.given_up,
        )?;
        one(
            enc,
            "rescind_webhook_pending",
            "Webhook events waiting in the outbox now, by event",
            &self.pending,
        )?;
        one(
            enc,
            "rescind_webhook_delivery_latency_ms",
            "From the outbox write to the receiver's 2xx, by event",
            &self.latency,
        )
    }
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
    /// Events dropped by the test hook ([`TEST_DROP_EVENTS_ENV`]).
    drop_for_test: HashSet<String>,
    tx: tokio::sync::mpsc::UnboundedSender<WebhookEvent>,
}

impl SagaObserver for WebhookObserver {
    fn saga_changed(&self, notice: &SagaNotice<'_>) {
        if let Some(e) = WebhookEvent::of_notice(notice) {
            if self.drop_for_test.contains(&e.event) {
                tracing::warn!(event_id = %e.event_id, event = %e.event, "webhooks test hook ({TEST_DROP_EVENTS_ENV}): event dropped before the outbox");
                return;
            }
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
    /// When it was written to the outbox (0 in entries of older builds).
    #[serde(default)]
    enqueued_ms: u64,
}

/// The outbox: sled trees `pending` (event id → [`Pending`]), `seen` (saga
/// id → the finish's time: its finish was enqueued), `told` (stuck and
/// unstuck event id → its time: enqueued), `dead` (given-up events), `meta`
/// (`alive_ms`). `seen` and `told` are pruned at start of what is older than
/// the reconciliation window.
struct Outbox {
    db: sled::Db,
    pending: sled::Tree,
    seen: sled::Tree,
    told: sled::Tree,
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
            told: tree("told")?,
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

    /// Write an event, once per event id (a finish once per saga). `None`:
    /// it was already taken.
    fn put(&self, e: &WebhookEvent, now_ms: u64) -> Result<Option<Pending>, String> {
        let (tree, key) = if e.state == "finished" {
            (&self.seen, seen_key(&e.saga_id))
        } else {
            (&self.told, e.event_id.clone())
        };
        let first = tree
            .insert(key.as_bytes(), &e.at_ms.to_be_bytes())
            .map_err(sled_err)?
            .is_none();
        if !first {
            return Ok(None);
        }
        let body = serde_json::to_string(e).map_err(|e| e.to_string())?;
        let p = Pending {
            body,
            saga: e.saga_id,
            event: e.event.clone(),
            attempts: 0,
            due_ms: now_ms,
            enqueued_ms: now_ms,
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
        let drop_for_test: HashSet<String> = std::env::var(TEST_DROP_EVENTS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if !drop_for_test.is_empty() {
            tracing::warn!(events = ?drop_for_test, "webhooks test hook {TEST_DROP_EVENTS_ENV} is set: these events are dropped before the outbox");
        }
        let observer = Arc::new(WebhookObserver {
            events: cfg.events.iter().cloned().collect(),
            drop_for_test,
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
            Ok(r) => {
                if r.enqueued.is_empty() {
                    tracing::debug!(
                        sagas = r.sagas_read,
                        "webhooks: reconciled with the journal, nothing missed"
                    );
                } else {
                    tracing::info!(
                        events = r.enqueued.len(),
                        sagas = r.sagas_read,
                        "webhooks: events the outbox missed were re-derived from the journal and enqueued"
                    );
                }
                for e in &r.enqueued {
                    self.stats
                        .enqueued
                        .get_or_create(&SourceLabels {
                            event: e.clone(),
                            source: "reconciled".into(),
                        })
                        .inc();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: reconciliation with the journal failed; events missed before a crash may not be sent")
            }
        }
        let mut queue: BTreeSet<(u64, String)> = BTreeSet::new();
        let mut items: HashMap<String, Pending> = HashMap::new();
        for (id, p) in self.outbox.all_pending() {
            self.stats.add_pending(&p.event);
            queue.insert((p.due_ms, id.clone()));
            items.insert(id, p);
        }
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
                    self.write(journal.as_ref(), batch, &mut queue, &mut items).await;
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

    /// Give live stuck and unstuck events their journal ids (one read of
    /// each such saga; they are rare), so that a re-derivation after a crash
    /// names them the same.
    async fn journal_ids(&self, journal: &dyn Journal, batch: &mut [WebhookEvent]) {
        let sagas: Vec<SagaId> = batch
            .iter()
            .filter(|e| e.state != "finished")
            .map(|e| e.saga_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if sagas.is_empty() {
            return;
        }
        let read: HashMap<SagaId, Result<Vec<Entry>, JournalError>> = sagas
            .iter()
            .copied()
            .zip(journal.read_many(&sagas).await)
            .collect();
        for e in batch.iter_mut().filter(|e| e.state != "finished") {
            let derived = match read.get(&e.saga_id) {
                Some(Ok(entries)) => journal_form(e, entries),
                _ => None,
            };
            match derived {
                Some(d) => *e = d,
                None => {
                    tracing::warn!(event_id = %e.event_id, "webhooks: the journal does not show this stuck change; sent under its provisional id")
                }
            }
        }
    }

    async fn write(
        &self,
        journal: &dyn Journal,
        mut batch: Vec<WebhookEvent>,
        queue: &mut BTreeSet<(u64, String)>,
        items: &mut HashMap<String, Pending>,
    ) {
        self.journal_ids(journal, &mut batch).await;
        let now = now_ms();
        let mut added = Vec::new();
        for e in batch {
            match self.outbox.put(&e, now) {
                Ok(Some(p)) => added.push((e.event_id, p)),
                Ok(None) => {
                    tracing::debug!(event_id = %e.event_id, "webhooks: event already in the outbox")
                }
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
            self.stats
                .enqueued
                .get_or_create(&SourceLabels {
                    event: p.event.clone(),
                    source: "hook".into(),
                })
                .inc();
            self.stats.add_pending(&p.event);
            queue.insert((p.due_ms, id.clone()));
            items.insert(id, p);
        }
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
        let event = ev(&p.event);
        match result {
            Attempt::Delivered => {
                self.stats.remove_pending(&p.event);
                self.stats.delivered.get_or_create(&event).inc();
                if p.enqueued_ms > 0 {
                    self.stats
                        .latency
                        .get_or_create(&event)
                        .observe(now_ms().saturating_sub(p.enqueued_ms) as f64);
                }
                tracing::debug!(event_id = %id, attempts = p.attempts, "webhook delivered");
                let _ = self.outbox.pending.remove(id.as_bytes());
            }
            Attempt::Retry(why) if p.attempts < self.cfg.max_attempts => {
                self.stats.retried.get_or_create(&event).inc();
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
                let reason = if p.attempts >= self.cfg.max_attempts && !why.starts_with("HTTP 4") {
                    GiveUpReason::Exhausted
                } else {
                    GiveUpReason::Rejected
                };
                self.stats.remove_pending(&p.event);
                self.stats
                    .given_up
                    .get_or_create(&GiveUpLabels {
                        event: p.event.clone(),
                        reason: reason.as_str().to_owned(),
                    })
                    .inc();
                tracing::warn!(event_id = %id, saga = %p.saga, event = %p.event, attempts = p.attempts, %why, reason = reason.as_str(), "webhook given up");
                if let Ok(v) = serde_json::to_vec(&p) {
                    let _ = self.outbox.dead.insert(id.as_bytes(), v);
                }
                let _ = self.outbox.pending.remove(id.as_bytes());
            }
        }
    }
}

/// What a reconciliation did.
#[derive(Debug, Default)]
struct Reconciled {
    /// Sagas read from the journal (those updated in the window).
    sagas_read: usize,
    /// The events enqueued (their `event`), in order.
    enqueued: Vec<String>,
}

/// Re-derive the events of every saga the journal's time index shows
/// updated since the outbox was last alive (less [`RECONCILE_MARGIN_MS`])
/// and enqueue those the outbox has not taken ([`journal_events`]); then
/// forget `seen`/`told` entries older than the window. A new outbox (no
/// alive mark) enqueues nothing: enabling webhooks does not replay history.
/// Costs the sagas updated in the window (pages of the `since` index), not
/// a read of the journal.
async fn reconcile(
    outbox: &Outbox,
    journal: &dyn Journal,
    events: &[String],
    now: u64,
) -> Result<Reconciled, String> {
    let mut done = Reconciled::default();
    if let Some(alive) = outbox.meta_u64("alive_ms") {
        let since = alive.saturating_sub(RECONCILE_MARGIN_MS);
        let mut q = SagaQuery {
            since_ms: Some(since),
            limit: rescind_core::index::QUERY_LIMIT_MAX,
            ..SagaQuery::default()
        };
        loop {
            let page = journal
                .query(&q)
                .await
                .map_err(|e: JournalError| e.to_string())?;
            for chunk in page.ids.chunks(RECONCILE_BATCH) {
                for (id, entries) in chunk.iter().zip(journal.read_many(chunk).await) {
                    done.sagas_read += 1;
                    let Ok(entries) = entries else { continue };
                    for e in journal_events(*id, &entries, since) {
                        if events.contains(&e.event) && outbox.put(&e, now)?.is_some() {
                            done.enqueued.push(e.event);
                        }
                    }
                }
            }
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        // What is older than this window is never re-derived again.
        for tree in [&outbox.seen, &outbox.told] {
            for (k, v) in tree.iter().flatten() {
                let at = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
                if at < since {
                    let _ = tree.remove(k);
                }
            }
        }
    }
    outbox.set_meta_u64("alive_ms", now)?;
    outbox.flush().await?;
    Ok(done)
}

/// The `seen` key of a saga: its id as text.
fn seen_key(id: &SagaId) -> String {
    id.to_string()
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
        let _old = finished_saga(&j, "old", now - 3_600_000).await;
        let events = cfg(dir.path()).events;
        // A new outbox does not replay history: nothing is sent.
        {
            let ob = Outbox::open(&cfg(dir.path()).outbox).unwrap();
            let r = reconcile(&ob, &j, &events, now).await.unwrap();
            assert!(r.enqueued.is_empty(), "{r:?}");
        }
        // A saga finished after the outbox's last sign of life, before its
        // hook's call reached the outbox (a kill -9 in between).
        let missed = finished_saga(&j, "missed", now + 5).await;
        let ob = Outbox::open(&cfg(dir.path()).outbox).unwrap();
        let r = reconcile(&ob, &j, &events, now + 10).await.unwrap();
        assert_eq!(r.enqueued, ["completed"]);
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
        let r = reconcile(&ob, &j, &events, now + 20).await.unwrap();
        assert!(r.enqueued.is_empty(), "{r:?}");
        // The hook's own call for it now is a duplicate the outbox drops.
        assert!(ob.put(&e, now).unwrap().is_none());
    }

    fn entry(seq: u64, at_ms: u64, record: Record) -> Entry {
        Entry { seq, at_ms, record }
    }

    /// A saga stuck at seq 1 (t+20), resumed at seq 2 (t+30), stuck again
    /// at seq 3 (t+50).
    fn stuck_twice(t: u64) -> (SagaId, Vec<Entry>) {
        let id = SagaId::from_key("stuck-twice");
        let input = SagaInput::cancel_unpaid(OrderRef::new("tbc", "ST1"));
        let stuck = |r: &str| Record::Stuck { reason: r.into() };
        let entries = vec![
            entry(0, t, Record::Started { input, by: None }),
            entry(1, t + 20, stuck("first")),
            entry(2, t + 30, Record::Resumed { by: "op".into() }),
            entry(3, t + 50, stuck("second")),
        ];
        (id, entries)
    }

    #[test]
    fn journal_events_derive_stuck_and_unstuck_with_deterministic_ids() {
        let t = 1_700_000_000_000;
        let (id, entries) = stuck_twice(t);
        let got: Vec<(String, String, u64, Option<String>)> = journal_events(id, &entries, 0)
            .into_iter()
            .map(|e| (e.event_id, e.state, e.at_ms, e.reason))
            .collect();
        assert_eq!(
            got,
            [
                (
                    format!("{id}.stuck.1"),
                    "stuck".into(),
                    t + 20,
                    Some("first".into())
                ),
                (format!("{id}.unstuck.1"), "running".into(), t + 30, None),
                (
                    format!("{id}.stuck.3"),
                    "stuck".into(),
                    t + 50,
                    Some("second".into())
                ),
            ]
        );
        // Only what happened in the window.
        let late: Vec<String> = journal_events(id, &entries, t + 25)
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(late, [format!("{id}.unstuck.1"), format!("{id}.stuck.3")]);
        // A live notice takes the journal's id: the stuck record at or before it.
        // (`SagaNotice` is built by the engine only: the hook's event by hand.)
        let base = journal_events(id, &entries, 0).remove(0);
        let live = |event: &str, at_ms: u64| {
            let mut e = base.clone();
            e.event = event.into();
            e.event_id = format!("{id}.{event}.t{at_ms}");
            e.at_ms = at_ms;
            if event == "unstuck" {
                e.state = "running".into();
                e.reason = None;
            }
            e
        };
        let s1 = journal_form(&live("stuck", t + 21), &entries).unwrap();
        assert_eq!(s1.event_id, format!("{id}.stuck.1"));
        assert_eq!(
            s1,
            journal_events(id, &entries, 0)[0],
            "the same body as re-derived"
        );
        let u1 = journal_form(&live("unstuck", t + 31), &entries).unwrap();
        assert_eq!(
            (u1.event_id.as_str(), u1.at_ms),
            (format!("{id}.unstuck.1").as_str(), t + 30)
        );
        // A restart resuming the second stuck: no record left it yet.
        let u2 = journal_form(&live("unstuck", t + 90), &entries).unwrap();
        assert_eq!(
            (u2.event_id.as_str(), u2.at_ms),
            (format!("{id}.unstuck.3").as_str(), t + 90)
        );
    }

    #[tokio::test]
    async fn reconcile_re_derives_a_stuck_event_the_hook_missed_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = MemoryJournal::new();
        let events = cfg(dir.path()).events;
        let now = now_ms();
        let ob = Outbox::open(&cfg(dir.path()).outbox).unwrap();
        assert!(reconcile(&ob, &j, &events, now)
            .await
            .unwrap()
            .enqueued
            .is_empty());
        // The hook told the first stuck (it is in the outbox); the worker
        // died before the outbox heard of the resume and the second stuck.
        let (id, entries) = stuck_twice(now + 100);
        j.append_batch(id, &entries, false).await.unwrap();
        let told = journal_events(id, &entries, 0).remove(0);
        assert!(ob.put(&told, now).unwrap().is_some());
        let r = reconcile(&ob, &j, &events, now + 200).await.unwrap();
        assert_eq!(r.enqueued, ["unstuck", "stuck"]);
        let ids: BTreeSet<String> = ob.all_pending().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            ids,
            [
                format!("{id}.stuck.1"),
                format!("{id}.unstuck.1"),
                format!("{id}.stuck.3")
            ]
            .into_iter()
            .collect()
        );
        // Again: nothing new; and only the configured events.
        assert!(reconcile(&ob, &j, &events, now + 300)
            .await
            .unwrap()
            .enqueued
            .is_empty());
    }
}
