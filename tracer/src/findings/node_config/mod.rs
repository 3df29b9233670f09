//! Decides what `tracer triage` found: node settings, conntrack state and firewall rules
//! that break the traced port's traffic; traffic findings of the watch, confirmed or
//! explained by that state and merged with it when both point at the same cause; the
//! ranking by how likely each finding explains broken traffic; and the one-line verdict.
//! Deciding only: node state is read by `node::checks`, traffic comes from the
//! watch, printing is `sinks::triage`.
//!
//! One file a group of checks: `bridging` (bridge-nf-call, ip_forward), `rp_filter`,
//! `conntrack`, `rules` (firewall rules and policies); `traffic` merges what the watch saw
//! with them, `ranking` orders the result; `outcome` holds what they all share.

mod bridging;
mod conntrack;
mod outcome;
mod ranking;
mod rp_filter;
mod rules;
mod traffic;

#[cfg(test)]
mod fixtures;

pub(crate) use outcome::{Check, Decision, DropGroup, Example, NamespaceChecks, Ranked, Status, Traffic};

use self::{
    bridging::{bridge_netfilter, forwarding},
    conntrack::conntrack_findings,
    outcome::{config_only, netns_ref},
    ranking::{rank, verdict},
    rp_filter::rp_filter_check,
    rules::firewall_findings,
    traffic::merge_traffic,
};
use crate::model::packet::PortFilter;
use crate::node::checks::{ConntrackReading, NamespaceState};

/// `states[i]` was read before the window and `after[i]` is its conntrack table after it.
/// `port` is the traced port (0: all); `now_ns` stamps findings read from the node.
pub(crate) fn decide(
    states: &[NamespaceState],
    after: &[ConntrackReading],
    traffic: Traffic,
    port: PortFilter,
    now_ns: u64,
) -> Decision {
    let mut ranked = Vec::new();
    let mut namespaces = Vec::new();
    for (at, state) in states.iter().enumerate() {
        let mut checks = Vec::new();
        let after = after.get(at);
        ranked.extend(config_findings(state, after, port, now_ns, &mut checks));
        let mut errors = state.errors.clone();
        errors.extend(state.conntrack.errors.iter().cloned());
        if let Some(after) = after {
            errors.extend(after.errors.iter().cloned());
        }
        namespaces.push(NamespaceChecks { netns: netns_ref(&state.netns), label: state.netns.label(), checks, errors });
    }
    let current = states.iter().find(|s| s.netns.current);
    merge_traffic(&mut ranked, traffic, current);
    rank(&mut ranked);
    let verdict = verdict(&ranked);
    Decision { findings: ranked, namespaces, verdict }
}

fn config_findings(
    state: &NamespaceState,
    after: Option<&ConntrackReading>,
    port: PortFilter,
    now_ns: u64,
    checks: &mut Vec<Check>,
) -> Vec<Ranked> {
    let mut found = Vec::new();
    let netns = &state.netns;
    let bridges: Vec<String> = state.bridges.iter().map(|b| b.name.clone()).collect();
    checks.push(Check {
        name: "bridges".to_string(),
        value: if state.bridges.is_empty() {
            "none".to_string()
        } else {
            state
                .bridges
                .iter()
                .map(
                    |b| {
                        if b.ports.is_empty() {
                            b.name.clone()
                        } else {
                            format!("{} ({})", b.name, b.ports.join(", "))
                        }
                    },
                )
                .collect::<Vec<_>>()
                .join("; ")
        },
        status: Status::Ok,
        detail: String::new(),
    });

    if let Some(finding) = bridge_netfilter(state, &bridges, now_ns, checks) {
        found.push(config_only(finding, netns));
    }
    if let Some(finding) = forwarding(state, &bridges, now_ns, checks) {
        found.push(config_only(finding, netns));
    }
    rp_filter_check(state, checks);
    found.extend(conntrack_findings(state, after, now_ns, checks).into_iter().map(|f| config_only(f, netns)));
    found.extend(firewall_findings(state, port, now_ns, checks).into_iter().map(|f| config_only(f, netns)));
    found
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::{Status, Traffic};

    #[test]
    fn healthy_node_has_no_findings() {
        let decision = decide_one(lab_node("1", LAB_NAT), Traffic::default());
        assert!(decision.findings.is_empty(), "{:#?}", decision.findings);
        assert_eq!(decision.verdict, "healthy: no findings");
        let checks = &decision.namespaces[0].checks;
        assert!(checks.iter().all(|c| !matches!(c.status, Status::Finding(_))), "{checks:#?}");
    }
}
