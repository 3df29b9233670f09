//! What the kernel reports of a traced packet at the netfilter hooks: the hooks it passed
//! on its way, a drop, the kernel's ICMP answer.

use std::net::SocketAddr;

use serde::{ser::SerializeMap, Deserialize, Serialize, Serializer};

use super::{
    hook::{Family, Hook},
    packet::{Conntrack, L4Proto, LossStamps, Nat},
    serde_forms,
};

/// Where the kernel recorded a point of a packet's path: its source then, and that source's
/// loss bucket (a record of the path lost later shows as growth there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamped {
    pub src: SocketAddr,
    pub loss: LossStamps,
    pub timestamp_ns: u64,
}

/// A traced packet freed as dropped. Serialised, the fields of its `dropped` line that
/// the kernel reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DropEvent {
    pub timestamp_ns: u64,
    #[serde(skip)]
    pub skb_id: u64,
    #[serde(skip)]
    pub loss: LossStamps,
    #[serde(rename = "netns")]
    pub netns_inode: u32,
    pub ifindex: u32,
    /// `enum skb_drop_reason` value; named through the kernel's BTF (the name is what a
    /// line shows and keeps).
    #[serde(skip)]
    pub reason: u32,
    #[serde(skip)]
    pub location: u64,
    #[serde(rename = "ip_version", with = "serde_forms::ip_version")]
    pub family: Family,
    #[serde(rename = "proto")]
    pub l4_proto: L4Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// The kernel answered a traced packet with ICMP.
#[derive(Clone, Debug)]
pub struct IcmpEvent {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub loss: LossStamps,
    pub ifindex: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub l4_proto: L4Proto,
    /// The packet that was answered.
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// One netfilter hook on a packet's way.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HookPass {
    pub hook: Hook,
    pub family: Family,
    /// Seen at the end of the hook's priority range: every hook function let it through.
    pub left: bool,
    /// Conntrack as the packet left the hook (or as it entered, when it never left).
    pub conntrack: Conntrack,
    /// The hook's devices, for naming a rule's interfaces; not part of a line.
    #[serde(skip)]
    pub in_ifindex: u32,
    #[serde(skip)]
    pub out_ifindex: u32,
    /// Where the kernel recorded it, for the loss check; not part of a line.
    #[serde(skip)]
    pub stamped: Option<Stamped>,
}

#[cfg(test)]
impl DropEvent {
    /// A UDP packet dropped with reason 12 on ifindex 2 of namespace 1, for tests.
    pub fn example(skb_id: u64, timestamp_ns: u64, src: SocketAddr, dst: SocketAddr) -> DropEvent {
        DropEvent {
            timestamp_ns,
            skb_id,
            loss: Default::default(),
            netns_inode: 1,
            ifindex: 2,
            reason: 12,
            location: 0,
            family: if src.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 },
            l4_proto: L4Proto::Udp,
            src,
            dst,
        }
    }
}

impl HookPass {
    pub fn nat(&self) -> Vec<Nat> {
        match &self.conntrack {
            Conntrack::Attached(entry) => entry.nat(),
            _ => Vec::new(),
        }
    }
}

/// `{"hook", "family", "left", "conntrack", "nat"}`: the NAT in words is derived from the
/// conntrack entry, and not read back.
impl Serialize for HookPass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("hook", &self.hook)?;
        map.serialize_entry("family", &self.family)?;
        map.serialize_entry("left", &self.left)?;
        map.serialize_entry("conntrack", &self.conntrack)?;
        map.serialize_entry("nat", &self.conntrack.nat_text())?;
        map.end()
    }
}
