//! Best-effort messages on a real Kafka-protocol broker (tansu, memory storage): they never
//! replace an event's state for a node that joins later, they share the state's partition, and
//! that partition is the one librdkafka itself picks for the state's key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use ringside_broadcaster::{Bus, ConsumerConfig, Hub, HubMetrics, run_bus_consumer};
use ringside_kafka::{KafkaBus, KafkaConfig, partition_of, record_key};
use ringside_protocol::{EventState, Payload, Priority, Stage, Topic};
use ringside_telemetry::Registry;
use tokio_util::sync::CancellationToken;

#[path = "../../tests/it/support/tansu.rs"]
mod tansu;

const PROMPTLY: Duration = Duration::from_secs(20);
const PARTITIONS: i32 = 4;

/// A tansu broker of this test's own, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> Self {
        let port = tansu::free_port();
        let child = tansu::spawn(port, Stdio::null(), Stdio::null());
        Self { child, port }
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _killed_or_gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

fn message(topic: &str, version: u64, priority: Priority, payload: &str) -> EventState {
    EventState {
        topic: Topic::parse(topic).unwrap(),
        version,
        stage: Stage::parse("LIVE").unwrap(),
        published_at_ms: 1,
        payload: Payload::parse(payload).unwrap(),
        priority,
        fetch_within_ms: None,
    }
}

/// Every record of `topic` as (partition, key, version), read from the beginning.
fn records(broker: &str, topic: &str, expected: usize) -> Vec<(i32, String, u64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "lanes-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        list.add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let deadline = Instant::now() + PROMPTLY;
    let mut read = Vec::new();
    while read.len() < expected {
        assert!(Instant::now() < deadline, "read only {read:?}");
        let Some(Ok(record)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let key = String::from_utf8(record.key().unwrap().to_vec()).unwrap();
        let state = ringside_kafka::decode_record(record.payload()).unwrap();
        read.push((record.partition(), key, state.version));
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_best_effort_message_after_a_state_never_replaces_it_for_a_node_that_joins_later() {
    let broker = Broker::start();
    let mut config = KafkaConfig::new(broker.address());
    config.topic = format!("ringside.lanes.{}", std::process::id());
    config.partitions = Some(PARTITIONS);
    let registry = Registry::new();
    let bus: Arc<dyn Bus> = Arc::new(KafkaBus::connect(config.clone(), &registry).await.unwrap());

    // Per event: a state, then best-effort messages after it (the control plane's order).
    let events = ["event:alpha", "event:bravo", "event:charlie", "event:delta"];
    for event in events {
        bus.publish(message(event, 10, Priority::Critical, r#"{"hero":"main"}"#))
            .await
            .unwrap();
        for version in 11..=13 {
            let payload = format!(r#"{{"viewers":{version}}}"#);
            bus.publish(message(event, version, Priority::BestEffort, &payload))
                .await
                .unwrap();
        }
    }

    // A node that joins now ends with each event's state current and its newest best-effort
    // message beside it.
    let hub = Arc::new(Hub::new(HubMetrics::new(&Registry::new())));
    let shutdown = CancellationToken::new();
    let consumer = tokio::spawn(run_bus_consumer(
        bus.clone(),
        hub.clone(),
        ConsumerConfig::default(),
        shutdown.clone(),
    ));
    tokio::time::timeout(PROMPTLY, hub.wait_ready())
        .await
        .expect("the node caught up");
    for event in events {
        let topic = Topic::parse(event).unwrap();
        assert_eq!(hub.version(&topic), 10, "{event}: the state stays current");
        let deadline = Instant::now() + PROMPTLY;
        while hub.best_effort_version(&topic) != 13 {
            assert!(Instant::now() < deadline, "{event}: no best-effort message");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    shutdown.cancel();
    consumer.await.unwrap();

    // On the log: each event's lanes under keys of their own (so compaction keeps both), in
    // one partition, in publish order.
    let read = records(&broker.address(), &config.topic, events.len() * 4);
    for event in events {
        let state = message(event, 0, Priority::Critical, "{}");
        let extra = message(event, 0, Priority::BestEffort, "{}");
        let of_event: Vec<_> = read
            .iter()
            .filter(|(_, key, _)| key == &record_key(&state) || key == &record_key(&extra))
            .collect();
        assert_eq!(of_event.len(), 4, "{event}: {read:?}");
        let partition = partition_of(event, PARTITIONS);
        assert!(
            of_event.iter().all(|(p, _, _)| *p == partition),
            "{event}: {of_event:?}"
        );
        let versions: Vec<u64> = of_event.iter().map(|(_, _, v)| *v).collect();
        assert_eq!(versions, vec![10, 11, 12, 13], "{event}");
        assert_eq!(of_event[0].1, event);
        assert_eq!(of_event[1].1, format!("{event}/best_effort"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_stay_in_the_partition_librdkafka_picks_for_their_key() {
    let broker = Broker::start();
    let mut config = KafkaConfig::new(broker.address());
    config.topic = format!("ringside.partitions.{}", std::process::id());
    config.partitions = Some(PARTITIONS);
    // Creates the topic with its partitions.
    let _bus = KafkaBus::connect(config.clone(), &Registry::new())
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.address())
        .create()
        .unwrap();
    for index in 0..16 {
        let key = format!("event:e{index}");
        // librdkafka's default partitioner, as every producer of states before lanes used it.
        let delivered = producer
            .send(
                FutureRecord::to(&config.topic).key(&key).payload("{}"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)
            .unwrap();
        assert_eq!(delivered.partition, partition_of(&key, PARTITIONS), "{key}");
    }
}
