//! `tracer watch`: attach, stream packet events to an output until stopped, then
//! print the summary. Orchestration only: decoding lives in `kernel::records` and `pipeline`, correlation and
//! findings in `analysis`, printing in `render`.
//!
//! The loop stays in control when the kernel produces records faster than they can be
//! read: each pass over the ring buffer is capped, and between passes the loop serves
//! signals, the deadline and expiry. Queries are timed out against the kernel time of the
//! newest record read (or the present, once the ring buffer has been read empty), so a
//! reader that falls behind does not time out queries whose replies are still queued.

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, IsTerminal},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};
use tracer_common::NO_DROP_REASON;

use crate::{
    analysis::output::Tee,
    analysis::output::{Output, Summary},
    analysis::{firewall::FirewallWorker, Analysis, AnalysisOptions},
    capture::{
        file::CaptureFile,
        format::{CaptureMeta, FORMAT},
        writer::{CaptureInfo, PcapngWriter},
    },
    cli::{fail, parse_duration, parse_ring_mib, WatchFormat},
    commands::agent::AgentArgs,
    findings::netfilter::NETFILTER_DROP,
    kernel::{
        check_privileges,
        journeys::Journeys,
        loss::KernelLoss,
        records::{self as record, KernelEvent},
        Attached, KernelHooks, WatchSettings,
    },
    model::{monotonic_now_ns, WallClock},
    node::interfaces::Interfaces,
    node::sysctl::{bridge_nf_call_sysctl, read_sysctl},
    pipeline::{loss::KernelWitness, naming, paths::DroppedPacket},
    render::{
        json::JsonOutput,
        text::{SummaryOnly, TextOutput},
    },
};

pub struct WatchOptions {
    pub settings: WatchSettings,
    pub duration: Option<Duration>,
    pub analysis: AnalysisOptions,
}

/// How a watch ended.
pub enum Ending {
    /// Duration reached or a signal: the summary was printed.
    Finished(Summary),
    /// Whoever read our output went away (e.g. `| head`): the watch stopped; its summary
    /// could not go where the lines went.
    OutputClosed(Summary),
    /// Writing the output failed otherwise (a full disk, an I/O error): the watch stopped.
    OutputFailed { summary: Summary, error: io::Error },
}

/// Housekeeping cadence: interface changes are applied at least this often even when
/// no packets arrive.
const TICK: Duration = Duration::from_millis(250);

/// The kernel wakes the reader only once an eighth of the ring is queued (a wakeup per
/// record cost more than the record); below that, what is queued is read this often.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Lost records are checked every this many ticks (once a second) and reported on
/// standard error while they grow, so a loss is seen while it happens.
const LOST_REPORT_TICKS: u64 = 4;

/// One pass over the ring buffer reads at most this many records, for at most this long:
/// then the loop serves signals, the deadline and expiry before it reads on.
const PASS_RECORDS: usize = 16_384;
const PASS_TIME: Duration = Duration::from_millis(50);

/// After a stop, what is already queued is read for at most this long, and the rules of
/// drops still being named are waited for at most this long: a stop is served within a
/// second however full the ring buffer is.
const FINAL_DRAIN_TIME: Duration = Duration::from_millis(300);
const FINAL_RULES_WAIT: Duration = Duration::from_millis(500);

/// A record's timestamp is taken after its slot is reserved; a slot that is reserved
/// but not yet filled when the ring buffer reads empty is at most this much older than
/// the moment it read empty.
const IN_FLIGHT_NS: u64 = 50_000_000;

/// The kernel time up to which every record has been read.
#[derive(Default)]
struct Watermark {
    newest_ns: u64,
}

impl Watermark {
    fn read(&mut self, timestamp_ns: u64) {
        self.newest_ns = self.newest_ns.max(timestamp_ns);
    }

    /// The ring buffer read empty just now: everything older has been read.
    fn caught_up(&mut self) {
        self.read(monotonic_now_ns().saturating_sub(IN_FLIGHT_NS));
    }
}

