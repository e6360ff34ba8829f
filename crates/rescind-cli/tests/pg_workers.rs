//! Several workers on one PostgreSQL journal against the real simulator,
//! with `kill -9` (issue 9).
//!
//! The simulator runs as its own process (`rescind sim`); three `rescind
//! worker` processes share one fresh PostgreSQL database (created for the
//! run, dropped at the end of a passing one), each with its own config file
//! and callback store, `lease_ttl_ms` 1500 and `worker.recover_interval_ms`
//! 300. Slots 0 and 1 use the default worker id (a new one per life: their
//! sagas wait for the lease to expire and are taken over by the others);
//! slot 2 has a fixed `worker_id`, so its next life takes its own sagas back
//! at once. 2,000 sagas of every built-in kind across the four channels are
//! submitted with idempotent keys over 15 s, spread over the live workers'
//! HTTP APIs (refunds are completed by the merchant over 20 s);
//! every 1–3 s (seeded) one random worker is killed with SIGKILL and
//! restarted, until every saga finished. Then every worker gets SIGTERM and
//! the test reads the journal itself and checks:
//!
//! - every submission was acknowledged with the saga id its key names;
//! - every saga is in the journal once, completed, and marked finished;
//! - the simulator's effect log has every (op, target) at most once, every
//!   expected effect of a completed saga, and nothing else;
//! - the journal's final order state of every saga agrees with the
//!   simulator's order, refund and stock lock.
//!
//! That a fenced (stale) worker's write is rejected is shown by
//! `rescind-journal-postgres/tests/leases.rs`; here a stale worker cannot
//! exist for long (SIGKILL), which is the crash half of the story.
//!
//! Needs `RESCIND_PG_URL` (`source .ci/postgres`); without it the test is
//! skipped with a note, and with `CI=true` it fails. `RESCIND_PG_WORKERS_SEED`
//! replays a run (workload, the simulator's fault draws, the kill schedule;
//! not thread timing); `RESCIND_PG_WORKERS_SAGAS` sets the saga count.

mod common;

use common::{
    admin_client, check_against_sim, env_u64, get_json, http_client, journal_rows, merchant,
    point_callbacks, post_json, recovery_of, schedule_payments, sim_effects_and_state, spawn_proc,
    start_sim, submit_pending, with_database, workload, Proc, Reporter, WorkerToml,
};
use rescind_core::{Rng, SplitMix64};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The seed CI runs with (override with `RESCIND_PG_WORKERS_SEED`).
const DEFAULT_SEED: u64 = 20_240_909;
/// Sagas in the workload (override with `RESCIND_PG_WORKERS_SAGAS`).
const DEFAULT_SAGAS: usize = 2_000;
/// Worker processes.
const WORKERS: usize = 3;
/// Time between kills, ms (uniform).
const KILL_EVERY_MS: (u64, u64) = (1_000, 3_000);
/// Every saga must finish within this (from the first worker's start).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// `journal.lease_ttl_ms`: how long a dead worker's sagas wait for takeover.
const LEASE_TTL_MS: u64 = 1_500;
/// `worker.recover_interval_ms`: how often each worker claims orphaned sagas.
const RECOVER_INTERVAL_MS: u64 = 300;
/// The merchant's clock: refunds are released from tick `release_at` on.
const TICK: Duration = Duration::from_millis(250);
/// Sagas are submitted over this many ticks (15 s), so that kills land on
/// every phase of every kind of saga.
const SUBMIT_SPAN_TICKS: usize = 60;
/// Refunds are released over this many ticks (20 s), so that waiting sagas
/// live through several kills and takeovers.
const RELEASE_SPAN_TICKS: usize = 80;
/// The environment variable the workers' configs read the database URL from.
const URL_ENV: &str = "RESCIND_PG_WORKERS_URL";

