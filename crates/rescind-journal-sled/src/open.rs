//! Opening a journal directory: checks before sled, sled's own errors (and
//! panics) turned into clear errors, and the format version.

use crate::config::SledConfig;
use crate::{keys, JOURNAL_FORMAT_VERSION};
use rescind_core::{JournalError, SagaIndexEntry};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn err(path: &Path, what: impl std::fmt::Display) -> JournalError {
    JournalError::Backend(format!("sled journal at {}: {what}", path.display()))
}

/// Run `f`, turning a panic inside sled into an error naming `path`.
fn guarded<T>(
    path: &Path,
    what: &str,
    f: impl FnOnce() -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(err(
                path,
                format_args!("sled panicked during {what} (the database is probably corrupt; see sled issue 1533): {msg}"),
            ))
        }
    }
}

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Explain a sled error met while opening.
fn explain(path: &Path, e: sled::Error) -> JournalError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            JournalError::Locked {
                path: path.display().to_string(),
                detail: format!(
                    "another process (or another journal in this one) has the sled database open ({io})"
                ),
            }
        }
        sled::Error::Io(io) => err(path, format_args!("cannot open the database: {io}")),
        sled::Error::Corruption { at, .. } => err(
            path,
            format_args!(
                "sled reports the database corrupt at {at:?} and cannot recover it; \
                 restore from a copy (see sled issue 1533 on 0.34 after abrupt stops)"
            ),
        ),
        sled::Error::Unsupported(why) => err(path, format_args!("not a usable sled database: {why}")),
        other => err(path, format_args!("cannot open the database: {other}")),
    }
}

/// Refuse paths that are certainly not a journal before sled creates files in them.
fn precheck(path: &Path) -> Result<(), JournalError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(path, format_args!("cannot inspect the directory: {e}"))),
        Ok(m) if !m.is_dir() => Err(err(
            path,
            "not a directory (a journal is a sled database directory)",
        )),
        Ok(_) => {
            let names: Vec<String> = std::fs::read_dir(path)
                .map_err(|e| err(path, format_args!("cannot list the directory: {e}")))?
                .filter_map(|d| d.ok().map(|d| d.file_name().to_string_lossy().into_owned()))
                .collect();
            let is_sled = names.iter().any(|n| n == "conf") && names.iter().any(|n| n == "db");
            if names.is_empty() || is_sled {
                Ok(())
            } else {
                Err(err(
                    path,
                    "the directory is not empty and is not a sled database (no `conf` and `db` files); \
                     refusing to create a journal among other files",
                ))
            }
        }
    }
}

/// Open the database and the journal tree, and check or write the format version.
pub(crate) fn open_db(
    path: &Path,
    config: &SledConfig,
) -> Result<(sled::Db, sled::Tree), JournalError> {
    precheck(path)?;
    // sled recovers a data file of garbage as an empty database; remember
    // whether there was data, so that is not mistaken for a new journal.
    let had_data = std::fs::metadata(path.join("db"))
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    let started = std::time::Instant::now();
    let db = loop {
        // `guarded` turns a sled panic into an error; sled's own error stays typed here.
        let opened = guarded(path, "open", || {
            Ok(sled::Config::new()
                .path(path)
                .cache_capacity(config.cache_capacity_bytes)
                // rescind flushes itself, once per group commit; sled's periodic
                // flusher would only add flushes of nothing.
                .flush_every_ms(None)
                .open())
        })?;
        match opened {
            Ok(db) => break db,
            Err(e)
                if is_lock_error(&e)
                    && (started.elapsed().as_millis() as u64) < config.lock_wait_max_ms =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(explain(path, e)),
        }
    };
    let tree = guarded(path, "opening the journal tree", || {
        db.open_tree(keys::TREE).map_err(|e| explain(path, e))
    })?;
    guarded(path, "reading the format version", || {
        check_format(path, &db, &tree, had_data)
    })?;
    Ok((db, tree))
}

