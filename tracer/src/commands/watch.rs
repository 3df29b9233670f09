//! `tracer watch`: its arguments, and the wiring of a watch: the capture file, the sinks,
//! the live source (`engine::live`), and the exit code.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;

use crate::model::packet::PortFilter;
use crate::{
    analysis::AnalysisOptions,
    commands::{
        agent::AgentArgs,
        cli::{fail, parse_duration, parse_ring_mib, WatchFormat},
    },
    engine::live::{self, Ending, WatchOptions},
    kernel::{check_privileges, WatchSettings},
    node::sysctl::{bridge_nf_call_sysctl, read_sysctl},
    schema::{
        capture::{CaptureMeta, FORMAT},
        sink::Sink,
    },
    sinks::{
        json::JsonOutput,
        pcapng::{file::CaptureFile, CaptureInfo, PcapngWriter},
        tee::Tee,
        text::{SummaryOnly, TextOutput},
    },
    system::stop::{self, StopAwareWriter},
};

/// How traffic is traced and read, for `watch` and `triage` alike.
#[derive(clap::Args, Debug)]
pub(crate) struct TracingArgs {
    /// A DNS query with no reply after this many seconds is reported as `dns_timeout`.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub dns_timeout: Duration,

    /// Also read payloads to or from this port as DNS (port 53 always is; nothing else is
    /// taken for DNS). Repeat for more ports, e.g. --dns-port 5353 --dns-port 1053.
    #[arg(long = "dns-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub dns_ports: Vec<u16>,

    /// Size of the kernel-to-tracer ring buffer in MiB (a power of two). By default it
    /// follows the rate the node can make records at: 4 MiB per CPU (at least 4, at most
    /// 64) for a watch, 1 MiB for a findings-only one, which sends little. Raise it when the
    /// summary reports lost records.
    #[arg(long, value_name = "MIB", value_parser = parse_ring_mib)]
    pub ring_buffer_mib: Option<u32>,

    /// Print the kernel programs' reports of failures that should never happen (a kernel
    /// read refused, an unexpected value) on standard error, as `tracer: debug: kernel:`
    /// lines. For bug reports; off by default, when the programs report nothing.
    #[arg(long)]
    pub debug: bool,

    /// Attach every program as usual, but with bodies that return at once: nothing is
    /// traced, and the watch costs what its attach points alone cost. `cargo xtask bench`
    /// measures this floor (`attach_floor`) to tell the programs' own cost from the
    /// kernel's cost of running any program there. Hidden: it is of no use in an incident.
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Watch this network namespace instead of the one tracer runs in, as `ip netns exec`
    /// would: a name from `ip netns list`, a path (/proc/PID/ns/net, /var/run/netns/cni-…)
    /// or the PID of a process in it (e.g. 1 for the host's, from a container with the
    /// host's PID namespace).
    #[arg(long, value_name = "NAME|PATH|PID")]
    pub netns: Option<String>,
}

/// A ring buffer for the rate at which this node can make records: a journey per packet,
/// so per CPU that handles packets; findings-only watches send only drops and stray replies.
/// The node's online CPUs, not the ones tracer may run on: a pod's CPU limit or a taskset
/// confines the reader, not the packets.
fn default_ring_mib(findings_only: bool) -> u32 {
    if findings_only {
        return 1;
    }
    let cpus = aya::util::online_cpus().map_or(1, |cpus| cpus.len()) as u32;
    ring_mib_for(cpus)
}

fn ring_mib_for(cpus: u32) -> u32 {
    (4 * cpus).next_power_of_two().clamp(4, 64)
}

impl TracingArgs {
    /// Enters `--netns`, when given. Call while the process has one thread: everything
    /// started afterwards (the watch, its workers, the tools they run) lives there.
    pub(crate) fn enter_netns(&self) -> Result<()> {
        match &self.netns {
            Some(target) => crate::system::netns::enter(target),
            None => Ok(()),
        }
    }

