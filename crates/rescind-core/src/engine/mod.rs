//! The saga engine: decide → journal intent → perform → journal outcome → fold.
//!
//! Each saga runs as one task. The engine asks the saga's definition for the
//! next [`Decision`], journals an `Intent` (durably) before any external call,
//! performs the call through the registered [`Channels`], retries with
//! exponential back-off and seeded jitter, resolves in-doubt steps with a
//! lookup before re-issuing anything, and journals the `Outcome` before the
//! saga moves on. [`Engine::recover`] replays every unfinished saga from the
//! journal and continues it the same way.

use crate::action::{Ctx, Lookup, OperatorApplied};
pub use crate::action::{Resolved, StepExecutor};
use crate::channel::{ChannelError, Channels, InputError};
use crate::ids::{ChannelName, OrderRef, RefundId, SagaId, SagaKind};
use crate::journal::{Journal, JournalError};
pub use crate::limits::{LimitError, Limits};
use crate::metrics::{CallResult, EngineStats, MetricEvent, MetricsSink, SagaEnd, StatsSnapshot};
use crate::observe::{SagaChange, SagaNotice, SagaObserver};
use crate::record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
use crate::runtime::{Clock, IdGen, RandomIds, Rng, SplitMix64, TokioClock};
use crate::saga::{Decision, FoldError, SagaDefinition, SagaState};
use crate::step::{StepEffect, StepEvent, StepMachine, StepSpec};
pub use drive::credentials_account;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

mod drive;
mod slots;
mod wait;

/// Sagas read from the journal in one batch during [`Engine::recover`].
pub const RECOVER_BATCH_SAGAS: usize = 1024;

/// The engine's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A saga's records do not fold.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// No definition is registered for this kind.
    #[error("unknown saga kind {kind:?}{}", saga.map(|s| format!(" (saga {s})")).unwrap_or_default())]
    UnknownSagaKind {
        /// The saga, when the kind came from the journal.
        saga: Option<SagaId>,
        /// The kind.
        kind: SagaKind,
    },
    /// The definition rejected the input.
    #[error("invalid input for saga kind {kind}: {reason}")]
    InvalidInput {
        /// The kind.
        kind: SagaKind,
        /// Why.
        reason: String,
    },
    /// The saga already finished.
    #[error("saga {saga} already finished ({outcome})")]
    AlreadyFinished {
        /// The saga.
        saga: SagaId,
        /// How it ended.
        outcome: String,
    },
    /// The engine is shutting down or was killed.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The saga already has a task in this engine (one saga, one task).
    #[error("saga {saga} is already running in this engine")]
    AlreadyRunning {
        /// The saga.
        saga: SagaId,
    },
    /// The input was refused before anything was journaled (a channel that
    /// is not configured, an id the channel cannot represent...).
    #[error(transparent)]
    Rejected(#[from] InputError),
    /// An idempotency key reused with a different input: the key names an
    /// existing saga that does something else.
    #[error(
        "idempotency key {key:?} already names saga {saga} with a different {}; use a new key for a different request",
        fields.join(", ")
    )]
    KeyConflict {
        /// The key.
        key: String,
        /// The saga it names.
        saga: SagaId,
        /// The input fields that differ (`order_id`, `kind`, `stock_lock`...).
        fields: Vec<&'static str>,
    },
    /// An operator resolution that does not fit the saga (the step is not in
    /// doubt, the saga is running here, "applied" needs a refund id...).
    #[error("saga {saga}: cannot resolve: {reason}")]
    NotResolvable {
        /// The saga.
        saga: SagaId,
        /// Why.
        reason: String,
    },
}

/// An operator's resolution of an in-doubt step (`journal resolve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The in-doubt step.
    pub step: u32,
    /// `Some`: it took effect (with what the action's outcome needs, e.g. the
    /// refund a paid cancel opened); `None`: it did not, re-issue it.
    pub applied: Option<OperatorApplied>,
    /// Who resolved it.
    pub operator: String,
    /// What they verified.
    pub reason: String,
}

/// The input fields in which two saga inputs differ.
pub fn input_differences(a: &SagaInput, b: &SagaInput) -> Vec<&'static str> {
    let pairs = [
        (a.kind != b.kind, "kind"),
        (a.order.channel != b.order.channel, "channel"),
        (a.order.order_id != b.order.order_id, "order_id"),
        (a.account != b.account, "account"),
        (a.order_state != b.order_state, "order_state"),
        (a.stock_lock != b.stock_lock, "stock_lock"),
        (a.reason != b.reason, "reason"),
        (a.params != b.params, "params"),
    ];
    pairs
        .into_iter()
        .filter(|(d, _)| *d)
        .map(|(_, f)| f)
        .collect()
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a saga task ended in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaExit {
    /// The saga finished.
    Finished(SagaOutcome),
    /// The saga is stuck and parked; it stays unfinished in the journal.
    Stuck {
        /// Why, for operators.
        reason: String,
    },
    /// The task stopped without finishing (shutdown, journal failure); the
    /// journal still holds it as unfinished for the next recovery.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// What [`Engine::recover`] did.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// Sagas resumed.
    pub resumed: usize,
    /// Of those, sagas with an in-doubt step to resolve first.
    pub in_doubt: usize,
    /// Unfinished sagas already running in this engine (left alone).
    pub already_running: usize,
    /// Sagas whose `Finished` record was durable but which a crash kept from
    /// being marked finished: marked now, nothing to resume.
    pub marked_finished: usize,
    /// Sagas that could not be resumed, each with the error naming it.
    pub failed: Vec<(SagaId, Error)>,
    /// Stuck sagas left for an operator ([`Engine::recover_orphans`] only).
    pub left_stuck: usize,
    /// Sagas another worker took over between this worker's claim and its
    /// first write (a shared journal fenced the write): theirs now, not a
    /// failure.
    pub taken_over: usize,
    /// Where the recovery's time went.
    pub timings: RecoveryTimings,
}

