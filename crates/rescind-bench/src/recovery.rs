//! Recovery: 100,000 unfinished sagas written to a sled journal, then a fresh
//! process opens it and resumes them all. Measured: process start → every
//! saga resumed, and resident memory per in-flight saga.

use crate::procs::rss_bytes;
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use rescind_core::{
    Action, ChannelError, Decision, Engine, Entry, Journal, Limits, OrderRef, Record, RefundId,
    Resolved, SagaDefinition, SagaId, SagaInput, SagaKind, SagaState, StepExecutor, StepOutcome,
    Via,
};
use rescind_journal_sled::{SledConfig, SledJournal};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How the unfinished sagas are left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum ParkMode {
    /// A custom step journaled as intent without outcome: on resume the engine
    /// asks the executor whether it took effect, and the executor never
    /// answers. Every saga holds an in-flight slot (`in_flight_max` raised).
    InDoubt,
    /// A paid cancel whose refund is open: on resume the saga waits for the
    /// refund (poll interval one day) without an in-flight slot — the idle
    /// saga of real life.
    RefundWait,
}

impl ParkMode {
    fn slug(&self) -> &'static str {
        match self {
            ParkMode::InDoubt => "in-doubt",
            ParkMode::RefundWait => "refund-wait",
        }
    }

    fn label(&self) -> &'static str {
        match self {
            ParkMode::InDoubt => "in-doubt custom step (lookup never answers)",
            ParkMode::RefundWait => "cancel_paid waiting for its refund (idle)",
        }
    }
}

const PARK_KIND: &str = "bench_park";
const PARK_EXEC: &str = "bench_park_step";
const DAY_MS: u64 = 86_400_000;

struct ParkSaga;

impl SagaDefinition for ParkSaga {
    fn kind(&self) -> SagaKind {
        SagaKind(PARK_KIND.into())
    }
    fn decide(&self, _: &SagaState) -> Decision {
        Decision::Act(Action::Custom(rescind_core::action::Custom {
            name: PARK_EXEC.into(),
            payload: json!({"n": 0}),
        }))
    }
}

/// Never answers; counts the sagas that reached it.
struct ParkExec {
    reached: AtomicUsize,
}

#[async_trait]
impl StepExecutor for ParkExec {
    async fn execute(&self, _: &Value) -> Result<Value, ChannelError> {
        self.reached.fetch_add(1, Ordering::Relaxed);
        std::future::pending().await
    }
    async fn resolve(&self, _: &Value) -> Result<Resolved, ChannelError> {
        self.reached.fetch_add(1, Ordering::Relaxed);
        std::future::pending().await
    }
}

fn records(mode: ParkMode, i: u64, now_ms: u64) -> Vec<Entry> {
    let e = |seq, record| Entry {
        seq,
        at_ms: now_ms,
        record,
    };
    match mode {
        ParkMode::InDoubt => {
            let order = OrderRef::new("bench", format!("O{i:08}").as_str());
            vec![
                e(
                    0,
                    Record::Started {
                        input: SagaInput::custom(PARK_KIND, order, Value::Null),
                        by: None,
                    },
                ),
                e(
                    1,
                    Record::Intent {
                        step: 0,
                        action: Action::Custom(rescind_core::action::Custom {
                            name: PARK_EXEC.into(),
                            payload: json!({"n": 0}),
                        }),
                    },
                ),
            ]
        }
        ParkMode::RefundWait => {
            let order = OrderRef::new("pandapon-taobao", format!("TB{i:08}").as_str());
            vec![
                e(
                    0,
                    Record::Started {
                        input: SagaInput::cancel_paid(order.clone()),
                        by: None,
                    },
                ),
                e(
                    1,
                    Record::Intent {
                        step: 0,
                        action: Action::CancelPaid(rescind_core::action::CancelPaid { order }),
                    },
                ),
                e(
                    2,
                    Record::Outcome {
                        step: 0,
                        outcome: StepOutcome::RefundOpened {
                            refund_id: RefundId::from(format!("RF{i:08}")),
                        },
                        via: Via::Reply,
                        attempts: 1,
                    },
                ),
            ]
        }
    }
}

