//! A Ringside process in one of its roles: the gateway (WebSocket devices), the control plane
//! (admin API and prefetch GraphQL), or both. `/healthz` and `/metrics` are always served.
//!
//! What the process runs on is configuration, not code: the embedded bus and store, or Kafka
//! (tier 1) and Redis (events, versions, current states, prefetch pages, the node registry).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use auth::{AdminToken, DeviceTokenKey};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broadcaster::{
    Applied, Bus, ConsumerConfig, Hub, HubConfig, HubMetrics, MemoryBus, apply_off_runtime,
    run_bus_consumer,
};
use control::nodes::NodeDrains;
use control::nodes::{BROADCAST_REPORT_INTERVAL, HEARTBEAT_INTERVAL, TopicBroadcasts};
use control::{
    BroadcastSource, ClusterStats, ControlError, ControlPlane, EventStore, MemoryEventStore,
    NodeRegistry, NodeReport, RedisEventStore, StatsSource,
};
use futures_util::future::BoxFuture;
use gateway::{DrainReport, Gateway, GatewayConfig, GatewayMetrics};
use kafka::{KafkaBus, KafkaConfig};
use prefetch::store::{MemoryPageStore, PageStore, RedisPageStore};
use prefetch::{PrefetchConfig, PrefetchService};
use protocol::admin::{
    ApiError, ApiErrorCode, DrainAnswer, DrainState, NodeBroadcastRecords, Stats,
};
use telemetry::{Counter, Registry};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::content::{ControlEvents, DatasetSource, MaterializeMode, RedisLink, StoreSetup};
use crate::http::{HttpConfig, serve_http_protected};
use crate::overload::{ObservedBus, run_fleet_setting_poller};
use crate::secrets::Secrets;
use control::protection_api::{FleetSetting, ProtectionControl};
use protection::Protection;

/// What a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process (`ringside serve`).
    All,
    /// WebSocket devices only, following the Kafka bus (`ringside gateway`).
    Gateway,
    /// The admin API and prefetch GraphQL (`ringside control`); stateless, run several.
    Control,
}

impl Role {
    pub fn serves_devices(self) -> bool {
        matches!(self, Self::All | Self::Gateway)
    }

    pub fn serves_control(self) -> bool {
        matches!(self, Self::All | Self::Control)
    }
}

/// Tier 1.
#[derive(Debug, Clone)]
pub enum BusSetup {
    /// In-process: one node only.
    Memory,
    Kafka(KafkaConfig),
}

/// Everything a process needs, validated before it binds anything.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub role: Role,
    pub bus: BusSetup,
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    pub secrets: Secrets,
    /// Prefetch settings; `prefetch.store` also decides where events and the node registry
    /// live (Redis when set).
    pub prefetch: PrefetchSetup,
    /// How the control plane sizes the default follow-up fetch window of stage states.
    pub fetch_window: control::FetchWindowConfig,
    /// Bounds of `GET /v1/admin/stream`.
    pub admin_stream: control::StreamConfig,
}

/// How the prefetch service of this process is set up.
#[derive(Debug, Clone)]
pub struct PrefetchSetup {
    pub config: PrefetchConfig,
    pub dataset: DatasetSource,
    pub store: StoreSetup,
    pub materialize: MaterializeMode,
}

impl ServeConfig {
    /// Checks every setting and secret; runs before anything binds.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.role.serves_devices() {
            self.gateway.validate()?;
        }
        self.http.validate()?;
        if self.role.serves_control() {
            self.prefetch.config.validate()?;
            self.fetch_window.validate()?;
            self.admin_stream.validate()?;
        }
        DeviceTokenKey::new(self.secrets.device_token_secret.as_bytes())?;
        AdminToken::new(&self.secrets.admin_token)?;
        let kafka = matches!(self.bus, BusSetup::Kafka(_));
        let redis = matches!(self.prefetch.store, StoreSetup::Redis { .. });
        match self.role {
            Role::Gateway if !kafka => anyhow::bail!(
                "`ringside gateway` follows the Kafka bus: set RINGSIDE_KAFKA_BROKERS \
                 (or run everything in one process with `ringside serve`)"
            ),
            Role::Control if !(kafka && redis) => anyhow::bail!(
                "`ringside control` publishes to Kafka and keeps events and versions in Redis, \
                 shared by every instance: set RINGSIDE_KAFKA_BROKERS and RINGSIDE_REDIS_URL \
                 (or run everything in one process with `ringside serve`)"
            ),
            _ => Ok(()),
        }
    }
}

