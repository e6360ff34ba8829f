//! The PandaPon message-callback receiver: an embeddable axum service.
//!
//! PandaPon POSTs `{messageType, messageBody, messagePlatform, timestamp}` and
//! wants HTTP 200 within 1000 ms; a failed push is re-pushed (after 30
//! minutes, at most 5 times) and delivery order is not guaranteed. So the
//! receiver:
//!
//! 1. parses leniently (`messageBody` as a JSON string or an object; ids and
//!    numbers as numbers or strings, never through `f64`), answering 400 with
//!    a clear message only when the request is not a callback at all;
//! 2. computes an idempotency key from what the message *says* (type,
//!    platform, and the status fields of the body; not the timestamp, which a
//!    re-push may change) and appends the message to a [`CallbackStore`]
//!    durably (for [`FileCallbackStore`]: written and `fdatasync`ed) before
//!    answering — a store failure answers 500 and a full store (at its size
//!    bound) 503, so that PandaPon re-pushes; a failed append leaves nothing
//!    behind (see [`FileCallbackStore`]);
//! 3. answers 200 (a duplicate also gets 200, and is not processed again);
//! 4. then processes the message on a task: refund and order status changes
//!    become [`Observation`]s handed to a [`CallbackSink`] (the engine, which
//!    wakes the sagas waiting on them), on the channel names registered for
//!    the message's platform ([`CallbackChannels`]). A status older than a final status
//!    already seen for the same refund/order is recorded as stale and not
//!    delivered. An unknown `messageType` (or an unknown status word) is
//!    stored, counted in [`CallbackStats`], kept in [`CallbackReceiver::reported`]
//!    and logged as a warning — never dropped.
//!
//! After a restart, call [`CallbackReceiver::replay`] once the engine has
//! recovered its sagas: it processes every stored message again (the engine
//! ignores news that does not move a saga, so replay is harmless), covering a
//! crash between "stored" and "processed". Call [`CallbackReceiver::compact`]
//! periodically to drop old messages no unfinished saga needs, and
//! [`CallbackReceiver::probe`] from a health check.

