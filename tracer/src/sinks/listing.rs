//! The plain packet listing `tracer report` prints for a capture another program wrote:
//! time, interface, addresses and DNS, as text or JSON Lines. Such a file has no stage,
//! hook path or conntrack, so these lines are not tracer's packet lines.

use std::io::{self, Write};

use serde_json::json;

use super::forms::{dns_text, printable, time_of_day};
use crate::{model::plain::PlainPacket, schema::sink::PlainSink};

pub(crate) struct Listing<W: Write> {
    out: W,
    json: bool,
}

impl<W: Write> Listing<W> {
    pub(crate) fn new(out: W, json: bool) -> Self {
        Listing { out, json }
    }
}

impl<W: Write> PlainSink for Listing<W> {
    fn packet(&mut self, packet: &PlainPacket) -> io::Result<()> {
        if self.json {
            serde_json::to_writer(&mut self.out, packet)?;
            return self.out.write_all(b"\n");
        }
        let place = packet.ifname.clone().unwrap_or_else(|| "-".to_string());
        let what = match &packet.ip {
            Some(ip) => {
                let flow = format!("{} → {}", ip.src, ip.dst);
                let payload = match &ip.dns {
                    Some(message) => dns_text(message),
                    None => format!("{} {} bytes", ip.l4_proto, ip.ip_len),
                };
                format!("{:<45} {payload}", flow)
            }
            None => format!(
                "(not an IPv4/IPv6 UDP or TCP packet: {} bytes, link type {})",
                packet.captured_len, packet.linktype
            ),
        };
        // A foreign file's interface names are whatever its writer put there.
        writeln!(self.out, "{} {:>15}   {}", time_of_day(packet.wall_time_ns), printable(&place), printable(&what))
    }

    /// The closing line: how many packets the file held and how many were IP.
    fn end(&mut self, packets: u64, ip_packets: u64) -> io::Result<()> {
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
