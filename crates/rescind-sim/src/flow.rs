//! TOP flow control per app key: a token bucket over every TOP gateway call
//! of an app key (rate R/s, burst B; off by default). A call over the budget
//! is answered code 7 `App Call Limited`, sub-code
//! `accesscontrol.limited-by-app-access-count`, sub_msg `This ban will last
//! for N more seconds`, and starts a ban of N seconds (`ban_secs`) during
//! which **every** call on that app key gets the same answer.
//!
//! Counted: calls that passed the system checks (app key, timestamp,
//! signature) — what TOP can attribute to an app key. Each app key keeps a
//! per-second log (second of the simulator's clock → calls accepted, calls
//! refused) and the number of bans, read at `GET /_admin/flow`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The flow-control settings (`POST /_admin/flow`, [`crate::SimConfig::flow`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Calls per second per app key; 0 turns flow control off (the default).
    pub rate_per_s: f64,
    /// Calls an app key may make at once after a quiet spell (0 counts as 1).
    pub burst: u32,
    /// Length of the ban a call over the budget starts, in seconds.
    pub ban_secs: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            rate_per_s: 0.0,
            burst: 1,
            ban_secs: 10,
        }
    }
}

impl FlowConfig {
    /// Check the values: the rate finite and not negative, a ban of at least 1 s.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_s.is_finite() && self.rate_per_s >= 0.0) {
            return Err("rate_per_s: must be a number >= 0 (0 turns flow control off)".into());
        }
        if self.ban_secs == 0 {
            return Err("ban_secs: must be at least 1".into());
        }
        Ok(())
    }
    fn on(&self) -> bool {
        self.rate_per_s.is_finite() && self.rate_per_s > 0.0
    }
}

/// One second of one app key's calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondLog {
    /// The second (of the simulator's clock, since the epoch).
    pub second: u64,
    /// Calls let through.
    pub accepted: u64,
    /// Calls answered code 7.
    pub refused: u64,
}

/// One app key's flow state, as `GET /_admin/flow` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKeyFlow {
    /// Bans triggered (calls over the budget, or `POST /_admin/flow/ban`).
    pub bans: u64,
    /// How long the ban in force still lasts, ms (0: none).
    pub banned_for_ms: u64,
    /// Per-second log, oldest first.
    pub seconds: Vec<SecondLog>,
}

#[derive(Debug, Default)]
struct KeyState {
    tokens: f64,
    last_ms: u64,
    ban_until_ms: u64,
    bans: u64,
    log: BTreeMap<u64, (u64, u64)>,
    started: bool,
}

/// The simulator's flow control: settings and per-app-key state.
#[derive(Debug, Default)]
pub(crate) struct FlowState {
    cfg: FlowConfig,
    keys: BTreeMap<String, KeyState>,
}

impl FlowState {
    pub(crate) fn new(cfg: FlowConfig) -> Self {
        FlowState {
            cfg,
            keys: BTreeMap::new(),
        }
    }

    pub(crate) fn config(&self) -> FlowConfig {
        self.cfg
    }

    /// New settings: every bucket starts full again; logs and bans stay.
    pub(crate) fn set_config(&mut self, cfg: FlowConfig) {
        self.cfg = cfg;
        for k in self.keys.values_mut() {
            k.started = false;
        }
    }

