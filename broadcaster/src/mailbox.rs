//! A connection's outbound mailbox for states.
//!
//! Bounded by construction: it holds at most one unsent state per subscribed topic. Overflow
//! policy: a newer state of a topic replaces the unsent older one (conflation), because a device
//! only ever needs the newest state. Offers that are not newer than what the connection was
//! already offered are dropped, so versions seen by a connection strictly increase.
//!
//! The hub offers from its fan-out loop; the connection's task takes what is pending when it is
//! woken. The lock is held only to swap an `Arc`, never across an `.await`.

use std::sync::{Arc, Mutex, PoisonError};

use protocol::Topic;
use tokio::sync::Notify;

use crate::hub::EncodedState;

/// What happened to an offered state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for sending.
    Queued,
    /// Queued, replacing an older unsent state of the same topic.
    Conflated,
    /// Dropped: not newer than what the connection already has, or not subscribed.
    Ignored,
}

#[derive(Debug)]
struct Slot {
    topic: Topic,
    /// Newest version offered to (or held by) the connection.
    newest_version: u64,
    /// Newest version the device acknowledged.
    acked_version: u64,
    pending: Option<Delivery>,
}

/// A state taken from a mailbox, to send.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub state: Arc<EncodedState>,
    /// Offered because the connection subscribed behind the current version, rather than by a
    /// live fan-out: its publish may be long past, so it is not a latency sample.
    pub catch_up: bool,
}

/// One connection's outbound states.
#[derive(Debug, Default)]
pub struct Mailbox {
    slots: Mutex<Vec<Slot>>,
    wake: Notify,
}

impl Mailbox {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts accepting states of `topic` newer than `since`. Returns false when the topic was
    /// already open (its position is kept).
    pub fn open(&self, topic: &Topic, since: u64) -> bool {
        let mut slots = self.slots();
        if slots.iter().any(|slot| &slot.topic == topic) {
            return false;
        }
        // Most connections hold one topic: room for exactly one, not the four a first push
        // reserves (about 190 bytes less per connection).
        if slots.is_empty() {
            slots.reserve_exact(1);
        }
        slots.push(Slot {
            topic: topic.clone(),
            newest_version: since,
            acked_version: 0,
            pending: None,
        });
        true
    }

    /// Stops accepting states of `topic` and drops any unsent one.
    pub fn close(&self, topic: &Topic) -> bool {
        let mut slots = self.slots();
        let before = slots.len();
        slots.retain(|slot| &slot.topic != topic);
        slots.len() != before
    }

    /// Offers a state from a live fan-out; wakes the connection when it was queued.
    pub fn offer(&self, state: &Arc<EncodedState>) -> Offer {
        self.offer_delivery(state, false)
    }

    /// Offers the current state to a connection that just subscribed.
    pub fn offer_catch_up(&self, state: &Arc<EncodedState>) -> Offer {
        self.offer_delivery(state, true)
    }

    fn offer_delivery(&self, state: &Arc<EncodedState>, catch_up: bool) -> Offer {
        let outcome = {
            let mut slots = self.slots();
            let Some(slot) = slots.iter_mut().find(|slot| slot.topic == state.topic) else {
                return Offer::Ignored;
            };
            if state.version <= slot.newest_version {
                return Offer::Ignored;
            }
            slot.newest_version = state.version;
            match slot.pending.replace(Delivery {
                state: state.clone(),
                catch_up,
            }) {
                Some(_) => Offer::Conflated,
                None => Offer::Queued,
            }
        };
        self.wake.notify_one();
        outcome
    }

    /// Records an ack; true when it is the first ack of a version this connection was offered
    /// (so a device cannot inflate delivery counts by repeating or inventing acks).
    pub fn acknowledge(&self, topic: &Topic, version: u64) -> bool {
        let mut slots = self.slots();
        let Some(slot) = slots.iter_mut().find(|slot| &slot.topic == topic) else {
            return false;
        };
        let offered = version <= slot.newest_version && slot.pending.is_none()
            || slot
                .pending
                .as_ref()
                .is_some_and(|p| version < p.state.version);
        if !offered || version <= slot.acked_version {
            return false;
        }
        slot.acked_version = version;
        true
    }

    /// Moves every pending state into `out`, oldest topic first.
    pub fn take_pending(&self, out: &mut Vec<Delivery>) {
        out.extend(
            self.slots()
                .iter_mut()
                .filter_map(|slot| slot.pending.take()),
        );
    }

    /// Resolves when something may be pending. A wake-up that arrives while nobody waits is
    /// kept, so none is ever lost.
    pub async fn ready(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EventState, Payload, Stage};

    fn encoded(topic: &str, version: u64) -> Arc<EncodedState> {
        Arc::new(EncodedState::encode(&EventState {
            topic: Topic::parse(topic).expect("topic"),
            version,
            stage: Stage::parse("LIVE").expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
        }))
    }

    fn pending_versions(mailbox: &Mailbox) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        mailbox.take_pending(&mut out);
        out.iter()
            .map(|d| (d.state.topic.to_string(), d.state.version))
            .collect()
    }

    #[test]
    fn conflates_to_the_newest_version_per_topic() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        let b = Topic::parse("event:b").expect("topic");
        mailbox.open(&a, 0);
        mailbox.open(&b, 0);
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::Queued);
        assert_eq!(mailbox.offer(&encoded("event:b", 1)), Offer::Queued);
        assert_eq!(mailbox.offer(&encoded("event:a", 2)), Offer::Conflated);
        assert_eq!(
            pending_versions(&mailbox),
            vec![("event:a".into(), 2), ("event:b".into(), 1)]
        );
        assert!(pending_versions(&mailbox).is_empty());
    }

    #[test]
    fn never_goes_backwards_and_honours_since() {
        let mailbox = Mailbox::new();
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 5);
        assert_eq!(mailbox.offer(&encoded("event:a", 5)), Offer::Ignored);
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::Queued);
        assert_eq!(pending_versions(&mailbox), vec![("event:a".into(), 7)]);
        assert_eq!(mailbox.offer(&encoded("event:a", 6)), Offer::Ignored);
        assert_eq!(mailbox.offer(&encoded("event:a", 7)), Offer::Ignored);
    }

    #[test]
    fn ignores_topics_it_does_not_hold() {
        let mailbox = Mailbox::new();
        assert_eq!(mailbox.offer(&encoded("event:a", 1)), Offer::Ignored);
        let a = Topic::parse("event:a").expect("topic");
        mailbox.open(&a, 0);
        mailbox.offer(&encoded("event:a", 1));
        assert!(mailbox.close(&a));
        assert!(pending_versions(&mailbox).is_empty());
    }
}
