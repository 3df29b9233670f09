//! `cargo xtask bench [--smoke] [--tracer PATH]`: what tracer costs per packet, measured side by side with no
//! tracer and with the manual workflow it replaces (an iptables TRACE rule and a trace reader).
//!
//! The load runs in the test lab (tests/src/lab.rs): a client and a server namespace on bridge
//! cni0 of a node namespace, the server behind a ClusterIP DNAT on the node. `loadgen` (a release
//! build of xtask/src/bin/loadgen.rs) sends UDP from the client to the ClusterIP with sendmmsg as
//! fast as the lab takes it and counts what reaches the server; a second run puts dnsperf against
//! loadgen's DNS responder through the same ClusterIP. Every figure is measured in four modes:
//!
//! - `baseline`: nothing attached;
//! - `unrelated`: `tracer watch` attached, watching a port no traffic uses (the cost of being there);
//! - `traced`: `tracer watch` on the load's port, every packet a record, JSON to a pipe;
//! - `iptables_trace`: `iptables -t raw -A PREROUTING ... -j TRACE` (iptables-nft) with
//!   `nft monitor trace` reading the trace events in the node namespace.
//!
//! Runs are interleaved — baseline, mode, baseline, mode, ... with the order of the modes rotated
//! every round — and each mode's ratio is the median over rounds of its rate divided by the mean of
//! the two baselines next to it, so drift of a shared 2-core machine cancels out.
//!
//! Results go to `target/bench/results.json` (`results-smoke.json` for `--smoke`) and a table on
//! stdout; bench/RESULTS.md records the figures with the machine they came from. `--tracer PATH`
//! benches a prebuilt tracer instead of building this checkout's, to compare two builds. Targets
//! are reported, never enforced. Ctrl-C stops at the next step; processes and the lab are removed.

mod procs;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tracer_tests::lab::{
    Lab, LabConfig, Ns, CLIENT_VETH, CLUSTER_DNS_IP, SERVER_IP, TRACER_READY, TRACER_READY_TIMEOUT,
};

use crate::cmd::{self, phase};
use crate::setup;
use procs::{cpu_seconds, last_json, peak_rss_kib, rss_kib, Pipeline, Proc, Stdout};
use stats::{Accounting, DnsPerf, Summary};

/// The UDP load's port, DNATed from the ClusterIP to the server like the lab's DNS.
const LOAD_PORT: u16 = 7000;
/// What tracer watches in `unrelated`: no traffic uses it.
const UNRELATED_PORT: u16 = 7999;
/// loadgen's DNS responder (the lab's dnsmasq keeps port 53; it logs every query to a file, which
/// would make it the bottleneck of a DNS load).
const DNS_PORT: u16 = 5300;
/// dnsperf's queries in flight: enough to keep the responder busy, few enough that none time out.
const DNS_OUTSTANDING: &str = "100";
/// How a `bridge-in` record looks in tracer's JSON: one per packet entering the bridge, counted by
/// the reader to check that every packet generated is accounted for.
const BRIDGE_IN_NEEDLE: &str = r#""stage":"bridge-in""#;
/// Rate of the calibration and attach-time trickles: far below anything that could lose records.
const TRICKLE_PPS: u64 = 2000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // Note the signal and unwind at the next step instead of dying with the lab still there.
    // Children in our process group get Ctrl-C too: tracer prints its summary, loadgen stops.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    Baseline,
    Unrelated,
    Traced,
    IptablesTrace,
}

impl Mode {
    /// The modes compared with the baseline.
    const MEASURED: [Mode; 3] = [Mode::Unrelated, Mode::Traced, Mode::IptablesTrace];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Unrelated => "unrelated",
            Mode::Traced => "traced",
            Mode::IptablesTrace => "iptables_trace",
        }
    }
}

/// How much to measure.
#[derive(Clone, Debug)]
pub struct Plan {
    pub smoke: bool,
    pub udp_rounds: usize,
    pub dns_rounds: usize,
    pub load_secs: f64,
    pub attach_trials: usize,
    pub calibration_packets: u64,
    /// Traced runs at lower rates, looking for the highest one tracer follows without loss.
    pub lossless_steps: usize,
    /// One run of the TRACE workflow with xtables-monitor as the reader, to record how it fares.
    pub xtables_monitor_probe: bool,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            smoke: false,
            udp_rounds: 6,
            dns_rounds: 4,
            load_secs: 2.5,
            attach_trials: 5,
            calibration_packets: 2000,
            lossless_steps: 6,
            xtables_monitor_probe: true,
        }
    }

    fn smoke() -> Plan {
        Plan {
            smoke: true,
            udp_rounds: 1,
            dns_rounds: 1,
            load_secs: 0.5,
            attach_trials: 1,
            calibration_packets: 200,
            lossless_steps: 0,
            xtables_monitor_probe: false,
        }
    }
}

