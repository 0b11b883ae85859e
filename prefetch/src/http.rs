//! `POST /graphql` and `GET /graphql`.
//!
//! - The device token (as for WebSocket: `Authorization: Bearer` or `?token=`) is checked first,
//!   before the body is read: 401 without a valid one, so that clients without a token cannot
//!   hold connections open by trickling bodies. The profile comes from the token and nowhere
//!   else.
//! - A `POST` body must be JSON (no `Content-Type`, or `application/json`): 415 otherwise. One
//!   request per body; batches (a JSON array) are refused.
//! - Bodies (and `GET` query text) over the limit get 413; a body (or `GET` parameter) that is not
//!   JSON, 400. The response's media type follows `Accept` as GraphQL over HTTP says
//!   ([`Media`]): with `application/graphql-response+json` a request error (no `data`: a
//!   document that does not parse or validate, a refused limit, bad variables) is a 4xx; with
//!   `application/json` (or no `Accept`, as most device stacks send) it answers 200. Every error
//!   has a stable `extensions.code`.
//! - Every query text goes through [`limits::parse_and_check`] before it executes, and executes
//!   within [`PrefetchConfig::execution_timeout`](crate::PrefetchConfig::execution_timeout).
//! - Automatic persisted queries: a client sends `extensions.persistedQuery.sha256Hash`; with the
//!   query text the first time (the hash is checked, and the text remembered once it parsed,
//!   passed the limits and validated), with the hash alone afterwards. `GET` requests with a
//!   hash are cacheable: `Cache-Control: private, max-age=…` (per device, never in shared
//!   caches) with `Vary: Authorization`.
//! - Every response carries `extensions.cacheHint`: the device-cache TTL (jittered) and the
//!   event versions the data was built for. One without errors also carries a weak `ETag` of
//!   its data and those versions; `If-None-Match` with it answers `304` without a body.
//! - CORS, only for the web origins a node is given (`--web-origin`): [`with_graphql_cors`] puts a layer in front of `/graphql` alone (never the
//!   admin API) that answers the preflight and echoes an allowed `Origin`; any other origin
//!   gets no CORS header.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_graphql::parser::types::{DocumentOperations, ExecutableDocument};
use async_graphql::{ServerError, Variables};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use ringside_sync_util::LockExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower::Layer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::PrefetchError;
use crate::compiled::Written;
use crate::limits;
use crate::responses::{Encoding, ResponseKey, events_fingerprint};
use crate::schema::{RequestScope, ResponseHints};
use crate::service::PrefetchService;

/// `/graphql`, both methods. CORS is not here but around the whole server
/// ([`with_graphql_cors`]), so that the answers of the layers in front of this router carry it too.
pub fn router(service: Arc<PrefetchService>) -> Router {
    let body_limit = service.config.body_limit_bytes;
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(service)
}

/// `server` (the whole HTTP service, protection's layer included) with requests to `/graphql`,
/// and only those, passing a CORS layer first; `server` unchanged when `origins` is empty.
///
/// Outside protection on purpose: a request protection sheds (`503 OVERLOADED` with
/// `Retry-After`) or refuses (a bad `x-ringside-priority`) is answered with the CORS headers
/// too, so a page on another origin can read the answer and wait as asked instead of seeing a
/// network error. The layer answers every `OPTIONS /graphql` itself, before protection: a
/// preflight costs a few header writes, never a place under the limit.
pub fn with_graphql_cors(server: Router, origins: &[String]) -> Router {
    let Some(cors) = cors_layer(origins) else {
        return server;
    };
    Router::new()
        .route_service("/graphql", cors.layer(server.clone()))
        .fallback_service(server)
}

