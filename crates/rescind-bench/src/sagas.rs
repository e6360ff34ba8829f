//! `rescind-bench sagas`: the generic two-step saga on every journal mode and
//! the built-in sagas against the simulator, at several concurrencies, plus
//! the raw-call and single-writer flush references.

use crate::bare;
use crate::builtin::{self, Workload};
use crate::custom::{self, PostExecutor, TwoPosts};
use crate::driver::{closed_loop, InputFn, JournalMode};
use crate::procs;
use crate::stats::{median, median_run, RunSummary, Samples};
use anyhow::{anyhow, Result};
use rescind_core::{
    Action, Engine, Entry, Limits, OrderRef, Record, SagaId, SagaInput, StepOutcome, Via,
};
use rescind_journal_sled::Durability;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Clone, Debug)]
pub struct SagasOpts {
    /// Concurrencies, e.g. 1, 64, 256, 1024.
    pub concurrency: Vec<usize>,
    /// Measured seconds per row.
    pub secs: f64,
    /// Unmeasured warm-up seconds per row.
    pub warmup_secs: f64,
    /// Repetitions (medians are reported).
    pub reps: usize,
    /// Run the generic two-step saga.
    pub custom: bool,
    /// Run the built-in sagas against the simulator.
    pub builtin: bool,
    /// Where journals go (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

/// One row of the custom-saga table.
#[derive(Debug, Serialize)]
pub struct CustomRow {
    /// Sagas in flight.
    pub concurrency: usize,
    /// Journal mode key.
    pub mode: String,
    /// Journal mode label.
    pub label: String,
    /// Median run.
    pub run: RunSummary,
    /// Throughput of every repetition.
    pub per_sec_runs: Vec<f64>,
    /// Median over repetitions of (this / flush-per-append at the same
    /// durability in the same repetition); sled group-commit rows only.
    pub vs_baseline: Option<f64>,
    /// Median over repetitions of (this / the bare group-commit loop in the
    /// same repetition); sled group-commit rows at power-loss durability only
    /// (the bare loop's durability).
    pub vs_bare: Option<f64>,
}

/// The label of the bare group-commit loop's row.
pub const BARE_LABEL: &str = "bare group-commit loop (no engine), power-loss";

/// One row of the built-in table.
#[derive(Debug, Serialize)]
pub struct BuiltinRow {
    /// Workload key.
    pub saga: String,
    /// Workload label.
    pub label: String,
    /// Upstream calls one saga makes.
    pub upstream_calls: String,
    /// Durable journal writes one saga makes.
    pub durable_writes: u32,
    /// Sagas in flight.
    pub concurrency: usize,
    /// Median run.
    pub run: RunSummary,
    /// Throughput of every repetition.
    pub per_sec_runs: Vec<f64>,
}

/// Per-append latency of one writer (each append waits to be durable).
#[derive(Debug, Serialize)]
pub struct SingleWriter {
    /// Journal mode key.
    pub mode: String,
    /// Appends measured.
    pub appends: usize,
    /// p50 µs.
    pub p50_us: u64,
    /// Mean µs.
    pub mean_us: f64,
}

/// Everything `sagas` measured.
#[derive(Debug, Serialize)]
pub struct SagasReport {
    /// Options in force (seconds, reps).
    pub options: Value,
    /// Raw `POST /step` to the upstream, one at a time, no engine: p50 µs.
    pub raw_post_p50_us: u64,
    /// Same, mean µs.
    pub raw_post_mean_us: f64,
    /// One writer appending to sled, per mode.
    pub single_writer: Vec<SingleWriter>,
    /// Generic two-step saga rows.
    pub custom: Vec<CustomRow>,
    /// Engine overhead per step at concurrency 1: (saga mean − executor mean) / 2, µs, per mode.
    pub overhead_per_step_us: Vec<(String, f64)>,
    /// Built-in saga rows.
    pub builtin: Vec<BuiltinRow>,
}

/// The journal modes of the custom saga, in table order.
pub fn custom_modes() -> Vec<JournalMode> {
    vec![
        JournalMode::Group(Durability::PowerLoss),
        JournalMode::FlushPerAppend(Durability::PowerLoss),
        JournalMode::Group(Durability::Process),
        JournalMode::FlushPerAppend(Durability::Process),
        JournalMode::Memory,
    ]
}

fn tempdir(base: &Option<PathBuf>) -> Result<tempfile::TempDir> {
    Ok(match base {
        Some(b) => tempfile::tempdir_in(b)?,
        None => tempfile::tempdir()?,
    })
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))
}

