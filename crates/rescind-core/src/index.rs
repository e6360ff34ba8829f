//! Saga indexes: what a journal keeps per saga so operators' queries ("the
//! stuck sagas", "the sagas of order X") cost one page, not a read of every
//! saga.
//!
//! A saga's [`SagaIndexEntry`] (order, account, kind, channel, state, last
//! update) is derived from its records alone: [`IndexChange::of`] says what
//! one record changes and [`IndexChange::apply`] applies it to the previous
//! entry. Every journal computes the entry here, in one place, and stores it
//! in the same atomic write as the record, so all journals index the same
//! thing. [`SagaQuery`] is the question, [`SagaPage`] the answer, and
//! [`scan_query`] the reference answer (read and fold every saga) that
//! [`Journal::query`](crate::Journal::query) defaults to.

use crate::ids::SagaId;
use crate::journal::{Journal, JournalError, SagaSet};
use crate::record::{Entry, Record, SagaOutcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Page size when a query names none.
pub const QUERY_LIMIT_DEFAULT: usize = 100;
/// The largest page a query may ask for.
pub const QUERY_LIMIT_MAX: usize = 1000;

/// Where a saga stands, as operators filter on it. The same words as the
/// `state` of a saga summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Not finished and not stuck: acting, waiting for a refund, or parked.
    Running,
    /// Not finished; cannot progress without an operator.
    Stuck,
    /// Finished: reached its goal.
    Completed,
    /// Finished: could not reach its goal.
    Failed,
    /// Finished: aborted by an operator.
    Aborted,
}

impl SagaStatus {
    /// Every status, in code order.
    pub const ALL: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Stuck,
        SagaStatus::Completed,
        SagaStatus::Failed,
        SagaStatus::Aborted,
    ];

    /// The status as a word: `running`, `stuck`, `completed`, `failed`, `aborted`.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Stuck => "stuck",
            SagaStatus::Completed => "completed",
            SagaStatus::Failed => "failed",
            SagaStatus::Aborted => "aborted",
        }
    }

    /// A stable one-byte code, for index keys (never reused).
    pub fn code(self) -> u8 {
        match self {
            SagaStatus::Running => 1,
            SagaStatus::Stuck => 2,
            SagaStatus::Completed => 3,
            SagaStatus::Failed => 4,
            SagaStatus::Aborted => 5,
        }
    }

    /// The status of a [`SagaStatus::code`].
    pub fn from_code(code: u8) -> Option<SagaStatus> {
        SagaStatus::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Has the saga ended (completed, failed or aborted)?
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaStatus::Completed | SagaStatus::Failed | SagaStatus::Aborted
        )
    }

    /// The status a saga ends in with this outcome.
    pub fn of_outcome(outcome: &SagaOutcome) -> SagaStatus {
        match outcome {
            SagaOutcome::Completed { .. } => SagaStatus::Completed,
            SagaOutcome::Failed { .. } => SagaStatus::Failed,
            SagaOutcome::Aborted { .. } => SagaStatus::Aborted,
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SagaStatus {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| QueryError::BadParameter {
                parameter: "state",
                detail: format!(
                    "{:?} is not a saga state; one of running, stuck, completed, failed, aborted",
                    s.escape_debug().to_string()
                ),
            })
    }
}

/// What a journal indexes of one saga: derived from its records by
/// [`IndexChange`], stored with every append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaIndexEntry {
    /// The order's channel (also the saga's channel).
    pub channel: String,
    /// The order's id on that channel.
    pub order_id: String,
    /// The account (shop) the saga acts for, if it names one.
    pub account: Option<String>,
    /// The kind it was started as.
    pub kind: String,
    /// Where it stands.
    pub state: SagaStatus,
    /// `at_ms` of its last record (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// Version byte of [`SagaIndexEntry::encode`].
const ENTRY_ENCODING_VERSION: u8 = 1;

