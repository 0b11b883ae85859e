#![allow(clippy::unwrap_used)]
//! Topics a device may name: made-up ones are cheap, bounded per node, and never crowd out the
//! topics that are published.

mod support;

use futures_util::future::join_all;
use protocol::{ServerFrame, Topic};
use support::*;

/// The node's budget of topics subscribed to but never published, in this test.
const UNPUBLISHED_TOPIC_BUDGET: usize = 1024;
const TOPICS_PER_CONNECTION: usize = 16;

fn made_up(connection: usize, index: usize) -> (Topic, u64) {
    let name = format!("event:made-up-{connection}-{index}");
    (Topic::parse(&name).unwrap(), 0)
}

#[tokio::test]
async fn made_up_topics_are_bounded_per_node_and_never_crowd_out_published_ones() {
    let server =
        TestServer::start_with(|config| config.max_unpublished_topics = UNPUBLISHED_TOPIC_BUDGET)
            .await;
    let published = server.create_event("real-bout").await;
    let first = server.publish(&published, "LIVE", "{}").await;

    // Fill the node's budget of unpublished topics with made-up names.
    let flooders = UNPUBLISHED_TOPIC_BUDGET / TOPICS_PER_CONNECTION;
    let server_ref = &server;
    let mut flood = join_all((0..flooders).map(|connection| async move {
        let mut device = server_ref
            .device_named(&format!("flooder-{connection}"))
            .await;
        let topics: Vec<_> = (0..TOPICS_PER_CONNECTION)
            .map(|index| made_up(connection, index))
            .collect();
        subscribe(&mut device, &topics).await;
        device
    }))
    .await;

    // One more made-up topic is refused with its own code, and the connection closed.
    let mut over = server.device_named("over-budget").await;
    over.subscribe(&[made_up(flooders, 0)]).await.unwrap();
    let (frames, close, _reason) = read_until_close(&mut over).await;
    match frames.as_slice() {
        [ServerFrame::Error { code, .. }] => assert_eq!(code.as_str(), "topic_limit"),
        other => panic!("expected a topic_limit error, got {other:?}"),
    }
    assert_eq!(close, 1013);

    // A published topic is still served, to a new device and to the flooders' neighbours.
    let mut viewer = server.device_named("viewer").await;
    subscribe(&mut viewer, &[(topic(&published), 0)]).await;
    assert_eq!(next_state(&mut viewer).await.version, first.version);
    let second = server.publish(&published, "ENDED", "{}").await;
    assert_eq!(next_state(&mut viewer).await.version, second.version);

    // Only published topics are reported (the stats and the node report to Redis).
    let stats = server.admin().stats().await.unwrap();
    let reported: Vec<_> = stats.topics.iter().map(|t| t.topic.clone()).collect();
    assert_eq!(reported, vec![topic(&published)]);

    // A connection that leaves gives its topics back to the budget.
    flood.pop().unwrap().close().await.unwrap();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let mut late = server.device_named("late").await;
        late.subscribe(&[made_up(flooders + 1, 0)]).await.unwrap();
        match next_frame(&mut late).await {
            ServerFrame::Subscribed { .. } => break,
            ServerFrame::Error { .. } => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "budget never released"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn the_configured_budget_applies_and_an_event_created_ahead_still_gets_its_first_state() {
    let server = TestServer::start_with(|config| config.max_unpublished_topics = 2).await;
    let upcoming = server.create_event("upcoming-bout").await;
    let mut fan = server.device_named("fan").await;
    subscribe(&mut fan, &[(topic(&upcoming), 0), made_up(0, 0)]).await;

    // The budget is full: another topic without a state is refused.
    let mut other = server.device_named("other").await;
    other.subscribe(&[made_up(1, 0)]).await.unwrap();
    let (frames, close, _reason) = read_until_close(&mut other).await;
    assert!(
        matches!(frames.as_slice(), [ServerFrame::Error { code, .. }] if code.as_str() == "topic_limit"),
        "{frames:?}"
    );
    assert_eq!(close, 1013);
    assert_eq!(
        server
            .metric("ringside_hub_topic_limit_refusals_total")
            .await,
        1
    );

    // The event's first publish reaches the device that subscribed ahead of it, and gives its
    // place in the budget back.
    let receipt = server.publish(&upcoming, "UPCOMING", "{}").await;
    assert_eq!(next_state(&mut fan).await.version, receipt.version);
    assert_eq!(server.metric("ringside_hub_unpublished_topics").await, 1);
    let mut again = server.device_named("again").await;
    subscribe(&mut again, &[made_up(1, 0)]).await;
    server.stop().await;
}
