//! `ringside`: run the platform, mint device tokens, operate events and watch them as a device.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use auth::{DeviceClaims, DeviceClass, DeviceTokenKey};
use clap::{Args, Parser, Subcommand};
use client::watcher::WatchEvent;
use client::{AdminClient, Watcher, WatcherConfig};
use gateway::GatewayConfig;
use prefetch::cache::CacheConfig;
use prefetch::generate::DatasetSize;
use prefetch::{EventSource, PrefetchConfig, PrefetchService};
use protection::ProtectionConfig;
use protocol::admin::{CreateEvent, ProtectionMode, ProtectionStatus, PublishRequest, RulesetMode};
use protocol::{EventId, Payload, Priority, Stage};
use ringside::content::{self, CatalogEvents, DatasetSource, MaterializeMode, StoreSetup};
use ringside::http::HttpConfig;
use ringside::secrets::{self, SecretSource, Secrets};
use ringside::server::{BusSetup, PrefetchSetup, Role};
use ringside::{ServeConfig, serve};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ringside",
    version,
    about = "Prefetch, then broadcast: live-event state to every screen at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole platform in one process (embedded bus and store unless Kafka and Redis
    /// are configured).
    Serve(Box<ServeArgs>),
    /// Run a WebSocket gateway node that follows the Kafka bus (needs RINGSIDE_KAFKA_BROKERS).
    Gateway(Box<ServeArgs>),
    /// Run a control-plane instance: the admin API and prefetch GraphQL (needs
    /// RINGSIDE_KAFKA_BROKERS and RINGSIDE_REDIS_URL; run several).
    Control(Box<ServeArgs>),
    /// Print a device token (or, with --admin, the admin token).
    Token(TokenArgs),
    /// Operate events through the admin API.
    #[command(subcommand)]
    Event(EventCommand),
    /// Print the admin API's stats.
    Stats(ClientArgs),
    /// Connect as a device and print every state received.
    Watch(WatchArgs),
    /// Compute every profile's prefetch pages into Redis (only events whose content changed).
    Materialize(MaterializeArgs),
    /// Write the deterministic dataset as JSON lines (titles, profiles, events).
    Dataset(DatasetArgs),
    /// Print the GraphQL schema (SDL) the prefetch service serves.
    Schema,
}

/// Where prefetch content comes from (shared by `serve` and `materialize`).
#[derive(Args)]
struct ContentArgs {
    /// Load the catalog from JSON lines in this folder instead of generating it.
    #[arg(long, env = "RINGSIDE_CATALOG_DIR")]
    catalog_dir: Option<PathBuf>,
    #[arg(long, env = "RINGSIDE_DATASET_TITLES", default_value_t = 20_000)]
    dataset_titles: usize,
    #[arg(long, env = "RINGSIDE_DATASET_PROFILES", default_value_t = 200_000)]
    dataset_profiles: usize,
    #[arg(long, env = "RINGSIDE_DATASET_SEED", default_value_t = 7)]
    dataset_seed: u64,
    /// Keep materialized pages in Redis (shared by every prefetch node) instead of memory.
    #[arg(long, env = "RINGSIDE_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key Ringside writes.
    #[arg(long, env = "RINGSIDE_REDIS_PREFIX", default_value = "ringside:")]
    redis_prefix: String,
}

impl ContentArgs {
    fn dataset(&self) -> DatasetSource {
        match &self.catalog_dir {
            Some(dir) => DatasetSource::Directory(dir.clone()),
            None => DatasetSource::Generated(DatasetSize {
                titles: self.dataset_titles,
                profiles: self.dataset_profiles,
                seed: self.dataset_seed,
            }),
        }
    }

    fn store(&self) -> StoreSetup {
        match &self.redis_url {
            Some(url) => StoreSetup::Redis {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
            },
            None => StoreSetup::Memory,
        }
    }
}

