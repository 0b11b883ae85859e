//! Tier 2: one node's fan-out from topics to its connections.
//!
//! Each topic keeps its current encoded state and its subscribers, spread over shards that are
//! locked one at a time, so subscribing never waits for a whole fan-out and no lock covers every
//! connection. A state is serialized once per node ([`EncodedState::encode`]) and every
//! connection shares the same bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use protocol::admin::TopicStats;
use protocol::{EventState, Topic};
use telemetry::{Counter, Registry};
use tokio::sync::watch;
use tungstenite::Utf8Bytes;

use crate::mailbox::{Mailbox, Offer};

/// Subscriber shards per topic. A fan-out locks one shard at a time; a subscribe locks one.
const SUBSCRIBER_SHARDS: usize = 16;

/// One shard of a topic's subscribers, by connection id.
type SubscriberShard = Mutex<HashMap<u64, Arc<Mailbox>>>;

/// A state encoded once as its `state` frame, shared by every connection that sends it.
#[derive(Debug)]
pub struct EncodedState {
    pub topic: Topic,
    pub version: u64,
    pub published_at_ms: u64,
    /// The complete JSON text of the `state` frame, as the WebSocket text payload itself:
    /// every connection sends a clone of it (a reference count, no copy and no UTF-8 check).
    pub frame: Utf8Bytes,
    /// When this node encoded it: the start of the node's own fan-out.
    pub encoded_at: Instant,
}

impl EncodedState {
    pub fn encode(state: &EventState) -> Self {
        Self {
            topic: state.topic.clone(),
            version: state.version,
            published_at_ms: state.published_at_ms,
            frame: Utf8Bytes::from(protocol::frame::encode_state(state)),
            encoded_at: Instant::now(),
        }
    }
}

/// The result of [`Hub::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state became current and was offered to `subscribers` connections.
    FannedOut { subscribers: usize },
    /// The hub already held this version or a newer one.
    Stale,
}

/// Hub counters, exported on `/metrics`.
#[derive(Debug)]
pub struct HubMetrics {
    pub states_applied: Arc<Counter>,
    pub states_stale: Arc<Counter>,
    pub states_conflated: Arc<Counter>,
    pub acks: Arc<Counter>,
}

impl HubMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            states_applied: registry.counter(
                "ringside_hub_states_applied_total",
                "States that became current.",
            ),
            states_stale: registry.counter(
                "ringside_hub_states_stale_total",
                "States dropped because the hub held the same or a newer version.",
            ),
            states_conflated: registry.counter(
                "ringside_hub_states_conflated_total",
                "Unsent states replaced by a newer version before a slow connection took them.",
            ),
            acks: registry.counter("ringside_acks_total", "Acks received from devices."),
        }
    }
}

#[derive(Debug)]
struct TopicChannel {
    current: RwLock<Option<Arc<EncodedState>>>,
    shards: Box<[SubscriberShard]>,
    subscribers: AtomicU64,
    /// Acks counted for `ack_version` (statistics; approximate while a publish is in flight).
    ack_version: AtomicU64,
    ack_count: AtomicU64,
}

impl TopicChannel {
    fn new() -> Self {
        Self {
            current: RwLock::new(None),
            shards: (0..SUBSCRIBER_SHARDS).map(|_| Mutex::default()).collect(),
            subscribers: AtomicU64::new(0),
            ack_version: AtomicU64::new(0),
            ack_count: AtomicU64::new(0),
        }
    }

    fn shard(&self, connection: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mailbox>>> {
        let index = (connection % SUBSCRIBER_SHARDS as u64) as usize;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn current(&self) -> Option<Arc<EncodedState>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_unused(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) == 0 && self.current().is_none()
    }
}

/// One node's topics and their subscribers.
#[derive(Debug)]
pub struct Hub {
    topics: RwLock<HashMap<Topic, Arc<TopicChannel>>>,
    ready: watch::Sender<bool>,
    ready_flag: AtomicBool,
    metrics: HubMetrics,
}

impl Hub {
    pub fn new(metrics: HubMetrics) -> Self {
        Self {
            topics: RwLock::default(),
            ready: watch::Sender::new(false),
            ready_flag: AtomicBool::new(false),
            metrics,
        }
    }

