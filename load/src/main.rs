//! `ringside-load`: measure a Ringside deployment with a simulated device fleet.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod drain;
use load::coordinator::{FanoutPlan, FanoutTarget, run_fanout};
use load::http_bench::HttpTarget;
use load::wire::WorkerPlan;
use ringside_protocol::EventId;

#[derive(Parser)]
#[command(
    name = "ringside-load",
    version,
    about = "Simulated device fleet for Ringside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect N devices, publish K updates, report delivery and latency per update.
    Fanout(FanoutArgs),
    /// Prefetch requests/s and latency on a cache hit and a miss, beside a trivial handler.
    PrefetchBench(PrefetchBenchArgs),
    /// Page-store read rate while a fleet keeps its prefetch fresh (peak over mean).
    Origin(OriginArgs),
    /// Prefetch over a window, then LIVE: devices that switch from cache vs fetch, the fetch wave.
    Kickoff(KickoffArgs),
    /// Mixed-priority HTTP/GraphQL traffic above capacity, open loop: success, p99, shed and
    /// goodput per class.
    Overload(OverloadArgs),
    /// Closed-loop prefetch misses for a few seconds: the node's capacity, to size `overload`.
    Capacity(CapacityArgs),
    /// Print `overload` results side by side (per class: every run), from their JSON files.
    OverloadTable {
        /// Also write every run into this one JSON file.
        #[arg(long)]
        output: Option<PathBuf>,
        inputs: Vec<PathBuf>,
    },
    /// Write an HTML report with plots from result files (opens from disk, no network).
    Report {
        /// Where to write the HTML.
        #[arg(long, default_value = "load-results/report.html")]
        out: PathBuf,
        /// JSON result files written with --output.
        inputs: Vec<PathBuf>,
    },
    /// Serve the GRIP origin Pushpin forwards device sessions to (for `--target pushpin`):
    /// a WebSocket opened at `/<channel>` is subscribed to that channel.
    GripOrigin {
        #[arg(long, default_value = "127.0.0.1:7991")]
        listen: String,
    },
    /// Internal: one worker process of a run.
    #[command(hide = true)]
    Worker { plan: String },
    /// Drain a node holding N devices through the admin API while a spare takes them: peak
    /// reconnect rate and time until every device is back at the newest version.
    Drain(drain::DrainArgs),
    /// Internal: one worker process of a drain run.
    #[command(hide = true)]
    DrainWorker { plan: String },
    /// Write a private CA (`ca.pem`) and a certificate for 127.0.0.1 and localhost signed by it
    /// (`cert.pem`, `key.pem`) into DIR: TLS benchmarks on loopback.
    TlsCert {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TargetKind {
    Ringside,
    Nats,
    Pushpin,
}

#[derive(clap::Args)]
struct FanoutArgs {
    /// The system under test.
    #[arg(long, value_enum, default_value = "ringside")]
    target: TargetKind,
    /// The Ringside node whose admin API takes the publishes (and whose devices connect,
    /// without --nodes).
    #[arg(long, env = "RINGSIDE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Nodes to spread devices over (comma-separated); one worker per node at least.
    /// Ringside: base URLs (default --server). NATS: WebSocket listeners (default
    /// ws://127.0.0.1:4280). Pushpin: WebSocket ports (default ws://127.0.0.1:7990).
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Where publishes go (comma-separated). Ringside: every one of these admin APIs at once,
    /// for independent nodes with embedded buses (default --server). NATS: the first TCP
    /// listener (default 127.0.0.1:4281). Pushpin: every publish endpoint at once (default
    /// http://127.0.0.1:5591).
    #[arg(long, value_delimiter = ',')]
    publish_to: Vec<String>,
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
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Worker processes (raised so none holds more than 15,000 connections).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 5)]
    publishes: usize,
    #[arg(long, default_value_t = 1000)]
    publish_interval_ms: u64,
    #[arg(long, default_value = "load-fanout")]
    event: EventId,
    /// Size of the filler in each payload.
    #[arg(long, default_value_t = 100)]
    payload_bytes: usize,
    /// PIDs of the gateway processes whose RSS to report (comma-separated; the storm takes
    /// down the first).
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    #[arg(long, default_value_t = 8)]
    source_addresses: usize,
    /// Fleet-wide new connections per second.
    #[arg(long, default_value_t = 5000.0)]
    connect_rate: f64,
    #[arg(long, default_value_t = 1024)]
    read_buffer_bytes: usize,
    /// Ringside devices ack every state (the broadcast report's input), so the ack path is
    /// measured with the fan-out.
    #[arg(long)]
    ack: bool,
    #[arg(long, default_value_t = 30)]
    delivery_timeout_s: u64,
    /// Write the JSON result here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Storm: after the publishes, take the node down (`drain`: SIGTERM, `kill`: SIGKILL) and
    /// run --restart-command, then publish once more and measure the reconnects.
    #[arg(long, value_enum)]
    storm: Option<StormArg>,
    /// Shell command that starts the node again (with --storm).
    #[arg(long, default_value = "")]
    restart_command: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StormArg {
    Drain,
    Kill,
}

