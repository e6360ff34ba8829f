//! Channel traits: what a marketplace channel must offer the saga engine.
//!
//! Channel crates (`rescind-channel-top`, `rescind-channel-pandapon`) implement
//! these; the engine only ever sees the traits. Every failure is a
//! [`ChannelError`] whose [`ErrorClass`] tells the engine what to do next, and
//! which keeps the channel's own code and sub-code for operators.

use crate::ids::{AccountId, ChannelName, OrderRef, RefundId, StockLockRef};
use crate::machine::{OrderState, RefundState};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Whether a failed call may nevertheless have taken effect upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// Certainly not applied (rejected before it reached the business logic:
    /// rate limit, connection refused, bad signature).
    No,
    /// Perhaps applied (timeout, lost response, 5xx, `isp.*` fault): the step
    /// is *in doubt* and must be resolved by a lookup before it is re-issued.
    Maybe,
}

/// Why a state moved upstream under the saga.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "conflict", rename_all = "snake_case")]
pub enum Conflict {
    /// The buyer paid while we were cancelling an unpaid order.
    PaidMeanwhile,
    /// The order shipped; it can no longer be cancelled.
    AlreadyShipped,
    /// The refund already completed (cannot be withdrawn).
    RefundAlreadyCompleted,
    /// The refund is closed (refused or withdrawn by someone else).
    RefundClosed,
    /// Any other state change, described by the channel.
    Other {
        /// What the channel said.
        detail: String,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::PaidMeanwhile => f.write_str("the buyer paid meanwhile"),
            Conflict::AlreadyShipped => f.write_str("the order already shipped"),
            Conflict::RefundAlreadyCompleted => f.write_str("the refund already completed"),
            Conflict::RefundClosed => f.write_str("the refund is already closed"),
            Conflict::Other { detail } => write!(f, "state changed upstream: {detail}"),
        }
    }
}

/// Why a call can never succeed as issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PermanentReason {
    /// The channel rejected a parameter (`isv.*`, missing/invalid argument).
    InvalidRequest,
    /// The signature or credentials were rejected.
    Auth,
    /// The local clock is off by more than the channel accepts (TOP code 31).
    ClockSkew,
    /// The user authorisation (TOP `session`) is invalid or expired (code 27).
    InvalidSession,
    /// The order or refund does not exist upstream.
    NotFound,
    /// The channel does not offer this operation.
    Unsupported,
    /// The channel's reply could not be understood.
    MalformedResponse,
    /// Anything else the channel calls final.
    Other,
}

/// The engine-facing class of a channel failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try again later: network, timeout, 5xx, gateway busy, rate limit.
    Retryable {
        /// How long the channel asked us to wait (rate-limit bans), if it said.
        wait_ms: Option<u64>,
        /// Whether the call may have taken effect anyway.
        applied: Applied,
    },
    /// The effect is already in place (already cancelled, already withdrawn):
    /// success for an idempotent step.
    AlreadyDone,
    /// The state moved upstream; the saga must re-plan.
    Conflict(Conflict),
    /// The call will never succeed as issued.
    Permanent(PermanentReason),
}

