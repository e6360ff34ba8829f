//! The order book: orders, refunds and stock locks in each channel's own
//! status vocabulary, the business rules that change them, and the effect log.
//!
//! Everything here is synchronous and pure apart from the book itself: the
//! HTTP layers call these operations under one lock and render the outcome
//! in the channel's envelope.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Channel name of Tmall TBC orders (TOP gateway).
pub const TMALL_TBC: &str = "tmall-tbc";
/// Channel name of Damai ticket orders and their stock locks (TOP gateway).
pub const DAMAI: &str = "damai";
/// Channel name of Taobao orders bought through PandaPon.
pub const PANDAPON_TAOBAO: &str = "pandapon-taobao";
/// Channel name of 1688 orders bought through PandaPon.
pub const PANDAPON_1688: &str = "pandapon-1688";
/// Every channel the book knows.
pub const CHANNELS: [&str; 4] = [TMALL_TBC, DAMAI, PANDAPON_TAOBAO, PANDAPON_1688];

/// One order as loaded from a fixture, `POST /_admin/orders` or [`crate::Sim::add_order`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSeed {
    /// One of [`CHANNELS`].
    pub channel: String,
    /// The channel's order id (`out_order_no` for TBC; a decimal integer for 1688).
    pub order_id: String,
    /// The order status in the channel's own vocabulary (see `docs/simulator.md`).
    pub status: String,
    /// A refund (reverse order) attached to the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<RefundSeed>,
    /// Damai only: the stock lock id (equal to the Damai order id). The lock is
    /// held unless the order status is `CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_lock: Option<String>,
}

/// A refund attached to an [`OrderSeed`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundSeed {
    /// The channel's refund (reverse order) id.
    pub refund_id: String,
    /// The refund status in the channel's own vocabulary.
    pub status: String,
}

/// An order as the admin API and [`crate::Sim::order`] show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// Channel name.
    pub channel: String,
    /// Order id.
    pub order_id: String,
    /// Status in the channel's vocabulary.
    pub status: String,
    /// The latest refund on the order, if any.
    pub refund_id: Option<String>,
    /// That refund's status in the channel's vocabulary.
    pub refund_status: Option<String>,
    /// Damai: the stock lock id.
    pub stock_lock: Option<String>,
    /// Damai: whether the stock lock is still held.
    pub stock_lock_held: Option<bool>,
}

/// A refund as the admin API and [`crate::Sim::refund`] show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    /// Channel name.
    pub channel: String,
    /// Refund id.
    pub refund_id: String,
    /// The order the refund belongs to.
    pub order_id: String,
    /// Status in the channel's vocabulary.
    pub status: String,
}

/// The request that caused an effect: enough to tell which call applied it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// The fault-profile endpoint name (TOP method or `pandapon.*` name).
    pub endpoint: String,
    /// HTTP method.
    pub http_method: String,
    /// Request path.
    pub path: String,
    /// The simulator's request id, as returned in the response envelope.
    pub request_id: String,
    /// Business parameters (never signatures or secrets).
    pub params: BTreeMap<String, String>,
}

/// One applied, state-changing effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// Position in the log, from 1.
    pub seq: u64,
    /// `cancel_unpaid`, `cancel_paid`, `withdraw_refund` or `release_stock`.
    pub op: String,
    /// `<channel>:<order_id>`, `<channel>:<refund_id>` or `damai:<lock_id>`.
    pub target: String,
    /// How many times this (op, target) has been applied, this one included.
    pub count: u64,
    /// Simulator clock, epoch milliseconds.
    pub at_ms: u64,
    /// The request that caused it.
    pub request: RequestSummary,
}

/// Weights of the states [`crate::Sim::generate`] draws from. In JSON, a
/// missing weight is 0 and missing `channels` means all four; `Default` is
/// the standard mix (4:3:1:1:2:1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    /// Channels to spread orders over (round robin).
    #[serde(default = "all_channels")]
    pub channels: Vec<String>,
    /// Weight of unpaid orders.
    #[serde(default)]
    pub unpaid: u32,
    /// Weight of paid, not shipped orders.
    #[serde(default)]
    pub paid: u32,
    /// Weight of shipped orders.
    #[serde(default)]
    pub shipped: u32,
    /// Weight of orders cancelled before payment.
    #[serde(default)]
    pub cancelled: u32,
    /// Weight of paid orders with an open refund.
    #[serde(default)]
    pub refund_open: u32,
    /// Weight of orders closed after a completed refund.
    #[serde(default)]
    pub refunded: u32,
}

