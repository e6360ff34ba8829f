//! The built-in sagas: CancelUnpaid, CancelPaid and WithdrawRefund.
//!
//! All three are pure decisions over [`SagaState`]. CancelUnpaid and CancelPaid
//! share one plan driven by the tracked order state, which is what lets an
//! unpaid cancel that finds the order paid continue as a paid cancel
//! (journaled as a `Switched` record) instead of failing.

use crate::action::{self, ActionKind};
use crate::channel::Conflict;
use crate::channel::{Channels, InputError};
use crate::ids::SagaKind;
use crate::machine::{OrderState, RefundState};
use crate::record::{Action, SagaInput, SagaOutcome, StepOutcome};
use crate::saga::{Decision, SagaDefinition, SagaState};

pub use crate::ids::{CANCEL_PAID, CANCEL_UNPAID, WITHDRAW_REFUND};

/// Every built-in definition, for registering on an engine.
pub fn builtin() -> Vec<Box<dyn SagaDefinition>> {
    vec![
        Box::new(CancelUnpaid),
        Box::new(CancelPaid),
        Box::new(WithdrawRefund),
    ]
}

/// A failure or an unplannable conflict on the last step ends the saga.
fn last_step_failure(s: &SagaState) -> Option<Decision> {
    let step = s.steps.last()?;
    match step.outcome.as_ref()? {
        StepOutcome::Failed { error } => Some(Decision::Finish(SagaOutcome::Failed {
            reason: format!(
                "step {} ({}) failed: {error}",
                step.step,
                step.action.name()
            ),
        })),
        StepOutcome::Conflict {
            conflict: c @ (Conflict::AlreadyShipped | Conflict::Other { .. }),
            message,
        } => Some(Decision::Finish(SagaOutcome::Failed {
            reason: format!(
                "step {} ({}): {c} ({message})",
                step.step,
                step.action.name()
            ),
        })),
        _ => None,
    }
}

fn release_or_finish(s: &SagaState, note: Option<String>) -> Decision {
    match &s.input.stock_lock {
        Some(lock) if !s.stock_released => {
            Decision::Act(Action::ReleaseStock(action::ReleaseStock {
                lock: lock.clone(),
            }))
        }
        _ => Decision::Finish(SagaOutcome::Completed {
            order: s.order.clone(),
            note,
        }),
    }
}

/// The plan shared by the two cancel sagas.
fn decide_cancel(s: &SagaState) -> Decision {
    if let Some(d) = last_step_failure(s) {
        return d;
    }
    let order = &s.input.order;
    if let Some(reason) = &s.abort {
        match &s.order {
            OrderState::Refunding { refund_id } if s.opened_refund.as_ref() == Some(refund_id) => {
                // Compensation: withdraw the refund this saga opened.
                return Decision::Act(Action::WithdrawRefund(action::WithdrawRefund {
                    order: order.clone(),
                    refund_id: refund_id.clone(),
                }));
            }
            OrderState::PendingPay | OrderState::Paid | OrderState::Refunding { .. } => {
                return Decision::Finish(SagaOutcome::Aborted {
                    compensated: s.refund == Some(RefundState::Withdrawn)
                        && s.opened_refund.is_some(),
                    reason: reason.clone(),
                });
            }
            OrderState::Cancelled | OrderState::Refunded { .. } => {
                return release_or_finish(
                    s,
                    Some(format!(
                        "abort ({reason}) came after the order was {}; nothing to compensate",
                        s.order.name()
                    )),
                );
            }
        }
    }
    match &s.order {
        OrderState::PendingPay => Decision::Act(Action::CancelUnpaid(action::CancelUnpaid {
            order: order.clone(),
        })),
        OrderState::Paid => {
            if let (Some(refund_id), Some(state)) = (&s.opened_refund, &s.refund) {
                return Decision::Finish(SagaOutcome::Failed {
                    reason: format!("refund {refund_id} ended {state} upstream without completing; the order is Paid again"),
                });
            }
            if s.plan.as_str() == CANCEL_UNPAID {
                Decision::Switch {
                    to: SagaKind(CANCEL_PAID.into()),
                    reason: "the buyer paid meanwhile; continuing as a paid cancel".into(),
                }
            } else {
                Decision::Act(Action::CancelPaid(action::CancelPaid {
                    order: order.clone(),
                }))
            }
        }
        OrderState::Refunding { refund_id } => Decision::AwaitRefund {
            refund_id: refund_id.clone(),
        },
        OrderState::Cancelled | OrderState::Refunded { .. } => release_or_finish(s, None),
    }
}

