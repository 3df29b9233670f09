//! Decides what `tracer triage` found: node settings, conntrack state and firewall rules
//! that break the traced port's traffic; traffic findings of the watch, confirmed or
//! explained by that state and merged with it when both point at the same cause; the
//! ranking by how likely each finding explains broken traffic; and the one-line verdict.
//! Deciding only: node state is read by `node::checks`, traffic comes from the
//! watch, printing is `render::triage`.

use std::{collections::HashMap, net::SocketAddr};

use tracer_common::Stage;

use super::{
    ChainRef, ConntrackEvidence, CounterEvidence, DnsEvidence, DropEvidence, Evidence, Finding, FindingKind,
    NetfilterEvidence, NetnsRef, NodeEvidence, RuleRef,
};
use crate::{
    model::packet::L4Proto,
    firewall::{
        eval::{self, Fit, Packet, Ruleset},
        Backend, Chain, Condition, Family, Hook, Rule, Snapshot, Verdict,
    },
    node::{
        checks::{ConntrackReading, ConntrackStats, NamespaceState, Netns},
        sysctl::{bridge_nf_call_sysctl, SysctlValue},
    },
};

/// Packet lines that show one example of a traffic finding, as the outputs rendered them
/// (text and JSON). Carried along with the finding; nothing here looks into them.
#[derive(Clone, Debug, Default)]
pub struct Example {
    pub lines: Vec<String>,
    pub json: Vec<serde_json::Value>,
}

/// Traced packets the kernel dropped for the same reason at the same place, between the
/// same source address and destination.
#[derive(Clone, Debug)]
pub struct DropGroup {
    pub reason: String,
    /// The hook the packets entered and never left, when they died inside one.
    pub stopped_in: Option<Hook>,
    /// The last hook they passed, when they died after leaving it.
    pub after: Option<Hook>,
    /// The first packet's addresses.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4_proto: L4Proto,
    pub ifname: Option<String>,
    /// The rule the watch attributed the drop to, when it did.
    pub rule: Option<String>,
    pub count: u64,
    pub wall_time_ns: u64,
    pub example: Example,
}

impl DropGroup {
    fn place(&self) -> String {
        match (self.stopped_in, self.after, &self.ifname) {
            (Some(hook), _, _) => format!("in {}", hook.name()),
            (None, Some(hook), _) => format!("after {}", hook.name()),
            (None, None, Some(ifname)) => format!("on {ifname}"),
            (None, None, None) => "in the kernel".to_string(),
        }
    }

    fn evidence(&self) -> DropEvidence {
        DropEvidence {
            count: self.count,
            reason: self.reason.clone(),
            place: self.place(),
            src: self.src,
            dst: self.dst,
            proto: self.l4_proto,
            ifname: self.ifname.clone(),
        }
    }
}

/// What the watch saw during the window.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// The first occurrence of every distinct finding, in order, each with its example.
    pub findings: Vec<(Finding, Example)>,
    pub drops: Vec<DropGroup>,
    /// Occurrences per finding kind, from the watch's summary.
    pub kind_counts: std::collections::BTreeMap<FindingKind, u64>,
}

/// One finding of the report, with everything merged into it.
#[derive(Clone, Debug)]
pub struct Ranked {
    /// The finding that names the problem; for a merged finding, the traffic one.
    pub finding: Finding,
    /// Further evidence merged in (the node state behind a traffic finding, timeouts it explains).
    pub more: Vec<Evidence>,
    /// Seen on traced packets during the window.
    pub traffic: bool,
    /// Read from the node's configuration or counters.
    pub config: bool,
    /// How often it occurred in the window, where that is known.
    pub occurrences: Option<u64>,
    pub example: Example,
    /// The namespace it was found in.
    pub netns: NetnsRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Worth knowing, not a cause of broken traffic on its own.
    Note,
    Finding(FindingKind),
}

/// One node check as the report lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub value: String,
    pub status: Status,
    /// Why the status, in words (empty when the value says it all).
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct NamespaceChecks {
    pub netns: NetnsRef,
    pub label: String,
    pub checks: Vec<Check>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Decision {
    /// Most likely cause of broken traffic first.
    pub findings: Vec<Ranked>,
    pub namespaces: Vec<NamespaceChecks>,
    /// One line: the top finding's headline, or that the node looks healthy.
    pub verdict: String,
}

/// A conntrack table this full is reported even before the kernel drops anything.
const TABLE_FULL_PERCENT: u64 = 90;
const TABLE_BUSY_PERCENT: u64 = 75;

/// Counters of `/proc/net/stat/nf_conntrack` that explain lost packets. A failed insert is
/// counted in `drop` as well as `insert_failed`, so the table-full finding shows both.
const TABLE_FULL_COUNTERS: [&str; 3] = ["drop", "early_drop", "insert_failed"];
const INSERT_RACE_COUNTERS: [&str; 3] = ["insert_failed", "drop", "clashres"];

/// `states[i]` was read before the window and `after[i]` is its conntrack table after it.
/// `port` is the traced port (0: all); `now_ns` stamps findings read from the node.
pub fn decide(states: &[NamespaceState], after: &[ConntrackReading], traffic: Traffic, port: u16, now_ns: u64) -> Decision {
    let mut ranked = Vec::new();
    let mut namespaces = Vec::new();
    for (at, state) in states.iter().enumerate() {
        let mut checks = Vec::new();
        let after = after.get(at);
        ranked.extend(config_findings(state, after, port, now_ns, &mut checks));
        let mut errors = state.errors.clone();
        errors.extend(state.conntrack.errors.iter().cloned());
        if let Some(after) = after {
            errors.extend(after.errors.iter().cloned());
        }
        namespaces.push(NamespaceChecks { netns: netns_ref(&state.netns), label: state.netns.label(), checks, errors });
    }
    let current = states.iter().find(|s| s.netns.current);
    merge_traffic(&mut ranked, traffic, current);
    rank(&mut ranked);
    let verdict = verdict(&ranked);
    Decision { findings: ranked, namespaces, verdict }
}

fn netns_ref(netns: &Netns) -> NetnsRef {
    NetnsRef { name: netns.name.clone(), inode: netns.inode, current: netns.current }
}

fn config_only(finding: Finding, netns: &Netns) -> Ranked {
    Ranked { finding, more: Vec::new(), traffic: false, config: true, occurrences: None, example: Example::default(), netns: netns_ref(netns) }
}

// ---------------------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------------------

fn config_findings(state: &NamespaceState, after: Option<&ConntrackReading>, port: u16, now_ns: u64, checks: &mut Vec<Check>) -> Vec<Ranked> {
    let mut found = Vec::new();
    let netns = &state.netns;
    let bridges: Vec<String> = state.bridges.iter().map(|b| b.name.clone()).collect();
    checks.push(Check {
        name: "bridges".to_string(),
        value: if state.bridges.is_empty() {
            "none".to_string()
        } else {
            state
                .bridges
                .iter()
                .map(|b| if b.ports.is_empty() { b.name.clone() } else { format!("{} ({})", b.name, b.ports.join(", ")) })
                .collect::<Vec<_>>()
                .join("; ")
        },
        status: Status::Ok,
        detail: String::new(),
    });

    if let Some(finding) = bridge_netfilter(state, &bridges, now_ns, checks) {
        found.push(config_only(finding, netns));
    }
    if let Some(finding) = forwarding(state, &bridges, now_ns, checks) {
        found.push(config_only(finding, netns));
    }
    rp_filter_check(state, checks);
    found.extend(conntrack_findings(state, after, now_ns, checks).into_iter().map(|f| config_only(f, netns)));
    found.extend(firewall_findings(state, port, now_ns, checks).into_iter().map(|f| config_only(f, netns)));
    found
}

fn sysctl_value(state: &NamespaceState, name: &str) -> SysctlValue {
    state.sysctl(name).cloned().unwrap_or(SysctlValue { name: name.to_string(), value: None })
}

fn shown(value: &SysctlValue) -> String {
    value.value.clone().unwrap_or_else(|| "(absent: br_netfilter not loaded)".to_string())
}

fn node_evidence(netns: &Netns) -> NodeEvidence {
    NodeEvidence { netns: netns_ref(netns), ..NodeEvidence::default() }
}

/// `in network namespace NAME` for another namespace, nothing for the current one.
fn where_(netns: &Netns) -> String {
    match (&netns.name, netns.current) {
        (Some(name), false) => format!(" in network namespace {name}"),
        _ => String::new(),
    }
}

/// Rules that DNAT traffic of a family: the service addresses whose replies need conntrack.
fn dnat_rules(firewall: &Snapshot, family: Family) -> usize {
    firewall
        .chains
        .iter()
        .filter(|chain| chain.family == family)
        .flat_map(|chain| &chain.rules)
        .filter(|rule| matches!(&rule.verdict, Verdict::Other(text) if text.to_ascii_lowercase().contains("dnat")))
        .count()
}

/// `bridge-nf-call-iptables` / `-ip6tables`. Off matters when the namespace NATs service
/// addresses (DNAT rules, IPVS): a backend's reply to a client on the same bridge then
/// skips reverse NAT. Without service NAT, bridged traffic works; only FORWARD rules do not
/// apply to it, which is a note.
fn bridge_netfilter(state: &NamespaceState, bridges: &[String], now_ns: u64, checks: &mut Vec<Check>) -> Option<Finding> {
    let mut off = Vec::new();
    let mut notes = Vec::new();
    for ipv6 in [false, true] {
        let name = bridge_nf_call_sysctl(ipv6);
        let value = sysctl_value(state, name);
        let family = if ipv6 { Family::Ipv6 } else { Family::Ipv4 };
        let dnat = dnat_rules(&state.firewall, family);
        // IPVS balances both families from one table; count it for both.
        let service_nat = dnat + state.ipvs_services;
        let on = value.value.as_deref() == Some("1");
        let (status, detail) = if bridges.is_empty() {
            (Status::Ok, "no bridges here".to_string())
        } else if on {
            (Status::Ok, String::new())
        } else if service_nat > 0 {
            (Status::Finding(FindingKind::ConntrackSkip), nat_words(dnat, state.ipvs_services, family))
        } else {
            (Status::Note, format!("bridged {} traffic bypasses iptables/nftables; no DNAT rules need it now", family.name()))
        };
        checks.push(Check { name: name.trim_start_matches("net.bridge.").to_string(), value: shown(&value), status, detail: detail.clone() });
        if matches!(status, Status::Finding(_)) {
            off.push(value);
            notes.push(detail);
        }
    }
    if off.is_empty() {
        return None;
    }
    let netns = &state.netns;
    let bridge_list = bridges.join(", ");
    let names: Vec<String> = off.iter().map(|v| format!("{} = {}", v.name, shown(v))).collect();
    let headline = format!(
        "Bridged traffic on {bridge_list} skips conntrack{}: {} while service addresses are DNATed",
        where_(netns),
        names.join(", ")
    );
    let explanation = format!(
        "A frame a Linux bridge forwards from one of its ports to another passes the IP netfilter hooks \
         (conntrack, NAT, the FORWARD chain) only when br_netfilter is loaded and bridge-nf-call-iptables \
         (-ip6tables for IPv6) is 1 in the bridge's network namespace. Here it is not, and the namespace \
         NATs service addresses ({}). When a client on {bridge_list} asks a service address and the backend \
         sits on the same bridge, the backend's reply is bridged straight back without reverse NAT: the \
         client sees it come from the backend's own address instead of the service's, drops it, and the \
         lookup times out.",
        notes.join("; ")
    );
    let prefix = netns.exec_prefix();
    let mut fix = vec!["modprobe br_netfilter    # where br_netfilter is a module; it is needed for the sysctls to exist".to_string()];
    for value in &off {
        fix.push(format!("{prefix}sysctl -w {}=1", value.name));
    }
    fix.push("echo br_netfilter > /etc/modules-load.d/br_netfilter.conf    # persist the module".to_string());
    let persisted: Vec<String> = off.iter().map(|v| format!("{} = 1", v.name)).collect();
    fix.push(format!("printf '%s\\n' {} > /etc/sysctl.d/99-bridge-nf-call.conf    # persist the settings{}",
        persisted.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" "),
        if netns.current { "" } else { " (for the host; a namespace's are set by whatever creates it)" }));
    let mut evidence = node_evidence(netns);
    evidence.bridges = bridges.to_vec();
    evidence.sysctls = off;
    evidence.notes = notes.iter().map(|n| format!("service NAT: {n}")).collect();
    Some(Finding { kind: FindingKind::ConntrackSkip, wall_time_ns: now_ns, headline, evidence: Evidence::Node(evidence), explanation, fix })
}

