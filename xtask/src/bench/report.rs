//! results.json: the headline figures, the targets they are held against, each figure's spread
//! over the rounds behind it, and every run, so a figure can be traced back to what was measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::findings::REJECTED_CLIENT_IP;
use super::results::{Calibration, DnsRun, FindingsUnderLoad, Measured, Observed, UdpRun};
use super::stats::{self, median, Spread, Summary};
use super::{Mode, Plan, DNS_PORT};
use crate::cmd::{self, probe};

/// What the issue asks of tracer; the bench reports these, it does not fail on them.
const TARGET_UNRELATED_RATIO: f64 = 0.97;
const TARGET_TRACED_RATIO: f64 = 0.85;
const TARGET_FINDINGS_ONLY_RATIO: f64 = 0.95;
const TARGET_ATTACH_MS: f64 = 1000.0;
const TARGET_RSS_MIB: f64 = 64.0;
/// The findings a broken node's findings-only watch must name under load.
pub const FINDINGS_UNDER_LOAD: [&str; 2] = ["conntrack_skip", "netfilter_reject"];

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn load_average() -> Value {
    let text = read("/proc/loadavg");
    let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    json!(v)
}

/// The machine the figures come from, and the state it was in.
pub fn machine(tracer: &Path) -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string());
    let virtualized = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    let memory_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024);
    let git = |args: &[&str]| {
        probe(Command::new("git").current_dir(cmd::workspace_root()).args(args)).map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (with uncommitted changes)")
        } else {
            c
        }
    });
    // Cargo puts a build in a folder named after its profile (release, checked, debug).
    let profile = tracer.parent().and_then(Path::file_name).map(|p| p.to_string_lossy().into_owned());
    json!({
        "cpu_model": cpu_model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "virtualized": virtualized,
        "memory_mib": memory_mib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "date_utc": probe(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).map(|d| d.trim().to_string()),
        "tracer_build": profile,
        "tracer_commit": commit,
        "tracer_binary": tracer.display().to_string(),
        "load_average_at_start": load_average(),
    })
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn round3(x: f64) -> f64 {
    round_to(x, 3)
}

fn round1(x: f64) -> f64 {
    round_to(x, 1)
}

fn opt<T: Into<Value>>(x: Option<T>) -> Value {
    x.map_or(Value::Null, Into::into)
}

/// A spread as results.json holds it, its values rounded to `decimals`.
fn spread_json(s: Option<Spread>, decimals: i32) -> Value {
    let Some(s) = s else {
        return Value::Null;
    };
    let r = |x: f64| round_to(x, decimals);
    json!({
        "median": r(s.median),
        "min": r(s.min),
        "max": r(s.max),
        "iqr": s.quartiles.map(|(q1, q3)| [r(q1), r(q3)]),
        "n": s.count,
    })
}

fn observed_json(o: &Option<Observed>) -> Value {
    match o {
        None => Value::Null,
        Some(o) => json!({
            "lines": o.lines,
            "bridge_in_lines": o.matched,
            "bytes": o.bytes,
            "records": o.summary.as_ref().map(|s| s.records),
            "packet_lines": o.summary.as_ref().map(|s| s.packets),
            "lost": o.summary.as_ref().map(|s| s.lost),
            "lost_per_cpu": o.summary.as_ref().map(|s| s.lost_per_cpu.clone()),
            "finding_counts": o.summary.as_ref().map(|s| json!(s.finding_counts)),
            "unconfirmed_counts": o.summary.as_ref().map(|s| json!(s.unconfirmed_counts)),
            "cpu_percent": o.cpu_percent.map(round1),
            "peak_rss_kib": o.rss_kib,
            "exit": o.exit,
        }),
    }
}