/// Write `n` unfinished sagas into a new sled journal at `dir` (256 writers, group commit).
pub async fn write_unfinished(dir: &Path, mode: ParkMode, n: u64) -> Result<()> {
    let journal = Arc::new(
        SledJournal::open(dir, SledConfig::default())
            .await
            .with_context(|| format!("cannot open a sled journal in {}", dir.display()))?,
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let writers = 256u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let id = SagaId::new_random();
                for e in records(mode, i, now_ms) {
                    journal.append(id, &e).await?;
                }
                i += writers;
            }
            Ok::<_, rescind_core::JournalError>(())
        }));
    }
    for t in tasks {
        t.await.context("a writer task panicked")??;
    }
    match Arc::try_unwrap(journal) {
        Ok(j) => j.close().await.context("closing the journal")?,
        Err(_) => return Err(anyhow!("journal still shared after writing")),
    }
    Ok(())
}

/// What the recovery child reports (one JSON line on stdout).
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildReport {
    /// Sagas resumed by `recover`.
    pub resumed: usize,
    /// Of those, with an in-doubt step.
    pub in_doubt: usize,
    /// Sagas that failed to resume.
    pub failed: usize,
    /// Process main() → journal open, ms.
    pub open_ms: f64,
    /// CPU time (user + system, all threads) of the child when the journal
    /// was open, ms (10 ms resolution).
    #[serde(default)]
    pub open_cpu_ms: f64,
    /// CPU time of the child when every saga was resumed, ms.
    #[serde(default)]
    pub all_resumed_cpu_ms: f64,
    /// Where `recover()` spent its time (`RecoveryTimings`), ms: claim,
    /// read (summed, overlapping the rest), read_wait, fold, launch, total.
    #[serde(default)]
    pub phases_ms: Phases,
    /// Process main() → `recover()` returned, ms.
    pub recover_returned_ms: f64,
    /// Process main() → every saga observed running (in-doubt: reached its
    /// lookup; refund-wait: `recover` returned and the tasks ran once), ms.
    pub all_resumed_ms: f64,
    /// Process main() → this report printed (after the diagnostics), ms.
    pub report_ms: f64,
    /// RSS after the runtime started, bytes.
    pub rss_start: u64,
    /// RSS after the journal opened and the engine was built, bytes.
    pub rss_before_recover: u64,
    /// RSS with every saga in flight and idle, bytes.
    pub rss_in_flight: u64,
    /// `size_of::<SagaState>()`, bytes.
    pub saga_state_size: usize,
    /// RSS after `Engine::kill` stopped every saga task, bytes (what the
    /// allocator gave back: a lower bound of what the tasks held).
    pub rss_after_kill: u64,
    /// Afterwards, cache warm: every saga read and folded one after another, ms.
    pub read_sequential_ms: f64,
    /// The same with 64 reads in flight, ms.
    pub read_concurrent64_ms: f64,
}

