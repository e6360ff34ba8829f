//! Read-only views of sagas for operators: summaries and timelines, as the
//! CLI's `journal list|show` and the worker's HTTP API print them.

use rescind_core::{
    Entry, Journal, JournalError, QueryError, Record, SagaId, SagaQuery, SagaSet, SagaState,
};
use serde::{Deserialize, Serialize};

/// One saga at a glance.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SagaSummary {
    /// The saga.
    pub id: SagaId,
    /// The kind it was started as.
    pub kind: String,
    /// The plan it follows now.
    pub plan: String,
    /// `channel:order_id`.
    pub order: String,
    /// The channel.
    pub channel: String,
    /// The account (shop) the saga acts for, if it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `running`, `stuck`, `completed`, `failed` or `aborted`.
    pub state: String,
    /// The order state the saga tracks.
    pub order_state: String,
    /// Why it is stuck or failed, or the completion note.
    pub reason: Option<String>,
    /// Steps taken.
    pub steps: usize,
    /// Retries over all steps.
    pub retries: u32,
    /// In-doubt steps a lookup resolved.
    pub resolved_by_lookup: u32,
    /// First record's time (ms since the epoch).
    pub started_at_ms: u64,
    /// Last record's time.
    pub updated_at_ms: u64,
}

impl SagaSummary {
    /// Summarise a folded saga.
    pub fn of(s: &SagaState) -> Self {
        use rescind_core::SagaOutcome as O;
        let (state, reason) = match (&s.outcome, &s.stuck) {
            (Some(O::Completed { note, .. }), _) => ("completed", note.clone()),
            (Some(O::Failed { reason }), _) => ("failed", Some(reason.clone())),
            (
                Some(O::Aborted {
                    reason,
                    compensated,
                }),
                _,
            ) => (
                "aborted",
                Some(format!("{reason} (compensated: {compensated})")),
            ),
            (None, Some(r)) => ("stuck", Some(r.clone())),
            (None, None) => ("running", None),
        };
        SagaSummary {
            id: s.id,
            kind: s.input.kind.to_string(),
            plan: s.plan.to_string(),
            order: s.input.order.to_string(),
            channel: s.input.order.channel.to_string(),
            account: s.input.account.as_ref().map(ToString::to_string),
            state: state.into(),
            order_state: s.order.to_string(),
            reason,
            steps: s.steps.len(),
            retries: s.retries(),
            resolved_by_lookup: s.resolved_by_lookup,
            started_at_ms: s.started_at_ms,
            updated_at_ms: s.updated_at_ms,
        }
    }
}

/// A saga that could not be read or folded, named.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Unreadable {
    /// The saga.
    pub id: SagaId,
    /// The error naming what is wrong.
    pub error: String,
}

/// Read and fold one saga. An unknown saga is
/// `Error::Journal(JournalError::UnknownSaga)`; a journal that does not fold
/// is `Error::Fold` naming the record.
pub async fn load(
    journal: &dyn Journal,
    id: SagaId,
) -> Result<(SagaState, Vec<Entry>), rescind_core::Error> {
    let entries = journal.read(id).await?;
    let state = SagaState::fold(id, &entries)?;
    Ok((state, entries))
}

/// Summaries of every saga in `sets`, plus the ones that could not be read.
pub async fn summaries(
    journal: &dyn Journal,
    sets: &[SagaSet],
) -> Result<(Vec<SagaSummary>, Vec<Unreadable>), JournalError> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for set in sets {
        for id in journal.list(*set).await? {
            match load(journal, id).await {
                Ok((s, _)) => out.push(SagaSummary::of(&s)),
                Err(error) => bad.push(Unreadable {
                    id,
                    error: error.to_string(),
                }),
            }
        }
    }
    Ok((out, bad))
}

/// The parameters of a saga listing as text, as `GET /sagas` and `rescind
/// journal list` take them; every one optional, an empty one is absent.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ListParams {
    /// `CHANNEL:ORDER_ID`.
    pub order: Option<String>,
    /// `running`, `stuck`, `completed`, `failed` or `aborted`.
    pub state: Option<String>,
    /// A channel name.
    pub channel: Option<String>,
    /// The kind a saga was started as.
    pub kind: Option<String>,
    /// An account (shop).
    pub account: Option<String>,
    /// Updated at or after this time (ms since the Unix epoch).
    pub since: Option<String>,
    /// `unfinished`, `finished` or `all`.
    pub set: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000; default 100.
    pub limit: Option<String>,
}