use crate::json::{clip, exact_opt, exact_req};
use crate::status::{order_state, order_word, refund_state, OrderWord, Platform};
use crate::{Error, Result};
use async_trait::async_trait;
#[cfg(feature = "axum")]
use axum::extract::{DefaultBodyLimit, State};
#[cfg(feature = "axum")]
use axum::response::{IntoResponse, Response};
#[cfg(feature = "axum")]
use axum::routing::post;
#[cfg(feature = "axum")]
use axum::Router;
#[cfg(feature = "axum")]
use bytes::Bytes;
use http::StatusCode;
use md5::{Digest, Md5};
use rescind_core::{
    ChannelName, Clock, Observation, OrderRef, OrderState, OrderStatus, RefundId, RefundState,
    RefundStatus, TokioClock,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The default path the receiver listens on.
pub const DEFAULT_CALLBACK_PATH: &str = "/callbacks/pandapon";
/// Largest callback body accepted (bytes); larger requests get 413.
pub const CALLBACK_BODY_BYTES_MAX: usize = 256 * 1024;
/// Reported (unknown or unmappable) messages kept in memory for
/// [`CallbackReceiver::reported`]; older ones remain in the store.
pub const REPORTED_KEPT_MAX: usize = 1_000;

/// `ORDER_STATUS_CHANGE`.
pub const ORDER_STATUS_CHANGE: &str = "ORDER_STATUS_CHANGE";
/// `ORDER_PRICE_CHANGE`.
pub const ORDER_PRICE_CHANGE: &str = "ORDER_PRICE_CHANGE";
/// `REFUND_STATUS_CHANGE`.
pub const REFUND_STATUS_CHANGE: &str = "REFUND_STATUS_CHANGE";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One callback as received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackMessage {
    /// `messageType`.
    pub message_type: String,
    /// `messagePlatform` (0 Taobao, 1 1688), when it was an integer.
    pub platform: Option<i64>,
    /// `timestamp` (epoch ms), when it was an integer.
    pub timestamp_ms: Option<u64>,
    /// `messageBody` as JSON text: the string's content when it came as a
    /// JSON string, the object's text when it came as an object.
    pub body: String,
}

/// Why a request is not a PandaPon callback (answered with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a PandaPon callback: {0}")]
pub struct CallbackParseError(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCallback {
    #[serde(default)]
    message_type: Option<Box<RawValue>>,
    #[serde(default)]
    message_body: Option<Box<RawValue>>,
    #[serde(default)]
    message_platform: Option<Box<RawValue>>,
    #[serde(default)]
    timestamp: Option<Box<RawValue>>,
}

fn raw_int<T: std::str::FromStr>(raw: &Option<Box<RawValue>>) -> Option<T> {
    let text = crate::json::raw_to_text(raw.as_ref()?.get()).ok()??;
    text.trim().parse().ok()
}

/// Parse a callback request body. Never panics.
pub fn parse_callback(body: &[u8]) -> std::result::Result<CallbackMessage, CallbackParseError> {
    let text =
        std::str::from_utf8(body).map_err(|_| CallbackParseError("body is not UTF-8".into()))?;
    if !text.trim_start().starts_with('{') {
        return Err(CallbackParseError("body is not a JSON object".into()));
    }
    let wire: WireCallback = serde_json::from_str(text)
        .map_err(|e| CallbackParseError(format!("body is not a JSON object: {e}")))?;
    let message_type = wire
        .message_type
        .as_ref()
        .and_then(|r| crate::json::raw_to_text(r.get()).ok().flatten())
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| CallbackParseError("messageType is missing or empty".into()))?;
    let body = match &wire.message_body {
        None => String::new(),
        Some(raw) => {
            let t = raw.get().trim();
            if t.starts_with('"') {
                serde_json::from_str::<String>(t)
                    .map_err(|e| CallbackParseError(format!("messageBody: {e}")))?
            } else if t == "null" {
                String::new()
            } else {
                t.to_owned()
            }
        }
    };
    Ok(CallbackMessage {
        message_type,
        platform: raw_int(&wire.message_platform),
        timestamp_ms: raw_int(&wire.timestamp),
        body,
    })
}

/// What a callback means for rescind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallbackEvent {
    /// A refund's status changed.
    Refund {
        /// The order.
        order: OrderRef,
        /// The refund.
        refund_id: RefundId,
        /// Its new status.
        status: RefundStatus,
    },
    /// An order's status changed. `status` is `None` when the word alone does
    /// not say which rescind state it is (a paid-family status without the
    /// refund it may have): such news is stored but not delivered.
    Order {
        /// The order.
        order: OrderRef,
        /// The mapped status, when unambiguous.
        status: Option<OrderStatus>,
        /// The upstream word.
        upstream: String,
    },
    /// A price change: stored, nothing for rescind to do.
    PriceChange {
        /// The order, when the body names it.
        order_id: Option<String>,
    },
    /// A `messageType` rescind does not know.
    Unknown {
        /// The type.
        message_type: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundBody {
    #[serde(deserialize_with = "exact_req")]
    order_id: String,
    #[serde(deserialize_with = "exact_req")]
    refund_id: String,
    refund_status: String,
    #[serde(default)]
    seller_refuse_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderBody {
    #[serde(deserialize_with = "exact_req")]
    order_id: String,
    status: String,
    #[serde(default, deserialize_with = "exact_opt")]
    refund_id: Option<String>,
    #[serde(default)]
    refund_status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PriceBody {
    #[serde(default, deserialize_with = "exact_opt")]
    order_id: Option<String>,
}

impl CallbackMessage {
    fn platform(&self) -> std::result::Result<Platform, String> {
        self.platform.and_then(Platform::from_code).ok_or_else(|| {
            format!(
                "unknown messagePlatform {:?} (0 Taobao, 1 1688)",
                self.platform
            )
        })
    }

    fn body_as<T: serde::de::DeserializeOwned>(&self) -> std::result::Result<T, String> {
        serde_json::from_str(&self.body).map_err(|e| {
            format!(
                "{} messageBody {}: {e}",
                self.message_type,
                clip(&self.body)
            )
        })
    }

    /// What the message means. An error says why it cannot be interpreted
    /// (unknown platform, unknown status word, missing field).
    pub fn interpret(&self) -> std::result::Result<CallbackEvent, String> {
        match self.message_type.as_str() {
            REFUND_STATUS_CHANGE => {
                let p = self.platform()?;
                let b: RefundBody = self.body_as()?;
                let state = refund_state(p, &b.refund_status, b.seller_refuse_reason)
                    .map_err(|e| e.to_string())?;
                Ok(CallbackEvent::Refund {
                    order: OrderRef::new(p.channel(), b.order_id),
                    refund_id: RefundId(b.refund_id),
                    status: RefundStatus {
                        state,
                        upstream: b.refund_status,
                    },
                })
            }
            ORDER_STATUS_CHANGE => {
                let p = self.platform()?;
                let b: OrderBody = self.body_as()?;
                let word = order_word(p, &b.status).map_err(|e| e.to_string())?;
                let state = match (&b.refund_id, word) {
                    (Some(id), _) => Some(
                        order_state(p, &b.status, Some((id, b.refund_status.as_deref())))
                            .map_err(|e| e.to_string())?,
                    ),
                    (None, OrderWord::PendingPay) => Some(OrderState::PendingPay),
                    (None, OrderWord::Cancelled) => Some(OrderState::Cancelled),
                    (None, OrderWord::Finished) => Some(OrderState::Paid),
                    // Paid or Refunding? Refunded or Cancelled? The word alone does not say.
                    (None, OrderWord::Paid | OrderWord::Refunded | OrderWord::Terminated) => None,
                };
                Ok(CallbackEvent::Order {
                    order: OrderRef::new(p.channel(), b.order_id),
                    status: state.map(|state| OrderStatus {
                        state,
                        upstream: b.status.clone(),
                    }),
                    upstream: b.status,
                })
            }
            ORDER_PRICE_CHANGE => Ok(CallbackEvent::PriceChange {
                order_id: self.body_as::<PriceBody>().ok().and_then(|b| b.order_id),
            }),
            other => Ok(CallbackEvent::Unknown {
                message_type: other.to_owned(),
            }),
        }
    }

    /// The idempotency key: what identifies this message across re-pushes.
    ///
    /// Known status messages are keyed by type, platform and their status
    /// fields (`orderId`, `refundId`, the status word), so a re-push is a
    /// duplicate even if its timestamp, field order or body encoding (string
    /// vs object) changed. Other messages are keyed by type, platform and the
    /// canonical form of the body (keys sorted). The timestamp is never part of it.
    pub fn key(&self) -> String {
        let semantic = match self.message_type.as_str() {
            REFUND_STATUS_CHANGE => self.body_as::<RefundBody>().ok().map(|b| {
                format!(
                    "{}\u{1f}{}\u{1f}{}",
                    b.order_id, b.refund_id, b.refund_status
                )
            }),
            ORDER_STATUS_CHANGE => self.body_as::<OrderBody>().ok().map(|b| {
                format!(
                    "{}\u{1f}{}\u{1f}{}\u{1f}{}",
                    b.order_id,
                    b.status,
                    b.refund_id.unwrap_or_default(),
                    b.refund_status.unwrap_or_default()
                )
            }),
            _ => None,
        };
        let content = semantic.unwrap_or_else(|| canonical_json(&self.body));
        let mut h = Md5::new();
        h.update(self.message_type.as_bytes());
        h.update([0x1f]);
        h.update(
            self.platform
                .map(|p| p.to_string())
                .unwrap_or_default()
                .as_bytes(),
        );
        h.update([0x1f]);
        h.update(content.as_bytes());
        hex::encode(h.finalize())
    }
}

/// The body with object keys sorted, or the text itself when it is not JSON.
fn canonical_json(text: &str) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(*k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            serde_json::Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => {
            let mut out = String::new();
            write(&v, &mut out);
            out
        }
        Err(_) => text.to_owned(),
    }
}

/// A callback as stored: its key, when it came, and the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCallback {
    /// Format version of the stored record (1).
    pub v: u16,
    /// The idempotency key ([`CallbackMessage::key`]).
    pub key: String,
    /// When the receiver got it (ms since the epoch, receiver's clock).
    pub received_at_ms: u64,
    /// The message.
    pub message: CallbackMessage,
}

/// The stored-record format version this build writes and reads.
pub const CALLBACK_RECORD_VERSION: u16 = 1;

/// Whether an append stored something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Stored (durably, for a durable store) for the first time.
    New,
    /// A message with the same key was already stored; nothing written.
    Duplicate,
}

/// Where received callbacks are kept. `append` must be durable when it
/// returns `Ok(New)` (the receiver answers 200 only after it returns), and
/// must be idempotent by key.
#[async_trait]
pub trait CallbackStore: Send + Sync + 'static {
    /// Store `rec` unless its key is already stored. [`Error::StoreFull`]
    /// means nothing was stored because the store is at its size bound (the
    /// receiver answers 503); any other error, that the append failed and
    /// left nothing behind (the receiver answers 500).
    async fn append(&self, rec: &StoredCallback) -> Result<Appended>;
    /// Every stored record, in the order stored.
    async fn load_all(&self) -> Result<Vec<StoredCallback>>;
    /// Drop the records received before `cutoff_ms` (receiver's clock) for
    /// which `keep` answers false; keep everything else, in order. A dropped
    /// key is forgotten by the dedup index (a later re-push of it is stored
    /// again, and is harmless). The default keeps everything.
    async fn compact(
        &self,
        cutoff_ms: u64,
        keep: &(dyn for<'r> Fn(&'r StoredCallback) -> bool + Send + Sync),
    ) -> Result<CompactReport> {
        let _ = (cutoff_ms, keep);
        Ok(CompactReport::default())
    }
    /// Whether the store can take an append now; the error says why not.
    /// Cheap, for health checks. The default is always healthy.
    fn probe(&self) -> Result<()> {
        Ok(())
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Records kept.
    pub kept: usize,
    /// Records dropped (old, and no longer needed).
    pub dropped: usize,
    /// Unreadable lines removed from the file.
    pub unreadable_dropped: usize,
    /// Store size before, in bytes.
    pub bytes_before: u64,
    /// Store size after, in bytes.
    pub bytes_after: u64,
}

