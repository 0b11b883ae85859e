#![allow(missing_debug_implementations)] // GraphQL output types; they are never logged.
//! The GraphQL schema devices prefetch through. `schema.graphql` at the repository root is
//! its exported SDL (a test keeps them equal).

use std::sync::{Arc, Mutex};

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, ID, InputValueError,
    InputValueResult, Object, Scalar, ScalarType, Schema, SimpleObject, Value,
};
use ringside_sync_util::LockExt;

use crate::catalog::{ArtworkSize, Catalog, GENRES};
use crate::limits::QueryLimits;
use crate::materialize::{Page, Row as PageRow, RowKind};
use crate::service::PrefetchService;
use crate::{LiveEvent, PrefetchError};

pub type PrefetchSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

pub fn build_schema(limits: QueryLimits, introspection: bool) -> PrefetchSchema {
    // Our own limits run first with precise error codes (see `limits`); these are a backstop.
    let schema = Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .limit_depth(limits.max_depth * 2)
        .limit_complexity(limits.max_fields * 4);
    if introspection {
        schema.finish()
    } else {
        schema.disable_introspection().finish()
    }
}

impl ErrorExtensions for PrefetchError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string())
            .extend_with(|_, extensions| extensions.set("code", self.code()))
    }
}

/// What the HTTP layer learns from a request's resolution: the versions the data was built
/// for, for the cache hint, and the pages it was built from, for the response cache.
#[derive(Debug, Default)]
pub struct ResponseHints {
    /// Event id → version, once per event however many fields resolved it.
    pub versions: std::collections::BTreeMap<String, u64>,
    /// Every page read, with the bytes it was decoded from.
    pub pages: Vec<(crate::store::PageKey, bytes::Bytes)>,
}

/// Per-request data: who asks, and where to record hints.
#[derive(Clone)]
pub struct RequestScope {
    pub service: Arc<PrefetchService>,
    /// The profile from the device token.
    pub profile_id: String,
    pub hints: Arc<Mutex<ResponseHints>>,
    /// The device-cache TTL of this response, in seconds (jittered per device).
    pub ttl_seconds: u32,
}

impl RequestScope {
    /// One event's content for this request's profile, its version and page recorded in the
    /// hints (the executor's resolvers and the compiled fast path both load through it).
    pub(crate) async fn event_prefetch(
        &self,
        event: LiveEvent,
    ) -> Result<EventPrefetch, PrefetchError> {
        let profile = self.service.page_profile(&self.profile_id);
        let (page, key, blob) = self.service.page(&event, &profile).await?;
        let version = event.state.as_ref().map_or(0, |s| s.version);
        let mut hints = self.hints.locked();
        hints.versions.insert(event.id.to_string(), version);
        // Once per page; a page read again with other bytes (refreshed in between) is
        // recorded twice, and no page cache can hold both, so such an answer is never reused.
        if !hints
            .pages
            .iter()
            .any(|(read, bytes)| *read == key && *bytes == blob)
        {
            hints.pages.push((key, blob));
        }
        drop(hints);
        Ok(EventPrefetch {
            catalog: self.service.catalog.clone(),
            artwork_base: Arc::from(self.service.config.artwork_base_url.as_str()),
            event,
            page,
        })
    }
}

fn scope<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a RequestScope> {
    ctx.data::<RequestScope>()
        .map_err(|_| PrefetchError::Internal.extend())
}

/// A 64-bit integer (versions, millisecond timestamps), as a JSON number. Values stay below
/// 2^53, so JavaScript reads them exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Long(pub u64);

