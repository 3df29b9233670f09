//! dnsperf's figures, as the tests and the bench read them.

/// The figures of one dnsperf run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DnsPerf {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub run_secs: f64,
    pub qps: f64,
    pub avg_latency_ms: f64,
}

/// Reads dnsperf's statistics block (`Queries sent: ...`).
pub fn parse(output: &str) -> Option<DnsPerf> {
    let field = |name: &str| -> Option<&str> {
        output.lines().find_map(|l| l.trim().strip_prefix(name))?.split_whitespace().next()
    };
    Some(DnsPerf {
        sent: field("Queries sent:")?.parse().ok()?,
        completed: field("Queries completed:")?.parse().ok()?,
        lost: field("Queries lost:")?.parse().ok()?,
        run_secs: field("Run time (s):")?.parse().ok()?,
        qps: field("Queries per second:")?.parse().ok()?,
        avg_latency_ms: field("Average Latency (s):").and_then(|s| s.parse::<f64>().ok()).map_or(0.0, |s| s * 1e3),
    })
}