#[derive(clap::Args)]
struct Fleet {
    #[arg(long, env = "RINGSIDE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long, env = "RINGSIDE_DEVICE_TOKEN_SECRET", hide_env_values = true)]
    device_token_secret: String,
    /// Profiles of the catalog (ids p000000 …) to spread requests over.
    #[arg(long, default_value_t = 200_000)]
    profiles: usize,
    #[arg(long)]
    output: Option<PathBuf>,
}

impl Fleet {
    fn tokens(&self, count: usize) -> anyhow::Result<Vec<String>> {
        let key = ringside_auth::DeviceTokenKey::new(self.device_token_secret.as_bytes())?;
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 86_400;
        Ok((0..count)
            .map(|i| {
                key.sign(&ringside_auth::DeviceClaims {
                    sub: format!("bench-{i}"),
                    profile: format!("p{:06}", i % self.profiles.max(1)),
                    class: ringside_auth::DeviceClass::Tv,
                    exp,
                    nbf: None,
                    priority: None,
                })
            })
            .collect())
    }

    fn write(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        if let Some(path) = &self.output {
            std::fs::write(path, serde_json::to_vec_pretty(value)?)?;
            println!("JSON result: {}", path.display());
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct PrefetchBenchArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    #[arg(long, default_value = "fight-night")]
    event: String,
    /// Sent as `Accept-Encoding` by every prefetch request (`gzip`, `br`); unset: identity.
    #[arg(long)]
    accept_encoding: Option<String>,
}

#[derive(clap::Args)]
struct OriginArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[arg(long, default_value_t = 500)]
    devices: usize,
    #[arg(long, default_value_t = 12)]
    duration_s: u64,
    #[arg(long, default_value_t = 250)]
    interval_ms: u64,
    #[arg(long, default_value_t = 100)]
    bucket_ms: u64,
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    #[arg(long, default_value = "fight-night")]
    event: String,
}

#[derive(clap::Args)]
struct OverloadArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    #[arg(long, default_value = "fight-night")]
    event: String,
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// critical: operator publishes per second (admin API).
    #[arg(long, default_value_t = 20.0)]
    publish_rate: f64,
    /// degraded: device live-path GraphQL queries per second (the event's version).
    #[arg(long, default_value_t = 500.0)]
    live_rate: f64,
    /// The node's capacity in prefetch queries per second (see `capacity`); with
    /// --load-multiple it sizes the best_effort and bulk classes.
    #[arg(long)]
    capacity_per_s: Option<f64>,
    /// Offered prefetch load as a multiple of --capacity-per-s: 30 % best_effort, 70 % bulk
    /// (0: neither, the unloaded baseline of the other classes).
    #[arg(long)]
    load_multiple: Option<f64>,
    /// best_effort: background prefetch queries per second, each for another profile
    /// [default: 0.3 × multiple × capacity, else 2400].
    #[arg(long)]
    background_rate: Option<f64>,
    /// bulk: bulk prefetch queries per second, each for another profile
    /// [default: 0.7 × multiple × capacity, else 5600].
    #[arg(long)]
    bulk_rate: Option<f64>,
    /// Connections the critical class sends over (each waits for its answer before the next).
    #[arg(long, default_value_t = 4)]
    publish_connections: usize,
    /// Connections the degraded class sends over: real devices send their live-path queries
    /// over connections of their own, so too few here queue them in the load tool.
    #[arg(long, default_value_t = 32)]
    live_connections: usize,
    /// Connections the best_effort class sends over.
    #[arg(long, default_value_t = 256)]
    background_connections: usize,
    /// Connections the bulk class sends over: its concurrency against the node, like that many
    /// devices fetching at once.
    #[arg(long, default_value_t = 1024)]
    bulk_connections: usize,
    /// Names the run in the report (e.g. "3x, protection on").
    #[arg(long, default_value = "")]
    label: String,
    /// Recorded in the report: how the node was started (`on` or `off`).
    #[arg(long)]
    protection: Option<String>,
    /// Start the schedules at this Unix time (ms), so that several processes offering the
    /// classes of one run start together [default: 200 ms from now].
    #[arg(long)]
    start_at_unix_ms: Option<u64>,
}

