//! `read_many` with ids in ascending order reads in one pass over the record
//! keys (seeking past sagas not asked for); every answer must still be what
//! `read` gives for that saga: gaps, corrupt records, unknown sagas and
//! sagas of every size, before, between and after the stored ones.

use rescind_core::conformance::entry;
use rescind_core::record::encode;
use rescind_core::{Journal, SagaId};
use rescind_journal_sled::{SledConfig, SledJournal};

fn sid(n: u128) -> SagaId {
    SagaId::from_u128(0x5eed_0000_0000 + n)
}

/// Every sorted subset of `ids` taken with a stride, plus the whole list,
/// answers as `read` does, saga by saga.
async fn check(j: &SledJournal, ids: &[SagaId], what: &str) {
    let many = j.read_many(ids).await;
    assert_eq!(many.len(), ids.len(), "{what}: one answer per saga asked");
    for (id, got) in ids.iter().zip(many) {
        let want = j.read(*id).await;
        assert_eq!(
            got, want,
            "{what}: read_many and read disagree on saga {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sorted_read_many_answers_as_read_does() {
    let dir = tempfile::tempdir().unwrap();
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("open");
    // Sagas 10, 20, ... 200 with 1 to 4 records each.
    let stored: Vec<SagaId> = (1..=20u128).map(|n| sid(n * 10)).collect();
    for (i, saga) in stored.iter().enumerate() {
        for seq in 0..(i as u64 % 4 + 1) {
            j.append(*saga, &entry(*saga, seq)).await.expect("append");
        }
    }
    // Saga 30: a corrupt record in the middle (records after it exist).
    j.write_raw_record(sid(30), 1, b"not a record".to_vec())
        .await
        .expect("raw");
    // Saga 50: a gap (seq 1 missing, seq 2 stored).
    let gap = sid(50);
    j.write_raw_record(gap, 2, encode(&entry(gap, 2)))
        .await
        .expect("raw gap");
    // Saga 5: no seq 0 at all, only seq 1.
    let headless = sid(5);
    j.write_raw_record(headless, 1, encode(&entry(headless, 1)))
        .await
        .expect("raw headless");

    let mut all: Vec<SagaId> = stored.clone();
    // Unknown sagas before the first, between stored ones and after the last.
    all.extend([
        sid(1),
        sid(15),
        sid(16),
        sid(55),
        sid(999),
        sid(1000),
        headless,
    ]);
    all.sort();
    all.dedup();
    check(&j, &all, "every saga, unknown ones among them").await;
    check(&j, &stored, "the stored sagas, dense").await;
    for stride in 2..6 {
        let sparse: Vec<SagaId> = stored.iter().copied().step_by(stride).collect();
        check(&j, &sparse, &format!("every {stride}th stored saga")).await;
        let mixed: Vec<SagaId> = all.iter().copied().skip(1).step_by(stride).collect();
        check(
            &j,
            &mixed,
            &format!("every {stride}th of all, from the 2nd"),
        )
        .await;
    }
    check(&j, &[sid(999)], "one unknown saga after the last").await;
    check(&j, &[sid(200)], "the last stored saga alone").await;
    check(&j, &[], "nothing").await;
    // Not in ascending order (a duplicate, reversed): read saga by saga.
    let mut reversed = all.clone();
    reversed.reverse();
    reversed.push(sid(30));
    check(&j, &reversed, "reversed, with a duplicate").await;
    // The corrupt saga's answer is its corrupt record, not its neighbours'.
    let answers = j.read_many(&[sid(20), sid(30), sid(40)]).await;
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert!(
        matches!(
            &answers[1],
            Err(rescind_core::JournalError::Corrupt { seq: 1, .. })
        ),
        "{:?}",
        answers[1]
    );
}
