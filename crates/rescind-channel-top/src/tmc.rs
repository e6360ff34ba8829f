//! The TOP message service (TMC) in pull mode: refund and order-close news
//! for waiting sagas, instead of polling each order.
//!
//! [`TmcConsumer`] loops: `taobao.tmc.messages.consume` (`group_name`,
//! `quantity`) → parse each message → map it to a [`rescind_core::Observation`]
//! under the channel name the deployment registered → hand it to a
//! [`TmcSink`] (the engine's [`Engine::deliver`](rescind_core::Engine::deliver))
//! → `taobao.tmc.messages.confirm` (`s_message_ids`). A message with an
//! unknown topic or malformed content is confirmed and counted, never fatal
//! (TMC would otherwise hand it out forever). Duplicates and reordering
//! change nothing: the engine drops news that cannot move a saga, and
//! confirms news that would end a refund by a lookup before acting on it.
//! A message delivered but not confirmed (a crash in between) comes back and
//! is delivered again, which is just as harmless.
//!
//! Each successful consume is a heartbeat
//! ([`Engine::push_heartbeat`](rescind_core::Engine::push_heartbeat)): while
//! it beats, sagas on the channel poll only as a slow fallback; when the
//! consumer stops, fails for longer than `live_ttl_ms`, or hangs, polling
//! resumes by itself.
//!
//! Topics (Taobao's public message names; that Tmall TBC orders emit exactly
//! these is ASSUMED, see `docs/channels/top.md`):
//!
//! | topic | observation |
//! |---|---|
//! | `taobao_refund_RefundCreated` | refund `Requested` |
//! | `taobao_refund_RefundSuccess` | refund `Completed` |
//! | `taobao_refund_RefundClosed` | refund `Withdrawn` |
//! | `taobao_refund_RefundSellerRefuseAgreement` | refund `Refused` |
//! | `taobao_trade_TradeClose` | order `Cancelled` (`Refunded` when the content names the refund) |

use crate::client::TopClient;
use crate::config::ConfigError;
use crate::envelope::text_of;
use rescind_core::{
    ChannelError, ChannelName, Clock, Observation, OrderRef, OrderState, OrderStatus, RefundId,
    RefundState, RefundStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `taobao.tmc.messages.consume`.
pub const CONSUME_METHOD: &str = "taobao.tmc.messages.consume";
/// `taobao.tmc.messages.confirm`.
pub const CONFIRM_METHOD: &str = "taobao.tmc.messages.confirm";
/// The largest `quantity` TMC hands out per consume.
pub const QUANTITY_MAX: u32 = 200;

/// Refund topics → the refund state they announce, and TOP's status word.
pub const REFUND_TOPICS: &[(&str, RefundState, &str)] = &[
    (
        "taobao_refund_RefundCreated",
        RefundState::Requested,
        "WAIT_SELLER_AGREE",
    ),
    (
        "taobao_refund_RefundSuccess",
        RefundState::Completed,
        "SUCCESS",
    ),
    (
        "taobao_refund_RefundClosed",
        RefundState::Withdrawn,
        "CLOSED",
    ),
    (
        "taobao_refund_RefundSellerRefuseAgreement",
        RefundState::Refused { reason: None },
        "SELLER_REFUSE_BUYER",
    ),
];
/// The trade-close topic.
pub const TRADE_CLOSE_TOPIC: &str = "taobao_trade_TradeClose";

/// `[channels.NAME.tmc]`: the message consumer of a `tmall-tbc` channel.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TmcConfig {
    /// Run the consumer. Default `false`: the channel's sagas poll.
    pub enabled: bool,
    /// The TMC group to consume (`group_name`). Default `default`.
    pub group_name: String,
    /// Messages asked for per consume (`quantity`, 1–200). Default 100.
    pub quantity: u32,
    /// Pause after a consume that returned fewer than `quantity` messages
    /// (a full batch is followed by the next consume at once). Default 1000.
    pub poll_interval_ms: u64,
    /// First pause after a failed consume or confirm; doubles up to
    /// `backoff_max_ms`. Default 500.
    pub backoff_initial_ms: u64,
    /// Longest pause between failed attempts. Default 30000.
    pub backoff_max_ms: u64,
    /// How long one successful consume keeps the channel's push source live
    /// (then its sagas poll again unless another consume succeeded). Must
    /// exceed `poll_interval_ms`. Default 30000.
    pub live_ttl_ms: u64,
}

