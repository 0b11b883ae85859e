//! The flag groups several commands share: the catalog, Redis, prefetch, secrets, the Kafka
//! bus, protection and the follow-up fetch window, each under its own `--help` heading. Each turns its flags into the library's typed config.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ringside::content::{DatasetSource, MaterializeMode, StoreSetup};
use ringside::secrets::{self, Secrets};
use ringside::server::{BusSetup, PrefetchSetup};
use ringside_prefetch::PrefetchConfig;
use ringside_prefetch::cache::CacheConfig;
use ringside_prefetch::compiled::CompiledConfig;
use ringside_prefetch::generate::DatasetSize;
use ringside_prefetch::responses::ResponseCacheConfig;
use ringside_protection::ProtectionConfig;
use ringside_protocol::admin::{PerClass, ProtectionMode, RulesetMode};

/// Where prefetch content comes from and where it is kept (`materialize`).
#[derive(Args)]
pub(crate) struct ContentArgs {
    #[command(flatten)]
    catalog: CatalogArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

impl ContentArgs {
    pub(crate) fn dataset(&self) -> DatasetSource {
        self.catalog.dataset()
    }

    pub(crate) fn store(&self) -> StoreSetup {
        self.redis.store()
    }
}

/// The catalog prefetch serves: loaded from files, or generated.
#[derive(Args)]
#[command(next_help_heading = "Catalog")]
struct CatalogArgs {
    /// Load the catalog from JSON lines in this folder instead of generating it.
    #[arg(long, env = "RINGSIDE_CATALOG_DIR")]
    catalog_dir: Option<PathBuf>,
    #[arg(long, env = "RINGSIDE_DATASET_TITLES", default_value_t = DatasetSize::default().titles)]
    dataset_titles: usize,
    #[arg(long, env = "RINGSIDE_DATASET_PROFILES", default_value_t = DatasetSize::default().profiles)]
    dataset_profiles: usize,
    #[arg(long, env = "RINGSIDE_DATASET_SEED", default_value_t = DatasetSize::default().seed)]
    dataset_seed: u64,
}

impl CatalogArgs {
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
}

/// Redis: events, versions, the node registry and prefetch pages, shared by every node.
/// Unset, a process keeps them in memory.
#[derive(Args)]
#[command(next_help_heading = "Redis")]
pub(crate) struct RedisArgs {
    /// Keep events, the node registry and materialized pages in Redis (shared by every node)
    /// instead of memory.
    #[arg(long, env = "RINGSIDE_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key Ringside writes.
    #[arg(long, env = "RINGSIDE_REDIS_PREFIX", default_value = "ringside:")]
    redis_prefix: String,
}

impl RedisArgs {
    pub(crate) fn store(&self) -> StoreSetup {
        match &self.redis_url {
            Some(url) => StoreSetup::Redis {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
            },
            None => StoreSetup::Memory,
        }
    }
}

/// The prefetch service of a control plane.
#[derive(Args)]
#[command(next_help_heading = "Prefetch")]
pub(crate) struct PrefetchArgs {
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
        env = "RINGSIDE_RESPONSE_CACHE_BYTES",
        help = "Bytes of prefetch answers kept to send again, 0 for none [default: 134217728]"
    )]
    response_cache_bytes: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_RESPONSE_CACHE_TTL_S",
        help = "Mean lifetime of a kept prefetch answer [default: 300]"
    )]
    response_cache_ttl_s: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_COMPILED_PLANS",
        help = "Query texts whose compiled plan is kept, 0 for no fast path [default: 256]"
    )]
    compiled_plans: Option<u64>,
    #[arg(
        long,
        env = "RINGSIDE_COMPILED_CARD_BYTES",
        help = "Bytes of rendered title cards kept by compiled plans [default: 67108864]"
    )]
    compiled_card_bytes: Option<usize>,
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
    /// Answer GraphQL introspection and serve GraphiQL in production too (without
    /// `--production` both are always on).
    #[arg(long, env = "RINGSIDE_GRAPHQL_INTROSPECTION")]
    graphql_introspection: bool,
    // Last: a flattened group's heading holds for the fields after it.
    #[command(flatten)]
    catalog: CatalogArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MaterializeArg {
    Background,
    OnDemand,
}

