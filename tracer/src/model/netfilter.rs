//! What the kernel reports of a traced packet at the netfilter hooks: the hooks it passed
//! on its way, a drop, the kernel's ICMP answer.

use std::net::SocketAddr;

use serde::{ser::SerializeMap, Deserialize, Serialize, Serializer};

use super::{
    hook::{Family, Hook},
    packet::{Conntrack, Fragment, L4Proto, LossStamps, Nat, Times},
    serde_forms,
};

/// Where the kernel recorded a point of a packet's path: its source then, and that source's
/// loss bucket (a record of the path lost later shows as growth there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamped {
    pub src: SocketAddr,
    pub loss: LossStamps,
    pub timestamp_ns: u64,
}

/// A traced packet freed as dropped. Serialised, the fields of its `dropped` line that
/// the kernel reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DropEvent {
    pub timestamp_ns: u64,
    #[serde(skip)]
    pub loss: LossStamps,
    #[serde(rename = "netns")]
    pub netns_inode: u32,
    pub ifindex: u32,
    /// `enum skb_drop_reason` value; named through the kernel's BTF (the name is what a
    /// line shows and keeps).
    #[serde(skip)]
    pub reason: u32,
    #[serde(rename = "ip_version", with = "serde_forms::ip_version")]
    pub family: Family,
    #[serde(rename = "proto")]
    pub l4_proto: L4Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// An IP fragment's place (absent for a whole datagram).
    #[serde(default, skip_serializing_if = "Fragment::is_whole")]
    pub fragment: Fragment,
    /// Occurrences this record stands for (absent: once).
    #[serde(default, skip_serializing_if = "Times::is_once")]
    pub occurrences: Times,
}

/// The kernel answered a traced packet with ICMP (the packet is the journey's own).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IcmpEvent {
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// One netfilter hook on a packet's way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HookPass {
    pub hook: Hook,
    pub family: Family,
    /// Seen at the end of the hook's priority range: every hook function let it through.
    pub left: bool,
    /// Conntrack as the packet left the hook (or as it entered, when it never left).
    pub conntrack: Conntrack,
    /// The hook's devices, for naming a rule's interfaces; not part of a line.
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    /// Where the kernel recorded it, for the loss check; not part of a line.
    pub stamped: Option<Stamped>,
}

#[cfg(test)]
impl DropEvent {
    /// A UDP packet dropped with reason 12 on ifindex 2 of namespace 1, for tests.
    pub(crate) fn example(timestamp_ns: u64, src: SocketAddr, dst: SocketAddr) -> DropEvent {
        DropEvent {
            timestamp_ns,
            loss: Default::default(),
            netns_inode: 1,
            occurrences: Default::default(),
            ifindex: 2,
            reason: 12,
            family: if src.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 },
            l4_proto: L4Proto::Udp,
            src,
            dst,
            fragment: Default::default(),
        }
    }
}

impl HookPass {
    pub(crate) fn nat(&self) -> Vec<Nat> {
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
        PassInPath { pass: self, as_before: false }.serialize(serializer)
    }
}

/// A hook pass in a line's path: its conntrack (and the NAT it shows) is left out where it is
/// what the previous hook had, as it is at most hooks of a packet's way. Each of a path's
/// objects would otherwise repeat the same entry, and a traced watch writes that path for every
/// packet: it was most of the bytes of a JSON line.
struct PassInPath<'a> {
    pass: &'a HookPass,
    as_before: bool,
}

impl Serialize for PassInPath<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let pass = self.pass;
        let mut map = serializer.serialize_map(Some(if self.as_before { 3 } else { 5 }))?;
        map.serialize_entry("hook", &pass.hook)?;
        map.serialize_entry("family", &pass.family)?;
        map.serialize_entry("left", &pass.left)?;
        if !self.as_before {
            map.serialize_entry("conntrack", &pass.conntrack)?;
            map.serialize_entry("nat", &pass.conntrack.nat_text())?;
        }
        map.end()
    }
}

/// A line's hook path (`hooks`) ↔ JSON, a hook without `conntrack` having the previous one's.
pub(crate) mod hook_path {
    use serde::{ser::SerializeSeq, Deserialize, Deserializer, Serializer};

    use super::{HookPass, PassInPath};
    use crate::model::{
        hook::{Family, Hook},
        packet::Conntrack,
    };

