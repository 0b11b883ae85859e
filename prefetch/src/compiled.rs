//! The compiled fast path: a query planned once per distinct text and answered by writing JSON
//! straight from the pages, instead of resolving every field through the general executor.
//!
//! A device's prefetch is one of a few known queries (persisted, or the SDK's), and nearly all
//! of its work is the same few hundred title cards. So:
//!
//! - [`Plan::compile`] turns a parsed document into a plan of what to write, field by field,
//!   when the whole document is in the subset the plan covers: one query operation without
//!   variables or directives, one root field (`prefetch`, or `event` with a literal id), plain
//!   fields and aliases (no fragments), `__typename`, and the literal arguments `stage(name:)`
//!   and `artwork(sizes:)`. Anything else (and any document that would not validate) is not
//!   compiled, and the request goes through async-graphql as before.
//! - [`Plan::run`] loads what the request needs exactly as the resolvers do (the event list,
//!   each event's page through [`RequestScope::event_prefetch`], which records the versions and
//!   pages for the cache hint and the response cache), then writes the `data` object. A title
//!   card is rendered once per card selection of a plan and reused by every response of every
//!   profile (within [`CompiledConfig::card_bytes`] for the whole node). When the executor would
//!   answer with an error (an unknown event or stage, a page that cannot be loaded) the plan
//!   gives way to it, so errors stay exactly as they are.
//!
//! The written JSON is the executor's: the same values with the same escaping (serde_json's,
//! which async-graphql serializes through), which `compiled::tests` checks over random
//! queries, profiles and states. The keys of each object come in the selection's order, as
//! the GraphQL spec asks; async-graphql 7.2 writes them in the order its resolvers finish, so
//! its bytes (and the `ETag` hashed from them) can differ from one request to the next, the
//! plan's never do.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{InputType, Positioned, Value};
use ringside_sync_util::{LockExt, RwLockExt};

use crate::LiveEvent;
use crate::catalog::{ArtworkSize, Catalog};
use crate::materialize::Row as PageRow;
use crate::materialize::RowKind;
use crate::schema::{EventPrefetch, RequestScope, StageRows};

/// Settings of the compiled fast path (docs/OPERATIONS.md lists them).
#[derive(Debug, Clone)]
pub struct CompiledConfig {
    /// Plans kept (each for one query text and operation name; a text that cannot be compiled
    /// is remembered too, so it is not tried again). 0 turns the fast path off. Default 256.
    pub plans: u64,
    /// Bytes of rendered title cards kept for reuse, over every plan of the node. Past it,
    /// cards are rendered per response. Default 64 MiB: every card of the default catalog, in
    /// the selections of a few queries.
    pub card_bytes: usize,
}

