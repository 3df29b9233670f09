//! A traced packet as tracer knows it: where it was, its addresses, what conntrack made
//! of it, and the DNS message it carries. These types are what JSON lines and captures
//! hold: they serialise to the documented fields and read back from them.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{ser::SerializeMap, Deserialize, Deserializer, Serialize, Serializer};
pub(crate) use tracer_common::Stage;

use super::{dns::DnsMessage, hook::Family, serde_forms};

super::named_enum! {
    /// The transport protocols tracer traces.
    #[strum(serialize_all = "lowercase")]
    pub(crate) enum L4Proto {
        Udp,
        Tcp,
    }
}

impl L4Proto {
    /// From the IP header's protocol number; `None` for what tracer does not trace.
    pub(crate) fn from_number(number: u8) -> Option<L4Proto> {
        match number {
            IPPROTO_UDP => Some(L4Proto::Udp),
            IPPROTO_TCP => Some(L4Proto::Tcp),
            _ => None,
        }
    }

    pub(crate) fn number(self) -> u8 {
        match self {
            L4Proto::Udp => IPPROTO_UDP,
            L4Proto::Tcp => IPPROTO_TCP,
        }
    }
}

pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

super::named_enum! {
    /// What became of a packet where tracer saw it decided (a line's `verdict`). A firewall
    /// rule's own verdict, which may also jump or return, is `firewall::Verdict`.
    #[strum(serialize_all = "lowercase")]
    pub(crate) enum Fate {
        Accept,
        Drop,
        Reject,
    }
}

super::named_enum! {
    /// Whether a packet is a whole datagram or one of its IP fragments (only the first
    /// carries the transport header; a later one is traced with its first one's ports).
    #[strum(serialize_all = "lowercase")]
    #[derive(Default)]
    pub(crate) enum Fragment {
        #[default]
        Whole,
        First,
        Later,
    }
}

impl Fragment {
    /// From `Flow::fragment`.
    pub(crate) fn of_flow(value: u8) -> Fragment {
        match value {
            tracer_common::fragment::FIRST => Fragment::First,
            tracer_common::fragment::LATER => Fragment::Later,
            _ => Fragment::Whole,
        }
    }

    pub(crate) fn is_whole(&self) -> bool {
        *self == Fragment::Whole
    }
}

/// How many occurrences one record stands for: once, or in a findings-only watch, how often
/// the kernel counted its key (`tracer_common::OccurrenceKey`) since the last record of it. A
/// line of a capture made before the kernel counted stands for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Times(pub u64);

impl Default for Times {
    fn default() -> Times {
        Times(1)
    }
}

impl Times {
    pub(crate) fn is_once(&self) -> bool {
        self.0 == 1
    }
}

/// A frame at one stage of the bridge path, as the kernel reported it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PacketEvent {
    pub timestamp_ns: u64,
    #[serde(skip)]
    pub loss: LossStamps,
    #[serde(rename = "netns")]
    pub netns_inode: u32,
    pub stage: Stage,
    pub ifindex: u32,
    #[serde(rename = "in_ifindex")]
    pub ingress_ifindex: u32,
    #[serde(rename = "ip_version", with = "serde_forms::ip_version")]
    pub family: Family,
    #[serde(rename = "proto")]
    pub l4_proto: L4Proto,
    #[serde(with = "serde_forms::socket_addr")]
    pub src: SocketAddr,
    #[serde(with = "serde_forms::socket_addr")]
    pub dst: SocketAddr,
    /// An IP fragment's place (absent for a whole datagram).
    #[serde(default, skip_serializing_if = "Fragment::is_whole")]
    pub fragment: Fragment,
    /// Length of the IP packet (header included), the same at every stage; falls back
    /// to the skb length when the IP header was not captured.
    #[serde(rename = "len")]
    pub ip_len: u32,
    pub conntrack: Conntrack,
    /// The DNS message the payload carries, when it is DNS (decided by the analysis, which
    /// knows the DNS ports and the TCP streams: see `pipeline::dns_decode`). Read again from
    /// the bytes where a capture has them, else from the line.
    pub dns: Option<DnsMessage>,
    /// The frame's first bytes as copied in the kernel, once, at the first point of its way
    /// through the node: where the payload comes from at every stage.
    #[serde(skip)]
    pub captured: Bytes,
    /// The captured bytes are the frame as it was here (not before or after NAT changed
    /// its addresses): only then are they this stage's frame in a capture file.
    #[serde(skip)]
    pub captured_at_stage: bool,
    /// Offsets in `captured` of the IP header (0 when there is no link-layer header), the
    /// transport header and the transport payload.
    #[serde(skip)]
    pub l3_offset: usize,
    #[serde(skip)]
    pub l4_offset: usize,
    #[serde(skip)]
    pub payload_offset: usize,
    /// Occurrences this record stands for (absent: once).
    #[serde(default, skip_serializing_if = "Times::is_once")]
    pub occurrences: Times,
}

