//! JSON Lines output. Field names are documented in README.md and stay stable.

use std::{
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, UNIX_EPOCH},
};

use serde::Serialize;
use serde_json::{json, Value};

use crate::analysis::output::{DropLine, Output, Summary};
use crate::pipeline::paths::HookPass;
use crate::model::{
    dns::{self, DnsAnswer, DnsMessage},
    packet::{stage_name, Conntrack, FlowTuple},
    TracedPacket,
};
use crate::findings::{DnsEvidence, Evidence, Finding, NetfilterEvidence, NodeEvidence, RuleRef};

pub struct JsonOutput<W: Write> {
    out: W,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        JsonOutput { out }
    }

    fn line(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

/// A packet line as it is written. Serialised straight from borrowed fields: building a
/// `Value` tree first cost about half of tracer's CPU per line in the bench's profile. The
/// fields are in the order a `Value` map writes them (sorted), so the bytes do not change.
#[derive(Serialize)]
pub struct PacketLine<'a> {
    bridge: Option<&'a str>,
    conntrack: Option<ConntrackLine<'a>>,
    dns: Option<DnsLine<'a>>,
    dst: &'a SocketAddr,
    hooks: Vec<HookLine<'a>>,
    ifindex: u32,
    ifname: Option<&'a str>,
    in_ifindex: u32,
    in_ifname: Option<&'a str>,
    ip_version: u8,
    len: u32,
    netns: u32,
    proto: &'static str,
    src: &'a SocketAddr,
    stage: &'static str,
    time: String,
    timestamp_ns: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    verdict: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ConntrackLine<'a> {
    Attached {
        ctinfo: &'static str,
        nat: Option<String>,
        original: Option<TupleLine<'a>>,
        reply: Option<TupleLine<'a>>,
        state: &'static str,
        status: Vec<&'static str>,
    },
    Untracked {
        state: &'static str,
    },
}

#[derive(Serialize)]
struct TupleLine<'a> {
    dst: &'a SocketAddr,
    src: &'a SocketAddr,
}

#[derive(Serialize)]
struct DnsLine<'a> {
    answers: u16,
    first_answer: Option<String>,
    id: u16,
    opcode: u8,
    qname: Option<&'a str>,
    qr: bool,
    qtype: Option<std::borrow::Cow<'static, str>>,
    rcode: &'static str,
}

#[derive(Serialize)]
struct HookLine<'a> {
    conntrack: Option<ConntrackLine<'a>>,
    family: &'static str,
    hook: &'static str,
    left: bool,
    nat: Option<String>,
}

fn nat_text(nats: &[crate::model::packet::Nat]) -> Option<String> {
    if nats.is_empty() {
        None
    } else {
        Some(nats.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
    }
}

fn tuple_line(tuple: &Option<FlowTuple>) -> Option<TupleLine<'_>> {
    tuple.as_ref().map(|t| TupleLine { dst: &t.dst, src: &t.src })
}

fn conntrack_line(conntrack: &Conntrack) -> Option<ConntrackLine<'_>> {
    match conntrack {
        Conntrack::None => None,
        Conntrack::Untracked => Some(ConntrackLine::Untracked { state: "untracked" }),
        Conntrack::Attached(entry) => Some(ConntrackLine::Attached {
            ctinfo: entry.ctinfo_name(),
            nat: nat_text(&entry.nat()),
            original: tuple_line(&entry.original),
            reply: tuple_line(&entry.reply),
            state: "attached",
            status: entry.status_names(),
        }),
    }
}

fn dns_line(message: &DnsMessage) -> DnsLine<'_> {
    DnsLine {
        answers: message.answer_count,
        first_answer: message.first_answer.as_ref().map(DnsAnswer::to_string),
        id: message.id,
        opcode: message.opcode,
        qname: message.qname.as_deref(),
        qr: message.qr,
        qtype: message.qtype.map(dns::qtype_name),
        rcode: dns::rcode_name(message.rcode),
    }
}

fn hook_lines(hooks: &[HookPass]) -> Vec<HookLine<'_>> {
    hooks
        .iter()
        .map(|pass| HookLine {
            conntrack: conntrack_line(&pass.conntrack),
            family: if pass.ipv6 { "ipv6" } else { "ipv4" },
            hook: pass.hook.name(),
            left: pass.left,
            nat: nat_text(&pass.nat()),
        })
        .collect()
}