fn udp_run_json(r: &UdpRun) -> Value {
    json!({
        "mode": r.mode.name(),
        "round": r.round,
        "rate_limit_pps": r.rate_limit,
        "sent": r.sent,
        "send_errors": r.send_errors,
        "secs": round3(r.secs),
        "received": r.received,
        "pps": r.pps().round(),
        "server_rcvbuf_drops": r.rcvbuf_errors,
        "pre_bridge_drops": r.pre_bridge_drops,
        "observer": observed_json(&r.observed),
        "accounting": r.accounting.as_ref().map(|a| json!({
            "generated": a.generated,
            "pre_bridge_drops": a.pre_bridge_drops,
            "bridged": a.bridged,
            "received_bridge_in_lines": a.received_bridge_in_lines,
            "missing_bridge_in_lines": a.missing_bridge_in_lines,
            "records": a.records,
            "lost_records": a.lost_records,
            "consistent": a.consistent,
        })),
    })
}

fn dns_run_json(r: &DnsRun) -> Value {
    json!({
        "mode": r.mode.name(),
        "round": r.round,
        "queries_sent": r.perf.sent,
        "queries_completed": r.perf.completed,
        "queries_lost": r.perf.lost,
        "qps": r.perf.qps.round(),
        "avg_latency_ms": round3(r.perf.avg_latency_ms),
        "observer": observed_json(&r.observed),
    })
}

/// What a load's rate counts, as its figures are named.
#[derive(Clone, Copy)]
struct Unit {
    /// The rate's key: `pps`, `qps`.
    rate: &'static str,
    /// The key of the time a mode added to each: `added_ns_per_packet`.
    added: &'static str,
}

const PACKETS: Unit = Unit { rate: "pps", added: "added_ns_per_packet" };
const QUERIES: Unit = Unit { rate: "qps", added: "added_ns_per_query" };

/// One interleaved run as the per-mode figures see it, UDP or DNS alike.
struct RoundRun<'a> {
    mode: Mode,
    rate: f64,
    secs: f64,
    /// What the load itself saw of each query (DNS only).
    latency_ms: Option<f64>,
    observed: Option<&'a Observed>,
}

impl<'a> From<&'a UdpRun> for RoundRun<'a> {
    fn from(r: &'a UdpRun) -> Self {
        RoundRun { mode: r.mode, rate: r.pps(), secs: r.secs, latency_ms: None, observed: r.observed.as_ref() }
    }
}

impl<'a> From<&'a DnsRun> for RoundRun<'a> {
    fn from(r: &'a DnsRun) -> Self {
        RoundRun {
            mode: r.mode,
            rate: r.perf.qps,
            secs: r.perf.run_secs,
            latency_ms: Some(r.perf.avg_latency_ms),
            observed: r.observed.as_ref(),
        }
    }
}

/// A mode's figures over its rounds.
struct ModeFigures {
    mode: Mode,
    runs: usize,
    rate: Option<Spread>,
    ratio: Option<Spread>,
    round_ratios: Vec<f64>,
    added_ns: Option<Spread>,
    latency_ms: Option<Spread>,
    observer_cpu_percent: Option<Spread>,
    /// Records tracer read per second, and per core it used; None where it read none at all.
    records_per_sec: Option<Spread>,
    records_per_sec_per_core: Option<Spread>,
    lines_per_sec: Option<Spread>,
    lost_per_run: Option<Spread>,
    lost: Option<u64>,
}

