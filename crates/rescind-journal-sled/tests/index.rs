//! The saga indexes beyond the shared conformance checks: compaction deletes
//! a saga's index keys with its records, and a format 1 journal (written
//! before the indexes existed) gets them built when it is opened.

use rescind_core::conformance::entry;
use rescind_core::index::scan_query;
use rescind_core::{
    Entry, Journal, OrderState, Record, SagaId, SagaOutcome, SagaQuery, SagaSet, SagaStatus,
};
use rescind_journal_sled::{keys, Retention, SledConfig, SledJournal, JOURNAL_FORMAT_VERSION};
use std::path::Path;

fn sid(n: u128) -> SagaId {
    SagaId::from_u128(0x1de8_0000_0000 + n)
}

fn finished(seq: u64, at_ms: u64) -> Entry {
    Entry {
        seq,
        at_ms,
        record: Record::Finished {
            outcome: SagaOutcome::Completed {
                order: OrderState::Cancelled,
                note: None,
            },
        },
    }
}

/// Every key of the journal tree that ends in `saga`'s bytes and is not a
/// record: the unfinished/finished marks and the index keys.
fn index_keys_of(dir: &Path, saga: SagaId) -> Vec<Vec<u8>> {
    let db = sled::open(dir).expect("sled open");
    let tree = db.open_tree(keys::TREE).expect("tree");
    let id = saga.0.as_bytes();
    tree.iter()
        .keys()
        .map(|k| k.expect("scan").to_vec())
        .filter(|k| k.first() != Some(&keys::RECORD) && k.ends_with(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_deletes_the_index_keys_of_the_sagas_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig::default().with_retention(Retention {
        finished_keep_max: 0,
        finished_keep_age_ms: 0,
    });
    let j = SledJournal::open(dir.path(), config.clone())
        .await
        .expect("open");
    let (gone, kept) = (sid(1), sid(2));
    for s in [gone, kept] {
        j.append(s, &entry(s, 0)).await.expect("append");
        j.append(s, &entry(s, 1)).await.expect("append");
    }
    j.append_batch(gone, &[finished(2, 5_000)], true)
        .await
        .expect("finish");
    let stuck = SagaQuery {
        state: Some(SagaStatus::Stuck),
        ..SagaQuery::default()
    };
    let done = SagaQuery {
        state: Some(SagaStatus::Completed),
        ..SagaQuery::default()
    };
    assert_eq!(j.query(&done).await.expect("query").ids, vec![gone]);
    let report = j.compact(10_000).await.expect("compact");
    assert_eq!(report.sagas_removed, 1);
    assert_eq!(
        j.query(&done).await.expect("query").ids,
        Vec::<SagaId>::new()
    );
    assert_eq!(j.query(&stuck).await.expect("query").ids, vec![kept]);
    assert_eq!(
        j.query(&SagaQuery::default()).await.expect("query").ids,
        vec![kept]
    );
    j.close().await.expect("close");
    assert_eq!(
        index_keys_of(dir.path(), gone),
        Vec::<Vec<u8>>::new(),
        "compaction left index keys of the saga it deleted"
    );
    // The kept saga: unfinished mark, entry, and its by-state, order,
    // channel, kind and time keys (no account).
    assert_eq!(index_keys_of(dir.path(), kept).len(), 7);
}

/// Rewrite the journal as format 1 would have it: no index keys, version 1.
fn downgrade_to_format_1(dir: &Path) {
    let db = sled::open(dir).expect("sled open");
    let tree = db.open_tree(keys::TREE).expect("tree");
    let index_prefixes = [
        keys::ENTRY,
        keys::BY_STATE,
        keys::BY_ORDER,
        keys::BY_ACCOUNT,
        keys::BY_CHANNEL,
        keys::BY_KIND,
        keys::BY_TIME,
    ];
    let doomed: Vec<_> = tree
        .iter()
        .keys()
        .map(|k| k.expect("scan"))
        .filter(|k| k.first().is_some_and(|b| index_prefixes.contains(b)))
        .collect();
    assert!(
        !doomed.is_empty(),
        "the journal had no index keys to remove"
    );
    for k in doomed {
        tree.remove(k).expect("remove");
    }
    tree.insert(keys::META_FORMAT_VERSION, &1u32.to_be_bytes()[..])
        .expect("version");
    db.flush().expect("flush");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_journal_gets_its_indexes_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("open");
    let ids: Vec<SagaId> = (0..30).map(sid).collect();
    for (i, s) in ids.iter().enumerate() {
        j.append(*s, &entry(*s, 0)).await.expect("append");
        if i % 3 == 1 {
            j.append(*s, &entry(*s, 1)).await.expect("append stuck");
        }
        if i % 3 == 2 {
            j.append_batch(*s, &[finished(1, 7)], true)
                .await
                .expect("finish");
        }
    }
    j.close().await.expect("close");
    downgrade_to_format_1(dir.path());
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("reopen a format 1 journal");
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
    j.close().await.expect("close");
    let db = sled::open(dir.path()).expect("sled open");
    let tree = db.open_tree(keys::TREE).expect("tree");
    let v = tree
        .get(keys::META_FORMAT_VERSION)
        .expect("get")
        .expect("version");
    assert_eq!(v.as_ref(), &JOURNAL_FORMAT_VERSION.to_be_bytes()[..]);
}
