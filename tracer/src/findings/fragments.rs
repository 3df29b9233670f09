//! Decides when a DNS answer was lost as IP fragments.
//!
//! An answer larger than a link's MTU (a large EDNS answer: many records, DNSSEC, long TXT)
//! leaves its server as IP fragments, and only the first carries the UDP header. Lose any
//! one of them — a rule that drops fragments, a link that cannot carry them, a node that
//! gives up reassembling — and the whole answer is gone: the client waits, retries and fails
//! the same way, while every small answer works. The kernel programs follow a traced first
//! fragment's later ones by IP id; here a later fragment's drop, or the first one's discard
//! when the rest never came (`FRAG_REASM_TIMEOUT`), is tied to the answer and its query.

use std::net::SocketAddr;

use super::dns::answered;
use crate::{
    model::{
        netfilter::{stopped_in, DropReason},
        packet::Fragment,
    },
    pipeline::{bounded::BoundedTable, dns_parse::qtype_name, queries::QueryFlow},
    schema::{
        finding::{Evidence, Finding, FindingKind, FragmentLoss},
        packet::{DropLine, TracedPacket},
    },
};

/// Fragmented answers followed at once, by the client socket they are for.
const CAPACITY: usize = 4_096;

/// The kernel's name for the discard of a datagram whose fragments did not all arrive in time.
const REASSEMBLY_TIMEOUT: &str = "FRAG_REASM_TIMEOUT";
/// A fragment that arrived twice: its datagram is not lost for that.
const DUPLICATE: &str = "DUP_FRAG";
/// How long after its first fragment a drop can still be of the same answer: a node gives up
/// reassembling after `ipfrag_time`, 30 s by default.
const ANSWER_LIFETIME_NS: u64 = 60_000_000_000;

/// An answer seen in fragments, and the query it answers.
struct Fragmented {
    query: QueryFlow,
    first: Box<TracedPacket>,
}

pub(crate) struct FragmentedAnswers {
    timeout_ns: u64,
    /// Created with the first fragmented answer: most watches never see one.
    answers: Option<BoundedTable<SocketAddr, Fragmented>>,
    /// Later fragments dropped before their first fragment's record was read: a first
    /// fragment held for reassembly is reported when its journey is swept, after them.
    early: Option<BoundedTable<SocketAddr, DropLine>>,
}

impl FragmentedAnswers {
    pub(crate) fn new(timeout_ns: u64) -> FragmentedAnswers {
        FragmentedAnswers { timeout_ns, answers: None, early: None }
    }

    /// The first fragment of an answer to `query` (its client's socket is the destination):
    /// followed, or that answer's finding when one of its later fragments was seen dropped.
    pub(crate) fn first_fragment(&mut self, packet: &TracedPacket, query: &QueryFlow) -> Option<(Finding, QueryFlow)> {
        let client = packet.event.dst;
        let at = packet.event.timestamp_ns;
        let timeout_ns = self.timeout_ns;
        let early = self.early.as_mut().and_then(|early| early.remove(&client));
        if let Some(line) = early.filter(|line| (at..=at + timeout_ns).contains(&line.drop.timestamp_ns)) {
            return Some((lost_fragment(query, packet, &line), query.clone()));
        }
        // The client's newest fragmented answer (one socket's answers come one after another),
        // from its first sighting: the same first fragment is seen at every stage it passes.
        let answers = self.answers.get_or_insert_with(|| BoundedTable::new(CAPACITY));
        let seen = answers.get(&client).is_some_and(|answer| answer.query.id == query.id);
        if !seen {
            answers.insert(client, Fragmented { query: query.clone(), first: Box::new(packet.clone()) });
        }
        None
    }

