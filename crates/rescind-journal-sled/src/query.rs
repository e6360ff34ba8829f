//! Answering a [`SagaQuery`] from the index keys (`keys::ENTRY`, `BY_*`).
//!
//! One filter drives: its keys are scanned in saga id order from the cursor,
//! and each candidate is checked against the other filters (one point read
//! of its index entry) until the page is full. Which filter drives, most
//! selective first: order, account, state, kind, channel, the set, then the
//! time index (`since` alone: the sagas updated since, sorted), and with no
//! filter the unfinished and finished sets merged.

use crate::keys;
use rescind_core::index::QUERY_LIMIT_MAX;
use rescind_core::{
    Cursor, JournalError, SagaId, SagaIndexEntry, SagaPage, SagaQuery, SagaSet, SagaStatus,
};
use std::path::Path;

fn backend(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError::Backend(format!("sled journal at {}: query: {e}", path.display()))
}

/// The sagas under `prefix` (keys `prefix ++ saga`) after `cursor`, in id order.
fn ids_under<'a>(
    tree: &'a sled::Tree,
    path: &'a Path,
    prefix: Vec<u8>,
    cursor: Option<Cursor>,
) -> impl Iterator<Item = Result<SagaId, JournalError>> + 'a {
    let mut start = prefix.clone();
    if let Some(Cursor(after)) = cursor {
        start.extend_from_slice(after.0.as_bytes());
    }
    let want_len = prefix.len() + 16;
    tree.range(start..)
        .keys()
        .map(move |k| k.map_err(|e| backend(path, e)))
        .take_while({
            let prefix = prefix.clone();
            move |k| k.as_ref().map_or(true, |k| k.starts_with(&prefix))
        })
        .filter_map(move |k| match k {
            Err(e) => Some(Err(e)),
            Ok(k) if k.len() == want_len => keys::saga_of_tail(&k)
                .filter(|s| cursor.is_none_or(|Cursor(c)| *s > c))
                .map(Ok),
            // A key of another length is not this index's (or is malformed).
            Ok(_) => None,
        })
}

fn set_prefix(set: SagaSet) -> u8 {
    match set {
        SagaSet::Unfinished => keys::UNFINISHED,
        SagaSet::Finished => keys::FINISHED,
    }
}

/// Does `saga` pass the filters the driving index did not check?
fn passes(
    tree: &sled::Tree,
    path: &Path,
    q: &SagaQuery,
    saga: SagaId,
    set_checked: bool,
) -> Result<bool, JournalError> {
    if q.has_entry_filter() {
        let stored = tree
            .get(keys::index(keys::ENTRY, saga))
            .map_err(|e| backend(path, e))?;
        let matches = stored
            .and_then(|v| SagaIndexEntry::decode(&v).ok())
            .is_some_and(|e| e.matches(q));
        if !matches {
            return Ok(false);
        }
    }
    match q.set {
        Some(set) if !set_checked => tree
            .contains_key(keys::index(set_prefix(set), saga))
            .map_err(|e| backend(path, e)),
        _ => Ok(true),
    }
}

/// Gather up to `limit + 1` sagas from `ids` that pass, then make the page.
fn page_from(
    tree: &sled::Tree,
    path: &Path,
    q: &SagaQuery,
    ids: impl Iterator<Item = Result<SagaId, JournalError>>,
    set_checked: bool,
) -> Result<SagaPage, JournalError> {
    let limit = q.page_size();
    let mut out = Vec::with_capacity(limit + 1);
    for id in ids {
        let id = id?;
        if passes(tree, path, q, id, set_checked)? {
            out.push(id);
            if out.len() > limit {
                break;
            }
        }
    }
    Ok(SagaPage::from_gathered(out, limit))
}

/// The key prefix of the index that drives `q`: the most selective filter
/// that has its own index (order, account, state, kind, then channel).
fn driving_prefix(q: &SagaQuery) -> Option<Vec<u8>> {
    if let Some((c, o)) = &q.order {
        Some(keys::order_prefix(c, o))
    } else if let Some(a) = &q.account {
        Some(keys::str_prefix(keys::BY_ACCOUNT, a))
    } else if let Some(s) = q.state {
        Some(keys::state_prefix(s).to_vec())
    } else if let Some(k) = &q.kind {
        Some(keys::str_prefix(keys::BY_KIND, k))
    } else {
        q.channel
            .as_ref()
            .map(|c| keys::str_prefix(keys::BY_CHANNEL, c))
    }
}

