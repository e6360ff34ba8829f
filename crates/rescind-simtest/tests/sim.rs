//! The whole-system simulation as CI runs it: ≥ 1,000 swarm seeds, the
//! exhaustive crash points of every built-in saga on every channel, the
//! committed regression seeds, determinism (I7), the later-step-failures
//! mode (I5: no half-cancel), and the proof that the harness fails when a
//! protection is switched off.
//!
//! Replay one seed: `RESCIND_SEED=S cargo test -p rescind-simtest --test sim swarm_seeds`.
//! More seeds: `RESCIND_SEEDS=N` (and `RESCIND_SEED_START=S`); for long runs
//! use the binary: `cargo run --release -p rescind-simtest -- --seeds 100000`.

use rescind_core::engine::Protections;
use rescind_core::{CrashPoint, SagaOutcome};
use rescind_simtest::crashpoints::{self, SCENARIOS};
use rescind_simtest::{
    default_threads, run_many, run_seed, seeds_from_env, Invariant, SwarmConfig, CI_SEEDS,
    LATER_STEP_SEEDS,
};

fn fail_with(violations: &[rescind_simtest::Violation]) -> ! {
    for v in violations.iter().take(5) {
        eprintln!("{v}\n");
    }
    let seeds: Vec<u64> = violations.iter().map(|v| v.seed).collect();
    panic!(
        "{} seed(s) violate invariants: {seeds:?}; replay one with {}",
        violations.len(),
        violations[0].replay
    );
}

#[test]
fn swarm_seeds() {
    let seeds = seeds_from_env(CI_SEEDS).unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let (ok, bad) = run_many(&seeds, &SwarmConfig::default(), default_threads());
    if !bad.is_empty() {
        fail_with(&bad);
    }
    let sagas: usize = ok.iter().map(|r| r.sagas).sum();
    let crashes: u64 = ok.iter().map(|r| r.crashes).sum();
    let effects: usize = ok.iter().map(|r| r.effects).sum();
    eprintln!(
        "{} seeds, {sagas} sagas, {crashes} crashes, {effects} upstream effects, no violation ({:.1} s)",
        ok.len(),
        t0.elapsed().as_secs_f64()
    );
    if seeds.len() >= 100 {
        // The swarm must actually exercise what it claims to.
        assert!(
            crashes > seeds.len() as u64 / 10,
            "too few crashes: {crashes}"
        );
        assert!(
            ok.iter().any(|r| r.outcomes.contains_key("failed")),
            "no saga ever failed: conflicts are not exercised"
        );
        assert!(
            ok.iter().any(|r| r.settle_ms > 0),
            "no saga outlived the faults"
        );
    }
}

#[test]
fn regression_seeds() {
    let text = include_str!("regressions.txt");
    let seeds: Vec<u64> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .unwrap_or_else(|e| panic!("regressions.txt: {l:?}: {e}"))
        })
        .collect();
    assert!(!seeds.is_empty(), "regressions.txt lists no seed");
    let (_, bad) = run_many(&seeds, &SwarmConfig::default(), default_threads());
    if !bad.is_empty() {
        fail_with(&bad);
    }
}

#[test]
fn same_seed_same_trace() {
    for seed in [0, 1, 7, 42, 815, 4_242] {
        let a = run_seed(seed, &SwarmConfig::default()).unwrap_or_else(|v| panic!("{v}"));
        let b = run_seed(seed, &SwarmConfig::default()).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(
            a.trace_hash,
            b.trace_hash,
            "seed {seed}: I7 violated, two runs differ (replay: {})",
            rescind_simtest::replay_command(seed)
        );
        assert_eq!((a.virtual_ms, a.effects), (b.virtual_ms, b.effects));
    }
    let a = run_seed(1, &SwarmConfig::default())
        .map(|r| r.trace_hash)
        .ok();
    let b = run_seed(2, &SwarmConfig::default())
        .map(|r| r.trace_hash)
        .ok();
    assert_ne!(a, b, "different seeds should give different traces");
}

