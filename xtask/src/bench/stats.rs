//! The arithmetic of the bench, kept apart from the processes so it can be unit tested.

use serde_json::Value;

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// For every measurement that is not a baseline, in run order: its value divided by the mean of
/// the nearest baseline before it and the nearest after it (the one that exists, at the ends).
/// Comparing each run with its own neighbours is what lets slow drift of the machine (other
/// builds, thermal state, a noisy neighbour) cancel out of the ratio.
pub fn interleaved_ratios<M: Copy>(
    runs: &[(M, f64)],
    is_baseline: impl Fn(M) -> bool,
) -> Vec<(M, f64)> {
    let mut out = Vec::new();
    for (i, &(mode, value)) in runs.iter().enumerate() {
        if is_baseline(mode) {
            continue;
        }
        let before = runs[..i].iter().rev().find(|(m, _)| is_baseline(*m));
        let after = runs[i + 1..].iter().find(|(m, _)| is_baseline(*m));
        let reference = match (before, after) {
            (Some((_, a)), Some((_, b))) => (a + b) / 2.0,
            (Some((_, a)), None) | (None, Some((_, a))) => *a,
            (None, None) => continue,
        };
        if reference > 0.0 {
            out.push((mode, value / reference));
        }
    }
    out
}

pub use tracer_tests::dnsperf::{parse as parse_dnsperf, DnsPerf};

/// Packets dropped (rx + tx) on the links of a namespace, or on the one named, from
/// `ip -s -j link show`.
pub fn link_drops(ip_json: &str, only: Option<&str>) -> Option<u64> {
    let links: Value = serde_json::from_str(ip_json).ok()?;
    let mut total = 0;
    for link in links.as_array()? {
        if only.is_some_and(|name| link["ifname"] != name) {
            continue;
        }
        let stats = link.get("stats64").or_else(|| link.get("stats"))?;
        for dir in ["rx", "tx"] {
            total += stats[dir]["dropped"].as_u64().unwrap_or(0);
        }
    }
    Some(total)
}

/// tracer's summary line, `{"type":"summary","packets":N,"lost":N,...}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub packets: u64,
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    pub findings: u64,
}

pub fn parse_summary(line: &str) -> Option<Summary> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["type"] != "summary" {
        return None;
    }
    Some(Summary {
        packets: v["packets"].as_u64()?,
        lost: v["lost"].as_u64()?,
        lost_per_cpu: v["lost_per_cpu"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        findings: v["findings"].as_u64().unwrap_or(0),
    })
}

/// Record accounting for one traced run: every packet generated must show up as its records or in
/// the kernel's lost counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accounting {
    pub generated: u64,
    /// Packets the lab dropped on its links before they reached the bridge (not tracer's losses).
    pub pre_bridge_drops: u64,
    /// Packets that entered the bridge: each is exactly one `bridge-in` record, whatever way it
    /// takes afterwards.
    pub bridged: u64,
    pub received_bridge_in_records: u64,
    pub missing_bridge_in_records: i64,
    pub received_packet_records: u64,
    /// Ring buffer records the kernel programs produced, by the calibrated count per packet.
    pub expected_records: u64,
    pub lost_events: u64,
    /// Every missing `bridge-in` record is covered by the kernel's lost counter, none appeared
    /// that was not sent, and no more was lost than could have been produced.
    pub consistent: bool,
}

