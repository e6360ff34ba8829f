//! The saga index on PostgreSQL: columns of `sagas` (schema version 3) that
//! hold each saga's [`SagaIndexEntry`], kept by the append statement, read
//! by [`run_query`], and filled from the records for rows an earlier schema
//! wrote ([`backfill`]).

use crate::error::{backend, pg_detail, PgError};
use rescind_core::record::decode;
use rescind_core::{
    Entry, IndexChange, JournalError, SagaCounts, SagaId, SagaIndexEntry, SagaPage, SagaQuery,
    SagaSet, SagaStatus,
};
use std::collections::BTreeMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Rows filled per transaction by [`backfill`].
const BACKFILL_SAGAS_PER_TX: i64 = 500;

/// The columns one append sets, from the record's [`IndexChange`]:
/// `(channel, order_id, account, kind, state, at_ms)`; the first four only
/// for `started`.
pub(crate) type IndexCols = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<&'static str>,
    i64,
);

/// The columns `change` sets.
pub(crate) fn columns(change: &IndexChange) -> IndexCols {
    match change {
        IndexChange::Start(e) => (
            Some(e.channel.clone()),
            Some(e.order_id.clone()),
            e.account.clone(),
            Some(e.kind.clone()),
            Some(e.state.as_str()),
            e.updated_at_ms.min(i64::MAX as u64) as i64,
        ),
        IndexChange::Update { state, at_ms } => (
            None,
            None,
            None,
            None,
            state.map(|s| s.as_str()),
            (*at_ms).min(i64::MAX as u64) as i64,
        ),
    }
}

