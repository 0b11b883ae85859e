//! The origin (page store) read rate while a fleet keeps its prefetch fresh: every device fills
//! its cache at the same moment, then re-requests at random intervals. Without TTL jitter the
//! node's cache entries expire together and the store sees synchronized waves of reads; with
//! jitter the waves flatten. The figure is peak over mean of store reads per time bucket.

use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone)]
pub struct OriginPlan {
    pub base: String,
    /// One token per device (each a different profile).
    pub tokens: Vec<String>,
    pub query: String,
    pub duration: Duration,
    /// Mean time between a device's requests (exponentially distributed).
    pub mean_interval: Duration,
    pub bucket: Duration,
    /// Buckets before this offset (the initial fill) are left out of peak and mean.
    pub warmup: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct OriginResult {
    pub devices: usize,
    pub requests: u64,
    pub errors: u64,
    pub bucket_ms: u64,
    /// Store reads per bucket, from the start.
    pub reads_per_bucket: Vec<u64>,
    pub mean_reads_per_bucket: f64,
    pub peak_reads_per_bucket: u64,
    pub peak_over_mean: f64,
}

async fn store_reads(base: &str) -> anyhow::Result<u64> {
    let metrics = ringside_client::http::call(base, "GET", "/metrics", &[], None)
        .await?
        .text();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("ringside_prefetch_store_reads_total ")?
                .parse()
                .ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no ringside_prefetch_store_reads_total in /metrics"))
}

pub async fn run_origin(plan: OriginPlan) -> anyhow::Result<OriginResult> {
    let started = Instant::now();
    let deadline = started + plan.duration;
    let body = serde_json::to_vec(&serde_json::json!({ "query": plan.query }))?;
    let mut devices = Vec::new();
    for token in plan.tokens.clone() {
        let (base, body, mean) = (plan.base.clone(), body.clone(), plan.mean_interval);
        devices.push(tokio::spawn(async move {
            let bearer = format!("Bearer {token}");
            let (mut requests, mut errors) = (0u64, 0u64);
            // Everyone fills at the same moment, then re-requests at random.
            while Instant::now() < deadline {
                match ringside_client::http::call(
                    &base,
                    "POST",
                    "/graphql",
                    &[("authorization", &bearer)],
                    Some(body.clone()),
                )
                .await
                {
                    Ok(response)
                        if response.status == 200 && !response.text().contains("\"errors\":") => {}
                    _ => errors += 1,
                }
                requests += 1;
                let gap = mean.mul_f64(-fastrand::f64().max(1e-9).ln());
                tokio::time::sleep(gap).await;
            }
            (requests, errors)
        }));
    }
    let mut reads_per_bucket = Vec::new();
    let mut last = store_reads(&plan.base).await?;
    let mut next = started + plan.bucket;
    while next <= deadline {
        tokio::time::sleep_until(next.into()).await;
        let now = store_reads(&plan.base).await?;
        reads_per_bucket.push(now - last);
        last = now;
        next += plan.bucket;
    }
    let (mut requests, mut errors) = (0, 0);
    for device in devices {
        let (r, e) = device.await?;
        requests += r;
        errors += e;
    }
    let skip = (plan.warmup.as_millis() / plan.bucket.as_millis().max(1)) as usize;
    let measured = &reads_per_bucket[skip.min(reads_per_bucket.len())..];
    let mean = measured.iter().sum::<u64>() as f64 / measured.len().max(1) as f64;
    let peak = measured.iter().copied().max().unwrap_or(0);
    Ok(OriginResult {
        devices: plan.tokens.len(),
        requests,
        errors,
        bucket_ms: plan.bucket.as_millis() as u64,
        mean_reads_per_bucket: mean,
        peak_reads_per_bucket: peak,
        peak_over_mean: if mean > 0.0 { peak as f64 / mean } else { 0.0 },
        reads_per_bucket,
    })
}
