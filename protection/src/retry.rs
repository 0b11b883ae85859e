//! Jittered retry hints.
//!
//! Every refusal a node answers (`503` with `Retry-After`, a GraphQL `OVERLOADED` error's
//! `retry_after_ms`, a goaway's `reconnect_after_ms`) carries a delay drawn uniformly from a
//! window, not a constant: a thousand clients refused in the same millisecond then come back
//! spread over the window instead of as a second stampede.

use std::time::Duration;

/// A retry window: delays are drawn uniformly from `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter {
    pub min: Duration,
    pub max: Duration,
}

impl RetryAfter {
    pub const fn new(min: Duration, max: Duration) -> Self {
        Self { min, max }
    }

    /// One delay from the window (`min` when the window is empty or inverted).
    pub fn draw(&self) -> Duration {
        retry_after(self.min, self.max)
    }

    /// One delay from the window in whole seconds for an HTTP `Retry-After` header: rounded
    /// up, at least 1, so that a client never reads "retry now".
    pub fn draw_header_seconds(&self) -> u64 {
        header_seconds(self.draw())
    }
}

/// `delay` in whole seconds for an HTTP `Retry-After` header: rounded up, at least 1, so that
/// a client never reads "retry now".
pub fn header_seconds(delay: Duration) -> u64 {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    seconds.max(1)
}

/// A delay drawn uniformly from `[min, max]` (`min` when `max <= min`).
pub fn retry_after(min: Duration, max: Duration) -> Duration {
    if max <= min {
        return min;
    }
    let span = u64::try_from((max - min).as_millis()).unwrap_or(u64::MAX);
    min + Duration::from_millis(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_in_the_window_and_spread_over_it() {
        let window = RetryAfter::new(Duration::from_secs(1), Duration::from_secs(5));
        let draws: Vec<Duration> = (0..2000).map(|_| window.draw()).collect();
        assert!(draws.iter().all(|d| *d >= window.min && *d <= window.max));
        let low = draws
            .iter()
            .filter(|d| **d < Duration::from_secs(2))
            .count();
        let high = draws
            .iter()
            .filter(|d| **d > Duration::from_secs(4))
            .count();
        assert!(low > 200 && high > 200, "spread: {low} low, {high} high");
        let seconds: Vec<u64> = (0..500).map(|_| window.draw_header_seconds()).collect();
        assert!(seconds.iter().all(|s| (1..=5).contains(s)));
        assert!(
            seconds.iter().any(|s| *s != seconds[0]),
            "header values vary"
        );
    }

    #[test]
    fn an_empty_window_is_its_minimum_and_never_zero_seconds() {
        let zero = RetryAfter::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.draw(), Duration::ZERO);
        assert_eq!(zero.draw_header_seconds(), 1);
        assert_eq!(
            retry_after(Duration::from_secs(3), Duration::from_secs(1)),
            Duration::from_secs(3)
        );
    }
}