/// Share of the offered prefetch load that is background (best_effort); the rest is bulk.
const BACKGROUND_SHARE: f64 = 0.3;

async fn overload(args: OverloadArgs) -> anyhow::Result<()> {
    use ringside_protocol::Priority;
    load::system::require_loopback(&args.fleet.server)?;
    let graphql = |query: String| {
        Some(bytes::Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "query": query })).unwrap_or_default(),
        ))
    };
    let publish = serde_json::to_vec(&serde_json::json!({
        "stage": "LIVE", "payload": { "from": "ringside-load overload" }
    }))?;
    let sized = |share: f64| match (args.capacity_per_s, args.load_multiple) {
        (Some(capacity), Some(multiple)) => Some(capacity * multiple * share),
        _ => None,
    };
    let background_rate = args
        .background_rate
        .or(sized(BACKGROUND_SHARE))
        .unwrap_or(2400.0);
    let bulk_rate = args
        .bulk_rate
        .or(sized(1.0 - BACKGROUND_SHARE))
        .unwrap_or(5600.0);
    let class = |name: &str, priority, method, path: String, body, tokens, rate, connections| {
        load::overload::OverloadClass {
            target: HttpTarget {
                name: name.into(),
                method,
                path,
                body,
                tokens,
                priority: Some(priority),
                accept_encoding: None,
            },
            rate_per_second: rate,
            connections,
        }
    };
    let event = &args.event;
    let classes = vec![
        class(
            "critical: operator publish",
            Priority::Critical,
            "POST",
            format!("/v1/admin/events/{event}/publish"),
            Some(publish.into()),
            vec![args.admin_token.clone()].into(),
            args.publish_rate,
            args.publish_connections,
        ),
        class(
            "degraded: live-path query",
            Priority::Degraded,
            "POST",
            "/graphql".into(),
            graphql(format!(
                r#"{{ event(id: "{event}") {{ builtForVersion }} }}"#
            )),
            args.fleet.tokens(1000)?.into(),
            args.live_rate,
            args.live_connections,
        ),
        class(
            "best_effort: background prefetch",
            Priority::BestEffort,
            "POST",
            "/graphql".into(),
            graphql(event_query(event)),
            // Starting half way round the profiles, so that it misses where bulk missed.
            {
                let mut tokens = args.fleet.tokens(args.fleet.profiles)?;
                let half = tokens.len() / 2;
                tokens.rotate_left(half);
                tokens.into()
            },
            background_rate,
            args.background_connections,
        ),
        class(
            "bulk: bulk prefetch (misses)",
            Priority::Bulk,
            "POST",
            "/graphql".into(),
            graphql(event_query(event)),
            args.fleet.tokens(args.fleet.profiles)?.into(),
            bulk_rate,
            args.bulk_connections,
        ),
    ];
    // A class offered nothing is left out rather than sent one request.
    let classes = classes
        .into_iter()
        .filter(|class| class.rate_per_second > 0.0)
        .collect();
    let report = load::overload::run_overload(load::overload::OverloadPlan {
        server: args.fleet.server.clone(),
        classes,
        duration: Duration::from_secs(args.duration_s),
        label: args.label.clone(),
        load_multiple: args.load_multiple,
        protection: args.protection.clone(),
        start_at_unix_ms: args.start_at_unix_ms,
    })
    .await?;
    report.print_table();
    args.fleet.write(&report)
}

#[derive(clap::Args)]
struct CapacityArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[arg(long, default_value = "fight-night")]
    event: String,
    /// Closed-loop connections: enough to keep every core of the node busy.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    duration_s: u64,
}

