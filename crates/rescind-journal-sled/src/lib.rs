//! # rescind-journal-sled
//!
//! rescind's embedded default [`Journal`]: records of every saga in one
//! [sled](https://docs.rs/sled/0.34.7) database, made durable by **group
//! commit** — one flush for a whole batch of appends from many sagas — with an
//! index of unfinished sagas for recovery and a retention policy for finished ones.
//!
//! **What is durable when [`Journal::append`] returns `Ok`:** that record and
//! every record acknowledged before it, to the level of
//! [`SledConfig::durability`]: with the default [`Durability::PowerLoss`] the
//! record has been written by sled's `flush` *and* `fdatasync`'d, so it
//! survives a `kill -9` of the process and a power cut; with
//! [`Durability::Process`] it survives the process dying but not necessarily a
//! power cut. The same holds for [`Journal::mark_finished`]. A batch is
//! all-or-nothing after a crash. The on-disk format and the exact promises are
//! in `docs/journal-format.md`.
//!
//! ```
//! use rescind_core::{Entry, Journal, OrderRef, Record, SagaId, SagaInput, SagaSet};
//! use rescind_journal_sled::{SledConfig, SledJournal};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), rescind_core::JournalError> {
//! let dir = tempfile::tempdir().unwrap();
//! let journal = SledJournal::open(dir.path(), SledConfig::default()).await?;
//!
//! let saga = SagaId::new_random();
//! let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "1231231"));
//! journal.append(saga, &Entry { seq: 0, at_ms: 1_700_000_000_000, record: Record::Started { input, by: None } }).await?;
//! // Durable now: a restarted process finds the saga among the unfinished.
//! drop(journal);
//!
//! let journal = SledJournal::open(dir.path(), SledConfig::default()).await?;
//! assert_eq!(journal.list(SagaSet::Unfinished).await?, vec![saga]);
//! assert_eq!(journal.read(saga).await?.len(), 1);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod committer;
mod config;
pub mod keys;
mod open;
mod query;

pub use config::{Durability, Retention, SledConfig};

use async_trait::async_trait;
use committer::{Op, Request};
use rescind_core::record::{decode, encode};
use rescind_core::{
    Entry, IndexChange, Journal, JournalError, SagaCounts, SagaId, SagaPage, SagaQuery, SagaSet,
    SagaStatus,
};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, Semaphore};

/// The journal format version this build writes, stored in the database
/// (see `docs/journal-format.md`). A database with a newer version is refused
/// with [`JournalError::NewerFormat`].
/// Version 2 added the saga indexes (`docs/journal-format.md`); a version 1
/// journal gets them built from its records when it is opened.
pub const JOURNAL_FORMAT_VERSION: u32 = 2;

/// Finished sagas deleted per committer request during [`SledJournal::compact`],
/// so a large compaction never holds up appends for long.
pub const COMPACT_SAGAS_PER_BATCH: usize = 256;

/// How far back [`Journal::recent`] walks the update-time index: the newest
/// this many updated sagas. A failed or stuck saga updated before all of
/// them is not among the recent ones (the console's "recent failures").
pub const RECENT_WINDOW_SAGAS: usize = 10_000;

/// Counts and sizes of a journal, from [`SledJournal::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Sagas not yet marked finished.
    pub unfinished: u64,
    /// Finished sagas not yet compacted away.
    pub finished: u64,
    /// Records stored, of all sagas.
    pub records: u64,
    /// Bytes of encoded records (values only).
    pub record_bytes: u64,
    /// Bytes sled occupies on disk (data file, blobs, snapshots).
    pub bytes_on_disk: u64,
}

/// How group commit has batched so far (since open), from
/// [`SledJournal::commit_counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitCounters {
    /// Group commits: each is one sled flush (plus one `fdatasync` round for
    /// [`Durability::PowerLoss`]).
    pub flushes: u64,
    /// Appends, finish marks and compaction batches made durable by them.
    pub records: u64,
}

/// What one [`SledJournal::compact`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Finished sagas deleted with all their records.
    pub sagas_removed: u64,
    /// Records deleted.
    pub records_removed: u64,
}

