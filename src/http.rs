//! The HTTP server under every endpoint: our own accept loop on hyper, so that each limit is
//! explicit.
//!
//! - At most `max_pending_connections` HTTP connections (requests in flight and WebSocket
//!   handshakes not yet upgraded) at once. When full, the loop stops accepting and new
//!   connections wait in the kernel's listen backlog: a reconnect storm is admitted at the pace
//!   the node can take it instead of all at once. Upgraded WebSocket connections leave this
//!   budget; the gateway's own `max_connections` bounds them.
//! - The queues in front of protection's concurrency limit are exactly these two, both
//!   bounded. The pending-connection budget: overflow waits in the backlog (nothing is read
//!   from a connection the loop has not accepted). The kernel's listen backlog (tokio's
//!   default of 1024, capped by `net.core.somaxconn`): overflow is the kernel's, it drops or
//!   refuses new SYNs and the client's TCP retries them with its own backoff. Once accepted, a
//!   request is never queued again: the protection layer ([`serve_http_protected`]) admits it
//!   under the limit or answers `503` at once.
//! - A header read timeout, so that a client cannot hold a connection by sending a request
//!   slowly (or not at all), and a body read timeout for the same reason: a request whose body
//!   has not arrived whole in time is answered `408` and its connection closed. Handlers check
//!   credentials before they read a body, so a client without them is refused at once.
//! - A graceful shutdown bounded by the grace period: in-flight requests finish, idle
//!   keep-alive connections close, and anything left after the grace is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper::body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ringside_protection::{PaceLayer, Protection, ProtectionConfig};
use ringside_protocol::admin::{ApiError, ApiErrorCode};
use ringside_telemetry::{LogBudget, Registry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer as _;

use crate::origin::{OriginPolicy, check_origin};
use crate::tls::{ServerTls, TlsFiles};

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// HTTP connections not yet upgraded, at once (default 4096); beyond it new connections
    /// wait in the kernel's listen backlog.
    pub max_pending_connections: usize,
    /// Time a client has to send a request's headers (default 10 s); also closes idle
    /// keep-alive connections.
    pub header_read_timeout: Duration,
    /// Time a client has, from the end of its headers, to send the whole body (default 10 s):
    /// a body trickled byte by byte cannot hold a connection and its pending place longer.
    pub body_read_timeout: Duration,
    /// Largest request line and headers together, in bytes (default 64 KiB, at least 8 KiB):
    /// hyper's read buffer grows to this while it reads them, for every pending connection.
    /// Beyond it hyper answers `431` and closes the connection.
    pub max_request_head_bytes: usize,
    /// Smallest response body compressed (gzip or brotli, as `Accept-Encoding` asks), in bytes
    /// (default 1024; 0: never compress). Smaller bodies fit a packet or two as they are, and
    /// compressing them costs more than it saves.
    pub compression_min_bytes: u16,
    /// Classification, the adaptive concurrency limit, shedding and the ruleset of every
    /// request behind this HTTP layer (docs/OPERATIONS.md, "Protection").
    pub protection: ProtectionConfig,
    /// The web and console origins whose pages may make browser requests besides the node's
    /// own (default none; [`crate::origin`]).
    pub origins: OriginPolicy,
    /// Serve TLS (`https://`, `wss://`) with this certificate and key (default none: plain
    /// TCP; [`crate::tls`]). The handshake must finish within the header read timeout, which
    /// then starts again for the request's headers.
    pub tls: Option<TlsFiles>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_pending_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_request_head_bytes: 64 * 1024,
            compression_min_bytes: 1024,
            protection: ProtectionConfig::default(),
            origins: OriginPolicy::default(),
            tls: None,
        }
    }
}

impl HttpConfig {
    /// Checks every bound; runs before the listener serves.
    pub fn validate(&self) -> anyhow::Result<()> {
        const HOUR: Duration = Duration::from_secs(3600);
        if self.max_pending_connections == 0 || self.max_pending_connections > 1 << 20 {
            anyhow::bail!("max_pending_connections must be 1 to 1048576");
        }
        if !(REQUEST_HEAD_MIN_BYTES..=1 << 20).contains(&self.max_request_head_bytes) {
            anyhow::bail!("max_request_head_bytes must be 8192 to 1048576");
        }
        for (name, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if value < Duration::from_millis(10) || value > HOUR {
                anyhow::bail!("{name} must be between 10 ms and one hour");
            }
        }
        self.protection.validate()?;
        self.origins.validate()?;
        if let Some(files) = &self.tls {
            files.load()?;
        }
        Ok(())
    }
}

