//! Seams for every source of nondeterminism: time, randomness, ids.
//!
//! The engine never reads the system clock, never sleeps on its own and never
//! draws from a global RNG: all of it goes through these traits, so a test can
//! run on tokio's paused clock and a simulation can replay a seed exactly.

use crate::ids::SagaId;
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Wall-clock time and sleeping.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// Sleep for `d`.
    async fn sleep(&self, d: Duration);
}

/// A clock on tokio's timer: `now_ms` is a base epoch plus tokio's monotonic
/// elapsed time. Under a paused tokio runtime (`start_paused`) both advance
/// virtually, so tests never sleep for real and stay deterministic.
#[derive(Clone, Debug)]
pub struct TokioClock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// Base the clock on the system's current time.
    pub fn system() -> Self {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::with_base(base_ms)
    }
    /// Base the clock on a fixed epoch (simulation: the same seed, the same times).
    pub fn with_base(base_ms: u64) -> Self {
        TokioClock {
            base_ms,
            start: tokio::time::Instant::now(),
        }
    }
}

#[async_trait]
impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// A source of random numbers (back-off jitter).
pub trait Rng: Send + Sync + 'static {
    /// The next 64 random bits.
    fn next_u64(&self) -> u64;
    /// A number in `0..n` (`n > 0`; returns 0 for `n == 0`).
    fn below(&self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// SplitMix64: tiny, fast, seedable, good enough for jitter and fault draws.
#[derive(Debug)]
pub struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SplitMix64 {
            state: AtomicU64::new(seed),
        }
    }
    /// The SplitMix64 output function of one state value.
    pub fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Rng for SplitMix64 {
    fn next_u64(&self) -> u64 {
        let s = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        Self::mix(s)
    }
}

/// Where saga ids come from.
pub trait IdGen: Send + Sync + 'static {
    /// A new, unique saga id.
    fn next_id(&self) -> SagaId;
}

/// Unique, time-ordered ids (UUID v7, [`SagaId::new_random`]; production).
#[derive(Debug, Default)]
pub struct RandomIds;

impl IdGen for RandomIds {
    fn next_id(&self) -> SagaId {
        SagaId::new_random()
    }
}

/// Deterministic ids from a seed and a counter (tests, simulation).
#[derive(Debug)]
pub struct SeededIds {
    seed: u64,
    counter: AtomicU64,
}

impl SeededIds {
    /// Ids derived from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededIds {
            seed,
            counter: AtomicU64::new(0),
        }
    }
}

impl IdGen for SeededIds {
    fn next_id(&self) -> SagaId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hi = SplitMix64::mix(self.seed ^ 0x5a5a_5a5a);
        SagaId::from_u128(((hi as u128) << 64) | n as u128)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_spread() {
        let a = SplitMix64::new(42);
        let b = SplitMix64::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut sorted = xs.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        assert!(xs.iter().all(|x| a.below(10) < 10 && *x != 0));
    }

    #[test]
    fn seeded_ids_are_unique_and_reproducible() {
        let a = SeededIds::new(1);
        let b = SeededIds::new(1);
        let ia: Vec<SagaId> = (0..100).map(|_| a.next_id()).collect();
        let ib: Vec<SagaId> = (0..100).map(|_| b.next_id()).collect();
        assert_eq!(ia, ib);
        let set: std::collections::HashSet<_> = ia.iter().collect();
        assert_eq!(set.len(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_advances_virtually() {
        let c = TokioClock::with_base(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.sleep(Duration::from_secs(3600)).await;
        assert_eq!(c.now_ms(), 1_000 + 3_600_000);
    }
}
