//! `rescind-bench grows`: does the two-step saga slow down as the journal
//! fills with finished sagas? (issue 18, item 5)
//!
//! For each size N in `--finished` a sled journal is filled with N finished
//! two-step sagas (the same six records and finish mark a real run leaves,
//! finish times spread over the last day), closed, and reopened at the
//! default configuration (group commit, power-loss durability) with
//! retention on: finished sagas are kept 7 days, at most N + 1,000,000 of
//! them, so compaction runs and deletes nothing. Then, repetition by
//! repetition and size by size, the closed loop of the `sagas` subcommand
//! runs the generic two-step saga at `--concurrency` in flight while one
//! compaction pass (what a worker runs every `compact_interval`) runs beside
//! it. Printed: sagas/s, p50 and p99 per size, the ratio of each size to the
//! empty journal in the same repetition (median over repetitions), and how
//! long the compaction pass took.

use crate::custom::{self, PostExecutor, TwoPosts};
use crate::driver::{closed_loop, InputFn, OpenedJournal};
use crate::procs;
use crate::sagas::bench_limits;
use crate::stats::{median, median_run, RunSummary};
use anyhow::{anyhow, Context, Result};
use rescind_core::{
    Action, Engine, Entry, Journal, OrderRef, Record, SagaId, SagaInput, SagaOutcome, StepOutcome,
    Via,
};
use rescind_journal_sled::{Durability, Retention, SledConfig, SledJournal};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of the `grows` subcommand.
pub struct GrowsOpts {
    /// Journal sizes (finished sagas already in it).
    pub finished: Vec<u64>,
    /// Sagas in flight.
    pub concurrency: usize,
    /// Measured seconds per row.
    pub secs: f64,
    /// Repetitions.
    pub reps: usize,
    /// Where the journals go (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

/// Sagas written per `append_many` call while filling.
const FILL_CHUNK: u64 = 2_000;
/// Concurrent fill calls (the committer batches them).
const FILL_TASKS: u64 = 8;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Saga `n` of the fill, finished `age_ms` ago: the six records a two-step
/// saga journals, ids out of the way of the engine's random ones.
fn finished_saga(n: u64, at_ms: u64) -> (SagaId, Vec<Entry>, bool) {
    let saga = SagaId::from_u128((0xf111u128 << 112) | u128::from(n));
    let input = SagaInput::custom(
        custom::KIND,
        OrderRef::new("bench", format!("F{n:010}").as_str()),
        Value::Null,
    );
    let order = input.order_state.clone();
    let intent = |step: u32| Record::Intent {
        step,
        action: Action::custom(custom::EXECUTOR, json!({ "n": step })),
    };
    let outcome = |step: u32| Record::Outcome {
        step,
        outcome: StepOutcome::Custom {
            value: json!({ "ok": true, "n": step }),
        },
        via: Via::Reply,
        attempts: 1,
    };
    let records = [
        Record::Started { input, by: None },
        intent(0),
        outcome(0),
        intent(1),
        outcome(1),
        Record::Finished {
            outcome: SagaOutcome::Completed { order, note: None },
        },
    ];
    let entries = records
        .into_iter()
        .enumerate()
        .map(|(seq, record)| Entry {
            seq: seq as u64,
            at_ms: at_ms + seq as u64,
            record,
        })
        .collect();
    (saga, entries, true)
}

fn config(finished: u64) -> SledConfig {
    SledConfig::default().with_retention(Retention {
        finished_keep_max: usize::try_from(finished + 1_000_000).unwrap_or(usize::MAX),
        finished_keep_age_ms: 7 * 24 * 60 * 60 * 1000,
    })
}

/// Fill a fresh journal at `dir` with `n` finished sagas; returns how long it took.
async fn fill(dir: &Path, n: u64) -> Result<Duration> {
    let t = Instant::now();
    let j = SledJournal::open(dir, config(n).with_durability(Durability::Process))
        .await
        .with_context(|| format!("cannot open a sled journal in {}", dir.display()))?;
    let j = Arc::new(j);
    let next = Arc::new(AtomicU64::new(0));
    let end = now_ms();
    let day = 24 * 60 * 60 * 1000;
    let mut tasks = Vec::new();
    for _ in 0..FILL_TASKS {
        let (j, next) = (Arc::clone(&j), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(FILL_CHUNK, Ordering::Relaxed);
                if from >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let to = (from + FILL_CHUNK).min(n);
                let chunk: Vec<_> = (from..to)
                    .map(|i| finished_saga(i, end - day + i * day / n.max(1)))
                    .collect();
                j.append_many(&chunk)
                    .await
                    .map_err(|e| anyhow!("filling sagas {from}..{to}: {e}"))?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("fill task: {e}"))??;
    }
    let j = Arc::try_unwrap(j).map_err(|_| anyhow!("the fill journal is still shared"))?;
    j.close().await?;
    Ok(t.elapsed())
}

struct Sized {
    finished: u64,
    journal: Arc<SledJournal>,
    runs: Vec<RunSummary>,
    compact_ms: Vec<f64>,
    ratios: Vec<f64>,
}

async fn run_one(
    s: &Sized,
    o: &GrowsOpts,
    client: &reqwest::Client,
    url: &str,
    rep: usize,
) -> Result<(RunSummary, f64)> {
    let opened = OpenedJournal {
        journal: s.journal.clone(),
        sled: Some(s.journal.clone()),
    };
    let exec = Arc::new(PostExecutor::new(client.clone(), url.to_owned()));
    let engine = Engine::builder(opened.journal.clone())
        .saga(TwoPosts)
        .executor(custom::EXECUTOR, exec)
        .limits(bench_limits())
        .metrics(Arc::new(rescind::metrics::WorkerMetrics::default()))
        .build();
    let prefix = format!("G{}r{rep}", s.finished);
    let inputs: InputFn = Arc::new(move |i| {
        Some(SagaInput::custom(
            custom::KIND,
            OrderRef::new("bench", format!("{prefix}-{i:09}").as_str()),
            Value::Null,
        ))
    });
    // One compaction pass beside the load, as a worker's timer would run it.
    let compactor = {
        let j = s.journal.clone();
        let warm = Duration::from_secs(1);
        tokio::spawn(async move {
            tokio::time::sleep(warm).await;
            let t = Instant::now();
            j.compact(now_ms()).await.map(|r| (t.elapsed(), r))
        })
    };
    let run = closed_loop(
        &engine,
        &opened,
        o.concurrency,
        Duration::from_secs(1),
        Duration::from_secs_f64(o.secs),
        inputs,
    )
    .await?;
    let (took, report) = compactor
        .await
        .map_err(|e| anyhow!("compaction task: {e}"))??;
    if report.sagas_removed != 0 {
        return Err(anyhow!(
            "compaction removed {} sagas: retention should keep them all",
            report.sagas_removed
        ));
    }
    if run.failed != 0 {
        return Err(anyhow!("{} sagas did not complete", run.failed));
    }
    Ok((run, took.as_secs_f64() * 1000.0))
}

/// Run the benchmark and print its table.
pub async fn run(o: &GrowsOpts) -> Result<()> {
    if o.finished.is_empty() || o.concurrency == 0 || o.secs <= 0.0 {
        return Err(anyhow!(
            "--finished needs at least one size, --concurrency and --secs must be positive"
        ));
    }
    let base = match &o.dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }?;
    let mut sized = Vec::new();
    for &n in &o.finished {
        let dir = base.path().join(format!("j{n}"));
        let took = fill(&dir, n).await?;
        let journal = SledJournal::open(&dir, config(n))
            .await
            .with_context(|| format!("cannot reopen {}", dir.display()))?;
        let opened_at = Instant::now();
        let stats = journal.stats().await?;
        eprintln!(
            "filled {n} finished sagas in {:.1} s; {:.1} MB on disk ({} B per saga); stats read in {:.0} ms",
            took.as_secs_f64(),
            stats.bytes_on_disk as f64 / 1e6,
            stats.bytes_on_disk.checked_div(n).unwrap_or(0),
            opened_at.elapsed().as_secs_f64() * 1000.0
        );
        sized.push(Sized {
            finished: n,
            journal: Arc::new(journal),
            runs: Vec::new(),
            compact_ms: Vec::new(),
            ratios: Vec::new(),
        });
    }
    let up = procs::start_upstream().await?;
    let url = format!("{}/step", up.url);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    for rep in 0..o.reps.max(1) {
        let mut first = None;
        for s in sized.iter_mut() {
            let (run, compact_ms) = run_one(s, o, &client, &url, rep).await?;
            eprintln!(
                "rep {rep}: {:>9} finished: {:>7.0} sagas/s, p50 {:.2} ms, p99 {:.2} ms; compaction pass {:.0} ms",
                s.finished,
                run.per_sec,
                run.p50_us as f64 / 1000.0,
                run.p99_us as f64 / 1000.0,
                compact_ms
            );
            let base_rate = *first.get_or_insert(run.per_sec);
            s.ratios
                .push(run.per_sec / base_rate.max(f64::MIN_POSITIVE));
            s.runs.push(run);
            s.compact_ms.push(compact_ms);
        }
    }
    println!(
        "\nTwo-step saga, {} in flight, sled group commit at power-loss durability, with a journal already holding N finished sagas (retention on; one compaction pass per run); medians of {}.\n",
        o.concurrency, o.reps
    );
    println!("| finished sagas in the journal | sagas/s | p50 ms | p99 ms | vs the first size (same rep) | compaction pass ms |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for s in sized {
        let Some(m) = median_run(s.runs) else {
            continue;
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.0} |",
            s.finished,
            m.per_sec,
            m.p50_us as f64 / 1000.0,
            m.p99_us as f64 / 1000.0,
            median(s.ratios),
            median(s.compact_ms)
        );
    }
    Ok(())
}
