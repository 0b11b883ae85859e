//! The ops console: a few static files (`console/` at the repository root: plain ES modules,
//! no build step) embedded into the binary at compile time and served under `/console`, so the
//! page works from the binary alone, with no request to any other origin.
//!
//! The files hold no secret and no data: everything the page shows it reads from the admin API
//! with the token the operator types in. Every answer carries a strict `Content-Security-Policy`
//! (only this origin; no inline script or style) and `Cache-Control: no-cache`: the names are not
//! content-hashed, so a browser revalidates and an upgraded binary's files are used at once.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ringside_protocol::admin::{ApiError, ApiErrorCode};

/// One embedded file: its name under `/console/`, content type and bytes.
struct ConsoleFile {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Every file the console serves; any other name under `/console/` is 404.
const FILES: [ConsoleFile; 5] = [
    ConsoleFile {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../console/index.html"),
    },
    ConsoleFile {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../console/console.css"),
    },
    ConsoleFile {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../console/console.js"),
    },
    ConsoleFile {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../console/api.js"),
    },
    ConsoleFile {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../console/favicon.svg"),
    },
];

/// Only this origin, for everything; no inline script or style, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `/console`, `/console/` (both the page) and `/console/{file}`.
pub fn router() -> Router {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{file}", get(file))
}

async fn index() -> Response {
    serve_named("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    serve_named(&name)
}

fn serve_named(name: &str) -> Response {
    let Some(file) = FILES.iter().find(|file| file.name == name) else {
        let error = ApiError::new(ApiErrorCode::NotFound, "no such console file");
        return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
    };
    let mut response = file.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_and_the_page_loads_only_its_own_files() {
        let page = std::str::from_utf8(FILES[0].bytes).expect("utf-8 page");
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("style="), "no inline style");
        assert!(!page.contains("http://") && !page.contains("https://"));
        for file in &FILES {
            assert_eq!(serve_named(file.name).status(), StatusCode::OK);
        }
        assert_eq!(serve_named("x").status(), StatusCode::NOT_FOUND);
    }
}
