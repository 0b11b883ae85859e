//! The per-node cache in front of the page store.
//!
//! - **Per-entry TTL jitter**: each entry lives `ttl × (1 ± jitter)`, drawn when it is filled, so
//!   entries filled at the same moment (every device prefetching as an event is announced) do not
//!   expire at the same moment and send a synchronized wave of reads to the store.
//! - **Request coalescing**: concurrent misses for one key wait on a single load.
//! - **Stale while revalidate**: an entry past its TTL is still served for `stale_for` while one
//!   background refresh runs; if the store is down, the refresh fails and the stale entry keeps
//!   being served instead of an error.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use moka::Expiry;
use ringside_sync_util::LockExt;
use ringside_telemetry::{Counter, Registry};

use crate::PrefetchError;
use crate::store::PageKey;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Mean time an entry is fresh.
    pub ttl: Duration,
    /// Relative spread of each entry's TTL: 0.2 draws TTLs uniformly in ttl × [0.8, 1.2].
    pub jitter: f64,
    /// How long past its TTL an entry may still be served while it is refreshed.
    pub stale_for: Duration,
    /// Most entries held.
    pub capacity: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            jitter: 0.2,
            stale_for: Duration::from_secs(600),
            capacity: 250_000,
        }
    }
}

impl CacheConfig {
    /// A TTL drawn from the jitter window.
    pub fn jittered_ttl(&self) -> Duration {
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        self.ttl.mul_f64(factor.max(0.0))
    }
}

/// Loads a page on a miss (from the store, or by materializing it).
pub trait PageLoader: Send + Sync + 'static {
    fn load(&self, key: &PageKey) -> BoxFuture<'_, Result<Bytes, PrefetchError>>;
}

#[derive(Debug, Clone)]
struct Entry {
    page: Bytes,
    filled_at: Instant,
    ttl: Duration,
}

struct JitteredExpiry {
    stale_for: Duration,
}

impl Expiry<PageKey, Entry> for JitteredExpiry {
    fn expire_after_create(
        &self,
        _key: &PageKey,
        entry: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl + self.stale_for)
    }

    fn expire_after_update(
        &self,
        _key: &PageKey,
        entry: &Entry,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl + self.stale_for)
    }
}

/// Cache counters, exported on `/metrics`.
#[derive(Debug)]
pub struct CacheMetrics {
    pub hits: Arc<Counter>,
    pub misses: Arc<Counter>,
    pub stale_served: Arc<Counter>,
    pub refresh_failures: Arc<Counter>,
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> Self {
        let [hits, misses, stale_served] = registry.counter_family(
            "ringside_prefetch_cache_total",
            "Prefetch page lookups in the node cache, by outcome: hit (served fresh), miss (had \
             to load; coalesced loads count once per request), stale (served past its TTL while \
             refreshing).",
            "outcome",
            ["hit", "miss", "stale"],
        );
        Self {
            hits,
            misses,
            stale_served,
            // Not a lookup's outcome but a background refresh's, counted apart from lookups.
            refresh_failures: registry.counter(
                "ringside_prefetch_cache_refresh_failures_total",
                "Background refreshes that failed (the stale page stays served).",
            ),
        }
    }
}

pub struct PageCache {
    entries: moka::future::Cache<PageKey, Entry>,
    config: CacheConfig,
    loader: Arc<dyn PageLoader>,
    refreshing: Arc<Mutex<HashSet<PageKey>>>,
    metrics: Arc<CacheMetrics>,
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PageCache {
    pub fn new(config: CacheConfig, loader: Arc<dyn PageLoader>, metrics: CacheMetrics) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(config.capacity)
            .expire_after(JitteredExpiry {
                stale_for: config.stale_for,
            })
            .support_invalidation_closures()
            .build();
        Self {
            entries,
            config,
            loader,
            refreshing: Arc::default(),
            metrics: Arc::new(metrics),
        }
    }

    /// The page for `key`: fresh from the cache, stale while a refresh runs, or loaded once
    /// for all concurrent callers.
    pub async fn get(&self, key: &PageKey) -> Result<Bytes, PrefetchError> {
        if let Some(entry) = self.entries.get(key).await {
            if entry.filled_at.elapsed() < entry.ttl {
                self.metrics.hits.increment();
            } else {
                self.metrics.stale_served.increment();
                self.refresh_in_background(key, entry.clone());
            }
            return Ok(entry.page);
        }
        self.metrics.misses.increment();
        let loader = self.loader.clone();
        let config = &self.config;
        let entry = self
            .entries
            .try_get_with(key.clone(), async move {
                let page = loader.load(key).await?;
                Ok::<_, PrefetchError>(Entry {
                    page,
                    filled_at: Instant::now(),
                    ttl: config.jittered_ttl(),
                })
            })
            .await
            .map_err(|error| (*error).clone())?;
        Ok(entry.page)
    }

