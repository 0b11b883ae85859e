//! The event-driven ruleset: when it is active, `best_effort` and `bulk` get their tightened
//! shares and the node pauses its own server-driven work (background materialization).
//!
//! It is active when an operator forces it (`ruleset: on`), or in `auto` while any of these
//! holds: an event went `LIVE` less than `live_window` ago, any stage transition happened less
//! than `transition_window` ago, or a load trigger (latency or request rate) held less than
//! `load_hold` ago. The hot path reads one flag ([`Ruleset::is_active`]); the flag is
//! recomputed when something happens (a transition, a switch) and by the node's evaluation
//! tick, which also lets the windows lapse.
//!
//! Transitions are learned from the states the node publishes or reads from the bus
//! ([`Ruleset::observe`]), once per state (not per device delivery).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use ringside_protocol::admin::{RulesetMode, RulesetReason, StageTransition};
use ringside_protocol::{EventState, Stage, Topic};
use ringside_sync_util::LockExt;

use crate::ProtectionConfig;

/// The stage whose start opens the live window.
pub const LIVE_STAGE: &str = "LIVE";

/// Load conditions measured by the evaluation tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadSignals {
    pub latency_high: bool,
    pub rate_high: bool,
}

#[derive(Debug)]
pub struct Ruleset {
    mode: AtomicU8,
    active: AtomicBool,
    /// Ends of the windows, in milliseconds since the Unix epoch (0: none).
    live_until_ms: AtomicU64,
    transition_until_ms: AtomicU64,
    latency_until_ms: AtomicU64,
    rate_until_ms: AtomicU64,
    live_window_ms: u64,
    transition_window_ms: u64,
    load_hold_ms: u64,
    /// The newest version and stage of every topic the node saw: a state is a transition when
    /// its stage differs from the one before. Touched once per state, never per delivery.
    stages: Mutex<HashMap<Topic, (u64, Stage)>>,
    last_transition: Mutex<Option<StageTransition>>,
}

