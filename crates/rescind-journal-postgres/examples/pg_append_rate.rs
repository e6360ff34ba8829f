//! Append throughput of one `PgJournal` (group commit) with many concurrent
//! sagas: `cargo run -p rescind-journal-postgres --example pg_append_rate -- <url> [sagas] [records]`.
//! Uses a fresh schema `bench_<random>` and drops it afterwards.

use rescind_core::record::Record;
use rescind_core::{Entry, Journal, OrderRef, SagaId, SagaInput};
use rescind_journal_postgres::{PgConfig, PgJournal};
use std::sync::Arc;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: pg_append_rate <url> [sagas] [records]")?;
    let sagas: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(256);
    let records: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let schema = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let j = Arc::new(
        PgJournal::connect(
            &url,
            PgConfig {
                schema: Some(schema.clone()),
                ..PgConfig::default()
            },
        )
        .await?,
    );
    let t = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..sagas {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            let id = SagaId::new_random();
            for seq in 0..records {
                let record = if seq == 0 {
                    Record::Started {
                        input: SagaInput::cancel_unpaid(OrderRef::new("x", format!("{n}"))),
                        by: None,
                    }
                } else {
                    Record::Stuck {
                        reason: "bench".into(),
                    }
                };
                j.append(
                    id,
                    &Entry {
                        seq,
                        at_ms: 0,
                        record,
                    },
                )
                .await?;
            }
            Ok::<_, rescind_core::JournalError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let total = f64::from(sagas) * records as f64;
    println!("{sagas} concurrent sagas x {records} records: {total} appends in {secs:.2} s = {:.0} appends/s", total / secs);
    drop(j);
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    c.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await?;
    Ok(())
}
