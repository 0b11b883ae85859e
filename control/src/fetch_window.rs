//! The default follow-up fetch window of a stage state.
//!
//! When an event changes stage, every subscribed device that does not hold the new stage's
//! content fetches it. If they all fetch the moment the state arrives, the prefetch tier sees
//! the whole fleet in one second. A state therefore carries `fetch_within_ms`: each device
//! fetches at a uniformly random moment of that window, so the wave's rate is at most
//! `subscribers / window`. An operator may set the window per publish; otherwise the control
//! plane sets it here, from the devices subscribed to the event right now and the follow-up
//! fetch rate the prefetch tier can take:
//!
//! ```text
//! window_ms = clamp(ceil(subscribers * 1000 / (capacity_per_s * share)), min_window, max_window)
//! ```
//!
//! Every subscribed device is counted, as if none had prefetched: the window is sized for the
//! worst case, in which the wave stays within `share` of the capacity. Only stage states
//! (`critical`) get a default; a best-effort message has no follow-up fetch.
//!
//! The subscriber counts come from the control plane's [`StatsSource`]: the node registry in a
//! cluster, one `MGET` of every node's report. Node reports are themselves refreshed every
//! [`crate::nodes::HEARTBEAT_INTERVAL`] (2 s), so the counts are cached for
//! `subscribers_max_age` (1 s by default) instead of being read on every publish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringside_protocol::{EventState, Topic};
use ringside_sync_util::LockExt;

use crate::StatsSource;
use crate::api::FETCH_WITHIN_MAX_MS;

/// Follow-up fetches per second one node serves: the prefetch query on a node-cache miss
/// measured at ~3,100 requests/s (8 connections) to ~3,300/s (128 connections) on two cores
/// (`docs/BENCHMARKS.md`, "Requests per second"), rounded down.
pub const DEFAULT_FOLLOW_UP_FETCH_CAPACITY_PER_S: u32 = 3_000;
/// Share of that capacity a stage change's follow-up fetches may take: the other half stays
/// for everything else a node serves at that moment (prefetch stragglers, refreshes, live-path
/// queries).
pub const DEFAULT_FOLLOW_UP_FETCH_SHARE: f64 = 0.5;
/// Shortest default window: below a second, spreading buys nothing.
pub const DEFAULT_MIN_FETCH_WINDOW: Duration = Duration::from_secs(1);
/// Longest default window: no device waits more than a minute for a stage's content.
pub const DEFAULT_MAX_FETCH_WINDOW: Duration = Duration::from_secs(60);
/// How long the subscriber counts read from the stats source are reused.
pub const DEFAULT_SUBSCRIBERS_MAX_AGE: Duration = Duration::from_secs(1);

/// How the control plane sizes the default follow-up fetch window.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchWindowConfig {
    /// Follow-up fetches per second the whole prefetch tier serves (every instance that
    /// answers `/graphql`, added up). Default: one node's measured capacity.
    pub follow_up_fetch_capacity_per_s: u32,
    /// Share of that capacity, in (0, 1], the follow-up fetches of one stage change may take.
    pub follow_up_fetch_share: f64,
    /// The default window is never shorter than this.
    pub min_window: Duration,
    /// The default window is never longer than this; zero turns the default off (states carry
    /// a window only when the operator sets one).
    pub max_window: Duration,
    /// Subscriber counts are read from the stats source at most this often; zero reads them
    /// on every publish.
    pub subscribers_max_age: Duration,
}

impl Default for FetchWindowConfig {
    fn default() -> Self {
        Self {
            follow_up_fetch_capacity_per_s: DEFAULT_FOLLOW_UP_FETCH_CAPACITY_PER_S,
            follow_up_fetch_share: DEFAULT_FOLLOW_UP_FETCH_SHARE,
            min_window: DEFAULT_MIN_FETCH_WINDOW,
            max_window: DEFAULT_MAX_FETCH_WINDOW,
            subscribers_max_age: DEFAULT_SUBSCRIBERS_MAX_AGE,
        }
    }
}

