//! Decides what a run cannot see from what attaching gave it: hooks the kernel lacks and
//! what `--findings-only` leaves in the kernel.

use super::{Capabilities, NetfilterVia};
use crate::schema::{blind_spot::BlindSpot, finding::FindingKind};

/// What this run will not see, and the findings it therefore cannot state.
pub(crate) fn blind_spots(capabilities: &Capabilities, conntrack_known: bool, findings_only: bool) -> Vec<BlindSpot> {
    let mut spots = Vec::new();
    if let NetfilterVia::Unavailable(why) = &capabilities.netfilter {
        let instead = if capabilities.drop_reasons {
            "a packet netfilter drops shows as a drop with reason NETFILTER_DROP, without its hook or rule, \
             and a query it stopped ends as dns_timeout"
        } else {
            "a packet netfilter drops is not seen at all: a query it stopped ends as dns_timeout, without where"
        };
        spots.push(BlindSpot {
            missing: "netfilter_verdicts".to_string(),
            why: why.clone(),
            unavailable: vec![FindingKind::NetfilterReject, FindingKind::NetfilterDrop],
            instead: instead.to_string(),
        });
    }
    if !capabilities.drop_reasons {
        spots.push(BlindSpot {
            missing: "drop_reasons".to_string(),
            why: "kfree_skb gives no drop reason before Linux 5.17".to_string(),
            unavailable: vec![FindingKind::RpFilterDrop],
            instead:
                "drops carry no reason: a netfilter drop is told by the hook the packet never left, a reverse-path \
                      filter drop only by triage's rp_filter check"
                    .to_string(),
        });
    }
    if let Err(why) = &capabilities.page_fragments {
        spots.push(BlindSpot {
            missing: "page_fragment_payloads".to_string(),
            why: why.clone(),
            unavailable: Vec::new(),
            instead: "a TCP segment whose payload the sender left in page fragments (DNS over TCP between pods \
                      over veth) shows its headers but no DNS message; its connection is still followed"
                .to_string(),
        });
    }
    if !conntrack_known {
        spots.push(BlindSpot {
            missing: "conntrack_tuples".to_string(),
            why: "no nf_conn in this kernel's BTF".to_string(),
            unavailable: vec![FindingKind::ConntrackSkip, FindingKind::StaleConntrackDnat],
            instead: "where a query was NATed to is not known: a reply that skipped conntrack shows as \
                      unexpected_reply_source"
                .to_string(),
        });
    }
    if findings_only {
        spots.push(BlindSpot {
            missing: "answered_replies".to_string(),
            why: "--findings-only: the kernel sends no record of a query that got its answer".to_string(),
            unavailable: vec![FindingKind::DnsServerFailure, FindingKind::DnsSearchAmplification],
            instead: "a server that answers SERVFAIL or REFUSED, and lookups that walk the search list, are seen \
                      only by a tracing watch"
                .to_string(),
        });
    }
    spots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(spots: &[BlindSpot]) -> Vec<&str> {
        spots.iter().map(|spot| spot.missing.as_str()).collect()
    }

    #[test]
    fn a_kernel_with_everything_watched_in_full_has_none() {
        let full = Capabilities { netfilter: NetfilterVia::Links(10), drop_reasons: true, page_fragments: Ok(()) };
        assert!(blind_spots(&full, true, false).is_empty());
        let fentry = Capabilities { netfilter: NetfilterVia::FEntry, drop_reasons: true, page_fragments: Ok(()) };
        assert!(blind_spots(&fentry, true, false).is_empty());
    }

    #[test]
    fn each_missing_piece_names_the_findings_it_takes() {
        let bare = Capabilities {
            netfilter: NetfilterVia::Unavailable("no links, no fentry".into()),
            drop_reasons: false,
            page_fragments: Err("no kallsyms".into()),
        };
        let spots = blind_spots(&bare, false, true);
        assert_eq!(
            missing(&spots),
            ["netfilter_verdicts", "drop_reasons", "page_fragment_payloads", "conntrack_tuples", "answered_replies"]
        );
        assert_eq!(spots[0].unavailable, [FindingKind::NetfilterReject, FindingKind::NetfilterDrop]);
        assert!(spots[0].instead.contains("not seen at all"), "{}", spots[0].instead);
        let text = spots[0].to_string();
        assert!(
            text.starts_with(
                "no netfilter verdicts (no links, no fentry): netfilter_reject, netfilter_drop cannot be found"
            ),
            "{text}"
        );

        let reasons = Capabilities {
            netfilter: NetfilterVia::Unavailable("x".into()),
            drop_reasons: true,
            page_fragments: Ok(()),
        };
        let spots = blind_spots(&reasons, true, false);
        assert_eq!(missing(&spots), ["netfilter_verdicts"]);
        assert!(spots[0].instead.contains("NETFILTER_DROP"));
    }
}