/// hyper's smallest read buffer; `max_request_head_bytes` may not go below it.
const REQUEST_HEAD_MIN_BYTES: usize = 8192;

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
    let router = router.layer(middleware::from_fn_with_state(
        config.body_read_timeout,
        bound_body_read,
    ));
    let router = with_origin_check(router, &config.origins);
    let accept_errors = LogBudget::new(
        &Registry::new(),
        "http_accept",
        ACCEPT_ERROR_LOG_LINES_PER_S,
    );
    // Nothing sheds here, so nothing paces.
    let pace = PaceLayer::default();
    accept_loop(
        listener,
        router,
        pace,
        config,
        accept_errors,
        shutdown,
        grace,
    )
    .await
}

/// [`serve_http`] with protection's layer around every route, outside the body read bound: a
/// request is classified and admitted or shed before anything else runs (a shed request costs
/// no timer and no body wrapper), and its time in flight covers its body read. `/healthz` and
/// `/metrics` pass the layer unlimited. With `graphql_cors_origins`, `/graphql` passes a CORS
/// layer outside protection's, so that its shed answers are readable cross-origin too
/// ([`ringside_prefetch::http::with_graphql_cors`]).
#[allow(clippy::too_many_arguments)]
pub async fn serve_http_protected(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    protection: &Arc<Protection>,
    graphql_cors_origins: &[String],
    registry: &Registry,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool {
    let router = router
        .layer(middleware::from_fn_with_state(
            config.body_read_timeout,
            bound_body_read,
        ))
        .layer(compression(config.compression_min_bytes))
        .layer(protection.layer());
    // Outermost: a cross-site page's request costs no place under the limit.
    let router = with_origin_check(router, &config.origins);
    let router = ringside_prefetch::http::with_graphql_cors(router, graphql_cors_origins);
    let accept_errors = LogBudget::new(registry, "http_accept", ACCEPT_ERROR_LOG_LINES_PER_S);
    let pace = PaceLayer::for_protection(protection);
    accept_loop(
        listener,
        router,
        pace,
        config,
        accept_errors,
        shutdown,
        grace,
    )
    .await
}

/// `router` behind the `Origin` allow-lists ([`crate::origin`]).
fn with_origin_check(router: Router, origins: &OriginPolicy) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(origins.clone()),
        check_origin,
    ))
}

/// Response compression as `Accept-Encoding` asks (brotli, else gzip), for bodies of at least
/// `min_bytes` (none when 0). Quality 4 for both: per-request JSON wants speed (brotli's own
/// default, 11, costs tens of times more for a few per cent). The event stream (SSE), images and
/// bodies under the threshold pass as they are; `Content-Length` then gives way to chunks.
fn compression(
    min_bytes: u16,
) -> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{NotForContentType, Predicate as _, SizeAbove};
    use tower_http::compression::{CompressionLayer, CompressionLevel};
    let wanted = min_bytes > 0;
    CompressionLayer::new()
        .gzip(wanted)
        .br(wanted)
        .quality(CompressionLevel::Precise(4))
        .compress_when(
            SizeAbove::new(min_bytes.saturating_sub(1))
                .and(NotForContentType::GRPC)
                .and(NotForContentType::IMAGES)
                .and(NotForContentType::SSE),
        )
}

/// Accept errors (out of file descriptors, typically) logged per second; the rest are counted.
const ACCEPT_ERROR_LOG_LINES_PER_S: u32 = 1;

