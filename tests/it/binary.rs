//! The `ringside` binary itself: serve, the operator CLI and `watch`, as a user runs them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ringside");

struct StateDir(PathBuf);

impl StateDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ringside-bin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ringside(state: &StateDir, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("RINGSIDE_STATE_DIR", &state.0)
        .env_remove("RINGSIDE_DEVICE_TOKEN_SECRET")
        .env_remove("RINGSIDE_ADMIN_TOKEN")
        .env_remove("RINGSIDE_SERVER")
        .env_remove("RINGSIDE_LISTEN")
        // A small catalog keeps a debug build's startup short.
        .env("RINGSIDE_DATASET_TITLES", "2000")
        .env("RINGSIDE_DATASET_PROFILES", "300");
    command
}

fn run_ok(command: &mut Command) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().unwrap();
    assert!(
        status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    String::from_utf8(stdout).unwrap()
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the banner's first line (`… listening on ADDRESS (…`).
fn banner_address(first: &str) -> String {
    first
        .split_whitespace()
        .skip_while(|word| *word != "on")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned()
}

/// `ringside serve` on a free loopback port with `env` set, and its banner's lines after the
/// first.
fn serve_with(state: &StateDir, env: &[(&str, &str)]) -> (Server, Vec<String>) {
    let mut command = ringside(state, &["serve", "--listen", "127.0.0.1:0"]);
    command.envs(env.iter().copied());
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let address = banner_address(&first);
    let banner: Vec<String> = lines.by_ref().take(8).map(|l| l.unwrap()).collect();
    std::thread::spawn(move || lines.for_each(drop));
    let server = Server {
        child,
        base: format!("http://{address}"),
    };
    (server, banner)
}

fn start_server(state: &StateDir) -> Server {
    let (server, banner) = serve_with(state, &[]);
    assert!(
        banner.iter().any(|l| l.contains("ringside token --device")),
        "{banner:?}"
    );
    assert!(
        banner.iter().any(|l| l.contains("DEVELOPMENT secrets")),
        "{banner:?}"
    );
    server
}

#[test]
fn serve_publish_and_watch_through_the_binary() {
    let state = StateDir::new("e2e");
    let mut server = start_server(&state);
    let server_flag = ["--server", server.base.as_str()];

    let created = run_ok(
        ringside(
            &state,
            &[
                "event",
                "create",
                "my-show",
                "--title",
                "Fight Night",
                "--starts-at",
                "2026-12-01T20:00:00Z",
            ],
        )
        .args(server_flag),
    );
    assert!(created.contains(r#""topic": "event:my-show""#), "{created}");

    let watch = ringside(&state, &["watch", "--event", "my-show", "--count", "1"])
        .args(server_flag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until the watcher has connected and received one state: it may connect after
    // the first publish, in which case it catches up on subscribe.
    let started = Instant::now();
    let published = run_ok(
        ringside(
            &state,
            &[
                "event",
                "publish",
                "my-show",
                "--stage",
                "LIVE",
                "--payload",
                r#"{"hero":"h1"}"#,
            ],
        )
        .args(server_flag),
    );
    // The version is the publish's millisecond clock: only the receipt knows which one it is.
    let receipt: ringside_protocol::admin::PublishReceipt =
        serde_json::from_str(&published).unwrap();
    assert!(receipt.version > 0, "{published}");
    let output = watch.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let line = String::from_utf8(output.stdout).unwrap();
    assert!(line.contains(r#""type":"state""#), "{line}");
    assert!(line.contains(r#""stage":"LIVE""#), "{line}");
    assert!(line.contains(r#""payload":{"hero":"h1"}"#), "{line}");
    let watched: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(watched["version"], receipt.version, "{line}");

    let listed = run_ok(ringside(&state, &["event", "list"]).args(server_flag));
    let events: Vec<ringside_protocol::admin::EventSummary> =
        serde_json::from_str(&listed).unwrap();
    let versions: Vec<u64> = events
        .iter()
        .filter(|event| event.topic.as_str() == "event:my-show")
        .map(|event| event.version)
        .collect();
    assert_eq!(versions, [receipt.version], "{listed}");

    // The delivery report: the version the watcher was sent, as JSON and as tables.
    let reported =
        run_ok(ringside(&state, &["event", "report", "my-show", "--json"]).args(server_flag));
    let list: ringside_protocol::admin::BroadcastList = serde_json::from_str(&reported).unwrap();
    let sent: Vec<(u64, u64)> = list
        .broadcasts
        .iter()
        .map(|b| (b.version, b.sent))
        .collect();
    assert_eq!(sent, [(receipt.version, 1)], "{reported}");
    let table = run_ok(ringside(&state, &["event", "report", "my-show"]).args(server_flag));
    assert!(table.starts_with("         VERSION  STAGE"), "{table}");
    assert!(table.contains(&receipt.version.to_string()), "{table}");
    let version = receipt.version.to_string();
    let one = run_ok(ringside(&state, &["event", "report", "my-show", &version]).args(server_flag));
    assert!(
        one.starts_with(&format!("event my-show  version {version}  stage LIVE")),
        "{one}"
    );
    assert!(one.contains("sent 1  acked"), "{one}");
    let missing = ringside(&state, &["event", "report", "my-show", "7"])
        .args(server_flag)
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "a version no node recorded is an error"
    );
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // SIGTERM drains and exits cleanly.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "serve exited with {status}");
}

#[test]
fn token_command_mints_verifiable_tokens() {
    let state = StateDir::new("token");
    let secret = "a-device-token-secret-of-enough-length!";
    let token = run_ok(
        ringside(
            &state,
            &[
                "token",
                "--device",
                "tv-9",
                "--profile",
                "p-9",
                "--class",
                "mobile",
            ],
        )
        .env("RINGSIDE_DEVICE_TOKEN_SECRET", secret)
        .env(
            "RINGSIDE_ADMIN_TOKEN",
            "an-admin-token-of-enough-length-000000",
        ),
    );
    let key = ringside_auth::DeviceTokenKey::new(secret.as_bytes()).unwrap();
    let claims = key
        .verify(token.trim(), ringside_protocol::unix_now_ms() / 1000)
        .unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.profile.as_str()),
        ("tv-9", "p-9")
    );
    assert_eq!(claims.class, ringside_auth::DeviceClass::Mobile);

    // Without configuration or a development secrets file there is nothing to sign with.
    let refused = ringside(&state, &["token", "--device", "d", "--profile", "p"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("RINGSIDE_DEVICE_TOKEN_SECRET"));
}

/// TLS through the binary: `serve` with `RINGSIDE_TLS_CERT` and `RINGSIDE_TLS_KEY` answers on
/// `https://` and `wss://`, and the CLI reaches it with `--server https://…` when it trusts the
/// deployment's CA through `RINGSIDE_CA_FILE`, and refuses to otherwise.
#[test]
fn the_cli_publishes_and_watches_over_tls_trusting_the_ca_file() {
    let state = StateDir::new("tls");
    let (files, _) = crate::support::pki::leaf("binary");
    let ca = crate::support::pki::pki()
        .ca_file
        .to_str()
        .unwrap()
        .to_owned();
    let (server, banner) = serve_with(
        &state,
        &[
            ("RINGSIDE_TLS_CERT", files.cert.to_str().unwrap()),
            ("RINGSIDE_TLS_KEY", files.key.to_str().unwrap()),
        ],
    );
    assert!(
        banner.iter().any(|line| line.contains("wss://")),
        "{banner:?}"
    );
    let https = server.base.replace("http://", "https://");
    let cli = |args: &[&str]| {
        let mut command = ringside(&state, args);
        command
            .args(["--server", https.as_str()])
            .env("RINGSIDE_CA_FILE", &ca);
        command
    };
    let untrusted = ringside(&state, &["event", "list", "--server", https.as_str()])
        .output()
        .unwrap();
    assert!(!untrusted.status.success());
    let refused = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        refused.contains("TLS") && refused.contains("UnknownIssuer"),
        "{refused}"
    );

    run_ok(&mut cli(&[
        "event",
        "create",
        "tls-show",
        "--title",
        "Over TLS",
        "--starts-at",
        "2026-12-01T20:00:00Z",
    ]));
    let watch = cli(&["watch", "--event", "tls-show", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let published = run_ok(&mut cli(&[
        "event",
        "publish",
        "tls-show",
        "--stage",
        "LIVE",
        "--payload",
        r#"{"over":"tls"}"#,
    ]));
    let receipt: ringside_protocol::admin::PublishReceipt =
        serde_json::from_str(&published).unwrap();
    let output = watch.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let watched: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    assert_eq!(watched["version"], receipt.version);
    assert_eq!(watched["payload"]["over"], "tls");
}

/// A rotation of the device-token secret as docs/OPERATIONS.md describes it, through the
/// binary: tokens of the old secret keep working while it is the previous one, new tokens carry
/// the new key's `kid`, and once the old secret is removed its tokens are refused.
#[test]
fn a_device_secret_rotates_without_refusing_tokens_until_the_old_one_is_removed() {
    let state = StateDir::new("rotation");
    let old = "the-old-device-token-secret-0123456789";
    let new = "the-new-device-token-secret-0123456789";
    let admin = (
        "RINGSIDE_ADMIN_TOKEN",
        "an-admin-token-of-enough-length-000000",
    );
    let mint = |env: &[(&str, &str)]| {
        let mut command = ringside(
            &state,
            &["token", "--device", "tv-r", "--profile", "p000001"],
        );
        command.envs(env.iter().copied()).env(admin.0, admin.1);
        run_ok(&mut command).trim().to_owned()
    };
    let before = mint(&[("RINGSIDE_DEVICE_TOKEN_SECRET", old)]);
    let during_env = [
        ("RINGSIDE_DEVICE_TOKEN_SECRET", new),
        ("RINGSIDE_DEVICE_TOKEN_KID", "2026-12"),
        ("RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET", old),
        admin,
    ];
    let after_env = [
        ("RINGSIDE_DEVICE_TOKEN_SECRET", new),
        ("RINGSIDE_DEVICE_TOKEN_KID", "2026-12"),
        admin,
    ];
    let during = mint(&during_env);
    let header = |token: &str| {
        use base64::Engine;
        let header = token.split('.').next().unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()
    };
    assert_eq!(header(&during)["kid"], "2026-12");
    assert_eq!(header(&before).get("kid"), None);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let prefetch = |base: String, token: String| async move {
        let bearer = format!("Bearer {token}");
        let answer = ringside_client::http::call(
            &base,
            "POST",
            "/graphql",
            &[("authorization", bearer.as_str())],
            Some(br#"{"query":"{ prefetch { profileId } }"}"#.to_vec()),
        )
        .await
        .unwrap();
        (
            answer.status,
            String::from_utf8_lossy(&answer.body).into_owned(),
        )
    };
    let (server, _) = serve_with(&state, &during_env);
    runtime.block_on(async {
        for token in [&before, &during] {
            let (status, body) = prefetch(server.base.clone(), token.clone()).await;
            assert_eq!(status, 200, "{body}");
        }
    });
    drop(server);
    let (server, _) = serve_with(&state, &after_env);
    runtime.block_on(async {
        let (status, _) = prefetch(server.base.clone(), during.clone()).await;
        assert_eq!(status, 200);
        let (status, body) = prefetch(server.base.clone(), before.clone()).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("signature does not verify"), "{body}");
    });
}

/// Development mode reads the key id as the CLI does: a kid set in a development shell signs
/// `ringside token`'s tokens, and the development server accepts them (before, the server
/// ignored it and refused every such token as naming an unknown key).
#[test]
fn a_development_server_and_the_cli_agree_on_the_key_id() {
    let state = StateDir::new("dev-kid");
    let kid = [("RINGSIDE_DEVICE_TOKEN_KID", "dev-1")];
    let (server, _) = serve_with(&state, &kid);
    let mut mint = ringside(
        &state,
        &["token", "--device", "tv-k", "--profile", "p000001"],
    );
    let token = run_ok(mint.envs(kid)).trim().to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let answer = runtime.block_on(ringside_client::http::call(
        &server.base,
        "POST",
        "/graphql",
        &[("authorization", &format!("Bearer {token}"))],
        Some(br#"{"query":"{ prefetch { profileId } }"}"#.to_vec()),
    ));
    let answer = answer.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[test]
fn production_mode_refuses_to_start_without_secrets() {
    let state = StateDir::new("prod");
    let output = ringside(
        &state,
        &["serve", "--production", "--listen", "127.0.0.1:0"],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no default secrets"), "{stderr}");
    assert!(
        !state.0.exists(),
        "production mode must not create development secrets"
    );

    let public = ringside(&state, &["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!public.status.success());
    assert!(String::from_utf8_lossy(&public.stderr).contains("not a loopback address"));

    let short = ringside(&state, &["serve", "--listen", "127.0.0.1:0"])
        .env("RINGSIDE_DEVICE_TOKEN_SECRET", "short")
        .env("RINGSIDE_ADMIN_TOKEN", "also-short")
        .output()
        .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 32 bytes"));

    // The renamed origin list is not silently ignored.
    let renamed = ringside(&state, &["serve", "--listen", "127.0.0.1:0"])
        .env("RINGSIDE_CORS_ORIGINS", "https://tv.example.com")
        .output()
        .unwrap();
    assert!(!renamed.status.success());
    assert!(String::from_utf8_lossy(&renamed.stderr).contains("RINGSIDE_WEB_ORIGINS"));
}

/// No log line, at any level, carries a secret or a token: a node with known secrets and
/// `RINGSIDE_LOG=trace` is called with them the ways devices and operators do (bearer headers,
/// `?token=` on the WebSocket and GraphQL GET, a wrong admin token, an expired device token),
/// and everything it printed is searched for them.
#[test]
fn no_log_line_carries_a_secret_or_a_token() {
    let state = StateDir::new("secrets");
    let secret = "device-secret-for-the-log-test-0123456789";
    let admin = "admin-token-for-the-log-test-0123456789ab";
    let wrong_admin = "wrong-admin-token-for-the-log-test-98765";
    let previous = "previous-device-secret-for-the-log-test-0";
    let with_secrets = |command: &mut Command| {
        command
            .env("RINGSIDE_DEVICE_TOKEN_SECRET", secret)
            .env("RINGSIDE_DEVICE_TOKEN_KID", "k2")
            .env("RINGSIDE_DEVICE_TOKEN_PREVIOUS_SECRET", previous)
            .env("RINGSIDE_ADMIN_TOKEN", admin);
    };
    let mut serve = ringside(&state, &["serve", "--listen", "127.0.0.1:0"]);
    with_secrets(&mut serve);
    let logs = state.0.join("serve.log");
    std::fs::create_dir_all(&state.0).unwrap();
    let mut child = serve
        .env("RINGSIDE_LOG", "trace")
        // No skew: the `--ttl-s 0` token below is refused at once.
        .env("RINGSIDE_TOKEN_CLOCK_SKEW_S", "0")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&logs).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = stdout.next().unwrap().unwrap();
    let address = banner_address(&first);
    let banner = std::thread::spawn(move || {
        let mut all = first;
        for line in stdout.map_while(Result::ok) {
            all.push('\n');
            all.push_str(&line);
        }
        all
    });
    let base = format!("http://{address}");
    let mut mint = ringside(
        &state,
        &["token", "--device", "tv-log", "--profile", "p000001"],
    );
    with_secrets(&mut mint);
    let device = run_ok(&mut mint).trim().to_owned();
    let mut mint_expired = ringside(
        &state,
        &[
            "token",
            "--device",
            "tv-old",
            "--profile",
            "p000001",
            "--ttl-s",
            "0",
        ],
    );
    with_secrets(&mut mint_expired);
    let expired = run_ok(&mut mint_expired).trim().to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let call = |method: &'static str, path: String, bearer: Option<&str>| {
            let base = base.clone();
            let bearer = bearer.map(|token| format!("Bearer {token}"));
            async move {
                let headers: Vec<(&str, &str)> = bearer
                    .as_deref()
                    .map(|b| vec![("authorization", b)])
                    .unwrap_or_default();
                let body = (method == "POST")
                    .then(|| br#"{"query":"{ prefetch { profileId } }"}"#.to_vec());
                ringside_client::http::call(&base, method, &path, &headers, body)
                    .await
                    .unwrap()
                    .status
            }
        };
        assert_eq!(call("POST", "/graphql".into(), Some(&device)).await, 200);
        let get = format!("/graphql?query=%7Bprefetch%7BprofileId%7D%7D&token={device}");
        assert_eq!(call("GET", get, None).await, 200);
        assert_eq!(call("POST", "/graphql".into(), Some(&expired)).await, 401);
        assert_eq!(
            call("GET", "/v1/admin/stats".into(), Some(admin)).await,
            200
        );
        assert_eq!(
            call("GET", "/v1/admin/stats".into(), Some(wrong_admin)).await,
            401
        );
        let ws = ringside_client::device::ws_url(&base);
        let connection = ringside_client::DeviceConnection::connect(&ws, &device)
            .await
            .unwrap();
        let _ = connection.close().await;
        assert!(
            ringside_client::DeviceConnection::connect(&ws, &expired)
                .await
                .is_err()
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    let printed = format!(
        "{}\n{}",
        banner.join().unwrap(),
        std::fs::read_to_string(&logs).unwrap()
    );
    assert!(
        printed.contains(" TRACE ") && printed.contains(" DEBUG "),
        "every level was on: {printed}"
    );
    for (name, value) in [
        ("device secret", secret),
        ("previous device secret", previous),
        ("admin token", admin),
        ("wrong admin token", wrong_admin),
        ("device token", device.as_str()),
        ("expired token", expired.as_str()),
    ] {
        if let Some(line) = printed.lines().find(|line| line.contains(value)) {
            panic!("the {name} is in a log line: {line}");
        }
    }
}
