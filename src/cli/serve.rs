//! `ringside serve`, `gateway` and `control`: the roles' flags, their translation into a
//! `ServeConfig`, the banner and the signal that starts the drain.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ringside::content::StoreSetup;
use ringside::http::HttpConfig;
use ringside::origin::OriginPolicy;
use ringside::secrets::{self, SecretSource};
use ringside::server::{BusSetup, Role};
use ringside::tls::TlsFiles;
use ringside::{ServeConfig, serve};
use ringside_gateway::GatewayConfig;
use tokio_util::sync::CancellationToken;

use ringside_protection::ProtectionConfig;

use super::args::{
    FetchWindowArgs, KafkaArgs, PrefetchArgs, ProtectionArgs, RedisArgs, SecretArgs,
};

/// What every role takes: where it listens, its HTTP bounds, secrets, the bus, Redis and
/// protection, and the node's identity and drain deadline.
#[derive(Args)]
pub(crate) struct NodeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "RINGSIDE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Refuse to start without configured secrets.
    #[arg(long, env = "RINGSIDE_PRODUCTION")]
    production: bool,
    /// Allow development secrets on a non-loopback listen address.
    #[arg(long, env = "RINGSIDE_DEV")]
    dev: bool,
    /// This node's id (default: host name and a random suffix).
    #[arg(long, env = "RINGSIDE_NODE_ID")]
    node_id: Option<String>,
    #[arg(
        long,
        env = "RINGSIDE_SHUTDOWN_GRACE_MS",
        help = "Drain deadline: holds the drain window, the goaway grace and a 2 s close [default: 70000]"
    )]
    shutdown_grace_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_TOKEN_CLOCK_SKEW_S",
        help = "Device tokens are accepted this long past exp and before nbf [default: 60]"
    )]
    token_clock_skew_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_TOKEN_MAX_LIFETIME_S",
        help = "Device tokens whose exp lies further ahead are refused [default: 2592000]"
    )]
    token_max_lifetime_s: Option<u64>,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    protection: ProtectionArgs,
}

/// Bounds of the HTTP server every role runs.
#[derive(Args)]
#[command(next_help_heading = "HTTP")]
struct HttpArgs {
    #[arg(
        long,
        env = "RINGSIDE_MAX_PENDING_CONNECTIONS",
        help = "HTTP connections not yet upgraded, at once [default: 4096]"
    )]
    max_pending_connections: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_HEADER_READ_TIMEOUT_MS",
        help = "Time a client has to send request headers [default: 10000]"
    )]
    header_read_timeout_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_BODY_READ_TIMEOUT_MS",
        help = "Time a client has to send a whole request body, after its headers; 408 beyond [default: 10000]"
    )]
    body_read_timeout_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_REQUEST_HEAD_BYTES",
        help = "Largest request line and headers; 431 beyond [default: 65536]"
    )]
    max_request_head_bytes: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_COMPRESSION_MIN_BYTES",
        help = "Smallest response body compressed (gzip, brotli), 0 for never [default: 1024]"
    )]
    compression_min_bytes: Option<u16>,
    /// A web app's origin (`https://tv.example.com`) whose pages may open /v1/ws and call
    /// /graphql (CORS); repeat the flag, or separate them with commas in the environment
    /// variable. None: only the node's own pages.
    #[arg(
        long = "web-origin",
        visible_alias = "cors-origin",
        env = "RINGSIDE_WEB_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    web_origins: Vec<String>,
    /// An ops console's origin, when it is not served by the node itself (a proxy that
    /// rewrites Host): its pages may use /v1/admin and /console. Repeatable, or comma-separated.
    #[arg(
        long = "console-origin",
        env = "RINGSIDE_CONSOLE_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    console_origins: Vec<String>,
    /// Serve TLS (https://, wss://) with this PEM certificate chain, leaf first; reloaded on
    /// SIGHUP. Needs --tls-key.
    #[arg(long, env = "RINGSIDE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "RINGSIDE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
}

