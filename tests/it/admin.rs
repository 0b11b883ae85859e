//! The admin API and the operational endpoints over real HTTP.

use crate::support::*;
use ringside_client::http::{HttpResponse, call};
use ringside_protocol::admin::{ApiError, ApiErrorCode, EventList, EventSummary};

async fn admin_call(server: &TestServer, method: &str, path: &str, body: &str) -> HttpResponse {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    call(
        &server.base,
        method,
        path,
        &[("authorization", &bearer)],
        Some(body.as_bytes().to_vec()),
    )
    .await
    .expect("HTTP call")
}

fn error_of(response: &HttpResponse) -> ApiError {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|_| panic!("JSON error body, got {:?}", response.text()))
}

/// None of the refused requests created the events these tests try to create.
async fn assert_no_test_event_was_created(server: &TestServer) {
    let listed = admin_call(server, "GET", "/v1/admin/events", "").await;
    let list: EventList = serde_json::from_slice(&listed.body).unwrap();
    let created: Vec<&str> = list
        .events
        .iter()
        .map(|e| e.id.as_str())
        .filter(|id| ["e", "final"].contains(id))
        .collect();
    assert!(
        created.is_empty(),
        "created by a refused request: {created:?}"
    );
}

const VALID_EVENT: &str = r#"{"id":"final","title":"The Final","starts_at":"2026-12-01T20:00:00+01:00","stages":["UPCOMING","LIVE","ENDED"]}"#;

#[tokio::test]
async fn create_list_and_publish() {
    let server = TestServer::start().await;
    let created = admin_call(&server, "POST", "/v1/admin/events", VALID_EVENT).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let summary: EventSummary = serde_json::from_slice(&created.body).unwrap();
    assert_eq!((summary.version, summary.stage.clone()), (0, None));
    assert_eq!(summary.topic.as_str(), "event:final");

    let duplicate = admin_call(&server, "POST", "/v1/admin/events", VALID_EVENT).await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(error_of(&duplicate).error.code, ApiErrorCode::Conflict);

    let published = admin_call(
        &server,
        "POST",
        "/v1/admin/events/final/publish",
        r#"{"stage":"LIVE","payload":{"a":1}}"#,
    )
    .await;
    assert_eq!(published.status, 200, "{}", published.text());
    let receipt: ringside_protocol::admin::PublishReceipt =
        serde_json::from_slice(&published.body).unwrap();
    assert_eq!(receipt.topic.as_str(), "event:final");
    assert!(receipt.version > 0);

    let listed = admin_call(&server, "GET", "/v1/admin/events", "").await;
    let list: EventList = serde_json::from_slice(&listed.body).unwrap();
    let ours: Vec<&EventSummary> = list
        .events
        .iter()
        .filter(|e| e.id.as_str() == "final")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].version, receipt.version);
    assert_eq!(ours[0].stage.as_ref().map(|s| s.as_str()), Some("LIVE"));
    assert_eq!(ours[0].published_at_ms, Some(receipt.published_at_ms));
    server.stop().await;
}