#[derive(Default, Debug)]
struct Numbers {
    kills: usize,
    /// Times the simulator's callback URL moved to another worker.
    callback_moves: usize,
    /// Sagas finished (journal) just before each kill.
    finished_at_kill: Vec<usize>,
    /// Spawn → `listening on`, ms, of every life.
    start_ms: Vec<u128>,
    /// Sagas claimed from the journal (expired leases, or a fixed id's own
    /// after a restart), summed over every life's log.
    claimed: usize,
    /// Sagas recovery resumed at start, summed.
    resumed_on_start: usize,
    /// In-doubt steps recovery met at start, summed.
    in_doubt_on_start: usize,
    /// Finished-but-unmarked sagas marked by recovery at start, summed.
    marked_finished_on_start: usize,
    /// Sagas recovery could not resume, with the log line (must be none).
    not_resumable: Vec<String>,
    /// `lease lost` warnings: a live worker found a lease it held taken
    /// (renewal late, or see the report), so its next writes were fenced.
    leases_lost: usize,
    /// Submission rounds (a round resubmits what a killed worker did not acknowledge).
    submit_rounds: usize,
}

impl Numbers {
    fn add_life(&mut self, log: &std::path::Path) {
        let r = recovery_of(log);
        self.claimed += r.claimed;
        self.resumed_on_start += r.resumed;
        self.in_doubt_on_start += r.in_doubt;
        self.marked_finished_on_start += r.marked_finished;
        self.not_resumable.extend(r.failed);
        let text = std::fs::read_to_string(log).unwrap_or_default();
        self.leases_lost += text.lines().filter(|l| l.contains("lease lost")).count();
    }
}