fn all_channels() -> Vec<String> {
    CHANNELS.iter().map(|c| c.to_string()).collect()
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            channels: all_channels(),
            unpaid: 4,
            paid: 3,
            shipped: 1,
            cancelled: 1,
            refund_open: 2,
            refunded: 1,
        }
    }
}

/// What a scheduled event does to the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// The buyer pays an unpaid order.
    Pay,
    /// The seller ships a paid order.
    Ship,
    /// The buyer opens a refund on a paid order (after-sales request).
    OpenRefund,
    /// The open refund completes; the order closes as refunded.
    CompleteRefund,
    /// The seller refuses the open refund; the order is paid again.
    RefuseRefund,
}

/// A change the simulator applies by itself after a delay, to exercise races.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledEvent {
    /// Delay from the moment it is scheduled, in milliseconds of the sim's clock.
    pub after_ms: u64,
    /// Channel name.
    pub channel: String,
    /// Order id (also for refund events: the order's latest refund is used).
    pub order_id: String,
    /// What happens.
    pub action: EventAction,
}

/// A scheduled event that was applied (or found not applicable).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedEvent {
    /// The event.
    pub event: ScheduledEvent,
    /// When it was applied, epoch ms.
    pub at_ms: u64,
    /// Whether it changed anything (a `pay` on a cancelled order does not).
    pub applied: bool,
    /// Why not, when it did not.
    pub note: String,
}

/// Where an order is in its life, independent of vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Unpaid,
    Paid,
    Shipped,
    Finished,
    Cancelled,
    Refunded,
}

/// Where a refund is, independent of vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefundPhase {
    Open,
    Withdrawn,
    Completed,
    Refused,
}

fn is_1688(channel: &str) -> bool {
    channel == PANDAPON_1688
}

pub(crate) fn order_phase(channel: &str, status: &str) -> Option<Phase> {
    if channel == DAMAI {
        return match status {
            "WAIT_PAY" => Some(Phase::Unpaid),
            "PAID" => Some(Phase::Paid),
            "CANCELLED" => Some(Phase::Cancelled),
            _ => None,
        };
    }
    if is_1688(channel) {
        return match status {
            "waitbuyerpay" => Some(Phase::Unpaid),
            "waitsellersend" => Some(Phase::Paid),
            "waitbuyerreceive" => Some(Phase::Shipped),
            "confirm_goods" | "success" => Some(Phase::Finished),
            "cancel" => Some(Phase::Cancelled),
            // `terminated` is Refunded when a refund completed, else Cancelled;
            // the book stores the distinction in the order's refund.
            "terminated" => Some(Phase::Refunded),
            _ => None,
        };
    }
    match status {
        "WAIT_BUYER_PAY" => Some(Phase::Unpaid),
        "WAIT_SELLER_SEND_GOODS" => Some(Phase::Paid),
        "WAIT_BUYER_CONFIRM_GOODS" => Some(Phase::Shipped),
        "TRADE_FINISHED" => Some(Phase::Finished),
        "TRADE_CLOSED_BY_TAOBAO" => Some(Phase::Cancelled),
        "TRADE_CLOSED" => Some(Phase::Refunded),
        _ => None,
    }
}

pub(crate) fn order_status(channel: &str, phase: Phase) -> &'static str {
    if channel == DAMAI {
        return match phase {
            Phase::Unpaid => "WAIT_PAY",
            Phase::Cancelled | Phase::Refunded => "CANCELLED",
            _ => "PAID",
        };
    }
    if is_1688(channel) {
        return match phase {
            Phase::Unpaid => "waitbuyerpay",
            Phase::Paid => "waitsellersend",
            Phase::Shipped => "waitbuyerreceive",
            Phase::Finished => "success",
            Phase::Cancelled => "cancel",
            Phase::Refunded => "terminated",
        };
    }
    match phase {
        Phase::Unpaid => "WAIT_BUYER_PAY",
        Phase::Paid => "WAIT_SELLER_SEND_GOODS",
        Phase::Shipped => "WAIT_BUYER_CONFIRM_GOODS",
        Phase::Finished => "TRADE_FINISHED",
        Phase::Cancelled => "TRADE_CLOSED_BY_TAOBAO",
        Phase::Refunded => "TRADE_CLOSED",
    }
}

pub(crate) fn refund_phase(channel: &str, status: &str) -> Option<RefundPhase> {
    if is_1688(channel) {
        return match status {
            "waitselleragree" | "waitbuyermodify" | "waitbuyersend" | "waitsellerreceive" => {
                Some(RefundPhase::Open)
            }
            "refundsuccess" => Some(RefundPhase::Completed),
            "refundclose" => Some(RefundPhase::Withdrawn),
            _ => None,
        };
    }
    match status {
        "WAIT_SELLER_AGREE" | "WAIT_BUYER_RETURN_GOODS" | "WAIT_SELLER_CONFIRM_GOODS" => {
            Some(RefundPhase::Open)
        }
        "SELLER_REFUSE_BUYER" => Some(RefundPhase::Refused),
        "CLOSED" => Some(RefundPhase::Withdrawn),
        "SUCCESS" => Some(RefundPhase::Completed),
        _ => None,
    }
}

