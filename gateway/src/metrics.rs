//! The gateway's metrics. Each counter is bumped where the event happens, next to its log line.
//! What a written state counts is the hub's [`broadcaster::DeliveryMetrics`]: the fan-out writes
//! most states itself.

use std::sync::Arc;

use telemetry::{Counter, Gauge, Registry};

#[derive(Debug)]
pub struct GatewayMetrics {
    pub connections: Arc<Gauge>,
    pub connections_opened: Arc<Counter>,
    pub upgrades_refused: Arc<Counter>,
    pub slow_consumer_disconnects: Arc<Counter>,
    pub protocol_errors: Arc<Counter>,
    pub token_expiry_closes: Arc<Counter>,
    pub rate_limit_closes: Arc<Counter>,
    pub device_limit_refusals: Arc<Counter>,
    pub bytes_received: Arc<Counter>,
    pub inbound_throttled: Arc<Counter>,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> Self {
        Self {
            connections: registry.gauge("ringside_connections", "Open WebSocket connections."),
            connections_opened: registry.counter(
                "ringside_connections_opened_total",
                "WebSocket connections accepted.",
            ),
            upgrades_refused: registry.counter(
                "ringside_upgrades_refused_total",
                "Upgrade requests refused (bad token, capacity, draining).",
            ),
            slow_consumer_disconnects: registry.counter(
                "ringside_slow_consumer_disconnects_total",
                "Connections dropped because a write did not complete within the send timeout.",
            ),
            protocol_errors: registry.counter(
                "ringside_protocol_errors_total",
                "Connections closed for a bad client frame.",
            ),
            token_expiry_closes: registry.counter(
                "ringside_token_expiry_closes_total",
                "Connections closed because their device token expired.",
            ),
            rate_limit_closes: registry.counter(
                "ringside_rate_limit_closes_total",
                "Connections closed for sending frames faster than the inbound rate limit.",
            ),
            device_limit_refusals: registry.counter(
                "ringside_device_limit_refusals_total",
                "Upgrades refused because the device already held its most connections here.",
            ),
            bytes_received: registry.counter(
                "ringside_bytes_received_total",
                "Bytes read from device sockets after the upgrade.",
            ),
            inbound_throttled: registry.counter(
                "ringside_inbound_throttled_total",
                "Times a connection's reading paused because it sent more bytes than its inbound byte rate.",
            ),
        }
    }
}