/// Where an [`Engine::recover`] spent its time (wall clock). Batches are
/// read ahead while the previous one is folded, so `read` overlaps `fold`
/// and `launch`; `read_wait` is the part of reading that was not hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryTimings {
    /// Listing (or, on a shared journal, claiming) the unfinished sagas.
    pub claim: Duration,
    /// Reading and decoding their records ([`Journal::read_many`] calls, summed).
    pub read: Duration,
    /// Time the folding loop waited for a batch still being read.
    pub read_wait: Duration,
    /// Folding records into saga states.
    pub fold: Duration,
    /// Reserving each saga's slot, then parking it (a wait) or spawning its task.
    pub launch: Duration,
    /// Marking sagas found finished, releasing stuck ones left alone.
    pub writes: Duration,
    /// The whole recovery, claim to the last saga launched.
    pub total: Duration,
}

/// How a recovered saga was resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resumed {
    /// Parked on its refund wait: no task until its first poll.
    Parked,
    /// Its task runs, starting with the lookup of its in-doubt step.
    InDoubt,
    /// Its task runs.
    Running,
}

/// One batch of sagas read for recovery: the ids, their records (as
/// [`Journal::read_many`] gave them) and how long the read took.
type ReadBatch = (
    Vec<SagaId>,
    Vec<std::result::Result<Vec<Entry>, JournalError>>,
    Duration,
);

/// Reads recovery batches one ahead of the folding loop: on a task of its
/// own inside a tokio runtime, inline (one batch at a time) outside one.
enum ReadAhead {
    Task {
        rx: tokio::sync::mpsc::Receiver<ReadBatch>,
        /// Batches not received yet: a reader that stops short (a panic
        /// inside the journal) must not look like the end of the sagas.
        left: usize,
    },
    Inline {
        journal: Arc<dyn Journal>,
        todo: std::vec::IntoIter<Vec<SagaId>>,
    },
}

impl ReadAhead {
    fn start(journal: Arc<dyn Journal>, todo: Vec<SagaId>) -> ReadAhead {
        let chunks: Vec<Vec<SagaId>> = todo
            .chunks(RECOVER_BATCH_SAGAS)
            .map(<[SagaId]>::to_vec)
            .collect();
        if tokio::runtime::Handle::try_current().is_err() {
            return ReadAhead::Inline {
                journal,
                todo: chunks.into_iter(),
            };
        }
        // One batch in the channel and one being read: the reader stays a
        // batch ahead, and stops when the receiver is dropped.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let left = chunks.len();
        tokio::spawn(async move {
            for chunk in chunks {
                let t = std::time::Instant::now();
                let reads = journal.read_many(&chunk).await;
                if tx.send((chunk, reads, t.elapsed())).await.is_err() {
                    return;
                }
            }
        });
        ReadAhead::Task { rx, left }
    }

    /// The next batch; `Ok(None)` once every batch was given.
    async fn next(&mut self) -> std::result::Result<Option<ReadBatch>, JournalError> {
        match self {
            ReadAhead::Task { left: 0, .. } => Ok(None),
            ReadAhead::Task { rx, left } => match rx.recv().await {
                Some(batch) => {
                    *left -= 1;
                    Ok(Some(batch))
                }
                None => Err(JournalError::Backend(format!(
                    "recovery: the journal reader stopped with {left} batches of sagas unread"
                ))),
            },
            ReadAhead::Inline { journal, todo } => {
                let Some(chunk) = todo.next() else {
                    return Ok(None);
                };
                let t = std::time::Instant::now();
                let reads = journal.read_many(&chunk).await;
                Ok(Some((chunk, reads, t.elapsed())))
            }
        }
    }
}

enum Msg {
    Observed(Observation),
    Abort(String, Option<String>),
}

struct Running {
    order: OrderRef,
    mailbox: Mutex<Vec<Msg>>,
    notify: Notify,
    /// How the saga's task ended, once it has; waiters are woken by `done_changed`.
    done: Mutex<Option<SagaExit>>,
    done_changed: Notify,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    last_error: Mutex<Option<String>>,
    /// `Some` while the saga is parked (no task): what it waits for.
    parked: Mutex<Option<Parked>>,
}

impl Running {
    /// Record how the saga's task ended and wake everyone waiting on it.
    fn finish_with(&self, exit: Option<SagaExit>) {
        *lock(&self.done) = exit;
        self.done_changed.notify_waiters();
    }
}

/// Where a refund wait stands, kept across a park.
#[derive(Clone, Copy, Debug)]
struct WaitProgress {
    /// When the wait began (ms since the epoch).
    started_ms: u64,
    /// The poll interval after the next poll (exponential back-off).
    delay_ms: u64,
    /// When the next poll is due (ms since the epoch), once scheduled. A park
    /// lasts until then; a saga woken earlier (news, abort) keeps the time.
    next_poll_at_ms: Option<u64>,
    /// The next poll was scheduled while a push source was live on the
    /// channel (`refund_poll_with_push_ms` away): when the source stops
    /// being live, it is brought forward to the back-off schedule.
    push_scheduled: bool,
}

