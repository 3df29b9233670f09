//! What a run makes of its events: DNS queries paired with their replies, hook paths
//! joined to their packets, findings judged and logged once. Shared by the live watch
//! (events from the kernel) and `tracer report` (events read back from a capture), so
//! both print the same lines and findings for the same packets.

use std::{
    collections::HashMap,
    io,
    time::Duration,
};

use crate::{
    correlation::{
        dns::{Correlated, DnsFlows},
        paths::{HookPass, HookPaths},
    },
    events::{
        firewall::{self, Snapshot},
        interfaces::Interfaces,
        netfilter::DropEvent,
        node::{self, SysctlValue},
        TracedPacket, WallClock,
    },
    findings::{
        dns::judge,
        netfilter::{judge_drop, short_label, DropContext, NETFILTER_DROP},
        Evidence, Finding, FindingKind, FindingLog,
    },
    hooks::KernelHooks,
    outputs::{DropLine, Output},
};

/// DNS queries tracked at once; beyond it the oldest are dropped (and counted), so
/// a long watch on a busy node stays bounded.
const MAX_TRACKED_QUERIES: usize = 65_536;

/// Packets followed through the netfilter hooks at once, and how long a path waits
/// for its packet to reach the bridge path again before it is forgotten.
const MAX_TRACKED_PATHS: usize = 65_536;
const PATH_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Stats {
    pub packets: u64,
    pub malformed: u64,
    pub last_error: String,
}

/// Where the node settings a finding cites come from.
pub enum NodeSettings {
    /// Read from this node's /proc/sys when the finding is made (a live watch).
    Live,
    /// As a capture recorded them (`tracer report`): the node is elsewhere, or gone.
    Recorded(HashMap<String, Option<String>>),
}

impl NodeSettings {
    fn read(&self, name: &str) -> SysctlValue {
        match self {
            NodeSettings::Live => node::read_sysctl(name),
            NodeSettings::Recorded(values) => {
                SysctlValue { name: name.to_string(), value: values.get(name).cloned().flatten() }
            }
        }
    }
}

/// Correlation state and findings of one run.
pub struct Analysis {
    pub flows: DnsFlows,
    pub log: FindingLog,
    pub timeout_secs: f64,
    pub stats: Stats,
    pub paths: HookPaths,
    /// The rulesets with their counters as last read: the "before" of the next drop.
    firewall: Snapshot,
    /// Drops already attributed, by what makes them the same problem: repeats are
    /// counted without reading the rulesets again.
    attributed: HashMap<DropKey, (Option<String>, Finding)>,
    pub settings: NodeSettings,
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
    /// For a live watch: reads the rulesets now, as the "before" of the first drop.
    pub fn live(dns_timeout: Duration) -> Analysis {
        Analysis::new(dns_timeout, read_firewall(), NodeSettings::Live)
    }

    /// For replaying a capture: nothing is read from the node this runs on.
    pub fn replay(dns_timeout: Duration, recorded: HashMap<String, Option<String>>) -> Analysis {
        Analysis::new(dns_timeout, Snapshot::default(), NodeSettings::Recorded(recorded))
    }

    fn new(dns_timeout: Duration, firewall: Snapshot, settings: NodeSettings) -> Analysis {
        Analysis {
            flows: DnsFlows::new(dns_timeout.as_nanos() as u64, MAX_TRACKED_QUERIES),
            log: FindingLog::default(),
            timeout_secs: dns_timeout.as_secs_f64(),
            stats: Stats::default(),
            paths: HookPaths::new(MAX_TRACKED_PATHS, PATH_MAX_AGE.as_nanos() as u64),
            firewall,
            attributed: HashMap::new(),
            settings,
        }
    }

    /// Node settings a capture recorded with a packet: findings made from here on cite them.
    pub fn recorded_settings(&mut self, values: &[SysctlValue]) {
        if let NodeSettings::Recorded(recorded) = &mut self.settings {
            for value in values {
                recorded.insert(value.name.clone(), value.value.clone());
            }
        }
    }

    /// A packet from the kernel: its hook path is the one collected for its skb.
    pub fn packet(&mut self, packet: &TracedPacket, output: &mut dyn Output) -> io::Result<()> {
        let hooks = self.paths.take_path(packet.event.skb_id);
        self.packet_with_hooks(packet, &hooks, output)
    }

    /// A packet whose hook path is already known (read back from a capture).
    pub fn packet_with_hooks(&mut self, packet: &TracedPacket, hooks: &[HookPass], output: &mut dyn Output) -> io::Result<()> {
        self.stats.packets += 1;
        output.packet(packet, hooks)?;
        match self.flows.observe(packet) {
            Some(correlated) => self.report(&correlated, output),
            None => Ok(()),
        }
    }

    pub fn expire(&mut self, now_ns: u64, output: &mut dyn Output) -> io::Result<()> {
        for correlated in self.flows.expire(now_ns) {
            self.report(&correlated, output)?;
        }
        Ok(())
    }

    /// Prints a finding the first time it occurs; repeats are only counted.
    fn report(&mut self, correlated: &Correlated, output: &mut dyn Output) -> io::Result<()> {
        let settings = &self.settings;
        let Some(finding) = judge(correlated, self.timeout_secs, &|name| settings.read(name)) else { return Ok(()) };
        match self.log.record(finding) {
            Some(new) => output.finding(new),
            None => Ok(()),
        }
    }

    pub fn dropped(
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
            dropped,
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

    /// A drop line read back from a capture. Its rule was attributed when it was
    /// captured (the rulesets are not here to read); a repeat of a drop whose finding
    /// was already recorded is counted like the live watch counts it.
    pub fn replay_drop(&mut self, line: &DropLine, output: &mut dyn Output) -> io::Result<()> {
        self.stats.packets += 1;
        if let Some(key) = drop_key(line) {
            if let Some((_, finding)) = self.attributed.get(&key) {
                self.log.record(finding.clone());
            }
        }
        output.dropped(line)
    }

    /// A netfilter finding read back from a capture: it was made from rulesets only the
    /// capturing node had, so it is taken as recorded rather than judged again.
    pub fn replay_netfilter_finding(&mut self, finding: Finding, output: &mut dyn Output) -> io::Result<()> {
        if let Evidence::Netfilter(nf) = &finding.evidence {
            let proto = if nf.proto == "tcp" { 6 } else { 17 };
            let key: DropKey = (nf.hook, nf.src.ip(), nf.dst, proto);
            if self.attributed.len() < MAX_ATTRIBUTED {
                self.attributed.insert(key, (short_label(&finding), finding.clone()));
            }
        }
        match self.log.record(finding) {
            Some(new) => output.finding(new),
            None => Ok(()),
        }
    }
}

/// What makes two drops the same problem, as the live watch keys its attribution cache.
fn drop_key(line: &DropLine) -> Option<DropKey> {
    let drop = &line.dropped.drop;
    let pass = line.dropped.stopped_in()?;
    (line.reason == NETFILTER_DROP).then(|| (pass.hook.name(), drop.src.ip(), drop.dst, drop.l4_proto))
}

fn icmp_name(ipv6: bool, icmp_type: u8, icmp_code: u8) -> String {
    let family = if ipv6 { firewall::Family::Ipv6 } else { firewall::Family::Ipv4 };
    crate::findings::rule_attribution::answer_name(family, icmp_type, icmp_code)
}
