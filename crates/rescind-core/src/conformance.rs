//! The journal conformance suite: one set of checks every [`Journal`] runs.
//!
//! A journal implementation proves it keeps the [`Journal`] contract by running
//! these checks against itself from its own tests. The checks are generic: an
//! implementation supplies a [`JournalFactory`] that makes fresh, empty
//! journals, and (where it can) injects corrupt bytes and reopens a journal
//! onto the same store. Enable the `conformance` feature of `rescind-core` in
//! the implementation's `[dev-dependencies]`.
//!
//! Each check is a `pub async fn` taking the factory, so a test file can run
//! them one by one (one `#[tokio::test]` each, which is what
//! [`journal_conformance_tests!`](crate::journal_conformance_tests) generates)
//! or all at once with [`run_all`]. A failed check panics with the saga, the
//! sequence and what the journal answered: these are test assertions.
//!
//! ```
//! use async_trait::async_trait;
//! use rescind_core::conformance::{run_all, JournalFactory};
//! use rescind_core::{MemoryJournal, SagaId};
//!
//! struct Memory;
//!
//! #[async_trait]
//! impl JournalFactory for Memory {
//!     type Journal = MemoryJournal;
//!     async fn fresh(&self) -> MemoryJournal {
//!         MemoryJournal::new()
//!     }
//!     async fn corrupt(&self, j: &MemoryJournal, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
//!         j.corrupt(saga, seq, bytes)
//!     }
//!     async fn reopen(&self, j: MemoryJournal) -> Option<MemoryJournal> {
//!         Some(j.restart())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! let passed = run_all(&Memory).await;
//! assert!(passed.contains(&"append_then_read_in_order"));
//! # }
//! ```

use crate::ids::{OrderRef, SagaId};
use crate::index::{scan_query, SagaCounts, SagaQuery, SagaStatus};
use crate::journal::{Journal, JournalError, SagaSet};
use crate::record::{Entry, Record, SagaInput, SagaOutcome, RECORD_FORMAT_VERSION};
use crate::OrderState;
use async_trait::async_trait;
use std::sync::Arc;

/// What a journal implementation gives the suite.
#[async_trait]
pub trait JournalFactory: Send + Sync {
    /// The journal under test.
    type Journal: Journal;

    /// A fresh, empty journal (its own store: no records of earlier journals).
    async fn fresh(&self) -> Self::Journal;

    /// Overwrite the stored bytes of record `seq` of `saga` with `bytes`,
    /// bypassing the codec. Return `false` if the record does not exist or the
    /// implementation cannot inject bytes (the corrupt-record check then fails,
    /// so an implementation that cannot do it should test it another way and
    /// not call that check).
    async fn corrupt(
        &self,
        journal: &Self::Journal,
        saga: SagaId,
        seq: u64,
        bytes: Vec<u8>,
    ) -> bool;

    /// Close `journal` and open the same store again, as a restarted process
    /// would. `None` if the journal keeps nothing across a reopen; the
    /// persistence checks then only read back from the live journal.
    async fn reopen(&self, journal: Self::Journal) -> Option<Self::Journal>;
}

/// Names of every check, in the order [`run_all`] runs them.
pub const CHECKS: &[&str] = &[
    "empty_journal_lists_nothing",
    "append_then_read_in_order",
    "read_back_after_append_returns",
    "duplicate_sequence_is_a_conflict",
    "gap_in_sequence_is_a_conflict",
    "unknown_saga_is_typed",
    "list_is_sorted_by_id",
    "mark_finished_moves_sets_and_is_idempotent",
    "concurrent_appends_keep_per_saga_order",
    "racing_appends_of_one_sequence_admit_one",
    "corrupt_record_is_typed_and_others_stay_readable",
    "big_records_round_trip",
    "reopen_keeps_records_sets_and_sequences",
    "query_filters_return_what_the_scan_returns",
    "query_pages_visit_each_saga_once",
    "query_index_survives_reopen_and_follows_later_appends",
    "append_many_is_as_if_appended_one_by_one",
    "count_counts_and_recent_agree_with_the_query",
];

/// Run every check in [`CHECKS`]; returns their names. Panics at the first
/// failure, naming the check.
pub async fn run_all<F: JournalFactory>(f: &F) -> Vec<&'static str> {
    macro_rules! run {
        ($($name:ident),* $(,)?) => {{
            let mut passed = Vec::new();
            $(
                $name(f).await;
                passed.push(stringify!($name));
            )*
            passed
        }};
    }
    let passed = run!(
        empty_journal_lists_nothing,
        append_then_read_in_order,
        read_back_after_append_returns,
        duplicate_sequence_is_a_conflict,
        gap_in_sequence_is_a_conflict,
        unknown_saga_is_typed,
        list_is_sorted_by_id,
        mark_finished_moves_sets_and_is_idempotent,
        concurrent_appends_keep_per_saga_order,
        racing_appends_of_one_sequence_admit_one,
        corrupt_record_is_typed_and_others_stay_readable,
        big_records_round_trip,
        reopen_keeps_records_sets_and_sequences,
        query_filters_return_what_the_scan_returns,
        query_pages_visit_each_saga_once,
        query_index_survives_reopen_and_follows_later_appends,
        append_many_is_as_if_appended_one_by_one,
        count_counts_and_recent_agree_with_the_query,
    );
    debug_assert_eq!(passed, CHECKS);
    passed
}

