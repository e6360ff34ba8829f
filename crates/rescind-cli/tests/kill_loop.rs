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

mod common;

use common::{
    check_against_sim, env_u64, get_json, http_client, journal_rows, merchant, point_callbacks,
    post_json, recovery_of, schedule_payments, sim_effects_and_state, spawn_proc, start_sim,
    submit_pending, workload, Reporter, WorkerToml,
};
use rescind_core::{Rng, SplitMix64};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The seed CI runs with (override with `RESCIND_KILL_SEED`).
const DEFAULT_SEED: u64 = 20_240_603;
/// Kill cycles per run (override with `RESCIND_KILL_CYCLES`).
const DEFAULT_CYCLES: usize = 50;
/// Sagas in the workload.
const SAGAS: usize = 240;
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
    let http = http_client();
    let mut numbers = Numbers::default();

    // The simulator: its own process.
    let (sim, sim_url) = start_sim(&dir, seed).await;
    let replay = format!(
        "RESCIND_KILL_SEED={seed} {}cargo test -p rescind-cli --test kill_loop",
        if cycles == DEFAULT_CYCLES {
            String::new()
        } else {
            format!("RESCIND_KILL_CYCLES={cycles} ")
        }
    );
    let mut ctx = Reporter {
        name: "kill loop",
        seed,
        dir: dir.clone(),
        logs: vec![sim.log.clone()],
        logs_shown: 2,
        sim_url: sim_url.clone(),
        http: http.clone(),
        replay,
    };

    let span = cycles * REFUND_RELEASE_SPAN_PCT / 100;
    let (plan, rows) = workload(seed, SAGAS, span, "kill-loop", "kill loop");
    if let Err(e) = post_json(&http, &format!("{sim_url}/_admin/orders"), &json!(rows)).await {
        ctx.fail("seeding the simulator", &[e], &numbers).await;
    }
    let cfg = dir.join("rescind.toml");
    let toml = WorkerToml {
        journal: r#"path = "journal""#,
        callback_store: "callbacks.jsonl",
        recover_interval_ms: 2000,
    };
    std::fs::write(&cfg, common::config_text(&sim_url, &toml)).expect("write config");
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
            let mut w =
                match spawn_proc(&["--config", &cfg_s, "-v", "worker"], &dir, &log_name, &[]) {
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
                    let _ = point_callbacks(&http, &sim_url, &url).await;
                    if !pay_scheduled {
                        // The buyer pays right after some unpaid cancels are submitted.
                        if let Err(e) = schedule_payments(&http, &sim_url, &plan, &rng).await {
                            ctx.fail("scheduling payments", &[e], &numbers).await;
                        }
                        pay_scheduled = true;
                    }
                    if acked.lock().unwrap().len() < plan.len() {
                        submitter = Some(submit_pending(
                            http.clone(),
                            vec![url.clone()],
                            plan.clone(),
                            acked.clone(),
                            refused.clone(),
                            plan.len(),
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
        &[],
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
    let _ = point_callbacks(&http, &sim_url, &url).await;
    if acked.lock().unwrap().len() < plan.len() {
        let before = acked.lock().unwrap().len();
        let _ = submit_pending(
            http.clone(),
            vec![url.clone()],
            plan.clone(),
            acked.clone(),
            refused.clone(),
            plan.len(),
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
    if let Err(e) = w.terminate(Duration::from_secs(15)).await {
        let msg = format!("the final worker {e}");
        ctx.fail("the final stop", &[msg], &numbers).await;
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
    let (rows, bad) = match journal_rows(&journal).await {
        Ok(v) => v,
        Err(e) => ctx.fail("reading the journal", &[e], &numbers).await,
    };
    drop(journal);
    for f in &numbers.not_resumable {
        failures.push(format!("recovery could not resume a saga: {f}"));
    }
    let (effects, state) = match sim_effects_and_state(&http, &sim_url).await {
        Ok(v) => v,
        Err(e) => ctx.fail("reading the simulator", &[e], &numbers).await,
    };
    let verdict = check_against_sim(&plan, &rows, &bad, &effects, &state);
    failures.extend(verdict.failures.iter().cloned());
    if cycles >= 20 && numbers.kills_in_recovery == 0 {
        failures.push(format!(
            "no kill landed during start-up/recovery ({} aimed there)",
            numbers.recovery_kills_aimed
        ));
    }

    let total = started.elapsed().as_secs_f64();
    let mut starts = numbers.start_ms.clone();
    starts.sort_unstable();
    let report = format!(
        "kill_loop: seed {seed}; {cycles} cycles: {} kills (SIGKILL), {} during start-up/recovery \
         (before `listening on`; {} aimed there); final life finished the rest in {finish_secs:.1} s; \
         total {total:.1} s\n\
         sagas {}: {:?}; switched to a paid cancel {}; retries {}\n\
         in-doubt steps resolved by lookup {}; in-doubt steps met by recovery (summed over lives) {}; \
         sagas resumed by recovery (summed) {}; finished-but-unmarked sagas marked by recovery {}\n\
         recovery kills: {:?}\n\
         finished at each kill: {:?}\n\
         submitted per life: {:?}\n\
         start-up (spawn to `listening on`) ms: min {} median {} max {}\n\
         effect log: {} effects over {} (op, target) pairs, every one at most once: {}; \
         expected effects of completed sagas {}\n\
         sled journal reopened after every kill: yes ({} reopens)",
        numbers.kills,
        numbers.kills_in_recovery,
        numbers.recovery_kills_aimed,
        plan.len(),
        verdict.by_outcome,
        verdict.switched,
        verdict.retries,
        verdict.lookups,
        numbers.in_doubt_on_recovery,
        numbers.resumed_on_recovery,
        numbers.marked_finished_on_recovery,
        numbers.recovery_kills,
        numbers.finished_at_kill,
        numbers.submitted_in_life,
        starts.first().copied().unwrap_or(0),
        starts.get(starts.len() / 2).copied().unwrap_or(0),
        starts.last().copied().unwrap_or(0),
        verdict.effects,
        verdict.pairs,
        verdict.all_once,
        verdict.expected,
        numbers.kills + 1,
    );
    eprintln!("{report}");
    if !failures.is_empty() {
        ctx.fail("the final checks", &failures, &numbers).await;
    }
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}
