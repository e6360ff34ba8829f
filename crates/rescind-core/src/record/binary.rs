//! Record format 2: the compact binary encoding.
//!
//! A record is the byte [`BINARY_VERSION`] followed by the
//! [postcard](https://docs.rs/postcard) encoding of [`BinEntry`]. postcard is
//! not self-describing, so it cannot carry serde's internally tagged enums
//! (the JSON shape of [`Record`], [`Action`], [`StepOutcome`]...) or
//! `serde_json::Value`, whose `Deserialize` needs `deserialize_any`. This
//! module therefore mirrors the record types with externally tagged enums
//! (postcard writes a variant as its index) and carries every free-form JSON
//! value (custom params, payloads and values) as its canonical JSON text.
//!
//! **Variant order is the format**: add new variants at the end of an enum,
//! never reorder or remove one, or bump the binary version.

use super::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
use crate::action::{CancelPaid, CancelUnpaid, Custom, ReleaseStock, WithdrawRefund};
use crate::channel::{
    Applied, ChannelError, Conflict, ErrorClass, OrderStatus, PermanentReason, RefundStatus,
};
use crate::ids::{AccountId, OrderRef, RefundId, SagaKind, StockLockRef};
use crate::machine::{OrderState, RefundState};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// The first byte of a record in this encoding (the record format version).
pub const BINARY_VERSION: u8 = 2;

type Text<'a> = Cow<'a, str>;

#[derive(Serialize, Deserialize)]
struct BinEntry<'a> {
    at_ms: u64,
    record: BinRecord<'a>,
}

#[derive(Serialize, Deserialize)]
enum BinRecord<'a> {
    Started {
        input: BinInput<'a>,
        by: Option<Text<'a>>,
    },
    Intent {
        step: u32,
        action: BinAction<'a>,
    },
    Outcome {
        step: u32,
        outcome: BinOutcome<'a>,
        via: Via,
        attempts: u32,
    },
    Observed {
        observation: BinObservation<'a>,
        via: Via,
    },
    Switched {
        to: Cow<'a, SagaKind>,
        reason: Text<'a>,
    },
    AbortRequested {
        reason: Text<'a>,
        by: Option<Text<'a>>,
    },
    Resumed {
        by: Text<'a>,
    },
    Resolved {
        step: u32,
        outcome: Option<BinOutcome<'a>>,
        operator: Text<'a>,
        reason: Text<'a>,
    },
    Stuck {
        reason: Text<'a>,
    },
    Finished {
        outcome: BinSagaOutcome<'a>,
    },
    /// `Started` for a saga that names its account (added after `Finished`:
    /// records of sagas without one keep the original `Started` layout).
    StartedFor {
        input: BinInput<'a>,
        by: Option<Text<'a>>,
        account: Cow<'a, AccountId>,
    },
    /// `Deferred` (added after `StartedFor`: earlier variants keep their tags).
    Deferred {
        step: u32,
        until_ms: u64,
        reason: Text<'a>,
    },
}

#[derive(Serialize, Deserialize)]
struct BinInput<'a> {
    kind: Cow<'a, SagaKind>,
    order: Cow<'a, OrderRef>,
    order_state: BinOrderState<'a>,
    stock_lock: Option<Cow<'a, StockLockRef>>,
    reason: Option<Text<'a>>,
    /// JSON text; `None` for `null`.
    params: Option<Text<'a>>,
}

#[derive(Serialize, Deserialize)]
enum BinAction<'a> {
    CancelUnpaid {
        order: Cow<'a, OrderRef>,
    },
    CancelPaid {
        order: Cow<'a, OrderRef>,
    },
    WithdrawRefund {
        order: Cow<'a, OrderRef>,
        refund_id: Cow<'a, RefundId>,
    },
    ReleaseStock {
        lock: Cow<'a, StockLockRef>,
    },
    Custom {
        name: Text<'a>,
        /// JSON text.
        payload: Text<'a>,
    },
}

#[derive(Serialize, Deserialize)]
enum BinOutcome<'a> {
    Cancelled {
        already: bool,
    },
    RefundOpened {
        refund_id: Cow<'a, RefundId>,
    },
    RefundWithdrawn {
        already: bool,
    },
    StockReleased {
        already: bool,
    },
    Conflict {
        conflict: BinConflict<'a>,
        message: Text<'a>,
    },
    Failed {
        error: BinChannelError<'a>,
    },
    /// JSON text.
    Custom {
        value: Text<'a>,
    },
}

