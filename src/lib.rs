#![doc = include_str!("../README.md")]
//!
//! ## This crate: re-exports and features
//!
//! `rescind` is a facade: it re-exports the workspace's crates and a small
//! [`prelude`], and owns no code of its own. Features choose what it pulls in:
//!
//! | feature | adds | default |
//! |---|---|---|
//! | — | `core`, `wire`, `top`, `pandapon`, `sled_journal`, `prelude` | always |
//! | `postgres` | `pg_journal` (tokio-postgres); PostgreSQL journals in `server`'s configuration | off |
//! | `server` | `accounts`, `accounts_api`, `auth`, `config`, `wiring`, `worker`, `inspect`, `metrics`, `reconcile`, `webhooks` from `rescind-server` (axum) | off |
//! | `sim` | `sim`, the channel simulator (with `server`: `simconfig`) | off |
//! | `otel` | `otel` from `rescind-server` (implies `server`): OpenTelemetry traces over OTLP/HTTP | off |
//!
//! No feature is on by default, so an embedder compiles neither axum, the
//! simulator nor tokio-postgres unless it asks; the `rescind` command enables
//! all three.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "otel")]
pub use rescind_server::otel;
#[cfg(all(feature = "server", feature = "sim"))]
pub use rescind_server::simconfig;
#[cfg(feature = "server")]
pub use rescind_server::{
    accounts, accounts_api, auth, config, inspect, metrics, reconcile, webhooks, wiring, worker,
};

pub use rescind_channel_pandapon as pandapon;
pub use rescind_channel_top as top;
pub use rescind_core as core;
#[cfg(feature = "postgres")]
pub use rescind_journal_postgres as pg_journal;
pub use rescind_journal_sled as sled_journal;
#[cfg(feature = "sim")]
pub use rescind_sim as sim;
pub use rescind_wire as wire;

/// One import for embedders.
pub mod prelude {
    pub use rescind_core::prelude::*;
    pub use rescind_core::{Limits, SagaKind, StepExecutor};
    pub use rescind_journal_sled::{SledConfig, SledJournal};
}
