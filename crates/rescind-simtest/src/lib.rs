//! # rescind-simtest
//!
//! rescind's whole-system deterministic simulation. One seed drives the
//! engine, the **real** channel crates (TOP signing and envelopes, PandaPon
//! header signing, classification, the callback receiver) and the
//! simulator's **real** request handlers, called in-process through
//! [`rescind_sim::SimTransport`]. Every source of nondeterminism goes through
//! a seam: one virtual clock (tokio's paused time), seeded RNGs (engine
//! jitter, PandaPon nonces, the simulator's fault draws), seeded ids, the
//! in-memory journal that drops what was not durable when it crashes, and
//! callbacks delivered in-process.
//!
//! - [`swarm::run_seed`]: each seed draws its own fault mix (5xx, `isp.*`,
//!   rate limits with bans, lost responses, timeouts, crashes at random
//!   journal writes — recovery included —, duplicate and reordered
//!   callbacks, the buyer paying meanwhile, refunds completing late) over a
//!   workload of concurrent sagas of every kind on every channel, then stops
//!   the faults and checks the invariants (I1–I5, see [`invariants`]). In
//!   the later-step-failures mode ([`SwarmConfig::later_step_failures`]),
//!   seeds also draw permanent and credentials failures on the steps that
//!   follow an irreversible one (I5: nothing left half-cancelled).
//! - [`crashpoints::exhaustive`]: every journal write of every built-in saga
//!   on every channel, at every crash point, twice; and right after each
//!   upstream effect (I6).
//! - [`trace`]: the trace hash a seed must reproduce (I7).
//!
//! ```no_run
//! use rescind_simtest::swarm::{run_seed, SwarmConfig};
//!
//! match run_seed(42, &SwarmConfig::default()) {
//!     Ok(report) => println!("seed 42: {} sagas, trace {:016x}", report.sagas, report.trace_hash),
//!     Err(violation) => panic!("{violation}"), // prints the seed and the replay command
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod crashpoints;
pub mod invariants;
pub mod plan;
pub mod swarm;
pub mod trace;
pub mod world;

pub use invariants::{Invariant, Violation};
pub use swarm::{run_seed, SeedReport, SwarmConfig};

/// Seeds CI runs by default (`RESCIND_SEEDS` overrides).
pub const CI_SEEDS: u64 = 1_000;

/// The one-line command that replays `seed`.
pub fn replay_command(seed: u64) -> String {
    format!("RESCIND_SEED={seed} cargo test -p rescind-simtest --test sim swarm_seeds")
}

/// Seeds CI runs in the later-step-failures mode (and in its protection-off
/// self-test); `RESCIND_SEEDS` overrides.
pub const LATER_STEP_SEEDS: u64 = 200;

/// The one-line command that replays `seed` in the later-step-failures mode.
pub fn replay_command_later_steps(seed: u64) -> String {
    format!(
        "RESCIND_SEED={seed} cargo test -p rescind-simtest --test sim later_step_failures_seeds"
    )
}

/// Which seeds to run: `RESCIND_SEED=S` alone, else `RESCIND_SEEDS=N` seeds
/// from `RESCIND_SEED_START` (default 0), else `default_count` from 0.
/// Unparsable values are an error naming the variable.
pub fn seeds_from_env(default_count: u64) -> Result<Vec<u64>, String> {
    let var = |name: &str| -> Result<Option<u64>, String> {
        match std::env::var(name) {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|e| format!("{name}={v:?}: {e}")),
            Err(_) => Ok(None),
        }
    };
    if let Some(s) = var("RESCIND_SEED")? {
        return Ok(vec![s]);
    }
    let start = var("RESCIND_SEED_START")?.unwrap_or(0);
    let n = var("RESCIND_SEEDS")?.unwrap_or(default_count);
    Ok((start..start.saturating_add(n)).collect())
}

/// Run `seeds` on `threads` OS threads (each seed on its own single-threaded
/// paused runtime, so parallelism does not touch determinism). Returns the
/// reports of passing seeds and the violations, both in seed order.
pub fn run_many(
    seeds: &[u64],
    cfg: &SwarmConfig,
    threads: usize,
) -> (Vec<SeedReport>, Vec<Violation>) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(seed) = seeds.get(i) else { break };
                let r = run_seed(*seed, cfg);
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((*seed, r));
            });
        }
    });
    let mut all = results.into_inner().unwrap_or_else(|p| p.into_inner());
    all.sort_by_key(|(s, _)| *s);
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (_, r) in all {
        match r {
            Ok(rep) => ok.push(rep),
            Err(v) => bad.push(v),
        }
    }
    (ok, bad)
}

/// Threads to use: the machine's parallelism, at most 4.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().min(4))
        .unwrap_or(1)
}