struct Slot {
    proc: Proc,
    url: String,
    lives: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_postgres_with_kill_9() {
    let base_url = match std::env::var("RESCIND_PG_URL") {
        Ok(u) if !u.trim().is_empty() => u,
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but RESCIND_PG_URL is not set: source .ci/postgres to start PostgreSQL");
            }
            eprintln!("note: RESCIND_PG_URL is not set; skipping pg_workers (source .ci/postgres to run it)");
            return;
        }
    };
    let started = Instant::now();
    let seed = env_u64("RESCIND_PG_WORKERS_SEED").unwrap_or(DEFAULT_SEED);
    let sagas = env_u64("RESCIND_PG_WORKERS_SAGAS").map_or(DEFAULT_SAGAS, |n| n as usize);
    let replay = format!(
        "RESCIND_PG_WORKERS_SEED={seed} RESCIND_PG_WORKERS_SAGAS={sagas} \
         cargo test -p rescind-cli --test pg_workers"
    );
    eprintln!("pg_workers: seed {seed}, {sagas} sagas, {WORKERS} workers (replay: {replay})");

    // A fresh database per run, so that runs never see each other.
    let db = format!(
        "rescind_w_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let admin = admin_client(&base_url).await;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {db} (the role needs CREATEDB): {e}"));
    let db_url = with_database(&base_url, &db);

    // Kept on failure (with every life's log, and the database); removed at
    // the end of a passing run.
    let dir = tempfile::Builder::new()
        .prefix("rescind-pg-workers-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let http = http_client();
    let mut numbers = Numbers::default();

    let (sim, sim_url) = start_sim(&dir, seed).await;
    let mut ctx = Reporter {
        name: "pg_workers",
        seed,
        dir: dir.clone(),
        logs: vec![sim.log.clone()],
        logs_shown: 4,
        sim_url: sim_url.clone(),
        http: http.clone(),
        replay: format!("{replay}\n(the journal is kept in database {db}: drop it when done)"),
    };

    let (plan, rows) = workload(seed, sagas, RELEASE_SPAN_TICKS, "pg-workers", "pg workers");
    if let Err(e) = post_json(&http, &format!("{sim_url}/_admin/orders"), &json!(rows)).await {
        ctx.fail("seeding the simulator", &[e], &numbers).await;
    }
    let mut configs = Vec::new();
    for i in 0..WORKERS {
        let fixed_id = if i == WORKERS - 1 {
            format!("\nworker_id = \"pg-workers-slot-{i}\"")
        } else {
            String::new()
        };
        let journal =
            format!("postgres_url_env = \"{URL_ENV}\"\nlease_ttl_ms = {LEASE_TTL_MS}{fixed_id}");
        let store = format!("callbacks-{i}.jsonl");
        let toml = WorkerToml {
            journal: &journal,
            callback_store: &store,
            recover_interval_ms: RECOVER_INTERVAL_MS,
        };
        let cfg = dir.join(format!("worker-{i}.toml"));
        std::fs::write(&cfg, common::config_text(&sim_url, &toml)).expect("write config");
        configs.push(cfg.to_string_lossy().into_owned());
    }
    let spawn_life = |i: usize, life: usize| {
        spawn_proc(
            &["--config", &configs[i], "-v", "worker"],
            &dir,
            &format!("worker-{i}-{life:03}.log"),
            &[(URL_ENV, &db_url)],
        )
    };

    let plan = Arc::new(plan);
    let acked: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let tick = Arc::new(AtomicUsize::new(0));
    let rng = SplitMix64::new(seed ^ 0x7067_6b69_6c6c);
    let pay_rng = SplitMix64::new(seed ^ 0x0070_6179);

    // Three workers.
    let mut slots: Vec<Slot> = Vec::new();
    for i in 0..WORKERS {
        let mut p = match spawn_life(i, 0) {
            Ok(p) => p,
            Err(e) => {
                ctx.fail(&format!("starting worker {i}"), &[e], &numbers)
                    .await
            }
        };
        ctx.logs.push(p.log.clone());
        let (url, took) = match p.wait_listening().await {
            Ok(v) => v,
            Err(e) => {
                let msg = format!("worker {i}: {e}");
                ctx.fail("starting the workers", &[msg], &numbers).await
            }
        };
        numbers.start_ms.push(took.as_millis());
        slots.push(Slot {
            proc: p,
            url,
            lives: 1,
        });
    }
    // The simulator pushes PandaPon messages to one URL only: point it at one
    // live worker and move it when that worker is killed. Sagas driven by the
    // other workers learn of their refunds by polling (refund_poll_*), as
    // they would behind a load balancer that sent the push elsewhere.
    let mut callback_slot = 0;
    if let Err(e) = point_callbacks(&http, &sim_url, &slots[callback_slot].url).await {
        ctx.fail("pointing callbacks", &[e], &numbers).await;
    }
    let run_started = Instant::now();
    let merchant = merchant(
        http.clone(),
        sim_url.clone(),
        plan.clone(),
        tick.clone(),
        seed,
    );
    if let Err(e) = schedule_payments(&http, &sim_url, &plan, &pay_rng).await {
        ctx.fail("scheduling payments", &[e], &numbers).await;
    }
    let live_urls = |slots: &[Slot]| slots.iter().map(|s| s.url.clone()).collect::<Vec<_>>();
    // Submitted so far: saga i is due at tick i * SUBMIT_SPAN_TICKS / sagas.
    let due = |tick: usize| ((tick + 1) * plan.len()).div_ceil(SUBMIT_SPAN_TICKS);
    let mut submitter = tokio::spawn(async {});

    let kill_delay = || {
        Duration::from_millis(KILL_EVERY_MS.0 + rng.below(KILL_EVERY_MS.1 - KILL_EVERY_MS.0 + 1))
    };
    let mut next_kill = Instant::now() + kill_delay();
    let mut last_stats = Value::Null;
    loop {
        tick.store(
            (run_started.elapsed().as_millis() / TICK.as_millis()) as usize,
            Ordering::Relaxed,
        );
        let refusals = refused.lock().unwrap().clone();
        if !refusals.is_empty() {
            ctx.fail("submitting", &refusals, &numbers).await;
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if let Ok(Some(status)) = s.proc.child.try_wait() {
                let msg = format!("worker {i} (life {}) exited on its own ({status})", s.lives);
                ctx.fail("the kill loop", &[msg], &numbers).await;
            }
        }
        let all_acked = acked.lock().unwrap().len() == plan.len();
        if submitter.is_finished() && !all_acked {
            submitter = submit_pending(
                http.clone(),
                live_urls(&slots),
                plan.clone(),
                acked.clone(),
                refused.clone(),
                due(tick.load(Ordering::Relaxed)),
            );
            numbers.submit_rounds += 1;
        }
        // The journal is shared: any worker's /stats counts every saga.
        let stats_url = format!("{}/stats", slots[callback_slot].url);
        if let Ok(st) = get_json(&http, &stats_url).await {
            let done = all_acked
                && st["finished"].as_u64() == Some(plan.len() as u64)
                && st["unfinished"].as_u64() == Some(0);
            last_stats = st;
            if done {
                break;
            }
        }
        if run_started.elapsed() > RUN_TIMEOUT {
            let msg = format!(
                "not every saga finished within {} s ({} of {} submissions acknowledged); last /stats: {last_stats}",
                RUN_TIMEOUT.as_secs(),
                acked.lock().unwrap().len(),
                plan.len()
            );
            ctx.fail("the kill loop", &[msg], &numbers).await;
        }
        if Instant::now() >= next_kill {
            let victim = rng.below(WORKERS as u64) as usize;
            numbers
                .finished_at_kill
                .push(last_stats["finished"].as_u64().unwrap_or(0) as usize);
            if victim == callback_slot {
                callback_slot = (victim + 1 + rng.below(WORKERS as u64 - 1) as usize) % WORKERS;
                let _ = point_callbacks(&http, &sim_url, &slots[callback_slot].url).await;
                numbers.callback_moves += 1;
            }
            let s = &mut slots[victim];
            s.proc.kill9().await;
            numbers.kills += 1;
            numbers.add_life(&s.proc.log);
            s.proc = match spawn_life(victim, s.lives) {
                Ok(p) => p,
                Err(e) => {
                    ctx.fail(&format!("restarting worker {victim}"), &[e], &numbers)
                        .await
                }
            };
            s.lives += 1;
            ctx.logs.push(s.proc.log.clone());
            let (url, took) = match s.proc.wait_listening().await {
                Ok(v) => v,
                Err(e) => {
                    let msg = format!("worker {victim} (life {}): {e}", s.lives);
                    ctx.fail("restarting a worker", &[msg], &numbers).await
                }
            };
            numbers.start_ms.push(took.as_millis());
            s.url = url;
            next_kill = Instant::now() + kill_delay();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finish_secs = run_started.elapsed().as_secs_f64();
    merchant.abort();
    submitter.abort();
    let mut stop_failures = Vec::new();
    for (i, s) in slots.iter_mut().enumerate() {
        if let Err(e) = s.proc.terminate(Duration::from_secs(15)).await {
            stop_failures.push(format!("worker {i} {e}"));
        }
        numbers.add_life(&s.proc.log);
    }
    if !stop_failures.is_empty() {
        ctx.fail("the final stop", &stop_failures, &numbers).await;
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
    for f in &numbers.not_resumable {
        failures.push(format!("recovery could not resume a saga: {f}"));
    }
    let journal_cfg = rescind::config::JournalConfig::Postgres {
        url: db_url.clone(),
        lease_ttl_ms: None,
        worker_id: Some("pg-workers-checker".into()),
        ca_file: None,
    };
    let journal = match rescind::wiring::open_journal(&journal_cfg).await {
        Ok(j) => j,
        Err(e) => {
            let msg = format!("opening the journal: {e}");
            ctx.fail("reading the journal", &[msg], &numbers).await
        }
    };
    let (rows, bad) = match journal_rows(&journal).await {
        Ok(v) => v,
        Err(e) => ctx.fail("reading the journal", &[e], &numbers).await,
    };
    drop(journal);
    // Behind the journal's back: every saga marked finished, and how often
    // sagas changed hands (every claim bumps the fencing token; creating a
    // saga sets it to 1).
    let row = admin_client(&db_url)
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT finished),
                    count(*) FILTER (WHERE fence > 1),
                    coalesce(sum(fence - 1), 0)::int8,
                    coalesce(max(fence), 0)
             FROM sagas",
            &[],
        )
        .await;
    let (unmarked, moved, claims, max_fence): (i64, i64, i64, i64) = match row {
        Ok(r) => (r.get(0), r.get(1), r.get(2), r.get(3)),
        Err(e) => {
            let msg = format!("reading the sagas table: {e}");
            ctx.fail("reading the journal", &[msg], &numbers).await
        }
    };
    if unmarked != 0 {
        failures.push(format!("{unmarked} saga(s) are not marked finished"));
    }
    let (effects, state) = match sim_effects_and_state(&http, &sim_url).await {
        Ok(v) => v,
        Err(e) => ctx.fail("reading the simulator", &[e], &numbers).await,
    };
    let verdict = check_against_sim(&plan, &rows, &bad, &effects, &state);
    failures.extend(verdict.failures.iter().cloned());
    if numbers.kills == 0 {
        failures.push("no worker was killed: the run finished too soon to show anything".into());
    }
    if claims == 0 {
        failures.push("no saga changed hands: no takeover was exercised".into());
    }

    let total = started.elapsed().as_secs_f64();
    let mut starts = numbers.start_ms.clone();
    starts.sort_unstable();
    let report = format!(
        "pg_workers: seed {seed}; {WORKERS} workers, {} sagas; {} kills (SIGKILL) and restarts in \
         {finish_secs:.1} s until every saga finished; total {total:.1} s\n\
         sagas (submitted over {} s): {:?}; switched to a paid cancel {}; retries {}\n\
         takeovers: {claims} claims (fencing token bumps) over {moved} sagas, at most {} per saga; \
         claimed per the workers' logs {}; callback URL moved {} times; submission rounds {}\n\
         in-doubt steps resolved by lookup {}; in-doubt steps met by start-up recovery (summed) {}; \
         resumed at start-up (summed) {}; finished-but-unmarked marked at start-up {}; \
         `lease lost` warnings of live workers {}\n\
         finished at each kill: {:?}\n\
         start-up (spawn to `listening on`) ms: min {} median {} max {}\n\
         effect log: {} effects over {} (op, target) pairs, every one at most once: {}; \
         expected effects of completed sagas {}",
        plan.len(),
        numbers.kills,
        (SUBMIT_SPAN_TICKS as u128 * TICK.as_millis()) / 1000,
        verdict.by_outcome,
        verdict.switched,
        verdict.retries,
        max_fence - 1,
        numbers.claimed,
        numbers.callback_moves,
        numbers.submit_rounds,
        verdict.lookups,
        numbers.in_doubt_on_start,
        numbers.resumed_on_start,
        numbers.marked_finished_on_start,
        numbers.leases_lost,
        numbers.finished_at_kill,
        starts.first().copied().unwrap_or(0),
        starts.get(starts.len() / 2).copied().unwrap_or(0),
        starts.last().copied().unwrap_or(0),
        verdict.effects,
        verdict.pairs,
        verdict.all_once,
        verdict.expected,
    );
    eprintln!("{report}");
    if !failures.is_empty() {
        ctx.fail("the final checks", &failures, &numbers).await;
    }
    drop(sim);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgres://u:p@127.0.0.1:5432/rescind", "x"),
        "postgres://u:p@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgresql://u@h/db?sslmode=disable", "x"),
        "postgresql://u@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://u@h:5432", "x"),
        "postgres://u@h:5432/x"
    );
}
