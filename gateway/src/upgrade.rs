//! `GET /v1/ws`: authentication and the WebSocket handshake.
//!
//! Everything that can refuse a connection runs before the `101 Switching Protocols`: a device
//! with a missing, malformed, badly signed or expired token gets `401` and a JSON error, a node
//! at capacity, draining, not caught up with the bus or over its upgrade admission rate gets
//! `503` with a jittered `Retry-After`, and a device that already holds its most connections
//! here gets `429` with `Retry-After`. The admission rate is charged after the token is
//! verified (a client without one cannot spend the node's budget) and before any WebSocket
//! work.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper_util::rt::TokioIo;
use ringside_broadcaster::Mailbox;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::socket::DeviceSocket;
use crate::tls::TlsSession;
use crate::{Gateway, GatewayError, session};

/// The device token from `?token=` or `Authorization: Bearer`.
fn presented_token<'a>(query: Option<&'a str>, headers: &'a HeaderMap) -> Option<&'a str> {
    let from_query = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("token="));
    from_query.or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(ringside_auth::bearer_token)
    })
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) async fn upgrade(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    match accept(&gateway, request) {
        Ok(response) => response,
        Err(error) => {
            gateway.metrics.upgrades_refused.of(&error).increment();
            tracing::debug!(%error, "upgrade refused");
            error.into_refusal(&gateway.retry_after())
        }
    }
}

fn accept(gateway: &Arc<Gateway>, mut request: Request) -> Result<Response, GatewayError> {
    let headers = request.headers();
    let token = presented_token(request.uri().query(), headers).unwrap_or_default();
    let claims = gateway.device_key.verify(token, unix_now_s())?;

    if !header_has_token(headers, header::CONNECTION, "upgrade")
        || !header_has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(GatewayError::NotUpgradable(
            "expected Connection: upgrade and Upgrade: websocket",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(GatewayError::NotUpgradable(
            "expected Sec-WebSocket-Version: 13",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(GatewayError::NotUpgradable("missing Sec-WebSocket-Key"));
    };
    let accept_key = derive_accept_key(key.as_bytes());

    if gateway.draining.load(Ordering::Acquire) {
        return Err(GatewayError::Draining);
    }
    if !gateway.hub.is_ready() {
        return Err(GatewayError::NotReady);
    }
    gateway.admit_upgrade()?;
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return Err(GatewayError::NotUpgradable("connection cannot be upgraded"));
    };

    let config = WebSocketConfig::default()
        .read_buffer_size(gateway.config.read_buffer_bytes)
        // Write every frame through at once: the mailbox keeps whatever the socket does not take.
        .write_buffer_size(0)
        .max_write_buffer_size(gateway.config.max_frame_bytes.max(64 * 1024))
        .max_message_size(Some(gateway.config.max_frame_bytes))
        .max_frame_size(Some(gateway.config.max_frame_bytes));
    let backlog_limit = gateway.config.max_frame_bytes.max(64 * 1024);
    let permit = gateway.try_admit(&claims.sub)?;
    let send_buffer_bytes = gateway.config.send_buffer_bytes;
    let opening = open(
        on_upgrade,
        config,
        backlog_limit,
        send_buffer_bytes,
        gateway.clone(),
    );
    // The opening's state and the session's never sit side by side in the task: `then` holds
    // one, then the other.
    gateway
        .sessions
        .spawn(opening.then(move |opened| match opened {
            Some((socket, mailbox)) => Either::Left(session::run(permit, socket, mailbox, &claims)),
            None => Either::Right(std::future::ready(())),
        }));

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key)
            .unwrap_or_else(|_| unreachable!("base64 is a valid header")),
    );
    Ok(response)
}

/// Completes the upgrade and wraps the socket for the session; `None` when the connection went
/// away first.
async fn open(
    on_upgrade: hyper::upgrade::OnUpgrade,
    config: WebSocketConfig,
    backlog_limit: usize,
    send_buffer_bytes: usize,
    gateway: Arc<Gateway>,
) -> Option<(session::Socket, Arc<Mailbox>)> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "upgrade did not complete");
            return None;
        }
    };
    // The session needs the TCP socket itself (over TLS, with its TLS session): the fan-out
    // writes to it directly. Frames the device sent right behind its upgrade request were read
    // with the request; they are copied out, so that the HTTP read buffer they sit in is freed
    // now.
    let (stream, tls, early_frames) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (parts.io.into_inner(), None, parts.read_buf.to_vec()),
        Err(upgraded) => {
            let Ok(parts) = upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() else {
                tracing::error!("upgraded connection is neither TCP nor TLS over TCP; closed");
                return None;
            };
            let (stream, tls) = parts.io.into_inner().into_inner();
            (stream, Some(tls), parts.read_buf.to_vec())
        }
    };
    limit_send_buffer(&stream, send_buffer_bytes);
    let (mut socket, mailbox) = match tls {
        None => DeviceSocket::new(stream, backlog_limit, gateway),
        Some(tls) => DeviceSocket::tls(TlsSession::new(stream, tls), backlog_limit, gateway),
    };
    socket.charge_inbound(early_frames.len());
    let socket =
        WebSocketStream::from_partially_read(socket, early_frames, Role::Server, Some(config))
            .await;
    Some((socket, mailbox))
}

/// Caps the kernel's send buffer of a device socket (0 keeps autotuning). Conflation starts
/// only once the socket refuses a write: with an autotuned buffer of megabytes, a device that
/// stops reading would first be sent megabytes of states that are superseded by the time it
/// reads them, and every stalled socket would pin that much kernel memory.
fn limit_send_buffer(stream: &TcpStream, bytes: usize) {
    if bytes == 0 {
        return;
    }
    if let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(bytes) {
        // Not fatal: the connection works as before, with the kernel's buffer.
        tracing::debug!(%error, "cannot set SO_SNDBUF");
    }
}