impl SagaIndexEntry {
    /// The entry after `entry` is appended to a saga whose entry was `prev`:
    /// `None` when nothing can be indexed (a first record that is not
    /// `started`).
    pub fn next(prev: Option<&SagaIndexEntry>, entry: &Entry) -> Option<SagaIndexEntry> {
        IndexChange::of(entry).apply(prev)
    }

    /// The entry of a whole saga, records in order (`None` if they do not
    /// start with `started`).
    pub fn from_entries(entries: &[Entry]) -> Option<SagaIndexEntry> {
        let mut cur: Option<SagaIndexEntry> = None;
        for e in entries {
            cur = SagaIndexEntry::next(cur.as_ref(), e);
        }
        cur
    }

    /// Does this saga pass every filter of `q` other than the set, the
    /// cursor and the limit?
    pub fn matches(&self, q: &SagaQuery) -> bool {
        q.order
            .as_ref()
            .is_none_or(|(c, o)| *c == self.channel && *o == self.order_id)
            && q.account
                .as_ref()
                .is_none_or(|a| Some(a) == self.account.as_ref())
            && q.state.is_none_or(|s| s == self.state)
            && q.channel.as_ref().is_none_or(|c| *c == self.channel)
            && q.kind.as_ref().is_none_or(|k| *k == self.kind)
            && q.since_ms.is_none_or(|t| self.updated_at_ms >= t)
    }

    /// The stored form: a version byte, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENTRY_ENCODING_VERSION];
        // Strings, options, an enum and an integer: postcard cannot fail on them.
        if let Ok(body) = postcard::to_allocvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Read [`SagaIndexEntry::encode`]'s bytes; the error says what was wrong.
    pub fn decode(bytes: &[u8]) -> Result<SagaIndexEntry, String> {
        match bytes.split_first() {
            None => Err("an empty index entry".into()),
            Some((&ENTRY_ENCODING_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| format!("an undecodable index entry: {e}"))
            }
            Some((v, _)) => Err(format!(
                "index entry version {v}; this build reads {ENTRY_ENCODING_VERSION}"
            )),
        }
    }
}

/// What one record changes in its saga's [`SagaIndexEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexChange {
    /// `started`: the whole entry.
    Start(SagaIndexEntry),
    /// Any later record: the time, and the state when the record moves it.
    Update {
        /// The new state, if the record changes it.
        state: Option<SagaStatus>,
        /// The record's time.
        at_ms: u64,
    },
}

impl IndexChange {
    /// What `entry` changes. Mirrors [`SagaState::apply`](crate::SagaState::apply):
    /// `stuck` makes a saga stuck; an intent, an outcome, an operator's
    /// resolution or resume make it running again; `finished` ends it.
    pub fn of(entry: &Entry) -> IndexChange {
        let state = match &entry.record {
            Record::Started { input, .. } => {
                return IndexChange::Start(SagaIndexEntry {
                    channel: input.order.channel.to_string(),
                    order_id: input.order.order_id.to_string(),
                    account: input.account.as_ref().map(ToString::to_string),
                    kind: input.kind.to_string(),
                    state: SagaStatus::Running,
                    updated_at_ms: entry.at_ms,
                })
            }
            Record::Intent { .. }
            | Record::Outcome { .. }
            | Record::Resolved { .. }
            | Record::Resumed { .. } => Some(SagaStatus::Running),
            Record::Stuck { .. } => Some(SagaStatus::Stuck),
            Record::Finished { outcome } => Some(SagaStatus::of_outcome(outcome)),
            // A deferred step waits (parked) as part of running.
            Record::Observed { .. }
            | Record::Switched { .. }
            | Record::AbortRequested { .. }
            | Record::Deferred { .. } => None,
        };
        IndexChange::Update {
            state,
            at_ms: entry.at_ms,
        }
    }

