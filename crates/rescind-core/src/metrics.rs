//! Engine counters and a step-latency histogram, cheap enough for the hot path.

use crate::record::SagaOutcome;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (ms) of the step-latency histogram buckets; the last bucket is +Inf.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000, 30_000];

/// Live counters (atomics).
#[derive(Debug, Default)]
pub struct EngineStats {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    aborted: AtomicU64,
    stuck: AtomicU64,
    retries: AtomicU64,
    in_doubt: AtomicU64,
    resolved_by_lookup: AtomicU64,
    waiting_on_channel: AtomicU64,
    steps: AtomicU64,
    latency_sum_ms: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
}

/// A point-in-time copy of the counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Sagas started by this engine.
    pub started: u64,
    /// Sagas that finished completed.
    pub completed: u64,
    /// Sagas that finished failed.
    pub failed: u64,
    /// Sagas that finished aborted.
    pub aborted: u64,
    /// Sagas that became stuck.
    pub stuck: u64,
    /// Retryable failures retried.
    pub retries: u64,
    /// In-doubt steps met on resume.
    pub in_doubt: u64,
    /// In-doubt steps a lookup found already applied.
    pub resolved_by_lookup: u64,
    /// Channel calls made.
    pub steps: u64,
    /// Sum of call latencies (ms).
    pub latency_sum_ms: u64,
    /// Calls per latency bucket ([`LATENCY_BUCKETS_MS`], then +Inf).
    pub latency_buckets: Vec<u64>,
    /// Sagas in this engine now (with a task, or parked).
    pub running: usize,
    /// Of those, sagas parked without a task (waiting for a refund).
    pub parked: usize,
    /// Sagas holding an in-flight slot (driving steps) now.
    pub in_flight: usize,
    /// Sagas this engine left stuck and nobody resumed since.
    pub stuck_now: usize,
    /// Sagas waiting now, without an in-flight slot, for the wait a channel
    /// asked for (a TOP ban) or a long back-off (`park_after_ms` or more).
    pub waiting_on_channel: u64,
}

impl EngineStats {
    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Relaxed);
    }
    pub(crate) fn finished(&self, o: &SagaOutcome) {
        match o {
            SagaOutcome::Completed { .. } => &self.completed,
            SagaOutcome::Failed { .. } => &self.failed,
            SagaOutcome::Aborted { .. } => &self.aborted,
        }
        .fetch_add(1, Relaxed);
    }
    pub(crate) fn stuck(&self) {
        self.stuck.fetch_add(1, Relaxed);
    }
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }
    pub(crate) fn in_doubt(&self) {
        self.in_doubt.fetch_add(1, Relaxed);
    }
    pub(crate) fn channel_wait_began(&self) {
        self.waiting_on_channel.fetch_add(1, Relaxed);
    }
    pub(crate) fn channel_wait_ended(&self) {
        self.waiting_on_channel.fetch_sub(1, Relaxed);
    }
    pub(crate) fn resolved_by_lookup(&self) {
        self.resolved_by_lookup.fetch_add(1, Relaxed);
    }
    pub(crate) fn step_latency(&self, ms: u64) {
        self.steps.fetch_add(1, Relaxed);
        self.latency_sum_ms.fetch_add(ms, Relaxed);
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Relaxed);
    }
    /// Copy the counters.
    pub fn snapshot(
        &self,
        running: usize,
        parked: usize,
        in_flight: usize,
        stuck_now: usize,
    ) -> StatsSnapshot {
        StatsSnapshot {
            started: self.started.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            aborted: self.aborted.load(Relaxed),
            stuck: self.stuck.load(Relaxed),
            retries: self.retries.load(Relaxed),
            in_doubt: self.in_doubt.load(Relaxed),
            resolved_by_lookup: self.resolved_by_lookup.load(Relaxed),
            steps: self.steps.load(Relaxed),
            latency_sum_ms: self.latency_sum_ms.load(Relaxed),
            latency_buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            running,
            parked,
            in_flight,
            stuck_now,
            waiting_on_channel: self.waiting_on_channel.load(Relaxed),
        }
    }
}

/// Upper bounds (ms) of the saga-duration histogram buckets; the last bucket is +Inf.
pub const SAGA_DURATION_BUCKETS_MS: [u64; 12] = [
    10, 50, 100, 250, 500, 1_000, 5_000, 30_000, 60_000, 300_000, 3_600_000, 86_400_000,
];

/// What a channel call came to, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallResult {
    /// The call succeeded.
    Ok,
    /// The channel said the effect was already in place.
    AlreadyDone,
    /// A retryable failure that certainly did not apply.
    Retryable,
    /// A retryable failure that may have applied (timeout, lost reply).
    InDoubt,
    /// The state moved upstream (the saga re-plans).
    Conflict,
    /// A permanent refusal.
    Permanent,
}

impl CallResult {
    /// The label value: `ok`, `already_done`, `retryable`, `in_doubt`, `conflict`, `permanent`.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Ok => "ok",
            CallResult::AlreadyDone => "already_done",
            CallResult::Retryable => "retryable",
            CallResult::InDoubt => "in_doubt",
            CallResult::Conflict => "conflict",
            CallResult::Permanent => "permanent",
        }
    }

    /// The result of a call that answered `r`.
    pub fn of<T>(r: &Result<T, crate::channel::ChannelError>) -> CallResult {
        use crate::channel::{Applied, ErrorClass};
        match r {
            Ok(_) => CallResult::Ok,
            Err(e) => match &e.class {
                ErrorClass::Retryable {
                    applied: Applied::Maybe,
                    ..
                } => CallResult::InDoubt,
                ErrorClass::Retryable { .. } => CallResult::Retryable,
                ErrorClass::AlreadyDone => CallResult::AlreadyDone,
                ErrorClass::Conflict(_) => CallResult::Conflict,
                ErrorClass::Permanent(_) => CallResult::Permanent,
            },
        }
    }
}