fn check_format(
    path: &Path,
    db: &sled::Db,
    tree: &sled::Tree,
    had_data: bool,
) -> Result<(), JournalError> {
    let stored = tree
        .get(keys::META_FORMAT_VERSION)
        .map_err(|e| err(path, format_args!("cannot read the format version: {e}")))?;
    match stored {
        Some(v) => {
            let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                err(path, format_args!("the stored format version is {} bytes, not 4: not a rescind journal or corrupt", v.len()))
            })?;
            let found = u32::from_be_bytes(bytes);
            if found > JOURNAL_FORMAT_VERSION {
                return Err(JournalError::NewerFormat {
                    found,
                    supported: JOURNAL_FORMAT_VERSION,
                });
            }
            if found == 0 {
                return Err(err(path, "the stored format version is 0: corrupt"));
            }
            if found < JOURNAL_FORMAT_VERSION {
                build_index(path, db, tree)?;
            }
            Ok(())
        }
        None => {
            // A new journal only if nothing else is in the database: never
            // adopt another application's sled database.
            let foreign_trees = db
                .tree_names()
                .into_iter()
                .any(|n| n != keys::TREE && n != b"__sled__default");
            if !tree.is_empty() || !db.is_empty() || foreign_trees {
                return Err(err(
                    path,
                    "a sled database without a rescind format version: not a rescind journal",
                ));
            }
            if had_data {
                return Err(err(
                    path,
                    "sled's data file is not empty but nothing could be recovered from it \
                     (corrupt, or a journal whose creation never completed); \
                     restore it from a copy, or delete the directory if it never held sagas",
                ));
            }
            tree.insert(
                keys::META_FORMAT_VERSION,
                &JOURNAL_FORMAT_VERSION.to_be_bytes()[..],
            )
            .map_err(|e| err(path, format_args!("cannot write the format version: {e}")))?;
            db.flush()
                .map_err(|e| err(path, format_args!("cannot flush the format version: {e}")))?;
            Ok(())
        }
    }
}

/// Sagas whose index keys are built per batch when a journal is upgraded.
const BUILD_SAGAS_PER_BATCH: usize = 1024;

/// Format 1 → 2: build every saga's index entry and keys from its records
/// (the sagas of both sets), then store the new format version. Idempotent:
/// nothing else writes meanwhile, so a run cut short is simply run again.
/// A saga whose records do not read or fold gets no entry (it still lists,
/// as unreadable).
fn build_index(path: &Path, db: &sled::Db, tree: &sled::Tree) -> Result<(), JournalError> {
    let started = std::time::Instant::now();
    let mut sagas = Vec::new();
    for prefix in [keys::UNFINISHED, keys::FINISHED] {
        for k in tree.scan_prefix([prefix]).keys() {
            let k = k.map_err(|e| err(path, format_args!("building the index: {e}")))?;
            if let Some(s) = keys::saga_of_index(&k) {
                sagas.push(s);
            }
        }
    }
    let mut indexed = 0u64;
    for chunk in sagas.chunks(BUILD_SAGAS_PER_BATCH) {
        let mut batch = sled::Batch::default();
        for &saga in chunk {
            let mut entry: Option<SagaIndexEntry> = None;
            for kv in tree.scan_prefix(keys::record_prefix(saga)) {
                let (k, v) = kv.map_err(|e| err(path, format_args!("building the index: {e}")))?;
                let Some(seq) = keys::seq_of_record(&k) else {
                    continue;
                };
                match rescind_core::record::decode(saga, seq, &v) {
                    Ok(e) => entry = SagaIndexEntry::next(entry.as_ref(), &e),
                    Err(why) => {
                        tracing::warn!(path = %path.display(), %saga, error = %why, "not indexing a saga with an unreadable record");
                        entry = None;
                        break;
                    }
                }
            }
            if let Some(e) = entry {
                for key in keys::secondary(saga, &e) {
                    batch.insert(key, &[][..]);
                }
                batch.insert(&keys::index(keys::ENTRY, saga)[..], e.encode());
                indexed += 1;
            }
        }
        tree.apply_batch(batch)
            .map_err(|e| err(path, format_args!("writing the index: {e}")))?;
    }
    tree.insert(
        keys::META_FORMAT_VERSION,
        &JOURNAL_FORMAT_VERSION.to_be_bytes()[..],
    )
    .map_err(|e| err(path, format_args!("cannot write the format version: {e}")))?;
    db.flush()
        .map_err(|e| err(path, format_args!("cannot flush the index: {e}")))?;
    tracing::info!(path = %path.display(), sagas = sagas.len(), indexed, elapsed_ms = started.elapsed().as_millis() as u64, "journal upgraded to format 2: saga indexes built");
    Ok(())
}
