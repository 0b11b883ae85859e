//! A worker process: its share of the device fleet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ringside_auth::{DeviceClaims, DeviceClass, DeviceTokenKey};
use ringside_client::{ConnectOptions, DeviceConnection};
use ringside_protocol::{ServerFrame, Topic};
use ringside_sync_util::LockExt;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::wire::{Command, DeviceTarget, WorkerPlan, WorkerReport};

/// Per version, latency samples in microseconds.
type Samples = Arc<Mutex<BTreeMap<u64, Vec<u64>>>>;

#[derive(Default)]
struct Counters {
    /// States published before this worker started are not samples of this run: a device that
    /// subscribes to an event published in an earlier run gets its current state at once.
    not_before_ms: u64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    disconnected: AtomicUsize,
    received: AtomicU64,
    first_error: Mutex<Option<String>>,
    connects_ms: Mutex<Vec<u64>>,
}

fn emit(report: &WorkerReport) {
    if let Ok(line) = serde_json::to_string(report) {
        println!("{line}");
    }
}

fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs one worker until the coordinator says `finish` on stdin.
pub async fn run_worker(plan: WorkerPlan) -> anyhow::Result<()> {
    let samples: Samples = Arc::default();
    let counters = Arc::new(Counters {
        not_before_ms: ringside_protocol::unix_now_ms(),
        ..Counters::default()
    });
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400;

    // Progress from the first connection on, for the coordinator's live display.
    let progress_counters = counters.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            emit(&WorkerReport::Progress {
                connected: progress_counters.connected.load(Ordering::Relaxed),
                received: progress_counters.received.load(Ordering::Relaxed),
            });
        }
    });
    let mean_gap = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let key = match &plan.target {
        DeviceTarget::Ringside {
            device_token_secret,
            ..
        } => Some(DeviceTokenKey::new(device_token_secret.as_bytes())?),
        DeviceTarget::Nats { .. } | DeviceTarget::Pushpin { .. } => None,
    };
    let mut next_arrival = tokio::time::Instant::now();
    for index in 0..plan.connections {
        let bind = plan
            .source_addresses
            .get(index % plan.source_addresses.len().max(1))
            .copied();
        let (samples, counters) = (samples.clone(), counters.clone());
        match &plan.target {
            DeviceTarget::Ringside { ws_url, topic, .. } => {
                let claims = DeviceClaims {
                    sub: format!("load-{}-{index}", plan.worker),
                    profile: format!("p-{}-{index}", plan.worker),
                    class: DeviceClass::Tv,
                    exp,
                    nbf: None,
                    priority: None,
                };
                let token = key.as_ref().map(|k| k.sign(&claims)).unwrap_or_default();
                let options = ConnectOptions {
                    bind,
                    read_buffer_bytes: Some(plan.read_buffer_bytes),
                    connect_timeout: Some(Duration::from_secs(20)),
                    ..ConnectOptions::default()
                };
                let (url, topic) = (ws_url.clone(), Topic::parse(topic)?);
                if plan.reconnect {
                    tokio::spawn(async move {
                        run_watcher(url, token, options, topic, samples, counters).await
                    });
                } else {
                    let ack = plan.ack;
                    tokio::spawn(async move {
                        run_device(url, token, options, topic, ack, samples, counters).await
                    });
                }
            }
            DeviceTarget::Nats { .. } | DeviceTarget::Pushpin { .. } => {
                let (target, read_buffer) = (plan.target.clone(), plan.read_buffer_bytes);
                tokio::spawn(async move {
                    run_peer_device(target, bind, read_buffer, samples, counters).await
                });
            }
        }
        // Exponential gaps: arrivals at the planned mean rate, never in lockstep. Gaps add up
        // to a schedule, so that the timer's 1 ms resolution does not slow the mean rate.
        next_arrival += mean_gap.mul_f64(-fastrand::f64().max(1e-9).ln());
        tokio::time::sleep_until(next_arrival).await;
    }
    while counters.connected.load(Ordering::Acquire) + counters.failed.load(Ordering::Acquire)
        < plan.connections
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_error = counters.first_error.locked().clone();
    emit(&WorkerReport::Ready {
        connected: counters.connected.load(Ordering::Acquire),
        failed: counters.failed.load(Ordering::Acquire),
        first_error,
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Ok(Command::Finish) = serde_json::from_str(&line) {
            break;
        }
    }
    let samples = std::mem::take(&mut *samples.locked());
    let connects_ms = std::mem::take(&mut *counters.connects_ms.locked());
    emit(&WorkerReport::Done {
        samples,
        disconnected: counters.disconnected.load(Ordering::Acquire),
        connects_ms,
    });
    Ok(())
}

fn record(samples: &Samples, counters: &Counters, version: u64, published_at_ms: u64) {
    if published_at_ms < counters.not_before_ms {
        return;
    }
    let latency_us = unix_now_us().saturating_sub(published_at_ms * 1000);
    samples
        .locked()
        .entry(version)
        .or_default()
        .push(latency_us);
    counters.received.fetch_add(1, Ordering::Relaxed);
}