fn nat_words(dnat: usize, ipvs: usize, family: Family) -> String {
    let mut parts = Vec::new();
    if dnat > 0 {
        parts.push(format!("{dnat} {} DNAT rule{}", family.name(), if dnat == 1 { "" } else { "s" }));
    }
    if ipvs > 0 {
        parts.push(format!("{ipvs} IPVS service{}", if ipvs == 1 { "" } else { "s" }));
    }
    parts.join(" and ")
}

/// `ip_forward`. Pods send everything not on their own subnet — service addresses included —
/// to the bridge's address, their gateway; the node only routes it on with forwarding on.
fn forwarding(state: &NamespaceState, bridges: &[String], now_ns: u64, checks: &mut Vec<Check>) -> Option<Finding> {
    let v4 = sysctl_value(state, "net.ipv4.ip_forward");
    let v6 = sysctl_value(state, "net.ipv6.conf.all.forwarding");
    let off = v4.value.as_deref() != Some("1");
    let status = match (bridges.is_empty(), off) {
        (false, true) => Status::Finding(FindingKind::IpForwardOff),
        _ => Status::Ok,
    };
    checks.push(Check { name: "ip_forward".to_string(), value: v4.value.clone().unwrap_or_else(|| "(absent)".to_string()), status, detail: String::new() });
    let v6_off = v6.value.as_deref() == Some("0");
    checks.push(Check {
        name: "ipv6 forwarding".to_string(),
        value: v6.value.clone().unwrap_or_else(|| "(absent)".to_string()),
        status: if v6_off && !bridges.is_empty() { Status::Note } else { Status::Ok },
        detail: if v6_off && !bridges.is_empty() { "IPv6 pod traffic is not routed (fine on an IPv4-only node)".to_string() } else { String::new() },
    });
    if status == Status::Ok {
        return None;
    }
    let netns = &state.netns;
    let bridge_list = bridges.join(", ");
    let mut evidence = node_evidence(netns);
    evidence.bridges = bridges.to_vec();
    evidence.sysctls = vec![v4.clone()];
    Some(Finding {
        kind: FindingKind::IpForwardOff,
        wall_time_ns: now_ns,
        headline: format!("IP forwarding is off{}: net.ipv4.ip_forward = {} on a node with bridges ({bridge_list})", where_(netns), shown(&v4)),
        evidence: Evidence::Node(evidence),
        explanation: format!(
            "Pods on {bridge_list} send traffic for other networks to the bridge's address, their gateway, and the \
             node routes it on only when net.ipv4.ip_forward is 1. With 0 such packets stop at the node (tracer \
             sees them reach the host and go no further): traffic to other nodes and the outside fails, and so \
             does a service address DNATed to a backend that is not on the same bridge."
        ),
        fix: vec![
            format!("{}sysctl -w net.ipv4.ip_forward=1", netns.exec_prefix()),
            "echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-ip-forward.conf    # persist".to_string(),
        ],
    })
}

/// rp_filter: strict mode is a note here; it becomes a finding when the kernel is seen
/// dropping traced packets for it (`IP_RPFILTER`).
fn rp_filter_check(state: &NamespaceState, checks: &mut Vec<Check>) {
    let all = rp_all(state);
    let mut strict = Vec::new();
    let mut loose = Vec::new();
    let mut off = Vec::new();
    for iface in &state.rp_filter {
        match effective_rp_filter(all, iface.value) {
            1 => strict.push(iface.interface.clone()),
            2 => loose.push(iface.interface.clone()),
            _ => off.push(iface.interface.clone()),
        }
    }
    let mut parts = Vec::new();
    for (mode, list) in [("0", &off), ("2 (loose)", &loose), ("1 (strict)", &strict)] {
        if !list.is_empty() {
            parts.push(format!("{mode} on {}", list.join(", ")));
        }
    }
    checks.push(Check {
        name: "rp_filter".to_string(),
        value: format!("{} (all = {})", if parts.is_empty() { "no routed interfaces".to_string() } else { parts.join("; ") }, all),
        status: if strict.is_empty() { Status::Ok } else { Status::Note },
        detail: if strict.is_empty() {
            String::new()
        } else {
            "strict mode drops packets whose source is routed back through another interface (asymmetric routing)".to_string()
        },
    });
}

