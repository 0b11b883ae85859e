//! `ringside-load drain`: a node holding N devices is drained through the admin API (`POST
//! /v1/admin/nodes/{id}/drain`) while a spare node takes them; measures the reconnect curve
//! (reconnects per 100 ms), its peak, and the time until every device is back, on the spare,
//! at the newest version. Run it once against a paced node and once against one with
//! `RINGSIDE_DRAIN_WINDOW_MAX_MS=0` (every goaway at once) to compare (`scripts/bench-drain`).
//!
//! The two nodes are independent `ringside serve` processes (embedded bus, each with versions
//! of its own): the coordinator publishes every state to both, and a device that moves
//! subscribes to the spare from version 0, so that it is sent the spare's current state: it is
//! back when it holds the spare's newest version.
//!
//! The fleet is spread over worker processes (at most 15,000 devices each) and loopback source
//! addresses, as the fan-out's fleet is. Each device connects to the drained node, follows its
//! goaway (waiting the `reconnect_after_ms` it asks for) to the spare, and backs off with full
//! jitter on a refusal. Workers talk to the coordinator with one JSON object per line.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use ringside_auth::{DeviceClaims, DeviceClass, DeviceTokenKey};
use ringside_client::{AdminClient, ConnectOptions, DeviceConnection};
use ringside_protocol::admin::{CreateEvent, PublishRequest};
use ringside_protocol::{EventId, Payload, ServerFrame, Stage, Topic};
use ringside_sync_util::LockExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Most devices one worker process holds (under the open-files limit).
const DEVICES_PER_WORKER_MAX: usize = 15_000;
/// The reconnect curve's bucket.
const BUCKET_MS: u64 = 100;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The node that is drained (its admin API takes the drain request).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    drained: String,
    /// Its node id (`--node-id` of that `ringside serve`).
    #[arg(long)]
    node_id: String,
    /// The node the devices move to.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    spare: String,
    #[arg(long, default_value_t = 15_000)]
    devices: usize,
    /// Worker processes (raised so that none holds more than 15,000 devices).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 8)]
    source_addresses: usize,
    /// Fleet-wide new connections per second while the fleet connects.
    #[arg(long, default_value_t = 2000.0)]
    connect_rate: f64,
    #[arg(long, default_value = "load-drain")]
    event: EventId,
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
    /// A name for this run in the result (e.g. `paced`, `unpaced`).
    #[arg(long, default_value = "drain")]
    label: String,
    #[arg(
        long,
        env = "RINGSIDE_DEVICE_TOKEN_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    device_token_secret: String,
    #[arg(
        long,
        env = "RINGSIDE_ADMIN_TOKEN",
        hide_env_values = true,
        default_value = ""
    )]
    admin_token: String,
    /// Write the JSON result here.
    #[arg(long)]
    output: Option<std::path::PathBuf>,
}

/// One worker's share of the fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DrainWorkerPlan {
    worker: usize,
    /// The drained node first, then the spare.
    endpoints: Vec<String>,
    topic: String,
    device_token_secret: String,
    devices: usize,
    source_addresses: Vec<IpAddr>,
    connect_rate: f64,
}

/// Worker → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkerLine {
    Progress {
        connected: usize,
        failed: usize,
        goaways: usize,
        back: usize,
    },
    Done {
        /// When each device that moved reconnected, in ms since the Unix epoch.
        reconnects_ms: Vec<u64>,
        /// When each device got its goaway.
        goaways_ms: Vec<u64>,
        /// When each device was back (moved, newest version held).
        back_ms: Vec<u64>,
    },
}

/// Coordinator → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WorkerCommand {
    /// The version a device must hold, after moving, to count as back.
    Newest {
        version: u64,
    },
    Finish,
}

