//! Leases and fencing on a real database: a worker whose lease was taken over
//! can write nothing, claims never hand one saga to two workers, renewal keeps
//! a lease, release hands it over at once.

mod common;

use rescind_core::record::Record;
use rescind_core::{Entry, Journal, JournalError, OrderRef, SagaId, SagaInput, SagaSet};
use rescind_journal_postgres::PgConfig;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

fn entry(seq: u64, by: &str) -> Entry {
    let record = if seq == 0 {
        Record::Started {
            input: SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "42")),
            by: None,
        }
    } else {
        Record::Stuck {
            reason: format!("written by {by}"),
        }
    };
    Entry {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        record,
    }
}

/// A worker that does not renew: its leases lapse `ttl_ms` after its last write.
fn paused(schema: &str, worker: &str, ttl_ms: u64) -> PgConfig {
    PgConfig {
        lease_ttl_ms: ttl_ms,
        lease_renew_interval_ms: 0,
        ..common::cfg(schema, worker)
    }
}

async fn stored_bodies(url: &str, schema: &str, saga: SagaId) -> Vec<(i64, Vec<u8>)> {
    let c = common::raw(url, schema).await;
    c.query(
        "SELECT seq, body FROM records WHERE saga_id = $1 ORDER BY seq",
        &[&saga.0],
    )
    .await
    .unwrap_or_else(|e| panic!("reading records: {e}"))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn expect_fenced(r: Result<(), JournalError>, saga: SagaId, stale: u64, what: &str) {
    match r {
        Err(JournalError::Fenced { saga: s, detail }) => {
            assert_eq!(s, saga, "{what}: wrong saga");
            assert!(
                detail.contains(&format!("stale fencing token {stale}")),
                "{what}: detail {detail:?}"
            );
        }
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_worker_write_is_rejected_by_the_database() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("fence");
    let a = common::open(&url, paused(&schema, "worker-a", 1_500)).await;
    let b = common::open(&url, common::cfg(&schema, "worker-b")).await;
    let s = SagaId::new_random();

    // A starts the saga (token 1) and writes a record.
    a.append(s, &entry(0, "a"))
        .await
        .unwrap_or_else(|e| panic!("a seq 0: {e}"));
    a.append(s, &entry(1, "a"))
        .await
        .unwrap_or_else(|e| panic!("a seq 1: {e}"));
    assert_eq!(a.fence(s), Some(1));
    // While A's lease runs, B cannot take the saga.
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );

    // A "pauses" past its lease; B takes over (token 2) and writes seq 2.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );
    assert_eq!(b.fence(s), Some(2));
    b.append(s, &entry(2, "b"))
        .await
        .unwrap_or_else(|e| panic!("b seq 2: {e}"));

    // A wakes up and writes with its stale token: the database refuses, both
    // at the sequence B already wrote and at the next one, and its finish.
    expect_fenced(
        a.append(s, &entry(2, "a")).await,
        s,
        1,
        "stale append at taken seq",
    );
    expect_fenced(
        a.append(s, &entry(3, "a")).await,
        s,
        1,
        "stale append at next seq",
    );
    expect_fenced(a.mark_finished(s).await, s, 1, "stale mark_finished");
    // A stops offering the saga to its engine once a write was fenced.
    assert_eq!(
        a.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );
    a.release(s)
        .await
        .unwrap_or_else(|e| panic!("stale release is a no-op: {e}"));

    // Only B's record is at seq 2, nothing at 3, the saga is unfinished and B's.
    let rows = stored_bodies(&url, &schema, s).await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(
        rows[2].1,
        rescind_core::record::encode(&entry(2, "b")),
        "seq 2 is not B's record"
    );
    let read = b.read(s).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read[2], entry(2, "b"));
    assert_eq!(
        b.list(SagaSet::Unfinished)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );

    // B carries on normally.
    b.append(s, &entry(3, "b"))
        .await
        .unwrap_or_else(|e| panic!("b seq 3: {e}"));
    b.mark_finished(s)
        .await
        .unwrap_or_else(|e| panic!("b finish: {e}"));
    assert_eq!(
        b.list(SagaSet::Finished)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );
    // A renewal by A notices nothing to renew; its appends stay fenced.
    assert_eq!(a.renew_leases().await.unwrap_or_else(|e| panic!("{e}")), 0);
    assert!(matches!(
        a.append(s, &entry(4, "a")).await,
        Err(JournalError::Fenced { .. })
    ));
    drop((a, b));
    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_row_fails_only_its_own_append_in_a_batch() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("batch");
    // A waits 50 ms to gather a batch, so its two appends below share one.
    let a = Arc::new(
        common::open(
            &url,
            PgConfig {
                batch_wait_max_us: 50_000,
                ..paused(&schema, "worker-a", 300)
            },
        )
        .await,
    );
    let b = common::open(&url, common::cfg(&schema, "worker-b")).await;
    let (lost, kept) = (SagaId::from_u128(1), SagaId::from_u128(2));
    a.append(lost, &entry(0, "a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![lost]
    );
    a.append(kept, &entry(0, "a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (a1, a2) = (Arc::clone(&a), Arc::clone(&a));
    let (r_lost, r_kept) = tokio::join!(
        tokio::spawn(async move { a1.append(lost, &entry(1, "a")).await }),
        tokio::spawn(async move { a2.append(kept, &entry(1, "a")).await }),
    );
    expect_fenced(
        r_lost.unwrap_or_else(|e| panic!("{e}")),
        lost,
        1,
        "fenced row in a batch",
    );
    r_kept
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("its batch neighbour: {e}"));
    assert_eq!(
        a.read(kept).await.unwrap_or_else(|e| panic!("{e}")).len(),
        2
    );
    assert_eq!(
        a.read(lost).await.unwrap_or_else(|e| panic!("{e}")).len(),
        1
    );
    drop((a, b));
    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_share_a_saga() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("claim");
    const N: u128 = 300;
    let starter = common::open(&url, paused(&schema, "starter", 200)).await;
    let ids: Vec<SagaId> = (1..=N).map(SagaId::from_u128).collect();
    let mut tasks = Vec::new();
    let starter = Arc::new(starter);
    for &id in &ids {
        let j = Arc::clone(&starter);
        tasks.push(tokio::spawn(async move {
            j.append(id, &entry(0, "starter")).await
        }));
    }
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    drop(starter); // the starter dies; its leases lapse
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Four workers claim at once, 40 sagas per claim, until nothing is left.
    let mut handles = Vec::new();
    for w in 0..4 {
        let cfg = PgConfig {
            claim_batch_max: 40,
            ..common::cfg(&schema, &format!("w{w}"))
        };
        let j = common::open(&url, cfg).await;
        handles.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = j.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}"));
                let new: Vec<SagaId> = got.into_iter().filter(|id| !mine.contains(id)).collect();
                if new.is_empty() {
                    break;
                }
                mine.extend(new);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for h in handles {
        for id in h.await.unwrap_or_else(|e| panic!("{e}")) {
            assert!(seen.insert(id), "saga {id} claimed by two workers");
        }
    }
    assert_eq!(seen.len(), ids.len(), "every saga claimed exactly once");
    let c = common::raw(&url, &schema).await;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE fence = 2), count(*) FROM sagas",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (N as i64, N as i64),
        "one claim per saga"
    );
    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_lease_and_release_hands_it_over() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("renew");
    let a = common::open(
        &url,
        PgConfig {
            lease_ttl_ms: 300,
            lease_renew_interval_ms: 100,
            ..common::cfg(&schema, "worker-a")
        },
    )
    .await;
    let b = common::open(&url, common::cfg(&schema, "worker-b")).await;
    let s = SagaId::new_random();
    a.append(s, &entry(0, "a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Three lease lengths later, renewal has kept it: B gets nothing.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );
    a.append(s, &entry(1, "a"))
        .await
        .unwrap_or_else(|e| panic!("a after renewals: {e}"));
    // A claim by A returns what it holds without bumping the token.
    assert_eq!(
        a.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );
    assert_eq!(a.fence(s), Some(1));
    // Release: B takes it at once, with a new token.
    a.release(s).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.fence(s), None);
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );
    assert_eq!(b.fence(s), Some(2));
    match a.append(s, &entry(2, "a")).await {
        Err(JournalError::Fenced { detail, .. }) => {
            assert!(detail.contains("holds no lease"), "{detail}")
        }
        other => panic!("append after release: expected Fenced, got {other:?}"),
    }
    b.append(s, &entry(2, "b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop((a, b));
    common::drop_schema(&url, &schema).await;
}

/// `release_all` (what a gracefully stopping worker calls) hands every held
/// lease over in one go, long before the TTL; a lease already taken over is
/// not touched, and the released worker's later writes are fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_all_hands_every_held_lease_over_at_once() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("relall");
    let long = |worker: &str| PgConfig {
        lease_ttl_ms: 60_000,
        ..common::cfg(&schema, worker)
    };
    let a = common::open(&url, long("worker-a")).await;
    let b = common::open(&url, long("worker-b")).await;
    let mut held: Vec<SagaId> = (0..5).map(|_| SagaId::new_random()).collect();
    held.sort();
    for &s in &held {
        a.append(s, &entry(0, "a"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // One of A's sagas was taken over meanwhile (A's lease on it is stale).
    let stolen = held.pop().unwrap();
    common::raw(&url, &schema)
        .await
        .execute(
            "UPDATE sagas SET worker_id = 'worker-c', fence = fence + 1 WHERE saga_id = $1",
            &[&stolen.0],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        vec![],
        "60 s leases: B gets nothing while A holds them"
    );

    let released = a.release_all().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(released, held.len(), "only the leases A still holds");
    assert!(held.iter().all(|&s| a.fence(s).is_none()));
    assert_eq!(
        a.release_all().await.unwrap_or_else(|e| panic!("{e}")),
        0,
        "nothing left to release"
    );
    assert_eq!(
        b.claim_unfinished().await.unwrap_or_else(|e| panic!("{e}")),
        held,
        "B takes them at once; the stolen one stays with its holder"
    );
    match a.append(held[0], &entry(1, "a")).await {
        Err(JournalError::Fenced { .. }) => {}
        other => panic!("append after release_all: expected Fenced, got {other:?}"),
    }
    b.append(held[0], &entry(1, "b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop((a, b));
    common::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_with_a_fixed_id_takes_its_sagas_back_at_once() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("restart");
    let s = SagaId::new_random();
    let a = common::open(&url, common::cfg(&schema, "fixed")).await;
    a.append(s, &entry(0, "a"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(a); // 30 s lease still running
    let other = common::open(&url, common::cfg(&schema, "other")).await;
    assert_eq!(
        other
            .claim_unfinished()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![]
    );
    let a2 = common::open(&url, common::cfg(&schema, "fixed")).await;
    assert_eq!(
        a2.claim_unfinished()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        vec![s]
    );
    assert_eq!(a2.fence(s), Some(2));
    a2.append(s, &entry(1, "a2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop((a2, other));
    common::drop_schema(&url, &schema).await;
}
