//! Bad input: corrupt values and keys written straight into sled (using the
//! documented layout), paths that are not journals, locks, newer formats.
//! Every case is a typed or clear error, never a panic, and other sagas stay readable.

use rescind_core::conformance::entry;
use rescind_core::{Journal, JournalError, SagaId, SagaSet};
use rescind_journal_sled::{keys, SledConfig, SledJournal, JOURNAL_FORMAT_VERSION};
use std::path::Path;

fn sid(n: u128) -> SagaId {
    SagaId::from_u128(0xbad0_0000 + n)
}

async fn journal_with(path: &Path, sagas: &[(SagaId, u64)]) {
    let j = SledJournal::open(path, SledConfig::default())
        .await
        .expect("open");
    for &(saga, n) in sagas {
        for seq in 0..n {
            j.append(saga, &entry(saga, seq)).await.expect("append");
        }
    }
    j.close().await.expect("close");
}

/// Change the tree directly, as a disk fault or a foreign tool would.
fn poke(path: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled::open(path).expect("raw sled open");
    let tree = db.open_tree(keys::TREE).expect("tree");
    f(&tree);
    db.flush().expect("flush");
}

fn expect_backend_error(r: Result<SledJournal, JournalError>, path: &Path, needle: &str) {
    match r {
        Err(JournalError::Backend(msg)) => {
            assert!(
                msg.contains(&path.display().to_string()),
                "error does not name the path: {msg}"
            );
            assert!(msg.contains(needle), "error does not say {needle:?}: {msg}");
        }
        Err(other) => panic!("expected a Backend error saying {needle:?}, got {other:?}"),
        Ok(_) => panic!(
            "opened {} but expected an error saying {needle:?}",
            path.display()
        ),
    }
}

/// The typed lock error, naming the path (the CLI attaches its "stop the
/// worker" hint to this variant only).
fn expect_locked(r: Result<SledJournal, JournalError>, path: &Path) {
    let Err(e) = r else {
        panic!("opened {} but expected it locked", path.display())
    };
    match &e {
        JournalError::Locked { path: at, detail } => {
            assert_eq!(at, &path.display().to_string(), "{e}");
            assert!(detail.contains("another process"), "{e}");
            assert!(e.to_string().contains("locked"), "{e}");
        }
        other => panic!("expected JournalError::Locked, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_missing_records_are_typed_and_others_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (garbage, truncated, gap, empty, good) = (sid(1), sid(2), sid(3), sid(4), sid(5));
    journal_with(
        dir.path(),
        &[
            (garbage, 3),
            (truncated, 3),
            (gap, 3),
            (empty, 2),
            (good, 3),
        ],
    )
    .await;
    poke(dir.path(), |t| {
        t.insert(keys::record(garbage, 1), &b"\x00\x01\x02garbage"[..])
            .unwrap();
        let whole = t.get(keys::record(truncated, 2)).unwrap().unwrap();
        t.insert(keys::record(truncated, 2), &whole[..whole.len() - 7])
            .unwrap();
        t.remove(keys::record(gap, 1)).unwrap();
        t.insert(keys::record(empty, 0), &b""[..]).unwrap();
    });

    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("reopen after corruption");
    for (saga, seq, why) in [
        (garbage, 1, "garbage"),
        (truncated, 2, "truncated"),
        (gap, 1, "missing"),
        (empty, 0, "empty"),
    ] {
        match j.read(saga).await {
            Err(e @ JournalError::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&saga.to_string()) && msg.contains(&format!("seq {seq}")),
                    "{why}: {msg}"
                );
            }
            other => panic!("{why}: expected Corrupt naming seq {seq}, got {other:?}"),
        }
    }
    assert_eq!(j.read(good).await.expect("good saga").len(), 3);
    assert_eq!(j.list(SagaSet::Unfinished).await.expect("list").len(), 5);
    // The journal keeps working next to corrupt sagas, and their sequences
    // still come from the keys.
    j.append(good, &entry(good, 3))
        .await
        .expect("append next to corruption");
    match j.append(garbage, &entry(garbage, 1)).await {
        Err(JournalError::SequenceConflict { expected: 3, .. }) => {}
        other => panic!("append to a corrupt saga: expected SequenceConflict(3), got {other:?}"),
    }
    j.mark_finished(garbage)
        .await
        .expect("a corrupt saga can still be finished by an operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_index_keys_and_values_do_not_stop_listing_or_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (sid(10), sid(11));
    journal_with(dir.path(), &[(a, 1), (b, 1)]).await;
    poke(dir.path(), |t| {
        t.insert(b"Ushort", &b"x"[..]).unwrap();
        t.insert(b"Fshort", &b"x"[..]).unwrap();
        t.insert(b"R\x01", &b"x"[..]).unwrap();
    });
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("open");
    assert_eq!(j.list(SagaSet::Unfinished).await.expect("list"), vec![a, b]);
    assert_eq!(j.list(SagaSet::Finished).await.expect("list"), vec![]);
    j.compact(u64::MAX)
        .await
        .expect("compaction skips malformed keys");
    assert_eq!(j.read(a).await.expect("read").len(), 1);
}

#[tokio::test]
async fn a_file_or_a_foreign_directory_is_not_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("journal");
    std::fs::write(&file, b"hello").unwrap();
    expect_backend_error(
        SledJournal::open(&file, SledConfig::default()).await,
        &file,
        "not a directory",
    );

    let foreign = dir.path().join("photos");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("cat.jpg"), b"\xff\xd8").unwrap();
    expect_backend_error(
        SledJournal::open(&foreign, SledConfig::default()).await,
        &foreign,
        "not a sled database",
    );
    assert!(
        !foreign.join("db").exists(),
        "open must not create sled files among foreign ones"
    );

    // Another application's sled database is not adopted either.
    let other = dir.path().join("other-app");
    {
        let db = sled::open(&other).unwrap();
        db.insert(b"user:1", &b"alice"[..]).unwrap();
        db.flush().unwrap();
    }
    expect_backend_error(
        SledJournal::open(&other, SledConfig::default()).await,
        &other,
        "not a rescind journal",
    );
}

