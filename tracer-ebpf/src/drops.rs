//! Where traced packets end badly: freed as dropped (`skb:kfree_skb`, with the kernel's
//! drop reason), or answered with ICMP by the kernel (`icmp:icmp_send`, which a REJECT
//! rule calls with the packet it rejects, before dropping it).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::NO_DROP_REASON;

use crate::prelude::*;

#[btf_tracepoint(function = "kfree_skb")]
pub fn packet_dropped(ctx: BtfTracePointContext) -> i32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason: u64 = ctx.arg(2);
    // SAFETY: the tracepoint's BTF-typed `sk_buff *`.
    let _ = unsafe { dropped(skb, location, reason as u32) };
    diagnostics::report(lost_slot::KFREE_SKB);
    0
}

/// Kernels before 5.17 call the tracepoint without a reason: every call is a drop
/// (consumed packets have a tracepoint of their own there), and userspace infers a
/// netfilter drop from the hook the packet never left.
#[btf_tracepoint(function = "kfree_skb")]
pub fn packet_dropped_no_reason(ctx: BtfTracePointContext) -> i32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    // SAFETY: the tracepoint's BTF-typed `sk_buff *`.
    let _ = unsafe { dropped(skb, location, NO_DROP_REASON) };
    diagnostics::report(lost_slot::KFREE_SKB);
    0
}

#[btf_tracepoint(function = "icmp_send")]
pub fn icmp_answered(ctx: BtfTracePointContext) -> i32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    let icmp_type: u64 = ctx.arg(1);
    let icmp_code: u64 = ctx.arg(2);
    // SAFETY: the tracepoint's BTF-typed `sk_buff *`.
    let _ = unsafe { answered(skb, icmp_type as u8, icmp_code as u8) };
    0
}

/// The traced packet an skb carries, with the device it is on and its namespace.
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
unsafe fn traced_packet(skb: *const u8, slot: u32) -> Option<(u32, u32, NetworkHeader, &'static ParsedFlow)> {
    // SAFETY (loads): `skb` is BTF-typed and `dev` a pointer field loaded from it.
    let protocol: u16 = unsafe { skb::load(skb, config!(layout.skb_protocol)) };
    let family = IpFamily::of_skb_protocol(protocol)?;
    // Plain loads before the packet is read: another namespace's drop goes at once.
    let dev = unsafe { skb::load_ptr(skb, config!(layout.skb_dev)) }?;
    let netns_inode = unsafe { packet::netns_of_device(dev) }?;
    let header = unsafe { packet::network_header(skb) }?;
    let parsed = packet::read_traced_flow(&header, family, slot)?;
    let ifindex = (unsafe { skb::load::<i32>(dev, config!(layout.dev_ifindex)) }) as u32;
    Some((netns_inode, ifindex, header, parsed))
}

/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
unsafe fn dropped(skb: *const u8, location: u64, reason: u32) -> Option<()> {
    // Frees that are not drops are by far the most common: leave them first. (A kernel
    // without the reasons has NO_DROP_REASON for them, which only a drop without a reason
    // carries.)
    if reason != NO_DROP_REASON
        && (reason == config!(layout.reason_not_dropped_yet) || reason == config!(layout.reason_consumed))
    {
        return None;
    }
    let slot = lost_slot::KFREE_SKB;
    let (netns_inode, ifindex, header, parsed) = unsafe { traced_packet(skb, slot) }?;
    if config!(findings_only) == 0 && journey::in_flight(skb) {
        let step = Step {
            skb,
            kind: step_kind::STAGE,
            point: 0,
            pf: 0,
            ifindex,
            other_ifindex: 0,
            packet_len: 0,
            header: &header,
            parsed,
            netns_inode,
            slot,
        };
        let end = End { kind: journey_end::DROPPED, ifindex, drop_reason: reason, drop_location: location };
        unsafe { journey::finish(&step, false, &end) };
        return Some(());
    }
    unsafe { findings_only::send_drop(skb, slot, netns_inode, ifindex, reason, location, parsed) };
    Some(())
}

/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
unsafe fn answered(skb: *const u8, icmp_type: u8, icmp_code: u8) -> Option<()> {
    let slot = lost_slot::ICMP_SEND;
    let _ = unsafe { traced_packet(skb, slot) }?;
    if config!(findings_only) != 0 {
        findings_only::note_icmp(skb, icmp_type, icmp_code);
    } else {
        journey::note_icmp(skb, icmp_type, icmp_code);
    }
    Some(())
}