impl Default for TmcConfig {
    fn default() -> Self {
        TmcConfig {
            enabled: false,
            group_name: "default".into(),
            quantity: 100,
            poll_interval_ms: 1_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            live_ttl_ms: 30_000,
        }
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        reason: reason.into(),
    }
}

impl TmcConfig {
    /// Check every rule; the error names the key (`tmc.quantity`...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_name.trim().is_empty() {
            return Err(bad("tmc.group_name", "empty"));
        }
        if !(1..=QUANTITY_MAX).contains(&self.quantity) {
            return Err(bad(
                "tmc.quantity",
                format!(
                    "must be between 1 and {QUANTITY_MAX} (got {})",
                    self.quantity
                ),
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(bad("tmc.poll_interval_ms", "must be at least 1"));
        }
        if self.backoff_initial_ms == 0 {
            return Err(bad("tmc.backoff_initial_ms", "must be at least 1"));
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(bad(
                "tmc.backoff_max_ms",
                "must be at least backoff_initial_ms",
            ));
        }
        if self.live_ttl_ms <= self.poll_interval_ms {
            return Err(bad(
                "tmc.live_ttl_ms",
                "must be more than poll_interval_ms (or the push source lapses between consumes)",
            ));
        }
        Ok(())
    }
}

/// Where the consumer's news goes, and whom it tells that it is live. The
/// engine is one; tests use their own.
pub trait TmcSink: Send + Sync + 'static {
    /// Hand one observation over; how many sagas received it.
    fn deliver(&self, obs: Observation) -> usize;
    /// The consumer is live on `channel` for `valid_for` from now.
    fn heartbeat(&self, channel: &ChannelName, valid_for: Duration);
    /// The consumer stopped: `channel` has no live push source.
    fn stopped(&self, channel: &ChannelName);
    /// News that reached no saga here ([`TmcSink::deliver`] gave 0): should
    /// it stay **unconfirmed**, because a saga on its order runs in another
    /// worker of a shared journal? TMC then hands it out again, to whichever
    /// consumer of the group asks next, until the worker running that saga
    /// gets it. Default: no (confirm it; the saga's fallback poll finds the
    /// news).
    fn keep_for_others<'a>(
        &'a self,
        _obs: &'a Observation,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        Box::pin(async { false })
    }
}

impl TmcSink for rescind_core::Engine {
    fn deliver(&self, obs: Observation) -> usize {
        rescind_core::Engine::deliver(self, obs)
    }
    fn heartbeat(&self, channel: &ChannelName, valid_for: Duration) {
        self.push_heartbeat(channel, valid_for);
    }
    fn stopped(&self, channel: &ChannelName) {
        self.set_push_live(channel, false);
    }
}

/// One TMC message as consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TmcMessage {
    /// The message id (what a confirm names).
    pub id: String,
    /// The topic, e.g. `taobao_refund_RefundSuccess`.
    pub topic: String,
    /// `content`: a JSON object, sent as a JSON string.
    pub content: String,
}

/// What a message means for rescind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TmcNews {
    /// News for the sagas on an order.
    News(Observation),
    /// A topic rescind does not use (confirmed, counted).
    UnknownTopic,
    /// A known topic that carries nothing to deliver (e.g. a trade closed
    /// after a refund, without the refund's id: the refund topic carries it).
    Nothing,
}

/// The messages of a consume result (`messages.tmc_message[]`, or a bare
/// `messages[]`); an absent list is an empty batch. Entries without an id
/// cannot be confirmed: they are returned as errors naming their position.
pub fn parse_batch(result: &Value) -> Vec<Result<TmcMessage, String>> {
    let list = match result.get("messages") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(a)) => a.as_slice(),
        Some(m) => match m.get("tmc_message") {
            Some(Value::Array(a)) => a.as_slice(),
            Some(one @ Value::Object(_)) => std::slice::from_ref(one),
            _ => return vec![Err("messages has no tmc_message list".into())],
        },
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let id = m
                .get("id")
                .and_then(text_of)
                .ok_or_else(|| format!("message {i} has no id"))?;
            Ok(TmcMessage {
                topic: m.get("topic").and_then(text_of).unwrap_or_default(),
                content: match m.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Object(_)) => m["content"].to_string(),
                    _ => String::new(),
                },
                id,
            })
        })
        .collect()
}

