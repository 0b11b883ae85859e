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
    /// How long a drain waits for sessions to close.
    pub shutdown_grace: Duration,
    /// The window over which goaway reconnect delays are spread.
    pub reconnect_spread: Duration,
    /// Capacity of each connection's WebSocket read buffer, in bytes. Client frames are small,
    /// so a small buffer keeps idle connections cheap; larger frames still arrive whole.
    pub read_buffer_bytes: usize,
    /// Most topics without a state (events not published yet, or names a device made up) that
    /// this node's connections may hold at once; a subscribe to one more gets `topic_limit`.
    /// Topics with a state are never refused. Default 1024: far more events than are created
    /// ahead of their first publish, while made-up names stay a bounded few hundred KiB.
    pub max_unpublished_topics: usize,
}

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
            shutdown_grace: Duration::from_secs(15),
            reconnect_spread: Duration::from_secs(5),
            read_buffer_bytes: 512,
            max_unpublished_topics: 1024,
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
        if self.send_timeout >= self.shutdown_grace {
            return fail(
                "send_timeout",
                "must be shorter than shutdown_grace, so a stuck write cannot outlast a drain",
            );
        }
        if self.read_buffer_bytes < 64 {
            return fail("read_buffer_bytes", "must be at least 64");
        }
        if !(1..=1_000_000).contains(&self.max_unpublished_topics) {
            return fail("max_unpublished_topics", "must be 1 to 1000000");
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
}
