//! Tier 1 on Kafka: [`KafkaBus`] implements [`ringside_broadcaster::Bus`] over one topic.
//!
//! - **Publish**: each state is one record keyed by its topic name, produced by an idempotent
//!   producer with `acks=all`. A best-effort message (`"priority":"best_effort"`) is keyed by
//!   its topic name and `/best_effort` ([`record_key`]), so that log compaction keeps an event's
//!   latest state and its latest best-effort message side by side and never drops the state for
//!   a best-effort message. Both lanes of an event go to one partition ([`partition_of`], the
//!   partition librdkafka's default partitioner picks for the state's key; other partitioners
//!   are refused), so they keep their publish order. A best-effort message that cannot be
//!   placed so (the partition count is not known yet) is dropped ([`record_partition`]). The
//!   publish resolves only once the broker has acknowledged the record, or
//!   fails with [`BroadcastError::BusUnavailable`] within the publish timeout.
//! - **Feed**: every node reads every partition by manual assignment (no consumer group: each
//!   node must see every state), from the beginning of the log. The topic is created
//!   log-compacted, so the log holds about one record per event plus the recent tail. The feed
//!   reports [`FeedItem::CaughtUp`] once every partition reached the end it had when the feed
//!   started (the high watermark, or an end-of-partition event, whichever comes first).
//!   Correctness does not rest on either: states carry versions and consumers drop anything not
//!   newer than what they hold, and the gateway also reconciles with the event store.
//! - rdkafka's blocking consumer runs on its own OS thread and hands states to the async side
//!   through a bounded channel, so nothing blocks the runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use ringside_broadcaster::{BroadcastError, Bus, BusFeed, FeedItem};
use ringside_protocol::EventState;
use ringside_sync_util::LockExt;
use ringside_telemetry::{Counter, LogBudget, Registry};
use tokio::sync::mpsc;

/// Topic of Ringside's state records unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "ringside.states";

/// [`KafkaConfig::publish_timeout`] unless configured otherwise.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The milliseconds [`KafkaConfig::publish_timeout`] may take: at least librdkafka's 1 s, and
/// below the control plane's publish lock lifetime (30 s), so a lock always outlives its publish.
pub const PUBLISH_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1000..=20_000;