#[test]
fn exhaustive_crash_points() {
    let t0 = std::time::Instant::now();
    let reports: Vec<crashpoints::MatrixReport> = std::thread::scope(|s| {
        let handles: Vec<_> = SCENARIOS
            .iter()
            .map(|sc| s.spawn(move || crashpoints::exhaustive(sc, Protections::default())))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(r)) => r,
                Ok(Err(v)) => panic!("{v}"),
                Err(_) => panic!("a crash-point thread panicked"),
            })
            .collect()
    });
    let total: usize = reports.iter().map(|r| r.runs).sum();
    eprintln!(
        "{total} crash-point runs over {} scenarios ({:.1} s)",
        SCENARIOS.len(),
        t0.elapsed().as_secs_f64()
    );
    for (sc, r) in SCENARIOS.iter().zip(&reports) {
        let n = r.runs;
        // At least Started, Intent, Outcome, Finished, each at 3 points, twice.
        assert!(n >= 4 * 3 * 4, "{}: only {n} runs", sc.name);
        if sc.release_fault.is_some() {
            // Owed-work scenarios: the fault parked the saga and the
            // operator resumed it in every run, crashed or not.
            eprintln!(
                "{}: {n} runs, {} appends in the reference run, {} runs resumed by the operator",
                sc.name, r.appends, r.resumed_runs
            );
            assert_eq!(
                r.resumed_runs, n,
                "{}: not every run was parked and resumed",
                sc.name
            );
        } else {
            assert_eq!(r.resumed_runs, 0, "{}: resumed with no fault", sc.name);
        }
    }
}

fn scenario(name: &str) -> &'static crashpoints::Scenario {
    SCENARIOS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("scenario {name} exists"))
}

