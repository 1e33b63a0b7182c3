//! Exponential restart backoff with jitter.

use std::time::Duration;

/// `base`, doubling per consecutive restart, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Delay before the restart that follows `attempt` earlier consecutive restarts.
    ///
    /// `jitter` is a random number in `[0, 1)`; it spreads the delay over ±10% so that many
    /// instances crashing together (a bad deploy, a shared dependency) do not restart in
    /// lockstep. The result never exceeds `max`.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doubled = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        let capped = doubled.min(self.max);
        let spread = capped.as_secs_f64() * 0.2 * (jitter.clamp(0.0, 1.0) - 0.5);
        Duration::from_secs_f64((capped.as_secs_f64() + spread).max(0.0)).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(1000),
        max: Duration::from_millis(60_000),
    };

    #[test]
    fn doubles_to_the_cap_without_jitter() {
        let mid = 0.5; // jitter 0.5 = no spread
        let table = [
            (0, 1000),
            (1, 2000),
            (2, 4000),
            (3, 8000),
            (5, 32_000),
            (6, 60_000),
            (7, 60_000),
            (40, 60_000),
            (u32::MAX, 60_000),
        ];
        for (attempt, ms) in table {
            assert_eq!(
                B.delay(attempt, mid),
                Duration::from_millis(ms),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_below_max() {
        for attempt in 0..10 {
            let centre = B.delay(attempt, 0.5).as_secs_f64();
            for j in [0.0, 0.1, 0.5, 0.9, 0.999_999] {
                let d = B.delay(attempt, j);
                assert!(d <= B.max, "attempt {attempt} jitter {j}: {d:?}");
                let ratio = d.as_secs_f64() / centre;
                assert!(
                    (0.899..=1.101).contains(&ratio),
                    "attempt {attempt}: {ratio}"
                );
            }
        }
        assert!(B.delay(0, 0.0) < B.delay(0, 0.99));
    }
}