/// How a node reaches Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    pub topic: String,
    /// Partitions and replication factor used when Ringside creates the topic; `None` takes the
    /// broker's defaults (`num.partitions`, `default.replication.factor`). An existing topic is
    /// used as it is.
    pub partitions: Option<i32>,
    pub replication: Option<i32>,
    /// How long a publish may wait for the broker's acknowledgement before it fails
    /// (librdkafka's `message.timeout.ms`, at least 1 s).
    pub publish_timeout: Duration,
    /// How long startup waits for the broker (topic creation, metadata) before giving up.
    pub connect_timeout: Duration,
    /// librdkafka properties passed through unchanged to every client (TLS, SASL, tuning);
    /// they override Ringside's own settings.
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: DEFAULT_TOPIC.to_owned(),
            partitions: None,
            replication: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            connect_timeout: Duration::from_secs(30),
            options: Vec::new(),
        }
    }

    /// Checks every bound; runs before anything binds (and before [`KafkaBus::connect`]'s
    /// clients are created).
    pub fn validate(&self) -> Result<(), KafkaSetupError> {
        let publish_timeout_ms =
            u64::try_from(self.publish_timeout.as_millis()).unwrap_or(u64::MAX);
        if !PUBLISH_TIMEOUT_MS.contains(&publish_timeout_ms) {
            return Err(KafkaSetupError::PublishTimeout(publish_timeout_ms));
        }
        Ok(())
    }

    /// Parses librdkafka properties, one `key=value` per line; blank lines and lines starting
    /// with `#` are skipped.
    pub fn parse_options(text: &str) -> Result<Vec<(String, String)>, KafkaSetupError> {
        text.lines()
            .enumerate()
            .map(|(index, line)| (index, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(index, line)| match line.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    Ok((key.trim().to_owned(), value.trim().to_owned()))
                }
                // The line itself is not shown: it may hold a password.
                _ => Err(KafkaSetupError::Options(format!(
                    "line {}: expected key=value",
                    index + 1
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .and_then(|options| check_options(&options).map(|()| options))
    }

    fn client(&self, own: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        // Notice a recreated topic (or new partitions) within seconds.
        config.set("topic.metadata.refresh.interval.ms", "5000");
        for (key, value) in own {
            config.set(*key, value);
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    fn producer(&self) -> Result<FutureProducer, KafkaSetupError> {
        let timeout_ms = self.publish_timeout.as_millis().to_string();
        self.client(&[
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            // A state change is one small record: send it now rather than batch it.
            ("linger.ms", "0".into()),
            ("message.timeout.ms", timeout_ms.clone()),
            ("request.timeout.ms", timeout_ms),
        ])
        .create()
        .map_err(KafkaSetupError::Client)
    }

    fn consumer(&self) -> Result<BaseConsumer, KafkaSetupError> {
        self.client(&[
            // Required by librdkafka even though the feed never joins a group or commits.
            ("group.id", "ringside-gateway".into()),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "true".into()),
            // A log that starts over (a broker that lost its data) is read from its start.
            ("auto.offset.reset", "earliest".into()),
            ("fetch.wait.max.ms", "100".into()),
            // Notice a recreated topic quickly.
        ])
        .create()
        .map_err(KafkaSetupError::Client)
    }
}

/// librdkafka `partitioner` values that place a keyed record by the CRC-32 of its key, as
/// [`partition_of`] does for best-effort records (every record Ringside produces is keyed).
const CRC32_PARTITIONERS: [&str; 2] = ["consistent_random", "consistent"];

/// Refuses options Ringside cannot work with: a `partitioner` outside the CRC-32 family would
/// put an event's stage states on another partition than its best-effort records, which
/// [`partition_of`] places explicitly, and the two lanes would lose their order.
fn check_options(options: &[(String, String)]) -> Result<(), KafkaSetupError> {
    match options.iter().find(|(key, _)| key == "partitioner") {
        Some((_, value)) if !CRC32_PARTITIONERS.contains(&value.as_str()) => {
            Err(KafkaSetupError::Options(format!(
                "partitioner={value}: Ringside places best-effort records in their state's \
                 partition by CRC-32, so only partitioner={} (the default) or {} keep an \
                 event's records on one partition",
                CRC32_PARTITIONERS[0], CRC32_PARTITIONERS[1]
            )))
        }
        _ => Ok(()),
    }
}

/// Why the Kafka bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("invalid Kafka option: {0}")]
    Options(String),
    /// [`KafkaConfig::publish_timeout`] outside [`PUBLISH_TIMEOUT_MS`]; the message names the
    /// flag that sets it.
    #[error("--kafka-publish-timeout-ms must be between 1000 and 20000, not {0}")]
    PublishTimeout(u64),
    #[error("cannot create a Kafka client: {0}")]
    Client(#[source] KafkaError),
    #[error("cannot create Kafka topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("Kafka at {brokers} did not answer within {waited:?}: {reason}")]
    Unreachable {
        brokers: String,
        waited: Duration,
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct BusMetrics {
    received: Arc<Counter>,
    invalid: Arc<Counter>,
    errors: Arc<Counter>,
    topic_created: Arc<Counter>,
    best_effort_unplaced: Arc<Counter>,
}

impl BusMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            received: registry.counter(
                "ringside_bus_records_total",
                "State records this node read from the Kafka topic.",
            ),
            invalid: registry.counter(
                "ringside_bus_invalid_records_total",
                "Records on the Kafka topic that are not a valid state (skipped).",
            ),
            errors: registry.counter(
                "ringside_bus_errors_total",
                "Errors reported by the Kafka consumer (librdkafka retries by itself).",
            ),
            topic_created: registry.counter(
                "ringside_bus_topic_created_total",
                "Times this process created the Kafka topic (at first start, or after a broker lost it).",
            ),
            best_effort_unplaced: registry.counter(
                "ringside_bus_best_effort_unplaced_total",
                "Best-effort messages dropped because the topic's partition count was unknown (their state's partition could not be computed).",
            ),
        }
    }
}

/// How often a process checks that the topic still exists (a broker that keeps nothing on
/// disk comes back without it), creating it again if not.
pub const TOPIC_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The tier-1 bus of a multi-node deployment.
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    /// Replaced when the broker fences it (see [`KafkaBus::publish`]); cloning is cheap.
    producer: Mutex<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    metrics: BusMetrics,
    /// The topic's partition count as last read from the broker (0: not known yet), for
    /// [`partition_of`].
    partitions: AtomicI32,
    /// When a best-effort publish last re-read the partition count (at most once a second).
    partitions_reread_at: Mutex<Option<Instant>>,
    unplaced_log: LogBudget,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.config.brokers)
            .field("topic", &self.inner.config.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// Checks the config ([`KafkaConfig::validate`]), connects, and creates the topic if it
    /// does not exist yet; waits up to `connect_timeout` for the broker.
    pub async fn connect(
        config: KafkaConfig,
        registry: &Registry,
    ) -> Result<Self, KafkaSetupError> {
        config.validate()?;
        let admin: AdminClient<DefaultClientContext> = config
            .client(&[])
            .create()
            .map_err(KafkaSetupError::Client)?;
        check_options(&config.options)?;
        let bus = Inner {
            producer: Mutex::new(config.producer()?),
            admin,
            metrics: BusMetrics::new(registry),
            partitions: AtomicI32::new(0),
            partitions_reread_at: Mutex::new(None),
            unplaced_log: LogBudget::new(registry, "kafka_best_effort_unplaced", 1),
            config,
        };
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match bus.ensure_topic().await {
                Ok(()) => {
                    let inner = Arc::new(bus);
                    tokio::spawn(guard_topic(Arc::downgrade(&inner)));
                    return Ok(Self { inner });
                }
                Err(error @ KafkaSetupError::Topic { .. }) => return Err(error),
                Err(error) if started.elapsed() >= bus.config.connect_timeout => {
                    return Err(KafkaSetupError::Unreachable {
                        brokers: bus.config.brokers.clone(),
                        waited: started.elapsed(),
                        reason: error.to_string(),
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "waiting for Kafka");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Every [`TOPIC_CHECK_INTERVAL`] while the bus lives, creates the topic if it is missing.
async fn guard_topic(bus: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(TOPIC_CHECK_INTERVAL).await;
        let Some(bus) = bus.upgrade() else {
            return;
        };
        if let Err(error) = bus.ensure_topic().await {
            tracing::debug!(%error, "topic check failed; retrying");
        }
    }
}

impl Inner {
    /// Creates the topic, log-compacted, unless it exists.
    async fn ensure_topic(&self) -> Result<(), KafkaSetupError> {
        let replication = TopicReplication::Fixed(self.config.replication.unwrap_or(-1));
        let topic = NewTopic::new(
            &self.config.topic,
            self.config.partitions.unwrap_or(-1),
            replication,
        )
        .set("cleanup.policy", "compact");
        let options = AdminOptions::new()
            .operation_timeout(Some(Timeout::After(Duration::from_secs(5))))
            .request_timeout(Some(Timeout::After(Duration::from_secs(5))));
        let results = self
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|error| KafkaSetupError::Unreachable {
                brokers: self.config.brokers.clone(),
                waited: Duration::ZERO,
                reason: error.to_string(),
            })?;
        for result in results {
            match result {
                Ok(name) => {
                    self.metrics.topic_created.increment();
                    tracing::info!(topic = %name, "created the Kafka topic (log-compacted)");
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // A user without the right to create topics checks nothing here: Kafka refuses
                // before it looks whether the topic exists. Use the topic as provisioned; the
                // feed waits for it and a publish to a missing topic fails with 503.
                Err((
                    name,
                    RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed,
                )) => {
                    tracing::debug!(topic = %name, "not allowed to create Kafka topics; using the topic as provisioned");
                }
                Err((name, code)) if is_transient(code) => {
                    return Err(KafkaSetupError::Unreachable {
                        brokers: self.config.brokers.clone(),
                        waited: Duration::ZERO,
                        reason: format!("creating {name}: {code}"),
                    });
                }
                Err((name, code)) => {
                    return Err(KafkaSetupError::Topic {
                        topic: name,
                        reason: code.to_string(),
                    });
                }
            }
        }
        self.read_partition_count(METADATA_TIMEOUT).await;
        Ok(())
    }

    /// Reads the topic's partition count from the broker's metadata (a blocking call, off
    /// the runtime); keeps the last known count when the broker does not answer.
    async fn read_partition_count(&self, timeout: Duration) {
        let (producer, topic) = (self.current_producer(), self.config.topic.clone());
        let read = tokio::task::spawn_blocking(move || {
            let metadata = producer
                .client()
                .fetch_metadata(Some(&topic), timeout)
                .ok()?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| t.partitions().len())?;
            i32::try_from(count).ok().filter(|&count| count > 0)
        })
        .await;
        if let Ok(Some(count)) = read {
            self.partitions.store(count, Ordering::Relaxed);
        }
    }

    /// The partition to produce `state` to ([`record_partition`]). A best-effort message
    /// while the count is unknown re-reads it first, briefly and at most once a second (stage
    /// states never wait for this); `None` if it is still unknown, else the partition to pass
    /// to [`Inner::produce`].
    async fn partition_for(&self, state: &EventState) -> Option<Option<i32>> {
        let placed = || match record_partition(state, self.partitions.load(Ordering::Relaxed)) {
            Placement::Partition(partition) => Some(Some(partition)),
            Placement::ByKey => Some(None),
            Placement::Unplaced => None,
        };
        if let Some(placed) = placed() {
            return Some(placed);
        }
        let reread = {
            let mut at = self.partitions_reread_at.locked();
            let due = at.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        if reread {
            self.read_partition_count(BEST_EFFORT_METADATA_TIMEOUT)
                .await;
        }
        placed()
    }

    /// Drops a best-effort message [`record_partition`] could not place: produced by its own
    /// key it might land on another partition than its state and overtake it or fall behind.
    fn drop_unplaced(&self, state: &EventState) {
        self.metrics.best_effort_unplaced.increment();
        if self.unplaced_log.allow() {
            tracing::warn!(event = %state.topic, version = state.version, "Kafka topic's partition count unknown; best-effort message dropped");
        }
    }

    fn current_producer(&self) -> FutureProducer {
        self.producer.locked().clone()
    }

    /// Produces one record. With `partition` it goes there; without, librdkafka's partitioner
    /// picks one from the key.
    async fn produce(
        &self,
        key: &str,
        partition: Option<i32>,
        payload: &[u8],
    ) -> Result<(), KafkaError> {
        let mut record = FutureRecord::to(&self.config.topic)
            .key(key)
            .payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        self.current_producer()
            .send(record, Timeout::After(self.config.publish_timeout))
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }

    /// Replaces the producer with a new one (a new producer id); false if none can be made.
    fn renew_producer(&self) -> bool {
        match self.config.producer() {
            Ok(producer) => {
                let old = std::mem::replace(&mut *self.producer.locked(), producer);
                // Tearing a producer down joins its thread and flushes: not on the runtime.
                tokio::task::spawn_blocking(move || drop(old));
                true
            }
            Err(error) => {
                tracing::error!(%error, "cannot start a new Kafka producer");
                false
            }
        }
    }

    /// Repairs what a failed produce left behind; returns whether trying once more now makes
    /// sense (not after a timeout: the publish has waited long enough).
    ///
    /// The producer is always replaced: an idempotent producer whose publish failed (a paused
    /// or restarted broker) can stay fenced or stuck on producer state the broker no longer
    /// has. A new one starts with a new producer id; creating it costs about a millisecond.
    async fn recover(&self, error: &KafkaError) -> bool {
        let code = error.rdkafka_error_code();
        if !self.renew_producer() {
            return false;
        }
        if matches!(
            code,
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        ) {
            // The broker lost the topic (one that keeps nothing on disk came back empty).
            tracing::warn!(topic = %self.config.topic, "Kafka topic missing; creating it again");
            if self.ensure_topic().await.is_err() {
                return false;
            }
        }
        !matches!(code, Some(RDKafkaErrorCode::MessageTimedOut))
    }
}

/// How long topic setup waits for the topic's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a best-effort publish waits for the topic's metadata when its partition count is
/// not known yet.
const BEST_EFFORT_METADATA_TIMEOUT: Duration = Duration::from_millis(500);

/// Where a record goes ([`record_partition`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// This partition ([`partition_of`]): both lanes of an event on one partition.
    Partition(i32),
    /// librdkafka's partitioner, by the record's key.
    ByKey,
    /// Nowhere: the record cannot be placed in its state's partition.
    Unplaced,
}

/// Where a record of `state` goes when the topic has `partitions` partitions (0: not known).
/// While the count is unknown a stage state goes by its key (the partitioner picks the same
/// partition as [`partition_of`]), but a best-effort message is unplaced: its own key may hash
/// to another partition, where it could overtake its state or fall behind it.
pub fn record_partition(state: &EventState, partitions: i32) -> Placement {
    if partitions > 0 {
        Placement::Partition(partition_of(state.topic.as_str(), partitions))
    } else if state.priority.is_critical() {
        Placement::ByKey
    } else {
        Placement::Unplaced
    }
}

fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
    )
}

impl Bus for KafkaBus {
    fn publish(&self, state: EventState) -> BoxFuture<'_, Result<(), BroadcastError>> {
        let bus = &self.inner;
        Box::pin(async move {
            let payload = serde_json::to_vec(&state)
                .map_err(|error| BroadcastError::BusUnavailable(error.to_string()))?;
            let key = record_key(&state);
            let attempts = async {
                // Placed at each attempt: a recovery may have re-read the partition count.
                let Some(partition) = bus.partition_for(&state).await else {
                    bus.drop_unplaced(&state);
                    return Ok(());
                };
                let mut result = bus.produce(&key, partition, &payload).await;
                if let Err(error) = &result
                    && bus.recover(error).await
                {
                    let Some(partition) = bus.partition_for(&state).await else {
                        bus.drop_unplaced(&state);
                        return Ok(());
                    };
                    result = bus.produce(&key, partition, &payload).await;
                }
                result.map_err(|error| error.to_string())
            };
            // Retries and topic repairs included, a publish is answered within the timeout.
            let result = match tokio::time::timeout(bus.config.publish_timeout, attempts).await {
                Ok(result) => result,
                Err(_) => {
                    bus.renew_producer();
                    Err("not acknowledged within the publish timeout".into())
                }
            };
            result.map_err(|error| {
                tracing::warn!(%error, event = %state.topic, version = state.version, "Kafka did not acknowledge a publish");
                BroadcastError::BusUnavailable(error)
            })
        })
    }

    fn subscribe(&self) -> Box<dyn BusFeed> {
        let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = FeedReader {
            config: self.inner.config.clone(),
            metrics: self.inner.metrics.clone(),
            sender,
            stop: stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("kafka-feed".into())
            .spawn(move || reader.run());
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the Kafka feed thread");
        }
        Box::new(KafkaFeed { receiver, stop })
    }
}

/// States read ahead of the hub. Reading stops (and the broker holds the rest) while full.
const FEED_CAPACITY: usize = 1024;

struct KafkaFeed {
    receiver: mpsc::Receiver<FeedItem>,
    stop: Arc<AtomicBool>,
}

impl BusFeed for KafkaFeed {
    fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>> {
        Box::pin(async move { self.receiver.recv().await.ok_or(BroadcastError::BusClosed) })
    }
}

impl Drop for KafkaFeed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The blocking side of a feed, on its own thread.
struct FeedReader {
    config: KafkaConfig,
    metrics: BusMetrics,
    sender: mpsc::Sender<FeedItem>,
    stop: Arc<AtomicBool>,
}

/// How a consumer's run ended.
enum Followed {
    Stopped,
    /// `after_reading`: the consumer had read records before (so it is not failing at once).
    LostBroker {
        error: KafkaError,
        after_reading: bool,
    },
}

/// How long one poll blocks; also how quickly the thread notices a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

impl FeedReader {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.sender.is_closed()
    }

    /// Follows the topic with one consumer after another until stopped: a consumer that lost
    /// its broker is replaced by a new one reading from the beginning of the log again (states
    /// it already delivered are dropped by the hub as not newer). librdkafka 2.12 crashes in its
    /// metadata cache when a consumer that knew the topic sees it again on a broker that came
    /// back without its data; a new consumer has no such cache.
    fn run(self) {
        let mut caught_up = false;
        let mut delay = Duration::from_millis(100);
        loop {
            let consumer = match self.config.consumer() {
                Ok(consumer) => consumer,
                Err(error) => {
                    // The feed ends; the node stays unready and opens a new feed with backoff.
                    tracing::error!(%error, "cannot create the Kafka consumer; the feed ends");
                    return;
                }
            };
            match self.follow(&consumer, &mut caught_up) {
                Followed::Stopped => return,
                Followed::LostBroker {
                    error,
                    after_reading,
                } => {
                    if after_reading {
                        delay = Duration::from_millis(100);
                    }
                    tracing::warn!(%error, "Kafka connection lost; following the topic with a new consumer");
                    drop(consumer);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Reads with `consumer` until stopped or until it loses its broker.
    fn follow(&self, consumer: &BaseConsumer, caught_up: &mut bool) -> Followed {
        let Some(mut pending) = self.assign(consumer) else {
            return Followed::Stopped;
        };
        let mut last_error_log: Option<Instant> = None;
        let mut after_reading = false;
        while !self.stopped() {
            if !*caught_up && pending.is_empty() {
                *caught_up = true;
                tracing::info!(topic = %self.config.topic, "caught up with the Kafka topic");
                if self.sender.blocking_send(FeedItem::CaughtUp).is_err() {
                    return Followed::Stopped;
                }
            }
            let Some(polled) = consumer.poll(POLL_INTERVAL) else {
                continue;
            };
            match polled {
                Ok(message) => {
                    self.metrics.received.increment();
                    after_reading = true;
                    let (partition, offset) = (message.partition(), message.offset());
                    if pending
                        .get(&partition)
                        .is_some_and(|end| offset + 1 >= *end)
                    {
                        pending.remove(&partition);
                    }
                    match decode_record(message.payload()) {
                        Ok(state) => {
                            if self
                                .sender
                                .blocking_send(FeedItem::State(Arc::new(state)))
                                .is_err()
                            {
                                return Followed::Stopped;
                            }
                        }
                        Err(error) => {
                            self.metrics.invalid.increment();
                            tracing::warn!(partition, offset, %error, "skipping a record that is not a state");
                        }
                    }
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    pending.remove(&partition);
                }
                Err(error) => {
                    self.metrics.errors.increment();
                    if matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::AllBrokersDown
                                | RDKafkaErrorCode::BrokerTransportFailure
                        )
                    ) {
                        return Followed::LostBroker {
                            error,
                            after_reading,
                        };
                    }
                    // librdkafka keeps retrying by itself; say so at most every 5 s.
                    if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                        last_error_log = Some(Instant::now());
                        tracing::warn!(%error, "Kafka consumer error; retrying");
                    }
                }
            }
        }
        Followed::Stopped
    }

    /// Assigns every partition of the topic from its beginning; returns each partition's end
    /// (high watermark) at this moment, for the ones that hold records. Retries until the topic
    /// is there or the feed is stopped.
    fn assign(&self, consumer: &BaseConsumer) -> Option<HashMap<i32, i64>> {
        let topic = &self.config.topic;
        let timeout = Duration::from_secs(5);
        let mut delay = Duration::from_millis(100);
        loop {
            if self.stopped() {
                return None;
            }
            let partitions: Vec<i32> = match consumer.fetch_metadata(Some(topic), timeout) {
                Ok(metadata) => metadata
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic && t.error().is_none())
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, "waiting for Kafka metadata");
                    Vec::new()
                }
            };
            if !partitions.is_empty() {
                let mut list = TopicPartitionList::new();
                let mut ends = HashMap::new();
                for &partition in &partitions {
                    if let Err(error) =
                        list.add_partition_offset(topic, partition, Offset::Beginning)
                    {
                        tracing::error!(%error, partition, "cannot assign a Kafka partition");
                        return None;
                    }
                    match consumer.fetch_watermarks(topic, partition, timeout) {
                        Ok((low, high)) if high > low => {
                            ends.insert(partition, high);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, partition, "no watermark; relying on end-of-partition");
                            ends.insert(partition, i64::MAX);
                        }
                    }
                }
                match consumer.assign(&list) {
                    Ok(()) => {
                        tracing::info!(%topic, partitions = partitions.len(), "reading the Kafka topic from its beginning");
                        return Some(ends);
                    }
                    Err(error) => tracing::warn!(%error, "cannot assign the Kafka topic; retrying"),
                }
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// What the key of a best-effort record adds to its topic name. Event ids never hold a `/`, so
/// no state's key can equal a best-effort key.
pub const BEST_EFFORT_KEY_SUFFIX: &str = "/best_effort";

/// The record key of `state`: its topic name for a stage state, the topic name and
/// [`BEST_EFFORT_KEY_SUFFIX`] for a best-effort message. The log is compacted by key, so it keeps
/// the newest of each: a best-effort message never replaces a state.
pub fn record_key(state: &EventState) -> String {
    if state.priority.is_critical() {
        state.topic.to_string()
    } else {
        format!("{}{BEST_EFFORT_KEY_SUFFIX}", state.topic)
    }
}

/// The partition of every record of `topic` among `partitions` (at least 1): the CRC-32 of the
/// topic name modulo the count, which is the partition librdkafka's default partitioner
/// (`consistent_random`) picks for a state's key. States thus stay where they always were, and
/// best-effort records are sent to the same partition so an event's two lanes keep their order.
pub fn partition_of(topic: &str, partitions: i32) -> i32 {
    let count = u32::try_from(partitions.max(1)).unwrap_or(1);
    // Below `partitions`, so it fits an i32.
    (crc32(topic.as_bytes()) % count) as i32
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and librdkafka's `rd_crc32`), bit by bit: keys are
/// a few dozen bytes, hashed once per publish.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// Decodes one record read from the bus into the state it carries. Only the value is read: the
/// key (the topic name, which compaction goes by) is not trusted, the state names its own topic.
/// A record without a value (a tombstone) is an error like any other record that is not a state.
pub fn decode_record(value: Option<&[u8]>) -> Result<EventState, serde_json::Error> {
    serde_json::from_slice(value.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_timeouts_outside_their_range_are_refused() {
        let mut config = KafkaConfig::new("127.0.0.1:9092");
        assert!(config.validate().is_ok(), "the default is valid");
        for ms in [*PUBLISH_TIMEOUT_MS.start(), *PUBLISH_TIMEOUT_MS.end()] {
            config.publish_timeout = Duration::from_millis(ms);
            assert!(config.validate().is_ok(), "{ms} ms is in range");
        }
        for ms in [0, 999, 20_001] {
            config.publish_timeout = Duration::from_millis(ms);
            let error = config.validate().expect_err("out of range");
            assert_eq!(
                error.to_string(),
                format!("--kafka-publish-timeout-ms must be between 1000 and 20000, not {ms}")
            );
        }
    }

    fn message(priority: ringside_protocol::Priority) -> EventState {
        EventState {
            topic: ringside_protocol::Topic::parse("event:fight-night").expect("topic"),
            version: 7,
            stage: ringside_protocol::Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1,
            payload: ringside_protocol::Payload::empty(),
            priority,
            fetch_within_ms: None,
        }
    }

    #[test]
    fn best_effort_records_have_a_key_of_their_own_in_the_states_partition() {
        let state = message(ringside_protocol::Priority::Critical);
        let extra = message(ringside_protocol::Priority::BestEffort);
        assert_eq!(record_key(&state), "event:fight-night");
        assert_eq!(record_key(&extra), "event:fight-night/best_effort");
        // The check value of CRC-32/ISO-HDLC, the CRC librdkafka partitions keys by.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        for partitions in [1, 3, 12] {
            let partition = partition_of(state.topic.as_str(), partitions);
            assert!((0..partitions).contains(&partition));
        }
        assert_eq!(
            partition_of("event:any", 0),
            0,
            "a count of 0 is taken as 1"
        );
    }

    #[test]
    fn a_best_effort_message_is_placed_only_when_the_partition_count_is_known() {
        let state = message(ringside_protocol::Priority::Critical);
        let extra = message(ringside_protocol::Priority::BestEffort);
        let partition = Placement::Partition(partition_of("event:fight-night", 12));
        assert_eq!(record_partition(&state, 12), partition);
        assert_eq!(
            record_partition(&extra, 12),
            partition,
            "both lanes share a partition"
        );
        // Unknown count: the state's key picks its partition, the best-effort key might not.
        assert_eq!(record_partition(&state, 0), Placement::ByKey);
        assert_eq!(record_partition(&extra, 0), Placement::Unplaced);
    }

    #[test]
    fn only_a_crc32_partitioner_is_accepted() {
        for value in ["consistent_random", "consistent"] {
            let text = format!("partitioner={value}\n");
            assert!(KafkaConfig::parse_options(&text).is_ok(), "{value}");
        }
        for value in ["murmur2_random", "murmur2", "fnv1a_random", "random"] {
            let text = format!("linger.ms=5\npartitioner = {value}\n");
            let error = KafkaConfig::parse_options(&text).expect_err(value);
            assert!(error.to_string().contains("partitioner"), "{error}");
        }
    }

    #[test]
    fn options_are_key_value_lines_with_comments() {
        let options = KafkaConfig::parse_options(
            "# TLS\nsecurity.protocol = SASL_SSL\n\nsasl.mechanisms=PLAIN\nsasl.password=a=b\n",
        )
        .expect("valid");
        assert_eq!(
            options,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanisms".into(), "PLAIN".into()),
                ("sasl.password".into(), "a=b".into()),
            ]
        );
        let error =
            KafkaConfig::parse_options("ok=1\nsasl.password: hunter2\n").expect_err("invalid");
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(
            !error.to_string().contains("hunter2"),
            "the line may hold a secret: {error}"
        );
    }
}
