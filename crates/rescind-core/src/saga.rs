//! Sagas as explicit state machines folded from their journal records.
//!
//! [`SagaState::apply`] is the fold: the same records always give the same
//! state, which is what makes recovery a replay. A [`SagaDefinition`] is a pure
//! decision function from that state to the next [`Decision`]; the engine
//! performs it and journals intent and outcome.

use crate::channel::Conflict;
use crate::ids::{RefundId, SagaId, SagaKind};
use crate::machine::{order_transition, OrderEvent, OrderState, RefundState};
use crate::record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
use serde::Serialize;

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
            Record::Started { input } if first.seq == 0 => {
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
                });
                self.stuck = None;
            }
            Record::Outcome {
                step,
                outcome,
                via,
                attempts,
            } => {
                let seq = e.seq;
                let action = match self.steps.last() {
                    Some(s) if s.step == *step && s.outcome.is_none() => s.action.clone(),
                    _ => {
                        return Err(self.err(
                            seq,
                            format!("outcome for step {step} without an open intent"),
                        ))
                    }
                };
                self.fold_outcome(seq, &action, outcome)?;
                if *via == Via::Lookup {
                    self.resolved_by_lookup += 1;
                }
                if let Some(last) = self.steps.last_mut() {
                    last.outcome = Some(outcome.clone());
                    last.via = Some(*via);
                    last.attempts = *attempts;
                }
                self.stuck = None;
            }
            Record::Observed { observation, .. } => self.fold_observation(e.seq, observation)?,
            Record::Switched { to, .. } => self.plan = to.clone(),
            Record::AbortRequested { reason } => {
                if self.abort.is_none() {
                    self.abort = Some(reason.clone());
                }
            }
            Record::Stuck { reason } => self.stuck = Some(reason.clone()),
            Record::Finished { outcome } => self.outcome = Some(outcome.clone()),
        }
        self.last_seq = e.seq;
        self.updated_at_ms = e.at_ms;
        Ok(())
    }

    fn fold_outcome(
        &mut self,
        seq: u64,
        action: &Action,
        outcome: &StepOutcome,
    ) -> Result<(), FoldError> {
        match (action, outcome) {
            (
                Action::CancelUnpaid { .. } | Action::CancelPaid { .. },
                StepOutcome::Cancelled { .. },
            ) => {
                if self.order != OrderState::Cancelled {
                    self.order_event(seq, OrderEvent::CancelledUpstream)?;
                }
            }
            (Action::CancelPaid { .. }, StepOutcome::RefundOpened { refund_id }) => {
                self.order_event(
                    seq,
                    OrderEvent::RefundOpened {
                        refund_id: refund_id.clone(),
                    },
                )?;
                self.opened_refund = Some(refund_id.clone());
                self.refund = Some(RefundState::Requested);
            }
            (Action::WithdrawRefund { refund_id, .. }, StepOutcome::RefundWithdrawn { .. }) => {
                self.order_event(
                    seq,
                    OrderEvent::RefundWithdrawn {
                        refund_id: refund_id.clone(),
                    },
                )?;
                self.refund = Some(RefundState::Withdrawn);
            }
            (Action::ReleaseStock { .. }, StepOutcome::StockReleased { .. }) => {
                self.stock_released = true
            }
            (_, StepOutcome::Conflict { conflict, .. }) => {
                self.fold_conflict(seq, action, conflict)?
            }
            (_, StepOutcome::Failed { .. })
            | (Action::Custom { .. }, StepOutcome::Custom { .. }) => {}
            (a, o) => {
                return Err(self.err(
                    seq,
                    format!("outcome {o:?} does not answer action {}", a.name()),
                ));
            }
        }
        Ok(())
    }

    fn fold_conflict(
        &mut self,
        seq: u64,
        action: &Action,
        conflict: &Conflict,
    ) -> Result<(), FoldError> {
        match (conflict, &self.order) {
            (Conflict::PaidMeanwhile, OrderState::PendingPay) => {
                self.order_event(seq, OrderEvent::PaymentConfirmed)
            }
            (Conflict::RefundAlreadyCompleted, OrderState::Refunding { refund_id }) => {
                let refund_id = refund_id.clone();
                self.refund = Some(RefundState::Completed);
                self.order_event(seq, OrderEvent::RefundCompleted { refund_id })
            }
            (Conflict::RefundClosed, OrderState::Refunding { refund_id }) => {
                let refund_id = refund_id.clone();
                self.refund = Some(RefundState::Refused { reason: None });
                if matches!(action, Action::WithdrawRefund { .. }) {
                    self.order_event(seq, OrderEvent::RefundRefused { refund_id })
                } else {
                    Ok(())
                }
            }
            // Shipped, or anything else: the state is recorded on the step;
            // the definition decides (usually: fail with the reason).
            _ => Ok(()),
        }
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
    /// The next decision. Never called while a step is in doubt.
    fn decide(&self, state: &SagaState) -> Decision;
}
