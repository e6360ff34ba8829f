//! The engine's saga-state hook: an embedder (the worker's outcome webhooks)
//! learns when a saga finishes, becomes stuck, or leaves stuck, without
//! reading the journal.
//!
//! The hook is called on the saga's task *after* the change is durable in the
//! journal, so it must be cheap and must not block (hand the notice to a
//! queue). A process that dies between the journal write and the hook loses
//! the call: an observer that must not miss a finish reconciles against the
//! journal's finished set when it starts.

use crate::ids::SagaId;
use crate::record::{SagaInput, SagaOutcome};

/// What changed about a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SagaChange<'a> {
    /// The saga finished (its `Finished` record and finish mark are durable).
    Finished(&'a SagaOutcome),
    /// The saga stopped for an operator (unfinished, resumable).
    Stuck {
        /// Why, as journaled.
        reason: &'a str,
    },
    /// A saga that was stuck runs again (an operator resumed or resolved
    /// it, or a restart resumed it).
    Unstuck,
}

/// One change, as reported to a [`SagaObserver`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct SagaNotice<'a> {
    /// The saga.
    pub saga: SagaId,
    /// What it was started with (kind, order, account).
    pub input: &'a SagaInput,
    /// What changed.
    pub change: SagaChange<'a>,
    /// When (ms since the Unix epoch, from the engine's clock).
    pub at_ms: u64,
}

/// Receives [`SagaNotice`]s (`EngineBuilder::observer`). Called on the
/// saga's task: it must be cheap and must not block.
pub trait SagaObserver: Send + Sync + 'static {
    /// One change.
    fn saga_changed(&self, notice: &SagaNotice<'_>);
}