fn mode_code(mode: RulesetMode) -> u8 {
    match mode {
        RulesetMode::Auto => 0,
        RulesetMode::On => 1,
        RulesetMode::Off => 2,
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Ruleset {
    pub fn new(config: &ProtectionConfig) -> Self {
        let ruleset = Self {
            mode: AtomicU8::new(mode_code(config.ruleset)),
            active: AtomicBool::new(false),
            live_until_ms: AtomicU64::new(0),
            transition_until_ms: AtomicU64::new(0),
            latency_until_ms: AtomicU64::new(0),
            rate_until_ms: AtomicU64::new(0),
            live_window_ms: millis(config.live_window),
            transition_window_ms: millis(config.transition_window),
            load_hold_ms: millis(config.load_hold),
            stages: Mutex::default(),
            last_transition: Mutex::default(),
        };
        ruleset.refresh(0);
        ruleset
    }

    /// Whether the tightened shares apply: one relaxed load.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn mode(&self) -> RulesetMode {
        match self.mode.load(Ordering::Relaxed) {
            1 => RulesetMode::On,
            2 => RulesetMode::Off,
            _ => RulesetMode::Auto,
        }
    }

    /// Switches the mode; returns whether it changed.
    pub fn set_mode(&self, mode: RulesetMode, now_ms: u64) -> bool {
        let changed = self.mode.swap(mode_code(mode), Ordering::Relaxed) != mode_code(mode);
        self.refresh(now_ms);
        changed
    }

    /// Records a state the node published or read. Returns whether it was a stage transition.
    /// `seed` states (a feed's catch-up, the store's states at startup) are only remembered.
    pub fn observe(&self, state: &EventState, seed: bool, now_ms: u64) -> bool {
        if !state.priority.is_critical() {
            return false;
        }
        let transition = {
            let mut stages = self.stages.locked();
            match stages.get_mut(&state.topic) {
                Some((version, _)) if *version >= state.version => return false,
                Some((version, stage)) => {
                    let changed = *stage != state.stage;
                    *version = state.version;
                    stage.clone_from(&state.stage);
                    changed
                }
                None => {
                    stages.insert(state.topic.clone(), (state.version, state.stage.clone()));
                    true
                }
            }
        };
        if !transition || seed {
            return false;
        }
        let until = |window: u64| now_ms.saturating_add(window);
        if state.stage.as_str() == LIVE_STAGE {
            self.live_until_ms
                .fetch_max(until(self.live_window_ms), Ordering::Relaxed);
        }
        self.transition_until_ms
            .fetch_max(until(self.transition_window_ms), Ordering::Relaxed);
        *self.last_transition.locked() = Some(StageTransition {
            topic: state.topic.clone(),
            stage: state.stage.clone(),
            version: state.version,
            seen_at_ms: now_ms,
        });
        self.refresh(now_ms);
        true
    }

    /// Takes the load conditions the evaluation tick measured.
    pub fn observe_load(&self, signals: LoadSignals, now_ms: u64) {
        let held = now_ms.saturating_add(self.load_hold_ms);
        if signals.latency_high {
            self.latency_until_ms.fetch_max(held, Ordering::Relaxed);
        }
        if signals.rate_high {
            self.rate_until_ms.fetch_max(held, Ordering::Relaxed);
        }
    }

    /// Recomputes the hot-path flag at `now_ms`; returns it.
    pub fn refresh(&self, now_ms: u64) -> bool {
        let active = !self.reasons(now_ms).is_empty();
        self.active.store(active, Ordering::Relaxed);
        active
    }

    /// Why the ruleset is active at `now_ms` (empty: it is not).
    pub fn reasons(&self, now_ms: u64) -> Vec<RulesetReason> {
        match self.mode() {
            RulesetMode::Off => Vec::new(),
            RulesetMode::On => vec![RulesetReason::Forced],
            RulesetMode::Auto => [
                (&self.live_until_ms, RulesetReason::EventLive),
                (&self.transition_until_ms, RulesetReason::StageTransition),
                (&self.latency_until_ms, RulesetReason::Latency),
                (&self.rate_until_ms, RulesetReason::RequestRate),
            ]
            .into_iter()
            .filter(|(until, _)| until.load(Ordering::Relaxed) > now_ms)
            .map(|(_, reason)| reason)
            .collect(),
        }
    }

    /// Until when the automatic reasons hold, if any holds at `now_ms`.
    pub fn active_until_ms(&self, now_ms: u64) -> Option<u64> {
        if self.mode() != RulesetMode::Auto {
            return None;
        }
        [
            &self.live_until_ms,
            &self.transition_until_ms,
            &self.latency_until_ms,
            &self.rate_until_ms,
        ]
        .into_iter()
        .map(|until| until.load(Ordering::Relaxed))
        .filter(|until| *until > now_ms)
        .max()
    }

    pub fn last_transition(&self) -> Option<StageTransition> {
        self.last_transition.locked().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::{EventId, Payload};

    fn state(event: &str, version: u64, stage: &str) -> EventState {
        EventState {
            topic: EventId::parse(event).expect("id").topic(),
            version,
            stage: Stage::parse(stage).expect("stage"),
            published_at_ms: 0,
            payload: Payload::empty(),
            priority: ringside_protocol::Priority::Critical,
            fetch_within_ms: None,
        }
    }

    #[test]
    fn live_and_transitions_open_their_windows_and_the_windows_lapse() {
        let ruleset = Ruleset::new(&ProtectionConfig::default());
        assert!(!ruleset.is_active());
        assert!(!ruleset.observe(&state("final", 1, "UPCOMING"), true, 1_000));
        assert!(!ruleset.is_active(), "a seed state is not a transition");
        assert!(!ruleset.observe(&state("final", 1, "UPCOMING"), false, 1_000));
        assert!(ruleset.observe(&state("final", 2, "LIVE"), false, 1_000));
        assert!(ruleset.is_active());
        assert_eq!(
            ruleset.reasons(1_000),
            vec![RulesetReason::EventLive, RulesetReason::StageTransition]
        );
        assert_eq!(ruleset.active_until_ms(1_000), Some(301_000));
        // The same stage again (a payload update) is no transition; an old version is ignored.
        assert!(!ruleset.observe(&state("final", 3, "LIVE"), false, 2_000));
        assert!(!ruleset.observe(&state("final", 1, "ENDED"), false, 2_000));
        assert_eq!(ruleset.reasons(100_000), vec![RulesetReason::EventLive]);
        assert!(!ruleset.refresh(301_000));
    }

    #[test]
    fn operators_force_it_on_or_off_and_load_triggers_hold() {
        let ruleset = Ruleset::new(&ProtectionConfig::default());
        ruleset.set_mode(RulesetMode::On, 0);
        assert!(ruleset.is_active());
        assert_eq!(ruleset.reasons(0), vec![RulesetReason::Forced]);
        ruleset.set_mode(RulesetMode::Off, 0);
        ruleset.observe(&state("final", 1, "LIVE"), false, 0);
        assert!(!ruleset.is_active());
        ruleset.set_mode(RulesetMode::Auto, 0);
        assert!(ruleset.is_active(), "the LIVE window still holds in auto");
        ruleset.observe_load(
            LoadSignals {
                latency_high: true,
                rate_high: false,
            },
            400_000,
        );
        assert_eq!(ruleset.reasons(400_001), vec![RulesetReason::Latency]);
        assert!(!ruleset.refresh(430_000));
    }
}
