//! Events, versions and current states in Redis, shared by every control-plane instance and
//! kept across restarts.
//!
//! Keys, under the deployment's prefix:
//! - `events`: a hash of event id → the event as created (JSON).
//! - `version:<id>`: the last version handed out. A Lua script assigns
//!   `max(last + 1, publish time in ms)` atomically, so versions stay unique and increasing
//!   however many instances publish at once, and keep increasing if the key is ever lost.
//! - `state:<id>`: the current state (JSON), replaced only by a newer version (Lua). Only stage
//!   states are recorded: a best-effort message takes a version from `version:<id>` but is
//!   never the event's state.
//! - `lock:<id>`: held by the instance publishing the event, from version assignment to the
//!   bus's acknowledgement, so that the bus carries one event's states in version order.

use futures_util::future::BoxFuture;
use redis::Script;
use ringside_protocol::admin::{CreateEvent, EventSummary};
use ringside_protocol::{EventId, EventState, Payload, Stage};
use ringside_sync_util::LockExt;

use crate::store::{EventWithState, NewState, PublishLock};
use crate::{ControlError, EventStore};

/// The next version of an event: after the last one handed out and after the state the store
/// holds (so a counter Redis lost is reseeded from the newest state instead of restarting at
/// the clock, which may be behind versions a burst or a faster host's clock handed out), after
/// the newest version a node reports holding (ARGV[2]: so one that lost the state too is
/// reseeded from the nodes), and no older than the publish's clock.
const NEXT_VERSION: &str = r"
local counter = redis.call('GET', KEYS[1])
local last = tonumber(counter or '0')
local state = redis.call('GET', KEYS[2])
if state then
  local held = tonumber(cjson.decode(state).version) or 0
  if held > last then last = held end
end
local version = math.max(last + 1, tonumber(ARGV[1]), tonumber(ARGV[2]) + 1)
redis.call('SET', KEYS[1], string.format('%d', version))
return {version, counter and 0 or 1}
";

const RECORD_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current and cjson.decode(current).version >= tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// How long a publish lock lives if its holder dies without releasing it. A publish holds it
/// for at most the bus's publish timeout, which must stay below this.
pub const PUBLISH_LOCK_TTL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a publish waits for another instance's publish of the same event.
pub const PUBLISH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The control plane's store in Redis.
#[derive(Clone)]
pub struct RedisEventStore {
    connection: redis::aio::ConnectionManager,
    prefix: String,
    /// Publish locks this process may hold without knowing it, by key: a `SET` or release whose
    /// answer was lost (Redis unreachable) may still have been applied. The next publish of that
    /// event reuses the token, so the lock never stands in this process's own way.
    uncertain_locks: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

impl std::fmt::Debug for RedisEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEventStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(error: redis::RedisError) -> ControlError {
    tracing::warn!(%error, "event store unavailable");
    ControlError::StoreUnavailable
}

fn corrupt(what: &str) -> ControlError {
    tracing::error!(what, "unreadable record in the event store");
    ControlError::StoreUnavailable
}

impl RedisEventStore {
    /// Events under `prefix`, over a connection that reconnects by itself.
    pub fn new(connection: redis::aio::ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            connection,
            prefix: prefix.into(),
            uncertain_locks: Default::default(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn created(&self, id: &EventId) -> Result<CreateEvent, ControlError> {
        let mut connection = self.connection.clone();
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key("events"))
            .arg(id.as_str())
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let json = json.ok_or_else(|| ControlError::NotFound(format!("unknown event {id}")))?;
        serde_json::from_str(&json).map_err(|_| corrupt("event"))
    }

    async fn all(&self) -> Result<Vec<EventWithState>, ControlError> {
        let mut connection = self.connection.clone();
        let events: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("events"))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let state_keys: Vec<String> = events
            .iter()
            .map(|(id, _)| self.key(&format!("state:{id}")))
            .collect();
        let states: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&state_keys)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut all = Vec::with_capacity(events.len());
        for ((_, json), state) in events.iter().zip(states) {
            let created: CreateEvent = serde_json::from_str(json).map_err(|_| corrupt("event"))?;
            let state: Option<EventState> = state
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|_| corrupt("state"))?;
            all.push((summary(created, state.as_ref()), state));
        }
        all.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(all)
    }
}

fn summary(created: CreateEvent, state: Option<&EventState>) -> EventSummary {
    EventSummary {
        topic: created.id.topic(),
        id: created.id,
        title: created.title,
        starts_at: created.starts_at,
        stages: created.stages,
        stage: state.map(|s| s.stage.clone()),
        version: state.map_or(0, |s| s.version),
        published_at_ms: state.map(|s| s.published_at_ms),
    }
}

