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

/// A small kube-proxy (nftables mode) ruleset, in the shapes kube-proxy writes: table
/// `ip kube-proxy`, kube-dns (10.96.0.10) without endpoints in `@no-endpoint-services`, a web
/// Service (10.96.0.20:80) with two endpoints chosen by `numgen`, the ClusterIP checks.
pub(crate) const KUBE_PROXY_NFT: &str = r#"
table ip kube-proxy {
  comment "rules for kube-proxy"
  set cluster-ips { type ipv4_addr; comment "Active ClusterIPs"; elements = { 10.96.0.10, 10.96.0.20 }; }
  map no-endpoint-services {
    type ipv4_addr . inet_proto . inet_service : verdict
    comment "vmap to drop or reject packets to services with no endpoints"
    elements = { 10.96.0.10 . udp . 53 comment "kube-system/kube-dns:dns" : goto reject-chain,
                 10.96.0.10 . tcp . 53 comment "kube-system/kube-dns:dns-tcp" : goto reject-chain }
  }
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
    elements = { 10.96.0.20 . tcp . 80 : goto service-ULMVA6XW-default/web/tcp/http }
  }
  chain filter-forward {
    type filter hook forward priority 0;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain filter-output {
    type filter hook output priority 0;
    ct state new jump service-endpoints-check
    ct state new jump cluster-ips-check
  }
  chain nat-prerouting {
    type nat hook prerouting priority -100;
    jump services
  }
  chain nat-postrouting {
    type nat hook postrouting priority 100;
    jump masquerading
  }
  chain service-endpoints-check {
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }
  chain cluster-ips-check {
    ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
    ip daddr { 10.96.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"
  }
  chain reject-chain {
    comment "helper for @no-endpoint-services / @no-endpoint-nodeports"
    reject
  }
  chain services {
    ip daddr . meta l4proto . th dport vmap @service-ips
  }
  chain mark-for-masquerade {
    mark set mark or 0x00004000
  }
  chain masquerading {
    mark and 0x00004000 == 0 return
    mark set mark xor 0x00004000
    masquerade fully-random
  }
  chain service-ULMVA6XW-default/web/tcp/http {
    ip daddr 10.96.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade
    numgen random mod 2 vmap { 0 : goto endpoint-5OJB2KTY-default/web/tcp/http__10.244.0.7/80, 1 : goto endpoint-2FO3MZ7Q-default/web/tcp/http__10.244.0.8/80 }
  }
  chain endpoint-5OJB2KTY-default/web/tcp/http__10.244.0.7/80 {
    ip saddr 10.244.0.7 jump mark-for-masquerade
    meta l4proto tcp dnat to 10.244.0.7:80
  }
  chain endpoint-2FO3MZ7Q-default/web/tcp/http__10.244.0.8/80 {
    ip saddr 10.244.0.8 jump mark-for-masquerade
    meta l4proto tcp dnat to 10.244.0.8:80
  }
}
"#;
