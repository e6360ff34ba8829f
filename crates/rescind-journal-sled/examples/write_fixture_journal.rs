//! Writes a small sled journal with finished and unfinished sagas, in
//! whatever record encoding this build writes.
//!
//! `tests/fixtures/json-v1/` was made with this program at commit d54f3ea,
//! before the binary record encoding existed, so every record in it is JSON
//! (record format 1); `tests/json_fixture.rs` opens a copy of it with the
//! current code, recovers and finishes its sagas. Run:
//!
//! ```sh
//! cargo run -p rescind-journal-sled --example write_fixture_journal -- DIR
//! ```

use rescind_core::action::{CancelPaid, CancelUnpaid, Custom};
use rescind_core::{
    Action, Entry, Journal, OrderRef, Record, RefundId, SagaId, SagaInput, SagaOutcome,
    StepOutcome, Via,
};
use rescind_journal_sled::{SledConfig, SledJournal};
use serde_json::json;

/// Fixed clock value of the records.
const AT_MS: u64 = 1_762_189_240_000;

async fn put(j: &SledJournal, saga: SagaId, records: Vec<Record>) {
    for (seq, record) in records.into_iter().enumerate() {
        let entry = Entry {
            seq: seq as u64,
            at_ms: AT_MS + seq as u64,
            record,
        };
        j.append(saga, &entry).await.expect("append");
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: write_fixture_journal DIR");
    let j = SledJournal::open(&dir, SledConfig::default())
        .await
        .expect("open");

    // 1. An unpaid cancel whose call is in doubt (intent, no outcome).
    let unpaid = OrderRef::new("fixture", "1001");
    put(
        &j,
        SagaId::from_u128(1),
        vec![
            Record::Started {
                input: SagaInput::cancel_unpaid(unpaid.clone()).with_reason("buyer asked"),
                by: Some("cli".into()),
            },
            Record::Intent {
                step: 0,
                action: Action::CancelUnpaid(CancelUnpaid { order: unpaid }),
            },
        ],
    )
    .await;

    // 2. A paid cancel parked waiting for the refund it opened.
    let paid = OrderRef::new("fixture", "1002");
    put(
        &j,
        SagaId::from_u128(2),
        vec![
            Record::Started {
                input: SagaInput::cancel_paid(paid.clone()),
                by: None,
            },
            Record::Intent {
                step: 0,
                action: Action::CancelPaid(CancelPaid {
                    order: paid.clone(),
                }),
            },
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::RefundOpened {
                    refund_id: RefundId("R1002".into()),
                },
                via: Via::Reply,
                attempts: 1,
            },
        ],
    )
    .await;

    // 3. A custom two-step saga with floats in its params, payload and value;
    //    step 0 done, step 1 in doubt.
    let custom = OrderRef::new("fixture", "1003");
    put(
        &j,
        SagaId::from_u128(3),
        vec![
            Record::Started {
                input: SagaInput::custom(
                    "fixture_two_steps",
                    custom,
                    json!({"tiny": 1e-24, "price": 0.1, "big": 18446744073709551615u64}),
                ),
                by: Some("api".into()),
            },
            Record::Intent {
                step: 0,
                action: Action::Custom(Custom {
                    name: "fixture_step".into(),
                    payload: json!({"n": 0, "x": 1e-24}),
                }),
            },
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::Custom {
                    value: json!({"echo": 1e-24, "ratio": 0.30000000000000004}),
                },
                via: Via::Reply,
                attempts: 2,
            },
            Record::Intent {
                step: 1,
                action: Action::Custom(Custom {
                    name: "fixture_step".into(),
                    payload: json!({"n": 1, "x": 1e-24}),
                }),
            },
        ],
    )
    .await;

    // 4. A finished unpaid cancel.
    let done = OrderRef::new("fixture", "1004");
    let finished = SagaId::from_u128(4);
    put(
        &j,
        finished,
        vec![
            Record::Started {
                input: SagaInput::cancel_unpaid(done.clone()),
                by: None,
            },
            Record::Intent {
                step: 0,
                action: Action::CancelUnpaid(CancelUnpaid { order: done }),
            },
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::Cancelled { already: false },
                via: Via::Reply,
                attempts: 1,
            },
            Record::Finished {
                outcome: SagaOutcome::Completed {
                    order: rescind_core::OrderState::Cancelled,
                    note: None,
                },
            },
        ],
    )
    .await;
    j.mark_finished(finished).await.expect("mark finished");
    j.close().await.expect("close");
    println!("wrote {dir}");
}
