//! Firewall listings captured from real tools, and helpers the parsers' tests share.

use super::model::{AddrRange, Chain, Condition, Family, IfacePattern, PortRange, Test, Verdict};

// Captured on Debian 12 (iptables 1.8.9, nftables 1.0.6) in a namespace holding
// iptables-nft, iptables-legacy and native nft rules at once, after some traffic.

pub(crate) const NFT4_SAVE: &str = include_str!("testdata/nft4.save");
pub(crate) const NFT6_SAVE: &str = include_str!("testdata/nft6.save");
pub(crate) const LEGACY4_SAVE: &str = include_str!("testdata/legacy4.save");
pub(crate) const LEGACY6_SAVE: &str = include_str!("testdata/legacy6.save");
/// `nft -j -a list ruleset` of the same namespace: the iptables-nft tables again, and a
/// native inet table.
pub(crate) const MIXED_JSON: &str = include_str!("testdata/mixed.json");
/// Native nftables only, many kinds of statements.
pub(crate) const NATIVE_JSON: &str = include_str!("testdata/native.json");

pub(crate) fn chain<'a>(chains: &'a [Chain], family: Family, table: &str, name: &str) -> &'a Chain {
    chains
        .iter()
        .find(|c| c.family == family && c.table == table && c.name == name)
        .unwrap_or_else(|| panic!("no chain {table} {name} ({family:?})"))
}

pub(crate) fn test(negated: bool, condition: Condition) -> Test {
    Test { negated, condition }
}

pub(crate) fn ports(first: u16, last: u16) -> PortRange {
    PortRange { first, last }
}

pub(crate) fn cidr(text: &str) -> AddrRange {
    let (addr, len) = text.split_once('/').expect("cidr");
    AddrRange::cidr(addr.parse().expect("addr"), len.parse().expect("len")).expect("valid cidr")
}

pub(crate) fn iface(name: &str, prefix: bool) -> IfacePattern {
    IfacePattern { name: name.to_string(), prefix }
}

pub(crate) fn reject_with(with: &str) -> Verdict {
    Verdict::Reject { with: Some(with.to_string()) }
}

/// Family, table and name of each chain, in order.
pub(crate) fn chain_names(chains: &[Chain]) -> Vec<String> {
    chains.iter().map(|c| format!("{:?} {} {}", c.family, c.table, c.name)).collect()
}