/// The checks of the cancel sagas: the order's channel cancels (a paid
/// cancel may follow an unpaid one, and needs refund withdraw only for an
/// abort's compensation, which is checked when it happens), and the stock
/// lock's channel releases.
fn check_cancel(input: &SagaInput, channels: &Channels) -> Result<(), InputError> {
    action::CancelUnpaid {
        order: input.order.clone(),
    }
    .check(channels)?;
    if let Some(lock) = &input.stock_lock {
        action::ReleaseStock { lock: lock.clone() }.check(channels)?;
    }
    Ok(())
}

fn require_state(input: &SagaInput, want: &str) -> Result<(), String> {
    if input.order_state.name() == want {
        Ok(())
    } else {
        Err(format!(
            "{} needs an order in state {want}, got {}",
            input.kind, input.order_state
        ))
    }
}

/// Cancel an unpaid order: cancel upstream → release the stock lock → Cancelled.
/// Continues as [`CancelPaid`] if the buyer paid meanwhile.
#[derive(Debug, Default, Clone, Copy)]
pub struct CancelUnpaid;

impl SagaDefinition for CancelUnpaid {
    fn kind(&self) -> SagaKind {
        SagaKind(CANCEL_UNPAID.into())
    }
    fn validate(&self, input: &SagaInput) -> Result<(), String> {
        require_state(input, "PendingPay")
    }
    fn check(&self, input: &SagaInput, channels: &Channels) -> Result<(), InputError> {
        check_cancel(input, channels)
    }
    fn decide(&self, state: &SagaState) -> Decision {
        decide_cancel(state)
    }
}

/// Cancel a paid order: cancel after payment (opens a refund) → wait for the
/// refund to complete → release the stock lock → Refunded. An operator abort
/// after the refund opened withdraws that refund (compensation).
#[derive(Debug, Default, Clone, Copy)]
pub struct CancelPaid;

impl SagaDefinition for CancelPaid {
    fn kind(&self) -> SagaKind {
        SagaKind(CANCEL_PAID.into())
    }
    fn validate(&self, input: &SagaInput) -> Result<(), String> {
        require_state(input, "Paid")
    }
    fn check(&self, input: &SagaInput, channels: &Channels) -> Result<(), InputError> {
        check_cancel(input, channels)
    }
    fn decide(&self, state: &SagaState) -> Decision {
        decide_cancel(state)
    }
}

/// Withdraw an open refund (refund-cancel) → order Paid.
#[derive(Debug, Default, Clone, Copy)]
pub struct WithdrawRefund;

impl SagaDefinition for WithdrawRefund {
    fn kind(&self) -> SagaKind {
        SagaKind(WITHDRAW_REFUND.into())
    }
    fn validate(&self, input: &SagaInput) -> Result<(), String> {
        require_state(input, "Refunding")
    }
    fn check(&self, input: &SagaInput, channels: &Channels) -> Result<(), InputError> {
        if let OrderState::Refunding { refund_id } = &input.order_state {
            action::WithdrawRefund {
                order: input.order.clone(),
                refund_id: refund_id.clone(),
            }
            .check(channels)?;
        }
        if let Some(lock) = &input.stock_lock {
            return Err(InputError::new(
                "stock_lock",
                &format!("{}:{}", lock.channel, lock.lock_id),
                "is not taken by withdraw_refund (the order stays paid; nothing is released)",
            ));
        }
        Ok(())
    }
    fn decide(&self, s: &SagaState) -> Decision {
        if let Some(d) = last_step_failure(s) {
            return d;
        }
        match &s.order {
            OrderState::Refunding { refund_id } => match &s.abort {
                Some(reason) => Decision::Finish(SagaOutcome::Aborted {
                    compensated: false,
                    reason: reason.clone(),
                }),
                None => Decision::Act(Action::WithdrawRefund(action::WithdrawRefund {
                    order: s.input.order.clone(),
                    refund_id: refund_id.clone(),
                })),
            },
            OrderState::Paid => Decision::Finish(SagaOutcome::Completed {
                order: OrderState::Paid,
                note: match &s.refund {
                    Some(RefundState::Withdrawn) | None => None,
                    Some(other) => {
                        Some(format!("the refund was already closed upstream ({other})"))
                    }
                },
            }),
            OrderState::Refunded { refund_id } => Decision::Finish(SagaOutcome::Failed {
                reason: format!(
                    "refund {refund_id} already completed; it can no longer be withdrawn"
                ),
            }),
            other => Decision::Finish(SagaOutcome::Failed {
                reason: format!("order is {other}, not refunding"),
            }),
        }
    }
}
