//! Journal records: the versioned, serde-encoded protocol every journal stores.
//!
//! A saga's state is the fold of its records ([`crate::saga::SagaState::apply`]).
//! Journals store each record as the bytes of [`encode`]. Two encodings exist,
//! told apart by the first byte (`docs/journal-format.md`):
//!
//! - **format 2, binary** (what [`encode`] writes): the byte
//!   [`RECORD_FORMAT_VERSION`] (`0x02`), then the record in
//!   [postcard](https://docs.rs/postcard), free-form JSON values carried as
//!   their JSON text;
//! - **format 1, JSON** (what earlier releases wrote, still read): a JSON
//!   object starting with `{`, with the version in its `v` field
//!   ([`encode_json`] still writes it, for tests and tools).
//!
//! [`decode`] reads both and refuses a newer version with a typed error
//! naming the saga and sequence instead of guessing. Either way a record
//! decodes to exactly what was encoded, floats in JSON values included
//! (serde_json's `float_roundtrip`).

mod binary;

pub use crate::action::{Action, StepOutcome, Via};
use crate::channel::{OrderStatus, RefundStatus};
use crate::ids::{AccountId, OrderRef, RefundId, SagaId, SagaKind, StockLockRef};
use crate::journal::JournalError;
use crate::machine::OrderState;
use serde::{Deserialize, Serialize};

/// The record format version this build writes (the binary encoding) and
/// the newest it reads.
pub const RECORD_FORMAT_VERSION: u16 = binary::BINARY_VERSION as u16;

/// The version of the JSON encoding (record format 1): what a JSON record's
/// `v` must say. Still read; written only by [`encode_json`].
pub const JSON_RECORD_VERSION: u16 = 1;

/// The highest first byte that can be a binary record's version: versions of
/// the binary encoding stay below `{` (`0x7B`), the first byte of a JSON
/// record. A first byte above this (and not `{`) is not a record at all.
const BINARY_VERSION_MAX: u8 = 0x3F;

/// What a saga was asked to do. Journaled in [`Record::Started`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaInput {
    /// Which saga definition runs it (`cancel_unpaid`, `cancel_paid`,
    /// `withdraw_refund`, or a user-registered kind).
    pub kind: SagaKind,
    /// The order concerned.
    pub order: OrderRef,
    /// The account (shop, seller) the saga acts for; its credentials are
    /// resolved at call time. `None` where the channel has one account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountId>,
    /// The order's state as the backend believes it at the start.
    pub order_state: OrderState,
    /// A stock lock to release after the cancel (Damai), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_lock: Option<StockLockRef>,
    /// A reason sent upstream where the channel takes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Free parameters for user-defined sagas.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
}

impl SagaInput {
    fn new(kind: &str, order: OrderRef, order_state: OrderState) -> Self {
        SagaInput {
            kind: SagaKind(kind.to_owned()),
            order,
            account: None,
            order_state,
            stock_lock: None,
            reason: None,
            params: serde_json::Value::Null,
        }
    }
    /// Cancel an unpaid order (switches to a paid cancel if the buyer pays meanwhile).
    pub fn cancel_unpaid(order: OrderRef) -> Self {
        Self::new(crate::ids::CANCEL_UNPAID, order, OrderState::PendingPay)
    }
    /// Cancel a paid order: open a refund and wait for it to complete.
    pub fn cancel_paid(order: OrderRef) -> Self {
        Self::new(crate::ids::CANCEL_PAID, order, OrderState::Paid)
    }
    /// Withdraw an open refund, returning the order to Paid.
    pub fn withdraw_refund(order: OrderRef, refund_id: RefundId) -> Self {
        Self::new(
            crate::ids::WITHDRAW_REFUND,
            order,
            OrderState::Refunding { refund_id },
        )
    }
    /// A user-defined saga kind.
    pub fn custom(kind: impl Into<SagaKind>, order: OrderRef, params: serde_json::Value) -> Self {
        let mut input = Self::new("", order, OrderState::PendingPay);
        input.kind = kind.into();
        input.params = params;
        input
    }
    /// Release this stock lock once the order is cancelled or refunded.
    pub fn with_stock_lock(mut self, lock: StockLockRef) -> Self {
        self.stock_lock = Some(lock);
        self
    }
    /// Act for this account (shop); its credentials are used for every call.
    pub fn with_account(mut self, account: impl Into<AccountId>) -> Self {
        self.account = Some(account.into());
        self
    }
    /// Send this reason upstream.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Override the order state the backend believes.
    pub fn with_order_state(mut self, state: OrderState) -> Self {
        self.order_state = state;
        self
    }
}

