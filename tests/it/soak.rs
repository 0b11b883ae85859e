//! The fault soak (issue #15): a device fleet on three gateways over a Kafka-protocol broker
//! (tansu) and Redis, random publishes to several events through two control instances, and
//! faults injected one after another: `kill -9` of a gateway, a drained gateway, a broker
//! restart (it comes back empty), a Redis restart, `SIGSTOP`/`SIGCONT` stalls of a gateway, of
//! the broker and of Redis, and devices that reconnect with a stale `since`.
//!
//! At the end, with every process back:
//! - every device holds, for every event it subscribed to, the same version as every other
//!   device, and at least the newest version any publish was answered 200 for and the newest the
//!   store holds (a publish answered 200 reached the devices, or a newer one they hold did);
//! - no node ever sent a device a version that was not newer than the one it held;
//! - the control instances, which run throughout, stayed within their memory and
//!   file-descriptor bounds.
//!
//! It prints one summary line: minutes, devices, publishes, faults by kind, lost updates.
//! Bounded by `RINGSIDE_SOAK_SECONDS` of faults (default 40: each kind once) with
//! `RINGSIDE_SOAK_DEVICES` devices (default 120); the extended mode of `scripts/test` runs it
//! longer and larger.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringside_client::watcher::WatchEvent;
use ringside_client::{AdminClient, Watcher, WatcherConfig};
use ringside_protocol::admin::PublishRequest;
use ringside_protocol::{EventId, Payload, ServerFrame, Stage, Topic};
use ringside_sync_util::LockExt;
use tokio_util::sync::CancellationToken;

use crate::support::cluster::{Cluster, Node};
use crate::support::tansu::free_port;
use crate::support::{ADMIN_TOKEN, OwnRedis, PROMPTLY, create_event, device_token, subscribe};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillGateway,
    DrainGateway,
    RestartBroker,
    RestartRedis,
    StallGateway,
    StallBroker,
    StallRedis,
    StaleSince,
}

const FAULTS: [Fault; 8] = [
    Fault::KillGateway,
    Fault::StallBroker,
    Fault::DrainGateway,
    Fault::StallRedis,
    Fault::RestartBroker,
    Fault::StallGateway,
    Fault::RestartRedis,
    Fault::StaleSince,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::KillGateway => "kill9_gateway",
            Self::DrainGateway => "drain_gateway",
            Self::RestartBroker => "restart_broker",
            Self::RestartRedis => "restart_redis",
            Self::StallGateway => "stall_gateway",
            Self::StallBroker => "stall_broker",
            Self::StallRedis => "stall_redis",
            Self::StaleSince => "stale_since",
        }
    }
}

/// How long a stall lasts, and the pause after each fault before the next.
const STALL: Duration = Duration::from_secs(2);
const SETTLE: Duration = Duration::from_secs(2);
/// How long the fleet has, once every fault is over, to hold the newest of everything.
const CONVERGE_WITHIN: Duration = Duration::from_secs(60);
/// Events published to.
const EVENTS: usize = 4;
/// Devices of each stale-`since` round.
const STALE_DEVICES: usize = 5;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Resident memory (KiB) and open file descriptors of process `pid`.
fn resources(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count() as u64);
    (rss, fds)
}

/// What the publisher saw.
#[derive(Debug, Default)]
struct Publishes {
    attempted: u64,
    answered_200: u64,
    unrecorded: u64,
    /// The newest version answered 200, per event.
    accepted: HashMap<EventId, u64>,
}

