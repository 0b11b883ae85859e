//! Metrics for Ringside's hot paths: plain atomics that cost one relaxed add per update, and a
//! [`Registry`] that renders them in the Prometheus text format for `GET /metrics`.
//!
//! Each library creates its metrics once, at startup, through the registry it is handed, and
//! keeps `Arc`s to them; nothing on a hot path looks a metric up by name.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn increment(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn increment(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decrement(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Latency bucket bounds in microseconds, from 100 µs to 60 s.
pub const LATENCY_BUCKETS_MICROS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A latency histogram with fixed buckets, exported in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_micros: &'static [u64],
    /// One counter per bound, plus the overflow bucket.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_micros: &'static [u64]) -> Self {
        Self {
            bounds_micros,
            buckets: (0..=bounds_micros.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let index = self.bounds_micros.partition_point(|&bound| bound < micros);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

#[derive(Debug)]
struct Entry {
    name: &'static str,
    help: &'static str,
    metric: Metric,
}

/// The set of metrics one process exposes.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<Vec<Entry>>,
}

impl Registry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn register(&self, name: &'static str, help: &'static str, metric: Metric) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.push(Entry { name, help, metric });
    }

    pub fn counter(&self, name: &'static str, help: &'static str) -> Arc<Counter> {
        let counter = Arc::new(Counter::default());
        self.register(name, help, Metric::Counter(counter.clone()));
        counter
    }

    pub fn gauge(&self, name: &'static str, help: &'static str) -> Arc<Gauge> {
        let gauge = Arc::new(Gauge::default());
        self.register(name, help, Metric::Gauge(gauge.clone()));
        gauge
    }

    pub fn latency_histogram(&self, name: &'static str, help: &'static str) -> Arc<Histogram> {
        let histogram = Arc::new(Histogram::new(LATENCY_BUCKETS_MICROS));
        self.register(name, help, Metric::Histogram(histogram.clone()));
        histogram
    }

    /// The Prometheus text exposition (format 0.0.4) of every registered metric.
    pub fn render(&self) -> String {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(entries.len() * 128);
        for entry in entries.iter() {
            let (name, help) = (entry.name, entry.help);
            match &entry.metric {
                Metric::Counter(c) => {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                    let _ = writeln!(out, "{name} {}", c.get());
                }
                Metric::Gauge(g) => {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                    let _ = writeln!(out, "{name} {}", g.get());
                }
                Metric::Histogram(h) => render_histogram(&mut out, name, help, h),
            }
        }
        out
    }
}

fn render_histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, bucket) in histogram.bounds_micros.iter().zip(histogram.buckets.iter()) {
        cumulative += bucket.load(Ordering::Relaxed);
        let seconds = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {cumulative}");
    }
    cumulative += histogram.buckets[histogram.bounds_micros.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_seconds = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum_seconds}\n{name}_count {cumulative}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let registry = Registry::new();
        let sent = registry.counter("ringside_messages_sent_total", "Frames sent.");
        let open = registry.gauge("ringside_connections", "Open connections.");
        let latency = registry.latency_histogram("ringside_latency_seconds", "Latency.");
        sent.add(3);
        open.increment();
        open.increment();
        open.decrement();
        latency.observe(Duration::from_micros(80));
        latency.observe(Duration::from_millis(3));
        latency.observe(Duration::from_secs(120));
        let text = registry.render();
        assert!(text.contains("ringside_messages_sent_total 3\n"), "{text}");
        assert!(text.contains("ringside_connections 1\n"), "{text}");
        assert!(
            text.contains("ringside_latency_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ringside_latency_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ringside_latency_seconds_bucket{le=\"60\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ringside_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("ringside_latency_seconds_count 3\n"),
            "{text}"
        );
    }
}
