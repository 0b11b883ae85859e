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
    /// Upgrades refused, one counter per reason (the total is `upgrades_refused`).
    pub upgrades_refused_rate: Arc<Counter>,
    pub upgrades_refused_capacity: Arc<Counter>,
    pub upgrades_refused_draining: Arc<Counter>,
    pub upgrades_refused_not_ready: Arc<Counter>,
    pub slow_consumer_closes: Arc<Counter>,
    pub max_lifetime_goaways: Arc<Counter>,
    pub drain_goaways: Arc<Counter>,
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
            upgrades_refused_rate: registry.counter(
                "ringside_upgrades_refused_rate_total",
                "Upgrades refused with 503 because they came faster than upgrade_rate_per_s (beyond upgrade_burst).",
            ),
            upgrades_refused_capacity: registry.counter(
                "ringside_upgrades_refused_capacity_total",
                "Upgrades refused with 503 because the node held max_connections.",
            ),
            upgrades_refused_draining: registry.counter(
                "ringside_upgrades_refused_draining_total",
                "Upgrades refused with 503 because the node is draining.",
            ),
            upgrades_refused_not_ready: registry.counter(
                "ringside_upgrades_refused_not_ready_total",
                "Upgrades refused with 503 because the node is not caught up with the bus.",
            ),
            slow_consumer_closes: registry.counter(
                "ringside_slow_consumer_closes_total",
                "Slow consumers whose goaway and close 4008 could still be written (the others were dropped).",
            ),
            max_lifetime_goaways: registry.counter(
                "ringside_max_lifetime_goaways_total",
                "Goaways sent because a connection reached its maximum lifetime.",
            ),
            drain_goaways: registry.counter(
                "ringside_drain_goaways_total",
                "Goaways sent by a paced drain.",
            ),
        }
    }
}
