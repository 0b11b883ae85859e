//! Tier 2: one node's fan-out from topics to its connections.
//!
//! Each published topic keeps its current encoded state and its subscribers, spread over shards
//! that are locked one at a time, so subscribing never waits for a whole fan-out and no lock
//! covers every connection. A state is serialized once per node ([`EncodedState::encode`]) and
//! every connection shares the same bytes.
//!
//! A topic that has no state on this node (an event created but not published yet, or a name a
//! device made up) gets no channel: its subscribers wait in a small map of their own, bounded by
//! [`HubConfig::max_unpublished_topics`], and move into the topic's channel when its first state
//! arrives. So made-up names cost a few bytes each, never take the topics map's write lock and
//! never fill the budget of topics that are published.
//!
//! Each topic has two lanes. Its **current state** (the critical lane: stage states) is what
//! the topic's version, catch-up and the statistics go by. Its **newest best-effort message**
//! (a viewer count, a score ticker, published with `"priority":"best_effort"`) is kept apart:
//! it never becomes the current state nor changes the topic's version, and it is offered to a
//! new subscriber after the current state, when it is newer than that state (a device that
//! joins mid-event shows the newest count at once rather than at the next tick). A best-effort
//! message older than the current state is dropped: it would reach devices after a newer state.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringside_protocol::admin::{BroadcastRecord, TopicStats, TopicVersion};
use ringside_protocol::{EventState, Priority, Topic};
use ringside_sync_util::{LockExt, RwLockExt};
use ringside_telemetry::{Counter, Gauge, Histogram, Registry};
use tokio::sync::watch;

use crate::mailbox::{Mailbox, Offer};
use crate::record::DeliveryRecord;

/// Subscriber shards per topic. A fan-out locks one shard at a time; a subscribe locks one.
const SUBSCRIBER_SHARDS: usize = 16;

/// One shard of a topic's subscribers, by connection id.
type SubscriberShard = Mutex<HashMap<u64, Arc<Mailbox>>>;

/// A hub's limits.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most topics without a state that connections of this node may hold at once. Default
    /// 16,384: far more events than are created ahead of their first publish, while made-up
    /// names (about 200 bytes each here) stay a bounded few MiB. Over it a subscribe to another such topic is
    /// refused ([`TopicLimit`]); topics with a state are never refused.
    pub max_unpublished_topics: usize,
    /// Stage versions per topic whose delivery records (subscribed, sent, acked, ack latency)
    /// the node keeps for the broadcast report. Default 20: a whole event's stages with room
    /// for corrections, at about 250 bytes each; older records are forgotten first.
    pub broadcasts_per_topic: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_unpublished_topics: 16_384,
            broadcasts_per_topic: 20,
        }
    }
}

/// A subscribe refused because the node holds its limit of topics without a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node holds its limit of {limit} topics that have no state yet; retry later")]
pub struct TopicLimit {
    pub limit: usize,
}

/// A state encoded once as its WebSocket frame, shared by every connection that sends it.
#[derive(Debug)]
pub struct EncodedState {
    pub topic: Topic,
    pub version: u64,
    pub published_at_ms: u64,
    /// The lane: `critical` for a stage state; any other class travels in the best-effort
    /// lane (the control plane publishes only `critical` and `best_effort`).
    pub priority: Priority,
    /// The complete WebSocket text frame of the `state` (header and JSON): every connection
    /// writes these same bytes (a reference count, no copy, no per-connection framing).
    pub wire: Bytes,
    /// When this node encoded it: the start of the node's own fan-out.
    pub encoded_at: Instant,
    /// The delivery record of a stage state the hub made current (none for best-effort
    /// messages): every write of these bytes counts there.
    pub record: Option<Arc<DeliveryRecord>>,
}

impl EncodedState {
    pub fn encode(state: &EventState) -> Self {
        Self {
            topic: state.topic.clone(),
            version: state.version,
            published_at_ms: state.published_at_ms,
            priority: state.priority,
            wire: text_frame(ringside_protocol::frame::encode_state(state).as_bytes()),
            encoded_at: Instant::now(),
            record: None,
        }
    }

    /// A best-effort message rather than a stage state.
    pub fn is_best_effort(&self) -> bool {
        !self.priority.is_critical()
    }

    /// Counts `connections` more connections written this version in its delivery record.
    pub(crate) fn count_sent(&self, connections: u64) {
        if let Some(record) = &self.record {
            record.add_sent(connections);
        }
    }
}