/// A short closed-loop run of the prefetch query on node-cache misses: the node's capacity,
/// which `overload --capacity-per-s` sizes its load from. The last line of the output is
/// `capacity_per_s=<n>` for scripts.
async fn capacity(args: CapacityArgs) -> anyhow::Result<()> {
    load::system::require_loopback(&args.fleet.server)?;
    let body = bytes::Bytes::from(serde_json::to_vec(
        &serde_json::json!({ "query": event_query(&args.event) }),
    )?);
    let target = HttpTarget {
        name: "prefetch, node-cache miss (closed loop)".into(),
        method: "POST",
        path: "/graphql".into(),
        body: Some(body),
        tokens: args.fleet.tokens(args.fleet.profiles)?.into(),
        priority: None,
        accept_encoding: None,
    };
    let result = load::http_bench::measure(
        &args.fleet.server,
        &target,
        args.connections,
        Duration::from_secs(args.duration_s),
    )
    .await?;
    println!(
        "{}: {:.0} req/s over {} connections (p50 {:.2} ms, p99 {:.2} ms, errors {})",
        result.name,
        result.requests_per_second,
        args.connections,
        result.latency.p50_ms,
        result.latency.p99_ms,
        result.errors
    );
    args.fleet.write(&result)?;
    println!("capacity_per_s={:.0}", result.requests_per_second);
    Ok(())
}

#[derive(clap::Args)]
struct KickoffArgs {
    #[command(flatten)]
    fleet: Fleet,
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    #[arg(long, default_value = "fight-night")]
    event: ringside_protocol::EventId,
    #[arg(long, default_value_t = 10)]
    prefetch_window_s: u64,
    /// Share of devices that prefetch before the moment.
    #[arg(long, default_value_t = 0.9)]
    prefetch_share: f64,
    /// The operator's `fetch_within_ms` on the LIVE publish. Without it the state carries the
    /// control plane's default (none when the node runs with `--fetch-window-max-ms 0`).
    /// Devices without the content fetch at a random moment of the window the state carries,
    /// at once when it carries none.
    #[arg(long)]
    fetch_within_ms: Option<u64>,
    /// Peak over mean of the follow-up wave is taken over this long after the publish; give
    /// runs to compare the same horizon.
    #[arg(long, default_value_t = 3000)]
    wave_horizon_ms: u64,
}

async fn kickoff(args: KickoffArgs) -> anyhow::Result<()> {
    load::system::require_loopback(&args.fleet.server)?;
    let result = load::kickoff::run_kickoff(load::kickoff::KickoffPlan {
        server: args.fleet.server.clone(),
        admin_token: args.admin_token.clone(),
        tokens: args.fleet.tokens(args.devices)?,
        event: args.event.clone(),
        prefetch_window: Duration::from_secs(args.prefetch_window_s),
        prefetch_share: args.prefetch_share,
        fetch_within_ms: args.fetch_within_ms,
        bucket: Duration::from_millis(100),
        wave_horizon: Duration::from_millis(args.wave_horizon_ms),
    })
    .await?;
    println!(
        "kickoff: {} devices, {} prefetched ({} errors); LIVE reached {} (p99 {:.1} ms, fetch_within_ms {}); {} switched from cache, {} had to fetch ({} errors), fetch wave peak {:.0}/s, peak/mean {:.2} (origin reads peak/mean {:.2}); every device showing LIVE content {:.0} ms after the publish",
        result.devices,
        result.prefetched,
        result.prefetch_errors,
        result.state_delivered,
        result.state_latency.p99_ms,
        result
            .fetch_within_ms
            .map_or_else(|| "none".to_owned(), |w| w.to_string()),
        result.switched_from_cache,
        result.had_to_fetch,
        result.fetch_errors,
        result.peak_fetches_per_second,
        result.fetch_peak_over_mean,
        result.origin_peak_over_mean,
        result.all_switched_after_ms
    );
    args.fleet.write(&result)
}

