//! Ringside's two-tier pub/sub.
//!
//! - **Tier 1, [`bus`]**: carries one message per state change to every gateway node. The
//!   [`Bus`] trait is what the control plane publishes to and what each node consumes; this crate
//!   ships the in-memory [`MemoryBus`] used by `ringside serve` (Kafka implements the same trait).
//!   A feed starts with the latest state of every topic, so a node that (re)starts rebuilds its
//!   state before it serves devices. [`run_bus_consumer`] follows a node's feed: it keeps reading
//!   while fan-outs run, keeps only the newest waiting state of each topic, fans out several
//!   topics at once (one fan-out per topic at a time), and reopens a feed that failed, the hub
//!   being unready until the new feed has caught up.
//! - **Tier 2, [`hub`]**: each node's in-memory fan-out. [`Hub::apply`] encodes a state once,
//!   as its complete WebSocket frame, and offers the shared bytes to every subscribed
//!   connection's [`Mailbox`]. Topics without a state hold no fan-out structures, and only a
//!   bounded number of them ([`HubConfig`]).
//! - **[`mailbox`]**: one per connection, the connection's way to its socket. An idle
//!   connection gets a live state written by the fan-out itself, one non-blocking `send`;
//!   otherwise the state waits, bounded by the number of topics the connection holds: a newer
//!   state of a topic replaces an unsent older one (conflation), and versions offered to a
//!   connection never go backwards. A slow socket therefore never holds a backlog of states and
//!   never delays anyone else.
//!
//! Every tier has two lanes per topic: stage states (`critical`, the topic's current state) and
//! best-effort messages (a viewer count, a ticker: extra data that is never the state). Each lane
//! keeps its own newest version; best-effort messages give way first wherever something is
//! behind (a connection's socket, the node's fan-outs), and each way they give way is counted.
//!
//! - **[`record`]**: per stage version, what the node delivered: connections subscribed when
//!   it became current, frames written, first acks and their latency, for the broadcast
//!   report. Kept for a topic's last versions only ([`HubConfig::broadcasts_per_topic`]).
//!
//! The gateway accepts the sockets and reads them; it hands each one's write side to its
//! mailbox.

pub mod bus;
pub mod hub;
pub mod mailbox;
pub mod record;

pub use bus::{
    Bus, BusFeed, ConsumerConfig, FeedItem, MemoryBus, apply_off_runtime, run_bus_consumer,
};
pub use hub::{
    Applied, DeliveryMetrics, EncodedState, Fanout, Hub, HubConfig, HubMetrics, TopicLimit,
};
pub use mailbox::{Delivery, Mailbox, Offer, SocketWrite};
pub use record::DeliveryRecord;

/// Errors of the broadcast tier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// The bus did not accept a publish (broker down, timeout). Safe to retry.
    #[error("broadcast bus unavailable: {0}")]
    BusUnavailable(String),
    /// The bus was shut down.
    #[error("broadcast bus closed")]
    BusClosed,
}