impl HttpArgs {
    fn config(&self, protection: ProtectionConfig) -> HttpConfig {
        let defaults = HttpConfig::default();
        HttpConfig {
            max_pending_connections: self
                .max_pending_connections
                .unwrap_or(defaults.max_pending_connections),
            header_read_timeout: self
                .header_read_timeout_ms
                .map_or(defaults.header_read_timeout, Duration::from_millis),
            body_read_timeout: self
                .body_read_timeout_ms
                .map_or(defaults.body_read_timeout, Duration::from_millis),
            max_request_head_bytes: self
                .max_request_head_bytes
                .unwrap_or(defaults.max_request_head_bytes),
            compression_min_bytes: self
                .compression_min_bytes
                .unwrap_or(defaults.compression_min_bytes),
            protection,
            origins: OriginPolicy {
                web: listed(&self.web_origins),
                console: listed(&self.console_origins),
            },
            tls: None,
        }
    }

    /// The TLS files: both or neither.
    fn tls(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            _ => {
                bail!("--tls-cert and --tls-key go together (RINGSIDE_TLS_CERT, RINGSIDE_TLS_KEY)")
            }
        }
    }
}

/// The non-empty entries of an origin list, trimmed.
fn listed(origins: &[String]) -> Vec<String> {
    origins
        .iter()
        .map(|origin| origin.trim().to_owned())
        .filter(|origin| !origin.is_empty())
        .collect()
}

/// The device sessions of a gateway node (`serve` and `gateway`).
#[derive(Args)]
#[command(next_help_heading = "Gateway")]
pub(crate) struct GatewayArgs {
    #[arg(
        long,
        env = "RINGSIDE_HEARTBEAT_MS",
        help = "Ping interval [default: 25000]"
    )]
    heartbeat_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_HEARTBEAT_MISSES",
        help = "Silent heartbeats before a close [default: 3]"
    )]
    heartbeat_misses: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_SUBSCRIBE_TIMEOUT_MS",
        help = "Close connections without a topic after [default: 10000]"
    )]
    subscribe_timeout_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_TOPICS_PER_CONNECTION",
        help = "[default: 16]"
    )]
    max_topics_per_connection: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_FRAME_BYTES",
        help = "Largest client frame [default: 16384]"
    )]
    max_frame_bytes: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_SEND_TIMEOUT_MS",
        help = "Slow-consumer cut-off, below the shutdown grace [default: 10000]"
    )]
    send_timeout_ms: Option<u64>,
    #[arg(long, env = "RINGSIDE_MAX_CONNECTIONS", help = "[default: 250000]")]
    max_connections: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_RECONNECT_SPREAD_MS",
        help = "Goaway reconnect spread [default: 5000]"
    )]
    reconnect_spread_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_READ_BUFFER_BYTES",
        help = "Per-connection read buffer [default: 512]"
    )]
    read_buffer_bytes: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_UNPUBLISHED_TOPICS",
        help = "Topics without a state this node's connections may hold [default: 16384]"
    )]
    max_unpublished_topics: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_BROADCASTS_PER_TOPIC",
        help = "Stage versions per topic whose delivery records this node keeps for the broadcast report [default: 20]"
    )]
    broadcasts_per_topic: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_CONCURRENT_FANOUTS",
        help = "Topics fanning out at once [default: 8]"
    )]
    max_concurrent_fanouts: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_WAITING_TOPICS",
        help = "Topics whose newest state waits for its fan-out [default: 4096]"
    )]
    max_waiting_topics: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_INBOUND_FRAMES_PER_S",
        help = "Client frames a connection may send per second, pings included [default: 50]"
    )]
    inbound_frames_per_s: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_INBOUND_FRAME_BURST",
        help = "Client frames a connection may send at once above that rate [default: 200]"
    )]
    inbound_frame_burst: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_CONNECTIONS_PER_DEVICE",
        help = "Live connections one device id may hold on this node [default: 8]"
    )]
    max_connections_per_device: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_SEND_BUFFER_BYTES",
        help = "SO_SNDBUF of device sockets, 0 for kernel autotuning [default: 16384]"
    )]
    send_buffer_bytes: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_INBOUND_BYTES_PER_S",
        help = "Bytes per second read from one connection; beyond it reading pauses [default: 16384]"
    )]
    inbound_bytes_per_s: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_INBOUND_BYTE_BURST",
        help = "Bytes a connection may send at once above that rate [default: 65536]"
    )]
    inbound_byte_burst: Option<u32>,
    #[command(flatten)]
    gateway_protection: GatewayProtectionArgs,
}