/// The sled journal. Open with [`SledJournal::open`] (async code) or
/// [`SledJournal::open_blocking`]; use through [`Journal`].
///
/// One process holds a journal directory at a time (sled locks its data
/// file). Dropping the journal finishes the queued writes and closes the
/// database; [`SledJournal::close`] does the same and reports a failure.
pub struct SledJournal {
    tree: sled::Tree,
    db: sled::Db,
    path: PathBuf,
    config: SledConfig,
    tx: mpsc::Sender<Request>,
    permits: Arc<Semaphore>,
    committer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<committer::Counters>,
}

impl std::fmt::Debug for SledJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledJournal")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SledJournal {
    /// Open (or create) the journal in directory `path`, from async code.
    ///
    /// Opening does blocking file I/O (sled's recovery reads the whole log)
    /// and may wait up to [`SledConfig::lock_wait_max_ms`] for the directory's
    /// lock, so it runs on tokio's blocking pool
    /// ([`tokio::task::spawn_blocking`]): the calling runtime's other tasks
    /// keep running meanwhile, even on a current-thread runtime. Needs a tokio
    /// runtime; outside one, use [`SledJournal::open_blocking`].
    ///
    /// Fails as [`SledJournal::open_blocking`] does.
    pub async fn open(
        path: impl AsRef<Path>,
        config: SledConfig,
    ) -> Result<SledJournal, JournalError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || SledJournal::open_blocking(path, config))
            .await
            .map_err(|e| {
                JournalError::Backend(format!(
                    "sled journal at {shown}: the opening thread failed: {e}"
                ))
            })?
    }

    /// Open (or create) the journal in directory `path`, blocking the calling
    /// thread: for synchronous code only. It may sleep up to
    /// [`SledConfig::lock_wait_max_ms`] waiting for the directory's lock, so
    /// async code must use [`SledJournal::open`], which runs this on tokio's
    /// blocking pool.
    ///
    /// Fails with a [`JournalError::Backend`] naming the path if `path` is not
    /// a directory, is a non-empty directory that is not a sled database, or
    /// sled cannot recover it (sled panics are caught and reported, never
    /// propagated); with [`JournalError::Locked`] if another process (or
    /// another journal in this one) holds it; with
    /// [`JournalError::NewerFormat`] if a newer rescind wrote it.
    pub fn open_blocking(
        path: impl AsRef<Path>,
        config: SledConfig,
    ) -> Result<SledJournal, JournalError> {
        let path = path.as_ref().to_path_buf();
        let (db, tree) = open::open_db(&path, &config)?;
        let counters = Arc::new(committer::Counters::default());
        let committer = committer::Committer::new(
            db.clone(),
            tree.clone(),
            path.clone(),
            config.clone(),
            Arc::clone(&counters),
        )?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("rescind-journal-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| {
                JournalError::Backend(format!(
                    "sled journal at {}: cannot start the committer thread: {e}",
                    path.display()
                ))
            })?;
        Ok(SledJournal {
            tree,
            db,
            permits: Arc::new(Semaphore::new(config.queue_records_max.max(1))),
            path,
            config,
            tx,
            committer: Mutex::new(Some(handle)),
            counters,
        })
    }

    /// Group commits and the records they made durable, since open. Their
    /// ratio is the average batch size.
    pub fn commit_counters(&self) -> CommitCounters {
        use std::sync::atomic::Ordering::Relaxed;
        CommitCounters {
            flushes: self.counters.flushes.load(Relaxed),
            records: self.counters.records.load(Relaxed),
        }
    }

    /// The journal's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &SledConfig {
        &self.config
    }

    fn backend(&self, what: impl std::fmt::Display) -> JournalError {
        JournalError::Backend(format!("sled journal at {}: {what}", self.path.display()))
    }

    /// Queue `op` for the committer and wait for its answer.
    async fn submit(&self, op: Op) -> Result<u64, JournalError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| self.backend("the journal is closed"))?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                op,
                reply: Some(reply),
                permit: Some(permit),
            })
            .map_err(|_| self.backend("the committer has stopped"))?;
        answer
            .await
            .map_err(|_| self.backend("the committer stopped before answering"))?
    }

    /// The record's stored bytes, refused if over `record_bytes_max`.
    fn encoded(&self, saga: SagaId, entry: &Entry) -> Result<Vec<u8>, JournalError> {
        let bytes = encode(entry);
        if bytes.len() > self.config.record_bytes_max {
            return Err(self.backend(format_args!(
                "record saga {saga} seq {} is {} bytes, over record_bytes_max {}",
                entry.seq,
                bytes.len(),
                self.config.record_bytes_max
            )));
        }
        Ok(bytes)
    }

    /// Run `f` on the tree on a blocking thread; a sled panic becomes an error.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(sled::Tree) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let tree = self.tree.clone();
        match tokio::task::spawn_blocking(move || f(tree)).await {
            Ok(r) => r,
            Err(e) => Err(self.backend(format_args!("{what} failed inside sled: {e}"))),
        }
    }

    /// Store `bytes` as record `seq` of `saga` exactly as given, bypassing the
    /// codec and the sequence check (durable when this returns).
    ///
    /// For corrupt-record tests and for repair tools; an engine never calls it.
    pub async fn write_raw_record(
        &self,
        saga: SagaId,
        seq: u64,
        bytes: Vec<u8>,
    ) -> Result<(), JournalError> {
        self.submit(Op::Raw { saga, seq, bytes }).await.map(drop)
    }

    /// Counts of sagas by state, records, and bytes on disk. Scans the index
    /// and record keys: O(records), meant for operators, not hot paths.
    pub async fn stats(&self) -> Result<JournalStats, JournalError> {
        let db = self.db.clone();
        let path = self.path.clone();
        self.blocking("stats", move |tree| {
            let err = |e: sled::Error| {
                JournalError::Backend(format!("sled journal at {}: stats: {e}", path.display()))
            };
            let mut s = JournalStats::default();
            for kv in tree.scan_prefix([keys::UNFINISHED]).keys() {
                kv.map_err(err)?;
                s.unfinished += 1;
            }
            for kv in tree.scan_prefix([keys::FINISHED]).keys() {
                kv.map_err(err)?;
                s.finished += 1;
            }
            for kv in tree.scan_prefix([keys::RECORD]) {
                let (_, v) = kv.map_err(err)?;
                s.records += 1;
                s.record_bytes += v.len() as u64;
            }
            s.bytes_on_disk = db.size_on_disk().map_err(err)?;
            Ok(s)
        })
        .await
    }

    /// Delete finished sagas beyond [`SledConfig::retention`] as of `now_ms`
    /// (ms since the Unix epoch, from the caller's clock): every finished saga
    /// that finished before `now_ms - finished_keep_age_ms`, and the oldest
    /// beyond the newest `finished_keep_max`. A saga's finish time is the
    /// `at_ms` of its last record when it was marked finished.
    ///
    /// Deletes in batches of [`COMPACT_SAGAS_PER_BATCH`] sagas, each durable
    /// and all-or-nothing; appends interleave with them. Unfinished sagas are
    /// never touched.
    pub async fn compact(&self, now_ms: u64) -> Result<CompactReport, JournalError> {
        let retention = self.config.retention;
        let path = self.path.clone();
        let mut finished: Vec<(u64, SagaId)> = self
            .blocking("compact", move |tree| {
                let mut out = Vec::new();
                for kv in tree.scan_prefix([keys::FINISHED]) {
                    let (k, v) = kv.map_err(|e| {
                        JournalError::Backend(format!(
                            "sled journal at {}: compact: {e}",
                            path.display()
                        ))
                    })?;
                    // A malformed index entry is skipped, not fatal: compaction
                    // must not stop on one bad key.
                    if let Some(saga) = keys::saga_of_index(&k) {
                        out.push((keys::u64_value(&v).unwrap_or(0), saga));
                    }
                }
                Ok(out)
            })
            .await?;
        // Newest first; ties broken by id so the choice is deterministic.
        finished.sort_by(|a, b| b.cmp(a));
        let cutoff = now_ms.saturating_sub(retention.finished_keep_age_ms);
        let victims: Vec<SagaId> = finished
            .iter()
            .enumerate()
            .filter(|(i, (at, _))| *i >= retention.finished_keep_max || *at < cutoff)
            .map(|(_, (_, saga))| *saga)
            .collect();
        let mut report = CompactReport::default();
        for chunk in victims.chunks(COMPACT_SAGAS_PER_BATCH) {
            let records = self
                .submit(Op::Compact {
                    sagas: chunk.to_vec(),
                })
                .await?;
            report.records_removed += records;
            report.sagas_removed += chunk.len() as u64;
        }
        Ok(report)
    }

    /// Finish the queued writes, stop the committer and close the database.
    /// Dropping the journal does the same; this reports a committer that died.
    pub async fn close(self) -> Result<(), JournalError> {
        let handle = self.stop_committer();
        let path = self.path.clone();
        drop(self);
        if let Some(h) = handle {
            let joined = tokio::task::spawn_blocking(move || h.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                return Err(JournalError::Backend(format!(
                    "sled journal at {}: the committer thread panicked",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn stop_committer(&self) -> Option<JoinHandle<()>> {
        let _ = self.tx.send(Request {
            op: Op::Shutdown,
            reply: None,
            permit: None,
        });
        self.committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for SledJournal {
    fn drop(&mut self) {
        if let Some(h) = self.stop_committer() {
            // Waits for at most the batch in flight; its writers are owed an answer.
            let _ = h.join();
        }
    }
}

/// Read one saga's records in order; a gap or an undecodable record is an
/// error naming saga and sequence.
fn read_saga(tree: &sled::Tree, path: &Path, saga: SagaId) -> Result<Vec<Entry>, JournalError> {
    let mut out = Vec::new();
    for kv in tree.scan_prefix(keys::record_prefix(saga)) {
        let (k, v) = kv.map_err(|e| {
            JournalError::Backend(format!(
                "sled journal at {}: cannot read saga {saga}: {e}",
                path.display()
            ))
        })?;
        let expected = out.len() as u64;
        match keys::seq_of_record(&k) {
            Some(seq) if seq == expected => out.push(decode(saga, seq, &v)?),
            Some(seq) => {
                return Err(JournalError::Corrupt {
                    saga,
                    seq: expected,
                    detail: format!("record missing (the next stored record is seq {seq})"),
                })
            }
            None => {
                return Err(JournalError::Corrupt {
                    saga,
                    seq: expected,
                    detail: format!("malformed record key of {} bytes", k.len()),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(JournalError::UnknownSaga(saga));
    }
    Ok(out)
}

/// Read many sagas' records in the order asked. Ids in ascending order (as
/// recovery asks, from the sorted unfinished index) are read in **one pass**
/// over the record keys: records are grouped by saga in key order, so
/// neighbouring sagas share a scan, and the scan seeks past records of sagas
/// not asked for (finished ones kept by retention). Other orders are read
/// saga by saga. Each result is what [`read_saga`] gives for that saga.
fn read_sagas(
    tree: &sled::Tree,
    path: &Path,
    sagas: &[SagaId],
) -> Vec<Result<Vec<Entry>, JournalError>> {
    if !sagas.windows(2).all(|w| w[0] < w[1]) {
        return sagas.iter().map(|s| read_saga(tree, path, *s)).collect();
    }
    let mut out: Vec<Result<Vec<Entry>, JournalError>> = Vec::with_capacity(sagas.len());
    let end = [keys::RECORD + 1];
    // The scan; `None`: seek to the saga now wanted.
    let mut scan: Option<sled::Iter> = None;
    // A record read but not yet taken (it belongs to a later saga).
    let mut held: Option<(sled::IVec, sled::IVec)> = None;
    let mut exhausted = false;
    let mut cur: Result<Vec<Entry>, JournalError> = Ok(Vec::new());
    let mut i = 0;
    while i < sagas.len() {
        let saga = sagas[i];
        let want = keys::record_prefix(saga);
        let next = match held.take() {
            Some(kv) => Some(kv),
            None if exhausted => None,
            None => match scan
                .get_or_insert_with(|| tree.range(want.as_slice()..end.as_slice()))
                .next()
            {
                Some(Ok(kv)) => Some(kv),
                Some(Err(e)) => {
                    // The scan failed: read the rest one by one, so each
                    // saga gets its own answer (and error).
                    tracing::warn!(path = %path.display(), error = %e, "recovery scan failed; reading saga by saga");
                    out.extend(sagas[i..].iter().map(|s| read_saga(tree, path, *s)));
                    return out;
                }
                None => {
                    exhausted = true;
                    None
                }
            },
        };
        let Some((k, v)) = next else {
            // Nothing more in the journal: this saga ends here.
            out.push(finish_saga(
                saga,
                std::mem::replace(&mut cur, Ok(Vec::new())),
            ));
            i += 1;
            continue;
        };
        match k
            .get(..keys::INDEX_KEY_LEN)
            .unwrap_or(&k)
            .cmp(want.as_slice())
        {
            std::cmp::Ordering::Equal => {
                if let Ok(entries) = &mut cur {
                    let expected = entries.len() as u64;
                    let took = match keys::seq_of_record(&k) {
                        Some(seq) if seq == expected => {
                            decode(saga, seq, &v).map(|e| entries.push(e))
                        }
                        Some(seq) => Err(JournalError::Corrupt {
                            saga,
                            seq: expected,
                            detail: format!("record missing (the next stored record is seq {seq})"),
                        }),
                        None => Err(JournalError::Corrupt {
                            saga,
                            seq: expected,
                            detail: format!("malformed record key of {} bytes", k.len()),
                        }),
                    };
                    // The saga's answer is its first error; its other
                    // records are passed over.
                    if let Err(e) = took {
                        cur = Err(e);
                    }
                }
            }
            std::cmp::Ordering::Greater => {
                // Past this saga's records: it is complete; the record is
                // looked at again for the next saga.
                out.push(finish_saga(
                    saga,
                    std::mem::replace(&mut cur, Ok(Vec::new())),
                ));
                held = Some((k, v));
                i += 1;
            }
            std::cmp::Ordering::Less => {
                // A saga not asked for lies between: seek past it.
                scan = None;
            }
        }
    }
    out
}

/// A saga's answer once its records are read: none at all is `UnknownSaga`.
fn finish_saga(
    saga: SagaId,
    read: Result<Vec<Entry>, JournalError>,
) -> Result<Vec<Entry>, JournalError> {
    match read {
        Ok(e) if e.is_empty() => Err(JournalError::UnknownSaga(saga)),
        other => other,
    }
}

#[async_trait]
impl Journal for SledJournal {
    /// Writes and flushes one small key in a tree of its own (`health`), so
    /// a disk that refuses writes is seen even when no saga is writing.
    fn group_commits(&self) -> Option<rescind_core::metrics::GroupCommitSnapshot> {
        Some(self.counters.groups.snapshot())
    }

    async fn probe(&self) -> Result<(), JournalError> {
        let db = self.db.clone();
        let done = tokio::task::spawn_blocking(move || {
            let tree = db.open_tree("health")?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            tree.insert("probe", &nanos.to_be_bytes())?;
            db.flush()?;
            Ok::<(), sled::Error>(())
        })
        .await;
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.backend(format_args!("the journal refuses writes: {e}"))),
            Err(e) => Err(self.backend(format_args!("the health probe failed inside sled: {e}"))),
        }
    }

    async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
        let bytes = self.encoded(saga, entry)?;
        self.submit(Op::Append {
            saga,
            seq: entry.seq,
            at_ms: entry.at_ms,
            bytes,
            change: IndexChange::of(entry),
        })
        .await
        .map(drop)
    }

    async fn append_batch(
        &self,
        saga: SagaId,
        entries: &[Entry],
        finish: bool,
    ) -> Result<(), JournalError> {
        // One request: staged together in one batch, so the records (and the
        // finish mark) share a flush; the finish only if every record was taken.
        let mut records = Vec::with_capacity(entries.len());
        for e in entries {
            records.push((e.seq, e.at_ms, self.encoded(saga, e)?, IndexChange::of(e)));
        }
        self.submit(Op::Batch {
            saga,
            records,
            finish,
        })
        .await
        .map(drop)
    }

    /// Every saga's records as [`Journal::append_batch`] would stage them,
    /// all in one request to the committer: one `sled::Batch`, one flush
    /// (with the other writers' requests queued with it). The first saga
    /// refused stops the rest; the sagas before it are written.
    async fn append_many(&self, sagas: &[(SagaId, Vec<Entry>, bool)]) -> Result<(), JournalError> {
        if sagas.is_empty() {
            return Ok(());
        }
        let mut all = Vec::with_capacity(sagas.len());
        for (saga, entries, finish) in sagas {
            let mut records = Vec::with_capacity(entries.len());
            for e in entries {
                records.push((e.seq, e.at_ms, self.encoded(*saga, e)?, IndexChange::of(e)));
            }
            all.push((*saga, records, *finish));
        }
        self.submit(Op::Many { sagas: all }).await.map(drop)
    }

    async fn read(&self, saga: SagaId) -> Result<Vec<Entry>, JournalError> {
        let path = self.path.clone();
        self.blocking("read", move |tree| read_saga(&tree, &path, saga))
            .await
    }

    async fn read_many(&self, sagas: &[SagaId]) -> Vec<Result<Vec<Entry>, JournalError>> {
        let path = self.path.clone();
        let ids = sagas.to_vec();
        let n = ids.len();
        // One trip to the blocking pool for the whole batch (recovery of
        // 100,000 sagas was bounded by one hop per saga), and one scan of
        // the record keys for sorted ids (a new sled iterator per saga
        // copied a whole leaf node each time). Records are decoded there
        // too, off the caller's thread.
        match self
            .blocking("read", move |tree| Ok(read_sagas(&tree, &path, &ids)))
            .await
        {
            Ok(all) => all,
            Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
        }
    }

    async fn list(&self, set: SagaSet) -> Result<Vec<SagaId>, JournalError> {
        let prefix = match set {
            SagaSet::Unfinished => keys::UNFINISHED,
            SagaSet::Finished => keys::FINISHED,
        };
        let path = self.path.clone();
        self.blocking("list", move |tree| {
            let mut out = Vec::new();
            for k in tree.scan_prefix([prefix]).keys() {
                let k = k.map_err(|e| {
                    JournalError::Backend(format!("sled journal at {}: cannot list {set:?}: {e}", path.display()))
                })?;
                match keys::saga_of_index(&k) {
                    Some(saga) => out.push(saga),
                    // No saga can be named from it; listing the others
                    // matters more than failing recovery on one bad key.
                    None => tracing::warn!(path = %path.display(), ?set, key_len = k.len(), "skipping malformed index key"),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn mark_finished(&self, saga: SagaId) -> Result<(), JournalError> {
        self.submit(Op::Finish { saga }).await.map(drop)
    }

    /// From the index keys (`docs/journal-format.md`): one prefix scan of
    /// the most selective filter given, in saga id order, checking the other
    /// filters against each saga's index entry; it stops at a page.
    async fn query(&self, q: &SagaQuery) -> Result<SagaPage, JournalError> {
        let q = q.clone();
        let path = self.path.clone();
        self.blocking("query", move |tree| query::run(&tree, &path, &q))
            .await
    }

    /// State and channel filters alone: from the counts [`Journal::counts`]
    /// keeps. One other filter alone: its index keys counted, O(matches).
    /// Anything else: pages through the query.
    async fn count(&self, q: &SagaQuery) -> Result<u64, JournalError> {
        let only_state_channel = (q.state.is_some() || q.channel.is_some())
            && q.order.is_none()
            && q.account.is_none()
            && q.kind.is_none()
            && q.since_ms.is_none()
            && q.set.is_none();
        if only_state_channel {
            let c = self.counts().await?;
            return Ok(c
                .by_state_channel
                .iter()
                .filter(|((s, ch), _)| {
                    q.state.is_none_or(|want| want == *s)
                        && q.channel.as_ref().is_none_or(|want| want == ch)
                })
                .map(|(_, n)| n)
                .sum());
        }
        let q = q.clone();
        let path = self.path.clone();
        self.blocking("count", move |tree| query::count(&tree, &path, &q))
            .await
    }

    /// Exact, from counts the committer keeps by state and channel: the
    /// first call of a process counts every index entry once (O(sagas), in
    /// the committer, so writes wait for it); later calls copy the counts,
    /// which every durable write keeps up to date.
    async fn counts(&self) -> Result<SagaCounts, JournalError> {
        if self.counters.states().is_none() {
            self.submit(Op::CountStates).await?;
        }
        let mut out = SagaCounts {
            terminal_exact: true,
            ..SagaCounts::default()
        };
        let states = self.counters.states();
        let Some(counts) = states.as_ref() else {
            return Err(self.backend("the saga counts were dropped by a failed write"));
        };
        for ((state, channel), n) in counts {
            out.add(*state, channel, u64::try_from(*n).unwrap_or(0));
        }
        Ok(out)
    }

    /// From the update-time index, newest first, looking back at most
    /// [`RECENT_WINDOW_SAGAS`] sagas.
    async fn recent(
        &self,
        states: &[SagaStatus],
        limit: usize,
    ) -> Result<Vec<SagaId>, JournalError> {
        let states = states.to_vec();
        let path = self.path.clone();
        self.blocking("recent", move |tree| {
            query::recent(&tree, &path, &states, limit, RECENT_WINDOW_SAGAS)
        })
        .await
    }
}