#[tokio::test]
async fn garbage_sled_files_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    // A garbage `conf` beside a garbage `db`.
    let bad_conf = dir.path().join("bad-conf");
    std::fs::create_dir(&bad_conf).unwrap();
    std::fs::write(bad_conf.join("conf"), b"\x00\x01garbage\n").unwrap();
    std::fs::write(bad_conf.join("db"), vec![0xa5u8; 4096]).unwrap();
    let r = SledJournal::open(&bad_conf, SledConfig::default()).await;
    assert!(
        matches!(&r, Err(JournalError::Backend(m)) if m.contains(&bad_conf.display().to_string()) && m.contains("corrupt")),
        "{r:?}"
    );

    // A real journal whose data file is overwritten with garbage.
    let bad_db = dir.path().join("bad-db");
    journal_with(&bad_db, &[(sid(20), 3)]).await;
    let len = std::fs::metadata(bad_db.join("db")).unwrap().len() as usize;
    std::fs::write(bad_db.join("db"), vec![0x5au8; len.max(4096)]).unwrap();
    // sled itself recovers garbage as an empty database; the journal must
    // not then pass it off as a new, empty journal.
    expect_backend_error(
        SledJournal::open(&bad_db, SledConfig::default()).await,
        &bad_db,
        "nothing could be recovered",
    );
}

#[tokio::test]
async fn a_locked_journal_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("first open");
    expect_locked(
        SledJournal::open(dir.path(), SledConfig::default()).await,
        dir.path(),
    );
    // Also a raw sled holder (another process would hold the same lock).
    drop(first);
    let holder = sled::open(dir.path()).expect("raw open after close");
    expect_locked(
        SledJournal::open(dir.path(), SledConfig::default()).await,
        dir.path(),
    );
    drop(holder);
    SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("open once the lock is free");
}

