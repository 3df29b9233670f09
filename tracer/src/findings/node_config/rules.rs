//! Firewall rules and chain policies that stop the traced port's traffic in FORWARD or
//! INPUT, on every backend: what the firewall evaluator finds on the way of a probe packet,
//! and which of it is worth a finding.

use std::collections::HashMap;

use super::outcome::{node_evidence, where_, Check, Status};
use crate::findings::netfilter::{owned_advice, Advice, Blocked, Blocker, UNMANAGED};
use crate::model::packet::PortFilter;
use crate::{
    firewall::{
        eval::{self, Fit, Packet, Ruleset},
        Backend, Chain, Condition, Family, Hook, Rule, Snapshot, Verdict,
    },
    model::packet::L4Proto,
    node::checks::{NamespaceState, Netns},
    schema::finding::{ChainRef, Evidence, Finding, FindingKind, RuleRef},
};

/// A packet of the traced port, with everything else about it unknown.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Probe {
    family: Family,
    proto: L4Proto,
    /// None: every port (`--port 0`).
    port: Option<u16>,
    /// true: to the port (a query), false: from it (a reply).
    to_port: bool,
}

impl Probe {
    fn describe(&self) -> String {
        let proto = self.proto;
        match self.port {
            Some(port) if self.to_port => format!("{} {proto} to port {port}", self.family.name()),
            Some(port) => format!("{} {proto} from port {port}", self.family.name()),
            None => format!("{} {proto}", self.family.name()),
        }
    }

    /// The probe as the firewall evaluator takes it: addresses and interfaces unknown.
    fn packet(&self) -> Packet<'static> {
        Packet {
            family: self.family,
            proto: self.proto,
            src: None,
            dst: None,
            sport: self.port.filter(|_| !self.to_port),
            dport: self.port.filter(|_| self.to_port),
            in_iface: None,
            out_iface: None,
        }
    }
}

/// Where a rule or policy that stops the probe sits.
#[derive(Clone, Debug)]
struct Hit {
    chain: usize,
    /// Index of the rule in its chain; None for the chain's policy.
    rule: Option<usize>,
    hook: Hook,
    /// Rules before it may accept some of this traffic.
    after_accept: bool,
    probe: Probe,
}

/// Whether a rule names the probe's port: a port match that holds.
fn names_port(rule: &Rule, packet: &Packet) -> bool {
    rule.matches.tests.iter().any(|test| {
        !test.negated
            && matches!(test.condition, Condition::Dport(_) | Condition::Sport(_))
            && eval::holds(test, packet) == Some(true)
    })
}

/// Rules in FORWARD and INPUT (and the chains they jump to) that drop or reject the traced
/// port's traffic, and DROP policies it falls through to, on every backend.
fn blocking_hits(snapshot: &Snapshot, port: PortFilter) -> Vec<Hit> {
    let ruleset = Ruleset::new(snapshot);
    let port = port.port();
    let mut hits = Vec::new();
    for hook in [Hook::Forward, Hook::LocalIn] {
        for family in [Family::Ipv4, Family::Ipv6] {
            for proto in [L4Proto::Udp, L4Proto::Tcp] {
                for to_port in [true, false] {
                    if port.is_none() && !to_port {
                        continue;
                    }
                    let probe = Probe { family, proto, port, to_port };
                    let packet = probe.packet();
                    for walk in ruleset.walk(hook, &packet) {
                        for met in &walk.met {
                            let rule = ruleset.rule(met);
                            if !matches!(rule.verdict, Verdict::Drop | Verdict::Reject { .. }) {
                                continue;
                            }
                            // A rule aimed at the port is reported even behind accepts that may
                            // let some of the traffic through; a catch-all only when nothing
                            // before it accepts, as that is how a default-deny chain with allow
                            // rules looks.
                            let certain = met.fit == Fit::Yes;
                            if names_port(rule, &packet) || (certain && !met.after_accept) {
                                hits.push(Hit {
                                    chain: met.chain,
                                    rule: Some(met.rule),
                                    hook,
                                    after_accept: met.after_accept,
                                    probe,
                                });
                            }
                        }
                        let chain = ruleset.chain(walk.base);
                        if !walk.decided && chain.policy == Some(Verdict::Drop) && !walk.accept_possible {
                            hits.push(Hit { chain: walk.base, rule: None, hook, after_accept: false, probe });
                        }
                    }
                }
            }
        }
    }
    hits
}