impl PrefetchArgs {
    /// The prefetch setup these flags give, its pages kept in `store`; `ServeConfig::validate`
    /// checks it.
    pub(crate) fn setup(&self, production: bool, store: StoreSetup) -> PrefetchSetup {
        let defaults = PrefetchConfig::default();
        let secs =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
        let config = PrefetchConfig {
            cache: CacheConfig {
                ttl: secs(self.prefetch_cache_ttl_s, defaults.cache.ttl),
                jitter: self.prefetch_cache_jitter.unwrap_or(defaults.cache.jitter),
                stale_for: secs(self.prefetch_stale_s, defaults.cache.stale_for),
                capacity: self
                    .prefetch_cache_capacity
                    .unwrap_or(defaults.cache.capacity),
            },
            responses: ResponseCacheConfig {
                max_bytes: self
                    .response_cache_bytes
                    .unwrap_or(defaults.responses.max_bytes),
                ttl: secs(self.response_cache_ttl_s, defaults.responses.ttl),
                // The server sets it from the HTTP layer's `--compression-min-bytes`.
                ..defaults.responses
            },
            compiled: CompiledConfig {
                plans: self.compiled_plans.unwrap_or(defaults.compiled.plans),
                card_bytes: self
                    .compiled_card_bytes
                    .unwrap_or(defaults.compiled.card_bytes),
            },
            device_ttl: secs(self.device_cache_ttl_s, defaults.device_ttl),
            device_ttl_jitter: self
                .device_cache_jitter
                .unwrap_or(defaults.device_ttl_jitter),
            artwork_base_url: self
                .artwork_base_url
                .clone()
                .unwrap_or(defaults.artwork_base_url),
            limits: ringside_prefetch::limits::QueryLimits {
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
            graphiql: !production || self.graphql_introspection,
            introspection: !production || self.graphql_introspection,
        };
        PrefetchSetup {
            config,
            dataset: self.catalog.dataset(),
            store,
            materialize: match self.materialize {
                MaterializeArg::Background => MaterializeMode::Background,
                MaterializeArg::OnDemand => MaterializeMode::OnDemand,
            },
        }
    }

    /// The prefetch setup of a role that serves no prefetch (`gateway`): the library's
    /// defaults, with `store` deciding where events and the node registry live.
    pub(crate) fn unused_setup(production: bool, store: StoreSetup) -> PrefetchSetup {
        PrefetchSetup {
            config: PrefetchConfig {
                graphiql: !production,
                introspection: !production,
                ..PrefetchConfig::default()
            },
            dataset: DatasetSource::Generated(DatasetSize::default()),
            store,
            materialize: MaterializeMode::OnDemand,
        }
    }
}

/// Where secrets come from. They are read from the environment (or files the environment
/// names), never from flags, so that they do not show in process listings:
/// `RINGSIDE_DEVICE_TOKEN_SECRET` / `RINGSIDE_DEVICE_TOKEN_SECRET_FILE` and
/// `RINGSIDE_ADMIN_TOKEN` / `RINGSIDE_ADMIN_TOKEN_FILE`; during a rotation of the device-token
/// secret also `RINGSIDE_DEVICE_TOKEN_KID`, `RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET` (or
/// `…_FILE`) and `RINGSIDE_DEVICE_TOKEN_PREVIOUS_KID`.
#[derive(Args)]
#[command(next_help_heading = "Secrets")]
pub(crate) struct SecretArgs {
    /// Where development secrets are kept.
    #[arg(long, env = "RINGSIDE_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl SecretArgs {
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(secrets::default_state_dir)
    }

