//! The per-step machine: one step's attempts, back-off, channel-requested
//! waits, deadline, in-doubt resolution by lookup, "already done", and what a
//! failure means for a saga that owes work — as a pure, deterministic state
//! machine in the manner of raft-rs's `step`/`Ready`.
//!
//! The engine feeds it [`StepEvent`]s (a call's result, a lookup's result, a
//! timer that fired) and executes the [`StepEffect`] it returns (`Call`,
//! `Lookup`, `Sleep`, `Done`, `Stuck`). The machine does no I/O, reads no
//! clock (the time comes with each event) and draws its jitter from the
//! [`Rng`] it is given, so table tests drive it without tokio.
//!
//! Vocabulary: a **round** is one pass of the loop — a lookup (when in
//! doubt), a call, or both — ending in success or a back-off. **Calls** are
//! the requests actually sent for the action (the `attempts` journaled on the
//! outcome). The step gives up (stuck) after `attempts_max` rounds or
//! `step_deadline_ms`, whichever comes first.

use crate::action::{Lookup, StepOutcome, Via};
use crate::channel::{Applied, ChannelError, Conflict, ErrorClass, PermanentReason};
use crate::limits::Limits;
use crate::runtime::Rng;
use std::fmt;

/// What happened, as the machine is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEvent {
    /// Start the step.
    Begin,
    /// The call returned.
    Called(Result<StepOutcome, ChannelError>),
    /// The lookup returned.
    LookedUp(Result<Lookup, ChannelError>),
    /// The back-off asked for by the last `Sleep` is over.
    Woke,
}

impl StepEvent {
    fn name(&self) -> &'static str {
        match self {
            StepEvent::Begin => "begin",
            StepEvent::Called(_) => "called",
            StepEvent::LookedUp(_) => "looked_up",
            StepEvent::Woke => "woke",
        }
    }
}

/// What the engine must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepEffect {
    /// Send the action's call upstream (then report [`StepEvent::Called`]).
    Call,
    /// Look up whether the in-doubt step took effect (then [`StepEvent::LookedUp`]).
    Lookup,
    /// Wait this long (then [`StepEvent::Woke`]).
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
    /// The step has an outcome: journal it.
    Done {
        /// What it achieved.
        outcome: StepOutcome,
        /// How that became known.
        via: Via,
        /// Calls sent for it.
        attempts: u32,
    },
    /// The step cannot finish without an operator: the saga is stuck, the
    /// step stays open (nothing is journaled as its outcome), and a resume
    /// starts it again — in doubt, so a lookup comes before any re-send.
    Stuck {
        /// Why, for operators. Starts with `credentials:` for an auth failure.
        reason: String,
    },
}

/// Where the machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not begun.
    Idle,
    /// Waiting for a call's result.
    Calling,
    /// Waiting for a lookup's result.
    LookingUp,
    /// Backing off.
    Sleeping,
    /// Done or stuck; no event is expected.
    Over,
}

/// An event the machine does not expect in its phase (an engine bug).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("step machine: event {event} is not expected in phase {phase:?}")]
pub struct UnexpectedEvent {
    /// The phase.
    pub phase: Phase,
    /// The event's name.
    pub event: &'static str,
}

/// What the machine needs to know about the step before it begins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// `step N (action)`, for reasons.
    pub label: String,
    /// The outcome of an "already done" answer; `None`: that answer leaves
    /// the step in doubt (a lookup must find what was done).
    pub already_done: Option<StepOutcome>,
    /// Work the saga owes because an irreversible step took effect, in
    /// words. When set, a permanent failure or an unplannable conflict
    /// makes the saga stuck instead of journaling a failure.
    pub owed: Option<String>,
    /// The step was journaled and its outcome was not (a crash, a stuck
    /// saga resumed): look it up before re-sending.
    pub in_doubt: bool,
    /// Resolve doubt by lookup (off only in the harness's self-test).
    pub look_up: bool,
    /// When the step began (ms since the epoch).
    pub started_ms: u64,
    /// Tries already spent on this step before this machine (deferred
    /// attempts, [`crate::record::Record::Deferred`]): they count against
    /// `attempts_max` as if this machine had made them.
    pub prior_rounds: u32,
}

/// One step's machine.
#[derive(Clone, Debug)]
pub struct StepMachine {
    spec: StepSpec,
    limits: StepLimits,
    phase: Phase,
    in_doubt: bool,
    rounds: u32,
    calls: u32,
    asked_wait_ms: Option<u64>,
    last_error: Option<ChannelError>,
}

/// The limits a step obeys (a copy of the relevant [`Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StepLimits {
    attempts_max: u32,
    step_deadline_ms: u64,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    jitter_pct: u64,
    channel_wait_max_ms: u64,
}

