//! The operator's commands: `token`, `event`, `stats` and `watch`, all clients of a running node.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ringside::secrets::Secrets;
use ringside_auth::{DeviceClaims, DeviceClass};
use ringside_client::watcher::WatchEvent;
use ringside_client::{AdminClient, Watcher, WatcherConfig};
use ringside_protocol::admin::{CreateEvent, ProtectionStatus, PublishRequest};
use ringside_protocol::{EventId, Payload, Priority, Stage};

use super::args::SecretArgs;

#[derive(Args)]
pub(crate) struct TokenArgs {
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
pub(crate) struct ClientArgs {
    /// Base URL of a Ringside node.
    #[arg(long, env = "RINGSIDE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// How long an admin call waits for its whole answer, in ms.
    #[arg(
        long,
        env = "RINGSIDE_ADMIN_TIMEOUT_MS",
        default_value_t = ringside_client::admin::DEFAULT_TIMEOUT.as_millis() as u64
    )]
    timeout_ms: u64,
    #[command(flatten)]
    secrets: SecretArgs,
}

impl ClientArgs {
    fn admin(&self) -> anyhow::Result<AdminClient> {
        Ok(
            AdminClient::new(self.server.clone(), &self.secrets.resolve()?.admin_token)
                .with_timeout(self.timeout()),
        )
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Subcommand)]
pub(crate) enum EventCommand {
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
pub(crate) struct WatchArgs {
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
    let key = secrets.device_token_key()?;
    let claims = DeviceClaims {
        sub: device.to_owned(),
        profile: profile.to_owned(),
        class,
        exp: unix_now_s() + ttl_s,
        nbf: None,
        priority,
    };
    Ok(key.sign(&claims))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a device token, or the admin token.
pub(crate) fn run_token(args: TokenArgs) -> anyhow::Result<()> {
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

pub(crate) async fn run_event(command: EventCommand) -> anyhow::Result<()> {
    match command {
        EventCommand::Create {
            id,
            title,
            starts_at,
            stages,
            client,
        } => {
            let event = CreateEvent {
                id,
                title,
                starts_at,
                stages,
            };
            print_json(&client.admin()?.create_event(&event).await?)
        }
        EventCommand::List { client } => print_json(&client.admin()?.list_events().await?),
        EventCommand::Publish {
            id,
            stage,
            payload,
            fetch_within_ms,
            client,
        } => {
            let payload = Payload::parse(&payload).context("--payload")?;
            let options = ringside_client::admin::PublishOptions {
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
        EventCommand::Report {
            id,
            version,
            json,
            client,
        } => {
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
    }
}

/// The admin API's stats, with this node's protection state under `"protection"`.
pub(crate) async fn run_stats(client: ClientArgs) -> anyhow::Result<()> {
    let mut stats = serde_json::to_value(client.admin()?.stats().await?)?;
    let bearer = format!("Bearer {}", client.secrets.resolve()?.admin_token);
    let answer = ringside_client::http::call_within(
        client.timeout(),
        &client.server,
        "GET",
        "/v1/admin/protection",
        &[("authorization", &bearer)],
        None,
    )
    .await
    .and_then(|response| ringside_client::admin::decode::<ProtectionStatus>(&response));
    match answer {
        Ok(status) => stats["protection"] = serde_json::to_value(status)?,
        Err(error) => eprintln!("protection state unavailable: {error}"),
    }
    print_json(&stats)
}

pub(crate) async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
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
    let endpoints = nodes
        .iter()
        .map(|n| ringside_client::device::ws_url(n))
        .collect();
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
                println!("{}", ringside_protocol::ServerFrame::State(state).encode());
                received += 1;
                if args.count.is_some_and(|count| received >= count) {
                    return Ok(());
                }
            }
        }
    }
}
