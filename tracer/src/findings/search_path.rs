//! Decides when a lookup walked the resolver's search list before it asked the name itself.
//!
//! A pod's resolv.conf (Kubernetes' default) lists three or more search domains with
//! `options ndots:5`: a name with fewer than five dots is first tried with each search domain
//! appended, and each of those answers NXDOMAIN before the name itself is asked. Every lookup
//! of `api.example.com` then costs four round trips and four queries to the cluster DNS
//! instead of one, times two for A and AAAA. Healthy answers, every one of them; the cost is
//! what is reported, once per client.

use std::net::IpAddr;

use super::dns::answered;
use crate::{
    model::dns::rcode_name,
    pipeline::{bounded::BoundedTable, dns_parse::qtype_name, queries::QueryFlow},
    schema::{
        finding::{DnsEvidence, Evidence, Finding, FindingKind, SearchWalk},
        packet::TracedPacket,
    },
};

const NOERROR: u8 = 0;
const NXDOMAIN: u8 = 3;

/// A walk's NXDOMAIN answers come within this of the name that is found: a resolver tries
/// the names one after the other, each within its own timeout.
const WINDOW_NS: u64 = 10_000_000_000;

/// Negative answers kept per client: a search list is rarely longer than six domains, and a
/// client asks A and AAAA side by side.
const KEPT_PER_CLIENT: usize = 32;

/// Clients followed at once.
const CLIENTS: usize = 4_096;

/// At least this many names tried before the one found: one search domain tried in vain
/// is a search list doing its job (a Service name in another namespace).
const MIN_TRIED: usize = 2;

/// A name a client asked that does not exist.
struct Negative {
    name: String,
    qtype: Option<u16>,
    asked_ns: u64,
}

#[derive(Default)]
pub(crate) struct SearchWalks {
    recent: Option<BoundedTable<IpAddr, Vec<Negative>>>,
}

impl SearchWalks {
    /// An answered query that reached its client: NXDOMAIN answers are remembered, and a name
    /// that is found is checked for a walk through its own name with search domains appended.
    pub(crate) fn answered(&mut self, query: &QueryFlow, reply: &TracedPacket) -> Option<Finding> {
        let rcode = reply.event.dns.as_ref()?.rcode;
        let recent = self.recent.get_or_insert_with(|| BoundedTable::new(CLIENTS));
        let client = query.client.ip();
        let now = query.first_seen_ns;
        if rcode == NXDOMAIN {
            let name = normalized(query.qname.as_deref()?);
            if recent.get(&client).is_none() {
                recent.insert(client, Vec::new());
            }
            let negatives = recent.get_mut(&client)?;
            negatives.retain(|negative| now.saturating_sub(negative.asked_ns) <= WINDOW_NS);
            if negatives.len() >= KEPT_PER_CLIENT {
                negatives.remove(0);
            }
            negatives.push(Negative { name, qtype: query.qtype, asked_ns: now });
            return None;
        }
        if rcode != NOERROR {
            return None;
        }
        // Most answers: a client with no name missing lately costs one lookup here.
        let negatives = recent.get_mut(&client)?;
        let name = normalized(query.qname.as_deref()?);
        let is_walk = |negative: &Negative| {
            negative.qtype == query.qtype
                && now.saturating_sub(negative.asked_ns) <= WINDOW_NS
                && negative.asked_ns <= now
                && negative.name.strip_prefix(name.as_str()).is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
        };
        if negatives.iter().filter(|negative| is_walk(negative)).count() < MIN_TRIED {
            return None;
        }
        // Taken out: the next lookup of the name walks again and is counted again.
        let (walk, kept): (Vec<Negative>, Vec<Negative>) = negatives.drain(..).partition(is_walk);
        *negatives = kept;
        let first_ns = walk.iter().map(|negative| negative.asked_ns).min().unwrap_or(now);
        let tried: Vec<String> = walk.into_iter().map(|negative| negative.name).collect();
        // To the microsecond: on a node the walk costs fractions of a millisecond per name.
        let lost_ms = ((now - first_ns) / 1_000) as f64 / 1_000.0;
        Some(amplification(query, reply, rcode, SearchWalk { name, tried, lost_ms }))
    }
}