    /// Admit one call of `app_key` at `now_ms`: `Err(seconds)` is the ban's
    /// remaining length, to be answered as code 7.
    pub(crate) fn admit(&mut self, app_key: &str, now_ms: u64) -> Result<(), u64> {
        let cfg = self.cfg;
        let burst = f64::from(cfg.burst.max(1));
        let k = match self.keys.get_mut(app_key) {
            Some(k) => k,
            None => self.keys.entry(app_key.to_owned()).or_default(),
        };
        if !k.started {
            k.started = true;
            k.tokens = burst;
            k.last_ms = now_ms;
        }
        let entry = k.log.entry(now_ms / 1000).or_default();
        if now_ms < k.ban_until_ms {
            entry.1 += 1;
            return Err((k.ban_until_ms - now_ms).div_ceil(1000));
        }
        if !cfg.on() {
            entry.0 += 1;
            return Ok(());
        }
        let elapsed_s = now_ms.saturating_sub(k.last_ms) as f64 / 1000.0;
        k.tokens = (k.tokens + elapsed_s * cfg.rate_per_s).min(burst);
        k.last_ms = k.last_ms.max(now_ms);
        if k.tokens >= 1.0 - 1e-9 {
            k.tokens -= 1.0;
            entry.0 += 1;
            return Ok(());
        }
        entry.1 += 1;
        k.ban_until_ms = now_ms.saturating_add(cfg.ban_secs.saturating_mul(1000));
        k.bans += 1;
        Err(cfg.ban_secs)
    }

    /// Ban `app_key` for `secs` from `now_ms` (an operator's or a test's ban).
    pub(crate) fn ban(&mut self, app_key: &str, secs: u64, now_ms: u64) {
        let k = self.keys.entry(app_key.to_owned()).or_default();
        k.ban_until_ms = k
            .ban_until_ms
            .max(now_ms.saturating_add(secs.saturating_mul(1000)));
        k.bans += 1;
    }

    /// Every app key's state at `now_ms`.
    pub(crate) fn view(&self, now_ms: u64) -> BTreeMap<String, AppKeyFlow> {
        self.keys
            .iter()
            .map(|(key, k)| {
                let seconds = k
                    .log
                    .iter()
                    .map(|(&second, &(accepted, refused))| SecondLog {
                        second,
                        accepted,
                        refused,
                    })
                    .collect();
                (
                    key.clone(),
                    AppKeyFlow {
                        bans: k.bans,
                        banned_for_ms: k.ban_until_ms.saturating_sub(now_ms),
                        seconds,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_bans_the_app_key() {
        let mut f = FlowState::new(FlowConfig {
            rate_per_s: 2.0,
            burst: 2,
            ban_secs: 5,
        });
        let t = 1_000_000;
        assert_eq!(f.admit("k", t), Ok(()));
        assert_eq!(f.admit("k", t + 1), Ok(()));
        // Another app key has its own budget.
        assert_eq!(f.admit("other", t + 1), Ok(()));
        assert_eq!(f.admit("k", t + 2), Err(5));
        // Banned: even after tokens refill.
        assert_eq!(f.admit("k", t + 3_000), Err(3));
        assert_eq!(f.admit("k", t + 5_002), Ok(()));
        let v = f.view(t + 5_002);
        let k = &v["k"];
        assert_eq!(k.bans, 1);
        assert_eq!(
            k.seconds,
            vec![
                SecondLog {
                    second: 1_000,
                    accepted: 2,
                    refused: 1
                },
                SecondLog {
                    second: 1_003,
                    accepted: 0,
                    refused: 1
                },
                SecondLog {
                    second: 1_005,
                    accepted: 1,
                    refused: 0
                },
            ]
        );
        assert_eq!(v["other"].bans, 0);
    }

    #[test]
    fn off_by_default_but_logged_and_bannable() {
        let mut f = FlowState::new(FlowConfig::default());
        for i in 0..100 {
            assert_eq!(f.admit("k", 2_000 + i), Ok(()));
        }
        f.ban("k", 3, 2_500);
        assert_eq!(f.admit("k", 2_600), Err(3));
        assert_eq!(f.admit("k", 5_500), Ok(()));
        let v = f.view(5_500);
        assert_eq!(v["k"].bans, 1);
        assert_eq!(v["k"].seconds[0].accepted, 100);
        assert!(FlowConfig {
            rate_per_s: -1.0,
            ..FlowConfig::default()
        }
        .validate()
        .unwrap_err()
        .contains("rate_per_s"));
    }
}