const USAGE: &str = "usage: cargo xtask bench [--smoke | --soak MINUTES] [--tracer PATH]";

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut smoke = false;
    let mut soak_minutes: Option<f64> = None;
    // A prebuilt tracer instead of this checkout's: to compare builds, e.g. before and after a
    // performance fix, on the same machine.
    let mut prebuilt = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--soak" => {
                let minutes = it
                    .next()
                    .and_then(|m| m.parse::<f64>().ok())
                    .filter(|m| *m > 0.0 && *m <= 240.0)
                    .ok_or_else(|| anyhow!("--soak needs a number of minutes (up to 240); {USAGE}"))?;
                soak_minutes = Some(minutes);
            }
            "--tracer" => {
                let path = it
                    .next()
                    .ok_or_else(|| anyhow!("--tracer needs a path; {USAGE}"))?;
                prebuilt = Some(PathBuf::from(path));
            }
            _ => bail!("unknown argument {arg}; {USAGE}"),
        }
    }
    cmd::require_root("bench")?;
    install_signal_handlers();
    phase("bench", "setup");
    setup::run()?;
    let tracer = match prebuilt {
        Some(path) if path.is_file() => std::fs::canonicalize(&path)?,
        Some(path) => bail!("--tracer {}: no such file", path.display()),
        None => {
            phase("bench", "cargo build --release -p tracer");
            cmd::build_tracer(cmd::Build::Release)?
        }
    };
    if let Some(minutes) = soak_minutes {
        return match soak(&tracer, minutes * 60.0) {
            Ok(_) => Ok(ExitCode::SUCCESS),
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
                eprintln!("xtask bench: interrupted; the lab and its processes are gone.");
                Ok(ExitCode::from(130))
            }
            Err(e) => Err(e),
        };
    }
    let plan = if smoke { Plan::smoke() } else { Plan::full() };
    match bench(&plan, &tracer) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("xtask bench: interrupted; the lab and its processes are gone.");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// The smoke bench against an existing tracer build (`cargo xtask test` passes its debug build).
pub fn smoke(tracer: &Path) -> Result<PathBuf> {
    install_signal_handlers();
    bench(&Plan::smoke(), tracer)
}

fn bench(plan: &Plan, tracer: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    phase("bench", "cargo build --release --bin loadgen");
    let loadgen = build_loadgen()?;
    let machine = report::machine(tracer);
    phase("bench", "building the lab");
    let lab = Lab::new(LabConfig::healthy())?;
    let bench = Bench::new(&lab, tracer, &loadgen)?;
    let measured = bench.measure(plan);
    drop(bench);
    drop(lab);
    let measured = measured?;
    let results = report::results(plan, machine, &measured, started.elapsed());
    let dir = cmd::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(if plan.smoke {
        "results-smoke.json"
    } else {
        "results.json"
    });
    let text = serde_json::to_string_pretty(&results)? + "\n";
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    println!("{}", report::table(&results));
    phase("bench", &format!("results written to {}", file.display()));
    Ok(file)
}

/// What the soak saw: (seconds since start, VmRSS KiB) samples, dnsperf's figures, tracer's summary.
struct SoakRun {
    samples: Vec<(f64, u64)>,
    perf: DnsPerf,
    summary: Option<Summary>,
}

/// How often the soak samples tracer's resident set.
const SOAK_SAMPLE: Duration = Duration::from_secs(10);

