//! The TOP message service (TMC), pull mode: `taobao.tmc.messages.consume`
//! and `taobao.tmc.messages.confirm` on the gateway.
//!
//! When a Tmall TBC order closes or one of its refunds changes status, the
//! book emits a notice; with TMC enabled it becomes a message in the queue of
//! (app key, group). A consume hands out up to `quantity` (at most 200)
//! visible messages and hides them for `redeliver_after_ms`; a confirm removes
//! them; a message not confirmed in time is handed out again. Fault knobs
//! duplicate messages (a second copy under a new id) and reorder a batch
//! (newest first). Counters for tests: messages published, handed out and
//! confirmed, and per TBC order the lookups (`tmall.tbc.order.get`) and of
//! those the *refund polls* (lookups while the order's refund is open).
//!
//! The topics and the content fields follow Taobao's public message
//! documentation; that Tmall TBC orders emit exactly these is ASSUMED
//! (`docs/channels/top.md`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::book::{Notice, TMALL_TBC};
use crate::{lock, Sim};

/// `taobao.tmc.messages.consume`.
pub const CONSUME_METHOD: &str = "taobao.tmc.messages.consume";
/// `taobao.tmc.messages.confirm`.
pub const CONFIRM_METHOD: &str = "taobao.tmc.messages.confirm";
/// Largest `quantity` a consume accepts.
pub const QUANTITY_MAX: u64 = 200;
/// Trade closed (before payment, or after a full refund).
pub const TOPIC_TRADE_CLOSE: &str = "taobao_trade_TradeClose";
/// A refund was opened.
pub const TOPIC_REFUND_CREATED: &str = "taobao_refund_RefundCreated";
/// A refund completed (money returned).
pub const TOPIC_REFUND_SUCCESS: &str = "taobao_refund_RefundSuccess";
/// A refund was closed (withdrawn).
pub const TOPIC_REFUND_CLOSED: &str = "taobao_refund_RefundClosed";
/// The seller refused a refund.
pub const TOPIC_REFUND_REFUSED: &str = "taobao_refund_RefundSellerRefuseAgreement";
/// The buyer paid (published so consumers meet a topic they do not use).
pub const TOPIC_TRADE_BUYER_PAY: &str = "taobao_trade_TradeBuyerPay";
/// The `user_id` and `user_nick` of the simulated seller.
pub const SELLER_USER_ID: u64 = 2_200_000_000_001;
/// See [`SELLER_USER_ID`].
pub const SELLER_NICK: &str = "sim-tbc-seller";

/// How the message service behaves (`POST /_admin/tmc`; every field optional).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TmcSettings {
    /// Publish messages and serve consume/confirm. Off: nothing is queued and
    /// both methods answer an `isv.tmc-not-enabled` error.
    pub enabled: bool,
    /// The group messages are published to.
    pub group_name: String,
    /// A handed-out message not confirmed within this long is handed out again.
    pub redeliver_after_ms: u64,
    /// Probability (0–1) that a message is published twice, the copy under a
    /// new id.
    pub duplicate_probability: f64,
    /// Hand each batch out newest first.
    pub reorder: bool,
}

impl Default for TmcSettings {
    fn default() -> Self {
        TmcSettings {
            enabled: false,
            group_name: "default".into(),
            redeliver_after_ms: 60_000,
            duplicate_probability: 0.0,
            reorder: false,
        }
    }
}

impl TmcSettings {
    /// Check the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_name.is_empty() {
            return Err("group_name must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.duplicate_probability) {
            return Err("duplicate_probability must be between 0 and 1".into());
        }
        Ok(())
    }
}

