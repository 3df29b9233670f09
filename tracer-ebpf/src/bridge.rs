//! The bridge forwarding path: every frame that enters a Linux bridge through a port,
//! leaves it through a port, or passes between the bridge and the host's own stack.
//!
//! Two BTF tracepoints cover it. `net:netif_receive_skb` fires for each device a frame
//! is received on: on a bridge port that is the frame entering the bridge, on the
//! bridge device itself it is the bridge passing the frame up to the host.
//! `net:net_dev_queue` fires for each device a frame is queued on: on a port the frame
//! leaves the bridge, on the bridge device the host is sending through it.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{lost_slot, record_kind, PacketRecord, Stage, CAPTURE_MAX};

use crate::{
    config::config,
    diagnostics::rare_failure,
    output,
    packet::{self, IpFamily, ParsedFlow},
    skb,
};

/// `skb->mac_header` when no link-layer header was set.
const MAC_HEADER_UNSET: u16 = 0xffff;

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn bridge_receive(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let _ = trace_frame(skb, Stage::BridgeIn, Stage::ToHost, lost_slot::BRIDGE_RECEIVE);
    0
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn bridge_transmit(ctx: BtfTracePointContext) -> i32 {
    let skb: *const u8 = ctx.arg(0);
    let _ = trace_frame(skb, Stage::BridgeOut, Stage::FromHost, lost_slot::BRIDGE_TRANSMIT);
    0
}

#[inline(always)]
fn trace_frame(skb: *const u8, stage_on_port: Stage, stage_on_bridge: Stage, lost_slot: u32) -> Option<()> {
    // Cheapest test first: most frames on a node are on devices that are neither a
    // bridge nor a bridge port.
    let dev = skb::read_ptr(skb, config!(layout.skb_dev))?;
    let priv_flags: u32 = skb::read(dev, config!(layout.dev_priv_flags))?;
    let stage = if priv_flags & config!(layout.flag_bridge_port) != 0 {
        stage_on_port
    } else if priv_flags & config!(layout.flag_bridge) != 0 {
        stage_on_bridge
    } else {
        return None;
    };
    let netns_inode = packet::netns_of_device(dev)?;
    let header = packet::network_header(skb)?;
    let protocol: u16 = skb::read(skb, config!(layout.skb_protocol))?;
    let parsed = packet::read_traced_flow(&header, IpFamily::of_skb_protocol(protocol)?)?;

    let stamp = output::loss_stamp(&parsed.flow);
    let mut entry = output::reserve::<PacketRecord>(lost_slot, &stamp)?;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer slot of
    // size_of::<PacketRecord>(); fields are written through the raw pointer only.
    unsafe {
        output::fill_header(core::ptr::addr_of_mut!((*record).header), record_kind::PACKET, netns_inode, skb, &stamp);
        (*record).ifindex = skb::read::<i32>(dev, config!(layout.dev_ifindex)).unwrap_or(0) as u32;
        (*record).ingress_ifindex = skb::read::<i32>(skb, config!(layout.skb_iif)).unwrap_or(0) as u32;
        (*record).packet_len = skb::read::<u32>(skb, config!(layout.skb_len)).unwrap_or(0);
        (*record).stage = stage as u8;
        (*record)._pad = [0; 3];
        (*record).flow = parsed.flow;
        packet::fill_conntrack(skb, core::ptr::addr_of_mut!((*record).conntrack));
        capture(skb, header.head, header.offset, &parsed, record);
    }
    entry.submit(0);
    Some(())
}

/// Copies the frame's first bytes, from the Ethernet header when the skb has one in
/// its linear data, else from the IP header.
///
/// # Safety
/// `record` must point at a reserved PacketRecord slot.
#[inline(always)]
unsafe fn capture(skb: *const u8, head: *const u8, network_header: u16, parsed: &ParsedFlow, record: *mut PacketRecord) {
    let mac_header: u16 = skb::read(skb, config!(layout.skb_mac_header)).unwrap_or(MAC_HEADER_UNSET);
    let start = if mac_header != MAC_HEADER_UNSET && mac_header <= network_header {
        mac_header
    } else {
        network_header
    };
    let l3_offset = network_header - start;
    // `tail` is an offset from `head` on 64-bit kernels: the end of the linear data.
    let tail: u32 = skb::read(skb, config!(layout.skb_tail)).unwrap_or(0);
    let linear = tail.saturating_sub(start as u32) as usize;
    let mut want = config!(snaplen) as usize;
    if want > linear {
        want = linear;
    }
    unsafe {
        let copied = skb::read_into::<CAPTURE_MAX>(
            &mut *core::ptr::addr_of_mut!((*record).packet),
            head.wrapping_add(start as usize),
            want,
        );
        if !copied {
            rare_failure!("the kernel refused to copy {} bytes of a traced frame at head+{}", want, start);
        }
        (*record).captured_len = if copied { want.min(CAPTURE_MAX) as u16 } else { 0 };
        (*record).l3_offset = l3_offset;
        (*record).l4_offset = l3_offset + parsed.l3_len;
        (*record).payload_offset = l3_offset + parsed.l3_len + parsed.l4_len;
    }
}
