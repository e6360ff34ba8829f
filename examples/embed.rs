//! Embedding rescind in a backend: a toy fulfillment service that owns one
//! `Engine` for the whole process, recovers at start, cancels orders when its
//! users ask (idempotently, keyed by its own order ids), and shuts down
//! gracefully.
//!
//! ```sh
//! cargo run --example embed                                   # against an in-process simulator
//! cargo run --example embed -- --sim-url http://127.0.0.1:8666 --journal ./journal
//! ```
//!
//! It cancels an unpaid Tmall TBC order holding a Damai ticket stock lock, a
//! paid Tmall TBC order (the cancel opens a refund; the simulator's merchant
//! completes it), and an unpaid 1688 order bought through PandaPon.

mod support;

use anyhow::{Context, Result};
use clap::Parser;
use rescind::inspect::{self, SagaSummary};
use rescind::pandapon::{Pandapon1688, PandaponClient, PandaponConfig};
use rescind::prelude::*;
use rescind::sim::{defaults, OrderSeed, OrderView};
use rescind::top::{DamaiChannel, DamaiConfig, GatewayConfig, TbcChannel, TopConfig};
use rescind::wire::sign::Secret;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "A toy fulfillment backend embedding the rescind engine")]
pub struct Args {
    /// The simulator to talk to (default: start one in this process).
    #[arg(long)]
    pub sim_url: Option<String>,
    /// The journal directory (default: a temp dir). Run twice with the same
    /// directory: the second run finds every cancellation already done.
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Give up waiting for a saga after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

/// What happened, for printing and for the test.
#[derive(Debug)]
pub struct Report {
    /// Sagas a previous process left unfinished and this one resumed.
    pub recovered: usize,
    /// Each cancellation's saga, read back from the journal.
    pub sagas: Vec<SagaSummary>,
    /// A repeated cancel request for the same backend order started nothing new.
    pub retry_was_fresh: bool,
    /// `(op, target)` → times applied upstream, from the simulator.
    pub effects: BTreeMap<(String, String), u64>,
    /// The orders upstream afterwards.
    pub upstream: Vec<OrderView>,
}

/// An order in the backend's own database, as far as cancelling goes.
struct BackendOrder {
    key: &'static str,
    channel: &'static str,
    order_id: &'static str,
    paid: bool,
    damai_lock: Option<&'static str>,
}

const ORDERS: [BackendOrder; 3] = [
    BackendOrder {
        key: "SO-1001",
        channel: "tmall-tbc",
        order_id: "TBC-1001",
        paid: false,
        damai_lock: Some("L-1001"),
    },
    BackendOrder {
        key: "SO-1002",
        channel: "tmall-tbc",
        order_id: "TBC-1002",
        paid: true,
        damai_lock: None,
    },
    BackendOrder {
        key: "SO-1003",
        channel: "pandapon-1688",
        order_id: "2542285634920880794",
        paid: false,
        damai_lock: None,
    },
];

/// The backend's cancellation service: one per process, shared by every handler.
#[derive(Clone)]
struct Fulfillment {
    engine: Engine,
}

impl Fulfillment {
    /// At start: open the journal, build the engine, finish what the last process left.
    async fn start(journal_dir: &Path, channels: Channels) -> Result<(Fulfillment, usize)> {
        let journal = Arc::new(SledJournal::open(journal_dir, SledConfig::default()).await?);
        let limits = Limits {
            // Poll an open refund often: the simulator's merchant is quick.
            refund_poll_initial_ms: 200,
            refund_poll_max_ms: 1_000,
            ..Limits::default()
        };
        let engine = Engine::builder(journal)
            .channels(channels)
            .limits(limits)
            .build();
        let recovered = engine.recover().await?;
        for (id, e) in &recovered.failed {
            eprintln!("saga {id} could not be resumed: {e}");
        }
        Ok((Fulfillment { engine }, recovered.resumed))
    }

