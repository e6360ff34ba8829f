//! Shared by the real-process tests (`kill_loop`, `pg_workers`): the
//! simulator and workers as child processes of the `rescind` binary, the
//! workload (every built-in saga kind across the simulator's channels) seeded
//! through the simulator's admin API, the merchant completing refunds,
//! idempotent submission, and the final checks of the journal against the
//! simulator's effect log and order book.
#![allow(dead_code)]

use rescind::simconfig::{simulator_channels_toml, SimRateLimits, SimSecretsEnv};
use rescind_core::{Rng, SagaId, SagaSet, SplitMix64};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// A process must print `listening on` within this.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent submissions.
pub const SUBMIT_CONCURRENCY: usize = 32;

pub const TOP_SECRET_ENV: &str = "RESCIND_KILL_TOP_SECRET";
pub const DAMAI_SECRET_ENV: &str = "RESCIND_KILL_DAMAI_SECRET";
pub const PANDAPON_SECRET_ENV: &str = "RESCIND_KILL_PANDAPON_SECRET";
/// The variables above, as the worker configuration names them.
pub const SECRETS: SimSecretsEnv<'static> = SimSecretsEnv {
    top_app_secret: TOP_SECRET_ENV,
    damai_supplier_secret: DAMAI_SECRET_ENV,
    pandapon_secret: PANDAPON_SECRET_ENV,
};

pub fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_rescind")
}

pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a non-negative integer"),
    }
}

/// An HTTP client that never goes through a proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client")
}

// ---------------------------------------------------------------- workload

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
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
pub struct Planned {
    pub class: Class,
    pub key: String,
    pub id: SagaId,
    pub req: Value,
    pub channel: String,
    pub order_id: String,
    pub lock: Option<String>,
    pub refund_id: Option<String>,
    /// The buyer pays right after the first worker starts (unpaid TBC only).
    pub pay_race: bool,
    /// The merchant completes this order's refund from this tick on (the
    /// test's unit: a kill cycle, a fraction of a second).
    pub release_at: usize,
}

impl Planned {
    pub fn may_refund(&self) -> bool {
        matches!(self.class, Class::TbcPaidLock | Class::TaobaoPaid) || self.pay_race
    }
}

fn order_row(channel: &str, id: &str, status: &str) -> Value {
    json!({"channel": channel, "order_id": id, "status": status})
}

/// The workload: `sagas` planned sagas (keys `{key_prefix}:{seed}:…`), and
/// the simulator's order rows they need. Refunds are released over
/// `release_span` ticks.
pub fn workload(
    seed: u64,
    sagas: usize,
    release_span: usize,
    key_prefix: &str,
    reason: &str,
) -> (Vec<Planned>, Vec<Value>) {
    let rng = SplitMix64::new(seed ^ 0x776f_726b_6c6f_6164);
    let span = release_span.max(1) as u64;
    let mut plan = Vec::with_capacity(sagas);
    let mut rows = Vec::new();
    for i in 0..sagas {
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
        let key = format!("{key_prefix}:{seed}:{kind}:{channel}:{order_id}");
        let mut req = json!({
            "kind": kind,
            "channel": channel,
            "order_id": order_id,
            "reason": reason,
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
            release_at: rng.below(span) as usize,
        });
    }
    (plan, rows)
}

pub fn faults_json() -> Value {
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

/// What differs between the tests' worker configurations.
pub struct WorkerToml<'a> {
    /// The lines of the `[journal]` table.
    pub journal: &'a str,
    /// `worker.callback_store`.
    pub callback_store: &'a str,
    /// `worker.recover_interval_ms`.
    pub recover_interval_ms: u64,
}

/// A worker configuration for the simulator's four channels.
pub fn config_text(sim_url: &str, w: &WorkerToml<'_>) -> String {
    config_text_with(
        sim_url,
        w,
        SimRateLimits {
            top_rate_per_sec: 2000.0,
            top_rate_burst: 200,
            pandapon_requests_per_sec_max: 2000,
        },
        "",
    )
}

/// [`config_text`] with the channels' rates and `extra` TOML appended.
pub fn config_text_with(
    sim_url: &str,
    w: &WorkerToml<'_>,
    rates: SimRateLimits,
    extra: &str,
) -> String {
    let channels = simulator_channels_toml(sim_url, &SECRETS, Some(rates));
    format!(
        r#"# Written by a rescind-cli real-process test.
[journal]
{journal}

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
callback_store = "{callback_store}"
recover_interval_ms = {recover_interval_ms}
shutdown_grace_ms = 2000

{channels}
{extra}"#,
        journal = w.journal,
        callback_store = w.callback_store,
        recover_interval_ms = w.recover_interval_ms,
    )
}

