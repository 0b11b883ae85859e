//! One device connection: a single task that reads client frames, writes what its mailbox
//! holds, and keeps the connection alive or ends it.
//!
//! The task waits on four things at once: node drain, pending states, the next client frame and
//! its next deadline (heartbeat, idle cut-off, token expiry, or its planned farewell: the goaway
//! at the end of its lifetime or at its moment of a drain, then the close a grace period
//! later). Deadlines are also checked on every turn of the loop, so that a client whose frames
//! never let the socket run dry cannot starve them; and every client frame (pings and pongs
//! included) is charged to the connection's inbound rate limit, so that such a client is closed
//! instead. A live state that reaches an idle connection never wakes the task: the fan-out
//! writes it to the socket itself. The task writes what had to wait (a catch-up state, or a
//! state that met a full socket) as the same shared frame the hub encoded, and flushes once.
//! Whatever way the task ends (return, error, panic), dropping the `Session` unsubscribes its
//! topics and releases its place under the connection limit.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ringside_auth::DeviceClaims;
use ringside_broadcaster::{Delivery, Mailbox};
use ringside_protocol::frame::GoawayReason;
use ringside_protocol::{
    ClientFrame, CloseCode, ErrorCode, PROTOCOL_VERSION, ServerFrame, SubscribeTopic, Topic,
};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::config::CLOSE_HANDSHAKE_TIMEOUT;
use crate::rate::RateBudget;
use crate::socket::DeviceSocket;
use crate::{Gateway, SessionPermit};

pub(crate) type Socket = WebSocketStream<DeviceSocket>;

/// Why a session ends.
#[derive(Debug)]
enum Ending {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// A bad client frame: error frame, then close.
    BadFrame { code: ErrorCode, message: String },
    /// The peer broke the WebSocket protocol itself: error frame, then close 1002.
    ProtocolViolation(String),
    /// A server-initiated close: goaway, then close.
    GoAway {
        reason: GoawayReason,
        close: CloseCode,
    },
    /// The grace period after a planned goaway is over: close 1001 (the goaway went out).
    Farewell { reason: GoawayReason },
    /// The socket did not accept a write in time: goaway and close 4008 if they can still be
    /// written within [`CLOSE_HANDSHAKE_TIMEOUT`], else the connection is dropped.
    SlowConsumer,
}

/// Where a session's planned end stands (its moment is `Session::farewell_at`).
#[derive(Debug, Clone, Copy)]
enum Farewell {
    /// The goaway is due, for this reason.
    Due(GoawayReason),
    /// The goaway went out; the connection is closed at the moment.
    Sent(GoawayReason),
}

impl Ending {
    fn bad_frame(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadFrame {
            code,
            message: message.into(),
        }
    }
}

struct Session {
    gateway: Arc<Gateway>,
    _permit: SessionPermit,
    connection: u64,
    mailbox: Arc<Mailbox>,
    /// Topics this connection holds, in subscription order.
    topics: Vec<Topic>,
    last_inbound: Instant,
    /// Since when the connection holds no topic (at open, or after its last unsubscribe).
    topicless_since: Option<Instant>,
    next_ping: Instant,
    token_expires_at: Instant,
    /// The inbound frame rate's budget.
    inbound_frames: RateBudget,
    /// The planned end's next moment (`None`: no lifetime limit and no drain yet).
    farewell_at: Option<Instant>,
    farewell: Farewell,
    /// The node's drain reached this session (its goaway moment is drawn).
    drain_noticed: bool,
    /// Once its goaway is out (or the drain has drawn its moment): when the connection is
    /// closed. Every write is bounded by the time left until then, so that no write (under
    /// `send_timeout` otherwise) holds the session past its close.
    close_by: Option<Instant>,
    /// Reused buffer for states taken from the mailbox.
    outbound: Vec<Delivery>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for topic in &self.topics {
            self.gateway.hub.unsubscribe(topic, self.connection);
        }
    }
}

