//! Proptest of the journal record decoder — the same property as the
//! `journal_record_decode` fuzz target, run by CI on stable: any bytes give a
//! typed result (never a panic), and whatever decodes re-encodes to the same
//! entry. The channel parsers' proptests live in their own crates
//! (`rescind-channel-top/tests/envelope_fuzz.rs`, the PandaPon crate's
//! envelope and callback proptests).

use proptest::prelude::*;
use rescind_core::record::{
    decode, encode, encode_json, JSON_RECORD_VERSION, RECORD_FORMAT_VERSION,
};
use rescind_core::{
    Action, Entry, JournalError, OrderRef, Record, RefundId, SagaId, SagaInput, StepOutcome, Via,
};

fn sid() -> SagaId {
    SagaId::from_u128(7)
}

fn samples() -> Vec<Vec<u8>> {
    let order = OrderRef::new("tmall-tbc", "1231231");
    let records = [
        Record::Started {
            input: SagaInput::cancel_paid(order.clone()).with_reason("buyer asked"),
            by: None,
        },
        Record::Intent {
            step: 0,
            action: Action::CancelPaid(rescind_core::action::CancelPaid {
                order: order.clone(),
            }),
        },
        Record::Outcome {
            step: 0,
            outcome: StepOutcome::RefundOpened {
                refund_id: RefundId("RT000001".into()),
            },
            via: Via::Lookup,
            attempts: 3,
        },
    ];
    // The binary form (what journals write) and the JSON form (what older
    // journals hold) of each record.
    records
        .into_iter()
        .enumerate()
        .flat_map(|(i, record)| {
            let entry = Entry {
                seq: i as u64,
                at_ms: 1_762_189_240_000,
                record,
            };
            [encode(&entry), encode_json(&entry)]
        })
        .collect()
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match decode(sid(), 3, bytes) {
        Ok(entry) => {
            prop_assert_eq!(entry.seq, 3);
            let again = decode(sid(), 3, &encode(&entry));
            prop_assert_eq!(again.as_ref().ok(), Some(&entry));
        }
        Err(JournalError::Corrupt { saga, seq, .. }) => {
            prop_assert_eq!((saga, seq), (sid(), 3));
        }
        Err(JournalError::UnsupportedVersion {
            saga,
            seq,
            found,
            supported,
        }) => {
            prop_assert_eq!((saga, seq, supported), (sid(), 3, RECORD_FORMAT_VERSION));
            prop_assert!(found == 0 || found > RECORD_FORMAT_VERSION);
        }
        Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_decode_to_a_typed_result(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn mutated_records_decode_to_a_typed_result(
        which in 0usize..6,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
    ) {
        let mut bytes = samples()[which].clone();
        for (at, b) in edits {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        check(&bytes)?;
    }

    #[test]
    fn versions_other_than_ours_are_refused_by_number(v in any::<u16>()) {
        // A JSON record (format 1) with its `v` changed.
        let good = String::from_utf8(samples()[3].clone()).expect("utf-8");
        let bytes = good.replacen(&format!("\"v\":{JSON_RECORD_VERSION}"), &format!("\"v\":{v}"), 1);
        let r = decode(sid(), 3, bytes.as_bytes());
        if v == JSON_RECORD_VERSION {
            prop_assert!(r.is_ok());
        } else if v == RECORD_FORMAT_VERSION {
            // The binary encoding's version: no JSON record can claim it.
            prop_assert!(matches!(r, Err(JournalError::Corrupt { .. })), "{:?}", r);
        } else if v == 0 || v > RECORD_FORMAT_VERSION {
            let refused = matches!(r, Err(JournalError::UnsupportedVersion { found, .. }) if found == v);
            prop_assert!(refused);
        }
    }
}