/// Generate one `#[tokio::test]` per conformance check, each calling
/// `$factory` (an expression, evaluated per test) for its own factory.
///
/// ```text
/// rescind_core::journal_conformance_tests!(MyFactory::new());
/// ```
#[macro_export]
macro_rules! journal_conformance_tests {
    ($factory:expr) => {
        $crate::journal_conformance_tests!(@each $factory;
            empty_journal_lists_nothing,
            append_then_read_in_order,
            read_back_after_append_returns,
            duplicate_sequence_is_a_conflict,
            gap_in_sequence_is_a_conflict,
            unknown_saga_is_typed,
            list_is_sorted_by_id,
            mark_finished_moves_sets_and_is_idempotent,
            concurrent_appends_keep_per_saga_order,
            racing_appends_of_one_sequence_admit_one,
            corrupt_record_is_typed_and_others_stay_readable,
            big_records_round_trip,
            reopen_keeps_records_sets_and_sequences,
            query_filters_return_what_the_scan_returns,
            query_pages_visit_each_saga_once,
            query_index_survives_reopen_and_follows_later_appends,
            append_many_is_as_if_appended_one_by_one,
            count_counts_and_recent_agree_with_the_query,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let factory = $factory;
                $crate::conformance::$name(&factory).await;
            }
        )*
    };
}

// ---- entries used by the checks -------------------------------------------

/// A saga id for check `check`, number `n` (ids differ across checks so a
/// journal shared by mistake shows up as a failure, not a pass).
fn sid(check: u8, n: u32) -> SagaId {
    SagaId::from_u128(((check as u128) << 96) | ((n as u128) << 32) | 0x5a5a)
}

/// Entry `seq` of a saga: `Started` at 0, then `Stuck` records whose reason
/// names saga and seq, so a record read back in the wrong place is visible.
pub fn entry(saga: SagaId, seq: u64) -> Entry {
    let record = if seq == 0 {
        Record::Started {
            input: SagaInput::cancel_unpaid(OrderRef::new(
                "tmall-tbc",
                format!("{}", saga.0.as_u128() % 1_000_000_007),
            )),
            by: None,
        }
    } else {
        Record::Stuck {
            reason: format!("saga {saga} record {seq}"),
        }
    };
    Entry {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        record,
    }
}

fn finished_entry(seq: u64) -> Entry {
    Entry {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        record: Record::Finished {
            outcome: SagaOutcome::Completed {
                order: OrderState::Cancelled,
                note: None,
            },
        },
    }
}

async fn append_n<J: Journal>(j: &J, saga: SagaId, n: u64) {
    for seq in 0..n {
        if let Err(e) = j.append(saga, &entry(saga, seq)).await {
            panic!("append saga {saga} seq {seq}: {e}");
        }
    }
}

async fn expect_entries<J: Journal>(j: &J, saga: SagaId, n: u64, what: &str) {
    let got = match j.read(saga).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: read saga {saga}: {e}"),
    };
    let want: Vec<Entry> = (0..n).map(|seq| entry(saga, seq)).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: saga {saga} has {} records, want {}",
        got.len(),
        want.len()
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "{what}: saga {saga} seq {} differs", w.seq);
    }
}

async fn expect_list<J: Journal>(j: &J, set: SagaSet, want: &[SagaId], what: &str) {
    let got = j
        .list(set)
        .await
        .unwrap_or_else(|e| panic!("{what}: list {set:?}: {e}"));
    assert_eq!(got, want, "{what}: list {set:?}");
}

fn expect_conflict(r: Result<(), JournalError>, saga: SagaId, seq: u64, expected: u64, what: &str) {
    match r {
        Err(JournalError::SequenceConflict { saga: s, seq: q, expected: e }) => {
            assert_eq!((s, q, e), (saga, seq, expected), "{what}: conflict names the wrong place");
        }
        other => panic!("{what}: saga {saga} seq {seq}: expected SequenceConflict(expected {expected}), got {other:?}"),
    }
}

// ---- the checks -------------------------------------------------------------

/// A fresh journal lists no sagas in either set.
pub async fn empty_journal_lists_nothing<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    expect_list(&j, SagaSet::Unfinished, &[], "fresh journal").await;
    expect_list(&j, SagaSet::Finished, &[], "fresh journal").await;
}

/// Appended entries read back equal and in sequence order.
pub async fn append_then_read_in_order<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let (a, b) = (sid(1, 1), sid(1, 2));
    // Interleave two sagas so a journal that orders by arrival, not by saga, fails.
    for seq in 0..10 {
        j.append(a, &entry(a, seq))
            .await
            .unwrap_or_else(|e| panic!("append {a} {seq}: {e}"));
        if seq < 5 {
            j.append(b, &entry(b, seq))
                .await
                .unwrap_or_else(|e| panic!("append {b} {seq}: {e}"));
        }
    }
    expect_entries(&j, a, 10, "interleaved appends").await;
    expect_entries(&j, b, 5, "interleaved appends").await;
}

/// What `append` acknowledged is there after a reopen (for persistent journals),
/// and is readable at once (for all).
pub async fn read_back_after_append_returns<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let a = sid(2, 1);
    append_n(&j, a, 3).await;
    expect_entries(&j, a, 3, "read right after append").await;
    if let Some(j) = f.reopen(j).await {
        expect_entries(&j, a, 3, "read after reopen").await;
        expect_list(&j, SagaSet::Unfinished, &[a], "after reopen").await;
    }
}

/// Appending a sequence that already exists is a `SequenceConflict` naming
/// the expected sequence, and changes nothing.
pub async fn duplicate_sequence_is_a_conflict<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let a = sid(3, 1);
    append_n(&j, a, 3).await;
    for seq in [0, 1, 2] {
        let mut dup = entry(a, seq);
        dup.at_ms += 999; // a different record: must not replace the stored one
        expect_conflict(j.append(a, &dup).await, a, seq, 3, "duplicate");
    }
    expect_entries(&j, a, 3, "after rejected duplicates").await;
}

