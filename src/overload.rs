//! The protection crate wired into a process: what feeds it and what follows it.
//!
//! - [`ObservedBus`]: the bus every state of this process passes through, publishing or
//!   consuming, tells protection's ruleset about each state once (stage transitions open the
//!   ruleset's windows). Per state, never per device delivery.
//! - [`run_fleet_setting_poller`]: with Redis, every process follows the protection settings
//!   an operator last put (`PUT /v1/admin/protection`) within a poll interval.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use ringside_broadcaster::{BroadcastError, Bus, BusFeed, FeedItem};
use ringside_control::protection_api::FleetSetting;
use ringside_protection::Protection;
use ringside_protocol::EventState;
use ringside_protocol::admin::ProtectionUpdate;
use tokio_util::sync::CancellationToken;

/// A [`Bus`] that shows protection every state it carries.
pub struct ObservedBus {
    inner: Arc<dyn Bus>,
    protection: Arc<Protection>,
}

impl std::fmt::Debug for ObservedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBus").finish_non_exhaustive()
    }
}

impl ObservedBus {
    pub fn new(inner: Arc<dyn Bus>, protection: Arc<Protection>) -> Self {
        Self { inner, protection }
    }
}

impl Bus for ObservedBus {
    fn publish(&self, state: EventState) -> BoxFuture<'_, Result<(), BroadcastError>> {
        Box::pin(async move {
            // Kept for after the publish: a state the bus refused is no transition.
            let observed = state.clone();
            self.inner.publish(state).await?;
            self.protection.observe_state(&observed, false);
            Ok(())
        })
    }

    fn subscribe(&self) -> Box<dyn BusFeed> {
        Box::new(ObservedFeed {
            inner: self.inner.subscribe(),
            protection: self.protection.clone(),
            caught_up: false,
        })
    }
}

/// A feed whose states protection sees; those before `CaughtUp` (the latest state of every
/// topic, replayed) are remembered without counting as transitions.
struct ObservedFeed {
    inner: Box<dyn BusFeed>,
    protection: Arc<Protection>,
    caught_up: bool,
}

impl BusFeed for ObservedFeed {
    fn next(&mut self) -> BoxFuture<'_, Result<FeedItem, BroadcastError>> {
        Box::pin(async move {
            let item = self.inner.next().await?;
            match &item {
                FeedItem::State(state) => self.protection.observe_state(state, !self.caught_up),
                FeedItem::CaughtUp => self.caught_up = true,
            }
            Ok(item)
        })
    }
}

/// Every `fleet_poll_interval`, applies the settings last put for the fleet, until `stopped`.
/// A Redis that does not answer leaves the process as it is (and is logged once per outage).
pub async fn run_fleet_setting_poller(
    fleet: FleetSetting,
    protection: Arc<Protection>,
    stopped: CancellationToken,
) {
    let mut tick = tokio::time::interval(protection.config().fleet_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stopped.cancelled() => return,
            _ = tick.tick() => {}
        }
        match fleet.read().await {
            Ok(put) => {
                failing = false;
                let current = protection.settings();
                let changed = ProtectionUpdate {
                    ruleset: put.ruleset.filter(|mode| Some(*mode) != current.ruleset),
                    protection: put
                        .protection
                        .filter(|mode| Some(*mode) != current.protection),
                };
                if changed.ruleset.is_some() || changed.protection.is_some() {
                    protection.apply(changed);
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read the fleet's protection setting; keeping this process's");
                }
                failing = true;
            }
        }
    }
}
