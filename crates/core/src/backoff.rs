//! Retry delays: exponential growth with a cap, and jitter so that clients which failed
//! together (a restart, an outage) do not all retry at the same instant.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A random number without a random-number crate: std's hasher keys are random per process,
/// and the clock makes successive calls differ. For jitter only.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// `base` scaled by a random factor in [0.75, 1.25).
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.75 + (random_u64() % 1000) as f64 / 2000.0)
}

/// `initial × 2^(attempt-1)`, capped at `max`, then [`jittered`].
pub fn exponential(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let grown = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    jittered(grown.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_and_caps() {
        let i = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        for attempt in 1..=12 {
            let d = exponential(i, m, attempt);
            let base = (i * 2u32.pow(attempt - 1)).min(m);
            assert!(
                d >= base.mul_f64(0.75) && d < base.mul_f64(1.25),
                "{attempt}: {d:?}"
            );
        }
        assert!(exponential(i, m, 40) < m.mul_f64(1.25));
        assert!(
            exponential(i, m, 0) < i.mul_f64(1.25),
            "attempt 0 counts as the first"
        );
    }
}
