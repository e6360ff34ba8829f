//! The journal conformance suite (rescind-core, feature `conformance`) on
//! PostgreSQL: the same checks the in-memory and sled journals pass.
//!
//! Each check gets fresh schemas. "Reopen" drops the journal and connects a
//! new one with the same worker id, then claims unfinished sagas: what a
//! restarted worker does (`Engine::recover` calls `claim_unfinished`).

mod common;

use async_trait::async_trait;
use rescind_core::conformance::JournalFactory;
use rescind_core::{Journal, SagaId};
use rescind_journal_postgres::PgJournal;

struct Pg {
    url: String,
}

impl Pg {
    fn from_env() -> Option<Pg> {
        common::pg_url().map(|url| Pg { url })
    }
}

#[async_trait]
impl JournalFactory for Pg {
    type Journal = PgJournal;

    async fn fresh(&self) -> PgJournal {
        let schema = common::fresh_schema("conf");
        // The worker id names the schema, so corrupt/reopen can find it.
        common::open(&self.url, common::cfg(&schema, &schema)).await
    }

    async fn corrupt(&self, j: &PgJournal, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
        let c = common::raw(&self.url, j.worker_id()).await;
        let n = c
            .execute(
                "UPDATE records SET body = $3 WHERE saga_id = $1 AND seq = $2",
                &[&saga.0, &(seq as i64), &bytes],
            )
            .await
            .unwrap_or_else(|e| panic!("corrupting {saga} seq {seq}: {e}"));
        n == 1
    }

    async fn reopen(&self, j: PgJournal) -> Option<PgJournal> {
        let schema = j.worker_id().to_owned();
        drop(j);
        let j = common::open(&self.url, common::cfg(&schema, &schema)).await;
        j.claim_unfinished()
            .await
            .unwrap_or_else(|e| panic!("claim after reopen: {e}"));
        Some(j)
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(f) = Pg::from_env() else { return };
                rescind_core::conformance::$name(&f).await;
            }
        )*
        /// Every check of the suite has a test here (a new check fails this until added).
        #[test]
        fn every_check_is_run() {
            assert_eq!(&[$(stringify!($name)),*], rescind_core::conformance::CHECKS);
        }
    };
}

checks!(
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