/// A gap (including a first append that is not 0) is a `SequenceConflict`.
pub async fn gap_in_sequence_is_a_conflict<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let (a, b) = (sid(4, 1), sid(4, 2));
    expect_conflict(
        j.append(b, &entry(b, 1)).await,
        b,
        1,
        0,
        "first append at seq 1",
    );
    append_n(&j, a, 2).await;
    expect_conflict(j.append(a, &entry(a, 5)).await, a, 5, 2, "gap");
    expect_entries(&j, a, 2, "after rejected gap").await;
    // The rejected first append did not create the saga.
    match j.read(b).await {
        Err(JournalError::UnknownSaga(s)) => assert_eq!(s, b),
        other => {
            panic!("a saga whose only append was rejected: expected UnknownSaga, got {other:?}")
        }
    }
    expect_list(&j, SagaSet::Unfinished, &[a], "after rejected first append").await;
    // And the sequence continues where it should.
    j.append(a, &entry(a, 2))
        .await
        .unwrap_or_else(|e| panic!("append after gap rejection: {e}"));
}

/// Reading or finishing a saga with no records is `UnknownSaga`.
pub async fn unknown_saga_is_typed<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let a = sid(5, 1);
    match j.read(a).await {
        Err(JournalError::UnknownSaga(s)) => assert_eq!(s, a),
        other => panic!("read of unknown saga: expected UnknownSaga, got {other:?}"),
    }
    match j.mark_finished(a).await {
        Err(JournalError::UnknownSaga(s)) => assert_eq!(s, a),
        other => panic!("mark_finished of unknown saga: expected UnknownSaga, got {other:?}"),
    }
    expect_list(
        &j,
        SagaSet::Finished,
        &[],
        "after finishing an unknown saga",
    )
    .await;
}

/// Both sets list sorted by id, whatever the order of creation.
pub async fn list_is_sorted_by_id<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let mut ids: Vec<SagaId> = [7u32, 3, 250, 1, 90, 12, 4096, 2]
        .iter()
        .map(|&n| sid(6, n))
        .collect();
    // Ids that sort differently as bytes and as the low bits alone.
    ids.push(SagaId::from_u128(u128::MAX - 1));
    ids.push(SagaId::from_u128(1 << 127));
    for &id in &ids {
        append_n(&j, id, 1).await;
    }
    let finished = [ids[1], ids[4], ids[8]];
    for &id in &finished {
        j.append(id, &finished_entry(1))
            .await
            .unwrap_or_else(|e| panic!("append finished {id}: {e}"));
        j.mark_finished(id)
            .await
            .unwrap_or_else(|e| panic!("mark_finished {id}: {e}"));
    }
    let mut want_unfinished: Vec<SagaId> = ids
        .iter()
        .copied()
        .filter(|i| !finished.contains(i))
        .collect();
    want_unfinished.sort();
    let mut want_finished = finished.to_vec();
    want_finished.sort();
    expect_list(&j, SagaSet::Unfinished, &want_unfinished, "sorted").await;
    expect_list(&j, SagaSet::Finished, &want_finished, "sorted").await;
}

/// `mark_finished` moves a saga from unfinished to finished, keeps its
/// records, and a second call is a no-op success.
pub async fn mark_finished_moves_sets_and_is_idempotent<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let (a, b) = (sid(7, 1), sid(7, 2));
    append_n(&j, a, 2).await;
    append_n(&j, b, 1).await;
    j.mark_finished(a)
        .await
        .unwrap_or_else(|e| panic!("mark_finished {a}: {e}"));
    expect_list(&j, SagaSet::Unfinished, &[b], "after finish").await;
    expect_list(&j, SagaSet::Finished, &[a], "after finish").await;
    j.mark_finished(a)
        .await
        .unwrap_or_else(|e| panic!("second mark_finished {a}: {e}"));
    expect_list(&j, SagaSet::Unfinished, &[b], "after second finish").await;
    expect_list(&j, SagaSet::Finished, &[a], "after second finish").await;
    expect_entries(&j, a, 2, "finished saga stays readable").await;
    // append_batch: consecutive entries and the finish mark, durable together.
    let c = sid(7, 3);
    append_n(&j, c, 1).await;
    j.append_batch(c, &[entry(c, 1), entry(c, 2)], false)
        .await
        .unwrap_or_else(|e| panic!("append_batch {c}: {e}"));
    expect_entries(&j, c, 3, "after append_batch").await;
    let gap = j.append_batch(c, &[entry(c, 5)], true).await;
    assert!(
        matches!(gap, Err(JournalError::SequenceConflict { .. })),
        "append_batch with a gap: expected SequenceConflict, got {gap:?}"
    );
    expect_list(
        &j,
        SagaSet::Unfinished,
        &[b, c],
        "a refused batch finishes nothing",
    )
    .await;
    j.append_batch(c, &[entry(c, 3)], true)
        .await
        .unwrap_or_else(|e| panic!("append_batch with finish {c}: {e}"));
    expect_entries(&j, c, 4, "after append_batch with finish").await;
    expect_list(&j, SagaSet::Finished, &[a, c], "append_batch with finish").await;
    if let Some(j) = f.reopen(j).await {
        expect_list(&j, SagaSet::Unfinished, &[b], "finish survives reopen").await;
        expect_list(&j, SagaSet::Finished, &[a, c], "finish survives reopen").await;
        expect_entries(&j, c, 4, "batched records survive reopen").await;
    }
}

/// Many sagas appending concurrently: each saga's records stay in order and
/// complete, and every saga is listed.
pub async fn concurrent_appends_keep_per_saga_order<F: JournalFactory>(f: &F) {
    const SAGAS: u32 = 64;
    const RECORDS: u64 = 20;
    let j = Arc::new(f.fresh().await);
    let mut tasks = Vec::new();
    for n in 0..SAGAS {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            let id = sid(8, n);
            for seq in 0..RECORDS {
                j.append(id, &entry(id, seq))
                    .await
                    .map_err(|e| format!("append {id} {seq}: {e}"))?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("concurrent append failed: {e}"),
            Err(e) => panic!("concurrent append task died: {e}"),
        }
    }
    let mut want: Vec<SagaId> = (0..SAGAS).map(|n| sid(8, n)).collect();
    want.sort();
    expect_list(&*j, SagaSet::Unfinished, &want, "after concurrent appends").await;
    for &id in &want {
        expect_entries(&*j, id, RECORDS, "after concurrent appends").await;
    }
}

