//! The bare group-commit reference: the generic two-step saga's work done by
//! a hand-written loop, with no engine.
//!
//! Same upstream (two `POST /step` through the same client), same records
//! (rescind's own encoder, the same six records a two-step saga journals),
//! same keys as the sled journal (record keys, the unfinished index, the
//! finished index replacing it in the last write), same four durable waits per
//! saga (Started; Intent 0; Outcome 0 + Intent 1; Outcome 1 + Finished +
//! finish mark), and the same durability as rescind's default group commit:
//! one writer thread that takes whatever queued, applies it as one
//! `sled::Batch`, calls `Db::flush` and `fdatasync`s sled's `db` file, then
//! answers every waiter. What it leaves out is everything rescind adds on
//! top: the saga state and its fold, decisions, the step machine, sequence
//! checks, slots and tasks per saga, timers, metrics.

use crate::custom;
use crate::stats::{RunSummary, Samples};
use anyhow::{anyhow, Context, Result};
use rescind_core::record::encode;
use rescind_core::{
    Action, Entry, OrderRef, Record, SagaId, SagaInput, SagaOutcome, StepOutcome, Via,
};
use rescind_journal_sled::keys;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One durable write: keys to insert (value) or remove (`None`).
type Write = Vec<(Vec<u8>, Option<Vec<u8>>)>;

struct Request {
    write: Write,
    done: oneshot::Sender<Result<(), String>>,
}

/// The writer: one thread, group commit at power-loss durability.
struct Writer {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl Writer {
    fn open(dir: &Path) -> Result<Writer> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .with_context(|| format!("sled open {}", dir.display()))?;
        let tree = db.open_tree(keys::TREE)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .context("open sled's db file for fdatasync")?;
        let (tx, rx) = mpsc::channel::<Request>();
        let flushes = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let (f, w) = (flushes.clone(), writes.clone());
        let thread = std::thread::Builder::new()
            .name("bare-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut reqs = vec![first];
                    while reqs.len() < 1024 {
                        match rx.try_recv() {
                            Ok(r) => reqs.push(r),
                            Err(_) => break,
                        }
                    }
                    let mut batch = sled::Batch::default();
                    let mut n = 0u64;
                    for r in &reqs {
                        for (k, v) in &r.write {
                            match v {
                                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                                None => batch.remove(k.as_slice()),
                            }
                            n += u64::from(k.first() == Some(&keys::RECORD));
                        }
                    }
                    let res = tree
                        .apply_batch(batch)
                        .and_then(|_| db.flush().map(|_| ()))
                        .map_err(|e| e.to_string())
                        .and_then(|_| file.sync_data().map_err(|e| e.to_string()));
                    f.fetch_add(1, Ordering::Relaxed);
                    w.fetch_add(n, Ordering::Relaxed);
                    for r in reqs {
                        let _ = r.done.send(res.clone());
                    }
                }
            })
            .context("spawn the bare writer")?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
            flushes,
            writes,
        })
    }

    fn handle(&self) -> Result<mpsc::Sender<Request>> {
        self.tx.clone().ok_or_else(|| anyhow!("writer closed"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn durable(tx: &mpsc::Sender<Request>, write: Write) -> Result<()> {
    let (done, wait) = oneshot::channel();
    tx.send(Request { write, done })
        .map_err(|_| anyhow!("the bare writer stopped"))?;
    wait.await
        .map_err(|_| anyhow!("the bare writer dropped a request"))?
        .map_err(|e| anyhow!("bare group commit failed: {e}"))
}

fn rec(saga: SagaId, seq: u64, record: Record) -> (Vec<u8>, Option<Vec<u8>>) {
    let entry = Entry {
        seq,
        at_ms: 1_762_189_240_000,
        record,
    };
    (keys::record(saga, seq).to_vec(), Some(encode(&entry)))
}

fn intent(step: u32, n: u64) -> Record {
    Record::Intent {
        step,
        action: Action::custom(custom::EXECUTOR, json!({ "n": n })),
    }
}

fn outcome(step: u32, value: Value) -> Record {
    Record::Outcome {
        step,
        outcome: StepOutcome::Custom { value },
        via: Via::Reply,
        attempts: 1,
    }
}

/// One saga's work, the way rescind does it, without rescind.
async fn one_saga(
    tx: &mpsc::Sender<Request>,
    client: &reqwest::Client,
    url: &str,
    i: u64,
) -> Result<()> {
    let saga = SagaId::from_u128(u128::from(i) + 1);
    let input = SagaInput::custom(
        custom::KIND,
        OrderRef::new("bench", format!("O{i:09}").as_str()),
        Value::Null,
    );
    let order = input.order_state.clone();
    durable(
        tx,
        vec![
            rec(saga, 0, Record::Started { input, by: None }),
            (
                keys::index(keys::UNFINISHED, saga).to_vec(),
                Some(vec![0; 8]),
            ),
        ],
    )
    .await?;
    durable(tx, vec![rec(saga, 1, intent(0, 0))]).await?;
    let v0 = custom::post(client, url, &json!({ "n": 0 }))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    durable(
        tx,
        vec![rec(saga, 2, outcome(0, v0)), rec(saga, 3, intent(1, 1))],
    )
    .await?;
    let v1 = custom::post(client, url, &json!({ "n": 1 }))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    durable(
        tx,
        vec![
            rec(saga, 4, outcome(1, v1)),
            rec(
                saga,
                5,
                Record::Finished {
                    outcome: SagaOutcome::Completed { order, note: None },
                },
            ),
            (keys::index(keys::UNFINISHED, saga).to_vec(), None),
            (keys::index(keys::FINISHED, saga).to_vec(), Some(vec![0; 8])),
        ],
    )
    .await
}

/// Run the bare loop with `concurrency` sagas in flight, like
/// [`crate::driver::closed_loop`]: `warmup` unmeasured, then `window`.
pub async fn run_bare(
    dir: &Path,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
    client: &reqwest::Client,
    url: &str,
) -> Result<RunSummary> {
    let writer = Writer::open(dir)?;
    let counter = Arc::new(AtomicU64::new(0));
    let t_start = Instant::now();
    let measure_from = t_start + warmup;
    let deadline = measure_from + window;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let tx = writer.handle()?;
        let client = client.clone();
        let url = url.to_owned();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(4096);
            let mut failed = 0usize;
            let mut first_failure = None;
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let r = one_saga(&tx, &client, &url, i).await;
                let t1 = Instant::now();
                match r {
                    Ok(()) if t1 >= measure_from && t1 <= deadline => samples.push(t1 - t0),
                    Ok(()) => {}
                    Err(e) => {
                        failed += 1;
                        first_failure.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (samples, failed, first_failure)
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (f0, w0) = (
        writer.flushes.load(Ordering::Relaxed),
        writer.writes.load(Ordering::Relaxed),
    );
    tokio::time::sleep_until(deadline.into()).await;
    let (f1, w1) = (
        writer.flushes.load(Ordering::Relaxed),
        writer.writes.load(Ordering::Relaxed),
    );
    let (mut all, failed) = crate::stats::gather(tasks, "bare-loop").await?;
    drop(writer);
    let n = all.len();
    Ok(RunSummary {
        sagas: n,
        failed,
        per_sec: n as f64 / window.as_secs_f64(),
        p50_us: all.quantile_us(0.50),
        p99_us: all.quantile_us(0.99),
        mean_us: all.mean_us(),
        // Records per flush (index keys not counted), as the journal's rows.
        batch: if f1 > f0 {
            (w1 - w0) as f64 / (f1 - f0) as f64
        } else {
            0.0
        },
        executor_us_per_saga: 0.0,
    })
}