/// A fetch-window setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fetch window setting {field}: {problem}")]
pub struct FetchWindowConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl FetchWindowConfig {
    /// Checks every bound; runs before anything binds.
    pub fn validate(&self) -> Result<(), FetchWindowConfigError> {
        let fail = |field, problem| Err(FetchWindowConfigError { field, problem });
        if self.follow_up_fetch_capacity_per_s == 0 {
            return fail("follow_up_fetch_capacity_per_s", "must be at least 1");
        }
        let share = self.follow_up_fetch_share;
        if !(share > 0.0 && share <= 1.0) {
            return fail("follow_up_fetch_share", "must be above 0 and at most 1");
        }
        let longest = Duration::from_millis(FETCH_WITHIN_MAX_MS);
        if self.max_window > longest {
            return fail("max_window", "must be at most one hour");
        }
        if !self.max_window.is_zero() && self.min_window > self.max_window {
            return fail("min_window", "must be at most max_window");
        }
        if self.subscribers_max_age > crate::nodes::NODE_TTL {
            return fail(
                "subscribers_max_age",
                "must be at most 10 s (the node registry's report lifetime)",
            );
        }
        Ok(())
    }

    /// Whether the control plane sets a default window at all.
    pub fn is_on(&self) -> bool {
        !self.max_window.is_zero()
    }

