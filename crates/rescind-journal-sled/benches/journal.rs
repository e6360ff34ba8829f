//! Durable append throughput and latency of the sled journal, group commit
//! against one flush per append, with 1, 16 and 256 concurrent writers; and
//! recovery: listing 100,000 unfinished sagas after reopening.
//!
//! ```text
//! cargo bench -p rescind-journal-sled --bench journal               # full: 3 reps x 3 s
//! cargo bench -p rescind-journal-sled --bench journal -- --quick    # 1 rep x 1 s, 20,000 sagas
//! options: --reps N --secs S --recovery-sagas N --dir PATH (default: a temp dir under /tmp)
//! ```
//!
//! Each writer is one task appending the records of its own sagas one after
//! another (a saga of 8 records, then the next saga), as the engine does:
//! every append waits for durability before the next. Figures are medians
//! over the repetitions; each repetition uses a fresh database.

use rescind_core::{
    Action, Entry, Journal, OrderRef, Record, SagaId, SagaInput, SagaSet, StepOutcome, Via,
};
use rescind_journal_sled::{Durability, SledConfig, SledJournal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: [usize; 3] = [1, 16, 256];
const RECORDS_PER_SAGA: u64 = 8;

struct Args {
    reps: usize,
    secs: f64,
    recovery_sagas: u64,
    dir: Option<PathBuf>,
}

fn parse_args() -> Args {
    let mut a = Args {
        reps: 3,
        secs: 3.0,
        recovery_sagas: 100_000,
        dir: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--quick" => {
                a.reps = 1;
                a.secs = 1.0;
                a.recovery_sagas = 20_000;
            }
            "--reps" => {
                a.reps = val.parse().expect("--reps N");
                i += 1;
            }
            "--secs" => {
                a.secs = val.parse().expect("--secs S");
                i += 1;
            }
            "--recovery-sagas" => {
                a.recovery_sagas = val.parse().expect("--recovery-sagas N");
                i += 1;
            }
            "--dir" => {
                a.dir = Some(PathBuf::from(val));
                i += 1;
            }
            _ => {} // `cargo bench` passes `--bench`; ignore what we do not know
        }
        i += 1;
    }
    a
}

/// A realistic record: ~150-250 bytes of JSON, like the engine writes.
fn record(saga: SagaId, seq: u64) -> Entry {
    let order = OrderRef::new(
        "tmall-tbc",
        format!(
            "{}",
            3_000_000_000_000u128 + saga.0.as_u128() % 1_000_000_000
        ),
    );
    let record = match seq {
        0 => Record::Started {
            input: SagaInput::cancel_unpaid(order).with_reason("buyer asked to cancel"),
            by: None,
        },
        s if s % 2 == 1 => Record::Intent {
            step: (s / 2) as u32,
            action: Action::CancelUnpaid(rescind_core::action::CancelUnpaid { order }),
        },
        s => Record::Outcome {
            step: (s / 2 - 1) as u32,
            outcome: StepOutcome::Cancelled { already: false },
            via: Via::Reply,
            attempts: 1,
        },
    };
    Entry {
        seq,
        at_ms: 1_700_000_000_000 + seq,
        record,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    FlushPerAppend(Durability),
    Group(Durability),
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::FlushPerAppend(Durability::Process) => "flush-per-append, process",
            Mode::FlushPerAppend(Durability::PowerLoss) => "flush-per-append, power-loss",
            Mode::Group(Durability::Process) => "group commit, process",
            Mode::Group(Durability::PowerLoss) => "group commit, power-loss (default)",
        }
    }
    fn config(self) -> SledConfig {
        match self {
            Mode::FlushPerAppend(d) => SledConfig::default().flush_per_append().with_durability(d),
            Mode::Group(d) => SledConfig::default().with_durability(d),
        }
    }
}

struct Run {
    records_per_s: f64,
    p50_us: u64,
    p99_us: u64,
    batch_avg: f64,
}

fn fresh_dir(base: &Path, tag: &str) -> PathBuf {
    let p = base.join(tag);
    let _ = std::fs::remove_dir_all(&p);
    p
}

