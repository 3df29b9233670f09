//! `cargo xtask bench [--smoke] [--tracer PATH] [--append-results]`: what tracer costs per packet,
//! measured side by side with no tracer and with the manual workflow it replaces (an iptables TRACE
//! rule and a trace reader).
//!
//! The load runs in the test lab (tests/src/lab.rs): a client and a server namespace on bridge
//! cni0 of a node namespace, the server behind a ClusterIP DNAT on the node. `loadgen` (a release
//! build of xtask/src/bin/loadgen.rs) sends UDP from the client to the ClusterIP with sendmmsg as
//! fast as the lab takes it and counts what reaches the server; a second run puts dnsperf against
//! loadgen's DNS responder through the same ClusterIP. Every figure is measured in five modes:
//!
//! - `baseline`: nothing attached;
//! - `unrelated`: `tracer watch` attached, watching a port no traffic uses (the cost of being there);
//! - `traced`: `tracer watch` on the load's port, every packet a journey record, JSON to a pipe;
//! - `findings_only`: `tracer watch --findings-only` on the load's port: on a healthy node the
//!   kernel sends nothing, so this is the cost of the always-on mode;
//! - `attach_floor` and `findings_only_floor`: the `unrelated` and `findings_only` watches with
//!   `--empty-programs`, every program attached where it is but returning at once: what the
//!   kernel charges for running any program at those points, the floor under the two above;
//! - `iptables_trace`: `iptables -t raw -A PREROUTING ... -j TRACE` (iptables-nft) with
//!   `nft monitor trace` reading the trace events in the node namespace;
//! - `capture`: `tracer watch --write F.pcapng --output none` on the load's port, and its peer
//!   `tcpdump`: `tcpdump -i any -w F.pcap udp port <port>` in the node namespace. Each file is
//!   read after its run (`tracer report`; tcpdump's own count of what the kernel dropped) for
//!   what it lost, then removed.
//!
//! Runs are interleaved — baseline, mode, baseline, mode, ... with the order of the modes rotated
//! every round — and each mode's run is compared with the two baselines next to it (its rate over
//! theirs, and the nanoseconds per packet it added), so drift of a shared 2-core machine cancels
//! out; each figure is the trimmed mean over rounds (a fifth set aside at either end), printed
//! with its noise (twice its standard error) and its spread. The baselines are compared with their
//! own neighbours too: that ratio is 1 but for noise, and shows the run's resolution. A verdict
//! whose margin is inside the noise is marked, and so is the run. The load generator runs alone
//! on one CPU and everything else on the others (`cpus`), so the scheduler does not move the
//! observer's reader onto the load's path in some rounds and not in others.
//!
//! A last phase builds the lab broken — `bridge-nf-call-iptables=0` and a FORWARD REJECT — and
//! checks that `--findings-only` still names both findings under the full DNS load.
//!
//! Results go to `target/bench/results.json` (`results-smoke.json` for `--smoke`) and a table on
//! stdout; `--append-results` also appends the table to bench/RESULTS.md. `--tracer PATH` benches
//! a prebuilt tracer instead of building this checkout's, to compare two builds. Targets are
//! reported, never enforced. Ctrl-C stops at the next step; processes and the lab are removed.

mod cpus;
mod dns;
mod findings;
mod observer;
mod procs;
mod profile;
mod report;
mod results;
mod runner;
mod stats;
mod table;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tracer_tests::lab::{Lab, LabConfig};

use crate::cmd::{self, phase};
use crate::setup;
use results::SoakRun;
use runner::Bench;

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
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
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
    FindingsOnly,
    IptablesTrace,
    AttachFloor,
    FindingsOnlyFloor,
    Capture,
    Tcpdump,
}

impl Mode {
    /// The modes compared with the baseline.
    const MEASURED: [Mode; 8] = [
        Mode::Unrelated,
        Mode::Traced,
        Mode::FindingsOnly,
        Mode::IptablesTrace,
        Mode::AttachFloor,
        Mode::FindingsOnlyFloor,
        Mode::Capture,
        Mode::Tcpdump,
    ];
    /// Every mode, in the order the report lists them: the baseline, then the measured ones.
    pub const ALL: [Mode; Mode::MEASURED.len() + 1] = {
        let mut all = [Mode::Baseline; Mode::MEASURED.len() + 1];
        let mut i = 0;
        while i < Mode::MEASURED.len() {
            all[i + 1] = Mode::MEASURED[i];
            i += 1;
        }
        all
    };

