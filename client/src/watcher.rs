//! A device that stays subscribed: it reconnects after any disconnect over a list of nodes and
//! resubscribes with the newest version it holds, so it catches up exactly and never reports a
//! version twice or out of order.
//!
//! When it reconnects:
//! - after a `goaway`: once `reconnect_after_ms` has passed (the server spread it already), to
//!   the next node; a goaway is not a failure and does not grow the backoff;
//! - after a refused upgrade with `Retry-After` (`503`, `429`): that long, plus the next
//!   backoff delay on top, so that devices told the same whole second do not all return in it;
//! - after any other failure: the next backoff delay ([`crate::backoff`], decorrelated jitter
//!   between `initial_backoff` and `max_backoff`).
//!
//! A connection that stayed open `stable_after` resets the backoff: its loss is a new incident,
//! not the next failure of a series.

use std::collections::HashMap;
use std::time::Duration;

use protocol::{EventState, ServerFrame, Topic};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{ConnectFailure, ConnectOptions, DeviceConnection};

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// WebSocket URLs of the nodes, tried in turn.
    pub endpoints: Vec<String>,
    pub token: String,
    pub topics: Vec<Topic>,
    /// Send an ack for every state received.
    pub ack: bool,
    /// The shortest reconnect delay (the backoff's base).
    pub initial_backoff: Duration,
    /// The longest delay the backoff draws (a `Retry-After` or a goaway may ask for longer).
    pub max_backoff: Duration,
    /// A connection open at least this long resets the backoff.
    pub stable_after: Duration,
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
            stable_after: Duration::from_secs(30),
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
    /// When the open connection was established.
    connected_at: Option<Instant>,
    backoff: Backoff,
    rng: fastrand::Rng,
    next_endpoint: usize,
    wait_before_connect: Duration,
}

impl Watcher {
    pub fn new(config: WatcherConfig) -> Self {
        let versions = config.topics.iter().map(|t| (t.clone(), 0)).collect();
        let mut rng = fastrand::Rng::new();
        let next_endpoint = rng.usize(..config.endpoints.len().max(1));
        let backoff = Backoff::new(config.initial_backoff, config.max_backoff);
        Self {
            config,
            versions,
            connection: None,
            connected_at: None,
            backoff,
            rng,
            next_endpoint,
            wait_before_connect: Duration::ZERO,
        }
    }

    /// The newest version seen of `topic`.
    pub fn version(&self, topic: &Topic) -> u64 {
        self.versions.get(topic).copied().unwrap_or(0)
    }

    /// The next backoff delay after a failure.
    fn backoff(&mut self) -> Duration {
        self.backoff.next_delay(&mut self.rng)
    }

    /// Forgets the connection; resets the backoff when it had lasted.
    fn connection_ended(&mut self) {
        self.connection = None;
        if self
            .connected_at
            .take()
            .is_some_and(|at| at.elapsed() >= self.config.stable_after)
        {
            self.backoff.reset();
        }
    }

    fn disconnected(&mut self, reason: String, retry_in: Duration) -> WatchEvent {
        self.connection_ended();
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
                    self.connection_ended();
                    let retry_in = self.backoff();
                    return self.disconnected(error.to_string(), retry_in);
                }
            };
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
                    self.connection_ended();
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
                self.connected_at = Some(Instant::now());
                WatchEvent::Connected { node, endpoint }
            }
            Err(failure) if failure.error.is_permanent() => WatchEvent::Refused {
                reason: format!("{endpoint}: {}", failure.error),
            },
            Err(failure) => {
                self.next_endpoint += 1;
                // The server's Retry-After is a floor; the backoff delay goes on top of it.
                let retry_in = failure.retry_after.unwrap_or_default() + self.backoff();
                self.disconnected(format!("{endpoint}: {}", failure.error), retry_in)
            }
        }
    }

    async fn open(&self, endpoint: &str) -> Result<DeviceConnection, ConnectFailure> {
        let mut connection =
            DeviceConnection::try_connect(endpoint, &self.config.token, &self.config.connect)
                .await?;
        let topics: Vec<(Topic, u64)> = self
            .config
            .topics
            .iter()
            .map(|t| (t.clone(), self.version(t)))
            .collect();
        connection
            .subscribe(&topics)
            .await
            .map_err(|error| ConnectFailure {
                error,
                retry_after: None,
            })?;
        Ok(connection)
    }
}
