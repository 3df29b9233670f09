//! Decodes the kernel's fixed-size `PacketRecord` into a packet event with Rust types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{conntrack_state, ConntrackRecord, CtTuple, Flow, PacketRecord, Stage, CAPTURE_MAX};

use super::{dns::DnsMessage, record::LossStamps};

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub netns_inode: u32,
    pub stage: Stage,
    pub ifindex: u32,
    pub ingress_ifindex: u32,
    /// Length of the IP packet (header included), the same at every stage; falls back
    /// to the skb length when the IP header was not captured.
    pub ip_len: u32,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub conntrack: Conntrack,
    /// The DNS message the payload carries, when it is DNS (decided by the analysis, which
    /// knows the DNS ports and the TCP streams: see `events::dns_decode`).
    pub dns: Option<DnsMessage>,
    /// The frame's first bytes as copied in the kernel.
    pub captured: Vec<u8>,
    /// Offsets in `captured` of the IP header (0 when there is no link-layer header), the
    /// transport header and the transport payload.
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub payload_offset: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conntrack {
    /// Nothing attached: conntrack has not seen the frame on this path.
    None,
    Untracked,
    Attached(ConntrackEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// `enum ip_conntrack_info` of this frame's reference.
    pub ctinfo: u8,
    /// IPS_* bits; `None` when the running kernel's BTF has no `nf_conn` to read it by.
    pub status: Option<u32>,
    pub original: Option<FlowTuple>,
    pub reply: Option<FlowTuple>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A NAT the conntrack entry applies, as the original direction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// The original destination `from` is rewritten to `to` (e.g. a ClusterIP to a backend).
    Destination { from: SocketAddr, to: SocketAddr },
    /// The original source `from` is rewritten to `to` (e.g. MASQUERADE).
    Source { from: SocketAddr, to: SocketAddr },
}

/// Status bits of `enum ip_conntrack_status` (uapi, stable across kernels), in bit order.
const STATUS_BITS: [&str; 16] = [
    "expected",
    "seen_reply",
    "assured",
    "confirmed",
    "src_nat",
    "dst_nat",
    "seq_adjust",
    "src_nat_done",
    "dst_nat_done",
    "dying",
    "fixed_timeout",
    "template",
    "nat_clash",
    "helper",
    "offload",
    "hw_offload",
];
const IPS_SRC_NAT: u32 = 1 << 4;
const IPS_DST_NAT: u32 = 1 << 5;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    WrongSize(usize),
    UnknownKind(u32),
    UnknownStage(u8),
    UnknownHook(u8),
    UnknownIpVersion(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::WrongSize(n) => write!(
                f,
                "ring buffer record of {n} bytes is too short for its kind: kernel programs and tracer binary are from different builds"
            ),
            DecodeError::UnknownKind(k) => write!(f, "record of unknown kind {k}: kernel programs and tracer binary are from different builds"),
            DecodeError::UnknownStage(s) => write!(f, "record with unknown stage {s}"),
            DecodeError::UnknownHook(h) => write!(f, "record with unknown netfilter hook {h}"),
            DecodeError::UnknownIpVersion(v) => write!(f, "record with unknown IP version {v}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Copies a record out of ring buffer memory. The slot is only 8-byte aligned by the
/// kernel, so read it unaligned rather than casting.
pub fn record_from_bytes<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::WrongSize(bytes.len()));
    }
    // SAFETY: length checked; the record types are plain integers and byte arrays
    // (aya::Pod), so every bit pattern is a valid value.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Source and destination of a record's flow.
pub fn flow_addresses(flow: &Flow) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let src = SocketAddr::new(ip_from(flow.ip_version, &flow.src_addr)?, u16::from_be(flow.src_port_be));
    let dst = SocketAddr::new(ip_from(flow.ip_version, &flow.dst_addr)?, u16::from_be(flow.dst_port_be));
    Ok((src, dst))
}

pub fn decode(record: &PacketRecord) -> Result<PacketEvent, DecodeError> {
    let stage = Stage::from_u8(record.stage).ok_or(DecodeError::UnknownStage(record.stage))?;
    let (src, dst) = flow_addresses(&record.flow)?;

    let captured_len = (record.captured_len as usize).min(CAPTURE_MAX);
    let captured = record.packet[..captured_len].to_vec();

    Ok(PacketEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: LossStamps::of(&record.header),
        netns_inode: record.header.netns_inode,
        stage,
        ifindex: record.ifindex,
        ingress_ifindex: record.ingress_ifindex,
        ip_len: ip_length(&captured, record.l3_offset as usize, record.flow.ip_version).unwrap_or(record.packet_len),
        l4_proto: record.flow.l4_proto,
        src,
        dst,
        conntrack: decode_conntrack(&record.conntrack, record.flow.ip_version)?,
        dns: None,
        captured,
        l3_offset: record.l3_offset as usize,
        l4_offset: record.l4_offset as usize,
        payload_offset: record.payload_offset as usize,
    })
}

