//! The `#[repr(C)]` types the kernel programs and userspace share: the load-time
//! configuration and the records sent through the ring buffer.
#![no_std]

/// Bytes of each traced frame copied in the kernel, from the Ethernet header on.
/// Enough for Ethernet + IPv6 + UDP + a DNS message of classic size.
pub const CAPTURE_MAX: usize = 512;

/// Where a frame was seen on its way through a Linux bridge.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Received on a bridge port (before the bridge decides where it goes).
    BridgeIn = 1,
    /// Queued for transmit on a bridge port (forwarded or flooded by the bridge).
    BridgeOut = 2,
    /// Passed up from the bridge to the host's own stack (received on the bridge device).
    ToHost = 3,
    /// Sent by the host through the bridge device.
    FromHost = 4,
}

impl Stage {
    pub fn from_u8(raw: u8) -> Option<Stage> {
        match raw {
            1 => Some(Stage::BridgeIn),
            2 => Some(Stage::BridgeOut),
            3 => Some(Stage::ToHost),
            4 => Some(Stage::FromHost),
            _ => None,
        }
    }
}

/// `PacketRecord::conntrack` values.
pub mod conntrack_state {
    /// `skb->_nfct` was empty: conntrack has not seen this frame on this path.
    pub const NONE: u8 = 0;
    /// A conntrack entry is attached; tuples and status are filled in.
    pub const ATTACHED: u8 = 1;
    /// Marked untracked (e.g. a `-j NOTRACK` / `notrack` rule).
    pub const UNTRACKED: u8 = 2;
}

/// Slots of the per-CPU `LOST` counter array: one per program, so that each is only
/// ever incremented by one program at a time on a CPU.
pub mod lost_slot {
    pub const BRIDGE_RECEIVE: u32 = 0;
    pub const BRIDGE_TRANSMIT: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// One direction of a conntrack entry, as the kernel stores it. Ports are in
/// network byte order, addresses are 4 (IPv4, rest zero) or 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTuple {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protonum: u8,
    pub _pad: [u8; 3],
}

/// One traced frame at one stage. Fixed size so the kernel can reserve it in the
/// ring buffer without a copy; only `captured_len` bytes of `packet` are meaningful.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PacketRecord {
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub timestamp_ns: u64,
    /// Kernel address of the sk_buff: the same frame seen at several stages of one
    /// pass shares it (an address may be reused once the frame is freed).
    pub skb_id: u64,
    pub netns_inode: u32,
    /// Device the frame is on at this stage.
    pub ifindex: u32,
    /// `skb->skb_iif`: the device the frame last arrived on.
    pub ingress_ifindex: u32,
    /// `skb->len`: the whole frame, of which `captured_len` bytes are copied.
    pub packet_len: u32,
    /// `Stage` as u8.
    pub stage: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// IPPROTO_UDP (17) or IPPROTO_TCP (6).
    pub l4_proto: u8,
    /// `conntrack_state::*`.
    pub conntrack: u8,
    /// The `enum ip_conntrack_info` bits of `skb->_nfct`.
    pub conntrack_info: u8,
    pub _pad0: [u8; 3],
    /// `nf_conn->status` (IPS_* bits) when a conntrack entry is attached.
    pub conntrack_status: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub ct_original: CtTuple,
    pub ct_reply: CtTuple,
    /// Bytes of `packet` that were copied.
    pub captured_len: u16,
    /// Offsets into `packet` of the IP header, the L4 header and the L4 payload.
    /// `l3_offset` is 0 when the capture starts at the IP header (no link-layer
    /// header in the skb's linear data).
    pub l3_offset: u16,
    pub l4_offset: u16,
    pub payload_offset: u16,
    pub packet: [u8; CAPTURE_MAX],
}

/// Byte offsets into kernel structs, read from the running kernel's BTF at start
/// (never compiled in: they differ between kernel builds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_len: u32,
    pub skb_tail: u32,
    pub skb_mac_header: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_iif: u32,
    pub skb_nfct: u32,
    pub dev_ifindex: u32,
    /// Byte offset of the 32 bits that hold `net_device.priv_flags`.
    pub dev_priv_flags: u32,
    /// `net_device.nd_net.net`: a `struct net *`.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    pub ct_status: u32,
    /// `nf_conn.tuplehash[0].tuple`; the reply direction follows at `+ ct_tuplehash_size`.
    pub ct_tuple_original: u32,
    pub ct_tuplehash_size: u32,
    pub tuple_src_addr: u32,
    pub tuple_src_port: u32,
    pub tuple_dst_addr: u32,
    pub tuple_dst_port: u32,
    pub tuple_protonum: u32,
    /// `IFF_BRIDGE_PORT` and `IFF_EBRIDGE` from `enum netdev_priv_flags`.
    pub flag_bridge_port: u32,
    pub flag_bridge: u32,
}

/// Load-time settings, written into the programs' read-only data by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Port to trace (either side), network byte order; 0 traces every port.
    pub port_be: u16,
    pub _pad: u16,
    /// Only frames on devices of this network namespace; 0 means every namespace.
    pub netns_inode: u32,
    /// Bytes of each frame to copy, at most `CAPTURE_MAX`.
    pub snaplen: u32,
    pub layout: KernelLayout,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::PacketRecord {}
}
