//! Decodes the ring buffer's records into the model's events: tells the kinds apart by
//! their common header and reads each kind's fields with Rust types.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tracer_common::{
    conntrack_state, hook_position, record_kind, ConntrackRecord, CtTuple, DropRecord, Flow, HookRecord, IcmpRecord,
    PacketRecord, RecordHeader, Stage, CAPTURE_MAX,
};

use crate::model::{
    hook::{Family, Hook},
    netfilter::{DropEvent, HookEvent, IcmpEvent},
    packet::{Conntrack, ConntrackEntry, FlowTuple, L4Proto, LossStamps, PacketEvent},
};

fn loss_stamps(header: &RecordHeader) -> LossStamps {
    LossStamps { src: header.loss_stamp_src, dst: header.loss_stamp_dst }
}

#[derive(Clone, Debug)]
pub enum KernelEvent {
    Packet(PacketEvent),
    Hook(HookEvent),
    Drop(DropEvent),
    Icmp(IcmpEvent),
}

pub fn decode_record(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let kind_bytes: [u8; 4] = bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or(DecodeError::WrongSize(bytes.len()))?;
    match u32::from_ne_bytes(kind_bytes) {
        record_kind::PACKET => Ok(KernelEvent::Packet(decode(&record_from_bytes::<PacketRecord>(bytes)?)?)),
        record_kind::HOOK => Ok(KernelEvent::Hook(decode_hook(&record_from_bytes::<HookRecord>(bytes)?)?)),
        record_kind::DROP => Ok(KernelEvent::Drop(decode_drop(&record_from_bytes::<DropRecord>(bytes)?)?)),
        record_kind::ICMP => Ok(KernelEvent::Icmp(decode_icmp(&record_from_bytes::<IcmpRecord>(bytes)?)?)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    WrongSize(usize),
    UnknownKind(u32),
    UnknownStage(u8),
    UnknownHook(u8),
    UnknownIpVersion(u8),
    UnknownProtocol(u8),
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
            DecodeError::UnknownProtocol(p) => write!(f, "record with untraced protocol {p}"),
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

/// The family and transport protocol of a record's flow.
fn family_and_protocol(flow: &Flow) -> Result<(Family, L4Proto), DecodeError> {
    let family = match flow.ip_version {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        other => return Err(DecodeError::UnknownIpVersion(other)),
    };
    let proto = L4Proto::from_number(flow.l4_proto).ok_or(DecodeError::UnknownProtocol(flow.l4_proto))?;
    Ok((family, proto))
}

pub fn decode(record: &PacketRecord) -> Result<PacketEvent, DecodeError> {
    let stage = Stage::from_u8(record.stage).ok_or(DecodeError::UnknownStage(record.stage))?;
    let (src, dst) = flow_addresses(&record.flow)?;
    let (family, l4_proto) = family_and_protocol(&record.flow)?;

    let captured_len = (record.captured_len as usize).min(CAPTURE_MAX);
    let captured = record.packet[..captured_len].to_vec();

    Ok(PacketEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: loss_stamps(&record.header),
        netns_inode: record.header.netns_inode,
        stage,
        ifindex: record.ifindex,
        ingress_ifindex: record.ingress_ifindex,
        ip_len: ip_length(&captured, record.l3_offset as usize, record.flow.ip_version).unwrap_or(record.packet_len),
        family,
        l4_proto,
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

pub fn decode_hook(record: &HookRecord) -> Result<HookEvent, DecodeError> {
    let (src, _) = flow_addresses(&record.flow)?;
    let (family, _) = family_and_protocol(&record.flow)?;
    Ok(HookEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: loss_stamps(&record.header),
        family,
        hook: Hook::from_number(record.hook).ok_or(DecodeError::UnknownHook(record.hook))?,
        early: record.position == hook_position::EARLY,
        in_ifindex: record.in_ifindex,
        out_ifindex: record.out_ifindex,
        src,
        conntrack: decode_conntrack(&record.conntrack, record.flow.ip_version)?,
    })
}

pub fn decode_drop(record: &DropRecord) -> Result<DropEvent, DecodeError> {
    let (src, dst) = flow_addresses(&record.flow)?;
    let (family, l4_proto) = family_and_protocol(&record.flow)?;
    Ok(DropEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: loss_stamps(&record.header),
        netns_inode: record.header.netns_inode,
        ifindex: record.ifindex,
        reason: record.reason,
        location: record.location,
        family,
        l4_proto,
        src,
        dst,
    })
}

pub fn decode_icmp(record: &IcmpRecord) -> Result<IcmpEvent, DecodeError> {
    let (src, dst) = flow_addresses(&record.flow)?;
    let (_, l4_proto) = family_and_protocol(&record.flow)?;
    Ok(IcmpEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: loss_stamps(&record.header),
        ifindex: record.ifindex,
        icmp_type: record.icmp_type,
        icmp_code: record.icmp_code,
        l4_proto,
        src,
        dst,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::packet::{IPPROTO_UDP, IPS_DST_NAT};

    #[test]
    fn unknown_and_short_records_are_errors() {
        assert_eq!(decode_record(&[1, 0]).err(), Some(DecodeError::WrongSize(2)));
        assert_eq!(decode_record(&99u32.to_ne_bytes()).err(), Some(DecodeError::UnknownKind(99)));
        // A hook kind with a packet-sized tail missing.
        assert_eq!(decode_record(&record_kind::HOOK.to_ne_bytes()).err(), Some(DecodeError::WrongSize(4)));
    }

    #[test]
    fn hook_record_decodes() {
        let mut record = HookRecord { hook: 2, position: tracer_common::hook_position::LATE, ..Default::default() };
        record.header.kind = record_kind::HOOK;
        record.flow.ip_version = 4;
        record.flow.l4_proto = IPPROTO_UDP;
        record.flow.src_addr[..4].copy_from_slice(&[10, 244, 0, 5]);
        record.flow.dst_port_be = 53u16.to_be();
        // SAFETY: HookRecord is plain data without implicit padding.
        let bytes = unsafe { std::slice::from_raw_parts(&record as *const HookRecord as *const u8, size_of::<HookRecord>()) };
        let KernelEvent::Hook(event) = decode_record(bytes).expect("valid") else { panic!("expected a hook event") };
        assert_eq!(event.hook, crate::model::hook::Hook::Forward);
        assert!(!event.early);
        assert_eq!(event.src.ip(), std::net::Ipv4Addr::new(10, 244, 0, 5));
    }


    /// All zero but the protocol: UDP, as most tests want.
    fn blank_record() -> PacketRecord {
        // SAFETY: all-zero is a valid PacketRecord (plain integers and arrays).
        let mut record: PacketRecord = unsafe { std::mem::zeroed() };
        record.flow.l4_proto = IPPROTO_UDP;
        record
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
        record.flow.ip_version = 4;
        record.flow.l4_proto = 1;
        assert_eq!(decode(&record).err(), Some(DecodeError::UnknownProtocol(1)));
    }
}
