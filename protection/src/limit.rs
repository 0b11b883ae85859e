//! The adaptive concurrency limit: how many requests a node works on at once, following its
//! measured latency.
//!
//! [`Gradient2`] is the estimator of Netflix's concurrency-limits library of the same name:
//! it compares the short-term latency (the mean of the last window of samples) with the
//! long-term one (an exponential average over many windows). While they agree, the limit grows
//! by a queue allowance of √limit per window; when the short-term latency rises past the
//! tolerance, the limit shrinks by the ratio (at most halving per window). The result is
//! smoothed and held between the configured bounds.
//!
//! [`AdaptiveLimit`] runs it concurrently: requests in flight and the samples of the current
//! window are atomics updated by every request; the request that completes a window (enough
//! samples, long enough) recomputes the limit under a `try_lock` that nobody ever waits for.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringside_sync_util::LockExt;

use crate::ProtectionConfig;

/// The Gradient2 estimator, without concurrency: one call per window of samples.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    limit: f64,
    min_limit: f64,
    max_limit: f64,
    smoothing: f64,
    tolerance: f64,
    /// Weight of a window in the long-term average: 2 / (windows + 1).
    long_weight: f64,
    long_rtt_us: Option<f64>,
}

impl Gradient2 {
    pub fn new(config: &ProtectionConfig) -> Self {
        Self {
            limit: f64::from(config.initial_limit),
            min_limit: f64::from(config.min_limit),
            max_limit: f64::from(config.max_limit),
            smoothing: config.smoothing,
            tolerance: config.rtt_tolerance,
            long_weight: 2.0 / (f64::from(config.long_window) + 1.0),
            long_rtt_us: None,
        }
    }

    pub fn limit(&self) -> f64 {
        self.limit
    }

    pub fn long_rtt_us(&self) -> f64 {
        self.long_rtt_us.unwrap_or(0.0)
    }

