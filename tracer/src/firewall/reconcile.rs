//! Tells iptables-nft's chains from native nftables ones. iptables-nft keeps its rules in
//! nf_tables tables, so `nft list ruleset` shows them a second time (partly as opaque `xt`
//! expressions); every chain is to be reported once.

use std::collections::HashMap;

use super::model::{nft_family_name, Chain, Condition, Rule, Verdict};
use super::nft::NftChain;

/// Splits what nft lists from what iptables-nft-save printed, so every chain is reported
/// once. nf_tables marks nothing as iptables-nft's (no table flag, comment or userdata in
/// iptables 1.8.9; nft's "managed by iptables-nft" warning only means the table holds an
/// xt expression), and iptables-nft-save also prints native rules that happen to sit in a
/// table and chain named like its own, sometimes wrongly: 1.8.9 prints the native
/// `ip saddr { 1.1.1.1, 2.2.2.2 } drop` as `-A FORWARD -j DROP` (verified here). So a chain
/// is iptables-nft's only when iptables-nft-save printed it (same family, table and name)
/// with as many rules as nft lists and each printed rule agrees with nft's: a verdict of
/// the same kind, a test on every packet field nft's rule tests, and no set or map lookup
/// nft's rule has that could not be compared. Otherwise nft's view is the one reported, as
/// native. Claimed chains get their nft rule handles. Chains iptables-nft-save prints but
/// nft does not have (it prints every built-in chain of a table, created or not) are left
/// out. Without nft's listing the iptables-nft chains are taken as they are.
pub(super) fn reconcile(nft: Option<Vec<NftChain>>, iptables_nft: Vec<Chain>) -> (Vec<Chain>, Vec<Chain>) {
    let Some(nft) = nft else {
        return (iptables_nft, Vec::new());
    };
    let mut claimed = vec![false; nft.len()];
    let mut owned = Vec::new();
    // (family, table, chain) → index in `nft`: looked up once per iptables-nft chain, of which
    // a kube-proxy node has thousands.
    let index: HashMap<(&str, &str, &str), usize> = nft
        .iter()
        .enumerate()
        // Reversed, so that the first of equally named chains is the one kept.
        .rev()
        .map(|(at, n)| ((n.kernel_family.as_str(), n.table_name.as_str(), n.chain.name.as_str()), at))
        .collect();
    for mut chain in iptables_nft {
        let found = index.get(&(nft_family_name(chain.family), chain.table.as_str(), chain.name.as_str())).copied();
        let Some(at) = found else { continue };
        let native = &nft[at];
        let agrees = native.chain.rules.len() == chain.rules.len()
            && chain.rules.iter().zip(&native.chain.rules).zip(&native.opaque_lookups).all(
                |((ours, theirs), &opaque)| {
                    !opaque && same_kind_of_verdict(&ours.verdict, &theirs.verdict) && tests_same_fields(ours, theirs)
                },
            );
        if !agrees {
            continue;
        }
        for (rule, theirs) in chain.rules.iter_mut().zip(&native.chain.rules) {
            rule.handle = theirs.handle;
        }
        claimed[at] = true;
        owned.push(chain);
    }
    let native = nft.into_iter().zip(claimed).filter(|(_, claimed)| !claimed).map(|(n, _)| n.chain).collect();
    (owned, native)
}

/// Every packet field nft's rule tests is tested by the iptables rule too (the values are
/// not compared: the two tools spell and split them differently).
fn tests_same_fields(iptables: &Rule, nft: &Rule) -> bool {
    let fields = |rule: &Rule| -> Vec<std::mem::Discriminant<Condition>> {
        rule.matches
            .tests
            .iter()
            // nft spells out the family an inet rule needs; iptables tables have one.
            .filter(|t| !matches!(t.condition, Condition::Family(_)))
            .map(|t| std::mem::discriminant(&t.condition))
            .collect()
    };
    let ours = fields(iptables);
    fields(nft).iter().all(|field| ours.contains(field))
}