/// Answer `q` from the indexes.
pub(crate) fn run(tree: &sled::Tree, path: &Path, q: &SagaQuery) -> Result<SagaPage, JournalError> {
    let driving = driving_prefix(q);
    if let Some(prefix) = driving {
        let ids = ids_under(tree, path, prefix, q.cursor);
        return page_from(tree, path, q, ids, false);
    }
    if let Some(set) = q.set {
        let ids = ids_under(tree, path, vec![set_prefix(set)], q.cursor);
        return page_from(tree, path, q, ids, true);
    }
    if let Some(since) = q.since_ms {
        // The sagas updated since `since`, in id order: this costs the number
        // of sagas updated since, not a page (the time index is in time order).
        let mut ids = Vec::new();
        let start = keys::time_key(since, SagaId::from_u128(0));
        for k in tree.range(start..).keys() {
            let k = k.map_err(|e| backend(path, e))?;
            if k.first() != Some(&keys::BY_TIME) {
                break;
            }
            if let Some(s) = keys::saga_of_tail(&k) {
                if q.cursor.is_none_or(|Cursor(c)| s > c) {
                    ids.push(s);
                }
            }
        }
        ids.sort();
        ids.dedup();
        return page_from(tree, path, q, ids.into_iter().map(Ok), false);
    }
    // No filter: both sets, merged in id order.
    let mut a = ids_under(tree, path, vec![keys::UNFINISHED], q.cursor).peekable();
    let mut b = ids_under(tree, path, vec![keys::FINISHED], q.cursor).peekable();
    let merged = std::iter::from_fn(move || {
        let (take_a, same) = match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(_), None) => (true, false),
            (None, Some(_)) => (false, false),
            (Some(Err(_)), _) => (true, false),
            (_, Some(Err(_))) => (false, false),
            (Some(Ok(x)), Some(Ok(y))) => (x <= y, x == y),
        };
        if same {
            // In both sets (a half-written finish): once.
            b.next();
        }
        if take_a {
            a.next()
        } else {
            b.next()
        }
    });
    page_from(tree, path, q, merged, true)
}

/// How many sagas match `q` (cursor and limit ignored). A query with one
/// filter that has its own index (order, account, kind, channel, state, or
/// the set alone) counts that index's keys without reading an entry:
/// O(matches). Others page through [`run`].
pub(crate) fn count(tree: &sled::Tree, path: &Path, q: &SagaQuery) -> Result<u64, JournalError> {
    let filters = [
        q.order.is_some(),
        q.account.is_some(),
        q.state.is_some(),
        q.kind.is_some(),
        q.channel.is_some(),
        q.since_ms.is_some(),
        q.set.is_some(),
    ];
    let single = filters.iter().filter(|f| **f).count() == 1;
    let prefix: Option<Vec<u8>> = if !single {
        None
    } else {
        driving_prefix(q).or_else(|| q.set.map(|set| vec![set_prefix(set)]))
    };
    if let Some(prefix) = prefix {
        let mut n = 0u64;
        for id in ids_under(tree, path, prefix, None) {
            id?;
            n += 1;
        }
        return Ok(n);
    }
    let mut q = q.clone();
    q.cursor = None;
    q.limit = QUERY_LIMIT_MAX;
    let mut n = 0u64;
    loop {
        let page = run(tree, path, &q)?;
        n += page.ids.len() as u64;
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return Ok(n),
        }
    }
}

/// The sagas in `states` updated last, newest first, from the time index
/// walked back from its newest key, at most `window` keys back.
pub(crate) fn recent(
    tree: &sled::Tree,
    path: &Path,
    states: &[SagaStatus],
    limit: usize,
    window: usize,
) -> Result<Vec<SagaId>, JournalError> {
    let mut out = Vec::new();
    if limit == 0 || states.is_empty() {
        return Ok(out);
    }
    let start = vec![keys::BY_TIME];
    let end = vec![keys::BY_TIME + 1];
    for k in tree.range(start..end).keys().rev().take(window) {
        let k = k.map_err(|e| backend(path, e))?;
        let Some(saga) = keys::saga_of_tail(&k) else {
            continue;
        };
        let stored = tree
            .get(keys::index(keys::ENTRY, saga))
            .map_err(|e| backend(path, e))?;
        let hit = stored
            .and_then(|v| SagaIndexEntry::decode(&v).ok())
            .is_some_and(|e| states.contains(&e.state));
        if hit {
            out.push(saga);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
