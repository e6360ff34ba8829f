//! TLS to the test server (`.ci/postgres` turns it on with a test CA and a
//! certificate issued for `localhost` only, and exports `RESCIND_PG_CA`).
//! Every connection here reaches 127.0.0.1 (`hostaddr`); the `host` is the
//! name the certificate is checked against.

mod common;

use rescind_core::Journal;
use rescind_journal_postgres::{PgConfig, PgError, PgJournal, SslMode};

/// A password nobody has: the refused handshakes fail before it is sent, and
/// no error may show it.
const FAKE_PW: &str = "tls-test-pw-4f1c9";

fn app_name(tag: &str) -> String {
    format!("tls-{tag}-{}", &common::fresh_schema("x")[2..])
}

/// Connect, prove the journal works (probe, claim), and say whether its
/// connections are encrypted.
async fn open_and_check(url: &str, conn: &str, app: &str, cfg: PgConfig) -> bool {
    let schema = cfg.schema.clone().unwrap_or_default();
    let j = common::open(conn, cfg).await;
    j.probe()
        .await
        .unwrap_or_else(|e| panic!("probe over {}: {e}", j.ssl_mode()));
    let claimed = j
        .claim_unfinished()
        .await
        .unwrap_or_else(|e| panic!("claim: {e}"));
    assert!(claimed.is_empty());
    let tls = common::uses_tls(url, app)
        .await
        .unwrap_or_else(|| panic!("no open journal connection named {app}"));
    drop(j);
    common::drop_schema(url, &schema).await;
    tls
}

#[tokio::test]
async fn verify_full_with_the_ca_connects_over_tls() {
    let Some((url, ca)) = common::pg_tls() else {
        return;
    };
    // The CA from the URL (sslrootcert) ...
    let app = app_name("vf");
    let conn = common::kv_url(
        &url,
        "localhost",
        None,
        &format!("sslmode=verify-full sslrootcert='{ca}' application_name={app}"),
    );
    let cfg = common::cfg(&common::fresh_schema("tls_vf"), "w");
    assert!(
        open_and_check(&url, &conn, &app, cfg).await,
        "verify-full connected without TLS"
    );
    // ... or from the config (ca_file), with the URL form.
    let app = app_name("vf2");
    let pg: tokio_postgres::Config = url.parse().unwrap_or_else(|e| panic!("{e}"));
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let pw = String::from_utf8_lossy(pg.get_password().unwrap_or_default()).into_owned();
    assert!(
        pw.chars().all(|c| c.is_ascii_alphanumeric()),
        "this test writes the password into a URL unencoded"
    );
    let user = pg.get_user().unwrap_or("rescind");
    let db = pg.get_dbname().unwrap_or("rescind");
    let conn = format!(
        "postgres://{user}:{pw}@localhost:{port}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&application_name={app}"
    );
    let cfg = PgConfig {
        ca_file: Some(ca.into()),
        ..common::cfg(&common::fresh_schema("tls_vf2"), "w")
    };
    assert!(open_and_check(&url, &conn, &app, cfg).await);
}

#[tokio::test]
async fn require_encrypts_without_checking_the_certificate() {
    let Some((url, _ca)) = common::pg_tls() else {
        return;
    };
    // 127.0.0.1 is not in the certificate, and no CA is given: require
    // (libpq's meaning) encrypts and accepts it anyway.
    let app = app_name("req");
    let conn = common::kv_url(
        &url,
        "127.0.0.1",
        None,
        &format!("sslmode=require application_name={app}"),
    );
    let cfg = common::cfg(&common::fresh_schema("tls_req"), "w");
    assert!(open_and_check(&url, &conn, &app, cfg).await);
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let Some((url, ca)) = common::pg_tls() else {
        return;
    };
    let app = app_name("vca");
    let conn = common::kv_url(
        &url,
        "127.0.0.1",
        None,
        &format!("sslmode=verify-ca sslrootcert='{ca}' application_name={app}"),
    );
    let cfg = common::cfg(&common::fresh_schema("tls_vca"), "w");
    assert!(open_and_check(&url, &conn, &app, cfg).await);
}

#[tokio::test]
async fn prefer_uses_tls_when_offered_and_disable_never_does() {
    let Some((url, _ca)) = common::pg_tls() else {
        return;
    };
    for (extra, want_tls) in [
        ("", true),
        ("sslmode=prefer", true),
        ("sslmode=disable", false),
    ] {
        let app = app_name("pref");
        let conn = common::kv_url(
            &url,
            "127.0.0.1",
            None,
            &format!("{extra} application_name={app}"),
        );
        let cfg = common::cfg(&common::fresh_schema("tls_pref"), "w");
        assert_eq!(
            open_and_check(&url, &conn, &app, cfg).await,
            want_tls,
            "{extra:?}"
        );
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_for_another_host_name() {
    let Some((url, ca)) = common::pg_tls() else {
        return;
    };
    // The certificate names `localhost` only; connect as 127.0.0.1.
    let conn = common::kv_url(
        &url,
        "127.0.0.1",
        Some(FAKE_PW),
        &format!("sslmode=verify-full sslrootcert='{ca}'"),
    );
    let cfg = PgConfig {
        connect_timeout_ms: 3_000,
        ..PgConfig::default()
    };
    match PgJournal::connect(&conn, cfg).await {
        Err(e @ PgError::Tls { .. }) => {
            let PgError::Tls { ssl_mode, .. } = &e else {
                unreachable!()
            };
            assert_eq!(*ssl_mode, SslMode::VerifyFull);
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("TLS to PostgreSQL at"), "{msg}");
            assert!(msg.contains("127.0.0.1"), "{msg}");
            assert!(msg.contains("sslmode=verify-full"), "{msg}");
            assert!(msg.contains("not issued for the host name"), "{msg}");
            assert!(
                !msg.contains(FAKE_PW) && !format!("{e:?}").contains(FAKE_PW),
                "{msg}"
            );
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let Some((url, _ca)) = common::pg_tls() else {
        return;
    };
    // Some CA file that did not sign the test server's certificate.
    let other_ca = "/etc/ssl/certs/ca-certificates.crt";
    if !std::path::Path::new(other_ca).exists() {
        eprintln!("note: {other_ca} is absent; skipping the wrong-CA check");
        return;
    }
    let conn = common::kv_url(&url, "localhost", Some(FAKE_PW), "sslmode=verify-full");
    let cfg = PgConfig {
        ca_file: Some(other_ca.into()),
        connect_timeout_ms: 3_000,
        ..PgConfig::default()
    };
    match PgJournal::connect(&conn, cfg).await {
        Err(e @ PgError::Tls { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("not signed by the given CA"), "{msg}");
            assert!(!msg.contains(FAKE_PW), "{msg}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}
