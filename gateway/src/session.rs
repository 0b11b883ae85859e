//! One device connection: a single task that reads client frames, writes what its mailbox
//! holds, and keeps the connection alive or ends it.
//!
//! The task waits on four things at once: node drain, pending states, the next client frame and
//! its next timer (heartbeat or idle deadline). States are written as the shared bytes the hub
//! encoded; a batch of pending states is fed to the socket and flushed once.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auth::DeviceClaims;
use broadcaster::{EncodedState, Mailbox};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use protocol::frame::GoawayReason;
use protocol::{
    ClientFrame, CloseCode, ErrorCode, PROTOCOL_VERSION, ServerFrame, SubscribeTopic, Topic,
};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::Gateway;

pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a closing session waits for the peer's close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a session ends.
#[derive(Debug)]
enum Ending {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// A bad client frame: error frame, then close.
    BadFrame { code: ErrorCode, message: String },
    /// A server-initiated close: goaway, then close.
    GoAway {
        reason: GoawayReason,
        close: CloseCode,
        reconnect_after: Duration,
    },
    /// The socket did not accept a write in time.
    SlowConsumer,
}

struct Session {
    gateway: Arc<Gateway>,
    connection: u64,
    mailbox: Arc<Mailbox>,
    /// Topics this connection holds, in subscription order.
    topics: Vec<Topic>,
    last_inbound: Instant,
    /// Since when the connection holds no topic (at open, or after its last unsubscribe).
    topicless_since: Option<Instant>,
    next_ping: Instant,
    /// Reused buffer for states taken from the mailbox.
    outbound: Vec<Arc<EncodedState>>,
}

pub(crate) async fn run(gateway: Arc<Gateway>, mut socket: Socket, claims: DeviceClaims) {
    let connection = gateway.next_connection_id();
    gateway.metrics.connections.increment();
    gateway.metrics.connections_opened.increment();
    let now = Instant::now();
    let mut session = Session {
        connection,
        mailbox: Mailbox::new(),
        topics: Vec::new(),
        last_inbound: now,
        topicless_since: Some(now),
        next_ping: now + gateway.config.heartbeat_interval,
        outbound: Vec::new(),
        gateway,
    };
    tracing::trace!(connection, device = %claims.sub, "session open");
    let ending = session.serve(&mut socket).await;
    session.finish(&mut socket, ending).await;
    for topic in &session.topics {
        session.gateway.hub.unsubscribe(topic, connection);
    }
    session.gateway.metrics.connections.decrement();
}

