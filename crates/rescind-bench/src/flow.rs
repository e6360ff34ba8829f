//! The cost of fairness in TOP flow control: unpaid-cancel sagas through one
//! app key's limiter (`rescind_wire::flow`) on behalf of 200 accounts,
//! against the same sagas on behalf of one account, at the same app-key rate.
//!
//! Each saga runs in the engine (in-memory journal: intent, call, outcome,
//! finish); its one call is a real `tmall.tbc.order.cancel` — signed by the
//! TOP client, paced by the shared limiter with the saga's account, and
//! handled (signature, timestamp, order book) by the simulator's router in
//! process — so the figure is sagas/s with the limiter's queueing as the
//! only difference between the rows. At a rate the
//! limiter binds (the default), both rows should reach it; the ratio shows
//! what round-robin across 200 accounts costs. `--rate 0` turns the limit off
//! to show the raw call rate.

use anyhow::{anyhow, Result};
use rescind::core::{
    Channels, Clock, Engine, Limits, MemoryJournal, OrderRef, SagaExit, SagaInput, SagaOutcome,
    TokioClock,
};
use rescind::top::{GatewayConfig, TbcChannel, TopConfig};
use rescind::wire::flow::{AppKeyLimiter, FlowSettings};
use rescind::wire::sign::Secret;
use rescind_sim::{defaults, OrderSeed, Sim, SimConfig, SimTransport};
use std::sync::Arc;
use std::time::Instant;

/// What one row measured.
struct Row {
    accounts: usize,
    calls: usize,
    secs: f64,
    max_queue: usize,
}

async fn one_row(rate: f64, calls: usize, concurrency: usize, accounts: usize) -> Result<Row> {
    let sim = Sim::new(SimConfig::default());
    for i in 0..calls {
        sim.add_order(OrderSeed {
            channel: "tmall-tbc".into(),
            order_id: format!("O{i}"),
            status: "WAIT_BUYER_PAY".into(),
            refund: None,
            stock_lock: None,
        });
    }
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::system());
    let gw = GatewayConfig::new(
        "http://sim/router/rest",
        defaults::APP_KEY,
        Secret::new(defaults::APP_SECRET),
    );
    let limiter = Arc::new(AppKeyLimiter::new(
        &gw.url,
        &gw.app_key,
        FlowSettings {
            rate_per_s: rate,
            burst: 1,
            wait_max_ms: 600_000,
        },
        clock.clone(),
    ));
    let tbc = Arc::new(
        TbcChannel::new(TopConfig::new(gw), Arc::new(SimTransport::new(&sim)), clock)
            .map_err(|e| anyhow!("{e}"))?
            .with_limiter(limiter.clone()),
    );
    // Whole sagas (intent, call, outcome, finish) on the in-memory journal:
    // the limiter's queueing is the only difference between the rows.
    let engine = Engine::builder(Arc::new(MemoryJournal::new()))
        .channels(Channels::new().with_cancel("tmall-tbc", tbc))
        .limits(Limits {
            in_flight_max: concurrency.max(1),
            ..Limits::default()
        })
        .build();
    let names: Arc<Vec<String>> = Arc::new((0..accounts).map(|a| format!("acct-{a}")).collect());
    let per_task = calls.div_ceil(concurrency);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (engine, names) = (engine.clone(), names.clone());
        tasks.push(tokio::spawn(async move {
            for j in 0..per_task {
                let i = t * per_task + j;
                if i >= calls {
                    break;
                }
                let order = format!("O{i}");
                let account = names[i % names.len()].as_str();
                let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", order.as_str()))
                    .with_account(account);
                match engine.run(input).await {
                    Ok((_, SagaExit::Finished(SagaOutcome::Completed { .. }))) => {}
                    Ok((_, other)) => return Err(anyhow!("saga on {order}: {other:?}")),
                    Err(e) => return Err(anyhow!("saga on {order}: {e}")),
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut max_queue = 0;
    for h in tasks {
        max_queue = max_queue.max(limiter.waiting());
        h.await.map_err(|e| anyhow!("task: {e}"))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let done = sim.effects().len();
    if done != calls {
        return Err(anyhow!("{done} cancels applied of {calls}"));
    }
    Ok(Row {
        accounts,
        calls,
        secs,
        max_queue,
    })
}

/// Run both rows and print them with their ratio.
pub async fn run(rate: f64, calls: usize, concurrency: usize) -> Result<()> {
    if calls == 0 || concurrency == 0 {
        return Err(anyhow!("--calls and --concurrency must be positive"));
    }
    let one = one_row(rate, calls, concurrency, 1).await?;
    let many = one_row(rate, calls, concurrency, 200).await?;
    let per_s = |r: &Row| r.calls as f64 / r.secs;
    println!("\n### TOP flow control: 200 accounts vs 1 on one app key\n");
    let limit = if rate > 0.0 {
        format!("{rate} calls/s")
    } else {
        "off".to_owned()
    };
    println!(
        "App-key rate {limit}, {calls} unpaid-cancel sagas (one call each) from {concurrency} concurrent callers, engine on the in-memory journal, in-process simulator.\n"
    );
    println!("| accounts | sagas/s | seconds | callers queued (sampled max) |");
    println!("|---:|---:|---:|---:|");
    for r in [&one, &many] {
        println!(
            "| {} | {:.0} | {:.2} | {} |",
            r.accounts,
            per_s(r),
            r.secs,
            r.max_queue
        );
    }
    println!(
        "\n200 accounts / 1 account: **{:.3}**",
        per_s(&many) / per_s(&one)
    );
    Ok(())
}
