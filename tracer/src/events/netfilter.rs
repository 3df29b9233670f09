//! Decodes what the netfilter-hook, drop and ICMP programs report.

use std::net::SocketAddr;

use tracer_common::{hook_position, DropRecord, HookRecord, IcmpRecord};

use super::{
    packet::{decode_conntrack, flow_addresses, Conntrack, DecodeError},
    record::LossStamps,
};
use crate::hooks::netfilter::Hook;

/// A traced packet passing a netfilter hook.
#[derive(Clone, Debug)]
pub struct HookEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub ipv6: bool,
    pub hook: Hook,
    /// True at the start of the hook's priority range, false at its end.
    pub early: bool,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub conntrack: Conntrack,
}

/// A traced packet freed as dropped.
#[derive(Clone, Debug)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub netns_inode: u32,
    pub ifindex: u32,
    /// `enum skb_drop_reason` value; named through the kernel's BTF.
    pub reason: u32,
    pub location: u64,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The kernel answered a traced packet with ICMP (IPv4).
#[derive(Clone, Debug)]
pub struct IcmpEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub ifindex: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub l4_proto: u8,
    /// The packet that was answered.
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

pub fn decode_hook(record: &HookRecord) -> Result<HookEvent, DecodeError> {
    let (src, dst) = flow_addresses(&record.flow)?;
    Ok(HookEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: LossStamps::of(&record.header),
        ipv6: record.flow.ip_version == 6,
        hook: Hook::from_number(record.hook).ok_or(DecodeError::UnknownHook(record.hook))?,
        early: record.position == hook_position::EARLY,
        in_ifindex: record.in_ifindex,
        out_ifindex: record.out_ifindex,
        l4_proto: record.flow.l4_proto,
        src,
        dst,
        conntrack: decode_conntrack(&record.conntrack, record.flow.ip_version)?,
    })
}

pub fn decode_drop(record: &DropRecord) -> Result<DropEvent, DecodeError> {
    let (src, dst) = flow_addresses(&record.flow)?;
    Ok(DropEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: LossStamps::of(&record.header),
        netns_inode: record.header.netns_inode,
        ifindex: record.ifindex,
        reason: record.reason,
        location: record.location,
        l4_proto: record.flow.l4_proto,
        src,
        dst,
    })
}

pub fn decode_icmp(record: &IcmpRecord) -> Result<IcmpEvent, DecodeError> {
    let (src, dst) = flow_addresses(&record.flow)?;
    Ok(IcmpEvent {
        timestamp_ns: record.header.timestamp_ns,
        skb_id: record.header.skb_id,
        loss: LossStamps::of(&record.header),
        ifindex: record.ifindex,
        icmp_type: record.icmp_type,
        icmp_code: record.icmp_code,
        l4_proto: record.flow.l4_proto,
        src,
        dst,
    })
}