pub fn decode_conntrack(record: &ConntrackRecord, ip_version: u8) -> Result<Conntrack, DecodeError> {
    Ok(match record.state {
        conntrack_state::ATTACHED => {
            // All-zero tuples mean the kernel had no layout to read the entry with.
            let known = record.original != CtTuple::default();
            let tuple = |t: &CtTuple| -> Result<Option<FlowTuple>, DecodeError> {
                if !known {
                    return Ok(None);
                }
                Ok(Some(FlowTuple {
                    src: SocketAddr::new(ip_from(ip_version, &t.src_addr)?, u16::from_be(t.src_port_be)),
                    dst: SocketAddr::new(ip_from(ip_version, &t.dst_addr)?, u16::from_be(t.dst_port_be)),
                }))
            };
            Conntrack::Attached(ConntrackEntry {
                ctinfo: record.info,
                status: known.then_some(record.status),
                original: tuple(&record.original)?,
                reply: tuple(&record.reply)?,
            })
        }
        conntrack_state::UNTRACKED => Conntrack::Untracked,
        _ => Conntrack::None,
    })
}

/// The IP header's own length field: unlike `skb->len` it does not depend on whether
/// the link-layer header is still in front of the packet at this stage.
fn ip_length(captured: &[u8], l3_offset: usize, version: u8) -> Option<u32> {
    let field = |at: usize| -> Option<u32> {
        let bytes = captured.get(l3_offset + at..l3_offset + at + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]) as u32)
    };
    match version {
        4 => field(2),
        6 => field(4).map(|payload| payload + 40),
        _ => None,
    }
}

fn ip_from(version: u8, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match version {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        other => Err(DecodeError::UnknownIpVersion(other)),
    }
}

/// The stage names used in every output (and documented in README.md).
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::BridgeIn => "bridge-in",
        Stage::BridgeOut => "bridge-out",
        Stage::ToHost => "to-host",
        Stage::FromHost => "from-host",
    }
}

impl PacketEvent {
    pub fn proto_name(&self) -> &'static str {
        match self.l4_proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "other",
        }
    }
}

impl ConntrackEntry {
    pub fn ctinfo_name(&self) -> &'static str {
        match self.ctinfo {
            0 => "established",
            1 => "related",
            2 => "new",
            3 => "established_reply",
            4 => "related_reply",
            _ => "unknown",
        }
    }

    /// Whether this packet travels in the entry's reply direction
    /// (IP_CT_ESTABLISHED_REPLY or IP_CT_RELATED_REPLY).
    pub fn is_reply_direction(&self) -> bool {
        matches!(self.ctinfo, 3 | 4)
    }

    pub fn status_names(&self) -> Vec<&'static str> {
        let Some(status) = self.status else { return Vec::new() };
        STATUS_BITS
            .iter()
            .enumerate()
            .filter(|(bit, _)| status & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// The translations this entry applies. The reply tuple is what the other end
    /// answers to, so a rewritten destination shows as the reply's source and a
    /// rewritten source as the reply's destination.
    pub fn nat(&self) -> Vec<Nat> {
        let (Some(status), Some(original), Some(reply)) = (self.status, self.original, self.reply) else {
            return Vec::new();
        };
        let mut nats = Vec::new();
        if status & IPS_DST_NAT != 0 && original.dst != reply.src {
            nats.push(Nat::Destination { from: original.dst, to: reply.src });
        }
        if status & IPS_SRC_NAT != 0 && original.src != reply.dst {
            nats.push(Nat::Source { from: original.src, to: reply.dst });
        }
        nats
    }
}