async fn raw_post(client: &reqwest::Client, url: &str, secs: f64) -> Result<Samples> {
    let mut s = Samples::with_capacity(16 * 1024);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let payload = json!({"n": 0});
    // Warm the connection first.
    custom::post(client, url, &payload)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    while Instant::now() < until {
        let t0 = Instant::now();
        custom::post(client, url, &payload)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        s.push(t0.elapsed());
    }
    Ok(s)
}

async fn single_writer(mode: JournalMode, secs: f64, base: &Option<PathBuf>) -> Result<Samples> {
    let tmp = tempdir(base)?;
    let j = mode.open(&tmp.path().join("j")).await?;
    let mut s = Samples::with_capacity(16 * 1024);
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while Instant::now() < until {
        let id = SagaId::new_random();
        let order = OrderRef::new("bench", format!("O{i}").as_str());
        let recs = [
            Record::Started {
                input: SagaInput::custom(custom::KIND, order, Value::Null),
                by: None,
            },
            Record::Intent {
                step: 0,
                action: Action::Custom(rescind_core::action::Custom {
                    name: custom::EXECUTOR.into(),
                    payload: json!({"n": 0}),
                }),
            },
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::Custom {
                    value: json!({"ok": true, "n": 0}),
                },
                via: Via::Reply,
                attempts: 1,
            },
        ];
        for (seq, record) in recs.into_iter().enumerate() {
            let e = Entry {
                seq: seq as u64,
                at_ms: 1_700_000_000_000,
                record,
            };
            let t0 = Instant::now();
            j.journal.append(id, &e).await?;
            s.push(t0.elapsed());
        }
        i += 1;
    }
    Ok(s)
}

pub(crate) fn bench_limits() -> Limits {
    Limits {
        in_flight_max: 4096,
        attempts_max: 20,
        backoff_initial_ms: 20,
        backoff_max_ms: 500,
        refund_poll_initial_ms: 1,
        refund_poll_max_ms: 20,
        ..Limits::default()
    }
}

async fn run_custom(
    mode: JournalMode,
    concurrency: usize,
    o: &SagasOpts,
    client: &reqwest::Client,
    url: &str,
) -> Result<RunSummary> {
    let tmp = tempdir(&o.dir)?;
    let journal = mode.open(&tmp.path().join("j")).await?;
    let exec = Arc::new(PostExecutor::new(client.clone(), url.to_owned()));
    // The worker's metrics sink, so the figures include what labelled
    // metrics cost on the hot path.
    let engine = Engine::builder(journal.journal.clone())
        .saga(TwoPosts)
        .executor(custom::EXECUTOR, exec.clone())
        .limits(bench_limits())
        .metrics(Arc::new(rescind::metrics::WorkerMetrics::default()))
        .build();
    let inputs: InputFn = Arc::new(|i| {
        Some(SagaInput::custom(
            custom::KIND,
            OrderRef::new("bench", format!("O{i:09}").as_str()),
            Value::Null,
        ))
    });
    let mut run = closed_loop(
        &engine,
        &journal,
        concurrency,
        Duration::from_secs_f64(o.warmup_secs),
        Duration::from_secs_f64(o.secs),
        inputs,
    )
    .await?;
    let done = engine.stats().completed.max(1);
    run.executor_us_per_saga = exec.busy_ns() as f64 / 1000.0 / done as f64;
    drop(engine);
    drop(journal);
    Ok(run)
}