/// Stats of a single-process deployment: this node's gateway.
struct LocalStats {
    gateway: Arc<Gateway>,
}

impl StatsSource for LocalStats {
    fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>> {
        let stats = Stats {
            nodes: vec![self.gateway.node_stats()],
            topics: self.gateway.hub().topic_stats(),
        };
        Box::pin(async move { Ok(stats) })
    }
}

/// This node's broadcast records, as it reports them (to the local control plane, or to Redis).
fn broadcast_records(gateway: &Gateway) -> NodeBroadcastRecords {
    let (current, records) = gateway.hub().all_broadcast_records();
    NodeBroadcastRecords {
        node: gateway.node_id().to_owned(),
        reported_at_ms: protocol::unix_now_ms(),
        current,
        records,
    }
}

/// The broadcast report of a single-process deployment: this node's records, from memory.
impl BroadcastSource for LocalStats {
    fn records(&self) -> BoxFuture<'_, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        let records = vec![broadcast_records(&self.gateway)];
        Box::pin(async move { Ok(records) })
    }

    /// Only `topic`'s channel is read, so one event's report costs its own records.
    fn topic_records<'a>(
        &'a self,
        topic: &'a protocol::Topic,
    ) -> BoxFuture<'a, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        let (current, records) = self
            .gateway
            .hub()
            .topic_broadcast_records(topic)
            .map_or_else(Default::default, |(held, records)| (vec![held], records));
        let records = vec![NodeBroadcastRecords {
            node: self.gateway.node_id().to_owned(),
            reported_at_ms: protocol::unix_now_ms(),
            current,
            records,
        }];
        Box::pin(async move { Ok(records) })
    }
}

/// Drains of a single-process deployment: this node's gateway, started at once.
impl NodeDrains for LocalStats {
    fn drain(
        &self,
        node: &str,
    ) -> BoxFuture<'_, Result<Option<(DrainAnswer, bool)>, ControlError>> {
        let answer = (node == self.gateway.node_id()).then(|| {
            let (progress, started) = self.gateway.start_drain();
            let answer = DrainAnswer {
                node: node.to_owned(),
                state: DrainState::Draining,
                progress: Some(progress),
            };
            (answer, started)
        });
        Box::pin(async move { Ok(answer) })
    }
}

#[derive(Debug, Clone)]
struct Operations {
    registry: Arc<Registry>,
    gateway: Option<Arc<Gateway>>,
    node: String,
    shutdown: CancellationToken,
}

async fn healthz(State(ops): State<Operations>) -> Response {
    let ready = ops
        .gateway
        .as_ref()
        .is_none_or(|gateway| gateway.hub().is_ready() && !gateway.is_draining())
        && !ops.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "node": ops.node,
    });
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(ops): State<Operations>) -> Response {
    let mut response = ops.registry.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn not_found() -> Response {
    let error = ApiError::new(ApiErrorCode::NotFound, "no such endpoint");
    (StatusCode::NOT_FOUND, axum::Json(error)).into_response()
}

/// A path that exists, with a method it does not have; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method) -> Response {
    let error = ApiError::new(
        ApiErrorCode::MethodNotAllowed,
        format!("{method} is not allowed here"),
    );
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(error)).into_response()
}

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting, sends every
/// session a goaway and a close, and waits up to the grace period.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<DrainReport> {
    config.validate()?;
    // Stopped after the drain, so that a draining node still reports itself (as not ready);
    // also stopped if startup fails or is cancelled, so no task outlives this function.
    let stopped = CancellationToken::new();
    let _stop_tasks = stopped.clone().drop_guard();
    // Startup (reaching the broker, reading the bus) ends early on shutdown.
    let started = tokio::select! {
        () = shutdown.cancelled() => return Ok(DrainReport::default()),
        started = start(&listener, &config, &shutdown, &stopped) => started?,
    };
    let Started {
        registry,
        protection,
        node,
        router,
        background,
    } = started;
    let operations = Operations {
        registry: registry.clone(),
        gateway: node.as_ref().map(|n| n.gateway.clone()),
        node: config.gateway.node_id.clone(),
        shutdown: shutdown.clone(),
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(operations)
        .merge(router)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);

    let grace = config.gateway.shutdown_grace;
    // HTTP keeps accepting through the drain, so that `/healthz` answers 503 `unavailable`
    // and upgrades 503 `draining` (instead of refused connections) until the drain is over;
    // then it stops with a grace of its own. A node without a gateway stops it at once.
    let http_stop = CancellationToken::new();
    // The admin API, `/graphql` and the WebSocket upgrade all pass protection's layer; a
    // process that serves `/graphql` puts its CORS layer (when configured) in front of it.
    let cors_origins = if config.role.serves_control() {
        config.prefetch.config.cors_origins.clone()
    } else {
        Vec::new()
    };
    let http = serve_http_protected(
        listener,
        router,
        config.http,
        &protection,
        &cors_origins,
        &registry,
        http_stop.clone(),
        grace,
    );
    let drain = async {
        shutdown.cancelled().await;
        let report = match &node {
            Some(node) => node.drain().await,
            None => DrainReport::default(),
        };
        http_stop.cancel();
        report
    };
    let (_http_drained, report) = tokio::join!(http, drain);
    stopped.cancel();
    if let Some(node) = node {
        node.stop().await;
    }
    for task in background {
        task.abort();
    }
    Ok(report)
}