/// An in-memory store (tests; no durability).
#[derive(Debug, Default)]
pub struct MemoryCallbackStore {
    inner: Mutex<(HashSet<String>, Vec<StoredCallback>)>,
}

impl MemoryCallbackStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CallbackStore for MemoryCallbackStore {
    async fn append(&self, rec: &StoredCallback) -> Result<Appended> {
        let mut g = lock(&self.inner);
        if !g.0.insert(rec.key.clone()) {
            return Ok(Appended::Duplicate);
        }
        g.1.push(rec.clone());
        Ok(Appended::New)
    }
    async fn load_all(&self) -> Result<Vec<StoredCallback>> {
        Ok(lock(&self.inner).1.clone())
    }
    async fn compact(
        &self,
        cutoff_ms: u64,
        keep: &(dyn for<'r> Fn(&'r StoredCallback) -> bool + Send + Sync),
    ) -> Result<CompactReport> {
        let mut g = lock(&self.inner);
        let before = g.1.len();
        let (kept, dropped): (Vec<_>, Vec<_>) = std::mem::take(&mut g.1)
            .into_iter()
            .partition(|r| r.received_at_ms >= cutoff_ms || keep(r));
        for r in &dropped {
            g.0.remove(&r.key);
        }
        g.1 = kept;
        Ok(CompactReport {
            kept: g.1.len(),
            dropped: before - g.1.len(),
            ..CompactReport::default()
        })
    }
}

