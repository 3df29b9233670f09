//! Where a mode's time per packet goes, measured after the interleaved rounds: one run of the
//! UDP load per mode with the kernel's BPF run-time statistics on (each of tracer's programs:
//! how often it ran per packet, and for how long) and a flat CPU profile of the load's CPU
//! (`perf record -C`), on which the packets are sent, switched, NATed and traced.
//!
//! The statistics add two clock reads to every program run, so these runs are not compared
//! with the baseline; the added time per packet comes from the rounds.

use std::collections::BTreeSet;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tracer_tests::lab::Ns;

use super::{
    check_interrupted, cpus,
    procs::{last_json, Proc, Stdout},
    runner::Bench,
    Mode, LOAD_PORT,
};

/// The modes profiled: the baseline for the kernel's own path, then every observer, and the
/// empty programs whose run time is what the statistics and the attach point charge any run.
pub const PROFILED: [Mode; 9] = [
    Mode::Baseline,
    Mode::Unrelated,
    Mode::FindingsOnly,
    Mode::Traced,
    Mode::Capture,
    Mode::IptablesTrace,
    Mode::Tcpdump,
    Mode::AttachFloor,
    Mode::FindingsOnlyFloor,
];

/// The mode with the same programs, empty, whose run time is the floor of `mode`'s.
pub fn empty_programs_of(mode: Mode) -> Option<Mode> {
    match mode {
        Mode::Unrelated | Mode::Traced | Mode::Capture => Some(Mode::AttachFloor),
        Mode::FindingsOnly => Some(Mode::FindingsOnlyFloor),
        _ => None,
    }
}

/// Symbols taking less of the load's CPU than this are left out of the profile.
const PERCENT_LIMIT: f64 = 0.5;
/// perf's sampling rate: enough samples in a short run, few enough not to disturb it.
const SAMPLE_HZ: &str = "2999";

/// One of tracer's programs over a profiled run.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgramCost {
    pub name: String,
    pub kind: String,
    pub runs: u64,
    pub run_ns: u64,
}

/// A mode's profiled run.
#[derive(Clone, Debug)]
pub struct ModeProfile {
    pub mode: Mode,
    pub packets: u64,
    pub secs: f64,
    /// None where the observer is not tracer.
    pub programs: Option<Vec<ProgramCost>>,
    /// Share of the load CPU's samples per symbol, largest first.
    pub symbols: Vec<(f64, String)>,
    /// Why there is no CPU profile, if there is none.
    pub perf_error: Option<String>,
    /// The observer's own profile (tracer, nft monitor, tcpdump): where the reader's time goes.
    pub observer_symbols: Vec<(f64, String)>,
    pub observer_perf_error: Option<String>,
}

/// The kernel's BPF run-time statistics, on while this is held (BPF_ENABLE_STATS): released
/// with the descriptor however the bench ends, unlike the sysctl.
struct RunTimeStats(#[allow(dead_code)] OwnedFd);

impl RunTimeStats {
    fn enable() -> Result<RunTimeStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr { struct { __u32 type; } enable_stats; }, BPF_STATS_RUN_TIME = 0; the
        // kernel requires the bytes after the field it reads to be zero.
        let attr = [0u32; 2];
        // SAFETY: the attribute buffer is valid for the size given and outlives the call.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_ENABLE_STATS, attr.as_ptr(), std::mem::size_of_val(&attr) as u32)
        };
        if fd < 0 {
            bail!("enabling BPF run-time statistics: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor the kernel just handed over, owned by nothing else.
        Ok(RunTimeStats(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }
}

/// The ids of the programs `pid` holds, directly or through its links: each such descriptor's
/// fdinfo names its program. (bpftool lists owners only where it was built to, and a program
/// held only by a link is not listed as the process's.)
fn program_ids(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile has no fdinfo any more: nothing to read.
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        ids.extend(text.lines().filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u64>().ok()));
    }
    Ok(ids)
}

/// The programs `pid` holds, with their statistics so far, from `bpftool -j prog show`.
fn programs_of(pid: u32) -> Result<Vec<ProgramCost>> {
    let ids = program_ids(pid)?;
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().context("running bpftool prog show")?;
    if !out.status.success() {
        bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_programs(&String::from_utf8_lossy(&out.stdout), &ids)
}

fn parse_programs(json: &str, ids: &BTreeSet<u64>) -> Result<Vec<ProgramCost>> {
    let progs: Value = serde_json::from_str(json).context("reading bpftool's JSON")?;
    let owned = |p: &&Value| p["id"].as_u64().is_some_and(|id| ids.contains(&id));
    Ok(progs
        .as_array()
        .ok_or_else(|| anyhow!("bpftool prog show printed no list"))?
        .iter()
        .filter(owned)
        .map(|p| ProgramCost {
            name: p["name"].as_str().unwrap_or("?").to_string(),
            kind: p["type"].as_str().unwrap_or("?").to_string(),
            runs: p["run_cnt"].as_u64().unwrap_or(0),
            run_ns: p["run_time_ns"].as_u64().unwrap_or(0),
        })
        .collect())
}

/// What each program did between two readings, programs that did not run left out, the
/// busiest first.
fn difference(before: &[ProgramCost], after: &[ProgramCost]) -> Vec<ProgramCost> {
    let mut out: Vec<ProgramCost> = after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name && b.kind == a.kind);
            ProgramCost {
                runs: a.runs - b.map_or(0, |b| b.runs.min(a.runs)),
                run_ns: a.run_ns - b.map_or(0, |b| b.run_ns.min(a.run_ns)),
                ..a.clone()
            }
        })
        .filter(|p| p.runs > 0)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.run_ns));
    out
}