/// What a started process serves with.
struct Started {
    registry: Arc<Registry>,
    protection: Arc<Protection>,
    node: Option<Node>,
    router: Router,
    background: Vec<JoinHandle<()>>,
}

async fn start(
    listener: &TcpListener,
    config: &ServeConfig,
    shutdown: &CancellationToken,
    stopped: &CancellationToken,
) -> anyhow::Result<Started> {
    let address = listener.local_addr()?;
    let registry = Registry::new();
    let protection = Protection::new(
        config.http.protection.clone(),
        config.gateway.node_id.clone(),
        &registry,
    );
    let bus: Arc<dyn Bus> = match &config.bus {
        BusSetup::Memory => Arc::new(MemoryBus::new()),
        BusSetup::Kafka(kafka) => Arc::new(KafkaBus::connect(kafka.clone(), &registry).await?),
    };
    // Every state this process publishes or reads passes protection's ruleset once.
    let bus: Arc<dyn Bus> = Arc::new(ObservedBus::new(bus, protection.clone()));
    let redis = match &config.prefetch.store {
        StoreSetup::Memory => None,
        StoreSetup::Redis { url, prefix } => Some(Arc::new(RedisLink::new(url, prefix))),
    };
    let node = if config.role.serves_devices() {
        Some(
            Node::start(
                config.gateway.clone(),
                &config.secrets,
                bus.clone(),
                redis.clone(),
                &registry,
                address.to_string(),
                Stops {
                    shutdown: shutdown.clone(),
                    stopped: stopped.clone(),
                },
            )
            .await?,
        )
    } else {
        None
    };
    let mut router = Router::new();
    let mut background = start_protection(&protection, redis.as_deref(), stopped).await;
    if config.role.serves_control() {
        let (control_router, materializer) = start_control(
            config,
            bus.clone(),
            redis.as_deref(),
            node.as_ref().map(|n| n.gateway.clone()),
            &registry,
            &protection,
            shutdown,
        )
        .await?;
        router = router.merge(control_router);
        background.extend(materializer);
    }
    if let Some(node) = &node {
        router = router.merge(node.gateway.router());
    }
    Ok(Started {
        registry,
        protection,
        node,
        router,
        background,
    })
}

/// How often a gateway node compares its states with the event store's, to repair anything the
/// bus lost (a broker that came back empty) or delivered out of reach.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// A process's two stop signals: `shutdown` starts the drain; `stopped`, after the drain, ends
/// the node's tasks.
struct Stops {
    shutdown: CancellationToken,
    stopped: CancellationToken,
}

/// How long a shutdown waits for the node to leave the registry before its drain starts
/// anyway (Redis may not answer; devices must not wait for it).
const LEAVE_REGISTRY_TIMEOUT: Duration = Duration::from_secs(1);

