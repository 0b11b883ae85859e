//! [`ProtectionConfig`]: every number protection works with, with its default and its bounds.

use std::time::Duration;

use ringside_protocol::Priority;
use ringside_protocol::admin::{PerClass, ProtectionMode, RulesetMode};

use crate::RetryAfter;

/// Settings of a node's protection (docs/OPERATIONS.md, "Protection").
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectionConfig {
    /// `on` (default): limit and shed. `off`: classify and measure only, never refuse (for
    /// side-by-side runs); the ruleset's pause of background work is off with it.
    pub mode: ProtectionMode,
    /// The concurrency limit at startup (default 64).
    pub initial_limit: u32,
    /// The limit never goes below this (default 16): a node always serves some requests at
    /// once, however slow its last window was.
    pub min_limit: u32,
    /// The limit never goes above this (default 2048): beyond it a node would only queue.
    pub max_limit: u32,
    /// Weight of a new estimate in the limit (default 0.2): lower is steadier, slower.
    pub smoothing: f64,
    /// How much the short-term latency may exceed the long-term one before the limit shrinks
    /// (default 1.5: 50 % more).
    pub rtt_tolerance: f64,
    /// Shortest window of latency samples the limit is recomputed from (default 250 ms).
    pub sample_window: Duration,
    /// Fewest samples in a window (default 16): windows with fewer wait for more.
    pub min_window_samples: u32,
    /// Windows the long-term latency averages over (default 600: two and a half minutes at
    /// 250 ms windows under steady traffic).
    pub long_window: u32,
    /// Share of the limit each class may fill (default critical 1.0, degraded 0.9, best_effort
    /// 0.7, bulk 0.5): class c is admitted while in-flight < limit × share(c).
    pub shares: PerClass<f64>,
    /// The shares while the ruleset is active (default 1.0, 0.9, 0.35, 0.15).
    pub tightened_shares: PerClass<f64>,
    /// Retry windows per class, lower classes longer (default critical 1–2 s, degraded 1–5 s,
    /// best_effort 5–30 s, bulk 15–60 s).
    pub retry_after: PerClass<RetryAfter>,
    /// The ruleset at startup (default `auto`).
    pub ruleset: RulesetMode,
    /// How long the ruleset holds after an event goes LIVE (default 300 s).
    pub live_window: Duration,
    /// How long it holds after any other stage transition (default 60 s).
    pub transition_window: Duration,
    /// Short-term over long-term latency above which the ruleset switches on (default 2.0;
    /// `None`: off).
    pub latency_ratio: Option<f64>,
    /// The short-term latency must also be above this for the latency trigger (default
    /// 25 ms), so that a fast idle node's noise never trips it.
    pub latency_floor: Duration,
    /// Requests per second above which the ruleset switches on (default `None`: off; set it
    /// from a node's measured capacity).
    pub max_request_rate: Option<u32>,
    /// How long a latency or rate trigger holds after its condition last held (default 30 s).
    pub load_hold: Duration,
    /// How often the ruleset's windows and triggers are re-evaluated (default 250 ms).
    pub evaluate_interval: Duration,
    /// How often a process reads the fleet-wide setting from Redis (default 2 s).
    pub fleet_poll_interval: Duration,
    /// Shed lines logged per second (default 5; the rest are counted).
    pub shed_log_lines_per_s: u32,
    /// How often the scheduling-lag probe wakes (default 5 ms).
    pub lag_probe_interval: Duration,
    /// Per class, the scheduling lag above which its requests are shed whatever is in flight
    /// (`None`: never on lag; critical's default). The lag is how late the node's runtime runs
    /// a task that is due: the queue of requests waiting to be read, which the concurrency
    /// limit cannot see when handlers are CPU-bound and finish without yielding.
    pub lag_limits: PerClass<Option<Duration>>,
    /// The same while the ruleset is active.
    pub tightened_lag_limits: PerClass<Option<Duration>>,
    /// Per class, how long a keep-alive connection is not served after one of its requests
    /// was shed (default 0 for every class: off; at most 60 s). A client that honours
    /// `Retry-After` waits longer anyway; one that does not is held to one request per pause
    /// instead of keeping the node busy refusing it ([`crate::pace`]). Off by default: with a
    /// fixed set of such clients it trades goodput for the latency of the classes above them
    /// (docs/BENCHMARKS.md: at 10x, critical p99 halved, goodput 0.63 of 1x).
    pub shed_pause: PerClass<Duration>,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        let window = |min_ms, max_ms| {
            RetryAfter::new(Duration::from_millis(min_ms), Duration::from_millis(max_ms))
        };
        Self {
            mode: ProtectionMode::On,
            initial_limit: 64,
            min_limit: 16,
            max_limit: 2048,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            sample_window: Duration::from_millis(250),
            min_window_samples: 16,
            long_window: 600,
            shares: PerClass {
                critical: 1.0,
                degraded: 0.9,
                best_effort: 0.7,
                bulk: 0.5,
            },
            tightened_shares: PerClass {
                critical: 1.0,
                degraded: 0.9,
                best_effort: 0.35,
                bulk: 0.15,
            },
            retry_after: PerClass {
                critical: window(1_000, 2_000),
                degraded: window(1_000, 5_000),
                best_effort: window(5_000, 30_000),
                bulk: window(15_000, 60_000),
            },
            ruleset: RulesetMode::Auto,
            live_window: Duration::from_secs(300),
            transition_window: Duration::from_secs(60),
            latency_ratio: Some(2.0),
            latency_floor: Duration::from_millis(25),
            max_request_rate: None,
            load_hold: Duration::from_secs(30),
            evaluate_interval: Duration::from_millis(250),
            fleet_poll_interval: Duration::from_secs(2),
            shed_log_lines_per_s: 5,
            lag_probe_interval: Duration::from_millis(5),
            lag_limits: PerClass {
                critical: None,
                degraded: Some(Duration::from_millis(500)),
                best_effort: Some(Duration::from_millis(50)),
                bulk: Some(Duration::from_millis(20)),
            },
            tightened_lag_limits: PerClass {
                critical: None,
                degraded: Some(Duration::from_millis(250)),
                best_effort: Some(Duration::from_millis(20)),
                bulk: Some(Duration::from_millis(10)),
            },
            shed_pause: PerClass::default(),
        }
    }
}