fn failed(counters: &Counters, error: String) {
    counters.first_error.locked().get_or_insert(error);
    counters.failed.fetch_add(1, Ordering::AcqRel);
}

/// A device of a peer system (NATS or Pushpin).
async fn run_peer_device(
    target: DeviceTarget,
    bind: Option<std::net::IpAddr>,
    read_buffer_bytes: usize,
    samples: Samples,
    counters: Arc<Counters>,
) {
    let url = match &target {
        DeviceTarget::Nats { ws_url, .. } | DeviceTarget::Pushpin { ws_url } => ws_url,
        DeviceTarget::Ringside { .. } => return failed(&counters, "not a peer target".into()),
    };
    let ws = match crate::peers::connect_ws(url, bind, read_buffer_bytes).await {
        Ok(ws) => ws,
        Err(error) => return failed(&counters, error.to_string()),
    };
    let mut subscribed = false;
    let on_subscribed = || {
        subscribed = true;
        counters.connected.fetch_add(1, Ordering::AcqRel);
    };
    let on_message = |message: crate::peers::PeerMessage| {
        record(
            &samples,
            &counters,
            message.version,
            message.published_at_ms,
        )
    };
    let result = match &target {
        DeviceTarget::Nats { subject, .. } => {
            crate::peers::nats_device(ws, subject, on_subscribed, on_message).await
        }
        _ => crate::peers::pushpin_device(ws, on_subscribed, on_message).await,
    };
    if !subscribed {
        return failed(
            &counters,
            result
                .err()
                .map_or("closed before subscribing".into(), |e| e.to_string()),
        );
    }
    counters.disconnected.fetch_add(1, Ordering::AcqRel);
}

/// A device that stays connected: every (re)connection is timestamped.
async fn run_watcher(
    url: String,
    token: String,
    options: ConnectOptions,
    topic: Topic,
    samples: Samples,
    counters: Arc<Counters>,
) {
    let mut config = ringside_client::WatcherConfig::new(vec![url], token, vec![topic]);
    config.ack = false;
    config.connect = options;
    let mut watcher = ringside_client::Watcher::new(config);
    let mut first = true;
    loop {
        match watcher.next().await {
            ringside_client::watcher::WatchEvent::Connected { .. } => {
                counters.connects_ms.locked().push(unix_now_us() / 1000);
                if std::mem::take(&mut first) {
                    counters.connected.fetch_add(1, Ordering::AcqRel);
                }
            }
            ringside_client::watcher::WatchEvent::State(state) => {
                record(&samples, &counters, state.version, state.published_at_ms)
            }
            ringside_client::watcher::WatchEvent::Disconnected { .. } => {
                counters.disconnected.fetch_add(1, Ordering::AcqRel);
            }
            ringside_client::watcher::WatchEvent::Refused { reason } => {
                if first {
                    failed(&counters, reason);
                }
                return;
            }
        }
    }
}

async fn run_device(
    url: String,
    token: String,
    options: ConnectOptions,
    topic: Topic,
    ack: bool,
    samples: Samples,
    counters: Arc<Counters>,
) {
    let connected = async {
        let mut device = DeviceConnection::connect_with(&url, &token, &options).await?;
        device.subscribe(&[(topic, 0)]).await?;
        loop {
            if let ServerFrame::Subscribed { .. } = device.next_frame().await? {
                return Ok::<_, ringside_client::ClientError>(device);
            }
        }
    };
    let mut device = match connected.await {
        Ok(device) => {
            counters.connected.fetch_add(1, Ordering::AcqRel);
            device
        }
        Err(error) => {
            counters
                .first_error
                .locked()
                .get_or_insert(error.to_string());
            counters.failed.fetch_add(1, Ordering::AcqRel);
            return;
        }
    };
    loop {
        match device.next_frame().await {
            Ok(ServerFrame::State(state)) => {
                record(&samples, &counters, state.version, state.published_at_ms);
                if ack && device.ack(&state.topic, state.version).await.is_err() {
                    counters.disconnected.fetch_add(1, Ordering::AcqRel);
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => {
                counters.disconnected.fetch_add(1, Ordering::AcqRel);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_published_before_the_worker_started_are_not_samples() {
        let samples = Samples::default();
        let counters = Counters {
            not_before_ms: 1_000,
            ..Counters::default()
        };
        // The current state a device gets at once when it subscribes, from an earlier run.
        record(&samples, &counters, 7, 999);
        assert_eq!(counters.received.load(Ordering::Relaxed), 0);
        assert!(samples.lock().unwrap().is_empty());
        record(&samples, &counters, 8, 1_000);
        assert_eq!(counters.received.load(Ordering::Relaxed), 1);
        assert_eq!(samples.lock().unwrap()[&8].len(), 1);
    }
}
