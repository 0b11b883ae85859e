//! A device that stays subscribed: it reconnects after any disconnect over a list of nodes and
//! resubscribes with the newest stage-state version it holds, so it catches up exactly and never
//! reports a version twice or out of order within a lane.
//!
//! It keeps the newest version per topic and lane (`docs/PROTOCOL.md`, Lanes): a stage state is
//! judged only against stage states and a best-effort message only against best-effort messages,
//! because a stage state repaired from the event store may follow a newer best-effort message.
//! `since` and acks name stage-state versions only.
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

use ringside_protocol::{EventState, ServerFrame, Topic};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{ConnectFailure, ConnectOptions, DeviceConnection};

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// WebSocket URLs of the nodes, tried in turn.
    pub endpoints: Vec<String>,
    pub token: String,
    pub topics: Vec<Topic>,
    /// Send an ack for every stage state received (best-effort messages are never acked).
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
    /// A state newer than any seen before for its topic in its lane. `state.priority` tells the
    /// lane: `Critical` is a stage state (the event's current state); `BestEffort` is a
    /// best-effort message, extra data to apply next to the held stage state, not a stage change.
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

/// The newest version held of one topic, per lane.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LaneVersions {
    stage: u64,
    best_effort: u64,
}

/// Records `state` if it is newer than the newest held of its topic in its own lane; false if
/// the watcher already had it (or a newer one of that lane).
fn accept(versions: &mut HashMap<Topic, LaneVersions>, state: &EventState) -> bool {
    let held = versions.entry(state.topic.clone()).or_default();
    let lane = if state.priority.is_critical() {
        &mut held.stage
    } else {
        &mut held.best_effort
    };
    if state.version <= *lane {
        return false;
    }
    *lane = state.version;
    true
}

/// A device subscribed to its topics across disconnects: [`Watcher::next`] connects, reports
/// every new state once, and after a goaway or a failure reconnects and resubscribes with the
/// newest version it holds as `since`.
///
/// Here against a stand-in for a node (hidden: it welcomes, sends version 3 of the event, then
/// a goaway, and checks what the device resubscribes with):
///
/// ```
/// use ringside_client::watcher::WatchEvent;
/// use ringside_client::{Watcher, WatcherConfig};
/// use ringside_protocol::Topic;
///
/// # #[tokio::main]
/// # async fn main() {
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// # let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
/// # let node = tokio::spawn(stand_in_node(listener));
/// let topic = Topic::parse("event:fight-night").expect("a valid topic name");
/// // A device token, e.g. from `ringside token --device tv-1 --profile p-1` (this node takes any).
/// let token = "device-token".to_string();
/// let mut watcher = Watcher::new(WatcherConfig::new(vec![url], token, vec![topic.clone()]));
///
/// assert!(matches!(watcher.next().await, WatchEvent::Connected { .. }));
/// let WatchEvent::State(state) = watcher.next().await else { panic!("expected a state") };
/// assert_eq!(state.version, 3);
/// assert_eq!(watcher.version(&topic), 3);
///
/// // The node goes away; the watcher reconnects and subscribes `since` 3, so it is sent only
/// // what is newer.
/// assert!(matches!(watcher.next().await, WatchEvent::Disconnected { .. }));
/// assert!(matches!(watcher.next().await, WatchEvent::Connected { .. }));
/// # assert_eq!(node.await.unwrap(), 3);
/// # }
/// #
/// # /// Two connections: the first is sent version 3 and a goaway; returns the second's `since`.
/// # async fn stand_in_node(listener: tokio::net::TcpListener) -> u64 {
/// #     use futures_util::{SinkExt, StreamExt};
/// #     use ringside_protocol::frame::GoawayReason;
/// #     use ringside_protocol::{ClientFrame, EventState, Payload, Priority, ServerFrame, Stage};
/// #     use tokio_tungstenite::tungstenite::Message;
/// #     let mut since = 0;
/// #     for round in 0..2 {
/// #         let (tcp, _) = listener.accept().await.unwrap();
/// #         let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
/// #         let send = |frame: ServerFrame| Message::Text(frame.encode().into());
/// #         ws.send(send(ServerFrame::Welcome {
/// #             connection_id: format!("c{round}"),
/// #             node: "stand-in".into(),
/// #             heartbeat_ms: 25_000,
/// #             protocol: ringside_protocol::PROTOCOL_VERSION,
/// #         }))
/// #         .await
/// #         .unwrap();
/// #         let topics = loop {
/// #             let Message::Text(text) = ws.next().await.unwrap().unwrap() else { continue };
/// #             if let ClientFrame::Subscribe { topics } = ClientFrame::decode(&text).unwrap() {
/// #                 break topics;
/// #             }
/// #         };
/// #         since = topics[0].since;
/// #         if round == 1 {
/// #             break;
/// #         }
/// #         let state = EventState {
/// #             topic: topics[0].topic.clone(),
/// #             version: 3,
/// #             stage: Stage::parse("LIVE").unwrap(),
/// #             published_at_ms: ringside_protocol::unix_now_ms(),
/// #             payload: Payload::empty(),
/// #             priority: Priority::Critical,
/// #             fetch_within_ms: None,
/// #         };
/// #         ws.send(send(ServerFrame::State(state))).await.unwrap();
/// #         let goaway = ServerFrame::Goaway { reconnect_after_ms: 0, reason: GoawayReason::Shutdown };
/// #         ws.send(send(goaway)).await.unwrap();
/// #         let _ = ws.close(None).await;
/// #     }
/// #     since
/// # }
/// ```
#[derive(Debug)]
pub struct Watcher {
    config: WatcherConfig,
    versions: HashMap<Topic, LaneVersions>,
    connection: Option<DeviceConnection>,
    /// When the open connection was established.
    connected_at: Option<Instant>,
    backoff: Backoff,
    rng: fastrand::Rng,
    next_endpoint: usize,
    wait_before_connect: Duration,
    /// States a node sent that were not newer than the one held in their lane.
    stale_states: u64,
}

