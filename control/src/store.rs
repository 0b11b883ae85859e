//! Events and their versions.

use std::collections::BTreeMap;
use std::sync::RwLock;

use futures_util::future::BoxFuture;
use ringside_protocol::admin::{CreateEvent, EventSummary};
use ringside_protocol::{EventId, EventState, Payload, Stage};
use ringside_sync_util::RwLockExt;

use crate::ControlError;

/// An event and its current state (`None` before the first publish).
pub type EventWithState = (EventSummary, Option<EventState>);

/// An accepted state change, before the bus has it.
#[derive(Debug, Clone)]
pub struct NewState {
    pub state: EventState,
    /// The store had no version counter for the event: its first publish, or a counter it lost
    /// (then the versions the nodes hold are the floor to ask again with).
    pub counter_missing: bool,
}

/// The events of a deployment and the current state of each.
///
/// Versions strictly increase per event. A version handed out by [`EventStore::next_state`] whose
/// publish then fails is never reused, so versions may have gaps but never repeat. Devices must
/// treat versions as opaque increasing numbers, not as counters.
pub trait EventStore: Send + Sync + 'static {
    fn create(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<EventSummary>, ControlError>>;
    fn get(&self, id: &EventId) -> BoxFuture<'_, Result<EventSummary, ControlError>>;
    /// Replaces the title, start and stages of the existing event `event.id` (404 when there
    /// is none); its state and versions stay. The caller validated `event` and holds the
    /// event's publish lock.
    fn update(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>>;
    /// Assigns the next version of `id` to a state with `stage` and `payload`, after checking
    /// the stage is one of the event's, and stamps it with the publish time. The version is
    /// newer than every version the store assigned or holds, than the clock, and than `held`:
    /// the newest version any node reports holding (0 when none is known), so that a store that
    /// lost its counter and state still hands out a version the hubs take.
    fn next_state(
        &self,
        id: &EventId,
        stage: Stage,
        payload: Payload,
        held: u64,
    ) -> BoxFuture<'_, Result<NewState, ControlError>>;
    /// Records that the bus accepted `state`: it becomes the event's current state (unless a
    /// newer one already is). A best-effort message is never the event's state: it is not
    /// recorded (it used a version of the event's sequence, nothing more).
    fn record_published(&self, state: &EventState) -> BoxFuture<'_, Result<(), ControlError>>;
    /// Every event with its current state (`None` before the first publish).
    fn with_states(&self) -> BoxFuture<'_, Result<Vec<EventWithState>, ControlError>>;
    /// Takes `id`'s publish lock across every control instance sharing this store, so that one
    /// event's versions reach the bus in version order (a compacted log keeps the last record
    /// per key, which must be the newest). A store only one process uses needs none: the
    /// control plane's own per-event lock covers it.
    fn lock_publishes(
        &self,
        _id: &EventId,
    ) -> BoxFuture<'_, Result<Option<PublishLock>, ControlError>> {
        Box::pin(async { Ok(None) })
    }
    /// Releases a lock [`EventStore::lock_publishes`] took.
    fn unlock_publishes(&self, _lock: PublishLock) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A held publish lock: its key and the token that proves this holder took it.
#[derive(Debug)]
pub struct PublishLock {
    pub key: String,
    pub token: String,
}

#[derive(Debug)]
struct EventRecord {
    summary: EventSummary,
    /// Highest version handed out, published or not.
    last_assigned: u64,
    current: Option<EventState>,
}

/// The store of a single-process deployment. Its events live as long as the process.
///
/// Versions are `max(previous + 1, publish time in ms)`: consecutive within a burst, and still
/// increasing after a restart that forgot every previous version, so devices that resubscribe
/// with the version they hold are never stuck behind a counter that started over.
#[derive(Debug, Default)]
pub struct MemoryEventStore {
    events: RwLock<BTreeMap<EventId, EventRecord>>,
}

impl MemoryEventStore {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Refuses a stage the event does not define, naming the ones it does.
pub(crate) fn check_stage(
    id: &EventId,
    stages: &[Stage],
    stage: &Stage,
) -> Result<(), ControlError> {
    if stages.contains(stage) {
        return Ok(());
    }
    let known: Vec<&str> = stages.iter().map(Stage::as_str).collect();
    Err(ControlError::invalid(
        "stage",
        format!(
            "stage {stage} is not one of event {id}'s stages ({})",
            known.join(", ")
        ),
    ))
}

fn unknown_event(id: &EventId) -> ControlError {
    ControlError::NotFound(format!("unknown event {id}"))
}

impl EventStore for MemoryEventStore {
    fn create(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        let result = (|| {
            let mut events = self.events.write_locked();
            if events.contains_key(&event.id) {
                return Err(ControlError::Conflict(format!(
                    "event {} already exists",
                    event.id
                )));
            }
            let summary = EventSummary {
                topic: event.id.topic(),
                id: event.id.clone(),
                title: event.title,
                starts_at: event.starts_at,
                stages: event.stages,
                stage: None,
                version: 0,
                published_at_ms: None,
            };
            events.insert(
                event.id,
                EventRecord {
                    summary: summary.clone(),
                    last_assigned: 0,
                    current: None,
                },
            );
            Ok(summary)
        })();
        Box::pin(async move { result })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<EventSummary>, ControlError>> {
        let events = self.events.read_locked();
        let list = events
            .values()
            .map(|record| record.summary.clone())
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn get(&self, id: &EventId) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        let events = self.events.read_locked();
        let result = events
            .get(id)
            .map(|r| r.summary.clone())
            .ok_or_else(|| unknown_event(id));
        Box::pin(async move { result })
    }

    fn update(&self, event: CreateEvent) -> BoxFuture<'_, Result<EventSummary, ControlError>> {
        let mut events = self.events.write_locked();
        let result = match events.get_mut(&event.id) {
            Some(record) => {
                record.summary.title = event.title;
                record.summary.starts_at = event.starts_at;
                record.summary.stages = event.stages;
                Ok(record.summary.clone())
            }
            None => Err(unknown_event(&event.id)),
        };
        Box::pin(async move { result })
    }

    fn next_state(
        &self,
        id: &EventId,
        stage: Stage,
        payload: Payload,
        held: u64,
    ) -> BoxFuture<'_, Result<NewState, ControlError>> {
        let result = (|| {
            let mut events = self.events.write_locked();
            let published_at_ms = ringside_protocol::unix_now_ms();
            let record = events.get_mut(id).ok_or_else(|| unknown_event(id))?;
            check_stage(id, &record.summary.stages, &stage)?;
            let counter_missing = record.last_assigned == 0;
            record.last_assigned = (record.last_assigned + 1)
                .max(published_at_ms)
                .max(held.saturating_add(1));
            let state = EventState {
                topic: record.summary.topic.clone(),
                version: record.last_assigned,
                stage,
                published_at_ms,
                payload,
                priority: ringside_protocol::Priority::Critical,
                fetch_within_ms: None,
            };
            Ok(NewState {
                state,
                counter_missing,
            })
        })();
        Box::pin(async move { result })
    }

    fn record_published(&self, state: &EventState) -> BoxFuture<'_, Result<(), ControlError>> {
        if !state.priority.is_critical() {
            return Box::pin(async { Ok(()) });
        }
        let mut events = self.events.write_locked();
        if let Some(record) = events.get_mut(&state.topic.event_id())
            && record.summary.version < state.version
        {
            record.summary.version = state.version;
            record.summary.stage = Some(state.stage.clone());
            record.summary.published_at_ms = Some(state.published_at_ms);
            record.current = Some(state.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn with_states(&self) -> BoxFuture<'_, Result<Vec<EventWithState>, ControlError>> {
        let events = self.events.read_locked();
        let all = events
            .values()
            .map(|r| (r.summary.clone(), r.current.clone()))
            .collect();
        Box::pin(async move { Ok(all) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside_protocol::admin::CreateEvent;

    #[tokio::test]
    async fn versions_increase_and_survive_a_store_that_starts_over() {
        let create = || CreateEvent {
            id: EventId::parse("e").expect("id"),
            title: "E".into(),
            starts_at: "2026-12-01T20:00:00Z".into(),
            stages: vec![Stage::parse("LIVE").expect("stage")],
        };
        fn next(store: &MemoryEventStore) -> BoxFuture<'_, Result<NewState, ControlError>> {
            let id = EventId::parse("e").expect("id");
            store.next_state(
                &id,
                Stage::parse("LIVE").expect("stage"),
                Payload::empty(),
                0,
            )
        }
        let before_ms = ringside_protocol::unix_now_ms();
        let first_store = MemoryEventStore::new();
        first_store.create(create()).await.expect("created");
        let a = next(&first_store).await.expect("a").state;
        let b = next(&first_store).await.expect("b").state;
        assert!(a.version >= before_ms, "versions start from the clock");
        assert!(b.version > a.version);
        assert!(b.published_at_ms >= a.published_at_ms);

        // A restarted process starts with an empty store: once the clock has passed the old
        // versions (they run ahead of it only during bursts of several publishes per
        // millisecond), its versions exceed them.
        while ringside_protocol::unix_now_ms() <= b.version {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let second_store = MemoryEventStore::new();
        second_store.create(create()).await.expect("created");
        let c = next(&second_store).await.expect("c").state;
        assert!(c.version > b.version);

        let unknown = second_store
            .next_state(
                &EventId::parse("nope").expect("id"),
                Stage::parse("LIVE").expect("stage"),
                Payload::empty(),
                0,
            )
            .await;
        assert!(matches!(unknown, Err(ControlError::NotFound(_))));
        let bad_stage = second_store
            .next_state(
                &EventId::parse("e").expect("id"),
                Stage::parse("HALF").expect("stage"),
                Payload::empty(),
                0,
            )
            .await;
        assert!(matches!(
            bad_stage,
            Err(ControlError::InvalidRequest { .. })
        ));
    }
}