impl StepMachine {
    /// A machine for one step under `limits`.
    pub fn new(spec: StepSpec, limits: &Limits) -> Self {
        let prior_rounds = spec.prior_rounds;
        StepMachine {
            in_doubt: spec.in_doubt,
            spec,
            limits: StepLimits {
                attempts_max: limits.attempts_max,
                step_deadline_ms: limits.step_deadline_ms,
                backoff_initial_ms: limits.backoff_initial_ms,
                backoff_max_ms: limits.backoff_max_ms,
                jitter_pct: limits.jitter_pct,
                channel_wait_max_ms: limits.channel_wait_max_ms,
            },
            phase: Phase::Idle,
            rounds: prior_rounds,
            calls: prior_rounds,
            asked_wait_ms: None,
            last_error: None,
        }
    }

    /// The phase the machine is in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The last channel error met (retries in progress), for operators.
    pub fn last_error(&self) -> Option<&ChannelError> {
        self.last_error.as_ref()
    }

    /// Whether the wait the machine is sleeping now may be spent parked,
    /// with the step deferred: the last attempt was certainly not applied
    /// (not in doubt) and the channel itself asked for the wait (a ban, a
    /// rate limit). A deferred step is sent again without a lookup.
    pub fn can_defer(&self) -> bool {
        self.phase == Phase::Sleeping
            && !self.in_doubt
            && self.asked_wait_ms.is_some()
            && self.last_error.as_ref().is_some_and(|e| {
                matches!(
                    e.class,
                    ErrorClass::Retryable {
                        applied: Applied::No,
                        ..
                    }
                )
            })
    }

    /// Feed one event at time `now_ms`; get the next effect.
    pub fn step(
        &mut self,
        event: StepEvent,
        now_ms: u64,
        rng: &dyn Rng,
    ) -> Result<StepEffect, UnexpectedEvent> {
        let effect = match (self.phase, event) {
            (Phase::Idle, StepEvent::Begin) | (Phase::Sleeping, StepEvent::Woke) => {
                self.next_round()
            }
            (Phase::Calling, StepEvent::Called(result)) => self.on_called(result, now_ms, rng),
            (Phase::LookingUp, StepEvent::LookedUp(result)) => {
                self.on_looked_up(result, now_ms, rng)
            }
            (phase, event) => {
                return Err(UnexpectedEvent {
                    phase,
                    event: event.name(),
                })
            }
        };
        self.phase = match &effect {
            StepEffect::Call => Phase::Calling,
            StepEffect::Lookup => Phase::LookingUp,
            StepEffect::Sleep { .. } => Phase::Sleeping,
            StepEffect::Done { .. } | StepEffect::Stuck { .. } => Phase::Over,
        };
        Ok(effect)
    }

    fn next_round(&mut self) -> StepEffect {
        self.rounds += 1;
        self.asked_wait_ms = None;
        if self.in_doubt && self.spec.look_up {
            return StepEffect::Lookup;
        }
        self.call()
    }

    fn call(&mut self) -> StepEffect {
        self.in_doubt = false;
        self.calls += 1;
        StepEffect::Call
    }

    fn done(&self, outcome: StepOutcome, via: Via) -> StepEffect {
        StepEffect::Done {
            outcome,
            via,
            attempts: self.calls,
        }
    }

    fn on_looked_up(
        &mut self,
        result: Result<Lookup, ChannelError>,
        now_ms: u64,
        rng: &dyn Rng,
    ) -> StepEffect {
        match result {
            Ok(Lookup::Applied(o) | Lookup::Moved(o)) => self.done(o, Via::Lookup),
            Ok(Lookup::NotApplied | Lookup::Unknown) => self.call(),
            Err(e) => {
                // The lookup was to settle a doubt: a refusal that needs an
                // operator leaves the step in doubt, and says so (it is not
                // the step's own failure).
                if let ErrorClass::Permanent(r) = &e.class {
                    if let Some(kind) = credentials_kind(r) {
                        return StepEffect::Stuck {
                            reason: format!(
                                "{kind}: the lookup of {} was refused: {e}; fix it, then resume the \
                                 saga (the step is still in doubt: the channel may have applied it)",
                                self.spec.label
                            ),
                        };
                    }
                    if let Some(owed) = &self.spec.owed {
                        return StepEffect::Stuck {
                            reason: self.in_doubt_reason(&format!(
                                "its lookup failed: {e}; work is still owed: {owed}"
                            )),
                        };
                    }
                }
                if let ErrorClass::Retryable { wait_ms, .. } = &e.class {
                    self.asked_wait_ms = *wait_ms;
                }
                self.last_error = Some(e);
                self.retry_or_give_up(now_ms, rng)
            }
        }
    }

