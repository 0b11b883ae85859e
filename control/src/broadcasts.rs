//! The delivery report of every broadcast: the nodes' per-version records
//! ([`BroadcastRecord`]) summed over the fleet, for `GET /v1/admin/events/{id}/broadcasts`
//! and `GET /v1/admin/events/{id}/broadcasts/{version}`.
//!
//! Where the records come from is a [`BroadcastSource`]: the local hub of a single-process
//! deployment, or the records every gateway node writes to Redis next to its registry entry
//! ([`crate::nodes::NodeRegistry::broadcast_records`]). The sums here are pure functions of
//! those records, so both deployments report alike.
//!
//! The nodes' records cover every topic (a node keeps records of all its channels, and
//! channels are never removed), so the sums never scan them whole: they take one topic's
//! records ([`TopicRecords`]), either picked out once for one request ([`of_topic`]) or
//! grouped once for every topic of a stream check ([`index`]).

use std::collections::{BTreeSet, HashMap};

use futures_util::future::BoxFuture;
use ringside_protocol::admin::{
    ACK_LATENCY_BOUNDS_MS, AckHistogram, BroadcastList, BroadcastRecord, BroadcastReport,
    BroadcastSummary, LatencyQuantiles, NodeBroadcast, NodeBroadcastRecords, ReachPoint,
};
use ringside_protocol::{EventId, Topic};

use crate::ControlError;

/// Where the broadcast report gets the nodes' records.
pub trait BroadcastSource: Send + Sync + 'static {
    /// Every reporting node's records, of all its topics (the report picks an event's).
    fn records(&self) -> BoxFuture<'_, Result<Vec<NodeBroadcastRecords>, ControlError>>;

    /// Every reporting node's records of `topic` alone (others may be left out). By default
    /// [`BroadcastSource::records`]; a source that can read one topic's records without the
    /// rest (the local hub) overrides it, so that one event's report costs that event's records.
    fn topic_records<'a>(
        &'a self,
        topic: &'a Topic,
    ) -> BoxFuture<'a, Result<Vec<NodeBroadcastRecords>, ControlError>> {
        let _ = topic;
        self.records()
    }
}

/// The histogram's bucket count: one per bound and the open one after the last.
const BUCKETS: usize = ACK_LATENCY_BOUNDS_MS.len() + 1;

/// One node's view of one topic: the version it holds and the records it keeps of the topic.
#[derive(Debug, Clone)]
pub struct NodeTopic<'a> {
    pub node: &'a str,
    /// The node's current version of the topic, `None` when it reports none.
    pub held: Option<u64>,
    /// The node's records of the topic, in the node's order.
    pub records: Vec<&'a BroadcastRecord>,
}

/// One topic's records across nodes, in the nodes' order; a node that reports neither a
/// current version nor a record of the topic is absent.
pub type TopicRecords<'a> = Vec<NodeTopic<'a>>;

/// `topic`'s records picked out of `nodes` (one pass; for one request).
pub fn of_topic<'a>(topic: &Topic, nodes: &'a [NodeBroadcastRecords]) -> TopicRecords<'a> {
    nodes
        .iter()
        .filter_map(|node| {
            let held = node
                .current
                .iter()
                .find(|current| &current.topic == topic)
                .map(|current| current.version);
            let records: Vec<&BroadcastRecord> = node
                .records
                .iter()
                .filter(|record| &record.topic == topic)
                .collect();
            (held.is_some() || !records.is_empty()).then_some(NodeTopic {
                node: &node.node,
                held,
                records,
            })
        })
        .collect()
}

/// Every topic's records, grouped in one pass over `nodes` (for a check that reports many
/// topics: each topic's report then reads only its own records).
pub fn index(nodes: &[NodeBroadcastRecords]) -> HashMap<&Topic, TopicRecords<'_>> {
    let mut topics: HashMap<&Topic, TopicRecords<'_>> = HashMap::new();
    for node in nodes {
        for current in &node.current {
            let row = row_of(&mut topics, &current.topic, node);
            // The first entry counts, as a search of the node's list would find it.
            row.held.get_or_insert(current.version);
        }
        for record in &node.records {
            row_of(&mut topics, &record.topic, node)
                .records
                .push(record);
        }
    }
    topics
}

/// `node`'s row of `topic`: the last one of the topic while this node is read, else a new one.
fn row_of<'a, 'm>(
    topics: &'m mut HashMap<&'a Topic, TopicRecords<'a>>,
    topic: &'a Topic,
    node: &'a NodeBroadcastRecords,
) -> &'m mut NodeTopic<'a> {
    let rows = topics.entry(topic).or_default();
    let new = rows
        .last()
        .is_none_or(|row| !std::ptr::eq(row.node, node.node.as_str()));
    if new {
        rows.push(NodeTopic {
            node: &node.node,
            held: None,
            records: Vec::new(),
        });
    }
    rows.last_mut().expect("a row of the topic")
}

