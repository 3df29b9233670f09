//! A watch's packet lines: a frame at a bridge stage, the names of its devices and the
//! netfilter hooks it passed since its previous line; and a traced packet that died.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::model::{
    netfilter::{hook_path, stopped_in, DropEvent, DropReason, HookPass},
    packet::{Fate, Fragment, PacketEvent},
    pod::EndpointPods,
    serde_forms,
};

/// Interface names for one event, resolved in the watched network namespace when
/// the event arrived (so a later rename or an ifindex reused after deletion does not
/// rewrite history).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct InterfaceNames {
    pub ifname: Option<String>,
    pub in_ifname: Option<String>,
    pub bridge: Option<String>,
}

/// One line of a watch: a frame at a bridge stage, with the netfilter hooks it passed
/// since its previous line. Serialised, it is the JSON `"type": "packet"` line and the
/// metadata a capture keeps with the frame's bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "packet")]
pub(crate) struct TracedPacket {
    /// Nanoseconds since the Unix epoch.
    #[serde(rename = "time", with = "serde_forms::wall_time")]
    pub wall_time_ns: u64,
    #[serde(flatten)]
    pub event: PacketEvent,
    #[serde(flatten)]
    pub names: InterfaceNames,
    /// The pods holding the source and destination addresses, named by the runtime.
    #[serde(flatten)]
    pub pods: EndpointPods,
    /// The netfilter hooks the packet passed since it was last on the bridge path.
    #[serde(with = "hook_path")]
    pub hooks: Vec<HookPass>,
    /// `accept` when it passed hooks (it came out of them).
    pub verdict: Option<Fate>,
    /// Findings-only watches: a DNS reply that left a bridge without conntrack, and where its
    /// query was sent before DNAT, when the kernel saw that. A capture keeps it, so that its
    /// report judges the reply as the watch did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<SocketAddr>,
}

impl TracedPacket {
    /// Gives the packet the hooks it passed since its previous line.
    pub(crate) fn with_hooks(mut self, hooks: Vec<HookPass>) -> TracedPacket {
        self.verdict = (!hooks.is_empty()).then_some(Fate::Accept);
        self.hooks = hooks;
        self
    }
}

/// A traced packet that died in the kernel, as its line reports it (live, or read back
/// from a capture). Serialised, it is the JSON `"stage": "dropped"` line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "packet")]
pub(crate) struct DropLine {
    #[serde(rename = "time", with = "serde_forms::wall_time")]
    pub wall_time_ns: u64,
    pub stage: DroppedStage,
    /// The kernel's report of the drop.
    #[serde(flatten)]
    pub drop: DropEvent,
    /// The netfilter hooks it passed since it was last on the bridge path; it never left
    /// the last one of a netfilter drop.
    #[serde(rename = "hooks", with = "hook_path")]
    pub path: Vec<HookPass>,
    pub ifname: Option<String>,
    /// The pods holding the source and destination addresses.
    #[serde(flatten)]
    pub pods: EndpointPods,
    /// The bridge the device belongs to (or is).
    pub bridge: Option<String>,
    #[serde(rename = "drop_reason")]
    pub reason: DropReason,
    /// `reject` when the kernel answered with an ICMP error or a REJECT rule did it, else
    /// `drop`.
    pub verdict: Fate,
    /// The ICMP answer in words, e.g. `host-prohibited`.
    pub icmp: Option<String>,
    /// The rule that did it, e.g. `filter/FORWARD #16`, when known.
    pub rule: Option<String>,
    /// Records of this packet's flow that may have been lost while it was followed: then
    /// the hook it stopped in is not certain, and no rule is named.
    pub records_lost: Option<u64>,
}

impl DropLine {
    /// The hook the packet entered and never left: where it was stopped.
    pub(crate) fn stopped_in(&self) -> Option<&HookPass> {
        stopped_in(&self.path)
    }

    /// A netfilter hook stopped it, and a rule can be named for it: not for a later IP
    /// fragment, which carries no ports for the rule walk to match.
    pub(crate) fn stopped_by_rule(&self) -> bool {
        self.reason.is_netfilter_drop() && self.stopped_in().is_some() && self.drop.fragment != Fragment::Later
    }
}

#[cfg(test)]
impl DropLine {
    /// `dropped` as a REJECT rule in filter/FORWARD answered it with ICMP host-prohibited
    /// on port veth-server of bridge cni0, for tests.
    pub(crate) fn example(drop: DropEvent, path: Vec<HookPass>) -> DropLine {
        DropLine {
            drop,
            path,
            wall_time_ns: 1_800_000_000_009_000_000,
            ifname: Some("veth-server".to_string()),
            pods: Default::default(),
            bridge: Some("cni0".to_string()),
            reason: DropReason::NetfilterDrop,
            stage: Default::default(),
            verdict: Fate::Reject,
            icmp: Some("host-prohibited".to_string()),
            rule: Some("filter/FORWARD #16".to_string()),
            records_lost: None,
        }
    }
}

/// The stage of every dropped line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DroppedStage {
    #[default]
    Dropped,
}
