//! A gateway node's fleet in Redis: the backends of [`ringside_gateway::fleet`] implemented on the
//! control plane's keys (its [`RedisEventStore`] and [`NodeRegistry`]), at the pace the
//! registry's expiry asks for ([`HEARTBEAT_INTERVAL`], [`BROADCAST_REPORT_INTERVAL`]).
//!
//! Every call takes the process's one Redis connection, made at its first use. A call made
//! before any connection could be made fails with the connection's error, except removing what
//! the node wrote when it stops: without a connection ever made it wrote nothing, so there is
//! nothing to remove (and nothing is logged).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ringside_control::nodes::{BROADCAST_REPORT_INTERVAL, HEARTBEAT_INTERVAL, TopicBroadcasts};
use ringside_control::{EventStore, NodeRegistry, RedisEventStore};
use ringside_gateway::fleet::{
    BackendError, BroadcastRecordSink, Fleet, FleetRegistry, NodeReport, StateStore, TopicRecords,
};
use ringside_protocol::EventState;

use crate::content::RedisLink;

/// The node's event store, node registry and broadcast records, all in Redis; `address` is
/// what the node reports to the registry.
pub fn redis_fleet(redis: Arc<RedisLink>, address: String) -> Fleet {
    let backends = Arc::new(RedisFleet { redis });
    Fleet {
        store: backends.clone(),
        registry: backends.clone(),
        broadcasts: backends,
        address,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        broadcast_report_interval: BROADCAST_REPORT_INTERVAL,
    }
}

struct RedisFleet {
    redis: Arc<RedisLink>,
}

impl RedisFleet {
    async fn registry(&self) -> Result<NodeRegistry, BackendError> {
        let connection = self.redis.connection().await?;
        Ok(NodeRegistry::new(connection, self.redis.prefix.clone()))
    }

    /// The registry, or `None` when no connection was ever made (see the module's docs).
    async fn registry_if_connected(&self) -> Option<NodeRegistry> {
        self.registry().await.ok()
    }
}

impl StateStore for RedisFleet {
    fn current_states(&self) -> BoxFuture<'_, Option<Vec<EventState>>> {
        Box::pin(async move {
            let connection = self.redis.connection().await.ok()?;
            let events = RedisEventStore::new(connection, self.redis.prefix.clone())
                .with_states()
                .await
                .ok()?;
            Some(events.into_iter().filter_map(|(_, state)| state).collect())
        })
    }
}

fn control_report(report: NodeReport) -> ringside_control::NodeReport {
    ringside_control::NodeReport {
        node: report.node,
        topics: report.topics,
        reported_at_ms: report.reported_at_ms,
    }
}

impl FleetRegistry for RedisFleet {
    fn report(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let registry = self.registry().await?;
            Ok(registry.report(&control_report(report)).await?)
        })
    }

    fn drain_requested<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { Ok(self.registry().await?.drain_requested(node).await?) })
    }

    fn leave<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { Ok(self.registry().await?.remove(node).await?) })
    }

    fn report_drain(&self, report: NodeReport) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let registry = self.registry().await?;
            Ok(registry.report_drain(&control_report(report)).await?)
        })
    }

    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let Some(registry) = self.registry_if_connected().await else {
                return Ok(());
            };
            registry.remove(node).await?;
            Ok(registry.remove_drain(node).await?)
        })
    }
}

impl BroadcastRecordSink for RedisFleet {
    fn write<'a>(
        &'a self,
        node: &'a str,
        changed: &'a [&'a TopicRecords],
        replace: bool,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let registry = self.registry().await?;
            let topics: Vec<TopicBroadcasts> = changed
                .iter()
                .map(|topic| TopicBroadcasts {
                    current: topic.current.clone(),
                    records: topic.records.clone(),
                    reported_at_ms: topic.reported_at_ms,
                })
                .collect();
            let topics: Vec<&TopicBroadcasts> = topics.iter().collect();
            Ok(registry.report_broadcasts(node, &topics, replace).await?)
        })
    }

    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let Some(registry) = self.registry_if_connected().await else {
                return Ok(());
            };
            Ok(registry.remove_broadcasts(node).await?)
        })
    }
}
