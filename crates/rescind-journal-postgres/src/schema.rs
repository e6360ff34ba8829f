//! The schema, as embedded migrations applied at start.
//!
//! `rescind_meta` holds one row with the schema version. Start takes a
//! transaction-scoped advisory lock so that workers starting together apply
//! each migration once; a database whose version is newer than
//! [`SCHEMA_VERSION`] is refused with [`JournalError::NewerFormat`] before
//! anything is written.

use crate::error::{pg_detail, PgError};
use rescind_core::JournalError;
use tokio_postgres::Client;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i32 = 4;

/// Migration `n` (1-based) brings the schema from version `n - 1` to `n`.
const MIGRATIONS: &[&str] = &[
    // 1: sagas with their lease and fencing token; records as rescind-core's encoded bytes.
    r#"
    CREATE TABLE sagas (
        saga_id          uuid        PRIMARY KEY,
        -- the worker holding the lease; NULL = free
        worker_id        text        NULL,
        lease_expires_at timestamptz NULL,
        -- the fencing token: bumped by every claim; every write must carry it
        fence            bigint      NOT NULL DEFAULT 0,
        -- the sequence the next record must have (records 0..next_seq exist)
        next_seq         bigint      NOT NULL DEFAULT 0,
        finished         boolean     NOT NULL DEFAULT false,
        started_at       timestamptz NOT NULL DEFAULT now(),
        finished_at      timestamptz NULL
    );
    -- claims scan unfinished sagas in id order
    CREATE INDEX sagas_unfinished ON sagas (saga_id) WHERE NOT finished;
    CREATE TABLE records (
        saga_id uuid   NOT NULL,
        seq     bigint NOT NULL,
        body    bytea  NOT NULL,
        PRIMARY KEY (saga_id, seq)
    );
    "#,
    // 2: the worker registry: live workers share TOP flow control (each takes
    // 1/live of an app key's rate). A worker is live while its heartbeat,
    // renewed with its leases, has not expired.
    r#"
    CREATE TABLE workers (
        worker_id            text        PRIMARY KEY,
        heartbeat_expires_at timestamptz NOT NULL,
        started_at           timestamptz NOT NULL DEFAULT now()
    );
    "#,
    // 3: the saga index (rescind-core's SagaIndexEntry), kept by every append
    // in the statement that writes the record. Rows of earlier versions have
    // `kind` NULL until the journal that migrated fills them from their
    // records (`sagas_unindexed` finds them without a scan).
    r#"
    ALTER TABLE sagas
        ADD COLUMN order_channel text   NULL,
        ADD COLUMN order_id      text   NULL,
        ADD COLUMN account       text   NULL,
        ADD COLUMN kind          text   NULL,
        ADD COLUMN state         text   NULL,
        ADD COLUMN updated_at_ms bigint NULL;
    CREATE INDEX sagas_by_order   ON sagas (order_channel, order_id, saga_id);
    CREATE INDEX sagas_by_account ON sagas (account, saga_id);
    CREATE INDEX sagas_by_state   ON sagas (state, saga_id);
    CREATE INDEX sagas_by_kind    ON sagas (kind, saga_id);
    CREATE INDEX sagas_by_channel ON sagas (order_channel, saga_id);
    CREATE INDEX sagas_by_updated ON sagas (updated_at_ms, saga_id);
    CREATE INDEX sagas_unindexed  ON sagas (saga_id) WHERE kind IS NULL;
    "#,
    // 4: TOP app-key bans shared by the workers: a worker that meets a ban
    // (code 4–8) publishes its end; the others pause the app key until then
    // (times on the database's clock, so workers' clocks need not agree).
    r#"
    CREATE TABLE app_key_bans (
        gateway      text        NOT NULL,
        app_key      text        NOT NULL,
        banned_until timestamptz NOT NULL,
        PRIMARY KEY (gateway, app_key)
    );
    "#,
];

/// Apply missing migrations; refuse a newer schema.
pub(crate) async fn migrate(
    client: &mut Client,
    target: &str,
    schema: Option<&str>,
) -> Result<i32, PgError> {
    let db = |context: &str, e: tokio_postgres::Error| PgError::Database {
        target: target.to_owned(),
        context: context.to_owned(),
        detail: pg_detail(&e),
    };
    if let Some(s) = schema {
        // `s` was validated as [A-Za-z_][A-Za-z0-9_]* (PgConfig::validate).
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{s}\"");
        if let Err(e) = client.batch_execute(&sql).await {
            // Two workers creating the schema at once: one loses a unique
            // race on pg_namespace; the schema exists either way.
            if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Err(db("creating the schema", e));
            }
        }
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| db("starting the migration", e))?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('rescind_journal_migrate:' || current_schema()))",
    )
    .await
    .map_err(|e| db("taking the migration lock", e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rescind_meta (
            id int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
            schema_version int NOT NULL
         );
         INSERT INTO rescind_meta (id, schema_version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;",
    )
    .await
    .map_err(|e| db("creating rescind_meta", e))?;
    let row = tx
        .query_one(
            "SELECT schema_version FROM rescind_meta WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(|e| db("reading the schema version", e))?;
    let found: i32 = row
        .try_get(0)
        .map_err(|e| db("reading the schema version", e))?;
    if found > SCHEMA_VERSION {
        return Err(PgError::Journal(JournalError::NewerFormat {
            found: found.max(0) as u32,
            supported: SCHEMA_VERSION as u32,
        }));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(|e| db(&format!("applying migration {version}"), e))?;
        tx.execute(
            "UPDATE rescind_meta SET schema_version = $1 WHERE id = 1",
            &[&version],
        )
        .await
        .map_err(|e| db(&format!("recording migration {version}"), e))?;
        tracing::info!(target_db = %target, version, "journal schema migrated");
    }
    tx.commit()
        .await
        .map_err(|e| db("committing the migration", e))?;
    Ok(SCHEMA_VERSION)
}
