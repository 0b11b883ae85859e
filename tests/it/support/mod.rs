//! Shared by the integration tests: a real server on port 0, composed exactly as `ringside
//! serve` composes it, and real clients.
#![allow(dead_code)]

pub mod cluster;
pub mod pki;
pub mod tansu;

use std::net::SocketAddr;
use std::time::Duration;

use ringside::secrets::Secrets;
use ringside::{ServeConfig, serve};
use ringside_auth::{DeviceClaims, DeviceClass, DeviceTokenKey};
use ringside_client::{AdminClient, DeviceConnection};
use ringside_gateway::{DrainReport, GatewayConfig};
use ringside_protocol::admin::{CreateEvent, PublishReceipt, PublishRequest};
use ringside_protocol::{EventId, EventState, Payload, ServerFrame, Stage, Topic};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous bound for anything that should happen promptly; it only catches a hang.
pub const PROMPTLY: Duration = Duration::from_secs(10);

pub const DEVICE_SECRET: &str = "test-device-secret-0123456789abcdef";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub ws_url: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<DrainReport>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_configured(configure, |_| {}, |_| {}).await
    }

    pub async fn start_with_http(configure: impl FnOnce(&mut ringside::http::HttpConfig)) -> Self {
        Self::start_configured(|_| {}, configure, |_| {}).await
    }

    pub async fn start_with_prefetch(
        configure: impl FnOnce(&mut ringside::server::PrefetchSetup),
    ) -> Self {
        Self::start_configured(|_| {}, |_| {}, configure).await
    }

    pub async fn start_configured(
        configure: impl FnOnce(&mut GatewayConfig),
        configure_http: impl FnOnce(&mut ringside::http::HttpConfig),
        configure_prefetch: impl FnOnce(&mut ringside::server::PrefetchSetup),
    ) -> Self {
        Self::start_with_config(|config| {
            configure_prefetch(&mut config.prefetch);
            configure_http(&mut config.http);
            configure(&mut config.gateway);
        })
        .await
    }

    /// A server with the test configuration changed by `configure`.
    pub async fn start_with_config(configure: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut gateway = GatewayConfig {
            node_id: "test-node".into(),
            ..GatewayConfig::default()
        };
        gateway.shutdown_grace = Duration::from_secs(3);
        gateway.send_timeout = Duration::from_secs(2);
        // A drain of a test node fits its short shutdown grace (window + grace + 2 s close).
        gateway.drain_window_max = Duration::from_millis(500);
        gateway.goaway_grace = Duration::from_millis(200);
        let mut config = ServeConfig {
            role: ringside::server::Role::All,
            bus: ringside::server::BusSetup::Memory,
            gateway,
            // Test processes share two cores with everything else nextest runs: runtime lag is
            // the machine's, not the node's, so no test sheds on it unless it asks to.
            http: {
                let mut http = ringside::http::HttpConfig::default();
                http.protection.lag_limits = Default::default();
                http.protection.tightened_lag_limits = Default::default();
                http
            },
            prefetch: test_prefetch_setup(),
            // Subscriber counts read afresh on every publish, so a test's devices count at once.
            fetch_window: ringside_control::FetchWindowConfig {
                subscribers_max_age: Duration::ZERO,
                ..ringside_control::FetchWindowConfig::default()
            },
            // Checked often, so a test's stream sees a publish soon.
            admin_stream: ringside_control::StreamConfig {
                check_interval: Duration::from_millis(100),
                ..ringside_control::StreamConfig::default()
            },
            secrets: Secrets {
                device_token_secret: DEVICE_SECRET.into(),
                admin_token: ADMIN_TOKEN.into(),
                ..Secrets::default()
            },
            // No clock skew: the tests' tokens expire when they say (one machine, one clock).
            token_rules: ringside_auth::TokenRules {
                clock_skew: Duration::ZERO,
                ..ringside_auth::TokenRules::default()
            },
        };
        configure(&mut config);
        let (http, ws) = match config.http.tls {
            Some(_) => ("https", "wss"),
            None => ("http", "ws"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(serve(listener, config, shutdown.clone()));
        let server = Self {
            addr,
            base: format!("{http}://{addr}"),
            ws_url: format!("{ws}://{addr}/v1/ws"),
            shutdown,
            handle,
        };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + PROMPTLY;
        loop {
            if let Ok(response) =
                ringside_client::http::call(&self.base, "GET", "/healthz", &[], None).await
                && response.status == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.base.clone(), ADMIN_TOKEN)
    }

    pub async fn device(&self) -> DeviceConnection {
        self.device_named("device").await
    }

    pub async fn device_named(&self, name: &str) -> DeviceConnection {
        DeviceConnection::connect(&self.ws_url, &device_token(name, 3600))
            .await
            .unwrap()
    }

    /// Creates an event with stages UPCOMING, LIVE, ENDED.
    pub async fn create_event(&self, id: &str) -> EventId {
        create_event(&self.admin(), id).await
    }

    pub async fn publish(&self, id: &EventId, stage: &str, payload: &str) -> PublishReceipt {
        let request = PublishRequest {
            stage: Stage::parse(stage).unwrap(),
            payload: Payload::parse(payload).unwrap(),
        };
        self.admin().publish(id, &request).await.unwrap()
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let text = ringside_client::http::call(&self.base, "GET", "/metrics", &[], None)
            .await
            .unwrap()
            .text();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Sends a GraphQL query with a device token; returns the HTTP answer and its JSON body.
    pub async fn graphql(
        &self,
        token: &str,
        body: serde_json::Value,
    ) -> (ringside_client::http::HttpResponse, serde_json::Value) {
        let bearer = format!("Bearer {token}");
        let response = ringside_client::http::call(
            &self.base,
            "POST",
            "/graphql",
            &[("authorization", &bearer)],
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
        let json = serde_json::from_slice(&response.body).unwrap_or(serde_json::Value::Null);
        (response, json)
    }

    /// Cancels the server (as SIGTERM does) without waiting: its drain starts.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Cancels the server and waits for its drain.
    pub async fn stop(self) -> DrainReport {
        self.shutdown.cancel();
        tokio::time::timeout(PROMPTLY, self.handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }
}

/// A small catalog (every test builds its own in well under a second), kept in memory and
/// materialized on demand.
pub fn test_prefetch_setup() -> ringside::server::PrefetchSetup {
    ringside::server::PrefetchSetup {
        config: ringside_prefetch::PrefetchConfig::default(),
        dataset: ringside::content::DatasetSource::Generated(
            ringside_prefetch::generate::DatasetSize {
                titles: 2_000,
                profiles: 300,
                seed: 7,
            },
        ),
        store: ringside::content::StoreSetup::Memory,
        materialize: ringside::content::MaterializeMode::OnDemand,
    }
}

/// Creates an event with stages UPCOMING, LIVE, ENDED through `admin`.
pub async fn create_event(admin: &AdminClient, id: &str) -> EventId {
    let event = CreateEvent {
        id: EventId::parse(id).unwrap(),
        title: format!("Event {id}"),
        starts_at: "2026-12-01T20:00:00Z".into(),
        stages: ["UPCOMING", "LIVE", "ENDED"]
            .iter()
            .map(|s| Stage::parse(s).unwrap())
            .collect(),
    };
    admin.create_event(&event).await.unwrap().id
}

pub fn device_token(device: &str, ttl_s: i64) -> String {
    profile_token(device, &format!("profile-{device}"), ttl_s)
}

/// A TV token of `device` that may read `profile`, valid for `ttl_s` seconds (negative: expired).
pub fn profile_token(device: &str, profile: &str, ttl_s: i64) -> String {
    let key = DeviceTokenKey::new(DEVICE_SECRET.as_bytes()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = now.saturating_add_signed(ttl_s);
    key.sign(&DeviceClaims {
        sub: device.into(),
        profile: profile.into(),
        class: DeviceClass::Tv,
        exp,
        nbf: None,
        priority: None,
    })
}

pub fn topic(id: &EventId) -> Topic {
    id.topic()
}

/// The next frame, failing the test if none comes promptly.
pub async fn next_frame(device: &mut DeviceConnection) -> ServerFrame {
    tokio::time::timeout(PROMPTLY, device.next_frame())
        .await
        .expect("a frame in time")
        .unwrap()
}

/// The next state frame, skipping `subscribed` and `unsubscribed` answers.
pub async fn next_state(device: &mut DeviceConnection) -> EventState {
    loop {
        match next_frame(device).await {
            ServerFrame::State(state) => return state,
            ServerFrame::Subscribed { .. } | ServerFrame::Unsubscribed { .. } => {}
            other => panic!("expected a state, got {other:?}"),
        }
    }
}

/// Subscribes and waits for the `subscribed` answer.
pub async fn subscribe(device: &mut DeviceConnection, topics: &[(Topic, u64)]) {
    device.subscribe(topics).await.unwrap();
    match next_frame(device).await {
        ServerFrame::Subscribed { topics: answered } => {
            assert_eq!(
                answered,
                topics.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>()
            );
        }
        other => panic!("expected subscribed, got {other:?}"),
    }
}

/// Reads until the server closes; returns the frames before the close and the close code and
/// reason.
pub async fn read_until_close(device: &mut DeviceConnection) -> (Vec<ServerFrame>, u16, String) {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(PROMPTLY, device.next_frame())
            .await
            .expect("close in time")
        {
            Ok(frame) => frames.push(frame),
            Err(ringside_client::ClientError::Closed { code, reason }) => {
                return (frames, code, reason);
            }
            Err(other) => panic!("expected a close, got {other}"),
        }
    }
}

/// Keys under a prefix of their own in the machine's Redis, deleted when dropped.
pub struct RedisKeys {
    pub url: String,
    pub prefix: String,
}

impl RedisKeys {
    /// A node's store in these keys.
    pub fn store(&self) -> ringside::content::StoreSetup {
        ringside::content::StoreSetup::Redis {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
        }
    }

    pub fn new(test: &str) -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: format!(
                "ringside-test:{test}:{}:{}:",
                std::process::id(),
                fastrand::u32(..)
            ),
        }
    }

    pub async fn count(&self) -> usize {
        let client = redis::Client::open(self.url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut connection)
            .await
            .unwrap();
        keys.len()
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut connection) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut connection)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
            }
        }
    }
}

