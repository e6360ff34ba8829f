//! # rescind-core
//!
//! The domain and the saga engine of rescind: order and refund state machines,
//! the channel traits channel crates implement, the journal trait journals
//! implement, and the engine that drives sagas durably between them.
//!
//! This crate does no network or disk I/O of its own and knows nothing of
//! reqwest, axum or sled: it is driven through [`Journal`], the channel traits
//! and the [`Clock`]/[`Rng`]/[`IdGen`] seams, which is what makes crash tests
//! and deterministic simulation cheap.
//!
//! ```
//! use rescind_core::prelude::*;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let journal = Arc::new(MemoryJournal::new());
//! let engine = Engine::builder(journal).build(); // no channels registered
//! let order = OrderRef::new("tmall-tbc", "1231231");
//! // With no channel registered the saga is refused before anything is
//! // journaled, and the error says which field and what is configured:
//! let err = engine.run(SagaInput::cancel_unpaid(order)).await.unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "channel `tmall-tbc` is not configured for order cancel; configured: none"
//! );
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Re-exported so custom channels and step executors need no extra dependency.
pub use async_trait::async_trait;

pub mod action;
pub mod channel;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod ids;
pub mod index;
pub mod journal;
pub mod limits;
pub mod machine;
pub mod metrics;
pub mod observe;
pub mod reconcile;
pub mod record;
pub mod runtime;
pub mod saga;
pub mod sagas;
pub mod step;

pub use action::{ActionKind, Lookup, OperatorApplied};
pub use channel::{
    Applied, CancelOrder, CancelOutcome, CancelRefund, CancelRequest, ChannelError, Channels,
    Conflict, ErrorClass, InputError, OrderLookup, OrderStatus, PermanentReason, RefundOpened,
    RefundStatus, ReleaseStock, WithdrawRequest,
};
pub use engine::{
    credentials_account, Engine, EngineBuilder, Error, RecoveryReport, RecoveryTimings, Resolution,
    Resolved, SagaExit, StepExecutor,
};
pub use ids::{
    AccountId, ChannelName, OrderId, OrderRef, RefundId, SagaId, SagaKind, StockLockId,
    StockLockRef,
};
pub use index::{
    Cursor, IndexChange, QueryError, SagaCounts, SagaIndexEntry, SagaPage, SagaQuery, SagaStatus,
};
pub use journal::{CrashPoint, Journal, JournalError, MemoryJournal, SagaSet};
pub use limits::{LimitError, Limits};
pub use machine::{
    order_transition, refund_transition, InvalidTransition, OrderEvent, OrderState, RefundEvent,
    RefundState,
};
pub use observe::{SagaChange, SagaNotice, SagaObserver};
pub use record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
pub use runtime::{Clock, IdGen, RandomIds, Rng, SeededIds, SplitMix64, TokioClock};
pub use saga::{Decision, FoldError, OperatorNote, Owed, SagaDefinition, SagaState, StepView};

/// One import for embedders: `use rescind_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        CancelOrder, CancelRefund, ChannelError, Channels, Engine, Journal, MemoryJournal,
        OrderLookup, OrderRef, OrderState, RefundId, ReleaseStock, SagaExit, SagaId, SagaInput,
        SagaOutcome, StockLockRef,
    };
}
