//! `rescind demo`: the one-command tour on the embedded defaults.
//!
//! 1. The simulator (in this process, on loopback) with an order book for all
//!    four seed APIs and faults on: lost responses, rate limits, 5xx, `isp.*`.
//! 2. A sled journal and a config file in a temp dir.
//! 3. `rescind worker` as a child process; 1,000+ mixed cancellations are
//!    submitted to its HTTP API (idempotently).
//! 4. Half-way, the worker is killed with SIGKILL, then started again: it
//!    recovers every unfinished saga and resolves in-doubt steps by lookup.
//! 5. A summary read from the journal, checked against the simulator's
//!    effect log: every upstream effect happened exactly once.

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rescind::inspect::{self, SagaSummary};
use rescind::simconfig::{simulator_channels_toml, SimRateLimits, SimSecretsEnv};
use rescind::worker::{StartRequest, StockLockSpec};
use rescind_core::{Rng, SagaSet, SplitMix64};
use rescind_sim::{
    CallbackConfig, EventAction, FaultProfile, FaultSpec, OrderSeed, RefundSeed, ScheduledEvent,
    Sim, SimConfig,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Arguments of `rescind demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How many cancellations to run.
    #[arg(long, default_value_t = 1200)]
    pub orders: usize,
    /// Seed for the workload and the simulator's faults.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the journal, config and logs in this directory instead of a temp dir.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Do not kill the worker half-way.
    #[arg(long)]
    pub no_kill: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Hidden; kept so old scripts calling it get a clear message.
#[derive(clap::Args, Debug)]
pub struct DemoWorkerArgs {}

pub async fn run_worker(_: DemoWorkerArgs) -> Result<u8> {
    Err(anyhow!(
        "`demo-worker` is internal; use `rescind worker --config FILE`"
    ))
}

struct Planned {
    req: StartRequest,
    /// (op, target) the saga must apply exactly once if it completes as planned.
    expected: Vec<(String, String)>,
    /// The buyer pays right after submission (the paid-meanwhile race).
    pay_race: bool,
    /// A paid cancel whose refund the merchant completes.
    awaits_refund: Option<(String, String)>,
}

fn lock_seed(lock: &str) -> OrderSeed {
    OrderSeed {
        channel: "damai".into(),
        order_id: lock.into(),
        status: "WAIT_PAY".into(),
        refund: None,
        stock_lock: Some(lock.into()),
    }
}

fn order_seed(channel: &str, id: &str, status: &str) -> OrderSeed {
    OrderSeed {
        channel: channel.into(),
        order_id: id.into(),
        status: status.into(),
        refund: None,
        stock_lock: None,
    }
}

fn request(kind: &str, channel: &str, id: &str) -> StartRequest {
    StartRequest {
        kind: kind.into(),
        channel: channel.into(),
        order_id: id.into(),
        account: None,
        refund_id: None,
        stock_lock: None,
        reason: Some("rescind demo".into()),
        key: Some(format!("demo:{kind}:{channel}:{id}")),
        params: serde_json::Value::Null,
    }
}

fn eff(op: &str, target: String) -> (String, String) {
    (op.to_owned(), target)
}

/// The workload: all three built-in sagas across all four seed APIs.
fn workload(n: usize, seed: u64, sim: &Sim) -> Vec<Planned> {
    let rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let roll = rng.below(100);
        let planned = if roll < 30 {
            // Tmall TBC, unpaid, ticket stock locked on Damai; some buyers pay meanwhile.
            let id = format!("TBC{:06}", i);
            let lock = format!("L{:06}", i);
            sim.add_order(order_seed("tmall-tbc", &id, "WAIT_BUYER_PAY"));
            sim.add_order(lock_seed(&lock));
            let mut req = request("cancel_unpaid", "tmall-tbc", &id);
            req.stock_lock = Some(StockLockSpec {
                channel: "damai".into(),
                lock_id: lock.clone(),
            });
            let pay_race = rng.below(6) == 0;
            Planned {
                req,
                expected: vec![eff("release_stock", format!("damai:{lock}"))],
                pay_race,
                awaits_refund: pay_race.then(|| ("tmall-tbc".to_owned(), id.clone())),
            }
        } else if roll < 50 {
            // Tmall TBC, paid, with a Damai lock: cancel after payment, wait for the refund.
            let id = format!("TBC{:06}", i);
            let lock = format!("L{:06}", i);
            sim.add_order(order_seed("tmall-tbc", &id, "WAIT_SELLER_SEND_GOODS"));
            sim.add_order(lock_seed(&lock));
            let mut req = request("cancel_paid", "tmall-tbc", &id);
            req.stock_lock = Some(StockLockSpec {
                channel: "damai".into(),
                lock_id: lock.clone(),
            });
            Planned {
                req,
                expected: vec![
                    eff("cancel_paid", format!("tmall-tbc:{id}")),
                    eff("release_stock", format!("damai:{lock}")),
                ],
                pay_race: false,
                awaits_refund: Some(("tmall-tbc".into(), id)),
            }
        } else if roll < 75 {
            // 1688 through PandaPon, unpaid; order ids beyond 2^53.
            let id = (2_542_285_634_920_880_794u64 + i as u64).to_string();
            sim.add_order(order_seed("pandapon-1688", &id, "waitbuyerpay"));
            Planned {
                expected: vec![eff("cancel_unpaid", format!("pandapon-1688:{id}"))],
                req: request("cancel_unpaid", "pandapon-1688", &id),
                pay_race: false,
                awaits_refund: None,
            }
        } else if roll < 90 {
            // Taobao through PandaPon: withdraw an open reverse order.
            let id = format!("TB{:06}", i);
            let refund = format!("RF{:06}", i);
            let mut seed = order_seed("pandapon-taobao", &id, "WAIT_SELLER_SEND_GOODS");
            seed.refund = Some(RefundSeed {
                refund_id: refund.clone(),
                status: "WAIT_SELLER_AGREE".into(),
            });
            sim.add_order(seed);
            let mut req = request("withdraw_refund", "pandapon-taobao", &id);
            req.refund_id = Some(refund.clone());
            Planned {
                req,
                expected: vec![eff("withdraw_refund", format!("pandapon-taobao:{refund}"))],
                pay_race: false,
                awaits_refund: None,
            }
        } else {
            // Taobao through PandaPon, paid: open a reverse order, completion arrives by callback.
            let id = format!("TB{:06}", i);
            sim.add_order(order_seed("pandapon-taobao", &id, "WAIT_SELLER_SEND_GOODS"));
            Planned {
                expected: vec![eff("cancel_paid", format!("pandapon-taobao:{id}"))],
                req: request("cancel_paid", "pandapon-taobao", &id),
                pay_race: false,
                awaits_refund: Some(("pandapon-taobao".into(), id)),
            }
        };
        out.push(planned);
    }
    out
}

/// The environment variable the demo worker reads its API token from.
const DEMO_TOKENS_ENV: &str = "RESCIND_DEMO_API_TOKENS";

/// A write token for this run of the demo (never printed).
fn demo_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The environment variables the demo worker reads the simulator's secrets from.
const DEMO_SECRETS: SimSecretsEnv<'static> = SimSecretsEnv {
    top_app_secret: "RESCIND_DEMO_TOP_SECRET",
    damai_supplier_secret: "RESCIND_DEMO_DAMAI_SECRET",
    pandapon_secret: "RESCIND_DEMO_PANDAPON_SECRET",
};

fn config_text(sim_url: &str) -> String {
    let channels = simulator_channels_toml(
        sim_url,
        &DEMO_SECRETS,
        Some(SimRateLimits {
            top_rate_per_sec: 2000.0,
            top_rate_burst: 200,
            pandapon_requests_per_sec_max: 2000,
        }),
    );
    format!(
        r#"# Written by `rescind demo`. Secrets come from the environment (see *_env).
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
# The demo talks to its worker with a token made for this run.
api_tokens_env = "{DEMO_TOKENS_ENV}"
callback_store = "callbacks.jsonl"
recover_interval_ms = 2000
shutdown_grace_ms = 2000

{channels}"#
    )
}

struct Worker {
    child: tokio::process::Child,
    url: String,
}

async fn spawn_worker(cfg: &Path, dir: &Path, life: u32, token: &str) -> Result<Worker> {
    let exe = std::env::current_exe().context("cannot find the rescind binary")?;
    let log = std::fs::File::create(dir.join(format!("worker-{life}.log")))
        .context("cannot create the worker log")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(cfg)
        .arg("-v")
        .arg("worker")
        .envs(DEMO_SECRETS.vars())
        .env(DEMO_TOKENS_ENV, format!("demo:write:{token}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the worker process")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("worker stdout not captured"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| {
            anyhow!(
                "the worker did not start within 30 s (see {})",
                dir.join(format!("worker-{life}.log")).display()
            )
        })?
        .context("reading the worker's first line")?
        .ok_or_else(|| {
            anyhow!(
                "the worker exited at start (see {})",
                dir.join(format!("worker-{life}.log")).display()
            )
        })?;
    let url = first
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from the worker: {first:?}"))?
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Worker { child, url })
}

async fn finished_count(http: &reqwest::Client, url: &str) -> Option<usize> {
    let r = http.get(format!("{url}/stats")).send().await.ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["finished"].as_u64().map(|n| n as usize)
}

/// The demo's result, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// Sagas submitted.
    pub sagas: usize,
    /// kind → outcome → count.
    pub by_kind: BTreeMap<String, BTreeMap<String, usize>>,
    /// channel → count.
    pub by_channel: BTreeMap<String, usize>,
    /// Sagas that switched to a paid cancel (the buyer paid meanwhile).
    pub switched_to_paid: usize,
    /// Retries over all steps.
    pub retries: u64,
    /// In-doubt steps resolved by a lookup.
    pub in_doubt_resolved_by_lookup: u64,
    /// Whether the worker was killed with SIGKILL.
    pub killed: bool,
    /// Sagas finished when it was killed.
    pub finished_at_kill: usize,
    /// Upstream effects in the simulator's log.
    pub effects: usize,
    /// Effects applied more than once (must be empty).
    pub duplicated_effects: Vec<String>,
    /// Expected effects of completed sagas missing from the log (must be empty).
    pub missing_effects: Vec<String>,
    /// Effects no saga accounts for (must be empty).
    pub unexpected_effects: Vec<String>,
    /// Every effect exactly once, every saga terminal.
    pub exactly_once: bool,
    /// Sagas not terminal at the end (must be 0).
    pub unfinished: usize,
    /// Wall time.
    pub seconds: f64,
}

pub async fn run(a: DemoArgs) -> Result<u8> {
    let started = Instant::now();
    if a.orders == 0 {
        return Err(anyhow!("--orders must be at least 1"));
    }
    // A temp dir unless --keep; kept after all when the demo fails, so the
    // logs it names are still there.
    let mut tmp: Option<tempfile::TempDir> = None;
    let dir: PathBuf = match &a.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            let t = tempfile::tempdir().context("cannot create a temp dir")?;
            let path = t.path().to_owned();
            tmp = Some(t);
            path
        }
    };
    // 1. The simulator, faults on.
    let faults = FaultProfile::everywhere(FaultSpec {
        latency_min_ms: 0,
        latency_max_ms: 3,
        http_5xx: 0.03,
        isp: 0.02,
        rate_limit: 0.015,
        rate_limit_ban_secs: 1,
        lost_response: 0.04,
        ..FaultSpec::default()
    });
    let sim = Sim::new(SimConfig {
        seed: a.seed,
        faults,
        callbacks: CallbackConfig {
            duplicate_probability: 0.2,
            reorder_window_ms: 50,
            retry_delay_ms: 300,
            ..CallbackConfig::default()
        },
        ..SimConfig::default()
    });
    let server = sim
        .serve("127.0.0.1:0")
        .await
        .context("cannot start the simulator")?;
    let plan = workload(a.orders, a.seed, &sim);
    let cfg = dir.join("rescind.toml");
    std::fs::write(&cfg, config_text(&server.base_url)).context("cannot write the demo config")?;
    if !a.json {
        eprintln!(
            "rescind demo: {} cancellations, seed {}, simulator {}, journal {}",
            plan.len(),
            a.seed,
            server.base_url,
            dir.join("journal").display()
        );
    }
    // 2. The worker, as a child process, with an API token made for this run.
    let token = demo_token();
    let mut worker = spawn_worker(&cfg, &dir, 1, &token).await?;
    sim.set_callback_url(Some(format!("{}/callbacks/pandapon", worker.url)));
    let mut auth = reqwest::header::HeaderMap::new();
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the demo's API token")?;
    bearer.set_sensitive(true);
    auth.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .default_headers(auth)
        .build()
        .context("http client")?;
    // The buyer pays right after some unpaid cancels are submitted.
    for p in plan.iter().filter(|p| p.pay_race) {
        sim.schedule(ScheduledEvent {
            after_ms: 5,
            channel: p.req.channel.clone(),
            order_id: p.req.order_id.clone(),
            action: EventAction::Pay,
        });
    }
    // 3. Submit every saga (idempotent keys: a retried submit never doubles a saga).
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut submits = tokio::task::JoinSet::new();
    for p in &plan {
        let (http, url, req, sem) = (http.clone(), worker.url.clone(), p.req.clone(), sem.clone());
        submits.spawn(async move {
            let _permit = sem.acquire_owned().await;
            for _ in 0..20 {
                if let Ok(r) = http.post(format!("{url}/sagas")).json(&req).send().await {
                    if r.status().is_success() {
                        return Ok(());
                    }
                    let body = r.text().await.unwrap_or_default();
                    return Err(anyhow!("the worker refused {}: {body}", req.order_id));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(anyhow!("could not submit {}", req.order_id))
        });
    }
    while let Some(r) = submits.join_next().await {
        r.map_err(|e| anyhow!("submit task: {e}"))??;
    }
    // 4. The merchant completes refunds a little after they open.
    let merchant_sim = sim.clone();
    let mut awaiting: BTreeSet<(String, String)> = plan
        .iter()
        .filter_map(|p| p.awaits_refund.clone())
        .collect();
    let merchant = tokio::spawn(async move {
        let rng = SplitMix64::new(7);
        while !awaiting.is_empty() {
            awaiting.retain(|(ch, id)| {
                let open = merchant_sim
                    .order(ch, id)
                    .map(|o| {
                        o.refund_id.is_some()
                            && o.refund_status.as_deref().is_some_and(|s| {
                                ["WAIT_SELLER_AGREE", "waitselleragree"].contains(&s)
                            })
                    })
                    .unwrap_or(false);
                if open {
                    merchant_sim.schedule(ScheduledEvent {
                        after_ms: 100 + rng.below(400),
                        channel: ch.clone(),
                        order_id: id.clone(),
                        action: EventAction::CompleteRefund,
                    });
                }
                !open
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // 5. Watch; kill -9 half-way; restart.
    let pb = ProgressBar::new(plan.len() as u64);
    pb.set_draw_target(if a.json {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    });
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:<28} [{bar:40}] {pos}/{len} sagas finished ({elapsed})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message("running");
    let deadline = started + Duration::from_secs(a.timeout_secs);
    let mut killed = a.no_kill;
    let mut finished_at_kill = 0;
    let mut life = 1;
    loop {
        let done = finished_count(&http, &worker.url)
            .await
            .unwrap_or(pb.position() as usize);
        pb.set_position(done as u64);
        if done >= plan.len() {
            break;
        }
        if Instant::now() > deadline {
            pb.abandon_with_message("timed out");
            let _ = worker.child.kill().await;
            if let Some(t) = tmp.take() {
                let _ = t.keep();
            }
            return Err(anyhow!(
                "the demo did not finish within {} s ({done}/{} finished); logs in {}",
                a.timeout_secs,
                plan.len(),
                dir.display()
            ));
        }
        if !killed && done >= plan.len() / 2 {
            let pid = worker.child.id().unwrap_or(0);
            worker.child.kill().await.context("kill -9 of the worker")?; // SIGKILL
            let _ = worker.child.wait().await;
            killed = true;
            finished_at_kill = done;
            pb.println(format!(
                "killed worker pid {pid} with SIGKILL at {done}/{} finished; restarting it",
                plan.len()
            ));
            pb.set_message("resumed after kill -9");
            life += 1;
            worker = spawn_worker(&cfg, &dir, life, &token).await?;
            sim.set_callback_url(Some(format!("{}/callbacks/pandapon", worker.url)));
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pb.finish_with_message("all finished");
    merchant.abort();
    // 6. Graceful stop (SIGTERM), then read the journal ourselves.
    if let Some(pid) = worker.child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), worker.child.wait())
        .await
        .is_err()
    {
        let _ = worker.child.kill().await;
    }
    let journal_cfg = rescind::config::JournalConfig::Sled {
        path: dir.join("journal"),
    };
    let journal = rescind::wiring::open_journal(&journal_cfg)
        .await
        .map_err(|e| anyhow!("cannot reopen the journal: {e}"))?;
    let (rows, bad) = inspect::summaries(
        journal.journal().as_ref(),
        &[SagaSet::Unfinished, SagaSet::Finished],
    )
    .await?;
    if !bad.is_empty() {
        return Err(anyhow!(
            "{} saga(s) unreadable, first: {} {}",
            bad.len(),
            bad[0].id,
            bad[0].error
        ));
    }
    let summary = summarise(
        &plan,
        &rows,
        &sim,
        killed && !a.no_kill,
        finished_at_kill,
        started.elapsed().as_secs_f64(),
    );
    server.shutdown().await;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(u8::from(!summary.exactly_once))
}

fn summarise(
    plan: &[Planned],
    rows: &[SagaSummary],
    sim: &Sim,
    killed: bool,
    finished_at_kill: usize,
    seconds: f64,
) -> DemoSummary {
    let mut by_kind: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut by_channel = BTreeMap::new();
    let mut retries = 0u64;
    let mut lookups = 0u64;
    let mut switched = 0;
    let by_order: BTreeMap<&str, &SagaSummary> =
        rows.iter().map(|r| (r.order.as_str(), r)).collect();
    let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
    let mut unfinished = 0;
    for r in rows {
        *by_kind
            .entry(r.kind.clone())
            .or_default()
            .entry(r.state.clone())
            .or_default() += 1;
        *by_channel.entry(r.channel.clone()).or_default() += 1;
        retries += u64::from(r.retries);
        lookups += u64::from(r.resolved_by_lookup);
        if r.plan != r.kind {
            switched += 1;
        }
        if r.state == "running" || r.state == "stuck" {
            unfinished += 1;
        }
    }
    unfinished += plan.len().saturating_sub(rows.len());
    for p in plan {
        let key = format!("{}:{}", p.req.channel, p.req.order_id);
        let Some(row) = by_order.get(key.as_str()) else {
            continue;
        };
        if row.state != "completed" {
            continue;
        }
        expected.extend(p.expected.iter().cloned());
        if p.req.kind == "cancel_unpaid" && p.req.channel == "tmall-tbc" {
            // Which cancel applied depends on the race: unpaid cancel, or a paid one after the switch.
            let op = if row.plan == "cancel_paid" {
                "cancel_paid"
            } else {
                "cancel_unpaid"
            };
            expected.insert((op.into(), key.clone()));
        }
    }
    let counts = sim.effect_counts();
    let duplicated: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((op, t), n)| format!("{op} {t} ×{n}"))
        .collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .map(|(op, t)| format!("{op} {t}"))
        .collect();
    let unexpected: Vec<String> = counts
        .keys()
        .filter(|k| !expected.contains(*k))
        .map(|(op, t)| format!("{op} {t}"))
        .collect();
    let exactly_once =
        duplicated.is_empty() && missing.is_empty() && unexpected.is_empty() && unfinished == 0;
    DemoSummary {
        sagas: plan.len(),
        by_kind,
        by_channel,
        switched_to_paid: switched,
        retries,
        in_doubt_resolved_by_lookup: lookups,
        killed,
        finished_at_kill,
        effects: counts.len(),
        duplicated_effects: duplicated,
        missing_effects: missing,
        unexpected_effects: unexpected,
        exactly_once,
        unfinished,
        seconds,
    }
}

fn print_summary(s: &DemoSummary) {
    use crate::table::{Align, Table};
    let states = ["completed", "failed", "aborted", "stuck", "running"];
    let mut t = Table::new(&[
        ("saga kind", Align::Left),
        ("completed", Align::Right),
        ("failed", Align::Right),
        ("aborted", Align::Right),
        ("stuck", Align::Right),
        ("running", Align::Right),
    ]);
    for (kind, m) in &s.by_kind {
        let counts = states.map(|k| m.get(k).copied().unwrap_or(0).to_string());
        t.row(std::iter::once(kind.clone()).chain(counts));
    }
    println!();
    for line in t.lines() {
        println!("{line}");
    }
    println!(
        "\nby channel: {}",
        s.by_channel
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "switched to a paid cancel (buyer paid meanwhile): {}",
        s.switched_to_paid
    );
    println!(
        "retries: {}   in-doubt steps resolved by lookup: {}",
        s.retries, s.in_doubt_resolved_by_lookup
    );
    if s.killed {
        println!(
            "worker killed with SIGKILL at {}/{} finished, restarted, recovered the rest",
            s.finished_at_kill, s.sagas
        );
    }
    let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
    println!(
        "effect log: {} upstream effects; duplicated {} [{}]; missing {} [{}]; unexpected {} [{}]",
        s.effects,
        s.duplicated_effects.len(),
        mark(s.duplicated_effects.is_empty()),
        s.missing_effects.len(),
        mark(s.missing_effects.is_empty()),
        s.unexpected_effects.len(),
        mark(s.unexpected_effects.is_empty()),
    );
    for e in s
        .duplicated_effects
        .iter()
        .chain(&s.missing_effects)
        .chain(&s.unexpected_effects)
        .take(10)
    {
        println!("  {e}");
    }
    println!(
        "every saga terminal: {} [{}]   every upstream effect exactly once: {}",
        s.unfinished == 0,
        mark(s.unfinished == 0),
        if s.exactly_once { "yes" } else { "NO" }
    );
    println!("finished in {:.1} s", s.seconds);
}
