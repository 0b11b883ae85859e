//! [`PrefetchService`]: one prefetch node's state, shared by every request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ringside_auth::DeviceTokenKey;
use ringside_sync_util::RwLockExt;
use ringside_telemetry::{Counter, Histogram, LogBudget, Registry};
use tokio::sync::watch;

use crate::cache::{CacheConfig, CacheMetrics, PageCache, PageLoader};
use crate::catalog::Catalog;
use crate::compiled::{CompiledConfig, Plans};
use crate::limits::QueryLimits;
use crate::materialize::{EventPool, EventSpec, Page, decode, encode, fingerprint_of, materialize};
use crate::responses::{ResponseCache, ResponseCacheConfig};
use crate::schema::{PrefetchSchema, build_schema};
use crate::store::{PageKey, PageStore};
use crate::{EventSource, LiveEvent, PrefetchError};

/// Settings of a prefetch node. Every field has a documented default (docs/OPERATIONS.md).
#[derive(Debug, Clone)]
pub struct PrefetchConfig {
    pub cache: CacheConfig,
    /// Answers kept as bytes and sent again while nothing they were built from changed.
    pub responses: ResponseCacheConfig,
    /// Known queries planned once and answered without the general executor.
    pub compiled: CompiledConfig,
    /// Mean lifetime devices should give a prefetch in their own cache.
    pub device_ttl: Duration,
    /// Relative spread of the device TTL (0.2: ±20 %), drawn per response.
    pub device_ttl_jitter: f64,
    /// Prefix of artwork URLs; artwork paths are appended.
    pub artwork_base_url: String,
    pub limits: QueryLimits,
    /// Largest GraphQL request body, and largest query text of a `GET`. Default 64 KiB: the
    /// full prefetch query is about 1 KB. Over it: 413 `PAYLOAD_TOO_LARGE`.
    pub body_limit_bytes: usize,
    /// Serve the GraphiQL page on `GET /graphql` (development).
    pub graphiql: bool,
    /// Answer introspection (`__schema`, `__type`); off, such a query fails validation.
    /// `ringside` turns it (and GraphiQL, which needs it) off in production unless
    /// `--graphql-introspection` is given.
    pub introspection: bool,
    /// Bytes of persisted query text (and hashes) remembered per node; the least useful are
    /// evicted past it. Default 8 MiB: thousands of real queries of 1 to 2 KB, and a bound on
    /// what any number of clients registering large queries can make a node hold. Over it a
    /// client sees `PERSISTED_QUERY_NOT_FOUND` and sends the text again.
    pub persisted_query_bytes: u64,
    /// Longest a query may execute (resolvers and page loads) before it is answered with
    /// `TIMEOUT`. Default 10 s: the worst accepted query runs in well under a second; a page
    /// store that hangs is already cut shorter by the cache.
    pub execution_timeout: Duration,
    /// Largest response body. Default 4 MiB: the full prefetch is about 120 KB; the largest
    /// response the query limits allow is about 9 MB, and a slow reader makes the node hold
    /// it per connection. Over it: `RESPONSE_TOO_LARGE`, and the device asks for less.
    pub max_response_bytes: usize,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            cache: CacheConfig::default(),
            responses: ResponseCacheConfig::default(),
            compiled: CompiledConfig::default(),
            device_ttl: Duration::from_secs(1800),
            device_ttl_jitter: 0.2,
            artwork_base_url: "https://artwork.ringside.invalid/".into(),
            limits: QueryLimits::default(),
            body_limit_bytes: 64 * 1024,
            graphiql: true,
            introspection: true,
            persisted_query_bytes: 8 * 1024 * 1024,
            execution_timeout: Duration::from_secs(10),
            max_response_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A prefetch setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid prefetch setting {field}: {problem}")]
pub struct PrefetchConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl From<crate::limits::LimitsError> for PrefetchConfigError {
    fn from(error: crate::limits::LimitsError) -> Self {
        Self {
            field: error.field,
            problem: error.problem,
        }
    }
}

impl PrefetchConfig {
    /// Checks every bound; runs before anything binds.
    pub fn validate(&self) -> Result<(), PrefetchConfigError> {
        let fail = |field, problem| Err(PrefetchConfigError { field, problem });
        self.limits.validate()?;
        // Outside 0..=1 a TTL could come out negative, or further apart than configured; NaN
        // is refused too.
        if !(0.0..=1.0).contains(&self.cache.jitter) {
            return fail("cache.jitter", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.responses.jitter) {
            return fail("responses.jitter", "must be between 0 and 1");
        }
        if self.responses.max_bytes > 64 * 1024 * 1024 * 1024 {
            return fail("responses.max_bytes", "must be at most 64 GiB");
        }
        if self.responses.max_bytes > 0
            && (self.responses.ttl < Duration::from_secs(1)
                || self.responses.ttl > Duration::from_secs(24 * 3600))
        {
            return fail("responses.ttl", "must be between 1 s and 24 h");
        }
        if self.compiled.plans > 100_000 {
            return fail("compiled.plans", "must be at most 100000");
        }
        if self.compiled.card_bytes > 16 * 1024 * 1024 * 1024 {
            return fail("compiled.card_bytes", "must be at most 16 GiB");
        }
        if !(0.0..=1.0).contains(&self.device_ttl_jitter) {
            return fail("device_ttl_jitter", "must be between 0 and 1");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.body_limit_bytes) {
            return fail("body_limit_bytes", "must be between 1 KiB and 16 MiB");
        }
        if self.persisted_query_bytes > 1024 * 1024 * 1024 {
            return fail("persisted_query_bytes", "must be at most 1 GiB");
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&self.max_response_bytes) {
            return fail("max_response_bytes", "must be between 64 KiB and 256 MiB");
        }
        if self.execution_timeout.is_zero() || self.execution_timeout > Duration::from_secs(300) {
            return fail("execution_timeout", "must be between 1 ms and 5 minutes");
        }
        Ok(())
    }

    /// Device `device`'s cache TTL: a point of the jitter window drawn from a hash of the
    /// device id. Devices that fetch together get TTLs spread over the window (so their
    /// expiries do not line up), while one device gets the same TTL every time, so that its
    /// answer for unchanged content is the same bytes (and the same `ETag`, answered `304`).
    pub fn device_ttl_for(&self, device: &str) -> Duration {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(device.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        // 53 bits: a uniform f64 in [0, 1).
        let unit = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
        let factor = 1.0 + self.device_ttl_jitter * (2.0 * unit - 1.0);
        self.device_ttl.mul_f64(factor.max(0.0))
    }
}

/// The key under which pages of profiles the catalog does not know are kept: everyone without
/// a taste profile gets the same cold-start page.
pub const COLD_START_PROFILE: &str = "\u{0}cold-start";

#[derive(Debug)]
pub(crate) struct PrefetchMetrics {
    pub store_reads: Arc<Counter>,
    pub pages_materialized: Arc<Counter>,
    pub requests: Arc<Counter>,
    pub request_errors: Arc<Counter>,
    pub request_latency: Arc<Histogram>,
    /// Requests answered by the compiled fast path, and by the executor.
    pub compiled: Arc<Counter>,
    pub executed: Arc<Counter>,
    /// Budget of the per-request warning about resolver errors without a code: under
    /// overload it must not become a log flood.
    pub error_log: LogBudget,
}

impl PrefetchMetrics {
    pub fn count_path(&self, compiled: bool) {
        if compiled {
            self.compiled.increment();
        } else {
            self.executed.increment();
        }
    }
}

/// Loads pages: from the store, or materialized on demand when the store has none (yet) for
/// the event's current pool.
struct PageSource {
    catalog: Arc<Catalog>,
    store: Arc<dyn PageStore>,
    pools: RwLock<HashMap<Arc<str>, Arc<EventPool>>>,
    metrics: Arc<PrefetchMetrics>,
}

impl PageSource {
    fn pool(&self, event: &str) -> Option<Arc<EventPool>> {
        self.pools.read_locked().get(event).cloned()
    }
}

impl PageLoader for PageSource {
    fn load(&self, key: &PageKey) -> BoxFuture<'_, Result<Bytes, PrefetchError>> {
        let key = key.clone();
        Box::pin(async move {
            let pool = self.pool(&key.event).ok_or(PrefetchError::Internal)?;
            self.metrics.store_reads.increment();
            if let Some(blob) = self.store.get(&key).await?
                && fingerprint_of(&blob) == Some(pool.fingerprint)
            {
                return Ok(blob);
            }
            let profile = self
                .catalog
                .profile(&key.profile)
                .map(|i| &self.catalog.profiles[i as usize]);
            let blob = Bytes::from(encode(&materialize(&self.catalog, &pool, profile), &pool));
            self.metrics.pages_materialized.increment();
            if let Err(error) = self.store.put(vec![(key.clone(), blob.clone())]).await {
                tracing::debug!(%error, "could not store an on-demand page");
            }
            Ok(blob)
        })
    }
}

/// What a materialization run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaterializeReport {
    pub event: String,
    /// Pages computed and stored; 0 when the stored pages were already current.
    pub pages: usize,
    pub skipped: bool,
    pub elapsed_ms: u64,
}

/// Waits until `paused` (if any) is false. A closed channel means nobody pauses any more.
async fn wait_while_paused(paused: &mut Option<watch::Receiver<bool>>) {
    let Some(receiver) = paused else {
        return;
    };
    if *receiver.borrow_and_update() {
        tracing::info!("background materialization paused by protection");
        if receiver.wait_for(|paused| !*paused).await.is_err() {
            *paused = None;
            return;
        }
        tracing::info!("background materialization resumed");
    }
}

/// What the persisted-query cache spends on an entry besides its text (the cache's own
/// bookkeeping), so that the byte budget also bounds floods of tiny queries.
const PERSISTED_ENTRY_OVERHEAD_BYTES: usize = 256;

/// Profiles materialized per batch (one blocking task and one store write each).
const MATERIALIZE_BATCH: usize = 2_000;

/// One prefetch node: the catalog, the events it serves, the page store and the node's cache
/// in front of it, and the GraphQL schema. [`crate::http::router`] serves it as `/graphql`;
/// [`PrefetchService::materialize_all`] fills the store in the background (pages a device asks
/// for first are computed on demand).
///
/// A small catalog, one event, and a device asking for every stage of it:
///
/// ```
/// use std::sync::Arc;
/// use ringside_prefetch::catalog::Catalog;
/// use ringside_prefetch::generate::{DatasetSize, generate};
/// use ringside_prefetch::store::MemoryPageStore;
/// use ringside_prefetch::{EventSource, LiveEvent, PrefetchConfig, PrefetchService};
/// use ringside_protocol::{EventId, Stage};
/// use tower::Service;
///
/// /// Where the service learns the events and their current states (in `ringside serve`, the
/// /// control plane's event store).
/// struct Events(Vec<LiveEvent>);
/// impl EventSource for Events {
///     fn events(&self) -> futures_util::future::BoxFuture<'_, Vec<LiveEvent>> {
///         let events = self.0.clone();
///         Box::pin(async move { events })
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() {
/// let dataset = generate(DatasetSize { titles: 1_000, profiles: 50, seed: 1 });
/// let catalog = Arc::new(Catalog::build(dataset.titles, dataset.profiles, dataset.events).unwrap());
/// let content = &catalog.events[0].content;
/// let event = LiveEvent {
///     id: EventId::parse(&content.id).unwrap(),
///     title: content.title.clone(),
///     starts_at: content.starts_at.clone(),
///     stages: content.stages.iter().map(|s| Stage::parse(s).unwrap()).collect(),
///     state: None, // not published yet
/// };
/// let key = ringside_auth::DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!").unwrap();
/// let service = PrefetchService::new(
///     catalog.clone(),
///     Arc::new(MemoryPageStore::new(catalog.clone())),
///     Arc::new(Events(vec![event.clone()])),
///     key.clone(),
///     PrefetchConfig::default(),
///     &ringside_telemetry::Registry::new(),
/// );
///
/// // One page per profile and event, every stage in it.
/// let reports = service.materialize_all().await;
/// assert_eq!(reports[0].as_ref().unwrap().pages, 50);
///
/// // A device of the first profile prefetches every stage of every upcoming event at once.
/// let token = key.sign(&ringside_auth::DeviceClaims {
///     sub: "tv-1".into(),
///     profile: catalog.profiles[0].id.to_string(),
///     class: ringside_auth::DeviceClass::Tv,
///     exp: ringside_protocol::unix_now_ms() / 1000 + 3600,
///     nbf: None,
///     priority: None,
/// });
/// let query = r#"{"query":"{ prefetch { events { id byStage { stage home { rows { title } } } } } }"}"#;
/// let request = axum::http::Request::post("/graphql")
///     .header("authorization", format!("Bearer {token}"))
///     .header("content-type", "application/json")
///     .body(axum::body::Body::from(query))
///     .unwrap();
/// let mut graphql = ringside_prefetch::http::router(service);
/// let response = graphql.call(request).await.unwrap();
/// assert_eq!(response.status(), 200);
/// let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
/// let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
/// let prefetched = &body["data"]["prefetch"]["events"][0];
/// assert_eq!(prefetched["id"], event.id.as_str());
/// assert_eq!(prefetched["byStage"].as_array().unwrap().len(), event.stages.len());
/// # }
/// ```
pub struct PrefetchService {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) events: Arc<dyn EventSource>,
    source: Arc<PageSource>,
    pub(crate) pages: PageCache,
    pub(crate) config: PrefetchConfig,
    pub(crate) device_key: DeviceTokenKey,
    pub(crate) metrics: Arc<PrefetchMetrics>,
    pub(crate) schema: PrefetchSchema,
    pub(crate) persisted: moka::sync::Cache<String, Arc<str>>,
    pub(crate) responses: ResponseCache,
    pub(crate) plans: Plans,
}

impl std::fmt::Debug for PrefetchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchService")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl PrefetchService {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn PageStore>,
        events: Arc<dyn EventSource>,
        device_key: DeviceTokenKey,
        config: PrefetchConfig,
        registry: &Registry,
    ) -> Arc<Self> {
        let [compiled, executed] = registry.counter_family(
            "ringside_prefetch_answers_total",
            "Prefetch requests past the response cache, by the path that answered them: \
             compiled (a planned query written from the pages) or executor (async-graphql).",
            "path",
            ["compiled", "executor"],
        );
        let metrics = Arc::new(PrefetchMetrics {
            store_reads: registry.counter(
                "ringside_prefetch_store_reads_total",
                "Reads of the page store (origin reads).",
            ),
            pages_materialized: registry.counter(
                "ringside_prefetch_pages_materialized_total",
                "Pages computed (on demand or by a materialization run).",
            ),
            requests: registry.counter(
                "ringside_prefetch_requests_total",
                "GraphQL requests served.",
            ),
            request_errors: registry.counter(
                "ringside_prefetch_request_errors_total",
                "GraphQL requests answered with errors.",
            ),
            request_latency: registry.latency_histogram(
                "ringside_prefetch_request_seconds",
                "GraphQL request latency.",
            ),
            compiled,
            executed,
            error_log: LogBudget::new(registry, "graphql_internal_error", 5),
        });
        let source = Arc::new(PageSource {
            catalog: catalog.clone(),
            store,
            pools: RwLock::default(),
            metrics: metrics.clone(),
        });
        let pages = PageCache::new(
            config.cache.clone(),
            source.clone(),
            CacheMetrics::new(registry),
        );
        Arc::new(Self {
            schema: build_schema(config.limits, config.introspection),
            responses: ResponseCache::new(config.responses.clone(), registry),
            plans: Plans::new(&config.compiled, registry),
            persisted: moka::sync::Cache::builder()
                .max_capacity(config.persisted_query_bytes)
                .weigher(|hash: &String, query: &Arc<str>| {
                    let bytes = PERSISTED_ENTRY_OVERHEAD_BYTES + hash.len() + query.len();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .build(),
            catalog,
            events,
            source,
            pages,
            config,
            device_key,
            metrics,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The text of the persisted query `hash` (lowercase hex sha256): this node's own, else
    /// one another node shared through the page store (checked against its hash, then kept
    /// here). `None` when neither knows it, or the store does not answer: the device then sends
    /// the text.
    pub(crate) async fn persisted_query(&self, hash: &str) -> Option<Arc<str>> {
        if let Some(text) = self.persisted.get(hash) {
            return Some(text);
        }
        let is_sha256 = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_sha256 {
            return None;
        }
        match self.source.store.persisted_query(hash).await {
            Ok(Some(text)) if crate::http::sha256_hex(&text) == hash => {
                let text: Arc<str> = Arc::from(text);
                self.persisted.insert(hash.to_owned(), text.clone());
                Some(text)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(%error, "shared persisted queries unavailable");
                None
            }
        }
    }

    /// Remembers a validated persisted query here and shares it with the other nodes of the
    /// page store, within `persisted_query_bytes`.
    pub(crate) async fn remember_persisted_query(&self, hash: String, text: Arc<str>) {
        let shared = self
            .source
            .store
            .share_persisted_query(&hash, &text, self.config.persisted_query_bytes)
            .await;
        if let Err(error) = shared {
            tracing::debug!(%error, "persisted query not shared; this node keeps it");
        }
        self.persisted.insert(hash, text);
    }

    pub fn schema_sdl(&self) -> String {
        self.schema.sdl()
    }

    /// The candidate pool of `event` as it is now; rebuilt (and the event's cached pages
    /// dropped) when its stages changed.
    pub(crate) fn pool_for(&self, event: &LiveEvent) -> Arc<EventPool> {
        if let Some(pool) = self.source.pool(event.id.as_str())
            && pool
                .spec
                .stages
                .iter()
                .map(String::as_str)
                .eq(event.stages.iter().map(|s| s.as_str()))
        {
            return pool;
        }
        let stages: Vec<String> = event.stages.iter().map(|s| s.as_str().to_owned()).collect();
        let spec = EventSpec::from_catalog(&self.catalog, event.id.as_str(), stages);
        let pool = Arc::new(EventPool::new(&self.catalog, spec));
        let previous = self
            .source
            .pools
            .write_locked()
            .insert(Arc::from(event.id.as_str()), pool.clone());
        if previous.is_some() {
            let _stale_entries_expire_anyway = self.pages.invalidate_event(event.id.as_str());
        }
        pool
    }

    /// The page of `profile` for `event`, through the cache, with its key and the blob it was
    /// decoded from (what the response cache checks a kept answer against).
    pub(crate) async fn page(
        &self,
        event: &LiveEvent,
        profile: &Arc<str>,
    ) -> Result<(Arc<Page>, PageKey, Bytes), PrefetchError> {
        let pool = self.pool_for(event);
        let key = PageKey {
            event: Arc::from(event.id.as_str()),
            profile: profile.clone(),
        };
        let blob = self.pages.get(&key).await?;
        let page = decode(&blob, &pool).map_err(|_| PrefetchError::Internal)?;
        Ok((Arc::new(page), key, blob))
    }

    /// The key a device's pages are kept under: its profile, or the shared cold-start key.
    pub(crate) fn page_profile(&self, profile: &str) -> Arc<str> {
        if self.catalog.profile(profile).is_some() {
            Arc::from(profile)
        } else {
            Arc::from(COLD_START_PROFILE)
        }
    }

    /// Materializes every profile's page of `event` into the store, unless the store already
    /// holds pages for the event's current pool (then nothing is recomputed: incremental).
    pub async fn materialize_event(
        &self,
        event: &LiveEvent,
    ) -> Result<MaterializeReport, PrefetchError> {
        self.materialize_event_pausing(event, &mut None).await
    }

    /// [`Self::materialize_event`], waiting between page batches while `paused` says so.
    async fn materialize_event_pausing(
        &self,
        event: &LiveEvent,
        paused: &mut Option<watch::Receiver<bool>>,
    ) -> Result<MaterializeReport, PrefetchError> {
        let started = Instant::now();
        let pool = self.pool_for(event);
        let store = &self.source.store;
        if store.fingerprint(event.id.as_str()).await? == Some(pool.fingerprint) {
            return Ok(MaterializeReport {
                event: event.id.to_string(),
                pages: 0,
                skipped: true,
                elapsed_ms: started.elapsed().as_millis() as u64,
            });
        }
        let event_key: Arc<str> = Arc::from(event.id.as_str());
        let profiles = self.catalog.profiles.len();
        let mut pages = 0;
        for start in (0..profiles).step_by(MATERIALIZE_BATCH) {
            wait_while_paused(paused).await;
            let (catalog, batch_pool, batch_event) =
                (self.catalog.clone(), pool.clone(), event_key.clone());
            let batch = tokio::task::spawn_blocking(move || {
                let end = (start + MATERIALIZE_BATCH).min(catalog.profiles.len());
                catalog.profiles[start..end]
                    .iter()
                    .map(|profile| {
                        let page = materialize(&catalog, &batch_pool, Some(profile));
                        let key = PageKey {
                            event: batch_event.clone(),
                            profile: Arc::from(&*profile.id),
                        };
                        (key, Bytes::from(encode(&page, &batch_pool)))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|_| PrefetchError::Internal)?;
            pages += batch.len();
            self.metrics.pages_materialized.add(batch.len() as u64);
            store.put(batch).await?;
        }
        store
            .set_fingerprint(event.id.as_str(), pool.fingerprint)
            .await?;
        let _stale_entries_expire_anyway = self.pages.invalidate_event(event.id.as_str());
        Ok(MaterializeReport {
            event: event.id.to_string(),
            pages,
            skipped: false,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Materializes every visible event, one after the other.
    pub async fn materialize_all(&self) -> Vec<Result<MaterializeReport, PrefetchError>> {
        self.materialize_all_pausing(None).await
    }

    /// [`Self::materialize_all`], the node's own background work: while `paused` is true
    /// (protection's ruleset around a kickoff, or under load) it waits before the next event
    /// and the next batch of pages, so that it never competes with devices then. Pages a
    /// device asks for meanwhile are computed on demand as usual.
    pub async fn materialize_all_pausing(
        &self,
        paused: Option<watch::Receiver<bool>>,
    ) -> Vec<Result<MaterializeReport, PrefetchError>> {
        let mut paused = paused;
        let mut reports = Vec::new();
        for event in self
            .events
            .events()
            .await
            .into_iter()
            .filter(LiveEvent::is_visible)
        {
            wait_while_paused(&mut paused).await;
            reports.push(self.materialize_event_pausing(&event, &mut paused).await);
        }
        reports
    }

    /// Approximate bytes of the page store, when it can tell.
    pub fn store_bytes(&self) -> Option<usize> {
        self.source.store.approximate_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paused_gate_holds_until_it_is_released() {
        let (pause, receiver) = watch::channel(true);
        let mut gate = Some(receiver);
        let waiting = tokio::spawn(async move {
            wait_while_paused(&mut gate).await;
            gate.is_some()
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "held while paused");
        pause.send_replace(false);
        assert!(waiting.await.expect("joined"), "released, still watching");
        let mut none = None;
        wait_while_paused(&mut none).await;
    }

    #[test]
    fn defaults_validate_and_out_of_range_bounds_do_not() {
        assert_eq!(PrefetchConfig::default().validate(), Ok(()));
        let broken: [fn(&mut PrefetchConfig); 15] = [
            |c| c.responses.jitter = 1.5,
            |c| c.responses.ttl = Duration::ZERO,
            |c| c.responses.max_bytes = u64::MAX,
            |c| c.cache.jitter = -0.1,
            |c| c.cache.jitter = 1.5,
            |c| c.cache.jitter = f64::NAN,
            |c| c.device_ttl_jitter = 1.01,
            |c| c.device_ttl_jitter = f64::NAN,
            |c| c.limits.max_nesting = 0,
            |c| c.limits.max_nesting = 1_000,
            |c| c.limits.max_depth = 40,
            |c| c.limits.max_visits = 10,
            |c| c.limits.max_list_items = 0,
            |c| c.execution_timeout = Duration::ZERO,
            |c| c.max_response_bytes = 10,
        ];
        for breaking in broken {
            let mut config = PrefetchConfig::default();
            breaking(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
        let mut edges = PrefetchConfig::default();
        edges.cache.jitter = 0.0;
        edges.device_ttl_jitter = 1.0;
        assert_eq!(edges.validate(), Ok(()));
    }
}
