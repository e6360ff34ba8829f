//! Per-account credentials over real HTTP: a real `rescind sim` with two
//! seller accounts (each order owned by one, a session checked against its
//! owner) and a real `rescind worker` with an `[accounts]` file and a 0600
//! secrets file.
//!
//! `an_expired_session_parks_its_account_and_a_reload_continues_it`:
//! shopA's session has expired in the simulator; of six sagas, shopB's three
//! complete and shopA's three park stuck `credentials: account shopA` (none
//! failed, nothing applied). `GET /accounts` counts them. A secrets file
//! made readable by others is refused on `POST /accounts/reload` and changes
//! nothing. With a new session in the simulator and the secrets file,
//! `POST /accounts/reload` reports shopA changed and resumes its three
//! sagas, which complete by themselves; then shopB's session expires, two
//! more of its sagas park, and a `SIGHUP` after its new session continues
//! them. Every cancel is applied exactly once (the simulator's effect log).
//! Finally `rescind accounts list` (worker stopped) counts one more saga
//! stuck on shopA, and shows no secret.

mod common;
mod rig;

use rig::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NEVER_MS: u64 = 4_000_000_000_000;

fn write_secrets(dir: &Path, a: &str, b: &str, mode: u32) {
    let p = dir.join("secrets.toml");
    std::fs::write(
        &p,
        format!(
            "[shopA]\ntop_session = \"{a}\"\ntop_session_expires_at_ms = {NEVER_MS}\n\n\
             [shopB]\ntop_session = \"{b}\"\ntop_session_expires_at_ms = {NEVER_MS}\n"
        ),
    )
    .expect("secrets");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

async fn sim_post(rig: &Rig, path: &str, body: Value) -> Value {
    common::post_json(&rig.http, &format!("{}{path}", rig.sim_url), &body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn owned(id: &str, account: &str) -> Value {
    let mut o = tbc_order(id);
    o["account"] = json!(account);
    o
}

fn cancel_for(order: &str, account: &str) -> Value {
    let mut v = tbc_cancel(order, None, &format!("k-{order}"));
    v["account"] = json!(account);
    v
}

async fn stuck_of(rig: &Rig, account: &str) -> u64 {
    let (status, v) = rig.get("/accounts").await;
    assert_eq!(status, 200, "{v}");
    v["accounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["id"] == account)
        .unwrap_or_else(|| panic!("{account} not listed: {v}"))["stuck"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_parks_its_account_and_a_reload_continues_it() {
    let mut rig = Rig::with_worker_keys(
        "accounts",
        None,
        "\n[accounts]\nfile = \"accounts.toml\"\nsecrets_file = \"secrets.toml\"\n",
    )
    .await;
    let dir = rig.dir.path().to_path_buf();
    std::fs::write(
        dir.join("accounts.toml"),
        "[[account]]\nid = \"shopA\"\nchannels = [\"tmall-tbc\"]\n\n\
         [[account]]\nid = \"shopB\"\nchannels = [\"tmall-tbc\"]\n",
    )
    .expect("accounts file");
    write_secrets(&dir, "sA1", "sB1", 0o600);
    sim_post(
        &rig,
        "/_admin/accounts",
        json!([
            {"id": "shopA", "session": "sA1", "expires_at_ms": NEVER_MS},
            {"id": "shopB", "session": "sB1", "expires_at_ms": NEVER_MS}
        ]),
    )
    .await;
    let orders: Vec<Value> = ["A1", "A2", "A3", "A4"]
        .iter()
        .map(|o| owned(o, "shopA"))
        .chain(
            ["B1", "B2", "B3", "B4", "B5"]
                .iter()
                .map(|o| owned(o, "shopB")),
        )
        .collect();
    rig.orders(json!(orders)).await;
    sim_post(&rig, "/_admin/accounts/shopA/expire", json!({})).await;
    rig.start_worker(&[]).await;

    let mut a_ids = Vec::new();
    for o in ["A1", "A2", "A3"] {
        a_ids.push(rig.start(&cancel_for(o, "shopA")).await);
    }
    for o in ["B1", "B2", "B3"] {
        let id = rig.start(&cancel_for(o, "shopB")).await;
        assert_eq!(state_of(&rig.wait_completed(&id).await), "completed");
    }
    for id in &a_ids {
        let s = rig.wait_stuck(id, 1).await;
        assert!(
            reason_of(&s).starts_with("credentials: account shopA: "),
            "{s:#}"
        );
    }
    assert_eq!(stuck_of(&rig, "shopA").await, 3);
    assert_eq!(stuck_of(&rig, "shopB").await, 0);
    assert_eq!(
        rig.effects().await,
        once(&[
            ("cancel_unpaid", "tmall-tbc:B1"),
            ("cancel_unpaid", "tmall-tbc:B2"),
            ("cancel_unpaid", "tmall-tbc:B3")
        ]),
        "nothing of shopA applied"
    );

    // A secrets file others can read: refused, nothing changes.
    sim_post(
        &rig,
        "/_admin/accounts",
        json!({"id": "shopA", "session": "sA2", "expires_at_ms": NEVER_MS}),
    )
    .await;
    write_secrets(&dir, "sA2", "sB1", 0o644);
    let (status, v) = rig.post("/accounts/reload", &json!({})).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("secrets.toml"),
        "{v}"
    );
    assert!(
        !v.to_string().contains("sA2"),
        "no secret in the error: {v}"
    );
    assert_eq!(stuck_of(&rig, "shopA").await, 3, "nothing resumed");

    // The right mode: shopA changed, its three sagas continue by themselves.
    write_secrets(&dir, "sA2", "sB1", 0o600);
    let (status, v) = rig.post("/accounts/reload", &json!({})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["changed"], json!(["shopA"]), "{v}");
    assert_eq!(v["resumed"], 3, "{v}");
    for id in &a_ids {
        assert_eq!(state_of(&rig.wait_completed(id).await), "completed");
    }
    assert_eq!(stuck_of(&rig, "shopA").await, 0);

    // SIGHUP does the same: shopB's session expires, two sagas park, a new
    // session and a SIGHUP continue them.
    sim_post(&rig, "/_admin/accounts/shopB/expire", json!({})).await;
    let mut b_ids = Vec::new();
    for o in ["B4", "B5"] {
        let id = rig.start(&cancel_for(o, "shopB")).await;
        rig.wait_stuck(&id, 1).await;
        b_ids.push(id);
    }
    sim_post(
        &rig,
        "/_admin/accounts",
        json!({"id": "shopB", "session": "sB2", "expires_at_ms": NEVER_MS}),
    )
    .await;
    write_secrets(&dir, "sA2", "sB2", 0o600);
    let pid = rig.worker.as_ref().expect("worker").pid;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    for id in &b_ids {
        assert_eq!(state_of(&rig.wait_completed(id).await), "completed");
    }
    let all: Vec<String> = ["A1", "A2", "A3", "B1", "B2", "B3", "B4", "B5"]
        .iter()
        .map(|o| format!("tmall-tbc:{o}"))
        .collect();
    let pairs: Vec<(&str, &str)> = all.iter().map(|t| ("cancel_unpaid", t.as_str())).collect();
    assert_eq!(rig.effects().await, once(&pairs), "each cancel once");

    // `rescind accounts list` reads the same from the files and the journal
    // (with the worker stopped: it holds the sled journal).
    sim_post(&rig, "/_admin/accounts/shopA/expire", json!({})).await;
    let a4 = rig.start(&cancel_for("A4", "shopA")).await;
    rig.wait_stuck(&a4, 1).await;
    rig.stop_worker().await;
    let out = rig.cli(&["accounts", "list", "--json"]).await;
    assert_eq!(out.code, 0, "{out:#?}");
    let rows: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let stuck: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or("").to_owned(),
                r["stuck"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(
        stuck,
        vec![("shopA".into(), 1), ("shopB".into(), 0)],
        "{rows:?}"
    );
    assert!(
        !out.stdout.contains("sA2") && !out.stdout.contains("sB2"),
        "no secret shown"
    );
    let out = rig.cli(&["accounts", "list"]).await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("shopA") && out.stdout.contains("stuck sagas"),
        "{}",
        out.stdout
    );
}