/// Memory over a long traced run: tracer traces every query of a dnsperf load through the
/// ClusterIP (each one a tracked DNS flow, DNAT path, hook paths, JSON lines) for `secs`, and its
/// resident set is sampled every 10 s. Flat means the last third of the run never needs more than
/// the first third plus 10 % (and 2 MiB of allocator slack): the caps and expiry of the flow and
/// path tables hold. Writes target/bench/soak.json.
fn soak(tracer: &Path, secs: f64) -> Result<PathBuf> {
    phase("bench", "cargo build --release --bin loadgen");
    let loadgen = build_loadgen()?;
    phase("bench", "building the lab");
    let lab = Lab::new(LabConfig::healthy())?;
    let bench = Bench::new(&lab, tracer, &loadgen)?;
    phase("bench", &format!("soak: {:.0} s of traced DNS load, tracer's RSS every {} s", secs, SOAK_SAMPLE.as_secs()));
    let run = bench.soak(secs);
    drop(bench);
    drop(lab);
    let SoakRun { samples, perf, summary } = run?;
    let third = (samples.len() / 3).max(1);
    let first_max = samples.iter().take(third).map(|(_, kib)| *kib).max().unwrap_or(0);
    let last_max = samples.iter().rev().take(third).map(|(_, kib)| *kib).max().unwrap_or(0);
    let flat = last_max <= first_max + first_max / 10 + 2048;
    for (at, kib) in &samples {
        println!("  t={at:>6.0} s  rss {:>7.1} MiB", *kib as f64 / 1024.0);
    }
    println!(
        "soak: {:.0} s, {:.0} queries/s answered ({} sent, {} lost), tracer lines {}; RSS first third max {:.1} MiB, last third max {:.1} MiB: {}",
        perf.run_secs,
        perf.qps,
        perf.sent,
        perf.lost,
        summary.as_ref().map(|s| s.packets).unwrap_or(0),
        first_max as f64 / 1024.0,
        last_max as f64 / 1024.0,
        if flat { "flat" } else { "GROWING" }
    );
    let results = serde_json::json!({
        "secs": secs,
        "qps": perf.qps,
        "queries_sent": perf.sent,
        "queries_lost": perf.lost,
        "tracer_packets": summary.as_ref().map(|s| s.packets),
        "tracer_lost": summary.as_ref().map(|s| s.lost),
        "rss_samples": samples.iter().map(|(at, kib)| serde_json::json!({"t": at, "rss_kib": kib})).collect::<Vec<_>>(),
        "rss_first_third_max_kib": first_max,
        "rss_last_third_max_kib": last_max,
        "flat": flat,
    });
    let dir = cmd::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("soak.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    phase("bench", &format!("soak results written to {}", file.display()));
    Ok(file)
}

/// `cargo build --release -p xtask --bin loadgen`; the path of the binary cargo reports.
fn build_loadgen() -> Result<PathBuf> {
    let out = cmd::cargo()
        .args([
            "build",
            "--release",
            "-p",
            "xtask",
            "--bin",
            "loadgen",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running `cargo build --bin loadgen`")?;
    if !out.status.success() {
        bail!(
            "`cargo build --release --bin loadgen` failed ({})",
            out.status
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "loadgen")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| anyhow!("cargo built no loadgen executable"))
}

/// Everything measured, for the report.
pub struct Measured {
    pub calibration: Calibration,
    pub attach: Vec<AttachTrial>,
    pub udp: Vec<UdpRun>,
    pub lossless: Vec<UdpRun>,
    pub xtables_monitor: Option<XtablesProbe>,
    pub dns: Vec<DnsRun>,
}

/// Packet and netfilter records tracer produces per packet of the load, measured.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub packets: u64,
    pub packet_records: u64,
    pub hook_passes: u64,
    pub hook_records: u64,
    pub stages: Vec<(String, u64)>,
    pub hooks: Vec<(String, u64)>,
    pub other_lines: u64,
    pub summary: Summary,
    /// Whole numbers of records per packet and nothing lost: the per-packet figures are exact.
    pub exact: bool,
}

impl Calibration {
    pub fn lines_per_packet(&self) -> u64 {
        (self.packet_records as f64 / self.packets.max(1) as f64).round() as u64
    }

    pub fn hook_records_per_packet(&self) -> u64 {
        (self.hook_records as f64 / self.packets.max(1) as f64).round() as u64
    }
}

#[derive(Clone, Debug)]
pub struct AttachTrial {
    /// Start of `ip netns exec ... tracer watch` to its "watching" line.
    pub ready_ms: f64,
    /// Start to the first packet line reaching the reader, with traffic already flowing.
    pub first_event_ms: Option<f64>,
}

/// What an observer (tracer or the TRACE reader) did during a run.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub lines: u64,
    /// `bridge-in` lines (tracer only).
    pub matched: u64,
    pub bytes: u64,
    pub summary: Option<Summary>,
    pub cpu_percent: Option<f64>,
    pub rss_kib: Option<u64>,
    pub exit: String,
}

#[derive(Clone, Debug)]
pub struct UdpRun {
    pub mode: Mode,
    pub round: usize,
    pub rate_limit: Option<u64>,
    pub sent: u64,
    pub send_errors: u64,
    pub secs: f64,
    pub received: u64,
    pub rcvbuf_errors: Option<u64>,
    pub pre_bridge_drops: u64,
    pub observed: Option<Observed>,
    pub accounting: Option<Accounting>,
}

impl UdpRun {
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }
}

#[derive(Clone, Debug)]
pub struct DnsRun {
    pub mode: Mode,
    pub round: usize,
    pub perf: DnsPerf,
    pub observed: Option<Observed>,
}

#[derive(Clone, Debug)]
pub struct XtablesProbe {
    pub sent: u64,
    pub secs: f64,
    pub received: u64,
    pub lines: u64,
    /// xtables-monitor exited on its own during the load, and after how long.
    pub exited_after_ms: Option<f64>,
    pub stderr: String,
}

/// A tracer or a trace reader attached for one run; stopped and its rules removed when dropped.
struct Observer<'a> {
    pipeline: Option<Pipeline>,
    /// The producer is tracer, whose output must end in a summary.
    tracer: bool,
    _rules: Option<TraceRules<'a>>,
}

