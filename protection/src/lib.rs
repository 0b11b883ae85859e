//! Protection of a node under overload: what it refuses, when, and how it tells clients to come
//! back.
//!
//! - [`classify`]: the priority class of an HTTP request (route, method, device token ceiling,
//!   `x-ringside-priority` header), without reading its body.
//! - [`limit`]: the adaptive concurrency limit ([`limit::Gradient2`]) that follows measured
//!   latency, and the requests in flight under it.
//! - [`ruleset`]: the event-driven ruleset: tightened shares for the low classes and a pause of
//!   the node's own background work, around stage transitions and under load.
//! - [`layer`]: [`ProtectionLayer`], the tower layer that classifies, admits or sheds every
//!   request of the admin API, GraphQL and the WebSocket upgrade.
//! - [`config`]: [`ProtectionConfig`], every number above with its default and bounds.
//! - [`retry_after`]: the jittered `Retry-After` every refusal carries, so that the clients a
//!   node turned away do not all return at the same instant.
//!
//! [`Protection`] is one node's shared state: the layer admits through it, the admin API reads
//! and switches it, the bus observer feeds it stage transitions, and [`Protection::run`]
//! re-evaluates its ruleset on a tick.

pub mod classify;
pub mod config;
pub mod layer;
pub mod limit;
pub mod pace;
pub mod retry;
pub mod ruleset;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::Response;
use ringside_protocol::admin::{PerClass, ProtectionMode, ProtectionStatus, ProtectionUpdate};
use ringside_protocol::{EventState, Priority, unix_now_ms};
use ringside_sync_util::LockExt;
use ringside_telemetry::{Counter, Histogram, LogBudget, Registry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use classify::{RequestClass, Route};
pub use config::{ProtectionConfig, ProtectionConfigError};
pub use layer::{ProtectionLayer, Streaming};
pub use pace::{ConnectionPace, PaceLayer, PaceService};
pub use retry::{RetryAfter, retry_after};

use crate::layer::Ticket;
use crate::limit::AdaptiveLimit;
use crate::ruleset::{LoadSignals, Ruleset};

/// How a computed gauge reads the protection state.
type GaugeReader = fn(&Protection) -> i64;

/// Per class (index [`Priority::index`]) and route (index [`Route::index`]).
type ClassRouteCounters = [[Arc<Counter>; Route::ALL.len()]; Priority::ALL.len()];

#[derive(Debug)]
struct ProtectionMetrics {
    shed: ClassRouteCounters,
    admitted: ClassRouteCounters,
    latency: Arc<Histogram>,
    bad_headers: Arc<Counter>,
    paused_connections: Arc<Counter>,
}

fn class_route_counters(
    registry: &Registry,
    name: &'static str,
    help: &'static str,
) -> ClassRouteCounters {
    Priority::ALL.map(|class| {
        Route::ALL.map(|route| {
            registry.labelled_counter(
                name,
                help,
                &[("class", class.as_str()), ("route", route.as_str())],
            )
        })
    })
}

/// A node's protection state, shared by the layer, the admin API and the ruleset's tick.
#[derive(Debug)]
pub struct Protection {
    config: ProtectionConfig,
    node: String,
    /// `--protection on`: limit and shed (off: measure only).
    on: AtomicBool,
    limit: AdaptiveLimit,
    ruleset: Ruleset,
    metrics: ProtectionMetrics,
    shed_log: LogBudget,
    header_log: LogBudget,
    /// Whether the node's server-driven work should pause; background tasks watch it.
    background_paused: watch::Sender<bool>,
    /// Requests counted at the last evaluation, for the request rate.
    last_evaluation: Mutex<(Instant, u64, u64)>,
    /// The runtime's scheduling lag, in microseconds, as the probe last measured it (rises at
    /// once, decays over a few probes).
    lag_us: AtomicU64,
}

impl Protection {
    /// The protection of node `node`, its metrics registered in `registry`. `config` must
    /// have been validated.
    pub fn new(
        config: ProtectionConfig,
        node: impl Into<String>,
        registry: &Registry,
    ) -> Arc<Self> {
        let metrics = ProtectionMetrics {
            shed: class_route_counters(
                registry,
                "ringside_protection_shed_total",
                "Requests refused with 503 overloaded, by priority class and route.",
            ),
            admitted: class_route_counters(
                registry,
                "ringside_protection_admitted_total",
                "Requests admitted under the concurrency limit, by priority class and route.",
            ),
            latency: registry.latency_histogram(
                "ringside_protection_request_seconds",
                "Latency of admitted requests (the adaptive limit's samples), to the response head.",
            ),
            bad_headers: registry.counter(
                "ringside_protection_bad_priority_header_total",
                "Requests refused 400 for an unknown x-ringside-priority value.",
            ),
            paused_connections: registry.counter(
                "ringside_protection_paused_connections_total",
                "Keep-alive connections paused after one of their requests was shed (their \
                 next request waits out the class's shed pause).",
            ),
        };
        let protection = Arc::new(Self {
            on: AtomicBool::new(config.mode == ProtectionMode::On),
            limit: AdaptiveLimit::new(&config),
            ruleset: Ruleset::new(&config),
            metrics,
            shed_log: LogBudget::new(registry, "protection_shed", config.shed_log_lines_per_s),
            header_log: LogBudget::new(registry, "protection_bad_header", 1),
            background_paused: watch::Sender::new(false),
            last_evaluation: Mutex::new((Instant::now(), 0, 0)),
            lag_us: AtomicU64::new(0),
            node: node.into(),
            config,
        });
        let gauges: [(&'static str, &'static str, GaugeReader); 5] = [
            (
                "ringside_protection_in_flight",
                "Requests in flight under the concurrency limit.",
                |p| p.limit.in_flight() as i64,
            ),
            (
                "ringside_protection_limit",
                "The adaptive concurrency limit.",
                |p| p.limit.limit() as i64,
            ),
            (
                "ringside_protection_ruleset_active",
                "1 while the event-driven ruleset (tightened shares, paused background work) is active.",
                |p| i64::from(p.ruleset.is_active()),
            ),
            (
                "ringside_protection_scheduling_lag_microseconds",
                "How late the node's runtime runs a task that is due: the queue of requests not yet read.",
                |p| i64::try_from(p.scheduling_lag().as_micros()).unwrap_or(i64::MAX),
            ),
            (
                "ringside_protection_enabled",
                "1 while protection limits and sheds (--protection on).",
                |p| i64::from(p.is_on()),
            ),
        ];
        for (name, help, read) in gauges {
            let weak = Arc::downgrade(&protection);
            registry.computed_gauge(
                name,
                help,
                Arc::new(move || weak.upgrade().map_or(0, |p| read(&p))),
            );
        }
        protection
    }

    pub fn layer(self: &Arc<Self>) -> ProtectionLayer {
        ProtectionLayer::new(self.clone())
    }

    pub fn config(&self) -> &ProtectionConfig {
        &self.config
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn lag_limits(&self) -> &PerClass<Option<Duration>> {
        if self.ruleset.is_active() {
            &self.config.tightened_lag_limits
        } else {
            &self.config.lag_limits
        }
    }

    /// The runtime's scheduling lag now (see [`ProtectionConfig::lag_limits`]).
    pub fn scheduling_lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Takes one probe: the probe woke `late` after it was due.
    fn note_lag(&self, late: Duration) {
        let late_us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let before = self.lag_us.load(Ordering::Relaxed);
        // Up at once (a queue that formed is there now), down by a fifth per probe.
        self.lag_us
            .store(late_us.max(before - before / 5), Ordering::Relaxed);
    }

    /// Whether requests of `class` wait behind too long a queue to be worth starting.
    fn lagging(&self, class: Priority) -> bool {
        self.lag_limits()
            .get(class)
            .is_some_and(|limit| self.scheduling_lag() > limit)
    }

    fn shares(&self) -> &PerClass<f64> {
        if self.ruleset.is_active() {
            &self.config.tightened_shares
        } else {
            &self.config.shares
        }
    }

    /// Admits a request of `class`, or sheds it (`None`, counted). Protection off admits
    /// everything and still measures it.
    pub(crate) fn admit(self: &Arc<Self>, class: RequestClass) -> Option<Ticket> {
        let (c, r) = (class.class.index(), class.route.index());
        if self.is_on() {
            if self.lagging(class.class) || !self.limit.try_acquire(self.shares().get(class.class))
            {
                self.metrics.shed[c][r].increment();
                if self.shed_log.allow() {
                    tracing::info!(
                        class = class.class.as_str(),
                        route = class.route.as_str(),
                        in_flight = self.limit.in_flight(),
                        limit = self.limit.limit(),
                        lag_ms = self.scheduling_lag().as_millis(),
                        "request shed"
                    );
                }
                return None;
            }
        } else {
            self.limit.acquire();
        }
        self.metrics.admitted[c][r].increment();
        Some(Ticket::new(self.clone(), class))
    }

    pub(crate) fn release(&self, _class: RequestClass, latency: Option<Duration>) {
        self.limit.release(latency);
        if let Some(latency) = latency {
            self.metrics.latency.observe(latency);
        }
    }

    /// Whether any class pauses its connection after a shed (the layer gives connections a
    /// pace only then).
    pub fn paces(&self) -> bool {
        self.config.shed_pause != PerClass::default()
    }

    /// The answer to a shed request; its connection (when it has a pace) is paused for the
    /// class's shed pause.
    pub(crate) fn shed_response(
        &self,
        class: RequestClass,
        pace: Option<&Arc<ConnectionPace>>,
    ) -> Response {
        let pause = self.config.shed_pause.get(class.class);
        if let Some(pace) = pace
            && !pause.is_zero()
        {
            pace.hold_for(pause);
            self.metrics.paused_connections.increment();
        }
        let retry_after = self.config.retry_after.get(class.class).draw();
        layer::overloaded_response(class.route, class.class, retry_after)
    }

    pub(crate) fn note_bad_header(&self, error: &classify::BadPriorityHeader) {
        self.metrics.bad_headers.increment();
        if self.header_log.allow() {
            tracing::info!(%error, "request refused: bad priority header");
        }
    }

    /// A state this node published or read from the bus; `seed` for catch-up states, which
    /// are remembered but are no transition.
    pub fn observe_state(&self, state: &EventState, seed: bool) {
        let now_ms = unix_now_ms();
        if self.ruleset.observe(state, seed, now_ms) {
            tracing::info!(
                topic = %state.topic,
                stage = %state.stage,
                active_until_ms = self.ruleset.active_until_ms(now_ms),
                "stage transition: protection ruleset active"
            );
            self.update_background_pause();
        }
    }

    /// Applies an operator's switch.
    pub fn apply(&self, update: ProtectionUpdate) {
        let now_ms = unix_now_ms();
        if let Some(mode) = update.ruleset
            && self.ruleset.set_mode(mode, now_ms)
        {
            tracing::info!(ruleset = ?mode, "protection ruleset switched");
        }
        if let Some(mode) = update.protection {
            let on = mode == ProtectionMode::On;
            if self.on.swap(on, Ordering::Relaxed) != on {
                tracing::info!(protection = ?mode, "protection switched");
            }
        }
        self.update_background_pause();
    }

    /// The settings an operator can switch, as they are now.
    pub fn settings(&self) -> ProtectionUpdate {
        ProtectionUpdate {
            ruleset: Some(self.ruleset.mode()),
            protection: Some(if self.is_on() {
                ProtectionMode::On
            } else {
                ProtectionMode::Off
            }),
        }
    }

    /// Whether the node's server-driven work is paused now, and every change of it.
    pub fn background_paused(&self) -> watch::Receiver<bool> {
        self.background_paused.subscribe()
    }

    fn update_background_pause(&self) {
        let paused = self.is_on() && self.ruleset.is_active();
        self.background_paused.send_if_modified(|current| {
            let changed = *current != paused;
            *current = paused;
            changed
        });
    }

    fn requests_so_far(&self) -> u64 {
        let sum = |counters: &ClassRouteCounters| -> u64 {
            counters.iter().flatten().map(|counter| counter.get()).sum()
        };
        sum(&self.metrics.admitted) + sum(&self.metrics.shed)
    }

    /// One evaluation: load triggers from the latest latency window and the request rate,
    /// then the ruleset's windows at `now`.
    pub fn evaluate(&self) {
        let now_ms = unix_now_ms();
        let requests = self.requests_so_far();
        let windows = self.limit.windows();
        let signals = {
            let mut last = self.last_evaluation.locked();
            let (at, last_requests, last_windows) = *last;
            let elapsed = at.elapsed().as_secs_f64();
            *last = (Instant::now(), requests, windows);
            let rate = if elapsed > 0.0 {
                (requests - last_requests) as f64 / elapsed
            } else {
                0.0
            };
            let (short, long) = (self.limit.short_rtt_us(), self.limit.long_rtt_us());
            let floor = u64::try_from(self.config.latency_floor.as_micros()).unwrap_or(u64::MAX);
            LoadSignals {
                latency_high: windows != last_windows
                    && short > floor
                    && long > 0
                    && self
                        .config
                        .latency_ratio
                        .is_some_and(|ratio| short as f64 > long as f64 * ratio),
                rate_high: self
                    .config
                    .max_request_rate
                    .is_some_and(|max| rate > f64::from(max)),
            }
        };
        let was_active = self.ruleset.is_active();
        self.ruleset.observe_load(signals, now_ms);
        let active = self.ruleset.refresh(now_ms);
        if active != was_active {
            tracing::info!(
                active,
                reasons = ?self.ruleset.reasons(now_ms),
                "protection ruleset {}",
                if active { "active" } else { "inactive" }
            );
        }
        self.update_background_pause();
    }

    /// Evaluates the ruleset every `evaluate_interval` until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.evaluate_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let probe_interval = self.config.lag_probe_interval;
        let mut probe_due = tokio::time::Instant::now() + probe_interval;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.evaluate(),
                () = tokio::time::sleep_until(probe_due) => {
                    let now = tokio::time::Instant::now();
                    self.note_lag(now.saturating_duration_since(probe_due));
                    probe_due = now + probe_interval;
                }
            }
        }
    }

    /// Requests shed since start, per class (every route summed).
    pub fn shed(&self) -> PerClass<u64> {
        per_class(&self.metrics.shed)
    }

    /// The state `GET /v1/admin/protection` answers.
    pub fn status(&self) -> ProtectionStatus {
        let now_ms = unix_now_ms();
        let settings = self.settings();
        ProtectionStatus {
            node: self.node.clone(),
            protection: settings.protection.unwrap_or_default(),
            ruleset: settings.ruleset.unwrap_or_default(),
            active: self.ruleset.is_active(),
            reasons: self.ruleset.reasons(now_ms),
            active_until_ms: self.ruleset.active_until_ms(now_ms),
            limit: self.limit.limit(),
            in_flight: self.limit.in_flight(),
            shares: *self.shares(),
            shed: self.shed(),
            admitted: per_class(&self.metrics.admitted),
            short_rtt_us: self.limit.short_rtt_us(),
            long_rtt_us: self.limit.long_rtt_us(),
            scheduling_lag_us: u64::try_from(self.scheduling_lag().as_micros()).unwrap_or(u64::MAX),
            background_paused: *self.background_paused.borrow(),
            last_transition: self.ruleset.last_transition(),
        }
    }
}