/// Two appends racing for the same sequence of one saga: exactly one wins,
/// the other is a `SequenceConflict`.
pub async fn racing_appends_of_one_sequence_admit_one<F: JournalFactory>(f: &F) {
    let j = Arc::new(f.fresh().await);
    for round in 0..20u32 {
        let id = sid(9, round);
        let seq = u64::from(round % 3);
        append_n(&*j, id, seq).await;
        let (j1, j2) = (Arc::clone(&j), Arc::clone(&j));
        let mut other = entry(id, seq);
        other.at_ms += 1;
        let mine = entry(id, seq);
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { j1.append(id, &mine).await }),
            tokio::spawn(async move { j2.append(id, &other).await }),
        );
        let (r1, r2) = match (r1, r2) {
            (Ok(a), Ok(b)) => (a, b),
            _ => panic!("racing append task died"),
        };
        let oks = [&r1, &r2].iter().filter(|r| r.is_ok()).count();
        assert_eq!(
            oks, 1,
            "saga {id} seq {seq}: racing appends gave {r1:?} and {r2:?}"
        );
        let loser = if r1.is_ok() { r2 } else { r1 };
        expect_conflict(loser, id, seq, seq + 1, "racing append");
        let got = j
            .read(id)
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        assert_eq!(
            got.len() as u64,
            seq + 1,
            "saga {id}: racing appends left {} records",
            got.len()
        );
    }
}

/// A record whose stored bytes are garbage, truncated or from a newer format
/// is a typed error naming saga and sequence; other sagas stay readable and
/// listable.
pub async fn corrupt_record_is_typed_and_others_stay_readable<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let (bad, trunc, newer, good) = (sid(10, 1), sid(10, 2), sid(10, 3), sid(10, 4));
    for id in [bad, trunc, newer, good] {
        append_n(&j, id, 3).await;
    }
    let whole = crate::record::encode(&entry(trunc, 1));
    let cut = whole[..whole.len() / 2].to_vec();
    let newer_bytes = format!(
        r#"{{"v":{},"at_ms":1,"type":"stuck","reason":"from the future"}}"#,
        RECORD_FORMAT_VERSION + 1
    )
    .into_bytes();
    assert!(
        f.corrupt(&j, bad, 2, b"\xff\x00not json".to_vec()).await,
        "factory could not corrupt {bad} seq 2"
    );
    assert!(
        f.corrupt(&j, trunc, 1, cut).await,
        "factory could not corrupt {trunc} seq 1"
    );
    assert!(
        f.corrupt(&j, newer, 0, newer_bytes).await,
        "factory could not corrupt {newer} seq 0"
    );

    for (id, seq) in [(bad, 2), (trunc, 1)] {
        match j.read(id).await {
            Err(e @ JournalError::Corrupt { .. }) => {
                let JournalError::Corrupt { saga, seq: s, .. } = &e else {
                    unreachable!()
                };
                assert_eq!(
                    (*saga, *s),
                    (id, seq),
                    "corrupt error names the wrong record: {e}"
                );
                let msg = e.to_string();
                assert!(
                    msg.contains(&id.to_string()) && msg.contains(&format!("seq {seq}")),
                    "message: {msg}"
                );
            }
            other => {
                panic!("read of saga {id} with corrupt seq {seq}: expected Corrupt, got {other:?}")
            }
        }
    }
    match j.read(newer).await {
        Err(JournalError::UnsupportedVersion {
            saga,
            seq,
            found,
            supported,
        }) => {
            assert_eq!(
                (saga, seq, found, supported),
                (newer, 0, RECORD_FORMAT_VERSION + 1, RECORD_FORMAT_VERSION)
            );
        }
        other => {
            panic!("read of a newer-format record: expected UnsupportedVersion, got {other:?}")
        }
    }
    expect_entries(&j, good, 3, "neighbour of corrupt sagas").await;
    // read_many (what recovery uses) answers exactly as read does, in the order asked.
    let unknown = sid(10, 9);
    let ask = [good, bad, unknown, newer, trunc, good];
    let many = j.read_many(&ask).await;
    assert_eq!(
        many.len(),
        ask.len(),
        "read_many returns one result per saga asked"
    );
    for (id, got) in ask.iter().zip(many) {
        assert_eq!(
            got,
            j.read(*id).await,
            "read_many and read disagree on saga {id}"
        );
    }
    let mut all = vec![bad, trunc, newer, good];
    all.sort();
    expect_list(&j, SagaSet::Unfinished, &all, "with corrupt records").await;
    // Appending after a corrupt record still works: sequences are kept apart from contents.
    j.append(good, &entry(good, 3))
        .await
        .unwrap_or_else(|e| panic!("append next to corrupt sagas: {e}"));
    if let Some(j) = f.reopen(j).await {
        expect_entries(&j, good, 4, "neighbour of corrupt sagas after reopen").await;
        assert!(
            matches!(j.read(bad).await, Err(JournalError::Corrupt { seq: 2, .. })),
            "corruption after reopen"
        );
    }
}

