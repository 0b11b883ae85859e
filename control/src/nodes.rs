//! The node registry in Redis: every gateway node reports itself every
//! [`HEARTBEAT_INTERVAL`]; a report lives [`NODE_TTL`], so a node that dies without a word drops
//! out by itself, and a node that stops removes its own entry. `GET /v1/admin/stats` on any
//! control instance aggregates the live entries.
//!
//! Keys, under the deployment's prefix:
//! - `node:<id>`: the node's last report (JSON), expiring after [`NODE_TTL`].
//! - `nodes`: a sorted set of node ids (scored by their last report), so that listing does not
//!   scan the keyspace; members whose report expired are pruned on every listing.
//! - `drain-request:<id>`: an operator asked the node to drain (`POST
//!   /v1/admin/nodes/{id}/drain`); the node picks it up on its next report, leaves the
//!   registry and starts its paced drain. Expires after [`DRAIN_REQUEST_TTL`].
//! - `draining:<id>` and the sorted set `draining`: a draining node's report with its drain
//!   progress, written on every heartbeat instead of `node:<id>` (the node is out of the
//!   registry, so nothing routes devices to it, and stats still show how its drain goes).
//! - `node-broadcasts:<id>`: the node's per-version delivery records for the broadcast
//!   report, a hash with one field per topic ([`TopicBroadcasts`] as JSON): only the topics
//!   whose records changed are written, every [`BROADCAST_REPORT_INTERVAL`], and one event's
//!   report reads only its own field. The key expires after [`NODE_TTL`] like `node:<id>`
//!   (refreshed at least every heartbeat) and is deleted when the node stops. A draining node
//!   keeps writing it: it still delivers.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::BoxFuture;
use ringside_protocol::Topic;
use ringside_protocol::admin::{
    BroadcastRecord, DrainAnswer, DrainState, NodeBroadcastRecords, NodeStats, Stats, TopicStats,
    TopicVersion,
};
use serde::{Deserialize, Serialize};

use crate::broadcasts::BroadcastSource;
use crate::{ControlError, StatsSource};

/// How often a node reports.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// How often a node writes its broadcast records when they changed: a live reach curve moves
/// at this pace.
pub const BROADCAST_REPORT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a report counts: a node missing this many heartbeats in a row is gone.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How long a drain request waits for its node to pick it up (a node that never reports again
/// is gone anyway).
pub const DRAIN_REQUEST_TTL: Duration = Duration::from_secs(60);

/// What a node reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: NodeStats,
    pub topics: Vec<TopicStats>,
    /// The node's clock when it reported, in ms since the Unix epoch.
    pub reported_at_ms: u64,
}

/// The registry's keys in Redis.
#[derive(Clone)]
pub struct NodeRegistry {
    connection: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for NodeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRegistry")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NodeRegistry {
    pub fn new(connection: redis::aio::ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            connection,
            prefix: prefix.into(),
        }
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn set_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    fn drain_request_key(&self, node: &str) -> String {
        format!("{}drain-request:{node}", self.prefix)
    }

    fn draining_key(&self, node: &str) -> String {
        format!("{}draining:{node}", self.prefix)
    }

    fn draining_set_key(&self) -> String {
        format!("{}draining", self.prefix)
    }

    fn broadcasts_key(&self, node: &str) -> String {
        format!("{}node-broadcasts:{node}", self.prefix)
    }

    /// Writes the records of `changed` topics of `node`, and keeps its records for another
    /// [`NODE_TTL`]. With `replace`, whatever the key held before goes first (a node that
    /// starts, or that lost track of what Redis holds). Returns whether the key was there
    /// before this write: when it was not although the node wrote it before (Redis lost it),
    /// the node writes every topic again.
    pub async fn report_broadcasts(
        &self,
        node: &str,
        changed: &[&TopicBroadcasts],
        replace: bool,
    ) -> Result<bool, redis::RedisError> {
        let key = self.broadcasts_key(node);
        let ttl_ms = NODE_TTL.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("PEXPIRE").arg(&key).arg(ttl_ms);
        if replace {
            pipe.cmd("DEL").arg(&key).ignore();
        }
        if !changed.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(&key);
            for topic in changed {
                hset.arg(topic.current.topic.as_str()).arg(json(*topic)?);
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        }
        let mut connection = self.connection.clone();
        let (existed,): (bool,) = pipe.query_async(&mut connection).await?;
        Ok(existed)
    }