async fn accept_loop(
    listener: TcpListener,
    router: Router,
    pace: PaceLayer,
    config: HttpConfig,
    accept_errors: LogBudget,
    shutdown: CancellationToken,
    grace: Duration,
) -> bool {
    let tls = match &config.tls {
        None => None,
        Some(files) => match ServerTls::new(files) {
            Ok(tls) => {
                // Listening for SIGHUP from before the first connection: its default action
                // would end the process.
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    Ok(hangups) => {
                        tokio::spawn(tls.clone().reload_on(hangups, shutdown.clone()));
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for SIGHUP: TLS files are not reloaded");
                    }
                }
                Some(tls)
            }
            Err(error) => {
                // Checked by `HttpConfig::validate` before the listener was bound: only a file
                // changed since then gets here.
                tracing::error!(
                    error = format!("{error:#}"),
                    "TLS files do not load; not serving"
                );
                return true;
            }
        },
    };
    let connections = TaskTracker::new();
    let pending = Arc::new(Semaphore::new(config.max_pending_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_request_head_bytes);
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
                    if accept_errors.allow() {
                        tracing::warn!(%error, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        // One pace per connection (protection pauses a connection whose request it shed).
        let service = TowerToHyperService::new(pace.layer(router.clone()));
        let shutdown = shutdown.clone();
        let (builder, tls) = (builder.clone(), tls.clone());
        let handshake_timeout = config.header_read_timeout;
        connections.spawn(async move {
            match tls {
                None => serve_connection(&builder, stream, service, &shutdown).await,
                Some(tls) => {
                    // The handshake holds a pending place and is bounded like a request's
                    // headers, so that a client cannot hold either by stalling it.
                    let accepted = tokio::select! {
                        () = shutdown.cancelled() => return,
                        accepted = tokio::time::timeout(
                            handshake_timeout,
                            tls.acceptor().accept(stream),
                        ) => accepted,
                    };
                    match accepted {
                        Ok(Ok(stream)) => {
                            serve_connection(&builder, stream, service, &shutdown).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
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

/// The service each connection runs: the router behind its pace.
type PacedRouter = ringside_protection::PaceService<Router>;

/// Serves one HTTP/1.1 connection (plain or TLS) with upgrades, until it ends; on `shutdown`
/// the request in flight finishes and the connection closes.
async fn serve_connection<I>(
    builder: &http1::Builder,
    io: I,
    service: TowerToHyperService<PacedRouter>,
    shutdown: &CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
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
}

/// The layer under every route that bounds the time to read a request body. The handler runs
/// as usual and reads the body when it wants (after checking credentials); if the body has
/// not been read to its end when the timeout passes, the handler is dropped and the client is
/// answered `408` with the connection closed. A handler that has read its body may take as
/// long as it needs (a publish waits for the bus).
async fn bound_body_read(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let finished = Arc::new(AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let graphql = parts.uri.path().starts_with("/graphql");
    let body = Body::new(WatchedBody {
        inner: body,
        finished: finished.clone(),
    });
    let response = next.run(Request::from_parts(parts, body));
    tokio::pin!(response);
    tokio::select! {
        // A handler that answers at the deadline's instant keeps its answer.
        biased;
        response = &mut response => return response,
        () = tokio::time::sleep(timeout) => {}
    }
    if finished.load(Ordering::Acquire) {
        return response.await;
    }
    body_timeout_response(graphql, timeout)
}

fn body_timeout_response(graphql: bool, timeout: Duration) -> Response {
    let message = format!(
        "the request body did not arrive within {} ms",
        timeout.as_millis()
    );
    let mut response = if graphql {
        let body = serde_json::json!({
            "errors": [{ "message": message, "extensions": { "code": "REQUEST_TIMEOUT" } }]
        });
        (StatusCode::REQUEST_TIMEOUT, axum::Json(body)).into_response()
    } else {
        let error = ApiError::new(ApiErrorCode::RequestTimeout, message);
        (StatusCode::REQUEST_TIMEOUT, axum::Json(error)).into_response()
    };
    // The rest of the body may still be on its way: the connection cannot carry another request.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that notes when it has been read to its end.
struct WatchedBody {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_out_of_range_bounds_do_not() {
        assert!(HttpConfig::default().validate().is_ok());
        let broken: [fn(&mut HttpConfig); 6] = [
            |c| c.max_pending_connections = 0,
            |c| c.header_read_timeout = Duration::ZERO,
            |c| c.body_read_timeout = Duration::from_secs(7200),
            |c| c.max_request_head_bytes = 4096,
            |c| c.max_request_head_bytes = 2 << 20,
            |c| c.protection.min_limit = 0,
        ];
        for breaking in broken {
            let mut config = HttpConfig::default();
            breaking(&mut config);
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
