//! Fan-out invariants under concurrency: whatever the interleaving of publishes and
//! subscriptions, every subscriber ends at the newest version, never sees a version twice and
//! never sees versions go backwards.

use std::sync::Arc;

use proptest::prelude::*;
use ringside_broadcaster::{Hub, HubMetrics, Mailbox};
use ringside_protocol::{EventState, Payload, Stage, Topic};

fn state(version: u64) -> EventState {
    EventState {
        topic: Topic::parse("event:prop").expect("topic"),
        version,
        stage: Stage::parse("LIVE").expect("stage"),
        published_at_ms: 0,
        payload: Payload::empty(),
        priority: ringside_protocol::Priority::Critical,
        fetch_within_ms: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn every_subscriber_converges_in_order(
        publishes in prop::collection::vec(1u64..200, 1..60),
        sinces in prop::collection::vec(0u64..100, 1..12),
    ) {
        let hub = Arc::new(Hub::new(HubMetrics::new(&ringside_telemetry::Registry::new())));
        let topic = state(0).topic;
        let newest = *publishes.iter().max().expect("non-empty");
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || for version in publishes { hub.apply(&state(version)); })
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subscribers: Vec<_> = sinces
            .iter()
            .enumerate()
            .map(|(connection, &since)| {
                let (hub, topic, done) = (hub.clone(), topic.clone(), done.clone());
                std::thread::spawn(move || {
                    let mailbox = Mailbox::new();
                    mailbox.open(&topic, since);
                    hub.subscribe(&topic, connection as u64, &mailbox).expect("subscribed");
                    let mut seen = Vec::new();
                    // Drain while the publisher runs, as a connection task would.
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        mailbox.take_pending(&mut seen);
                        std::thread::yield_now();
                    }
                    mailbox.take_pending(&mut seen);
                    (since, seen)
                })
            })
            .collect();
        publisher.join().expect("publisher");
        done.store(true, std::sync::atomic::Ordering::Release);
        for subscriber in subscribers {
            let (since, seen) = subscriber.join().expect("subscriber");
            let versions: Vec<u64> = seen.iter().map(|d| d.state.version).collect();
            prop_assert!(versions.windows(2).all(|w| w[0] < w[1]));
            if newest > since {
                prop_assert_eq!(versions.last().copied(), Some(newest));
            } else {
                prop_assert!(versions.is_empty());
            }
        }
    }
}

fn in_lane(version: u64, best_effort: bool) -> EventState {
    EventState {
        priority: if best_effort {
            ringside_protocol::Priority::BestEffort
        } else {
            ringside_protocol::Priority::Critical
        },
        ..state(version)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// States and best-effort messages of one topic, published in version order (as the control
    /// plane does, one event's sequence): every subscriber sees strictly increasing versions
    /// across both lanes, ends at the newest state, and at the newest best-effort message when
    /// that is newer than the newest state.
    #[test]
    fn lanes_never_step_back_and_states_converge(
        lanes in prop::collection::vec(any::<bool>(), 1..60),
        sinces in prop::collection::vec(0u64..40, 1..8),
    ) {
        let hub = Arc::new(Hub::new(HubMetrics::new(&ringside_telemetry::Registry::new())));
        let topic = state(0).topic;
        let published: Vec<(u64, bool)> = lanes
            .iter()
            .enumerate()
            .map(|(index, &best_effort)| (index as u64 + 1, best_effort))
            .collect();
        let newest_state = published.iter().filter(|m| !m.1).map(|m| m.0).max().unwrap_or(0);
        let newest_extra = published.iter().filter(|m| m.1).map(|m| m.0).max().unwrap_or(0);
        let publisher = {
            let (hub, published) = (hub.clone(), published.clone());
            std::thread::spawn(move || {
                for (version, best_effort) in published {
                    hub.apply(&in_lane(version, best_effort));
                }
            })
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let subscribers: Vec<_> = sinces
            .iter()
            .enumerate()
            .map(|(connection, &since)| {
                let (hub, topic, done) = (hub.clone(), topic.clone(), done.clone());
                std::thread::spawn(move || {
                    let mailbox = Mailbox::new();
                    mailbox.open(&topic, since);
                    hub.subscribe(&topic, connection as u64, &mailbox).expect("subscribed");
                    let mut seen = Vec::new();
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        mailbox.take_pending(&mut seen);
                        std::thread::yield_now();
                    }
                    mailbox.take_pending(&mut seen);
                    (since, seen)
                })
            })
            .collect();
        publisher.join().expect("publisher");
        done.store(true, std::sync::atomic::Ordering::Release);
        prop_assert_eq!(hub.version(&topic), newest_state);
        for subscriber in subscribers {
            let (since, seen) = subscriber.join().expect("subscriber");
            let versions: Vec<u64> = seen.iter().map(|d| d.state.version).collect();
            prop_assert!(versions.windows(2).all(|w| w[0] < w[1]), "{:?}", versions);
            for delivery in &seen {
                let lane = published[delivery.state.version as usize - 1].1;
                prop_assert_eq!(delivery.state.is_best_effort(), lane);
            }
            let last_state = seen
                .iter()
                .filter(|d| !d.state.is_best_effort())
                .map(|d| d.state.version)
                .max();
            prop_assert_eq!(last_state, (newest_state > since).then_some(newest_state));
            if newest_extra > newest_state.max(since) {
                prop_assert_eq!(versions.last().copied(), Some(newest_extra));
            }
        }
    }
}