impl Observer<'_> {
    fn pid(&self) -> Option<u32> {
        self.pipeline.as_ref().map(|p| p.producer.pid())
    }

    fn finish(mut self) -> Result<Option<(procs::Counted, Option<Summary>, String)>> {
        let Some(pipeline) = self.pipeline.take() else {
            return Ok(None);
        };
        let end = pipeline.finish()?;
        let summary = stats::parse_summary(&end.counted.last_line);
        let exit = format!("{}", end.producer_status);
        if summary.is_none() && self.tracer {
            bail!(
                "tracer printed no summary ({exit}); {}",
                end.producer_stderr.trim()
            );
        }
        Ok(Some((end.counted, summary, exit)))
    }

    /// Stops the observer and reports what it did over a run of `wall` seconds, given its CPU
    /// seconds before and after and its peak RSS.
    fn observed(
        self,
        cpu_before: Option<f64>,
        cpu_after: Option<f64>,
        wall: f64,
        rss_kib: Option<u64>,
    ) -> Result<Option<Observed>> {
        Ok(self.finish()?.map(|(counted, summary, exit)| Observed {
            lines: counted.lines,
            matched: counted.matched,
            bytes: counted.bytes,
            summary,
            cpu_percent: match (cpu_before, cpu_after) {
                (Some(a), Some(b)) => Some((b - a) / wall * 100.0),
                _ => None,
            },
            rss_kib,
            exit,
        }))
    }
}

/// iptables TRACE rules in the node's raw table, deleted again when dropped.
struct TraceRules<'a> {
    lab: &'a Lab,
    rules: Vec<String>,
}

impl<'a> TraceRules<'a> {
    fn add(lab: &'a Lab, port: u16) -> Result<TraceRules<'a>> {
        let mut added = TraceRules {
            lab,
            rules: Vec::new(),
        };
        // Both directions, as someone debugging a service would trace it (tracer too watches the
        // port on either side).
        for side in ["--dport", "--sport"] {
            let rule = format!("PREROUTING -p udp {side} {port} -j TRACE");
            lab.iptables(&format!("-t raw -A {rule}"))?;
            added.rules.push(rule);
        }
        Ok(added)
    }
}

impl Drop for TraceRules<'_> {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            if let Err(e) = self.lab.iptables(&format!("-t raw -D {rule}")) {
                eprintln!("bench: removing TRACE rule: {e:#}");
            }
        }
    }
}

/// What `loadgen send` reported.
struct Sent {
    sent: u64,
    errors: u64,
    secs: f64,
}

struct Bench<'a> {
    lab: &'a Lab,
    tracer: String,
    loadgen: String,
    queries: PathBuf,
}

impl<'a> Bench<'a> {
    fn new(lab: &'a Lab, tracer: &Path, loadgen: &Path) -> Result<Bench<'a>> {
        let utf8 = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
        };
        // The same ClusterIP indirection as the lab's DNS: every packet is DNATed by the node.
        for port in [LOAD_PORT, DNS_PORT] {
            lab.iptables(&format!(
                "-t nat -A PREROUTING -d {CLUSTER_DNS_IP}/32 -p udp --dport {port} \
                 -j DNAT --to-destination {SERVER_IP}:{port}"
            ))?;
        }
        let queries = lab.dir().join("dnsperf-queries.txt");
        std::fs::write(&queries, "example.test A\n")
            .with_context(|| format!("writing {}", queries.display()))?;
        Ok(Bench {
            lab,
            tracer: utf8(tracer)?,
            loadgen: utf8(loadgen)?,
            queries,
        })
    }

    fn measure(&self, plan: &Plan) -> Result<Measured> {
        phase("bench", "calibration: records per packet");
        let calibration = self.calibrate(plan.calibration_packets)?;
        println!(
            "bench: {} packets -> {} packet records {:?} and {} netfilter records ({} hook passes {:?}), lost {}{}",
            calibration.packets,
            calibration.packet_records,
            calibration.stages,
            calibration.hook_records,
            calibration.hook_passes,
            calibration.hooks,
            calibration.summary.lost,
            if calibration.exact { "" } else { "  (NOT a whole number per packet)" }
        );

        phase("bench", "time from start to first event");
        let mut attach = Vec::new();
        for _ in 0..plan.attach_trials {
            let trial = self.attach_trial()?;
            println!(
                "bench: attach: watching after {:.0} ms, first event after {}",
                trial.ready_ms,
                trial
                    .first_event_ms
                    .map_or("(none)".to_string(), |ms| format!("{ms:.0} ms"))
            );
            attach.push(trial);
        }

        phase(
            "bench",
            &format!(
                "UDP load: {} rounds x (baseline + {{unrelated, traced, iptables_trace}}), {} s each",
                plan.udp_rounds, plan.load_secs
            ),
        );
        let mut udp = Vec::new();
        for round in 0..plan.udp_rounds {
            for mode in rotated(round) {
                for m in [Mode::Baseline, mode] {
                    let mut run = self.udp_run(m, None, plan.load_secs)?;
                    run.round = round;
                    run.accounting = self.account(&run, &calibration);
                    print_udp_run(&run);
                    udp.push(run);
                }
            }
        }
        let mut last = self.udp_run(Mode::Baseline, None, plan.load_secs)?;
        last.round = plan.udp_rounds.saturating_sub(1);
        print_udp_run(&last);
        udp.push(last);

        let mut lossless = Vec::new();
        if plan.lossless_steps > 0 {
            phase(
                "bench",
                "traced at lower rates: the highest rate without lost records",
            );
            let baseline: Vec<f64> = udp
                .iter()
                .filter(|r| r.mode == Mode::Baseline)
                .map(UdpRun::pps)
                .collect();
            let max = stats::median(&baseline).unwrap_or(0.0);
            lossless = self.lossless(max, plan, &calibration)?;
        }

        let xtables_monitor = if plan.xtables_monitor_probe {
            phase(
                "bench",
                "the TRACE workflow with xtables-monitor as the reader",
            );
            Some(self.xtables_monitor_probe(plan.load_secs)?)
        } else {
            None
        };

        phase(
            "bench",
            &format!(
                "DNS: dnsperf, {} rounds x (baseline + {{unrelated, traced, iptables_trace}}), {} s each",
                plan.dns_rounds, plan.load_secs
            ),
        );
        let dns = self.dns_rounds(plan)?;
        Ok(Measured {
            calibration,
            attach,
            udp,
            lossless,
            xtables_monitor,
            dns,
        })
    }