#[derive(Serialize, Deserialize)]
enum BinConflict<'a> {
    PaidMeanwhile,
    AlreadyShipped,
    RefundAlreadyCompleted,
    RefundClosed,
    Other { detail: Text<'a> },
}

#[derive(Serialize, Deserialize)]
struct BinChannelError<'a> {
    class: BinErrorClass<'a>,
    code: Option<Text<'a>>,
    sub_code: Option<Text<'a>>,
    message: Text<'a>,
}

#[derive(Serialize, Deserialize)]
enum BinErrorClass<'a> {
    Retryable {
        wait_ms: Option<u64>,
        applied: Applied,
    },
    AlreadyDone,
    Conflict(BinConflict<'a>),
    Permanent(PermanentReason),
}

#[derive(Serialize, Deserialize)]
enum BinOrderState<'a> {
    PendingPay,
    Paid,
    Refunding { refund_id: Cow<'a, RefundId> },
    Cancelled,
    Refunded { refund_id: Cow<'a, RefundId> },
}

#[derive(Serialize, Deserialize)]
enum BinRefundState<'a> {
    Requested,
    Withdrawn,
    Completed,
    Refused { reason: Option<Text<'a>> },
}

#[derive(Serialize, Deserialize)]
enum BinObservation<'a> {
    Order {
        order: Cow<'a, OrderRef>,
        state: BinOrderState<'a>,
        upstream: Text<'a>,
    },
    Refund {
        order: Cow<'a, OrderRef>,
        refund_id: Cow<'a, RefundId>,
        state: BinRefundState<'a>,
        upstream: Text<'a>,
    },
}

#[derive(Serialize, Deserialize)]
enum BinSagaOutcome<'a> {
    Completed {
        order: BinOrderState<'a>,
        note: Option<Text<'a>>,
    },
    Failed {
        reason: Text<'a>,
    },
    Aborted {
        compensated: bool,
        reason: Text<'a>,
    },
}

/// Append the binary form of `entry` (version byte included) to `out`.
pub(super) fn encode_into(entry: &Entry, out: &mut Vec<u8>) {
    out.push(BINARY_VERSION);
    let bin = BinEntry {
        at_ms: entry.at_ms,
        record: record_to_bin(&entry.record),
    };
    // Serialising into a Vec cannot fail for these types (no sequences of
    // unknown length, no I/O): a failure is a programming error here.
    let taken = std::mem::take(out);
    *out = postcard::to_extend(&bin, taken)
        .unwrap_or_else(|e| unreachable!("binary record serialisation cannot fail: {e}"));
}

/// Decode the bytes after the version byte into `(at_ms, record)`. The error
/// says what was wrong, for [`crate::JournalError::Corrupt`].
pub(super) fn decode_body(body: &[u8]) -> Result<(u64, Record), String> {
    let (bin, rest) = postcard::take_from_bytes::<BinEntry<'_>>(body)
        .map_err(|e| format!("binary record unreadable: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "binary record has {} trailing bytes after its end",
            rest.len()
        ));
    }
    Ok((bin.at_ms, record_from_bin(bin.record)?))
}

fn json_text(v: &serde_json::Value) -> Text<'static> {
    // Serialising a `Value` to a string cannot fail (its map keys are strings).
    Cow::Owned(
        serde_json::to_string(v)
            .unwrap_or_else(|e| unreachable!("JSON value serialisation cannot fail: {e}")),
    )
}

fn json_value(field: &str, text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("binary record: {field} is not JSON: {e}"))
}

