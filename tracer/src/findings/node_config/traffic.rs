//! Traffic findings of the watch, merged with the node state that confirms or explains
//! them: the node's finding joins the traffic one when both point at the same cause, and
//! drops and timeouts join the finding that explains them.

use tracer_common::Stage;

use super::{
    conntrack::table_pressure,
    outcome::{netns_ref, DropGroup, Example, Ranked, Traffic},
    rp_filter::rp_filter_drop,
};
use crate::{
    firewall::Hook,
    model::netfilter::DropReason,
    node::checks::NamespaceState,
    schema::finding::{DnsEvidence, Evidence, Finding, FindingKind, NetfilterEvidence, NodeEvidence, RuleRef},
};

/// The config-only finding of the current namespace that `pick` selects, taken out of `ranked`.
fn take_config(ranked: &mut Vec<Ranked>, pick: impl Fn(&Ranked, &NodeEvidence) -> bool) -> Option<Ranked> {
    let at = ranked.iter().position(|r| !r.traffic && r.netns.current && r.node().is_some_and(|node| pick(r, node)))?;
    Some(ranked.remove(at))
}

fn same_rule(a: &RuleRef, b: &RuleRef) -> bool {
    a.backend == b.backend
        && a.table == b.table
        && a.chain == b.chain
        && a.text == b.text
        && (a.handle.is_none() || b.handle.is_none() || a.handle == b.handle)
}

fn kind_count(traffic: &Traffic, kind: FindingKind) -> Option<u64> {
    let distinct = traffic.findings.iter().filter(|(f, _)| f.kind == kind).count();
    if distinct != 1 {
        return None;
    }
    traffic.kind_counts.get(&kind).copied()
}

/// A drop the watch could not pin on a rule or policy: nothing in the rulesets did it.
fn unattributed(nf: &NetfilterEvidence) -> bool {
    nf.culprit.position.is_none() && nf.culprit.policy.is_none() && nf.candidates.is_empty()
}

fn netfilter_occurrences(drops: &[DropGroup], nf: &NetfilterEvidence) -> Option<u64> {
    let count: u64 = drops
        .iter()
        .filter(|g| g.stopped_in == Some(nf.hook) && g.src.ip() == nf.src.ip() && g.dst == nf.dst)
        .map(|g| g.count)
        .sum();
    (count > 0).then_some(count)
}

/// Conntrack allocates entries in these hooks: a drop there that no rule did is the table refusing a flow.
fn conntrack_entry_hook(hook: Hook) -> bool {
    matches!(hook, Hook::PreRouting | Hook::LocalOut)
}

