//! The invariants checked after every seed and every crash-point run, and
//! the [`Violation`] a failing check reports (with its replay command).

use crate::plan::SagaPlan;
use crate::world::World;
use rescind_channel_pandapon::status::{order_state, Platform};
use rescind_channel_pandapon::{ALIBABA_CHANNEL, TAOBAO_CHANNEL};
use rescind_channel_top::map_tbc_order_status;
use rescind_core::{Action, OrderState, SagaId, SagaOutcome, SagaState, StepOutcome};
use rescind_sim::{EventAction, OrderView};
use std::collections::BTreeMap;
use std::fmt;

/// Which invariant a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invariant {
    /// I1: every saga is terminal, or stuck with a stated reason.
    I1NoSagaLost,
    /// I2: no upstream effect applied twice.
    I2AppliedOnce,
    /// I3: once faults stop, every saga finishes within a bounded virtual time.
    I3Liveness,
    /// I4: journal and upstream agree.
    I4Agreement,
    /// I5: no saga ends `failed` while upstream shows an irreversible
    /// effect of it whose follow-up is not done (a half-cancel).
    I5NoHalfCancel,
    /// I6: a crash then recovery ends like no crash.
    I6CrashEquivalence,
    /// I7: the same seed gives the same trace.
    I7Determinism,
    /// The harness itself could not run the seed (a bug in the harness or a
    /// setup the code refuses).
    Harness,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::I1NoSagaLost => "I1 no saga lost",
            Invariant::I2AppliedOnce => "I2 no effect applied twice",
            Invariant::I3Liveness => "I3 liveness once faults stop",
            Invariant::I4Agreement => "I4 journal and upstream agree",
            Invariant::I5NoHalfCancel => "I5 no half-cancel: nothing failed with work owed",
            Invariant::I6CrashEquivalence => "I6 crash + recovery ends like no crash",
            Invariant::I7Determinism => "I7 same seed, same trace",
            Invariant::Harness => "harness error",
        })
    }
}

/// A broken invariant: the seed, what broke, and the context to debug it.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The seed (for crash-point runs: the scenario's fixed seed).
    pub seed: u64,
    /// What broke.
    pub invariant: Invariant,
    /// In words.
    pub detail: String,
    /// Journal dump, effect log and fault mix, when available.
    pub context: String,
    /// How to replay it.
    pub replay: String,
}

impl Violation {
    /// A violation of `invariant` on `seed`; the replay command is the swarm's.
    pub fn new(seed: u64, invariant: Invariant, detail: impl Into<String>) -> Self {
        Violation {
            seed,
            invariant,
            detail: detail.into(),
            context: String::new(),
            replay: crate::replay_command(seed),
        }
    }

