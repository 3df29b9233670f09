//! The kinds of problem tracer names, and the record of one it could not confirm.

use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    ConntrackSkip,
    UnexpectedReplySource,
    DnsTimeout,
    NetfilterReject,
    NetfilterDrop,
    /// `net.ipv4.ip_forward` is 0 on a node whose bridges route pod traffic.
    IpForwardOff,
    /// The conntrack table is (nearly) full, or the kernel dropped or evicted flows for lack of room.
    ConntrackTableFull,
    /// Packets lost because their new conntrack entry could not be inserted (`insert_failed`).
    ConntrackInsertRace,
    /// Packets dropped by the reverse-path filter (`IP_RPFILTER`).
    RpFilterDrop,
}

impl FindingKind {
    /// The name used in every output (`"kind"` in JSON).
    pub fn name(self) -> &'static str {
        match self {
            FindingKind::ConntrackSkip => "conntrack_skip",
            FindingKind::UnexpectedReplySource => "unexpected_reply_source",
            FindingKind::DnsTimeout => "dns_timeout",
            FindingKind::NetfilterReject => "netfilter_reject",
            FindingKind::NetfilterDrop => "netfilter_drop",
            FindingKind::IpForwardOff => "ip_forward_off",
            FindingKind::ConntrackTableFull => "conntrack_table_full",
            FindingKind::ConntrackInsertRace => "conntrack_insert_race",
            FindingKind::RpFilterDrop => "rp_filter_drop",
        }
    }
}

/// A finding that was not stated because a record it rests on may have been lost: the
/// ring buffer dropped records of its client's (or its packet's) endpoint while it was
/// being followed. Counted, never reported as a problem.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unconfirmed {
    pub kind: FindingKind,
    pub wall_time_ns: u64,
    /// Records of the endpoint that may have been lost during its window.
    pub records_lost: u64,
    /// The DNS client and query id, for DNS findings.
    pub client: Option<SocketAddr>,
    pub query_id: Option<u16>,
}

impl std::fmt::Display for FindingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
