//! Readings from `/proc`.

/// Resident set size of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time process `pid` has used so far (all threads, user and system), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
    Some((utime + stime) as f64 / 100.0)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether an address is loopback: the only kind of target this tool accepts.
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses anything but a loopback target: the load tool never sends traffic off the machine.
pub fn require_loopback(url: &str) -> anyhow::Result<()> {
    if !is_loopback_url(url) {
        anyhow::bail!("ringside-load only targets loopback addresses, not {url}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("ws://127.3.4.5:1/v1/ws"));
        assert!(is_loopback_url("http://[::1]:8080"));
        assert!(is_loopback_url("http://localhost:80"));
        assert!(!is_loopback_url("http://10.0.0.1:8080"));
        assert!(!is_loopback_url("http://example.com"));
        assert!(require_loopback("http://127.0.0.1:1").is_ok());
        let refused = require_loopback("http://10.0.0.1:8080").unwrap_err();
        assert!(refused.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn reads_own_cpu_time() {
        let start = cpu_seconds(std::process::id()).unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_seconds(std::process::id()).unwrap() > start);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_bytes(std::process::id()).is_some_and(|rss| rss > 0));
    }
}
