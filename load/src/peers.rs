//! Peers measured with the same tool in the same run: their device side (what a worker's
//! connection speaks) and their publish side (what the coordinator sends).
//!
//! Every peer message's payload is JSON with `version` and `published_at_ms` ([`PeerMessage`]),
//! so latency is measured exactly as for Ringside's `state` frames.
//!
//! - NATS: devices use the WebSocket listener (`CONNECT`, `SUB`, then `MSG` operations, answering
//!   the server's `PING`s); the coordinator publishes over the plain TCP protocol.
//! - Pushpin: devices open a WebSocket to Pushpin at `/<channel>`; Pushpin forwards the session
//!   to a GRIP origin as WebSocket-over-HTTP ([`serve_grip_origin`]), which subscribes it to the
//!   channel and confirms with a `subscribed` text message; the coordinator publishes through
//!   each instance's HTTP publish endpoint.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
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

/// The text message the GRIP origin sends a device once its subscription is in place.
pub const PUSHPIN_SUBSCRIBED: &str = "subscribed";

/// A Pushpin WebSocket subscriber: `subscribed` is called on the origin's confirmation,
/// `on_message` for every published message (text frames holding a [`PeerMessage`]).
pub async fn pushpin_device(
    mut ws: WebSocketStream<TcpStream>,
    mut subscribed: impl FnMut(),
    mut on_message: impl FnMut(PeerMessage),
) -> anyhow::Result<()> {
    let mut confirmed = false;
    while let Some(frame) = ws.next().await {
        match frame? {
            Message::Text(text) if !confirmed && text.as_str() == PUSHPIN_SUBSCRIBED => {
                confirmed = true;
                subscribed();
            }
            Message::Text(text) => {
                if let Ok(message) = serde_json::from_str(&text) {
                    on_message(message);
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// Serves the GRIP origin Pushpin forwards device sessions to, as WebSocket-over-HTTP: a
/// session opened at `/<channel>` is subscribed to that channel and then told
/// [`PUSHPIN_SUBSCRIBED`]; every other event is acknowledged. Runs until the listener fails.
pub async fn serve_grip_origin(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(grip_answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn grip_answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let channel = request.uri().path().trim_start_matches('/').to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let valid = !channel.is_empty()
        && channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let response = Response::builder()
        .header("content-type", "application/websocket-events")
        .header("sec-websocket-extensions", "grip");
    let response = if !valid {
        response.status(400).body(Full::new(Bytes::from(
            "the path must name a channel: [A-Za-z0-9._-]+\n",
        )))
    } else {
        response.body(Full::new(Bytes::from(grip_events(&body, &channel))))
    };
    Ok(response.unwrap_or_default())
}

/// The origin's events in answer to Pushpin's: `OPEN` is accepted with a subscription and a
/// confirmation (content messages need the `m:` prefix once GRIP is on), `CLOSE` is echoed,
/// anything else needs no answer.
fn grip_events(request: &[u8], channel: &str) -> Vec<u8> {
    if request.starts_with(b"OPEN\r\n") {
        let mut events = b"OPEN\r\n".to_vec();
        let control = format!(r#"c:{{"type":"subscribe","channel":"{channel}"}}"#);
        for content in [control, format!("m:{PUSHPIN_SUBSCRIBED}")] {
            events
                .extend_from_slice(format!("TEXT {:x}\r\n{content}\r\n", content.len()).as_bytes());
        }
        events
    } else if request.starts_with(b"CLOSE") {
        b"CLOSE\r\n".to_vec()
    } else {
        Vec::new()
    }
}

/// Publishes `message` on `channel` through the HTTP publish endpoint of every Pushpin
/// instance in `bases` (such as `http://127.0.0.1:5591`) at once.
pub async fn pushpin_publish(
    bases: &[String],
    channel: &str,
    message: &PeerMessage,
) -> anyhow::Result<()> {
    let content = serde_json::to_string(message)?;
    let body = serde_json::to_vec(&serde_json::json!({
        "items": [{ "channel": channel, "formats": { "ws-message": { "content": content } } }]
    }))?;
    let answers = futures_util::future::join_all(bases.iter().map(|base| {
        ringside_client::http::call(base, "POST", "/publish/", &[], Some(body.clone()))
    }))
    .await;
    for (base, answer) in bases.iter().zip(answers) {
        let answer = answer.with_context(|| format!("Pushpin publish endpoint {base}"))?;
        if answer.status != 200 {
            bail!(
                "Pushpin at {base} answered {}: {}",
                answer.status,
                answer.text()
            );
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

    /// Publishes `message` and waits for the server to have processed it (a `PING` answered
    /// with `PONG` follows it).
    pub async fn publish(&mut self, subject: &str, message: &PeerMessage) -> anyhow::Result<()> {
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
                "PONG" => return Ok(()),
                "PING" => self.stream.get_mut().write_all(b"PONG\r\n").await?,
                other if other.starts_with("-ERR") => bail!("NATS error: {other}"),
                _ => {}
            }
        }
    }
}

/// Publishes the run's messages to a peer.
#[derive(Debug)]
pub enum PeerPublisher {
    /// One NATS server (of a cluster joined by routes, which carry the message to the others).
    Nats(NatsPublisher),
    /// Independent Pushpin instances: each message goes to every instance's publish endpoint.
    Pushpin { bases: Vec<String> },
}

impl PeerPublisher {
    /// Publishes `version` on `channel`, stamped now, with a filler.
    pub async fn publish(
        &mut self,
        channel: &str,
        version: u64,
        filler: &str,
    ) -> anyhow::Result<()> {
        let message = PeerMessage {
            version,
            published_at_ms: ringside_protocol::unix_now_ms(),
            filler: filler.to_owned(),
        };
        match self {
            Self::Nats(publisher) => publisher.publish(channel, &message).await,
            Self::Pushpin { bases } => pushpin_publish(bases, channel, &message).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grip_open_subscribes_and_confirms() {
        let events = String::from_utf8(grip_events(b"OPEN\r\n", "event.x")).unwrap();
        let control = r#"c:{"type":"subscribe","channel":"event.x"}"#;
        assert_eq!(
            events,
            format!(
                "OPEN\r\nTEXT {:x}\r\n{control}\r\nTEXT c\r\nm:subscribed\r\n",
                control.len()
            )
        );
        assert_eq!(grip_events(b"CLOSE\r\n", "event.x"), b"CLOSE\r\n");
        assert!(grip_events(b"TEXT 2\r\nhi\r\n", "event.x").is_empty());
    }

    #[tokio::test]
    async fn grip_origin_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(serve_grip_origin(listener));
        let open = Some(b"OPEN\r\n".to_vec());
        let answer = ringside_client::http::call(&base, "POST", "/event.x", &[], open.clone())
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["sec-websocket-extensions"], "grip");
        assert_eq!(
            answer.headers["content-type"],
            "application/websocket-events"
        );
        assert_eq!(answer.body, grip_events(b"OPEN\r\n", "event.x"));
        let refused = ringside_client::http::call(&base, "POST", "/a%20b", &[], open)
            .await
            .unwrap();
        assert_eq!(refused.status, 400);
        server.abort();
    }
}
