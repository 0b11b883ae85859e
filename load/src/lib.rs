//! `ringside-load`: a simulated device fleet that measures Ringside.
//!
//! One coordinator process spawns worker processes (each holds at most its share of the fleet,
//! under the per-process open-files limit) and talks to them over their stdin and stdout with
//! one JSON object per line ([`wire`]).
//!
//! - [`fleet`]: a worker: opens its connections from several loopback source addresses at a
//!   jittered rate, subscribes each, timestamps every `state` received.
//! - [`coordinator`]: spawns workers, waits until the fleet is subscribed, measures the
//!   gateway's memory, publishes through the admin API, and merges the workers' samples.
//! - [`html`]: a standalone HTML report with plots, from any result files.
//! - [`http_bench`]: requests per second and latency of HTTP targets measured side by side.
//! - [`kickoff`]: prefetch over a window, then LIVE: who switched from cache, who had to fetch
//!   (at a random moment of the state's `fetch_within_ms`), and the follow-up wave.
//! - [`origin`]: the page-store read rate while a fleet keeps its prefetch fresh.
//! - [`overload`]: classes of HTTP/GraphQL traffic marked with their priority, above capacity,
//!   open loop: success, p99, shed answers and goodput per class, runs side by side.
//! - [`report`]: latency percentiles per update from HDR histograms, as a table and as JSON.
//! - [`system`]: RSS of a process and the machine's load average, from `/proc`.
//!
//! Latency is the device's receive time minus the state's `published_at_ms`, both read from the
//! same machine's clock; `published_at_ms` has millisecond resolution, so each sample may read up
//! to 1 ms high.

pub mod coordinator;
pub mod fleet;
pub mod html;
pub mod http_bench;
pub mod kickoff;
pub mod origin;
pub mod overload;
pub mod peers;
pub mod report;
pub mod system;
pub mod wire;