mod file_store;
pub use file_store::{
    FileCallbackStore, FileStoreOptions, OpenReport, SkippedLine, DEFAULT_CALLBACK_STORE_MAX_BYTES,
};

/// The names the PandaPon channels are registered under, per platform: the
/// receiver delivers a platform's news to the sagas on orders of these
/// channels. The default is the crate's names ([`crate::TAOBAO_CHANNEL`],
/// [`crate::ALIBABA_CHANNEL`]); a deployment that registers the channels
/// under other names (`[channels.pp-tb]`) must say so, or those sagas never
/// hear their callbacks.
///
/// ```
/// use rescind_channel_pandapon::callback::CallbackChannels;
/// use rescind_channel_pandapon::status::Platform;
///
/// let names = CallbackChannels::none()
///     .with(Platform::Taobao, "pp-tb")
///     .with(Platform::Alibaba, "pp-1688");
/// assert_eq!(names.names(Platform::Taobao)[0].as_str(), "pp-tb");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackChannels {
    taobao: Vec<ChannelName>,
    alibaba: Vec<ChannelName>,
}

impl Default for CallbackChannels {
    fn default() -> Self {
        CallbackChannels::none()
            .with(Platform::Taobao, crate::TAOBAO_CHANNEL)
            .with(Platform::Alibaba, crate::ALIBABA_CHANNEL)
    }
}

impl CallbackChannels {
    /// No channel for either platform (news is stored, not delivered).
    pub fn none() -> Self {
        CallbackChannels {
            taobao: Vec::new(),
            alibaba: Vec::new(),
        }
    }

    /// Also deliver `platform`'s news to orders on channel `name` (several
    /// names per platform are allowed: each gets the news).
    pub fn with(mut self, platform: Platform, name: impl Into<ChannelName>) -> Self {
        let name = name.into();
        let v = match platform {
            Platform::Taobao => &mut self.taobao,
            Platform::Alibaba => &mut self.alibaba,
        };
        if !v.contains(&name) {
            v.push(name);
        }
        self
    }

    /// The channel names registered for `platform`.
    pub fn names(&self, platform: Platform) -> &[ChannelName] {
        match platform {
            Platform::Taobao => &self.taobao,
            Platform::Alibaba => &self.alibaba,
        }
    }
}

/// Where interpreted callbacks go: the engine, which wakes the sagas waiting
/// on the order. Returns how many sagas received the news.
pub trait CallbackSink: Send + Sync + 'static {
    /// Hand one observation over.
    fn deliver(&self, obs: Observation) -> usize;
}

impl CallbackSink for rescind_core::Engine {
    fn deliver(&self, obs: Observation) -> usize {
        rescind_core::Engine::deliver(self, obs)
    }
}

/// Counters of what the receiver did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CallbackStats {
    /// Requests refused before anything was stored: unsigned, badly signed,
    /// or with a timestamp outside the window (answered 401).
    pub refused: u64,
    /// Requests that parsed as callbacks.
    pub received: u64,
    /// Of those, stored for the first time.
    pub stored: u64,
    /// Of those, duplicates (already stored; answered 200, not processed again).
    pub duplicates: u64,
    /// Requests answered 400 (not a callback).
    pub malformed: u64,
    /// Requests answered 500 because the store failed (PandaPon re-pushes).
    pub store_errors: u64,
    /// Requests answered 503 because the store is at its size bound
    /// (nothing stored; PandaPon re-pushes).
    pub store_full: u64,
    /// Observations handed to the sink.
    pub delivered: u64,
    /// Sagas that received them (sum of the sink's answers).
    pub saga_wakeups: u64,
    /// News older than a final state already seen (not delivered).
    pub stale: u64,
    /// Known news with nothing to deliver (price changes, ambiguous order words).
    pub not_delivered: u64,
    /// Messages of an unknown `messageType` (stored and reported).
    pub unknown_type: u64,
    /// Known messages that could not be interpreted (stored and reported).
    pub unmappable: u64,
}

