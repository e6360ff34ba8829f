//! A standalone reconciliation tool on the `rescind` library: compare the
//! orders your backend believes in with what each channel says, print a
//! verdict per order, and with `--fix` converge the differences — a saga for
//! what must change upstream, a local update for what already changed there.
//!
//! ```sh
//! cargo run --example reconcile                  # simulator + a sample file with planted mismatches
//! cargo run --example reconcile -- --fix         # ... and converge them (exit 0 when none remain)
//! cargo run --example reconcile -- --sim-url http://127.0.0.1:8666 --orders orders.csv --fix
//! cargo run --example reconcile -- --config rescind.toml --orders orders.csv
//! ```
//!
//! Orders files are CSV with a header or JSON lines, with `channel`,
//! `order_id`, `local_state` (`pending_pay`, `paid`, `refunding`, `cancelled`,
//! `refunded`) and optionally `refund_id`. `--fix` rewrites the file with the
//! local updates.

mod support;

use anyhow::{Context, Result};
use clap::Parser;
use rescind::config::{Config, JournalConfig};
use rescind::prelude::*;
use rescind::reconcile::{self, Finding, LocalOrder};
use rescind::sim::{defaults, RefundSeed};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Reconcile local orders with the channels")]
pub struct Args {
    /// The simulator to reconcile against (default: start one in this process).
    #[arg(long)]
    pub sim_url: Option<String>,
    /// A rescind config file with your real channels (instead of the simulator).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Local orders (default: write a sample and seed the simulator to match).
    #[arg(long)]
    pub orders: Option<PathBuf>,
    /// Converge: start sagas for upstream changes, rewrite the file for local ones.
    #[arg(long)]
    pub fix: bool,
    /// Journal directory for the fix sagas (default: the config's, or a temp dir).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Give up waiting for a fix saga after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

#[derive(Debug)]
pub struct Report {
    pub before: Vec<Finding>,
    /// `channel:order_id` → how its fix saga ended.
    pub fixed_upstream: Vec<(String, String)>,
    /// `channel:order_id` whose local row took the channel's state.
    pub fixed_locally: Vec<String>,
    /// The re-check after `--fix`.
    pub after: Option<Vec<Finding>>,
    pub effects: BTreeMap<(String, String), u64>,
}

impl Report {
    pub fn remaining(&self) -> usize {
        let last = self.after.as_ref().unwrap_or(&self.before);
        last.iter().filter(|f| f.verdict.is_mismatch()).count()
    }
}

/// The sample: what the backend believes ...
const SAMPLE: &str = "channel,order_id,local_state,refund_id
tmall-tbc,T1001,pending_pay,
tmall-tbc,T1002,cancelled,
tmall-tbc,T1003,pending_pay,
pandapon-taobao,TB2001,paid,RF2001
pandapon-taobao,TB2002,refunding,RF2002
pandapon-1688,2542285634920880001,pending_pay,
pandapon-1688,2542285634920880002,cancelled,
";

/// ... and what the channels hold: T1002 and ...002 are still open upstream,
/// T1003 was closed upstream, TB2001's refund was withdrawn only locally.
async fn seed_sample(sim: &support::SimHandle) -> Result<()> {
    let with_refund = |order: &str, refund: &str| rescind::sim::OrderSeed {
        refund: Some(RefundSeed {
            refund_id: refund.into(),
            status: "WAIT_SELLER_AGREE".into(),
        }),
        ..support::seed("pandapon-taobao", order, "WAIT_SELLER_SEND_GOODS")
    };
    sim.add_orders(&[
        support::seed("tmall-tbc", "T1001", "WAIT_BUYER_PAY"),
        support::seed("tmall-tbc", "T1002", "WAIT_BUYER_PAY"),
        support::seed("tmall-tbc", "T1003", "TRADE_CLOSED_BY_TAOBAO"),
        with_refund("TB2001", "RF2001"),
        with_refund("TB2002", "RF2002"),
        support::seed("pandapon-1688", "2542285634920880001", "waitbuyerpay"),
        support::seed("pandapon-1688", "2542285634920880002", "waitbuyerpay"),
    ])
    .await
}

/// The channels of the simulator, as a config file would give them (secrets
/// come from the environment; here, the simulator's).
fn sim_config(url: &str) -> Result<Config> {
    let pandapon = format!(
        r#"base_url = "{url}"
access_key = "{}"
secret_env = "PANDAPON_SECRET"
user_id = "{}""#,
        defaults::PANDAPON_ACCESS_KEY,
        defaults::PANDAPON_USER_ID
    );
    let text = format!(
        r#"
[channels.tmall-tbc]
gateway = {{ url = "{url}/router/rest", app_key = "{}", app_secret_env = "TOP_APP_SECRET" }}
[channels.pandapon-taobao]
{pandapon}
[channels.pandapon-1688]
{pandapon}
"#,
        defaults::APP_KEY
    );
    let env = |var: &str| match var {
        "TOP_APP_SECRET" => Some(defaults::APP_SECRET.to_owned()),
        "PANDAPON_SECRET" => Some(defaults::PANDAPON_SECRET.to_owned()),
        _ => None,
    };
    Ok(Config::from_toml_str(&text, Path::new("."), &env)?)
}

fn print_findings(title: &str, findings: &[Finding]) {
    println!(
        "\n{title}\n{:<36} {:<12} {:<44} {:<30} detail",
        "order", "local", "upstream", "verdict"
    );
    for f in findings {
        let local = serde_json::to_value(f.local.local_state).unwrap_or_default();
        let up = f
            .upstream
            .as_ref()
            .map(|s| format!("{} ({})", s.state, s.upstream))
            .unwrap_or_else(|| "-".into());
        let order = format!("{}:{}", f.local.channel, f.local.order_id);
        println!(
            "{order:<36} {:<12} {up:<44} {:<30} {}",
            local.as_str().unwrap_or("?"),
            f.verdict.name(),
            f.detail
        );
    }
    let counts: Vec<String> = reconcile::summary(findings)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    println!("summary: {}", counts.join(", "));
}

/// The local row takes the channel's state (the channel is ahead of the backend).
fn write_orders(path: &Path, rows: &[LocalOrder], json_lines: bool) -> Result<()> {
    let mut out = String::from(if json_lines {
        ""
    } else {
        "channel,order_id,local_state,refund_id\n"
    });
    for r in rows {
        out += &if json_lines {
            serde_json::to_string(r)?
        } else {
            let state = serde_json::to_value(r.local_state)?;
            format!(
                "{},{},{},{}",
                r.channel,
                r.order_id,
                state.as_str().unwrap_or_default(),
                r.refund_id.as_deref().unwrap_or("")
            )
        };
        out.push('\n');
    }
    Ok(std::fs::write(path, out)?)
}

pub async fn run(args: Args) -> Result<Report> {
    let tmp = tempfile::tempdir()?;
    let mut sim_handle = None;
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => {
            let sim = support::SimHandle::connect_or_start(args.sim_url.clone()).await?;
            let cfg = sim_config(&sim.url)?;
            sim_handle = Some(sim);
            cfg
        }
    };
    let path = match &args.orders {
        Some(p) => p.clone(),
        None => {
            let sim = sim_handle
                .as_ref()
                .context("--orders is required with --config")?;
            seed_sample(sim).await?;
            let p = tmp.path().join("orders.csv");
            std::fs::write(&p, SAMPLE)?;
            println!("sample orders written to {}", p.display());
            p
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows =
        reconcile::parse_orders(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let channels = rescind::wiring::build_channels(&config)?;

    let before = reconcile::reconcile(&channels, rows.clone(), 8, Arc::new(|| {})).await;
    print_findings("before", &before);
    let mut report = Report {
        before,
        fixed_upstream: vec![],
        fixed_locally: vec![],
        after: None,
        effects: BTreeMap::new(),
    };
    if args.fix && report.remaining() > 0 {
        // Upstream fixes: sagas on an engine with a durable journal, keyed so a re-run never repeats one.
        let journal_cfg = match (&args.journal, &args.config) {
            (Some(dir), _) => JournalConfig::Sled { path: dir.clone() },
            (None, Some(_)) => config.journal.clone(),
            (None, None) => JournalConfig::Sled {
                path: tmp.path().join("journal"),
            },
        };
        let journal = rescind::wiring::open_journal(&journal_cfg).await?.journal();
        let engine = Engine::builder(journal)
            .channels(channels.clone())
            .limits(config.engine.clone())
            .build();
        engine.recover().await?;
        let mut started = Vec::new();
        for (i, f) in report.before.iter().enumerate() {
            let order = format!("{}:{}", f.local.channel, f.local.order_id);
            if let Some(input) = f.fix() {
                let key = format!("reconcile:{order}:{}", f.verdict.name());
                started.push((order, engine.start_keyed(&key, input).await?.0));
            } else if let Some(updated) = f.local_update() {
                rows[i] = updated;
                report.fixed_locally.push(order);
            }
        }
        for (order, id) in started {
            let exit =
                tokio::time::timeout(Duration::from_secs(args.wait_secs), engine.wait(id)).await;
            let how = match exit {
                Ok(Ok(SagaExit::Finished(o))) => o.label().to_owned(),
                Ok(Ok(other)) => format!("{other:?}"),
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "still running".to_owned(),
            };
            println!("fix {order}: saga {id} {how}");
            report.fixed_upstream.push((order, how));
        }
        engine.shutdown(Duration::from_secs(5)).await;
        for order in &report.fixed_locally {
            println!("fix {order}: local row updated to the channel's state");
        }
        write_orders(&path, &rows, text.trim_start().starts_with('{'))?;
        let after = reconcile::reconcile(&channels, rows, 8, Arc::new(|| {})).await;
        print_findings("after --fix", &after);
        report.after = Some(after);
    }
    if let Some(sim) = &sim_handle {
        report.effects = sim.effect_counts().await?;
    }
    Ok(report)
}

#[allow(dead_code)] // the test includes this file as a module and calls `run`
#[tokio::main]
async fn main() -> Result<std::process::ExitCode> {
    let args = Args::parse();
    let fix = args.fix;
    let report = run(args).await?;
    let remaining = report.remaining();
    println!(
        "\n{remaining} mismatch(es){}",
        if remaining > 0 && !fix {
            "; run with --fix to converge"
        } else {
            ""
        }
    );
    Ok(std::process::ExitCode::from(u8::from(remaining > 0)))
}