    /// Attach context (journal dump, effect log).
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = context.into();
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} violates {}: {}",
            self.seed, self.invariant, self.detail
        )?;
        writeln!(f, "replay: {}", self.replay)?;
        if !self.context.is_empty() {
            write!(f, "{}", self.context)?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// Map the simulator's view of an order onto rescind's order machine with the
/// channel crates' own status tables (the words the clients would parse).
pub fn upstream_order_state(v: &OrderView) -> Result<OrderState, String> {
    let refund = v.refund_id.as_deref();
    match v.channel.as_str() {
        "tmall-tbc" => {
            let r = refund.zip(v.refund_status.as_deref());
            map_tbc_order_status(&v.status, r).map_err(|e| e.to_string())
        }
        TAOBAO_CHANNEL | ALIBABA_CHANNEL => {
            let p = if v.channel == TAOBAO_CHANNEL {
                Platform::Taobao
            } else {
                Platform::Alibaba
            };
            order_state(
                p,
                &v.status,
                refund.map(|r| (r, v.refund_status.as_deref())),
            )
            .map_err(|e| e.to_string())
        }
        other => Err(format!("no status table for channel {other}")),
    }
}

/// The effect-log target of a step's action, as the simulator names it.
fn effect_of(action: &Action, outcome: &StepOutcome) -> Option<(String, String)> {
    use rescind_core::action as a;
    match (action, outcome) {
        (Action::CancelUnpaid(a::CancelUnpaid { order }), StepOutcome::Cancelled { .. }) => Some((
            "cancel_unpaid".into(),
            format!("{}:{}", order.channel, order.order_id),
        )),
        (Action::CancelPaid(a::CancelPaid { order }), StepOutcome::RefundOpened { .. }) => Some((
            "cancel_paid".into(),
            format!("{}:{}", order.channel, order.order_id),
        )),
        (
            Action::WithdrawRefund(a::WithdrawRefund { order, refund_id }),
            StepOutcome::RefundWithdrawn { .. },
        ) => Some((
            "withdraw_refund".into(),
            format!("{}:{}", order.channel, refund_id),
        )),
        (Action::ReleaseStock(a::ReleaseStock { lock }), StepOutcome::StockReleased { .. }) => {
            Some((
                "release_stock".into(),
                format!("{}:{}", lock.channel, lock.lock_id),
            ))
        }
        _ => None,
    }
}

/// Everything the checks need from the end of a run.
pub struct EndState {
    /// Each planned saga with its folded state (None: not in the journal).
    pub sagas: Vec<(SagaPlan, SagaId, Option<SagaState>)>,
    /// Effect counts from the simulator's log.
    pub effects: BTreeMap<(String, String), u64>,
}

impl EndState {
    /// Read the end state of `world` for `plans`.
    pub async fn read(world: &World, plans: &[SagaPlan]) -> EndState {
        let mut sagas = Vec::new();
        for p in plans {
            let id = p.id();
            sagas.push((p.clone(), id, world.load(id).await));
        }
        EndState {
            sagas,
            effects: world.sim.effect_counts(),
        }
    }
}

/// I1 at the end of the fault phase: every saga is finished, running, or
/// stuck with a reason an operator can read.
pub fn check_i1(seed: u64, world: &World, end: &EndState) -> Result<(), Violation> {
    for (p, id, st) in &end.sagas {
        let Some(st) = st else {
            return Err(Violation::new(
                seed,
                Invariant::I1NoSagaLost,
                format!(
                    "saga {} ({id}) was submitted but is not in the journal",
                    p.key
                ),
            ));
        };
        if st.outcome.is_some() || world.engine.is_running(*id) {
            continue;
        }
        match &st.stuck {
            Some(reason) if !reason.trim().is_empty() => {}
            _ => {
                return Err(Violation::new(
                    seed,
                    Invariant::I1NoSagaLost,
                    format!(
                        "saga {} ({id}) is neither finished, running nor stuck with a reason (plan {}, order {})",
                        p.key, st.plan, st.order
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// I3: every saga finished.
pub fn check_i3(seed: u64, world: &World, end: &EndState, window_ms: u64) -> Result<(), Violation> {
    let mut unfinished = Vec::new();
    for (p, id, st) in &end.sagas {
        match st {
            Some(st) if st.outcome.is_some() => {}
            Some(st) => unfinished.push(format!(
                "{} ({id}): plan {}, order {}, stuck {:?}, in doubt {}, last error {:?}",
                p.key,
                st.plan,
                st.order,
                st.stuck,
                st.in_doubt().is_some(),
                world.engine.last_error(*id)
            )),
            None => unfinished.push(format!("{} ({id}): not in the journal", p.key)),
        }
    }
    if unfinished.is_empty() {
        Ok(())
    } else {
        Err(Violation::new(
            seed,
            Invariant::I3Liveness,
            format!(
                "{} saga(s) not finished {} ms after faults stopped: {}",
                unfinished.len(),
                window_ms,
                unfinished.join("; ")
            ),
        ))
    }
}

/// I2: every effect in the simulator's log applied at most once.
pub fn check_i2(seed: u64, end: &EndState) -> Result<(), Violation> {
    for ((op, target), n) in &end.effects {
        if *n > 1 {
            return Err(Violation::new(
                seed,
                Invariant::I2AppliedOnce,
                format!("{op} on {target} applied {n} times"),
            ));
        }
    }
    Ok(())
}

/// I4: for finished sagas, the journal and the upstream agree:
/// - every step the journal records as done is in the effect log exactly once;
/// - every effect in the log belongs to a saga whose journal records it;
/// - a completed saga's tracked order state is the upstream's, mapped through
///   the channel crate's status table; a released stock lock is released.
pub fn check_i4(seed: u64, world: &World, end: &EndState) -> Result<(), Violation> {
    let v = |d: String| Err(Violation::new(seed, Invariant::I4Agreement, d));
    let mut journaled: BTreeMap<(String, String), SagaId> = BTreeMap::new();
    for (p, id, st) in &end.sagas {
        let Some(st) = st else { continue };
        for step in &st.steps {
            let Some(outcome) = &step.outcome else {
                continue;
            };
            if let Some(key) = effect_of(&step.action, outcome) {
                let n = end.effects.get(&key).copied().unwrap_or(0);
                if n != 1 {
                    return v(format!(
                        "saga {} ({id}) journaled {} on {} as done (step {}, {:?}), the upstream applied it {n} time(s)",
                        p.key, key.0, key.1, step.step, outcome
                    ));
                }
                journaled.insert(key, *id);
            }
        }
        if let Some(SagaOutcome::Completed { order, .. }) = &st.outcome {
            let Some(view) = world.sim.order(&p.channel, &p.order_id) else {
                return v(format!(
                    "saga {} ({id}): order {} missing upstream",
                    p.key, p.order_id
                ));
            };
            let up = match upstream_order_state(&view) {
                Ok(s) => s,
                Err(e) => return v(format!("saga {} ({id}): upstream unmappable: {e}", p.key)),
            };
            if &up != order || st.order != up {
                return v(format!(
                    "saga {} ({id}) completed with order {order} (tracked {}), upstream says {up} ({} / refund {:?} {:?})",
                    p.key, st.order, view.status, view.refund_id, view.refund_status
                ));
            }
            if let Some(lock) = &st.input.stock_lock {
                if !st.stock_released {
                    return v(format!(
                        "saga {} ({id}) completed without releasing lock {}",
                        p.key, lock.lock_id
                    ));
                }
                if let Some(view) = world.sim.order("damai", lock.lock_id.as_str()) {
                    if view.stock_lock_held != Some(false) {
                        return v(format!(
                            "saga {} ({id}) released lock {}, upstream still holds it",
                            p.key, lock.lock_id
                        ));
                    }
                }
            }
        }
    }
    for (key, n) in &end.effects {
        if *n > 0 && !journaled.contains_key(key) {
            let owner = end.sagas.iter().find(|(p, _, _)| p.owns_target(&key.1));
            let finished =
                owner.is_some_and(|(_, _, st)| st.as_ref().is_some_and(|s| s.outcome.is_some()));
            if finished || owner.is_none() {
                return v(format!(
                    "upstream applied {} on {} but no finished saga's journal records it",
                    key.0, key.1
                ));
            }
        }
    }
    if world.malformed_callbacks_total() > 0 {
        return v(format!(
            "{} simulator callback(s) rejected as malformed by the receiver",
            world.malformed_callbacks_total()
        ));
    }
    Ok(())
}

/// I5, judged from the simulator's state, effect log and applied events —
/// not from the engine's own account of what it still owes. A saga that
/// ended `failed` is a violation when upstream shows an irreversible effect
/// of it whose follow-up was not done:
///
/// - (a) half-cancel: the effect log has the saga's cancel of its order
///   (`cancel_unpaid` or `cancel_paid` on `<channel>:<order>`) and the
///   saga's Damai stock lock is still held upstream at the end;
/// - (b) refund left open: the effect log has the saga's `cancel_paid`, and
///   the refund it opened is still open upstream at the end (the order maps
///   to `Refunding` through the channel crate's status table), or was still
///   open when the saga finished (a scheduled completion or refusal closed
///   it only afterwards).
///
/// Aborted and completed sagas are judged by I4; a saga failing before any
/// irreversible effect (a conflict, an unsupported cancel) owes nothing.
pub fn check_i5(seed: u64, world: &World, end: &EndState) -> Result<(), Violation> {
    let mut found = Vec::new();
    let history = world.sim.event_history();
    for (p, id, st) in &end.sagas {
        let Some(st) = st else { continue };
        let Some(SagaOutcome::Failed { reason }) = &st.outcome else {
            continue;
        };
        let order_target = format!("{}:{}", p.channel, p.order_id);
        let applied = |op: &str| {
            end.effects
                .get(&(op.to_owned(), order_target.clone()))
                .copied()
                .unwrap_or(0)
                > 0
        };
        let cancelled_unpaid = applied("cancel_unpaid");
        let cancelled_paid = applied("cancel_paid");
        if !cancelled_unpaid && !cancelled_paid {
            continue;
        }
        let effect = if cancelled_paid {
            "cancel_paid"
        } else {
            "cancel_unpaid"
        };
        for lock in p.seeds.iter().filter_map(|s| s.stock_lock.as_ref()) {
            let held = world
                .sim
                .order("damai", lock)
                .and_then(|v| v.stock_lock_held);
            if held == Some(true) {
                found.push(format!(
                    "saga {} ({id}) ended failed ({reason:?}) after upstream applied its {effect} on {order_target}, but its stock lock damai:{lock} is still held upstream: a half-cancel",
                    p.key
                ));
            }
        }
        if !cancelled_paid {
            continue;
        }
        let Some(view) = world.sim.order(&p.channel, &p.order_id) else {
            continue;
        };
        let rid = view.refund_id.clone().unwrap_or_default();
        match upstream_order_state(&view) {
            Ok(OrderState::Refunding { .. }) => found.push(format!(
                "saga {} ({id}) ended failed ({reason:?}) with the refund {rid} it opened on {order_target} still open upstream ({} / {:?})",
                p.key, view.status, view.refund_status
            )),
            Ok(_) => {
                // Closed by now; but was it closed only after the saga gave up?
                let closed_later = history.iter().find(|e| {
                    e.applied
                        && e.event.channel == p.channel
                        && e.event.order_id == p.order_id
                        && matches!(
                            e.event.action,
                            EventAction::CompleteRefund | EventAction::RefuseRefund
                        )
                        && e.at_ms > st.updated_at_ms
                });
                if let Some(e) = closed_later {
                    found.push(format!(
                        "saga {} ({id}) ended failed ({reason:?}) at +{} ms while the refund {rid} it opened on {order_target} was still open upstream (closed by {:?} only at +{} ms)",
                        p.key,
                        st.updated_at_ms.saturating_sub(crate::world::EPOCH_MS),
                        e.event.action,
                        e.at_ms.saturating_sub(crate::world::EPOCH_MS)
                    ));
                }
            }
            Err(e) => found.push(format!(
                "saga {} ({id}): upstream order {order_target} unmappable: {e}",
                p.key
            )),
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(Violation::new(
            seed,
            Invariant::I5NoHalfCancel,
            format!(
                "{} saga(s) failed with work owed: {}",
                found.len(),
                found.join("; ")
            ),
        ))
    }
}

/// A readable dump of the journal of every saga and the effect log, for a
/// violation's context.
pub fn dump(world: &World, end: &EndState) -> String {
    let mut out = String::new();
    out.push_str("--- sagas ---\n");
    for (p, id, st) in &end.sagas {
        match st {
            Some(st) => {
                out.push_str(&format!(
                    "{} {id} {} on {}:{} plan={} order={} outcome={:?} stuck={:?}\n",
                    p.key,
                    st.input.kind,
                    p.channel,
                    p.order_id,
                    st.plan,
                    st.order,
                    st.outcome,
                    st.stuck
                ));
                for s in &st.steps {
                    out.push_str(&format!(
                        "    step {} {} -> {:?} via {:?} attempts {}\n",
                        s.step,
                        s.action.name(),
                        s.outcome,
                        s.via,
                        s.attempts
                    ));
                }
            }
            None => out.push_str(&format!("{} {id}: not in the journal\n", p.key)),
        }
    }
    out.push_str("--- effect log ---\n");
    for e in world.sim.effects() {
        out.push_str(&format!(
            "#{} +{}ms {} {} (x{}) via {}\n",
            e.seq,
            e.at_ms.saturating_sub(crate::world::EPOCH_MS),
            e.op,
            e.target,
            e.count,
            e.request.endpoint
        ));
    }
    out.push_str("--- scheduled events ---\n");
    for e in world.sim.event_history() {
        out.push_str(&format!(
            "+{}ms {:?} {}:{} applied={} {}\n",
            e.at_ms.saturating_sub(crate::world::EPOCH_MS),
            e.event.action,
            e.event.channel,
            e.event.order_id,
            e.applied,
            e.note
        ));
    }
    out
}