/// Something observed about the order or refund outside a step's own reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "observed", rename_all = "snake_case")]
pub enum Observation {
    /// The order's status.
    Order {
        /// The order.
        order: OrderRef,
        /// Its status.
        status: OrderStatus,
    },
    /// A refund's status.
    Refund {
        /// The order.
        order: OrderRef,
        /// The refund.
        refund_id: RefundId,
        /// Its status.
        status: RefundStatus,
    },
}

/// How a saga ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SagaOutcome {
    /// The saga reached its goal; the order ends in `order`.
    Completed {
        /// The order's final state.
        order: OrderState,
        /// Anything an operator should know (e.g. "abort came too late").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The saga could not reach its goal.
    Failed {
        /// Why, in words.
        reason: String,
    },
    /// An operator aborted it.
    Aborted {
        /// Whether compensation ran (e.g. the opened refund was withdrawn).
        compensated: bool,
        /// The operator's reason.
        reason: String,
    },
}

impl SagaOutcome {
    /// `completed`, `failed` or `aborted`.
    pub fn label(&self) -> &'static str {
        match self {
            SagaOutcome::Completed { .. } => "completed",
            SagaOutcome::Failed { .. } => "failed",
            SagaOutcome::Aborted { .. } => "aborted",
        }
    }
}

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The saga was started (always sequence 0).
    Started {
        /// What it was asked to do.
        input: SagaInput,
        /// Who started it (the API token's name, `cli`...), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// The engine is about to perform `action` as step `step` (write-ahead).
    Intent {
        /// Step number, from 0.
        step: u32,
        /// The action.
        action: Action,
    },
    /// The outcome of step `step`.
    Outcome {
        /// Step number.
        step: u32,
        /// What it achieved.
        outcome: StepOutcome,
        /// How we learned it.
        #[serde(default)]
        via: Via,
        /// How many attempts the step took (retries + 1).
        #[serde(default)]
        attempts: u32,
    },
    /// Something observed while waiting (poll or callback).
    Observed {
        /// What was seen.
        observation: Observation,
        /// How.
        via: Via,
    },
    /// The saga switched plan (e.g. the unpaid cancel found the order paid).
    Switched {
        /// The plan it continues as.
        to: crate::ids::SagaKind,
        /// Why.
        reason: String,
    },
    /// An operator asked to abort.
    AbortRequested {
        /// The operator's reason.
        reason: String,
        /// Who asked, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// An operator resumed the stuck saga (journaled before it runs again).
    Resumed {
        /// Who.
        by: String,
    },
    /// An operator resolved the in-doubt step `step` by hand (`journal
    /// resolve`): with `outcome`, it took effect (folded like an
    /// [`Record::Outcome`] via [`Via::Operator`]); without, it did not, and
    /// the engine re-issues it without a lookup.
    Resolved {
        /// The in-doubt step.
        step: u32,
        /// What it achieved, when the operator says it was applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<StepOutcome>,
        /// Who resolved it.
        operator: String,
        /// Why: what they verified.
        reason: String,
    },
    /// The attempt at in-doubt step `step` was certainly not applied
    /// (nothing was sent: the channel's app key is banned or rate-limited)
    /// and the step waits until `until_ms` before it is sent again, without
    /// a task and without a lookup. Written before the saga parks, so a
    /// restart keeps the wait (and the other sagas on the same app key park
    /// the same way: a ban pauses them all).
    Deferred {
        /// The in-doubt step.
        step: u32,
        /// When it may be sent again (ms since the Unix epoch).
        until_ms: u64,
        /// What the channel said (the ban and its length), for operators.
        reason: String,
    },
    /// The saga cannot progress without help; it stays unfinished.
    Stuck {
        /// Why, for operators.
        reason: String,
    },
    /// The saga ended. The journal then marks it finished.
    Finished {
        /// How.
        outcome: SagaOutcome,
    },
}

impl Record {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Record::Started { .. } => "started",
            Record::Intent { .. } => "intent",
            Record::Outcome { .. } => "outcome",
            Record::Observed { .. } => "observed",
            Record::Switched { .. } => "switched",
            Record::AbortRequested { .. } => "abort_requested",
            Record::Resumed { .. } => "resumed",
            Record::Resolved { .. } => "resolved",
            Record::Deferred { .. } => "deferred",
            Record::Stuck { .. } => "stuck",
            Record::Finished { .. } => "finished",
        }
    }
}

