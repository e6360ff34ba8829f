//! The worker and the command line at their edges, driven the way a careless
//! caller or an attacker would: a real `rescind sim` and a real `rescind
//! worker` process per test, over HTTP on loopback, each case checked against
//! the simulator's effect log (what was really applied upstream), not only
//! against what the worker answers.
//!
//! | test | edge |
//! |---|---|
//! | `refused_input_journals_nothing_and_sends_nothing` | typo'd or unconfigured channels, 1688 ids out of range / with leading zeros / empty: 400 naming field and value (CLI: exit 2, one line); nothing journaled, nothing sent |
//! | `auth_failure_after_the_cancel_is_stuck_then_resumed` | wrong Damai secret, then the `auth` fault, on the release after the irreversible cancel: stuck `credentials:`, lock held, the cancel once; fixed → released once |
//! | `permanent_error_after_the_cancel_is_stuck_never_failed` | the `permanent` fault on the release: stuck with "work still owed", never failed; resumed → completed |
//! | `idempotency_keys_over_http_and_the_cli` | same key + body → 200; same key, other order / kind → 409 naming saga and field; the CLI's default key covers the stock lock |
//! | `expired_top_session_is_stuck_then_resumed` | `invalid_session` on the TBC cancel: stuck `credentials:`, nothing applied; fixed → cancelled once |
//! | `in_doubt_step_resolved_by_an_operator` | a lost cancel whose lookups keep failing: stuck in doubt; resolve wrong step → 409; resolve over HTTP and with `journal resolve` → completed, each effect once, the resolution in the timeline |
//! | `healthz_reports_a_full_journal_disk` | a sled journal on a 2 MiB tmpfs filled up: `/healthz` 503 naming the journal; `/readyz` 200 |
//!
//! The periodic recovery is set to an hour, so a stuck saga moves only when
//! the test resumes (or resolves) it.

mod common;
mod rig;

use common::DAMAI_SECRET_ENV;
use rig::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Refused input is a 400 naming the field and the value, checked against the
/// channels before anything is journaled: no saga in the journal, nothing sent.
fn assert_refused(status: u16, v: &Value, field: &str, value: &str, words: &str) {
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["field"], field, "{v}");
    assert_eq!(v["value"], value, "{v}");
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains(words), "{words:?} not in {msg:?}");
    assert!(
        msg.starts_with(field),
        "the message should name {field}: {msg:?}"
    );
}