/// A classified channel failure that keeps the channel's own words.
///
/// `Display` names the channel, the class, and the channel's code, sub-code
/// and message. Channel crates must never put a secret in any field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ChannelError {
    /// The class the engine acts on.
    pub class: ErrorClass,
    /// The channel's code (TOP `code`, PandaPon `code`), when it gave one.
    pub code: Option<String>,
    /// The channel's sub-code (TOP `sub_code`), when it gave one.
    pub sub_code: Option<String>,
    /// A human-readable message: the channel's `msg`/`sub_msg` or ours.
    pub message: String,
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.class {
            ErrorClass::Retryable { wait_ms, applied } => {
                write!(f, "retryable")?;
                if let Some(w) = wait_ms {
                    write!(f, " after {w} ms")?;
                }
                if *applied == Applied::Maybe {
                    write!(f, " (may have been applied)")?;
                }
            }
            ErrorClass::AlreadyDone => write!(f, "already done")?,
            ErrorClass::Conflict(c) => write!(f, "conflict: {c}")?,
            ErrorClass::Permanent(r) => write!(f, "permanent ({r:?})")?,
        }
        if let Some(code) = &self.code {
            write!(f, "; code {code}")?;
        }
        if let Some(sub) = &self.sub_code {
            write!(f, "; sub_code {sub}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ChannelError {
    /// A failure of the given class with our own message.
    ///
    /// Control characters in the message (an upstream gateway's text may
    /// carry CR LF or escape sequences) are escaped here, once, so that no
    /// log line, journal record, API answer or terminal shows them raw.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ChannelError {
            class,
            code: None,
            sub_code: None,
            message: escape_controls(message.into()),
        }
    }
    /// A retryable failure that may have been applied (timeout, lost reply).
    pub fn in_doubt(message: impl Into<String>) -> Self {
        Self::new(
            ErrorClass::Retryable {
                wait_ms: None,
                applied: Applied::Maybe,
            },
            message,
        )
    }
    /// A retryable failure that certainly was not applied.
    pub fn not_applied(message: impl Into<String>) -> Self {
        Self::new(
            ErrorClass::Retryable {
                wait_ms: None,
                applied: Applied::No,
            },
            message,
        )
    }
    /// A rate-limit rejection asking for a wait.
    pub fn rate_limited(wait: Option<Duration>, message: impl Into<String>) -> Self {
        Self::new(
            ErrorClass::Retryable {
                wait_ms: wait.map(|d| d.as_millis() as u64),
                applied: Applied::No,
            },
            message,
        )
    }
    /// A permanent failure.
    pub fn permanent(reason: PermanentReason, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent(reason), message)
    }
    /// A conflict.
    pub fn conflict(c: Conflict, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Conflict(c), message)
    }
    /// The channel does not offer this operation.
    pub fn unsupported(channel: &ChannelName, op: &str) -> Self {
        Self::permanent(
            PermanentReason::Unsupported,
            format!("channel {channel} does not support {op}"),
        )
    }
    /// Attach the channel's code and sub-code (control characters escaped,
    /// as in the message).
    pub fn with_codes(mut self, code: Option<String>, sub_code: Option<String>) -> Self {
        self.code = code.map(escape_controls);
        self.sub_code = sub_code.map(escape_controls);
        self
    }
    /// Is this retryable?
    pub fn is_retryable(&self) -> bool {
        matches!(self.class, ErrorClass::Retryable { .. })
    }
}

/// `text` with every control character (CR, LF, ESC, ...) written as its
/// Rust escape (`\r`, `\n`, `\u{1b}`); text without any is returned as is.
pub fn escape_controls(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A request to cancel an order (before or after payment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// The order to cancel.
    pub order: OrderRef,
    /// The account (shop) acting, whose credentials the channel uses;
    /// `None` for a channel's single configured account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
    /// Why, as sent upstream (`cancelReason` on PandaPon), if the channel takes one.
    pub reason: Option<String>,
    /// A free remark (`remark` on PandaPon).
    pub remark: Option<String>,
}

/// What a successful cancel-before-payment did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOutcome {
    /// True when the channel answered "already cancelled".
    pub already: bool,
}

/// What a successful cancel-after-payment did: it opened a refund.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundOpened {
    /// The refund the cancel opened.
    pub refund_id: RefundId,
}

/// A request to withdraw (cancel) a refund.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithdrawRequest {
    /// The order the refund belongs to.
    pub order: OrderRef,
    /// The refund to withdraw.
    pub refund_id: RefundId,
    /// The account (shop) acting; `None` for the channel's single account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
}

/// Status of an order as the channel reports it, mapped onto rescind's machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStatus {
    /// The mapped state.
    pub state: OrderState,
    /// The channel's own status word, e.g. `waitbuyerpay`.
    pub upstream: String,
}

/// Status of a refund as the channel reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundStatus {
    /// The mapped state.
    pub state: RefundState,
    /// The channel's own status word, e.g. `WAIT_SELLER_AGREE`.
    pub upstream: String,
}

/// Cancel an order upstream, before and after payment.
#[async_trait]
pub trait CancelOrder: Send + Sync {
    /// Cancel an unpaid order. `Conflict(PaidMeanwhile)` when the buyer paid;
    /// `AlreadyDone` when already cancelled.
    async fn cancel_unpaid(&self, req: &CancelRequest) -> Result<CancelOutcome, ChannelError>;
    /// Cancel a paid order, which opens a refund.
    async fn cancel_paid(&self, req: &CancelRequest) -> Result<RefundOpened, ChannelError>;
    /// Can this channel represent `order_id`? Checked before a saga is
    /// journaled. The error says what is wrong ("out of range", "has leading
    /// zeros"), not only that it is wrong. Default: any non-blank id.
    fn check_order_id(&self, order_id: &str) -> Result<(), String> {
        check_not_blank(order_id)
    }
}

/// The default id check: not empty, no surrounding blanks, no control characters.
pub fn check_not_blank(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".into());
    }
    if id.trim() != id {
        return Err("has leading or trailing blanks".into());
    }
    if id.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

/// The longest account id accepted, in bytes.
pub const ACCOUNT_ID_MAX_BYTES: usize = 128;

