//! Sagas as explicit state machines folded from their journal records.
//!
//! [`SagaState::apply`] is the fold: the same records always give the same
//! state, which is what makes recovery a replay. A [`SagaDefinition`] is a pure
//! decision function from that state to the next [`Decision`]; the engine
//! performs it and journals intent and outcome.

use crate::action::Change;
use crate::channel::{Channels, InputError};
use crate::ids::{RefundId, SagaId, SagaKind, StockLockRef};
use crate::machine::{order_transition, OrderEvent, OrderState, RefundState};
use crate::record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
use serde::Serialize;
use std::fmt;

/// One step as the fold sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepView {
    /// Step number.
    pub step: u32,
    /// What was (to be) done.
    pub action: Action,
    /// `None` while in doubt: intent journaled, outcome not.
    pub outcome: Option<StepOutcome>,
    /// How the outcome became known.
    pub via: Option<Via>,
    /// Attempts the step took.
    pub attempts: u32,
    /// How an operator resolved it, if one did (`journal resolve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<OperatorNote>,
    /// When its intent was journaled (ms since the epoch): the step's
    /// deadline counts from here, across deferrals.
    pub opened_at_ms: u64,
    /// Attempts deferred because nothing could be sent (a ban): each counts
    /// as a try against the step's limits.
    #[serde(skip_serializing_if = "is_zero")]
    pub deferrals: u32,
    /// Set by a [`Record::Deferred`] while the step is open: its last
    /// attempt was certainly not applied, and it is sent again (no lookup)
    /// once this time (ms since the epoch) has come.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred_until_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An operator's resolution of an in-doubt step, as folded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperatorNote {
    /// Whether they found it applied.
    pub applied: bool,
    /// Who.
    pub operator: String,
    /// What they verified.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// Work a saga owes because an irreversible step took effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "owed", rename_all = "snake_case")]
pub enum Owed {
    /// The order is cancelled or refunded upstream; its stock lock is still held.
    ReleaseStock {
        /// The lock.
        lock: StockLockRef,
    },
    /// The saga opened this refund and it is still open.
    AwaitRefund {
        /// The refund.
        refund_id: RefundId,
    },
}

impl fmt::Display for Owed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owed::ReleaseStock { lock } => {
                write!(f, "release stock lock {}:{}", lock.channel, lock.lock_id)
            }
            Owed::AwaitRefund { refund_id } => write!(f, "see refund {refund_id} to its end"),
        }
    }
}

/// A saga's state: the fold of its records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SagaState {
    /// The saga.
    pub id: SagaId,
    /// What it was asked to do.
    pub input: SagaInput,
    /// The plan it follows now (differs from `input.kind` after a switch).
    pub plan: SagaKind,
    /// The order's state as the saga tracks it through the order machine.
    pub order: OrderState,
    /// The refund this saga opened, if any.
    pub opened_refund: Option<RefundId>,
    /// The last known state of the refund this saga deals with.
    pub refund: Option<RefundState>,
    /// Whether the stock lock has been released.
    pub stock_released: bool,
    /// Steps so far.
    pub steps: Vec<StepView>,
    /// The operator's abort reason, once requested.
    pub abort: Option<String>,
    /// Why the saga is stuck, if it is (cleared by progress).
    pub stuck: Option<String>,
    /// How it ended, once finished.
    pub outcome: Option<SagaOutcome>,
    /// Sequence of the last record folded.
    pub last_seq: u64,
    /// Time of the first record.
    pub started_at_ms: u64,
    /// Time of the last record.
    pub updated_at_ms: u64,
    /// Steps whose in-doubt state was resolved by a lookup.
    pub resolved_by_lookup: u32,
}

/// A journal that does not fold: names the saga and the record at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saga {saga} record seq {seq} does not fit its history: {detail}")]
pub struct FoldError {
    /// The saga.
    pub saga: SagaId,
    /// The record.
    pub seq: u64,
    /// What was wrong.
    pub detail: String,
}

impl SagaState {
    /// The state right after `Started`.
    pub fn new(id: SagaId, input: SagaInput, at_ms: u64) -> Self {
        SagaState {
            id,
            plan: input.kind.clone(),
            order: input.order_state.clone(),
            refund: match &input.order_state {
                OrderState::Refunding { .. } => Some(RefundState::Requested),
                _ => None,
            },
            input,
            opened_refund: None,
            stock_released: false,
            steps: Vec::new(),
            abort: None,
            stuck: None,
            outcome: None,
            last_seq: 0,
            started_at_ms: at_ms,
            updated_at_ms: at_ms,
            resolved_by_lookup: 0,
        }
    }

    /// Fold a whole journal (entries in order, starting with `Started`).
    pub fn fold(id: SagaId, entries: &[Entry]) -> Result<SagaState, FoldError> {
        let first = entries.first().ok_or_else(|| FoldError {
            saga: id,
            seq: 0,
            detail: "the saga has no records".into(),
        })?;
        let mut state = match &first.record {
            Record::Started { input, .. } if first.seq == 0 => {
                SagaState::new(id, input.clone(), first.at_ms)
            }
            other => {
                return Err(FoldError {
                    saga: id,
                    seq: first.seq,
                    detail: format!(
                        "first record is {} at seq {}, expected started at seq 0",
                        other.name(),
                        first.seq
                    ),
                })
            }
        };
        for e in &entries[1..] {
            state.apply(e)?;
        }
        Ok(state)
    }

