//! The whole story of a live moment: devices prefetch over a window before the event, stay
//! connected, and when the operator publishes LIVE each switches to the content it already holds;
//! devices whose prefetch never happened (offline, or shed under load) fetch afterwards, each at
//! a uniformly random moment of the state's `fetch_within_ms` (the operator's, given with
//! `fetch_within_ms` here, or the control plane's default), at once when the state carries
//! none, as a device must. Reports how many switched from cache, how many had to fetch, and the
//! fetch wave: requests and the node's page-store (origin) reads per bucket, peak over mean.
//!
//! The run starts by publishing the event's first stage, so that a run can follow another on
//! the same node and the control plane sees the devices subscribed when LIVE is published.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringside_protocol::{EventId, Stage};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::report::{Latency, new_histogram};

#[derive(Debug, Clone)]
pub struct KickoffPlan {
    pub server: String,
    pub admin_token: String,
    /// One device token per device (each a different profile).
    pub tokens: Vec<String>,
    pub event: EventId,
    /// Devices prefetch at random moments over this window before the moment.
    pub prefetch_window: Duration,
    /// Share of devices that prefetch (the others were offline or shed).
    pub prefetch_share: f64,
    /// The operator's `fetch_within_ms` on the LIVE publish; `None` leaves it to the control
    /// plane (its default, or none when the default is off).
    pub fetch_within_ms: Option<u64>,
    pub bucket: Duration,
    /// Peak over mean of the follow-up wave is taken over this long after the publish: the same
    /// horizon for runs to compare (a wave all in one bucket then reads as horizon ÷ bucket).
    pub wave_horizon: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct KickoffResult {
    pub devices: usize,
    pub prefetched: u64,
    pub prefetch_errors: u64,
    pub state_delivered: u64,
    pub state_latency: Latency,
    pub switched_from_cache: u64,
    pub had_to_fetch: u64,
    pub fetch_errors: u64,
    /// Prefetches and follow-up fetches the node shed and the device retried after the hint.
    pub shed_retries: u64,
    /// The operator's window on the publish, if the run set one.
    pub fetch_within_ms_published: Option<u64>,
    /// The window the LIVE state carried, as the devices received it.
    pub fetch_within_ms: Option<u64>,
    pub bucket_ms: u64,
    /// GraphQL requests per bucket from the moment on: the follow-up fetch wave.
    pub fetches_per_bucket: Vec<u64>,
    pub peak_fetches_per_second: f64,
    /// The horizon peak over mean is taken over, from the publish.
    pub wave_horizon_ms: u64,
    /// Peak over mean of `fetches_per_bucket` over the horizon (1 is a flat wave).
    pub fetch_peak_over_mean: f64,
    /// The node's page-store (origin) reads per bucket from the publish on, from its metrics.
    pub origin_reads_per_bucket: Vec<u64>,
    /// Peak over mean of `origin_reads_per_bucket` over the same span.
    pub origin_peak_over_mean: f64,
    /// From the moment until the last device showed the LIVE content.
    pub all_switched_after_ms: f64,
}

/// Peak over mean of the first `span` buckets, missing buckets counted as empty (0 when there
/// is nothing in them).
fn peak_over_mean(buckets: &[u64], span: usize) -> f64 {
    let span = span.max(1);
    let measured = &buckets[..span.min(buckets.len())];
    let total: u64 = measured.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let mean = total as f64 / span as f64;
    measured.iter().copied().max().unwrap_or(0) as f64 / mean
}

async fn origin_reads(base: &str) -> Option<u64> {
    let metrics = ringside_client::http::call(base, "GET", "/metrics", &[], None)
        .await
        .ok()?
        .text();
    metrics.lines().find_map(|line| {
        line.strip_prefix("ringside_prefetch_store_reads_total ")?
            .parse()
            .ok()
    })
}

/// Publishes `stage` of `event`, with the operator's `fetch_within_ms` when given.
async fn publish(
    admin: &ringside_client::AdminClient,
    event: &EventId,
    stage: &str,
    fetch_within_ms: Option<u64>,
) -> anyhow::Result<()> {
    let request = ringside_protocol::admin::PublishRequest {
        stage: Stage::parse(stage)?,
        payload: ringside_protocol::Payload::parse(r#"{"moment":"kickoff"}"#)?,
    };
    let options = ringside_client::admin::PublishOptions {
        priority: None,
        fetch_within_ms,
    };
    admin
        .publish_with(event, &request, options)
        .await
        .with_context(|| format!("publishing {stage}"))?;
    Ok(())
}

const STAGE_QUERY: &str =
    r#"query($id: ID!) { event(id: $id) { byStage { stage home { rows { id cards { id } } } } } }"#;

/// Fetches one more time at most this often after a refusal with a retry hint.
const SHED_RETRIES_MAX: u32 = 5;

/// The retry hint of a shed answer: `Retry-After` on a 503/429, `retry_after_ms` of a GraphQL
/// `OVERLOADED` error.
fn shed_hint(
    response: &ringside_client::http::HttpResponse,
    json: &serde_json::Value,
) -> Option<Duration> {
    if matches!(response.status, 429 | 503) {
        let seconds = response
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(ringside_client::backoff::parse_retry_after);
        return Some(seconds.unwrap_or(Duration::from_secs(1)));
    }
    let error = &json["errors"][0]["extensions"];
    (error["code"] == "OVERLOADED")
        .then(|| Duration::from_millis(error["retry_after_ms"].as_u64().unwrap_or(1000)))
}

/// The event's stages as a device fetches them; a shed answer is retried after its hint, as a
/// device must (each retry counted in `retries`).
async fn fetch_stages(
    base: &str,
    token: &str,
    event: &EventId,
    retries: &AtomicU64,
) -> anyhow::Result<Vec<String>> {
    let bearer = format!("Bearer {token}");
    let body = serde_json::to_vec(
        &serde_json::json!({ "query": STAGE_QUERY, "variables": { "id": event.as_str() } }),
    )?;
    let mut attempt = 0;
    loop {
        let response = ringside_client::http::call(
            base,
            "POST",
            "/graphql",
            &[("authorization", &bearer)],
            Some(body.clone()),
        )
        .await?;
        let json: serde_json::Value =
            serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        if let Some(hint) = shed_hint(&response, &json) {
            anyhow::ensure!(attempt < SHED_RETRIES_MAX, "shed {} times", attempt + 1);
            attempt += 1;
            retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(hint).await;
            continue;
        }
        let stages = json["data"]["event"]["byStage"]
            .as_array()
            .context("no byStage in the answer")?;
        return Ok(stages
            .iter()
            .filter_map(|s| s["stage"].as_str().map(str::to_owned))
            .collect());
    }
}

pub async fn run_kickoff(plan: KickoffPlan) -> anyhow::Result<KickoffResult> {
    let admin = ringside_client::AdminClient::new(plan.server.clone(), &plan.admin_token);
    let first_stage = admin
        .list_events()
        .await
        .context("listing events")?
        .into_iter()
        .find(|e| e.id == plan.event)
        .with_context(|| format!("no event {}", plan.event))?
        .stages
        .first()
        .map(ToString::to_string)
        .context("an event without stages")?;
    anyhow::ensure!(first_stage != "LIVE", "the event's first stage is LIVE");
    publish(&admin, &plan.event, &first_stage, None).await?;
    let counters = Arc::new(Counters::default());
    let windows_seen = Arc::new(Mutex::new(Vec::<Option<u64>>::new()));
    let moment = Instant::now() + plan.prefetch_window + Duration::from_secs(1);
    let fetch_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let switch_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let latencies = Arc::new(Mutex::new(new_histogram()));
    let live = Stage::parse("LIVE")?;
    let mut devices = Vec::new();
    for token in &plan.tokens {
        let (plan, token, counters) = (plan.clone(), token.clone(), counters.clone());
        let (fetch_times, switch_times, latencies, live, windows_seen) = (
            fetch_times.clone(),
            switch_times.clone(),
            latencies.clone(),
            live.clone(),
            windows_seen.clone(),
        );
        devices.push(tokio::spawn(async move {
            let mut config = ringside_client::WatcherConfig::new(
                vec![ringside_client::device::ws_url(&plan.server)],
                token.clone(),
                vec![plan.event.topic()],
            );
            config.ack = false;
            let mut watcher = ringside_client::Watcher::new(config);
            // Prefetch at a random moment of the window (or never).
            let prefetch = async {
                if fastrand::f64() >= plan.prefetch_share {
                    return Vec::new();
                }
                tokio::time::sleep(plan.prefetch_window.mul_f64(fastrand::f64())).await;
                match fetch_stages(&plan.server, &token, &plan.event, &counters.shed_retries).await
                {
                    Ok(stages) => {
                        counters.prefetched.fetch_add(1, Ordering::Relaxed);
                        stages
                    }
                    Err(_) => {
                        counters.prefetch_errors.fetch_add(1, Ordering::Relaxed);
                        Vec::new()
                    }
                }
            };
            let wait_for_live = async {
                loop {
                    if let ringside_client::watcher::WatchEvent::State(state) = watcher.next().await
                        && state.stage == live
                    {
                        return Some(state);
                    }
                }
            };
            let (cached, state) = tokio::join!(
                prefetch,
                tokio::time::timeout(
                    moment.elapsed() + plan.prefetch_window + Duration::from_secs(60),
                    wait_for_live
                )
            );
            let Ok(Some(state)) = state else { return };
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            latencies
                .lock()
                .await
                .saturating_record(now_us.saturating_sub(state.published_at_ms * 1000).max(1));
            counters.state_delivered.fetch_add(1, Ordering::Relaxed);
            windows_seen.lock().await.push(state.fetch_within_ms);
            if cached.iter().any(|s| s == "LIVE") {
                counters.switched_from_cache.fetch_add(1, Ordering::Relaxed);
                switch_times.lock().await.push(moment.elapsed());
                return;
            }
            // Nothing cached for LIVE: fetch at a uniformly random moment of the state's
            // window, counted from its publication (at once without a window).
            counters.had_to_fetch.fetch_add(1, Ordering::Relaxed);
            let window_ms = state.fetch_within_ms.unwrap_or(0) as f64;
            let fetch_at_us =
                state.published_at_ms as f64 * 1000.0 + window_ms * 1000.0 * fastrand::f64();
            let wait_us = (fetch_at_us - now_us as f64).max(0.0);
            tokio::time::sleep(Duration::from_micros(wait_us as u64)).await;
            fetch_times.lock().await.push(moment.elapsed());
            match fetch_stages(&plan.server, &token, &plan.event, &counters.shed_retries).await {
                Ok(_) => switch_times.lock().await.push(moment.elapsed()),
                Err(_) => {
                    counters.fetch_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep_until(moment.into()).await;
    let reads_before = origin_reads(&plan.server).await;
    publish(&admin, &plan.event, live.as_str(), plan.fetch_within_ms).await?;
    let published = Instant::now();
    // The origin's reads per bucket while the devices switch.
    let sampling = stop_flag();
    let sampler = {
        let (base, bucket, stop) = (plan.server.clone(), plan.bucket, sampling.clone());
        tokio::spawn(async move {
            let mut per_bucket = Vec::new();
            let Some(mut last) = reads_before else {
                return per_bucket;
            };
            let mut next = published + bucket;
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep_until(next.into()).await;
                next += bucket;
                let Some(now) = origin_reads(&base).await else {
                    break;
                };
                per_bucket.push(now.saturating_sub(last));
                last = now;
            }
            per_bucket
        })
    };
    for device in devices {
        device.await?;
    }
    sampling.store(true, Ordering::Release);
    let origin_reads_per_bucket = sampler.await?;
    let offset = published.duration_since(moment);
    let bucket_ms = plan.bucket.as_millis().max(1) as u64;
    let fetch_times = fetch_times.lock().await;
    let last = fetch_times
        .iter()
        .map(|t| t.saturating_sub(offset).as_millis() as u64)
        .max()
        .unwrap_or(0);
    let mut wave = vec![0u64; (last / bucket_ms + 1) as usize];
    for t in fetch_times.iter() {
        wave[(t.saturating_sub(offset).as_millis() as u64 / bucket_ms) as usize] += 1;
    }
    let switch_times = switch_times.lock().await;
    let latencies = latencies.lock().await;
    let all_switched_after_ms = switch_times
        .iter()
        .map(|t| t.saturating_sub(offset).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max);
    let wave_horizon_ms = plan.wave_horizon.as_millis() as u64;
    let span = (wave_horizon_ms / bucket_ms).max(1) as usize;
    let fetch_within_ms = windows_seen.lock().await.iter().flatten().copied().max();
    Ok(KickoffResult {
        devices: plan.tokens.len(),
        prefetched: counters.prefetched.load(Ordering::Relaxed),
        prefetch_errors: counters.prefetch_errors.load(Ordering::Relaxed),
        state_delivered: counters.state_delivered.load(Ordering::Relaxed),
        state_latency: Latency::of(&latencies),
        switched_from_cache: counters.switched_from_cache.load(Ordering::Relaxed),
        had_to_fetch: counters.had_to_fetch.load(Ordering::Relaxed),
        fetch_errors: counters.fetch_errors.load(Ordering::Relaxed),
        shed_retries: counters.shed_retries.load(Ordering::Relaxed),
        fetch_within_ms_published: plan.fetch_within_ms,
        fetch_within_ms,
        bucket_ms,
        wave_horizon_ms,
        fetch_peak_over_mean: peak_over_mean(&wave, span),
        origin_peak_over_mean: peak_over_mean(&origin_reads_per_bucket, span),
        origin_reads_per_bucket,
        peak_fetches_per_second: wave.iter().copied().max().unwrap_or(0) as f64 * 1000.0
            / bucket_ms as f64,
        fetches_per_bucket: wave,
        all_switched_after_ms,
    })
}

/// A stop flag for the sampler.
fn stop_flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[derive(Debug, Default)]
struct Counters {
    prefetched: AtomicU64,
    prefetch_errors: AtomicU64,
    shed_retries: AtomicU64,
    state_delivered: AtomicU64,
    switched_from_cache: AtomicU64,
    had_to_fetch: AtomicU64,
    fetch_errors: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::peak_over_mean;

    #[test]
    fn peak_over_mean_is_taken_over_the_span() {
        assert_eq!(peak_over_mean(&[], 3), 0.0);
        assert_eq!(peak_over_mean(&[0, 0], 2), 0.0);
        assert_eq!(peak_over_mean(&[2, 2, 2, 2], 4), 1.0);
        // Everything in the first bucket of a ten-bucket span: 10, whether or not the later
        // buckets were recorded.
        assert_eq!(
            peak_over_mean(&[10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5], 10),
            10.0
        );
        assert_eq!(peak_over_mean(&[10], 10), 10.0);
        assert_eq!(peak_over_mean(&[4, 0, 4, 0], 4), 2.0);
    }
}
