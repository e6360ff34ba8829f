//! Exhaustive crash points: for each built-in saga on each channel, crash at
//! every journal write (before the append, after the write before the flush,
//! after the flush before the caller goes on — for an `Intent` that is
//! "before the call"), a second time at every write of the recovery, and
//! right after the upstream applied each effect; recover; check I1–I5 and I6.
//!
//! The owed-work scenarios ([`Scenario::release_fault`]) add a permanent or
//! credentials failure on the Damai release, the step after the irreversible
//! cancel: the saga must park stuck (never end `failed` with the lock held),
//! and a simulated operator lifts the fault and resumes it once.

use crate::invariants::{
    check_i2, check_i3, check_i4, check_i5, dump, EndState, Invariant, Violation,
};
use crate::plan::{SagaPlan, Story};
use crate::world::World;
use rescind_core::engine::Protections;
use rescind_core::{CrashPoint, OrderState, SagaId, SagaOutcome};
use rescind_sim::{
    EventAction, FaultKind, FaultProfile, FaultSpec, OrderView, ScheduledEvent, SimConfig,
};
use std::collections::{BTreeMap, BTreeSet};
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
    /// Owed-work scenarios: every Damai release answers this fault (after
    /// the irreversible cancel) until the saga is seen parked stuck; then
    /// the simulated operator lifts it and resumes the saga, once.
    pub release_fault: Option<FaultKind>,
}

/// The endpoint of the Damai stock release.
pub const RELEASE_ENDPOINT: &str = "alibaba.damai.yuntoc.order.cancellockstock";

impl Scenario {
    /// Whether the stuck reason the operator sees is the one this
    /// scenario's fault must park the saga with: `credentials:` for an auth
    /// or session failure, "work still owed" for any other permanent error.
    pub fn parks_as_expected(&self, reason: &str) -> bool {
        match self.release_fault {
            Some(FaultKind::Auth | FaultKind::InvalidSession) => reason.starts_with("credentials:"),
            Some(_) => reason.contains("work still owed"),
            None => false,
        }
    }
}

/// Every built-in saga on every channel that offers it, then the owed-work
/// edge: a later step failing permanently after the irreversible cancel.
pub const SCENARIOS: [Scenario; 10] = [
    Scenario {
        name: "tbc-cancel-unpaid+damai",
        story: Story::TbcCancelUnpaid,
        lock: true,
        release_fault: None,
    },
    Scenario {
        name: "tbc-paid-meanwhile+damai",
        story: Story::TbcPaidMeanwhile,
        lock: true,
        release_fault: None,
    },
    Scenario {
        name: "tbc-cancel-paid+damai",
        story: Story::TbcCancelPaid,
        lock: true,
        release_fault: None,
    },
    Scenario {
        name: "taobao-cancel-unpaid",
        story: Story::TaobaoCancelUnpaid,
        lock: false,
        release_fault: None,
    },
    Scenario {
        name: "taobao-paid-meanwhile",
        story: Story::TaobaoPaidMeanwhile,
        lock: false,
        release_fault: None,
    },
    Scenario {
        name: "taobao-cancel-paid",
        story: Story::TaobaoCancelPaid,
        lock: false,
        release_fault: None,
    },
    Scenario {
        name: "taobao-withdraw-refund",
        story: Story::TaobaoWithdrawRefund,
        lock: false,
        release_fault: None,
    },
    Scenario {
        name: "1688-cancel-unpaid",
        story: Story::AlibabaCancelUnpaid,
        lock: false,
        release_fault: None,
    },
    // The order is cancelled (irreversible), then the lock release meets a
    // broken credential (TOP code 25): parked `credentials:`, one resume.
    Scenario {
        name: "tbc-cancel-unpaid+damai-release-auth",
        story: Story::TbcCancelUnpaid,
        lock: true,
        release_fault: Some(FaultKind::Auth),
    },
    // The paid cancel opened a refund (it completes), then the lock release
    // is refused permanently (TOP code 41): parked "work still owed".
    Scenario {
        name: "tbc-cancel-paid+damai-release-refused",
        story: Story::TbcCancelPaid,
        lock: true,
        release_fault: Some(FaultKind::Permanent),
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
    /// The simulator's effect counts by `(op, target)`.
    pub effect_counts: BTreeMap<(String, String), u64>,
    /// Resumes the simulated operator made (owed-work scenarios: exactly 1).
    pub operator_resumes: u32,
    /// The stuck reason the operator saw before lifting the fault.
    pub parked_for: Option<String>,
}

/// What the crash matrix of one scenario exercised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatrixReport {
    /// Runs, the reference included.
    pub runs: usize,
    /// Journal appends of the reference run (crash points per point kind).
    pub appends: u64,
    /// Runs in which the simulated operator lifted the fault and resumed.
    pub resumed_runs: usize,
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
    let mut sim_cfg = SimConfig::default();
    if let Some(kind) = s.release_fault {
        sim_cfg.faults = FaultProfile::none().with(RELEASE_ENDPOINT, FaultSpec::always(kind));
    }
    let mut world = World::new(seed, sim_cfg, true, protections, 8_000)?;
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
    let mut op = Operator::default();
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
            if op.step(s, &world, id).await? {
                continue;
            }
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
    if s.release_fault.is_some() && op.resumes != 1 {
        // The scenario's point is the park and the one resume: a run in
        // which the fault never parked the saga proves nothing.
        return Err(ctx(Violation::new(
            seed,
            Invariant::Harness,
            format!(
                "the release fault {:?} never parked the saga (operator resumes: {})",
                s.release_fault, op.resumes
            ),
        )));
    }
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
        effect_counts: world.sim.effect_counts(),
        operator_resumes: op.resumes,
        parked_for: op.parked_for,
    })
}

