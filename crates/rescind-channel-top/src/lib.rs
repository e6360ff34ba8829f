//! # rescind-channel-top
//!
//! rescind's Taobao Open Platform (TOP) channel: a gateway client (system
//! parameters, `md5` / `hmac` / `hmac-sha256` signing, GMT+8 timestamps,
//! JSON and XML envelopes, error classification) and the channels built on it:
//!
//! - [`TbcChannel`] (`tmall-tbc`): [`CancelOrder`](rescind_core::CancelOrder)
//!   by `tmall.tbc.order.cancel` before payment and the configured
//!   post-payment method after, and [`OrderLookup`](rescind_core::OrderLookup)
//!   by the configured order lookup method;
//! - [`TmcConsumer`]: the TOP message service (TMC) consumer of a
//!   `tmall-tbc` channel, which pushes refund and order-close news to
//!   waiting sagas so they need not poll;
//! - [`DamaiChannel`] (`damai`): [`ReleaseStock`](rescind_core::ReleaseStock)
//!   by `alibaba.damai.yuntoc.order.cancellockstock`, with a pluggable
//!   `head.signed` signer.
//!
//! Timeouts, the client-side rate limit and retries of unsent requests are
//! [`rescind_wire::transport`] layers around the transport, never loops in
//! here; in-doubt calls are the engine's to resolve by lookup. Secrets
//! (app secret, session, supplier secret) never reach `Debug`, logs or errors.
//! See `docs/channels/top.md`.
//!
//! ```no_run
//! use rescind_channel_top::{GatewayConfig, TbcChannel, TopConfig};
//! use rescind_core::{CancelOrder, CancelRequest, OrderRef};
//! use rescind_wire::sign::Secret;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let gateway = GatewayConfig::new(
//!     "https://eco.taobao.com/router/rest",
//!     "12129701",
//!     Secret::new(std::env::var("TOP_APP_SECRET")?),
//! );
//! let tbc = TbcChannel::connect(TopConfig::new(gateway))?;
//! let req = CancelRequest { order: OrderRef::new("tmall-tbc", "1231231"), account: None, reason: None, remark: None };
//! match tbc.cancel_unpaid(&req).await {
//!     Ok(_) => println!("cancelled"),
//!     Err(e) => println!("{e}"), // classified: retryable, already done, conflict or permanent
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classify;
pub mod client;
pub mod config;
pub mod damai;
pub mod envelope;
pub mod session;
pub mod tbc;
pub mod tmc;

pub use classify::{
    app_ban, ban_wait, check_tbc_result, classify_error_response, classify_response,
    classify_transport,
};
pub use client::{app_key_limiter, classify_flow, layered_transport, unpaced_transport, TopClient};
pub use config::{ConfigError, DamaiConfig, GatewayConfig, TopConfig, TransportSettings};
pub use damai::{check_damai_result, DamaiChannel, DAMAI_RETURN_CODES};
pub use envelope::{parse_envelope, Envelope, EnvelopeError, TopErrorResponse};
pub use session::{AccountSessions, REFRESH_MARGIN_MS, REFRESH_METHOD};
pub use tbc::{
    map_tbc_order_status, map_tbc_refund_status, TbcChannel, TbcOrder, TBC_ORDER_STATUSES,
    TBC_REFUND_STATUSES,
};
pub use tmc::{TmcConfig, TmcConsumer, TmcHandle, TmcProbe, TmcSink, TmcStats};

/// The channel names rescind registers these channels under.
pub mod names {
    /// Tmall TBC.
    pub const TMALL_TBC: &str = "tmall-tbc";
    /// Damai.
    pub const DAMAI: &str = "damai";
}

/// Why a channel could not be built. (Calls fail with
/// [`rescind_core::ChannelError`], classified for the engine.)
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client could not be built.
    #[error("cannot build the transport: {0}")]
    Transport(#[from] rescind_wire::transport::TransportError),
}

/// Result alias for building channels.
pub type Result<T, E = Error> = std::result::Result<T, E>;
