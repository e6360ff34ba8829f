//! Bad input at start: each fails `connect` with an error that says what and
//! where, never the password.

mod common;

use rescind_core::JournalError;
use rescind_journal_postgres::{PgConfig, PgError, PgJournal, SCHEMA_VERSION};

#[tokio::test]
async fn unreachable_database_names_host_and_port() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!("postgres://rescind:hunter2@127.0.0.1:{port}/rescind");
    let cfg = PgConfig {
        connect_timeout_ms: 2_000,
        ..PgConfig::default()
    };
    match PgJournal::connect(&url, cfg).await {
        Err(e @ PgError::Unreachable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
            assert!(msg.contains("unreachable"), "{msg}");
            assert!(
                !msg.contains("hunter2") && !format!("{e:?}").contains("hunter2"),
                "{msg}"
            );
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_url_is_refused_with_the_password_redacted() {
    match PgJournal::connect(
        "postgres://rescind:hunter2@127.0.0.1:notaport/db",
        PgConfig::default(),
    )
    .await
    {
        Err(e @ PgError::InvalidUrl { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("rescind:***@127.0.0.1"), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        other => panic!("expected InvalidUrl, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_config_is_refused_before_connecting() {
    let cfg = PgConfig {
        lease_renew_interval_ms: 40_000,
        ..PgConfig::default()
    };
    match PgJournal::connect("postgres://u:p@127.0.0.1:1/db", cfg).await {
        Err(PgError::InvalidConfig(msg)) => {
            assert!(msg.contains("lease_renew_interval_ms"), "{msg}")
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_password_is_an_auth_error() {
    let Some(url) = common::pg_url() else { return };
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .unwrap_or_else(|e| panic!("RESCIND_PG_URL: {e}"));
    cfg.password("definitely-wrong-pw");
    let bad = format!(
        "host=127.0.0.1 port={} user={} password=definitely-wrong-pw dbname={}",
        cfg.get_ports().first().copied().unwrap_or(5432),
        cfg.get_user().unwrap_or("rescind"),
        cfg.get_dbname().unwrap_or("rescind"),
    );
    match PgJournal::connect(&bad, PgConfig::default()).await {
        Err(e @ PgError::Auth { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("refused the login") && msg.contains("password"),
                "{msg}"
            );
            assert!(!msg.contains("definitely-wrong-pw"), "{msg}");
            assert!(!format!("{e:?}").contains("definitely-wrong-pw"));
        }
        other => panic!("expected Auth, got {other:?}"),
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_left_untouched() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("newer");
    drop(common::open(&url, common::cfg(&schema, "w")).await);
    let c = common::raw(&url, &schema).await;
    c.batch_execute(
        "UPDATE rescind_meta SET schema_version = 999; CREATE TABLE from_the_future (x int)",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    match PgJournal::connect(&url, common::cfg(&schema, "w")).await {
        Err(e @ PgError::Journal(JournalError::NewerFormat { .. })) => {
            let PgError::Journal(JournalError::NewerFormat { found, supported }) = &e else {
                unreachable!()
            };
            assert_eq!((*found, *supported), (999, SCHEMA_VERSION as u32));
            assert!(e.to_string().contains("upgrade rescind"), "{e}");
            // And as the journal error it converts to:
            assert!(matches!(
                JournalError::from(e),
                JournalError::NewerFormat { found: 999, .. }
            ));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    let v: i32 = c
        .query_one("SELECT schema_version FROM rescind_meta", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(v, 999, "a refused start must not touch the schema version");
    common::drop_schema(&url, &schema).await;
}

#[tokio::test]
async fn migrations_apply_once_when_workers_start_together() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("mig");
    let mut starts = Vec::new();
    for w in 0..4 {
        let (url, cfg) = (url.clone(), common::cfg(&schema, &format!("w{w}")));
        starts.push(tokio::spawn(async move {
            PgJournal::connect(&url, cfg).await.map(drop)
        }));
    }
    for s in starts {
        s.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("concurrent start: {e}"));
    }
    let c = common::raw(&url, &schema).await;
    let v: i32 = c
        .query_one("SELECT schema_version FROM rescind_meta", &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .get(0);
    assert_eq!(v, SCHEMA_VERSION);
    common::drop_schema(&url, &schema).await;
}