/// The check of an account id (a shop or seller name): not blank, no control
/// characters, no `:` (stuck reasons name the account as `account X: …`),
/// at most [`ACCOUNT_ID_MAX_BYTES`] bytes.
pub fn check_account_id(id: &str) -> Result<(), String> {
    check_not_blank(id)?;
    if id.contains(':') {
        return Err("contains ':' (not allowed in an account id)".into());
    }
    if id.len() > ACCOUNT_ID_MAX_BYTES {
        return Err(format!(
            "is {} bytes long (at most {ACCOUNT_ID_MAX_BYTES})",
            id.len()
        ));
    }
    Ok(())
}

/// The check for channels whose ids are unsigned 64-bit decimal integers.
pub fn check_decimal_u64(id: &str) -> Result<(), String> {
    check_not_blank(id)?;
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a decimal number (digits 0-9 only)".into());
    }
    if id.len() > 1 && id.starts_with('0') {
        return Err("has leading zeros".into());
    }
    if id.parse::<u64>().is_err() {
        return Err(format!("is out of range (the largest id is {})", u64::MAX));
    }
    Ok(())
}

/// Input refused before anything was journaled: names the field, the value
/// and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field} `{value}` {reason}")]
pub struct InputError {
    /// The input field at fault (`channel`, `stock_lock.channel`, `order_id`...).
    pub field: String,
    /// The value given (control characters escaped).
    pub value: String,
    /// What is wrong, e.g. "is not configured; configured: damai, tmall-tbc".
    pub reason: String,
}

impl InputError {
    /// An input error for `field` = `value`.
    pub fn new(field: impl Into<String>, value: &str, reason: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            value: value.escape_debug().to_string(),
            reason: reason.into(),
        }
    }
}

/// Withdraw (refund-cancel) an open refund.
#[async_trait]
pub trait CancelRefund: Send + Sync {
    /// Withdraw the refund. `AlreadyDone` when already withdrawn.
    async fn withdraw_refund(&self, req: &WithdrawRequest) -> Result<(), ChannelError>;
    /// Can this channel represent `order_id`? See [`CancelOrder::check_order_id`].
    fn check_order_id(&self, order_id: &str) -> Result<(), String> {
        check_not_blank(order_id)
    }
    /// Can this channel represent `refund_id`? Default: any non-blank id.
    fn check_refund_id(&self, refund_id: &str) -> Result<(), String> {
        check_not_blank(refund_id)
    }
}

/// Release a stock lock (Damai ticket stock) after a cancel.
#[async_trait]
pub trait ReleaseStock: Send + Sync {
    /// Release the lock, acting for `account` (`None`: the channel's single
    /// configured account). `AlreadyDone` when already released.
    async fn release_stock(
        &self,
        lock: &StockLockRef,
        account: Option<&AccountId>,
    ) -> Result<(), ChannelError>;
    /// Can this channel represent `lock_id`? Default: any non-blank id.
    fn check_lock_id(&self, lock_id: &str) -> Result<(), String> {
        check_not_blank(lock_id)
    }
}

/// Look up order and refund status: reconciliation and in-doubt resolution.
#[async_trait]
pub trait OrderLookup: Send + Sync {
    /// The order's current status, looked up as `account` (`None`: the
    /// channel's single configured account). `Permanent(NotFound)` when unknown.
    async fn order_status(
        &self,
        order: &OrderRef,
        account: Option<&AccountId>,
    ) -> Result<OrderStatus, ChannelError>;
    /// A refund's current status, looked up as `account`.
    async fn refund_status(
        &self,
        order: &OrderRef,
        refund_id: &RefundId,
        account: Option<&AccountId>,
    ) -> Result<RefundStatus, ChannelError>;
}

fn require<'a, T: ?Sized>(
    map: &'a HashMap<ChannelName, Arc<T>>,
    field: &str,
    name: &ChannelName,
    op: &str,
) -> Result<&'a Arc<T>, InputError> {
    if let Some(c) = map.get(name) {
        return Ok(c);
    }
    let mut have: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
    have.sort_unstable();
    let configured = if have.is_empty() {
        "none".to_owned()
    } else {
        have.join(", ")
    };
    let what = if name.as_str().is_empty() {
        "is empty".to_owned()
    } else {
        format!("is not configured for {op}")
    };
    Err(InputError::new(
        field,
        name.as_str(),
        format!("{what}; configured: {configured}"),
    ))
}

