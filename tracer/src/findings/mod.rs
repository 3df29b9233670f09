//! Findings: problems tracer names, each with its evidence, a plain explanation and
//! the commands that fix it. Repeats of one problem are counted, not re-reported.

pub mod dns;
pub mod netfilter;
pub mod node_config;
pub mod attribution;

use std::{collections::HashMap, net::SocketAddr};

pub use crate::model::finding::{FindingKind, Unconfirmed};
use crate::{node::sysctl::SysctlValue, pipeline::queries::Sighting};

/// Unconfirmed occurrences per kind.
#[derive(Default)]
pub struct UnconfirmedLog {
    counts: std::collections::BTreeMap<FindingKind, u64>,
}

impl UnconfirmedLog {
    pub fn record(&mut self, kind: FindingKind) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Occurrences per kind, in kind order.
    pub fn counts(&self) -> Vec<(FindingKind, u64)> {
        self.counts.iter().map(|(kind, count)| (*kind, *count)).collect()
    }
}

/// The DNS query a finding is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRef {
    pub id: u16,
    pub qname: Option<String>,
    pub qtype: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: FindingKind,
    pub wall_time_ns: u64,
    /// One line that names the problem.
    pub headline: String,
    pub evidence: Evidence,
    pub explanation: String,
    pub fix: Vec<String>,
}

#[derive(Clone, Debug)]
pub enum Evidence {
    Dns(DnsEvidence),
    Netfilter(NetfilterEvidence),
    /// Read from the node rather than seen on a packet (`tracer triage`).
    Node(NodeEvidence),
}

#[derive(Clone, Debug)]
pub struct DnsEvidence {
    pub client: SocketAddr,
    /// Where the client sent its query and so the only source it accepts a reply from.
    pub expected_source: SocketAddr,
    /// Where the reply came from, when there was one.
    pub actual_source: Option<SocketAddr>,
    pub query: QueryRef,
    pub bridge: Option<String>,
    /// The bridge port the reply entered on and the one it left on, towards the client.
    pub reply_in_port: Option<String>,
    pub reply_out_port: Option<String>,
    /// Where an unanswered query was last seen.
    pub last_seen: Option<Sighting>,
    /// Node settings that bear on the finding, as read when it was made.
    pub sysctls: Vec<SysctlValue>,
}

/// A firewall rule, as the finding names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub backend: &'static str,
    pub table: String,
    pub chain: String,
    /// 1-based position in its chain (what `iptables -L --line-numbers` shows).
    pub position: u32,
    pub handle: Option<u64>,
    pub text: String,
}

/// A firewall chain, as the finding names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRef {
    pub backend: &'static str,
    pub table: String,
    pub chain: String,
}

impl RuleRef {
    pub fn of(rule: &crate::firewall::Rule) -> RuleRef {
        RuleRef {
            backend: rule.backend.name(),
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            position: rule.position,
            handle: rule.handle,
            text: rule.text.clone(),
        }
    }
}

