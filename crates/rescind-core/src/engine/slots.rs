//! Which sagas live in this process: one slot per saga (reserved before its
//! first record exists), tasks, parking, and the timer that wakes parked
//! sagas. Invariant: at most one task per saga; a parked saga keeps its slot
//! and no task.

use super::*;

impl Engine {
    /// Claim the saga's slot in this engine: at most one task per saga.
    /// `None` when it is already running (or being started) here.
    pub(super) fn reserve(&self, id: SagaId, order: &OrderRef) -> Option<Arc<Running>> {
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
    pub(super) fn unreserve(&self, id: SagaId, r: &Arc<Running>) {
        let mut running = lock(&self.inner.running);
        if running.get(&id).is_some_and(|x| Arc::ptr_eq(x, r)) {
            running.remove(&id);
        }
    }

    pub(super) fn launch(
        &self,
        state: SagaState,
        def: Arc<dyn SagaDefinition>,
        running: Arc<Running>,
        wait: Option<WaitProgress>,
    ) {
        let id = state.id;
        // What this run is: a new saga, one resumed from the journal (a
        // restart, an operator's resume), or one woken from a park.
        let run = match (&wait, state.last_seq) {
            (Some(_), _) => "wake",
            (None, 0) => "start",
            (None, _) => "resume",
        };
        // The root of the run's trace (`parent: None`: never a child of
        // whatever span started it); steps and their calls are its children.
        let span = tracing::info_span!(
            parent: None,
            "saga",
            saga = %id,
            kind = %state.input.kind,
            // Escaped: an id with control characters cannot forge a log line.
            order = %state.input.order.order_id.as_str().escape_debug(),
            channel = %state.input.order.channel.as_str().escape_debug(),
            run,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let saga_span = span.clone();
        let engine = self.clone();
        let r2 = running.clone();
        // A saga that runs again is no longer stuck (it may become so again).
        let mut was_stuck = state.stuck.is_some();
        if self.inner.stuck_len.load(Ordering::Relaxed) > 0 {
            let mut stuck = lock(&self.inner.stuck);
            was_stuck |= stuck.remove(&id);
            self.inner.stuck_len.store(stuck.len(), Ordering::Relaxed);
        }
        if was_stuck {
            self.observe(id, &state.input, SagaChange::Unstuck);
        }
        let input = self.observed().then(|| state.input.clone());
        let kind = state.input.kind.clone();
        let started_at_ms = state.started_at_ms;
        let handle = tokio::spawn(
            async move {
                match engine.drive(state, def, &r2, wait).await {
                    TaskEnd::Exit(exit) => {
                        let end = match &exit {
                            SagaExit::Finished(o) => {
                                engine.inner.stats.finished(o);
                                Some(SagaEnd::of(o))
                            }
                            SagaExit::Stuck { .. } => {
                                engine.inner.stats.stuck();
                                let mut stuck = lock(&engine.inner.stuck);
                                stuck.insert(id);
                                engine.inner.stuck_len.store(stuck.len(), Ordering::Relaxed);
                                Some(SagaEnd::Stuck)
                            }
                            SagaExit::Stopped { .. } => None,
                        };
                        if let Some(input) = &input {
                            match &exit {
                                SagaExit::Finished(o) => {
                                    engine.observe(id, input, SagaChange::Finished(o))
                                }
                                SagaExit::Stuck { reason } => {
                                    engine.observe(id, input, SagaChange::Stuck { reason })
                                }
                                SagaExit::Stopped { .. } => {}
                            }
                        }
                        saga_span.record("outcome", end.map_or("stopped", SagaEnd::as_str));
                        if matches!(end, Some(SagaEnd::Failed | SagaEnd::Stuck)) {
                            saga_span.record("otel.status_code", "error");
                        }
                        if let Some(end) = end {
                            engine.emit(MetricEvent::SagaEnded {
                                kind: kind.as_str(),
                                channel: r2.order.channel.as_str(),
                                end,
                                duration_ms: engine
                                    .inner
                                    .clock
                                    .now_ms()
                                    .saturating_sub(started_at_ms),
                            });
                        }
                        engine.unreserve(id, &r2);
                        r2.finish_with(Some(exit));
                    }
                    TaskEnd::Park { wake_at_ms, parked } => {
                        saga_span.record("outcome", "parked");
                        engine.park(id, &r2, wake_at_ms, parked)
                    }
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
    pub(super) fn park(&self, id: SagaId, r: &Arc<Running>, wake_at_ms: u64, parked: Parked) {
        self.park_as(id, r, wake_at_ms, parked, false)
    }

    /// [`Engine::park`]; `quiet`: do not wake the timer loop (recovery
    /// parks a batch, then wakes it once).
    pub(super) fn park_as(
        &self,
        id: SagaId,
        r: &Arc<Running>,
        mut wake_at_ms: u64,
        mut parked: Parked,
        quiet: bool,
    ) {
        *lock(&r.task) = None;
        // Planned on the push interval, but the push source lapsed while the
        // saga was parking: back to the back-off schedule.
        if let Parked::Refund(progress) = &mut parked {
            if progress.push_scheduled && !self.is_push_live(&r.order.channel) {
                progress.push_scheduled = false;
                let at = self.inner.clock.now_ms().saturating_add(progress.delay_ms);
                if at < wake_at_ms {
                    wake_at_ms = at;
                    progress.next_poll_at_ms = Some(at);
                }
            }
        }
        // News wakes a saga parked on its refund; a deferred step keeps news
        // for later (its wait reads it after the step) and wakes only for an
        // abort.
        let wake_on_mail = match parked {
            Parked::Refund(_) => true,
            Parked::Step => false,
        };
        if lock(&r.parked).replace(parked).is_none() {
            self.inner.parked.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.inner.timers).insert((wake_at_ms, id));
        self.ensure_timer();
        if !quiet {
            self.inner.timers_changed.notify_one();
        }
        // News or an abort that arrived while it was parking: wake it now.
        let wake_now = {
            let mail = lock(&r.mailbox);
            match wake_on_mail {
                true => !mail.is_empty(),
                false => mail.iter().any(|m| matches!(m, Msg::Abort(..))),
            }
        };
        if wake_now {
            self.wake(id, r);
        }
    }

    /// Run a parked saga again: re-read it from the journal and continue its
    /// wait where it stood. No-op unless it is parked (so exactly one waker wins).
    pub(super) fn wake(&self, id: SagaId, r: &Arc<Running>) {
        let Some(parked) = lock(&r.parked).take() else {
            return;
        };
        // A refund wait continues where it stood; a deferred step starts
        // its turn again (with a slot) from the journal.
        let progress = match parked {
            Parked::Refund(p) => Some(p),
            Parked::Step => None,
        };
        self.inner.parked.fetch_sub(1, Ordering::Relaxed);
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
                Ok((state, def)) => engine.launch(state, def, r, progress),
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

    pub(super) fn ensure_timer(&self) {
        if self.inner.timer_task.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move { engine.timer_loop().await });
    }

    /// Wakes parked sagas when their time comes. Ends when the engine stops.
    pub(super) async fn timer_loop(self) {
        loop {
            if self.inner.stopping.load(Ordering::Acquire) {
                return;
            }
            let now = self.inner.clock.now_ms();
            let push_next = self.expire_push(now);
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
                let next = timers.first().map(|(t, _)| *t);
                let next = match (next, push_next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (due, next)
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
}
