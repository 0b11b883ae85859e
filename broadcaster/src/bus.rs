//! Tier 1: the bus that carries every state change to every gateway node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use protocol::{EventState, Topic};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::hub::{Applied, Fanout, Hub};
use crate::{BoxFuture, BroadcastError};

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

    /// A feed of the latest state of every topic, then [`FeedItem::CaughtUp`], then every state
    /// published from then on. States of one topic arrive in version order; a feed may repeat a
    /// state, so consumers drop anything not newer than what they hold.
    fn subscribe(&self) -> Box<dyn BusFeed>;
}

/// One node's view of the bus.
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

#[derive(Debug)]
struct MemoryBusShared {
    /// Latest state of every topic: the equivalent of a compacted log.
    latest: Mutex<HashMap<Topic, Arc<EventState>>>,
    sender: broadcast::Sender<Arc<EventState>>,
}

impl MemoryBusShared {
    /// The latest state of every topic and a receiver for everything after it, taken under
    /// one lock so that nothing falls between them.
    fn snapshot(&self) -> (Vec<Arc<EventState>>, broadcast::Receiver<Arc<EventState>>) {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        (latest.values().cloned().collect(), self.sender.subscribe())
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
        let mut latest = self
            .shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newer = latest
            .get(&state.topic)
            .is_none_or(|held| held.version < state.version);
        if newer {
            latest.insert(state.topic.clone(), state.clone());
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

/// Applies everything a feed yields to `hub` until `shutdown`; marks the hub ready once the feed
/// has caught up.
pub async fn run_bus_consumer(
    mut feed: Box<dyn BusFeed>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> Result<(), BroadcastError> {
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            item = feed.next() => item?,
        };
        match item {
            FeedItem::State(state) => {
                apply_off_runtime(&hub, state).await;
            }
            FeedItem::CaughtUp => hub.mark_ready(),
        }
    }
}

/// Below this many subscribers a fan-out runs on one thread: splitting it costs more than it
/// saves.
const PARALLEL_FANOUT_MIN: u64 = 1024;

/// Applies `state` with its fan-out on blocking threads, split over the machine's cores when
/// the topic has many subscribers: a fan-out writes to every idle socket itself, which would
/// keep a runtime worker from its other tasks for as long as that takes. A fan-out that
/// panicked (a bug) is logged and its subscribers not counted; the node goes on.
pub async fn apply_off_runtime(hub: &Arc<Hub>, state: Arc<EventState>) -> Applied {
    let Some(fanout) = hub.make_current(&state) else {
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
    use protocol::{Payload, Stage};

    fn state(topic: &str, version: u64) -> EventState {
        EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1,
            payload: Payload::empty(),
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
        let hub = Arc::new(Hub::new(
            crate::HubMetrics::new(&telemetry::Registry::new()),
        ));
        let topic = Topic::parse("event:a").expect("topic");
        let mailboxes: Vec<_> = (0..3 * PARALLEL_FANOUT_MIN)
            .map(|connection| {
                let mailbox = crate::Mailbox::new();
                mailbox.open(&topic, 0);
                hub.subscribe(&topic, connection, &mailbox);
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
}
