//! TOP flow control over real HTTP: a real `rescind sim` limiting the app key
//! and a real `rescind worker` (tests/rig), whose `tmall-tbc` and `damai`
//! channels share app key 12129701 and therefore one limiter (its default
//! budget, `gateway.transport.rate_per_s = 20`, `burst = 20`).
//!
//! - `the_app_key_budget_is_kept_across_channels`: the simulator allows the
//!   app key 25 calls/s (burst 25) and bans it for 10 s past that. 60 sagas
//!   of 12 accounts that each cancel on `tmall-tbc` and release on `damai` (120 calls on
//!   the app key) all complete; from the simulator's per-second log, no
//!   k consecutive seconds hold more than k·25 + 20 calls (the bucket's rate
//!   and burst), nothing was refused and no ban happened. Two limiters (one per channel, as before) would
//!   send up to 40/s and be banned.
//! - `a_ban_pauses_every_saga_on_the_app_key_and_they_resume_after_it`: the
//!   simulator bans the app key for 6 s. The first saga's call meets the ban
//!   (code 7); from then on nothing is sent on the app key until the ban
//!   ends: nine more sagas started during it send nothing, none fails, each
//!   journals a `deferred` record to the ban's end and parks (the worker's
//!   `/stats` counts them parked: no task, no slot), and all ten complete
//!   after the ban, each step sent again under a fresh intent (no lookup),
//!   each effect applied once.

mod common;
mod rig;

use rig::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const APP_KEY: &str = "12129701";

/// The simulator's flow log of the app key.
async fn flow_log(rig: &Rig) -> Value {
    common::get_json(&rig.http, &format!("{}/_admin/flow", rig.sim_url))
        .await
        .expect("flow log")["app_keys"][APP_KEY]
        .clone()
}

