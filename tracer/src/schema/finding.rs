//! A finding as tracer states it: its kind, the evidence it rests on (a DNS exchange, a
//! netfilter drop, node state), the explanation and the fix; and the record of a finding
//! it could not confirm. Serialised, the JSON `"type": "finding"` line, which a capture
//! keeps and `tracer report` reads back through these same types.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tracer_common::Stage;

use crate::model::{
    firewall::{Backend, MapElement, Owner},
    hook::Hook,
    netfilter::DropReason,
    packet::{Fragment, L4Proto},
    pod::{DnsPods, EndpointPods},
    serde_forms,
    sysctl::SysctlValue,
};

crate::model::named_enum! {
    /// The kinds of problem tracer names.
    #[strum(serialize_all = "snake_case")]
    pub(crate) enum FindingKind {
        ConntrackSkip,
        UnexpectedReplySource,
        DnsTimeout,
        /// The DNS server itself answered with a failure (SERVFAIL, REFUSED, NOTIMP, FORMERR):
        /// the path works, the server does not.
        DnsServerFailure,
        /// A lookup walked the resolver's search list through names that do not exist before
        /// asking the name itself (`ndots:5`): several queries and round trips for one answer.
        DnsSearchAmplification,
        /// Queries sent to a backend the Service's rules no longer choose, by a conntrack entry
        /// of an earlier exchange from the same client port: a UDP entry outlives its backend.
        StaleConntrackDnat,
        /// A UDP answer came back truncated (TC) and the client's retry over TCP failed: the
        /// path or the server carries DNS over UDP but not over TCP, so large answers fail.
        DnsTcpRetryFailed,
        /// An answer too large for one packet travelled as IP fragments and one of them was
        /// lost: the client never gets it, while small answers work.
        DnsFragmentLost,
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
}

/// A finding that was not stated because a record it rests on may have been lost: the
/// ring buffer dropped records of its client's (or its packet's) endpoint while it was
/// being followed. Counted, never reported as a problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Unconfirmed {
    pub kind: FindingKind,
    pub wall_time_ns: u64,
    /// Records of the endpoint that may have been lost during its window.
    pub records_lost: u64,
    /// The DNS client and query id, for DNS findings.
    pub client: Option<SocketAddr>,
    pub query_id: Option<u16>,
}

/// The DNS query a finding is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct QueryRef {
    pub id: u16,
    pub qname: Option<String>,
    #[serde(with = "crate::model::dns::qtype_form")]
    pub qtype: Option<u16>,
}

/// A problem tracer names. Serialised, the JSON `"type": "finding"` line (the evidence's
/// fields beside the others), which a capture keeps and reads back as it is.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "finding")]
pub(crate) struct Finding {
    pub kind: FindingKind,
    #[serde(rename = "time", with = "serde_forms::wall_time")]
    pub wall_time_ns: u64,
    /// One line that names the problem.
    pub headline: String,
    #[serde(flatten)]
    pub evidence: Evidence,
    pub explanation: String,
    pub fix: Vec<String>,
}

/// What a finding rests on. The kinds of evidence have fields of their own, which tell
/// them apart when a finding is read back.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Evidence {
    Dns(DnsEvidence),
    Netfilter(NetfilterEvidence),
    /// Read from the node rather than seen on a packet (`tracer triage`).
    Node(NodeEvidence),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DnsEvidence {
    pub client: SocketAddr,
    /// Where the client sent its query and so the only source it accepts a reply from.
    pub expected_source: SocketAddr,
    /// Where the reply came from, when there was one.
    pub actual_source: Option<SocketAddr>,
    pub query: QueryRef,
    pub bridge: Option<String>,
    /// The bridge port the reply entered on and the one it left on, towards the client.
    pub reply_in_port: Option<String>,
    pub reply_out_port: Option<String>,
    /// Where an unanswered query was last seen.
    pub last_seen: Option<Sighting>,
    /// The reply's RCODE when the server answered with a failure (`SERVFAIL`, `REFUSED`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    /// The names a lookup tried from its search list before the one answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchWalk>,
    /// Where an old conntrack entry sent the query, and where the rules send new flows now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_dnat: Option<StaleDnat>,
    /// What became of the client's retry over TCP of a truncated answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_retry: Option<TcpRetry>,
    /// The fragment of the answer that was lost, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragments: Option<FragmentLoss>,
    /// Node settings that bear on the finding, as read when it was made.
    #[serde(with = "crate::model::sysctl::by_name")]
    pub sysctls: Vec<SysctlValue>,
    /// The pods holding the client's and the servers' addresses.
    #[serde(flatten)]
    pub pods: DnsPods,
}

