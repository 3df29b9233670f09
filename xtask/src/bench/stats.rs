//! The arithmetic of the bench, kept apart from the processes so it can be unit tested.

use std::collections::BTreeMap;

use serde_json::Value;

pub fn median(values: &[f64]) -> Option<f64> {
    Spread::of(values).map(|s| s.median)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The value at quantile `q` of sorted values, interpolating linearly between neighbours (the
/// usual definition: the median of an even count is the mean of the middle two).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (at - low as f64)
}

/// How a figure varied over the rounds behind it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    /// The mean of the values left once a fifth at either end is set aside: the figure a run
    /// reports. One stalled or one lucky round of a shared machine moves it little, and it uses
    /// more of the rounds than the median does, so it repeats better from run to run.
    pub trimmed_mean: f64,
    /// How far the trimmed mean may plausibly lie from where another run would put it: twice its
    /// standard error (from the winsorized variance), about a 95 % interval. None with fewer than
    /// three values.
    pub noise: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// First and third quartile; only with four values or more, where they say more than the
    /// extremes do.
    pub quartiles: Option<(f64, f64)>,
    pub count: usize,
}

/// Below this many values the interquartile range is just the extremes again.
const QUARTILES_FROM: usize = 4;
/// The share of values set aside at either end for the trimmed mean.
const TRIM: f64 = 0.2;
/// Below this many values the spread of the values says nothing about the noise.
const NOISE_FROM: usize = 3;

