//! Messages between the coordinator and its workers, one JSON object per line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What each simulated device connects to and how it subscribes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceTarget {
    /// Ringside protocol v1: a device token, `subscribe` to an event topic, `state` frames.
    Ringside {
        ws_url: String,
        topic: String,
        device_token_secret: String,
    },
    /// NATS over WebSocket: `CONNECT`, `SUB <subject>`, `MSG` frames whose payload carries the
    /// version and `published_at_ms`.
    Nats { ws_url: String, subject: String },
    /// Pushpin over WebSocket: the URL's path names the channel; text frames carry the
    /// version and `published_at_ms`.
    Pushpin { ws_url: String },
}

/// What a worker is asked to do (passed as one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub worker: usize,
    pub target: DeviceTarget,
    pub connections: usize,
    /// Keep every device connected across disconnects (reconnect with jittered backoff,
    /// honouring goaway) and report each (re)connection's time: the storm scenario.
    #[serde(default)]
    pub reconnect: bool,
    /// Source addresses to spread connections over.
    pub source_addresses: Vec<std::net::IpAddr>,
    /// Connections opened per second by this worker.
    pub connect_rate: f64,
    pub read_buffer_bytes: usize,
    /// Ringside devices ack every state, as apps do for the broadcast report.
    #[serde(default)]
    pub ack: bool,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerReport {
    /// Every connection is open and subscribed (or failed).
    Ready {
        connected: usize,
        failed: usize,
        first_error: Option<String>,
    },
    /// Periodic count of states received.
    Progress {
        /// Devices connected and subscribed so far.
        #[serde(default)]
        connected: usize,
        received: u64,
    },
    /// Final samples: per version, the latency of each delivery in microseconds.
    Done {
        samples: BTreeMap<u64, Vec<u64>>,
        disconnected: usize,
        /// With `reconnect`: when each (re)connection happened, in ms since the Unix epoch.
        #[serde(default)]
        connects_ms: Vec<u64>,
    },
}

/// Coordinator → worker, on the worker's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Report samples and exit.
    Finish,
}
