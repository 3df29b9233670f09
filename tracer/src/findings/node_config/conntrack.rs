//! The conntrack table: how full it is, and the counters that say the kernel lost packets
//! for it during the window (a full table, insert races).

use super::outcome::{node_evidence, where_, Check, Status};
use crate::{
    node::checks::{ConntrackReading, ConntrackStats, NamespaceState, Netns},
    schema::finding::{ConntrackEvidence, CounterEvidence, Evidence, Finding, FindingKind, NodeEvidence},
};

/// A conntrack table this full is reported even before the kernel drops anything.
const TABLE_FULL_PERCENT: u64 = 90;

const TABLE_BUSY_PERCENT: u64 = 75;

/// Counters of `/proc/net/stat/nf_conntrack` that explain lost packets. A failed insert is
/// counted in `drop` as well as `insert_failed`, so the table-full finding shows both.
const TABLE_FULL_COUNTERS: [&str; 3] = ["drop", "early_drop", "insert_failed"];

const INSERT_RACE_COUNTERS: [&str; 3] = ["insert_failed", "drop", "clashres"];

/// A counter as the report shows it: its latest total and, with both readings, its growth.
fn counter(
    before: Option<&ConntrackStats>,
    after: Option<&ConntrackStats>,
    name: &'static str,
) -> Option<CounterEvidence> {
    let latest = after.or(before)?;
    let total = latest.total(name)?;
    let growth = match (before, after) {
        (Some(b), Some(a)) => b.growth(a, name),
        _ => None,
    };
    Some(CounterEvidence { name: name.to_string(), total, growth })
}

fn growth_of(counters: &[CounterEvidence], name: &str) -> u64 {
    counters.iter().find(|c| c.name == name).and_then(|c| c.growth).unwrap_or(0)
}

/// New flows the table refused during the window, and entries it evicted to make room.
/// `drop` also counts every failed insert; only the rest is the table refusing flows.
pub(super) fn table_pressure(counters: &[CounterEvidence]) -> (u64, u64) {
    let refused = growth_of(counters, "drop").saturating_sub(growth_of(counters, "insert_failed"));
    (refused, growth_of(counters, "early_drop"))
}

