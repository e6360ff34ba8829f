//! `release_stock`: release a stock lock (Damai ticket stock) after a cancel.
//!
//! A follow-up owed once the order is cancelled or refunded. Releasing twice
//! answers "already released", which is success, so an in-doubt release is
//! simply re-issued (no lookup).

use super::{fold_common, mismatch, ActionKind, Change, Ctx, OperatorApplied, StepOutcome};
use crate::channel::{ChannelError, Channels, InputError};
use crate::ids::StockLockRef;
use crate::machine::OrderState;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Release a stock lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    /// The lock.
    pub lock: StockLockRef,
}

#[async_trait]
impl ActionKind for ReleaseStock {
    fn name(&self) -> &str {
        "release_stock"
    }
    fn irreversible(&self) -> bool {
        false
    }
    fn check(&self, channels: &Channels) -> Result<(), InputError> {
        let c = channels.require_stock("stock_lock.channel", &self.lock.channel)?;
        c.check_lock_id(self.lock.lock_id.as_str())
            .map_err(|why| InputError::new("stock_lock.lock_id", self.lock.lock_id.as_str(), why))
    }
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError> {
        let c = ctx.channels.stock(&self.lock.channel)?;
        c.release_stock(&self.lock, ctx.account).await?;
        Ok(StepOutcome::StockReleased { already: false })
    }
    fn already_done(&self) -> Option<StepOutcome> {
        Some(StepOutcome::StockReleased { already: true })
    }
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String> {
        if let Some(changes) = fold_common(order, outcome, false) {
            return Ok(changes);
        }
        match outcome {
            StepOutcome::StockReleased { .. } => Ok(vec![Change::StockReleased]),
            o => Err(mismatch(self.name(), o)),
        }
    }
    fn applied(&self, _: &OperatorApplied) -> Result<StepOutcome, String> {
        Ok(StepOutcome::StockReleased { already: false })
    }
}
