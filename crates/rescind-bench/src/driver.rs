//! Journals under test and the closed-loop driver: N sagas in flight
//! continuously for a fixed time, each started as soon as the last ended.

use crate::stats::{RunSummary, Samples};
use anyhow::{Context, Result};
use rescind_core::{Engine, Journal, MemoryJournal, SagaExit, SagaInput, SagaOutcome};
use rescind_journal_sled::{Durability, SledConfig, SledJournal};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which journal a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalMode {
    /// `MemoryJournal`: no I/O; the engine's own ceiling.
    Memory,
    /// Sled with group commit (the default configuration) at this durability.
    Group(Durability),
    /// Sled with one flush per append (the baseline) at this durability.
    FlushPerAppend(Durability),
}

fn durability_label(d: Durability) -> &'static str {
    match d {
        Durability::Process => "process",
        Durability::PowerLoss => "power-loss",
    }
}

impl JournalMode {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            JournalMode::Memory => "in-memory journal (no I/O)".into(),
            JournalMode::Group(d) => format!("sled group commit, {}", durability_label(*d)),
            JournalMode::FlushPerAppend(d) => {
                format!("sled flush-per-append, {}", durability_label(*d))
            }
        }
    }
    /// A key for JSON and charts.
    pub fn key(&self) -> String {
        match self {
            JournalMode::Memory => "memory".into(),
            JournalMode::Group(d) => format!("group-{}", durability_label(*d)),
            JournalMode::FlushPerAppend(d) => format!("fpa-{}", durability_label(*d)),
        }
    }
    /// Open a fresh journal of this kind under `dir` (must be empty).
    pub async fn open(&self, dir: &Path) -> Result<OpenedJournal> {
        let cfg = |d: Durability| SledConfig::default().with_durability(d);
        let sled = match self {
            JournalMode::Memory => {
                return Ok(OpenedJournal {
                    journal: Arc::new(MemoryJournal::new()),
                    sled: None,
                })
            }
            JournalMode::Group(d) => SledJournal::open(dir, cfg(*d)).await,
            JournalMode::FlushPerAppend(d) => {
                SledJournal::open(dir, cfg(*d).flush_per_append()).await
            }
        }
        .with_context(|| format!("cannot open a sled journal in {}", dir.display()))?;
        let sled = Arc::new(sled);
        Ok(OpenedJournal {
            journal: sled.clone(),
            sled: Some(sled),
        })
    }
}

/// An opened journal, with the sled handle for its batching counters.
pub struct OpenedJournal {
    /// As the engine takes it.
    pub journal: Arc<dyn Journal>,
    /// The same journal when it is sled.
    pub sled: Option<Arc<SledJournal>>,
}

impl OpenedJournal {
    /// (flushes, records) so far; zeros for the memory journal.
    pub fn counters(&self) -> (u64, u64) {
        self.sled
            .as_ref()
            .map(|s| {
                let c = s.commit_counters();
                (c.flushes, c.records)
            })
            .unwrap_or((0, 0))
    }
}

/// Makes the input of saga number `i`; `None` when the supply ran out.
pub type InputFn = Arc<dyn Fn(u64) -> Option<SagaInput> + Send + Sync>;

/// Run `concurrency` sagas continuously: `warmup` unmeasured, then `window`
/// measured. Throughput counts sagas that finished inside the window; latency
/// is start → finished of those sagas.
pub async fn closed_loop(
    engine: &Engine,
    journal: &OpenedJournal,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    inputs: InputFn,
) -> Result<RunSummary> {
    let counter = Arc::new(AtomicU64::new(0));
    let t_start = Instant::now();
    let measure_from = t_start + warmup;
    let deadline = measure_from + window;
    let mut tasks = Vec::with_capacity(concurrency);
    let flush0 = Arc::new(std::sync::Mutex::new(None::<(u64, u64)>));
    for _ in 0..concurrency.max(1) {
        let engine = engine.clone();
        let counter = counter.clone();
        let inputs = inputs.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(4096);
            let mut failed = 0usize;
            let mut first_failure = None;
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs(i) else { break };
                let t0 = Instant::now();
                let r = engine.run(input).await;
                let t1 = Instant::now();
                let in_window = t1 >= measure_from && t1 <= deadline;
                match r {
                    Ok((_, SagaExit::Finished(SagaOutcome::Completed { .. }))) => {
                        if in_window {
                            samples.push(t1 - t0);
                        }
                    }
                    other => {
                        failed += 1;
                        if first_failure.is_none() {
                            first_failure = Some(format!("{other:?}"));
                        }
                    }
                }
            }
            (samples, failed, first_failure)
        }));
    }
    // Sample the batching counters at the window's start.
    {
        let flush0 = flush0.clone();
        tokio::time::sleep_until(measure_from.into()).await;
        *flush0.lock().unwrap_or_else(|p| p.into_inner()) = Some(journal.counters());
    }
    tokio::time::sleep_until(deadline.into()).await;
    let (f1, r1) = journal.counters();
    let (mut all, failed) = crate::stats::gather(tasks, "driver").await?;
    let (f0, r0) = flush0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or((0, 0));
    let batch = if f1 > f0 {
        (r1 - r0) as f64 / (f1 - f0) as f64
    } else {
        0.0
    };
    let n = all.len();
    Ok(RunSummary {
        sagas: n,
        failed,
        per_sec: n as f64 / window.as_secs_f64(),
        p50_us: all.quantile_us(0.50),
        p99_us: all.quantile_us(0.99),
        mean_us: all.mean_us(),
        batch,
        executor_us_per_saga: 0.0,
    })
}