/// The result of one drain.
#[derive(Debug, Serialize)]
pub struct DrainResult {
    pub label: String,
    pub devices: usize,
    pub connected: usize,
    /// The drain as the node planned it.
    pub window_ms: Option<u64>,
    pub sessions_at_start: Option<u64>,
    pub goaways: usize,
    pub reconnects: usize,
    pub reconnects_per_100ms: Vec<u64>,
    pub peak_reconnects_per_100ms: u64,
    pub peak_reconnects_per_second: u64,
    /// From the drain request until the last device was back at the newest version.
    pub all_back_after_ms: Option<u64>,
    pub median_back_after_ms: Option<u64>,
    pub back: usize,
}

fn unix_now_ms() -> u64 {
    ringside_protocol::unix_now_ms()
}

/// The coordinator.
pub fn run(args: DrainArgs) -> anyhow::Result<()> {
    for url in [&args.drained, &args.spare] {
        load::system::require_loopback(url)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(coordinate(&args))?;
    println!(
        "drain {}: {}/{} devices, window {} ms; {} goaways, {} reconnects, peak {} per 100 ms ({}/s); all back at the newest version after {} ms (median {} ms)",
        result.label,
        result.connected,
        result.devices,
        result.window_ms.map_or("?".into(), |w| w.to_string()),
        result.goaways,
        result.reconnects,
        result.peak_reconnects_per_100ms,
        result.peak_reconnects_per_second,
        result
            .all_back_after_ms
            .map_or("(not all back)".into(), |ms| ms.to_string()),
        result
            .median_back_after_ms
            .map_or("?".into(), |ms| ms.to_string()),
    );
    if let Some(path) = &args.output {
        std::fs::write(path, serde_json::to_vec_pretty(&result)?)?;
        println!("JSON result: {}", path.display());
    }
    Ok(())
}

struct Fleet {
    stdins: Vec<tokio::process::ChildStdin>,
    children: Vec<tokio::process::Child>,
    lines: tokio::sync::mpsc::Receiver<(usize, WorkerLine)>,
    /// The last progress of each worker.
    progress: Vec<(usize, usize, usize, usize)>,
}

impl Fleet {
    /// Reads the next line of any worker, keeping its progress.
    async fn next(&mut self) -> anyhow::Result<(usize, WorkerLine)> {
        let (worker, line) = self.lines.recv().await.context("every worker exited")?;
        if let WorkerLine::Progress {
            connected,
            failed,
            goaways,
            back,
        } = line
        {
            self.progress[worker] = (connected, failed, goaways, back);
        }
        Ok((worker, line))
    }

    fn totals(&self) -> (usize, usize, usize, usize) {
        self.progress.iter().fold((0, 0, 0, 0), |t, p| {
            (t.0 + p.0, t.1 + p.1, t.2 + p.2, t.3 + p.3)
        })
    }

    async fn send(&mut self, command: &WorkerCommand) -> anyhow::Result<()> {
        let line = serde_json::to_string(command)? + "\n";
        for stdin in &mut self.stdins {
            stdin.write_all(line.as_bytes()).await?;
        }
        Ok(())
    }
}

/// Publishes `stage` to every node; the versions each assigned.
async fn publish(admins: &[AdminClient], event: &EventId, stage: &str) -> anyhow::Result<Vec<u64>> {
    let request = PublishRequest {
        stage: Stage::parse(stage)?,
        payload: Payload::empty(),
    };
    let mut versions = Vec::new();
    for admin in admins {
        versions.push(admin.publish(event, &request).await?.version);
    }
    Ok(versions)
}

async fn coordinate(args: &DrainArgs) -> anyhow::Result<DrainResult> {
    let admins: Vec<AdminClient> = [&args.drained, &args.spare]
        .iter()
        .map(|base| AdminClient::new((*base).clone(), &args.admin_token))
        .collect();
    let event = CreateEvent {
        id: args.event.clone(),
        title: "ringside-load drain".into(),
        starts_at: "2026-01-01T00:00:00Z".into(),
        stages: ["UPCOMING", "LIVE", "ENDED"]
            .iter()
            .map(|s| Stage::parse(s))
            .collect::<Result<_, _>>()?,
    };
    for admin in &admins {
        match admin.create_event(&event).await {
            Ok(_) | Err(ringside_client::ClientError::Api { status: 409, .. }) => {}
            Err(error) => return Err(error).context("creating the drain event"),
        }
    }
    publish(&admins, &args.event, "UPCOMING").await?;

    let workers = args
        .workers
        .max(args.devices.div_ceil(DEVICES_PER_WORKER_MAX))
        .max(1);
    let addresses: Vec<IpAddr> = (0..args.source_addresses.clamp(1, 250))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect();
    let (sender, lines) = tokio::sync::mpsc::channel(1024);
    let mut fleet = Fleet {
        stdins: Vec::new(),
        children: Vec::new(),
        lines,
        progress: vec![(0, 0, 0, 0); workers],
    };
    for index in 0..workers {
        let plan = DrainWorkerPlan {
            worker: index,
            endpoints: vec![
                ringside_client::device::ws_url(&args.drained),
                ringside_client::device::ws_url(&args.spare),
            ],
            topic: args.event.topic().to_string(),
            device_token_secret: args.device_token_secret.clone(),
            devices: args.devices / workers + usize::from(index < args.devices % workers),
            source_addresses: addresses
                .iter()
                .skip(index)
                .step_by(workers)
                .copied()
                .collect(),
            connect_rate: args.connect_rate / workers as f64,
        };
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg("drain-worker")
            .arg(serde_json::to_string(&plan)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning a drain worker")?;
        fleet
            .stdins
            .push(child.stdin.take().context("worker stdin")?);
        let mut stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        let sender = sender.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Ok(line) = serde_json::from_str::<WorkerLine>(&line)
                    && sender.send((index, line)).await.is_err()
                {
                    return;
                }
            }
        });
        fleet.children.push(child);
    }
    drop(sender);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_s);
    let mut shown = tokio::time::Instant::now();
    loop {
        fleet.next().await?;
        let (connected, failed, _, _) = fleet.totals();
        if shown.elapsed() > Duration::from_secs(1) {
            eprintln!("connected {connected}/{} ({failed} failed)", args.devices);
            shown = tokio::time::Instant::now();
        }
        if connected + failed >= args.devices || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let (connected, ..) = fleet.totals();
    // The newest state, on both nodes; a device is back when it holds the spare's.
    let newest = publish(&admins, &args.event, "LIVE").await?[1];
    fleet
        .send(&WorkerCommand::Newest { version: newest })
        .await?;
    eprintln!("{connected} devices on the drained node; draining it");

    let drain_at_ms = unix_now_ms();
    let bearer = format!("Bearer {}", args.admin_token);
    let answer = ringside_client::http::call(
        &args.drained,
        "POST",
        &format!("/v1/admin/nodes/{}/drain", args.node_id),
        &[("authorization", &bearer)],
        None,
    )
    .await?;
    if !(200..300).contains(&answer.status) {
        bail!(
            "the drain request was refused: {} {}",
            answer.status,
            answer.text()
        );
    }
    let plan: Option<ringside_protocol::admin::DrainProgress> =
        serde_json::from_slice::<ringside_protocol::admin::DrainAnswer>(&answer.body)
            .ok()
            .and_then(|answer| answer.progress);
    eprintln!("drain started: {}", answer.text());

    loop {
        fleet.next().await?;
        let (_, _, goaways, back) = fleet.totals();
        if shown.elapsed() > Duration::from_secs(1) {
            eprintln!("goaways {goaways}, back at the newest version {back}/{connected}");
            shown = tokio::time::Instant::now();
        }
        if back >= connected || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    fleet.send(&WorkerCommand::Finish).await?;
    let (mut reconnects, mut goaways, mut back) = (Vec::new(), Vec::new(), Vec::new());
    let mut done = 0;
    while done < workers {
        if let (
            _,
            WorkerLine::Done {
                reconnects_ms,
                goaways_ms,
                back_ms,
            },
        ) = fleet.next().await?
        {
            reconnects.extend(reconnects_ms);
            goaways.extend(goaways_ms);
            back.extend(back_ms);
            done += 1;
        }
    }
    for child in &mut fleet.children {
        let _exited = child.wait().await;
    }
    Ok(summarize(
        args,
        connected,
        plan,
        drain_at_ms,
        &reconnects,
        &goaways,
        back,
    ))
}

fn summarize(
    args: &DrainArgs,
    connected: usize,
    plan: Option<ringside_protocol::admin::DrainProgress>,
    drain_at_ms: u64,
    reconnects: &[u64],
    goaways: &[u64],
    mut back: Vec<u64>,
) -> DrainResult {
    let last = reconnects.iter().copied().max().unwrap_or(drain_at_ms);
    let mut curve = vec![0u64; (last.saturating_sub(drain_at_ms) / BUCKET_MS + 1) as usize];
    for at in reconnects {
        curve[(at.saturating_sub(drain_at_ms) / BUCKET_MS) as usize] += 1;
    }
    let peak = curve.iter().copied().max().unwrap_or(0);
    back.sort_unstable();
    let after = |at: &u64| at.saturating_sub(drain_at_ms);
    DrainResult {
        label: args.label.clone(),
        devices: args.devices,
        connected,
        window_ms: plan.map(|p| p.window_ms),
        sessions_at_start: plan.map(|p| p.sessions_at_start),
        goaways: goaways.len(),
        reconnects: reconnects.len(),
        reconnects_per_100ms: curve,
        peak_reconnects_per_100ms: peak,
        peak_reconnects_per_second: peak * (1000 / BUCKET_MS),
        all_back_after_ms: (back.len() >= connected)
            .then(|| back.last().map(after))
            .flatten(),
        median_back_after_ms: back.get(back.len() / 2).map(after),
        back: back.len(),
    }
}

/// What a worker's devices share.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    goaways: AtomicUsize,
    back: AtomicUsize,
    /// 0 until the coordinator names it.
    newest: AtomicU64,
    reconnects_ms: Mutex<Vec<u64>>,
    goaways_ms: Mutex<Vec<u64>>,
    back_ms: Mutex<Vec<u64>>,
}

