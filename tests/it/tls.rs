//! TLS in process over real connections: one port serves `https://` (health, the admin API,
//! GraphQL) and `wss://` devices through the Rust client, which trusts a private CA; the
//! fan-out's states reach devices through their TLS sessions, in order, also to a device that
//! does not read for a while; a plain-HTTP client gets no answer; `SIGHUP` reloads the
//! certificate for new handshakes while open connections keep theirs.

use ringside::tls::TlsFiles;
use ringside_protocol::ServerFrame;

use crate::support::pki::leaf;
use crate::support::*;

async fn tls_server(files: TlsFiles) -> TestServer {
    TestServer::start_with_http(|http| http.tls = Some(files)).await
}

/// The leaf certificate a new handshake with `server` is shown.
async fn presented_certificate(server: &TestServer) -> Vec<u8> {
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(ringside_client::tls::client_config().unwrap());
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Reads states of `topic` until `version`; the versions seen, in order.
async fn states_until(device: &mut ringside_client::DeviceConnection, version: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&version) {
        match next_frame(device).await {
            ServerFrame::State(state) => seen.push(state.version),
            ServerFrame::Subscribed { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn one_tls_port_serves_https_and_wss_and_the_fan_out_reaches_devices_through_their_sessions()
{
    let (files, _) = leaf("serve");
    let server = tls_server(files).await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let id = server.create_event("tls-event").await;
    let topic = topic(&id);

    let mut reader = server.device_named("reader").await;
    subscribe(&mut reader, &[(topic.clone(), 0)]).await;
    // Subscribed, then not read while the states go out: its socket fills and its mailbox
    // conflates, through the TLS session.
    let options = ringside_client::ConnectOptions {
        receive_buffer_bytes: Some(4096),
        ..ringside_client::ConnectOptions::default()
    };
    let mut stalled = ringside_client::DeviceConnection::connect_with(
        &server.ws_url,
        &device_token("stalled", 3600),
        &options,
    )
    .await
    .unwrap();
    subscribe(&mut stalled, &[(topic.clone(), 0)]).await;

    let payload = format!(r#"{{"filler":"{}"}}"#, "x".repeat(2_000));
    let mut last = 0;
    for i in 0..300 {
        let stage = if i % 2 == 0 { "LIVE" } else { "UPCOMING" };
        last = server.publish(&id, stage, &payload).await.version;
    }
    let mut counts = Vec::new();
    for (name, device) in [("reader", &mut reader), ("stalled", &mut stalled)] {
        let seen = states_until(device, last).await;
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "{name}: versions went back: {seen:?}"
        );
        counts.push(seen.len());
    }
    // 600 KB of states do not fit the stalled device's buffers (16 KiB to send, 4 KiB to
    // receive): its mailbox conflated, and it still ended at the newest.
    assert!(counts[1] < 300, "nothing was conflated: {counts:?}");

    // GraphQL and the admin API over the same port.
    let token = device_token("tls-graphql", 3600);
    let (response, body) = server
        .graphql(
            &token,
            serde_json::json!({ "query": "{ prefetch { profileId } }" }),
        )
        .await;
    assert_eq!(response.status, 200, "{body}");
    assert!(server.admin().stats().await.is_ok());

    // A client that speaks plain HTTP to the TLS port gets no HTTP answer.
    let plain = ringside_client::http::call_within(
        PROMPTLY,
        &format!("http://{}", server.addr),
        "GET",
        "/healthz",
        &[],
        None,
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_connections_keep_theirs() {
    let (files, first) = leaf("reload");
    let server = tls_server(files.clone()).await;
    assert_eq!(presented_certificate(&server).await, first);
    let id = server.create_event("reload-event").await;
    let mut device = server.device_named("before-reload").await;
    subscribe(&mut device, &[(topic(&id), 0)]).await;

    // New files in place, then SIGHUP to this process (the server runs in it).
    let (renewed, second) = leaf("renewed");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while presented_certificate(&server).await != second {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never presented"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The connection opened before the reload still gets the fan-out.
    let version = server
        .publish(&id, "LIVE", r#"{"after":"reload"}"#)
        .await
        .version;
    assert_eq!(
        states_until(&mut device, version).await.last(),
        Some(&version)
    );
}

/// `rediss://`: a node keeps its events in a Redis that speaks only TLS, trusting the private CA
/// (`RINGSIDE_CA_FILE`, here set for the process), and a restarted node reads them back.
#[tokio::test]
async fn a_node_keeps_its_events_in_a_redis_over_tls() {
    let (files, _) = leaf("redis");
    let redis = OwnRedis::start_tls(&files);
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let keys = RedisKeys {
        url: url.clone(),
        prefix: "tls-test:".into(),
    };
    let on_redis = |setup: &mut ringside::server::PrefetchSetup| setup.store = keys.store();
    let first = TestServer::start_with_prefetch(on_redis).await;
    let id = first.create_event("over-rediss").await;
    let receipt = first.publish(&id, "LIVE", r#"{"kept":"tls"}"#).await;
    first.stop().await;
    let second = TestServer::start_with_prefetch(on_redis).await;
    let listed = second.admin().list_events().await.unwrap();
    let kept = listed.iter().find(|event| event.id == id).expect("kept");
    assert_eq!(kept.version, receipt.version);
    // The same Redis without TLS is not reachable.
    assert!(
        ringside::content::connect_redis(&format!("redis://127.0.0.1:{}/0", redis.port))
            .await
            .is_err()
    );
}

/// A drain over TLS: the device is sent its goaway and a close frame through its TLS session
/// (`TlsWriter::poll_shutdown` sends close_notify after them), and the client reads the close,
/// not a reset.
#[tokio::test]
async fn a_drain_over_tls_ends_with_a_goaway_and_a_clean_close() {
    let (files, _) = leaf("drain");
    let server = tls_server(files).await;
    let mut device = server.device_named("drained").await;
    server.begin_stop();
    let (frames, code, reason) = read_until_close(&mut device).await;
    assert!(
        frames
            .iter()
            .any(|frame| matches!(frame, ServerFrame::Goaway { .. })),
        "{frames:?}"
    );
    assert_eq!(code, 1001, "{reason}");
    server.stop().await;
}