    pub(crate) fn serialize<S: Serializer>(path: &[HookPass], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(path.len()))?;
        let mut previous: Option<&Conntrack> = None;
        for pass in path {
            seq.serialize_element(&PassInPath { pass, as_before: previous == Some(&pass.conntrack) })?;
            previous = Some(&pass.conntrack);
        }
        seq.end()
    }

    /// A hook of a path as written: `conntrack` absent means the previous hook's, `null` none.
    #[derive(Deserialize)]
    struct Written {
        hook: Hook,
        family: Family,
        left: bool,
        #[serde(default, deserialize_with = "present")]
        conntrack: Option<Conntrack>,
    }

    fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Conntrack>, D::Error> {
        Conntrack::deserialize(deserializer).map(Some)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<HookPass>, D::Error> {
        let written = Vec::<Written>::deserialize(deserializer)?;
        let mut path: Vec<HookPass> = Vec::with_capacity(written.len());
        for w in written {
            let conntrack = match (w.conntrack, path.last()) {
                (Some(conntrack), _) => conntrack,
                (None, Some(previous)) => previous.conntrack.clone(),
                (None, None) => return Err(serde::de::Error::missing_field("conntrack")),
            };
            path.push(HookPass {
                hook: w.hook,
                family: w.family,
                left: w.left,
                conntrack,
                in_ifindex: 0,
                out_ifindex: 0,
                stamped: None,
            });
        }
        Ok(path)
    }
}

/// The hook a packet entered and never left, where its path ends in one: where it was stopped.
pub(crate) fn stopped_in(path: &[HookPass]) -> Option<&HookPass> {
    path.last().filter(|pass| !pass.left)
}

/// Why the kernel freed a traced packet, as a line names it: a member of the running
/// kernel's `enum skb_drop_reason` without its `SKB_DROP_REASON_` prefix. Serialised as
/// that name (`NETFILTER_DROP`), `NOT_SPECIFIED`, or `reason N` for a value the kernel's
/// BTF does not name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    /// Dropped by a netfilter hook: the kernel said so, or a kernel without drop reasons
    /// freed the packet in a hook it never left.
    NetfilterDrop,
    /// The kernel gave no reason (kernels before 5.17 never do).
    NotSpecified,
    /// Another reason the kernel named, e.g. `IP_RPFILTER`.
    Named(String),
    /// A value the running kernel's BTF has no name for.
    Unnamed(u32),
}

const NETFILTER_DROP: &str = "NETFILTER_DROP";
const NOT_SPECIFIED: &str = "NOT_SPECIFIED";
const UNNAMED_PREFIX: &str = "reason ";

impl DropReason {
    /// The reason of a kernel report: `value` named through `names` (the kernel's enum, read
    /// from its BTF), or, from a kernel that gives no reason (`value` is `no_reason`), inferred
    /// from the packet's path: one freed in a hook it never left was dropped by netfilter.
    pub(crate) fn resolve(
        value: u32,
        no_reason: u32,
        names: &std::collections::HashMap<u32, String>,
        path: &[HookPass],
    ) -> DropReason {
        match names.get(&value) {
            Some(name) => DropReason::from_name(name),
            None if value == no_reason && stopped_in(path).is_some() => DropReason::NetfilterDrop,
            None if value == no_reason => DropReason::NotSpecified,
            None => DropReason::Unnamed(value),
        }
    }

    /// Back from the name a line shows.
    pub(crate) fn from_name(name: &str) -> DropReason {
        match name {
            NETFILTER_DROP => DropReason::NetfilterDrop,
            NOT_SPECIFIED => DropReason::NotSpecified,
            _ => match name.strip_prefix(UNNAMED_PREFIX).and_then(|value| value.parse().ok()) {
                Some(value) => DropReason::Unnamed(value),
                None => DropReason::Named(name.to_string()),
            },
        }
    }

    pub(crate) fn is_netfilter_drop(&self) -> bool {
        *self == DropReason::NetfilterDrop
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::NetfilterDrop => f.write_str(NETFILTER_DROP),
            DropReason::NotSpecified => f.write_str(NOT_SPECIFIED),
            DropReason::Named(name) => f.write_str(name),
            DropReason::Unnamed(value) => write!(f, "{UNNAMED_PREFIX}{value}"),
        }
    }
}

