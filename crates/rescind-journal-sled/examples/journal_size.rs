//! Bytes on disk per saga: writes N CancelPaid sagas through the `Journal`
//! trait (256 writers, the default group commit) in a fresh journal, closes
//! it, and prints the directory's size per saga. Two shapes:
//!
//! - `parked`: Started, Intent (cancel_paid), Outcome (refund opened) — the
//!   saga waiting for its refund;
//! - `finished`: those, then Observed (refund completed, by a poll) and
//!   Finished (completed, order refunded) in one batch with the finish mark.
//!
//! ```sh
//! cargo run --release -p rescind-journal-sled --example journal_size -- 100000 [DIR]
//! ```

use rescind_core::action::CancelPaid;
use rescind_core::channel::RefundStatus;
use rescind_core::{
    Action, Entry, Journal, Observation, OrderRef, OrderState, Record, RefundId, RefundState,
    SagaId, SagaInput, SagaOutcome, StepOutcome, Via,
};
use rescind_journal_sled::{SledConfig, SledJournal};
use std::path::Path;
use std::sync::Arc;

fn dir_bytes(p: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(p).expect("read dir").flatten() {
        let md = e.metadata().expect("metadata");
        n += if md.is_dir() {
            dir_bytes(&e.path())
        } else {
            md.len()
        };
    }
    n
}

fn records(i: u64, finished: bool, at_ms: u64) -> (Vec<Entry>, Vec<Entry>) {
    let e = |seq, record| Entry { seq, at_ms, record };
    let order = OrderRef::new("pandapon-taobao", format!("TB{i:08}").as_str());
    let refund_id = RefundId::from(format!("RF{i:08}"));
    let parked = vec![
        e(
            0,
            Record::Started {
                input: SagaInput::cancel_paid(order.clone()),
                by: None,
            },
        ),
        e(
            1,
            Record::Intent {
                step: 0,
                action: Action::CancelPaid(CancelPaid {
                    order: order.clone(),
                }),
            },
        ),
        e(
            2,
            Record::Outcome {
                step: 0,
                outcome: StepOutcome::RefundOpened {
                    refund_id: refund_id.clone(),
                },
                via: Via::Reply,
                attempts: 1,
            },
        ),
    ];
    let last = if finished {
        vec![
            e(
                3,
                Record::Observed {
                    observation: Observation::Refund {
                        order,
                        refund_id: refund_id.clone(),
                        status: RefundStatus {
                            state: RefundState::Completed,
                            upstream: "SUCCESS".into(),
                        },
                    },
                    via: Via::Poll,
                },
            ),
            e(
                4,
                Record::Finished {
                    outcome: SagaOutcome::Completed {
                        order: OrderState::Refunded { refund_id },
                        note: None,
                    },
                },
            ),
        ]
    } else {
        Vec::new()
    };
    (parked, last)
}

async fn run(dir: &Path, n: u64, finished: bool) -> (u64, u64, u64) {
    let j = Arc::new(
        SledJournal::open(dir, SledConfig::default())
            .await
            .expect("open"),
    );
    let mut tasks = Vec::new();
    let writers = 256;
    for w in 0..writers {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let id = SagaId::from_u128(u128::from(i) + 1);
                let (first, last) = records(i, finished, 1_762_189_240_000);
                for e in &first {
                    j.append(id, e).await.expect("append");
                }
                if !last.is_empty() {
                    j.append_batch(id, &last, true).await.expect("append batch");
                }
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let stats = j.stats().await.expect("stats");
    Arc::try_unwrap(j)
        .unwrap_or_else(|_| panic!("shared"))
        .close()
        .await
        .expect("close");
    (stats.record_bytes, stats.bytes_on_disk, dir_bytes(dir))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N"))
        .unwrap_or(100_000);
    let base = std::env::args().nth(2).unwrap_or_else(|| "/tmp".into());
    for (label, finished) in [("parked", false), ("finished", true)] {
        let tmp = tempfile::tempdir_in(&base).expect("tempdir");
        let dir = tmp.path().join("j");
        let (record_bytes, sled_bytes, files) = run(&dir, n, finished).await;
        println!(
            "{label:>8} CancelPaid x {n}: record bytes {:.0} B/saga, sled size_on_disk {:.0} B/saga, directory {:.1} MB = {:.0} B/saga",
            record_bytes as f64 / n as f64,
            sled_bytes as f64 / n as f64,
            files as f64 / 1e6,
            files as f64 / n as f64
        );
    }
}