/// A family's counts per class, its routes summed.
fn per_class(counters: &ClassRouteCounters) -> PerClass<u64> {
    PerClass::from_fn(|class| {
        counters[class.index()]
            .iter()
            .map(|counter| counter.get())
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::admin::RulesetMode;

    fn fixed_limit(limit: u32) -> ProtectionConfig {
        ProtectionConfig {
            min_limit: limit,
            initial_limit: limit,
            max_limit: limit,
            ..ProtectionConfig::default()
        }
    }

    fn request(class: Priority) -> RequestClass {
        RequestClass {
            class,
            route: Route::Graphql,
        }
    }

    /// Fills the node with `held` requests, then asks which classes are still admitted.
    fn admitted_classes(protection: &Arc<Protection>, held: usize) -> Vec<Priority> {
        let _held: Vec<Ticket> = (0..held)
            .map(|_| protection.admit(request(Priority::Critical)).expect("room"))
            .collect();
        Priority::ALL
            .into_iter()
            .filter(|class| protection.admit(request(*class)).is_some())
            .collect()
    }

    #[test]
    fn a_runtime_that_runs_late_sheds_the_lowest_classes_first_whatever_is_in_flight() {
        use Priority::*;
        // CPU-bound handlers finish without yielding: in flight stays near the core count while
        // requests queue unread in front of the runtime. The lag is what shows that queue.
        let protection = Protection::new(fixed_limit(100), "n", &Registry::new());
        let expected: [(u64, &[Priority]); 5] = [
            (1, &[Critical, Degraded, BestEffort, Bulk]),
            (30, &[Critical, Degraded, BestEffort]),
            (80, &[Critical, Degraded]),
            (600, &[Critical]),
            (60_000, &[Critical]),
        ];
        for (lag_ms, classes) in expected {
            protection.lag_us.store(lag_ms * 1000, Ordering::Relaxed);
            assert_eq!(
                admitted_classes(&protection, 0),
                classes,
                "{lag_ms} ms late"
            );
        }
        // A queue that drained: the lag decays probe by probe, and the classes come back.
        for _ in 0..60 {
            protection.note_lag(Duration::ZERO);
        }
        assert_eq!(admitted_classes(&protection, 0), Priority::ALL);
        // Tightened by the ruleset, best_effort goes from 20 ms instead of 50.
        protection.apply(ProtectionUpdate {
            ruleset: Some(RulesetMode::On),
            protection: None,
        });
        protection.note_lag(Duration::from_millis(30));
        assert_eq!(admitted_classes(&protection, 0), [Critical, Degraded]);
    }

    #[test]
    fn the_lowest_classes_are_shed_first_and_critical_last() {
        use Priority::*;
        let protection = Protection::new(fixed_limit(10), "n", &Registry::new());
        // Thresholds at limit 10: bulk 5, best_effort 7, degraded 9, critical 10.
        let expected: [(usize, &[Priority]); 6] = [
            (0, &[Critical, Degraded, BestEffort, Bulk]),
            (5, &[Critical, Degraded, BestEffort]),
            (7, &[Critical, Degraded]),
            (8, &[Critical, Degraded]),
            (9, &[Critical]),
            (10, &[]),
        ];
        for (held, classes) in expected {
            assert_eq!(admitted_classes(&protection, held), classes, "{held} held");
        }
        assert_eq!(protection.limit.in_flight(), 0, "every place came back");
        let status = protection.status();
        assert_eq!(status.shed.bulk, 5);
        assert_eq!(status.shed.critical, 1);
    }

    #[test]
    fn the_active_ruleset_tightens_best_effort_and_bulk_and_pauses_background_work() {
        use Priority::*;
        let protection = Protection::new(fixed_limit(20), "n", &Registry::new());
        let paused = protection.background_paused();
        // At 4 held: bulk (0.5 → 10, tightened 0.15 → 3) only sheds when tightened.
        assert_eq!(
            admitted_classes(&protection, 4),
            [Critical, Degraded, BestEffort, Bulk]
        );
        protection.apply(ProtectionUpdate {
            ruleset: Some(RulesetMode::On),
            protection: None,
        });
        assert!(*paused.borrow());
        assert_eq!(
            admitted_classes(&protection, 4),
            [Critical, Degraded, BestEffort]
        );
        assert_eq!(admitted_classes(&protection, 7), [Critical, Degraded]);
    }

    #[test]
    fn request_rate_and_latency_over_their_thresholds_activate_the_ruleset() {
        use ringside_protocol::admin::RulesetReason;
        let mut config = fixed_limit(100);
        config.max_request_rate = Some(50);
        let protection = Protection::new(config, "n", &Registry::new());
        protection.evaluate();
        assert!(!protection.ruleset.is_active(), "no load yet");
        for _ in 0..200 {
            drop(protection.admit(request(Priority::Degraded)));
        }
        protection.evaluate();
        assert_eq!(protection.status().reasons, [RulesetReason::RequestRate]);

        let mut config = fixed_limit(100);
        config.sample_window = Duration::from_millis(10);
        config.min_window_samples = 1;
        config.latency_floor = Duration::from_millis(1);
        let protection = Protection::new(config, "n", &Registry::new());
        let window = |latency: Duration| {
            std::thread::sleep(Duration::from_millis(11));
            protection.limit.acquire();
            protection.limit.release(Some(latency));
        };
        for _ in 0..5 {
            window(Duration::from_millis(2));
        }
        protection.evaluate();
        assert!(!protection.ruleset.is_active(), "steady latency");
        window(Duration::from_millis(20));
        protection.evaluate();
        assert_eq!(protection.status().reasons, [RulesetReason::Latency]);
        assert!(*protection.background_paused().borrow());
    }

    #[test]
    fn protection_off_admits_everything_and_still_counts_in_flight() {
        let mut config = fixed_limit(2);
        config.mode = ProtectionMode::Off;
        let protection = Protection::new(config, "n", &Registry::new());
        assert_eq!(admitted_classes(&protection, 5).len(), 4);
        let ticket = protection.admit(request(Priority::Bulk));
        assert_eq!(protection.limit.in_flight(), 1);
        drop(ticket);
        assert_eq!(protection.limit.in_flight(), 0);
    }
}
