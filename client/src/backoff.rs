//! Reconnect delays: decorrelated jitter, with a server's `Retry-After` as a floor.
//!
//! Decorrelated jitter (as in "Exponential Backoff And Jitter", AWS Architecture Blog):
//! `sleep = min(cap, random_between(base, previous_sleep * 3))`, starting from `base`. Each
//! device's delays grow about threefold per failure like exponential backoff, but every draw
//! depends on the device's own previous draw, so a fleet that failed at the same instant
//! spreads out further with each round instead of retrying in waves.

use std::time::Duration;

/// A device's reconnect delay state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// The last delay drawn; `base` after a reset.
    previous: Duration,
}

impl Backoff {
    /// Delays of at least `base` (raised to 1 ms) and at most `cap` (raised to `base`).
    pub fn new(base: Duration, cap: Duration) -> Self {
        let base = base.max(Duration::from_millis(1));
        let cap = cap.max(base);
        Self {
            base,
            cap,
            previous: base,
        }
    }

    /// The next delay: uniform in `[base, min(cap, previous * 3)]`.
    pub fn next_delay(&mut self, rng: &mut fastrand::Rng) -> Duration {
        let upper = self.previous.saturating_mul(3).min(self.cap);
        let (low_ms, high_ms) = (millis(self.base), millis(upper).max(millis(self.base)));
        let delay = Duration::from_millis(rng.u64(low_ms..=high_ms)).min(self.cap);
        self.previous = delay;
        delay
    }

    /// Back to the first delay: after a connection that lasted, a failure is a new incident.
    pub fn reset(&mut self) {
        self.previous = self.base;
    }

    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The longest `Retry-After` the client accepts; a larger value is read as this, so that a
/// misconfigured or hostile server cannot park a device for days.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// The `Retry-After` of an HTTP answer, in its delay-seconds form (the form Ringside sends);
/// the HTTP-date form and anything unreadable count as absent.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn every_delay_is_between_base_and_three_times_the_previous_and_never_above_the_cap() {
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut backoff = Backoff::new(BASE, CAP);
            let mut previous = BASE;
            for _ in 0..40 {
                let delay = backoff.next_delay(&mut rng);
                assert!(delay >= BASE, "seed {seed}: {delay:?} below the base");
                assert!(delay <= CAP, "seed {seed}: {delay:?} above the cap");
                assert!(
                    delay <= previous * 3,
                    "seed {seed}: {delay:?} more than 3 × {previous:?}"
                );
                previous = delay;
            }
        }
    }

    #[test]
    fn delays_grow_with_failures_and_spread_across_devices() {
        // 500 devices that failed at the same instant, 12 failures in a row each.
        let mut second = Vec::new();
        let mut twelfth = Vec::new();
        for seed in 0..500 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut backoff = Backoff::new(BASE, CAP);
            let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay(&mut rng)).collect();
            second.push(delays[1]);
            twelfth.push(delays[11]);
        }
        second.sort();
        twelfth.sort();
        let median = |sorted: &[Duration]| sorted[sorted.len() / 2];
        assert!(
            median(&second) < Duration::from_millis(500),
            "{:?}",
            median(&second)
        );
        assert!(
            median(&twelfth) >= BASE * 10,
            "the typical delay grew from 100 ms to {:?}",
            median(&twelfth)
        );
        // Devices that failed together are spread over the range, not in lockstep.
        let distinct: std::collections::BTreeSet<Duration> = twelfth.iter().copied().collect();
        assert!(
            distinct.len() > 300,
            "only {} distinct delays",
            distinct.len()
        );
        assert!(
            twelfth[50] < Duration::from_secs(1),
            "10th percentile {:?}",
            twelfth[50]
        );
        assert!(
            twelfth[450] > Duration::from_secs(4),
            "90th percentile {:?}",
            twelfth[450]
        );
    }

    #[test]
    fn a_reset_starts_over_from_the_base() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..20 {
            backoff.next_delay(&mut rng);
        }
        backoff.reset();
        let first = backoff.next_delay(&mut rng);
        assert!(first >= BASE && first <= BASE * 3, "{first:?}");
    }

    #[test]
    fn degenerate_bounds_are_raised_not_trusted() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(zero.next_delay(&mut rng), Duration::from_millis(1));
        }
        let mut inverted = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(inverted.cap(), Duration::from_secs(2));
        assert_eq!(inverted.next_delay(&mut rng), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_bounded() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 75 "), Some(Duration::from_secs(75)));
        assert_eq!(parse_retry_after("99999999"), Some(RETRY_AFTER_MAX));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after(""), None);
    }
}
