//! Real processes for the multi-node tests: a Kafka-protocol broker (tansu, memory storage) and
//! `ringside gateway` / `ringside control` nodes, each on a loopback port of its own, with their
//! logs in a folder the test prints.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use ringside_client::{AdminClient, DeviceConnection};
use ringside_protocol::admin::{PublishReceipt, PublishRequest, Stats};
use ringside_protocol::{EventId, Payload, Stage};

use super::tansu;
use super::{ADMIN_TOKEN, DEVICE_SECRET, PROMPTLY, device_token};

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill {signal} failed");
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file")
}

/// A tansu broker keeping everything in memory.
pub struct Broker {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Broker {
    fn start(dir: &Path) -> Self {
        let port = tansu::free_port();
        let child = Self::spawn(dir, port);
        Self {
            port,
            child,
            dir: dir.to_owned(),
        }
    }

    fn spawn(dir: &Path, port: u16) -> Child {
        tansu::spawn(
            port,
            log_file(dir, "broker").into(),
            log_file(dir, "broker").into(),
        )
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `SIGSTOP`: the broker keeps its sockets open and answers nothing.
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// Kills the broker (`SIGKILL`) and starts a new, empty one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir, self.port);
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        signal_quietly(&self.child, "-CONT");
        self.kill();
    }
}

fn signal_quietly(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
}

/// One `ringside` process.
pub struct Node {
    pub name: String,
    pub base: String,
    pub ws_url: String,
    child: Child,
    /// Kept open: the process prints its banner here.
    _stdout: BufReader<ChildStdout>,
}

impl Node {
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.base.clone(), ADMIN_TOKEN)
    }

    pub async fn device(&self, name: &str) -> DeviceConnection {
        DeviceConnection::connect(&self.ws_url, &device_token(name, 3600))
            .await
            .unwrap_or_else(|error| panic!("device {name} on {}: {error}", self.name))
    }

    /// The process id, for its resource use.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no drain, no goaway, no registry removal.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    pub async fn publish(&self, event: &EventId, stage: &str) -> Result<PublishReceipt, String> {
        let request = PublishRequest {
            stage: Stage::parse(stage).expect("stage"),
            payload: Payload::empty(),
        };
        match tokio::time::timeout(PROMPTLY, self.admin().publish(event, &request)).await {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => panic!("publish through {} hung", self.name),
        }
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        self.admin()
            .stats()
            .await
            .map_err(|error| error.to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        signal_quietly(&self.child, "-CONT");
        self.kill();
    }
}

/// A broker plus the environment every node of one test shares.
pub struct Cluster {
    pub broker: Broker,
    pub dir: PathBuf,
    redis_url: String,
    redis_prefix: String,
}

impl Cluster {
    /// A new broker, with nodes keeping their Redis keys under `redis_prefix` of `redis_url`.
    pub fn start(test: &str, redis_url: &str, redis_prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ringside-{test}-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("log folder");
        eprintln!("cluster logs: {}", dir.display());
        Self {
            broker: Broker::start(&dir),
            dir,
            redis_url: redis_url.to_owned(),
            redis_prefix: redis_prefix.to_owned(),
        }
    }

    pub async fn gateway(&self, name: &str) -> Node {
        self.node("gateway", name, &[]).await
    }

    /// A gateway with more environment variables (set after, so overriding, the shared ones).
    pub async fn gateway_with(&self, name: &str, env: &[(&str, &str)]) -> Node {
        self.node("gateway", name, env).await
    }

    pub async fn control(&self, name: &str) -> Node {
        self.node("control", name, &[]).await
    }

    /// A gateway listening on `port` (a restarted one comes back where its devices know it).
    pub async fn gateway_at(&self, name: &str, port: u16) -> Node {
        self.node_at("gateway", name, &format!("127.0.0.1:{port}"), &[])
            .await
    }

    async fn node(&self, role: &str, name: &str, env: &[(&str, &str)]) -> Node {
        self.node_at(role, name, "127.0.0.1:0", env).await
    }

    async fn node_at(&self, role: &str, name: &str, listen: &str, env: &[(&str, &str)]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args([role, "--listen", listen, "--node-id", name])
            .env("RINGSIDE_DEVICE_TOKEN_SECRET", DEVICE_SECRET)
            .env("RINGSIDE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RINGSIDE_KAFKA_BROKERS", self.broker.address())
            .env("RINGSIDE_KAFKA_PUBLISH_TIMEOUT_MS", "2000")
            .env("RINGSIDE_REDIS_URL", &self.redis_url)
            .env("RINGSIDE_REDIS_PREFIX", &self.redis_prefix)
            .env("RINGSIDE_DATASET_TITLES", "300")
            .env("RINGSIDE_DATASET_PROFILES", "50")
            .env("RINGSIDE_MATERIALIZE", "on-demand")
            .env("RINGSIDE_SHUTDOWN_GRACE_MS", "3000")
            .env("RINGSIDE_SEND_TIMEOUT_MS", "2000")
            .env("RINGSIDE_DRAIN_WINDOW_MAX_MS", "500")
            .env("RINGSIDE_GOAWAY_GRACE_MS", "200")
            .env("RINGSIDE_STATE_DIR", &self.dir)
            .env("RUST_BACKTRACE", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log_file(&self.dir, name))
            .spawn()
            .expect("ringside starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let banner = tokio::task::block_in_place(|| {
            let mut line = String::new();
            stdout.read_line(&mut line).map(|_| line)
        })
        .expect("banner");
        let address = banner
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| {
                panic!(
                    "{name} did not start: {banner:?}; see {}",
                    self.dir.display()
                )
            })
            .to_owned();
        let node = Node {
            name: name.to_owned(),
            base: format!("http://{address}"),
            ws_url: format!("ws://{address}/v1/ws"),
            child,
            _stdout: stdout,
        };
        wait_healthy(&node).await;
        node
    }
}

async fn wait_healthy(node: &Node) {
    let deadline = tokio::time::Instant::now() + PROMPTLY * 3;
    loop {
        let call = ringside_client::http::call(&node.base, "GET", "/healthz", &[], None);
        let answer = tokio::time::timeout(Duration::from_secs(1), call).await;
        if answer.is_ok_and(|answer| answer.is_ok_and(|response| response.status == 200)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never became healthy",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `probe` every 100 ms until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