fn record_to_bin(r: &Record) -> BinRecord<'_> {
    match r {
        Record::Started { input, by } => {
            let bin = BinInput {
                kind: Cow::Borrowed(&input.kind),
                order: Cow::Borrowed(&input.order),
                order_state: order_state_to_bin(&input.order_state),
                stock_lock: input.stock_lock.as_ref().map(Cow::Borrowed),
                reason: input.reason.as_deref().map(Cow::Borrowed),
                params: (!input.params.is_null()).then(|| json_text(&input.params)),
            };
            let by = by.as_deref().map(Cow::Borrowed);
            match &input.account {
                None => BinRecord::Started { input: bin, by },
                Some(account) => BinRecord::StartedFor {
                    input: bin,
                    by,
                    account: Cow::Borrowed(account),
                },
            }
        }
        Record::Intent { step, action } => BinRecord::Intent {
            step: *step,
            action: match action {
                Action::CancelUnpaid(a) => BinAction::CancelUnpaid {
                    order: Cow::Borrowed(&a.order),
                },
                Action::CancelPaid(a) => BinAction::CancelPaid {
                    order: Cow::Borrowed(&a.order),
                },
                Action::WithdrawRefund(a) => BinAction::WithdrawRefund {
                    order: Cow::Borrowed(&a.order),
                    refund_id: Cow::Borrowed(&a.refund_id),
                },
                Action::ReleaseStock(a) => BinAction::ReleaseStock {
                    lock: Cow::Borrowed(&a.lock),
                },
                Action::Custom(a) => BinAction::Custom {
                    name: Cow::Borrowed(&a.name),
                    payload: json_text(&a.payload),
                },
            },
        },
        Record::Outcome {
            step,
            outcome,
            via,
            attempts,
        } => BinRecord::Outcome {
            step: *step,
            outcome: outcome_to_bin(outcome),
            via: *via,
            attempts: *attempts,
        },
        Record::Observed { observation, via } => BinRecord::Observed {
            observation: match observation {
                Observation::Order { order, status } => BinObservation::Order {
                    order: Cow::Borrowed(order),
                    state: order_state_to_bin(&status.state),
                    upstream: Cow::Borrowed(&status.upstream),
                },
                Observation::Refund {
                    order,
                    refund_id,
                    status,
                } => BinObservation::Refund {
                    order: Cow::Borrowed(order),
                    refund_id: Cow::Borrowed(refund_id),
                    state: match &status.state {
                        RefundState::Requested => BinRefundState::Requested,
                        RefundState::Withdrawn => BinRefundState::Withdrawn,
                        RefundState::Completed => BinRefundState::Completed,
                        RefundState::Refused { reason } => BinRefundState::Refused {
                            reason: reason.as_deref().map(Cow::Borrowed),
                        },
                    },
                    upstream: Cow::Borrowed(&status.upstream),
                },
            },
            via: *via,
        },
        Record::Switched { to, reason } => BinRecord::Switched {
            to: Cow::Borrowed(to),
            reason: Cow::Borrowed(reason),
        },
        Record::AbortRequested { reason, by } => BinRecord::AbortRequested {
            reason: Cow::Borrowed(reason),
            by: by.as_deref().map(Cow::Borrowed),
        },
        Record::Resumed { by } => BinRecord::Resumed {
            by: Cow::Borrowed(by),
        },
        Record::Resolved {
            step,
            outcome,
            operator,
            reason,
        } => BinRecord::Resolved {
            step: *step,
            outcome: outcome.as_ref().map(outcome_to_bin),
            operator: Cow::Borrowed(operator),
            reason: Cow::Borrowed(reason),
        },
        Record::Stuck { reason } => BinRecord::Stuck {
            reason: Cow::Borrowed(reason),
        },
        Record::Deferred {
            step,
            until_ms,
            reason,
        } => BinRecord::Deferred {
            step: *step,
            until_ms: *until_ms,
            reason: Cow::Borrowed(reason),
        },
        Record::Finished { outcome } => BinRecord::Finished {
            outcome: match outcome {
                SagaOutcome::Completed { order, note } => BinSagaOutcome::Completed {
                    order: order_state_to_bin(order),
                    note: note.as_deref().map(Cow::Borrowed),
                },
                SagaOutcome::Failed { reason } => BinSagaOutcome::Failed {
                    reason: Cow::Borrowed(reason),
                },
                SagaOutcome::Aborted {
                    compensated,
                    reason,
                } => BinSagaOutcome::Aborted {
                    compensated: *compensated,
                    reason: Cow::Borrowed(reason),
                },
            },
        },
    }
}

fn order_state_to_bin(s: &OrderState) -> BinOrderState<'_> {
    match s {
        OrderState::PendingPay => BinOrderState::PendingPay,
        OrderState::Paid => BinOrderState::Paid,
        OrderState::Refunding { refund_id } => BinOrderState::Refunding {
            refund_id: Cow::Borrowed(refund_id),
        },
        OrderState::Cancelled => BinOrderState::Cancelled,
        OrderState::Refunded { refund_id } => BinOrderState::Refunded {
            refund_id: Cow::Borrowed(refund_id),
        },
    }
}

fn order_state_from_bin(s: BinOrderState<'_>) -> OrderState {
    match s {
        BinOrderState::PendingPay => OrderState::PendingPay,
        BinOrderState::Paid => OrderState::Paid,
        BinOrderState::Refunding { refund_id } => OrderState::Refunding {
            refund_id: refund_id.into_owned(),
        },
        BinOrderState::Cancelled => OrderState::Cancelled,
        BinOrderState::Refunded { refund_id } => OrderState::Refunded {
            refund_id: refund_id.into_owned(),
        },
    }
}