    /// A traced drop: a fragment of a followed answer, lost, is that answer's finding (with
    /// its query, for the loss check). Once per answer.
    pub(crate) fn dropped(&mut self, line: &DropLine) -> Option<(Finding, QueryFlow)> {
        let drop = &line.drop;
        let lost = match drop.fragment {
            Fragment::Later => line.reason != DropReason::Named(DUPLICATE.to_string()),
            // The first waited for the others in vain.
            Fragment::First => line.reason == DropReason::Named(REASSEMBLY_TIMEOUT.to_string()),
            Fragment::Whole => false,
        };
        if !lost {
            return None;
        }
        let answers = self.answers.as_mut();
        let followed = answers.and_then(|answers| answers.remove(&drop.dst)).filter(|answer| {
            let first_ns = answer.first.event.timestamp_ns;
            (first_ns..=first_ns + ANSWER_LIFETIME_NS).contains(&drop.timestamp_ns)
        });
        let Some(Fragmented { query, first }) = followed else {
            if drop.fragment == Fragment::Later {
                // The first drop of an answer is kept; one of an older answer gives way.
                let timeout_ns = self.timeout_ns;
                let early = self.early.get_or_insert_with(|| BoundedTable::new(CAPACITY));
                let kept = early
                    .get(&drop.dst)
                    .is_some_and(|older| drop.timestamp_ns.saturating_sub(older.drop.timestamp_ns) <= timeout_ns);
                if !kept {
                    early.insert(drop.dst, line.clone());
                }
            }
            return None;
        };
        Some((lost_fragment(&query, &first, line), query))
    }
}

fn lost_fragment(query: &QueryFlow, first: &TracedPacket, line: &DropLine) -> Finding {
    let drop = &line.drop;
    let mut evidence = answered(query, query.queried(), first);
    // The answer never reached the client: no source of a reply to compare with the one asked.
    evidence.actual_source = None;
    evidence.reply_in_port = None;
    evidence.reply_out_port = None;
    // The UDP length: the whole datagram's, which its first fragment's header gives.
    let answer_len = udp_length(first);
    let hook = stopped_in(&line.path).map(|pass| pass.hook);
    evidence.fragments = Some(FragmentLoss {
        server: first.event.src,
        answer_len,
        dropped: drop.fragment,
        drop_reason: line.reason.clone(),
        ifname: line.ifname.clone(),
        hook,
    });
    let place = line.ifname.clone().unwrap_or_else(|| format!("if{}", drop.ifindex));
    let name = query.qname.as_deref().unwrap_or("?");
    let qtype = query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string());
    let size = answer_len.map(|len| format!("{len}-byte ")).unwrap_or_default();
    let server = first.event.src;
    let client = query.client.ip();
    let headline =
        format!("DNS answer lost in IP fragments: {server}'s {size}answer to {client}'s {qtype} {name} lost a fragment on {place} ({})", line.reason);
    let sent = format!(
        "The answer from {server} to {client}'s {qtype} query for {name} was {}more than one packet holds on its \
         way, so it travelled as IP fragments, of which only the first carries the UDP header.",
        answer_len.map(|len| format!("{len} bytes of DNS and UDP, ")).unwrap_or_default()
    );
    let mut fix =
        vec!["bufsize 1232    # in the CoreDNS Corefile (dnsmasq: --edns-packet-max=1232): answers then never need \
         fragments; a larger one comes back truncated and the client asks over TCP"
            .to_string()];
    let cause = match (drop.fragment, hook) {
        (Fragment::Later, Some(hook)) if line.reason.is_netfilter_drop() => {
            fix.push(format!(
                "nft list ruleset | grep -n frag; iptables-save | grep -e ' -f ' -e fragment    # a rule in the {hook} \
                 hook that stops fragments"
            ));
            format!(
                "The first fragment passed, but a later one was dropped by a netfilter hook ({hook}) on {place}: a rule \
                 there stops fragments (a match on `ip frag-off` or `-f`, or one a fragment without ports fails). \
                 tracer names no rule for a fragment: its rule walk reads ports, which a later fragment does not carry."
            )
        }
        (Fragment::Later, _) => {
            fix.push(
                "ip link | grep -o 'mtu [0-9]*'    # links on the way with a smaller MTU than the server's".to_string(),
            );
            format!("The first fragment passed, but a later one was dropped on {place} ({}).", line.reason)
        }
        _ => {
            fix.push(
                "ip link | grep -o 'mtu [0-9]*'    # links on the way with a smaller MTU than the server's".to_string(),
            );
            format!(
                "Its first fragment reached {place}, but the others never did: the kernel waited for them to \
                 reassemble the datagram and discarded it when the reassembly timeout ran out ({}). They were lost \
                 before this point: dropped on the way, or too large for a link.",
                line.reason
            )
        }
    };
    Finding {
        kind: FindingKind::DnsFragmentLost,
        wall_time_ns: line.wall_time_ns,
        headline,
        explanation: format!(
            "{sent} {cause} Without every fragment the answer cannot be put together: the client never gets it and \
             retries in vain, while answers small enough for one packet keep working."
        ),
        evidence: Evidence::Dns(evidence),
        fix,
    }
}