/// Opens a session on an upgraded socket. What the returned future holds is what every idle
/// connection costs, so the session and its socket are moved into it once and used in place
/// (an `async fn` would keep its arguments beside the locals made from them).
pub(crate) fn run(
    permit: SessionPermit,
    mut socket: Socket,
    mailbox: Arc<Mailbox>,
    claims: &DeviceClaims,
) -> impl Future<Output = ()> + Send + use<> {
    let gateway = permit.gateway.clone();
    let connection = gateway.next_connection_id();
    gateway.metrics.connections_opened.increment();
    let now = Instant::now();
    // The token was accepted up to the clock skew past its `exp`; it ends there too.
    let skew = gateway.device_key.rules().clock_skew.as_secs();
    let token_lifetime =
        Duration::from_secs(claims.exp.saturating_add(skew).saturating_sub(unix_now_s()));
    let mut session = Session {
        connection,
        mailbox,
        topics: Vec::new(),
        last_inbound: now,
        topicless_since: Some(now),
        next_ping: now + gateway.config.heartbeat_interval,
        token_expires_at: now
            .checked_add(token_lifetime)
            .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        inbound_frames: RateBudget::new(now),
        farewell_at: lifetime_end(&gateway.config, now),
        farewell: Farewell::Due(GoawayReason::MaxLifetime),
        drain_noticed: false,
        close_by: None,
        outbound: Vec::new(),
        gateway,
        _permit: permit,
    };
    tracing::trace!(connection, device = %claims.sub, "session open");
    async move {
        // A drain cuts whatever is still open at its end (window, grace, close handshake): the
        // session is dropped wherever it waits, its socket with it.
        let cut = session.gateway.cut.clone();
        let served = async {
            let ending = session.serve(&mut socket).await;
            Box::pin(session.finish(&mut socket, ending)).await;
        };
        tokio::select! {
            biased;
            () = served => {}
            () = cut.cancelled() => tracing::debug!(connection, "session cut at the drain's end"),
        }
    }
}

