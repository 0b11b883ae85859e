//! Tier 1: the bus that carries every state change to every gateway node.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ringside_protocol::{EventState, Topic};
use ringside_sync_util::LockExt;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::BroadcastError;
use crate::hub::{Applied, Fanout, Hub};
use futures_util::future::BoxFuture;

/// What a feed yields.
#[derive(Debug, Clone)]
pub enum FeedItem {
    State(Arc<EventState>),
    /// Everything published before the feed was opened has been yielded: the node now holds
    /// the latest state of every topic and may serve subscriptions.
    CaughtUp,
}

/// The tier-1 bus. Publishing resolves once the bus has accepted the state durably (for the
/// in-memory bus: once every feed can see it).
pub trait Bus: Send + Sync + 'static {
    fn publish(&self, state: EventState) -> BoxFuture<'_, Result<(), BroadcastError>>;

    /// A feed of the latest state of every topic (and its latest best-effort message, if
    /// any), then [`FeedItem::CaughtUp`], then every state and best-effort message published
    /// from then on. Messages of one topic arrive in version order; a feed may repeat one, so
    /// consumers drop anything not newer than what they hold. A node calls it again when its
    /// feed failed ([`run_bus_consumer`]).
    fn subscribe(&self) -> Box<dyn BusFeed>;
}

/// One node's view of the bus. An error ends the feed: the node becomes unready and opens a new
/// one.
pub trait BusFeed: Send {
    fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>>;
}

/// How many states a [`MemoryBus`] feed may fall behind before it resynchronizes from the
/// latest-state snapshot. Overflow policy: a lagging feed skips to the newest state of every
/// topic, which is all a consumer needs (state updates conflate).
pub const MEMORY_BUS_CAPACITY: usize = 1024;

/// The bus of a single-process deployment.
#[derive(Debug)]
pub struct MemoryBus {
    shared: Arc<MemoryBusShared>,
}

/// A topic and a lane (true: best-effort): what a compacted log keeps one record of.
type LaneKey = (Topic, bool);

#[derive(Debug)]
struct MemoryBusShared {
    /// Latest state of every topic, and its latest best-effort message: the equivalent of a
    /// compacted log keyed by topic and lane, so a best-effort message never replaces a state.
    latest: Mutex<HashMap<LaneKey, Arc<EventState>>>,
    sender: broadcast::Sender<Arc<EventState>>,
}

impl MemoryBusShared {
    /// The latest state of every topic (and best-effort message) and a receiver for
    /// everything after it, taken under one lock so that nothing falls between them. Popped
    /// from the back, states come first: a topic's best-effort message follows its state, as
    /// it did when published.
    fn snapshot(&self) -> (Vec<Arc<EventState>>, broadcast::Receiver<Arc<EventState>>) {
        let latest = self.latest.locked();
        let mut snapshot: Vec<_> = latest.values().cloned().collect();
        let receiver = self.sender.subscribe();
        drop(latest);
        snapshot.sort_by_key(|message| message.priority.is_critical());
        (snapshot, receiver)
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(MEMORY_BUS_CAPACITY);
        Self {
            shared: Arc::new(MemoryBusShared {
                latest: Mutex::default(),
                sender,
            }),
        }
    }
}

impl Bus for MemoryBus {
    fn publish(&self, state: EventState) -> BoxFuture<'_, Result<(), BroadcastError>> {
        let state = Arc::new(state);
        let mut latest = self.shared.latest.locked();
        let key = (state.topic.clone(), !state.priority.is_critical());
        let newer = latest
            .get(&key)
            .is_none_or(|held| held.version < state.version);
        if newer {
            latest.insert(key, state.clone());
        }
        // Sent under the lock so that a concurrent `snapshot` sees either the snapshot or the
        // message, never neither. No receivers is fine: no node is listening yet.
        let _no_receivers_is_fine = self.shared.sender.send(state);
        drop(latest);
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> Box<dyn BusFeed> {
        let (snapshot, receiver) = self.shared.snapshot();
        Box::new(MemoryFeed {
            shared: self.shared.clone(),
            snapshot,
            caught_up: false,
            receiver,
        })
    }
}

struct MemoryFeed {
    shared: Arc<MemoryBusShared>,
    /// States still to yield before `CaughtUp` (popped from the back).
    snapshot: Vec<Arc<EventState>>,
    caught_up: bool,
    receiver: broadcast::Receiver<Arc<EventState>>,
}

impl BusFeed for MemoryFeed {
    fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>> {
        Box::pin(async move {
            loop {
                if let Some(state) = self.snapshot.pop() {
                    return Ok(FeedItem::State(state));
                }
                if !self.caught_up {
                    self.caught_up = true;
                    return Ok(FeedItem::CaughtUp);
                }
                match self.receiver.recv().await {
                    Ok(state) => return Ok(FeedItem::State(state)),
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        tracing::warn!(skipped, "bus feed lagged; resynchronizing from snapshot");
                        (self.snapshot, self.receiver) = self.shared.snapshot();
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(BroadcastError::BusClosed);
                    }
                }
            }
        })
    }
}

