//! [`ProtectionLayer`]: the tower layer every HTTP route except `/healthz` and `/metrics` goes
//! through. Per request: classify (path, method, two headers), put the class into the
//! request's extensions, then admit or shed.
//!
//! - Admitted: the request takes a place in flight until its response is ready (for a
//!   WebSocket upgrade: until the `101` is returned; the session itself is the gateway's; for
//!   a streamed body such as `/v1/admin/stream`: until its headers), and its latency is one
//!   sample of the adaptive limit unless the response says it streams ([`Streaming`]).
//! - Shed: answered at once, never queued: `503` with a jittered `Retry-After` from the
//!   class's window; on `/graphql` a GraphQL error with `extensions.code` `OVERLOADED`,
//!   `retry_after_ms` and `class`, elsewhere the API error `overloaded`. The connection's next
//!   request then waits out the class's shed pause ([`crate::pace`]).
//! - An unknown `x-ringside-priority` value: `400` naming the header (GraphQL-shaped on
//!   `/graphql`), whether protection is on or off.
//!
//! The fast path is a handful of atomics: no lock, no allocation beyond the extension axum's
//! request already carries room for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use ringside_protocol::Priority;
use ringside_protocol::admin::{ApiError, ApiErrorCode};
use tower::{Layer, Service};

use crate::Protection;
use crate::classify::{BadPriorityHeader, RequestClass, Route, classify};
use crate::pace::ConnectionPace;

/// The layer; cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct ProtectionLayer {
    protection: Arc<Protection>,
}

impl ProtectionLayer {
    pub fn new(protection: Arc<Protection>) -> Self {
        Self { protection }
    }
}

impl<S> Layer<S> for ProtectionLayer {
    type Service = ProtectionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProtectionService {
            inner,
            protection: self.protection.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProtectionService<S> {
    inner: S,
    protection: Arc<Protection>,
}

impl<S> Service<Request> for ProtectionService<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let Some(route) = Route::of(request.uri().path()) else {
            return ResponseFuture::Exempt {
                inner: self.inner.call(request),
            };
        };
        let classified = classify(route, request.method(), request.uri(), request.headers());
        let class = match classified {
            Ok(class) => class,
            Err(error) => {
                self.protection.note_bad_header(&error);
                return ResponseFuture::Refused {
                    response: Some(bad_header_response(route, &error)),
                };
            }
        };
        let Some(ticket) = self.protection.admit(class) else {
            return ResponseFuture::Refused {
                response: Some(
                    self.protection
                        .shed_response(class, request.extensions().get::<Arc<ConnectionPace>>()),
                ),
            };
        };
        request.extensions_mut().insert(class);
        ResponseFuture::Admitted {
            inner: self.inner.call(request),
            ticket: Some(ticket),
        }
    }
}

pin_project! {
    /// The response of a request through the layer.
    #[project = ResponseProjection]
    pub enum ResponseFuture<F> {
        Exempt { #[pin] inner: F },
        Admitted { #[pin] inner: F, ticket: Option<Ticket> },
        Refused { response: Option<Response> },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseProjection::Exempt { inner } => inner.poll(cx),
            ResponseProjection::Admitted { inner, ticket } => {
                let output = std::task::ready!(inner.poll(cx));
                if let Some(ticket) = ticket.take() {
                    match &output {
                        Ok(response)
                            if !is_latency_sample(response.status())
                                || response.extensions().get::<Streaming>().is_some() =>
                        {
                            drop(ticket)
                        }
                        _ => ticket.complete(),
                    }
                }
                Poll::Ready(output)
            }
            ResponseProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()))),
        }
    }
}

/// Put into a response's extensions by a handler whose body streams for long (the admin
/// event stream): the request's place in flight is given back with the headers, as for every
/// response, and their time is no latency sample (headers ready in microseconds say nothing of
/// the node's load, and the body's minutes would say less).
#[derive(Debug, Clone, Copy, Default)]
pub struct Streaming;

/// Whether a response's time is a sample of the node's latency. Not a `408` (the time is
/// the client's slow body, up to the body timeout: one such sample would halve the limit), nor
/// a `101` (an upgrade answers in microseconds, next to requests that take milliseconds: a
/// change in the mix would read as a change in latency).
fn is_latency_sample(status: StatusCode) -> bool {
    status != StatusCode::REQUEST_TIMEOUT && status != StatusCode::SWITCHING_PROTOCOLS
}

/// A place in flight. Completing it records the request's latency; dropping it (the request
/// was cancelled: the client left, the body timed out) only gives the place back.
#[derive(Debug)]
pub struct Ticket {
    protection: Arc<Protection>,
    class: RequestClass,
    started: Instant,
    completed: bool,
}

impl Ticket {
    pub(crate) fn new(protection: Arc<Protection>, class: RequestClass) -> Self {
        Self {
            protection,
            class,
            started: Instant::now(),
            completed: false,
        }
    }

    fn complete(mut self) {
        self.completed = true;
        self.protection
            .release(self.class, Some(self.started.elapsed()));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.completed {
            self.protection.release(self.class, None);
        }
    }
}

/// The answer to a request of `class` on `route` that is shed, told to come back after
/// `retry_after`.
pub fn overloaded_response(route: Route, class: Priority, retry_after: Duration) -> Response {
    let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    let message =
        format!("this node is overloaded and sheds {class} requests; retry in {retry_after_ms} ms");
    let mut response = if route == Route::Graphql {
        let body = serde_json::json!({
            "errors": [{
                "message": message,
                "extensions": {
                    "code": "OVERLOADED",
                    "retry_after_ms": retry_after_ms,
                    "class": class.as_str(),
                },
            }]
        });
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    } else {
        let error = ApiError::new(ApiErrorCode::Overloaded, message);
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(error)).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(crate::retry::header_seconds(retry_after)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn bad_header_response(route: Route, error: &BadPriorityHeader) -> Response {
    let message = error.to_string();
    let mut response = if route == Route::Graphql {
        let body = serde_json::json!({
            "errors": [{
                "message": message,
                "extensions": { "code": "BAD_REQUEST", "header": ringside_protocol::PRIORITY_HEADER },
            }]
        });
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    } else {
        let error = ApiError::new(ApiErrorCode::InvalidRequest, message)
            .with_field(ringside_protocol::PRIORITY_HEADER);
        (StatusCode::BAD_REQUEST, axum::Json(error)).into_response()
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_bodies_and_upgrades_are_not_latency_samples() {
        assert!(!is_latency_sample(StatusCode::REQUEST_TIMEOUT));
        assert!(!is_latency_sample(StatusCode::SWITCHING_PROTOCOLS));
        assert!(is_latency_sample(StatusCode::OK));
        assert!(is_latency_sample(StatusCode::SERVICE_UNAVAILABLE));
    }
}