/// The exact check is on `bridge-in` records, one per packet that entered the bridge. Other
/// records per packet depend on the path (until the node has resolved the server's address, DNATed
/// packets take a detour through its IP stack with one more stage), and netfilter records are not
/// visible one by one (they are folded into the next packet line), so those are only bounded:
/// the kernel cannot have lost more records than the packets produced, detour included.
pub fn account(
    generated: u64,
    pre_bridge_drops: u64,
    received_bridge_in_records: u64,
    received_packet_records: u64,
    lost_events: u64,
    records_per_packet: u64,
) -> Accounting {
    let bridged = generated.saturating_sub(pre_bridge_drops);
    let missing = bridged as i64 - received_bridge_in_records as i64;
    let most_records = bridged * (records_per_packet + 1);
    let consistent = missing >= 0
        && (missing as u64) <= lost_events
        && lost_events <= most_records.saturating_sub(received_packet_records);
    Accounting {
        generated,
        pre_bridge_drops,
        bridged,
        received_bridge_in_records,
        missing_bridge_in_records: missing,
        received_packet_records,
        expected_records: bridged * records_per_packet,
        lost_events,
        consistent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0]), Some(1.0));
    }

    #[test]
    fn ratios_use_neighbouring_baselines() {
        // B U B T B: U against (100+80)/2, T against (80+120)/2.
        let runs = [(0, 100.0), (1, 90.0), (0, 80.0), (2, 50.0), (0, 120.0)];
        let r = interleaved_ratios(&runs, |m| m == 0);
        assert_eq!(r, vec![(1, 1.0), (2, 0.5)]);
        // A trailing run without a baseline after it uses the one before.
        let r = interleaved_ratios(&[(0, 100.0), (1, 50.0)], |m| m == 0);
        assert_eq!(r, vec![(1, 0.5)]);
        assert!(interleaved_ratios(&[(1, 50.0)], |m| m == 0).is_empty());
    }

    #[test]
    fn parses_dnsperf() {
        let out = "\
Statistics:

  Queries sent:         116529
  Queries completed:    116529 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 116529 (100.00%)
  Average packet size:  request 30, response 46
  Run time (s):         2.000574
  Queries per second:   58247.782886

  Average Latency (s):  0.001110 (min 0.000020, max 0.017112)
";
        let p = parse_dnsperf(out).expect("parsed");
        assert_eq!(p.sent, 116529);
        assert_eq!(p.completed, 116529);
        assert_eq!(p.lost, 0);
        assert!((p.qps - 58247.782886).abs() < 1e-6);
        assert!((p.avg_latency_ms - 1.11).abs() < 1e-9);
        assert_eq!(parse_dnsperf("garbage"), None);
    }

    #[test]
    fn sums_link_drops() {
        let json = r#"[{"ifname":"lo","stats64":{"rx":{"dropped":1},"tx":{"dropped":2}}},
                       {"ifname":"cni0","stats64":{"rx":{"dropped":0},"tx":{"dropped":4}}}]"#;
        assert_eq!(link_drops(json, None), Some(7));
        assert_eq!(link_drops(json, Some("cni0")), Some(4));
        assert_eq!(link_drops("nope", None), None);
    }

    #[test]
    fn parses_summary() {
        let line = r#"{"duration_secs":2.5,"evicted_flows":0,"finding_counts":{},"findings":0,"lost":7,"lost_per_cpu":[3,4],"packets":2000,"type":"summary"}"#;
        let s = parse_summary(line).expect("summary");
        assert_eq!(s.packets, 2000);
        assert_eq!(s.lost, 7);
        assert_eq!(s.lost_per_cpu, vec![3, 4]);
        assert_eq!(parse_summary(r#"{"type":"packet"}"#), None);
    }

    #[test]
    fn accounting_is_exact_without_loss() {
        let a = account(1000, 0, 1000, 2000, 0, 8);
        assert_eq!(a.expected_records, 8000);
        assert_eq!(a.missing_bridge_in_records, 0);
        assert!(a.consistent);
        // A missing record with nothing counted as lost is a bug somewhere.
        assert!(!account(1000, 0, 999, 1998, 0, 8).consistent);
        // More records than packets sent is one too.
        assert!(!account(1000, 0, 1001, 2002, 0, 8).consistent);
        // Losses cover the missing records.
        let a = account(1000, 0, 700, 1400, 3000, 8);
        assert_eq!(a.missing_bridge_in_records, 300);
        assert!(a.consistent);
        // More lost than could ever have been produced is inconsistent too.
        assert!(!account(1000, 0, 700, 1400, 8000, 8).consistent);
        // Packets the lab itself dropped before the bridge produce no records.
        assert!(account(1000, 10, 990, 1980, 0, 8).consistent);
    }
}