#[derive(Args)]
struct PrefetchArgs {
    #[command(flatten)]
    content: ContentArgs,
    /// When pages are computed: in the background after startup, or only on demand.
    #[arg(long, env = "RINGSIDE_MATERIALIZE", default_value = "background")]
    materialize: MaterializeArg,
    #[arg(
        long,
        env = "RINGSIDE_PREFETCH_CACHE_TTL_S",
        help = "Node cache TTL [default: 300]"
    )]
    prefetch_cache_ttl_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_PREFETCH_CACHE_JITTER",
        help = "Node cache TTL spread, 0 to 1 [default: 0.2]"
    )]
    prefetch_cache_jitter: Option<f64>,
    #[arg(
        long,
        env = "RINGSIDE_PREFETCH_STALE_S",
        help = "Serve stale pages this long past their TTL [default: 600]"
    )]
    prefetch_stale_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_PREFETCH_CACHE_CAPACITY",
        help = "Node cache entries [default: 250000]"
    )]
    prefetch_cache_capacity: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_DEVICE_CACHE_TTL_S",
        help = "Device cache TTL in cache hints [default: 1800]"
    )]
    device_cache_ttl_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_DEVICE_CACHE_JITTER",
        help = "Device cache TTL spread, 0 to 1 [default: 0.2]"
    )]
    device_cache_jitter: Option<f64>,
    #[arg(
        long,
        env = "RINGSIDE_ARTWORK_BASE_URL",
        help = "Prefix of artwork URLs"
    )]
    artwork_base_url: Option<String>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_DEPTH",
        help = "Deepest GraphQL selection nesting [default: 12]"
    )]
    graphql_max_depth: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_FIELDS",
        help = "Most GraphQL selections, fragments expanded [default: 600]"
    )]
    graphql_max_fields: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_ALIASES",
        help = "Most GraphQL aliases, fragments expanded [default: 30]"
    )]
    graphql_max_aliases: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_NESTING",
        help = "Deepest nesting of brackets, variables and fragments in a GraphQL request [default: 32]"
    )]
    graphql_max_nesting: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_VISITS",
        help = "Selections the GraphQL limit checker visits per document [default: 2400]"
    )]
    graphql_max_visits: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_LIST_ITEMS",
        help = "Longest list in GraphQL arguments or variables [default: 16]"
    )]
    graphql_max_list_items: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_BODY_LIMIT_BYTES",
        help = "Largest GraphQL request body or GET query [default: 65536]"
    )]
    graphql_body_limit_bytes: Option<usize>,
    #[arg(
        long,
        env = "RINGSIDE_PERSISTED_QUERY_BYTES",
        help = "Bytes of persisted queries remembered per node [default: 8388608]"
    )]
    persisted_query_bytes: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_TIMEOUT_MS",
        help = "Longest a GraphQL query may execute [default: 10000]"
    )]
    graphql_timeout_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_GRAPHQL_MAX_RESPONSE_BYTES",
        help = "Largest GraphQL response body [default: 4194304]"
    )]
    graphql_max_response_bytes: Option<usize>,
    /// A web origin (`https://app.example.com`) whose pages may call /graphql; repeat the flag,
    /// or separate them with commas in the environment variable. None: no CORS headers.
    #[arg(
        long = "cors-origin",
        env = "RINGSIDE_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    cors_origins: Vec<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MaterializeArg {
    Background,
    OnDemand,
}