/// The channels an engine can reach, by name and capability.
///
/// A channel registers the capabilities it has; asking for a missing one is a
/// `Permanent(Unsupported)` error naming the channel, never a panic.
#[derive(Clone, Default)]
pub struct Channels {
    cancel: HashMap<ChannelName, Arc<dyn CancelOrder>>,
    refund: HashMap<ChannelName, Arc<dyn CancelRefund>>,
    stock: HashMap<ChannelName, Arc<dyn ReleaseStock>>,
    lookup: HashMap<ChannelName, Arc<dyn OrderLookup>>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn names<T: ?Sized>(m: &HashMap<ChannelName, Arc<T>>) -> Vec<String> {
            let mut v: Vec<String> = m.keys().map(|k| k.0.clone()).collect();
            v.sort();
            v
        }
        f.debug_struct("Channels")
            .field("cancel", &names(&self.cancel))
            .field("refund", &names(&self.refund))
            .field("stock", &names(&self.stock))
            .field("lookup", &names(&self.lookup))
            .finish()
    }
}

impl Channels {
    /// No channels.
    pub fn new() -> Self {
        Self::default()
    }
    /// Register an order-cancel capability.
    pub fn with_cancel(mut self, name: impl Into<ChannelName>, c: Arc<dyn CancelOrder>) -> Self {
        self.cancel.insert(name.into(), c);
        self
    }
    /// Register a refund-withdraw capability.
    pub fn with_refund(mut self, name: impl Into<ChannelName>, c: Arc<dyn CancelRefund>) -> Self {
        self.refund.insert(name.into(), c);
        self
    }
    /// Register a stock-release capability.
    pub fn with_stock(mut self, name: impl Into<ChannelName>, c: Arc<dyn ReleaseStock>) -> Self {
        self.stock.insert(name.into(), c);
        self
    }
    /// Register a lookup capability.
    pub fn with_lookup(mut self, name: impl Into<ChannelName>, c: Arc<dyn OrderLookup>) -> Self {
        self.lookup.insert(name.into(), c);
        self
    }
    /// The cancel capability of `name`.
    pub fn cancel(&self, name: &ChannelName) -> Result<&Arc<dyn CancelOrder>, ChannelError> {
        self.cancel
            .get(name)
            .ok_or_else(|| ChannelError::unsupported(name, "order cancel"))
    }
    /// The refund-withdraw capability of `name`.
    pub fn refund(&self, name: &ChannelName) -> Result<&Arc<dyn CancelRefund>, ChannelError> {
        self.refund
            .get(name)
            .ok_or_else(|| ChannelError::unsupported(name, "refund withdraw"))
    }
    /// The stock-release capability of `name`.
    pub fn stock(&self, name: &ChannelName) -> Result<&Arc<dyn ReleaseStock>, ChannelError> {
        self.stock
            .get(name)
            .ok_or_else(|| ChannelError::unsupported(name, "stock release"))
    }
    /// The lookup capability of `name`, if registered.
    pub fn lookup(&self, name: &ChannelName) -> Option<&Arc<dyn OrderLookup>> {
        self.lookup.get(name)
    }
    /// The cancel capability of `name`, or an [`InputError`] on `field`
    /// naming the channels that have it.
    pub fn require_cancel(
        &self,
        field: &str,
        name: &ChannelName,
    ) -> Result<&Arc<dyn CancelOrder>, InputError> {
        require(&self.cancel, field, name, "order cancel")
    }
    /// The refund-withdraw capability of `name`, or an [`InputError`].
    pub fn require_refund(
        &self,
        field: &str,
        name: &ChannelName,
    ) -> Result<&Arc<dyn CancelRefund>, InputError> {
        require(&self.refund, field, name, "refund withdraw")
    }
    /// The stock-release capability of `name`, or an [`InputError`].
    pub fn require_stock(
        &self,
        field: &str,
        name: &ChannelName,
    ) -> Result<&Arc<dyn ReleaseStock>, InputError> {
        require(&self.stock, field, name, "stock release")
    }
    /// All channel names with any capability, sorted.
    pub fn names(&self) -> Vec<ChannelName> {
        let mut v: Vec<ChannelName> = self
            .cancel
            .keys()
            .chain(self.refund.keys())
            .chain(self.stock.keys())
            .chain(self.lookup.keys())
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_text_with_control_characters_is_escaped() {
        let e = ChannelError::permanent(
            PermanentReason::InvalidRequest,
            "bad\r\n2026-01-01 INFO forged \u{1b}[2J",
        )
        .with_codes(Some("15\n".into()), Some("isv.x\u{1b}".into()));
        assert_eq!(e.message, "bad\\r\\n2026-01-01 INFO forged \\u{1b}[2J");
        assert_eq!(e.code.as_deref(), Some("15\\n"));
        assert_eq!(e.sub_code.as_deref(), Some("isv.x\\u{1b}"));
        assert!(!e.to_string().chars().any(char::is_control), "{e}");
        // Plain text is left alone (no copy).
        assert_eq!(escape_controls("订单 not found".into()), "订单 not found");
    }
}
