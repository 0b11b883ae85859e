//! Metrics for Ringside's hot paths: relaxed atomic adds, striped per thread so that threads
//! updating the same metric (every session counts its sends) never share a cache line, and a
//! [`Registry`] that renders them in the Prometheus text format for `GET /metrics`.
//!
//! Each library creates its metrics once, at startup, through the registry it is handed, and
//! keeps `Arc`s to them; nothing on a hot path looks a metric up by name. A labelled series
//! ([`Registry::labelled_counter`]) is one more such `Arc`: callers create every label
//! combination they will use up front and index them, so that labels cost nothing per update.
//! [`Registry::counter_family`] creates a one-label family at once and hands back its series
//! in the order of the label values given, for callers to destructure into named fields.
//!
//! Why our own registry rather than `prometheus-client` or the `metrics` facade: both resolve
//! a labelled series per update (`Family::get_or_create` takes a lock and hashes the label
//! set; the facade's macros look the key up in the recorder), while every label set Ringside
//! uses is known at startup. Pre-created series keep an update one relaxed add on a stripe of
//! its own, and the crate needs no dependency beyond `sync-util`. The price is that a label
//! value not known at startup cannot be counted: none is, by design (unbounded label values
//! would be unbounded series).
//!
//! - [`log_budget`]: [`LogBudget`], a per-site rate limit for log lines on hot paths, with a
//!   counter of what it suppressed.

pub mod log_budget;

pub use log_budget::LogBudget;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringside_sync_util::LockExt;

/// Stripes per metric. Threads take stripes round-robin, so up to this many threads update a
/// metric without contending; readers sum the stripes.
const STRIPES: usize = 8;

/// One stripe on cache lines of its own (128 bytes: adjacent-line prefetch pairs lines).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// This thread's stripe.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter([Padded<AtomicU64>; STRIPES]);

