//! The bridge forwarding path: every frame that enters a Linux bridge through a port,
//! leaves it through a port, or passes between the bridge and the host's own stack.
//!
//! Two BTF tracepoints cover it. `net:netif_receive_skb` fires for each device a frame
//! is received on: on a bridge port that is the frame entering the bridge (a journey
//! starts), on the bridge device itself it is the bridge passing the frame up to the
//! host. `net:net_dev_queue` fires for each device a frame is queued on: on a port the
//! frame leaves the bridge (its journey ends), on the bridge device the host is sending
//! through it, on any other device a journey in flight leaves the node's bridges.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::Stage;

use crate::prelude::*;

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn bridge_receive(ctx: BtfTracePointContext) -> i32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    // SAFETY: the tracepoint's BTF-typed `sk_buff *`.
    let _ = unsafe { received(skb) };
    diagnostics::report(lost_slot::BRIDGE_RECEIVE);
    0
}

#[btf_tracepoint(function = "net_dev_queue")]
pub fn bridge_transmit(ctx: BtfTracePointContext) -> i32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    // SAFETY: the tracepoint's BTF-typed `sk_buff *`.
    let _ = unsafe { queued(skb) };
    diagnostics::report(lost_slot::BRIDGE_TRANSMIT);
    0
}

/// What every frame is looked at first: the device it is on and that device's network
/// namespace, then its addresses and ports (the port filter).
struct Frame {
    header: NetworkHeader,
    parsed: &'static ParsedFlow,
    priv_flags: u32,
    netns_inode: u32,
    ifindex: u32,
}

/// The traced frame `skb` carries on a device of the watched namespace, when the device's
/// `priv_flags` share a bit with `device_flags` (0: any device). The tests that are plain
/// loads come first: a frame on another namespace's device, or on a device no stage is
/// about, is let go before the packet is read at all.
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
unsafe fn traced_frame(skb: *const u8, slot: u32, device_flags: u32) -> Option<Frame> {
    // SAFETY (loads): `skb` is BTF-typed and `dev` a pointer field loaded from it.
    let protocol: u16 = unsafe { skb::load(skb, config!(layout.skb_protocol)) };
    let family = IpFamily::of_skb_protocol(protocol)?;
    let dev = unsafe { skb::load_ptr(skb, config!(layout.skb_dev)) }?;
    let priv_flags: u32 = unsafe { skb::load(dev, config!(layout.dev_priv_flags)) };
    if device_flags != 0 && priv_flags & device_flags == 0 {
        return None;
    }
    unsafe { packet::netns_of_device(dev) }?;
    let header = unsafe { packet::network_header(skb) }?;
    let parsed = packet::read_traced_flow(&header, family, slot)?;
    // Loaded again rather than held across the read: held, they cost the stack that older
    // kernels (6.1) limit to 512 bytes across a program and its calls.
    let dev = unsafe { skb::load_ptr(skb, config!(layout.skb_dev)) }?;
    let netns_inode = unsafe { packet::netns_of_device(dev) }?;
    Some(Frame {
        header,
        parsed,
        priv_flags: unsafe { skb::load(dev, config!(layout.dev_priv_flags)) },
        netns_inode,
        ifindex: unsafe { skb::load::<i32>(dev, config!(layout.dev_ifindex)) } as u32,
    })
}

/// # Safety
/// As for [`traced_frame`].
#[inline(always)]
unsafe fn received(skb: *const u8) -> Option<()> {
    let slot = lost_slot::BRIDGE_RECEIVE;
    let port = config!(layout.flag_bridge_port);
    let bridge = config!(layout.flag_bridge);
    // Frames are received on every device; only those on a bridge's ports and the bridge
    // itself make stages.
    let frame = unsafe { traced_frame(skb, slot, port | bridge) }?;
    let stage = if frame.priv_flags & port != 0 { Stage::BridgeIn } else { Stage::ToHost };
    let step = unsafe { stage_step(skb, &frame, stage, slot) };
    // A frame entering the bridge is a new journey, whatever the skb carried before.
    if unsafe { journey::step(&step, stage == Stage::BridgeIn) } {
        unsafe { journey::copy_fragment_payload(skb) };
    }
    Some(())
}

/// # Safety
/// As for [`traced_frame`].
#[inline(always)]
unsafe fn queued(skb: *const u8) -> Option<()> {
    let slot = lost_slot::BRIDGE_TRANSMIT;
    let port = config!(layout.flag_bridge_port);
    if config!(findings_only) != 0 {
        // Only what leaves by a port can be a finding here: frames on other devices are let
        // go before the packet is read.
        let frame = unsafe { traced_frame(skb, slot, port) }?;
        let (netns_inode, ifindex) = (frame.netns_inode, frame.ifindex);
        let at = findings_only::AtPort { skb, header: &frame.header, parsed: frame.parsed, netns_inode, ifindex, slot };
        unsafe { findings_only::bridge_out(&at) };
        return Some(());
    }
    // Any device: leaving by one that is not a bridge's ends a journey under way.
    let frame = unsafe { traced_frame(skb, slot, 0) }?;
    let on_port = frame.priv_flags & port != 0;
    let on_bridge = frame.priv_flags & config!(layout.flag_bridge) != 0;
    let ifindex = frame.ifindex;
    let stage = if on_port { Stage::BridgeOut } else { Stage::FromHost };
    let step = unsafe { stage_step(skb, &frame, stage, slot) };
    if on_bridge {
        if unsafe { journey::step(&step, false) } {
            unsafe { journey::copy_fragment_payload(skb) };
        }
        return Some(());
    }
    let end = End {
        kind: if on_port { journey_end::LEFT_BRIDGE } else { journey_end::LEFT_DEVICE },
        ifindex,
        drop_reason: 0,
        drop_location: 0,
    };
    // Leaving by a port is a step of its own; leaving by another device only ends a
    // journey already under way (most traffic of the port never touches a bridge).
    unsafe { journey::finish(&step, on_port, &end) };
    Some(())
}

/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
unsafe fn stage_step<'a>(skb: *const u8, frame: &'a Frame, stage: Stage, slot: u32) -> Step<'a> {
    // SAFETY (loads): `skb` is BTF-typed.
    Step {
        skb,
        kind: step_kind::STAGE,
        point: stage as u8,
        pf: 0,
        ifindex: frame.ifindex,
        other_ifindex: unsafe { skb::load::<i32>(skb, config!(layout.skb_iif)) } as u32,
        packet_len: unsafe { skb::load::<u32>(skb, config!(layout.skb_len)) },
        header: &frame.header,
        parsed: frame.parsed,
        netns_inode: frame.netns_inode,
        slot,
    }
}
