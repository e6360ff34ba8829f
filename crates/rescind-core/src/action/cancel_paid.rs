//! `cancel_paid`: cancel an order after payment, which opens a refund.
//!
//! Irreversible. Once applied the saga owes the wait for that refund and,
//! when it completes, the release of the stock lock. "Already cancelled"
//! is not enough to go on (the saga needs the refund's id): the step stays
//! in doubt and the order lookup finds the refund.

use super::cancel_unpaid::{cancel_request, check_cancel, fold_cancelled, lookup_cancel};
use super::{fold_common, mismatch, ActionKind, Change, Ctx, Lookup, OperatorApplied, StepOutcome};
use crate::channel::{ChannelError, Channels, InputError};
use crate::ids::OrderRef;
use crate::machine::{OrderEvent, OrderState, RefundState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Cancel a paid order upstream (opens a refund).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelPaid {
    /// The order.
    pub order: OrderRef,
}

#[async_trait]
impl ActionKind for CancelPaid {
    fn name(&self) -> &str {
        "cancel_paid"
    }
    fn irreversible(&self) -> bool {
        true
    }
    fn check(&self, channels: &Channels) -> Result<(), InputError> {
        check_cancel(channels, &self.order)
    }
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError> {
        let c = ctx.channels.cancel(&self.order.channel)?;
        let out = c.cancel_paid(&cancel_request(&self.order, ctx)).await?;
        Ok(StepOutcome::RefundOpened {
            refund_id: out.refund_id,
        })
    }
    async fn lookup(&self, ctx: &Ctx<'_>) -> Result<Lookup, ChannelError> {
        lookup_cancel(ctx, &self.order, true).await
    }
    fn already_done(&self) -> Option<StepOutcome> {
        None
    }
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String> {
        if let Some(changes) = fold_common(order, outcome, false) {
            return Ok(changes);
        }
        match outcome {
            StepOutcome::Cancelled { .. } => Ok(fold_cancelled(order)),
            StepOutcome::RefundOpened { refund_id } => Ok(vec![
                Change::Order(OrderEvent::RefundOpened {
                    refund_id: refund_id.clone(),
                }),
                Change::OpenedRefund(refund_id.clone()),
                Change::Refund(RefundState::Requested),
            ]),
            o => Err(mismatch(self.name(), o)),
        }
    }
    fn applied(&self, by: &OperatorApplied) -> Result<StepOutcome, String> {
        match &by.refund_id {
            Some(refund_id) if !refund_id.as_str().is_empty() => Ok(StepOutcome::RefundOpened {
                refund_id: refund_id.clone(),
            }),
            _ => Err(
                "a paid cancel that was applied opened a refund: give its id (--refund-id)".into(),
            ),
        }
    }
}
