//! Group commit: appends queued by many sagas are written by one statement
//! (one implicit transaction, one WAL flush), then every waiter is answered.
//!
//! The statement checks each row on its own: a row is written only if its
//! saga is leased to this worker under the fencing token the row carries and
//! the row's sequence is the saga's next one (`sagas.next_seq`). Rows that
//! fail are not written and do not stop the others; the committer then reads
//! their sagas once to tell a fenced write from a sequence conflict.
//!
//! A batch holds at most one append per saga (a second one waits for the next
//! batch), so every check in the statement sees its saga as it was before the
//! batch, and two racing appends of one sequence land in different batches.

use crate::error::backend;
use crate::Shared;
use rescind_core::{JournalError, SagaId};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};

/// Fence value sent when this worker holds no token for the saga: matches no row.
pub(crate) const NO_TOKEN: i64 = -1;

pub(crate) struct AppendReq {
    pub(crate) saga: SagaId,
    pub(crate) seq: i64,
    /// The token this worker holds, if any.
    pub(crate) fence: Option<i64>,
    pub(crate) body: Vec<u8>,
    /// What the record changes in the saga's index columns.
    pub(crate) change: rescind_core::IndexChange,
    pub(crate) reply: oneshot::Sender<Result<(), JournalError>>,
}

/// One statement for the whole batch. `$1..$4` are the rows (saga, seq, body,
/// fence), `$5` this worker, `$6` the lease ttl in ms, `$7..$12` the index
/// columns each record sets (rescind-core's `IndexChange`: order channel,
/// order id, account and kind only at seq 0; the state when the record
/// changes it; its time). An ended saga keeps its end state, as
/// `IndexChange::apply` says.
const APPEND_SQL: &str = r#"
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[], $4::int8[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::int8[])
           AS t(saga_id, seq, body, fence, ix_channel, ix_order, ix_account, ix_kind, ix_state, ix_at)
),
created AS (
    -- seq 0 creates the saga, leased to this worker with token 1
    INSERT INTO sagas (saga_id, worker_id, lease_expires_at, fence, next_seq, finished, started_at,
                       order_channel, order_id, account, kind, state, updated_at_ms)
    SELECT saga_id, $5, now() + $6::int8 * interval '1 millisecond', 1, 1, false, now(),
           ix_channel, ix_order, ix_account, coalesce(ix_kind, ''),
           CASE WHEN ix_kind IS NULL THEN NULL ELSE ix_state END, ix_at
    FROM input WHERE seq = 0
    ON CONFLICT (saga_id) DO NOTHING
    RETURNING saga_id, 0::int8 AS seq
),
advanced AS (
    -- later records: only under the current token, only at the next sequence.
    -- The row lock this takes orders the write against a concurrent claim.
    UPDATE sagas s
    SET next_seq = s.next_seq + 1,
        lease_expires_at = now() + $6::int8 * interval '1 millisecond',
        state = CASE WHEN s.kind = '' THEN NULL
                     WHEN s.state IN ('completed', 'failed', 'aborted') THEN s.state
                     ELSE coalesce(i.ix_state, s.state) END,
        updated_at_ms = i.ix_at
    FROM input i
    WHERE i.seq > 0 AND s.saga_id = i.saga_id AND NOT s.finished
      AND s.worker_id = $5 AND s.fence = i.fence AND s.next_seq = i.seq
    RETURNING s.saga_id, i.seq
),
ok AS (
    SELECT saga_id, seq FROM created
    UNION ALL
    SELECT saga_id, seq FROM advanced
)
INSERT INTO records (saga_id, seq, body)
SELECT i.saga_id, i.seq, i.body FROM input i JOIN ok ON ok.saga_id = i.saga_id AND ok.seq = i.seq
RETURNING saga_id, seq
"#;

