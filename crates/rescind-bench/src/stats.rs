//! Latency samples and the summary the tables print.

use serde::Serialize;
use std::time::Duration;

/// Latencies of one measured run, in microseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    us: Vec<u64>,
}

impl Samples {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Samples {
            us: Vec::with_capacity(n),
        }
    }
    /// Record one latency.
    pub fn push(&mut self, d: Duration) {
        self.us.push(d.as_micros().min(u64::MAX as u128) as u64);
    }
    /// Take in another run's samples.
    pub fn extend(&mut self, other: Samples) {
        self.us.extend(other.us);
    }
    /// How many.
    pub fn len(&self) -> usize {
        self.us.len()
    }
    /// The `q`-quantile (0..=1) in µs, nearest rank; 0 when empty.
    pub fn quantile_us(&mut self, q: f64) -> u64 {
        if self.us.is_empty() {
            return 0;
        }
        self.us.sort_unstable();
        let rank = ((q.clamp(0.0, 1.0) * self.us.len() as f64).ceil() as usize).max(1);
        self.us[rank.min(self.us.len()) - 1]
    }
    /// Mean in µs; 0 when empty.
    pub fn mean_us(&self) -> f64 {
        if self.us.is_empty() {
            return 0.0;
        }
        self.us.iter().sum::<u64>() as f64 / self.us.len() as f64
    }
}

/// One row of a closed-loop run.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    /// Sagas that finished as planned in the window.
    pub sagas: usize,
    /// Sagas that ended otherwise (failed, stuck, stopped) — must be 0.
    pub failed: usize,
    /// Sagas per second.
    pub per_sec: f64,
    /// Latency, start → finished, µs.
    pub p50_us: u64,
    /// 99th percentile latency, µs.
    pub p99_us: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Records per flush in this run (sled only; 0 otherwise).
    pub batch: f64,
    /// Mean time inside the step executor per saga, µs (custom saga only).
    pub executor_us_per_saga: f64,
}

/// The median of some values (the middle one; the lower middle for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(v.len() - 1) / 2]
}

/// The run whose throughput is the median of `runs` (so its latencies belong to the same run).
pub fn median_run(mut runs: Vec<RunSummary>) -> Option<RunSummary> {
    if runs.is_empty() {
        return None;
    }
    runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    let i = (runs.len() - 1) / 2;
    Some(runs.swap_remove(i))
}

/// What one closed-loop task returns: its latency samples, how many of its
/// sagas failed, and the first failure's text.
pub type TaskResult = (Samples, usize, Option<String>);

/// Join the closed-loop tasks and merge what they measured, with the count
/// of failed sagas; warns (naming `what`) when some failed.
pub async fn gather(
    tasks: Vec<tokio::task::JoinHandle<TaskResult>>,
    what: &str,
) -> anyhow::Result<(Samples, usize)> {
    use anyhow::Context;
    let mut all = Samples::with_capacity(64 * 1024);
    let mut failed = 0;
    let mut first_failure = None;
    for t in tasks {
        let (s, f, ff) = t.await.with_context(|| format!("a {what} task panicked"))?;
        all.extend(s);
        failed += f;
        first_failure = first_failure.or(ff);
    }
    if let Some(ff) = &first_failure {
        eprintln!("  warning: {failed} {what} saga(s) did not complete; first: {ff}");
    }
    Ok((all, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(Duration::from_micros(i));
        }
        assert_eq!(s.quantile_us(0.5), 50);
        assert_eq!(s.quantile_us(0.99), 99);
        assert_eq!(s.quantile_us(1.0), 100);
        assert_eq!(Samples::default().quantile_us(0.5), 0);
    }

    #[test]
    fn median_picks_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![]), 0.0);
    }
}
