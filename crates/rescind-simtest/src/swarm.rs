//! Swarm testing: each seed draws its own fault mix and workload, runs a
//! fault phase (faults, crashes, races), then a settle phase with every fault
//! off, and checks the invariants.

use crate::invariants::{
    check_i1, check_i2, check_i3, check_i4, check_i5, dump, EndState, Invariant, Violation,
};
use crate::plan::{SagaPlan, Story};
use crate::trace::trace_hash;
use crate::world::{sub_seed, World};
use rescind_core::engine::Protections;
use rescind_core::{CrashPoint, MemoryJournal, OrderState, Rng, SplitMix64};
use rescind_sim::{
    CallbackConfig, EventAction, FaultProfile, FaultSpec, LostResponseMode, ScheduledEvent,
    SimConfig,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often the simulated operator resumes one stuck saga once faults stop.
/// A saga parked stuck by the faults (retries ran out, or a permanent or
/// credentials failure with work owed) needs exactly one resume once they
/// stop; the second is slack for a saga that was resumed while a step of it
/// was still settling. One stuck again after that, with no fault around, is
/// a liveness violation (I3), not masked; for a saga parked with a
/// `credentials…` reason the bound is one (a second resume is I3).
pub const OPERATOR_RESUMES_MAX: u32 = 2;

/// The endpoints of *later* steps — steps that come after an irreversible
/// one: the Damai stock release, the PandaPon refund withdraw, and the TOP
/// order lookup (how TBC refunds and in-doubt TBC cancels are looked up).
pub const LATER_STEP_ENDPOINTS: [&str; 3] = [
    "alibaba.damai.yuntoc.order.cancellockstock",
    "pandapon.taobao.refund.cancel",
    "tmall.tbc.order.get",
];

/// What every seed of a swarm run shares.
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// Fewest sagas per seed.
    pub sagas_min: usize,
    /// Most sagas per seed.
    pub sagas_max: usize,
    /// Most crashes scheduled per seed (each process life may get one).
    pub crashes_max: u32,
    /// I3's bound: once faults stop, every saga must finish within this, ms.
    pub settle_window_ms: u64,
    /// Protections; all on except in the harness's own self-tests.
    pub protections: Protections,
    /// The "later-step failures" mode: some seeds also draw permanent and
    /// credentials failures on [`LATER_STEP_ENDPOINTS`] during the fault
    /// phase (see [`draw_later_step_faults`]). Off by default, so the plain
    /// swarm's seeds replay as before.
    pub later_step_failures: bool,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            sagas_min: 4,
            sagas_max: 12,
            crashes_max: 3,
            settle_window_ms: 30 * 60_000,
            protections: Protections::default(),
            later_step_failures: false,
        }
    }
}

impl SwarmConfig {
    /// The later-step-failures mode, everything else default.
    pub fn later_step_failures() -> Self {
        SwarmConfig {
            later_step_failures: true,
            ..SwarmConfig::default()
        }
    }
}

/// The faults and races one seed drew.
#[derive(Clone, Debug)]
pub struct FaultMix {
    /// Faults on every endpoint.
    pub everywhere: FaultSpec,
    /// A heavier spec on one endpoint, sometimes.
    pub hot_endpoint: Option<(String, FaultSpec)>,
    /// Whether PandaPon callbacks are pushed (in-process) at all.
    pub callbacks_on: bool,
    /// Duplicate and reorder settings of the pushes.
    pub callbacks: CallbackConfig,
    /// Chance (percent) that a process life gets a scheduled crash.
    pub crash_pct: u64,
    /// Chance (percent) that the buyer pays an unpaid order meanwhile.
    pub pay_pct: u64,
    /// Chance (percent) of an early refund completion race.
    pub complete_early_pct: u64,
    /// Chance (percent) that a refund being withdrawn completes or is refused first.
    pub withdraw_race_pct: u64,
    /// Refunds complete this late at most during the fault phase, ms.
    pub refund_late_ms_max: u64,
    /// The channel clients' timeout layer, ms.
    pub transport_timeout_ms: u64,
    /// Length of the fault phase, ms.
    pub fault_phase_ms: u64,
    /// Later-step mode only: permanent and credentials failure rates per
    /// endpoint of a later step, during the fault phase (empty: none drawn).
    pub later_steps: Vec<LaterStepFaults>,
}

