//! `ringside-load` run as a process against a real Ringside node served from this test: what
//! its JSON reports must hold, over two runs in a row against the same node.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ringside::secrets::Secrets;
use ringside::server::{BusSetup, PrefetchSetup, Role};
use ringside::{ServeConfig, serve};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DEVICE_SECRET: &str = "load-test-device-secret-0123456789";
const ADMIN_TOKEN: &str = "load-test-admin-token-0123456789ab";
const PROFILES: &str = "300";

/// A node on a free loopback port, composed as `ringside serve` composes it, with a small
/// catalog; stops when the token is cancelled.
async fn start_node(shutdown: &CancellationToken) -> String {
    let config = ServeConfig {
        role: Role::All,
        bus: BusSetup::Memory,
        gateway: ringside_gateway::GatewayConfig {
            node_id: "load-test".into(),
            ..ringside_gateway::GatewayConfig::default()
        },
        // Test processes share two cores with everything else nextest runs: runtime lag is
        // the machine's, not the node's, so no test sheds on it unless it asks to.
        http: {
            let mut http = ringside::http::HttpConfig::default();
            http.protection.lag_limits = Default::default();
            http.protection.tightened_lag_limits = Default::default();
            http
        },
        secrets: Secrets {
            device_token_secret: DEVICE_SECRET.into(),
            admin_token: ADMIN_TOKEN.into(),
            ..Secrets::default()
        },
        token_rules: ringside_auth::TokenRules::default(),
        prefetch: PrefetchSetup {
            config: ringside_prefetch::PrefetchConfig::default(),
            dataset: ringside::content::DatasetSource::Generated(
                ringside_prefetch::generate::DatasetSize {
                    titles: 2_000,
                    profiles: PROFILES.parse().unwrap(),
                    seed: 7,
                },
            ),
            store: ringside::content::StoreSetup::Memory,
            materialize: ringside::content::MaterializeMode::OnDemand,
        },
        fetch_window: ringside_control::FetchWindowConfig::default(),
        admin_stream: ringside_control::StreamConfig::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, config, shutdown.clone()));
    for _ in 0..500 {
        if ringside_client::http::call(&base, "GET", "/healthz", &[], None)
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return base;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node never became healthy");
}

/// Runs `ringside-load` with `args` and returns the JSON it wrote.
async fn run_load(args: &[&str]) -> Value {
    let output = std::env::temp_dir().join(format!(
        "ringside-load-test-{}-{}.json",
        std::process::id(),
        fastrand::u64(..)
    ));
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ringside-load"))
        .args(args)
        .arg("--output")
        .arg(&output)
        .env("RINGSIDE_DEVICE_TOKEN_SECRET", DEVICE_SECRET)
        .env("RINGSIDE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("ringside-load finished")
        .unwrap();
    assert!(
        run.status.success(),
        "ringside-load {args:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    std::fs::remove_file(&output).unwrap();
    report
}

fn versions(report: &Value) -> Vec<u64> {
    report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["version"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_runs_in_a_row_each_count_every_delivery() {
    let shutdown = CancellationToken::new();
    let base = start_node(&shutdown).await;
    let fanout = [
        "fanout",
        "--server",
        &base,
        "--connections",
        "60",
        "--workers",
        "2",
        "--source-addresses",
        "2",
        "--publishes",
        "3",
        "--publish-interval-ms",
        "100",
        "--connect-rate",
        "600",
    ];
    let first = run_load(&fanout).await;
    // The second run's devices subscribe to an event that already has a state, which they get
    // at once: it is not one of the run's updates.
    let second = run_load(&fanout).await;
    for report in [&first, &second] {
        assert_eq!(report["connected"], 60);
        assert_eq!(report["expected"], 180);
        assert_eq!(report["delivered"], 180, "{report}");
        for update in report["updates"].as_array().unwrap() {
            assert_eq!(update["delivered"], 60);
            assert!(update["latency"]["max_ms"].as_f64().unwrap() > 0.0);
        }
        let cdf = report["cdf"].as_array().unwrap();
        assert_eq!(cdf.last().unwrap()[1].as_f64().unwrap(), 1.0);
    }
    let all: Vec<u64> = versions(&first)
        .into_iter()
        .chain(versions(&second))
        .collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "versions {all:?}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_reports_every_class() {
    let shutdown = CancellationToken::new();
    let base = start_node(&shutdown).await;
    // Rates this node serves easily: every class succeeds, nothing is shed or left unsent.
    let report = run_load(&[
        "overload",
        "--server",
        &base,
        "--profiles",
        PROFILES,
        "--duration-s",
        "1",
        "--publish-rate",
        "5",
        "--live-rate",
        "20",
        "--background-rate",
        "10",
        "--bulk-rate",
        "10",
        "--label",
        "tiny",
    ])
    .await;
    assert_eq!(report["label"], "tiny");
    let classes = report["classes"].as_array().unwrap();
    let names: Vec<&str> = classes
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "critical: operator publish",
            "degraded: live-path query",
            "best_effort: background prefetch",
            "bulk: bulk prefetch (misses)"
        ]
    );
    let priorities: Vec<&str> = classes
        .iter()
        .map(|c| c["priority"].as_str().unwrap())
        .collect();
    assert_eq!(priorities, ["critical", "degraded", "best_effort", "bulk"]);
    let mut goodput = 0.0;
    for (class, scheduled) in classes.iter().zip([5, 20, 10, 10]) {
        goodput += class["succeeded_per_second"].as_f64().unwrap();
        assert_eq!(class["scheduled"], scheduled, "{class}");
        assert_eq!(class["succeeded"], scheduled, "{class}");
        assert_eq!(class["shed"], 0);
        assert_eq!(class["failed"], 0);
        assert_eq!(class["unsent"], 0);
    }
    assert!((report["goodput_per_second"].as_f64().unwrap() - goodput).abs() < 1e-6);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_devices_read_the_window_from_the_state() {
    let shutdown = CancellationToken::new();
    let base = start_node(&shutdown).await;
    let kickoff = |window: &'static str| {
        let base = base.clone();
        async move {
            let mut args = vec![
                "kickoff",
                "--server",
                &base,
                "--profiles",
                PROFILES,
                "--devices",
                "20",
                "--prefetch-window-s",
                "1",
                "--prefetch-share",
                "0.5",
            ];
            if !window.is_empty() {
                args.extend(["--fetch-within-ms", window]);
            }
            run_load(&args).await
        }
    };
    // Twice on the same node: each run starts the event over from its first stage.
    let set = kickoff("700").await;
    let default = kickoff("").await;
    for report in [&set, &default] {
        assert_eq!(report["state_delivered"], 20, "{report}");
        assert_eq!(
            report["switched_from_cache"].as_u64().unwrap()
                + report["had_to_fetch"].as_u64().unwrap(),
            20
        );
        assert_eq!(report["fetch_errors"], 0);
    }
    assert_eq!(set["fetch_within_ms_published"], 700);
    assert_eq!(
        set["fetch_within_ms"], 700,
        "the operator's window, as devices saw it"
    );
    assert!(default["fetch_within_ms_published"].is_null());
    // 20 devices are far below one node's capacity: the control plane's minimum window.
    assert_eq!(default["fetch_within_ms"], 1000);
    shutdown.cancel();
}