/// TCP's flags byte, from the start of its header, and the flags tracer follows.
pub(crate) const TCP_FLAGS_AT: usize = 13;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;

impl PacketEvent {
    /// The flags of a TCP segment, when its header was captured.
    pub(crate) fn tcp_flags(&self) -> Option<u8> {
        if self.l4_proto != L4Proto::Tcp || self.fragment == Fragment::Later {
            return None;
        }
        self.captured.get(self.l4_offset + TCP_FLAGS_AT).copied()
    }
}

/// What conntrack had attached to the frame (`skb->_nfct`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Conntrack {
    /// Nothing attached: conntrack has not seen the frame on this path.
    None,
    Untracked,
    Attached(ConntrackEntry),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ConntrackEntry {
    /// `enum ip_conntrack_info` of this frame's reference.
    pub ctinfo: u8,
    /// IPS_* bits; `None` when the running kernel's BTF has no `nf_conn` to read it by.
    pub status: Option<u32>,
    pub original: Option<FlowTuple>,
    pub reply: Option<FlowTuple>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FlowTuple {
    #[serde(with = "serde_forms::socket_addr")]
    pub src: SocketAddr,
    #[serde(with = "serde_forms::socket_addr")]
    pub dst: SocketAddr,
}

/// A NAT the conntrack entry applies, as the original direction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Nat {
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
/// The entry has seen a packet in its reply direction.
const IPS_SEEN_REPLY: u32 = 1 << 1;
const IPS_SRC_NAT: u32 = 1 << 4;
pub(crate) const IPS_DST_NAT: u32 = 1 << 5;

/// `enum ip_conntrack_info` (uapi), in value order.
const CTINFO_NAMES: [&str; 5] = ["established", "related", "new", "established_reply", "related_reply"];

/// A record's loss stamps (`RecordHeader::loss_stamp_src` / `_dst`): how many records of its
/// source and destination endpoints' buckets had been lost when it was reserved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LossStamps {
    pub src: u32,
    pub dst: u32,
}

/// The stage names used in every output (and documented in README.md).
pub(crate) fn stage_name(stage: Stage) -> &'static str {
    stage.into()
}

impl ConntrackEntry {
    pub(crate) fn ctinfo_name(&self) -> &'static str {
        CTINFO_NAMES.get(usize::from(self.ctinfo)).copied().unwrap_or("unknown")
    }

    /// Whether this packet travels in the entry's reply direction
    /// (IP_CT_ESTABLISHED_REPLY or IP_CT_RELATED_REPLY).
    pub(crate) fn is_reply_direction(&self) -> bool {
        matches!(self.ctinfo, 3 | 4)
    }

    /// The entry had seen a reply before this packet: it was made for an earlier exchange
    /// (the same client port), and its NAT was decided then, by the rules of then.
    pub(crate) fn seen_reply(&self) -> bool {
        self.status.is_some_and(|status| status & IPS_SEEN_REPLY != 0)
    }

    pub(crate) fn status_names(&self) -> Vec<&'static str> {
        let Some(status) = self.status else { return Vec::new() };
        STATUS_BITS.iter().enumerate().filter(|(bit, _)| status & (1 << bit) != 0).map(|(_, name)| *name).collect()
    }

    /// The translations this entry applies. The reply tuple is what the other end
    /// answers to, so a rewritten destination shows as the reply's source and a
    /// rewritten source as the reply's destination.
    pub(crate) fn nat(&self) -> Vec<Nat> {
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

impl Conntrack {
    /// The translations it applies, as one text (`dnat 10.96.0.10:53→10.244.0.7:53`).
    pub(crate) fn nat_text(&self) -> Option<NatText> {
        let Conntrack::Attached(entry) = self else { return None };
        let nats = entry.nat();
        (!nats.is_empty()).then_some(NatText(nats))
    }
}

/// Translations written as one text, `, ` between them; serialised as that string.
pub(crate) struct NatText(Vec<Nat>);

impl std::fmt::Display for NatText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, nat) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            nat.fmt(f)?;
        }
        Ok(())
    }
}

impl Serialize for NatText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl std::fmt::Display for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Written piece by piece: through `SocketAddr`'s `Display` (its padding support), the
        // NAT text of each hook took a fifth of the reader's time under load.
        let (kind, from, to) = match self {
            Nat::Destination { from, to } => ("dnat ", from, to),
            Nat::Source { from, to } => ("snat ", from, to),
        };
        let mut buf = [0u8; serde_forms::socket_addr::LONGEST];
        f.write_str(kind)?;
        f.write_str(serde_forms::socket_addr::text(from, &mut buf))?;
        f.write_str("→")?;
        f.write_str(serde_forms::socket_addr::text(to, &mut buf))
    }
}

