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
//! let (_id, exit) = engine.run(SagaInput::cancel_unpaid(order)).await.unwrap();
//! // With no channel registered the cancel fails permanently, and says why:
//! match exit {
//!     SagaExit::Finished(SagaOutcome::Failed { reason }) => assert!(reason.contains("does not support")),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Re-exported so custom channels and step executors need no extra dependency.
pub use async_trait::async_trait;

pub mod channel;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod ids;
pub mod journal;
pub mod machine;
pub mod metrics;
pub mod record;
pub mod runtime;
pub mod saga;
pub mod sagas;

pub use channel::{
    Applied, CancelOrder, CancelOutcome, CancelRefund, CancelRequest, ChannelError, Channels,
    Conflict, ErrorClass, OrderLookup, OrderStatus, PermanentReason, RefundOpened, RefundStatus,
    ReleaseStock, WithdrawRequest,
};
pub use engine::{
    Engine, EngineBuilder, Error, Limits, RecoveryReport, Resolved, SagaExit, StepExecutor,
};
pub use ids::{
    ChannelName, OrderId, OrderRef, RefundId, SagaId, SagaKind, StockLockId, StockLockRef,
};
pub use journal::{CrashPoint, Journal, JournalError, MemoryJournal, SagaSet};
pub use machine::{
    order_transition, refund_transition, InvalidTransition, OrderEvent, OrderState, RefundEvent,
    RefundState,
};
pub use record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
pub use runtime::{Clock, IdGen, RandomIds, Rng, SeededIds, SplitMix64, TokioClock};
pub use saga::{Decision, FoldError, SagaDefinition, SagaState, StepView};

/// One import for embedders: `use rescind_core::prelude::*;`.
pub mod prelude {
    pub use crate::{
        CancelOrder, CancelRefund, ChannelError, Channels, Engine, Journal, MemoryJournal,
        OrderLookup, OrderRef, OrderState, RefundId, ReleaseStock, SagaExit, SagaId, SagaInput,
        SagaOutcome, StockLockRef,
    };
}