    /// Deletes a node's broadcast records (a node that stops).
    pub async fn remove_broadcasts(&self, node: &str) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        redis::cmd("DEL")
            .arg(self.broadcasts_key(node))
            .query_async::<()>(&mut connection)
            .await
    }

    /// The ids of every live or draining node. Records of a node in neither set are not read
    /// (a node that left the registry for good).
    async fn reporting_nodes(&self) -> Result<Vec<String>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let mut ids: Vec<String> = Vec::new();
        for set in [self.set_key(), self.draining_set_key()] {
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&set)
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await?;
            ids.extend(members);
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The broadcast records of every live or draining node, every topic.
    pub async fn broadcast_records(&self) -> Result<Vec<NodeBroadcastRecords>, redis::RedisError> {
        let ids = self.reporting_nodes().await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.broadcasts_key(id));
        }
        let mut connection = self.connection.clone();
        let fields: Vec<Vec<(String, String)>> = pipe.query_async(&mut connection).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .map(|(node, fields)| node_records(node, fields.into_iter().map(|(_, json)| json)))
            .collect())
    }

    /// The records of `topic` alone, from every live or draining node that has any.
    pub async fn topic_broadcast_records(
        &self,
        topic: &Topic,
    ) -> Result<Vec<NodeBroadcastRecords>, redis::RedisError> {
        let ids = self.reporting_nodes().await?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGET")
                .arg(self.broadcasts_key(id))
                .arg(topic.as_str());
        }
        let mut connection = self.connection.clone();
        let fields: Vec<Option<String>> = pipe.query_async(&mut connection).await?;
        Ok(ids
            .into_iter()
            .zip(fields)
            .filter_map(|(node, json)| json.map(|json| node_records(node, [json])))
            .collect())
    }

    /// Writes `report` for [`NODE_TTL`].
    pub async fn report(&self, report: &NodeReport) -> Result<(), redis::RedisError> {
        let json = report_json(report)?;
        let ttl_ms = NODE_TTL.as_millis() as u64;
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.node_key(&report.node.node))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("ZADD")
            .arg(self.set_key())
            .arg(report.reported_at_ms)
            .arg(&report.node.node)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
    }

    /// Removes `node` (a node that stops says so instead of waiting to expire).
    pub async fn remove(&self, node: &str) -> Result<(), redis::RedisError> {
        self.forget(self.node_key(node), self.set_key(), node).await
    }

    /// Every live node's last report, by node id. Liveness is the report key's TTL, kept by
    /// Redis's clock, so nodes' clocks need not agree; members whose report expired are pruned.
    pub async fn reports(&self) -> Result<Vec<NodeReport>, redis::RedisError> {
        self.reports_in(self.set_key(), |id| self.node_key(id))
            .await
    }

    /// Every draining node's last report (with its drain progress).
    pub async fn draining_reports(&self) -> Result<Vec<NodeReport>, redis::RedisError> {
        self.reports_in(self.draining_set_key(), |id| self.draining_key(id))
            .await
    }

    /// Records that an operator asked `node` to drain. `None` when no such node reports (or
    /// drains); a node already draining answers with its progress, and a request already
    /// waiting is left as it is.
    pub async fn request_drain(
        &self,
        node: &str,
    ) -> Result<Option<(DrainAnswer, bool)>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let draining: Option<String> = redis::cmd("GET")
            .arg(self.draining_key(node))
            .query_async(&mut connection)
            .await?;
        if let Some(report) =
            draining.and_then(|json| serde_json::from_str::<NodeReport>(&json).ok())
        {
            let answer = DrainAnswer {
                node: node.to_owned(),
                state: DrainState::Draining,
                progress: report.node.drain,
            };
            return Ok(Some((answer, false)));
        }
        let live: bool = redis::cmd("EXISTS")
            .arg(self.node_key(node))
            .query_async(&mut connection)
            .await?;
        if !live {
            return Ok(None);
        }
        let recorded: Option<String> = redis::cmd("SET")
            .arg(self.drain_request_key(node))
            .arg(ringside_protocol::unix_now_ms())
            .arg("NX")
            .arg("PX")
            .arg(DRAIN_REQUEST_TTL.as_millis() as u64)
            .query_async(&mut connection)
            .await?;
        let answer = DrainAnswer {
            node: node.to_owned(),
            state: DrainState::Requested,
            progress: None,
        };
        Ok(Some((answer, recorded.is_some())))
    }

    /// Whether an operator asked `node` to drain.
    pub async fn drain_requested(&self, node: &str) -> Result<bool, redis::RedisError> {
        let mut connection = self.connection.clone();
        redis::cmd("EXISTS")
            .arg(self.drain_request_key(node))
            .query_async(&mut connection)
            .await
    }

    /// Writes a draining node's report (with its drain progress) for [`NODE_TTL`], out of the
    /// registry: its `node:<id>` entry and any drain request go.
    pub async fn report_drain(&self, report: &NodeReport) -> Result<(), redis::RedisError> {
        let json = report_json(report)?;
        let node = &report.node.node;
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.node_key(node))
            .arg(self.drain_request_key(node))
            .ignore()
            .cmd("ZREM")
            .arg(self.set_key())
            .arg(node)
            .ignore()
            .cmd("SET")
            .arg(self.draining_key(node))
            .arg(json)
            .arg("PX")
            .arg(NODE_TTL.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.draining_set_key())
            .arg(report.reported_at_ms)
            .arg(node)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
    }

    /// Removes a drained node's drain report (when its process stops).
    pub async fn remove_drain(&self, node: &str) -> Result<(), redis::RedisError> {
        self.forget(self.draining_key(node), self.draining_set_key(), node)
            .await
    }

    /// Deletes `node`'s report under `key` and its member of the sorted set `set`, atomically.
    async fn forget(&self, key: String, set: String, node: &str) -> Result<(), redis::RedisError> {
        let mut connection = self.connection.clone();
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(key)
            .ignore()
            .cmd("ZREM")
            .arg(set)
            .arg(node)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
    }

    /// The reports of the members of the sorted set `set`, each under `key(id)`.
    async fn reports_in(
        &self,
        set: String,
        key: impl Fn(&str) -> String,
    ) -> Result<Vec<NodeReport>, redis::RedisError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(&set)
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
        let reports: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut connection)
            .await?;
        let expired: Vec<&String> = ids
            .iter()
            .zip(&reports)
            .filter(|(_, report)| report.is_none())
            .map(|(id, _)| id)
            .collect();
        if !expired.is_empty() {
            let () = redis::cmd("ZREM")
                .arg(&set)
                .arg(&expired)
                .query_async::<i64>(&mut connection)
                .await
                .map(|_| ())?;
        }
        let mut live: Vec<NodeReport> = reports
            .into_iter()
            .flatten()
            .filter_map(|json| match serde_json::from_str(&json) {
                Ok(report) => Some(report),
                Err(error) => {
                    tracing::warn!(%error, "skipping an unreadable node report");
                    None
                }
            })
            .collect();
        live.sort_by(|a, b| a.node.node.cmp(&b.node.node));
        Ok(live)
    }
}

