//! `GET /v1/admin/stream`: Server-Sent Events that push what the console would otherwise poll.
//!
//! One poller per control instance does the reading: every [`StreamConfig::check_interval`] it
//! reads the stats, the event list and the nodes' broadcast records (once, whatever the number
//! of streams), reports each event's newest broadcast from records grouped by topic once per
//! check ([`broadcasts::index`]), and publishes the serialised values through a
//! [`tokio::sync::watch`]. It starts with the first stream and ends when no stream is open or
//! at shutdown, so an instance without a console open reads nothing. Each stream only forwards
//! the values whose JSON changed since it last sent them (everything once on connect):
//!
//! - `event: stats`, data: [`ringside_protocol::admin::Stats`], as `GET /v1/admin/stats`;
//! - `event: events`, data: [`ringside_protocol::admin::EventList`], as `GET /v1/admin/events`;
//! - `event: broadcast`, data: [`ringside_protocol::admin::BroadcastReport`] of one event's newest
//!   broadcast, as `GET /v1/admin/events/{id}/broadcasts/{version}`.
//!
//! A comment line (`:`) goes out after [`StreamConfig::heartbeat_interval`] without an event,
//! so proxies keep the connection. Streams are bounded ([`StreamConfig::max_streams`]; over it
//! `503` with `Retry-After`), each holds a permit until it ends: after
//! [`StreamConfig::max_lifetime`] (±10 %, so that the consoles' reconnects spread), so a
//! forgotten tab does not keep its place for good, or at shutdown, when closing the permits'
//! semaphore ends every stream. The response carries [`ringside_protection::Streaming`]: its place in
//! flight is given back with its headers and its time is no latency sample.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ringside_protocol::EventId;
use ringside_protocol::admin::{ApiError, ApiErrorCode, EventList};
use ringside_sync_util::LockExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::api::ControlPlane;
use crate::broadcasts;

/// The admin event stream's bounds.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// How often the instance's poller checks for changes (default 500 ms): fast enough for a
    /// live reach curve; one check a period serves every stream.
    pub check_interval: Duration,
    /// A comment line after this long without an event (default 15 s).
    pub heartbeat_interval: Duration,
    /// Streams open at once on this instance (default 32): operators' consoles are few, and
    /// each stream holds a connection and its last-sent values.
    pub max_streams: usize,
    /// How long a stream lives before it ends cleanly (default 30 min, each stream ±10 % so
    /// that reconnects spread): the console reconnects by itself, and a forgotten tab gives its
    /// place back instead of locking other operators out.
    pub max_lifetime: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(15),
            max_streams: 32,
            max_lifetime: Duration::from_secs(30 * 60),
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
        if self.max_lifetime < Duration::from_secs(1)
            || self.max_lifetime > Duration::from_secs(24 * 3600)
        {
            return fail("max_lifetime", "must be 1 s to 24 h");
        }
        Ok(())
    }
}

/// A refused stream is told to come back after this long.
const STREAM_RETRY_AFTER_S: u64 = 5;

/// The serialised values of the poller's last check, shared by every stream. A value that did
/// not change keeps its `Arc`, so a stream tells what changed by pointer.
#[derive(Debug, Clone, Default)]
struct Values {
    stats: Option<Arc<str>>,
    events: Option<Arc<str>>,
    /// Each event's newest broadcast report, in the event list's order.
    broadcasts: Vec<(EventId, Arc<str>)>,
}

impl Values {
    /// Whether every value is the one (the same `Arc`) of `other`.
    fn same_as(&self, other: &Values) -> bool {
        same(self.stats.as_ref(), other.stats.as_ref())
            && same(self.events.as_ref(), other.events.as_ref())
            && self.broadcasts.len() == other.broadcasts.len()
            && self
                .broadcasts
                .iter()
                .zip(&other.broadcasts)
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
    }
}

