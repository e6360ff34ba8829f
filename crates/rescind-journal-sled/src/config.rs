//! Configuration: group-commit limits, durability and retention.

/// What "durable" means when [`crate::SledJournal`]'s `append` returns.
///
/// See `docs/journal-format.md` for the exact promise of each level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Each group flush is sled's `Db::flush`, which on Linux ends in
    /// `sync_file_range(WAIT_BEFORE|WRITE|WAIT_AFTER)`: the records are written
    /// out of the process into the kernel and handed to the device. An
    /// acknowledged record survives the process being killed (`kill -9`,
    /// panic, OOM kill), not necessarily a power cut or kernel crash.
    Process,
    /// Each group flush is followed by `fdatasync` of sled's data file (and of
    /// any new blob files sled wrote for large pages, and their directory): an
    /// acknowledged record also survives power loss and kernel crashes on a
    /// device that honours flushes. The default.
    #[default]
    PowerLoss,
}

/// How long finished sagas are kept before [`crate::SledJournal::compact`]
/// deletes them. A finished saga is compacted when it is older than
/// `finished_keep_age_ms` **or** beyond the newest `finished_keep_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many finished sagas (the most recently finished).
    /// Default: 100,000.
    pub finished_keep_max: usize,
    /// Keep a finished saga at most this long after it finished (ms, measured
    /// against the `now_ms` given to `compact`). Default: 7 days.
    pub finished_keep_age_ms: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            finished_keep_max: 100_000,
            finished_keep_age_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

impl Retention {
    /// Keep every finished saga forever (compaction deletes nothing).
    pub fn keep_all() -> Self {
        Retention {
            finished_keep_max: usize::MAX,
            finished_keep_age_ms: u64::MAX,
        }
    }
}

/// Settings of a [`crate::SledJournal`]. Every limit has a name and a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledConfig {
    /// Most records (appends and finish marks) made durable by one flush.
    /// `1` turns group commit off: one flush per append, the baseline.
    /// Default: 1,024.
    pub batch_records_max: usize,
    /// Longest time the first record of a batch waits for company before the
    /// flush starts, in µs. `0` (the default) never waits: a batch is whatever
    /// queued while the previous flush ran, which under load is already large
    /// and when idle costs no latency.
    pub batch_wait_max_us: u64,
    /// Most appends queued for the committer at once; further appends wait
    /// (back-pressure) until a batch completes. Default: 65,536.
    pub queue_records_max: usize,
    /// Largest encoded record accepted, in bytes. Larger appends fail with
    /// [`rescind_core::JournalError::Backend`] before anything is written.
    /// Default: 4 MiB.
    pub record_bytes_max: usize,
    /// Sagas whose next sequence is cached in memory (so an append never reads
    /// the disk). Past this, the cache is cleared and refilled by reads.
    /// Default: 1,000,000 (about 40 MB).
    pub seq_cache_sagas_max: usize,
    /// sled's page cache, in bytes. Default: 256 MiB.
    pub cache_capacity_bytes: u64,
    /// What an acknowledged append survives. Default: [`Durability::PowerLoss`].
    pub durability: Durability,
    /// How long finished sagas are kept. Default: [`Retention::default`].
    pub retention: Retention,
    /// How long opening waits for the directory's lock, in ms. A journal just
    /// closed (here or by a process that just exited) can hold it for a moment
    /// while sled's I/O threads finish; a directory held by a running process
    /// is still refused, after this wait. Default: 2,000.
    pub lock_wait_max_ms: u64,
}

impl Default for SledConfig {
    fn default() -> Self {
        SledConfig {
            batch_records_max: 1024,
            batch_wait_max_us: 0,
            queue_records_max: 65_536,
            record_bytes_max: 4 * 1024 * 1024,
            seq_cache_sagas_max: 1_000_000,
            cache_capacity_bytes: 256 * 1024 * 1024,
            durability: Durability::default(),
            retention: Retention::default(),
            lock_wait_max_ms: 2_000,
        }
    }
}

impl SledConfig {
    /// One flush per append: no group commit (the benchmark's baseline).
    pub fn flush_per_append(mut self) -> Self {
        self.batch_records_max = 1;
        self.batch_wait_max_us = 0;
        self
    }

    /// Set the durability level.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Set the retention of finished sagas.
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }
}
