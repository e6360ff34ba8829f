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

/// The test database URL and the PEM file of the CA that signed its server
/// certificate (`RESCIND_PG_CA`, exported by `.ci/postgres`; the certificate
/// is issued for `localhost` only), or `None` (skip) outside CI. With
/// `CI=true` a missing TLS set-up is a failure, like a missing database.
pub fn pg_tls() -> Option<(String, String)> {
    let url = pg_url()?;
    match std::env::var("RESCIND_PG_CA") {
        Ok(ca) if !ca.trim().is_empty() => Some((url, ca)),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but RESCIND_PG_CA is not set: source .ci/postgres to turn TLS on for the test server");
            }
            eprintln!("note: RESCIND_PG_CA is not set (the server has no test TLS set-up); skipping this PostgreSQL TLS test (source .ci/postgres to run it)");
            None
        }
    }
}

/// A `key=value` connection string for the test database's user, port and
/// database, reached at 127.0.0.1 under the name `host`, with `password`
/// (`None`: the URL's) and `extra` parameters appended.
pub fn kv_url(url: &str, host: &str, password: Option<&str>, extra: &str) -> String {
    let cfg: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("RESCIND_PG_URL: {e}"));
    let q = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    let pw = match password {
        Some(p) => p.to_owned(),
        None => String::from_utf8_lossy(cfg.get_password().unwrap_or_default()).into_owned(),
    };
    format!(
        "host={host} hostaddr=127.0.0.1 port={} user={} password={} dbname={} {extra}",
        cfg.get_ports().first().copied().unwrap_or(5432),
        q(cfg.get_user().unwrap_or("rescind")),
        q(&pw),
        q(cfg.get_dbname().unwrap_or("rescind")),
    )
}

/// Whether the journal connections tagged `application_name` use TLS
/// (`pg_stat_ssl`, seen from a plain connection): `None` if none is open.
pub async fn uses_tls(url: &str, application_name: &str) -> Option<bool> {
    let c = raw(url, "public").await;
    let row = c
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap_or_else(|e| panic!("pg_stat_ssl: {e}"));
    row.get(0)
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