fn conflict_to_bin(c: &Conflict) -> BinConflict<'_> {
    match c {
        Conflict::PaidMeanwhile => BinConflict::PaidMeanwhile,
        Conflict::AlreadyShipped => BinConflict::AlreadyShipped,
        Conflict::RefundAlreadyCompleted => BinConflict::RefundAlreadyCompleted,
        Conflict::RefundClosed => BinConflict::RefundClosed,
        Conflict::Other { detail } => BinConflict::Other {
            detail: Cow::Borrowed(detail),
        },
    }
}

fn conflict_from_bin(c: BinConflict<'_>) -> Conflict {
    match c {
        BinConflict::PaidMeanwhile => Conflict::PaidMeanwhile,
        BinConflict::AlreadyShipped => Conflict::AlreadyShipped,
        BinConflict::RefundAlreadyCompleted => Conflict::RefundAlreadyCompleted,
        BinConflict::RefundClosed => Conflict::RefundClosed,
        BinConflict::Other { detail } => Conflict::Other {
            detail: detail.into_owned(),
        },
    }
}

fn outcome_to_bin(o: &StepOutcome) -> BinOutcome<'_> {
    match o {
        StepOutcome::Cancelled { already } => BinOutcome::Cancelled { already: *already },
        StepOutcome::RefundOpened { refund_id } => BinOutcome::RefundOpened {
            refund_id: Cow::Borrowed(refund_id),
        },
        StepOutcome::RefundWithdrawn { already } => {
            BinOutcome::RefundWithdrawn { already: *already }
        }
        StepOutcome::StockReleased { already } => BinOutcome::StockReleased { already: *already },
        StepOutcome::Conflict { conflict, message } => BinOutcome::Conflict {
            conflict: conflict_to_bin(conflict),
            message: Cow::Borrowed(message),
        },
        StepOutcome::Failed { error } => BinOutcome::Failed {
            error: BinChannelError {
                class: match &error.class {
                    ErrorClass::Retryable { wait_ms, applied } => BinErrorClass::Retryable {
                        wait_ms: *wait_ms,
                        applied: *applied,
                    },
                    ErrorClass::AlreadyDone => BinErrorClass::AlreadyDone,
                    ErrorClass::Conflict(c) => BinErrorClass::Conflict(conflict_to_bin(c)),
                    ErrorClass::Permanent(p) => BinErrorClass::Permanent(p.clone()),
                },
                code: error.code.as_deref().map(Cow::Borrowed),
                sub_code: error.sub_code.as_deref().map(Cow::Borrowed),
                message: Cow::Borrowed(&error.message),
            },
        },
        StepOutcome::Custom { value } => BinOutcome::Custom {
            value: json_text(value),
        },
    }
}

fn outcome_from_bin(o: BinOutcome<'_>) -> Result<StepOutcome, String> {
    Ok(match o {
        BinOutcome::Cancelled { already } => StepOutcome::Cancelled { already },
        BinOutcome::RefundOpened { refund_id } => StepOutcome::RefundOpened {
            refund_id: refund_id.into_owned(),
        },
        BinOutcome::RefundWithdrawn { already } => StepOutcome::RefundWithdrawn { already },
        BinOutcome::StockReleased { already } => StepOutcome::StockReleased { already },
        BinOutcome::Conflict { conflict, message } => StepOutcome::Conflict {
            conflict: conflict_from_bin(conflict),
            message: message.into_owned(),
        },
        BinOutcome::Failed { error } => StepOutcome::Failed {
            error: ChannelError {
                class: match error.class {
                    BinErrorClass::Retryable { wait_ms, applied } => {
                        ErrorClass::Retryable { wait_ms, applied }
                    }
                    BinErrorClass::AlreadyDone => ErrorClass::AlreadyDone,
                    BinErrorClass::Conflict(c) => ErrorClass::Conflict(conflict_from_bin(c)),
                    BinErrorClass::Permanent(p) => ErrorClass::Permanent(p),
                },
                code: error.code.map(Cow::into_owned),
                sub_code: error.sub_code.map(Cow::into_owned),
                message: error.message.into_owned(),
            },
        },
        BinOutcome::Custom { value } => StepOutcome::Custom {
            value: json_value("the custom outcome's value", &value)?,
        },
    })
}