/// What a parked saga waits for.
#[derive(Clone, Copy, Debug)]
enum Parked {
    /// Its refund: the wait continues where it stood.
    Refund(WaitProgress),
    /// The end of its step's deferral ([`Record::Deferred`]): the step is
    /// sent again under a fresh intent.
    Step,
}

/// How a saga task ended.
enum TaskEnd {
    Exit(SagaExit),
    Park { wake_at_ms: u64, parked: Parked },
}

struct Inner {
    journal: Arc<dyn Journal>,
    channels: Channels,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn Rng>,
    ids: Arc<dyn IdGen>,
    limits: Limits,
    sagas: HashMap<SagaKind, Arc<dyn SagaDefinition>>,
    executors: HashMap<String, Arc<dyn StepExecutor>>,
    running: Mutex<HashMap<SagaId, Arc<Running>>>,
    /// Parked sagas' wake-up times.
    timers: Mutex<std::collections::BTreeSet<(u64, SagaId)>>,
    timers_changed: Notify,
    timer_task: AtomicBool,
    permits: Arc<Semaphore>,
    stopping: AtomicBool,
    stats: EngineStats,
    /// Where labelled metric events go, if anywhere.
    metrics: Option<Arc<dyn MetricsSink>>,
    /// Who hears of finished, stuck and unstuck sagas, if anyone.
    observer: Option<Arc<dyn SagaObserver>>,
    /// Sagas parked now (kept beside `running` so a scrape does not walk it).
    parked: AtomicUsize,
    /// Sagas this engine left stuck, until they run again.
    stuck: Mutex<std::collections::HashSet<SagaId>>,
    stuck_len: AtomicUsize,
    protections: Protections,
    /// Channels with a live push source: until when (ms since the epoch;
    /// `u64::MAX`: until told otherwise).
    push: Mutex<HashMap<ChannelName, u64>>,
}

/// Switches that disable a protection, for proving that the test harness
/// catches the violation that follows. Never set these in production.
#[derive(Clone, Copy, Debug, Default)]
pub struct Protections {
    /// Re-issue in-doubt steps without looking them up first.
    pub skip_in_doubt_lookup: bool,
    /// End a saga `failed` on a permanent error even when an irreversible
    /// step already took effect and work is still owed (release the stock
    /// lock, wait for the refund), instead of parking it as stuck.
    pub fail_with_work_owed: bool,
}

/// Builds an [`Engine`]. Defaults: system clock, random ids, an RNG seeded
/// from the clock, the built-in sagas, [`Limits::default`].
pub struct EngineBuilder {
    journal: Arc<dyn Journal>,
    channels: Channels,
    clock: Option<Arc<dyn Clock>>,
    rng: Option<Arc<dyn Rng>>,
    ids: Arc<dyn IdGen>,
    limits: Limits,
    sagas: HashMap<SagaKind, Arc<dyn SagaDefinition>>,
    executors: HashMap<String, Arc<dyn StepExecutor>>,
    protections: Protections,
    metrics: Option<Arc<dyn MetricsSink>>,
    observer: Option<Arc<dyn SagaObserver>>,
}