    fn account(&self, run: &UdpRun, cal: &Calibration) -> Option<Accounting> {
        if run.mode != Mode::Traced {
            return None;
        }
        let summary = run.observed.as_ref()?.summary.as_ref()?;
        Some(stats::account(
            run.sent,
            run.pre_bridge_drops,
            run.observed.as_ref()?.matched,
            summary.packets,
            summary.lost,
            cal.lines_per_packet() + cal.hook_records_per_packet(),
        ))
    }

    /// `tracer watch --port PORT --output json` in the node namespace, piped into the counter;
    /// returns once tracer says it is watching, with the time it said so.
    fn tracer_pipeline(&self, port: u16) -> Result<(Pipeline, u64)> {
        let port = port.to_string();
        let cmd = self.lab.command(
            Ns::Node,
            &[&self.tracer, "watch", "--port", &port, "--output", "json"],
        );
        let mut pipeline = Pipeline::spawn(
            cmd,
            "tracer watch",
            Path::new(&self.loadgen),
            Some(BRIDGE_IN_NEEDLE),
        )?;
        let ready = pipeline
            .producer
            .wait_stderr(TRACER_READY_TIMEOUT, TRACER_READY)?;
        Ok((pipeline, ready))
    }

    fn observe(&self, mode: Mode, port: u16) -> Result<Observer<'a>> {
        match mode {
            Mode::Baseline => Ok(Observer {
                pipeline: None,
                tracer: false,
                _rules: None,
            }),
            Mode::Unrelated => Ok(Observer {
                pipeline: Some(self.tracer_pipeline(UNRELATED_PORT)?.0),
                tracer: true,
                _rules: None,
            }),
            Mode::Traced => Ok(Observer {
                pipeline: Some(self.tracer_pipeline(port)?.0),
                tracer: true,
                _rules: None,
            }),
            Mode::IptablesTrace => {
                let rules = TraceRules::add(self.lab, port)?;
                // `nft monitor trace` rather than `xtables-monitor --trace`: both print the same
                // kernel trace events of the iptables-nft TRACE rule, but xtables-monitor exits at
                // the first overflow of its netlink socket, within milliseconds of this load (see
                // `xtables_monitor` in the results), while nft reports the overflow and goes on.
                let cmd = self.lab.command(Ns::Node, &["nft", "monitor", "trace"]);
                let mut pipeline =
                    Pipeline::spawn(cmd, "nft monitor trace", Path::new(&self.loadgen), None)?;
                // It prints nothing until a traced packet comes; give it time to subscribe.
                thread::sleep(Duration::from_millis(300));
                if !pipeline.producer.running() {
                    bail!(
                        "nft monitor trace exited at start: {}",
                        pipeline.producer.err.joined()
                    );
                }
                Ok(Observer {
                    pipeline: Some(pipeline),
                    tracer: false,
                    _rules: Some(rules),
                })
            }
        }
    }

    /// `loadgen recv` on the server, ready to count.
    fn receiver(&self, port: u16) -> Result<Proc> {
        let bind = format!("{SERVER_IP}:{port}");
        let cmd = self
            .lab
            .command(Ns::Server, &[&self.loadgen, "recv", "--bind", &bind]);
        let mut p = Proc::spawn(cmd, "loadgen recv", Stdout::Capture)?;
        p.wait_stdout(Duration::from_secs(10), "ready")?;
        Ok(p)
    }

    fn sender(&self, rate: Option<u64>, secs: Option<f64>, count: Option<u64>) -> Result<Proc> {
        let dst = format!("{CLUSTER_DNS_IP}:{LOAD_PORT}");
        let mut argv: Vec<String> = vec![self.loadgen.clone(), "send".into(), "--dst".into(), dst];
        if let Some(rate) = rate {
            argv.extend(["--rate".into(), rate.to_string()]);
        }
        if let Some(secs) = secs {
            argv.extend(["--duration".into(), format!("{secs}")]);
        }
        if let Some(count) = count {
            argv.extend(["--count".into(), count.to_string()]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        Proc::spawn(
            self.lab.command(Ns::Client, &argv),
            "loadgen send",
            Stdout::Capture,
        )
    }

    /// Runs a sender to its end (bounded: its own duration plus a margin).
    fn send(&self, rate: Option<u64>, secs: Option<f64>, count: Option<u64>) -> Result<Sent> {
        let limit = match (secs, count, rate) {
            (Some(s), _, _) => s,
            (None, Some(n), Some(r)) => n as f64 / r as f64,
            _ => 10.0,
        };
        let ended = self
            .sender(rate, secs, count)?
            .finish(Duration::from_secs_f64(limit + 15.0))?;
        let v = last_json(&ended, "loadgen send")?;
        Ok(Sent {
            sent: v["sent"].as_u64().unwrap_or(0),
            errors: v["errors"].as_u64().unwrap_or(0),
            secs: v["secs"].as_f64().unwrap_or(0.0),
        })
    }

    /// Drops on the client's links and on the bridge port it enters by: packets that never
    /// reached the bridge, so tracer could not have seen them.
    fn pre_bridge_drops(&self) -> Result<u64> {
        let client = self
            .lab
            .run(Ns::Client, &["ip", "-s", "-j", "link", "show"])?;
        let node = self
            .lab
            .run(Ns::Node, &["ip", "-s", "-j", "link", "show"])?;
        let client = stats::link_drops(&client, None)
            .ok_or_else(|| anyhow!("unreadable `ip -s -j link` output in the client"))?;
        let node = stats::link_drops(&node, Some(CLIENT_VETH))
            .ok_or_else(|| anyhow!("unreadable `ip -s -j link` output in the node"))?;
        Ok(client + node)
    }

    fn calibrate(&self, packets: u64) -> Result<Calibration> {
        check_interrupted()?;
        let receiver = self.receiver(LOAD_PORT)?;
        // Until the node has resolved the server's address, the first DNATed packets go up
        // through its IP stack (extra `from-host` stages); warm the path so calibration sees the
        // steady state every later run is in.
        self.send(Some(1000), None, Some(20))?;
        thread::sleep(Duration::from_millis(100));
        let port = LOAD_PORT.to_string();
        let cmd = self.lab.command(
            Ns::Node,
            &[&self.tracer, "watch", "--port", &port, "--output", "json"],
        );
        // A few thousand lines: read them here, whole, to see what each packet produced.
        let mut tracer = Proc::spawn(cmd, "tracer watch (calibration)", Stdout::Capture)?;
        tracer.wait_stderr(TRACER_READY_TIMEOUT, TRACER_READY)?;
        let sent = self.send(Some(TRICKLE_PPS), None, Some(packets))?;
        thread::sleep(Duration::from_millis(300));
        receiver.stop()?;
        let ended = tracer.stop()?;

        let mut cal = Calibration {
            packets: sent.sent,
            packet_records: 0,
            hook_passes: 0,
            hook_records: 0,
            stages: Vec::new(),
            hooks: Vec::new(),
            other_lines: 0,
            summary: Summary::default(),
            exact: false,
        };
        let bump = |list: &mut Vec<(String, u64)>, key: &str| match list
            .iter_mut()
            .find(|(k, _)| k == key)
        {
            Some((_, n)) => *n += 1,
            None => list.push((key.to_string(), 1)),
        };
        let mut summary = None;
        for line in &ended.out {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                cal.other_lines += 1;
                continue;
            };
            match v["type"].as_str() {
                Some("packet") => {
                    cal.packet_records += 1;
                    bump(&mut cal.stages, v["stage"].as_str().unwrap_or("?"));
                    for pass in v["hooks"].as_array().into_iter().flatten() {
                        cal.hook_passes += 1;
                        // A hook the packet left was recorded at both ends of its priority range.
                        cal.hook_records += if pass["left"] == true { 2 } else { 1 };
                        bump(&mut cal.hooks, pass["hook"].as_str().unwrap_or("?"));
                    }
                }
                Some("summary") => summary = stats::parse_summary(line),
                _ => cal.other_lines += 1,
            }
        }
        cal.summary = summary.ok_or_else(|| {
            anyhow!(
                "calibration: tracer printed no summary ({}): {}",
                ended.status,
                ended.err
            )
        })?;
        if cal.packets == 0 || cal.packet_records == 0 {
            bail!(
                "calibration: {} packets sent, {} records received; tracer said: {}",
                cal.packets,
                cal.packet_records,
                ended.err
            );
        }
        cal.exact = cal.summary.lost == 0
            && cal.packet_records.is_multiple_of(cal.packets)
            && cal.hook_records.is_multiple_of(cal.packets);
        Ok(cal)
    }

    fn attach_trial(&self) -> Result<AttachTrial> {
        check_interrupted()?;
        let receiver = self.receiver(LOAD_PORT)?;
        let trickle = self.sender(Some(TRICKLE_PPS), Some(30.0), None)?;
        thread::sleep(Duration::from_millis(50));
        let (pipeline, ready_ns) = self.tracer_pipeline(LOAD_PORT)?;
        let first = pipeline.first_line_ns(Duration::from_secs(10));
        let ms = |ns: u64| ns.saturating_sub(pipeline.spawned_ns) as f64 / 1e6;
        let trial = AttachTrial {
            ready_ms: ms(ready_ns),
            first_event_ms: first.map(ms),
        };
        pipeline.finish()?;
        trickle.stop()?;
        receiver.stop()?;
        Ok(trial)
    }

    fn udp_run(&self, mode: Mode, rate: Option<u64>, secs: f64) -> Result<UdpRun> {
        check_interrupted()?;
        let observer = self.observe(mode, LOAD_PORT)?;
        let receiver = self.receiver(LOAD_PORT)?;
        let drops_before = self.pre_bridge_drops()?;
        let pid = observer.pid();
        let cpu_before = pid.and_then(cpu_seconds);
        let t0 = Instant::now();
        let sent = self.send(rate, Some(secs), None)?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu_after = pid.and_then(cpu_seconds);
        let rss_kib = pid.and_then(peak_rss_kib);
        // Datagrams still queued in the server's socket were delivered in time; let the
        // receiver take them before it is stopped.
        thread::sleep(Duration::from_millis(100));
        let received = last_json(&receiver.stop()?, "loadgen recv")?;
        let drops_after = self.pre_bridge_drops()?;
        let observed = observer.observed(cpu_before, cpu_after, wall, rss_kib)?;
        Ok(UdpRun {
            mode,
            round: 0,
            rate_limit: rate,
            sent: sent.sent,
            send_errors: sent.errors,
            secs: sent.secs,
            received: received["received"].as_u64().unwrap_or(0),
            rcvbuf_errors: received["rcvbuf_errors"].as_u64(),
            pre_bridge_drops: drops_after.saturating_sub(drops_before),
            observed,
            accounting: None,
        })
    }

    /// Traced runs at fixed rates: halving from half the baseline rate until nothing is lost,
    /// then bisecting towards the lowest rate that lost records.
    fn lossless(&self, max_pps: f64, plan: &Plan, cal: &Calibration) -> Result<Vec<UdpRun>> {
        let mut runs = Vec::new();
        let mut clean: Option<u64> = None;
        let mut lossy = max_pps as u64;
        let mut rate = (max_pps / 2.0) as u64;
        for _ in 0..plan.lossless_steps {
            if rate < 100 {
                break;
            }
            let mut run = self.udp_run(Mode::Traced, Some(rate), plan.load_secs)?;
            run.accounting = self.account(&run, cal);
            print_udp_run(&run);
            let ok = run
                .accounting
                .as_ref()
                .is_some_and(|a| a.lost_events == 0 && a.missing_bridge_in_records == 0);
            if ok {
                clean = Some(clean.map_or(rate, |c| c.max(rate)));
            } else {
                lossy = lossy.min(rate);
            }
            runs.push(run);
            rate = match clean {
                None => rate / 2,
                Some(c) => {
                    if lossy.saturating_sub(c) * 10 < lossy {
                        break;
                    }
                    (c + lossy) / 2
                }
            };
        }
        Ok(runs)
    }

    /// The manual workflow as documented for iptables-nft: a TRACE rule and
    /// `xtables-monitor --trace`, under the same load. Records whether and when the reader quits.
    fn xtables_monitor_probe(&self, secs: f64) -> Result<XtablesProbe> {
        check_interrupted()?;
        let _rules = TraceRules::add(self.lab, LOAD_PORT)?;
        let cmd = self.lab.command(Ns::Node, &["xtables-monitor", "--trace"]);
        let mut monitor = Pipeline::spawn(
            cmd,
            "xtables-monitor --trace",
            Path::new(&self.loadgen),
            None,
        )?;
        thread::sleep(Duration::from_millis(300));
        let receiver = self.receiver(LOAD_PORT)?;
        let mut sender = self.sender(None, Some(secs), None)?;
        let start = Instant::now();
        let mut exited_after_ms = None;
        let deadline = start + Duration::from_secs_f64(secs + 15.0);
        while sender.running() && Instant::now() < deadline {
            if exited_after_ms.is_none() && !monitor.producer.running() {
                exited_after_ms = Some(start.elapsed().as_secs_f64() * 1e3);
            }
            thread::sleep(Duration::from_millis(2));
        }
        let sent = last_json(&sender.finish(Duration::from_secs(5))?, "loadgen send")?;
        thread::sleep(Duration::from_millis(100));
        let received = last_json(&receiver.stop()?, "loadgen recv")?;
        let end = monitor.finish()?;
        Ok(XtablesProbe {
            sent: sent["sent"].as_u64().unwrap_or(0),
            secs: sent["secs"].as_f64().unwrap_or(0.0),
            received: received["received"].as_u64().unwrap_or(0),
            lines: end.counted.lines,
            exited_after_ms,
            stderr: end
                .producer_stderr
                .trim_start_matches("xtables-monitor --trace: ")
                .trim()
                .to_string(),
        })
    }

    /// loadgen's DNS responder on the server, ready to answer.
    fn dns_responder(&self) -> Result<Proc> {
        let bind = format!("{SERVER_IP}:{DNS_PORT}");
        let cmd = self
            .lab
            .command(Ns::Server, &[&self.loadgen, "dns", "--bind", &bind]);
        let mut responder = Proc::spawn(cmd, "loadgen dns", Stdout::Capture)?;
        responder.wait_stdout(Duration::from_secs(10), "ready")?;
        Ok(responder)
    }

    /// dnsperf in the client against the ClusterIP's DNS port for `secs`.
    fn dnsperf(&self, secs: f64) -> Result<std::process::Command> {
        let queries = self
            .queries
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 lab directory"))?;
        let port = DNS_PORT.to_string();
        let limit = format!("{secs}");
        Ok(self.lab.command(
            Ns::Client,
            &[
                "dnsperf",
                "-s",
                CLUSTER_DNS_IP,
                "-p",
                &port,
                "-d",
                queries,
                "-l",
                &limit,
                "-c",
                "1",
                "-T",
                "1",
                "-q",
                DNS_OUTSTANDING,
                "-t",
                "1",
            ],
        ))
    }

    fn dns_rounds(&self, plan: &Plan) -> Result<Vec<DnsRun>> {
        let responder = self.dns_responder()?;
        let mut runs = Vec::new();
        for round in 0..plan.dns_rounds {
            for mode in rotated(round) {
                for m in [Mode::Baseline, mode] {
                    let mut run = self.dns_run(m, plan.load_secs)?;
                    run.round = round;
                    print_dns_run(&run);
                    runs.push(run);
                }
            }
        }
        let mut last = self.dns_run(Mode::Baseline, plan.load_secs)?;
        last.round = plan.dns_rounds.saturating_sub(1);
        print_dns_run(&last);
        runs.push(last);
        responder.stop()?;
        Ok(runs)
    }

    fn soak(&self, secs: f64) -> Result<SoakRun> {
        let responder = self.dns_responder()?;
        let observer = self.observe(Mode::Traced, DNS_PORT)?;
        let pid = observer
            .pid()
            .ok_or_else(|| anyhow!("the soak's tracer did not start"))?;
        let dnsperf = Proc::spawn(self.dnsperf(secs)?, "dnsperf", Stdout::Capture)?;
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed().as_secs_f64() < secs {
            check_interrupted()?;
            thread::sleep(Duration::from_secs(1));
            let at = started.elapsed().as_secs_f64();
            if samples.len() as f64 * SOAK_SAMPLE.as_secs_f64() <= at {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((at, kib));
                }
            }
        }
        let ended = dnsperf.finish(Duration::from_secs(30))?;
        let perf = stats::parse_dnsperf(&ended.out.join("\n"))
            .ok_or_else(|| anyhow!("dnsperf printed no statistics ({}): {}", ended.status, ended.err))?;
        let summary = observer.finish()?.and_then(|(_, summary, _)| summary);
        responder.stop()?;
        Ok(SoakRun { samples, perf, summary })
    }

    fn dns_run(&self, mode: Mode, secs: f64) -> Result<DnsRun> {
        check_interrupted()?;
        let observer = self.observe(mode, DNS_PORT)?;
        let pid = observer.pid();
        let cpu_before = pid.and_then(cpu_seconds);
        let t0 = Instant::now();
        let ended = Proc::spawn(self.dnsperf(secs)?, "dnsperf", Stdout::Capture)?
            .finish(Duration::from_secs_f64(secs + 20.0))?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu_after = pid.and_then(cpu_seconds);
        let rss_kib = pid.and_then(peak_rss_kib);
        let perf = stats::parse_dnsperf(&ended.out.join("\n")).ok_or_else(|| {
            anyhow!(
                "dnsperf printed no statistics ({}): {}\n{}",
                ended.status,
                ended.out.join("\n"),
                ended.err
            )
        })?;
        let observed = observer.observed(cpu_before, cpu_after, wall, rss_kib)?;
        Ok(DnsRun {
            mode,
            round: 0,
            perf,
            observed,
        })
    }
}

/// The measured modes in round `round`'s order: rotated, so no mode always follows the same one.
fn rotated(round: usize) -> [Mode; 3] {
    let mut modes = Mode::MEASURED;
    modes.rotate_left(round % Mode::MEASURED.len());
    modes
}

fn print_udp_run(run: &UdpRun) {
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

fn print_dns_run(run: &DnsRun) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_modes() {
        assert_eq!(rotated(0), Mode::MEASURED);
        assert_eq!(
            rotated(1),
            [Mode::Traced, Mode::IptablesTrace, Mode::Unrelated]
        );
        assert_eq!(rotated(3), Mode::MEASURED);
    }
}