    /// The entry after this change to `prev`. An ended saga keeps its end
    /// state (a record after `finished` does not fold anyway).
    pub fn apply(&self, prev: Option<&SagaIndexEntry>) -> Option<SagaIndexEntry> {
        match self {
            IndexChange::Start(e) => Some(e.clone()),
            IndexChange::Update { state, at_ms } => {
                let mut e = prev?.clone();
                if let Some(s) = state {
                    if !e.state.is_terminal() {
                        e.state = *s;
                    }
                }
                e.updated_at_ms = *at_ms;
                Some(e)
            }
        }
    }
}

/// Why a query's parameters were refused: names the parameter.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter's value is not usable.
    #[error("bad query parameter {parameter}: {detail}")]
    BadParameter {
        /// The parameter (`order`, `state`, `limit`, `cursor`...).
        parameter: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Where the next page starts: after this saga (pages are in saga id order).
/// Shown and parsed as 32 hex digits; clients treat it as opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub SagaId);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0 .0.simple())
    }
}

impl std::str::FromStr for Cursor {
    type Err = QueryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || QueryError::BadParameter {
            parameter: "cursor",
            detail: format!(
                "{:?} is not a cursor this journal gave out",
                s.escape_debug().to_string()
            ),
        };
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let v = u128::from_str_radix(s, 16).map_err(|_| bad())?;
        Ok(Cursor(SagaId::from_u128(v)))
    }
}

/// A question about sagas: every filter given must hold; the answer is in
/// saga id order, `limit` at a time, after `cursor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SagaQuery {
    /// The order: (channel, order id).
    pub order: Option<(String, String)>,
    /// The account (shop).
    pub account: Option<String>,
    /// The state.
    pub state: Option<SagaStatus>,
    /// The channel.
    pub channel: Option<String>,
    /// The kind the saga was started as.
    pub kind: Option<String>,
    /// Last updated at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// The journal's unfinished or finished set.
    pub set: Option<SagaSet>,
    /// Start after this saga.
    pub cursor: Option<Cursor>,
    /// Page size, 1..=[`QUERY_LIMIT_MAX`] (journals clamp it into that range).
    pub limit: usize,
}

impl Default for SagaQuery {
    fn default() -> Self {
        SagaQuery {
            order: None,
            account: None,
            state: None,
            channel: None,
            kind: None,
            since_ms: None,
            set: None,
            cursor: None,
            limit: QUERY_LIMIT_DEFAULT,
        }
    }
}

impl SagaQuery {
    /// Every saga, first page.
    pub fn all() -> Self {
        SagaQuery::default()
    }

    /// Does the query filter on what the index holds (anything but the set)?
    pub fn has_entry_filter(&self) -> bool {
        self.order.is_some()
            || self.account.is_some()
            || self.state.is_some()
            || self.channel.is_some()
            || self.kind.is_some()
            || self.since_ms.is_some()
    }

    /// The page size, clamped into 1..=[`QUERY_LIMIT_MAX`].
    pub fn page_size(&self) -> usize {
        self.limit.clamp(1, QUERY_LIMIT_MAX)
    }

    /// Parse an `order` parameter, `CHANNEL:ORDER_ID`.
    pub fn parse_order(s: &str) -> Result<(String, String), QueryError> {
        match s.split_once(':') {
            Some((c, o)) if !c.is_empty() && !o.is_empty() => Ok((c.to_owned(), o.to_owned())),
            _ => Err(QueryError::BadParameter {
                parameter: "order",
                detail: format!("{:?} is not CHANNEL:ORDER_ID", s.escape_debug().to_string()),
            }),
        }
    }

    /// Parse a `limit` parameter: 1..=[`QUERY_LIMIT_MAX`].
    pub fn parse_limit(s: &str) -> Result<usize, QueryError> {
        match s.parse::<usize>() {
            Ok(n) if (1..=QUERY_LIMIT_MAX).contains(&n) => Ok(n),
            _ => Err(QueryError::BadParameter {
                parameter: "limit",
                detail: format!(
                    "{:?} is not a page size from 1 to {QUERY_LIMIT_MAX}",
                    s.escape_debug().to_string()
                ),
            }),
        }
    }