/// Fill the index columns of rows that have none (`kind IS NULL`: written
/// before schema version 3) from their records, a batch of rows per
/// transaction, each row locked so an append to it waits. A saga whose
/// records do not read or start with `started` gets `kind = ''` and no
/// state: listed without filters, matched by none. Returns the rows filled.
pub(crate) async fn backfill(client: &mut Client, target: &str) -> Result<u64, PgError> {
    let db = |context: &str, e: tokio_postgres::Error| PgError::Database {
        target: target.to_owned(),
        context: context.to_owned(),
        detail: pg_detail(&e),
    };
    let mut filled = 0u64;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(|e| db("starting the index backfill", e))?;
        let rows = tx
            .query(
                "SELECT saga_id FROM sagas WHERE kind IS NULL ORDER BY saga_id LIMIT $1 FOR UPDATE",
                &[&BACKFILL_SAGAS_PER_TX],
            )
            .await
            .map_err(|e| db("finding sagas to index", e))?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let ids: Vec<uuid::Uuid> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| db("finding sagas to index", e))?;
        let recs = tx
            .query(
                "SELECT saga_id, seq, body FROM records WHERE saga_id = ANY($1) ORDER BY saga_id, seq",
                &[&ids],
            )
            .await
            .map_err(|e| db("reading records to index", e))?;
        let mut entries: BTreeMap<uuid::Uuid, Option<SagaIndexEntry>> =
            ids.iter().map(|id| (*id, None)).collect();
        let mut broken: Vec<uuid::Uuid> = Vec::new();
        for r in &recs {
            let (id, seq, body): (uuid::Uuid, i64, &[u8]) = (
                r.try_get(0)
                    .map_err(|e| db("reading records to index", e))?,
                r.try_get(1)
                    .map_err(|e| db("reading records to index", e))?,
                r.try_get(2)
                    .map_err(|e| db("reading records to index", e))?,
            );
            if broken.contains(&id) {
                continue;
            }
            match decode(SagaId(id), seq.max(0) as u64, body) {
                Ok(e) => {
                    let slot = entries.entry(id).or_default();
                    *slot = SagaIndexEntry::next(slot.as_ref(), &e);
                }
                Err(why) => {
                    tracing::warn!(target_db = %target, saga = %id, error = %why, "not indexing a saga with an unreadable record");
                    broken.push(id);
                    entries.insert(id, None);
                }
            }
        }
        let mut c: Vec<Option<String>> = Vec::new();
        let mut o: Vec<Option<String>> = Vec::new();
        let mut a: Vec<Option<String>> = Vec::new();
        let mut k: Vec<String> = Vec::new();
        let mut st: Vec<Option<&'static str>> = Vec::new();
        let mut at: Vec<Option<i64>> = Vec::new();
        let ids: Vec<uuid::Uuid> = entries.keys().copied().collect();
        for e in entries.values() {
            match e {
                Some(e) => {
                    c.push(Some(e.channel.clone()));
                    o.push(Some(e.order_id.clone()));
                    a.push(e.account.clone());
                    k.push(e.kind.clone());
                    st.push(Some(e.state.as_str()));
                    at.push(Some(e.updated_at_ms.min(i64::MAX as u64) as i64));
                }
                None => {
                    c.push(None);
                    o.push(None);
                    a.push(None);
                    k.push(String::new());
                    st.push(None);
                    at.push(None);
                }
            }
        }
        tx.execute(
            "UPDATE sagas s SET order_channel = i.c, order_id = i.o, account = i.a, kind = i.k,
                                state = i.st, updated_at_ms = i.at
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])
                  AS i(saga_id, c, o, a, k, st, at)
             WHERE s.saga_id = i.saga_id",
            &[&ids, &c, &o, &a, &k, &st, &at],
        )
        .await
        .map_err(|e| db("writing the index", e))?;
        tx.commit()
            .await
            .map_err(|e| db("committing the index backfill", e))?;
        filled += ids.len() as u64;
        tracing::info!(target_db = %target, filled, "saga index backfilled from records");
    }
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// `q`'s filters (and, with `cursor`, its cursor) as `WHERE` terms after
/// `WHERE TRUE`, with their parameters.
fn filters(q: &SagaQuery, cursor: bool) -> (String, Params) {
    let mut sql = String::new();
    let mut params: Params = Vec::new();
    let mut term = |sql: &mut String, col: &str, op: &str, v: Box<dyn ToSql + Sync + Send>| {
        params.push(v);
        sql.push_str(&format!(" AND {col} {op} ${}", params.len()));
    };
    if let Some((c, o)) = &q.order {
        term(&mut sql, "order_channel", "=", Box::new(c.clone()));
        term(&mut sql, "order_id", "=", Box::new(o.clone()));
    }
    if let Some(a) = &q.account {
        term(&mut sql, "account", "=", Box::new(a.clone()));
    }
    if let Some(s) = q.state {
        term(&mut sql, "state", "=", Box::new(s.as_str().to_owned()));
    }
    if let Some(c) = &q.channel {
        term(&mut sql, "order_channel", "=", Box::new(c.clone()));
    }
    if let Some(k) = &q.kind {
        term(&mut sql, "kind", "=", Box::new(k.clone()));
    }
    if let Some(t) = q.since_ms {
        term(
            &mut sql,
            "updated_at_ms",
            ">=",
            Box::new(t.min(i64::MAX as u64) as i64),
        );
    }
    if let Some(set) = q.set {
        term(
            &mut sql,
            "finished",
            "=",
            Box::new(set == SagaSet::Finished),
        );
    }
    if cursor {
        if let Some(c) = q.cursor {
            term(&mut sql, "saga_id", ">", Box::new(c.0 .0));
        }
    }
    (sql, params)
}

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// Answer `q` with one statement: the filters as `WHERE` terms, `saga_id`
/// after the cursor, in `saga_id` order, `limit + 1` rows (the extra one
/// says a next page exists). The indexes of schema version 3 serve each
/// filter in id order.
pub(crate) async fn run_query(client: &Client, q: &SagaQuery) -> Result<SagaPage, JournalError> {
    let limit = q.page_size();
    let (terms, mut params) = filters(q, true);
    let mut sql = format!("SELECT saga_id FROM sagas WHERE TRUE{terms}");
    params.push(Box::new((limit + 1) as i64));
    sql.push_str(&format!(" ORDER BY saga_id LIMIT ${}", params.len()));
    let rows = client
        .query(sql.as_str(), &refs(&params))
        .await
        .map_err(|e| backend("querying sagas", &e))?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<_, uuid::Uuid>(0).map(SagaId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| backend("querying sagas", &e))?;
    Ok(SagaPage::from_gathered(ids, limit))
}

/// `count(*)` of the sagas matching `q`'s filters (not its cursor).
pub(crate) async fn run_count(client: &Client, q: &SagaQuery) -> Result<u64, JournalError> {
    let (terms, params) = filters(q, false);
    let sql = format!("SELECT count(*) FROM sagas WHERE TRUE{terms}");
    let row = client
        .query_one(sql.as_str(), &refs(&params))
        .await
        .map_err(|e| backend("counting sagas", &e))?;
    let n: i64 = row.try_get(0).map_err(|e| backend("counting sagas", &e))?;
    Ok(n.max(0) as u64)
}

/// Above this many rows (as the table's statistics estimate them),
/// [`run_counts`] gives the planner's estimate for the terminal states
/// instead of counting them.
pub const COUNTS_EXACT_ROWS_MAX: f32 = 100_000.0;