fn same(a: Option<&Arc<str>>, b: Option<&Arc<str>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// The streams' permits, settings and the poller's values.
#[derive(Debug)]
pub(crate) struct Streams {
    pub(crate) config: StreamConfig,
    permits: Arc<Semaphore>,
    values: watch::Sender<Arc<Values>>,
    /// The running poller, if any; taken with the receivers' count, so that a stream opening
    /// as the poller leaves always finds one running.
    poller: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Streams {
    pub(crate) fn new(config: StreamConfig) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_streams)),
            values: watch::Sender::new(Arc::default()),
            poller: Mutex::new(None),
            config,
        }
    }

    /// Ends every stream and the poller (even halfway through a check: it keeps nothing that
    /// must be finished); refuses new streams.
    pub(crate) fn stop(&self) {
        let mut poller = self.poller.locked();
        self.permits.close();
        if let Some(poller) = poller.take() {
            poller.abort();
        }
        // Wakes every stream, which then sees the permits closed.
        self.values.send_modify(|_| {});
    }

    /// A receiver of the poller's values, starting the poller when none runs.
    fn subscribe(&self, control: &Arc<ControlPlane>) -> watch::Receiver<Arc<Values>> {
        let mut poller = self.poller.locked();
        let receiver = self.values.subscribe();
        // After `stop` the stream ends at once; no poller is started for it.
        if poller.is_none() && !self.permits.is_closed() {
            *poller = Some(tokio::spawn(poll(control.clone())).abort_handle());
        }
        receiver
    }

    /// Whether the poller should stop: at shutdown, or when no stream is open (it then forgets
    /// its values, so the next stream never starts from stale ones).
    fn poller_done(&self) -> bool {
        let mut poller = self.poller.locked();
        if self.permits.is_closed() {
            return true;
        }
        if self.values.receiver_count() == 0 {
            *poller = None;
            self.values.send_replace(Arc::default());
            return true;
        }
        false
    }
}