pub(super) fn merge_traffic(ranked: &mut Vec<Ranked>, traffic: Traffic, current: Option<&NamespaceState>) {
    let current_netns = current.map(|s| netns_ref(&s.netns)).unwrap_or_default();
    let traffic_only = |finding: Finding, example: Example, occurrences: Option<u64>| Ranked {
        finding,
        more: Vec::new(),
        traffic: true,
        config: false,
        occurrences,
        example,
        netns: current_netns.clone(),
    };
    let mut timeouts = Vec::new();
    for (finding, example) in &traffic.findings {
        let mut item = match (&finding.kind, &finding.evidence) {
            (FindingKind::DnsTimeout, _) => {
                timeouts.push((finding.clone(), example.clone()));
                continue;
            }
            (FindingKind::ConntrackSkip, Evidence::Dns(dns)) => {
                let mut item = traffic_only(finding.clone(), example.clone(), kind_count(&traffic, finding.kind));
                let bridge = dns.bridge.clone();
                if let Some(config) = take_config(ranked, |r, node| {
                    r.finding.kind == FindingKind::ConntrackSkip
                        && bridge.as_ref().is_none_or(|b| node.bridges.contains(b))
                }) {
                    item.config = true;
                    // The node state names every family whose setting is off; the traffic only
                    // the one it saw a reply of.
                    item.finding.fix = config.finding.fix;
                    item.more.push(config.finding.evidence);
                }
                item
            }
            (FindingKind::NetfilterReject | FindingKind::NetfilterDrop, Evidence::Netfilter(nf)) => {
                let occurrences = netfilter_occurrences(&traffic.drops, nf);
                if unattributed(nf) && conntrack_entry_hook(nf.hook) {
                    // No rule did it where conntrack allocates entries: the table may have refused the flow.
                    let mut item = traffic_only(finding.clone(), example.clone(), occurrences);
                    if absorb_into_table_full(ranked, &mut item, &traffic.drops) {
                        continue;
                    }
                    item
                } else {
                    let mut item = traffic_only(finding.clone(), example.clone(), occurrences);
                    let named = nf.culprit.rule();
                    let rules: Vec<&RuleRef> = named.iter().chain(&nf.candidates).collect();
                    let policy = nf.culprit.policy_chain();
                    if let Some(config) = take_config(ranked, |_, node| {
                        node.rule.as_ref().is_some_and(|r| rules.iter().any(|t| same_rule(t, r)))
                            || (policy.is_some() && node.policy_chain() == policy)
                    }) {
                        item.config = true;
                        item.more.push(config.finding.evidence);
                    }
                    item
                }
            }
            _ => traffic_only(finding.clone(), example.clone(), kind_count(&traffic, finding.kind)),
        };
        item.netns = current_netns.clone();
        ranked.push(item);
    }

    // Drops the watch makes no finding of, explained by conntrack counters or rp_filter.
    for group in &traffic.drops {
        if group.reason.is_netfilter_drop() && group.stopped_in.is_none() {
            // Passed every program tracer has in the hook and still died in netfilter: after
            // them only conntrack's confirmation runs, which fails on an insert clash.
            if let Some(race) =
                ranked.iter_mut().find(|r| r.netns.current && r.finding.kind == FindingKind::ConntrackInsertRace)
            {
                add_drops(race, group);
            }
        } else if group.reason == DropReason::Named("IP_RPFILTER".to_string()) {
            rp_filter_drop(ranked, group, current, &current_netns);
        }
    }

    for (timeout, example) in timeouts {
        let Evidence::Dns(dns) = &timeout.evidence else { continue };
        if let Some(cause) = ranked.iter_mut().find(|r| r.traffic && explains_timeout(r, dns)) {
            cause.more.push(timeout.evidence.clone());
            continue;
        }
        let mut item = traffic_only(timeout.clone(), example, kind_count(&traffic, FindingKind::DnsTimeout));
        // A query that reached the host and went no further is what ip_forward=0 does.
        let stopped_at_host =
            dns.last_seen.as_ref().is_some_and(|s| matches!(s.stage, Stage::ToHost | Stage::BridgeIn));
        if stopped_at_host {
            if let Some(mut config) = take_config(ranked, |r, _| r.finding.kind == FindingKind::IpForwardOff) {
                config.traffic = true;
                config.more.push(timeout.evidence.clone());
                config.example = item.example;
                config.occurrences = item.occurrences;
                ranked.push(config);
                continue;
            }
        }
        item.netns = current_netns.clone();
        ranked.push(item);
    }
}

fn add_drops(item: &mut Ranked, group: &DropGroup) {
    item.traffic = true;
    if item.example.lines.is_empty() {
        item.example = group.example.clone();
    }
    item.occurrences = Some(item.occurrences.unwrap_or(0) + group.count);
    let drops = group.evidence();
    match &mut item.finding.evidence {
        Evidence::Node(node) if node.drops.is_none() => node.drops = Some(drops),
        _ => item.more.push(Evidence::Node(NodeEvidence {
            netns: item.netns.clone(),
            drops: Some(drops),
            ..NodeEvidence::default()
        })),
    }
}

/// An unattributed drop where conntrack allocates entries, while the table refused or evicted
/// flows: the table's finding takes it over.
fn absorb_into_table_full(ranked: &mut [Ranked], item: &mut Ranked, drops: &[DropGroup]) -> bool {
    let Evidence::Netfilter(nf) = &item.finding.evidence else { return false };
    let Some(full) = ranked.iter_mut().find(|r| {
        r.netns.current
            && r.finding.kind == FindingKind::ConntrackTableFull
            && r.node().and_then(|n| n.conntrack.as_ref()).is_some_and(|c| table_pressure(&c.counters).0 > 0)
    }) else {
        return false;
    };
    let matching: Vec<&DropGroup> = drops
        .iter()
        .filter(|g| {
            g.reason.is_netfilter_drop()
                && g.stopped_in == Some(nf.hook)
                && g.src.ip() == nf.src.ip()
                && g.dst == nf.dst
        })
        .collect();
    if matching.is_empty() {
        full.traffic = true;
        full.example = std::mem::take(&mut item.example);
        full.more.push(item.finding.evidence.clone());
    }
    for group in matching {
        add_drops(full, group);
    }
    true
}

