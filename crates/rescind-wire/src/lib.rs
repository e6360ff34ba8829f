//! # rescind-wire
//!
//! What rescind's channel clients and its simulator must agree on, kept in one
//! place so that neither depends on the other:
//!
//! - [`sign`]: TOP request signing (`md5`, `hmac`, `hmac-sha256`), GMT+8
//!   timestamps, and the pluggable PandaPon header signer with its assumed default.
//! - [`credentials`]: per-account credentials resolved at call time (TOP
//!   sessions with expiry and refresh token, PandaPon keys, Damai supplier
//!   credentials), with change generations, and an in-memory provider.
//! - [`transport`]: the HTTP transport seam (an HTTP request in, an HTTP
//!   response out) with the production reqwest implementation and the
//!   timeout / rate-limit / retry layers that wrap every channel client once.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod credentials;
pub mod flow;
pub mod sign;
pub mod transport;
