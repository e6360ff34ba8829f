//! `rescind-bench`: end-to-end benchmarks of rescind.
//!
//! The simulator (`rescind-sim`) and a trivial upstream run as separate
//! processes on loopback; the engine runs here. Build and run:
//!
//! ```text
//! cargo build --release -p rescind-sim -p rescind-bench
//! cargo run --release -p rescind-bench -- all            # full run (~10 min)
//! cargo run --release -p rescind-bench -- all --quick    # short run
//! ```
//!
//! Figures go to stdout as Markdown tables, and to `--out` (default
//! `docs/perf`) as `sagas.json`, `recovery.json` and the chart `sagas.svg`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bare;
mod builtin;
mod chart;
mod custom;
mod driver;
mod flow;
mod grows;
mod pg;
mod procs;
mod query;
mod recovery;
mod report;
mod sagas;
mod stats;
mod upstream;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Instant;

/// mimalloc instead of glibc's allocator: sled allocates and frees a node
/// copy per insert, and glibc's malloc was a quarter of the journal
/// committer's time in the profile (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// rescind's end-to-end benchmarks.
#[derive(Parser)]
#[command(name = "rescind-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sagas/s and latency: the generic two-step saga on every journal mode,
    /// and the built-in sagas against the simulator.
    Sagas(SagasArgs),
    /// Recovery time and memory per in-flight saga.
    Recovery(RecoveryArgs),
    /// Both.
    All(AllArgs),
    /// The generic two-step saga on PostgreSQL with 1 and 3 workers, next to
    /// one sled worker, in the same run.
    Pg {
        /// PostgreSQL URL (e.g. the `RESCIND_PG_URL` that `.ci/postgres` exports).
        #[arg(long, env = "RESCIND_PG_URL")]
        url: String,
        /// Sagas in flight, split over the workers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Measured seconds per row.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Repetitions per row (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Saga queries from the journal indexes (a page of 50 stuck sagas, a
    /// lookup by order id) next to the full scan listing did before them, on
    /// sled and, with a URL, PostgreSQL.
    Query {
        /// Sagas in each journal (10% unfinished, 5% stuck).
        #[arg(long, default_value_t = 1_000_000)]
        sagas: u64,
        /// Timed repetitions per indexed query (p50 reported).
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// PostgreSQL URL; none: sled only.
        #[arg(long, env = "RESCIND_PG_URL")]
        pg_url: Option<String>,
    },
    /// The two-step saga on journals already holding N finished sagas
    /// (retention on, a compaction pass per run), against the first size
    /// in the same repetition: does the cost grow with the journal?
    Grows {
        /// Finished sagas in each journal, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,1000000")]
        finished: Vec<u64>,
        /// Sagas in flight.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Measured seconds per row.
        #[arg(long, default_value_t = 4.0)]
        secs: f64,
        /// Repetitions (medians are reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Put the journals under this directory (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// TOP flow control: unpaid-cancel sagas/s through one app key's limiter on behalf
    /// of 200 accounts vs one account, at the same rate, and their ratio.
    Flow {
        /// The app key's rate, calls/s (0: no limit).
        #[arg(long, default_value_t = 2_000.0)]
        rate: f64,
        /// Sagas per row (one call each).
        #[arg(long, default_value_t = 6_000)]
        calls: usize,
        /// Concurrent callers.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// The trivial upstream (internal; started by `sagas`).
    #[command(hide = true)]
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// The recovery child process (internal; started by `recovery`).
    #[command(hide = true)]
    RecoveryChild {
        /// The journal directory.
        #[arg(long)]
        dir: PathBuf,
        /// How the sagas were left.
        #[arg(long, value_enum)]
        mode: recovery::ParkMode,
        /// How many there are.
        #[arg(long)]
        sagas: usize,
        /// sled cache capacity, MiB.
        #[arg(long)]
        sled_cache_mb: Option<u64>,
    },
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// A short run: 1 repetition, 2 s per row, 20,000 sagas for recovery.
    #[arg(long)]
    quick: bool,
    /// Put journals under this directory (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Write sagas.json, recovery.json and sagas.svg here.
    #[arg(long, value_name = "DIR", default_value = "docs/perf")]
    out: PathBuf,
}

#[derive(Args, Clone, Debug)]
struct SagasArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrencies (sagas in flight), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1024")]
    concurrency: Vec<usize>,
    /// Measured seconds per row (default 5; --quick: 2).
    #[arg(long)]
    secs: Option<f64>,
    /// Repetitions per row; medians are reported (default 3; --quick: 1).
    #[arg(long)]
    reps: Option<usize>,
    /// Only the generic two-step saga.
    #[arg(long, conflicts_with = "builtin_only")]
    custom_only: bool,
    /// Only the built-in sagas.
    #[arg(long)]
    builtin_only: bool,
}

#[derive(Args, Clone, Debug)]
struct RecoveryArgs {
    #[command(flatten)]
    common: Common,
    /// Unfinished sagas (default 100,000; --quick: 20,000).
    #[arg(long)]
    sagas: Option<u64>,
    /// sled cache capacity in the recovering process, MiB (default: sled
    /// journal default, 256): shows how much of the RSS is sled's cache.
    #[arg(long)]
    sled_cache_mb: Option<u64>,
    /// Only these ways of leaving the sagas (comma-separated; default both).
    #[arg(long, value_enum, value_delimiter = ',')]
    mode: Vec<recovery::ParkMode>,
    /// Keep the written journals under this directory (one per mode and
    /// size) and reuse them on the next run instead of writing them again:
    /// for repeated measurements and profiling of the recovering child.
    #[arg(long, value_name = "DIR")]
    keep_journals: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
struct AllArgs {
    #[command(flatten)]
    sagas: SagasArgs,
    /// Unfinished sagas for recovery (default 100,000; --quick: 20,000).
    #[arg(long = "recovery-sagas")]
    recovery_sagas: Option<u64>,
}

fn main() -> std::process::ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rescind-bench: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli, started)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rescind-bench: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn sagas_opts(a: &SagasArgs) -> Result<sagas::SagasOpts> {
    let q = a.common.quick;
    let secs = a.secs.unwrap_or(if q { 2.0 } else { 5.0 });
    if !(secs.is_finite() && secs > 0.0) {
        return Err(anyhow!("--secs must be a positive number of seconds"));
    }
    if a.concurrency.is_empty() || a.concurrency.contains(&0) {
        return Err(anyhow!(
            "--concurrency needs positive values, e.g. 1,64,256"
        ));
    }
    Ok(sagas::SagasOpts {
        concurrency: a.concurrency.clone(),
        secs,
        warmup_secs: if q { 0.5 } else { 1.0 },
        reps: a.reps.unwrap_or(if q { 1 } else { 3 }).max(1),
        custom: !a.builtin_only,
        builtin: !a.custom_only,
        dir: a.common.dir.clone(),
    })
}

async fn run_sagas(a: &SagasArgs) -> Result<()> {
    let o = sagas_opts(a)?;
    let r = sagas::run(&o).await?;
    std::fs::create_dir_all(&a.common.out)
        .with_context(|| format!("cannot create {}", a.common.out.display()))?;
    report::write_sagas(&a.common.out, &r)?;
    println!("{}", report::sagas_markdown(&r));
    Ok(())
}

async fn run_recovery(
    c: &Common,
    n: Option<u64>,
    cache_mb: Option<u64>,
    modes: &[recovery::ParkMode],
    keep: Option<&std::path::Path>,
) -> Result<()> {
    let n = n.unwrap_or(if c.quick { 20_000 } else { 100_000 });
    if n == 0 {
        return Err(anyhow!("--sagas must be at least 1"));
    }
    let modes = match modes {
        [] => &[recovery::ParkMode::InDoubt, recovery::ParkMode::RefundWait][..],
        some => some,
    };
    let mut results = Vec::new();
    for mode in modes {
        results.push(recovery::measure(c.dir.as_ref(), *mode, n, cache_mb, keep).await?);
    }
    std::fs::create_dir_all(&c.out)
        .with_context(|| format!("cannot create {}", c.out.display()))?;
    report::write_recovery(&c.out, &results)?;
    println!("{}", report::recovery_markdown(&results));
    Ok(())
}

async fn run(cli: Cli, started: Instant) -> Result<()> {
    match cli.cmd {
        Cmd::Upstream { listen } => upstream::serve(&listen).await,
        Cmd::RecoveryChild {
            dir,
            mode,
            sagas,
            sled_cache_mb,
        } => recovery::child(&dir, mode, sagas, sled_cache_mb, started).await,
        Cmd::Sagas(a) => {
            println!("{}", report::machine_markdown());
            run_sagas(&a).await
        }
        Cmd::Recovery(a) => {
            println!("{}", report::machine_markdown());
            run_recovery(
                &a.common,
                a.sagas,
                a.sled_cache_mb,
                &a.mode,
                a.keep_journals.as_deref(),
            )
            .await
        }
        Cmd::Pg {
            url,
            concurrency,
            secs,
            reps,
        } => {
            if concurrency == 0 || secs <= 0.0 {
                return Err(anyhow!("--concurrency and --secs must be positive"));
            }
            println!("{}", report::machine_markdown());
            pg::run(&pg::PgOpts {
                url,
                concurrency,
                secs,
                warmup_secs: 1.0,
                reps,
            })
            .await
        }
        Cmd::Query {
            sagas,
            reps,
            pg_url,
        } => {
            query::run(query::QueryOpts {
                sagas,
                reps,
                pg_url,
            })
            .await
        }
        Cmd::Grows {
            finished,
            concurrency,
            secs,
            reps,
            dir,
        } => {
            println!("{}", report::machine_markdown());
            grows::run(&grows::GrowsOpts {
                finished,
                concurrency,
                secs,
                reps,
                dir,
            })
            .await
        }
        Cmd::Flow {
            rate,
            calls,
            concurrency,
        } => {
            println!("{}", report::machine_markdown());
            flow::run(rate, calls, concurrency).await
        }
        Cmd::All(a) => {
            println!("{}", report::machine_markdown());
            run_sagas(&a.sagas).await?;
            run_recovery(&a.sagas.common, a.recovery_sagas, None, &[], None).await
        }
    }
}
