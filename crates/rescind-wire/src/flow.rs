//! Flow control per TOP **app key**, shared by every channel of a process.
//!
//! TOP limits calls per app key (error code 7, "App Call Limited", with a ban
//! of N seconds). Two channels on the same app key (`tmall-tbc` and `damai`)
//! must therefore draw from **one** budget, and N workers sharing a database
//! must together stay under it. This module gives:
//!
//! - [`AppKeyLimiters`]: the registry, one [`AppKeyLimiter`] per
//!   (gateway URL, app key) per process. Two channels that configure the same
//!   app key with different settings get one limiter with the **smaller**
//!   rate and burst (logged as a warning), never two.
//! - [`AppKeyLimiter`]: a token bucket (`rate_per_s`, `burst`), scaled by a
//!   **share** set from outside (`1 / live workers`), with a **ban** (every
//!   acquire during a ban returns at once with the remaining wait: the call
//!   is not sent), and **fair between accounts**: when the bucket is empty,
//!   waiters queue per account and tokens go round-robin across the accounts
//!   that are waiting. Fairness measure: while `k` accounts are waiting,
//!   between two tokens granted to one of them at most `k − 1` go to the
//!   others — so one account's backlog of any size gets at most `1/k` of the
//!   tokens while `k − 1` others wait.
//!
//! The fast path (a token is there and nobody waits) is one mutex, one clock
//! read and no allocation; only a caller that must wait is queued (a
//! one-shot channel) and served by a small dispatcher task, which exists only
//! while someone waits.

use rescind_core::Clock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// The budget of one app key, as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowSettings {
    /// Calls per second on this app key, all channels together, all workers
    /// together (each worker takes `rate × share`). 0 (or not finite): no limit.
    pub rate_per_s: f64,
    /// Calls that may go at once after a quiet spell (0 counts as 1), also
    /// scaled by the share (never below 1).
    pub burst: u32,
    /// Longest a call waits for a token; past it the call is refused locally
    /// ([`FlowError::Busy`]), not sent.
    pub wait_max_ms: u64,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            rate_per_s: 20.0,
            burst: 20,
            wait_max_ms: 30_000,
        }
    }
}

impl FlowSettings {
    fn min(self, other: FlowSettings) -> FlowSettings {
        let rate = match (enabled(self.rate_per_s), enabled(other.rate_per_s)) {
            (true, true) => self.rate_per_s.min(other.rate_per_s),
            (true, false) => self.rate_per_s,
            (false, _) => other.rate_per_s,
        };
        FlowSettings {
            rate_per_s: rate,
            burst: self.burst.max(1).min(other.burst.max(1)),
            wait_max_ms: self.wait_max_ms.min(other.wait_max_ms),
        }
    }
}

fn enabled(rate: f64) -> bool {
    rate.is_finite() && rate > 0.0
}

/// Why a call was not let through. The call was **not sent** in both cases.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The app key is banned (TOP said so): retry after `remaining_ms`.
    #[error("TOP app key {app_key} is banned for {remaining_ms} more ms (App Call Limited); the call was not sent")]
    Banned {
        /// The app key.
        app_key: String,
        /// How long the ban still lasts.
        remaining_ms: u64,
    },
    /// No token came within the wait limit.
    #[error("TOP app key {app_key}: no call token within {waited_ms} ms (flow control); the call was not sent")]
    Busy {
        /// The app key.
        app_key: String,
        /// How long the call waited.
        waited_ms: u64,
    },
}

impl FlowError {
    /// The wait the caller should honour before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            FlowError::Banned { remaining_ms, .. } => Duration::from_millis(*remaining_ms),
            FlowError::Busy { .. } => Duration::ZERO,
        }
    }
}

/// Counters of one limiter (monotonic since it was made).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Calls let through.
    pub granted: u64,
    /// Calls that had to wait for a token.
    pub queued: u64,
    /// Calls refused because of a ban.
    pub refused_banned: u64,
    /// Calls refused after waiting `wait_max_ms`.
    pub refused_busy: u64,
    /// Bans started ([`AppKeyLimiter::ban_for`] that extended the ban).
    pub bans: u64,
}

/// A token, less a rounding error (refills add `elapsed × rate` in floats).
const ONE: f64 = 1.0 - 1e-9;

