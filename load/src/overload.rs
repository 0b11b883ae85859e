//! The overload scenario: several classes of HTTP/GraphQL traffic offered together, open loop,
//! at rates whose sum is above what the node can serve; success and latency per class.
//!
//! Each class has its own schedule (request `i` is due at `start + i / rate`) and its own pool
//! of keep-alive connections that take the next due request when free. Latency is measured
//! from when a request was due, not from when a connection got to it, so the time it waited
//! behind a saturated server counts (no coordinated omission). Requests still unsent a grace
//! period after the run ends are counted as unsent.
//!
//! Each class marks its requests with `x-ringside-priority` (critical operator publishes,
//! degraded device live-path queries, best_effort background prefetch, bulk prefetch). Reported
//! per class and in total: goodput (successful requests per second), and how fast refusals
//! came back (a shed request must be answered at once: its latency is from when it was sent,
//! since the server's answer time is what is measured, not the client's queue).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::http_bench::{HttpTarget, Outcome, open, send};
use crate::report::{Latency, new_histogram};
use crate::system::load_average;

/// How long a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the run's end due requests may still be sent.
const GRACE: Duration = Duration::from_secs(5);

/// One class of traffic.
#[derive(Debug, Clone)]
pub struct OverloadClass {
    /// What to request; its name names the class.
    pub target: HttpTarget,
    /// Requests per second offered.
    pub rate_per_second: f64,
    /// Keep-alive connections the class sends over.
    pub connections: usize,
}