impl EventStore for RedisEventStore {
    fn create(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let json = serde_json::to_string(&event).map_err(|_| ControlError::StoreUnavailable)?;
            let created: bool = redis::cmd("HSETNX")
                .arg(self.key("events"))
                .arg(event.id.as_str())
                .arg(json)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if !created {
                return Err(ControlError::Conflict(format!(
                    "event {} already exists",
                    event.id
                )));
            }
            Ok(summary(event, None))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<EventSummary>, ControlError>> {
        Box::pin(async move {
            Ok(self
                .all()
                .await?
                .into_iter()
                .map(|(summary, _)| summary)
                .collect())
        })
    }

    fn get(&self, id: &EventId) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        let id = id.clone();
        Box::pin(async move {
            let created = self.created(&id).await?;
            let mut connection = self.connection.clone();
            let state: Option<String> = redis::cmd("GET")
                .arg(self.key(&format!("state:{id}")))
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            let state: Option<EventState> = state
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|_| corrupt("state"))?;
            Ok(summary(created, state.as_ref()))
        })
    }

    fn update(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        Box::pin(async move {
            // Events are never deleted and the caller holds the publish lock: the check and the
            // write need no script.
            self.created(&event.id).await?;
            let json = serde_json::to_string(&event).map_err(|_| ControlError::StoreUnavailable)?;
            let mut connection = self.connection.clone();
            let _fields_added: i64 = redis::cmd("HSET")
                .arg(self.key("events"))
                .arg(event.id.as_str())
                .arg(json)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            self.get(&event.id).await
        })
    }

    fn next_state(
        &self,
        id: &EventId,
        stage: Stage,
        payload: Payload,
        held: u64,
    ) -> BoxFuture<'_, Result<NewState, ControlError>> {
        let id = id.clone();
        Box::pin(async move {
            let created = self.created(&id).await?;
            crate::store::check_stage(&id, &created.stages, &stage)?;
            let published_at_ms = ringside_protocol::unix_now_ms();
            let mut connection = self.connection.clone();
            let (version, counter_missing): (u64, u8) = Script::new(NEXT_VERSION)
                .key(self.key(&format!("version:{id}")))
                .key(self.key(&format!("state:{id}")))
                .arg(published_at_ms)
                .arg(held)
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            Ok(NewState {
                state: EventState {
                    topic: id.topic(),
                    version,
                    stage,
                    published_at_ms,
                    payload,
                    priority: ringside_protocol::Priority::Critical,
                    fetch_within_ms: None,
                },
                counter_missing: counter_missing == 1,
            })
        })
    }

    fn record_published(&self, state: &EventState) -> BoxFuture<'_, Result<(), ControlError>> {
        if !state.priority.is_critical() {
            return Box::pin(async { Ok(()) });
        }
        let state = state.clone();
        Box::pin(async move {
            let json = serde_json::to_string(&state).map_err(|_| ControlError::StoreUnavailable)?;
            let mut connection = self.connection.clone();
            let _replaced: i64 = Script::new(RECORD_IF_NEWER)
                .key(self.key(&format!("state:{}", state.topic.event_id())))
                .arg(json)
                .arg(state.version)
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn with_states(&self) -> BoxFuture<'_, Result<Vec<EventWithState>, ControlError>> {
        Box::pin(self.all())
    }

    fn lock_publishes(
        &self,
        id: &EventId,
    ) -> BoxFuture<'_, Result<Option<PublishLock>, ControlError>> {
        let key = self.key(&format!("lock:{id}"));
        Box::pin(async move {
            let token = self.take_uncertain(&key).unwrap_or_else(lock_token);
            let deadline = std::time::Instant::now() + PUBLISH_LOCK_WAIT;
            loop {
                match self.try_lock(&key, &token).await {
                    Ok(true) => return Ok(Some(PublishLock { key, token })),
                    Ok(false) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    Ok(false) => {
                        tracing::warn!(%key, "publish lock still held by another instance");
                        return Err(ControlError::StoreUnavailable);
                    }
                    Err(error) => {
                        self.mark_uncertain(key, token);
                        return Err(unavailable(error));
                    }
                }
            }
        })
    }

    fn unlock_publishes(&self, lock: PublishLock) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let released: Result<i64, _> = Script::new(RELEASE_LOCK)
                .key(&lock.key)
                .arg(&lock.token)
                .invoke_async(&mut connection)
                .await;
            if let Err(error) = released {
                tracing::warn!(%error, key = %lock.key, "publish lock not released; it expires by itself");
                self.mark_uncertain(lock.key, lock.token);
            }
        })
    }
}

impl RedisEventStore {
    /// Takes the lock at `key` for `token`, or finds it already taken for `token`.
    async fn try_lock(&self, key: &str, token: &str) -> Result<bool, redis::RedisError> {
        let mut connection = self.connection.clone();
        let ttl_ms = PUBLISH_LOCK_TTL.as_millis() as u64;
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut connection)
            .await?;
        if taken.is_some() {
            return Ok(true);
        }
        let holder: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await?;
        Ok(holder.as_deref() == Some(token))
    }

    fn take_uncertain(&self, key: &str) -> Option<String> {
        self.uncertain_locks.locked().remove(key)
    }

    fn mark_uncertain(&self, key: String, token: String) {
        self.uncertain_locks.locked().insert(key, token);
    }
}

/// A token no other holder of a lock has: process, time and a counter.
fn lock_token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos}-{count}", std::process::id())
}
