//! Shared by the PostgreSQL tests: the database URL, a fresh schema per test,
//! and a raw client for looking behind the journal's back.
//!
//! The database comes from `RESCIND_PG_URL` (`.ci/postgres` starts one and
//! exports it). Unset: the test is skipped with a note, except with
//! `CI=true`, where a missing database is a failure.
#![allow(dead_code)]

use rescind_journal_postgres::{PgConfig, PgJournal};
use std::sync::atomic::{AtomicU32, Ordering};

/// The test database URL, or `None` (skip) outside CI.
pub fn pg_url() -> Option<String> {
    match std::env::var("RESCIND_PG_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but RESCIND_PG_URL is not set: source .ci/postgres to start PostgreSQL");
            }
            eprintln!("note: RESCIND_PG_URL is not set; skipping this PostgreSQL test (source .ci/postgres to run it)");
            None
        }
    }
}

/// A schema name no other test (or test run) uses.
pub fn fresh_schema(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let r = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "t_{tag}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &r[..6]
    )
}

/// Config for worker `worker` on `schema`.
pub fn cfg(schema: &str, worker: &str) -> PgConfig {
    PgConfig {
        schema: Some(schema.to_owned()),
        ..PgConfig::with_worker_id(worker)
    }
}

/// Connect or fail the test with the error.
pub async fn open(url: &str, cfg: PgConfig) -> PgJournal {
    match PgJournal::connect(url, cfg).await {
        Ok(j) => j,
        Err(e) => panic!("connecting the journal: {e}"),
    }
}

/// A plain client with `search_path` set to `schema`.
pub async fn raw(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!("raw connection: {e}"),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!("SET search_path = \"{schema}\""))
        .await
        .unwrap_or_else(|e| panic!("set search_path: {e}"));
    client
}

/// Drop a test's schema (best effort: a failed test leaves it for inspection).
pub async fn drop_schema(url: &str, schema: &str) {
    let c = raw(url, "public").await;
    let _ = c
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}