/// Permanent and credentials failures one later-step endpoint answers during
/// the fault phase (on top of that endpoint's other faults).
#[derive(Clone, Debug, PartialEq)]
pub struct LaterStepFaults {
    /// The endpoint (one of [`LATER_STEP_ENDPOINTS`]).
    pub endpoint: &'static str,
    /// Probability of a permanent non-credentials refusal (invalid parameter).
    pub permanent: f64,
    /// Probability of an authentication failure (bad signature / key).
    pub auth: f64,
    /// Probability of an invalid-session answer.
    pub invalid_session: f64,
}

/// What a passing seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Sagas run.
    pub sagas: usize,
    /// Process lives beyond the first (crashes that fired).
    pub crashes: u64,
    /// Upstream effects applied.
    pub effects: usize,
    /// Outcomes by label (`completed`, `failed`, `aborted`).
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Virtual time the seed took, ms.
    pub virtual_ms: u64,
    /// Virtual time from faults stopping to the last saga finishing, ms.
    pub settle_ms: u64,
    /// The trace hash (I7).
    pub trace_hash: u64,
    /// The fault mix drawn.
    pub mix: FaultMix,
    /// Resumes the simulated operator made once faults stopped.
    pub operator_resumes: u32,
}

fn on(rng: &SplitMix64, pct: u64) -> bool {
    rng.below(100) < pct
}