/// The gateway side of a process: the hub, its sessions, and the tasks that keep it current.
struct Node {
    gateway: Arc<Gateway>,
    tasks: Vec<JoinHandle<()>>,
    /// With a registry: cancelled once the node has left it, at the start of its drain.
    left_registry: Option<CancellationToken>,
}

impl Node {
    async fn start(
        config: GatewayConfig,
        secrets: &Secrets,
        bus: Arc<dyn Bus>,
        redis: Option<Arc<RedisLink>>,
        registry: &Arc<Registry>,
        address: String,
        stops: Stops,
    ) -> anyhow::Result<Self> {
        let Stops { shutdown, stopped } = &stops;
        let consumer_config = ConsumerConfig {
            max_concurrent_fanouts: config.max_concurrent_fanouts,
            max_waiting_topics: config.max_waiting_topics,
            ..ConsumerConfig::default()
        };
        let hub = Arc::new(Hub::with_config(
            HubConfig {
                max_unpublished_topics: config.max_unpublished_topics,
                broadcasts_per_topic: config.broadcasts_per_topic,
            },
            HubMetrics::new(registry),
        ));
        let gateway = Gateway::new(
            config,
            hub.clone(),
            DeviceTokenKey::new(secrets.device_token_secret.as_bytes())?,
            GatewayMetrics::new(registry),
        );
        let mut tasks = Vec::new();
        let mut left_registry = None;
        if let Some(redis) = &redis {
            let repaired = registry.counter(
                "ringside_states_reconciled_total",
                "States this node took from the event store because the bus had not delivered them.",
            );
            // The node starts from the store's current states (when Redis answers), then reads
            // the bus: together they give exact catch-up even if the bus lost its log.
            for state in store_states(redis).await.unwrap_or_default() {
                hub.apply(&state);
            }
            tasks.push(tokio::spawn(run_reconciler(
                redis.clone(),
                hub.clone(),
                repaired,
                stopped.clone(),
            )));
            let left = CancellationToken::new();
            tasks.push(tokio::spawn(run_node_reports(
                NodeReporter {
                    redis: redis.clone(),
                    gateway: gateway.clone(),
                    address,
                    left: left.clone(),
                },
                shutdown.clone(),
                stopped.clone(),
            )));
            left_registry = Some(left);
            tasks.push(tokio::spawn(run_broadcast_reports(
                redis.clone(),
                gateway.clone(),
                stopped.clone(),
            )));
        }
        // Never ends before `stopped`: a feed that fails makes the node unready (its upgrades
        // get 503 and `/healthz` says so) and is reopened with backoff.
        let mut consumer = tokio::spawn(run_bus_consumer(
            bus,
            hub.clone(),
            consumer_config,
            stopped.clone(),
        ));
        // The node serves subscriptions only once it holds the latest state of every topic.
        if !hub.is_ready() {
            tracing::info!("reading the bus before accepting devices");
        }
        tokio::select! {
            () = hub.wait_ready() => {}
            _ = &mut consumer => anyhow::bail!("the bus consumer stopped before the node caught up"),
        }
        tasks.push(consumer);
        Ok(Self {
            gateway,
            tasks,
            left_registry,
        })
    }

    /// The shutdown's drain: the node leaves the registry first (its reporter removes it on
    /// shutdown), so that nothing routes devices to it while it sends its goaways.
    async fn drain(&self) -> DrainReport {
        if let Some(left) = &self.left_registry
            && tokio::time::timeout(LEAVE_REGISTRY_TIMEOUT, left.cancelled())
                .await
                .is_err()
        {
            tracing::warn!("the node registry did not answer; draining anyway");
        }
        self.gateway.drain().await
    }