impl Default for CompiledConfig {
    fn default() -> Self {
        Self {
            plans: 256,
            card_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The plans of a node, by query text and operation name (`None`: outside the subset), and
/// the budget their rendered cards share.
#[derive(Debug)]
pub(crate) struct Plans {
    plans: Option<moka::sync::Cache<PlanKey, Option<Arc<Plan>>>>,
    pub budget: Arc<CardBudget>,
}

type PlanKey = (Arc<str>, Option<String>);

impl Plans {
    pub fn new(config: &CompiledConfig, registry: &ringside_telemetry::Registry) -> Self {
        let budget = CardBudget::new(config.card_bytes);
        let cards = budget.clone();
        registry.computed_gauge(
            "ringside_prefetch_compiled_card_bytes",
            "Bytes of rendered title cards the compiled plans keep for later responses.",
            Arc::new(move || i64::try_from(cards.used()).unwrap_or(i64::MAX)),
        );
        Self {
            plans: (config.plans > 0).then(|| moka::sync::Cache::new(config.plans)),
            budget,
        }
    }

    /// The plan of `query` (operation `operation`) if one was compiled already.
    pub fn cached(&self, query: &Arc<str>, operation: Option<&str>) -> Option<Arc<Plan>> {
        let key = (query.clone(), operation.map(str::to_owned));
        self.plans.as_ref()?.get(&key).flatten()
    }

    /// The plan of `query` (operation `operation`), compiled from `document` the first time;
    /// `None` when the fast path is off or the query is outside its subset.
    pub fn get(
        &self,
        query: &Arc<str>,
        operation: Option<&str>,
        document: &ExecutableDocument,
    ) -> Option<Arc<Plan>> {
        let key = (query.clone(), operation.map(str::to_owned));
        self.plans.as_ref()?.get_with(key, || {
            Plan::compile(document, operation, &self.budget).map(Arc::new)
        })
    }
}

/// A response key as written: `"name":`.
type Key = Box<[u8]>;
type Fields<F> = Vec<(Key, F)>;

/// What to write for one query.
#[derive(Debug)]
pub(crate) struct Plan {
    key: Key,
    root: Root,
    /// The size of the last answer written, to size the next one's buffer at once instead of
    /// growing it (and faulting in fresh pages) a doubling at a time.
    last_len: AtomicUsize,
}

#[derive(Debug)]
enum Root {
    Prefetch(Fields<PrefetchField>),
    Event {
        id: String,
        fields: Fields<EventField>,
    },
}

#[derive(Debug)]
enum PrefetchField {
    Typename,
    ProfileId,
    CacheHint(Fields<HintField>),
    Events(Fields<EventField>),
}

#[derive(Debug)]
enum HintField {
    Typename,
    TtlSeconds,
    Events(Fields<VersionField>),
}

#[derive(Debug)]
enum VersionField {
    Typename,
    EventId,
    Version,
}

#[derive(Debug)]
enum EventField {
    Typename,
    Id,
    Topic,
    Title,
    StartsAt,
    Stages,
    State(Fields<StateField>),
    BuiltForVersion,
    ByStage(Fields<StageField>),
    Stage(String, Fields<StageField>),
}

#[derive(Debug)]
enum StateField {
    Typename,
    Topic,
    Version,
    Stage,
    PublishedAtMs,
    Payload,
    FetchWithinMs,
}

#[derive(Debug)]
enum StageField {
    Typename,
    Stage,
    Home(Fields<SurfaceField>),
    EventPage(Fields<SurfaceField>),
}

#[derive(Debug)]
enum SurfaceField {
    Typename(&'static str),
    /// `billboard` on the home surface, `hero` on the event page.
    Lead(Card),
    Rows(Fields<RowField>),
}

#[derive(Debug)]
enum RowField {
    Typename,
    Id,
    Kind,
    Title,
    Cards(Card),
}

/// One selection of title cards, and the cards it has rendered.
#[derive(Debug)]
struct Card {
    fields: Fields<CardField>,
    rendered: RwLock<HashMap<u32, Box<[u8]>>>,
    budget: Arc<CardBudget>,
}

#[derive(Debug)]
enum CardField {
    Typename,
    Id,
    Title,
    Synopsis,
    Genres,
    Maturity,
    RuntimeMinutes,
    Year,
    Artwork(Option<Vec<ArtworkSize>>, Fields<ArtworkField>),
}

#[derive(Debug)]
enum ArtworkField {
    Typename,
    Size,
    Url,
    Width,
    Height,
}

/// Rendered card bytes held by every plan of a node, against [`CompiledConfig::card_bytes`].
#[derive(Debug)]
pub(crate) struct CardBudget {
    used: AtomicUsize,
    max: usize,
}

impl CardBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes `bytes` from the budget if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + bytes <= self.max).then_some(used + bytes)
            })
            .is_ok()
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        let held: usize = self.rendered.read_locked().values().map(|c| c.len()).sum();
        self.budget.used.fetch_sub(held, Ordering::Relaxed);
    }
}

/// Compiles one selection set: plain fields only, each response key once, every field known
/// to `field` (which also checks its arguments and sub-selection).
fn fields<F>(
    set: &SelectionSet,
    mut field: impl FnMut(&str, &Field) -> Option<F>,
) -> Option<Fields<F>> {
    let mut compiled: Fields<F> = Vec::with_capacity(set.items.len());
    for item in &set.items {
        let Selection::Field(Positioned { node, .. }) = &item.node else {
            return None;
        };
        if !node.directives.is_empty() {
            return None;
        }
        let name = node.name.node.as_str();
        let response_key = node
            .alias
            .as_ref()
            .map_or(name, |alias| alias.node.as_str());
        let key = key_bytes(response_key);
        // The executor merges repeated keys; the plan does not, so it leaves them to it.
        if compiled.iter().any(|(seen, _)| *seen == key) {
            return None;
        }
        compiled.push((key, field(name, node)?));
    }
    (!compiled.is_empty()).then_some(compiled)
}

fn key_bytes(name: &str) -> Key {
    let mut key = serde_json::to_vec(name).unwrap_or_default();
    key.push(b':');
    key.into_boxed_slice()
}

/// A scalar field: no arguments, no sub-selection.
fn leaf<F>(field: &Field, value: F) -> Option<F> {
    (field.arguments.is_empty() && field.selection_set.node.items.is_empty()).then_some(value)
}

/// An object field without arguments: its compiled sub-selection.
fn object<F, G>(
    field: &Field,
    sub: impl FnMut(&str, &Field) -> Option<G>,
    wrap: impl FnOnce(Fields<G>) -> F,
) -> Option<F> {
    if !field.arguments.is_empty() {
        return None;
    }
    fields(&field.selection_set.node, sub).map(wrap)
}

/// An argument's value when it is a literal (no variables in it).
fn literal(value: &Positioned<async_graphql_value::Value>) -> Option<Value> {
    value.node.clone().into_const()
}

/// The one literal string argument `name` of `field`, and nothing else.
fn string_argument(field: &Field, name: &str) -> Option<String> {
    match field.arguments.as_slice() {
        [(argument, value)] if argument.node.as_str() == name => match literal(value)? {
            Value::String(text) => Some(text),
            _ => None,
        },
        _ => None,
    }
}