/// Publishes at random to `events` through `admins` until `stop`.
async fn publish_until(
    stop: CancellationToken,
    admins: Vec<AdminClient>,
    events: Vec<EventId>,
    publishes: Arc<Mutex<Publishes>>,
) {
    let mut rng = fastrand::Rng::new();
    let stages = ["UPCOMING", "LIVE", "ENDED"];
    while !stop.is_cancelled() {
        let event = &events[rng.usize(..events.len())];
        let admin = &admins[rng.usize(..admins.len())];
        let request = PublishRequest {
            stage: Stage::parse(stages[rng.usize(..stages.len())]).unwrap(),
            payload: Payload::empty(),
        };
        publishes.locked().attempted += 1;
        if let Ok(Ok(receipt)) =
            tokio::time::timeout(PROMPTLY, admin.publish(event, &request)).await
        {
            let mut seen = publishes.locked();
            seen.answered_200 += 1;
            seen.unrecorded += u64::from(!receipt.recorded);
            let newest = seen.accepted.entry(event.clone()).or_default();
            *newest = (*newest).max(receipt.version);
        }
        tokio::time::sleep(Duration::from_millis(30 + rng.u64(..40))).await;
    }
}

/// One device of the fleet: a watcher that keeps `held` (its newest stage-state version per
/// topic) and `stale` (states sent that were not newer) up to date until `stop`.
async fn watch_until(
    stop: CancellationToken,
    config: WatcherConfig,
    held: Arc<Mutex<HashMap<Topic, u64>>>,
    stale: Arc<Mutex<u64>>,
) {
    let mut watcher = Watcher::new(config);
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => {
                // Stale states are swallowed inside `next`: the count as of the end.
                *stale.locked() = watcher.stale_states();
                return;
            }
            event = watcher.next() => event,
        };
        match event {
            WatchEvent::State(state) if state.priority.is_critical() => {
                held.locked().insert(state.topic.clone(), state.version);
            }
            WatchEvent::Refused { reason } => panic!("a device was refused for good: {reason}"),
            _ => {}
        }
        *stale.locked() = watcher.stale_states();
    }
}

/// Devices that connect with `since` 1, far behind: each must be sent only newer versions, in
/// order, up to at least the newest answered 200 when it subscribed. Returns how many did.
async fn stale_since_round(
    gateways: &[Node],
    events: &[EventId],
    publishes: &Mutex<Publishes>,
) -> usize {
    let mut done = 0;
    for n in 0..STALE_DEVICES {
        let gateway = &gateways[n % gateways.len()];
        let event = &events[n % events.len()];
        let Ok(Ok(mut device)) = tokio::time::timeout(
            PROMPTLY,
            ringside_client::DeviceConnection::connect(
                &gateway.ws_url,
                &device_token(&format!("stale-{n}"), 3600),
            ),
        )
        .await
        else {
            continue;
        };
        let target = publishes.locked().accepted.get(event).copied().unwrap_or(0);
        subscribe(&mut device, &[(event.topic(), 1)]).await;
        let mut last = 1;
        while last < target {
            let frame = tokio::time::timeout(PROMPTLY, device.next_frame()).await;
            match frame {
                Ok(Ok(ServerFrame::State(state))) if state.priority.is_critical() => {
                    assert!(
                        state.version > last,
                        "a stale-since device was sent {} after {last}",
                        state.version
                    );
                    last = state.version;
                }
                Ok(Ok(_)) => {}
                // Its node went away (a fault of the next round, or a drain): not a loss.
                Ok(Err(_)) => break,
                Err(_) => panic!("a stale-since device waited for {target} and got nothing"),
            }
        }
        done += usize::from(last >= target);
    }
    done
}