/// `perf report --stdio --sort sym` lines: "    12.34%  [k] symbol".
fn parse_perf_report(text: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let (percent, rest) = line.split_once('%')?;
            let percent: f64 = percent.trim().parse().ok()?;
            let symbol = rest.trim();
            let symbol = symbol.strip_prefix("[k]").or_else(|| symbol.strip_prefix("[.]")).unwrap_or(symbol).trim();
            (!symbol.is_empty()).then(|| (percent, symbol.to_string()))
        })
        .collect()
}

/// `perf record` of the load's CPU (or all, without a placement) into `file` for as long as
/// the sender `send` runs: perf starts it once it samples, so the profile spans the load. The
/// sender is put on the load's CPU by taskset; perf itself stays on the others.
fn perf_record(file: &Path, send: &[String]) -> Vec<String> {
    let mut argv: Vec<String> = ["perf", "record", "-q", "-F", SAMPLE_HZ, "-o"].map(String::from).to_vec();
    argv.push(file.display().to_string());
    match cpus::load_cpu() {
        Some(cpu) => argv.extend([
            "-C".to_string(),
            cpu.to_string(),
            "--".into(),
            "taskset".into(),
            "-c".into(),
            cpu.to_string(),
        ]),
        None => argv.extend(["-a".to_string(), "--".into()]),
    }
    argv.extend(send.iter().cloned());
    argv
}

/// `perf record` of process `pid` (and its threads) for `secs`, into `file`.
fn perf_record_process(file: &Path, pid: u32, secs: f64) -> Result<Proc> {
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-q", "-F", SAMPLE_HZ, "-o"]).arg(file);
    cmd.args(["-p", &pid.to_string(), "--", "sleep", &format!("{secs}")]);
    Proc::spawn(cmd, "perf record -p", Stdout::Capture)
}