/// Map a message onto an observation on `channel`; an error (malformed
/// content) names the message id and what is missing.
pub fn map_message(msg: &TmcMessage, channel: &ChannelName) -> Result<TmcNews, String> {
    let refund = REFUND_TOPICS.iter().find(|(t, _, _)| *t == msg.topic);
    if refund.is_none() && msg.topic != TRADE_CLOSE_TOPIC {
        return Ok(TmcNews::UnknownTopic);
    }
    let content: Value = serde_json::from_str(&msg.content)
        .map_err(|e| format!("message {}: content is not JSON: {e}", msg.id))?;
    if !content.is_object() {
        return Err(format!("message {}: content is not a JSON object", msg.id));
    }
    let field = |k: &str| content.get(k).and_then(text_of);
    // ASSUMED: for TBC the order id sagas use (`out_order_no`) is sent as
    // `out_order_no` when present, else it is the `tid`.
    let order_id = field("out_order_no")
        .or_else(|| field("tid"))
        .ok_or_else(|| format!("message {}: content has no tid", msg.id))?;
    let order = OrderRef::new(channel.clone(), order_id);
    if let Some((_, state, word)) = refund {
        let refund_id = field("refund_id")
            .ok_or_else(|| format!("message {}: content has no refund_id", msg.id))?;
        return Ok(TmcNews::News(Observation::Refund {
            order,
            refund_id: RefundId(refund_id),
            status: RefundStatus {
                state: state.clone(),
                upstream: (*word).to_owned(),
            },
        }));
    }
    let status = field("status").unwrap_or_else(|| "TRADE_CLOSED_BY_TAOBAO".into());
    let state = match (status.as_str(), field("refund_id")) {
        ("TRADE_CLOSED_BY_TAOBAO", _) => OrderState::Cancelled,
        ("TRADE_CLOSED", Some(r)) => OrderState::Refunded {
            refund_id: RefundId(r),
        },
        ("TRADE_CLOSED", None) => return Ok(TmcNews::Nothing),
        (other, _) => {
            return Err(format!(
                "message {}: trade close with status {other:?}",
                msg.id
            ))
        }
    };
    Ok(TmcNews::News(Observation::Order {
        order,
        status: OrderStatus {
            state,
            upstream: status,
        },
    }))
}

/// What the consumer did since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TmcStats {
    /// Successful consumes.
    pub consumes: u64,
    /// Messages received.
    pub received: u64,
    /// Observations handed to the sink.
    pub delivered: u64,
    /// Of those, deliveries that reached at least one saga.
    pub matched: u64,
    /// Messages confirmed.
    pub confirmed: u64,
    /// News left unconfirmed for the worker whose saga it is
    /// ([`TmcSink::keep_for_others`]).
    pub kept_for_others: u64,
    /// Messages with a topic rescind does not use (confirmed).
    pub unknown_topic: u64,
    /// Messages whose content could not be read (confirmed, logged with their id).
    pub malformed: u64,
    /// Failed consumes or confirms (backed off).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    consumes: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    matched: AtomicU64,
    confirmed: AtomicU64,
    kept_for_others: AtomicU64,
    unknown_topic: AtomicU64,
    malformed: AtomicU64,
    errors: AtomicU64,
    /// Until when the last successful consume keeps the consumer live (ms).
    live_until_ms: AtomicU64,
    stopped: AtomicBool,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> TmcStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TmcStats {
            consumes: g(&self.consumes),
            received: g(&self.received),
            delivered: g(&self.delivered),
            matched: g(&self.matched),
            confirmed: g(&self.confirmed),
            kept_for_others: g(&self.kept_for_others),
            unknown_topic: g(&self.unknown_topic),
            malformed: g(&self.malformed),
            errors: g(&self.errors),
        }
    }
}