impl ListParams {
    /// The query these parameters ask; a bad value is an error naming its
    /// parameter.
    pub fn to_query(&self) -> Result<SagaQuery, QueryError> {
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| !s.is_empty())
        }
        Ok(SagaQuery {
            order: given(&self.order).map(SagaQuery::parse_order).transpose()?,
            account: given(&self.account).map(str::to_owned),
            state: given(&self.state).map(str::parse).transpose()?,
            channel: given(&self.channel).map(str::to_owned),
            kind: given(&self.kind).map(str::to_owned),
            since_ms: given(&self.since).map(SagaQuery::parse_since).transpose()?,
            set: match given(&self.set) {
                Some(s) => SagaQuery::parse_set(s)?,
                None => None,
            },
            cursor: given(&self.cursor).map(str::parse).transpose()?,
            limit: match given(&self.limit) {
                Some(l) => SagaQuery::parse_limit(l)?,
                None => rescind_core::index::QUERY_LIMIT_DEFAULT,
            },
        })
    }
}

/// One page of a saga listing: summaries in saga id order, the sagas of the
/// page that could not be read, and where the next page starts.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SagaListing {
    /// The sagas of the page that read and fold.
    pub sagas: Vec<SagaSummary>,
    /// The ones that do not, named.
    pub unreadable: Vec<Unreadable>,
    /// The `cursor` of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// One page of the sagas `q` asks for: the journal's query (indexed where
/// the journal keeps indexes), then the page's sagas read and summarised.
pub async fn list_page(journal: &dyn Journal, q: &SagaQuery) -> Result<SagaListing, JournalError> {
    let page = journal.query(q).await?;
    let mut sagas = Vec::with_capacity(page.ids.len());
    let mut unreadable = Vec::new();
    for (id, read) in page.ids.iter().zip(journal.read_many(&page.ids).await) {
        let folded = read
            .map_err(rescind_core::Error::from)
            .and_then(|entries| SagaState::fold(*id, &entries).map_err(rescind_core::Error::from));
        match folded {
            Ok(s) => sagas.push(SagaSummary::of(&s)),
            Err(error) => unreadable.push(Unreadable {
                id: *id,
                error: error.to_string(),
            }),
        }
    }
    Ok(SagaListing {
        sagas,
        unreadable,
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
}

/// One line of a saga's timeline.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TimelineLine {
    /// Sequence.
    pub seq: u64,
    /// Time (ms since the epoch).
    pub at_ms: u64,
    /// Record type.
    pub record: String,
    /// The record in full.
    pub detail: serde_json::Value,
}

/// A saga's records as a timeline.
pub fn timeline(entries: &[Entry]) -> Vec<TimelineLine> {
    entries
        .iter()
        .map(|e| TimelineLine {
            seq: e.seq,
            at_ms: e.at_ms,
            record: e.record.name().to_owned(),
            detail: serde_json::to_value(&e.record).unwrap_or(serde_json::Value::Null),
        })
        .collect()
}

/// Render one record in a line of text.
pub fn describe(r: &Record) -> String {
    match r {
        Record::Started { input, by } => format!(
            "started {} for {}{} (order {}){}{}{}",
            input.kind,
            input.order,
            input
                .account
                .as_ref()
                .map(|a| format!(" as account {a:?}"))
                .unwrap_or_default(),
            input.order_state,
            input
                .stock_lock
                .as_ref()
                .map(|l| format!(", stock lock {}:{}", l.channel, l.lock_id))
                .unwrap_or_default(),
            input
                .reason
                .as_ref()
                .map(|r| format!(", reason {r:?}"))
                .unwrap_or_default(),
            by.as_ref().map(|b| format!(", by {b}")).unwrap_or_default()
        ),
        Record::Intent { step, action } => format!(
            "intent  step {step}: {}{}",
            action.name(),
            if action.irreversible() {
                " (irreversible)"
            } else {
                ""
            }
        ),
        Record::Resolved {
            step,
            outcome,
            operator,
            reason,
        } => match outcome {
            Some(o) => format!(
                "resolved step {step} by operator {operator}: applied, {} ({reason})",
                serde_json::to_string(o).unwrap_or_default()
            ),
            None => format!(
                "resolved step {step} by operator {operator}: not applied, to be re-issued ({reason})"
            ),
        },
        Record::Outcome {
            step,
            outcome,
            via,
            attempts,
        } => {
            format!(
                "outcome step {step}: {} (via {via:?}, {attempts} attempt(s))",
                serde_json::to_string(outcome).unwrap_or_default()
            )
        }
        Record::Observed { observation, via } => format!(
            "observed via {via:?}: {}",
            serde_json::to_string(observation).unwrap_or_default()
        ),
        Record::Switched { to, reason } => format!("switched to {to}: {reason}"),
        Record::AbortRequested { reason, by } => format!(
            "abort requested{}: {reason}",
            by.as_ref().map(|b| format!(" by {b}")).unwrap_or_default()
        ),
        Record::Resumed { by } => format!("resumed by {by}"),
        Record::Deferred {
            step,
            until_ms,
            reason,
        } => format!(
            "step {step} deferred (not sent; sent again at {until_ms} ms since the epoch): {reason}"
        ),
        Record::Stuck { reason } => format!("stuck: {reason}"),
        Record::Finished { outcome } => format!(
            "finished: {}",
            serde_json::to_string(outcome).unwrap_or_default()
        ),
    }
}