/// The admin API and prefetch GraphQL of a control plane (`serve` and `control`).
#[derive(Args)]
pub(crate) struct ControlArgs {
    #[command(flatten)]
    prefetch: PrefetchArgs,
    #[command(flatten)]
    fetch_window: FetchWindowArgs,
    #[command(flatten)]
    admin_stream: AdminStreamArgs,
}

/// Bounds of `GET /v1/admin/stream`.
#[derive(Args)]
#[command(next_help_heading = "Admin event stream")]
struct AdminStreamArgs {
    #[arg(
        long,
        env = "RINGSIDE_ADMIN_STREAMS_MAX",
        help = "Admin event streams (GET /v1/admin/stream) open at once on this instance [default: 32]"
    )]
    admin_streams_max: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_ADMIN_STREAM_CHECK_MS",
        help = "How often an admin event stream checks for changes [default: 500]"
    )]
    admin_stream_check_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_ADMIN_STREAM_MAX_LIFETIME_S",
        help = "How long an admin event stream lives before it ends (±10 %); the console reconnects [default: 1800]"
    )]
    admin_stream_max_lifetime_s: Option<u64>,
}

impl AdminStreamArgs {
    fn config(&self) -> ringside_control::StreamConfig {
        let defaults = ringside_control::StreamConfig::default();
        ringside_control::StreamConfig {
            max_streams: self.admin_streams_max.unwrap_or(defaults.max_streams),
            check_interval: self
                .admin_stream_check_ms
                .map_or(defaults.check_interval, Duration::from_millis),
            max_lifetime: self
                .admin_stream_max_lifetime_s
                .map_or(defaults.max_lifetime, Duration::from_secs),
            ..defaults
        }
    }
}

/// `ringside serve`: every role in one process.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    #[command(flatten)]
    pub(crate) gateway: GatewayArgs,
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

/// `ringside gateway`: device sessions only.
#[derive(Args)]
pub(crate) struct GatewayRoleArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    #[command(flatten)]
    pub(crate) gateway: GatewayArgs,
}

/// `ringside control`: the admin API and prefetch GraphQL only.
#[derive(Args)]
pub(crate) struct ControlRoleArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    #[command(flatten)]
    pub(crate) control: ControlArgs,
}

/// Upgrade admission, connection lifetime and drain pacing of a gateway node.
#[derive(Args)]
#[command(next_help_heading = "Gateway admission, lifetime and drain")]
struct GatewayProtectionArgs {
    #[arg(
        long,
        env = "RINGSIDE_RETRY_AFTER_MIN_MS",
        help = "Shortest Retry-After of an upgrade's 503 [default: 2000]"
    )]
    retry_after_min_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_RETRY_AFTER_MAX_MS",
        help = "Longest Retry-After of an upgrade's 503 [default: 10000]"
    )]
    retry_after_max_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_UPGRADE_RATE_PER_S",
        help = "Upgrades this node admits per second; 503 beyond [default: 1000]"
    )]
    upgrade_rate_per_s: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_UPGRADE_BURST",
        help = "Upgrades admitted at once above that rate [default: 2000]"
    )]
    upgrade_burst: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_MAX_CONNECTION_LIFETIME_MS",
        help = "Goaway (max_lifetime) after this long, 0 for never [default: 1800000]"
    )]
    max_connection_lifetime_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_CONNECTION_LIFETIME_SPREAD_MS",
        help = "Each connection's lifetime is spread this much either way [default: 300000]"
    )]
    connection_lifetime_spread_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_GOAWAY_GRACE_MS",
        help = "States still delivered this long after a lifetime or drain goaway, then close [default: 5000]"
    )]
    goaway_grace_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_DRAIN_RATE_PER_S",
        help = "Goaways per second of a paced drain [default: 500]"
    )]
    drain_rate_per_s: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_DRAIN_WINDOW_MAX_MS",
        help = "Longest drain window, 0 for every goaway at once [default: 60000]"
    )]
    drain_window_max_ms: Option<u64>,
}

