//! The journal: append-only records per saga, durable when `append` returns.
//!
//! [`Journal`] is the trait every store implements (sled is the embedded
//! default, PostgreSQL the shared one). [`MemoryJournal`] keeps records in
//! memory and can simulate a crash at any append, dropping everything that was
//! not yet durable — the tool the engine's crash tests are built on.

use crate::ids::SagaId;
use crate::index::{SagaCounts, SagaPage, SagaQuery, SagaStatus};
use crate::record::{decode, encode, Entry};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Everything a journal can fail with. Every variant about stored data names
/// the saga (and the sequence, where one record is at fault).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// A stored record could not be decoded. Other records stay readable.
    #[error("journal record for saga {saga} seq {seq} is corrupt: {detail}")]
    Corrupt {
        /// The saga.
        saga: SagaId,
        /// The record's sequence.
        seq: u64,
        /// What was wrong.
        detail: String,
    },
    /// A record was written by a newer rescind.
    #[error("journal record for saga {saga} seq {seq} has format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The saga.
        saga: SagaId,
        /// The record's sequence.
        seq: u64,
        /// Version found.
        found: u16,
        /// Newest version this build reads.
        supported: u16,
    },
    /// An append did not continue the saga's sequence (a duplicate or a gap):
    /// two writers on one saga, or a bug.
    #[error("append to saga {saga} at seq {seq} rejected: the journal expects seq {expected}")]
    SequenceConflict {
        /// The saga.
        saga: SagaId,
        /// The sequence offered.
        seq: u64,
        /// The sequence the journal expected.
        expected: u64,
    },
    /// The saga has no records.
    #[error("saga {0} is not in the journal")]
    UnknownSaga(SagaId),
    /// This writer's lease on the saga was taken over; the write was refused.
    #[error("write to saga {saga} refused: {detail}")]
    Fenced {
        /// The saga.
        saga: SagaId,
        /// Who holds it now, or the stale token.
        detail: String,
    },
    /// The database was written by a newer rescind and cannot be opened.
    #[error("journal format version {found} is newer than this build supports ({supported}); upgrade rescind")]
    NewerFormat {
        /// Version stored.
        found: u32,
        /// Newest version this build supports.
        supported: u32,
    },
    /// The journal's storage is held by another process (a sled directory
    /// open in a running worker): nothing was read or written.
    #[error("journal at {path} is locked: {detail}")]
    Locked {
        /// Where the journal is (a directory, for sled).
        path: String,
        /// What the backend said, and who may hold it.
        detail: String,
    },
    /// A simulated crash: this journal handle is dead (tests only).
    #[error("the journal crashed (simulated)")]
    Crashed,
    /// The storage backend failed (I/O, database, lock).
    #[error("journal backend error: {0}")]
    Backend(String),
}

/// Which sagas to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaSet {
    /// Sagas not yet marked finished.
    Unfinished,
    /// Sagas marked finished (and not yet compacted away).
    Finished,
}