impl Counter {
    pub fn increment(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
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

    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
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

/// Most bucket bounds a histogram may have: each stripe holds its buckets, the overflow
/// bucket, the sum and the count in 32 slots.
const MAX_BOUNDS: usize = 29;

/// One thread stripe of a histogram: `[buckets…, overflow, sum, count]`, used up to
/// `bounds + 3`.
type HistogramStripe = Padded<[AtomicU64; MAX_BOUNDS + 3]>;

/// A latency histogram with fixed buckets, exported in seconds.
#[derive(Debug)]
pub struct Histogram {
    bounds_micros: &'static [u64],
    stripes: Box<[HistogramStripe]>,
}

/// A histogram's totals, summed over its stripes.
struct HistogramTotals {
    /// Per bucket (not cumulative), the overflow bucket last.
    buckets: Vec<u64>,
    sum_micros: u64,
    count: u64,
}

impl Histogram {
    /// # Panics
    /// With more than 29 bounds (a programming error: bounds are constants).
    pub fn new(bounds_micros: &'static [u64]) -> Self {
        assert!(
            bounds_micros.len() <= MAX_BOUNDS,
            "too many histogram bounds"
        );
        Self {
            bounds_micros,
            stripes: (0..STRIPES)
                .map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }

    pub fn observe(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        let index = self.bounds_micros.partition_point(|&bound| bound < micros);
        let slots = &self.stripes[stripe()].0;
        let sum = self.bounds_micros.len() + 1;
        slots[index].fetch_add(1, Ordering::Relaxed);
        slots[sum].fetch_add(micros, Ordering::Relaxed);
        slots[sum + 1].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.totals().count
    }

    fn totals(&self) -> HistogramTotals {
        let used = self.bounds_micros.len() + 3;
        let mut slots = vec![0u64; used];
        for stripe in &self.stripes {
            for (total, slot) in slots.iter_mut().zip(&stripe.0[..used]) {
                *total += slot.load(Ordering::Relaxed);
            }
        }
        let count = slots.pop().unwrap_or(0);
        let sum_micros = slots.pop().unwrap_or(0);
        HistogramTotals {
            buckets: slots,
            sum_micros,
            count,
        }
    }
}

/// A gauge read only when the metrics are rendered: for values another structure already keeps
/// (a limiter's current limit, requests in flight), so that the hot path updates nothing extra.
pub type ComputedGauge = Arc<dyn Fn() -> i64 + Send + Sync>;

enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Computed(ComputedGauge),
    Histogram(Arc<Histogram>),
}

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Counter(c) => f.debug_tuple("Counter").field(c).finish(),
            Self::Gauge(g) => f.debug_tuple("Gauge").field(g).finish(),
            Self::Computed(_) => f.write_str("Computed"),
            Self::Histogram(h) => f.debug_tuple("Histogram").field(h).finish(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    name: &'static str,
    help: &'static str,
    labels: Vec<(&'static str, &'static str)>,
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
        self.register_labelled(name, help, &[], metric);
    }

    fn register_labelled(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
        metric: Metric,
    ) {
        let mut entries = self.entries.locked();
        entries.push(Entry {
            name,
            help,
            labels: labels.to_vec(),
            metric,
        });
    }

    /// One series of a labelled counter family, e.g.
    /// `ringside_protection_shed_total{class="bulk",route="graphql"}`. Every series of a
    /// family shares its name and help; create each combination once, at startup, and keep
    /// the `Arc` (typically in an array indexed by the label values).
    pub fn labelled_counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Arc<Counter> {
        let counter = Arc::new(Counter::default());
        self.register_labelled(name, help, labels, Metric::Counter(counter.clone()));
        counter
    }

    /// A counter family with one label, one series per value, e.g.
    /// `ringside_goaways_total{reason="drain"}` and `{reason="max_lifetime"}`. The series come
    /// back in the order of `values`, for the caller to keep (destructure the array into named
    /// fields): no update looks a label up.
    pub fn counter_family<const N: usize>(
        &self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: [&'static str; N],
    ) -> [Arc<Counter>; N] {
        values.map(|value| self.labelled_counter(name, help, &[(label, value)]))
    }

    /// A gauge whose value `read` computes when the metrics are rendered.
    pub fn computed_gauge(&self, name: &'static str, help: &'static str, read: ComputedGauge) {
        self.register(name, help, Metric::Computed(read));
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

    /// The Prometheus text exposition (format 0.0.4) of every registered metric. The series
    /// of a labelled family are rendered together under one `HELP` and `TYPE`, in the order
    /// they were created.
    pub fn render(&self) -> String {
        let entries = self.entries.locked();
        let mut out = String::with_capacity(entries.len() * 128);
        let mut rendered = vec![false; entries.len()];
        for first in 0..entries.len() {
            if rendered[first] {
                continue;
            }
            let family = &entries[first];
            let (name, help) = (family.name, family.help);
            let kind = match family.metric {
                Metric::Counter(_) => "counter",
                Metric::Gauge(_) | Metric::Computed(_) => "gauge",
                Metric::Histogram(ref h) => {
                    rendered[first] = true;
                    render_histogram(&mut out, name, help, h);
                    continue;
                }
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (index, entry) in entries.iter().enumerate().skip(first) {
                if rendered[index] || entry.name != name {
                    continue;
                }
                rendered[index] = true;
                let value = match &entry.metric {
                    Metric::Counter(c) => i128::from(c.get()),
                    Metric::Gauge(g) => i128::from(g.get()),
                    Metric::Computed(read) => i128::from(read()),
                    Metric::Histogram(_) => continue,
                };
                out.push_str(name);
                write_labels(&mut out, &entry.labels);
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

/// `{a="x",b="y"}`, escaped as the text format wants; nothing without labels.
fn write_labels(out: &mut String, labels: &[(&'static str, &'static str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (index, (key, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn render_histogram(out: &mut String, name: &str, help: &str, histogram: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    // Buckets, sum and count are read stripe by stripe while others may be adding: the count
    // rendered is the buckets' total, so that the exposition is consistent in itself.
    let totals = histogram.totals();
    let mut cumulative = 0;
    for (bound, bucket) in histogram.bounds_micros.iter().zip(&totals.buckets) {
        cumulative += bucket;
        let seconds = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{seconds}\"}} {cumulative}");
    }
    cumulative += totals.buckets.last().copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum_seconds = totals.sum_micros as f64 / 1e6;
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

    #[test]
    fn labelled_series_render_under_one_family_and_computed_gauges_read_late() {
        let registry = Registry::new();
        let bulk = registry.labelled_counter(
            "shed_total",
            "Shed.",
            &[("class", "bulk"), ("route", "graphql")],
        );
        let _other = registry.counter("other_total", "Other.");
        let critical = registry.labelled_counter(
            "shed_total",
            "Shed.",
            &[("class", "critical"), ("route", "a\"b")],
        );
        let value = Arc::new(AtomicI64::new(7));
        let read = value.clone();
        registry.computed_gauge(
            "limit",
            "Limit.",
            Arc::new(move || read.load(Ordering::Relaxed)),
        );
        bulk.add(2);
        critical.increment();
        value.store(9, Ordering::Relaxed);
        let text = registry.render();
        assert_eq!(
            text.matches("# TYPE shed_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE shed_total counter\nshed_total{class=\"bulk\",route=\"graphql\"} 2\n\
                 shed_total{class=\"critical\",route=\"a\\\"b\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE limit gauge\nlimit 9\n"), "{text}");
    }

    #[test]
    fn a_counter_family_renders_one_help_and_type_and_its_series_in_order() {
        let registry = Registry::new();
        let [drain, lifetime] = registry.counter_family(
            "goaways_total",
            "Goaways.",
            "reason",
            ["drain", "max_lifetime"],
        );
        let _plain = registry.counter("plain_total", "Plain.");
        drain.add(2);
        lifetime.increment();
        let text = registry.render();
        assert_eq!(text.matches("# HELP goaways_total ").count(), 1, "{text}");
        assert_eq!(text.matches("# TYPE goaways_total ").count(), 1, "{text}");
        assert!(
            text.contains(
                "# HELP goaways_total Goaways.\n# TYPE goaways_total counter\n\
                 goaways_total{reason=\"drain\"} 2\n\
                 goaways_total{reason=\"max_lifetime\"} 1\n"
            ),
            "{text}"
        );
        // Every sample line is `name{labels} value` or `name value`, under its family's TYPE.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap_or(series);
            assert!(text.contains(&format!("# TYPE {name} ")), "{line}");
        }
    }

    #[test]
    fn stripes_add_up_across_threads() {
        let registry = Registry::new();
        let sent = registry.counter("sent_total", "Sent.");
        let latency = registry.latency_histogram("latency_seconds", "Latency.");
        std::thread::scope(|scope| {
            for _ in 0..STRIPES + 3 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        sent.increment();
                        latency.observe(Duration::from_millis(2));
                    }
                });
            }
        });
        let total = (STRIPES as u64 + 3) * 1000;
        assert_eq!(sent.get(), total);
        assert_eq!(latency.count(), total);
        let text = registry.render();
        assert!(
            text.contains(&format!(
                "latency_seconds_bucket{{le=\"0.0025\"}} {total}\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("latency_seconds_sum {}\n", total as f64 * 0.002)),
            "{text}"
        );
    }
}