impl GatewayProtectionArgs {
    /// Sets the admission, lifetime and drain fields of `config` that were given.
    fn apply(&self, config: &mut GatewayConfig) {
        let ms = |value: Option<u64>, field: &mut Duration| {
            if let Some(value) = value {
                *field = Duration::from_millis(value);
            }
        };
        ms(self.retry_after_min_ms, &mut config.retry_after_min);
        ms(self.retry_after_max_ms, &mut config.retry_after_max);
        ms(
            self.max_connection_lifetime_ms,
            &mut config.max_connection_lifetime,
        );
        ms(
            self.connection_lifetime_spread_ms,
            &mut config.connection_lifetime_spread,
        );
        ms(self.goaway_grace_ms, &mut config.goaway_grace);
        ms(self.drain_window_max_ms, &mut config.drain_window_max);
        if let Some(rate) = self.upgrade_rate_per_s {
            config.upgrade_rate_per_s = rate;
        }
        if let Some(burst) = self.upgrade_burst {
            config.upgrade_burst = burst;
        }
        if let Some(rate) = self.drain_rate_per_s {
            config.drain_rate_per_s = rate;
        }
    }
}

impl NodeArgs {
    /// How this node reads device tokens' times.
    fn token_rules(&self) -> ringside_auth::TokenRules {
        let defaults = ringside_auth::TokenRules::default();
        ringside_auth::TokenRules {
            clock_skew: self
                .token_clock_skew_s
                .map_or(defaults.clock_skew, Duration::from_secs),
            max_lifetime: self
                .token_max_lifetime_s
                .map_or(defaults.max_lifetime, Duration::from_secs),
        }
    }

    /// The gateway config of a role without gateway flags: only the node's identity and drain
    /// deadline are its own (the control plane's banner, metrics and drain use them).
    fn gateway_defaults(&self) -> GatewayConfig {
        let defaults = GatewayConfig::default();
        GatewayConfig {
            node_id: self.node_id.clone().unwrap_or_else(default_node_id),
            shutdown_grace: self
                .shutdown_grace_ms
                .map_or(defaults.shutdown_grace, Duration::from_millis),
            ..defaults
        }
    }
}

impl GatewayArgs {
    /// `node`'s identity and drain deadline with these gateway flags.
    fn config(&self, node: &NodeArgs) -> GatewayConfig {
        let mut config = self.limits_config(node.gateway_defaults());
        self.gateway_protection.apply(&mut config);
        config
    }