/// The committer task: runs until every sender is gone and the queue is empty.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<AppendReq>) {
    let max = shared.cfg.batch_records_max;
    let wait = Duration::from_micros(shared.cfg.batch_wait_max_us);
    let mut conn: Option<(Arc<Client>, Statement)> = None;
    let mut deferred: VecDeque<AppendReq> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut in_batch: HashSet<SagaId> = HashSet::from([first.saga]);
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        let mut add =
            |r: AppendReq, batch: &mut Vec<AppendReq>, later: &mut VecDeque<AppendReq>| {
                if batch.len() < max && in_batch.insert(r.saga) {
                    batch.push(r);
                } else {
                    later.push_back(r);
                }
            };
        while let Some(r) = deferred.pop_front() {
            add(r, &mut batch, &mut later);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < max {
            match rx.try_recv() {
                Ok(r) => add(r, &mut batch, &mut later),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if wait.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => add(r, &mut batch, &mut later),
                        _ => break,
                    }
                }
            }
        }
        deferred = later;
        let size = batch.len() as u64;
        let started = std::time::Instant::now();
        write_batch(&shared, &mut conn, batch).await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        shared.groups.observe(size, us);
    }
}

async fn write_batch(
    shared: &Shared,
    conn: &mut Option<(Arc<Client>, Statement)>,
    batch: Vec<AppendReq>,
) {
    let fail_all = |batch: Vec<AppendReq>, e: JournalError| {
        for r in batch {
            let _ = r.reply.send(Err(e.clone()));
        }
    };
    let live = matches!(conn.as_ref(), Some((c, _)) if !c.is_closed());
    if !live {
        *conn = None;
        let client = match shared.pool.connect_one().await {
            Ok(c) => c,
            Err(e) => return fail_all(batch, e.into()),
        };
        match client.prepare(APPEND_SQL).await {
            Ok(stmt) => *conn = Some((client, stmt)),
            Err(e) => return fail_all(batch, backend("preparing the append statement", &e)),
        }
    }
    let Some((client, stmt)) = conn.as_ref() else {
        return fail_all(
            batch,
            JournalError::Backend("no connection for the committer".into()),
        );
    };
    // Rows in saga order, the order lease renewal and release use too, so
    // that statements locking several `sagas` rows tend to take them in one
    // order; a deadlock that still happens is retried below.
    let mut batch = batch;
    batch.sort_by_key(|r| r.saga.0);
    let ids: Vec<uuid::Uuid> = batch.iter().map(|r| r.saga.0).collect();
    let seqs: Vec<i64> = batch.iter().map(|r| r.seq).collect();
    let bodies: Vec<&[u8]> = batch.iter().map(|r| r.body.as_slice()).collect();
    let fences: Vec<i64> = batch.iter().map(|r| r.fence.unwrap_or(NO_TOKEN)).collect();
    let cols: Vec<crate::index::IndexCols> = batch
        .iter()
        .map(|r| crate::index::columns(&r.change))
        .collect();
    let ix_channel: Vec<Option<String>> = cols.iter().map(|c| c.0.clone()).collect();
    let ix_order: Vec<Option<String>> = cols.iter().map(|c| c.1.clone()).collect();
    let ix_account: Vec<Option<String>> = cols.iter().map(|c| c.2.clone()).collect();
    let ix_kind: Vec<Option<String>> = cols.iter().map(|c| c.3.clone()).collect();
    let ix_state: Vec<Option<&str>> = cols.iter().map(|c| c.4).collect();
    let ix_at: Vec<i64> = cols.iter().map(|c| c.5).collect();
    let ttl_ms = shared.cfg.lease_ttl_ms as i64;
    let mut attempt = 0u32;
    let rows = loop {
        let rows = client
            .query(
                stmt,
                &[
                    &ids,
                    &seqs,
                    &bodies,
                    &fences,
                    &shared.cfg.worker_id,
                    &ttl_ms,
                    &ix_channel,
                    &ix_order,
                    &ix_account,
                    &ix_kind,
                    &ix_state,
                    &ix_at,
                ],
            )
            .await;
        match rows {
            // The statement is one transaction: a deadlock or serialization
            // failure rolled all of it back, so it is sent again as it was.
            Err(e) if attempt < TRANSIENT_RETRIES && is_transient(&e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %crate::error::pg_detail(&e),
                    "group commit rolled back by the database; retrying");
                tokio::time::sleep(Duration::from_millis(2 * u64::from(attempt))).await;
            }
            other => break other,
        }
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            if client.is_closed() {
                *conn = None;
            }
            // In doubt if the connection died after the server committed:
            // a retried append then meets a SequenceConflict (see docs).
            return fail_all(
                batch,
                backend(&format!("group commit of {} records", ids.len()), &e),
            );
        }
    };
    let mut written: HashSet<(uuid::Uuid, i64)> = HashSet::with_capacity(rows.len());
    for row in &rows {
        match (row.try_get::<_, uuid::Uuid>(0), row.try_get::<_, i64>(1)) {
            (Ok(s), Ok(q)) => {
                written.insert((s, q));
            }
            _ => {
                return fail_all(
                    batch,
                    JournalError::Backend("group commit: unreadable RETURNING row".into()),
                )
            }
        }
    }
    let (ok, failed): (Vec<AppendReq>, Vec<AppendReq>) = batch
        .into_iter()
        .partition(|r| written.contains(&(r.saga.0, r.seq)));
    for r in ok {
        let _ = r.reply.send(Ok(()));
    }
    if failed.is_empty() {
        return;
    }
    let ids: Vec<uuid::Uuid> = failed.iter().map(|r| r.saga.0).collect();
    let states = match shared.saga_rows(client, &ids).await {
        Ok(s) => s,
        Err(e) => return fail_all(failed, e),
    };
    for r in failed {
        let err = classify_rejected_append(
            &shared.cfg.worker_id,
            r.saga,
            r.seq,
            r.fence,
            states.get(&r.saga),
        );
        let _ = r.reply.send(Err(err));
    }
}

