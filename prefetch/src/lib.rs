//! Prefetch: the GraphQL service that warms device caches for every stage of a live event.
//!
//! Before an event, devices ask once for everything they will need at every stage of it; at
//! kickoff the broadcast only has to say which stage is current.
//!
//! - [`catalog`]: titles, profiles and event relations, indexed; [`generate`] makes a
//!   deterministic dataset and [`jsonl`] loads or writes one as JSON lines.
//! - [`materialize`]: ranks one profile's rows for every stage of one event into one
//!   compact page (a page per profile and event).
//! - [`store`]: where pages live: memory for one process, Redis across prefetch nodes.
//! - [`cache`]: the per-node cache in front of the store (TTL jitter, coalescing, stale while
//!   revalidate); [`responses`]: answers kept as bytes and sent again while the events and
//!   pages they were built from are unchanged.
//! - [`service`]: [`PrefetchService`] ties them together: pools per event, page loading,
//!   background materialization.
//! - [`schema`]: the GraphQL schema; [`compiled`]: known queries planned once and answered by
//!   writing JSON from the pages, byte for byte what the executor writes; [`http`]: `POST`/`GET /graphql` with device-token auth,
//!   persisted queries, limits and cache headers; [`limits`]: nesting, depth, selection and alias
//!   limits, checked before a query executes ([`limits::parse_and_check`]).

pub mod cache;
pub mod catalog;
pub mod compiled;
pub mod generate;
pub mod http;
pub mod jsonl;
pub mod limits;
pub mod materialize;
pub mod responses;
pub mod schema;
pub mod service;
pub mod store;
#[cfg(test)]
mod testing;

use futures_util::future::BoxFuture;
use ringside_protocol::{EventId, EventState, Stage};

pub use service::{PrefetchConfig, PrefetchConfigError, PrefetchService};

/// Errors a prefetch request can end with. Each has a stable `extensions.code`; messages never
/// carry internal details.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrefetchError {
    #[error("recommendations are temporarily unavailable; retry with backoff")]
    StoreUnavailable,
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("event {event} has no stage {stage:?}")]
    UnknownStage { event: String, stage: String },
    #[error("query is nested too deeply: at most {max} levels")]
    TooDeep { max: usize },
    /// Brackets in the query text (selections, lists, objects, arguments), the JSON body or
    /// `variables`, or fragments spread inside fragments, nested past `max_nesting`.
    #[error(
        "query is nested too deeply: at most {max} levels of selections, lists, objects, \
         arguments, variables and fragments"
    )]
    NestedTooDeeply { max: usize },
    #[error("query selects too many fields: at most {max}, fragments counted where spread")]
    TooComplex { max: usize },
    #[error("query uses too many aliases: at most {max}")]
    TooManyAliases { max: usize },
    #[error("a list in the arguments or variables has more than {max} items")]
    ListTooLong { max: usize },
    #[error("unknown fragment {0}")]
    UnknownFragment(String),
    #[error("variable ${0} is required: it is non-null and has no default")]
    MissingVariable(String),
    #[error("introspection is off on this node (`--graphql-introspection` turns it on)")]
    IntrospectionDisabled,
    #[error("{0}")]
    ParseFailed(String),
    #[error("query did not finish within {ms} ms")]
    Timeout { ms: u64 },
    #[error("response exceeds {max} bytes: ask for less in one request")]
    ResponseTooLarge { max: usize },
    #[error("persisted query not found: send the query text with its hash")]
    PersistedQueryNotFound,
    #[error("persisted query hash does not match the query text")]
    PersistedQueryMismatch,
    #[error("{0}")]
    BadRequest(String),
    /// The body (or a `GET` parameter) is not JSON, or not one request of the right shape: a
    /// 400 whatever the media type (`BAD_REQUEST` too).
    #[error("{0}")]
    Malformed(String),
    #[error("internal error")]
    Internal,
}

impl PrefetchError {
    /// The stable `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::UnknownEvent(_) => "UNKNOWN_EVENT",
            Self::UnknownStage { .. } => "UNKNOWN_STAGE",
            Self::TooDeep { .. } | Self::NestedTooDeeply { .. } => "QUERY_TOO_DEEP",
            Self::TooComplex { .. } | Self::ListTooLong { .. } => "QUERY_TOO_COMPLEX",
            Self::TooManyAliases { .. } => "TOO_MANY_ALIASES",
            Self::UnknownFragment(_) | Self::MissingVariable(_) | Self::IntrospectionDisabled => {
                "GRAPHQL_VALIDATION_FAILED"
            }
            Self::ParseFailed(_) => "GRAPHQL_PARSE_FAILED",
            Self::Timeout { .. } => "TIMEOUT",
            Self::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryMismatch => "PERSISTED_QUERY_HASH_MISMATCH",
            Self::BadRequest(_) | Self::Malformed(_) => "BAD_REQUEST",
            Self::Internal => "INTERNAL",
        }
    }
}

impl From<store::StoreError> for PrefetchError {
    fn from(error: store::StoreError) -> Self {
        tracing::warn!(%error, "page store error");
        Self::StoreUnavailable
    }
}

/// An event as prefetch sees it: what the control plane knows of it now.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub id: EventId,
    pub title: String,
    pub starts_at: String,
    pub stages: Vec<Stage>,
    /// The current state, exactly as devices receive it over WebSocket; `None` before the first
    /// publish.
    pub state: Option<EventState>,
}

impl LiveEvent {
    /// Upcoming or live: not yet at its last stage.
    pub fn is_visible(&self) -> bool {
        match &self.state {
            None => true,
            Some(state) => self.stages.last() != Some(&state.stage),
        }
    }
}

/// Where prefetch learns which events exist and their current states.
pub trait EventSource: Send + Sync + 'static {
    fn events(&self) -> BoxFuture<'_, Vec<LiveEvent>>;
}
