//! Which web pages may open a device WebSocket or use the admin API from a browser: the
//! `Origin` allow-lists, one layer in front of every route (docs/OPERATIONS.md, "Web origins").
//!
//! A browser sends `Origin` on every WebSocket upgrade and on every request a script makes
//! that is not a same-origin `GET`, and a page cannot forge it. So:
//!
//! - A request **without** `Origin` is not a cross-site browser request (a TV or mobile app, the
//!   CLI, a same-origin page's `GET`) and passes: the token checks behind decide.
//! - A request whose `Origin` is this node itself (the origin's host is the request's `Host`:
//!   the console served by the node) passes.
//! - Otherwise `/v1/ws` passes only from a listed web origin (`--web-origin`, the list that
//!   also gets CORS on `/graphql`), and `/v1/admin/…` and `/console` only from a listed console
//!   origin (`--console-origin`); any other origin, `null` included, is answered `403
//!   forbidden` before any other work, naming the flag that would allow it.
//!
//! Together with admin credentials that travel only in `Authorization` (never a cookie, which
//! a browser would attach to a forged request by itself), this makes the console's writes safe
//! from cross-site request forgery: a page elsewhere can neither send the token nor get past
//! this layer. `/graphql` is not checked here: CORS governs what browsers may read from it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ringside_protocol::admin::{ApiError, ApiErrorCode};

/// The origins, besides the node's own, whose pages may make browser requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Web apps (`https://tv.example.com`): may open `/v1/ws`, and call `/graphql` (CORS).
    /// Default none.
    pub web: Vec<String>,
    /// Ops consoles served elsewhere than the node (behind a proxy that rewrites `Host`): may
    /// use `/v1/admin/…` and `/console`. Default none.
    pub console: Vec<String>,
}

impl OriginPolicy {
    /// Every entry is `scheme://host[:port]` in lowercase, as browsers send it.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (flag, origins) in [
            ("--web-origin", &self.web),
            ("--console-origin", &self.console),
        ] {
            for origin in origins {
                if let Some(problem) = ringside_auth::origin_problem(origin) {
                    anyhow::bail!("{flag} {origin:?}: {problem}");
                }
            }
        }
        Ok(())
    }
}

/// The routes the layer guards, and the list each is allowed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarded {
    DeviceSocket,
    Admin,
}

fn guarded(path: &str) -> Option<Guarded> {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if path == "/v1/ws" {
        Some(Guarded::DeviceSocket)
    } else if under("/v1/admin") || under("/console") {
        Some(Guarded::Admin)
    } else {
        None
    }
}

/// Whether `origin` is the node itself: its host (and port) is the request's `Host`.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The middleware: passes or answers `403` (see the module's documentation).
pub async fn check_origin(
    State(policy): State<Arc<OriginPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(route) = guarded(request.uri().path()) else {
        return next.run(request).await;
    };
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        return next.run(request).await;
    };
    let origin = origin.to_str().unwrap_or("");
    let (listed, flag) = match route {
        Guarded::DeviceSocket => (&policy.web, "--web-origin"),
        Guarded::Admin => (&policy.console, "--console-origin"),
    };
    if same_origin(origin, request.headers()) || listed.iter().any(|o| o == origin) {
        return next.run(request).await;
    }
    // Echo a readable origin only (a header value may hold any bytes); at most 200 characters.
    let shown: String = origin
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect();
    let error = ApiError::new(
        ApiErrorCode::Forbidden,
        format!(
            "pages of origin {shown:?} may not make this request; an operator allows an origin with {flag}"
        ),
    );
    (StatusCode::FORBIDDEN, axum::Json(error)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarded_routes_are_the_socket_the_admin_api_and_the_console() {
        assert_eq!(guarded("/v1/ws"), Some(Guarded::DeviceSocket));
        assert_eq!(guarded("/v1/admin"), Some(Guarded::Admin));
        assert_eq!(guarded("/v1/admin/events/e1"), Some(Guarded::Admin));
        assert_eq!(guarded("/console/api.js"), Some(Guarded::Admin));
        for open in [
            "/graphql",
            "/healthz",
            "/metrics",
            "/v1/wsx",
            "/v1/administrator",
            "/",
        ] {
            assert_eq!(guarded(open), None, "{open}");
        }
    }

    #[test]
    fn same_origin_is_the_host_header_with_either_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            "127.0.0.1:8080".parse().expect("a header value"),
        );
        assert!(same_origin("http://127.0.0.1:8080", &headers));
        assert!(same_origin("https://127.0.0.1:8080", &headers));
        assert!(!same_origin("http://127.0.0.1:8081", &headers));
        assert!(!same_origin("http://127.0.0.1", &headers));
        assert!(!same_origin("null", &headers));
        assert!(!same_origin("http://127.0.0.1:8080", &HeaderMap::new()));
    }

    #[test]
    fn malformed_origins_are_refused_naming_their_flag() {
        let policy = OriginPolicy {
            web: vec!["https://tv.example.com".into()],
            console: vec!["https://ops.example.com/".into()],
        };
        let error = policy.validate().unwrap_err().to_string();
        assert!(error.starts_with("--console-origin"), "{error}");
        for bad in [
            "tv.example.com",
            "https://tv.example.com/",
            "https://TV.example.com",
            "*",
            "https://tv.example.com:443",
            "http://tv.example.com:80",
        ] {
            let policy = OriginPolicy {
                web: vec![bad.into()],
                ..OriginPolicy::default()
            };
            assert!(
                policy
                    .validate()
                    .unwrap_err()
                    .to_string()
                    .starts_with("--web-origin")
            );
        }
        let ports = OriginPolicy {
            web: vec!["http://127.0.0.1:5173".into(), "https://[::1]:8443".into()],
            ..OriginPolicy::default()
        };
        assert!(ports.validate().is_ok());
        assert!(OriginPolicy::default().validate().is_ok());
    }
}
