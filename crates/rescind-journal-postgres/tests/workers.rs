//! The worker registry on a real database: every journal is a live worker
//! while it renews its heartbeat; one that stops renewing is no longer live
//! once its heartbeat expires; a graceful stop deregisters at once.

mod common;

use rescind_journal_postgres::{PgConfig, PgJournal};
use std::time::Duration;

fn cfg(schema: &str, worker: &str) -> PgConfig {
    PgConfig {
        // Generous against a loaded machine: a heartbeat late by more than
        // the TTL would make a live worker look gone.
        lease_ttl_ms: 2_000,
        lease_renew_interval_ms: 100,
        ..common::cfg(schema, worker)
    }
}

#[tokio::test]
async fn three_workers_then_two_after_one_stops() {
    let Some(url) = common::pg_url() else { return };
    let schema = common::fresh_schema("workers");
    let mut journals = Vec::new();
    for w in ["w-a", "w-b", "w-c"] {
        journals.push(
            PgJournal::connect(&url, cfg(&schema, w))
                .await
                .unwrap_or_else(|e| panic!("connect {w}: {e}")),
        );
    }
    let live = journals[0].live_workers().await.expect("live workers");
    assert_eq!(live, ["w-a", "w-b", "w-c"]);
    // Past a heartbeat TTL, all three renew and stay live.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(journals[2].live_workers().await.unwrap().len(), 3);

    // w-b stops (dropped, no release: a crash): live until its heartbeat expires.
    let b = journals.remove(1);
    drop(b);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let live = journals[0].live_workers().await.unwrap();
        if live == ["w-a", "w-c"] {
            break;
        }
        assert_eq!(live.len(), 3, "{live:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "w-b still live long after its heartbeat expired: {live:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A graceful stop leaves at once, and stays gone although the journal lives.
    journals[1].deregister().await.expect("deregister");
    assert_eq!(journals[0].live_workers().await.unwrap(), ["w-a"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(journals[0].live_workers().await.unwrap(), ["w-a"]);
    drop(journals);
    common::drop_schema(&url, &schema).await;
}
