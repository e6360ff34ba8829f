//! `rescind-bench pg`: the generic two-step saga on PostgreSQL with one and
//! with three workers, next to one sled worker, in the same run (issue 9).
//!
//! "Workers" are engines, each with its own `PgJournal` (its own worker id,
//! leases and connection pool) on one shared schema, as separate `rescind
//! worker` processes would be; they run in this process so one closed loop
//! can measure them together. The upstream is the same trivial HTTP server
//! (a separate process) as the `sagas` benchmark's.

use crate::custom::{self, PostExecutor, TwoPosts};
use crate::driver::{closed_loop, InputFn, JournalMode, OpenedJournal};
use crate::stats::{median, RunSummary};
use anyhow::{anyhow, Context, Result};
use rescind_core::{Engine, OrderRef, SagaInput};
use rescind_journal_postgres::{PgConfig, PgJournal};
use rescind_journal_sled::Durability;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Options of the `pg` benchmark.
pub struct PgOpts {
    /// `postgres://` URL (its password is never printed).
    pub url: String,
    /// Sagas in flight (split evenly over the workers).
    pub concurrency: usize,
    /// Measured seconds per row.
    pub secs: f64,
    /// Unmeasured seconds before each row.
    pub warmup_secs: f64,
    /// Repetitions; medians are reported.
    pub reps: usize,
}

fn inputs(worker: usize) -> InputFn {
    Arc::new(move |i| {
        Some(SagaInput::custom(
            custom::KIND,
            OrderRef::new("bench", format!("W{worker}-O{i:09}").as_str()),
            Value::Null,
        ))
    })
}

fn engine_on(journal: Arc<dyn rescind_core::Journal>, exec: Arc<PostExecutor>) -> Engine {
    Engine::builder(journal)
        .saga(TwoPosts)
        .executor(custom::EXECUTOR, exec)
        .limits(crate::sagas::bench_limits())
        .build()
}

/// Run `workers` engines at once, `concurrency / workers` sagas each; the
/// combined throughput, the median p50 and the worst p99.
async fn run_workers(
    journals: Vec<OpenedJournal>,
    o: &PgOpts,
    client: &reqwest::Client,
    url: &str,
) -> Result<RunSummary> {
    let n = journals.len().max(1);
    let mut runs = Vec::new();
    for (w, j) in journals.into_iter().enumerate() {
        let exec = Arc::new(PostExecutor::new(client.clone(), url.to_owned()));
        let engine = engine_on(j.journal.clone(), exec);
        let per = (o.concurrency / n).max(1);
        let (warm, win) = (
            Duration::from_secs_f64(o.warmup_secs),
            Duration::from_secs_f64(o.secs),
        );
        runs.push(tokio::spawn(async move {
            let r = closed_loop(&engine, &j, per, warm, win, inputs(w)).await;
            engine.kill();
            r
        }));
    }
    let mut all = Vec::new();
    for r in runs {
        all.push(r.await.context("a worker panicked")??);
    }
    let per_sec = all.iter().map(|r| r.per_sec).sum();
    Ok(RunSummary {
        sagas: all.iter().map(|r| r.sagas).sum(),
        failed: all.iter().map(|r| r.failed).sum(),
        per_sec,
        p50_us: median(all.iter().map(|r| r.p50_us as f64).collect()) as u64,
        p99_us: all.iter().map(|r| r.p99_us).max().unwrap_or(0),
        mean_us: all.iter().map(|r| r.mean_us).sum::<f64>() / all.len().max(1) as f64,
        batch: 0.0,
        executor_us_per_saga: 0.0,
    })
}

async fn pg_journals(url: &str, schema: &str, workers: usize) -> Result<Vec<OpenedJournal>> {
    let mut out = Vec::new();
    for w in 0..workers {
        let cfg = PgConfig {
            worker_id: format!("bench-{schema}-{w}"),
            schema: Some(schema.to_owned()),
            ..PgConfig::default()
        };
        let j = PgJournal::connect(url, cfg)
            .await
            .map_err(|e| anyhow!("cannot connect to PostgreSQL: {e}"))?;
        out.push(OpenedJournal {
            journal: Arc::new(j),
            sled: None,
        });
    }
    Ok(out)
}

/// Run the comparison and print a table.
pub async fn run(o: &PgOpts) -> Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| anyhow!("cannot build the HTTP client: {e}"))?;
    let up = crate::procs::start_upstream().await?;
    let url = format!("{}/step", up.url);
    println!(
        "\n### PostgreSQL: generic two-step saga, {} sagas in flight\n",
        o.concurrency
    );
    println!("| workers | journal | sagas/s (median) | runs | p50 ms | p99 ms | failed |");
    println!("|---|---|---:|---|---:|---:|---:|");
    let stamp = std::process::id();
    let rows: [(&str, usize); 3] = [("sled", 1), ("postgres", 1), ("postgres", 3)];
    for (kind, workers) in rows {
        let mut runs = Vec::new();
        for rep in 0..o.reps.max(1) {
            let run = if kind == "sled" {
                let tmp = tempfile::tempdir()?;
                let j = JournalMode::Group(Durability::PowerLoss)
                    .open(&tmp.path().join("j"))
                    .await?;
                run_workers(vec![j], o, &client, &url).await?
            } else {
                let schema = format!("bench_{stamp}_{workers}_{rep}");
                let js = pg_journals(&o.url, &schema, workers).await?;
                run_workers(js, o, &client, &url).await?
            };
            runs.push(run);
        }
        let per: Vec<f64> = runs.iter().map(|r| r.per_sec).collect();
        let med = median(per.clone());
        let pick = runs
            .iter()
            .min_by(|a, b| (a.per_sec - med).abs().total_cmp(&(b.per_sec - med).abs()))
            .ok_or_else(|| anyhow!("no runs"))?;
        let label = if kind == "sled" {
            "sled group commit, power-loss"
        } else {
            "PostgreSQL (leases, group commit)"
        };
        println!(
            "| {workers} | {label} | {:.0} | {} | {:.1} | {:.1} | {} |",
            med,
            per.iter()
                .map(|p| format!("{p:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            pick.p50_us as f64 / 1000.0,
            pick.p99_us as f64 / 1000.0,
            runs.iter().map(|r| r.failed).sum::<usize>()
        );
    }
    drop(up);
    Ok(())
}
