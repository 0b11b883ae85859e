//! What prefetch serves from: the catalog (generated or loaded), the page store (memory or
//! Redis), and the control plane's events as prefetch's [`EventSource`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use futures_util::future::BoxFuture;
use ringside_control::{ControlError, EventStore};
use ringside_prefetch::catalog::Catalog;
use ringside_prefetch::generate::{DatasetSize, generate};
use ringside_prefetch::store::{MemoryPageStore, PageStore, RedisPageStore};
use ringside_prefetch::{EventSource, LiveEvent};
use ringside_protocol::admin::CreateEvent;
use ringside_protocol::{EventId, Stage};
use ringside_sync_util::LockExt;

/// Where the catalog comes from.
#[derive(Debug, Clone)]
pub enum DatasetSource {
    /// The deterministic generator.
    Generated(DatasetSize),
    /// `titles.jsonl`, `profiles.jsonl` and `events.jsonl` in a folder.
    Directory(PathBuf),
}

/// Where materialized pages live.
#[derive(Debug, Clone)]
pub enum StoreSetup {
    Memory,
    Redis { url: String, prefix: String },
}

/// When pages are computed in a single-process deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaterializeMode {
    /// Every visible event for every profile, in the background after startup (pages not
    /// computed yet are computed on demand meanwhile).
    Background,
    /// Only on demand, page by page.
    OnDemand,
}

/// Builds the catalog (on a blocking thread: the default dataset takes a moment).
pub async fn load_catalog(source: &DatasetSource) -> anyhow::Result<Catalog> {
    let source = source.clone();
    let started = Instant::now();
    let catalog = tokio::task::spawn_blocking(move || match source {
        DatasetSource::Generated(size) => {
            let dataset = generate(size);
            Catalog::build(dataset.titles, dataset.profiles, dataset.events)
                .map_err(anyhow::Error::from)
        }
        DatasetSource::Directory(dir) => ringside_prefetch::jsonl::load(&dir)
            .with_context(|| format!("loading the catalog from {}", dir.display())),
    })
    .await??;
    tracing::info!(
        titles = catalog.titles.len(),
        profiles = catalog.profiles.len(),
        events = catalog.events.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        approximate_mib = catalog.approximate_bytes() / (1024 * 1024),
        "catalog ready"
    );
    Ok(catalog)
}

/// Redis calls fail after this long, so an unreachable Redis turns into a clear error (or stale
/// data) instead of a hung request.
pub const REDIS_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// One connection to Redis, shared by every store of the process; it reconnects by itself.
pub async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    let shown = without_password(url);
    let client = match ringside_client::tls::ca_file().filter(|_| url.starts_with("rediss://")) {
        // A private CA: the Redis server's certificate must chain to it.
        Some(ca) => {
            let root = std::fs::read(&ca)
                .with_context(|| format!("RINGSIDE_CA_FILE {}: cannot read it", ca.display()))?;
            // Redis's rustls takes the process's default provider: ours, installed once.
            let _already = ringside_client::tls::crypto_provider().install_default();
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            };
            redis::Client::build_with_tls(url, certificates)
        }
        None => redis::Client::open(url),
    }
    .with_context(|| format!("invalid Redis URL {shown}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
        .set_number_of_retries(1);
    client
        .get_connection_manager_with_config(config)
        .await
        .with_context(|| format!("cannot reach Redis at {shown}"))
}

/// `url` as errors may show it: a `user:password@` (or `:password@`) before the host becomes
/// `***@`, so that a Redis password never reaches a log line.
pub fn without_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let prefix = if scheme.is_empty() {
                String::new()
            } else {
                format!("{scheme}://")
            };
            format!("{prefix}***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod password_tests {
    use super::without_password;

    #[test]
    fn a_redis_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            without_password("redis://:s3cret@10.0.0.5:6379/2"),
            "redis://***@10.0.0.5:6379/2"
        );
        assert_eq!(
            without_password("rediss://ops:p@ss@cache.internal/0"),
            "rediss://***@cache.internal/0"
        );
    }
}

/// Redis as a gateway node uses it: not needed to start or to serve devices, connected when it
/// first answers, and reconnecting by itself afterwards.
#[derive(Debug)]
pub struct RedisLink {
    pub url: String,
    pub prefix: String,
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl RedisLink {
    pub fn new(url: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            connection: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection, made now if it was not yet (an error when Redis does not answer).
    pub async fn connection(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        self.connection
            .get_or_try_init(|| connect_redis(&self.url))
            .await
            .cloned()
    }
}

pub async fn open_store(
    setup: &StoreSetup,
    catalog: &Arc<Catalog>,
) -> anyhow::Result<Arc<dyn PageStore>> {
    Ok(match setup {
        StoreSetup::Memory => Arc::new(MemoryPageStore::new(catalog.clone())),
        StoreSetup::Redis { url, prefix } => Arc::new(RedisPageStore::new(
            connect_redis(url).await?,
            prefix.clone(),
        )),
    })
}

/// Creates the catalog's events in the control plane's store (existing ones are kept), so
/// that a single-process deployment starts with events to prefetch and publish.
pub async fn seed_events(catalog: &Catalog, store: &dyn EventStore) -> anyhow::Result<()> {
    for event in &catalog.events {
        let content = &event.content;
        let create = CreateEvent {
            id: EventId::parse(&content.id)?,
            title: content.title.clone(),
            starts_at: content.starts_at.clone(),
            stages: content
                .stages
                .iter()
                .map(|s| Stage::parse(s))
                .collect::<Result<_, _>>()?,
        };
        match store.create(create).await {
            Ok(_) | Err(ControlError::Conflict(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The control plane's events, as prefetch sees them. The last list read is kept: while the
/// store is unreachable (Redis down), prefetch keeps answering from it, stale rather than empty.
#[derive(Clone)]
pub struct ControlEvents {
    pub store: Arc<dyn EventStore>,
    pub last_known: Arc<std::sync::Mutex<Vec<LiveEvent>>>,
}

impl ControlEvents {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            last_known: Arc::default(),
        }
    }
}

impl std::fmt::Debug for ControlEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlEvents").finish_non_exhaustive()
    }
}

impl EventSource for ControlEvents {
    fn events(&self) -> BoxFuture<'_, Vec<LiveEvent>> {
        Box::pin(async move {
            let last_known = || self.last_known.locked().clone();
            match self.store.with_states().await {
                Ok(events) => {
                    let events: Vec<LiveEvent> = events
                        .into_iter()
                        .map(|(summary, state)| LiveEvent {
                            id: summary.id,
                            title: summary.title,
                            starts_at: summary.starts_at,
                            stages: summary.stages,
                            state,
                        })
                        .collect();
                    *self.last_known.locked() = events.clone();
                    events
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot list events; serving the last known list");
                    last_known()
                }
            }
        })
    }
}

/// The catalog's own events, with no state: what `ringside materialize` works from.
#[derive(Debug)]
pub struct CatalogEvents {
    pub catalog: Arc<Catalog>,
}

impl EventSource for CatalogEvents {
    fn events(&self) -> BoxFuture<'_, Vec<LiveEvent>> {
        let events = self
            .catalog
            .events
            .iter()
            .filter_map(|event| {
                let content = &event.content;
                Some(LiveEvent {
                    id: EventId::parse(&content.id).ok()?,
                    title: content.title.clone(),
                    starts_at: content.starts_at.clone(),
                    stages: content
                        .stages
                        .iter()
                        .map(|s| Stage::parse(s).ok())
                        .collect::<Option<_>>()?,
                    state: None,
                })
            })
            .collect();
        Box::pin(async move { events })
    }
}