/// How a node follows the bus: how many fan-outs run at once, how many states wait for one,
/// and how a feed that failed is reopened.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most topics fanning out at once (at least 1). Default 8: a fan-out runs on blocking threads (split
    /// over the cores when its topic is big), so a few at once keep a small topic from waiting
    /// behind a big one without multiplying the threads a burst of publishes can claim.
    pub max_concurrent_fanouts: usize,
    /// Most topics with a state waiting for its fan-out (at least 1). Default 4096, far above
    /// the events a node serves at once. Overflow policy: a newer state of a waiting topic
    /// replaces the older one (newest wins, counted in
    /// `ringside_hub_states_total{outcome="superseded"}`); with this many topics waiting the
    /// feed is not read until one starts, and the bus holds the rest (Kafka keeps its log; a
    /// lagging memory feed resynchronizes from its snapshot). Best-effort messages go first,
    /// counted in `ringside_hub_best_effort_total{outcome="dropped_node_behind"}`: a waiting
    /// one is replaced by a newer one and dropped when a newer state of its topic arrives, and
    /// a topic waiting only with a best-effort message is dropped to make room rather than
    /// stop the feed.
    pub max_waiting_topics: usize,
    /// Delay before a failed feed is reopened the first time; it doubles with each failure in a
    /// row, up to `restart_delay_max`, and each delay is jittered over its upper half. Default
    /// 100 ms: a feed that died on a passing fault is back almost at once.
    pub restart_delay_min: Duration,
    /// Longest delay between reopens. Default 5 s: a broker that stays away is retried often
    /// enough to come back quickly, seldom enough to cost nothing.
    pub restart_delay_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_concurrent_fanouts: 8,
            max_waiting_topics: 4096,
            restart_delay_min: Duration::from_millis(100),
            restart_delay_max: Duration::from_secs(5),
        }
    }
}

/// Follows `bus` into `hub` until `shutdown`: reads the feed while fan-outs run, keeps only the
/// newest waiting state of each topic (and its newest best-effort message, newer than that
/// state), runs at most one fan-out per topic (its state, then its best-effort message) and up
/// to [`ConsumerConfig::max_concurrent_fanouts`] topics at once, topics with a state first. The hub is marked ready once every
/// state read before the feed's [`FeedItem::CaughtUp`] is current; a feed that fails marks it
/// unready and is reopened with backoff, and the hub is ready again once the new feed caught up.
pub async fn run_bus_consumer(
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    config: ConsumerConfig,
    shutdown: CancellationToken,
) {
    // Zeroes would stop the consumer (nothing starts, nothing is read) or spin its reopens.
    let config = ConsumerConfig {
        max_concurrent_fanouts: config.max_concurrent_fanouts.max(1),
        max_waiting_topics: config.max_waiting_topics.max(1),
        restart_delay_min: config.restart_delay_min.max(Duration::from_millis(1)),
        restart_delay_max: config.restart_delay_max.max(config.restart_delay_min),
    };
    Consumer {
        hub,
        config,
        waiting: HashMap::new(),
        order: VecDeque::new(),
        running: Vec::new(),
        fanouts: JoinSet::new(),
        read: 0,
        caught_up_at: None,
    }
    .run(bus, shutdown)
    .await;
}

/// A feed's next item, read by a future that owns the feed: the consumer can stop polling it
/// for a while (fan-outs to finish, room to wait) without cancelling a read half done.
type Reading = BoxFuture<'static, (Result<FeedItem, BroadcastError>, Box<dyn BusFeed>)>;

fn read_next(mut feed: Box<dyn BusFeed>) -> Reading {
    Box::pin(async move {
        let item = feed.next().await;
        (item, feed)
    })
}

async fn next_read(
    reading: &mut Option<Reading>,
) -> (Result<FeedItem, BroadcastError>, Box<dyn BusFeed>) {
    match reading {
        Some(reading) => reading.await,
        None => std::future::pending().await,
    }
}

/// What of a topic is not yet fanned out: its newest state, its newest best-effort message
/// (newer than that state), or both; never neither.
struct Waiting {
    state: Option<Arc<EventState>>,
    best_effort: Option<Arc<EventState>>,
    /// Read number of the oldest state this entry stands for: readiness waits for it (not for
    /// best-effort messages, which are not the state a node must hold).
    since: Option<u64>,
}

/// A fan-out in progress.
struct Running {
    task: tokio::task::Id,
    topic: Topic,
    since: Option<u64>,
}

