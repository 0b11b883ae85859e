//! A tansu broker (a Kafka-protocol broker) of a test's own, in memory on a free loopback port.
//! Shared by the root crate's cluster tests and `kafka/tests/lanes.rs` (which includes this
//! file by path), so the two start their brokers the same way.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker has to listen once started.
const LISTEN_WITHIN: Duration = Duration::from_secs(20);

/// Where the tansu binary is: `$RINGSIDE_TANSU`, else `tansu` on the PATH, else Cargo's bin
/// folder (where `scripts/test` installs it).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGSIDE_TANSU") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("tansu"))
        .find(|candidate| candidate.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .or_else(|| cargo_home.map(|home| home.join("bin/tansu")))
        .filter(|path| path.is_file())
        .expect("tansu not found: scripts/test installs it (cargo install tansu --version 0.6.0 --locked --features dynostore)")
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Starts a broker keeping everything in memory on `port`, its output to `stdout` and
/// `stderr`, and returns once it listens.
pub fn spawn(port: u16, stdout: Stdio, stderr: Stdio) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(binary())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("tansu starts");
    let deadline = Instant::now() + LISTEN_WITHIN;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}
