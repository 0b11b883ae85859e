//! The watcher against a real local HTTP server that refuses every WebSocket upgrade: it must
//! stay away at least as long as the server's `Retry-After` asks, measured from the moments the
//! server saw its attempts.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ringside_client::watcher::WatchEvent;
use ringside_client::{ClientError, DeviceConnection, Watcher, WatcherConfig};
use ringside_protocol::Topic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Answers every connection `503` with `Retry-After: <seconds>` once its request head arrived,
/// and reports the instant each attempt reached it.
async fn refusing_server(retry_after_s: u64) -> (String, mpsc::UnboundedReceiver<Instant>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let (attempts, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = attempts.send(Instant::now());
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let body = r#"{"error":{"code":"overloaded","message":"try later"}}"#;
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nretry-after: {retry_after_s}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, seen)
}

#[tokio::test]
async fn a_refused_upgrade_surfaces_its_status_and_retry_after() {
    let (url, _seen) = refusing_server(2).await;
    let options = ringside_client::ConnectOptions::default();
    match DeviceConnection::try_connect(&url, "any-token", &options).await {
        Err(failure) => {
            assert_eq!(failure.status(), Some(503));
            assert_eq!(failure.retry_after, Some(Duration::from_secs(2)));
            assert!(!failure.error.is_permanent(), "a 503 is worth retrying");
            let ClientError::Refused { body, .. } = failure.error else {
                panic!("expected a refusal, got {:?}", failure.error)
            };
            assert!(body.contains("overloaded"), "{body}");
        }
        Ok(_) => panic!("the server refuses every upgrade"),
    }
    // The plain connect reports the same refusal, without the hint.
    assert!(matches!(
        DeviceConnection::connect(&url, "any-token").await,
        Err(ClientError::Refused { status: 503, .. })
    ));
}

#[tokio::test]
async fn the_watcher_waits_at_least_the_retry_after_before_its_next_attempt() {
    let (url, mut seen) = refusing_server(2).await;
    let mut config = WatcherConfig::new(
        vec![url],
        "any-token".into(),
        vec![Topic::parse("event:refused").unwrap()],
    );
    // A backoff far below the Retry-After: only the server's hint can explain the gap.
    config.initial_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    let mut watcher = Watcher::new(config);
    let mut attempts = Vec::new();
    for _ in 0..3 {
        match watcher.next().await {
            WatchEvent::Disconnected { reason, retry_in } => {
                assert!(reason.contains("503"), "{reason}");
                assert!(retry_in >= Duration::from_secs(2), "{retry_in:?}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        attempts.push(seen.recv().await.unwrap());
    }
    for pair in attempts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_secs(2),
            "the next attempt came {gap:?} after a refusal with Retry-After: 2"
        );
    }
}
