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
//!    answering — a store failure answers 500 so that PandaPon re-pushes;
//! 3. answers 200 (a duplicate also gets 200, and is not processed again);
//! 4. then processes the message on a task: refund and order status changes
//!    become [`Observation`]s handed to a [`CallbackSink`] (the engine, which
//!    wakes the sagas waiting on them). A status older than a final status
//!    already seen for the same refund/order is recorded as stale and not
//!    delivered. An unknown `messageType` (or an unknown status word) is
//!    stored, counted in [`CallbackStats`], kept in [`CallbackReceiver::reported`]
//!    and logged as a warning — never dropped.
//!
//! After a restart, call [`CallbackReceiver::replay`] once the engine has
//! recovered its sagas: it processes every stored message again (the engine
//! ignores news that does not move a saga, so replay is harmless), covering a
//! crash between "stored" and "processed".

use crate::json::{clip, exact_opt, exact_req};
use crate::status::{order_state, order_word, refund_state, OrderWord, Platform};
use crate::{Error, Result};
use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use md5::{Digest, Md5};
use rescind_core::{
    Clock, Observation, OrderRef, OrderState, OrderStatus, RefundId, RefundState, RefundStatus,
    TokioClock,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
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
    /// Store `rec` unless its key is already stored.
    async fn append(&self, rec: &StoredCallback) -> Result<Appended>;
    /// Every stored record, in the order stored.
    async fn load_all(&self) -> Result<Vec<StoredCallback>>;
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
}

/// A durable store: an append-only file of JSON lines, one per message.
///
/// **Promise**: when `append` returns `Ok(New)`, the line is written and
/// `fdatasync`ed (`File::sync_data`), so it survives a crash and a power loss
/// (as far as the device honours flushes). Appends are serialised. On open,
/// the dedup index is rebuilt from the file; a torn last line (an append that
/// never returned, hence was never acknowledged) is cut off; a bad line
/// anywhere else is a [`Error::StoreCorrupt`] naming file and line.
#[derive(Debug)]
pub struct FileCallbackStore {
    path: PathBuf,
    inner: Arc<Mutex<FileInner>>,
}

#[derive(Debug)]
struct FileInner {
    file: std::fs::File,
    keys: HashSet<String>,
}

impl FileCallbackStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |e: std::io::Error| Error::Store {
            path: path.clone(),
            source: e,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut keys = HashSet::new();
        let mut good_len: u64 = 0;
        let mut reader = std::io::BufReader::new(&mut file);
        let mut line_no = 0usize;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                // Torn tail: an unacknowledged append. Cut it off below.
                tracing::warn!(path = %path.display(), line = line_no, "callback store: cutting off a torn last line");
                break;
            }
            let rec: StoredCallback =
                serde_json::from_slice(&buf[..buf.len() - 1]).map_err(|e| Error::StoreCorrupt {
                    path: path.clone(),
                    line: line_no,
                    detail: e.to_string(),
                })?;
            if rec.v > CALLBACK_RECORD_VERSION {
                return Err(Error::StoreCorrupt {
                    path: path.clone(),
                    line: line_no,
                    detail: format!(
                        "record version {} is newer than {CALLBACK_RECORD_VERSION}",
                        rec.v
                    ),
                });
            }
            keys.insert(rec.key);
            good_len += n as u64;
        }
        drop(reader);
        if file.metadata().map_err(io)?.len() != good_len {
            file.set_len(good_len).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(FileCallbackStore {
            path,
            inner: Arc::new(Mutex::new(FileInner { file, keys })),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl CallbackStore for FileCallbackStore {
    async fn append(&self, rec: &StoredCallback) -> Result<Appended> {
        let mut line = serde_json::to_vec(rec).map_err(|e| Error::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let inner = self.inner.clone();
        let key = rec.key.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock(&inner);
            if g.keys.contains(&key) {
                return Ok(Appended::Duplicate);
            }
            let io = |e: std::io::Error| Error::Store {
                path: path.clone(),
                source: e,
            };
            g.file.write_all(&line).map_err(io)?;
            g.file.sync_data().map_err(io)?;
            g.keys.insert(key);
            Ok(Appended::New)
        })
        .await
        .map_err(|e| Error::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn load_all(&self) -> Result<Vec<StoredCallback>> {
        let text = tokio::fs::read(&self.path)
            .await
            .map_err(|e| Error::Store {
                path: self.path.clone(),
                source: e,
            })?;
        let mut out = Vec::new();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<StoredCallback>(line) {
                Ok(r) => out.push(r),
                // A line being appended right now may be partial: stop there.
                Err(_) if i + 1 == text.split(|b| *b == b'\n').count() => break,
                Err(e) => {
                    return Err(Error::StoreCorrupt {
                        path: self.path.clone(),
                        line: i + 1,
                        detail: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
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
    received: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    malformed: AtomicU64,
    store_errors: AtomicU64,
    delivered: AtomicU64,
    saga_wakeups: AtomicU64,
    stale: AtomicU64,
    not_delivered: AtomicU64,
    unknown_type: AtomicU64,
    unmappable: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    store: Arc<dyn CallbackStore>,
    sink: Arc<dyn CallbackSink>,
    clock: Arc<dyn Clock>,
    path: String,
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

    /// The path the router serves.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The axum router: `POST <path>`. Merge it into your app or serve it alone.
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.inner.path, post(handle))
            .layer(DefaultBodyLimit::max(CALLBACK_BODY_BYTES_MAX))
            .with_state(self.clone())
    }

    /// Handle one request body: parse, store durably, answer; processing is
    /// spawned. Returns the HTTP status and the JSON body to answer with.
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
                tracing::debug!(key = %rec.key, message_type = %rec.message.message_type, "pandapon callback duplicate");
                (
                    StatusCode::OK,
                    serde_json::json!({"code": 200, "msg": "duplicate"}),
                )
            }
            Ok(Appended::New) => {
                bump(&c.stored);
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
            Err(e) => {
                bump(&c.store_errors);
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

    fn deliver(&self, obs: Observation) {
        let c = &self.inner.counters;
        let n = self.inner.sink.deliver(obs);
        bump(&c.delivered);
        c.saga_wakeups.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn process(&self, stored: &StoredCallback) {
        let c = &self.inner.counters;
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
                self.deliver(Observation::Refund {
                    order,
                    refund_id,
                    status,
                });
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
                self.deliver(Observation::Order { order, status });
            }
        }
    }

    /// What the receiver did so far.
    pub fn stats(&self) -> CallbackStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CallbackStats {
            received: g(&c.received),
            stored: g(&c.stored),
            duplicates: g(&c.duplicates),
            malformed: g(&c.malformed),
            store_errors: g(&c.store_errors),
            delivered: g(&c.delivered),
            saga_wakeups: g(&c.saga_wakeups),
            stale: g(&c.stale),
            not_delivered: g(&c.not_delivered),
            unknown_type: g(&c.unknown_type),
            unmappable: g(&c.unmappable),
        }
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

async fn handle(State(rx): State<CallbackReceiver>, body: Bytes) -> Response {
    let (status, json) = rx.receive(&body).await;
    (status, axum::Json(json)).into_response()
}

#[cfg(test)]
mod tests;
