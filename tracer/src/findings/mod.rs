//! Findings: deciding which problem the packets and the node show, with its evidence, a
//! plain explanation and the commands that fix it (`dns`, `search_path`, `tcp_retry`, `fragments`,
//! `netfilter` with `attribution`, and triage's `node_config`), and the log that counts
//! repeats of one problem instead of reporting them again. The finding's own type is `schema::finding`.

pub(crate) mod attribution;
pub(crate) mod dns;
pub(crate) mod fragments;
pub(crate) mod netfilter;
pub(crate) mod node_config;
pub(crate) mod search_path;
pub(crate) mod tcp_retry;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use crate::schema::finding::{ChainRef, Evidence, Finding, FindingKind, RuleRef};

/// Unconfirmed occurrences per kind.
#[derive(Default)]
pub(crate) struct UnconfirmedLog {
    counts: std::collections::BTreeMap<FindingKind, u64>,
}

impl UnconfirmedLog {
    pub(crate) fn record(&mut self, kind: FindingKind) {
        *self.counts.entry(kind).or_default() += 1;
    }

    pub(crate) fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Occurrences per kind, in kind order.
    pub(crate) fn counts(&self) -> Vec<(FindingKind, u64)> {
        self.counts.iter().map(|(kind, count)| (*kind, *count)).collect()
    }
}

/// The DNS query a finding is about.
impl ChainRef {
    pub(crate) fn of(chain: &crate::firewall::Chain) -> ChainRef {
        ChainRef { backend: chain.backend, table: chain.table.clone(), chain: chain.name.clone() }
    }
}

impl RuleRef {
    pub(crate) fn of(rule: &crate::firewall::Rule) -> RuleRef {
        RuleRef {
            backend: rule.backend,
            table: rule.table.clone(),
            chain: rule.chain.clone(),
            position: rule.position,
            handle: rule.handle,
            text: rule.text.clone(),
        }
    }
}

impl Finding {
    /// Occurrences of the same problem share this key: the same kind between the same
    /// endpoints (a client's every query uses a fresh port, so ports other than the
    /// server's would make each one a new finding).
    fn dedupe_key(&self) -> DedupeKey {
        match &self.evidence {
            Evidence::Dns(dns) => (
                self.kind,
                dns.client.ip(),
                dns.expected_source,
                dns.actual_source.map(|a| a.to_string()).unwrap_or_default(),
            ),
            // Another rule stopping the same traffic (the first was fixed, another took over)
            // is another problem.
            Evidence::Netfilter(nf) => (
                self.kind,
                nf.src.ip(),
                nf.dst,
                format!("{} {}", nf.hook.name(), netfilter::short_label(self).unwrap_or_default()),
            ),
            Evidence::Node(node) => (
                self.kind,
                std::net::IpAddr::from([0, 0, 0, 0]),
                SocketAddr::from(([0, 0, 0, 0], 0)),
                format!(
                    "{} {} {}",
                    node.netns.inode,
                    node.interface.as_deref().unwrap_or(""),
                    node.rule.as_ref().map(|r| r.text.as_str()).unwrap_or("")
                ),
            ),
        }
    }
}

type DedupeKey = (FindingKind, std::net::IpAddr, SocketAddr, String);

/// The findings of a run that are remembered, with how often each occurred: a repeat of a
/// remembered finding is counted, not stated again. A run of weeks meets more distinct
/// problems than it can remember and sees old ones come back: a finding not seen for
/// [`FORGET_AFTER_NS`] is forgotten (its next occurrence is stated again), and when
/// [`MAX_DISTINCT`] are remembered the one seen longest ago makes room. Forgotten findings'
/// occurrences stay in the counts.
#[derive(Default)]
pub(crate) struct FindingLog {
    remembered: HashMap<DedupeKey, Remembered>,
    /// The remembered findings by when they were last seen (the finding's time, then the
    /// order of occurrence): the first is the one to forget.
    by_last_seen: BTreeMap<(u64, u64), DedupeKey>,
    /// Occurrences of findings no longer remembered, per kind.
    forgotten_counts: BTreeMap<FindingKind, u64>,
    /// Findings stated, each time one was (again after being forgotten).
    stated: usize,
    occurrences: u64,
    /// Findings forgotten to make room, and because not seen for a while.
    pub evicted: u64,
    pub expired: u64,
}

struct Remembered {
    finding: Finding,
    count: u64,
    last_seen: (u64, u64),
}

