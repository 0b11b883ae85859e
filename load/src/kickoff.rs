//! The whole story of a live moment: devices prefetch over a window before the event, stay
//! connected, and when the operator publishes LIVE each switches to the content it already holds;
//! devices whose prefetch never happened (offline, or shed under load) fetch afterwards, spread
//! with jitter. Reports how many switched from cache, how many had to fetch, and the fetch wave.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use protocol::{EventId, Stage};
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
    /// Devices that must fetch after the moment spread their fetch over this window.
    pub fetch_spread: Duration,
    pub bucket: Duration,
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
    pub bucket_ms: u64,
    /// GraphQL requests per bucket from the moment on: the follow-up fetch wave.
    pub fetches_per_bucket: Vec<u64>,
    pub peak_fetches_per_second: f64,
    /// From the moment until the last device showed the LIVE content.
    pub all_switched_after_ms: f64,
}

const STAGE_QUERY: &str =
    r#"query($id: ID!) { event(id: $id) { byStage { stage home { rows { id cards { id } } } } } }"#;

async fn fetch_stages(base: &str, token: &str, event: &EventId) -> anyhow::Result<Vec<String>> {
    let bearer = format!("Bearer {token}");
    let body = serde_json::to_vec(
        &serde_json::json!({ "query": STAGE_QUERY, "variables": { "id": event.as_str() } }),
    )?;
    let response = client::http::call(
        base,
        "POST",
        "/graphql",
        &[("authorization", &bearer)],
        Some(body),
    )
    .await?;
    let json: serde_json::Value = serde_json::from_slice(&response.body)?;
    let stages = json["data"]["event"]["byStage"]
        .as_array()
        .context("no byStage in the answer")?;
    Ok(stages
        .iter()
        .filter_map(|s| s["stage"].as_str().map(str::to_owned))
        .collect())
}

pub async fn run_kickoff(plan: KickoffPlan) -> anyhow::Result<KickoffResult> {
    let counters = Arc::new(Counters::default());
    let moment = Instant::now() + plan.prefetch_window + Duration::from_secs(1);
    let fetch_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let switch_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let latencies = Arc::new(Mutex::new(new_histogram()));
    let live = Stage::parse("LIVE")?;
    let mut devices = Vec::new();
    for token in &plan.tokens {
        let (plan, token, counters) = (plan.clone(), token.clone(), counters.clone());
        let (fetch_times, switch_times, latencies, live) = (
            fetch_times.clone(),
            switch_times.clone(),
            latencies.clone(),
            live.clone(),
        );
        devices.push(tokio::spawn(async move {
            let mut config = client::WatcherConfig::new(
                vec![client::device::ws_url(&plan.server)],
                token.clone(),
                vec![plan.event.topic()],
            );
            config.ack = false;
            let mut watcher = client::Watcher::new(config);
            // Prefetch at a random moment of the window (or never).
            let prefetch = async {
                if fastrand::f64() >= plan.prefetch_share {
                    return Vec::new();
                }
                tokio::time::sleep(plan.prefetch_window.mul_f64(fastrand::f64())).await;
                match fetch_stages(&plan.server, &token, &plan.event).await {
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
                    if let client::watcher::WatchEvent::State(state) = watcher.next().await {
                        if state.stage == live {
                            return Some(state);
                        }
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
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            latencies
                .lock()
                .await
                .saturating_record(now_ms.saturating_sub(state.published_at_ms * 1000).max(1));
            counters.state_delivered.fetch_add(1, Ordering::Relaxed);
            if cached.iter().any(|s| s == "LIVE") {
                counters.switched_from_cache.fetch_add(1, Ordering::Relaxed);
                switch_times.lock().await.push(moment.elapsed());
                return;
            }
            // Nothing cached for LIVE: fetch, spread with jitter so the wave is flat.
            counters.had_to_fetch.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(plan.fetch_spread.mul_f64(fastrand::f64())).await;
            fetch_times.lock().await.push(moment.elapsed());
            match fetch_stages(&plan.server, &token, &plan.event).await {
                Ok(_) => switch_times.lock().await.push(moment.elapsed()),
                Err(_) => {
                    counters.fetch_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep_until(moment.into()).await;
    let admin = client::AdminClient::new(plan.server.clone(), &plan.admin_token);
    let request = protocol::admin::PublishRequest {
        stage: live,
        payload: protocol::Payload::parse(r#"{"moment":"kickoff"}"#)?,
    };
    admin
        .publish(&plan.event, &request)
        .await
        .context("publishing LIVE")?;
    let published = Instant::now();
    for device in devices {
        device.await?;
    }
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
    Ok(KickoffResult {
        devices: plan.tokens.len(),
        prefetched: counters.prefetched.load(Ordering::Relaxed),
        prefetch_errors: counters.prefetch_errors.load(Ordering::Relaxed),
        state_delivered: counters.state_delivered.load(Ordering::Relaxed),
        state_latency: Latency::of(&latencies),
        switched_from_cache: counters.switched_from_cache.load(Ordering::Relaxed),
        had_to_fetch: counters.had_to_fetch.load(Ordering::Relaxed),
        fetch_errors: counters.fetch_errors.load(Ordering::Relaxed),
        bucket_ms,
        peak_fetches_per_second: wave.iter().copied().max().unwrap_or(0) as f64 * 1000.0
            / bucket_ms as f64,
        fetches_per_bucket: wave,
        all_switched_after_ms: switch_times
            .iter()
            .map(|t| t.saturating_sub(offset).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max),
    })
}

#[derive(Debug, Default)]
struct Counters {
    prefetched: AtomicU64,
    prefetch_errors: AtomicU64,
    state_delivered: AtomicU64,
    switched_from_cache: AtomicU64,
    had_to_fetch: AtomicU64,
    fetch_errors: AtomicU64,
}