/// What the message service did, for tests (`GET /_admin/tmc`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmcStats {
    /// Messages queued (duplicates included).
    pub published: u64,
    /// Of those, extra copies made by the duplicate knob.
    pub duplicated: u64,
    /// Messages handed out by consumes (a redelivery counts again).
    pub consumed: u64,
    /// Of those, handed out again after `redeliver_after_ms` unconfirmed.
    pub redelivered: u64,
    /// Messages removed by a confirm.
    pub confirmed: u64,
    /// Consume calls served.
    pub consume_calls: u64,
    /// Messages in the queues now (hidden ones included).
    pub queued: u64,
    /// TBC order lookups per order id.
    pub order_lookups: BTreeMap<String, u64>,
    /// Refund polls per order id: lookups of an order while its refund was
    /// open (a lookup that confirms pushed news finds it final instead).
    pub refund_polls: BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
struct Message {
    id: u64,
    topic: &'static str,
    pub_time_ms: u64,
    content: String,
    visible_at_ms: u64,
    handed_out: u32,
}

#[derive(Default)]
pub(crate) struct TmcState {
    settings: TmcSettings,
    queues: HashMap<(String, String), VecDeque<Message>>,
    next_id: u64,
    stats: TmcStats,
}

impl TmcState {
    pub(crate) fn new(settings: TmcSettings) -> Self {
        TmcState {
            settings,
            next_id: 1_000_000_000_001,
            ..TmcState::default()
        }
    }
}

/// Why a consume or confirm was refused (rendered as a TOP error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TmcRefusal {
    Disabled,
    Quantity(String),
    Ids(String),
}

/// The topic and content of a book notice, when it is TBC news.
fn message_of(n: &Notice, now_ms: u64) -> Option<(&'static str, Value)> {
    if n.channel != TMALL_TBC {
        return None;
    }
    let text = |k: &str| n.body.get(k).and_then(Value::as_str).unwrap_or_default();
    let modified = rescind_wire::sign::top_timestamp(now_ms);
    match n.message_type {
        "ORDER_STATUS_CHANGE" => {
            let status = text("status");
            let topic = match status {
                "TRADE_CLOSED" | "TRADE_CLOSED_BY_TAOBAO" => TOPIC_TRADE_CLOSE,
                "WAIT_SELLER_SEND_GOODS" => TOPIC_TRADE_BUYER_PAY,
                _ => return None,
            };
            let mut c = json!({
                "tid": text("orderId"),
                "oid": text("orderId"),
                "status": status,
                "seller_nick": SELLER_NICK,
                "modified": modified,
            });
            if let Some(r) = n.body.get("refundId").and_then(Value::as_str) {
                c["refund_id"] = json!(r);
            }
            Some((topic, c))
        }
        "REFUND_STATUS_CHANGE" => {
            let topic = match text("refundStatus") {
                "WAIT_SELLER_AGREE" => TOPIC_REFUND_CREATED,
                "SUCCESS" => TOPIC_REFUND_SUCCESS,
                "CLOSED" => TOPIC_REFUND_CLOSED,
                "SELLER_REFUSE_BUYER" => TOPIC_REFUND_REFUSED,
                _ => return None,
            };
            Some((
                topic,
                json!({
                    "refund_id": text("refundId"),
                    "tid": text("orderId"),
                    "oid": text("orderId"),
                    "refund_fee": "0.00",
                    "refund_phase": "onsale",
                    "seller_nick": SELLER_NICK,
                    "modified": modified,
                }),
            ))
        }
        _ => None,
    }
}

