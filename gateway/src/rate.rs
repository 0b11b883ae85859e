//! One rate limit, used for a connection's inbound frames and its inbound bytes: a budget that
//! refills at a steady rate up to a burst, kept as GCRA (one instant instead of a token count
//! and a refill time, so that it costs a connection 16 bytes).

use std::time::Duration;

use tokio::time::Instant;

/// A budget of `burst` units that refills at `per_second` units a second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateBudget {
    /// The theoretical arrival time: when the budget would be full again if nothing more were
    /// charged.
    full_at: Instant,
}

impl RateBudget {
    pub(crate) fn new(now: Instant) -> Self {
        Self { full_at: now }
    }

    /// Charges `units` at `now` to a budget of `burst` units refilling at `per_second`.
    /// Returns, when the charge takes it past the burst, the instant the budget is back
    /// within it.
    pub(crate) fn charge(
        &mut self,
        now: Instant,
        units: u64,
        per_second: u32,
        burst: u32,
    ) -> Option<Instant> {
        let time_of = |units: u64| {
            Duration::from_nanos(units.saturating_mul(1_000_000_000) / u64::from(per_second.max(1)))
        };
        self.full_at = self.full_at.max(now) + time_of(units);
        let burst = time_of(u64::from(burst));
        (self.full_at.duration_since(now) > burst).then(|| self.full_at - burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_and_the_rate_refills_it() {
        let start = Instant::now();
        let mut budget = RateBudget::new(start);
        for _ in 0..10 {
            assert_eq!(budget.charge(start, 1, 10, 10), None, "within the burst");
        }
        let back = budget.charge(start, 1, 10, 10).expect("past the burst");
        assert_eq!(back, start + Duration::from_millis(100));
        // A second later ten more units fit again.
        let later = start + Duration::from_millis(1100);
        for _ in 0..10 {
            assert_eq!(budget.charge(later, 1, 10, 10), None);
        }
    }
}
