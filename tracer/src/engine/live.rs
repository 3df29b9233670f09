//! The live source: attach the kernel programs, read the ring buffer until stopped (a
//! signal, the deadline, or an output that went away), hand every record to the analysis,
//! then report the summary.
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
use tracer_common::NO_DROP_REASON;

use crate::{
    analysis::{firewall::FirewallWorker, Analysis, AnalysisOptions},
    kernel::{
        check_privileges,
        journeys::Journeys,
        loss::KernelLoss,
        records::{self as record, KernelEvent},
        Attached, KernelHooks, WatchSettings,
    },
    model::{monotonic_now_ns, netfilter::DropReason, WallClock},
    node::interfaces::Interfaces,
    pipeline::{loss::KernelWitness, naming, paths::DroppedPacket},
    schema::{
        sink::Sink,
        summary::{Evictions, Summary},
    },
};

pub(crate) struct WatchOptions {
    pub settings: WatchSettings,
    pub duration: Option<Duration>,
    pub analysis: AnalysisOptions,
}

/// How a watch ended.
pub(crate) enum Ending {
    /// Duration reached or a signal: the summary was printed.
    Finished(Summary),
    /// Whoever read our output went away (e.g. `| head`): the watch stopped; its summary
    /// could not go where the lines went.
    OutputClosed(Summary),
    /// Writing the output failed otherwise (a full disk, an I/O error): the watch stopped.
    OutputFailed(io::Error),
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

/// How long the test suite's slow reader (`TRACER_FAULT=slow-reader`) pauses after a pass: a
/// 1 MiB ring fills in a fraction of that under the load tests' flood.
const SLOW_READER_PAUSE: Duration = Duration::from_millis(500);

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
        crate::note_line!(
            "tracer: {total} records lost so far (per CPU {per_cpu:?}{skipped}): the ring buffer was full; raise --ring-buffer-mib or narrow --port. Findings whose records may be among them are counted as unconfirmed, not stated"
        );
    }
    total
}

pub(crate) async fn run(options: &WatchOptions, output: &mut dyn Sink) -> Result<Ending> {
    // Nothing is read or run before the privileges are known to be there.
    check_privileges()?;
    // The rulesets are read (for a bounded time) before anything is attached: that reading is
    // what the counters of the first drops are compared with.
    let firewall = FirewallWorker::start();
    let Attached { hooks, events, loss, mut reports, mut journeys, counts } = KernelHooks::attach(&options.settings)?;
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

    crate::note_line!("tracer: {}", hooks.capabilities);
    let blind_spots = hooks.blind_spots(options.settings.findings_only);
    for spot in &blind_spots {
        crate::note_line!("tracer: blind spot: {spot}");
    }
    output.blind_spots(&blind_spots);
    crate::note_line!(
        "tracer: watching {} on Linux bridges in network namespace {}{}; Ctrl-C to stop",
        options.settings.port,
        hooks.netns_inode,
        if hooks.conntrack_known { "" } else { " (no conntrack in this kernel's BTF: conntrack tuples not shown)" },
    );

    #[cfg(feature = "fault-injection")]
    if crate::kernel::injected_fault("panic-after-attach") {
        panic!("injected fault (TRACER_FAULT=panic-after-attach)");
    }
    // A reader that pauses after every pass, so that the ring buffer overflows under any
    // flood, however fast this machine reads: the loss tests then do not hang on its speed.
    #[cfg(feature = "fault-injection")]
    let slow_reader = crate::kernel::injected_fault("slow-reader");
    #[cfg(not(feature = "fault-injection"))]
    let slow_reader = false;

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
                if slow_reader {
                    tokio::time::sleep(SLOW_READER_PAUSE).await;
                }
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
                // A stop asked for before this loop listened (while attaching) was noted only.
                if crate::system::stop::requested() {
                    break;
                }
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
                    output.evictions(&Evictions {
                        dns_queries: analysis.flows.evicted(),
                        journeys: analysis.stats.abandoned,
                        findings: analysis.log.evicted + analysis.log.expired,
                    });
                }
                // Also when nothing woke the loop: a ring buffer read empty here is what
                // lets an unanswered query's time run out on a quiet node.
                let pass = Pass { reasons, clock: &clock, until: Instant::now() + PASS_TIME, max_records: PASS_RECORDS };
                let served = pass.drain(events.get_mut(), &mut interfaces, output, &mut analysis, &mut watermark, &mut decoder).and_then(|_| {
                    // Once a second, after the records queued so far were read: what the
                    // kernel counted since the last record of each key.
                    if ticks.is_multiple_of(LOST_REPORT_TICKS) {
                        decoder.counted(&counts);
                        pass.take(Ok(()), &mut decoder, &mut interfaces, output, &mut analysis, &mut watermark)?;
                    }
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
                decoder.counted(&counts);
                pass.take(Ok(()), &mut decoder, &mut interfaces, output, &mut analysis, &mut watermark)
            })
            .and_then(|()| {
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
        crate::note_line!("tracer: warning: {} records could not be decoded: {}", stats.malformed, stats.last_error);
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
        findings_forgotten: analysis.log.evicted + analysis.log.expired,
        unconfirmed: analysis.unconfirmed.total(),
        unconfirmed_counts: analysis.unconfirmed.counts().into_iter().collect(),
        recursion_misses,
        blind_spots,
    };
    drop(hooks);
    // Also after the output failed: a capture written beside it still gets its summary.
    let summary_written = output.summary(&summary);
    let output_error = output_error.or(summary_written.err());
    Ok(match output_error {
        None => Ending::Finished(summary),
        Some(err) if err.kind() == io::ErrorKind::BrokenPipe => Ending::OutputClosed(summary),
        Some(error) => Ending::OutputFailed(error),
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
        output: &mut dyn Sink,
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
        output: &mut dyn Sink,
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
        output: &mut dyn Sink,
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
                    let reason = DropReason::resolve(drop.reason, NO_DROP_REASON, self.reasons, &path);
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