    /// The in-doubt step: intent journaled, outcome not.
    pub fn in_doubt(&self) -> Option<&StepView> {
        self.steps.last().filter(|s| s.outcome.is_none())
    }

    /// The number the next step will get.
    pub fn next_step(&self) -> u32 {
        self.steps.len() as u32
    }

    /// Has it finished?
    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// Work still owed because an irreversible step took effect: the stock
    /// lock of an order cancelled or refunded upstream, the refund this saga
    /// opened while it is open. A saga that owes work never ends `failed`.
    pub fn owed(&self) -> Vec<Owed> {
        let mut owed = Vec::new();
        if let OrderState::Refunding { refund_id } = &self.order {
            if self.opened_refund.as_ref() == Some(refund_id) {
                owed.push(Owed::AwaitRefund {
                    refund_id: refund_id.clone(),
                });
            }
        }
        if let (OrderState::Cancelled | OrderState::Refunded { .. }, Some(lock), false) =
            (&self.order, &self.input.stock_lock, self.stock_released)
        {
            owed.push(Owed::ReleaseStock { lock: lock.clone() });
        }
        owed
    }

    /// The owed work in words ("release stock lock damai:L1, ..."), or `None`.
    pub fn owed_words(&self) -> Option<String> {
        let owed = self.owed();
        (!owed.is_empty()).then(|| {
            owed.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    /// The last step's outcome, if it has one.
    pub fn last_outcome(&self) -> Option<&StepOutcome> {
        self.steps.last().and_then(|s| s.outcome.as_ref())
    }

    /// Retries taken over all steps (attempts beyond the first).
    pub fn retries(&self) -> u32 {
        self.steps
            .iter()
            .map(|s| s.attempts.saturating_sub(1))
            .sum()
    }

    fn err(&self, seq: u64, detail: impl Into<String>) -> FoldError {
        FoldError {
            saga: self.id,
            seq,
            detail: detail.into(),
        }
    }

    fn order_event(&mut self, seq: u64, event: OrderEvent) -> Result<(), FoldError> {
        match order_transition(&self.input.order.order_id, &self.order, &event) {
            Ok(next) => {
                self.order = next;
                Ok(())
            }
            Err(e) => Err(self.err(seq, e.to_string())),
        }
    }

    /// Fold one more record. Sequences must follow without gaps.
    pub fn apply(&mut self, e: &Entry) -> Result<(), FoldError> {
        if e.seq != self.last_seq + 1 {
            return Err(self.err(e.seq, format!("expected seq {}", self.last_seq + 1)));
        }
        if self.outcome.is_some() {
            return Err(self.err(
                e.seq,
                format!("{} after the saga finished", e.record.name()),
            ));
        }
        match &e.record {
            Record::Started { .. } => return Err(self.err(e.seq, "a second started record")),
            Record::Intent { step, action } => {
                // A deferred step is sent again under a fresh intent
                // (write-ahead): it ends the deferral, and a crash during
                // that send leaves the step in doubt again.
                if let Some(last) = self
                    .steps
                    .last_mut()
                    .filter(|s| s.outcome.is_none() && s.deferred_until_ms.is_some())
                {
                    if last.step == *step && &last.action == action {
                        last.deferred_until_ms = None;
                        self.stuck = None;
                        self.last_seq = e.seq;
                        self.updated_at_ms = e.at_ms;
                        return Ok(());
                    }
                }
                if *step != self.next_step() || self.in_doubt().is_some() {
                    return Err(self.err(
                        e.seq,
                        format!(
                            "intent for step {step} while the next step is {} (in doubt: {})",
                            self.next_step(),
                            self.in_doubt().is_some()
                        ),
                    ));
                }
                self.steps.push(StepView {
                    step: *step,
                    action: action.clone(),
                    outcome: None,
                    via: None,
                    attempts: 0,
                    resolution: None,
                    opened_at_ms: e.at_ms,
                    deferrals: 0,
                    deferred_until_ms: None,
                });
                self.stuck = None;
            }
            Record::Outcome {
                step,
                outcome,
                via,
                attempts,
            } => {
                self.fold_step_outcome(e.seq, *step, outcome, *via)?;
                if let Some(last) = self.steps.last_mut() {
                    last.attempts = *attempts;
                }
            }
            Record::Resolved {
                step,
                outcome,
                operator,
                reason,
            } => {
                let note = OperatorNote {
                    applied: outcome.is_some(),
                    operator: operator.clone(),
                    reason: reason.clone(),
                    at_ms: e.at_ms,
                };
                match outcome {
                    Some(o) => self.fold_step_outcome(e.seq, *step, o, Via::Operator)?,
                    None => {
                        self.open_step(e.seq, *step)?;
                    }
                }
                self.stuck = None;
                if let Some(last) = self.steps.last_mut() {
                    last.resolution = Some(note);
                }
            }
            Record::Observed { observation, .. } => self.fold_observation(e.seq, observation)?,
            Record::Switched { to, .. } => self.plan = to.clone(),
            Record::AbortRequested { reason, .. } => {
                if self.abort.is_none() {
                    self.abort = Some(reason.clone());
                }
            }
            Record::Deferred { step, until_ms, .. } => {
                self.open_step(e.seq, *step)?;
                if let Some(last) = self.steps.last_mut() {
                    last.deferrals = last.deferrals.saturating_add(1);
                    last.deferred_until_ms = Some(*until_ms);
                }
            }
            Record::Stuck { reason } => self.stuck = Some(reason.clone()),
            Record::Resumed { .. } => self.stuck = None,
            Record::Finished { outcome } => self.outcome = Some(outcome.clone()),
        }
        self.last_seq = e.seq;
        self.updated_at_ms = e.at_ms;
        Ok(())
    }

    /// The open (in-doubt) step `step`'s action, or an error.
    fn open_step(&self, seq: u64, step: u32) -> Result<Action, FoldError> {
        match self.steps.last() {
            Some(s) if s.step == step && s.outcome.is_none() => Ok(s.action.clone()),
            _ => Err(self.err(
                seq,
                format!("outcome for step {step} without an open intent"),
            )),
        }
    }

    fn fold_step_outcome(
        &mut self,
        seq: u64,
        step: u32,
        outcome: &StepOutcome,
        via: Via,
    ) -> Result<(), FoldError> {
        let action = self.open_step(seq, step)?;
        let changes = action
            .kind()
            .fold(&self.order, outcome)
            .map_err(|detail| self.err(seq, detail))?;
        for change in changes {
            match change {
                Change::Order(event) => self.order_event(seq, event)?,
                Change::OpenedRefund(r) => self.opened_refund = Some(r),
                Change::Refund(state) => self.refund = Some(state),
                Change::StockReleased => self.stock_released = true,
            }
        }
        if via == Via::Lookup {
            self.resolved_by_lookup += 1;
        }
        if let Some(last) = self.steps.last_mut() {
            last.outcome = Some(outcome.clone());
            last.via = Some(via);
        }
        self.stuck = None;
        Ok(())
    }

    fn fold_observation(&mut self, seq: u64, obs: &Observation) -> Result<(), FoldError> {
        match obs {
            Observation::Refund {
                refund_id, status, ..
            } => {
                let open =
                    matches!(&self.order, OrderState::Refunding { refund_id: r } if r == refund_id);
                if !open {
                    // A stale or foreign refund's news: recorded, no state change.
                    return Ok(());
                }
                let event = match &status.state {
                    RefundState::Requested => return Ok(()),
                    RefundState::Completed => OrderEvent::RefundCompleted {
                        refund_id: refund_id.clone(),
                    },
                    RefundState::Withdrawn => OrderEvent::RefundWithdrawn {
                        refund_id: refund_id.clone(),
                    },
                    RefundState::Refused { .. } => OrderEvent::RefundRefused {
                        refund_id: refund_id.clone(),
                    },
                };
                self.refund = Some(status.state.clone());
                self.order_event(seq, event)
            }
            Observation::Order { status, .. } => {
                // An observed order status is the channel's truth: adopt it.
                self.order = status.state.clone();
                Ok(())
            }
        }
    }
}

/// What a definition wants next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Perform this action as the next step.
    Act(Action),
    /// Wait for the open refund to reach a final state (poll or callback).
    AwaitRefund {
        /// The refund awaited.
        refund_id: RefundId,
    },
    /// Continue under another plan (journaled as `Switched`).
    Switch {
        /// The new plan.
        to: SagaKind,
        /// Why.
        reason: String,
    },
    /// End the saga.
    Finish(SagaOutcome),
}

/// A saga definition: a pure function from folded state to the next decision.
///
/// Implement this to add your own saga kind to the engine
/// ([`crate::engine::EngineBuilder::saga`]); custom steps run through
/// [`crate::engine::StepExecutor`]s registered by name.
pub trait SagaDefinition: Send + Sync + 'static {
    /// The kind this definition runs.
    fn kind(&self) -> SagaKind;
    /// Check a new saga's input before it is journaled.
    fn validate(&self, input: &SagaInput) -> Result<(), String> {
        let _ = input;
        Ok(())
    }
    /// Check that the channels this saga would act on are configured and can
    /// name its ids, before it is journaled. Default: nothing to check. The
    /// built-in sagas check every action they may take ([`crate::action::ActionKind::check`]).
    fn check(&self, input: &SagaInput, channels: &Channels) -> Result<(), InputError> {
        let _ = (input, channels);
        Ok(())
    }
    /// The next decision. Never called while a step is in doubt.
    fn decide(&self, state: &SagaState) -> Decision;
}