impl Serialize for DropReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DropReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<DropReason, D::Error> {
        Ok(DropReason::from_name(&String::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod drop_reason_tests {
    use std::collections::HashMap;

    use super::*;

    fn pass(left: bool) -> HookPass {
        HookPass {
            hook: Hook::Forward,
            family: Family::Ipv4,
            left,
            conntrack: Conntrack::None,
            in_ifindex: 2,
            out_ifindex: 3,
            stamped: None,
        }
    }

    #[test]
    fn a_reason_is_named_by_the_kernel_or_inferred_from_the_path_and_reads_back_as_written() {
        const NONE: u32 = u32::MAX;
        let names: HashMap<u32, String> =
            [(12, "NETFILTER_DROP".to_string()), (2, "NOT_SPECIFIED".to_string()), (5, "IP_RPFILTER".to_string())]
                .into();
        assert_eq!(DropReason::resolve(12, NONE, &names, &[]), DropReason::NetfilterDrop);
        assert_eq!(DropReason::resolve(5, NONE, &names, &[]), DropReason::Named("IP_RPFILTER".into()));
        assert_eq!(DropReason::resolve(99, NONE, &names, &[]), DropReason::Unnamed(99));
        // A kernel without reasons: freed in a hook it never left, or anywhere else.
        assert_eq!(DropReason::resolve(NONE, NONE, &HashMap::new(), &[pass(false)]), DropReason::NetfilterDrop);
        assert_eq!(DropReason::resolve(NONE, NONE, &HashMap::new(), &[pass(true)]), DropReason::NotSpecified);
        for reason in [
            DropReason::NetfilterDrop,
            DropReason::NotSpecified,
            DropReason::Named("IP_RPFILTER".into()),
            DropReason::Unnamed(99),
        ] {
            let json = serde_json::to_string(&reason).expect("serialises");
            assert_eq!(serde_json::from_str::<DropReason>(&json).expect("reads back"), reason, "{json}");
        }
        assert_eq!(serde_json::to_string(&DropReason::Unnamed(7)).expect("serialises"), "\"reason 7\"");
    }
}

#[cfg(test)]
mod hook_path_tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::model::packet::{ConntrackEntry, FlowTuple};

    fn dnat_entry(ctinfo: u8) -> Conntrack {
        let addr = |text: &str| text.parse().expect("an address");
        Conntrack::Attached(ConntrackEntry {
            ctinfo,
            status: Some((1 << 3) | (1 << 5) | (1 << 8)),
            original: Some(FlowTuple { src: addr("10.244.0.5:40000"), dst: addr("10.96.0.10:53") }),
            reply: Some(FlowTuple { src: addr("10.244.0.7:53"), dst: addr("10.244.0.5:40000") }),
        })
    }

    fn pass(hook: Hook, conntrack: Conntrack) -> HookPass {
        HookPass { hook, family: Family::Ipv4, left: true, conntrack, in_ifindex: 0, out_ifindex: 0, stamped: None }
    }

    #[derive(Serialize, Deserialize)]
    struct Line {
        #[serde(with = "hook_path")]
        hooks: Vec<HookPass>,
    }

    #[test]
    fn a_hook_leaves_out_the_conntrack_the_previous_one_had_and_reads_it_back() {
        let new = dnat_entry(2);
        let established = dnat_entry(0);
        let path = vec![
            pass(Hook::PreRouting, Conntrack::None),
            pass(Hook::Forward, new.clone()),
            pass(Hook::PostRouting, new.clone()),
            pass(Hook::LocalIn, established),
            pass(Hook::LocalOut, Conntrack::None),
        ];
        let written: Value = serde_json::to_value(Line { hooks: path.clone() }).expect("serialises");
        let hooks = written["hooks"].as_array().expect("an array");
        let with_conntrack: Vec<bool> = hooks.iter().map(|h| h.get("conntrack").is_some()).collect();
        // The first always; then where it changes, a change to none (null) included.
        assert_eq!(with_conntrack, [true, true, false, true, true]);
        assert_eq!(hooks[0]["conntrack"], Value::Null);
        assert_eq!(hooks[2], json!({"hook": "POST_ROUTING", "family": "ipv4", "left": true}));
        assert!(hooks[1]["nat"].as_str().is_some_and(|nat| nat.starts_with("dnat")));
        let back: Line = serde_json::from_value(written).expect("reads back");
        assert_eq!(back.hooks, path);
    }

    #[test]
    fn a_path_written_whole_reads_the_same() {
        // Lines written before the compact form carry every hook's conntrack.
        let whole = json!({"hooks": [
            {"hook": "PRE_ROUTING", "family": "ipv4", "left": true, "conntrack": null, "nat": null},
            {"hook": "FORWARD", "family": "ipv4", "left": false, "conntrack": null, "nat": null},
        ]});
        let line: Line = serde_json::from_value(whole).expect("reads");
        assert_eq!(line.hooks.len(), 2);
        assert!(line.hooks.iter().all(|h| h.conntrack == Conntrack::None));
        assert!(!line.hooks[1].left);
        // A first hook without one has nothing to take it from.
        let headless = json!({"hooks": [{"hook": "FORWARD", "family": "ipv4", "left": true}]});
        assert!(serde_json::from_value::<Line>(headless).is_err());
    }
}