    /// Parse a `since` parameter: ms since the Unix epoch.
    pub fn parse_since(s: &str) -> Result<u64, QueryError> {
        s.parse::<u64>().map_err(|_| QueryError::BadParameter {
            parameter: "since",
            detail: format!(
                "{:?} is not a time in ms since the Unix epoch",
                s.escape_debug().to_string()
            ),
        })
    }

    /// Parse a `set` parameter: `unfinished`, `finished` or `all` (no filter).
    pub fn parse_set(s: &str) -> Result<Option<SagaSet>, QueryError> {
        match s {
            "all" => Ok(None),
            "unfinished" => Ok(Some(SagaSet::Unfinished)),
            "finished" => Ok(Some(SagaSet::Finished)),
            other => Err(QueryError::BadParameter {
                parameter: "set",
                detail: format!(
                    "set must be unfinished, finished or all, not {:?}",
                    other.escape_debug().to_string()
                ),
            }),
        }
    }
}

/// One page of a query's answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SagaPage {
    /// The sagas, in id order.
    pub ids: Vec<SagaId>,
    /// Where the next page starts; `None` on the last page.
    pub next_cursor: Option<Cursor>,
}

impl SagaPage {
    /// The page of `limit` from ids already in order and filtered, of which
    /// at most `limit + 1` were gathered (the extra one only tells that more
    /// exist).
    pub fn from_gathered(mut ids: Vec<SagaId>, limit: usize) -> SagaPage {
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next_cursor = if more {
            ids.last().copied().map(Cursor)
        } else {
            None
        };
        SagaPage { ids, next_cursor }
    }
}

/// Sagas read per trip by [`scan_query`].
const SCAN_CHUNK: usize = 256;

/// Answer `q` by reading and folding sagas in id order (what a journal
/// without indexes does, and the reference the conformance suite holds
/// indexed journals to). A saga that cannot be read is in the answer only
/// when `q` has no filter on what the index holds, so a listing still shows
/// it (as unreadable).
pub async fn scan_query<J: Journal + ?Sized>(
    journal: &J,
    q: &SagaQuery,
) -> Result<SagaPage, JournalError> {
    let limit = q.page_size();
    let mut ids = match q.set {
        Some(set) => journal.list(set).await?,
        None => {
            let mut all = journal.list(SagaSet::Unfinished).await?;
            all.extend(journal.list(SagaSet::Finished).await?);
            all.sort();
            all.dedup();
            all
        }
    };
    if let Some(Cursor(after)) = q.cursor {
        ids.retain(|id| *id > after);
    }
    let mut out = Vec::with_capacity(limit + 1);
    for chunk in ids.chunks(SCAN_CHUNK) {
        let read = journal.read_many(chunk).await;
        for (id, r) in chunk.iter().zip(read) {
            let keep = match r {
                Ok(entries) => match SagaIndexEntry::from_entries(&entries) {
                    Some(e) => e.matches(q),
                    None => !q.has_entry_filter(),
                },
                Err(_) => !q.has_entry_filter(),
            };
            if keep {
                out.push(*id);
                if out.len() > limit {
                    return Ok(SagaPage::from_gathered(out, limit));
                }
            }
        }
    }
    Ok(SagaPage::from_gathered(out, limit))
}

/// Sagas by state and channel, from [`Journal::counts`](crate::Journal::counts):
/// what an overview shows without reading every saga.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaCounts {
    /// `(state, channel)` → sagas in that state on that channel. Sagas
    /// without an index entry (a first record that is not `started`) are
    /// not counted.
    pub by_state_channel: BTreeMap<(SagaStatus, String), u64>,
    /// Are the counts of the terminal states (completed, failed, aborted)
    /// exact? Counts of running and stuck sagas always are; a journal that
    /// cannot count its finished sagas in time proportional to the answer
    /// (PostgreSQL) gives its query planner's estimate for the terminal
    /// states and says so here.
    pub terminal_exact: bool,
}