// ---------------------------------------------------------------- processes

/// A child process of the `rescind` binary whose first stdout line is
/// `listening on URL`; the rest of stdout is drained, stderr goes to `log`.
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
    /// The URL and the time from spawn to the line, once printed.
    listening: watch::Receiver<Option<(String, Duration)>>,
    reader: tokio::task::JoinHandle<()>,
}

/// Spawn `rescind ARGS` in `dir` with the channel secrets (and `envs`) in
/// its environment, stderr to `dir/log_name`.
pub fn spawn_proc(
    args: &[&str],
    dir: &Path,
    log_name: &str,
    envs: &[(&str, &str)],
) -> Result<Proc, String> {
    spawn_proc_nofile(args, dir, log_name, envs, None)
}

/// [`spawn_proc`], with the process's open-file limit (soft and hard) set
/// to `nofile` when given (through `sh -c 'ulimit -n N; exec ...'`).
pub fn spawn_proc_nofile(
    args: &[&str],
    dir: &Path,
    log_name: &str,
    envs: &[(&str, &str)],
    nofile: Option<u64>,
) -> Result<Proc, String> {
    let log = dir.join(log_name);
    let f = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut cmd = match nofile {
        None => Command::new(exe()),
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), exe()]);
            c
        }
    };
    cmd.args(args)
        .current_dir(dir)
        .envs(SECRETS.vars())
        .env_remove("RESCIND_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
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

/// Start the simulator (`rescind sim`, seeded, with [`faults_json`]) in `dir`
/// and return it with its URL.
pub async fn start_sim(dir: &Path, seed: u64) -> (Proc, String) {
    start_sim_with_faults(dir, seed, &faults_json()).await
}

/// Start the simulator (`rescind sim`, seeded) in `dir` with the fault
/// profile `faults` (`json!({})`: none) and return it with its URL.
pub async fn start_sim_with_faults(
    dir: &Path,
    seed: u64,
    faults_profile: &Value,
) -> (Proc, String) {
    let faults = dir.join("faults.json");
    std::fs::write(&faults, faults_profile.to_string()).expect("write faults");
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
        dir,
        "sim.log",
        &[],
    )
    .expect("spawn the simulator");
    let (sim_url, _) = sim.wait_listening().await.unwrap_or_else(|e| {
        panic!(
            "the simulator did not start: {e}\n{}",
            log_tail(&sim.log, 20)
        )
    });
    (sim, sim_url)
}

impl Proc {
    /// Wait for `listening on`; an exit or a timeout first is an error.
    pub async fn wait_listening(&mut self) -> Result<(String, Duration), String> {
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

    /// The URL once `listening on` was printed.
    pub fn url(&self) -> Option<String> {
        self.listening.borrow().as_ref().map(|(u, _)| u.clone())
    }

    /// SIGKILL, wait for the exit and drain stdout. Returns whether the
    /// `listening on` line had been written when the process died.
    pub async fn kill9(&mut self) -> bool {
        let _ = self.child.kill().await; // start_kill (SIGKILL) + wait
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let listened = self.listening.borrow().is_some();
        listened
    }

    /// SIGTERM and wait up to `within` for a successful exit; otherwise
    /// SIGKILL and an error saying what happened.
    pub async fn terminate(&mut self, within: Duration) -> Result<(), String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(format!("exited with {s} after SIGTERM")),
            other => {
                let _ = self.child.kill().await;
                Err(format!(
                    "did not stop within {} s of SIGTERM: {other:?}",
                    within.as_secs()
                ))
            }
        }
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
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

// ---------------------------------------------------------------- HTTP

pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let r = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{url}: HTTP {status}: {v}"))
    }
}

pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
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

/// Point the simulator's PandaPon message callbacks at the worker at `worker_url`.
pub async fn point_callbacks(
    http: &reqwest::Client,
    sim_url: &str,
    worker_url: &str,
) -> Result<Value, String> {
    post_json(
        http,
        &format!("{sim_url}/_admin/callback"),
        &json!({"url": format!("{worker_url}/callbacks/pandapon")}),
    )
    .await
}