/// The child: open, recover, report. `started` is taken first thing in main.
pub async fn child(
    dir: &Path,
    mode: ParkMode,
    n: usize,
    cache_mb: Option<u64>,
    started: Instant,
) -> Result<()> {
    let ms = |t: Instant| t.duration_since(started).as_secs_f64() * 1000.0;
    let rss_start = rss_bytes()?;
    let mut cfg = SledConfig::default();
    if let Some(mb) = cache_mb {
        cfg.cache_capacity_bytes = mb << 20;
    }
    let journal = SledJournal::open(dir, cfg)
        .await
        .with_context(|| format!("cannot open the journal in {}", dir.display()))?;
    let t_open = Instant::now();
    let open_cpu_ms = cpu_ms();
    let exec = Arc::new(ParkExec {
        reached: AtomicUsize::new(0),
    });
    let limits = Limits {
        // In-doubt sagas keep their slot while the lookup hangs.
        in_flight_max: 1 << 20,
        attempt_timeout_ms: DAY_MS,
        step_deadline_ms: DAY_MS,
        refund_poll_initial_ms: DAY_MS,
        refund_poll_max_ms: DAY_MS,
        refund_wait_max_ms: 30 * DAY_MS,
        ..Limits::default()
    };
    let engine = Engine::builder(Arc::new(journal))
        .saga(ParkSaga)
        .executor(PARK_EXEC, exec.clone())
        .limits(limits)
        .build();
    let rss_before_recover = rss_bytes()?;
    let report = engine.recover().await.context("recover")?;
    if report.resumed != n {
        eprintln!(
            "recovery child: resumed {} sagas, expected {n} ({} failed)",
            report.resumed,
            report.failed.len()
        );
    }
    let t_recover = Instant::now();
    let t_all = match mode {
        ParkMode::InDoubt => {
            let deadline = Instant::now() + Duration::from_secs(120);
            while exec.reached.load(Ordering::Relaxed) < report.resumed {
                if Instant::now() > deadline {
                    return Err(anyhow!(
                        "only {} of {} sagas reached their lookup within 120 s",
                        exec.reached.load(Ordering::Relaxed),
                        report.resumed
                    ));
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            Instant::now()
        }
        ParkMode::RefundWait => {
            // Let every task run to its wait (they are spawned; 2 workers drain them).
            let mut last = engine.stats().running;
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = engine.stats().running;
                if now == last {
                    break;
                }
                last = now;
            }
            Instant::now()
        }
    };
    let all_resumed_cpu_ms = cpu_ms();
    // Settle, then measure memory with everything parked.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_in_flight = rss_bytes()?;
    // Diagnostics, after the measurement: what stopping the tasks gives back,
    // and how long reading the journal takes one by one vs 64 at a time.
    engine.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after_kill = rss_bytes()?;
    let j = engine.journal().clone();
    let ids = j.list(rescind_core::SagaSet::Unfinished).await?;
    let t = Instant::now();
    for id in &ids {
        let e = j.read(*id).await?;
        SagaState::fold(*id, &e)?;
    }
    let read_sequential_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(ids.len());
    for id in ids {
        let j = j.clone();
        let permit = sem.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let e = j.read(id).await;
            drop(permit);
            e.map(|e| SagaState::fold(id, &e).is_ok())
        }));
    }
    for t in tasks {
        t.await.context("a read task panicked")??;
    }
    let read_concurrent64_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut out = ChildReport {
        resumed: report.resumed,
        in_doubt: report.in_doubt,
        failed: report.failed.len(),
        open_ms: ms(t_open),
        open_cpu_ms,
        all_resumed_cpu_ms,
        phases_ms: report.timings.into(),
        recover_returned_ms: ms(t_recover),
        all_resumed_ms: ms(t_all),
        report_ms: 0.0,
        rss_start,
        rss_before_recover,
        rss_in_flight,
        saga_state_size: std::mem::size_of::<SagaState>(),
        rss_after_kill,
        read_sequential_ms,
        read_concurrent64_ms,
    };
    out.report_ms = ms(Instant::now());
    println!("{}", serde_json::to_string(&out)?);
    // Exit without tearing 100,000 tasks down.
    std::process::exit(0);
}

/// `RecoveryTimings` in ms.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Phases {
    /// Listing the unfinished sagas.
    pub claim: f64,
    /// Reading and decoding (summed over batches; overlaps fold and launch).
    pub read: f64,
    /// Waiting for a batch being read.
    pub read_wait: f64,
    /// Folding.
    pub fold: f64,
    /// Reserving, parking, spawning.
    pub launch: f64,
    /// Journal writes (finish marks, releases).
    pub writes: f64,
    /// The whole `recover()`.
    pub total: f64,
}

impl From<rescind_core::RecoveryTimings> for Phases {
    fn from(t: rescind_core::RecoveryTimings) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Phases {
            claim: ms(t.claim),
            read: ms(t.read),
            read_wait: ms(t.read_wait),
            fold: ms(t.fold),
            launch: ms(t.launch),
            writes: ms(t.writes),
            total: ms(t.total),
        }
    }
}

