//! Peers measured with the same tool in the same run: their device side (what a worker's
//! connection speaks) and their publish side (what the coordinator sends).
//!
//! NATS: devices use the WebSocket listener (`CONNECT`, `SUB`, then `MSG` operations, answering
//! the server's `PING`s); the coordinator publishes over the plain TCP protocol. Each message's
//! payload is JSON with `version` and `published_at_ms`, so latency is measured exactly as for
//! Ringside's `state` frames.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The payload published to peers: what a Ringside `state` carries that latency needs, and a
/// filler of the same size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerMessage {
    pub version: u64,
    pub published_at_ms: u64,
    #[serde(default)]
    pub filler: String,
}

/// Opens a WebSocket from `bind` to `url`.
pub async fn connect_ws(
    url: &str,
    bind: Option<IpAddr>,
    read_buffer_bytes: usize,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let request = url.into_client_request()?;
    let host = request.uri().host().context("host")?.to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let address: SocketAddr = format!("{host}:{port}").parse()?;
    let socket = TcpSocket::new_v4()?;
    if let Some(bind) = bind {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(20), socket.connect(address)).await??;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

/// A NATS-over-WebSocket subscriber. `subscribed` is called once the server confirmed the
/// subscription; `on_message` for every message.
pub async fn nats_device(
    mut ws: WebSocketStream<TcpStream>,
    subject: &str,
    mut subscribed: impl FnMut(),
    mut on_message: impl FnMut(PeerMessage),
) -> anyhow::Result<()> {
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {subject} 1\r\nPING\r\n"
    );
    ws.send(Message::Binary(hello.into_bytes().into())).await?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut confirmed = false;
    while let Some(frame) = ws.next().await {
        match frame? {
            Message::Binary(bytes) => buffer.extend_from_slice(&bytes),
            Message::Text(text) => buffer.extend_from_slice(text.as_bytes()),
            Message::Close(_) => break,
            _ => continue,
        }
        // Parse every complete operation in the buffer.
        while let Some(line_end) = buffer.windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&buffer[..line_end])
                .unwrap_or_default()
                .to_owned();
            if let Some(rest) = line.strip_prefix("MSG ") {
                let size: usize = rest
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("MSG size")?;
                let payload_start = line_end + 2;
                if buffer.len() < payload_start + size + 2 {
                    break; // wait for the rest of the payload
                }
                if let Ok(message) =
                    serde_json::from_slice(&buffer[payload_start..payload_start + size])
                {
                    on_message(message);
                }
                buffer.drain(..payload_start + size + 2);
                continue;
            }
            buffer.drain(..line_end + 2);
            if line == "PING" {
                ws.send(Message::Binary(b"PONG\r\n".to_vec().into()))
                    .await?;
            } else if line == "PONG" && !confirmed {
                confirmed = true;
                subscribed();
            } else if line.starts_with("-ERR") {
                bail!("NATS error: {line}");
            }
        }
    }
    Ok(())
}

/// Publishes to NATS over its TCP protocol.
#[derive(Debug)]
pub struct NatsPublisher {
    stream: BufReader<TcpStream>,
}

impl NatsPublisher {
    pub async fn connect(address: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("NATS at {address}"))?;
        stream.set_nodelay(true)?;
        let mut stream = BufReader::new(stream);
        let mut info = String::new();
        stream.read_line(&mut info).await?;
        if !info.starts_with("INFO") {
            bail!("not a NATS server: {info}");
        }
        stream
            .get_mut()
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .await?;
        Ok(Self { stream })
    }

    /// Publishes `version` with a filler and waits for the server to have processed it (a
    /// `PING` answered with `PONG` follows it).
    pub async fn publish(
        &mut self,
        subject: &str,
        version: u64,
        filler: &str,
    ) -> anyhow::Result<u64> {
        let message = PeerMessage {
            version,
            published_at_ms: protocol::unix_now_ms(),
            filler: filler.to_owned(),
        };
        let payload = serde_json::to_vec(&message)?;
        let mut frame = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\nPING\r\n");
        self.stream.get_mut().write_all(&frame).await?;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                bail!("NATS closed the connection");
            }
            match line.trim_end() {
                "PONG" => return Ok(message.published_at_ms),
                "PING" => self.stream.get_mut().write_all(b"PONG\r\n").await?,
                other if other.starts_with("-ERR") => bail!("NATS error: {other}"),
                _ => {}
            }
        }
    }
}