/// The same rule or policy, however many probes reached it.
fn hit_key(hit: &Hit) -> (usize, Option<usize>) {
    (hit.chain, hit.rule)
}

fn policy_label(chain: &Chain) -> String {
    format!("{} {}/{}", chain.backend.name(), chain.table, chain.name)
}

pub(super) fn firewall_findings(
    state: &NamespaceState,
    port: PortFilter,
    now_ns: u64,
    checks: &mut Vec<Check>,
) -> Vec<Finding> {
    let snapshot = &state.firewall;
    let hits = blocking_hits(snapshot, port);
    let mut order: Vec<(usize, Option<usize>)> = Vec::new();
    let mut grouped: HashMap<(usize, Option<usize>), Vec<&Hit>> = HashMap::new();
    for hit in &hits {
        let key = hit_key(hit);
        let entry = grouped.entry(key).or_default();
        if entry.is_empty() {
            order.push(key);
        }
        entry.push(hit);
    }
    let port_words = match port {
        PortFilter::All => "the traced traffic".to_string(),
        PortFilter::Port(_) => port.to_string(),
    };
    let mut found = Vec::new();
    for key in order {
        let group = &grouped[&key];
        let chain = &snapshot.chains[key.0];
        let hooks: Vec<&str> = dedup(group.iter().map(|h| h.hook.name()));
        let probes: Vec<Probe> = dedup(group.iter().map(|h| h.probe));
        let after_accept = group.iter().all(|h| h.after_accept);
        found.push(match key.1 {
            Some(position) => {
                rule_finding(&state.netns, &chain.rules[position], &hooks, &probes, after_accept, &port_words, now_ns)
            }
            None => policy_finding(&state.netns, chain, &hooks, &probes, &port_words, port, now_ns),
        });
    }
    let backends = dedup(snapshot.chains.iter().map(|c| c.backend.name()));
    let rules: usize = snapshot.chains.iter().map(|c| c.rules.len()).sum();
    checks.push(Check {
        name: "firewall".to_string(),
        value: if backends.is_empty() {
            "no rules".to_string()
        } else {
            format!("{rules} rules in {} chains ({})", snapshot.chains.len(), backends.join(", "))
        },
        status: match found.first() {
            Some(f) => Status::Finding(f.kind),
            None => Status::Ok,
        },
        detail: match found.len() {
            0 => format!("no REJECT/DROP rule or DROP policy in FORWARD/INPUT stops {port_words}"),
            1 => format!("a rule or policy in FORWARD/INPUT stops {port_words}"),
            n => format!("{n} rules or policies in FORWARD/INPUT stop {port_words}"),
        },
    });
    found
}

fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

fn rule_finding(
    netns: &Netns,
    rule: &Rule,
    hooks: &[&str],
    probes: &[Probe],
    after_accept: bool,
    port_words: &str,
    now_ns: u64,
) -> Finding {
    let rejects = matches!(rule.verdict, Verdict::Reject { .. });
    let (kind, action) =
        if rejects { (FindingKind::NetfilterReject, "REJECT") } else { (FindingKind::NetfilterDrop, "DROP") };
    let reference = RuleRef::of(rule);
    let (owner, advice) = owned_advice(Blocker::Rule(rule), None, &[], &probed(netns, probes, hooks));
    let cause = advice.as_ref().and_then(|a| a.cause.as_ref()).map(|c| format!(": {c}")).unwrap_or_default();
    let headline = format!(
        "{action} rule for {port_words} in {}{}: {} {}/{} #{} ({}){cause}",
        hooks.join("/"),
        where_(netns),
        rule.backend.name(),
        rule.table,
        rule.chain,
        rule.position,
        rule.text
    );
    let answer = if rejects {
        "The node answers each packet it rejects with an ICMP error (or a TCP reset), which clients report at once (dig: \"host unreachable\", \"connection refused\")."
    } else {
        "Dropped packets get no answer: clients wait and time out."
    };
    let shadow = if after_accept {
        " Rules before it may accept some of this traffic (they match on addresses, interfaces or conntrack state tracer cannot know in advance); what they do not accept reaches this rule."
    } else {
        ""
    };
    let described: Vec<String> = probes.iter().map(Probe::describe).collect();
    let prefix = netns.exec_prefix();
    let (what_now, fix) = match advice {
        Some(Advice { why, fix, .. }) => (why, fix),
        None => (
            format!(
                "It may be intended (a policy that keeps some clients away); if this traffic should pass, remove the \
                 rule or accept the traffic before it. {UNMANAGED}"
            ),
            vec![
                format!("{prefix}{}    # look at the rule and its neighbours first", rule.show_command()),
                format!("{prefix}{}    # remove the rule", rule.delete_command()),
            ],
        ),
    };
    let explanation = format!(
        "This rule sits in a chain that {port_words} traffic passes (hook {}) and matches {}.{shadow} {answer} {what_now}",
        hooks.join(", "),
        described.join(", "),
    );
    let mut evidence = node_evidence(netns);
    evidence.rule = Some(reference);
    evidence.owner = Some(owner);
    evidence.notes =
        vec![format!("matches {}", described.join(", ")), format!("reached from hook {}", hooks.join(", "))];
    Finding { kind, wall_time_ns: now_ns, headline, evidence: Evidence::Node(evidence), explanation, fix }
}

