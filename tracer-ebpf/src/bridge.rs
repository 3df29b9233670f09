//! The bridge forwarding path: every frame that enters a Linux bridge through a port,
//! leaves it through a port, or passes between the bridge and the host's own stack.
//!
//! Two BTF tracepoints cover it. `net:netif_receive_skb` fires for each device a frame
//! is received on: on a bridge port that is the frame entering the bridge, on the
//! bridge device itself it is the bridge passing the frame up to the host.
//! `net:net_dev_queue` fires for each device a frame is queued on: on a port the frame
//! leaves the bridge, on the bridge device the host is sending through it.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{conntrack_state, lost_slot, CtTuple, PacketRecord, Stage, CAPTURE_MAX};

use crate::{config::config, output, skb};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `skb->mac_header` when no link-layer header was set.
const MAC_HEADER_UNSET: u16 = 0xffff;
/// The low bits of `skb->_nfct` hold the `enum ip_conntrack_info`.
const NFCT_INFO_MASK: u64 = 7;

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

/// Addresses and ports of a frame, found before anything is reserved so that the
/// frames we do not trace cost only these few reads.
struct Flow {
    ip_version: u8,
    l4_proto: u8,
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    src_port_be: u16,
    dst_port_be: u16,
    l3_len: u16,
    l4_len: u16,
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

    let net = skb::read_ptr(dev, config!(layout.dev_net))?;
    let netns_inode: u32 = skb::read(net, config!(layout.net_inum))?;
    let wanted_netns = config!(netns_inode);
    if wanted_netns != 0 && netns_inode != wanted_netns {
        return None;
    }

    let head = skb::read_ptr(skb, config!(layout.skb_head))?;
    let network_header: u16 = skb::read(skb, config!(layout.skb_network_header))?;
    let l3 = head.wrapping_add(network_header as usize);
    let protocol: u16 = skb::read(skb, config!(layout.skb_protocol))?;
    let flow = read_flow(l3, u16::from_be(protocol))?;

    let port = config!(port_be);
    if port != 0 && flow.src_port_be != port && flow.dst_port_be != port {
        return None;
    }

    let Some(mut entry) = output::EVENTS.reserve::<PacketRecord>(0) else {
        output::count_lost(lost_slot);
        return None;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points at a reserved, exclusively owned ring buffer slot of
    // size_of::<PacketRecord>(); fields are written through the raw pointer only.
    unsafe {
        (*record).timestamp_ns = bpf_ktime_get_ns();
        (*record).skb_id = skb as u64;
        (*record).netns_inode = netns_inode;
        (*record).ifindex = skb::read::<i32>(dev, config!(layout.dev_ifindex)).unwrap_or(0) as u32;
        (*record).ingress_ifindex = skb::read::<i32>(skb, config!(layout.skb_iif)).unwrap_or(0) as u32;
        (*record).packet_len = skb::read::<u32>(skb, config!(layout.skb_len)).unwrap_or(0);
        (*record).stage = stage as u8;
        (*record).ip_version = flow.ip_version;
        (*record).l4_proto = flow.l4_proto;
        (*record)._pad0 = [0; 3];
        (*record).src_port_be = flow.src_port_be;
        (*record).dst_port_be = flow.dst_port_be;
        (*record).src_addr = flow.src_addr;
        (*record).dst_addr = flow.dst_addr;
        fill_conntrack(skb, record);
        capture(skb, head, network_header, &flow, record);
    }
    entry.submit(0);
    Some(())
}

#[inline(always)]
fn read_flow(l3: *const u8, ethertype: u16) -> Option<Flow> {
    let mut flow = Flow {
        ip_version: 0,
        l4_proto: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port_be: 0,
        dst_port_be: 0,
        l3_len: 0,
        l4_len: 0,
    };
    match ethertype {
        ETH_P_IP => {
            let ip: [u8; 20] = skb::read(l3, 0)?;
            let header_len = ((ip[0] & 0x0f) as u16) * 4;
            if ip[0] >> 4 != 4 || header_len < 20 {
                return None;
            }
            // Only the first fragment carries the ports.
            if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
                return None;
            }
            flow.ip_version = 4;
            flow.l4_proto = ip[9];
            flow.l3_len = header_len;
            flow.src_addr[..4].copy_from_slice(&ip[12..16]);
            flow.dst_addr[..4].copy_from_slice(&ip[16..20]);
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = skb::read(l3, 0)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            flow.ip_version = 6;
            flow.l4_proto = ip[6];
            flow.l3_len = 40;
            flow.src_addr.copy_from_slice(&ip[8..24]);
            flow.dst_addr.copy_from_slice(&ip[24..40]);
        }
        _ => return None,
    }
    if flow.l4_proto != IPPROTO_UDP && flow.l4_proto != IPPROTO_TCP {
        return None;
    }
    // Ports, plus the TCP data offset at byte 12.
    let l4: [u8; 14] = skb::read(l3, flow.l3_len as u32)?;
    flow.src_port_be = u16::from_ne_bytes([l4[0], l4[1]]);
    flow.dst_port_be = u16::from_ne_bytes([l4[2], l4[3]]);
    flow.l4_len = if flow.l4_proto == IPPROTO_UDP {
        8
    } else {
        ((l4[12] >> 4) as u16) * 4
    };
    Some(flow)
}

