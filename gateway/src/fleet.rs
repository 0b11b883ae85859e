//! A gateway node in its fleet: the [`Gateway`] with the tasks that keep it current and known.
//!
//! A [`Node`] builds the hub and the gateway and reads the bus until it is caught up. With a
//! [`Fleet`] (a deployment that shares an event store and a node registry, Redis in Ringside's
//! binary) it first seeds its hub from the store's current states ([`seed_hub`]), and it runs:
//! - the reconciler: every [`RECONCILE_INTERVAL`] it compares the hub with the store and
//!   applies what the bus lost, after a second look ([`RECONCILE_SECOND_LOOK`]);
//! - the node reports: a heartbeat to the [`FleetRegistry`], which also picks up drains an
//!   operator requested there, and on shutdown leaves the registry before the drain starts
//!   (waiting at most [`LEAVE_REGISTRY_TIMEOUT`]);
//! - the broadcast reports: the hub's delivery records, written to a [`BroadcastRecordSink`].
//!
//! The backends are traits so that this crate does not depend on the control plane, which owns
//! their Redis keys; the binary implements them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ringside_auth::DeviceTokenKey;
use ringside_broadcaster::{
    Applied, Bus, ConsumerConfig, Hub, HubConfig, HubMetrics, apply_off_runtime, run_bus_consumer,
};
use ringside_protection::Protection;
use ringside_protocol::admin::{
    BroadcastRecord, DrainAnswer, DrainState, NodeBroadcastRecords, NodeStats, Stats, TopicStats,
    TopicVersion,
};
use ringside_protocol::{EventState, Topic};
use ringside_telemetry::{Counter, Registry};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{DrainReport, Gateway, GatewayConfig, GatewayMetrics};

/// How often a gateway node compares its states with the event store's, to repair anything the
/// bus lost (a broker that came back empty) or delivered out of reach.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// How long the reconciler waits before it applies the states it found missing, and applies
/// only those still missing then: a state published just now may be in the store before it
/// arrives through the bus.
pub const RECONCILE_SECOND_LOOK: Duration = Duration::from_secs(1);

/// How long a shutdown waits for the node to leave the registry before its drain starts
/// anyway (the registry may not answer; devices must not wait for it).
pub const LEAVE_REGISTRY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`Node::stop`] waits for each of the node's tasks before it aborts it.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a fleet backend failed with. Only logged (devices never see it), so any error will do.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// The event store, as a node reads it.
pub trait StateStore: Send + Sync {
    /// The store's current states (one per event that has one), or `None` when the store does
    /// not answer.
    fn current_states(&self) -> BoxFuture<'_, Option<Vec<EventState>>>;
}

/// What a node reports about itself to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub node: NodeStats,
    pub topics: Vec<TopicStats>,
    /// The node's clock when it reported, in ms since the Unix epoch.
    pub reported_at_ms: u64,
}

/// The node registry, as a node reports to it.
pub trait FleetRegistry: Send + Sync {
    /// A live node's heartbeat.
    fn report(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Whether an operator asked `node` to drain.
    fn drain_requested<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Takes `node` out of the registry, so that nothing routes devices to it.
    fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;
    /// A draining node's heartbeat (its report with its drain progress), out of the registry.
    fn report_drain(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>>;
    /// Removes everything `node` reported (its entry and its drain report): it stops.
    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// One topic's delivery records, as a node writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecords {
    /// The version the node holds as the topic's current state.
    pub current: TopicVersion,
    pub records: Vec<BroadcastRecord>,
    /// The node's clock when it wrote this topic, in ms since the Unix epoch.
    pub reported_at_ms: u64,
}

/// Where a node writes its delivery records for the broadcast report.
pub trait BroadcastRecordSink: Send + Sync {
    /// Writes the `changed` topics of `node` and keeps its records alive; with `replace`,
    /// whatever was held before goes first. Returns whether the sink held records of `node`
    /// before this write (when it did not although the node wrote them, it lost them, and the
    /// node writes every topic again).
    fn write<'a>(
        &'a self,
        node: &'a str,
        changed: &'a [&'a TopicRecords],
        replace: bool,
    ) -> BoxFuture<'a, Result<bool, BackendError>>;
    /// Deletes `node`'s records: it stops.
    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// The backends of a node in a fleet, and the pace its reports keep (the registry's contract:
/// its entries expire unless refreshed).
#[derive(Clone)]
pub struct Fleet {
    pub store: Arc<dyn StateStore>,
    pub registry: Arc<dyn FleetRegistry>,
    pub broadcasts: Arc<dyn BroadcastRecordSink>,
    /// The address the node reports to the registry (where the fleet reaches it).
    pub address: String,
    /// How often the node reports to the registry; the broadcast records' expiry is refreshed
    /// at least this often too.
    pub heartbeat_interval: Duration,
    /// How often the node writes its broadcast records when they changed.
    pub broadcast_report_interval: Duration,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("broadcast_report_interval", &self.broadcast_report_interval)
            .finish_non_exhaustive()
    }
}

