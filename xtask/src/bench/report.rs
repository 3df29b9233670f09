//! results.json and the table: the headline figures, the targets they are held against, and every
//! run behind them so a figure can be traced back to what was measured.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::results::{Calibration, DnsRun, Measured, Observed, UdpRun};
use super::stats::{self, median};
use super::{Mode, Plan};
use crate::cmd::{self, probe};

/// What the issue asks of tracer; the bench reports these, it does not fail on them.
const TARGET_UNRELATED_RATIO: f64 = 0.97;
const TARGET_TRACED_RATIO: f64 = 0.85;
const TARGET_ATTACH_MS: f64 = 1000.0;
const TARGET_RSS_MIB: f64 = 64.0;

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn load_average() -> Value {
    let text = read("/proc/loadavg");
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
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
        probe(
            Command::new("git")
                .current_dir(cmd::workspace_root())
                .args(args),
        )
        .map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).map(|c| {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{c} (with uncommitted changes)")
        } else {
            c
        }
    });
    json!({
        "cpu_model": cpu_model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "virtualized": virtualized,
        "memory_mib": memory_mib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "date_utc": probe(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).map(|d| d.trim().to_string()),
        "tracer_build": if tracer.components().any(|c| c.as_os_str() == "release") { "release" } else { "debug" },
        "tracer_commit": commit,
        "tracer_binary": tracer.display().to_string(),
        "load_average_at_start": load_average(),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn opt<T: Into<Value>>(x: Option<T>) -> Value {
    x.map_or(Value::Null, Into::into)
}

fn observed_json(o: &Option<Observed>) -> Value {
    match o {
        None => Value::Null,
        Some(o) => json!({
            "lines": o.lines,
            "bridge_in_lines": o.matched,
            "bytes": o.bytes,
            "records": o.summary.as_ref().map(|s| s.packets),
            "lost": o.summary.as_ref().map(|s| s.lost),
            "lost_per_cpu": o.summary.as_ref().map(|s| s.lost_per_cpu.clone()),
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
            "received_bridge_in_records": a.received_bridge_in_records,
            "missing_bridge_in_records": a.missing_bridge_in_records,
            "received_packet_records": a.received_packet_records,
            "expected_records": a.expected_records,
            "lost_events": a.lost_events,
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

/// Median per mode of the interleaved ratios, with the ratios themselves.
fn ratios_by_mode(runs: &[(Mode, f64)]) -> BTreeMap<&'static str, (f64, Vec<f64>)> {
    let mut by_mode: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (mode, ratio) in stats::interleaved_ratios(runs, |m| m == Mode::Baseline) {
        by_mode.entry(mode.name()).or_default().push(ratio);
    }
    by_mode
        .into_iter()
        .filter_map(|(k, v)| Some((k, (median(&v)?, v))))
        .collect()
}

fn of_mode<'a, T>(
    runs: &'a [T],
    mode: Mode,
    m: impl Fn(&T) -> Mode + 'a,
) -> impl Iterator<Item = &'a T> + 'a {
    runs.iter().filter(move |r| m(r) == mode)
}

fn calibration_json(c: &Calibration) -> Value {
    json!({
        "packets": c.packets,
        "packet_records": c.packet_records,
        "packet_records_per_packet": c.lines_per_packet(),
        "stages": c.stages.iter().map(|(k, v)| json!({"stage": k, "records": v})).collect::<Vec<_>>(),
        "hook_passes": c.hook_passes,
        "hook_passes_by_hook": c.hooks.iter().map(|(k, v)| json!({"hook": k, "passes": v})).collect::<Vec<_>>(),
        "netfilter_records": c.hook_records,
        "netfilter_records_per_packet": c.hook_records_per_packet(),
        "ring_records_per_packet": c.lines_per_packet() + c.hook_records_per_packet(),
        "other_lines": c.other_lines,
        "lost": c.summary.lost,
        "exact": c.exact,
        "formula": format!(
            "expected packet records = packets x {} ({}); expected ring records = packets x {} (+ {} netfilter records: early and late at each of {})",
            c.lines_per_packet(),
            c.stages.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(" + "),
            c.lines_per_packet() + c.hook_records_per_packet(),
            c.hook_records_per_packet(),
            c.hooks.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", "),
        ),
    })
}

fn target(name: &str, wanted: &str, value: Value, met: Option<bool>) -> Value {
    json!({"figure": name, "target": wanted, "value": value, "met": met})
}

pub fn results(plan: &Plan, machine: Value, m: &Measured, elapsed: Duration) -> Value {
    let mode_of_udp = |r: &UdpRun| r.mode;
    let mode_of_dns = |r: &DnsRun| r.mode;

    // UDP: the headline figures.
    let udp_seq: Vec<(Mode, f64)> = m.udp.iter().map(|r| (r.mode, r.pps())).collect();
    let udp_ratios = ratios_by_mode(&udp_seq);
    let ratio = |name: &str| udp_ratios.get(name).map(|(med, _)| round3(*med));
    let baseline: Vec<f64> = of_mode(&m.udp, Mode::Baseline, mode_of_udp)
        .map(UdpRun::pps)
        .collect();
    let traced: Vec<&UdpRun> = of_mode(&m.udp, Mode::Traced, mode_of_udp).collect();
    let lost_events: Option<u64> = traced
        .iter()
        .map(|r| r.observed.as_ref()?.summary.as_ref().map(|s| s.lost))
        .sum();
    let events_per_sec = median(
        &traced
            .iter()
            .filter_map(|r| Some(r.observed.as_ref()?.summary.as_ref()?.packets as f64 / r.secs))
            .collect::<Vec<_>>(),
    );
    let generated_records_per_sec = median(
        &traced
            .iter()
            .filter_map(|r| Some(r.accounting.as_ref()?.expected_records as f64 / r.secs))
            .collect::<Vec<_>>(),
    );
    // Every record the kernel produced and did not count as lost reached tracer, netfilter
    // records included (those only show folded into packet lines).
    let ring_records_delivered_per_sec = median(
        &traced
            .iter()
            .filter_map(|r| {
                let a = r.accounting.as_ref()?;
                Some(a.expected_records.saturating_sub(a.lost_events) as f64 / r.secs)
            })
            .collect::<Vec<_>>(),
    );
    let cpu_percent = median(
        &traced
            .iter()
            .filter_map(|r| r.observed.as_ref()?.cpu_percent)
            .collect::<Vec<_>>(),
    );
    let unrelated_cpu = median(
        &of_mode(&m.udp, Mode::Unrelated, mode_of_udp)
            .filter_map(|r| r.observed.as_ref()?.cpu_percent)
            .collect::<Vec<_>>(),
    );
    // Peak RSS over every tracer run (iptables_trace's observer is nft, not tracer).
    let tracer_rss = m
        .udp
        .iter()
        .chain(m.lossless.iter())
        .filter(|r| matches!(r.mode, Mode::Unrelated | Mode::Traced))
        .filter_map(|r| r.observed.as_ref()?.rss_kib)
        .chain(
            m.dns
                .iter()
                .filter(|r| matches!(r.mode, Mode::Unrelated | Mode::Traced))
                .filter_map(|r| r.observed.as_ref()?.rss_kib),
        )
        .max();
    let rss_mib = tracer_rss.map(|k| round1(k as f64 / 1024.0));
    let attach_ms = median(
        &m.attach
            .iter()
            .filter_map(|a| a.first_event_ms)
            .collect::<Vec<_>>(),
    );
    let ready_ms = median(&m.attach.iter().map(|a| a.ready_ms).collect::<Vec<_>>());
    let accounting_consistent = traced
        .iter()
        .all(|r| r.accounting.as_ref().is_some_and(|a| a.consistent));

    let trace_runs: Vec<&UdpRun> = of_mode(&m.udp, Mode::IptablesTrace, mode_of_udp).collect();
    let trace_lines_per_packet = median(
        &trace_runs
            .iter()
            .filter_map(|r| Some(r.observed.as_ref()?.lines as f64 / r.sent.max(1) as f64))
            .collect::<Vec<_>>(),
    );
    let nft_cpu = median(
        &trace_runs
            .iter()
            .filter_map(|r| r.observed.as_ref()?.cpu_percent)
            .collect::<Vec<_>>(),
    );

    let per_mode_udp: Vec<Value> = [
        Mode::Baseline,
        Mode::Unrelated,
        Mode::Traced,
        Mode::IptablesTrace,
    ]
    .iter()
    .map(|&mode| {
        let pps: Vec<f64> = of_mode(&m.udp, mode, mode_of_udp)
            .map(UdpRun::pps)
            .collect();
        let (ratio_median, ratios) = udp_ratios
            .get(mode.name())
            .cloned()
            .map_or((None, Vec::new()), |(m, v)| {
                (Some(round3(m)), v.into_iter().map(round3).collect())
            });
        json!({
            "mode": mode.name(),
            "median_pps": median(&pps).map(f64::round),
            "ratio": if mode == Mode::Baseline { Some(1.0) } else { ratio_median },
            "round_ratios": ratios,
        })
    })
    .collect();

    // The highest rate tracer followed without losing a record.
    let lossless_pps = m
        .lossless
        .iter()
        .filter(|r| {
            r.accounting
                .as_ref()
                .is_some_and(|a| a.lost_events == 0 && a.missing_bridge_in_records == 0)
        })
        .map(|r| r.pps().round())
        .fold(None, |acc: Option<f64>, x| {
            Some(acc.map_or(x, |a| a.max(x)))
        });

    // DNS.
    let dns_seq: Vec<(Mode, f64)> = m.dns.iter().map(|r| (r.mode, r.perf.qps)).collect();
    let dns_ratios = ratios_by_mode(&dns_seq);
    let dns_traced: Vec<&DnsRun> = of_mode(&m.dns, Mode::Traced, mode_of_dns).collect();
    let per_mode_dns: Vec<Value> = [Mode::Baseline, Mode::Unrelated, Mode::Traced, Mode::IptablesTrace]
        .iter()
        .map(|&mode| {
            let runs: Vec<&DnsRun> = of_mode(&m.dns, mode, mode_of_dns).collect();
            let (ratio_median, ratios) = dns_ratios
                .get(mode.name())
                .cloned()
                .map_or((None, Vec::new()), |(m, v)| (Some(round3(m)), v.into_iter().map(round3).collect()));
            json!({
                "mode": mode.name(),
                "median_qps": median(&runs.iter().map(|r| r.perf.qps).collect::<Vec<_>>()).map(f64::round),
                "median_latency_ms": median(&runs.iter().map(|r| r.perf.avg_latency_ms).collect::<Vec<_>>()).map(round3),
                "queries_lost": runs.iter().map(|r| r.perf.lost).sum::<u64>(),
                "ratio": if mode == Mode::Baseline { Some(1.0) } else { ratio_median },
                "round_ratios": ratios,
                "observer_cpu_percent": median(&runs.iter().filter_map(|r| r.observed.as_ref()?.cpu_percent).collect::<Vec<_>>()).map(round1),
                "observer_lines": runs.iter().filter_map(|r| r.observed.as_ref().map(|o| o.lines)).sum::<u64>(),
            })
        })
        .collect();
    let dns_lost_events: Option<u64> = dns_traced
        .iter()
        .map(|r| r.observed.as_ref()?.summary.as_ref().map(|s| s.lost))
        .sum();

    let traced_ratio = ratio("traced");
    let unrelated_ratio = ratio("unrelated");
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
        target(
            "lost_events",
            "= 0 (traced, at the highest rate)",
            opt(lost_events),
            lost_events.map(|l| l == 0),
        ),
        target(
            "attach_ms",
            &format!("< {TARGET_ATTACH_MS}"),
            opt(attach_ms.map(f64::round)),
            attach_ms.map(|a| a < TARGET_ATTACH_MS),
        ),
        target(
            "rss_mib",
            &format!("< {TARGET_RSS_MIB}"),
            opt(rss_mib),
            rss_mib.map(|r| r < TARGET_RSS_MIB),
        ),
    ];

    json!({
        "smoke": plan.smoke,
        "baseline_pps": median(&baseline).map(f64::round),
        "unrelated_ratio": unrelated_ratio,
        "traced_ratio": traced_ratio,
        "iptables_trace_ratio": ratio("iptables_trace"),
        "lost_events": lost_events,
        "events_per_sec": events_per_sec.map(f64::round),
        "cpu_percent": cpu_percent.map(round1),
        "rss_mib": rss_mib,
        "attach_ms": attach_ms.map(f64::round),
        "targets": targets,
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
            "bench_secs": elapsed.as_secs_f64().round(),
        },
        "method": {
            "load": "loadgen send (sendmmsg, 64 datagrams per call, 8-byte payload) from the client pod to ClusterIP 10.96.0.10:7000, DNATed by the node to the server pod 10.244.0.7:7000 across bridge cni0 (bridge-nf-call-iptables=1); loadgen recv counts what arrives; pps = received / send duration",
            "ratio": "per round: rate of the mode / mean of the baseline runs just before and after it; the figure is the median over rounds",
            "unrelated": "tracer watch --port 7999 --output json (no traffic on that port)",
            "traced": "tracer watch --port 7000 --output json, stdout piped to a line counter",
            "iptables_trace": "iptables-nft -t raw -A PREROUTING -p udp --dport/--sport PORT -j TRACE in the node namespace, `nft monitor trace` there piped to a line counter",
            "cpu_percent": "tracer's user+system CPU time during the load / wall time (100 = one core)",
            "rss_mib": "peak VmHWM of tracer over all its runs",
            "attach_ms": "from starting `ip netns exec NODE tracer watch` with traffic already flowing to the first packet line reaching the reader (median)",
            "events_per_sec": "packet records tracer delivered per second in the traced runs (each also carries the netfilter records folded into it)",
            "lost_events": "sum over the traced runs of the kernel's count of records the ring buffer could not take (all record kinds)",
        },
        "calibration": calibration_json(&m.calibration),
        "attach": {
            "first_event_ms": m.attach.iter().map(|a| a.first_event_ms.map(round1)).collect::<Vec<_>>(),
            "watching_ms": m.attach.iter().map(|a| round1(a.ready_ms)).collect::<Vec<_>>(),
            "median_watching_ms": ready_ms.map(f64::round),
        },
        "udp": {
            "per_mode": per_mode_udp,
            "traced": {
                "records_generated_per_sec": generated_records_per_sec.map(f64::round),
                "ring_records_delivered_per_sec": ring_records_delivered_per_sec.map(f64::round),
                "unrelated_cpu_percent": unrelated_cpu.map(round1),
                "accounting_consistent": accounting_consistent,
                "lossless_pps": lossless_pps,
            },
            "iptables_trace": {
                "trace_lines_per_packet": trace_lines_per_packet.map(round3),
                "nft_monitor_cpu_percent": nft_cpu.map(round1),
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
            "baseline_qps": median(&of_mode(&m.dns, Mode::Baseline, mode_of_dns).map(|r| r.perf.qps).collect::<Vec<_>>()).map(f64::round),
            "unrelated_ratio": dns_ratios.get("unrelated").map(|(x, _)| round3(*x)),
            "traced_ratio": dns_ratios.get("traced").map(|(x, _)| round3(*x)),
            "iptables_trace_ratio": dns_ratios.get("iptables_trace").map(|(x, _)| round3(*x)),
            "lost_events": dns_lost_events,
            "per_mode": per_mode_dns,
            "runs": m.dns.iter().map(dns_run_json).collect::<Vec<_>>(),
        },
    })
}

fn num(v: &Value, precision: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.precision$}"),
        None => "-".to_string(),
    }
}

