//! The bench's results for people: the table printed at the end of a run (read from results.json,
//! so it says exactly what the file holds), the same table appended to bench/RESULTS.md, and a
//! line per run as it finishes.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::findings::REJECTED_CLIENT_IP;
use super::report::FINDINGS_UNDER_LOAD;
use super::results::{DnsRun, UdpRun};

/// The figures of a mode shown in the table, in this order, with their decimals; a figure a mode
/// does not have (null in results.json) has no row.
const MODE_FIGURES: [(&str, usize); 9] = [
    ("pps", 0),
    ("qps", 0),
    ("ratio", 3),
    ("added_ns_per_packet", 0),
    ("added_ns_per_query", 0),
    ("latency_ms", 3),
    ("observer_cpu_percent", 1),
    ("records_per_sec", 0),
    ("records_per_sec_per_core", 0),
];
/// Losses are shown for tracer's modes only, and also where they are zero.
const LOST_FIGURE: (&str, usize) = ("lost_per_run", 0);

fn num(v: &Value, decimals: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_string(),
    }
}

fn text<'a>(v: &'a Value, or: &'a str) -> &'a str {
    v.as_str().unwrap_or(or)
}

/// "1.20 0.90 0.70": the 1, 5 and 15 minute averages, as `uptime` shows them.
fn load_average(v: &Value) -> String {
    let averages: Vec<String> = v.as_array().into_iter().flatten().map(|x| num(x, 2)).collect();
    averages.join(" ")
}

fn range(low: &Value, high: &Value, decimals: usize) -> String {
    format!("{} – {}", num(low, decimals), num(high, decimals))
}

/// "0.912 ± 0.021": a figure with its noise, where there is one.
fn with_noise(value: &Value, noise: &Value, decimals: usize) -> String {
    match noise.as_f64() {
        Some(_) => format!("{} ± {}", num(value, decimals), num(noise, decimals)),
        None => num(value, decimals),
    }
}

/// One row: a figure (the trimmed mean) with its noise, its median, extremes and interquartile
/// range.
fn spread_row(mode: &str, figure: &str, spread: &Value, decimals: usize) -> String {
    format!(
        "{mode:<20}{figure:<26}{:>18}  {:>11}  {:>23}  {:>23}",
        with_noise(&spread["trimmed_mean"], &spread["noise"], decimals),
        num(&spread["median"], decimals),
        range(&spread["min"], &spread["max"], decimals),
        match spread["iqr"].as_array().map(Vec::as_slice) {
            Some([q1, q3]) => range(q1, q3, decimals),
            _ => "-".to_string(),
        }
    )
}

/// The rows of one load's modes (`udp`, `dns`), under a heading line.
fn mode_rows(r: &Value, load: &str, name: &str) -> Vec<String> {
    let plan = &r["plan"];
    let heading = format!("{name}, {} rounds of {} s", plan[format!("{load}_rounds")], plan["secs_per_run"]);
    let mut rows = vec![format!(
        "{heading:<46}{:>18}  {:>11}  {:>23}  {:>23}",
        "figure ± noise", "median", "min – max", "interquartile"
    )];
    for entry in r[load]["per_mode"].as_array().into_iter().flatten() {
        let mode = text(&entry["mode"], "?");
        let lost = (!entry["lost"].is_null()).then_some(LOST_FIGURE);
        for (figure, decimals) in MODE_FIGURES.into_iter().chain(lost) {
            if entry[figure].is_object() {
                rows.push(spread_row(mode, figure, &entry[figure], decimals));
            }
        }
    }
    rows
}

fn findings_rows(f: &Value, plan: &Value) -> Vec<String> {
    let mut rows = vec![format!(
        "findings under load (bridge-nf-call-iptables=0, FORWARD REJECT of {REJECTED_CLIENT_IP}'s queries, {} s of dnsperf, tracer watch --findings-only):",
        num(&plan["findings_secs"], 1)
    )];
    if let Some(error) = f["error"].as_str() {
        rows.push(format!("  could not run: {error}"));
        return rows;
    }
    let named: Vec<String> = FINDINGS_UNDER_LOAD
        .iter()
        .map(|kind| {
            let k = &f[*kind];
            format!(
                "{kind} {} ({} occurrences, {} unconfirmed)",
                if k["named"] == true { "named" } else { "NOT NAMED" },
                num(&k["occurrences"], 0),
                num(&k["unconfirmed"], 0)
            )
        })
        .collect();
    rows.push(format!("  {}", named.join("; ")));
    let t = &f["tracer"];
    rows.push(format!(
        "  load {} qps ({} queries, {} lost); {} queries from {REJECTED_CLIENT_IP}, {} refused by the rule, {} seen refused; tracer {} records, {} lost, CPU {} %",
        num(&f["qps"], 0),
        num(&f["queries_sent"], 0),
        num(&f["queries_lost"], 0),
        num(&f["rejected_queries"], 0),
        num(&f["reject_rule_packets"], 0),
        num(&f["refused_seen_by_client"], 0),
        num(&t["records"], 0),
        num(&t["lost"], 0),
        num(&t["cpu_percent"], 1),
    ));
    rows
}

