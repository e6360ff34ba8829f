//! The real-process crash test (issue 3).
//!
//! The simulator runs as its own process (`rescind sim`, the same binary);
//! the worker (`rescind worker`) runs as a child process over a sled journal.
//! Several hundred sagas of every built-in kind are submitted (idempotent
//! keys) and the worker is killed with SIGKILL after a seeded random delay,
//! restarted, killed again — `RESCIND_KILL_CYCLES` times (default 50). About
//! one kill in ten is aimed at start-up/recovery, before the worker prints its
//! `listening on` line (which it prints only after `recover()` returned).
//! Then a last worker finishes everything and is stopped with SIGTERM, and the
//! test opens the sled journal itself and checks:
//!
//! - every worker life started: the sled journal reopened after every kill
//!   (sled issue 1533: a 0.34 database failing to open after an abrupt stop
//!   shows up here as a failure naming the seed and the cycle);
//! - every saga is in the journal once and terminal (completed);
//! - the simulator's effect log has every (op, target) at most once, every
//!   expected effect of a completed saga exactly once, and nothing else;
//! - the journal's final order state of every saga agrees with the
//!   simulator's order, refund and stock lock.
//!
//! `RESCIND_KILL_SEED` replays a run (the workload, the simulator's fault
//! draws and the kill schedule; thread timing is not replayed). A failure
//! prints the seed, the replay command, the worker logs' tail, an excerpt of
//! the effect log and the (kept) directory with every life's log.

use rescind_core::{Rng, SagaId, SagaSet, SplitMix64};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The seed CI runs with (override with `RESCIND_KILL_SEED`).
const DEFAULT_SEED: u64 = 20_240_603;
/// Kill cycles per run (override with `RESCIND_KILL_CYCLES`).
const DEFAULT_CYCLES: usize = 50;
/// Sagas in the workload.
const SAGAS: usize = 240;
/// Concurrent submissions.
const SUBMIT_CONCURRENCY: usize = 32;
/// A worker must print `listening on` within this.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The last worker must finish every saga within this.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Delay from `listening on` to the kill, ms (uniform).
const KILL_DELAY_MS: (u64, u64) = (20, 400);
/// Share of kills aimed at start-up/recovery, percent.
const RECOVERY_KILL_PCT: usize = 10;
/// A recovery kill comes after this share of the last life's start-up time
/// (spawn to `listening on`), percent (uniform).
const RECOVERY_KILL_AT_PCT: (u64, u64) = (40, 95);
/// Lives a recovery-aimed cycle may kill to land one kill in recovery.
const RECOVERY_KILL_TRIES: usize = 3;
/// The merchant completes refunds of waiting sagas spread over this share of
/// the cycles, so that sagas stay unfinished across many lives.
const REFUND_RELEASE_SPAN_PCT: usize = 80;

const TOP_SECRET_ENV: &str = "RESCIND_KILL_TOP_SECRET";
const DAMAI_SECRET_ENV: &str = "RESCIND_KILL_DAMAI_SECRET";
const PANDAPON_SECRET_ENV: &str = "RESCIND_KILL_PANDAPON_SECRET";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_rescind")
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a non-negative integer"),
    }
}

// ---------------------------------------------------------------- workload

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Tmall TBC, unpaid, Damai stock lock; some buyers pay meanwhile.
    TbcUnpaidLock,
    /// 1688 through PandaPon, unpaid.
    P1688Unpaid,
    /// Taobao through PandaPon: withdraw an open refund.
    TaobaoWithdraw,
    /// Tmall TBC, paid, Damai stock lock: cancel, wait for the refund.
    TbcPaidLock,
    /// Taobao through PandaPon, paid: cancel, wait for the refund.
    TaobaoPaid,
}

#[derive(Clone, Debug)]
struct Planned {
    class: Class,
    key: String,
    id: SagaId,
    req: Value,
    channel: String,
    order_id: String,
    lock: Option<String>,
    refund_id: Option<String>,
    /// The buyer pays right after the first worker starts (unpaid TBC only).
    pay_race: bool,
    /// The merchant completes this order's refund from this cycle on.
    release_cycle: usize,
}

impl Planned {
    fn may_refund(&self) -> bool {
        matches!(self.class, Class::TbcPaidLock | Class::TaobaoPaid) || self.pay_race
    }
}

fn order_row(channel: &str, id: &str, status: &str) -> Value {
    json!({"channel": channel, "order_id": id, "status": status})
}