fn push(list: &Mutex<Vec<u64>>, value: u64) {
    list.locked().push(value);
}

fn take(list: &Mutex<Vec<u64>>) -> Vec<u64> {
    std::mem::take(&mut *list.locked())
}

fn emit(line: &WorkerLine) {
    if let Ok(text) = serde_json::to_string(line) {
        println!("{text}");
    }
}

/// A worker process: its share of the fleet, until the coordinator says `finish`.
pub fn run_worker(plan: &str) -> anyhow::Result<()> {
    let plan: DrainWorkerPlan = serde_json::from_str(plan)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(worker(plan))?;
    std::process::exit(0);
}

async fn worker(plan: DrainWorkerPlan) -> anyhow::Result<()> {
    let shared = Arc::new(Shared::default());
    let key = DeviceTokenKey::new(plan.device_token_secret.as_bytes())?;
    let exp = unix_now_ms() / 1000 + 86_400;
    let topic = Topic::parse(&plan.topic)?;
    let progress = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            emit(&WorkerLine::Progress {
                connected: progress.connected.load(Ordering::Relaxed),
                failed: progress.failed.load(Ordering::Relaxed),
                goaways: progress.goaways.load(Ordering::Relaxed),
                back: progress.back.load(Ordering::Relaxed),
            });
        }
    });
    let commands = shared.clone();
    let finished = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str(&line) {
                Ok(WorkerCommand::Newest { version }) => {
                    commands.newest.store(version, Ordering::Release);
                }
                Ok(WorkerCommand::Finish) => return,
                Err(_) => {}
            }
        }
    });
    let mean_gap = Duration::from_secs_f64(1.0 / plan.connect_rate.max(1.0));
    let mut next_arrival = tokio::time::Instant::now();
    for index in 0..plan.devices {
        let token = key.sign(&DeviceClaims {
            sub: format!("drain-{}-{index}", plan.worker),
            profile: format!("p-{}-{index}", plan.worker),
            class: DeviceClass::Tv,
            exp,
            nbf: None,
            priority: None,
        });
        let options = ConnectOptions {
            bind: plan
                .source_addresses
                .get(index % plan.source_addresses.len().max(1))
                .copied(),
            read_buffer_bytes: Some(1024),
            connect_timeout: Some(Duration::from_secs(20)),
            ..ConnectOptions::default()
        };
        let (endpoints, topic, shared) = (plan.endpoints.clone(), topic.clone(), shared.clone());
        tokio::spawn(device(endpoints, token, options, topic, shared));
        next_arrival += mean_gap.mul_f64(-fastrand::f64().max(1e-9).ln());
        tokio::time::sleep_until(next_arrival).await;
    }
    finished.await?;
    emit(&WorkerLine::Done {
        reconnects_ms: take(&shared.reconnects_ms),
        goaways_ms: take(&shared.goaways_ms),
        back_ms: take(&shared.back_ms),
    });
    Ok(())
}