impl Plan {
    /// The plan of `document`'s operation `operation` (the only one when `None`), when all of
    /// it is in the subset the fast path covers.
    pub fn compile(
        document: &ExecutableDocument,
        operation: Option<&str>,
        budget: &Arc<CardBudget>,
    ) -> Option<Self> {
        if !document.fragments.is_empty() {
            return None;
        }
        // The operation the executor would run (async-graphql's own choice); where it would
        // answer an error instead, so does the plan, by giving way.
        let definition = match (&document.operations, operation) {
            (DocumentOperations::Single(single), None) => &single.node,
            (DocumentOperations::Multiple(many), Some(name)) => &many.get(name)?.node,
            (DocumentOperations::Multiple(many), None) if many.len() == 1 => {
                &many.values().next()?.node
            }
            _ => return None,
        };
        if definition.ty != OperationType::Query
            || !definition.variable_definitions.is_empty()
            || !definition.directives.is_empty()
        {
            return None;
        }
        let mut roots = fields(&definition.selection_set.node, |name, field| match name {
            "prefetch" => object(
                field,
                |name, f| prefetch_field(name, f, budget),
                Root::Prefetch,
            ),
            "event" => {
                let id = string_argument(field, "id")?;
                let fields = fields(&field.selection_set.node, |name, f| {
                    event_field(name, f, budget)
                })?;
                Some(Root::Event { id, fields })
            }
            _ => None,
        })?;
        // One root field: with two, the executor resolves them concurrently and the cache hint
        // of one may or may not count the other's event.
        if roots.len() != 1 {
            return None;
        }
        let (key, root) = roots.pop()?;
        Some(Self {
            key,
            root,
            last_len: AtomicUsize::new(4096),
        })
    }

    /// The `data` object for the request of `scope`, within `limit` bytes, from `events` (the
    /// event list as the node knows it now).
    pub async fn run(&self, scope: &RequestScope, limit: usize, events: Vec<LiveEvent>) -> Written {
        let expected = self.last_len.load(Ordering::Relaxed);
        let mut out = Out {
            bytes: Vec::with_capacity(expected.min(limit) + expected / 8),
            limit,
            too_large: false,
        };
        match self.write(scope, &mut out, events).await {
            Some(()) => {
                self.last_len.store(out.len(), Ordering::Relaxed);
                Written::Data(out.bytes)
            }
            None if out.too_large => Written::TooLarge,
            None => Written::GiveWay,
        }
    }

    async fn write(
        &self,
        scope: &RequestScope,
        out: &mut Out,
        events: Vec<LiveEvent>,
    ) -> Option<()> {
        out.push(b'{');
        out.extend_from_slice(&self.key);
        match &self.root {
            Root::Prefetch(fields) => {
                let events: Vec<LiveEvent> =
                    events.into_iter().filter(LiveEvent::is_visible).collect();
                let resolved = futures_util::future::try_join_all(
                    events.into_iter().map(|e| scope.event_prefetch(e)),
                )
                .await
                .ok()?;
                let versions = scope.hints.locked().versions.clone();
                write_object(out, fields, |out, field| match field {
                    PrefetchField::Typename => string(out, "Prefetch"),
                    PrefetchField::ProfileId => string(out, &scope.profile_id),
                    PrefetchField::CacheHint(fields) => {
                        write_object(out, fields, |out, f| match f {
                            HintField::Typename => string(out, "CacheHint"),
                            HintField::TtlSeconds => number(out, scope.ttl_seconds as i32),
                            HintField::Events(fields) => {
                                write_list(out, &versions, |out, (id, v)| {
                                    write_object(out, fields, |out, f| match f {
                                        VersionField::Typename => string(out, "EventVersion"),
                                        VersionField::EventId => string(out, id),
                                        VersionField::Version => number(out, *v),
                                    })
                                })
                            }
                        })
                    }
                    PrefetchField::Events(fields) => {
                        write_list(out, &resolved, |out, event| write_event(out, fields, event))
                    }
                })?;
            }
            Root::Event { id, fields } => {
                let event = events.into_iter().find(|e| e.id.as_str() == id)?;
                let event = scope.event_prefetch(event).await.ok()?;
                write_event(out, fields, &event)?;
            }
        }
        out.push(b'}');
        out.within_limit()
    }
}

fn prefetch_field(name: &str, field: &Field, budget: &Arc<CardBudget>) -> Option<PrefetchField> {
    match name {
        "__typename" => leaf(field, PrefetchField::Typename),
        "profileId" => leaf(field, PrefetchField::ProfileId),
        "cacheHint" => object(
            field,
            |name, f| match name {
                "__typename" => leaf(f, HintField::Typename),
                "ttlSeconds" => leaf(f, HintField::TtlSeconds),
                "events" => object(
                    f,
                    |name, f| match name {
                        "__typename" => leaf(f, VersionField::Typename),
                        "eventId" => leaf(f, VersionField::EventId),
                        "version" => leaf(f, VersionField::Version),
                        _ => None,
                    },
                    HintField::Events,
                ),
                _ => None,
            },
            PrefetchField::CacheHint,
        ),
        "events" => object(
            field,
            |n, f| event_field(n, f, budget),
            PrefetchField::Events,
        ),
        _ => None,
    }
}