    pub fn name(self) -> &'static str {
        match self {
            Mode::Baseline => "baseline",
            Mode::Unrelated => "unrelated",
            Mode::Traced => "traced",
            Mode::FindingsOnly => "findings_only",
            Mode::IptablesTrace => "iptables_trace",
            Mode::AttachFloor => "attach_floor",
            Mode::FindingsOnlyFloor => "findings_only_floor",
            Mode::Capture => "capture",
            Mode::Tcpdump => "tcpdump",
        }
    }

    /// tracer is the observer (the baseline has none, the TRACE workflow its own reader).
    pub fn is_tracer(self) -> bool {
        !matches!(self, Mode::Baseline | Mode::IptablesTrace | Mode::Tcpdump)
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
    /// Length of the DNS load on the broken lab, in seconds.
    pub findings_secs: f64,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            smoke: false,
            // More, shorter rounds than a few long ones: a round the machine disturbed is one of
            // many, and the trimmed mean sets it aside.
            udp_rounds: 10,
            dns_rounds: 5,
            load_secs: 2.0,
            attach_trials: 5,
            calibration_packets: 2000,
            lossless_steps: 6,
            xtables_monitor_probe: true,
            findings_secs: 5.0,
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
            // One step, so the smoke results hold every figure a full run has.
            lossless_steps: 1,
            xtables_monitor_probe: false,
            findings_secs: 1.0,
        }
    }
}

