//! A gateway node's limits and timeouts. Every one is a named field with a documented default
//! (see `docs/OPERATIONS.md`); [`GatewayConfig::validate`] runs before the node binds.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's id, shown in `welcome` frames, stats and metrics.
    pub node_id: String,
    /// How often the server pings each connection; announced as `heartbeat_ms`.
    pub heartbeat_interval: Duration,
    /// A connection silent for this many heartbeat intervals is closed.
    pub heartbeat_misses: u32,
    /// A connection holding no topic for this long is closed (goaway `idle`).
    pub subscribe_timeout: Duration,
    /// Most topics one connection may hold.
    pub max_topics_per_connection: usize,
    /// Largest client frame accepted; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// A write that cannot complete within this time closes the connection (slow consumer).
    pub send_timeout: Duration,
    /// Most connections this node holds; upgrades beyond it get 503.
    pub max_connections: u64,
    /// How long a drain may take in all, from its start until the last session is closed:
    /// the paced goaways (`drain_window_max` at most), every session's `goaway_grace`, and a
    /// close handshake. Default 70 s: the 60 s window, 5 s of grace, the 2 s handshake and a
    /// few seconds to spare; validated to hold them, so that a SIGTERM's drain ends on time.
    /// `send_timeout` needs no room: once a session's goaway moment is drawn its writes are
    /// bounded by its close, and whatever is still open at window + grace + handshake is cut.
    pub shutdown_grace: Duration,
    /// The window over which goaway reconnect delays are spread.
    pub reconnect_spread: Duration,
    /// Capacity of each connection's WebSocket read buffer, in bytes. Client frames are small,
    /// so a small buffer keeps idle connections cheap; larger frames still arrive whole.
    pub read_buffer_bytes: usize,
    /// Most topics without a state (events not published yet, or names a device made up) that
    /// this node's connections may hold at once; a subscribe to one more gets `topic_limit`.
    /// Topics with a state are never refused. Default 16,384: far more events than are created
    /// ahead of their first publish, while made-up names stay a bounded few MiB (about 200
    /// bytes each), and filling it takes over a thousand devices' connections (16 topics on
    /// each of 8), so a few hostile devices cannot crowd out events created ahead.
    pub max_unpublished_topics: usize,
    /// Stage versions per topic whose delivery records the node keeps for the broadcast
    /// report (`GET /v1/admin/events/{id}/broadcasts`). Default 20: an event's stages with
    /// room for corrections, about 250 bytes each per topic.
    pub broadcasts_per_topic: usize,
    /// Most topics fanning out at once (one fan-out per topic, each split over the cores when
    /// its topic is big). Default 8: a small topic never waits behind a big one, without
    /// multiplying the threads a burst of publishes can claim.
    pub max_concurrent_fanouts: usize,
    /// Most topics whose newest state waits for its fan-out (a newer state of a waiting topic
    /// replaces the older one). Default 4096, far above the events a node serves at once; with
    /// that many waiting, the bus feed is not read until one starts (the bus holds the rest).
    pub max_waiting_topics: usize,
    /// Sustained rate of client frames one connection may send, every kind counted (text,
    /// binary, ping, pong, close). Default 50 per second: a device sends a subscribe, an ack per
    /// state it applies and a pong per heartbeat, far below that even on 16 busy topics; a
    /// client above it is closed with `rate_limited` (close 4029). Without a rate, a client
    /// could keep its session task busy forever on frames that each cost almost nothing.
    pub inbound_frames_per_s: u32,
    /// Frames a connection may send at once above the sustained rate. Default 200: a reconnect
    /// (subscribe, then acks for the catch-up states of every topic) stays well inside it.
    pub inbound_frame_burst: u32,
    /// Most live connections one device (a token's `sub`) may hold on this node; upgrades
    /// beyond it get 503 with `Retry-After`. Default 8: one device needs one connection, but
    /// after a network change its old connection stays open until the heartbeat notices it is
    /// gone, so a device reconnecting several times in that window must still get in, while one
    /// token can no longer hold thousands of sockets.
    pub max_connections_per_device: u32,
    /// `SO_SNDBUF` of each upgraded device socket, in bytes (Linux doubles it for its own
    /// bookkeeping); 0 leaves the kernel's autotuning, which grows it to `tcp_wmem`'s maximum
    /// (4 MiB by default). Default 16 KiB, about four of the largest state frames: a device
    /// that stops reading is then sent at most that many superseded states before conflation
    /// starts, and each stalled socket pins kilobytes of kernel memory instead of megabytes.
    pub send_buffer_bytes: usize,
    /// Sustained bytes per second read from one connection. Default 16 KiB: a device sends a
    /// subscribe, acks and pongs, a few hundred bytes a second at most. Beyond it the session
    /// stops reading for a while, so TCP's flow control holds the sender back: bytes that never
    /// make a whole message (the fragments of a message that never ends), which no frame rate
    /// can count, cost the node no more than this.
    pub inbound_bytes_per_s: u32,
    /// Bytes a connection may send at once above that rate. Default 64 KiB: a few of the
    /// largest client frames.
    pub inbound_byte_burst: u32,
    /// The window every `503` of an upgrade draws its `Retry-After` from (whole seconds,
    /// uniformly). Default 2 to 10 s: a thousand devices refused in the same millisecond come
    /// back spread over eight seconds, not as a second stampede.
    pub retry_after_min: Duration,
    pub retry_after_max: Duration,
    /// Sustained rate of upgrades this node admits (token bucket, checked after the token and
    /// before any WebSocket work); beyond it an upgrade gets `503` with `Retry-After`. Default
    /// 1000 per second: an upgrade costs a token check, a socket, a session task and the
    /// catch-up states of its topics, so a thousand a second is a small share of one core,
    /// and a node of 50,000 devices is refilled in under a minute after a failover.
    pub upgrade_rate_per_s: u32,
    /// Upgrades admitted at once above that rate. Default 2000: a load balancer that flaps or
    /// a few thousand devices waking together get in at once; a fleet of tens of thousands
    /// reconnecting together is spread over tens of seconds instead of hitting the node at once.
    pub upgrade_burst: u32,
    /// A connection is sent `goaway` (`max_lifetime`) this long after it opened, give or take
    /// `connection_lifetime_spread` (drawn per connection), so that a fleet rebalances over the
    /// nodes continuously and no node keeps its devices forever. Default 30 minutes; 0 disables.
    pub max_connection_lifetime: Duration,
    /// How far each connection's lifetime is spread around `max_connection_lifetime`
    /// (uniformly, either way). Default 5 minutes: connections opened together (after a
    /// deploy) do not all end together 30 minutes later. Less than the lifetime.
    pub connection_lifetime_spread: Duration,
    /// After a server-planned goaway (connection lifetime, drain), the connection is still
    /// served (states delivered) this long, then closed with 1001. Default 5 s, the reconnect
    /// spread: a device that opens its next connection before leaving this one loses nothing.
    pub goaway_grace: Duration,
    /// A drain's pace: reconnects per second it sends away. The window is the node's sessions
    /// over this rate, capped by `drain_window_max`. Default 500: half of one other node's
    /// `upgrade_rate_per_s`, so even a two-node deployment absorbs a drain with room to spare.
    pub drain_rate_per_s: u32,
    /// Longest window a drain spreads its goaways over; 0 sends them all at once (unpaced).
    /// Default 60 s. With `goaway_grace` and a close handshake it must fit `shutdown_grace`.
    pub drain_window_max: Duration,
}