/// A conntrack entry that DNATs a client's queries to where the rules no longer do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StaleDnat {
    /// Where the entry sends them: the backend the rules chose when it was made.
    pub backend: SocketAddr,
    /// Where the nat rules send a new flow to the same address now.
    pub current: Vec<SocketAddr>,
    /// How long before this query tracer had already seen the entry: a lower bound on its
    /// age (0: it predates the query, having seen a reply). Exact ages need the kernel's
    /// conntrack timestamps.
    #[serde(default)]
    pub seen_for_secs: f64,
}

/// An answer's fragment that was lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FragmentLoss {
    /// Where the answer came from (its server, before any reverse NAT).
    pub server: SocketAddr,
    /// The answer's UDP length (header included), from its first fragment.
    pub answer_len: Option<u32>,
    /// `later` (a later fragment was dropped) or `first` (the first one was discarded when
    /// the others never came).
    pub dropped: Fragment,
    pub drop_reason: DropReason,
    /// Where, and in which netfilter hook when one dropped it.
    pub ifname: Option<String>,
    pub hook: Option<Hook>,
}

/// A client's retry over TCP of a query whose UDP answer was truncated, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TcpRetry {
    /// The client's TCP socket.
    pub client: SocketAddr,
    /// Where the connection went: the address the client asked, or the backend conntrack
    /// sent it to.
    pub server: SocketAddr,
    pub outcome: RetryOutcome,
    /// The kernel's reason, for a retry it dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<DropReason>,
    /// Where its last packet was seen.
    pub last_seen: Option<Sighting>,
}

crate::model::named_enum! {
    /// How a retry over TCP failed.
    #[strum(serialize_all = "snake_case")]
    pub(crate) enum RetryOutcome {
        /// The kernel dropped its packet (no route, say).
        Dropped,
        /// The server end reset the connection: nothing accepts DNS over TCP there.
        Reset,
        /// The connection got no answer at all within the timeout.
        Unanswered,
    }
}

/// One lookup's walk through the resolver's search list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct SearchWalk {
    /// The name the client looked up, as it finally asked it (and got its answer).
    pub name: String,
    /// The names it asked before, each answered NXDOMAIN, in the order asked.
    pub tried: Vec<String>,
    /// From the first of them to the query for `name`: what the walk cost the lookup.
    pub lost_ms: f64,
}

/// A firewall rule, as the finding names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RuleRef {
    pub backend: Backend,
    pub table: String,
    pub chain: String,
    /// 1-based position in its chain (what `iptables -L --line-numbers` shows).
    #[serde(rename = "rule")]
    pub position: u32,
    pub handle: Option<u64>,
    #[serde(rename = "rule_text")]
    pub text: String,
}

/// A firewall chain, as the finding names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChainRef {
    pub backend: Backend,
    pub table: String,
    pub chain: String,
}

impl ChainRef {
    /// `table/chain`, as findings name a chain.
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.table, self.chain)
    }

    /// Back from a label and its backend.
    pub(crate) fn from_label(label: &str, backend: Backend) -> Option<ChainRef> {
        let (table, chain) = label.rsplit_once('/')?;
        Some(ChainRef { backend, table: table.to_string(), chain: chain.to_string() })
    }
}

/// A packet a netfilter hook dropped: where, and the rule or chain policy that did it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct NetfilterEvidence {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: L4Proto,
    /// The pods holding the source and destination addresses.
    #[serde(flatten)]
    pub pods: EndpointPods,
    /// The hook the packet entered and never left.
    pub hook: Hook,
    pub in_ifname: Option<String>,
    pub out_ifname: Option<String>,
    #[serde(flatten)]
    pub culprit: Culprit,
    /// Every rule that could have done it, when more than one fits.
    pub candidates: Vec<RuleRef>,
    /// How the rule was attributed (or why it could not be).
    pub attribution: String,
    /// The ICMP answer in words (`host-prohibited`), for a REJECT.
    pub icmp: Option<String>,
    /// The kernel's drop reason (`NETFILTER_DROP`).
    pub drop_reason: DropReason,
    /// Who owns the rule (or chain) that did it, when one was named.
    pub owner: Option<Owner>,
    /// The set or map element that chose the verdict, when a map did.
    pub element: Option<MapElement>,
    /// The query whose truncated UDP answer this TCP connection retried, when it was one:
    /// the rule stops the large answers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<QueryRef>,
}