    /// `defaults` (the node's own fields set) with the given session limits.
    fn limits_config(&self, defaults: GatewayConfig) -> GatewayConfig {
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        GatewayConfig {
            heartbeat_interval: ms(self.heartbeat_ms, defaults.heartbeat_interval),
            heartbeat_misses: self.heartbeat_misses.unwrap_or(defaults.heartbeat_misses),
            subscribe_timeout: ms(self.subscribe_timeout_ms, defaults.subscribe_timeout),
            max_topics_per_connection: self
                .max_topics_per_connection
                .unwrap_or(defaults.max_topics_per_connection),
            max_frame_bytes: self.max_frame_bytes.unwrap_or(defaults.max_frame_bytes),
            send_timeout: ms(self.send_timeout_ms, defaults.send_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            reconnect_spread: ms(self.reconnect_spread_ms, defaults.reconnect_spread),
            read_buffer_bytes: self.read_buffer_bytes.unwrap_or(defaults.read_buffer_bytes),
            max_unpublished_topics: self
                .max_unpublished_topics
                .unwrap_or(defaults.max_unpublished_topics),
            broadcasts_per_topic: self
                .broadcasts_per_topic
                .unwrap_or(defaults.broadcasts_per_topic),
            max_concurrent_fanouts: self
                .max_concurrent_fanouts
                .unwrap_or(defaults.max_concurrent_fanouts),
            max_waiting_topics: self
                .max_waiting_topics
                .unwrap_or(defaults.max_waiting_topics),
            inbound_frames_per_s: self
                .inbound_frames_per_s
                .unwrap_or(defaults.inbound_frames_per_s),
            inbound_frame_burst: self
                .inbound_frame_burst
                .unwrap_or(defaults.inbound_frame_burst),
            max_connections_per_device: self
                .max_connections_per_device
                .unwrap_or(defaults.max_connections_per_device),
            send_buffer_bytes: self.send_buffer_bytes.unwrap_or(defaults.send_buffer_bytes),
            inbound_bytes_per_s: self
                .inbound_bytes_per_s
                .unwrap_or(defaults.inbound_bytes_per_s),
            inbound_byte_burst: self
                .inbound_byte_burst
                .unwrap_or(defaults.inbound_byte_burst),
            ..defaults
        }
    }
}

fn default_node_id() -> String {
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect()
        })
        .unwrap_or_default();
    let host = if host.is_empty() {
        "ringside".to_owned()
    } else {
        host
    };
    format!("{host}-{:04x}", fastrand::u16(..))
}

/// Runs `role` with the flags it takes: a role without gateway (or control) flags runs with
/// that part's defaults, which it does not use.
pub(crate) async fn run_serve(
    node: &NodeArgs,
    gateway: Option<&GatewayArgs>,
    control: Option<&ControlArgs>,
    role: Role,
) -> anyhow::Result<()> {
    let state_dir = node.secrets.state_dir();
    let (device_token_secret, admin_token) = node.secrets.configured()?;
    let (secrets, source) = secrets::for_server(
        device_token_secret,
        admin_token,
        node.production,
        &state_dir,
    )?;
    if matches!(source, SecretSource::DevelopmentFile(_))
        && !node.listen.ip().is_loopback()
        && !node.dev
    {
        bail!(
            "refusing to serve development secrets on {}, which is not a loopback address: \
             configure RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, or pass --dev",
            node.listen
        );
    }
    let config = serve_config(node, gateway, control, role, secrets)?;
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(node.listen)
        .await
        .with_context(|| format!("cannot listen on {}", node.listen))?;
    let address = listener.local_addr()?;
    print_banner(address, &config, &source);

    let shutdown = CancellationToken::new();
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; draining");
        signal_shutdown.cancel();
    });
    let report = serve(listener, config, shutdown).await?;
    if report.sessions_left > 0 {
        bail!(
            "drain timed out with {} sessions open",
            report.sessions_left
        );
    }
    Ok(())
}

/// The `ServeConfig` of `role` from its flags; a part whose flags the role does not take has
/// its defaults.
fn serve_config(
    node: &NodeArgs,
    gateway: Option<&GatewayArgs>,
    control: Option<&ControlArgs>,
    role: Role,
    secrets: ringside::secrets::Secrets,
) -> anyhow::Result<ServeConfig> {
    if std::env::var_os("RINGSIDE_CORS_ORIGINS").is_some() {
        bail!(
            "RINGSIDE_CORS_ORIGINS is now RINGSIDE_WEB_ORIGINS (the list also allows those \
             pages' WebSocket): rename it"
        );
    }
    let store = node.redis.store();
    let mut http = node.http.config(node.protection.config());
    http.tls = node.http.tls()?;
    Ok(ServeConfig {
        role,
        bus: node.kafka.setup()?,
        gateway: gateway.map_or_else(|| node.gateway_defaults(), |gateway| gateway.config(node)),
        secrets,
        token_rules: node.token_rules(),
        prefetch: match control {
            Some(control) => control.prefetch.setup(node.production, store),
            None => PrefetchArgs::unused_setup(node.production, store),
        },
        fetch_window: control
            .map_or_else(Default::default, |control| control.fetch_window.config()),
        admin_stream: control
            .map_or_else(Default::default, |control| control.admin_stream.config()),
        http,
    })
}

