//! The group committer: one thread that owns every write.
//!
//! Writers queue requests; the committer takes whatever is queued (up to
//! `batch_records_max`, waiting at most `batch_wait_max_us` for more), checks
//! each against the per-saga sequence cache, applies the accepted ones as one
//! `sled::Batch`, flushes once (and `fdatasync`s for [`Durability::PowerLoss`]),
//! and only then answers every waiter. Because it is the only writer, the
//! sequence check and the write cannot race.

use crate::config::{Durability, SledConfig};
use crate::keys;
use rescind_core::{IndexChange, JournalError, SagaId, SagaIndexEntry, SagaStatus};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// What a writer asks of the committer.
pub(crate) enum Op {
    /// Append an encoded record at `seq` (must be the saga's next).
    Append {
        saga: SagaId,
        seq: u64,
        at_ms: u64,
        bytes: Vec<u8>,
        change: IndexChange,
    },
    /// Move a saga to the finished set.
    Finish { saga: SagaId },
    /// Append consecutive encoded records `(seq, at_ms, bytes, change)` of one saga in
    /// order, then (with `finish`) move it to the finished set: staged in one
    /// batch. A refused record stops the rest; the finish is staged only if
    /// every record was.
    Batch {
        saga: SagaId,
        records: Vec<(u64, u64, Vec<u8>, IndexChange)>,
        finish: bool,
    },
    /// Many sagas' [`Op::Batch`]es in order, staged in one batch (a bulk
    /// load): the first refused one stops the rest and is the answer.
    Many { sagas: Vec<BatchOf> },
    /// Count the index entries by state and channel into
    /// [`Counters::states`], if not counted yet; appends keep the counts
    /// from then on.
    CountStates,
    /// Store raw bytes as record `seq`, bypassing codec and sequence checks.
    Raw {
        saga: SagaId,
        seq: u64,
        bytes: Vec<u8>,
    },
    /// Delete these finished sagas and their records. Answers the number of
    /// records deleted.
    Compact { sagas: Vec<SagaId> },
    /// Finish what is queued before this, then stop.
    Shutdown,
}

/// One saga's part of [`Op::Many`]: `(saga, records, finish)` as in [`Op::Batch`].
pub(crate) type BatchOf = (SagaId, Vec<(u64, u64, Vec<u8>, IndexChange)>, bool);

/// Sagas per (state, channel), as the index entries say.
pub(crate) type StateCounts = HashMap<(SagaStatus, String), i64>;

/// A queued request and where to send its answer.
pub(crate) struct Request {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<u64, JournalError>>>,
    /// Held until answered: bounds the queue.
    pub permit: Option<OwnedSemaphorePermit>,
}

#[derive(Clone)]
struct SeqState {
    next: u64,
    /// `at_ms` of the last record, when this process wrote it.
    last_at_ms: Option<u64>,
    /// The saga's index entry as of `next` (staged writes included).
    index: Option<SagaIndexEntry>,
}

/// How old the blob directory's mtime must be before an unchanged mtime is
/// trusted to mean no blob file was added since the last listing.
const BLOB_MTIME_SETTLE: Duration = Duration::from_secs(1);

/// Makes sled's writes survive power loss: `fdatasync` of the data file, and
/// of blob files (sled writes large pages as separate files and never syncs them).
struct PowerLossSync {
    data_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<OsString>,
    /// The blob directory's mtime when it was last listed: sled adds or
    /// removes a blob file rarely, and listing the directory on every group
    /// commit cost an eighth of the committer's time.
    listed_mtime: Option<SystemTime>,
}

