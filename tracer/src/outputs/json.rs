//! JSON Lines output. Field names are documented in README.md and stay stable.

use std::{
    io::{self, Write},
    net::SocketAddr,
    time::{Duration, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{Output, Summary};
use crate::events::{
    dns::{self, DnsAnswer, DnsMessage},
    packet::{stage_name, Conntrack, FlowTuple},
    TracedPacket,
};
use crate::findings::Finding;

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

pub fn packet_json(packet: &TracedPacket) -> Value {
    let event = &packet.event;
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(packet.wall_time_ns)).to_string();
    json!({
        "type": "packet",
        "time": time,
        "timestamp_ns": event.timestamp_ns,
        "netns": event.netns_inode,
        "stage": stage_name(event.stage),
        "ifindex": event.ifindex,
        "ifname": packet.names.ifname,
        "in_ifindex": event.ingress_ifindex,
        "in_ifname": packet.names.in_ifname,
        "bridge": packet.names.bridge,
        "ip_version": if event.src.is_ipv4() { 4 } else { 6 },
        "proto": event.proto_name(),
        "src": addr(&event.src),
        "dst": addr(&event.dst),
        "len": event.ip_len,
        "conntrack": conntrack_json(&event.conntrack),
        "dns": event.dns.as_ref().map(dns_json),
    })
}

fn addr(addr: &SocketAddr) -> String {
    addr.to_string()
}

fn tuple_json(tuple: &Option<FlowTuple>) -> Value {
    match tuple {
        Some(t) => json!({ "src": addr(&t.src), "dst": addr(&t.dst) }),
        None => Value::Null,
    }
}

fn conntrack_json(conntrack: &Conntrack) -> Value {
    match conntrack {
        Conntrack::None => Value::Null,
        Conntrack::Untracked => json!({ "state": "untracked" }),
        Conntrack::Attached(entry) => {
            let nat: Vec<String> = entry.nat().iter().map(|n| n.to_string()).collect();
            json!({
                "state": "attached",
                "ctinfo": entry.ctinfo_name(),
                "status": entry.status_names(),
                "original": tuple_json(&entry.original),
                "reply": tuple_json(&entry.reply),
                "nat": if nat.is_empty() { Value::Null } else { Value::String(nat.join(", ")) },
            })
        }
    }
}

fn dns_json(message: &DnsMessage) -> Value {
    json!({
        "id": message.id,
        "qr": message.qr,
        "opcode": message.opcode,
        "rcode": dns::rcode_name(message.rcode),
        "qname": message.qname,
        "qtype": message.qtype.map(|t| dns::qtype_name(t).into_owned()),
        "answers": message.answer_count,
        "first_answer": message.first_answer.as_ref().map(DnsAnswer::to_string),
    })
}

pub fn finding_json(finding: &Finding) -> Value {
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(finding.wall_time_ns)).to_string();
    json!({
        "type": "finding",
        "kind": finding.kind.name(),
        "time": time,
        "headline": finding.headline,
        "client": addr(&finding.client),
        "expected_source": addr(&finding.expected_source),
        "actual_source": finding.actual_source.as_ref().map(addr),
        "query": {
            "id": finding.query.id,
            "qname": finding.query.qname,
            "qtype": finding.query.qtype.map(|t| dns::qtype_name(t).into_owned()),
        },
        "bridge": finding.bridge,
        "reply_in_port": finding.reply_in_port,
        "reply_out_port": finding.reply_out_port,
        "last_seen": finding.last_seen.as_ref().map(|seen| json!({
            "stage": stage_name(seen.stage),
            "ifname": seen.ifname,
            "ifindex": seen.ifindex,
        })),
        "sysctls": finding.sysctls.iter().map(|s| (s.name.clone(), s.value.clone().map(Value::String).unwrap_or(Value::Null))).collect::<serde_json::Map<String, Value>>(),
        "explanation": finding.explanation,
        "fix": finding.fix,
    })
}

impl<W: Write> Output for JsonOutput<W> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.line(&packet_json(packet))
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
            "evicted_flows": summary.evicted_flows,
        }))?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