/// The UDP header's length field of a first fragment: the whole datagram's length.
fn udp_length(first: &TracedPacket) -> Option<u32> {
    let event = &first.event;
    let bytes = event.captured.get(event.l4_offset + 4..event.l4_offset + 6)?;
    Some(u32::from(u16::from_be_bytes([bytes[0], bytes[1]])))
}

#[cfg(test)]
mod tests {
    use tracer_common::Stage;

    use super::*;
    use crate::{
        model::{netfilter::DropEvent, packet::Conntrack},
        pipeline::queries::{
            tests::{addr, packet, query_path},
            DnsFlows,
        },
    };

    const TIMEOUT_NS: u64 = 2_000_000_000;

    /// The lab's query, and the first fragment of its answer entering the bridge at `at_ms`.
    fn query_and_first_fragment(at_ms: u64) -> (QueryFlow, TracedPacket) {
        let mut flows = DnsFlows::new(TIMEOUT_NS, 16);
        for packet in query_path() {
            flows.observe(&packet);
        }
        let query = flows.query(addr("10.244.0.5:40000"), 0x6aab).expect("the query is followed").clone();
        let mut first =
            packet(at_ms, Stage::BridgeIn, "veth-server", "10.244.0.7:53", "10.244.0.5:40000", true, Conntrack::None);
        first.event.fragment = Fragment::First;
        (query, first)
    }

    /// A fragment of the answer dropped at `at_ms` for `reason`.
    fn dropped(at_ms: u64, fragment: Fragment, reason: &str) -> DropLine {
        let mut drop = DropEvent::example(at_ms * 1_000_000, addr("10.244.0.7:53"), addr("10.244.0.5:40000"));
        drop.fragment = fragment;
        let mut line = DropLine::example(drop, Vec::new());
        line.reason = DropReason::from_name(reason);
        line
    }

    #[test]
    fn a_lost_fragment_is_the_answers_finding_once_in_whichever_order_the_records_come() {
        let (query, first) = query_and_first_fragment(10);
        // In time order.
        let mut answers = FragmentedAnswers::new(TIMEOUT_NS);
        assert!(answers.first_fragment(&first, &query).is_none());
        let (finding, _) = answers.dropped(&dropped(11, Fragment::Later, "NETFILTER_DROP")).expect("a finding");
        assert_eq!(finding.kind, FindingKind::DnsFragmentLost);
        let Evidence::Dns(evidence) = &finding.evidence else { panic!("DNS evidence") };
        assert_eq!(evidence.query.id, 0x6aab);
        assert_eq!(evidence.actual_source, None);
        assert_eq!(evidence.fragments.as_ref().map(|lost| lost.dropped), Some(Fragment::Later));
        // The answer's other later fragment, and its first one's discard: the same loss.
        assert!(answers.dropped(&dropped(12, Fragment::Later, "NETFILTER_DROP")).is_none());

        // The first fragment's record read after the drop (swept from the reassembly queue).
        let mut answers = FragmentedAnswers::new(TIMEOUT_NS);
        assert!(answers.dropped(&dropped(11, Fragment::Later, "NETFILTER_DROP")).is_none());
        let (finding, _) = answers.first_fragment(&first, &query).expect("the finding, once the answer is known");
        assert_eq!(finding.kind, FindingKind::DnsFragmentLost);
    }

    #[test]
    fn duplicates_whole_packets_and_old_answers_are_no_loss() {
        let (query, first) = query_and_first_fragment(10);
        let mut answers = FragmentedAnswers::new(TIMEOUT_NS);
        answers.first_fragment(&first, &query);
        assert!(answers.dropped(&dropped(11, Fragment::Later, "DUP_FRAG")).is_none());
        assert!(answers.dropped(&dropped(11, Fragment::Whole, "NETFILTER_DROP")).is_none());
        // A first fragment is lost only when the rest never came.
        assert!(answers.dropped(&dropped(11, Fragment::First, "NETFILTER_DROP")).is_none());
        // A drop after the answer's lifetime is another datagram's.
        assert!(answers.dropped(&dropped(10 + 61_000, Fragment::Later, "NETFILTER_DROP")).is_none());

        let mut answers = FragmentedAnswers::new(TIMEOUT_NS);
        answers.first_fragment(&first, &query);
        let (finding, _) = answers.dropped(&dropped(30_010, Fragment::First, "FRAG_REASM_TIMEOUT")).expect("a finding");
        assert!(finding.explanation.contains("the others never did"), "{}", finding.explanation);
    }
}