async fn run_builtin(
    w: Workload,
    row: u32,
    concurrency: usize,
    o: &SagasOpts,
    sim_url: &str,
    admin: &reqwest::Client,
) -> Result<RunSummary> {
    let pool = (((o.warmup_secs + o.secs) * 12_000.0).ceil() as u64).max(2000);
    let inputs = builtin::seed(admin, sim_url, w, row, pool).await?;
    let inputs = Arc::new(inputs);
    let tmp = tempdir(&o.dir)?;
    let journal = JournalMode::Group(Durability::PowerLoss)
        .open(&tmp.path().join("j"))
        .await?;
    let engine = Engine::builder(journal.journal.clone())
        .channels(builtin::channels(sim_url, admin.clone())?)
        .limits(bench_limits())
        .build();
    let supply = inputs.clone();
    let f: InputFn = Arc::new(move |i| supply.get(i as usize).cloned());
    let run = closed_loop(
        &engine,
        &journal,
        concurrency,
        Duration::from_secs_f64(o.warmup_secs),
        Duration::from_secs_f64(o.secs),
        f,
    )
    .await?;
    if engine.stats().started + concurrency as u64 >= pool {
        eprintln!(
            "  warning: {} ran out of seeded orders ({pool}); the row is cut short",
            w.key()
        );
    }
    Ok(run)
}

fn fmt_row(r: &RunSummary) -> String {
    format!(
        "{:>9.0} | {:>8.2} | {:>8.2} | {:>6.1}",
        r.per_sec,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.batch
    )
}