/// A stored message the receiver could not act on, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    /// The stored message.
    pub stored: StoredCallback,
    /// Why it was reported.
    pub reason: String,
    /// True for an unknown `messageType`.
    pub unknown_type: bool,
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    received: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    store_errors: AtomicU64,
    store_full: AtomicU64,
    delivered: AtomicU64,
    saga_wakeups: AtomicU64,
    stale: AtomicU64,
    not_delivered: AtomicU64,
    unknown_type: AtomicU64,
    unmappable: AtomicU64,
    /// Messages by type ([`MESSAGE_TYPE_LABELS`]) and verdict ([`MESSAGE_VERDICTS`]).
    by_type: [[AtomicU64; MESSAGE_VERDICTS.len()]; MESSAGE_TYPE_LABELS.len()],
}

/// The message types counted apart in [`CallbackReceiver::messages_by_type`];
/// every other `messageType` is counted as `other`, so a sender cannot grow
/// the number of series.
pub const MESSAGE_TYPE_LABELS: [&str; 3] = [REFUND_STATUS_CHANGE, ORDER_STATUS_CHANGE, "other"];
/// What became of a parsed message: stored, duplicate, store_error, store_full.
pub const MESSAGE_VERDICTS: [&str; 4] = ["stored", "duplicate", "store_error", "store_full"];

