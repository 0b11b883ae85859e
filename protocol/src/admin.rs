//! Bodies of the admin API (`/v1/admin/...`), shared by the control plane and the CLI.

use serde::{Deserialize, Serialize};

use crate::names::{EventId, Stage, Topic};
use crate::state::Payload;

/// `POST /v1/admin/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEvent {
    pub id: EventId,
    pub title: String,
    /// RFC 3339 timestamp, e.g. `2026-12-01T20:00:00Z`.
    pub starts_at: String,
    pub stages: Vec<Stage>,
}

/// One event as `GET /v1/admin/events` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSummary {
    pub id: EventId,
    pub topic: Topic,
    pub title: String,
    pub starts_at: String,
    pub stages: Vec<Stage>,
    /// The current stage; `None` until the first publish.
    pub stage: Option<Stage>,
    /// The current version; 0 until the first publish.
    pub version: u64,
    pub published_at_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventSummary>,
}

/// `POST /v1/admin/events/{id}/publish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub stage: Stage,
    /// Passed to devices unchanged; `{}` when absent.
    #[serde(default = "Payload::empty")]
    pub payload: Payload,
}

/// The answer to an accepted publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReceipt {
    pub topic: Topic,
    pub version: u64,
    pub published_at_ms: u64,
}

/// `GET /v1/admin/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub nodes: Vec<NodeStats>,
    pub topics: Vec<TopicStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    pub node: String,
    pub connections: u64,
    /// The address the node listens on, as it reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Whether the node holds the latest state of every topic and accepts devices (false while
    /// it starts or drains).
    #[serde(default = "ready_by_default")]
    pub ready: bool,
    /// How long ago the node last reported to the registry, in a multi-node deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms_ago: Option<u64>,
    /// The node's paced drain, while it runs (see [`DrainProgress`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainProgress>,
}

fn ready_by_default() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    pub topic: Topic,
    pub subscribers: u64,
    pub version: u64,
    /// Acks received for `version`.
    pub acks: u64,
}

/// Stable error codes of HTTP answers; each has exactly one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    Unauthorized,
    InvalidRequest,
    NotFound,
    /// The path exists but not with this method; the `Allow` header lists the methods it has.
    MethodNotAllowed,
    /// The request body did not arrive within the body read timeout.
    RequestTimeout,
    Conflict,
    PayloadTooLarge,
    /// This client holds or asks for more than its share (e.g. connections of one device).
    TooManyRequests,
    Unavailable,
    Internal,
}

impl ApiErrorCode {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::InvalidRequest => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::TooManyRequests => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

/// Every non-2xx answer: `{"error":{"code":"…","message":"…","field":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub code: ApiErrorCode,
    pub message: String,
    /// The request field the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ApiErrorBody {
                code,
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.error.field = Some(field.into());
        self
    }
}

/// A node's paced drain: goaways spread over `window_ms` from `started_at_ms`, each session
/// closed `grace_ms` after its goaway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainProgress {
    /// When the drain started, in ms since the Unix epoch (the node's clock).
    pub started_at_ms: u64,
    /// The window the goaways are spread over (0 for all at once).
    pub window_ms: u64,
    /// How long a session is still served after its goaway before it is closed.
    pub grace_ms: u64,
    /// Sessions the node held when the drain started.
    pub sessions_at_start: u64,
    /// Goaways sent so far by the drain.
    pub goaways_sent: u64,
    /// Sessions still open.
    pub sessions_left: u64,
}

/// Where a drain request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainState {
    /// Recorded for the node, which starts it on its next report (multi-node deployments).
    Requested,
    /// Running (or finished); `progress` says how far.
    Draining,
}

/// The answer to `POST /v1/admin/nodes/{id}/drain`: `202` when this request started (or
/// recorded) the drain, `200` with the progress of a drain already under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainAnswer {
    pub node: String,
    pub state: DrainState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DrainProgress>,
}