    pub(crate) fn configured(&self) -> anyhow::Result<(Option<String>, Option<String>)> {
        Ok((
            secrets::from_env("RINGSIDE_DEVICE_TOKEN_SECRET")?,
            secrets::from_env("RINGSIDE_ADMIN_TOKEN")?,
        ))
    }

    /// Configured secrets, else the development ones.
    pub(crate) fn resolve(&self) -> anyhow::Result<Secrets> {
        let (device_token_secret, admin_token) = match self.configured()? {
            (Some(device_token_secret), Some(admin_token)) => (device_token_secret, admin_token),
            (device_token_secret, admin_token) => {
                let development = secrets::development(&self.state_dir())?.with_context(|| {
                    format!(
                        "no secrets: set RINGSIDE_DEVICE_TOKEN_SECRET and RINGSIDE_ADMIN_TOKEN, \
                         or run `ringside serve` once in development mode to create {}",
                        self.state_dir().join("dev-secrets.json").display()
                    )
                })?;
                (
                    device_token_secret.unwrap_or(development.device_token_secret),
                    admin_token.unwrap_or(development.admin_token),
                )
            }
        };
        Ok(Secrets {
            device_token_secret,
            admin_token,
            rotation: secrets::KeyRotation::from_env()?,
        })
    }
}

/// Tier 1 on Kafka. Unset, the process uses its embedded in-memory bus.
#[derive(Args)]
#[command(next_help_heading = "Kafka")]
pub(crate) struct KafkaArgs {
    /// Kafka bootstrap servers (comma-separated host:port); switches tier 1 to Kafka.
    #[arg(long, env = "RINGSIDE_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[arg(long, env = "RINGSIDE_KAFKA_TOPIC", default_value = ringside_kafka::DEFAULT_TOPIC)]
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
    pub(crate) fn setup(&self) -> anyhow::Result<BusSetup> {
        let Some(brokers) = &self.kafka_brokers else {
            return Ok(BusSetup::Memory);
        };
        let mut config = ringside_kafka::KafkaConfig::new(brokers.clone());
        config.topic = self.kafka_topic.clone();
        config.partitions = self.kafka_partitions;
        config.replication = self.kafka_replication;
        if let Some(ms) = self.kafka_publish_timeout_ms {
            // Its range is checked by `KafkaConfig::validate`, from `ServeConfig::validate`.
            config.publish_timeout = Duration::from_millis(ms);
        }
        if let Some(path) = &self.kafka_config_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            config.options = ringside_kafka::KafkaConfig::parse_options(&text)
                .with_context(|| format!("in {}", path.display()))?;
        }
        Ok(BusSetup::Kafka(config))
    }
}

/// Protection of the node under overload (docs/OPERATIONS.md, "Protection").
#[derive(Args)]
#[command(next_help_heading = "Protection")]
pub(crate) struct ProtectionArgs {
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
    #[arg(
        long,
        env = "RINGSIDE_PROTECTION_SHED_PAUSE_MS",
        help = "Pause of a keep-alive connection after its best_effort or bulk request was shed, 0 for none [default: 0]"
    )]
    protection_shed_pause_ms: Option<u64>,
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
    pub(crate) fn config(&self) -> ProtectionConfig {
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
            shed_pause: match self.protection_shed_pause_ms.map(Duration::from_millis) {
                None => defaults.shed_pause,
                Some(pause) => PerClass {
                    best_effort: pause,
                    bulk: pause,
                    ..defaults.shed_pause
                },
            },
            ..defaults
        }
    }
}

/// How the control plane sizes the default `fetch_within_ms` of stage states (see
/// `ringside_control::fetch_window`).
#[derive(Args)]
#[command(next_help_heading = "Follow-up fetch window")]
pub(crate) struct FetchWindowArgs {
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
    /// The window config these flags give; `ServeConfig::validate` checks it.
    pub(crate) fn config(&self) -> ringside_control::FetchWindowConfig {
        let defaults = ringside_control::FetchWindowConfig::default();
        let ms =
            |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
        ringside_control::FetchWindowConfig {
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
        }
    }
}
