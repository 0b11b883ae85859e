//! `GET /v1/admin/stream`: Server-Sent Events that push what the console would otherwise poll.
//!
//! Every [`StreamConfig::check_interval`] the stream reads the stats, the event list and the
//! newest broadcast report of each event, and sends each one whose JSON changed since it last
//! sent it (everything once on connect):
//!
//! - `event: stats`, data: [`protocol::admin::Stats`], as `GET /v1/admin/stats`;
//! - `event: events`, data: [`protocol::admin::EventList`], as `GET /v1/admin/events`;
//! - `event: broadcast`, data: [`protocol::admin::BroadcastReport`] of one event's newest
//!   broadcast, as `GET /v1/admin/events/{id}/broadcasts/{version}`.
//!
//! A comment line (`:`) goes out after [`StreamConfig::heartbeat_interval`] without an event,
//! so proxies keep the connection. Streams are bounded ([`StreamConfig::max_streams`]; over it
//! `503` with `Retry-After`), each holds a permit for its lifetime, and closing the permits'
//! semaphore on shutdown ends every stream at its next check. The response carries
//! [`protection::Streaming`]: its place in flight is given back with its headers and its time
//! is no latency sample.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use protocol::EventId;
use protocol::admin::{ApiError, ApiErrorCode, EventList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ControlPlane;
use crate::broadcasts;

/// The admin event stream's bounds.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// How often a stream checks for changes (default 500 ms): fast enough for a live reach
    /// curve, slow enough that 32 streams cost a few reads a second.
    pub check_interval: Duration,
    /// A comment line after this long without an event (default 15 s).
    pub heartbeat_interval: Duration,
    /// Streams open at once on this instance (default 32): each re-reads the stats and the
    /// reports; operators' consoles are few.
    pub max_streams: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(15),
            max_streams: 32,
        }
    }
}

/// A [`StreamConfig`] field out of its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("admin stream {field}: {problem}")]
pub struct StreamConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl StreamConfig {
    /// Checks every bound; runs before anything binds.
    pub fn validate(&self) -> Result<(), StreamConfigError> {
        let fail = |field, problem| Err(StreamConfigError { field, problem });
        if self.check_interval < Duration::from_millis(50)
            || self.check_interval > Duration::from_secs(60)
        {
            return fail("check_interval", "must be 50 ms to 60 s");
        }
        if self.heartbeat_interval < Duration::from_secs(1)
            || self.heartbeat_interval > Duration::from_secs(300)
        {
            return fail("heartbeat_interval", "must be 1 s to 300 s");
        }
        if !(1..=10_000).contains(&self.max_streams) {
            return fail("max_streams", "must be 1 to 10000");
        }
        Ok(())
    }
}

/// A refused stream is told to come back after this long.
const STREAM_RETRY_AFTER_S: u64 = 5;

/// The streams' permits and settings.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) config: StreamConfig,
    permits: Arc<Semaphore>,
}

impl Streams {
    pub(crate) fn new(config: StreamConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_streams)),
            config,
        }
    }

    /// Ends every stream at its next check and refuses new ones.
    pub(crate) fn stop(&self) {
        self.permits.close();
    }
}

/// What one stream last sent.
struct Watch {
    control: Arc<ControlPlane>,
    permit: OwnedSemaphorePermit,
    ticker: tokio::time::Interval,
    queued: std::collections::VecDeque<Event>,
    stats: Option<String>,
    events: Option<String>,
    broadcasts: HashMap<EventId, Option<String>>,
}

impl Watch {
    /// Queues what changed since the last check. A source that does not answer is skipped
    /// this time (the stream stays open; the next check tries again).
    async fn check(&mut self) {
        let control = self.control.clone();
        match control.stats_source().stats().await {
            Ok(stats) => queue_if_changed(&mut self.queued, "stats", &stats, &mut self.stats),
            Err(error) => tracing::debug!(%error, "admin stream: stats unavailable"),
        }
        let events = match control.store().list().await {
            Ok(events) => events,
            Err(error) => {
                tracing::debug!(%error, "admin stream: events unavailable");
                return;
            }
        };
        let records = match control.broadcast_records().await {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "admin stream: broadcast records unavailable");
                Vec::new()
            }
        };
        // Grouped by topic once, so each event's report reads only its own records.
        let by_topic = broadcasts::index(&records);
        for event in &events {
            let Some(report) = by_topic
                .get(&event.topic)
                .and_then(|rows| broadcasts::newest(&event.id, &event.topic, rows))
            else {
                continue;
            };
            let last = self.broadcasts.entry(event.id.clone()).or_default();
            queue_if_changed(&mut self.queued, "broadcast", &report, last);
        }
        // Events gone from the list are forgotten.
        self.broadcasts
            .retain(|id, _| events.iter().any(|event| &event.id == id));
        let list = EventList { events };
        queue_if_changed(&mut self.queued, "events", &list, &mut self.events);
    }
}

/// Queues `value` as an event named `name` when its JSON differs from `last`.
fn queue_if_changed<T: serde::Serialize>(
    queued: &mut std::collections::VecDeque<Event>,
    name: &'static str,
    value: &T,
    last: &mut Option<String>,
) {
    let Ok(json) = serde_json::to_string(value) else {
        return;
    };
    if last.as_deref() == Some(json.as_str()) {
        return;
    }
    queued.push_back(Event::default().event(name).data(&json));
    *last = Some(json);
}

/// `GET /v1/admin/stream`.
pub(crate) async fn admin_stream(State(control): State<Arc<ControlPlane>>) -> Response {
    let streams = control.streams();
    let Ok(permit) = streams.permits.clone().try_acquire_owned() else {
        let error = ApiError::new(
            ApiErrorCode::Unavailable,
            format!(
                "this instance serves its limit of {} admin streams; retry in {STREAM_RETRY_AFTER_S} s",
                streams.config.max_streams
            ),
        );
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(STREAM_RETRY_AFTER_S));
        return response;
    };
    let mut ticker = tokio::time::interval(streams.config.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = streams.config.heartbeat_interval;
    let watch = Watch {
        control: control.clone(),
        permit,
        ticker,
        queued: std::collections::VecDeque::new(),
        stats: None,
        events: None,
        broadcasts: HashMap::new(),
    };
    let events = futures_util::stream::unfold(watch, |mut watch| async move {
        loop {
            if let Some(event) = watch.queued.pop_front() {
                return Some((Ok::<Event, Infallible>(event), watch));
            }
            watch.ticker.tick().await;
            // Closed on shutdown: the stream ends, its permit goes with it.
            if watch.permit.semaphore().is_closed() {
                return None;
            }
            watch.check().await;
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text(""))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(protection::Streaming);
    response
}
