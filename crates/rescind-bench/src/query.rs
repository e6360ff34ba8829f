//! `rescind-bench query`: saga queries from the journal indexes against
//! today's list-everything-then-filter, on sled and (with a URL) PostgreSQL.
//!
//! The journal is filled with `--sagas` sagas through `Journal::append_batch`
//! (real records, so the index is the one appends keep): 90% finished
//! (`started` + `finished`), 10% unfinished, half of those stuck. Then, per
//! journal: p50 of one page of 50 stuck sagas (ids, and with their
//! summaries as `GET /sagas` gives them), p50 of a lookup by order id, and
//! once the full scan `GET /sagas` did before the indexes (read and fold
//! every saga, then filter).

use anyhow::{anyhow, Result};
use rescind::inspect;
use rescind_core::{
    Entry, Journal, OrderRef, OrderState, Record, SagaId, SagaInput, SagaOutcome, SagaQuery,
    SagaSet, SagaStatus,
};
use rescind_journal_postgres::{PgConfig, PgJournal};
use rescind_journal_sled::{Durability, SledConfig, SledJournal};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of the `query` subcommand.
pub struct QueryOpts {
    /// Sagas in the journal.
    pub sagas: u64,
    /// Timed repetitions per indexed query.
    pub reps: usize,
    /// PostgreSQL URL, if any.
    pub pg_url: Option<String>,
}

const CHANNELS: [&str; 2] = ["tmall-tbc", "pandapon-1688"];
/// Concurrent writers while filling (the committers batch them).
const FILL_TASKS: u64 = 256;

fn saga_id(n: u64) -> SagaId {
    SagaId::from_u128((0x9e37_79b9_7f4a_7c15u128 * (u128::from(n) + 1)) & ((1 << 122) - 1))
}

fn order_of(n: u64) -> OrderRef {
    OrderRef::new(CHANNELS[(n % 2) as usize], format!("{}", 1_000_000_000 + n))
}

/// Saga `n`'s records and whether it finishes: every tenth unfinished
/// (every twentieth stuck), the rest completed.
fn saga_records(n: u64) -> (Vec<Entry>, bool) {
    let at = 1_700_000_000_000 + n;
    let start = Entry {
        seq: 0,
        at_ms: at,
        record: Record::Started {
            input: SagaInput::cancel_unpaid(order_of(n)).with_account(format!("shop{}", n % 50)),
            by: None,
        },
    };
    let second = match n % 20 {
        0 => Some(Record::Stuck {
            reason: "bench".into(),
        }),
        10 => None,
        _ => Some(Record::Finished {
            outcome: SagaOutcome::Completed {
                order: OrderState::Cancelled,
                note: None,
            },
        }),
    };
    let finish = matches!(second, Some(Record::Finished { .. }));
    let mut out = vec![start];
    if let Some(record) = second {
        out.push(Entry {
            seq: 1,
            at_ms: at + 1,
            record,
        });
    }
    (out, finish)
}

async fn fill(j: Arc<dyn Journal>, sagas: u64) -> Result<Duration> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..FILL_TASKS {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            let mut n = t;
            while n < sagas {
                let (entries, finish) = saga_records(n);
                j.append_batch(saga_id(n), &entries, finish)
                    .await
                    .map_err(|e| anyhow!("filling saga {n}: {e}"))?;
                n += FILL_TASKS;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("fill task: {e}"))??;
    }
    Ok(started.elapsed())
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The figures of one journal, printed as a table row each.
async fn measure(label: &str, j: Arc<dyn Journal>, o: &QueryOpts) -> Result<()> {
    let fill_took = fill(Arc::clone(&j), o.sagas).await?;
    eprintln!(
        "{label}: filled {} sagas in {:.1} s",
        o.sagas,
        fill_took.as_secs_f64()
    );
    let stuck = SagaQuery {
        state: Some(SagaStatus::Stuck),
        limit: 50,
        ..SagaQuery::default()
    };
    let mut page = Vec::new();
    let mut listed = Vec::new();
    let mut lookup = Vec::new();
    for r in 0..o.reps.max(1) {
        let t = Instant::now();
        let p = j.query(&stuck).await?;
        page.push(t.elapsed());
        if p.ids.len() != 50.min((o.sagas as usize).div_ceil(20)) {
            return Err(anyhow!(
                "{label}: a page of stuck sagas had {} sagas",
                p.ids.len()
            ));
        }
        let t = Instant::now();
        let l = inspect::list_page(j.as_ref(), &stuck).await?;
        listed.push(t.elapsed());
        if l.sagas.iter().any(|s| s.state != "stuck") {
            return Err(anyhow!("{label}: a stuck page listed another state"));
        }
        let n = (r as u64).wrapping_mul(7_919) % o.sagas.max(1);
        let order = order_of(n);
        let q = SagaQuery {
            order: Some((order.channel.to_string(), order.order_id.to_string())),
            ..SagaQuery::default()
        };
        let t = Instant::now();
        let found = j.query(&q).await?;
        lookup.push(t.elapsed());
        if found.ids != vec![saga_id(n)] {
            return Err(anyhow!(
                "{label}: order lookup of saga {n} found {:?}",
                found.ids
            ));
        }
    }
    // Before the indexes: read and fold every saga, then filter.
    let t = Instant::now();
    let (all, bad) =
        inspect::summaries(j.as_ref(), &[SagaSet::Unfinished, SagaSet::Finished]).await?;
    let stuck_all: Vec<_> = all.iter().filter(|s| s.state == "stuck").take(50).collect();
    let full = t.elapsed();
    if all.len() + bad.len() != o.sagas as usize || stuck_all.is_empty() && o.sagas >= 20 {
        return Err(anyhow!("{label}: the full scan saw {} sagas", all.len()));
    }
    println!(
        "| {label} | {} | {} | {} | {} | {} |",
        o.sagas,
        ms(p50(page)),
        ms(p50(listed)),
        ms(p50(lookup)),
        ms(full)
    );
    Ok(())
}

/// Run the benchmark and print its table.
pub async fn run(o: QueryOpts) -> Result<()> {
    if o.sagas == 0 {
        return Err(anyhow!("--sagas must be at least 1"));
    }
    println!(
        "Saga queries, {} sagas (10% unfinished, 5% stuck), filled with real records through Journal::append_batch; p50 of {} runs; the full scan once.\n",
        o.sagas, o.reps
    );
    println!("| journal | sagas | page of 50 stuck: ids, ms | same with summaries, ms | lookup by order id, ms | full scan (before indexes), ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let tmp = tempfile::tempdir()?;
    let sled = SledJournal::open(
        tmp.path().join("j"),
        SledConfig::default().with_durability(Durability::Process),
    )
    .await?;
    measure("sled", Arc::new(sled), &o).await?;
    match &o.pg_url {
        Some(url) => {
            let schema = format!("bench_query_{}", std::process::id());
            let cfg = PgConfig {
                worker_id: format!("bench-{schema}"),
                schema: Some(schema.clone()),
                ..PgConfig::default()
            };
            let pg = PgJournal::connect(url, cfg)
                .await
                .map_err(|e| anyhow!("PostgreSQL: {e}"))?;
            measure("PostgreSQL", Arc::new(pg), &o).await?;
            println!("\n(PostgreSQL schema `{schema}` left in place; drop it when done.)");
        }
        None => println!("\n(PostgreSQL skipped: no --pg-url / RESCIND_PG_URL.)"),
    }
    Ok(())
}