/// The rule, or the chain policy, that dropped a packet: where it is, and the rule itself
/// when one did it. All absent when tracer could not tell. Its fields sit among the
/// finding's own, as README documents them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Culprit {
    pub backend: Option<Backend>,
    pub table: Option<String>,
    pub chain: Option<String>,
    /// The rule that did it, when exactly one fits: its position, handle and text.
    #[serde(rename = "rule")]
    pub position: Option<u32>,
    pub handle: Option<u64>,
    pub rule_text: Option<String>,
    /// `table/chain` whose DROP policy dropped it, when no rule did.
    pub policy: Option<String>,
}

impl Culprit {
    /// The rule or else the chain policy (a rule is named over a policy).
    pub(crate) fn of(rule: Option<RuleRef>, policy: Option<ChainRef>) -> Culprit {
        match (rule, policy) {
            (Some(rule), _) => Culprit {
                backend: Some(rule.backend),
                table: Some(rule.table),
                chain: Some(rule.chain),
                position: Some(rule.position),
                handle: rule.handle,
                rule_text: Some(rule.text),
                policy: None,
            },
            (None, Some(policy)) => Culprit {
                backend: Some(policy.backend),
                policy: Some(policy.label()),
                table: Some(policy.table),
                chain: Some(policy.chain),
                ..Culprit::default()
            },
            (None, None) => Culprit::default(),
        }
    }

    /// The rule that did it, when one was named.
    pub(crate) fn rule(&self) -> Option<RuleRef> {
        Some(RuleRef {
            backend: self.backend?,
            table: self.table.clone()?,
            chain: self.chain.clone()?,
            position: self.position?,
            handle: self.handle,
            text: self.rule_text.clone()?,
        })
    }

    /// The chain whose policy did it, when no rule did.
    pub(crate) fn policy_chain(&self) -> Option<ChainRef> {
        ChainRef::from_label(self.policy.as_deref()?, self.backend?)
    }
}

/// Node state a finding rests on: settings, the conntrack table and its counters, a firewall
/// rule or policy, drops the kernel made. Read from the node by `tracer triage`, in the
/// namespace `netns`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct NodeEvidence {
    pub netns: NetnsRef,
    /// The bridges the finding concerns.
    pub bridges: Vec<String>,
    /// The interface it concerns (rp_filter).
    pub interface: Option<String>,
    #[serde(with = "crate::model::sysctl::by_name")]
    pub sysctls: Vec<SysctlValue>,
    pub conntrack: Option<ConntrackEvidence>,
    /// A rule that drops or rejects the traced port's traffic.
    pub rule: Option<RuleRef>,
    /// `table/chain` whose DROP policy the traffic falls through to, and its backend.
    pub policy: Option<String>,
    pub policy_backend: Option<Backend>,
    /// Who owns that rule or policy (kube-proxy, a NetworkPolicy engine, firewalld, ...).
    pub owner: Option<Owner>,
    /// Traced packets the kernel dropped during the watch.
    pub drops: Option<DropEvidence>,
    /// Further facts in words (what a rule matches, how many DNAT rules exist, ...).
    pub notes: Vec<String>,
}

impl NodeEvidence {
    pub(crate) fn set_policy(&mut self, chain: &ChainRef) {
        self.policy = Some(chain.label());
        self.policy_backend = Some(chain.backend);
    }

    /// The chain whose DROP policy the traffic falls through to.
    pub(crate) fn policy_chain(&self) -> Option<ChainRef> {
        ChainRef::from_label(self.policy.as_deref()?, self.policy_backend?)
    }
}

