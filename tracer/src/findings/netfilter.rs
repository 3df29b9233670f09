//! Decides what a packet that died in a netfilter hook means: which rule or chain
//! policy stopped it, in words, and how to undo it.

use super::attribution::{answer_name, attribute, Attribution, HookDrop};
use crate::{
    firewall::{Backend, Family, Snapshot, Verdict},
    model::netfilter::DropReason,
    schema::finding::{ChainRef, Culprit, Evidence, Finding, FindingKind, NetfilterEvidence, RuleRef},
};

/// The finding for a packet a netfilter hook dropped or rejected (`packet`, as the hook
/// saw it). `before` and `after` are the rulesets with counters from before the drop and
/// from now.
pub(crate) fn judge_drop(packet: &HookDrop, wall_time_ns: u64, before: &Snapshot, after: &Snapshot) -> Finding {
    let family = packet.family;
    let icmp = packet.icmp.map(|(icmp_type, icmp_code)| answer_name(family, icmp_type, icmp_code));
    let attribution = attribute(before, after, packet);
    let rejected =
        icmp.is_some() || attribution.rule.as_ref().is_some_and(|r| matches!(r.verdict, Verdict::Reject { .. }));
    let kind = if rejected { FindingKind::NetfilterReject } else { FindingKind::NetfilterDrop };
    let action = if rejected { "REJECT" } else { "DROP" };
    let proto = packet.proto;
    let hook = packet.hook;
    let evidence = NetfilterEvidence {
        src: packet.src,
        dst: packet.dst,
        proto,
        hook,
        in_ifname: packet.in_iface.clone(),
        out_ifname: packet.out_iface.clone(),
        pods: Default::default(),
        culprit: Culprit::of(attribution.rule.as_ref().map(RuleRef::of), attribution.policy.as_ref().map(ChainRef::of)),
        candidates: attribution.candidates.iter().map(RuleRef::of).collect(),
        attribution: attribution.reason.clone(),
        icmp: icmp.clone(),
        drop_reason: DropReason::NetfilterDrop,
        owner: None,
        element: attribution.element.clone(),
    };
    let by = culprit(&attribution);
    let headline = format!("{action} in {hook}: {proto} {} → {} stopped by {by}", packet.src, packet.dst);
    let answer = match &icmp {
        Some(name) => format!(
            " The node answered the sender with ICMP {name}, which a client reports as an error at once (dig: \"host unreachable\" or \"connection refused\")."
        ),
        None => " Nothing tells the sender: it waits and times out.".to_string(),
    };
    let explanation = format!(
        "The packet entered netfilter hook {hook} and never left it: {by} {} it.{answer} {}",
        if rejected { "rejected" } else { "dropped" },
        attribution.reason
    );
    Finding {
        kind,
        wall_time_ns,
        headline,
        evidence: Evidence::Netfilter(evidence),
        explanation,
        fix: fix_commands(&attribution, packet, proto.name()),
    }
}

/// `filter/FORWARD #16` (what the drop line names), when the attribution is certain.
pub(crate) fn short_label(finding: &Finding) -> Option<String> {
    let Evidence::Netfilter(nf) = &finding.evidence else { return None };
    match (nf.culprit.rule(), nf.culprit.policy_chain()) {
        (Some(rule), _) => Some(format!("{}/{} #{}", rule.table, rule.chain, rule.position)),
        (None, Some(policy)) => Some(format!("{} policy", policy.label())),
        _ if !nf.candidates.is_empty() => Some(format!("one of {} rules", nf.candidates.len())),
        _ => None,
    }
}

fn culprit(attribution: &Attribution) -> String {
    if let Some(rule) = &attribution.rule {
        return format!(
            "{} rule #{} of {}/{} ({})",
            rule.backend.name(),
            rule.position,
            rule.table,
            rule.chain,
            rule.text
        );
    }
    if let Some(chain) = &attribution.policy {
        return format!("the DROP policy of {} chain {}/{}", chain.backend.name(), chain.table, chain.name);
    }
    if !attribution.candidates.is_empty() {
        return format!("one of {} rules that could have matched (listed below)", attribution.candidates.len());
    }
    "a rule tracer could not name".to_string()
}

fn fix_commands(attribution: &Attribution, packet: &HookDrop, proto: &str) -> Vec<String> {
    let port = packet.dst.port();
    let allow_match = format!("-p {proto} -d {} --dport {port}", packet.dst.ip());
    if let Some(rule) = &attribution.rule {
        let allow = match rule.backend {
            Backend::Nftables => format!(
                "nft insert rule {} {} {} daddr {} {proto} dport {port} accept    # or let this traffic through, at the top of the chain",
                rule.table,
                rule.chain,
                if packet.family == Family::Ipv6 { "ip6" } else { "ip" },
                packet.dst.ip()
            ),
            backend => format!(
                "{} -t {} -I {} 1 {allow_match} -j ACCEPT    # or let this traffic through, at the top of the chain",
                backend.iptables_command(rule.family),
                rule.table,
                rule.chain
            ),
        };
        return vec![
            format!("{}    # look at the rule and its neighbours first", rule.show_command()),
            format!("{}    # remove the rule", rule.delete_command()),
            allow,
        ];
    }
    if let Some(chain) = &attribution.policy {
        return match chain.backend {
            Backend::Nftables => vec![format!(
                "nft add rule {} {} {} daddr {} {proto} dport {port} accept    # the chain's policy is drop: accept this traffic explicitly",
                chain.table,
                chain.name,
                if packet.family == Family::Ipv6 { "ip6" } else { "ip" },
                packet.dst.ip()
            )],
            backend => {
                let cmd = backend.iptables_command(chain.family);
                vec![format!(
                    "{cmd} -t {} -A {} {allow_match} -j ACCEPT    # the chain's policy is DROP: accept this traffic explicitly",
                    chain.table, chain.name
                )]
            }
        };
    }
    vec![
        "iptables -S; ip6tables -S; iptables-legacy -S; nft -a list ruleset    # find the REJECT/DROP rule for this traffic".to_string(),
    ]
}
