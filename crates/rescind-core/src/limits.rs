//! Every limit the engine enforces, with the rules that make a set valid.
//!
//! The config loader and the engine use the same [`Limits::validate`]: a
//! limit out of range is an error naming it, never silently clamped.

/// Every limit the engine enforces. Each has a default; all are in the config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sagas actively driving steps at once; more wait for a slot. Sagas
    /// waiting for a refund do not hold a slot.
    pub in_flight_max: usize,
    /// Calls (first try plus retries) one step may take before the saga is stuck.
    pub attempts_max: u32,
    /// First back-off after a retryable failure.
    pub backoff_initial_ms: u64,
    /// Back-off ceiling.
    pub backoff_max_ms: u64,
    /// Jitter added to each back-off, as a percentage of it (0–100).
    pub jitter_pct: u64,
    /// Longest a single call may take before it counts as timed out (in doubt).
    pub attempt_timeout_ms: u64,
    /// Longest one step may take across all its retries before the saga is stuck.
    pub step_deadline_ms: u64,
    /// Longest wait the engine honours when a channel asks for one (rate-limit bans).
    pub channel_wait_max_ms: u64,
    /// First poll of an open refund, after this long.
    pub refund_poll_initial_ms: u64,
    /// Poll interval ceiling while waiting for a refund.
    pub refund_poll_max_ms: u64,
    /// Longest a saga waits for its refund to complete before it is stuck.
    pub refund_wait_max_ms: u64,
    /// A waiting saga whose next poll is at least this far away gives up its
    /// task and is parked: kept as a few hundred bytes until its timer, a
    /// callback or an abort wakes it, then re-read from the journal.
    pub park_after_ms: u64,
    /// Poll interval while the saga's channel has a live push source (a
    /// message consumer that called [`crate::Engine::push_heartbeat`] or
    /// [`crate::Engine::set_push_live`]): news is expected to arrive pushed,
    /// so the lookup is only a slow fallback. Back-off resumes as soon as
    /// the push source stops being live.
    pub refund_poll_with_push_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            in_flight_max: 1024,
            attempts_max: 12,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            jitter_pct: 20,
            attempt_timeout_ms: 10_000,
            step_deadline_ms: 15 * 60_000,
            channel_wait_max_ms: 10 * 60_000,
            refund_poll_initial_ms: 2_000,
            refund_poll_max_ms: 5 * 60_000,
            refund_wait_max_ms: 14 * 24 * 3_600_000,
            park_after_ms: 1_000,
            refund_poll_with_push_ms: 5 * 60_000,
        }
    }
}

/// A limit out of range: names the limit and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("engine.{limit} {rule}")]
pub struct LimitError {
    /// The limit's name (its key in `[engine]`).
    pub limit: &'static str,
    /// The rule it broke.
    pub rule: &'static str,
}

impl Limits {
    /// Check every rule; the first broken one is the error.
    pub fn validate(&self) -> Result<(), LimitError> {
        let rules: [(bool, &'static str, &'static str); 8] = [
            (
                self.in_flight_max >= 1,
                "in_flight_max",
                "must be at least 1",
            ),
            (self.attempts_max >= 1, "attempts_max", "must be at least 1"),
            (
                self.jitter_pct <= 100,
                "jitter_pct",
                "must be between 0 and 100",
            ),
            (
                self.attempt_timeout_ms >= 1,
                "attempt_timeout_ms",
                "must be at least 1",
            ),
            (
                self.backoff_max_ms >= self.backoff_initial_ms,
                "backoff_max_ms",
                "must be at least backoff_initial_ms",
            ),
            (
                self.refund_poll_initial_ms >= 1,
                "refund_poll_initial_ms",
                "must be at least 1",
            ),
            (
                self.refund_poll_max_ms >= self.refund_poll_initial_ms,
                "refund_poll_max_ms",
                "must be at least refund_poll_initial_ms",
            ),
            (
                self.refund_poll_with_push_ms >= 1,
                "refund_poll_with_push_ms",
                "must be at least 1",
            ),
        ];
        match rules.iter().find(|(ok, _, _)| !ok) {
            Some((_, limit, rule)) => Err(LimitError { limit, rule }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_rule_names_its_limit() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let cases: Vec<(Limits, &str)> = vec![
            (
                Limits {
                    in_flight_max: 0,
                    ..Limits::default()
                },
                "in_flight_max",
            ),
            (
                Limits {
                    attempts_max: 0,
                    ..Limits::default()
                },
                "attempts_max",
            ),
            (
                Limits {
                    jitter_pct: 101,
                    ..Limits::default()
                },
                "jitter_pct",
            ),
            (
                Limits {
                    attempt_timeout_ms: 0,
                    ..Limits::default()
                },
                "attempt_timeout_ms",
            ),
            (
                Limits {
                    backoff_initial_ms: 10,
                    backoff_max_ms: 5,
                    ..Limits::default()
                },
                "backoff_max_ms",
            ),
            (
                Limits {
                    refund_poll_initial_ms: 0,
                    ..Limits::default()
                },
                "refund_poll_initial_ms",
            ),
            (
                Limits {
                    refund_poll_initial_ms: 10,
                    refund_poll_max_ms: 5,
                    ..Limits::default()
                },
                "refund_poll_max_ms",
            ),
            (
                Limits {
                    refund_poll_with_push_ms: 0,
                    ..Limits::default()
                },
                "refund_poll_with_push_ms",
            ),
        ];
        for (limits, name) in cases {
            let e = limits.validate().unwrap_err();
            assert_eq!(e.limit, name);
            assert!(e.to_string().starts_with(&format!("engine.{name} ")), "{e}");
        }
    }
}