impl Sim {
    /// Queue the TBC notices as TMC messages (when enabled); return the
    /// others, which go to the callback pushes.
    pub(crate) fn tmc_publish(&self, notices: Vec<Notice>) -> Vec<Notice> {
        let (tbc, rest): (Vec<Notice>, Vec<Notice>) =
            notices.into_iter().partition(|n| n.channel == TMALL_TBC);
        if tbc.is_empty() {
            return rest;
        }
        let now = self.now_ms();
        let mut st = lock(&self.inner.tmc);
        if !st.settings.enabled {
            return rest;
        }
        let key = (
            self.inner.cfg.app_key.clone(),
            st.settings.group_name.clone(),
        );
        for n in &tbc {
            let Some((topic, content)) = message_of(n, now) else {
                continue;
            };
            let p = st.settings.duplicate_probability;
            // No draw unless the knob is on: the other draws stay as they were.
            let copies =
                if p > 0.0 && (self.inner.rng_below(1 << 53) as f64) < p * (1u64 << 53) as f64 {
                    2
                } else {
                    1
                };
            for _ in 0..copies {
                let id = st.next_id;
                st.next_id += 1;
                st.queues
                    .entry(key.clone())
                    .or_default()
                    .push_back(Message {
                        id,
                        topic,
                        pub_time_ms: now,
                        content: content.to_string(),
                        visible_at_ms: now,
                        handed_out: 0,
                    });
                st.stats.published += 1;
            }
            st.stats.duplicated += copies - 1;
        }
        rest
    }

    /// Count a TBC order lookup (and a refund poll when its refund is open).
    pub(crate) fn tmc_count_lookup(&self, order_id: &str, refund_open: bool) {
        let mut st = lock(&self.inner.tmc);
        *st.stats
            .order_lookups
            .entry(order_id.to_owned())
            .or_insert(0) += 1;
        if refund_open {
            *st.stats
                .refund_polls
                .entry(order_id.to_owned())
                .or_insert(0) += 1;
        }
    }

