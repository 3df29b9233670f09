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

use std::{collections::HashMap, net::SocketAddr};

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
            Evidence::Netfilter(nf) => (self.kind, nf.src.ip(), nf.dst, nf.hook.name().to_string()),
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

/// Distinct findings of a run, with how often each occurred.
#[derive(Default)]
pub(crate) struct FindingLog {
    index: HashMap<DedupeKey, usize>,
    findings: Vec<(Finding, u64)>,
    /// Occurrences of findings not kept because `MAX_DISTINCT` were kept already.
    pub overflow: u64,
}

/// What one occurrence of a finding was to the log.
pub(crate) enum Occurrence<'a> {
    /// The first of its problem: to be reported.
    New(&'a Finding),
    /// The same problem again (the first occurrence, as it was reported).
    Repeat(&'a Finding),
    /// A further distinct finding when the log is full: counted, not kept.
    NotKept(Box<Finding>),
}

/// Bounds the log on a node where something breaks for every client at once.
const MAX_DISTINCT: usize = 10_000;

impl FindingLog {
    /// Records an occurrence: new ones are reported now, repeats only counted.
    pub(crate) fn record(&mut self, finding: Finding) -> Occurrence<'_> {
        let key = finding.dedupe_key();
        if let Some(&at) = self.index.get(&key) {
            self.findings[at].1 += 1;
            return Occurrence::Repeat(&self.findings[at].0);
        }
        if self.findings.len() >= MAX_DISTINCT {
            self.overflow += 1;
            return Occurrence::NotKept(Box::new(finding));
        }
        let at = self.findings.len();
        self.index.insert(key, at);
        self.findings.push((finding, 1));
        Occurrence::New(&self.findings[at].0)
    }

    pub(crate) fn distinct(&self) -> usize {
        self.findings.len()
    }

    /// Occurrences per kind, in kind order.
    pub(crate) fn counts(&self) -> Vec<(FindingKind, u64)> {
        let mut counts: Vec<(FindingKind, u64)> = Vec::new();
        for (finding, count) in &self.findings {
            match counts.iter_mut().find(|(kind, _)| *kind == finding.kind) {
                Some((_, total)) => *total += count,
                None => counts.push((finding.kind, *count)),
            }
        }
        counts.sort();
        counts
    }
}
