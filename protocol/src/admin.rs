//! Bodies of the admin API (`/v1/admin/...`), shared by the control plane and the CLI.

use serde::{Deserialize, Serialize};

use crate::names::{EventId, Stage, Topic};
use crate::priority::Priority;
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
    /// False when the bus took the state (devices get it) but the store could not record it
    /// yet: the admin API and new nodes show the older state until the control plane's
    /// background repair records it (docs/OPERATIONS.md, "Faults and what devices see").
    #[serde(default = "recorded_by_default")]
    pub recorded: bool,
}

fn recorded_by_default() -> bool {
    true
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
    /// Requests the node's protection shed since it started, per class (absent from a node
    /// that reports no protection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shed: Option<PerClass<u64>>,
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
    /// A browser page of an origin that may not make this request (the `Origin` allow-lists).
    Forbidden,
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
    /// The node sheds this request's priority class right now; retry after `Retry-After`.
    Overloaded,
    Internal,
}

impl ApiErrorCode {
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::InvalidRequest => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::TooManyRequests => 429,
            Self::Unavailable | Self::Overloaded => 503,
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

/// One value per priority class (shares, counts, retry windows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PerClass<T> {
    pub critical: T,
    pub degraded: T,
    pub best_effort: T,
    pub bulk: T,
}

impl<T: Copy> PerClass<T> {
    pub fn get(&self, class: Priority) -> T {
        match class {
            Priority::Critical => self.critical,
            Priority::Degraded => self.degraded,
            Priority::BestEffort => self.best_effort,
            Priority::Bulk => self.bulk,
        }
    }

    /// Builds one from a function of the class.
    pub fn from_fn(mut value: impl FnMut(Priority) -> T) -> Self {
        Self {
            critical: value(Priority::Critical),
            degraded: value(Priority::Degraded),
            best_effort: value(Priority::BestEffort),
            bulk: value(Priority::Bulk),
        }
    }
}

/// Whether a node limits and sheds requests (`--protection`). `off` is for side-by-side
/// measurements: requests are still classified and measured, never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionMode {
    #[default]
    On,
    Off,
}

/// The event-driven ruleset (tightened shares for `best_effort` and `bulk`, and the node's own
/// background work paused): `auto` follows events and load, `on` forces it, `off` keeps it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesetMode {
    #[default]
    Auto,
    On,
    Off,
}

/// Why the ruleset is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesetReason {
    /// An operator set `ruleset: on`.
    Forced,
    /// An event went `LIVE` within the live window.
    EventLive,
    /// A stage transition happened within the transition window.
    StageTransition,
    /// Measured latency rose over its long-term level by more than the configured ratio.
    Latency,
    /// The request rate crossed the configured threshold.
    RequestRate,
}

/// The last stage transition a node saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTransition {
    pub topic: Topic,
    pub stage: Stage,
    pub version: u64,
    /// When the node saw it, in milliseconds since the Unix epoch.
    pub seen_at_ms: u64,
}

/// `GET /v1/admin/protection`: the protection state of the process that answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectionStatus {
    pub node: String,
    pub protection: ProtectionMode,
    pub ruleset: RulesetMode,
    /// Whether the tightened shares apply and background work is paused right now.
    pub active: bool,
    /// Why it is active (empty when it is not).
    pub reasons: Vec<RulesetReason>,
    /// Until when the automatic reasons hold, in milliseconds since the Unix epoch (absent
    /// when none does; a forced ruleset holds until it is switched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_until_ms: Option<u64>,
    /// The adaptive concurrency limit now.
    pub limit: u64,
    pub in_flight: u64,
    /// The share of the limit each class may use now.
    pub shares: PerClass<f64>,
    /// Requests shed since start, per class.
    pub shed: PerClass<u64>,
    /// Requests admitted since start, per class.
    pub admitted: PerClass<u64>,
    /// Short-term and long-term request latency the limit follows, in microseconds.
    pub short_rtt_us: u64,
    pub long_rtt_us: u64,
    /// How late the runtime runs a task that is due, in microseconds: requests waiting to be
    /// read, which the limit cannot see.
    #[serde(default)]
    pub scheduling_lag_us: u64,
    /// Whether the node's server-driven work (background materialization) is paused.
    pub background_paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<StageTransition>,
}

/// `PUT /v1/admin/protection`: each field present is applied (to the whole fleet when Redis is
/// configured, else to the process that answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectionUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ruleset: Option<RulesetMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<ProtectionMode>,
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
    /// Sessions told to go so far: the drain's goaways, and the sessions whose lifetime goaway
    /// was already out when the drain reached them (so it reaches `sessions_at_start`).
    pub goaways_sent: u64,
    /// Sessions still open.
    pub sessions_left: u64,
    /// Sessions still open at the drain's end (window + grace + close handshake), dropped then.
    #[serde(default)]
    pub sessions_cut: u64,
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