impl PowerLossSync {
    fn open(path: &Path) -> std::io::Result<Self> {
        let data_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path.join("db"))?;
        let mut me = PowerLossSync {
            data_file,
            blobs_dir: path.join("blobs"),
            synced_blobs: HashSet::new(),
            listed_mtime: None,
        };
        // The directory entries of `db`, `conf` and `blobs` themselves.
        File::open(path)?.sync_all()?;
        me.sync()?;
        Ok(me)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.data_file.sync_data()?;
        // A file added to the directory changes its mtime. Timestamps are
        // coarse (a few ms), so a file added in the same tick as the last
        // listing would leave the mtime equal: list again while the mtime
        // is recent, and skip only when it is unchanged and older than
        // BLOB_MTIME_SETTLE.
        let mtime = std::fs::metadata(&self.blobs_dir)?.modified()?;
        let settled = SystemTime::now()
            .duration_since(mtime)
            .is_ok_and(|age| age >= BLOB_MTIME_SETTLE);
        if settled && self.listed_mtime == Some(mtime) {
            return Ok(());
        }
        let mut present = HashSet::new();
        let mut new_blob = false;
        for dirent in std::fs::read_dir(&self.blobs_dir)? {
            let dirent = dirent?;
            let name = dirent.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(dirent.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled removed it meanwhile (blob garbage collection).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new_blob = true;
            }
            present.insert(name);
        }
        if new_blob {
            File::open(&self.blobs_dir)?.sync_all()?;
        }
        self.synced_blobs = present;
        self.listed_mtime = Some(mtime);
        Ok(())
    }
}

/// What this batch has staged but the tree does not show yet.
#[derive(Default)]
struct BatchState {
    /// Sagas marked finished in this batch.
    finished: HashSet<SagaId>,
    /// Sagas any append, finish or raw write looked at in this batch.
    touched: HashSet<SagaId>,
    /// Sagas deleted by compaction in this batch.
    compacted: HashSet<SagaId>,
    /// What this batch's index writes change in the counts by state and channel.
    count_deltas: StateCounts,
}

/// Counts of the committer's work, shared with the journal handle.
#[derive(Default)]
pub(crate) struct Counters {
    /// Group commits that flushed (one flush, plus fdatasync for PowerLoss, each).
    pub flushes: AtomicU64,
    /// Requests made durable by those flushes.
    pub records: AtomicU64,
    /// Group sizes and flush latencies, for metrics.
    pub groups: rescind_core::metrics::GroupCommitStats,
    /// Sagas by state and channel, once counted ([`Op::CountStates`]); the
    /// committer adds each durable batch's changes. `None`: not counted yet
    /// (or a flush failed).
    pub states: std::sync::Mutex<Option<StateCounts>>,
}

impl Counters {
    pub(crate) fn states(&self) -> std::sync::MutexGuard<'_, Option<StateCounts>> {
        // Every mutation is a whole-map replace or a merge of deltas.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct Committer {
    counters: Arc<Counters>,
    db: sled::Db,
    tree: sled::Tree,
    path: PathBuf,
    config: SledConfig,
    seqs: HashMap<SagaId, SeqState>,
    power: Option<PowerLossSync>,
    /// Set by the first failed flush: after that nothing is acknowledged.
    failed: Option<String>,
}

impl Committer {
    pub(crate) fn new(
        db: sled::Db,
        tree: sled::Tree,
        path: PathBuf,
        config: SledConfig,
        counters: Arc<Counters>,
    ) -> Result<Self, JournalError> {
        let power = match config.durability {
            Durability::Process => None,
            Durability::PowerLoss => Some(PowerLossSync::open(&path).map_err(|e| {
                JournalError::Backend(format!(
                    "sled journal at {}: cannot open sled's data file for fdatasync: {e}",
                    path.display()
                ))
            })?),
        };
        Ok(Committer {
            counters,
            db,
            tree,
            path,
            config,
            seqs: HashMap::new(),
            power,
            failed: None,
        })
    }

    fn backend(&self, what: &str, e: impl std::fmt::Display) -> JournalError {
        JournalError::Backend(format!(
            "sled journal at {}: {what}: {e}",
            self.path.display()
        ))
    }