    /// Starts one refresh of `key` unless one is running.
    fn refresh_in_background(&self, key: &PageKey, stale: Entry) {
        {
            let mut refreshing = self.refreshing.locked();
            if !refreshing.insert(key.clone()) {
                return;
            }
        }
        let (key, loader, entries, refreshing, metrics) = (
            key.clone(),
            self.loader.clone(),
            self.entries.clone(),
            self.refreshing.clone(),
            self.metrics.clone(),
        );
        let ttl = self.config.jittered_ttl();
        // Bounded by the store's own timeouts; its result only updates the cache.
        tokio::spawn(async move {
            match loader.load(&key).await {
                Ok(page) => {
                    entries
                        .insert(
                            key.clone(),
                            Entry {
                                page,
                                filled_at: Instant::now(),
                                ttl,
                            },
                        )
                        .await
                }
                Err(error) => {
                    metrics.refresh_failures.increment();
                    tracing::warn!(%error, event = %key.event, "refresh failed; serving the stale page");
                    // Keep the stale page for another stale window: during an outage it stays
                    // served for as long as refreshes keep failing.
                    entries.insert(key.clone(), stale).await;
                }
            }
            refreshing.locked().remove(&key);
        });
    }

    /// The TTL drawn for a cached entry (for tests and diagnostics).
    pub async fn ttl_of(&self, key: &PageKey) -> Option<Duration> {
        self.entries.get(key).await.map(|entry| entry.ttl)
    }

    /// Forgets one entry.
    pub async fn invalidate(&self, key: &PageKey) {
        self.entries.invalidate(key).await;
    }

    /// Forgets every entry of `event` (after it was rematerialized).
    pub fn invalidate_event(&self, event: &str) -> Result<(), moka::PredicateError> {
        let event: Arc<str> = Arc::from(event);
        self.entries
            .invalidate_entries_if(move |key, _| key.event == event)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    struct CountingLoader {
        loads: AtomicUsize,
        down: AtomicBool,
    }

    impl PageLoader for CountingLoader {
        fn load(&self, key: &PageKey) -> BoxFuture<'_, Result<Bytes, PrefetchError>> {
            let page = Bytes::from(format!(
                "{}:{}:{}",
                key.event,
                key.profile,
                self.loads.fetch_add(1, Ordering::SeqCst)
            ));
            let down = self.down.load(Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if down {
                    Err(PrefetchError::StoreUnavailable)
                } else {
                    Ok(page)
                }
            })
        }
    }

    fn cache(config: CacheConfig) -> (PageCache, Arc<CountingLoader>) {
        let loader = Arc::new(CountingLoader {
            loads: AtomicUsize::new(0),
            down: AtomicBool::new(false),
        });
        let cache = PageCache::new(config, loader.clone(), CacheMetrics::new(&Registry::new()));
        (cache, loader)
    }

    fn key(profile: usize) -> PageKey {
        PageKey {
            event: Arc::from("e"),
            profile: Arc::from(format!("p{profile}")),
        }
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let (cache, loader) = cache(CacheConfig::default());
        let key = key(1);
        let pages = futures_util::future::join_all((0..50).map(|_| cache.get(&key))).await;
        assert_eq!(loader.loads.load(Ordering::SeqCst), 1);
        assert!(
            pages
                .iter()
                .all(|p| p.as_ref().ok() == pages[0].as_ref().ok())
        );
    }

    #[tokio::test]
    async fn ttls_filled_together_spread_over_the_jitter_window() {
        let config = CacheConfig {
            ttl: Duration::from_secs(100),
            jitter: 0.25,
            ..CacheConfig::default()
        };
        let (cache, _) = cache(config);
        // Filled at the same instant: 200 concurrent misses.
        let keys: Vec<PageKey> = (0..200).map(key).collect();
        futures_util::future::join_all(keys.iter().map(|k| cache.get(k))).await;
        let mut ttls = Vec::new();
        for k in &keys {
            ttls.push(cache.ttl_of(k).await.expect("cached"));
        }
        let (min, max) = (
            ttls.iter().min().copied().unwrap_or_default(),
            ttls.iter().max().copied().unwrap_or_default(),
        );
        assert!(
            min >= Duration::from_secs(75) && max <= Duration::from_secs(125),
            "{min:?}..{max:?}"
        );
        assert!(
            max - min > Duration::from_secs(40),
            "TTLs spread over the window: {min:?}..{max:?}"
        );
        let distinct: HashSet<Duration> = ttls.iter().copied().collect();
        assert!(distinct.len() > 190);
    }

    #[tokio::test]
    async fn stale_entries_are_served_while_the_store_is_down() {
        let config = CacheConfig {
            ttl: Duration::from_millis(50),
            jitter: 0.0,
            stale_for: Duration::from_secs(60),
            ..CacheConfig::default()
        };
        let (cache, loader) = cache(config);
        let first = cache.get(&key(1)).await.expect("loaded");
        loader.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(cache.get(&key(1)).await.expect("stale"), first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(cache.get(&key(1)).await.expect("still stale"), first);
        assert!(cache.metrics.refresh_failures.get() >= 1);
        // A key never cached has nothing stale to fall back on.
        assert!(matches!(
            cache.get(&key(2)).await,
            Err(PrefetchError::StoreUnavailable)
        ));
        // Back up: once the failing refresh in flight is over, the next one replaces the page.
        loader.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        cache.get(&key(1)).await.expect("stale once more");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_ne!(cache.get(&key(1)).await.expect("refreshed"), first);
    }
}
