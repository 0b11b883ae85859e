//! The response cache: a prefetch answer kept as the bytes that were sent, and sent again
//! while nothing it was built from has changed.
//!
//! A device of a large catalog asks the same question (operation, variables, its profile)
//! every time and gets the same answer until an event changes or its page is rebuilt, so the
//! node keeps the serialized body of every answer without errors and answers a repeated
//! request from it, skipping parsing, validation, resolution and serialization.
//!
//! - **Key**: the query text, operation name and variables as sent, the token's profile and
//!   the device's TTL (it is in the body's `cacheHint`). Nothing is hashed into a shorter key,
//!   so two different requests never share an entry.
//! - **Validity** is checked on every hit, never assumed: an entry records a fingerprint of the
//!   event list it was built from (ids, titles, start times, stages, state versions) and the
//!   page blobs it read. A hit needs the same fingerprint now and, for each page, the same
//!   bytes from the node's page cache (looked up as a resolver would, so the page cache's own
//!   TTLs, refreshes and re-materializations apply). Anything else is a miss and the request
//!   executes; a new version or a rebuilt page is never answered from an old body.
//! - **Compressed once**: a kept answer of at least
//!   [`ResponseCacheConfig::compress_from_bytes`] is compressed for the encoding a client
//!   accepts (brotli or gzip, at the quality of the HTTP layer's compression) the first time
//!   one asks for it, and those bytes are kept with it and counted in the bound; later clients
//!   get them as they are (the HTTP layer never compresses an answer that has an encoding).
//! - **Doorkeeper**: an answer is kept the second time its request is seen, not the first
//!   ([`ResponseCacheConfig::doorkeeper_slots`]): most prefetches are a device's one fetch per
//!   TTL, and keeping each of those would cost every such request an insertion and evict what
//!   is asked again.
//! - **Bound**: at most [`ResponseCacheConfig::max_bytes`] of keys and bodies, least recently
//!   and least frequently used evicted first (moka's TinyLFU); each entry also expires
//!   `ttl × (1 ± jitter)` after it was made, so memory of entries no one asks for again is
//!   given back and entries made together do not expire together.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;
use ringside_telemetry::{Counter, Registry};

use crate::LiveEvent;
use crate::cache::PageCache;
use crate::store::PageKey;

/// Settings of the response cache (docs/OPERATIONS.md lists them).
#[derive(Debug, Clone)]
pub struct ResponseCacheConfig {
    /// Most bytes of keys and bodies held; 0 turns the cache off. Default 128 MiB: about
    /// 1,000 full prefetches of 120 KB, or 30,000 one-event answers of 4 KB.
    pub max_bytes: u64,
    /// Mean time an entry is kept after it was made (it is checked on every hit anyway).
    pub ttl: Duration,
    /// Relative spread of each entry's lifetime: 0.2 draws it in ttl × [0.8, 1.2].
    pub jitter: f64,
    /// Kept answers this large or larger are sent compressed to clients that accept it, the
    /// compressed bytes kept too; 0 never. `ringside` sets it from `--compression-min-bytes`,
    /// the HTTP layer's threshold, so that both compress the same answers.
    pub compress_from_bytes: usize,
    /// Slots of the doorkeeper: an answer is kept the second time its request is seen within
    /// about this many distinct requests, not the first, so that requests asked once (every
    /// device's first prefetch) cost no insertion and evict nothing. 8 bytes each; default
    /// 65,536 (512 KiB); 0 keeps every answer the first time.
    pub doorkeeper_slots: usize,
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 128 * 1024 * 1024,
            ttl: Duration::from_secs(300),
            jitter: 0.2,
            compress_from_bytes: 1024,
            doorkeeper_slots: 65_536,
        }
    }
}

/// What a request asks, as it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResponseKey {
    pub query: Arc<str>,
    pub operation: Option<String>,
    /// The variables' JSON text, `None` without variables.
    pub variables: Option<String>,
    pub profile: String,
    pub ttl_seconds: u32,
}

impl ResponseKey {
    fn bytes(&self) -> usize {
        self.query.len()
            + self.operation.as_ref().map_or(0, String::len)
            + self.variables.as_ref().map_or(0, String::len)
            + self.profile.len()
    }
}

/// An answer and what it was built from.
#[derive(Debug)]
pub(crate) struct CachedResponse {
    pub body: Bytes,
    pub etag: String,
    events: u64,
    pages: Vec<(PageKey, Bytes)>,
    lifetime: Duration,
    gzip: OnceLock<Bytes>,
    brotli: OnceLock<Bytes>,
}