async fn wait_for_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

fn print_banner(address: SocketAddr, config: &ServeConfig, source: &SecretSource) {
    let node = &config.gateway.node_id;
    let role = match config.role {
        Role::All => "gateway and control",
        Role::Gateway => "gateway",
        Role::Control => "control",
    };
    let bus = match &config.bus {
        BusSetup::Memory => "embedded bus".to_owned(),
        BusSetup::Kafka(kafka) => format!("Kafka {} topic {}", kafka.brokers, kafka.topic),
    };
    let store = match &config.prefetch.store {
        StoreSetup::Memory => "embedded store",
        StoreSetup::Redis { .. } => "Redis store",
    };
    let (http, ws, tls) = match config.http.tls {
        Some(_) => ("https", "wss", "; TLS"),
        None => ("http", "ws", ""),
    };
    println!(
        "ringside {} listening on {address} (node {node}: {role}; {bus}; {store}{tls})",
        env!("CARGO_PKG_VERSION")
    );
    if config.role.serves_devices() {
        println!("  devices    {ws}://{address}/v1/ws?token=<device token>");
    }
    if config.role.serves_control() {
        println!("  admin API  {http}://{address}/v1/admin  (Authorization: Bearer <admin token>)");
        println!("  prefetch   {http}://{address}/graphql");
        println!("  console    {http}://{address}/console  (sign in with the admin token)");
    }
    println!("  metrics    {http}://{address}/metrics   health: {http}://{address}/healthz");
    println!("  device token:  ringside token --device tv-1 --profile p-1 --class tv");
    println!("  admin token:   ringside token --admin");
    match source {
        SecretSource::Configured => println!("  secrets:       from configuration"),
        SecretSource::DevelopmentFile(path) => println!(
            "  secrets:       DEVELOPMENT secrets generated in {} (set RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, and pass --production, in production)",
            path.display()
        ),
    }
    if address.port() != 8080 {
        println!("  CLI:           pass --server {http}://{address} (or set RINGSIDE_SERVER)");
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use ringside::secrets::Secrets;

    use super::*;
    use crate::{Cli, Command};

    const ROLES: [&str; 3] = ["serve", "gateway", "control"];

    /// The config `ringside <args>` would serve, as its `Debug` text (the configs hold floats
    /// and trait objects, so they are compared as text).
    fn config_of(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(["ringside"].iter().chain(args)).expect("parses");
        let secrets = Secrets {
            device_token_secret: "a-device-token-secret-of-32-bytes!".into(),
            admin_token: "an-admin-token-long-enough-for-its-check".into(),
            ..Secrets::default()
        };
        let config = match &cli.command {
            Command::Serve(a) => serve_config(
                &a.node,
                Some(&a.gateway),
                Some(&a.control),
                Role::All,
                secrets,
            ),
            Command::Gateway(a) => {
                serve_config(&a.node, Some(&a.gateway), None, Role::Gateway, secrets)
            }
            Command::Control(a) => {
                serve_config(&a.node, None, Some(&a.control), Role::Control, secrets)
            }
            _ => unreachable!("only roles are parsed here"),
        };
        format!("{:?}", config.expect("a config"))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn production_turns_introspection_and_graphiql_off_unless_asked() {
        for (flags, expected) in [
            (&[][..], (true, true)),
            (&["--production"][..], (false, false)),
            (
                &["--production", "--graphql-introspection"][..],
                (true, true),
            ),
        ] {
            let cli = Cli::try_parse_from(
                ["ringside", "control", "--node-id", "n"]
                    .iter()
                    .chain(flags),
            )
            .expect("parses");
            let Command::Control(args) = &cli.command else {
                unreachable!("control was parsed")
            };
            let production = flags.contains(&"--production");
            let config = args
                .control
                .prefetch
                .setup(production, StoreSetup::Memory)
                .config;
            assert_eq!(
                (config.introspection, config.graphiql),
                expected,
                "{flags:?}"
            );
        }
    }

    #[test]
    fn each_role_without_flags_serves_the_libraries_defaults() {
        for role in ROLES {
            let cli = Cli::try_parse_from(["ringside", role, "--node-id", "n"]).expect("parses");
            let (node, gateway, control) = match &cli.command {
                Command::Serve(a) => (&a.node, Some(&a.gateway), Some(&a.control)),
                Command::Gateway(a) => (&a.node, Some(&a.gateway), None),
                Command::Control(a) => (&a.node, None, Some(&a.control)),
                _ => unreachable!("only roles are parsed here"),
            };
            let gateway_config =
                gateway.map_or_else(|| node.gateway_defaults(), |g| g.config(node));
            let expected = GatewayConfig {
                node_id: "n".into(),
                ..GatewayConfig::default()
            };
            assert_eq!(
                format!("{gateway_config:?}"),
                format!("{expected:?}"),
                "{role}"
            );
            let http = node.http.config(node.protection.config());
            assert_eq!(
                format!("{http:?}"),
                format!("{:?}", HttpConfig::default()),
                "{role}"
            );
            if let Some(control) = control {
                let prefetch = control.prefetch.setup(false, StoreSetup::Memory);
                let expected = ringside_prefetch::PrefetchConfig {
                    graphiql: true,
                    ..ringside_prefetch::PrefetchConfig::default()
                };
                assert_eq!(
                    format!("{:?}", prefetch.config),
                    format!("{expected:?}"),
                    "{role}"
                );
                let fetch_window = control.fetch_window.config();
                let expected = ringside_control::FetchWindowConfig::default();
                assert_eq!(
                    format!("{fetch_window:?}"),
                    format!("{expected:?}"),
                    "{role}"
                );
                let admin_stream = control.admin_stream.config();
                let expected = ringside_control::StreamConfig::default();
                assert_eq!(
                    format!("{admin_stream:?}"),
                    format!("{expected:?}"),
                    "{role}"
                );
            }
        }
    }

    /// A role refuses the flags of the parts it does not run, and `serve`, which runs them all,
    /// takes every one.
    #[test]
    fn each_role_takes_only_the_flags_it_uses() {
        // (flag, value, whether `gateway` takes it, whether `control` does)
        let cases = [
            ("--prefetch-cache-jitter", "0.1", false, true),
            ("--catalog-dir", "/tmp", false, true),
            ("--heartbeat-ms", "1000", true, false),
            ("--kafka-topic", "t", true, true),
            ("--redis-prefix", "p:", true, true),
        ];
        for (flag, value, gateway, control) in cases {
            for (role, takes) in [("serve", true), ("gateway", gateway), ("control", control)] {
                let parsed = Cli::try_parse_from(["ringside", role, flag, value]);
                match parsed {
                    Ok(_) => assert!(takes, "`{role}` took {flag}, which it does not use"),
                    Err(error) => {
                        assert!(!takes, "`{role}` refused {flag}: {error}");
                        assert_eq!(
                            error.kind(),
                            clap::error::ErrorKind::UnknownArgument,
                            "`{role} {flag}`"
                        );
                    }
                }
            }
        }
    }

    /// Every `[default: N]` a help text states is the default the flag's absence gives.
    #[test]
    fn the_defaults_help_texts_state_are_the_real_ones() {
        let command = Cli::command();
        let mut checked = 0;
        for role in ROLES {
            let without = config_of(&[role, "--node-id", "n"]);
            let subcommand = command.find_subcommand(role).expect("a role");
            for arg in subcommand.get_arguments() {
                let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
                    continue;
                };
                let help = help.to_string();
                let Some(stated) = help
                    .split_once("[default: ")
                    .and_then(|(_, rest)| rest.split_once(']'))
                    .map(|(value, _)| value.to_owned())
                    .filter(|value| value.parse::<f64>().is_ok())
                else {
                    continue;
                };
                let flag = format!("--{long}");
                let with = config_of(&[role, "--node-id", "n", &flag, &stated]);
                assert_eq!(
                    with, without,
                    "`{role} {flag}`'s help says [default: {stated}]"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} stated defaults found");
    }
}