impl PrefetchArgs {
    fn setup(&self, production: bool) -> anyhow::Result<PrefetchSetup> {
        let defaults = PrefetchConfig::default();
        let fraction = |name: &str, value: Option<f64>, default: f64| -> anyhow::Result<f64> {
            let value = value.unwrap_or(default);
            if !(0.0..=1.0).contains(&value) {
                bail!("{name} must be between 0 and 1, not {value}");
            }
            Ok(value)
        };
        let secs =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        let config = PrefetchConfig {
            cache: CacheConfig {
                ttl: secs(self.prefetch_cache_ttl_s, defaults.cache.ttl),
                jitter: fraction(
                    "--prefetch-cache-jitter",
                    self.prefetch_cache_jitter,
                    defaults.cache.jitter,
                )?,
                stale_for: secs(self.prefetch_stale_s, defaults.cache.stale_for),
                capacity: self
                    .prefetch_cache_capacity
                    .unwrap_or(defaults.cache.capacity),
            },
            device_ttl: secs(self.device_cache_ttl_s, defaults.device_ttl),
            device_ttl_jitter: fraction(
                "--device-cache-jitter",
                self.device_cache_jitter,
                defaults.device_ttl_jitter,
            )?,
            artwork_base_url: self
                .artwork_base_url
                .clone()
                .unwrap_or(defaults.artwork_base_url),
            limits: prefetch::limits::QueryLimits {
                max_depth: self.graphql_max_depth.unwrap_or(defaults.limits.max_depth),
                max_fields: self
                    .graphql_max_fields
                    .unwrap_or(defaults.limits.max_fields),
                max_aliases: self
                    .graphql_max_aliases
                    .unwrap_or(defaults.limits.max_aliases),
                max_nesting: self
                    .graphql_max_nesting
                    .unwrap_or(defaults.limits.max_nesting),
                max_visits: self
                    .graphql_max_visits
                    .unwrap_or(defaults.limits.max_visits),
                max_list_items: self
                    .graphql_max_list_items
                    .unwrap_or(defaults.limits.max_list_items),
            },
            body_limit_bytes: self
                .graphql_body_limit_bytes
                .unwrap_or(defaults.body_limit_bytes),
            persisted_query_bytes: self
                .persisted_query_bytes
                .unwrap_or(defaults.persisted_query_bytes),
            execution_timeout: self
                .graphql_timeout_ms
                .map_or(defaults.execution_timeout, Duration::from_millis),
            max_response_bytes: self
                .graphql_max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            graphiql: !production,
            cors_origins: self
                .cors_origins
                .iter()
                .map(|origin| origin.trim().to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
        };
        config.validate()?;
        Ok(PrefetchSetup {
            config,
            dataset: self.content.dataset(),
            store: self.content.store(),
            materialize: match self.materialize {
                MaterializeArg::Background => MaterializeMode::Background,
                MaterializeArg::OnDemand => MaterializeMode::OnDemand,
            },
        })
    }
}

#[derive(Args)]
struct MaterializeArgs {
    #[command(flatten)]
    content: ContentArgs,
    /// Only this event (default: every event of the catalog).
    #[arg(long)]
    event: Option<EventId>,
    /// Recompute even when the stored pages are current.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DatasetArgs {
    /// Folder to write titles.jsonl, profiles.jsonl and events.jsonl to.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 20_000)]
    titles: usize,
    #[arg(long, default_value_t = 200_000)]
    profiles: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Where secrets come from. They are read from the environment (or files the environment
/// names), never from flags, so that they do not show in process listings:
/// `RINGSIDE_DEVICE_TOKEN_SECRET` / `RINGSIDE_DEVICE_TOKEN_SECRET_FILE` and
/// `RINGSIDE_ADMIN_TOKEN` / `RINGSIDE_ADMIN_TOKEN_FILE`.
#[derive(Args)]
struct SecretArgs {
    /// Where development secrets are kept.
    #[arg(long, env = "RINGSIDE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl SecretArgs {
    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(secrets::default_state_dir)
    }

    fn configured(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        Ok((
            secrets::from_env("RINGSIDE_DEVICE_TOKEN_SECRET")?,
            secrets::from_env("RINGSIDE_ADMIN_TOKEN")?,
        ))
    }

    /// Configured secrets, else the development ones.
    fn resolve(&self) -> anyhow::Result<Secrets> {
        let (device_token_secret, admin_token) = self.configured()?;
        if let (Some(device_token_secret), Some(admin_token)) =
            (device_token_secret.clone(), admin_token.clone())
        {
            return Ok(Secrets {
                device_token_secret,
                admin_token,
            });
        }
        let development = secrets::development(&self.state_dir())?.with_context(|| {
            format!(
                "no secrets: set RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, or run \
                 `ringside serve` once in development mode to create {}",
                self.state_dir().join("dev-secrets.json").display()
            )
        })?;
        Ok(Secrets {
            device_token_secret: device_token_secret.unwrap_or(development.device_token_secret),
            admin_token: admin_token.unwrap_or(development.admin_token),
        })
    }
}

/// Tier 1 on Kafka. Unset, the process uses its embedded in-memory bus.
#[derive(Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers (comma-separated host:port); switches tier 1 to Kafka.
    #[arg(long, env = "RINGSIDE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[arg(long, env = "RINGSIDE_KAFKA_TOPIC", default_value = kafka::DEFAULT_TOPIC)]
    kafka_topic: String,
    /// librdkafka properties (key=value lines) for every Kafka client: TLS, SASL, tuning.
    #[arg(long, env = "RINGSIDE_KAFKA_CONFIG_FILE")]
    kafka_config_file: Option<PathBuf>,
    #[arg(
        long,
        env = "RINGSIDE_KAFKA_PARTITIONS",
        help = "Partitions when Ringside creates the topic [default: the broker's]"
    )]
    kafka_partitions: Option<i32>,
    #[arg(
        long,
        env = "RINGSIDE_KAFKA_REPLICATION",
        help = "Replication factor when Ringside creates the topic [default: the broker's]"
    )]
    kafka_replication: Option<i32>,
    #[arg(
        long,
        env = "RINGSIDE_KAFKA_PUBLISH_TIMEOUT_MS",
        help = "A publish not acknowledged by then answers 503 [default: 5000]"
    )]
    kafka_publish_timeout_ms: Option<u64>,
}