    /// `taobao.tmc.messages.consume`: the response value.
    pub(crate) fn tmc_consume(
        &self,
        app_key: &str,
        group: Option<&str>,
        quantity: Option<&str>,
    ) -> Result<Value, TmcRefusal> {
        let quantity = match quantity {
            None => 100,
            Some(q) => q
                .parse::<u64>()
                .ok()
                .filter(|q| (1..=QUANTITY_MAX).contains(q))
                .ok_or_else(|| {
                    TmcRefusal::Quantity(format!(
                        "quantity must be an integer from 1 to {QUANTITY_MAX}, not {q:?}"
                    ))
                })?,
        };
        let now = self.now_ms();
        let mut st = lock(&self.inner.tmc);
        if !st.settings.enabled {
            return Err(TmcRefusal::Disabled);
        }
        st.stats.consume_calls += 1;
        let hide_for = st.settings.redeliver_after_ms;
        let reorder = st.settings.reorder;
        let key = (app_key.to_owned(), group.unwrap_or("default").to_owned());
        let mut batch = Vec::new();
        let mut redelivered = 0;
        if let Some(q) = st.queues.get_mut(&key) {
            for m in q.iter_mut() {
                if batch.len() as u64 >= quantity {
                    break;
                }
                if m.visible_at_ms > now {
                    continue;
                }
                m.visible_at_ms = now.saturating_add(hide_for.max(1));
                redelivered += u64::from(m.handed_out > 0);
                m.handed_out += 1;
                batch.push(m.clone());
            }
        }
        st.stats.consumed += batch.len() as u64;
        st.stats.redelivered += redelivered;
        drop(st);
        if reorder {
            batch.reverse();
        }
        let messages: Vec<Value> = batch
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "topic": m.topic,
                    "pub_time": rescind_wire::sign::top_timestamp(m.pub_time_ms),
                    "outgoing_time": rescind_wire::sign::top_timestamp(now),
                    "pub_app_key": app_key,
                    "user_id": SELLER_USER_ID,
                    "user_nick": SELLER_NICK,
                    "content": m.content,
                })
            })
            .collect();
        Ok(if messages.is_empty() {
            json!({})
        } else {
            json!({"messages": {"tmc_message": messages}})
        })
    }

    /// `taobao.tmc.messages.confirm`: the response value.
    pub(crate) fn tmc_confirm(
        &self,
        app_key: &str,
        group: Option<&str>,
        ids: Option<&str>,
    ) -> Result<Value, TmcRefusal> {
        let mut wanted = Vec::new();
        for s in ids
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.trim().is_empty())
        {
            let id = s.trim().parse::<u64>().map_err(|_| {
                TmcRefusal::Ids(format!("s_message_ids: {s:?} is not a message id"))
            })?;
            wanted.push(id);
        }
        let mut st = lock(&self.inner.tmc);
        if !st.settings.enabled {
            return Err(TmcRefusal::Disabled);
        }
        let key = (app_key.to_owned(), group.unwrap_or("default").to_owned());
        let mut removed = 0;
        if let Some(q) = st.queues.get_mut(&key) {
            let before = q.len();
            q.retain(|m| !wanted.contains(&m.id));
            removed = (before - q.len()) as u64;
        }
        st.stats.confirmed += removed;
        Ok(json!({"is_success": true}))
    }

    /// The message service's settings.
    pub fn tmc_settings(&self) -> TmcSettings {
        lock(&self.inner.tmc).settings.clone()
    }

    /// Change the message service's settings (messages already queued stay).
    pub fn set_tmc(&self, settings: TmcSettings) -> Result<(), String> {
        settings.validate()?;
        lock(&self.inner.tmc).settings = settings;
        Ok(())
    }

    /// The message service's counters.
    pub fn tmc_stats(&self) -> TmcStats {
        let st = lock(&self.inner.tmc);
        let mut stats = st.stats.clone();
        stats.queued = st.queues.values().map(|q| q.len() as u64).sum();
        stats
    }

    /// Empty the queues and counters (settings kept): part of [`Sim::reset`].
    pub(crate) fn tmc_reset(&self) {
        let mut st = lock(&self.inner.tmc);
        st.queues.clear();
        st.stats = TmcStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: &'static str, body: Value) -> Notice {
        Notice {
            channel: TMALL_TBC.into(),
            message_type: kind,
            body,
        }
    }

    #[test]
    fn topics_of_book_notices() {
        let cases = [
            (
                notice(
                    "REFUND_STATUS_CHANGE",
                    json!({"orderId": "O1", "refundId": "R1", "refundStatus": "WAIT_SELLER_AGREE"}),
                ),
                Some(TOPIC_REFUND_CREATED),
            ),
            (
                notice(
                    "REFUND_STATUS_CHANGE",
                    json!({"orderId": "O1", "refundId": "R1", "refundStatus": "SUCCESS"}),
                ),
                Some(TOPIC_REFUND_SUCCESS),
            ),
            (
                notice(
                    "REFUND_STATUS_CHANGE",
                    json!({"orderId": "O1", "refundId": "R1", "refundStatus": "CLOSED"}),
                ),
                Some(TOPIC_REFUND_CLOSED),
            ),
            (
                notice(
                    "ORDER_STATUS_CHANGE",
                    json!({"orderId": "O1", "status": "TRADE_CLOSED_BY_TAOBAO"}),
                ),
                Some(TOPIC_TRADE_CLOSE),
            ),
            (
                notice(
                    "ORDER_STATUS_CHANGE",
                    json!({"orderId": "O1", "status": "WAIT_BUYER_CONFIRM_GOODS"}),
                ),
                None,
            ),
        ];
        for (n, want) in cases {
            assert_eq!(message_of(&n, 0).map(|(t, _)| t), want, "{n:?}");
        }
        let (_, c) = message_of(&cases_refund(), 0).unwrap();
        assert_eq!(c["refund_id"], "R1");
        assert_eq!(c["tid"], "O1");
        let mut other = cases_refund();
        other.channel = "pandapon-taobao".into();
        assert_eq!(message_of(&other, 0), None);
    }

    fn cases_refund() -> Notice {
        notice(
            "REFUND_STATUS_CHANGE",
            json!({"orderId": "O1", "refundId": "R1", "refundStatus": "SUCCESS"}),
        )
    }
}