struct Consumer {
    hub: Arc<Hub>,
    config: ConsumerConfig,
    /// At most one state and one best-effort message per topic, and at most
    /// `max_waiting_topics` topics.
    waiting: HashMap<Topic, Waiting>,
    /// The waiting topics, oldest first: fan-outs start in that order, so none starves.
    order: VecDeque<Topic>,
    /// At most `max_concurrent_fanouts`, one per topic.
    running: Vec<Running>,
    fanouts: JoinSet<()>,
    /// States read so far, from every feed.
    read: u64,
    /// The read number at the last `CaughtUp` while the hub is not ready yet.
    caught_up_at: Option<u64>,
}

impl Consumer {
    async fn run(&mut self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        let mut reading = Some(read_next(bus.subscribe()));
        let mut reopen_at = Instant::now();
        let mut failures_in_a_row = 0;
        loop {
            // Reaped here too, not only in the select below: reading comes first there, and a
            // feed that always has an item ready would otherwise keep finished fan-outs from
            // being collected, so no new one could start.
            while let Some(done) = self.fanouts.try_join_next_with_id() {
                self.finish_fanout(done);
            }
            self.start_fanouts();
            self.mark_ready_once_caught_up();
            self.make_room();
            let room = self.waiting.len() < self.config.max_waiting_topics;
            tokio::select! {
                // Reading comes first, so that what is queued is drained (and conflated) before
                // the fan-outs that finished make room for more.
                biased;
                () = shutdown.cancelled() => return,
                (item, feed) = next_read(&mut reading), if reading.is_some() && room => {
                    match item {
                        Ok(FeedItem::State(state)) => {
                            self.wait(state);
                            reading = Some(read_next(feed));
                        }
                        Ok(FeedItem::CaughtUp) => {
                            failures_in_a_row = 0;
                            if !self.hub.is_ready() {
                                self.caught_up_at = Some(self.read);
                            }
                            reading = Some(read_next(feed));
                        }
                        Err(error) => {
                            failures_in_a_row += 1;
                            let delay = restart_delay(&self.config, failures_in_a_row);
                            // Its states may go stale from now on: the load balancer and the
                            // upgrade check send devices elsewhere until the new feed caught up.
                            self.hub.mark_unready();
                            self.caught_up_at = None;
                            tracing::error!(%error, delay_ms = delay.as_millis() as u64, "bus feed failed; node is unready until a new feed has caught up");
                            reopen_at = Instant::now() + delay;
                            reading = None;
                        }
                    }
                }
                Some(done) = self.fanouts.join_next_with_id(), if !self.fanouts.is_empty() => {
                    self.finish_fanout(done);
                }
                () = tokio::time::sleep_until(reopen_at), if reading.is_none() => {
                    self.hub.metrics.feed_restarts.increment();
                    tracing::info!("reopening the bus feed");
                    reading = Some(read_next(bus.subscribe()));
                }
            }
        }
    }

    /// Forgets a fan-out that ended, so that its topic may start the next.
    fn finish_fanout(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let task = match done {
            Ok((task, ())) => task,
            Err(error) => {
                tracing::error!(%error, "fan-out task failed");
                error.id()
            }
        };
        self.running.retain(|running| running.task != task);
    }

    /// Keeps `message` as its topic's waiting state (or best-effort message) unless a newer
    /// one waits already.
    fn wait(&mut self, message: Arc<EventState>) {
        self.read += 1;
        if message.priority.is_critical() {
            self.wait_state(message);
        } else {
            self.wait_best_effort(message);
        }
    }

    fn wait_state(&mut self, state: Arc<EventState>) {
        let metrics = &self.hub.metrics;
        let Some(waiting) = self.waiting.get_mut(&state.topic) else {
            self.order.push_back(state.topic.clone());
            let since = Some(self.read);
            self.waiting.insert(
                state.topic.clone(),
                Waiting {
                    state: Some(state),
                    best_effort: None,
                    since,
                },
            );
            return;
        };
        if let Some(held) = &waiting.state {
            if held.version >= state.version {
                metrics.states_stale.increment();
                return;
            }
            metrics.states_superseded.increment();
        }
        // `since` stays when set: the older state it stood for is current only once this is.
        waiting.since.get_or_insert(self.read);
        // A waiting best-effort message older than this state would reach devices after it.
        if waiting
            .best_effort
            .take_if(|message| message.version < state.version)
            .is_some()
        {
            metrics.best_effort_dropped_node_behind.increment();
        }
        waiting.state = Some(state);
    }