/// The TMC consumer of one `tmall-tbc` channel. [`TmcConsumer::spawn`] runs
/// it; [`TmcConsumer::poll_once`] is one round, for tests and embedders that
/// drive their own loop.
pub struct TmcConsumer {
    client: Arc<TopClient>,
    config: TmcConfig,
    channel: ChannelName,
    sink: Arc<dyn TmcSink>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for TmcConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcConsumer")
            .field("client", &self.client)
            .field("config", &self.config)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl TmcConsumer {
    /// A consumer calling TMC through `client` and delivering news for
    /// `channel` (the name the deployment registered the TBC channel under).
    pub fn new(
        client: TopClient,
        config: TmcConfig,
        channel: impl Into<ChannelName>,
        sink: Arc<dyn TmcSink>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(TmcConsumer {
            client: Arc::new(client),
            config,
            channel: channel.into(),
            sink,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The channel news is delivered under.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Counters so far.
    pub fn stats(&self) -> TmcStats {
        self.counters.snapshot()
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.client.clock()
    }

    /// One round: consume, deliver, confirm. Returns how many messages the
    /// consume returned. A failed consume or confirm is the error (the
    /// unconfirmed messages come back later: harmless).
    pub async fn poll_once(&self) -> Result<usize, ChannelError> {
        let c = &self.counters;
        let quantity = self.config.quantity.to_string();
        let result = self
            .client
            .call(
                CONSUME_METHOD,
                &[
                    ("group_name", self.config.group_name.as_str()),
                    ("quantity", quantity.as_str()),
                ],
            )
            .await?;
        bump(&c.consumes, 1);
        let ttl = Duration::from_millis(self.config.live_ttl_ms);
        c.live_until_ms.store(
            self.clock()
                .now_ms()
                .saturating_add(self.config.live_ttl_ms),
            Ordering::Relaxed,
        );
        self.sink.heartbeat(&self.channel, ttl);
        let batch = parse_batch(&result);
        bump(&c.received, batch.len() as u64);
        let mut ids: Vec<String> = Vec::with_capacity(batch.len());
        for m in &batch {
            let msg = match m {
                Ok(msg) => msg,
                Err(why) => {
                    bump(&c.malformed, 1);
                    tracing::warn!(channel = %self.channel, problem = %why, "TMC message without an id: cannot confirm it");
                    continue;
                }
            };
            match map_message(msg, &self.channel) {
                Ok(TmcNews::News(obs)) => {
                    bump(&c.delivered, 1);
                    if self.sink.deliver(obs.clone()) > 0 {
                        bump(&c.matched, 1);
                    } else if self.sink.keep_for_others(&obs).await {
                        // Left unconfirmed: it comes back, to another
                        // consumer of the group.
                        bump(&c.kept_for_others, 1);
                        continue;
                    }
                    ids.push(msg.id.clone());
                    continue;
                }
                Ok(TmcNews::Nothing) => ids.push(msg.id.clone()),
                Ok(TmcNews::UnknownTopic) => {
                    ids.push(msg.id.clone());
                    bump(&c.unknown_topic, 1);
                    tracing::debug!(id = %msg.id, topic = %msg.topic.escape_debug(), "TMC topic not used: confirmed");
                }
                Err(why) => {
                    ids.push(msg.id.clone());
                    bump(&c.malformed, 1);
                    tracing::warn!(id = %msg.id, topic = %msg.topic.escape_debug(), problem = %why.escape_debug(), "malformed TMC message: confirmed and skipped");
                }
            }
        }
        if !ids.is_empty() {
            let joined = ids.join(",");
            self.client
                .call(
                    CONFIRM_METHOD,
                    &[
                        ("group_name", self.config.group_name.as_str()),
                        ("s_message_ids", joined.as_str()),
                    ],
                )
                .await?;
            bump(&c.confirmed, ids.len() as u64);
        }
        Ok(batch.len())
    }

    /// Run the loop in a task until [`TmcHandle::stop`].
    pub fn spawn(self) -> TmcHandle {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let counters = self.counters.clone();
        let clock = self.clock().clone();
        let channel = self.channel.clone();
        let task = tokio::spawn(self.run(rx));
        TmcHandle {
            channel,
            stop: tx,
            task,
            counters,
            clock,
        }
    }

    async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let cfg = &self.config;
        let mut backoff = cfg.backoff_initial_ms;
        tracing::info!(channel = %self.channel, group = %cfg.group_name.escape_debug(), "TMC consumer started");
        loop {
            let pause_ms = tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = self.poll_once() => match r {
                    Ok(n) => {
                        backoff = cfg.backoff_initial_ms;
                        if n >= cfg.quantity as usize { 0 } else { cfg.poll_interval_ms }
                    }
                    Err(e) => {
                        bump(&self.counters.errors, 1);
                        tracing::warn!(channel = %self.channel, error = %e, retry_in_ms = backoff, "TMC consume or confirm failed");
                        let wait = backoff;
                        backoff = backoff.saturating_mul(2).min(cfg.backoff_max_ms);
                        wait
                    }
                },
            };
            if *stop.borrow() {
                break;
            }
            if pause_ms > 0 {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = self.clock().sleep(Duration::from_millis(pause_ms)) => {}
                }
            }
        }
        self.counters.stopped.store(true, Ordering::Relaxed);
        self.sink.stopped(&self.channel);
        tracing::info!(channel = %self.channel, "TMC consumer stopped");
    }
}

/// A running [`TmcConsumer`].
pub struct TmcHandle {
    channel: ChannelName,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TmcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcHandle")
            .field("stats", &self.stats())
            .field("live", &self.is_live())
            .finish()
    }
}