/// A server-to-client WebSocket text frame holding `payload` (RFC 6455 §5.2: final, unmasked,
/// the shortest length encoding).
fn text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(FIN_TEXT);
    match payload.len() {
        len @ 0..126 => frame.push(len as u8),
        len @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// What every state written to a socket counts, whoever wrote it (the fan-out directly or the
/// connection's task).
#[derive(Debug)]
pub struct DeliveryMetrics {
    messages_sent: Arc<Counter>,
    bytes_sent: Arc<Counter>,
    publish_to_send: Arc<Histogram>,
    fanout: Arc<Histogram>,
}

impl DeliveryMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            messages_sent: registry
                .counter("ringside_messages_sent_total", "State frames written to sockets."),
            bytes_sent: registry
                .counter("ringside_bytes_sent_total", "Bytes of state frames written to sockets."),
            publish_to_send: registry.latency_histogram(
                "ringside_publish_to_send_seconds",
                "Time from the control plane accepting a publish to the state being written to a socket (live fan-out of stage states only; millisecond resolution).",
            ),
            fanout: registry.latency_histogram(
                "ringside_fanout_seconds",
                "Time from this node encoding a state to writing it to a socket (live fan-out of stage states only).",
            ),
        }
    }

    /// Counts `state` written to one socket by a connection's task in the metrics; `live` when
    /// a fan-out offered it (a catch-up state's publish may be long past, so it is no latency
    /// sample). Best-effort messages are counted as sent but are no latency sample either: the
    /// histograms measure the state path. (The version's delivery record counts connections,
    /// not writes: the mailbox adds to it when a connection is first written a version.)
    pub fn sent(&self, state: &EncodedState, live: bool) {
        self.count_in_metrics(state, live);
    }

    fn count_in_metrics(&self, state: &EncodedState, live: bool) {
        self.messages_sent.increment();
        self.bytes_sent.add(state.wire.len() as u64);
        if live && !state.is_best_effort() {
            self.fanout.observe(state.encoded_at.elapsed());
            self.publish_to_send.observe(Duration::from_millis(
                ringside_protocol::unix_now_ms().saturating_sub(state.published_at_ms),
            ));
        }
    }
}

/// A state just made current ([`Hub::make_current`]), to offer to its subscribers.
#[derive(Debug)]
pub struct Fanout {
    channel: Arc<TopicChannel>,
    encoded: Arc<EncodedState>,
}

impl Fanout {
    /// The subscribers are spread over this many shards; [`Hub::fan_out`] takes a range of them.
    pub const SHARDS: usize = SUBSCRIBER_SHARDS;

    pub fn subscribers(&self) -> u64 {
        self.channel.subscribers.load(Ordering::Acquire)
    }
}

/// The result of [`Hub::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state became current (a best-effort message: its topic's newest best-effort
    /// message) and was offered to `subscribers` connections.
    FannedOut { subscribers: usize },
    /// The hub already held this version or a newer one (a best-effort message: or a newer
    /// state).
    Stale,
}

/// Hub counters, exported on `/metrics`.
#[derive(Debug)]
pub struct HubMetrics {
    pub states_applied: Arc<Counter>,
    pub states_stale: Arc<Counter>,
    pub states_conflated: Arc<Counter>,
    /// States the bus consumer replaced with a newer state of their topic before their fan-out
    /// started (newest wins).
    pub states_superseded: Arc<Counter>,
    /// Bus feeds reopened after one failed.
    pub feed_restarts: Arc<Counter>,
    /// Topics without a state that connections hold.
    pub unpublished_topics: Arc<Gauge>,
    /// Subscribes refused at the limit of topics without a state.
    pub topic_limit_refusals: Arc<Counter>,
    pub acks: Arc<Counter>,
    /// Best-effort messages that became their topic's newest and were fanned out.
    pub best_effort_applied: Arc<Counter>,
    /// Unsent best-effort messages replaced in a connection's mailbox by a newer one of their
    /// topic.
    pub best_effort_conflated: Arc<Counter>,
    /// Unsent best-effort messages a connection dropped because it was behind: a newer state
    /// of their topic arrived while they waited, and states go first.
    pub best_effort_dropped_connection_behind: Arc<Counter>,
    /// Best-effort messages dropped because the node was behind: replaced by a newer one, or
    /// overtaken by a newer state, while they waited for their fan-out, or read while the bus
    /// consumer held its limit of waiting topics.
    pub best_effort_dropped_node_behind: Arc<Counter>,
    pub deliveries: DeliveryMetrics,
}

impl HubMetrics {
    pub fn new(registry: &Registry) -> Self {
        let [
            states_applied,
            states_stale,
            states_conflated,
            states_superseded,
        ] = registry.counter_family(
            "ringside_hub_states_total",
            "States by what became of them: applied (became current), stale (the hub held \
                 the same or a newer version), conflated (unsent, replaced by a newer version \
                 before a slow connection took it), superseded (replaced by a newer state of \
                 their topic before their fan-out started).",
            "outcome",
            ["applied", "stale", "conflated", "superseded"],
        );
        let [
            best_effort_applied,
            best_effort_conflated,
            best_effort_dropped_connection_behind,
            best_effort_dropped_node_behind,
        ] = registry.counter_family(
            "ringside_hub_best_effort_total",
            "Best-effort messages by what became of them: applied (became their topic's newest \
             best-effort message and were fanned out, never the topic's state), conflated \
             (unsent, replaced in a connection's mailbox by a newer one), \
             dropped_connection_behind (unsent, a newer state of their topic arrived while the \
             connection was behind), dropped_node_behind (dropped before their fan-out: \
             replaced or overtaken while waiting, or read while the bus consumer held its limit \
             of waiting topics).",
            "outcome",
            [
                "applied",
                "conflated",
                "dropped_connection_behind",
                "dropped_node_behind",
            ],
        );
        Self {
            states_applied,
            states_stale,
            states_conflated,
            states_superseded,
            feed_restarts: registry.counter(
                "ringside_bus_feed_restarts_total",
                "Bus feeds reopened after one failed; the node is unready until the new feed has caught up.",
            ),
            unpublished_topics: registry.gauge(
                "ringside_hub_unpublished_topics",
                "Topics without a state on this node that connections hold.",
            ),
            topic_limit_refusals: registry.counter(
                "ringside_hub_topic_limit_refusals_total",
                "Subscribes refused because the node held its limit of topics without a state.",
            ),
            acks: registry.counter("ringside_acks_total", "Acks received from devices."),
            best_effort_applied,
            best_effort_conflated,
            best_effort_dropped_connection_behind,
            best_effort_dropped_node_behind,
            deliveries: DeliveryMetrics::new(registry),
        }
    }
}