impl Watcher {
    pub fn new(config: WatcherConfig) -> Self {
        let versions = config
            .topics
            .iter()
            .map(|t| (t.clone(), LaneVersions::default()))
            .collect();
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
            stale_states: 0,
        }
    }

    /// How many states nodes sent that were not newer than the one the watcher held in their
    /// lane (not reported): a node that resends or goes back. Resubscribing with `since`, a
    /// correct node sends none.
    pub fn stale_states(&self) -> u64 {
        self.stale_states
    }

    /// The newest stage-state version seen of `topic`: what the watcher resubscribes with as
    /// `since`.
    pub fn version(&self, topic: &Topic) -> u64 {
        self.versions.get(topic).map_or(0, |held| held.stage)
    }

    /// The newest best-effort message version seen of `topic`.
    pub fn best_effort_version(&self, topic: &Topic) -> u64 {
        self.versions.get(topic).map_or(0, |held| held.best_effort)
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
                    if !accept(&mut self.versions, &state) {
                        self.stale_states += 1;
                        continue;
                    }
                    // Acks name stage-state versions; the server ignores best-effort ones.
                    if self.config.ack && state.priority.is_critical() {
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

#[cfg(test)]
mod tests {
    use ringside_protocol::{Payload, Priority, Stage};

    use super::*;

    fn state(topic: &Topic, version: u64, priority: Priority) -> EventState {
        EventState {
            topic: topic.clone(),
            version,
            stage: Stage::parse("LIVE").unwrap(),
            published_at_ms: 0,
            payload: Payload::empty(),
            priority,
            fetch_within_ms: None,
        }
    }

    #[test]
    fn each_lane_is_judged_on_its_own_and_since_is_the_stage_state_version() {
        let topic = Topic::parse("event:lanes").unwrap();
        let mut watcher = Watcher::new(WatcherConfig::new(
            vec![],
            String::new(),
            vec![topic.clone()],
        ));
        assert!(accept(
            &mut watcher.versions,
            &state(&topic, 3, Priority::Critical)
        ));
        assert!(accept(
            &mut watcher.versions,
            &state(&topic, 7, Priority::BestEffort)
        ));
        // A stage state repaired from the event store, older than the best-effort message but
        // newer than the last stage state: it must not be ignored.
        assert!(accept(
            &mut watcher.versions,
            &state(&topic, 5, Priority::Critical)
        ));
        assert_eq!(
            watcher.version(&topic),
            5,
            "since is the stage-state version"
        );
        assert_eq!(watcher.best_effort_version(&topic), 7);
        // Each lane still drops what it already holds.
        assert!(!accept(
            &mut watcher.versions,
            &state(&topic, 5, Priority::Critical)
        ));
        assert!(!accept(
            &mut watcher.versions,
            &state(&topic, 6, Priority::BestEffort)
        ));
        assert!(accept(
            &mut watcher.versions,
            &state(&topic, 8, Priority::BestEffort)
        ));
        assert_eq!(watcher.version(&topic), 5);
    }
}
