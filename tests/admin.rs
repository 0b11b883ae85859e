#![allow(clippy::unwrap_used)]
//! The admin API and the operational endpoints over real HTTP.

mod support;

use client::http::{HttpResponse, call};
use protocol::admin::{ApiError, ApiErrorCode, EventList, EventSummary};
use support::*;

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
    let receipt: protocol::admin::PublishReceipt = serde_json::from_slice(&published.body).unwrap();
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