/// CPU time of this process so far (user + system, all threads), ms, from
/// `/proc/self/stat` (Linux; clock ticks taken as 100 Hz, the kernel's
/// `USER_HZ` on every common architecture). 0 where it cannot be read.
fn cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) end with ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) as f64 * 10.0
}

/// One recovery measurement as the report shows it.
#[derive(Debug, Serialize)]
pub struct RecoveryResult {
    /// How the sagas were left.
    pub mode: String,
    /// sled's cache capacity in the child, MiB (None: the default, 256).
    pub sled_cache_mb: Option<u64>,
    /// Unfinished sagas.
    pub sagas: u64,
    /// Parent: spawn → every saga resumed, ms (includes exec and runtime
    /// start; the child's settle before printing is subtracted).
    pub spawn_to_all_resumed_ms: f64,
    /// The child's own figures.
    pub child: ChildReport,
    /// (rss_in_flight − rss_before_recover) / sagas, bytes.
    pub rss_per_saga_bytes: f64,
    /// Journal size on disk, bytes.
    pub journal_bytes: u64,
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Write the journal (or reuse the one kept under `keep`), spawn the child,
/// collect its report.
pub async fn measure(
    base: Option<&PathBuf>,
    mode: ParkMode,
    n: u64,
    cache_mb: Option<u64>,
    keep: Option<&Path>,
) -> Result<RecoveryResult> {
    let tmp = match base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .context("cannot create a temp dir")?;
    let dir = match keep {
        Some(k) => k.join(format!("{}-{n}", mode.slug())),
        None => tmp.path().join("journal"),
    };
    // A kept journal is complete only once its marker exists (a run cut
    // short while writing leaves none, and the journal is written again).
    let complete = dir.join("rescind-bench-complete");
    if complete.is_file() {
        eprintln!(
            "  reusing {n} unfinished sagas ({}) in {}",
            mode.label(),
            dir.display()
        );
    } else {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove the partial journal {}", dir.display()))?;
        }
        let t = Instant::now();
        write_unfinished(&dir, mode, n).await?;
        eprintln!(
            "  wrote {n} unfinished sagas ({}) in {:.1} s",
            mode.label(),
            t.elapsed().as_secs_f64()
        );
        if keep.is_some() {
            std::fs::write(&complete, b"")
                .with_context(|| format!("cannot write {}", complete.display()))?;
        }
    }
    let journal_bytes = dir_size(&dir);
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let mut cmd = tokio::process::Command::new(me);
    cmd.arg("recovery-child")
        .arg("--dir")
        .arg(&dir)
        .arg("--mode")
        .arg(mode.slug())
        .arg("--sagas")
        .arg(n.to_string());
    if let Some(mb) = cache_mb {
        cmd.arg("--sled-cache-mb").arg(mb.to_string());
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("cannot start the recovery child")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("recovery child: stdout not captured"))?;
    let line = tokio::time::timeout(
        Duration::from_secs(300),
        BufReader::new(stdout).lines().next_line(),
    )
    .await
    .map_err(|_| anyhow!("the recovery child did not report within 300 s"))?
    .context("reading the recovery child's report")?
    .ok_or_else(|| anyhow!("the recovery child exited without a report"))?;
    let line_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let _ = child.wait().await;
    let report: ChildReport = serde_json::from_str(&line)
        .with_context(|| format!("unexpected report from the recovery child: {line:?}"))?;
    // Spawn → report line, less the child's settle between "all resumed" and printing.
    let wall_ms = line_ms - (report.report_ms - report.all_resumed_ms);
    if report.resumed as u64 != n {
        return Err(anyhow!(
            "the child resumed {} of {n} sagas ({} failed)",
            report.resumed,
            report.failed
        ));
    }
    let per = (report
        .rss_in_flight
        .saturating_sub(report.rss_before_recover)) as f64
        / n as f64;
    Ok(RecoveryResult {
        mode: mode.label().into(),
        sled_cache_mb: cache_mb,
        sagas: n,
        spawn_to_all_resumed_ms: wall_ms,
        rss_per_saga_bytes: per,
        child: report,
        journal_bytes,
    })
}