/// An append-only, per-saga record store.
///
/// **Contract** (checked by the conformance suite every implementation runs):
/// - `append(saga, entry)` returns only once the entry is durable; entries of a
///   saga have sequences 0, 1, 2… without gaps, and any other sequence is a
///   [`JournalError::SequenceConflict`]. A saga is *unfinished* from its first
///   append until [`Journal::mark_finished`].
/// - `read` returns a saga's entries in sequence order; a record that cannot
///   be decoded is an error naming saga and sequence, and other sagas stay readable.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Append one entry; durable when this returns `Ok`.
    async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError>;
    /// Append several consecutive entries of one saga and, with `finish`, mark
    /// it finished afterwards; all durable when this returns `Ok`. On an error,
    /// a prefix may have been written. The engine writes a step's outcome
    /// together with the next intent through this, so a journal that can make
    /// them durable in one flush should override the default (one at a time).
    async fn append_batch(
        &self,
        saga: SagaId,
        entries: &[Entry],
        finish: bool,
    ) -> Result<(), JournalError> {
        for e in entries {
            self.append(saga, e).await?;
        }
        if finish {
            self.mark_finished(saga).await?;
        }
        Ok(())
    }
    /// Bulk load: for each `(saga, entries, finish)` in order, what
    /// [`Journal::append_batch`]`(saga, entries, finish)` would do, so the
    /// result reads, lists, queries and counts exactly as if appended one by
    /// one (the conformance suite checks it). For filling a journal (imports,
    /// benchmarks), not for the engine. The default loops `append_batch`; a
    /// journal that can write many sagas in one write (sled: one batch;
    /// PostgreSQL: one transaction) overrides it. On an error, the sagas
    /// before the one named, and a prefix of that one, may have been written
    /// (an override may also write none).
    async fn append_many(&self, sagas: &[(SagaId, Vec<Entry>, bool)]) -> Result<(), JournalError> {
        for (saga, entries, finish) in sagas {
            self.append_batch(*saga, entries, *finish).await?;
        }
        Ok(())
    }
    /// All entries of a saga, in order. Unknown saga: `UnknownSaga`.
    async fn read(&self, saga: SagaId) -> Result<Vec<Entry>, JournalError>;
    /// The entries of many sagas, each result as [`Journal::read`] would give
    /// it, in the order asked. Recovery reads through this, so a journal that
    /// can read a batch in one pass (one trip to its I/O thread, one query)
    /// should override the default, which reads one saga at a time.
    async fn read_many(&self, sagas: &[SagaId]) -> Vec<Result<Vec<Entry>, JournalError>> {
        let mut out = Vec::with_capacity(sagas.len());
        for saga in sagas {
            out.push(self.read(*saga).await);
        }
        out
    }
    /// Sagas in the given set, sorted by id.
    async fn list(&self, set: SagaSet) -> Result<Vec<SagaId>, JournalError>;
    /// Move a saga to the finished set (durable when this returns).
    async fn mark_finished(&self, saga: SagaId) -> Result<(), JournalError>;
    /// The unfinished sagas this process should run now. A single-process
    /// journal returns them all; a shared journal (PostgreSQL) claims the ones
    /// whose lease is free or expired and returns only those, so that every
    /// saga is driven by one worker at a time.
    async fn claim_unfinished(&self) -> Result<Vec<SagaId>, JournalError> {
        self.list(SagaSet::Unfinished).await
    }
    /// Give up this process's claim on a saga (a shared journal releases its
    /// lease; single-process journals do nothing).
    async fn release(&self, saga: SagaId) -> Result<(), JournalError> {
        let _ = saga;
        Ok(())
    }
    /// Give up every claim this process holds, as [`Journal::release`] would
    /// one by one; returns how many were released. A worker calls it when it
    /// stops gracefully (after its engine stopped driving sagas), so another
    /// worker takes them over at once instead of after the lease expires. A
    /// write this process still makes afterwards on one of those sagas is
    /// fenced, as after any lost lease. Single-process journals hold nothing:
    /// the default releases nothing and returns 0.
    async fn release_all(&self) -> Result<usize, JournalError> {
        Ok(0)
    }
    /// Can the journal take a durable write right now? A health check calls
    /// it: `Err` names why not (disk full, database read-only or down).
    /// Default: yes.
    async fn probe(&self) -> Result<(), JournalError> {
        Ok(())
    }

    /// One page of the sagas that match `q`, in saga id order, with the
    /// cursor of the next page. A journal that keeps the saga indexes
    /// ([`crate::index`]) answers in time proportional to the page; the
    /// default reads and folds sagas in id order until the page is full
    /// ([`crate::index::scan_query`]).
    async fn query(&self, q: &SagaQuery) -> Result<SagaPage, JournalError> {
        crate::index::scan_query(self, q).await
    }

    /// How many sagas match `q`'s filters and set (its cursor and limit are
    /// ignored); exactly the number [`Journal::query`] would page through.
    /// The default pages through `query` ([`crate::index::count_by_paging`]);
    /// indexed journals count index keys instead.
    async fn count(&self, q: &SagaQuery) -> Result<u64, JournalError> {
        crate::index::count_by_paging(self, q).await
    }

    /// Sagas by state and channel ([`SagaCounts`]), for an overview. The
    /// default reads and folds every saga ([`crate::index::scan_counts`]);
    /// an indexed journal answers from its indexes, in time that does not
    /// grow with the number of finished sagas (see [`SagaCounts::terminal_exact`]).
    async fn counts(&self) -> Result<SagaCounts, JournalError> {
        crate::index::scan_counts(self).await
    }

    /// The sagas in any of `states` updated last, newest first (ties: the
    /// higher saga id first), at most `limit`: the console's "recent
    /// failures". The default reads and folds every saga
    /// ([`crate::index::scan_recent`]); an indexed journal walks its
    /// update-time index from the newest end and may look no further back
    /// than a bounded window of the newest updates (sled:
    /// `RECENT_WINDOW_SAGAS`), so a saga whose last update is older than
    /// that window is not returned.
    async fn recent(
        &self,
        states: &[SagaStatus],
        limit: usize,
    ) -> Result<Vec<SagaId>, JournalError> {
        crate::index::scan_recent(self, states, limit).await
    }

    /// Group commits so far (records per commit, flush latency), for a
    /// journal that commits in groups and counts them; `None` otherwise.
    /// Cheap: a copy of a few counters, never a read of the journal.
    fn group_commits(&self) -> Option<crate::metrics::GroupCommitSnapshot> {
        None
    }
}

