//! Hostile rows: the admin API and the HTTP layer under every endpoint. Every answer is the
//! documented JSON error (`{"error":{"code":…}}`, or GraphQL's `errors[].extensions.code` on
//! `/graphql`) with its status, and a client that sends slowly cannot hold a connection.

use std::time::Duration;

use ringside_protocol::admin::ApiError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Bystander;
use crate::support::{ADMIN_TOKEN, PROMPTLY, TestServer};

/// One request and the answer it must get.
struct Row {
    name: &'static str,
    method: &'static str,
    path: String,
    admin: bool,
    body: Option<Vec<u8>>,
    status: u16,
    /// The `error.code` of the JSON body.
    code: &'static str,
}

fn row(
    name: &'static str,
    method: &'static str,
    path: &str,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        name,
        method,
        path: path.into(),
        admin: true,
        body: None,
        status,
        code,
    }
}

impl Row {
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn without_token(mut self) -> Self {
        self.admin = false;
        self
    }
}

fn create_body(id: &str, stages: &[String]) -> String {
    serde_json::json!({
        "id": id, "title": "t", "starts_at": "2026-12-01T20:00:00Z", "stages": stages,
    })
    .to_string()
}

fn rows() -> Vec<Row> {
    let stages = |n: usize| (0..n).map(|i| format!("S{i}")).collect::<Vec<_>>();
    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let publish = "/v1/admin/events/hostile/publish";
    vec![
        row("no token", "GET", "/v1/admin/events", 401, "unauthorized").without_token(),
        row(
            "wrong method without a token",
            "DELETE",
            "/v1/admin/events",
            401,
            "unauthorized",
        )
        .without_token(),
        row(
            "wrong method",
            "DELETE",
            "/v1/admin/events",
            405,
            "method_not_allowed",
        ),
        row(
            "wrong method on publish",
            "GET",
            publish,
            405,
            "method_not_allowed",
        ),
        row(
            "wrong method on an operational endpoint",
            "POST",
            "/healthz",
            405,
            "method_not_allowed",
        )
        .without_token(),
        row("unknown endpoint", "GET", "/v1/nowhere", 404, "not_found").without_token(),
        row(
            "unknown admin endpoint",
            "GET",
            "/v1/admin/nowhere",
            404,
            "not_found",
        ),
        row(
            "bad JSON",
            "POST",
            "/v1/admin/events",
            400,
            "invalid_request",
        )
        .body("{oops"),
        row(
            "wrong types",
            "POST",
            "/v1/admin/events",
            400,
            "invalid_request",
        )
        .body(r#"{"id":7,"title":[],"starts_at":null,"stages":{}}"#),
        row(
            "deeply nested JSON",
            "POST",
            "/v1/admin/events",
            400,
            "invalid_request",
        )
        .body(nested.clone()),
        row(
            "deeply nested payload",
            "POST",
            publish,
            400,
            "invalid_request",
        )
        .body(format!(r#"{{"stage":"LIVE","payload":{nested}}}"#)),
        row(
            "1 MB body",
            "POST",
            "/v1/admin/events",
            413,
            "payload_too_large",
        )
        .body(vec![b' '; 1024 * 1024]),
        row(
            "10,000 stages",
            "POST",
            "/v1/admin/events",
            413,
            "payload_too_large",
        )
        .body(create_body("many", &stages(10_000))),
        row(
            "33 stages",
            "POST",
            "/v1/admin/events",
            400,
            "invalid_request",
        )
        .body(create_body("many", &stages(33))),
        row("unknown stage", "POST", publish, 400, "invalid_request")
            .body(r#"{"stage":"HALFTIME"}"#),
        row(
            "stage of the wrong shape",
            "POST",
            publish,
            400,
            "invalid_request",
        )
        .body(r#"{"stage":"live!"}"#),
        row(
            "publish to an unknown event",
            "POST",
            "/v1/admin/events/nope/publish",
            404,
            "not_found",
        )
        .body(r#"{"stage":"LIVE"}"#),
        row(
            "path trick in an id",
            "GET",
            "/v1/admin/events/..%2F..%2Fetc",
            404,
            "not_found",
        ),
        row("dot-dot id", "GET", "/v1/admin/events/..", 404, "not_found"),
        row(
            "unicode id",
            "GET",
            "/v1/admin/events/%E2%9A%BD",
            404,
            "not_found",
        ),
        row(
            "bad percent-encoding in an id",
            "GET",
            "/v1/admin/events/%FF%FE",
            400,
            "invalid_request",
        ),
        row(
            "very long id",
            "GET",
            &format!("/v1/admin/events/{}", "a".repeat(4000)),
            404,
            "not_found",
        ),
        row(
            "publish with a very long id",
            "POST",
            &format!("/v1/admin/events/{}/publish", "a".repeat(4000)),
            404,
            "not_found",
        )
        .body(r#"{"stage":"LIVE"}"#),
        row(
            "create with a bad id",
            "POST",
            "/v1/admin/events",
            400,
            "invalid_request",
        )
        .body(create_body("../etc", &stages(1))),
    ]
}

async fn send(server: &TestServer, row: &Row) -> ringside_client::http::HttpResponse {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let headers: Vec<(&str, &str)> = if row.admin {
        vec![("authorization", bearer.as_str())]
    } else {
        Vec::new()
    };
    let call = ringside_client::http::call(
        &server.base,
        row.method,
        &row.path,
        &headers,
        row.body.clone(),
    );
    tokio::time::timeout(PROMPTLY, call)
        .await
        .unwrap_or_else(|_| panic!("row {:?}: no answer in time", row.name))
        .unwrap_or_else(|error| panic!("row {:?}: {error}", row.name))
}

#[tokio::test]
async fn every_bad_admin_request_gets_its_documented_error() {
    let server = TestServer::start().await;
    let mut bystander = Bystander::join(&server, "hostile").await;
    for row in rows() {
        let response = send(&server, &row).await;
        assert_eq!(
            response.status,
            row.status,
            "row {:?}: {}",
            row.name,
            response.text()
        );
        let error: ApiError = serde_json::from_slice(&response.body).unwrap_or_else(|_| {
            panic!("row {:?}: not a JSON error: {}", row.name, response.text())
        });
        let code = serde_json::to_value(error.error.code).unwrap();
        assert_eq!(
            code, row.code,
            "row {:?}: {}",
            row.name, error.error.message
        );
        bystander.assert_unharmed(&server, row.name).await;
    }
    server.stop().await;
}

/// Opens a raw connection and sends `head` (a request line and headers, without the blank
/// line's end when `complete` is false).
async fn raw(server: &TestServer, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads what the server answers until it closes the connection; `None` if it does neither
/// within `within`.
async fn answer_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&answer).into_owned())
}

/// Starts `count` requests whose bodies never finish arriving (a byte now and then).
async fn trickled_posts(
    server: &TestServer,
    path: &str,
    authorization: &str,
    count: usize,
) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..count {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             {authorization}content-length: 100000\r\n\r\n{{"
        );
        streams.push(raw(server, &head).await);
    }
    streams
}

#[tokio::test]
async fn slow_clients_cannot_hold_the_http_layer() {
    const PENDING: usize = 8;
    let server = TestServer::start_with_http(|http| {
        http.max_pending_connections = PENDING;
        http.header_read_timeout = Duration::from_millis(500);
        http.body_read_timeout = Duration::from_millis(500);
    })
    .await;
    let mut bystander = Bystander::join(&server, "slow").await;
    let admin = format!("authorization: Bearer {ADMIN_TOKEN}\r\n");

    // A body that never completes is answered 408 once the body read timeout has passed.
    let mut stream = trickled_posts(&server, "/v1/admin/events", &admin, 1)
        .await
        .remove(0);
    let answer = answer_within(&mut stream, PROMPTLY)
        .await
        .expect("an answer, then a close");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");

    // More trickled bodies than there are pending places, on both body-reading endpoints,
    // with and without tokens: the node still answers /healthz, upgrades and publishes.
    let mut held = trickled_posts(&server, "/v1/admin/events", &admin, PENDING).await;
    held.extend(trickled_posts(&server, "/graphql", "", PENDING).await);
    held.extend(trickled_posts(&server, "/v1/admin/events", "", PENDING).await);
    tokio::time::sleep(Duration::from_millis(700)).await;
    bystander.assert_unharmed(&server, "trickled bodies").await;
    let device = server.device_named("newcomer").await;
    drop(device);
    for mut stream in held {
        assert!(
            answer_within(&mut stream, PROMPTLY).await.is_some(),
            "a trickled request was not ended"
        );
    }

    // Headers larger than the bound: 431 and the connection closed, without growing the buffer.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let mut stream = raw(&server, &big).await;
    let answer = answer_within(&mut stream, PROMPTLY)
        .await
        .expect("an answer, then a close");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    bystander
        .assert_unharmed(&server, "oversized headers")
        .await;

    // Headers that never complete: the connection is closed after the header read timeout.
    let mut slowloris = raw(&server, "GET /healthz HTTP/1.1\r\nhost: x\r\n").await;
    assert!(answer_within(&mut slowloris, PROMPTLY).await.is_some());
    bystander
        .assert_unharmed(&server, "slowloris headers")
        .await;
    server.stop().await;
}