fn input_from_bin(input: BinInput<'_>, account: Option<AccountId>) -> Result<SagaInput, String> {
    Ok(SagaInput {
        kind: input.kind.into_owned(),
        order: input.order.into_owned(),
        account,
        order_state: order_state_from_bin(input.order_state),
        stock_lock: input.stock_lock.map(Cow::into_owned),
        reason: input.reason.map(Cow::into_owned),
        params: match input.params {
            None => serde_json::Value::Null,
            Some(text) => json_value("the saga's params", &text)?,
        },
    })
}

fn record_from_bin(r: BinRecord<'_>) -> Result<Record, String> {
    Ok(match r {
        BinRecord::Started { input, by } => Record::Started {
            input: input_from_bin(input, None)?,
            by: by.map(Cow::into_owned),
        },
        BinRecord::StartedFor { input, by, account } => Record::Started {
            input: input_from_bin(input, Some(account.into_owned()))?,
            by: by.map(Cow::into_owned),
        },
        BinRecord::Intent { step, action } => Record::Intent {
            step,
            action: match action {
                BinAction::CancelUnpaid { order } => Action::CancelUnpaid(CancelUnpaid {
                    order: order.into_owned(),
                }),
                BinAction::CancelPaid { order } => Action::CancelPaid(CancelPaid {
                    order: order.into_owned(),
                }),
                BinAction::WithdrawRefund { order, refund_id } => {
                    Action::WithdrawRefund(WithdrawRefund {
                        order: order.into_owned(),
                        refund_id: refund_id.into_owned(),
                    })
                }
                BinAction::ReleaseStock { lock } => Action::ReleaseStock(ReleaseStock {
                    lock: lock.into_owned(),
                }),
                BinAction::Custom { name, payload } => Action::Custom(Custom {
                    name: name.into_owned(),
                    payload: json_value("the custom step's payload", &payload)?,
                }),
            },
        },
        BinRecord::Outcome {
            step,
            outcome,
            via,
            attempts,
        } => Record::Outcome {
            step,
            outcome: outcome_from_bin(outcome)?,
            via,
            attempts,
        },
        BinRecord::Observed { observation, via } => Record::Observed {
            observation: match observation {
                BinObservation::Order {
                    order,
                    state,
                    upstream,
                } => Observation::Order {
                    order: order.into_owned(),
                    status: OrderStatus {
                        state: order_state_from_bin(state),
                        upstream: upstream.into_owned(),
                    },
                },
                BinObservation::Refund {
                    order,
                    refund_id,
                    state,
                    upstream,
                } => Observation::Refund {
                    order: order.into_owned(),
                    refund_id: refund_id.into_owned(),
                    status: RefundStatus {
                        state: match state {
                            BinRefundState::Requested => RefundState::Requested,
                            BinRefundState::Withdrawn => RefundState::Withdrawn,
                            BinRefundState::Completed => RefundState::Completed,
                            BinRefundState::Refused { reason } => RefundState::Refused {
                                reason: reason.map(Cow::into_owned),
                            },
                        },
                        upstream: upstream.into_owned(),
                    },
                },
            },
            via,
        },
        BinRecord::Switched { to, reason } => Record::Switched {
            to: to.into_owned(),
            reason: reason.into_owned(),
        },
        BinRecord::AbortRequested { reason, by } => Record::AbortRequested {
            reason: reason.into_owned(),
            by: by.map(Cow::into_owned),
        },
        BinRecord::Resumed { by } => Record::Resumed {
            by: by.into_owned(),
        },
        BinRecord::Resolved {
            step,
            outcome,
            operator,
            reason,
        } => Record::Resolved {
            step,
            outcome: outcome.map(outcome_from_bin).transpose()?,
            operator: operator.into_owned(),
            reason: reason.into_owned(),
        },
        BinRecord::Stuck { reason } => Record::Stuck {
            reason: reason.into_owned(),
        },
        BinRecord::Deferred {
            step,
            until_ms,
            reason,
        } => Record::Deferred {
            step,
            until_ms,
            reason: reason.into_owned(),
        },
        BinRecord::Finished { outcome } => Record::Finished {
            outcome: match outcome {
                BinSagaOutcome::Completed { order, note } => SagaOutcome::Completed {
                    order: order_state_from_bin(order),
                    note: note.map(Cow::into_owned),
                },
                BinSagaOutcome::Failed { reason } => SagaOutcome::Failed {
                    reason: reason.into_owned(),
                },
                BinSagaOutcome::Aborted {
                    compensated,
                    reason,
                } => SagaOutcome::Aborted {
                    compensated,
                    reason: reason.into_owned(),
                },
            },
        },
    })
}