fn event_field(name: &str, field: &Field, budget: &Arc<CardBudget>) -> Option<EventField> {
    let stage_fields = |field: &Field| {
        fields(&field.selection_set.node, |name, f| {
            stage_field(name, f, budget)
        })
    };
    match name {
        "__typename" => leaf(field, EventField::Typename),
        "id" => leaf(field, EventField::Id),
        "topic" => leaf(field, EventField::Topic),
        "title" => leaf(field, EventField::Title),
        "startsAt" => leaf(field, EventField::StartsAt),
        "stages" => leaf(field, EventField::Stages),
        "builtForVersion" => leaf(field, EventField::BuiltForVersion),
        "state" => object(
            field,
            |name, f| {
                let value = match name {
                    "__typename" => StateField::Typename,
                    "topic" => StateField::Topic,
                    "version" => StateField::Version,
                    "stage" => StateField::Stage,
                    "publishedAtMs" => StateField::PublishedAtMs,
                    "payload" => StateField::Payload,
                    "fetchWithinMs" => StateField::FetchWithinMs,
                    _ => return None,
                };
                leaf(f, value)
            },
            EventField::State,
        ),
        "byStage" if field.arguments.is_empty() => stage_fields(field).map(EventField::ByStage),
        "stage" => {
            let name = string_argument(field, "name")?;
            Some(EventField::Stage(name, stage_fields(field)?))
        }
        _ => None,
    }
}

fn stage_field(name: &str, field: &Field, budget: &Arc<CardBudget>) -> Option<StageField> {
    let surface = |typename: &'static str, lead: &'static str| {
        move |name: &str, f: &Field| match name {
            "__typename" => leaf(f, SurfaceField::Typename(typename)),
            "rows" => object(f, |n, f| row_field(n, f, budget), SurfaceField::Rows),
            _ if name == lead => card(f, budget).map(SurfaceField::Lead),
            _ => None,
        }
    };
    match name {
        "__typename" => leaf(field, StageField::Typename),
        "stage" => leaf(field, StageField::Stage),
        "home" => object(field, surface("HomeSurface", "billboard"), StageField::Home),
        "eventPage" => object(
            field,
            surface("EventPageSurface", "hero"),
            StageField::EventPage,
        ),
        _ => None,
    }
}

fn row_field(name: &str, field: &Field, budget: &Arc<CardBudget>) -> Option<RowField> {
    match name {
        "__typename" => leaf(field, RowField::Typename),
        "id" => leaf(field, RowField::Id),
        "kind" => leaf(field, RowField::Kind),
        "title" => leaf(field, RowField::Title),
        "cards" => card(field, budget).map(RowField::Cards),
        _ => None,
    }
}

fn card(field: &Field, budget: &Arc<CardBudget>) -> Option<Card> {
    object(
        field,
        |name, f| match name {
            "__typename" => leaf(f, CardField::Typename),
            "id" => leaf(f, CardField::Id),
            "title" => leaf(f, CardField::Title),
            "synopsis" => leaf(f, CardField::Synopsis),
            "genres" => leaf(f, CardField::Genres),
            "maturity" => leaf(f, CardField::Maturity),
            "runtimeMinutes" => leaf(f, CardField::RuntimeMinutes),
            "year" => leaf(f, CardField::Year),
            "artwork" => {
                let sizes = match f.arguments.as_slice() {
                    [] => None,
                    [(argument, value)] if argument.node.as_str() == "sizes" => {
                        match literal(value)? {
                            Value::Null => None,
                            Value::List(items) => Some(
                                items
                                    .iter()
                                    .map(|item| match item {
                                        Value::Enum(name) => artwork_size(name.as_str()),
                                        _ => None,
                                    })
                                    .collect::<Option<Vec<_>>>()?,
                            ),
                            _ => return None,
                        }
                    }
                    _ => return None,
                };
                let fields = fields(&f.selection_set.node, |name, f| {
                    let value = match name {
                        "__typename" => ArtworkField::Typename,
                        "size" => ArtworkField::Size,
                        "url" => ArtworkField::Url,
                        "width" => ArtworkField::Width,
                        "height" => ArtworkField::Height,
                        _ => return None,
                    };
                    leaf(f, value)
                })?;
                Some(CardField::Artwork(sizes, fields))
            }
            _ => None,
        },
        |fields| Card {
            fields,
            rendered: RwLock::default(),
            budget: budget.clone(),
        },
    )
}

/// The GraphQL name of an enum value, as the executor writes it.
fn enum_name<T: InputType>(value: &T) -> String {
    match value.to_value() {
        Value::Enum(name) => name.to_string(),
        _ => String::new(),
    }
}

fn artwork_size(name: &str) -> Option<ArtworkSize> {
    ArtworkSize::ALL
        .into_iter()
        .find(|size| enum_name(size) == name)
}

