//! `cancel_unpaid`: cancel an order before payment.
//!
//! Irreversible. Once applied the saga owes the release of its stock lock.
//! "Already cancelled" is success. In doubt, the order's status tells:
//! PendingPay → not applied, Cancelled → applied, Paid → the buyer paid
//! meanwhile (a conflict the saga re-plans on).

use super::{fold_common, mismatch, ActionKind, Change, Ctx, Lookup, OperatorApplied, StepOutcome};
use crate::channel::{CancelRequest, ChannelError, Channels, Conflict, InputError};
use crate::ids::OrderRef;
use crate::machine::{OrderEvent, OrderState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Cancel an unpaid order upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelUnpaid {
    /// The order.
    pub order: OrderRef,
}

/// The request both cancels send.
pub(super) fn cancel_request(order: &OrderRef, ctx: &Ctx<'_>) -> CancelRequest {
    CancelRequest {
        order: order.clone(),
        account: ctx.account.cloned(),
        reason: ctx.reason.map(str::to_owned),
        remark: Some(format!("rescind saga {}", ctx.saga)),
    }
}

/// The check both cancels make: the channel cancels, and can name the order.
pub(super) fn check_cancel(channels: &Channels, order: &OrderRef) -> Result<(), InputError> {
    let c = channels.require_cancel("channel", &order.channel)?;
    c.check_order_id(order.order_id.as_str())
        .map_err(|why| InputError::new("order_id", order.order_id.as_str(), why))
}

/// What a lookup of the order says about an in-doubt cancel.
pub(super) async fn lookup_cancel(
    ctx: &Ctx<'_>,
    order: &OrderRef,
    paid: bool,
) -> Result<Lookup, ChannelError> {
    let Some(lookup) = ctx.channels.lookup(&order.channel) else {
        return Ok(Lookup::Unknown);
    };
    let status = lookup.order_status(order, ctx.account).await?;
    let moved = |conflict: Conflict, message: String| {
        Lookup::Moved(StepOutcome::Conflict { conflict, message })
    };
    Ok(match (status.state, paid) {
        (OrderState::PendingPay, false) | (OrderState::Paid, true) => Lookup::NotApplied,
        (OrderState::Cancelled, false) => {
            Lookup::Applied(StepOutcome::Cancelled { already: false })
        }
        (OrderState::Paid, false) => moved(
            Conflict::PaidMeanwhile,
            format!("lookup shows the order {} (paid)", status.upstream),
        ),
        (OrderState::Refunding { refund_id } | OrderState::Refunded { refund_id }, true) => {
            Lookup::Applied(StepOutcome::RefundOpened { refund_id })
        }
        (other, _) => {
            let detail = format!(
                "lookup shows the order {other} (upstream {})",
                status.upstream
            );
            moved(
                Conflict::Other {
                    detail: detail.clone(),
                },
                detail,
            )
        }
    })
}

/// How "the order is cancelled" folds, for both cancels.
pub(super) fn fold_cancelled(order: &OrderState) -> Vec<Change> {
    if *order == OrderState::Cancelled {
        Vec::new()
    } else {
        vec![Change::Order(OrderEvent::CancelledUpstream)]
    }
}

#[async_trait]
impl ActionKind for CancelUnpaid {
    fn name(&self) -> &str {
        "cancel_unpaid"
    }
    fn irreversible(&self) -> bool {
        true
    }
    fn check(&self, channels: &Channels) -> Result<(), InputError> {
        check_cancel(channels, &self.order)
    }
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError> {
        let c = ctx.channels.cancel(&self.order.channel)?;
        let out = c.cancel_unpaid(&cancel_request(&self.order, ctx)).await?;
        Ok(StepOutcome::Cancelled {
            already: out.already,
        })
    }
    async fn lookup(&self, ctx: &Ctx<'_>) -> Result<Lookup, ChannelError> {
        lookup_cancel(ctx, &self.order, false).await
    }
    fn already_done(&self) -> Option<StepOutcome> {
        Some(StepOutcome::Cancelled { already: true })
    }
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String> {
        if let Some(changes) = fold_common(order, outcome, false) {
            return Ok(changes);
        }
        match outcome {
            StepOutcome::Cancelled { .. } => Ok(fold_cancelled(order)),
            o => Err(mismatch(self.name(), o)),
        }
    }
    fn applied(&self, _: &OperatorApplied) -> Result<StepOutcome, String> {
        Ok(StepOutcome::Cancelled { already: false })
    }
}