    /// Run until `Shutdown` arrives or every sender is gone.
    pub(crate) fn run(mut self, rx: Receiver<Request>) {
        let batch_max = self.config.batch_records_max.max(1);
        let wait = Duration::from_micros(self.config.batch_wait_max_us);
        let mut batch: Vec<Request> = Vec::with_capacity(batch_max);
        loop {
            let first = match rx.recv() {
                Ok(r) => r,
                Err(_) => return,
            };
            let started = Instant::now();
            batch.push(first);
            let mut stop = false;
            while batch.len() < batch_max {
                let next = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(_) if wait.is_zero() => None,
                    Err(_) => match wait.checked_sub(started.elapsed()) {
                        Some(left) => match rx.recv_timeout(left) {
                            Ok(r) => Some(r),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => None,
                        },
                        None => None,
                    },
                };
                match next {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
            if batch.iter().any(|r| matches!(r.op, Op::Shutdown)) {
                stop = true;
            }
            self.commit(&mut batch);
            if stop {
                return;
            }
        }
    }

    /// Check, apply, flush, answer. Empties `batch`.
    fn commit(&mut self, batch: &mut Vec<Request>) {
        let mut writes = sled::Batch::default();
        let mut pending: Vec<(Request, u64)> = Vec::with_capacity(batch.len());
        let mut now = BatchState::default();
        let mut dirty = false;
        for req in batch.drain(..) {
            if let Some(why) = &self.failed {
                let err = JournalError::Backend(why.clone());
                answer(req, Err(err));
                continue;
            }
            let result = match &req.op {
                Op::Append {
                    saga,
                    seq,
                    at_ms,
                    bytes,
                    change,
                } => self.stage_append(&mut writes, &mut now, *saga, *seq, *at_ms, bytes, change),
                Op::Finish { saga } => self.stage_finish(&mut writes, &mut now, *saga),
                Op::Batch {
                    saga,
                    records,
                    finish,
                } => self.stage_batch(&mut writes, &mut now, *saga, records, *finish),
                Op::Many { sagas } => {
                    let mut r = Ok(0);
                    for (saga, records, finish) in sagas {
                        r = self.stage_batch(&mut writes, &mut now, *saga, records, *finish);
                        if r.is_err() {
                            break;
                        }
                    }
                    r
                }
                Op::CountStates => self.count_states(),
                Op::Raw { saga, seq, bytes } => {
                    self.stage_raw(&mut writes, &mut now, *saga, *seq, bytes)
                }
                Op::Compact { sagas } => self.stage_compact(&mut writes, &mut now, sagas),
                Op::Shutdown => Ok(0),
            };
            match result {
                Ok(n) => {
                    dirty |= !matches!(req.op, Op::Shutdown | Op::CountStates);
                    pending.push((req, n));
                }
                Err(e) => answer(req, Err(e)),
            }
        }
        if !dirty {
            for (req, n) in pending {
                answer(req, Ok(n));
            }
            return;
        }
        let flush_started = Instant::now();
        let outcome = self.apply_and_flush(writes);
        let flush_us = u64::try_from(flush_started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Err(e) = &outcome {
            // Records may be in sled's memory but not durable; nothing
            // later may be acknowledged on top of them.
            tracing::error!(path = %self.path.display(), error = %e, "journal flush failed; refusing further writes");
            self.failed = Some(format!("{e}; the journal refuses writes until reopened"));
            self.seqs.clear();
            *self.counters.states() = None;
        } else if let Some(counts) = self.counters.states().as_mut() {
            for (k, d) in now.count_deltas.drain() {
                let n = counts.entry(k).or_default();
                *n += d;
            }
            counts.retain(|_, n| *n != 0);
        }
        tracing::trace!(records = pending.len(), "group commit");
        if outcome.is_ok() {
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.counters
                .records
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            self.counters.groups.observe(pending.len() as u64, flush_us);
        }
        for (req, n) in pending {
            match &outcome {
                Ok(()) => answer(req, Ok(n)),
                Err(e) => answer(req, Err(e.clone())),
            }
        }
    }

    fn apply_and_flush(&mut self, writes: sled::Batch) -> Result<(), JournalError> {
        self.tree
            .apply_batch(writes)
            .map_err(|e| self.backend("write failed", e))?;
        self.db
            .flush()
            .map_err(|e| self.backend("flush failed", e))?;
        if let Some(p) = &mut self.power {
            p.sync().map_err(|e| {
                JournalError::Backend(format!(
                    "sled journal at {}: fdatasync failed: {e}",
                    self.path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// The saga's next sequence: from the cache, else from the last record key.
    fn next_seq(&mut self, now: &mut BatchState, saga: SagaId) -> Result<SeqState, JournalError> {
        now.touched.insert(saga);
        if now.compacted.contains(&saga) {
            // Deleted earlier in this batch: the saga no longer exists.
            return Ok(SeqState {
                next: 0,
                last_at_ms: None,
                index: None,
            });
        }
        if let Some(s) = self.seqs.get(&saga) {
            return Ok(s.clone());
        }
        // A saga's records start at 0 and stay contiguous until compaction
        // deletes them all: no record 0, no records (one point read, where
        // a reverse range scan costs a descent and an iterator per new saga).
        let first = self
            .tree
            .contains_key(keys::record(saga, 0))
            .map_err(|e| self.backend(&format!("cannot read saga {saga}"), e))?;
        if !first {
            let state = SeqState {
                next: 0,
                last_at_ms: None,
                index: None,
            };
            self.remember(saga, state.clone());
            return Ok(state);
        }
        let last = self
            .tree
            .scan_prefix(keys::record_prefix(saga))
            .keys()
            .next_back()
            .transpose()
            .map_err(|e| self.backend(&format!("cannot read saga {saga}"), e))?;
        let next = match last {
            None => 0,
            Some(k) => match keys::seq_of_record(&k) {
                Some(seq) => seq.saturating_add(1),
                None => {
                    return Err(JournalError::Corrupt {
                        saga,
                        seq: 0,
                        detail: format!("malformed record key of {} bytes", k.len()),
                    })
                }
            },
        };
        let state = SeqState {
            next,
            last_at_ms: None,
            index: self.stored_entry(saga)?,
        };
        self.remember(saga, state.clone());
        Ok(state)
    }

    /// The saga's index entry as stored (not staged). An entry that does not
    /// decode counts as none: the next `started` or a reopen rebuilds it.
    fn stored_entry(&self, saga: SagaId) -> Result<Option<SagaIndexEntry>, JournalError> {
        let stored = self
            .tree
            .get(keys::index(keys::ENTRY, saga))
            .map_err(|e| self.backend(&format!("cannot read the index of saga {saga}"), e))?;
        Ok(stored.and_then(|v| match SagaIndexEntry::decode(&v) {
            Ok(e) => Some(e),
            Err(why) => {
                tracing::warn!(path = %self.path.display(), %saga, %why, "ignoring an unreadable index entry");
                None
            }
        }))
    }

    /// Stage the index writes that take `saga` from entry `old` to `new`:
    /// keys only in `old` removed, keys only in `new` inserted, the entry
    /// rewritten. Same batch as the record: all-or-nothing with it.
    fn stage_index(
        writes: &mut sled::Batch,
        now: &mut BatchState,
        saga: SagaId,
        old: Option<&SagaIndexEntry>,
        new: Option<&SagaIndexEntry>,
    ) {
        let old_keys = old.map(|e| keys::secondary(saga, e)).unwrap_or_default();
        let new_keys = new.map(|e| keys::secondary(saga, e)).unwrap_or_default();
        for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
            writes.remove(k.as_slice());
        }
        for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
            writes.insert(k.as_slice(), &[][..]);
        }
        if let Some(e) = old {
            *now.count_deltas
                .entry((e.state, e.channel.clone()))
                .or_default() -= 1;
        }
        if let Some(e) = new {
            *now.count_deltas
                .entry((e.state, e.channel.clone()))
                .or_default() += 1;
        }
        let ekey = keys::index(keys::ENTRY, saga);
        match new {
            Some(e) => writes.insert(&ekey[..], e.encode()),
            None => writes.remove(&ekey[..]),
        }
    }

    fn remember(&mut self, saga: SagaId, state: SeqState) {
        if self.seqs.len() >= self.config.seq_cache_sagas_max && !self.seqs.contains_key(&saga) {
            // Rare and cheap to recover from: misses read the last key.
            self.seqs.clear();
        }
        self.seqs.insert(saga, state);
    }

    #[allow(clippy::too_many_arguments)]
    fn stage_append(
        &mut self,
        writes: &mut sled::Batch,
        now: &mut BatchState,
        saga: SagaId,
        seq: u64,
        at_ms: u64,
        bytes: &[u8],
        change: &IndexChange,
    ) -> Result<u64, JournalError> {
        let state = self.next_seq(now, saga)?;
        if seq != state.next {
            return Err(JournalError::SequenceConflict {
                saga,
                seq,
                expected: state.next,
            });
        }
        writes.insert(&keys::record(saga, seq)[..], bytes);
        if seq == 0 {
            writes.insert(
                &keys::index(keys::UNFINISHED, saga)[..],
                &at_ms.to_be_bytes()[..],
            );
        }
        let index = change.apply(state.index.as_ref());
        Self::stage_index(writes, now, saga, state.index.as_ref(), index.as_ref());
        self.remember(
            saga,
            SeqState {
                next: seq + 1,
                last_at_ms: Some(at_ms),
                index,
            },
        );
        Ok(0)
    }

    /// Stage one saga's consecutive records, then (with `finish`, and only
    /// if every record was taken) its finish mark.
    fn stage_batch(
        &mut self,
        writes: &mut sled::Batch,
        now: &mut BatchState,
        saga: SagaId,
        records: &[(u64, u64, Vec<u8>, IndexChange)],
        finish: bool,
    ) -> Result<u64, JournalError> {
        for (seq, at_ms, bytes, change) in records {
            self.stage_append(writes, now, saga, *seq, *at_ms, bytes, change)?;
        }
        if finish {
            self.stage_finish(writes, now, saga)?;
        }
        Ok(0)
    }

    /// Count the stored index entries by state and channel, unless counted
    /// already. Reads every entry once (O(sagas)); from then on each durable
    /// batch adds its changes. The tree does not show this batch's staged
    /// writes yet, and their changes are added after its flush: counted once.
    fn count_states(&mut self) -> Result<u64, JournalError> {
        if self.counters.states().is_some() {
            return Ok(0);
        }
        let mut counts = StateCounts::new();
        for kv in self.tree.scan_prefix([keys::ENTRY]) {
            let (k, v) = kv.map_err(|e| self.backend("counting the index", e))?;
            if keys::saga_of_index(&k).is_none() {
                continue;
            }
            // An entry that does not decode has no index keys either
            // (`stored_entry` treats it as none): not counted.
            if let Ok(e) = SagaIndexEntry::decode(&v) {
                *counts.entry((e.state, e.channel)).or_default() += 1;
            }
        }
        *self.counters.states() = Some(counts);
        Ok(0)
    }

    fn stage_finish(
        &mut self,
        writes: &mut sled::Batch,
        now: &mut BatchState,
        saga: SagaId,
    ) -> Result<u64, JournalError> {
        let state = self.next_seq(now, saga)?;
        if state.next == 0 {
            return Err(JournalError::UnknownSaga(saga));
        }
        let fkey = keys::index(keys::FINISHED, saga);
        let already = now.finished.contains(&saga)
            || (!now.compacted.contains(&saga)
                && self
                    .tree
                    .contains_key(fkey)
                    .map_err(|e| self.backend(&format!("cannot read saga {saga}"), e))?);
        if already {
            // Idempotent; answered after this batch's flush, so "finished" is
            // durable when the call returns even if the first mark is in this batch.
            return Ok(0);
        }
        let at_ms = match state.last_at_ms {
            Some(t) => t,
            None => self.last_at_ms_on_disk(saga, state.next - 1),
        };
        writes.remove(&keys::index(keys::UNFINISHED, saga)[..]);
        writes.insert(&fkey[..], &at_ms.to_be_bytes()[..]);
        now.finished.insert(saga);
        Ok(0)
    }

    /// `at_ms` of the saga's last record; the wall clock if it cannot be read
    /// (a corrupt last record must not stop a saga from being finished).
    fn last_at_ms_on_disk(&self, saga: SagaId, seq: u64) -> u64 {
        let from_disk = self
            .tree
            .get(keys::record(saga, seq))
            .ok()
            .flatten()
            .and_then(|v| rescind_core::record::decode(saga, seq, &v).ok())
            .map(|e| e.at_ms);
        from_disk.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        })
    }

    fn stage_raw(
        &mut self,
        writes: &mut sled::Batch,
        now: &mut BatchState,
        saga: SagaId,
        seq: u64,
        bytes: &[u8],
    ) -> Result<u64, JournalError> {
        let state = self.next_seq(now, saga)?;
        writes.insert(&keys::record(saga, seq)[..], bytes);
        if state.next == 0 {
            writes.insert(
                &keys::index(keys::UNFINISHED, saga)[..],
                &0u64.to_be_bytes()[..],
            );
        }
        let mut index = state.index.clone();
        if seq == state.next {
            // Index what decodes, as an append would; bytes that do not
            // decode (corrupt-record tests) leave the index as it was.
            if let Ok(e) = rescind_core::record::decode(saga, seq, bytes) {
                index = IndexChange::of(&e).apply(state.index.as_ref());
                Self::stage_index(writes, now, saga, state.index.as_ref(), index.as_ref());
            }
        }
        if seq >= state.next {
            self.remember(
                saga,
                SeqState {
                    next: seq.saturating_add(1),
                    last_at_ms: None,
                    index,
                },
            );
        }
        Ok(0)
    }

    fn stage_compact(
        &mut self,
        writes: &mut sled::Batch,
        now: &mut BatchState,
        sagas: &[SagaId],
    ) -> Result<u64, JournalError> {
        let mut records = 0u64;
        for &saga in sagas {
            let fkey = keys::index(keys::FINISHED, saga);
            // Only sagas still finished on disk and not written earlier in
            // this batch (the tree does not show the batch's writes yet).
            if now.touched.contains(&saga) || now.compacted.contains(&saga) {
                continue;
            }
            let finished = self
                .tree
                .contains_key(fkey)
                .map_err(|e| self.backend(&format!("cannot read saga {saga}"), e))?;
            if !finished {
                continue;
            }
            for key in self.tree.scan_prefix(keys::record_prefix(saga)).keys() {
                let key = key.map_err(|e| self.backend(&format!("cannot read saga {saga}"), e))?;
                writes.remove(key);
                records += 1;
            }
            writes.remove(&fkey[..]);
            // Its index entry and every key derived from it go with it.
            let entry = self.stored_entry(saga)?;
            Self::stage_index(writes, now, saga, entry.as_ref(), None);
            // Defensive: a finished saga has no unfinished entry, but a
            // half-written index must not outlive the records it points to.
            writes.remove(&keys::index(keys::UNFINISHED, saga)[..]);
            self.seqs.remove(&saga);
            now.compacted.insert(saga);
        }
        Ok(records)
    }
}

fn answer(req: Request, result: Result<u64, JournalError>) {
    if let Some(reply) = req.reply {
        // The writer may have gone (its future dropped); nothing to tell then.
        let _ = reply.send(result);
    }
    drop(req.permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"").unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        dir
    }

    #[test]
    fn a_blob_added_right_after_a_listing_is_still_synced() {
        let dir = journal_dir();
        let mut sync = PowerLossSync::open(dir.path()).unwrap();
        assert!(sync.synced_blobs.is_empty());
        // Same coarse timestamp tick as the listing in `open`: the mtime may
        // not change, and the recent mtime must make `sync` list again.
        std::fs::write(dir.path().join("blobs").join("7"), b"page").unwrap();
        sync.sync().unwrap();
        assert!(sync.synced_blobs.contains(&OsString::from("7")));
    }

    #[test]
    fn a_settled_directory_is_not_listed_again_until_it_changes() {
        let dir = journal_dir();
        let mut sync = PowerLossSync::open(dir.path()).unwrap();
        // Pretend the listing is old and settled: an unchanged directory is
        // skipped (a file slipped in behind sled's back is not seen)...
        let old = SystemTime::now() - Duration::from_secs(10);
        let blobs = File::open(dir.path().join("blobs")).unwrap();
        blobs.set_modified(old).unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.listed_mtime, Some(old));
        sync.synced_blobs.insert(OsString::from("sentinel"));
        sync.sync().unwrap();
        assert!(
            sync.synced_blobs.contains(&OsString::from("sentinel")),
            "a settled, unchanged directory was listed again"
        );
        // ...and a new blob file changes the mtime, so it is listed.
        std::fs::write(dir.path().join("blobs").join("9"), b"page").unwrap();
        sync.sync().unwrap();
        assert!(sync.synced_blobs.contains(&OsString::from("9")));
        assert!(!sync.synced_blobs.contains(&OsString::from("sentinel")));
    }
}
