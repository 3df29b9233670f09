//! What the triage decision is made from and made of: the traffic the watch saw, the node
//! checks, the ranked findings; and the words every check gives its findings.

use std::net::SocketAddr;

use crate::{
    firewall::Hook,
    model::netfilter::DropReason,
    model::{packet::L4Proto, sysctl::SysctlValue},
    node::checks::{NamespaceState, Netns},
    schema::finding::{DropEvidence, Evidence, Finding, FindingKind, NetnsRef, NodeEvidence},
};

/// Packet lines that show one example of a traffic finding, as the outputs rendered them
/// (text and JSON). Carried along with the finding; nothing here looks into them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Example {
    pub lines: Vec<String>,
    pub json: Vec<serde_json::Value>,
}

/// Traced packets the kernel dropped for the same reason at the same place, between the
/// same source address and destination.
#[derive(Clone, Debug)]
pub(crate) struct DropGroup {
    pub reason: DropReason,
    /// The hook the packets entered and never left, when they died inside one.
    pub stopped_in: Option<Hook>,
    /// The last hook they passed, when they died after leaving it.
    pub after: Option<Hook>,
    /// The first packet's addresses.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4_proto: L4Proto,
    pub ifname: Option<String>,
    /// The rule the watch attributed the drop to, when it did.
    pub rule: Option<String>,
    pub count: u64,
    pub wall_time_ns: u64,
    pub example: Example,
}

impl DropGroup {
    fn place(&self) -> String {
        match (self.stopped_in, self.after, &self.ifname) {
            (Some(hook), _, _) => format!("in {}", hook.name()),
            (None, Some(hook), _) => format!("after {}", hook.name()),
            (None, None, Some(ifname)) => format!("on {ifname}"),
            (None, None, None) => "in the kernel".to_string(),
        }
    }

    pub(super) fn evidence(&self) -> DropEvidence {
        DropEvidence {
            count: self.count,
            reason: self.reason.clone(),
            place: self.place(),
            src: self.src,
            dst: self.dst,
            proto: self.l4_proto,
            ifname: self.ifname.clone(),
        }
    }
}

/// What the watch saw during the window.
#[derive(Clone, Debug, Default)]
pub(crate) struct Traffic {
    /// The first occurrence of every distinct finding, in order, each with its example.
    pub findings: Vec<(Finding, Example)>,
    pub drops: Vec<DropGroup>,
    /// Occurrences per finding kind, from the watch's summary.
    pub kind_counts: std::collections::BTreeMap<FindingKind, u64>,
}

/// One finding of the report, with everything merged into it.
#[derive(Clone, Debug)]
pub(crate) struct Ranked {
    /// The finding that names the problem; for a merged finding, the traffic one.
    pub finding: Finding,
    /// Further evidence merged in (the node state behind a traffic finding, timeouts it explains).
    pub more: Vec<Evidence>,
    /// Seen on traced packets during the window.
    pub traffic: bool,
    /// Read from the node's configuration or counters.
    pub config: bool,
    /// How often it occurred in the window, where that is known.
    pub occurrences: Option<u64>,
    pub example: Example,
    /// The namespace it was found in.
    pub netns: NetnsRef,
}

impl Ranked {
    /// The node evidence of its finding, when it has some.
    pub(super) fn node(&self) -> Option<&NodeEvidence> {
        match &self.finding.evidence {
            Evidence::Node(node) => Some(node),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    /// Worth knowing, not a cause of broken traffic on its own.
    Note,
    Finding(FindingKind),
}

/// One node check as the report lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Check {
    pub name: String,
    pub value: String,
    pub status: Status,
    /// Why the status, in words (empty when the value says it all).
    pub detail: String,
}

#[derive(Clone, Debug)]
pub(crate) struct NamespaceChecks {
    pub netns: NetnsRef,
    pub label: String,
    pub checks: Vec<Check>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct Decision {
    /// Most likely cause of broken traffic first.
    pub findings: Vec<Ranked>,
    pub namespaces: Vec<NamespaceChecks>,
    /// One line: the top finding's headline, or that the node looks healthy.
    pub verdict: String,
}

pub(super) fn netns_ref(netns: &Netns) -> NetnsRef {
    NetnsRef { name: netns.name.clone(), inode: netns.inode, current: netns.current }
}

pub(super) fn config_only(finding: Finding, netns: &Netns) -> Ranked {
    Ranked {
        finding,
        more: Vec::new(),
        traffic: false,
        config: true,
        occurrences: None,
        example: Example::default(),
        netns: netns_ref(netns),
    }
}

pub(super) fn sysctl_value(state: &NamespaceState, name: &str) -> SysctlValue {
    state.sysctl(name).cloned().unwrap_or(SysctlValue { name: name.to_string(), value: None })
}

pub(super) fn shown(value: &SysctlValue) -> String {
    value.value.clone().unwrap_or_else(|| "(absent: br_netfilter not loaded)".to_string())
}

pub(super) fn node_evidence(netns: &Netns) -> NodeEvidence {
    NodeEvidence { netns: netns_ref(netns), ..NodeEvidence::default() }
}

/// `in network namespace NAME` for another namespace, nothing for the current one.
pub(super) fn where_(netns: &Netns) -> String {
    match (&netns.name, netns.current) {
        (Some(name), false) => format!(" in network namespace {name}"),
        _ => String::new(),
    }
}