/// The bytes written so far, refusing to grow past the response limit.
pub(crate) struct Out {
    bytes: Vec<u8>,
    limit: usize,
    too_large: bool,
}

impl Out {
    fn push(&mut self, byte: u8) {
        self.bytes.push(byte);
    }

    fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// `None` (stop writing) once past the limit.
    fn within_limit(&mut self) -> Option<()> {
        self.too_large |= self.bytes.len() > self.limit;
        (!self.too_large).then_some(())
    }
}

impl std::io::Write for Out {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buffer);
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a plan's run came to.
#[derive(Debug)]
pub(crate) enum Written {
    /// The `data` object's bytes.
    Data(Vec<u8>),
    /// Larger than the response limit: the request is refused as too large.
    TooLarge,
    /// The executor must answer (it would give an error).
    GiveWay,
}

fn string(out: &mut Out, text: &str) -> Option<()> {
    serde_json::to_writer(&mut *out, text).ok()
}

fn number(out: &mut Out, value: impl std::fmt::Display) -> Option<()> {
    let mut text = String::new();
    write!(text, "{value}").ok()?;
    out.extend_from_slice(text.as_bytes());
    Some(())
}

fn write_object<F>(
    out: &mut Out,
    fields: &Fields<F>,
    mut each: impl FnMut(&mut Out, &F) -> Option<()>,
) -> Option<()> {
    out.push(b'{');
    for (index, (key, field)) in fields.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key);
        each(out, field)?;
    }
    out.push(b'}');
    Some(())
}

fn write_list<T>(
    out: &mut Out,
    items: impl IntoIterator<Item = T>,
    mut each: impl FnMut(&mut Out, T) -> Option<()>,
) -> Option<()> {
    out.push(b'[');
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        each(out, item)?;
        out.within_limit()?;
    }
    out.push(b']');
    Some(())
}

fn write_event(out: &mut Out, fields: &Fields<EventField>, event: &EventPrefetch) -> Option<()> {
    let live = &event.event;
    write_object(out, fields, |out, field| match field {
        EventField::Typename => string(out, "EventPrefetch"),
        EventField::Id => string(out, live.id.as_str()),
        EventField::Topic => string(out, &live.id.topic().to_string()),
        EventField::Title => string(out, &live.title),
        EventField::StartsAt => string(out, &live.starts_at),
        EventField::Stages => write_list(out, &live.stages, |out, s| string(out, s.as_str())),
        EventField::BuiltForVersion => number(out, live.state.as_ref().map_or(0, |s| s.version)),
        EventField::State(fields) => match &live.state {
            None => {
                out.extend_from_slice(b"null");
                Some(())
            }
            Some(state) => write_object(out, fields, |out, field| match field {
                StateField::Typename => string(out, "EventState"),
                StateField::Topic => string(out, &state.topic.to_string()),
                StateField::Version => number(out, state.version),
                StateField::Stage => string(out, state.stage.as_str()),
                StateField::PublishedAtMs => number(out, state.published_at_ms),
                StateField::Payload => {
                    // As the resolver does: parsed into a JSON value, then written out.
                    let payload: serde_json::Value = serde_json::from_str(state.payload.as_json())
                        .unwrap_or(serde_json::Value::Null);
                    serde_json::to_writer(&mut *out, &payload).ok()
                }
                StateField::FetchWithinMs => match state.fetch_within_ms {
                    Some(ms) => number(out, ms),
                    None => {
                        out.extend_from_slice(b"null");
                        Some(())
                    }
                },
            }),
        },
        EventField::ByStage(fields) => write_list(
            out,
            (0..live.stages.len()).filter_map(|i| event.stage_rows(i)),
            |out, stage| write_stage(out, fields, &stage, event),
        ),
        // An unknown stage is the executor's error to give.
        EventField::Stage(name, fields) => {
            let index = live.stages.iter().position(|s| s.as_str() == name)?;
            let stage = event.stage_rows(index)?;
            write_stage(out, fields, &stage, event)
        }
    })
}

fn write_stage(
    out: &mut Out,
    fields: &Fields<StageField>,
    stage: &StageRows<'_>,
    event: &EventPrefetch,
) -> Option<()> {
    let catalog = &event.catalog;
    let base = &event.artwork_base;
    let surface = |out: &mut Out, fields: &Fields<SurfaceField>, rows: &[&PageRow]| {
        write_object(out, fields, |out, field| match field {
            SurfaceField::Typename(name) => string(out, name),
            SurfaceField::Lead(card) => match stage.lead {
                None => {
                    out.extend_from_slice(b"null");
                    Some(())
                }
                Some(lead) => card.write(out, lead, catalog, base),
            },
            SurfaceField::Rows(fields) => write_list(out, rows, |out, row| {
                write_object(out, fields, |out, field| match field {
                    RowField::Typename => string(out, "Row"),
                    RowField::Id => string(out, &event.row_id(row, &stage.stage)),
                    RowField::Kind => string(out, &enum_name::<RowKind>(&row.kind)),
                    RowField::Title => {
                        string(out, &event.row_title(row, &stage.stage, stage.index))
                    }
                    RowField::Cards(card) => write_list(out, &row.titles, |out, &title| {
                        card.write(out, title, catalog, base)
                    }),
                })
            }),
        })
    };
    write_object(out, fields, |out, field| match field {
        StageField::Typename => string(out, "StageContent"),
        StageField::Stage => string(out, &stage.stage),
        StageField::Home(fields) => surface(out, fields, &stage.home),
        StageField::EventPage(fields) => surface(out, fields, &stage.event_page),
    })
}

