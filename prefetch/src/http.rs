//! `POST /graphql` and `GET /graphql`.
//!
//! - The device token (as for WebSocket: `Authorization: Bearer` or `?token=`) is checked first:
//!   401 without a valid one. The profile comes from the token and nowhere else.
//! - Bodies over the limit get 413. Everything else answers 200 with GraphQL errors, each with a
//!   stable `extensions.code`.
//! - Automatic persisted queries: a client sends `extensions.persistedQuery.sha256Hash`; with the
//!   query text the first time (the hash is checked and the text remembered), with the hash alone
//!   afterwards. `GET` requests with a hash are cacheable: `Cache-Control: private, max-age=…`
//!   (per device, never in shared caches) with `Vary: Authorization`.
//! - Every response carries `extensions.cacheHint`: the device-cache TTL (jittered) and the
//!   event versions the data was built for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_graphql::{ServerError, Variables};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::PrefetchError;
use crate::limits;
use crate::schema::{RequestScope, ResponseHints};
use crate::service::PrefetchService;

/// `/graphql`, both methods.
pub fn router(service: Arc<PrefetchService>) -> Router {
    let body_limit = service.config.body_limit_bytes;
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(service)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    query: Option<String>,
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<serde_json::Value>,
    #[serde(default)]
    extensions: WireExtensions,
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

/// A response carrying only errors, with `status`.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    });
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn prefetch_error_response(error: &PrefetchError) -> Response {
    error_response(StatusCode::OK, error.code(), &error.to_string())
}

/// The device's profile, from its token.
fn authenticate(
    service: &PrefetchService,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<String, auth::TokenError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer_token)
        .or(query_token)
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    service
        .device_key
        .verify(token, now)
        .map(|claims| claims.profile)
}

fn unauthenticated(error: auth::TokenError) -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        &error.to_string(),
    )
}

async fn post_graphql(
    State(service): State<Arc<PrefetchService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let profile = match authenticate(&service, &headers, None) {
        Ok(profile) => profile,
        Err(error) => return unauthenticated(error),
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!(
                "request body exceeds {} bytes",
                service.config.body_limit_bytes
            );
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", &message);
        }
        Err(rejection) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                &rejection.body_text(),
            );
        }
    };
    match serde_json::from_slice::<WireRequest>(&body) {
        Ok(request) => execute(&service, profile, request, Method::Post).await,
        Err(error) => prefetch_error_response(&PrefetchError::BadRequest(format!(
            "invalid request body: {error}"
        ))),
    }
}

