//! SledJournal beyond the shared contract: group commit batching, retention
//! and compaction, stats.

use rescind_core::conformance::entry;
use rescind_core::{Entry, Journal, JournalError, Record, SagaId, SagaSet};
use rescind_journal_sled::{Durability, Retention, SledConfig, SledJournal};
use std::sync::Arc;

fn sid(n: u128) -> SagaId {
    SagaId::from_u128(0xc0ff_ee00_0000 + n)
}

async fn finish_at(j: &SledJournal, saga: SagaId, records: u64, finished_at_ms: u64) {
    for seq in 0..records {
        j.append(saga, &entry(saga, seq)).await.expect("append");
    }
    let last = Entry {
        seq: records,
        at_ms: finished_at_ms,
        record: Record::Stuck {
            reason: "done".into(),
        },
    };
    j.append(saga, &last).await.expect("append last");
    j.mark_finished(saga).await.expect("finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    // A longest wait makes batching visible even on a fast disk.
    let config = SledConfig {
        batch_wait_max_us: 2_000,
        ..SledConfig::default()
    };
    let j = Arc::new(SledJournal::open(dir.path(), config).await.expect("open"));
    let mut tasks = Vec::new();
    for n in 0..128u128 {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            for seq in 0..4 {
                j.append(sid(n), &entry(sid(n), seq)).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let c = j.commit_counters();
    assert_eq!(c.records, 512);
    assert!(
        c.flushes * 8 <= c.records,
        "group commit did not batch: {c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_per_append_flushes_once_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::default()
        .flush_per_append()
        .with_durability(Durability::Process);
    let j = Arc::new(SledJournal::open(dir.path(), config).await.expect("open"));
    let mut tasks = Vec::new();
    for n in 0..16u128 {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            j.append(sid(n), &entry(sid(n), 0)).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let c = j.commit_counters();
    assert_eq!((c.flushes, c.records), (16, 16));
}

#[tokio::test]
async fn compaction_keeps_the_newest_within_count_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        finished_keep_max: 3,
        finished_keep_age_ms: 10_000,
    };
    let j = SledJournal::open(dir.path(), SledConfig::default().with_retention(retention))
        .await
        .expect("open");
    let now = 1_000_000;
    // Finished at now-1000*i: sagas 0..=4 within the age; 5 sagas > keep_max 3.
    for i in 0..5u128 {
        finish_at(&j, sid(i), 2, now - 1000 * i as u64).await;
    }
    // One finished long ago (beyond the age), one unfinished and old.
    finish_at(&j, sid(50), 1, now - 50_000).await;
    j.append(sid(60), &entry(sid(60), 0))
        .await
        .expect("unfinished");

    let before = j.stats().await.expect("stats");
    assert_eq!(
        (before.unfinished, before.finished, before.records),
        (1, 6, 5 * 3 + 2 + 1)
    );
    assert!(
        before.record_bytes > 0 && before.bytes_on_disk > 0,
        "{before:?}"
    );

    let report = j.compact(now).await.expect("compact");
    assert_eq!(
        (report.sagas_removed, report.records_removed),
        (3, 3 + 3 + 2)
    );
    assert_eq!(
        j.list(SagaSet::Finished).await.unwrap(),
        vec![sid(0), sid(1), sid(2)]
    );
    assert_eq!(j.list(SagaSet::Unfinished).await.unwrap(), vec![sid(60)]);
    for gone in [sid(3), sid(4), sid(50)] {
        assert!(
            matches!(j.read(gone).await, Err(JournalError::UnknownSaga(_))),
            "{gone} not compacted"
        );
    }
    assert_eq!(j.read(sid(0)).await.unwrap().len(), 3);
    let after = j.stats().await.expect("stats");
    assert_eq!(
        (after.unfinished, after.finished, after.records),
        (1, 3, 3 * 3 + 1)
    );

    // Compaction is durable and idempotent.
    let path = j.path().to_path_buf();
    j.close().await.expect("close");
    let j = SledJournal::open(&path, SledConfig::default().with_retention(retention))
        .await
        .expect("reopen");
    assert_eq!(
        j.list(SagaSet::Finished).await.unwrap(),
        vec![sid(0), sid(1), sid(2)]
    );
    assert_eq!(
        j.compact(now).await.expect("compact again").sagas_removed,
        0
    );
    // Time passes: everything finished ages out; the unfinished saga stays.
    assert_eq!(
        j.compact(now + 1_000_000)
            .await
            .expect("compact later")
            .sagas_removed,
        3
    );
    assert_eq!(j.stats().await.unwrap().records, 1);
    // A compacted saga id starts afresh at seq 0.
    j.append(sid(0), &entry(sid(0), 0))
        .await
        .expect("reuse of a compacted id");
}

#[tokio::test]
async fn keep_all_compacts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let j = SledJournal::open(
        dir.path(),
        SledConfig::default().with_retention(Retention::keep_all()),
    )
    .await
    .expect("open");
    finish_at(&j, sid(1), 1, 0).await;
    assert_eq!(j.compact(u64::MAX).await.unwrap().sagas_removed, 0);
    assert_eq!(j.list(SagaSet::Finished).await.unwrap(), vec![sid(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_appends_loses_no_unfinished_saga() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        finished_keep_max: 0,
        finished_keep_age_ms: 0,
    };
    let j = Arc::new(
        SledJournal::open(dir.path(), SledConfig::default().with_retention(retention))
            .await
            .expect("open"),
    );
    for i in 0..300u128 {
        finish_at(&j, sid(i), 1, 5).await;
    }
    let writer = {
        let j = Arc::clone(&j);
        tokio::spawn(async move {
            for i in 1000..1300u128 {
                j.append(sid(i), &entry(sid(i), 0))
                    .await
                    .expect("append during compaction");
            }
        })
    };
    let report = j.compact(10).await.expect("compact");
    writer.await.expect("writer");
    assert_eq!(report.sagas_removed, 300);
    let stats = j.stats().await.unwrap();
    assert_eq!(
        (stats.finished, stats.unfinished, stats.records),
        (0, 300, 300)
    );
}

/// Closing and at once reopening never trips over the directory lock, even
/// while sled's I/O threads are still letting go of it (seen under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_reopen_at_once_always_opens() {
    let dir = tempfile::tempdir().unwrap();
    let saga = rescind_core::SagaId::from_u128(77);
    for seq in 0..30u64 {
        let j = SledJournal::open(dir.path(), SledConfig::default())
            .await
            .expect("reopen right after close");
        j.append(saga, &rescind_core::conformance::entry(saga, seq))
            .await
            .expect("append");
        j.close().await.expect("close");
    }
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("open");
    assert_eq!(j.read(saga).await.unwrap().len(), 30);
}