/// A topic's current state and its newest best-effort message, each encoded once.
#[derive(Debug, Default, Clone)]
struct Lanes {
    state: Option<Arc<EncodedState>>,
    best_effort: Option<Arc<EncodedState>>,
}

#[derive(Debug)]
pub(crate) struct TopicChannel {
    lanes: RwLock<Lanes>,
    pub(crate) shards: Box<[SubscriberShard]>,
    subscribers: AtomicU64,
    /// The delivery records of the topic's last stage versions, oldest first, at most
    /// [`HubConfig::broadcasts_per_topic`]. Written once per version; read by acks (to find
    /// their version's record) and by reports.
    history: RwLock<VecDeque<Arc<DeliveryRecord>>>,
}

impl TopicChannel {
    /// A channel for a topic's first state, with the subscribers that waited for it.
    fn with_subscribers(waiting: HashMap<u64, Arc<Mailbox>>) -> Self {
        let channel = Self {
            lanes: RwLock::default(),
            shards: (0..SUBSCRIBER_SHARDS).map(|_| Mutex::default()).collect(),
            subscribers: AtomicU64::new(waiting.len() as u64),
            history: RwLock::default(),
        };
        for (connection, mailbox) in waiting {
            channel.shard(connection).insert(connection, mailbox);
        }
        channel
    }