/// The human summary of results.json.
pub fn table(r: &Value) -> String {
    let d = &r["machine"]["details"];
    let plan = &r["plan"];
    let mut rows = vec![
        format!(
            "tracer bench{} {}: {} x {} CPUs{}, kernel {}, tracer {} ({} build), {} s",
            if r["smoke"] == true { " (SMOKE: one short round, figures not meaningful)" } else { "" },
            text(&d["date_utc"], "?"),
            text(&d["cpu_model"], "?"),
            d["cpus"],
            if d["virtualized"] == true { " (VM)" } else { "" },
            text(&d["kernel"], "?"),
            text(&d["tracer_commit"], "?"),
            text(&d["tracer_build"], "?"),
            plan["bench_secs"],
        ),
        format!(
            "load average {} at start, {} at end",
            load_average(&d["load_average_at_start"]),
            load_average(&r["machine"]["load_average_at_end"])
        ),
        String::new(),
    ];
    rows.extend(mode_rows(r, "udp", "UDP at max rate"));
    rows.push(format!(
        "  traced: lossless up to {} pps; {} lost at max rate; every missing bridge-in line covered by a lost record: {}",
        num(&r["lossless_pps"], 0),
        num(&r["lost_events"], 0),
        if r["udp"]["traced"]["accounting_consistent"] == true { "yes" } else { "NO" },
    ));
    rows.push(format!(
        "  iptables_trace: {} trace lines per packet (its CPU % is nft monitor's)",
        num(&r["udp"]["iptables_trace"]["trace_lines_per_packet"], 2),
    ));
    if let Some(x) = r["xtables_monitor"].as_object() {
        rows.push(format!(
            "  xtables-monitor --trace under the same load: {}, {} trace lines for {} packets",
            match x["exited_after_ms"].as_f64() {
                Some(ms) => format!("exited after {ms:.0} ms ({})", text(&x["stderr"], "")),
                None => "kept running".to_string(),
            },
            x["trace_lines"],
            x["sent"],
        ));
    }
    rows.push(String::new());
    rows.extend(mode_rows(r, "dns", "DNS (dnsperf)"));
    rows.push(format!("  queries lost by dnsperf in all runs: {}", num(&r["dns"]["queries_lost"], 0)));
    rows.push(String::new());
    rows.extend(findings_rows(&r["findings_under_load"], plan));
    rows.push(String::new());
    rows.push(format!(
        "calibration: {}{}",
        text(&r["calibration"]["model"], "?"),
        if r["calibration"]["exact"] == true { "" } else { " (NOT one record per packet)" }
    ));
    rows.push(format!(
        "attach: first event after {} ms (median of {}; watching after {} ms)",
        num(&r["attach_ms"], 0),
        num(&r["attach"]["first_event_ms"]["n"], 0),
        num(&r["attach"]["median_watching_ms"], 0)
    ));
    rows.push(String::new());
    rows.push("targets (reported, not enforced):".to_string());
    for t in r["targets"].as_array().into_iter().flatten() {
        let value = match (&t["value"], t["noise"].as_f64()) {
            (Value::Null, _) => "-".to_string(),
            (v @ Value::Number(_), Some(_)) => with_noise(v, &t["noise"], 3),
            (v, _) => v.to_string(),
        };
        rows.push(format!(
            "  {:<20} {:<52} {:>16}  {}{}",
            text(&t["figure"], "?"),
            text(&t["target"], "?"),
            value,
            match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            },
            if t["within_noise"] == true { " (within noise: another run could say otherwise)" } else { "" },
        ));
    }
    rows.push(
        "floors (the same attach points, programs that return at once: no program body does better):".to_string(),
    );
    for f in r["floors"].as_array().into_iter().flatten() {
        rows.push(format!(
            "  {:<20} {} of a floor of {}: +{} ns per packet, {} ns of it the attach points alone, {} ns the programs{}",
            text(&f["figure"], "?"),
            num(&f["ratio"], 3),
            num(&f["floor_ratio"], 3),
            num(&f["added_ns_per_packet"], 0),
            num(&f["attach_points_ns_per_packet"], 0),
            num(&f["programs_ns_per_packet"], 0),
            if f["within_noise"] == true { " (within noise)" } else { "" },
        ));
    }
    rows.extend(profile_rows(&r["profile"]));
    let noise = &r["noise"];
    rows.push(format!(
        "noise: baselines against their neighbours {} (1 but for noise; min – max {})",
        with_noise(&noise["baseline_ratio"]["trimmed_mean"], &noise["baseline_ratio"]["noise"], 3),
        range(&noise["baseline_ratio"]["min"], &noise["baseline_ratio"]["max"], 3),
    ));
    if noise["noisy"] == true {
        rows.push("NOISY RUN: the noise is larger than these differences it reports:".to_string());
        for line in noise["within_noise"].as_array().into_iter().flatten() {
            rows.push(format!("  {}", text(line, "?")));
        }
    }
    rows.join("\n")
}