    /// Takes one window: its mean latency, the most requests in flight during it, and whether
    /// any request was shed in it. Returns the new limit.
    pub fn update(&mut self, short_rtt_us: f64, max_in_flight: u64, shed: bool) -> f64 {
        let short = short_rtt_us.max(1.0);
        let mut long = match self.long_rtt_us {
            None => short,
            Some(long) => long + (short - long) * self.long_weight,
        };
        // After a spike the long-term average sits far above what requests take now: let it
        // come down faster, so that the next rise is recognised.
        if long / short > 2.0 {
            long *= 0.95;
        }
        self.long_rtt_us = Some(long);
        // A node using less than half its limit says nothing about a higher one, unless it
        // shed: under tightened shares the lowest classes are refused well below half the
        // limit, and a window that refused work is limited by the limit, not idle.
        if !shed && (max_in_flight as f64) < self.limit / 2.0 {
            return self.limit;
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let queue_allowance = self.limit.sqrt();
        let estimate = self.limit * gradient + queue_allowance;
        let smoothed = self.limit * (1.0 - self.smoothing) + estimate * self.smoothing;
        self.limit = smoothed.clamp(self.min_limit, self.max_limit);
        self.limit
    }
}

/// The samples of the window being filled.
#[derive(Debug, Default)]
struct Window {
    /// Start, in microseconds since [`AdaptiveLimit::epoch`].
    start_us: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
    max_in_flight: AtomicU64,
    /// Requests refused in the window.
    shed: AtomicU64,
}

/// The concurrency limit of one node and its requests in flight.
#[derive(Debug)]
pub struct AdaptiveLimit {
    /// The limit now, rounded, at least 1: what admission reads.
    limit: AtomicU64,
    in_flight: AtomicU64,
    window: Window,
    estimator: Mutex<Gradient2>,
    epoch: Instant,
    window_us: u64,
    min_window_samples: u64,
    /// The last window's mean, and the long-term average, for status and the ruleset.
    short_rtt_us: AtomicU64,
    long_rtt_us: AtomicU64,
    /// Windows closed so far: tells a reader whether `short_rtt_us` is new.
    windows: AtomicU64,
}

impl AdaptiveLimit {
    pub fn new(config: &ProtectionConfig) -> Self {
        let estimator = Gradient2::new(config);
        Self {
            limit: AtomicU64::new(rounded_limit(estimator.limit())),
            in_flight: AtomicU64::new(0),
            window: Window::default(),
            estimator: Mutex::new(estimator),
            epoch: Instant::now(),
            window_us: u64::try_from(config.sample_window.as_micros()).unwrap_or(u64::MAX),
            min_window_samples: u64::from(config.min_window_samples),
            short_rtt_us: AtomicU64::new(0),
            long_rtt_us: AtomicU64::new(0),
            windows: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn short_rtt_us(&self) -> u64 {
        self.short_rtt_us.load(Ordering::Relaxed)
    }

    pub fn long_rtt_us(&self) -> u64 {
        self.long_rtt_us.load(Ordering::Relaxed)
    }

    /// Windows closed since start.
    pub fn windows(&self) -> u64 {
        self.windows.load(Ordering::Relaxed)
    }

    /// Takes a place if fewer than `share` × limit requests are in flight. A compare-and-swap
    /// loop, so that a burst of requests refused at a lower threshold never makes the count
    /// look higher to a request of a higher class.
    pub fn try_acquire(&self, share: f64) -> bool {
        let allowed = self.limit() as f64 * share;
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current as f64 >= allowed {
                self.window.shed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes a place whatever the limit (protection off: measured, never refused).
    pub fn acquire(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives a place back; `latency` is the request's sample (none for a request that was
    /// cancelled before it answered).
    pub fn release(&self, latency: Option<Duration>) {
        let before = self.in_flight.fetch_sub(1, Ordering::AcqRel);
        let Some(latency) = latency else {
            return;
        };
        let window = &self.window;
        let sample_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        window.max_in_flight.fetch_max(before, Ordering::Relaxed);
        window.sum_us.fetch_add(sample_us, Ordering::Relaxed);
        let count = window.count.fetch_add(1, Ordering::Relaxed) + 1;
        if count < self.min_window_samples {
            return;
        }
        let now_us = self.now_us();
        if now_us.saturating_sub(window.start_us.load(Ordering::Relaxed)) >= self.window_us {
            self.close_window(now_us);
        }
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Recomputes the limit from the window just completed. Whoever gets the estimator does
    /// it; a request that finds it taken carries on (its sample counts in the next window).
    fn close_window(&self, now_us: u64) {
        let Ok(mut estimator) = self.estimator.try_lock() else {
            return;
        };
        let window = &self.window;
        // Another request may have closed this window between our check and the lock.
        if now_us.saturating_sub(window.start_us.load(Ordering::Relaxed)) < self.window_us {
            return;
        }
        let count = window.count.swap(0, Ordering::Relaxed);
        let sum_us = window.sum_us.swap(0, Ordering::Relaxed);
        let max_in_flight = window.max_in_flight.swap(0, Ordering::Relaxed);
        let shed = window.shed.swap(0, Ordering::Relaxed) > 0;
        window.start_us.store(now_us, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        let short_rtt_us = sum_us as f64 / count as f64;
        let limit = estimator.update(short_rtt_us, max_in_flight, shed);
        self.limit.store(rounded_limit(limit), Ordering::Relaxed);
        self.short_rtt_us
            .store(short_rtt_us as u64, Ordering::Relaxed);
        self.long_rtt_us
            .store(estimator.long_rtt_us() as u64, Ordering::Relaxed);
        self.windows.fetch_add(1, Ordering::Relaxed);
    }

    /// The estimator's state, for tests and status.
    pub fn estimator(&self) -> Gradient2 {
        self.estimator.locked().clone()
    }
}

fn rounded_limit(limit: f64) -> u64 {
    (limit.round() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: u32, initial: u32, max: u32) -> ProtectionConfig {
        ProtectionConfig {
            min_limit: min,
            initial_limit: initial,
            max_limit: max,
            ..ProtectionConfig::default()
        }
    }

    #[test]
    fn flat_latency_grows_the_limit_to_its_maximum_and_no_further() {
        let mut gradient = Gradient2::new(&config(10, 20, 200));
        let mut previous = gradient.limit();
        for _ in 0..500 {
            // Busy: as many in flight as the limit allows.
            let limit = gradient.update(10_000.0, gradient.limit() as u64, false);
            assert!(limit >= previous, "{limit} after {previous}");
            previous = limit;
        }
        assert_eq!(gradient.limit(), 200.0);
    }

    #[test]
    fn rising_latency_shrinks_the_limit_down_to_its_minimum_and_no_further() {
        let mut gradient = Gradient2::new(&config(10, 100, 200));
        for _ in 0..50 {
            gradient.update(10_000.0, 100, false);
        }
        let before = gradient.limit();
        // Latency four times the long-term level: the gradient bottoms out at 0.5.
        let after = gradient.update(40_000.0, before as u64, false);
        assert!(after < before, "{after} not below {before}");
        // Latency that keeps rising outruns the long-term average: down to the floor.
        let mut rtt = 40_000.0;
        for _ in 0..60 {
            rtt *= 1.3;
            let limit = gradient.update(rtt, gradient.limit() as u64, false);
            assert!(limit >= 10.0);
        }
        assert_eq!(gradient.limit(), 10.0);
    }

    #[test]
    fn an_idle_node_keeps_its_limit() {
        let mut gradient = Gradient2::new(&config(10, 100, 200));
        for _ in 0..100 {
            gradient.update(10_000.0, 3, false);
        }
        assert_eq!(gradient.limit(), 100.0);
    }

    #[test]
    fn a_window_that_shed_moves_the_limit_even_below_half_of_it() {
        // Under tightened shares only a few low-class requests are in flight, far below half
        // the limit, yet the node sheds: rising latency must still bring the limit down.
        let mut gradient = Gradient2::new(&config(10, 100, 200));
        for _ in 0..50 {
            gradient.update(10_000.0, 100, false);
        }
        let before = gradient.limit();
        assert_eq!(
            gradient.update(40_000.0, 5, false),
            before,
            "idle: unchanged"
        );
        assert!(
            gradient.update(40_000.0, 5, true) < before,
            "shedding: it moves"
        );
    }

    #[test]
    fn admission_holds_the_share_of_the_limit_and_places_come_back() {
        let limit = AdaptiveLimit::new(&config(10, 10, 10));
        let admitted = (0..20).filter(|_| limit.try_acquire(0.5)).count();
        assert_eq!(admitted, 5);
        assert!(limit.try_acquire(1.0));
        assert_eq!(limit.in_flight(), 6);
        for _ in 0..6 {
            limit.release(None);
        }
        assert_eq!(limit.in_flight(), 0);
    }

    #[test]
    fn windows_of_samples_move_the_concurrent_limit() {
        let mut settings = config(4, 64, 64);
        settings.sample_window = Duration::from_millis(10);
        settings.min_window_samples = 1;
        let limit = AdaptiveLimit::new(&settings);
        // Fill the limit, then answer slower and slower: each window closes on its first
        // sample after 10 ms.
        let mut rtt = Duration::from_millis(1);
        for _ in 0..30 {
            for _ in 0..64 {
                limit.acquire();
            }
            std::thread::sleep(Duration::from_millis(11));
            for _ in 0..64 {
                limit.release(Some(rtt));
            }
            rtt *= 2;
            if rtt > Duration::from_secs(100) {
                break;
            }
        }
        assert!(limit.limit() < 64, "limit {}", limit.limit());
        assert!(limit.limit() >= 4);
        assert!(limit.short_rtt_us() > limit.long_rtt_us());
    }
}