    fn wait_best_effort(&mut self, message: Arc<EventState>) {
        let metrics = &self.hub.metrics;
        let Some(waiting) = self.waiting.get_mut(&message.topic) else {
            self.order.push_back(message.topic.clone());
            self.waiting.insert(
                message.topic.clone(),
                Waiting {
                    state: None,
                    best_effort: Some(message),
                    since: None,
                },
            );
            return;
        };
        if waiting
            .best_effort
            .as_ref()
            .is_some_and(|held| held.version >= message.version)
        {
            metrics.states_stale.increment();
            return;
        }
        // Either this message is older than the waiting state (it must not reach devices
        // after it), or it replaces the waiting one: one best-effort message dropped.
        let overtaken = waiting
            .state
            .as_ref()
            .is_some_and(|state| state.version > message.version);
        if overtaken || waiting.best_effort.replace(message).is_some() {
            metrics.best_effort_dropped_node_behind.increment();
        }
    }

    /// With `max_waiting_topics` topics waiting, drops a topic that waits only with a
    /// best-effort message, so that the feed goes on being read for the states behind it.
    fn make_room(&mut self) {
        if self.waiting.len() < self.config.max_waiting_topics {
            return;
        }
        let waiting = &self.waiting;
        let best_effort_only = self
            .order
            .iter()
            .position(|topic| waiting.get(topic).is_some_and(|w| w.state.is_none()));
        if let Some(topic) = best_effort_only.and_then(|index| self.order.remove(index)) {
            self.waiting.remove(&topic);
            self.hub.metrics.best_effort_dropped_node_behind.increment();
        }
    }

    /// Starts the oldest waiting topics that have no fan-out running, up to the limit: those
    /// with a state first, then those with only a best-effort message.
    fn start_fanouts(&mut self) {
        while self.running.len() < self.config.max_concurrent_fanouts {
            let (running, waiting) = (&self.running, &self.waiting);
            let startable = |with_state: bool| {
                self.order.iter().position(|topic| {
                    !running.iter().any(|running| &running.topic == topic)
                        && (!with_state || waiting.get(topic).is_some_and(|w| w.state.is_some()))
                })
            };
            let index = startable(true).or_else(|| startable(false));
            let Some(topic) = index.and_then(|index| self.order.remove(index)) else {
                return;
            };
            let Some(Waiting {
                state,
                best_effort,
                since,
            }) = self.waiting.remove(&topic)
            else {
                continue;
            };
            let hub = self.hub.clone();
            let task = self.fanouts.spawn(async move {
                if let Some(state) = state {
                    apply_off_runtime(&hub, state).await;
                }
                if let Some(message) = best_effort {
                    apply_off_runtime(&hub, message).await;
                }
            });
            self.running.push(Running {
                task: task.id(),
                topic,
                since,
            });
        }
    }

    /// Marks the hub ready once nothing read before the last `CaughtUp` waits or runs.
    fn mark_ready_once_caught_up(&mut self) {
        let Some(caught_up_at) = self.caught_up_at else {
            return;
        };
        let owed = |since: Option<u64>| since.is_some_and(|since| since <= caught_up_at);
        let owed = self.waiting.values().any(|w| owed(w.since))
            || self.running.iter().any(|r| owed(r.since));
        if !owed {
            self.caught_up_at = None;
            self.hub.mark_ready();
        }
    }
}

