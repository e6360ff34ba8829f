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
use crate::ids::{OrderRef, RefundId, SagaId, SagaKind};
use crate::journal::{Journal, JournalError};
pub use crate::limits::{LimitError, Limits};
use crate::metrics::{EngineStats, StatsSnapshot};
use crate::record::{Action, Entry, Observation, Record, SagaInput, SagaOutcome, StepOutcome, Via};
use crate::runtime::{Clock, IdGen, RandomIds, Rng, SplitMix64, TokioClock};
use crate::saga::{Decision, FoldError, SagaDefinition, SagaState};
use crate::step::{StepEffect, StepEvent, StepMachine, StepSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

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
}

enum Msg {
    Observed(Observation),
    Abort(String),
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
    /// `Some` while the saga is parked (no task): where its wait stood.
    parked: Mutex<Option<WaitProgress>>,
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
}

/// How a saga task ended.
enum TaskEnd {
    Exit(SagaExit),
    Park {
        wake_at_ms: u64,
        progress: WaitProgress,
    },
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
    protections: Protections,
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
}

impl EngineBuilder {
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
                protections: self.protections,
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
        let (running, parked) = {
            let map = lock(&self.inner.running);
            let parked = map.values().filter(|r| lock(&r.parked).is_some()).count();
            (map.len(), parked)
        };
        self.inner.stats.snapshot(running, parked)
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
        self.start_as(id, input).await
    }

    /// Start a saga idempotently: the same `key` always names the same saga.
    /// If it was already started (by this or an earlier process), its id is
    /// returned and nothing new is journaled; if it is unfinished and not
    /// running here, it is resumed.
    pub async fn start_keyed(&self, key: &str, input: SagaInput) -> Result<(SagaId, bool)> {
        let id = SagaId::from_key(key);
        let existing = match self.start_as(id, input.clone()).await {
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
        def.check(input, &self.inner.channels)?;
        Ok(def)
    }

    async fn start_as(&self, id: SagaId, input: SagaInput) -> Result<SagaId> {
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
            },
        };
        if let Err(e) = self.inner.journal.append(id, &entry).await {
            self.unreserve(id, &slot);
            self.on_journal_error(&e);
            return Err(e.into());
        }
        self.inner.stats.started();
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
        let ids = self.inner.journal.claim_unfinished().await?;
        let mut report = RecoveryReport::default();
        let todo: Vec<SagaId> = ids
            .into_iter()
            .filter(|id| {
                let running = self.is_running(*id);
                report.already_running += usize::from(running);
                !running
            })
            .collect();
        for chunk in todo.chunks(RECOVER_BATCH_SAGAS) {
            let reads = self.inner.journal.read_many(chunk).await;
            for (id, entries) in chunk.iter().zip(reads) {
                match self.resume_from(*id, entries).await {
                    Ok(in_doubt) => {
                        report.resumed += 1;
                        report.in_doubt += usize::from(in_doubt);
                    }
                    Err(Error::Journal(JournalError::Crashed)) => {
                        return Err(Error::Journal(JournalError::Crashed))
                    }
                    Err(Error::AlreadyFinished { .. }) => report.marked_finished += 1,
                    Err(Error::AlreadyRunning { .. }) => report.already_running += 1,
                    Err(e) => {
                        tracing::warn!(saga = %id, error = %e, "saga not resumed");
                        report.failed.push((*id, e));
                    }
                }
            }
        }
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
        self.resume_from(id, entries).await
    }

    async fn resume_from(
        &self,
        id: SagaId,
        entries: std::result::Result<Vec<Entry>, JournalError>,
    ) -> Result<bool> {
        let entries = entries.inspect_err(|e| self.on_journal_error(e))?;
        let state = SagaState::fold(id, &entries)?;
        if let Some(o) = &state.outcome {
            // Finished but not marked (crash between the two): mark it now.
            self.inner.journal.mark_finished(id).await?;
            return Err(Error::AlreadyFinished {
                saga: id,
                outcome: o.label().into(),
            });
        }
        let def = self
            .definition(&state.plan, Some(id))
            .or_else(|_| self.definition(&state.input.kind, Some(id)))?;
        let in_doubt = state.in_doubt().is_some();
        let slot = self
            .reserve(id, &state.input.order)
            .ok_or(Error::AlreadyRunning { saga: id })?;
        // A saga that is only waiting for its refund goes straight to a park
        // (no task until its first poll): recovering 100,000 waiting sagas
        // must not hold 100,000 tasks at once.
        if !in_doubt && matches!(def.decide(&state), Decision::AwaitRefund { .. }) {
            let limits = &self.inner.limits;
            let delay = limits.refund_poll_initial_ms.max(1);
            if delay >= limits.park_after_ms {
                let now = self.inner.clock.now_ms();
                let wake_at_ms = now.saturating_add(delay);
                let progress = WaitProgress {
                    started_ms: now,
                    delay_ms: delay,
                    next_poll_at_ms: Some(wake_at_ms),
                };
                self.park(id, &slot, wake_at_ms, progress);
                return Ok(false);
            }
        }
        self.launch(state, def, slot, None);
        Ok(in_doubt)
    }

    /// Ask a saga to abort. Running here: delivered to its task, which
    /// journals the request at its next decision and compensates (an opened
    /// refund is withdrawn). Not running: the request is journaled now and the
    /// saga resumed to carry it out.
    pub async fn abort(&self, id: SagaId, reason: impl Into<String>) -> Result<()> {
        let reason = reason.into();
        let running = lock(&self.inner.running).get(&id).cloned();
        if let Some(r) = running {
            lock(&r.mailbox).push(Msg::Abort(reason));
            r.notify.notify_one();
            self.wake(id, &r);
            return Ok(());
        }
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
            record: Record::AbortRequested { reason },
        };
        self.inner.journal.append(id, &entry).await?;
        self.resume(id).await?;
        Ok(())
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
        let state = self.load(id).await?;
        if let Some(o) = &state.outcome {
            return Err(Error::AlreadyFinished {
                saga: id,
                outcome: o.label().into(),
            });
        }
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
        let entry = Entry {
            seq: state.last_seq + 1,
            at_ms: self.inner.clock.now_ms(),
            record: Record::Resolved {
                step: resolution.step,
                outcome,
                operator: resolution.operator,
                reason: resolution.reason,
            },
        };
        let mut check = state.clone();
        check.apply(&entry)?;
        self.inner.journal.append(id, &entry).await?;
        self.resume(id).await?;
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
            // A parked saga has no task to notify: run it again.
            self.wake(*id, r);
        }
        targets.len()
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

    /// Claim the saga's slot in this engine: at most one task per saga.
    /// `None` when it is already running (or being started) here.
    fn reserve(&self, id: SagaId, order: &OrderRef) -> Option<Arc<Running>> {
        let mut running = lock(&self.inner.running);
        if running.contains_key(&id) {
            return None;
        }
        let r = Arc::new(Running {
            order: order.clone(),
            mailbox: Mutex::new(Vec::new()),
            notify: Notify::new(),
            done: Mutex::new(None),
            done_changed: Notify::new(),
            task: Mutex::new(None),
            last_error: Mutex::new(None),
            parked: Mutex::new(None),
        });
        running.insert(id, r.clone());
        Some(r)
    }

    /// Give a reserved slot back (the start failed before any task ran).
    fn unreserve(&self, id: SagaId, r: &Arc<Running>) {
        let mut running = lock(&self.inner.running);
        if running.get(&id).is_some_and(|x| Arc::ptr_eq(x, r)) {
            running.remove(&id);
        }
    }

    fn launch(
        &self,
        state: SagaState,
        def: Arc<dyn SagaDefinition>,
        running: Arc<Running>,
        wait: Option<WaitProgress>,
    ) {
        let id = state.id;
        let span = tracing::info_span!(
            "saga",
            saga = %id,
            kind = %state.input.kind,
            order = %state.input.order.order_id,
            channel = %state.input.order.channel,
        );
        let engine = self.clone();
        let r2 = running.clone();
        let handle = tokio::spawn(
            async move {
                match engine.drive(state, def, &r2, wait).await {
                    TaskEnd::Exit(exit) => {
                        match &exit {
                            SagaExit::Finished(o) => engine.inner.stats.finished(o),
                            SagaExit::Stuck { .. } => engine.inner.stats.stuck(),
                            SagaExit::Stopped { .. } => {}
                        }
                        engine.unreserve(id, &r2);
                        r2.finish_with(Some(exit));
                    }
                    TaskEnd::Park {
                        wake_at_ms,
                        progress,
                    } => engine.park(id, &r2, wake_at_ms, progress),
                }
            }
            .instrument(span),
        );
        *lock(&running.task) = Some(handle.abort_handle());
        if self.inner.stopping.load(Ordering::Acquire)
            && !lock(&self.inner.running).contains_key(&id)
        {
            handle.abort();
        }
    }

    /// The saga waits without a task: its slot stays reserved (so recovery
    /// leaves it alone and `deliver`/`abort` find it), its state is dropped
    /// (everything is durable), and a timer wakes it.
    fn park(&self, id: SagaId, r: &Arc<Running>, wake_at_ms: u64, progress: WaitProgress) {
        *lock(&r.task) = None;
        *lock(&r.parked) = Some(progress);
        lock(&self.inner.timers).insert((wake_at_ms, id));
        self.ensure_timer();
        self.inner.timers_changed.notify_one();
        // News or an abort that arrived while it was parking: wake it now.
        if !lock(&r.mailbox).is_empty() {
            self.wake(id, r);
        }
    }

    /// Run a parked saga again: re-read it from the journal and continue its
    /// wait where it stood. No-op unless it is parked (so exactly one waker wins).
    fn wake(&self, id: SagaId, r: &Arc<Running>) {
        let Some(progress) = lock(&r.parked).take() else {
            return;
        };
        let engine = self.clone();
        let r = r.clone();
        tokio::spawn(async move {
            let loaded = async {
                let entries = engine.inner.journal.read(id).await?;
                let state = SagaState::fold(id, &entries)?;
                let def = engine
                    .definition(&state.plan, Some(id))
                    .or_else(|_| engine.definition(&state.input.kind, Some(id)))?;
                Ok::<_, Error>((state, def))
            }
            .await;
            match loaded {
                Ok((state, def)) => engine.launch(state, def, r, Some(progress)),
                Err(e) => {
                    if let Error::Journal(j) = &e {
                        engine.on_journal_error(j);
                    }
                    engine.unreserve(id, &r);
                    r.finish_with(Some(SagaExit::Stopped {
                        reason: format!("could not wake the parked saga: {e}"),
                    }));
                }
            }
        });
    }

    fn ensure_timer(&self) {
        if self.inner.timer_task.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.timer_loop().await });
    }

    /// Wakes parked sagas when their time comes. Ends when the engine stops.
    async fn timer_loop(self) {
        loop {
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = self.inner.clock.now_ms();
            let (due, next) = {
                let mut timers = lock(&self.inner.timers);
                let mut due = Vec::new();
                while let Some(&(t, id)) = timers.first() {
                    if t > now {
                        break;
                    }
                    timers.pop_first();
                    due.push(id);
                }
                (due, timers.first().map(|(t, _)| *t))
            };
            for id in due {
                let r = lock(&self.inner.running).get(&id).cloned();
                if let Some(r) = r {
                    self.wake(id, &r);
                }
            }
            let changed = self.inner.timers_changed.notified();
            match next {
                Some(t) => {
                    tokio::select! {
                        biased;
                        _ = changed => {}
                        _ = self.inner.clock.sleep(Duration::from_millis(t.saturating_sub(now))) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Fold a record into the saga and queue it for the next flush. Records
    /// are made durable by [`Engine::flush`] before anything depends on them:
    /// before the next external call, before a wait, and at the end — so a
    /// step's outcome shares its flush with the next intent (write-ahead still
    /// holds: nothing is called upstream on an outcome that is not durable; a
    /// crash before the flush leaves the step in doubt, resolved by lookup).
    fn stage(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        record: Record,
    ) -> std::result::Result<(), DriveStop> {
        let entry = Entry {
            seq: state.last_seq + 1,
            at_ms: self.inner.clock.now_ms(),
            record,
        };
        state
            .apply(&entry)
            .map_err(|e| DriveStop::Stuck(format!("journal does not fold: {e}")))?;
        pending.push(entry);
        Ok(())
    }

    /// Make the staged records durable (and, with `finish`, mark the saga finished).
    async fn flush(
        &self,
        state: &SagaState,
        pending: &mut Vec<Entry>,
        finish: bool,
    ) -> std::result::Result<(), DriveStop> {
        if pending.is_empty() && !finish {
            return Ok(());
        }
        let written = if pending.len() == 1 && !finish {
            self.inner.journal.append(state.id, &pending[0]).await
        } else {
            self.inner
                .journal
                .append_batch(state.id, pending, finish)
                .await
        };
        if let Err(e) = written {
            self.on_journal_error(&e);
            return Err(e.into());
        }
        pending.clear();
        Ok(())
    }

    /// An in-flight slot. Invariant: the semaphore is never closed (nothing
    /// calls `close`). Were it broken, the saga stops (it resumes on the next
    /// recovery) rather than run without a slot or panic.
    async fn acquire(&self) -> std::result::Result<OwnedSemaphorePermit, DriveStop> {
        let permit = self.inner.permits.clone().acquire_owned().await;
        debug_assert!(permit.is_ok(), "the in-flight semaphore is never closed");
        permit.map_err(|_| DriveStop::Stopped("the in-flight semaphore was closed".into()))
    }

    async fn drive(
        &self,
        mut state: SagaState,
        def: Arc<dyn SagaDefinition>,
        me: &Running,
        mut wait: Option<WaitProgress>,
    ) -> TaskEnd {
        // A saga woken from a park goes straight back to its wait: no slot.
        let mut permit = match wait {
            Some(_) => None,
            None => match self.acquire().await {
                Ok(p) => Some(p),
                Err(DriveStop::Stopped(reason) | DriveStop::Stuck(reason)) => {
                    return TaskEnd::Exit(SagaExit::Stopped { reason })
                }
            },
        };
        let mut pending = Vec::new();
        loop {
            match self
                .drive_once(&mut state, &def, me, &mut permit, &mut pending, &mut wait)
                .await
            {
                Ok(Some(end)) => return end,
                Ok(None) => continue,
                Err(DriveStop::Stopped(reason)) => {
                    // A graceful stop keeps what was learned (best effort: after
                    // a journal failure this fails too, and recovery looks up).
                    let _ = self.flush(&state, &mut pending, false).await;
                    return TaskEnd::Exit(SagaExit::Stopped { reason });
                }
                Err(DriveStop::Stuck(reason)) => {
                    let staged = self.stage(
                        &mut state,
                        &mut pending,
                        Record::Stuck {
                            reason: reason.clone(),
                        },
                    );
                    if staged.is_ok() {
                        let _ = self.flush(&state, &mut pending, false).await;
                    }
                    tracing::warn!(%reason, "saga stuck");
                    return TaskEnd::Exit(SagaExit::Stuck { reason });
                }
            }
        }
    }

    async fn drive_once(
        &self,
        state: &mut SagaState,
        def: &Arc<dyn SagaDefinition>,
        me: &Running,
        permit: &mut Option<OwnedSemaphorePermit>,
        pending: &mut Vec<Entry>,
        wait: &mut Option<WaitProgress>,
    ) -> std::result::Result<Option<TaskEnd>, DriveStop> {
        if let Some(outcome) = state.outcome.clone() {
            self.flush(state, pending, true).await?;
            return Ok(Some(TaskEnd::Exit(SagaExit::Finished(outcome))));
        }
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(DriveStop::Stopped("engine stopping".into()));
        }
        // Operator aborts are journaled by the saga's own task, in sequence.
        let aborts: Vec<String> = {
            let mut mb = lock(&me.mailbox);
            let mut out = Vec::new();
            mb.retain(|m| match m {
                Msg::Abort(r) => {
                    out.push(r.clone());
                    false
                }
                Msg::Observed(_) => true,
            });
            out
        };
        for reason in aborts {
            if state.abort.is_none() {
                self.stage(state, pending, Record::AbortRequested { reason })?;
            }
        }
        if let Some(step) = state.in_doubt().cloned() {
            self.inner.stats.in_doubt();
            self.flush(state, pending, false).await?;
            let (outcome, via, attempts) = self
                .perform(state, step.step, &step.action, true, me)
                .await?;
            let record = Record::Outcome {
                step: step.step,
                outcome,
                via,
                attempts,
            };
            self.stage(state, pending, record)?;
            return Ok(None);
        }
        match def.decide(state) {
            Decision::Act(action) => {
                let step = state.next_step();
                let intent = Record::Intent {
                    step,
                    action: action.clone(),
                };
                self.stage(state, pending, intent)?;
                // Write-ahead: the intent (with the previous outcome) is durable
                // before the call.
                self.flush(state, pending, false).await?;
                let (outcome, via, attempts) =
                    self.perform(state, step, &action, false, me).await?;
                let record = Record::Outcome {
                    step,
                    outcome,
                    via,
                    attempts,
                };
                self.stage(state, pending, record)?;
            }
            Decision::Switch { to, reason } => {
                tracing::info!(to = %to, %reason, "saga switches plan");
                self.stage(state, pending, Record::Switched { to, reason })?;
            }
            Decision::Finish(SagaOutcome::Failed { reason })
                if !self.inner.protections.fail_with_work_owed && !state.owed().is_empty() =>
            {
                // Never `failed` with work owed after an irreversible step.
                let owed = state.owed_words().unwrap_or_default();
                return Err(DriveStop::Stuck(format!(
                    "{reason}; not ending failed: work is still owed ({owed}); \
                     fix the cause and resume, or resolve or abort the saga"
                )));
            }
            Decision::Finish(outcome) => {
                let record = Record::Finished {
                    outcome: outcome.clone(),
                };
                self.stage(state, pending, record)?;
                // The last outcome, Finished and the finish mark: one write.
                self.flush(state, pending, true).await?;
                return Ok(Some(TaskEnd::Exit(SagaExit::Finished(outcome))));
            }
            Decision::AwaitRefund { refund_id } => {
                self.flush(state, pending, false).await?;
                // A waiting saga gives up its in-flight slot.
                *permit = None;
                let mut progress = wait.take().unwrap_or_else(|| WaitProgress {
                    started_ms: self.inner.clock.now_ms(),
                    delay_ms: self.inner.limits.refund_poll_initial_ms.max(1),
                    next_poll_at_ms: None,
                });
                if let Some(wake_at_ms) = self
                    .await_refund(state, pending, &refund_id, me, &mut progress)
                    .await?
                {
                    self.flush(state, pending, false).await?;
                    return Ok(Some(TaskEnd::Park {
                        wake_at_ms,
                        progress,
                    }));
                }
                *permit = Some(self.acquire().await?);
            }
        }
        Ok(None)
    }

    /// Run one step through its [`StepMachine`]: the machine decides, this
    /// executes its effects (call, lookup, sleep) and reports back.
    async fn perform(
        &self,
        state: &SagaState,
        step: u32,
        action: &Action,
        resumed_in_doubt: bool,
        me: &Running,
    ) -> std::result::Result<(StepOutcome, Via, u32), DriveStop> {
        let inner = &self.inner;
        // An operator who found the step not applied saves the lookup.
        let operator_not_applied = state
            .in_doubt()
            .and_then(|s| s.resolution.as_ref())
            .is_some_and(|n| !n.applied);
        let owed = match inner.protections.fail_with_work_owed {
            true => None,
            false => state.owed_words(),
        };
        let spec = StepSpec {
            label: format!("step {step} ({})", action.name()),
            already_done: action.kind().already_done(),
            owed,
            in_doubt: resumed_in_doubt && !operator_not_applied,
            look_up: !inner.protections.skip_in_doubt_lookup,
            started_ms: inner.clock.now_ms(),
        };
        let mut machine = StepMachine::new(spec, &inner.limits);
        let ctx = Ctx {
            saga: state.id,
            reason: state.input.reason.as_deref(),
            channels: &inner.channels,
            executors: &inner.executors,
        };
        let mut event = StepEvent::Begin;
        loop {
            let effect = machine
                .step(event, inner.clock.now_ms(), inner.rng.as_ref())
                .map_err(|e| DriveStop::Stuck(e.to_string()))?;
            event = match effect {
                StepEffect::Call => StepEvent::Called(self.call(&ctx, action, step).await),
                StepEffect::Lookup => StepEvent::LookedUp(self.look_up(&ctx, action, step).await),
                StepEffect::Sleep { ms } => {
                    if let Some(e) = machine.last_error() {
                        *lock(&me.last_error) = Some(e.to_string());
                    }
                    inner.clock.sleep(Duration::from_millis(ms)).await;
                    if inner.stopping.load(Ordering::Acquire) {
                        return Err(DriveStop::Stopped("engine stopping".into()));
                    }
                    StepEvent::Woke
                }
                StepEffect::Done {
                    outcome,
                    via,
                    attempts,
                } => return Ok((outcome, via, attempts)),
                StepEffect::Stuck { reason } => return Err(DriveStop::Stuck(reason)),
            };
        }
    }

    /// One call of the action, bounded by `attempt_timeout_ms`.
    async fn call(
        &self,
        ctx: &Ctx<'_>,
        action: &Action,
        step: u32,
    ) -> std::result::Result<StepOutcome, ChannelError> {
        let t0 = self.inner.clock.now_ms();
        let span = tracing::info_span!("call", step, action = action.name());
        let result = self
            .with_timeout(action.kind().call(ctx))
            .instrument(span)
            .await;
        let stats = &self.inner.stats;
        stats.step_latency(self.inner.clock.now_ms().saturating_sub(t0));
        if let Err(e) = &result {
            if e.is_retryable() {
                tracing::debug!(error = %e, "retryable failure");
                stats.retry();
            }
        }
        result
    }

    /// One lookup of an in-doubt step, bounded by `attempt_timeout_ms`.
    async fn look_up(
        &self,
        ctx: &Ctx<'_>,
        action: &Action,
        step: u32,
    ) -> std::result::Result<Lookup, ChannelError> {
        let span = tracing::info_span!("resolve", step, action = action.name());
        let result = self
            .with_timeout(action.kind().lookup(ctx))
            .instrument(span)
            .await;
        match &result {
            Ok(Lookup::Applied(_)) => self.inner.stats.resolved_by_lookup(),
            Err(e) => tracing::debug!(error = %e, "in-doubt lookup failed"),
            Ok(_) => {}
        }
        result
    }

    async fn with_timeout<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<T, ChannelError>>,
    ) -> std::result::Result<T, ChannelError> {
        let ms = self.inner.limits.attempt_timeout_ms;
        tokio::select! {
            biased;
            r = fut => r,
            _ = self.inner.clock.sleep(Duration::from_millis(ms)) => Err(ChannelError::in_doubt(format!("no answer within {ms} ms"))),
        }
    }

    /// Wait for the refund to reach a final state: news delivered by a
    /// callback, or a poll with back-off. Returns `Some(wake_at_ms)` when the
    /// next poll is far enough away (`park_after_ms`) that the saga should
    /// park instead of holding a task; `None` when it should decide again
    /// (news staged, or an abort / a stop arrived).
    async fn await_refund(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        refund_id: &RefundId,
        me: &Running,
        progress: &mut WaitProgress,
    ) -> std::result::Result<Option<u64>, DriveStop> {
        let limits = &self.inner.limits;
        let order = state.input.order.clone();
        loop {
            // News delivered by callbacks first: any that moves the refund.
            // News that cannot move it (stale, or another refund's) is dropped.
            let (news, abort) = {
                let mut mb = lock(&me.mailbox);
                mb.retain(|m| match m {
                    Msg::Abort(_) => true,
                    Msg::Observed(Observation::Refund {
                        refund_id: r,
                        status,
                        ..
                    }) => r == refund_id && status.state.is_terminal(),
                    Msg::Observed(Observation::Order { .. }) => false,
                });
                let news = mb.iter().find_map(|m| match m {
                    Msg::Observed(o) => Some(o.clone()),
                    Msg::Abort(_) => None,
                });
                (news, mb.iter().any(|m| matches!(m, Msg::Abort(_))))
            };
            if let Some(obs) = news {
                lock(&me.mailbox).retain(|m| !matches!(m, Msg::Observed(_)));
                let record = Record::Observed {
                    observation: obs,
                    via: Via::Callback,
                };
                self.stage(state, pending, record)?;
                return Ok(None);
            }
            if abort || self.inner.stopping.load(Ordering::Acquire) {
                return Ok(None);
            }
            let now = self.inner.clock.now_ms();
            let waited = now.saturating_sub(progress.started_ms);
            if waited >= limits.refund_wait_max_ms {
                return Err(DriveStop::Stuck(format!(
                    "refund {refund_id} not final after {waited} ms of waiting"
                )));
            }
            let due_at = *progress
                .next_poll_at_ms
                .get_or_insert(now.saturating_add(progress.delay_ms));
            if now < due_at {
                let remaining = due_at - now;
                if remaining >= limits.park_after_ms {
                    return Ok(Some(due_at));
                }
                tokio::select! {
                    biased;
                    _ = me.notify.notified() => continue,
                    _ = self.inner.clock.sleep(Duration::from_millis(remaining)) => {}
                }
            }
            progress.next_poll_at_ms = None;
            progress.delay_ms = progress
                .delay_ms
                .saturating_mul(2)
                .min(limits.refund_poll_max_ms.max(1));
            if let Some(lookup) = self.inner.channels.lookup(&order.channel) {
                match self
                    .with_timeout(lookup.refund_status(&order, refund_id))
                    .await
                {
                    Ok(status) if status.state.is_terminal() => {
                        let obs = Observation::Refund {
                            order: order.clone(),
                            refund_id: refund_id.clone(),
                            status,
                        };
                        let record = Record::Observed {
                            observation: obs,
                            via: Via::Poll,
                        };
                        self.stage(state, pending, record)?;
                        return Ok(None);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "refund poll failed"),
                }
            }
        }
    }
}