    fn insert(&self, connection: u64, mailbox: &Arc<Mailbox>) {
        if self
            .shard(connection)
            .insert(connection, mailbox.clone())
            .is_none()
        {
            self.subscribers.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn remove(&self, connection: u64) -> bool {
        let removed = self.shard(connection).remove(&connection).is_some();
        if removed {
            self.subscribers.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    fn shard(&self, connection: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Mailbox>>> {
        let index = (connection % SUBSCRIBER_SHARDS as u64) as usize;
        self.shards[index].locked()
    }

    fn lanes(&self) -> Lanes {
        self.lanes.read_locked().clone()
    }

    /// Keeps `record`, in version order, forgetting the oldest beyond `kept`.
    fn remember(&self, record: Arc<DeliveryRecord>, kept: usize) {
        let mut history = self.history.write_locked();
        let at = history.partition_point(|held| held.version < record.version);
        history.insert(at, record);
        while history.len() > kept {
            history.pop_front();
        }
    }

    /// The record of `version`, if the topic still keeps it.
    fn record(&self, version: u64) -> Option<Arc<DeliveryRecord>> {
        self.history
            .read_locked()
            .iter()
            .rev()
            .find(|record| record.version == version)
            .cloned()
    }

    fn records(&self) -> Vec<Arc<DeliveryRecord>> {
        self.history.read_locked().iter().cloned().collect()
    }

    fn current(&self) -> Option<Arc<EncodedState>> {
        self.lanes.read_locked().state.clone()
    }
}

/// Subscribers of topics without a state, by topic and connection.
type UnpublishedTopics = HashMap<Topic, HashMap<u64, Arc<Mailbox>>>;

/// One node's topics and their subscribers.
///
/// A state applied to the hub is encoded once and offered to every subscribed connection's
/// [`Mailbox`]; a connection that subscribes later is offered the current state at once. A
/// mailbox without a socket ([`Mailbox::new`]) keeps what it is offered for its connection's
/// task to take:
///
/// ```
/// use ringside_broadcaster::{Applied, Hub, HubMetrics, Mailbox};
/// use ringside_protocol::{EventState, Payload, Priority, Stage, Topic};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new(HubMetrics::new(&ringside_telemetry::Registry::new()));
/// let topic = Topic::parse("event:fight-night")?;
/// let live = EventState {
///     topic: topic.clone(),
///     version: 7,
///     stage: Stage::parse("LIVE")?,
///     published_at_ms: ringside_protocol::unix_now_ms(),
///     payload: Payload::parse(r#"{"hero":"main-card"}"#)?,
///     priority: Priority::Critical,
///     fetch_within_ms: None,
/// };
///
/// // A connection subscribes (its mailbox opens the topic with the version it holds, 0: none).
/// let mailbox = Mailbox::new();
/// mailbox.open(&topic, 0);
/// hub.subscribe(&topic, 1, &mailbox)?;
///
/// // The state is made current and offered to the one subscriber; the same version again is
/// // stale.
/// assert_eq!(hub.apply(&live), Applied::FannedOut { subscribers: 1 });
/// assert_eq!(hub.apply(&live), Applied::Stale);
/// assert_eq!(hub.version(&topic), 7);
///
/// // The connection's task takes the state, encoded once as its WebSocket frame.
/// let mut pending = Vec::new();
/// mailbox.take_pending(&mut pending);
/// assert_eq!(pending.len(), 1);
/// assert_eq!(pending[0].state.version, 7);
/// assert!(!pending[0].catch_up);
///
/// // A connection subscribing later is offered the current state as a catch-up.
/// let late = Mailbox::new();
/// late.open(&topic, 0);
/// hub.subscribe(&topic, 2, &late)?;
/// late.take_pending(&mut pending);
/// assert!(pending.last().is_some_and(|delivery| delivery.catch_up));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Hub {
    /// Topics that have a state. Written only when a topic gets its first state; a channel is
    /// never removed (topics with a state are the events the control plane published).
    topics: RwLock<HashMap<Topic, Arc<TopicChannel>>>,
    /// Subscribers of topics without a state, at most `max_unpublished_topics` topics. Lock
    /// order: this lock before `topics` and before any shard.
    unpublished: Mutex<UnpublishedTopics>,
    config: HubConfig,
    ready: watch::Sender<bool>,
    ready_flag: AtomicBool,
    pub(crate) metrics: HubMetrics,
}

impl Hub {
    pub fn new(metrics: HubMetrics) -> Self {
        Self::with_config(HubConfig::default(), metrics)
    }

    pub fn with_config(config: HubConfig, metrics: HubMetrics) -> Self {
        Self {
            topics: RwLock::default(),
            unpublished: Mutex::default(),
            config,
            ready: watch::Sender::new(false),
            ready_flag: AtomicBool::new(false),
            metrics,
        }
    }

    pub(crate) fn channel(&self, topic: &Topic) -> Option<Arc<TopicChannel>> {
        self.topics.read_locked().get(topic).cloned()
    }

    fn unpublished(&self) -> std::sync::MutexGuard<'_, UnpublishedTopics> {
        self.unpublished.locked()
    }

    /// The channel of `topic`, created for its first state with the subscribers that waited for
    /// it. Created under the `unpublished` lock, so that a subscriber is always either waiting
    /// there or in the channel, never between.
    fn channel_for_state(&self, topic: &Topic) -> Arc<TopicChannel> {
        if let Some(channel) = self.channel(topic) {
            return channel;
        }
        let mut unpublished = self.unpublished();
        if let Some(channel) = self.channel(topic) {
            return channel;
        }
        let waiting = unpublished.remove(topic);
        if waiting.is_some() {
            self.metrics.unpublished_topics.decrement();
        }
        let channel = Arc::new(TopicChannel::with_subscribers(waiting.unwrap_or_default()));
        self.topics
            .write_locked()
            .insert(topic.clone(), channel.clone());
        drop(unpublished);
        channel
    }

    /// Makes `state` current for its topic if it is newer than what the hub holds, and offers
    /// it to every subscriber, on the calling thread. Encodes the state once. A best-effort
    /// message becomes its topic's newest best-effort message instead ([`Hub::make_current`]).
    pub fn apply(&self, state: &EventState) -> Applied {
        match self.make_current(state) {
            Some(fanout) => Applied::FannedOut {
                subscribers: self.fan_out(&fanout, 0..SUBSCRIBER_SHARDS),
            },
            None => Applied::Stale,
        }
    }

    /// The first half of [`Hub::apply`]: makes `state` current if it is newer than what the hub
    /// holds, encoded once, and returns the fan-out still to do ([`Hub::fan_out`]). A
    /// best-effort message becomes its topic's newest best-effort message if it is newer than
    /// both the one held and the current state; the current state and the topic's version are
    /// left as they are.
    pub fn make_current(&self, state: &EventState) -> Option<Fanout> {
        if !state.priority.is_critical() {
            return self.make_newest_best_effort(state);
        }
        // A node re-reading the bus (startup after seeding from the store, a new consumer) sees
        // mostly states it holds: drop those before paying for the encoding. The check under
        // the lock below stays the one that decides.
        if self.version(&state.topic) >= state.version {
            self.metrics.states_stale.increment();
            return None;
        }
        let mut encoded = EncodedState::encode(state);
        let channel = self.channel_for_state(&state.topic);
        let record = Arc::new(DeliveryRecord::new(
            state.topic.clone(),
            state.version,
            state.stage.clone(),
            state.published_at_ms,
            channel.subscribers.load(Ordering::Acquire),
        ));
        encoded.record = Some(record.clone());
        let encoded = Arc::new(encoded);
        {
            let mut lanes = channel.lanes.write_locked();
            if lanes
                .state
                .as_ref()
                .is_some_and(|held| held.version >= encoded.version)
            {
                drop(lanes);
                self.metrics.states_stale.increment();
                return None;
            }
            lanes.state = Some(encoded.clone());
        }
        channel.remember(record, self.config.broadcasts_per_topic.max(1));
        self.metrics.states_applied.increment();
        Some(Fanout { channel, encoded })
    }

    /// The best-effort half of [`Hub::make_current`].
    fn make_newest_best_effort(&self, message: &EventState) -> Option<Fanout> {
        // Judged without encoding first, as for states; the check under the lock decides.
        let judge = |lanes: &Lanes| {
            if lanes
                .state
                .as_ref()
                .is_some_and(|state| state.version > message.version)
            {
                // Overtaken by a newer state: devices must not get it after that state.
                Some(&self.metrics.best_effort_dropped_node_behind)
            } else if lanes
                .best_effort
                .as_ref()
                .is_some_and(|held| held.version >= message.version)
            {
                Some(&self.metrics.states_stale)
            } else {
                None
            }
        };
        if let Some(dropped) = self.channel(&message.topic).and_then(|c| judge(&c.lanes())) {
            dropped.increment();
            return None;
        }
        let encoded = Arc::new(EncodedState::encode(message));
        let channel = self.channel_for_state(&message.topic);
        {
            let mut lanes = channel.lanes.write_locked();
            if let Some(dropped) = judge(&lanes) {
                drop(lanes);
                dropped.increment();
                return None;
            }
            lanes.best_effort = Some(encoded.clone());
        }
        self.metrics.best_effort_applied.increment();
        Some(Fanout { channel, encoded })
    }

    /// Offers a state made current to the subscribers in `shards` (of
    /// [`Fanout::SHARDS`]); returns how many took it. Disjoint ranges may run on different
    /// threads at once.
    pub fn fan_out(&self, fanout: &Fanout, shards: Range<usize>) -> usize {
        let Fanout { channel, encoded } = fanout;
        // Subscribers that join after their shard was read take the new current state
        // themselves (see `subscribe`), so none is missed; one that leaves after it has closed
        // or sealed its mailbox first, which then ignores the offer.
        let mut offered = 0;
        let mut written = 0;
        let mut conflated = 0;
        let mut dropped_best_effort = 0;
        let mut subscribers = Vec::new();
        for shard in &channel.shards[shards] {
            // The shard is locked only to copy it: the offers below are system calls, and
            // subscribes and unsubscribes on the runtime must not wait for them.
            subscribers.extend(shard.locked().values().cloned());
            for mailbox in subscribers.drain(..) {
                let offer = mailbox.offer(encoded);
                match offer {
                    Offer::Written => {
                        offered += 1;
                        written += 1;
                        self.metrics.deliveries.count_in_metrics(encoded, true);
                    }
                    Offer::Queued { .. } => offered += 1,
                    Offer::Conflated { .. } => {
                        offered += 1;
                        conflated += 1;
                    }
                    Offer::Ignored => {}
                }
                dropped_best_effort += u64::from(offer.dropped_best_effort());
            }
        }
        // Once per pass, not per socket: passes over other shards may run on other threads.
        encoded.count_sent(written);
        if encoded.is_best_effort() {
            self.metrics.best_effort_conflated.add(conflated);
        } else {
            self.metrics.states_conflated.add(conflated);
        }
        self.metrics
            .best_effort_dropped_connection_behind
            .add(dropped_best_effort);
        offered
    }

    /// Subscribes connection `connection` to `topic`, delivering into `mailbox`. The mailbox
    /// must already have the topic open (with the connection's `since`); the current state is
    /// offered to it, so it arrives when it is newer than `since`. A topic without a state is
    /// refused when the node holds its limit of such topics.
    pub fn subscribe(
        &self,
        topic: &Topic,
        connection: u64,
        mailbox: &Arc<Mailbox>,
    ) -> Result<(), TopicLimit> {
        if let Some(channel) = self.channel(topic) {
            subscribe_to_channel(&channel, connection, mailbox);
            return Ok(());
        }
        let mut unpublished = self.unpublished();
        // Looked up again under the lock: a first state creates the channel under it.
        if let Some(channel) = self.channel(topic) {
            drop(unpublished);
            subscribe_to_channel(&channel, connection, mailbox);
            return Ok(());
        }
        let limit = self.config.max_unpublished_topics;
        if let Some(waiting) = unpublished.get_mut(topic) {
            waiting.insert(connection, mailbox.clone());
        } else if unpublished.len() >= limit {
            drop(unpublished);
            self.metrics.topic_limit_refusals.increment();
            return Err(TopicLimit { limit });
        } else {
            unpublished.insert(
                topic.clone(),
                HashMap::from([(connection, mailbox.clone())]),
            );
            self.metrics.unpublished_topics.increment();
        }
        Ok(())
    }

    pub fn unsubscribe(&self, topic: &Topic, connection: u64) {
        if self
            .channel(topic)
            .is_some_and(|channel| channel.remove(connection))
        {
            return;
        }
        let mut unpublished = self.unpublished();
        if let Some(waiting) = unpublished.get_mut(topic)
            && waiting.remove(&connection).is_some()
        {
            // Forget a topic nobody waits for: made-up names leave nothing behind.
            if waiting.is_empty() {
                unpublished.remove(topic);
                self.metrics.unpublished_topics.decrement();
            }
            return;
        }
        drop(unpublished);
        // Neither: a first state moved the subscriber into the channel after the first look-up
        // (that move happens under the lock just released, so it is complete now).
        if let Some(channel) = self.channel(topic) {
            channel.remove(connection);
        }
    }

    /// What every state written to a socket counts.
    pub fn deliveries(&self) -> &DeliveryMetrics {
        &self.metrics.deliveries
    }

    /// Counts a connection's first ack of a version it was written ([`Mailbox::acknowledge`])
    /// in that version's delivery record, while the topic keeps it.
    pub fn record_ack(&self, topic: &Topic, version: u64) {
        self.metrics.acks.increment();
        if let Some(record) = self.channel(topic).and_then(|c| c.record(version)) {
            record.add_ack(ringside_protocol::unix_now_ms());
        }
    }

    /// The delivery records `topic` keeps, oldest first (empty for a topic without a state).
    pub fn broadcast_records(&self, topic: &Topic) -> Vec<BroadcastRecord> {
        self.channel(topic)
            .map(|channel| channel.records().iter().map(|r| r.snapshot()).collect())
            .unwrap_or_default()
    }

    /// Every topic's current version and delivery records, as a node reports them. The topics
    /// map is read-locked only to copy its entries.
    pub fn all_broadcast_records(&self) -> (Vec<TopicVersion>, Vec<BroadcastRecord>) {
        let by_topic = self.broadcast_records_by_topic();
        let mut current = Vec::with_capacity(by_topic.len());
        let mut records = Vec::new();
        for (held, kept) in by_topic {
            current.push(held);
            records.extend(kept);
        }
        (current, records)
    }

    /// [`Hub::all_broadcast_records`] topic by topic, so that a node can report only the
    /// topics whose records changed.
    pub fn broadcast_records_by_topic(&self) -> Vec<(TopicVersion, Vec<BroadcastRecord>)> {
        let channels: Vec<(Topic, Arc<TopicChannel>)> = self
            .topics
            .read_locked()
            .iter()
            .map(|(topic, channel)| (topic.clone(), channel.clone()))
            .collect();
        channels
            .into_iter()
            .filter_map(|(topic, channel)| reported_records(topic, &channel))
            .collect()
    }

    /// `topic`'s current version and delivery records, as [`Hub::all_broadcast_records`]
    /// reports them, without reading any other topic: one event's report costs its own
    /// records. `None` for a topic without a state.
    pub fn topic_broadcast_records(
        &self,
        topic: &Topic,
    ) -> Option<(TopicVersion, Vec<BroadcastRecord>)> {
        let channel = self.channel(topic)?;
        reported_records(topic.clone(), &channel)
    }

    /// The current version of `topic` (its current state's), 0 when it has none. Best-effort
    /// messages never change it.
    pub fn version(&self, topic: &Topic) -> u64 {
        self.channel(topic)
            .and_then(|c| c.current())
            .map_or(0, |s| s.version)
    }

    /// The version of `topic`'s newest best-effort message, 0 when it has none.
    pub fn best_effort_version(&self, topic: &Topic) -> u64 {
        self.channel(topic)
            .and_then(|c| c.lanes().best_effort)
            .map_or(0, |m| m.version)
    }

    /// Statistics of the topics that have a state, by topic name. The topics map is read-locked
    /// only to copy its entries: the sort and the reads of every channel happen outside it.
    pub fn topic_stats(&self) -> Vec<TopicStats> {
        let channels: Vec<(Topic, Arc<TopicChannel>)> = self
            .topics
            .read_locked()
            .iter()
            .map(|(topic, channel)| (topic.clone(), channel.clone()))
            .collect();
        let mut stats: Vec<TopicStats> = channels
            .into_iter()
            .filter_map(|(topic, channel)| {
                // A channel is created just before its first state is stored.
                let version = channel.current()?.version;
                let acks = channel.record(version).map_or(0, |record| record.acked());
                Some(TopicStats {
                    topic,
                    subscribers: channel.subscribers.load(Ordering::Relaxed),
                    version,
                    acks,
                })
            })
            .collect();
        stats.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        stats
    }

    /// Topics without a state that connections hold.
    pub fn unpublished_topics(&self) -> usize {
        self.unpublished().len()
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

/// Registers first, then reads the current state: a concurrent fan-out either sees this
/// subscriber or has already replaced the current state that is read here. The newest
/// best-effort message follows the state when it is newer than it.
fn subscribe_to_channel(channel: &TopicChannel, connection: u64, mailbox: &Arc<Mailbox>) {
    channel.insert(connection, mailbox);
    let Lanes { state, best_effort } = channel.lanes();
    if let Some(state) = &state {
        mailbox.offer_catch_up(state);
    }
    if let Some(message) = best_effort
        && state.is_none_or(|state| message.version > state.version)
    {
        mailbox.offer_catch_up(&message);
    }
}

/// A channel's current version and records, `None` without a state (a topic without a state
/// has nothing to report).
fn reported_records(
    topic: Topic,
    channel: &TopicChannel,
) -> Option<(TopicVersion, Vec<BroadcastRecord>)> {
    let state = channel.current()?;
    let records = channel
        .records()
        .iter()
        .map(|record| record.snapshot())
        .collect();
    Some((
        TopicVersion {
            topic,
            version: state.version,
        },
        records,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::{Payload, Stage};

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
            priority: ringside_protocol::Priority::Critical,
            fetch_within_ms: None,
        }
    }

    fn best_effort(version: u64) -> EventState {
        EventState {
            priority: ringside_protocol::Priority::BestEffort,
            ..state(version)
        }
    }

    fn take(mailbox: &Mailbox) -> Vec<u64> {
        let mut out = Vec::new();
        mailbox.take_pending(&mut out);
        out.iter().map(|d| d.state.version).collect()
    }

    #[test]
    fn states_are_framed_as_tungstenite_reads_them() {
        use tungstenite::protocol::frame::FrameHeader;
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let frame = text_frame(&payload);
            let mut cursor = std::io::Cursor::new(&frame[..]);
            let (header, length) = FrameHeader::parse(&mut cursor)
                .expect("valid header")
                .expect("complete header");
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert_eq!(header.mask, None);
            assert_eq!(length, len as u64);
            assert_eq!(&frame[cursor.position() as usize..], &payload[..]);
        }
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
        hub.subscribe(&topic, 1, &behind).expect("subscribed");
        assert_eq!(take(&behind), vec![3]);
        let up_to_date = Mailbox::new();
        up_to_date.open(&topic, 3);
        hub.subscribe(&topic, 2, &up_to_date).expect("subscribed");
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
        hub.subscribe(&topic, 1, &mailbox).expect("subscribed");
        assert_eq!(hub.unpublished_topics(), 1);
        hub.unsubscribe(&topic, 1);
        assert_eq!(hub.unpublished_topics(), 0);
        assert!(hub.topic_stats().is_empty());
    }

    fn made_up(index: usize) -> Topic {
        Topic::parse(&format!("event:made-up-{index}")).expect("topic")
    }

    #[test]
    fn topics_without_a_state_get_no_channel_and_are_bounded_but_published_ones_never() {
        let hub = Hub::with_config(
            HubConfig {
                max_unpublished_topics: 2,
                ..HubConfig::default()
            },
            HubMetrics::new(&Registry::new()),
        );
        let published = state(0).topic;
        hub.apply(&state(1));
        let mailbox = Mailbox::new();
        for index in 0..2 {
            hub.subscribe(&made_up(index), 1, &mailbox)
                .expect("within the limit");
            assert!(
                hub.channel(&made_up(index)).is_none(),
                "no shards for {index}"
            );
        }
        assert_eq!(
            hub.subscribe(&made_up(2), 1, &mailbox),
            Err(TopicLimit { limit: 2 })
        );
        // A topic that already waits, and a topic with a state, are never refused.
        hub.subscribe(&made_up(0), 2, &mailbox)
            .expect("already waiting");
        mailbox.open(&published, 0);
        hub.subscribe(&published, 1, &mailbox).expect("published");
        assert_eq!(take(&mailbox), vec![1]);
        // Only topics with a state are reported.
        let reported: Vec<_> = hub.topic_stats().into_iter().map(|t| t.topic).collect();
        assert_eq!(reported, vec![published]);
        // Leaving gives the place back.
        hub.unsubscribe(&made_up(1), 1);
        hub.subscribe(&made_up(2), 1, &mailbox)
            .expect("a place was released");
        assert_eq!(hub.metrics.topic_limit_refusals.get(), 1);
    }

    #[test]
    fn subscribers_waiting_for_a_first_state_receive_it() {
        let hub = hub();
        let topic = state(0).topic;
        let waiting = Mailbox::new();
        waiting.open(&topic, 0);
        hub.subscribe(&topic, 1, &waiting).expect("subscribed");
        let left = Mailbox::new();
        left.open(&topic, 0);
        hub.subscribe(&topic, 2, &left).expect("subscribed");
        hub.unsubscribe(&topic, 2);
        assert_eq!(hub.apply(&state(1)), Applied::FannedOut { subscribers: 1 });
        assert_eq!(take(&waiting), vec![1]);
        assert_eq!(hub.unpublished_topics(), 0);
        assert_eq!(hub.topic_stats()[0].subscribers, 1);
        hub.unsubscribe(&topic, 1);
        assert_eq!(hub.topic_stats()[0].subscribers, 0);
    }

    #[test]
    fn a_flood_of_made_up_topic_subscriptions_never_takes_the_topics_write_lock() {
        let hub = Arc::new(hub());
        // Hold a read lock, as the fan-outs, subscribes and acks of published topics do: a
        // subscribe that wanted the write lock would wait for it to go.
        let readers = hub.topics.read().expect("read lock");
        let (done, finished) = std::sync::mpsc::channel();
        let flood = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let mailbox = Mailbox::new();
                for round in 0..1_000 {
                    let topic = made_up(round % 7);
                    mailbox.open(&topic, 0);
                    hub.subscribe(&topic, 1, &mailbox).expect("subscribed");
                    hub.unsubscribe(&topic, 1);
                    mailbox.close(&topic);
                }
                done.send(()).expect("done");
            })
        };
        let outcome = finished.recv_timeout(Duration::from_secs(10));
        drop(readers);
        flood.join().expect("flood");
        assert!(outcome.is_ok(), "a made-up topic waited for the write lock");
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

    #[test]
    fn best_effort_messages_never_change_the_current_state_or_the_version() {
        let hub = hub();
        let topic = state(0).topic;
        hub.apply(&state(3));
        assert_eq!(
            hub.apply(&best_effort(4)),
            Applied::FannedOut { subscribers: 0 }
        );
        assert_eq!(hub.version(&topic), 3);
        assert_eq!(hub.best_effort_version(&topic), 4);
        assert_eq!(hub.topic_stats()[0].version, 3);
        assert_eq!(hub.metrics.states_applied.get(), 1);
        assert_eq!(hub.metrics.best_effort_applied.get(), 1);
        // Repeats are stale; a message older than the current state is dropped.
        assert_eq!(hub.apply(&best_effort(4)), Applied::Stale);
        assert_eq!(hub.apply(&best_effort(2)), Applied::Stale);
        assert_eq!(hub.metrics.best_effort_dropped_node_behind.get(), 1);
        // The newest best-effort message follows the state as catch-up, only when newer.
        let joining = Mailbox::new();
        joining.open(&topic, 0);
        hub.subscribe(&topic, 1, &joining).expect("subscribed");
        assert_eq!(take(&joining), vec![3, 4]);
        hub.apply(&state(5));
        assert_eq!(hub.best_effort_version(&topic), 4);
        let after_a_state = Mailbox::new();
        after_a_state.open(&topic, 0);
        hub.subscribe(&topic, 2, &after_a_state)
            .expect("subscribed");
        assert_eq!(take(&after_a_state), vec![5]);
        // A state is never held back by a best-effort message, nor the other way round.
        assert_eq!(
            hub.apply(&best_effort(6)),
            Applied::FannedOut { subscribers: 2 }
        );
        assert_eq!(take(&joining), vec![5, 6]);
        assert_eq!(take(&after_a_state), vec![6]);
        assert_eq!(hub.apply(&state(7)), Applied::FannedOut { subscribers: 2 });
        assert_eq!(take(&after_a_state), vec![7]);
        // Acks count for the current state, whatever best-effort messages came between.
        hub.apply(&best_effort(8));
        hub.record_ack(&topic, 7);
        assert_eq!(hub.topic_stats()[0].acks, 1);
        assert_eq!(hub.version(&topic), 7);
    }

    #[test]
    fn a_connection_behind_counts_its_conflated_and_dropped_best_effort_messages() {
        let hub = hub();
        let topic = state(0).topic;
        let slow = Mailbox::new();
        slow.open(&topic, 0);
        hub.subscribe(&topic, 1, &slow).expect("subscribed");
        hub.apply(&state(1));
        for version in 2..=5 {
            hub.apply(&best_effort(version));
        }
        assert_eq!(hub.metrics.best_effort_conflated.get(), 3);
        hub.apply(&state(6));
        assert_eq!(hub.metrics.best_effort_dropped_connection_behind.get(), 1);
        assert_eq!(hub.metrics.states_conflated.get(), 1);
        assert_eq!(take(&slow), vec![6]);
    }

    #[test]
    fn each_version_records_its_subscribers_writes_and_first_acks_only() {
        let hub = Hub::with_config(
            HubConfig {
                broadcasts_per_topic: 2,
                ..HubConfig::default()
            },
            HubMetrics::new(&Registry::new()),
        );
        let topic = state(0).topic;
        hub.apply(&state(1));
        let behind = Mailbox::new();
        behind.open(&topic, 0);
        hub.subscribe(&topic, 1, &behind).expect("subscribed");
        let current = Mailbox::new();
        current.open(&topic, 1);
        hub.subscribe(&topic, 2, &current).expect("subscribed");
        // The catch-up is counted when the connection's task writes it.
        let mut taken = Vec::new();
        behind.take_pending(&mut taken);
        for delivery in &taken {
            hub.deliveries().sent(&delivery.state, !delivery.catch_up);
        }
        for (mailbox, version) in [(&behind, 1), (&behind, 1), (&current, 1)] {
            if mailbox.acknowledge(&topic, version) {
                hub.record_ack(&topic, version);
            }
        }
        let records = hub.broadcast_records(&topic);
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].subscribed, records[0].sent, records[0].acked),
            (0, 1, 1)
        );
        assert_eq!(records[0].ack_latency.counts.iter().sum::<u64>(), 1);
        hub.apply(&state(2));
        hub.apply(&best_effort(3));
        hub.apply(&state(4));
        let records = hub.broadcast_records(&topic);
        let versions: Vec<u64> = records.iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![2, 4], "the last two stage versions only");
        assert_eq!(records[1].subscribed, 2);
        let (current_versions, all) = hub.all_broadcast_records();
        assert_eq!(current_versions[0].version, 4);
        assert_eq!(all.len(), 2);
    }
}
