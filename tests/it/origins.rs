//! The `Origin` allow-lists over real HTTP and WebSocket: a page of a listed web origin opens
//! the device socket and one of a listed console origin uses the admin API; the node's own
//! pages and clients without `Origin` pass; any other origin is refused `403 forbidden` before
//! the upgrade or the handler, and a refused write changes nothing.

use crate::support::*;

const APP: &str = "https://tv.example.com";
const OPS: &str = "https://ops.example.com";
const EVIL: &str = "https://evil.example.net";

async fn server() -> TestServer {
    TestServer::start_with_http(|http| {
        http.origins.web = vec![APP.into()];
        http.origins.console = vec![OPS.into()];
    })
    .await
}

/// The status of a device upgrade sent with `origin` (none: no header), and its body when
/// refused.
async fn upgrade(server: &TestServer, origin: Option<&str>) -> (u16, String) {
    let mut request = bearer_upgrade(server.addr, &device_token("origin", 3600));
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    match tokio_tungstenite::connect_async(request.body(()).unwrap()).await {
        Ok((_socket, response)) => (response.status().as_u16(), String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(error) => panic!("upgrade failed: {error}"),
    }
}

#[tokio::test]
async fn the_device_socket_opens_only_for_listed_and_own_origins() {
    let server = server().await;
    let own = server.base.clone();
    for origin in [None, Some(APP), Some(own.as_str())] {
        assert_eq!(upgrade(&server, origin).await.0, 101, "{origin:?}");
    }
    for origin in [EVIL, OPS, "null", "http://tv.example.com"] {
        let (status, body) = upgrade(&server, Some(origin)).await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains(r#""code":"forbidden""#), "{body}");
        assert!(body.contains("--web-origin"), "{body}");
    }
    // A refused page changed nothing for the rest: a device still connects.
    let _device = server.device_named("after").await;
}

#[tokio::test]
async fn admin_writes_from_another_origin_are_refused_and_change_nothing() {
    let server = server().await;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let create = |id: &str| {
        format!(
            r#"{{"id":"{id}","title":"T","starts_at":"2026-12-01T20:00:00Z","stages":["UPCOMING","LIVE"]}}"#
        )
    };
    let post = |origin: Option<&'static str>, id: &'static str| {
        let base = server.base.clone();
        let bearer = bearer.clone();
        let body = create(id);
        async move {
            let mut headers = vec![
                ("authorization", bearer.as_str()),
                ("content-type", "application/json"),
            ];
            if let Some(origin) = origin {
                headers.push(("origin", origin));
            }
            ringside_client::http::call(
                &base,
                "POST",
                "/v1/admin/events",
                &headers,
                Some(body.into_bytes()),
            )
            .await
            .unwrap()
        }
    };
    let refused = post(Some(EVIL), "forged").await;
    assert_eq!(refused.status, 403);
    let body = String::from_utf8_lossy(&refused.body);
    assert!(
        body.contains(r#""code":"forbidden""#) && body.contains("--console-origin"),
        "{body}"
    );
    // A web app's origin is not a console's.
    assert_eq!(post(Some(APP), "from-app").await.status, 403);
    for (origin, id) in [(None, "cli"), (Some(OPS), "from-ops")] {
        let created = post(origin, id).await;
        assert!(
            (200..300).contains(&created.status),
            "{origin:?}: {}",
            created.status
        );
    }
    let events: Vec<String> = server
        .admin()
        .list_events()
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.id.as_str().to_owned())
        .collect();
    assert!(events.contains(&"cli".to_owned()) && events.contains(&"from-ops".to_owned()));
    assert!(
        !events.iter().any(|id| id == "forged" || id == "from-app"),
        "{events:?}"
    );

    // The console's files: its own origin and a listed one pass, any other is refused.
    let own = server.base.clone();
    for (origin, status) in [(own.as_str(), 200), (OPS, 200), (EVIL, 403)] {
        let answer = ringside_client::http::call(
            &server.base,
            "GET",
            "/console",
            &[("origin", origin)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(answer.status, status, "{origin}");
    }
    // /graphql is CORS's, not this layer's: no 403 for any origin.
    let answer = ringside_client::http::call(
        &server.base,
        "POST",
        "/graphql",
        &[
            ("origin", EVIL),
            ("content-type", "application/json"),
            (
                "authorization",
                &format!("Bearer {}", device_token("g", 3600)),
            ),
        ],
        Some(br#"{"query":"{ prefetch { profileId } }"}"#.to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
}