/// The trimmed mean of sorted values and the standard error of it, after Tukey and McLaughlin:
/// the values trimmed at either end are replaced by the nearest kept one (winsorized), and the
/// standard deviation of those, over (1 - 2g) sqrt(n), estimates the error.
fn trimmed(sorted: &[f64]) -> (f64, Option<f64>) {
    let n = sorted.len();
    let cut = (TRIM * n as f64).floor() as usize;
    let kept = &sorted[cut..n - cut];
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    if n < NOISE_FROM {
        return (mean, None);
    }
    let winsorized: Vec<f64> = sorted.iter().map(|&x| x.clamp(kept[0], kept[kept.len() - 1])).collect();
    let w_mean = winsorized.iter().sum::<f64>() / n as f64;
    let w_var = winsorized.iter().map(|x| (x - w_mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let standard_error = w_var.sqrt() / ((kept.len() as f64 / n as f64) * (n as f64).sqrt());
    (mean, Some(2.0 * standard_error))
}

impl Spread {
    /// None without a finite value; non-finite values (a rate of an empty run) are left out.
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let (trimmed_mean, noise) = trimmed(&v);
        Some(Spread {
            median: quantile(&v, 0.5),
            trimmed_mean,
            noise,
            min: v[0],
            max: v[v.len() - 1],
            quartiles: (v.len() >= QUARTILES_FROM).then(|| (quantile(&v, 0.25), quantile(&v, 0.75))),
            count: v.len(),
        })
    }
}

/// Nanoseconds per packet (or query) at a rate per second: what one costs on the path that
/// limits the rate.
pub fn ns_per_unit(rate: f64) -> Option<f64> {
    (rate > 0.0).then(|| 1e9 / rate)
}

/// A rate per core: what a process delivered per second divided by the share of a core it used.
pub fn per_core(rate: f64, cpu_percent: f64) -> Option<f64> {
    (cpu_percent > 0.0).then(|| rate / (cpu_percent / 100.0))
}

/// A measured run next to the baseline runs just before and after it (one at either end of a
/// sequence). Comparing each run with its own neighbours is what lets slow drift of the machine
/// (other builds, thermal state, a noisy neighbour) cancel out.
#[derive(Clone, Debug, PartialEq)]
pub struct Compared<M> {
    pub mode: M,
    pub rate: f64,
    pub baselines: Vec<f64>,
}

impl<M> Compared<M> {
    /// The run's rate over the mean of its baselines'.
    pub fn ratio(&self) -> Option<f64> {
        let reference = mean(&self.baselines)?;
        (reference > 0.0).then(|| self.rate / reference)
    }

    /// What the mode added to each packet: its time per packet less the mean of its baselines'.
    pub fn added_ns(&self) -> Option<f64> {
        let baseline: Option<Vec<f64>> = self.baselines.iter().map(|b| ns_per_unit(*b)).collect();
        Some(ns_per_unit(self.rate)? - mean(&baseline?)?)
    }
}

/// Every run that is not a baseline, in run order, with its neighbouring baselines.
pub fn interleaved<M: Copy>(runs: &[(M, f64)], is_baseline: impl Fn(M) -> bool) -> Vec<Compared<M>> {
    let mut out = Vec::new();
    for (i, &(mode, rate)) in runs.iter().enumerate() {
        if is_baseline(mode) {
            continue;
        }
        let before = runs[..i].iter().rev().find(|(m, _)| is_baseline(*m));
        let after = runs[i + 1..].iter().find(|(m, _)| is_baseline(*m));
        let baselines: Vec<f64> = before.into_iter().chain(after).map(|&(_, b)| b).collect();
        if !baselines.is_empty() {
            out.push(Compared { mode, rate, baselines });
        }
    }
    out
}

/// Every baseline run between two others, over the mean of those two: what the bench reads as a
/// difference where there is none. Its spread is the resolution of every ratio of the run.
pub fn baseline_ratios<M: Copy>(runs: &[(M, f64)], is_baseline: impl Fn(M) -> bool) -> Vec<f64> {
    let baselines: Vec<f64> = runs.iter().filter(|(m, _)| is_baseline(*m)).map(|&(_, rate)| rate).collect();
    baselines
        .windows(3)
        .filter_map(|w| {
            let reference = (w[0] + w[2]) / 2.0;
            (reference > 0.0).then(|| w[1] / reference)
        })
        .collect()
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

/// tracer's summary line, `{"type":"summary","packets":N,"records":N,"lost":N,...}`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Packet lines.
    pub packets: u64,
    /// Records read from the kernel: one per packet's journey, drop or stray reply.
    pub records: u64,
    /// Records the kernel could not queue.
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    pub findings: u64,
    /// Occurrences of stated findings per kind.
    pub finding_counts: BTreeMap<String, u64>,
    /// Occurrences per kind of findings not stated because records they rest on may be lost.
    pub unconfirmed_counts: BTreeMap<String, u64>,
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object().into_iter().flatten().filter_map(|(kind, n)| Some((kind.clone(), n.as_u64()?))).collect()
}

pub fn parse_summary(line: &str) -> Option<Summary> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["type"] != "summary" {
        return None;
    }
    Some(Summary {
        packets: v["packets"].as_u64()?,
        records: v["records"].as_u64()?,
        lost: v["lost"].as_u64()?,
        lost_per_cpu: v["lost_per_cpu"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
        findings: v["findings"].as_u64().unwrap_or(0),
        finding_counts: counts(&v["finding_counts"]),
        unconfirmed_counts: counts(&v["unconfirmed_counts"]),
    })
}

/// Record accounting for one traced run: every packet that entered the bridge must show up as
/// its record or in the kernel's lost counter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accounting {
    pub generated: u64,
    /// Packets the lab dropped on its links before they reached the bridge (not tracer's losses).
    pub pre_bridge_drops: u64,
    /// Packets that entered the bridge: each is one journey, and so exactly one `bridge-in` line
    /// unless its record was lost.
    pub bridged: u64,
    pub received_bridge_in_lines: u64,
    pub missing_bridge_in_lines: i64,
    /// Records tracer read (journeys).
    pub records: u64,
    pub lost_records: u64,
    /// Every missing `bridge-in` line is covered by a lost record, none appeared that was not
    /// sent, and every bridged packet is a record read or lost, with no more records than packets.
    pub consistent: bool,
}