/// The prefetch query the benchmarks send: one event's rows for every stage.
/// A device's full prefetch: every upcoming event, every stage's billboard and rows with card
/// ids, titles and one artwork URL each, and the event pages (the query of the prefetch tests).
const FULL_PREFETCH: &str = "{ prefetch { profileId cacheHint { ttlSeconds events { eventId version } } \
    events { id topic title stages builtForVersion state { topic version stage publishedAtMs payload } \
    byStage { stage home { billboard { id title artwork(sizes: [BILLBOARD]) { size url width height } } \
    rows { id kind title cards { id title genres maturity runtimeMinutes artwork(sizes: [POSTER_SMALL]) { url } } } } \
    eventPage { hero { id } rows { kind cards { id } } } } } } }";

fn event_query(event: &str) -> String {
    format!(
        r#"{{ event(id: "{event}") {{ builtForVersion byStage {{ stage home {{ billboard {{ id }} rows {{ id title cards {{ id title artwork(sizes: [POSTER_SMALL]) {{ url }} }} }} }} }} }} }}"#
    )
}

async fn prefetch_bench(args: PrefetchBenchArgs) -> anyhow::Result<()> {
    load::system::require_loopback(&args.fleet.server)?;
    let body = |query: &str| -> anyhow::Result<bytes::Bytes> {
        Ok(serde_json::to_vec(&serde_json::json!({ "query": query }))?.into())
    };
    let (one_event, full) = (body(&event_query(&args.event))?, body(FULL_PREFETCH)?);
    let hit_token: std::sync::Arc<[String]> = args.fleet.tokens(1)?.into();
    let miss_tokens: std::sync::Arc<[String]> = args.fleet.tokens(args.fleet.profiles)?.into();
    let prefetch =
        |name: &str, body: &bytes::Bytes, tokens: &std::sync::Arc<[String]>| HttpTarget {
            name: name.into(),
            method: "POST",
            path: "/graphql".into(),
            body: Some(body.clone()),
            tokens: tokens.clone(),
            priority: None,
            accept_encoding: args.accept_encoding.clone(),
        };
    let targets = [
        HttpTarget {
            name: "trivial handler (GET /healthz)".into(),
            method: "GET",
            path: "/healthz".into(),
            body: None,
            tokens: Vec::new().into(),
            priority: None,
            accept_encoding: None,
        },
        prefetch("one event, hit (one profile)", &one_event, &hit_token),
        prefetch("one event, miss (a new profile)", &one_event, &miss_tokens),
        prefetch("full prefetch, hit (one profile)", &full, &hit_token),
        prefetch("full prefetch, miss (a new profile)", &full, &miss_tokens),
    ];
    let duration = Duration::from_secs(args.duration_s);
    let load_before = load::system::load_average();
    let mut results = Vec::new();
    for target in &targets {
        let result =
            load::http_bench::measure(&args.fleet.server, target, args.connections, duration)
                .await?;
        println!(
            "{:<36} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {:>7} B/answer  errors {}",
            result.name,
            result.requests_per_second,
            result.latency.p50_ms,
            result.latency.p99_ms,
            result.body_bytes,
            result.errors
        );
        results.push(result);
    }
    let trivial = results[0].requests_per_second.max(1.0);
    for result in &results[1..] {
        println!(
            "{}: {:.2} of the trivial handler's throughput",
            result.name,
            result.requests_per_second / trivial
        );
    }
    println!(
        "load average (1 min): {:.2} before, {:.2} after",
        load_before.unwrap_or(0.0),
        load::system::load_average().unwrap_or(0.0)
    );
    args.fleet.write(&results)
}

