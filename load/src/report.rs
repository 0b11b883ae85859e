//! Results: per-update latency percentiles from merged HDR histograms.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50_ms: ms(histogram.value_at_quantile(0.5)),
            p90_ms: ms(histogram.value_at_quantile(0.9)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// One published update.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub version: u64,
    pub delivered: u64,
    pub expected: u64,
    /// Latency of every delivery of this update; `max_ms` is when the last device had it.
    pub latency: Latency,
}

/// The storm part of a run: the node taken down under load and brought back.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub signal: crate::coordinator::StormSignal,
    /// From the signal until the restarted node answered `/healthz`.
    pub node_back_after_ms: u64,
    pub reconnects: u64,
    /// From the signal until the last device had reconnected.
    pub all_reconnected_after_ms: u64,
    pub peak_reconnects_per_second: u64,
    /// Reconnections per 100 ms from the signal on.
    pub reconnects_per_100ms: Vec<u64>,
    /// Devices that received the state published once the node was back, and when the last did.
    pub newest_delivered: u64,
    pub newest_last_device_ms: f64,
}

/// A `fanout` run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub storm: Option<StormReport>,
    pub connections: usize,
    pub connected: usize,
    pub workers: usize,
    pub payload_bytes: usize,
    pub gateway_rss_before_bytes: Option<u64>,
    pub gateway_rss_after_bytes: Option<u64>,
    pub gateway_bytes_per_connection: Option<f64>,
    /// CPU time the server processes used from the first publish until the last delivery
    /// (or the timeout), per delivery, in microseconds: what fan-out costs the server.
    #[serde(default)]
    pub gateway_cpu_us_per_delivery: Option<f64>,
    /// The same for the load tool's worker processes: what receiving costs the simulated
    /// devices, which share the machine with the server.
    #[serde(default)]
    pub fleet_cpu_us_per_delivery: Option<f64>,
    pub load_average_before: Option<f64>,
    pub load_average_after: Option<f64>,
    pub updates: Vec<UpdateReport>,
    pub delivered: u64,
    pub expected: u64,
    /// Over every delivery of every update.
    pub overall: Latency,
    /// The latency distribution over every delivery: (latency ms, fraction delivered by then).
    #[serde(default)]
    pub cdf: Vec<(f64, f64)>,
    /// Median over updates of the time until the last device had the update.
    pub median_time_to_last_device_ms: f64,
    pub clock_note: &'static str,
}

/// Points of a histogram's cumulative distribution: (value in ms, fraction at or below it).
pub fn cdf_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = (0..=100)
        .map(|i| f64::from(i) / 100.0)
        .chain([0.995, 0.999, 0.9999, 1.0])
        .map(|q| (histogram.value_at_quantile(q) as f64 / 1000.0, q))
        .collect();
    points.sort_by(|a, b| a.1.total_cmp(&b.1));
    points
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

impl FanoutReport {
    pub fn print_table(&self) {
        println!(
            "fanout: {} of {} devices connected over {} workers; payload {} B",
            self.connected, self.connections, self.workers, self.payload_bytes
        );
        if let (Some(before), Some(after), Some(per)) = (
            self.gateway_rss_before_bytes,
            self.gateway_rss_after_bytes,
            self.gateway_bytes_per_connection,
        ) {
            println!(
                "gateway RSS: {:.1} MiB before, {:.1} MiB connected: {per:.0} B per idle connection",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            );
        }
        if let (Some(server), Some(fleet)) = (
            self.gateway_cpu_us_per_delivery,
            self.fleet_cpu_us_per_delivery,
        ) {
            println!("CPU per delivery: server {server:.2} µs, load workers {fleet:.2} µs");
        }
        println!(
            "{:>14} {:>16} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "version", "delivered", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "last ms"
        );
        for update in &self.updates {
            let l = &update.latency;
            println!(
                "{:>14} {:>16} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                update.version,
                format!("{}/{}", update.delivered, update.expected),
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms
            );
        }
        let l = &self.overall;
        println!(
            "all: delivered {}/{} ({:.3}%); p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms; median time to last device {:.1} ms",
            self.delivered,
            self.expected,
            100.0 * self.delivered as f64 / self.expected.max(1) as f64,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            self.median_time_to_last_device_ms
        );
        if let (Some(before), Some(after)) = (self.load_average_before, self.load_average_after) {
            println!("load average (1 min): {before:.2} before, {after:.2} after");
        }
        if let Some(storm) = &self.storm {
            println!(
                "storm ({:?}): node back after {} ms; {} reconnects, all back after {} ms, peak {} reconnects/s; newest state reached {}/{} devices, the last {:.1} ms after publish",
                storm.signal,
                storm.node_back_after_ms,
                storm.reconnects,
                storm.all_reconnected_after_ms,
                storm.peak_reconnects_per_second,
                storm.newest_delivered,
                self.connected,
                storm.newest_last_device_ms
            );
        }
        println!("note: {}", self.clock_note);
    }
}