fn per_mode(runs: &[RoundRun]) -> Vec<ModeFigures> {
    let sequence: Vec<(Mode, f64)> = runs.iter().map(|r| (r.mode, r.rate)).collect();
    let compared = stats::interleaved(&sequence, |m| m == Mode::Baseline);
    Mode::ALL
        .iter()
        .map(|&mode| {
            let of_mode: Vec<&RoundRun> = runs.iter().filter(|r| r.mode == mode).collect();
            let figure = |f: &dyn Fn(&RoundRun) -> Option<f64>| {
                Spread::of(&of_mode.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let summary = |r: &RoundRun| r.observed?.summary.clone();
            let records_per_sec = |r: &RoundRun| Some(summary(r)?.records as f64 / r.secs);
            let cpu = |r: &RoundRun| r.observed?.cpu_percent;
            let delivered = of_mode.iter().any(|r| summary(r).is_some_and(|s| s.records > 0));
            let ratios: Vec<f64> = compared.iter().filter(|c| c.mode == mode).filter_map(|c| c.ratio()).collect();
            let added: Vec<f64> = compared.iter().filter(|c| c.mode == mode).filter_map(|c| c.added_ns()).collect();
            ModeFigures {
                mode,
                runs: of_mode.len(),
                rate: figure(&|r| Some(r.rate)),
                ratio: Spread::of(&ratios),
                round_ratios: ratios,
                added_ns: Spread::of(&added),
                latency_ms: figure(&|r| r.latency_ms),
                observer_cpu_percent: figure(&cpu),
                records_per_sec: figure(&records_per_sec).filter(|_| delivered),
                records_per_sec_per_core: figure(&|r| stats::per_core(records_per_sec(r)?, cpu(r)?))
                    .filter(|_| delivered),
                lines_per_sec: figure(&|r| Some(summary(r)?.packets as f64 / r.secs)).filter(|_| delivered),
                lost_per_run: figure(&|r| Some(summary(r)?.lost as f64)),
                lost: of_mode
                    .iter()
                    .map(|r| summary(r).map(|s| s.lost))
                    .sum::<Option<u64>>()
                    // tcpdump's: the packets the kernel dropped before it read them.
                    .filter(|_| mode.is_tracer() || mode == Mode::Tcpdump),
            }
        })
        .collect()
}

fn mode_json(f: &ModeFigures, unit: Unit) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("mode".into(), json!(f.mode.name()));
    m.insert("runs".into(), json!(f.runs));
    m.insert(unit.rate.into(), spread_json(f.rate, 0));
    m.insert("ratio".into(), spread_json(f.ratio, 3));
    m.insert(unit.added.into(), spread_json(f.added_ns, 0));
    if f.latency_ms.is_some() {
        m.insert("latency_ms".into(), spread_json(f.latency_ms, 3));
    }
    m.insert("observer_cpu_percent".into(), spread_json(f.observer_cpu_percent, 1));
    m.insert("records_per_sec".into(), spread_json(f.records_per_sec, 0));
    m.insert("records_per_sec_per_core".into(), spread_json(f.records_per_sec_per_core, 0));
    m.insert("lines_per_sec".into(), spread_json(f.lines_per_sec, 0));
    m.insert("lost_per_run".into(), spread_json(f.lost_per_run, 0));
    m.insert("lost".into(), opt(f.lost));
    m.insert("round_ratios".into(), json!(f.round_ratios.iter().copied().map(round3).collect::<Vec<_>>()));
    m
}

fn figures_of(figures: &[ModeFigures], mode: Mode) -> Option<&ModeFigures> {
    figures.iter().find(|f| f.mode == mode)
}

/// The median of one spread figure of one mode, rounded.
fn median_of(
    figures: &[ModeFigures],
    mode: Mode,
    pick: impl Fn(&ModeFigures) -> Option<Spread>,
    decimals: i32,
) -> Option<f64> {
    figures_of(figures, mode).and_then(pick).map(|s| round_to(s.median, decimals))
}

/// `{"unrelated": 0.8, "traced": ...}`: one figure's median per measured mode.
fn by_mode(figures: &[ModeFigures], pick: impl Fn(&ModeFigures) -> Option<Spread> + Copy, decimals: i32) -> Value {
    Mode::MEASURED
        .iter()
        .map(|&mode| (mode.name().to_string(), opt(median_of(figures, mode, pick, decimals))))
        .collect::<Map<_, _>>()
        .into()
}

fn calibration_json(c: &Calibration) -> Value {
    let names = |list: &[(String, u64)]| list.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(" + ");
    json!({
        "packets": c.packets,
        "bridged": c.bridged,
        "records": c.summary.records,
        "lost": c.summary.lost,
        "records_per_packet": round3(c.records_per_packet()),
        "lines": c.lines,
        "lines_per_packet": round3(c.lines_per_packet()),
        "stages": c.stages.iter().map(|(k, v)| json!({"stage": k, "lines": v})).collect::<Vec<_>>(),
        "hook_passes": c.hook_passes,
        "hook_passes_by_hook": c.hooks.iter().map(|(k, v)| json!({"hook": k, "passes": v})).collect::<Vec<_>>(),
        "other_lines": c.other_lines,
        "exact": c.exact,
        "model": format!(
            "{} packets, {} bridged: {} records + {} lost; per packet {} record, {} lines ({}), hooks passed {}",
            c.packets,
            c.bridged,
            c.summary.records,
            c.summary.lost,
            round3(c.records_per_packet()),
            round3(c.lines_per_packet()),
            names(&c.stages),
            names(&c.hooks),
        ),
    })
}

/// Whether the broken node's findings were named, and what the load and tracer did meanwhile.
fn findings_json(f: Result<&FindingsUnderLoad, String>) -> Value {
    let f = match f {
        Ok(f) => f,
        Err(error) => {
            let mut v = json!({"error": error, "all_named": Value::Null});
            for kind in FINDINGS_UNDER_LOAD {
                v[kind] = Value::Null;
            }
            return v;
        }
    };
    let summary = f.observed.as_ref().and_then(|o| o.summary.as_ref());
    // A kind the summary does not list did not occur.
    let count = |counts: fn(&Summary) -> &BTreeMap<String, u64>, kind: &str| {
        summary.map(|s| counts(s).get(kind).copied().unwrap_or(0))
    };
    let named = |kind: &str| count(|s| &s.finding_counts, kind).is_some_and(|n| n > 0);
    let mut v = json!({
        "error": Value::Null,
        "all_named": FINDINGS_UNDER_LOAD.iter().all(|k| named(k)),
        "qps": f.perf.qps.round(),
        "secs": round3(f.perf.run_secs),
        "queries_sent": f.perf.sent,
        "queries_completed": f.perf.completed,
        "queries_lost": f.perf.lost,
        "rejected_queries": f.rejected_queries,
        "refused_seen_by_client": f.refused_seen,
        "reject_rule_packets": f.rule_packets,
        "answers_forwarded": f.answers_forwarded,
        "tracer": observed_json(&f.observed),
    });
    // What the kernel counted of each: the REJECT's packets by its rule counter, and the answers
    // the bridge forwarded to the client by a bridge-family counter, every one of which left
    // without conntrack.
    let kernel_count = |kind: &str| match kind {
        "netfilter_reject" => Some(f.rule_packets),
        "conntrack_skip" => Some(f.answers_forwarded),
        _ => None,
    };
    let mut all_exact = true;
    for kind in FINDINGS_UNDER_LOAD {
        let occurrences = count(|s| &s.finding_counts, kind);
        let exact = occurrences.is_some() && occurrences == kernel_count(kind);
        all_exact &= exact;
        v[kind] = json!({
            "named": named(kind),
            "occurrences": occurrences,
            "kernel_count": kernel_count(kind),
            "counts_equal": exact,
            "unconfirmed": count(|s| &s.unconfirmed_counts, kind),
        });
    }
    v["counts_equal"] = json!(all_exact);
    v
}

fn target(name: &str, wanted: &str, value: Value, met: Option<bool>) -> Value {
    json!({"figure": name, "target": wanted, "value": value, "met": met})
}

pub fn results(
    plan: &Plan,
    machine: Value,
    m: &Measured,
    findings: Result<&FindingsUnderLoad, String>,
    elapsed: Duration,
) -> Value {
    let udp_runs: Vec<RoundRun> = m.udp.iter().map(RoundRun::from).collect();
    let udp = per_mode(&udp_runs);
    let dns_runs: Vec<RoundRun> = m.dns.iter().map(RoundRun::from).collect();
    let dns = per_mode(&dns_runs);
    let ratio = |mode| median_of(&udp, mode, |f| f.ratio, 3);
    let traced = figures_of(&udp, Mode::Traced);

    let accounting_consistent = m
        .udp
        .iter()
        .chain(&m.lossless)
        .filter(|r| r.mode == Mode::Traced)
        .all(|r| r.accounting.as_ref().is_some_and(|a| a.consistent));
    // Peak RSS over every tracer run (iptables_trace's observer is nft, not tracer).
    let tracer_rss = m
        .udp
        .iter()
        .chain(&m.lossless)
        .filter(|r| r.mode.is_tracer())
        .filter_map(|r| r.observed.as_ref())
        .chain(m.dns.iter().filter(|r| r.mode.is_tracer()).filter_map(|r| r.observed.as_ref()))
        .chain(findings.as_ref().ok().and_then(|f| f.observed.as_ref()))
        .filter_map(|o| o.rss_kib)
        .max();
    let rss_mib = tracer_rss.map(|k| round1(k as f64 / 1024.0));
    let attach = Spread::of(&m.attach.iter().filter_map(|a| a.first_event_ms).collect::<Vec<_>>());
    let attach_ms = attach.map(|s| s.median.round());
    let ready_ms = median(&m.attach.iter().map(|a| a.ready_ms).collect::<Vec<_>>());

    let trace_lines_per_packet = median(
        &m.udp
            .iter()
            .filter(|r| r.mode == Mode::IptablesTrace)
            .filter_map(|r| Some(r.observed.as_ref()?.lines as f64 / r.sent.max(1) as f64))
            .collect::<Vec<_>>(),
    );

    // The highest rate tracer followed without losing a record.
    let lossless_pps = m
        .lossless
        .iter()
        .filter(|r| r.accounting.as_ref().is_some_and(stats::lossless))
        .map(|r| r.pps().round())
        .fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x))));

    let findings_json = findings_json(findings);
    let unrelated_ratio = ratio(Mode::Unrelated);
    let traced_ratio = ratio(Mode::Traced);
    let findings_only_ratio = ratio(Mode::FindingsOnly);
    let lost_events = traced.and_then(|t| t.lost);
    // tracer's capture beside tcpdump's on the same traced load: it must cost no more and lose
    // nothing (tcpdump's loss is what the kernel dropped before it read).
    let (capture_ratio, tcpdump_ratio) = (ratio(Mode::Capture), ratio(Mode::Tcpdump));
    let capture_lost = figures_of(&udp, Mode::Capture).and_then(|f| f.lost);
    let tcpdump_lost = figures_of(&udp, Mode::Tcpdump).and_then(|f| f.lost);
    let capture_met = capture_ratio.zip(tcpdump_ratio).zip(capture_lost).map(|((c, t), lost)| c >= t && lost == 0);
    let both_named = findings_json["all_named"].as_bool();
    let targets = vec![
        target(
            "unrelated_ratio",
            &format!(">= {TARGET_UNRELATED_RATIO}"),
            opt(unrelated_ratio),
            unrelated_ratio.map(|r| r >= TARGET_UNRELATED_RATIO),
        ),
        target(
            "traced_ratio",
            &format!(">= {TARGET_TRACED_RATIO}"),
            opt(traced_ratio),
            traced_ratio.map(|r| r >= TARGET_TRACED_RATIO),
        ),
        target("lost_events", "= 0 (traced, at the highest rate)", opt(lost_events), lost_events.map(|l| l == 0)),
        target(
            "findings_only_ratio",
            &format!(">= {TARGET_FINDINGS_ONLY_RATIO}"),
            opt(findings_only_ratio),
            findings_only_ratio.map(|r| r >= TARGET_FINDINGS_ONLY_RATIO),
        ),
        target("findings_under_load", "conntrack_skip and netfilter_reject named", opt(both_named), both_named),
        target(
            "findings_under_load_counts",
            "occurrences = the kernel's (rule counter, answers)",
            findings_json["counts_equal"].clone(),
            findings_json["counts_equal"].as_bool(),
        ),
        target(
            "capture_ratio",
            ">= tcpdump_ratio, capture_lost = 0",
            json!({"capture_ratio": capture_ratio, "tcpdump_ratio": tcpdump_ratio, "capture_lost": capture_lost}),
            capture_met,
        ),
        target("rss_mib", &format!("< {TARGET_RSS_MIB}"), opt(rss_mib), rss_mib.map(|r| r < TARGET_RSS_MIB)),
        target("attach_ms", &format!("< {TARGET_ATTACH_MS}"), opt(attach_ms), attach_ms.map(|a| a < TARGET_ATTACH_MS)),
    ];

    // What the attach points cost with empty programs, beside the watch they are the floor of:
    // the ratio no program body there can beat, and how the added time splits.
    let added = |mode| median_of(&udp, mode, |f| f.added_ns, 0);
    let floor = |figure: &str, watch: Mode, floor: Mode| {
        json!({
            "figure": figure,
            "ratio": ratio(watch),
            "floor_ratio": ratio(floor),
            "added_ns_per_packet": added(watch),
            "attach_points_ns_per_packet": added(floor),
            "programs_ns_per_packet": added(watch).zip(added(floor)).map(|(w, f)| w - f),
        })
    };
    let floors = vec![
        floor("unrelated_ratio", Mode::Unrelated, Mode::AttachFloor),
        floor("findings_only_ratio", Mode::FindingsOnly, Mode::FindingsOnlyFloor),
    ];

    let mode_list = |figures: &[ModeFigures], unit: Unit| -> Vec<Value> {
        figures.iter().map(|f| mode_json(f, unit).into()).collect()
    };

    let mut results = json!({
        "smoke": plan.smoke,
        "baseline_pps": median_of(&udp, Mode::Baseline, |f| f.rate, 0),
        "unrelated_ratio": unrelated_ratio,
        "traced_ratio": traced_ratio,
        "findings_only_ratio": findings_only_ratio,
        "iptables_trace_ratio": ratio(Mode::IptablesTrace),
        "added_ns_per_packet": by_mode(&udp, |f| f.added_ns, 0),
        "lost_events": lost_events,
        "lossless_pps": lossless_pps,
        "records_per_sec": median_of(&udp, Mode::Traced, |f| f.records_per_sec, 0),
        "records_per_sec_per_core": median_of(&udp, Mode::Traced, |f| f.records_per_sec_per_core, 0),
        "cpu_percent": median_of(&udp, Mode::Traced, |f| f.observer_cpu_percent, 1),
        "rss_mib": rss_mib,
        "attach_ms": attach_ms,
        "findings_under_load": findings_json,
        "targets": targets,
        "floors": floors,
        "machine": {
            "load_average_at_end": load_average(),
            "details": machine,
        },
        "plan": {
            "udp_rounds": plan.udp_rounds,
            "dns_rounds": plan.dns_rounds,
            "secs_per_run": plan.load_secs,
            "attach_trials": plan.attach_trials,
            "lossless_steps": plan.lossless_steps,
            "findings_secs": plan.findings_secs,
            "bench_secs": elapsed.as_secs_f64().round(),
        },
        "method": {
            "load": "loadgen send (sendmmsg, 64 datagrams per call, 8-byte payload) from the client pod to ClusterIP 10.96.0.10:7000, DNATed by the node to the server pod 10.244.0.7:7000 across bridge cni0 (bridge-nf-call-iptables=1); loadgen recv counts what arrives; pps = received / send duration",
            "ratio": "per round: rate of the mode / mean of the baseline runs just before and after it; the figure is the median over rounds",
            "added_ns": "per round: 1e9/rate of the mode minus the mean of 1e9/rate of the baselines just before and after it (the time the mode added to each packet or query on the path that limits the rate); the figure is the median over rounds",
            "spread": "each figure's median, min, max and interquartile range (with 4 values or more; quartiles interpolated) over its runs",
            "unrelated": "tracer watch --port 7999 --output json (no traffic on that port)",
            "traced": "tracer watch --port 7000 --output json (--port 5300 --dns-port 5300 for DNS), stdout piped to a line counter",
            "findings_only": "tracer watch --findings-only --port 7000 --output json (--port 5300 --dns-port 5300 for DNS): on the healthy lab the kernel sends nothing",
            "attach_floor": "tracer watch --port 7999 --empty-programs --output json: unrelated's programs attached where they are, returning at once",
            "findings_only_floor": "tracer watch --findings-only --empty-programs --port 7000 --output json (--port 5300 --dns-port 5300 for DNS): findings_only's programs, returning at once",
            "floors": "per watch, the ratio of its floor and the median added ns per packet of each: the floor's is what the kernel charges for running any program at those attach points, the difference what the programs' bodies add",
            "iptables_trace": "iptables-nft -t raw -A PREROUTING -p udp --dport/--sport PORT -j TRACE in the node namespace, `nft monitor trace` there piped to a line counter",
            "cpu_percent": "tracer's user+system CPU time during the load / wall time (100 = one core); for iptables_trace nft monitor's",
            "records_per_sec": "records tracer read (summary `records`: one per packet's journey) per second of load, traced",
            "records_per_sec_per_core": "records_per_sec / (cpu_percent / 100), per run, median",
            "rss_mib": "peak VmHWM of tracer over all its runs",
            "attach_ms": "from starting `ip netns exec NODE tracer watch` with traffic already flowing to the first packet line reaching the reader (median)",
            "lost_events": "sum over the traced max-rate runs of the kernel's count of records the ring buffer could not take",
            "lossless_pps": "traced runs at fixed rates, halving from half the baseline and then bisecting: the highest rate with no record lost and no bridge-in line missing",
            "findings_under_load": format!("a second lab with bridge-nf-call-iptables=0 and a FORWARD REJECT (icmp-host-prohibited, ICMP redirects off) for queries from the client's second address {REJECTED_CLIENT_IP} to port {DNS_PORT}; dnsperf at full rate through the ClusterIP, a dig from {REJECTED_CLIENT_IP} every 200 ms, tracer watch --findings-only --port {DNS_PORT} --dns-port {DNS_PORT}; named = the summary's finding_counts has the kind"),
        },
        "calibration": calibration_json(&m.calibration),
        "attach": {
            "first_event_ms": spread_json(attach, 1),
            "trials_first_event_ms": m.attach.iter().map(|a| a.first_event_ms.map(round1)).collect::<Vec<_>>(),
            "trials_watching_ms": m.attach.iter().map(|a| round1(a.ready_ms)).collect::<Vec<_>>(),
            "median_watching_ms": ready_ms.map(f64::round),
        },
        "udp": {
            "per_mode": mode_list(&udp, PACKETS),
            "traced": {
                "accounting_consistent": accounting_consistent,
                "lossless_pps": lossless_pps,
            },
            "iptables_trace": {
                "trace_lines_per_packet": trace_lines_per_packet.map(round3),
            },
            "runs": m.udp.iter().map(udp_run_json).collect::<Vec<_>>(),
            "lossless_search": m.lossless.iter().map(udp_run_json).collect::<Vec<_>>(),
        },
        "xtables_monitor": m.xtables_monitor.as_ref().map(|x| json!({
            "sent": x.sent,
            "secs": round3(x.secs),
            "received": x.received,
            "trace_lines": x.lines,
            "exited_after_ms": x.exited_after_ms.map(round1),
            "stderr": x.stderr,
        })),
        "dns": {
            "baseline_qps": median_of(&dns, Mode::Baseline, |f| f.rate, 0),
            "unrelated_ratio": median_of(&dns, Mode::Unrelated, |f| f.ratio, 3),
            "traced_ratio": median_of(&dns, Mode::Traced, |f| f.ratio, 3),
            "findings_only_ratio": median_of(&dns, Mode::FindingsOnly, |f| f.ratio, 3),
            "iptables_trace_ratio": median_of(&dns, Mode::IptablesTrace, |f| f.ratio, 3),
            "added_ns_per_query": by_mode(&dns, |f| f.added_ns, 0),
            "lost_events": figures_of(&dns, Mode::Traced).and_then(|t| t.lost),
            "per_mode": mode_list(&dns, QUERIES),
            "queries_lost": m.dns.iter().map(|r| r.perf.lost).sum::<u64>(),
            "runs": m.dns.iter().map(dns_run_json).collect::<Vec<_>>(),
        },
    });
    // Beside the macro's object: one more key there and it outgrows json!'s recursion limit.
    for (key, value) in [
        ("capture_ratio", json!(capture_ratio)),
        ("tcpdump_ratio", json!(tcpdump_ratio)),
        ("capture_lost", json!(capture_lost)),
        ("tcpdump_lost", json!(tcpdump_lost)),
    ] {
        results[key] = value;
    }
    results["method"]["capture"] = json!(
        "tracer watch --port 7000 --write F.pcapng --output none; lost = the summary `tracer report F` reads back from the capture"
    );
    results["method"]["tcpdump"] =
        json!("tcpdump -i any -n -w F.pcap 'udp port 7000' in the node namespace; lost = its 'packets dropped by kernel' at exit");
    results
}
