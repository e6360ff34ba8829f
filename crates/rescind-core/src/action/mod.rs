//! Actions: the externally visible things a saga step does, one module each.
//!
//! Everything one built-in action means lives in its module: the request it
//! sends ([`ActionKind::call`]), how a lookup reads when the step is in doubt
//! ([`ActionKind::lookup`]), what "already done" is
//! ([`ActionKind::already_done`]), whether it is irreversible, how its outcome
//! folds into the saga's tracked state ([`ActionKind::fold`]), what "applied"
//! means when an operator resolves it by hand ([`ActionKind::applied`]) and
//! which channel capability it needs ([`ActionKind::check`]).
//!
//! [`Action`] is the journaled form (a serde enum, one variant per action).
//! Adding an action is one new module plus one line in [`Action::kind`]'s
//! match (and its variant); see docs/ARCHITECTURE.md, "Adding an action".
//!
//! What a saga *owes* once an irreversible action took effect is derived from
//! the folded state ([`crate::saga::SagaState::owed`]): the stock lock of a
//! cancelled or refunded order, the refund the saga opened. A saga that owes
//! work never ends `failed`; it is stuck until an operator resumes it.

mod cancel_paid;
mod cancel_unpaid;
mod custom;
mod release_stock;
mod withdraw_refund;

pub use cancel_paid::CancelPaid;
pub use cancel_unpaid::CancelUnpaid;
pub use custom::{Custom, Resolved, StepExecutor};
pub use release_stock::ReleaseStock;
pub use withdraw_refund::WithdrawRefund;

use crate::channel::{ChannelError, Channels, Conflict, InputError};
use crate::ids::{AccountId, RefundId, SagaId};
use crate::machine::{OrderEvent, OrderState, RefundState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Custom step executors by name.
pub type Executors = HashMap<String, Arc<dyn StepExecutor>>;

/// One externally visible action a saga asks the engine to perform.
///
/// Journaled as `{"action": "<name>", ...fields}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Cancel an unpaid order upstream.
    CancelUnpaid(CancelUnpaid),
    /// Cancel a paid order upstream (opens a refund).
    CancelPaid(CancelPaid),
    /// Withdraw a refund upstream.
    WithdrawRefund(WithdrawRefund),
    /// Release a stock lock.
    ReleaseStock(ReleaseStock),
    /// A step of a user-defined saga, run by the executor registered under its name.
    Custom(Custom),
}

impl Action {
    /// The action's behaviour: the one place that maps a variant to its module.
    pub fn kind(&self) -> &dyn ActionKind {
        match self {
            Action::CancelUnpaid(a) => a,
            Action::CancelPaid(a) => a,
            Action::WithdrawRefund(a) => a,
            Action::ReleaseStock(a) => a,
            Action::Custom(a) => a,
        }
    }

    /// A custom step for the executor registered under `name`.
    pub fn custom(name: impl Into<String>, payload: serde_json::Value) -> Self {
        Action::Custom(Custom {
            name: name.into(),
            payload,
        })
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &str {
        self.kind().name()
    }

    /// The channel the action calls (the stock lock's for `release_stock`);
    /// `None` for a custom step, whose executor decides.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Action::CancelUnpaid(a) => Some(a.order.channel.as_str()),
            Action::CancelPaid(a) => Some(a.order.channel.as_str()),
            Action::WithdrawRefund(a) => Some(a.order.channel.as_str()),
            Action::ReleaseStock(a) => Some(a.lock.channel.as_str()),
            Action::Custom(_) => None,
        }
    }

    /// Once applied, can it be taken back? (A cancel cannot.)
    pub fn irreversible(&self) -> bool {
        self.kind().irreversible()
    }
}

/// How an outcome became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The call's own reply.
    #[default]
    Reply,
    /// A status lookup that resolved an in-doubt step.
    Lookup,
    /// A poll while waiting.
    Poll,
    /// A channel callback delivered to the saga.
    Callback,
    /// An operator's resolution of an in-doubt step (`journal resolve`).
    Operator,
}

/// What a step achieved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    /// The order is cancelled (`already`: it was before we asked).
    Cancelled {
        /// The channel said "already cancelled".
        already: bool,
    },
    /// The paid cancel opened this refund.
    RefundOpened {
        /// The refund opened.
        refund_id: RefundId,
    },
    /// The refund is withdrawn.
    RefundWithdrawn {
        /// The channel said "already withdrawn".
        already: bool,
    },
    /// The stock lock is released.
    StockReleased {
        /// The channel said "already released".
        already: bool,
    },
    /// The state moved upstream; the saga re-plans.
    Conflict {
        /// What moved.
        conflict: Conflict,
        /// The channel's words.
        message: String,
    },
    /// The step failed for good.
    Failed {
        /// The classified error.
        error: ChannelError,
    },
    /// A custom executor's result.
    Custom {
        /// Whatever the executor returned.
        value: serde_json::Value,
    },
}