impl Session {
    async fn serve(&mut self, socket: &mut Socket) -> Ending {
        let config = &self.gateway.config;
        let welcome = ServerFrame::Welcome {
            connection_id: format!("{}-{:x}", config.node_id, self.connection),
            node: config.node_id.clone(),
            heartbeat_ms: u64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
            protocol: PROTOCOL_VERSION,
        };
        if let Err(ending) = self.send_frame(socket, &welcome).await {
            return ending;
        }
        let drain = self.gateway.drain.clone();
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = drain.cancelled() => {
                    return Ending::GoAway {
                        reason: GoawayReason::Shutdown,
                        close: CloseCode::GOING_AWAY,
                        reconnect_after: self.gateway.reconnect_delay(),
                    };
                }
                () = self.mailbox.ready() => {
                    if let Err(ending) = self.send_pending(socket).await {
                        return ending;
                    }
                }
                inbound = socket.next() => {
                    let Some(inbound) = inbound else { return Ending::Gone };
                    self.last_inbound = Instant::now();
                    if let Err(ending) = self.handle_inbound(socket, inbound).await {
                        return ending;
                    }
                }
                () = sleep_until(deadline) => {
                    if let Err(ending) = self.on_timer(socket).await {
                        return ending;
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let idle_deadline = self
            .topicless_since
            .map(|t| t + self.gateway.config.subscribe_timeout);
        idle_deadline.map_or(self.next_ping, |idle| idle.min(self.next_ping))
    }

    async fn on_timer(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        let config = &self.gateway.config;
        let now = Instant::now();
        if self
            .topicless_since
            .is_some_and(|since| now >= since + config.subscribe_timeout)
        {
            return Err(Ending::GoAway {
                reason: GoawayReason::Idle,
                close: CloseCode::POLICY_VIOLATION,
                reconnect_after: Duration::ZERO,
            });
        }
        if now >= self.next_ping {
            let silence_limit = config.heartbeat_interval * config.heartbeat_misses;
            if now.duration_since(self.last_inbound) >= silence_limit {
                return Err(Ending::GoAway {
                    reason: GoawayReason::HeartbeatTimeout,
                    close: CloseCode::GOING_AWAY,
                    reconnect_after: Duration::ZERO,
                });
            }
            self.next_ping = now + config.heartbeat_interval;
            self.write(socket, Message::Ping(Bytes::new())).await?;
        }
        Ok(())
    }

    async fn handle_inbound(
        &mut self,
        socket: &mut Socket,
        inbound: Result<Message, WsError>,
    ) -> Result<(), Ending> {
        let text = match inbound {
            Ok(Message::Text(text)) => text,
            Ok(Message::Binary(_)) => {
                return Err(Ending::BadFrame {
                    code: ErrorCode::BinaryNotSupported,
                    message: "protocol v1 frames are JSON text".into(),
                });
            }
            // Pongs only prove liveness; pings are answered by tungstenite; a close is
            // answered by tungstenite and the stream then ends.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {
                return Ok(());
            }
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                return Err(Ending::BadFrame {
                    code: ErrorCode::FrameTooLarge,
                    message: format!("frame of {size} bytes exceeds the {max_size} byte limit"),
                });
            }
            Err(WsError::Utf8(_)) => {
                return Err(Ending::BadFrame {
                    code: ErrorCode::InvalidJson,
                    message: "text frame is not valid UTF-8".into(),
                });
            }
            Err(error) => {
                tracing::debug!(connection = self.connection, %error, "socket error");
                return Err(Ending::Gone);
            }
        };
        let frame = ClientFrame::decode(&text).map_err(|error| Ending::BadFrame {
            code: error.code(),
            message: error.to_string(),
        })?;
        match frame {
            ClientFrame::Subscribe { topics } => self.subscribe(socket, topics).await,
            ClientFrame::Unsubscribe { topics } => self.unsubscribe(socket, topics).await,
            ClientFrame::Ack { topic, version } => {
                if self.mailbox.acknowledge(&topic, version) {
                    self.gateway.hub.record_ack(&topic, version);
                }
                Ok(())
            }
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut Socket,
        requested: Vec<SubscribeTopic>,
    ) -> Result<(), Ending> {
        let new_topics = requested
            .iter()
            .filter(|r| !self.topics.contains(&r.topic))
            .count();
        let limit = self.gateway.config.max_topics_per_connection;
        if self.topics.len() + new_topics > limit {
            return Err(Ending::BadFrame {
                code: ErrorCode::TooManyTopics,
                message: format!("a connection may hold at most {limit} topics"),
            });
        }
        // Open the mailbox slots first: the hub offers the current state into them, so the
        // states follow the `subscribed` answer on the next turn of the loop.
        let mut answered = Vec::with_capacity(requested.len());
        for SubscribeTopic { topic, since } in requested {
            if self.mailbox.open(&topic, since) {
                self.gateway
                    .hub
                    .subscribe(&topic, self.connection, &self.mailbox);
                self.topics.push(topic.clone());
            }
            answered.push(topic);
        }
        if !self.topics.is_empty() {
            self.topicless_since = None;
        }
        self.send_frame(socket, &ServerFrame::Subscribed { topics: answered })
            .await
    }

    async fn unsubscribe(&mut self, socket: &mut Socket, topics: Vec<Topic>) -> Result<(), Ending> {
        for topic in &topics {
            if self.mailbox.close(topic) {
                self.gateway.hub.unsubscribe(topic, self.connection);
                self.topics.retain(|held| held != topic);
            }
        }
        if self.topics.is_empty() && self.topicless_since.is_none() {
            self.topicless_since = Some(Instant::now());
        }
        self.send_frame(socket, &ServerFrame::Unsubscribed { topics })
            .await
    }

    /// Writes every pending state, then flushes once.
    async fn send_pending(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        self.mailbox.take_pending(&mut self.outbound);
        if self.outbound.is_empty() {
            return Ok(());
        }
        let send_timeout = self.gateway.config.send_timeout;
        let batch = &mut self.outbound;
        let written = timeout(send_timeout, async {
            for state in batch.iter() {
                socket
                    .feed(Message::Text(shared_text(&state.frame)))
                    .await?;
            }
            socket.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Ending::Gone),
            Err(_elapsed) => return Err(Ending::SlowConsumer),
        }
        let metrics = &self.gateway.metrics;
        let now_ms = unix_now_ms();
        for state in self.outbound.drain(..) {
            metrics.messages_sent.increment();
            metrics.bytes_sent.add(state.frame.len() as u64);
            metrics.publish_to_send.observe(Duration::from_millis(
                now_ms.saturating_sub(state.published_at_ms),
            ));
        }
        Ok(())
    }

    async fn send_frame(&mut self, socket: &mut Socket, frame: &ServerFrame) -> Result<(), Ending> {
        self.write(socket, Message::Text(frame.encode().into()))
            .await
    }

    async fn write(&mut self, socket: &mut Socket, message: Message) -> Result<(), Ending> {
        match timeout(self.gateway.config.send_timeout, socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::Gone),
            Err(_elapsed) => Err(Ending::SlowConsumer),
        }
    }