/// The symbols of a finished `perf record`, or why there are none.
fn symbols_of(file: &Path, recorded: Result<super::procs::Ended>) -> (Vec<(f64, String)>, Option<String>) {
    let outcome = recorded.and_then(|ended| {
        if !ended.status.success() {
            bail!("perf record failed ({}): {}", ended.status, ended.err.trim());
        }
        perf_report(file)
    });
    let _ = std::fs::remove_file(file);
    match outcome {
        Ok(symbols) => (symbols, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    }
}

fn perf_report(file: &Path) -> Result<Vec<(f64, String)>> {
    let limit = PERCENT_LIMIT.to_string();
    let out = Command::new("perf")
        .args(["report", "-q", "--stdio", "--no-children", "--sort", "sym", "--percent-limit", &limit, "-i"])
        .arg(file)
        .output()
        .context("running perf report")?;
    if !out.status.success() {
        bail!("perf report failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(parse_perf_report(&String::from_utf8_lossy(&out.stdout)))
}

impl Bench<'_> {
    pub(super) fn profiles(&self, secs: f64) -> Result<Vec<ModeProfile>> {
        let _stats = RunTimeStats::enable()?;
        PROFILED.iter().map(|&mode| self.profile(mode, secs)).collect()
    }

    fn profile(&self, mode: Mode, secs: f64) -> Result<ModeProfile> {
        check_interrupted()?;
        let observer = self.observe(mode, LOAD_PORT)?;
        let receiver = self.receiver(LOAD_PORT)?;
        let tracer = observer.pid().filter(|_| mode.is_tracer());
        let before = tracer.map(programs_of).transpose()?;
        let file = self.lab.dir().join(format!("bench-profile-{}.data", mode.name()));
        let observer_file = self.lab.dir().join(format!("bench-profile-{}-observer.data", mode.name()));
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&observer_file);
        // The observer's profile spans the load's middle: it starts with it, and ends before.
        let observer_perf = observer.pid().map(|pid| perf_record_process(&observer_file, pid, (secs - 0.5).max(0.2)));
        let argv = perf_record(&file, &self.send_argv(None, Some(secs), None));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let perf = Proc::spawn(self.lab.command(Ns::Client, &argv), "perf record -- loadgen send", Stdout::Capture)?
            .finish(Duration::from_secs_f64(secs + 30.0))?;
        let after = tracer.map(programs_of).transpose()?;
        let (observer_symbols, observer_perf_error) = match observer_perf {
            Some(started) => symbols_of(&observer_file, started.and_then(|p| p.finish(Duration::from_secs(15)))),
            None => (Vec::new(), None),
        };
        receiver.stop()?;
        observer.finish()?;
        let sent = last_json(&perf, "loadgen send (under perf)")?;
        let (symbols, perf_error) = symbols_of(&file, Ok(perf));
        Ok(ModeProfile {
            mode,
            packets: sent["sent"].as_u64().unwrap_or(0),
            secs: sent["secs"].as_f64().unwrap_or(0.0),
            programs: before.zip(after).map(|(b, a)| difference(&b, &a)),
            symbols,
            perf_error,
            observer_symbols,
            observer_perf_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_those_the_pid_holds() {
        let json = r#"[
            {"id":1,"type":"tracing","name":"step","run_time_ns":5000,"run_cnt":10},
            {"id":2,"type":"netfilter","name":"nf_pre","run_time_ns":100,"run_cnt":4},
            {"id":3,"type":"cgroup_skb","name":"other","run_time_ns":9,"run_cnt":9},
            {"id":4,"type":"kprobe","name":"no_stats"}
        ]"#;
        let ids = BTreeSet::from([1, 2, 4]);
        let p = parse_programs(json, &ids).expect("parsed");
        assert_eq!(p.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["step", "nf_pre", "no_stats"]);
        assert_eq!((p[0].runs, p[0].run_ns, p[0].kind.as_str()), (10, 5000, "tracing"));
        assert_eq!((p[2].runs, p[2].run_ns), (0, 0));
        assert!(parse_programs("{}", &ids).is_err());
    }

    #[test]
    fn a_process_s_programs_are_found_through_its_descriptors() {
        // This test holds no BPF object: none found, and no error.
        assert_eq!(program_ids(std::process::id()).expect("fdinfo"), BTreeSet::new());
        assert!(program_ids(u32::MAX).is_err());
    }

    #[test]
    fn the_difference_keeps_what_ran_busiest_first() {
        let cost = |name: &str, runs, run_ns| ProgramCost { name: name.into(), kind: "tracing".into(), runs, run_ns };
        let before = [cost("a", 10, 100), cost("b", 5, 50), cost("c", 1, 1)];
        let after = [cost("a", 20, 150), cost("b", 15, 550), cost("c", 1, 1), cost("d", 2, 20)];
        let d = difference(&before, &after);
        assert_eq!(d, vec![cost("b", 10, 500), cost("a", 10, 50), cost("d", 2, 20)]);
    }

    #[test]
    fn perf_report_lines_are_read() {
        let text =
            "\n    31.20%  [k] bpf_prog_3a1b_step\n     2.05%  [.] main\n# comment\n     0.90%  [k] memcpy_orig\n";
        assert_eq!(
            parse_perf_report(text),
            vec![(31.2, "bpf_prog_3a1b_step".into()), (2.05, "main".into()), (0.9, "memcpy_orig".into())]
        );
    }
}
