//! Connection pacing: a keep-alive connection one of whose background requests was shed is
//! not served again until a short pause has passed.
//!
//! A shed answer costs microseconds, but a client that ignores its `Retry-After` sends the
//! next request over the same connection at once, and a thousand such connections keep the
//! node's runtime busy reading, classifying and refusing: the queue of ready connections then
//! grows in front of every request, an operator's publish included, where no concurrency limit
//! can see it. So the shed answer is still written at once, and the connection's next request
//! waits [`ProtectionConfig::shed_pause`](crate::ProtectionConfig::shed_pause) for its class
//! before it is looked at: such a connection sends at most one request per pause, and a client
//! that honours `Retry-After` (a longer wait) never notices. Other connections are not
//! affected; nothing is queued in the node (the waiting request holds a timer, no place under
//! the limit). Off by default: against a fixed set of clients that ignore `Retry-After`, the
//! paused connections also leave the node idle (goodput falls), so it is for operators who put
//! the latency of the classes above first.
//!
//! [`PaceLayer`] goes outermost, around each accepted connection's service (one
//! [`ConnectionPace`] per connection, in every request's extensions); the protection layer
//! sets the pause when it sheds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::Request;
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

/// When one connection may be served again.
#[derive(Debug, Default)]
pub struct ConnectionPace {
    /// Nanoseconds since [`epoch`]; 0: not paused.
    resume_at_ns: AtomicU64,
}

/// The instant pauses are counted from (the first use in this process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl ConnectionPace {
    /// Holds the connection's next request until `pause` from now (or later, if already so).
    pub fn hold_for(&self, pause: Duration) {
        let until = epoch().elapsed().saturating_add(pause).as_nanos();
        let until = u64::try_from(until).unwrap_or(u64::MAX);
        self.resume_at_ns.fetch_max(until, Ordering::Relaxed);
    }

    /// How long the next request must still wait, if at all.
    pub fn remaining(&self) -> Option<Duration> {
        let until = self.resume_at_ns.load(Ordering::Relaxed);
        let now = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
        (until > now).then(|| Duration::from_nanos(until - now))
    }
}

/// Gives each connection's service a [`ConnectionPace`] of its own; when no class pauses
/// (the default), none: connections and requests then pass without an allocation or an
/// extension.
#[derive(Debug, Clone, Copy, Default)]
pub struct PaceLayer {
    enabled: bool,
}

impl PaceLayer {
    /// Pacing as `protection`'s configuration asks for it.
    pub fn for_protection(protection: &crate::Protection) -> Self {
        Self {
            enabled: protection.paces(),
        }
    }
}

impl<S> Layer<S> for PaceLayer {
    type Service = PaceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PaceService {
            inner,
            pace: self.enabled.then(Arc::default),
        }
    }
}

/// One connection's service: every request carries the connection's pace, and waits out a
/// pause before the inner service sees it.
#[derive(Debug, Clone)]
pub struct PaceService<S> {
    inner: S,
    pace: Option<Arc<ConnectionPace>>,
}

type Paused<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

pin_project! {
    #[project = PaceProjection]
    pub enum PaceFuture<F, R, E> {
        Now { #[pin] inner: F },
        Paused { later: Paused<R, E> },
    }
}

impl<F, R, E> Future for PaceFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            PaceProjection::Now { inner } => inner.poll(cx),
            PaceProjection::Paused { later } => later.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for PaceService<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: 'static,
    S::Error: 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = PaceFuture<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(pace) = &self.pace else {
            return PaceFuture::Now {
                inner: self.inner.call(request),
            };
        };
        request.extensions_mut().insert(pace.clone());
        match pace.remaining() {
            None => PaceFuture::Now {
                inner: self.inner.call(request),
            },
            Some(wait) => {
                let inner = self.inner.clone();
                PaceFuture::Paused {
                    later: Box::pin(async move {
                        tokio::time::sleep(wait).await;
                        inner.oneshot(request).await
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_only_grows_and_then_passes() {
        let pace = ConnectionPace::default();
        assert_eq!(pace.remaining(), None);
        pace.hold_for(Duration::from_secs(60));
        pace.hold_for(Duration::from_millis(1));
        let left = pace.remaining().expect("paused");
        assert!(left > Duration::from_secs(59), "{left:?}");
        let pace = ConnectionPace::default();
        pace.hold_for(Duration::ZERO);
        assert_eq!(pace.remaining(), None);
    }

    /// Off (the default), requests pass without a pace; on, each carries its connection's.
    #[tokio::test]
    async fn a_disabled_layer_gives_no_connection_a_pace() {
        let seen = |enabled: bool| async move {
            let inner = tower::service_fn(|request: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(
                    request.extensions().get::<Arc<ConnectionPace>>().is_some(),
                )
            });
            PaceLayer { enabled }
                .layer(inner)
                .oneshot(Request::new(()))
                .await
                .unwrap()
        };
        assert!(!seen(false).await);
        assert!(seen(true).await);
    }
}