fn pick<T: Copy>(rng: &SplitMix64, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

const ENDPOINTS: [&str; 9] = [
    "tmall.tbc.order.cancel",
    "tmall.tbc.order.paidcancel",
    "tmall.tbc.order.get",
    "alibaba.damai.yuntoc.order.cancellockstock",
    "pandapon.taobao.order.cancel",
    "pandapon.taobao.refund.submit",
    "pandapon.taobao.refund.cancel",
    "pandapon.taobao.order.detail",
    "pandapon.1688.order.cancel",
];

fn draw_spec(rng: &SplitMix64, heavy: bool) -> FaultSpec {
    let scale = if heavy { 2.0 } else { 1.0 };
    let mut s = FaultSpec::default();
    if on(rng, 50) {
        s.http_5xx = pick(rng, &[0.05, 0.15, 0.25]) * scale;
    }
    if on(rng, 50) {
        s.isp = pick(rng, &[0.05, 0.15, 0.25]) * scale;
    }
    if on(rng, 40) {
        s.rate_limit = pick(rng, &[0.05, 0.1, 0.2]) * scale;
        s.rate_limit_ban_secs = pick(rng, &[1, 5, 30]);
    }
    let total = s.http_5xx + s.isp + s.rate_limit;
    if total > 0.85 {
        let k = 0.85 / total;
        s.http_5xx *= k;
        s.isp *= k;
        s.rate_limit *= k;
    }
    if on(rng, 60) {
        s.lost_response = pick(rng, &[0.1, 0.2, 0.4]) * scale.min(1.5);
        s.lost_response_mode = pick(
            rng,
            &[LostResponseMode::Drop, LostResponseMode::GatewayTimeout],
        );
    }
    if on(rng, 40) {
        // Beyond the engine's 5 s attempt timeout sometimes: timeouts.
        s.latency_max_ms = pick(rng, &[200, 2_000, 8_000]);
    }
    s
}

/// Draw the fault mix of a seed.
pub fn draw_mix(rng: &SplitMix64) -> FaultMix {
    let everywhere = if on(rng, 85) {
        draw_spec(rng, false)
    } else {
        FaultSpec::default()
    };
    let hot_endpoint =
        on(rng, 30).then(|| (pick(rng, &ENDPOINTS).to_owned(), draw_spec(rng, true)));
    FaultMix {
        everywhere,
        hot_endpoint,
        callbacks_on: on(rng, 80),
        callbacks: CallbackConfig {
            duplicate_probability: pick(rng, &[0.0, 0.3, 1.0]),
            reorder_window_ms: pick(rng, &[0, 500, 5_000]),
            retry_delay_ms: 1_000,
            attempts_max: 5,
            timeout_ms: 1_000,
        },
        crash_pct: pick(rng, &[0, 30, 60, 90]),
        pay_pct: pick(rng, &[0, 30, 60]),
        complete_early_pct: pick(rng, &[0, 30]),
        withdraw_race_pct: pick(rng, &[0, 20]),
        refund_late_ms_max: pick(rng, &[5_000, 60_000, 180_000]),
        transport_timeout_ms: pick(rng, &[3_000, 8_000]),
        fault_phase_ms: 30_000 + rng.below(150_000),
        later_steps: Vec::new(),
    }
}

/// Draw the later-step failures of a seed (later-step mode), from its own
/// stream so the rest of the seed's mix and workload is the plain swarm's.
/// Two seeds in three get some; each later-step endpoint then fails with
/// probability 2/3, from an occasional refusal up to a hard outage for the
/// whole fault phase (an expired credential), mixing permanent refusals,
/// auth failures and invalid sessions.
pub fn draw_later_step_faults(rng: &SplitMix64) -> Vec<LaterStepFaults> {
    if !on(rng, 67) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for endpoint in LATER_STEP_ENDPOINTS {
        if !on(rng, 67) {
            continue;
        }
        let f = match rng.below(4) {
            // Credentials broken for the whole fault phase.
            0 => LaterStepFaults {
                endpoint,
                permanent: 0.0,
                auth: 1.0,
                invalid_session: 0.0,
            },
            1 => LaterStepFaults {
                endpoint,
                permanent: 0.0,
                auth: 0.0,
                invalid_session: 1.0,
            },
            // A permanent refusal, now and then or always.
            2 => LaterStepFaults {
                endpoint,
                permanent: pick(rng, &[0.2, 0.5, 1.0]),
                auth: 0.0,
                invalid_session: 0.0,
            },
            // A bit of everything.
            _ => LaterStepFaults {
                endpoint,
                permanent: pick(rng, &[0.1, 0.3]),
                auth: pick(rng, &[0.1, 0.3]),
                invalid_session: pick(rng, &[0.0, 0.1]),
            },
        };
        if f.permanent + f.auth + f.invalid_session > 0.0 {
            out.push(f);
        }
    }
    out
}

/// The fault profile of a seed's fault phase: its mix everywhere, the hot
/// endpoint's spec, and on each later-step endpoint the permanent and
/// credentials failures added to that endpoint's spec (all refusal rates
/// scaled down together if they would exceed 1).
pub fn fault_profile(mix: &FaultMix) -> FaultProfile {
    let mut profile = FaultProfile::everywhere(mix.everywhere.clone());
    if let Some((ep, spec)) = &mix.hot_endpoint {
        profile = profile.with(ep.clone(), spec.clone());
    }
    for f in &mix.later_steps {
        let mut spec = profile.spec_for(f.endpoint).cloned().unwrap_or_default();
        spec.permanent = f.permanent;
        spec.auth = f.auth;
        spec.invalid_session = f.invalid_session;
        let total = spec.http_5xx
            + spec.isp
            + spec.rate_limit
            + spec.permanent
            + spec.auth
            + spec.invalid_session;
        if total > 1.0 {
            let k = 1.0 / total;
            for p in [
                &mut spec.http_5xx,
                &mut spec.isp,
                &mut spec.rate_limit,
                &mut spec.permanent,
                &mut spec.auth,
                &mut spec.invalid_session,
            ] {
                *p *= k;
            }
        }
        profile = profile.with(f.endpoint, spec);
    }
    profile
}

/// Draw the workload of a seed.
pub fn draw_workload(seed: u64, rng: &SplitMix64, cfg: &SwarmConfig) -> Vec<SagaPlan> {
    let span = cfg.sagas_max.saturating_sub(cfg.sagas_min) as u64;
    let n = cfg.sagas_min.max(1) + rng.below(span + 1) as usize;
    let total: u64 = Story::ALL.iter().map(Story::weight).sum();
    (0..n)
        .map(|i| {
            let mut x = rng.below(total);
            let mut story = Story::ALL[0];
            for s in Story::ALL {
                if x < s.weight() {
                    story = s;
                    break;
                }
                x -= s.weight();
            }
            let lock = on(rng, 50);
            let start = rng.below(20_000);
            SagaPlan::new(&format!("s{seed}"), i, story, lock, start)
        })
        .collect()
}

struct Driver {
    seed: u64,
    world: World,
    plans: Vec<SagaPlan>,
    confirmed: Vec<bool>,
    rng: SplitMix64,
    mix: FaultMix,
    crashes_left: u32,
    completions: BTreeSet<String>,
}

impl Driver {
    fn arm(&mut self, j: &MemoryJournal, window: u64) {
        if self.crashes_left > 0 && on(&self.rng, self.mix.crash_pct) {
            self.crashes_left -= 1;
            let point = pick(
                &self.rng,
                &[
                    CrashPoint::BeforeAppend,
                    CrashPoint::AfterWriteBeforeFlush,
                    CrashPoint::AfterFlush,
                ],
            );
            j.crash_at(self.rng.below(window.max(1)), point);
        }
    }

    /// The client submits every due saga it has no confirmation for.
    async fn submit_due(&mut self) -> Result<(), Violation> {
        let now = self.world.elapsed_ms();
        for i in 0..self.plans.len() {
            if self.confirmed[i] || self.plans[i].start_at_ms > now {
                continue;
            }
            if self.world.journal.is_crashed() {
                return Ok(());
            }
            let p = &self.plans[i];
            self.confirmed[i] = self.world.submit(&p.key, &p.input).await?;
        }
        Ok(())
    }

    /// Restart until a process life survives its recovery.
    async fn keep_alive(&mut self, may_crash: bool) -> Result<(), Violation> {
        let mut restarts = 0;
        while self.world.journal.is_crashed() {
            restarts += 1;
            if restarts > 32 {
                return Err(Violation::new(
                    self.seed,
                    Invariant::Harness,
                    "more than 32 restarts in a row",
                ));
            }
            let arm = may_crash && self.crashes_left > 0 && on(&self.rng, self.mix.crash_pct);
            let (k, point) = (
                self.rng.below(8),
                pick(
                    &self.rng,
                    &[
                        CrashPoint::BeforeAppend,
                        CrashPoint::AfterWriteBeforeFlush,
                        CrashPoint::AfterFlush,
                    ],
                ),
            );
            if arm {
                self.crashes_left -= 1;
            }
            let alive = self
                .world
                .restart(|j| {
                    if arm {
                        j.crash_at(k, point)
                    }
                })
                .await?;
            if alive {
                self.submit_due().await?;
            }
        }
        Ok(())
    }

    /// Refunds complete late: the seller agrees some time after a refund opens.
    fn complete_refunds(&mut self, late_ms_max: u64) {
        for p in &self.plans {
            if !p.story.awaits_refund() {
                continue;
            }
            let Some(view) = self.world.sim.order(&p.channel, &p.order_id) else {
                continue;
            };
            if let Ok(OrderState::Refunding { refund_id }) =
                crate::invariants::upstream_order_state(&view)
            {
                let key = format!("{}:{}", p.channel, refund_id);
                if self.completions.insert(key) {
                    self.world.sim.schedule(ScheduledEvent {
                        after_ms: 500 + self.rng.below(late_ms_max.max(1)),
                        channel: p.channel.clone(),
                        order_id: p.order_id.clone(),
                        action: EventAction::CompleteRefund,
                    });
                }
            }
        }
    }

    fn schedule_races(&self) {
        let sim = &self.world.sim;
        let rng = &self.rng;
        for p in &self.plans {
            let ev = |after_ms, action| ScheduledEvent {
                after_ms,
                channel: p.channel.clone(),
                order_id: p.order_id.clone(),
                action,
            };
            if p.story.starts_unpaid() && on(rng, self.mix.pay_pct) {
                sim.schedule(ev(p.start_at_ms + rng.below(5_000), EventAction::Pay));
            }
            if p.story.awaits_refund() && on(rng, self.mix.complete_early_pct) {
                sim.schedule(ev(
                    p.start_at_ms + rng.below(60_000),
                    EventAction::CompleteRefund,
                ));
            }
            if p.story == Story::TaobaoWithdrawRefund && on(rng, self.mix.withdraw_race_pct) {
                let action = pick(
                    rng,
                    &[EventAction::CompleteRefund, EventAction::RefuseRefund],
                );
                sim.schedule(ev(p.start_at_ms + rng.below(3_000), action));
            }
        }
    }
}

/// Run one seed: its own fault mix and workload, a fault phase, a settle
/// phase, then every invariant. Deterministic: the same seed and config give
/// the same trace hash.
pub fn run_seed(seed: u64, cfg: &SwarmConfig) -> Result<SeedReport, Violation> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Violation::new(seed, Invariant::Harness, format!("runtime: {e}")))?;
    rt.block_on(run_seed_async(seed, cfg)).map_err(|mut v| {
        if cfg.later_step_failures {
            v.replay = crate::replay_command_later_steps(seed);
        }
        v
    })
}