/// What a lookup says about an in-doubt step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// It took effect: this is its outcome.
    Applied(StepOutcome),
    /// The state moved another way (a conflict outcome): re-plan.
    Moved(StepOutcome),
    /// It certainly did not take effect: re-issue it.
    NotApplied,
    /// Cannot tell (no lookup for this action): re-issue it, which must be safe.
    Unknown,
}

/// What an action's call needs from the engine.
pub struct Ctx<'a> {
    /// The saga performing it.
    pub saga: SagaId,
    /// The reason sent upstream, where the channel takes one.
    pub reason: Option<&'a str>,
    /// The account (shop) the saga acts for, passed to every channel call.
    pub account: Option<&'a AccountId>,
    /// The channels.
    pub channels: &'a Channels,
    /// Custom step executors.
    pub executors: &'a Executors,
}

/// A change an outcome makes to the saga's tracked state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An event for the order machine.
    Order(OrderEvent),
    /// The saga opened this refund.
    OpenedRefund(RefundId),
    /// The refund the saga deals with is now in this state.
    Refund(RefundState),
    /// The stock lock is released.
    StockReleased,
}

/// What an operator asserts when resolving an in-doubt step as applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorApplied {
    /// The refund the paid cancel opened (required for `cancel_paid`).
    pub refund_id: Option<RefundId>,
    /// A custom step's result (optional; `null` otherwise).
    pub value: Option<serde_json::Value>,
}

/// The behaviour of one action. Implemented by each action's module.
#[async_trait]
pub trait ActionKind: Send + Sync {
    /// A short name for logs, metrics and the journal.
    fn name(&self) -> &str;
    /// Once applied, can it be taken back? Irreversible actions leave the
    /// saga owing its follow-ups ([`crate::saga::SagaState::owed`]).
    fn irreversible(&self) -> bool;
    /// Is the channel (and its id format) there for this action? Checked
    /// before a saga that would take it is journaled.
    fn check(&self, channels: &Channels) -> Result<(), InputError>;
    /// Perform the call upstream, once.
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError>;
    /// Find out whether an in-doubt step took effect. Default: cannot tell.
    async fn lookup(&self, ctx: &Ctx<'_>) -> Result<Lookup, ChannelError> {
        let _ = ctx;
        Ok(Lookup::Unknown)
    }
    /// The outcome when the channel answers "already done"; `None` when that
    /// answer leaves the step in doubt (a paid cancel must find its refund).
    fn already_done(&self) -> Option<StepOutcome>;
    /// How an outcome of this action changes the tracked state. Conflicts
    /// and failures are folded by [`fold_common`] before this is asked.
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String>;
    /// The outcome an operator's "it was applied" stands for.
    fn applied(&self, by: &OperatorApplied) -> Result<StepOutcome, String>;
}

/// Fold the outcomes every action shares (conflicts, failures); `None` for
/// an action-specific outcome. `withdrawing`: the step was a refund withdraw,
/// so a closed refund returns the order to Paid.
pub fn fold_common(
    order: &OrderState,
    outcome: &StepOutcome,
    withdrawing: bool,
) -> Option<Vec<Change>> {
    match outcome {
        StepOutcome::Failed { .. } => Some(Vec::new()),
        StepOutcome::Conflict { conflict, .. } => Some(match (conflict, order) {
            (Conflict::PaidMeanwhile, OrderState::PendingPay) => {
                vec![Change::Order(OrderEvent::PaymentConfirmed)]
            }
            (Conflict::RefundAlreadyCompleted, OrderState::Refunding { refund_id }) => vec![
                Change::Refund(RefundState::Completed),
                Change::Order(OrderEvent::RefundCompleted {
                    refund_id: refund_id.clone(),
                }),
            ],
            (Conflict::RefundClosed, OrderState::Refunding { refund_id }) => {
                let mut v = vec![Change::Refund(RefundState::Refused { reason: None })];
                if withdrawing {
                    v.push(Change::Order(OrderEvent::RefundRefused {
                        refund_id: refund_id.clone(),
                    }));
                }
                v
            }
            // Shipped, or anything else: the state is recorded on the step;
            // the definition decides (usually: fail with the reason).
            _ => Vec::new(),
        }),
        _ => None,
    }
}

fn mismatch(action: &str, outcome: &StepOutcome) -> String {
    format!("outcome {outcome:?} does not answer action {action}")
}

#[cfg(test)]
mod tests;
