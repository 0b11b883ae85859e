//! The WebSocket gateway: device sessions over protocol v1.
//!
//! - [`config`]: every limit and timeout of a node, validated before anything binds.
//! - [`upgrade`]: `GET /v1/ws`: authenticates the device token, refuses with an HTTP status
//!   before any upgrade, and hands the upgraded socket to a session.
//! - [`session`]: one task per connection. It reads client frames, answers them, and writes the
//!   states its [`ringside_broadcaster::Mailbox`] holds for it (a live state reaching an idle connection
//!   is written by the fan-out itself, without waking the task); heartbeats, idle and
//!   slow-consumer cut-offs and the goaway before every server-initiated close live here.
//! - [`metrics`]: the node's counters for `/metrics`.
//! - [`fleet`]: the [`fleet::Node`] a process runs: the gateway with its bus consumer, and in a
//!   fleet the tasks that seed it from the event store, reconcile with it and report to the
//!   node registry (backends behind small traits the binary implements).
//! - `rate`: the GCRA budgets of a connection's inbound rates and of the node's upgrade
//!   admission.
//!
//! [`Gateway`] ties them together and owns the session tasks, so that a drain can reach every
//! one of them (axum's graceful shutdown does not wait for upgraded connections).
//!
//! Every server-planned end of a connection is one mechanism: a goaway at a moment `T`, the
//! connection still served until `T + goaway_grace`, then a close. The moment is a deadline of
//! the session's own loop (no task or timer per session): its randomized maximum lifetime, or,
//! once the node drains, a moment drawn for it in the drain's window.

pub mod config;
mod device_sessions;
pub mod fleet;
pub mod metrics;
mod rate;
pub mod session;
mod socket;
mod tls;
pub mod upgrade;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use ringside_auth::DeviceTokenKey;
use ringside_broadcaster::Hub;
use ringside_protection::{Protection, RetryAfter};
use ringside_protocol::admin::{ApiError, ApiErrorCode, DrainProgress, NodeStats};
use ringside_sync_util::LockExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::GatewayConfig;
pub use metrics::GatewayMetrics;

/// Why an upgrade request was refused. Each maps to one HTTP status; clients see the message,
/// which never includes internal details.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Unauthorized(#[from] ringside_auth::TokenError),
    #[error("not a WebSocket upgrade request: {0}")]
    NotUpgradable(&'static str),
    #[error("this node is at its connection limit; retry with backoff")]
    AtCapacity,
    /// More upgrades than the node admits per second (`upgrade_rate_per_s`, beyond its burst).
    #[error(
        "this node is admitting new connections at its limit; retry after the Retry-After delay"
    )]
    Overloaded,
    #[error("this node is draining; reconnect to another node")]
    Draining,
    /// The hub does not hold the latest states (startup, or a bus feed that failed and is
    /// being reopened): a device would be served stale states.
    #[error("this node is not caught up with the bus; retry with backoff")]
    NotReady,
    #[error("this device already holds {limit} connections to this node; close one or retry later")]
    DeviceAtLimit {
        limit: u32,
        /// When a connection of this device that silently vanished is closed at the latest.
        retry_after_s: u64,
    },
}

impl GatewayError {
    fn code(&self) -> ApiErrorCode {
        match self {
            Self::Unauthorized(_) => ApiErrorCode::Unauthorized,
            Self::NotUpgradable(_) => ApiErrorCode::InvalidRequest,
            Self::AtCapacity | Self::Overloaded | Self::Draining | Self::NotReady => {
                ApiErrorCode::Unavailable
            }
            Self::DeviceAtLimit { .. } => ApiErrorCode::TooManyRequests,
        }
    }
}