/// The broadcasts of `topic` any node keeps a record of, newest first.
pub fn list(event: &EventId, topic: &Topic, nodes: &[NodeTopic<'_>]) -> BroadcastList {
    let versions: BTreeSet<u64> = nodes
        .iter()
        .flat_map(|node| node.records.iter().map(|record| record.version))
        .collect();
    let broadcasts = versions
        .into_iter()
        .rev()
        .filter_map(|version| report(event, topic, version, nodes).map(|r| r.summary))
        .collect();
    BroadcastList { broadcasts }
}

/// The report of `topic`'s newest version any node keeps a record of, `None` without one:
/// what the admin stream sends of each event.
pub fn newest(event: &EventId, topic: &Topic, nodes: &[NodeTopic<'_>]) -> Option<BroadcastReport> {
    let version = nodes
        .iter()
        .flat_map(|node| node.records.iter().map(|record| record.version))
        .max()?;
    report(event, topic, version, nodes)
}

/// The report of `version` of `topic`, `None` when no node keeps a record of it. `nodes` are
/// `topic`'s records ([`of_topic`] or an [`index`] entry).
pub fn report(
    event: &EventId,
    topic: &Topic,
    version: u64,
    nodes: &[NodeTopic<'_>],
) -> Option<BroadcastReport> {
    let first = nodes
        .iter()
        .flat_map(|node| node.records.iter())
        .find(|record| record.version == version)?;
    let mut rows = Vec::new();
    for node in nodes {
        let held = node.held;
        let record = node.records.iter().find(|record| record.version == version);
        let row = match (record, held) {
            (Some(record), _) => NodeBroadcast {
                node: node.node.to_owned(),
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
                node: node.node.to_owned(),
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
    use ringside_protocol::Stage;
    use ringside_protocol::admin::TopicVersion;

    fn topic() -> Topic {
        Topic::parse("event:a").expect("topic")
    }

    fn record(version: u64, subscribed: u64, sent: u64, counts: &[u64]) -> BroadcastRecord {
        record_of(topic(), version, subscribed, sent, counts)
    }

    fn record_of(
        topic: Topic,
        version: u64,
        subscribed: u64,
        sent: u64,
        counts: &[u64],
    ) -> BroadcastRecord {
        let mut histogram = vec![0; BUCKETS];
        histogram[..counts.len()].copy_from_slice(counts);
        BroadcastRecord {
            topic,
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
        let fleet = vec![
            node(
                "n1",
                2,
                vec![record(1, 4, 4, &[0, 4]), record(2, 4, 4, &[])],
            ),
            node("n2", 2, vec![record(2, 6, 6, &[2, 2, 0, 1])]),
        ];
        let nodes = of_topic(&topic(), &fleet);
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

    /// Grouping once for every topic gives each topic exactly what picking it out of the
    /// nodes' records one request at a time gives, so the stream and the endpoints agree.
    #[test]
    fn the_index_of_every_topic_reports_as_each_topic_picked_out_alone() {
        let topics: Vec<Topic> = ["event:a", "event:b", "event:c"]
            .iter()
            .map(|name| Topic::parse(name).expect("topic"))
            .collect();
        let [a, b, c] = [0, 1, 2].map(|i| topics[i].clone());
        let held = |topic: &Topic, version| TopicVersion {
            topic: topic.clone(),
            version,
        };
        let fleet = vec![
            // Interleaved topics, and a current version of c without a record of it.
            NodeBroadcastRecords {
                node: "n1".into(),
                reported_at_ms: 2_000,
                current: vec![held(&a, 2), held(&b, 7), held(&c, 1)],
                records: vec![
                    record_of(a.clone(), 1, 3, 3, &[1, 1]),
                    record_of(b.clone(), 7, 5, 5, &[5]),
                    record_of(a.clone(), 2, 3, 3, &[0, 3]),
                ],
            },
            // Records of a and b; no current version of b (its records are still reported).
            NodeBroadcastRecords {
                node: "n2".into(),
                reported_at_ms: 2_000,
                current: vec![held(&a, 2)],
                records: vec![
                    record_of(a.clone(), 2, 4, 4, &[2, 0, 2]),
                    record_of(b.clone(), 6, 1, 1, &[]),
                ],
            },
            // Only b: absent from a's and c's rows.
            NodeBroadcastRecords {
                node: "n3".into(),
                reported_at_ms: 2_000,
                current: vec![held(&b, 7)],
                records: vec![record_of(b.clone(), 7, 2, 2, &[0, 1])],
            },
        ];
        let index = index(&fleet);
        assert_eq!(index.len(), 3);
        let event = EventId::parse("e").expect("id");
        for topic in &topics {
            let alone = of_topic(topic, &fleet);
            let grouped = &index[topic];
            let names = |rows: &TopicRecords<'_>| -> Vec<String> {
                rows.iter().map(|row| row.node.to_owned()).collect()
            };
            assert_eq!(names(grouped), names(&alone), "{topic}");
            assert_eq!(
                list(&event, topic, grouped),
                list(&event, topic, &alone),
                "{topic}"
            );
            for version in 0..9 {
                assert_eq!(
                    report(&event, topic, version, grouped),
                    report(&event, topic, version, &alone),
                    "{topic} v{version}"
                );
            }
        }
        let nodes_of =
            |topic: &Topic| -> Vec<&str> { index[topic].iter().map(|row| row.node).collect() };
        assert_eq!(nodes_of(&a), vec!["n1", "n2"]);
        assert_eq!(nodes_of(&b), vec!["n1", "n2", "n3"]);
        assert_eq!(nodes_of(&c), vec!["n1"]);
        // The newest of b is version 7, summed over n1 and n3; n2 holds none and has no
        // record of 7, so it is no row of it.
        let newest_b = newest(&event, &b, &index[&b]).expect("b has records");
        assert_eq!(newest_b.summary.version, 7);
        assert_eq!((newest_b.summary.sent, newest_b.summary.acked), (7, 6));
        assert_eq!(newest_b.summary.nodes_reporting, 2);
        let newest_a = newest(&event, &a, &index[&a]).expect("a has records");
        assert_eq!((newest_a.summary.version, newest_a.summary.acked), (2, 7));
        assert!(newest(&event, &c, &index[&c]).is_none(), "c has no record");
    }
}
