//! Exhaustive crash points: for each built-in saga on each channel, crash at
//! every journal write (before the append, after the write before the flush,
//! after the flush before the caller goes on — for an `Intent` that is
//! "before the call"), a second time at every write of the recovery, and
//! right after the upstream applied each effect; recover; check I1–I5 and I6.

use crate::invariants::{
    check_i2, check_i3, check_i4, check_i5, dump, EndState, Invariant, Violation,
};
use crate::plan::{SagaPlan, Story};
use crate::world::World;
use rescind_core::engine::Protections;
use rescind_core::{CrashPoint, OrderState, SagaOutcome};
use rescind_sim::{EventAction, OrderView, ScheduledEvent, SimConfig};
use std::collections::BTreeSet;
use std::time::Duration;

/// The fixed seed of crash-point runs (ids, nonces, jitter).
pub const CRASH_SEED: u64 = 0x0C0A_57ED;

/// One built-in saga on one channel.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// A short name.
    pub name: &'static str,
    /// The story.
    pub story: Story,
    /// Whether a Damai stock lock is released at the end.
    pub lock: bool,
}

/// Every built-in saga on every channel that offers it.
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        name: "tbc-cancel-unpaid+damai",
        story: Story::TbcCancelUnpaid,
        lock: true,
    },
    Scenario {
        name: "tbc-paid-meanwhile+damai",
        story: Story::TbcPaidMeanwhile,
        lock: true,
    },
    Scenario {
        name: "tbc-cancel-paid+damai",
        story: Story::TbcCancelPaid,
        lock: true,
    },
    Scenario {
        name: "taobao-cancel-unpaid",
        story: Story::TaobaoCancelUnpaid,
        lock: false,
    },
    Scenario {
        name: "taobao-paid-meanwhile",
        story: Story::TaobaoPaidMeanwhile,
        lock: false,
    },
    Scenario {
        name: "taobao-cancel-paid",
        story: Story::TaobaoCancelPaid,
        lock: false,
    },
    Scenario {
        name: "taobao-withdraw-refund",
        story: Story::TaobaoWithdrawRefund,
        lock: false,
    },
    Scenario {
        name: "1688-cancel-unpaid",
        story: Story::AlibabaCancelUnpaid,
        lock: false,
    },
];

/// Where one run crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// No crash: the reference run.
    None,
    /// At the `n`-th journal append, at this point.
    At(u64, CrashPoint),
    /// At the `n`-th append, then again at the `m`-th append of the recovery.
    Twice(u64, u64, CrashPoint),
    /// Right after the upstream applied its `n`-th effect (from 1).
    AfterEffect(usize),
}

/// How a run ended: what I6 compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEnd {
    /// The saga's outcome.
    pub outcome: Option<SagaOutcome>,
    /// The order as the saga tracks it.
    pub tracked: OrderState,
    /// The upstream rows of the scenario (order, Damai lock order).
    pub upstream: Vec<Option<OrderView>>,
    /// Journal appends attempted (all lives).
    pub appends: u64,
    /// Effects the upstream applied.
    pub effects: usize,
}

fn replay(s: &Scenario, crash: Crash) -> String {
    format!(
        "cargo test -p rescind-simtest --test sim exhaustive_crash_points  # scenario {}, crash {crash:?}",
        s.name
    )
}

/// Run one scenario with one crash schedule and check I1–I5.
pub fn run(s: &Scenario, crash: Crash, protections: Protections) -> Result<RunEnd, Violation> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Violation::new(CRASH_SEED, Invariant::Harness, format!("runtime: {e}")))?;
    rt.block_on(run_async(s, crash, protections))
        .map_err(|mut v| {
            v.replay = replay(s, crash);
            v.detail = format!("[{} {crash:?}] {}", s.name, v.detail);
            v
        })
}

