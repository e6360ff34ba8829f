//! # rescind-channel-pandapon
//!
//! rescind's PandaPon OpenAPI channel (a Taobao/1688 purchasing proxy):
//!
//! - [`PandaponClient`]: header-signed requests (`access-key`, `nonce-str`,
//!   `timestamp`, `user-id`, `signature` through a pluggable
//!   [`rescind_wire::sign::PandaponSigner`], default the **assumed**
//!   [`rescind_wire::sign::SortedMd5Signer`]), the `{requestId, code,
//!   developId, msg, data}` envelope ([`envelope`]), exact big ids.
//! - [`PandaponTaobao`] (`pandapon-taobao`) and [`Pandapon1688`]
//!   (`pandapon-1688`): the core channel traits.
//! - [`callback`]: an embeddable axum receiver for PandaPon message callbacks
//!   that stores each message durably before answering 200, is idempotent to
//!   re-pushes, and wakes the sagas waiting on refund news.
//!
//! Which parts are documented by PandaPon and which are assumed is written
//! down in `docs/channels/pandapon.md`.
//!
//! ```no_run
//! use rescind_channel_pandapon::{PandaponClient, PandaponConfig, Pandapon1688, ALIBABA_CHANNEL};
//! use rescind_core::prelude::*;
//! use rescind_wire::sign::Secret;
//! use std::sync::Arc;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PandaponConfig::new("https://openapi.example", "58c0201dfdf148eca63cbf6bb5e7cf03",
//!     Secret::new("from-env"), "2100007341207");
//! let client = Arc::new(PandaponClient::connect(config)?);
//! let ch = Arc::new(Pandapon1688::new(client));
//! let engine = Engine::builder(Arc::new(MemoryJournal::new()))
//!     .channels(Channels::new().with_cancel(ALIBABA_CHANNEL, ch.clone()).with_lookup(ALIBABA_CHANNEL, ch))
//!     .build();
//! let order = OrderRef::new(ALIBABA_CHANNEL, "2542285634920880794");
//! let (_id, exit) = engine.run(SagaInput::cancel_unpaid(order)).await?;
//! println!("{exit:?}");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod callback;
mod channel;
mod client;
pub mod config;
pub mod envelope;
mod json;
pub mod status;

pub use channel::{Pandapon1688, PandaponTaobao, ALIBABA_CHANNEL, TAOBAO_CHANNEL};
pub use client::{
    alibaba_cancel_body, AlibabaRefund, CancelRefundData, OrderDetail, PandaponClient, RefundOrder,
    RefundOrderAggregate,
};
pub use config::{PandaponConfig, PandaponPaths, TransportSettings};
pub use envelope::{classify, Envelope};
pub use json::ExactText;

use std::path::PathBuf;

/// This crate's errors outside channel calls (which fail with
/// [`rescind_core::ChannelError`]): configuration and callback storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration field is invalid. Never carries a secret's value.
    #[error("invalid PandaPon configuration: {field} {reason}")]
    InvalidConfig {
        /// The field, e.g. `base_url` or `paths.taobao_order_detail`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("PandaPon HTTP client: {0}")]
    Transport(String),
    /// The callback store failed to read or write.
    #[error("callback store {}: {source}", path.display())]
    Store {
        /// The store's file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The callback store holds a record written by a newer rescind (a
    /// downgrade): refusing is safer than skipping (and later compacting) it.
    #[error("callback store {} holds a record rescind cannot read at line {line} (byte offset {offset}): {detail}", path.display())]
    StoreCorrupt {
        /// The store's file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// The byte offset where the line starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The callback store is at its size bound (`max_bytes`): nothing was
    /// stored. The receiver answers 503 so that PandaPon re-pushes later.
    #[error("callback store {} is full: {len} bytes stored, a {record} byte record would exceed the bound of {max} bytes", path.display())]
    StoreFull {
        /// The store's file.
        path: PathBuf,
        /// Bytes stored now.
        len: u64,
        /// Size of the record refused (0 when reported by a probe).
        record: u64,
        /// The bound.
        max: u64,
    },
    /// The last append to the callback store failed (and was rolled back to
    /// `offset`, unless `rolled_back` is false, in which case the next append
    /// first retries the rollback). Reported by the store's `probe`.
    #[error("callback store {}: the last append at byte offset {offset} failed: {reason}{}", path.display(), if *rolled_back { "" } else { " (and could not be rolled back yet)" })]
    StoreWriteFailed {
        /// The store's file.
        path: PathBuf,
        /// The file's last good length, where the failed append started.
        offset: u64,
        /// Why it failed (the I/O error).
        reason: String,
        /// Whether the partial write was truncated away.
        rolled_back: bool,
    },
}

impl Error {
    pub(crate) fn config(field: &str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