impl EngineBuilder {
    /// Tell this observer when a saga finishes, becomes stuck or leaves
    /// stuck (after the change is durable). Without one nobody is told.
    pub fn observer(mut self, observer: Arc<dyn SagaObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
    /// Send labelled metric events (sagas started and ended, calls, upstream
    /// errors) to this sink. Without one the engine keeps only its counters.
    pub fn metrics(mut self, sink: Arc<dyn MetricsSink>) -> Self {
        self.metrics = Some(sink);
        self
    }
    /// Use these channels.
    pub fn channels(mut self, channels: Channels) -> Self {
        self.channels = channels;
        self
    }
    /// Use this clock (tests: a clock on tokio's paused time).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }
    /// Use this RNG for back-off jitter.
    pub fn rng(mut self, rng: Arc<dyn Rng>) -> Self {
        self.rng = Some(rng);
        self
    }
    /// Use this id generator.
    pub fn ids(mut self, ids: Arc<dyn IdGen>) -> Self {
        self.ids = ids;
        self
    }
    /// Use these limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
    /// Register a saga definition (replaces one of the same kind).
    pub fn saga(mut self, def: impl SagaDefinition) -> Self {
        self.sagas.insert(def.kind(), Arc::new(def));
        self
    }
    /// Register an executor for custom steps named `name`.
    pub fn executor(mut self, name: impl Into<String>, exec: Arc<dyn StepExecutor>) -> Self {
        self.executors.insert(name.into(), exec);
        self
    }
    /// Disable protections (harness self-tests only).
    pub fn protections(mut self, p: Protections) -> Self {
        self.protections = p;
        self
    }
    /// Build the engine. Nothing runs until `start` or `recover`.
    pub fn build(self) -> Engine {
        let clock = self.clock.unwrap_or_else(|| Arc::new(TokioClock::system()));
        let rng = self
            .rng
            .unwrap_or_else(|| Arc::new(SplitMix64::new(clock.now_ms())));
        let permits = Arc::new(Semaphore::new(self.limits.in_flight_max.max(1)));
        Engine {
            inner: Arc::new(Inner {
                journal: self.journal,
                channels: self.channels,
                clock,
                rng,
                ids: self.ids,
                limits: self.limits,
                sagas: self.sagas,
                executors: self.executors,
                running: Mutex::new(HashMap::new()),
                timers: Mutex::new(std::collections::BTreeSet::new()),
                timers_changed: Notify::new(),
                timer_task: AtomicBool::new(false),
                permits,
                stopping: AtomicBool::new(false),
                stats: EngineStats::default(),
                metrics: self.metrics,
                observer: self.observer,
                parked: AtomicUsize::new(0),
                stuck: Mutex::new(std::collections::HashSet::new()),
                stuck_len: AtomicUsize::new(0),
                protections: self.protections,
                push: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// The saga engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("channels", &self.inner.channels)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum DriveStop {
    Stuck(String),
    Stopped(String),
    /// The step's attempt was not sent (a ban, a rate limit) and the wait
    /// the channel asked for is long: journal a [`Record::Deferred`] and
    /// park the saga instead of holding a task.
    Deferred {
        step: u32,
        until_ms: u64,
        reason: String,
    },
}

impl From<JournalError> for DriveStop {
    fn from(e: JournalError) -> Self {
        DriveStop::Stopped(format!("journal: {e}"))
    }
}

impl Engine {
    /// Start building an engine on `journal`, with the built-in sagas registered.
    pub fn builder(journal: Arc<dyn Journal>) -> EngineBuilder {
        let mut sagas: HashMap<SagaKind, Arc<dyn SagaDefinition>> = HashMap::new();
        for def in crate::sagas::builtin() {
            sagas.insert(def.kind(), Arc::from(def));
        }
        EngineBuilder {
            journal,
            channels: Channels::new(),
            clock: None,
            rng: None,
            ids: Arc::new(RandomIds),
            limits: Limits::default(),
            sagas,
            executors: HashMap::new(),
            protections: Protections::default(),
            metrics: None,
            observer: None,
        }
    }

    /// The journal this engine writes.
    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.inner.journal
    }

    /// The engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Counters since this engine was built.
    pub fn stats(&self) -> StatsSnapshot {
        let running = lock(&self.inner.running).len();
        let parked = self.inner.parked.load(Ordering::Relaxed);
        let in_flight = self
            .inner
            .limits
            .in_flight_max
            .max(1)
            .saturating_sub(self.inner.permits.available_permits());
        let stuck = self.inner.stuck_len.load(Ordering::Relaxed);
        self.inner.stats.snapshot(running, parked, in_flight, stuck)
    }

    /// Report a metric event to the sink, if there is one.
    pub(super) fn emit(&self, event: MetricEvent<'_>) {
        if let Some(m) = &self.inner.metrics {
            m.record(event);
        }
    }

    /// Tell the observer, if there is one, that a saga changed.
    pub(super) fn observe(&self, saga: SagaId, input: &SagaInput, change: SagaChange<'_>) {
        if let Some(o) = &self.inner.observer {
            o.saga_changed(&SagaNotice {
                saga,
                input,
                change,
                at_ms: self.inner.clock.now_ms(),
            });
        }
    }

    /// Is there an observer?
    pub(super) fn observed(&self) -> bool {
        self.inner.observer.is_some()
    }

    fn definition(&self, kind: &SagaKind, saga: Option<SagaId>) -> Result<Arc<dyn SagaDefinition>> {
        self.inner
            .sagas
            .get(kind)
            .cloned()
            .ok_or_else(|| Error::UnknownSagaKind {
                saga,
                kind: kind.clone(),
            })
    }

    /// Start a saga: its `Started` record is durable when this returns, so the
    /// saga will finish even if the process dies right after.
    pub async fn start(&self, input: SagaInput) -> Result<SagaId> {
        let id = self.inner.ids.next_id();
        self.start_as(id, input, None).await
    }

    /// [`Engine::start`] or, with a key, [`Engine::start_keyed`], journaling
    /// who started it (`by`: an API token's name, `cli`...) in the `started`
    /// record. Returns the saga and whether it was created.
    pub async fn start_by(
        &self,
        key: Option<&str>,
        input: SagaInput,
        by: &str,
    ) -> Result<(SagaId, bool)> {
        match key {
            Some(k) => self.start_keyed_as(k, input, Some(by.to_owned())).await,
            None => {
                let id = self.inner.ids.next_id();
                let id = self.start_as(id, input, Some(by.to_owned())).await?;
                Ok((id, true))
            }
        }
    }

    /// Start a saga idempotently: the same `key` always names the same saga.
    /// If it was already started (by this or an earlier process), its id is
    /// returned and nothing new is journaled; if it is unfinished and not
    /// running here, it is resumed.
    pub async fn start_keyed(&self, key: &str, input: SagaInput) -> Result<(SagaId, bool)> {
        self.start_keyed_as(key, input, None).await
    }

    async fn start_keyed_as(
        &self,
        key: &str,
        input: SagaInput,
        by: Option<String>,
    ) -> Result<(SagaId, bool)> {
        let id = SagaId::from_key(key);
        let existing = match self.start_as(id, input.clone(), by).await {
            Ok(id) => return Ok((id, true)),
            Err(
                Error::AlreadyRunning { .. }
                | Error::Journal(JournalError::SequenceConflict { .. }),
            ) => self.load(id).await?,
            Err(e) => return Err(e),
        };
        // The key is bound to its input: the same key for another request
        // is refused, never answered with the old saga.
        let fields = input_differences(&existing.input, &input);
        if !fields.is_empty() {
            return Err(Error::KeyConflict {
                key: key.to_owned(),
                saga: id,
                fields,
            });
        }
        if existing.outcome.is_none() && !self.is_running(id) {
            let _ = self.resume(id).await;
        }
        Ok((id, false))
    }

    /// Check an input as [`Engine::start`] would, journaling nothing: the
    /// kind is registered, its definition accepts the input, and every
    /// channel it would act on is configured and can name its ids.
    pub fn check(&self, input: &SagaInput) -> Result<Arc<dyn SagaDefinition>> {
        let def = self.definition(&input.kind, None)?;
        def.validate(input).map_err(|reason| Error::InvalidInput {
            kind: input.kind.clone(),
            reason,
        })?;
        if let Some(account) = &input.account {
            crate::channel::check_account_id(account.as_str())
                .map_err(|why| InputError::new("account", account.as_str(), why))?;
        }
        def.check(input, &self.inner.channels)?;
        Ok(def)
    }

    async fn start_as(&self, id: SagaId, input: SagaInput, by: Option<String>) -> Result<SagaId> {
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let def = self.check(&input)?;
        // Take the saga's slot before its first record exists, so a recovery
        // running meanwhile (which lists the journal) cannot start it twice.
        let slot = self
            .reserve(id, &input.order)
            .ok_or(Error::AlreadyRunning { saga: id })?;
        let at_ms = self.inner.clock.now_ms();
        let entry = Entry {
            seq: 0,
            at_ms,
            record: Record::Started {
                input: input.clone(),
                by,
            },
        };
        if let Err(e) = self.inner.journal.append(id, &entry).await {
            self.unreserve(id, &slot);
            self.on_journal_error(&e);
            return Err(e.into());
        }
        self.inner.stats.started();
        self.emit(MetricEvent::SagaStarted {
            kind: input.kind.as_str(),
            channel: input.order.channel.as_str(),
        });
        self.launch(SagaState::new(id, input, at_ms), def, slot, None);
        Ok(id)
    }

    /// Start a saga and wait for it to end in this process.
    pub async fn run(&self, input: SagaInput) -> Result<(SagaId, SagaExit)> {
        let id = self.start(input).await?;
        let exit = self.wait(id).await?;
        Ok((id, exit))
    }

    /// Wait until a saga's task ends. For a saga not running here, its state
    /// is read from the journal: finished → its outcome; stuck → `Stuck`;
    /// otherwise `Stopped` ("not running in this process").
    pub async fn wait(&self, id: SagaId) -> Result<SagaExit> {
        let running = lock(&self.inner.running).get(&id).cloned();
        if let Some(r) = running {
            loop {
                let changed = r.done_changed.notified();
                tokio::pin!(changed);
                // Registered before the check, so an end in between is not missed.
                changed.as_mut().enable();
                if let Some(exit) = lock(&r.done).clone() {
                    return Ok(exit);
                }
                changed.await;
            }
        }
        let state = self.load(id).await?;
        Ok(match (state.outcome, state.stuck) {
            (Some(o), _) => SagaExit::Finished(o),
            (None, Some(reason)) => SagaExit::Stuck { reason },
            (None, None) => SagaExit::Stopped {
                reason: "not running in this process".into(),
            },
        })
    }

    /// Read and fold a saga from the journal.
    pub async fn load(&self, id: SagaId) -> Result<SagaState> {
        let entries = self.inner.journal.read(id).await?;
        Ok(SagaState::fold(id, &entries)?)
    }

    /// The last channel error a running saga met (retries in progress), for
    /// an operator waiting on it.
    pub fn last_error(&self, id: SagaId) -> Option<String> {
        lock(&self.inner.running)
            .get(&id)
            .and_then(|r| lock(&r.last_error).clone())
    }

    /// Is the saga's task running in this engine?
    pub fn is_running(&self, id: SagaId) -> bool {
        lock(&self.inner.running).contains_key(&id)
    }

    /// Resume every unfinished saga in the journal that is not already running
    /// here (stuck ones included: a restart is a fresh attempt). A saga that
    /// cannot be resumed (corrupt record, newer format, unknown kind) is
    /// reported by id and skipped; the others still resume.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        self.recover_sagas(false).await
    }

    /// Resume the unfinished sagas nobody drives (their worker died, a
    /// process restarted), but leave stuck sagas to their operator: a stuck
    /// saga waits for someone to fix its cause and resume or resolve it, not
    /// for a timer to retry a refused call. A worker runs this periodically;
    /// [`Engine::recover`] (at start, or `journal resume`) takes stuck ones too.
    pub async fn recover_orphans(&self) -> Result<RecoveryReport> {
        self.recover_sagas(true).await
    }

    async fn recover_sagas(&self, leave_stuck: bool) -> Result<RecoveryReport> {
        let started = std::time::Instant::now();
        let ids = self.inner.journal.claim_unfinished().await?;
        let mut report = RecoveryReport::default();
        report.timings.claim = started.elapsed();
        let todo: Vec<SagaId> = ids
            .into_iter()
            .filter(|id| {
                let running = self.is_running(*id);
                report.already_running += usize::from(running);
                !running
            })
            .collect();
        // Batches are read ahead by a task of their own (for sled: decoded
        // on its blocking thread) while this one folds and launches the
        // previous batch; at most two batches wait in memory.
        let mut batches = ReadAhead::start(self.inner.journal.clone(), todo);
        let mut parked_any = false;
        loop {
            let waited = std::time::Instant::now();
            let Some((chunk, reads, read_took)) = batches.next().await? else {
                break;
            };
            report.timings.read_wait += waited.elapsed();
            report.timings.read += read_took;
            for (id, entries) in chunk.into_iter().zip(reads) {
                let resumed = self
                    .resume_read(id, entries, leave_stuck, true, &mut report.timings)
                    .await;
                match resumed {
                    Ok(Some(in_doubt)) => {
                        report.resumed += 1;
                        match in_doubt {
                            Resumed::Parked => parked_any = true,
                            Resumed::InDoubt => report.in_doubt += 1,
                            Resumed::Running => {}
                        }
                    }
                    Ok(None) => {
                        report.left_stuck += 1;
                        // Another worker may take it when an operator asks.
                        let t = std::time::Instant::now();
                        let _ = self.inner.journal.release(id).await;
                        report.timings.writes += t.elapsed();
                    }
                    Err(Error::Journal(JournalError::Crashed)) => {
                        return Err(Error::Journal(JournalError::Crashed))
                    }
                    Err(Error::AlreadyFinished { .. }) => report.marked_finished += 1,
                    Err(Error::AlreadyRunning { .. }) => report.already_running += 1,
                    Err(Error::Journal(JournalError::Fenced { .. })) => {
                        tracing::info!(saga = %id, "saga taken over by another worker before it resumed here");
                        report.taken_over += 1;
                    }
                    Err(e) => {
                        tracing::warn!(saga = %id, error = %e, "saga not resumed");
                        report.failed.push((id, e));
                    }
                }
            }
            // Sagas parked quietly: the timer learns of them once per batch.
            if std::mem::take(&mut parked_any) {
                self.inner.timers_changed.notify_one();
            }
        }
        report.timings.total = started.elapsed();
        let t = &report.timings;
        tracing::info!(
            resumed = report.resumed,
            in_doubt = report.in_doubt,
            failed = report.failed.len(),
            total_ms = t.total.as_millis() as u64,
            claim_ms = t.claim.as_millis() as u64,
            read_ms = t.read.as_millis() as u64,
            read_wait_ms = t.read_wait.as_millis() as u64,
            fold_ms = t.fold.as_millis() as u64,
            launch_ms = t.launch.as_millis() as u64,
            "recovery done"
        );
        Ok(report)
    }

    /// Resume one unfinished saga (e.g. a stuck one, after an operator fixed
    /// the cause). Returns whether it had an in-doubt step.
    pub async fn resume(&self, id: SagaId) -> Result<bool> {
        match self.resume_one(id).await {
            Err(Error::AlreadyRunning { .. }) => Ok(false),
            other => other,
        }
    }

    async fn resume_one(&self, id: SagaId) -> Result<bool> {
        let entries = self.inner.journal.read(id).await;
        let mut timings = RecoveryTimings::default();
        let resumed = self
            .resume_read(id, entries, false, false, &mut timings)
            .await?;
        Ok(matches!(resumed, Some(Resumed::InDoubt)))
    }

    /// Run an unfinished saga again from its records: `Some(how)`, or
    /// `None` when it is stuck and `leave_stuck` asked to leave it alone. A
    /// saga found finished but not marked (a crash between the two) is
    /// marked now and reported as [`Error::AlreadyFinished`]. `quiet`: a
    /// parked saga does not wake the timer (the caller does, once).
    async fn resume_read(
        &self,
        id: SagaId,
        entries: std::result::Result<Vec<Entry>, JournalError>,
        leave_stuck: bool,
        quiet: bool,
        timings: &mut RecoveryTimings,
    ) -> Result<Option<Resumed>> {
        let t = std::time::Instant::now();
        let entries = entries.inspect_err(|e| self.on_journal_error(e))?;
        let state = SagaState::fold(id, &entries);
        drop(entries);
        let state = state?;
        let folded = std::time::Instant::now();
        timings.fold += folded - t;
        if let Some(o) = &state.outcome {
            // Finished but not marked (crash between the two): mark it now.
            self.inner.journal.mark_finished(id).await?;
            timings.writes += folded.elapsed();
            return Err(Error::AlreadyFinished {
                saga: id,
                outcome: o.label().into(),
            });
        }
        let resumed = self.resume_state(state, leave_stuck, quiet);
        timings.launch += folded.elapsed();
        resumed
    }

    /// Run an unfinished, folded saga again: park it when all it does is
    /// wait for its refund, else spawn its task. Nothing is awaited.
    fn resume_state(
        &self,
        state: SagaState,
        leave_stuck: bool,
        quiet: bool,
    ) -> Result<Option<Resumed>> {
        let id = state.id;
        if leave_stuck && state.stuck.is_some() {
            return Ok(None);
        }
        let def = self
            .definition(&state.plan, Some(id))
            .or_else(|_| self.definition(&state.input.kind, Some(id)))?;
        // A deferred step is not in doubt: nothing was sent.
        let in_doubt = state
            .in_doubt()
            .is_some_and(|s| s.deferred_until_ms.is_none());
        let slot = self
            .reserve(id, &state.input.order)
            .ok_or(Error::AlreadyRunning { saga: id })?;
        // A saga that is only waiting for its refund goes straight to a park
        // (no task until its first poll): recovering 100,000 waiting sagas
        // must not hold 100,000 tasks at once.
        if !in_doubt && matches!(def.decide(&state), Decision::AwaitRefund { .. }) {
            let limits = &self.inner.limits;
            let delay = limits.refund_poll_initial_ms.max(1);
            let push = self.is_push_live(&state.input.order.channel);
            let first = if push {
                limits.refund_poll_with_push_ms.max(1)
            } else {
                delay
            };
            if first >= limits.park_after_ms {
                let now = self.inner.clock.now_ms();
                let wake_at_ms = now.saturating_add(first);
                let progress = WaitProgress {
                    started_ms: now,
                    delay_ms: delay,
                    next_poll_at_ms: Some(wake_at_ms),
                    push_scheduled: push,
                };
                self.park_as(id, &slot, wake_at_ms, Parked::Refund(progress), quiet);
                return Ok(Some(Resumed::Parked));
            }
        }
        self.launch(state, def, slot, None);
        Ok(Some(if in_doubt {
            Resumed::InDoubt
        } else {
            Resumed::Running
        }))
    }

    /// Ask a saga to abort. Running here: delivered to its task, which
    /// journals the request at its next decision and compensates (an opened
    /// refund is withdrawn). Not running: the request is journaled now and the
    /// saga resumed to carry it out.
    pub async fn abort(&self, id: SagaId, reason: impl Into<String>) -> Result<()> {
        self.abort_as(id, reason.into(), None).await
    }

    /// [`Engine::abort`], journaling who asked.
    pub async fn abort_by(&self, id: SagaId, reason: impl Into<String>, by: &str) -> Result<()> {
        self.abort_as(id, reason.into(), Some(by.to_owned())).await
    }

    async fn abort_as(&self, id: SagaId, reason: String, by: Option<String>) -> Result<()> {
        let running = lock(&self.inner.running).get(&id).cloned();
        if let Some(r) = running {
            lock(&r.mailbox).push(Msg::Abort(reason, by));
            r.notify.notify_one();
            self.wake(id, &r);
            return Ok(());
        }
        self.append_and_resume(id, |_| Ok(Record::AbortRequested { reason, by }))
            .await?;
        Ok(())
    }

    /// [`Engine::resume`] by an operator: a saga not running here gets a
    /// `resumed` record naming who, then runs again. Returns whether it had
    /// an in-doubt step (`false` when it was already running).
    pub async fn resume_by(&self, id: SagaId, by: &str) -> Result<bool> {
        if self.is_running(id) {
            return Ok(false);
        }
        self.append_and_resume(id, |_| Ok(Record::Resumed { by: by.to_owned() }))
            .await
    }

    /// An operator's record for a saga not running here: load it, refuse if
    /// it finished, build the record from its state, check that the record
    /// folds, append it, and resume the saga. Returns what the resume says
    /// (whether a step is in doubt).
    async fn append_and_resume(
        &self,
        id: SagaId,
        record: impl FnOnce(&SagaState) -> Result<Record>,
    ) -> Result<bool> {
        let state = self.load(id).await?;
        if let Some(o) = &state.outcome {
            return Err(Error::AlreadyFinished {
                saga: id,
                outcome: o.label().into(),
            });
        }
        let entry = Entry {
            seq: state.last_seq + 1,
            at_ms: self.inner.clock.now_ms(),
            record: record(&state)?,
        };
        let mut next = state.clone();
        next.apply(&entry)?;
        self.inner.journal.append(id, &entry).await?;
        // Stuck in the journal (a restart, or another worker, left it so) and
        // this record clears it; a saga still stuck after it (an abort), or
        // stuck in this process, is told of when it launches.
        if state.stuck.is_some() && next.stuck.is_none() && !lock(&self.inner.stuck).contains(&id) {
            self.observe(id, &state.input, SagaChange::Unstuck);
        }
        self.resume(id).await
    }

    /// Record an operator's resolution of a saga's in-doubt step (who, when,
    /// why) as its own journal record, then resume the saga as if a lookup
    /// had answered: applied → the step's outcome is folded and the saga
    /// moves on; not applied → the step is re-issued without a lookup.
    /// Refused when the step is not the saga's in-doubt step, when the saga
    /// has finished, or while it runs in this engine (it is then resolving
    /// the step itself; wait until it is stuck).
    pub async fn resolve(&self, id: SagaId, resolution: Resolution) -> Result<()> {
        let not = |reason: String| Error::NotResolvable { saga: id, reason };
        if self.is_running(id) {
            return Err(not(
                "it is running in this process; resolve it once it is stuck".into(),
            ));
        }
        self.append_and_resume(id, |state| {
            let step = match state.in_doubt() {
                Some(s) if s.step == resolution.step => s,
                Some(s) => {
                    return Err(not(format!(
                        "step {} is not in doubt; the step in doubt is step {} ({})",
                        resolution.step,
                        s.step,
                        s.action.name()
                    )))
                }
                None => {
                    return Err(not(format!(
                        "step {} is not in doubt; no step of this saga is",
                        resolution.step
                    )))
                }
            };
            let outcome = match &resolution.applied {
                Some(by) => Some(step.action.kind().applied(by).map_err(not)?),
                None => None,
            };
            Ok(Record::Resolved {
                step: resolution.step,
                outcome,
                operator: resolution.operator,
                reason: resolution.reason,
            })
        })
        .await?;
        Ok(())
    }

    /// Deliver news about an order or refund (a channel callback) to the
    /// sagas running on that order. Returns how many received it. Order of
    /// delivery does not matter and duplicates are harmless: a saga only acts
    /// on news that moves its state.
    pub fn deliver(&self, obs: Observation) -> usize {
        let order = match &obs {
            Observation::Order { order, .. } | Observation::Refund { order, .. } => order.clone(),
        };
        let targets: Vec<(SagaId, Arc<Running>)> = lock(&self.inner.running)
            .iter()
            .filter(|(_, r)| r.order == order)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        for (id, r) in &targets {
            lock(&r.mailbox).push(Msg::Observed(obs.clone()));
            r.notify.notify_one();
            // A saga parked on its refund has no task to notify: run it
            // again. One parked on a deferred step keeps the news in its
            // mailbox for its refund wait, after the step.
            if !matches!(*lock(&r.parked), Some(Parked::Step)) {
                self.wake(*id, r);
            }
        }
        targets.len()
    }

    /// Declare a push source of news (a message consumer such as TOP's TMC)
    /// live or not on `channel`. While one is live, a saga waiting for a
    /// refund on that channel polls only every `refund_poll_with_push_ms`
    /// (the news is expected to arrive through [`Engine::deliver`]); when
    /// it stops being live, waiting sagas go back to the back-off schedule
    /// at once, parked ones included. `true` lasts until `false`; prefer
    /// [`Engine::push_heartbeat`], which lapses by itself if the source dies.
    pub fn set_push_live(&self, channel: &ChannelName, live: bool) {
        if live {
            self.push_until(channel, u64::MAX);
        } else {
            let was = lock(&self.inner.push).remove(channel);
            if was.is_some_and(|until| until > self.inner.clock.now_ms()) {
                self.push_fell_back(channel);
            }
        }
    }

    /// The push source on `channel` is live for `valid_for` from now. A
    /// source beats after each successful receive; one that stops beating
    /// (hung, crashed, cut off) lapses when this runs out, and the waiting
    /// sagas on the channel fall back to polling by themselves.
    pub fn push_heartbeat(&self, channel: &ChannelName, valid_for: Duration) {
        let ms = u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX);
        let until = self.inner.clock.now_ms().saturating_add(ms);
        self.push_until(channel, until);
    }

    /// Does `channel` have a live push source now?
    pub fn is_push_live(&self, channel: &ChannelName) -> bool {
        let now = self.inner.clock.now_ms();
        lock(&self.inner.push)
            .get(channel)
            .is_some_and(|until| *until > now)
    }

    fn push_until(&self, channel: &ChannelName, until: u64) {
        let fresh = lock(&self.inner.push)
            .insert(channel.clone(), until)
            .is_none();
        // The timer loop watches heartbeats lapse; it needs a runtime.
        if fresh && tokio::runtime::Handle::try_current().is_ok() {
            self.ensure_timer();
            self.inner.timers_changed.notify_one();
        }
    }

    /// The push source on `channel` stopped being live: every saga waiting
    /// there on the long push interval goes back to its back-off schedule
    /// (parked ones are re-timed, running ones re-plan their wait).
    fn push_fell_back(&self, channel: &ChannelName) {
        tracing::info!(channel = %channel, "push source no longer live: refund waits poll again");
        let now = self.inner.clock.now_ms();
        let targets: Vec<(SagaId, Arc<Running>)> = lock(&self.inner.running)
            .iter()
            .filter(|(_, r)| &r.order.channel == channel)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        for (id, r) in targets {
            let mut parked = lock(&r.parked);
            match parked.as_mut() {
                Some(Parked::Refund(p)) if p.push_scheduled => {
                    p.push_scheduled = false;
                    let at = now.saturating_add(p.delay_ms);
                    if let Some(old) = p.next_poll_at_ms.filter(|old| *old > at) {
                        let mut timers = lock(&self.inner.timers);
                        timers.remove(&(old, id));
                        timers.insert((at, id));
                        p.next_poll_at_ms = Some(at);
                    }
                }
                Some(_) => {}
                None => r.notify.notify_one(),
            }
        }
        self.inner.timers_changed.notify_one();
    }

    /// Forget push sources whose heartbeat ran out (falling their channels
    /// back to polling); the earliest remaining expiry, if any.
    fn expire_push(&self, now: u64) -> Option<u64> {
        let (lapsed, next) = {
            let mut push = lock(&self.inner.push);
            let lapsed: Vec<ChannelName> = push
                .iter()
                .filter(|(_, until)| **until <= now)
                .map(|(c, _)| c.clone())
                .collect();
            for c in &lapsed {
                push.remove(c);
            }
            let next = push.values().copied().filter(|u| *u != u64::MAX).min();
            (lapsed, next)
        };
        for c in &lapsed {
            self.push_fell_back(c);
        }
        next
    }

    /// Stop taking new sagas, let running ones reach their next decision
    /// point (at most `grace`), then stop the rest. Nothing is lost: every
    /// unfinished saga resumes on the next `recover`.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.timers_changed.notify_one();
        let all: Vec<(SagaId, Arc<Running>)> = lock(&self.inner.running)
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        for (id, r) in &all {
            r.notify.notify_one();
            // Parked sagas are at a safe point already (everything durable).
            if lock(&r.parked).take().is_some() {
                self.inner.parked.fetch_sub(1, Ordering::Relaxed);
                self.unreserve(*id, r);
                r.finish_with(Some(SagaExit::Stopped {
                    reason: "engine stopping".into(),
                }));
            }
        }
        let clock = &self.inner.clock;
        let deadline = clock.now_ms().saturating_add(grace.as_millis() as u64);
        while !lock(&self.inner.running).is_empty() && clock.now_ms() < deadline {
            clock.sleep(Duration::from_millis(10)).await;
        }
        self.kill();
    }

    /// Stop every saga task at once, as if the process died (crash tests).
    pub fn kill(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        lock(&self.inner.timers).clear();
        self.inner.timers_changed.notify_one();
        let all: Vec<(SagaId, Arc<Running>)> = lock(&self.inner.running).drain().collect();
        for (_, r) in all {
            if let Some(h) = lock(&r.task).take() {
                h.abort();
            }
            r.finish_with(Some(SagaExit::Stopped {
                reason: "engine killed".into(),
            }));
        }
    }

    fn on_journal_error(&self, e: &JournalError) {
        if *e == JournalError::Crashed {
            // The simulated process is dead: nothing more may happen in it.
            self.kill();
        }
    }
}