pub fn packet_line<'a>(packet: &'a TracedPacket, hooks: &'a [HookPass]) -> PacketLine<'a> {
    let event = &packet.event;
    PacketLine {
        bridge: packet.names.bridge.as_deref(),
        conntrack: conntrack_line(&event.conntrack),
        dns: event.dns.as_ref().map(dns_line),
        dst: &event.dst,
        hooks: hook_lines(hooks),
        ifindex: event.ifindex,
        ifname: packet.names.ifname.as_deref(),
        in_ifindex: event.ingress_ifindex,
        in_ifname: packet.names.in_ifname.as_deref(),
        ip_version: if event.src.is_ipv4() { 4 } else { 6 },
        len: event.ip_len,
        netns: event.netns_inode,
        proto: event.proto_name(),
        src: &event.src,
        stage: stage_name(event.stage),
        time: humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(packet.wall_time_ns)).to_string(),
        timestamp_ns: event.timestamp_ns,
        kind: "packet",
        verdict: if hooks.is_empty() { None } else { Some("accept") },
    }
}

/// The packet line as a `Value`, for outputs that embed it (triage examples).
pub fn packet_json(packet: &TracedPacket, hooks: &[HookPass]) -> Value {
    serde_json::to_value(packet_line(packet, hooks)).unwrap_or(Value::Null)
}

fn hooks_json(hooks: &[HookPass]) -> Value {
    serde_json::to_value(hook_lines(hooks)).unwrap_or(Value::Null)
}

pub fn drop_json(line: &DropLine) -> Value {
    let drop = &line.dropped.drop;
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(line.wall_time_ns)).to_string();
    json!({
        "type": "packet",
        "time": time,
        "timestamp_ns": drop.timestamp_ns,
        "netns": drop.netns_inode,
        "stage": "dropped",
        "ifindex": drop.ifindex,
        "ifname": line.ifname,
        "bridge": line.bridge,
        "ip_version": if drop.src.is_ipv4() { 4 } else { 6 },
        "proto": if drop.l4_proto == 6 { "tcp" } else { "udp" },
        "src": addr(&drop.src),
        "dst": addr(&drop.dst),
        "hooks": hooks_json(&line.dropped.path),
        "verdict": line.verdict,
        "drop_reason": line.reason,
        "icmp": line.icmp,
        "rule": line.rule,
        "records_lost": line.records_lost,
    })
}

fn addr(addr: &SocketAddr) -> String {
    addr.to_string()
}

pub fn dns_json(message: &DnsMessage) -> Value {
    serde_json::to_value(dns_line(message)).unwrap_or(Value::Null)
}

pub fn finding_json(finding: &Finding) -> Value {
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(finding.wall_time_ns)).to_string();
    let mut line = json!({
        "type": "finding",
        "kind": finding.kind.name(),
        "time": time,
        "headline": finding.headline,
        "explanation": finding.explanation,
        "fix": finding.fix,
    });
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), evidence_json(&finding.evidence)) {
        line.extend(fields);
    }
    line
}

/// A finding's evidence as the fields of its JSON object.
pub fn evidence_json(evidence: &Evidence) -> Value {
    match evidence {
        Evidence::Dns(dns) => dns_evidence_json(dns),
        Evidence::Netfilter(nf) => netfilter_evidence_json(nf),
        Evidence::Node(node) => node_evidence_json(node),
    }
}

fn dns_evidence_json(dns: &DnsEvidence) -> Value {
    json!({
        "client": addr(&dns.client),
        "expected_source": addr(&dns.expected_source),
        "actual_source": dns.actual_source.as_ref().map(addr),
        "query": {
            "id": dns.query.id,
            "qname": dns.query.qname,
            "qtype": dns.query.qtype.map(|t| dns::qtype_name(t).into_owned()),
        },
        "bridge": dns.bridge,
        "reply_in_port": dns.reply_in_port,
        "reply_out_port": dns.reply_out_port,
        "last_seen": dns.last_seen.as_ref().map(|seen| json!({
            "stage": stage_name(seen.stage),
            "ifname": seen.ifname,
            "ifindex": seen.ifindex,
        })),
        "sysctls": dns.sysctls.iter().map(|s| (s.name.clone(), s.value.clone().map(Value::String).unwrap_or(Value::Null))).collect::<serde_json::Map<String, Value>>(),
    })
}

