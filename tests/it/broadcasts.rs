//! The delivery report of every broadcast, `PATCH /v1/admin/events/{id}` and the admin event
//! stream, against a real server with real WebSocket devices.

use std::time::Duration;

use crate::support::*;
use http_body_util::BodyExt;
use ringside_client::http::call;
use ringside_protocol::admin::{ApiError, ApiErrorCode, BroadcastReport, EventSummary};
use ringside_protocol::{EventId, Stage};

/// The report of `version`, once `done` holds for it (acks travel on their own; the report is
/// read again until they arrived, bounded by [`PROMPTLY`]).
async fn report_once(
    server: &TestServer,
    id: &EventId,
    version: u64,
    done: impl Fn(&BroadcastReport) -> bool,
) -> BroadcastReport {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let report = server.admin().broadcast(id, version).await.unwrap();
        if done(&report) {
            return report;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the report never got there: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin_call(server: &TestServer, method: &str, path: &str, body: &str) -> (u16, String) {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let response = call(
        &server.base,
        method,
        path,
        &[("authorization", &bearer)],
        Some(body.as_bytes().to_vec()),
    )
    .await
    .unwrap();
    (response.status, response.text())
}

fn error_code(body: &str) -> ApiErrorCode {
    serde_json::from_str::<ApiError>(body).unwrap().error.code
}

#[tokio::test]
async fn the_report_counts_the_devices_written_a_version_and_their_first_acks() {
    let server = TestServer::start().await;
    let id = server.create_event("report").await;
    let topic = topic(&id);
    let first = server.publish(&id, "UPCOMING", "{}").await;
    let mut devices = Vec::new();
    for index in 0..3 {
        let mut device = server.device_named(&format!("device-{index}")).await;
        subscribe(&mut device, &[(topic.clone(), 0)]).await;
        assert_eq!(next_state(&mut device).await.version, first.version);
        devices.push(device);
    }
    let live = server.publish(&id, "LIVE", "{}").await;
    for device in &mut devices {
        assert_eq!(next_state(device).await.version, live.version);
        device.ack(&topic, live.version).await.unwrap();
        // A repeated ack counts once.
        device.ack(&topic, live.version).await.unwrap();
    }
    // A device that already holds the version is sent nothing: its ack does not count.
    let mut current = server.device_named("device-current").await;
    subscribe(&mut current, &[(topic.clone(), live.version)]).await;
    current.ack(&topic, live.version).await.unwrap();
    // Frames of one session are handled in order: once this answer is back, the ack was.
    let other = server.create_event("report-other").await;
    subscribe(&mut current, &[(topic_of(&other), 0)]).await;

    let report = report_once(&server, &id, live.version, |r| r.summary.acked >= 3).await;
    let summary = &report.summary;
    assert_eq!((summary.subscribed, summary.sent, summary.acked), (3, 3, 3));
    assert_eq!(summary.acked_fraction, 1.0);
    assert_eq!(summary.stage, Stage::parse("LIVE").unwrap());
    assert_eq!(summary.published_at_ms, live.published_at_ms);
    let quantiles = summary.ack_latency.expect("latency quantiles");
    assert!(quantiles.p50_ms <= quantiles.p90_ms && quantiles.p90_ms <= quantiles.p99_ms);
    assert_eq!(report.reach.last().map(|p| p.acked_fraction), Some(1.0));
    assert_eq!((summary.nodes_reporting, summary.nodes_applied), (1, 1));
    assert_eq!(report.nodes.len(), 1);
    assert_eq!(report.nodes[0].acked, 3);

    // The first version reached the devices written, never acked (as catch-ups, or live to a
    // device that subscribed before the node had it: the publish answers once the bus has it).
    let list = server.admin().broadcasts(&id).await.unwrap();
    let versions: Vec<u64> = list.broadcasts.iter().map(|b| b.version).collect();
    assert_eq!(versions, vec![live.version, first.version]);
    let older = &list.broadcasts[1];
    assert_eq!((older.sent, older.acked), (3, 0));
    assert!(older.subscribed <= 3);
    assert_eq!(older.ack_latency, None);

    let path = format!("/v1/admin/events/report/broadcasts/{}", live.version + 1);
    let (status, body) = admin_call(&server, "GET", &path, "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), ApiErrorCode::NotFound);
    let (status, _) = admin_call(&server, "GET", "/v1/admin/events/report/broadcasts/x", "").await;
    assert_eq!(status, 404);
    let (status, _) = admin_call(&server, "GET", "/v1/admin/events/nope/broadcasts", "").await;
    assert_eq!(status, 404);
    let unauthorized = call(
        &server.base,
        "GET",
        "/v1/admin/events/report/broadcasts",
        &[],
        None,
    )
    .await
    .unwrap();
    assert_eq!(unauthorized.status, 401);
    server.stop().await;
}

fn topic_of(id: &EventId) -> ringside_protocol::Topic {
    id.topic()
}

#[tokio::test]
async fn an_update_replaces_fields_and_keeps_the_published_stage() {
    let server = TestServer::start().await;
    let id = server.create_event("patched").await;
    let (status, body) = admin_call(
        &server,
        "PATCH",
        "/v1/admin/events/patched",
        r#"{"title":"Renamed","stages":["UPCOMING","WALKOUT","LIVE","ENDED"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let summary: EventSummary = serde_json::from_str(&body).unwrap();
    assert_eq!(summary.title, "Renamed");
    assert_eq!(summary.stages.len(), 4);
    let fetched = server.admin().list_events().await.unwrap();
    assert!(fetched.iter().any(|e| e.id == id && e.title == "Renamed"));

    let (status, body) = admin_call(
        &server,
        "PATCH",
        "/v1/admin/events/patched",
        r#"{"starts_at":"tomorrow"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    server.publish(&id, "WALKOUT", "{}").await;
    let (status, body) = admin_call(
        &server,
        "PATCH",
        "/v1/admin/events/patched",
        r#"{"stages":["UPCOMING","LIVE","ENDED"]}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), ApiErrorCode::Conflict);
    let (status, _) = admin_call(&server, "PATCH", "/v1/admin/events/nope", "{}").await;
    assert_eq!(status, 404);
    // The client's call, for the CLI and the console.
    let update = ringside_protocol::admin::UpdateEvent {
        title: Some("Again".into()),
        ..Default::default()
    };
    let updated = server.admin().update_event(&id, &update).await.unwrap();
    assert_eq!((updated.title.as_str(), updated.stages.len()), ("Again", 4));
    server.stop().await;
}

/// An open `GET /v1/admin/stream`, read frame by frame.
struct AdminStream {
    body: hyper::body::Incoming,
    buffered: String,
    _driver: tokio::task::JoinHandle<()>,
}

impl AdminStream {
    async fn open(server: &TestServer, token: Option<&str>) -> (u16, Option<Self>) {
        let authority = server.base.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        let driver = tokio::spawn(async move {
            let _ended = connection.await;
        });
        let mut request = hyper::Request::get("/v1/admin/stream").header("host", &authority);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        if status != 200 {
            return (status, None);
        }
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let stream = Self {
            body: response.into_body(),
            buffered: String::new(),
            _driver: driver,
        };
        (status, Some(stream))
    }

    /// The names of the events left until the server ends the stream.
    async fn until_end(mut self) -> Vec<String> {
        while let Some(frame) = tokio::time::timeout(PROMPTLY, self.body.frame())
            .await
            .expect("a stream frame or its end in time")
        {
            if let Ok(data) = frame.unwrap().into_data() {
                self.buffered.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        self.buffered
            .split("\n\n")
            .filter_map(|block| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix("event: "))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The next event's name and data.
    async fn next_event(&mut self) -> (String, String) {
        loop {
            if let Some(end) = self.buffered.find("\n\n") {
                let block: String = self.buffered.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if !name.is_empty() {
                    return (name, data);
                }
                continue;
            }
            let frame = tokio::time::timeout(PROMPTLY, self.body.frame())
                .await
                .expect("a stream frame in time")
                .expect("the stream stays open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffered.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

#[tokio::test]
async fn the_admin_stream_sends_current_values_then_each_broadcast() {
    let server = TestServer::start().await;
    let (status, _) = AdminStream::open(&server, None).await;
    assert_eq!(status, 401);
    let id = server.create_event("streamed").await;
    let (status, stream) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let mut stream = stream.unwrap();
    let mut seen = Vec::new();
    while !(seen.contains(&"stats".to_owned()) && seen.contains(&"events".to_owned())) {
        let (name, data) = stream.next_event().await;
        if name == "events" {
            let list: ringside_protocol::admin::EventList = serde_json::from_str(&data).unwrap();
            assert!(list.events.iter().any(|e| e.id == id));
        }
        if name == "stats" {
            let _stats: ringside_protocol::admin::Stats = serde_json::from_str(&data).unwrap();
        }
        seen.push(name);
    }
    // The open stream holds no place in flight: only the request asking counts.
    let (status, body) = admin_call(&server, "GET", "/v1/admin/protection", "").await;
    assert_eq!(status, 200, "{body}");
    let protection: ringside_protocol::admin::ProtectionStatus =
        serde_json::from_str(&body).unwrap();
    assert_eq!(protection.in_flight, 1);
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&id), 0)]).await;
    let receipt = server.publish(&id, "LIVE", "{}").await;
    assert_eq!(next_state(&mut device).await.version, receipt.version);
    device.ack(&topic(&id), receipt.version).await.unwrap();
    loop {
        let (name, data) = stream.next_event().await;
        if name != "broadcast" {
            continue;
        }
        let report: BroadcastReport = serde_json::from_str(&data).unwrap();
        assert_eq!(report.summary.event, id);
        if report.summary.version == receipt.version && report.summary.acked == 1 {
            assert_eq!(report.summary.sent, 1);
            break;
        }
    }
    server.stop().await;
}

/// Two nodes sharing Redis (each with its in-process bus; the second starts from the event
/// store's states): each node writes its records next to its registry entry, and the report
/// of either control plane sums both nodes' rows. No Kafka broker needed: the records' path
/// is Redis alone.
#[tokio::test]
async fn on_redis_the_report_sums_every_nodes_records_and_a_stopped_node_deletes_them() {
    let keys = RedisKeys::new("broadcast-report");
    let on_redis = |node: &'static str| {
        let keys = (keys.url.clone(), keys.prefix.clone());
        move |config: &mut ringside::ServeConfig| {
            config.gateway.node_id = node.into();
            config.prefetch.store = ringside::content::StoreSetup::Redis {
                url: keys.0,
                prefix: keys.1,
            };
        }
    };
    let first = TestServer::start_with_config(on_redis("node-a")).await;
    let id = first.create_event("fleet").await;
    let topic = topic(&id);
    let mut on_first = Vec::new();
    for index in 0..2 {
        let mut device = first.device_named(&format!("a-{index}")).await;
        subscribe(&mut device, &[(topic.clone(), 0)]).await;
        on_first.push(device);
    }
    let receipt = first.publish(&id, "LIVE", "{}").await;
    for device in &mut on_first {
        assert_eq!(next_state(device).await.version, receipt.version);
        device.ack(&topic, receipt.version).await.unwrap();
    }
    // The second node starts from the store's current state; its device catches up.
    let second = TestServer::start_with_config(on_redis("node-b")).await;
    let mut on_second = second.device_named("b-0").await;
    subscribe(&mut on_second, &[(topic.clone(), 0)]).await;
    assert_eq!(next_state(&mut on_second).await.version, receipt.version);
    on_second.ack(&topic, receipt.version).await.unwrap();

    let report = report_once(&first, &id, receipt.version, |r| {
        r.summary.nodes_reporting == 2 && r.summary.acked == 3
    })
    .await;
    let rows: Vec<(&str, u64, u64)> = report
        .nodes
        .iter()
        .map(|n| (n.node.as_str(), n.sent, n.acked))
        .collect();
    assert_eq!(rows, vec![("node-a", 2, 2), ("node-b", 1, 1)]);
    assert_eq!((report.summary.sent, report.summary.nodes_applied), (3, 2));
    assert_eq!(report.summary.acked_fraction, 1.0);
    let from_second = second
        .admin()
        .broadcast(&id, receipt.version)
        .await
        .unwrap();
    assert_eq!(from_second.nodes.len(), 2);

    second.stop().await;
    let records_key = format!("{}node-broadcasts:node-b", keys.prefix);
    let client = redis::Client::open(keys.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let left: bool = redis::cmd("EXISTS")
        .arg(&records_key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!left, "a stopped node deletes its records");
    first.stop().await;
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_until_one_closes() {
    let server = TestServer::start_with_config(|config| config.admin_stream.max_streams = 1).await;
    let (status, open) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    let (status, _) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 503);
    drop(open);
    // The closed stream's permit comes back once the server notices the client left.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let (status, again) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
        if status == 200 {
            drop(again);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the permit never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// A stream ends cleanly after its lifetime (the console then reconnects) and gives its place
/// back, so a forgotten tab cannot keep other operators out; streams open together each get
/// every current value on connect from the one poller.
#[tokio::test]
async fn a_stream_ends_after_its_lifetime_and_gives_its_place_back() {
    let server = TestServer::start_with_config(|config| {
        config.admin_stream.max_streams = 2;
        config.admin_stream.max_lifetime = Duration::from_secs(1);
    })
    .await;
    server.create_event("lifetime").await;
    for round in 0..2 {
        let (status, first) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "round {round}");
        let (status, second) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 200, "round {round}");
        let (status, _) = AdminStream::open(&server, Some(ADMIN_TOKEN)).await;
        assert_eq!(status, 503, "both places are taken");
        for stream in [first.unwrap(), second.unwrap()] {
            let names = stream.until_end().await;
            for kind in ["stats", "events"] {
                assert!(names.iter().any(|name| name == kind), "{kind} in {names:?}");
            }
        }
        // Each stream gave its place back as it ended: the next round opens two again.
    }
    server.stop().await;
}