    /// The default window for `subscribers` devices, in milliseconds; `None` when the default
    /// is off.
    pub fn window_ms(&self, subscribers: u64) -> Option<u64> {
        if !self.is_on() {
            return None;
        }
        let rate_per_s =
            f64::from(self.follow_up_fetch_capacity_per_s.max(1)) * self.follow_up_fetch_share;
        let needed_ms = (subscribers as f64 * 1000.0 / rate_per_s.max(f64::MIN_POSITIVE)).ceil();
        let (min_ms, max_ms) = (millis(self.min_window), millis(self.max_window));
        // `as` saturates: a count too large for the window lands on the maximum.
        Some((needed_ms as u64).clamp(min_ms.min(max_ms), max_ms))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The counts last read from the stats source.
#[derive(Debug)]
struct SubscriberCounts {
    read_at: Instant,
    by_topic: HashMap<Topic, u64>,
}

/// The control plane's fetch-window policy and its cache of subscriber counts.
#[derive(Debug)]
pub struct FetchWindow {
    /// The configuration with the cache it governs, so that replacing one clears the other.
    /// Never held across an await: the stats are read with it released, and two publishes
    /// that miss the cache at once both read them (publishes are rare; a single flight would
    /// make one wait on the other's registry round trip).
    state: Mutex<(FetchWindowConfig, Option<SubscriberCounts>)>,
}

impl Default for FetchWindow {
    fn default() -> Self {
        Self::new(FetchWindowConfig::default())
    }
}

impl FetchWindow {
    pub fn new(config: FetchWindowConfig) -> Self {
        Self {
            state: Mutex::new((config, None)),
        }
    }

    /// Replaces the configuration (and forgets the cached counts).
    pub fn configure(&self, config: FetchWindowConfig) {
        *self.state.locked() = (config, None);
    }

    pub fn config(&self) -> FetchWindowConfig {
        self.state.locked().0.clone()
    }

    /// The `fetch_within_ms` `state` goes out with: the operator's value when set, else for a
    /// stage state the default from the devices subscribed to its topic, else none.
    ///
    /// When the stats source cannot be read (the registry unreachable), the count is unknown
    /// and the longest window is used: a slower stage switch for some devices rather than an
    /// unbounded wave on the prefetch tier.
    pub async fn window_for(
        &self,
        state: &EventState,
        operator_set: Option<u64>,
        stats: &dyn StatsSource,
    ) -> Option<u64> {
        if operator_set.is_some() {
            return operator_set;
        }
        if !state.priority.is_critical() {
            return None;
        }
        let config = self.config();
        if !config.is_on() {
            return None;
        }
        let subscribers = match self.cached_subscribers(&state.topic, &config) {
            Some(count) => count,
            None => match stats.stats().await {
                Ok(stats) => {
                    let by_topic: HashMap<Topic, u64> = stats
                        .topics
                        .into_iter()
                        .map(|topic| (topic.topic, topic.subscribers))
                        .collect();
                    let count = by_topic.get(&state.topic).copied().unwrap_or(0);
                    self.remember(by_topic);
                    count
                }
                Err(error) => {
                    tracing::warn!(%error, topic = %state.topic, "subscriber count unknown; the follow-up fetch window is the longest");
                    u64::MAX
                }
            },
        };
        config.window_ms(subscribers)
    }

    fn cached_subscribers(&self, topic: &Topic, config: &FetchWindowConfig) -> Option<u64> {
        let state = self.state.locked();
        let counts = state.1.as_ref()?;
        if counts.read_at.elapsed() >= config.subscribers_max_age {
            return None;
        }
        Some(counts.by_topic.get(topic).copied().unwrap_or(0))
    }

    fn remember(&self, by_topic: HashMap<Topic, u64>) {
        let mut state = self.state.locked();
        if state.0.subscribers_max_age.is_zero() {
            return;
        }
        state.1 = Some(SubscriberCounts {
            read_at: Instant::now(),
            by_topic,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures_util::future::BoxFuture;
    use ringside_protocol::admin::{Stats, TopicStats};
    use ringside_protocol::{Payload, Priority, Stage};

    use super::*;
    use crate::ControlError;

    fn state(topic: &str, priority: Priority) -> EventState {
        EventState {
            topic: Topic::parse(topic).expect("topic"),
            version: 2,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1,
            payload: Payload::empty(),
            priority,
            fetch_within_ms: None,
        }
    }

    /// A stats source with fixed counts that counts how often it is read.
    struct CountingStats {
        subscribers: u64,
        reads: AtomicU64,
        fail: bool,
    }

    impl CountingStats {
        fn new(subscribers: u64) -> Self {
            Self {
                subscribers,
                reads: AtomicU64::new(0),
                fail: false,
            }
        }
    }

    impl StatsSource for CountingStats {
        fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let result = if self.fail {
                Err(ControlError::StoreUnavailable)
            } else {
                Ok(Stats {
                    nodes: Vec::new(),
                    topics: vec![TopicStats {
                        topic: Topic::parse("event:kickoff").expect("topic"),
                        subscribers: self.subscribers,
                        version: 1,
                        acks: 0,
                    }],
                })
            };
            Box::pin(async move { result })
        }
    }

    #[test]
    fn the_window_is_subscribers_over_the_share_of_capacity_within_its_bounds() {
        let config = FetchWindowConfig::default();
        // 3,000/s × 0.5 = 1,500 fetches/s.
        assert_eq!(config.window_ms(0), Some(1_000), "never below the minimum");
        assert_eq!(
            config.window_ms(1_000),
            Some(1_000),
            "667 ms, raised to 1 s"
        );
        assert_eq!(config.window_ms(1_501), Some(1_001), "rounded up");
        assert_eq!(config.window_ms(15_000), Some(10_000));
        assert_eq!(config.window_ms(45_000), Some(30_000));
        assert_eq!(config.window_ms(90_000), Some(60_000));
        assert_eq!(
            config.window_ms(200_000),
            Some(60_000),
            "never above the maximum"
        );
        assert_eq!(config.window_ms(u64::MAX), Some(60_000));
        let wider = FetchWindowConfig {
            follow_up_fetch_capacity_per_s: 12_000,
            follow_up_fetch_share: 0.25,
            ..FetchWindowConfig::default()
        };
        assert_eq!(wider.window_ms(30_000), Some(10_000));
    }

    #[test]
    fn the_window_rate_never_exceeds_the_share_of_capacity_between_the_bounds() {
        let config = FetchWindowConfig::default();
        let allowed =
            f64::from(config.follow_up_fetch_capacity_per_s) * config.follow_up_fetch_share;
        for subscribers in (0..200_000).step_by(997) {
            let window = config.window_ms(subscribers).expect("on");
            assert!((1_000..=60_000).contains(&window));
            if window < 60_000 {
                let rate = subscribers as f64 * 1000.0 / window as f64;
                assert!(rate <= allowed + 1e-9, "{subscribers}: {rate}/s");
            }
        }
    }

    #[test]
    fn a_zero_maximum_turns_the_default_off() {
        let off = FetchWindowConfig {
            max_window: Duration::ZERO,
            ..FetchWindowConfig::default()
        };
        assert_eq!(off.validate(), Ok(()));
        assert_eq!(off.window_ms(50_000), None);
    }

    #[test]
    fn every_bound_is_validated() {
        assert_eq!(FetchWindowConfig::default().validate(), Ok(()));
        let field_of = |config: FetchWindowConfig| config.validate().map_err(|e| e.field);
        let base = FetchWindowConfig::default;
        assert_eq!(
            field_of(FetchWindowConfig {
                follow_up_fetch_capacity_per_s: 0,
                ..base()
            }),
            Err("follow_up_fetch_capacity_per_s")
        );
        for share in [0.0, -0.5, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(
                field_of(FetchWindowConfig {
                    follow_up_fetch_share: share,
                    ..base()
                }),
                Err("follow_up_fetch_share"),
                "{share}"
            );
        }
        assert_eq!(
            field_of(FetchWindowConfig {
                max_window: Duration::from_millis(FETCH_WITHIN_MAX_MS + 1),
                ..base()
            }),
            Err("max_window")
        );
        assert_eq!(
            field_of(FetchWindowConfig {
                min_window: Duration::from_secs(61),
                ..base()
            }),
            Err("min_window")
        );
        assert_eq!(
            field_of(FetchWindowConfig {
                subscribers_max_age: Duration::from_secs(11),
                ..base()
            }),
            Err("subscribers_max_age")
        );
    }

    #[tokio::test]
    async fn the_operator_wins_best_effort_gets_none_and_stage_states_the_default() {
        let window = FetchWindow::default();
        let stats = CountingStats::new(15_000);
        let live = state("event:kickoff", Priority::Critical);
        assert_eq!(window.window_for(&live, Some(250), &stats).await, Some(250));
        assert_eq!(window.window_for(&live, Some(0), &stats).await, Some(0));
        let ticker = state("event:kickoff", Priority::BestEffort);
        assert_eq!(window.window_for(&ticker, None, &stats).await, None);
        assert_eq!(
            stats.reads.load(Ordering::Relaxed),
            0,
            "no lookup when not needed"
        );
        assert_eq!(window.window_for(&live, None, &stats).await, Some(10_000));
        let elsewhere = state("event:other", Priority::Critical);
        assert_eq!(
            window.window_for(&elsewhere, None, &stats).await,
            Some(1_000)
        );
    }

    #[tokio::test]
    async fn counts_are_cached_for_their_max_age_only() {
        let stats = CountingStats::new(3_000);
        let live = state("event:kickoff", Priority::Critical);
        let cached = FetchWindow::default();
        for _ in 0..10 {
            assert_eq!(cached.window_for(&live, None, &stats).await, Some(2_000));
        }
        assert_eq!(stats.reads.load(Ordering::Relaxed), 1);
        let uncached = FetchWindow::new(FetchWindowConfig {
            subscribers_max_age: Duration::ZERO,
            ..FetchWindowConfig::default()
        });
        for _ in 0..10 {
            assert_eq!(uncached.window_for(&live, None, &stats).await, Some(2_000));
        }
        assert_eq!(stats.reads.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn an_unknown_count_gets_the_longest_window() {
        let stats = CountingStats {
            fail: true,
            ..CountingStats::new(0)
        };
        let live = state("event:kickoff", Priority::Critical);
        assert_eq!(
            FetchWindow::default().window_for(&live, None, &stats).await,
            Some(60_000)
        );
    }
}