/// A traffic finding about drops of the client's packets explains its unanswered queries (a
/// rejected query looks unanswered too: the ICMP error goes to the client, not to a reply).
fn explains_timeout(cause: &Ranked, timeout: &DnsEvidence) -> bool {
    let client = timeout.client.ip();
    let src_of = |evidence: &Evidence| match evidence {
        Evidence::Netfilter(nf) => Some(nf.src.ip()),
        Evidence::Node(node) => node.drops.as_ref().map(|d| d.src.ip()),
        Evidence::Dns(_) => None,
    };
    matches!(
        cause.finding.kind,
        FindingKind::NetfilterReject
            | FindingKind::NetfilterDrop
            | FindingKind::ConntrackTableFull
            | FindingKind::ConntrackInsertRace
            | FindingKind::RpFilterDrop
    ) && std::iter::once(&cause.finding.evidence).chain(&cause.more).any(|e| src_of(e) == Some(client))
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::{Example, Traffic};
    use crate::firewall::{parse_iptables_save, Backend, Family, Hook};
    use crate::model::netfilter::DropReason;
    use crate::schema::finding::{Culprit, Evidence, FindingKind, RuleRef};

    #[test]
    fn traffic_and_config_conntrack_skip_merge_and_rank_first() {
        let mut state = lab_node("0", LAB_NAT);
        // Something else is wrong too: a REJECT for port 53 in INPUT, never hit.
        state.firewall.chains.extend(parse_iptables_save(
            "*filter\n:INPUT ACCEPT [0:0]\n[0:0] -A INPUT -p tcp -m tcp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n",
            Backend::IptablesNft,
            Family::Ipv4,
        ));
        let traffic = Traffic {
            findings: vec![(
                sighting_dns_finding(FindingKind::ConntrackSkip),
                Example { lines: vec!["reply line".into()], json: vec![] },
            )],
            drops: vec![],
            kind_counts: [(FindingKind::ConntrackSkip, 2)].into(),
        };
        let decision = decide_one(state, traffic);
        let kinds: Vec<FindingKind> = decision.findings.iter().map(|r| r.finding.kind).collect();
        assert_eq!(kinds, vec![FindingKind::ConntrackSkip, FindingKind::NetfilterReject]);
        let top = &decision.findings[0];
        assert!(top.traffic && top.config, "merged: {top:#?}");
        assert!(matches!(top.finding.evidence, Evidence::Dns(_)));
        assert!(matches!(top.more.as_slice(), [Evidence::Node(node)] if node.bridges == ["cni0"]));
        assert_eq!(top.occurrences, Some(2));
        assert_eq!(top.example.lines, vec!["reply line"]);
        assert!(
            top.finding.fix.iter().any(|f| f == "sysctl -w net.bridge.bridge-nf-call-ip6tables=1"),
            "both families: {:?}",
            top.finding.fix
        );
        assert!(decision.verdict.starts_with("DNS replies skip conntrack on bridge cni0: "), "{}", decision.verdict);
        assert!(decision.verdict.ends_with("(+1 more finding)"), "{}", decision.verdict);
    }

    #[test]
    fn traffic_reject_merges_with_the_configured_rule() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[3:180] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n"
        );
        let state = lab_node("1", &firewall);
        let rule = state
            .firewall
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .find(|r| r.chain == "FORWARD")
            .map(RuleRef::of)
            .expect("rule");
        let mut finding = unattributed_drop_finding(Hook::Forward);
        finding.kind = FindingKind::NetfilterReject;
        finding.headline =
            "REJECT in FORWARD: udp 10.244.0.5:41000 → 10.244.0.7:53 stopped by iptables-nft rule #1 of filter/FORWARD"
                .into();
        let Evidence::Netfilter(nf) = &mut finding.evidence else { panic!("netfilter evidence") };
        nf.dst = "10.244.0.7:53".parse().expect("addr");
        nf.out_ifname = Some("cni0".into());
        nf.culprit = Culprit::of(Some(rule), None);
        nf.attribution = "only rule".into();
        nf.icmp = Some("host-prohibited".into());
        let mut group = drop_group(DropReason::NetfilterDrop, Some(Hook::Forward), None, 3);
        group.dst = "10.244.0.7:53".parse().expect("addr");
        let traffic = Traffic {
            findings: vec![(finding, Example::default()), (timeout_finding(), Example::default())],
            drops: vec![group],
            kind_counts: [(FindingKind::NetfilterReject, 3), (FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide_one(state, traffic);
        // The rejected query looked unanswered to the watch: the reject explains that timeout.
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterReject);
        assert!(only.traffic && only.config);
        assert_eq!(only.occurrences, Some(3));
        assert!(
            matches!(only.more.as_slice(), [Evidence::Node(node), Evidence::Dns(_)] if node.rule.is_some()),
            "{:#?}",
            only.more
        );
    }
}
