//! The control plane's store in the machine's Redis (each test under its own key prefix):
//! versions from several instances, persistence across restarts, and a clear 503 when Redis is
//! gone.

use std::collections::HashSet;

use crate::support::*;
use ringside_control::{EventStore, RedisEventStore};
use ringside_protocol::admin::CreateEvent;
use ringside_protocol::{EventId, Payload, Stage};

fn event(id: &str) -> CreateEvent {
    CreateEvent {
        id: EventId::parse(id).unwrap(),
        title: "Redis event".into(),
        starts_at: "2026-12-01T20:00:00Z".into(),
        stages: vec![
            Stage::parse("UPCOMING").unwrap(),
            Stage::parse("LIVE").unwrap(),
        ],
    }
}

#[tokio::test]
async fn versions_from_two_instances_are_unique_and_increasing() {
    let keys = RedisKeys::new("versions");
    let first = RedisEventStore::new(
        ringside::content::connect_redis(&keys.url).await.unwrap(),
        keys.prefix.clone(),
    );
    let second = RedisEventStore::new(
        ringside::content::connect_redis(&keys.url).await.unwrap(),
        keys.prefix.clone(),
    );
    first.create(event("shared")).await.unwrap();
    let id = EventId::parse("shared").unwrap();
    let assign = |store: RedisEventStore, id: EventId| async move {
        let mut versions = Vec::new();
        for _ in 0..50 {
            let state = store
                .next_state(&id, Stage::parse("LIVE").unwrap(), Payload::empty(), 0)
                .await
                .unwrap()
                .state;
            versions.push(state.version);
        }
        versions
    };
    let (a, b) = tokio::join!(
        assign(first.clone(), id.clone()),
        assign(second.clone(), id.clone())
    );
    assert!(
        a.windows(2).all(|w| w[0] < w[1]) && b.windows(2).all(|w| w[0] < w[1]),
        "increasing per instance"
    );
    let all: HashSet<u64> = a.iter().chain(b.iter()).copied().collect();
    assert_eq!(all.len(), 100, "no version handed out twice");
    // The event was created once; a second create conflicts, from either instance.
    assert!(matches!(
        second.create(event("shared")).await,
        Err(ringside_control::ControlError::Conflict(_))
    ));
}

#[tokio::test]
async fn one_instance_at_a_time_holds_an_events_publish_lock() {
    let keys = RedisKeys::new("publish-lock");
    let store = |keys: &RedisKeys| {
        let (url, prefix) = (keys.url.clone(), keys.prefix.clone());
        async move {
            RedisEventStore::new(
                ringside::content::connect_redis(&url).await.unwrap(),
                prefix,
            )
        }
    };
    let (first, second) = (store(&keys).await, store(&keys).await);
    let id = EventId::parse("locked").unwrap();
    let held = first
        .lock_publishes(&id)
        .await
        .unwrap()
        .expect("a shared lock");
    // While the first instance holds it, the second cannot take it.
    let waited = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        second.lock_publishes(&id),
    )
    .await;
    assert!(waited.is_err(), "the lock was taken twice");
    // Another event's lock is independent.
    let other = EventId::parse("other").unwrap();
    let other_lock = second.lock_publishes(&other).await.unwrap().unwrap();
    second.unlock_publishes(other_lock).await;
    // Only its holder's token releases it.
    second
        .unlock_publishes(ringside_control::store::PublishLock {
            key: held.key.clone(),
            token: "forged".into(),
        })
        .await;
    assert!(
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            second.lock_publishes(&id)
        )
        .await
        .is_err()
    );
    first.unlock_publishes(held).await;
    let next = tokio::time::timeout(PROMPTLY, second.lock_publishes(&id))
        .await
        .expect("free once released")
        .unwrap();
    assert!(next.is_some());
    second.unlock_publishes(next.unwrap()).await;
}

