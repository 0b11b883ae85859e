//! The coordinator of a `fanout` run.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use ringside_client::AdminClient;
use ringside_protocol::admin::{CreateEvent, PublishRequest};
use ringside_protocol::{EventId, Payload, Stage};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

use crate::report::{FanoutReport, Latency, StormReport, UpdateReport, new_histogram};
use crate::system::{cpu_seconds, is_loopback_url, load_average, rss_bytes};
use crate::wire::{Command, DeviceTarget, WorkerPlan, WorkerReport};

/// Most connections one worker holds (the machine allows 20,000 open files per process).
pub const CONNECTIONS_PER_WORKER_MAX: usize = 15_000;

#[derive(Debug, Clone)]
pub struct FanoutPlan {
    pub target: FanoutTarget,
    pub connections: usize,
    pub workers: usize,
    pub publishes: usize,
    pub publish_interval: Duration,
    pub event: EventId,
    pub payload_bytes: usize,
    /// Gateway processes to measure memory of (the storm takes down the first).
    pub gateway_pids: Vec<u32>,
    /// Source addresses 127.0.0.2, 127.0.0.3, … spread over.
    pub source_addresses: usize,
    /// Fleet-wide connections per second.
    pub connect_rate: f64,
    pub read_buffer_bytes: usize,
    /// Ringside devices ack every state they get.
    pub ack: bool,
    /// Time allowed for the last deliveries after the last publish.
    pub delivery_timeout: Duration,
    /// After the publishes, take the node down and back up (the storm scenario).
    pub storm: Option<StormPlan>,
}

/// How the storm scenario takes the node down and brings it back.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// SIGTERM (graceful drain: goaway with spread reconnect delays) or SIGKILL (no goaway).
    pub signal: StormSignal,
    /// A shell command that starts the node again and prints its PID.
    pub restart_command: String,
    /// Health URL of the restarted node.
    pub health_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StormSignal {
    Drain,
    Kill,
}

/// The system under test.
#[derive(Debug, Clone)]
pub enum FanoutTarget {
    /// Ringside nodes: devices speak protocol v1, spread over `nodes` (base URLs such as
    /// `http://127.0.0.1:8080`); the coordinator publishes each update through every admin API
    /// of `publish_to` at once (one control plane with Kafka, or every node of a fleet of
    /// independent single-process nodes).
    Ringside {
        nodes: Vec<String>,
        publish_to: Vec<String>,
        device_token_secret: String,
        admin_token: String,
    },
    /// NATS: devices spread over the WebSocket listeners `ws_urls` (one server, or a cluster
    /// joined by routes); the coordinator publishes once over TCP to `address`.
    Nats {
        ws_urls: Vec<String>,
        address: String,
    },
    /// Pushpin: devices spread over the instances' WebSocket ports `ws_urls` (such as
    /// `ws://127.0.0.1:7990`); each update goes to every publish endpoint of `publish_urls`
    /// (such as `http://127.0.0.1:5591`) at once.
    Pushpin {
        ws_urls: Vec<String>,
        publish_urls: Vec<String>,
    },
}

impl FanoutTarget {
    fn is_loopback(&self) -> bool {
        match self {
            Self::Ringside {
                nodes, publish_to, ..
            } => nodes
                .iter()
                .chain(publish_to)
                .all(|url| is_loopback_url(url)),
            Self::Nats { ws_urls, address } => {
                ws_urls.iter().all(|url| is_loopback_url(url))
                    && is_loopback_url(&format!("tcp://{address}"))
            }
            Self::Pushpin {
                ws_urls,
                publish_urls,
            } => ws_urls
                .iter()
                .chain(publish_urls)
                .all(|url| is_loopback_url(url)),
        }
    }

    /// How many nodes devices spread over.
    fn device_nodes(&self) -> usize {
        match self {
            Self::Ringside { nodes, .. } => nodes.len(),
            Self::Nats { ws_urls, .. } | Self::Pushpin { ws_urls, .. } => ws_urls.len(),
        }
    }
}

/// Publishes the run's updates to the system under test.
enum Publisher {
    Ringside {
        admins: Vec<AdminClient>,
        event: EventId,
        payload: Payload,
    },
    Peer {
        publisher: crate::peers::PeerPublisher,
        channel: String,
        filler: String,
        next_version: u64,
    },
}

impl Publisher {
    fn peer(publisher: crate::peers::PeerPublisher, channel: String, filler: String) -> Self {
        Self::Peer {
            publisher,
            channel,
            filler,
            next_version: 0,
        }
    }