#[tokio::test(flavor = "multi_thread")]
async fn soak_no_update_answered_200_is_lost_through_faults() {
    let seconds = env_or("RINGSIDE_SOAK_SECONDS", 40);
    let device_count = env_or("RINGSIDE_SOAK_DEVICES", 120) as usize;
    let seed = env_or("RINGSIDE_SOAK_SEED", fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let data = std::env::temp_dir().join(format!("ringside-soak-{}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let mut redis = OwnRedis::start_persistent(&data);
    let mut cluster = Cluster::start("soak", &redis.url(), "ringside-soak:");
    let controls = [cluster.control("c1").await, cluster.control("c2").await];
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut gateways = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        gateways.push(cluster.gateway_at(&format!("g{index}"), *port).await);
    }
    let endpoints: Vec<String> = gateways.iter().map(|node| node.ws_url.clone()).collect();
    let mut events = Vec::new();
    for index in 0..EVENTS {
        let event = create_event(&controls[0].admin(), &format!("soak-{index}")).await;
        controls[0].publish(&event, "UPCOMING").await.unwrap();
        events.push(event);
    }

    // The fleet: each device on every other event (and at least one), reconnecting over the
    // three gateways.
    let stop_devices = CancellationToken::new();
    let mut fleet = Vec::new();
    for n in 0..device_count {
        let topics: Vec<Topic> = events
            .iter()
            .enumerate()
            .filter(|(index, _)| (n + index) % 2 == 0)
            .map(|(_, event)| event.topic())
            .collect();
        let mut config = WatcherConfig::new(
            endpoints.clone(),
            device_token(&format!("soak-{n}"), 3600),
            topics.clone(),
        );
        config.ack = false;
        config.max_backoff = Duration::from_secs(2);
        let (held, stale) = (Arc::default(), Arc::default());
        let task = tokio::spawn(watch_until(
            stop_devices.clone(),
            config,
            Arc::clone(&held),
            Arc::clone(&stale),
        ));
        fleet.push((topics, held, stale, task));
    }

    let publishes = Arc::new(Mutex::new(Publishes::default()));
    let stop_publishing = CancellationToken::new();
    let publisher = tokio::spawn(publish_until(
        stop_publishing.clone(),
        controls.iter().map(Node::admin).collect(),
        events.clone(),
        publishes.clone(),
    ));
    tokio::time::sleep(SETTLE).await;
    let baseline: Vec<(u64, u64)> = controls.iter().map(|node| resources(node.pid())).collect();

    let started = Instant::now();
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut stale_devices = 0;
    let mut round = 0;
    while round < FAULTS.len() || started.elapsed() < Duration::from_secs(seconds) {
        let fault = FAULTS
            .get(round)
            .copied()
            .unwrap_or_else(|| FAULTS[rng.usize(..FAULTS.len())]);
        round += 1;
        *faults.entry(fault.name()).or_default() += 1;
        let index = rng.usize(..gateways.len());
        let name = format!("g{index}");
        match fault {
            Fault::KillGateway => {
                gateways[index].kill();
                tokio::time::sleep(STALL).await;
                gateways[index] = cluster.gateway_at(&name, ports[index]).await;
            }
            Fault::DrainGateway => {
                let drained = ringside_client::http::call_within(
                    PROMPTLY,
                    &controls[0].base,
                    "POST",
                    &format!("/v1/admin/nodes/{name}/drain"),
                    &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                    None,
                )
                .await
                .unwrap();
                assert!(
                    (200..300).contains(&drained.status),
                    "drain of {name}: {}",
                    drained.text()
                );
                // The drain window (500 ms here) and the goaway grace, then the node is
                // replaced by a fresh one.
                tokio::time::sleep(STALL).await;
                gateways[index].kill();
                gateways[index] = cluster.gateway_at(&name, ports[index]).await;
            }
            Fault::RestartBroker => cluster.broker.restart(),
            Fault::RestartRedis => redis.restart(),
            Fault::StallGateway => {
                gateways[index].pause();
                tokio::time::sleep(STALL).await;
                gateways[index].resume();
            }
            Fault::StallBroker => {
                cluster.broker.pause();
                tokio::time::sleep(STALL).await;
                cluster.broker.resume();
            }
            Fault::StallRedis => {
                redis.pause();
                tokio::time::sleep(STALL).await;
                redis.resume();
            }
            Fault::StaleSince => {
                stale_devices += stale_since_round(&gateways, &events, &publishes).await;
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
    let fault_time = started.elapsed();
    stop_publishing.cancel();
    publisher.await.unwrap();

    // Every process is back. What must every device hold, per event: the store's version and
    // anything answered 200, whichever is newer.
    let accepted = std::mem::take(&mut publishes.locked().accepted);
    let stored = crate::support::cluster::eventually(
        "the control plane lists the events",
        PROMPTLY * 3,
        || async {
            let listed = controls[0].admin().list_events().await.ok()?;
            Some(
                listed
                    .into_iter()
                    .map(|event| (event.id, event.version))
                    .collect::<HashMap<_, _>>(),
            )
        },
    )
    .await;
    let target = |event: &EventId| {
        let answered = accepted.get(event).copied().unwrap_or(0);
        stored.get(event).copied().unwrap_or(0).max(answered)
    };
    // Devices converge on one version per event, at least the target.
    let lagging = || {
        let mut lagging = Vec::new();
        let mut held_by_topic: HashMap<Topic, u64> = HashMap::new();
        let mut split = false;
        for (n, (topics, held, _, _)) in fleet.iter().enumerate() {
            let held = held.locked();
            for (event, topic) in events.iter().map(|event| (event, event.topic())) {
                if !topics.contains(&topic) {
                    continue;
                }
                let version = held.get(&topic).copied().unwrap_or(0);
                if version < target(event) {
                    lagging.push(format!(
                        "device {n} holds {version} of {event}, not {}",
                        target(event)
                    ));
                }
                split |= *held_by_topic.entry(topic).or_insert(version) != version;
            }
        }
        (lagging, split)
    };
    let deadline = Instant::now() + CONVERGE_WITHIN;
    let (lost, split) = loop {
        let (lagging, split) = lagging();
        if (lagging.is_empty() && !split) || Instant::now() > deadline {
            break (lagging, split);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_devices.cancel();
    let stale: u64 = fleet.iter().map(|(_, _, stale, _)| *stale.locked()).sum();
    for (_, _, _, task) in fleet {
        task.await.unwrap();
    }
    let ended: Vec<(u64, u64)> = controls.iter().map(|node| resources(node.pid())).collect();

    let faults_text: Vec<String> = faults
        .iter()
        .map(|(kind, n)| format!("{kind}={n}"))
        .collect();
    let seen = publishes.locked();
    println!(
        "soak: {:.1} minutes, {device_count} devices, {} publishes ({} answered 200, {} of them unrecorded at first), faults: {}, stale-since devices caught up: {stale_devices}, lost updates: {} (seed {seed})",
        fault_time.as_secs_f64() / 60.0,
        seen.attempted,
        seen.answered_200,
        seen.unrecorded,
        faults_text.join(" "),
        lost.len(),
    );
    assert!(seen.answered_200 > 0, "nothing was published");
    assert!(
        lost.is_empty(),
        "lost updates: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(!split, "devices of one event ended on different versions");
    assert_eq!(
        stale, 0,
        "nodes sent states that were not newer than the held ones"
    );
    let stale_rounds = faults.get("stale_since").copied().unwrap_or(0) as usize;
    assert!(
        stale_devices >= stale_rounds,
        "only {stale_devices} stale-since devices caught up over {stale_rounds} rounds"
    );
    // The bounds of a control instance over the soak: its file descriptors (sockets to Redis,
    // the broker and the admin calls in flight) and its memory (no per-publish growth).
    for ((name, (rss0, fds0)), (rss1, fds1)) in ["c1", "c2"].iter().zip(&baseline).zip(&ended) {
        assert!(
            fds1 <= &(fds0 + 64),
            "{name}: {fds0} file descriptors, then {fds1}"
        );
        assert!(
            rss1 <= &(rss0 * 2 + 64 * 1024),
            "{name}: {rss0} KiB resident, then {rss1} KiB"
        );
    }
    drop(gateways);
    drop(controls);
    drop(redis);
    let _ = std::fs::remove_dir_all(&data);
}
