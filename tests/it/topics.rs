//! Topics a device may name: made-up ones are cheap, bounded per node, and never crowd out the
//! topics that are published.

use crate::support::*;
use futures_util::future::join_all;
use ringside_protocol::admin::PublishReceipt;
use ringside_protocol::{EventId, EventState, ServerFrame, Topic};

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

/// Publishes in `priority`'s lane through the admin API's JSON (the typed request has no lane).
async fn publish_in_lane(
    server: &TestServer,
    id: &EventId,
    stage: &str,
    priority: &str,
    payload: &str,
) -> PublishReceipt {
    let body = format!(r#"{{"stage":"{stage}","priority":"{priority}","payload":{payload}}}"#);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let response = ringside_client::http::call(
        &server.base,
        "POST",
        &format!("/v1/admin/events/{id}/publish"),
        &[("authorization", &bearer)],
        Some(body.into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

type RawDevice =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A device with a small receive buffer of its own, so that when it stops reading what piles
/// up is what the server holds for it; subscribed to `event` from `since`.
async fn raw_device(server: &TestServer, name: &str, event: &EventId, since: u64) -> RawDevice {
    use futures_util::SinkExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("{}?token={}", server.ws_url, device_token(name, 3600));
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let subscribe = ringside_protocol::ClientFrame::Subscribe {
        topics: vec![ringside_protocol::SubscribeTopic {
            topic: topic(event),
            since,
        }],
    };
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            subscribe.encode(),
        ))
        .await
        .unwrap();
    socket
}

/// The next `state` frame a raw device reads (skipping everything else).
async fn raw_state(device: &mut RawDevice) -> EventState {
    use futures_util::StreamExt;
    loop {
        let message = tokio::time::timeout(PROMPTLY, device.next())
            .await
            .expect("a frame in time")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message
            && let ServerFrame::State(state) = ServerFrame::decode(&text).unwrap()
        {
            return state;
        }
    }
}

fn is_best_effort(state: &EventState) -> bool {
    state.priority == ringside_protocol::Priority::BestEffort
}

#[tokio::test]
async fn a_stalled_reader_resumes_with_the_newest_state_then_only_the_newest_best_effort_message() {
    // Small send buffers, and a send timeout long enough for the stall (this test is about
    // lanes, not about cutting slow consumers off).
    let server = TestServer::start_with(|config| {
        config.send_buffer_bytes = 4096;
        config.send_timeout = PROMPTLY;
        config.shutdown_grace = PROMPTLY + std::time::Duration::from_secs(1);
    })
    .await;
    let event = server.create_event("ticker-bout").await;
    let first = server
        .publish(&event, "LIVE", r#"{"hero":"main-card"}"#)
        .await;
    let mut stalled = raw_device(&server, "stalled", &event, 0).await;
    assert_eq!(raw_state(&mut stalled).await.version, first.version);
    // A device that keeps reading, for comparison.
    let mut reader = server.device_named("reader").await;
    subscribe(&mut reader, &[(topic(&event), first.version)]).await;

    // The stalled device reads nothing while a ticker of ~3.5 KiB messages runs (far more
    // than the buffers between it and the server hold) with two stage states in it.
    const TICKS: usize = 300;
    let filler = "x".repeat(3500);
    let mut newest_state = first.version;
    let mut newest_tick = 0;
    for tick in 1..=TICKS {
        if tick % 100 == 0 {
            let payload = format!(r#"{{"hero":"round-{tick}"}}"#);
            newest_state = server.publish(&event, "LIVE", &payload).await.version;
        }
        // The body names another stage: the message carries the current one regardless.
        let payload = format!(r#"{{"viewers":{tick},"filler":"{filler}"}}"#);
        newest_tick = publish_in_lane(&server, &event, "UPCOMING", "best_effort", &payload)
            .await
            .version;
    }
    assert!(newest_tick > newest_state);

    // The reader kept up: it ends at the newest state and the newest tick.
    let mut reader_last = (0, 0);
    while reader_last.1 < newest_tick {
        let state = next_state(&mut reader).await;
        assert!(state.version > reader_last.0.max(reader_last.1));
        if is_best_effort(&state) {
            reader_last.1 = state.version;
        } else {
            reader_last.0 = state.version;
        }
    }
    assert_eq!(reader_last, (newest_state, newest_tick));

    // Now the stalled device reads: versions only go up, across both lanes; what it reads
    // after the frames the buffers held is the newest state, then the newest tick, and no
    // other tick.
    let mut received = Vec::new();
    loop {
        let state = raw_state(&mut stalled).await;
        let last = state.version == newest_tick;
        received.push(state);
        if last {
            break;
        }
    }
    let versions: Vec<u64> = received.iter().map(|s| s.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    for state in &received {
        assert_eq!(
            state.stage.as_str(),
            "LIVE",
            "every frame is on the current stage"
        );
    }
    let newest_state_at = received
        .iter()
        .position(|s| !is_best_effort(s) && s.version == newest_state)
        .expect("the newest state reached the stalled device");
    let after: Vec<_> = received[newest_state_at + 1..]
        .iter()
        .map(|s| (s.version, is_best_effort(s)))
        .collect();
    assert_eq!(after, vec![(newest_tick, true)]);
    let ticks_received = received.iter().filter(|s| is_best_effort(s)).count();
    assert!(
        ticks_received < TICKS / 4,
        "expected conflation, the stalled device read {ticks_received} of {TICKS} ticks"
    );
    assert!(
        server
            .metric("ringside_hub_best_effort_total{outcome=\"conflated\"}")
            .await
            > 0
    );
    assert!(
        server
            .metric("ringside_hub_best_effort_total{outcome=\"dropped_connection_behind\"}")
            .await
            > 0,
        "a state that arrived while a tick waited dropped that tick"
    );
    // Every tick was either fanned out or dropped while the node was behind (the bus
    // consumer keeps only the newest waiting tick while a fan-out of the topic runs).
    let applied = server
        .metric("ringside_hub_best_effort_total{outcome=\"applied\"}")
        .await;
    let dropped_behind = server
        .metric("ringside_hub_best_effort_total{outcome=\"dropped_node_behind\"}")
        .await;
    assert_eq!(applied + dropped_behind, TICKS as u64);

    // The event's state is the stage state: in the admin API, and for a device that joins
    // now, which gets it first and the newest tick after it.
    let events = server.admin().list_events().await.unwrap();
    let summary = events.into_iter().find(|e| e.id == event).unwrap();
    assert_eq!(summary.version, newest_state);
    let mut late = raw_device(&server, "late", &event, 0).await;
    let catch_up = [raw_state(&mut late).await, raw_state(&mut late).await];
    assert_eq!(
        catch_up.map(|s| (s.version, is_best_effort(&s))),
        [(newest_state, false), (newest_tick, true)]
    );
    server.stop().await;
}
