//! A device that stays subscribed: it reconnects after any disconnect, spreading its retries
//! with jittered exponential backoff over a list of nodes, waits as long as a `goaway` asks,
//! and resubscribes with the newest version it holds, so it catches up exactly and never
//! reports a version twice or out of order.

use std::collections::HashMap;
use std::time::Duration;

use protocol::{EventState, ServerFrame, Topic};

use crate::{ClientError, ConnectOptions, DeviceConnection};

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// WebSocket URLs of the nodes, tried in turn.
    pub endpoints: Vec<String>,
    pub token: String,
    pub topics: Vec<Topic>,
    /// Send an ack for every state received.
    pub ack: bool,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub connect: ConnectOptions,
}

impl WatcherConfig {
    pub fn new(endpoints: Vec<String>, token: String, topics: Vec<Topic>) -> Self {
        Self {
            endpoints,
            token,
            topics,
            ack: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            connect: ConnectOptions::default(),
        }
    }
}

/// What the watcher saw.
#[derive(Debug)]
pub enum WatchEvent {
    Connected {
        node: String,
        endpoint: String,
    },
    /// A state newer than any seen before for its topic.
    State(EventState),
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// A node refused the device for a reason retrying cannot fix (bad token, bad address):
    /// the watcher stops.
    Refused {
        reason: String,
    },
}

#[derive(Debug)]
pub struct Watcher {
    config: WatcherConfig,
    versions: HashMap<Topic, u64>,
    connection: Option<DeviceConnection>,
    failures: u32,
    next_endpoint: usize,
    wait_before_connect: Duration,
}

impl Watcher {
    pub fn new(config: WatcherConfig) -> Self {
        let versions = config.topics.iter().map(|t| (t.clone(), 0)).collect();
        let next_endpoint = fastrand::usize(..config.endpoints.len().max(1));
        Self {
            config,
            versions,
            connection: None,
            failures: 0,
            next_endpoint,
            wait_before_connect: Duration::ZERO,
        }
    }

    /// The newest version seen of `topic`.
    pub fn version(&self, topic: &Topic) -> u64 {
        self.versions.get(topic).copied().unwrap_or(0)
    }

    /// Full-jitter exponential backoff: uniform in [0, min(max, initial * 2^failures)].
    fn backoff(&self) -> Duration {
        let ceiling = self
            .config
            .initial_backoff
            .saturating_mul(1 << self.failures.min(16))
            .min(self.config.max_backoff);
        let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=ceiling_ms))
    }

    fn disconnected(&mut self, reason: String, retry_in: Duration) -> WatchEvent {
        self.connection = None;
        self.wait_before_connect = retry_in;
        WatchEvent::Disconnected { reason, retry_in }
    }

    pub async fn next(&mut self) -> WatchEvent {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                return self.connect().await;
            };
            let frame = match connection.next_frame().await {
                Ok(frame) => frame,
                Err(error) => {
                    self.failures += 1;
                    let retry_in = self.backoff();
                    return self.disconnected(error.to_string(), retry_in);
                }
            };
            self.failures = 0;
            match frame {
                ServerFrame::State(state) => {
                    let held = self.versions.entry(state.topic.clone()).or_insert(0);
                    if state.version <= *held {
                        continue;
                    }
                    *held = state.version;
                    if self.config.ack {
                        // An ack is statistics only; a failed send shows up on the next read.
                        let _ack_is_best_effort = connection.ack(&state.topic, state.version).await;
                    }
                    return WatchEvent::State(state);
                }
                ServerFrame::Goaway {
                    reconnect_after_ms,
                    reason,
                } => {
                    let retry_in = Duration::from_millis(reconnect_after_ms);
                    let reason = format!("goaway: {}", reason.as_str());
                    self.next_endpoint += 1;
                    return self.disconnected(reason, retry_in);
                }
                ServerFrame::Error { code, message } => {
                    self.failures += 1;
                    let retry_in = self.backoff();
                    return self
                        .disconnected(format!("error {}: {message}", code.as_str()), retry_in);
                }
                ServerFrame::Welcome { .. }
                | ServerFrame::Subscribed { .. }
                | ServerFrame::Unsubscribed { .. } => {}
            }
        }
    }

    async fn connect(&mut self) -> WatchEvent {
        tokio::time::sleep(std::mem::take(&mut self.wait_before_connect)).await;
        let endpoints = &self.config.endpoints;
        if endpoints.is_empty() {
            return self.disconnected("no endpoints configured".into(), self.config.max_backoff);
        }
        let endpoint = endpoints[self.next_endpoint % endpoints.len()].clone();
        match self.open(&endpoint).await {
            Ok(connection) => {
                let node = connection.welcome.node.clone();
                self.connection = Some(connection);
                WatchEvent::Connected { node, endpoint }
            }
            Err(error) if error.is_permanent() => WatchEvent::Refused {
                reason: format!("{endpoint}: {error}"),
            },
            Err(error) => {
                self.failures += 1;
                self.next_endpoint += 1;
                let retry_in = self.backoff();
                self.disconnected(format!("{endpoint}: {error}"), retry_in)
            }
        }
    }

    async fn open(&self, endpoint: &str) -> Result<DeviceConnection, ClientError> {
        let mut connection =
            DeviceConnection::connect_with(endpoint, &self.config.token, &self.config.connect)
                .await?;
        let topics: Vec<(Topic, u64)> = self
            .config
            .topics
            .iter()
            .map(|t| (t.clone(), self.version(t)))
            .collect();
        connection.subscribe(&topics).await?;
        Ok(connection)
    }
}