impl Counters {
    fn by_type(&self, message_type: &str, verdict: usize) {
        let t = MESSAGE_TYPE_LABELS
            .iter()
            .position(|t| *t == message_type)
            .unwrap_or(MESSAGE_TYPE_LABELS.len() - 1);
        if let Some(c) = self.by_type.get(t).and_then(|row| row.get(verdict)) {
            bump(c);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    store: Arc<dyn CallbackStore>,
    sink: Arc<dyn CallbackSink>,
    clock: Arc<dyn Clock>,
    path: String,
    channels: CallbackChannels,
    auth: Option<CallbackAuth>,
    counters: Counters,
    reported: Mutex<VecDeque<Reported>>,
    /// Final states seen, per (channel, refund id) and (channel, order id).
    final_refunds: Mutex<HashMap<(String, String), RefundState>>,
    final_orders: Mutex<HashMap<(String, String), OrderState>>,
    pending: AtomicUsize,
    settled: Notify,
}

/// The callback receiver. Cheap to clone; clones share everything.
///
/// ```
/// use rescind_channel_pandapon::callback::{CallbackReceiver, MemoryCallbackStore};
/// use rescind_core::{Engine, MemoryJournal};
/// use std::sync::Arc;
///
/// let engine = Engine::builder(Arc::new(MemoryJournal::new())).build();
/// let receiver = CallbackReceiver::new(Arc::new(MemoryCallbackStore::new()), Arc::new(engine));
/// let app: axum::Router = receiver.router(); // POST /callbacks/pandapon
/// # let _ = app;
/// ```
#[derive(Clone)]
pub struct CallbackReceiver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CallbackReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackReceiver")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl CallbackReceiver {
    /// A receiver storing into `store` and delivering to `sink`, at
    /// [`DEFAULT_CALLBACK_PATH`], on the system clock.
    pub fn new(store: Arc<dyn CallbackStore>, sink: Arc<dyn CallbackSink>) -> Self {
        CallbackReceiver {
            inner: Arc::new(Inner {
                store,
                sink,
                clock: Arc::new(TokioClock::system()),
                path: DEFAULT_CALLBACK_PATH.to_owned(),
                channels: CallbackChannels::default(),
                auth: None,
                counters: Counters::default(),
                reported: Mutex::new(VecDeque::new()),
                final_refunds: Mutex::new(HashMap::new()),
                final_orders: Mutex::new(HashMap::new()),
                pending: AtomicUsize::new(0),
                settled: Notify::new(),
            }),
        }
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                f(&mut inner);
                CallbackReceiver {
                    inner: Arc::new(inner),
                }
            }
            // Already shared (cloned): settings are fixed; keep it as is.
            Err(inner) => CallbackReceiver { inner },
        }
    }

    /// Listen on `path` instead of [`DEFAULT_CALLBACK_PATH`] (before cloning).
    pub fn with_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.rebuild(|i| i.path = path)
    }

    /// Stamp `received_at_ms` from `clock` (before cloning).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        self.rebuild(|i| i.clock = clock)
    }

    /// Deliver each platform's news to the channels registered under these
    /// names instead of the default `pandapon-taobao` / `pandapon-1688`
    /// (before cloning).
    pub fn with_channels(self, channels: CallbackChannels) -> Self {
        self.rebuild(|i| i.channels = channels)
    }

    /// Authenticate pushes arriving over HTTP (before cloning): the
    /// `Authorization` header must be the message signature and the message's
    /// timestamp within the window; anything else is answered 401 and not
    /// stored. Without it, the HTTP route accepts unsigned pushes — a
    /// worker configured with PandaPon channels always sets it.
    pub fn with_auth(self, auth: CallbackAuth) -> Self {
        self.rebuild(|i| i.auth = Some(auth))
    }

    /// The channel names news is delivered to.
    pub fn channels(&self) -> &CallbackChannels {
        &self.inner.channels
    }

    /// Whether the store can take a callback now (see
    /// [`CallbackStore::probe`]): `Ok`, or a typed error saying why not —
    /// [`Error::StoreWriteFailed`] (the last append failed; it was rolled
    /// back), [`Error::StoreFull`] (at its size bound; callbacks get 503),
    /// or [`Error::Store`] (the file is gone or unreadable). Cheap; meant
    /// for the worker's `/healthz`.
    pub fn probe(&self) -> Result<()> {
        self.inner.store.probe()
    }

    /// The orders (under the registered channel names) a stored message is
    /// news about; empty for messages about no order.
    pub fn orders_of(&self, stored: &StoredCallback) -> Vec<OrderRef> {
        let order = match stored.message.interpret() {
            Ok(CallbackEvent::Refund { order, .. }) | Ok(CallbackEvent::Order { order, .. }) => {
                order
            }
            _ => return Vec::new(),
        };
        match stored.message.platform.and_then(Platform::from_code) {
            Some(p) => self
                .inner
                .channels
                .names(p)
                .iter()
                .map(|name| OrderRef {
                    channel: name.clone(),
                    order_id: order.order_id.clone(),
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Compact the store: drop the messages received more than
    /// `retention_ms` before `now_ms` that no unfinished saga can still
    /// need, that is whose orders `live` does not know (it answers whether
    /// an unfinished saga runs on the order; messages about no order —
    /// unknown types, unmappable news — go once past retention). Safe while
    /// callbacks arrive. Call it periodically (the worker does, every
    /// `compact_interval_ms`).
    pub async fn compact(
        &self,
        now_ms: u64,
        retention_ms: u64,
        live: &(dyn for<'r> Fn(&'r OrderRef) -> bool + Send + Sync),
    ) -> Result<CompactReport> {
        let cutoff = now_ms.saturating_sub(retention_ms);
        let keep = |r: &StoredCallback| self.orders_of(r).iter().any(live);
        self.inner.store.compact(cutoff, &keep).await
    }

    /// The path the router serves.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The axum router: `POST <path>`. Merge it into your app or serve it alone.
    /// (Feature `axum`, on by default.)
    #[cfg(feature = "axum")]
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.inner.path, post(handle))
            .layer(DefaultBodyLimit::max(CALLBACK_BODY_BYTES_MAX))
            .with_state(self.clone())
    }

    /// Handle one HTTP push: check its signature and timestamp (when
    /// [`Self::with_auth`] was set), then [`Self::receive`] it. A refused
    /// push is answered 401 and nothing is stored.
    pub async fn receive_signed(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        if let Some(auth) = &self.inner.auth {
            let now_ms = self.inner.clock.now_ms();
            if let Err(why) = auth.check(authorization, body, now_ms) {
                bump(&self.inner.counters.refused);
                tracing::warn!(reason = %why, "pandapon callback refused");
                return (
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"code": 401, "msg": why.to_string()}),
                );
            }
        }
        self.receive(body).await
    }

    /// Handle one request body already authenticated (or from an in-process
    /// caller): parse, store durably, answer; processing is spawned. Returns
    /// the HTTP status and the JSON body to answer with.
    pub async fn receive(&self, body: &[u8]) -> (StatusCode, serde_json::Value) {
        let c = &self.inner.counters;
        let msg = match parse_callback(body) {
            Ok(m) => m,
            Err(e) => {
                bump(&c.malformed);
                tracing::warn!(error = %e, "pandapon callback rejected");
                return (
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"code": 400, "msg": e.to_string()}),
                );
            }
        };
        bump(&c.received);
        let rec = StoredCallback {
            v: CALLBACK_RECORD_VERSION,
            key: msg.key(),
            received_at_ms: self.inner.clock.now_ms(),
            message: msg,
        };
        match self.inner.store.append(&rec).await {
            Ok(Appended::Duplicate) => {
                bump(&c.duplicates);
                c.by_type(&rec.message.message_type, 1);
                tracing::debug!(key = %rec.key, message_type = %rec.message.message_type, "pandapon callback duplicate");
                (
                    StatusCode::OK,
                    serde_json::json!({"code": 200, "msg": "duplicate"}),
                )
            }
            Ok(Appended::New) => {
                bump(&c.stored);
                c.by_type(&rec.message.message_type, 0);
                self.inner.pending.fetch_add(1, Ordering::AcqRel);
                let me = self.clone();
                tokio::spawn(async move {
                    me.process(&rec);
                    if me.inner.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                        me.inner.settled.notify_waiters();
                    }
                });
                (
                    StatusCode::OK,
                    serde_json::json!({"code": 200, "msg": "success"}),
                )
            }
            Err(e @ Error::StoreFull { .. }) => {
                bump(&c.store_full);
                c.by_type(&rec.message.message_type, 3);
                tracing::error!(error = %e, "pandapon callback store is full; answering 503 so it is re-pushed (compaction or a larger callback_store_max_mb frees room)");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"code": 503, "msg": "callback store full"}),
                )
            }
            Err(e) => {
                bump(&c.store_errors);
                c.by_type(&rec.message.message_type, 2);
                tracing::error!(error = %e, "pandapon callback could not be stored; answering 500 so it is re-pushed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    serde_json::json!({"code": 500, "msg": "callback not stored"}),
                )
            }
        }
    }

    /// Wait until every spawned processing task has finished.
    pub async fn settled(&self) {
        loop {
            let notified = self.inner.settled.notified();
            if self.inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Process every stored message again, in stored order (after a restart,
    /// once the engine has recovered). Returns how many were processed.
    pub async fn replay(&self) -> Result<usize> {
        let all = self.inner.store.load_all().await?;
        for rec in &all {
            self.process(rec);
        }
        Ok(all.len())
    }

    fn report(&self, stored: &StoredCallback, reason: String, unknown_type: bool) {
        tracing::warn!(
            key = %stored.key,
            message_type = %clip(&stored.message.message_type),
            reason = %reason,
            "pandapon callback stored but not acted on"
        );
        let mut r = lock(&self.inner.reported);
        if r.len() >= REPORTED_KEPT_MAX {
            r.pop_front();
        }
        r.push_back(Reported {
            stored: stored.clone(),
            reason,
            unknown_type,
        });
    }

    /// Deliver `obs` (named with the crate's default channel) once per
    /// channel registered for `platform`.
    fn deliver(&self, platform: Option<Platform>, obs: Observation) {
        let c = &self.inner.counters;
        let names = platform
            .map(|p| self.inner.channels.names(p))
            .unwrap_or(&[]);
        if names.is_empty() {
            tracing::debug!(
                ?platform,
                "pandapon callback: no channel registered for its platform"
            );
            bump(&c.not_delivered);
            return;
        }
        for name in names {
            let mut obs = obs.clone();
            match &mut obs {
                Observation::Order { order, .. } | Observation::Refund { order, .. } => {
                    order.channel = name.clone()
                }
            }
            let n = self.inner.sink.deliver(obs);
            bump(&c.delivered);
            c.saga_wakeups.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn process(&self, stored: &StoredCallback) {
        let c = &self.inner.counters;
        let platform = stored.message.platform.and_then(Platform::from_code);
        match stored.message.interpret() {
            Err(reason) => {
                bump(&c.unmappable);
                self.report(stored, reason, false);
            }
            Ok(CallbackEvent::Unknown { message_type }) => {
                bump(&c.unknown_type);
                self.report(
                    stored,
                    format!("unknown messageType {:?}", clip(&message_type)),
                    true,
                );
            }
            Ok(CallbackEvent::PriceChange { .. })
            | Ok(CallbackEvent::Order { status: None, .. }) => {
                bump(&c.not_delivered);
            }
            Ok(CallbackEvent::Refund {
                order,
                refund_id,
                status,
            }) => {
                let k = (order.channel.0.clone(), refund_id.0.clone());
                {
                    let mut finals = lock(&self.inner.final_refunds);
                    match finals.get(&k) {
                        Some(seen) if !status.state.is_terminal() => {
                            tracing::debug!(refund = %refund_id, seen = %seen, news = %status.state, "stale refund news");
                            bump(&c.stale);
                            return;
                        }
                        Some(seen) if *seen != status.state => {
                            tracing::warn!(refund = %refund_id, seen = %seen, news = %status.state, "refund reported in two different final states");
                        }
                        _ => {}
                    }
                    if status.state.is_terminal() {
                        finals.insert(k, status.state.clone());
                    }
                }
                self.deliver(
                    platform,
                    Observation::Refund {
                        order,
                        refund_id,
                        status,
                    },
                );
            }
            Ok(CallbackEvent::Order {
                order,
                status: Some(status),
                ..
            }) => {
                let k = (order.channel.0.clone(), order.order_id.0.clone());
                {
                    let mut finals = lock(&self.inner.final_orders);
                    if finals.contains_key(&k) && !status.state.is_terminal() {
                        bump(&c.stale);
                        return;
                    }
                    if status.state.is_terminal() {
                        finals.insert(k, status.state.clone());
                    }
                }
                self.deliver(platform, Observation::Order { order, status });
            }
        }
    }

    /// What the receiver did so far.
    pub fn stats(&self) -> CallbackStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallbackStats {
            refused: g(&c.refused),
            received: g(&c.received),
            stored: g(&c.stored),
            duplicates: g(&c.duplicates),
            malformed: g(&c.malformed),
            store_errors: g(&c.store_errors),
            store_full: g(&c.store_full),
            delivered: g(&c.delivered),
            saga_wakeups: g(&c.saga_wakeups),
            stale: g(&c.stale),
            not_delivered: g(&c.not_delivered),
            unknown_type: g(&c.unknown_type),
            unmappable: g(&c.unmappable),
        }
    }

    /// Parsed messages by type and verdict: `(type, verdict, count)` for
    /// every pair of [`MESSAGE_TYPE_LABELS`] and [`MESSAGE_VERDICTS`].
    pub fn messages_by_type(&self) -> Vec<(&'static str, &'static str, u64)> {
        let c = &self.inner.counters;
        let mut out = Vec::with_capacity(MESSAGE_TYPE_LABELS.len() * MESSAGE_VERDICTS.len());
        for (t, row) in MESSAGE_TYPE_LABELS.iter().zip(c.by_type.iter()) {
            for (v, n) in MESSAGE_VERDICTS.iter().zip(row.iter()) {
                out.push((*t, *v, n.load(Ordering::Relaxed)));
            }
        }
        out
    }

    /// Messages stored but not acted on (unknown type, unmappable), most
    /// recent [`REPORTED_KEPT_MAX`].
    pub fn reported(&self) -> Vec<Reported> {
        lock(&self.inner.reported).iter().cloned().collect()
    }

    /// Messages of an unknown `messageType` among [`Self::reported`].
    pub fn unknown(&self) -> Vec<StoredCallback> {
        lock(&self.inner.reported)
            .iter()
            .filter(|r| r.unknown_type)
            .map(|r| r.stored.clone())
            .collect()
    }
}

#[cfg(feature = "axum")]
async fn handle(
    State(rx): State<CallbackReceiver>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (status, json) = rx.receive_signed(authorization, &body).await;
    (status, axum::Json(json)).into_response()
}

/// The default window a push's `timestamp` must fall in: ±10 minutes.
pub const CALLBACK_WINDOW_MS_DEFAULT: u64 = 10 * 60_000;

/// How pushed messages are authenticated: PandaPon signs each push with
/// `Authorization: hex(HMAC-SHA256(base, AccessSecret))` (base: the raw
/// body by default, pluggable — partly assumed, see
/// `docs/channels/pandapon.md`) and stamps it with `timestamp` (epoch ms).
/// Several secrets may be given (one per PandaPon app, or old and new while
/// rotating); a push signed with any of them is accepted.
#[derive(Clone)]
pub struct CallbackAuth {
    secrets: Vec<rescind_wire::sign::Secret>,
    base: Arc<dyn rescind_wire::sign::MessageSignatureBase>,
    window_ms: u64,
}

impl std::fmt::Debug for CallbackAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackAuth")
            .field("secrets", &self.secrets.len())
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// Why a push was refused (never echoes the signature or a secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// No `Authorization` header.
    #[error("unsigned: the Authorization header is missing")]
    Unsigned,
    /// The signature matches none of the secrets.
    #[error("bad signature")]
    BadSignature,
    /// No readable integer `timestamp` in the message.
    #[error("no timestamp in the message")]
    NoTimestamp,
    /// The timestamp is outside the window.
    #[error("timestamp {at_ms} is {off_ms} ms away from now; the window is ±{window_ms} ms")]
    Stale {
        /// The message's timestamp.
        at_ms: u64,
        /// How far from now.
        off_ms: u64,
        /// The window.
        window_ms: u64,
    },
}

impl CallbackAuth {
    /// Accept pushes signed with any of `secrets`, base = raw body, window ±10 min.
    pub fn new(secrets: Vec<rescind_wire::sign::Secret>) -> Self {
        CallbackAuth {
            secrets,
            base: Arc::new(rescind_wire::sign::RawBodyBase),
            window_ms: CALLBACK_WINDOW_MS_DEFAULT,
        }
    }
    /// Sign over another base.
    pub fn with_base(mut self, base: Arc<dyn rescind_wire::sign::MessageSignatureBase>) -> Self {
        self.base = base;
        self
    }
    /// Accept timestamps within ±`window_ms` of now.
    pub fn with_window_ms(mut self, window_ms: u64) -> Self {
        self.window_ms = window_ms;
        self
    }
    /// Check one push.
    pub fn check(
        &self,
        authorization: Option<&str>,
        body: &[u8],
        now_ms: u64,
    ) -> std::result::Result<(), AuthRefusal> {
        let given = authorization
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or(AuthRefusal::Unsigned)?;
        let base = self.base.base(body);
        let signed = self.secrets.iter().any(|secret| {
            let want = rescind_wire::sign::pandapon_message_signature(&base, secret);
            rescind_wire::sign::signatures_match(&want, given)
        });
        if !signed {
            return Err(AuthRefusal::BadSignature);
        }
        let at_ms = serde_json::from_slice::<TimestampOnly>(body)
            .ok()
            .and_then(|t| t.timestamp)
            .ok_or(AuthRefusal::NoTimestamp)?;
        let off_ms = at_ms.abs_diff(now_ms);
        if off_ms > self.window_ms {
            return Err(AuthRefusal::Stale {
                at_ms,
                off_ms,
                window_ms: self.window_ms,
            });
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct TimestampOnly {
    #[serde(default)]
    timestamp: Option<u64>,
}

#[cfg(test)]
mod tests;