impl SagaCounts {
    /// Add `n` sagas in `state` on `channel`.
    pub fn add(&mut self, state: SagaStatus, channel: &str, n: u64) {
        if n > 0 {
            *self
                .by_state_channel
                .entry((state, channel.to_owned()))
                .or_default() += n;
        }
    }

    /// Sagas in `state`, all channels.
    pub fn in_state(&self, state: SagaStatus) -> u64 {
        self.by_state_channel
            .iter()
            .filter(|((s, _), _)| *s == state)
            .map(|(_, n)| n)
            .sum()
    }
}

/// The index entries of every saga that has one, by reading and folding
/// them all (256 per [`Journal::read_many`]): the reference for
/// [`Journal::counts`](crate::Journal::counts) and
/// [`Journal::recent`](crate::Journal::recent), and their default.
async fn scan_entries<J: Journal + ?Sized>(
    journal: &J,
) -> Result<Vec<(SagaId, SagaIndexEntry)>, JournalError> {
    let mut ids = journal.list(SagaSet::Unfinished).await?;
    ids.extend(journal.list(SagaSet::Finished).await?);
    ids.sort();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(SCAN_CHUNK) {
        for (id, r) in chunk.iter().zip(journal.read_many(chunk).await) {
            if let Some(e) = r.ok().and_then(|es| SagaIndexEntry::from_entries(&es)) {
                out.push((*id, e));
            }
        }
    }
    Ok(out)
}

/// [`SagaCounts`] by reading and folding every saga (exact).
pub async fn scan_counts<J: Journal + ?Sized>(journal: &J) -> Result<SagaCounts, JournalError> {
    let mut c = SagaCounts {
        terminal_exact: true,
        ..SagaCounts::default()
    };
    for (_, e) in scan_entries(journal).await? {
        c.add(e.state, &e.channel, 1);
    }
    Ok(c)
}

/// The sagas in any of `states`, newest update first (ties: higher id
/// first), at most `limit`, by reading and folding every saga.
pub async fn scan_recent<J: Journal + ?Sized>(
    journal: &J,
    states: &[SagaStatus],
    limit: usize,
) -> Result<Vec<SagaId>, JournalError> {
    let mut hits: Vec<(u64, SagaId)> = scan_entries(journal)
        .await?
        .into_iter()
        .filter(|(_, e)| states.contains(&e.state))
        .map(|(id, e)| (e.updated_at_ms, id))
        .collect();
    hits.sort_by(|a, b| b.cmp(a));
    Ok(hits.into_iter().take(limit).map(|(_, id)| id).collect())
}

