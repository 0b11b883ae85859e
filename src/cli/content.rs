//! Content commands: `materialize`, `dataset` and `schema`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use ringside::content::{self, CatalogEvents, StoreSetup};
use ringside_auth::DeviceTokenKey;
use ringside_prefetch::generate::DatasetSize;
use ringside_prefetch::{EventSource, PrefetchConfig, PrefetchService};
use ringside_protocol::EventId;

use super::args::ContentArgs;

#[derive(Args)]
pub(crate) struct MaterializeArgs {
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
pub(crate) struct DatasetArgs {
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

pub(crate) async fn run_materialize(args: MaterializeArgs) -> anyhow::Result<()> {
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
        &ringside_telemetry::Registry::new(),
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

pub(crate) fn run_dataset(args: DatasetArgs) -> anyhow::Result<()> {
    let size = DatasetSize {
        titles: args.titles,
        profiles: args.profiles,
        seed: args.seed,
    };
    ringside_prefetch::jsonl::write(&args.out, &ringside_prefetch::generate::generate(size))?;
    println!("wrote {}", args.out.display());
    Ok(())
}

pub(crate) fn run_schema() {
    print!(
        "{}",
        ringside_prefetch::schema::build_schema(Default::default(), true).sdl()
    );
}