/// Opening waits for a held lock on tokio's blocking pool: on a
/// current-thread runtime another task keeps running during the whole wait
/// (a ticker advances), both when the wait ends in an error and when the
/// holder lets go mid-wait and the open succeeds. The blocking twin still
/// works from plain threads.
#[tokio::test(flavor = "current_thread")]
async fn waiting_for_the_lock_does_not_block_the_runtime() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let first = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("first open");
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = Arc::clone(&ticks);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let config = SledConfig {
        lock_wait_max_ms: 600,
        ..SledConfig::default()
    };

    // The lock stays held: the wait ends in the "locked" error...
    let t0 = Instant::now();
    expect_locked(
        SledJournal::open(dir.path(), config.clone()).await,
        dir.path(),
    );
    let waited = t0.elapsed();
    let during = ticks.load(Ordering::SeqCst);
    assert!(
        waited >= Duration::from_millis(500),
        "waited only {waited:?}"
    );
    // ...and the ticker ran all along (blocked, it would show 0).
    assert!(
        during >= 10,
        "the runtime was blocked: {during} ticks in {waited:?}"
    );

    // The holder lets go mid-wait (a task on this same thread): the open succeeds.
    let before = ticks.load(Ordering::SeqCst);
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.close().await.expect("close");
    });
    let second = SledJournal::open(dir.path(), config.clone())
        .await
        .expect("opens once the holder closed");
    releaser.await.unwrap();
    assert!(
        ticks.load(Ordering::SeqCst) - before >= 10,
        "the runtime did not run while the open waited"
    );
    ticker.abort();

    // The synchronous twin, from a plain thread, sees the same lock.
    let path = dir.path().to_path_buf();
    let r = std::thread::spawn(move || {
        SledJournal::open_blocking(
            &path,
            SledConfig {
                lock_wait_max_ms: 50,
                ..SledConfig::default()
            },
        )
        .map(|_| ())
    })
    .join()
    .unwrap();
    match r {
        Err(JournalError::Locked { detail, .. }) => {
            assert!(detail.contains("another process"), "{detail}")
        }
        other => panic!("expected the lock error, got {other:?}"),
    }
    drop(second);
}

#[tokio::test]
async fn a_newer_or_broken_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    journal_with(dir.path(), &[(sid(30), 1)]).await;
    poke(dir.path(), |t| {
        t.insert(
            keys::META_FORMAT_VERSION,
            &(JOURNAL_FORMAT_VERSION + 1).to_be_bytes()[..],
        )
        .unwrap();
    });
    match SledJournal::open(dir.path(), SledConfig::default()).await {
        Err(e @ JournalError::NewerFormat { .. }) => {
            assert_eq!(
                e,
                JournalError::NewerFormat {
                    found: JOURNAL_FORMAT_VERSION + 1,
                    supported: JOURNAL_FORMAT_VERSION
                }
            );
            assert!(e.to_string().contains("upgrade rescind"), "{e}");
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    poke(dir.path(), |t| {
        t.insert(keys::META_FORMAT_VERSION, &b"\x01"[..]).unwrap();
    });
    expect_backend_error(
        SledJournal::open(dir.path(), SledConfig::default()).await,
        dir.path(),
        "format version",
    );
    poke(dir.path(), |t| {
        t.insert(
            keys::META_FORMAT_VERSION,
            &JOURNAL_FORMAT_VERSION.to_be_bytes()[..],
        )
        .unwrap();
    });
    let j = SledJournal::open(dir.path(), SledConfig::default())
        .await
        .expect("current version opens");
    assert_eq!(j.read(sid(30)).await.expect("read").len(), 1);
}

#[tokio::test]
async fn an_oversized_record_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let config = SledConfig {
        record_bytes_max: 1024,
        ..SledConfig::default()
    };
    let j = SledJournal::open(dir.path(), config).await.expect("open");
    let saga = sid(40);
    let mut big = entry(saga, 0);
    if let rescind_core::Record::Started { input, .. } = &mut big.record {
        input.reason = Some("x".repeat(2000));
    }
    match j.append(saga, &big).await {
        Err(JournalError::Backend(m)) => assert!(
            m.contains("record_bytes_max") && m.contains(&saga.to_string()),
            "{m}"
        ),
        other => panic!("expected a size error, got {other:?}"),
    }
    assert!(matches!(
        j.read(saga).await,
        Err(JournalError::UnknownSaga(_))
    ));
    j.append(saga, &entry(saga, 0))
        .await
        .expect("a normal record still goes in at seq 0");
}