/// Records of hundreds of KiB round-trip, also across a reopen.
pub async fn big_records_round_trip<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let a = sid(11, 1);
    let mut want = Vec::new();
    for (seq, kib) in [(0u64, 0usize), (1, 64), (2, 300), (3, 1)] {
        let e = if seq == 0 {
            entry(a, 0)
        } else {
            Entry {
                seq,
                at_ms: 1_700_000_000_000 + seq,
                // Non-ASCII and JSON escapes included on purpose.
                record: Record::Stuck {
                    reason: "\"取消\"\n".repeat(kib * 1024 / 10 + 1),
                },
            }
        };
        j.append(a, &e)
            .await
            .unwrap_or_else(|err| panic!("append {kib} KiB record: {err}"));
        want.push(e);
    }
    let got = j
        .read(a)
        .await
        .unwrap_or_else(|e| panic!("read big records: {e}"));
    assert!(got == want, "big records differ after read");
    if let Some(j) = f.reopen(j).await {
        let got = j
            .read(a)
            .await
            .unwrap_or_else(|e| panic!("read big records after reopen: {e}"));
        assert!(got == want, "big records differ after reopen");
    }
}

/// After a reopen: records, both sets and the next sequence of every saga are
/// as before (a duplicate is still a conflict, the next sequence is accepted).
pub async fn reopen_keeps_records_sets_and_sequences<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let (a, b, c) = (sid(12, 1), sid(12, 2), sid(12, 3));
    append_n(&j, a, 4).await;
    append_n(&j, b, 1).await;
    append_n(&j, c, 2).await;
    j.mark_finished(c)
        .await
        .unwrap_or_else(|e| panic!("mark_finished {c}: {e}"));
    let j = match f.reopen(j).await {
        Some(j) => j,
        None => return, // nothing to check for a journal that keeps nothing
    };
    expect_entries(&j, a, 4, "after reopen").await;
    expect_entries(&j, b, 1, "after reopen").await;
    expect_entries(&j, c, 2, "after reopen").await;
    expect_list(&j, SagaSet::Unfinished, &[a, b], "after reopen").await;
    expect_list(&j, SagaSet::Finished, &[c], "after reopen").await;
    expect_conflict(
        j.append(a, &entry(a, 3)).await,
        a,
        3,
        4,
        "duplicate after reopen",
    );
    expect_conflict(
        j.append(b, &entry(b, 0)).await,
        b,
        0,
        1,
        "duplicate of seq 0 after reopen",
    );
    j.append(a, &entry(a, 4))
        .await
        .unwrap_or_else(|e| panic!("next seq after reopen: {e}"));
    j.append(b, &entry(b, 1))
        .await
        .unwrap_or_else(|e| panic!("next seq after reopen: {e}"));
    expect_entries(&j, a, 5, "append after reopen").await;
    // And once more, so what was appended after the reopen persists too.
    if let Some(j) = f.reopen(j).await {
        expect_entries(&j, a, 5, "second reopen").await;
        expect_entries(&j, b, 2, "second reopen").await;
    }
}

// ---- the index checks ---------------------------------------------------------

/// One saga of the index checks: what it was started with and how it ends.
#[derive(Clone, Debug)]
struct Shape {
    id: SagaId,
    channel: &'static str,
    order_id: String,
    account: Option<&'static str>,
    kind: &'static str,
    state: SagaStatus,
    updated_at_ms: u64,
}

impl Shape {
    fn finished(&self) -> bool {
        self.state.is_terminal()
    }
}

const CHANNELS: [&str; 3] = ["tmall-tbc", "damai", "pandapon-1688"];
const ACCOUNTS: [Option<&str>; 3] = [None, Some("shop-a"), Some("shop-b")];
const KINDS: [&str; 3] = [
    crate::ids::CANCEL_UNPAID,
    crate::ids::CANCEL_PAID,
    "custom_kind",
];

/// `n` sagas of check `check` spread over channels, accounts, kinds and
/// every state; orders `0..n/2` so that two sagas share each order.
fn shapes(check: u8, n: u32) -> Vec<Shape> {
    (0..n)
        .map(|i| {
            let u = i as usize;
            let state = SagaStatus::ALL[u % SagaStatus::ALL.len()];
            Shape {
                id: sid(check, (i * 37) % 101),
                channel: CHANNELS[u % 3],
                order_id: format!("o{}", i / 2),
                account: ACCOUNTS[(u / 3) % 3],
                kind: KINDS[(u / 2) % 3],
                state,
                updated_at_ms: 0,
            }
        })
        .collect()
}

/// The records that bring a saga to its shape's state, at times from `t0`.
fn shape_entries(s: &Shape, t0: u64) -> Vec<Entry> {
    let order = OrderRef::new(s.channel, s.order_id.clone());
    let mut input = match s.kind {
        crate::ids::CANCEL_UNPAID => SagaInput::cancel_unpaid(order),
        crate::ids::CANCEL_PAID => SagaInput::cancel_paid(order),
        other => SagaInput::custom(other, order, serde_json::Value::Null),
    };
    if let Some(a) = s.account {
        input = input.with_account(a);
    }
    let mut records = vec![Record::Started { input, by: None }];
    let stuck = || Record::Stuck {
        reason: "conformance".into(),
    };
    match s.state {
        SagaStatus::Running => {
            records.push(stuck());
            records.push(Record::Resumed { by: "op".into() });
        }
        SagaStatus::Stuck => {
            records.push(Record::Switched {
                to: crate::ids::CANCEL_PAID.into(),
                reason: "conformance".into(),
            });
            records.push(stuck());
        }
        SagaStatus::Completed => records.push(Record::Finished {
            outcome: SagaOutcome::Completed {
                order: OrderState::Cancelled,
                note: None,
            },
        }),
        SagaStatus::Failed => {
            records.push(stuck());
            records.push(Record::Finished {
                outcome: SagaOutcome::Failed {
                    reason: "conformance".into(),
                },
            });
        }
        SagaStatus::Aborted => {
            records.push(Record::AbortRequested {
                reason: "conformance".into(),
                by: None,
            });
            records.push(Record::Finished {
                outcome: SagaOutcome::Aborted {
                    compensated: false,
                    reason: "conformance".into(),
                },
            });
        }
    }
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| Entry {
            seq: i as u64,
            at_ms: t0 + i as u64,
            record,
        })
        .collect()
}

