//! Waiting for a refund to reach a final state: news delivered by a
//! callback, or a poll with back-off; a long wait parks the saga. While the
//! channel has a live push source ([`Engine::set_push_live`],
//! [`Engine::push_heartbeat`]) the poll is a slow fallback
//! (`refund_poll_with_push_ms`) instead of the back-off schedule.

use super::*;

impl Engine {
    /// Wait for the refund to reach a final state: news delivered by a
    /// callback, or a poll with back-off. Returns `Some(wake_at_ms)` when the
    /// next poll is far enough away (`park_after_ms`) that the saga should
    /// park instead of holding a task; `None` when it should decide again
    /// (news staged, or an abort / a stop arrived).
    /// Wait for the refund from where the wait stood (a park keeps it):
    /// `Some(Park)` when the next poll is far enough away that the saga
    /// should give up its task; `None` to decide again.
    pub(super) async fn wait_for_refund(
        &self,
        state: &mut SagaState,
        pending: &mut Vec<Entry>,
        refund_id: &RefundId,
        me: &Running,
        wait: &mut Option<WaitProgress>,
    ) -> std::result::Result<Option<TaskEnd>, DriveStop> {
        let mut progress = wait.take().unwrap_or_else(|| WaitProgress {
            started_ms: self.inner.clock.now_ms(),
            delay_ms: self.inner.limits.refund_poll_initial_ms.max(1),
            next_poll_at_ms: None,
            push_scheduled: false,
        });
        match self
            .await_refund(state, pending, refund_id, me, &mut progress)
            .await?
        {
            Some(wake_at_ms) => {
                self.flush(state, pending, false).await?;
                Ok(Some(TaskEnd::Park {
                    wake_at_ms,
                    parked: Parked::Refund(progress),
                }))
            }
            None => Ok(None),
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
        loop {
            let (news, abort) = take_news(me, refund_id);
            if let Some(observation) = self.confirm(state, refund_id, news).await? {
                let record = Record::Observed {
                    observation,
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
            let push = self.is_push_live(&state.input.order.channel);
            if progress.push_scheduled && !push {
                // The push source stopped: back to the back-off schedule.
                progress.next_poll_at_ms = None;
            }
            let due_at = match progress.next_poll_at_ms {
                Some(at) => at,
                None => {
                    // A live push source delivers the news; the poll is
                    // only the fallback, far away.
                    let delay = if push {
                        limits.refund_poll_with_push_ms.max(1)
                    } else {
                        progress.delay_ms
                    };
                    let at = now.saturating_add(delay);
                    progress.next_poll_at_ms = Some(at);
                    progress.push_scheduled = push;
                    at
                }
            };
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
            if !std::mem::take(&mut progress.push_scheduled) {
                progress.delay_ms = progress
                    .delay_ms
                    .saturating_mul(2)
                    .min(limits.refund_poll_max_ms.max(1));
            }
            if let Some(observation) = self.poll_refund(state, refund_id).await? {
                let record = Record::Observed {
                    observation,
                    via: Via::Poll,
                };
                self.stage(state, pending, record)?;
                return Ok(None);
            }
        }
    }

    /// Defence in depth: news that would end the refund (a callback saying
    /// SUCCESS or CLOSED) is confirmed by a lookup before the saga acts on
    /// it, so a forged or misrouted message cannot finish a saga. The
    /// lookup's answer is what is journaled. Unconfirmed news is dropped
    /// (the wait goes on, and polls); news on a channel without a lookup is
    /// taken as it is.
    async fn confirm(
        &self,
        state: &SagaState,
        refund_id: &RefundId,
        news: Option<Observation>,
    ) -> std::result::Result<Option<Observation>, DriveStop> {
        let Some(news) = news else {
            return Ok(None);
        };
        if self
            .inner
            .channels
            .lookup(&state.input.order.channel)
            .is_none()
        {
            return Ok(Some(news));
        }
        let confirmed = self.poll_refund(state, refund_id).await?;
        if confirmed.is_none() {
            tracing::warn!(refund = %refund_id, "a callback said the refund ended; a lookup does not confirm it: ignored");
        }
        Ok(confirmed)
    }

    /// One poll of the refund: its final state, or `None` (still open, no
    /// lookup, or a failure worth retrying). A poll refused for credentials
    /// makes the saga stuck, visibly, instead of polling in vain.
    async fn poll_refund(
        &self,
        state: &SagaState,
        refund_id: &RefundId,
    ) -> std::result::Result<Option<Observation>, DriveStop> {
        let order = &state.input.order;
        let Some(lookup) = self.inner.channels.lookup(&order.channel) else {
            return Ok(None);
        };
        // An upstream call of the waiting saga: a child of the saga span.
        let span = tracing::info_span!(
            "poll",
            saga = %state.id,
            action = "refund_status",
            channel = %order.channel.as_str().escape_debug(),
            outcome = tracing::field::Empty,
            error_code = tracing::field::Empty,
            error_sub_code = tracing::field::Empty,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
        );
        let polled = self
            .with_timeout(lookup.refund_status(order, refund_id, state.input.account.as_ref()))
            .instrument(span.clone())
            .await;
        match &polled {
            Ok(status) => {
                let open = !status.state.is_terminal();
                span.record("outcome", if open { "open" } else { "final" });
            }
            Err(e) => {
                span.record("outcome", CallResult::of(&polled).as_str());
                super::drive::record_error(&span, e);
            }
        }
        match polled {
            Ok(status) if status.state.is_terminal() => Ok(Some(Observation::Refund {
                order: order.clone(),
                refund_id: refund_id.clone(),
                status,
            })),
            Ok(_) => Ok(None),
            Err(e) if is_credentials(&e) => Err(DriveStop::Stuck(format!(
                "credentials: the poll of refund {refund_id} was refused: {e}; fix it, then resume the saga"
            ))),
            Err(e) => {
                tracing::debug!(error = %e, "refund poll failed");
                Ok(None)
            }
        }
    }
}

/// News delivered by callbacks: the first that moves the refund (news that
/// cannot move it, stale or another refund's, is dropped), and whether an
/// abort is waiting.
fn take_news(me: &Running, refund_id: &RefundId) -> (Option<Observation>, bool) {
    let mut mb = lock(&me.mailbox);
    mb.retain(|m| match m {
        Msg::Abort(..) => true,
        Msg::Observed(Observation::Refund {
            refund_id: r,
            status,
            ..
        }) => r == refund_id && status.state.is_terminal(),
        Msg::Observed(Observation::Order { .. }) => false,
    });
    let news = mb.iter().find_map(|m| match m {
        Msg::Observed(o) => Some(o.clone()),
        Msg::Abort(..) => None,
    });
    if news.is_some() {
        mb.retain(|m| !matches!(m, Msg::Observed(_)));
    }
    let abort = mb.iter().any(|m| matches!(m, Msg::Abort(..)));
    (news, abort)
}

/// An auth or session refusal (the step machine's own classification).
fn is_credentials(e: &ChannelError) -> bool {
    matches!(&e.class, crate::channel::ErrorClass::Permanent(r)
        if crate::step::credentials_kind(r) == Some("credentials"))
}
