//! The admin API, `/v1/admin/...`, JSON in and out, behind `Authorization: Bearer <admin token>`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ringside_auth::AdminToken;
use ringside_broadcaster::Bus;
use ringside_protocol::admin::{CreateEvent, EventList, PublishReceipt};
use ringside_protocol::admin::{NodeBroadcastRecords, UpdateEvent};
use ringside_protocol::{EventId, EventState, Payload, PayloadError, Priority, Stage};
use ringside_sync_util::LockExt;
use ringside_telemetry::{Counter, Registry};

use crate::body::{PublishBody, parse_json, validate_event};
use crate::broadcasts::BroadcastSource;
use crate::fetch_window::{FetchWindow, FetchWindowConfig};
use crate::nodes::NodeDrains;
use crate::stream::{StreamConfig, Streams};
use crate::{ControlError, EventStore, SharedStats};

/// Largest admin request body, in bytes.
pub const ADMIN_BODY_MAX_BYTES: usize = 64 * 1024;
/// Longest event title, in characters.
pub const TITLE_MAX_CHARS: usize = 200;
/// Most stages one event may define.
pub const STAGES_MAX: usize = 32;

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if let Self::Unavailable(error) = &self {
            tracing::warn!(%error, "publish refused: bus unavailable");
        }
        let mut response = (status, axum::Json(self.to_api_error())).into_response();
        if matches!(self, Self::Unauthorized) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[derive(Debug)]
struct ControlMetrics {
    publishes: Arc<Counter>,
    publishes_failed: Arc<Counter>,
    publishes_unrecorded: Arc<Counter>,
}

/// The control plane's shared state.
pub struct ControlPlane {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn Bus>,
    stats: SharedStats,
    admin_token: AdminToken,
    metrics: ControlMetrics,
    publish_locks: std::sync::Mutex<HashMap<EventId, Arc<tokio::sync::Mutex<()>>>>,
    /// States the bus took that the store has not recorded yet, the newest per event, each
    /// retried by one background task until it is recorded.
    unrecorded: Arc<std::sync::Mutex<HashMap<EventId, EventState>>>,
    /// Set by [`ControlPlane::with_protection`]; `/v1/admin/protection` answers 404 without.
    pub(crate) protection: std::sync::OnceLock<crate::protection_api::ProtectionControl>,
    /// The default follow-up fetch window of stage states.
    fetch_window: FetchWindow,
    /// Where node drains go, once the process composed it (see [`ControlPlane::serve_drains`]).
    drains: std::sync::OnceLock<Arc<dyn NodeDrains>>,
    /// Where the nodes' broadcast records come from (see [`ControlPlane::serve_broadcasts`]).
    broadcasts: std::sync::OnceLock<Arc<dyn BroadcastSource>>,
    /// The admin event streams' permits and settings (see [`ControlPlane::with_streams`]).
    streams: std::sync::OnceLock<Streams>,
}

/// A handed-out per-event publish lock. Dropping it forgets the lock when no other publish holds
/// or waits for it, so the map holds only events being published right now.
struct PublishLockLease<'a> {
    control: &'a ControlPlane,
    event: &'a EventId,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl PublishLockLease<'_> {
    async fn serialize(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        Some(self.lock.as_ref()?.lock().await)
    }
}

impl Drop for PublishLockLease<'_> {
    fn drop(&mut self) {
        let mut locks = self.control.publish_locks.locked();
        drop(self.lock.take());
        // Every other holder took its clone under this map lock, so the count cannot rise now.
        if locks
            .get(self.event)
            .is_some_and(|held| Arc::strong_count(held) == 1)
        {
            locks.remove(self.event);
        }
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}