/// The exact check is on `bridge-in` lines, one per packet that entered the bridge and whose
/// journey reached tracer. Journeys and losses are only bounded by the packets: the kernel
/// counts a run of its programs it skipped (another was running on that CPU) as lost too, without
/// a journey to lose.
pub fn account(
    generated: u64,
    pre_bridge_drops: u64,
    received_bridge_in_lines: u64,
    records: u64,
    lost_records: u64,
) -> Accounting {
    let bridged = generated.saturating_sub(pre_bridge_drops);
    let missing = bridged as i64 - received_bridge_in_lines as i64;
    let consistent =
        missing >= 0 && (missing as u64) <= lost_records && records <= bridged && records + lost_records >= bridged;
    Accounting {
        generated,
        pre_bridge_drops,
        bridged,
        received_bridge_in_lines,
        missing_bridge_in_lines: missing,
        records,
        lost_records,
        consistent,
    }
}

/// A run of a traced mode that lost nothing: no record counted lost, no `bridge-in` line missing.
pub fn lossless(a: &Accounting) -> bool {
    a.lost_records == 0 && a.missing_bridge_in_lines == 0
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
    fn spread_has_quartiles_from_four_values() {
        let s = Spread::of(&[5.0, 1.0, 3.0]).expect("spread");
        assert_eq!((s.median, s.min, s.max, s.count), (3.0, 1.0, 5.0, 3));
        assert_eq!(s.quartiles, None);
        // 1 2 3 4 5: quartiles at positions 1 and 3.
        let s = Spread::of(&[4.0, 2.0, 5.0, 1.0, 3.0]).expect("spread");
        assert_eq!(s.quartiles, Some((2.0, 4.0)));
        // 1 2 3 4: positions 0.75 and 2.25, interpolated.
        let s = Spread::of(&[1.0, 2.0, 3.0, 4.0]).expect("spread");
        assert_eq!(s.median, 2.5);
        assert_eq!(s.quartiles, Some((1.75, 3.25)));
        assert_eq!(Spread::of(&[f64::INFINITY]), None);
    }

    #[test]
    fn trimmed_mean_sets_a_fifth_aside_at_either_end() {
        // Ten values: two set aside at either end, the mean of the six left.
        let values = [0.1, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 5.0];
        let s = Spread::of(&values).expect("spread");
        assert!((s.trimmed_mean - 0.935).abs() < 1e-12, "{}", s.trimmed_mean);
        // Winsorized: 0.91 0.91 0.91 0.92 .. 0.96 0.96 0.96; its sd is about 0.0217, over
        // 0.6 sqrt(10): a standard error of about 0.0115, a noise of about 0.023, however wild
        // the two extremes are.
        let noise = s.noise.expect("noise");
        assert!((noise - 0.0229).abs() < 0.0005, "{noise}");
        // Fewer than five values: nothing is set aside; fewer than three: no noise estimate.
        let s = Spread::of(&[1.0, 2.0, 6.0]).expect("spread");
        assert_eq!(s.trimmed_mean, 3.0);
        assert!(s.noise.is_some());
        assert_eq!(Spread::of(&[1.0, 2.0]).expect("spread").noise, None);
        // Identical values: no noise at all.
        assert_eq!(Spread::of(&[0.5; 6]).expect("spread").noise, Some(0.0));
    }

    #[test]
    fn baselines_are_compared_with_their_neighbours() {
        // B U B T B U B: the middle baselines against the mean of the baselines either side.
        let runs = [(0, 100.0), (1, 1.0), (0, 90.0), (2, 1.0), (0, 80.0), (1, 1.0), (0, 100.0)];
        let r = baseline_ratios(&runs, |m| m == 0);
        assert_eq!(r, vec![1.0, 80.0 / 95.0]);
        assert!(baseline_ratios(&runs[..3], |m| m == 0).is_empty());
    }

    #[test]
    fn ratios_use_neighbouring_baselines() {
        // B U B T B: U against (100+80)/2, T against (80+120)/2.
        let runs = [(0, 100.0), (1, 90.0), (0, 80.0), (2, 50.0), (0, 120.0)];
        let r: Vec<_> = interleaved(&runs, |m| m == 0).iter().map(|c| (c.mode, c.ratio())).collect();
        assert_eq!(r, vec![(1, Some(1.0)), (2, Some(0.5))]);
        // A trailing run without a baseline after it uses the one before.
        let r = interleaved(&[(0, 100.0), (1, 50.0)], |m| m == 0);
        assert_eq!(r[0].ratio(), Some(0.5));
        assert!(interleaved(&[(1, 50.0)], |m| m == 0).is_empty());
    }

    #[test]
    fn added_nanoseconds_per_packet() {
        // 1 000 000 pps is 1000 ns per packet, 500 000 pps 2000 ns: the mode added 1000 ns.
        let c = Compared { mode: 1, rate: 500_000.0, baselines: vec![1_000_000.0] };
        assert_eq!(c.added_ns(), Some(1000.0));
        // Against two baselines, their times per packet are averaged (1000 and 500 ns: 750).
        let c = Compared { mode: 1, rate: 1_000_000.0, baselines: vec![1_000_000.0, 2_000_000.0] };
        assert_eq!(c.added_ns(), Some(250.0));
        // A mode faster than its baselines (noise) adds a negative time; nothing flowing, none.
        let c = Compared { mode: 1, rate: 2_000_000.0, baselines: vec![1_000_000.0] };
        assert_eq!(c.added_ns(), Some(-500.0));
        let c = Compared { mode: 1, rate: 0.0, baselines: vec![1_000_000.0] };
        assert_eq!(c.added_ns(), None);
        assert_eq!(c.ratio(), Some(0.0));
    }

    #[test]
    fn rates_per_core() {
        assert_eq!(per_core(50_000.0, 50.0), Some(100_000.0));
        assert_eq!(per_core(50_000.0, 200.0), Some(25_000.0));
        assert_eq!(per_core(50_000.0, 0.0), None);
        assert_eq!(ns_per_unit(0.0), None);
        assert_eq!(ns_per_unit(4.0), Some(250_000_000.0));
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
        let line = r#"{"duration_secs":2.5,"evicted_flows":0,"finding_counts":{"conntrack_skip":3},"findings":1,"lost":7,"lost_per_cpu":[3,4],"packets":2000,"records":1000,"type":"summary","unconfirmed_counts":{"dns_timeout":2}}"#;
        let s = parse_summary(line).expect("summary");
        assert_eq!((s.packets, s.records, s.lost), (2000, 1000, 7));
        assert_eq!(s.lost_per_cpu, vec![3, 4]);
        assert_eq!(s.finding_counts.get("conntrack_skip"), Some(&3));
        assert_eq!(s.unconfirmed_counts.get("dns_timeout"), Some(&2));
        assert_eq!(parse_summary(r#"{"type":"packet"}"#), None);
    }

    #[test]
    fn accounting_is_exact_without_loss() {
        let a = account(1000, 0, 1000, 1000, 0);
        assert_eq!(a.missing_bridge_in_lines, 0);
        assert!(a.consistent && lossless(&a));
        // A missing line with nothing counted as lost is a bug somewhere.
        assert!(!account(1000, 0, 999, 999, 0).consistent);
        // More lines or records than packets sent is one too.
        assert!(!account(1000, 0, 1001, 1000, 0).consistent);
        assert!(!account(1000, 0, 1000, 1001, 0).consistent);
        // Losses cover the missing lines, and every packet is a record read or lost.
        let a = account(1000, 0, 700, 700, 300);
        assert_eq!(a.missing_bridge_in_lines, 300);
        assert!(a.consistent && !lossless(&a));
        // Skipped runs count as lost without a journey: more lost than missing is allowed.
        assert!(account(1000, 0, 700, 700, 350).consistent);
        // Packets neither read nor lost are not.
        assert!(!account(1000, 0, 700, 600, 300).consistent);
        // Packets the lab itself dropped before the bridge produce no records.
        assert!(account(1000, 10, 990, 990, 0).consistent);
    }
}