/// The human summary of results.json.
pub fn table(r: &Value) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    let d = &r["machine"]["details"];
    line(format!(
        "\ntracer bench{}: {} x {} CPUs{}, kernel {}, tracer {} build {}, {} s",
        if r["smoke"] == true {
            " (SMOKE: one short round, figures not meaningful)"
        } else {
            ""
        },
        d["cpu_model"].as_str().unwrap_or("?"),
        d["cpus"],
        if d["virtualized"] == true {
            " (VM)"
        } else {
            ""
        },
        d["kernel"].as_str().unwrap_or("?"),
        d["tracer_commit"].as_str().unwrap_or("?"),
        d["tracer_build"].as_str().unwrap_or("?"),
        r["plan"]["bench_secs"],
    ));
    line(format!(
        "load average at start {} / at end {}",
        d["load_average_at_start"], r["machine"]["load_average_at_end"]
    ));
    line(String::new());
    line(format!(
        "{:<16} {:>11} {:>7} {:>12} {:>10} {:>9}  {}",
        "UDP (max rate)", "pps", "ratio", "records/s", "lost", "CPU %", "round ratios"
    ));
    for m in r["udp"]["per_mode"].as_array().into_iter().flatten() {
        let mode = m["mode"].as_str().unwrap_or("?");
        let (records, lost, cpu) = match mode {
            "traced" => (
                num(&r["events_per_sec"], 0),
                num(&r["lost_events"], 0),
                num(&r["cpu_percent"], 1),
            ),
            "unrelated" => (
                "-".into(),
                "-".into(),
                num(&r["udp"]["traced"]["unrelated_cpu_percent"], 1),
            ),
            "iptables_trace" => (
                "-".into(),
                "-".into(),
                num(&r["udp"]["iptables_trace"]["nft_monitor_cpu_percent"], 1),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let ratios: Vec<String> = m["round_ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| num(x, 3))
            .collect();
        line(format!(
            "{:<16} {:>11} {:>7} {:>12} {:>10} {:>9}  {}",
            mode,
            num(&m["median_pps"], 0),
            num(&m["ratio"], 3),
            records,
            lost,
            cpu,
            ratios.join(" ")
        ));
    }
    line(format!(
        "  traced: {} records/s generated in the kernel, {} delivered (netfilter records included), lossless up to {} pps; iptables_trace: {} trace lines per packet (CPU % is nft monitor's)",
        num(&r["udp"]["traced"]["records_generated_per_sec"], 0),
        num(&r["udp"]["traced"]["ring_records_delivered_per_sec"], 0),
        num(&r["udp"]["traced"]["lossless_pps"], 0),
        num(&r["udp"]["iptables_trace"]["trace_lines_per_packet"], 2),
    ));
    if let Some(x) = r["xtables_monitor"].as_object() {
        line(format!(
            "  xtables-monitor --trace under the same load: {}, {} trace lines for {} packets",
            match x["exited_after_ms"].as_f64() {
                Some(ms) => format!(
                    "exited after {ms:.0} ms ({})",
                    x["stderr"].as_str().unwrap_or("")
                ),
                None => "kept running".to_string(),
            },
            x["trace_lines"],
            x["sent"],
        ));
    }
    line(String::new());
    line(format!(
        "{:<16} {:>11} {:>7} {:>12} {:>10} {:>9}  {}",
        "DNS (dnsperf)", "qps", "ratio", "latency ms", "q lost", "CPU %", "round ratios"
    ));
    for m in r["dns"]["per_mode"].as_array().into_iter().flatten() {
        let ratios: Vec<String> = m["round_ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| num(x, 3))
            .collect();
        line(format!(
            "{:<16} {:>11} {:>7} {:>12} {:>10} {:>9}  {}",
            m["mode"].as_str().unwrap_or("?"),
            num(&m["median_qps"], 0),
            num(&m["ratio"], 3),
            num(&m["median_latency_ms"], 3),
            m["queries_lost"],
            num(&m["observer_cpu_percent"], 1),
            ratios.join(" ")
        ));
    }
    line(format!(
        "  traced DNS: lost records {}",
        r["dns"]["lost_events"]
    ));
    line(String::new());
    line(format!(
        "calibration: {}",
        r["calibration"]["formula"].as_str().unwrap_or("?")
    ));
    line(format!(
        "attach: first event after {} ms (median; watching after {} ms)",
        num(&r["attach_ms"], 0),
        num(&r["attach"]["median_watching_ms"], 0)
    ));
    line(String::new());
    line("targets (reported, not enforced):".to_string());
    for t in r["targets"].as_array().into_iter().flatten() {
        line(format!(
            "  {:<16} {:<34} {:>10}  {}",
            t["figure"].as_str().unwrap_or("?"),
            t["target"].as_str().unwrap_or("?"),
            match &t["value"] {
                Value::Null => "-".to_string(),
                v => v.to_string(),
            },
            match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            }
        ));
    }
    out
}

/// One line per UDP run as it finishes.
pub(super) fn print_udp_run(run: &UdpRun) {
    let mut line = format!(
        "bench: udp {:<14} {:>9.0} pps  sent {:>8}  received {:>8}",
        run.mode.name(),
        run.pps(),
        run.sent,
        run.received
    );
    if let Some(rate) = run.rate_limit {
        line.push_str(&format!("  (limit {rate} pps)"));
    }
    if let Some(o) = &run.observed {
        line.push_str(&format!("  lines {:>8}", o.lines));
        if let Some(s) = &o.summary {
            line.push_str(&format!("  records {}  lost {}", s.packets, s.lost));
        }
        if let Some(cpu) = o.cpu_percent {
            line.push_str(&format!("  cpu {cpu:.0}%"));
        }
    }
    println!("{line}");
}

/// One line per DNS run as it finishes.
pub(super) fn print_dns_run(run: &DnsRun) {
    let mut line = format!(
        "bench: dns {:<14} {:>9.0} qps  completed {:>8}  lost {:>5}  latency {:.2} ms",
        run.mode.name(),
        run.perf.qps,
        run.perf.completed,
        run.perf.lost,
        run.perf.avg_latency_ms
    );
    if let Some(o) = &run.observed {
        line.push_str(&format!("  lines {:>8}", o.lines));
        if let Some(s) = &o.summary {
            line.push_str(&format!("  lost records {}", s.lost));
        }
        if let Some(cpu) = o.cpu_percent {
            line.push_str(&format!("  cpu {cpu:.0}%"));
        }
    }
    println!("{line}");
}