/// What one occurrence of a finding was to the log.
pub(crate) enum Occurrence<'a> {
    /// The first of its problem (or the first since it was forgotten): to be reported.
    New(&'a Finding),
    /// The same problem again (the first occurrence, as it was reported).
    Repeat(&'a Finding),
}

/// Distinct findings remembered at most: bounds the log on a node where something breaks
/// for every client at once.
const MAX_DISTINCT: usize = 10_000;

/// A finding not seen again for this long is forgotten: if it comes back, it is stated again.
const FORGET_AFTER_NS: u64 = 30 * 60 * 1_000_000_000;

impl FindingLog {
    /// Records an occurrence: new ones are reported now, repeats only counted.
    #[cfg(test)]
    pub(crate) fn record(&mut self, finding: Finding) -> Occurrence<'_> {
        self.record_times(finding, 1)
    }

    /// Records `times` occurrences (a record the kernel counted may stand for many; a new
    /// finding for at least its own).
    pub(crate) fn record_times(&mut self, finding: Finding, times: u64) -> Occurrence<'_> {
        let key = finding.dedupe_key();
        let now = finding.wall_time_ns;
        self.occurrences += 1;
        let seen = (now, self.occurrences);
        self.forget_before(now.saturating_sub(FORGET_AFTER_NS));
        if let Some(entry) = self.remembered.get_mut(&key) {
            self.by_last_seen.remove(&entry.last_seen);
            entry.count += times;
            entry.last_seen = seen;
            self.by_last_seen.insert(seen, key.clone());
            return Occurrence::Repeat(&self.remembered[&key].finding);
        }
        if self.remembered.len() >= MAX_DISTINCT {
            if let Some((_, oldest)) = self.by_last_seen.pop_first() {
                self.forget(&oldest);
                self.evicted += 1;
            }
        }
        self.stated += 1;
        self.by_last_seen.insert(seen, key.clone());
        let entry = self.remembered.entry(key).or_insert(Remembered { finding, count: 0, last_seen: seen });
        entry.count = times.max(1);
        Occurrence::New(&entry.finding)
    }

    /// Forgets the findings last seen before `cutoff` (wall time, ns).
    fn forget_before(&mut self, cutoff: u64) {
        while let Some(entry) = self.by_last_seen.first_entry() {
            if entry.key().0 >= cutoff {
                break;
            }
            let key = entry.remove();
            self.forget(&key);
            self.expired += 1;
        }
    }

    fn forget(&mut self, key: &DedupeKey) {
        if let Some(entry) = self.remembered.remove(key) {
            *self.forgotten_counts.entry(entry.finding.kind).or_default() += entry.count;
        }
    }

    /// Findings stated in this run (one forgotten and met again counts again).
    pub(crate) fn distinct(&self) -> usize {
        self.stated
    }

    /// Occurrences per kind, in kind order, forgotten findings' included.
    pub(crate) fn counts(&self) -> Vec<(FindingKind, u64)> {
        let mut counts = self.forgotten_counts.clone();
        for entry in self.remembered.values() {
            *counts.entry(entry.finding.kind).or_default() += entry.count;
        }
        counts.into_iter().collect()
    }
}

#[cfg(test)]
mod log_tests {
    use super::*;
    use crate::schema::finding::NodeEvidence;

    /// A node finding about `interface`, at `at_secs` into the run.
    fn finding(interface: usize, at_secs: u64) -> Finding {
        let mut finding = node_finding_for_tests();
        finding.wall_time_ns = at_secs * 1_000_000_000;
        if let Evidence::Node(node) = &mut finding.evidence {
            node.interface = Some(format!("veth{interface}"));
        }
        finding
    }

    fn node_finding_for_tests() -> Finding {
        Finding {
            kind: FindingKind::RpFilterDrop,
            wall_time_ns: 0,
            headline: "test".to_string(),
            evidence: Evidence::Node(NodeEvidence::default()),
            explanation: String::new(),
            fix: Vec::new(),
        }
    }

    fn is_new(occurrence: Occurrence<'_>) -> bool {
        matches!(occurrence, Occurrence::New(_))
    }

    #[test]
    fn past_ten_thousand_distinct_findings_new_ones_are_still_stated() {
        let mut log = FindingLog::default();
        for n in 0..MAX_DISTINCT {
            assert!(is_new(log.record(finding(n, 1))));
        }
        assert!(!is_new(log.record(finding(0, 2))), "a remembered finding repeats");
        // The 10 001st: stated, and the finding seen longest ago (veth1) makes room.
        assert!(is_new(log.record(finding(MAX_DISTINCT, 3))));
        assert_eq!((log.distinct(), log.evicted, log.expired), (MAX_DISTINCT + 1, 1, 0));
        assert!(!is_new(log.record(finding(0, 4))), "veth0 was seen again, so it stayed");
        assert!(is_new(log.record(finding(1, 5))), "veth1 was forgotten: stated again");
        assert_eq!(log.counts(), [(FindingKind::RpFilterDrop, MAX_DISTINCT as u64 + 4)]);
    }

    #[test]
    fn a_finding_not_seen_for_half_an_hour_is_stated_again_when_it_recurs() {
        let mut log = FindingLog::default();
        assert!(is_new(log.record(finding(7, 0))));
        assert!(!is_new(log.record(finding(7, 29 * 60))), "within 30 minutes of its last occurrence");
        assert!(!is_new(log.record(finding(7, 58 * 60))), "each occurrence keeps it remembered");
        assert!(is_new(log.record(finding(7, 89 * 60))), "31 minutes after its last occurrence");
        assert_eq!((log.distinct(), log.expired, log.evicted), (2, 1, 0));
        assert_eq!(log.counts(), [(FindingKind::RpFilterDrop, 4)]);
    }
}
