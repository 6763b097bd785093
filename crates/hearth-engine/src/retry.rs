//! Retry policies: how many attempts a step gets, how long to wait between
//! them, and which errors are never retried. Pure: the jitter's randomness
//! is an argument, so a policy's decisions are reproducible.

use serde::{Deserialize, Serialize};

use crate::step::StepError;

/// How a failing step is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: never retried).
    pub max_attempts: u32,
    /// Wait before the second attempt, ms.
    pub initial_backoff_ms: u64,
    /// Longest wait between attempts, ms.
    pub max_backoff_ms: u64,
    /// Each wait is this many times the one before (at least 1).
    pub multiplier: f64,
    /// Each wait is moved by up to this fraction of itself, up or down
    /// (0 to 1), so that many runs failing together do not retry together.
    pub jitter: f64,
    /// Error classes never retried.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting 1 s, 2 s, 4 s, 8 s (±20%), at most 60 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
            multiplier: 2.0,
            jitter: 0.2,
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Why this policy is not usable, if it is not.
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1 (1: never retried)".into());
        }
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(format!(
                "multiplier must be at least 1, got {}",
                self.multiplier
            ));
        }
        if !self.jitter.is_finite() || !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "jitter must be between 0 and 1, got {}",
                self.jitter
            ));
        }
        if self.initial_backoff_ms > self.max_backoff_ms {
            return Err(format!(
                "initial_backoff_ms ({}) must not exceed max_backoff_ms ({})",
                self.initial_backoff_ms, self.max_backoff_ms
            ));
        }
        Ok(())
    }

    /// After attempt `attempt` (1-based) failed with `error`: how long to
    /// wait before the next one, or `None` when the step fails for good.
    /// `random` is uniform in `[0, 1)`, for the jitter.
    pub fn backoff_ms(&self, attempt: u32, error: &StepError, random: f64) -> Option<u64> {
        if !error.retryable
            || attempt >= self.max_attempts
            || self.non_retryable.contains(&error.class)
        {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = (self.initial_backoff_ms as f64) * self.multiplier.max(1.0).powi(exponent);
        let capped = base.min(self.max_backoff_ms as f64);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Some((capped * factor).clamp(0.0, self.max_backoff_ms as f64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn waits_grow_to_the_cap_and_stop_at_the_last_attempt() {
        let policy = RetryPolicy {
            jitter: 0.0,
            max_attempts: 6,
            initial_backoff_ms: 100,
            max_backoff_ms: 1_000,
            ..RetryPolicy::default()
        };
        let e = StepError::retryable("timeout", "slow");
        let waits: Vec<_> = (1..=6).map(|a| policy.backoff_ms(a, &e, 0.5)).collect();
        assert_eq!(
            waits,
            [Some(100), Some(200), Some(400), Some(800), Some(1000), None]
        );
        assert_eq!(
            policy.backoff_ms(1, &StepError::permanent("bad", "no"), 0.5),
            None
        );
        let no_400 = RetryPolicy {
            non_retryable: vec!["http_400".into()],
            ..policy.clone()
        };
        assert_eq!(
            no_400.backoff_ms(1, &StepError::retryable("http_400", "bad request"), 0.5),
            None
        );
        assert_eq!(RetryPolicy::never().backoff_ms(1, &e, 0.5), None);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (policy, needle) in [
            (
                RetryPolicy {
                    max_attempts: 0,
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                RetryPolicy {
                    multiplier: 0.5,
                    ..Default::default()
                },
                "multiplier",
            ),
            (
                RetryPolicy {
                    jitter: 2.0,
                    ..Default::default()
                },
                "jitter",
            ),
            (
                RetryPolicy {
                    initial_backoff_ms: 10,
                    max_backoff_ms: 5,
                    ..Default::default()
                },
                "initial_backoff_ms",
            ),
        ] {
            assert!(policy.check().unwrap_err().contains(needle));
        }
        assert!(RetryPolicy::default().check().is_ok());
    }

    proptest! {
        /// Jittered waits stay within the jitter band and the cap, and an
        /// attempt past the limit is never retried.
        #[test]
        fn waits_stay_in_bounds(
            attempt in 1u32..20,
            initial in 0u64..10_000,
            extra in 0u64..100_000,
            multiplier in 1.0f64..5.0,
            jitter in 0.0f64..=1.0,
            random in 0.0f64..1.0,
            max_attempts in 1u32..10,
        ) {
            let policy = RetryPolicy {
                max_attempts,
                initial_backoff_ms: initial,
                max_backoff_ms: initial + extra,
                multiplier,
                jitter,
                non_retryable: Vec::new(),
            };
            prop_assert!(policy.check().is_ok());
            let e = StepError::retryable("x", "y");
            match policy.backoff_ms(attempt, &e, random) {
                None => prop_assert!(attempt >= max_attempts),
                Some(wait) => {
                    prop_assert!(attempt < max_attempts);
                    prop_assert!(wait <= policy.max_backoff_ms);
                }
            }
        }
    }
}