/// How long a browser may reuse a preflight answer: devices refetch every few minutes, and a
/// preflight per request would double their requests.
const CORS_PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer of `/graphql`, or `None` when no origin is allowed (then no CORS header is
/// ever sent). The methods and headers are exactly what a device sends: `GET` for cacheable
/// persisted queries, `POST` otherwise, the token, JSON, and the priority it lowers itself
/// to. `Retry-After` is exposed so that a page can honour a shed answer.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(ringside_protocol::PRIORITY_HEADER),
                header::IF_NONE_MATCH,
            ])
            .expose_headers([header::RETRY_AFTER, header::ETAG])
            .max_age(CORS_PREFLIGHT_MAX_AGE),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    query: Option<String>,
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Value>,
    /// `null` is no extensions, as GraphQL over HTTP requires.
    #[serde(default, deserialize_with = "null_as_default")]
    extensions: WireExtensions,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// The media type of a `/graphql` answer, negotiated from `Accept` (GraphQL over HTTP):
/// `application/graphql-response+json` when the client lists it (without `q=0`), else
/// `application/json`, the legacy type, which is also what a request without `Accept` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Json,
    GraphqlResponse,
}

impl Media {
    fn of(headers: &HeaderMap) -> Self {
        let listed = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|item| {
                let mut parts = item.split(';');
                let media_type = parts.next().unwrap_or_default().trim();
                media_type.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON)
                    && !parts.any(|parameter| {
                        parameter
                            .trim()
                            .strip_prefix("q=")
                            .and_then(|q| q.trim().parse::<f32>().ok())
                            .is_some_and(|q| q == 0.0)
                    })
            });
        if listed {
            Self::GraphqlResponse
        } else {
            Self::Json
        }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::Json => HeaderValue::from_static("application/json"),
            Self::GraphqlResponse => HeaderValue::from_static(GRAPHQL_RESPONSE_JSON),
        }
    }

    /// The status of an answer that carries no `data` because of `error`: 400 for a body that
    /// is no request in either type; otherwise 200 in the legacy type, and in the spec's own
    /// type 4xx for the client's mistakes and 5xx for what the node could not do.
    fn status_of(self, error: &PrefetchError) -> StatusCode {
        match (self, error) {
            (_, PrefetchError::Malformed(_)) => StatusCode::BAD_REQUEST,
            (Self::Json, _) => StatusCode::OK,
            (Self::GraphqlResponse, PrefetchError::Internal) => StatusCode::INTERNAL_SERVER_ERROR,
            (Self::GraphqlResponse, PrefetchError::StoreUnavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            (Self::GraphqlResponse, PrefetchError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            (Self::GraphqlResponse, _) => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireExtensions {
    persisted_query: Option<PersistedQuery>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PersistedQuery {
    version: u32,
    sha256_hash: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
}

/// What the request's head asks of its answer.
struct Asked {
    method: Method,
    media: Media,
    /// `If-None-Match`: the entity tags the client holds.
    if_none_match: Option<HeaderValue>,
    /// The content coding `Accept-Encoding` prefers, for kept answers.
    encoding: Option<Encoding>,
}

impl Asked {
    fn new(method: Method, headers: &HeaderMap) -> Self {
        Self {
            method,
            media: Media::of(headers),
            if_none_match: headers.get(header::IF_NONE_MATCH).cloned(),
            encoding: Encoding::preferred(headers),
        }
    }

    /// Whether the client holds `etag` (weak comparison, as `If-None-Match` uses; `*` holds
    /// any).
    fn holds(&self, etag: &str) -> bool {
        let Some(value) = self.if_none_match.as_ref().and_then(|v| v.to_str().ok()) else {
            return false;
        };
        fn opaque(tag: &str) -> &str {
            tag.trim().trim_start_matches("W/")
        }
        let wanted = opaque(etag);
        value
            .split(',')
            .any(|tag| tag.trim() == "*" || opaque(tag) == wanted)
    }
}

/// The entity tag of an answer: a hash of its `data` and of the event versions it was built
/// for. Weak: two devices' answers with the same tag may differ in their `extensions` (each
/// device's `ttlSeconds`). XXH3-128: a validator needs no resistance to forgery (a client can
/// only fool its own cache), and hashing every answer's bytes with SHA-256 was a seventh of a
/// compiled answer's CPU.
fn entity_tag(data: &[u8], versions: &BTreeMap<String, u64>) -> String {
    let mut hash = xxhash_rust::xxh3::Xxh3::new();
    hash.update(data);
    for (event, version) in versions {
        hash.update(event.as_bytes());
        hash.update(&[0]);
        hash.update(&version.to_be_bytes());
    }
    format!("W/\"{:032x}\"", hash.digest128())
}

fn error_response(media: Media, status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, media.content_type());
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn prefetch_error_response(media: Media, error: &PrefetchError) -> Response {
    error_response(
        media,
        media.status_of(error),
        error.code(),
        &error.to_string(),
    )
}

/// The device (its id and profile), from its token.
fn authenticate(
    service: &PrefetchService,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<ringside_auth::DeviceClaims, ringside_auth::TokenError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(ringside_auth::bearer_token)
        .or(query_token)
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    service.device_key.verify(token, now)
}

fn unauthenticated(media: Media, error: ringside_auth::TokenError) -> Response {
    error_response(
        media,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        &error.to_string(),
    )
}

/// No `Content-Type` (many device HTTP stacks send none), or `application/json` with any
/// parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

async fn post_graphql(State(service): State<Arc<PrefetchService>>, request: Request) -> Response {
    // The token and the content type come from the head; the body is read only after both
    // pass (a `Bytes` extractor would read it first).
    let asked = Asked::new(Method::Post, request.headers());
    let media = asked.media;
    let device = match authenticate(&service, request.headers(), None) {
        Ok(device) => device,
        Err(error) => return unauthenticated(media, error),
    };
    if !is_json(request.headers()) {
        return error_response(
            media,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the request as JSON: Content-Type: application/json",
        );
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!(
                "request body exceeds {} bytes",
                service.config.body_limit_bytes
            );
            return error_response(
                media,
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                &message,
            );
        }
        Err(rejection) => {
            return error_response(
                media,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &rejection.body_text(),
            );
        }
    };
    // Before serde_json builds values: `variables` nested past the limit are refused with the
    // limit's own code (the outermost object is the request itself).
    let limits = &service.config.limits;
    if limits::json_nesting(&body) > limits.max_nesting + 1 {
        return prefetch_error_response(
            media,
            &PrefetchError::NestedTooDeeply {
                max: limits.max_nesting,
            },
        );
    }
    if body.trim_ascii_start().starts_with(b"[") {
        return prefetch_error_response(
            media,
            &PrefetchError::Malformed(
                "batched requests are not supported: send one request per POST".into(),
            ),
        );
    }
    match serde_json::from_slice::<WireRequest>(&body) {
        Ok(request) => execute(&service, device, request, asked).await,
        Err(error) => prefetch_error_response(
            media,
            &PrefetchError::Malformed(format!("invalid request body: {error}")),
        ),
    }
}

async fn get_graphql(
    State(service): State<Arc<PrefetchService>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let asked = Asked::new(Method::Get, &headers);
    let media = asked.media;
    let wants_page = !params.contains_key("query") && !params.contains_key("extensions");
    if wants_page {
        if service.config.graphiql {
            return Html(GRAPHIQL_PAGE).into_response();
        }
        return error_response(
            media,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "expected a query or a persisted query hash",
        );
    }
    let device = match authenticate(&service, &headers, params.get("token").map(String::as_str)) {
        Ok(device) => device,
        Err(error) => return unauthenticated(media, error),
    };
    // hyper bounds the URI (414 past 64 KiB), not the body limit: hold a GET's request to what
    // a POST body may carry.
    let request_bytes: usize = ["query", "variables", "extensions", "operationName"]
        .iter()
        .filter_map(|name| params.get(*name))
        .map(String::len)
        .sum();
    if request_bytes > service.config.body_limit_bytes {
        let message = format!(
            "query, variables and extensions exceed {} bytes",
            service.config.body_limit_bytes
        );
        return error_response(
            media,
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &message,
        );
    }
    let limits = &service.config.limits;
    let parse_json = |name: &str| -> Result<Option<serde_json::Value>, PrefetchError> {
        let Some(text) = params.get(name) else {
            return Ok(None);
        };
        if limits::json_nesting(text.as_bytes()) > limits.max_nesting {
            return Err(PrefetchError::NestedTooDeeply {
                max: limits.max_nesting,
            });
        }
        serde_json::from_str(text)
            .map(Some)
            .map_err(|error| PrefetchError::Malformed(format!("{name} is not valid JSON: {error}")))
    };
    let extensions = match parse_json("extensions").and_then(|value| {
        // `null`, like no parameter, is no extensions.
        value
            .map(serde_json::from_value::<Option<WireExtensions>>)
            .transpose()
            .map_err(|error| PrefetchError::Malformed(format!("invalid extensions: {error}")))
    }) {
        Ok(extensions) => extensions.flatten().unwrap_or_default(),
        Err(error) => return prefetch_error_response(media, &error),
    };
    let variables = match parse_json("variables") {
        Ok(variables) => variables,
        Err(error) => return prefetch_error_response(media, &error),
    };
    let request = WireRequest {
        query: params.get("query").cloned(),
        operation_name: params.get("operationName").cloned(),
        variables,
        extensions,
    };
    execute(&service, device, request, asked).await
}

pub(crate) fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The query text, resolving automatic persisted queries, and the hash to remember it under
/// once it has proved valid (only for a text sent with its hash).
async fn query_text(
    service: &PrefetchService,
    request: &WireRequest,
) -> Result<(Arc<str>, Option<String>), PrefetchError> {
    match (&request.query, &request.extensions.persisted_query) {
        (Some(query), Some(persisted)) => {
            let hash = persisted.sha256_hash.to_ascii_lowercase();
            if persisted.version != 1 || sha256_hex(query) != hash {
                return Err(PrefetchError::PersistedQueryMismatch);
            }
            Ok((Arc::from(query.as_str()), Some(hash)))
        }
        (None, Some(persisted)) => service
            .persisted_query(&persisted.sha256_hash.to_ascii_lowercase())
            .await
            .map(|query| (query, None))
            .ok_or(PrefetchError::PersistedQueryNotFound),
        (Some(query), None) => Ok((Arc::from(query.as_str()), None)),
        (None, None) => Err(PrefetchError::BadRequest(
            "expected a query or a persisted query hash".into(),
        )),
    }
}

async fn execute(
    service: &Arc<PrefetchService>,
    device: ringside_auth::DeviceClaims,
    request: WireRequest,
    asked: Asked,
) -> Response {
    let media = asked.media;
    if request
        .variables
        .as_ref()
        .is_some_and(|variables| !variables.is_object() && !variables.is_null())
    {
        return prefetch_error_response(
            media,
            &PrefetchError::Malformed("variables must be a JSON object".into()),
        );
    }
    let started = Instant::now();
    service.metrics.requests.increment();
    let response = run(service, device, request, &asked).await;
    service.metrics.request_latency.observe(started.elapsed());
    response
}

async fn run(
    service: &Arc<PrefetchService>,
    device: ringside_auth::DeviceClaims,
    request: WireRequest,
    asked: &Asked,
) -> Response {
    let media = asked.media;
    let (query, register_as) = match query_text(service, &request).await {
        Ok(query) => query,
        Err(error) => {
            service.metrics.request_errors.increment();
            return prefetch_error_response(media, &error);
        }
    };
    let ttl = service.config.device_ttl_for(&device.sub);
    // One deadline for everything this request waits for: the cache's check, the plan, the
    // executor.
    let deadline = tokio::time::Instant::now() + service.config.execution_timeout;
    let timed_out = || {
        service.metrics.request_errors.increment();
        let ms = service.config.execution_timeout.as_millis();
        prefetch_error_response(
            media,
            &PrefetchError::Timeout {
                ms: u64::try_from(ms).unwrap_or(u64::MAX),
            },
        )
    };
    // The event list, read once for the response cache's check and the compiled path.
    let mut events = None;
    // Looked up before parsing: an answer is only kept for a request that passed the limits
    // and validation, and those depend on nothing but the request and the configuration.
    let kept = match service.responses.enabled() {
        false => None,
        true => {
            let key = ResponseKey {
                query: query.clone(),
                operation: request.operation_name.clone(),
                variables: request
                    .variables
                    .as_ref()
                    .filter(|variables| !variables.is_null())
                    .map(ToString::to_string),
                profile: device.profile.clone(),
                ttl_seconds: ttl.as_secs() as u32,
            };
            let Ok(list) = tokio::time::timeout_at(deadline, service.events.events()).await else {
                return timed_out();
            };
            let fingerprint = events_fingerprint(&list);
            events = Some(list);
            let lookup = service
                .responses
                .get(&key, fingerprint, &service.pages, asked.encoding);
            let Ok(hit) = tokio::time::timeout_at(deadline, lookup).await else {
                return timed_out();
            };
            if let Some(hit) = hit {
                if let Some(hash) = register_as
                    && service.persisted.get(&hash).is_none()
                {
                    service.remember_persisted_query(hash, query).await;
                }
                let mut http = answer(asked, ttl, Answer::Data, hit.body, Some(&hit.etag));
                if let Some(encoding) = hit.encoding
                    && http.status() == StatusCode::OK
                {
                    let headers = http.headers_mut();
                    headers.insert(header::CONTENT_ENCODING, encoding.header_value());
                    headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
                }
                return http;
            }
            Some((key, fingerprint))
        }
    };
    let operation = request.operation_name.as_deref();
    // A text with a plan passed the limits and validation when it was compiled (they depend on
    // the text and the configuration only): it is not parsed again; its variables still are
    // checked.
    let (plan, document) = match service.plans.cached(&query, operation) {
        Some(plan) => {
            if let Some(variables) = &request.variables
                && let Err(error) = limits::check_variables(variables, &service.config.limits)
            {
                service.metrics.request_errors.increment();
                return prefetch_error_response(media, &error);
            }
            (Some(plan), None)
        }
        None => match checked_document(service, &query, &request) {
            Ok(document) => (
                service.plans.get(&query, operation, &document),
                Some(document),
            ),
            Err(error) => {
                service.metrics.request_errors.increment();
                return prefetch_error_response(media, &error);
            }
        },
    };
    let scope = |hints: &Arc<Mutex<ResponseHints>>| RequestScope {
        service: service.clone(),
        profile_id: device.profile.clone(),
        hints: hints.clone(),
        ttl_seconds: ttl.as_secs() as u32,
    };
    let mut hints = Arc::new(Mutex::new(ResponseHints::default()));
    // The compiled fast path when the query is in its subset; where it gives way (the
    // executor would answer an error), the executor starts over with hints of its own.
    let mut compiled = None;
    if let Some(plan) = plan {
        let limit = service.config.max_response_bytes;
        let events = match events.take() {
            Some(events) => events,
            None => match tokio::time::timeout_at(deadline, service.events.events()).await {
                Ok(events) => events,
                Err(_) => return timed_out(),
            },
        };
        let fast = scope(&hints);
        match tokio::time::timeout_at(deadline, plan.run(&fast, limit, events)).await {
            Err(_) => return timed_out(),
            Ok(Written::Data(data)) => compiled = Some(data),
            Ok(Written::TooLarge) => {
                service.metrics.request_errors.increment();
                let error = PrefetchError::ResponseTooLarge { max: limit };
                return prefetch_error_response(media, &error);
            }
            Ok(Written::GiveWay) => hints = Arc::new(Mutex::new(ResponseHints::default())),
        }
    }
    service.metrics.count_path(compiled.is_some());
    let mut response = match compiled {
        Some(data) => Executed::Compiled(data),
        None => {
            let document = match document {
                Some(document) => document,
                None => match checked_document(service, &query, &request) {
                    Ok(document) => document,
                    Err(error) => {
                        service.metrics.request_errors.increment();
                        return prefetch_error_response(media, &error);
                    }
                },
            };
            let mut graphql = async_graphql::Request::new(&*query).data(scope(&hints));
            graphql.set_parsed_query(document);
            if let Some(name) = request.operation_name {
                graphql = graphql.operation_name(name);
            }
            if let Some(variables) = request.variables {
                graphql = graphql.variables(Variables::from_json(variables));
            }
            match tokio::time::timeout_at(deadline, service.schema.execute(graphql)).await {
                Ok(response) => Executed::Executor(response),
                Err(_) => return timed_out(),
            }
        }
    };
    let errors = match &mut response {
        Executed::Compiled(_) => &mut Vec::new(),
        Executed::Executor(response) => &mut response.errors,
    };
    // Errors without a path are the request's own (validation); resolver errors have one.
    let validated = errors.iter().all(|error| !error.path.is_empty());
    if let (Some(hash), true) = (register_as, validated) {
        service.remember_persisted_query(hash, query.clone()).await;
    }
    for error in errors.iter_mut() {
        give_code(error, &service.metrics.error_log);
    }
    let failed = !errors.is_empty();
    if failed {
        service.metrics.request_errors.increment();
    }
    let built_for = hints.locked().versions.clone();
    let versions: Vec<serde_json::Value> = built_for
        .iter()
        .map(|(event, version)| serde_json::json!({ "eventId": event, "version": version }))
        .collect();
    let hint = serde_json::json!({ "ttlSeconds": ttl.as_secs(), "events": versions });
    let hint = async_graphql::Value::from_json(hint).unwrap_or(async_graphql::Value::Null);
    match &mut response {
        Executed::Compiled(_) => {}
        Executed::Executor(response) => {
            response.extensions.insert("cacheHint".into(), hint.clone());
        }
    }
    let limit = service.config.max_response_bytes;
    let mut body = BoundedBody {
        bytes: Vec::new(),
        limit,
    };
    let Ok(etag) = write_response(&mut body, &response, hint, &built_for) else {
        service.metrics.request_errors.increment();
        return prefetch_error_response(media, &PrefetchError::ResponseTooLarge { max: limit });
    };
    let body = Bytes::from(body.bytes);
    if let (Some((key, events)), Some(etag), false) = (kept, &etag, failed) {
        let pages = std::mem::take(&mut hints.locked().pages);
        service
            .responses
            .insert(key, events, pages, body.clone(), etag.clone())
            .await;
    }
    let kind = match (failed, validated) {
        (false, _) => Answer::Data,
        (true, true) => Answer::DataWithErrors,
        (true, false) => Answer::RequestError,
    };
    answer(asked, ttl, kind, body, etag.as_deref())
}

/// `query` parsed, within the limits, with its required variables given and, unless
/// introspection is on, no introspection.
fn checked_document(
    service: &PrefetchService,
    query: &str,
    request: &WireRequest,
) -> Result<ExecutableDocument, PrefetchError> {
    let document = limits::parse_and_check(query, &service.config.limits)?;
    check_required_variables(
        &document,
        request.operation_name.as_deref(),
        request.variables.as_ref(),
    )?;
    if let Some(variables) = &request.variables {
        limits::check_variables(variables, &service.config.limits)?;
    }
    if !service.config.introspection && introspects(&document) {
        return Err(PrefetchError::IntrospectionDisabled);
    }
    Ok(document)
}

/// What an answer with a body is, for its status and `Cache-Control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Data without errors: cacheable by the device for its TTL.
    Data,
    /// Data with resolver errors: 200, never cached.
    DataWithErrors,
    /// A document that did not validate (no `data`): 400 in the spec's media type.
    RequestError,
}

/// The HTTP answer for `body`: `304` without it when the client already holds `etag`, else
/// the status, media type, `Cache-Control` and validators `kind` and `asked` call for. The
/// one place both the executor's answers and kept ones are written.
fn answer(asked: &Asked, ttl: Duration, kind: Answer, body: Bytes, etag: Option<&str>) -> Response {
    let cache_control = match kind {
        Answer::Data => HeaderValue::from_str(&format!("private, max-age={}", ttl.as_secs()))
            .unwrap_or(HeaderValue::from_static("no-store")),
        Answer::DataWithErrors | Answer::RequestError => HeaderValue::from_static("no-store"),
    };
    if let Some(etag) = etag
        && asked.holds(etag)
    {
        // The client holds this content already: no body, the same validators and lifetime.
        let mut http = StatusCode::NOT_MODIFIED.into_response();
        let headers = http.headers_mut();
        headers.insert(header::CACHE_CONTROL, cache_control);
        set_validators(headers, Some(etag), asked.method);
        return http;
    }
    let status = if kind != Answer::RequestError || asked.media == Media::Json {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut http = (
        status,
        [(header::CONTENT_TYPE, asked.media.content_type())],
        body,
    )
        .into_response();
    let headers = http.headers_mut();
    headers.insert(header::CACHE_CONTROL, cache_control);
    set_validators(headers, etag, asked.method);
    http
}

/// `ETag` when the answer has one, and `Vary: Authorization` on a `GET` (the answer is the
/// token's profile's).
fn set_validators(headers: &mut HeaderMap, etag: Option<&str>, method: Method) {
    if let Some(value) = etag.and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert(header::ETAG, value);
    }
    if method == Method::Get {
        headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    }
}

/// How a request was answered: the compiled fast path's `data` bytes, or the executor's
/// response.
enum Executed {
    Compiled(Vec<u8>),
    Executor(async_graphql::Response),
}

/// Serializes the answer into `body` as async-graphql would (for the fast path's bytes, the
/// same `{"data":…,"extensions":{"cacheHint":…}}` around them), and returns the answer's
/// entity tag when it has no errors (an answer with errors is never cached, so it gets none).
fn write_response(
    body: &mut BoundedBody,
    executed: &Executed,
    hint: async_graphql::Value,
    built_for: &BTreeMap<String, u64>,
) -> Result<Option<String>, serde_json::Error> {
    use std::io::Write as _;
    if let Executed::Executor(response) = executed
        && !response.errors.is_empty()
    {
        serde_json::to_writer(&mut *body, response)?;
        return Ok(None);
    }
    // `{"data":…,"extensions":…}`, the bytes async-graphql's `Serialize` writes without
    // errors, with the data's own bytes hashed on the way.
    body.write_all(b"{\"data\":")
        .map_err(serde_json::Error::io)?;
    let data_start = body.bytes.len();
    let compiled_extensions;
    let extensions = match executed {
        Executed::Compiled(data) => {
            body.write_all(data).map_err(serde_json::Error::io)?;
            compiled_extensions = BTreeMap::from([("cacheHint".to_owned(), hint)]);
            &compiled_extensions
        }
        Executed::Executor(response) => {
            serde_json::to_writer(&mut *body, &response.data)?;
            &response.extensions
        }
    };
    let etag = entity_tag(&body.bytes[data_start..], built_for);
    if !extensions.is_empty() {
        body.write_all(b",\"extensions\":")
            .map_err(serde_json::Error::io)?;
        serde_json::to_writer(&mut *body, extensions)?;
    }
    body.write_all(b"}").map_err(serde_json::Error::io)?;
    Ok(Some(etag))
}

/// A response body that refuses to grow past `limit`, so that serializing an oversized response
/// stops there instead of building all of it.
struct BoundedBody {
    bytes: Vec<u8>,
    limit: usize,
}

impl std::io::Write for BoundedBody {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buffer.len() > self.limit {
            return Err(std::io::Error::other("response exceeds its limit"));
        }
        self.bytes.extend_from_slice(buffer);
        Ok(buffer.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether an operation selects `__schema` or `__type` at its root. Off, the executor would
/// answer them `null` without a word; the client is told instead. (One spread through a
/// fragment still gets `null`.)
fn introspects(document: &ExecutableDocument) -> bool {
    use async_graphql::parser::types::Selection;
    document.operations.iter().any(|(_, operation)| {
        operation.node.selection_set.node.items.iter().any(|item| {
            matches!(&item.node, Selection::Field(field)
                if matches!(field.node.name.node.as_str(), "__schema" | "__type"))
        })
    })
}

/// Refuses a request that leaves a non-null variable of its operation without a value. The
/// executor would report it as a resolver error (with a path, so as `INTERNAL`); it is the
/// client's mistake and gets the validation code. An operation that does not exist is left to
/// validation.
fn check_required_variables(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: Option<&serde_json::Value>,
) -> Result<(), PrefetchError> {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => match operations.get(name) {
            Some(operation) => operation,
            None => return Ok(()),
        },
        (DocumentOperations::Multiple(operations), None) => match operations.values().next() {
            Some(operation) if operations.len() == 1 => operation,
            _ => return Ok(()),
        },
    };
    for definition in &operation.node.variable_definitions {
        let definition = &definition.node;
        if definition.var_type.node.nullable || definition.default_value.is_some() {
            continue;
        }
        let name = definition.name.node.as_str();
        let value = variables.and_then(|variables| variables.get(name));
        if value.is_none_or(serde_json::Value::is_null) {
            let name: String = name.chars().take(64).collect();
            return Err(PrefetchError::MissingVariable(name));
        }
    }
    Ok(())
}

/// Errors from parsing, validation or the executor carry no code; give them one.
fn give_code(error: &mut ServerError, log: &ringside_telemetry::LogBudget) {
    let has_code = error
        .extensions
        .as_ref()
        .is_some_and(|e| e.get("code").is_some());
    if has_code {
        return;
    }
    let code = if error.path.is_empty() {
        "GRAPHQL_VALIDATION_FAILED"
    } else {
        "INTERNAL"
    };
    if code == "INTERNAL" {
        if log.allow() {
            tracing::warn!(message = %error.message, "GraphQL resolver error without a code");
        }
        error.message = "internal error".into();
    }
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

/// The GraphiQL page (development). It loads GraphiQL from a CDN in the developer's browser;
/// the device token goes in the headers pane as `{"Authorization": "Bearer …"}`.
const GRAPHIQL_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Ringside prefetch · GraphiQL</title>
<style>body { margin: 0; height: 100vh; }</style>
<link rel="stylesheet" href="https://unpkg.com/graphiql@3/graphiql.min.css">
</head>
<body>
<div id="graphiql" style="height: 100vh">Loading GraphiQL… (it needs network access to unpkg.com). The endpoint is POST /graphql with a device token: <code>ringside token --device D --profile P</code>.</div>
<script crossorigin src="https://unpkg.com/react@18/umd/react.production.min.js"></script>
<script crossorigin src="https://unpkg.com/react-dom@18/umd/react-dom.production.min.js"></script>
<script crossorigin src="https://unpkg.com/graphiql@3/graphiql.min.js"></script>
<script>
  const fetcher = GraphiQL.createFetcher({ url: '/graphql' });
  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultHeaders: '{"Authorization": "Bearer <device token>"}',
      defaultQuery: '{ prefetch { profileId cacheHint { ttlSeconds } events { id state { stage version } byStage { stage home { billboard { title } rows { title cards { id title } } } } } } }',
    }),
  );
</script>
</body>
</html>
"#;