/// The buyer pays right after some unpaid cancels are submitted: schedule
/// the `pay_race` sagas' payments on the simulator.
pub async fn schedule_payments(
    http: &reqwest::Client,
    sim_url: &str,
    plan: &[Planned],
    rng: &SplitMix64,
) -> Result<Value, String> {
    let events: Vec<Value> = plan
        .iter()
        .filter(|p| p.pay_race)
        .map(|p| json!({"after_ms": 5 + rng.below(100), "channel": p.channel, "order_id": p.order_id, "action": "pay"}))
        .collect();
    post_json(http, &format!("{sim_url}/_admin/schedule"), &json!(events)).await
}

/// Submit every saga before `upto` not yet acknowledged, saga `i` to `urls[i % urls.len()]`;
/// a submission to a worker that went away is left unacknowledged (the next
/// call resubmits it: keys make a repeated submission find the saga it
/// already created).
pub fn submit_pending(
    http: reqwest::Client,
    urls: Vec<String>,
    plan: Arc<Vec<Planned>>,
    acked: Arc<Mutex<BTreeSet<usize>>>,
    refused: Arc<Mutex<Vec<String>>>,
    upto: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if urls.is_empty() {
            return;
        }
        let pending: Vec<usize> = {
            let a = acked.lock().unwrap();
            (0..upto.min(plan.len()))
                .filter(|i| !a.contains(i))
                .collect()
        };
        let sem = Arc::new(tokio::sync::Semaphore::new(SUBMIT_CONCURRENCY));
        let mut set = tokio::task::JoinSet::new();
        for i in pending {
            let (http, url, plan, acked, refused, sem) = (
                http.clone(),
                urls[i % urls.len()].clone(),
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
                    Err(_) => {} // the worker died; resubmitted later
                }
            });
        }
        while set.join_next().await.is_some() {}
    })
}

