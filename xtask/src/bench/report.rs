//! results.json: the headline figures, the targets they are held against, each figure's spread
//! over the rounds behind it, and every run, so a figure can be traced back to what was measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::findings::REJECTED_CLIENT_IP;
use super::profile::{empty_programs_of, ModeProfile};
use super::results::{Calibration, DnsRun, FindingsUnderLoad, Measured, Observed, UdpRun};
use super::stats::{self, median, Spread, Summary};
use super::{Mode, Plan, DNS_PORT};
use crate::cmd::{self, probe};

/// What tracer is held to; the bench reports these, it does not fail on them.
const TARGET_UNRELATED_RATIO: f64 = 0.93;
const TARGET_FINDINGS_ONLY_RATIO: f64 = 0.93;
/// The traced ratio must beat the TRACE workflow by this much, and be at least the floor.
const TARGET_TRACED_OVER_TRACE: f64 = 0.15;
const TARGET_TRACED_RATIO: f64 = 0.65;
/// The always-on agent on a broken node under load: a share of one core at most.
const TARGET_FINDINGS_CPU_PERCENT: f64 = 5.0;
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
        "trimmed_mean": r(s.trimmed_mean),
        "noise": s.noise.map(r),
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
            // The baseline's own ratio is each baseline against its neighbours: 1 but for noise.
            let ratios: Vec<f64> = if mode == Mode::Baseline {
                stats::baseline_ratios(&sequence, |m| m == Mode::Baseline)
            } else {
                compared.iter().filter(|c| c.mode == mode).filter_map(|c| c.ratio()).collect()
            };
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

/// One spread figure of one mode as a run reports it (its trimmed mean), rounded.
fn figure_of(
    figures: &[ModeFigures],
    mode: Mode,
    pick: impl Fn(&ModeFigures) -> Option<Spread>,
    decimals: i32,
) -> Option<f64> {
    figures_of(figures, mode).and_then(pick).map(|s| round_to(s.trimmed_mean, decimals))
}

/// The noise of a mode's ratio: how far another run might put it.
fn ratio_noise(figures: &[ModeFigures], mode: Mode) -> Option<f64> {
    figures_of(figures, mode).and_then(|f| f.ratio).and_then(|s| s.noise)
}