impl GatewayError {
    /// The HTTP answer; a `503` carries a `Retry-After` drawn from `retry` (whole seconds).
    pub fn into_refusal(self, retry: &RetryAfter) -> Response {
        let code = self.code();
        let status = axum::http::StatusCode::from_u16(code.status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut response =
            (status, axum::Json(ApiError::new(code, self.to_string()))).into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthorized(_) => {
                headers.insert(
                    "www-authenticate",
                    axum::http::HeaderValue::from_static("Bearer"),
                );
            }
            Self::AtCapacity | Self::Overloaded | Self::Draining | Self::NotReady => {
                let seconds = retry.draw_header_seconds();
                headers.insert("retry-after", axum::http::HeaderValue::from(seconds));
            }
            Self::DeviceAtLimit { retry_after_s, .. } => {
                headers.insert("retry-after", axum::http::HeaderValue::from(retry_after_s));
            }
            Self::NotUpgradable(_) => {}
        }
        response
    }
}

/// One gateway node: its hub, its sessions and its limits.
///
/// [`Gateway::router`] serves `GET /v1/ws`; the node refuses upgrades (503) until its hub
/// holds the latest states ([`Hub::mark_ready`], which the bus consumer calls once its feed has
/// caught up). A device connects with its token, is welcomed, subscribes and is sent the
/// current state at once; [`Gateway::drain`] ends every session with a goaway:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use futures_util::{SinkExt, StreamExt};
/// use ringside_gateway::{Gateway, GatewayConfig, GatewayMetrics};
/// use ringside_protocol::{ClientFrame, EventState, Payload, Priority, ServerFrame, Stage, SubscribeTopic, Topic};
/// use tokio_tungstenite::tungstenite::Message;
///
/// # #[tokio::main]
/// # async fn main() {
/// let registry = ringside_telemetry::Registry::new();
/// let hub = Arc::new(ringside_broadcaster::Hub::new(ringside_broadcaster::HubMetrics::new(&registry)));
/// let key = ringside_auth::DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!").unwrap();
/// let token = key.sign(&ringside_auth::DeviceClaims {
///     sub: "tv-1".into(),
///     profile: "p-1".into(),
///     class: ringside_auth::DeviceClass::Tv,
///     exp: ringside_protocol::unix_now_ms() / 1000 + 3600,
///     nbf: None,
///     priority: None,
/// });
/// let config = GatewayConfig {
///     node_id: "node-a".into(),
///     goaway_grace: Duration::from_millis(100),
///     ..GatewayConfig::default()
/// };
/// let gateway = Gateway::new(config, hub.clone(), key, GatewayMetrics::new(&registry));
///
/// // The node already holds a state of the event (a bus feed would have brought it).
/// let topic = Topic::parse("event:fight-night").unwrap();
/// hub.apply(&EventState {
///     topic: topic.clone(),
///     version: 3,
///     stage: Stage::parse("LIVE").unwrap(),
///     published_at_ms: ringside_protocol::unix_now_ms(),
///     payload: Payload::empty(),
///     priority: Priority::Critical,
///     fetch_within_ms: None,
/// });
/// hub.mark_ready();
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let url = format!("ws://{}/v1/ws?token={token}", listener.local_addr().unwrap());
/// // Served by hyper's HTTP/1 connection over the plain TCP socket, which the session takes
/// // over after the upgrade (so not through `axum::serve`, whose connections wrap it); the
/// // binary's `ringside::http::serve_http` does the same with its HTTP limits added.
/// let router = gateway.router();
/// tokio::spawn(async move {
///     loop {
///         let (stream, _) = listener.accept().await.unwrap();
///         let service = hyper_util::service::TowerToHyperService::new(router.clone());
///         let connection = hyper::server::conn::http1::Builder::new()
///             .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
///             .with_upgrades();
///         tokio::spawn(connection);
///     }
/// });
///
/// let (mut device, _) = tokio_tungstenite::connect_async(url).await.unwrap();
/// assert!(matches!(next(&mut device).await, ServerFrame::Welcome { node, .. } if node == "node-a"));
/// let subscribe = ClientFrame::Subscribe { topics: vec![SubscribeTopic { topic, since: 0 }] };
/// device.send(Message::Text(subscribe.encode().into())).await.unwrap();
/// assert!(matches!(next(&mut device).await, ServerFrame::Subscribed { .. }));
/// assert!(matches!(next(&mut device).await, ServerFrame::State(state) if state.version == 3));
///
/// // A drain sends the goaway, then closes once the grace is over.
/// let drain = tokio::spawn({
///     let gateway = gateway.clone();
///     async move { gateway.drain().await }
/// });
/// assert!(matches!(next(&mut device).await, ServerFrame::Goaway { .. }));
/// while let Some(Ok(_)) = device.next().await {} // the close handshake
/// assert_eq!(drain.await.unwrap().sessions_at_start, 1);
/// # }
/// # async fn next<S>(device: &mut S) -> ServerFrame
/// # where S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin {
/// #     loop {
/// #         if let Message::Text(text) = device.next().await.unwrap().unwrap() {
/// #             return ServerFrame::decode(&text).unwrap();
/// #         }
/// #     }
/// # }
/// ```
#[derive(Debug)]
pub struct Gateway {
    pub(crate) config: GatewayConfig,
    pub(crate) hub: Arc<Hub>,
    pub(crate) device_key: DeviceTokenKey,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) sessions: TaskTracker,
    /// Cancelled when the node drains: every session sends goaway and closes.
    pub(crate) drain: CancellationToken,
    pub(crate) draining: AtomicBool,
    /// Cancelled at a drain's end (window + grace + close handshake): the sessions still open
    /// are dropped at once, so that the drain ends on time.
    pub(crate) cut: CancellationToken,
    /// Sessions the drain cut.
    drain_sessions_cut: AtomicU64,
    next_connection: AtomicU64,
    /// Sessions admitted (upgrade accepted) and not yet ended; bounded by `max_connections`.
    admitted: AtomicU64,
    /// Live sessions per device; each bounded by `max_connections_per_device`.
    device_sessions: device_sessions::DeviceSessions,
    /// Upgrade admission: `upgrade_rate_per_s` with bursts of `upgrade_burst`, lock-free.
    admission: rate::SharedRateBudget,
    /// Set once, when the drain starts; every session draws its goaway moment from it. A
    /// second drain request finds it set and answers with the progress.
    drain_plan: OnceLock<DrainPlan>,
    /// Sessions the drain has told to go: its goaways, and the sessions whose lifetime goaway
    /// was already out when the drain reached them.
    drain_goaways_sent: AtomicU64,
    /// The node's protection, whose shed counts its stats carry (set once, by the node).
    protection: OnceLock<Arc<Protection>>,
    /// The task that logs the drain's progress every second and reports how it ended; taken
    /// by [`Gateway::drain`] to wait for it.
    drain_monitor: Mutex<Option<JoinHandle<DrainReport>>>,
}