fn same_kind_of_verdict(iptables: &Verdict, nft: &Verdict) -> bool {
    match (iptables, nft) {
        (Verdict::Accept, Verdict::Accept)
        | (Verdict::Drop, Verdict::Drop)
        | (Verdict::Return, Verdict::Return)
        | (Verdict::Reject { .. }, Verdict::Reject { .. })
        | (Verdict::Other(_), Verdict::Other(_)) => true,
        (Verdict::Jump(a), Verdict::Jump(b)) | (Verdict::Goto(a), Verdict::Goto(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fixtures::{chain, chain_names, MIXED_JSON, NFT4_SAVE, NFT6_SAVE};
    use crate::firewall::iptables::parse_iptables_save;
    use crate::firewall::model::{Backend, Family};
    use crate::firewall::nft::parse_nft;

    /// A native `table ip filter` (not made by iptables-nft) with a set lookup, and what
    /// iptables-nft-save makes of it: the lookup silently gone.
    const NATIVE_FILTER_JSON: &str = r##"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "filter", "handle": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["1.1.1.1", "2.2.2.2"]}}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"##;
    const NATIVE_FILTER_SAVE: &str = r##"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Mon Nov 23 13:57:18 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
[0:0] -A FORWARD -j DROP
[0:0] -A FORWARD -p udp -m udp --dport 53 -j DROP
COMMIT
# Completed on Mon Nov 23 13:57:18 2026
"##;

    #[test]
    fn iptables_nft_tables_are_not_reported_twice() {
        let nft = parse_nft(MIXED_JSON).expect("parse");
        let mut saved = parse_iptables_save(NFT4_SAVE, Backend::IptablesNft, Family::Ipv4);
        saved.extend(parse_iptables_save(NFT6_SAVE, Backend::IptablesNft, Family::Ipv6));
        let (owned, native) = reconcile(Some(nft), saved);

        let native_names = chain_names(&native);
        assert_eq!(
            native_names,
            [
                "Ipv4 inet tr-native forward_hook",
                "Ipv6 inet tr-native forward_hook",
                "Ipv4 inet tr-native tr-sub",
                "Ipv6 inet tr-native tr-sub",
                "Ipv4 inet tr-native output_hook",
                "Ipv6 inet tr-native output_hook",
            ]
        );
        // iptables-nft-save prints nat INPUT and OUTPUT, which were never created.
        let owned_names = chain_names(&owned);
        assert_eq!(
            owned_names,
            [
                "Ipv4 filter INPUT",
                "Ipv4 filter FORWARD",
                "Ipv4 filter OUTPUT",
                "Ipv4 filter KUBE-FIREWALL",
                "Ipv4 nat PREROUTING",
                "Ipv4 nat POSTROUTING",
                "Ipv6 filter INPUT",
                "Ipv6 filter FORWARD",
                "Ipv6 filter OUTPUT",
            ]
        );
        // The iptables view keeps its text and gains nft's handles.
        let forward = chain(&owned, Family::Ipv4, "filter", "FORWARD");
        assert_eq!(forward.rules.iter().map(|r| r.handle).collect::<Vec<_>>(), [Some(6), Some(7), Some(8), Some(9)]);
        assert!(forward.rules[3].text.starts_with("-A FORWARD -p udp"));
        assert_eq!(chain(&owned, Family::Ipv6, "filter", "OUTPUT").rules[0].handle, Some(4));
    }

    #[test]
    fn a_native_table_named_like_iptables_stays_native() {
        let saved = parse_iptables_save(NATIVE_FILTER_SAVE, Backend::IptablesNft, Family::Ipv4);
        // What iptables-nft-save printed is wrong: the set lookup is gone.
        assert_eq!(chain(&saved, Family::Ipv4, "filter", "FORWARD").rules[0].text, "-A FORWARD -j DROP");
        let (owned, native) = reconcile(Some(parse_nft(NATIVE_FILTER_JSON).expect("parse")), saved);
        assert!(owned.is_empty(), "{owned:?}");
        assert_eq!(native.len(), 1);
        assert_eq!(native[0].table, "ip filter");
        assert_eq!(native[0].rules[0].text, "ip saddr { 1.1.1.1, 2.2.2.2 } counter drop");
    }

    #[test]
    fn a_set_iptables_nft_save_shows_is_still_iptables_nft() {
        // Should an iptables-nft version write multiport as an anonymous set, the chain is
        // still its own: iptables-nft-save shows the ports.
        let json = NATIVE_FILTER_JSON.replace(
            r#"{"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": ["1.1.1.1", "2.2.2.2"]}"#,
            r#"{"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [53, 54]}"#,
        );
        let save =
            NATIVE_FILTER_SAVE.replace("-A FORWARD -j DROP", "-A FORWARD -p udp -m multiport --dports 53,54 -j DROP");
        let saved = parse_iptables_save(&save, Backend::IptablesNft, Family::Ipv4);
        let (owned, native) = reconcile(Some(parse_nft(&json).expect("parse")), saved);
        assert!(native.is_empty(), "{native:?}");
        assert_eq!(owned[0].rules[0].text, "-A FORWARD -p udp -m multiport --dports 53,54 -j DROP");
        assert_eq!(owned[0].rules[0].handle, Some(3));
    }

    #[test]
    fn without_nft_the_iptables_nft_view_is_kept() {
        let saved = parse_iptables_save(NFT4_SAVE, Backend::IptablesNft, Family::Ipv4);
        let count = saved.len();
        let (owned, native) = reconcile(None, saved);
        assert_eq!((owned.len(), native.len()), (count, 0));
    }
}
