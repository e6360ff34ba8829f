//! Command-line flags and start-up, as a library so that the `rescind` CLI can
//! embed `rescind sim` with the same flags:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     sim: rescind_sim::SimArgs,
//! }
//!
//! # async fn demo() -> Result<(), rescind_sim::cli::CliError> {
//! let cli = Cli::parse();
//! rescind_sim::cli::run(cli.sim).await
//! # }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::book::{Mix, OrderSeed};
use crate::faults::FaultProfile;
use crate::{Sim, SimConfig, SimServer};
use rescind_wire::sign::Secret;

/// The simulator's flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// JSON fixture: a list of order rows, or `{"orders": [...]}`.
    #[arg(long, value_name = "FILE")]
    pub fixture: Option<PathBuf>,
    /// JSON fault profile: `{"default": {...}, "<endpoint>": {...}}`.
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Seed of every random draw and of generated orders.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generate this many orders (default state mix, all channels).
    #[arg(long, value_name = "N")]
    pub generate: Option<usize>,
    /// Push PandaPon-style callbacks to this URL.
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
    /// The TOP app secret the gateway verifies signatures with (default: the
    /// test secret in `rescind_sim::defaults`). Prefer the environment
    /// variable: a flag's value is visible to other users in `ps`.
    #[arg(
        long,
        value_name = "SECRET",
        env = "RESCIND_SIM_TOP_APP_SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub top_app_secret: Option<Secret>,
    /// The Damai supplier secret head signatures are checked with (default:
    /// the test secret in `rescind_sim::defaults`).
    #[arg(
        long,
        value_name = "SECRET",
        env = "RESCIND_SIM_DAMAI_SUPPLIER_SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub damai_supplier_secret: Option<Secret>,
    /// The PandaPon secret requests are verified and callbacks signed with
    /// (default: the test secret in `rescind_sim::defaults`).
    #[arg(
        long,
        value_name = "SECRET",
        env = "RESCIND_SIM_PANDAPON_SECRET",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub pandapon_secret: Option<Secret>,
}

/// A secret from a flag or the environment; an empty one is refused (it would
/// make every signature trivially forgeable).
fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        Err("a secret must not be empty".into())
    } else {
        Ok(Secret::new(s))
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not the expected JSON.
    #[error("{path} is not a valid {what}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Fixture or fault profile.
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A fixture row is invalid.
    #[error("{path}: row {row}: {source}")]
    Row {
        /// The file.
        path: PathBuf,
        /// Row index, from 0.
        row: usize,
        /// What is wrong.
        #[source]
        source: crate::book::SeedError,
    },
    /// The listen address could not be bound, or stdout failed.
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Rows {
    List(Vec<OrderSeed>),
    Wrapped { orders: Vec<OrderSeed> },
}

/// Read a fixture file (a list of [`OrderSeed`] rows or `{"orders": [...]}`).
pub fn load_fixture(path: &Path) -> Result<Vec<OrderSeed>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    let rows = match serde_json::from_str::<Rows>(&text) {
        Ok(Rows::List(r)) | Ok(Rows::Wrapped { orders: r }) => r,
        Err(source) => {
            return Err(CliError::Parse {
                path: path.to_owned(),
                what: "fixture",
                source,
            })
        }
    };
    for (row, r) in rows.iter().enumerate() {
        crate::book::Book::validate(r).map_err(|source| CliError::Row {
            path: path.to_owned(),
            row,
            source,
        })?;
    }
    Ok(rows)
}

/// Read a fault profile file.
pub fn load_faults(path: &Path) -> Result<FaultProfile, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    FaultProfile::from_json(&text).map_err(|source| CliError::Parse {
        path: path.to_owned(),
        what: "fault profile",
        source,
    })
}

/// The configuration the flags describe: the test credentials of
/// [`defaults`](crate::defaults), except the secrets given by flag or
/// environment variable.
pub fn config(args: &SimArgs) -> Result<SimConfig, CliError> {
    let mut cfg = SimConfig {
        seed: args.seed,
        callback_url: args.callback_url.clone(),
        ..SimConfig::default()
    };
    if let Some(s) = &args.top_app_secret {
        cfg.app_secret = s.clone();
    }
    if let Some(s) = &args.damai_supplier_secret {
        cfg.supplier_secret = s.clone();
    }
    if let Some(s) = &args.pandapon_secret {
        cfg.pandapon_secret = s.clone();
    }
    if let Some(p) = &args.fixture {
        cfg.fixture = load_fixture(p)?;
    }
    if let Some(n) = args.generate {
        cfg.fixture
            .extend(crate::book::generate_seeds(args.seed, n, &Mix::default()));
    }
    if let Some(p) = &args.faults {
        cfg.faults = load_faults(p)?;
    }
    Ok(cfg)
}

/// Build the simulator and start serving; prints nothing.
pub async fn start(args: &SimArgs) -> Result<(Sim, SimServer), CliError> {
    let sim = Sim::new(config(args)?);
    let server = sim
        .serve(&args.listen)
        .await
        .map_err(|source| CliError::Serve {
            addr: args.listen.clone(),
            source,
        })?;
    Ok((sim, server))
}

/// Start, print `listening on http://HOST:PORT` as the first stdout line, and
/// serve until Ctrl-C.
pub async fn run(args: SimArgs) -> Result<(), CliError> {
    let (_sim, server) = start(&args).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.base_url)
            .and_then(|_| out.flush())
            .map_err(|source| CliError::Serve {
                addr: args.listen.clone(),
                source,
            })?;
    }
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod secret_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn secrets_come_from_flags_and_default_to_the_test_secrets() {
        let given = Cli::try_parse_from([
            "sim",
            "--top-app-secret",
            "t-1",
            "--damai-supplier-secret",
            "d-2",
            "--pandapon-secret",
            "p-3",
        ])
        .expect("parse");
        let cfg = config(&given.sim).expect("config");
        assert_eq!(cfg.app_secret.expose(), "t-1");
        assert_eq!(cfg.supplier_secret.expose(), "d-2");
        assert_eq!(cfg.pandapon_secret.expose(), "p-3");
        let debug = format!("{:?}", given.sim);
        for s in ["t-1", "d-2", "p-3"] {
            assert!(!debug.contains(s), "{debug}");
        }

        let none = Cli::try_parse_from(["sim"]).expect("parse");
        let cfg = config(&none.sim).expect("config");
        assert_eq!(cfg.app_secret.expose(), crate::defaults::APP_SECRET);
        assert_eq!(
            cfg.supplier_secret.expose(),
            crate::defaults::SUPPLIER_SECRET
        );
        assert_eq!(
            cfg.pandapon_secret.expose(),
            crate::defaults::PANDAPON_SECRET
        );

        assert!(Cli::try_parse_from(["sim", "--top-app-secret", ""]).is_err());
    }
}
