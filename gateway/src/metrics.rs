//! The gateway's metrics. Each counter is bumped where the event happens, next to its log line.

use std::sync::Arc;

use telemetry::{Counter, Gauge, Histogram, Registry};

#[derive(Debug)]
pub struct GatewayMetrics {
    pub connections: Arc<Gauge>,
    pub connections_opened: Arc<Counter>,
    pub upgrades_refused: Arc<Counter>,
    pub messages_sent: Arc<Counter>,
    pub bytes_sent: Arc<Counter>,
    pub slow_consumer_disconnects: Arc<Counter>,
    pub protocol_errors: Arc<Counter>,
    pub publish_to_send: Arc<Histogram>,
    pub fanout: Arc<Histogram>,
    pub token_expiry_closes: Arc<Counter>,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            connections: registry.gauge("ringside_connections", "Open WebSocket connections."),
            connections_opened: registry
                .counter("ringside_connections_opened_total", "WebSocket connections accepted."),
            upgrades_refused: registry.counter(
                "ringside_upgrades_refused_total",
                "Upgrade requests refused (bad token, capacity, draining).",
            ),
            messages_sent: registry
                .counter("ringside_messages_sent_total", "State frames written to sockets."),
            bytes_sent: registry
                .counter("ringside_bytes_sent_total", "Bytes of state frames written to sockets."),
            slow_consumer_disconnects: registry.counter(
                "ringside_slow_consumer_disconnects_total",
                "Connections dropped because a write did not complete within the send timeout.",
            ),
            protocol_errors: registry.counter(
                "ringside_protocol_errors_total",
                "Connections closed for a bad client frame.",
            ),
            publish_to_send: registry.latency_histogram(
                "ringside_publish_to_send_seconds",
                "Time from the control plane accepting a publish to the state being written to a socket (live fan-out only; millisecond resolution).",
            ),
            fanout: registry.latency_histogram(
                "ringside_fanout_seconds",
                "Time from this node encoding a state to writing it to a socket (live fan-out only).",
            ),
            token_expiry_closes: registry.counter(
                "ringside_token_expiry_closes_total",
                "Connections closed because their device token expired.",
            ),
        }
    }
}
