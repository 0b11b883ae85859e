//! [`LogBudget`]: at most N lines per second from one log site.
//!
//! Under overload the lines a node writes about what it refuses (every shed request, every
//! refused upgrade, every accept error) grow with the offered load, and writing them becomes
//! part of the overload. A site asks its budget before it logs; past the budget the line is
//! dropped and counted in `ringside_log_suppressed_total{site="…"}`, and the first line the
//! site is allowed in a later second is preceded by one line saying how many were suppressed.
//!
//! Cost: one clock read and two relaxed atomics per call; no lock, no allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::{Counter, Registry};

/// A per-site log rate limit. Create one per site at startup and keep it.
#[derive(Debug)]
pub struct LogBudget {
    site: &'static str,
    lines_per_s: u64,
    /// Start of the clock the seconds are counted on.
    epoch: Instant,
    /// `second << 32 | lines allowed in it`: one word, so that the second and its count change
    /// together.
    window: AtomicU64,
    /// Lines suppressed since the last "suppressed" line.
    pending_suppressed: AtomicU64,
    suppressed: Arc<Counter>,
}

impl LogBudget {
    /// A budget of `lines_per_s` lines per second (at least 1) for `site`, counted in
    /// `ringside_log_suppressed_total{site="<site>"}`.
    pub fn new(registry: &Registry, site: &'static str, lines_per_s: u32) -> Self {
        Self {
            site,
            lines_per_s: u64::from(lines_per_s.max(1)),
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            pending_suppressed: AtomicU64::new(0),
            suppressed: registry.labelled_counter(
                "ringside_log_suppressed_total",
                "Log lines a site's rate limit (LogBudget) dropped.",
                &[("site", site)],
            ),
        }
    }

    /// Whether the caller may log a line now. When lines were suppressed before, the first
    /// allowed call of a new second logs how many first.
    pub fn allow(&self) -> bool {
        let second = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        let mut window = self.window.load(Ordering::Relaxed);
        loop {
            let (current, used) = (window >> 32, window & 0xffff_ffff);
            let next = if current == second {
                if used >= self.lines_per_s {
                    self.pending_suppressed.fetch_add(1, Ordering::Relaxed);
                    self.suppressed.increment();
                    return false;
                }
                window + 1
            } else {
                second << 32 | 1
            };
            match self.window.compare_exchange_weak(
                window,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => window = actual,
            }
        }
        let suppressed = self.pending_suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            tracing::warn!(
                site = self.site,
                suppressed,
                "suppressed {suppressed} log lines of this site (over its budget of {} per second)",
                self.lines_per_s
            );
        }
        true
    }

    /// Lines suppressed so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_budget_per_second_and_counts_the_rest() {
        let registry = Registry::new();
        let budget = LogBudget::new(&registry, "test_site", 5);
        let allowed = (0..100).filter(|_| budget.allow()).count();
        // The 100 calls may straddle a second boundary: then up to twice the budget passes.
        assert!((5..=10).contains(&allowed), "{allowed} allowed");
        assert_eq!(budget.suppressed(), 100 - allowed as u64);
        let text = registry.render();
        assert!(
            text.contains(&format!(
                "ringside_log_suppressed_total{{site=\"test_site\"}} {}\n",
                100 - allowed
            )),
            "{text}"
        );
    }
}
