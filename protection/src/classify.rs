//! Classification: which priority class a request belongs to, from its route, its method, the
//! device token's ceiling and the `x-ringside-priority` header. Cheap by construction: it reads
//! the path, the method and two headers, never the body.
//!
//! | route | method | class |
//! |---|---|---|
//! | `/v1/admin/*` | POST, PUT, DELETE, PATCH | critical |
//! | `/v1/admin/*` | GET, HEAD (and anything else) | degraded |
//! | `/graphql` | any | degraded, lowered to the device token's `priority` claim |
//! | `/v1/ws` | any | degraded, lowered to the device token's `priority` claim |
//! | `/console`, `/console/*` | any | degraded (the ops console's static files) |
//! | `/healthz`, `/metrics` | any | exempt: never limited, never shed |
//! | anything else | any | degraded |
//!
//! The console's files are a few kilobytes served from memory, so they are cheap, but they are
//! not exempt: they are counted under their own `console` route and shed with the other
//! `degraded` requests, since a console whose admin reads (`degraded` too) are shed could not
//! work anyway, and an exempt route would be an unlimited door into the node.
//!
//! The header then lowers the class (the lower of the two wins; a higher value is ignored).

use axum::http::{HeaderMap, Method, Uri, header};
use ringside_protocol::{PRIORITY_HEADER, Priority};

/// The routes protection tells apart, for the metrics' `route` label and the answer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `/v1/admin/*`.
    Admin,
    /// `/graphql`: refusals are GraphQL-shaped.
    Graphql,
    /// `/v1/ws`, the WebSocket upgrade.
    WebSocket,
    /// `/console` and its files: the ops console.
    Console,
    /// Any other path (answered 404 or 405 by the router).
    Other,
}

impl Route {
    pub const ALL: [Self; 5] = [
        Self::Admin,
        Self::Graphql,
        Self::WebSocket,
        Self::Console,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Graphql => "graphql",
            Self::WebSocket => "websocket",
            Self::Console => "console",
            Self::Other => "other",
        }
    }

    /// Position in [`Route::ALL`]: an index for per-route tables.
    pub fn index(self) -> usize {
        match self {
            Self::Admin => 0,
            Self::Graphql => 1,
            Self::WebSocket => 2,
            Self::Console => 3,
            Self::Other => 4,
        }
    }

    /// The route of `path`, or `None` for the exempt `/healthz` and `/metrics`.
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/healthz" | "/metrics" => None,
            "/graphql" => Some(Self::Graphql),
            "/v1/ws" => Some(Self::WebSocket),
            _ if path == "/v1/admin" || path.starts_with("/v1/admin/") => Some(Self::Admin),
            _ if path == "/console" || path.starts_with("/console/") => Some(Self::Console),
            _ => Some(Self::Other),
        }
    }

    /// The class of a request to this route before any ceiling or header.
    pub fn base_class(self, method: &Method) -> Priority {
        match self {
            Self::Admin
                if matches!(
                    *method,
                    Method::POST | Method::PUT | Method::DELETE | Method::PATCH
                ) =>
            {
                Priority::Critical
            }
            Self::Admin | Self::Graphql | Self::WebSocket | Self::Console | Self::Other => {
                Priority::Degraded
            }
        }
    }

    /// Whether a device token may lower requests of this route.
    fn takes_device_token(self) -> bool {
        matches!(self, Self::Graphql | Self::WebSocket)
    }
}

/// A request's class, put into its extensions for the handlers and layers behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestClass {
    pub class: Priority,
    pub route: Route,
}

/// The `x-ringside-priority` header carried a value that is not a class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{PRIORITY_HEADER}: unknown priority {value:?}: expected critical, degraded, best_effort or bulk"
)]
pub struct BadPriorityHeader {
    /// The value as sent (lossy for bytes that are not visible ASCII), at most 64 characters.
    pub value: String,
}

/// Longest piece of a bad header value quoted back.
const QUOTED_VALUE_MAX_CHARS: usize = 64;

/// Classifies a request to `route`.
pub fn classify(
    route: Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<RequestClass, BadPriorityHeader> {
    let mut class = route.base_class(method);
    if route.takes_device_token()
        && let Some(ceiling) = device_token(uri, headers).and_then(ringside_auth::priority_ceiling)
    {
        class = class.min(ceiling);
    }
    for value in headers.get_all(PRIORITY_HEADER) {
        let parsed = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<Priority>().ok());
        match parsed {
            Some(requested) => class = class.min(requested),
            None => {
                return Err(BadPriorityHeader {
                    value: String::from_utf8_lossy(value.as_bytes())
                        .chars()
                        .take(QUOTED_VALUE_MAX_CHARS)
                        .collect(),
                });
            }
        }
    }
    Ok(RequestClass { class, route })
}