/// A cheap, cloneable view of a running consumer's counters and liveness
/// (for metrics and health checks).
#[derive(Clone)]
pub struct TmcProbe {
    counters: Arc<Counters>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TmcProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TmcProbe")
            .field("stats", &self.stats())
            .field("live", &self.is_live())
            .finish()
    }
}

impl TmcProbe {
    /// Counters so far.
    pub fn stats(&self) -> TmcStats {
        self.counters.snapshot()
    }

    /// Not stopped, and its last successful consume is younger than `live_ttl_ms`.
    pub fn is_live(&self) -> bool {
        !self.counters.stopped.load(Ordering::Relaxed)
            && self.counters.live_until_ms.load(Ordering::Relaxed) > self.clock.now_ms()
    }
}

impl TmcHandle {
    /// The channel its news is delivered under.
    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// Counters so far.
    pub fn stats(&self) -> TmcStats {
        self.counters.snapshot()
    }

    /// A view of the counters and liveness that outlives borrowing the handle.
    pub fn probe(&self) -> TmcProbe {
        TmcProbe {
            counters: self.counters.clone(),
            clock: self.clock.clone(),
        }
    }

    /// Running, and its last successful consume is younger than `live_ttl_ms`.
    pub fn is_live(&self) -> bool {
        !self.counters.stopped.load(Ordering::Relaxed)
            && !self.task.is_finished()
            && self.counters.live_until_ms.load(Ordering::Relaxed) > self.clock.now_ms()
    }

