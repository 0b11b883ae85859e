//! The delivery report of every broadcast: the nodes' per-version records
//! ([`BroadcastRecord`]) summed over the fleet, for `GET /v1/admin/events/{id}/broadcasts`
//! and `GET /v1/admin/events/{id}/broadcasts/{version}`.
//!
//! Where the records come from is a [`BroadcastSource`]: the local hub of a single-process
//! deployment, or the records every gateway node writes to Redis next to its registry entry
//! ([`crate::nodes::NodeRegistry::broadcast_records`]). The sums here are pure functions of
//! those records, so both deployments report alike.

use std::collections::BTreeSet;

use broadcaster::BoxFuture;
use protocol::admin::{
    ACK_LATENCY_BOUNDS_MS, AckHistogram, BroadcastList, BroadcastRecord, BroadcastReport,
    BroadcastSummary, LatencyQuantiles, NodeBroadcast, NodeBroadcastRecords, ReachPoint,
};
use protocol::{EventId, Topic};

use crate::ControlError;

/// Where the broadcast report gets the nodes' records.
pub trait BroadcastSource: Send + Sync + 'static {
    /// Every reporting node's records, of all its topics (the report picks an event's).
    fn records(&self) -> BoxFuture<'_, Result<Vec<NodeBroadcastRecords>, ControlError>>;
}

/// The histogram's bucket count: one per bound and the open one after the last.
const BUCKETS: usize = ACK_LATENCY_BOUNDS_MS.len() + 1;

/// The broadcasts of `topic` any node keeps a record of, newest first.
pub fn list(event: &EventId, topic: &Topic, nodes: &[NodeBroadcastRecords]) -> BroadcastList {
    let versions: BTreeSet<u64> = records_of(topic, nodes)
        .map(|(_, record)| record.version)
        .collect();
    let broadcasts = versions
        .into_iter()
        .rev()
        .filter_map(|version| report(event, topic, version, nodes).map(|r| r.summary))
        .collect();
    BroadcastList { broadcasts }
}

/// The report of `version` of `topic`, `None` when no node keeps a record of it.
pub fn report(
    event: &EventId,
    topic: &Topic,
    version: u64,
    nodes: &[NodeBroadcastRecords],
) -> Option<BroadcastReport> {
    let first = records_of(topic, nodes)
        .map(|(_, record)| record)
        .find(|record| record.version == version)?;
    let mut rows = Vec::new();
    for node in nodes {
        let held = node
            .current
            .iter()
            .find(|current| &current.topic == topic)
            .map(|current| current.version);
        let record = node
            .records
            .iter()
            .find(|record| &record.topic == topic && record.version == version);
        let row = match (record, held) {
            (Some(record), _) => NodeBroadcast {
                node: node.node.clone(),
                subscribed: record.subscribed,
                sent: record.sent,
                acked: record.acked,
                ack_latency: padded(&record.ack_latency),
                applied: true,
                received_at_ms: record.received_at_ms,
            },
            // The node reports the topic but keeps no record of this version: it never had it
            // (its bus consumer took a newer one first), has not got it yet, or forgot it.
            (None, Some(held)) => NodeBroadcast {
                node: node.node.clone(),
                subscribed: 0,
                sent: 0,
                acked: 0,
                ack_latency: padded(&AckHistogram::default()),
                applied: held >= version,
                received_at_ms: 0,
            },
            (None, None) => continue,
        };
        rows.push(row);
    }
    let mut merged = [0u64; BUCKETS];
    for row in &rows {
        for (sum, count) in merged.iter_mut().zip(&row.ack_latency.counts) {
            *sum += count;
        }
    }
    let subscribed = rows.iter().map(|row| row.subscribed).sum();
    let sent = rows.iter().map(|row| row.sent).sum();
    let acked = rows.iter().map(|row| row.acked).sum();
    let summary = BroadcastSummary {
        event: event.clone(),
        topic: topic.clone(),
        version,
        stage: first.stage.clone(),
        published_at_ms: first.published_at_ms,
        subscribed,
        sent,
        acked,
        acked_fraction: fraction(acked, subscribed, sent),
        ack_latency: quantiles(&merged),
        nodes_reporting: rows.len() as u64,
        nodes_applied: rows.iter().filter(|row| row.applied).count() as u64,
    };
    Some(BroadcastReport {
        reach: reach(&merged, subscribed, sent),
        summary,
        nodes: rows,
    })
}

/// The records of `topic` across nodes.
fn records_of<'a>(
    topic: &'a Topic,
    nodes: &'a [NodeBroadcastRecords],
) -> impl Iterator<Item = (&'a NodeBroadcastRecords, &'a BroadcastRecord)> + 'a {
    nodes.iter().flat_map(move |node| {
        node.records
            .iter()
            .filter(move |record| &record.topic == topic)
            .map(move |record| (node, record))
    })
}

/// A histogram with exactly [`BUCKETS`] counts (a record from a node with fewer bounds is
/// padded; extra counts join the open bucket).
fn padded(histogram: &AckHistogram) -> AckHistogram {
    let mut counts = vec![0; BUCKETS];
    for (index, count) in histogram.counts.iter().enumerate() {
        counts[index.min(BUCKETS - 1)] += count;
    }
    AckHistogram { counts }
}