#[tokio::test]
async fn invalid_event_bodies_get_400_naming_the_field() {
    let server = TestServer::start().await;
    let cases = [
        (
            r#"{"title":"t","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"]}"#,
            "id",
        ),
        (
            r#"{"id":"bad id!","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"]}"#,
            "id",
        ),
        (
            r#"{"id":"e","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"]}"#,
            "title",
        ),
        (
            r#"{"id":"e","title":"","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"]}"#,
            "title",
        ),
        (
            r#"{"id":"e","title":5,"starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"]}"#,
            "title",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"tomorrow","stages":["LIVE"]}"#,
            "starts_at",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":[]}"#,
            "stages",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":["live"]}"#,
            "stages",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE","LIVE"]}"#,
            "stages",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":"LIVE"}"#,
            "stages",
        ),
        (
            r#"{"id":"e","title":"t","starts_at":"2026-12-01T20:00:00Z","stages":["LIVE"],"colour":1}"#,
            "colour",
        ),
    ];
    for (body, field) in cases {
        let response = admin_call(&server, "POST", "/v1/admin/events", body).await;
        assert_eq!(response.status, 400, "{body}");
        let error = error_of(&response);
        assert_eq!(error.error.code, ApiErrorCode::InvalidRequest);
        assert!(
            error.error.message.contains(field),
            "{body}: {}",
            error.error.message
        );
    }
    let broken = admin_call(&server, "POST", "/v1/admin/events", "{oops").await;
    assert_eq!(broken.status, 400);
    assert_eq!(error_of(&broken).error.code, ApiErrorCode::InvalidRequest);
    assert_no_test_event_was_created(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn publish_errors() {
    let server = TestServer::start().await;
    assert_eq!(
        admin_call(&server, "POST", "/v1/admin/events", VALID_EVENT)
            .await
            .status,
        201
    );

    let unknown = admin_call(
        &server,
        "POST",
        "/v1/admin/events/nope/publish",
        r#"{"stage":"LIVE"}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(error_of(&unknown).error.code, ApiErrorCode::NotFound);

    let bad_stage = admin_call(
        &server,
        "POST",
        "/v1/admin/events/final/publish",
        r#"{"stage":"HALFTIME"}"#,
    )
    .await;
    assert_eq!(bad_stage.status, 400);
    assert_eq!(error_of(&bad_stage).error.field.as_deref(), Some("stage"));

    let big = format!(
        r#"{{"stage":"LIVE","payload":{{"x":"{}"}}}}"#,
        "y".repeat(4 * 1024)
    );
    let too_large = admin_call(&server, "POST", "/v1/admin/events/final/publish", &big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(
        error_of(&too_large).error.code,
        ApiErrorCode::PayloadTooLarge
    );

    let huge = format!(
        r#"{{"stage":"LIVE","payload":{{"x":"{}"}}}}"#,
        "y".repeat(100 * 1024)
    );
    assert_eq!(
        admin_call(&server, "POST", "/v1/admin/events/final/publish", &huge)
            .await
            .status,
        413
    );

    let not_object = admin_call(
        &server,
        "POST",
        "/v1/admin/events/final/publish",
        r#"{"stage":"LIVE","payload":[1]}"#,
    )
    .await;
    assert_eq!(not_object.status, 400);
    assert_eq!(
        error_of(&not_object).error.field.as_deref(),
        Some("payload")
    );

    // None of the refused publishes changed the event's state.
    let event = admin_call(&server, "GET", "/v1/admin/events/final", "").await;
    let summary: EventSummary = serde_json::from_slice(&event.body).unwrap();
    assert_eq!((summary.version, summary.stage), (0, None));
    server.stop().await;
}

#[tokio::test]
async fn every_admin_route_needs_the_admin_token() {
    let server = TestServer::start().await;
    let routes = [
        ("GET", "/v1/admin/events"),
        ("POST", "/v1/admin/events"),
        ("GET", "/v1/admin/events/final"),
        ("POST", "/v1/admin/events/final/publish"),
        ("GET", "/v1/admin/stats"),
        ("GET", "/v1/admin/unknown"),
    ];
    let device_bearer = format!("Bearer {}", device_token("sneaky", 3600));
    let credentials: [&[(&str, &str)]; 3] = [
        &[],
        &[(
            "authorization",
            "Bearer wrong-token-that-is-long-enough-0000",
        )],
        &[("authorization", &device_bearer)],
    ];
    for (method, path) in routes {
        for headers in credentials {
            let response = call(
                &server.base,
                method,
                path,
                headers,
                Some(VALID_EVENT.into()),
            )
            .await
            .unwrap();
            assert_eq!(response.status, 401, "{method} {path}");
            assert_eq!(error_of(&response).error.code, ApiErrorCode::Unauthorized);
            assert_eq!(response.headers.get("www-authenticate").unwrap(), "Bearer");
        }
    }
    assert_no_test_event_was_created(&server).await;
    let missing = admin_call(&server, "GET", "/v1/admin/unknown", "").await;
    assert_eq!(missing.status, 404);
    server.stop().await;
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() {
    let server = TestServer::start().await;
    let health = call(&server.base, "GET", "/healthz", &[], None)
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert!(health.text().contains(r#""node":"test-node""#));

    let event = server.create_event("metered").await;
    let mut device = server.device().await;
    subscribe(&mut device, &[(topic(&event), 0)]).await;
    server.publish(&event, "LIVE", "{}").await;
    next_state(&mut device).await;

    let metrics = call(&server.base, "GET", "/metrics", &[], None)
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(server.metric("ringside_connections").await, 1);
    assert_eq!(server.metric("ringside_messages_sent_total").await, 1);
    assert!(server.metric("ringside_bytes_sent_total").await > 50);
    assert_eq!(
        server
            .metric("ringside_publish_to_send_seconds_count")
            .await,
        1
    );
    assert_eq!(server.metric("ringside_publishes_total").await, 1);

    let missing = call(&server.base, "GET", "/nothing-here", &[], None)
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    assert_eq!(error_of(&missing).error.code, ApiErrorCode::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn slow_or_silent_http_clients_neither_hold_connections_nor_block_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with_http(|config| {
        config.header_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    // Half a request, never finished: the server closes the connection by itself.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(PROMPTLY, slow.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the server kept a half-sent request open");

    // Another half request is still open when the server stops: the stop must not wait on it.
    let mut stuck = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stuck
        .write_all(b"POST /v1/admin/events HTTP/1.1\r\n")
        .await
        .unwrap();
    let report = server.stop().await;
    assert_eq!(report.sessions_left, 0);
}

// ---- The follow-up fetch window (`fetch_within_ms`) ----

/// A device token for profile `p000001` of the test catalog, for GraphQL.
fn catalog_token() -> String {
    profile_token("graphql-reader", "p000001", 3600)
}

/// The event's current state as GraphQL serves it: `(version, fetchWithinMs)`.
async fn graphql_state(server: &TestServer, event: &str) -> (u64, Option<u64>) {
    let query = format!(r#"{{ event(id: "{event}") {{ state {{ version fetchWithinMs }} }} }}"#);
    let (response, body) = server
        .graphql(&catalog_token(), serde_json::json!({ "query": query }))
        .await;
    assert_eq!(response.status, 200, "{body}");
    let state = &body["data"]["event"]["state"];
    (
        state["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("{body}")),
        state["fetchWithinMs"].as_u64(),
    )
}

async fn publish_body(server: &TestServer, event: &str, body: &str) -> HttpResponse {
    admin_call(
        server,
        "POST",
        &format!("/v1/admin/events/{event}/publish"),
        body,
    )
    .await
}

#[tokio::test]
async fn an_operator_set_fetch_window_reaches_websocket_and_graphql_unchanged() {
    let server = TestServer::start().await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    let mut device = server.device().await;
    subscribe(&mut device, &[(event.topic(), 0)]).await;
    for window in [4321, 0, 3_600_000] {
        let published = publish_body(
            &server,
            "fight-night",
            &format!(r#"{{"stage":"LIVE","fetch_within_ms":{window}}}"#),
        )
        .await;
        assert_eq!(published.status, 200, "{}", published.text());
        let state = next_state(&mut device).await;
        assert_eq!(state.fetch_within_ms, Some(window));
        assert_eq!(
            graphql_state(&server, "fight-night").await,
            (state.version, Some(window))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn an_out_of_range_fetch_window_is_refused_naming_the_field() {
    let server = TestServer::start().await;
    for body in [
        r#"{"stage":"LIVE","fetch_within_ms":3600001}"#,
        r#"{"stage":"LIVE","fetch_within_ms":-1}"#,
        r#"{"stage":"LIVE","fetch_within_ms":"soon"}"#,
        r#"{"stage":"LIVE","fetch_within_ms":1.5}"#,
    ] {
        let refused = publish_body(&server, "fight-night", body).await;
        assert_eq!(refused.status, 400, "{body}: {}", refused.text());
        let error = error_of(&refused);
        assert_eq!(error.error.code, ApiErrorCode::InvalidRequest);
        assert_eq!(
            error.error.field.as_deref(),
            Some("fetch_within_ms"),
            "{body}"
        );
    }
    // Nothing was published.
    let event = admin_call(&server, "GET", "/v1/admin/events/fight-night", "").await;
    let summary: EventSummary = serde_json::from_slice(&event.body).unwrap();
    assert_eq!(summary.version, 0);
    server.stop().await;
}

#[tokio::test]
async fn without_an_operator_window_a_stage_state_gets_the_default_from_its_subscribers() {
    // 10 fetches/s at a share of 0.5: 5 follow-up fetches per second, so 12 devices need
    // 2.4 s, and 0 devices get the 1 s minimum.
    let server = TestServer::start_with_config(|config| {
        config.fetch_window.follow_up_fetch_capacity_per_s = 10;
        config.fetch_window.follow_up_fetch_share = 0.5;
    })
    .await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    // Before anyone subscribed (and before the topic had a state).
    let first = publish_body(&server, "fight-night", r#"{"stage":"UPCOMING"}"#).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let (upcoming, window) = graphql_state(&server, "fight-night").await;
    assert_eq!(window, Some(1_000));

    const DEVICES: usize = 12;
    let mut devices = Vec::new();
    for n in 0..DEVICES {
        let mut device = server.device_named(&format!("fan-{n}")).await;
        subscribe(&mut device, &[(event.topic(), upcoming)]).await;
        devices.push(device);
    }
    // The control plane counts subscribers from the same stats the admin API serves.
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    loop {
        let stats = server.admin().stats().await.unwrap();
        let subscribers = stats
            .topics
            .iter()
            .find(|t| t.topic == event.topic())
            .map_or(0, |t| t.subscribers);
        if subscribers == DEVICES as u64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats show {subscribers} subscribers"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let live = publish_body(&server, "fight-night", r#"{"stage":"LIVE"}"#).await;
    assert_eq!(live.status, 200, "{}", live.text());
    let mut live_version = None;
    for device in &mut devices {
        let state = next_state(device).await;
        assert!(state.version > upcoming);
        assert_eq!(state.fetch_within_ms, Some(2_400));
        live_version = Some(state.version);
    }
    assert_eq!(
        graphql_state(&server, "fight-night").await,
        (live_version.unwrap(), Some(2_400))
    );

    // The operator's value still wins over the default.
    let set = publish_body(
        &server,
        "fight-night",
        r#"{"stage":"ENDED","fetch_within_ms":50}"#,
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text());
    for device in &mut devices {
        assert_eq!(next_state(device).await.fetch_within_ms, Some(50));
    }
    server.stop().await;
}

#[tokio::test]
async fn with_the_default_off_a_state_carries_no_window() {
    let server = TestServer::start_with_config(|config| {
        config.fetch_window.max_window = std::time::Duration::ZERO;
    })
    .await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    let mut device = server.device().await;
    subscribe(&mut device, &[(event.topic(), 0)]).await;
    let published = publish_body(&server, "fight-night", r#"{"stage":"LIVE"}"#).await;
    assert_eq!(published.status, 200, "{}", published.text());
    let state = next_state(&mut device).await;
    assert_eq!(state.fetch_within_ms, None);
    assert_eq!(
        graphql_state(&server, "fight-night").await,
        (state.version, None)
    );
    server.stop().await;
}