    /// The options of a watch on `port`, copying `snaplen` bytes, for `duration`.
    pub(crate) fn watch_options(
        &self,
        port: PortFilter,
        snaplen: u32,
        duration: Option<Duration>,
        findings_only: bool,
    ) -> WatchOptions {
        WatchOptions {
            settings: WatchSettings {
                port,
                snaplen,
                ring_buffer_bytes: self.ring_buffer_mib.unwrap_or_else(|| default_ring_mib(findings_only)) << 20,
                debug: self.debug,
                findings_only,
                empty_programs: self.empty_programs,
            },
            duration,
            analysis: AnalysisOptions { dns_timeout: self.dns_timeout, dns_ports: self.dns_ports.clone() },
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct WatchArgs {
    /// Port to trace, as source or destination, UDP and TCP. 0 traces every port.
    #[arg(long, default_value = "53")]
    pub port: PortFilter,

    /// `text` for people (colour on a terminal), `json` for JSON Lines (fields in README),
    /// `none` for an agent that serves --metrics (only the summary, on standard error).
    #[arg(long, value_enum, default_value_t = WatchFormat::Text)]
    pub output: WatchFormat,

    /// Stop by itself after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Bytes of each packet copied in the kernel, from the Ethernet header on.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=512))]
    pub snaplen: u32,

    #[command(flatten)]
    pub tracing: TracingArgs,

    /// Only what can become a finding: the kernel sends drops (with the hook and REJECT
    /// answer) and DNS replies that leave a bridge without conntrack, not every packet's
    /// way. Costs little under load, for a watch left running on a busy node; lines are
    /// printed only for those packets, and unanswered queries (dns_timeout) are not seen.
    #[arg(long)]
    pub findings_only: bool,

    /// Also write every traced packet to FILE as pcapng (mode 0600), with a comment per
    /// packet and the findings; read it with `tracer report FILE`, Wireshark or tshark.
    /// FILE must not exist (see --force); links, FIFOs and devices are refused.
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// With --write: replace FILE if it is an earlier capture of yours (a regular file you
    /// own, with no other name). The new capture is written beside it and takes its name
    /// only when the watch ends, so a watch that fails to start keeps the old one.
    #[arg(long, requires = "write")]
    pub force: bool,

    #[command(flatten)]
    pub agent: AgentArgs,
}

/// What the watch's output gathers between flushes: a pipe's whole default capacity.
const OUTPUT_BUFFER_BYTES: usize = 64 << 10;

/// `tracer watch`: the capture file, the outputs, the watch, and the exit code.
pub(crate) fn command(args: WatchArgs) -> ExitCode {
    let options = args.tracing.watch_options(args.port, args.snaplen, args.duration, args.findings_only);
    // Nothing is opened, entered or created before the privileges are known to be there:
    // a watch that cannot start leaves nothing behind.
    if let Err(err) = check_privileges() {
        return fail(&err);
    }
    // The metrics port is opened in the namespace tracer was started in, before --netns.
    let agent = match args.agent.open_metrics().and_then(|metrics| {
        args.tracing.enter_netns()?;
        args.agent.start(metrics)
    }) {
        Ok(agent) => agent,
        Err(err) => return fail(&err),
    };
    // The capture file is created before anything is attached, so a path that cannot
    // be written is reported at once.
    let mut capture_file = None;
    let capture = match &args.write {
        Some(path) => {
            let (file, handle) = match CaptureFile::create(path, args.force) {
                Ok(created) => created,
                Err(refused) => return fail(&anyhow::anyhow!(refused)),
            };
            let writer = match PcapngWriter::to_file(handle, &capture_info(&args)) {
                Ok(writer) => writer,
                Err(err) => {
                    file.abandon();
                    return fail(&anyhow::anyhow!("cannot write the capture to {}: {err}", path.display()));
                }
            };
            match file.temporary() {
                Some(temporary) => crate::note_line!(
                    "tracer: writing the traced packets to {} (pcapng, mode 0600); it replaces {} when the watch ends",
                    temporary.display(),
                    path.display()
                ),
                None => {
                    crate::note_line!("tracer: writing the traced packets to {} (pcapng, mode 0600)", path.display())
                }
            }
            capture_file = Some(file);
            Some((Box::new(writer) as Box<dyn Sink>, path.display().to_string()))
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    // Flushed after every batch of records: a write per line (standard output's own line
    // buffering) or per 8 KiB made the pipe's wakeups a quarter of a busy watch's time.
    // Writes that wait for a reader give up once Ctrl-C or SIGTERM came: a reader that
    // stopped reading must not keep the watch from stopping.
    if let Err(err) = stop::note_signals() {
        return fail(&err);
    }
    let out = match StopAwareWriter::stdout() {
        Ok(out) => out,
        Err(err) => return fail(&anyhow::anyhow!("cannot write to standard output: {err}")),
    };
    let buffered = || std::io::BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, out);
    let main: Box<dyn Sink> = match args.output {
        WatchFormat::Text => Box::new(TextOutput::new(buffered(), colour)),
        WatchFormat::Json => Box::new(JsonOutput::new(buffered())),
        WatchFormat::None => Box::new(SummaryOnly::new(std::io::stderr())),
    };
    let tee = Tee::new(main, capture);
    let capture_failure = tee.capture_failure();
    let (mut output, node_checks) = match agent.outputs(Box::new(tee), args.port) {
        Ok(outputs) => outputs,
        Err(err) => {
            if let Some(file) = capture_file {
                file.abandon();
            }
            return fail(&err);
        }
    };
    let ended = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(live::run(&options, output.as_mut())),
        Err(err) => Err(anyhow::anyhow!(err).context("starting the event loop")),
    };
    // Flushes and closes the capture before it is synced and named.
    drop(output);
    drop(node_checks);
    let ending = match ended {
        Ok(ending) => ending,
        Err(err) => {
            // Nothing was traced: what the watch created goes, an earlier capture stays.
            if let Some(file) = capture_file {
                file.abandon();
            }
            return fail(&err);
        }
    };
    if let Some(file) = capture_file {
        let path = args.write.as_deref().unwrap_or(Path::new("-"));
        if let Err(err) = file.finish() {
            return fail(&anyhow::anyhow!(
                "finishing the capture {} failed: {err}; what was written may be incomplete",
                path.display()
            ));
        }
        // The watch ran to its end, but a capture that stopped early holds less than it saw:
        // a script that keeps the file must not take it for whole.
        if let Some(err) = capture_failure.get() {
            if let Ending::OutputClosed(summary) = &ending {
                let _ = TextOutput::new(std::io::stderr().lock(), false).summary(summary);
            }
            return fail(&anyhow::anyhow!(
                "writing the capture {} failed ({err}): it holds what was written before; write it where there is room",
                path.display()
            ));
        }
    }
    match ending {
        Ending::Finished(_) => ExitCode::SUCCESS,
        // `| head`: the reader has what it wanted. The summary goes to the terminal instead.
        Ending::OutputClosed(summary) => {
            let _ = TextOutput::new(std::io::stderr().lock(), false).summary(&summary);
            ExitCode::SUCCESS
        }
        Ending::OutputFailed(error) => fail(&anyhow::anyhow!(
            "writing to standard output failed ({error}): the watch stopped; write to a file or pipe that has room"
        )),
    }
}

/// What the capture's section header records: how the watch runs and the node
/// settings findings cite, as they are now.
fn capture_info(args: &WatchArgs) -> CaptureInfo {
    let sysctls: BTreeMap<String, Option<String>> = [bridge_nf_call_sysctl(false), bridge_nf_call_sysctl(true)]
        .into_iter()
        .map(|name| (name.to_string(), read_sysctl(name).value))
        .collect();
    CaptureInfo {
        meta: CaptureMeta {
            format: FORMAT.to_string(),
            tracer_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: read_sysctl("kernel.hostname").value,
            port: args.port,
            snaplen: args.snaplen,
            dns_timeout_ns: args.tracing.dns_timeout.as_nanos() as u64,
            dns_ports: args.tracing.dns_ports.clone(),
            sysctls,
        },
        os: read_sysctl("kernel.osrelease").value.map(|release| format!("Linux {release}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_grows_with_the_cpus_up_to_64_mib() {
        assert_eq!([1, 2, 3, 4, 16, 64].map(ring_mib_for), [4, 8, 16, 16, 64, 64]);
    }

    #[test]
    fn the_ring_follows_the_node_not_the_cpus_tracer_may_run_on() {
        let online = aya::util::online_cpus().expect("online CPUs").len() as u32;
        // Confined to one CPU, as a taskset or a pod's cpuset would: the packets still come
        // from every CPU of the node, and the ring is sized for them.
        let confined = std::thread::spawn(|| {
            // SAFETY: a set with CPU 0 only, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            }
            assert_eq!(std::thread::available_parallelism().map(|n| n.get()).ok(), Some(1));
            default_ring_mib(false)
        })
        .join()
        .expect("the confined thread");
        assert_eq!(confined, ring_mib_for(online));
        assert_eq!(default_ring_mib(true), 1);
    }
}