/// Which network namespace node evidence was read in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetnsRef {
    /// Its `ip netns` name, when it has one.
    pub name: Option<String>,
    pub inode: u64,
    /// The namespace tracer ran (and watched traffic) in.
    pub current: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ConntrackEvidence {
    /// Entries in the namespace's table and the limit, at the end of the watch.
    pub count: Option<u64>,
    pub max: Option<u64>,
    /// Counters of `/proc/net/stat/nf_conntrack` that bear on the finding, by name.
    #[serde(with = "counters_by_name")]
    pub counters: Vec<CounterEvidence>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CounterEvidence {
    /// Column name, e.g. `insert_failed`.
    pub name: String,
    /// Summed over the CPUs, since boot (or since the namespace was created).
    pub total: u64,
    /// How much it grew during the watch, when both readings had it.
    pub growth: Option<u64>,
}

/// `{"insert_failed": {"total": 3, "growth": 1}, ...}`, in the counters' order.
mod counters_by_name {
    use serde::{ser::SerializeMap, Deserialize, Deserializer, Serialize, Serializer};

    use super::CounterEvidence;

    #[derive(Serialize, Deserialize)]
    struct Reading {
        total: u64,
        growth: Option<u64>,
    }

    pub(crate) fn serialize<S: Serializer>(counters: &[CounterEvidence], serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(counters.len()))?;
        for counter in counters {
            map.serialize_entry(&counter.name, &Reading { total: counter.total, growth: counter.growth })?;
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<CounterEvidence>, D::Error> {
        let readings = std::collections::BTreeMap::<String, Reading>::deserialize(deserializer)?;
        Ok(readings.into_iter().map(|(name, r)| CounterEvidence { name, total: r.total, growth: r.growth }).collect())
    }
}

/// Traced packets the kernel dropped for one reason at one place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DropEvidence {
    pub count: u64,
    /// The kernel's drop reason (`NETFILTER_DROP`, `IP_RPFILTER`).
    pub reason: DropReason,
    /// Where: `in PRE_ROUTING` (entered the hook and never left it), `after POST_ROUTING`
    /// (passed every program tracer has there), or the device.
    pub place: String,
    /// The first such packet.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: L4Proto,
    pub ifname: Option<String>,
}

/// Where a packet was last seen on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sighting {
    pub stage: Stage,
    pub ifname: Option<String>,
    pub ifindex: u32,
    #[serde(skip)]
    pub wall_time_ns: u64,
}

#[cfg(test)]
mod names_tests {
    use strum::VariantNames;

    use tracer_common::Stage;

    use super::FindingKind;
    use crate::model::{
        hook::Hook,
        packet::{stage_name, Fate, L4Proto},
    };

    /// The names README documents and JSON consumers match on: derived, so a renamed variant
    /// would change an output's contract; this says so.
    #[test]
    fn derived_names_are_the_documented_ones_in_every_form() {
        assert_eq!(Stage::VARIANTS, ["bridge-in", "bridge-out", "to-host", "from-host"]);
        assert_eq!(Fate::VARIANTS, ["accept", "drop", "reject"]);
        assert_eq!(L4Proto::VARIANTS, ["udp", "tcp"]);
        assert_eq!(Hook::VARIANTS, ["PRE_ROUTING", "LOCAL_IN", "FORWARD", "LOCAL_OUT", "POST_ROUTING"]);
        assert_eq!(
            FindingKind::VARIANTS,
            [
                "conntrack_skip",
                "unexpected_reply_source",
                "dns_timeout",
                "dns_server_failure",
                "dns_search_amplification",
                "stale_conntrack_dnat",
                "dns_tcp_retry_failed",
                "dns_fragment_lost",
                "netfilter_reject",
                "netfilter_drop",
                "ip_forward_off",
                "conntrack_table_full",
                "conntrack_insert_race",
                "rp_filter_drop",
            ]
        );
        for stage in [Stage::BridgeIn, Stage::BridgeOut, Stage::ToHost, Stage::FromHost] {
            let json = serde_json::to_string(&stage).expect("serialises");
            assert_eq!(json, format!("\"{}\"", stage_name(stage)));
            assert_eq!(serde_json::from_str::<Stage>(&json).expect("reads back"), stage);
        }
        let json = serde_json::to_string(&FindingKind::ConntrackSkip).expect("serialises");
        assert_eq!(json, "\"conntrack_skip\"");
        assert_eq!(serde_json::from_str::<FindingKind>(&json).expect("reads back"), FindingKind::ConntrackSkip);
        assert!(serde_json::from_str::<FindingKind>("\"no_such_kind\"").is_err());
        // As a map key, as the summary's counts use it.
        let counts: std::collections::BTreeMap<FindingKind, u64> = [(FindingKind::DnsTimeout, 2)].into();
        let json = serde_json::to_string(&counts).expect("serialises");
        assert_eq!(json, "{\"dns_timeout\":2}");
        assert_eq!(serde_json::from_str::<std::collections::BTreeMap<FindingKind, u64>>(&json).expect("reads"), counts);
    }
}
