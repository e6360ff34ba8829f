#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod inspect;
pub mod reconcile;
pub mod simconfig;
pub mod wiring;
pub mod worker;

pub use rescind_channel_pandapon as pandapon;
pub use rescind_channel_top as top;
pub use rescind_core as core;
#[cfg(feature = "postgres")]
pub use rescind_journal_postgres as pg_journal;
pub use rescind_journal_sled as sled_journal;
pub use rescind_sim as sim;
pub use rescind_wire as wire;

/// One import for embedders.
pub mod prelude {
    pub use rescind_core::prelude::*;
    pub use rescind_core::{Limits, SagaKind, StepExecutor};
    pub use rescind_journal_sled::{SledConfig, SledJournal};
}