/// The poller of one control instance: one check every [`StreamConfig::check_interval`], for
/// every stream, until [`Streams::poller_done`].
async fn poll(control: Arc<ControlPlane>) {
    let streams = control.streams();
    let mut ticker = tokio::time::interval(streams.config.check_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Arc::<Values>::default();
    loop {
        ticker.tick().await;
        if streams.poller_done() {
            tracing::debug!("admin stream poller stopped");
            return;
        }
        let next = check(&control, &last).await;
        if !next.same_as(&last) {
            last = Arc::new(next);
            streams.values.send_replace(last.clone());
        }
    }
}

/// `json` as an `Arc`, `previous` itself when it reads the same (see [`Values`]).
fn reuse(previous: Option<&Arc<str>>, json: String) -> Arc<str> {
    match previous {
        Some(previous) if **previous == *json => previous.clone(),
        _ => Arc::from(json),
    }
}

/// One check: each source read once. A source that does not answer keeps its last values
/// this time (the streams stay open; the next check tries again).
async fn check(control: &ControlPlane, last: &Values) -> Values {
    let stats = match control.stats_source().stats().await {
        Ok(stats) => serde_json::to_string(&stats)
            .ok()
            .map(|json| reuse(last.stats.as_ref(), json))
            .or_else(|| last.stats.clone()),
        Err(error) => {
            tracing::debug!(%error, "admin stream: stats unavailable");
            last.stats.clone()
        }
    };
    let events = match control.store().list().await {
        Ok(events) => events,
        Err(error) => {
            tracing::debug!(%error, "admin stream: events unavailable");
            return Values {
                stats,
                ..last.clone()
            };
        }
    };
    let records = match control.broadcast_records().await {
        Ok(records) => records,
        Err(error) => {
            tracing::debug!(%error, "admin stream: broadcast records unavailable");
            Vec::new()
        }
    };
    let by_topic = broadcasts::index(&records);
    let previous: HashMap<&EventId, &Arc<str>> = last
        .broadcasts
        .iter()
        .map(|(id, json)| (id, json))
        .collect();
    let mut reports = Vec::with_capacity(events.len());
    for event in &events {
        let previous = previous.get(&event.id).copied();
        let fresh = by_topic
            .get(&event.topic)
            .and_then(|rows| broadcasts::newest(&event.id, &event.topic, rows))
            .and_then(|report| serde_json::to_string(&report).ok());
        // An event without a report now keeps the one last sent, as a stream always did.
        let json = match (fresh, previous) {
            (Some(json), previous) => reuse(previous, json),
            (None, Some(previous)) => previous.clone(),
            (None, None) => continue,
        };
        reports.push((event.id.clone(), json));
    }
    let list = EventList { events };
    let events = serde_json::to_string(&list)
        .ok()
        .map(|json| reuse(last.events.as_ref(), json))
        .or_else(|| last.events.clone());
    Values {
        stats,
        events,
        broadcasts: reports,
    }
}

/// One stream: what it last sent, and when it ends.
struct Watch {
    permit: OwnedSemaphorePermit,
    values: watch::Receiver<Arc<Values>>,
    /// Whether `values` holds values not compared yet (the current ones, on connect).
    unread: bool,
    ends_at: tokio::time::Instant,
    queued: std::collections::VecDeque<Event>,
    stats: Option<Arc<str>>,
    events: Option<Arc<str>>,
    broadcasts: HashMap<EventId, Arc<str>>,
}

impl Watch {
    /// Queues what changed in `values` since this stream last sent it; events gone from the
    /// list are forgotten.
    fn queue_changes(&mut self, values: &Values) {
        if let Some(stats) = &values.stats {
            queue_if_changed(&mut self.queued, "stats", stats, &mut self.stats);
        }
        let mut sent = HashMap::with_capacity(values.broadcasts.len());
        for (id, report) in &values.broadcasts {
            let mut last = self.broadcasts.remove(id);
            queue_if_changed(&mut self.queued, "broadcast", report, &mut last);
            sent.insert(id.clone(), report.clone());
        }
        self.broadcasts = sent;
        if let Some(events) = &values.events {
            queue_if_changed(&mut self.queued, "events", events, &mut self.events);
        }
    }
}

/// Queues `json` as an event named `name` unless it is `last`.
fn queue_if_changed(
    queued: &mut std::collections::VecDeque<Event>,
    name: &'static str,
    json: &Arc<str>,
    last: &mut Option<Arc<str>>,
) {
    if same(last.as_ref(), Some(json)) {
        return;
    }
    queued.push_back(Event::default().event(name).data(&**json));
    *last = Some(json.clone());
}

/// `lifetime` give or take up to 10 %, at random: streams opened together (consoles that
/// reconnected after a restart) end apart.
fn jittered(lifetime: Duration) -> Duration {
    use std::hash::BuildHasher;
    // Each `RandomState` is seeded afresh: random enough to spread reconnects.
    let random = std::collections::hash_map::RandomState::new().hash_one(0u8);
    let unit = (random >> 11) as f64 / (1u64 << 53) as f64;
    lifetime.mul_f64(0.9 + 0.2 * unit)
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
    let heartbeat = streams.config.heartbeat_interval;
    let watch = Watch {
        permit,
        values: streams.subscribe(&control),
        unread: true,
        ends_at: tokio::time::Instant::now() + jittered(streams.config.max_lifetime),
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
            // Closed on shutdown: the stream ends, its permit goes with it.
            if watch.permit.semaphore().is_closed() {
                return None;
            }
            if watch.unread {
                let values = watch.values.borrow_and_update().clone();
                watch.unread = false;
                watch.queue_changes(&values);
                continue;
            }
            tokio::select! {
                changed = watch.values.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    watch.unread = true;
                }
                () = tokio::time::sleep_until(watch.ends_at) => {
                    // Ends cleanly: the console reconnects, and may find its place taken.
                    tracing::debug!("admin stream reached its lifetime");
                    return None;
                }
            }
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text(""))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .extensions_mut()
        .insert(ringside_protection::Streaming);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_is_bounded_and_each_stream_gets_it_within_ten_percent() {
        assert_eq!(StreamConfig::default().validate(), Ok(()));
        for max_lifetime in [
            Duration::from_millis(999),
            Duration::from_secs(24 * 3600 + 1),
        ] {
            let config = StreamConfig {
                max_lifetime,
                ..StreamConfig::default()
            };
            assert_eq!(
                config.validate().map_err(|error| error.field),
                Err("max_lifetime")
            );
        }
        let lifetime = StreamConfig::default().max_lifetime;
        let lifetimes: Vec<Duration> = (0..200).map(|_| jittered(lifetime)).collect();
        assert!(
            lifetimes
                .iter()
                .all(|l| *l >= lifetime.mul_f64(0.9) && *l <= lifetime.mul_f64(1.1))
        );
        // Spread, not one value for every stream.
        assert!(lifetimes.iter().any(|l| *l != lifetimes[0]));
    }
}
