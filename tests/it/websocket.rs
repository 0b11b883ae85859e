//! Protocol v1 over real WebSocket connections to a real server.

use crate::hostile::raw_ws;

use std::time::Duration;

use crate::support::*;
use futures_util::future::join_all;
use ringside_client::{ClientError, DeviceConnection};
use ringside_protocol::frame::GoawayReason;
use ringside_protocol::{ErrorCode, EventId, ServerFrame, Topic};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_subscribe_and_receive_a_published_state() {
    let server = TestServer::start().await;
    let event = server.create_event("test-bout").await;
    let mut device = server.device().await;
    assert_eq!(device.welcome.node, "test-node");
    assert!(device.welcome.connection_id.starts_with("test-node-"));
    assert_eq!(device.welcome.heartbeat_ms, 25_000);

    subscribe(&mut device, &[(topic(&event), 0)]).await;
    let receipt = server
        .publish(&event, "LIVE", r#"{"hero": "card-7", "n": [1,2]}"#)
        .await;
    let state = next_state(&mut device).await;
    assert_eq!(state.topic, topic(&event));
    assert_eq!(state.version, receipt.version);
    assert_eq!(state.stage.as_str(), "LIVE");
    assert_eq!(state.published_at_ms, receipt.published_at_ms);
    assert_eq!(state.payload.as_json(), r#"{"hero": "card-7", "n": [1,2]}"#);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_sends_the_current_state_only_to_devices_behind() {
    let server = TestServer::start().await;
    let event = server.create_event("catch-up").await;
    let mut versions = Vec::new();
    for stage in ["UPCOMING", "LIVE", "ENDED"] {
        versions.push(server.publish(&event, stage, "{}").await.version);
    }
    let (first, newest) = (versions[0], versions[2]);

    let mut behind = server.device().await;
    subscribe(&mut behind, &[(topic(&event), first)]).await;
    let state = next_state(&mut behind).await;
    assert_eq!((state.version, state.stage.as_str()), (newest, "ENDED"));

    let mut fresh = server.device().await;
    subscribe(&mut fresh, &[(topic(&event), 0)]).await;
    assert_eq!(next_state(&mut fresh).await.version, newest);

    // Up to date: nothing is sent, so the next frame is the next publish.
    let mut current = server.device().await;
    subscribe(&mut current, &[(topic(&event), newest)]).await;
    let next = server.publish(&event, "LIVE", "{}").await.version;
    assert_eq!(next_state(&mut current).await.version, next);
    assert_eq!(next_state(&mut behind).await.version, next);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_strictly_increase_under_concurrent_publishes() {
    let server = TestServer::start().await;
    let event = server.create_event("race").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&event), 0)]).await;
    let publishes = (0..40).map(|_| server.publish(&event, "LIVE", "{}"));
    let receipts = join_all(publishes).await;
    let newest = receipts.iter().map(|r| r.version).max().unwrap();
    let mut versions = receipts.iter().map(|r| r.version).collect::<Vec<_>>();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 40, "every publish got its own version");

    let mut last = 0;
    while last < newest {
        let version = next_state(&mut device).await.version;
        assert!(version > last, "version {version} after {last}");
        last = version;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_many_subscribers_receives_the_state() {
    let server = TestServer::start().await;
    let event = server.create_event("crowd").await;
    let (server_ref, event_ref) = (&server, &event);
    let mut devices = join_all((0..200).map(|i| async move {
        let mut device = server_ref.device_named(&format!("d{i}")).await;
        subscribe(&mut device, &[(topic(event_ref), 0)]).await;
        device
    }))
    .await;

    let receipt = server.publish(&event, "LIVE", r#"{"k":1}"#).await;
    let received = join_all(devices.iter_mut().map(next_state)).await;
    assert!(
        received
            .iter()
            .all(|s| s.version == receipt.version && s.payload.as_json() == r#"{"k":1}"#)
    );
    // Stats list topics that have a state, with every subscriber that waited for it.
    let stats = server.admin().stats().await.unwrap();
    assert_eq!(stats.topics[0].subscribers, 200);
    assert_eq!(stats.nodes[0].connections, 200);

    // Acks are counted once per device for the current version.
    for device in devices.iter_mut().take(50) {
        device.ack(&topic(&event), receipt.version).await.unwrap();
        device.ack(&topic(&event), receipt.version).await.unwrap();
        device
            .ack(&topic(&event), receipt.version + 7)
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let acks = server.admin().stats().await.unwrap().topics[0].acks;
        assert!(acks <= 50, "acks were inflated: {acks}");
        if acks == 50 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks never counted: {acks}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await;
}

/// A server whose sockets to devices have a small send buffer (`send_buffer_bytes`), so a
/// device that stops reading fills the path to it after a few states, and on which a stalled
/// device is not cut off as a slow consumer for as long as a test stalls it.
async fn patient_server() -> TestServer {
    TestServer::start_with(|config| {
        config.send_buffer_bytes = 8 * 1024;
        config.send_timeout = PROMPTLY;
        config.shutdown_grace = PROMPTLY + Duration::from_secs(1);
    })
    .await
}

type RawDevice = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A device on a raw socket with a small receive buffer (SO_RCVBUF), subscribed to `event`
/// once it has read the `subscribed` answer. It reads nothing more until the test polls its
/// stream again: a reader that provably stopped.
async fn stalled_device(server: &TestServer, name: &str, event: &EventId) -> RawDevice {
    use futures_util::{SinkExt, StreamExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let url = format!("{}?token={}", server.ws_url, device_token(name, 3600));
    let (mut device, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let subscribe = ringside_protocol::ClientFrame::Subscribe {
        topics: vec![ringside_protocol::SubscribeTopic {
            topic: topic(event),
            since: 0,
        }],
    };
    device
        .send(Message::text(subscribe.encode()))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(PROMPTLY, device.next())
            .await
            .expect("subscribed in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message
            && let ServerFrame::Subscribed { .. } = ServerFrame::decode(&text).unwrap()
        {
            return device;
        }
    }
}

/// Publishes ~4 KiB states of `event` until the hub has conflated more states than
/// `conflated_before`: a newer state replaced one still waiting, which happens only while the
/// socket it waits for takes nothing more (a full socket, the rest of a frame in its backlog).
/// Returns the newest version published.
async fn publish_until_a_state_waits(
    server: &TestServer,
    event: &EventId,
    conflated_before: u64,
) -> u64 {
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let mut newest = 0;
    while server
        .metric("ringside_hub_states_total{outcome=\"conflated\"}")
        .await
        <= conflated_before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no state ever waited behind the stalled device's socket"
        );
        for _ in 0..5 {
            newest = server.publish(event, "LIVE", &payload).await.version;
        }
    }
    newest
}

/// Reads `device` until the server's close: the versions of the states before it, and the
/// close frame.
async fn read_states_until_close(
    device: &mut RawDevice,
) -> (
    Vec<u64>,
    tokio_tungstenite::tungstenite::protocol::CloseFrame,
) {
    use futures_util::StreamExt;
    let mut versions = Vec::new();
    loop {
        let message = tokio::time::timeout(PROMPTLY, device.next())
            .await
            .expect("frames in time")
            .expect("a close frame before the end")
            .expect("whole frames, not a cut");
        match message {
            Message::Text(text) => {
                if let ServerFrame::State(state) = ServerFrame::decode(&text).unwrap() {
                    versions.push(state.version);
                }
            }
            Message::Close(frame) => return (versions, frame.expect("a close code")),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_closes_behind_a_full_socket_still_gets_every_byte_and_the_close_answer() {
    use futures_util::SinkExt;
    let server = patient_server().await;
    let event = server.create_event("close-behind").await;
    let mut device = stalled_device(&server, "closer", &event).await;
    assert_eq!(
        server
            .metric("ringside_hub_states_total{outcome=\"conflated\"}")
            .await,
        0
    );
    // The device reads nothing while states are published until one waits behind its full
    // socket: the server's side holds a backlog when the close arrives.
    let newest = publish_until_a_state_waits(&server, &event, 0).await;
    // Then it closes, still without reading: the server's answer queues behind those bytes.
    let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    };
    device.send(Message::Close(Some(close))).await.unwrap();
    // Now it reads: whole states in increasing versions, then the close answer, not a cut.
    let (versions, answer) = read_states_until_close(&mut device).await;
    assert!(!versions.is_empty(), "no state arrived before the close");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    assert!(versions.iter().all(|&version| version <= newest));
    assert_eq!(
        (u16::from(answer.code), answer.reason.as_str()),
        (1000, "bye")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_delays_nobody_and_later_gets_the_newest_version() {
    use futures_util::StreamExt;
    let server = patient_server().await;
    let event = server.create_event("stall").await;
    let mut stalled = stalled_device(&server, "stalled", &event).await;
    // First the stall: states are published until one waits behind the stalled device's full
    // socket (it is the only device yet, so the conflation is its own).
    let stalled_at = publish_until_a_state_waits(&server, &event, 0).await;
    let superseded_before = server
        .metric("ringside_hub_states_total{outcome=\"superseded\"}")
        .await;

    let mut readers = Vec::new();
    for i in 0..4 {
        let mut device = server.device_named(&format!("reader{i}")).await;
        subscribe(&mut device, &[(topic(&event), stalled_at)]).await;
        // Readers count the states they read until the final one, the only one with stage
        // ENDED.
        readers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            loop {
                let state = next_state(&mut device).await;
                versions.push(state.version);
                if state.stage.as_str() == "ENDED" {
                    return versions;
                }
            }
        }));
    }
    // Published one at a time while the stalled device still reads nothing.
    const PUBLISHES: usize = 40;
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
    let mut published = Vec::new();
    for _ in 1..PUBLISHES {
        published.push(server.publish(&event, "LIVE", &payload).await.version);
    }
    let newest = server.publish(&event, "ENDED", &payload).await.version;
    published.push(newest);
    // Every reader gets the same states, in order, up to the newest: all of them but the few
    // the node itself superseded before their fan-out (which no device gets), so none was
    // held back behind the stalled socket nor conflated on its own.
    let mut delivered = Vec::new();
    for reader in readers {
        delivered.push(reader.await.unwrap());
    }
    let superseded = server
        .metric("ringside_hub_states_total{outcome=\"superseded\"}")
        .await
        - superseded_before;
    for versions in &delivered {
        assert_eq!(versions, &delivered[0], "readers got different states");
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert!(versions.iter().all(|version| published.contains(version)));
        assert_eq!(versions.last(), Some(&newest));
        let missed = (PUBLISHES - versions.len()) as u64;
        assert!(
            missed <= superseded,
            "a reader missed {missed} of {PUBLISHES} states, the node superseded {superseded}"
        );
    }

    // Only now does the stalled device read: it ends at the newest version, in order, having
    // skipped the versions that were superseded while it was not reading.
    let mut received = Vec::new();
    while received.last() != Some(&newest) {
        let message = tokio::time::timeout(PROMPTLY, stalled.next())
            .await
            .expect("states in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message
            && let ServerFrame::State(state) = ServerFrame::decode(&text).unwrap()
        {
            assert!(received.last() < Some(&state.version), "{received:?}");
            received.push(state.version);
        }
    }
    let skipped = published
        .iter()
        .filter(|version| !received.contains(version))
        .count();
    assert!(skipped > 0, "expected conflation, got all of {received:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let a = server.create_event("a").await;
    let b = server.create_event("b").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&a), 0), (topic(&b), 0)]).await;
    device
        .send(&ringside_protocol::ClientFrame::Unsubscribe {
            topics: vec![topic(&a)],
        })
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut device).await,
        ServerFrame::Unsubscribed {
            topics: vec![topic(&a)]
        }
    );
    server.publish(&a, "LIVE", "{}").await;
    server.publish(&b, "LIVE", "{}").await;
    assert_eq!(next_state(&mut device).await.topic, topic(&b));
    server.stop().await;
}

async fn expect_error_close(
    device: &mut DeviceConnection,
    expected_code: ErrorCode,
    expected_close: u16,
) {
    let (frames, close, _reason) = read_until_close(device).await;
    let error = frames.iter().find_map(|frame| match frame {
        ServerFrame::Error { code, message } => Some((*code, message.clone())),
        _ => None,
    });
    let (code, message) = error.expect("an error frame before the close");
    assert_eq!(code, expected_code, "{message}");
    assert!(!message.is_empty());
    assert_eq!(close, expected_close);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_the_fitting_close_code_without_harming_others() {
    let server = TestServer::start_with(|config| {
        config.max_topics_per_connection = 3;
        config.max_frame_bytes = 1024;
    })
    .await;
    let event = server.create_event("bystander").await;
    let mut bystander = server.device_named("bystander").await;
    subscribe(&mut bystander, &[(topic(&event), 0)]).await;

    let many_topics = (0..4)
        .map(|i| format!(r#"{{"topic":"event:t{i}"}}"#))
        .collect::<Vec<_>>();
    let cases: Vec<(Message, ErrorCode, u16)> = vec![
        (Message::text("{not json"), ErrorCode::InvalidJson, 1007),
        (
            Message::text(r#"{"type":"subscribe"}"#),
            ErrorCode::InvalidFrame,
            1007,
        ),
        (
            Message::text(r#"{"type":"teleport"}"#),
            ErrorCode::InvalidFrame,
            1007,
        ),
        (
            Message::text(r#"{"type":"subscribe","topics":[{"topic":"event:x","since":"0"}]}"#),
            ErrorCode::InvalidFrame,
            1007,
        ),
        (
            Message::text(r#"{"type":"subscribe","topics":[{"topic":"nope"}]}"#),
            ErrorCode::BadTopic,
            1008,
        ),
        (
            Message::text(r#"{"type":"unsubscribe","topics":["event:bad topic"]}"#),
            ErrorCode::BadTopic,
            1008,
        ),
        (
            Message::text(format!(
                r#"{{"type":"subscribe","topics":[{}]}}"#,
                many_topics.join(",")
            )),
            ErrorCode::TooManyTopics,
            1008,
        ),
        (
            Message::text(format!(
                r#"{{"type":"subscribe","pad":"{}"}}"#,
                "x".repeat(2000)
            )),
            ErrorCode::FrameTooLarge,
            1009,
        ),
        (
            Message::binary(vec![1, 2, 3]),
            ErrorCode::BinaryNotSupported,
            1007,
        ),
    ];
    for (index, (message, code, close)) in cases.into_iter().enumerate() {
        let mut device = server.device_named(&format!("bad{index}")).await;
        device.send_message(message).await.unwrap();
        expect_error_close(&mut device, code, close).await;
    }
    assert_eq!(server.metric("ringside_protocol_errors_total").await, 9);

    // A connection that adds topics one frame at a time hits the same limit.
    let mut greedy = server.device_named("greedy").await;
    for i in 0..3 {
        subscribe(
            &mut greedy,
            &[(Topic::parse(&format!("event:g{i}")).unwrap(), 0)],
        )
        .await;
    }
    greedy
        .subscribe(&[(Topic::parse("event:g3").unwrap(), 0)])
        .await
        .unwrap();
    expect_error_close(&mut greedy, ErrorCode::TooManyTopics, 1008).await;

    let receipt = server.publish(&event, "LIVE", "{}").await;
    assert_eq!(
        next_state(&mut bystander).await.version,
        receipt.version,
        "bystander still served"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_without_a_valid_token_get_401_and_no_socket() {
    let server = TestServer::start().await;
    let foreign_key =
        ringside_auth::DeviceTokenKey::new(b"some-other-secret-0123456789abcdef").unwrap();
    let foreign = foreign_key.sign(&ringside_auth::DeviceClaims {
        sub: "d".into(),
        profile: "p".into(),
        class: ringside_auth::DeviceClass::Mobile,
        exp: u64::MAX / 2,
        nbf: None,
        priority: None,
    });
    let cases = [
        (String::new(), "missing"),
        ("not-a-jwt".to_owned(), "malformed"),
        (foreign, "signature"),
        (device_token("late", -10), "expired"),
    ];
    for (token, expected) in cases {
        match DeviceConnection::connect(&server.ws_url, &token).await {
            Err(ClientError::Refused { status, body }) => {
                assert_eq!(status, 401);
                let error: ringside_protocol::admin::ApiError =
                    serde_json::from_str(&body).unwrap();
                assert_eq!(
                    error.error.code,
                    ringside_protocol::admin::ApiErrorCode::Unauthorized
                );
                assert!(
                    error.error.message.contains(expected),
                    "{expected}: {}",
                    error.error.message
                );
            }
            other => panic!("{expected}: expected a 401, got {other:?}"),
        }
    }
    assert_eq!(server.metric("ringside_connections_opened_total").await, 0);

    // The same token as a bearer header is accepted.
    let token = device_token("header", 3600);
    let request = bearer_upgrade(server.addr, &token).body(()).unwrap();
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    use futures_util::StreamExt;
    let welcome = socket.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains(r#""type":"welcome""#));

    // A plain GET with a valid token but no upgrade headers is a 400, not a crash.
    let plain = ringside_client::http::call(
        &server.base,
        "GET",
        &format!("/v1/ws?token={token}"),
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_subscribes_is_closed_with_goaway() {
    let server =
        TestServer::start_with(|config| config.subscribe_timeout = Duration::from_millis(200))
            .await;
    let mut idle = server.device().await;
    let (frames, close, _) = read_until_close(&mut idle).await;
    assert!(
        matches!(
            frames.as_slice(),
            [ServerFrame::Goaway {
                reason: GoawayReason::Idle,
                ..
            }]
        ),
        "{frames:?}"
    );
    assert_eq!(close, 1008);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_live_ones_kept() {
    let server = TestServer::start_with(|config| {
        config.heartbeat_interval = Duration::from_millis(100);
        config.heartbeat_misses = 2;
    })
    .await;
    let event = server.create_event("heartbeat").await;
    let mut silent = server.device_named("silent").await;
    subscribe(&mut silent, &[(topic(&event), 0)]).await;
    let mut live = server.device_named("live").await;
    subscribe(&mut live, &[(topic(&event), 0)]).await;
    // The live device keeps reading (its client answers pings); the silent one does not.
    let live_task = tokio::spawn(async move {
        let state = next_state(&mut live).await;
        (state.version, live)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (frames, close, _) = read_until_close(&mut silent).await;
    assert!(
        frames.iter().any(|f| matches!(
            f,
            ServerFrame::Goaway {
                reason: GoawayReason::HeartbeatTimeout,
                ..
            }
        )),
        "{frames:?}"
    );
    assert_eq!(close, 1001);
    let receipt = server.publish(&event, "LIVE", "{}").await;
    let (version, _live) = live_task.await.unwrap();
    assert_eq!(version, receipt.version);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_with_spread_reconnect_delays_then_closes() {
    let server =
        TestServer::start_with(|config| config.reconnect_spread = Duration::from_millis(3000))
            .await;
    let event = server.create_event("drain").await;
    let mut devices = Vec::new();
    for i in 0..20 {
        let mut device = server.device_named(&format!("d{i}")).await;
        subscribe(&mut device, &[(topic(&event), 0)]).await;
        devices.push(device);
    }
    let readers = devices
        .into_iter()
        .map(|mut device| tokio::spawn(async move { read_until_close(&mut device).await }));
    let readers: Vec<_> = readers.collect();
    let report = server.stop().await;
    assert_eq!(report.sessions_at_start, 20);
    assert_eq!(report.sessions_left, 0);
    let mut delays = Vec::new();
    for reader in readers {
        let (frames, close, _) = reader.await.unwrap();
        assert_eq!(close, 1001);
        match frames.as_slice() {
            [
                ServerFrame::Goaway {
                    reconnect_after_ms,
                    reason: GoawayReason::Shutdown,
                },
            ] => {
                assert!(*reconnect_after_ms <= 3000);
                delays.push(*reconnect_after_ms);
            }
            other => panic!("expected one goaway, got {other:?}"),
        }
    }
    delays.sort_unstable();
    delays.dedup();
    assert!(
        delays.len() > 1,
        "reconnect delays are jittered, not identical: {delays:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    let server = TestServer::start().await;
    let event = server.create_event("expiry").await;
    let mut device = DeviceConnection::connect(&server.ws_url, &device_token("brief", 1))
        .await
        .unwrap();
    subscribe(&mut device, &[(topic(&event), 0)]).await;
    let (frames, close, reason) = read_until_close(&mut device).await;
    assert!(
        matches!(
            frames.as_slice(),
            [ServerFrame::Goaway {
                reason: GoawayReason::TokenExpired,
                ..
            }]
        ),
        "{frames:?}"
    );
    assert_eq!((close, reason.as_str()), (1008, "token_expired"));
    assert_eq!(
        server
            .metric("ringside_connections_closed_total{reason=\"token_expired\"}")
            .await,
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_enforced_and_released() {
    let server = TestServer::start_with(|config| config.max_connections = 2).await;
    let first = server.device_named("one").await;
    let _second = server.device_named("two").await;
    match DeviceConnection::connect(&server.ws_url, &device_token("three", 3600)).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("unavailable"), "{body}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    first.close().await.unwrap();
    // The place is released once the first session has ended.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        match DeviceConnection::connect(&server.ws_url, &device_token("three", 3600)).await {
            Ok(_third) => break,
            Err(ClientError::Refused { status: 503, .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "place never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_topics_in_one_subscribe_count_once() {
    let server = TestServer::start_with(|config| config.max_topics_per_connection = 1).await;
    let event = server.create_event("once").await;
    let mut device = server.device().await;
    device
        .subscribe(&[(topic(&event), 0), (topic(&event), 0)])
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut device).await,
        ServerFrame::Subscribed {
            topics: vec![topic(&event)]
        }
    );
    let receipt = server.publish(&event, "LIVE", "{}").await;
    assert_eq!(next_state(&mut device).await.version, receipt.version);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_hub_is_not_ready_refuses_upgrades_with_503_until_it_is() {
    // A gateway composed as `ringside serve` composes it, around a hub whose bus feed has not
    // caught up (at startup, or while a failed feed is being reopened).
    let registry = ringside_telemetry::Registry::new();
    let hub = std::sync::Arc::new(ringside_broadcaster::Hub::new(
        ringside_broadcaster::HubMetrics::new(&registry),
    ));
    let gateway = ringside_gateway::Gateway::new(
        ringside_gateway::GatewayConfig::default(),
        hub.clone(),
        ringside_auth::DeviceTokenKey::new(DEVICE_SECRET.as_bytes()).unwrap(),
        ringside_gateway::GatewayMetrics::new(&registry),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http = tokio::spawn(ringside::http::serve_http(
        listener,
        gateway.router(),
        ringside::http::HttpConfig::default(),
        shutdown.clone(),
        Duration::from_secs(1),
    ));
    let token = device_token("early", 3600);
    match DeviceConnection::connect(&ws_url, &token).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("not caught up"), "{body}");
        }
        other => panic!("expected 503 while not ready, got {other:?}"),
    }
    hub.mark_ready();
    let device = DeviceConnection::connect(&ws_url, &token).await.unwrap();
    // A node that falls behind again refuses new devices; the connected one stays.
    hub.mark_unready();
    match DeviceConnection::connect(&ws_url, &device_token("late", 3600)).await {
        Err(ClientError::Refused { status: 503, .. }) => {}
        other => panic!("expected 503 once unready again, got {other:?}"),
    }
    device.close().await.unwrap();
    gateway.drain().await;
    shutdown.cancel();
    http.await.unwrap();
}

// Two workers: the flood is written while the session reads, as from a real remote client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_frames_is_still_closed_when_its_token_expires() {
    // A rate limit the flood stays under: this is about the deadlines alone.
    let server = TestServer::start_with(|config| {
        config.inbound_frames_per_s = 1_000_000;
        config.inbound_frame_burst = 1_000_000;
    })
    .await;
    let event = server.create_event("flood-expiry").await;
    let raw_ws::RawFlooder {
        mut reader,
        stream,
        keep_open: _keep_open,
    } = raw_ws::RawFlooder::connect(server.addr, &device_token("flooder", 2)).await;
    let subscribe = format!(
        r#"{{"type":"subscribe","topics":[{{"topic":"{}"}}]}}"#,
        topic(&event)
    );
    let mut flood = raw_ws::text(&subscribe);
    // Unsolicited pongs (legal, and unanswered) without pause: dozens arrive with every read,
    // so the session always has a frame ready and only one that checks its deadlines on every
    // turn notices the token expiring.
    for _ in 0..10_000 {
        flood.extend(raw_ws::frame(true, raw_ws::OP_PONG, b""));
    }
    let flooding = raw_ws::Flood::start(stream, flood);
    expect_goaway_then_close(
        &mut reader,
        GoawayReason::TokenExpired,
        (1008, "token_expired"),
        "a flooding client whose token expired is closed in time",
    )
    .await;
    flooding.stop();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_closed_for_its_rate_while_a_normal_client_is_untouched() {
    let server = TestServer::start().await;
    let event = server.create_event("flood-rate").await;
    let mut normal = server.device_named("normal").await;
    subscribe(&mut normal, &[(topic(&event), 0)]).await;

    // A thousand pings in one write: each is cheap, so only a rate limit stops them.
    let mut flooder = raw_ws::RawWs::connect(server.addr, &device_token("flooder", 3600)).await;
    let pings: Vec<u8> = (0..1000)
        .flat_map(|_| raw_ws::frame(true, raw_ws::OP_PING, b""))
        .collect();
    flooder.send(&pings).await.unwrap();
    let (frames, close) = tokio::time::timeout(PROMPTLY, flooder.reader.until_close())
        .await
        .expect("the flooder is closed in time");
    let error = frames.iter().find_map(|frame| match frame {
        ServerFrame::Error { code, message } => Some((code.as_str(), message.clone())),
        _ => None,
    });
    let (code, message) = error.expect("an error frame before the close");
    assert_eq!(code, "rate_limited", "{message}");
    assert_eq!(close, Some((4029, "rate_limited".to_owned())));
    assert_eq!(
        server
            .metric("ringside_connections_closed_total{reason=\"rate_limited\"}")
            .await,
        1
    );

    // The normal device, acking at a device's pace, is still served.
    for _ in 0..3 {
        let receipt = server.publish(&event, "LIVE", "{}").await;
        assert_eq!(next_state(&mut normal).await.version, receipt.version);
        normal.ack(&topic(&event), receipt.version).await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_holds_at_most_its_connections_and_gets_places_back_as_they_close() {
    let server = TestServer::start().await;
    let token = device_token("greedy", 3600);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            DeviceConnection::connect(&server.ws_url, &token)
                .await
                .unwrap(),
        );
    }
    match DeviceConnection::connect(&server.ws_url, &token).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, 429);
            assert!(body.contains("already holds 8 connections"), "{body}");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    // The answer says when to retry: by then a vanished connection of the device is closed.
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let refused = ringside_client::http::call(
        &server.base,
        "GET",
        &format!("/v1/ws?token={token}"),
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", &key),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["retry-after"], "75");
    assert_eq!(
        server
            .metric("ringside_upgrades_refused_total{reason=\"device_limit\"}")
            .await,
        2
    );
    // Other devices are not affected.
    let _other = server.device_named("modest").await;

    // The client's close handshake can finish before the node's session task has ended and
    // given the place back, so a 429 right after it is the race, not a leak: retry until then.
    held.pop().unwrap().close().await.unwrap();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        match DeviceConnection::connect(&server.ws_url, &token).await {
            Ok(again) => break held.push(again),
            Err(ClientError::Refused { status: 429, .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "place never released"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    // However a session ends, its place is released: here the devices vanish without a close.
    held.clear();
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while server.admin().stats().await.unwrap().nodes[0].connections > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "places never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..8 {
        held.push(
            DeviceConnection::connect(&server.ws_url, &token)
                .await
                .unwrap(),
        );
    }
    server.stop().await;
}

/// Subscribes a device whose own receive buffer is small and which then reads nothing while
/// `publishes` states of ~4 KiB are published; returns how many states it reads once it reads
/// again, up to the newest.
async fn states_read_after_a_stall(server: &TestServer, name: &str, publishes: u64) -> u64 {
    use futures_util::StreamExt;
    let event = server.create_event(name).await;
    // Small on the device's side too, so that what piles up is what the server sent.
    let mut socket = stalled_device(server, name, &event).await;
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
    let mut newest = 0;
    for _ in 0..publishes {
        newest = server.publish(&event, "LIVE", &payload).await.version;
    }
    let mut states = 0;
    loop {
        let message = tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("states in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message
            && let ServerFrame::State(state) = ServerFrame::decode(&text).unwrap()
        {
            states += 1;
            if state.version == newest {
                return states;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_sent_few_superseded_states() {
    const PUBLISHES: u64 = 600;
    // The device stalls for as long as the 600 publishes take, which on a loaded machine is
    // longer than the test servers' 2 s send timeout: this test is about conflation, not
    // about cutting a slow consumer, so the timeout is set beyond the stall.
    let stalls_allowed = |config: &mut ringside_gateway::GatewayConfig| {
        config.send_timeout = Duration::from_secs(120);
    };
    let autotuned = TestServer::start_with(|config| {
        stalls_allowed(config);
        config.send_buffer_bytes = 0;
    })
    .await;
    let before = states_read_after_a_stall(&autotuned, "autotuned", PUBLISHES).await;
    autotuned.stop().await;
    let server = TestServer::start_with(stalls_allowed).await;
    let after = states_read_after_a_stall(&server, "bounded", PUBLISHES).await;
    eprintln!(
        "states read after the stall: {before} with an autotuned send buffer, {after} with the default"
    );
    // 16 KiB (doubled by Linux) holds a handful of ~4 KiB states, the mailbox's backlog and
    // the device's own buffers some more (8 to 48 here, depending on the machine's load); the
    // rest was conflated. An autotuned buffer let all 600 through.
    assert!(
        after < PUBLISHES / 6,
        "{after} states reached the device after its stall"
    );
    server.stop().await;
}

/// Subscribes to topics `event:t0`, `event:t1`, ... in one frame of about `bytes`.
fn subscribe_to_distinct_topics(bytes: usize) -> String {
    let mut entries = Vec::new();
    let mut length = 64;
    while length < bytes - 64 {
        let entry = format!(r#"{{"topic":"event:t{:x}"}}"#, entries.len());
        length += entry.len() + 1;
        entries.push(entry);
    }
    format!(r#"{{"type":"subscribe","topics":[{}]}}"#, entries.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_of_tens_of_thousands_of_topics_is_refused_promptly() {
    let server = TestServer::start_with(|config| {
        config.max_frame_bytes = 1024 * 1024;
        config.inbound_byte_burst = 1024 * 1024;
    })
    .await;
    let mut device = server.device_named("megabyte").await;
    let frame = subscribe_to_distinct_topics(1024 * 1024);
    let started = std::time::Instant::now();
    device.send_message(Message::text(frame)).await.unwrap();
    let (frames, close, _) = read_until_close(&mut device).await;
    // A bound that only catches the pathology: comparing every topic with every other took
    // 14 s of a worker thread here.
    assert!(
        started.elapsed() < PROMPTLY,
        "answered after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            frames.as_slice(),
            [ServerFrame::Error {
                code: ErrorCode::TooManyTopics,
                ..
            }]
        ),
        "{frames:?}"
    );
    assert_eq!(close, 1008);
    server.stop().await;
}

// Two workers: the flood is written while the session reads, as from a real remote client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_fragments_never_end_is_cut_off_by_the_heartbeat() {
    let server = TestServer::start_with(|config| {
        config.heartbeat_interval = Duration::from_millis(200);
        config.heartbeat_misses = 2;
    })
    .await;
    let raw_ws::RawFlooder {
        mut reader,
        stream,
        keep_open: _keep_open,
    } = raw_ws::RawFlooder::connect(server.addr, &device_token("fragments", 3600)).await;
    // A text message that starts and never finishes: no frame of it ever reaches the session
    // as a message, so neither the rate limit nor the liveness of a complete frame applies.
    std::io::Write::write_all(&mut &stream, &raw_ws::frame(false, raw_ws::OP_TEXT, b"{")).unwrap();
    let empty_fragments = raw_ws::frame(false, raw_ws::OP_CONTINUATION, b"").repeat(10_000);
    let flooding = raw_ws::Flood::start(stream, empty_fragments);
    expect_goaway_then_close(
        &mut reader,
        GoawayReason::HeartbeatTimeout,
        (1001, "heartbeat_timeout"),
        "the endless message is cut off in time",
    )
    .await;
    flooding.stop();
    server.stop().await;
}

/// A client streaming bytes that never make a whole message (the fragments of a message that
/// never ends, which no frame rate can count) is read no faster than its inbound byte rate:
/// the rest waits in TCP's flow control, not in the node's CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_streaming_bytes_is_read_no_faster_than_its_byte_rate() {
    const RATE: u32 = 16 * 1024;
    const BURST: u32 = 64 * 1024;
    let server = TestServer::start_with(|config| {
        config.inbound_bytes_per_s = RATE;
        config.inbound_byte_burst = BURST;
    })
    .await;
    let before = server.metric("ringside_bytes_received_total").await;
    let raw_ws::RawFlooder {
        reader: _reader,
        stream,
        keep_open: _keep_open,
    } = raw_ws::RawFlooder::connect(server.addr, &device_token("streamer", 3600)).await;
    let started = std::time::Instant::now();
    std::io::Write::write_all(&mut &stream, &raw_ws::frame(false, raw_ws::OP_TEXT, b"{")).unwrap();
    let empty_fragments = raw_ws::frame(false, raw_ws::OP_CONTINUATION, b"").repeat(10_000);
    let flooding = raw_ws::Flood::start(stream, empty_fragments);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = server.metric("ringside_bytes_received_total").await - before;
    let elapsed = started.elapsed().as_secs_f64();
    let written = flooding.stop();
    // The budget, plus one read buffer of slack for the read that crossed it.
    let allowed = f64::from(BURST) + f64::from(RATE) * elapsed + 4096.0;
    assert!(
        (received as f64) <= allowed,
        "read {received} bytes in {elapsed:.1} s (client wrote {written}); allowed {allowed:.0}"
    );
    assert!(server.metric("ringside_inbound_throttled_total").await > 0);
    server.stop().await;
}

/// Reads a raw client's frames until the server closes, within [`PROMPTLY`] (`what` names the
/// expectation), and asserts a goaway with `reason` came before the close `close`.
async fn expect_goaway_then_close(
    reader: &mut raw_ws::RawReader,
    reason: GoawayReason,
    close: (u16, &str),
    what: &str,
) {
    let (frames, closed) = tokio::time::timeout(PROMPTLY, reader.until_close())
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    assert!(
        frames
            .iter()
            .any(|frame| matches!(frame, ServerFrame::Goaway { reason: r, .. } if *r == reason)),
        "{frames:?}"
    );
    assert_eq!(closed, Some((close.0, close.1.to_owned())));
}

/// Polls the metric `name` until it reaches `at_least`, failing the test after [`PROMPTLY`].
async fn metric_reaches(server: &TestServer, name: &str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while server.metric(name).await < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_sent_goaway_and_close_4008_once_it_reads_again() {
    let server = TestServer::start_with(|config| {
        config.send_buffer_bytes = 4096;
        config.send_timeout = Duration::from_millis(500);
    })
    .await;
    let event = server.create_event("slow-consumer").await;
    // A raw client with a small receive buffer, which stops reading right after `subscribed`.
    let mut socket = stalled_device(&server, "slow", &event).await;
    use futures_util::StreamExt;
    // Far more than the socket buffers between the two hold, while the client reads nothing
    // (its stream is not polled at all until the server has given up on it). Publishing goes on
    // until a state waits for the full socket past the send timeout: a socket that is full
    // with nothing more to send is not a slow consumer.
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while server
        .metric("ringside_connections_closed_total{reason=\"slow_consumer\"}")
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never cut off as a slow consumer"
        );
        for _ in 0..10 {
            server.publish(&event, "LIVE", &payload).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It reads again: whole states in increasing versions (a frame the socket took in part is
    // finished first), then the goaway, then the close 4008.
    let mut last = 0;
    let mut goaway = None;
    let close = loop {
        let message = tokio::time::timeout(PROMPTLY, socket.next())
            .await
            .expect("frames in time")
            .expect("a close frame before the end")
            .expect("whole frames, not a cut");
        match message {
            Message::Text(text) => match ServerFrame::decode(&text).unwrap() {
                ServerFrame::State(state) => {
                    assert!(goaway.is_none(), "a state after the goaway");
                    assert!(state.version > last);
                    last = state.version;
                }
                ServerFrame::Goaway { reason, .. } => goaway = Some(reason),
                ServerFrame::Welcome { .. } | ServerFrame::Subscribed { .. } => {}
                other => panic!("unexpected {other:?}"),
            },
            Message::Close(frame) => break frame.expect("a close code"),
            _ => {}
        }
    };
    assert_eq!(goaway, Some(GoawayReason::SlowConsumer));
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4008, "slow_consumer")
    );
    metric_reaches(&server, "ringside_slow_consumer_closes_total", 1).await;
    server.stop().await;
}

/// An upgrade request with a valid token: `Ok(socket)` on 101, else the refusal's status,
/// `Retry-After` (seconds) and body.
async fn try_upgrade(
    server: &TestServer,
    name: String,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    (u16, Option<u64>, String),
> {
    let url = format!("{}?token={}", server.ws_url, device_token(&name, 3600));
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|value| value.to_str().ok()?.parse().ok());
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            Err((response.status().as_u16(), retry_after, body))
        }
        Err(other) => panic!("upgrade of {name} failed: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_the_admission_burst_get_503_with_jittered_retry_after() {
    let server = TestServer::start_with(|config| {
        config.upgrade_rate_per_s = 1;
        config.upgrade_burst = 5;
        config.retry_after_min = Duration::from_secs(2);
        config.retry_after_max = Duration::from_secs(30);
    })
    .await;
    let (server_ref, attempts) = (&server, 40);
    let outcomes = join_all((0..attempts).map(|i| try_upgrade(server_ref, format!("d{i}")))).await;
    let mut admitted = Vec::new();
    let mut retry_afters = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(socket) => admitted.push(socket),
            Err((status, retry_after, body)) => {
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("unavailable"), "{body}");
                retry_afters.push(retry_after.expect("a Retry-After on every 503"));
            }
        }
    }
    // The burst got in, and the rate (one a second) let at most a few more follow.
    assert!(admitted.len() >= 5, "{} admitted", admitted.len());
    assert!(!retry_afters.is_empty(), "nothing was refused");
    assert_eq!(admitted.len() + retry_afters.len(), attempts);
    assert!(
        retry_afters.iter().all(|s| (2..=30).contains(s)),
        "{retry_afters:?}"
    );
    let mut distinct = retry_afters.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(
        distinct.len() > 1,
        "Retry-After is jittered: {retry_afters:?}"
    );
    assert_eq!(
        server
            .metric("ringside_upgrades_refused_total{reason=\"rate\"}")
            .await,
        retry_afters.len() as u64
    );
    assert_eq!(
        server.metric("ringside_connections_opened_total").await,
        admitted.len() as u64
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_lifetime_gets_goaway_is_served_through_the_grace_then_closed() {
    let server = TestServer::start_with(|config| {
        config.max_connection_lifetime = Duration::from_millis(800);
        config.connection_lifetime_spread = Duration::from_millis(200);
        config.goaway_grace = Duration::from_secs(2);
        config.reconnect_spread = Duration::from_millis(1500);
        config.shutdown_grace = Duration::from_secs(5);
    })
    .await;
    let event = server.create_event("lifetime").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&event), 0)]).await;
    match next_frame(&mut device).await {
        ServerFrame::Goaway {
            reason: GoawayReason::MaxLifetime,
            reconnect_after_ms,
        } => assert!(reconnect_after_ms <= 1500),
        other => panic!("expected the lifetime's goaway, got {other:?}"),
    }
    // During the grace period the connection is still served.
    let receipt = server.publish(&event, "LIVE", "{}").await;
    let (frames, close, reason) = read_until_close(&mut device).await;
    let versions: Vec<u64> = frames
        .iter()
        .filter_map(|frame| match frame {
            ServerFrame::State(state) => Some(state.version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, [receipt.version], "{frames:?}");
    assert_eq!((close, reason.as_str()), (1001, "max_lifetime"));
    assert_eq!(
        server
            .metric("ringside_goaways_total{reason=\"max_lifetime\"}")
            .await,
        1
    );
    server.stop().await;
}

async fn admin_call(
    server: &TestServer,
    method: &str,
    path: &str,
) -> ringside_client::http::HttpResponse {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    ringside_client::http::call(
        &server.base,
        method,
        path,
        &[("authorization", &bearer)],
        None,
    )
    .await
    .unwrap()
}

/// Which of `parts` equal sub-intervals of `window` (from `start`) each moment falls in.
fn sub_intervals(
    moments: &[tokio::time::Instant],
    start: tokio::time::Instant,
    window: Duration,
    parts: u32,
) -> Vec<u32> {
    let mut hit: Vec<u32> = moments
        .iter()
        .map(|moment| {
            let offset = moment.saturating_duration_since(start).as_secs_f64();
            ((offset / window.as_secs_f64() * f64::from(parts)) as u32).min(parts - 1)
        })
        .collect();
    hit.sort_unstable();
    hit.dedup();
    hit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_drain_spreads_its_goaways_over_the_window_and_answers_twice_with_progress() {
    const DEVICES: usize = 24;
    let window = Duration::from_secs(2);
    let server = TestServer::start_with(|config| {
        // 24 sessions at 12 a second: a window of 2 s.
        config.drain_rate_per_s = 12;
        config.drain_window_max = Duration::from_secs(10);
        config.goaway_grace = Duration::from_millis(200);
        config.shutdown_grace = Duration::from_secs(15);
    })
    .await;
    let event = server.create_event("paced-drain").await;
    let mut readers = Vec::new();
    for i in 0..DEVICES {
        let mut device = server.device_named(&format!("d{i}")).await;
        subscribe(&mut device, &[(topic(&event), 0)]).await;
        // Each device notes when its goaway arrived.
        readers.push(tokio::spawn(async move {
            let goaway = match next_frame(&mut device).await {
                ServerFrame::Goaway {
                    reason: GoawayReason::Shutdown,
                    ..
                } => tokio::time::Instant::now(),
                other => panic!("expected the drain's goaway, got {other:?}"),
            };
            let (_, close, _) = read_until_close(&mut device).await;
            (goaway, close)
        }));
    }
    assert_eq!(
        admin_call(&server, "POST", "/v1/admin/nodes/elsewhere/drain")
            .await
            .status,
        404
    );

    let requested = tokio::time::Instant::now();
    let first = admin_call(&server, "POST", "/v1/admin/nodes/test-node/drain").await;
    assert_eq!(first.status, 202, "{}", first.text());
    let first: ringside_protocol::admin::DrainAnswer = serde_json::from_slice(&first.body).unwrap();
    let plan = first.progress.expect("the plan");
    assert_eq!(first.state, ringside_protocol::admin::DrainState::Draining);
    assert_eq!(
        (plan.sessions_at_start, plan.window_ms),
        (DEVICES as u64, 2000)
    );
    // The node stops taking devices at once.
    let health = ringside_client::http::call(&server.base, "GET", "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!(health.status, 503);
    // A second request is answered with the progress of the same drain, not a restart.
    let second = admin_call(&server, "POST", "/v1/admin/nodes/test-node/drain").await;
    assert_eq!(second.status, 200, "{}", second.text());
    let second: ringside_protocol::admin::DrainAnswer =
        serde_json::from_slice(&second.body).unwrap();
    let progress = second.progress.expect("progress");
    assert_eq!(progress.started_at_ms, plan.started_at_ms);
    assert_eq!(progress.sessions_at_start, DEVICES as u64);
    let stats = server.admin().stats().await.unwrap();
    assert_eq!(
        stats.nodes[0].drain.map(|d| d.started_at_ms),
        Some(plan.started_at_ms)
    );

    let mut goaways = Vec::new();
    for reader in readers {
        let (goaway, close) = reader.await.unwrap();
        assert_eq!(close, 1001);
        goaways.push(goaway);
    }
    // Spread over the window, not sent at one instant: the moments the devices saw cover
    // most of the window and fall in at least three of its four quarters.
    let earliest = *goaways.iter().min().unwrap();
    let latest = *goaways.iter().max().unwrap();
    assert!(
        latest - earliest >= window / 2,
        "goaways spread over {:?} of a {window:?} window",
        latest - earliest
    );
    let quarters = sub_intervals(&goaways, requested, window, 4);
    assert!(quarters.len() >= 3, "goaways in quarters {quarters:?}");
    let progress = server.admin().stats().await.unwrap().nodes[0]
        .drain
        .unwrap();
    assert_eq!(progress.goaways_sent, DEVICES as u64);
    assert_eq!(
        server
            .metric("ringside_goaways_total{reason=\"drain\"}")
            .await,
        DEVICES as u64
    );
    let report = server.stop().await;
    assert_eq!(report.sessions_left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_shutdown_drain_healthz_and_upgrades_are_answered_503_not_refused() {
    let server = TestServer::start_with(|config| {
        // 3 sessions at 1 a second: a window of 2 s (the cap), long enough to ask during it.
        config.drain_rate_per_s = 1;
        config.drain_window_max = Duration::from_secs(2);
        config.goaway_grace = Duration::from_millis(200);
        config.shutdown_grace = Duration::from_secs(5);
    })
    .await;
    let event = server.create_event("shutdown-health").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut device = server.device_named(&format!("d{i}")).await;
        subscribe(&mut device, &[(topic(&event), 0)]).await;
        readers.push(tokio::spawn(
            async move { read_until_close(&mut device).await },
        ));
    }
    server.begin_stop();
    // The listener still accepts while the gateway drains: the node says it is unavailable.
    let health = ringside_client::http::call(&server.base, "GET", "/healthz", &[], None)
        .await
        .expect("/healthz is answered during the drain, not refused");
    assert_eq!(health.status, 503, "{}", health.text());
    assert!(health.text().contains("unavailable"), "{}", health.text());
    // Upgrades get 503 `draining` (one may slip in before the drain's start; it is drained).
    let mut refusal = None;
    for attempt in 0..20 {
        match try_upgrade(&server, format!("late{attempt}")).await {
            Ok(_accepted_before_the_drain_started) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(refused) => {
                refusal = Some(refused);
                break;
            }
        }
    }
    let (status, _, body) = refusal.expect("upgrades refused during the drain");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    for reader in readers {
        let (frames, close, _) = reader.await.unwrap();
        assert_eq!(close, 1001);
        assert!(matches!(
            frames.as_slice(),
            [ServerFrame::Goaway {
                reason: GoawayReason::Shutdown,
                ..
            }]
        ));
    }
    let report = server.stop().await;
    assert_eq!((report.sessions_cut, report.sessions_left), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stuck_in_a_write_is_cut_at_the_drains_end_and_reported() {
    let server = TestServer::start_with(|config| {
        config.send_buffer_bytes = 4096;
        // Far beyond the drain: only the cut at window + grace + 2 s can end this session.
        config.send_timeout = Duration::from_secs(60);
    })
    .await;
    let event = server.create_event("stuck-at-drain").await;
    // A raw client with a small receive buffer that never reads after subscribing.
    let socket = stalled_device(&server, "stuck", &event).await;
    // Far more than the socket buffers hold, and more still while the node drains, so that
    // the session always waits on a write to the full socket.
    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(4000));
    for _ in 0..100 {
        server.publish(&event, "LIVE", &payload).await;
    }
    let publisher = {
        let (admin, event) = (server.admin(), event.clone());
        let request = ringside_protocol::admin::PublishRequest {
            stage: ringside_protocol::Stage::parse("LIVE").unwrap(),
            payload: ringside_protocol::Payload::parse(&payload).unwrap(),
        };
        tokio::spawn(async move {
            loop {
                let _stopped_or_published = admin.publish(&event, &request).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let report = server.stop().await;
    publisher.abort();
    assert_eq!(report.sessions_at_start, 1);
    assert_eq!(
        (report.sessions_cut, report.sessions_left),
        (1, 0),
        "{report:?}"
    );
    drop(socket);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_told_by_its_lifetime_goaway_counts_as_told_by_the_drain() {
    let server = TestServer::start_with(|config| {
        config.max_connection_lifetime = Duration::from_millis(500);
        config.connection_lifetime_spread = Duration::from_millis(100);
        // The drain starts within this grace, after the lifetime's goaway.
        config.goaway_grace = Duration::from_secs(2);
        config.shutdown_grace = Duration::from_secs(5);
    })
    .await;
    let event = server.create_event("told-already").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&event), 0)]).await;
    assert!(matches!(
        next_frame(&mut device).await,
        ServerFrame::Goaway {
            reason: GoawayReason::MaxLifetime,
            ..
        }
    ));
    let answer = admin_call(&server, "POST", "/v1/admin/nodes/test-node/drain").await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let (_, close, reason) = read_until_close(&mut device).await;
    assert_eq!((close, reason.as_str()), (1001, "max_lifetime"));
    let progress = server.admin().stats().await.unwrap().nodes[0]
        .drain
        .unwrap();
    assert_eq!(progress.sessions_at_start, 1);
    assert_eq!(progress.goaways_sent, 1, "{progress:?}");
    assert_eq!(
        server
            .metric("ringside_goaways_total{reason=\"drain\"}")
            .await,
        0
    );
    server.stop().await;
}