/// Prints the running total of lost records when it grew; returns the total reported.
fn report_lost(hooks: &KernelHooks, loss: &KernelLoss, reported: u64) -> u64 {
    let Ok(per_cpu) = hooks.lost_per_cpu() else { return reported };
    let misses = loss.recursion_misses();
    let total: u64 = per_cpu.iter().sum::<u64>() + misses;
    if total > reported {
        let skipped = if misses > 0 { format!(", {misses} program runs skipped by the kernel") } else { String::new() };
        eprintln!(
            "tracer: {total} records lost so far (per CPU {per_cpu:?}{skipped}): the ring buffer was full; raise --ring-buffer-mib or narrow --port. Findings whose records may be among them are counted as unconfirmed, not stated"
        );
    }
    total
}

pub async fn run(options: &WatchOptions, output: &mut dyn Output) -> Result<Ending> {
    // Nothing is read or run before the privileges are known to be there.
    check_privileges()?;
    // The rulesets are read before anything is attached: that reading is what the
    // counters of the first drop are compared with.
    let firewall = FirewallWorker::start();
    let Attached { hooks, events, loss, mut reports, mut journeys } = KernelHooks::attach(&options.settings)?;
    let mut loss = KernelWitness::new(loss);
    let mut interfaces = Interfaces::open()?;
    let clock = WallClock::now();
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as
    // long as the AsyncFd holds it.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("watching the ring buffer for events: {err}"))?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(TICK);
    let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut analysis = Analysis::live(&options.analysis, firewall);
    let mut watermark = Watermark::default();
    let mut decoder = record::Decoder::default();
    let mut ticks: u64 = 0;
    let mut lost_reported: u64 = 0;

    eprintln!("tracer: {}", hooks.capabilities);
    eprintln!(
        "tracer: watching {} on Linux bridges in network namespace {}{}; Ctrl-C to stop",
        match options.settings.port {
            0 => "all ports".to_string(),
            port => format!("port {port}"),
        },
        hooks.netns_inode,
        if hooks.conntrack_known { "" } else { " (no conntrack in this kernel's BTF: conntrack tuples not shown)" },
    );

    #[cfg(feature = "fault-injection")]
    if crate::kernel::injected_fault("panic-after-attach") {
        panic!("injected fault (TRACER_FAULT=panic-after-attach)");
    }

    let sleep_until_deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until_deadline);

    let reasons = &hooks.drop_reasons;
    // The first error writing the output, which ends the watch.
    let mut output_error: Option<io::Error> = None;
    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut guard = ready.context("waiting for events")?;
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                let emptied = pass
                    .drain(guard.get_inner_mut(), &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder)
                    .and_then(|emptied| analysis.settle(&mut loss, output).and_then(|()| output.flush()).map(|()| emptied));
                match emptied {
                    Ok(true) => guard.clear_ready(),
                    Ok(false) => {
                        // More is queued: let signals, the deadline and the tick in first.
                        drop(guard);
                        tokio::task::yield_now().await;
                    }
                    Err(err) => {
                        output_error = Some(err);
                        break;
                    }
                }
            }
            _ = drain_timer.tick() => {
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                let served = pass
                    .drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder)
                    .and_then(|_| analysis.settle(&mut loss, output).and_then(|()| output.flush()));
                if let Err(err) = served {
                    output_error = Some(err);
                    break;
                }
            }
            _ = tick.tick() => {
                ticks += 1;
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                if let Err(err) = pass.sweep(&mut journeys, &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder) {
                    output_error = Some(err);
                    break;
                }
                if let Some(reports) = reports.as_mut() {
                    reports.flush();
                }
                loss.read_misses();
                if ticks.is_multiple_of(LOST_REPORT_TICKS) {
                    lost_reported = report_lost(&hooks, loss.kernel(), lost_reported);
                    output.lost(lost_reported);
                }
                // Also when nothing woke the loop: a ring buffer read empty here is what
                // lets an unanswered query's time run out on a quiet node.
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                let served = pass.drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder).and_then(|_| {
                    analysis.expire(watermark.newest_ns);
                    analysis.settle(&mut loss, output).and_then(|()| output.flush())
                });
                if let Err(err) = served {
                    output_error = Some(err);
                    break;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut sleep_until_deadline => break,
        }
    }

    if output_error.is_none() {
        // Records already queued when we were told to stop still belong to the watch, as
        // far as they can be read in a moment.
        let pass = Pass { reasons, clock: &clock, until: Instant::now() + FINAL_DRAIN_TIME, max_records: usize::MAX };
        let ended = pass
            .drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder)
            .and_then(|_| {
                analysis.expire(watermark.newest_ns);
                analysis.finish(&mut loss, output, Instant::now() + FINAL_RULES_WAIT)
            });
        output_error = ended.err();
    }
    if let Some(reports) = reports.as_mut() {
        reports.flush();
    }
    let stats = &analysis.stats;
    if stats.malformed > 0 {
        eprintln!("tracer: warning: {} records could not be decoded: {}", stats.malformed, stats.last_error);
    }
    let lost_per_cpu = hooks.lost_per_cpu()?;
    let recursion_misses = loss.kernel().recursion_misses();
    let summary = Summary {
        packets: stats.packets,
        records: stats.records,
        lost: lost_per_cpu.iter().sum::<u64>() + recursion_misses,
        lost_per_cpu,
        duration_secs: started.elapsed().as_secs_f64(),
        findings: analysis.log.distinct(),
        finding_counts: analysis.log.counts().into_iter().collect(),
        evicted_flows: analysis.flows.evicted(),
        evicted_paths: analysis.stats.abandoned,
        findings_overflow: analysis.log.overflow,
        unconfirmed: analysis.unconfirmed.total(),
        unconfirmed_counts: analysis.unconfirmed.counts().into_iter().collect(),
        recursion_misses,
    };
    drop(hooks);
    // Also after the output failed: a capture written beside it still gets its summary.
    let summary_written = output.summary(&summary);
    let output_error = output_error.or(summary_written.err());
    Ok(match output_error {
        None => Ending::Finished(summary),
        Some(err) if err.kind() == io::ErrorKind::BrokenPipe => Ending::OutputClosed(summary),
        Some(error) => Ending::OutputFailed { summary, error },
    })
}