impl KafkaArgs {
    fn setup(&self) -> anyhow::Result<BusSetup> {
        let Some(brokers) = &self.kafka_brokers else {
            return Ok(BusSetup::Memory);
        };
        let mut config = kafka::KafkaConfig::new(brokers.clone());
        config.topic = self.kafka_topic.clone();
        config.partitions = self.kafka_partitions;
        config.replication = self.kafka_replication;
        if let Some(ms) = self.kafka_publish_timeout_ms {
            // Below the publish lock's lifetime, so a lock always outlives its publish.
            if !(1000..=20_000).contains(&ms) {
                bail!("--kafka-publish-timeout-ms must be between 1000 and 20000, not {ms}");
            }
            config.publish_timeout = Duration::from_millis(ms);
        }
        if let Some(path) = &self.kafka_config_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            config.options = kafka::KafkaConfig::parse_options(&text)
                .with_context(|| format!("in {}", path.display()))?;
        }
        Ok(BusSetup::Kafka(config))
    }
}

/// Protection of the node under overload (docs/OPERATIONS.md, "Protection").
#[derive(Args)]
struct ProtectionArgs {
    /// on: limit concurrency and shed the lowest classes first; off: measure only, never
    /// refuse (for side-by-side runs).
    #[arg(long = "protection", env = "RINGSIDE_PROTECTION", default_value = "on")]
    mode: ProtectionArg,
    /// The event-driven ruleset at startup: auto (around stage transitions and under load),
    /// on, or off.
    #[arg(
        long = "protection-ruleset",
        env = "RINGSIDE_PROTECTION_RULESET",
        default_value = "auto"
    )]
    ruleset: RulesetArg,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_INITIAL_LIMIT",
        help = "Concurrency limit at startup [default: 64]"
    )]
    protection_initial_limit: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_MIN_LIMIT",
        help = "Lowest adaptive concurrency limit [default: 16]"
    )]
    protection_min_limit: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_MAX_LIMIT",
        help = "Highest adaptive concurrency limit [default: 2048]"
    )]
    protection_max_limit: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_LIVE_WINDOW_S",
        help = "Ruleset window after an event goes LIVE [default: 300]"
    )]
    protection_live_window_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_TRANSITION_WINDOW_S",
        help = "Ruleset window after any other stage transition [default: 60]"
    )]
    protection_transition_window_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_LATENCY_RATIO",
        help = "Short over long-term latency that switches the ruleset on, 0 for never [default: 2.0]"
    )]
    protection_latency_ratio: Option<f64>,
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_MAX_REQUEST_RATE",
        help = "Requests per second that switch the ruleset on [default: none]"
    )]
    protection_max_request_rate: Option<u32>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtectionArg {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RulesetArg {
    Auto,
    On,
    Off,
}

impl ProtectionArgs {
    fn config(&self) -> ProtectionConfig {
        let defaults = ProtectionConfig::default();
        let secs =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        ProtectionConfig {
            mode: match self.mode {
                ProtectionArg::On => ProtectionMode::On,
                ProtectionArg::Off => ProtectionMode::Off,
            },
            ruleset: match self.ruleset {
                RulesetArg::Auto => RulesetMode::Auto,
                RulesetArg::On => RulesetMode::On,
                RulesetArg::Off => RulesetMode::Off,
            },
            initial_limit: self
                .protection_initial_limit
                .unwrap_or(defaults.initial_limit),
            min_limit: self.protection_min_limit.unwrap_or(defaults.min_limit),
            max_limit: self.protection_max_limit.unwrap_or(defaults.max_limit),
            live_window: secs(self.protection_live_window_s, defaults.live_window),
            transition_window: secs(
                self.protection_transition_window_s,
                defaults.transition_window,
            ),
            latency_ratio: match self.protection_latency_ratio {
                None => defaults.latency_ratio,
                Some(0.0) => None,
                Some(ratio) => Some(ratio),
            },
            max_request_rate: self
                .protection_max_request_rate
                .or(defaults.max_request_rate),
            ..defaults
        }
    }
}

/// How the control plane sizes the default `fetch_within_ms` of stage states (see
/// `control::fetch_window`).
#[derive(Args)]
struct FetchWindowArgs {
    #[arg(
        long,
        env = "RINGSIDE_FOLLOW_UP_FETCH_CAPACITY_PER_S",
        help = "Follow-up fetches per second the whole prefetch tier serves [default: 3000]"
    )]
    follow_up_fetch_capacity_per_s: Option<u32>,
    #[arg(
        long,
        env = "RINGSIDE_FOLLOW_UP_FETCH_SHARE",
        help = "Share of that capacity one stage change's fetches may take, above 0 to 1 [default: 0.5]"
    )]
    follow_up_fetch_share: Option<f64>,
    #[arg(
        long,
        env = "RINGSIDE_FETCH_WINDOW_MIN_MS",
        help = "Shortest default follow-up fetch window [default: 1000]"
    )]
    fetch_window_min_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_FETCH_WINDOW_MAX_MS",
        help = "Longest default follow-up fetch window; 0 turns the default off [default: 60000]"
    )]
    fetch_window_max_ms: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_SUBSCRIBER_COUNT_MAX_AGE_MS",
        help = "Reuse the subscriber counts the window is sized from this long [default: 1000]"
    )]
    subscriber_count_max_age_ms: Option<u64>,
}

