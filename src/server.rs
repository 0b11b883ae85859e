//! A Ringside process in one of its roles: the gateway (WebSocket devices), the control plane
//! (admin API and prefetch GraphQL), or both. `/healthz` and `/metrics` are always served.
//!
//! What the process runs on is configuration, not code: the embedded bus and store, or Kafka
//! (tier 1) and Redis (events, versions, current states, prefetch pages, the node registry).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;
use ringside_auth::{AdminToken, TokenRules};
use ringside_broadcaster::{Bus, MemoryBus};
use ringside_control::nodes::NodeDrains;
use ringside_control::{
    BroadcastSource, ClusterStats, ControlError, ControlPlane, EventStore, MemoryEventStore,
    NodeRegistry, RedisEventStore, StatsSource,
};
use ringside_gateway::fleet::{Node, NodeStops};
use ringside_gateway::{DrainReport, Gateway, GatewayConfig};
use ringside_kafka::{KafkaBus, KafkaConfig};
use ringside_prefetch::store::{MemoryPageStore, PageStore, RedisPageStore};
use ringside_prefetch::{PrefetchConfig, PrefetchService};
use ringside_protocol::admin::{ApiError, ApiErrorCode, DrainAnswer, NodeBroadcastRecords, Stats};
use ringside_telemetry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::content::{ControlEvents, DatasetSource, MaterializeMode, RedisLink, StoreSetup};
use crate::fleet_redis::redis_fleet;
use crate::http::{HttpConfig, serve_http_protected};
use crate::overload::{ObservedBus, run_fleet_setting_poller};
use crate::secrets::Secrets;
use ringside_control::protection_api::{FleetSetting, ProtectionControl};
use ringside_protection::Protection;

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
    /// How device tokens' times are read (clock skew, longest lifetime).
    pub token_rules: TokenRules,
    /// Prefetch settings; `prefetch.store` also decides where events and the node registry
    /// live (Redis when set).
    pub prefetch: PrefetchSetup,
    /// How the control plane sizes the default follow-up fetch window of stage states.
    pub fetch_window: ringside_control::FetchWindowConfig,
    /// Bounds of `GET /v1/admin/stream`.
    pub admin_stream: ringside_control::StreamConfig,
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
        if let BusSetup::Kafka(kafka) = &self.bus {
            kafka.validate()?;
        }
        if self.role.serves_devices() {
            self.gateway.validate()?;
        }
        self.http.validate()?;
        if self.role.serves_control() {
            self.prefetch.config.validate()?;
            self.fetch_window.validate()?;
            self.admin_stream.validate()?;
        }
        self.secrets.device_token_key()?;
        self.token_rules.validate().map_err(anyhow::Error::msg)?;
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

/// Stats, broadcast records and drains of a single-process deployment: this node's gateway.
struct LocalStats {
    gateway: Arc<Gateway>,
}

impl StatsSource for LocalStats {
    fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>> {
        let stats = self.gateway.stats();
        Box::pin(async move { Ok(stats) })
    }
}

/// The broadcast report of a single-process deployment: this node's records, from memory.
impl BroadcastSource for LocalStats {
    fn records(&self) -> BoxFuture<'_, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        let records = vec![self.gateway.broadcast_records()];
        Box::pin(async move { Ok(records) })
    }

    /// Only `topic`'s channel is read, so one event's report costs its own records.
    fn topic_records<'a>(
        &'a self,
        topic: &'a ringside_protocol::Topic,
    ) -> BoxFuture<'a, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        let records = vec![self.gateway.topic_broadcast_records(topic)];
        Box::pin(async move { Ok(records) })
    }
}

/// Drains of a single-process deployment: this node's gateway, started at once.
impl NodeDrains for LocalStats {
    fn drain(
        &self,
        node: &str,
    ) -> BoxFuture<'_, Result<Option<(DrainAnswer, bool)>, ControlError>> {
        let answer = self.gateway.drain_if_named(node);
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
        gateway: node.as_ref().map(|n| n.gateway().clone()),
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
        config.http.origins.web.clone()
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
                config
                    .secrets
                    .device_token_key()?
                    .with_rules(config.token_rules),
                bus.clone(),
                redis
                    .clone()
                    .map(|redis| redis_fleet(redis, address.to_string())),
                &registry,
                protection.clone(),
                NodeStops {
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
            node.as_ref().map(|n| n.gateway().clone()),
            &registry,
            &protection,
            shutdown,
        )
        .await?;
        router = router.merge(control_router);
        background.extend(materializer);
    }
    if let Some(node) = &node {
        router = router.merge(node.gateway().router());
    }
    Ok(Started {
        registry,
        protection,
        node,
        router,
        background,
    })
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
        config
            .secrets
            .device_token_key()?
            .with_rules(config.token_rules),
        ringside_prefetch::PrefetchConfig {
            // One threshold for the compression layer and for kept answers.
            responses: ringside_prefetch::responses::ResponseCacheConfig {
                compress_from_bytes: usize::from(config.http.compression_min_bytes),
                ..config.prefetch.config.responses.clone()
            },
            ..config.prefetch.config.clone()
        },
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
        .merge(ringside_prefetch::http::router(prefetch.clone()))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringside_prefetch::generate::DatasetSize;

    use super::*;

    fn valid_config(role: Role) -> ServeConfig {
        ServeConfig {
            role,
            bus: BusSetup::Memory,
            gateway: GatewayConfig::default(),
            http: HttpConfig::default(),
            secrets: Secrets {
                device_token_secret: "a-device-token-secret-of-32-bytes!".into(),
                admin_token: "an-admin-token-long-enough-for-its-check".into(),
                ..Secrets::default()
            },
            token_rules: TokenRules::default(),
            prefetch: PrefetchSetup {
                config: PrefetchConfig::default(),
                dataset: DatasetSource::Generated(DatasetSize {
                    titles: 10,
                    profiles: 10,
                    seed: 7,
                }),
                store: StoreSetup::Memory,
                materialize: MaterializeMode::OnDemand,
            },
            fetch_window: ringside_control::FetchWindowConfig::default(),
            admin_stream: ringside_control::StreamConfig::default(),
        }
    }

    #[test]
    fn defaults_validate() {
        valid_config(Role::All)
            .validate()
            .expect("defaults are valid");
    }

    #[test]
    fn a_kafka_publish_timeout_out_of_range_is_refused_before_binding() {
        let mut kafka = KafkaConfig::new("127.0.0.1:9092");
        kafka.publish_timeout = Duration::from_millis(999);
        for role in [Role::All, Role::Gateway, Role::Control] {
            let mut config = valid_config(role);
            config.bus = BusSetup::Kafka(kafka.clone());
            let error = config.validate().expect_err("out of range");
            assert_eq!(
                error.to_string(),
                "--kafka-publish-timeout-ms must be between 1000 and 20000, not 999"
            );
        }
    }

    #[test]
    fn prefetch_jitter_out_of_range_is_refused_where_prefetch_runs() {
        let mut config = valid_config(Role::All);
        config.prefetch.config.cache.jitter = 1.5;
        assert!(config.validate().is_err(), "the cache jitter is checked");
        let mut config = valid_config(Role::All);
        config.prefetch.config.device_ttl_jitter = -0.5;
        assert!(config.validate().is_err(), "the device jitter is checked");
    }
}