/// `null` when nothing is attached; `{"state": "untracked"}`; or the entry with its
/// `ctinfo` and status bits by name and the NAT it applies in words.
impl Serialize for Conntrack {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entry = match self {
            Conntrack::None => return serializer.serialize_none(),
            Conntrack::Untracked => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("state", "untracked")?;
                return map.end();
            }
            Conntrack::Attached(entry) => entry,
        };
        let mut map = serializer.serialize_map(Some(6))?;
        map.serialize_entry("state", "attached")?;
        map.serialize_entry("ctinfo", entry.ctinfo_name())?;
        map.serialize_entry("status", &entry.status_names())?;
        map.serialize_entry("original", &entry.original)?;
        map.serialize_entry("reply", &entry.reply)?;
        map.serialize_entry("nat", &self.nat_text())?;
        map.end()
    }
}

/// The serialised form's fields; `nat` is derived and not read back.
#[derive(Deserialize)]
struct ConntrackFields {
    state: String,
    ctinfo: Option<String>,
    #[serde(default)]
    status: Vec<String>,
    original: Option<FlowTuple>,
    reply: Option<FlowTuple>,
}

impl<'de> Deserialize<'de> for Conntrack {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Some(fields) = Option::<ConntrackFields>::deserialize(deserializer)? else { return Ok(Conntrack::None) };
        match fields.state.as_str() {
            "untracked" => Ok(Conntrack::Untracked),
            "attached" => {
                let ctinfo =
                    fields.ctinfo.as_deref().and_then(|name| CTINFO_NAMES.iter().position(|n| *n == name)).unwrap_or(0);
                // Without tuples the kernel had no layout to read the entry by: no status either.
                let status = fields.original.is_some().then(|| {
                    fields
                        .status
                        .iter()
                        .filter_map(|name| STATUS_BITS.iter().position(|b| b == name))
                        .fold(0u32, |bits, bit| bits | (1 << bit))
                });
                Ok(Conntrack::Attached(ConntrackEntry {
                    ctinfo: ctinfo as u8,
                    status,
                    original: fields.original,
                    reply: fields.reply,
                }))
            }
            other => Err(serde::de::Error::custom(format!("unknown conntrack state {other:?}"))),
        }
    }
}

/// `--port`: the port traced, as source or destination, or every port. Written as a number
/// wherever it is stored or handed on (the kernel's settings, a capture's metadata), with 0
/// for every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
pub(crate) enum PortFilter {
    All,
    Port(std::num::NonZeroU16),
}

impl PortFilter {
    pub(crate) fn port(self) -> Option<u16> {
        match self {
            PortFilter::All => None,
            PortFilter::Port(port) => Some(port.get()),
        }
    }

    /// The number form: the port, or 0 for every port.
    pub(crate) fn number(self) -> u16 {
        self.port().unwrap_or(0)
    }
}

impl From<u16> for PortFilter {
    fn from(number: u16) -> PortFilter {
        std::num::NonZeroU16::new(number).map_or(PortFilter::All, PortFilter::Port)
    }
}

impl From<PortFilter> for u16 {
    fn from(filter: PortFilter) -> u16 {
        filter.number()
    }
}

impl std::str::FromStr for PortFilter {
    type Err = String;

    fn from_str(text: &str) -> Result<PortFilter, String> {
        text.parse::<u16>()
            .map(PortFilter::from)
            .map_err(|_| format!("`{text}` is not a port: give 1-65535, or 0 for every port"))
    }
}

impl std::fmt::Display for PortFilter {
    /// As a sentence says it: `port 53`, `all ports`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port() {
            Some(port) => write!(f, "port {port}"),
            None => f.write_str("all ports"),
        }
    }
}

#[cfg(test)]
mod port_filter_tests {
    use super::PortFilter;

    #[test]
    fn zero_is_every_port_in_every_form() {
        assert_eq!("0".parse::<PortFilter>(), Ok(PortFilter::All));
        assert_eq!("53".parse::<PortFilter>().map(PortFilter::number), Ok(53));
        assert!("dns".parse::<PortFilter>().is_err());
        assert!("65536".parse::<PortFilter>().is_err());
        assert_eq!(PortFilter::All.to_string(), "all ports");
        assert_eq!(PortFilter::from(53).to_string(), "port 53");
        assert_eq!(serde_json::to_string(&PortFilter::All).expect("serialises"), "0");
        assert_eq!(serde_json::from_str::<PortFilter>("5353").expect("reads"), PortFilter::from(5353));
    }
}
