//! The lab node the triage tests decide about, and the traffic findings the watch would
//! hand over.

use crate::{
    firewall::{parse_iptables_save, Backend, Family, Hook, Snapshot},
    model::netfilter::DropReason,
    model::{packet::L4Proto, sysctl::SysctlValue},
    node::checks::{Bridge, ConntrackReading, ConntrackStats, NamespaceState, Netns, RpFilter},
    schema::finding::{Culprit, DnsEvidence, Evidence, Finding, FindingKind, NetfilterEvidence},
};

use super::{decide, Decision, DropGroup, Example, Traffic};

pub(crate) const NOW: u64 = 1_795_441_501_000_000_000;

pub(crate) fn netns(current: bool, name: Option<&str>) -> Netns {
    Netns::recorded(name, if current { 4026532595 } else { 4026532999 }, current)
}

pub(crate) fn sysctl(name: &str, value: &str) -> SysctlValue {
    SysctlValue { name: name.to_string(), value: Some(value.to_string()) }
}

/// The lab's node namespace: cni0 with two pods, the ClusterIP DNAT, forwarding on.
pub(crate) fn lab_node(bridge_nf: &str, firewall: &str) -> NamespaceState {
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

pub(crate) const LAB_NAT: &str =
    "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
    [2:120] -A PREROUTING -d 10.96.0.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.244.0.7:53\nCOMMIT\n";

pub(crate) fn decide_one(state: NamespaceState, traffic: Traffic) -> Decision {
    let after = vec![state.conntrack.clone()];
    decide(&[state], &after, traffic, 53.into(), NOW)
}

pub(crate) fn sighting_dns_finding(kind: FindingKind) -> Finding {
    let evidence = DnsEvidence {
        client: "10.244.0.5:40000".parse().expect("addr"),
        expected_source: "10.96.0.10:53".parse().expect("addr"),
        actual_source: Some("10.244.0.7:53".parse().expect("addr")),
        query: crate::schema::finding::QueryRef { id: 0x1a2b, qname: Some("example.test.".into()), qtype: Some(1) },
        bridge: Some("cni0".into()),
        reply_in_port: Some("veth-server".into()),
        reply_out_port: Some("veth-client".into()),
        last_seen: None,
        rcode: None,
        search: None,
        stale_dnat: None,
        tcp_retry: None,
        fragments: None,
        sysctls: vec![sysctl("net.bridge.bridge-nf-call-iptables", "0")],
        pods: Default::default(),
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

pub(crate) fn stats(text: &str) -> ConntrackStats {
    ConntrackStats::parse(text).expect("fixture parses")
}

pub(crate) fn drop_group(reason: DropReason, stopped_in: Option<Hook>, after: Option<Hook>, count: u64) -> DropGroup {
    let example = Example { lines: vec![format!("dropped {reason}")], json: vec![] };
    DropGroup {
        reason,
        stopped_in,
        after,
        src: "10.244.0.5:41000".parse().expect("addr"),
        dst: "10.96.0.10:53".parse().expect("addr"),
        l4_proto: L4Proto::Udp,
        ifname: Some("veth-client".into()),
        rule: None,
        count,
        wall_time_ns: NOW,
        example,
    }
}

/// A drop the watch could not pin on any rule, as `findings::netfilter` words it.
pub(crate) fn unattributed_drop_finding(hook: Hook) -> Finding {
    Finding {
        kind: FindingKind::NetfilterDrop,
        wall_time_ns: NOW,
        headline: "DROP in PRE_ROUTING: udp 10.244.0.5:41000 → 10.96.0.10:53 stopped by a rule tracer could not name"
            .into(),
        evidence: Evidence::Netfilter(NetfilterEvidence {
            src: "10.244.0.5:41000".parse().expect("addr"),
            dst: "10.96.0.10:53".parse().expect("addr"),
            proto: L4Proto::Udp,
            hook,
            in_ifname: Some("cni0".into()),
            out_ifname: None,
            pods: Default::default(),
            culprit: Culprit::default(),
            candidates: vec![],
            attribution: "no rule fits".into(),
            icmp: None,
            drop_reason: DropReason::NetfilterDrop,
            owner: None,
            element: None,
            retry_of: None,
        }),
        explanation: String::new(),
        fix: vec![],
    }
}

pub(crate) fn timeout_finding() -> Finding {
    let mut finding = sighting_dns_finding(FindingKind::DnsTimeout);
    finding.headline = "DNS query unanswered".into();
    if let Evidence::Dns(dns) = &mut finding.evidence {
        dns.actual_source = None;
        dns.client = "10.244.0.5:41000".parse().expect("addr");
    }
    finding
}
