//! `tracer watch`: attach, stream packet events to an output until stopped, then
//! print the summary. Orchestration only: decoding lives in `events`, printing in
//! `outputs`.

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
    events::{interfaces::Interfaces, packet, TracedPacket, WallClock},
    hooks::{BridgeHooks, WatchSettings},
    outputs::{Output, Summary},
};

pub struct WatchOptions {
    pub settings: WatchSettings,
    pub duration: Option<Duration>,
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

pub async fn run(options: &WatchOptions, output: &mut dyn Output) -> Result<Ending> {
    let (hooks, events) = BridgeHooks::attach(&options.settings)?;
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
    let mut stats = Stats::default();

    eprintln!(
        "tracer: watching {} on Linux bridges in network namespace {}{}; Ctrl-C to stop",
        match options.settings.port {
            0 => "all ports".to_string(),
            port => format!("port {port}"),
        },
        hooks.netns_inode,
        if hooks.conntrack_known { "" } else { " (no conntrack in this kernel's BTF: conntrack tuples not shown)" },
    );

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
                if drain(guard.get_inner_mut(), &clock, &mut interfaces, output, &mut stats).is_err() {
                    return Ok(Ending::OutputClosed);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => interfaces.apply_updates(),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut sleep_until_deadline => break,
        }
    }

    // Records already queued when we were told to stop still belong to the watch.
    if drain(events.get_mut(), &clock, &mut interfaces, output, &mut stats).is_err() {
        return Ok(Ending::OutputClosed);
    }
    if stats.malformed > 0 {
        eprintln!("tracer: warning: {} records could not be decoded: {}", stats.malformed, stats.last_error);
    }
    let lost_per_cpu = hooks.lost_per_cpu()?;
    let summary = Summary {
        packets: stats.packets,
        lost: lost_per_cpu.iter().sum(),
        lost_per_cpu,
        duration_secs: started.elapsed().as_secs_f64(),
    };
    if output.summary(&summary).is_err() {
        return Ok(Ending::OutputClosed);
    }
    drop(hooks);
    Ok(Ending::Finished(summary))
}

#[derive(Default)]
struct Stats {
    packets: u64,
    malformed: u64,
    last_error: String,
}

/// Reads every record queued in the ring buffer. An error means the output is gone.
fn drain(
    ring: &mut RingBuf<MapData>,
    clock: &WallClock,
    interfaces: &mut Interfaces,
    output: &mut dyn Output,
    stats: &mut Stats,
) -> io::Result<()> {
    interfaces.apply_updates();
    while let Some(item) = ring.next() {
        let decoded = packet::record_from_bytes(&item).and_then(|record| packet::decode(&record));
        drop(item);
        match decoded {
            Ok(event) => {
                stats.packets += 1;
                output.packet(&TracedPacket::new(event, clock, interfaces))?;
            }
            Err(err) => {
                stats.malformed += 1;
                stats.last_error = err.to_string();
            }
        }
    }
    output.flush()
}
