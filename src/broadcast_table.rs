//! `ringside event report`: the broadcast list and one broadcast's report as plain-text tables
//! for an operator's terminal (the API's JSON is for programs).

use std::fmt::Write as _;

use ringside_protocol::admin::{
    BroadcastList, BroadcastReport, BroadcastSummary, LatencyQuantiles,
};

/// One line per broadcast, newest first.
pub fn list_table(list: &BroadcastList) -> String {
    if list.broadcasts.is_empty() {
        return "no broadcasts recorded (the nodes keep the last versions of each event)\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>16}  {:<12}  {:>10}  {:>10}  {:>10}  {:>7}  {:>17}  {:>7}",
        "VERSION", "STAGE", "SUBSCRIBED", "SENT", "ACKED", "ACKED%", "P50/P90/P99 MS", "NODES"
    );
    for broadcast in &list.broadcasts {
        let _ = writeln!(out, "{}", summary_row(broadcast));
    }
    out
}

fn summary_row(b: &BroadcastSummary) -> String {
    format!(
        "{:>16}  {:<12}  {:>10}  {:>10}  {:>10}  {:>6.1}%  {:>17}  {:>3}/{:<3}",
        b.version,
        b.stage.as_str(),
        b.subscribed,
        b.sent,
        b.acked,
        b.acked_fraction * 100.0,
        quantiles(b.ack_latency),
        b.nodes_applied,
        b.nodes_reporting,
    )
}

fn quantiles(latency: Option<LatencyQuantiles>) -> String {
    latency.map_or_else(
        || "-".into(),
        |q| format!("{}/{}/{}", q.p50_ms, q.p90_ms, q.p99_ms),
    )
}

/// The summary, the reach curve and the per-node rows.
pub fn report_table(report: &BroadcastReport) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "event {}  version {}  stage {}  published_at_ms {}",
        s.event, s.version, s.stage, s.published_at_ms
    );
    let _ = writeln!(
        out,
        "subscribed {}  sent {}  acked {} ({:.1}%)  ack latency p50/p90/p99 {} ms  nodes {}/{} applied",
        s.subscribed,
        s.sent,
        s.acked,
        s.acked_fraction * 100.0,
        quantiles(s.ack_latency),
        s.nodes_applied,
        s.nodes_reporting
    );
    out.push_str("\nreach (acked fraction by ms after the publish)\n");
    if report.reach.is_empty() {
        out.push_str("  no acks yet\n");
    }
    for point in &report.reach {
        let _ = writeln!(
            out,
            "  {:>7} ms  {:>6.1}%",
            point.ms,
            point.acked_fraction * 100.0
        );
    }
    let _ = writeln!(
        out,
        "\n{:<24}  {:>10}  {:>10}  {:>10}  {:>7}  {:>16}",
        "NODE", "SUBSCRIBED", "SENT", "ACKED", "APPLIED", "RECEIVED_AT_MS"
    );
    for node in &report.nodes {
        let _ = writeln!(
            out,
            "{:<24}  {:>10}  {:>10}  {:>10}  {:>7}  {:>16}",
            node.node,
            node.subscribed,
            node.sent,
            node.acked,
            if node.applied { "yes" } else { "no" },
            node.received_at_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::admin::{AckHistogram, NodeBroadcast, ReachPoint};
    use ringside_protocol::{EventId, Stage, Topic};

    #[test]
    fn a_report_lists_its_numbers_reach_and_nodes() {
        let summary = BroadcastSummary {
            event: EventId::parse("a").expect("id"),
            topic: Topic::parse("event:a").expect("topic"),
            version: 7,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 1,
            subscribed: 4,
            sent: 4,
            acked: 2,
            acked_fraction: 0.5,
            ack_latency: Some(LatencyQuantiles {
                p50_ms: 5,
                p90_ms: 10,
                p99_ms: 10,
            }),
            nodes_reporting: 1,
            nodes_applied: 1,
        };
        let report = BroadcastReport {
            summary: summary.clone(),
            reach: vec![ReachPoint {
                ms: 5,
                acked_fraction: 0.5,
            }],
            nodes: vec![NodeBroadcast {
                node: "node-1".into(),
                subscribed: 4,
                sent: 4,
                acked: 2,
                ack_latency: AckHistogram::default(),
                applied: true,
                received_at_ms: 2,
            }],
        };
        let text = report_table(&report);
        assert!(text.contains("acked 2 (50.0%)"), "{text}");
        assert!(text.contains("5/10/10"), "{text}");
        assert!(text.contains("node-1"), "{text}");
        let list = list_table(&BroadcastList {
            broadcasts: vec![summary],
        });
        assert!(
            list.lines()
                .nth(1)
                .is_some_and(|line| line.contains("LIVE"))
        );
    }
}
