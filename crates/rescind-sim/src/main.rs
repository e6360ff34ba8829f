//! `rescind-sim`: run the channel simulator.
#![forbid(unsafe_code)]

use clap::Parser;

/// The rescind channel simulator.
#[derive(Parser)]
#[command(name = "rescind-sim", version, about)]
struct Cli {
    #[command(flatten)]
    sim: rescind_sim::SimArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match rescind_sim::cli::run(cli.sim).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rescind-sim: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
