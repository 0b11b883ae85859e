//! The gateway's metrics. Each counter is bumped where the event happens, next to its log line.
//! What a written state counts is the hub's [`ringside_broadcaster::DeliveryMetrics`]: the fan-out writes
//! most states itself.

use std::sync::Arc;

use ringside_telemetry::{Counter, Gauge, Registry};

use crate::GatewayError;

#[derive(Debug)]
pub struct GatewayMetrics {
    pub connections: Arc<Gauge>,
    pub connections_opened: Arc<Counter>,
    /// `ringside_upgrades_refused_total{reason}`, one series per refusal: their sum is every
    /// upgrade refused.
    pub upgrades_refused: UpgradeRefusals,
    pub protocol_errors: Arc<Counter>,
    /// `ringside_connections_closed_total{reason}`: connections the node closed for what the
    /// device did (or failed to do), counted when the node decides to close.
    pub closes: ConnectionCloses,
    /// Of the slow consumers, the ones whose goaway and close 4008 could still be written.
    pub slow_consumer_closes: Arc<Counter>,
    pub bytes_received: Arc<Counter>,
    pub inbound_throttled: Arc<Counter>,
    /// `ringside_goaways_total{reason}`: goaways that tell a healthy connection to move.
    pub goaways: Goaways,
}

/// The series of `ringside_upgrades_refused_total`, one per [`GatewayError`] variant.
#[derive(Debug)]
pub struct UpgradeRefusals {
    pub unauthorized: Arc<Counter>,
    pub not_upgradable: Arc<Counter>,
    pub capacity: Arc<Counter>,
    pub rate: Arc<Counter>,
    pub draining: Arc<Counter>,
    pub not_ready: Arc<Counter>,
    pub device_limit: Arc<Counter>,
}

/// The series of `ringside_connections_closed_total`.
#[derive(Debug)]
pub struct ConnectionCloses {
    pub rate_limited: Arc<Counter>,
    pub token_expired: Arc<Counter>,
    /// Every slow consumer, whether its close could be written or it was dropped.
    pub slow_consumer: Arc<Counter>,
}

/// The series of `ringside_goaways_total`.
#[derive(Debug)]
pub struct Goaways {
    pub drain: Arc<Counter>,
    pub max_lifetime: Arc<Counter>,
}

impl GatewayMetrics {
    pub fn new(registry: &Registry) -> Self {
        let [
            unauthorized,
            not_upgradable,
            capacity,
            rate,
            draining,
            not_ready,
            device_limit,
        ] = registry.counter_family(
            "ringside_upgrades_refused_total",
            "Upgrade requests refused, by reason: a bad token (401), not an upgrade (400), \
                 at max_connections, over upgrade_rate_per_s, draining, not caught up with the \
                 bus (503), the device at max_connections_per_device (429).",
            "reason",
            [
                "unauthorized",
                "not_upgradable",
                "capacity",
                "rate",
                "draining",
                "not_ready",
                "device_limit",
            ],
        );
        let [rate_limited, token_expired, slow_consumer] = registry.counter_family(
            "ringside_connections_closed_total",
            "Connections the node closed, by reason: frames above the inbound rate limit, an \
             expired device token, a write that did not complete within the send timeout.",
            "reason",
            ["rate_limited", "token_expired", "slow_consumer"],
        );
        let [drain, max_lifetime] = registry.counter_family(
            "ringside_goaways_total",
            "Goaways sent to move a connection, by reason: a paced drain, the connection's \
             maximum lifetime.",
            "reason",
            ["drain", "max_lifetime"],
        );
        Self {
            connections: registry.gauge("ringside_connections", "Open WebSocket connections."),
            connections_opened: registry.counter(
                "ringside_connections_opened_total",
                "WebSocket connections accepted.",
            ),
            upgrades_refused: UpgradeRefusals {
                unauthorized,
                not_upgradable,
                capacity,
                rate,
                draining,
                not_ready,
                device_limit,
            },
            protocol_errors: registry.counter(
                "ringside_protocol_errors_total",
                "Connections closed for a bad client frame.",
            ),
            closes: ConnectionCloses {
                rate_limited,
                token_expired,
                slow_consumer,
            },
            slow_consumer_closes: registry.counter(
                "ringside_slow_consumer_closes_total",
                "Slow consumers whose goaway and close 4008 could still be written (the others were dropped).",
            ),
            bytes_received: registry.counter(
                "ringside_bytes_received_total",
                "Bytes read from device sockets after the upgrade.",
            ),
            inbound_throttled: registry.counter(
                "ringside_inbound_throttled_total",
                "Times a connection's reading paused because it sent more bytes than its inbound byte rate.",
            ),
            goaways: Goaways {
                drain,
                max_lifetime,
            },
        }
    }
}

impl UpgradeRefusals {
    /// The series that counts `error`.
    pub(crate) fn of(&self, error: &GatewayError) -> &Counter {
        match error {
            GatewayError::Unauthorized(_) => &self.unauthorized,
            GatewayError::NotUpgradable(_) => &self.not_upgradable,
            GatewayError::AtCapacity => &self.capacity,
            GatewayError::Overloaded => &self.rate,
            GatewayError::Draining => &self.draining,
            GatewayError::NotReady => &self.not_ready,
            GatewayError::DeviceAtLimit { .. } => &self.device_limit,
        }
    }
}
