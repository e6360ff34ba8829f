//! Recovery over bad journals: an unknown saga kind, a record of a newer
//! format version and a corrupt record are typed errors naming the saga;
//! every other saga still resumes; nothing panics.

mod common;

use common::*;
use rescind_core::*;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn bad_sagas_are_reported_by_id_and_the_rest_recover() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay)
        .order("O2", OrderState::PendingPay);
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 1);
    // A good saga, stopped mid-way (killed before it ran).
    let good = e
        .start(SagaInput::cancel_unpaid(order("O1")))
        .await
        .unwrap();
    e.kill();
    let j = j.restart();

    let unknown = SagaId::from_u128(11);
    let mut input = SagaInput::cancel_unpaid(order("O2"));
    input.kind = SagaKind("refund_dance".into());
    j.append(
        unknown,
        &Entry {
            seq: 0,
            at_ms: 1,
            record: Record::Started { input, by: None },
        },
    )
    .await
    .unwrap();

    let newer = SagaId::from_u128(12);
    j.append_raw(
        newer,
        br#"{"v":7,"at_ms":1,"type":"started","future":"field"}"#.to_vec(),
    );

    let corrupt = SagaId::from_u128(13);
    j.append(
        corrupt,
        &Entry {
            seq: 0,
            at_ms: 1,
            record: Record::Started {
                input: SagaInput::cancel_unpaid(order("O2")),
                by: None,
            },
        },
    )
    .await
    .unwrap();
    j.append_raw(corrupt, b"\x00\x01garbage".to_vec());

    let e2 = engine_on(&j, &up, 2);
    let report = e2.recover().await.unwrap();
    assert_eq!(report.resumed, 1);
    let mut failed: Vec<(SagaId, String)> = report
        .failed
        .iter()
        .map(|(id, e)| (*id, e.to_string()))
        .collect();
    failed.sort();
    assert_eq!(failed.len(), 3, "{failed:?}");
    assert_eq!(failed[0].0, unknown);
    assert!(
        failed[0].1.contains("refund_dance") && failed[0].1.contains(&unknown.to_string()),
        "{}",
        failed[0].1
    );
    assert_eq!(failed[1].0, newer);
    assert!(
        failed[1].1.contains("format version 7") && failed[1].1.contains(&newer.to_string()),
        "{}",
        failed[1].1
    );
    assert_eq!(failed[2].0, corrupt);
    assert!(
        failed[2].1.contains("corrupt") && failed[2].1.contains("seq 1"),
        "{}",
        failed[2].1
    );
    assert!(matches!(
        e2.wait(good).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    // Nothing already journaled was lost: the bad sagas are still listed.
    let unfinished = j.list(SagaSet::Unfinished).await.unwrap();
    for id in [unknown, newer, corrupt] {
        assert!(unfinished.contains(&id));
    }
}

#[tokio::test(start_paused = true)]
async fn records_that_do_not_fold_are_errors_naming_saga_and_seq() {
    let j = MemoryJournal::new();
    let id = SagaId::from_u128(5);
    j.append(
        id,
        &Entry {
            seq: 0,
            at_ms: 1,
            record: Record::Started {
                input: SagaInput::cancel_unpaid(order("O1")),
                by: None,
            },
        },
    )
    .await
    .unwrap();
    // An outcome without an intent.
    j.append(
        id,
        &Entry {
            seq: 1,
            at_ms: 2,
            record: Record::Outcome {
                step: 0,
                outcome: StepOutcome::Cancelled { already: false },
                via: Via::Reply,
                attempts: 1,
            },
        },
    )
    .await
    .unwrap();
    let e = engine_on(&j, &Upstream::new(), 1);
    match e.load(id).await {
        Err(Error::Fold(f)) => {
            assert_eq!((f.saga, f.seq), (id, 1));
            assert!(f.to_string().contains("without an open intent"));
        }
        other => panic!("{other:?}"),
    }
    // A sequence gap is refused by the journal itself.
    let err = j
        .append(
            id,
            &Entry {
                seq: 5,
                at_ms: 3,
                record: Record::Stuck { reason: "x".into() },
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        JournalError::SequenceConflict {
            saga: id,
            seq: 5,
            expected: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn recovery_resumes_many_sagas_and_graceful_shutdown_loses_nothing() {
    let up = Upstream::new();
    for i in 0..50 {
        up.order(&format!("O{i}"), OrderState::Paid);
    }
    up.book.lock().unwrap().refund_polls_before_complete = 3;
    let j = MemoryJournal::new();
    let e = engine_on(&j, &up, 3);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            e.start(SagaInput::cancel_paid(order(&format!("O{i}"))))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    e.shutdown(Duration::from_secs(1)).await;
    assert!(matches!(
        e.start(SagaInput::cancel_paid(order("O1"))).await,
        Err(Error::ShuttingDown)
    ));
    let unfinished = j.list(SagaSet::Unfinished).await.unwrap().len();
    assert!(unfinished > 0, "shutdown came before any saga could finish");
    let e2 = engine_on(&j, &up, 4);
    let report = e2.recover().await.unwrap();
    assert_eq!(report.resumed, unfinished);
    assert!(report.failed.is_empty());
    for id in ids {
        assert!(matches!(
            e2.wait(id).await.unwrap(),
            SagaExit::Finished(SagaOutcome::Completed { .. })
        ));
    }
    assert_eq!(up.effects().len(), 50);
    assert_eq!(j.list(SagaSet::Finished).await.unwrap().len(), 50);
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_finished_and_mark_finished_is_housekeeping_not_a_failure() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    let j = MemoryJournal::new();
    // started, intent, outcome, finished: crash right after the 4th append is durable.
    j.crash_at(3, CrashPoint::AfterFlush);
    let e = engine_on(&j, &up, 1);
    let id = e
        .start(SagaInput::cancel_unpaid(order("O1")))
        .await
        .unwrap();
    let _ = e.wait(id).await;
    assert!(j.is_crashed());
    let j = j.restart();
    assert_eq!(
        j.list(SagaSet::Unfinished).await.unwrap(),
        vec![id],
        "not marked before the crash"
    );
    let e2 = engine_on(&j, &up, 2);
    let report = e2.recover().await.unwrap();
    assert_eq!(
        (report.resumed, report.marked_finished, report.failed.len()),
        (0, 1, 0),
        "{report:?}"
    );
    assert_eq!(j.list(SagaSet::Finished).await.unwrap(), vec![id]);
    assert_eq!(up.effects(), vec!["cancel_unpaid:O1"]);
}

/// A journal whose appends are durable at once but return late: the window
/// in which a concurrent recovery sees a saga whose start has not returned.
struct SlowToAnswer(MemoryJournal);

#[async_trait::async_trait]
impl Journal for SlowToAnswer {
    async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
        self.0.append(saga, entry).await?;
        if entry.seq == 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    }
    async fn read(&self, saga: SagaId) -> Result<Vec<Entry>, JournalError> {
        self.0.read(saga).await
    }
    async fn list(&self, set: SagaSet) -> Result<Vec<SagaId>, JournalError> {
        self.0.list(set).await
    }
    async fn mark_finished(&self, saga: SagaId) -> Result<(), JournalError> {
        self.0.mark_finished(saga).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_recovery_during_a_start_never_runs_the_saga_twice() {
    let up = Upstream::new();
    up.order("O1", OrderState::PendingPay);
    let j = MemoryJournal::new();
    let e = Engine::builder(std::sync::Arc::new(SlowToAnswer(j.clone())))
        .channels(up.channels("tbc"))
        .limits(fast_limits())
        .build();
    let e2 = e.clone();
    let start = tokio::spawn(async move {
        e2.start_keyed("k", SagaInput::cancel_unpaid(order("O1")))
            .await
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The Started record is durable, start() has not returned: recovery lists it.
    assert_eq!(j.list(SagaSet::Unfinished).await.unwrap().len(), 1);
    let report = e.recover().await.unwrap();
    assert_eq!(
        (report.resumed, report.already_running),
        (0, 1),
        "{report:?}"
    );
    let (id, created) = start.await.unwrap().unwrap();
    assert!(created);
    assert!(matches!(
        e.wait(id).await.unwrap(),
        SagaExit::Finished(SagaOutcome::Completed { .. })
    ));
    assert_eq!(
        up.book.lock().unwrap().calls,
        1,
        "one task, one cancel call"
    );
    assert_eq!(
        j.read(id).await.unwrap().len(),
        4,
        "no sequence conflicts, no extra records"
    );
}