    /// The "cancel order" handler. Returns once the cancellation is durable;
    /// the same backend order always maps to the same saga, so a retried
    /// request (or a second click) never cancels twice.
    async fn cancel(&self, o: &BackendOrder) -> Result<(SagaId, bool)> {
        let order = OrderRef::new(o.channel, o.order_id);
        let mut input = match o.paid {
            true => SagaInput::cancel_paid(order),
            false => SagaInput::cancel_unpaid(order),
        };
        if let Some(lock) = o.damai_lock {
            input = input.with_stock_lock(StockLockRef::new("damai", lock));
        }
        let input = input.with_reason("customer asked to cancel");
        Ok(self
            .engine
            .start_keyed(&format!("{}:cancel", o.key), input)
            .await?)
    }
}

/// The channels, built from their configs (credentials: the simulator's; use yours).
fn channels(sim_url: &str) -> Result<Channels> {
    let gateway = GatewayConfig::new(
        format!("{sim_url}/router/rest"),
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    let tbc = Arc::new(TbcChannel::connect(TopConfig::new(gateway.clone()))?);
    let damai_cfg = DamaiConfig::new(
        gateway,
        defaults::SUPPLIER_KEY,
        Secret::new(defaults::SUPPLIER_SECRET),
    );
    let damai = Arc::new(DamaiChannel::connect(damai_cfg)?);
    let pandapon = PandaponConfig::new(
        sim_url,
        defaults::PANDAPON_ACCESS_KEY,
        Secret::new(defaults::PANDAPON_SECRET),
        defaults::PANDAPON_USER_ID,
    );
    let p1688 = Arc::new(Pandapon1688::new(Arc::new(PandaponClient::connect(
        pandapon,
    )?)));
    Ok(Channels::new()
        .with_cancel("tmall-tbc", tbc.clone())
        .with_lookup("tmall-tbc", tbc)
        .with_stock("damai", damai)
        .with_cancel("pandapon-1688", p1688.clone())
        .with_lookup("pandapon-1688", p1688))
}

pub async fn run(args: Args) -> Result<Report> {
    // The outside world: the simulator, with the orders the backend sold.
    let sim = support::SimHandle::connect_or_start(args.sim_url).await?;
    let lock = OrderSeed {
        stock_lock: Some("L-1001".into()),
        ..support::seed("damai", "L-1001", "WAIT_PAY")
    };
    sim.add_orders(&[
        support::seed("tmall-tbc", "TBC-1001", "WAIT_BUYER_PAY"),
        lock,
        support::seed("tmall-tbc", "TBC-1002", "WAIT_SELLER_SEND_GOODS"),
        support::seed("pandapon-1688", "2542285634920880794", "waitbuyerpay"),
    ])
    .await?;
    let merchant = sim.complete_refund_when_open("tmall-tbc", "TBC-1002");

    // Process start.
    let tmp = tempfile::tempdir()?;
    let dir = args.journal.unwrap_or_else(|| tmp.path().to_owned());
    let (service, recovered) = Fulfillment::start(&dir, channels(&sim.url)?).await?;
    println!(
        "journal {}: resumed {recovered} unfinished saga(s)",
        dir.display()
    );

    // Requests come in.
    let mut ids = Vec::new();
    for o in &ORDERS {
        let (id, fresh) = service.cancel(o).await?;
        println!(
            "{} ({}:{}): saga {id}{}",
            o.key,
            o.channel,
            o.order_id,
            if fresh { "" } else { " (started earlier)" }
        );
        ids.push(id);
    }
    let (_, retry_was_fresh) = service.cancel(&ORDERS[0]).await?; // the client retried

    // Wait for the outcomes (a real backend would not block a request on this).
    let engine = &service.engine;
    let mut sagas = Vec::new();
    for id in ids {
        let exit = tokio::time::timeout(Duration::from_secs(args.wait_secs), engine.wait(id))
            .await
            .with_context(|| format!("saga {id} did not finish in time"))??;
        let (state, _entries) = inspect::load(engine.journal().as_ref(), id)
            .await
            .map_err(anyhow::Error::msg)?;
        println!("saga {id}: {exit:?}");
        sagas.push(SagaSummary::of(&state));
    }
    merchant.abort();

    // Process exit: running sagas reach a safe point; the rest resume next start.
    engine.shutdown(Duration::from_secs(5)).await;

    println!(
        "\n{:<38} {:<14} {:<34} {:<10} {:<28} steps",
        "saga", "plan", "order", "state", "order state"
    );
    for s in &sagas {
        println!(
            "{:<38} {:<14} {:<34} {:<10} {:<28} {}",
            s.id.to_string(),
            s.plan,
            s.order,
            s.state,
            s.order_state,
            s.steps
        );
    }
    let effects = sim.effect_counts().await?;
    println!("\nupstream effects:");
    for ((op, target), n) in &effects {
        println!("  {op:<16} {target:<36} x{n}");
    }
    let mut upstream = Vec::new();
    for (ch, id) in [
        ("tmall-tbc", "TBC-1001"),
        ("damai", "L-1001"),
        ("tmall-tbc", "TBC-1002"),
        ("pandapon-1688", "2542285634920880794"),
    ] {
        upstream.push(sim.order(ch, id).await?);
    }
    Ok(Report {
        recovered,
        sagas,
        retry_was_fresh,
        effects,
        upstream,
    })
}

#[allow(dead_code)] // the test includes this file as a module and calls `run`
#[tokio::main]
async fn main() -> Result<()> {
    let report = run(Args::parse()).await?;
    let done = report
        .sagas
        .iter()
        .filter(|s| s.state == "completed")
        .count();
    println!("\n{done} of {} cancellations completed", report.sagas.len());
    anyhow::ensure!(
        done == report.sagas.len(),
        "some cancellations did not complete"
    );
    Ok(())
}
