//! A Rust client for Ringside, used by `ringside watch`, the tests and the load tool.
//!
//! - [`device`]: [`DeviceConnection`], one WebSocket connection speaking protocol v1.
//! - [`watcher`]: [`Watcher`], a device that stays subscribed across disconnects: it reconnects
//!   over a list of nodes with the delays of [`backoff`] (decorrelated jitter, never sooner
//!   than a refusal's `Retry-After`), honours `goaway`, and resubscribes with the last version
//!   it saw so it catches up exactly.
//! - [`admin`]: [`AdminClient`], the typed admin API, and [`http`], a minimal HTTP/1.1 call.
//! - [`tls`]: `https://` and `wss://`, trusting the platform's roots and `RINGSIDE_CA_FILE`.

pub mod admin;
pub mod backoff;
pub mod device;
pub mod http;
pub mod tls;
pub mod watcher;

pub use admin::AdminClient;
pub use device::{ConnectFailure, ConnectOptions, DeviceConnection};
pub use watcher::{Watcher, WatcherConfig};

use ringside_protocol::admin::ApiError;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid address {0:?}")]
    InvalidAddress(String),
    #[error("cannot connect: {0}")]
    Connect(#[from] std::io::Error),
    /// The WebSocket upgrade was answered with an HTTP status instead of `101`
    /// ([`DeviceConnection::try_connect`] also reports its `Retry-After`).
    #[error("server refused the connection with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("server sent an invalid frame: {0}")]
    Decode(#[from] ringside_protocol::DecodeError),
    #[error("connection closed by the server (code {code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("server sent {0} where it should have sent {1}")]
    Unexpected(String, &'static str),
    #[error("HTTP error: {0}")]
    Http(String),
    #[error("admin API answered {status}: {}", error.error.message)]
    Api { status: u16, error: ApiError },
    #[error("timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// True when retrying the same request cannot succeed: a malformed address, or a refusal
    /// that is not about load (401, 400, …; but not 429 or 5xx).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidAddress(_) => true,
            Self::Refused { status, .. } => (400..500).contains(status) && *status != 429,
            _ => false,
        }
    }
}
