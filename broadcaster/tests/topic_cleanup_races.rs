//! The hub forgets topics nobody holds; that must never lose a subscriber or a state that
//! races with the cleanup. Each case is repeated many times to give the race a chance.

use std::sync::{Arc, Barrier};

use ringside_broadcaster::{Hub, HubMetrics, Mailbox};
use ringside_protocol::{EventState, Payload, Stage, Topic};
use ringside_telemetry::Registry;

const ROUNDS: usize = 5_000;

fn topic() -> Topic {
    Topic::parse("event:race").expect("topic")
}

fn state(version: u64) -> EventState {
    EventState {
        topic: topic(),
        version,
        stage: Stage::parse("LIVE").expect("stage"),
        published_at_ms: 0,
        payload: Payload::empty(),
        priority: ringside_protocol::Priority::Critical,
        fetch_within_ms: None,
    }
}

/// A hub whose only subscriber (connection 1) is about to leave on another thread, in lockstep
/// with `race` on this one.
fn race_with_last_unsubscribe(race: impl FnOnce(&Hub)) -> Arc<Hub> {
    let hub = Arc::new(Hub::new(HubMetrics::new(&Registry::new())));
    let leaving = Mailbox::new();
    leaving.open(&topic(), 0);
    hub.subscribe(&topic(), 1, &leaving).expect("subscribed");
    let barrier = Arc::new(Barrier::new(2));
    let unsubscriber = {
        let (hub, barrier) = (hub.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            hub.unsubscribe(&topic(), 1);
        })
    };
    barrier.wait();
    race(&hub);
    unsubscriber.join().expect("unsubscriber");
    hub
}

#[test]
fn a_subscriber_racing_the_cleanup_still_receives_states() {
    for round in 0..ROUNDS {
        let joining = Mailbox::new();
        joining.open(&topic(), 0);
        let hub = race_with_last_unsubscribe(|hub| {
            hub.subscribe(&topic(), 2, &joining).expect("subscribed");
        });
        hub.apply(&state(1));
        let mut received = Vec::new();
        joining.take_pending(&mut received);
        assert_eq!(received.len(), 1, "subscriber lost in round {round}");
    }
}

#[test]
fn a_state_racing_the_cleanup_stays_current() {
    for round in 0..ROUNDS {
        let hub = race_with_last_unsubscribe(|hub| {
            hub.apply(&state(1));
        });
        assert_eq!(hub.version(&topic()), 1, "state lost in round {round}");
    }
}