impl std::fmt::Display for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nat::Destination { from, to } => write!(f, "dnat {from}→{to}"),
            Nat::Source { from, to } => write!(f, "snat {from}→{to}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank_record() -> PacketRecord {
        // SAFETY: all-zero is a valid PacketRecord (plain integers and arrays).
        unsafe { std::mem::zeroed() }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut raw = [0; 16];
        raw[..4].copy_from_slice(&a);
        raw
    }

    fn udp_tuple(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> CtTuple {
        CtTuple {
            src_addr: v4(src),
            dst_addr: v4(dst),
            src_port_be: src_port.to_be(),
            dst_port_be: dst_port.to_be(),
            protonum: IPPROTO_UDP,
            _pad: [0; 3],
        }
    }

    #[test]
    fn ip_length_comes_from_the_header() {
        let mut record = blank_record();
        record.stage = Stage::BridgeIn as u8;
        record.flow.ip_version = 4;
        record.l3_offset = 14;
        record.captured_len = 34;
        record.packet[14] = 0x45;
        record.packet[16..18].copy_from_slice(&81u16.to_be_bytes());
        record.packet_len = 95;
        assert_eq!(decode(&record).expect("valid record").ip_len, 81);
        record.captured_len = 10;
        assert_eq!(decode(&record).expect("valid record").ip_len, 95, "falls back to skb->len");
    }

    #[test]
    fn decodes_addresses_ports_and_stage() {
        let mut record = blank_record();
        record.stage = Stage::BridgeOut as u8;
        record.flow.ip_version = 4;
        record.flow.l4_proto = IPPROTO_UDP;
        record.flow.src_addr = v4([10, 244, 0, 7]);
        record.flow.dst_addr = v4([10, 244, 0, 5]);
        record.flow.src_port_be = 53u16.to_be();
        record.flow.dst_port_be = 41234u16.to_be();
        let event = decode(&record).expect("valid record");
        assert_eq!(event.stage, Stage::BridgeOut);
        assert_eq!(event.src.to_string(), "10.244.0.7:53");
        assert_eq!(event.dst.to_string(), "10.244.0.5:41234");
        assert_eq!(event.conntrack, Conntrack::None);
        assert!(event.dns.is_none());
    }

    #[test]
    fn ipv6_addresses_render_bracketed() {
        let mut record = blank_record();
        record.stage = Stage::BridgeIn as u8;
        record.flow.ip_version = 6;
        record.flow.src_addr = "fd00:10:244::5".parse::<Ipv6Addr>().expect("literal").octets();
        record.flow.dst_addr = "fd00:10:96::a".parse::<Ipv6Addr>().expect("literal").octets();
        record.flow.src_port_be = 5000u16.to_be();
        record.flow.dst_port_be = 53u16.to_be();
        let event = decode(&record).expect("valid record");
        assert_eq!(event.src.to_string(), "[fd00:10:244::5]:5000");
        assert_eq!(event.dst.to_string(), "[fd00:10:96::a]:53");
    }

    #[test]
    fn dnat_entry_names_the_translation() {
        let mut record = blank_record();
        record.stage = Stage::BridgeOut as u8;
        record.flow.ip_version = 4;
        record.conntrack.state = conntrack_state::ATTACHED;
        record.conntrack.info = 2;
        record.conntrack.status = (1 << 3) | IPS_DST_NAT | (1 << 8);
        record.conntrack.original = udp_tuple([10, 244, 0, 5], 41234, [10, 96, 0, 10], 53);
        record.conntrack.reply = udp_tuple([10, 244, 0, 7], 53, [10, 244, 0, 5], 41234);
        let event = decode(&record).expect("valid record");
        let Conntrack::Attached(entry) = event.conntrack else { panic!("expected attached entry") };
        assert_eq!(entry.ctinfo_name(), "new");
        assert_eq!(entry.status_names(), vec!["confirmed", "dst_nat", "dst_nat_done"]);
        let nats = entry.nat();
        assert_eq!(nats.len(), 1);
        assert_eq!(nats[0].to_string(), "dnat 10.96.0.10:53→10.244.0.7:53");
    }

    #[test]
    fn attached_without_layout_has_no_tuples() {
        let mut record = blank_record();
        record.stage = Stage::BridgeIn as u8;
        record.flow.ip_version = 4;
        record.conntrack.state = conntrack_state::ATTACHED;
        let event = decode(&record).expect("valid record");
        let Conntrack::Attached(entry) = event.conntrack else { panic!("expected attached entry") };
        assert_eq!(entry.status, None);
        assert!(entry.nat().is_empty());
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert_eq!(record_from_bytes::<PacketRecord>(&[0u8; 10]).err(), Some(DecodeError::WrongSize(10)));
        let mut record = blank_record();
        record.stage = 99;
        assert_eq!(decode(&record).err(), Some(DecodeError::UnknownStage(99)));
        record.stage = 1;
        record.flow.ip_version = 5;
        assert_eq!(decode(&record).err(), Some(DecodeError::UnknownIpVersion(5)));
    }
}