/// `{"unrelated": 0.8, "traced": ...}`: one figure's median per measured mode.
fn by_mode(figures: &[ModeFigures], pick: impl Fn(&ModeFigures) -> Option<Spread> + Copy, decimals: i32) -> Value {
    Mode::MEASURED
        .iter()
        .map(|&mode| (mode.name().to_string(), opt(figure_of(figures, mode, pick, decimals))))
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

/// Symbols of the load CPU's profile listed per mode.
const PROFILE_SYMBOLS: usize = 20;

fn programs_ns_per_packet(p: &ModeProfile) -> Option<f64> {
    let ns: u64 = p.programs.as_ref()?.iter().map(|c| c.run_ns).sum();
    Some(ns as f64 / p.packets.max(1) as f64)
}

/// Each profiled mode: its programs' own time per packet beside the time the mode added per
/// packet in the rounds (the rest is outside the programs: attach points, wakeups, caches), and
/// the load CPU's busiest symbols.
fn profiles_json(profiles: &Result<Vec<ModeProfile>, String>, udp: &[ModeFigures]) -> Value {
    let profiles = match profiles {
        Ok(p) => p,
        Err(error) => return json!({"error": error}),
    };
    let modes: Vec<Value> = profiles
        .iter()
        .map(|p| {
            let packets = p.packets.max(1) as f64;
            let programs = p.programs.as_ref().map(|programs| {
                programs
                    .iter()
                    .map(|c| {
                        json!({
                            "name": c.name,
                            "type": c.kind,
                            "runs_per_packet": round3(c.runs as f64 / packets),
                            "ns_per_run": round1(c.run_ns as f64 / c.runs.max(1) as f64),
                            "ns_per_packet": round1(c.run_ns as f64 / packets),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            let programs_ns = programs_ns_per_packet(p);
            // The same programs, empty, run as often: their time is the statistics' own and the
            // call's; what is left is the bodies'.
            let empty_ns = empty_programs_of(p.mode)
                .and_then(|floor| profiles.iter().find(|q| q.mode == floor))
                .and_then(programs_ns_per_packet);
            let added = figure_of(udp, p.mode, |f| f.added_ns, 0);
            json!({
                "mode": p.mode.name(),
                "packets": p.packets,
                "pps": (p.packets as f64 / p.secs.max(1e-9)).round(),
                "programs": programs,
                "programs_ns_per_packet": programs_ns.map(round1),
                "empty_programs_ns_per_packet": empty_ns.map(round1),
                "bodies_ns_per_packet": programs_ns.zip(empty_ns).map(|(p, e)| round1(p - e)),
                "added_ns_per_packet": added,
                "outside_bodies_ns_per_packet": added.zip(programs_ns.zip(empty_ns)).map(|(a, (p, e))| round1(a - (p - e))),
                "load_cpu_symbols": p.symbols.iter().take(PROFILE_SYMBOLS).map(|(pct, sym)| json!({"percent": pct, "symbol": sym})).collect::<Vec<_>>(),
                "perf_error": p.perf_error,
                "observer_symbols": p.observer_symbols.iter().take(PROFILE_SYMBOLS).map(|(pct, sym)| json!({"percent": pct, "symbol": sym})).collect::<Vec<_>>(),
                "observer_perf_error": p.observer_perf_error,
            })
        })
        .collect();
    json!({"error": null, "modes": modes})
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

/// How much of what the run reports stands out of its noise: the baselines against each other
/// (the bench's resolution), and every target and floor whose difference the noise could explain.
fn noise_json(udp: &[ModeFigures], targets: &[Value], floors: &[Value]) -> Value {
    let baseline = figures_of(udp, Mode::Baseline).and_then(|f| f.ratio);
    let describe = |v: &Value, what: String| format!("{what}: noise ±{}", v["noise"]);
    let within: Vec<String> = targets
        .iter()
        .filter(|t| t["within_noise"] == true)
        .map(|t| {
            describe(t, format!("{} {} against {} (margin {})", t["figure"], t["value"], t["target"], t["margin"]))
        })
        .chain(
            floors
                .iter()
                .filter(|f| f["within_noise"] == true)
                .map(|f| describe(f, format!("{} {} against its floor {}", f["figure"], f["ratio"], f["floor_ratio"]))),
        )
        .map(|s| s.replace('"', ""))
        .collect();
    json!({
        "baseline_ratio": spread_json(baseline, 3),
        "noisy": !within.is_empty(),
        "within_noise": within,
    })
}

fn target(name: &str, wanted: &str, value: Value, met: Option<bool>) -> Value {
    json!({"figure": name, "target": wanted, "value": value, "met": met})
}

/// The noise of a difference of two figures, each with its own.
fn combined_noise(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a.hypot(b))
}

/// A ratio held against a threshold, with its noise; where the noise is as large as the margin
/// either way, the verdict is marked `within_noise`: another run could well reverse it.
fn ratio_target(name: &str, wanted: String, value: Option<f64>, threshold: Option<f64>, noise: Option<f64>) -> Value {
    let margin = value.zip(threshold).map(|(v, t)| v - t);
    let mut t = target(name, &wanted, opt(value), margin.map(|m| m >= 0.0));
    t["noise"] = opt(noise.map(round3));
    t["margin"] = opt(margin.map(round3));
    t["within_noise"] = opt(margin.zip(noise).map(|(m, n)| m.abs() < n));
    t
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
    let ratio = |mode| figure_of(&udp, mode, |f| f.ratio, 3);
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
    let under_load = &findings_json["tracer"];
    let (load_cpu, load_lost) = (under_load["cpu_percent"].as_f64(), under_load["lost"].as_u64());
    let findings_met = both_named
        .zip(findings_json["counts_equal"].as_bool())
        .zip(load_cpu.zip(load_lost))
        .map(|((named, equal), (cpu, lost))| named && equal && cpu <= TARGET_FINDINGS_CPU_PERCENT && lost == 0);
    let noise = |mode| ratio_noise(&udp, mode);
    let trace_ratio = ratio(Mode::IptablesTrace);
    // Against the TRACE workflow where that is the higher bar: both ratios' noise then counts.
    let traced_bar = trace_ratio.map(|t| t + TARGET_TRACED_OVER_TRACE).filter(|bar| *bar > TARGET_TRACED_RATIO);
    let traced_threshold = traced_bar.unwrap_or(TARGET_TRACED_RATIO);
    let traced_noise = match traced_bar {
        Some(_) => combined_noise(noise(Mode::Traced), noise(Mode::IptablesTrace)),
        None => noise(Mode::Traced),
    };
    let targets = vec![
        ratio_target(
            "unrelated_ratio",
            format!(">= {TARGET_UNRELATED_RATIO}"),
            unrelated_ratio,
            Some(TARGET_UNRELATED_RATIO),
            noise(Mode::Unrelated),
        ),
        ratio_target(
            "findings_only_ratio",
            format!(">= {TARGET_FINDINGS_ONLY_RATIO}"),
            findings_only_ratio,
            Some(TARGET_FINDINGS_ONLY_RATIO),
            noise(Mode::FindingsOnly),
        ),
        ratio_target(
            "traced_ratio",
            format!(">= iptables_trace_ratio + {TARGET_TRACED_OVER_TRACE} and >= {TARGET_TRACED_RATIO}"),
            traced_ratio,
            trace_ratio.map(|_| traced_threshold),
            traced_noise,
        ),
        target("lost_events", "= 0 (traced, at the highest rate)", opt(lost_events), lost_events.map(|l| l == 0)),
        {
            let mut t = ratio_target(
                "capture_ratio",
                ">= tcpdump_ratio, capture_lost = 0".to_string(),
                capture_ratio,
                tcpdump_ratio,
                combined_noise(noise(Mode::Capture), noise(Mode::Tcpdump)),
            );
            t["value"] =
                json!({"capture_ratio": capture_ratio, "tcpdump_ratio": tcpdump_ratio, "capture_lost": capture_lost});
            t["met"] = json!(capture_met);
            t
        },
        target(
            "findings_under_load",
            &format!("both named, occurrences = the kernel's, cpu_percent <= {TARGET_FINDINGS_CPU_PERCENT}, lost = 0"),
            json!({"all_named": both_named, "counts_equal": findings_json["counts_equal"], "cpu_percent": load_cpu, "lost": load_lost}),
            findings_met,
        ),
        target("rss_mib", &format!("< {TARGET_RSS_MIB}"), opt(rss_mib), rss_mib.map(|r| r < TARGET_RSS_MIB)),
        target("attach_ms", &format!("< {TARGET_ATTACH_MS}"), opt(attach_ms), attach_ms.map(|a| a < TARGET_ATTACH_MS)),
    ];

    // What the attach points cost with empty programs, beside the watch they are the floor of:
    // the ratio no program body there can beat, and how the added time splits.
    let added = |mode| figure_of(&udp, mode, |f| f.added_ns, 0);
    let floor = |figure: &str, watch: Mode, floor: Mode| {
        let difference = ratio(watch).zip(ratio(floor)).map(|(w, f)| f - w);
        let noise = combined_noise(noise(watch), noise(floor));
        json!({
            "figure": figure,
            "ratio": ratio(watch),
            "floor_ratio": ratio(floor),
            "difference": difference.map(round3),
            "noise": noise.map(round3),
            "within_noise": difference.zip(noise).map(|(d, n)| d.abs() < n),
            "added_ns_per_packet": added(watch),
            "attach_points_ns_per_packet": added(floor),
            "programs_ns_per_packet": added(watch).zip(added(floor)).map(|(w, f)| w - f),
        })
    };
    let floors = vec![
        floor("unrelated_ratio", Mode::Unrelated, Mode::AttachFloor),
        floor("findings_only_ratio", Mode::FindingsOnly, Mode::FindingsOnlyFloor),
    ];
    let noise_json = noise_json(&udp, &targets, &floors);

    let mode_list = |figures: &[ModeFigures], unit: Unit| -> Vec<Value> {
        figures.iter().map(|f| mode_json(f, unit).into()).collect()
    };

    let mut results = json!({
        "smoke": plan.smoke,
        "baseline_pps": figure_of(&udp, Mode::Baseline, |f| f.rate, 0),
        "unrelated_ratio": unrelated_ratio,
        "traced_ratio": traced_ratio,
        "findings_only_ratio": findings_only_ratio,
        "iptables_trace_ratio": ratio(Mode::IptablesTrace),
        "added_ns_per_packet": by_mode(&udp, |f| f.added_ns, 0),
        "lost_events": lost_events,
        "lossless_pps": lossless_pps,
        "records_per_sec": figure_of(&udp, Mode::Traced, |f| f.records_per_sec, 0),
        "records_per_sec_per_core": figure_of(&udp, Mode::Traced, |f| f.records_per_sec_per_core, 0),
        "cpu_percent": figure_of(&udp, Mode::Traced, |f| f.observer_cpu_percent, 1),
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
            "ratio": "per round: rate of the mode / mean of the baseline runs just before and after it; the figure is the trimmed mean over rounds (see spread); a baseline's own ratio is it over the baselines either side of it, 1 but for noise",
            "added_ns": "per round: 1e9/rate of the mode minus the mean of 1e9/rate of the baselines just before and after it (the time the mode added to each packet or query on the path that limits the rate); the figure is the trimmed mean over rounds",
            "spread": "each figure's trimmed mean (a fifth of the values, rounded down, set aside at either end), its noise (twice the standard error of the trimmed mean from the winsorized variance, about a 95 % interval; 3 values or more), median, min, max and interquartile range (4 values or more; quartiles interpolated) over its runs",
            "noise": "a verdict is within noise when the noise of its figure (of both, combined, for a difference of two) is larger than its margin; a run with any such verdict is marked noisy",
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
            "baseline_qps": figure_of(&dns, Mode::Baseline, |f| f.rate, 0),
            "unrelated_ratio": figure_of(&dns, Mode::Unrelated, |f| f.ratio, 3),
            "traced_ratio": figure_of(&dns, Mode::Traced, |f| f.ratio, 3),
            "findings_only_ratio": figure_of(&dns, Mode::FindingsOnly, |f| f.ratio, 3),
            "iptables_trace_ratio": figure_of(&dns, Mode::IptablesTrace, |f| f.ratio, 3),
            "added_ns_per_query": by_mode(&dns, |f| f.added_ns, 0),
            "lost_events": figures_of(&dns, Mode::Traced).and_then(|t| t.lost),
            "per_mode": mode_list(&dns, QUERIES),
            "queries_lost": m.dns.iter().map(|r| r.perf.lost).sum::<u64>(),
            "runs": m.dns.iter().map(dns_run_json).collect::<Vec<_>>(),
        },
    });
    // Beside the macro's object: one more key there and it outgrows json!'s recursion limit.
    for (key, value) in [
        ("noise", noise_json),
        ("placement", super::cpus::placement_json()),
        ("profile", profiles_json(&m.profiles, &udp)),
        ("capture_ratio", json!(capture_ratio)),
        ("tcpdump_ratio", json!(tcpdump_ratio)),
        ("capture_lost", json!(capture_lost)),
        ("tcpdump_lost", json!(tcpdump_lost)),
    ] {
        results[key] = value;
    }
    results["method"]["profile"] = json!(
        "after the rounds, one UDP run per mode with the kernel's BPF run-time statistics on (BPF_ENABLE_STATS; they add two clock reads per program run, so these runs give no ratios): each of tracer's programs' runs and run time per packet sent, from bpftool prog show; and perf record -F 2999 on the load's CPU for the sender's whole life, and of the observer process (perf record -p) over the middle of the run, perf report --sort sym, symbols above 0.5 %. bodies_ns_per_packet = the programs' run time per packet less that of the same programs empty (attach_floor, findings_only_floor) in the same conditions; outside_bodies_ns_per_packet = the mode's added ns per packet in the rounds less its bodies' (attach points, ring buffer, caches). On a VM without NMIs perf cannot sample where interrupts are off, and charges that time to the function that turns them on again (_raw_spin_unlock_irqrestore)"
    );
    results["method"]["capture"] = json!(
        "tracer watch --port 7000 --write F.pcapng --output none; lost = the summary `tracer report F` reads back from the capture"
    );
    results["method"]["tcpdump"] =
        json!("tcpdump -i any -n -w F.pcap 'udp port 7000' in the node namespace; lost = its 'packets dropped by kernel' at exit");
    results
}
