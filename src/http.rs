//! The HTTP server under every endpoint: our own accept loop on hyper, so that each limit is
//! explicit.
//!
//! - At most `max_pending_connections` HTTP connections (requests in flight and WebSocket
//!   handshakes not yet upgraded) at once. When full, the loop stops accepting and new
//!   connections wait in the kernel's listen backlog: a reconnect storm is admitted at the pace
//!   the node can take it instead of all at once. Upgraded WebSocket connections leave this
//!   budget; the gateway's own `max_connections` bounds them.
//! - A header read timeout, so that a client cannot hold a connection by sending a request
//!   slowly (or not at all).
//! - A graceful shutdown bounded by the grace period: in-flight requests finish, idle
//!   keep-alive connections close, and anything left after the grace is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_pending_connections: usize,
    pub header_read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_pending_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// After an `accept` error (typically out of file descriptors), wait this long before the next
/// attempt instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `router` on `listener` until `shutdown`, then drains HTTP connections for at most
/// `grace`. Returns whether the drain finished in time.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool {
    let connections = TaskTracker::new();
    let pending = Arc::new(Semaphore::new(config.max_pending_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = pending.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Finish the request in flight, then close; idle connections close now.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    match tokio::time::timeout(grace, connections.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!("HTTP connections still open after the grace period; dropping them");
            false
        }
    }
}