    /// Stop the loop (an interrupted round's messages come back later) and
    /// wait for it; the channel's sagas poll again.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "TMC consumer task ended abnormally");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(id: &str, topic: &str, content: Value) -> TmcMessage {
        TmcMessage {
            id: id.into(),
            topic: topic.into(),
            content: content.to_string(),
        }
    }

    #[test]
    fn topics_map_to_observations() {
        let ch = ChannelName::from("tbc-sg");
        let refund = json!({"refund_id": "R1", "tid": 1234567, "oid": 1, "refund_fee": "9.90"});
        let cases: Vec<(TmcMessage, Result<TmcNews, &str>)> = vec![
            (
                msg("1", "taobao_refund_RefundSuccess", refund.clone()),
                Ok(TmcNews::News(Observation::Refund {
                    order: OrderRef::new("tbc-sg", "1234567"),
                    refund_id: RefundId("R1".into()),
                    status: RefundStatus {
                        state: RefundState::Completed,
                        upstream: "SUCCESS".into(),
                    },
                })),
            ),
            (
                msg("2", "taobao_refund_RefundClosed", refund.clone()),
                Ok(TmcNews::News(Observation::Refund {
                    order: OrderRef::new("tbc-sg", "1234567"),
                    refund_id: RefundId("R1".into()),
                    status: RefundStatus {
                        state: RefundState::Withdrawn,
                        upstream: "CLOSED".into(),
                    },
                })),
            ),
            (
                msg(
                    "3",
                    "taobao_trade_TradeClose",
                    json!({"tid": "O9", "status": "TRADE_CLOSED_BY_TAOBAO"}),
                ),
                Ok(TmcNews::News(Observation::Order {
                    order: OrderRef::new("tbc-sg", "O9"),
                    status: OrderStatus {
                        state: OrderState::Cancelled,
                        upstream: "TRADE_CLOSED_BY_TAOBAO".into(),
                    },
                })),
            ),
            (
                msg(
                    "4",
                    "taobao_trade_TradeClose",
                    json!({"tid": "O9", "out_order_no": "X9", "status": "TRADE_CLOSED"}),
                ),
                Ok(TmcNews::Nothing),
            ),
            (
                msg("5", "taobao_item_ItemAdd", json!({})),
                Ok(TmcNews::UnknownTopic),
            ),
            (
                msg("6", "taobao_refund_RefundSuccess", json!({"tid": "O1"})),
                Err("message 6: content has no refund_id"),
            ),
            (
                msg(
                    "7",
                    "taobao_refund_RefundSuccess",
                    json!({"refund_id": "R"}),
                ),
                Err("message 7: content has no tid"),
            ),
            (
                msg(
                    "8",
                    "taobao_trade_TradeClose",
                    json!({"tid": "O", "status": "WAT"}),
                ),
                Err("message 8: trade close with status \"WAT\""),
            ),
            (
                TmcMessage {
                    id: "9".into(),
                    topic: "taobao_refund_RefundCreated".into(),
                    content: "{not json".into(),
                },
                Err("message 9: content is not JSON"),
            ),
            (
                msg("10", "taobao_refund_RefundCreated", json!([1])),
                Err("message 10: content is not a JSON object"),
            ),
        ];
        for (m, want) in cases {
            match (map_message(&m, &ch), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{m:?}"),
                (Err(e), Err(words)) => assert!(e.starts_with(words), "{e} vs {words}"),
                (got, want) => panic!("{m:?}: got {got:?}, want {want:?}"),
            }
        }
        // out_order_no wins over tid.
        let m = msg(
            "11",
            "taobao_refund_RefundCreated",
            json!({"refund_id": "R", "tid": "T", "out_order_no": "OUT"}),
        );
        match map_message(&m, &ch) {
            Ok(TmcNews::News(Observation::Refund { order, .. })) => {
                assert_eq!(order.order_id.as_str(), "OUT")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn batch_shapes() {
        let two = json!({"messages": {"tmc_message": [
            {"id": 1, "topic": "a", "content": "{}"},
            {"topic": "b", "content": "{}"},
        ]}});
        let b = parse_batch(&two);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].as_ref().map(|m| m.id.as_str()), Ok("1"));
        assert_eq!(b[1], Err("message 1 has no id".into()));
        assert!(parse_batch(&json!({})).is_empty());
        assert_eq!(
            parse_batch(&json!({"messages": [{"id": "7", "topic": "t", "content": {"a": 1}}]}))[0]
                .as_ref()
                .map(|m| m.content.clone()),
            Ok("{\"a\":1}".into())
        );
        assert_eq!(
            parse_batch(&json!({"messages": {"tmc_message": {"id": 3}}})).len(),
            1
        );
        assert!(parse_batch(&json!({"messages": 5}))[0].is_err());
    }

    #[test]
    fn config_rules_name_their_key() {
        assert_eq!(TmcConfig::default().validate(), Ok(()));
        let cases = [
            (
                TmcConfig {
                    quantity: 0,
                    ..TmcConfig::default()
                },
                "tmc.quantity",
            ),
            (
                TmcConfig {
                    quantity: 201,
                    ..TmcConfig::default()
                },
                "tmc.quantity",
            ),
            (
                TmcConfig {
                    group_name: " ".into(),
                    ..TmcConfig::default()
                },
                "tmc.group_name",
            ),
            (
                TmcConfig {
                    poll_interval_ms: 0,
                    ..TmcConfig::default()
                },
                "tmc.poll_interval_ms",
            ),
            (
                TmcConfig {
                    backoff_initial_ms: 0,
                    ..TmcConfig::default()
                },
                "tmc.backoff_initial_ms",
            ),
            (
                TmcConfig {
                    backoff_max_ms: 1,
                    ..TmcConfig::default()
                },
                "tmc.backoff_max_ms",
            ),
            (
                TmcConfig {
                    live_ttl_ms: 1_000,
                    ..TmcConfig::default()
                },
                "tmc.live_ttl_ms",
            ),
        ];
        for (c, key) in cases {
            assert_eq!(c.validate().map_err(|e| e.field), Err(key));
        }
    }
}