#[derive(Debug, Clone)]
pub struct OverloadPlan {
    pub server: String,
    pub classes: Vec<OverloadClass>,
    pub duration: Duration,
    pub label: String,
    pub load_multiple: Option<f64>,
    pub protection: Option<String>,
    /// When the schedules start (Unix time, ms): two processes that offer the classes of one
    /// run (see `scripts/bench-overload`'s `PROBE_SCHED`) start them at the same moment.
    /// `None`: 200 ms from now.
    pub start_at_unix_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassResult {
    pub name: String,
    /// The `x-ringside-priority` the class sent, if any.
    #[serde(default)]
    pub priority: Option<String>,
    pub offered_per_second: f64,
    /// Requests due during the run.
    pub scheduled: u64,
    pub succeeded: u64,
    /// Answered 429 or 503.
    pub shed: u64,
    /// Any other answer, a transport error or a timeout.
    pub failed: u64,
    /// Due but never sent: every connection of the class was still busy at the end.
    pub unsent: u64,
    /// Succeeded over scheduled.
    pub success_ratio: f64,
    /// Goodput of the class: successful requests per second.
    pub succeeded_per_second: f64,
    /// Of successful requests, from when each was due.
    pub latency: Latency,
    /// Of shed answers (429/503), from when each request was sent.
    pub shed_latency: Latency,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverloadReport {
    pub scenario: String,
    /// What this run was, e.g. `3x, protection on` (set by the caller).
    #[serde(default)]
    pub label: String,
    /// Offered load as a multiple of the node's measured capacity, when sized that way.
    #[serde(default)]
    pub load_multiple: Option<f64>,
    /// `on` or `off`, as the caller started the node.
    #[serde(default)]
    pub protection: Option<String>,
    pub duration_s: f64,
    /// Successful requests per second, every class together.
    #[serde(default)]
    pub goodput_per_second: f64,
    pub classes: Vec<ClassResult>,
    pub load_average_before: Option<f64>,
    pub load_average_after: Option<f64>,
}

#[derive(Default)]
struct Tally {
    succeeded: u64,
    shed: u64,
    failed: u64,
}

pub async fn run_overload(plan: OverloadPlan) -> anyhow::Result<OverloadReport> {
    let authority = ringside_client::http::authority(&plan.server)?;
    let load_average_before = load_average();
    let start = start_instant(plan.start_at_unix_ms);
    let end = start + plan.duration;
    let mut classes = Vec::new();
    for class in &plan.classes {
        let next = Arc::new(AtomicU64::new(0));
        let gap = Duration::from_secs_f64(1.0 / class.rate_per_second.max(0.001));
        let mut tasks = Vec::new();
        for _ in 0..class.connections.max(1) {
            let (authority, target, next) = (authority.clone(), class.target.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut histogram = new_histogram();
                let mut shed_histogram = new_histogram();
                let mut tally = Tally::default();
                let mut sender = open(&authority).await?;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let due = start + gap.mul_f64(index as f64);
                    if due >= end || Instant::now() > end + GRACE {
                        break;
                    }
                    tokio::time::sleep_until(due).await;
                    let sent = Instant::now();
                    let outcome = tokio::time::timeout(
                        REQUEST_TIMEOUT,
                        send(&mut sender, &authority, &target, index as usize),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(Outcome::Success)) => {
                            tally.succeeded += 1;
                            histogram.saturating_record((due.elapsed().as_micros() as u64).max(1));
                        }
                        Ok(Ok(Outcome::Shed)) => {
                            tally.shed += 1;
                            shed_histogram
                                .saturating_record((sent.elapsed().as_micros() as u64).max(1));
                        }
                        Ok(Ok(Outcome::Failed)) => tally.failed += 1,
                        // A broken or stuck connection: count it and start a new one.
                        Ok(Err(_)) | Err(_) => {
                            tally.failed += 1;
                            sender = open(&authority).await?;
                        }
                    }
                }
                anyhow::Ok((histogram, shed_histogram, tally))
            }));
        }
        classes.push((class, tasks));
    }

    let mut results = Vec::new();
    for (class, tasks) in classes {
        let mut histogram = new_histogram();
        let mut shed_histogram = new_histogram();
        let mut tally = Tally::default();
        for task in tasks {
            let (part, shed_part, counts) = task.await.context("a sender panicked")??;
            histogram.add(&part).context("merging histograms")?;
            shed_histogram
                .add(&shed_part)
                .context("merging histograms")?;
            tally.succeeded += counts.succeeded;
            tally.shed += counts.shed;
            tally.failed += counts.failed;
        }
        let scheduled = (plan.duration.as_secs_f64() * class.rate_per_second).ceil() as u64;
        let answered = tally.succeeded + tally.shed + tally.failed;
        results.push(ClassResult {
            name: class.target.name.clone(),
            priority: class.target.priority.map(|p| p.as_str().to_owned()),
            offered_per_second: class.rate_per_second,
            scheduled,
            succeeded: tally.succeeded,
            shed: tally.shed,
            failed: tally.failed,
            unsent: scheduled.saturating_sub(answered),
            success_ratio: tally.succeeded as f64 / scheduled.max(1) as f64,
            succeeded_per_second: tally.succeeded as f64 / plan.duration.as_secs_f64(),
            latency: Latency::of(&histogram),
            shed_latency: Latency::of(&shed_histogram),
        });
    }
    Ok(OverloadReport {
        scenario: "overload".into(),
        label: plan.label,
        load_multiple: plan.load_multiple,
        protection: plan.protection,
        duration_s: plan.duration.as_secs_f64(),
        goodput_per_second: results.iter().map(|c| c.succeeded_per_second).sum(),
        classes: results,
        load_average_before,
        load_average_after: load_average(),
    })
}

/// The higher of two optional figures, either when only one is known.
fn higher(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The `Instant` of a Unix time in ms; one already past (or none given) is 200 ms from now.
fn start_instant(unix_ms: Option<u64>) -> Instant {
    let soon = Duration::from_millis(200);
    let ahead = unix_ms.and_then(|at| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        Duration::from_millis(at).checked_sub(now)
    });
    Instant::now() + ahead.unwrap_or(soon)
}