    fn channel(&self, topic: &Topic) -> Option<Arc<TopicChannel>> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    /// Runs `f` on the channel of `topic`, creating it if needed, while holding the topic map's
    /// lock: `unsubscribe` forgets unused channels under the write lock, so a channel cannot be
    /// forgotten between being looked up and being used by `f`.
    fn with_channel<R>(&self, topic: &Topic, f: impl FnOnce(&Arc<TopicChannel>) -> R) -> R {
        {
            let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(channel) = topics.get(topic) {
                return f(channel);
            }
        }
        let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
        let channel = topics
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(TopicChannel::new()));
        f(channel)
    }

    /// Makes `state` current for its topic if it is newer than what the hub holds, and offers
    /// it to every subscriber. Encodes the state once.
    pub fn apply(&self, state: &EventState) -> Applied {
        // A node re-reading the bus (startup after seeding from the store, a new consumer) sees
        // mostly states it holds: drop those before paying for the encoding. The check under
        // the lock below stays the one that decides.
        if self.version(&state.topic) >= state.version {
            self.metrics.states_stale.increment();
            return Applied::Stale;
        }
        let encoded = Arc::new(EncodedState::encode(state));
        let channel = self.with_channel(&state.topic, |channel| {
            let mut current = channel
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if current
                .as_ref()
                .is_some_and(|held| held.version >= encoded.version)
            {
                return None;
            }
            *current = Some(encoded.clone());
            Some(channel.clone())
        });
        let Some(channel) = channel else {
            self.metrics.states_stale.increment();
            return Applied::Stale;
        };
        channel.ack_count.store(0, Ordering::Relaxed);
        channel
            .ack_version
            .store(encoded.version, Ordering::Relaxed);
        self.metrics.states_applied.increment();

        // Subscribers that join after their shard was visited read the new current state
        // themselves (see `subscribe`), so none is missed.
        let mut offered = 0;
        let mut conflated = 0;
        for shard in &channel.shards {
            let subscribers = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for mailbox in subscribers.values() {
                match mailbox.offer(&encoded) {
                    Offer::Queued => offered += 1,
                    Offer::Conflated => {
                        offered += 1;
                        conflated += 1;
                    }
                    Offer::Ignored => {}
                }
            }
        }
        self.metrics.states_conflated.add(conflated);
        Applied::FannedOut {
            subscribers: offered,
        }
    }

    /// Subscribes connection `connection` to `topic`, delivering into `mailbox`. The mailbox
    /// must already have the topic open (with the connection's `since`); the current state is
    /// offered to it, so it arrives when it is newer than `since`.
    pub fn subscribe(&self, topic: &Topic, connection: u64, mailbox: &Arc<Mailbox>) {
        // Register first, then read the current state: a concurrent `apply` either sees this
        // subscriber or has already replaced the current state that is read below.
        let channel = self.with_channel(topic, |channel| {
            if channel
                .shard(connection)
                .insert(connection, mailbox.clone())
                .is_none()
            {
                channel.subscribers.fetch_add(1, Ordering::AcqRel);
            }
            channel.clone()
        });
        if let Some(current) = channel.current() {
            mailbox.offer_catch_up(&current);
        }
    }

    pub fn unsubscribe(&self, topic: &Topic, connection: u64) {
        let Some(channel) = self.channel(topic) else {
            return;
        };
        if channel.shard(connection).remove(&connection).is_some() {
            channel.subscribers.fetch_sub(1, Ordering::AcqRel);
        }
        if channel.is_unused() {
            // Forget topics nobody holds and nobody published, so that subscriptions to made-up
            // topic names cannot grow the map without bound. Re-checked under the write lock.
            let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
            if topics.get(topic).is_some_and(|channel| channel.is_unused()) {
                topics.remove(topic);
            }
        }
    }