async fn get_graphql(
    State(service): State<Arc<PrefetchService>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let wants_page = !params.contains_key("query") && !params.contains_key("extensions");
    if wants_page {
        if service.config.graphiql {
            return Html(GRAPHIQL_PAGE).into_response();
        }
        return error_response(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "expected a query or a persisted query hash",
        );
    }
    let profile = match authenticate(&service, &headers, params.get("token").map(String::as_str)) {
        Ok(profile) => profile,
        Err(error) => return unauthenticated(error),
    };
    let parse_json = |name: &str| -> Result<Option<serde_json::Value>, PrefetchError> {
        params
            .get(name)
            .map(|text| serde_json::from_str(text))
            .transpose()
            .map_err(|error| {
                PrefetchError::BadRequest(format!("{name} is not valid JSON: {error}"))
            })
    };
    let extensions = match parse_json("extensions").and_then(|value| {
        value
            .map(serde_json::from_value::<WireExtensions>)
            .transpose()
            .map_err(|error| PrefetchError::BadRequest(format!("invalid extensions: {error}")))
    }) {
        Ok(extensions) => extensions.unwrap_or_default(),
        Err(error) => return prefetch_error_response(&error),
    };
    let variables = match parse_json("variables") {
        Ok(variables) => variables,
        Err(error) => return prefetch_error_response(&error),
    };
    let request = WireRequest {
        query: params.get("query").cloned(),
        operation_name: params.get("operationName").cloned(),
        variables,
        extensions,
    };
    execute(&service, profile, request, Method::Get).await
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The query text, resolving automatic persisted queries.
fn query_text(service: &PrefetchService, request: &WireRequest) -> Result<Arc<str>, PrefetchError> {
    match (&request.query, &request.extensions.persisted_query) {
        (Some(query), Some(persisted)) => {
            if persisted.version != 1
                || sha256_hex(query) != persisted.sha256_hash.to_ascii_lowercase()
            {
                return Err(PrefetchError::PersistedQueryMismatch);
            }
            let query: Arc<str> = Arc::from(query.as_str());
            service
                .persisted
                .insert(persisted.sha256_hash.to_ascii_lowercase(), query.clone());
            Ok(query)
        }
        (None, Some(persisted)) => service
            .persisted
            .get(&persisted.sha256_hash.to_ascii_lowercase())
            .ok_or(PrefetchError::PersistedQueryNotFound),
        (Some(query), None) => Ok(Arc::from(query.as_str())),
        (None, None) => Err(PrefetchError::BadRequest(
            "expected a query or a persisted query hash".into(),
        )),
    }
}

async fn execute(
    service: &Arc<PrefetchService>,
    profile_id: String,
    request: WireRequest,
    method: Method,
) -> Response {
    let started = Instant::now();
    service.metrics.requests.increment();
    let response = run(service, profile_id, request, method).await;
    service.metrics.request_latency.observe(started.elapsed());
    response
}

async fn run(
    service: &Arc<PrefetchService>,
    profile_id: String,
    request: WireRequest,
    method: Method,
) -> Response {
    let query = match query_text(service, &request) {
        Ok(query) => query,
        Err(error) => {
            service.metrics.request_errors.increment();
            return prefetch_error_response(&error);
        }
    };
    let document = match async_graphql::parser::parse_query(&*query) {
        Ok(document) => document,
        Err(error) => {
            service.metrics.request_errors.increment();
            // The parser's message can quote the query: keep the answer short.
            let message: String = error.to_string().chars().take(300).collect();
            return error_response(StatusCode::OK, "GRAPHQL_PARSE_FAILED", &message);
        }
    };
    if let Err(error) = limits::check(&document, service.config.limits) {
        service.metrics.request_errors.increment();
        return prefetch_error_response(&error);
    }
    let ttl = service.config.jittered_device_ttl();
    let hints = Arc::new(Mutex::new(ResponseHints::default()));
    let scope = RequestScope {
        service: service.clone(),
        profile_id,
        hints: hints.clone(),
        ttl_seconds: ttl.as_secs() as u32,
    };
    let mut graphql = async_graphql::Request::new(&*query).data(scope);
    graphql.set_parsed_query(document);
    if let Some(name) = request.operation_name {
        graphql = graphql.operation_name(name);
    }
    if let Some(variables) = request.variables {
        graphql = graphql.variables(Variables::from_json(variables));
    }
    let mut response = service.schema.execute(graphql).await;
    for error in &mut response.errors {
        give_code(error);
    }
    let failed = !response.errors.is_empty();
    if failed {
        service.metrics.request_errors.increment();
    }
    let versions: Vec<serde_json::Value> = hints
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .versions
        .iter()
        .map(|(event, version)| serde_json::json!({ "eventId": event, "version": version }))
        .collect();
    let hint = serde_json::json!({ "ttlSeconds": ttl.as_secs(), "events": versions });
    response.extensions.insert(
        "cacheHint".into(),
        async_graphql::Value::from_json(hint).unwrap_or(async_graphql::Value::Null),
    );
    let mut http = axum::Json(response).into_response();
    let headers = http.headers_mut();
    let cache_control = if failed {
        HeaderValue::from_static("no-store")
    } else {
        HeaderValue::from_str(&format!("private, max-age={}", ttl.as_secs()))
            .unwrap_or(HeaderValue::from_static("no-store"))
    };
    headers.insert(header::CACHE_CONTROL, cache_control);
    if method == Method::Get {
        headers.insert(header::VARY, HeaderValue::from_static("Authorization"));
    }
    http
}

/// Errors from parsing, validation or the executor carry no code; give them one.
fn give_code(error: &mut ServerError) {
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
        tracing::warn!(message = %error.message, "GraphQL resolver error without a code");
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