const USAGE: &str = "usage: cargo xtask bench [--smoke | --soak MINUTES | --append-results] [--tracer PATH]";

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut smoke = false;
    let mut append = false;
    let mut soak_minutes: Option<f64> = None;
    // A prebuilt tracer instead of this checkout's: to compare builds, e.g. before and after a
    // performance fix, on the same machine.
    let mut prebuilt = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--append-results" => append = true,
            "--soak" => {
                let minutes = it
                    .next()
                    .and_then(|m| m.parse::<f64>().ok())
                    .filter(|m| *m > 0.0 && *m <= 240.0)
                    .ok_or_else(|| anyhow!("--soak needs a number of minutes (up to 240); {USAGE}"))?;
                soak_minutes = Some(minutes);
            }
            "--tracer" => {
                let path = it.next().ok_or_else(|| anyhow!("--tracer needs a path; {USAGE}"))?;
                prebuilt = Some(PathBuf::from(path));
            }
            _ => bail!("unknown argument {arg}; {USAGE}"),
        }
    }
    // The record of figures holds full runs only: a smoke run's figures mean nothing.
    if append && (smoke || soak_minutes.is_some()) {
        bail!("--append-results goes with a full run only; {USAGE}");
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
    let outcome = match soak_minutes {
        Some(minutes) => soak(&tracer, minutes * 60.0),
        None => {
            let plan = if smoke { Plan::smoke() } else { Plan::full() };
            bench(&plan, &tracer, append)
        }
    };
    match outcome {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("xtask bench: interrupted; the lab and its processes are gone.");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

/// The smoke bench against an existing tracer build (`cargo xtask test` passes its test build).
pub fn smoke(tracer: &Path) -> Result<PathBuf> {
    install_signal_handlers();
    bench(&Plan::smoke(), tracer, false)
}

fn bench(plan: &Plan, tracer: &Path, append: bool) -> Result<PathBuf> {
    let started = Instant::now();
    phase("bench", "cargo build --release --bin loadgen");
    let loadgen = build_loadgen()?;
    // Read before the bench confines itself to some of the CPUs.
    let machine = report::machine(tracer);
    let _placed = place_processes()?;
    phase("bench", "building the lab");
    let measured = {
        let lab = Lab::new(LabConfig::healthy())?;
        Bench::new(&lab, tracer, &loadgen)?.measure(plan)?
    };
    // A phase of its own, on a lab of its own: it breaks what every other run needs healthy.
    phase("bench", "building the lab broken: bridge-nf-call-iptables=0 and a FORWARD REJECT");
    let findings = Lab::new(LabConfig::bridge_nf_call_iptables_off())
        .and_then(|lab| Bench::new(&lab, tracer, &loadgen)?.findings_under_load(plan.findings_secs));
    check_interrupted()?;
    let results =
        report::results(plan, machine, &measured, findings.as_ref().map_err(|e| format!("{e:#}")), started.elapsed());
    let dir = cmd::workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(if plan.smoke { "results-smoke.json" } else { "results.json" });
    let text = serde_json::to_string_pretty(&results)? + "\n";
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let printed = table::table(&results);
    println!("{printed}");
    phase("bench", &format!("results written to {}", file.display()));
    // The figures are kept either way; a phase that could not run still fails the bench.
    findings.context("the findings phase")?;
    if append {
        let record = cmd::workspace_root().join("bench/RESULTS.md");
        table::append_to_record(&record, &results, &printed)?;
        phase("bench", &format!("table appended to {}", record.display()));
    }
    Ok(file)
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
    let _placed = place_processes()?;
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

/// The load on a CPU of its own from here on (after the builds, which want every CPU).
fn place_processes() -> Result<cpus::Placed> {
    let placed = cpus::place()?;
    match &placed.placement {
        Some(p) => phase("bench", &format!("the load runs on CPU {}, everything else on CPUs {:?}", p.load, p.others)),
        None => phase("bench", "one CPU: load and observers share it"),
    }
    Ok(placed)
}

/// `cargo build --release -p xtask --bin loadgen`; the path of the binary cargo reports.
fn build_loadgen() -> Result<PathBuf> {
    let what = "`cargo build --release -p xtask --bin loadgen`";
    cmd::cargo_executables(cmd::cargo().args(["build", "--release", "-p", "xtask", "--bin", "loadgen"]), what)?
        .into_iter()
        .find(|artifact| artifact.is("bin", "loadgen"))
        .map(|artifact| artifact.path)
        .with_context(|| format!("{what} succeeded but reported no loadgen executable"))
}

/// The measured modes in round `round`'s order: rotated, so no mode always follows the same one.
fn rotated(round: usize) -> [Mode; Mode::MEASURED.len()] {
    let mut modes = Mode::MEASURED;
    modes.rotate_left(round % Mode::MEASURED.len());
    modes
}

/// "unrelated, traced, ...": the measured modes, for progress lines.
fn measured_names() -> String {
    Mode::MEASURED.map(Mode::name).join(", ")
}

/// The interleaved rounds: in each, a baseline before every measured mode (rotated), and one
/// last baseline after the last round, so every measured run has a baseline on either side.
/// `run` is given the mode and the round.
fn interleave<R>(rounds: usize, mut run: impl FnMut(Mode, usize) -> Result<R>) -> Result<Vec<R>> {
    let mut runs = Vec::new();
    for round in 0..rounds {
        for mode in rotated(round) {
            runs.push(run(Mode::Baseline, round)?);
            runs.push(run(mode, round)?);
        }
    }
    runs.push(run(Mode::Baseline, rounds.saturating_sub(1))?);
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_the_modes() {
        assert_eq!(rotated(0), Mode::MEASURED);
        assert_eq!(
            rotated(1),
            [
                Mode::Traced,
                Mode::FindingsOnly,
                Mode::IptablesTrace,
                Mode::AttachFloor,
                Mode::FindingsOnlyFloor,
                Mode::Capture,
                Mode::Tcpdump,
                Mode::Unrelated
            ]
        );
        assert_eq!(rotated(Mode::MEASURED.len()), Mode::MEASURED);
    }

    #[test]
    fn every_measured_run_sits_between_baselines() {
        let runs = interleave(2, |mode, round| Ok((mode, round))).expect("no run fails");
        assert_eq!(runs.len(), 2 * 2 * Mode::MEASURED.len() + 1);
        for (i, (mode, _)) in runs.iter().enumerate() {
            assert_eq!(*mode == Mode::Baseline, i % 2 == 0, "run {i}: {mode:?}");
        }
        assert_eq!(runs[1], (Mode::Unrelated, 0));
        assert_eq!(runs[runs.len() - 2], (Mode::Unrelated, 1));
        assert_eq!(runs[runs.len() - 1], (Mode::Baseline, 1));
    }
}