    /// Counts an ack when it is for the topic's current version.
    pub fn record_ack(&self, topic: &Topic, version: u64) {
        self.metrics.acks.increment();
        if let Some(channel) = self.channel(topic) {
            if channel.ack_version.load(Ordering::Relaxed) == version {
                channel.ack_count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The current version of `topic`, 0 when it has none.
    pub fn version(&self, topic: &Topic) -> u64 {
        self.channel(topic)
            .and_then(|c| c.current())
            .map_or(0, |s| s.version)
    }

    pub fn topic_stats(&self) -> Vec<TopicStats> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        let mut stats: Vec<TopicStats> = topics
            .iter()
            .map(|(topic, channel)| {
                let version = channel.current().map_or(0, |s| s.version);
                let acks = if channel.ack_version.load(Ordering::Relaxed) == version {
                    channel.ack_count.load(Ordering::Relaxed)
                } else {
                    0
                };
                TopicStats {
                    topic: topic.clone(),
                    subscribers: channel.subscribers.load(Ordering::Relaxed),
                    version,
                    acks,
                }
            })
            .collect();
        stats.sort_by(|a, b| a.topic.cmp(&b.topic));
        stats
    }

    /// Called once the bus feed has caught up: the hub holds the latest state of every topic.
    pub fn mark_ready(&self) {
        self.ready_flag.store(true, Ordering::Release);
        self.ready.send_replace(true);
    }

    /// Called when the node stops following the bus: its states may be stale.
    pub fn mark_unready(&self) {
        self.ready_flag.store(false, Ordering::Release);
        self.ready.send_replace(false);
    }

    pub fn is_ready(&self) -> bool {
        self.ready_flag.load(Ordering::Acquire)
    }

    /// Resolves once the hub is ready.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.subscribe();
        let _closed_never_happens_while_self_lives = ready.wait_for(|ready| *ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Payload, Stage};

    fn hub() -> Hub {
        Hub::new(HubMetrics::new(&Registry::new()))
    }

    fn state(version: u64) -> EventState {
        EventState {
            topic: Topic::parse("event:a").expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
        }
    }

    fn take(mailbox: &Mailbox) -> Vec<u64> {
        let mut out = Vec::new();
        mailbox.take_pending(&mut out);
        out.iter().map(|d| d.state.version).collect()
    }

    #[test]
    fn drops_states_that_are_not_newer() {
        let hub = hub();
        assert_eq!(hub.apply(&state(2)), Applied::FannedOut { subscribers: 0 });
        assert_eq!(hub.apply(&state(2)), Applied::Stale);
        assert_eq!(hub.apply(&state(1)), Applied::Stale);
        assert_eq!(hub.version(&state(0).topic), 2);
    }

    #[test]
    fn subscribers_catch_up_only_when_behind() {
        let hub = hub();
        let topic = state(0).topic;
        hub.apply(&state(3));
        let behind = Mailbox::new();
        behind.open(&topic, 1);
        hub.subscribe(&topic, 1, &behind);
        assert_eq!(take(&behind), vec![3]);
        let up_to_date = Mailbox::new();
        up_to_date.open(&topic, 3);
        hub.subscribe(&topic, 2, &up_to_date);
        assert!(take(&up_to_date).is_empty());
        assert_eq!(hub.apply(&state(4)), Applied::FannedOut { subscribers: 2 });
        assert_eq!(take(&behind), vec![4]);
        assert_eq!(take(&up_to_date), vec![4]);
    }

    #[test]
    fn unused_topics_are_forgotten() {
        let hub = hub();
        let topic = state(0).topic;
        let mailbox = Mailbox::new();
        mailbox.open(&topic, 0);
        hub.subscribe(&topic, 1, &mailbox);
        assert_eq!(hub.topic_stats().len(), 1);
        hub.unsubscribe(&topic, 1);
        assert!(hub.topic_stats().is_empty());
    }

    #[test]
    fn counts_acks_for_the_current_version_only() {
        let hub = hub();
        let topic = state(0).topic;
        hub.apply(&state(1));
        hub.record_ack(&topic, 1);
        hub.apply(&state(2));
        hub.record_ack(&topic, 1);
        hub.record_ack(&topic, 2);
        hub.record_ack(&topic, 2);
        assert_eq!(hub.topic_stats()[0].acks, 2);
    }
}
