//! The write-ahead drive loop of one saga task: journal the intent, run the
//! step through its [`StepMachine`], stage the outcome, and make staged
//! records durable before anything depends on them.

use super::*;

/// The span of one upstream call or lookup (`$name`): a child of the step
/// span; its outcome and error code are recorded when it returns.
macro_rules! upstream_span {
    ($name:literal, $saga:expr, $channel:expr, $action:expr, $step:expr, $attempt:expr) => {
        tracing::info_span!(
            $name,
            saga = %$saga,
            // Integers as i64: OpenTelemetry has no unsigned attribute.
            step = i64::from($step),
            action = $action.name(),
            channel = %$channel.escape_debug(),
            attempt = i64::from($attempt),
            outcome = tracing::field::Empty,
            error_code = tracing::field::Empty,
            error_sub_code = tracing::field::Empty,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        )
    };
}

impl Engine {
    /// Fold a record into the saga and queue it for the next flush. Records
    /// are made durable by [`Engine::flush`] before anything depends on them:
    /// before the next external call, before a wait, and at the end — so a
    /// step's outcome shares its flush with the next intent (write-ahead still
    /// holds: nothing is called upstream on an outcome that is not durable; a
    /// crash before the flush leaves the step in doubt, resolved by lookup).
    pub(super) fn stage(
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
    pub(super) async fn flush(
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
    pub(super) async fn acquire(&self) -> std::result::Result<OwnedSemaphorePermit, DriveStop> {
        let permit = self.inner.permits.clone().acquire_owned().await;
        debug_assert!(permit.is_ok(), "the in-flight semaphore is never closed");
        permit.map_err(|_| DriveStop::Stopped("the in-flight semaphore was closed".into()))
    }

    pub(super) async fn drive(
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
                Err(
                    DriveStop::Stopped(reason)
                    | DriveStop::Stuck(reason)
                    | DriveStop::Deferred { reason, .. },
                ) => return TaskEnd::Exit(SagaExit::Stopped { reason }),
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
                Err(DriveStop::Deferred {
                    step,
                    until_ms,
                    reason,
                }) => {
                    // The wait is journaled before the saga parks: a restart
                    // keeps it, and the step is sent again without a lookup.
                    let record = Record::Deferred {
                        step,
                        until_ms,
                        reason: reason.clone(),
                    };
                    let written = match self.stage(&mut state, &mut pending, record) {
                        Ok(()) => self.flush(&state, &mut pending, false).await,
                        Err(e) => Err(e),
                    };
                    if let Err(DriveStop::Stopped(r) | DriveStop::Stuck(r)) = written {
                        return TaskEnd::Exit(SagaExit::Stopped { reason: r });
                    }
                    tracing::info!(step, until_ms, %reason, "step deferred: the saga parks until its channel takes calls again");
                    return TaskEnd::Park {
                        wake_at_ms: until_ms,
                        parked: Parked::Step,
                    };
                }
                Err(DriveStop::Stuck(reason)) => {
                    let reason = name_account(reason, state.input.account.as_ref());
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

    /// One turn of the loop: settle an in-doubt step, or ask the definition
    /// and carry out its decision. `Some` ends the task.
    pub(super) async fn drive_once(
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
        self.journal_aborts(state, pending, me)?;
        if let Some((step, until_ms)) = state
            .in_doubt()
            .and_then(|s| Some((s.clone(), s.deferred_until_ms?)))
        {
            // Deferred: certainly not applied; wait out the deferral (parked
            // when it is long), then send it again under a fresh intent.
            let now = self.inner.clock.now_ms();
            if until_ms > now {
                self.flush(state, pending, false).await?;
                if until_ms - now >= self.inner.limits.park_after_ms {
                    return Ok(Some(TaskEnd::Park {
                        wake_at_ms: until_ms,
                        parked: Parked::Step,
                    }));
                }
                self.inner
                    .clock
                    .sleep(Duration::from_millis(until_ms - now))
                    .await;
            }
            let intent = Record::Intent {
                step: step.step,
                action: step.action.clone(),
            };
            self.stage(state, pending, intent)?;
            self.flush(state, pending, false).await?;
            self.run_step(state, pending, step.step, &step.action, false, me, permit)
                .await?;
            return Ok(None);
        }
        if let Some(step) = state.in_doubt().cloned() {
            self.inner.stats.in_doubt();
            self.flush(state, pending, false).await?;
            self.run_step(state, pending, step.step, &step.action, true, me, permit)
                .await?;
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
                self.run_step(state, pending, step, &action, false, me, permit)
                    .await?;
                Ok(None)
            }
            Decision::Switch { to, reason } => {
                tracing::info!(to = %to, %reason, "saga switches plan");
                self.stage(state, pending, Record::Switched { to, reason })?;
                Ok(None)
            }
            Decision::Finish(outcome) => self.finish(state, pending, outcome).await,
            Decision::AwaitRefund { refund_id } => {
                self.flush(state, pending, false).await?;
                // A waiting saga gives up its in-flight slot.
                *permit = None;
                let end = self
                    .wait_for_refund(state, pending, &refund_id, me, wait)
                    .await?;
                if end.is_none() {
                    *permit = Some(self.acquire().await?);
                }
                Ok(end)
            }
        }
    }

    /// Operator aborts are journaled by the saga's own task, in sequence.
    fn journal_aborts(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        me: &Running,
    ) -> std::result::Result<(), DriveStop> {
        let aborts: Vec<(String, Option<String>)> = {
            let mut mb = lock(&me.mailbox);
            let mut out = Vec::new();
            mb.retain(|m| match m {
                Msg::Abort(r, by) => {
                    out.push((r.clone(), by.clone()));
                    false
                }
                Msg::Observed(_) => true,
            });
            out
        };
        for (reason, by) in aborts {
            if state.abort.is_none() {
                self.stage(state, pending, Record::AbortRequested { reason, by })?;
            }
        }
        Ok(())
    }

    /// Perform a step and stage its outcome.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        step: u32,
        action: &Action,
        resumed_in_doubt: bool,
        me: &Running,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> std::result::Result<(), DriveStop> {
        let channel = action
            .channel()
            .unwrap_or(state.input.order.channel.as_str());
        // The step span: a child of the saga span, parent of its calls and
        // lookups (traces: docs/operations.md, "Traces (OpenTelemetry)").
        let span = tracing::info_span!(
            "step",
            saga = %state.id,
            // Integers as i64: OpenTelemetry has no unsigned attribute.
            step = i64::from(step),
            action = action.name(),
            channel = %channel.escape_debug(),
            in_doubt = resumed_in_doubt,
            attempts = tracing::field::Empty,
            outcome = tracing::field::Empty,
            via = tracing::field::Empty,
            error_code = tracing::field::Empty,
            error_sub_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let performed = self
            .perform(state, step, action, resumed_in_doubt, me, permit)
            .instrument(span.clone())
            .await;
        match &performed {
            Ok((outcome, via, attempts)) => {
                span.record("attempts", i64::from(*attempts));
                span.record("outcome", outcome_name(outcome));
                span.record("via", via_name(*via));
                if let StepOutcome::Failed { error } = outcome {
                    record_error(&span, error);
                }
            }
            Err(DriveStop::Stuck(_)) => {
                span.record("outcome", "stuck");
                span.record("otel.status_code", "error");
            }
            Err(DriveStop::Stopped(_)) => {
                span.record("outcome", "stopped");
            }
            Err(DriveStop::Deferred { .. }) => {
                span.record("outcome", "deferred");
            }
        }
        let (outcome, via, attempts) = performed?;
        let record = Record::Outcome {
            step,
            outcome,
            via,
            attempts,
        };
        self.stage(state, pending, record)
    }

    /// End the saga: `Finished` and the finish mark share one write. A
    /// failure while work is owed after an irreversible step is refused:
    /// the saga is stuck instead, for an operator.
    async fn finish(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        outcome: SagaOutcome,
    ) -> std::result::Result<Option<TaskEnd>, DriveStop> {
        if let SagaOutcome::Failed { reason } = &outcome {
            if let Some(owed) = state.owed_words() {
                if !self.inner.protections.fail_with_work_owed {
                    return Err(DriveStop::Stuck(format!(
                        "{reason}; not ending failed: work is still owed ({owed}); \
                         fix the cause and resume, or resolve or abort the saga"
                    )));
                }
            }
        }
        let record = Record::Finished {
            outcome: outcome.clone(),
        };
        self.stage(state, pending, record)?;
        self.flush(state, pending, true).await?;
        Ok(Some(TaskEnd::Exit(SagaExit::Finished(outcome))))
    }

    /// Run one step through its [`StepMachine`]: the machine decides, this
    /// executes its effects (call, lookup, sleep) and reports back. A sleep of
    /// `park_after_ms` or more (a channel's ban, a long back-off) gives the
    /// in-flight slot back for its length, so waiting sagas never starve
    /// the others, and counts in `waiting_on_channel` (`/stats`).
    pub(super) async fn perform(
        &self,
        state: &SagaState,
        step: u32,
        action: &Action,
        resumed_in_doubt: bool,
        me: &Running,
        permit: &mut Option<OwnedSemaphorePermit>,
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
        // Tries deferred earlier (bans) count, and the deadline runs from
        // the step's first intent.
        let open = state
            .steps
            .last()
            .filter(|s| s.step == step && s.outcome.is_none());
        let prior_rounds = open.map_or(0, |s| s.deferrals);
        let now = inner.clock.now_ms();
        let spec = StepSpec {
            label: format!("step {step} ({})", action.name()),
            already_done: action.kind().already_done(),
            owed,
            in_doubt: resumed_in_doubt && !operator_not_applied,
            look_up: !inner.protections.skip_in_doubt_lookup,
            started_ms: match open {
                Some(s) if prior_rounds > 0 => s.opened_at_ms.min(now),
                _ => now,
            },
            prior_rounds,
        };
        let mut machine = StepMachine::new(spec, &inner.limits);
        let ctx = Ctx {
            saga: state.id,
            reason: state.input.reason.as_deref(),
            account: state.input.account.as_ref(),
            channels: &inner.channels,
            executors: &inner.executors,
        };
        let channel = action
            .channel()
            .unwrap_or(state.input.order.channel.as_str());
        let mut event = StepEvent::Begin;
        // Calls and lookups sent by this run of the step, for their spans.
        let (mut calls, mut lookups) = (0u32, 0u32);
        loop {
            let effect = machine
                .step(event, inner.clock.now_ms(), inner.rng.as_ref())
                .map_err(|e| DriveStop::Stuck(e.to_string()))?;
            event = match effect {
                StepEffect::Call => {
                    calls += 1;
                    StepEvent::Called(self.call(&ctx, channel, action, step, calls).await)
                }
                StepEffect::Lookup => {
                    lookups += 1;
                    StepEvent::LookedUp(self.look_up(&ctx, channel, action, step, lookups).await)
                }
                StepEffect::Sleep { ms } => {
                    if let Some(e) = machine.last_error() {
                        *lock(&me.last_error) = Some(e.to_string());
                    }
                    // A long wait the channel asked for after refusing to
                    // take the call (a ban): journaled, and spent parked.
                    if ms >= inner.limits.park_after_ms && machine.can_defer() {
                        return Err(DriveStop::Deferred {
                            step,
                            until_ms: inner.clock.now_ms().saturating_add(ms),
                            reason: machine
                                .last_error()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                        });
                    }
                    let long = ms >= inner.limits.park_after_ms && permit.is_some();
                    if long {
                        tracing::info!(
                            wait_ms = ms,
                            step,
                            error = ?machine.last_error().map(ToString::to_string),
                            "step waits for its channel; in-flight slot given back meanwhile"
                        );
                        *permit = None;
                    }
                    {
                        // Counted while it lasts, even if the task is aborted.
                        let _waiting = long.then(|| ChannelWait::new(&inner.stats));
                        inner.clock.sleep(Duration::from_millis(ms)).await;
                    }
                    if inner.stopping.load(Ordering::Acquire) {
                        return Err(DriveStop::Stopped("engine stopping".into()));
                    }
                    if long {
                        *permit = Some(self.acquire().await?);
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

    /// One call of the action (the step's `attempt`-th), bounded by
    /// `attempt_timeout_ms`.
    pub(super) async fn call(
        &self,
        ctx: &Ctx<'_>,
        channel: &str,
        action: &Action,
        step: u32,
        attempt: u32,
    ) -> std::result::Result<StepOutcome, ChannelError> {
        let t0 = self.inner.clock.now_ms();
        let span = upstream_span!("call", ctx.saga, channel, action, step, attempt);
        let result = self
            .with_timeout(action.kind().call(ctx))
            .instrument(span.clone())
            .await;
        span.record("outcome", CallResult::of(&result).as_str());
        if let Err(e) = &result {
            record_error(&span, e);
        }
        let stats = &self.inner.stats;
        let latency_ms = self.inner.clock.now_ms().saturating_sub(t0);
        stats.step_latency(latency_ms);
        if self.inner.metrics.is_some() {
            self.emit(MetricEvent::Call {
                channel,
                action: action.name(),
                result: CallResult::of(&result),
                latency_ms,
            });
            if let Err(e) = &result {
                self.emit_upstream_error(channel, e);
            }
        }
        if let Err(e) = &result {
            if e.is_retryable() {
                tracing::debug!(error = %e, "retryable failure");
                stats.retry();
            }
        }
        result
    }

    /// One lookup of an in-doubt step (the step's `attempt`-th), bounded by
    /// `attempt_timeout_ms`.
    pub(super) async fn look_up(
        &self,
        ctx: &Ctx<'_>,
        channel: &str,
        action: &Action,
        step: u32,
        attempt: u32,
    ) -> std::result::Result<Lookup, ChannelError> {
        let span = upstream_span!("lookup", ctx.saga, channel, action, step, attempt);
        let result = self
            .with_timeout(action.kind().lookup(ctx))
            .instrument(span.clone())
            .await;
        match &result {
            Ok(found) => {
                span.record("outcome", lookup_name(found));
            }
            Err(e) => {
                span.record("outcome", CallResult::of(&result).as_str());
                record_error(&span, e);
            }
        }
        match &result {
            Ok(Lookup::Applied(_)) => self.inner.stats.resolved_by_lookup(),
            Err(e) => {
                tracing::debug!(error = %e, "in-doubt lookup failed");
                self.emit_upstream_error(channel, e);
            }
            Ok(_) => {}
        }
        result
    }

    /// An upstream error, by the channel's code and sub-code. Errors of our
    /// own making (a timeout, a refused connection) carry no code.
    fn emit_upstream_error(&self, channel: &str, e: &ChannelError) {
        self.emit(MetricEvent::UpstreamError {
            channel,
            code: e.code.as_deref(),
            sub_code: e.sub_code.as_deref(),
        });
    }

    pub(super) async fn with_timeout<T>(
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
}

/// The channel's code and sub-code of a failure (none for errors of our own
/// making, such as a timeout), and the span's status: error.
pub(super) fn record_error(span: &tracing::Span, e: &ChannelError) {
    if let Some(code) = e.code.as_deref() {
        span.record("error_code", code.escape_debug().to_string());
    }
    if let Some(sub) = e.sub_code.as_deref() {
        span.record("error_sub_code", sub.escape_debug().to_string());
    }
    span.record("otel.status_code", "error");
}

/// A step outcome's name, as journaled (`cancelled`, `refund_opened`...).
fn outcome_name(o: &StepOutcome) -> &'static str {
    match o {
        StepOutcome::Cancelled { .. } => "cancelled",
        StepOutcome::RefundOpened { .. } => "refund_opened",
        StepOutcome::RefundWithdrawn { .. } => "refund_withdrawn",
        StepOutcome::StockReleased { .. } => "stock_released",
        StepOutcome::Conflict { .. } => "conflict",
        StepOutcome::Failed { .. } => "failed",
        StepOutcome::Custom { .. } => "custom",
    }
}

/// How an outcome became known, as journaled (`reply`, `lookup`...).
fn via_name(v: Via) -> &'static str {
    match v {
        Via::Reply => "reply",
        Via::Lookup => "lookup",
        Via::Poll => "poll",
        Via::Callback => "callback",
        Via::Operator => "operator",
    }
}

/// What a lookup found: `applied`, `moved`, `not_applied`, `unknown`.
fn lookup_name(l: &Lookup) -> &'static str {
    match l {
        Lookup::Applied(_) => "applied",
        Lookup::Moved(_) => "moved",
        Lookup::NotApplied => "not_applied",
        Lookup::Unknown => "unknown",
    }
}

/// A saga waiting for its channel without an in-flight slot, as `/stats`
/// counts it (`waiting_on_channel`), for as long as the guard lives.
struct ChannelWait<'a>(&'a crate::metrics::EngineStats);

impl<'a> ChannelWait<'a> {
    fn new(stats: &'a crate::metrics::EngineStats) -> Self {
        stats.channel_wait_began();
        ChannelWait(stats)
    }
}

impl Drop for ChannelWait<'_> {
    fn drop(&mut self) {
        self.0.channel_wait_ended();
    }
}

/// A credentials stop of a saga acting for an account names the account
/// first — `credentials: account shop-7: …` — so an operator (and a
/// credentials reload) can tell which account's sagas wait on it.
pub(crate) fn name_account(reason: String, account: Option<&crate::ids::AccountId>) -> String {
    match (account, reason.strip_prefix("credentials: ")) {
        (Some(a), Some(rest)) if !rest.starts_with("account ") => {
            format!("credentials: account {a}: {rest}")
        }
        _ => reason,
    }
}

/// The account a stuck reason says the saga waits on (`credentials: account X: …`).
pub fn credentials_account(reason: &str) -> Option<&str> {
    let rest = reason.strip_prefix("credentials: account ")?;
    rest.split_once(':').map(|(a, _)| a)
}
