//! Three worker processes on one database, one of them `kill -9`'d every
//! 1–3 s and restarted, until every saga finished. Then: each order was
//! cancelled upstream exactly once, and no cancel call was repeated.
//!
//! The workers are `pg-test-worker` (src/bin), an engine on `PgJournal` with
//! a scripted channel whose upstream is two tables in the test's schema.
//! `RESCIND_PG_MULTI_SAGAS` sets the saga count (default 2000);
//! `RESCIND_PG_MULTI_SEED` replays a kill schedule.

mod common;

use rescind_core::record::Record;
use rescind_core::{Entry, Journal, OrderRef, SagaId, SagaInput};
use rescind_journal_postgres::PgConfig;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Worker {
    child: Child,
    log: std::path::PathBuf,
}

fn spawn_worker(url: &str, schema: &str, n: usize, generation: usize) -> Worker {
    let log = std::env::temp_dir().join(format!("{schema}-w{n}-{generation}.log"));
    let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    let child = Command::new(env!("CARGO_BIN_EXE_pg-test-worker"))
        .args([url, schema])
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning pg-test-worker: {e}"));
    Worker { child, log }
}

fn next(seed: &mut u64) -> u64 {
    // splitmix64
    *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_with_kill_9_finish_every_saga_once() {
    let Some(url) = common::pg_url() else { return };
    let sagas: u32 = std::env::var("RESCIND_PG_MULTI_SAGAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut seed: u64 = std::env::var("RESCIND_PG_MULTI_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x5eed);
    eprintln!("multi_worker: {sagas} sagas, seed {seed} (RESCIND_PG_MULTI_SEED={seed} replays the kill schedule)");
    let schema = common::fresh_schema("multi");

    // The upstream: every order unpaid.
    let db = common::raw(&url, "public").await;
    db.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path = \"{schema}\";
         CREATE TABLE upstream_orders (order_id text PRIMARY KEY, state text NOT NULL);
         CREATE TABLE effects (id bigserial PRIMARY KEY, order_id text NOT NULL, worker_id text NOT NULL,
                               applied boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
         INSERT INTO upstream_orders SELECT 'o' || g, 'unpaid' FROM generate_series(1, {sagas}) g;"
    ))
    .await
    .unwrap_or_else(|e| panic!("creating the upstream: {e}"));

    // Start the sagas (their `Started` records), then leave them: the
    // starter's leases lapse and the workers claim them.
    {
        let starter = Arc::new(
            common::open(
                &url,
                PgConfig {
                    lease_ttl_ms: 200,
                    lease_renew_interval_ms: 0,
                    ..common::cfg(&schema, "starter")
                },
            )
            .await,
        );
        let mut tasks = Vec::new();
        for i in 1..=sagas {
            let j = Arc::clone(&starter);
            tasks.push(tokio::spawn(async move {
                let id = SagaId::from_u128(u128::from(i));
                let input = SagaInput::cancel_unpaid(OrderRef::new("scripted", format!("o{i}")));
                j.append(
                    id,
                    &Entry {
                        seq: 0,
                        at_ms: 1_700_000_000_000,
                        record: Record::Started { input, by: None },
                    },
                )
                .await
            }));
        }
        for t in tasks {
            t.await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("starting a saga: {e}"));
        }
    }

    let began = Instant::now();
    let mut workers: Vec<Worker> = (0..3).map(|n| spawn_worker(&url, &schema, n, 0)).collect();
    let mut kills = 0usize;
    let mut next_kill = Instant::now() + Duration::from_millis(1000 + next(&mut seed) % 2000);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut remaining = i64::MAX;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        remaining = db
            .query_one("SELECT count(*) FROM sagas WHERE NOT finished", &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .get(0);
        if remaining == 0 {
            break;
        }
        if Instant::now() >= next_kill {
            let n = (next(&mut seed) % 3) as usize;
            let _ = workers[n].child.kill(); // SIGKILL
            let _ = workers[n].child.wait();
            kills += 1;
            workers[n] = spawn_worker(&url, &schema, n, kills);
            next_kill = Instant::now() + Duration::from_millis(1000 + next(&mut seed) % 2000);
        }
    }
    let took = began.elapsed();
    let logs: Vec<String> = workers
        .iter()
        .map(|w| w.log.display().to_string())
        .collect();
    for w in &mut workers {
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
    eprintln!(
        "multi_worker: {sagas} sagas finished in {:.1} s with {kills} kill -9s ({:.0} sagas/s); worker logs: {}",
        took.as_secs_f64(),
        f64::from(sagas) / took.as_secs_f64(),
        logs.join(" ")
    );
    assert_eq!(
        remaining, 0,
        "{remaining} sagas unfinished after {took:?} (seed {seed}); logs: {logs:?}"
    );
    assert!(
        kills >= 1 || took < Duration::from_secs(3),
        "the kill loop never fired (seed {seed})"
    );

    // Every order cancelled upstream exactly once; no call repeated.
    let row = db
        .query_one(
            "SELECT
               (SELECT count(*) FROM upstream_orders WHERE state <> 'cancelled'),
               (SELECT count(*) FROM (SELECT order_id FROM effects WHERE applied GROUP BY order_id HAVING count(*) > 1) d),
               (SELECT count(DISTINCT order_id) FROM effects WHERE applied),
               (SELECT count(*) FROM effects WHERE NOT applied)",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (not_cancelled, twice, once, repeated): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    eprintln!(
        "multi_worker: orders not cancelled {not_cancelled}, cancelled twice {twice}, cancelled {once}, repeated calls {repeated}"
    );
    assert_eq!(twice, 0, "an upstream effect happened twice (seed {seed})");
    assert_eq!(not_cancelled, 0, "orders left uncancelled (seed {seed})");
    assert_eq!(once, i64::from(sagas));
    assert_eq!(
        repeated, 0,
        "a cancel was re-issued after it took effect (seed {seed})"
    );

    // And the journal says so: every saga's last record is a completed finish.
    let j = common::open(&url, common::cfg(&schema, "checker")).await;
    for i in 1..=sagas {
        let id = SagaId::from_u128(u128::from(i));
        let entries = j
            .read(id)
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        match entries.last().map(|e| &e.record) {
            Some(Record::Finished { outcome }) if outcome.label() == "completed" => {}
            other => panic!("saga {id} (order o{i}) ended with {other:?} (seed {seed})"),
        }
    }
    drop(j);
    common::drop_schema(&url, &schema).await;
    for g in 0..=kills {
        for n in 0..3 {
            let _ =
                std::fs::remove_file(std::env::temp_dir().join(format!("{schema}-w{n}-{g}.log")));
        }
    }
}