    /// Publishes update number `index`; returns its versions (one per admin API published
    /// through).
    async fn publish(&mut self, index: usize) -> anyhow::Result<Vec<u64>> {
        match self {
            Self::Ringside {
                admins,
                event,
                payload,
            } => {
                let stage = Stage::parse(["LIVE", "ENDED"][index % 2])?;
                let request = PublishRequest {
                    stage,
                    payload: payload.clone(),
                };
                let receipts = futures_util::future::join_all(
                    admins.iter().map(|admin| admin.publish(event, &request)),
                )
                .await;
                receipts
                    .into_iter()
                    .map(|receipt| Ok(receipt?.version))
                    .collect()
            }
            Self::Peer {
                publisher,
                channel,
                filler,
                next_version,
            } => {
                *next_version += 1;
                publisher.publish(channel, *next_version, filler).await?;
                Ok(vec![*next_version])
            }
        }
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    connected: usize,
    received: u64,
}

impl Worker {
    async fn next_report(&mut self) -> anyhow::Result<WorkerReport> {
        loop {
            let line = self
                .lines
                .next_line()
                .await?
                .context("worker exited early")?;
            if let Ok(report) = serde_json::from_str::<WorkerReport>(&line) {
                if let WorkerReport::Progress {
                    connected,
                    received,
                } = report
                {
                    self.connected = connected;
                    self.received = received;
                }
                return Ok(report);
            }
        }
    }
}

/// A reading (RSS, CPU time) summed over `pids`; `None` when there are none or one cannot be
/// read.
fn summed<T: std::iter::Sum>(pids: &[u32], read: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| read(pid)).sum()
}

/// Waits until the workers report `expected` deliveries in all, or the timeout; shows progress.
async fn wait_for_deliveries(
    fleet: &mut [Worker],
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut shown = Instant::now();
    loop {
        let mut received = 0;
        for worker in fleet.iter_mut() {
            worker.next_report().await?;
            received += worker.received;
        }
        if shown.elapsed() > Duration::from_secs(1) {
            let connected: usize = fleet.iter().map(|w| w.connected).sum();
            eprintln!("connected {connected}, delivered {received}/{expected}");
            shown = Instant::now();
        }
        if received >= expected || Instant::now() >= deadline {
            return Ok(());
        }
    }
}