/// The traffic the probes stand for, as the owner's advice takes it.
fn probed(netns: &Netns, probes: &[Probe], hooks: &[&str]) -> Blocked {
    Blocked {
        protos: dedup(probes.iter().map(|p| p.proto)),
        dst: None,
        port: probes.iter().find_map(|p| p.port),
        forwarded: hooks.contains(&Hook::Forward.name()),
        in_iface: None,
        netns_prefix: netns.exec_prefix(),
    }
}

fn policy_finding(
    netns: &Netns,
    chain: &Chain,
    hooks: &[&str],
    probes: &[Probe],
    port_words: &str,
    port: PortFilter,
    now_ns: u64,
) -> Finding {
    let label = policy_label(chain);
    let (owner, advice) = owned_advice(Blocker::Policy(chain), None, &[], &probed(netns, probes, hooks));
    let cause = advice.as_ref().and_then(|a| a.cause.as_ref()).map(|c| format!(" ({c})")).unwrap_or_default();
    let headline = format!(
        "DROP policy stops {port_words} in {}{}: {label} accepts none of it{cause}",
        hooks.join("/"),
        where_(netns)
    );
    let described: Vec<String> = probes.iter().map(Probe::describe).collect();
    let prefix = netns.exec_prefix();
    let port_match = port.port().map(|port| format!(" --dport {port}")).unwrap_or_default();
    let (what_now, fix) = match advice {
        Some(Advice { why, fix, .. }) => (why, fix),
        None => (
            UNMANAGED.to_string(),
            match chain.backend {
                Backend::Nftables => vec![
                    format!(
                        "{prefix}nft add rule {} {} {} dport {port} accept    # accept this traffic explicitly",
                        chain.table, chain.name, "udp"
                    ),
                    format!("{prefix}nft add rule {} {} tcp dport {port} accept", chain.table, chain.name),
                ],
                backend => {
                    let cmd = backend.iptables_command(chain.family);
                    vec![
                        format!(
                            "{prefix}{cmd} -t {} -A {} -p udp{port_match} -j ACCEPT    # accept this traffic explicitly",
                            chain.table, chain.name
                        ),
                        format!("{prefix}{cmd} -t {} -A {} -p tcp{port_match} -j ACCEPT", chain.table, chain.name),
                    ]
                }
            },
        ),
    };
    let explanation = format!(
        "The chain {label} (hook {}) drops what no rule decided, and none of its rules (nor the chains they jump \
         to) can accept {}. Every such packet is dropped silently: clients time out. {what_now}",
        hooks.join(", "),
        described.join(", ")
    );
    let mut evidence = node_evidence(netns);
    evidence.set_policy(&ChainRef::of(chain));
    evidence.owner = Some(owner);
    evidence.notes = vec![format!("no rule accepts {}", described.join(", "))];
    Finding {
        kind: FindingKind::NetfilterDrop,
        wall_time_ns: now_ns,
        headline,
        evidence: Evidence::Node(evidence),
        explanation,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::Traffic;
    use crate::firewall::Backend;
    use crate::model::firewall::Manager;
    use crate::schema::finding::{Evidence, FindingKind};

    #[test]
    fn reject_rule_for_the_port_is_found_on_every_path_once() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
             [0:0] -A FORWARD -p tcp -m tcp --dport 80 -j ACCEPT\n\
             [0:0] -A FORWARD -p udp -m udp --dport 5353 -j DROP\n\
             [0:0] -A FORWARD -j KUBE-SERVICES\n\
             [0:0] -A INPUT -j KUBE-SERVICES\n\
             [0:0] -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n\
             [0:0] -A FORWARD -m conntrack --ctstate INVALID -j DROP\n\
             COMMIT\n"
        );
        let decision = decide_one(lab_node("1", &firewall), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterReject);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        let rule = node.rule.as_ref().expect("the rule");
        assert_eq!((rule.chain.as_str(), rule.position), ("KUBE-SERVICES", 1));
        assert!(node.notes.iter().any(|n| n.contains("FORWARD") && n.contains("LOCAL_IN")), "{:?}", node.notes);
        let owner = node.owner.as_ref().expect("an owner");
        assert_eq!((owner.manager, owner.service.as_deref()), (Manager::KubeProxy, Some("kube-system/kube-dns:dns")));
        // kube-proxy puts a deleted REJECT back at its next sync: the advice is the Service's
        // endpoints, never an edit of its chain.
        let fix = &only.finding.fix;
        assert_eq!(
            fix.first().map(String::as_str),
            Some(
                "kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns -o wide    # its endpoints: none is ready now"
            )
        );
        assert!(
            fix.iter().any(|f| f.starts_with("kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide")),
            "{fix:?}"
        );
        assert!(fix.iter().all(|f| f.starts_with("kubectl ")), "no iptables or nft edit: {fix:?}");
        assert!(only.finding.headline.ends_with(": Service kube-system/kube-dns:dns has no ready endpoints"));
        assert!(
            only.finding.explanation.contains("kube-proxy rewrites this chain on every sync: any edit here is undone"),
            "{}",
            only.finding.explanation
        );
    }

    #[test]
    fn a_rule_nobody_is_known_to_own_is_removed_by_its_specification() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n\
             [0:0] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n"
        );
        let decision = decide_one(lab_node("1", &firewall), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!(node.owner.as_ref().map(|o| o.manager), Some(Manager::Unknown));
        assert!(
            only.finding
                .fix
                .iter()
                .any(|f| f.starts_with("iptables-nft -t filter -D FORWARD -p udp -m udp --dport 53")),
            "deleted by its specification, with the backend's own program: {:?}",
            only.finding.fix
        );
        assert!(only.finding.explanation.contains("change that tool's configuration"), "{}", only.finding.explanation);
    }

    #[test]
    fn docker_drop_policy_is_mended_in_docker_user() {
        let firewall = format!(
            "{LAB_NAT}*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n:DOCKER-FORWARD - [0:0]\n\
             [0:0] -A FORWARD -j DOCKER-USER\n[0:0] -A FORWARD -j DOCKER-FORWARD\n\
             [0:0] -A DOCKER-USER -j RETURN\nCOMMIT\n"
        );
        let decision = decide_one(lab_node("1", &firewall), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!(node.owner.as_ref().map(|o| o.manager), Some(Manager::Docker));
        let fix = &only.finding.fix;
        assert!(fix.contains(&"iptables-nft -I DOCKER-USER -p udp --dport 53 -j ACCEPT    # let this traffic through, ahead of Docker's rules".to_string()), "{fix:?}");
        assert!(fix.iter().all(|f| !f.contains(" -A FORWARD")), "not in the chain Docker rewrites: {fix:?}");
    }

    #[test]
    fn drop_policy_with_allow_rules_is_default_deny_not_a_finding() {
        let allowed = format!(
            "{LAB_NAT}*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -i cni0 -j ACCEPT\n[0:0] -A FORWARD -o cni0 -j ACCEPT\nCOMMIT\n"
        );
        assert!(decide_one(lab_node("1", &allowed), Traffic::default()).findings.is_empty());

        let nothing_accepts = format!(
            "{LAB_NAT}*filter\n:FORWARD DROP [0:0]\n[0:0] -A FORWARD -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n"
        );
        let decision = decide_one(lab_node("1", &nothing_accepts), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::NetfilterDrop);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!((node.policy.as_deref(), node.policy_backend), (Some("filter/FORWARD"), Some(Backend::IptablesNft)));
    }

    #[test]
    fn catch_all_reject_after_accepts_is_not_reported_but_one_before_them_is() {
        let firewalld_like = format!(
            "{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             [0:0] -A FORWARD -i cni0 -j ACCEPT\n[0:0] -A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n"
        );
        assert!(decide_one(lab_node("1", &firewalld_like), Traffic::default()).findings.is_empty());
        let blanket = format!("{LAB_NAT}*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n");
        let decision = decide_one(lab_node("1", &blanket), Traffic::default());
        assert_eq!(decision.findings.len(), 1, "{:#?}", decision.findings);
    }
}
