//! A traced packet as tracer knows it: where it was, its addresses, what conntrack made
//! of it, and the DNS message it carries.

use std::net::SocketAddr;

use tracer_common::Stage;

use super::dns::DnsMessage;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub netns_inode: u32,
    pub stage: Stage,
    pub ifindex: u32,
    pub ingress_ifindex: u32,
    /// Length of the IP packet (header included), the same at every stage; falls back
    /// to the skb length when the IP header was not captured.
    pub ip_len: u32,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub conntrack: Conntrack,
    /// The DNS message the payload carries, when it is DNS (decided by the analysis, which
    /// knows the DNS ports and the TCP streams: see `pipeline::dns_decode`).
    pub dns: Option<DnsMessage>,
    /// The frame's first bytes as copied in the kernel.
    pub captured: Vec<u8>,
    /// Offsets in `captured` of the IP header (0 when there is no link-layer header), the
    /// transport header and the transport payload.
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub payload_offset: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conntrack {
    /// Nothing attached: conntrack has not seen the frame on this path.
    None,
    Untracked,
    Attached(ConntrackEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConntrackEntry {
    /// `enum ip_conntrack_info` of this frame's reference.
    pub ctinfo: u8,
    /// IPS_* bits; `None` when the running kernel's BTF has no `nf_conn` to read it by.
    pub status: Option<u32>,
    pub original: Option<FlowTuple>,
    pub reply: Option<FlowTuple>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A NAT the conntrack entry applies, as the original direction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// The original destination `from` is rewritten to `to` (e.g. a ClusterIP to a backend).
    Destination { from: SocketAddr, to: SocketAddr },
    /// The original source `from` is rewritten to `to` (e.g. MASQUERADE).
    Source { from: SocketAddr, to: SocketAddr },
}

/// Status bits of `enum ip_conntrack_status` (uapi, stable across kernels), in bit order.
const STATUS_BITS: [&str; 16] = [
    "expected",
    "seen_reply",
    "assured",
    "confirmed",
    "src_nat",
    "dst_nat",
    "seq_adjust",
    "src_nat_done",
    "dst_nat_done",
    "dying",
    "fixed_timeout",
    "template",
    "nat_clash",
    "helper",
    "offload",
    "hw_offload",
];
const IPS_SRC_NAT: u32 = 1 << 4;
pub const IPS_DST_NAT: u32 = 1 << 5;

/// A record's loss stamps (`RecordHeader::loss_stamp_src` / `_dst`): how many records of its
/// source and destination endpoints' buckets had been lost when it was reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossStamps {
    pub src: u32,
    pub dst: u32,
}

/// The stage names used in every output (and documented in README.md).
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::BridgeIn => "bridge-in",
        Stage::BridgeOut => "bridge-out",
        Stage::ToHost => "to-host",
        Stage::FromHost => "from-host",
    }
}

impl PacketEvent {
    pub fn proto_name(&self) -> &'static str {
        match self.l4_proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            _ => "other",
        }
    }
}

impl ConntrackEntry {
    pub fn ctinfo_name(&self) -> &'static str {
        match self.ctinfo {
            0 => "established",
            1 => "related",
            2 => "new",
            3 => "established_reply",
            4 => "related_reply",
            _ => "unknown",
        }
    }

    /// Whether this packet travels in the entry's reply direction
    /// (IP_CT_ESTABLISHED_REPLY or IP_CT_RELATED_REPLY).
    pub fn is_reply_direction(&self) -> bool {
        matches!(self.ctinfo, 3 | 4)
    }

    pub fn status_names(&self) -> Vec<&'static str> {
        let Some(status) = self.status else { return Vec::new() };
        STATUS_BITS
            .iter()
            .enumerate()
            .filter(|(bit, _)| status & (1 << bit) != 0)
            .map(|(_, name)| *name)
            .collect()
    }

    /// The translations this entry applies. The reply tuple is what the other end
    /// answers to, so a rewritten destination shows as the reply's source and a
    /// rewritten source as the reply's destination.
    pub fn nat(&self) -> Vec<Nat> {
        let (Some(status), Some(original), Some(reply)) = (self.status, self.original, self.reply) else {
            return Vec::new();
        };
        let mut nats = Vec::new();
        if status & IPS_DST_NAT != 0 && original.dst != reply.src {
            nats.push(Nat::Destination { from: original.dst, to: reply.src });
        }
        if status & IPS_SRC_NAT != 0 && original.src != reply.dst {
            nats.push(Nat::Source { from: original.src, to: reply.dst });
        }
        nats
    }
}

impl std::fmt::Display for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Nat::Destination { from, to } => write!(f, "dnat {from}→{to}"),
            Nat::Source { from, to } => write!(f, "snat {from}→{to}"),
        }
    }
}
