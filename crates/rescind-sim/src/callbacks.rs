//! PandaPon-style message callbacks.
//!
//! Every order-status or refund-status change of a `pandapon-taobao` or
//! `pandapon-1688` order (by a request or a scheduled event) is pushed as
//! `POST <callback_url>` with `{messageType, messageBody, messagePlatform,
//! timestamp}`; `messageBody` is a JSON string holding an object. A push that
//! is not answered 200 within `timeout_ms` is re-pushed after
//! `retry_delay_ms`, up to `attempts_max` attempts in all. Options duplicate
//! messages and shuffle their order, as the real platform may.

use rescind_core::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::book::{Notice, PANDAPON_1688};
use crate::{lock, Sim};

/// How callbacks are pushed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallbackConfig {
    /// Probability that a message is pushed twice.
    pub duplicate_probability: f64,
    /// Each push waits a uniform `0..=reorder_window_ms` first, so messages
    /// close together may arrive out of order. 0: in order of change.
    pub reorder_window_ms: u64,
    /// Delay before a re-push (the real platform waits 30 minutes).
    pub retry_delay_ms: u64,
    /// Attempts per message, the first included.
    pub attempts_max: u32,
    /// The receiver must answer 200 within this, ms.
    pub timeout_ms: u64,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            duplicate_probability: 0.0,
            reorder_window_ms: 0,
            retry_delay_ms: 1_000,
            attempts_max: 5,
            timeout_ms: 1_000,
        }
    }
}

/// One push attempt, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Message number (duplicates share it).
    pub message_seq: u64,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Whether this copy is a deliberate duplicate.
    pub duplicate: bool,
    /// `ORDER_STATUS_CHANGE` or `REFUND_STATUS_CHANGE`.
    pub message_type: String,
    /// The JSON that was posted.
    pub payload: String,
    /// When the attempt started, epoch ms.
    pub at_ms: u64,
    /// HTTP status, when one came back.
    pub status: Option<u16>,
    /// Whether the receiver acknowledged (200 in time).
    pub delivered: bool,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Receives callback pushes in-process instead of over HTTP (deterministic
/// simulation). Set with [`Sim::set_callback_sink`]; it takes precedence over
/// the callback URL. Duplicates, reordering and re-pushes work as over HTTP.
#[async_trait::async_trait]
pub trait CallbackSink: Send + Sync + 'static {
    /// Deliver one push body; return the HTTP status the receiver answered
    /// (200 acknowledges; anything else is re-pushed).
    async fn push(&self, payload: &str) -> u16;
}

pub(crate) fn dispatch(sim: &Sim, notices: Vec<Notice>) {
    let sink = lock(&sim.inner.callback_sink).clone();
    let url = lock(&sim.inner.callback_url).clone();
    if sink.is_none() && url.is_none() {
        return;
    }
    let url = url.unwrap_or_default();
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "callbacks need a tokio runtime; {} message(s) not pushed",
            notices.len()
        );
        return;
    };
    let cfg = sim.inner.cfg.callbacks.clone();
    for n in notices {
        let seq = sim.inner.push_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let platform = if n.channel == PANDAPON_1688 { 1 } else { 0 };
        let payload = json!({
            "messageType": n.message_type,
            "messageBody": n.body.to_string(),
            "messagePlatform": platform,
            "timestamp": sim.now_ms(),
        })
        .to_string();
        let unit = (sim.inner.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let copies = if unit < cfg.duplicate_probability {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delay = sim.inner.rng.below(cfg.reorder_window_ms.saturating_add(1));
            let (sim, url, payload, cfg) = (sim.clone(), url.clone(), payload.clone(), cfg.clone());
            let sink = sink.clone();
            let message_type = n.message_type.to_owned();
            handle.spawn(async move {
                if delay > 0 {
                    sim.inner
                        .cfg
                        .clock
                        .sleep(Duration::from_millis(delay))
                        .await;
                }
                let to = match &sink {
                    Some(s) => Target::Sink(s.as_ref()),
                    None => Target::Url(&url),
                };
                push(&sim, to, &payload, &message_type, seq, copy > 0, &cfg).await;
            });
        }
    }
}

enum Target<'a> {
    Url(&'a str),
    Sink(&'a dyn CallbackSink),
}

async fn push(
    sim: &Sim,
    to: Target<'_>,
    payload: &str,
    message_type: &str,
    seq: u64,
    duplicate: bool,
    cfg: &CallbackConfig,
) {
    for attempt in 1..=cfg.attempts_max.max(1) {
        let at_ms = sim.now_ms();
        let url = match to {
            Target::Url(url) => url,
            Target::Sink(sink) => {
                let status = sink.push(payload).await;
                let delivered = status == 200;
                lock(&sim.inner.pushes).push(PushRecord {
                    message_seq: seq,
                    attempt,
                    duplicate,
                    message_type: message_type.to_owned(),
                    payload: payload.to_owned(),
                    at_ms,
                    status: Some(status),
                    delivered,
                    error: None,
                });
                if delivered {
                    return;
                }
                if attempt < cfg.attempts_max {
                    sim.inner
                        .cfg
                        .clock
                        .sleep(Duration::from_millis(cfg.retry_delay_ms))
                        .await;
                }
                continue;
            }
        };
        let client = sim
            .inner
            .http
            .get_or_init(|| reqwest::Client::builder().build().unwrap_or_default());
        // Signed as PandaPon's message service signs pushes (assumed base:
        // the raw body; see rescind_wire::sign::MessageSignatureBase).
        let signature = rescind_wire::sign::pandapon_message_signature(
            payload.as_bytes(),
            &sim.config().pandapon_secret,
        );
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .header("authorization", signature)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .body(payload.to_owned())
            .send()
            .await;
        let (status, error) = match r {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(e) if e.is_timeout() => (
                None,
                Some(format!("no answer within {} ms", cfg.timeout_ms)),
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        let delivered = status == Some(200);
        lock(&sim.inner.pushes).push(PushRecord {
            message_seq: seq,
            attempt,
            duplicate,
            message_type: message_type.to_owned(),
            payload: payload.to_owned(),
            at_ms,
            status,
            delivered,
            error,
        });
        if delivered {
            return;
        }
        if attempt < cfg.attempts_max {
            sim.inner
                .cfg
                .clock
                .sleep(Duration::from_millis(cfg.retry_delay_ms))
                .await;
        }
    }
}