async fn run_once(base: &Path, mode: Mode, writers: usize, secs: f64, rep: usize) -> Run {
    let path = fresh_dir(
        base,
        &format!(
            "w{writers}-{}-{rep}",
            mode.name().replace([' ', ',', '(', ')'], "")
        ),
    );
    let j = Arc::new(SledJournal::open(&path, mode.config()).await.expect("open"));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let j = Arc::clone(&j);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(4096);
            let mut saga_n = 0u128;
            'outer: loop {
                let saga = SagaId::from_u128(((w as u128) << 64) | saga_n);
                saga_n += 1;
                for seq in 0..RECORDS_PER_SAGA {
                    let e = record(saga, seq);
                    let t = Instant::now();
                    j.append(saga, &e).await.expect("append");
                    lat.push(t.elapsed().as_micros() as u64);
                    if Instant::now() >= deadline {
                        break 'outer;
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let c = j.commit_counters();
    drop(j);
    let _ = std::fs::remove_dir_all(&path);
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        records_per_s: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        batch_avg: c.records as f64 / c.flushes.max(1) as f64,
    }
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn median_u(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

async fn recovery(base: &Path, sagas: u64) {
    let path = fresh_dir(base, "recovery");
    let config = SledConfig::default();
    let fill = Instant::now();
    {
        let j = Arc::new(
            SledJournal::open(&path, config.clone())
                .await
                .expect("open"),
        );
        let writers = 256u64;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let j = Arc::clone(&j);
            tasks.push(tokio::spawn(async move {
                let mut n = w;
                while n < sagas {
                    let saga = SagaId::from_u128(0x5eed_0000_0000 + n as u128);
                    j.append(saga, &record(saga, 0)).await.expect("append");
                    j.append(saga, &record(saga, 1)).await.expect("append");
                    n += writers;
                }
            }));
        }
        // Some finished sagas too, so the index scan has something to skip.
        for w in 0..writers {
            let j = Arc::clone(&j);
            tasks.push(tokio::spawn(async move {
                let mut n = w;
                while n < sagas / 10 {
                    let saga = SagaId::from_u128(0xf1_0000_0000 + n as u128);
                    j.append(saga, &record(saga, 0)).await.expect("append");
                    j.mark_finished(saga).await.expect("finish");
                    n += writers;
                }
            }));
        }
        for t in tasks {
            t.await.expect("filler");
        }
        let j = Arc::try_unwrap(j).expect("sole owner");
        j.close().await.expect("close");
    }
    let fill_s = fill.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let j = SledJournal::open(&path, config).await.expect("reopen");
    let opened = t0.elapsed();
    let t1 = Instant::now();
    let unfinished = j.list(SagaSet::Unfinished).await.expect("list");
    let listed = t1.elapsed();
    assert_eq!(unfinished.len() as u64, sagas);
    let stats = j.stats().await.expect("stats");
    println!();
    println!("Recovery: {sagas} unfinished sagas (2 records each) + {} finished, filled in {fill_s:.1} s", sagas / 10);
    println!(
        "  reopen {:.0} ms, list unfinished {:.0} ms, total {:.0} ms; {} records, {:.1} MB on disk",
        opened.as_secs_f64() * 1e3,
        listed.as_secs_f64() * 1e3,
        (opened + listed).as_secs_f64() * 1e3,
        stats.records,
        stats.bytes_on_disk as f64 / 1e6
    );
    drop(j);
    let _ = std::fs::remove_dir_all(&path);
}

fn main() {
    let args = parse_args();
    let tmp;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).expect("bench dir");
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "sled journal: durable appends, {} rep(s) x {:.1} s each, medians; dir {}; {} cpus",
        args.reps,
        args.secs,
        base.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:>7}  {:<36} {:>11} {:>9} {:>9} {:>8} {:>12}",
        "writers", "mode", "records/s", "p50 µs", "p99 µs", "batch", "vs baseline"
    );
    rt.block_on(async {
        for &writers in &WRITERS {
            for d in [Durability::Process, Durability::PowerLoss] {
                let mut baseline = 0.0;
                for mode in [Mode::FlushPerAppend(d), Mode::Group(d)] {
                    let mut rps = Vec::new();
                    let mut p50 = Vec::new();
                    let mut p99 = Vec::new();
                    let mut batch = Vec::new();
                    for rep in 0..args.reps {
                        let r = run_once(&base, mode, writers, args.secs, rep).await;
                        rps.push(r.records_per_s);
                        p50.push(r.p50_us);
                        p99.push(r.p99_us);
                        batch.push(r.batch_avg);
                    }
                    let rps = median_f(rps);
                    if matches!(mode, Mode::FlushPerAppend(_)) {
                        baseline = rps;
                    }
                    println!(
                        "{:>7}  {:<36} {:>11.0} {:>9} {:>9} {:>8.1} {:>11.1}x",
                        writers,
                        mode.name(),
                        rps,
                        median_u(p50),
                        median_u(p99),
                        median_f(batch),
                        rps / baseline
                    );
                }
            }
        }
        recovery(&base, args.recovery_sagas).await;
    });
}
