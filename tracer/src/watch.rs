//! `tracer watch`: attach, stream packet events to an output until stopped, then
//! print the summary. Orchestration only: decoding lives in `events`, printing in
//! `outputs`.

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
    correlation::{
        dns::{Correlated, DnsFlows},
        paths::HookPaths,
    },
    events::{
        interfaces::Interfaces,
        netfilter::DropEvent,
        node,
        record::{self, KernelEvent},
        TracedPacket, WallClock,
    },
    events::firewall::{self, Snapshot},
    findings::{
        dns::judge,
        netfilter::{judge_drop, short_label, DropContext, NETFILTER_DROP},
        Finding, FindingKind, FindingLog,
    },
    hooks::{KernelHooks, WatchSettings},
    outputs::{DropLine, Output, Summary},
};

pub struct WatchOptions {
    pub settings: WatchSettings,
    pub duration: Option<Duration>,
    /// A DNS query with no reply after this long is a `dns_timeout` finding.
    pub dns_timeout: Duration,
}

/// DNS queries tracked at once; beyond it the oldest are dropped (and counted), so
/// a long watch on a busy node stays bounded.
const MAX_TRACKED_QUERIES: usize = 65_536;

/// Packets followed through the netfilter hooks at once, and how long a path waits
/// for its packet to reach the bridge path again before it is forgotten.
const MAX_TRACKED_PATHS: usize = 65_536;
const PATH_MAX_AGE: Duration = Duration::from_secs(1);

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
    let mut analysis = Analysis {
        flows: DnsFlows::new(options.dns_timeout.as_nanos() as u64, MAX_TRACKED_QUERIES),
        log: FindingLog::default(),
        timeout_secs: options.dns_timeout.as_secs_f64(),
        stats: Stats::default(),
        paths: HookPaths::new(MAX_TRACKED_PATHS, PATH_MAX_AGE.as_nanos() as u64),
        firewall: read_firewall(),
        attributed: HashMap::new(),
    };

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
                if drain(guard.get_inner_mut(), &hooks, &clock, &mut interfaces, output, &mut analysis).is_err() {
                    return Ok(Ending::OutputClosed);
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
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

#[derive(Default)]
struct Stats {
    packets: u64,
    malformed: u64,
    last_error: String,
}

/// Correlation state and findings of one run.
struct Analysis {
    flows: DnsFlows,
    log: FindingLog,
    timeout_secs: f64,
    stats: Stats,
    paths: HookPaths,
    /// The rulesets with their counters as last read: the "before" of the next drop.
    firewall: Snapshot,
    /// Drops already attributed, by what makes them the same problem: repeats are
    /// counted without reading the rulesets again.
    attributed: HashMap<DropKey, (Option<String>, Finding)>,
}

type DropKey = (&'static str, std::net::IpAddr, std::net::SocketAddr, u8);

/// Bounds the attribution cache like the finding log.
const MAX_ATTRIBUTED: usize = 10_000;

fn read_firewall() -> Snapshot {
    let snapshot = firewall::snapshot();
    for error in &snapshot.errors {
        eprintln!("tracer: warning: {error}");
    }
    snapshot
}

impl Analysis {
    fn packet(&mut self, packet: &TracedPacket, output: &mut dyn Output) -> io::Result<()> {
        self.stats.packets += 1;
        let hooks = self.paths.take_path(packet.event.skb_id);
        output.packet(packet, &hooks)?;
        match self.flows.observe(packet) {
            Some(correlated) => self.report(&correlated, output),
            None => Ok(()),
        }
    }

    fn expire(&mut self, now_ns: u64, output: &mut dyn Output) -> io::Result<()> {
        for correlated in self.flows.expire(now_ns) {
            self.report(&correlated, output)?;
        }
        Ok(())
    }

    /// Prints a finding the first time it occurs; repeats are only counted.
    fn report(&mut self, correlated: &Correlated, output: &mut dyn Output) -> io::Result<()> {
        let Some(finding) = judge(correlated, self.timeout_secs, &node::read_sysctl) else { return Ok(()) };
        match self.log.record(finding) {
            Some(new) => output.finding(new),
            None => Ok(()),
        }
    }
}

/// The kernel's `bpf_ktime_get_ns` clock, to age queries against.
fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

impl Analysis {
    fn dropped(
        &mut self,
        drop: &DropEvent,
        hooks: &KernelHooks,
        clock: &WallClock,
        interfaces: &mut Interfaces,
        output: &mut dyn Output,
    ) -> io::Result<()> {
        self.stats.packets += 1;
        let dropped = self.paths.drop(drop);
        let reason = hooks.drop_reasons.get(&drop.reason).cloned().unwrap_or_else(|| format!("reason {}", drop.reason));
        let icmp = dropped.icmp.as_ref().map(|i| icmp_name(drop.src.is_ipv6(), i.icmp_type, i.icmp_code));
        let wall_time_ns = clock.wall_ns(drop.timestamp_ns);
        let mut new_finding = None;
        let mut rule = None;
        // A REJECT whose ICMP answer the kernel rate-limited still is a REJECT.
        let mut rejected_by_rule = false;
        if let (true, Some(pass)) = (reason == NETFILTER_DROP, dropped.stopped_in()) {
            let key: DropKey = (pass.hook.name(), drop.src.ip(), drop.dst, drop.l4_proto);
            if let Some((label, finding)) = self.attributed.get(&key) {
                rule = label.clone();
                rejected_by_rule = finding.kind == FindingKind::NetfilterReject;
                self.log.record(finding.clone());
            } else {
                let context = DropContext {
                    wall_time_ns,
                    reason: &reason,
                    in_ifname: if pass.in_ifindex == 0 { None } else { interfaces.name(pass.in_ifindex) },
                    out_ifname: if pass.out_ifindex == 0 { None } else { interfaces.name(pass.out_ifindex) },
                };
                let after = firewall::snapshot();
                if let Some(finding) = judge_drop(&dropped, &context, &self.firewall, &after) {
                    rule = short_label(&finding);
                    rejected_by_rule = finding.kind == FindingKind::NetfilterReject;
                    if self.attributed.len() < MAX_ATTRIBUTED {
                        self.attributed.insert(key, (rule.clone(), finding.clone()));
                    }
                    new_finding = self.log.record(finding).cloned();
                }
                self.firewall = after;
            }
        }
        let line = DropLine {
            dropped: &dropped,
            wall_time_ns,
            ifname: interfaces.name(drop.ifindex),
            bridge: interfaces.bridge_of(drop.ifindex),
            reason,
            verdict: if icmp.is_some() || rejected_by_rule { "reject" } else { "drop" },
            icmp,
            rule,
        };
        output.dropped(&line)?;
        match new_finding {
            Some(finding) => output.finding(&finding),
            None => Ok(()),
        }
    }
}

fn icmp_name(ipv6: bool, icmp_type: u8, icmp_code: u8) -> String {
    let family = if ipv6 { firewall::Family::Ipv6 } else { firewall::Family::Ipv4 };
    crate::findings::rule_attribution::reject_name(family, icmp_type, icmp_code)
        .map(str::to_string)
        .unwrap_or_else(|| format!("type {icmp_type} code {icmp_code}"))
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
