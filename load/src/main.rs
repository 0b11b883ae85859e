//! `ringside-load`: measure a Ringside deployment with a simulated device fleet.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use load::coordinator::{FanoutPlan, run_fanout};
use load::wire::WorkerPlan;
use protocol::EventId;

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
    /// Internal: one worker process of a run.
    #[command(hide = true)]
    Worker { plan: String },
}

#[derive(clap::Args)]
struct FanoutArgs {
    #[arg(long, env = "RINGSIDE_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[arg(long, env = "RINGSIDE_DEVICE_TOKEN_SECRET", hide_env_values = true)]
    device_token_secret: String,
    #[arg(long, env = "RINGSIDE_ADMIN_TOKEN", hide_env_values = true)]
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
    /// PID of the gateway process whose RSS to report.
    #[arg(long)]
    gateway_pid: Option<u32>,
    #[arg(long, default_value_t = 8)]
    source_addresses: usize,
    /// Fleet-wide new connections per second.
    #[arg(long, default_value_t = 5000.0)]
    connect_rate: f64,
    #[arg(long, default_value_t = 1024)]
    read_buffer_bytes: usize,
    #[arg(long, default_value_t = 30)]
    delivery_timeout_s: u64,
    /// Write the JSON result here.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Worker { plan } => {
            let plan: WorkerPlan = serde_json::from_str(&plan)?;
            // One thread per worker: the fleet spreads over processes, not threads.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(load::fleet::run_worker(plan))?;
            std::process::exit(0);
        }
        Command::Fanout(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(run_fanout(FanoutPlan {
                server: args.server,
                device_token_secret: args.device_token_secret,
                admin_token: args.admin_token,
                connections: args.connections,
                workers: args.workers,
                publishes: args.publishes,
                publish_interval: Duration::from_millis(args.publish_interval_ms),
                event: args.event,
                payload_bytes: args.payload_bytes,
                gateway_pid: args.gateway_pid,
                source_addresses: args.source_addresses,
                connect_rate: args.connect_rate,
                read_buffer_bytes: args.read_buffer_bytes,
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