/// The owed-work scenarios without a crash: the cancel is applied, the
/// Damai release is refused (auth; a permanent error), the saga parks stuck
/// with the reason the fault calls for — never `failed` —, the operator
/// lifts the fault and resumes it once, and it completes with the lock
/// released exactly once. (The crash matrix of `exhaustive_crash_points`
/// then requires every crashed run to end the same way.)
#[test]
fn owed_work_scenarios_park_then_complete_after_one_resume() {
    for (name, cancel, reason) in [
        (
            "tbc-cancel-unpaid+damai-release-auth",
            "cancel_unpaid",
            "credentials:",
        ),
        (
            "tbc-cancel-paid+damai-release-refused",
            "cancel_paid",
            "work still owed",
        ),
    ] {
        let sc = scenario(name);
        let end = crashpoints::run(sc, crashpoints::Crash::None, Protections::default())
            .unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(end.operator_resumes, 1, "{name}");
        let parked = end.parked_for.as_deref().unwrap_or_default();
        assert!(parked.contains(reason), "{name}: parked for {parked:?}");
        assert!(
            matches!(end.outcome, Some(SagaOutcome::Completed { .. })),
            "{name}: {:?}",
            end.outcome
        );
        let count = |op: &str, target: &str| {
            end.effect_counts
                .get(&(op.to_owned(), target.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(count(cancel, "tmall-tbc:T0"), 1, "{name}");
        assert_eq!(count("release_stock", "damai:D0"), 1, "{name}");
        let lock = end.upstream.iter().flatten().find(|v| v.channel == "damai");
        assert_eq!(lock.and_then(|v| v.stock_lock_held), Some(false), "{name}");
    }
}

/// Proof that the owed-work crash scenarios can fail: with
/// `fail_with_work_owed` (the old behaviour) the refused release ends the
/// paid cancel `failed` with the Damai lock held, and the crash matrix
/// reports I5. Credentials failures park regardless of that switch, so the
/// auth scenario still passes with it.
#[test]
fn failing_with_work_owed_is_caught_by_the_crash_matrix() {
    let broken = Protections {
        fail_with_work_owed: true,
        ..Protections::default()
    };
    let v = crashpoints::exhaustive(scenario("tbc-cancel-paid+damai-release-refused"), broken)
        .expect_err("the crash matrix must catch a saga failed with its lock held");
    assert_eq!(v.invariant, Invariant::I5NoHalfCancel, "{v}");
    eprintln!("caught, as it should be:\n{v}");
    // Caught after a crash too, not only in the reference run.
    for crash in [
        crashpoints::Crash::AfterEffect(1),
        crashpoints::Crash::At(3, CrashPoint::AfterFlush),
    ] {
        let v = crashpoints::run(
            scenario("tbc-cancel-paid+damai-release-refused"),
            crash,
            broken,
        )
        .expect_err("caught after a crash");
        assert_eq!(v.invariant, Invariant::I5NoHalfCancel, "{crash:?}: {v}");
    }
    let auth = crashpoints::run(
        scenario("tbc-cancel-unpaid+damai-release-auth"),
        crashpoints::Crash::None,
        broken,
    )
    .unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(auth.operator_resumes, 1);
}

/// Proof that the harness can fail: switch off the in-doubt lookup and the
/// harness must report a violation, both in the crash matrix and in the swarm.
#[test]
fn disabling_the_in_doubt_lookup_is_caught() {
    let broken = Protections {
        skip_in_doubt_lookup: true,
        ..Protections::default()
    };
    let tbc_paid = SCENARIOS
        .iter()
        .find(|s| s.name == "tbc-cancel-paid+damai")
        .expect("scenario exists");
    let v = crashpoints::exhaustive(tbc_paid, broken)
        .expect_err("the crash matrix must catch a blind re-issue of an in-doubt paid cancel");
    eprintln!("caught, as it should be:\n{v}");

    let cfg = SwarmConfig {
        protections: broken,
        ..SwarmConfig::default()
    };
    let seeds: Vec<u64> = (0..300).collect();
    let (_, bad) = run_many(&seeds, &cfg, default_threads());
    assert!(
        !bad.is_empty(),
        "300 swarm seeds with the in-doubt lookup disabled reported no violation"
    );
    eprintln!(
        "swarm caught it on {} of 300 seeds, first:\n{}",
        bad.len(),
        bad[0]
    );
}

/// The "crash right after the upstream applied an effect" runs really crash:
/// with the lookup off, the paid cancel applied just before the crash is
/// re-issued blindly on recovery and the harness reports it; with the lookup
/// on, the same run ends like the run without a crash.
#[test]
fn crash_after_an_applied_effect_is_a_real_crash() {
    let sc = SCENARIOS
        .iter()
        .find(|s| s.name == "tbc-cancel-paid+damai")
        .expect("scenario exists");
    let broken = Protections {
        skip_in_doubt_lookup: true,
        ..Protections::default()
    };
    let crash = crashpoints::Crash::AfterEffect(1);
    assert!(crashpoints::run(sc, crash, broken).is_err());
    let end = crashpoints::run(sc, crash, Protections::default()).unwrap_or_else(|v| panic!("{v}"));
    let reference = crashpoints::run(sc, crashpoints::Crash::None, Protections::default())
        .unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(end.upstream, reference.upstream);
    // Without the crash the broken build passes: the failure above is the crash's.
    assert!(crashpoints::run(sc, crashpoints::Crash::None, broken).is_ok());
}

/// The later-step-failures mode: permanent and credentials failures on the
/// steps after an irreversible one (Damai release, PandaPon refund withdraw,
/// TOP lookups) during the fault phase; the simulated operator resumes what
/// they parked once they stop. No saga may end failed with work owed (I5),
/// and every other invariant holds.
///
/// Replay one seed: `RESCIND_SEED=S cargo test -p rescind-simtest --test sim later_step_failures_seeds`.
#[test]
fn later_step_failures_seeds() {
    let seeds = seeds_from_env(LATER_STEP_SEEDS).unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let (ok, bad) = run_many(
        &seeds,
        &SwarmConfig::later_step_failures(),
        default_threads(),
    );
    if !bad.is_empty() {
        let i5 = bad
            .iter()
            .filter(|v| v.invariant == Invariant::I5NoHalfCancel)
            .count();
        eprintln!(
            "later-step failures: {} of {} seeds violate invariants, {i5} of them I5 ({:.1} s)",
            bad.len(),
            seeds.len(),
            t0.elapsed().as_secs_f64()
        );
        fail_with(&bad);
    }
    let with_faults = ok.iter().filter(|r| !r.mix.later_steps.is_empty()).count();
    let resumes: u32 = ok.iter().map(|r| r.operator_resumes).sum();
    eprintln!(
        "later-step failures: {} seeds ({with_faults} with later-step faults), {resumes} operator resumes, no violation ({:.1} s)",
        ok.len(),
        t0.elapsed().as_secs_f64()
    );
    if seeds.len() >= 100 {
        // The mode must exercise what it claims: seeds with later-step
        // faults, and sagas parked by them that the operator resumed.
        assert!(
            with_faults > seeds.len() / 3,
            "too few seeds drew later-step faults: {with_faults}"
        );
        assert!(resumes > 0, "no saga was parked by a later-step failure");
    }
}

/// Proof that I5 can fail: with `fail_with_work_owed` the engine ends a saga
/// `failed` on a permanent error after an irreversible step (the old
/// behaviour), and the later-step-failures mode must catch a half-cancel
/// within `LATER_STEP_SEEDS` seeds.
#[test]
fn failing_with_work_owed_is_caught() {
    let cfg = SwarmConfig {
        protections: Protections {
            fail_with_work_owed: true,
            ..Protections::default()
        },
        ..SwarmConfig::later_step_failures()
    };
    let t0 = std::time::Instant::now();
    let seeds: Vec<u64> = (0..LATER_STEP_SEEDS).collect();
    let (_, bad) = run_many(&seeds, &cfg, default_threads());
    let i5: Vec<_> = bad
        .iter()
        .filter(|v| v.invariant == Invariant::I5NoHalfCancel)
        .collect();
    assert!(
        !i5.is_empty(),
        "{} seeds of later-step failures with fail_with_work_owed reported no I5 violation ({} other violations)",
        seeds.len(),
        bad.len()
    );
    eprintln!(
        "I5 caught it on {} of {} seeds ({:.1} s), first:\n{}",
        i5.len(),
        seeds.len(),
        t0.elapsed().as_secs_f64(),
        i5[0]
    );
}