impl FetchWindowArgs {
    fn config(&self) -> anyhow::Result<control::FetchWindowConfig> {
        let defaults = control::FetchWindowConfig::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        let config = control::FetchWindowConfig {
            follow_up_fetch_capacity_per_s: self
                .follow_up_fetch_capacity_per_s
                .unwrap_or(defaults.follow_up_fetch_capacity_per_s),
            follow_up_fetch_share: self
                .follow_up_fetch_share
                .unwrap_or(defaults.follow_up_fetch_share),
            min_window: ms(self.fetch_window_min_ms, defaults.min_window),
            max_window: ms(self.fetch_window_max_ms, defaults.max_window),
            subscribers_max_age: ms(
                self.subscriber_count_max_age_ms,
                defaults.subscribers_max_age,
            ),
        };
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "RINGSIDE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Refuse to start without configured secrets.
    #[arg(long, env = "RINGSIDE_PRODUCTION")]
    production: bool,
    /// Allow development secrets on a non-loopback listen address.
    #[arg(long, env = "RINGSIDE_DEV")]
    dev: bool,
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
    #[command(flatten)]
    secrets: SecretArgs,
    #[command(flatten)]
    prefetch: PrefetchArgs,
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    protection: ProtectionArgs,
    #[command(flatten)]
    fetch_window: FetchWindowArgs,
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
    /// This node's id (default: host name and a random suffix).
    #[arg(long, env = "RINGSIDE_NODE_ID")]
    node_id: Option<String>,
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
        env = "RINGSIDE_SHUTDOWN_GRACE_MS",
        help = "Drain deadline: holds the drain window, the goaway grace and a 2 s close [default: 70000]"
    )]
    shutdown_grace_ms: Option<u64>,
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

/// Upgrade admission, connection lifetime and drain pacing of a gateway node.
#[derive(Args)]
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

impl ServeArgs {
    fn gateway_config(&self) -> GatewayConfig {
        let mut config = self.gateway_limits_config();
        self.gateway_protection.apply(&mut config);
        config
    }