/// The CLI refuses with exit 2 and exactly one line on stderr.
fn assert_cli_refused(out: &CliOut, line_start: &str) {
    assert_eq!(out.code, 2, "{out:#?}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {out:#?}");
    assert!(lines[0].starts_with(line_start), "{out:#?}");
    assert!(out.stdout.trim().is_empty(), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_input_journals_nothing_and_sends_nothing() {
    let mut rig = Rig::new("refused").await;
    rig.orders(json!([tbc_order("R1"), damai_lock("L1")])).await;

    // The CLI first (it opens the journal itself: no worker may hold it).
    let out = rig
        .cli(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "R1",
            "--stock-lock",
            "damia:L1",
        ])
        .await;
    assert_cli_refused(
        &out,
        "error: stock_lock.channel `damia` is not configured for stock release; configured: damai",
    );
    let out = rig
        .cli(&["cancel", "--channel", "tmall-tcb", "--order", "R1"])
        .await;
    assert_cli_refused(&out, "error: channel `tmall-tcb` is not configured");
    let out = rig
        .cli(&["cancel", "--channel", "pandapon-1688", "--order", "007"])
        .await;
    assert_cli_refused(&out, "error: order_id `007` has leading zeros");
    let out = rig
        .cli(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "R1",
            "--account",
            "shop:7",
        ])
        .await;
    assert_cli_refused(
        &out,
        "error: account `shop:7` contains ':' (not allowed in an account id)",
    );

    rig.start_worker(&[]).await;
    let (status, v) = rig
        .post(
            "/sagas",
            &tbc_cancel("R1", None, "k-refused").tap(|b| {
                b["stock_lock"] = json!({"channel": "damia", "lock_id": "L1"});
            }),
        )
        .await;
    assert_refused(
        status,
        &v,
        "stock_lock.channel",
        "damia",
        "is not configured",
    );
    assert_eq!(
        v["error"],
        "stock_lock.channel `damia` is not configured for stock release; configured: damai"
    );
    let (status, v) = rig
        .post(
            "/sagas",
            &json!({"kind": "cancel_unpaid", "channel": "tmall-tcb", "order_id": "R1"}),
        )
        .await;
    assert_refused(status, &v, "channel", "tmall-tcb", "is not configured");
    assert!(
        v["error"].as_str().unwrap().contains("tmall-tbc"),
        "lists the configured ones: {v}"
    );
    // A paid cancel and a refund withdraw are checked the same way.
    let (status, v) = rig
        .post("/sagas", &json!({"kind": "withdraw_refund", "channel": "pandapon-tb", "order_id": "1", "refund_id": "RF1"}))
        .await;
    assert_refused(status, &v, "channel", "pandapon-tb", "is not configured");

    for (id, words) in [
        ("18446744073709551616", "is out of range"),
        ("007", "has leading zeros"),
        ("", "is empty"),
        ("12a", "is not a decimal number"),
    ] {
        let (status, v) = rig
            .post("/sagas", &json!({"kind": "cancel_unpaid", "channel": "pandapon-1688", "order_id": id, "key": format!("k-1688-{id}")}))
            .await;
        assert_refused(status, &v, "order_id", id, words);
    }
    let (status, v) = rig
        .post(
            "/sagas",
            &json!({"kind": "cancel_unpaid", "channel": "", "order_id": "R1"}),
        )
        .await;
    assert_refused(status, &v, "channel", "", "is empty");
    let (status, v) = rig
        .post(
            "/sagas",
            &json!({"kind": "cancel_unpaid", "channel": "tmall-tbc", "order_id": "  "}),
        )
        .await;
    assert_refused(status, &v, "order_id", "  ", "is blank");
    let (status, v) = rig
        .post(
            "/sagas",
            &json!({"kind": "cancel_unpaid", "channel": "tmall-tbc", "order_id": "R1", "account": "shop\u{7}"}),
        )
        .await;
    // Control characters come back escaped, never raw.
    assert_refused(
        status,
        &v,
        "account",
        "shop\\u{7}",
        "contains control characters",
    );
    // Nothing journaled by the worker or the CLI, nothing sent upstream.
    assert_eq!(rig.listed().await, Vec::<Value>::new());
    assert_eq!(rig.effects().await, Effects::new());
    assert!(rig.lock_held("L1").await);

    // A refused request does not burn its key: the corrected request under
    // the same key is a new saga, and does the work once.
    let id = rig.start(&tbc_cancel("R1", Some("L1"), "k-refused")).await;
    let s = rig.wait_completed(&id).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:R1"),
            ("release_stock", "damai:L1")
        ])
    );
    assert_eq!(rig.listed().await.len(), 1);
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failure_after_the_cancel_is_stuck_then_resumed() {
    let mut rig = Rig::new("auth").await;
    rig.orders(json!([
        tbc_order("A1"),
        damai_lock("LA1"),
        tbc_order("A2"),
        damai_lock("LA2")
    ]))
    .await;

    // 1. A wrong Damai supplier secret: the simulator refuses the head (1003).
    rig.start_worker(&[(DAMAI_SECRET_ENV, "not-the-damai-secret")])
        .await;
    let a1 = rig.start(&tbc_cancel("A1", Some("LA1"), "k-a1")).await;
    let s = rig.wait_stuck(&a1, 1).await;
    assert!(reason_of(&s).starts_with("credentials:"), "{s:#}");
    assert!(reason_of(&s).contains("release_stock"), "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[("cancel_unpaid", "tmall-tbc:A1")])
    );
    assert!(rig.lock_held("LA1").await, "the lock is still held");
    // Resumed while still wrong: stuck again, nothing sent twice, never failed.
    rig.resume(&a1).await;
    let s = rig.wait_stuck(&a1, 2).await;
    assert!(reason_of(&s).starts_with("credentials:"), "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[("cancel_unpaid", "tmall-tbc:A1")])
    );
    assert!(rig.lock_held("LA1").await);

    // Fixed: the worker restarted with the right secret resumes it at start.
    rig.stop_worker().await;
    rig.start_worker(&[]).await;
    let s = rig.wait_completed(&a1).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:A1"),
            ("release_stock", "damai:LA1")
        ])
    );
    assert!(!rig.lock_held("LA1").await);

    // 2. The same through the simulator's auth fault, fixed without a restart:
    // only POST /sagas/{id}/resume moves the saga.
    rig.faults(json!({"alibaba.damai.yuntoc.order.cancellockstock": {"auth": 1.0}}))
        .await;
    let a2 = rig.start(&tbc_cancel("A2", Some("LA2"), "k-a2")).await;
    let s = rig.wait_stuck(&a2, 1).await;
    assert!(reason_of(&s).starts_with("credentials:"), "{s:#}");
    assert!(rig.lock_held("LA2").await);
    rig.faults(json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = rig.get(&format!("/sagas/{a2}")).await.1;
    assert_eq!(
        state_of(&s),
        "stuck",
        "nothing but a resume moves it: {s:#}"
    );
    rig.resume(&a2).await;
    let s = rig.wait_completed(&a2).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:A1"),
            ("release_stock", "damai:LA1"),
            ("cancel_unpaid", "tmall-tbc:A2"),
            ("release_stock", "damai:LA2"),
        ])
    );
    assert!(!rig.lock_held("LA2").await);
    // A finished saga cannot be resumed; an unknown one is not found; a
    // malformed id is a 400.
    let (status, v) = rig.post(&format!("/sagas/{a2}/resume"), &json!({})).await;
    assert_eq!(status, 409, "{v}");
    let (status, v) = rig
        .post(
            "/sagas/00000000-0000-4000-8000-000000000000/resume",
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = rig.post("/sagas/not-a-saga/resume", &json!({})).await;
    assert_eq!(status, 400, "{v}");
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_after_the_cancel_is_stuck_never_failed() {
    let mut rig = Rig::new("permanent").await;
    rig.orders(json!([tbc_order("P1"), damai_lock("LP1")]))
        .await;
    rig.start_worker(&[]).await;
    rig.faults(json!({"alibaba.damai.yuntoc.order.cancellockstock": {"permanent": 1.0}}))
        .await;
    let id = rig.start(&tbc_cancel("P1", Some("LP1"), "k-p1")).await;
    let s = rig.wait_stuck(&id, 1).await;
    let reason = reason_of(&s);
    assert!(reason.contains("work still owed"), "{s:#}");
    assert!(reason.contains("damai:LP1"), "names the owed lock: {s:#}");
    assert!(!reason.starts_with("credentials:"), "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[("cancel_unpaid", "tmall-tbc:P1")])
    );
    assert!(rig.lock_held("LP1").await);
    // Resumed with the fault still there: stuck again, not failed.
    rig.resume(&id).await;
    let s = rig.wait_stuck(&id, 2).await;
    assert!(reason_of(&s).contains("work still owed"), "{s:#}");
    assert!(
        records(&s, "finished").is_empty(),
        "never finished (failed): {s:#}"
    );
    let (_, unfinished) = rig.get("/sagas?set=unfinished").await;
    assert_eq!(
        unfinished["sagas"].as_array().map(Vec::len),
        Some(1),
        "{unfinished}"
    );

    rig.faults(json!({})).await;
    rig.resume(&id).await;
    let s = rig.wait_completed(&id).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    assert_eq!(s["summary"]["order_state"], "Cancelled", "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:P1"),
            ("release_stock", "damai:LP1")
        ])
    );
    assert!(!rig.lock_held("LP1").await);
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_over_http_and_the_cli() {
    let mut rig = Rig::new("keys").await;
    rig.orders(json!([
        tbc_order("I1"),
        tbc_order("I2"),
        tbc_order("C1"),
        damai_lock("L99")
    ]))
    .await;
    rig.start_worker(&[]).await;
    let body = tbc_cancel("I1", None, "k-i");
    let id = rig.start(&body).await;
    let s = rig.wait_completed(&id).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");

    // The same key and body: the same saga, 200, nothing started.
    let (status, v) = rig.post("/sagas", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!({"saga_id": id, "created": false}));

    // The same key for another order: 409 naming the saga and the field.
    let (status, v) = rig.post("/sagas", &tbc_cancel("I2", None, "k-i")).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["saga_id"], id.as_str(), "{v}");
    assert_eq!(v["fields"], json!(["order_id"]), "{v}");
    assert!(
        v["error"].as_str().unwrap_or_default().contains("k-i"),
        "{v}"
    );
    // ... for another kind.
    let mut paid = body.clone();
    paid["kind"] = json!("cancel_paid");
    let (status, v) = rig.post("/sagas", &paid).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["saga_id"], id.as_str(), "{v}");
    let fields = v["fields"].as_array().cloned().unwrap_or_default();
    assert!(fields.contains(&json!("kind")), "{v}");
    // ... with a stock lock added.
    let (status, v) = rig
        .post("/sagas", &tbc_cancel("I1", Some("L99"), "k-i"))
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["fields"]
            .as_array()
            .unwrap()
            .contains(&json!("stock_lock")),
        "{v}"
    );

    // Only the first order was touched upstream; one saga in the journal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rig.effects().await,
        once(&[("cancel_unpaid", "tmall-tbc:I1")])
    );
    assert_eq!(
        rig.sim_order("tmall-tbc", "I2").await["status"],
        "WAIT_BUYER_PAY"
    );
    assert_eq!(rig.listed().await.len(), 1);
    assert!(rig.lock_held("L99").await);

    // The CLI: its default key covers the stock lock, so adding one to a
    // cancel already done starts a second saga that releases it.
    rig.stop_worker().await;
    let first = rig
        .cli(&["cancel", "--channel", "tmall-tbc", "--order", "C1"])
        .await;
    assert_eq!(first.code, 0, "{first:#?}");
    assert!(
        first.stdout.contains("completed, order Cancelled"),
        "{first:#?}"
    );
    let again = rig
        .cli(&["cancel", "--channel", "tmall-tbc", "--order", "C1"])
        .await;
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(
        again.stderr.contains("already exists"),
        "same command, same saga: {again:#?}"
    );
    let with_lock = rig
        .cli(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "C1",
            "--stock-lock",
            "damai:L99",
        ])
        .await;
    assert_eq!(with_lock.code, 0, "{with_lock:#?}");
    assert!(
        !with_lock.stderr.contains("already exists"),
        "{with_lock:#?}"
    );
    assert!(with_lock.stdout.contains("completed"), "{with_lock:#?}");
    let saga_of = |o: &CliOut| {
        o.stdout
            .split_whitespace()
            .nth(1)
            .map(|s| s.trim_end_matches(':').to_owned())
            .unwrap_or_default()
    };
    assert_ne!(
        saga_of(&first),
        saga_of(&with_lock),
        "{first:#?} {with_lock:#?}"
    );
    // An explicit key reused for another command is refused in one line.
    let out = rig
        .cli(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "I2",
            "--key",
            "k-i",
        ])
        .await;
    assert_cli_refused(&out, "error: ");
    assert!(out.stderr.contains("order_id"), "{out:#?}");

    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:I1"),
            ("cancel_unpaid", "tmall-tbc:C1"),
            ("release_stock", "damai:L99"),
        ])
    );
    assert!(!rig.lock_held("L99").await);
    assert_eq!(
        rig.sim_order("tmall-tbc", "I2").await["status"],
        "WAIT_BUYER_PAY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_top_session_is_stuck_then_resumed() {
    let mut rig = Rig::new("session").await;
    rig.orders(json!([tbc_order("S1"), damai_lock("LS1")]))
        .await;
    rig.start_worker(&[]).await;
    rig.faults(json!({"tmall.tbc.order.cancel": {"invalid_session": 1.0}}))
        .await;
    let id = rig.start(&tbc_cancel("S1", Some("LS1"), "k-s1")).await;
    let s = rig.wait_stuck(&id, 1).await;
    assert!(reason_of(&s).starts_with("credentials:"), "{s:#}");
    assert!(reason_of(&s).contains("cancel_unpaid"), "{s:#}");
    assert_eq!(rig.effects().await, Effects::new(), "nothing applied");
    assert_eq!(
        rig.sim_order("tmall-tbc", "S1").await["status"],
        "WAIT_BUYER_PAY"
    );
    assert!(rig.lock_held("LS1").await);

    rig.faults(json!({})).await;
    rig.resume(&id).await;
    let s = rig.wait_completed(&id).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:S1"),
            ("release_stock", "damai:LS1")
        ])
    );
    assert_eq!(
        rig.sim_order("tmall-tbc", "S1").await["status"],
        "TRADE_CLOSED_BY_TAOBAO"
    );
    assert_eq!(
        records(&s, "intent").len(),
        2,
        "one cancel, one release: {s:#}"
    );
    rig.stop_worker().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_step_resolved_by_an_operator() {
    let mut rig = Rig::new("resolve").await;
    rig.orders(json!([
        tbc_order("D1"),
        damai_lock("LD1"),
        tbc_order("D2"),
        damai_lock("LD2")
    ]))
    .await;
    rig.start_worker(&[]).await;
    // The cancel is applied and its answer lost; every lookup fails with a 5xx.
    rig.faults(json!({
        "tmall.tbc.order.cancel": {"lost_response": 1.0},
        "tmall.tbc.order.get": {"http_5xx": 1.0}
    }))
    .await;
    let d1 = rig.start(&tbc_cancel("D1", Some("LD1"), "k-d1")).await;
    let d2 = rig.start(&tbc_cancel("D2", Some("LD2"), "k-d2")).await;
    for id in [&d1, &d2] {
        let s = rig.wait_stuck(id, 1).await;
        assert!(reason_of(&s).contains("still in doubt"), "{s:#}");
    }
    let applied = once(&[
        ("cancel_unpaid", "tmall-tbc:D1"),
        ("cancel_unpaid", "tmall-tbc:D2"),
    ]);
    assert_eq!(rig.effects().await, applied);

    // Not the step in doubt: 409, nothing journaled.
    let (status, v) = rig
        .post(
            &format!("/sagas/{d1}/resolve"),
            &json!({"step": 1, "applied": true, "reason": "checked", "operator": "carol"}),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("step 1 is not in doubt"),
        "{v}"
    );
    // A resolution must say what was verified.
    let (status, v) = rig
        .post(
            &format!("/sagas/{d1}/resolve"),
            &json!({"step": 0, "applied": true, "reason": " "}),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let s = rig.get(&format!("/sagas/{d1}")).await.1;
    assert!(records(&s, "resolved").is_empty(), "{s:#}");

    // The operator saw the order closed in the seller console: applied. The
    // lookups still fail, so only the resolution can move the saga.
    let (status, v) = rig
        .post(
            &format!("/sagas/{d1}/resolve"),
            &json!({"step": 0, "applied": true, "reason": "seller console shows D1 closed", "operator": "carol"}),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let s = rig.wait_completed(&d1).await;
    assert_eq!(state_of(&s), "completed", "{s:#}");
    let resolved = records(&s, "resolved");
    assert_eq!(resolved.len(), 1, "{s:#}");
    let detail = resolved[0]["detail"].to_string();
    assert!(
        detail.contains("carol") && detail.contains("seller console shows D1 closed"),
        "{detail}"
    );
    let mut want = applied.clone();
    want.insert(("release_stock".into(), "damai:LD1".into()), 1);
    assert_eq!(
        rig.effects().await,
        want,
        "the cancel once, the lock released once"
    );
    assert!(!rig.lock_held("LD1").await);
    // Resolving again: the saga is finished.
    let (status, v) = rig
        .post(
            &format!("/sagas/{d1}/resolve"),
            &json!({"step": 0, "applied": true, "reason": "again"}),
        )
        .await;
    assert_eq!(status, 409, "{v}");

    // The other saga with the CLI, on the stopped worker's journal.
    rig.stop_worker().await;
    let wrong = rig
        .cli(&[
            "journal",
            "resolve",
            &d2,
            "--step",
            "1",
            "--applied",
            "--reason",
            "x",
        ])
        .await;
    assert_cli_refused(&wrong, "error: ");
    assert!(
        wrong.stderr.contains("step 1 is not in doubt"),
        "{wrong:#?}"
    );
    let out = rig
        .cli(&[
            "journal",
            "resolve",
            &d2,
            "--step",
            "0",
            "--applied",
            "--reason",
            "seller console shows D2 closed",
            "--operator",
            "dave",
            "--wait-secs",
            "30",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("completed"), "{out:#?}");
    let show = rig.cli(&["journal", "show", &d2]).await;
    assert_eq!(show.code, 0, "{show:#?}");
    assert!(
        show.stdout
            .contains("resolved step 0 by operator dave: applied")
            && show.stdout.contains("seller console shows D2 closed"),
        "{show:#?}"
    );
    want.insert(("release_stock".into(), "damai:LD2".into()), 1);
    assert_eq!(rig.effects().await, want);
    assert!(!rig.lock_held("LD2").await);
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Write zeros into `path` until the file system refuses.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while let Ok(n) = f.write(&chunk) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    let _ = f.sync_all();
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_full_journal_disk() {
    let base = tempfile::tempdir().expect("tempdir");
    let mnt = base.path().join("small");
    // Declared before the rig: the worker is stopped before the unmount.
    let _tmpfs = match Tmpfs::mount(&mnt, "2m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED healthz_reports_a_full_journal_disk: {e}");
            return;
        }
    };
    let mut rig = Rig::with_journal("healthz", Some(&mnt.join("journal"))).await;
    const ORDERS: usize = 60;
    let orders: Vec<String> = (0..ORDERS).map(|i| format!("H{i:02}")).collect();
    rig.orders(json!(orders
        .iter()
        .map(|o| tbc_order(o))
        .collect::<Vec<_>>()))
        .await;
    rig.start_worker(&[]).await;
    let (status, v) = rig.get("/readyz").await;
    assert_eq!((status, &v), (200, &json!("ready")), "{v}");
    let (status, v) = rig.get("/healthz").await;
    assert_eq!((status, &v), (200, &json!("ok")), "{v}");
    let first = rig.start(&tbc_cancel(&orders[0], None, "k-H00")).await;
    rig.wait_completed(&first).await;

    // Fill the journal's disk while sagas keep coming (sled notices a full
    // disk when a write needs a new page: the sagas' records get it there).
    let filler = mnt.join("filler");
    let written = fill(&filler);
    assert!(written > 0, "the tmpfs took nothing");
    let mut acked = vec![first.clone()];
    let mut next = 1;
    let t0 = Instant::now();
    let unhealthy = loop {
        let (status, v) = rig.get("/healthz").await;
        if status == 503 {
            break v;
        }
        assert_eq!(status, 200, "{v}");
        assert!(
            t0.elapsed() < Duration::from_secs(10) && next < ORDERS,
            "/healthz still {status} {v} {:?} after the journal's disk filled ({written} bytes; {next} sagas submitted)\n{}",
            t0.elapsed(),
            rig.logs()
        );
        let key = format!("k-{}", orders[next]);
        let (status, v) = rig
            .post("/sagas", &tbc_cancel(&orders[next], None, &key))
            .await;
        match status {
            201 => acked.push(v["saga_id"].as_str().unwrap().to_owned()),
            500 | 503 => {} // the journal refused the start: nothing was sent
            _ => panic!("POST /sagas on a full disk: HTTP {status} {v}"),
        }
        next += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let msg = unhealthy["error"].as_str().unwrap_or_default();
    assert!(msg.starts_with("journal: "), "{unhealthy}");
    assert!(msg.contains("refuses writes"), "{unhealthy}");
    eprintln!(
        "/healthz 503 {:?} after the disk filled, {next} sagas submitted: {msg}",
        t0.elapsed()
    );
    // /readyz is about recovery, not health.
    assert_eq!(rig.get("/readyz").await.0, 200);
    // Telling the truth: a start is refused while /healthz says so.
    let (status, v) = rig
        .post(
            "/sagas",
            &tbc_cancel(&orders[next], None, "k-refused-while-full"),
        )
        .await;
    assert!(
        status >= 500,
        "a start on a refusing journal: HTTP {status} {v}"
    );

    // Space freed: /healthz says whether this process's journal takes writes
    // again, and a start agrees with it. (sled keeps refusing after a failed
    // write until it is reopened, so this is a 503 until the restart.)
    std::fs::remove_file(&filler).expect("free the space");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (health, v) = rig.get("/healthz").await;
    let (status, started) = rig
        .post(
            "/sagas",
            &tbc_cancel(&orders[next + 1], None, "k-after-free"),
        )
        .await;
    match health {
        200 => {
            assert_eq!(status, 201, "/healthz said ok: {started}");
            acked.push(started["saga_id"].as_str().unwrap().to_owned());
        }
        503 => {
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("journal: "),
                "{v}"
            );
            assert!(
                status >= 500,
                "/healthz said 503 ({v}) but a start got {status} {started}"
            );
        }
        other => panic!("/healthz {other} {v}"),
    }
    eprintln!("/healthz after the space was freed: {health} {v}");

    // A restart reopens the journal: healthy, and every acknowledged saga is
    // there and finishes, each cancel applied once.
    if let Some(mut w) = rig.worker.take() {
        if w.terminate(Duration::from_secs(10)).await.is_err() {
            w.kill9().await;
        }
    }
    rig.start_worker(&[]).await;
    let (status, v) = rig.get("/healthz").await;
    assert_eq!((status, &v), (200, &json!("ok")), "after the restart: {v}");
    assert_eq!(rig.get("/readyz").await.0, 200);
    let listed = rig.listed().await;
    for id in &acked {
        assert!(
            listed.iter().any(|s| s["id"] == id.as_str()),
            "acknowledged saga {id} lost: {listed:#?}"
        );
    }
    let mut want = Effects::new();
    for s in &listed {
        let id = s["id"].as_str().unwrap();
        let done = rig.wait_completed(id).await;
        assert_eq!(state_of(&done), "completed", "{done:#}");
        want.insert(
            (
                "cancel_unpaid".into(),
                s["order"].as_str().unwrap().to_owned(),
            ),
            1,
        );
    }
    assert_eq!(
        rig.effects().await,
        want,
        "each journaled saga's cancel once, nothing else"
    );
    rig.stop_worker().await;
}

/// `value.tap(|v| ...)`: change a copy in place and return it.
trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl Tap for Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