/// Write the sagas (one record at a time, or all but the first as one
/// batch, alternately); returns the shapes with their update times.
async fn write_shapes<J: Journal>(j: &J, mut shapes: Vec<Shape>, t0: u64) -> Vec<Shape> {
    for (i, s) in shapes.iter_mut().enumerate() {
        let entries = shape_entries(s, t0 + 100 * i as u64);
        s.updated_at_ms = entries.last().map_or(0, |e| e.at_ms);
        let (first, rest) = entries.split_at(1);
        j.append(s.id, &first[0])
            .await
            .unwrap_or_else(|e| panic!("append saga {} seq 0: {e}", s.id));
        if i % 2 == 0 {
            j.append_batch(s.id, rest, s.finished())
                .await
                .unwrap_or_else(|e| panic!("append_batch saga {}: {e}", s.id));
        } else {
            for e in rest {
                j.append(s.id, e)
                    .await
                    .unwrap_or_else(|err| panic!("append saga {} seq {}: {err}", s.id, e.seq));
            }
            if s.finished() {
                j.mark_finished(s.id)
                    .await
                    .unwrap_or_else(|e| panic!("mark_finished {}: {e}", s.id));
            }
        }
    }
    shapes
}

/// Does `s` pass every filter of `q` (computed from the shape, not the journal)?
fn shape_matches(s: &Shape, q: &SagaQuery) -> bool {
    q.order
        .as_ref()
        .is_none_or(|(c, o)| c == s.channel && *o == s.order_id)
        && q.account.as_deref().is_none_or(|a| Some(a) == s.account)
        && q.state.is_none_or(|st| st == s.state)
        && q.channel.as_deref().is_none_or(|c| c == s.channel)
        && q.kind.as_deref().is_none_or(|k| k == s.kind)
        && q.since_ms.is_none_or(|t| s.updated_at_ms >= t)
        && q.set
            .is_none_or(|set| (set == SagaSet::Finished) == s.finished())
}

/// The queries the checks ask: every filter alone, some together.
fn queries(shapes: &[Shape]) -> Vec<SagaQuery> {
    let base = SagaQuery::default();
    let mut qs = vec![
        base.clone(),
        SagaQuery {
            set: Some(SagaSet::Unfinished),
            ..base.clone()
        },
        SagaQuery {
            set: Some(SagaSet::Finished),
            ..base.clone()
        },
    ];
    for st in SagaStatus::ALL {
        qs.push(SagaQuery {
            state: Some(st),
            ..base.clone()
        });
    }
    for c in CHANNELS {
        qs.push(SagaQuery {
            channel: Some(c.into()),
            ..base.clone()
        });
    }
    for k in KINDS {
        qs.push(SagaQuery {
            kind: Some(k.into()),
            ..base.clone()
        });
    }
    for a in ACCOUNTS.iter().flatten() {
        qs.push(SagaQuery {
            account: Some((*a).into()),
            ..base.clone()
        });
    }
    for s in shapes.iter().take(4) {
        qs.push(SagaQuery {
            order: Some((s.channel.into(), s.order_id.clone())),
            ..base.clone()
        });
    }
    qs.push(SagaQuery {
        order: Some(("tmall-tbc".into(), "no-such-order".into())),
        ..base.clone()
    });
    if let Some(mid) = shapes.get(shapes.len() / 2) {
        qs.push(SagaQuery {
            since_ms: Some(mid.updated_at_ms),
            ..base.clone()
        });
        qs.push(SagaQuery {
            since_ms: Some(mid.updated_at_ms),
            state: Some(SagaStatus::Stuck),
            ..base.clone()
        });
    }
    qs.push(SagaQuery {
        state: Some(SagaStatus::Stuck),
        channel: Some("damai".into()),
        ..base.clone()
    });
    qs.push(SagaQuery {
        account: Some("shop-a".into()),
        kind: Some(crate::ids::CANCEL_PAID.into()),
        set: Some(SagaSet::Unfinished),
        ..base.clone()
    });
    qs.push(SagaQuery {
        state: Some(SagaStatus::Completed),
        set: Some(SagaSet::Unfinished),
        ..base
    });
    qs
}

/// Every page of `q` at page size `limit`, checked as it goes: no page over
/// the limit, a cursor exactly when more follow.
async fn all_pages<J: Journal>(j: &J, q: &SagaQuery, limit: usize, what: &str) -> Vec<SagaId> {
    let mut q = q.clone();
    q.limit = limit;
    q.cursor = None;
    let mut out: Vec<SagaId> = Vec::new();
    for round in 0..10_000 {
        let page = j
            .query(&q)
            .await
            .unwrap_or_else(|e| panic!("{what}: query {q:?}: {e}"));
        assert!(
            page.ids.len() <= limit,
            "{what}: page {round} of {q:?} has {} sagas, over the limit",
            page.ids.len()
        );
        out.extend(&page.ids);
        match page.next_cursor {
            Some(c) => {
                assert_eq!(
                    Some(c.0),
                    page.ids.last().copied(),
                    "{what}: the cursor of page {round} of {q:?} is not its last saga"
                );
                q.cursor = Some(c);
            }
            None => return out,
        }
    }
    panic!("{what}: {q:?} never reached its last page")
}