fn rp_all(state: &NamespaceState) -> u8 {
    sysctl_value(state, "net.ipv4.conf.all.rp_filter").value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The kernel uses the larger of `all` and the interface's own value.
fn effective_rp_filter(all: u8, iface: Option<u8>) -> u8 {
    all.max(iface.unwrap_or(0))
}

/// A counter as the report shows it: its latest total and, with both readings, its growth.
fn counter(before: Option<&ConntrackStats>, after: Option<&ConntrackStats>, name: &'static str) -> Option<CounterEvidence> {
    let latest = after.or(before)?;
    let total = latest.total(name)?;
    let growth = match (before, after) {
        (Some(b), Some(a)) => b.growth(a, name),
        _ => None,
    };
    Some(CounterEvidence { name: name.to_string(), total, growth })
}

fn growth_of(counters: &[CounterEvidence], name: &str) -> u64 {
    counters.iter().find(|c| c.name == name).and_then(|c| c.growth).unwrap_or(0)
}

/// New flows the table refused during the window, and entries it evicted to make room.
/// `drop` also counts every failed insert; only the rest is the table refusing flows.
fn table_pressure(counters: &[CounterEvidence]) -> (u64, u64) {
    let refused = growth_of(counters, "drop").saturating_sub(growth_of(counters, "insert_failed"));
    (refused, growth_of(counters, "early_drop"))
}

/// Conntrack table usage against `nf_conntrack_max`, and the counters that say the kernel
/// lost packets for conntrack (table full, insert races), compared before and after the window.
fn conntrack_findings(state: &NamespaceState, after: Option<&ConntrackReading>, now_ns: u64, checks: &mut Vec<Check>) -> Vec<Finding> {
    let before = &state.conntrack;
    let count = after.and_then(|a| a.count).or(before.count);
    let max = after.and_then(|a| a.max).or(before.max);
    let stats_before = before.stats.as_ref();
    let stats_after = after.and_then(|a| a.stats.as_ref());
    let percent = match (count, max) {
        (Some(count), Some(max)) if max > 0 => Some(count.saturating_mul(100) / max),
        _ => None,
    };
    let names = ["insert_failed", "drop", "early_drop", "clashres"];
    let counters: Vec<CounterEvidence> = names.iter().filter_map(|n| counter(stats_before, stats_after, n)).collect();
    let (refused, evicted) = table_pressure(&counters);
    let race_growth = growth_of(&counters, "insert_failed");
    let full = percent.is_some_and(|p| p >= TABLE_FULL_PERCENT) || refused + evicted > 0;

    let usage_status = match percent {
        Some(p) if p >= TABLE_FULL_PERCENT => Status::Finding(FindingKind::ConntrackTableFull),
        Some(p) if p >= TABLE_BUSY_PERCENT => Status::Note,
        _ => Status::Ok,
    };
    checks.push(Check {
        name: "conntrack table".to_string(),
        value: match (count, max, percent) {
            (Some(c), Some(m), Some(p)) => format!("{c} / {m} entries ({p}%)"),
            (Some(c), _, _) => format!("{c} entries"),
            _ => "not in use".to_string(),
        },
        status: usage_status,
        detail: String::new(),
    });
    if !counters.is_empty() {
        let value = counters
            .iter()
            .map(|c| match c.growth {
                Some(g) => format!("{} {} (+{g})", c.name, c.total),
                None => format!("{} {}", c.name, c.total),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let lost_ever = counters.iter().any(|c| c.name != "clashres" && c.total > 0);
        let status = if refused + evicted > 0 {
            Status::Finding(FindingKind::ConntrackTableFull)
        } else if race_growth > 0 {
            Status::Finding(FindingKind::ConntrackInsertRace)
        } else if lost_ever {
            Status::Note
        } else {
            Status::Ok
        };
        checks.push(Check {
            name: "conntrack stats".to_string(),
            value,
            status,
            detail: match status {
                Status::Note => "totals since boot; none grew during the window".to_string(),
                _ => "+n: grown during the window".to_string(),
            },
        });
    }

    let netns = &state.netns;
    let mut found = Vec::new();
    if full {
        let mut evidence = node_evidence(netns);
        evidence.conntrack = Some(ConntrackEvidence {
            count,
            max,
            counters: counters.iter().filter(|c| TABLE_FULL_COUNTERS.contains(&c.name.as_str())).cloned().collect(),
        });
        found.push(table_full(evidence, netns, count, max, percent, (refused, evicted), now_ns));
    }
    if race_growth > 0 {
        let mut evidence = node_evidence(netns);
        evidence.conntrack = Some(ConntrackEvidence {
            count,
            max,
            counters: counters.iter().filter(|c| INSERT_RACE_COUNTERS.contains(&c.name.as_str())).cloned().collect(),
        });
        found.push(insert_race(evidence, netns, race_growth, now_ns));
    }
    found
}

fn table_full(evidence: NodeEvidence, netns: &Netns, count: Option<u64>, max: Option<u64>, percent: Option<u64>, (refused, evicted): (u64, u64), now_ns: u64) -> Finding {
    let usage = match (count, max, percent) {
        (Some(c), Some(m), Some(p)) => format!("{c} of {m} entries ({p}%)"),
        _ => "usage unknown".to_string(),
    };
    let headline = match (refused, evicted) {
        (0, 0) => format!("Conntrack table nearly full{}: {usage}", where_(netns)),
        (0, evicted) => format!("Conntrack table full{}: {usage}; the kernel evicted {evicted} unanswered flows to make room during the window", where_(netns)),
        (refused, _) => format!("Conntrack table full{}: {usage}; the kernel refused {refused} new flows during the window", where_(netns)),
    };
    let bigger = max.map(|m| (m * 2).to_string()).unwrap_or_else(|| "<twice the current value>".to_string());
    Finding {
        kind: FindingKind::ConntrackTableFull,
        wall_time_ns: now_ns,
        headline,
        evidence: Evidence::Node(evidence),
        explanation: "Every new flow the node forwards, NATs or filters statefully needs a conntrack entry. When the \
             table holds nf_conntrack_max entries the kernel first evicts an entry that has not seen replies yet \
             (early_drop); when it finds none it drops the packet that would start the new flow (drop; the kernel \
             logs \"nf_conntrack: table full, dropping packet\"). DNS suffers first: every query from a new source \
             port is a new flow, so lookups time out while established connections keep working."
            .to_string(),
        fix: vec![
            format!("{}conntrack -C; sysctl net.netfilter.nf_conntrack_max    # entries now, and the limit", netns.exec_prefix()),
            format!("{}conntrack -L 2>/dev/null | awk '{{print $1}}' | sort | uniq -c | sort -rn    # which protocols hold the entries", netns.exec_prefix()),
            format!("sysctl -w net.netfilter.nf_conntrack_max={bigger}    # in the host's initial namespace: the limit is global (kube-proxy: --conntrack-max-per-core)"),
            format!("echo 'net.netfilter.nf_conntrack_max = {bigger}' > /etc/sysctl.d/99-conntrack.conf    # persist"),
        ],
    }
}

fn insert_race(evidence: NodeEvidence, netns: &Netns, failed: u64, now_ns: u64) -> Finding {
    Finding {
        kind: FindingKind::ConntrackInsertRace,
        wall_time_ns: now_ns,
        headline: format!("Conntrack insert races lose packets{}: insert_failed grew by {failed} during the window", where_(netns)),
        evidence: Evidence::Node(evidence),
        explanation: "When two packets of the same new flow are processed on different CPUs at once — typically the A \
             and AAAA queries glibc sends together from one socket — both create a conntrack entry, and the one \
             confirmed second clashes with the first. Unless the kernel can resolve the clash (clashres), that \
             packet is dropped (insert_failed) and the client waits for an answer that never comes until its \
             timeout: the classic 5-second DNS delays."
            .to_string(),
        fix: vec![
            format!("{}conntrack -S    # insert_failed and clash_resolve per CPU", netns.exec_prefix()),
            "options single-request-reopen    # in the clients' /etc/resolv.conf (Kubernetes: dnsConfig.options): A and AAAA from different sockets".to_string(),
            "run a node-local DNS cache (NodeLocal DNSCache) or use TCP for DNS (options use-vc), so pod DNS is not racing through NAT".to_string(),
            "a newer kernel resolves most UDP clashes instead of dropping the packet (watch clashres grow instead)".to_string(),
        ],
    }
}

// ---------------------------------------------------------------------------------------
// Firewall rules
// ---------------------------------------------------------------------------------------

/// A packet of the traced port, with everything else about it unknown.
#[derive(Clone, Copy, Debug)]
struct Probe {
    family: Family,
    proto: u8,
    /// None: every port (`--port 0`).
    port: Option<u16>,
    /// true: to the port (a query), false: from it (a reply).
    to_port: bool,
}

impl Probe {
    fn describe(&self) -> String {
        let proto = if self.proto == 6 { "tcp" } else { "udp" };
        match self.port {
            Some(port) if self.to_port => format!("{} {proto} to port {port}", self.family.name()),
            Some(port) => format!("{} {proto} from port {port}", self.family.name()),
            None => format!("{} {proto}", self.family.name()),
        }
    }

    /// The probe as the firewall evaluator takes it: addresses and interfaces unknown.
    fn packet(&self) -> Packet<'static> {
        Packet {
            family: self.family,
            proto: self.proto,
            src: None,
            dst: None,
            sport: self.port.filter(|_| !self.to_port),
            dport: self.port.filter(|_| self.to_port),
            in_iface: None,
            out_iface: None,
        }
    }
}

/// Where a rule or policy that stops the probe sits.
#[derive(Clone, Debug)]
struct Hit {
    chain: usize,
    /// Index of the rule in its chain; None for the chain's policy.
    rule: Option<usize>,
    hook: Hook,
    /// Rules before it may accept some of this traffic.
    after_accept: bool,
    probe: Probe,
}

/// Whether a rule names the probe's port: a port match that holds.
fn names_port(rule: &Rule, packet: &Packet) -> bool {
    rule.matches.tests.iter().any(|test| {
        !test.negated
            && matches!(test.condition, Condition::Dport(_) | Condition::Sport(_))
            && eval::holds(test, packet) == Some(true)
    })
}

/// Rules in FORWARD and INPUT (and the chains they jump to) that drop or reject the traced
/// port's traffic, and DROP policies it falls through to, on every backend.
fn blocking_hits(snapshot: &Snapshot, port: u16) -> Vec<Hit> {
    let ruleset = Ruleset::new(snapshot);
    let port = (port != 0).then_some(port);
    let mut hits = Vec::new();
    for hook in [Hook::Forward, Hook::LocalIn] {
        for family in [Family::Ipv4, Family::Ipv6] {
            for proto in [17u8, 6] {
                for to_port in [true, false] {
                    if port.is_none() && !to_port {
                        continue;
                    }
                    let probe = Probe { family, proto, port, to_port };
                    let packet = probe.packet();
                    for walk in ruleset.walk(hook, &packet) {
                        for met in &walk.met {
                            let rule = ruleset.rule(met);
                            if !matches!(rule.verdict, Verdict::Drop | Verdict::Reject { .. }) {
                                continue;
                            }
                            // A rule aimed at the port is reported even behind accepts that may
                            // let some of the traffic through; a catch-all only when nothing
                            // before it accepts, as that is how a default-deny chain with allow
                            // rules looks.
                            let certain = met.fit == Fit::Yes;
                            if names_port(rule, &packet) || (certain && !met.after_accept) {
                                hits.push(Hit { chain: met.chain, rule: Some(met.rule), hook, after_accept: met.after_accept, probe });
                            }
                        }
                        let chain = ruleset.chain(walk.base);
                        if !walk.decided && chain.policy == Some(Verdict::Drop) && !walk.accept_possible {
                            hits.push(Hit { chain: walk.base, rule: None, hook, after_accept: false, probe });
                        }
                    }
                }
            }
        }
    }
    hits
}

/// The same rule or policy, however many probes reached it.
fn hit_key(hit: &Hit) -> (usize, Option<usize>) {
    (hit.chain, hit.rule)
}


fn policy_label(chain: &Chain) -> String {
    format!("{} {}/{}", chain.backend.name(), chain.table, chain.name)
}

fn firewall_findings(state: &NamespaceState, port: u16, now_ns: u64, checks: &mut Vec<Check>) -> Vec<Finding> {
    let snapshot = &state.firewall;
    let hits = blocking_hits(snapshot, port);
    let mut order: Vec<(usize, Option<usize>)> = Vec::new();
    let mut grouped: HashMap<(usize, Option<usize>), Vec<&Hit>> = HashMap::new();
    for hit in &hits {
        let key = hit_key(hit);
        let entry = grouped.entry(key).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push(hit);
    }
    let port_words = if port == 0 { "the traced traffic".to_string() } else { format!("port {port}") };
    let mut found = Vec::new();
    for key in order {
        let group = &grouped[&key];
        let chain = &snapshot.chains[key.0];
        let hooks: Vec<&str> = dedup(group.iter().map(|h| h.hook.name()));
        let probes: Vec<String> = dedup(group.iter().map(|h| h.probe.describe()));
        let after_accept = group.iter().all(|h| h.after_accept);
        found.push(match key.1 {
            Some(position) => rule_finding(&state.netns, &chain.rules[position], &hooks, &probes, after_accept, &port_words, now_ns),
            None => policy_finding(&state.netns, chain, &hooks, &probes, &port_words, port, now_ns),
        });
    }
    let backends = dedup(snapshot.chains.iter().map(|c| c.backend.name()));
    let rules: usize = snapshot.chains.iter().map(|c| c.rules.len()).sum();
    checks.push(Check {
        name: "firewall".to_string(),
        value: if backends.is_empty() {
            "no rules".to_string()
        } else {
            format!("{rules} rules in {} chains ({})", snapshot.chains.len(), backends.join(", "))
        },
        status: match found.first() {
            Some(f) => Status::Finding(f.kind),
            None => Status::Ok,
        },
        detail: match found.len() {
            0 => format!("no REJECT/DROP rule or DROP policy in FORWARD/INPUT stops {port_words}"),
            1 => format!("a rule or policy in FORWARD/INPUT stops {port_words}"),
            n => format!("{n} rules or policies in FORWARD/INPUT stop {port_words}"),
        },
    });
    found
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}


fn rule_finding(netns: &Netns, rule: &Rule, hooks: &[&str], probes: &[String], after_accept: bool, port_words: &str, now_ns: u64) -> Finding {
    let rejects = matches!(rule.verdict, Verdict::Reject { .. });
    let (kind, action) = if rejects { (FindingKind::NetfilterReject, "REJECT") } else { (FindingKind::NetfilterDrop, "DROP") };
    let reference = RuleRef::of(rule);
    let headline = format!(
        "{action} rule for {port_words} in {}{}: {} {}/{} #{} ({})",
        hooks.join("/"),
        where_(netns),
        rule.backend.name(),
        rule.table,
        rule.chain,
        rule.position,
        rule.text
    );
    let answer = if rejects {
        "The node answers each packet it rejects with an ICMP error (or a TCP reset), which clients report at once (dig: \"host unreachable\", \"connection refused\")."
    } else {
        "Dropped packets get no answer: clients wait and time out."
    };
    let shadow = if after_accept {
        " Rules before it may accept some of this traffic (they match on addresses, interfaces or conntrack state tracer cannot know in advance); what they do not accept reaches this rule."
    } else {
        ""
    };
    let explanation = format!(
        "This rule sits in a chain that {port_words} traffic passes (hook {}) and matches {}.{shadow} {answer} It may \
         be intended (a policy that keeps some clients away); if this traffic should pass, remove the rule or accept \
         the traffic before it.",
        hooks.join(", "),
        probes.join(", "),
    );
    let prefix = netns.exec_prefix();
    let fix = vec![
        format!("{prefix}{}    # look at the rule and its neighbours first", rule.show_command()),
        format!("{prefix}{}    # remove the rule", rule.delete_command()),
    ];
    let mut evidence = node_evidence(netns);
    evidence.rule = Some(reference);
    evidence.notes = vec![format!("matches {}", probes.join(", ")), format!("reached from hook {}", hooks.join(", "))];
    Finding { kind, wall_time_ns: now_ns, headline, evidence: Evidence::Node(evidence), explanation, fix }
}

fn policy_finding(netns: &Netns, chain: &Chain, hooks: &[&str], probes: &[String], port_words: &str, port: u16, now_ns: u64) -> Finding {
    let label = policy_label(chain);
    let headline = format!("DROP policy stops {port_words} in {}{}: {label} accepts none of it", hooks.join("/"), where_(netns));
    let explanation = format!(
        "The chain {label} (hook {}) drops what no rule decided, and none of its rules (nor the chains they jump \
         to) can accept {}. Every such packet is dropped silently: clients time out.",
        hooks.join(", "),
        probes.join(", ")
    );
    let prefix = netns.exec_prefix();
    let port_match = if port == 0 { String::new() } else { format!(" --dport {port}") };
    let fix = match chain.backend {
        Backend::Nftables => vec![format!(
            "{prefix}nft add rule {} {} {} dport {port} accept    # accept this traffic explicitly",
            chain.table,
            chain.name,
            "udp"
        ), format!("{prefix}nft add rule {} {} tcp dport {port} accept", chain.table, chain.name)],
        backend => {
            let cmd = backend.iptables_command(chain.family);
            vec![
                format!("{prefix}{cmd} -t {} -A {} -p udp{port_match} -j ACCEPT    # accept this traffic explicitly", chain.table, chain.name),
                format!("{prefix}{cmd} -t {} -A {} -p tcp{port_match} -j ACCEPT", chain.table, chain.name),
            ]
        }
    };
    let mut evidence = node_evidence(netns);
    evidence.set_policy(&ChainRef::of(chain));
    evidence.notes = vec![format!("no rule accepts {}", probes.join(", "))];
    Finding { kind: FindingKind::NetfilterDrop, wall_time_ns: now_ns, headline, evidence: Evidence::Node(evidence), explanation, fix }
}

// ---------------------------------------------------------------------------------------
// Traffic, merged with node state
// ---------------------------------------------------------------------------------------

fn node_of(ranked: &Ranked) -> Option<&NodeEvidence> {
    match &ranked.finding.evidence {
        Evidence::Node(node) => Some(node),
        _ => None,
    }
}

/// The config-only finding of the current namespace that `pick` selects, taken out of `ranked`.
fn take_config(ranked: &mut Vec<Ranked>, pick: impl Fn(&Ranked, &NodeEvidence) -> bool) -> Option<Ranked> {
    let at = ranked.iter().position(|r| !r.traffic && r.netns.current && node_of(r).is_some_and(|node| pick(r, node)))?;
    Some(ranked.remove(at))
}

fn same_rule(a: &RuleRef, b: &RuleRef) -> bool {
    a.backend == b.backend && a.table == b.table && a.chain == b.chain && a.text == b.text && (a.handle.is_none() || b.handle.is_none() || a.handle == b.handle)
}

fn kind_count(traffic: &Traffic, kind: FindingKind) -> Option<u64> {
    let distinct = traffic.findings.iter().filter(|(f, _)| f.kind == kind).count();
    if distinct != 1 {
        return None;
    }
    traffic.kind_counts.get(&kind).copied()
}

/// A drop the watch could not pin on a rule or policy: nothing in the rulesets did it.
fn unattributed(nf: &NetfilterEvidence) -> bool {
    nf.culprit.position.is_none() && nf.culprit.policy.is_none() && nf.candidates.is_empty()
}

fn netfilter_occurrences(drops: &[DropGroup], nf: &NetfilterEvidence) -> Option<u64> {
    let count: u64 = drops
        .iter()
        .filter(|g| g.stopped_in == Some(nf.hook) && g.src.ip() == nf.src.ip() && g.dst == nf.dst)
        .map(|g| g.count)
        .sum();
    (count > 0).then_some(count)
}

const NETFILTER_DROP: &str = "NETFILTER_DROP";
const RPFILTER_DROP: &str = "IP_RPFILTER";

/// Conntrack allocates entries in these hooks: a drop there that no rule did is the table refusing a flow.
fn conntrack_entry_hook(hook: Hook) -> bool {
    matches!(hook, Hook::PreRouting | Hook::LocalOut)
}

fn merge_traffic(ranked: &mut Vec<Ranked>, traffic: Traffic, current: Option<&NamespaceState>) {
    let current_netns = current.map(|s| netns_ref(&s.netns)).unwrap_or_default();
    let traffic_only = |finding: Finding, example: Example, occurrences: Option<u64>| Ranked {
        finding,
        more: Vec::new(),
        traffic: true,
        config: false,
        occurrences,
        example,
        netns: current_netns.clone(),
    };
    let mut timeouts = Vec::new();
    for (finding, example) in &traffic.findings {
        let mut item = match (&finding.kind, &finding.evidence) {
            (FindingKind::DnsTimeout, _) => {
                timeouts.push((finding.clone(), example.clone()));
                continue;
            }
            (FindingKind::ConntrackSkip, Evidence::Dns(dns)) => {
                let mut item = traffic_only(finding.clone(), example.clone(), kind_count(&traffic, finding.kind));
                let bridge = dns.bridge.clone();
                if let Some(config) = take_config(ranked, |r, node| {
                    r.finding.kind == FindingKind::ConntrackSkip && bridge.as_ref().is_none_or(|b| node.bridges.contains(b))
                }) {
                    item.config = true;
                    // The node state names every family whose setting is off; the traffic only
                    // the one it saw a reply of.
                    item.finding.fix = config.finding.fix;
                    item.more.push(config.finding.evidence);
                }
                item
            }
            (FindingKind::NetfilterReject | FindingKind::NetfilterDrop, Evidence::Netfilter(nf)) => {
                let occurrences = netfilter_occurrences(&traffic.drops, nf);
                if unattributed(nf) && conntrack_entry_hook(nf.hook) {
                    // No rule did it where conntrack allocates entries: the table may have refused the flow.
                    let mut item = traffic_only(finding.clone(), example.clone(), occurrences);
                    if absorb_into_table_full(ranked, &mut item, &traffic.drops) {
                        continue;
                    }
                    item
                } else {
                    let mut item = traffic_only(finding.clone(), example.clone(), occurrences);
                    let named = nf.culprit.rule();
                    let rules: Vec<&RuleRef> = named.iter().chain(&nf.candidates).collect();
                    let policy = nf.culprit.policy_chain();
                    if let Some(config) = take_config(ranked, |_, node| {
                        node.rule.as_ref().is_some_and(|r| rules.iter().any(|t| same_rule(t, r)))
                            || (policy.is_some() && node.policy_chain() == policy)
                    }) {
                        item.config = true;
                        item.more.push(config.finding.evidence);
                    }
                    item
                }
            }
            _ => traffic_only(finding.clone(), example.clone(), kind_count(&traffic, finding.kind)),
        };
        item.netns = current_netns.clone();
        ranked.push(item);
    }

    // Drops the watch makes no finding of, explained by conntrack counters or rp_filter.
    for group in &traffic.drops {
        if group.reason == NETFILTER_DROP && group.stopped_in.is_none() {
            // Passed every program tracer has in the hook and still died in netfilter: after
            // them only conntrack's confirmation runs, which fails on an insert clash.
            if let Some(race) = ranked.iter_mut().find(|r| r.netns.current && r.finding.kind == FindingKind::ConntrackInsertRace) {
                add_drops(race, group);
            }
        } else if group.reason == RPFILTER_DROP {
            rp_filter_drop(ranked, group, current, &current_netns);
        }
    }

    for (timeout, example) in timeouts {
        let Evidence::Dns(dns) = &timeout.evidence else { continue };
        if let Some(cause) = ranked.iter_mut().find(|r| r.traffic && explains_timeout(r, dns)) {
            cause.more.push(timeout.evidence.clone());
            continue;
        }
        let mut item = traffic_only(timeout.clone(), example, kind_count(&traffic, FindingKind::DnsTimeout));
        // A query that reached the host and went no further is what ip_forward=0 does.
        let stopped_at_host = dns.last_seen.as_ref().is_some_and(|s| matches!(s.stage, Stage::ToHost | Stage::BridgeIn));
        if stopped_at_host {
            if let Some(mut config) = take_config(ranked, |r, _| r.finding.kind == FindingKind::IpForwardOff) {
                config.traffic = true;
                config.more.push(timeout.evidence.clone());
                config.example = item.example;
                config.occurrences = item.occurrences;
                ranked.push(config);
                continue;
            }
        }
        item.netns = current_netns.clone();
        ranked.push(item);
    }
}

fn add_drops(item: &mut Ranked, group: &DropGroup) {
    item.traffic = true;
    if item.example.lines.is_empty() {
        item.example = group.example.clone();
    }
    item.occurrences = Some(item.occurrences.unwrap_or(0) + group.count);
    let drops = group.evidence();
    match &mut item.finding.evidence {
        Evidence::Node(node) if node.drops.is_none() => node.drops = Some(drops),
        _ => item.more.push(Evidence::Node(NodeEvidence { netns: item.netns.clone(), drops: Some(drops), ..NodeEvidence::default() })),
    }
}

/// An unattributed drop where conntrack allocates entries, while the table refused or evicted
/// flows: the table's finding takes it over.
fn absorb_into_table_full(ranked: &mut [Ranked], item: &mut Ranked, drops: &[DropGroup]) -> bool {
    let Evidence::Netfilter(nf) = &item.finding.evidence else { return false };
    let Some(full) = ranked.iter_mut().find(|r| {
        r.netns.current
            && r.finding.kind == FindingKind::ConntrackTableFull
            && node_of(r).and_then(|n| n.conntrack.as_ref()).is_some_and(|c| table_pressure(&c.counters).0 > 0)
    }) else {
        return false;
    };
    let matching: Vec<&DropGroup> = drops
        .iter()
        .filter(|g| g.reason == NETFILTER_DROP && g.stopped_in == Some(nf.hook) && g.src.ip() == nf.src.ip() && g.dst == nf.dst)
        .collect();
    if matching.is_empty() {
        full.traffic = true;
        full.example = std::mem::take(&mut item.example);
        full.more.push(item.finding.evidence.clone());
    }
    for group in matching {
        add_drops(full, group);
    }
    true
}

fn rp_filter_drop(ranked: &mut Vec<Ranked>, group: &DropGroup, current: Option<&NamespaceState>, netns: &NetnsRef) {
    let iface = group.ifname.clone();
    if let Some(existing) = ranked.iter_mut().find(|r| r.finding.kind == FindingKind::RpFilterDrop && node_of(r).is_some_and(|n| n.interface == iface)) {
        existing.occurrences = Some(existing.occurrences.unwrap_or(0) + group.count);
        return;
    }
    let all = current.map(rp_all).unwrap_or(0);
    let own = current.and_then(|s| s.rp_filter.iter().find(|r| Some(&r.interface) == iface.as_ref())).and_then(|r| r.value);
    let mut sysctls = vec![SysctlValue { name: "net.ipv4.conf.all.rp_filter".to_string(), value: Some(all.to_string()) }];
    if let Some(name) = &iface {
        sysctls.push(SysctlValue { name: format!("net.ipv4.conf.{name}.rp_filter"), value: own.map(|v| v.to_string()) });
    }
    let name = iface.clone().unwrap_or_else(|| "the receiving interface".to_string());
    let effective = effective_rp_filter(all, own);
    let evidence = NodeEvidence { netns: netns.clone(), interface: iface.clone(), sysctls, drops: Some(group.evidence()), ..NodeEvidence::default() };
    let finding = Finding {
        kind: FindingKind::RpFilterDrop,
        wall_time_ns: group.wall_time_ns,
        headline: format!(
            "Reverse-path filter drops traffic arriving on {name}: {} {} → {} ({} packets, rp_filter {effective})",
            group.l4_proto,
            group.src,
            group.dst,
            group.count
        ),
        evidence: Evidence::Node(evidence),
        explanation: "The kernel dropped these packets as IP_RPFILTER: with reverse-path filtering on, a packet is \
             dropped when the route back to its source does not leave through the interface it arrived on (strict, 1) \
             or through no interface at all (loose, 2). The mode in force is the larger of \
             net.ipv4.conf.all.rp_filter and the interface's own value. Asymmetric routing (policy routing, several \
             uplinks, a pod subnet routed elsewhere) triggers it."
            .to_string(),
        fix: vec![
            format!("ip route get {} from {} iif {name}    # where the route back to the source leads", group.src.ip(), group.dst.ip()),
            format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2    # loose mode: the larger value wins, so lower both"),
            format!("printf '%s\\n' 'net.ipv4.conf.all.rp_filter = 2' 'net.ipv4.conf.{name}.rp_filter = 2' > /etc/sysctl.d/99-rp-filter.conf    # persist"),
        ],
    };
    ranked.push(Ranked {
        finding,
        more: Vec::new(),
        traffic: true,
        config: effective != 0,
        occurrences: Some(group.count),
        example: group.example.clone(),
        netns: netns.clone(),
    });
}

/// A traffic finding about drops of the client's packets explains its unanswered queries (a
/// rejected query looks unanswered too: the ICMP error goes to the client, not to a reply).
fn explains_timeout(cause: &Ranked, timeout: &DnsEvidence) -> bool {
    let client = timeout.client.ip();
    let src_of = |evidence: &Evidence| match evidence {
        Evidence::Netfilter(nf) => Some(nf.src.ip()),
        Evidence::Node(node) => node.drops.as_ref().map(|d| d.src.ip()),
        Evidence::Dns(_) => None,
    };
    matches!(
        cause.finding.kind,
        FindingKind::NetfilterReject
            | FindingKind::NetfilterDrop
            | FindingKind::ConntrackTableFull
            | FindingKind::ConntrackInsertRace
            | FindingKind::RpFilterDrop
    ) && std::iter::once(&cause.finding.evidence).chain(&cause.more).any(|e| src_of(e) == Some(client))
}

// ---------------------------------------------------------------------------------------
// Ranking and verdict
// ---------------------------------------------------------------------------------------

/// Seen on packets and backed by node state first, then seen on packets, then node state of
/// the namespace tracer watched, then of other namespaces.
fn tier(ranked: &Ranked) -> u8 {
    match (ranked.traffic, ranked.config, ranked.netns.current) {
        (true, true, _) => 0,
        (true, false, _) => 1,
        (false, _, true) => 2,
        (false, _, false) => 3,
    }
}

/// Within a tier: causes that break every such flow before partial or symptomatic ones.
fn kind_weight(kind: FindingKind) -> u8 {
    match kind {
        FindingKind::ConntrackSkip => 0,
        FindingKind::NetfilterReject => 1,
        FindingKind::NetfilterDrop => 2,
        FindingKind::ConntrackTableFull => 3,
        FindingKind::ConntrackInsertRace => 4,
        FindingKind::RpFilterDrop => 5,
        FindingKind::IpForwardOff => 6,
        FindingKind::UnexpectedReplySource => 7,
        FindingKind::DnsTimeout => 8,
    }
}

fn rank(ranked: &mut [Ranked]) {
    // Stable: equal keys keep the order they were found in.
    ranked.sort_by_key(|r| (tier(r), kind_weight(r.finding.kind), std::cmp::Reverse(r.occurrences.unwrap_or(0))));
}

fn verdict(ranked: &[Ranked]) -> String {
    match ranked {
        [] => "healthy: no findings".to_string(),
        [only] => only.finding.headline.clone(),
        [top, rest @ ..] => format!("{} (+{} more finding{})", top.finding.headline, rest.len(), if rest.len() == 1 { "" } else { "s" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Culprit;
    use crate::{
        firewall::{parse_iptables_save, Backend},
        node::checks::{Bridge, RpFilter},
    };

    const NOW: u64 = 1_795_441_501_000_000_000;

    fn netns(current: bool, name: Option<&str>) -> Netns {
        Netns::recorded(name, if current { 4026532595 } else { 4026532999 }, current)
    }

    fn sysctl(name: &str, value: &str) -> SysctlValue {
        SysctlValue { name: name.to_string(), value: Some(value.to_string()) }
    }

    /// The lab's node namespace: cni0 with two pods, the ClusterIP DNAT, forwarding on.
    fn lab_node(bridge_nf: &str, firewall: &str) -> NamespaceState {
        let mut chains = parse_iptables_save(firewall, Backend::IptablesNft, Family::Ipv4);
        chains.extend(parse_iptables_save(
            "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d fd00:10:96::a/128 -p udp -m udp --dport 53 -j DNAT --to-destination [fd00:10:244::7]:53\nCOMMIT\n",
            Backend::IptablesNft,
            Family::Ipv6,
        ));
        NamespaceState {
            netns: netns(true, Some("trlab1-node")),
            bridges: vec![Bridge { name: "cni0".into(), ports: vec!["veth-client".into(), "veth-server".into()] }],
            sysctls: vec![
                sysctl("net.bridge.bridge-nf-call-iptables", bridge_nf),
                sysctl("net.bridge.bridge-nf-call-ip6tables", bridge_nf),
                sysctl("net.ipv4.ip_forward", "1"),
                sysctl("net.ipv6.conf.all.forwarding", "1"),
                sysctl("net.ipv4.conf.all.rp_filter", "0"),
                sysctl("net.ipv4.conf.default.rp_filter", "0"),
            ],
            rp_filter: vec![RpFilter { interface: "cni0".into(), is_bridge: true, value: Some(0) }],
            conntrack: ConntrackReading { count: Some(3), max: Some(262_144), stats: None, errors: vec![] },
            ipvs_services: 0,
            firewall: Snapshot { chains, errors: vec![] },
            errors: vec![],
        }
    }

    const LAB_NAT: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
        [2:120] -A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.0.7:53\nCOMMIT\n";

    fn decide_one(state: NamespaceState, traffic: Traffic) -> Decision {
        let after = vec![state.conntrack.clone()];
        decide(&[state], &after, traffic, 53, NOW)
    }

    #[test]
    fn healthy_node_has_no_findings() {
        let decision = decide_one(lab_node("1", LAB_NAT), Traffic::default());
        assert!(decision.findings.is_empty(), "{:#?}", decision.findings);
        assert_eq!(decision.verdict, "healthy: no findings");
        let checks = &decision.namespaces[0].checks;
        assert!(checks.iter().all(|c| !matches!(c.status, Status::Finding(_))), "{checks:#?}");
    }

    #[test]
    fn bridge_nf_call_off_with_dnat_is_conntrack_skip() {
        let decision = decide_one(lab_node("0", LAB_NAT), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackSkip);
        assert!(only.config && !only.traffic);
        let Evidence::Node(node) = &only.finding.evidence else { panic!("node evidence") };
        assert_eq!(node.bridges, vec!["cni0"]);
        let names: Vec<&str> = node.sysctls.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"]);
        assert!(only.finding.fix.iter().any(|f| f == "sysctl -w net.bridge.bridge-nf-call-iptables=1"), "{:?}", only.finding.fix);
    }

    #[test]
    fn bridge_nf_call_off_without_service_nat_is_a_note() {
        let decision = decide_one(lab_node("0", "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"), Traffic::default());
        // The IPv6 DNAT of the lab is still there: only IPv4 lacks service NAT.
        let kinds: Vec<FindingKind> = decision.findings.iter().map(|r| r.finding.kind).collect();
        assert_eq!(kinds, vec![FindingKind::ConntrackSkip]);
        let Evidence::Node(node) = &decision.findings[0].finding.evidence else { panic!() };
        assert_eq!(node.sysctls.len(), 1, "{:?}", node.sysctls);
        assert_eq!(node.sysctls[0].name, "net.bridge.bridge-nf-call-ip6tables");
        let v4 = decision.namespaces[0].checks.iter().find(|c| c.name == "bridge-nf-call-iptables").expect("check");
        assert_eq!(v4.status, Status::Note);
    }

    fn sighting_dns_finding(kind: FindingKind) -> Finding {
        let evidence = DnsEvidence {
            client: "10.244.0.5:40000".parse().expect("addr"),
            expected_source: "10.96.0.10:53".parse().expect("addr"),
            actual_source: Some("10.244.0.7:53".parse().expect("addr")),
            query: crate::findings::QueryRef { id: 0x1a2b, qname: Some("example.test.".into()), qtype: Some(1) },
            bridge: Some("cni0".into()),
            reply_in_port: Some("veth-server".into()),
            reply_out_port: Some("veth-client".into()),
            last_seen: None,
            sysctls: vec![sysctl("net.bridge.bridge-nf-call-iptables", "0")],
        };
        Finding {
            kind,
            wall_time_ns: NOW,
            headline: "DNS replies skip conntrack on bridge cni0: 10.244.0.5 gets answers from 10.244.0.7:53 instead of 10.96.0.10:53".into(),
            evidence: Evidence::Dns(evidence),
            explanation: String::new(),
            fix: vec![],
        }
    }

    #[test]
    fn traffic_and_config_conntrack_skip_merge_and_rank_first() {
        let mut state = lab_node("0", LAB_NAT);
        // Something else is wrong too: a REJECT for port 53 in INPUT, never hit.
        state.firewall.chains.extend(parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n[0:0] -A INPUT -p tcp -m tcp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n",
            Backend::IptablesNft,
            Family::Ipv4,
        ));
        let traffic = Traffic {
            findings: vec![(sighting_dns_finding(FindingKind::ConntrackSkip), Example { lines: vec!["reply line".into()], json: vec![] })],
            drops: vec![],
            kind_counts: [(FindingKind::ConntrackSkip, 2)].into(),
        };
        let decision = decide_one(state, traffic);
        let kinds: Vec<FindingKind> = decision.findings.iter().map(|r| r.finding.kind).collect();
        assert_eq!(kinds, vec![FindingKind::ConntrackSkip, FindingKind::NetfilterReject]);
        let top = &decision.findings[0];
        assert!(top.traffic && top.config, "merged: {top:#?}");
        assert!(matches!(top.finding.evidence, Evidence::Dns(_)));
        assert!(matches!(top.more.as_slice(), [Evidence::Node(node)] if node.bridges == ["cni0"]));
        assert_eq!(top.occurrences, Some(2));
        assert_eq!(top.example.lines, vec!["reply line"]);
        assert!(top.finding.fix.iter().any(|f| f == "sysctl -w net.bridge.bridge-nf-call-ip6tables=1"), "both families: {:?}", top.finding.fix);
        assert!(decision.verdict.starts_with("DNS replies skip conntrack on bridge cni0: "), "{}", decision.verdict);
        assert!(decision.verdict.ends_with("(+1 more finding)"), "{}", decision.verdict);
    }

    #[test]
    fn reject_rule_for_the_port_is_found_on_every_path_once() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
             [0:0] -A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\n\
             [0:0] -A FORWARD -p udp -m udp --dport 5353 -j DROP\n\
             [0:0] -A FORWARD -j KUBE-SERVICES\n\
             [0:0] -A INPUT -j KUBE-SERVICES\n\
             [0:0] -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n\
             [0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP\n\
             COMMIT\n"
        );
        let decision = decide_one(lab_node("1", &firewall), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterReject);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        let rule = node.rule.as_ref().expect("the rule");
        assert_eq!((rule.chain.as_str(), rule.position), ("KUBE-SERVICES", 1));
        assert!(node.notes.iter().any(|n| n.contains("FORWARD") && n.contains("LOCAL_IN")), "{:?}", node.notes);
        assert!(
            only.finding.fix.iter().any(|f| f.starts_with("iptables-nft -t filter -D KUBE-SERVICES -d 10.96.0.10/32")),
            "deleted by its specification, with the backend's own program: {:?}",
            only.finding.fix
        );
    }

    #[test]
    fn drop_policy_with_allow_rules_is_default_deny_not_a_finding() {
        let allowed = format!(
            "{LAB_NAT}*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -i cni0 -j ACCEPT\n[0:0] -A FORWARD -o cni0 -j ACCEPT\nCOMMIT\n"
        );
        assert!(decide_one(lab_node("1", &allowed), Traffic::default()).findings.is_empty());

        let nothing_accepts = format!("{LAB_NAT}*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n");
        let decision = decide_one(lab_node("1", &nothing_accepts), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterDrop);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!((node.policy.as_deref(), node.policy_backend), (Some("filter/FORWARD"), Some(Backend::IptablesNft)));
    }

    #[test]
    fn catch_all_reject_after_accepts_is_not_reported_but_one_before_them_is() {
        let firewalld_like = format!(
            "{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             [0:0] -A FORWARD -i cni0 -j ACCEPT\n[0:0] -A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n"
        );
        assert!(decide_one(lab_node("1", &firewalld_like), Traffic::default()).findings.is_empty());
        let blanket = format!("{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n");
        let decision = decide_one(lab_node("1", &blanket), Traffic::default());
        assert_eq!(decision.findings.len(), 1, "{:#?}", decision.findings);
    }

    #[test]
    fn ip_forward_off_on_a_bridged_node() {
        let mut state = lab_node("1", LAB_NAT);
        state.sysctls[2] = sysctl("net.ipv4.ip_forward", "0");
        let decision = decide_one(state, Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::IpForwardOff);
        assert!(only.finding.fix.iter().any(|f| f == "sysctl -w net.ipv4.ip_forward=1"));
    }

    fn stats(text: &str) -> ConntrackStats {
        ConntrackStats::parse(text).expect("fixture parses")
    }

    fn drop_group(reason: &str, stopped_in: Option<Hook>, after: Option<Hook>, count: u64) -> DropGroup {
        DropGroup {
            reason: reason.to_string(),
            stopped_in,
            after,
            src: "10.244.0.5:41000".parse().expect("addr"),
            dst: "10.96.0.10:53".parse().expect("addr"),
            l4_proto: L4Proto::Udp,
            ifname: Some("veth-client".into()),
            rule: None,
            count,
            wall_time_ns: NOW,
            example: Example { lines: vec![format!("dropped {reason}")], json: vec![] },
        }
    }

    /// A drop the watch could not pin on any rule, as `findings::netfilter` words it.
    fn unattributed_drop_finding(hook: Hook) -> Finding {
        Finding {
            kind: FindingKind::NetfilterDrop,
            wall_time_ns: NOW,
            headline: "DROP in PRE_ROUTING: udp 10.244.0.5:41000 → 10.96.0.10:53 stopped by a rule tracer could not name".into(),
            evidence: Evidence::Netfilter(NetfilterEvidence {
                src: "10.244.0.5:41000".parse().expect("addr"),
                dst: "10.96.0.10:53".parse().expect("addr"),
                proto: L4Proto::Udp,
                hook,
                in_ifname: Some("cni0".into()),
                out_ifname: None,
                culprit: Culprit::default(),
                candidates: vec![],
                attribution: "no rule fits".into(),
                icmp: None,
                drop_reason: "NETFILTER_DROP".into(),
            }),
            explanation: String::new(),
            fix: vec![],
        }
    }

    fn timeout_finding() -> Finding {
        let mut finding = sighting_dns_finding(FindingKind::DnsTimeout);
        finding.headline = "DNS query unanswered".into();
        if let Evidence::Dns(dns) = &mut finding.evidence {
            dns.actual_source = None;
            dns.client = "10.244.0.5:41000".parse().expect("addr");
        }
        finding
    }

    #[test]
    fn table_full_from_recorded_counters_takes_over_the_unattributed_drops() {
        use crate::node::checks::tests::{TABLE_FULL_AFTER, TABLE_FULL_BEFORE};
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack = ConntrackReading { count: Some(262_144), max: Some(262_144), stats: Some(stats(TABLE_FULL_BEFORE)), errors: vec![] };
        let after = ConntrackReading { count: Some(262_144), max: Some(262_144), stats: Some(stats(TABLE_FULL_AFTER)), errors: vec![] };
        let traffic = Traffic {
            findings: vec![
                (unattributed_drop_finding(Hook::PreRouting), Example { lines: vec!["drop line".into()], json: vec![] }),
                (timeout_finding(), Example::default()),
            ],
            // As the watch saw the three refused queries in that recording.
            drops: vec![drop_group("NETFILTER_DROP", Some(Hook::PreRouting), None, 3)],
            kind_counts: [(FindingKind::NetfilterDrop, 3), (FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide(&[state], &[after], traffic, 53, NOW);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackTableFull);
        assert!(only.traffic && only.config);
        assert_eq!(only.occurrences, Some(3));
        assert!(only.finding.headline.contains("262144 of 262144 entries (100%)"), "{}", only.finding.headline);
        assert!(only.finding.headline.contains("refused 3 new flows"), "{}", only.finding.headline);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        let conntrack = node.conntrack.as_ref().expect("counters");
        let drop = conntrack.counters.iter().find(|c| c.name == "drop").expect("drop counter");
        assert_eq!((drop.total, drop.growth), (133, Some(3)));
        let drops = node.drops.as_ref().expect("traced drops");
        assert_eq!((drops.count, drops.place.as_str()), (3, "in PRE_ROUTING"));
        assert!(only.more.iter().any(|e| matches!(e, Evidence::Dns(d) if d.last_seen.is_none() && d.actual_source.is_none())), "the timeout is explained by it: {:#?}", only.more);
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Finding(FindingKind::ConntrackTableFull));
        assert!(check.value.contains("drop 133 (+3)"), "{}", check.value);
    }

    #[test]
    fn table_nearly_full_without_drops_is_a_config_finding() {
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack = ConntrackReading { count: Some(250_000), max: Some(262_144), stats: None, errors: vec![] };
        let decision = decide_one(state, Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackTableFull);
        assert!(only.finding.headline.starts_with("Conntrack table nearly full: 250000 of 262144 entries (95%)"), "{}", only.finding.headline);
    }

    #[test]
    fn insert_race_from_counters_and_drops_after_the_last_hook_program() {
        use crate::node::checks::tests::{INSERT_RACE_AFTER, INSERT_RACE_BEFORE};
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack.stats = Some(stats(INSERT_RACE_BEFORE));
        let after = ConntrackReading { count: Some(5), max: Some(262_144), stats: Some(stats(INSERT_RACE_AFTER)), errors: vec![] };
        let growth = stats(INSERT_RACE_BEFORE).growth(&stats(INSERT_RACE_AFTER), "insert_failed").expect("column");
        assert!(growth > 0);
        // `drop` grew just as much, for the same packets: that is no full table.
        let traffic = Traffic {
            findings: vec![(timeout_finding(), Example::default())],
            // Where tracer saw them in that recording: past its last program in LOCAL_IN, in
            // conntrack's confirmation.
            drops: vec![drop_group("NETFILTER_DROP", None, Some(Hook::LocalIn), 1)],
            kind_counts: [(FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide(&[state], &[after], traffic, 53, NOW);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackInsertRace);
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Finding(FindingKind::ConntrackInsertRace));
        assert!(only.traffic && only.config);
        assert!(only.finding.headline.contains(&format!("insert_failed grew by {growth}")), "{}", only.finding.headline);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!(node.drops.as_ref().map(|d| d.place.as_str()), Some("after LOCAL_IN"));
        assert_eq!(only.more.len(), 1, "the timeout it explains");
    }

    #[test]
    fn counters_that_did_not_grow_are_history_not_findings() {
        use crate::node::checks::tests::TABLE_FULL_AFTER;
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack.stats = Some(stats(TABLE_FULL_AFTER));
        let after = ConntrackReading { count: Some(3), max: Some(262_144), stats: Some(stats(TABLE_FULL_AFTER)), errors: vec![] };
        let decision = decide(&[state], &[after], Traffic::default(), 53, NOW);
        assert!(decision.findings.is_empty(), "{:#?}", decision.findings);
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Note);
    }

    #[test]
    fn traffic_reject_merges_with_the_configured_rule() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[3:180] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n"
        );
        let state = lab_node("1", &firewall);
        let rule = state.firewall.chains.iter().flat_map(|c| &c.rules).find(|r| r.chain == "FORWARD").map(RuleRef::of).expect("rule");
        let finding = Finding {
            kind: FindingKind::NetfilterReject,
            wall_time_ns: NOW,
            headline: "REJECT in FORWARD: udp 10.244.0.5:41000 → 10.244.0.7:53 stopped by iptables-nft rule #1 of filter/FORWARD".into(),
            evidence: Evidence::Netfilter(NetfilterEvidence {
                src: "10.244.0.5:41000".parse().expect("addr"),
                dst: "10.244.0.7:53".parse().expect("addr"),
                proto: L4Proto::Udp,
                hook: Hook::Forward,
                in_ifname: Some("cni0".into()),
                out_ifname: Some("cni0".into()),
                culprit: Culprit::of(Some(rule), None),
                candidates: vec![],
                attribution: "only rule".into(),
                icmp: Some("host-prohibited".into()),
                drop_reason: "NETFILTER_DROP".into(),
            }),
            explanation: String::new(),
            fix: vec![],
        };
        let mut group = drop_group("NETFILTER_DROP", Some(Hook::Forward), None, 3);
        group.dst = "10.244.0.7:53".parse().expect("addr");
        let traffic = Traffic {
            findings: vec![(finding, Example::default()), (timeout_finding(), Example::default())],
            drops: vec![group],
            kind_counts: [(FindingKind::NetfilterReject, 3), (FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide_one(state, traffic);
        // The rejected query looked unanswered to the watch: the reject explains that timeout.
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterReject);
        assert!(only.traffic && only.config);
        assert_eq!(only.occurrences, Some(3));
        assert!(matches!(only.more.as_slice(), [Evidence::Node(node), Evidence::Dns(_)] if node.rule.is_some()), "{:#?}", only.more);
    }

    #[test]
    fn rp_filter_drops_name_the_interface_and_its_setting() {
        let mut state = lab_node("1", LAB_NAT);
        state.sysctls[4] = sysctl("net.ipv4.conf.all.rp_filter", "1");
        let traffic = Traffic {
            findings: vec![],
            drops: vec![drop_group("IP_RPFILTER", None, Some(Hook::PreRouting), 2)],
            kind_counts: Default::default(),
        };
        let decision = decide_one(state, traffic);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::RpFilterDrop);
        assert!(only.finding.headline.contains("veth-client"));
        assert!(only.finding.headline.contains("rp_filter 1"));
        assert!(only.traffic && only.config);
    }

    #[test]
    fn other_namespaces_rank_after_the_watched_one_and_say_where() {
        let watched = lab_node("1", LAB_NAT);
        let mut other = lab_node("0", LAB_NAT);
        other.netns = netns(false, Some("ld-node"));
        let mut timeout = timeout_finding();
        if let Evidence::Dns(dns) = &mut timeout.evidence {
            dns.last_seen = Some(crate::pipeline::queries::Sighting { stage: Stage::BridgeOut, ifname: Some("veth-server".into()), ifindex: 4, wall_time_ns: NOW });
        }
        let traffic = Traffic { findings: vec![(timeout, Example::default())], drops: vec![], kind_counts: [(FindingKind::DnsTimeout, 1)].into() };
        let states = [watched, other];
        let after: Vec<ConntrackReading> = states.iter().map(|s| s.conntrack.clone()).collect();
        let decision = decide(&states, &after, traffic, 53, NOW);
        let kinds: Vec<(FindingKind, bool)> = decision.findings.iter().map(|r| (r.finding.kind, r.netns.current)).collect();
        assert_eq!(kinds, vec![(FindingKind::DnsTimeout, true), (FindingKind::ConntrackSkip, false)]);
        let other = &decision.findings[1].finding;
        assert!(other.headline.contains("in network namespace ld-node"), "{}", other.headline);
        assert!(other.fix.iter().any(|f| f == "ip netns exec ld-node sysctl -w net.bridge.bridge-nf-call-iptables=1"), "{:?}", other.fix);
    }
}
