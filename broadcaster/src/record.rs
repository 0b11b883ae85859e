//! Per-version delivery records: for each stage state a node made current, how many
//! connections were subscribed, how many were written it, how many acked it and how fast.
//!
//! A record is created once per version (when the hub makes it current) and shared through an
//! `Arc` by the encoded state and the topic's short history, so counting never looks anything
//! up: a fan-out pass adds its direct writes once at its end, a connection's task adds the
//! states it wrote, and an ack adds to two relaxed atomics. Snapshots are read without a lock
//! on any of them (the numbers of a record still being counted are approximate by a few).

use std::sync::atomic::{AtomicU64, Ordering};

use ringside_protocol::admin::{ACK_LATENCY_BOUNDS_MS, AckHistogram, BroadcastRecord};
use ringside_protocol::{Stage, Topic};

/// The ack-latency histogram's buckets: one per bound, and one for later acks.
const BUCKETS: usize = ACK_LATENCY_BOUNDS_MS.len() + 1;

/// One version's delivery counts on this node.
#[derive(Debug)]
pub struct DeliveryRecord {
    pub topic: Topic,
    pub version: u64,
    pub stage: Stage,
    pub published_at_ms: u64,
    /// When the hub made the version current, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Connections subscribed to the topic at that moment.
    pub subscribed: u64,
    sent: AtomicU64,
    acked: AtomicU64,
    ack_latency: [AtomicU64; BUCKETS],
}

impl DeliveryRecord {
    pub fn new(
        topic: Topic,
        version: u64,
        stage: Stage,
        published_at_ms: u64,
        subscribed: u64,
    ) -> Self {
        Self {
            topic,
            version,
            stage,
            published_at_ms,
            received_at_ms: ringside_protocol::unix_now_ms(),
            subscribed,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            ack_latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts `frames` more connections written this version (each connection once).
    pub fn add_sent(&self, frames: u64) {
        if frames > 0 {
            self.sent.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// Counts a first ack, received at `now_ms` on this node's clock. A clock behind the
    /// control plane's would give a negative latency: it counts as 0.
    pub fn add_ack(&self, now_ms: u64) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        let latency_ms = now_ms.saturating_sub(self.published_at_ms);
        self.ack_latency[bucket_of(latency_ms)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// The record as the admin API carries it.
    pub fn snapshot(&self) -> BroadcastRecord {
        BroadcastRecord {
            topic: self.topic.clone(),
            version: self.version,
            stage: self.stage.clone(),
            published_at_ms: self.published_at_ms,
            subscribed: self.subscribed,
            sent: self.sent(),
            acked: self.acked(),
            ack_latency: AckHistogram {
                counts: self
                    .ack_latency
                    .iter()
                    .map(|count| count.load(Ordering::Relaxed))
                    .collect(),
            },
            received_at_ms: self.received_at_ms,
        }
    }
}

/// The bucket of an ack `latency_ms` after the publish: the first whose bound it does not
/// exceed, else the last (open) one.
fn bucket_of(latency_ms: u64) -> usize {
    ACK_LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| latency_ms <= bound)
        .unwrap_or(ACK_LATENCY_BOUNDS_MS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_fall_in_the_first_bucket_whose_bound_they_do_not_exceed() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(5), 0);
        assert_eq!(bucket_of(6), 1);
        assert_eq!(bucket_of(300_000), ACK_LATENCY_BOUNDS_MS.len() - 1);
        assert_eq!(bucket_of(300_001), ACK_LATENCY_BOUNDS_MS.len());
    }

    #[test]
    fn a_clock_behind_the_publisher_counts_as_no_latency() {
        let topic = Topic::parse("event:a").expect("topic");
        let stage = Stage::parse("LIVE").expect("stage");
        let record = DeliveryRecord::new(topic, 1, stage, 10_000, 3);
        record.add_ack(9_000);
        record.add_ack(10_007);
        let snapshot = record.snapshot();
        assert_eq!(snapshot.acked, 2);
        assert_eq!(snapshot.ack_latency.counts.len(), BUCKETS);
        assert_eq!(snapshot.ack_latency.counts[0], 1);
        assert_eq!(snapshot.ack_latency.counts[1], 1);
    }
}
