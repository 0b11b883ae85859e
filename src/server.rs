//! One process serving everything: the WebSocket gateway, the admin API, `/healthz` and
//! `/metrics`, over the embedded in-memory bus and event store.

use std::sync::Arc;

use auth::{AdminToken, DeviceTokenKey};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broadcaster::{Bus, Hub, HubMetrics, MemoryBus, run_bus_consumer};
use control::{ControlPlane, EventStore, MemoryEventStore, StatsSource};
use gateway::{DrainReport, Gateway, GatewayConfig, GatewayMetrics};
use prefetch::{PrefetchConfig, PrefetchService};
use protocol::admin::{ApiError, ApiErrorCode, Stats};
use telemetry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::content::{ControlEvents, DatasetSource, MaterializeMode, StoreSetup};
use crate::http::{HttpConfig, serve_http};
use crate::secrets::Secrets;

/// Everything `serve` needs, validated before it binds anything.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub gateway: GatewayConfig,
    pub http: HttpConfig,
    pub secrets: Secrets,
    pub prefetch: PrefetchSetup,
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
        self.gateway.validate()?;
        DeviceTokenKey::new(self.secrets.device_token_secret.as_bytes())?;
        AdminToken::new(&self.secrets.admin_token)?;
        Ok(())
    }
}

/// Stats of a single-process deployment: this node's gateway.
struct LocalStats {
    gateway: Arc<Gateway>,
}

impl StatsSource for LocalStats {
    fn stats(&self) -> broadcaster::BoxFuture<'_, Stats> {
        let stats = Stats {
            nodes: vec![self.gateway.node_stats()],
            topics: self.gateway.hub().topic_stats(),
        };
        Box::pin(async move { stats })
    }
}

#[derive(Debug, Clone)]
struct Operations {
    registry: Arc<Registry>,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
}

async fn healthz(State(ops): State<Operations>) -> Response {
    let ready = ops.gateway.hub().is_ready() && !ops.shutdown.is_cancelled();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "node": ops.gateway.node_id(),
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

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting, sends every
/// session a goaway and a close, and waits up to the grace period.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<DrainReport> {
    config.validate()?;
    let device_key = DeviceTokenKey::new(config.secrets.device_token_secret.as_bytes())?;
    let admin_token = AdminToken::new(&config.secrets.admin_token)?;

    let registry = Registry::new();
    let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
    let hub = Arc::new(Hub::new(HubMetrics::new(&registry)));
    let gateway = Gateway::new(
        config.gateway,
        hub.clone(),
        device_key,
        GatewayMetrics::new(&registry),
    );
    // With Redis configured, events, versions and current states live there: shared by every
    // control instance and kept across restarts.
    let events: Arc<dyn EventStore> = match &config.prefetch.store {
        StoreSetup::Memory => Arc::new(MemoryEventStore::new()),
        StoreSetup::Redis { url, prefix } => Arc::new(control::RedisEventStore::new(
            crate::content::connect_redis(url).await?,
            prefix.clone(),
        )),
    };
    // The bus starts from the current state of every event the store knows, so a restarted
    // node serves exact catch-up at once.
    for (_, state) in events.with_states().await? {
        if let Some(state) = state {
            bus.publish(state).await?;
        }
    }
    let catalog = Arc::new(crate::content::load_catalog(&config.prefetch.dataset).await?);
    crate::content::seed_events(&catalog, events.as_ref()).await?;
    let pages = crate::content::open_store(&config.prefetch.store, &catalog).await?;
    let prefetch = PrefetchService::new(
        catalog,
        pages,
        Arc::new(ControlEvents::new(events.clone())),
        DeviceTokenKey::new(config.secrets.device_token_secret.as_bytes())?,
        config.prefetch.config.clone(),
        &registry,
    );
    let control = ControlPlane::new(
        events,
        bus.clone(),
        Arc::new(LocalStats {
            gateway: gateway.clone(),
        }),
        admin_token,
        &registry,
    );

    // The node serves subscriptions only once it holds the latest state of every topic.
    let consumer_shutdown = shutdown.child_token();
    let consumer_hub = hub.clone();
    let feed = bus.subscribe();
    let consumer = tokio::spawn(async move {
        let result = run_bus_consumer(feed, consumer_hub.clone(), consumer_shutdown).await;
        if let Err(error) = result {
            // The node can no longer follow state changes: report unready so that the load
            // balancer moves devices elsewhere, and say why.
            tracing::error!(%error, "bus consumer stopped; node is unready");
            consumer_hub.mark_unready();
        }
    });
    hub.wait_ready().await;

    let operations = Operations {
        registry,
        gateway: gateway.clone(),
        shutdown: shutdown.clone(),
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(operations)
        .merge(gateway.router())
        .merge(control.router())
        .merge(prefetch::http::router(prefetch.clone()))
        .fallback(not_found);

    let materializer = (config.prefetch.materialize == MaterializeMode::Background).then(|| {
        let prefetch = prefetch.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                reports = prefetch.materialize_all() => {
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

    let grace = gateway.shutdown_grace();
    let http = serve_http(listener, router, config.http, shutdown.clone(), grace);
    let drain = async {
        shutdown.cancelled().await;
        gateway.drain().await
    };
    let (_http_drained, report) = tokio::join!(http, drain);
    consumer.abort();
    if let Some(materializer) = materializer {
        materializer.abort();
    }
    Ok(report)
}
