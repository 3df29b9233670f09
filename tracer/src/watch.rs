//! `tracer watch`: attach, stream packet events to an output until stopped, then
//! print the summary. Orchestration only: decoding lives in `events`, correlation and
//! findings in `analysis`, printing in `outputs`.
//!
//! The loop stays in control when the kernel produces records faster than they can be
//! read: each pass over the ring buffer is capped, and between passes the loop serves
//! signals, the deadline and expiry. Queries are timed out against the kernel time of the
//! newest record read (or the present, once the ring buffer has been read empty), so a
//! reader that falls behind does not time out queries whose replies are still queued.

use std::{
    collections::HashMap,
    io,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    analysis::{firewall::FirewallWorker, Analysis, AnalysisOptions},
    events::{
        interfaces::Interfaces,
        monotonic_now_ns,
        record::{self, KernelEvent},
        TracedPacket, WallClock,
    },
    hooks::{check_privileges, loss::KernelLoss, Attached, KernelHooks, WatchSettings},
    outputs::{Output, Summary},
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
    let Attached { hooks, events, mut loss } = KernelHooks::attach(&options.settings)?;
    let mut interfaces = Interfaces::open()?;
    let clock = WallClock::now();
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as
    // long as the AsyncFd holds it.
    let mut events = unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("watching the ring buffer for events: {err}"))?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(TICK);
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let mut analysis = Analysis::live(&options.analysis, firewall);
    let mut watermark = Watermark::default();
    let mut ticks: u64 = 0;
    let mut lost_reported: u64 = 0;

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
    if crate::hooks::injected_fault("panic-after-attach") {
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
                    .drain(guard.get_inner_mut(), &mut interfaces, output, &mut analysis, &mut watermark)
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
            _ = tick.tick() => {
                ticks += 1;
                loss.read_misses();
                if ticks.is_multiple_of(LOST_REPORT_TICKS) {
                    lost_reported = report_lost(&hooks, &loss, lost_reported);
                }
                // Also when nothing woke the loop: a ring buffer read empty here is what
                // lets an unanswered query's time run out on a quiet node.
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                let served = pass.drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark).and_then(|_| {
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
        let ended = pass.drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark).and_then(|_| {
            analysis.expire(watermark.newest_ns);
            analysis.finish(&mut loss, output, Instant::now() + FINAL_RULES_WAIT)
        });
        output_error = ended.err();
    }
    let stats = &analysis.stats;
    if stats.malformed > 0 {
        eprintln!("tracer: warning: {} records could not be decoded: {}", stats.malformed, stats.last_error);
    }
    let lost_per_cpu = hooks.lost_per_cpu()?;
    let recursion_misses = loss.recursion_misses();
    let summary = Summary {
        packets: stats.packets,
        lost: lost_per_cpu.iter().sum::<u64>() + recursion_misses,
        lost_per_cpu,
        duration_secs: started.elapsed().as_secs_f64(),
        findings: analysis.log.distinct(),
        finding_counts: analysis.log.counts().into_iter().map(|(kind, n)| (kind.name(), n)).collect(),
        evicted_flows: analysis.flows.evicted(),
        evicted_paths: analysis.paths.evicted(),
        findings_overflow: analysis.log.overflow,
        unconfirmed: analysis.unconfirmed.total(),
        unconfirmed_counts: analysis.unconfirmed.counts().into_iter().map(|(kind, n)| (kind.name(), n)).collect(),
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
            let decoded = record::decode_record(&item);
            drop(item);
            match decoded {
                Ok(KernelEvent::Packet(event)) => {
                    watermark.read(event.timestamp_ns);
                    analysis.packet(TracedPacket::new(event, self.clock, interfaces), output)?;
                }
                Ok(KernelEvent::Hook(event)) => {
                    watermark.read(event.timestamp_ns);
                    analysis.paths.hook(&event);
                }
                Ok(KernelEvent::Icmp(event)) => {
                    watermark.read(event.timestamp_ns);
                    analysis.paths.icmp(&event);
                }
                Ok(KernelEvent::Drop(event)) => {
                    watermark.read(event.timestamp_ns);
                    let reason = self.reasons.get(&event.reason).cloned().unwrap_or_else(|| format!("reason {}", event.reason));
                    analysis.dropped(&event, reason, self.clock, interfaces, output)?;
                }
                Err(err) => {
                    analysis.stats.malformed += 1;
                    analysis.stats.last_error = err.to_string();
                }
            }
        }
    }
}