/// The simulated operator of the owed-work scenarios.
#[derive(Default)]
struct Operator {
    resumes: u32,
    parked_for: Option<String>,
}

impl Operator {
    /// Called when the saga is neither running nor crashed. If it is parked
    /// stuck by the scenario's release fault: check the reason, lift the
    /// fault ("the credential is fixed"), resume once; `Ok(true)` means keep
    /// driving. Stuck again after that, with no fault left, is I3; a reason
    /// other than the one the fault must give is I5's concern (the saga
    /// treated owed work as a plain failure) or a misclassification.
    async fn step(&mut self, s: &Scenario, world: &World, id: SagaId) -> Result<bool, Violation> {
        if s.release_fault.is_none() {
            return Ok(false);
        }
        let seed = CRASH_SEED;
        let Some(st) = world.load(id).await else {
            return Ok(false);
        };
        let Some(reason) = st.stuck.filter(|_| st.outcome.is_none()) else {
            return Ok(false);
        };
        if let Some(first) = &self.parked_for {
            return Err(Violation::new(
                seed,
                Invariant::I3Liveness,
                format!(
                    "parked ({first:?}), the fault was lifted and the operator resumed it {} time(s), and it is stuck again: {reason:?}",
                    self.resumes
                ),
            ));
        }
        if !s.parks_as_expected(&reason) {
            return Err(Violation::new(
                seed,
                Invariant::Harness,
                format!(
                    "the release fault {:?} parked the saga with an unexpected reason: {reason:?}",
                    s.release_fault
                ),
            ));
        }
        self.parked_for = Some(reason);
        world.sim.set_faults(FaultProfile::none());
        self.resumes += 1;
        match world.engine.resume(id).await {
            Ok(_) | Err(rescind_core::Error::Journal(rescind_core::JournalError::Crashed)) => {
                Ok(true)
            }
            Err(e) => Err(Violation::new(
                seed,
                Invariant::Harness,
                format!("operator resume failed: {e}"),
            )),
        }
    }
}

fn same_end(a: &RunEnd, b: &RunEnd) -> bool {
    a.outcome == b.outcome && a.tracked == b.tracked && a.upstream == b.upstream
}

/// Every crash point of one scenario: what the matrix exercised, or the
/// first violation.
pub fn exhaustive(s: &Scenario, protections: Protections) -> Result<MatrixReport, Violation> {
    let reference = run(s, Crash::None, protections)?;
    let mut report = MatrixReport {
        runs: 1,
        appends: reference.appends,
        resumed_runs: usize::from(reference.operator_resumes > 0),
    };
    let mut check = |crash: Crash, end: &RunEnd| {
        report.runs += 1;
        report.resumed_runs += usize::from(end.operator_resumes > 0);
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
            for m in 0..reference.appends {
                let crash = Crash::Twice(n, m, p);
                check(crash, &run(s, crash, protections)?)?;
            }
        }
    }
    for e in 1..=reference.effects {
        let crash = Crash::AfterEffect(e);
        check(crash, &run(s, crash, protections)?)?;
    }
    Ok(report)
}
