//! What the netfilter-hook, drop and ICMP programs report about a traced packet.

use std::net::SocketAddr;

use super::{
    hook::Hook,
    packet::{Conntrack, LossStamps},
};

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