    /// After the drain: the registry entry goes (the reporter removes it), then the tasks;
    /// any still running after a moment is aborted.
    async fn stop(self) {
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// The event store's current states, or `None` when Redis does not answer.
async fn store_states(redis: &RedisLink) -> Option<Vec<protocol::EventState>> {
    let connection = redis.connection().await.ok()?;
    let events = RedisEventStore::new(connection, redis.prefix.clone())
        .with_states()
        .await
        .ok()?;
    Some(events.into_iter().filter_map(|(_, state)| state).collect())
}

/// Every [`RECONCILE_INTERVAL`], applies the store's states that the hub still lacks a moment
/// after it first saw them lacking (a state published just now may be in the store before it
/// arrives through the bus). Counts and logs each one: the bus should have delivered it.
async fn run_reconciler(
    redis: Arc<RedisLink>,
    hub: Arc<Hub>,
    repaired: Arc<Counter>,
    stopped: CancellationToken,
) {
    let pause = |duration| {
        let stopped = stopped.clone();
        async move {
            tokio::select! {
                () = stopped.cancelled() => false,
                () = tokio::time::sleep(duration) => true,
            }
        }
    };
    while pause(RECONCILE_INTERVAL).await {
        let Some(states) = store_states(&redis).await else {
            continue;
        };
        let missing: Vec<_> = states
            .into_iter()
            .filter(|state| hub.version(&state.topic) < state.version)
            .collect();
        if missing.is_empty() || !pause(Duration::from_secs(1)).await {
            continue;
        }
        for state in missing {
            let (topic, version) = (state.topic.clone(), state.version);
            if let Applied::FannedOut { .. } = apply_off_runtime(&hub, Arc::new(state)).await {
                repaired.increment();
                tracing::warn!(%topic, version, "state missing from the bus taken from the event store");
            }
        }
    }
}

/// What a node reports to the registry with.
struct NodeReporter {
    redis: Arc<RedisLink>,
    gateway: Arc<Gateway>,
    address: String,
    /// Cancelled once the node has left the registry (its drain may start).
    left: CancellationToken,
}

impl NodeReporter {
    fn registry(&self, connection: redis::aio::ConnectionManager) -> NodeRegistry {
        NodeRegistry::new(connection, self.redis.prefix.clone())
    }

    fn report(&self) -> NodeReport {
        NodeReport {
            node: protocol::admin::NodeStats {
                address: Some(self.address.clone()),
                ..self.gateway.node_stats()
            },
            topics: self.gateway.hub().topic_stats(),
            reported_at_ms: protocol::unix_now_ms(),
        }
    }

    /// One heartbeat. A node that drains (or was asked to, or shuts down) writes its drain
    /// report instead, which also takes it out of the registry; a drain requested through the
    /// registry starts here, once the node is out of it.
    async fn heartbeat(&self, leaving: bool) -> anyhow::Result<()> {
        let registry = self.registry(self.redis.connection().await?);
        let node = self.gateway.node_id();
        let requested =
            !leaving && !self.gateway.is_draining() && registry.drain_requested(node).await?;
        if !(leaving || requested || self.gateway.is_draining()) {
            return Ok(registry.report(&self.report()).await?);
        }
        if !self.left.is_cancelled() {
            registry.remove(node).await?;
            self.left.cancel();
        }
        if requested {
            tracing::info!("drain requested through the node registry");
            self.gateway.start_drain();
        }
        Ok(registry.report_drain(&self.report()).await?)
    }
}

/// Reports this node to the registry every [`HEARTBEAT_INTERVAL`] until `stopped`, then removes
/// it. On `shutdown` it leaves the registry at once (the drain waits for that). A Redis outage
/// is logged once and the reports resume by themselves.
async fn run_node_reports(
    reporter: NodeReporter,
    shutdown: CancellationToken,
    stopped: CancellationToken,
) {
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    let mut leaving = false;
    loop {
        tokio::select! {
            () = stopped.cancelled() => break,
            () = shutdown.cancelled(), if !leaving => leaving = true,
            _ = ticker.tick() => {}
        }
        // A Redis that does not answer must not hold the reports (or, leaving, the drain).
        let bound = if leaving {
            LEAVE_REGISTRY_TIMEOUT
        } else {
            HEARTBEAT_INTERVAL
        };
        let result = tokio::time::timeout(bound, reporter.heartbeat(leaving))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the node registry did not answer in time")));
        if leaving {
            // Left, or Redis does not answer: then the entry expires by itself.
            reporter.left.cancel();
        }
        match result {
            Ok(()) if !reachable => {
                reachable = true;
                tracing::info!("node registry reachable again");
            }
            Err(error) if reachable => {
                reachable = false;
                tracing::warn!(%error, "node registry unavailable; devices are unaffected, reports resume when Redis answers");
            }
            _ => {}
        }
    }
    if let Ok(connection) = reporter.redis.connection().await {
        let registry = reporter.registry(connection);
        let node = reporter.gateway.node_id();
        let removed = match registry.remove(node).await {
            Ok(()) => registry.remove_drain(node).await,
            Err(error) => Err(error),
        };
        if let Err(error) = removed {
            tracing::warn!(%error, "could not remove this node from the registry; it expires by itself");
        }
    }
}

/// Writes this node's broadcast records to Redis every [`BROADCAST_REPORT_INTERVAL`]: the topics
/// whose records changed since they were last written, and at least every [`HEARTBEAT_INTERVAL`]
/// a refresh of the key's expiry (so it does not expire while the node lives), until `stopped`;
/// then deletes them. Through a drain too: a draining node still delivers. The first write, a
/// write after a failure, and a write that finds the key gone (Redis lost it) replace the key
/// with every topic. A Redis outage is logged once, as for the node reports.
async fn run_broadcast_reports(
    redis: Arc<RedisLink>,
    gateway: Arc<Gateway>,
    stopped: CancellationToken,
) {
    let mut ticker = tokio::time::interval(BROADCAST_REPORT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What Redis holds of each topic, as far as this node knows; `None`: nothing is known.
    let mut written: Option<HashMap<protocol::Topic, TopicBroadcasts>> = None;
    let mut refreshed_at: Option<tokio::time::Instant> = None;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = stopped.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reported_at_ms = protocol::unix_now_ms();
        let topics: Vec<TopicBroadcasts> = gateway
            .hub()
            .broadcast_records_by_topic()
            .into_iter()
            .map(|(current, records)| TopicBroadcasts {
                current,
                records,
                reported_at_ms,
            })
            .collect();
        let replace = written.is_none();
        let changed: Vec<&TopicBroadcasts> = topics
            .iter()
            .filter(|topic| {
                written.as_ref().is_none_or(|held| {
                    held.get(&topic.current.topic).is_none_or(|last| {
                        last.current != topic.current || last.records != topic.records
                    })
                })
            })
            .collect();
        let due = refreshed_at.is_none_or(|at| at.elapsed() >= HEARTBEAT_INTERVAL);
        if changed.is_empty() && !replace && !due {
            continue;
        }
        let outcome = tokio::time::timeout(HEARTBEAT_INTERVAL, async {
            let connection = redis.connection().await?;
            let registry = NodeRegistry::new(connection, redis.prefix.clone());
            let existed = registry
                .report_broadcasts(gateway.node_id(), &changed, replace)
                .await?;
            anyhow::Ok(existed)
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("Redis did not answer in time")));
        match outcome {
            Ok(existed) => {
                if !reachable {
                    reachable = true;
                    tracing::info!("broadcast records reach Redis again");
                }
                refreshed_at = Some(tokio::time::Instant::now());
                if !existed && !replace && !topics.is_empty() {
                    // The key was gone: write every topic again on the next tick.
                    written = None;
                    continue;
                }
                let held = written.get_or_insert_with(HashMap::new);
                if replace {
                    held.clear();
                }
                for topic in changed {
                    held.insert(topic.current.topic.clone(), topic.clone());
                }
            }
            Err(error) => {
                written = None;
                if reachable {
                    reachable = false;
                    tracing::warn!(%error, "broadcast records not written; devices are unaffected, the report resumes when Redis answers");
                }
            }
        }
    }
    if let Ok(connection) = redis.connection().await {
        let registry = NodeRegistry::new(connection, redis.prefix.clone());
        if let Err(error) = registry.remove_broadcasts(gateway.node_id()).await {
            tracing::warn!(%error, "could not delete this node's broadcast records; they expire by itself");
        }
    }
}

/// Protection's own tasks: the ruleset's evaluation tick, and with Redis the poller that keeps
/// this process on the fleet's protection setting. Both end with `stopped`.
async fn start_protection(
    protection: &Arc<Protection>,
    redis: Option<&RedisLink>,
    stopped: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(protection.clone().run(stopped.clone()))];
    if let Some(redis) = redis {
        match redis.connection().await {
            Ok(connection) => tasks.push(tokio::spawn(run_fleet_setting_poller(
                FleetSetting::new(connection, &redis.prefix),
                protection.clone(),
                stopped.clone(),
            ))),
            Err(error) => tracing::warn!(
                %error,
                "Redis does not answer: this process does not follow the fleet's protection setting"
            ),
        }
    }
    tasks
}

/// What the control plane keeps its state in and asks about nodes.
type ControlBackends = (
    Arc<dyn EventStore>,
    Arc<dyn PageStore>,
    Arc<dyn StatsSource>,
    Arc<dyn NodeDrains>,
    Arc<dyn BroadcastSource>,
);

/// The control side of a process: the admin API and the prefetch service, plus the background
/// materializer when configured.
async fn start_control(
    config: &ServeConfig,
    bus: Arc<dyn Bus>,
    redis: Option<&RedisLink>,
    local_gateway: Option<Arc<Gateway>>,
    registry: &Arc<Registry>,
    protection: &Arc<Protection>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Router, Vec<JoinHandle<()>>)> {
    let catalog = Arc::new(crate::content::load_catalog(&config.prefetch.dataset).await?);
    // With Redis, events, versions and current states live there, shared by every control
    // instance and kept across restarts; so do the prefetch pages and the node registry.
    // The node registry (or the local gateway) answers both stats and node drains.
    let (events, pages, stats, drains, broadcasts): ControlBackends = match (redis, local_gateway) {
        (Some(redis), _) => {
            let connection = redis.connection().await?;
            let cluster = Arc::new(ClusterStats {
                registry: NodeRegistry::new(connection.clone(), redis.prefix.clone()),
            });
            (
                Arc::new(RedisEventStore::new(
                    connection.clone(),
                    redis.prefix.clone(),
                )),
                Arc::new(RedisPageStore::new(connection, redis.prefix.clone())),
                cluster.clone(),
                cluster.clone(),
                cluster,
            )
        }
        (None, Some(gateway)) => {
            let local = Arc::new(LocalStats { gateway });
            (
                Arc::new(MemoryEventStore::new()),
                Arc::new(MemoryPageStore::new(catalog.clone())),
                local.clone(),
                local.clone(),
                local,
            )
        }
        (None, None) => anyhow::bail!("a control plane without Redis needs a local gateway"),
    };
    crate::content::seed_events(&catalog, events.as_ref()).await?;
    let prefetch = PrefetchService::new(
        catalog,
        pages,
        Arc::new(ControlEvents::new(events.clone())),
        DeviceTokenKey::new(config.secrets.device_token_secret.as_bytes())?,
        config.prefetch.config.clone(),
        registry,
    );
    let fleet = match redis {
        Some(redis) => Some(FleetSetting::new(redis.connection().await?, &redis.prefix)),
        None => None,
    };
    let control = ControlPlane::new(
        events,
        bus,
        stats,
        AdminToken::new(&config.secrets.admin_token)?,
        registry,
    )
    .with_protection(ProtectionControl {
        protection: protection.clone(),
        fleet,
    })
    .with_fetch_window(config.fetch_window.clone())
    .with_streams(config.admin_stream.clone());
    control.serve_drains(drains);
    control.serve_broadcasts(broadcasts);
    // Admin streams last up to their lifetime (30 min by default): they are ended at
    // shutdown, before the HTTP drain waits for open responses, and so is their poller.
    let streams_stop = {
        let control = control.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            control.stop_streams();
        })
    };
    let router = control
        .router()
        .merge(prefetch::http::router(prefetch.clone()))
        .merge(crate::console::router());
    let materializer = (config.prefetch.materialize == MaterializeMode::Background).then(|| {
        let stop = shutdown.clone();
        // Paused while protection's ruleset is active (a kickoff, or load).
        let paused = protection.background_paused();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                reports = prefetch.materialize_all_pausing(Some(paused)) => {
                    for report in reports {
                        match report {
                            Ok(report) => tracing::info!(event = %report.event, pages = report.pages, skipped = report.skipped, elapsed_ms = report.elapsed_ms, "event materialized"),
                            Err(error) => tracing::warn!(%error, "materialization failed; pages are computed on demand"),
                        }
                    }
                    if let Some(bytes) = prefetch.store_bytes() {
                        tracing::info!(store_mib = bytes / (1024 * 1024), "page store size");
                    }
                }
            }
        })
    });
    Ok((
        router,
        materializer.into_iter().chain([streams_stop]).collect(),
    ))
}
