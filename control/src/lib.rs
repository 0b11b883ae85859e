//! The control plane: operators create events and publish their states here; it never writes
//! to a device socket.
//!
//! - [`store`]: the [`EventStore`] trait (events, their current state, version assignment) and
//!   the in-memory store of a single-process deployment.
//! - [`redis_store`]: the same in Redis, shared by every control-plane instance and kept across
//!   restarts.
//! - [`nodes`]: the node registry in Redis that cross-node stats are aggregated from.
//! - [`api`]: the admin API under `/v1/admin`, behind the admin bearer token; [`body`]: the
//!   decoding and validation of its request bodies.
//! - [`protection_api`]: `GET`/`PUT /v1/admin/protection`, the node's protection state and the
//!   operator's switches, shared through Redis by a fleet.
//! - [`broadcasts`]: the delivery report of every broadcast, summed from the nodes' records;
//!   [`stream`]: `GET /v1/admin/stream`, Server-Sent Events of the stats, the events and each
//!   event's newest broadcast whenever they change.
//! - [`fetch_window`]: the default `fetch_within_ms` of a stage state, from the devices
//!   subscribed to its event and the prefetch tier's capacity.
//!
//! A publish is validated, given the next version of its event by the store, accepted by the
//! tier-1 [`ringside_broadcaster::Bus`], and only then answered.

pub mod api;
pub mod body;
pub mod broadcasts;
pub mod fetch_window;
pub mod nodes;
pub mod protection_api;
pub mod redis_store;
pub mod store;
pub mod stream;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ringside_broadcaster::BroadcastError;
use ringside_protocol::admin::{ApiError, ApiErrorCode, Stats};

pub use api::ControlPlane;
pub use broadcasts::BroadcastSource;
pub use fetch_window::{FetchWindowConfig, FetchWindowConfigError};
pub use nodes::{ClusterStats, NodeRegistry, NodeReport};
pub use redis_store::RedisEventStore;
pub use store::{EventStore, MemoryEventStore};
pub use stream::StreamConfig;

/// Errors of the control plane; each maps to one [`ApiErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("{message}")]
    InvalidRequest {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the broadcast bus did not accept the publish; retry")]
    Unavailable(#[from] BroadcastError),
    #[error("the event store is unavailable; retry")]
    StoreUnavailable,
}

impl ControlError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ApiErrorCode {
        match self {
            Self::Unauthorized => ApiErrorCode::Unauthorized,
            Self::InvalidRequest { .. } => ApiErrorCode::InvalidRequest,
            Self::NotFound(_) => ApiErrorCode::NotFound,
            Self::MethodNotAllowed(_) => ApiErrorCode::MethodNotAllowed,
            Self::Conflict(_) => ApiErrorCode::Conflict,
            Self::PayloadTooLarge(_) => ApiErrorCode::PayloadTooLarge,
            Self::Unavailable(_) | Self::StoreUnavailable => ApiErrorCode::Unavailable,
        }
    }

    pub fn to_api_error(&self) -> ApiError {
        let error = ApiError::new(self.code(), self.to_string());
        match self {
            Self::InvalidRequest {
                field: Some(field), ..
            } => error.with_field(field.clone()),
            _ => error,
        }
    }
}

/// Where `GET /v1/admin/stats` gets its numbers: the local node in a single-process
/// deployment, the node registry across many.
pub trait StatsSource: Send + Sync + 'static {
    fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>>;
}

pub type SharedStats = Arc<dyn StatsSource>;