/// `acked / max(subscribed, sent)`; 0 when nobody was subscribed or sent it.
fn fraction(acked: u64, subscribed: u64, sent: u64) -> f64 {
    let reach = subscribed.max(sent);
    if reach == 0 {
        0.0
    } else {
        acked as f64 / reach as f64
    }
}

/// p50, p90 and p99, each the upper bound of the bucket it falls in (the open last bucket
/// reads as the last bound); `None` without acks.
fn quantiles(counts: &[u64; BUCKETS]) -> Option<LatencyQuantiles> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let at = |quantile: f64| {
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        let mut cumulative = 0;
        for (index, count) in counts.iter().enumerate() {
            cumulative += count;
            if cumulative >= rank {
                return bound(index);
            }
        }
        bound(BUCKETS - 1)
    };
    Some(LatencyQuantiles {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
    })
}

/// The upper bound of bucket `index`; the open last bucket reads as the last bound.
fn bound(index: usize) -> u64 {
    ACK_LATENCY_BOUNDS_MS[index.min(ACK_LATENCY_BOUNDS_MS.len() - 1)]
}

/// One point per bound up to the latest non-empty bucket, each the cumulative acked fraction;
/// acks of the open bucket join the last point, so the curve ends at the acked fraction.
fn reach(counts: &[u64; BUCKETS], subscribed: u64, sent: u64) -> Vec<ReachPoint> {
    let Some(latest) = counts.iter().rposition(|&count| count > 0) else {
        return Vec::new();
    };
    let last_point = latest.min(ACK_LATENCY_BOUNDS_MS.len() - 1);
    let mut cumulative = 0;
    (0..=last_point)
        .map(|index| {
            cumulative += counts[index];
            if index == last_point {
                cumulative += counts[index + 1..].iter().sum::<u64>();
            }
            ReachPoint {
                ms: ACK_LATENCY_BOUNDS_MS[index],
                acked_fraction: fraction(cumulative, subscribed, sent),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Stage;
    use protocol::admin::TopicVersion;

    fn topic() -> Topic {
        Topic::parse("event:a").expect("topic")
    }

    fn record(version: u64, subscribed: u64, sent: u64, counts: &[u64]) -> BroadcastRecord {
        let mut histogram = vec![0; BUCKETS];
        histogram[..counts.len()].copy_from_slice(counts);
        BroadcastRecord {
            topic: topic(),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1_000,
            subscribed,
            sent,
            acked: counts.iter().sum(),
            ack_latency: AckHistogram { counts: histogram },
            received_at_ms: 1_002,
        }
    }

    fn node(name: &str, held: u64, records: Vec<BroadcastRecord>) -> NodeBroadcastRecords {
        NodeBroadcastRecords {
            node: name.into(),
            reported_at_ms: 2_000,
            current: vec![TopicVersion {
                topic: topic(),
                version: held,
            }],
            records,
        }
    }

    #[test]
    fn sums_the_nodes_and_reads_quantiles_and_reach_from_the_merged_histogram() {
        let event = EventId::parse("a").expect("id");
        let nodes = vec![
            node(
                "n1",
                2,
                vec![record(1, 4, 4, &[0, 4]), record(2, 4, 4, &[])],
            ),
            node("n2", 2, vec![record(2, 6, 6, &[2, 2, 0, 1])]),
        ];
        let list = list(&event, &topic(), &nodes);
        let versions: Vec<u64> = list.broadcasts.iter().map(|b| b.version).collect();
        assert_eq!(versions, vec![2, 1]);
        let report = report(&event, &topic(), 2, &nodes).expect("kept");
        let summary = &report.summary;
        assert_eq!(
            (summary.subscribed, summary.sent, summary.acked),
            (10, 10, 5)
        );
        assert!((summary.acked_fraction - 0.5).abs() < 1e-9);
        assert_eq!(
            summary.ack_latency,
            Some(LatencyQuantiles {
                p50_ms: 10,
                p90_ms: 50,
                p99_ms: 50
            })
        );
        let reach: Vec<(u64, f64)> = report
            .reach
            .iter()
            .map(|p| (p.ms, p.acked_fraction))
            .collect();
        assert_eq!(reach, vec![(5, 0.2), (10, 0.4), (25, 0.4), (50, 0.5)]);
        assert_eq!((summary.nodes_reporting, summary.nodes_applied), (2, 2));
        // Version 1 reached only n1; n2 holds a newer one, so it counts as applied.
        let older = super::report(&event, &topic(), 1, &nodes).expect("kept");
        assert!(older.nodes[1].applied);
        assert_eq!(older.nodes[1].sent, 0);
        assert!(super::report(&event, &topic(), 3, &nodes).is_none());
    }

    #[test]
    fn acks_later_than_every_bound_end_the_curve_at_the_acked_fraction() {
        let mut counts = vec![0; BUCKETS];
        counts[BUCKETS - 1] = 2;
        counts[0] = 2;
        let counts: [u64; BUCKETS] = counts.try_into().expect("buckets");
        let points = reach(&counts, 4, 4);
        assert_eq!(points.len(), ACK_LATENCY_BOUNDS_MS.len());
        assert_eq!(points.last().map(|p| p.acked_fraction), Some(1.0));
        let quantiles = quantiles(&counts).expect("acks");
        assert_eq!(quantiles.p99_ms, 300_000);
        assert_eq!(fraction(0, 0, 0), 0.0);
    }
}