/// Check every query against the shapes and the scan.
async fn check_queries<J: Journal>(j: &J, shapes: &[Shape], what: &str) {
    for q in queries(shapes) {
        let mut want: Vec<SagaId> = shapes
            .iter()
            .filter(|s| shape_matches(s, &q))
            .map(|s| s.id)
            .collect();
        want.sort();
        let got = all_pages(j, &q, 1000, what).await;
        assert_eq!(got, want, "{what}: query {q:?}");
        let mut scan_q = q.clone();
        scan_q.limit = 1000;
        let scanned = scan_query(j, &scan_q)
            .await
            .unwrap_or_else(|e| panic!("{what}: scan {q:?}: {e}"));
        assert_eq!(
            got, scanned.ids,
            "{what}: query {q:?} differs from the scan"
        );
    }
}

/// Each filter (order, account, state, channel, kind, since, set, and some
/// together) returns exactly the sagas that match, which are exactly the
/// ones a read-and-fold scan returns, in id order.
pub async fn query_filters_return_what_the_scan_returns<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let shapes = write_shapes(&j, shapes(13, 40), 1_700_000_000_000).await;
    check_queries(&j, &shapes, "filters").await;
}

/// Paging with the cursor visits each matching saga exactly once, at any
/// page size; a cursor past the last saga gives an empty last page.
pub async fn query_pages_visit_each_saga_once<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let shapes = write_shapes(&j, shapes(14, 23), 1_700_000_000_000).await;
    for q in queries(&shapes) {
        let whole = all_pages(&j, &q, 1000, "one page").await;
        for limit in [1, 2, 7] {
            let paged = all_pages(&j, &q, limit, "paged").await;
            assert_eq!(paged, whole, "pages of {limit} of {q:?}");
            let mut dedup = paged.clone();
            dedup.dedup();
            assert_eq!(dedup.len(), paged.len(), "a saga seen twice paging {q:?}");
        }
    }
    let last = SagaQuery {
        cursor: Some(crate::index::Cursor(SagaId::from_u128(u128::MAX))),
        ..SagaQuery::default()
    };
    let page = j
        .query(&last)
        .await
        .unwrap_or_else(|e| panic!("query after the last saga: {e}"));
    assert_eq!(page.ids, Vec::<SagaId>::new(), "a page after the last saga");
    assert_eq!(page.next_cursor, None, "a page after the last saga");
}

/// After a reopen (a restarted process, or a crash after the appends were
/// acknowledged) the index neither points at a missing saga nor misses one;
/// records appended after the reopen move the sagas in the index.
pub async fn query_index_survives_reopen_and_follows_later_appends<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let mut shapes = write_shapes(&j, shapes(15, 20), 1_700_000_000_000).await;
    let Some(j) = f.reopen(j).await else {
        return;
    };
    check_queries(&j, &shapes, "after reopen").await;
    // Every indexed saga reads back.
    let all = all_pages(&j, &SagaQuery::default(), 1000, "after reopen").await;
    for id in &all {
        if let Err(e) = j.read(*id).await {
            panic!("after reopen the index names saga {id}, which does not read: {e}");
        }
    }
    // Unstick the stuck ones, stick the running ones, one record each.
    let later = 1_800_000_000_000;
    for s in shapes.iter_mut() {
        let record = match s.state {
            SagaStatus::Stuck => Record::Resumed { by: "op".into() },
            SagaStatus::Running => Record::Stuck {
                reason: "later".into(),
            },
            _ => continue,
        };
        let seq = j
            .read(s.id)
            .await
            .unwrap_or_else(|e| panic!("read {}: {e}", s.id))
            .len() as u64;
        let e = Entry {
            seq,
            at_ms: later,
            record,
        };
        j.append(s.id, &e)
            .await
            .unwrap_or_else(|err| panic!("append after reopen saga {} seq {seq}: {err}", s.id));
        s.state = match s.state {
            SagaStatus::Stuck => SagaStatus::Running,
            _ => SagaStatus::Stuck,
        };
        s.updated_at_ms = later;
    }
    check_queries(&j, &shapes, "appends after reopen").await;
    if let Some(j) = f.reopen(j).await {
        check_queries(&j, &shapes, "second reopen").await;
    }
}

/// Every loaded saga reads back as loaded, lists in its set, and the
/// queries answer as the shapes say.
async fn check_loaded<J: Journal>(
    j: &J,
    load: &[(SagaId, Vec<Entry>, bool)],
    shapes: &[Shape],
    what: &str,
) {
    for (id, entries, _) in load {
        let got = j
            .read(*id)
            .await
            .unwrap_or_else(|e| panic!("{what}: read saga {id}: {e}"));
        assert_eq!(&got, entries, "{what}: saga {id} reads back differently");
    }
    let mut unfinished: Vec<SagaId> = shapes
        .iter()
        .filter(|s| !s.finished())
        .map(|s| s.id)
        .collect();
    let mut finished: Vec<SagaId> = shapes
        .iter()
        .filter(|s| s.finished())
        .map(|s| s.id)
        .collect();
    unfinished.sort();
    finished.sort();
    expect_list(j, SagaSet::Unfinished, &unfinished, what).await;
    expect_list(j, SagaSet::Finished, &finished, what).await;
    check_queries(j, shapes, what).await;
}