impl Card {
    /// Writes title `index` as this selection renders it, rendering it once.
    fn write(&self, out: &mut Out, index: u32, catalog: &Catalog, base: &str) -> Option<()> {
        if let Some(rendered) = self.rendered.read_locked().get(&index) {
            out.extend_from_slice(rendered);
            return Some(());
        }
        let start = out.len();
        self.render(out, index, catalog, base)?;
        if self.budget.take(out.len() - start) {
            let rendered: Box<[u8]> = out.bytes[start..].into();
            let mut cards = self.rendered.write_locked();
            if let Some(previous) = cards.insert(index, rendered) {
                // Rendered twice at once: give the first copy's bytes back.
                self.budget
                    .used
                    .fetch_sub(previous.len(), Ordering::Relaxed);
            }
        }
        Some(())
    }

    fn render(&self, out: &mut Out, index: u32, catalog: &Catalog, base: &str) -> Option<()> {
        let title = &catalog.titles.get(index as usize)?.title;
        write_object(out, &self.fields, |out, field| match field {
            CardField::Typename => string(out, "TitleCard"),
            CardField::Id => string(out, &title.id),
            CardField::Title => string(out, &title.name),
            CardField::Synopsis => string(out, &title.synopsis),
            CardField::Genres => write_list(out, &title.genres, |out, g| string(out, g)),
            CardField::Maturity => string(out, title.maturity.label()),
            CardField::RuntimeMinutes => number(out, i32::from(title.runtime_minutes)),
            CardField::Year => number(out, i32::from(title.year)),
            CardField::Artwork(sizes, fields) => write_list(
                out,
                title
                    .artwork
                    .iter()
                    .filter(|a| sizes.as_ref().is_none_or(|w| w.contains(&a.size))),
                |out, artwork| {
                    let (width, height) = artwork.size.pixels();
                    write_object(out, fields, |out, field| match field {
                        ArtworkField::Typename => string(out, "Artwork"),
                        ArtworkField::Size => string(out, &enum_name(&artwork.size)),
                        ArtworkField::Url => string(out, &format!("{base}{}", artwork.path)),
                        ArtworkField::Width => number(out, i32::from(width)),
                        ArtworkField::Height => number(out, i32::from(height)),
                    })
                },
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;
    use ringside_protocol::{EventState, Payload, Priority};

    use super::*;
    use crate::schema::ResponseHints;
    use crate::testing::Node;
    use crate::{PrefetchService, limits};

    /// A random query in the fast path's subset (with, now and then, a stage no event has),
    /// built from `rng`.
    struct Query<'a> {
        rng: &'a mut fastrand::Rng,
        stages: &'a [String],
        events: &'a [String],
    }

    impl Query<'_> {
        /// A selection set of some of `fields` (at least one), each with a chance of an alias
        /// and in a random order; `nested` writes a field's own sub-selection and arguments.
        fn set(&mut self, fields: &[&str], nested: fn(&mut Self, &str) -> String) -> String {
            let mut chosen: Vec<&str> = fields
                .iter()
                .copied()
                .filter(|_| self.rng.u8(..) < 150)
                .collect();
            if chosen.is_empty() {
                chosen.push(fields[self.rng.usize(..fields.len())]);
            }
            self.rng.shuffle(&mut chosen);
            let parts: Vec<String> = chosen
                .into_iter()
                .enumerate()
                .map(|(i, name)| {
                    let alias = if self.rng.u8(..) < 40 {
                        format!("a{i}: ")
                    } else {
                        String::new()
                    };
                    format!("{alias}{name}{}", nested(self, name))
                })
                .collect();
            format!(" {{ {} }}", parts.join(" "))
        }

        fn root(&mut self) -> String {
            if self.rng.bool() {
                let set = self.set(
                    &["__typename", "profileId", "cacheHint", "events"],
                    |q, f| match f {
                        "cacheHint" => {
                            q.set(&["__typename", "ttlSeconds", "events"], |q, f| match f {
                                "events" => q.set(&["__typename", "eventId", "version"], none),
                                _ => String::new(),
                            })
                        }
                        "events" => q.event(),
                        _ => String::new(),
                    },
                );
                format!("{{ prefetch{set} }}")
            } else {
                let id = self.events[self.rng.usize(..self.events.len())].clone();
                let set = self.event();
                format!("{{ event(id: \"{id}\"){set} }}")
            }
        }

        fn event(&mut self) -> String {
            let fields = [
                "__typename",
                "id",
                "topic",
                "title",
                "startsAt",
                "stages",
                "state",
                "builtForVersion",
                "byStage",
                "stage",
            ];
            self.set(&fields, |q, f| match f {
                "state" => q.set(
                    &[
                        "__typename",
                        "topic",
                        "version",
                        "stage",
                        "publishedAtMs",
                        "payload",
                        "fetchWithinMs",
                    ],
                    none,
                ),
                "byStage" => q.stage(),
                "stage" => {
                    let name = if q.rng.u8(..) < 10 {
                        "NO_SUCH_STAGE".to_owned()
                    } else {
                        q.stages[q.rng.usize(..q.stages.len())].clone()
                    };
                    format!("(name: \"{name}\"){}", q.stage())
                }
                _ => String::new(),
            })
        }

        fn stage(&mut self) -> String {
            self.set(
                &["__typename", "stage", "home", "eventPage"],
                |q, f| match f {
                    "home" => q.set(&["__typename", "billboard", "rows"], Self::surface),
                    "eventPage" => q.set(&["__typename", "hero", "rows"], Self::surface),
                    _ => String::new(),
                },
            )
        }

        fn surface(&mut self, field: &str) -> String {
            match field {
                "billboard" | "hero" => self.card(),
                "rows" => self.set(&["__typename", "id", "kind", "title", "cards"], |q, f| {
                    if f == "cards" {
                        q.card()
                    } else {
                        String::new()
                    }
                }),
                _ => String::new(),
            }
        }

        fn card(&mut self) -> String {
            let fields = [
                "__typename",
                "id",
                "title",
                "synopsis",
                "genres",
                "maturity",
                "runtimeMinutes",
                "year",
                "artwork",
            ];
            self.set(&fields, |q, f| {
                if f != "artwork" {
                    return String::new();
                }
                let sizes = match q.rng.u8(..4) {
                    0 => String::new(),
                    1 => "(sizes: null)".to_owned(),
                    _ => {
                        let all = ["POSTER_SMALL", "POSTER_LARGE", "BACKDROP", "BILLBOARD"];
                        let some: Vec<&str> = all.into_iter().filter(|_| q.rng.bool()).collect();
                        format!("(sizes: [{}])", some.join(", "))
                    }
                };
                let set = q.set(&["__typename", "size", "url", "width", "height"], none);
                format!("{sizes}{set}")
            })
        }
    }

    fn none(_: &mut Query<'_>, _: &str) -> String {
        String::new()
    }

    const PAYLOADS: [&str; 5] = [
        "{}",
        r#"{"round":3,"score":[10,9],"note":"tie \"break\" ü ✓ \u0001"}"#,
        r#"{"z":1,"a":{"nested":[true,false,null,1.5,-2e-3]},"m":"x"}"#,
        r#"{"big":18446744073709551615,"neg":-9223372036854775808,"f":0.1}"#,
        r#"{"emoji":"🥊","tab":"a\tb","slash":"\/"}"#,
    ];

    /// Gives every event a random state (or none).
    fn random_states(node: &Node, rng: &mut fastrand::Rng) {
        for event in node.events.0.lock().unwrap().iter_mut() {
            event.state = rng.bool().then(|| EventState {
                topic: event.id.topic(),
                version: rng.u64(1..1 << 50),
                stage: event.stages[rng.usize(..event.stages.len())].clone(),
                published_at_ms: rng.u64(..1 << 45),
                payload: Payload::parse(PAYLOADS[rng.usize(..PAYLOADS.len())]).unwrap(),
                priority: Priority::Critical,
                fetch_within_ms: rng.bool().then(|| rng.u64(..600_000)),
            });
        }
    }

    fn scope(service: &Arc<PrefetchService>, profile: &str, ttl: u32) -> RequestScope {
        RequestScope {
            service: service.clone(),
            profile_id: profile.to_owned(),
            hints: Arc::new(Mutex::new(ResponseHints::default())),
            ttl_seconds: ttl,
        }
    }

    fn check(node: &Node, service: &Arc<PrefetchService>, seed: u64) -> Result<(), TestCaseError> {
        let mut rng = fastrand::Rng::with_seed(seed);
        random_states(node, &mut rng);
        let (stages, events): (Vec<String>, Vec<String>) = {
            let events = node.events.0.lock().unwrap();
            let mut stages: Vec<String> = events
                .iter()
                .flat_map(|e| e.stages.iter().map(|s| s.to_string()))
                .collect();
            stages.dedup();
            (stages, events.iter().map(|e| e.id.to_string()).collect())
        };
        let query = Query {
            rng: &mut rng,
            stages: &stages,
            events: &events,
        }
        .root();
        // Another profile each time, now and then one the catalog does not know (cold start).
        let profile = match rng.usize(..=node.catalog.profiles.len()) {
            n if n == node.catalog.profiles.len() => "not-in-the-catalog".to_owned(),
            n => node.catalog.profiles[n].id.to_string(),
        };
        let ttl = rng.u32(60..3600);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let document = limits::parse_and_check(&query, &service.config.limits)
                .map_err(|e| TestCaseError::fail(format!("{e}: {query}")))?;
            let plan = Plan::compile(&document, None, &service.plans.budget);
            let plan = plan.ok_or_else(|| TestCaseError::fail(format!("not compiled: {query}")))?;
            let fast = scope(service, &profile, ttl);
            let events = service.events.events().await;
            let written = plan.run(&fast, usize::MAX, events).await;
            let executor = scope(service, &profile, ttl);
            let request = async_graphql::Request::new(query.as_str()).data(executor.clone());
            let response = service.schema.execute(request).await;
            match written {
                Written::TooLarge => prop_assert!(false, "no limit to pass: {query}"),
                Written::GiveWay => prop_assert!(
                    !response.errors.is_empty(),
                    "the plan gave way, but the executor answered: {query}"
                ),
                Written::Data(bytes) => {
                    prop_assert!(response.errors.is_empty(), "{:?}: {query}", response.errors);
                    // The same JSON. Not always the same bytes: async-graphql 7.2 writes an
                    // object's keys in the order its resolvers finish, the plan in the
                    // selection's order (as the GraphQL spec asks).
                    let written: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    let expected = serde_json::to_value(&response.data).unwrap();
                    prop_assert!(written == expected, "different data for {}", query);
                    let (fast, executor) = (fast.hints.locked(), executor.hints.locked());
                    prop_assert_eq!(&fast.versions, &executor.versions);
                    prop_assert_eq!(fast.pages.len(), executor.pages.len());
                }
            }
            Ok(())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 200,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The fast path's `data` is the executor's (the same JSON) over random queries of its
        /// subset, profiles, event states and TTLs; where the plan gives way, the executor
        /// answers an error.
        #[test]
        fn the_fast_path_answers_the_executors_json(seed in any::<u64>()) {
            thread_local! {
                static NODE: (Node, Arc<PrefetchService>) = {
                    let node = Node::new();
                    let service = node.service_with(|_| {});
                    (node, service)
                };
            }
            NODE.with(|(node, service)| check(node, service, seed))?;
        }
    }

    fn compiles(query: &str) -> bool {
        let document =
            limits::parse_and_check(query, &crate::limits::QueryLimits::default()).unwrap();
        Plan::compile(&document, None, &CardBudget::new(1 << 20)).is_some()
    }

    #[test]
    fn what_the_fast_path_leaves_to_the_executor() {
        assert!(compiles("{ prefetch { profileId } }"));
        assert!(compiles("query Named { prefetch { profileId } }"));
        for query in [
            // Two root fields, repeated keys, fragments, variables, directives, unknown
            // fields and arguments, arguments that are not literals of the right kind.
            "{ prefetch { profileId } event(id: \"x\") { id } }",
            "{ prefetch { profileId profileId } }",
            "{ prefetch { ...F } } fragment F on Prefetch { profileId }",
            "{ prefetch { ... on Prefetch { profileId } } }",
            "query Q($id: ID!) { event(id: $id) { id } }",
            "{ prefetch { profileId @include(if: true) } }",
            "{ prefetch { nope } }",
            "{ prefetch(x: 1) { profileId } }",
            "{ event(id: 7) { id } }",
            "{ event(id: \"x\") { stage(name: \"LIVE\", other: 1) { stage } } }",
            "{ event(id: \"x\") { byStage { home { billboard { artwork(sizes: POSTER_SMALL) { url } } } } } }",
            "{ event(id: \"x\") { byStage { home { billboard { artwork(sizes: [HUGE]) { url } } } } } }",
            "{ event(id: \"x\") { title { x } } }",
            "{ event(id: \"x\") { state } }",
            "{ __schema { types { name } } }",
        ] {
            assert!(!compiles(query), "{query}");
        }
    }

    #[tokio::test]
    async fn rendered_cards_stay_within_their_budget_and_are_given_back() {
        let node = Node::new();
        let query = "{ prefetch { events { byStage { home { rows { cards { id title synopsis \
                     artwork { url } } } } } } } }";
        let budget = CardBudget::new(8 * 1024);
        let service = node.service_with(|_| {});
        let document = limits::parse_and_check(query, &service.config.limits).unwrap();
        let plan = Plan::compile(&document, None, &budget).unwrap();
        for profile in 0..10 {
            let profile = node.catalog.profiles[profile].id.to_string();
            let events = service.events.events().await;
            let written = plan
                .run(&scope(&service, &profile, 60), usize::MAX, events)
                .await;
            assert!(matches!(written, Written::Data(_)), "{written:?}");
        }
        let used = budget.used();
        assert!(used > 4 * 1024 && used <= 8 * 1024, "{used} bytes of cards");
        drop(plan);
        assert_eq!(
            budget.used(),
            0,
            "a dropped plan gives its cards' bytes back"
        );
    }
}
