//! The WebSocket gateway: device sessions over protocol v1.
//!
//! - [`config`]: every limit and timeout of a node, validated before anything binds.
//! - [`upgrade`]: `GET /v1/ws`: authenticates the device token, refuses with an HTTP status
//!   before any upgrade, and hands the upgraded socket to a session.
//! - [`session`]: one task per connection. It reads client frames, answers them, and writes the
//!   states its [`broadcaster::Mailbox`] holds for it (a live state reaching an idle connection
//!   is written by the fan-out itself, without waking the task); heartbeats, idle and
//!   slow-consumer cut-offs and the goaway before every server-initiated close live here.
//! - [`metrics`]: the node's counters for `/metrics`.
//!
//! [`Gateway`] ties them together and owns the session tasks, so that a drain can reach every
//! one of them (axum's graceful shutdown does not wait for upgraded connections).

pub mod config;
mod device_sessions;
pub mod metrics;
mod rate;
pub mod session;
mod socket;
pub mod upgrade;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use auth::DeviceTokenKey;
use axum::Router;
use axum::response::{IntoResponse, Response};
use broadcaster::Hub;
use protocol::admin::{ApiError, ApiErrorCode, NodeStats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::GatewayConfig;
pub use metrics::GatewayMetrics;

/// Why an upgrade request was refused. Each maps to one HTTP status; clients see the message,
/// which never includes internal details.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Unauthorized(#[from] auth::TokenError),
    #[error("not a WebSocket upgrade request: {0}")]
    NotUpgradable(&'static str),
    #[error("this node is at its connection limit; retry with backoff")]
    AtCapacity,
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
            Self::AtCapacity | Self::Draining | Self::NotReady => ApiErrorCode::Unavailable,
            Self::DeviceAtLimit { .. } => ApiErrorCode::TooManyRequests,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
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
            Self::AtCapacity | Self::Draining | Self::NotReady => {
                headers.insert("retry-after", axum::http::HeaderValue::from_static("5"));
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
    next_connection: AtomicU64,
    /// Sessions admitted (upgrade accepted) and not yet ended; bounded by `max_connections`.
    admitted: AtomicU64,
    /// Live sessions per device; each bounded by `max_connections_per_device`.
    device_sessions: device_sessions::DeviceSessions,
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
    /// Sessions still open when the grace period ran out (0 when the drain finished).
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
            config,
            hub,
            device_key,
            metrics,
            sessions: TaskTracker::new(),
            drain: CancellationToken::new(),
            draining: AtomicBool::new(false),
            next_connection: AtomicU64::new(1),
            admitted: AtomicU64::new(0),
            device_sessions: device_sessions::DeviceSessions::new(),
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
            ready: self.hub.is_ready() && !self.draining.load(Ordering::Acquire),
            last_seen_ms_ago: None,
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
            self.metrics.device_limit_refusals.increment();
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

    /// Stops taking connections, sends every session a goaway (with a jittered reconnect delay)
    /// and a close, and waits up to the configured grace period for them to finish.
    pub async fn drain(&self) -> DrainReport {
        self.draining.store(true, Ordering::Release);
        let sessions_at_start = self.sessions.len() as u64;
        self.drain.cancel();
        self.sessions.close();
        let finished = tokio::time::timeout(self.config.shutdown_grace, self.sessions.wait())
            .await
            .is_ok();
        let sessions_left = if finished {
            0
        } else {
            self.sessions.len() as u64
        };
        if finished {
            tracing::info!(sessions_at_start, "gateway drained");
        } else {
            tracing::warn!(sessions_at_start, sessions_left, "gateway drain timed out");
        }
        DrainReport {
            sessions_at_start,
            sessions_left,
        }
    }

    /// A reconnect delay for a goaway, spread uniformly over the configured window so that
    /// the devices of a draining node do not all come back at once.
    pub(crate) fn reconnect_delay(&self) -> Duration {
        let spread_ms = u64::try_from(self.config.reconnect_spread.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=spread_ms))
    }
}