fn workload(seed: u64, cycles: usize) -> (Vec<Planned>, Vec<Value>) {
    let rng = SplitMix64::new(seed ^ 0x776f_726b_6c6f_6164);
    let span = (cycles * REFUND_RELEASE_SPAN_PCT / 100).max(1) as u64;
    let mut plan = Vec::with_capacity(SAGAS);
    let mut rows = Vec::new();
    for i in 0..SAGAS {
        let roll = rng.below(100);
        let class = match roll {
            0..=29 => Class::TbcUnpaidLock,
            30..=54 => Class::P1688Unpaid,
            55..=74 => Class::TaobaoWithdraw,
            75..=89 => Class::TbcPaidLock,
            _ => Class::TaobaoPaid,
        };
        let (kind, channel, order_id) = match class {
            Class::TbcUnpaidLock => ("cancel_unpaid", "tmall-tbc", format!("KTBC{i:05}")),
            Class::TbcPaidLock => ("cancel_paid", "tmall-tbc", format!("KTBC{i:05}")),
            Class::P1688Unpaid => (
                "cancel_unpaid",
                "pandapon-1688",
                (2_542_285_634_920_000_000u64 + i as u64).to_string(),
            ),
            Class::TaobaoWithdraw => ("withdraw_refund", "pandapon-taobao", format!("KTB{i:05}")),
            Class::TaobaoPaid => ("cancel_paid", "pandapon-taobao", format!("KTB{i:05}")),
        };
        let key = format!("kill-loop:{seed}:{kind}:{channel}:{order_id}");
        let mut req = json!({
            "kind": kind,
            "channel": channel,
            "order_id": order_id,
            "reason": "kill loop",
            "key": key,
        });
        let mut lock = None;
        let mut refund_id = None;
        let mut pay_race = false;
        match class {
            Class::TbcUnpaidLock | Class::TbcPaidLock => {
                let l = format!("KL{i:05}");
                let status = if class == Class::TbcUnpaidLock {
                    "WAIT_BUYER_PAY"
                } else {
                    "WAIT_SELLER_SEND_GOODS"
                };
                rows.push(order_row(channel, &order_id, status));
                rows.push(json!({"channel": "damai", "order_id": l, "status": "WAIT_PAY", "stock_lock": l}));
                req["stock_lock"] = json!({"channel": "damai", "lock_id": l});
                lock = Some(l);
                pay_race = class == Class::TbcUnpaidLock && rng.below(6) == 0;
            }
            Class::P1688Unpaid => rows.push(order_row(channel, &order_id, "waitbuyerpay")),
            Class::TaobaoWithdraw => {
                let r = format!("KRF{i:05}");
                let mut row = order_row(channel, &order_id, "WAIT_SELLER_SEND_GOODS");
                row["refund"] = json!({"refund_id": r, "status": "WAIT_SELLER_AGREE"});
                rows.push(row);
                req["refund_id"] = json!(r);
                refund_id = Some(r);
            }
            Class::TaobaoPaid => rows.push(order_row(channel, &order_id, "WAIT_SELLER_SEND_GOODS")),
        }
        plan.push(Planned {
            class,
            id: SagaId::from_key(&key),
            key,
            req,
            channel: channel.to_owned(),
            order_id,
            lock,
            refund_id,
            pay_race,
            release_cycle: rng.below(span) as usize,
        });
    }
    (plan, rows)
}

fn faults_json() -> Value {
    // Modest, so that every life makes progress: lost responses (applied, the
    // answer lost: in doubt), 5xx and isp (not applied), rate limits with 1 s bans.
    json!({"default": {
        "latency_min_ms": 0,
        "latency_max_ms": 4,
        "http_5xx": 0.02,
        "isp": 0.02,
        "rate_limit": 0.005,
        "rate_limit_ban_secs": 1,
        "lost_response": 0.05
    }})
}

fn config_text(sim_url: &str) -> String {
    format!(
        r#"# Written by the kill_loop test.
[journal]
path = "journal"

[engine]
in_flight_max = 512
attempts_max = 40
backoff_initial_ms = 50
backoff_max_ms = 1000
attempt_timeout_ms = 3000
refund_poll_initial_ms = 300
refund_poll_max_ms = 1500

[worker]
listen = "127.0.0.1:0"
callback_store = "callbacks.jsonl"
recover_interval_ms = 2000
shutdown_grace_ms = 2000

[channels.tmall-tbc]
type = "tmall-tbc"
[channels.tmall-tbc.gateway]
url = "{sim_url}/router/rest"
app_key = "{app_key}"
app_secret_env = "{TOP_SECRET_ENV}"
sign_method = "hmac-sha256"
[channels.tmall-tbc.gateway.transport]
rate_per_sec = 2000.0
rate_burst = 200

[channels.damai]
type = "damai"
supplier_key = "{supplier_key}"
supplier_secret_env = "{DAMAI_SECRET_ENV}"
[channels.damai.gateway]
url = "{sim_url}/router/rest"
app_key = "{app_key}"
app_secret_env = "{TOP_SECRET_ENV}"
[channels.damai.gateway.transport]
rate_per_sec = 2000.0
rate_burst = 200

[channels.pandapon-taobao]
type = "pandapon-taobao"
base_url = "{sim_url}"
access_key = "{access_key}"
secret_env = "{PANDAPON_SECRET_ENV}"
user_id = "{user_id}"
rate_limit = {{ requests_per_sec_max = 2000 }}

[channels.pandapon-1688]
type = "pandapon-1688"
base_url = "{sim_url}"
access_key = "{access_key}"
secret_env = "{PANDAPON_SECRET_ENV}"
user_id = "{user_id}"
rate_limit = {{ requests_per_sec_max = 2000 }}
"#,
        app_key = rescind_sim::defaults::APP_KEY,
        supplier_key = rescind_sim::defaults::SUPPLIER_KEY,
        access_key = rescind_sim::defaults::PANDAPON_ACCESS_KEY,
        user_id = rescind_sim::defaults::PANDAPON_USER_ID,
    )
}

// ---------------------------------------------------------------- processes