#[tokio::test]
async fn a_restarted_node_on_redis_keeps_its_events_and_serves_exact_catch_up() {
    let keys = RedisKeys::new("restart");
    let on_redis = |setup: &mut ringside::server::PrefetchSetup| setup.store = keys.store();
    let first = TestServer::start_with_prefetch(on_redis).await;
    let id = first.create_event("survivor").await;
    let receipt = first.publish(&id, "LIVE", r#"{"kept":true}"#).await;
    first.stop().await;

    let second = TestServer::start_with_prefetch(on_redis).await;
    let listed = second.admin().list_events().await.unwrap();
    let survivor = listed
        .iter()
        .find(|e| e.id == id)
        .expect("the event survived the restart");
    assert_eq!(
        (
            survivor.version,
            survivor.stage.as_ref().map(|s| s.as_str())
        ),
        (receipt.version, Some("LIVE"))
    );
    // A device that missed everything catches up on subscribe, with the exact state.
    let mut device = second.device().await;
    subscribe(&mut device, &[(id.topic(), 0)]).await;
    let state = next_state(&mut device).await;
    assert_eq!(
        (state.version, state.payload.as_json()),
        (receipt.version, r#"{"kept":true}"#)
    );
    // Publishing after the restart continues the version sequence.
    assert!(second.publish(&id, "LIVE", "{}").await.version > receipt.version);
    second.stop().await;
}

#[tokio::test]
async fn publishing_while_redis_is_down_fails_cleanly_with_503() {
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let server = TestServer::start_with_prefetch(|setup| {
        setup.store = ringside::content::StoreSetup::Redis {
            url: url.clone(),
            prefix: "ringside:".into(),
        };
    })
    .await;
    let id = server.create_event("fragile").await;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let response = ringside_client::http::call(
        &server.base,
        "POST",
        "/v1/admin/events/fragile/publish",
        &[("authorization", &bearer)],
        Some(br#"{"stage":"LIVE"}"#.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 503, "{}", response.text());
    let error: ringside_protocol::admin::ApiError = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        error.error.code,
        ringside_protocol::admin::ApiErrorCode::Unavailable
    );
    assert!(
        !error.error.message.to_lowercase().contains("redis"),
        "no internals: {}",
        error.error.message
    );
    let _ = id;
    server.stop().await;
}

fn topic_records(
    topic: &str,
    version: u64,
    acked: u64,
) -> ringside_control::nodes::TopicBroadcasts {
    let topic = ringside_protocol::Topic::parse(topic).unwrap();
    ringside_control::nodes::TopicBroadcasts {
        current: ringside_protocol::admin::TopicVersion {
            topic: topic.clone(),
            version,
        },
        records: vec![ringside_protocol::admin::BroadcastRecord {
            topic,
            version,
            stage: Stage::parse("LIVE").unwrap(),
            published_at_ms: version,
            subscribed: 3,
            sent: 3,
            acked,
            ack_latency: ringside_protocol::admin::AckHistogram::default(),
            received_at_ms: version,
        }],
        reported_at_ms: 1_000 + acked,
    }
}

#[tokio::test]
async fn a_nodes_broadcast_records_are_written_topic_by_topic_and_read_per_topic() {
    let keys = RedisKeys::new("node-broadcasts");
    let connection = redis::Client::open(keys.url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let registry =
        ringside_control::nodes::NodeRegistry::new(connection.clone(), keys.prefix.clone());
    // Only nodes in the registry are read.
    let mut raw = connection.clone();
    let () = redis::cmd("ZADD")
        .arg(format!("{}nodes", keys.prefix))
        .arg(1)
        .arg("n1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let (a, b) = (
        topic_records("event:a", 7, 1),
        topic_records("event:b", 9, 2),
    );
    assert!(
        !registry
            .report_broadcasts("n1", &[&a, &b], true)
            .await
            .unwrap(),
        "a new key"
    );
    // A later write carries only the topic that changed; the other field stays.
    let a_acked = topic_records("event:a", 7, 3);
    assert!(
        registry
            .report_broadcasts("n1", &[&a_acked], false)
            .await
            .unwrap()
    );
    let all = registry.broadcast_records().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].node.as_str(), all[0].current.len()), ("n1", 2));
    let mut acked: Vec<(String, u64)> = all[0]
        .records
        .iter()
        .map(|r| (r.topic.as_str().to_owned(), r.acked))
        .collect();
    acked.sort();
    assert_eq!(acked, [("event:a".into(), 3), ("event:b".into(), 2)]);
    // One topic's report reads that topic's field alone.
    let only_b = registry
        .topic_broadcast_records(&ringside_protocol::Topic::parse("event:b").unwrap())
        .await
        .unwrap();
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].records, b.records);
    assert!(
        registry
            .topic_broadcast_records(&ringside_protocol::Topic::parse("event:c").unwrap())
            .await
            .unwrap()
            .is_empty()
    );
    // A refresh with nothing changed says whether the key is still there; replacing drops
    // the topics not written again.
    assert!(registry.report_broadcasts("n1", &[], false).await.unwrap());
    registry.report_broadcasts("n1", &[&b], true).await.unwrap();
    let all = registry.broadcast_records().await.unwrap();
    assert_eq!(all[0].current.len(), 1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}node-broadcasts:n1", keys.prefix))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 0, "the records expire: {ttl}");
    registry.remove_broadcasts("n1").await.unwrap();
    assert!(
        !registry.report_broadcasts("n1", &[], false).await.unwrap(),
        "gone"
    );
}