/// Counts the device back once it has moved and holds the newest version.
fn mark_back(shared: &Shared, moved: bool, version: u64, back: &mut bool) {
    let newest = shared.newest.load(Ordering::Acquire);
    if moved && !*back && newest > 0 && version >= newest {
        *back = true;
        push(&shared.back_ms, unix_now_ms());
        shared.back.fetch_add(1, Ordering::Relaxed);
    }
}

/// One device: on the drained node until its goaway, then (after the delay it asks for) on
/// the spare; full-jitter backoff after a refusal or a lost connection.
async fn device(
    endpoints: Vec<String>,
    token: String,
    options: ConnectOptions,
    topic: Topic,
    shared: Arc<Shared>,
) {
    let mut endpoint = 0;
    // Versions are per node (independent nodes number them apart).
    let mut versions = vec![0; endpoints.len()];
    let mut moved = false;
    let mut counted = false;
    let mut back = false;
    let mut failures: u32 = 0;
    loop {
        let on = endpoint % endpoints.len();
        let url = &endpoints[on];
        let mut connection = match DeviceConnection::connect_with(url, &token, &options).await {
            Ok(connection) => connection,
            Err(_) if !counted => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                failures += 1;
                let ceiling_ms = (100u64 << failures.min(6)).min(5_000);
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ceiling_ms))).await;
                endpoint += 1;
                continue;
            }
        };
        failures = 0;
        if moved {
            push(&shared.reconnects_ms, unix_now_ms());
        }
        if connection
            .subscribe(&[(topic.clone(), versions[on])])
            .await
            .is_err()
        {
            endpoint += 1;
            continue;
        }
        loop {
            match connection.next_frame().await {
                Ok(ServerFrame::Subscribed { .. }) => {
                    if !std::mem::replace(&mut counted, true) {
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    mark_back(&shared, moved && on == 1, versions[on], &mut back);
                }
                Ok(ServerFrame::State(state)) => {
                    versions[on] = versions[on].max(state.version);
                    mark_back(&shared, moved && on == 1, versions[on], &mut back);
                }
                Ok(ServerFrame::Goaway {
                    reconnect_after_ms, ..
                }) => {
                    if !moved {
                        push(&shared.goaways_ms, unix_now_ms());
                        shared.goaways.fetch_add(1, Ordering::Relaxed);
                    }
                    moved = true;
                    drop(connection);
                    tokio::time::sleep(Duration::from_millis(reconnect_after_ms)).await;
                    endpoint += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    moved = true;
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=200))).await;
                    endpoint += 1;
                    break;
                }
            }
        }
    }
}
