//! The saga index on PostgreSQL: columns of `sagas` (schema version 3) that
//! hold each saga's [`SagaIndexEntry`], kept by the append statement, read
//! by [`run_query`], and filled from the records for rows an earlier schema
//! wrote ([`backfill`]).

use crate::error::{backend, pg_detail, PgError};
use rescind_core::record::decode;
use rescind_core::{
    IndexChange, JournalError, SagaId, SagaIndexEntry, SagaPage, SagaQuery, SagaSet,
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

/// Answer `q` with one statement: the filters as `WHERE` terms, `saga_id`
/// after the cursor, in `saga_id` order, `limit + 1` rows (the extra one
/// says a next page exists). The indexes of schema version 3 serve each
/// filter in id order.
pub(crate) async fn run_query(client: &Client, q: &SagaQuery) -> Result<SagaPage, JournalError> {
    let limit = q.page_size();
    let mut sql = String::from("SELECT saga_id FROM sagas WHERE TRUE");
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
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
    if let Some(c) = q.cursor {
        term(&mut sql, "saga_id", ">", Box::new(c.0 .0));
    }
    params.push(Box::new((limit + 1) as i64));
    sql.push_str(&format!(" ORDER BY saga_id LIMIT ${}", params.len()));
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(sql.as_str(), &refs)
        .await
        .map_err(|e| backend("querying sagas", &e))?;
    let ids = rows
        .iter()
        .map(|r| r.try_get::<_, uuid::Uuid>(0).map(SagaId))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| backend("querying sagas", &e))?;
    Ok(SagaPage::from_gathered(ids, limit))
}
