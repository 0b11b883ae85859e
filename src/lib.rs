//! The `ringside` binary's library: it composes the platform's crates into one process.
//!
//! - [`server`]: [`server::serve`] runs the gateway, the control plane, `/healthz` and
//!   `/metrics` on one listener with the embedded (in-memory) bus and store, until a
//!   cancellation token fires; then it drains. Tests start it on port 0 exactly as `main` does.
//! - [`broadcast_table`]: the tables `ringside event report` prints.
//! - [`console`]: the ops console's static files, embedded, served under `/console` by every
//!   process that serves the admin API.
//! - [`content`]: the prefetch catalog, page store and event bridge a process serves from.
//! - [`fleet_redis`]: a gateway node's event store, node registry and broadcast records in
//!   Redis, as the backends of `ringside_gateway::fleet` (its reconciler and reports).
//! - [`overload`]: protection wired in: the bus observer that feeds its ruleset stage
//!   transitions, and the poller of the fleet-wide protection setting.
//! - [`secrets`]: where the device-token secret and the admin token come from: configuration,
//!   or in development a generated pair kept in the state directory.
//!
//! The CLI (`src/main.rs`) only parses arguments and calls into this library and the `client`
//! crate.

pub mod broadcast_table;
pub mod console;
pub mod content;
pub mod fleet_redis;
pub mod http;
pub mod origin;
pub mod overload;
pub mod secrets;
pub mod server;
pub mod tls;

pub use server::{ServeConfig, serve};
