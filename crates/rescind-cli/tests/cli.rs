//! End-to-end tests of the `rescind` binary: real processes, the real
//! simulator over HTTP on loopback, a real sled journal on disk. Bad input
//! must give one clear message and a non-zero exit, never a backtrace.

use rescind_sim::{OrderSeed, RefundSeed, Sim, SimConfig, SimServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rescind");

struct Env {
    dir: tempfile::TempDir,
    sim: Sim,
    server: Option<SimServer>,
    cfg: PathBuf,
}

fn order(channel: &str, id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}

fn config(sim_url: &str, tbc_url: &str) -> String {
    format!(
        r#"
[journal]
path = "journal"
[engine]
attempts_max = 6
backoff_initial_ms = 20
backoff_max_ms = 200
attempt_timeout_ms = 2000
refund_poll_initial_ms = 100
refund_poll_max_ms = 300
[worker]
listen = "127.0.0.1:0"
[channels.tmall-tbc]
type = "tmall-tbc"
[channels.tmall-tbc.gateway]
url = "{tbc_url}/router/rest"
app_key = "12129701"
app_secret_env = "T_TOP_SECRET"
[channels.damai]
supplier_key = "damai-supplier"
supplier_secret_env = "T_DAMAI_SECRET"
[channels.damai.gateway]
url = "{sim_url}/router/rest"
app_key = "12129701"
app_secret_env = "T_TOP_SECRET"
[channels.pandapon-taobao]
base_url = "{sim_url}"
access_key = "58c0201dfdf148eca63cbf6bb5e7cf03"
secret_env = "T_PP_SECRET"
user_id = "2100007341207"
[channels.pandapon-1688]
base_url = "{sim_url}"
access_key = "58c0201dfdf148eca63cbf6bb5e7cf03"
secret_env = "T_PP_SECRET"
user_id = "2100007341207"
"#
    )
}

impl Env {
    async fn new() -> Env {
        Self::with_tbc_url(None).await
    }
    /// `tbc_url`: point tmall-tbc somewhere else (an unreachable port).
    async fn with_tbc_url(tbc_url: Option<&str>) -> Env {
        let sim = Sim::new(SimConfig::default());
        let server = sim.serve("127.0.0.1:0").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("rescind.toml");
        std::fs::write(
            &cfg,
            config(&server.base_url, tbc_url.unwrap_or(&server.base_url)),
        )
        .unwrap();
        Env {
            dir,
            sim,
            server: Some(server),
            cfg,
        }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.cfg).args(args);
        c.env("T_TOP_SECRET", rescind_sim::defaults::APP_SECRET)
            .env("T_DAMAI_SECRET", rescind_sim::defaults::SUPPLIER_SECRET)
            .env("T_PP_SECRET", rescind_sim::defaults::PANDAPON_SECRET)
            .env_remove("RUST_LOG")
            .env_remove("RUST_BACKTRACE");
        c
    }
    async fn run(&self, args: &[&str]) -> Out {
        let mut c = self.cmd(args);
        let out = tokio::task::spawn_blocking(move || c.output())
            .await
            .unwrap()
            .unwrap();
        Out::from(out)
    }
    fn effects(&self) -> Vec<(String, String, u64)> {
        self.sim
            .effect_counts()
            .into_iter()
            .map(|((op, t), n)| (op, t, n))
            .collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.server.take();
    }
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Out {
    fn from(o: Output) -> Self {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

impl Out {
    /// A failure must be one clear message: `error: ...`, no panic, no backtrace.
    fn assert_clean_failure(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stderr.contains("error: ") || self.stdout.contains(needle),
            "{self:#?}"
        );
        assert!(
            self.stderr.contains(needle) || self.stdout.contains(needle),
            "expected {needle:?} in {self:#?}"
        );
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            assert!(!self.stderr.contains(bad), "{bad} in {self:#?}");
        }
    }
}

fn uuid_in(s: &str) -> String {
    s.split_whitespace()
        .map(|w| w.trim_end_matches(':'))
        .find(|w| w.len() == 36 && w.chars().filter(|c| *c == '-').count() == 4)
        .unwrap_or_else(|| panic!("no saga id in {s:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_stock_release_is_idempotent_per_key() {
    let env = Env::new().await;
    env.sim
        .add_order(order("tmall-tbc", "O1", "WAIT_BUYER_PAY"));
    env.sim.add_order(OrderSeed {
        stock_lock: Some("L1".into()),
        ..order("damai", "L1", "WAIT_PAY")
    });
    let out = env
        .run(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "O1",
            "--stock-lock",
            "damai:L1",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("completed, order Cancelled"),
        "{out:#?}"
    );
    let again = env
        .run(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "O1",
            "--stock-lock",
            "damai:L1",
        ])
        .await;
    assert_eq!(again.code, 0, "{again:#?}");
    assert!(again.stderr.contains("already exists"), "{again:#?}");
    assert_eq!(uuid_in(&out.stdout), uuid_in(&again.stdout));
    assert_eq!(
        env.effects(),
        vec![
            ("cancel_unpaid".into(), "tmall-tbc:O1".into(), 1),
            ("release_stock".into(), "damai:L1".into(), 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_then_resume_then_journal_commands() {
    let env = Env::new().await;
    env.sim.add_order(order(
        "pandapon-1688",
        "2542285634920880794",
        "waitbuyerpay",
    ));
    let out = env
        .run(&[
            "cancel",
            "--channel",
            "pandapon-1688",
            "--order",
            "2542285634920880794",
            "--no-wait",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:#?}");
    let id = out.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "{out:#?}");

    let list = env.run(&["journal", "list", "--json"]).await;
    assert_eq!(list.code, 0, "{list:#?}");
    let v: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v["sagas"].as_array().unwrap().len(), 1);

    let resumed = env.run(&["journal", "resume", &id]).await;
    assert_eq!(resumed.code, 0, "{resumed:#?}");
    assert!(resumed.stdout.contains("completed"), "{resumed:#?}");
    assert_eq!(
        env.effects(),
        vec![(
            "cancel_unpaid".into(),
            "pandapon-1688:2542285634920880794".into(),
            1
        )]
    );

    let show = env.run(&["journal", "show", &id]).await;
    assert_eq!(show.code, 0, "{show:#?}");
    for word in [
        "started cancel_unpaid",
        "intent  step 0: cancel_unpaid",
        "outcome step 0",
        "finished",
    ] {
        assert!(show.stdout.contains(word), "{word:?} missing in {show:#?}");
    }
    let show_json = env.run(&["journal", "show", &id, "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&show_json.stdout).unwrap();
    assert_eq!(v["summary"]["state"], "completed");
    assert_eq!(v["timeline"].as_array().unwrap().len(), 4);

    let filtered = env
        .run(&[
            "journal",
            "list",
            "--state",
            "completed",
            "--channel",
            "pandapon-1688",
            "--kind",
            "cancel_unpaid",
        ])
        .await;
    assert!(filtered.stdout.contains(&id), "{filtered:#?}");
    let none = env.run(&["journal", "list", "--state", "stuck"]).await;
    assert!(!none.stdout.contains(&id), "{none:#?}");
    let old = env.run(&["journal", "list", "--older-than", "1d"]).await;
    assert!(!old.stdout.contains(&id), "{old:#?}");

    let stats = env.run(&["journal", "stats", "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap();
    assert_eq!(v["by_state"]["completed"], 1);
    assert_eq!(v["by_channel"]["pandapon-1688"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_refund_and_abort_with_compensation() {
    let env = Env::new().await;
    env.sim.add_order(OrderSeed {
        refund: Some(RefundSeed {
            refund_id: "RF1".into(),
            status: "WAIT_SELLER_AGREE".into(),
        }),
        ..order("pandapon-taobao", "TB1", "WAIT_SELLER_SEND_GOODS")
    });
    let out = env
        .run(&[
            "withdraw-refund",
            "--channel",
            "pandapon-taobao",
            "--order",
            "TB1",
            "--refund",
            "RF1",
            "--json",
        ])
        .await;
    assert_eq!(out.code, 0, "{out:#?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["summary"]["state"], "completed");

    // A paid cancel whose refund never completes: the wait times out, the saga stays
    // durable; an operator aborts it and the opened refund is withdrawn.
    env.sim
        .add_order(order("pandapon-taobao", "TB2", "WAIT_SELLER_SEND_GOODS"));
    let out = env
        .run(&[
            "cancel",
            "--channel",
            "pandapon-taobao",
            "--order",
            "TB2",
            "--paid",
            "--wait-secs",
            "2",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.contains("still running"), "{out:#?}");
    let id = uuid_in(&out.stdout);
    let abort = env
        .run(&[
            "journal",
            "abort",
            &id,
            "--reason",
            "customer kept the order",
        ])
        .await;
    assert_eq!(abort.code, 0, "{abort:#?}");
    assert!(
        abort
            .stdout
            .contains("aborted (customer kept the order); compensated: true"),
        "{abort:#?}"
    );
    let ops: Vec<String> = env
        .effects()
        .into_iter()
        .map(|(op, t, n)| format!("{op} {t} {n}"))
        .collect();
    assert!(
        ops.contains(&"cancel_paid pandapon-taobao:TB2 1".to_owned()),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o.starts_with("withdraw_refund pandapon-taobao:RT")),
        "{ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_and_fixes() {
    let env = Env::new().await;
    env.sim.add_order(order("tmall-tbc", "A", "WAIT_BUYER_PAY"));
    env.sim
        .add_order(order("tmall-tbc", "B", "TRADE_CLOSED_BY_TAOBAO"));
    env.sim
        .add_order(order("pandapon-1688", "77", "waitbuyerpay"));
    let orders = env.dir.path().join("orders.csv");
    std::fs::write(
        &orders,
        "channel,order_id,local_state,refund_id\ntmall-tbc,A,cancelled,\ntmall-tbc,B,cancelled,\npandapon-1688,77,pending_pay,\ntmall-tbc,NOPE,paid,\n",
    )
    .unwrap();
    let p = orders.to_str().unwrap();
    let out = env.run(&["reconcile", "--orders", p, "--json"]).await;
    assert_eq!(out.code, 1, "mismatches remain: {out:#?}");
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<&str> = lines[..4]
        .iter()
        .map(|l| l["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "local_cancelled_upstream_open",
            "in_sync",
            "in_sync",
            "not_found"
        ]
    );
    assert_eq!(lines[4]["summary"]["in_sync"], 2);

    let csv = env.run(&["reconcile", "--orders", p, "--csv"]).await;
    assert!(
        csv.stdout.starts_with("channel,order_id,local_state"),
        "{csv:#?}"
    );

    let fixed = env.run(&["reconcile", "--orders", p, "--fix"]).await;
    assert!(
        fixed.stdout.contains("after --fix: 1 mismatch(es) remain"),
        "{fixed:#?}"
    ); // NOPE stays not found
    assert_eq!(fixed.code, 1);
    assert!(
        env.effects()
            .contains(&("cancel_unpaid".into(), "tmall-tbc:A".into(), 1)),
        "{:?}",
        env.effects()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_serves_api_metrics_and_stops_on_sigterm() {
    let env = Env::new().await;
    env.sim
        .add_order(order("tmall-tbc", "W1", "WAIT_BUYER_PAY"));
    let mut child = env
        .cmd(&["worker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line {first:?}"))
        .to_owned();
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let r = http
        .post(format!("{url}/sagas"))
        .json(&serde_json::json!({ "kind": "cancel_unpaid", "channel": "tmall-tbc", "order_id": "W1", "key": "k1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<serde_json::Value>().await.unwrap()["saga_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bad = http
        .post(format!("{url}/sagas"))
        .json(&serde_json::json!({ "kind": "withdraw_refund", "channel": "x", "order_id": "1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("refund_id"));
    let mut state = String::new();
    for _ in 0..100 {
        let v: serde_json::Value = http
            .get(format!("{url}/sagas/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        state = v["summary"]["state"].as_str().unwrap_or("").to_owned();
        if state == "completed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(state, "completed");
    let missing = http
        .get(format!("{url}/sagas/00000000-0000-0000-0000-000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for m in [
        "rescind_sagas_started_total{kind=\"cancel_unpaid\",channel=\"tmall-tbc\"} 1",
        "rescind_sagas_finished_total{kind=\"cancel_unpaid\",channel=\"tmall-tbc\",outcome=\"completed\"} 1",
        "rescind_step_latency_ms_bucket",
    ] {
        assert!(metrics.contains(m), "{m} missing in {metrics}");
    }
    // While the worker holds the journal, the CLI says so instead of failing obscurely.
    let locked = env.run(&["journal", "list"]).await;
    locked.assert_clean_failure(2, "cannot open the journal");
    // ...and the "a running worker holds it" hint comes with this error.
    locked.assert_clean_failure(2, "is locked");
    locked.assert_clean_failure(2, "holds a sled journal");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "worker exit {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_one_clear_message() {
    let env = Env::with_tbc_url(Some("http://127.0.0.1:9")).await;
    // Unknown key in the config.
    std::fs::write(env.dir.path().join("bad.toml"), "[engine]\nattempts = 3\n").unwrap();
    let mut c = Command::new(BIN);
    let out: Out = c
        .args([
            "--config",
            env.dir.path().join("bad.toml").to_str().unwrap(),
            "journal",
            "list",
        ])
        .output()
        .unwrap()
        .into();
    out.assert_clean_failure(2, "`engine`: unknown field `attempts`");
    // Missing config file.
    let out: Out = Command::new(BIN)
        .args(["--config", "/nonexistent/rescind.toml", "journal", "list"])
        .output()
        .unwrap()
        .into();
    out.assert_clean_failure(2, "cannot read /nonexistent/rescind.toml");
    // Missing secret.
    let out: Out = Command::new(BIN)
        .args(["--config", env.cfg.to_str().unwrap(), "journal", "list"])
        .env_remove("T_TOP_SECRET")
        .output()
        .unwrap()
        .into();
    out.assert_clean_failure(2, "environment variable T_TOP_SECRET is not set");
    // Unreachable channel: the saga stays durable and the command says why.
    env.sim
        .add_order(order("tmall-tbc", "U1", "WAIT_BUYER_PAY"));
    let out = env
        .run(&[
            "cancel",
            "--channel",
            "tmall-tbc",
            "--order",
            "U1",
            "--wait-secs",
            "3",
        ])
        .await;
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stdout.contains("stuck") || out.stdout.contains("still running"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("127.0.0.1:9")
            || out.stdout.contains("not sent")
            || out.stdout.contains("connect"),
        "{out:#?}"
    );
    // Unknown saga id, and not an id at all.
    env.run(&["journal", "show", "6f0c3a5e-1111-4222-8333-944455556666"])
        .await
        .assert_clean_failure(2, "is not in the journal");
    env.run(&["journal", "show", "xyz"])
        .await
        .assert_clean_failure(2, "is not a saga id");
    env.run(&["journal", "abort", "6f0c3a5e-1111-4222-8333-944455556666"])
        .await
        .assert_clean_failure(2, "is not in the journal");
    // Bad flag values.
    env.run(&["journal", "list", "--older-than", "3 weeks"])
        .await
        .assert_clean_failure(2, "--older-than");
    env.run(&[
        "cancel",
        "--channel",
        "tmall-tbc",
        "--order",
        "U1",
        "--stock-lock",
        "nocolon",
    ])
    .await
    .assert_clean_failure(2, "CHANNEL:LOCK_ID");
    env.run(&["reconcile", "--orders", "/nonexistent.csv"])
        .await
        .assert_clean_failure(2, "cannot read /nonexistent.csv");
    // An unreadable journal: the journal path is a plain file.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("journal"), b"not a database").unwrap();
    std::fs::write(dir.path().join("c.toml"), "[journal]\npath = \"journal\"\n").unwrap();
    let out: Out = Command::new(BIN)
        .args([
            "--config",
            dir.path().join("c.toml").to_str().unwrap(),
            "journal",
            "stats",
        ])
        .output()
        .unwrap()
        .into();
    out.assert_clean_failure(2, "cannot open the journal");
    let _ = Path::new(".");
}

#[test]
fn sim_subcommand_prints_its_address_first() {
    let mut child = Command::new(BIN)
        .args(["sim", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );
}

#[test]
fn demo_totals_add_up_and_every_effect_happened_once() {
    let dir = tempfile::tempdir().unwrap();
    let out: Out = Command::new(BIN)
        .args([
            "demo",
            "--orders",
            "240",
            "--seed",
            "7",
            "--json",
            "--keep",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.code, 0, "{out:#?}");
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
    assert_eq!(v["exactly_once"], true, "{v:#}");
    assert_eq!(v["killed"], true, "{v:#}");
    assert!(v["finished_at_kill"].as_u64().unwrap() >= 120, "{v:#}");
    assert_eq!(v["unfinished"], 0);
    let total: u64 = v["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|m| m.as_object().unwrap().values())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 240, "{v:#}");
    let by_channel: u64 = v["by_channel"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_channel, 240);
    assert_eq!(
        v["by_kind"].as_object().unwrap().len(),
        3,
        "all three built-in sagas ran: {v:#}"
    );
    assert_eq!(
        v["by_channel"].as_object().unwrap().len(),
        3,
        "tmall-tbc, pandapon-1688, pandapon-taobao: {v:#}"
    );
    assert!(v["effects"].as_u64().unwrap() >= 240);
    for k in [
        "duplicated_effects",
        "missing_effects",
        "unexpected_effects",
    ] {
        assert_eq!(v[k].as_array().unwrap().len(), 0, "{k}: {v:#}");
    }
}

/// The CLI on a PostgreSQL journal (`postgres_url_env` in the config). Needs
/// `RESCIND_PG_URL`; skipped without it, except under `CI=true` where a
/// missing database is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_journal_on_postgres() {
    let Ok(url) = std::env::var("RESCIND_PG_URL") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true but RESCIND_PG_URL is not set"
        );
        eprintln!("skipped: RESCIND_PG_URL is not set (source .ci/postgres to run it)");
        return;
    };
    let env = Env::new().await;
    let text = std::fs::read_to_string(&env.cfg)
        .unwrap()
        .replace("path = \"journal\"", "postgres_url_env = \"T_PG_URL\"");
    std::fs::write(&env.cfg, text).unwrap();
    // Orders unique to this run: the database outlives the test.
    let id = format!(
        "PG{}",
        std::process::id() as u64 * 1_000_000
            + u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_micros()
            )
    );
    env.sim.add_order(order("tmall-tbc", &id, "WAIT_BUYER_PAY"));
    let run = |args: Vec<String>| {
        let mut c = env.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        c.env("T_PG_URL", &url);
        async move {
            Out::from(
                tokio::task::spawn_blocking(move || c.output())
                    .await
                    .unwrap()
                    .unwrap(),
            )
        }
    };
    let out = run(vec![
        "cancel".into(),
        "--channel".into(),
        "tmall-tbc".into(),
        "--order".into(),
        id.clone(),
    ])
    .await;
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(
        out.stdout.contains("completed, order Cancelled"),
        "{out:#?}"
    );
    let saga = uuid_in(&out.stdout);
    let show = run(vec![
        "journal".into(),
        "show".into(),
        saga.clone(),
        "--json".into(),
    ])
    .await;
    assert_eq!(show.code, 0, "{show:#?}");
    let v: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(v["summary"]["state"], "completed");
    assert_eq!(
        env.effects(),
        vec![("cancel_unpaid".into(), format!("tmall-tbc:{id}"), 1)]
    );
    // A bad URL is a clear error that does not print the password.
    let mut c = env.cmd(&["journal", "list"]);
    c.env("T_PG_URL", "postgres://rescind:hunter2@127.0.0.1:1/rescind");
    let out: Out = tokio::task::spawn_blocking(move || c.output())
        .await
        .unwrap()
        .unwrap()
        .into();
    out.assert_clean_failure(2, "cannot open the journal");
    assert!(!out.stderr.contains("hunter2"), "password leaked: {out:#?}");
}