/// (accepted, refused) per second, oldest first.
fn seconds(log: &Value) -> Vec<(u64, u64, u64)> {
    log["seconds"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["second"].as_u64().unwrap_or(0),
                s["accepted"].as_u64().unwrap_or(0),
                s["refused"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn refused(log: &Value) -> u64 {
    seconds(log).iter().map(|(_, _, r)| r).sum()
}

async fn post_sim(rig: &Rig, path: &str, body: Value) {
    common::post_json(&rig.http, &format!("{}{path}", rig.sim_url), &body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
}

#[tokio::test]
async fn the_app_key_budget_is_kept_across_channels() {
    let mut rig = Rig::new("flow-budget").await;
    post_sim(
        &rig,
        "/_admin/flow",
        json!({"rate_per_s": 25.0, "burst": 25, "ban_secs": 10}),
    )
    .await;
    const N: usize = 60;
    let mut rows = Vec::new();
    for i in 0..N {
        rows.push(tbc_order(&format!("F{i}")));
        rows.push(damai_lock(&format!("L{i}")));
    }
    rig.orders(Value::Array(rows)).await;
    rig.start_worker(&[]).await;
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for i in 0..N {
        let mut body = tbc_cancel(&format!("F{i}"), Some(&format!("L{i}")), &format!("k{i}"));
        // Many accounts: each waits its round-robin turn in the limiter.
        body["account"] = json!(format!("shop-{}", i % 12));
        ids.push(rig.start(&body).await);
    }
    for id in &ids {
        let v = rig.wait_completed(id).await;
        assert_eq!(state_of(&v), "completed", "{v:#}\n{}", rig.logs());
    }
    let took = t0.elapsed();
    let log = flow_log(&rig).await;
    let secs = seconds(&log);
    assert_eq!(
        log["bans"],
        0,
        "the app key was banned: {log:#}\n{}",
        rig.logs()
    );
    assert_eq!(refused(&log), 0, "calls were refused: {secs:?}");
    let busy: Vec<&(u64, u64, u64)> = secs.iter().filter(|(_, a, _)| *a > 0).collect();
    let accepted: u64 = busy.iter().map(|(_, a, _)| a).sum();
    assert!(
        accepted >= 2 * N as u64,
        "{accepted} calls for {N} sagas: {secs:?}"
    );
    // The token bucket's promise (rate 25/s, burst 20): any k consecutive
    // seconds hold at most k·25 + 20 calls. (A slow start lets the bucket
    // fill again, so a second burst later is allowed; more is not.)
    let mut over = Vec::new();
    for (i, (si, _, _)) in secs.iter().enumerate() {
        let mut sum = 0;
        for (sj, a, _) in &secs[i..] {
            sum += a;
            if sum > (sj - si + 1) * 25 + 20 {
                over.push((*si, *sj, sum));
            }
        }
    }
    assert!(
        over.is_empty(),
        "(first second, last second, calls) above k·25 + 20: {over:?} in {secs:?}"
    );
    let effects = rig.effects().await;
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    assert_eq!(effects.len(), 2 * N, "{effects:?}");
    eprintln!(
        "flow: {N} sagas, {accepted} calls in {:.1} s; per second {:?}",
        took.as_secs_f64(),
        busy.iter().map(|(_, a, _)| *a).collect::<Vec<_>>()
    );
    rig.stop_worker().await;
}

#[tokio::test]
async fn a_ban_pauses_every_saga_on_the_app_key_and_they_resume_after_it() {
    let mut rig = Rig::new("flow-ban").await;
    const N: usize = 10;
    let mut rows = Vec::new();
    for i in 0..N {
        rows.push(tbc_order(&format!("B{i}")));
        rows.push(damai_lock(&format!("M{i}")));
    }
    rig.orders(Value::Array(rows)).await;
    rig.start_worker(&[]).await;
    post_sim(
        &rig,
        "/_admin/flow/ban",
        json!({"app_key": APP_KEY, "secs": 6}),
    )
    .await;
    let banned_at = Instant::now();
    let body = |i: usize| tbc_cancel(&format!("B{i}"), Some(&format!("M{i}")), &format!("b{i}"));
    let mut ids = vec![rig.start(&body(0)).await];
    // The first call meets the ban.
    let t = Instant::now();
    while refused(&flow_log(&rig).await) == 0 {
        assert!(
            t.elapsed() < WAIT,
            "no call reached the simulator\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_first = refused(&flow_log(&rig).await);
    for i in 1..N {
        ids.push(rig.start(&body(i)).await);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        banned_at.elapsed() < Duration::from_millis(5_500),
        "the machine is too slow for this check; the ban is nearly over"
    );
    // During the ban: nothing more sent, nothing applied, nothing failed.
    let log = flow_log(&rig).await;
    assert_eq!(
        refused(&log),
        refused_first,
        "calls were sent during the ban: {:?}",
        seconds(&log)
    );
    assert!(rig.effects().await.is_empty(), "applied during the ban");
    let (_, stats) = rig.get("/stats").await;
    assert_eq!(
        stats["engine"]["parked"].as_u64(),
        Some(N as u64),
        "every saga waits parked (no task, no slot), visibly, in /stats: {stats}"
    );
    for id in &ids {
        let (_, v) = rig.get(&format!("/sagas/{id}")).await;
        assert!(
            !matches!(state_of(&v), "failed" | "stuck" | "completed"),
            "{id} during the ban: {v:#}"
        );
        // The wait is journaled: a restart keeps it, and nothing is looked up.
        let deferred = records(&v, "deferred");
        assert_eq!(deferred.len(), 1, "{id}: one deferral: {v:#}");
        let until = deferred[0]["detail"]["until_ms"].as_u64().unwrap_or(0);
        let at = deferred[0]["at_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(
            until > at && until - at <= 6_200,
            "{id}: deferred to the ban's end: {v:#}"
        );
    }
    // After the ban: every saga completes, each effect once.
    for id in &ids {
        let v = rig.wait_completed(id).await;
        assert_eq!(state_of(&v), "completed", "{v:#}\n{}", rig.logs());
        // A deferred step is sent again under a fresh intent, not looked up.
        assert!(
            records(&v, "outcome")
                .iter()
                .all(|o| o["detail"]["via"] != "lookup"),
            "{id}: {v:#}"
        );
        assert_eq!(
            records(&v, "intent").len(),
            3,
            "{id}: the cancel's intent twice (deferred, then sent), the release's once: {v:#}"
        );
    }
    assert!(
        banned_at.elapsed() >= Duration::from_secs(6),
        "finished before the ban ended"
    );
    let effects = rig.effects().await;
    assert!(effects.values().all(|n| *n == 1), "{effects:?}");
    assert_eq!(effects.len(), 2 * N, "{effects:?}");
    let log = flow_log(&rig).await;
    assert_eq!(log["bans"], 1, "{log:#}");
    rig.stop_worker().await;
}