impl OverloadReport {
    /// Reports with the same label are one run whose classes were offered by several
    /// processes at once (for example the critical and degraded classes from a probe with a
    /// scheduling priority of its own): one report with every class, goodput summed and the
    /// highest load averages.
    pub fn merge_runs(reports: Vec<OverloadReport>) -> Vec<OverloadReport> {
        let mut runs: Vec<OverloadReport> = Vec::new();
        for report in reports {
            match runs.iter_mut().find(|run| run.label == report.label) {
                Some(run) => {
                    run.goodput_per_second += report.goodput_per_second;
                    run.classes.extend(report.classes);
                    run.load_multiple = higher(run.load_multiple, report.load_multiple);
                    run.duration_s = run.duration_s.max(report.duration_s);
                    run.load_average_before =
                        higher(run.load_average_before, report.load_average_before);
                    run.load_average_after =
                        higher(run.load_average_after, report.load_average_after);
                }
                None => runs.push(report),
            }
        }
        runs
    }

    pub fn print_table(&self) {
        if !self.label.is_empty() {
            println!("== {}", self.label);
        }
        println!(
            "{:<34} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "class",
            "offered/s",
            "scheduled",
            "ok",
            "shed",
            "failed",
            "unsent",
            "ok %",
            "p50 ms",
            "p99 ms",
            "goodput/s",
            "shed p50",
            "shed p99"
        );
        for c in &self.classes {
            println!(
                "{:<34} {:>9.0} {:>9} {:>8} {:>7} {:>7} {:>7} {:>6.1}% {:>9.1} {:>9.1} {:>9.0} {:>9.2} {:>9.2}",
                c.name,
                c.offered_per_second,
                c.scheduled,
                c.succeeded,
                c.shed,
                c.failed,
                c.unsent,
                100.0 * c.success_ratio,
                c.latency.p50_ms,
                c.latency.p99_ms,
                c.succeeded_per_second,
                c.shed_latency.p50_ms,
                c.shed_latency.p99_ms
            );
        }
        println!(
            "goodput {:.0} requests/s; load average (1 min): {:.2} before, {:.2} after; latency of successes from when each request was due, of shed answers from when each was sent",
            self.goodput_per_second,
            self.load_average_before.unwrap_or(0.0),
            self.load_average_after.unwrap_or(0.0)
        );
    }
}

/// The runs of one `scripts/bench-overload`, side by side: per class, one row per run (load
/// multiple, protection), then goodput per run and its ratio to the same protection's 1x.
pub fn print_comparison(reports: &[OverloadReport]) {
    let mut classes: Vec<&str> = Vec::new();
    for report in reports {
        for class in &report.classes {
            if !classes.contains(&class.name.as_str()) {
                classes.push(&class.name);
            }
        }
    }
    for name in classes {
        println!("\n{name}");
        println!(
            "  {:<24} {:>9} {:>8} {:>9} {:>8} {:>10} {:>9} {:>9}",
            "run", "offered/s", "ok %", "p99 ms", "shed", "goodput/s", "shed p50", "shed p99"
        );
        for report in reports {
            let Some(c) = report.classes.iter().find(|c| c.name == name) else {
                continue;
            };
            println!(
                "  {:<24} {:>9.0} {:>7.1}% {:>9.1} {:>8} {:>10.0} {:>9.2} {:>9.2}",
                report.label,
                c.offered_per_second,
                100.0 * c.success_ratio,
                c.latency.p99_ms,
                c.shed,
                c.succeeded_per_second,
                c.shed_latency.p50_ms,
                c.shed_latency.p99_ms
            );
        }
    }
    println!("\ngoodput (every class)");
    for report in reports {
        let at_1x = reports
            .iter()
            .find(|r| r.protection == report.protection && r.load_multiple == Some(1.0))
            .map(|r| r.goodput_per_second)
            .filter(|goodput| *goodput > 0.0);
        match at_1x {
            Some(base) => println!(
                "  {:<24} {:>10.0}/s  {:>5.2} of 1x",
                report.label,
                report.goodput_per_second,
                report.goodput_per_second / base
            ),
            None => println!(
                "  {:<24} {:>10.0}/s",
                report.label, report.goodput_per_second
            ),
        }
    }
}
