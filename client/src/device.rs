//! One device connection over protocol v1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ringside_protocol::{ClientFrame, ServerFrame, SubscribeTopic, Topic};
use tokio::net::TcpSocket;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::ClientError;
use crate::tls::ClientStream;

/// How to open a connection.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Local source address (e.g. 127.0.0.2) so that many connections do not exhaust one
    /// address's ephemeral ports.
    pub bind: Option<IpAddr>,
    /// Read buffer per connection; small keeps big fleets cheap for the load generator.
    pub read_buffer_bytes: Option<usize>,
    /// The socket's kernel receive buffer (`SO_RCVBUF`; default: the kernel's, autotuned). A
    /// small one makes a device that stops reading look slow to the server soon.
    pub receive_buffer_bytes: Option<u32>,
    pub connect_timeout: Option<Duration>,
}

/// The `welcome` the server opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub connection_id: String,
    pub node: String,
    pub heartbeat_ms: u64,
}

/// Why [`DeviceConnection::try_connect`] could not open a connection.
#[derive(Debug)]
pub struct ConnectFailure {
    pub error: ClientError,
    /// The `Retry-After` of a refused upgrade (`503`, `429`) in its delay-seconds form, when
    /// the server sent one: the soonest it wants to see this client again.
    pub retry_after: Option<Duration>,
}

impl ConnectFailure {
    /// The HTTP status of a refused upgrade.
    pub fn status(&self) -> Option<u16> {
        match self.error {
            ClientError::Refused { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// An open connection to `/v1/ws`.
#[derive(Debug)]
pub struct DeviceConnection {
    socket: WebSocketStream<ClientStream>,
    pub welcome: Welcome,
}

/// `ws://host:port` (or `wss://`) plus the path, from a base URL such as `ws://127.0.0.1:8080`,
/// `http://127.0.0.1:8080` or `https://ringside.example.com`.
pub fn ws_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_owned()
    };
    if base.ends_with("/v1/ws") {
        base
    } else {
        format!("{base}/v1/ws")
    }
}

impl DeviceConnection {
    /// Connects to `url` (`ws://host:port/v1/ws`) with a device token and waits for `welcome`.
    pub async fn connect(url: &str, token: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, token, &ConnectOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        token: &str,
        options: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        Self::connect_noting_retry_after(url, token, options, &mut None).await
    }

    /// Like [`Self::connect_with`]; a refused upgrade also reports the server's `Retry-After`.
    pub async fn try_connect(
        url: &str,
        token: &str,
        options: &ConnectOptions,
    ) -> Result<Self, ConnectFailure> {
        let mut retry_after = None;
        Self::connect_noting_retry_after(url, token, options, &mut retry_after)
            .await
            .map_err(|error| ConnectFailure { error, retry_after })
    }

    async fn connect_noting_retry_after(
        url: &str,
        token: &str,
        options: &ConnectOptions,
        retry_after: &mut Option<Duration>,
    ) -> Result<Self, ClientError> {
        let separator = if url.contains('?') { '&' } else { '?' };
        let request = format!("{url}{separator}token={token}")
            .into_client_request()
            .map_err(|_| ClientError::InvalidAddress(url.to_owned()))?;
        let crate::http::Endpoint { tls, host, port } =
            crate::http::Endpoint::of(request.uri(), "ws", "wss", url)?;
        let address = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| ClientError::InvalidAddress(url.to_owned()))?
            .next()
            .ok_or_else(|| ClientError::InvalidAddress(url.to_owned()))?;
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(bind) = options.bind {
            socket.bind(SocketAddr::new(bind, 0))?;
        }
        if let Some(bytes) = options.receive_buffer_bytes {
            socket.set_recv_buffer_size(bytes)?;
        }
        let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(10));
        let stream = tokio::time::timeout(connect_timeout, socket.connect(address))
            .await
            .map_err(|_| ClientError::Timeout)??;
        stream.set_nodelay(true)?;
        let stream = tokio::time::timeout(connect_timeout, crate::tls::open(stream, tls, &host))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let mut config = WebSocketConfig::default();
        if let Some(bytes) = options.read_buffer_bytes {
            config = config.read_buffer_size(bytes).write_buffer_size(0);
        }
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        let (socket, _response) = match tokio::time::timeout(connect_timeout, handshake).await {
            Err(_) => return Err(ClientError::Timeout),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                *retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(crate::backoff::parse_retry_after);
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(ClientError::Refused { status, body });
            }
            Ok(Err(error)) => return Err(error.into()),
            Ok(Ok(connected)) => connected,
        };
        let mut connection = Self {
            socket,
            welcome: Welcome {
                connection_id: String::new(),
                node: String::new(),
                heartbeat_ms: 0,
            },
        };
        match connection.next_frame().await? {
            ServerFrame::Welcome {
                connection_id,
                node,
                heartbeat_ms,
                ..
            } => {
                connection.welcome = Welcome {
                    connection_id,
                    node,
                    heartbeat_ms,
                };
                Ok(connection)
            }
            other => Err(ClientError::Unexpected(format!("{other:?}"), "welcome")),
        }
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.socket
            .send(Message::Text(frame.encode().into()))
            .await?;
        Ok(())
    }

    /// Sends a raw message (for tests of bad input).
    pub async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        self.socket.send(message).await?;
        Ok(())
    }

    /// Subscribes to `topics` (each with the version already held) without waiting.
    pub async fn subscribe(&mut self, topics: &[(Topic, u64)]) -> Result<(), ClientError> {
        let topics = topics
            .iter()
            .map(|(topic, since)| SubscribeTopic {
                topic: topic.clone(),
                since: *since,
            })
            .collect();
        self.send(&ClientFrame::Subscribe { topics }).await
    }

    pub async fn ack(&mut self, topic: &Topic, version: u64) -> Result<(), ClientError> {
        self.send(&ClientFrame::Ack {
            topic: topic.clone(),
            version,
        })
        .await
    }

    /// The next protocol frame. Pings are answered by the WebSocket layer; a close frame ends
    /// the stream as [`ClientError::Closed`].
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            let message = self.socket.next().await.ok_or(ClientError::Closed {
                code: 1006,
                reason: "connection ended without a close frame".into(),
            })??;
            match message {
                Message::Text(text) => return Ok(ServerFrame::decode(&text)?),
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(ClientError::Closed { code, reason });
                }
                Message::Binary(_) => {
                    return Err(ClientError::Unexpected(
                        "a binary frame".into(),
                        "a text frame",
                    ));
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection cleanly.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.socket.close(None).await?;
        Ok(())
    }
}
