//! One rate limit, used for a connection's inbound frames and its inbound bytes: a budget that
//! refills at a steady rate up to a burst, kept as GCRA (one instant instead of a token count
//! and a refill time, so that it costs a connection 16 bytes).
//!
//! [`SharedRateBudget`] is the same budget shared by every core, for the node's upgrade
//! admission: the instant is an atomic count of nanoseconds, updated by compare-and-swap, so
//! that a storm of upgrades never lines up behind a lock.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// A [`RateBudget`] that many tasks charge at once, without a lock.
#[derive(Debug)]
pub(crate) struct SharedRateBudget {
    /// What every instant is counted from.
    epoch: Instant,
    /// The theoretical arrival time, in nanoseconds since `epoch`.
    full_at_ns: AtomicU64,
    /// Nanoseconds one unit takes to refill.
    unit_ns: u64,
    /// Nanoseconds the burst takes to refill.
    burst_ns: u64,
}

impl SharedRateBudget {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let unit_ns = 1_000_000_000 / u64::from(per_second.max(1));
        Self {
            epoch: Instant::now(),
            full_at_ns: AtomicU64::new(0),
            unit_ns,
            burst_ns: unit_ns.saturating_mul(u64::from(burst)),
        }
    }

    /// Charges one unit at `now`; false (and nothing charged) when the budget is spent.
    pub(crate) fn try_take(&self, now: Instant) -> bool {
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut full_at = self.full_at_ns.load(Ordering::Relaxed);
        loop {
            let next = full_at.max(now_ns).saturating_add(self.unit_ns);
            if next - now_ns > self.burst_ns {
                return false;
            }
            match self.full_at_ns.compare_exchange_weak(
                full_at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => full_at = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_budget_admits_its_burst_then_its_rate() {
        let budget = SharedRateBudget::new(10, 5);
        let start = budget.epoch;
        let admitted = (0..20).filter(|_| budget.try_take(start)).count();
        assert_eq!(admitted, 5, "the burst");
        // 100 ms refills one unit.
        let later = start + Duration::from_millis(100);
        assert!(budget.try_take(later));
        assert!(!budget.try_take(later));
        // Many threads at once never admit more than the burst.
        let budget = std::sync::Arc::new(SharedRateBudget::new(1, 100));
        let now = budget.epoch;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || (0..100).filter(|_| budget.try_take(now)).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(total, 100);
    }

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
