//! The journal conformance suite against [`MemoryJournal`].
//!
//! Run with `cargo test -p rescind-core --features conformance --test conformance_memory`.
#![cfg(feature = "conformance")]

use async_trait::async_trait;
use rescind_core::conformance::JournalFactory;
use rescind_core::{MemoryJournal, SagaId};

/// Fresh in-memory journals; "reopen" is [`MemoryJournal::restart`], which
/// keeps the records as a restarted process would find durable ones.
struct Memory;

#[async_trait]
impl JournalFactory for Memory {
    type Journal = MemoryJournal;

    async fn fresh(&self) -> MemoryJournal {
        MemoryJournal::new()
    }

    async fn corrupt(&self, j: &MemoryJournal, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
        j.corrupt(saga, seq, bytes)
    }

    async fn reopen(&self, j: MemoryJournal) -> Option<MemoryJournal> {
        Some(j.restart())
    }
}

rescind_core::journal_conformance_tests!(Memory);

/// The whole suite in one go, as a journal without per-check tests would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_every_check() {
    let passed = rescind_core::conformance::run_all(&Memory).await;
    assert_eq!(passed, rescind_core::conformance::CHECKS);
}

/// The suite can fail: a journal that forgets sequence checks is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_catches_a_journal_without_sequence_checks() {
    use rescind_core::{Entry, Journal, JournalError, SagaSet};

    /// Accepts any sequence: appends raw, bypassing MemoryJournal's check.
    struct Sloppy(MemoryJournal);
    #[async_trait]
    impl Journal for Sloppy {
        async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
            self.0.append_raw(saga, rescind_core::record::encode(entry));
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
    struct SloppyFactory;
    #[async_trait]
    impl JournalFactory for SloppyFactory {
        type Journal = Sloppy;
        async fn fresh(&self) -> Sloppy {
            Sloppy(MemoryJournal::new())
        }
        async fn corrupt(&self, j: &Sloppy, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
            j.0.corrupt(saga, seq, bytes)
        }
        async fn reopen(&self, j: Sloppy) -> Option<Sloppy> {
            Some(j)
        }
    }
    let failed = tokio::spawn(async {
        rescind_core::conformance::duplicate_sequence_is_a_conflict(&SloppyFactory).await;
    })
    .await;
    assert!(
        failed.is_err(),
        "the duplicate check passed a journal that accepts duplicates"
    );
}

/// The index checks can fail: a journal whose query skips a stuck saga (a
/// stale index) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_catches_a_query_that_misses_a_saga() {
    use rescind_core::{Entry, Journal, JournalError, SagaPage, SagaQuery, SagaSet, SagaStatus};

    /// Answers queries by the scan, minus the first stuck saga.
    struct Stale(MemoryJournal);
    #[async_trait]
    impl Journal for Stale {
        async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
            self.0.append(saga, entry).await
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
        async fn query(&self, q: &SagaQuery) -> Result<SagaPage, JournalError> {
            let mut page = rescind_core::index::scan_query(self, q).await?;
            if q.state == Some(SagaStatus::Stuck) && !page.ids.is_empty() {
                page.ids.remove(0);
            }
            Ok(page)
        }
    }
    struct StaleFactory;
    #[async_trait]
    impl JournalFactory for StaleFactory {
        type Journal = Stale;
        async fn fresh(&self) -> Stale {
            Stale(MemoryJournal::new())
        }
        async fn corrupt(&self, j: &Stale, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
            j.0.corrupt(saga, seq, bytes)
        }
        async fn reopen(&self, j: Stale) -> Option<Stale> {
            Some(j)
        }
    }
    let failed = tokio::spawn(async {
        rescind_core::conformance::query_filters_return_what_the_scan_returns(&StaleFactory).await;
    })
    .await;
    assert!(
        failed.is_err(),
        "the query check passed a journal whose index misses a stuck saga"
    );
}