/// Sums node reports into the admin API's stats: subscribers add up across nodes; a topic's
/// version is the newest any node holds, and its acks are those of the nodes holding it.
pub fn aggregate(reports: Vec<NodeReport>, now_ms: u64) -> Stats {
    let mut topics: BTreeMap<ringside_protocol::Topic, TopicStats> = BTreeMap::new();
    let mut nodes = Vec::with_capacity(reports.len());
    for report in reports {
        for topic in report.topics {
            let entry = topics
                .entry(topic.topic.clone())
                .or_insert_with(|| TopicStats {
                    topic: topic.topic.clone(),
                    subscribers: 0,
                    version: 0,
                    acks: 0,
                });
            entry.subscribers += topic.subscribers;
            if topic.version > entry.version {
                entry.version = topic.version;
                entry.acks = 0;
            }
            if topic.version == entry.version {
                entry.acks += topic.acks;
            }
        }
        nodes.push(NodeStats {
            last_seen_ms_ago: Some(now_ms.saturating_sub(report.reported_at_ms)),
            ..report.node
        });
    }
    Stats {
        nodes,
        topics: topics.into_values().collect(),
    }
}

/// Stats of a multi-node deployment, from the registry.
#[derive(Debug)]
pub struct ClusterStats {
    pub registry: NodeRegistry,
}

impl BroadcastSource for ClusterStats {
    fn records(&self) -> BoxFuture<'_, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        Box::pin(async move {
            self.registry
                .broadcast_records()
                .await
                .map_err(registry_unavailable)
        })
    }

    /// Only `topic`'s field of each node's hash is read.
    fn topic_records<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        Box::pin(async move {
            self.registry
                .topic_broadcast_records(topic)
                .await
                .map_err(registry_unavailable)
        })
    }
}

fn registry_unavailable(error: redis::RedisError) -> ControlError {
    tracing::warn!(%error, "node registry unavailable");
    ControlError::StoreUnavailable
}