async fn run_async(
    s: &Scenario,
    crash: Crash,
    protections: Protections,
) -> Result<RunEnd, Violation> {
    let seed = CRASH_SEED;
    let plan = SagaPlan::new("crash", 0, s.story, s.lock, 0);
    let plans = vec![plan.clone()];
    let mut world = World::new(seed, SimConfig::default(), true, protections, 8_000)?;
    for row in &plan.seeds {
        world
            .sim
            .try_add_order(row.clone())
            .map_err(|e| Violation::new(seed, Invariant::Harness, format!("fixture: {e}")))?;
    }
    let mut second = None;
    match crash {
        Crash::None => {}
        Crash::At(n, p) => world.journal.crash_at(n, p),
        Crash::Twice(n, m, p) => {
            world.journal.crash_at(n, p);
            second = Some((m, p));
        }
        Crash::AfterEffect(n) => world.crash_after_effect(n),
    }
    let mut confirmed = world.submit(&plan.key, &plan.input).await?;
    let mut completions = BTreeSet::new();
    let deadline_ms = 2 * 3_600_000;
    let id = plan.id();
    let mut restarts = 0;
    loop {
        while world.journal.is_crashed() {
            restarts += 1;
            if restarts > 8 {
                return Err(Violation::new(seed, Invariant::Harness, "crash loop"));
            }
            let arm = second.take();
            let alive = world
                .restart(|j| {
                    if let Some((m, p)) = arm {
                        j.crash_at(m, p)
                    }
                })
                .await?;
            if alive && !confirmed {
                // The client never got an answer: it submits again.
                confirmed = world.submit(&plan.key, &plan.input).await?;
            }
        }
        // The seller agrees to every refund a cancel opens, 3 s later.
        if s.story.awaits_refund() {
            if let Some(view) = world.sim.order(&plan.channel, &plan.order_id) {
                if let Ok(OrderState::Refunding { refund_id }) =
                    crate::invariants::upstream_order_state(&view)
                {
                    if completions.insert(refund_id.to_string()) {
                        world.sim.schedule(ScheduledEvent {
                            after_ms: 3_000,
                            channel: plan.channel.clone(),
                            order_id: plan.order_id.clone(),
                            action: EventAction::CompleteRefund,
                        });
                    }
                }
            }
        }
        if confirmed && !world.engine.is_running(id) && !world.journal.is_crashed() {
            break;
        }
        if world.elapsed_ms() > deadline_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let end = EndState::read(&world, &plans).await;
    let ctx = |v: Violation| v.with_context(dump(&world, &end));
    check_i5(seed, &world, &end).map_err(ctx)?;
    check_i3(seed, &world, &end, deadline_ms).map_err(ctx)?;
    check_i2(seed, &end).map_err(ctx)?;
    check_i4(seed, &world, &end).map_err(ctx)?;
    let st = end.sagas.first().and_then(|(_, _, st)| st.clone());
    Ok(RunEnd {
        outcome: st.as_ref().and_then(|s| s.outcome.clone()),
        tracked: st.map(|s| s.order).unwrap_or(OrderState::PendingPay),
        upstream: plan
            .seeds
            .iter()
            .map(|r| world.sim.order(&r.channel, &r.order_id))
            .collect(),
        appends: world.journal.appends(),
        effects: world.sim.effects().len(),
    })
}

fn same_end(a: &RunEnd, b: &RunEnd) -> bool {
    a.outcome == b.outcome && a.tracked == b.tracked && a.upstream == b.upstream
}

/// Every crash point of one scenario; returns the number of runs.
pub fn exhaustive(s: &Scenario, protections: Protections) -> Result<usize, Violation> {
    let reference = run(s, Crash::None, protections)?;
    let mut runs = 1;
    let check = |crash: Crash, end: &RunEnd| {
        if same_end(end, &reference) {
            Ok(())
        } else {
            let mut v = Violation::new(
                CRASH_SEED,
                Invariant::I6CrashEquivalence,
                format!(
                    "[{} {crash:?}] ends as {:?} / {} / {:?}; without a crash: {:?} / {} / {:?}",
                    s.name,
                    end.outcome,
                    end.tracked,
                    end.upstream,
                    reference.outcome,
                    reference.tracked,
                    reference.upstream
                ),
            );
            v.replay = replay(s, crash);
            Err(v)
        }
    };
    let points = [
        CrashPoint::BeforeAppend,
        CrashPoint::AfterWriteBeforeFlush,
        CrashPoint::AfterFlush,
    ];
    for n in 0..reference.appends {
        for p in points {
            let crash = Crash::At(n, p);
            check(crash, &run(s, crash, protections)?)?;
            runs += 1;
            for m in 0..reference.appends {
                let crash = Crash::Twice(n, m, p);
                check(crash, &run(s, crash, protections)?)?;
                runs += 1;
            }
        }
    }
    for e in 1..=reference.effects {
        let crash = Crash::AfterEffect(e);
        check(crash, &run(s, crash, protections)?)?;
        runs += 1;
    }
    Ok(runs)
}