#[Scalar]
impl ScalarType for Long {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::Number(n) => n
                .as_u64()
                .map(Long)
                .ok_or_else(|| InputValueError::custom("expected a non-negative integer")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::Number(self.0.into())
    }
}

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Everything this device's profile needs for every upcoming or live event, for every stage
    /// of each, in one round trip. The profile is the device token's; there is no way to ask
    /// for another's.
    async fn prefetch(&self, ctx: &Context<'_>) -> async_graphql::Result<Prefetch> {
        let scope = scope(ctx)?;
        let events: Vec<LiveEvent> = scope
            .service
            .events
            .events()
            .await
            .into_iter()
            .filter(LiveEvent::is_visible)
            .collect();
        let resolved =
            futures_util::future::try_join_all(events.into_iter().map(|e| scope.event_prefetch(e)))
                .await
                .map_err(|e| e.extend())?;
        let hints = scope.hints.locked();
        Ok(Prefetch {
            profile_id: ID(scope.profile_id.clone()),
            cache_hint: CacheHint {
                ttl_seconds: scope.ttl_seconds as i32,
                events: hints
                    .versions
                    .iter()
                    .map(|(id, version)| EventVersion {
                        event_id: ID(id.clone()),
                        version: Long(*version),
                    })
                    .collect(),
            },
            events: resolved,
        })
    }

    /// One event by id, whatever its stage (upcoming, live or ended).
    async fn event(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<EventPrefetch> {
        let scope = scope(ctx)?;
        let event = scope
            .service
            .events
            .events()
            .await
            .into_iter()
            .find(|e| e.id.as_str() == id.as_str())
            .ok_or_else(|| PrefetchError::UnknownEvent(id.to_string()).extend())?;
        scope.event_prefetch(event).await.map_err(|e| e.extend())
    }
}

/// The answer to `prefetch`.
#[derive(SimpleObject)]
pub struct Prefetch {
    /// The profile the data is for (the device token's).
    pub profile_id: ID,
    pub cache_hint: CacheHint,
    pub events: Vec<EventPrefetch>,
}

/// How long the device may keep this response, and which event versions it was built for.
#[derive(SimpleObject)]
pub struct CacheHint {
    /// Seconds to keep the response; jittered per device so devices that fetched together do
    /// not expire together (one device gets the same value every time).
    pub ttl_seconds: i32,
    pub events: Vec<EventVersion>,
}

#[derive(SimpleObject)]
pub struct EventVersion {
    pub event_id: ID,
    /// The event state version the data was built for (0 before the first publish).
    pub version: Long,
}

/// The state of an event: the same message the WebSocket `state` frame carries.
#[derive(SimpleObject)]
#[graphql(name = "EventState")]
pub struct EventStateObject {
    pub topic: String,
    pub version: Long,
    pub stage: String,
    pub published_at_ms: Long,
    /// The operator's JSON object, unchanged.
    pub payload: async_graphql::Json<serde_json::Value>,
    /// The window, in milliseconds from `publishedAtMs`, within which a device that lacks this
    /// stage's content should fetch it, at a uniformly random moment inside it; null when there
    /// is nothing to spread (fetch at once).
    pub fetch_within_ms: Option<Long>,
}

/// One stage of an event's page, before it becomes GraphQL objects or JSON.
pub(crate) struct StageRows<'a> {
    pub stage: String,
    /// The stage's position in the event's stage list.
    pub index: usize,
    /// The billboard of the home surface, and the hero of the event page.
    pub lead: Option<u32>,
    pub home: Vec<&'a PageRow>,
    pub event_page: Vec<&'a PageRow>,
}

/// One event's content for every stage.
pub struct EventPrefetch {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) artwork_base: Arc<str>,
    pub(crate) event: LiveEvent,
    page: Arc<Page>,
}