/// How long a closing session waits for its close frame to be written and the peer's close
/// frame to come back; also the bound of a slow consumer's goaway and close.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node_id: "node-1".into(),
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_misses: 3,
            subscribe_timeout: Duration::from_secs(10),
            max_topics_per_connection: 16,
            max_frame_bytes: 16 * 1024,
            send_timeout: Duration::from_secs(10),
            max_connections: 250_000,
            shutdown_grace: Duration::from_secs(70),
            reconnect_spread: Duration::from_secs(5),
            read_buffer_bytes: 512,
            max_unpublished_topics: 16_384,
            broadcasts_per_topic: 20,
            max_concurrent_fanouts: 8,
            max_waiting_topics: 4096,
            inbound_frames_per_s: 50,
            inbound_frame_burst: 200,
            max_connections_per_device: 8,
            send_buffer_bytes: 16 * 1024,
            inbound_bytes_per_s: 16 * 1024,
            inbound_byte_burst: 64 * 1024,
            retry_after_min: Duration::from_secs(2),
            retry_after_max: Duration::from_secs(10),
            upgrade_rate_per_s: 1000,
            upgrade_burst: 2000,
            max_connection_lifetime: Duration::from_secs(30 * 60),
            connection_lifetime_spread: Duration::from_secs(5 * 60),
            goaway_grace: Duration::from_secs(5),
            drain_rate_per_s: 500,
            drain_window_max: Duration::from_secs(60),
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway setting {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl GatewayConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field, problem| Err(ConfigError { field, problem });
        // Upper bounds keep every deadline computation far from overflow.
        const HOUR: Duration = Duration::from_secs(3600);
        let bounded = [
            ("heartbeat_interval", self.heartbeat_interval, HOUR),
            ("subscribe_timeout", self.subscribe_timeout, HOUR),
            ("send_timeout", self.send_timeout, HOUR),
            ("shutdown_grace", self.shutdown_grace, HOUR),
            ("reconnect_spread", self.reconnect_spread, HOUR),
            ("retry_after_max", self.retry_after_max, HOUR),
            (
                "max_connection_lifetime",
                self.max_connection_lifetime,
                24 * HOUR,
            ),
            ("goaway_grace", self.goaway_grace, HOUR),
            ("drain_window_max", self.drain_window_max, HOUR),
        ];
        for (field, value, max) in bounded {
            if value > max {
                return fail(field, "must be at most one hour");
            }
        }
        if self.heartbeat_misses > 100 {
            return fail("heartbeat_misses", "must be at most 100");
        }
        if self.max_topics_per_connection > 1024 {
            return fail("max_topics_per_connection", "must be at most 1024");
        }
        if self.max_frame_bytes > 1024 * 1024 || self.read_buffer_bytes > 1024 * 1024 {
            return fail(
                "max_frame_bytes",
                "frame and read buffer sizes must be at most 1 MiB",
            );
        }
        if self.node_id.is_empty() || self.node_id.len() > 64 {
            return fail("node_id", "must be 1 to 64 characters");
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return fail("heartbeat_interval", "must be at least 10 ms");
        }
        if self.heartbeat_misses == 0 {
            return fail("heartbeat_misses", "must be at least 1");
        }
        if self.subscribe_timeout.is_zero() {
            return fail("subscribe_timeout", "must be positive");
        }
        if self.max_topics_per_connection == 0 {
            return fail("max_topics_per_connection", "must be at least 1");
        }
        if self.max_frame_bytes < 256 {
            return fail("max_frame_bytes", "must be at least 256");
        }
        if self.send_timeout.is_zero() {
            return fail("send_timeout", "must be positive");
        }
        if self.read_buffer_bytes < 64 {
            return fail("read_buffer_bytes", "must be at least 64");
        }
        if !(1..=1_000_000).contains(&self.max_unpublished_topics) {
            return fail("max_unpublished_topics", "must be 1 to 1000000");
        }
        if !(1..=1000).contains(&self.broadcasts_per_topic) {
            return fail("broadcasts_per_topic", "must be 1 to 1000");
        }
        if !(1..=256).contains(&self.max_concurrent_fanouts) {
            return fail("max_concurrent_fanouts", "must be 1 to 256");
        }
        if !(1..=1_000_000).contains(&self.max_waiting_topics) {
            return fail("max_waiting_topics", "must be 1 to 1000000");
        }
        // At most a million a second keeps the rate's interval at a microsecond or more.
        if !(1..=1_000_000).contains(&self.inbound_frames_per_s) {
            return fail("inbound_frames_per_s", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&self.inbound_frame_burst) {
            return fail("inbound_frame_burst", "must be 1 to 1000000");
        }
        if !(1024..=1 << 30).contains(&self.inbound_bytes_per_s) {
            return fail("inbound_bytes_per_s", "must be 1 KiB to 1 GiB");
        }
        if (self.inbound_byte_burst as usize) < self.max_frame_bytes
            || self.inbound_byte_burst > 1 << 30
        {
            return fail(
                "inbound_byte_burst",
                "must be at least max_frame_bytes (a whole frame must fit) and at most 1 GiB",
            );
        }
        if self.max_connections_per_device == 0 {
            return fail("max_connections_per_device", "must be at least 1");
        }
        if self.send_buffer_bytes != 0
            && !(4096..=16 * 1024 * 1024).contains(&self.send_buffer_bytes)
        {
            return fail(
                "send_buffer_bytes",
                "must be 0 (kernel autotuning) or 4096 to 16 MiB",
            );
        }
        self.validate_protection()
    }

    /// The bounds of admission, connection lifetime and drain.
    fn validate_protection(&self) -> Result<(), ConfigError> {
        let fail = |field, problem| Err(ConfigError { field, problem });
        if self.retry_after_min > self.retry_after_max {
            return fail("retry_after_min", "must be at most retry_after_max");
        }
        if !(1..=1_000_000).contains(&self.upgrade_rate_per_s) {
            return fail("upgrade_rate_per_s", "must be 1 to 1000000");
        }
        if !(1..=1_000_000).contains(&self.upgrade_burst) {
            return fail("upgrade_burst", "must be 1 to 1000000");
        }
        let lifetime = self.max_connection_lifetime;
        if !lifetime.is_zero() && lifetime < Duration::from_millis(100) {
            return fail(
                "max_connection_lifetime",
                "must be 0 (no limit) or at least 100 ms",
            );
        }
        if !lifetime.is_zero() && self.connection_lifetime_spread >= lifetime {
            return fail(
                "connection_lifetime_spread",
                "must be less than max_connection_lifetime",
            );
        }
        if !(1..=1_000_000).contains(&self.drain_rate_per_s) {
            return fail("drain_rate_per_s", "must be 1 to 1000000");
        }
        if self.drain_window_max + self.goaway_grace + CLOSE_HANDSHAKE_TIMEOUT > self.shutdown_grace
        {
            return fail(
                "shutdown_grace",
                "must hold drain_window_max + goaway_grace + 2 s (the close handshake): the sessions still open then are cut, so that a drain ends on time",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zeroes_are_not() {
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
        let config = GatewayConfig {
            heartbeat_misses: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("heartbeat_misses")
        );
        let config = GatewayConfig {
            max_unpublished_topics: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("max_unpublished_topics")
        );
    }

    #[test]
    fn the_per_connection_bounds_are_checked() {
        let field = |config: GatewayConfig| config.validate().map_err(|e| e.field);
        let default = GatewayConfig::default;
        let zero_rate = GatewayConfig {
            inbound_frames_per_s: 0,
            ..default()
        };
        assert_eq!(field(zero_rate), Err("inbound_frames_per_s"));
        let zero_burst = GatewayConfig {
            inbound_frame_burst: 0,
            ..default()
        };
        assert_eq!(field(zero_burst), Err("inbound_frame_burst"));
        let no_device_connections = GatewayConfig {
            max_connections_per_device: 0,
            ..default()
        };
        assert_eq!(
            field(no_device_connections),
            Err("max_connections_per_device")
        );
        let tiny_send_buffer = GatewayConfig {
            send_buffer_bytes: 100,
            ..default()
        };
        assert_eq!(field(tiny_send_buffer), Err("send_buffer_bytes"));
        let autotuned = GatewayConfig {
            send_buffer_bytes: 0,
            ..default()
        };
        assert_eq!(field(autotuned), Ok(()));
    }

    #[test]
    fn the_admission_lifetime_and_drain_bounds_are_checked() {
        let field = |config: GatewayConfig| config.validate().map_err(|e| e.field);
        let default = GatewayConfig::default;
        let inverted = GatewayConfig {
            retry_after_min: Duration::from_secs(11),
            ..default()
        };
        assert_eq!(field(inverted), Err("retry_after_min"));
        let no_upgrades = GatewayConfig {
            upgrade_rate_per_s: 0,
            ..default()
        };
        assert_eq!(field(no_upgrades), Err("upgrade_rate_per_s"));
        let no_burst = GatewayConfig {
            upgrade_burst: 0,
            ..default()
        };
        assert_eq!(field(no_burst), Err("upgrade_burst"));
        let spread_past_lifetime = GatewayConfig {
            max_connection_lifetime: Duration::from_secs(60),
            connection_lifetime_spread: Duration::from_secs(60),
            ..default()
        };
        assert_eq!(
            field(spread_past_lifetime),
            Err("connection_lifetime_spread")
        );
        let unlimited = GatewayConfig {
            max_connection_lifetime: Duration::ZERO,
            ..default()
        };
        assert_eq!(field(unlimited), Ok(()));
        let no_pace = GatewayConfig {
            drain_rate_per_s: 0,
            ..default()
        };
        assert_eq!(field(no_pace), Err("drain_rate_per_s"));
        // The drain's window and grace must fit the shutdown grace.
        let short_grace = GatewayConfig {
            shutdown_grace: Duration::from_secs(30),
            ..default()
        };
        assert_eq!(field(short_grace), Err("shutdown_grace"));
        let unpaced = GatewayConfig {
            shutdown_grace: Duration::from_secs(30),
            drain_window_max: Duration::ZERO,
            ..default()
        };
        assert_eq!(field(unpaced), Ok(()));
    }

    #[test]
    fn the_fan_out_bounds_are_checked() {
        let field = |config: GatewayConfig| config.validate().map_err(|e| e.field);
        let no_fanouts = GatewayConfig {
            max_concurrent_fanouts: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(field(no_fanouts), Err("max_concurrent_fanouts"));
        let no_waiting = GatewayConfig {
            max_waiting_topics: 0,
            ..GatewayConfig::default()
        };
        assert_eq!(field(no_waiting), Err("max_waiting_topics"));
    }
}
