//! Tells the ring buffer's record kinds apart and decodes each.

use tracer_common::{record_kind, DropRecord, HookRecord, IcmpRecord, PacketRecord, RecordHeader};

use super::{
    netfilter::{decode_drop, decode_hook, decode_icmp, DropEvent, HookEvent, IcmpEvent},
    packet::{decode, record_from_bytes, DecodeError, PacketEvent},
};

/// A record's loss stamps (`RecordHeader::loss_stamp_src` / `_dst`): how many records of its
/// source and destination endpoints' buckets had been lost when it was reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossStamps {
    pub src: u32,
    pub dst: u32,
}

impl LossStamps {
    pub fn of(header: &RecordHeader) -> LossStamps {
        LossStamps { src: header.loss_stamp_src, dst: header.loss_stamp_dst }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        record.flow.src_addr[..4].copy_from_slice(&[10, 244, 0, 5]);
        record.flow.dst_port_be = 53u16.to_be();
        // SAFETY: HookRecord is plain data without implicit padding.
        let bytes = unsafe { std::slice::from_raw_parts(&record as *const HookRecord as *const u8, size_of::<HookRecord>()) };
        let KernelEvent::Hook(event) = decode_record(bytes).expect("valid") else { panic!("expected a hook event") };
        assert_eq!(event.hook, crate::hooks::netfilter::Hook::Forward);
        assert!(!event.early);
        assert_eq!(event.dst.port(), 53);
    }
}