async fn run_seed_async(seed: u64, cfg: &SwarmConfig) -> Result<SeedReport, Violation> {
    let rng = SplitMix64::new(sub_seed(seed, 0));
    let mut mix = draw_mix(&rng);
    let plans = draw_workload(seed, &rng, cfg);
    if cfg.later_step_failures {
        mix.later_steps = draw_later_step_faults(&SplitMix64::new(sub_seed(seed, 2)));
    }
    let sim_cfg = SimConfig {
        faults: fault_profile(&mix),
        callbacks: mix.callbacks.clone(),
        ..SimConfig::default()
    };
    let world = World::new(
        seed,
        sim_cfg,
        mix.callbacks_on,
        cfg.protections,
        mix.transport_timeout_ms,
    )?;
    for p in &plans {
        for s in &p.seeds {
            world.sim.try_add_order(s.clone()).map_err(|e| {
                Violation::new(seed, Invariant::Harness, format!("fixture {}: {e}", p.key))
            })?;
        }
    }
    let n = plans.len();
    let mut d = Driver {
        seed,
        world,
        confirmed: vec![false; n],
        plans,
        rng,
        mix: mix.clone(),
        crashes_left: cfg.crashes_max,
        completions: BTreeSet::new(),
    };
    d.schedule_races();
    let j = d.world.journal.clone();
    d.arm(&j, (n as u64) * 8);
    let fault_end = mix
        .fault_phase_ms
        .max(d.plans.iter().map(|p| p.start_at_ms).max().unwrap_or(0) + 10_000);

    // Fault phase.
    let tick = Duration::from_millis(500);
    while d.world.elapsed_ms() < fault_end {
        d.keep_alive(true).await?;
        d.submit_due().await?;
        d.complete_refunds(mix.refund_late_ms_max);
        tokio::time::sleep(tick).await;
    }

    // Faults stop: no more crashes, no more injected failures.
    d.keep_alive(false).await?;
    d.world.disarm_crashes();
    d.world.sim.set_faults(FaultProfile::none());
    d.submit_due().await?;
    let with_ctx = |v: Violation, d: &Driver, end: &EndState| {
        v.with_context(format!("fault mix: {:?}\n{}", d.mix, dump(&d.world, end)))
    };
    let end = EndState::read(&d.world, &d.plans).await;
    check_i1(seed, &d.world, &end).map_err(|v| with_ctx(v, &d, &end))?;
    // An operator resumes sagas parked as stuck (their retries ran out during
    // the faults), at most `OPERATOR_RESUMES_MAX` times each: a saga that is
    // stuck again with no fault around is a liveness violation, not masked.
    let settle_start = d.world.elapsed_ms();
    let mut resumes = vec![0u32; n];
    let mut first_stuck: Vec<Option<String>> = vec![None; n];
    let mut done = vec![false; n];
    loop {
        let mut waiting = false;
        for i in 0..n {
            let id = d.plans[i].id();
            if done[i] || d.world.engine.is_running(id) {
                waiting |= !done[i];
                continue;
            }
            match d.world.load(id).await {
                Some(st) if st.outcome.is_some() => done[i] = true,
                // Only sagas parked as stuck, with a reason: an unfinished
                // saga that is neither running nor stuck is lost, and I3
                // must report it rather than the operator revive it.
                Some(st) if st.stuck.is_some() && resumes[i] < OPERATOR_RESUMES_MAX => {
                    // Parked for credentials: the fault is gone, so the one
                    // resume the operator made must have been enough.
                    if let Some(first) = first_stuck[i]
                        .as_ref()
                        .filter(|r| r.to_ascii_lowercase().starts_with("credentials"))
                    {
                        let v = Violation::new(
                            seed,
                            Invariant::I3Liveness,
                            format!(
                                "saga {} ({id}) was parked for credentials ({first:?}), resumed once the fault had stopped, and is stuck again: {:?}",
                                d.plans[i].key, st.stuck
                            ),
                        );
                        let end = EndState::read(&d.world, &d.plans).await;
                        return Err(with_ctx(v, &d, &end));
                    }
                    if first_stuck[i].is_none() {
                        first_stuck[i] = st.stuck.clone();
                    }
                    resumes[i] += 1;
                    let _ = d.world.engine.resume(id).await;
                    waiting = true;
                }
                _ => {}
            }
        }
        if !waiting || d.world.elapsed_ms() >= settle_start + cfg.settle_window_ms {
            break;
        }
        d.complete_refunds(5_000);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    let settle_ms = d.world.elapsed_ms() - settle_start;
    let end = EndState::read(&d.world, &d.plans).await;
    // I5 first: a saga that gave up with work owed is finished, so I3 holds,
    // and its effects are journaled, so I4 holds; only I5 sees it.
    check_i5(seed, &d.world, &end).map_err(|v| with_ctx(v, &d, &end))?;
    check_i3(seed, &d.world, &end, cfg.settle_window_ms).map_err(|v| with_ctx(v, &d, &end))?;
    check_i2(seed, &end).map_err(|v| with_ctx(v, &d, &end))?;
    check_i4(seed, &d.world, &end).map_err(|v| with_ctx(v, &d, &end))?;
    let mut outcomes = BTreeMap::new();
    for (_, _, st) in &end.sagas {
        if let Some(o) = st.as_ref().and_then(|s| s.outcome.as_ref()) {
            *outcomes.entry(o.label()).or_insert(0) += 1;
        }
    }
    Ok(SeedReport {
        seed,
        sagas: n,
        crashes: d.world.life - 1,
        effects: d.world.sim.effects().len(),
        outcomes,
        virtual_ms: d.world.elapsed_ms(),
        settle_ms,
        trace_hash: trace_hash(&d.world, &d.plans).await,
        mix,
        operator_resumes: resumes.iter().sum(),
    })
}