/// Where a scheduled [`MemoryJournal`] crash lands, relative to one append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The process dies before the append is written.
    BeforeAppend,
    /// The record is written but not yet durable; the crash drops it.
    AfterWriteBeforeFlush,
    /// The record is durable, the process dies before the caller learns it.
    AfterFlush,
}

#[derive(Default)]
struct MemState {
    sagas: BTreeMap<SagaId, Vec<Vec<u8>>>,
    finished: BTreeSet<SagaId>,
    appends: u64,
    crash_at: Option<(u64, CrashPoint)>,
    crashed: bool,
}

/// An in-memory journal for tests and simulation, with scheduled crashes.
///
/// Records are stored encoded, exactly as a disk journal would store them, so
/// the codec's version checks run here too. After a crash every call fails
/// with [`JournalError::Crashed`] until [`MemoryJournal::restart`] hands out a
/// fresh handle onto the durable records.
#[derive(Clone, Default)]
pub struct MemoryJournal {
    state: Arc<Mutex<MemState>>,
}

impl std::fmt::Debug for MemoryJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryJournal").finish_non_exhaustive()
    }
}

impl MemoryJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A poisoned lock means a test thread panicked mid-append; the data is
        // still consistent (every mutation below is a single push/insert).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Crash at the `n`-th append from now on (0 = the next one), at `point`.
    pub fn crash_at(&self, n: u64, point: CrashPoint) {
        let mut s = self.lock();
        let at = s.appends + n;
        s.crash_at = Some((at, point));
    }

    /// Crash now: every later call fails until `restart`.
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// Has a crash happened?
    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Appends attempted so far (including the one that crashed).
    pub fn appends(&self) -> u64 {
        self.lock().appends
    }

    /// "Restart the process": the same durable records, no crash pending.
    pub fn restart(&self) -> MemoryJournal {
        let mut s = self.lock();
        s.crashed = false;
        s.crash_at = None;
        self.clone()
    }

    /// Overwrite a stored record's bytes (tests of corrupt-record handling).
    pub fn corrupt(&self, saga: SagaId, seq: u64, bytes: Vec<u8>) -> bool {
        let mut s = self.lock();
        match s.sagas.get_mut(&saga).and_then(|v| v.get_mut(seq as usize)) {
            Some(slot) => {
                *slot = bytes;
                true
            }
            None => false,
        }
    }

    /// Store raw bytes as the next record of a saga (tests of bad input).
    pub fn append_raw(&self, saga: SagaId, bytes: Vec<u8>) {
        self.lock().sagas.entry(saga).or_default().push(bytes);
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn append(&self, saga: SagaId, entry: &Entry) -> Result<(), JournalError> {
        let mut s = self.lock();
        if s.crashed {
            return Err(JournalError::Crashed);
        }
        let n = s.appends;
        s.appends += 1;
        let point = match s.crash_at {
            Some((at, p)) if at == n => Some(p),
            _ => None,
        };
        if matches!(
            point,
            Some(CrashPoint::BeforeAppend) | Some(CrashPoint::AfterWriteBeforeFlush)
        ) {
            // Written-but-not-flushed is dropped by the crash: same as never written.
            s.crashed = true;
            return Err(JournalError::Crashed);
        }
        let expected = s.sagas.get(&saga).map_or(0, |v| v.len() as u64);
        if entry.seq != expected {
            return Err(JournalError::SequenceConflict {
                saga,
                seq: entry.seq,
                expected,
            });
        }
        let bytes = encode(entry);
        s.sagas.entry(saga).or_default().push(bytes);
        if point == Some(CrashPoint::AfterFlush) {
            s.crashed = true;
            return Err(JournalError::Crashed);
        }
        Ok(())
    }

    async fn read(&self, saga: SagaId) -> Result<Vec<Entry>, JournalError> {
        let s = self.lock();
        if s.crashed {
            return Err(JournalError::Crashed);
        }
        let recs = s.sagas.get(&saga).ok_or(JournalError::UnknownSaga(saga))?;
        recs.iter()
            .enumerate()
            .map(|(i, b)| decode(saga, i as u64, b))
            .collect()
    }

    async fn list(&self, set: SagaSet) -> Result<Vec<SagaId>, JournalError> {
        let s = self.lock();
        if s.crashed {
            return Err(JournalError::Crashed);
        }
        Ok(s.sagas
            .keys()
            .filter(|id| (set == SagaSet::Finished) == s.finished.contains(id))
            .copied()
            .collect())
    }

    async fn mark_finished(&self, saga: SagaId) -> Result<(), JournalError> {
        let mut s = self.lock();
        if s.crashed {
            return Err(JournalError::Crashed);
        }
        if !s.sagas.contains_key(&saga) {
            return Err(JournalError::UnknownSaga(saga));
        }
        s.finished.insert(saga);
        Ok(())
    }
}