/// Sagas by state and channel: running and stuck ones counted exactly
/// (`GROUP BY` over the state index, O(unfinished)); completed, failed
/// and aborted ones counted too while the table is small (under
/// [`COUNTS_EXACT_ROWS_MAX`] rows by `pg_class.reltuples`), else the query
/// planner's row estimate for each (state, channel), from the statistics
/// `ANALYZE` (and autovacuum) keep: O(channels), not O(sagas).
pub(crate) async fn run_counts(client: &Client) -> Result<SagaCounts, JournalError> {
    let err = |e: tokio_postgres::Error| backend("counting sagas by state and channel", &e);
    let rows_est: f32 = client
        .query_opt(
            "SELECT reltuples FROM pg_class WHERE oid = to_regclass('sagas')",
            &[],
        )
        .await
        .map_err(err)?
        .map(|r| r.try_get::<_, f32>(0))
        .transpose()
        .map_err(err)?
        .unwrap_or(-1.0);
    let exact = rows_est < COUNTS_EXACT_ROWS_MAX;
    let counted: Vec<String> = SagaStatus::ALL
        .into_iter()
        .filter(|s| exact || !s.is_terminal())
        .map(|s| s.as_str().to_owned())
        .collect();
    let rows = client
        .query(
            "SELECT state, order_channel, count(*) FROM sagas
             WHERE state = ANY($1) AND order_channel IS NOT NULL GROUP BY 1, 2",
            &[&counted],
        )
        .await
        .map_err(err)?;
    let mut out = SagaCounts {
        terminal_exact: exact,
        ..SagaCounts::default()
    };
    for r in &rows {
        let state: String = r.try_get(0).map_err(err)?;
        let channel: String = r.try_get(1).map_err(err)?;
        let n: i64 = r.try_get(2).map_err(err)?;
        if let Ok(s) = state.parse::<SagaStatus>() {
            out.add(s, &channel, n.max(0) as u64);
        }
    }
    if exact {
        return Ok(out);
    }
    // The channels, by a skip scan of the channel index (one probe each).
    let channels = client
        .query(
            "WITH RECURSIVE ch AS (
                (SELECT order_channel FROM sagas WHERE order_channel IS NOT NULL
                 ORDER BY order_channel LIMIT 1)
                UNION ALL
                SELECT (SELECT s.order_channel FROM sagas s WHERE s.order_channel > ch.order_channel
                        ORDER BY s.order_channel LIMIT 1)
                FROM ch WHERE ch.order_channel IS NOT NULL
             )
             SELECT order_channel FROM ch WHERE order_channel IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?;
    for c in &channels {
        let channel: String = c.try_get(0).map_err(err)?;
        for state in SagaStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            let plan = client
                .query(
                    "EXPLAIN SELECT 1 FROM sagas WHERE state = $1 AND order_channel = $2",
                    &[&state.as_str(), &channel],
                )
                .await
                .map_err(err)?;
            let first: Option<String> = plan
                .first()
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(err)?;
            out.add(state, &channel, first.as_deref().map_or(0, plan_rows));
        }
    }
    Ok(out)
}

