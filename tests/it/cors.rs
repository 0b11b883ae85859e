//! CORS for `/graphql` over real HTTP: a web app on an allowed origin gets its preflight
//! answered and its responses readable, protection's refusals included; any other origin, and
//! every other route, gets no CORS header; a server without origins configured sends none.

use crate::support::*;
use serde_json::json;

const APP: &str = "https://tv.example.com";

async fn server_allowing(origins: &[&str]) -> TestServer {
    let origins: Vec<String> = origins.iter().map(|origin| (*origin).to_owned()).collect();
    TestServer::start_with_http(|http| http.origins.web = origins).await
}

async fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> ringside_client::http::HttpResponse {
    ringside_client::http::call(&server.base, method, path, headers, body)
        .await
        .unwrap()
}

fn header<'a>(response: &'a ringside_client::http::HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .get(name)
        .map(|value| value.to_str().unwrap())
}

fn preflight<'a>(origin: &'a str, method: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("origin", origin),
        ("access-control-request-method", method),
        (
            "access-control-request-headers",
            "authorization,content-type,x-ringside-priority",
        ),
    ]
}

#[tokio::test]
async fn an_allowed_origin_gets_its_preflight_answered_and_its_responses_readable() {
    let server = server_allowing(&[APP, "http://127.0.0.1:5173"]).await;
    for method in ["GET", "POST"] {
        let response = call(
            &server,
            "OPTIONS",
            "/graphql",
            &preflight(APP, method),
            None,
        )
        .await;
        assert!(
            (200..300).contains(&response.status),
            "{method}: {}",
            response.status
        );
        assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
        let methods = header(&response, "access-control-allow-methods").unwrap();
        assert!(
            methods.contains("GET") && methods.contains("POST"),
            "{methods}"
        );
        let allowed = header(&response, "access-control-allow-headers").unwrap();
        for name in ["authorization", "content-type", "x-ringside-priority"] {
            assert!(allowed.contains(name), "{name} missing from {allowed}");
        }
        assert!(header(&response, "vary").unwrap().contains("origin"));
        assert!(header(&response, "access-control-max-age").is_some());
    }

    // The request itself: the origin is echoed, Vary names it, Retry-After is readable.
    let token = profile_token("web-1", "p000001", 3600);
    let bearer = format!("Bearer {token}");
    let body = serde_json::to_vec(&json!({ "query": "{ prefetch { profileId } }" })).unwrap();
    let response = call(
        &server,
        "POST",
        "/graphql",
        &[
            ("origin", APP),
            ("authorization", &bearer),
            ("content-type", "application/json"),
            ("x-ringside-priority", "best_effort"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    assert!(header(&response, "vary").unwrap().contains("origin"));
    assert!(
        header(&response, "access-control-expose-headers")
            .unwrap()
            .contains("retry-after")
    );
    // An answer that is an error is readable too (the app sees the 401 and its code).
    let response = call(
        &server,
        "GET",
        "/graphql?query=%7B__typename%7D",
        &[("origin", APP)],
        None,
    )
    .await;
    assert_eq!(response.status, 401);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    // Only /graphql: the admin API stays same-origin.
    let response = call(&server, "GET", "/v1/admin/events", &[("origin", APP)], None).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    // An OPTIONS without an Origin (no browser sent it) carries no CORS header.
    let response = call(&server, "OPTIONS", "/graphql", &[], None).await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    server.stop().await;
}

#[tokio::test]
async fn answers_of_the_layers_in_front_of_graphql_are_readable_too() {
    // Protection refuses a bad priority header before the GraphQL handler runs, as it sheds an
    // overloaded request: the page on an allowed origin must be able to read that answer.
    let server = server_allowing(&[APP]).await;
    let response = call(
        &server,
        "POST",
        "/graphql",
        &[("origin", APP), ("x-ringside-priority", "urgent")],
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(response.status, 400);
    assert_eq!(header(&response, "access-control-allow-origin"), Some(APP));
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_REQUEST");
    // The admin API gets no CORS: a web app's page is refused it by its origin, before
    // protection reads the header.
    let response = call(
        &server,
        "GET",
        "/v1/admin/events",
        &[("origin", APP), ("x-ringside-priority", "urgent")],
        None,
    )
    .await;
    assert_eq!(response.status, 403);
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    server.stop().await;
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_header() {
    let server = server_allowing(&[APP]).await;
    for origin in [
        "https://evil.example.com",
        "https://tv.example.com.evil.com",
        "null",
    ] {
        let response = call(
            &server,
            "OPTIONS",
            "/graphql",
            &preflight(origin, "POST"),
            None,
        )
        .await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        let response = call(
            &server,
            "GET",
            "/graphql?query=%7B__typename%7D",
            &[("origin", origin)],
            None,
        )
        .await;
        assert_eq!(
            header(&response, "access-control-allow-origin"),
            None,
            "{origin}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn without_origins_configured_no_cors_header_is_ever_sent() {
    let server = TestServer::start().await;
    let response = call(
        &server,
        "OPTIONS",
        "/graphql",
        &preflight(APP, "POST"),
        None,
    )
    .await;
    assert_eq!(response.status, 405, "the preflight is not answered");
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    let response = call(
        &server,
        "GET",
        "/graphql?query=%7B__typename%7D",
        &[("origin", APP)],
        None,
    )
    .await;
    assert_eq!(header(&response, "access-control-allow-origin"), None);
    assert_eq!(header(&response, "vary"), None);
    server.stop().await;
}
