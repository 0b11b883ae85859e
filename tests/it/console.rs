//! The ops console's files, served by a real server from the files embedded in the binary.

use crate::support::*;
use ringside_client::http::{HttpResponse, call};
use ringside_protocol::admin::{ApiError, ApiErrorCode};

async fn get(server: &TestServer, path: &str) -> HttpResponse {
    call(&server.base, "GET", path, &[], None)
        .await
        .expect("HTTP call")
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> &'a str {
    response
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_console_and_its_files_are_served_with_their_types_and_a_strict_policy() {
    let server = TestServer::start().await;
    let page = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/console/index.html")).unwrap();
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/console.js", "text/javascript; charset=utf-8"),
        ("/console/api.js", "text/javascript; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let response = get(&server, path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(header(&response, "content-type"), content_type, "{path}");
        let policy = header(&response, "content-security-policy");
        assert!(policy.starts_with("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(header(&response, "cache-control"), "no-cache", "{path}");
        assert_eq!(header(&response, "x-content-type-options"), "nosniff");
        if content_type.starts_with("text/html") {
            assert_eq!(response.body.as_ref(), page.as_slice(), "{path}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_console_file_is_404_and_the_console_has_its_own_route_label() {
    let server = TestServer::start().await;
    for path in ["/console/x", "/console/../Cargo.toml", "/console/x/y.js"] {
        let response = get(&server, path).await;
        assert_eq!(response.status, 404, "{path}");
        let error: ApiError = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(error.error.code, ApiErrorCode::NotFound, "{path}");
    }
    assert_eq!(get(&server, "/consoles").await.status, 404);
    // Classified as the console, not as an unknown path.
    let metrics = get(&server, "/metrics").await.text();
    let admitted: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "ringside_protection_admitted_total{class=\"degraded\",route=\"console\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no console route in {metrics}"))
        .parse()
        .unwrap();
    assert!(admitted >= 3, "{admitted}");
    server.stop().await;
}