pub(crate) fn refund_status(channel: &str, phase: RefundPhase) -> &'static str {
    if is_1688(channel) {
        return match phase {
            RefundPhase::Open => "waitselleragree",
            RefundPhase::Completed => "refundsuccess",
            // 1688 has one closed state for withdrawn and refused refunds.
            RefundPhase::Withdrawn | RefundPhase::Refused => "refundclose",
        };
    }
    match phase {
        RefundPhase::Open => "WAIT_SELLER_AGREE",
        RefundPhase::Withdrawn => "CLOSED",
        RefundPhase::Completed => "SUCCESS",
        RefundPhase::Refused => "SELLER_REFUSE_BUYER",
    }
}

/// Why a seed row was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// The channel is not one of [`CHANNELS`].
    #[error(
        "unknown channel {0:?}: expected one of tmall-tbc, damai, pandapon-taobao, pandapon-1688"
    )]
    UnknownChannel(String),
    /// The order status is not in the channel's vocabulary.
    #[error("unknown order status {status:?} for channel {channel}")]
    UnknownOrderStatus {
        /// Channel.
        channel: String,
        /// The offending status.
        status: String,
    },
    /// The refund status is not in the channel's vocabulary.
    #[error("unknown refund status {status:?} for channel {channel}")]
    UnknownRefundStatus {
        /// Channel.
        channel: String,
        /// The offending status.
        status: String,
    },
    /// A 1688 order id must be a decimal integer.
    #[error("1688 order id {0:?} is not a decimal integer")]
    BadOrderId(String),
    /// Empty order id.
    #[error("empty order id")]
    EmptyOrderId,
}

#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub status: String,
    pub refund_id: Option<String>,
    pub stock_lock: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct Refund {
    pub order_id: String,
    pub status: String,
}

/// A business refusal, rendered by each channel in its own words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    AlreadyCancelled,
    Paid,
    NotPaid,
    Shipped,
    RefundAlreadyOpen,
    RefundWithdrawn,
    RefundCompleted,
    RefundRefused,
    LockReleased,
    NoSuchLock,
}

/// A message the book wants pushed: a PandaPon callback, or for Tmall TBC a
/// TMC message (`tmc.rs`; never a callback).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Notice {
    pub channel: String,
    pub message_type: &'static str,
    pub body: serde_json::Value,
}

#[derive(Default)]
pub(crate) struct Book {
    pub orders: HashMap<(String, String), Order>,
    pub refunds: HashMap<(String, String), Refund>,
    /// Damai lock id → held.
    pub locks: HashMap<String, bool>,
    /// Damai lock id → ids of the Damai orders whose `stock_lock` it is.
    /// Kept by [`Book::insert`], the only place orders (and so their
    /// `stock_lock`) are added or replaced; lets `release_stock` find the
    /// orders without scanning the book.
    lock_orders: HashMap<String, Vec<String>>,
    pub effects: Vec<Effect>,
    pub counts: BTreeMap<(String, String), u64>,
    pub pending: Vec<(u64, ScheduledEvent)>,
    pub history: Vec<AppliedEvent>,
    pub refund_seq: u64,
}

/// Order id as a JSON value: 1688 ids are integers on the wire, exact beyond 2^53.
pub(crate) fn order_id_json(channel: &str, id: &str) -> serde_json::Value {
    if is_1688(channel) {
        if let Ok(n) = id.parse::<u64>() {
            return serde_json::Value::Number(n.into());
        }
    }
    serde_json::Value::String(id.to_owned())
}