impl ControlPlane {
    pub fn new(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn Bus>,
        stats: SharedStats,
        admin_token: AdminToken,
        registry: &Registry,
    ) -> Arc<Self> {
        let metrics = ControlMetrics {
            publishes: registry
                .counter("ringside_publishes_total", "Publishes accepted by the bus."),
            publishes_failed: registry.counter(
                "ringside_publishes_failed_total",
                "Publishes the bus did not accept (answered 503).",
            ),
            publishes_unrecorded: registry.counter(
                "ringside_publishes_unrecorded_total",
                "Publishes the bus took but the store could not record at once (answered 200 with recorded false; repaired in the background).",
            ),
        };
        Arc::new(Self {
            store,
            bus,
            stats,
            admin_token,
            metrics,
            publish_locks: std::sync::Mutex::default(),
            unrecorded: Arc::default(),
            protection: std::sync::OnceLock::new(),
            fetch_window: FetchWindow::default(),
            drains: std::sync::OnceLock::new(),
            broadcasts: std::sync::OnceLock::new(),
            streams: std::sync::OnceLock::new(),
        })
    }

    /// Bounds `GET /v1/admin/stream` with `config`; without it, the defaults of
    /// [`StreamConfig`]. Set once, before the first stream.
    pub fn with_streams(self: Arc<Self>, config: StreamConfig) -> Arc<Self> {
        if self.streams.set(Streams::new(config)).is_err() {
            tracing::debug!("admin streams already configured");
        }
        self
    }

    pub(crate) fn streams(&self) -> &Streams {
        self.streams
            .get_or_init(|| Streams::new(StreamConfig::default()))
    }

    /// Ends every admin stream and their poller, and refuses new streams (on shutdown: a
    /// stream otherwise lasts its whole lifetime, and the HTTP drain waits for open responses).
    pub fn stop_streams(&self) {
        self.streams().stop();
    }

    /// Serves the broadcast report from `source` (without it no broadcast is known). Set once;
    /// a second call is ignored.
    pub fn serve_broadcasts(&self, source: Arc<dyn BroadcastSource>) {
        if self.broadcasts.set(source).is_err() {
            tracing::debug!("broadcast records already served");
        }
    }

    /// Every reporting node's records of `topic` (records of other topics may come along).
    pub(crate) async fn topic_broadcast_records(
        &self,
        topic: &ringside_protocol::Topic,
    ) -> Result<Vec<NodeBroadcastRecords>, ControlError> {
        match self.broadcasts.get() {
            Some(source) => source.topic_records(topic).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every reporting node's broadcast records.
    pub(crate) async fn broadcast_records(
        &self,
    ) -> Result<Vec<NodeBroadcastRecords>, ControlError> {
        match self.broadcasts.get() {
            Some(source) => source.records().await,
            None => Ok(Vec::new()),
        }
    }

    pub(crate) fn stats_source(&self) -> &SharedStats {
        &self.stats
    }

    pub(crate) fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Sizes the default follow-up fetch window of stage states with `config` (see
    /// [`crate::fetch_window`]); without it, the defaults of [`FetchWindowConfig`].
    pub fn with_fetch_window(self: Arc<Self>, config: FetchWindowConfig) -> Arc<Self> {
        self.fetch_window.configure(config);
        self
    }

    /// Serves `POST /v1/admin/nodes/{id}/drain` through `drains` (without it every node is
    /// unknown). Set once; a second call is ignored.
    pub fn serve_drains(&self, drains: Arc<dyn NodeDrains>) {
        if self.drains.set(drains).is_err() {
            tracing::debug!("node drains already served");
        }
    }

    /// The per-event publish lock of `event`, given back when the lease drops: however the
    /// publish ends, including a request dropped halfway (a client gone, a shutdown).
    fn publish_lock<'a>(&'a self, event: &'a EventId) -> PublishLockLease<'a> {
        let mut locks = self.publish_locks.locked();
        let lock = locks.entry(event.clone()).or_default().clone();
        PublishLockLease {
            control: self,
            event,
            lock: Some(lock),
        }
    }

    /// The admin routes, all behind the admin token: a request without it is refused before
    /// anything else, its body unread, whatever its path or method.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/admin/events", post(create_event).get(list_events))
            .route("/v1/admin/events/{id}", get(get_event).patch(update_event))
            .route("/v1/admin/events/{id}/broadcasts", get(list_broadcasts))
            .route(
                "/v1/admin/events/{id}/broadcasts/{version}",
                get(get_broadcast),
            )
            .route("/v1/admin/stream", get(crate::stream::admin_stream))
            .route("/v1/admin/events/{id}/publish", post(publish))
            .route("/v1/admin/stats", get(stats))
            .route(
                "/v1/admin/protection",
                get(crate::protection_api::get_protection)
                    .put(crate::protection_api::put_protection),
            )
            .route("/v1/admin/nodes/{id}/drain", post(drain_node))
            .route("/v1/admin/{*rest}", axum::routing::any(not_found))
            // Set before the token layer, so that a wrong method is answered only with a token.
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(ADMIN_BODY_MAX_BYTES))
            .layer(middleware::from_fn_with_state(self.clone(), require_admin))
            .with_state(self.clone())
    }
}

async fn require_admin(
    State(control): State<Arc<ControlPlane>>,
    request: Request,
    next: Next,
) -> Result<Response, ControlError> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(ringside_auth::bearer_token);
    match presented {
        Some(token) if control.admin_token.matches(token) => Ok(next.run(request).await),
        _ => Err(ControlError::Unauthorized),
    }
}