    fn gateway_limits_config(&self) -> GatewayConfig {
        let defaults = GatewayConfig::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        GatewayConfig {
            node_id: self.node_id.clone().unwrap_or_else(default_node_id),
            heartbeat_interval: ms(self.heartbeat_ms, defaults.heartbeat_interval),
            heartbeat_misses: self.heartbeat_misses.unwrap_or(defaults.heartbeat_misses),
            subscribe_timeout: ms(self.subscribe_timeout_ms, defaults.subscribe_timeout),
            max_topics_per_connection: self
                .max_topics_per_connection
                .unwrap_or(defaults.max_topics_per_connection),
            max_frame_bytes: self.max_frame_bytes.unwrap_or(defaults.max_frame_bytes),
            send_timeout: ms(self.send_timeout_ms, defaults.send_timeout),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            shutdown_grace: ms(self.shutdown_grace_ms, defaults.shutdown_grace),
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

#[derive(Args)]
struct TokenArgs {
    /// Device id (the token's `sub`).
    #[arg(long, required_unless_present = "admin")]
    device: Option<String>,
    /// Profile id whose data the device may read.
    #[arg(long, required_unless_present = "admin")]
    profile: Option<String>,
    /// Device class: tv, mobile or web.
    #[arg(long, default_value = "tv")]
    class: DeviceClass,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl_s: u64,
    /// Highest priority class of the device's requests (critical, degraded, best_effort, bulk);
    /// it only lowers a route's class. Default: none (the route's class).
    #[arg(long)]
    priority: Option<Priority>,
    /// Print the admin token instead.
    #[arg(long)]
    admin: bool,
    #[command(flatten)]
    secrets: SecretArgs,
}

#[derive(Args)]
struct ClientArgs {
    /// Base URL of a Ringside node.
    #[arg(long, env = "RINGSIDE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[command(flatten)]
    secrets: SecretArgs,
}

impl ClientArgs {
    fn admin(&self) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::new(
            self.server.clone(),
            &self.secrets.resolve()?.admin_token,
        ))
    }
}

#[derive(Subcommand)]
enum EventCommand {
    /// Create an event.
    Create {
        id: EventId,
        #[arg(long)]
        title: String,
        /// RFC 3339 start time, e.g. 2026-12-01T20:00:00Z.
        #[arg(long)]
        starts_at: String,
        /// Comma-separated stages, in order.
        #[arg(long, value_delimiter = ',', default_value = "UPCOMING,LIVE,ENDED")]
        stages: Vec<Stage>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List events with their current stage and version.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish a new state of an event to every device.
    Publish {
        id: EventId,
        #[arg(long)]
        stage: Stage,
        /// JSON object passed to devices unchanged.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Devices lacking the stage's content fetch it within this many ms (default: the
        /// control plane's window from the subscribed devices).
        #[arg(long)]
        fetch_within_ms: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The delivery report: the event's recorded broadcasts, or one version's summary, reach
    /// curve and per-node rows.
    Report {
        id: EventId,
        /// The broadcast to report on (default: list them all, newest first).
        version: Option<u64>,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct WatchArgs {
    /// Event to watch.
    #[arg(long)]
    event: EventId,
    /// Device token; minted from the development secret when absent.
    #[arg(long, env = "RINGSIDE_DEVICE_TOKEN")]
    token: Option<String>,
    /// Stop after this many states.
    #[arg(long)]
    count: Option<u64>,
    /// Nodes to connect to (comma-separated base URLs); defaults to --server.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mint_token(
    secrets: &Secrets,
    device: &str,
    profile: &str,
    class: DeviceClass,
    ttl_s: u64,
    priority: Option<Priority>,
) -> anyhow::Result<String> {
    let key = DeviceTokenKey::new(secrets.device_token_secret.as_bytes())?;
    let claims = DeviceClaims {
        sub: device.to_owned(),
        profile: profile.to_owned(),
        class,
        exp: unix_now_s() + ttl_s,
        priority,
    };
    Ok(key.sign(&claims))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn init_logging() {
    let filter: tracing_subscriber::filter::Targets = std::env::var("RINGSIDE_LOG")
        .ok()
        .and_then(|spec| spec.parse().ok())
        .unwrap_or_else(|| "info".parse().unwrap_or_default());
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => run_serve(*args, Role::All).await,
        Command::Gateway(args) => run_serve(*args, Role::Gateway).await,
        Command::Control(args) => run_serve(*args, Role::Control).await,
        Command::Token(args) => {
            let secrets = args.secrets.resolve()?;
            if args.admin {
                println!("{}", secrets.admin_token);
            } else {
                let (device, profile) = (
                    args.device.unwrap_or_default(),
                    args.profile.unwrap_or_default(),
                );
                println!(
                    "{}",
                    mint_token(
                        &secrets,
                        &device,
                        &profile,
                        args.class,
                        args.ttl_s,
                        args.priority
                    )?
                );
            }
            Ok(())
        }
        Command::Event(EventCommand::Create {
            id,
            title,
            starts_at,
            stages,
            client,
        }) => {
            let event = CreateEvent {
                id,
                title,
                starts_at,
                stages,
            };
            print_json(&client.admin()?.create_event(&event).await?)
        }
        Command::Event(EventCommand::List { client }) => {
            print_json(&client.admin()?.list_events().await?)
        }
        Command::Event(EventCommand::Publish {
            id,
            stage,
            payload,
            fetch_within_ms,
            client,
        }) => {
            let payload = Payload::parse(&payload).context("--payload")?;
            let options = client::admin::PublishOptions {
                priority: None,
                fetch_within_ms,
            };
            print_json(
                &client
                    .admin()?
                    .publish_with(&id, &PublishRequest { stage, payload }, options)
                    .await?,
            )
        }
        Command::Event(EventCommand::Report {
            id,
            version,
            json,
            client,
        }) => {
            let admin = client.admin()?;
            match version {
                None => {
                    let list = admin.broadcasts(&id).await?;
                    if json {
                        return print_json(&list);
                    }
                    print!("{}", ringside::broadcast_table::list_table(&list));
                }
                Some(version) => {
                    let report = admin.broadcast(&id, version).await?;
                    if json {
                        return print_json(&report);
                    }
                    print!("{}", ringside::broadcast_table::report_table(&report));
                }
            }
            Ok(())
        }
        Command::Stats(client) => run_stats(client).await,
        Command::Watch(args) => run_watch(args).await,
        Command::Materialize(args) => run_materialize(args).await,
        Command::Dataset(args) => {
            let size = DatasetSize {
                titles: args.titles,
                profiles: args.profiles,
                seed: args.seed,
            };
            prefetch::jsonl::write(&args.out, &prefetch::generate::generate(size))?;
            println!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Schema => {
            print!(
                "{}",
                prefetch::schema::build_schema(Default::default()).sdl()
            );
            Ok(())
        }
    }
}

/// The admin API's stats, with this node's protection state under `"protection"`.
async fn run_stats(client: ClientArgs) -> anyhow::Result<()> {
    let mut stats = serde_json::to_value(client.admin()?.stats().await?)?;
    let bearer = format!("Bearer {}", client.secrets.resolve()?.admin_token);
    let answer = client::http::call(
        &client.server,
        "GET",
        "/v1/admin/protection",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .and_then(|response| client::admin::decode::<ProtectionStatus>(&response));
    match answer {
        Ok(status) => stats["protection"] = serde_json::to_value(status)?,
        Err(error) => eprintln!("protection state unavailable: {error}"),
    }
    print_json(&stats)
}

async fn run_serve(args: ServeArgs, role: Role) -> anyhow::Result<()> {
    let state_dir = args.secrets.state_dir();
    let (device_token_secret, admin_token) = args.secrets.configured()?;
    let (secrets, source) = secrets::for_server(
        device_token_secret,
        admin_token,
        args.production,
        &state_dir,
    )?;
    if matches!(source, SecretSource::DevelopmentFile(_))
        && !args.listen.ip().is_loopback()
        && !args.dev
    {
        bail!(
            "refusing to serve development secrets on {}, which is not a loopback address: \
             configure RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, or pass --dev",
            args.listen
        );
    }
    let http_defaults = HttpConfig::default();
    let config = ServeConfig {
        role,
        bus: args.kafka.setup()?,
        gateway: args.gateway_config(),
        http: HttpConfig {
            max_pending_connections: args
                .max_pending_connections
                .unwrap_or(http_defaults.max_pending_connections),
            header_read_timeout: args
                .header_read_timeout_ms
                .map_or(http_defaults.header_read_timeout, Duration::from_millis),
            body_read_timeout: args
                .body_read_timeout_ms
                .map_or(http_defaults.body_read_timeout, Duration::from_millis),
            max_request_head_bytes: args
                .max_request_head_bytes
                .unwrap_or(http_defaults.max_request_head_bytes),
            protection: args.protection.config(),
        },
        secrets,
        prefetch: args.prefetch.setup(args.production)?,
        fetch_window: args.fetch_window.config()?,
        admin_stream: {
            let defaults = control::StreamConfig::default();
            control::StreamConfig {
                max_streams: args.admin_streams_max.unwrap_or(defaults.max_streams),
                check_interval: args
                    .admin_stream_check_ms
                    .map_or(defaults.check_interval, Duration::from_millis),
                max_lifetime: args
                    .admin_stream_max_lifetime_s
                    .map_or(defaults.max_lifetime, Duration::from_secs),
                ..defaults
            }
        },
    };
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
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
    println!(
        "ringside {} listening on {address} (node {node}: {role}; {bus}; {store})",
        env!("CARGO_PKG_VERSION")
    );
    if config.role.serves_devices() {
        println!("  devices    ws://{address}/v1/ws?token=<device token>");
    }
    if config.role.serves_control() {
        println!("  admin API  http://{address}/v1/admin  (Authorization: Bearer <admin token>)");
        println!("  prefetch   http://{address}/graphql");
        println!("  console    http://{address}/console  (sign in with the admin token)");
    }
    println!("  metrics    http://{address}/metrics   health: http://{address}/healthz");
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
        println!("  CLI:           pass --server http://{address} (or set RINGSIDE_SERVER)");
    }
}

async fn run_materialize(args: MaterializeArgs) -> anyhow::Result<()> {
    let StoreSetup::Redis { .. } = args.content.store() else {
        bail!(
            "materialize writes to Redis: set RINGSIDE_REDIS_URL (a single process materializes in memory by itself)"
        );
    };
    let catalog = Arc::new(content::load_catalog(&args.content.dataset()).await?);
    let store = content::open_store(&args.content.store(), &catalog).await?;
    if args.force {
        for event in &catalog.events {
            store.set_fingerprint(&event.content.id, 0).await?;
        }
    }
    // Materializing needs no secret; the key only satisfies the service's constructor.
    let unused_key = DeviceTokenKey::new(&[0u8; 32])?;
    let events = CatalogEvents {
        catalog: catalog.clone(),
    }
    .events()
    .await;
    let service = PrefetchService::new(
        catalog.clone(),
        store,
        Arc::new(CatalogEvents { catalog }),
        unused_key,
        PrefetchConfig::default(),
        &telemetry::Registry::new(),
    );
    for event in events
        .iter()
        .filter(|e| args.event.as_ref().is_none_or(|only| &e.id == only))
    {
        let report = service.materialize_event(event).await?;
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({
                "event": report.event, "pages": report.pages, "skipped": report.skipped, "elapsed_ms": report.elapsed_ms,
            }))?
        );
    }
    Ok(())
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let secrets = args.client.secrets.resolve()?;
            mint_token(
                &secrets,
                &format!("watch-{:04x}", fastrand::u16(..)),
                "watch",
                DeviceClass::Web,
                86_400,
                None,
            )?
        }
    };
    let nodes = if args.nodes.is_empty() {
        vec![args.client.server.clone()]
    } else {
        args.nodes
    };
    let endpoints = nodes.iter().map(|n| client::device::ws_url(n)).collect();
    let mut watcher = Watcher::new(WatcherConfig::new(
        endpoints,
        token,
        vec![args.event.topic()],
    ));
    let mut received = 0;
    loop {
        match watcher.next().await {
            WatchEvent::Connected { node, endpoint } => {
                eprintln!("connected to {endpoint} (node {node})")
            }
            WatchEvent::Refused { reason } => bail!("refused: {reason}"),
            WatchEvent::Disconnected { reason, retry_in } => {
                eprintln!(
                    "disconnected: {reason}; retrying in {} ms",
                    retry_in.as_millis()
                );
            }
            WatchEvent::State(state) => {
                println!("{}", protocol::ServerFrame::State(state).encode());
                received += 1;
                if args.count.is_some_and(|count| received >= count) {
                    return Ok(());
                }
            }
        }
    }
}