/// The merchant: completes the refunds of waiting sagas, each from its
/// release tick on (all of them once `now` is `usize::MAX`).
pub fn merchant(
    http: reqwest::Client,
    sim: String,
    plan: Arc<Vec<Planned>>,
    now: Arc<AtomicUsize>,
    seed: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let rng = SplitMix64::new(seed ^ 0x6d65_7263_6861_6e74);
        let mut last: BTreeMap<usize, Instant> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = now.load(Ordering::Relaxed);
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
                if !p.may_refund() || p.release_at > now {
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

// ---------------------------------------------------------------- failing

/// What a failure report needs to help reproduce and debug.
pub struct Reporter {
    /// The test's name, for the message.
    pub name: &'static str,
    pub seed: u64,
    pub dir: PathBuf,
    /// Every process's log, oldest first.
    pub logs: Vec<PathBuf>,
    /// How many of the last logs to show.
    pub logs_shown: usize,
    pub sim_url: String,
    pub http: reqwest::Client,
    /// The command that replays the run.
    pub replay: String,
}

impl Reporter {
    /// Fail with everything needed to reproduce and debug.
    pub async fn fail(&self, stage: &str, failures: &[String], numbers: &dyn Debug) -> ! {
        let mut msg = format!(
            "{name} FAILED at {stage} (seed {seed}): {n} problem(s)\n",
            name = self.name,
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
        let shown = self.logs.len().saturating_sub(self.logs_shown);
        for log in &self.logs[shown..] {
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
        msg.push_str(&format!(
            "logs, journal and config kept in {}\nreplay: {}",
            self.dir.display(),
            self.replay
        ));
        panic!("{msg}");
    }
}

// ---------------------------------------------------------------- logs

/// What one worker life's recovery did, from its log: the worker's line
/// `recovered N saga(s) (M in doubt, K finished before the stop and marked
/// now, J could not be resumed)`, the engine's `saga not resumed` warnings,
/// and the PostgreSQL journal's `claimed unfinished sagas … claimed=N` lines
/// (every claim: at start and by the periodic recovery). A saga whose
/// `Finished` record was durable but which was not yet marked finished when
/// the worker died is marked by recovery and reported as "already finished":
/// that is expected after a kill, so it is counted apart from real failures.
#[derive(Default)]
pub struct Recovery {
    pub resumed: usize,
    pub in_doubt: usize,
    pub marked_finished: usize,
    pub failed: Vec<String>,
    /// Sagas claimed (PostgreSQL journal), summed over the life's claims.
    pub claimed: usize,
}

pub fn recovery_of(log: &Path) -> Recovery {
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
    for l in text
        .lines()
        .filter(|l| l.contains("claimed unfinished sagas"))
    {
        let l = strip_ansi(l);
        if let Some(n) = l
            .split("claimed=")
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|s| s.parse::<usize>().ok())
        {
            r.claimed += n;
        }
    }
    r
}

/// `line` without terminal colour codes (the workers' logs have them).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------- checks

/// The journal's saga summaries (both sets), and the unreadable sagas.
pub async fn journal_rows(
    journal: &rescind::wiring::OpenJournal,
) -> Result<
    (
        Vec<rescind::inspect::SagaSummary>,
        Vec<rescind::inspect::Unreadable>,
    ),
    String,
> {
    rescind::inspect::summaries(
        journal.journal().as_ref(),
        &[SagaSet::Unfinished, SagaSet::Finished],
    )
    .await
    .map_err(|e| format!("listing the journal failed: {e}"))
}

/// The simulator's effect log and state.
pub async fn sim_effects_and_state(
    http: &reqwest::Client,
    sim_url: &str,
) -> Result<(Value, Value), String> {
    let effects = get_json(http, &format!("{sim_url}/_admin/effects"))
        .await
        .map_err(|e| format!("reading the effect log: {e}"))?;
    let state = get_json(http, &format!("{sim_url}/_admin/state"))
        .await
        .map_err(|e| format!("reading the simulator's state: {e}"))?;
    Ok((effects, state))
}

/// The simulator's effect counts: (op, target) → how many times applied.
pub async fn effect_counts(
    http: &reqwest::Client,
    sim_url: &str,
) -> Result<BTreeMap<(String, String), u64>, String> {
    let v = get_json(http, &format!("{sim_url}/_admin/effects"))
        .await
        .map_err(|e| format!("reading the effect log: {e}"))?;
    Ok(v["counts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                (
                    c["op"].as_str().unwrap_or_default().to_owned(),
                    c["target"].as_str().unwrap_or_default().to_owned(),
                ),
                c["count"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// The final checks' findings and numbers.
#[derive(Debug, Default)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub by_outcome: BTreeMap<String, usize>,
    /// Unpaid cancels that switched to a paid cancel.
    pub switched: usize,
    /// In-doubt steps resolved by a lookup (journal).
    pub lookups: u64,
    pub retries: u64,
    /// Effects in the log.
    pub effects: usize,
    /// Distinct (op, target) pairs in the effect log.
    pub pairs: usize,
    /// Every pair at most once.
    pub all_once: bool,
    /// Expected effects of completed sagas.
    pub expected: usize,
}

/// Check the journal against the plan and the simulator: every planned saga
/// in the journal once and completed; the journal's final order state agrees
/// with the simulator's order, refund and stock lock; the effect log has
/// every (op, target) at most once, every expected effect of a completed saga,
/// and nothing else.
pub fn check_against_sim(
    plan: &[Planned],
    rows: &[rescind::inspect::SagaSummary],
    bad: &[rescind::inspect::Unreadable],
    effects: &Value,
    state: &Value,
) -> Verdict {
    let mut v = Verdict::default();
    let failures = &mut v.failures;
    for b in bad {
        failures.push(format!("saga {} unreadable: {}", b.id, b.error));
    }
    let by_id: BTreeMap<SagaId, &rescind::inspect::SagaSummary> =
        rows.iter().map(|r| (r.id, r)).collect();
    let planned_ids: BTreeSet<SagaId> = plan.iter().map(|p| p.id).collect();
    for r in rows {
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
    for p in plan {
        let Some(r) = by_id.get(&p.id) else {
            failures.push(format!("{} (saga {}) is not in the journal", p.key, p.id));
            continue;
        };
        *v.by_outcome
            .entry(format!("{}:{}", r.kind, r.state))
            .or_default() += 1;
        v.lookups += u64::from(r.resolved_by_lookup);
        v.retries += u64::from(r.retries);
        if r.plan != r.kind {
            v.switched += 1;
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
    v.effects = effects["effects"].as_array().map_or(0, Vec::len);
    v.pairs = counts.len();
    v.all_once = counts.values().all(|n| *n <= 1);
    v.expected = expected.len();
    v
}

// ---------------------------------------------------------------- PostgreSQL

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let authority_at = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_at..].find('/') {
        Some(slash) => &base[..authority_at + slash],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A connection to the PostgreSQL server at `url`, for creating and
/// dropping the tests' databases.
pub async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to RESCIND_PG_URL: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
