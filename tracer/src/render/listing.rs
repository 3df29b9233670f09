//! The plain packet listing `tracer report` prints for a capture another program wrote:
//! time, interface, addresses and DNS, as text or JSON Lines. Such a file has no stage,
//! hook path or conntrack, so these lines are not tracer's packet lines.

use std::{
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::text::time_of_day;
use crate::model::plain::PlainPacket;

pub struct Listing<W: Write> {
    out: W,
    json: bool,
}

fn proto_name(proto: u8) -> &'static str {
    match proto {
        6 => "tcp",
        17 => "udp",
        _ => "other",
    }
}

impl<W: Write> Listing<W> {
    pub fn new(out: W, json: bool) -> Self {
        Listing { out, json }
    }

    pub fn packet(&mut self, packet: &PlainPacket) -> io::Result<()> {
        if self.json {
            let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(packet.wall_time_ns)).to_string();
            let mut line = json!({
                "type": "packet",
                "time": time,
                "stage": null,
                "ifname": packet.ifname,
                "link_type": packet.linktype,
                "captured_len": packet.captured_len,
            });
            if let (Some(ip), Some(fields)) = (&packet.ip, line.as_object_mut()) {
                fields.insert("ip_version".into(), json!(ip.version));
                fields.insert("proto".into(), json!(proto_name(ip.l4_proto)));
                fields.insert("src".into(), json!(ip.src.to_string()));
                fields.insert("dst".into(), json!(ip.dst.to_string()));
                fields.insert("len".into(), json!(ip.ip_len));
                fields.insert("dns".into(), ip.dns.as_ref().map(super::json::dns_json).unwrap_or(Value::Null));
            }
            serde_json::to_writer(&mut self.out, &line)?;
            return self.out.write_all(b"\n");
        }
        let place = packet.ifname.clone().unwrap_or_else(|| "-".to_string());
        let what = match &packet.ip {
            Some(ip) => {
                let flow = format!("{} → {}", ip.src, ip.dst);
                let payload = match &ip.dns {
                    Some(message) => super::text::dns_text(message),
                    None => format!("{} {} bytes", proto_name(ip.l4_proto), ip.ip_len),
                };
                format!("{:<45} {payload}", flow)
            }
            None => format!(
                "(not an IPv4/IPv6 UDP or TCP packet: {} bytes, link type {})",
                packet.captured_len, packet.linktype
            ),
        };
        writeln!(self.out, "{} {place:>15}   {what}", time_of_day(packet.wall_time_ns))
    }

    /// The closing line: how many packets the file held and how many were IP.
    pub fn end(&mut self, packets: u64, ip_packets: u64) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(
                &mut self.out,
                &json!({"type": "summary", "packets": packets, "ip_packets": ip_packets, "findings": 0}),
            )?;
            self.out.write_all(b"\n")?;
        } else {
            writeln!(
                self.out,
                "-- {packets} packets ({ip_packets} IP); not written by tracer: no stages, hook paths or findings"
            )?;
        }
        self.out.flush()
    }
}