/// # Safety
/// `record` must point at a reserved PacketRecord slot.
#[inline(always)]
unsafe fn fill_conntrack(skb: *const u8, record: *mut PacketRecord) {
    let nfct: u64 = skb::read(skb, config!(layout.skb_nfct)).unwrap_or(0);
    let conn = (nfct & !NFCT_INFO_MASK) as *const u8;
    unsafe {
        (*record).conntrack_info = (nfct & NFCT_INFO_MASK) as u8;
        (*record).conntrack_status = 0;
        (*record).ct_original = zero_tuple();
        (*record).ct_reply = zero_tuple();
        (*record).conntrack = if nfct == 0 {
            conntrack_state::NONE
        } else if conn.is_null() {
            conntrack_state::UNTRACKED
        } else {
            conntrack_state::ATTACHED
        };
        // A zero tuplehash size means the running kernel's BTF has no nf_conn: we
        // know a conntrack entry is attached but not how to read it.
        let tuplehash_size = config!(layout.ct_tuplehash_size);
        if conn.is_null() || tuplehash_size == 0 {
            return;
        }
        (*record).conntrack_status = skb::read::<u64>(conn, config!(layout.ct_status)).unwrap_or(0) as u32;
        let original = config!(layout.ct_tuple_original);
        read_tuple(conn.wrapping_add(original as usize), core::ptr::addr_of_mut!((*record).ct_original));
        read_tuple(
            conn.wrapping_add((original + tuplehash_size) as usize),
            core::ptr::addr_of_mut!((*record).ct_reply),
        );
    }
}

#[inline(always)]
fn zero_tuple() -> CtTuple {
    CtTuple {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port_be: 0,
        dst_port_be: 0,
        protonum: 0,
        _pad: [0; 3],
    }
}

/// # Safety
/// `out` must point at a CtTuple inside a reserved record.
#[inline(always)]
unsafe fn read_tuple(tuple: *const u8, out: *mut CtTuple) {
    unsafe {
        (*out).src_addr = skb::read(tuple, config!(layout.tuple_src_addr)).unwrap_or([0; 16]);
        (*out).dst_addr = skb::read(tuple, config!(layout.tuple_dst_addr)).unwrap_or([0; 16]);
        (*out).src_port_be = skb::read(tuple, config!(layout.tuple_src_port)).unwrap_or(0);
        (*out).dst_port_be = skb::read(tuple, config!(layout.tuple_dst_port)).unwrap_or(0);
        (*out).protonum = skb::read(tuple, config!(layout.tuple_protonum)).unwrap_or(0);
    }
}

/// Copies the frame's first bytes, from the Ethernet header when the skb has one in
/// its linear data, else from the IP header.
///
/// # Safety
/// `record` must point at a reserved PacketRecord slot.
#[inline(always)]
unsafe fn capture(skb: *const u8, head: *const u8, network_header: u16, flow: &Flow, record: *mut PacketRecord) {
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
        (*record).captured_len = if copied { want.min(CAPTURE_MAX) as u16 } else { 0 };
        (*record).l3_offset = l3_offset;
        (*record).l4_offset = l3_offset + flow.l3_len;
        (*record).payload_offset = l3_offset + flow.l3_len + flow.l4_len;
    }
}
