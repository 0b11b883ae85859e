//! Protection at a real node with real concurrent HTTP clients: the lowest classes are shed
//! first while `critical` is served, the priority header and the token's ceiling only lower,
//! an unknown header value is a 400 naming it, the ruleset switches on when an event goes LIVE
//! and through the admin API (and across a fleet sharing Redis), and `--protection off` sheds
//! nothing.
//!
//! Overload is forced deterministically: a fixed concurrency limit (min = max) and requests held
//! in flight by bodies that never arrive (the handler waits for them after its credentials
//! check), counted through `/metrics`, which protection never limits.

use std::time::Duration;

use crate::support::*;
use ringside_protection::ProtectionConfig;
use ringside_protocol::PRIORITY_HEADER;
use ringside_protocol::admin::{ProtectionMode, ProtectionStatus, RulesetMode, RulesetReason};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A fixed limit, no latency trigger (held requests would trip it when they end), and room for
/// bodies that never come.
fn fixed(limit: u32, ruleset: RulesetMode) -> impl FnOnce(&mut ringside::http::HttpConfig) {
    move |http| {
        http.body_read_timeout = Duration::from_secs(120);
        http.protection = ProtectionConfig {
            min_limit: limit,
            initial_limit: limit,
            max_limit: limit,
            ruleset,
            latency_ratio: None,
            ..ProtectionConfig::default()
        };
    }
}

/// Requests held in flight: each a connection that sent an admin request's headers and a
/// body it never finishes. Dropping it ends them.
struct Held(Vec<TcpStream>);

impl Held {
    fn new() -> Self {
        Self(Vec::new())
    }

