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
    pub fn snapshot(&self, running: usize, parked: usize) -> StatsSnapshot {
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
        }
    }
}
