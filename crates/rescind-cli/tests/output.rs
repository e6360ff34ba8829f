//! The CLI's output, run as the real binary: `--json` carries structured
//! values (not Rust `Debug` strings), and a closed stdout pipe
//! (`rescind journal list --json | head`) ends the command quietly.

mod common;

use std::process::Stdio;

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("rescind.toml");
    std::fs::write(
        &cfg,
        format!("[journal]\npath = \"{}\"\n", dir.join("journal").display()),
    )
    .expect("write config");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_stats_json_has_numbers_for_storage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    let out = tokio::process::Command::new(common::exe())
        .arg("--config")
        .arg(&cfg)
        .args(["journal", "stats", "--json"])
        .env_remove("RESCIND_CONFIG")
        .output()
        .await
        .expect("run rescind");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let storage = &v["storage"];
    assert!(
        storage.is_object(),
        "storage is an object, not a Debug string: {v}"
    );
    for key in [
        "unfinished",
        "finished",
        "records",
        "record_bytes",
        "bytes_on_disk",
    ] {
        assert!(storage[key].is_u64(), "storage.{key} is a number: {v}");
    }
    assert_eq!(storage["unfinished"], 0, "{v}");
    assert_eq!(v["sagas"], 0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_pipe_ends_journal_list_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    for args in [&["journal", "list", "--json"][..], &["journal", "list"][..]] {
        let mut child = tokio::process::Command::new(common::exe())
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env_remove("RESCIND_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rescind");
        // The reader goes away before the command writes (as `head` does).
        drop(child.stdout.take());
        let out = child.wait_with_output().await.expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked")
                && !stderr.contains("Broken pipe")
                && !stderr.contains("error"),
            "{args:?}: quiet on a closed pipe, got: {stderr}"
        );
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

/// `rescind --config CFG journal list` with `env` set; its stderr.
async fn journal_list_stderr(cfg: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(common::exe());
    cmd.arg("--config")
        .arg(cfg)
        .args(["journal", "list"])
        .env_remove("RESCIND_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run rescind");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const WORKER_HINT: &str = "holds a sled journal";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_configuration_error_carries_no_sled_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("rescind.toml");
    std::fs::write(
        &cfg,
        "[journal]\npostgres_url_env = \"RESCIND_TEST_HINT_URL\"\n",
    )
    .expect("write config");
    // verify-full without a CA file: refused before any connection is tried.
    let (ok, stderr) = journal_list_stderr(
        &cfg,
        &[(
            "RESCIND_TEST_HINT_URL",
            "postgres://rescind@127.0.0.1:1/rescind?sslmode=verify-full",
        )],
    )
    .await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("sslmode=verify-full"),
        "the TLS configuration error is shown: {stderr}"
    );
    assert!(
        !stderr.contains(WORKER_HINT) && !stderr.contains("rescind worker"),
        "no sled-lock hint on a PostgreSQL configuration error: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_journal_held_by_another_process_gets_the_worker_hint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    // This test process holds the journal, as a running worker would.
    let holder = rescind_journal_sled::SledJournal::open(
        dir.path().join("journal"),
        rescind_journal_sled::SledConfig::default(),
    )
    .await
    .expect("open the journal in the test");
    let (ok, stderr) = journal_list_stderr(&cfg, &[]).await;
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("locked"), "{stderr}");
    assert!(
        stderr.contains(WORKER_HINT),
        "the hint goes with the lock error: {stderr}"
    );
    holder.close().await.expect("close the journal");
    // Once it is free, the same command works and no hint appears.
    let (ok, stderr) = journal_list_stderr(&cfg, &[]).await;
    assert!(ok, "{stderr}");
    assert!(!stderr.contains(WORKER_HINT), "{stderr}");
}

/// The display column (CJK counts two) at which the cell after the first
/// occurrence of `cell` starts in `line`.
fn next_cell_column(line: &str, cell: &str) -> usize {
    use unicode_width::UnicodeWidthStr;
    let start = line
        .find(cell)
        .unwrap_or_else(|| panic!("{cell:?} not in {line:?}"));
    let rest = &line[start + cell.len()..];
    let next = rest.len() - rest.trim_start_matches(' ').len();
    UnicodeWidthStr::width(&line[..start + cell.len() + next])
}

/// The display column at which `cell` starts in `line`.
fn cell_column(line: &str, cell: &str) -> usize {
    use unicode_width::UnicodeWidthStr;
    let start = line
        .find(cell)
        .unwrap_or_else(|| panic!("{cell:?} not in {line:?}"));
    UnicodeWidthStr::width(&line[..start])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_list_aligns_columns_after_cjk_text() {
    use rescind_core::{Entry, Journal as _, OrderRef, Record, SagaId, SagaInput};
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    // Two sagas written straight into the journal (channel validation would
    // refuse a CJK order id at start; a journal may still hold one, e.g.
    // from a channel that allows it): one with a CJK order id and reason.
    let rows = [
        ("订单号-甲乙丙", "买家要求取消：库存不足", "\u{1b}[2J"),
        ("1234567890", "upstream said no", ""),
    ];
    {
        let j = rescind_journal_sled::SledJournal::open(
            dir.path().join("journal"),
            rescind_journal_sled::SledConfig::default(),
        )
        .await
        .expect("open journal");
        for (i, (order, reason, tail)) in rows.iter().enumerate() {
            let id = SagaId::from_u128(i as u128 + 1);
            for (seq, record) in [
                Record::Started {
                    input: SagaInput::cancel_unpaid(OrderRef::new("tmall-tbc", *order)),
                    by: None,
                },
                Record::Stuck {
                    reason: format!("{reason}{tail}"),
                },
            ]
            .into_iter()
            .enumerate()
            {
                let entry = Entry {
                    seq: seq as u64,
                    at_ms: 1_700_000_000_000 + i as u64,
                    record,
                };
                j.append(id, &entry).await.expect("append");
            }
        }
        j.close().await.expect("close");
    }
    let out = tokio::process::Command::new(common::exe())
        .arg("--config")
        .arg(&cfg)
        .args(["journal", "list"])
        .env_remove("RESCIND_CONFIG")
        .output()
        .await
        .expect("run rescind");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two rows:\n{stdout}");
    // The column after the order id, and the reason column, start at the
    // same display column in the header and in both rows.
    let after_order = [
        next_cell_column(lines[0], "order "),
        next_cell_column(lines[1], rows[0].0),
        next_cell_column(lines[2], rows[1].0),
    ];
    assert!(
        after_order.iter().all(|c| *c == after_order[0]),
        "columns after the order id: {after_order:?}\n{stdout}"
    );
    let reason = [
        cell_column(lines[0], "reason"),
        cell_column(lines[1], rows[0].1),
        cell_column(lines[2], rows[1].1),
    ];
    assert!(
        reason.iter().all(|c| *c == reason[0]),
        "reason columns: {reason:?}\n{stdout}"
    );
    // Control characters stay escaped in a cell.
    assert!(!stdout.contains('\u{1b}'), "{stdout:?}");
    assert!(lines[1].contains("\\u{1b}[2J"), "{stdout}");
}