/// Exponential from `restart_delay_min` to `restart_delay_max`, jittered over its upper half so
/// that the nodes of a cluster that lost the bus together do not all come back at once.
fn restart_delay(config: &ConsumerConfig, failures_in_a_row: u32) -> Duration {
    let exponent = failures_in_a_row.saturating_sub(1).min(20);
    let delay = config
        .restart_delay_min
        .saturating_mul(1 << exponent)
        .min(config.restart_delay_max);
    let half = delay / 2;
    let jitter_ms = fastrand::u64(0..=u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
    half + Duration::from_millis(jitter_ms)
}

/// Below this many subscribers a fan-out runs on one thread: splitting it costs more than it
/// saves.
const PARALLEL_FANOUT_MIN: u64 = 1024;

/// Applies `state` with its fan-out on blocking threads, split over the machine's cores when
/// the topic has many subscribers: a fan-out writes to every idle socket itself, which would
/// keep a runtime worker from its other tasks for as long as that takes. A fan-out that
/// panicked (a bug) is logged and its subscribers not counted; the node goes on.
pub async fn apply_off_runtime(hub: &Arc<Hub>, state: Arc<EventState>) -> Applied {
    let fanout = if hub.channel(&state.topic).is_some() {
        hub.make_current(&state)
    } else {
        // A topic's first state moves every subscriber that waited for it into its new channel
        // (before a big event, that may be most of the node): off the runtime as well.
        let (hub, first) = (hub.clone(), state.clone());
        match tokio::task::spawn_blocking(move || hub.make_current(&first)).await {
            Ok(fanout) => fanout,
            Err(error) => {
                tracing::error!(topic = %state.topic, %error, "applying a first state failed");
                None
            }
        }
    };
    let Some(fanout) = fanout else {
        return Applied::Stale;
    };
    if fanout.subscribers() == 0 {
        return Applied::FannedOut { subscribers: 0 };
    }
    let parts = if fanout.subscribers() < PARALLEL_FANOUT_MIN {
        1
    } else {
        static CORES: OnceLock<usize> = OnceLock::new();
        *CORES.get_or_init(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(Fanout::SHARDS))
        })
    };
    let fanout = Arc::new(fanout);
    let parts: Vec<_> = (0..parts)
        .map(|part| {
            let shards = part * Fanout::SHARDS / parts..(part + 1) * Fanout::SHARDS / parts;
            let (hub, fanout) = (hub.clone(), fanout.clone());
            tokio::task::spawn_blocking(move || hub.fan_out(&fanout, shards))
        })
        .collect();
    let mut subscribers = 0;
    for part in parts {
        match part.await {
            Ok(offered) => subscribers += offered,
            Err(error) => tracing::error!(topic = %state.topic, %error, "fan-out failed"),
        }
    }
    Applied::FannedOut { subscribers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::{Payload, Stage};

    fn state(topic: &str, version: u64) -> EventState {
        EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1,
            payload: Payload::empty(),
            priority: ringside_protocol::Priority::Critical,
            fetch_within_ms: None,
        }
    }

    async fn next_state(feed: &mut Box<dyn BusFeed>) -> (String, u64) {
        match feed.next().await.expect("open feed") {
            FeedItem::State(s) => (s.topic.to_string(), s.version),
            FeedItem::CaughtUp => panic!("expected a state"),
        }
    }

    #[tokio::test]
    async fn a_fan_out_split_over_threads_reaches_every_subscriber_once() {
        let hub = Arc::new(Hub::new(crate::HubMetrics::new(
            &ringside_telemetry::Registry::new(),
        )));
        let topic = Topic::parse("event:a").expect("topic");
        let mailboxes: Vec<_> = (0..3 * PARALLEL_FANOUT_MIN)
            .map(|connection| {
                let mailbox = crate::Mailbox::new();
                mailbox.open(&topic, 0);
                hub.subscribe(&topic, connection, &mailbox)
                    .expect("subscribed");
                mailbox
            })
            .collect();
        let applied = apply_off_runtime(&hub, Arc::new(state("event:a", 1))).await;
        assert_eq!(
            applied,
            Applied::FannedOut {
                subscribers: mailboxes.len()
            }
        );
        for mailbox in &mailboxes {
            let mut pending = Vec::new();
            mailbox.take_pending(&mut pending);
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0].state.version, 1);
        }
        let again = apply_off_runtime(&hub, Arc::new(state("event:a", 1))).await;
        assert_eq!(again, Applied::Stale);
    }

    #[tokio::test]
    async fn a_new_feed_starts_from_the_latest_state_of_every_topic() {
        let bus = MemoryBus::new();
        bus.publish(state("event:a", 1)).await.expect("publish");
        bus.publish(state("event:a", 2)).await.expect("publish");
        bus.publish(state("event:b", 5)).await.expect("publish");
        let mut feed = bus.subscribe();
        let mut snapshot = vec![next_state(&mut feed).await, next_state(&mut feed).await];
        snapshot.sort();
        assert_eq!(snapshot, vec![("event:a".into(), 2), ("event:b".into(), 5)]);
        assert!(matches!(feed.next().await, Ok(FeedItem::CaughtUp)));
        bus.publish(state("event:a", 3)).await.expect("publish");
        assert_eq!(next_state(&mut feed).await, ("event:a".into(), 3));
    }

    #[tokio::test]
    async fn a_lagging_feed_resynchronizes_to_the_newest_states() {
        let bus = MemoryBus::new();
        let mut feed = bus.subscribe();
        assert!(matches!(feed.next().await, Ok(FeedItem::CaughtUp)));
        let total = MEMORY_BUS_CAPACITY as u64 * 3;
        for version in 1..=total {
            bus.publish(state("event:a", version))
                .await
                .expect("publish");
        }
        let mut last = 0;
        while last < total {
            let (_, version) = next_state(&mut feed).await;
            assert!(
                version >= last,
                "versions from one feed may repeat but never go back"
            );
            last = version;
        }
        assert_eq!(last, total);
    }

    /// A bus whose feeds follow scripts: each `subscribe` takes the next script; a feed that
    /// runs out of script waits forever, like a live feed with nothing new.
    #[derive(Default)]
    struct ScriptedBus {
        scripts: Mutex<std::collections::VecDeque<Vec<Step>>>,
        opened: std::sync::atomic::AtomicUsize,
    }

    enum Step {
        Item(FeedItem),
        /// The feed fails, as a broker connection or a consumer thread that died.
        Fail,
        /// The feed waits until the test notifies.
        Wait(Arc<tokio::sync::Notify>),
    }

    impl ScriptedBus {
        fn new(scripts: Vec<Vec<Step>>) -> Arc<Self> {
            Arc::new(Self {
                scripts: Mutex::new(scripts.into()),
                opened: Default::default(),
            })
        }

        fn opened(&self) -> usize {
            self.opened.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Bus for ScriptedBus {
        fn publish(&self, _: EventState) -> BoxFuture<'_, Result<(), BroadcastError>> {
            Box::pin(async { Err(BroadcastError::BusClosed) })
        }

        fn subscribe(&self) -> Box<dyn BusFeed> {
            self.opened
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let script = self
                .scripts
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or_default();
            Box::new(ScriptedFeed {
                steps: script.into(),
            })
        }
    }

    struct ScriptedFeed {
        steps: std::collections::VecDeque<Step>,
    }

    impl BusFeed for ScriptedFeed {
        fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>> {
            Box::pin(async move {
                loop {
                    match self.steps.front() {
                        None => std::future::pending::<()>().await,
                        Some(Step::Wait(gate)) => {
                            let gate = gate.clone();
                            gate.notified().await;
                            self.steps.pop_front();
                        }
                        Some(_) => match self.steps.pop_front() {
                            Some(Step::Item(item)) => return Ok(item),
                            _ => return Err(BroadcastError::BusUnavailable("scripted".into())),
                        },
                    }
                }
            })
        }
    }

    fn item(topic: &str, version: u64) -> Step {
        Step::Item(FeedItem::State(Arc::new(state(topic, version))))
    }

    fn best_effort(topic: &str, version: u64) -> EventState {
        EventState {
            priority: ringside_protocol::Priority::BestEffort,
            ..state(topic, version)
        }
    }

    fn best_effort_item(topic: &str, version: u64) -> Step {
        Step::Item(FeedItem::State(Arc::new(best_effort(topic, version))))
    }

    /// Holds the only fan-out a consumer may run (of `event:stuck`) until released: the node
    /// is behind, and everything read meanwhile waits.
    struct StuckFanout {
        release: std::sync::mpsc::Sender<()>,
        holder: std::thread::JoinHandle<()>,
        _device: Arc<crate::Mailbox>,
    }

    impl StuckFanout {
        fn hold(hub: &Arc<Hub>) -> Self {
            // Connection 0 lives in shard 0, the shard held.
            let device = subscribed(hub, "event:stuck", 0);
            hub.apply(&state("event:stuck", 1));
            let channel = hub
                .channel(&Topic::parse("event:stuck").expect("topic"))
                .expect("channel");
            let (release, released) = std::sync::mpsc::channel::<()>();
            let (held, holding) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                let _shard = channel.shards[0].lock().expect("shard");
                held.send(()).expect("held");
                released.recv().expect("release");
            });
            holding.recv().expect("holding");
            Self {
                release,
                holder,
                _device: device,
            }
        }

        fn release(self) {
            self.release.send(()).expect("release");
            self.holder.join().expect("holder");
        }
    }

    /// What `device` is offered until it holds `count` messages, as (version, best-effort).
    async fn offered(device: &crate::Mailbox, count: usize) -> Vec<(u64, bool)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut pending = Vec::new();
        loop {
            device.take_pending(&mut pending);
            if pending.len() >= count {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "offered {pending:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pending
            .iter()
            .map(|d| (d.state.version, d.state.is_best_effort()))
            .collect()
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A bus consumer running on `hub` for a test, stopped with [`Consumed::stop`].
    struct Consumed {
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    impl Consumed {
        fn start(bus: Arc<dyn Bus>, hub: &Arc<Hub>, config: ConsumerConfig) -> Self {
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run_bus_consumer(bus, hub.clone(), config, shutdown.clone()));
            Self { shutdown, task }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.expect("consumer");
        }
    }

    fn quick_restarts() -> ConsumerConfig {
        ConsumerConfig {
            restart_delay_min: Duration::from_millis(1),
            ..ConsumerConfig::default()
        }
    }

    fn test_hub() -> Arc<Hub> {
        Arc::new(Hub::new(crate::HubMetrics::new(
            &ringside_telemetry::Registry::new(),
        )))
    }

    fn subscribed(hub: &Hub, topic: &str, connection: u64) -> Arc<crate::Mailbox> {
        let topic = Topic::parse(topic).expect("topic");
        let mailbox = crate::Mailbox::new();
        mailbox.open(&topic, 0);
        hub.subscribe(&topic, connection, &mailbox)
            .expect("subscribed");
        mailbox
    }

    async fn ready_promptly(hub: &Hub) {
        tokio::time::timeout(Duration::from_secs(10), hub.wait_ready())
            .await
            .expect("the hub became ready");
    }

    #[test]
    fn restart_delays_grow_jittered_up_to_the_maximum() {
        let config = ConsumerConfig::default();
        for failures in 1..=40 {
            let full = (config.restart_delay_min * 2u32.pow((failures - 1).min(20)))
                .min(config.restart_delay_max);
            let delay = restart_delay(&config, failures);
            assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_states_of_one_topic_are_fanned_out_newest_only() {
        let hub = test_hub();
        let _device = subscribed(&hub, "event:big", 1);
        let mut script: Vec<Step> = (1..=100).map(|v| item("event:big", v)).collect();
        script.push(Step::Item(FeedItem::CaughtUp));
        let bus = ScriptedBus::new(vec![script]);
        let consumer = Consumed::start(bus.clone(), &hub, quick_restarts());
        ready_promptly(&hub).await;
        assert_eq!(hub.version(&Topic::parse("event:big").expect("topic")), 100);
        // The first state starts a fan-out; the 98 read while it runs are superseded by the
        // newest, which is the only other pass.
        assert_eq!(hub.metrics.states_applied.get(), 2, "full fan-out passes");
        assert_eq!(hub.metrics.states_superseded.get(), 98);
        consumer.stop().await;
    }

    /// A feed that always has the next state of one topic ready, as a long backlog does.
    struct EndlessBus;

    struct EndlessFeed {
        next_version: u64,
    }

    impl Bus for EndlessBus {
        fn publish(&self, _: EventState) -> BoxFuture<'_, Result<(), BroadcastError>> {
            Box::pin(async { Err(BroadcastError::BusClosed) })
        }

        fn subscribe(&self) -> Box<dyn BusFeed> {
            Box::new(EndlessFeed { next_version: 0 })
        }
    }

    impl BusFeed for EndlessFeed {
        fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>> {
            let version = self.next_version;
            self.next_version += 1;
            Box::pin(async move {
                // As a channel's receive does: ready at once, but within the task's budget.
                tokio::task::consume_budget().await;
                if version == 0 {
                    return Ok(FeedItem::CaughtUp);
                }
                Ok(FeedItem::State(Arc::new(state("event:hot", version))))
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_feed_that_is_never_empty_does_not_stop_fan_outs() {
        let hub = test_hub();
        let _device = subscribed(&hub, "event:hot", 1);
        let consumer = Consumed::start(Arc::new(EndlessBus), &hub, quick_restarts());
        // Reading comes first in the consumer: finished fan-outs must still be collected, or
        // the first fan-out would be the only one.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while hub.metrics.states_applied.get() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fan-outs stopped after {} while the feed kept going",
                hub.metrics.states_applied.get()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        consumer.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hub_is_ready_only_once_the_states_before_caught_up_are_current() {
        let hub = test_hub();
        let mut script = Vec::new();
        for version in 1..=50 {
            for topic in ["event:a", "event:b", "event:c"] {
                script.push(item(topic, version));
            }
        }
        script.push(Step::Item(FeedItem::CaughtUp));
        let bus = ScriptedBus::new(vec![script]);
        let consumer = Consumed::start(
            bus.clone(),
            &hub,
            ConsumerConfig {
                max_concurrent_fanouts: 2,
                max_waiting_topics: 2,
                ..quick_restarts()
            },
        );
        ready_promptly(&hub).await;
        for topic in ["event:a", "event:b", "event:c"] {
            assert_eq!(
                hub.version(&Topic::parse(topic).expect("topic")),
                50,
                "{topic}"
            );
        }
        consumer.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_topics_fan_out_does_not_hold_back_another() {
        let hub = test_hub();
        let _stuck_device = subscribed(&hub, "event:stuck", 1);
        let other_device = subscribed(&hub, "event:other", 1);
        hub.apply(&state("event:stuck", 1));
        // Hold a shard of the stuck topic, so that its fan-out cannot finish.
        let channel = hub
            .channel(&Topic::parse("event:stuck").expect("topic"))
            .expect("channel");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (held, holding) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _shard = channel.shards[0].lock().expect("shard");
            held.send(()).expect("held");
            released.recv().expect("release");
        });
        holding.recv().expect("holding");
        let bus = ScriptedBus::new(vec![vec![
            item("event:stuck", 2),
            item("event:other", 1),
            Step::Item(FeedItem::CaughtUp),
        ]]);
        let consumer = Consumed::start(bus.clone(), &hub, quick_restarts());
        let delivered = tokio::time::timeout(Duration::from_secs(10), other_device.ready()).await;
        let mut pending = Vec::new();
        other_device.take_pending(&mut pending);
        // Not ready while a state before `CaughtUp` is still being fanned out.
        let ready_while_stuck = hub.is_ready();
        release.send(()).expect("release");
        holder.join().expect("holder");
        assert!(
            delivered.is_ok(),
            "the other topic waited for the stuck one"
        );
        assert_eq!(pending.len(), 1);
        assert!(!ready_while_stuck);
        ready_promptly(&hub).await;
        consumer.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_feed_makes_the_hub_unready_until_a_new_feed_caught_up() {
        let hub = test_hub();
        let reopen = Arc::new(tokio::sync::Notify::new());
        let bus = ScriptedBus::new(vec![
            vec![
                item("event:a", 1),
                Step::Item(FeedItem::CaughtUp),
                Step::Fail,
            ],
            vec![
                Step::Wait(reopen.clone()),
                item("event:a", 2),
                Step::Item(FeedItem::CaughtUp),
            ],
        ]);
        let consumer = Consumed::start(bus.clone(), &hub, quick_restarts());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bus.opened() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the feed was not reopened"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            !hub.is_ready(),
            "ready while the new feed has not caught up"
        );
        reopen.notify_one();
        ready_promptly(&hub).await;
        assert_eq!(hub.version(&Topic::parse("event:a").expect("topic")), 2);
        assert_eq!(hub.metrics.feed_restarts.get(), 1);
        consumer.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_behind_conflates_and_drops_best_effort_messages_never_states() {
        let hub = test_hub();
        let device = subscribed(&hub, "event:a", 1);
        let stuck = StuckFanout::hold(&hub);
        let bus = ScriptedBus::new(vec![vec![
            item("event:stuck", 2),
            best_effort_item("event:a", 2),
            // Replaces the waiting message 2.
            best_effort_item("event:a", 3),
            // Overtakes the waiting message 3, which must not reach devices after it.
            item("event:a", 4),
            best_effort_item("event:a", 5),
            Step::Item(FeedItem::CaughtUp),
        ]]);
        let consumer = Consumed::start(
            bus.clone(),
            &hub,
            ConsumerConfig {
                max_concurrent_fanouts: 1,
                ..quick_restarts()
            },
        );
        let metrics = &hub.metrics;
        until("two best-effort messages dropped", || {
            metrics.best_effort_dropped_node_behind.get() == 2
        })
        .await;
        stuck.release();
        ready_promptly(&hub).await;
        let topic = Topic::parse("event:a").expect("topic");
        until("the newest best-effort message fanned out", || {
            hub.best_effort_version(&topic) == 5
        })
        .await;
        assert_eq!(hub.version(&topic), 4, "the state stays current");
        // The device got the state, then the newer best-effort message, nothing else.
        assert_eq!(offered(&device, 2).await, vec![(4, false), (5, true)]);
        assert_eq!(metrics.best_effort_dropped_node_behind.get(), 2);
        assert_eq!(metrics.states_superseded.get(), 0);
        consumer.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_its_limit_of_topics_waiting_a_node_drops_best_effort_topics_to_read_on() {
        let hub = test_hub();
        let stuck = StuckFanout::hold(&hub);
        let bus = ScriptedBus::new(vec![vec![
            item("event:stuck", 2),
            best_effort_item("event:a", 1),
            best_effort_item("event:b", 1),
            item("event:c", 1),
            item("event:d", 1),
            item("event:e", 1),
            Step::Item(FeedItem::CaughtUp),
        ]]);
        let consumer = Consumed::start(
            bus.clone(),
            &hub,
            ConsumerConfig {
                max_concurrent_fanouts: 1,
                max_waiting_topics: 2,
                ..quick_restarts()
            },
        );
        // a and b fill the two places; each is dropped in turn so the states behind them are
        // read; two states then fill the places and the feed waits.
        let metrics = &hub.metrics;
        until("both best-effort topics dropped", || {
            metrics.best_effort_dropped_node_behind.get() == 2
        })
        .await;
        stuck.release();
        ready_promptly(&hub).await;
        for name in ["event:c", "event:d", "event:e"] {
            assert_eq!(
                hub.version(&Topic::parse(name).expect("topic")),
                1,
                "{name}"
            );
        }
        for name in ["event:a", "event:b"] {
            let topic = Topic::parse(name).expect("topic");
            assert_eq!(hub.best_effort_version(&topic), 0, "{name}");
        }
        assert_eq!(metrics.best_effort_dropped_node_behind.get(), 2);
        consumer.stop().await;
    }

    #[tokio::test]
    async fn a_best_effort_message_never_replaces_a_state_for_a_node_that_joins_later() {
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        bus.publish(state("event:a", 1)).await.expect("publish");
        bus.publish(best_effort("event:a", 2))
            .await
            .expect("publish");
        bus.publish(best_effort("event:a", 3))
            .await
            .expect("publish");
        let hub = test_hub();
        let device = subscribed(&hub, "event:a", 1);
        let consumer = Consumed::start(bus.clone(), &hub, quick_restarts());
        ready_promptly(&hub).await;
        let topic = Topic::parse("event:a").expect("topic");
        until("the best-effort message fanned out", || {
            hub.best_effort_version(&topic) == 3
        })
        .await;
        assert_eq!(hub.version(&topic), 1);
        assert_eq!(
            offered(&device, 2).await,
            vec![(1, false), (3, true)],
            "the state, then the newest message"
        );
        consumer.stop().await;
    }
}