/// A child process of the `rescind` binary whose first stdout line is
/// `listening on URL`; the rest of stdout is drained, stderr goes to `log`.
struct Proc {
    child: Child,
    pid: u32,
    log: PathBuf,
    /// The URL and the time from spawn to the line, once printed.
    listening: watch::Receiver<Option<(String, Duration)>>,
    reader: tokio::task::JoinHandle<()>,
}

fn spawn_proc(args: &[&str], dir: &Path, log_name: &str) -> Result<Proc, String> {
    let log = dir.join(log_name);
    let f = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut cmd = Command::new(exe());
    cmd.args(args)
        .current_dir(dir)
        .env(TOP_SECRET_ENV, rescind_sim::defaults::APP_SECRET)
        .env(DAMAI_SECRET_ENV, rescind_sim::defaults::SUPPLIER_SECRET)
        .env(PANDAPON_SECRET_ENV, rescind_sim::defaults::PANDAPON_SECRET)
        .env_remove("RESCIND_CONFIG");
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(f))
        .kill_on_drop(true);
    let spawned = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {}: {e}", exe()))?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take().ok_or("stdout not captured")?;
    let (tx, rx) = watch::channel(None);
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = tx.send(Some((url.trim().to_owned(), spawned.elapsed())));
            }
        }
    });
    Ok(Proc {
        child,
        pid,
        log,
        listening: rx,
        reader,
    })
}

impl Proc {
    /// Wait for `listening on`; an exit or a timeout first is an error.
    async fn wait_listening(&mut self) -> Result<(String, Duration), String> {
        match tokio::time::timeout(START_TIMEOUT, self.listening.wait_for(|v| v.is_some())).await {
            Ok(Ok(v)) => Ok(v.clone().expect("checked by wait_for")),
            Ok(Err(_)) => {
                // stdout closed without the line: the process is exiting.
                let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                    .await
                    .map(|s| s.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()))
                    .unwrap_or_else(|_| "still running with stdout closed".into());
                Err(format!("exited before printing `listening on` ({status})"))
            }
            Err(_) => Err(format!(
                "printed no `listening on` line within {} s",
                START_TIMEOUT.as_secs()
            )),
        }
    }

    /// SIGKILL, wait for the exit and drain stdout. Returns whether the
    /// `listening on` line had been written when the process died.
    async fn kill9(&mut self) -> bool {
        let _ = self.child.kill().await; // start_kill (SIGKILL) + wait
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let listened = self.listening.borrow().is_some();
        listened
    }
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(unreadable: {e})"));
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {} of {} lines) ---\n{}",
        path.display(),
        all.len() - from,
        all.len(),
        all[from..].join("\n")
    )
}

/// Make a start failure of a worker life say what it means.
fn explain_start_failure(cycle: &str, seed: u64, why: &str, log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let journal_line = text
        .lines()
        .find(|l| l.contains("cannot open the journal") || l.contains("sled"))
        .map(str::to_owned);
    let panicked = text.contains("panicked");
    let mut msg = format!("worker life at {cycle} (seed {seed}) {why}");
    if let Some(l) = journal_line {
        msg.push_str(&format!(
            "\n  THE SLED JOURNAL DID NOT REOPEN after the previous kill -9 \
             (sled issue 1533 on 0.34?): {l}"
        ));
    }
    if panicked {
        msg.push_str("\n  the worker panicked (see its log)");
    }
    msg
}

// ---------------------------------------------------------------- HTTP

async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let r = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{url}: HTTP {status}: {v}"))
    }
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    let r = http
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{url}: HTTP {status}: {v}"))
    }
}

/// Submit every saga not yet acknowledged to the worker at `url`; stops
/// quietly when the worker goes away (the next life resubmits: keys make a
/// repeated submission find the saga it already created).
fn submit_pending(
    http: reqwest::Client,
    url: String,
    plan: Arc<Vec<Planned>>,
    acked: Arc<Mutex<BTreeSet<usize>>>,
    refused: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pending: Vec<usize> = {
            let a = acked.lock().unwrap();
            (0..plan.len()).filter(|i| !a.contains(i)).collect()
        };
        let sem = Arc::new(tokio::sync::Semaphore::new(SUBMIT_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for i in pending {
            let (http, url, plan, acked, refused, sem) = (
                http.clone(),
                url.clone(),
                plan.clone(),
                acked.clone(),
                refused.clone(),
                sem.clone(),
            );
            set.spawn(async move {
                let Ok(_permit) = sem.acquire_owned().await else {
                    return;
                };
                let p = &plan[i];
                match http.post(format!("{url}/sagas")).json(&p.req).send().await {
                    Ok(r) if r.status().is_success() => {
                        let body: Value = r.json().await.unwrap_or_default();
                        let id = body["saga_id"].as_str().unwrap_or_default();
                        if id != p.id.to_string() {
                            refused.lock().unwrap().push(format!(
                                "{}: the worker answered saga id {id:?}, the key names {}",
                                p.key, p.id
                            ));
                        }
                        acked.lock().unwrap().insert(i);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{}: HTTP {status}: {body}", p.key));
                    }
                    Err(_) => {} // the worker died; resubmitted to the next life
                }
            });
        }
        while set.join_next().await.is_some() {}
    })
}

