//! Ringside's integration tests: one test binary for the whole workspace, so that the
//! workspace (librdkafka included) is linked once instead of once per test file. Each module is
//! one surface, tested from the outside with real parts: real servers on loopback ports, real
//! WebSocket and HTTP clients, the machine's Redis, and a real Kafka-protocol broker (tansu) in
//! the multi-node tests. `cargo nextest run -p ringside --test it` runs them, each test in a
//! process of its own; filter by module, e.g. `-E 'test(/^hostile::/)'`.
//!
//! - [`support`]: a server composed exactly as `ringside serve` composes it, test clients and
//!   Redis key prefixes; [`support::cluster`] for processes on a broker.
//! - [`hostile`]: the hostile-input matrix (`docs/RELIABILITY.md`).
#![allow(clippy::unwrap_used)]
#![allow(missing_debug_implementations)] // test harness types, never logged

mod support;

mod admin;
mod binary;
mod broadcasts;
mod client;
mod cluster;
mod console;
mod control_redis;
mod cors;
mod hostile;
mod origins;
mod prefetch;
mod protection;
mod soak;
mod tls;
mod topics;
mod websocket;