impl EventPrefetch {
    /// Stage `index` of the page as both paths write it: its name, its lead title, and its rows
    /// on the home surface and on the event page, in the order they are shown.
    pub(crate) fn stage_rows(&self, index: usize) -> Option<StageRows<'_>> {
        let page = self.page.stages.iter().find(|s| s.stage == index)?;
        let stage = self.event.stages.get(index)?.to_string();
        let (related, home): (Vec<&PageRow>, Vec<&PageRow>) =
            page.rows.iter().partition(|r| r.kind == RowKind::Related);
        let mut event_page: Vec<&PageRow> = page
            .rows
            .iter()
            .filter(|r| r.kind == RowKind::Event)
            .collect();
        event_page.extend(related);
        Some(StageRows {
            stage,
            index,
            lead: page.billboard,
            home,
            event_page,
        })
    }

    fn stage_content(&self, index: usize) -> Option<StageContent> {
        let rows = self.stage_rows(index)?;
        let card = |title: u32| TitleCard {
            catalog: self.catalog.clone(),
            index: title,
            artwork_base: self.artwork_base.clone(),
        };
        let row = |row: &&PageRow| Row {
            id: ID(self.row_id(row, &rows.stage)),
            kind: row.kind,
            title: self.row_title(row, &rows.stage, index),
            cards: row.titles.iter().map(|&t| card(t)).collect(),
        };
        Some(StageContent {
            stage: rows.stage.clone(),
            home: HomeSurface {
                billboard: rows.lead.map(card),
                rows: rows.home.iter().map(row).collect(),
            },
            event_page: EventPageSurface {
                hero: rows.lead.map(card),
                rows: rows.event_page.iter().map(row).collect(),
            },
        })
    }

    /// A row's id: `<event>:<stage>:<row>`, stable across requests.
    pub(crate) fn row_id(&self, row: &PageRow, stage: &str) -> String {
        format!("{}:{}:{}", self.event.id, stage, row_id(row))
    }

    pub(crate) fn row_title(&self, row: &PageRow, stage: &str, index: usize) -> String {
        let event = &self.event.title;
        let last = index + 1 == self.event.stages.len();
        match row.kind {
            RowKind::Event if stage == "LIVE" => format!("Live now: {event}"),
            RowKind::Event if index == 0 => format!("Get ready for {event}"),
            RowKind::Event if last => format!("After {event}"),
            RowKind::Event => format!("{event}: {}", stage.replace('_', " ").to_lowercase()),
            RowKind::Related => format!("More around {event}"),
            RowKind::TopPicks => "Top picks for you".into(),
            RowKind::Genre => format!(
                "{} for you",
                GENRES.get(row.param as usize).unwrap_or(&"More")
            ),
            RowKind::BecauseYouWatched => format!(
                "Because you watched {}",
                self.catalog
                    .titles
                    .get(row.param as usize)
                    .map_or("a favourite", |t| t.title.name.as_str())
            ),
            RowKind::Trending => "Trending now".into(),
        }
    }
}

fn row_id(row: &PageRow) -> String {
    match row.kind {
        RowKind::Event => "event".into(),
        RowKind::Related => "related".into(),
        RowKind::TopPicks => "top-picks".into(),
        RowKind::Genre => format!("genre-{}", row.param),
        RowKind::BecauseYouWatched => format!("because-{}", row.param),
        RowKind::Trending => "trending".into(),
    }
}

#[Object]
impl EventPrefetch {
    async fn id(&self) -> ID {
        ID(self.event.id.to_string())
    }

    /// The WebSocket topic that carries this event's state.
    async fn topic(&self) -> String {
        self.event.id.topic().to_string()
    }

    async fn title(&self) -> &str {
        &self.event.title
    }

    /// RFC 3339.
    async fn starts_at(&self) -> &str {
        &self.event.starts_at
    }

    /// The event's stages, in order.
    async fn stages(&self) -> Vec<String> {
        self.event.stages.iter().map(ToString::to_string).collect()
    }

    /// The current state; null before the first publish.
    async fn state(&self) -> Option<EventStateObject> {
        self.event.state.as_ref().map(|state| EventStateObject {
            topic: state.topic.to_string(),
            version: Long(state.version),
            stage: state.stage.to_string(),
            published_at_ms: Long(state.published_at_ms),
            payload: async_graphql::Json(
                serde_json::from_str(state.payload.as_json()).unwrap_or(serde_json::Value::Null),
            ),
            fetch_within_ms: state.fetch_within_ms.map(Long),
        })
    }