/// The merchant: completes the refunds of waiting sagas, each from its
/// release cycle on (all of them once `cycle` is `usize::MAX`).
fn merchant(
    http: reqwest::Client,
    sim: String,
    plan: Arc<Vec<Planned>>,
    cycle: Arc<AtomicUsize>,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let rng = SplitMix64::new(seed ^ 0x6d65_7263_6861_6e74);
        let mut last: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = cycle.load(Ordering::Relaxed);
            let Ok(state) = get_json(&http, &format!("{sim}/_admin/state")).await else {
                continue;
            };
            let open: BTreeSet<(String, String)> = state["orders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| {
                    matches!(
                        o["refund_status"].as_str(),
                        Some("WAIT_SELLER_AGREE") | Some("waitselleragree")
                    )
                })
                .map(|o| {
                    (
                        o["channel"].as_str().unwrap_or_default().to_owned(),
                        o["order_id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let mut events = Vec::new();
            for (i, p) in plan.iter().enumerate() {
                if !p.may_refund() || p.release_cycle > now {
                    continue;
                }
                if !open.contains(&(p.channel.clone(), p.order_id.clone())) {
                    continue;
                }
                if last
                    .get(&i)
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
                {
                    continue;
                }
                last.insert(i, Instant::now());
                events.push(json!({
                    "after_ms": rng.below(200),
                    "channel": p.channel,
                    "order_id": p.order_id,
                    "action": "complete_refund",
                }));
            }
            if !events.is_empty() {
                let _ = post_json(&http, &format!("{sim}/_admin/schedule"), &json!(events)).await;
            }
        }
    })
}

// ---------------------------------------------------------------- the test

#[derive(Default, Debug)]
struct Numbers {
    kills: usize,
    /// Kills aimed at start-up/recovery.
    recovery_kills_aimed: usize,
    /// Kills that landed before `listening on` was written.
    kills_in_recovery: usize,
    /// Every kill aimed at start-up/recovery: when, and where it landed.
    recovery_kills: Vec<String>,
    /// Sagas finished (journal) just before each ordinary kill.
    finished_at_kill: Vec<usize>,
    /// Spawn → `listening on`, ms, of the lives that got there.
    start_ms: Vec<u128>,
    /// In-doubt steps recovery met, summed over the lives' logs.
    in_doubt_on_recovery: usize,
    /// Sagas recovery resumed, summed over the lives' logs.
    resumed_on_recovery: usize,
    /// Sagas recovery could not resume (must be 0).
    /// Sagas finished but not yet marked at a kill, marked by recovery (summed).
    marked_finished_on_recovery: usize,
    /// Sagas recovery could not resume, with the log line (must be none).
    not_resumable: Vec<String>,
    submitted_in_life: Vec<usize>,
}

struct Ctx {
    seed: u64,
    cycles: usize,
    dir: PathBuf,
    logs: Vec<PathBuf>,
    sim_url: String,
    http: reqwest::Client,
}

impl Ctx {
    /// Fail with everything needed to reproduce and debug.
    async fn fail(&self, stage: &str, failures: &[String], numbers: &Numbers) -> ! {
        let mut msg = format!(
            "kill loop FAILED at {stage} (seed {seed}): {n} problem(s)\n",
            seed = self.seed,
            n = failures.len()
        );
        for f in failures.iter().take(25) {
            msg.push_str(&format!("  - {f}\n"));
        }
        if failures.len() > 25 {
            msg.push_str(&format!("  ... and {} more\n", failures.len() - 25));
        }
        msg.push_str(&format!("numbers: {numbers:?}\n"));
        for log in self.logs.iter().rev().take(2).rev() {
            msg.push_str(&log_tail(log, 25));
            msg.push('\n');
        }
        match get_json(&self.http, &format!("{}/_admin/effects", self.sim_url)).await {
            Ok(v) => {
                let effects = v["effects"].as_array().cloned().unwrap_or_default();
                // The effects the failures name, else duplicates, else the last ones.
                let named: Vec<&Value> = effects
                    .iter()
                    .filter(|e| {
                        let t = e["target"].as_str().unwrap_or("\u{0}");
                        failures.iter().any(|f| f.contains(t))
                    })
                    .collect();
                let dup: Vec<&Value> = effects
                    .iter()
                    .filter(|e| e["count"].as_u64().unwrap_or(0) > 1)
                    .collect();
                let (what, excerpt): (&str, Vec<&Value>) = if !named.is_empty() {
                    ("the effects the problems name", named)
                } else if !dup.is_empty() {
                    ("duplicates", dup)
                } else {
                    ("the last ones", effects.iter().rev().take(10).collect())
                };
                msg.push_str(&format!(
                    "--- effect log: {} effects; excerpt ({what}) ---\n",
                    effects.len()
                ));
                for e in excerpt.iter().take(15) {
                    msg.push_str(&format!(
                        "#{} {} {} (count {}) via {} request_id {}\n",
                        e["seq"],
                        e["op"].as_str().unwrap_or("?"),
                        e["target"].as_str().unwrap_or("?"),
                        e["count"],
                        e["request"]["endpoint"].as_str().unwrap_or("?"),
                        e["request"]["request_id"].as_str().unwrap_or("?"),
                    ));
                }
            }
            Err(e) => msg.push_str(&format!("--- effect log unavailable: {e}\n")),
        }
        let cycles = if self.cycles == DEFAULT_CYCLES {
            String::new()
        } else {
            format!("RESCIND_KILL_CYCLES={} ", self.cycles)
        };
        msg.push_str(&format!(
            "logs, journal and config kept in {}\nreplay: RESCIND_KILL_SEED={} {cycles}cargo test -p rescind-cli --test kill_loop",
            self.dir.display(),
            self.seed
        ));
        panic!("{msg}");
    }
}