impl Book {
    pub fn validate(seed: &OrderSeed) -> Result<(), SeedError> {
        if !CHANNELS.contains(&seed.channel.as_str()) {
            return Err(SeedError::UnknownChannel(seed.channel.clone()));
        }
        if seed.order_id.is_empty() {
            return Err(SeedError::EmptyOrderId);
        }
        if is_1688(&seed.channel) && seed.order_id.parse::<u64>().is_err() {
            return Err(SeedError::BadOrderId(seed.order_id.clone()));
        }
        if order_phase(&seed.channel, &seed.status).is_none() {
            return Err(SeedError::UnknownOrderStatus {
                channel: seed.channel.clone(),
                status: seed.status.clone(),
            });
        }
        if let Some(r) = &seed.refund {
            if refund_phase(&seed.channel, &r.status).is_none() {
                return Err(SeedError::UnknownRefundStatus {
                    channel: seed.channel.clone(),
                    status: r.status.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn insert(&mut self, seed: OrderSeed) -> Result<(), SeedError> {
        Self::validate(&seed)?;
        let refund_id = seed.refund.as_ref().map(|r| r.refund_id.clone());
        if let Some(r) = seed.refund {
            self.refunds.insert(
                (seed.channel.clone(), r.refund_id),
                Refund {
                    order_id: seed.order_id.clone(),
                    status: r.status,
                },
            );
        }
        if seed.channel == DAMAI {
            if let Some(lock) = &seed.stock_lock {
                let held = order_phase(DAMAI, &seed.status) != Some(Phase::Cancelled);
                self.locks.insert(lock.clone(), held);
                self.lock_orders
                    .entry(lock.clone())
                    .or_default()
                    .push(seed.order_id.clone());
            }
        }
        let key = (seed.channel, seed.order_id);
        let replaced = self.orders.insert(
            key.clone(),
            Order {
                status: seed.status,
                refund_id,
                stock_lock: seed.stock_lock,
            },
        );
        // A replaced Damai order no longer holds its old lock's index entry
        // (the new one, if any, was pushed above; drop exactly one old copy).
        if key.0 == DAMAI {
            if let Some(old_lock) = replaced.and_then(|o| o.stock_lock) {
                self.unindex_lock(&old_lock, &key.1);
            }
        }
        Ok(())
    }

    /// Remove one `order_id` entry from `lock`'s index list.
    fn unindex_lock(&mut self, lock: &str, order_id: &str) {
        if let Some(ids) = self.lock_orders.get_mut(lock) {
            if let Some(i) = ids.iter().position(|id| id == order_id) {
                ids.swap_remove(i);
            }
            if ids.is_empty() {
                self.lock_orders.remove(lock);
            }
        }
    }

    pub fn order_view(&self, channel: &str, order_id: &str) -> Option<OrderView> {
        let o = self
            .orders
            .get(&(channel.to_owned(), order_id.to_owned()))?;
        let refund_status = o
            .refund_id
            .as_ref()
            .and_then(|r| self.refunds.get(&(channel.to_owned(), r.clone())))
            .map(|r| r.status.clone());
        Some(OrderView {
            channel: channel.to_owned(),
            order_id: order_id.to_owned(),
            status: o.status.clone(),
            refund_id: o.refund_id.clone(),
            refund_status,
            stock_lock: o.stock_lock.clone(),
            stock_lock_held: o
                .stock_lock
                .as_ref()
                .and_then(|l| self.locks.get(l).copied()),
        })
    }

    pub fn refund_view(&self, channel: &str, refund_id: &str) -> Option<RefundView> {
        let r = self
            .refunds
            .get(&(channel.to_owned(), refund_id.to_owned()))?;
        Some(RefundView {
            channel: channel.to_owned(),
            refund_id: refund_id.to_owned(),
            order_id: r.order_id.clone(),
            status: r.status.clone(),
        })
    }

    fn record(&mut self, op: &str, target: String, at_ms: u64, request: &RequestSummary) {
        let count = self
            .counts
            .entry((op.to_owned(), target.clone()))
            .or_insert(0);
        *count += 1;
        let count = *count;
        let seq = self.effects.len() as u64 + 1;
        self.effects.push(Effect {
            seq,
            op: op.to_owned(),
            target,
            count,
            at_ms,
            request: request.clone(),
        });
    }

    fn current_refund_phase(&self, channel: &str, o: &Order) -> Option<RefundPhase> {
        let rid = o.refund_id.as_ref()?;
        let r = self.refunds.get(&(channel.to_owned(), rid.clone()))?;
        refund_phase(channel, &r.status)
    }

    /// News of an order: PandaPon callbacks, or (TBC) a TMC message.
    fn order_notice(channel: &str, order_id: &str, status: &str) -> Option<Notice> {
        if channel != PANDAPON_TAOBAO && channel != PANDAPON_1688 && channel != TMALL_TBC {
            return None;
        }
        Some(Notice {
            channel: channel.to_owned(),
            message_type: "ORDER_STATUS_CHANGE",
            body: serde_json::json!({"orderId": order_id_json(channel, order_id), "status": status}),
        })
    }

    fn refund_notice(
        channel: &str,
        order_id: &str,
        refund_id: &str,
        status: &str,
    ) -> Option<Notice> {
        if channel != PANDAPON_TAOBAO && channel != PANDAPON_1688 && channel != TMALL_TBC {
            return None;
        }
        Some(Notice {
            channel: channel.to_owned(),
            message_type: "REFUND_STATUS_CHANGE",
            body: serde_json::json!({
                "orderId": order_id_json(channel, order_id),
                "refundId": refund_id,
                "refundStatus": status,
            }),
        })
    }

    /// Cancel before payment.
    pub fn cancel_unpaid(
        &mut self,
        channel: &str,
        order_id: &str,
        at_ms: u64,
        req: &RequestSummary,
        notices: &mut Vec<Notice>,
    ) -> Result<(), Refusal> {
        let key = (channel.to_owned(), order_id.to_owned());
        let o = self.orders.get(&key).ok_or(Refusal::NotFound)?;
        let refunding = self.current_refund_phase(channel, o) == Some(RefundPhase::Open);
        match order_phase(channel, &o.status) {
            Some(Phase::Unpaid) => {}
            Some(Phase::Cancelled) => return Err(Refusal::AlreadyCancelled),
            Some(Phase::Paid) | Some(Phase::Refunded) => return Err(Refusal::Paid),
            Some(Phase::Shipped) | Some(Phase::Finished) if !refunding => {
                return Err(Refusal::Shipped)
            }
            _ => return Err(Refusal::Paid),
        }
        let status = order_status(channel, Phase::Cancelled);
        if let Some(o) = self.orders.get_mut(&key) {
            o.status = status.to_owned();
        }
        notices.extend(Self::order_notice(channel, order_id, status));
        self.record("cancel_unpaid", format!("{channel}:{order_id}"), at_ms, req);
        Ok(())
    }

    /// Cancel after payment: opens a refund; returns its id.
    pub fn cancel_paid(
        &mut self,
        channel: &str,
        order_id: &str,
        at_ms: u64,
        req: &RequestSummary,
        notices: &mut Vec<Notice>,
    ) -> Result<String, Refusal> {
        let key = (channel.to_owned(), order_id.to_owned());
        let o = self.orders.get(&key).ok_or(Refusal::NotFound)?;
        if self.current_refund_phase(channel, o) == Some(RefundPhase::Open) {
            return Err(Refusal::RefundAlreadyOpen);
        }
        match order_phase(channel, &o.status) {
            Some(Phase::Paid) => {}
            Some(Phase::Unpaid) => return Err(Refusal::NotPaid),
            Some(Phase::Shipped) | Some(Phase::Finished) => return Err(Refusal::Shipped),
            Some(Phase::Cancelled) | Some(Phase::Refunded) | None => {
                return Err(Refusal::AlreadyCancelled)
            }
        }
        let refund_id = self.open_refund(channel, order_id);
        let status = refund_status(channel, RefundPhase::Open);
        notices.extend(Self::refund_notice(channel, order_id, &refund_id, status));
        self.record("cancel_paid", format!("{channel}:{order_id}"), at_ms, req);
        Ok(refund_id)
    }

    fn open_refund(&mut self, channel: &str, order_id: &str) -> String {
        self.refund_seq += 1;
        let mut refund_id = format!(
            "R{}{:06}",
            if is_1688(channel) { "A" } else { "T" },
            self.refund_seq
        );
        while self
            .refunds
            .contains_key(&(channel.to_owned(), refund_id.clone()))
        {
            self.refund_seq += 1;
            refund_id = format!(
                "R{}{:06}",
                if is_1688(channel) { "A" } else { "T" },
                self.refund_seq
            );
        }
        self.refunds.insert(
            (channel.to_owned(), refund_id.clone()),
            Refund {
                order_id: order_id.to_owned(),
                status: refund_status(channel, RefundPhase::Open).to_owned(),
            },
        );
        if let Some(o) = self
            .orders
            .get_mut(&(channel.to_owned(), order_id.to_owned()))
        {
            o.refund_id = Some(refund_id.clone());
        }
        refund_id
    }

    /// Withdraw an open refund; the order is paid again.
    pub fn withdraw_refund(
        &mut self,
        channel: &str,
        refund_id: &str,
        at_ms: u64,
        req: &RequestSummary,
        notices: &mut Vec<Notice>,
    ) -> Result<(), Refusal> {
        let key = (channel.to_owned(), refund_id.to_owned());
        let r = self.refunds.get(&key).ok_or(Refusal::NotFound)?;
        match refund_phase(channel, &r.status) {
            Some(RefundPhase::Open) => {}
            Some(RefundPhase::Withdrawn) => return Err(Refusal::RefundWithdrawn),
            Some(RefundPhase::Completed) => return Err(Refusal::RefundCompleted),
            Some(RefundPhase::Refused) | None => return Err(Refusal::RefundRefused),
        }
        let order_id = r.order_id.clone();
        let status = refund_status(channel, RefundPhase::Withdrawn);
        if let Some(r) = self.refunds.get_mut(&key) {
            r.status = status.to_owned();
        }
        notices.extend(Self::refund_notice(channel, &order_id, refund_id, status));
        self.record(
            "withdraw_refund",
            format!("{channel}:{refund_id}"),
            at_ms,
            req,
        );
        Ok(())
    }

    /// Release a Damai stock lock (and cancel the order if it is unpaid).
    pub fn release_stock(
        &mut self,
        lock_id: &str,
        at_ms: u64,
        req: &RequestSummary,
    ) -> Result<(), Refusal> {
        let held = *self.locks.get(lock_id).ok_or(Refusal::NoSuchLock)?;
        if !held {
            return Err(Refusal::LockReleased);
        }
        self.locks.insert(lock_id.to_owned(), false);
        if let Some(ids) = self.lock_orders.get(lock_id) {
            for id in ids {
                if let Some(o) = self.orders.get_mut(&(DAMAI.to_owned(), id.clone())) {
                    debug_assert_eq!(o.stock_lock.as_deref(), Some(lock_id));
                    if order_phase(DAMAI, &o.status) == Some(Phase::Unpaid) {
                        o.status = order_status(DAMAI, Phase::Cancelled).to_owned();
                    }
                }
            }
        }
        self.record("release_stock", format!("{DAMAI}:{lock_id}"), at_ms, req);
        Ok(())
    }

    pub fn schedule(&mut self, due_ms: u64, ev: ScheduledEvent) {
        self.pending.push((due_ms, ev));
    }

    /// Apply every scheduled event due at `now_ms`, in due order.
    pub fn apply_due(&mut self, now_ms: u64, notices: &mut Vec<Notice>) {
        if self.pending.is_empty() {
            return;
        }
        let mut due: Vec<(u64, ScheduledEvent)> = Vec::new();
        let mut keep = Vec::new();
        for (t, e) in self.pending.drain(..) {
            if t <= now_ms {
                due.push((t, e));
            } else {
                keep.push((t, e));
            }
        }
        self.pending = keep;
        due.sort_by_key(|(t, _)| *t);
        for (_, ev) in due {
            let (applied, note) = match self.apply_event(&ev, notices) {
                Ok(()) => (true, String::new()),
                Err(n) => (false, n),
            };
            self.history.push(AppliedEvent {
                event: ev,
                at_ms: now_ms,
                applied,
                note,
            });
        }
    }

    fn apply_event(
        &mut self,
        ev: &ScheduledEvent,
        notices: &mut Vec<Notice>,
    ) -> Result<(), String> {
        let ch = ev.channel.as_str();
        let key = (ev.channel.clone(), ev.order_id.clone());
        let o = self
            .orders
            .get(&key)
            .ok_or_else(|| "no such order".to_owned())?;
        let phase = order_phase(ch, &o.status);
        let rphase = self.current_refund_phase(ch, o);
        let set_order = |book: &mut Book, p: Phase, notices: &mut Vec<Notice>| {
            let s = order_status(ch, p);
            if let Some(o) = book.orders.get_mut(&key) {
                o.status = s.to_owned();
            }
            notices.extend(Self::order_notice(ch, &ev.order_id, s));
        };
        let set_refund = |book: &mut Book, p: RefundPhase, notices: &mut Vec<Notice>| {
            let s = refund_status(ch, p);
            let rid = book.orders.get(&key).and_then(|o| o.refund_id.clone());
            if let Some(rid) = rid {
                if let Some(r) = book.refunds.get_mut(&(ev.channel.clone(), rid.clone())) {
                    r.status = s.to_owned();
                }
                notices.extend(Self::refund_notice(ch, &ev.order_id, &rid, s));
            }
        };
        match ev.action {
            EventAction::Pay => {
                if phase != Some(Phase::Unpaid) {
                    return Err(format!("order is {}, not unpaid", o.status));
                }
                set_order(self, Phase::Paid, notices);
            }
            EventAction::Ship => {
                if phase != Some(Phase::Paid) || rphase == Some(RefundPhase::Open) {
                    return Err(format!("order is {}, not paid without a refund", o.status));
                }
                set_order(self, Phase::Shipped, notices);
            }
            EventAction::OpenRefund => {
                if !matches!(phase, Some(Phase::Paid | Phase::Shipped | Phase::Finished))
                    || rphase == Some(RefundPhase::Open)
                {
                    return Err(format!("order is {}, cannot open a refund", o.status));
                }
                let rid = self.open_refund(ch, &ev.order_id);
                notices.extend(Self::refund_notice(
                    ch,
                    &ev.order_id,
                    &rid,
                    refund_status(ch, RefundPhase::Open),
                ));
            }
            EventAction::CompleteRefund => {
                if rphase != Some(RefundPhase::Open) {
                    return Err("no open refund".to_owned());
                }
                set_refund(self, RefundPhase::Completed, notices);
                set_order(self, Phase::Refunded, notices);
            }
            EventAction::RefuseRefund => {
                if rphase != Some(RefundPhase::Open) {
                    return Err("no open refund".to_owned());
                }
                set_refund(self, RefundPhase::Refused, notices);
            }
        }
        Ok(())
    }
}

/// Orders for [`crate::Sim::generate`]: deterministic in `seed`, ids
/// `T<seed>-<i>` (TBC), `D<seed>-<i>` (Damai, with a stock lock),
/// `<big integer>` (Taobao and 1688 via PandaPon; 1688 ids exceed 2^53).
pub fn generate_seeds(seed: u64, n: usize, mix: &Mix) -> Vec<OrderSeed> {
    use rescind_core::{Rng, SplitMix64};
    let rng = SplitMix64::new(seed);
    let channels: Vec<String> = if mix.channels.is_empty() {
        CHANNELS.iter().map(|c| c.to_string()).collect()
    } else {
        mix.channels
            .iter()
            .filter(|c| CHANNELS.contains(&c.as_str()))
            .cloned()
            .collect()
    };
    if channels.is_empty() {
        return Vec::new();
    }
    let weights = [
        (Phase::Unpaid, false, mix.unpaid),
        (Phase::Paid, false, mix.paid),
        (Phase::Shipped, false, mix.shipped),
        (Phase::Cancelled, false, mix.cancelled),
        (Phase::Paid, true, mix.refund_open),
        (Phase::Refunded, true, mix.refunded),
    ];
    let total: u64 = weights.iter().map(|w| u64::from(w.2)).sum();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let channel = channels[i % channels.len()].clone();
        let (mut phase, mut with_refund) = (Phase::Unpaid, false);
        if total > 0 {
            let mut pick = rng.below(total);
            for (p, r, w) in weights {
                if pick < u64::from(w) {
                    phase = p;
                    with_refund = r;
                    break;
                }
                pick -= u64::from(w);
            }
        }
        if channel == DAMAI {
            // Damai knows unpaid, paid and cancelled only.
            phase = match phase {
                Phase::Unpaid => Phase::Unpaid,
                Phase::Cancelled => Phase::Cancelled,
                _ => Phase::Paid,
            };
            with_refund = false;
        }
        let order_id = match channel.as_str() {
            TMALL_TBC => format!("T{seed}-{i}"),
            DAMAI => format!("D{seed}-{i}"),
            PANDAPON_1688 => {
                (2_542_285_634_920_880_000u64 + (seed % 1000) * 1_000_000 + i as u64).to_string()
            }
            _ => (3_900_000_000_000_000_000u64 + (seed % 1000) * 1_000_000 + i as u64).to_string(),
        };
        let refund = with_refund.then(|| RefundSeed {
            refund_id: format!("G{seed}-{i}"),
            status: refund_status(
                &channel,
                if phase == Phase::Refunded {
                    RefundPhase::Completed
                } else {
                    RefundPhase::Open
                },
            )
            .to_owned(),
        });
        out.push(OrderSeed {
            status: order_status(&channel, phase).to_owned(),
            stock_lock: (channel == DAMAI).then(|| order_id.clone()),
            channel,
            order_id,
            refund,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestSummary {
        RequestSummary {
            endpoint: "t".into(),
            http_method: "POST".into(),
            path: "/".into(),
            request_id: "x".into(),
            params: BTreeMap::new(),
        }
    }

    #[test]
    fn vocabularies_round_trip() {
        for ch in CHANNELS {
            for p in [Phase::Unpaid, Phase::Paid, Phase::Cancelled] {
                assert_eq!(order_phase(ch, order_status(ch, p)), Some(p), "{ch} {p:?}");
            }
        }
        for ch in [TMALL_TBC, PANDAPON_TAOBAO] {
            for p in [
                RefundPhase::Open,
                RefundPhase::Withdrawn,
                RefundPhase::Completed,
                RefundPhase::Refused,
            ] {
                assert_eq!(refund_phase(ch, refund_status(ch, p)), Some(p));
            }
        }
    }

    #[test]
    fn generated_seeds_are_valid_and_deterministic() {
        let a = generate_seeds(7, 200, &Mix::default());
        assert_eq!(a, generate_seeds(7, 200, &Mix::default()));
        let mut b = Book::default();
        for s in a {
            b.insert(s).unwrap();
        }
        assert_eq!(b.orders.len(), 200);
    }

    #[test]
    fn cancel_rules() {
        let mut b = Book::default();
        let mut n = Vec::new();
        b.insert(OrderSeed {
            channel: TMALL_TBC.into(),
            order_id: "1".into(),
            status: "WAIT_BUYER_PAY".into(),
            refund: None,
            stock_lock: None,
        })
        .unwrap();
        assert_eq!(b.cancel_unpaid(TMALL_TBC, "1", 0, &req(), &mut n), Ok(()));
        assert_eq!(
            b.cancel_unpaid(TMALL_TBC, "1", 0, &req(), &mut n),
            Err(Refusal::AlreadyCancelled)
        );
        assert_eq!(
            b.cancel_unpaid(TMALL_TBC, "2", 0, &req(), &mut n),
            Err(Refusal::NotFound)
        );
        assert_eq!(b.effects.len(), 1);
        assert_eq!(
            b.counts[&("cancel_unpaid".to_owned(), "tmall-tbc:1".to_owned())],
            1
        );
    }

    fn damai(order_id: &str, status: &str, lock: Option<&str>) -> OrderSeed {
        OrderSeed {
            channel: DAMAI.into(),
            order_id: order_id.into(),
            status: status.into(),
            refund: None,
            stock_lock: lock.map(Into::into),
        }
    }

    /// The Damai orders a scan of the book finds holding `lock` (what the
    /// index must agree with).
    fn scan(b: &Book, lock: &str) -> Vec<String> {
        let mut v: Vec<String> = b
            .orders
            .iter()
            .filter(|((c, _), o)| c == DAMAI && o.stock_lock.as_deref() == Some(lock))
            .map(|((_, id), _)| id.clone())
            .collect();
        v.sort();
        v
    }

    fn indexed(b: &Book, lock: &str) -> Vec<String> {
        let mut v = b.lock_orders.get(lock).cloned().unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn lock_index_follows_inserts_and_replacements() {
        let unpaid = order_status(DAMAI, Phase::Unpaid);
        let paid = order_status(DAMAI, Phase::Paid);
        let mut b = Book::default();
        // Lock id differing from the order id, shared by two orders.
        b.insert(damai("A", unpaid, Some("L1"))).unwrap();
        b.insert(damai("B", paid, Some("L1"))).unwrap();
        b.insert(damai("C", unpaid, Some("C"))).unwrap();
        // Same key replaced with the same lock: no duplicate entry.
        b.insert(damai("C", unpaid, Some("C"))).unwrap();
        // Replaced with another lock, then with none.
        b.insert(damai("D", unpaid, Some("L1"))).unwrap();
        b.insert(damai("D", unpaid, Some("L2"))).unwrap();
        b.insert(damai("E", unpaid, Some("L2"))).unwrap();
        b.insert(damai("E", unpaid, None)).unwrap();
        // A non-Damai order naming a lock is never released by it.
        b.insert(OrderSeed {
            channel: TMALL_TBC.into(),
            order_id: "T".into(),
            status: "WAIT_BUYER_PAY".into(),
            refund: None,
            stock_lock: Some("L1".into()),
        })
        .unwrap();
        for lock in ["L1", "L2", "C", "none"] {
            assert_eq!(indexed(&b, lock), scan(&b, lock), "{lock}");
        }
        assert_eq!(indexed(&b, "L1"), ["A", "B"]);

        b.release_stock("L1", 0, &req()).unwrap();
        let cancelled = order_status(DAMAI, Phase::Cancelled);
        assert_eq!(b.order_view(DAMAI, "A").unwrap().status, cancelled);
        assert_eq!(b.order_view(DAMAI, "B").unwrap().status, paid);
        assert_eq!(b.order_view(DAMAI, "D").unwrap().status, unpaid);
        assert_eq!(
            b.order_view(TMALL_TBC, "T").unwrap().status,
            "WAIT_BUYER_PAY"
        );
        assert_eq!(b.release_stock("L1", 0, &req()), Err(Refusal::LockReleased));
        assert_eq!(b.release_stock("nope", 0, &req()), Err(Refusal::NoSuchLock));
        b.release_stock("L2", 0, &req()).unwrap();
        assert_eq!(b.order_view(DAMAI, "D").unwrap().status, cancelled);
        assert_eq!(b.order_view(DAMAI, "E").unwrap().status, unpaid);
        assert_eq!(b.effects.len(), 2);
    }
}