/// A Redis server of the test's own, so that stopping it disturbs nobody else.
pub struct OwnRedis {
    pub child: std::process::Child,
    pub port: u16,
    /// The arguments it was started with, to start it again alike.
    args: Vec<String>,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_with(&["--port", "{port}"])
    }

    /// A Redis that keeps its data across [`OwnRedis::restart`]: an append-only file in `dir`,
    /// written through on every command.
    pub fn start_persistent(dir: &std::path::Path) -> Self {
        Self::start_with(&[
            "--port",
            "{port}",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            dir.to_str().expect("a UTF-8 path"),
        ])
    }

    /// `redis-server` with `args` (`{port}` stands for the port it listens on; they override
    /// the defaults: in memory only).
    fn start_with(args: &[&str]) -> Self {
        let port = 20_000 + (std::process::id() % 20_000) as u16 + fastrand::u16(..1000);
        let port_text = port.to_string();
        let args: Vec<String> = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .into_iter()
            .chain(args.iter().copied())
            .map(|arg| {
                if arg == "{port}" {
                    port_text.clone()
                } else {
                    arg.to_owned()
                }
            })
            .collect();
        let child = Self::spawn(&args, port);
        Self { child, port, args }
    }

    fn spawn(args: &[String], port: u16) -> std::process::Child {
        let child = std::process::Command::new("redis-server")
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services installs it)");
        let deadline = std::time::Instant::now() + PROMPTLY;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "own redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// `kill -9`, then the same server again on the same port (with what it persisted, if it
    /// persists).
    pub fn restart(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.args, self.port);
    }

    /// A Redis that speaks only TLS (`rediss://`), with `files` as its certificate.
    pub fn start_tls(files: &ringside::tls::TlsFiles) -> Self {
        Self::start_with(&[
            "--port",
            "0",
            "--tls-port",
            "{port}",
            "--tls-cert-file",
            files.cert.to_str().unwrap(),
            "--tls-key-file",
            files.key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ])
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `SIGSTOP`: Redis keeps its sockets and answers nothing, like an unreachable server.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebSocket upgrade request to `address`'s `/v1/ws` with `token` as a bearer header, to add
/// headers to before sending it with `tokio_tungstenite::connect_async`.
pub fn bearer_upgrade(
    address: SocketAddr,
    token: &str,
) -> tokio_tungstenite::tungstenite::http::request::Builder {
    tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("ws://{address}/v1/ws"))
        .header("host", address.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
}