/// A protection setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid protection setting {field}: {problem}")]
pub struct ProtectionConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

/// Largest concurrency limit a node may be configured with.
pub const LIMIT_MAX: u32 = 1 << 20;

impl ProtectionConfig {
    /// Checks every bound; runs before anything binds.
    pub fn validate(&self) -> Result<(), ProtectionConfigError> {
        let fail = |field, problem| Err(ProtectionConfigError { field, problem });
        if self.min_limit == 0 || self.max_limit > LIMIT_MAX {
            return fail("min_limit/max_limit", "must be between 1 and 1048576");
        }
        if !(self.min_limit <= self.initial_limit && self.initial_limit <= self.max_limit) {
            return fail("initial_limit", "must be between min_limit and max_limit");
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return fail("smoothing", "must be above 0 and at most 1");
        }
        if !(1.0..=10.0).contains(&self.rtt_tolerance) {
            return fail("rtt_tolerance", "must be between 1 and 10");
        }
        let between = |value: Duration, min: Duration, max: Duration| min <= value && value <= max;
        let (ms, s) = (Duration::from_millis(1), Duration::from_secs(1));
        if !between(self.sample_window, 10 * ms, 60 * s) {
            return fail("sample_window", "must be between 10 ms and 60 s");
        }
        if !(1..=100_000).contains(&self.min_window_samples) {
            return fail("min_window_samples", "must be between 1 and 100000");
        }
        if !(1..=100_000).contains(&self.long_window) {
            return fail("long_window", "must be between 1 and 100000");
        }
        for shares in [&self.shares, &self.tightened_shares] {
            if shares.critical != 1.0 {
                return fail(
                    "shares",
                    "critical's share is 1.0: it may use the whole limit",
                );
            }
            let ordered = [
                shares.critical,
                shares.degraded,
                shares.best_effort,
                shares.bulk,
            ];
            if ordered.iter().any(|share| !(*share > 0.0 && *share <= 1.0))
                || ordered.windows(2).any(|pair| pair[1] > pair[0])
            {
                return fail(
                    "shares",
                    "must be above 0, at most 1, and not rise from a class to a lower one",
                );
            }
        }
        let tightened_wider = ringside_protocol::Priority::ALL
            .iter()
            .any(|class| self.tightened_shares.get(*class) > self.shares.get(*class));
        if tightened_wider {
            return fail("tightened_shares", "must not exceed the normal shares");
        }
        for class in ringside_protocol::Priority::ALL {
            let window = self.retry_after.get(class);
            if window.min > window.max || window.min < ms || window.max > 3600 * s {
                return fail("retry_after", "windows must be 1 ms to 1 h, min <= max");
            }
        }
        if !between(self.lag_probe_interval, ms, s) {
            return fail("lag_probe_interval", "must be between 1 ms and 1 s");
        }
        for limits in [&self.lag_limits, &self.tightened_lag_limits] {
            let ordered = ringside_protocol::Priority::ALL.map(|class| limits.get(class));
            // A lower class never tolerates more lag than a higher one (None: never shed).
            let rank = |limit: Option<Duration>| limit.unwrap_or(Duration::MAX);
            if ordered
                .iter()
                .any(|limit| limit.is_some_and(|limit| !between(limit, 2 * ms, 60 * s)))
                || ordered.windows(2).any(|pair| rank(pair[1]) > rank(pair[0]))
            {
                return fail(
                    "lag_limits",
                    "must be 2 ms to 60 s and not rise from a class to a lower one",
                );
            }
        }
        let day = 24 * 3600 * s;
        if self.live_window > day || self.transition_window > day || self.load_hold > day {
            return fail(
                "live_window/transition_window/load_hold",
                "must be at most a day",
            );
        }
        if self
            .latency_ratio
            .is_some_and(|ratio| !(1.0..=100.0).contains(&ratio))
        {
            return fail("latency_ratio", "must be between 1 and 100");
        }
        if self.latency_floor > 60 * s {
            return fail("latency_floor", "must be at most 60 s");
        }
        if self.max_request_rate == Some(0) {
            return fail("max_request_rate", "must be at least 1 (or unset)");
        }
        if !between(self.evaluate_interval, 10 * ms, 10 * s) {
            return fail("evaluate_interval", "must be between 10 ms and 10 s");
        }
        if !between(self.fleet_poll_interval, 100 * ms, 60 * s) {
            return fail("fleet_poll_interval", "must be between 100 ms and 60 s");
        }
        if Priority::ALL
            .into_iter()
            .any(|class| self.shed_pause.get(class) > 60 * s)
        {
            return fail("shed_pause", "must be at most 60 s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_out_of_range_bounds_do_not() {
        assert_eq!(ProtectionConfig::default().validate(), Ok(()));
        let broken: [fn(&mut ProtectionConfig); 12] = [
            |c| c.min_limit = 0,
            |c| c.initial_limit = 4,
            |c| c.max_limit = LIMIT_MAX + 1,
            |c| c.smoothing = 0.0,
            |c| c.rtt_tolerance = 0.5,
            |c| c.sample_window = Duration::ZERO,
            |c| c.shares.critical = 0.9,
            |c| c.shares.bulk = 0.95,
            |c| c.tightened_shares.bulk = 0.6,
            |c| c.retry_after.bulk.min = Duration::from_secs(90),
            |c| c.latency_ratio = Some(0.5),
            |c| c.max_request_rate = Some(0),
        ];
        for breaking in broken {
            let mut config = ProtectionConfig::default();
            breaking(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