/// Names compare without case and without the root's dot.
fn normalized(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn amplification(query: &QueryFlow, reply: &TracedPacket, rcode: u8, walk: SearchWalk) -> Finding {
    let qtype = query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string());
    let asked = query.queried();
    let tried = walk.tried.len();
    let suffixes: Vec<&str> = walk
        .tried
        .iter()
        .filter_map(|tried| tried.strip_prefix(walk.name.as_str()).map(|rest| rest.trim_start_matches('.')))
        .collect();
    let headline = format!(
        "DNS search-list walk: {} asked {tried} names that do not exist before {qtype} {} ({:.1} ms lost per lookup)",
        query.client.ip(),
        walk.name,
        walk.lost_ms
    );
    let explanation = format!(
        "{} looked up {}, which has fewer dots than its resolver's ndots, so the resolver first tried it with \
         each domain of its search list appended ({}). {} answered NXDOMAIN to each of these {tried} queries before \
         the name itself was asked and answered {}. Nothing is broken, but every lookup of this name costs {} \
         queries and round trips instead of one (A and AAAA each, where both are asked): {:.1} ms lost per lookup \
         here, and {}× the load on the cluster DNS, which under load turns into timeouts. Kubernetes gives pods \
         `options ndots:5`, so any name with fewer than five dots that is not in the cluster walks the list.",
        query.client.ip(),
        walk.name,
        suffixes.join(", "),
        asked,
        rcode_name(rcode),
        tried + 1,
        walk.lost_ms,
        tried + 1
    );
    // The resolver asks a name as it is first once it has at least ndots dots.
    let dots = walk.name.matches('.').count().max(1);
    let fix = vec![
        format!("{}.    # in the application's configuration: a trailing dot makes the name absolute, asked once", walk.name),
        format!(
            "spec.dnsConfig.options: [{{name: ndots, value: \"{}\"}}]    # in the pod spec: names with {} dot(s) or more are asked as they are first",
            dots,
            dots
        ),
        "kubectl -n kube-system get pods -l k8s-app=node-local-dns    # NodeLocal DNSCache answers the walk on the node, not across it".to_string(),
    ];
    Finding {
        kind: FindingKind::DnsSearchAmplification,
        wall_time_ns: reply.wall_time_ns,
        headline,
        evidence: Evidence::Dns(DnsEvidence { search: Some(walk), ..answered(query, asked, reply) }),
        explanation,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::packet::Conntrack;
    use crate::pipeline::queries::{
        tests::{addr, packet},
        AskedServer,
    };
    use tracer_common::Stage;

    /// One answered query of client 10.244.0.5 (port `port`) for `name`, `qtype` 1 (A), at
    /// `at_ms`, with `rcode`.
    fn exchange(at_ms: u64, port: u16, name: &str, qtype: u16, rcode: u8) -> (QueryFlow, TracedPacket) {
        let client = addr(&format!("10.244.0.5:{port}"));
        let query = QueryFlow {
            client,
            servers: vec![AskedServer { queried: addr("10.96.0.10:53"), backend: None }],
            id: at_ms as u16,
            qname: Some(format!("{name}.")),
            qtype: Some(qtype),
            bridge: Some("cni0".to_string()),
            first_seen_ns: at_ms * 1_000_000,
            last_seen: crate::schema::finding::Sighting {
                stage: Stage::BridgeIn,
                ifname: None,
                ifindex: 1,
                wall_time_ns: 0,
            },
            reply_seen: true,
            entry_reused: false,
            entry_since_ns: None,
            loss: Default::default(),
        };
        let mut reply = packet(
            at_ms + 1,
            Stage::BridgeOut,
            "veth-client",
            "10.96.0.10:53",
            &client.to_string(),
            true,
            Conntrack::None,
        );
        if let Some(message) = reply.event.dns.as_mut() {
            message.rcode = rcode;
        }
        (query, reply)
    }

    const SEARCH: [&str; 3] = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];

    /// `name` looked up as a resolver with `SEARCH` and ndots:5 does, from `start_ms`.
    fn walk(walks: &mut SearchWalks, start_ms: u64, name: &str, qtype: u16) -> Vec<Finding> {
        let mut findings = Vec::new();
        for (n, suffix) in SEARCH.iter().enumerate() {
            let (query, reply) = exchange(start_ms + 3 * n as u64, 40000, &format!("{name}.{suffix}"), qtype, NXDOMAIN);
            findings.extend(walks.answered(&query, &reply));
        }
        let (query, reply) = exchange(start_ms + 9, 40000, name, qtype, NOERROR);
        findings.extend(walks.answered(&query, &reply));
        findings
    }

    #[test]
    fn a_name_found_after_its_search_domains_is_one_finding_with_the_names_tried() {
        let mut walks = SearchWalks::default();
        let findings = walk(&mut walks, 100, "api.example.com", 1);
        let [finding] = findings.as_slice() else { panic!("one finding: {findings:#?}") };
        assert_eq!(finding.kind, FindingKind::DnsSearchAmplification);
        let Evidence::Dns(dns) = &finding.evidence else { panic!("DNS evidence") };
        let walk = dns.search.as_ref().expect("the walk");
        assert_eq!(walk.name, "api.example.com");
        assert_eq!(
            walk.tried,
            [
                "api.example.com.default.svc.cluster.local",
                "api.example.com.svc.cluster.local",
                "api.example.com.cluster.local"
            ]
        );
        assert_eq!(walk.lost_ms, 9.0);
        assert!(
            finding.headline.contains("asked 3 names that do not exist before A api.example.com"),
            "{}",
            finding.headline
        );
        assert!(finding.fix[0].starts_with("api.example.com. "), "{:?}", finding.fix);
        // Two dots: with ndots 2 the name is asked as it is first.
        assert!(
            finding.fix[1].starts_with("spec.dnsConfig.options: [{name: ndots, value: \"2\"}]"),
            "{:?}",
            finding.fix
        );

        // The next lookup walks again: found again.
        assert_eq!(walk_again(&mut walks).len(), 1);
    }

    fn walk_again(walks: &mut SearchWalks) -> Vec<Finding> {
        walk(walks, 5_000, "api.example.com", 1)
    }

    #[test]
    fn healthy_lookups_are_not_walks() {
        let mut walks = SearchWalks::default();
        let mut findings = Vec::new();
        // A Service found in the first search domain; one in another namespace, found in the
        // second (one NXDOMAIN is the search list doing its job); an absolute name.
        for (at, name, rcode) in [
            (0, "web.default.svc.cluster.local", NOERROR),
            (10, "db.other.default.svc.cluster.local", NXDOMAIN),
            (12, "db.other.svc.cluster.local", NOERROR),
            (20, "api.example.com", NOERROR),
        ] {
            let (query, reply) = exchange(at, 40000, name, 1, rcode);
            findings.extend(walks.answered(&query, &reply));
        }
        // A name that does not exist anywhere: NXDOMAIN to the end, nothing found.
        for (n, suffix) in SEARCH.iter().enumerate() {
            let (query, reply) = exchange(30 + n as u64, 40000, &format!("gone.example.{suffix}"), 1, NXDOMAIN);
            findings.extend(walks.answered(&query, &reply));
        }
        let (query, reply) = exchange(40, 40000, "gone.example", 1, NXDOMAIN);
        findings.extend(walks.answered(&query, &reply));
        assert!(findings.is_empty(), "{findings:#?}");
    }

    #[test]
    fn a_walk_of_another_type_or_too_long_ago_does_not_count() {
        let mut walks = SearchWalks::default();
        for (n, suffix) in SEARCH.iter().enumerate() {
            let (query, reply) = exchange(n as u64, 40000, &format!("api.example.com.{suffix}"), 28, NXDOMAIN);
            assert!(walks.answered(&query, &reply).is_none());
        }
        // A (type 1) found: the AAAA walk is not its walk.
        let (query, reply) = exchange(10, 40000, "api.example.com", 1, NOERROR);
        assert!(walks.answered(&query, &reply).is_none());
        // AAAA found 11 s after its walk began: outside the window.
        let (query, reply) = exchange(11_000, 40000, "api.example.com", 28, NOERROR);
        assert!(walks.answered(&query, &reply).is_none());
    }
}