impl ChainRef {
    pub fn of(chain: &crate::firewall::Chain) -> ChainRef {
        ChainRef { backend: chain.backend.name(), table: chain.table.clone(), chain: chain.name.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct NetfilterEvidence {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: &'static str,
    /// The hook the packet entered and never left, e.g. `FORWARD`.
    pub hook: &'static str,
    pub in_ifname: Option<String>,
    pub out_ifname: Option<String>,
    /// The rule that dropped it, when exactly one fits.
    pub rule: Option<RuleRef>,
    /// The chain whose DROP policy dropped it, when no rule did.
    pub policy: Option<ChainRef>,
    /// Every rule that could have done it, when more than one fits.
    pub candidates: Vec<RuleRef>,
    /// How the rule was attributed (or why it could not be).
    pub attribution: String,
    /// The ICMP answer in words (`host-prohibited`), for a REJECT.
    pub icmp: Option<String>,
    /// The kernel's drop reason (`NETFILTER_DROP`).
    pub drop_reason: String,
}

/// Node state a finding rests on: settings, the conntrack table and its counters, a firewall
/// rule or policy, drops the kernel made. Read from the node by `tracer triage`, in the
/// namespace `netns`.
#[derive(Clone, Debug, Default)]
pub struct NodeEvidence {
    pub netns: NetnsRef,
    /// The bridges the finding concerns.
    pub bridges: Vec<String>,
    /// The interface it concerns (rp_filter).
    pub interface: Option<String>,
    pub sysctls: Vec<SysctlValue>,
    pub conntrack: Option<ConntrackEvidence>,
    /// A rule that drops or rejects the traced port's traffic.
    pub rule: Option<RuleRef>,
    /// A chain whose DROP policy the traffic falls through to.
    pub policy: Option<ChainRef>,
    /// Traced packets the kernel dropped during the watch.
    pub drops: Option<DropEvidence>,
    /// Further facts in words (what a rule matches, how many DNAT rules exist, ...).
    pub notes: Vec<String>,
}

/// Which network namespace node evidence was read in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsRef {
    /// Its `ip netns` name, when it has one.
    pub name: Option<String>,
    pub inode: u64,
    /// The namespace tracer ran (and watched traffic) in.
    pub current: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConntrackEvidence {
    /// Entries in the namespace's table and the limit, at the end of the watch.
    pub count: Option<u64>,
    pub max: Option<u64>,
    /// Counters of `/proc/net/stat/nf_conntrack` that bear on the finding.
    pub counters: Vec<CounterEvidence>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterEvidence {
    /// Column name, e.g. `insert_failed`.
    pub name: &'static str,
    /// Summed over the CPUs, since boot (or since the namespace was created).
    pub total: u64,
    /// How much it grew during the watch, when both readings had it.
    pub growth: Option<u64>,
}

/// Traced packets the kernel dropped for one reason at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropEvidence {
    pub count: u64,
    /// The kernel's drop reason without its prefix (`NETFILTER_DROP`, `IP_RPFILTER`).
    pub reason: String,
    /// Where: `in PRE_ROUTING` (entered the hook and never left it), `after POST_ROUTING`
    /// (passed every program tracer has there), or the device.
    pub place: String,
    /// The first such packet.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: &'static str,
    pub ifname: Option<String>,
}

impl Finding {
    /// Occurrences of the same problem share this key: the same kind between the same
    /// endpoints (a client's every query uses a fresh port, so ports other than the
    /// server's would make each one a new finding).
    fn dedupe_key(&self) -> DedupeKey {
        match &self.evidence {
            Evidence::Dns(dns) => (self.kind, dns.client.ip(), dns.expected_source, dns.actual_source.map(|a| a.to_string()).unwrap_or_default()),
            Evidence::Netfilter(nf) => (self.kind, nf.src.ip(), nf.dst, nf.hook.to_string()),
            Evidence::Node(node) => (
                self.kind,
                std::net::IpAddr::from([0, 0, 0, 0]),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                format!("{} {} {}", node.netns.inode, node.interface.as_deref().unwrap_or(""), node.rule.as_ref().map(|r| r.text.as_str()).unwrap_or("")),
            ),
        }
    }
}

type DedupeKey = (FindingKind, std::net::IpAddr, SocketAddr, String);

/// Distinct findings of a run, with how often each occurred.
#[derive(Default)]
pub struct FindingLog {
    index: HashMap<DedupeKey, usize>,
    findings: Vec<(Finding, u64)>,
    /// Occurrences of findings not kept because `MAX_DISTINCT` were kept already.
    pub overflow: u64,
}

/// Bounds the log on a node where something breaks for every client at once.
const MAX_DISTINCT: usize = 10_000;

impl FindingLog {
    /// Records an occurrence; returns the finding when it is new (to be reported now).
    pub fn record(&mut self, finding: Finding) -> Option<&Finding> {
        let key = finding.dedupe_key();
        if let Some(&at) = self.index.get(&key) {
            self.findings[at].1 += 1;
            return None;
        }
        if self.findings.len() >= MAX_DISTINCT {
            self.overflow += 1;
            return None;
        }
        self.index.insert(key, self.findings.len());
        self.findings.push((finding, 1));
        self.findings.last().map(|(finding, _)| finding)
    }

    pub fn distinct(&self) -> usize {
        self.findings.len()
    }

    /// Occurrences per kind, in kind order.
    pub fn counts(&self) -> Vec<(FindingKind, u64)> {
        let mut counts: Vec<(FindingKind, u64)> = Vec::new();
        for (finding, count) in &self.findings {
            match counts.iter_mut().find(|(kind, _)| *kind == finding.kind) {
                Some((_, total)) => *total += count,
                None => counts.push((finding.kind, *count)),
            }
        }
        counts.sort();
        counts
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Finding, u64)> {
        self.findings.iter().map(|(finding, count)| (finding, *count))
    }
}