    fn on_called(
        &mut self,
        result: Result<StepOutcome, ChannelError>,
        now_ms: u64,
        rng: &dyn Rng,
    ) -> StepEffect {
        let e = match result {
            Ok(o) => return self.done(o, Via::Reply),
            Err(e) => e,
        };
        match &e.class {
            ErrorClass::AlreadyDone => match &self.spec.already_done {
                Some(o) => self.done(o.clone(), Via::Reply),
                None => {
                    self.in_doubt = true;
                    self.last_error = Some(e);
                    self.retry_or_give_up(now_ms, rng)
                }
            },
            ErrorClass::Conflict(c) => {
                let unplannable = matches!(c, Conflict::AlreadyShipped | Conflict::Other { .. });
                match (&self.spec.owed, unplannable) {
                    (Some(owed), true) => StepEffect::Stuck {
                        reason: self.owed_reason(owed, &e),
                    },
                    _ => self.done(
                        StepOutcome::Conflict {
                            conflict: c.clone(),
                            message: e.message.clone(),
                        },
                        Via::Reply,
                    ),
                }
            }
            ErrorClass::Permanent(_) => match self.operator_needed(&e, "call") {
                Some(reason) => StepEffect::Stuck { reason },
                None => self.done(StepOutcome::Failed { error: e }, Via::Reply),
            },
            ErrorClass::Retryable { wait_ms, applied } => {
                self.in_doubt = *applied == Applied::Maybe;
                self.asked_wait_ms = *wait_ms;
                self.last_error = Some(e);
                self.retry_or_give_up(now_ms, rng)
            }
        }
    }

    /// A permanent error an operator must fix: credentials (any step), or
    /// any permanent error while the saga owes work.
    fn operator_needed(&self, e: &ChannelError, what: &str) -> Option<String> {
        let ErrorClass::Permanent(reason) = &e.class else {
            return None;
        };
        if let Some(kind) = credentials_kind(reason) {
            return Some(format!(
                "{kind}: the {what} of {} was refused: {e}; fix it, then resume the saga",
                self.spec.label
            ));
        }
        self.spec
            .owed
            .as_ref()
            .map(|owed| self.owed_reason(owed, e))
    }

    fn owed_reason(&self, owed: &str, e: &ChannelError) -> String {
        format!(
            "{} failed after an irreversible step, with work still owed ({owed}): {e}; \
             fix the cause, then resume the saga",
            self.spec.label
        )
    }

    /// Why a step that may have taken effect upstream stops here: it is in
    /// doubt (whatever the last error's class), and an operator must find
    /// out what the channel did before anything is re-sent.
    fn in_doubt_reason(&self, what: &str) -> String {
        format!(
            "{} is still in doubt ({what}): the channel may have applied it; \
             verify it upstream, then resolve the step (`journal resolve --applied` or \
             `--not-applied`), or resume the saga once lookups work",
            self.spec.label
        )
    }

    fn retry_or_give_up(&mut self, now_ms: u64, rng: &dyn Rng) -> StepEffect {
        let elapsed = now_ms.saturating_sub(self.spec.started_ms);
        if self.rounds >= self.limits.attempts_max.max(1) || elapsed >= self.limits.step_deadline_ms
        {
            let why = self
                .last_error
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "no error recorded".into());
            let reason = if self.in_doubt {
                self.in_doubt_reason(&format!(
                    "gave up after {} tries over {elapsed} ms; last error: {why}",
                    self.rounds
                ))
            } else {
                format!(
                    "{} gave up after {} tries over {elapsed} ms: {why}",
                    self.spec.label, self.rounds
                )
            };
            return StepEffect::Stuck { reason };
        }
        StepEffect::Sleep {
            ms: self.backoff(rng),
        }
    }

    /// Exponential back-off with jitter, never shorter than the wait the
    /// channel asked for (capped by `channel_wait_max_ms`).
    fn backoff(&self, rng: &dyn Rng) -> u64 {
        let l = &self.limits;
        let exp = l
            .backoff_initial_ms
            .saturating_mul(1u64 << self.rounds.saturating_sub(1).min(30))
            .min(l.backoff_max_ms);
        let jitter = rng.below(exp.saturating_mul(l.jitter_pct.min(100)) / 100 + 1);
        let asked = self
            .asked_wait_ms
            .map(|w| w.min(l.channel_wait_max_ms))
            .unwrap_or(0);
        exp.saturating_add(jitter).max(asked)
    }
}

/// `credentials` for auth and session failures, `clock` for a rejected
/// timestamp; `None` for permanent errors about the request itself.
pub(crate) fn credentials_kind(reason: &PermanentReason) -> Option<&'static str> {
    match reason {
        PermanentReason::Auth | PermanentReason::InvalidSession => Some("credentials"),
        PermanentReason::ClockSkew => Some("clock"),
        _ => None,
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests;
