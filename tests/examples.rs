//! The examples in `examples/`, run for real: each example keeps its logic in
//! `run(Args) -> Result<Report>`, included here as a module and called with
//! arguments parsed as its command line would be.

// Each example brings its own copy of `examples/support`.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/custom_saga.rs"]
mod custom_saga;
#[path = "../examples/embed.rs"]
mod embed;
#[path = "../examples/reconcile.rs"]
mod reconcile;

use clap::Parser;
use rescind::core::{SagaExit, SagaOutcome, Via};
use rescind::sim::{OrderSeed, Sim, SimConfig};
use std::collections::BTreeMap;

fn counts(list: &[(&str, &str)]) -> BTreeMap<(String, String), u64> {
    list.iter()
        .map(|(op, target)| ((op.to_string(), target.to_string()), 1))
        .collect()
}

fn seed(channel: &str, order_id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: order_id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_cancels_every_order_exactly_once() {
    let r = embed::run(embed::Args::parse_from(["embed"]))
        .await
        .unwrap();
    assert_eq!(r.recovered, 0);
    let got: Vec<(&str, &str, &str)> = r
        .sagas
        .iter()
        .map(|s| (s.plan.as_str(), s.order.as_str(), s.state.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("cancel_unpaid", "tmall-tbc:TBC-1001", "completed"),
            ("cancel_paid", "tmall-tbc:TBC-1002", "completed"),
            (
                "cancel_unpaid",
                "pandapon-1688:2542285634920880794",
                "completed"
            ),
        ]
    );
    assert!(
        !r.retry_was_fresh,
        "a retried request started a second saga"
    );
    assert_eq!(
        r.effects,
        counts(&[
            ("cancel_unpaid", "tmall-tbc:TBC-1001"),
            ("release_stock", "damai:L-1001"),
            ("cancel_paid", "tmall-tbc:TBC-1002"),
            ("cancel_unpaid", "pandapon-1688:2542285634920880794"),
        ])
    );
    let status: Vec<&str> = r.upstream.iter().map(|o| o.status.as_str()).collect();
    assert_eq!(
        status,
        [
            "TRADE_CLOSED_BY_TAOBAO",
            "CANCELLED",
            "TRADE_CLOSED",
            "cancel"
        ]
    );
    assert_eq!(r.upstream[1].stock_lock_held, Some(false));
    assert_eq!(r.upstream[2].refund_status.as_deref(), Some("SUCCESS"));
}

/// A backend restarted on the same journal finds its cancellations done and
/// repeats none of them, though its requests come again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_restarted_on_the_same_journal_repeats_nothing() {
    let sim = Sim::new(SimConfig::default());
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = || {
        embed::Args::parse_from([
            "embed",
            "--sim-url",
            &server.base_url,
            "--journal",
            dir.path().to_str().unwrap(),
        ])
    };
    let first = embed::run(args()).await.unwrap();
    let second = embed::run(args()).await.unwrap();
    let ids = |r: &embed::Report| r.sagas.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&second));
    assert!(second.sagas.iter().all(|s| s.state == "completed"));
    assert_eq!(second.effects.len(), 4);
    assert!(
        sim.effect_counts().values().all(|n| *n == 1),
        "{:?}",
        sim.effect_counts()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_saga_is_journaled_and_its_in_doubt_step_resolved() {
    let r = custom_saga::run(custom_saga::Args::parse_from(["custom_saga"]))
        .await
        .unwrap();
    assert!(
        matches!(r.outcome, SagaExit::Finished(SagaOutcome::Completed { .. })),
        "{:?}",
        r.outcome
    );
    assert_eq!(
        r.records,
        ["started", "intent", "outcome", "intent", "outcome", "finished"]
    );
    // The webhook's first reply came too late: the step was in doubt, and the
    // executor's resolve found the notification instead of sending it again.
    assert_eq!(r.notify_via, Some(Via::Lookup));
    assert_eq!(r.notifications, 1);
    assert!(
        matches!(
            r.builtin_outcome,
            SagaExit::Finished(SagaOutcome::Completed { .. })
        ),
        "{:?}",
        r.builtin_outcome
    );
    assert_eq!(
        r.effects,
        counts(&[
            ("cancel_unpaid", "tmall-tbc:TBC-7001"),
            ("cancel_unpaid", "tmall-tbc:TBC-7002"),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_the_planted_mismatches() {
    let r = reconcile::run(reconcile::Args::parse_from(["reconcile"]))
        .await
        .unwrap();
    let verdicts: Vec<(String, &str)> = r
        .before
        .iter()
        .map(|f| (f.local.order_id.clone(), f.verdict.name()))
        .collect();
    let want = [
        ("T1001", "in_sync"),
        ("T1002", "local_cancelled_upstream_open"),
        ("T1003", "upstream_cancelled_local_open"),
        ("TB2001", "refund_mismatch"),
        ("TB2002", "in_sync"),
        ("2542285634920880001", "in_sync"),
        ("2542285634920880002", "local_cancelled_upstream_open"),
    ];
    let want: Vec<(String, &str)> = want.iter().map(|(o, v)| (o.to_string(), *v)).collect();
    assert_eq!(verdicts, want);
    assert_eq!(r.remaining(), 4);
    assert!(r.after.is_none());
    assert!(r.effects.is_empty(), "a dry run changed something upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_fix_converges_the_sample() {
    let r = reconcile::run(reconcile::Args::parse_from(["reconcile", "--fix"]))
        .await
        .unwrap();
    assert_eq!(r.remaining(), 0, "{:#?}", r.after);
    let upstream: Vec<(&str, &str)> = r
        .fixed_upstream
        .iter()
        .map(|(o, how)| (o.as_str(), how.as_str()))
        .collect();
    assert_eq!(
        upstream,
        [
            ("tmall-tbc:T1002", "completed"),
            ("pandapon-taobao:TB2001", "completed"),
            ("pandapon-1688:2542285634920880002", "completed"),
        ]
    );
    assert_eq!(r.fixed_locally, ["tmall-tbc:T1003"]);
    assert_eq!(
        r.effects,
        counts(&[
            ("cancel_unpaid", "tmall-tbc:T1002"),
            ("withdraw_refund", "pandapon-taobao:RF2001"),
            ("cancel_unpaid", "pandapon-1688:2542285634920880002"),
        ])
    );
}

/// Against a simulator the caller runs, with the caller's JSON-lines file,
/// which `--fix` rewrites.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_fix_with_an_orders_file_and_a_running_simulator() {
    let sim = Sim::new(SimConfig::default());
    sim.add_order(seed("tmall-tbc", "A1", "WAIT_BUYER_PAY"));
    sim.add_order(seed("tmall-tbc", "A2", "WAIT_BUYER_PAY"));
    sim.add_order(seed("pandapon-1688", "77", "cancel"));
    let server = sim.serve("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.jsonl");
    std::fs::write(
        &file,
        concat!(
            r#"{"channel":"tmall-tbc","order_id":"A1","local_state":"pending_pay"}"#,
            "\n",
            r#"{"channel":"tmall-tbc","order_id":"A2","local_state":"cancelled"}"#,
            "\n",
            r#"{"channel":"pandapon-1688","order_id":"77","local_state":"paid"}"#,
            "\n",
        ),
    )
    .unwrap();
    let r = reconcile::run(reconcile::Args::parse_from([
        "reconcile",
        "--sim-url",
        &server.base_url,
        "--orders",
        file.to_str().unwrap(),
        "--journal",
        dir.path().join("journal").to_str().unwrap(),
        "--fix",
    ]))
    .await
    .unwrap();
    assert_eq!(
        r.before.iter().filter(|f| f.verdict.is_mismatch()).count(),
        2
    );
    assert_eq!(r.remaining(), 0, "{:#?}", r.after);
    assert_eq!(r.fixed_locally, ["pandapon-1688:77"]);
    assert_eq!(
        sim.effect_counts(),
        counts(&[("cancel_unpaid", "tmall-tbc:A2")])
    );
    let rewritten = std::fs::read_to_string(&file).unwrap();
    assert!(
        rewritten.contains(r#""order_id":"77","local_state":"cancelled""#),
        "{rewritten}"
    );
    assert!(dir.path().join("journal").exists());
    server.shutdown().await;
}
