//! Where traced packets end: freed as dropped (`skb:kfree_skb`, with the kernel's
//! drop reason) or answered with ICMP by the kernel (`icmp:icmp_send`, which a
//! REJECT rule calls with the packet it rejects).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{lost_slot, record_kind, DropRecord, IcmpRecord};

use crate::{
    config::config,
    output,
    packet::{self, IpFamily, ParsedFlow},
    skb,
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn packet_dropped(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    let _ = trace_drop(skb, location, reason as u32);
    0
}

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_answered(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    let _ = trace_icmp(skb, icmp_type as u8, icmp_code as u8);
    0
}

/// The traced packet an skb carries, with the device it is on and its namespace.
#[inline(always)]
fn traced_packet(skb: *const u8) -> Option<(u32, u32, ParsedFlow)> {
    let dev = skb::read_ptr(skb, config!(layout.skb_dev))?;
    let netns_inode = packet::netns_of_device(dev)?;
    let header = packet::network_header(skb)?;
    let protocol: u16 = skb::read(skb, config!(layout.skb_protocol))?;
    let parsed = packet::read_traced_flow(&header, IpFamily::of_skb_protocol(protocol)?)?;
    let ifindex = skb::read::<i32>(dev, config!(layout.dev_ifindex)).unwrap_or(0) as u32;
    Some((netns_inode, ifindex, parsed))
}

#[inline(always)]
fn trace_drop(skb: *const u8, location: u64, reason: u32) -> Option<()> {
    // Frees that are not drops are by far the most common: leave them first.
    if reason == config!(layout.reason_not_dropped_yet) || reason == config!(layout.reason_consumed) {
        return None;
    }
    let (netns_inode, ifindex, parsed) = traced_packet(skb)?;
    let stamp = output::loss_stamp(&parsed.flow);
    let mut entry = output::reserve::<DropRecord>(lost_slot::KFREE_SKB, &stamp)?;
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of size_of::<DropRecord>().
    unsafe {
        output::fill_header(core::ptr::addr_of_mut!((*record).header), record_kind::DROP, netns_inode, skb, &stamp);
        (*record).ifindex = ifindex;
        (*record).reason = reason;
        (*record).location = location;
        (*record).flow = parsed.flow;
    }
    entry.submit(0);
    Some(())
}

#[inline(always)]
fn trace_icmp(skb: *const u8, icmp_type: u8, icmp_code: u8) -> Option<()> {
    let (netns_inode, ifindex, parsed) = traced_packet(skb)?;
    let stamp = output::loss_stamp(&parsed.flow);
    let mut entry = output::reserve::<IcmpRecord>(lost_slot::ICMP_SEND, &stamp)?;
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of size_of::<IcmpRecord>().
    unsafe {
        output::fill_header(core::ptr::addr_of_mut!((*record).header), record_kind::ICMP, netns_inode, skb, &stamp);
        (*record).ifindex = ifindex;
        (*record).icmp_type = icmp_type;
        (*record).icmp_code = icmp_code;
        (*record)._pad = [0; 2];
        (*record).flow = parsed.flow;
    }
    entry.submit(0);
    Some(())
}