/// What [`Journal::append_many`] wrote reads, lists and queries exactly as
/// the same sagas appended one by one; later appends continue their
/// sequences; a sequence that does not start at the saga's next is refused;
/// and it all survives a reopen.
pub async fn append_many_is_as_if_appended_one_by_one<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    let t0 = 1_700_000_000_000;
    let mut shapes = shapes(16, 30);
    let mut load: Vec<(SagaId, Vec<Entry>, bool)> = Vec::new();
    for (i, s) in shapes.iter_mut().enumerate() {
        let entries = shape_entries(s, t0 + 100 * i as u64);
        s.updated_at_ms = entries.last().map_or(0, |e| e.at_ms);
        load.push((s.id, entries, s.finished()));
    }
    // Two calls, so a journal that writes one call at once meets a second.
    let (a, b) = load.split_at(load.len() / 2);
    j.append_many(a)
        .await
        .unwrap_or_else(|e| panic!("append_many (first half): {e}"));
    j.append_many(b)
        .await
        .unwrap_or_else(|e| panic!("append_many (second half): {e}"));
    j.append_many(&[])
        .await
        .unwrap_or_else(|e| panic!("append_many of nothing: {e}"));
    check_loaded(&j, &load, &shapes, "after append_many").await;
    // Sequences continue where the load left them.
    let next = shapes
        .iter()
        .zip(&load)
        .find(|(s, _)| !s.finished())
        .map(|(s, (_, entries, _))| (s.id, entries.len() as u64));
    if let Some((id, n)) = next {
        expect_conflict(
            j.append(id, &entry(id, n - 1)).await,
            id,
            n - 1,
            n,
            "re-append after append_many",
        );
        let mut e = entry(id, n);
        e.record = Record::Resumed { by: "op".into() };
        j.append(id, &e)
            .await
            .unwrap_or_else(|err| panic!("append after append_many saga {id} seq {n}: {err}"));
        let (_, entries, _) = load
            .iter_mut()
            .find(|(s, _, _)| *s == id)
            .unwrap_or_else(|| panic!("saga {id} not loaded"));
        entries.push(e);
        if let Some(s) = shapes.iter_mut().find(|s| s.id == id) {
            s.state = SagaStatus::Running;
            s.updated_at_ms = 1_700_000_000_000 + n;
        }
    }
    // A saga that exists already, loaded again from seq 0: refused, and
    // nothing of it changes.
    let again = sid(16, 200);
    j.append_many(&[(again, vec![entry(again, 0)], false)])
        .await
        .unwrap_or_else(|e| panic!("append_many of one saga: {e}"));
    match j
        .append_many(&[(again, vec![entry(again, 0)], false)])
        .await
    {
        Err(JournalError::SequenceConflict { saga, seq: 0, .. }) => {
            assert_eq!(saga, again, "the conflict names the wrong saga")
        }
        other => panic!("append_many of an existing saga from seq 0: {other:?}"),
    }
    expect_entries(&j, again, 1, "after a refused append_many").await;
    load.push((again, vec![entry(again, 0)], false));
    shapes.push(Shape {
        id: again,
        channel: "tmall-tbc",
        order_id: format!("{}", again.0.as_u128() % 1_000_000_007),
        account: None,
        kind: crate::ids::CANCEL_UNPAID,
        state: SagaStatus::Running,
        updated_at_ms: 1_700_000_000_000,
    });
    check_loaded(&j, &load, &shapes, "after later appends").await;
    if let Some(j) = f.reopen(j).await {
        check_loaded(&j, &load, &shapes, "after reopen").await;
    }
}

/// [`Journal::count`] is the number of sagas [`Journal::query`] pages
/// through, for every query; [`Journal::counts`] counts sagas by state and
/// channel as the index holds them (the terminal states when the journal
/// says they are exact); [`Journal::recent`] lists the newest-updated sagas
/// of the states asked, newest first.
pub async fn count_counts_and_recent_agree_with_the_query<F: JournalFactory>(f: &F) {
    let j = f.fresh().await;
    // Counted before any write, so a journal that keeps counts must keep
    // them up to date through the writes below.
    let empty = j
        .counts()
        .await
        .unwrap_or_else(|e| panic!("counts of an empty journal: {e}"));
    assert!(
        empty.by_state_channel.values().all(|n| *n == 0),
        "counts of an empty journal: {empty:?}"
    );
    let shapes = write_shapes(&j, shapes(17, 40), 1_700_000_000_000).await;
    for q in queries(&shapes) {
        let paged = all_pages(&j, &q, 1000, "count").await.len() as u64;
        let mut with_cursor = q.clone();
        with_cursor.cursor = Some(crate::index::Cursor(SagaId::from_u128(u128::MAX)));
        with_cursor.limit = 1;
        for q2 in [&q, &with_cursor] {
            let n = j
                .count(q2)
                .await
                .unwrap_or_else(|e| panic!("count {q2:?}: {e}"));
            assert_eq!(n, paged, "count {q2:?} (cursor and limit ignored)");
        }
    }
    let mut want = SagaCounts::default();
    for s in &shapes {
        want.add(s.state, s.channel, 1);
    }
    let got = j.counts().await.unwrap_or_else(|e| panic!("counts: {e}"));
    let keep = |c: &SagaCounts, terminal: bool| -> Vec<((SagaStatus, String), u64)> {
        c.by_state_channel
            .iter()
            .filter(|((s, _), n)| **n > 0 && (terminal || !s.is_terminal()))
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    };
    assert_eq!(
        keep(&got, got.terminal_exact),
        keep(&want, got.terminal_exact),
        "counts by state and channel"
    );
    for states in [
        vec![SagaStatus::Failed, SagaStatus::Stuck],
        vec![SagaStatus::Running],
        vec![
            SagaStatus::Aborted,
            SagaStatus::Completed,
            SagaStatus::Failed,
        ],
    ] {
        let mut hits: Vec<(u64, SagaId)> = shapes
            .iter()
            .filter(|s| states.contains(&s.state))
            .map(|s| (s.updated_at_ms, s.id))
            .collect();
        hits.sort_by(|a, b| b.cmp(a));
        for limit in [1, 3, 1000] {
            let want: Vec<SagaId> = hits.iter().take(limit).map(|(_, id)| *id).collect();
            let got = j
                .recent(&states, limit)
                .await
                .unwrap_or_else(|e| panic!("recent {states:?} {limit}: {e}"));
            assert_eq!(got, want, "recent {states:?} limit {limit}");
        }
    }
}