/// What one life's recovery did, from its log: the worker's line
/// `recovered N saga(s) (M in doubt, K could not be resumed)` and the engine's
/// `saga not resumed` warnings. A saga whose `Finished` record was durable
/// but which was not yet marked finished when the worker died is marked by
/// recovery and reported as "already finished": that is expected after a
/// kill, so it is counted apart from real failures.
#[derive(Default)]
struct Recovery {
    resumed: usize,
    in_doubt: usize,
    marked_finished: usize,
    failed: Vec<String>,
}

fn recovery_of(log: &Path) -> Recovery {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut r = Recovery::default();
    if let Some(line) = text.lines().find(|l| l.starts_with("recovered ")) {
        let nums: Vec<usize> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        if let [resumed, in_doubt, marked, _] = nums[..] {
            r.resumed = resumed;
            r.in_doubt = in_doubt;
            r.marked_finished = marked;
        }
    }
    // Sagas recovery could not resume are logged one by one, each naming its error.
    for l in text.lines().filter(|l| l.contains("saga not resumed")) {
        r.failed.push(format!("{}: {l}", log.display()));
    }
    r
}

impl Numbers {
    fn add_recovery(&mut self, log: &Path) {
        let r = recovery_of(log);
        self.resumed_on_recovery += r.resumed;
        self.in_doubt_on_recovery += r.in_doubt;
        self.marked_finished_on_recovery += r.marked_finished;
        self.not_resumable.extend(r.failed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_loop() {
    let started = Instant::now();
    let seed = env_u64("RESCIND_KILL_SEED").unwrap_or(DEFAULT_SEED);
    let cycles = env_u64("RESCIND_KILL_CYCLES").map_or(DEFAULT_CYCLES, |n| n as usize);
    eprintln!(
        "kill_loop: seed {seed}, {cycles} cycles, {SAGAS} sagas \
         (replay: RESCIND_KILL_SEED={seed} RESCIND_KILL_CYCLES={cycles} cargo test -p rescind-cli --test kill_loop)"
    );
    // Kept on failure (with every life's log); removed at the end of a passing run.
    let dir = tempfile::Builder::new()
        .prefix("rescind-kill-loop-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut numbers = Numbers::default();

    // The simulator: its own process.
    let faults = dir.join("faults.json");
    std::fs::write(&faults, faults_json().to_string()).expect("write faults");
    let seed_s = seed.to_string();
    let faults_s = faults.to_string_lossy().into_owned();
    let mut sim = spawn_proc(
        &[
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            &seed_s,
            "--faults",
            &faults_s,
        ],
        &dir,
        "sim.log",
    )
    .expect("spawn the simulator");
    let (sim_url, _) = sim.wait_listening().await.unwrap_or_else(|e| {
        panic!(
            "the simulator did not start: {e}\n{}",
            log_tail(&sim.log, 20)
        )
    });
    let mut ctx = Ctx {
        seed,
        cycles,
        dir: dir.clone(),
        logs: vec![sim.log.clone()],
        sim_url: sim_url.clone(),
        http: http.clone(),
    };

    let (plan, rows) = workload(seed, cycles);
    if let Err(e) = post_json(&http, &format!("{sim_url}/_admin/orders"), &json!(rows)).await {
        ctx.fail("seeding the simulator", &[e], &numbers).await;
    }
    let cfg = dir.join("rescind.toml");
    std::fs::write(&cfg, config_text(&sim_url)).expect("write config");
    let cfg_s = cfg.to_string_lossy().into_owned();

    let plan = Arc::new(plan);
    let acked: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let cycle_now = Arc::new(AtomicUsize::new(0));
    let merchant = merchant(
        http.clone(),
        sim_url.clone(),
        plan.clone(),
        cycle_now.clone(),
        seed,
    );
    let rng = SplitMix64::new(seed ^ 0x6b69_6c6c);
    let mut last_start: Option<Duration> = None;
    let mut pay_scheduled = false;

    // Which cycles aim at start-up/recovery: a seeded choice of 10% of them
    // (at least one), never the first (nothing to recover yet).
    let mut candidates: Vec<usize> = (1..cycles).collect();
    let mut recovery_cycles = BTreeSet::new();
    let want = (cycles * RECOVERY_KILL_PCT)
        .div_ceil(100)
        .min(candidates.len());
    while recovery_cycles.len() < want {
        let i = rng.below(candidates.len() as u64) as usize;
        recovery_cycles.insert(candidates.swap_remove(i));
    }
    for cycle in 0..cycles {
        cycle_now.store(cycle, Ordering::Relaxed);
        let aim_at_recovery = recovery_cycles.contains(&cycle);
        // A recovery kill that comes too late (the worker already listens)
        // is an ordinary kill, and the cycle tries again with a new life.
        for attempt in 0..RECOVERY_KILL_TRIES {
            let delay_ms = KILL_DELAY_MS.0 + rng.below(KILL_DELAY_MS.1 - KILL_DELAY_MS.0 + 1);
            let frac = RECOVERY_KILL_AT_PCT.0
                + rng.below(RECOVERY_KILL_AT_PCT.1 - RECOVERY_KILL_AT_PCT.0 + 1);
            let log_name = if attempt == 0 {
                format!("worker-{cycle:03}.log")
            } else {
                format!("worker-{cycle:03}-{attempt}.log")
            };
            let mut aimed_at = None;
            let mut w = match spawn_proc(&["--config", &cfg_s, "-v", "worker"], &dir, &log_name) {
                Ok(w) => w,
                Err(e) => ctx.fail(&format!("cycle {cycle}"), &[e], &numbers).await,
            };
            ctx.logs.push(w.log.clone());
            let submitted_before = acked.lock().unwrap().len();
            let mut submitter = None;
            match (aim_at_recovery, last_start) {
                (true, Some(t)) => {
                    // Land during start-up/recovery: the worker prints `listening
                    // on` only after recover() and the callback replay returned.
                    numbers.recovery_kills_aimed += 1;
                    let d = t.mul_f64(frac as f64 / 100.0);
                    aimed_at = Some((d.as_millis(), t.as_millis()));
                    tokio::time::sleep(d).await;
                }
                _ => {
                    let (url, took) = match w.wait_listening().await {
                        Ok(v) => v,
                        Err(e) => {
                            let msg =
                                explain_start_failure(&format!("cycle {cycle}"), seed, &e, &w.log);
                            ctx.fail(&format!("cycle {cycle}"), &[msg], &numbers).await
                        }
                    };
                    last_start = Some(took);
                    numbers.start_ms.push(took.as_millis());
                    let _ = post_json(
                        &http,
                        &format!("{sim_url}/_admin/callback"),
                        &json!({"url": format!("{url}/callbacks/pandapon")}),
                    )
                    .await;
                    if !pay_scheduled {
                        // The buyer pays right after some unpaid cancels are submitted.
                        let events: Vec<Value> = plan
                        .iter()
                        .filter(|p| p.pay_race)
                        .map(|p| json!({"after_ms": 5 + rng.below(100), "channel": p.channel, "order_id": p.order_id, "action": "pay"}))
                        .collect();
                        if let Err(e) =
                            post_json(&http, &format!("{sim_url}/_admin/schedule"), &json!(events))
                                .await
                        {
                            ctx.fail("scheduling payments", &[e], &numbers).await;
                        }
                        pay_scheduled = true;
                    }
                    if acked.lock().unwrap().len() < plan.len() {
                        submitter = Some(submit_pending(
                            http.clone(),
                            url.clone(),
                            plan.clone(),
                            acked.clone(),
                            refused.clone(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    if let Ok(st) = get_json(&http, &format!("{url}/stats")).await {
                        numbers
                            .finished_at_kill
                            .push(st["finished"].as_u64().unwrap_or(0) as usize);
                    }
                }
            }
            if let Ok(Some(status)) = w.child.try_wait() {
                let msg = explain_start_failure(
                    &format!("cycle {cycle}"),
                    seed,
                    &format!("exited on its own before the kill ({status})"),
                    &w.log,
                );
                ctx.fail(&format!("cycle {cycle}"), &[msg], &numbers).await;
            }
            let listened = w.kill9().await;
            numbers.kills += 1;
            if !listened {
                numbers.kills_in_recovery += 1;
            }
            if let Some((at, start)) = aimed_at {
                numbers.recovery_kills.push(format!(
                    "cycle {cycle}: at {at} ms of a {start} ms start-up: {}",
                    if listened {
                        "too late (listening)"
                    } else {
                        "before listening"
                    }
                ));
            }
            if let Some(s) = submitter {
                s.abort();
                let _ = s.await;
            }
            numbers
                .submitted_in_life
                .push(acked.lock().unwrap().len() - submitted_before);
            numbers.add_recovery(&w.log);
            let refusals = refused.lock().unwrap().clone();
            if !refusals.is_empty() {
                ctx.fail(&format!("cycle {cycle}"), &refusals, &numbers)
                    .await;
            }
            if aimed_at.is_none() || !listened {
                break;
            }
        }
    }

    // The last life: finish everything, then a graceful stop.
    cycle_now.store(usize::MAX, Ordering::Relaxed);
    let mut w = match spawn_proc(
        &["--config", &cfg_s, "-v", "worker"],
        &dir,
        "worker-final.log",
    ) {
        Ok(w) => w,
        Err(e) => ctx.fail("the final life", &[e], &numbers).await,
    };
    ctx.logs.push(w.log.clone());
    let (url, took) = match w.wait_listening().await {
        Ok(v) => v,
        Err(e) => {
            let msg = explain_start_failure("the final life", seed, &e, &w.log);
            ctx.fail("the final life", &[msg], &numbers).await
        }
    };
    numbers.start_ms.push(took.as_millis());
    numbers.add_recovery(&w.log);
    let _ = post_json(
        &http,
        &format!("{sim_url}/_admin/callback"),
        &json!({"url": format!("{url}/callbacks/pandapon")}),
    )
    .await;
    if acked.lock().unwrap().len() < plan.len() {
        let before = acked.lock().unwrap().len();
        let _ = submit_pending(
            http.clone(),
            url.clone(),
            plan.clone(),
            acked.clone(),
            refused.clone(),
        )
        .await;
        numbers
            .submitted_in_life
            .push(acked.lock().unwrap().len() - before);
    }
    let finish_started = Instant::now();
    let mut last_stats = Value::Null;
    loop {
        if let Ok(st) = get_json(&http, &format!("{url}/stats")).await {
            let done = st["finished"].as_u64() == Some(plan.len() as u64)
                && st["unfinished"].as_u64() == Some(0);
            last_stats = st;
            if done {
                break;
            }
        }
        if finish_started.elapsed() > FINISH_TIMEOUT {
            let msg = format!(
                "the final worker did not finish every saga within {} s; last /stats: {last_stats}",
                FINISH_TIMEOUT.as_secs()
            );
            ctx.fail("the final life", &[msg], &numbers).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finish_secs = finish_started.elapsed().as_secs_f64();
    merchant.abort();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(w.pid.to_string())
        .status()
        .await;
    match tokio::time::timeout(Duration::from_secs(15), w.child.wait()).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => {
            let msg = format!("the final worker exited with {s} after SIGTERM");
            ctx.fail("the final stop", &[msg], &numbers).await;
        }
        other => {
            let _ = w.child.kill().await;
            let msg = format!("the final worker did not stop within 15 s of SIGTERM: {other:?}");
            ctx.fail("the final stop", &[msg], &numbers).await;
        }
    }

    // ------------------------------------------------------------ checks
    let mut failures: Vec<String> = Vec::new();
    let acked_n = acked.lock().unwrap().len();
    if acked_n != plan.len() {
        failures.push(format!(
            "only {acked_n} of {} submissions were acknowledged",
            plan.len()
        ));
    }
    failures.extend(refused.lock().unwrap().iter().cloned());

    let journal_cfg = rescind::config::JournalConfig::Sled {
        path: dir.join("journal"),
    };
    let journal = match rescind::wiring::open_journal(&journal_cfg).await {
        Ok(j) => j,
        Err(e) => {
            let msg = format!(
                "THE SLED JOURNAL DID NOT REOPEN after the final graceful stop \
                 (sled issue 1533 on 0.34?): {e}"
            );
            ctx.fail("reopening the journal", &[msg], &numbers).await
        }
    };
    let (rows, bad) = match rescind::inspect::summaries(
        journal.journal().as_ref(),
        &[SagaSet::Unfinished, SagaSet::Finished],
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("listing the journal failed: {e}");
            ctx.fail("reading the journal", &[msg], &numbers).await
        }
    };
    drop(journal);
    for b in &bad {
        failures.push(format!("saga {} unreadable: {}", b.id, b.error));
    }
    for f in &numbers.not_resumable {
        failures.push(format!("recovery could not resume a saga: {f}"));
    }
    let by_id: BTreeMap<SagaId, &rescind::inspect::SagaSummary> =
        rows.iter().map(|r| (r.id, r)).collect();
    let planned_ids: BTreeSet<SagaId> = plan.iter().map(|p| p.id).collect();
    for r in &rows {
        if !planned_ids.contains(&r.id) {
            failures.push(format!(
                "saga {} ({}) in the journal was never planned",
                r.id, r.order
            ));
        }
    }
    if rows.len() != by_id.len() {
        failures.push(format!(
            "the journal lists {} rows for {} ids",
            rows.len(),
            by_id.len()
        ));
    }

    let effects = match get_json(&http, &format!("{sim_url}/_admin/effects")).await {
        Ok(v) => v,
        Err(e) => ctx.fail("reading the effect log", &[e], &numbers).await,
    };
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in effects["counts"].as_array().into_iter().flatten() {
        counts.insert(
            (
                c["op"].as_str().unwrap_or_default().to_owned(),
                c["target"].as_str().unwrap_or_default().to_owned(),
            ),
            c["count"].as_u64().unwrap_or(0),
        );
    }
    let state = match get_json(&http, &format!("{sim_url}/_admin/state")).await {
        Ok(v) => v,
        Err(e) => {
            ctx.fail("reading the simulator's state", &[e], &numbers)
                .await
        }
    };
    let orders: BTreeMap<(String, String), &Value> = state["orders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                (
                    o["channel"].as_str().unwrap_or_default().to_owned(),
                    o["order_id"].as_str().unwrap_or_default().to_owned(),
                ),
                o,
            )
        })
        .collect();

    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    let mut switched = 0;
    let mut lookups = 0u64;
    let mut retries = 0u64;
    for p in plan.iter() {
        let Some(r) = by_id.get(&p.id) else {
            failures.push(format!("{} (saga {}) is not in the journal", p.key, p.id));
            continue;
        };
        *by_outcome
            .entry(format!("{}:{}", r.kind, r.state))
            .or_default() += 1;
        lookups += u64::from(r.resolved_by_lookup);
        retries += u64::from(r.retries);
        if r.plan != r.kind {
            switched += 1;
        }
        if r.state != "completed" {
            failures.push(format!(
                "saga {} ({} {}) is {}, not completed: {:?}",
                r.id, r.kind, r.order, r.state, r.reason
            ));
            continue;
        }
        let target = format!("{}:{}", p.channel, p.order_id);
        let o = orders.get(&(p.channel.clone(), p.order_id.clone()));
        let sim_status = o.and_then(|o| o["status"].as_str()).unwrap_or("<missing>");
        let sim_refund = o.and_then(|o| o["refund_id"].as_str());
        let sim_refund_status = o.and_then(|o| o["refund_status"].as_str());
        // What the journal says the order is, and what the simulator must say then.
        let agree = match (p.class, r.order_state.as_str()) {
            (Class::P1688Unpaid, "Cancelled") => {
                expected.insert(("cancel_unpaid".into(), target.clone()));
                sim_status == "cancel"
            }
            (Class::TbcUnpaidLock, "Cancelled") if r.plan == "cancel_unpaid" => {
                expected.insert(("cancel_unpaid".into(), target.clone()));
                sim_status == "TRADE_CLOSED_BY_TAOBAO"
            }
            (Class::TaobaoWithdraw, "Paid") => {
                let rf = p.refund_id.clone().unwrap_or_default();
                expected.insert(("withdraw_refund".into(), format!("{}:{rf}", p.channel)));
                sim_status == "WAIT_SELLER_SEND_GOODS"
                    && sim_refund == Some(rf.as_str())
                    && sim_refund_status == Some("CLOSED")
            }
            (Class::TbcUnpaidLock | Class::TbcPaidLock | Class::TaobaoPaid, s)
                if s.starts_with("Refunded(") && r.plan == "cancel_paid" =>
            {
                expected.insert(("cancel_paid".into(), target.clone()));
                let rf = s.trim_start_matches("Refunded(").trim_end_matches(')');
                sim_status == "TRADE_CLOSED"
                    && sim_refund == Some(rf)
                    && sim_refund_status == Some("SUCCESS")
            }
            _ => false,
        };
        if !agree {
            failures.push(format!(
                "saga {} ({:?} {}, plan {}): the journal says {} but the simulator says status {sim_status}, refund {sim_refund:?} {sim_refund_status:?}",
                r.id, p.class, r.order, r.plan, r.order_state
            ));
        }
        if let Some(l) = &p.lock {
            expected.insert(("release_stock".into(), format!("damai:{l}")));
            let held = orders
                .get(&("damai".to_owned(), l.clone()))
                .and_then(|o| o["stock_lock_held"].as_bool());
            if held != Some(false) {
                failures.push(format!(
                    "saga {} completed but the simulator says stock lock {l} held = {held:?}",
                    r.id
                ));
            }
        }
    }
    for ((op, target), n) in &counts {
        if *n > 1 {
            failures.push(format!("effect {op} {target} applied {n} times"));
        }
        if !expected.contains(&(op.clone(), target.clone())) {
            failures.push(format!("effect {op} {target} belongs to no completed saga"));
        }
    }
    for (op, target) in &expected {
        if !counts.contains_key(&(op.clone(), target.clone())) {
            failures.push(format!(
                "effect {op} {target} of a completed saga is missing from the effect log"
            ));
        }
    }
    if cycles >= 20 && numbers.kills_in_recovery == 0 {
        failures.push(format!(
            "no kill landed during start-up/recovery ({} aimed there)",
            numbers.recovery_kills_aimed
        ));
    }

    let total = started.elapsed().as_secs_f64();
    let effects_n = effects["effects"].as_array().map_or(0, Vec::len);
    let mut starts = numbers.start_ms.clone();
    starts.sort_unstable();
    let report = format!(
        "kill_loop: seed {seed}; {cycles} cycles: {} kills (SIGKILL), {} during start-up/recovery \
         (before `listening on`; {} aimed there); final life finished the rest in {finish_secs:.1} s; \
         total {total:.1} s\n\
         sagas {}: {by_outcome:?}; switched to a paid cancel {switched}; retries {retries}\n\
         in-doubt steps resolved by lookup {lookups}; in-doubt steps met by recovery (summed over lives) {}; \
         sagas resumed by recovery (summed) {}; finished-but-unmarked sagas marked by recovery {}\n\
         recovery kills: {:?}\n\
         finished at each kill: {:?}\n\
         submitted per life: {:?}\n\
         start-up (spawn to `listening on`) ms: min {} median {} max {}\n\
         effect log: {effects_n} effects over {} (op, target) pairs, every one at most once: {}; \
         expected effects of completed sagas {}\n\
         sled journal reopened after every kill: yes ({} reopens)",
        numbers.kills,
        numbers.kills_in_recovery,
        numbers.recovery_kills_aimed,
        plan.len(),
        numbers.in_doubt_on_recovery,
        numbers.resumed_on_recovery,
        numbers.marked_finished_on_recovery,
        numbers.recovery_kills,
        numbers.finished_at_kill,
        numbers.submitted_in_life,
        starts.first().copied().unwrap_or(0),
        starts.get(starts.len() / 2).copied().unwrap_or(0),
        starts.last().copied().unwrap_or(0),
        counts.len(),
        counts.values().all(|n| *n <= 1),
        expected.len(),
        numbers.kills + 1,
    );
    eprintln!("{report}");
    if !failures.is_empty() {
        ctx.fail("the final checks", &failures, &numbers).await;
    }
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}