/// Symbols of the load CPU shown per mode in the table (results.json has more).
const TABLE_SYMBOLS: usize = 8;

fn profile_rows(p: &Value) -> Vec<String> {
    let mut rows = vec!["profiles (one run per mode, BPF run-time statistics on; the load's CPU by perf):".to_string()];
    if let Some(error) = p["error"].as_str() {
        rows.push(format!("  could not run: {error}"));
        return rows;
    }
    for m in p["modes"].as_array().into_iter().flatten() {
        let mut line = format!("  {:<20}", text(&m["mode"], "?"));
        if m["programs_ns_per_packet"].is_number() {
            line.push_str(&format!(
                "programs {} ns per packet (bodies {} of it) of +{} added: ",
                num(&m["programs_ns_per_packet"], 0),
                num(&m["bodies_ns_per_packet"], 0),
                num(&m["added_ns_per_packet"], 0),
            ));
            let programs: Vec<String> = m["programs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    format!(
                        "{} {}x{} ns",
                        text(&c["name"], "?"),
                        num(&c["runs_per_packet"], 2),
                        num(&c["ns_per_run"], 0)
                    )
                })
                .collect();
            line.push_str(&programs.join(", "));
        }
        rows.push(line);
        let symbols = |key: &str| -> String {
            m[key]
                .as_array()
                .into_iter()
                .flatten()
                .take(TABLE_SYMBOLS)
                .map(|s| format!("{} {}", num(&s["percent"], 1), text(&s["symbol"], "?")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match m["perf_error"].as_str() {
            Some(error) => rows.push(format!("    load CPU: no profile: {error}")),
            None => rows.push(format!("    load CPU %: {}", symbols("load_cpu_symbols"))),
        }
        match m["observer_perf_error"].as_str() {
            Some(error) => rows.push(format!("    observer: no profile: {error}")),
            None if m["observer_symbols"].as_array().is_some_and(|a| !a.is_empty()) => {
                rows.push(format!("    observer %: {}", symbols("observer_symbols")))
            }
            None => {}
        }
    }
    rows
}

/// Appends a run's table to the record of figures, under a heading with its date and commit.
pub fn append_to_record(record: &Path, r: &Value, table: &str) -> Result<()> {
    let d = &r["machine"]["details"];
    let entry = format!(
        "\n### {}, tracer {}\n\n`cargo xtask bench --append-results`, {} s.\n\n```text\n{table}\n```\n",
        text(&d["date_utc"], "(date unknown)"),
        text(&d["tracer_commit"], "(commit unknown)"),
        r["plan"]["bench_secs"],
    );
    OpenOptions::new()
        .append(true)
        .open(record)
        .and_then(|mut f| f.write_all(entry.as_bytes()))
        .with_context(|| format!("appending to {}", record.display()))
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
    println!("{line}{}", observed_suffix(run.observed.as_ref()));
}

/// One line per DNS run as it finishes.
pub(super) fn print_dns_run(run: &DnsRun) {
    println!(
        "bench: dns {:<14} {:>9.0} qps  completed {:>8}  lost {:>5}  latency {:.2} ms{}",
        run.mode.name(),
        run.perf.qps,
        run.perf.completed,
        run.perf.lost,
        run.perf.avg_latency_ms,
        observed_suffix(run.observed.as_ref())
    );
}

fn observed_suffix(observed: Option<&super::results::Observed>) -> String {
    let Some(o) = observed else {
        return String::new();
    };
    let mut s = format!("  lines {:>8}", o.lines);
    if let Some(summary) = &o.summary {
        s.push_str(&format!("  records {}  lost {}", summary.records, summary.lost));
    }
    if let Some(cpu) = o.cpu_percent {
        s.push_str(&format!("  cpu {cpu:.0}%"));
    }
    s
}
