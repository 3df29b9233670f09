//! Ranks the findings by how likely each explains broken traffic, and words the one-line
//! verdict.

use super::outcome::Ranked;
use crate::schema::finding::FindingKind;

/// Seen on packets and backed by node state first, then seen on packets, then node state of
/// the namespace tracer watched, then of other namespaces.
fn tier(ranked: &Ranked) -> u8 {
    match (ranked.traffic, ranked.config, ranked.netns.current) {
        (true, true, _) => 0,
        (true, false, _) => 1,
        (false, _, true) => 2,
        (false, _, false) => 3,
    }
}

/// Within a tier: causes that break every such flow before partial or symptomatic ones.
fn kind_weight(kind: FindingKind) -> u8 {
    match kind {
        FindingKind::ConntrackSkip => 0,
        FindingKind::NetfilterReject => 1,
        FindingKind::NetfilterDrop => 2,
        FindingKind::StaleConntrackDnat => 2,
        FindingKind::DnsTcpRetryFailed => 2,
        FindingKind::DnsFragmentLost => 2,
        FindingKind::ConntrackTableFull => 3,
        FindingKind::ConntrackInsertRace => 4,
        FindingKind::RpFilterDrop => 5,
        FindingKind::IpForwardOff => 6,
        FindingKind::UnexpectedReplySource => 7,
        FindingKind::DnsTimeout => 8,
        FindingKind::DnsServerFailure => 9,
        // Slow and costly, not broken.
        FindingKind::DnsSearchAmplification => 10,
    }
}

pub(super) fn rank(ranked: &mut [Ranked]) {
    // Stable: equal keys keep the order they were found in.
    ranked.sort_by_key(|r| (tier(r), kind_weight(r.finding.kind), std::cmp::Reverse(r.occurrences.unwrap_or(0))));
}

pub(super) fn verdict(ranked: &[Ranked]) -> String {
    match ranked {
        [] => "healthy: no findings".to_string(),
        [only] => only.finding.headline.clone(),
        [top, rest @ ..] => {
            format!("{} (+{} more finding{})", top.finding.headline, rest.len(), if rest.len() == 1 { "" } else { "s" })
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Stage;

    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::{decide, Example, Traffic};
    use crate::node::checks::ConntrackReading;
    use crate::schema::finding::{Evidence, FindingKind};

    #[test]
    fn other_namespaces_rank_after_the_watched_one_and_say_where() {
        let watched = lab_node("1", LAB_NAT);
        let mut other = lab_node("0", LAB_NAT);
        other.netns = netns(false, Some("ld-node"));
        let mut timeout = timeout_finding();
        if let Evidence::Dns(dns) = &mut timeout.evidence {
            dns.last_seen = Some(crate::schema::finding::Sighting {
                stage: Stage::BridgeOut,
                ifname: Some("veth-server".into()),
                ifindex: 4,
                wall_time_ns: NOW,
            });
        }
        let traffic = Traffic {
            findings: vec![(timeout, Example::default())],
            drops: vec![],
            kind_counts: [(FindingKind::DnsTimeout, 1)].into(),
        };
        let states = [watched, other];
        let after: Vec<ConntrackReading> = states.iter().map(|s| s.conntrack.clone()).collect();
        let decision = decide(&states, &after, traffic, 53.into(), NOW);
        let kinds: Vec<(FindingKind, bool)> =
            decision.findings.iter().map(|r| (r.finding.kind, r.netns.current)).collect();
        assert_eq!(kinds, vec![(FindingKind::DnsTimeout, true), (FindingKind::ConntrackSkip, false)]);
        let other = &decision.findings[1].finding;
        assert!(other.headline.contains("in network namespace ld-node"), "{}", other.headline);
        assert!(
            other.fix.iter().any(|f| f == "ip netns exec ld-node sysctl -w net.bridge.bridge-nf-call-iptables=1"),
            "{:?}",
            other.fix
        );
    }
}