/// How many times a batch rolled back by a deadlock or a serialization
/// failure is sent again before its appends fail.
const TRANSIENT_RETRIES: u32 = 5;

/// A statement the database rolled back as a whole because it lost a lock
/// race (deadlock detected, serialization failure): sending it again is safe.
pub(crate) fn is_transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// A saga's lease and sequence as stored.
#[derive(Clone, Debug)]
pub(crate) struct SagaRow {
    pub(crate) worker_id: Option<String>,
    pub(crate) fence: i64,
    pub(crate) next_seq: i64,
    pub(crate) finished: bool,
}

/// Why the database did not write an append, from the saga's row read after.
///
/// A write under a token that is not the current one is `Fenced` whatever
/// its sequence (the worker must stop, not retry); with the current token,
/// a sequence other than `next_seq` is a `SequenceConflict`.
pub(crate) fn classify_rejected_append(
    me: &str,
    saga: SagaId,
    seq: i64,
    held: Option<i64>,
    row: Option<&SagaRow>,
) -> JournalError {
    let conflict = |expected: i64| JournalError::SequenceConflict {
        saga,
        seq: seq as u64,
        expected: expected.max(0) as u64,
    };
    let Some(row) = row else {
        return conflict(0);
    };
    if seq == 0 {
        return conflict(row.next_seq);
    }
    if row.finished {
        return JournalError::Fenced {
            saga,
            detail: "the saga is finished; it takes no more records".into(),
        };
    }
    let current = row.worker_id.as_deref() == Some(me) && held == Some(row.fence);
    if !current {
        return JournalError::Fenced {
            saga,
            detail: fenced_detail(me, held, row),
        };
    }
    if seq != row.next_seq {
        return conflict(row.next_seq);
    }
    JournalError::Backend(format!(
        "append to saga {saga} seq {seq} was not written though lease and sequence now match (a concurrent change); retry"
    ))
}

pub(crate) fn fenced_detail(me: &str, held: Option<i64>, row: &SagaRow) -> String {
    let mine = match held {
        Some(t) => format!("worker {me} holds stale fencing token {t}"),
        None => format!("worker {me} holds no lease on it"),
    };
    let now = match &row.worker_id {
        Some(w) => format!("the saga is leased to worker {w} with token {}", row.fence),
        None => format!("the saga is not leased (token {})", row.fence),
    };
    format!("{mine}; {now}")
}

pub(crate) type SagaRows = HashMap<SagaId, SagaRow>;