/// How a saga left this engine, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SagaEnd {
    /// Finished completed.
    Completed,
    /// Finished failed.
    Failed,
    /// Finished aborted.
    Aborted,
    /// Stopped for an operator (unfinished, resumable).
    Stuck,
}

impl SagaEnd {
    /// The label value: `completed`, `failed`, `aborted`, `stuck`.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaEnd::Completed => "completed",
            SagaEnd::Failed => "failed",
            SagaEnd::Aborted => "aborted",
            SagaEnd::Stuck => "stuck",
        }
    }
    pub(crate) fn of(o: &SagaOutcome) -> SagaEnd {
        match o {
            SagaOutcome::Completed { .. } => SagaEnd::Completed,
            SagaOutcome::Failed { .. } => SagaEnd::Failed,
            SagaOutcome::Aborted { .. } => SagaEnd::Aborted,
        }
    }
}

/// One thing the engine reports to a [`MetricsSink`], as it happens. Label
/// values are borrowed: a sink that keeps them copies only what it needs.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum MetricEvent<'a> {
    /// A saga's first record is durable.
    SagaStarted {
        /// The saga kind (`cancel_unpaid`, …, or a user kind).
        kind: &'a str,
        /// The order's channel.
        channel: &'a str,
    },
    /// A saga's task ended finished or stuck.
    SagaEnded {
        /// The saga kind as started.
        kind: &'a str,
        /// The order's channel.
        channel: &'a str,
        /// How it ended.
        end: SagaEnd,
        /// From its first record to now (journal time, across restarts).
        duration_ms: u64,
    },
    /// One channel call of a step (lookups are not counted here).
    Call {
        /// The channel called (the stock lock's channel for `release_stock`).
        channel: &'a str,
        /// The action's name.
        action: &'a str,
        /// What it came to.
        result: CallResult,
        /// How long it took.
        latency_ms: u64,
    },
    /// A channel call or lookup failed with the channel's error.
    UpstreamError {
        /// The channel called.
        channel: &'a str,
        /// The channel's code, if it gave one.
        code: Option<&'a str>,
        /// The channel's sub-code (TOP `sub_code`), if it gave one.
        sub_code: Option<&'a str>,
    },
}

/// Receives the engine's [`MetricEvent`]s (`EngineBuilder::metrics`). Called
/// on the saga's task, so it must be cheap and must not block; a sink that
/// exports to Prometheus increments labelled counters here.
pub trait MetricsSink: Send + Sync + 'static {
    /// One event.
    fn record(&self, event: MetricEvent<'_>);
}

/// A bucketed histogram of atomics, for hot paths that must not lock.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: AtomicU64,
}

/// A copy of an [`AtomicHistogram`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    /// Upper bounds of the buckets (the last, +Inf, is implied).
    pub bounds: Vec<u64>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` of them.
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observed values.
    pub sum: u64,
}

impl AtomicHistogram {
    /// An empty histogram over these upper bounds (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        AtomicHistogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
    /// Count one value.
    pub fn observe(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }
    /// Copy it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            count: self.count.load(Relaxed),
            sum: self.sum.load(Relaxed),
        }
    }
}

/// Upper bounds of the group-size histogram (records per group commit).
pub const GROUP_SIZE_BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
/// Upper bounds (µs) of the journal flush-latency histogram.
pub const FLUSH_LATENCY_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 500_000, 1_000_000,
];

/// A journal's group commits: how many records each wrote and how long its
/// flush (sled: flush + fdatasync; PostgreSQL: the commit) took. Kept by the
/// committer, read by `Journal::group_commits` on each scrape.
#[derive(Debug)]
pub struct GroupCommitStats {
    /// Records (or requests) per group commit.
    pub group_size: AtomicHistogram,
    /// Duration of each group commit's flush, in microseconds.
    pub flush_us: AtomicHistogram,
}

impl Default for GroupCommitStats {
    fn default() -> Self {
        GroupCommitStats {
            group_size: AtomicHistogram::new(&GROUP_SIZE_BUCKETS),
            flush_us: AtomicHistogram::new(&FLUSH_LATENCY_BUCKETS_US),
        }
    }
}

impl GroupCommitStats {
    /// One group commit of `size` records whose flush took `flush_us`.
    pub fn observe(&self, size: u64, flush_us: u64) {
        self.group_size.observe(size);
        self.flush_us.observe(flush_us);
    }
    /// Copy both histograms.
    pub fn snapshot(&self) -> GroupCommitSnapshot {
        GroupCommitSnapshot {
            group_size: self.group_size.snapshot(),
            flush_us: self.flush_us.snapshot(),
        }
    }
}

/// A copy of [`GroupCommitStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupCommitSnapshot {
    /// Records per group commit.
    pub group_size: HistogramSnapshot,
    /// Flush duration (µs).
    pub flush_us: HistogramSnapshot,
}