impl Session {
    async fn serve(&mut self, socket: &mut Socket) -> Ending {
        let config = &self.gateway.config;
        // In a block of its own: the welcome is not kept for the rest of the session.
        {
            let welcome = ServerFrame::Welcome {
                connection_id: format!("{}-{:x}", config.node_id, self.connection),
                node: config.node_id.clone(),
                heartbeat_ms: u64::try_from(config.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                protocol: PROTOCOL_VERSION,
            };
            if let Err(ending) = Box::pin(self.send_frame(socket, &welcome)).await {
                return ending;
            }
        }
        // One drain registration and one timer for the whole session, not one per turn of the
        // loop: both are shared structures that every session would otherwise contend on.
        let drain = self.gateway.drain.clone().cancelled_owned();
        tokio::pin!(drain);
        let timer = sleep_until(self.next_deadline());
        tokio::pin!(timer);
        loop {
            let deadline = self.next_deadline();
            // A client that always has a frame ready must not outrun its deadlines: every turn
            // checks the clock itself instead of relying on the timer's wake-up alone.
            if Instant::now() >= deadline {
                if let Err(ending) = Box::pin(self.on_deadline(socket)).await {
                    return ending;
                }
                continue;
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = &mut drain, if !self.drain_noticed => self.notice_drain(),
                // Every branch's work runs as a boxed future: it exists only while it runs, so
                // that the largest of them does not set the size of every idle session. (Live
                // states reach an idle session without waking it; this branch writes only what
                // had to wait.)
                () = self.mailbox.ready() => {
                    if let Err(ending) = Box::pin(self.send_pending()).await {
                        return ending;
                    }
                }
                // Before the socket: a client that streams the fragments of a message that never
                // completes keeps `socket.next()` busy without ever returning to the top of the
                // loop, so the timer must win whenever both are ready.
                () = &mut timer => {
                    if let Err(ending) = Box::pin(self.on_deadline(socket)).await {
                        return ending;
                    }
                }
                inbound = socket.next() => {
                    let Some(inbound) = inbound else { return Ending::Gone };
                    let now = Instant::now();
                    if let Err(ending) = self.charge_inbound(now) {
                        return ending;
                    }
                    self.last_inbound = now;
                    if let Err(ending) = Box::pin(self.handle_inbound(socket, inbound)).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Charges one inbound frame to the connection's rate limit: a budget of
    /// `inbound_frame_burst` frames that refills at `inbound_frames_per_s`. Over it, the
    /// connection is closed with `rate_limited`.
    fn charge_inbound(&mut self, now: Instant) -> Result<(), Ending> {
        let config = &self.gateway.config;
        let over = self.inbound_frames.charge(
            now,
            1,
            config.inbound_frames_per_s,
            config.inbound_frame_burst,
        );
        if over.is_some() {
            self.gateway.metrics.closes.rate_limited.increment();
            return Err(Ending::bad_frame(
                ErrorCode::RateLimited,
                format!(
                    "more than {} frames per second (bursts of {}); slow down",
                    config.inbound_frames_per_s, config.inbound_frame_burst
                ),
            ));
        }
        Ok(())
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.topicless_since
            .map(|since| since + self.gateway.config.subscribe_timeout)
    }

    fn next_deadline(&self) -> Instant {
        let mut earliest = self.next_ping.min(self.token_expires_at);
        for deadline in [self.idle_deadline(), self.farewell_at]
            .into_iter()
            .flatten()
        {
            earliest = earliest.min(deadline);
        }
        earliest
    }

    /// The node drains: this session's goaway moment is drawn from the drain's window (unless
    /// its goaway already went out, then it keeps its close).
    fn notice_drain(&mut self) {
        self.drain_noticed = true;
        if let Farewell::Sent(_) = self.farewell {
            // Already told (its lifetime goaway): the drain counts it as sent.
            self.gateway.count_drain_told();
            return;
        }
        let moment = self
            .gateway
            .drain_plan()
            .map_or_else(Instant::now, |plan| plan.goaway_moment());
        let moment = self.farewell_at.map_or(moment, |at| at.min(moment));
        self.farewell = Farewell::Due(GoawayReason::Shutdown);
        self.farewell_at = Some(moment);
        self.close_by = Some(moment + self.gateway.config.goaway_grace);
    }

    /// At the farewell's moment: sends the goaway and keeps serving for `goaway_grace`, or,
    /// once that is over, ends the session.
    async fn on_farewell(&mut self, socket: &mut Socket, now: Instant) -> Result<(), Ending> {
        match self.farewell {
            Farewell::Sent(reason) => Err(Ending::Farewell { reason }),
            Farewell::Due(reason) => {
                match reason {
                    GoawayReason::Shutdown => self.gateway.count_drain_goaway(),
                    _ => self.gateway.metrics.goaways.max_lifetime.increment(),
                }
                self.farewell = Farewell::Sent(reason);
                // A goaway sent late (after a slow write) still closes at the drain's moment.
                let close = now + self.gateway.config.goaway_grace;
                let close = self.close_by.map_or(close, |by| by.min(close));
                self.farewell_at = Some(close);
                self.close_by = Some(close);
                let goaway = ServerFrame::Goaway {
                    reconnect_after_ms: millis(self.gateway.reconnect_delay()),
                    reason,
                };
                self.send_frame(socket, &goaway).await
            }
        }
    }

    async fn on_deadline(&mut self, socket: &mut Socket) -> Result<(), Ending> {
        let gateway = self.gateway.clone();
        let config = &gateway.config;
        let now = Instant::now();
        if now >= self.token_expires_at {
            self.gateway.metrics.closes.token_expired.increment();
            return Err(Ending::GoAway {
                reason: GoawayReason::TokenExpired,
                close: CloseCode::POLICY_VIOLATION,
            });
        }
        if self.idle_deadline().is_some_and(|idle| now >= idle) {
            return Err(Ending::GoAway {
                reason: GoawayReason::Idle,
                close: CloseCode::POLICY_VIOLATION,
            });
        }
        if self.farewell_at.is_some_and(|at| now >= at) {
            self.on_farewell(socket, now).await?;
        }
        if now >= self.next_ping {
            let silence_limit = config.heartbeat_interval * config.heartbeat_misses;
            if now.duration_since(self.last_inbound) >= silence_limit {
                return Err(Ending::GoAway {
                    reason: GoawayReason::HeartbeatTimeout,
                    close: CloseCode::GOING_AWAY,
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
                return Err(Ending::bad_frame(
                    ErrorCode::BinaryNotSupported,
                    "protocol v1 frames are JSON text",
                ));
            }
            // Pongs only prove liveness; pings are answered by tungstenite.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => return Ok(()),
            // Tungstenite answers a close and the stream then ends; no state may follow the
            // answer, so the fan-out stops writing here first.
            Ok(Message::Close(_)) => {
                self.mailbox.seal();
                return Ok(());
            }
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                return Err(Ending::bad_frame(
                    ErrorCode::FrameTooLarge,
                    format!("frame of {size} bytes exceeds the {max_size} byte limit"),
                ));
            }
            Err(WsError::Utf8(_)) => {
                return Err(Ending::bad_frame(
                    ErrorCode::InvalidJson,
                    "text frame is not valid UTF-8",
                ));
            }
            Err(WsError::Protocol(error)) => {
                tracing::debug!(connection = self.connection, %error, "WebSocket protocol violation");
                // Tungstenite's description names the rule the peer broke, nothing internal.
                return Err(Ending::ProtocolViolation(error.to_string()));
            }
            Err(error) => {
                tracing::debug!(connection = self.connection, %error, "socket error");
                return Err(Ending::Gone);
            }
        };
        let frame = ClientFrame::decode(&text)
            .map_err(|error| Ending::bad_frame(error.code(), error.to_string()))?;
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
        // Repeated topics count once. The limit is checked entry by entry, so that the list
        // kept (and compared against) never exceeds it: a frame of thousands of topics costs a
        // few comparisons per entry, not one against every other entry (seconds of a worker
        // thread for a 1 MiB frame).
        let limit = self.gateway.config.max_topics_per_connection;
        let mut unique: Vec<SubscribeTopic> = Vec::new();
        let mut new_topics = 0;
        for entry in requested {
            if unique.iter().any(|kept| kept.topic == entry.topic) {
                continue;
            }
            if !self.topics.contains(&entry.topic) {
                new_topics += 1;
                if self.topics.len() + new_topics > limit {
                    return Err(Ending::bad_frame(
                        ErrorCode::TooManyTopics,
                        format!("a connection may hold at most {limit} topics"),
                    ));
                }
            }
            unique.push(entry);
        }
        let requested = unique;
        // Open the mailbox slots first: the hub offers the current state into them, so the
        // states follow the `subscribed` answer on the next turn of the loop.
        let mut answered = Vec::with_capacity(requested.len());
        for SubscribeTopic { topic, since } in requested {
            if self.mailbox.open(&topic, since) {
                let subscribed = self
                    .gateway
                    .hub
                    .subscribe(&topic, self.connection, &self.mailbox);
                if let Err(limit) = subscribed {
                    // The topics taken before this one are released when the session ends.
                    self.mailbox.close(&topic);
                    return Err(Ending::bad_frame(ErrorCode::TopicLimit, limit.to_string()));
                }
                self.topics.push(topic.clone());
            }
            answered.push(topic);
        }
        if !self.topics.is_empty() {
            self.topicless_since = None;
        }
        self.send_frame(socket, &ServerFrame::Subscribed { topics: answered })
            .await?;
        // Live states follow the answer: from now on the fan-out may write them directly.
        for topic in &self.topics {
            self.mailbox.announce(topic);
        }
        Ok(())
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

    /// Writes every pending state as the frame the hub encoded, and whatever a direct write
    /// left in the backlog, then flushes.
    async fn send_pending(&mut self) -> Result<(), Ending> {
        let close_by = self.close_bound();
        let (mailbox, sent) = (&self.mailbox, &mut self.outbound);
        let written = async {
            loop {
                let all = mailbox.write_pending(sent)?;
                std::future::poll_fn(|cx| mailbox.poll_flush(cx)).await?;
                if all {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        let outcome = bounded_write(&self.gateway, close_by, written).await;
        let deliveries = self.gateway.hub.deliveries();
        for delivery in self.outbound.drain(..) {
            if outcome.is_ok() {
                deliveries.sent(&delivery.state, !delivery.catch_up);
            }
        }
        outcome
    }

    /// The session's close and its reason, once planned (see `close_by`).
    fn close_bound(&self) -> Option<(Instant, GoawayReason)> {
        let (Farewell::Due(reason) | Farewell::Sent(reason)) = self.farewell;
        self.close_by.map(|by| (by, reason))
    }

    async fn send_frame(&mut self, socket: &mut Socket, frame: &ServerFrame) -> Result<(), Ending> {
        self.write(socket, Message::Text(frame.encode().into()))
            .await
    }

    async fn write(&mut self, socket: &mut Socket, message: Message) -> Result<(), Ending> {
        bounded_write(&self.gateway, self.close_bound(), socket.send(message)).await
    }

    /// Says why the connection ends (when the peer can still hear it) and closes it.
    async fn finish(&mut self, socket: &mut Socket, ending: Ending) {
        // No state may follow the goaway and close frames.
        self.mailbox.seal();
        let metrics = &self.gateway.metrics;
        let (notice, close) = match ending {
            // The codec may have handed its last frames (the answer to the device's close) to
            // the mailbox without waiting for the socket to take them: give them the time a
            // close handshake gets, then let the socket go.
            Ending::Gone => {
                let flushed = std::future::poll_fn(|cx| self.mailbox.poll_flush(cx));
                let _sent_or_gone_either_way = timeout(CLOSE_HANDSHAKE_TIMEOUT, flushed).await;
                return;
            }
            // Its unsent states are gone (sealed above); the rest of a frame the socket took in
            // part is written first, then the goaway and the close, if the device reads again
            // within the bound. Otherwise the connection is dropped: it never holds the node.
            Ending::SlowConsumer => {
                metrics.closes.slow_consumer.increment();
                tracing::debug!(connection = self.connection, "slow consumer; closing");
                let reason = GoawayReason::SlowConsumer;
                (
                    Some(ServerFrame::Goaway {
                        reconnect_after_ms: millis(self.gateway.reconnect_delay()),
                        reason,
                    }),
                    (CloseCode::SLOW_CONSUMER, reason.as_str()),
                )
            }
            Ending::Farewell { reason } => (None, (CloseCode::GOING_AWAY, reason.as_str())),
            Ending::ProtocolViolation(message) => {
                metrics.protocol_errors.increment();
                let code = ErrorCode::ProtocolViolation;
                let close = (code.close_code(), code.as_str());
                (Some(ServerFrame::Error { code, message }), close)
            }
            Ending::BadFrame { code, message } => {
                metrics.protocol_errors.increment();
                let close = (code.close_code(), code.as_str());
                (Some(ServerFrame::Error { code, message }), close)
            }
            Ending::GoAway { reason, close } => {
                // Every server-initiated close spreads its reconnects, so that whatever made
                // many connections end at once does not bring them all back at once.
                let reconnect_after_ms = millis(self.gateway.reconnect_delay());
                (
                    Some(ServerFrame::Goaway {
                        reconnect_after_ms,
                        reason,
                    }),
                    (close, reason.as_str()),
                )
            }
        };
        let (CloseCode(code), reason) = close;
        let mut close_written = false;
        let closing = async {
            if let Some(notice) = notice {
                socket.send(Message::Text(notice.encode().into())).await?;
            }
            let frame = CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            };
            socket.close(Some(frame)).await?;
            close_written = true;
            // Wait for the peer's close frame so the close handshake completes cleanly.
            while socket.next().await.is_some() {}
            Ok::<(), WsError>(())
        };
        let _closed_or_gone_either_way = timeout(CLOSE_HANDSHAKE_TIMEOUT, closing).await;
        if CloseCode(code) == CloseCode::SLOW_CONSUMER {
            if close_written {
                metrics.slow_consumer_closes.increment();
            } else {
                tracing::debug!(
                    connection = self.connection,
                    "slow consumer dropped: its close could not be written"
                );
            }
        }
    }
}

/// Runs a socket write under the send timeout, or until the session's close (`close_by`) if
/// that comes first: a write still pending then ends the session as its planned farewell,
/// whose close is bounded by the close handshake. (A write that completes at once never
/// registers the timeout's timer.)
async fn bounded_write<E>(
    gateway: &Gateway,
    close_by: Option<(Instant, GoawayReason)>,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Ending> {
    let send_timeout = Instant::now() + gateway.config.send_timeout;
    let until = close_by.map_or(send_timeout, |(by, _)| by.min(send_timeout));
    match tokio::time::timeout_at(until, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::Gone),
        Err(_elapsed) => match close_by {
            Some((by, reason)) if by < send_timeout => Err(Ending::Farewell { reason }),
            _ => Err(Ending::SlowConsumer),
        },
    }
}

/// When a session opened at `now` reaches its lifetime: `max_connection_lifetime` give or take
/// up to `connection_lifetime_spread`, drawn uniformly; `None` without a lifetime limit.
fn lifetime_end(config: &crate::GatewayConfig, now: Instant) -> Option<Instant> {
    if config.max_connection_lifetime.is_zero() {
        return None;
    }
    let spread = config.connection_lifetime_spread;
    let earliest = config.max_connection_lifetime.saturating_sub(spread);
    Some(now + ringside_protection::retry_after(earliest, config.max_connection_lifetime + spread))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_spread_around_the_maximum_and_zero_disables_them() {
        let config = crate::GatewayConfig {
            max_connection_lifetime: Duration::from_secs(1800),
            connection_lifetime_spread: Duration::from_secs(300),
            ..crate::GatewayConfig::default()
        };
        let now = Instant::now();
        let ends: Vec<Duration> = (0..500)
            .map(|_| lifetime_end(&config, now).expect("a lifetime") - now)
            .collect();
        let (earliest, latest) = (Duration::from_secs(1500), Duration::from_secs(2100));
        assert!(ends.iter().all(|end| (earliest..=latest).contains(end)));
        let early = ends
            .iter()
            .filter(|end| **end < Duration::from_secs(1700))
            .count();
        let late = ends
            .iter()
            .filter(|end| **end > Duration::from_secs(1900))
            .count();
        assert!(
            early > 50 && late > 50,
            "spread: {early} early, {late} late"
        );
        let unlimited = crate::GatewayConfig {
            max_connection_lifetime: Duration::ZERO,
            ..config
        };
        assert_eq!(lifetime_end(&unlimited, now), None);
    }
}
