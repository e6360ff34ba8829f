//! [`FileCallbackStore`]: the durable callback store, an append-only file of
//! JSON lines.

use super::{
    lock, Appended, CallbackStore, CompactReport, StoredCallback, CALLBACK_RECORD_VERSION,
};
use crate::{Error, Result};
use async_trait::async_trait;
use std::collections::HashSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The default size bound of a [`FileCallbackStore`]: 64 MiB.
pub const DEFAULT_CALLBACK_STORE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Settings of a [`FileCallbackStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStoreOptions {
    /// The size bound: an append that would make the file larger is refused
    /// with [`Error::StoreFull`] and stores nothing (the receiver answers 503).
    pub max_bytes: u64,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        FileStoreOptions {
            max_bytes: DEFAULT_CALLBACK_STORE_MAX_BYTES,
        }
    }
}

/// A line the store could not read when it was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedLine {
    /// The 1-based line number.
    pub line: usize,
    /// The byte offset where the line starts.
    pub offset: u64,
    /// The line's length in bytes (without its newline).
    pub len: u64,
    /// Why it could not be read.
    pub detail: String,
    /// True when a whole record was recovered from the line's end (a
    /// partial write glued to the next record by an older rescind): that
    /// record is loaded, only the garbage before it is skipped.
    pub salvaged: bool,
}

/// What [`FileCallbackStore::open`] found, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Records loaded.
    pub records: usize,
    /// The torn last line that was dropped and truncated away: an append
    /// that never returned (no newline, or unreadable), hence never
    /// acknowledged.
    pub torn_tail: Option<SkippedLine>,
    /// Unreadable lines before the last one: left in the file, not loaded
    /// (compaction removes them), each logged as a warning with its offset.
    pub skipped: Vec<SkippedLine>,
}

impl OpenReport {
    /// True when every byte of the file was a readable record.
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.skipped.is_empty()
    }
}

/// A durable store: an append-only file of JSON lines, one per message.
///
/// **Promises**
///
/// - When `append` returns `Ok(New)`, the line is written and `fdatasync`ed
///   (`File::sync_data`), so it survives a crash and a power loss (as far as
///   the device honours flushes). Appends are serialised.
/// - A failed append (disk full, I/O error, a failed `fdatasync`) truncates
///   the file back to its last good length before returning the error, so
///   the next acknowledged message is never glued to a partial line. If even
///   the truncation fails, the next append retries it before writing, and
///   [`probe`](CallbackStore::probe) reports the store unwritable.
/// - The file never grows past [`FileStoreOptions::max_bytes`]: an append
///   that would cross it returns [`Error::StoreFull`] and writes nothing.
/// - On open, the dedup index is rebuilt from the file. A torn last line (an
///   append that never returned, hence was never acknowledged) is dropped
///   with a warning and truncated away; an unreadable line elsewhere is
///   skipped with a warning naming its line and byte offset (and a record
///   glued behind garbage is recovered). Neither blocks the worker: see
///   [`OpenReport`]. Only a record of a *newer* format version refuses to
///   open ([`Error::StoreCorrupt`]): that is a downgrade, not damage.
/// - [`compact`](CallbackStore::compact) rewrites the file to a temporary
///   file, `fsync`s it, renames it over the store and `fsync`s the directory:
///   a crash at any point leaves either the old or the new file, whole.
#[derive(Debug)]
pub struct FileCallbackStore {
    path: PathBuf,
    max_bytes: u64,
    report: OpenReport,
    inner: Arc<Mutex<FileInner>>,
    /// Serialises compactions (appends go on during the read phase).
    compacting: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct FileInner {
    file: std::fs::File,
    keys: HashSet<String>,
    /// The last good length: every byte before it is a whole, synced record.
    len: u64,
    /// The last append failed (cleared by the next successful one).
    failed: Option<FailedAppend>,
    /// The last append was refused as too large (cleared by a success).
    full: Option<u64>,
}

#[derive(Clone, Debug)]
struct FailedAppend {
    reason: String,
    rolled_back: bool,
}

/// One readable record and the bytes it occupies (its newline included).
struct Scanned {
    start: u64,
    end: u64,
    rec: StoredCallback,
}

struct Scan {
    records: Vec<Scanned>,
    skipped: Vec<SkippedLine>,
    torn_tail: Option<SkippedLine>,
    good_len: u64,
}

fn parse_record(
    path: &Path,
    line_no: usize,
    offset: u64,
    line: &[u8],
) -> Result<Option<StoredCallback>> {
    match serde_json::from_slice::<StoredCallback>(line) {
        Ok(rec) if rec.v > CALLBACK_RECORD_VERSION => Err(Error::StoreCorrupt {
            path: path.to_path_buf(),
            line: line_no,
            offset,
            detail: format!(
                "record version {} is newer than {CALLBACK_RECORD_VERSION} (written by a newer rescind)",
                rec.v
            ),
        }),
        Ok(rec) => Ok(Some(rec)),
        Err(_) => Ok(None),
    }
}

/// Every record line starts with this (serde writes `v` first).
const RECORD_START: &[u8] = b"{\"v\":";

/// Read the store's bytes into records, skipped lines and a torn tail.
fn scan(path: &Path, bytes: &[u8]) -> Result<Scan> {
    let mut out = Scan {
        records: Vec::new(),
        skipped: Vec::new(),
        torn_tail: None,
        good_len: 0,
    };
    let mut off = 0usize;
    let mut line_no = 0usize;
    while off < bytes.len() {
        line_no += 1;
        let (end, has_nl) = match bytes[off..].iter().position(|b| *b == b'\n') {
            Some(i) => (off + i, true),
            None => (bytes.len(), false),
        };
        let next = if has_nl { end + 1 } else { end };
        let line = &bytes[off..end];
        let skipped = |detail: String, salvaged: bool| SkippedLine {
            line: line_no,
            offset: off as u64,
            len: line.len() as u64,
            detail,
            salvaged,
        };
        if !has_nl {
            // Written without its newline: the append never returned.
            out.torn_tail = Some(skipped("no trailing newline".into(), false));
            break;
        }
        if line.is_empty() {
            out.good_len = next as u64;
            off = next;
            continue;
        }
        if let Some(rec) = parse_record(path, line_no, off as u64, line)? {
            out.records.push(Scanned {
                start: off as u64,
                end: next as u64,
                rec,
            });
            out.good_len = next as u64;
            off = next;
            continue;
        }
        let detail = match serde_json::from_slice::<StoredCallback>(line) {
            Err(e) => e.to_string(),
            Ok(_) => "unreadable".into(),
        };
        // A partial write followed by a whole record on the same line: the
        // record was acknowledged, recover it.
        let salvage = (1..line.len())
            .filter(|i| line[*i..].starts_with(RECORD_START))
            .find_map(|i| {
                parse_record(path, line_no, (off + i) as u64, &line[i..])
                    .map(|r| r.map(|rec| (i, rec)))
                    .transpose()
            })
            .transpose()?;
        match salvage {
            Some((i, rec)) => {
                out.skipped.push(skipped(detail, true));
                out.records.push(Scanned {
                    start: (off + i) as u64,
                    end: next as u64,
                    rec,
                });
            }
            None if next == bytes.len() => {
                // The last line, unreadable: an append that never returned.
                out.torn_tail = Some(skipped(detail, false));
                break;
            }
            None => out.skipped.push(skipped(detail, false)),
        }
        out.good_len = next as u64;
        off = next;
    }
    Ok(out)
}

fn read_prefix(file: &mut std::fs::File, len: u64) -> std::io::Result<Vec<u8>> {
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

impl FileCallbackStore {
    /// Open (or create) the store at `path` with the default
    /// [`FileStoreOptions`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, FileStoreOptions::default())
    }

    /// Open (or create) the store at `path`. A torn last line is truncated
    /// away and unreadable lines are skipped, each with a `warn!`; see
    /// [`Self::open_report`]. A file already larger than `max_bytes` opens
    /// (nothing is lost) but takes no append until compacted below it.
    pub fn open_with(path: impl AsRef<Path>, options: FileStoreOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |e: std::io::Error| Error::Store {
            path: path.clone(),
            source: e,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let bytes = read_prefix(&mut file, size).map_err(io)?;
        let scan = scan(&path, &bytes)?;
        for s in &scan.skipped {
            tracing::warn!(
                path = %path.display(),
                line = s.line,
                offset = s.offset,
                len = s.len,
                salvaged = s.salvaged,
                detail = %s.detail,
                "callback store: skipping an unreadable line"
            );
        }
        if let Some(t) = &scan.torn_tail {
            tracing::warn!(
                path = %path.display(),
                line = t.line,
                offset = t.offset,
                len = t.len,
                detail = %t.detail,
                "callback store: dropping a torn last line (an append that never returned, never acknowledged)"
            );
        }
        if size != scan.good_len {
            file.set_len(scan.good_len).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        let keys = scan.records.iter().map(|s| s.rec.key.clone()).collect();
        let report = OpenReport {
            records: scan.records.len(),
            torn_tail: scan.torn_tail,
            skipped: scan.skipped,
        };
        Ok(FileCallbackStore {
            path,
            max_bytes: options.max_bytes,
            report,
            inner: Arc::new(Mutex::new(FileInner {
                file,
                keys,
                len: scan.good_len,
                failed: None,
                full: None,
            })),
            compacting: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes stored (the last good length).
    pub fn len_bytes(&self) -> u64 {
        lock(&self.inner).len
    }

    /// What open found: records loaded, a torn tail dropped, lines skipped.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    fn tmp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".compact-tmp");
        self.path.with_file_name(name)
    }
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[async_trait]
impl CallbackStore for FileCallbackStore {
    async fn append(&self, rec: &StoredCallback) -> Result<Appended> {
        let mut line = serde_json::to_vec(rec).map_err(|e| Error::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        let inner = self.inner.clone();
        let key = rec.key.clone();
        let path = self.path.clone();
        let max = self.max_bytes;
        tokio::task::spawn_blocking(move || {
            let mut g = lock(&inner);
            if g.keys.contains(&key) {
                return Ok(Appended::Duplicate);
            }
            let n = line.len() as u64;
            if g.len.saturating_add(n) > max {
                g.full = Some(n);
                return Err(Error::StoreFull {
                    path,
                    len: g.len,
                    record: n,
                    max,
                });
            }
            let g = &mut *g;
            if let Some(f) = g.failed.as_mut().filter(|f| !f.rolled_back) {
                // The last failure left bytes behind: cut them first.
                let len = g.len;
                g.file
                    .set_len(len)
                    .and_then(|_| g.file.sync_data())
                    .map_err(|e| Error::Store {
                        path: path.clone(),
                        source: e,
                    })?;
                f.rolled_back = true;
            }
            match g.file.write_all(&line).and_then(|_| g.file.sync_data()) {
                Ok(()) => {
                    g.len += n;
                    g.keys.insert(key);
                    g.failed = None;
                    g.full = None;
                    Ok(Appended::New)
                }
                Err(e) => {
                    // Cut the partial line so the next record starts on a
                    // line of its own; the receiver answers 5xx (re-push).
                    let rolled_back = g
                        .file
                        .set_len(g.len)
                        .and_then(|_| g.file.sync_data())
                        .is_ok();
                    tracing::warn!(
                        path = %path.display(),
                        offset = g.len,
                        rolled_back,
                        error = %e,
                        "callback store: append failed; truncated back to the last good length"
                    );
                    g.failed = Some(FailedAppend {
                        reason: e.to_string(),
                        rolled_back,
                    });
                    Err(Error::Store { path, source: e })
                }
            }
        })
        .await
        .map_err(|e| Error::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn load_all(&self) -> Result<Vec<StoredCallback>> {
        let inner = self.inner.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = lock(&inner);
            let len = g.len;
            let bytes = read_prefix(&mut g.file, len).map_err(|e| Error::Store {
                path: path.clone(),
                source: e,
            })?;
            drop(g);
            Ok(scan(&path, &bytes)?
                .records
                .into_iter()
                .map(|s| s.rec)
                .collect())
        })
        .await
        .map_err(|e| Error::Store {
            path: self.path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
    }

    async fn compact(
        &self,
        cutoff_ms: u64,
        keep: &(dyn for<'r> Fn(&'r StoredCallback) -> bool + Send + Sync),
    ) -> Result<CompactReport> {
        let _one_at_a_time = self.compacting.lock().await;
        let io = |e: std::io::Error| Error::Store {
            path: self.path.clone(),
            source: e,
        };
        // Phase 1: read a snapshot (appends go on meanwhile) and decide.
        let (inner, path) = (self.inner.clone(), self.path.clone());
        let (snap_len, bytes) = tokio::task::spawn_blocking(move || {
            let mut g = lock(&inner);
            let len = g.len;
            read_prefix(&mut g.file, len).map(|b| (len, b))
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map_err(io)?;
        let scan = scan(&path, &bytes)?;
        let mut report = CompactReport {
            bytes_before: snap_len,
            unreadable_dropped: scan.skipped.iter().filter(|s| !s.salvaged).count(),
            ..CompactReport::default()
        };
        let mut kept: Vec<(u64, u64)> = Vec::new();
        let mut dropped_keys = Vec::new();
        for s in &scan.records {
            if s.rec.received_at_ms >= cutoff_ms || keep(&s.rec) {
                kept.push((s.start, s.end));
                report.kept += 1;
            } else {
                dropped_keys.push(s.rec.key.clone());
                report.dropped += 1;
            }
        }
        if report.dropped == 0 && report.unreadable_dropped == 0 && scan.skipped.is_empty() {
            report.bytes_after = snap_len;
            return Ok(report);
        }
        // Phase 2, appends paused: write the kept records and whatever was
        // appended since the snapshot to a temporary file, sync it, rename
        // it over the store, sync the directory, and append to it from now on.
        let (inner, path, tmp) = (self.inner.clone(), self.path.clone(), self.tmp_path());
        tokio::task::spawn_blocking(move || {
            let mut g = lock(&inner);
            let g = &mut *g;
            let io = |e: std::io::Error| Error::Store {
                path: path.clone(),
                source: e,
            };
            let tail_len = g.len - snap_len;
            g.file
                .seek(std::io::SeekFrom::Start(snap_len))
                .map_err(io)?;
            let mut tail = Vec::with_capacity(tail_len as usize);
            (&mut g.file)
                .take(tail_len)
                .read_to_end(&mut tail)
                .map_err(io)?;
            let write = || -> std::io::Result<(std::fs::File, u64)> {
                let mut f = std::fs::OpenOptions::new()
                    .read(true)
                    .append(true)
                    .create(true)
                    .truncate(false)
                    .open(&tmp)?;
                f.set_len(0)?;
                let mut out = std::io::BufWriter::new(&mut f);
                let mut n = 0u64;
                for (start, end) in &kept {
                    out.write_all(&bytes[*start as usize..*end as usize])?;
                    n += end - start;
                }
                out.write_all(&tail)?;
                n += tail_len;
                out.flush()?;
                drop(out);
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                sync_dir(&path)?;
                Ok((f, n))
            };
            match write() {
                Ok((f, n)) => {
                    g.file = f;
                    g.len = n;
                    for k in &dropped_keys {
                        g.keys.remove(k);
                    }
                    g.failed = None;
                    g.full = None;
                    Ok(n)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    Err(io(e))
                }
            }
        })
        .await
        .map_err(|e| io(std::io::Error::other(e.to_string())))?
        .map(|n| {
            report.bytes_after = n;
            report
        })
    }

    /// Whether the store can take an append now: `Err` when the last append
    /// failed ([`Error::StoreWriteFailed`]) or was refused as too large
    /// ([`Error::StoreFull`]), both until an append or a compaction
    /// succeeds; when the file is at its bound; or when the file at the
    /// store's path is gone or is no longer the one being appended to
    /// ([`Error::Store`]). Cheap (two `stat`s); meant for `/healthz`.
    fn probe(&self) -> Result<()> {
        let g = lock(&self.inner);
        if let Some(f) = &g.failed {
            return Err(Error::StoreWriteFailed {
                path: self.path.clone(),
                offset: g.len,
                reason: f.reason.clone(),
                rolled_back: f.rolled_back,
            });
        }
        if g.full.is_some() || g.len >= self.max_bytes {
            return Err(Error::StoreFull {
                path: self.path.clone(),
                len: g.len,
                record: g.full.unwrap_or(0),
                max: self.max_bytes,
            });
        }
        let io = |e: std::io::Error| Error::Store {
            path: self.path.clone(),
            source: e,
        };
        let open = g.file.metadata().map_err(io)?;
        let named = std::fs::metadata(&self.path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if (open.dev(), open.ino()) != (named.dev(), named.ino()) {
                return Err(io(std::io::Error::other(
                    "the file was replaced or removed: appends would not be found at restart",
                )));
            }
        }
        if open.len() < g.len {
            return Err(io(std::io::Error::other(format!(
                "the file is {} bytes, shorter than the {} bytes stored: it was truncated behind the store's back",
                open.len(),
                g.len
            ))));
        }
        let _ = named;
        Ok(())
    }
}