/// Known way to lose a publish, #3 of issue #15 (the store's part): versions come from
/// `max(last + 1, now_ms)`; if Redis loses `version:<id>` after versions ran ahead of the clock
/// (a burst, or a control host whose clock is fast), the next version must still be newer
/// than the state the store holds, or every hub drops it while the operator sees 200.
#[tokio::test]
async fn a_lost_version_counter_is_reseeded_from_the_newest_state() {
    let keys = RedisKeys::new("reseed");
    let store = RedisEventStore::new(
        ringside::content::connect_redis(&keys.url).await.unwrap(),
        keys.prefix.clone(),
    );
    store.create(event("ahead")).await.unwrap();
    let id = EventId::parse("ahead").unwrap();
    let client = redis::Client::open(keys.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let counter = format!("{}version:{id}", keys.prefix);
    // Versions an hour ahead of this host's clock, as a faster clock elsewhere assigned them.
    let ahead = ringside_protocol::unix_now_ms() + 3_600_000;
    let _: () = redis::cmd("SET")
        .arg(&counter)
        .arg(ahead)
        .query_async(&mut redis)
        .await
        .unwrap();
    let live = Stage::parse("LIVE").unwrap();
    let newest = store
        .next_state(&id, live.clone(), Payload::empty(), 0)
        .await
        .unwrap()
        .state;
    assert_eq!(newest.version, ahead + 1);
    store.record_published(&newest).await.unwrap();

    // Redis loses the counter (an eviction, a restore of an older snapshot of that key).
    let _: () = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut redis)
        .await
        .unwrap();
    let next = store
        .next_state(&id, live, Payload::empty(), 0)
        .await
        .unwrap()
        .state;
    assert!(
        next.version > newest.version,
        "version {} after the held {}: every hub would drop it",
        next.version,
        newest.version
    );
}

/// Issue #15, defect 3 when Redis loses the state as well as the counter: the nodes still hold
/// the newest version (from the bus), so the next version must be newer than what they report,
/// or every hub drops it while the operator is answered 200.
#[tokio::test]
async fn a_lost_counter_and_state_are_reseeded_from_what_the_nodes_hold() {
    let keys = RedisKeys::new("reseed-nodes");
    let on_redis = |setup: &mut ringside::server::PrefetchSetup| setup.store = keys.store();
    let server = TestServer::start_with_prefetch(on_redis).await;
    let id = server.create_event("lost-everything").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(id.topic(), 0)]).await;
    let client = redis::Client::open(keys.url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let counter = format!("{}version:{id}", keys.prefix);
    let state = format!("{}state:{id}", keys.prefix);
    // Versions an hour ahead of the clock (a faster host's clock), held by the node.
    let ahead = ringside_protocol::unix_now_ms() + 3_600_000;
    let _: () = redis::cmd("SET")
        .arg(&counter)
        .arg(ahead)
        .query_async(&mut redis)
        .await
        .unwrap();
    let held = server.publish(&id, "LIVE", "{}").await.version;
    assert_eq!(next_state(&mut device).await.version, held);

    // The node reports what it holds (every few seconds); then Redis loses both keys.
    crate::support::cluster::eventually("the node reports the held version", PROMPTLY, || async {
        let stats = server.admin().stats().await.ok()?;
        stats
            .topics
            .iter()
            .any(|topic| topic.topic == id.topic() && topic.version == held)
            .then_some(())
    })
    .await;
    let _: () = redis::cmd("DEL")
        .arg(&counter)
        .arg(&state)
        .query_async(&mut redis)
        .await
        .unwrap();
    let receipt = server.publish(&id, "ENDED", "{}").await;
    assert!(
        receipt.version > held,
        "version {} after the held {held}: every hub drops it, and the operator was told 200",
        receipt.version
    );
    assert_eq!(next_state(&mut device).await.version, receipt.version);
}
