//! The TOP message service end to end: a real `rescind sim` with TMC on and a
//! real `rescind worker` consuming it, over loopback HTTP. Paid TBC cancels
//! finish from pushed refund news with zero per-order refund polls (the
//! simulator counts lookups made while a refund is open); duplicated and
//! reordered messages change nothing (each effect once, each saga finished
//! once); with TMC off, polling still finishes them.

mod common;
mod rig;

use rig::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Sagas per run.
const N: usize = 6;

/// `[channels.tmall-tbc.tmc]` for the worker.
const TMC_TABLE: &str = "
[channels.tmall-tbc.tmc]
enabled = true
group_name = \"default\"
quantity = 4
poll_interval_ms = 50
backoff_initial_ms = 50
backoff_max_ms = 500
live_ttl_ms = 3000
";

async fn tmc_admin(rig: &Rig) -> Value {
    common::get_json(&rig.http, &format!("{}/_admin/tmc", rig.sim_url))
        .await
        .expect("GET /_admin/tmc")
}

/// The worker's `/metrics` text.
async fn metrics(rig: &Rig) -> String {
    let r = rig
        .http
        .get(format!("{}/metrics", rig.url))
        .send()
        .await
        .expect("GET /metrics");
    r.text().await.unwrap_or_default()
}

async fn wait_for(rig: &Rig, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !f().await {
        if t0.elapsed() > WAIT {
            panic!("not {what} after {} s\n{}", WAIT.as_secs(), rig.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Start N paid cancels on TBC, complete each refund upstream once it is
/// open, wait for every saga to finish. Returns the sagas' final views.
async fn run(rig: &mut Rig, prefix: &str, tmc: Option<Value>) -> Vec<Value> {
    if let Some(settings) = &tmc {
        common::post_json(&rig.http, &format!("{}/_admin/tmc", rig.sim_url), settings)
            .await
            .expect("POST /_admin/tmc");
        let mut text = std::fs::read_to_string(&rig.cfg).expect("read config");
        text.push_str(TMC_TABLE);
        std::fs::write(&rig.cfg, text).expect("write config");
    }
    rig.start_worker(&[]).await;
    if tmc.is_some() {
        // The consumer is live before any saga waits: no wait starts on the
        // back-off schedule.
        wait_for(rig, "TMC live", async || {
            metrics(rig)
                .await
                .contains("rescind_tmc_live{channel=\"tmall-tbc\"} 1")
        })
        .await;
    }
    let ids: Vec<String> = (0..N).map(|i| format!("{prefix}{i}")).collect();
    rig.orders(json!(ids
        .iter()
        .map(
            |id| json!({"channel": "tmall-tbc", "order_id": id, "status": "WAIT_SELLER_SEND_GOODS"})
        )
        .collect::<Vec<_>>()))
        .await;
    let mut sagas = Vec::new();
    for id in &ids {
        sagas.push(
            rig.start(&json!({"kind": "cancel_paid", "channel": "tmall-tbc", "order_id": id, "key": format!("k-{id}")}))
                .await,
        );
    }
    // The refund completes upstream 0.6 s after the saga opened it: long
    // enough for a polling saga to look at it while it is open.
    for id in &ids {
        wait_for(rig, &format!("refund open on {id}"), async || {
            rig.sim_order("tmall-tbc", id).await["refund_status"] == "WAIT_SELLER_AGREE"
        })
        .await;
    }
    let events: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"after_ms": 600 + 20 * i, "channel": "tmall-tbc", "order_id": id, "action": "complete_refund"}))
        .collect();
    common::post_json(
        &rig.http,
        &format!("{}/_admin/schedule", rig.sim_url),
        &json!(events),
    )
    .await
    .expect("schedule");
    let mut done = Vec::new();
    for s in &sagas {
        let v = rig.wait_completed(s).await;
        assert_eq!(state_of(&v), "completed", "{v:#}\n{}", rig.logs());
        done.push(v);
    }
    done
}

/// Each saga finished exactly once, and upstream each refund was opened once.
async fn assert_once(rig: &Rig, prefix: &str, done: &[Value]) {
    for v in done {
        assert_eq!(records(v, "finished").len(), 1, "{v:#}");
    }
    assert_eq!(rig.listed().await.len(), N);
    let want: Vec<(String, String)> = (0..N)
        .map(|i| ("cancel_paid".to_owned(), format!("tmall-tbc:{prefix}{i}")))
        .collect();
    let effects = rig.effects().await;
    assert_eq!(
        effects.keys().cloned().collect::<Vec<_>>(),
        want,
        "only the paid cancels: {effects:?}"
    );
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
}

fn per_order(stats: &Value, key: &str, id: &str) -> u64 {
    stats[key][id].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn pushed_news_finishes_paid_cancels_without_refund_polls() {
    let mut rig = Rig::new("tmc-push").await;
    let done = run(
        &mut rig,
        "P",
        Some(json!({"enabled": true, "redeliver_after_ms": 500})),
    )
    .await;
    assert_once(&rig, "P", &done).await;
    let admin = tmc_admin(&rig).await;
    let st = &admin["stats"];
    for i in 0..N {
        let id = format!("P{i}");
        assert_eq!(
            per_order(st, "refund_polls", &id),
            0,
            "{id} was polled while its refund was open: {st:#}"
        );
        assert_eq!(
            per_order(st, "order_lookups", &id),
            1,
            "{id}: exactly the lookup that confirms the pushed news: {st:#}"
        );
    }
    for v in &done {
        assert!(
            records(v, "observed")
                .iter()
                .any(|r| r.to_string().contains("callback")),
            "the news came pushed: {v:#}"
        );
    }
    wait_for(&rig, "every message confirmed", async || {
        tmc_admin(&rig).await["stats"]["queued"] == 0
    })
    .await;
    let m = metrics(&rig).await;
    assert!(
        m.contains("rescind_tmc_total{channel=\"tmall-tbc\",event=\"matched\"}"),
        "{m}"
    );
    rig.stop_worker().await;
}

#[tokio::test]
async fn duplicated_and_reordered_messages_change_nothing() {
    let mut rig = Rig::new("tmc-dup").await;
    let done = run(
        &mut rig,
        "D",
        Some(json!({
            "enabled": true,
            "redeliver_after_ms": 300,
            "duplicate_probability": 1.0,
            "reorder": true,
        })),
    )
    .await;
    assert_once(&rig, "D", &done).await;
    let st = tmc_admin(&rig).await["stats"].clone();
    assert!(st["duplicated"].as_u64().unwrap_or(0) >= N as u64, "{st:#}");
    for i in 0..N {
        let id = format!("D{i}");
        assert_eq!(per_order(&st, "refund_polls", &id), 0, "{id}: {st:#}");
        let lookups = per_order(&st, "order_lookups", &id);
        assert!(
            (1..=3).contains(&lookups),
            "{id}: {lookups} lookups (one per confirmed completion at most): {st:#}"
        );
    }
    // Late duplicates keep arriving after the sagas ended: still once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_once(&rig, "D", &done).await;
    rig.stop_worker().await;
}

#[tokio::test]
async fn without_tmc_polling_still_finishes_them() {
    let mut rig = Rig::new("tmc-off").await;
    let done = run(&mut rig, "Q", None).await;
    assert_once(&rig, "Q", &done).await;
    let st = tmc_admin(&rig).await["stats"].clone();
    let polls: u64 = (0..N)
        .map(|i| per_order(&st, "refund_polls", &format!("Q{i}")))
        .sum();
    for i in 0..N {
        let id = format!("Q{i}");
        assert!(
            per_order(&st, "refund_polls", &id) >= 1,
            "{id} polled its open refund: {st:#}"
        );
    }
    assert!(polls >= N as u64);
    assert_eq!(st["published"], 0, "TMC off: nothing queued");
    rig.stop_worker().await;
}
