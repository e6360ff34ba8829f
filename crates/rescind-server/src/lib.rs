//! # rescind-server
//!
//! rescind as a service, over the library crates: API tokens ([`auth`]),
//! the configuration file
//! ([`config`]), turning it into live channels and a journal ([`wiring`]),
//! the HTTP worker ([`worker`]) and how its listeners are served
//! ([`serve`]: timeouts, body limits, a connection cap), operator views of sagas ([`inspect`]),
//! reconciliation against the channels ([`reconcile`]), signed outcome
//! webhooks from a durable outbox ([`webhooks`]), the web console ([`ui`])
//! and, with feature
//! `sim`, the channel tables for the bundled simulator ([`simconfig`]).
//!
//! Embedders usually reach these through the `rescind` facade's `server`
//! feature, at the same paths (`rescind::config`, `rescind::worker`, ...).
//!
//! Features: `postgres` (default) opens `[journal] postgres_url` journals;
//! `sim` adds [`simconfig`] (and compiles the simulator); `otel` adds
//! `otel`, OpenTelemetry traces exported over OTLP/HTTP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod accounts_api;
pub mod auth;
pub mod config;
pub mod inspect;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
pub mod reconcile;
pub mod serve;
#[cfg(feature = "sim")]
pub mod simconfig;
pub mod ui;
pub mod webhooks;
pub mod wiring;
pub mod worker;
