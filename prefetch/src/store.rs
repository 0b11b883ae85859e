//! Where materialized pages live: in memory for a single process, in Redis when several
//! prefetch nodes share them. Both hold the same compact blobs (see [`crate::materialize`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use ringside_sync_util::RwLockExt;

use crate::catalog::Catalog;

/// Identifies one page: an event and a profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub event: Arc<str>,
    pub profile: Arc<str>,
}

/// Errors of a page store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (Redis down, timeout). Callers may serve stale data.
    #[error("page store unavailable: {0}")]
    Unavailable(String),
}

pub trait PageStore: Send + Sync + 'static {
    fn get(&self, key: &PageKey) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;
    fn put(&self, pages: Vec<(PageKey, Bytes)>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The fingerprint of the pool an event was last fully materialized for.
    fn fingerprint(&self, event: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    fn set_fingerprint(
        &self,
        event: &str,
        fingerprint: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Approximate bytes held, when the store can tell.
    fn approximate_bytes(&self) -> Option<usize>;
    /// The text of the persisted query `hash` if a node of this store shared it (`None` too
    /// from a store that shares nothing: a process's memory).
    fn persisted_query(&self, hash: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// Shares a validated persisted query with every node of this store, while the shared
    /// queries stay within `max_bytes` (beyond it a query stays this node's only).
    fn share_persisted_query(
        &self,
        hash: &str,
        text: &str,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Pages in this process's memory: per event, one slot per catalog profile (no key stored per
/// page), plus a small map for keys the catalog does not know (the cold-start page).
#[derive(Debug)]
pub struct MemoryPageStore {
    catalog: Arc<Catalog>,
    events: RwLock<HashMap<Arc<str>, EventPages>>,
    fingerprints: RwLock<HashMap<String, u64>>,
}

#[derive(Debug, Default)]
struct EventPages {
    by_profile: Vec<Option<Box<[u8]>>>,
    others: HashMap<Arc<str>, Box<[u8]>>,
}

impl MemoryPageStore {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            events: RwLock::default(),
            fingerprints: RwLock::default(),
        }
    }
}

impl PageStore for MemoryPageStore {
    fn get(&self, key: &PageKey) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let events = self.events.read_locked();
        let page =
            events
                .get(&key.event)
                .and_then(|pages| match self.catalog.profile(&key.profile) {
                    Some(index) => pages
                        .by_profile
                        .get(index as usize)?
                        .as_deref()
                        .map(Bytes::copy_from_slice),
                    None => pages
                        .others
                        .get(&key.profile)
                        .map(|blob| Bytes::copy_from_slice(blob)),
                });
        Box::pin(async move { Ok(page) })
    }

    fn put(&self, pages: Vec<(PageKey, Bytes)>) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut events = self.events.write_locked();
        for (key, page) in pages {
            let event = events.entry(key.event).or_default();
            let blob: Box<[u8]> = page.as_ref().into();
            match self.catalog.profile(&key.profile) {
                Some(index) => {
                    let index = index as usize;
                    if event.by_profile.len() <= index {
                        event
                            .by_profile
                            .resize_with(self.catalog.profiles.len().max(index + 1), || None);
                    }
                    event.by_profile[index] = Some(blob);
                }
                None => {
                    event.others.insert(key.profile, blob);
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn fingerprint(&self, event: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let fingerprint = self.fingerprints.read_locked().get(event).copied();
        Box::pin(async move { Ok(fingerprint) })
    }

    fn set_fingerprint(
        &self,
        event: &str,
        fingerprint: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        self.fingerprints
            .write_locked()
            .insert(event.to_owned(), fingerprint);
        Box::pin(async { Ok(()) })
    }

    fn approximate_bytes(&self) -> Option<usize> {
        let events = self.events.read_locked();
        // Each blob plus its allocation header, and every slot.
        let bytes = events
            .values()
            .map(|pages| {
                pages.by_profile.len() * std::mem::size_of::<Option<Box<[u8]>>>()
                    + pages
                        .by_profile
                        .iter()
                        .flatten()
                        .map(|b| b.len() + 16)
                        .sum::<usize>()
                    + pages.others.values().map(|b| b.len() + 64).sum::<usize>()
            })
            .sum();
        Some(bytes)
    }

    fn persisted_query(&self, _hash: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    fn share_persisted_query(
        &self,
        _hash: &str,
        _text: &str,
        _max_bytes: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        // One process: its own cache of persisted queries is the only one.
        Box::pin(async { Ok(()) })
    }
}

/// How long materialized pages live in Redis without being rewritten: long enough to outlast
/// any event, short enough that pages of forgotten events go away by themselves.
pub const REDIS_PAGE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Pages in Redis under `<prefix>page:<event>:<profile>`.
#[derive(Clone)]
pub struct RedisPageStore {
    connection: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisPageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPageStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.to_string())
}

impl RedisPageStore {
    /// Pages under `prefix`, over a connection that reconnects by itself (see
    /// `ringside::content::connect_redis`).
    pub fn new(connection: redis::aio::ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            connection,
            prefix: prefix.into(),
        }
    }

    fn key(&self, key: &PageKey) -> String {
        format!("{}page:{}:{}", self.prefix, key.event, key.profile)
    }

    fn persisted_key(&self) -> String {
        format!("{}persisted-queries", self.prefix)
    }
}

impl PageStore for RedisPageStore {
    fn get(&self, key: &PageKey) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>> {
        let redis_key = self.key(key);
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&redis_key)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            Ok(value.map(Bytes::from))
        })
    }

    fn put(&self, pages: Vec<(PageKey, Bytes)>) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut pipeline = redis::pipe();
        for (key, page) in &pages {
            pipeline
                .cmd("SET")
                .arg(self.key(key))
                .arg(page.as_ref())
                .arg("EX")
                .arg(REDIS_PAGE_TTL.as_secs())
                .ignore();
        }
        let mut connection = self.connection.clone();
        Box::pin(async move {
            pipeline
                .query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn fingerprint(&self, event: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let key = format!("{}fingerprint:{event}", self.prefix);
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn set_fingerprint(
        &self,
        event: &str,
        fingerprint: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = format!("{}fingerprint:{event}", self.prefix);
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(fingerprint)
                .arg("EX")
                .arg(REDIS_PAGE_TTL.as_secs())
                .query_async::<()>(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn approximate_bytes(&self) -> Option<usize> {
        None
    }

    fn persisted_query(&self, hash: &str) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        let key = self.persisted_key();
        let hash = hash.to_owned();
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg(&hash)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)
        })
    }

    fn share_persisted_query(
        &self,
        hash: &str,
        text: &str,
        max_bytes: u64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let key = self.persisted_key();
        let (hash, text) = (hash.to_owned(), text.to_owned());
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::Script::new(SHARE_PERSISTED_QUERY)
                .key(&key)
                .arg(&hash)
                .arg(&text)
                .arg(max_bytes)
                .arg(REDIS_PERSISTED_TTL.as_secs())
                .invoke_async::<i64>(&mut connection)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }
}

/// How long the shared persisted queries outlive their last registration: an app whose
/// queries nobody registered for a month has been replaced.
const REDIS_PERSISTED_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// One hash of the shared persisted queries (field: the query's sha256 in hex, value: its text)
/// with their bytes counted in the field `_bytes` (never a hex hash); a query is added only
/// while the bytes stay within ARGV[3]. Every addition refreshes the hash's expiry.
const SHARE_PERSISTED_QUERY: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
local used = tonumber(redis.call('HGET', KEYS[1], '_bytes') or '0')
local cost = #ARGV[1] + #ARGV[2]
if used + cost > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], '_bytes', cost)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";