    /// Says why the connection ends (when the peer can still hear it) and closes it.
    async fn finish(&mut self, socket: &mut Socket, ending: Ending) {
        let metrics = &self.gateway.metrics;
        let (notice, close) = match ending {
            Ending::Gone => return,
            Ending::SlowConsumer => {
                metrics.slow_consumer_disconnects.increment();
                tracing::debug!(connection = self.connection, "slow consumer disconnected");
                return;
            }
            Ending::BadFrame { code, message } => {
                metrics.protocol_errors.increment();
                let close = (code.close_code(), code.as_str());
                (ServerFrame::Error { code, message }, close)
            }
            Ending::GoAway {
                reason,
                close,
                reconnect_after,
            } => {
                let reconnect_after_ms = u64::try_from(reconnect_after.as_millis()).unwrap_or(0);
                let close_reason = match reason {
                    GoawayReason::Shutdown => "server shutting down",
                    GoawayReason::Idle => "no subscription",
                    GoawayReason::HeartbeatTimeout => "heartbeat timeout",
                    GoawayReason::Other => "closing",
                };
                (
                    ServerFrame::Goaway {
                        reconnect_after_ms,
                        reason,
                    },
                    (close, close_reason),
                )
            }
        };
        let (CloseCode(code), reason) = close;
        let closing = async {
            socket.send(Message::Text(notice.encode().into())).await?;
            let frame = CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            };
            socket.close(Some(frame)).await?;
            // Wait for the peer's close frame so the close handshake completes cleanly.
            while socket.next().await.is_some() {}
            Ok::<(), WsError>(())
        };
        let _closed_or_gone_either_way = timeout(CLOSE_HANDSHAKE_TIMEOUT, closing).await;
    }
}

/// The state frame as a text message sharing the hub's bytes. The hub encoded the frame with
/// serde_json, so the bytes are UTF-8; the check below is a short scan, not a copy.
fn shared_text(frame: &Bytes) -> Utf8Bytes {
    Utf8Bytes::try_from(frame.clone()).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