/// One pass over the ring buffer.
struct Pass<'a> {
    reasons: &'a HashMap<u32, String>,
    clock: &'a WallClock,
    until: Instant,
    max_records: usize,
}

/// Time is looked at every this many records.
const CLOCK_EVERY: usize = 256;

impl Pass<'_> {
    /// Reads records until the ring buffer is empty (true) or the pass's budget is spent
    /// (false). An error means the output is gone. The caller settles the findings the
    /// pass made and then flushes the output.
    fn drain(
        &self,
        ring: &mut RingBuf<MapData>,
        interfaces: &mut Interfaces,
        output: &mut dyn Output,
        analysis: &mut Analysis,
        watermark: &mut Watermark,
        decoder: &mut record::Decoder,
    ) -> io::Result<bool> {
        interfaces.apply_updates();
        let mut read = 0usize;
        loop {
            if read >= self.max_records || (read % CLOCK_EVERY == CLOCK_EVERY - 1 && Instant::now() >= self.until) {
                return Ok(false);
            }
            let Some(item) = ring.next() else {
                watermark.caught_up();
                return Ok(true);
            };
            read += 1;
            analysis.stats.records += 1;
            let decoded = decoder.decode(&item);
            drop(item);
            self.take(decoded, decoder, interfaces, output, analysis, watermark)?;
        }
    }

    /// Journeys that never ended, read from the kernel's table (see `kernel::journeys`).
    fn sweep(
        &self,
        journeys: &mut Journeys,
        interfaces: &mut Interfaces,
        output: &mut dyn Output,
        analysis: &mut Analysis,
        watermark: &mut Watermark,
        decoder: &mut record::Decoder,
    ) -> io::Result<()> {
        for journey in journeys.sweep(monotonic_now_ns()) {
            analysis.stats.records += 1;
            analysis.stats.abandoned += 1;
            let decoded = decoder.abandoned(&journey);
            self.take(decoded, decoder, interfaces, output, analysis, watermark)?;
        }
        Ok(())
    }

    /// Hands the events a record was decoded into to the analysis.
    fn take(
        &self,
        decoded: Result<(), record::DecodeError>,
        decoder: &mut record::Decoder,
        interfaces: &mut Interfaces,
        output: &mut dyn Output,
        analysis: &mut Analysis,
        watermark: &mut Watermark,
    ) -> io::Result<()> {
        if let Err(err) = decoded {
            analysis.stats.malformed += 1;
            analysis.stats.last_error = err.to_string();
            return Ok(());
        }
        for event in decoder.events.drain(..) {
            match event {
                KernelEvent::Packet { event, hooks } => {
                    watermark.read(event.timestamp_ns);
                    analysis
                        .packet_with_hooks(naming::traced(event, self.clock, interfaces).with_hooks(hooks), output)?;
                }
                KernelEvent::Dropped { drop, path, icmp } => {
                    watermark.read(drop.timestamp_ns);
                    let reason = match self.reasons.get(&drop.reason) {
                        Some(name) => name.clone(),
                        // A kernel that gives no reason: a packet freed in a hook it never left
                        // was dropped by netfilter.
                        None if drop.reason == NO_DROP_REASON && path.last().is_some_and(|pass| !pass.left) => {
                            NETFILTER_DROP.to_string()
                        }
                        None if drop.reason == NO_DROP_REASON => "NOT_SPECIFIED".to_string(),
                        None => format!("reason {}", drop.reason),
                    };
                    analysis.dropped(DroppedPacket::new(drop, path, icmp), reason, self.clock, interfaces, output)?;
                }
                KernelEvent::StrayReply { reply, asked } => {
                    watermark.read(reply.timestamp_ns);
                    analysis.stray_reply(naming::traced(reply, self.clock, interfaces), asked, output)?;
                }
            }
        }
        Ok(())
    }
}

