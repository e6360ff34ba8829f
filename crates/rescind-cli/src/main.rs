//! `rescind`: the command line. Glue only — every capability is a library call
//! in the `rescind` crate that an embedding backend can make too.

/// `println!` that ends the process quietly (exit 0) when stdout is a
/// closed pipe (`rescind journal list --json | head`), instead of panicking.
macro_rules! outln {
    () => {
        $crate::write_line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::write_line(format_args!($($t)*))
    };
}

/// Write one line to stdout; a closed pipe ends the process with 0 and no
/// message (the reader has what it wanted), other errors are ignored like
/// `println!` would not.
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

mod accounts_cmd;
mod demo;
mod journal_cmd;
mod ops;
mod table;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Durable cancellation and refund withdrawal for marketplace orders.
#[derive(Parser, Debug)]
#[command(name = "rescind", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). See rescind.example.toml.
    #[arg(
        long,
        short,
        global = true,
        env = "RESCIND_CONFIG",
        default_value = "rescind.toml"
    )]
    config: PathBuf,
    /// More log output on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The one-command tour: simulator + sled journal in a temp dir, 1,000+
    /// mixed cancellations under faults, a worker killed with SIGKILL half-way
    /// and resumed, then a summary checked against the simulator's effect log.
    Demo(demo::DemoArgs),
    /// Start a cancellation saga durably and (by default) wait for its outcome.
    Cancel(ops::CancelArgs),
    /// Start a refund-withdraw saga durably and (by default) wait for its outcome.
    WithdrawRefund(ops::WithdrawArgs),
    /// Inspect and operate the journal.
    #[command(subcommand)]
    Journal(journal_cmd::JournalCmd),
    /// Compare local orders with what each channel says; --fix converges them.
    Reconcile(ops::ReconcileArgs),
    /// The shops (`[accounts]`) and the sagas waiting on their credentials.
    #[command(subcommand)]
    Accounts(accounts_cmd::AccountsCmd),
    /// Run the channel simulator (TOP and PandaPon) for your own code to call.
    Sim(rescind_sim::SimArgs),
    /// Run the engine as a long-lived worker with an HTTP API.
    Worker(ops::WorkerArgs),
    /// Internal: the demo's worker child process.
    #[command(hide = true)]
    DemoWorker(demo::DemoWorkerArgs),
}

/// The log on stderr and, with feature `otel`, the trace exporter (each
/// with its own filter: `-v`/`RUST_LOG` choose what is logged, not what is
/// traced).
#[cfg(feature = "otel")]
type Telemetry = rescind::otel::Telemetry;
#[cfg(not(feature = "otel"))]
type Telemetry = std::convert::Infallible;

fn init_tracing(verbose: u8, telemetry: Option<&Telemetry>) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let default = match verbose {
        0 => "warn",
        1 => "info,rescind=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    #[cfg(feature = "otel")]
    let traces = telemetry.map(|t| t.layer());
    #[cfg(not(feature = "otel"))]
    let traces: Option<tracing_subscriber::layer::Identity> = telemetry.map(|t| match *t {});
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(traces)
        .try_init();
}

/// The trace exporter of a command that runs sagas, when the configuration
/// (`[telemetry]`) or the environment names an OTLP endpoint. A
/// configuration that does not load is left to the command to report.
#[cfg(feature = "otel")]
fn start_telemetry(cli: &Cli) -> anyhow::Result<Option<Telemetry>> {
    use rescind::otel::OtelSettings;
    let runs_sagas = matches!(
        cli.command,
        Command::Worker(_)
            | Command::Cancel(_)
            | Command::WithdrawRefund(_)
            | Command::Reconcile(_)
            | Command::Journal(_)
    );
    if !runs_sagas {
        return Ok(None);
    }
    let Ok(cfg) = rescind::config::Config::load(&cli.config) else {
        return Ok(None);
    };
    let settings = OtelSettings::resolve(&cfg.telemetry, &|v| std::env::var(v).ok())?;
    Ok(settings.map(Telemetry::start).transpose()?)
}

#[cfg(not(feature = "otel"))]
fn start_telemetry(_: &Cli) -> anyhow::Result<Option<Telemetry>> {
    Ok(None)
}

/// mimalloc instead of glibc's allocator: the worker's journal committer
/// allocates and frees a copy of a sled node per insert, and glibc's malloc
/// was the largest single item in its profile; mimalloc took 14% off the
/// committer's CPU per saga (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match start_telemetry(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(cli.verbose, telemetry.as_ref());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Demo(a) => demo::run(a).await,
            Command::DemoWorker(a) => demo::run_worker(a).await,
            Command::Cancel(a) => ops::cancel(&cli.config, a).await,
            Command::WithdrawRefund(a) => ops::withdraw(&cli.config, a).await,
            Command::Journal(c) => journal_cmd::run(&cli.config, c).await,
            Command::Reconcile(a) => ops::reconcile(&cli.config, a).await,
            Command::Accounts(c) => accounts_cmd::run(&cli.config, c).await,
            Command::Sim(a) => rescind_sim::cli::run(a)
                .await
                .map(|_| 0)
                .map_err(|e| anyhow::anyhow!("{e}")),
            Command::Worker(a) => ops::worker(&cli.config, a).await,
        }
    });
    // Outside the runtime: sending the last spans blocks.
    #[cfg(feature = "otel")]
    if let Some(t) = telemetry {
        if let Err(e) = t.shutdown() {
            eprintln!("warning: {e}");
        }
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One clear message, its causes, no backtrace.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}