impl CachedResponse {
    fn compressed(&self, encoding: Encoding) -> &OnceLock<Bytes> {
        match encoding {
            Encoding::Gzip => &self.gzip,
            Encoding::Brotli => &self.brotli,
        }
    }

    fn bytes(&self) -> usize {
        let kept = |once: &OnceLock<Bytes>| once.get().map_or(0, Bytes::len);
        self.body.len() + kept(&self.gzip) + kept(&self.brotli)
    }
}

/// A content coding a kept answer can be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

/// The quality both encoders use: the HTTP layer's (`CompressionLevel::Precise(4)`).
const QUALITY: u32 = 4;

impl Encoding {
    /// The coding `Accept-Encoding` prefers among ours: the highest `q` above 0, brotli on a
    /// tie (as the HTTP layer chooses); `None` when it accepts neither.
    pub fn preferred(accept_encoding: &axum::http::HeaderMap) -> Option<Self> {
        let mut best: Option<(f32, Self)> = None;
        let values = accept_encoding.get_all(axum::http::header::ACCEPT_ENCODING);
        for item in values
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
        {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let encoding = if name.eq_ignore_ascii_case("br") {
                Self::Brotli
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                Self::Gzip
            } else {
                continue;
            };
            let q = parts
                .find_map(|param| {
                    let (key, value) = param.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("q")
                        .then(|| value.trim().parse::<f32>().ok())?
                })
                .unwrap_or(1.0);
            let better = match best {
                None => true,
                Some((best_q, best_encoding)) => {
                    q > best_q
                        || (q == best_q && encoding == Self::Brotli && best_encoding == Self::Gzip)
                }
            };
            if q > 0.0 && better {
                best = Some((q, encoding));
            }
        }
        best.map(|(_, encoding)| encoding)
    }

    pub fn header_value(self) -> axum::http::HeaderValue {
        axum::http::HeaderValue::from_static(match self {
            Self::Gzip => "gzip",
            Self::Brotli => "br",
        })
    }

    fn compress(self, body: &[u8]) -> Bytes {
        use std::io::Write as _;
        let mut out = Vec::with_capacity(body.len() / 8);
        // Writing into a Vec cannot fail.
        match self {
            Self::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(QUALITY));
                let _ = encoder.write_all(body);
                let _ = encoder.finish();
            }
            Self::Brotli => {
                let mut encoder = brotli::CompressorWriter::new(&mut out, 4096, QUALITY, 22);
                let _ = encoder.write_all(body);
                let _ = encoder.flush();
                drop(encoder);
            }
        }
        Bytes::from(out)
    }
}

/// A kept answer as it is sent: its bytes in `encoding` (`None`: as they are) and its tag.
#[derive(Debug)]
pub(crate) struct Hit {
    pub body: Bytes,
    pub encoding: Option<Encoding>,
    pub etag: String,
}

/// Per-entry overhead beyond its key and body: the entry, its page references and moka's
/// bookkeeping, counted so that many small entries cannot exceed the bound unseen.
const ENTRY_OVERHEAD_BYTES: usize = 256;

struct Lifetime;

