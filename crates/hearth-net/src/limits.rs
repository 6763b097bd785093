//! How much network a sandbox may use: a rate in bytes per second, a total
//! byte cap, and a number of connections open at once.
//!
//! [`RateBucket`] is the rate's bookkeeping, pure and fed timestamps so it
//! is tested without sleeping: each chunk is charged when it passes, and
//! the bucket says how long to wait before the next may.

use std::time::{Duration, Instant};

/// A sandbox's network limits. Bytes count both ways (to and from the
/// destination), all connections together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkLimits {
    /// Most bytes per second, averaged over a second (a burst of up to
    /// one second's worth passes at once); `None` for no limit.
    pub rate: Option<u64>,
    /// Most bytes over the sandbox's life; past it the connection that
    /// crossed it ends and new ones are refused. `None` for no cap.
    pub max_bytes: Option<u64>,
    /// Most connections open at once; more are refused until one ends.
    pub max_connections: usize,
}

/// Connections open at once when nothing else is set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

impl Default for NetworkLimits {
    fn default() -> Self {
        Self {
            rate: None,
            max_bytes: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A token bucket of bytes: refills at `rate` per second up to one
/// second's worth; a chunk larger than what is left is let through at
/// once and paid for by waiting afterwards, so chunks of any size pass and
/// the average holds.
#[derive(Debug, Clone)]
pub struct RateBucket {
    rate: u64,
    /// Bytes available at `at`; negative when a chunk was let through on
    /// credit.
    tokens: f64,
    at: Instant,
}

impl RateBucket {
    /// A full bucket for `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            tokens: rate as f64,
            at: now,
        }
    }

    /// Charge `bytes` passing at `now`; how long the sender must wait
    /// before sending more.
    pub fn charge(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        let full = self.rate as f64;
        self.tokens = (self.tokens + elapsed * full).min(full);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / full)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_of_one_second_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut bucket = RateBucket::new(1000, t0);
        assert_eq!(bucket.charge(1000, t0), Duration::ZERO);
        assert_eq!(bucket.charge(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid.
        assert_eq!(
            bucket.charge(0, t0 + Duration::from_millis(500)),
            Duration::ZERO
        );
    }

    #[test]
    fn an_idle_bucket_fills_to_one_second_only() {
        let t0 = Instant::now();
        let mut bucket = RateBucket::new(100, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.charge(100, later), Duration::ZERO);
        assert_eq!(bucket.charge(100, later), Duration::from_secs(1));
    }

    proptest! {
        /// A sender that always waits as told never beats the rate by more
        /// than the one-second burst.
        #[test]
        fn the_average_holds(rate in 1u64..10_000_000, chunks in proptest::collection::vec(1u64..200_000, 1..200)) {
            let t0 = Instant::now();
            let mut bucket = RateBucket::new(rate, t0);
            let mut now = t0;
            let mut sent = 0u64;
            for chunk in chunks {
                let wait = bucket.charge(chunk, now);
                sent += chunk;
                now += wait;
                let allowed = rate as f64 * (now - t0).as_secs_f64() + rate as f64;
                prop_assert!(sent as f64 <= allowed + 1.0, "sent {sent} by {:?}, allowed {allowed}", now - t0);
            }
        }
    }
}