/// A process's two stop signals: `shutdown` starts the drain; `stopped`, after the drain, ends
/// the node's tasks.
#[derive(Debug, Clone)]
pub struct NodeStops {
    pub shutdown: CancellationToken,
    pub stopped: CancellationToken,
}

/// The bus consumer ended before the hub was caught up (it only ends at `stopped`).
#[derive(Debug, thiserror::Error)]
#[error("the bus consumer stopped before the node caught up")]
pub struct ConsumerStopped;

/// The gateway side of a process: the hub, its sessions, and the tasks that keep it current.
#[derive(Debug)]
pub struct Node {
    gateway: Arc<Gateway>,
    tasks: Vec<JoinHandle<()>>,
    /// With a registry: cancelled once the node has left it, at the start of its drain.
    left_registry: Option<CancellationToken>,
}

impl Node {
    /// Builds the hub and the gateway, starts the fleet's tasks (when there is a fleet) and the
    /// bus consumer, and returns once the hub holds the latest state of every topic.
    pub async fn start(
        config: GatewayConfig,
        device_key: DeviceTokenKey,
        bus: Arc<dyn Bus>,
        fleet: Option<Fleet>,
        registry: &Arc<Registry>,
        protection: Arc<Protection>,
        stops: NodeStops,
    ) -> Result<Self, ConsumerStopped> {
        let NodeStops { shutdown, stopped } = &stops;
        let consumer_config = ConsumerConfig {
            max_concurrent_fanouts: config.max_concurrent_fanouts,
            max_waiting_topics: config.max_waiting_topics,
            ..ConsumerConfig::default()
        };
        let hub = Arc::new(Hub::with_config(
            HubConfig {
                max_unpublished_topics: config.max_unpublished_topics,
                broadcasts_per_topic: config.broadcasts_per_topic,
            },
            HubMetrics::new(registry),
        ));
        let gateway = Gateway::new(
            config,
            hub.clone(),
            device_key,
            GatewayMetrics::new(registry),
        );
        gateway.report_shedding_of(protection);
        let mut tasks = Vec::new();
        let mut left_registry = None;
        if let Some(fleet) = fleet {
            let repaired = registry.counter(
                "ringside_states_reconciled_total",
                "States this node took from the event store because the bus had not delivered them.",
            );
            // The node starts from the store's current states (when the store answers), then
            // reads the bus: together they give exact catch-up even if the bus lost its log.
            seed_hub(fleet.store.as_ref(), &hub).await;
            tasks.push(tokio::spawn(run_reconciler(
                fleet.store.clone(),
                hub.clone(),
                repaired,
                stopped.clone(),
            )));
            let left = CancellationToken::new();
            tasks.push(tokio::spawn(run_node_reports(
                NodeReporter {
                    registry: fleet.registry.clone(),
                    gateway: gateway.clone(),
                    address: fleet.address.clone(),
                    left: left.clone(),
                    heartbeat_interval: fleet.heartbeat_interval,
                },
                shutdown.clone(),
                stopped.clone(),
            )));
            left_registry = Some(left);
            tasks.push(tokio::spawn(run_broadcast_reports(
                fleet.broadcasts.clone(),
                gateway.clone(),
                BroadcastReportIntervals {
                    write: fleet.broadcast_report_interval,
                    refresh: fleet.heartbeat_interval,
                },
                stopped.clone(),
            )));
        }
        // Never ends before `stopped`: a feed that fails makes the node unready (its upgrades
        // get 503 and `/healthz` says so) and is reopened with backoff.
        let mut consumer = tokio::spawn(run_bus_consumer(
            bus,
            hub.clone(),
            consumer_config,
            stopped.clone(),
        ));
        // The node serves subscriptions only once it holds the latest state of every topic.
        if !hub.is_ready() {
            tracing::info!("reading the bus before accepting devices");
        }
        tokio::select! {
            () = hub.wait_ready() => {}
            _ = &mut consumer => return Err(ConsumerStopped),
        }
        tasks.push(consumer);
        Ok(Self {
            gateway,
            tasks,
            left_registry,
        })
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The shutdown's drain: the node leaves the registry first (its reporter removes it on
    /// shutdown), so that nothing routes devices to it while it sends its goaways.
    pub async fn drain(&self) -> DrainReport {
        if let Some(left) = &self.left_registry
            && tokio::time::timeout(LEAVE_REGISTRY_TIMEOUT, left.cancelled())
                .await
                .is_err()
        {
            tracing::warn!("the node registry did not answer; draining anyway");
        }
        self.gateway.drain().await
    }

    /// After the drain and `stopped`: the registry entry goes (the reporter removes it), then
    /// the tasks; any still running after a moment is aborted.
    pub async fn stop(self) {
        for mut task in self.tasks {
            if tokio::time::timeout(TASK_STOP_TIMEOUT, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// Applies the store's current states to `hub`, when the store answers.
pub async fn seed_hub(store: &dyn StateStore, hub: &Hub) {
    for state in store.current_states().await.unwrap_or_default() {
        hub.apply(&state);
    }
}

/// Every [`RECONCILE_INTERVAL`], applies the store's states that the hub still lacks
/// [`RECONCILE_SECOND_LOOK`] after it first saw them lacking. Counts and logs each one: the bus
/// should have delivered it.
async fn run_reconciler(
    store: Arc<dyn StateStore>,
    hub: Arc<Hub>,
    repaired: Arc<Counter>,
    stopped: CancellationToken,
) {
    let pause = |duration| {
        let stopped = stopped.clone();
        async move {
            tokio::select! {
                () = stopped.cancelled() => false,
                () = tokio::time::sleep(duration) => true,
            }
        }
    };
    while pause(RECONCILE_INTERVAL).await {
        let Some(states) = store.current_states().await else {
            continue;
        };
        let missing: Vec<_> = states
            .into_iter()
            .filter(|state| hub.version(&state.topic) < state.version)
            .collect();
        if missing.is_empty() || !pause(RECONCILE_SECOND_LOOK).await {
            continue;
        }
        for state in missing {
            let (topic, version) = (state.topic.clone(), state.version);
            if let Applied::FannedOut { .. } = apply_off_runtime(&hub, Arc::new(state)).await {
                repaired.increment();
                tracing::warn!(%topic, version, "state missing from the bus taken from the event store");
            }
        }
    }
}

/// What a node reports to the registry with.
struct NodeReporter {
    registry: Arc<dyn FleetRegistry>,
    gateway: Arc<Gateway>,
    address: String,
    /// Cancelled once the node has left the registry (its drain may start).
    left: CancellationToken,
    heartbeat_interval: Duration,
}

impl NodeReporter {
    fn report(&self) -> NodeReport {
        NodeReport {
            node: NodeStats {
                address: Some(self.address.clone()),
                ..self.gateway.node_stats()
            },
            topics: self.gateway.hub().topic_stats(),
            reported_at_ms: ringside_protocol::unix_now_ms(),
        }
    }

    /// One heartbeat. A node that drains (or was asked to, or shuts down) writes its drain
    /// report instead, which also takes it out of the registry; a drain requested through the
    /// registry starts here, once the node is out of it.
    async fn heartbeat(&self, leaving: bool) -> Result<(), BackendError> {
        let node = self.gateway.node_id();
        let requested =
            !leaving && !self.gateway.is_draining() && self.registry.drain_requested(node).await?;
        if !(leaving || requested || self.gateway.is_draining()) {
            return self.registry.report(self.report()).await;
        }
        if !self.left.is_cancelled() {
            self.registry.leave(node).await?;
            self.left.cancel();
        }
        if requested {
            tracing::info!("drain requested through the node registry");
            self.gateway.start_drain();
        }
        self.registry.report_drain(self.report()).await
    }
}

/// Reports this node to the registry every heartbeat interval until `stopped`, then removes
/// it. On `shutdown` it leaves the registry at once (the drain waits for that). A registry
/// outage is logged once and the reports resume by themselves.
async fn run_node_reports(
    reporter: NodeReporter,
    shutdown: CancellationToken,
    stopped: CancellationToken,
) {
    let mut ticker = tokio::time::interval(reporter.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    let mut leaving = false;
    loop {
        tokio::select! {
            () = stopped.cancelled() => break,
            () = shutdown.cancelled(), if !leaving => leaving = true,
            _ = ticker.tick() => {}
        }
        // A registry that does not answer must not hold the reports (or, leaving, the drain).
        let bound = if leaving {
            LEAVE_REGISTRY_TIMEOUT
        } else {
            reporter.heartbeat_interval
        };
        let result = tokio::time::timeout(bound, reporter.heartbeat(leaving))
            .await
            .unwrap_or_else(|_| Err("the node registry did not answer in time".into()));
        if leaving {
            // Left, or the registry does not answer: then the entry expires by itself.
            reporter.left.cancel();
        }
        match result {
            Ok(()) if !reachable => {
                reachable = true;
                tracing::info!("node registry reachable again");
            }
            Err(error) if reachable => {
                reachable = false;
                tracing::warn!(%error, "node registry unavailable; devices are unaffected, reports resume when Redis answers");
            }
            _ => {}
        }
    }
    if let Err(error) = reporter.registry.forget(reporter.gateway.node_id()).await {
        tracing::warn!(%error, "could not remove this node from the registry; it expires by itself");
    }
}

/// The pace of the broadcast reports.
#[derive(Debug, Clone, Copy)]
struct BroadcastReportIntervals {
    /// How often changed records are written.
    write: Duration,
    /// How often the records are written at the latest, changed or not (their expiry).
    refresh: Duration,
}

/// Writes this node's broadcast records every `intervals.write`: the topics whose records
/// changed since they were last written, and at least every `intervals.refresh` a refresh of
/// their expiry (so they do not expire while the node lives), until `stopped`; then deletes
/// them. Through a drain too: a draining node still delivers. The first write, a write after a
/// failure, and a write that finds the records gone (the sink lost them) replace them with
/// every topic. An outage is logged once, as for the node reports.
async fn run_broadcast_reports(
    sink: Arc<dyn BroadcastRecordSink>,
    gateway: Arc<Gateway>,
    intervals: BroadcastReportIntervals,
    stopped: CancellationToken,
) {
    let mut ticker = tokio::time::interval(intervals.write);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the sink holds of each topic, as far as this node knows; `None`: nothing is known.
    let mut written: Option<HashMap<Topic, TopicRecords>> = None;
    let mut refreshed_at: Option<tokio::time::Instant> = None;
    let mut reachable = true;
    loop {
        tokio::select! {
            () = stopped.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reported_at_ms = ringside_protocol::unix_now_ms();
        let topics: Vec<TopicRecords> = gateway
            .hub()
            .broadcast_records_by_topic()
            .into_iter()
            .map(|(current, records)| TopicRecords {
                current,
                records,
                reported_at_ms,
            })
            .collect();
        let replace = written.is_none();
        let changed: Vec<&TopicRecords> = topics
            .iter()
            .filter(|topic| {
                written.as_ref().is_none_or(|held| {
                    held.get(&topic.current.topic).is_none_or(|last| {
                        last.current != topic.current || last.records != topic.records
                    })
                })
            })
            .collect();
        let due = refreshed_at.is_none_or(|at| at.elapsed() >= intervals.refresh);
        if changed.is_empty() && !replace && !due {
            continue;
        }
        let outcome = tokio::time::timeout(
            intervals.refresh,
            sink.write(gateway.node_id(), &changed, replace),
        )
        .await
        .unwrap_or_else(|_| Err("Redis did not answer in time".into()));
        match outcome {
            Ok(existed) => {
                if !reachable {
                    reachable = true;
                    tracing::info!("broadcast records reach Redis again");
                }
                refreshed_at = Some(tokio::time::Instant::now());
                if !existed && !replace && !topics.is_empty() {
                    // The records were gone: write every topic again on the next tick.
                    written = None;
                    continue;
                }
                let held = written.get_or_insert_with(HashMap::new);
                if replace {
                    held.clear();
                }
                for topic in changed {
                    held.insert(topic.current.topic.clone(), topic.clone());
                }
            }
            Err(error) => {
                written = None;
                if reachable {
                    reachable = false;
                    tracing::warn!(%error, "broadcast records not written; devices are unaffected, the report resumes when Redis answers");
                }
            }
        }
    }
    if let Err(error) = sink.forget(gateway.node_id()).await {
        tracing::warn!(%error, "could not delete this node's broadcast records; they expire by itself");
    }
}

/// What a node answers about itself when it is the whole deployment (no registry): its
/// control plane asks the gateway directly.
impl Gateway {
    /// Stats of this node alone.
    pub fn stats(&self) -> Stats {
        Stats {
            nodes: vec![self.node_stats()],
            topics: self.hub.topic_stats(),
        }
    }

    /// This node's broadcast records of every topic.
    pub fn broadcast_records(&self) -> NodeBroadcastRecords {
        let (current, records) = self.hub.all_broadcast_records();
        NodeBroadcastRecords {
            node: self.node_id().to_owned(),
            reported_at_ms: ringside_protocol::unix_now_ms(),
            current,
            records,
        }
    }

    /// This node's broadcast records of `topic` only (none when it holds no state of it), so
    /// that one event's report costs its own records.
    pub fn topic_broadcast_records(&self, topic: &Topic) -> NodeBroadcastRecords {
        let (current, records) = self
            .hub
            .topic_broadcast_records(topic)
            .map_or_else(Default::default, |(held, records)| (vec![held], records));
        NodeBroadcastRecords {
            node: self.node_id().to_owned(),
            reported_at_ms: ringside_protocol::unix_now_ms(),
            current,
            records,
        }
    }

    /// An operator's drain of `node`: started at once when `node` is this node (`None`
    /// otherwise), with whether this call started it.
    pub fn drain_if_named(self: &Arc<Self>, node: &str) -> Option<(DrainAnswer, bool)> {
        (node == self.node_id()).then(|| {
            let (progress, started) = self.start_drain();
            let answer = DrainAnswer {
                node: node.to_owned(),
                state: DrainState::Draining,
                progress: Some(progress),
            };
            (answer, started)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ringside_broadcaster::MemoryBus;
    use ringside_protection::ProtectionConfig;
    use ringside_protocol::{Payload, Priority, Stage};
    use ringside_sync_util::LockExt;

    use super::*;

    fn state(topic: &str, version: u64) -> EventState {
        EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
            priority: Priority::Critical,
            fetch_within_ms: None,
        }
    }

    fn topic(name: &str) -> Topic {
        Topic::parse(name).expect("topic")
    }

    fn device_key() -> DeviceTokenKey {
        DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!").expect("key")
    }

    fn protection(registry: &Registry) -> Arc<Protection> {
        Protection::new(ProtectionConfig::default(), "node-a", registry)
    }

    fn gateway(registry: &Arc<Registry>) -> Arc<Gateway> {
        Gateway::new(
            GatewayConfig {
                node_id: "node-a".to_owned(),
                ..GatewayConfig::default()
            },
            Arc::new(Hub::new(HubMetrics::new(registry))),
            device_key(),
            GatewayMetrics::new(registry),
        )
    }

    /// An event store in memory; `None`: it does not answer.
    #[derive(Default)]
    struct MemoryStore {
        states: Mutex<Option<Vec<EventState>>>,
    }

    impl MemoryStore {
        fn answering(states: Vec<EventState>) -> Arc<Self> {
            Arc::new(Self {
                states: Mutex::new(Some(states)),
            })
        }
    }

    impl StateStore for MemoryStore {
        fn current_states(&self) -> BoxFuture<'_, Option<Vec<EventState>>> {
            let states = self.states.locked().clone();
            Box::pin(async move { states })
        }
    }

    /// A node registry in memory that records what it was asked, in order.
    #[derive(Default)]
    struct MemoryRegistry {
        calls: Mutex<Vec<String>>,
        drain_requested: AtomicBool,
        /// Leaving never answers (a registry that hangs).
        leave_hangs: AtomicBool,
    }

    impl MemoryRegistry {
        fn record(&self, call: String) {
            self.calls.locked().push(call);
        }

        fn calls(&self) -> Vec<String> {
            self.calls.locked().clone()
        }
    }

    impl FleetRegistry for MemoryRegistry {
        fn report(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>> {
            let address = report.node.address.unwrap_or_default();
            let shed = report.node.shed.map(|shed| shed.bulk);
            self.record(format!(
                "report {} at {address}, bulk shed {shed:?}",
                report.node.node
            ));
            Box::pin(async { Ok(()) })
        }

        fn drain_requested<'a>(
            &'a self,
            _node: &'a str,
        ) -> BoxFuture<'a, Result<bool, BackendError>> {
            let requested = self.drain_requested.load(Ordering::Acquire);
            Box::pin(async move { Ok(requested) })
        }

        fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
            if self.leave_hangs.load(Ordering::Acquire) {
                return Box::pin(std::future::pending());
            }
            self.record(format!("leave {node}"));
            Box::pin(async { Ok(()) })
        }

        fn report_drain(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>> {
            let drain = report.node.drain.is_some();
            self.record(format!(
                "drain report {} (progress: {drain})",
                report.node.node
            ));
            Box::pin(async { Ok(()) })
        }

        fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
            self.record(format!("forget {node}"));
            Box::pin(async { Ok(()) })
        }
    }

    /// Broadcast records in memory: each write as (replace, the topics written); `lost`: the
    /// next write finds the records gone.
    #[derive(Default)]
    struct MemorySink {
        writes: Mutex<Vec<(bool, Vec<TopicVersion>)>>,
        lost: AtomicBool,
        forgotten: AtomicBool,
    }

    impl MemorySink {
        fn writes(&self) -> Vec<(bool, Vec<TopicVersion>)> {
            self.writes.locked().clone()
        }
    }

    impl BroadcastRecordSink for MemorySink {
        fn write<'a>(
            &'a self,
            _node: &'a str,
            changed: &'a [&'a TopicRecords],
            replace: bool,
        ) -> BoxFuture<'a, Result<bool, BackendError>> {
            let mut writes = self.writes.locked();
            let existed = !writes.is_empty() && !self.lost.swap(false, Ordering::AcqRel);
            writes.push((
                replace,
                changed.iter().map(|topic| topic.current.clone()).collect(),
            ));
            Box::pin(async move { Ok(existed) })
        }

        fn forget<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
            self.forgotten.store(true, Ordering::Release);
            Box::pin(async { Ok(()) })
        }
    }

    fn version(name: &str, version: u64) -> TopicVersion {
        TopicVersion {
            topic: topic(name),
            version,
        }
    }

    #[tokio::test]
    async fn seeding_applies_the_store_states_and_skips_a_store_that_does_not_answer() {
        let registry = Registry::new();
        let hub = Hub::new(HubMetrics::new(&registry));
        seed_hub(&MemoryStore::default(), &hub).await;
        assert_eq!(hub.version(&topic("event:a")), 0);

        let store = MemoryStore::answering(vec![state("event:a", 4), state("event:b", 7)]);
        seed_hub(store.as_ref(), &hub).await;
        assert_eq!(hub.version(&topic("event:a")), 4);
        assert_eq!(hub.version(&topic("event:b")), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reconciler_applies_what_the_hub_still_lacks_after_a_second_look_and_counts_it() {
        let registry = Registry::new();
        let hub = Arc::new(Hub::new(HubMetrics::new(&registry)));
        // The hub holds b already and lacks a and c.
        hub.apply(&state("event:b", 3));
        let store = MemoryStore::answering(vec![
            state("event:a", 2),
            state("event:b", 3),
            state("event:c", 5),
        ]);
        let repaired = registry.counter("repaired_total", "test");
        let stopped = CancellationToken::new();
        let reconciler = tokio::spawn(run_reconciler(
            store.clone(),
            hub.clone(),
            repaired.clone(),
            stopped.clone(),
        ));

        // The first comparison saw a and c lacking; the second look has not come yet.
        tokio::time::sleep(RECONCILE_INTERVAL + RECONCILE_SECOND_LOOK / 2).await;
        assert_eq!(
            hub.version(&topic("event:a")),
            0,
            "applied before the second look"
        );
        assert_eq!(repaired.get(), 0);
        // Meanwhile the bus delivers c: only a is still lacking at the second look.
        hub.apply(&state("event:c", 5));

        tokio::time::sleep(RECONCILE_SECOND_LOOK).await;
        assert_eq!(hub.version(&topic("event:a")), 2);
        assert_eq!(
            repaired.get(),
            1,
            "only the state the bus never delivered counts"
        );

        // The next comparisons find nothing lacking: nothing is applied again.
        tokio::time::sleep(RECONCILE_INTERVAL * 2).await;
        assert_eq!(repaired.get(), 1);

        stopped.cancel();
        tokio::time::timeout(Duration::from_secs(1), reconciler)
            .await
            .expect("the reconciler ends with `stopped`")
            .expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn the_reconciler_skips_a_store_that_does_not_answer_and_repairs_once_it_does() {
        let registry = Registry::new();
        let hub = Arc::new(Hub::new(HubMetrics::new(&registry)));
        let store = Arc::new(MemoryStore::default());
        let repaired = registry.counter("repaired_total", "test");
        let stopped = CancellationToken::new();
        let _reconciler = tokio::spawn(run_reconciler(
            store.clone(),
            hub.clone(),
            repaired.clone(),
            stopped.clone(),
        ));

        tokio::time::sleep(RECONCILE_INTERVAL * 3).await;
        assert_eq!(repaired.get(), 0);

        *store.states.locked() = Some(vec![state("event:a", 9)]);
        tokio::time::sleep(RECONCILE_INTERVAL + RECONCILE_SECOND_LOOK).await;
        assert_eq!(hub.version(&topic("event:a")), 9);
        assert_eq!(repaired.get(), 1);
        stopped.cancel();
    }

    fn reporter(registry: &Arc<MemoryRegistry>, gateway: &Arc<Gateway>) -> NodeReporter {
        NodeReporter {
            registry: registry.clone(),
            gateway: gateway.clone(),
            address: "10.0.0.1:8080".to_owned(),
            left: CancellationToken::new(),
            heartbeat_interval: Duration::from_secs(2),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_reporter_reports_while_running_leaves_on_shutdown_and_forgets_on_stop() {
        let metrics = Registry::new();
        let gateway = gateway(&metrics);
        gateway.report_shedding_of(protection(&metrics));
        let registry = Arc::new(MemoryRegistry::default());
        let reporter = reporter(&registry, &gateway);
        let left = reporter.left.clone();
        let (shutdown, stopped) = (CancellationToken::new(), CancellationToken::new());
        let reports = tokio::spawn(run_node_reports(
            reporter,
            shutdown.clone(),
            stopped.clone(),
        ));

        // Heartbeats at 0, 2 and 4 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            registry.calls(),
            vec!["report node-a at 10.0.0.1:8080, bulk shed Some(0)"; 3],
            "one report per heartbeat, with the node's address and its shed counts"
        );
        assert!(!left.is_cancelled());

        shutdown.cancel();
        tokio::time::timeout(LEAVE_REGISTRY_TIMEOUT, left.cancelled())
            .await
            .expect("the node leaves the registry at once on shutdown");
        let calls = registry.calls();
        assert_eq!(
            calls[3..],
            ["leave node-a", "drain report node-a (progress: false)"]
        );

        stopped.cancel();
        tokio::time::timeout(Duration::from_secs(1), reports)
            .await
            .expect("the reporter ends with `stopped`")
            .expect("no panic");
        assert_eq!(
            registry.calls().last().map(String::as_str),
            Some("forget node-a")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_requested_through_the_registry_leaves_it_and_starts_the_drain() {
        let metrics = Registry::new();
        let gateway = gateway(&metrics);
        let registry = Arc::new(MemoryRegistry::default());
        registry.drain_requested.store(true, Ordering::Release);
        let reporter = reporter(&registry, &gateway);
        let left = reporter.left.clone();

        reporter.heartbeat(false).await.expect("heartbeat");
        assert!(gateway.is_draining());
        assert!(left.is_cancelled());
        assert_eq!(
            registry.calls(),
            ["leave node-a", "drain report node-a (progress: true)"]
        );
        // A draining node keeps writing its drain report, out of the registry.
        reporter.heartbeat(false).await.expect("heartbeat");
        assert_eq!(
            registry.calls()[2..],
            ["drain report node-a (progress: true)"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_registry_that_does_not_answer_holds_the_drain_no_longer_than_the_leave_timeout() {
        let metrics = Registry::new();
        let gateway = gateway(&metrics);
        let registry = Arc::new(MemoryRegistry::default());
        registry.leave_hangs.store(true, Ordering::Release);
        let reporter = reporter(&registry, &gateway);
        let left = reporter.left.clone();
        let (shutdown, stopped) = (CancellationToken::new(), CancellationToken::new());
        let _reports = tokio::spawn(run_node_reports(
            reporter,
            shutdown.clone(),
            stopped.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;

        shutdown.cancel();
        let started = tokio::time::Instant::now();
        left.cancelled().await;
        let waited = started.elapsed();
        assert!(
            waited >= LEAVE_REGISTRY_TIMEOUT && waited < LEAVE_REGISTRY_TIMEOUT * 2,
            "left after {waited:?}"
        );
        assert!(!registry.calls().contains(&"leave node-a".to_owned()));
        stopped.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_reports_write_changes_refresh_when_due_and_rewrite_what_the_sink_lost() {
        let metrics = Registry::new();
        let gateway = gateway(&metrics);
        gateway.hub().apply(&state("event:a", 1));
        gateway.hub().apply(&state("event:b", 1));
        let sink = Arc::new(MemorySink::default());
        let stopped = CancellationToken::new();
        let intervals = BroadcastReportIntervals {
            write: Duration::from_millis(500),
            refresh: Duration::from_secs(2),
        };
        let reports = tokio::spawn(run_broadcast_reports(
            sink.clone(),
            gateway.clone(),
            intervals,
            stopped.clone(),
        ));

        // The first write replaces whatever was held with every topic.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut first = sink.writes();
        first[0]
            .1
            .sort_by(|x, y| x.topic.as_str().cmp(y.topic.as_str()));
        assert_eq!(
            first,
            [(true, vec![version("event:a", 1), version("event:b", 1)])]
        );

        // A change is written alone, at the next tick.
        gateway.hub().apply(&state("event:b", 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.writes()[1..], [(false, vec![version("event:b", 2)])]);

        // Nothing changes: the next write is the refresh, once due.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(
            sink.writes().len(),
            2,
            "no write without a change before the refresh"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(sink.writes()[2..], [(false, vec![])]);

        // The sink lost the records: the next write replaces them with every topic.
        sink.lost.store(true, Ordering::Release);
        gateway.hub().apply(&state("event:a", 2));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let writes = sink.writes();
        assert_eq!(writes[3], (false, vec![version("event:a", 2)]));
        let (replace, mut topics) = writes[4].clone();
        topics.sort_by(|x, y| x.topic.as_str().cmp(y.topic.as_str()));
        assert!(replace);
        assert_eq!(topics, [version("event:a", 2), version("event:b", 2)]);

        stopped.cancel();
        reports.await.expect("no panic");
        assert!(
            sink.forgotten.load(Ordering::Acquire),
            "records deleted on stop"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_seeds_from_the_store_and_leaves_the_registry_before_it_drains() {
        let metrics = Registry::new();
        let registry = Arc::new(MemoryRegistry::default());
        let sink = Arc::new(MemorySink::default());
        let fleet = Fleet {
            store: MemoryStore::answering(vec![state("event:a", 6)]),
            registry: registry.clone(),
            broadcasts: sink.clone(),
            address: "10.0.0.1:8080".to_owned(),
            heartbeat_interval: Duration::from_secs(2),
            broadcast_report_interval: Duration::from_millis(500),
        };
        let stops = NodeStops {
            shutdown: CancellationToken::new(),
            stopped: CancellationToken::new(),
        };
        let node = Node::start(
            GatewayConfig {
                node_id: "node-a".to_owned(),
                ..GatewayConfig::default()
            },
            device_key(),
            Arc::new(MemoryBus::new()),
            Some(fleet),
            &metrics,
            protection(&metrics),
            stops.clone(),
        )
        .await
        .expect("started");
        assert!(node.gateway().hub().is_ready());
        assert_eq!(node.gateway().hub().version(&topic("event:a")), 6);
        assert!(
            metrics
                .render()
                .contains("ringside_states_reconciled_total"),
            "a node in a fleet counts its repairs"
        );

        stops.shutdown.cancel();
        node.drain().await;
        assert!(
            registry.calls().contains(&"leave node-a".to_owned()),
            "the drain starts once the node left the registry"
        );
        stops.stopped.cancel();
        node.stop().await;
        assert_eq!(
            registry.calls().last().map(String::as_str),
            Some("forget node-a")
        );
        assert!(sink.forgotten.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_single_node_answers_for_itself() {
        let metrics = Registry::new();
        let gateway = gateway(&metrics);
        gateway.hub().apply(&state("event:a", 3));
        assert_eq!(gateway.stats().nodes[0].node, "node-a");
        assert_eq!(gateway.broadcast_records().current, [version("event:a", 3)]);
        assert_eq!(
            gateway.topic_broadcast_records(&topic("event:a")).current,
            [version("event:a", 3)]
        );
        assert!(
            gateway
                .topic_broadcast_records(&topic("event:z"))
                .current
                .is_empty()
        );

        assert!(gateway.drain_if_named("node-b").is_none());
        assert!(
            !gateway.is_draining(),
            "another node's drain is not this node's"
        );
        let (answer, started) = gateway.drain_if_named("node-a").expect("this node");
        assert!(started && gateway.is_draining());
        assert_eq!(answer.state, DrainState::Draining);
        let (_, started_again) = gateway.drain_if_named("node-a").expect("this node");
        assert!(!started_again);
    }
}
