//! HTTP throughput and latency, several targets measured one after the other in one run so
//! their ratios are comparable: a trivial handler beside the prefetch query on a cache hit and
//! on a cache miss.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

use crate::report::{Latency, new_histogram};

/// What to request. Each request takes the next token, so a rotating list makes every request
/// come from another profile.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    pub name: String,
    pub method: &'static str,
    pub path: String,
    pub body: Option<Bytes>,
    /// Shared by every connection of the target: a clone costs a reference count, however
    /// many profiles it rotates over.
    pub tokens: std::sync::Arc<[String]>,
    /// Sent as `x-ringside-priority` when set: the class the request marks itself with.
    pub priority: Option<ringside_protocol::Priority>,
    /// Sent as `Accept-Encoding` when set (`gzip`, `br`): the answers come compressed.
    pub accept_encoding: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpResult {
    pub name: String,
    /// Requests that succeeded (2xx without GraphQL errors); the rest are `errors`.
    pub requests: u64,
    pub errors: u64,
    /// Successful requests per second.
    pub requests_per_second: f64,
    pub latency: Latency,
    /// Mean body bytes of an answer, as sent (compressed when it was).
    pub body_bytes: u64,
    /// Keep-alive connections it ran over.
    #[serde(default)]
    pub connections: usize,
    /// The `Accept-Encoding` it sent, if any.
    #[serde(default)]
    pub accept_encoding: Option<String>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, and no GraphQL `errors`.
    Success,
    /// 429 or 503: the server shed it.
    Shed,
    /// Any other answer.
    Failed,
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends `target` once over `sender`, with token number `index` (rotating), and reads the
/// whole answer.
pub(crate) async fn send(
    sender: &mut Sender,
    authority: &str,
    target: &HttpTarget,
    index: usize,
) -> anyhow::Result<Outcome> {
    Ok(send_counting(sender, authority, target, index).await?.0)
}

/// [`send`], with the answer's body bytes as they came (compressed when they were; a
/// compressed answer counts as a success on its status alone).
pub(crate) async fn send_counting(
    sender: &mut Sender,
    authority: &str,
    target: &HttpTarget,
    index: usize,
) -> anyhow::Result<(Outcome, usize)> {
    let mut request = Request::builder()
        .method(target.method)
        .uri(&target.path)
        .header("host", authority)
        .header("content-type", "application/json");
    if let Some(priority) = target.priority {
        request = request.header(ringside_protocol::PRIORITY_HEADER, priority.as_str());
    }
    if let Some(encoding) = &target.accept_encoding {
        request = request.header("accept-encoding", encoding);
    }
    if !target.tokens.is_empty() {
        request = request.header(
            "authorization",
            format!("Bearer {}", target.tokens[index % target.tokens.len()]),
        );
    }
    let request = request.body(Full::new(target.body.clone().unwrap_or_default()))?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let encoded = response.headers().contains_key("content-encoding");
    let body = response.into_body().collect().await?.to_bytes();
    let outcome = match status.as_u16() {
        429 | 503 => Outcome::Shed,
        _ if status.is_success() && (encoded || !body.windows(9).any(|w| w == b"\"errors\":")) => {
            Outcome::Success
        }
        _ => Outcome::Failed,
    };
    Ok((outcome, body.len()))
}

pub(crate) async fn open(authority: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Runs `target` over `connections` keep-alive connections for `duration`.
pub async fn measure(
    base: &str,
    target: &HttpTarget,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<HttpResult> {
    let authority = ringside_client::http::authority(base)?;
    let deadline = Instant::now() + duration;
    let mut workers = Vec::new();
    for worker in 0..connections {
        let (authority, target) = (authority.clone(), target.clone());
        workers.push(tokio::spawn(async move {
            let mut histogram = new_histogram();
            let mut errors = 0u64;
            let mut bytes = 0u64;
            let mut sender = open(&authority).await?;
            let mut index = worker;
            while Instant::now() < deadline {
                let started = Instant::now();
                let (outcome, body) =
                    send_counting(&mut sender, &authority, &target, index).await?;
                index += connections;
                // Only answers that succeeded count as throughput, latency and bytes.
                if outcome == Outcome::Success {
                    bytes += body as u64;
                    histogram.saturating_record((started.elapsed().as_micros() as u64).max(1));
                } else {
                    errors += 1;
                }
            }
            anyhow::Ok((histogram, errors, bytes))
        }));
    }
    let mut merged = new_histogram();
    let (mut errors, mut bytes) = (0, 0);
    for worker in workers {
        let (histogram, worker_errors, worker_bytes) =
            worker.await.context("worker panicked")??;
        merged.add(&histogram).context("merging histograms")?;
        errors += worker_errors;
        bytes += worker_bytes;
    }
    Ok(HttpResult {
        name: target.name.clone(),
        requests: merged.len(),
        errors,
        requests_per_second: merged.len() as f64 / duration.as_secs_f64(),
        latency: Latency::of(&merged),
        body_bytes: bytes / merged.len().max(1),
        connections,
        accept_encoding: target.accept_encoding.clone(),
    })
}
