//! Tier 2: one node's fan-out from topics to its connections.
//!
//! Each topic keeps its current encoded state and its subscribers, spread over shards that are
//! locked one at a time, so subscribing never waits for a whole fan-out and no lock covers every
//! connection. A state is serialized once per node ([`EncodedState::encode`]) and every
//! connection shares the same bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::admin::TopicStats;
use protocol::{EventState, Topic};
use telemetry::{Counter, Histogram, Registry};
use tokio::sync::watch;

use crate::mailbox::{Mailbox, Offer};

/// Subscriber shards per topic. A fan-out locks one shard at a time; a subscribe locks one.
const SUBSCRIBER_SHARDS: usize = 16;

/// One shard of a topic's subscribers, by connection id.
type SubscriberShard = Mutex<HashMap<u64, Arc<Mailbox>>>;

/// A state encoded once as its WebSocket frame, shared by every connection that sends it.
#[derive(Debug)]
pub struct EncodedState {
    pub topic: Topic,
    pub version: u64,
    pub published_at_ms: u64,
    /// The complete WebSocket text frame of the `state` (header and JSON): every connection
    /// writes these same bytes (a reference count, no copy, no per-connection framing).
    pub wire: Bytes,
    /// When this node encoded it: the start of the node's own fan-out.
    pub encoded_at: Instant,
}

impl EncodedState {
    pub fn encode(state: &EventState) -> Self {
        Self {
            topic: state.topic.clone(),
            version: state.version,
            published_at_ms: state.published_at_ms,
            wire: text_frame(protocol::frame::encode_state(state).as_bytes()),
            encoded_at: Instant::now(),
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
                "Time from the control plane accepting a publish to the state being written to a socket (live fan-out only; millisecond resolution).",
            ),
            fanout: registry.latency_histogram(
                "ringside_fanout_seconds",
                "Time from this node encoding a state to writing it to a socket (live fan-out only).",
            ),
        }
    }

    /// Counts `state` written to one socket; `live` when a fan-out offered it (a catch-up
    /// state's publish may be long past, so it is no latency sample).
    pub fn sent(&self, state: &EncodedState, live: bool) {
        self.messages_sent.increment();
        self.bytes_sent.add(state.wire.len() as u64);
        if live {
            self.fanout.observe(state.encoded_at.elapsed());
            self.publish_to_send.observe(Duration::from_millis(
                protocol::unix_now_ms().saturating_sub(state.published_at_ms),
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
    /// States the bus consumer replaced with a newer state of their topic before their fan-out
    /// started (newest wins).
    pub states_superseded: Arc<Counter>,
    /// Bus feeds reopened after one failed.
    pub feed_restarts: Arc<Counter>,
    pub acks: Arc<Counter>,
    pub deliveries: DeliveryMetrics,
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
            states_superseded: registry.counter(
                "ringside_hub_states_superseded_total",
                "States replaced by a newer state of their topic before their fan-out started (newest wins).",
            ),
            feed_restarts: registry.counter(
                "ringside_bus_feed_restarts_total",
                "Bus feeds reopened after one failed; the node is unready until the new feed has caught up.",
            ),
            acks: registry.counter("ringside_acks_total", "Acks received from devices."),
            deliveries: DeliveryMetrics::new(registry),
        }
    }
}

#[derive(Debug)]
pub(crate) struct TopicChannel {
    current: RwLock<Option<Arc<EncodedState>>>,
    pub(crate) shards: Box<[SubscriberShard]>,
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
    pub(crate) metrics: HubMetrics,
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

    pub(crate) fn channel(&self, topic: &Topic) -> Option<Arc<TopicChannel>> {
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
    /// it to every subscriber, on the calling thread. Encodes the state once.
    pub fn apply(&self, state: &EventState) -> Applied {
        match self.make_current(state) {
            Some(fanout) => Applied::FannedOut {
                subscribers: self.fan_out(&fanout, 0..SUBSCRIBER_SHARDS),
            },
            None => Applied::Stale,
        }
    }

    /// The first half of [`Hub::apply`]: makes `state` current if it is newer than what the hub
    /// holds, encoded once, and returns the fan-out still to do ([`Hub::fan_out`]).
    pub fn make_current(&self, state: &EventState) -> Option<Fanout> {
        // A node re-reading the bus (startup after seeding from the store, a new consumer) sees
        // mostly states it holds: drop those before paying for the encoding. The check under
        // the lock below stays the one that decides.
        if self.version(&state.topic) >= state.version {
            self.metrics.states_stale.increment();
            return None;
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
            return None;
        };
        channel.ack_count.store(0, Ordering::Relaxed);
        channel
            .ack_version
            .store(encoded.version, Ordering::Relaxed);
        self.metrics.states_applied.increment();
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
        let mut conflated = 0;
        let mut subscribers = Vec::new();
        for shard in &channel.shards[shards] {
            // The shard is locked only to copy it: the offers below are system calls, and
            // subscribes and unsubscribes on the runtime must not wait for them.
            subscribers.extend(
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned(),
            );
            for mailbox in subscribers.drain(..) {
                match mailbox.offer(encoded) {
                    Offer::Written => {
                        offered += 1;
                        self.metrics.deliveries.sent(encoded, true);
                    }
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
        offered
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

    /// What every state written to a socket counts.
    pub fn deliveries(&self) -> &DeliveryMetrics {
        &self.metrics.deliveries
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
