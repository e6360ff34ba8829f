//! The configuration file's `[journal] ca_file` reaches the PostgreSQL
//! journal: `rescind journal list` over `sslmode=verify-full` succeeds with
//! the test server's CA and is refused without it, through the real binary.
//!
//! Needs `RESCIND_PG_URL` and `RESCIND_PG_CA` (`source .ci/postgres`: a
//! server certificate issued for `localhost` by a throw-away CA); without
//! them the test is skipped with a note, and with `CI=true` it fails.

mod common;

use std::process::Command;

fn pg_tls() -> Option<(String, String)> {
    let vars = (
        std::env::var("RESCIND_PG_URL"),
        std::env::var("RESCIND_PG_CA"),
    );
    match vars {
        (Ok(u), Ok(ca)) if !u.trim().is_empty() && !ca.trim().is_empty() => Some((u, ca)),
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "CI=true but RESCIND_PG_URL / RESCIND_PG_CA are not set: source .ci/postgres"
                );
            }
            eprintln!("note: RESCIND_PG_URL / RESCIND_PG_CA not set; skipping (source .ci/postgres to run it)");
            None
        }
    }
}

/// `rescind --config CFG journal list --limit 1` with `url` in the environment.
fn list(dir: &std::path::Path, url: &str, ca_file: Option<&str>) -> std::process::Output {
    let cfg = dir.join("rescind.toml");
    let ca = ca_file
        .map(|c| format!("ca_file = \"{c}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &cfg,
        format!("[journal]\npostgres_url_env = \"RESCIND_TEST_TLS_URL\"\n{ca}"),
    )
    .expect("write config");
    Command::new(common::exe())
        .arg("--config")
        .arg(&cfg)
        .args(["journal", "list", "--limit", "1"])
        .env("RESCIND_TEST_TLS_URL", url)
        .env_remove("RESCIND_CONFIG")
        .output()
        .expect("run rescind")
}

#[test]
fn ca_file_in_the_config_verifies_the_server() {
    let Some((base, ca)) = pg_tls() else { return };
    let cfg: tokio_postgres::Config = base.parse().expect("RESCIND_PG_URL");
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let user = cfg.get_user().unwrap_or("rescind").to_owned();
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or("rescind").to_owned();
    // `localhost` is the name on the certificate; reached at 127.0.0.1.
    let url = format!(
        "postgres://{user}:{password}@localhost:{port}/{db}?hostaddr=127.0.0.1&sslmode=verify-full"
    );
    let dir = tempfile::tempdir().expect("tempdir");

    let with_ca = list(dir.path(), &url, Some(&ca));
    assert!(
        with_ca.status.success(),
        "verify-full with ca_file: {}",
        String::from_utf8_lossy(&with_ca.stderr)
    );

    let without = list(dir.path(), &url, None);
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        !without.status.success(),
        "verify-full without a CA file must fail"
    );
    assert!(
        stderr.contains("CA") || stderr.contains("certificate"),
        "the refusal names the certificate check: {stderr}"
    );
}
