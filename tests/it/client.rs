//! The Rust client's watcher against a real node that refuses it: it must not come back before
//! the node's `Retry-After`.

use std::time::Duration;

use crate::support::*;
use ringside_client::watcher::WatchEvent;
use ringside_client::{Watcher, WatcherConfig};
use tokio::time::Instant;

#[tokio::test]
async fn the_watcher_stays_away_from_a_full_node_as_long_as_its_retry_after() {
    let server = TestServer::start_with(|config| config.max_connections = 1).await;
    let event = ringside_protocol::EventId::parse("fight-night").unwrap();
    let holder = server.device_named("holder").await;

    let mut config = WatcherConfig::new(
        vec![server.ws_url.clone()],
        device_token("watcher", 3600),
        vec![event.topic()],
    );
    // A backoff of milliseconds: only the node's hint can keep the watcher away for seconds.
    config.initial_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(5);
    let mut watcher = Watcher::new(config);
    let retry_in = match tokio::time::timeout(PROMPTLY, watcher.next())
        .await
        .unwrap()
    {
        WatchEvent::Disconnected { reason, retry_in } => {
            assert!(reason.contains("503"), "{reason}");
            retry_in
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    let refused_at = Instant::now();
    assert!(
        retry_in >= Duration::from_secs(1),
        "the node's Retry-After is whole seconds, at least 1: {retry_in:?}"
    );

    // The place is free at once, but the watcher waits out the hint before trying again.
    holder.close().await.unwrap();
    let connected = tokio::time::timeout(retry_in + PROMPTLY, async {
        loop {
            match watcher.next().await {
                WatchEvent::Connected { .. } => return Instant::now(),
                WatchEvent::Disconnected { .. } => {}
                other => panic!("expected a connection, got {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        connected - refused_at >= retry_in,
        "reconnected {:?} after a refusal that asked for {retry_in:?}",
        connected - refused_at
    );
    server.stop().await;
}