fn source_addresses(count: usize) -> Vec<IpAddr> {
    (0..count.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

pub async fn run_fanout(plan: FanoutPlan) -> anyhow::Result<FanoutReport> {
    if !plan.target.is_loopback() {
        bail!(
            "ringside-load only targets loopback addresses, not {:?}",
            plan.target
        );
    }
    let node_count = plan.target.device_nodes();
    // Each worker connects to one node, so that every node gets the same share.
    let workers = plan
        .workers
        .max(plan.connections.div_ceil(CONNECTIONS_PER_WORKER_MAX))
        .max(1)
        .next_multiple_of(node_count.max(1));
    let filler = "x".repeat(plan.payload_bytes);
    // The NATS subject or Pushpin channel the peers carry the run's updates on.
    let channel = format!("event.{}", plan.event);
    let (device_targets, mut publisher) = match &plan.target {
        FanoutTarget::Ringside {
            nodes,
            publish_to,
            device_token_secret,
            admin_token,
        } => {
            let admins: Vec<AdminClient> = publish_to
                .iter()
                .map(|url| AdminClient::new(url.clone(), admin_token))
                .collect();
            let event = CreateEvent {
                id: plan.event.clone(),
                title: "ringside-load fanout".into(),
                starts_at: "2026-01-01T00:00:00Z".into(),
                stages: vec![
                    Stage::parse("UPCOMING")?,
                    Stage::parse("LIVE")?,
                    Stage::parse("ENDED")?,
                ],
            };
            for admin in &admins {
                match admin.create_event(&event).await {
                    Ok(_) | Err(ringside_client::ClientError::Api { status: 409, .. }) => {}
                    Err(error) => return Err(error).context("creating the benchmark event"),
                }
            }
            let targets: Vec<DeviceTarget> = nodes
                .iter()
                .map(|node| DeviceTarget::Ringside {
                    ws_url: ringside_client::device::ws_url(node),
                    topic: plan.event.topic().to_string(),
                    device_token_secret: device_token_secret.clone(),
                })
                .collect();
            let payload = Payload::parse(&format!(r#"{{"filler":"{filler}"}}"#))?;
            (
                targets,
                Publisher::Ringside {
                    admins,
                    event: plan.event.clone(),
                    payload,
                },
            )
        }
        FanoutTarget::Nats { ws_urls, address } => {
            let targets = ws_urls
                .iter()
                .map(|ws_url| DeviceTarget::Nats {
                    ws_url: ws_url.clone(),
                    subject: channel.clone(),
                })
                .collect();
            let publisher = crate::peers::NatsPublisher::connect(address).await?;
            (
                targets,
                Publisher::peer(
                    crate::peers::PeerPublisher::Nats(publisher),
                    channel,
                    filler,
                ),
            )
        }
        FanoutTarget::Pushpin {
            ws_urls,
            publish_urls,
        } => {
            let targets = ws_urls
                .iter()
                .map(|ws_url| DeviceTarget::Pushpin {
                    ws_url: format!("{}/{channel}", ws_url.trim_end_matches('/')),
                })
                .collect();
            let publisher = crate::peers::PeerPublisher::Pushpin {
                bases: publish_urls.clone(),
            };
            (targets, Publisher::peer(publisher, channel, filler))
        }
    };

    let load_average_before = load_average();
    let rss_before = summed(&plan.gateway_pids, rss_bytes);
    let addresses = source_addresses(plan.source_addresses);
    let mut fleet = Vec::with_capacity(workers);
    for index in 0..workers {
        let share = plan.connections / workers + usize::from(index < plan.connections % workers);
        let worker_plan = WorkerPlan {
            worker: index,
            target: device_targets[index % device_targets.len()].clone(),
            connections: share,
            source_addresses: addresses
                .iter()
                .skip(index)
                .step_by(workers)
                .copied()
                .collect::<Vec<_>>(),
            connect_rate: plan.connect_rate / workers as f64,
            read_buffer_bytes: plan.read_buffer_bytes,
            reconnect: plan.storm.is_some(),
            ack: plan.ack,
        };
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("worker")
            .arg(serde_json::to_string(&worker_plan)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        fleet.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            connected: 0,
            received: 0,
        });
    }

    let mut connected = 0;
    let connect_started = Instant::now();
    let mut ready = vec![false; fleet.len()];
    let mut shown = Instant::now();
    while ready.iter().any(|r| !r) {
        for (index, worker) in fleet.iter_mut().enumerate() {
            if ready[index] {
                continue;
            }
            if let WorkerReport::Ready {
                connected: n,
                failed,
                first_error,
            } = worker.next_report().await?
            {
                ready[index] = true;
                worker.connected = n;
                connected += n;
                if failed > 0 {
                    eprintln!(
                        "worker: {failed} connections failed (first: {})",
                        first_error.unwrap_or_default()
                    );
                }
            }
        }
        if shown.elapsed() > Duration::from_secs(1) {
            let so_far: usize = fleet.iter().map(|w| w.connected).sum();
            eprintln!("connected and subscribed {so_far}/{}", plan.connections);
            shown = Instant::now();
        }
    }
    eprintln!(
        "{connected}/{} devices connected and subscribed in {:.1} s",
        plan.connections,
        connect_started.elapsed().as_secs_f64()
    );
    // Let allocator and kernel settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = summed(&plan.gateway_pids, rss_bytes);

    let worker_pids: Vec<u32> = fleet.iter().filter_map(|w| w.child.id()).collect();
    let cpu_before = summed(&plan.gateway_pids, cpu_seconds);
    let fleet_cpu_before = summed(&worker_pids, cpu_seconds);
    let mut versions = Vec::with_capacity(plan.publishes);
    for index in 0..plan.publishes {
        if index > 0 {
            tokio::time::sleep(plan.publish_interval).await;
        }
        versions.push(publisher.publish(index).await?);
    }

    let mut expected = (connected * plan.publishes) as u64;
    wait_for_deliveries(&mut fleet, expected, plan.delivery_timeout).await?;
    let fanout_cpu_seconds = summed(&plan.gateway_pids, cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let fleet_cpu_seconds = summed(&worker_pids, cpu_seconds)
        .zip(fleet_cpu_before)
        .map(|(after, before)| after - before);

    let mut storm_timeline = None;
    if let Some(storm) = &plan.storm {
        let pid = *plan
            .gateway_pids
            .first()
            .context("the storm scenario needs --gateway-pid")?;
        let signal = match storm.signal {
            StormSignal::Drain => "-TERM",
            StormSignal::Kill => "-KILL",
        };
        let down_at = Instant::now();
        let down_at_ms = ringside_protocol::unix_now_ms();
        eprintln!("storm: kill {signal} {pid}");
        tokio::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await?;
        // Wait for the old node to be gone before starting the new one on its port.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let restart = tokio::process::Command::new("sh")
            .args(["-c", &storm.restart_command])
            .output()
            .await?;
        if !restart.status.success() {
            bail!(
                "restart command failed: {}",
                String::from_utf8_lossy(&restart.stderr)
            );
        }
        while ringside_client::http::call(&storm.health_url, "GET", "/healthz", &[], None)
            .await
            .map_or(true, |r| r.status != 200)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let back_after = down_at.elapsed();
        eprintln!(
            "storm: node back after {:.2} s; publishing the newest state",
            back_after.as_secs_f64()
        );
        versions.push(publisher.publish(plan.publishes).await?);
        expected += connected as u64;
        wait_for_deliveries(&mut fleet, expected, plan.delivery_timeout).await?;
        storm_timeline = Some((storm.signal, down_at_ms, back_after));
    }

    let load_average_after = load_average();
    let mut connects: Vec<u64> = Vec::new();
    // Each update may carry several versions (one per independent node published through).
    let update_of: std::collections::HashMap<u64, usize> = versions
        .iter()
        .enumerate()
        .flat_map(|(update, versions)| versions.iter().map(move |v| (*v, update)))
        .collect();
    let mut per_update: Vec<hdrhistogram::Histogram<u64>> =
        versions.iter().map(|_| new_histogram()).collect();
    for worker in &mut fleet {
        let finish = serde_json::to_string(&Command::Finish)? + "\n";
        worker.stdin.write_all(finish.as_bytes()).await?;
        let samples = loop {
            if let WorkerReport::Done {
                samples,
                connects_ms,
                ..
            } = worker.next_report().await?
            {
                connects.extend(connects_ms);
                break samples;
            }
        };
        for (version, latencies) in samples {
            if let Some(histogram) = update_of.get(&version).map(|&u| &mut per_update[u]) {
                for latency in latencies {
                    histogram.saturating_record(latency.max(1));
                }
            }
        }
        let _ = worker.child.wait().await;
    }

    let mut overall = new_histogram();
    let mut updates = Vec::new();
    for (versions, histogram) in versions.iter().zip(&per_update) {
        overall.add(histogram).context("merging histograms")?;
        updates.push(UpdateReport {
            version: versions.iter().copied().max().unwrap_or(0),
            delivered: histogram.len(),
            expected: connected as u64,
            latency: Latency::of(histogram),
        });
    }
    let mut lasts: Vec<f64> = updates.iter().map(|u| u.latency.max_ms).collect();
    lasts.sort_by(f64::total_cmp);
    let median_time_to_last_device_ms = lasts.get(lasts.len() / 2).copied().unwrap_or(0.0);
    let gateway_bytes_per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if connected > 0 => {
            Some(after.saturating_sub(before) as f64 / connected as f64)
        }
        _ => None,
    };
    // Deliveries of the regular updates (the storm's extra publish came after the reading).
    let regular_deliveries: u64 = updates
        .iter()
        .take(plan.publishes)
        .map(|u| u.delivered)
        .sum();
    let per_delivery = |seconds: Option<f64>| {
        seconds
            .filter(|_| regular_deliveries > 0)
            .map(|seconds| seconds * 1e6 / regular_deliveries as f64)
    };
    let gateway_cpu_us_per_delivery = per_delivery(fanout_cpu_seconds);
    let fleet_cpu_us_per_delivery = per_delivery(fleet_cpu_seconds);
    let storm = storm_timeline.map(|(signal, down_at_ms, back_after)| {
        let bucket_ms = 100;
        let reconnects: Vec<u64> = connects
            .iter()
            .copied()
            .filter(|&t| t >= down_at_ms)
            .collect();
        let last = reconnects.iter().copied().max().unwrap_or(down_at_ms);
        let mut curve = vec![0u64; ((last - down_at_ms) / bucket_ms + 1) as usize];
        for t in &reconnects {
            curve[((t - down_at_ms) / bucket_ms) as usize] += 1;
        }
        let newest = updates.last();
        StormReport {
            signal,
            node_back_after_ms: back_after.as_millis() as u64,
            reconnects: reconnects.len() as u64,
            all_reconnected_after_ms: last - down_at_ms,
            peak_reconnects_per_second: curve.iter().copied().max().unwrap_or(0)
                * (1000 / bucket_ms),
            reconnects_per_100ms: curve,
            newest_delivered: newest.map_or(0, |u| u.delivered),
            newest_last_device_ms: newest.map_or(0.0, |u| u.latency.max_ms),
        }
    });
    Ok(FanoutReport {
        storm,
        connections: plan.connections,
        connected,
        workers,
        payload_bytes: plan.payload_bytes,
        gateway_rss_before_bytes: rss_before,
        gateway_rss_after_bytes: rss_after,
        gateway_bytes_per_connection,
        gateway_cpu_us_per_delivery,
        fleet_cpu_us_per_delivery,
        load_average_before,
        load_average_after,
        delivered: updates.iter().map(|u| u.delivered).sum(),
        expected,
        updates,
        overall: Latency::of(&overall),
        cdf: crate::report::cdf_points(&overall),
        median_time_to_last_device_ms,
        clock_note: "latency = device receive time - published_at_ms, one machine and one clock; published_at_ms has 1 ms resolution",
    })
}
