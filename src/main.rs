//! `ringside`: run the platform, mint device tokens, operate events and watch them as a device.
//!
//! This file only parses the command line and dispatches; each command lives in a module of
//! `cli`: `serve` (the `serve`, `gateway` and `control` roles), `ops` (`token`, `event`,
//! `stats`, `watch`), `content` (`materialize`, `dataset`, `schema`), and `args` for the flag
//! groups they share.

mod cli;

use clap::{Parser, Subcommand};
use ringside::server::Role;

use cli::content::{DatasetArgs, MaterializeArgs};
use cli::ops::{ClientArgs, EventCommand, TokenArgs, WatchArgs};
use cli::serve::{ControlRoleArgs, GatewayRoleArgs, ServeArgs};

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
    Gateway(Box<GatewayRoleArgs>),
    /// Run a control-plane instance: the admin API and prefetch GraphQL (needs
    /// RINGSIDE_KAFKA_BROKERS and RINGSIDE_REDIS_URL; run several).
    Control(Box<ControlRoleArgs>),
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
        Command::Serve(args) => {
            cli::serve::run_serve(
                &args.node,
                Some(&args.gateway),
                Some(&args.control),
                Role::All,
            )
            .await
        }
        Command::Gateway(args) => {
            cli::serve::run_serve(&args.node, Some(&args.gateway), None, Role::Gateway).await
        }
        Command::Control(args) => {
            cli::serve::run_serve(&args.node, None, Some(&args.control), Role::Control).await
        }
        Command::Token(args) => cli::ops::run_token(args),
        Command::Event(command) => cli::ops::run_event(command).await,
        Command::Stats(client) => cli::ops::run_stats(client).await,
        Command::Watch(args) => cli::ops::run_watch(args).await,
        Command::Materialize(args) => cli::content::run_materialize(args).await,
        Command::Dataset(args) => cli::content::run_dataset(args),
        Command::Schema => {
            cli::content::run_schema();
            Ok(())
        }
    }
}