/// A record with its place in the saga and its wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the saga's journal, from 0, without gaps.
    pub seq: u64,
    /// When it was written (ms since the Unix epoch, from the engine's clock).
    pub at_ms: u64,
    /// The record.
    pub record: Record,
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u16,
    at_ms: u64,
    #[serde(flatten)]
    record: &'a Record,
}

#[derive(Deserialize)]
struct WireVersion {
    v: u16,
}

#[derive(Deserialize)]
struct WireIn {
    at_ms: u64,
    #[serde(flatten)]
    record: Record,
}

/// Encode an entry's record as the bytes a journal stores: the binary
/// encoding (record format [`RECORD_FORMAT_VERSION`]).
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    binary::encode_into(entry, &mut out);
    out
}

/// Encode an entry as a JSON record (format [`JSON_RECORD_VERSION`], what
/// earlier releases wrote). Journals never write it any more; it is here for
/// tests and tools that need an old-format record.
pub fn encode_json(entry: &Entry) -> Vec<u8> {
    // Serialising our own types into a Vec cannot fail: no maps with non-string
    // keys, no I/O. A failure here is a programming error in this module.
    serde_json::to_vec(&WireOut {
        v: JSON_RECORD_VERSION,
        at_ms: entry.at_ms,
        record: &entry.record,
    })
    .unwrap_or_else(|e| unreachable!("record serialisation cannot fail: {e}"))
}

/// Decode stored bytes, binary (format 2) or JSON (format 1). Garbage is
/// [`JournalError::Corrupt`]; a newer format is
/// [`JournalError::UnsupportedVersion`]; both name saga and sequence.
pub fn decode(saga: SagaId, seq: u64, bytes: &[u8]) -> Result<Entry, JournalError> {
    let corrupt = |detail: String| JournalError::Corrupt { saga, seq, detail };
    let unsupported = |found: u16| JournalError::UnsupportedVersion {
        saga,
        seq,
        found,
        supported: RECORD_FORMAT_VERSION,
    };
    let (at_ms, record) = match bytes.first() {
        None => return Err(corrupt("empty record".into())),
        Some(b'{') => decode_json(bytes).map_err(|e| match e {
            JsonError::Version(v) => unsupported(v),
            JsonError::Corrupt(detail) => corrupt(detail),
        })?,
        Some(&b) if u16::from(b) == RECORD_FORMAT_VERSION => {
            binary::decode_body(&bytes[1..]).map_err(corrupt)?
        }
        Some(&b) if b != 0 && b <= BINARY_VERSION_MAX && u16::from(b) > RECORD_FORMAT_VERSION => {
            return Err(unsupported(u16::from(b)))
        }
        Some(&b) => {
            return Err(corrupt(format!(
                "unknown record encoding: first byte {b:#04x} is neither a binary \
                 record version nor the `{{` of a JSON record"
            )))
        }
    };
    Ok(Entry { seq, at_ms, record })
}

enum JsonError {
    Version(u16),
    Corrupt(String),
}