type Waiter = oneshot::Sender<Result<(), u64>>;

struct State {
    settings: FlowSettings,
    share: f64,
    tokens: f64,
    last_ms: u64,
    ban_until_ms: u64,
    /// Waiters per account, in arrival order.
    queues: HashMap<Arc<str>, VecDeque<Waiter>>,
    /// Accounts with waiters, in round-robin order.
    ring: VecDeque<Arc<str>>,
    waiting: usize,
    dispatcher: bool,
    stats: FlowStats,
}

impl State {
    fn rate(&self) -> f64 {
        self.settings.rate_per_s * self.share
    }
    fn burst(&self) -> f64 {
        (f64::from(self.settings.burst.max(1)) * self.share).max(1.0)
    }
    fn refill(&mut self, now: u64) {
        let rate = self.rate();
        let elapsed_s = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        // While calls wait, a late dispatcher wake-up must not lose the
        // tokens that accrued meanwhile (capped at the burst they would
        // vanish, and the rate reached fall below the one configured): up to
        // 10 ms of tokens (at least 1) beyond the burst are kept for them.
        let cap = if self.waiting > 0 {
            self.burst() + (rate * 0.01).max(1.0)
        } else {
            self.burst()
        };
        self.tokens = (self.tokens + elapsed_s * rate).min(cap);
        self.last_ms = self.last_ms.max(now);
    }
    /// Answer every waiter with the ban's remaining wait.
    fn refuse_all(&mut self, remaining_ms: u64) {
        for (_, q) in self.queues.drain() {
            for tx in q {
                if tx.send(Err(remaining_ms)).is_ok() {
                    self.stats.refused_banned += 1;
                }
            }
        }
        self.ring.clear();
        self.waiting = 0;
    }
    /// The next waiter in round-robin order.
    fn next_waiter(&mut self) -> Option<Waiter> {
        let account = self.ring.pop_front()?;
        let q = self.queues.get_mut(&account)?;
        let tx = q.pop_front();
        self.waiting = self.waiting.saturating_sub(1);
        if q.is_empty() {
            self.queues.remove(&account);
        } else {
            self.ring.push_back(account);
        }
        tx
    }
}

/// The flow control of one app key on one gateway. See the [module](self).
pub struct AppKeyLimiter {
    url: String,
    app_key: String,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for AppKeyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("AppKeyLimiter")
            .field("url", &self.url)
            .field("app_key", &self.app_key)
            .field("settings", &s.settings)
            .field("share", &s.share)
            .field("waiting", &s.waiting)
            .finish_non_exhaustive()
    }
}

impl AppKeyLimiter {
    /// A limiter for `app_key` on `url` (a share of 1, no ban).
    pub fn new(
        url: impl Into<String>,
        app_key: impl Into<String>,
        settings: FlowSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.now_ms();
        AppKeyLimiter {
            url: url.into(),
            app_key: app_key.into(),
            state: Mutex::new(State {
                settings,
                share: 1.0,
                tokens: f64::from(settings.burst.max(1)),
                last_ms: now,
                ban_until_ms: 0,
                queues: HashMap::new(),
                ring: VecDeque::new(),
                waiting: 0,
                dispatcher: false,
                stats: FlowStats::default(),
            }),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The app key.
    pub fn app_key(&self) -> &str {
        &self.app_key
    }

    /// The gateway URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The configured settings (before the share).
    pub fn settings(&self) -> FlowSettings {
        self.lock().settings
    }

    /// The rate this process may use: configured rate × share (0: unlimited).
    pub fn effective_rate(&self) -> f64 {
        let s = self.lock();
        if enabled(s.settings.rate_per_s) {
            s.rate()
        } else {
            0.0
        }
    }

    /// This process's share of the app key's rate, in (0, 1].
    pub fn share(&self) -> f64 {
        self.lock().share
    }

    /// Set this process's share (`1 / live workers`). Values outside (0, 1]
    /// are clamped into it (a non-finite one counts as 1).
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(1e-6, 1.0)
        } else {
            1.0
        };
        let now = self.clock.now_ms();
        let mut s = self.lock();
        s.refill(now);
        if (s.share - share).abs() > f64::EPSILON {
            tracing::debug!(app_key = %self.app_key, share, "flow share changed");
        }
        s.share = share;
        let burst = s.burst();
        s.tokens = s.tokens.min(burst);
    }

