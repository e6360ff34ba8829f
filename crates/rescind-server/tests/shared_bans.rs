//! TOP app-key bans shared through a PostgreSQL journal: a ban one worker
//! meets is published with its end (on the database's clock), and another
//! worker's limiter for the same gateway and app key pauses until then; a
//! limiter of another app key is left alone, and an ended ban is gone.
//!
//! Needs `RESCIND_PG_URL` (`source .ci/postgres`); skipped without it,
//! except with `CI=true`, where it fails.

use rescind_core::TokioClock;
use rescind_journal_postgres::{PgConfig, PgJournal};
use rescind_server::wiring::OpenJournal;
use rescind_wire::flow::{AppKeyLimiters, FlowSettings};
use std::sync::Arc;
use std::time::Duration;

fn pg_url() -> Option<String> {
    match std::env::var("RESCIND_PG_URL") {
        Ok(u) if !u.trim().is_empty() => Some(u),
        _ => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI=true but RESCIND_PG_URL is not set: source .ci/postgres"
            );
            eprintln!("note: RESCIND_PG_URL is not set; skipping this PostgreSQL test");
            None
        }
    }
}

async fn worker(url: &str, schema: &str, id: &str) -> OpenJournal {
    let cfg = PgConfig {
        schema: Some(schema.to_owned()),
        ..PgConfig::with_worker_id(id)
    };
    let j = PgJournal::connect(url, cfg)
        .await
        .unwrap_or_else(|e| panic!("connect {id}: {e}"));
    OpenJournal::Postgres(Arc::new(j))
}

const GW: &str = "http://gw.example/router/rest";

#[tokio::test]
async fn a_ban_met_by_one_worker_pauses_the_app_key_in_the_others() {
    let Some(url) = pg_url() else { return };
    let schema = format!("t_bans_{}", uuid::Uuid::new_v4().simple());
    let a = worker(&url, &schema, "w-a").await;
    let b = worker(&url, &schema, "w-b").await;
    let settings = FlowSettings::default();
    let flow_a = AppKeyLimiters::new(Arc::new(TokioClock::system()));
    let flow_b = AppKeyLimiters::new(Arc::new(TokioClock::system()));
    let la = flow_a.limiter(GW, "12129701", settings);
    let lb = flow_b.limiter(GW, "12129701", settings);
    let other = flow_b.limiter(GW, "999", settings);

    // Nothing banned: nothing shared.
    assert_eq!(a.share_bans(&flow_a).await.unwrap(), 0);
    assert_eq!(b.share_bans(&flow_b).await.unwrap(), 0);
    assert!(lb.banned_for().is_none());

    // Worker A meets a 3 s ban; it publishes it; B takes it.
    la.ban_for(Duration::from_secs(3));
    assert_eq!(a.share_bans(&flow_a).await.unwrap(), 0, "its own ban");
    assert_eq!(b.share_bans(&flow_b).await.unwrap(), 1);
    let left = lb.banned_for().expect("B pauses the app key");
    assert!(
        left > Duration::from_millis(2_000) && left <= Duration::from_millis(3_100),
        "{left:?}"
    );
    assert!(
        other.banned_for().is_none(),
        "another app key is not banned"
    );
    // Taken once: a second round changes nothing.
    assert_eq!(b.share_bans(&flow_b).await.unwrap(), 0);

    // A longer ban wins; an ended one disappears.
    lb.ban_for(Duration::from_secs(6));
    assert_eq!(b.share_bans(&flow_b).await.unwrap(), 0);
    assert_eq!(
        a.share_bans(&flow_a).await.unwrap(),
        1,
        "A takes B's longer ban"
    );
    assert!(la.banned_for().expect("banned") > Duration::from_secs(4));

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("raw connection");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
        .batch_execute(&format!(
            "UPDATE \"{schema}\".app_key_bans SET banned_until = now() - interval '1 second'"
        ))
        .await
        .expect("end the ban");
    let fresh = AppKeyLimiters::new(Arc::new(TokioClock::system()));
    let lc = fresh.limiter(GW, "12129701", settings);
    assert_eq!(
        a.share_bans(&fresh).await.unwrap(),
        0,
        "an ended ban is not taken"
    );
    assert!(lc.banned_for().is_none());
    let left: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".app_key_bans"),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "ended bans are deleted");
    drop((a, b));
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await;
}