impl StatsSource for ClusterStats {
    fn stats(&self) -> BoxFuture<'_, Result<Stats, ControlError>> {
        Box::pin(async move {
            let mut reports = self
                .registry
                .reports()
                .await
                .map_err(registry_unavailable)?;
            // Draining nodes are out of the registry but still hold devices: shown with their
            // drain's progress (a node caught between the two is shown once, draining).
            let draining = self
                .registry
                .draining_reports()
                .await
                .map_err(registry_unavailable)?;
            reports.retain(|live| !draining.iter().any(|d| d.node.node == live.node.node));
            reports.extend(draining);
            reports.sort_by(|a, b| a.node.node.cmp(&b.node.node));
            Ok(aggregate(reports, ringside_protocol::unix_now_ms()))
        })
    }
}

/// Where `POST /v1/admin/nodes/{id}/drain` goes: the local gateway of a single-process
/// deployment, or a drain request in the node registry.
pub trait NodeDrains: Send + Sync + 'static {
    /// Starts (or records) the drain of `node`; `None` for an unknown node. The flag says
    /// whether this call started or recorded it (`202`) rather than finding it under way (`200`).
    fn drain(&self, node: &str)
    -> BoxFuture<'_, Result<Option<(DrainAnswer, bool)>, ControlError>>;
}

impl NodeDrains for ClusterStats {
    fn drain(
        &self,
        node: &str,
    ) -> BoxFuture<'_, Result<Option<(DrainAnswer, bool)>, ControlError>> {
        let node = node.to_owned();
        Box::pin(async move {
            self.registry.request_drain(&node).await.map_err(|error| {
                tracing::warn!(%error, "node registry unavailable");
                ControlError::StoreUnavailable
            })
        })
    }
}

/// A node report as JSON; a report that cannot encode is a client error, never a panic.
/// One topic's records as a node reports them: a field of its `node-broadcasts:<id>` hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicBroadcasts {
    /// The version the node holds as the topic's current state.
    pub current: TopicVersion,
    pub records: Vec<BroadcastRecord>,
    /// The node's clock when it wrote this topic, in ms since the Unix epoch.
    pub reported_at_ms: u64,
}

/// A node's records from its topics' fields; unreadable fields are skipped (and logged).
fn node_records(node: String, fields: impl IntoIterator<Item = String>) -> NodeBroadcastRecords {
    let mut records = NodeBroadcastRecords {
        node,
        reported_at_ms: 0,
        current: Vec::new(),
        records: Vec::new(),
    };
    for json in fields {
        match serde_json::from_str::<TopicBroadcasts>(&json) {
            Ok(topic) => {
                records.reported_at_ms = records.reported_at_ms.max(topic.reported_at_ms);
                records.current.push(topic.current);
                records.records.extend(topic.records);
            }
            Err(error) => tracing::warn!(%error, "skipping unreadable broadcast records"),
        }
    }
    records
}

fn json(value: &impl Serialize) -> Result<String, redis::RedisError> {
    serde_json::to_string(value).map_err(|error| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "broadcast records not encodable",
            error.to_string(),
        ))
    })
}

fn report_json(report: &NodeReport) -> Result<String, redis::RedisError> {
    serde_json::to_string(report).map_err(|error| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "unserializable node report",
            error.to_string(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::Topic;

    fn report(node: &str, topics: &[(&str, u64, u64, u64)]) -> NodeReport {
        NodeReport {
            node: NodeStats {
                node: node.into(),
                connections: topics.iter().map(|t| t.1).sum(),
                address: None,
                ready: true,
                last_seen_ms_ago: None,
                drain: None,
                shed: None,
            },
            topics: topics
                .iter()
                .map(|&(topic, subscribers, version, acks)| TopicStats {
                    topic: Topic::parse(topic).expect("topic"),
                    subscribers,
                    version,
                    acks,
                })
                .collect(),
            reported_at_ms: 1_000,
        }
    }

    #[test]
    fn aggregate_adds_subscribers_and_counts_acks_of_the_newest_version_only() {
        let stats = aggregate(
            vec![
                report("a", &[("event:x", 10, 7, 9), ("event:y", 1, 2, 1)]),
                report("b", &[("event:x", 5, 7, 5)]),
                // Still behind: its subscribers count, its acks are for an older version.
                report("c", &[("event:x", 3, 6, 3)]),
            ],
            1_500,
        );
        assert_eq!(stats.nodes.len(), 3);
        assert_eq!(stats.nodes[0].last_seen_ms_ago, Some(500));
        let x = &stats.topics[0];
        assert_eq!(
            (
                x.topic.to_string().as_str(),
                x.subscribers,
                x.version,
                x.acks
            ),
            ("event:x", 18, 7, 14)
        );
        assert_eq!(stats.topics[1].subscribers, 1);
    }
}
