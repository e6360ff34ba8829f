//! `custom`: a step of a user-defined saga, run by a registered [`StepExecutor`].
//!
//! The engine cannot know what a custom step does: it is treated as
//! reversible, "already done" is success with a `null` value, and an
//! in-doubt step is resolved by the executor's [`StepExecutor::resolve`].

use super::{fold_common, mismatch, ActionKind, Change, Ctx, Lookup, OperatorApplied, StepOutcome};
use crate::channel::{ChannelError, Channels, InputError, PermanentReason};
use crate::machine::OrderState;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A step of a user-defined saga, run by the executor registered under `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Custom {
    /// The executor's name.
    pub name: String,
    /// What the executor needs.
    pub payload: serde_json::Value,
}

/// What an in-doubt custom step turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// It took effect; this is its result.
    Applied(serde_json::Value),
    /// It did not take effect; re-issue it.
    NotApplied,
    /// Cannot tell; re-issue it (the step must then be idempotent).
    Unknown,
}

/// Runs the steps of user-defined sagas ([`Custom`] actions), by name.
#[async_trait]
pub trait StepExecutor: Send + Sync + 'static {
    /// Perform the step. Classify failures like a channel does.
    async fn execute(&self, payload: &serde_json::Value)
        -> Result<serde_json::Value, ChannelError>;
    /// Find out whether an in-doubt step took effect. Default: cannot tell.
    async fn resolve(&self, payload: &serde_json::Value) -> Result<Resolved, ChannelError> {
        let _ = payload;
        Ok(Resolved::Unknown)
    }
}

#[async_trait]
impl ActionKind for Custom {
    fn name(&self) -> &str {
        &self.name
    }
    fn irreversible(&self) -> bool {
        false
    }
    fn check(&self, _: &Channels) -> Result<(), InputError> {
        Ok(())
    }
    async fn call(&self, ctx: &Ctx<'_>) -> Result<StepOutcome, ChannelError> {
        let exec = ctx.executors.get(&self.name).ok_or_else(|| {
            ChannelError::permanent(
                PermanentReason::Unsupported,
                format!("no executor registered for custom step {:?}", self.name),
            )
        })?;
        let value = exec.execute(&self.payload).await?;
        Ok(StepOutcome::Custom { value })
    }
    async fn lookup(&self, ctx: &Ctx<'_>) -> Result<Lookup, ChannelError> {
        let Some(exec) = ctx.executors.get(&self.name) else {
            return Ok(Lookup::Unknown);
        };
        Ok(match exec.resolve(&self.payload).await? {
            Resolved::Applied(value) => Lookup::Applied(StepOutcome::Custom { value }),
            Resolved::NotApplied => Lookup::NotApplied,
            Resolved::Unknown => Lookup::Unknown,
        })
    }
    fn already_done(&self) -> Option<StepOutcome> {
        Some(StepOutcome::Custom {
            value: serde_json::Value::Null,
        })
    }
    fn fold(&self, order: &OrderState, outcome: &StepOutcome) -> Result<Vec<Change>, String> {
        if let Some(changes) = fold_common(order, outcome, false) {
            return Ok(changes);
        }
        match outcome {
            StepOutcome::Custom { .. } => Ok(Vec::new()),
            o => Err(mismatch(self.name(), o)),
        }
    }
    fn applied(&self, by: &OperatorApplied) -> Result<StepOutcome, String> {
        Ok(StepOutcome::Custom {
            value: by.value.clone().unwrap_or(serde_json::Value::Null),
        })
    }
}
