//! The journal conformance suite against [`SledJournal`], in both durability modes.

use async_trait::async_trait;
use rescind_core::conformance::JournalFactory;
use rescind_core::SagaId;
use rescind_journal_sled::{Durability, SledConfig, SledJournal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Fresh journals in subdirectories of one temp dir; reopen closes and opens
/// the same directory, as a restarted process would.
struct Sled {
    dir: tempfile::TempDir,
    n: AtomicU32,
    config: SledConfig,
}

impl Sled {
    fn new(durability: Durability) -> Self {
        Sled {
            dir: tempfile::tempdir().expect("temp dir"),
            n: AtomicU32::new(0),
            config: SledConfig::default().with_durability(durability),
        }
    }
}

#[async_trait]
impl JournalFactory for Sled {
    type Journal = SledJournal;

    async fn fresh(&self) -> SledJournal {
        let path: PathBuf = self
            .dir
            .path()
            .join(format!("j{}", self.n.fetch_add(1, Ordering::Relaxed)));
        SledJournal::open(&path, self.config.clone())
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }

    async fn corrupt(&self, j: &SledJournal, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
        j.write_raw_record(saga, seq, bytes).await.is_ok()
    }

    async fn reopen(&self, j: SledJournal) -> Option<SledJournal> {
        let path = j.path().to_path_buf();
        j.close()
            .await
            .unwrap_or_else(|e| panic!("close {}: {e}", path.display()));
        Some(
            SledJournal::open(&path, self.config.clone())
                .await
                .unwrap_or_else(|e| panic!("reopen {}: {e}", path.display())),
        )
    }
}

mod power_loss {
    rescind_core::journal_conformance_tests!(super::Sled::new(
        rescind_journal_sled::Durability::PowerLoss
    ));
}

mod process {
    rescind_core::journal_conformance_tests!(super::Sled::new(
        rescind_journal_sled::Durability::Process
    ));
}

/// Group commit off (one flush per append) keeps the contract too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_per_append_passes_the_suite() {
    let mut f = Sled::new(Durability::Process);
    f.config = f.config.clone().flush_per_append();
    let passed = rescind_core::conformance::run_all(&f).await;
    assert_eq!(passed, rescind_core::conformance::CHECKS);
}

/// A longest-wait setting (batches wait for company) keeps the contract too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_wait_passes_the_suite() {
    let mut f = Sled::new(Durability::PowerLoss);
    f.config.batch_wait_max_us = 500;
    f.config.batch_records_max = 8;
    let passed = rescind_core::conformance::run_all(&f).await;
    assert_eq!(passed, rescind_core::conformance::CHECKS);
}