    /// The state version this content was built for (0 before the first publish).
    async fn built_for_version(&self) -> Long {
        Long(self.event.state.as_ref().map_or(0, |s| s.version))
    }

    /// The content of every stage, keyed by stage name.
    async fn by_stage(&self) -> Vec<StageContent> {
        (0..self.event.stages.len())
            .filter_map(|i| self.stage_content(i))
            .collect()
    }

    /// The content of one stage.
    async fn stage(&self, name: String) -> async_graphql::Result<StageContent> {
        self.event
            .stages
            .iter()
            .position(|s| s.as_str() == name)
            .and_then(|i| self.stage_content(i))
            .ok_or_else(|| {
                PrefetchError::UnknownStage {
                    event: self.event.id.to_string(),
                    stage: name,
                }
                .extend()
            })
    }
}

/// What a device shows at one stage.
#[derive(SimpleObject)]
pub struct StageContent {
    pub stage: String,
    pub home: HomeSurface,
    pub event_page: EventPageSurface,
}

/// The home screen: a billboard and rows.
#[derive(SimpleObject)]
pub struct HomeSurface {
    /// Null only when the profile may see no title at all.
    pub billboard: Option<TitleCard>,
    pub rows: Vec<Row>,
}

/// The event's own page: a hero and its rows.
#[derive(SimpleObject)]
pub struct EventPageSurface {
    /// Null only when the profile may see no title at all.
    pub hero: Option<TitleCard>,
    pub rows: Vec<Row>,
}

/// A ranked row of title cards.
#[derive(SimpleObject)]
pub struct Row {
    /// Stable across requests: `<event>:<stage>:<row>`.
    pub id: ID,
    pub kind: RowKind,
    pub title: String,
    pub cards: Vec<TitleCard>,
}

#[derive(SimpleObject)]
pub struct Artwork {
    pub size: ArtworkSize,
    pub url: String,
    pub width: i32,
    pub height: i32,
}

/// A title as a card: display metadata and artwork references.
pub struct TitleCard {
    catalog: Arc<Catalog>,
    index: u32,
    artwork_base: Arc<str>,
}

impl TitleCard {
    fn entry(&self) -> &crate::catalog::Title {
        &self.catalog.titles[self.index as usize].title
    }
}

#[Object]
impl TitleCard {
    async fn id(&self) -> ID {
        ID(self.entry().id.clone())
    }

    async fn title(&self) -> &str {
        &self.entry().name
    }

    async fn synopsis(&self) -> &str {
        &self.entry().synopsis
    }

    async fn genres(&self) -> &[String] {
        &self.entry().genres
    }

    /// Age rating: ALL, 7+, 13+, 16+ or 18+.
    async fn maturity(&self) -> &'static str {
        self.entry().maturity.label()
    }

    async fn runtime_minutes(&self) -> i32 {
        i32::from(self.entry().runtime_minutes)
    }

    async fn year(&self) -> i32 {
        i32::from(self.entry().year)
    }

    /// Artwork references, for the sizes asked for (all when none are named).
    async fn artwork(&self, sizes: Option<Vec<ArtworkSize>>) -> Vec<Artwork> {
        // Resolvers here never wait (pages are in memory by now), so without this a large
        // response would be one long poll: no other task would run on this worker and the
        // execution deadline could not fire. This is the field a query multiplies most.
        tokio::task::consume_budget().await;
        let wanted = sizes;
        self.entry()
            .artwork
            .iter()
            .filter(|a| wanted.as_ref().is_none_or(|w| w.contains(&a.size)))
            .map(|a| {
                let (width, height) = a.size.pixels();
                Artwork {
                    size: a.size,
                    url: format!("{}{}", self.artwork_base, a.path),
                    width: i32::from(width),
                    height: i32::from(height),
                }
            })
            .collect()
    }
}
