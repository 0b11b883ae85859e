//! A standalone HTML report of result files: tables and SVG plots drawn here, no scripts and no
//! network, so it opens from disk anywhere.
//!
//! Plots: the latency CDF of every fan-out run (which is also its delivery-over-time curve), the
//! reconnect curve of every storm run, and the origin read rate of every origin run.

use std::fmt::Write as _;

use serde_json::Value;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 70.0;
const COLOURS: [&str; 6] = [
    "#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#57606a",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart of several named series.
fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = points
        .clone()
        .map(|p| p.0)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let y_max = points.map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let x = |v: f64| MARGIN + v / x_max * (WIDTH - 2.0 * MARGIN);
    let y = |v: f64| HEIGHT - MARGIN - v / y_max * (HEIGHT - 2.0 * MARGIN);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{MARGIN}" y="18" font-size="13" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = write!(
        svg,
        r#"<line x1="{MARGIN}" y1="{0}" x2="{1}" y2="{0}" stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{0}" stroke="black"/>"#,
        HEIGHT - MARGIN,
        WIDTH - MARGIN
    );
    for tick in 0..=4 {
        let fraction = f64::from(tick) / 4.0;
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text><text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
            x(fraction * x_max),
            HEIGHT - MARGIN + 15.0,
            tick_label(fraction * x_max, x_max),
            MARGIN - 4.0,
            y(fraction * y_max) + 4.0,
            tick_label(fraction * y_max, y_max)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.0}" y="{:.0}" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        HEIGHT - 12.0,
        escape(x_label)
    );
    let _ = write!(
        svg,
        r#"<text x="14" y="{:.0}" transform="rotate(-90 14 {:.0})" text-anchor="middle">{}</text>"#,
        HEIGHT / 2.0,
        HEIGHT / 2.0,
        escape(y_label)
    );
    for (index, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let _ = write!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" fill="{colour}">{}</text>"#,
            WIDTH - MARGIN - 300.0,
            MARGIN + 14.0 * index as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn tick_label(value: f64, max: f64) -> String {
    if max >= 10.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn number(value: &Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(value, |v, key| &v[*key])
        .as_f64()
        .unwrap_or(0.0)
}

/// Builds the report from `(file name, parsed JSON)` pairs of any result kind.
pub fn render(results: &[(String, Value)]) -> String {
    let mut cdfs = Vec::new();
    let mut storms = Vec::new();
    let mut origins = Vec::new();
    let mut rows = String::new();
    let mut overload_rows = String::new();
    for (name, result) in results {
        if let Some(cdf) = result["cdf"].as_array() {
            let points = cdf
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect();
            cdfs.push((name.clone(), points));
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{:.3}%</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.0}</td><td>{:.2}</td></tr>",
                escape(name),
                result["connected"],
                100.0 * number(result, &["delivered"]) / number(result, &["expected"]).max(1.0),
                number(result, &["overall", "p50_ms"]),
                number(result, &["overall", "p99_ms"]),
                number(result, &["overall", "p999_ms"]),
                number(result, &["median_time_to_last_device_ms"]),
                number(result, &["gateway_bytes_per_connection"]),
                number(result, &["gateway_cpu_us_per_delivery"]),
            );
        }
        for class in result["classes"].as_array().into_iter().flatten() {
            let _ = write!(
                overload_rows,
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                escape(name),
                escape(class["name"].as_str().unwrap_or_default()),
                number(class, &["offered_per_second"]),
                100.0 * number(class, &["success_ratio"]),
                class["shed"],
                class["failed"],
                class["unsent"],
                number(class, &["latency", "p50_ms"]),
                number(class, &["latency", "p99_ms"]),
            );
        }
        if let Some(curve) = result["storm"]["reconnects_per_100ms"].as_array() {
            let points = curve
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * 0.1, v.as_f64().unwrap_or(0.0) * 10.0))
                .collect();
            storms.push((name.clone(), points));
        }
        if let Some(reads) = result["reads_per_bucket"].as_array() {
            let bucket_s = number(result, &["bucket_ms"]) / 1000.0;
            let points = reads
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        i as f64 * bucket_s,
                        v.as_f64().unwrap_or(0.0) / bucket_s.max(1e-9),
                    )
                })
                .collect();
            origins.push((
                format!(
                    "{name} (peak/mean {:.2})",
                    number(result, &["peak_over_mean"])
                ),
                points,
            ));
        }
    }
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ringside-load report</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>\
         </head><body><h1>ringside-load report</h1>\
         <p>Latency is the device's receive time minus the state's publish time, on one machine and one clock.</p>",
    );
    if !cdfs.is_empty() {
        html.push_str("<h2>Fan-out</h2><table><tr><th>run</th><th>devices</th><th>delivered</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>last device ms (median)</th><th>B per idle connection</th><th>server CPU µs per delivery</th></tr>");
        html.push_str(&rows);
        html.push_str("</table>");
        html.push_str(&line_chart(
            "Latency CDF (delivery over time)",
            "ms after publish",
            "fraction of deliveries",
            &cdfs,
        ));
    }
    if !overload_rows.is_empty() {
        html.push_str("<h2>Overload</h2><p>Latency of successful requests, from when each was due.</p><table><tr><th>run</th><th>class</th><th>offered/s</th><th>succeeded</th><th>shed</th><th>failed</th><th>unsent</th><th>p50 ms</th><th>p99 ms</th></tr>");
        html.push_str(&overload_rows);
        html.push_str("</table>");
    }
    if !storms.is_empty() {
        html.push_str("<h2>Storm</h2>");
        html.push_str(&line_chart(
            "Reconnects after the node went down",
            "seconds",
            "reconnects per second",
            &storms,
        ));
    }
    if !origins.is_empty() {
        html.push_str("<h2>Origin reads</h2>");
        html.push_str(&line_chart(
            "Page-store reads over time",
            "seconds",
            "reads per second",
            &origins,
        ));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_kind_without_scripts() {
        let fanout = serde_json::json!({
            "connected": 10, "delivered": 10, "expected": 10,
            "overall": {"p50_ms": 1.0, "p99_ms": 2.0, "p999_ms": 2.5},
            "median_time_to_last_device_ms": 2.0, "gateway_bytes_per_connection": 4000.0,
            "cdf": [[0.5, 0.0], [1.0, 0.5], [2.0, 1.0]],
            "storm": {"reconnects_per_100ms": [0, 5, 3]}
        });
        let origin = serde_json::json!({"reads_per_bucket": [3, 1, 2], "bucket_ms": 100, "peak_over_mean": 1.5});
        let overload = serde_json::json!({"scenario": "overload", "classes": [
            {"name": "critical: publish", "offered_per_second": 20.0, "success_ratio": 0.5,
             "shed": 7, "failed": 0, "unsent": 3, "latency": {"p50_ms": 4.0, "p99_ms": 9.5}}
        ]});
        let html = render(&[
            ("fanout <1k>".into(), fanout),
            ("origin".into(), origin),
            ("overload".into(), overload),
        ]);
        assert!(html.contains("<td>critical: publish</td><td>20</td><td>50.0%</td><td>7</td>"));
        assert!(html.contains("fanout &lt;1k&gt;"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("peak/mean 1.50"));
        assert!(!html.contains("<script"));
    }
}