/// `PATCH /v1/admin/events/{id}`: the fields given replace the event's; a field left out keeps
/// its value. Stages may be reordered, added or removed, but its current stage cannot be removed
/// (`409 conflict`): the event's current state is of that stage. Stages it published before
/// may go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Vec<Stage>>,
}

/// Upper bounds, in ms since `published_at_ms`, of the ack-latency histogram's buckets. The
/// histogram has one more bucket, for acks later than the last bound.
pub const ACK_LATENCY_BOUNDS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// Acks of one broadcast by their latency: `counts[i]` acks arrived at most
/// `ACK_LATENCY_BOUNDS_MS[i]` ms after the publish (and later than the bound before); the last
/// count holds the later ones. Latency is measured on the receiving node's clock against the
/// control plane's `published_at_ms`, so a skewed clock shifts it (never below 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckHistogram {
    pub counts: Vec<u64>,
}

/// One node's record of one broadcast (one published version of an event's state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBroadcast {
    pub node: String,
    /// Connections subscribed to the event's topic when the version reached the node.
    pub subscribed: u64,
    /// Connections written this version (live and catch-up), each once.
    pub sent: u64,
    /// First acks of this version from connections that were sent it.
    pub acked: u64,
    pub ack_latency: AckHistogram,
    /// The node holds this version (or a newer one) as the topic's current state.
    pub applied: bool,
    /// When the version reached the node, in ms since the Unix epoch (the node's clock).
    pub received_at_ms: u64,
}

/// Ack latency quantiles, in ms, each the upper bound of the histogram bucket it falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyQuantiles {
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
}

/// One broadcast, summed over the fleet's nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastSummary {
    pub event: EventId,
    pub topic: Topic,
    pub version: u64,
    pub stage: Stage,
    pub published_at_ms: u64,
    pub subscribed: u64,
    pub sent: u64,
    pub acked: u64,
    /// `acked / max(subscribed, sent)`: devices that joined after the publish and were sent the
    /// version count on both sides. 0 when nobody was subscribed or sent it.
    pub acked_fraction: f64,
    /// `None` until the first ack.
    pub ack_latency: Option<LatencyQuantiles>,
    /// Nodes that reported this broadcast, and how many of them hold it (or a newer version).
    pub nodes_reporting: u64,
    pub nodes_applied: u64,
}

/// `GET /v1/admin/events/{id}/broadcasts`: the last broadcasts nodes keep, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastList {
    pub broadcasts: Vec<BroadcastSummary>,
}

/// A point of a reach curve: the acked fraction `ms` after the publish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReachPoint {
    pub ms: u64,
    pub acked_fraction: f64,
}

/// `GET /v1/admin/events/{id}/broadcasts/{version}`: the summary, the reach curve (one point
/// per histogram bound up to the latest ack) and the per-node rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BroadcastReport {
    #[serde(flatten)]
    pub summary: BroadcastSummary,
    pub reach: Vec<ReachPoint>,
    pub nodes: Vec<NodeBroadcast>,
}

/// One node's record of one broadcast as the node keeps it: the per-node row of a
/// [`BroadcastReport`] before the control plane names the node and sums the fleet. Nodes of a
/// multi-node deployment write theirs to Redis ([`NodeBroadcastRecords`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastRecord {
    pub topic: Topic,
    pub version: u64,
    pub stage: Stage,
    pub published_at_ms: u64,
    /// Connections subscribed to the topic when the version became the node's current state.
    pub subscribed: u64,
    /// Connections written this version (live and catch-up), each once.
    pub sent: u64,
    /// First acks of this version from connections that were written it.
    pub acked: u64,
    pub ack_latency: AckHistogram,
    /// When the version became the node's current state, in ms since the Unix epoch.
    pub received_at_ms: u64,
}

/// A node's broadcast records, newest version last per topic, as the node reports them
/// (`<prefix>node-broadcasts:<node>` in Redis, next to its registry entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBroadcastRecords {
    pub node: String,
    /// The node's clock when it reported, in ms since the Unix epoch.
    pub reported_at_ms: u64,
    /// The newest version the node holds per topic it keeps records of: a node without a
    /// record of a version still says whether it holds that version or a newer one.
    pub current: Vec<TopicVersion>,
    pub records: Vec<BroadcastRecord>,
}

/// A topic and the version a node holds as its current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicVersion {
    pub topic: Topic,
    pub version: u64,
}