/// The `rows=N` of an `EXPLAIN` line (0 if absent). The planner never
/// estimates fewer than one row: an estimate, reported as given.
fn plan_rows(line: &str) -> u64 {
    line.split("rows=")
        .nth(1)
        .map(|t| {
            t.chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// The sagas in `states`, newest update first (ties: higher id first), at
/// most `limit`: the update-time index walked backwards.
pub(crate) async fn run_recent(
    client: &Client,
    states: &[SagaStatus],
    limit: usize,
) -> Result<Vec<SagaId>, JournalError> {
    let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT saga_id FROM sagas WHERE state = ANY($1)
             ORDER BY updated_at_ms DESC, saga_id DESC LIMIT $2",
            &[&words, &limit],
        )
        .await
        .map_err(|e| backend("listing recent sagas", &e))?;
    rows.iter()
        .map(|r| r.try_get::<_, uuid::Uuid>(0).map(SagaId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| backend("listing recent sagas", &e))
}

/// Does `entries` start a saga (seq 0, 1, 2… without gaps, at least one)?
/// Only such sagas are bulk-loaded by [`load_new`].
pub(crate) fn starts_a_saga(entries: &[Entry]) -> bool {
    !entries.is_empty() && entries.iter().enumerate().all(|(i, e)| e.seq == i as u64)
}

/// Bulk-load new sagas in one statement (one transaction): a multi-row
/// `INSERT` of their `sagas` rows (lease, sequence, finished flag and the index columns the
/// append statement would have left: the fold of their records' changes)
/// and one of their records, both from `unnest` arrays. A saga that exists
/// already rolls everything back and is named in the `SequenceConflict`.
/// Unfinished sagas are leased to `worker` under token 1, as their first
/// append would have leased them. Returns the unfinished ones.
pub(crate) async fn load_new(
    client: &Client,
    worker: &str,
    lease_ttl_ms: i64,
    sagas: &[(SagaId, Vec<Entry>, bool)],
) -> Result<Vec<SagaId>, JournalError> {
    let n = sagas.len();
    let mut ids = Vec::with_capacity(n);
    let mut next = Vec::with_capacity(n);
    let mut fin = Vec::with_capacity(n);
    let (mut c, mut o, mut a) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut k, mut st, mut at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut r_id, mut r_seq, mut r_body) = (Vec::new(), Vec::new(), Vec::new());
    for (saga, entries, finish) in sagas {
        ids.push(saga.0);
        next.push(entries.len() as i64);
        fin.push(*finish);
        let e = SagaIndexEntry::from_entries(entries);
        c.push(e.as_ref().map(|e| e.channel.clone()));
        o.push(e.as_ref().map(|e| e.order_id.clone()));
        a.push(e.as_ref().and_then(|e| e.account.clone()));
        k.push(e.as_ref().map_or(String::new(), |e| e.kind.clone()));
        st.push(e.as_ref().map(|e| e.state.as_str()));
        at.push(
            entries
                .last()
                .map_or(0, |l| l.at_ms.min(i64::MAX as u64) as i64),
        );
        for en in entries {
            r_id.push(saga.0);
            r_seq.push(en.seq as i64);
            r_body.push(rescind_core::record::encode(en));
        }
    }
    let err = |e: &tokio_postgres::Error| backend(&format!("bulk load of {n} sagas"), e);
    // One statement, so one transaction on a shared connection: the
    // records' INSERT runs with the sagas' (a data-modifying WITH always runs).
    let done = client
        .execute(
            "WITH s AS (
                INSERT INTO sagas (saga_id, worker_id, lease_expires_at, fence, next_seq, finished,
                                   started_at, finished_at, order_channel, order_id, account, kind,
                                   state, updated_at_ms)
                SELECT i.saga_id,
                       CASE WHEN i.fin THEN NULL ELSE $2 END,
                       CASE WHEN i.fin THEN NULL ELSE now() + $3::int8 * interval '1 millisecond' END,
                       1, i.next, i.fin, now(), CASE WHEN i.fin THEN now() END,
                       i.c, i.o, i.a, i.k, i.st, i.at
                FROM unnest($1::uuid[], $4::int8[], $5::bool[], $6::text[], $7::text[], $8::text[],
                            $9::text[], $10::text[], $11::int8[])
                     AS i(saga_id, next, fin, c, o, a, k, st, at)
                RETURNING saga_id
             )
             INSERT INTO records (saga_id, seq, body)
             SELECT * FROM unnest($12::uuid[], $13::int8[], $14::bytea[])",
            &[
                &ids, &worker, &lease_ttl_ms, &next, &fin, &c, &o, &a, &k, &st, &at, &r_id,
                &r_seq, &r_body,
            ],
        )
        .await;
    match done {
        Ok(_) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
            // Nothing was written. The first saga, in call order, that
            // exists already or comes twice.
            let rows = client
                .query(
                    "SELECT saga_id, next_seq FROM sagas WHERE saga_id = ANY($1)",
                    &[&ids],
                )
                .await
                .map_err(|e| err(&e))?;
            let stored: std::collections::HashMap<uuid::Uuid, i64> = rows
                .iter()
                .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
                .collect();
            let mut seen = std::collections::HashSet::new();
            let culprit = sagas
                .iter()
                .find(|(s, _, _)| stored.contains_key(&s.0) || !seen.insert(s.0))
                .map(|(s, entries, _)| {
                    (
                        *s,
                        stored.get(&s.0).copied().unwrap_or(entries.len() as i64),
                    )
                });
            return Err(match culprit {
                Some((saga, expected)) => JournalError::SequenceConflict {
                    saga,
                    seq: 0,
                    expected: expected.max(0) as u64,
                },
                None => err(&e),
            });
        }
        Err(e) => return Err(err(&e)),
    }
    Ok(sagas
        .iter()
        .filter(|(_, _, finish)| !finish)
        .map(|(s, _, _)| *s)
        .collect())
}