/// When a drain started and the window its goaways are spread over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrainPlan {
    started: Instant,
    started_at_ms: u64,
    window: Duration,
    sessions_at_start: u64,
}

impl DrainPlan {
    /// A moment for one session's goaway: a uniformly random rank mapped onto the window, so
    /// that the goaways of N sessions are spread at N / window per second without any session
    /// being listed anywhere.
    pub(crate) fn goaway_moment(&self) -> Instant {
        self.started + self.window.mul_f64(fastrand::f64())
    }
}

/// A reserved place for one session under `max_connections` and under its device's
/// `max_connections_per_device`; both are released when dropped, however the session ends
/// (including a failed upgrade or a panic).
#[derive(Debug)]
pub(crate) struct SessionPermit {
    gateway: Arc<Gateway>,
    device: device_sessions::DeviceKey,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.gateway.device_sessions.release(self.device);
        self.gateway.admitted.fetch_sub(1, Ordering::AcqRel);
        self.gateway.metrics.connections.decrement();
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub sessions_at_start: u64,
    /// Sessions still open at the drain's end (window + grace + close handshake), closed then
    /// by dropping them.
    pub sessions_cut: u64,
    /// Sessions still open when the shutdown grace ran out, even after the cut (0 when the
    /// drain finished).
    pub sessions_left: u64,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        hub: Arc<Hub>,
        device_key: DeviceTokenKey,
        metrics: GatewayMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            hub,
            device_key,
            metrics,
            sessions: TaskTracker::new(),
            drain: CancellationToken::new(),
            draining: AtomicBool::new(false),
            cut: CancellationToken::new(),
            drain_sessions_cut: AtomicU64::new(0),
            next_connection: AtomicU64::new(1),
            admitted: AtomicU64::new(0),
            device_sessions: device_sessions::DeviceSessions::new(),
            admission: rate::SharedRateBudget::new(config.upgrade_rate_per_s, config.upgrade_burst),
            drain_plan: OnceLock::new(),
            drain_goaways_sent: AtomicU64::new(0),
            protection: OnceLock::new(),
            drain_monitor: Mutex::new(None),
            config,
        })
    }

    /// The WebSocket route, `GET /v1/ws`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/ws", axum::routing::get(upgrade::upgrade))
            .with_state(self.clone())
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn shutdown_grace(&self) -> Duration {
        self.config.shutdown_grace
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn node_stats(&self) -> NodeStats {
        NodeStats {
            node: self.config.node_id.clone(),
            connections: self.admitted.load(Ordering::Acquire),
            address: None,
            ready: self.hub.is_ready() && !self.is_draining(),
            last_seen_ms_ago: None,
            drain: self.drain_progress(),
            shed: self.protection.get().map(|protection| protection.shed()),
        }
    }

    /// Makes this node's stats (and so its registry reports) carry `protection`'s shed counts,
    /// so that the fleet view shows every node's, not only those of the node it asks. Only the
    /// first call counts.
    pub fn report_shedding_of(&self, protection: Arc<Protection>) {
        let _ = self.protection.set(protection);
    }

    /// True once a drain started: upgrades are refused and `/healthz` says unavailable.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The window every `503` of an upgrade draws its `Retry-After` from.
    pub fn retry_after(&self) -> RetryAfter {
        RetryAfter::new(self.config.retry_after_min, self.config.retry_after_max)
    }

    /// Charges one upgrade to the node's admission budget; `Overloaded` beyond it.
    pub(crate) fn admit_upgrade(&self) -> Result<(), GatewayError> {
        if self.admission.try_take(Instant::now()) {
            Ok(())
        } else {
            Err(GatewayError::Overloaded)
        }
    }

    /// Reserves a session place for `device`, or refuses at `max_connections` or at the
    /// device's `max_connections_per_device`. Atomic, so a burst of upgrades cannot overshoot
    /// either limit.
    pub(crate) fn try_admit(self: &Arc<Self>, device: &str) -> Result<SessionPermit, GatewayError> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        if before >= self.config.max_connections {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(GatewayError::AtCapacity);
        }
        let limit = self.config.max_connections_per_device;
        let Some(device) = self.device_sessions.try_acquire(device, limit) else {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            let silence_limit = self.config.heartbeat_interval * self.config.heartbeat_misses;
            return Err(GatewayError::DeviceAtLimit {
                limit,
                retry_after_s: silence_limit.as_secs().max(1),
            });
        };
        self.metrics.connections.increment();
        Ok(SessionPermit {
            gateway: self.clone(),
            device,
        })
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The drain's progress, once it started.
    pub fn drain_progress(&self) -> Option<DrainProgress> {
        let plan = self.drain_plan.get()?;
        Some(DrainProgress {
            started_at_ms: plan.started_at_ms,
            window_ms: millis(plan.window),
            grace_ms: millis(self.config.goaway_grace),
            sessions_at_start: plan.sessions_at_start,
            goaways_sent: self.drain_goaways_sent.load(Ordering::Relaxed),
            sessions_left: self.admitted.load(Ordering::Acquire),
            sessions_cut: self.drain_sessions_cut.load(Ordering::Relaxed),
        })
    }

    /// The drain's plan, once it started (read by sessions when the drain reaches them).
    pub(crate) fn drain_plan(&self) -> Option<&DrainPlan> {
        self.drain_plan.get()
    }

    /// Counts one goaway sent by the drain.
    pub(crate) fn count_drain_goaway(&self) {
        self.drain_goaways_sent.fetch_add(1, Ordering::Relaxed);
        self.metrics.goaways.drain.increment();
    }

    /// Counts a session the drain found told already (its lifetime goaway was out).
    pub(crate) fn count_drain_told(&self) {
        self.drain_goaways_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts the paced drain, or finds it started: stops taking connections and has every
    /// session send its goaway at its own moment of a window sized from the session count
    /// (`drain_rate_per_s`, at most `drain_window_max`), serve `goaway_grace` more, and close.
    /// Returns the progress and whether this call started it (a drain is never restarted).
    pub fn start_drain(self: &Arc<Self>) -> (DrainProgress, bool) {
        let sessions_at_start = self.admitted.load(Ordering::Acquire);
        let paced = Duration::from_secs_f64(
            sessions_at_start as f64 / f64::from(self.config.drain_rate_per_s.max(1)),
        );
        let plan = DrainPlan {
            started: Instant::now(),
            started_at_ms: ringside_protocol::unix_now_ms(),
            window: paced.min(self.config.drain_window_max),
            sessions_at_start,
        };
        let started = self.drain_plan.set(plan).is_ok();
        if started {
            self.draining.store(true, Ordering::Release);
            self.drain.cancel();
            self.sessions.close();
            tracing::info!(
                sessions_at_start,
                window_ms = millis(plan.window),
                grace_ms = millis(self.config.goaway_grace),
                "drain started"
            );
            let monitor = tokio::spawn(self.clone().monitor_drain(plan));
            *self.drain_monitor.locked() = Some(monitor);
        }
        let progress = self
            .drain_progress()
            .unwrap_or_else(|| unreachable!("the plan was just set"));
        (progress, started)
    }

    /// Logs the drain's progress every second until every session has ended or the drain's
    /// end (window + grace + close handshake) is reached, cuts what is left then, and reports
    /// how it ended.
    async fn monitor_drain(self: Arc<Self>, plan: DrainPlan) -> DrainReport {
        let cut_at =
            plan.started + plan.window + self.config.goaway_grace + config::CLOSE_HANDSHAKE_TIMEOUT;
        let deadline = plan.started + self.config.shutdown_grace;
        let finished = self.sessions.wait();
        tokio::pin!(finished);
        let mut progress_line = tokio::time::interval(Duration::from_secs(1));
        progress_line.tick().await;
        let finished = loop {
            tokio::select! {
                () = &mut finished => break true,
                () = tokio::time::sleep_until(cut_at), if !self.cut.is_cancelled() => {
                    let sessions_cut = self.sessions.len() as u64;
                    self.drain_sessions_cut.store(sessions_cut, Ordering::Relaxed);
                    tracing::warn!(sessions_cut, "drain window and grace over; cutting the sessions left");
                    self.cut.cancel();
                }
                () = tokio::time::sleep_until(deadline) => break false,
                _ = progress_line.tick() => {
                    tracing::info!(
                        sessions_at_start = plan.sessions_at_start,
                        goaways_sent = self.drain_goaways_sent.load(Ordering::Relaxed),
                        sessions_left = self.admitted.load(Ordering::Acquire),
                        elapsed_ms = millis(plan.started.elapsed()),
                        window_ms = millis(plan.window),
                        "draining"
                    );
                }
            }
        };
        let sessions_at_start = plan.sessions_at_start;
        let sessions_left = if finished {
            0
        } else {
            self.sessions.len() as u64
        };
        let goaways_sent = self.drain_goaways_sent.load(Ordering::Relaxed);
        let sessions_cut = self.drain_sessions_cut.load(Ordering::Relaxed);
        let elapsed_ms = millis(plan.started.elapsed());
        if finished {
            tracing::info!(
                sessions_at_start,
                goaways_sent,
                sessions_cut,
                elapsed_ms,
                "gateway drained"
            );
        } else {
            tracing::warn!(
                sessions_at_start,
                sessions_left,
                goaways_sent,
                sessions_cut,
                elapsed_ms,
                "gateway drain timed out"
            );
        }
        DrainReport {
            sessions_at_start,
            sessions_cut,
            sessions_left,
        }
    }

    /// Drains the node (starting the drain unless it is under way) and waits for it to end:
    /// when every session has closed, or `shutdown_grace` after the drain started.
    pub async fn drain(self: &Arc<Self>) -> DrainReport {
        let (progress, _) = self.start_drain();
        let monitor = self.drain_monitor.locked().take();
        match monitor {
            Some(monitor) => monitor.await.unwrap_or(DrainReport {
                sessions_at_start: progress.sessions_at_start,
                sessions_cut: self.drain_sessions_cut.load(Ordering::Relaxed),
                sessions_left: self.sessions.len() as u64,
            }),
            // Another caller waits for the monitor: wait for the same end.
            None => {
                let plan = self
                    .drain_plan
                    .get()
                    .copied()
                    .unwrap_or_else(|| unreachable!("the drain started"));
                let deadline = plan.started + self.config.shutdown_grace;
                let finished = tokio::time::timeout_at(deadline, self.sessions.wait())
                    .await
                    .is_ok();
                DrainReport {
                    sessions_at_start: plan.sessions_at_start,
                    sessions_cut: self.drain_sessions_cut.load(Ordering::Relaxed),
                    sessions_left: if finished {
                        0
                    } else {
                        self.sessions.len() as u64
                    },
                }
            }
        }
    }

    /// A reconnect delay for a goaway, spread uniformly over the configured window so that
    /// the devices of a draining node do not all come back at once.
    pub(crate) fn reconnect_delay(&self) -> Duration {
        ringside_protection::retry_after(Duration::ZERO, self.config.reconnect_spread)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(config: GatewayConfig) -> Arc<Gateway> {
        let registry = ringside_telemetry::Registry::new();
        Gateway::new(
            config,
            Arc::new(Hub::new(ringside_broadcaster::HubMetrics::new(&registry))),
            DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!").expect("key"),
            GatewayMetrics::new(&registry),
        )
    }

    #[tokio::test]
    async fn a_drain_starts_once_and_its_window_follows_the_sessions_up_to_its_cap() {
        let gateway = gateway(GatewayConfig::default());
        // 1200 sessions at 500 a second: 2.4 s, under the 60 s cap.
        gateway.admitted.store(1200, Ordering::Release);
        let (plan, started) = gateway.start_drain();
        assert!(started && gateway.is_draining());
        assert_eq!((plan.window_ms, plan.sessions_at_start), (2400, 1200));
        let (again, started_again) = gateway.start_drain();
        assert!(!started_again, "a drain is never restarted");
        assert_eq!(again.started_at_ms, plan.started_at_ms);
        // Every moment drawn lies in the window.
        let drawn = gateway.drain_plan().expect("plan");
        let end = drawn.started + Duration::from_millis(2400);
        assert!((0..100).all(|_| (drawn.started..=end).contains(&drawn.goaway_moment())));

        let capped = self::gateway(GatewayConfig::default());
        capped.admitted.store(1_000_000, Ordering::Release);
        assert_eq!(capped.start_drain().0.window_ms, 60_000);
        let unpaced = self::gateway(GatewayConfig {
            drain_window_max: Duration::ZERO,
            ..GatewayConfig::default()
        });
        unpaced.admitted.store(1200, Ordering::Release);
        assert_eq!(unpaced.start_drain().0.window_ms, 0);
    }

    #[test]
    fn admission_refuses_beyond_the_burst() {
        let gateway = gateway(GatewayConfig {
            upgrade_rate_per_s: 1,
            upgrade_burst: 3,
            ..GatewayConfig::default()
        });
        let admitted = (0..10).filter(|_| gateway.admit_upgrade().is_ok()).count();
        assert_eq!(admitted, 3);
        assert!(matches!(
            gateway.admit_upgrade(),
            Err(GatewayError::Overloaded)
        ));
    }
}