/// [`Journal::count`](crate::Journal::count)'s default: page through
/// [`Journal::query`] ([`QUERY_LIMIT_MAX`] a page) and count.
pub async fn count_by_paging<J: Journal + ?Sized>(
    journal: &J,
    q: &SagaQuery,
) -> Result<u64, JournalError> {
    let mut q = q.clone();
    q.cursor = None;
    q.limit = QUERY_LIMIT_MAX;
    let mut n = 0u64;
    loop {
        let page = journal.query(&q).await?;
        n += page.ids.len() as u64;
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => return Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::OrderRef;
    use crate::record::SagaInput;
    use crate::OrderState;

    fn e(seq: u64, record: Record) -> Entry {
        Entry {
            seq,
            at_ms: 1000 + seq,
            record,
        }
    }

    #[test]
    fn entry_follows_the_fold_through_stuck_resume_and_finish() {
        let input = SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", "42")).with_account("shop");
        let mut cur = SagaIndexEntry::next(None, &e(0, Record::Started { input, by: None }));
        let first = cur.clone().expect("started indexes");
        assert_eq!(first.state, SagaStatus::Running);
        assert_eq!(
            (first.channel.as_str(), first.order_id.as_str()),
            ("tmall-tbc", "42")
        );
        assert_eq!(first.account.as_deref(), Some("shop"));
        assert_eq!(first.kind, "cancel_unpaid");
        cur = SagaIndexEntry::next(cur.as_ref(), &e(1, Record::Stuck { reason: "x".into() }));
        assert_eq!(cur.as_ref().map(|c| c.state), Some(SagaStatus::Stuck));
        cur = SagaIndexEntry::next(
            cur.as_ref(),
            &e(
                2,
                Record::Switched {
                    to: "cancel_paid".into(),
                    reason: "paid".into(),
                },
            ),
        );
        assert_eq!(cur.as_ref().map(|c| c.state), Some(SagaStatus::Stuck));
        assert_eq!(cur.as_ref().map(|c| c.updated_at_ms), Some(1002));
        cur = SagaIndexEntry::next(cur.as_ref(), &e(3, Record::Resumed { by: "op".into() }));
        assert_eq!(cur.as_ref().map(|c| c.state), Some(SagaStatus::Running));
        cur = SagaIndexEntry::next(
            cur.as_ref(),
            &e(
                4,
                Record::Finished {
                    outcome: SagaOutcome::Completed {
                        order: OrderState::Cancelled,
                        note: None,
                    },
                },
            ),
        );
        assert_eq!(cur.as_ref().map(|c| c.state), Some(SagaStatus::Completed));
        cur = SagaIndexEntry::next(cur.as_ref(), &e(5, Record::Stuck { reason: "x".into() }));
        assert_eq!(cur.as_ref().map(|c| c.state), Some(SagaStatus::Completed));
        let c = cur.expect("entry");
        assert_eq!(SagaIndexEntry::decode(&c.encode()), Ok(c.clone()));
        assert!(SagaIndexEntry::decode(&[9, 1, 2]).is_err());
        assert!(SagaIndexEntry::decode(&[]).is_err());
    }

    #[test]
    fn a_first_record_that_is_not_started_indexes_nothing() {
        assert_eq!(
            SagaIndexEntry::next(None, &e(0, Record::Resumed { by: "x".into() })),
            None
        );
    }

    #[test]
    fn parameters_parse_or_name_themselves() {
        assert_eq!("stuck".parse::<SagaStatus>(), Ok(SagaStatus::Stuck));
        let bad = |r: Result<(), QueryError>, p: &str| match r {
            Err(QueryError::BadParameter { parameter, .. }) => assert_eq!(parameter, p),
            Ok(()) => panic!("{p} accepted"),
        };
        bad("waiting".parse::<SagaStatus>().map(drop), "state");
        bad(SagaQuery::parse_order("tmall-tbc").map(drop), "order");
        bad(SagaQuery::parse_order(":1").map(drop), "order");
        bad(SagaQuery::parse_limit("0").map(drop), "limit");
        bad(SagaQuery::parse_limit("1001").map(drop), "limit");
        bad(SagaQuery::parse_since("-1").map(drop), "since");
        bad(SagaQuery::parse_set("some").map(drop), "set");
        bad("xyz".parse::<Cursor>().map(drop), "cursor");
        assert_eq!(
            SagaQuery::parse_order("pandapon-1688:12:34"),
            Ok(("pandapon-1688".into(), "12:34".into()))
        );
        let c = Cursor(SagaId::from_u128(0xabc));
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for s in SagaStatus::ALL {
            assert_eq!(SagaStatus::from_code(s.code()), Some(s));
            assert_eq!(s.as_str().parse::<SagaStatus>(), Ok(s));
        }
    }

    #[test]
    fn a_page_says_whether_more_follow() {
        let ids: Vec<SagaId> = (1..=3).map(SagaId::from_u128).collect();
        let p = SagaPage::from_gathered(ids.clone(), 2);
        assert_eq!(p.ids, ids[..2]);
        assert_eq!(p.next_cursor, Some(Cursor(ids[1])));
        let p = SagaPage::from_gathered(ids.clone(), 3);
        assert_eq!(p.next_cursor, None);
    }
}