async fn not_found() -> ControlError {
    ControlError::NotFound("no such admin endpoint".into())
}

async fn method_not_allowed(method: axum::http::Method) -> ControlError {
    ControlError::MethodNotAllowed(format!("{method} is not allowed here"))
}

async fn create_event(
    State(control): State<Arc<ControlPlane>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ControlError> {
    let event: CreateEvent = parse_json(&body)?;
    validate_event(&event)?;
    let summary = control.store.create(event).await?;
    tracing::info!(event = %summary.id, "event created");
    Ok((StatusCode::CREATED, axum::Json(summary)).into_response())
}

async fn list_events(State(control): State<Arc<ControlPlane>>) -> Result<Response, ControlError> {
    let events = control.store.list().await?;
    Ok(axum::Json(EventList { events }).into_response())
}

/// Longest piece of a client's id quoted back in an error message, in characters.
const QUOTED_ID_MAX_CHARS: usize = 64;

/// The event named by the `{id}` of a path: 400 when the path is not valid percent-encoded
/// UTF-8, 404 when it cannot be an event id (so no event by that name exists).
fn event_id_of(path: Result<Path<String>, PathRejection>) -> Result<EventId, ControlError> {
    let Path(id) = path.map_err(|_| {
        ControlError::invalid("id", "id: the path is not valid percent-encoded UTF-8")
    })?;
    EventId::parse(&id).map_err(|_| {
        let quoted: String = id.chars().take(QUOTED_ID_MAX_CHARS).collect();
        ControlError::NotFound(format!("unknown event {quoted}"))
    })
}

async fn get_event(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ControlError> {
    let summary = control.store.get(&event_id_of(path)?).await?;
    Ok(axum::Json(summary).into_response())
}

/// `PATCH /v1/admin/events/{id}`: the fields given replace the event's, validated as a new
/// event's would be. Taken under the event's publish lock, so that a publish never runs with
/// stages the update is removing; the event's current stage cannot be removed (409).
async fn update_event(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ControlError> {
    let id = event_id_of(path)?;
    let update: UpdateEvent = parse_json(&body)?;
    control.store.get(&id).await?;
    let lease = control.publish_lock(&id);
    let _serialized = lease.serialize().await;
    let shared_lock = control.store.lock_publishes(&id).await?;
    let result = update_in_order(&control, &id, update).await;
    if let Some(lock) = shared_lock {
        control.store.unlock_publishes(lock).await;
    }
    let summary = result?;
    tracing::info!(event = %id, "event updated");
    Ok(axum::Json(summary).into_response())
}

async fn update_in_order(
    control: &ControlPlane,
    id: &EventId,
    update: UpdateEvent,
) -> Result<ringside_protocol::admin::EventSummary, ControlError> {
    let current = control.store.get(id).await?;
    let updated = CreateEvent {
        id: id.clone(),
        title: update.title.unwrap_or(current.title),
        starts_at: update.starts_at.unwrap_or(current.starts_at),
        stages: update.stages.unwrap_or(current.stages),
    };
    validate_event(&updated)?;
    if let Some(stage) = &current.stage
        && !updated.stages.contains(stage)
    {
        return Err(ControlError::Conflict(format!(
            "event {id} is at stage {stage}: its current stage cannot be removed"
        )));
    }
    control.store.update(updated).await
}

/// The event named by the path, and the version after it: 404 when either cannot exist.
fn broadcast_of(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(EventId, String), ControlError> {
    let Path((id, version)) = path.map_err(|_| {
        ControlError::invalid("id", "id: the path is not valid percent-encoded UTF-8")
    })?;
    let id = event_id_of(Ok(Path(id)))?;
    Ok((id, version))
}

/// `GET /v1/admin/events/{id}/broadcasts`: the broadcasts the nodes keep records of, newest
/// first, summed over the fleet.
async fn list_broadcasts(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ControlError> {
    let id = event_id_of(path)?;
    let event = control.store.get(&id).await?;
    let records = control.topic_broadcast_records(&event.topic).await?;
    let of_topic = crate::broadcasts::of_topic(&event.topic, &records);
    let list = crate::broadcasts::list(&id, &event.topic, &of_topic);
    Ok(axum::Json(list).into_response())
}

/// `GET /v1/admin/events/{id}/broadcasts/{version}`: one broadcast's summary, reach curve and
/// per-node rows; 404 for a version no node keeps a record of.
async fn get_broadcast(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ControlError> {
    let (id, version_text) = broadcast_of(path)?;
    let event = control.store.get(&id).await?;
    let unknown = || {
        let quoted: String = version_text.chars().take(QUOTED_ID_MAX_CHARS).collect();
        ControlError::NotFound(format!(
            "no node keeps a record of version {quoted} of event {id}"
        ))
    };
    let version: u64 = version_text.parse().map_err(|_| unknown())?;
    let records = control.topic_broadcast_records(&event.topic).await?;
    let of_topic = crate::broadcasts::of_topic(&event.topic, &records);
    let report =
        crate::broadcasts::report(&id, &event.topic, version, &of_topic).ok_or_else(unknown)?;
    Ok(axum::Json(report).into_response())
}

async fn publish(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ControlError> {
    let id = event_id_of(path)?;
    let request: PublishBody = parse_json(&body)?;
    let payload = match request.payload {
        None => Payload::empty(),
        Some(raw) => Payload::from_raw(raw).map_err(|error| match error {
            PayloadError::TooLarge { .. } => {
                ControlError::PayloadTooLarge(format!("payload: {error}"))
            }
            PayloadError::NotAnObject | PayloadError::TooDeep => {
                ControlError::invalid("payload", format!("payload: {error}"))
            }
        })?,
    };
    let lane = match request.priority.unwrap_or_default() {
        lane @ (Priority::Critical | Priority::BestEffort) => lane,
        _ => {
            return Err(ControlError::invalid(
                "priority",
                "priority: a publish is critical (a stage state, the default) or best_effort",
            ));
        }
    };
    if request
        .fetch_within_ms
        .is_some_and(|window| window > FETCH_WITHIN_MAX_MS)
    {
        return Err(ControlError::invalid(
            "fetch_within_ms",
            format!("fetch_within_ms: must be at most {FETCH_WITHIN_MAX_MS} (one hour)"),
        ));
    }
    let options = PublishOptions {
        lane,
        fetch_within_ms: request.fetch_within_ms,
    };
    // An unknown event is answered 404 before anything is locked or remembered for it.
    control.store.get(&id).await?;
    // One publish per event at a time, from version assignment to the bus's acknowledgement,
    // so that the bus carries an event's states in version order: in this process, then
    // across every instance sharing the store.
    let lease = control.publish_lock(&id);
    let _serialized = lease.serialize().await;
    let shared_lock = control.store.lock_publishes(&id).await?;
    let result = publish_in_order(&control, &id, request.stage, payload, options).await;
    if let Some(lock) = shared_lock {
        control.store.unlock_publishes(lock).await;
    }
    result
}

/// Longest follow-up fetch window an operator may set.
pub const FETCH_WITHIN_MAX_MS: u64 = 3_600_000;

/// What a publish asks for beyond its stage and payload.
#[derive(Debug, Clone, Copy)]
struct PublishOptions {
    /// The lane: `critical` (a stage state) or `best_effort`.
    lane: Priority,
    /// The operator's follow-up fetch window, if set.
    fetch_within_ms: Option<u64>,
}

async fn publish_in_order(
    control: &ControlPlane,
    id: &EventId,
    stage: Stage,
    payload: Payload,
    options: PublishOptions,
) -> Result<Response, ControlError> {
    let stage = match options.lane {
        Priority::Critical => stage,
        _ => best_effort_stage(control, id, &stage).await?,
    };
    let mut new = control
        .store
        .next_state(id, stage.clone(), payload.clone(), 0)
        .await?;
    // A store without a counter (the event's first publish, or a Redis restored without its
    // counter and state) may hand out a version older than what the hubs hold from the bus:
    // then it is asked again, above the newest version any node reports. The version skipped
    // is a gap, which versions may have.
    if new.counter_missing
        && let Some(held) = held_by_nodes(control, id).await
        && held >= new.state.version
    {
        new = control.store.next_state(id, stage, payload, held).await?;
    }
    let mut state = new.state;
    state.priority = options.lane;
    state.fetch_within_ms = control
        .fetch_window
        .window_for(&state, options.fetch_within_ms, control.stats.as_ref())
        .await;
    if let Err(error) = control.bus.publish(state.clone()).await {
        control.metrics.publishes_failed.increment();
        return Err(error.into());
    }
    control.metrics.publishes.increment();
    // The bus has the state from here on, so devices get it: the answer is 200 whatever the
    // store does, and says whether the store has it too.
    let recorded = record_with_retries(control, &state).await;
    if !recorded {
        control.metrics.publishes_unrecorded.increment();
        tracing::error!(event = %id, version = state.version, "state published but not recorded in the store; retrying in the background");
        control.repair_record(state.clone());
    }
    tracing::info!(event = %id, version = state.version, stage = %state.stage, lane = %state.priority, recorded, "state published");
    let receipt = PublishReceipt {
        topic: state.topic.clone(),
        version: state.version,
        published_at_ms: state.published_at_ms,
        recorded,
    };
    Ok(axum::Json(receipt).into_response())
}

/// The newest version of `id` any node reports holding, if the stats answer.
async fn held_by_nodes(control: &ControlPlane, id: &EventId) -> Option<u64> {
    match control.stats.stats().await {
        Ok(stats) => Some(
            stats
                .topics
                .iter()
                .find(|topic| topic.topic == id.topic())
                .map_or(0, |topic| topic.version),
        ),
        Err(error) => {
            tracing::warn!(%error, event = %id, "the versions the nodes hold are unknown; the store's counter alone sets the version");
            None
        }
    }
}

/// Pauses between the attempts to record a published state before the answer goes out: a
/// store that blinks (a failover, a restart) gets about a second.
const RECORD_RETRIES: [std::time::Duration; 2] = [
    std::time::Duration::from_millis(200),
    std::time::Duration::from_millis(600),
];
/// Between the background repair's attempts, and how long it keeps trying.
const REPAIR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
const REPAIR_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Records `state` in the store, retrying after each of [`RECORD_RETRIES`]; whether it went.
async fn record_with_retries(control: &ControlPlane, state: &EventState) -> bool {
    for pause in std::iter::once(None).chain(RECORD_RETRIES.map(Some)) {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        match control.store.record_published(state).await {
            Ok(()) => return true,
            Err(error) => {
                tracing::warn!(%error, event = %state.topic, version = state.version, "cannot record a published state");
            }
        }
    }
    false
}

/// Removes `event`'s waiting state if it is still `version`; whether it was.
fn forget_if_newest(
    unrecorded: &std::sync::Mutex<HashMap<EventId, EventState>>,
    event: &EventId,
    version: u64,
) -> bool {
    let mut waiting = unrecorded.locked();
    let newest = waiting
        .get(event)
        .is_some_and(|state| state.version == version);
    if newest {
        waiting.remove(event);
    }
    newest
}

impl ControlPlane {
    /// Keeps recording `state` in the background until the store takes it (or a newer state of
    /// its event, published since, replaces it; the store keeps the newer of two in any case).
    /// One task per event; gives up after [`REPAIR_FOR`].
    fn repair_record(&self, state: EventState) {
        let event = state.topic.event_id();
        {
            let mut unrecorded = self.unrecorded.locked();
            let waiting = unrecorded.get(&event).map(|waiting| waiting.version);
            if waiting.is_none_or(|version| version < state.version) {
                unrecorded.insert(event.clone(), state);
            }
            if waiting.is_some() {
                // Its event's task is running and takes the newest.
                return;
            }
        }
        let (store, unrecorded) = (self.store.clone(), self.unrecorded.clone());
        tokio::spawn(async move {
            // When the state being repaired arrived: each newer one gets the whole time.
            let (mut repairing, mut since) = (0, tokio::time::Instant::now());
            loop {
                tokio::time::sleep(REPAIR_INTERVAL).await;
                let Some(state) = unrecorded.locked().get(&event).cloned() else {
                    return;
                };
                if state.version != repairing {
                    (repairing, since) = (state.version, tokio::time::Instant::now());
                }
                let recorded = store.record_published(&state).await.is_ok();
                let gave_up = !recorded && since.elapsed() > REPAIR_FOR;
                // Done with this event unless a newer state arrived meanwhile: that one is
                // repaired next, with its own time.
                if (recorded || gave_up) && forget_if_newest(&unrecorded, &event, state.version) {
                    if recorded {
                        tracing::info!(%event, version = state.version, "published state recorded after all");
                    } else {
                        tracing::error!(%event, version = state.version, "gave up recording a published state; the store shows an older one until the next publish");
                    }
                    return;
                }
            }
        });
    }
}

/// The stage a best-effort message carries: the event's current stage, read under the publish
/// lock, whatever stage the body named (it must still be one of the event's), so that a device
/// that ignores `priority` stays on the right stage. An event without a state has no stage for
/// it: 409.
async fn best_effort_stage(
    control: &ControlPlane,
    id: &EventId,
    named: &Stage,
) -> Result<Stage, ControlError> {
    let event = control.store.get(id).await?;
    crate::store::check_stage(id, &event.stages, named)?;
    event.stage.ok_or_else(|| {
        ControlError::Conflict(format!(
            "event {id} has no state yet: publish a stage state before a best_effort message"
        ))
    })
}

async fn stats(State(control): State<Arc<ControlPlane>>) -> Result<Response, ControlError> {
    Ok(axum::Json(control.stats.stats().await?).into_response())
}

/// Longest node id (as `GatewayConfig::validate` allows).
const NODE_ID_MAX_CHARS: usize = 64;

/// `POST /v1/admin/nodes/{id}/drain`: `202` with the plan when this request started (or, across
/// nodes, recorded) the drain, `200` with the progress of a drain already under way, `404` for
/// a node that does not report.
async fn drain_node(
    State(control): State<Arc<ControlPlane>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ControlError> {
    let Path(node) = path.map_err(|_| {
        ControlError::invalid("id", "id: the path is not valid percent-encoded UTF-8")
    })?;
    let unknown = || {
        let quoted: String = node.chars().take(NODE_ID_MAX_CHARS).collect();
        ControlError::NotFound(format!("unknown node {quoted}"))
    };
    if node.is_empty() || node.chars().count() > NODE_ID_MAX_CHARS {
        return Err(unknown());
    }
    let Some(drains) = control.drains.get() else {
        return Err(unknown());
    };
    let Some((answer, started)) = drains.drain(&node).await? else {
        return Err(unknown());
    };
    let status = if started {
        tracing::info!(node = %node, state = ?answer.state, "node drain requested");
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(answer)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryEventStore, StatsSource};
    use futures_util::future::BoxFuture;
    use ringside_broadcaster::MemoryBus;
    use ringside_protocol::admin::{CreateEvent, Stats};

    struct NoStats;

    impl StatsSource for NoStats {
        fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>> {
            Box::pin(async {
                Ok(Stats {
                    nodes: Vec::new(),
                    topics: Vec::new(),
                })
            })
        }
    }

    fn held_locks(control: &ControlPlane) -> usize {
        control.publish_locks.locked().len()
    }

    async fn publish_to(control: &Arc<ControlPlane>, id: &str) -> Result<Response, ControlError> {
        let body = Ok(Bytes::from_static(br#"{"stage":"LIVE"}"#));
        publish(State(control.clone()), Ok(Path(id.to_owned())), body).await
    }

    #[tokio::test]
    async fn publish_locks_are_held_only_while_an_existing_event_publishes() {
        let store = Arc::new(MemoryEventStore::new());
        store
            .create(CreateEvent {
                id: EventId::parse("real").expect("id"),
                title: "Real".into(),
                starts_at: "2026-12-01T20:00:00Z".into(),
                stages: vec![Stage::parse("LIVE").expect("stage")],
            })
            .await
            .expect("created");
        let control = ControlPlane::new(
            store,
            Arc::new(MemoryBus::new()),
            Arc::new(NoStats),
            AdminToken::new("an-admin-token-of-32-bytes-or-more!").expect("token"),
            &Registry::new(),
        );
        for n in 0..1000 {
            let unknown = publish_to(&control, &format!("made-up-{n}")).await;
            assert!(matches!(unknown, Err(ControlError::NotFound(_))));
        }
        assert_eq!(
            held_locks(&control),
            0,
            "unknown events leave no lock behind"
        );
        let published = publish_to(&control, "real").await.expect("published");
        assert_eq!(published.status(), StatusCode::OK);
        assert_eq!(
            held_locks(&control),
            0,
            "a finished publish leaves no lock behind"
        );
    }

    #[tokio::test]
    async fn a_best_effort_publish_carries_the_current_stage_and_is_never_the_events_state() {
        let store = Arc::new(MemoryEventStore::new());
        store
            .create(CreateEvent {
                id: EventId::parse("bout").expect("id"),
                title: "Bout".into(),
                starts_at: "2026-12-01T20:00:00Z".into(),
                stages: ["UPCOMING", "LIVE"]
                    .iter()
                    .map(|s| Stage::parse(s).expect("stage"))
                    .collect(),
            })
            .await
            .expect("created");
        let bus = Arc::new(MemoryBus::new());
        let control = ControlPlane::new(
            store.clone(),
            bus.clone(),
            Arc::new(NoStats),
            AdminToken::new("an-admin-token-of-32-bytes-or-more!").expect("token"),
            &Registry::new(),
        );
        let send = |body: &'static str| {
            let control = control.clone();
            async move {
                let body = Ok(Bytes::from_static(body.as_bytes()));
                publish(State(control), Ok(Path("bout".to_owned())), body).await
            }
        };
        let early = send(r#"{"stage":"LIVE","priority":"best_effort"}"#).await;
        assert!(
            matches!(early, Err(ControlError::Conflict(_))),
            "no stage to carry before the first state"
        );
        send(r#"{"stage":"LIVE"}"#).await.expect("state");
        let id = EventId::parse("bout").expect("id");
        let state_version = store.get(&id).await.expect("event").version;
        // The body's stage must be one of the event's, but the message carries the current one.
        let unknown = send(r#"{"stage":"HALF","priority":"best_effort"}"#).await;
        assert!(matches!(unknown, Err(ControlError::InvalidRequest { .. })));
        send(r#"{"stage":"UPCOMING","priority":"best_effort","payload":{"viewers":1}}"#)
            .await
            .expect("best effort");
        let summary = store.get(&id).await.expect("event");
        assert_eq!(summary.version, state_version, "not the event's state");
        assert_eq!(summary.stage.as_ref().map(Stage::as_str), Some("LIVE"));
        let (_, current) = store.with_states().await.expect("states").remove(0);
        assert_eq!(current.expect("a state").version, state_version);
        // On the bus: the state, then the best-effort message on the current stage.
        let mut feed = bus.subscribe();
        let mut seen = Vec::new();
        while let Ok(ringside_broadcaster::FeedItem::State(message)) = feed.next().await {
            seen.push(message);
        }
        assert_eq!(seen.len(), 2);
        let extra = seen
            .iter()
            .find(|m| !m.priority.is_critical())
            .expect("extra");
        assert_eq!(extra.stage.as_str(), "LIVE");
        assert!(extra.version > state_version);
    }
}