/// Run everything `o` asks for.
pub async fn run(o: &SagasOpts) -> Result<SagasReport> {
    let client = http_client()?;
    let mut report = SagasReport {
        options: json!({"secs": o.secs, "warmup_secs": o.warmup_secs, "reps": o.reps, "concurrency": o.concurrency}),
        raw_post_p50_us: 0,
        raw_post_mean_us: 0.0,
        single_writer: Vec::new(),
        custom: Vec::new(),
        overhead_per_step_us: Vec::new(),
        builtin: Vec::new(),
    };
    if o.custom {
        let up = procs::start_upstream().await?;
        let url = format!("{}/step", up.url);
        let mut raw = raw_post(&client, &url, o.secs.min(3.0)).await?;
        report.raw_post_p50_us = raw.quantile_us(0.5);
        report.raw_post_mean_us = raw.mean_us();
        eprintln!(
            "raw POST (no engine, no journal), one at a time: p50 {} µs, mean {:.0} µs",
            report.raw_post_p50_us, report.raw_post_mean_us
        );
        for mode in [
            JournalMode::FlushPerAppend(Durability::PowerLoss),
            JournalMode::FlushPerAppend(Durability::Process),
            JournalMode::Group(Durability::PowerLoss),
        ] {
            let mut s = single_writer(mode, o.secs.min(2.0), &o.dir).await?;
            eprintln!(
                "one writer, {}: p50 {} µs, mean {:.0} µs per durable append",
                mode.label(),
                s.quantile_us(0.5),
                s.mean_us()
            );
            report.single_writer.push(SingleWriter {
                mode: mode.key(),
                appends: s.len(),
                p50_us: s.quantile_us(0.5),
                mean_us: s.mean_us(),
            });
        }
        eprintln!("\ngeneric two-step saga (2 POSTs, 4 durable writes per saga)");
        eprintln!("conc | journal | sagas/s | p50 ms | p99 ms | batch");
        let modes = custom_modes();
        for &c in &o.concurrency {
            // runs[mode][rep]
            let mut runs: Vec<Vec<RunSummary>> = vec![Vec::new(); modes.len()];
            let mut bare_runs: Vec<RunSummary> = Vec::new();
            for _rep in 0..o.reps.max(1) {
                for (mi, &m) in modes.iter().enumerate() {
                    let r = run_custom(m, c, o, &client, &url).await?;
                    eprintln!("{c:>5} | {:<38} | {}", m.label(), fmt_row(&r));
                    runs[mi].push(r);
                }
                let tmp = tempdir(&o.dir)?;
                let r = bare::run_bare(
                    &tmp.path().join("j"),
                    c,
                    Duration::from_secs_f64(o.warmup_secs),
                    Duration::from_secs_f64(o.secs),
                    &client,
                    &url,
                )
                .await?;
                eprintln!("{c:>5} | {:<38} | {}", BARE_LABEL, fmt_row(&r));
                bare_runs.push(r);
            }
            for (mi, &m) in modes.iter().enumerate() {
                let vs = match m {
                    JournalMode::Group(d) => {
                        let base = modes
                            .iter()
                            .position(|x| *x == JournalMode::FlushPerAppend(d))
                            .map(|bi| &runs[bi]);
                        base.map(|b| {
                            median(
                                runs[mi]
                                    .iter()
                                    .zip(b)
                                    .map(|(g, f)| g.per_sec / f.per_sec.max(1e-9))
                                    .collect(),
                            )
                        })
                    }
                    _ => None,
                };
                let vs_bare = match m {
                    JournalMode::Group(Durability::PowerLoss) => Some(median(
                        runs[mi]
                            .iter()
                            .zip(&bare_runs)
                            .map(|(g, b)| g.per_sec / b.per_sec.max(1e-9))
                            .collect(),
                    )),
                    _ => None,
                };
                let per_sec_runs = runs[mi].iter().map(|r| r.per_sec).collect();
                let run =
                    median_run(std::mem::take(&mut runs[mi])).ok_or_else(|| anyhow!("no runs"))?;
                if c == 1 {
                    let over = (run.mean_us - run.executor_us_per_saga) / 2.0;
                    report.overhead_per_step_us.push((m.key(), over));
                }
                report.custom.push(CustomRow {
                    concurrency: c,
                    mode: m.key(),
                    label: m.label(),
                    run,
                    per_sec_runs,
                    vs_baseline: vs,
                    vs_bare,
                });
            }
            let per_sec_runs = bare_runs.iter().map(|r| r.per_sec).collect();
            report.custom.push(CustomRow {
                concurrency: c,
                mode: "bare-power-loss".into(),
                label: BARE_LABEL.into(),
                run: median_run(bare_runs).ok_or_else(|| anyhow!("no bare runs"))?,
                per_sec_runs,
                vs_baseline: None,
                vs_bare: None,
            });
        }
        drop(up);
    }
    if o.builtin {
        let sim = procs::start_sim().await?;
        let admin = http_client()?;
        eprintln!("\nbuilt-in sagas against the simulator (separate process), sled group commit, power-loss");
        let mut row = 0u32;
        for w in Workload::ALL {
            for &c in &o.concurrency {
                let mut runs = Vec::new();
                for _ in 0..o.reps.max(1) {
                    row += 1;
                    let r = run_builtin(w, row, c, o, &sim.url, &admin).await?;
                    eprintln!("{c:>5} | {:<50} | {}", w.label(), fmt_row(&r));
                    runs.push(r);
                }
                let per_sec_runs = runs.iter().map(|r| r.per_sec).collect();
                let run = median_run(runs).ok_or_else(|| anyhow!("no runs"))?;
                report.builtin.push(BuiltinRow {
                    saga: w.key().into(),
                    label: w.label().into(),
                    upstream_calls: w.upstream_calls().into(),
                    durable_writes: w.durable_writes(),
                    concurrency: c,
                    run,
                    per_sec_runs,
                });
            }
        }
        drop(sim);
    }
    Ok(report)
}