    /// Lower the settings to `other` where it is smaller (rate, burst, wait).
    fn narrow(&self, other: FlowSettings) -> bool {
        let mut s = self.lock();
        let merged = s.settings.min(other);
        let changed = merged != s.settings;
        s.settings = merged;
        let burst = s.burst();
        s.tokens = s.tokens.min(burst);
        changed
    }

    /// Ban the app key for `d` from now (extending, never shortening, a ban
    /// in force): waiting calls are answered at once with the remaining
    /// wait, and so is every call until the ban ends.
    pub fn ban_for(&self, d: Duration) {
        let now = self.clock.now_ms();
        let until = now.saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64);
        let mut s = self.lock();
        if until > s.ban_until_ms {
            s.ban_until_ms = until;
            s.stats.bans += 1;
            tracing::warn!(app_key = %self.app_key, ban_ms = until - now, "TOP app key banned: calls paused");
        }
        let remaining = s.ban_until_ms.saturating_sub(now);
        s.refuse_all(remaining);
    }

    /// How long the ban in force still lasts (`None`: no ban).
    pub fn banned_for(&self) -> Option<Duration> {
        let now = self.clock.now_ms();
        let s = self.lock();
        (s.ban_until_ms > now).then(|| Duration::from_millis(s.ban_until_ms - now))
    }

    /// Calls waiting for a token now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// The counters.
    pub fn stats(&self) -> FlowStats {
        self.lock().stats
    }

    /// Take one call token for `account` (`None`: the anonymous account,
    /// one like any other). Returns at once when a token is there and nobody
    /// waits; otherwise waits its round-robin turn among the accounts
    /// waiting, for at most `wait_max_ms`. During a ban it returns
    /// [`FlowError::Banned`] at once.
    pub async fn acquire(self: &Arc<Self>, account: Option<&str>) -> Result<(), FlowError> {
        let rx = {
            let now = self.clock.now_ms();
            let mut s = self.lock();
            if now < s.ban_until_ms {
                s.stats.refused_banned += 1;
                return Err(self.banned(s.ban_until_ms - now));
            }
            if !enabled(s.settings.rate_per_s) {
                s.stats.granted += 1;
                return Ok(());
            }
            s.refill(now);
            if s.waiting == 0 && s.tokens >= ONE {
                s.tokens -= 1.0;
                s.stats.granted += 1;
                return Ok(());
            }
            let (tx, rx) = oneshot::channel();
            let account = account.unwrap_or("");
            match s.queues.get_mut(account) {
                Some(q) => q.push_back(tx),
                None => {
                    let key: Arc<str> = Arc::from(account);
                    s.queues.insert(key.clone(), VecDeque::from([tx]));
                    s.ring.push_back(key);
                }
            }
            s.waiting += 1;
            s.stats.queued += 1;
            if !s.dispatcher {
                s.dispatcher = true;
                let me = self.clone();
                tokio::spawn(async move { me.dispatch().await });
            }
            rx
        };
        let wait_max_ms = self.settings().wait_max_ms;
        let t0 = self.clock.now_ms();
        tokio::select! {
            biased;
            answer = rx => match answer {
                Ok(Ok(())) => Ok(()),
                Ok(Err(remaining_ms)) => Err(self.banned(remaining_ms)),
                // The dispatcher dropped the waiter: cannot happen while the
                // limiter lives; refuse rather than send unpaced.
                Err(_) => Err(self.busy(t0)),
            },
            _ = self.clock.sleep(Duration::from_millis(wait_max_ms)) => {
                self.lock().stats.refused_busy += 1;
                Err(self.busy(t0))
            }
        }
    }

    fn banned(&self, remaining_ms: u64) -> FlowError {
        FlowError::Banned {
            app_key: self.app_key.clone(),
            remaining_ms,
        }
    }

    fn busy(&self, t0: u64) -> FlowError {
        FlowError::Busy {
            app_key: self.app_key.clone(),
            waited_ms: self.clock.now_ms().saturating_sub(t0),
        }
    }

    /// Hand tokens to waiters, round-robin across accounts, as they refill.
    /// Runs while anyone waits.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let sleep_ms = {
                let now = self.clock.now_ms();
                let mut s = self.lock();
                if now < s.ban_until_ms {
                    let remaining = s.ban_until_ms - now;
                    s.refuse_all(remaining);
                }
                let unlimited = !enabled(s.settings.rate_per_s);
                s.refill(now);
                while s.waiting > 0 && (unlimited || s.tokens >= ONE) {
                    let Some(tx) = s.next_waiter() else {
                        s.waiting = 0;
                        break;
                    };
                    // A waiter that gave up (timed out) does not take the token.
                    if tx.send(Ok(())).is_ok() {
                        if !unlimited {
                            s.tokens -= 1.0;
                        }
                        s.stats.granted += 1;
                    }
                }
                if s.waiting == 0 {
                    s.dispatcher = false;
                    return;
                }
                let need = (1.0 - s.tokens).max(0.0);
                ((need / s.rate()) * 1000.0).ceil().max(1.0) as u64
            };
            self.clock.sleep(Duration::from_millis(sleep_ms)).await;
        }
    }
}