fn decode_json(bytes: &[u8]) -> Result<(u64, Record), JsonError> {
    let version: WireVersion = serde_json::from_slice(bytes)
        .map_err(|e| JsonError::Corrupt(format!("record header unreadable: {e}")))?;
    if version.v == RECORD_FORMAT_VERSION {
        return Err(JsonError::Corrupt(format!(
            "a JSON record claims version {}, which is binary only",
            version.v
        )));
    }
    if version.v != JSON_RECORD_VERSION {
        return Err(JsonError::Version(version.v));
    }
    let wire: WireIn = serde_json::from_slice(bytes)
        .map_err(|e| JsonError::Corrupt(format!("record body unreadable: {e}")))?;
    Ok((wire.at_ms, wire.record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid() -> SagaId {
        SagaId::from_u128(7)
    }

    #[test]
    fn round_trip_every_record_kind() {
        let order = OrderRef::new("tmall-tbc", "1231231");
        let records = vec![
            Record::Started {
                input: SagaInput::cancel_unpaid(order.clone())
                    .with_stock_lock(StockLockRef::new("damai", "12345")),
                by: Some("ops".into()),
            },
            Record::Started {
                input: SagaInput::cancel_paid(order.clone()).with_account("shop-7 旗舰店"),
                by: None,
            },
            Record::Intent {
                step: 0,
                action: Action::CancelUnpaid(crate::action::CancelUnpaid {
                    order: order.clone(),
                }),
            },
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::Conflict {
                    conflict: crate::channel::Conflict::PaidMeanwhile,
                    message: "paid".into(),
                },
                via: Via::Lookup,
                attempts: 3,
            },
            Record::Switched {
                to: SagaKind("cancel_paid".into()),
                reason: "paid".into(),
            },
            Record::AbortRequested {
                reason: "ops".into(),
                by: Some("ops".into()),
            },
            Record::Resumed { by: "ops".into() },
            Record::Resolved {
                step: 0,
                outcome: Some(StepOutcome::Cancelled { already: false }),
                operator: "ops".into(),
                reason: "checked in the seller console".into(),
            },
            Record::Deferred {
                step: 1,
                until_ms: 1_700_000_012_000,
                reason: "TOP app key banned for 12000 more ms".into(),
            },
            Record::Stuck { reason: "x".into() },
            Record::Finished {
                outcome: SagaOutcome::Aborted {
                    compensated: true,
                    reason: "ops".into(),
                },
            },
        ];
        for (i, record) in records.into_iter().enumerate() {
            let e = Entry {
                seq: i as u64,
                at_ms: 1_700_000_000_000 + i as u64,
                record,
            };
            let bytes = encode(&e);
            assert_eq!(bytes[0], 2, "binary records start with their version");
            assert_eq!(decode(sid(), e.seq, &bytes).unwrap(), e);
            let json = encode_json(&e);
            assert_eq!(json[0], b'{');
            assert_eq!(decode(sid(), e.seq, &json).unwrap(), e);
            assert!(
                bytes.len() < json.len(),
                "binary {} bytes, JSON {} bytes",
                bytes.len(),
                json.len()
            );
        }
    }

    fn outcome_value(value: serde_json::Value) -> Entry {
        Entry {
            seq: 0,
            at_ms: 0,
            record: Record::Outcome {
                step: 0,
                outcome: StepOutcome::Custom { value },
                via: Via::Reply,
                attempts: 0,
            },
        }
    }

    /// Issue 18's input: without serde_json's `float_roundtrip` it decoded to
    /// 1.0000000000000001e-24, which re-encodes and decodes to 1e-24.
    #[test]
    fn a_float_in_a_json_record_decodes_exactly() {
        let bytes = br#"{"v":1,"at_ms":0,"type":"outcome","step":0,"outcome":{"outcome":"custom","value":1e-24}}"#;
        let entry = decode(sid(), 0, bytes).unwrap();
        assert_eq!(entry, outcome_value(serde_json::json!(1e-24_f64)));
        match &entry.record {
            Record::Outcome {
                outcome: StepOutcome::Custom { value },
                ..
            } => assert_eq!(value.as_f64().map(f64::to_bits), Some(1e-24_f64.to_bits())),
            other => panic!("expected a custom outcome, got {other:?}"),
        }
        assert_eq!(decode(sid(), 0, &encode(&entry)).unwrap(), entry);
        assert_eq!(decode(sid(), 0, &encode_json(&entry)).unwrap(), entry);
    }

    #[test]
    fn binary_versions_above_ours_are_refused_by_number() {
        let mut bytes = encode(&outcome_value(serde_json::json!(1)));
        for v in [3u8, 0x3F] {
            bytes[0] = v;
            match decode(sid(), 5, &bytes) {
                Err(JournalError::UnsupportedVersion {
                    saga, seq, found, ..
                }) => assert_eq!((saga, seq, found), (sid(), 5, u16::from(v))),
                other => panic!("expected UnsupportedVersion for {v}, got {other:?}"),
            }
        }
    }

    #[test]
    fn bad_binary_records_are_corrupt_and_say_why() {
        let good = encode(&outcome_value(serde_json::json!({"a": [1, 2.5]})));
        let mut trailing = good.clone();
        trailing.push(0);
        // version 2, at_ms 0, Outcome (variant 2), step 0, Custom (variant 6),
        // a value whose JSON text is `"x` (2 bytes: not JSON), via, attempts.
        let not_json = vec![2, 0, 2, 0, 6, 2, b'"', b'x', 0, 0];
        let mut as_json = not_json.clone();
        as_json[5] = 3;
        as_json.insert(8, b'"');
        assert_eq!(
            decode(sid(), 0, &as_json).unwrap(),
            outcome_value(serde_json::json!("x")),
            "the layout this test assumes"
        );
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 1].to_vec(), "binary record unreadable"),
            (trailing, "trailing bytes"),
            (not_json, "not JSON"),
            (vec![0x00, 1, 2], "unknown record encoding"),
            (vec![0x01], "unknown record encoding"),
            (vec![0x80], "first byte 0x80"),
            (vec![], "empty record"),
            (
                br#"{"v":2,"at_ms":1,"type":"stuck","reason":"x"}"#.to_vec(),
                "binary only",
            ),
        ];
        for (bytes, want) in cases {
            match decode(sid(), 6, &bytes) {
                Err(e @ JournalError::Corrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(want), "{bytes:?}: {msg}");
                    assert!(
                        msg.contains(&sid().to_string()) && msg.contains("seq 6"),
                        "{msg}"
                    );
                }
                other => panic!("{bytes:?}: expected Corrupt, got {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Any finite float (and any integer) inside a free-form value comes
        /// back bit for bit, through either encoding, and again.
        #[test]
        fn floats_round_trip_exactly(f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO, i in proptest::prelude::any::<i64>(), u in proptest::prelude::any::<u64>()) {
            let entry = outcome_value(serde_json::json!({"f": f, "i": i, "u": u, "list": [f, -f]}));
            for bytes in [encode(&entry), encode_json(&entry)] {
                let back = decode(sid(), 0, &bytes).unwrap();
                proptest::prop_assert_eq!(&back, &entry);
                if let Record::Outcome { outcome: StepOutcome::Custom { value }, .. } = &back.record {
                    proptest::prop_assert_eq!(value["f"].as_f64().map(f64::to_bits), Some(f.to_bits()));
                }
                proptest::prop_assert_eq!(decode(sid(), 0, &encode(&back)).unwrap(), back);
            }
        }
    }

    #[test]
    fn newer_version_is_a_typed_error_naming_saga_and_seq() {
        let bytes = br#"{"v":9,"at_ms":1,"type":"stuck","reason":"x"}"#;
        match decode(sid(), 4, bytes) {
            Err(JournalError::UnsupportedVersion {
                saga,
                seq,
                found,
                supported,
            }) => {
                assert_eq!(
                    (saga, seq, found, supported),
                    (sid(), 4, 9, RECORD_FORMAT_VERSION)
                );
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn garbage_is_corrupt_naming_saga_and_seq() {
        for bytes in [
            &b""[..],
            b"\xff\x00",
            b"{\"v\":1}",
            b"{\"v\":1,\"at_ms\":1,\"type\":\"nope\"}",
        ] {
            match decode(sid(), 2, bytes) {
                Err(e @ JournalError::Corrupt { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(&sid().to_string()) && msg.contains("seq 2"),
                        "{msg}"
                    );
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
    }
}