/// Conntrack table usage against `nf_conntrack_max`, and the counters that say the kernel
/// lost packets for conntrack (table full, insert races), compared before and after the window.
pub(super) fn conntrack_findings(
    state: &NamespaceState,
    after: Option<&ConntrackReading>,
    now_ns: u64,
    checks: &mut Vec<Check>,
) -> Vec<Finding> {
    let before = &state.conntrack;
    let count = after.and_then(|a| a.count).or(before.count);
    let max = after.and_then(|a| a.max).or(before.max);
    let stats_before = before.stats.as_ref();
    let stats_after = after.and_then(|a| a.stats.as_ref());
    let percent = match (count, max) {
        (Some(count), Some(max)) if max > 0 => Some(count.saturating_mul(100) / max),
        _ => None,
    };
    let names = ["insert_failed", "drop", "early_drop", "clashres"];
    let counters: Vec<CounterEvidence> = names.iter().filter_map(|n| counter(stats_before, stats_after, n)).collect();
    let (refused, evicted) = table_pressure(&counters);
    let race_growth = growth_of(&counters, "insert_failed");
    let full = percent.is_some_and(|p| p >= TABLE_FULL_PERCENT) || refused + evicted > 0;

    let usage_status = match percent {
        Some(p) if p >= TABLE_FULL_PERCENT => Status::Finding(FindingKind::ConntrackTableFull),
        Some(p) if p >= TABLE_BUSY_PERCENT => Status::Note,
        _ => Status::Ok,
    };
    checks.push(Check {
        name: "conntrack table".to_string(),
        value: match (count, max, percent) {
            (Some(c), Some(m), Some(p)) => format!("{c} / {m} entries ({p}%)"),
            (Some(c), _, _) => format!("{c} entries"),
            _ => "not in use".to_string(),
        },
        status: usage_status,
        detail: String::new(),
    });
    if !counters.is_empty() {
        let value = counters
            .iter()
            .map(|c| match c.growth {
                Some(g) => format!("{} {} (+{g})", c.name, c.total),
                None => format!("{} {}", c.name, c.total),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let lost_ever = counters.iter().any(|c| c.name != "clashres" && c.total > 0);
        let status = if refused + evicted > 0 {
            Status::Finding(FindingKind::ConntrackTableFull)
        } else if race_growth > 0 {
            Status::Finding(FindingKind::ConntrackInsertRace)
        } else if lost_ever {
            Status::Note
        } else {
            Status::Ok
        };
        checks.push(Check {
            name: "conntrack stats".to_string(),
            value,
            status,
            detail: match status {
                Status::Note => "totals since boot; none grew during the window".to_string(),
                _ => "+n: grown during the window".to_string(),
            },
        });
    }

    let netns = &state.netns;
    let mut found = Vec::new();
    if full {
        let mut evidence = node_evidence(netns);
        evidence.conntrack = Some(ConntrackEvidence {
            count,
            max,
            counters: counters.iter().filter(|c| TABLE_FULL_COUNTERS.contains(&c.name.as_str())).cloned().collect(),
        });
        found.push(table_full(evidence, netns, count, max, percent, (refused, evicted), now_ns));
    }
    if race_growth > 0 {
        let mut evidence = node_evidence(netns);
        evidence.conntrack = Some(ConntrackEvidence {
            count,
            max,
            counters: counters.iter().filter(|c| INSERT_RACE_COUNTERS.contains(&c.name.as_str())).cloned().collect(),
        });
        found.push(insert_race(evidence, netns, race_growth, now_ns));
    }
    found
}

fn table_full(
    evidence: NodeEvidence,
    netns: &Netns,
    count: Option<u64>,
    max: Option<u64>,
    percent: Option<u64>,
    (refused, evicted): (u64, u64),
    now_ns: u64,
) -> Finding {
    let usage = match (count, max, percent) {
        (Some(c), Some(m), Some(p)) => format!("{c} of {m} entries ({p}%)"),
        _ => "usage unknown".to_string(),
    };
    let headline = match (refused, evicted) {
        (0, 0) => format!("Conntrack table nearly full{}: {usage}", where_(netns)),
        (0, evicted) => format!("Conntrack table full{}: {usage}; the kernel evicted {evicted} unanswered flows to make room during the window", where_(netns)),
        (refused, _) => format!("Conntrack table full{}: {usage}; the kernel refused {refused} new flows during the window", where_(netns)),
    };
    let bigger = max.map(|m| (m * 2).to_string()).unwrap_or_else(|| "<twice the current value>".to_string());
    Finding {
        kind: FindingKind::ConntrackTableFull,
        wall_time_ns: now_ns,
        headline,
        evidence: Evidence::Node(evidence),
        explanation: "Every new flow the node forwards, NATs or filters statefully needs a conntrack entry. When the \
             table holds nf_conntrack_max entries the kernel first evicts an entry that has not seen replies yet \
             (early_drop); when it finds none it drops the packet that would start the new flow (drop; the kernel \
             logs \"nf_conntrack: table full, dropping packet\"). DNS suffers first: every query from a new source \
             port is a new flow, so lookups time out while established connections keep working."
            .to_string(),
        fix: vec![
            format!("{}conntrack -C; sysctl net.netfilter.nf_conntrack_max    # entries now, and the limit", netns.exec_prefix()),
            format!("{}conntrack -L 2>/dev/null | awk '{{print $1}}' | sort | uniq -c | sort -rn    # which protocols hold the entries", netns.exec_prefix()),
            format!("sysctl -w net.netfilter.nf_conntrack_max={bigger}    # in the host's initial namespace: the limit is global (kube-proxy: --conntrack-max-per-core)"),
            format!("echo 'net.netfilter.nf_conntrack_max = {bigger}' > /etc/sysctl.d/99-conntrack.conf    # persist"),
        ],
    }
}

fn insert_race(evidence: NodeEvidence, netns: &Netns, failed: u64, now_ns: u64) -> Finding {
    Finding {
        kind: FindingKind::ConntrackInsertRace,
        wall_time_ns: now_ns,
        headline: format!("Conntrack insert races lose packets{}: insert_failed grew by {failed} during the window", where_(netns)),
        evidence: Evidence::Node(evidence),
        explanation: "When two packets of the same new flow are processed on different CPUs at once — typically the A \
             and AAAA queries glibc sends together from one socket — both create a conntrack entry, and the one \
             confirmed second clashes with the first. Unless the kernel can resolve the clash (clashres), that \
             packet is dropped (insert_failed) and the client waits for an answer that never comes until its \
             timeout: the classic 5-second DNS delays."
            .to_string(),
        fix: vec![
            format!("{}conntrack -S    # insert_failed and clash_resolve per CPU", netns.exec_prefix()),
            "options single-request-reopen    # in the clients' /etc/resolv.conf (Kubernetes: dnsConfig.options): A and AAAA from different sockets".to_string(),
            "run a node-local DNS cache (NodeLocal DNSCache) or use TCP for DNS (options use-vc), so pod DNS is not racing through NAT".to_string(),
            "a newer kernel resolves most UDP clashes instead of dropping the packet (watch clashres grow instead)".to_string(),
        ],
    }
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::{decide, Example, Status, Traffic};
    use crate::firewall::Hook;
    use crate::model::netfilter::DropReason;
    use crate::node::checks::ConntrackReading;
    use crate::schema::finding::{Evidence, FindingKind};

    #[test]
    fn table_full_from_recorded_counters_takes_over_the_unattributed_drops() {
        use crate::node::checks::tests::{TABLE_FULL_AFTER, TABLE_FULL_BEFORE};
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack = ConntrackReading {
            count: Some(262_144),
            max: Some(262_144),
            stats: Some(stats(TABLE_FULL_BEFORE)),
            errors: vec![],
        };
        let after = ConntrackReading {
            count: Some(262_144),
            max: Some(262_144),
            stats: Some(stats(TABLE_FULL_AFTER)),
            errors: vec![],
        };
        let traffic = Traffic {
            findings: vec![
                (
                    unattributed_drop_finding(Hook::PreRouting),
                    Example { lines: vec!["drop line".into()], json: vec![] },
                ),
                (timeout_finding(), Example::default()),
            ],
            // As the watch saw the three refused queries in that recording.
            drops: vec![drop_group(DropReason::NetfilterDrop, Some(Hook::PreRouting), None, 3)],
            kind_counts: [(FindingKind::NetfilterDrop, 3), (FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide(&[state], &[after], traffic, 53.into(), NOW);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackTableFull);
        assert!(only.traffic && only.config);
        assert_eq!(only.occurrences, Some(3));
        assert!(only.finding.headline.contains("262144 of 262144 entries (100%)"), "{}", only.finding.headline);
        assert!(only.finding.headline.contains("refused 3 new flows"), "{}", only.finding.headline);
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        let conntrack = node.conntrack.as_ref().expect("counters");
        let drop = conntrack.counters.iter().find(|c| c.name == "drop").expect("drop counter");
        assert_eq!((drop.total, drop.growth), (133, Some(3)));
        let drops = node.drops.as_ref().expect("traced drops");
        assert_eq!((drops.count, drops.place.as_str()), (3, "in PRE_ROUTING"));
        assert!(
            only.more
                .iter()
                .any(|e| matches!(e, Evidence::Dns(d) if d.last_seen.is_none() && d.actual_source.is_none())),
            "the timeout is explained by it: {:#?}",
            only.more
        );
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Finding(FindingKind::ConntrackTableFull));
        assert!(check.value.contains("drop 133 (+3)"), "{}", check.value);
    }

    #[test]
    fn table_nearly_full_without_drops_is_a_config_finding() {
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack = ConntrackReading { count: Some(250_000), max: Some(262_144), stats: None, errors: vec![] };
        let decision = decide_one(state, Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackTableFull);
        assert!(
            only.finding.headline.starts_with("Conntrack table nearly full: 250000 of 262144 entries (95%)"),
            "{}",
            only.finding.headline
        );
    }

    #[test]
    fn insert_race_from_counters_and_drops_after_the_last_hook_program() {
        use crate::node::checks::tests::{INSERT_RACE_AFTER, INSERT_RACE_BEFORE};
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack.stats = Some(stats(INSERT_RACE_BEFORE));
        let after = ConntrackReading {
            count: Some(5),
            max: Some(262_144),
            stats: Some(stats(INSERT_RACE_AFTER)),
            errors: vec![],
        };
        let growth = stats(INSERT_RACE_BEFORE).growth(&stats(INSERT_RACE_AFTER), "insert_failed").expect("column");
        assert!(growth > 0);
        // `drop` grew just as much, for the same packets: that is no full table.
        let traffic = Traffic {
            findings: vec![(timeout_finding(), Example::default())],
            // Where tracer saw them in that recording: past its last program in LOCAL_IN, in
            // conntrack's confirmation.
            drops: vec![drop_group(DropReason::NetfilterDrop, None, Some(Hook::LocalIn), 1)],
            kind_counts: [(FindingKind::DnsTimeout, 1)].into(),
        };
        let decision = decide(&[state], &[after], traffic, 53.into(), NOW);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackInsertRace);
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Finding(FindingKind::ConntrackInsertRace));
        assert!(only.traffic && only.config);
        assert!(
            only.finding.headline.contains(&format!("insert_failed grew by {growth}")),
            "{}",
            only.finding.headline
        );
        let Evidence::Node(node) = &only.finding.evidence else { panic!() };
        assert_eq!(node.drops.as_ref().map(|d| d.place.as_str()), Some("after LOCAL_IN"));
        assert_eq!(only.more.len(), 1, "the timeout it explains");
    }

    #[test]
    fn counters_that_did_not_grow_are_history_not_findings() {
        use crate::node::checks::tests::TABLE_FULL_AFTER;
        let mut state = lab_node("1", LAB_NAT);
        state.conntrack.stats = Some(stats(TABLE_FULL_AFTER));
        let after = ConntrackReading {
            count: Some(3),
            max: Some(262_144),
            stats: Some(stats(TABLE_FULL_AFTER)),
            errors: vec![],
        };
        let decision = decide(&[state], &[after], Traffic::default(), 53.into(), NOW);
        assert!(decision.findings.is_empty(), "{:#?}", decision.findings);
        let check = decision.namespaces[0].checks.iter().find(|c| c.name == "conntrack stats").expect("check");
        assert_eq!(check.status, Status::Note);
    }
}
