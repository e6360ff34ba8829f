//! `withdraw_refund`: withdraw (refund-cancel) an open refund.
//!
//! Reversible in effect (the buyer may ask again), and the compensation of a
//! paid cancel. "Already withdrawn" is success. In doubt, the refund's
//! status tells: Requested → not applied, Withdrawn → applied, Completed or
//! Refused → the refund moved (a conflict the saga re-plans on).

use super::{fold_common, mismatch, ActionKind, Change, Ctx, Lookup, OperatorApplied, StepOutcome};
use crate::channel::{ChannelError, Channels, Conflict, InputError, WithdrawRequest};
use crate::ids::{OrderRef, RefundId};
use crate::machine::{OrderEvent, OrderState, RefundState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Withdraw a refund upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawRefund {
    /// The order.
    pub order: OrderRef,
    /// The refund.
    pub refund_id: RefundId,
}

#[async_trait]
impl ActionKind for WithdrawRefund {
    fn name(&self) -> &str {
        "withdraw_refund"
    }
    fn irreversible(&self) -> bool {
        false
    }
    fn check(&self, channels: &Channels) -> Result<(), InputError> {
        let c = channels.require_refund("channel", &self.order.channel)?;
        c.check_order_id(self.order.order_id.as_str())
            .map_err(|why| InputError::new("order_id", self.order.order_id.as_str(), why))?;
        c.check_refund_id(self.refund_id.as_str())
            .map_err(|why| InputError::new("refund_id", self.refund_id.as_str(), why))
    }
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError> {
        let c = ctx.channels.refund(&self.order.channel)?;
        let req = WithdrawRequest {
            order: self.order.clone(),
            refund_id: self.refund_id.clone(),
            account: ctx.account.cloned(),
        };
        c.withdraw_refund(&req).await?;
        Ok(StepOutcome::RefundWithdrawn { already: false })
    }
    async fn lookup(&self, ctx: &Ctx<'_>) -> Result<Lookup, ChannelError> {
        let Some(lookup) = ctx.channels.lookup(&self.order.channel) else {
            return Ok(Lookup::Unknown);
        };
        let status = lookup
            .refund_status(&self.order, &self.refund_id, ctx.account)
            .await?;
        let moved = |conflict: Conflict| {
            Lookup::Moved(StepOutcome::Conflict {
                conflict,
                message: format!("lookup shows refund {} {}", self.refund_id, status.upstream),
            })
        };
        Ok(match status.state {
            RefundState::Requested => Lookup::NotApplied,
            RefundState::Withdrawn => {
                Lookup::Applied(StepOutcome::RefundWithdrawn { already: false })
            }
            RefundState::Completed => moved(Conflict::RefundAlreadyCompleted),
            RefundState::Refused { .. } => moved(Conflict::RefundClosed),
        })
    }
    fn already_done(&self) -> Option<StepOutcome> {
        Some(StepOutcome::RefundWithdrawn { already: true })
    }
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String> {
        if let Some(changes) = fold_common(order, outcome, true) {
            return Ok(changes);
        }
        match outcome {
            StepOutcome::RefundWithdrawn { .. } => Ok(vec![
                Change::Order(OrderEvent::RefundWithdrawn {
                    refund_id: self.refund_id.clone(),
                }),
                Change::Refund(RefundState::Withdrawn),
            ]),
            o => Err(mismatch(self.name(), o)),
        }
    }
    fn applied(&self, _: &OperatorApplied) -> Result<StepOutcome, String> {
        Ok(StepOutcome::RefundWithdrawn { already: false })
    }
}
