//! A prefetch node for the crate's own tests: a small generated catalog, its events (which a
//! test may change while the service runs), a memory page store and a device-token key.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use ringside_auth::{DeviceClaims, DeviceClass, DeviceTokenKey};
use ringside_protocol::{EventId, Stage};
use ringside_telemetry::Registry;

use crate::catalog::Catalog;
use crate::generate::{DatasetSize, generate};
use crate::store::MemoryPageStore;
use crate::{EventSource, LiveEvent, PrefetchConfig, PrefetchService};

/// Events a test changes while the service runs.
pub(crate) struct Events(pub Mutex<Vec<LiveEvent>>);

impl EventSource for Events {
    fn events(&self) -> BoxFuture<'_, Vec<LiveEvent>> {
        let events = self.0.lock().unwrap().clone();
        Box::pin(async move { events })
    }
}

pub(crate) struct Node {
    pub catalog: Arc<Catalog>,
    pub store: Arc<MemoryPageStore>,
    pub events: Arc<Events>,
    pub key: DeviceTokenKey,
}

impl Node {
    pub fn new() -> Self {
        let dataset = generate(DatasetSize {
            titles: 1_000,
            profiles: 60,
            seed: 3,
        });
        let catalog =
            Arc::new(Catalog::build(dataset.titles, dataset.profiles, dataset.events).unwrap());
        let events = catalog
            .events
            .iter()
            .map(|event| LiveEvent {
                id: EventId::parse(&event.content.id).unwrap(),
                title: event.content.title.clone(),
                starts_at: event.content.starts_at.clone(),
                stages: event
                    .content
                    .stages
                    .iter()
                    .map(|s| Stage::parse(s).unwrap())
                    .collect(),
                state: None,
            })
            .collect();
        Self {
            store: Arc::new(MemoryPageStore::new(catalog.clone())),
            catalog,
            events: Arc::new(Events(Mutex::new(events))),
            key: DeviceTokenKey::new(b"a-device-secret-of-32-bytes-or-more!").unwrap(),
        }
    }

    /// A service over this node's store and events, configured by `configure` from the
    /// defaults.
    pub fn service_with(
        &self,
        configure: impl FnOnce(&mut PrefetchConfig),
    ) -> Arc<PrefetchService> {
        let mut config = PrefetchConfig::default();
        configure(&mut config);
        PrefetchService::new(
            self.catalog.clone(),
            self.store.clone(),
            self.events.clone(),
            self.key.clone(),
            config,
            &Registry::new(),
        )
    }

    /// A device token for device `tv-<profile>` of the catalog's profile number `profile`.
    pub fn token(&self, profile: usize) -> String {
        self.key.sign(&DeviceClaims {
            sub: format!("tv-{profile}"),
            profile: self.catalog.profiles[profile].id.to_string(),
            class: DeviceClass::Tv,
            exp: ringside_protocol::unix_now_ms() / 1000 + 3600,
            nbf: None,
            priority: None,
        })
    }
}
