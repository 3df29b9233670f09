//! `tracer watch`: attach, stream packet events to an output until stopped, then
//! print the summary. Orchestration only: decoding lives in `events`, correlation and
//! findings in `analysis`, printing in `outputs`.

use std::{
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
    analysis::Analysis,
    events::{
        interfaces::Interfaces,
        record::{self, KernelEvent},
        TracedPacket, WallClock,
    },
    hooks::{KernelHooks, WatchSettings},
    outputs::{Output, Summary},
};

pub struct WatchOptions {
    pub settings: WatchSettings,
    pub duration: Option<Duration>,
    /// A DNS query with no reply after this long is a `dns_timeout` finding.
    pub dns_timeout: Duration,
}

/// How a watch ended.
pub enum Ending {
    /// Duration reached or a signal: the summary was printed.
    Finished(Summary),
    /// Whoever read our output went away (e.g. `| head`): nothing more to print.
    OutputClosed,
}

/// Housekeeping cadence: interface changes are applied at least this often even when
/// no packets arrive.
const TICK: Duration = Duration::from_millis(250);

/// Lost records are checked every this many ticks (once a second) and reported on
/// standard error while they grow, so a loss is seen while it happens.
const LOST_REPORT_TICKS: u64 = 4;

/// Prints the running total of lost records when it grew; returns the total reported.
fn report_lost(hooks: &KernelHooks, reported: u64) -> u64 {
    let Ok(per_cpu) = hooks.lost_per_cpu() else { return reported };
    let total: u64 = per_cpu.iter().sum();
    if total > reported {
        eprintln!(
            "tracer: {total} records lost so far (per CPU {per_cpu:?}): the ring buffer was full; raise --ring-buffer-mib or narrow --port"
        );
    }
    total
}

pub async fn run(options: &WatchOptions, output: &mut dyn Output) -> Result<Ending> {
    let (hooks, events) = KernelHooks::attach(&options.settings)?;
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
    let mut analysis = Analysis::live(options.dns_timeout);
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

    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut guard = ready.context("waiting for events")?;
                if drain(guard.get_inner_mut(), &hooks, &clock, &mut interfaces, output, &mut analysis).is_err() {
                    return Ok(Ending::OutputClosed);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(LOST_REPORT_TICKS) {
                    lost_reported = report_lost(&hooks, lost_reported);
                }
                interfaces.apply_updates();
                analysis.paths.expire(monotonic_now_ns());
                if analysis.expire(monotonic_now_ns(), output).and_then(|()| output.flush()).is_err() {
                    return Ok(Ending::OutputClosed);
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut sleep_until_deadline => break,
        }
    }

    // Records already queued when we were told to stop still belong to the watch.
    if drain(events.get_mut(), &hooks, &clock, &mut interfaces, output, &mut analysis).is_err()
        || analysis.expire(monotonic_now_ns(), output).is_err()
    {
        return Ok(Ending::OutputClosed);
    }
    let stats = &analysis.stats;
    if stats.malformed > 0 {
        eprintln!("tracer: warning: {} records could not be decoded: {}", stats.malformed, stats.last_error);
    }
    let lost_per_cpu = hooks.lost_per_cpu()?;
    let summary = Summary {
        packets: stats.packets,
        lost: lost_per_cpu.iter().sum(),
        lost_per_cpu,
        duration_secs: started.elapsed().as_secs_f64(),
        findings: analysis.log.distinct(),
        finding_counts: analysis.log.counts().into_iter().map(|(kind, n)| (kind.name(), n)).collect(),
        evicted_flows: analysis.flows.evicted,
    };
    if output.summary(&summary).is_err() {
        return Ok(Ending::OutputClosed);
    }
    drop(hooks);
    Ok(Ending::Finished(summary))
}

/// The kernel's `bpf_ktime_get_ns` clock, to age queries against.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Reads every record queued in the ring buffer. An error means the output is gone.
fn drain(
    ring: &mut RingBuf<MapData>,
    hooks: &KernelHooks,
    clock: &WallClock,
    interfaces: &mut Interfaces,
    output: &mut dyn Output,
    analysis: &mut Analysis,
) -> io::Result<()> {
    interfaces.apply_updates();
    while let Some(item) = ring.next() {
        let decoded = record::decode_record(&item);
        drop(item);
        match decoded {
            Ok(KernelEvent::Packet(event)) => analysis.packet(&TracedPacket::new(event, clock, interfaces), output)?,
            Ok(KernelEvent::Hook(event)) => analysis.paths.hook(&event),
            Ok(KernelEvent::Icmp(event)) => analysis.paths.icmp(&event),
            Ok(KernelEvent::Drop(event)) => analysis.dropped(&event, hooks, clock, interfaces, output)?,
            Err(err) => {
                analysis.stats.malformed += 1;
                analysis.stats.last_error = err.to_string();
            }
        }
    }
    output.flush()
}