/// The device token as the handlers read it: `Authorization: Bearer`, else `?token=`.
fn device_token<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(ringside_auth::bearer_token)
        .or_else(|| {
            uri.query()?
                .split('&')
                .find_map(|pair| pair.strip_prefix("token="))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn class_of(method: Method, path: &str, headers: &[(&str, &str)]) -> Option<Priority> {
        let route = Route::of(path.split('?').next().unwrap_or_default())?;
        let uri: Uri = path.parse().expect("uri");
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        classify(route, &method, &uri, &map).ok().map(|c| c.class)
    }

    fn token(priority: Option<Priority>) -> String {
        let key = ringside_auth::DeviceTokenKey::new(&[7u8; 32]).expect("key");
        key.sign(&ringside_auth::DeviceClaims {
            sub: "d".into(),
            profile: "p".into(),
            class: ringside_auth::DeviceClass::Tv,
            exp: u64::MAX / 2,
            nbf: None,
            priority,
        })
    }

    #[test]
    fn the_route_table() {
        use Priority::*;
        assert_eq!(
            class_of(Method::POST, "/v1/admin/events", &[]),
            Some(Critical)
        );
        assert_eq!(
            class_of(Method::PUT, "/v1/admin/protection", &[]),
            Some(Critical)
        );
        assert_eq!(
            class_of(Method::GET, "/v1/admin/stats", &[]),
            Some(Degraded)
        );
        assert_eq!(class_of(Method::POST, "/graphql", &[]), Some(Degraded));
        assert_eq!(class_of(Method::GET, "/v1/ws", &[]), Some(Degraded));
        assert_eq!(class_of(Method::GET, "/nowhere", &[]), Some(Degraded));
        assert_eq!(class_of(Method::GET, "/healthz", &[]), None);
        assert_eq!(class_of(Method::GET, "/metrics", &[]), None);
        assert_eq!(Route::of("/v1/administrator"), Some(Route::Other));
        assert_eq!(class_of(Method::GET, "/console/", &[]), Some(Degraded));
        assert_eq!(Route::of("/console"), Some(Route::Console));
        assert_eq!(Route::of("/console/console.js"), Some(Route::Console));
        assert_eq!(Route::of("/consoles"), Some(Route::Other));
    }

    #[test]
    fn the_header_and_the_token_only_lower() {
        use Priority::*;
        let header = |value| [(PRIORITY_HEADER, value)];
        assert_eq!(
            class_of(Method::POST, "/graphql", &header("critical")),
            Some(Degraded)
        );
        assert_eq!(
            class_of(Method::POST, "/graphql", &header("bulk")),
            Some(Bulk)
        );
        assert_eq!(
            class_of(Method::POST, "/v1/admin/events", &header("best_effort")),
            Some(BestEffort)
        );
        let bulk_token = format!("Bearer {}", token(Some(Bulk)));
        let critical_token = format!("Bearer {}", token(Some(Critical)));
        let auth = |value: &str| [("authorization", value.to_owned())];
        let with = |headers: [(&str, String); 1]| {
            class_of(Method::POST, "/graphql", &[(headers[0].0, &headers[0].1)])
        };
        assert_eq!(with(auth(&bulk_token)), Some(Bulk));
        assert_eq!(with(auth(&critical_token)), Some(Degraded));
        let query = format!("/v1/ws?token={}", token(Some(BestEffort)));
        assert_eq!(class_of(Method::GET, &query, &[]), Some(BestEffort));
        // The admin routes take no device token.
        assert_eq!(
            class_of(
                Method::POST,
                "/v1/admin/events",
                &[("authorization", &bulk_token)]
            ),
            Some(Critical)
        );
    }

    #[test]
    fn an_unknown_header_value_is_refused_with_the_header_named() {
        let uri: Uri = "/graphql".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert(PRIORITY_HEADER, HeaderValue::from_static("urgent"));
        let error = classify(Route::Graphql, &Method::POST, &uri, &headers).expect_err("refused");
        assert!(
            error
                .to_string()
                .starts_with("x-ringside-priority: unknown priority \"urgent\"")
        );
    }
}