/// One [`AppKeyLimiter`] per (gateway URL, app key): give every channel of a
/// process the same registry and channels on one app key share one budget.
pub struct AppKeyLimiters {
    clock: Arc<dyn Clock>,
    limiters: Mutex<BTreeMap<(String, String), Arc<AppKeyLimiter>>>,
    share: Mutex<f64>,
}

impl std::fmt::Debug for AppKeyLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKeyLimiters")
            .field("limiters", &self.all())
            .finish_non_exhaustive()
    }
}

impl AppKeyLimiters {
    /// An empty registry whose limiters run on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        AppKeyLimiters {
            clock,
            limiters: Mutex::new(BTreeMap::new()),
            share: Mutex::new(1.0),
        }
    }

    /// The process-wide registry on the system clock (what a channel's
    /// `connect` uses).
    pub fn global() -> &'static AppKeyLimiters {
        static GLOBAL: OnceLock<AppKeyLimiters> = OnceLock::new();
        GLOBAL.get_or_init(|| AppKeyLimiters::new(Arc::new(rescind_core::TokioClock::system())))
    }

    /// The limiter of `app_key` on `url`, made with `settings` on first use.
    /// A later caller with different settings narrows it to the smaller rate,
    /// burst and wait (logged): one app key never gets two budgets.
    pub fn limiter(&self, url: &str, app_key: &str, settings: FlowSettings) -> Arc<AppKeyLimiter> {
        let key = (url.trim().to_owned(), app_key.trim().to_owned());
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(&key) {
            let before = l.settings();
            if l.narrow(settings) {
                tracing::warn!(
                    app_key = %key.1,
                    url = %key.0,
                    configured = ?settings,
                    before = ?before,
                    now = ?l.settings(),
                    "two channels configure the same TOP app key differently; the app key's one limiter takes the smaller values"
                );
            }
            return l.clone();
        }
        let l = Arc::new(AppKeyLimiter::new(
            key.0.clone(),
            key.1.clone(),
            settings,
            self.clock.clone(),
        ));
        l.set_share(*self.share.lock().unwrap_or_else(|p| p.into_inner()));
        map.insert(key, l.clone());
        l
    }

    /// Every limiter, by URL then app key.
    pub fn all(&self) -> Vec<Arc<AppKeyLimiter>> {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Set every limiter's share (and that of limiters made later):
    /// `1 / live workers`.
    pub fn set_share(&self, share: f64) {
        *self.share.lock().unwrap_or_else(|p| p.into_inner()) = share;
        for l in self.all() {
            l.set_share(share);
        }
    }

    /// Set the share from the number of live workers (0 counts as 1).
    pub fn set_live_workers(&self, live: usize) {
        self.set_share(1.0 / live.max(1) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rescind_core::TokioClock;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(TokioClock::with_base(1_000_000))
    }

    fn limiter(c: &Arc<dyn Clock>, rate: f64, burst: u32) -> Arc<AppKeyLimiter> {
        Arc::new(AppKeyLimiter::new(
            "http://gw/router/rest",
            "12129701",
            FlowSettings {
                rate_per_s: rate,
                burst,
                wait_max_ms: 600_000,
            },
            c.clone(),
        ))
    }

    /// Run `calls` (account per call) concurrently; the grant times, per account.
    async fn run(
        l: &Arc<AppKeyLimiter>,
        c: &Arc<dyn Clock>,
        calls: Vec<String>,
    ) -> Vec<(String, u64)> {
        let t0 = c.now_ms();
        let mut hs = Vec::new();
        for a in calls {
            let l = l.clone();
            let c = c.clone();
            hs.push(tokio::spawn(async move {
                l.acquire(Some(&a)).await.expect("granted");
                (a, c.now_ms() - t0)
            }));
            // Arrival order is the spawn order.
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        for h in hs {
            out.push(h.await.expect("task"));
        }
        out.sort_by_key(|(_, t)| *t);
        out
    }

    fn max_in_any_second(times: &[u64]) -> usize {
        times
            .iter()
            .map(|&t| times.iter().filter(|&&u| u >= t && u < t + 1000).count())
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_is_never_exceeded() {
        let c = clock();
        let l = limiter(&c, 10.0, 5);
        let calls = (0..60).map(|i| format!("acct-{}", i % 7)).collect();
        let got = run(&l, &c, calls).await;
        let times: Vec<u64> = got.iter().map(|(_, t)| *t).collect();
        // The burst once, then 10 per second.
        assert_eq!(times.iter().filter(|&&t| t == 0).count(), 5);
        assert!(max_in_any_second(&times) <= 10 + 5, "{times:?}");
        let after_burst: Vec<u64> = times.iter().copied().filter(|&t| t >= 1000).collect();
        assert!(max_in_any_second(&after_burst) <= 10, "{times:?}");
        // 55 tokens after the burst at 10/s: the last at 5.5 s.
        assert_eq!(*times.last().unwrap(), 5_500);
        assert_eq!(l.stats().granted, 60);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_go_round_robin_one_heavy_nine_light() {
        let c = clock();
        let l = limiter(&c, 10.0, 1);
        // The heavy account queues 100 calls first, then 9 light ones 5 each.
        let mut calls: Vec<String> = (0..100).map(|_| "heavy".to_owned()).collect();
        for i in 0..9 {
            calls.extend((0..5).map(|_| format!("light-{i}")));
        }
        let got = run(&l, &c, calls).await;
        // While the 9 light accounts wait, the heavy one gets 1 token in 10.
        let first_50: Vec<&str> = got.iter().take(50).map(|(a, _)| a.as_str()).collect();
        let heavy = first_50.iter().filter(|a| **a == "heavy").count();
        assert!(
            heavy <= 6,
            "heavy took {heavy} of the first 50: {first_50:?}"
        );
        // Every light account is done within ~5 rounds of 10 tokens (5 s),
        // not after the heavy backlog (10 s).
        for i in 0..9 {
            let last = got
                .iter()
                .filter(|(a, _)| *a == format!("light-{i}"))
                .map(|(_, t)| *t)
                .max()
                .unwrap();
            assert!(last <= 5_100, "light-{i} finished at {last} ms");
        }
        // The measure: between two grants to a waiting account, at most k-1 others.
        let order: Vec<&str> = got.iter().map(|(a, _)| a.as_str()).collect();
        let light_0: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, a)| **a == "light-0")
            .map(|(i, _)| i)
            .collect();
        for w in light_0.windows(2) {
            assert!(w[1] - w[0] <= 10, "gap {w:?} in {order:?}");
        }
        // The heavy account still gets everything left, at the full rate.
        assert_eq!(got.last().map(|(a, _)| a.as_str()), Some("heavy"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ban_answers_at_once_with_the_remaining_wait() {
        let c = clock();
        let l = limiter(&c, 1.0, 1);
        l.acquire(Some("a")).await.unwrap();
        // A waiter queued before the ban is answered when it starts.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(Some("b")).await });
        tokio::task::yield_now().await;
        assert_eq!(l.waiting(), 1);
        l.ban_for(Duration::from_secs(12));
        let e = waiter.await.unwrap().unwrap_err();
        assert_eq!(
            e,
            FlowError::Banned {
                app_key: "12129701".into(),
                remaining_ms: 12_000
            }
        );
        assert!(e.to_string().contains("12129701"), "{e}");
        let t0 = c.now_ms();
        c.sleep(Duration::from_secs(2)).await;
        let e = l.acquire(Some("c")).await.unwrap_err();
        assert_eq!(e.retry_after(), Duration::from_secs(10));
        assert_eq!(c.now_ms(), t0 + 2_000, "no wait during a ban");
        // A shorter ban does not shorten it.
        l.ban_for(Duration::from_secs(1));
        assert_eq!(l.banned_for(), Some(Duration::from_secs(10)));
        c.sleep(Duration::from_secs(10)).await;
        assert_eq!(l.banned_for(), None);
        l.acquire(Some("c")).await.unwrap();
        let s = l.stats();
        assert_eq!((s.bans, s.refused_banned, s.granted), (1, 2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_share_scales_the_rate() {
        let c = clock();
        let l = limiter(&c, 30.0, 1);
        l.set_share(1.0 / 3.0);
        assert!((l.effective_rate() - 10.0).abs() < 1e-9);
        let got = run(&l, &c, (0..21).map(|i| format!("a{i}")).collect()).await;
        // 1 at once, then 10/s: the 21st at 2 s.
        assert_eq!(got.last().unwrap().1, 2_000);
        // Back to the whole rate: 30/s.
        l.set_share(1.0);
        c.sleep(Duration::from_secs(1)).await;
        let got = run(&l, &c, (0..31).map(|i| format!("a{i}")).collect()).await;
        // (Sleeps are whole ms: 34 ms per token, never less than 1000/30.)
        let last = got.last().unwrap().1;
        assert!((1_000..=1_040).contains(&last), "{last}");
        // Out-of-range shares are clamped.
        l.set_share(f64::NAN);
        assert_eq!(l.share(), 1.0);
        l.set_share(5.0);
        assert_eq!(l.share(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_bounded() {
        let c = clock();
        let l = Arc::new(AppKeyLimiter::new(
            "u",
            "k",
            FlowSettings {
                rate_per_s: 1.0,
                burst: 1,
                wait_max_ms: 500,
            },
            c.clone(),
        ));
        l.acquire(None).await.unwrap();
        let e = l.acquire(None).await.unwrap_err();
        assert!(matches!(e, FlowError::Busy { waited_ms: 500, .. }), "{e:?}");
        // The refused waiter took no token: one second after the first, the next goes.
        c.sleep(Duration::from_millis(500)).await;
        l.acquire(None).await.unwrap();
        assert_eq!(l.stats().refused_busy, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_limiter_per_app_key_with_the_smaller_settings() {
        let c = clock();
        let reg = AppKeyLimiters::new(c.clone());
        let a = reg.limiter("http://gw/router/rest", "12129701", FlowSettings::default());
        let b = reg.limiter(
            "http://gw/router/rest",
            "12129701",
            FlowSettings {
                rate_per_s: 5.0,
                burst: 50,
                wait_max_ms: 30_000,
            },
        );
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.settings().rate_per_s, 5.0);
        assert_eq!(a.settings().burst, 20);
        let other = reg.limiter("http://gw/router/rest", "other", FlowSettings::default());
        assert!(!Arc::ptr_eq(&a, &other));
        reg.set_live_workers(4);
        assert_eq!(a.share(), 0.25);
        let later = reg.limiter(
            "http://gw2/router/rest",
            "12129701",
            FlowSettings::default(),
        );
        assert_eq!(later.share(), 0.25);
        assert_eq!(reg.all().len(), 3);
        // A limit beats no limit.
        let z = reg.limiter(
            "z",
            "k",
            FlowSettings {
                rate_per_s: 0.0,
                ..FlowSettings::default()
            },
        );
        reg.limiter("z", "k", FlowSettings::default());
        assert_eq!(z.settings().rate_per_s, 20.0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_when_the_rate_is_zero() {
        let c = clock();
        let l = limiter(&c, 0.0, 1);
        for _ in 0..1000 {
            l.acquire(Some("a")).await.unwrap();
        }
        assert_eq!(c.now_ms(), 1_000_000);
    }
}