impl Expiry<ResponseKey, Arc<CachedResponse>> for Lifetime {
    fn expire_after_create(
        &self,
        _key: &ResponseKey,
        entry: &Arc<CachedResponse>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

/// Counters of the response cache, exported on `/metrics`.
#[derive(Debug)]
struct ResponseCacheMetrics {
    hits: Arc<Counter>,
    misses: Arc<Counter>,
    outdated: Arc<Counter>,
}

pub(crate) struct ResponseCache {
    entries: Option<moka::future::Cache<ResponseKey, Arc<CachedResponse>>>,
    /// The doorkeeper: slot `hash % len` holds the hash of the last request seen there.
    seen: Box<[AtomicU64]>,
    config: ResponseCacheConfig,
    metrics: ResponseCacheMetrics,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A fingerprint of everything of the event list an answer can show: a different list gives
/// a different fingerprint (up to a 64-bit collision of SipHash over values only operators
/// control). The state's publish time and payload are hashed too, so a repeated version (a
/// store that lost its counter) with other content is not taken for the same state.
pub(crate) fn events_fingerprint(events: &[LiveEvent]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    events.len().hash(&mut hasher);
    for event in events {
        event.id.as_str().hash(&mut hasher);
        event.title.hash(&mut hasher);
        event.starts_at.hash(&mut hasher);
        for stage in &event.stages {
            stage.as_str().hash(&mut hasher);
        }
        match &event.state {
            None => 0u64.hash(&mut hasher),
            Some(state) => {
                state.version.hash(&mut hasher);
                state.stage.as_str().hash(&mut hasher);
                state.published_at_ms.hash(&mut hasher);
                state.payload.as_json().hash(&mut hasher);
                state.fetch_within_ms.hash(&mut hasher);
            }
        }
    }
    hasher.finish()
}

impl ResponseCache {
    pub fn new(config: ResponseCacheConfig, registry: &Registry) -> Self {
        let [hits, misses, outdated] = registry.counter_family(
            "ringside_prefetch_response_cache_total",
            "Prefetch requests looked up in the response cache, by outcome: hit (answered from \
             kept bytes), miss (nothing kept), outdated (kept, but an event or a page it was \
             built from has changed since; executed again).",
            "outcome",
            ["hit", "miss", "outdated"],
        );
        let entries = (config.max_bytes > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(|key: &ResponseKey, entry: &Arc<CachedResponse>| {
                    let bytes = ENTRY_OVERHEAD_BYTES + key.bytes() + entry.bytes();
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                })
                .expire_after(Lifetime)
                .build()
        });
        if let Some(entries) = entries.clone() {
            registry.computed_gauge(
                "ringside_prefetch_response_cache_bytes",
                "Bytes the response cache holds (keys, bodies, compressed bodies, overhead), \
                 as of its last maintenance.",
                Arc::new(move || i64::try_from(entries.weighted_size()).unwrap_or(i64::MAX)),
            );
        }
        Self {
            entries,
            seen: (0..config.doorkeeper_slots)
                .map(|_| AtomicU64::new(0))
                .collect(),
            config,
            metrics: ResponseCacheMetrics {
                hits,
                misses,
                outdated,
            },
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The kept answer to `key`, if what it was built from is what the node would build from
    /// now: the event list with fingerprint `events`, and the same page bytes. In `accepted`
    /// when the client accepts a coding and the answer is large enough to compress.
    pub async fn get(
        &self,
        key: &ResponseKey,
        events: u64,
        pages: &PageCache,
        accepted: Option<Encoding>,
    ) -> Option<Hit> {
        let entries = self.entries.as_ref()?;
        let Some(entry) = entries.get(key).await else {
            self.metrics.misses.increment();
            return None;
        };
        if entry.events != events || !Self::pages_unchanged(&entry, pages).await {
            self.metrics.outdated.increment();
            entries.invalidate(key).await;
            return None;
        }
        self.metrics.hits.increment();
        let min = self.config.compress_from_bytes;
        let encoding = accepted.filter(|_| min > 0 && entry.body.len() >= min);
        let body = match encoding {
            None => entry.body.clone(),
            Some(encoding) => {
                let once = entry.compressed(encoding);
                match once.get() {
                    Some(bytes) => bytes.clone(),
                    None => {
                        let bytes = once.get_or_init(|| encoding.compress(&entry.body)).clone();
                        // Weighed again with its compressed bytes.
                        entries.insert(key.clone(), entry.clone()).await;
                        bytes
                    }
                }
            }
        };
        Some(Hit {
            body,
            encoding,
            etag: entry.etag.clone(),
        })
    }

    async fn pages_unchanged(entry: &CachedResponse, pages: &PageCache) -> bool {
        for (key, bytes) in &entry.pages {
            match pages.get(key).await {
                Ok(now) if now == *bytes => {}
                _ => return false,
            }
        }
        true
    }

    /// Whether the answer to `key` should be kept: when the doorkeeper's slot for it still
    /// holds it from its last sighting (always, when it has no slots). Two requests that take
    /// turns in one slot are never kept: a bound on what a doorkeeper of this size remembers.
    fn admits(&self, key: &ResponseKey) -> bool {
        if self.seen.is_empty() {
            return true;
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        key.hash(&mut hasher);
        // 0 marks an empty slot.
        let hash = hasher.finish().max(1);
        let slot = &self.seen[(hash % self.seen.len() as u64) as usize];
        slot.swap(hash, Ordering::Relaxed) == hash
    }

    /// Keeps an answer without errors, built from the event list with fingerprint `events`
    /// and from `pages`, once the doorkeeper has seen its request before.
    pub async fn insert(
        &self,
        key: ResponseKey,
        events: u64,
        pages: Vec<(PageKey, Bytes)>,
        body: Bytes,
        etag: String,
    ) {
        let Some(entries) = &self.entries else {
            return;
        };
        if !self.admits(&key) {
            return;
        }
        let factor = 1.0 + self.config.jitter * (2.0 * fastrand::f64() - 1.0);
        let entry = CachedResponse {
            body,
            etag,
            events,
            pages,
            lifetime: self.config.ttl.mul_f64(factor.max(0.0)),
            gzip: OnceLock::new(),
            brotli: OnceLock::new(),
        };
        entries.insert(key, Arc::new(entry)).await;
    }

    /// Bytes held now (after pending evictions ran).
    #[cfg(test)]
    pub async fn weighted_bytes(&self) -> u64 {
        let Some(entries) = &self.entries else {
            return 0;
        };
        entries.run_pending_tasks().await;
        entries.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use ringside_protocol::{EventState, Payload, Priority};
    use tower::ServiceExt;

    use super::*;
    use crate::store::PageStore;
    use crate::testing::Node;
    use crate::{EventSource, PrefetchService};

    const QUERY: &str = "{ prefetch { cacheHint { ttlSeconds events { eventId version } } \
                         events { id title state { version stage } byStage { stage home { \
                         rows { title cards { id title } } } } } } }";

    /// The body of `POST /graphql` with `QUERY` for the device of `token`.
    async fn ask(service: &Arc<PrefetchService>, token: &str) -> Bytes {
        let body = serde_json::to_vec(&serde_json::json!({ "query": QUERY })).unwrap();
        let request = Request::post("/graphql")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        let response = crate::http::router(service.clone())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(parsed.get("errors").is_none(), "{parsed}");
        body
    }

    fn counts(service: &PrefetchService) -> [u64; 3] {
        let metrics = &service.responses.metrics;
        [
            metrics.hits.get(),
            metrics.misses.get(),
            metrics.outdated.get(),
        ]
    }

    #[tokio::test]
    async fn a_kept_answer_is_the_executors_bytes_until_an_event_or_a_page_changes() {
        let node = Node::new();
        let cached = node.service_with(|c| c.responses.doorkeeper_slots = 0);
        let executed = node.service_with(|c| c.responses.max_bytes = 0);
        assert!(!executed.responses.enabled());
        let token = node.token(1);

        let first = ask(&cached, &token).await;
        let again = ask(&cached, &token).await;
        assert_eq!(counts(&cached), [1, 1, 0], "the second answer was kept");
        assert_eq!(again, first);
        assert_eq!(ask(&executed, &token).await, first, "the executor's bytes");
        // Another device of another profile is another entry.
        let other = ask(&cached, &node.token(2)).await;
        assert_ne!(other, first);
        assert_eq!(counts(&cached), [1, 2, 0]);

        // A publish: a new version of one event. Never the old body.
        let id = {
            let mut events = node.events.0.lock().unwrap();
            let event = &mut events[0];
            event.state = Some(EventState {
                topic: event.id.topic(),
                version: 7,
                stage: event.stages[1].clone(),
                published_at_ms: 1,
                payload: Payload::empty(),
                priority: Priority::Critical,
                fetch_within_ms: None,
            });
            event.id.to_string()
        };
        let published = ask(&cached, &token).await;
        assert_ne!(published, first);
        assert_eq!(counts(&cached), [1, 2, 1], "outdated by the version");
        assert_eq!(ask(&executed, &token).await, published);
        let hint: serde_json::Value = serde_json::from_slice(&published).unwrap();
        assert!(
            hint["data"]["prefetch"]["cacheHint"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["eventId"] == id.as_str() && e["version"] == 7),
            "{hint}"
        );
        assert_eq!(ask(&cached, &token).await, published);
        assert_eq!(counts(&cached), [2, 2, 1]);

        // A re-materialized page: other bytes in the store for this profile's page, and the
        // node's page caches told (as a materialization run tells them). Never the old body.
        let profile: Arc<str> = Arc::from(&*node.catalog.profiles[1].id);
        let donor: Arc<str> = Arc::from(&*node.catalog.profiles[2].id);
        let page = |profile: &Arc<str>| PageKey {
            event: Arc::from(id.as_str()),
            profile: profile.clone(),
        };
        let donated = node.store.get(&page(&donor)).await.unwrap().unwrap();
        assert_ne!(
            node.store.get(&page(&profile)).await.unwrap().unwrap(),
            donated
        );
        node.store
            .put(vec![(page(&profile), donated)])
            .await
            .unwrap();
        for service in [&cached, &executed] {
            service.pages.invalidate(&page(&profile)).await;
        }
        let rebuilt = ask(&cached, &token).await;
        assert_ne!(rebuilt, published);
        assert_eq!(counts(&cached), [2, 2, 2], "outdated by the page");
        assert_eq!(ask(&executed, &token).await, rebuilt);
        assert_eq!(ask(&cached, &token).await, rebuilt);
        assert_eq!(counts(&cached), [3, 2, 2]);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound_under_many_profiles() {
        let node = Node::new();
        let bound = 64 * 1024;
        let service = node.service_with(|c| {
            c.responses.max_bytes = bound;
            c.responses.doorkeeper_slots = 0;
        });
        let mut answered = 0;
        for profile in 0..node.catalog.profiles.len() {
            answered += ask(&service, &node.token(profile)).await.len() as u64;
        }
        assert!(
            answered > 4 * bound,
            "the answers are {answered} bytes in all"
        );
        let held = service.responses.weighted_bytes().await;
        assert!(held > 0 && held <= bound, "{held} bytes held");
    }

    #[test]
    fn the_preferred_coding_follows_q_values_and_prefers_brotli_on_a_tie() {
        let prefer = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("accept-encoding", value.parse().unwrap());
            Encoding::preferred(&headers)
        };
        assert_eq!(prefer("gzip"), Some(Encoding::Gzip));
        assert_eq!(prefer("gzip, deflate, br"), Some(Encoding::Brotli));
        assert_eq!(prefer("br;q=0.5, gzip"), Some(Encoding::Gzip));
        assert_eq!(prefer("BR;Q=0.9, x-gzip;q=0.8"), Some(Encoding::Brotli));
        assert_eq!(prefer("gzip;q=0, br;q=0"), None);
        assert_eq!(prefer("identity, deflate, zstd"), None);
        assert_eq!(prefer("gzip;q=nonsense"), Some(Encoding::Gzip));
        assert_eq!(Encoding::preferred(&axum::http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn compressed_bytes_are_made_once_kept_and_counted() {
        use std::io::Read as _;
        let node = Node::new();
        let service = node.service_with(|c| c.responses.doorkeeper_slots = 0);
        let token = node.token(4);
        let body = ask(&service, &token).await;
        let key = ResponseKey {
            query: Arc::from(QUERY),
            operation: None,
            variables: None,
            profile: node.catalog.profiles[4].id.to_string(),
            ttl_seconds: service.config.device_ttl_for("tv-4").as_secs() as u32,
        };
        let events = events_fingerprint(&node.events.events().await);
        let before = service.responses.weighted_bytes().await;
        let responses = &service.responses;
        let first = responses
            .get(&key, events, &service.pages, Some(Encoding::Brotli))
            .await
            .expect("kept");
        assert_eq!(first.encoding, Some(Encoding::Brotli));
        let mut decoded = Vec::new();
        brotli::Decompressor::new(&first.body[..], 4096)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
        let grown = responses.weighted_bytes().await;
        assert_eq!(
            grown,
            before + first.body.len() as u64,
            "counted in the bound"
        );
        let again = responses
            .get(&key, events, &service.pages, Some(Encoding::Brotli))
            .await
            .expect("kept");
        assert_eq!(
            again.body.as_ptr(),
            first.body.as_ptr(),
            "the same bytes, not redone"
        );
        let gzip = responses
            .get(&key, events, &service.pages, Some(Encoding::Gzip))
            .await
            .expect("kept");
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzip.body[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
        let plain = responses
            .get(&key, events, &service.pages, None)
            .await
            .expect("kept");
        assert_eq!((plain.encoding, plain.body), (None, body));
    }

    #[tokio::test]
    async fn an_answer_is_kept_the_second_time_its_request_is_seen() {
        let node = Node::new();
        let service = node.service_with(|_| {});
        let token = node.token(5);
        let first = ask(&service, &token).await;
        assert_eq!(counts(&service), [0, 1, 0]);
        assert_eq!(
            service.responses.weighted_bytes().await,
            0,
            "asked once: not kept"
        );
        assert_eq!(ask(&service, &token).await, first);
        assert_eq!(counts(&service), [0, 2, 0]);
        assert!(
            service.responses.weighted_bytes().await > 0,
            "asked twice: kept"
        );
        assert_eq!(ask(&service, &token).await, first);
        assert_eq!(counts(&service), [1, 2, 0]);
        // Many requests asked once each keep nothing.
        for profile in 10..40 {
            ask(&service, &node.token(profile)).await;
        }
        let one = first.len() as u64 + 4096;
        assert!(service.responses.weighted_bytes().await < 2 * one);
    }
}