    /// Holds more requests until `count` are held, and waits until the node counts them.
    async fn up_to(&mut self, server: &TestServer, count: usize) {
        while self.0.len() < count {
            let mut stream = TcpStream::connect(server.addr).await.unwrap();
            let head = format!(
                "POST /v1/admin/events HTTP/1.1\r\nhost: ringside\r\n\
                 authorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\n\
                 content-length: 1000\r\n\r\n{{"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            self.0.push(stream);
        }
        wait_for_in_flight(server, count as u64).await;
    }

    async fn release(&mut self, server: &TestServer) {
        self.0.clear();
        wait_for_in_flight(server, 0).await;
    }
}

async fn wait_for_in_flight(server: &TestServer, count: u64) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let in_flight = server.metric("ringside_protection_in_flight").await;
        if in_flight == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{in_flight} in flight, never {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A request of one class, through the admin API or GraphQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// `POST /v1/admin/events` with an invalid body: critical, answered 400 when served.
    AdminWrite,
    /// `GET /v1/admin/events`, lowered by the header when given.
    AdminRead(Option<&'static str>),
    /// `POST /graphql`, lowered by the header when given.
    Graphql(Option<&'static str>),
}

async fn send(
    server: &TestServer,
    probe: Probe,
    token: &str,
) -> (ringside_client::http::HttpResponse, Value) {
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let device = format!("Bearer {token}");
    let (method, path, body, bearer, header) = match probe {
        Probe::AdminWrite => (
            "POST",
            "/v1/admin/events",
            Some(b"{}".to_vec()),
            &admin,
            None,
        ),
        Probe::AdminRead(header) => ("GET", "/v1/admin/events", None, &admin, header),
        Probe::Graphql(header) => (
            "POST",
            "/graphql",
            Some(br#"{"query":"{ __typename }"}"#.to_vec()),
            &device,
            header,
        ),
    };
    let mut headers = vec![("authorization", bearer.as_str())];
    if let Some(value) = header {
        headers.push((PRIORITY_HEADER, value));
    }
    let response = ringside_client::http::call(&server.base, method, path, &headers, body)
        .await
        .unwrap();
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response, json)
}

/// Whether `probe` is shed (503); any other answer means it was served.
async fn shed(server: &TestServer, probe: Probe) -> bool {
    shed_with_token(server, probe, &device_token("probe", 3600)).await
}

async fn shed_with_token(server: &TestServer, probe: Probe, token: &str) -> bool {
    let (response, json) = send(server, probe, token).await;
    match response.status {
        503 => {
            assert!(
                response.headers.contains_key("retry-after"),
                "{probe:?}: 503 without Retry-After"
            );
            true
        }
        status => {
            assert!(
                matches!(status, 200 | 400),
                "{probe:?} answered {status}: {json}"
            );
            false
        }
    }
}

/// Which of the four classes are shed now, highest first: through the admin API (critical:
/// a write; the rest: a read lowered by the header) and through GraphQL.
async fn shed_classes(server: &TestServer) -> [bool; 4] {
    let admin = [
        shed(server, Probe::AdminWrite).await,
        shed(server, Probe::AdminRead(None)).await,
        shed(server, Probe::AdminRead(Some("best_effort"))).await,
        shed(server, Probe::AdminRead(Some("bulk"))).await,
    ];
    let graphql = [
        shed(server, Probe::Graphql(None)).await,
        shed(server, Probe::Graphql(Some("best_effort"))).await,
        shed(server, Probe::Graphql(Some("bulk"))).await,
    ];
    assert_eq!(
        graphql,
        [admin[1], admin[2], admin[3]],
        "GraphQL sheds as admin"
    );
    admin
}

async fn protection_status(server: &TestServer) -> ProtectionStatus {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let response = ringside_client::http::call(
        &server.base,
        "GET",
        "/v1/admin/protection",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    serde_json::from_slice(&response.body).unwrap()
}

async fn put_protection(server: &TestServer, body: &str, token: &str) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let response = ringside_client::http::call(
        &server.base,
        "PUT",
        "/v1/admin/protection",
        &[("authorization", &bearer)],
        Some(body.as_bytes().to_vec()),
    )
    .await
    .unwrap();
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

fn metrics_line(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_the_lowest_classes_are_refused_first_and_critical_is_served() {
    let server = TestServer::start_with_http(fixed(10, RulesetMode::Off)).await;
    let mut held = Held::new();
    // Admitted while in flight < 10 × share: bulk 5, best_effort 7, degraded 9, critical 10.
    let levels: [(usize, [bool; 4]); 5] = [
        (0, [false, false, false, false]),
        (5, [false, false, false, true]),
        (7, [false, false, true, true]),
        (9, [false, true, true, true]),
        (10, [true, true, true, true]),
    ];
    for (count, expected) in levels {
        held.up_to(&server, count).await;
        assert_eq!(
            shed_classes(&server).await,
            expected,
            "[critical, degraded, best_effort, bulk] shed with {count} in flight"
        );
        // The WebSocket upgrade is degraded and passes the same layer.
        let upgrade =
            ringside_client::DeviceConnection::connect(&server.ws_url, &device_token("ws", 60))
                .await;
        match upgrade {
            Err(ringside_client::ClientError::Refused { status, body }) => {
                assert!(expected[1], "upgrade shed with {count} in flight: {body}");
                assert_eq!(status, 503);
                assert!(body.contains("\"overloaded\""), "{body}");
            }
            Ok(device) => {
                assert!(!expected[1], "upgrade served with {count} in flight");
                device.close().await.unwrap();
            }
            Err(other) => panic!("upgrade with {count} in flight: {other}"),
        }
    }

    // The answers: at once, 503, Retry-After from the class's window, the documented bodies.
    let (response, json) = send(&server, Probe::Graphql(Some("bulk")), "t").await;
    assert_eq!(response.status, 503);
    let error = &json["errors"][0];
    assert_eq!(error["extensions"]["code"], "OVERLOADED", "{json}");
    assert_eq!(error["extensions"]["class"], "bulk", "{json}");
    let retry_after_ms = error["extensions"]["retry_after_ms"].as_u64().unwrap();
    assert!((15_000..=60_000).contains(&retry_after_ms), "{json}");
    let retry_after: u64 = response.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, retry_after_ms.div_ceil(1000));
    let (response, json) = send(&server, Probe::AdminWrite, "").await;
    assert_eq!(response.status, 503);
    assert_eq!(json["error"]["code"], "overloaded", "{json}");
    let seconds: u64 = response.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&seconds),
        "critical retries sooner: {seconds}"
    );
    // Health and metrics are never limited.
    let health = ringside_client::http::call(&server.base, "GET", "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    let text = ringside_client::http::call(&server.base, "GET", "/metrics", &[], None)
        .await
        .unwrap()
        .text();
    assert!(
        metrics_line(
            &text,
            r#"ringside_protection_shed_total{class="bulk",route="graphql"}"#
        ) >= 4
    );
    assert!(
        metrics_line(
            &text,
            r#"ringside_protection_shed_total{class="bulk",route="admin"}"#
        ) >= 4
    );
    assert_eq!(
        metrics_line(
            &text,
            r#"ringside_protection_shed_total{class="critical",route="admin"}"#
        ),
        2
    );
    assert_eq!(metrics_line(&text, "ringside_protection_limit"), 10);

    // Once the held requests end, every class is served again.
    held.release(&server).await;
    assert_eq!(shed_classes(&server).await, [false; 4]);
    let status = protection_status(&server).await;
    assert_eq!(status.shed.critical, 2);
    assert!(
        status.shed.bulk >= 8 && status.shed.degraded >= 4,
        "{status:?}"
    );
    // The node's stats (the fleet view's rows) carry the same counts.
    let stats = server.admin().stats().await.unwrap();
    assert_eq!(stats.nodes[0].shed, Some(status.shed), "{stats:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_and_the_device_token_can_only_lower_a_class() {
    let server = TestServer::start_with_http(fixed(10, RulesetMode::Off)).await;
    let mut held = Held::new();
    let key = ringside_auth::DeviceTokenKey::new(DEVICE_SECRET.as_bytes()).unwrap();
    let token_with = |priority| {
        key.sign(&ringside_auth::DeviceClaims {
            sub: "ceiling".into(),
            profile: "profile-ceiling".into(),
            class: ringside_auth::DeviceClass::Tv,
            exp: ringside_protocol::unix_now_ms() / 1000 + 3600,
            nbf: None,
            priority: Some(priority),
        })
    };
    // 5 in flight: bulk is shed, degraded is not.
    held.up_to(&server, 5).await;
    assert!(!shed(&server, Probe::Graphql(None)).await);
    let bulk_device = token_with(ringside_protocol::Priority::Bulk);
    assert!(shed_with_token(&server, Probe::Graphql(None), &bulk_device).await);
    // A bulk device cannot raise itself back with the header.
    assert!(shed_with_token(&server, Probe::Graphql(Some("critical")), &bulk_device).await);

    // 9 in flight: degraded is shed, critical is not.
    held.up_to(&server, 9).await;
    assert!(!shed(&server, Probe::AdminWrite).await);
    assert!(shed(&server, Probe::Graphql(None)).await);
    assert!(
        shed(&server, Probe::Graphql(Some("critical"))).await,
        "the header cannot raise"
    );
    let critical_device = token_with(ringside_protocol::Priority::Critical);
    assert!(
        shed_with_token(&server, Probe::Graphql(None), &critical_device).await,
        "the token's claim cannot raise"
    );
    held.release(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_priority_header_is_a_400_naming_it_protection_on_or_off() {
    for mode in [ProtectionMode::On, ProtectionMode::Off] {
        let server = TestServer::start_with_http(|http| http.protection.mode = mode).await;
        let (response, json) = send(&server, Probe::Graphql(Some("urgent")), "t").await;
        assert_eq!(response.status, 400, "{json}");
        let error = &json["errors"][0];
        assert_eq!(error["extensions"]["code"], "BAD_REQUEST", "{json}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with("x-ringside-priority: unknown priority \"urgent\""),
            "{message}"
        );
        let (response, json) = send(&server, Probe::AdminRead(Some("Critical")), "").await;
        assert_eq!(response.status, 400, "{json}");
        assert_eq!(json["error"]["code"], "invalid_request", "{json}");
        assert_eq!(json["error"]["field"], PRIORITY_HEADER, "{json}");
        // Exempt routes are not classified.
        let health = ringside_client::http::call(
            &server.base,
            "GET",
            "/healthz",
            &[(PRIORITY_HEADER, "urgent")],
            None,
        )
        .await
        .unwrap();
        assert_eq!(health.status, 200);
        assert_eq!(
            server
                .metric("ringside_protection_bad_priority_header_total")
                .await,
            2
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ruleset_switches_on_when_an_event_goes_live_and_through_the_admin_api() {
    let server = TestServer::start_with_http(|http| {
        fixed(20, RulesetMode::Auto)(http);
        // Only LIVE opens a window here, so that the test tells it from other transitions.
        http.protection.transition_window = Duration::ZERO;
    })
    .await;
    let status = protection_status(&server).await;
    assert!(!status.active && status.reasons.is_empty(), "{status:?}");
    assert_eq!(status.shares.bulk, 0.5);
    let event = server.create_event("kickoff").await;
    server.publish(&event, "UPCOMING", "{}").await;
    assert!(!protection_status(&server).await.active);

    // 4 in flight: bulk (20 × 0.5 = 10) is served, until the tightened share (20 × 0.15 = 3).
    let mut held = Held::new();
    held.up_to(&server, 4).await;
    assert!(!shed(&server, Probe::Graphql(Some("bulk"))).await);
    let before_ms = ringside_protocol::unix_now_ms();
    let live = server.publish(&event, "LIVE", "{}").await;
    let status = protection_status(&server).await;
    assert!(status.active, "{status:?}");
    assert_eq!(status.reasons, [RulesetReason::EventLive]);
    assert!(
        status.active_until_ms.unwrap() >= before_ms + 300_000,
        "{status:?}"
    );
    assert_eq!(status.shares.bulk, 0.15);
    assert_eq!(status.shares.best_effort, 0.35);
    assert!(status.background_paused);
    let transition = status.last_transition.unwrap();
    assert_eq!(
        (transition.stage.as_str(), transition.version),
        ("LIVE", live.version)
    );
    assert!(shed(&server, Probe::Graphql(Some("bulk"))).await);
    assert!(!shed(&server, Probe::Graphql(Some("best_effort"))).await);

    // An operator switches it off, on (forced), and back to auto (the LIVE window holds).
    let (code, json) = put_protection(&server, r#"{"ruleset":"off"}"#, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(json["active"], false, "{json}");
    assert!(!shed(&server, Probe::Graphql(Some("bulk"))).await);
    put_protection(&server, r#"{"ruleset":"on"}"#, ADMIN_TOKEN).await;
    let status = protection_status(&server).await;
    assert_eq!(
        (status.ruleset, status.reasons.as_slice()),
        (RulesetMode::On, &[RulesetReason::Forced][..])
    );
    put_protection(&server, r#"{"ruleset":"auto"}"#, ADMIN_TOKEN).await;
    assert_eq!(
        protection_status(&server).await.reasons,
        [RulesetReason::EventLive]
    );
    // Only operators switch it, and only to known values.
    let (code, _) = put_protection(
        &server,
        r#"{"ruleset":"off"}"#,
        "not-the-admin-token-but-long-enough",
    )
    .await;
    assert_eq!(code, 401);
    let (code, json) = put_protection(&server, r#"{"ruleset":"sometimes"}"#, ADMIN_TOKEN).await;
    assert_eq!(code, 400, "{json}");
    assert!(protection_status(&server).await.active);
    held.release(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_off_sheds_nothing_until_an_operator_switches_it_on() {
    let server = TestServer::start_with_http(|http| {
        fixed(2, RulesetMode::Off)(http);
        http.protection.mode = ProtectionMode::Off;
    })
    .await;
    let mut held = Held::new();
    held.up_to(&server, 6).await;
    assert_eq!(shed_classes(&server).await, [false; 4]);
    let status = protection_status(&server).await;
    assert_eq!(status.protection, ProtectionMode::Off);
    assert_eq!(status.shed, Default::default());
    assert!(status.in_flight >= 6, "still measured: {status:?}");
    // The PUT itself is critical and runs beyond the limit only because protection is off.
    let (code, json) = put_protection(&server, r#"{"protection":"on"}"#, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{json}");
    assert_eq!(shed_classes(&server).await, [true; 4]);
    held.release(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_put_on_one_process_reaches_every_process_sharing_redis() {
    let keys = RedisKeys::new("protection-fleet");
    let start = |mode: ProtectionMode| {
        let (url, prefix) = (keys.url.clone(), keys.prefix.clone());
        TestServer::start_configured(
            |_| {},
            move |http| {
                http.protection.mode = mode;
                http.protection.latency_ratio = None;
                http.protection.fleet_poll_interval = Duration::from_millis(100);
            },
            move |setup| setup.store = ringside::content::StoreSetup::Redis { url, prefix },
        )
    };
    // The first process runs with protection off: a PUT of the ruleset alone must not carry
    // that to the fleet.
    let (first, second) = (
        start(ProtectionMode::Off).await,
        start(ProtectionMode::On).await,
    );
    let (code, json) = put_protection(&first, r#"{"ruleset":"on"}"#, ADMIN_TOKEN).await;
    assert_eq!(code, 200, "{json}");
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while protection_status(&second).await.ruleset != RulesetMode::On {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second process never followed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = protection_status(&second).await;
    assert_eq!(status.reasons, [RulesetReason::Forced]);
    assert_eq!(
        status.protection,
        ProtectionMode::On,
        "only the field put is shared"
    );
    assert_eq!(
        protection_status(&first).await.protection,
        ProtectionMode::Off
    );
    first.stop().await;
    second.stop().await;
}

/// One keep-alive connection, requests sent one after the other over it.
struct KeepAlive(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>);

impl KeepAlive {
    async fn open(server: &TestServer) -> Self {
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self(sender)
    }

    /// `GET /v1/admin/events` marked `class`: its status.
    async fn admin_read(&mut self, class: &str) -> u16 {
        let request = hyper::Request::get("/v1/admin/events")
            .header("host", "ringside")
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header(PRIORITY_HEADER, class)
            .body(http_body_util::Full::default())
            .unwrap();
        self.0.ready().await.unwrap();
        let response = self.0.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        status
    }
}

/// A connection whose bulk request was shed is not served again until its pause has passed
/// (the shed answer itself comes at once); another connection is served meanwhile, and a shed
/// degraded request pauses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_bulk_request_was_shed_waits_out_its_pause() {
    const PAUSE: Duration = Duration::from_secs(3);
    let server = TestServer::start_with_http(|http| {
        fixed(4, RulesetMode::Off)(http);
        http.protection.shed_pause.bulk = PAUSE;
    })
    .await;
    let mut held = Held::new();
    // Bulk is admitted while in flight < 2, degraded while < 3.6.
    held.up_to(&server, 4).await;
    let mut paused = KeepAlive::open(&server).await;
    assert_eq!(paused.admin_read("bulk").await, 503, "shed at once");
    let shed_at = tokio::time::Instant::now();
    let mut degraded = KeepAlive::open(&server).await;
    assert_eq!(degraded.admin_read("degraded").await, 503);
    held.release(&server).await;

    let waiting = tokio::spawn(async move {
        let status = paused.admin_read("bulk").await;
        (status, shed_at.elapsed())
    });
    // Another connection, and the shed degraded one, are served while it waits.
    let mut other = KeepAlive::open(&server).await;
    assert_eq!(other.admin_read("bulk").await, 200);
    assert_eq!(degraded.admin_read("degraded").await, 200);
    assert!(
        !waiting.is_finished(),
        "the paused connection was served early"
    );
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, 200, "served once the pause has passed");
    assert!(waited >= PAUSE - Duration::from_millis(100), "{waited:?}");
    assert_eq!(
        server
            .metric("ringside_protection_paused_connections_total")
            .await,
        1
    );
    server.stop().await;
}