/// How traffic is traced and read, for `watch` and `triage` alike.
#[derive(clap::Args, Debug)]
pub struct TracingArgs {
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
fn default_ring_mib(findings_only: bool) -> u32 {
    if findings_only {
        return 1;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (4 * cpus).next_power_of_two().clamp(4, 64)
}

impl TracingArgs {
    /// Enters `--netns`, when given. Call while the process has one thread: everything
    /// started afterwards (the watch, its workers, the tools they run) lives there.
    pub fn enter_netns(&self) -> Result<()> {
        match &self.netns {
            Some(target) => crate::netns::enter(target),
            None => Ok(()),
        }
    }

    /// The options of a watch on `port`, copying `snaplen` bytes, for `duration`.
    pub fn watch_options(
        &self,
        port: u16,
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
pub struct WatchArgs {
    /// Port to trace, as source or destination, UDP and TCP. 0 traces every port.
    #[arg(long, default_value_t = 53)]
    pub port: u16,

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
pub fn command(args: WatchArgs) -> ExitCode {
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
                Some(temporary) => eprintln!(
                    "tracer: writing the traced packets to {} (pcapng, mode 0600); it replaces {} when the watch ends",
                    temporary.display(),
                    path.display()
                ),
                None => eprintln!("tracer: writing the traced packets to {} (pcapng, mode 0600)", path.display()),
            }
            capture_file = Some(file);
            Some((Box::new(writer) as Box<dyn Output>, path.display().to_string()))
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    // Flushed after every batch of records: a write per line (standard output's own line
    // buffering) or per 8 KiB made the pipe's wakeups a quarter of a busy watch's time.
    let buffered = || std::io::BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, stdout.lock());
    let main: Box<dyn Output> = match args.output {
        WatchFormat::Text => Box::new(TextOutput::new(buffered(), colour)),
        WatchFormat::Json => Box::new(JsonOutput::new(buffered())),
        WatchFormat::None => Box::new(SummaryOnly::new(std::io::stderr())),
    };
    let (mut output, node_checks) = match agent.outputs(Box::new(Tee::new(main, capture)), args.port) {
        Ok(outputs) => outputs,
        Err(err) => {
            if let Some(file) = capture_file {
                file.abandon();
            }
            return fail(&err);
        }
    };
    let ended = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(&options, output.as_mut())),
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
    }
    match ending {
        Ending::Finished(_) => ExitCode::SUCCESS,
        // `| head`: the reader has what it wanted. The summary goes to the terminal instead.
        Ending::OutputClosed(summary) => {
            let _ = TextOutput::new(std::io::stderr().lock(), false).summary(&summary);
            ExitCode::SUCCESS
        }
        Ending::OutputFailed { error, .. } => fail(&anyhow::anyhow!(
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