async fn origin(args: OriginArgs) -> anyhow::Result<()> {
    load::system::require_loopback(&args.fleet.server)?;
    let plan = load::origin::OriginPlan {
        base: args.fleet.server.clone(),
        tokens: args.fleet.tokens(args.devices)?,
        query: event_query(&args.event),
        duration: Duration::from_secs(args.duration_s),
        mean_interval: Duration::from_millis(args.interval_ms),
        bucket: Duration::from_millis(args.bucket_ms),
        warmup: Duration::from_millis(args.warmup_ms),
    };
    let result = load::origin::run_origin(plan).await?;
    println!(
        "origin reads: {} devices, {} requests ({} errors); per {} ms bucket: mean {:.1}, peak {}, peak/mean {:.2}",
        result.devices,
        result.requests,
        result.errors,
        result.bucket_ms,
        result.mean_reads_per_bucket,
        result.peak_reads_per_bucket,
        result.peak_over_mean
    );
    args.fleet.write(&result)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Kickoff(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(kickoff(args)),
        Command::Report { out, inputs } => {
            let mut results = Vec::new();
            for input in inputs {
                let text = std::fs::read_to_string(&input)?;
                let name = input
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                results.push((name, serde_json::from_str(&text)?));
            }
            std::fs::write(&out, load::html::render(&results))?;
            println!("report: {}", out.display());
            Ok(())
        }
        Command::GripOrigin { listen } => {
            if !load::system::is_loopback_url(&format!("tcp://{listen}")) {
                anyhow::bail!("the GRIP origin only listens on loopback addresses");
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let listener = tokio::net::TcpListener::bind(&listen).await?;
                    println!("GRIP origin on {}", listener.local_addr()?);
                    load::peers::serve_grip_origin(listener).await
                })
        }
        Command::Worker { plan } => {
            let plan: WorkerPlan = serde_json::from_str(&plan)?;
            // One thread per worker: the fleet spreads over processes, not threads.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(load::fleet::run_worker(plan))?;
            std::process::exit(0);
        }
        Command::Drain(args) => drain::run(args),
        Command::DrainWorker { plan } => drain::run_worker(&plan),
        Command::PrefetchBench(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(prefetch_bench(args)),
        Command::Overload(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(overload(args)),
        Command::TlsCert { dir } => write_tls_cert(&dir),
        Command::Capacity(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(capacity(args)),
        Command::OverloadTable { output, inputs } => {
            let mut reports = Vec::new();
            for input in inputs {
                let text = std::fs::read_to_string(&input)?;
                let report: load::overload::OverloadReport = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
                reports.push(report);
            }
            let reports = load::overload::OverloadReport::merge_runs(reports);
            load::overload::print_comparison(&reports);
            if let Some(path) = output {
                std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
                println!("JSON result: {}", path.display());
            }
            Ok(())
        }
        Command::Origin(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(origin(args)),
        Command::Fanout(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let or = |given: &[String], default: &str| -> Vec<String> {
                if given.is_empty() {
                    vec![default.to_owned()]
                } else {
                    given.to_vec()
                }
            };
            let (nodes, publish_to) = (&args.nodes, &args.publish_to);
            let target = match args.target {
                TargetKind::Ringside => FanoutTarget::Ringside {
                    nodes: or(nodes, &args.server),
                    publish_to: or(publish_to, &args.server),
                    device_token_secret: args.device_token_secret.clone(),
                    admin_token: args.admin_token.clone(),
                },
                TargetKind::Nats => FanoutTarget::Nats {
                    ws_urls: or(nodes, "ws://127.0.0.1:4280"),
                    address: or(publish_to, "127.0.0.1:4281").swap_remove(0),
                },
                TargetKind::Pushpin => FanoutTarget::Pushpin {
                    ws_urls: or(nodes, "ws://127.0.0.1:7990"),
                    publish_urls: or(publish_to, "http://127.0.0.1:5591"),
                },
            };
            let storm = args.storm.map(|signal| load::coordinator::StormPlan {
                signal: match signal {
                    StormArg::Drain => load::coordinator::StormSignal::Drain,
                    StormArg::Kill => load::coordinator::StormSignal::Kill,
                },
                restart_command: args.restart_command.clone(),
                health_url: args.server.clone(),
            });
            let report = runtime.block_on(run_fanout(FanoutPlan {
                storm,
                target,
                connections: args.connections,
                workers: args.workers,
                publishes: args.publishes,
                publish_interval: Duration::from_millis(args.publish_interval_ms),
                event: args.event,
                payload_bytes: args.payload_bytes,
                gateway_pids: args.gateway_pid,
                source_addresses: args.source_addresses,
                connect_rate: args.connect_rate,
                read_buffer_bytes: args.read_buffer_bytes,
                ack: args.ack,
                delivery_timeout: Duration::from_secs(args.delivery_timeout_s),
            }))?;
            report.print_table();
            if let Some(path) = args.output {
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
                println!("JSON result: {}", path.display());
            }
            Ok(())
        }
    }
}

/// A CA and a loopback certificate it signs, as PEM files in `dir`.
fn write_tls_cert(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    println!("{}", dir.display());
    Ok(())
}
