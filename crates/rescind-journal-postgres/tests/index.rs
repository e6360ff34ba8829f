//! The saga index columns beyond the conformance checks: a database of
//! schema version 2 (before the index existed) opens, is migrated to
//! version 3, and its sagas are indexed from their records.

mod common;

use rescind_core::conformance::entry;
use rescind_core::index::scan_query;
use rescind_core::{
    Entry, Journal, OrderState, Record, SagaId, SagaOutcome, SagaQuery, SagaSet, SagaStatus,
};
use rescind_journal_postgres::SCHEMA_VERSION;

fn sid(n: u128) -> SagaId {
    SagaId::from_u128(0x1de8_9000_0000 + n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_database_opens_and_its_sagas_get_indexed() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("idx");
    let j = common::open(&url, common::cfg(&schema, &schema)).await;
    let ids: Vec<SagaId> = (0..12).map(sid).collect();
    for (i, s) in ids.iter().enumerate() {
        j.append(*s, &entry(*s, 0)).await.expect("append");
        if i % 3 == 1 {
            j.append(*s, &entry(*s, 1)).await.expect("append stuck");
        }
        if i % 3 == 2 {
            let fin = Entry {
                seq: 1,
                at_ms: 9,
                record: Record::Finished {
                    outcome: SagaOutcome::Completed {
                        order: OrderState::Cancelled,
                        note: None,
                    },
                },
            };
            j.append_batch(*s, &[fin], true).await.expect("finish");
        }
    }
    drop(j);
    // Back to what schema version 2 had: no index columns.
    let raw = common::raw(&url, &schema).await;
    raw.batch_execute(
        "DROP INDEX sagas_by_order, sagas_by_account, sagas_by_state, sagas_by_kind,
                    sagas_by_channel, sagas_by_updated, sagas_unindexed;
         ALTER TABLE sagas DROP COLUMN order_channel, DROP COLUMN order_id, DROP COLUMN account,
                           DROP COLUMN kind, DROP COLUMN state, DROP COLUMN updated_at_ms;
         DROP TABLE app_key_bans;
         UPDATE rescind_meta SET schema_version = 2;",
    )
    .await
    .expect("downgrade to schema 2");
    let j = common::open(&url, common::cfg(&schema, &schema)).await;
    let version: i32 = raw
        .query_one("SELECT schema_version FROM rescind_meta", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, SCHEMA_VERSION);
    let unindexed: i64 = raw
        .query_one("SELECT count(*) FROM sagas WHERE kind IS NULL", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(unindexed, 0, "the backfill left sagas unindexed");
    for q in [
        SagaQuery::default(),
        SagaQuery {
            state: Some(SagaStatus::Stuck),
            ..SagaQuery::default()
        },
        SagaQuery {
            state: Some(SagaStatus::Completed),
            ..SagaQuery::default()
        },
        SagaQuery {
            channel: Some("tmall-tbc".into()),
            set: Some(SagaSet::Unfinished),
            ..SagaQuery::default()
        },
    ] {
        let got = j.query(&q).await.expect("query");
        let want = scan_query(&j, &q).await.expect("scan");
        assert!(!got.ids.is_empty(), "{q:?} found nothing");
        assert_eq!(got, want, "{q:?}");
    }
    drop(j);
    common::drop_schema(&url, &schema).await;
}