fn rule_json(rule: &RuleRef) -> Value {
    json!({
        "backend": rule.backend,
        "table": rule.table,
        "chain": rule.chain,
        "rule": rule.position,
        "handle": rule.handle,
        "rule_text": rule.text,
    })
}

fn netfilter_evidence_json(nf: &NetfilterEvidence) -> Value {
    json!({
        "src": addr(&nf.src),
        "dst": addr(&nf.dst),
        "proto": nf.proto,
        "hook": nf.hook,
        "in_ifname": nf.in_ifname,
        "out_ifname": nf.out_ifname,
        "backend": nf.rule.as_ref().map(|r| r.backend).or(nf.policy.as_ref().map(|p| p.backend)),
        "table": nf.rule.as_ref().map(|r| r.table.clone()).or(nf.policy.as_ref().map(|p| p.table.clone())),
        "chain": nf.rule.as_ref().map(|r| r.chain.clone()).or(nf.policy.as_ref().map(|p| p.chain.clone())),
        "rule": nf.rule.as_ref().map(|r| r.position),
        "handle": nf.rule.as_ref().and_then(|r| r.handle),
        "rule_text": nf.rule.as_ref().map(|r| r.text.clone()),
        "policy": nf.policy.as_ref().map(|p| format!("{}/{}", p.table, p.chain)),
        "candidates": nf.candidates.iter().map(rule_json).collect::<Vec<_>>(),
        "attribution": nf.attribution,
        "icmp": nf.icmp,
        "drop_reason": nf.drop_reason,
    })
}

fn node_evidence_json(node: &NodeEvidence) -> Value {
    json!({
        "netns": { "name": node.netns.name, "inode": node.netns.inode, "current": node.netns.current },
        "bridges": node.bridges,
        "interface": node.interface,
        "sysctls": node.sysctls.iter().map(|s| (s.name.clone(), s.value.clone().map(Value::String).unwrap_or(Value::Null))).collect::<serde_json::Map<String, Value>>(),
        "conntrack": node.conntrack.as_ref().map(|c| json!({
            "count": c.count,
            "max": c.max,
            "counters": c.counters.iter().map(|counter| (counter.name.to_string(), json!({ "total": counter.total, "growth": counter.growth }))).collect::<serde_json::Map<String, Value>>(),
        })),
        "rule": node.rule.as_ref().map(rule_json),
        "policy": node.policy.as_ref().map(|p| format!("{}/{}", p.table, p.chain)),
        "policy_backend": node.policy.as_ref().map(|p| p.backend),
        "drops": node.drops.as_ref().map(|d| json!({
            "count": d.count,
            "reason": d.reason,
            "place": d.place,
            "src": addr(&d.src),
            "dst": addr(&d.dst),
            "proto": d.proto,
            "ifname": d.ifname,
        })),
        "notes": node.notes,
    })
}

impl<W: Write> Output for JsonOutput<W> {
    fn packet(&mut self, packet: &TracedPacket, hooks: &[HookPass]) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, &packet_line(packet, hooks))?;
        self.out.write_all(b"\n")
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.line(&drop_json(line))
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.line(&finding_json(finding))
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(&json!({
            "type": "summary",
            "packets": summary.packets,
            "lost": summary.lost,
            "lost_per_cpu": summary.lost_per_cpu,
            "duration_secs": (summary.duration_secs * 1000.0).round() / 1000.0,
            "findings": summary.findings,
            "finding_counts": summary.finding_counts.iter().map(|(kind, count)| (kind.to_string(), json!(count))).collect::<serde_json::Map<String, Value>>(),
            "unconfirmed": summary.unconfirmed,
            "unconfirmed_counts": summary.unconfirmed_counts.iter().map(|(kind, count)| (kind.to_string(), json!(count))).collect::<serde_json::Map<String, Value>>(),
            "recursion_misses": summary.recursion_misses,
            "evicted_flows": summary.evicted_flows,
            "evicted_paths": summary.evicted_paths,
            "findings_overflow": summary.findings_overflow,
        }))?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
