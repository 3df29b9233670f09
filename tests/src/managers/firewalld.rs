//! firewalld with its nftables backend, as in firewalld 2.5: the filter part of `table inet
//! firewalld` on a node whose one active zone is also the default zone, with firewalld's shipped
//! settings (`IPv6_rpfilter=strict`, `RFC3964_IPv4=yes`, `LogDenied=off`, no flowtable) and its
//! shipped `allow-host-ipv6` policy.
//!
//! firewalld 2.5 dispatches in stages: `filter_INPUT` jumps to `filter_INPUT_dispatch`,
//! which picks the ingress zone by input interface (`iifname "cni0" jump filter_IN_public_to_HOST`,
//! the default zone last without a match); that chain runs the policies from any zone to the host,
//! then the zone's own chain `filter_IN_<zone>` with its `_pre`, `_log`, `_deny`, `_allow` and
//! `_post` chains, and rejects whatever none of them accepted with `reject with icmpx
//! admin-prohibited`. Forwarded traffic goes through a second stage by output interface
//! (`filter_FWD_<zone>_dispatch_stage2`, `filter_FWD_<in>_to_<out>`), and the zone's `<forward/>`
//! accepts traffic between its own interfaces. (Releases 1.0 to 2.4 made the same decisions in one
//! chain per hook, `filter_INPUT_POLICIES` and so on, where each interface's zone had its own
//! `iifname "cni0" reject with icmpx admin-prohibited`: the zone and policy chains are the same.)
//!
//! With [`Firewalld::counters`] every rule gets a counter, as `NftablesCounters=yes` gives it.
//!
//! Left out: the mangle and nat chains (their dispatch only ever returns without a verdict when
//! a zone has no masquerade, forward ports or marks); zones other than the one active zone, and
//! sources; rich rules, ports and icmp-blocks beyond those of the services here; the table's `owner`
//! and `persist` flags (`owner` ties the table to firewalld's own netlink socket, so loaded by
//! `nft -f` alone it would go when nft exits, and the nft of Debian 12 does not know `persist`).

use super::Protocol;
use crate::kube_proxy::push_line;

const TABLE: &str = "inet firewalld";
/// firewalld's hooks sit 10 after the iptables ones, so iptables sees packets first.
const PRIORITY: &str = "filter + 10";
const REJECT: &str = "reject with icmpx admin-prohibited";
/// The IPv6 destinations that `RFC3964_IPv4=yes` refuses: IPv4-compatible, -mapped and 6to4
/// addresses built on private, loopback and link-local IPv4 space.
const RFC3964: &str = "{ ::/96, ::ffff:0.0.0.0/96, 2002::/24, 2002:a00::/24, 2002:7f00::/24, 2002:a9fe::/32, \
                       2002:ac10::/28, 2002:c0a8::/32, 2002:e000::/19 }";
/// The ICMPv6 types the `allow-host-ipv6` policy accepts, with whether firewalld matches code 0
/// too (it leaves the code out for the MLD types).
const HOST_IPV6_TYPES: [(&str, bool); 8] = [
    ("nd-neighbor-advert", true),
    ("nd-neighbor-solicit", true),
    ("nd-router-advert", true),
    ("nd-redirect", true),
    ("mld-listener-done", false),
    ("mld-listener-query", false),
    ("mld-listener-report", false),
    ("mld2-listener-report", false),
];

/// A firewalld service this generator knows: the matches of the rules firewalld accepts it with in
/// a zone's allow chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Ssh,
    /// Only towards link-local addresses: firewalld keeps the service's destination.
    Dhcpv6Client,
    Dns,
}

impl Service {
    fn matches(self) -> Vec<String> {
        match self {
            Service::Ssh => vec![port_match(Protocol::Tcp, 22)],
            Service::Dhcpv6Client => vec![format!("ip6 daddr fe80::/64 {}", port_match(Protocol::Udp, 546))],
            // In the order of the service's definition.
            Service::Dns => vec![port_match(Protocol::Tcp, 53), port_match(Protocol::Udp, 53)],
        }
    }
}

fn port_match(protocol: Protocol, port: u16) -> String {
    format!("{protocol} dport {port}")
}

/// A zone: its name, the interfaces bound to it and the services it allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub interfaces: Vec<String>,
    pub services: Vec<Service>,
    /// `<forward/>`: traffic between the zone's own interfaces is forwarded.
    pub forward: bool,
}

impl Zone {
    /// firewalld's shipped `public` zone (ssh, dhcpv6-client, forward) with `interfaces`.
    pub fn public(interfaces: &[&str]) -> Zone {
        Zone {
            name: "public".into(),
            interfaces: interfaces.iter().map(|i| i.to_string()).collect(),
            services: vec![Service::Ssh, Service::Dhcpv6Client],
            forward: true,
        }
    }
}

/// A node's firewalld: its default zone, the only active one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewalld {
    pub zone: Zone,
    /// `NftablesCounters=yes`.
    pub counters: bool,
}

/// The chain that decides traffic from `zone` to the host, where the zone's final reject is.
pub fn input_zone_chain(zone: &Zone) -> String {
    format!("filter_IN_{}_to_HOST", zone.name)
}

/// The whole `nft -f` input: the table, its chains, and their rules in order.
struct Ruleset {
    chains: Vec<String>,
    rules: String,
    counters: bool,
}

impl Ruleset {
    fn chain(&mut self, name: &str) {
        self.chains.push(format!("add chain {TABLE} {name}"));
    }

    fn base_chain(&mut self, name: &str, hook: &str) {
        self.chains.push(format!("add chain {TABLE} {name} {{ type filter hook {hook} priority {PRIORITY} ; }}"));
    }

    /// A rule `matches verdict`; with counters, the counter goes right before the verdict, where
    /// firewalld puts it.
    fn rule(&mut self, chain: &str, matches: &str, verdict: &str) {
        let counter = if self.counters { "counter " } else { "" };
        let matches = if matches.is_empty() { String::new() } else { format!("{matches} ") };
        push_line!(self.rules, "add rule {TABLE} {chain} {matches}{counter}{verdict}");
    }

    /// A policy's chain and its five sub-chains, in the order the packet visits them.
    fn policy_chains(&mut self, base: &str) {
        self.chain(base);
        for suffix in ["pre", "log", "deny", "allow", "post"] {
            let sub = format!("{base}_{suffix}");
            self.chain(&sub);
            self.rule(base, "", &format!("jump {sub}"));
        }
    }
}

/// `table inet firewalld` as firewalld leaves it for `config`, as `nft -f` input for a fresh
/// network namespace.
pub fn nft_ruleset_text(config: &Firewalld) -> String {
    let zone = &config.zone;
    let z = zone.name.as_str();
    let mut r = Ruleset { chains: Vec::new(), rules: String::new(), counters: config.counters };

    r.base_chain("filter_PREROUTING", "prerouting");
    r.rule("filter_PREROUTING", "icmpv6 type { nd-router-advert, nd-neighbor-solicit }", "accept");
    r.rule("filter_PREROUTING", "meta nfproto ipv6 fib saddr . mark . iif oif missing", "drop");

    r.base_chain("filter_INPUT", "input");
    r.base_chain("filter_FORWARD", "forward");
    r.base_chain("filter_OUTPUT", "output");
    for chain in ["filter_INPUT", "filter_FORWARD", "filter_OUTPUT"] {
        r.rule(chain, "ct state established,related", "accept");
        r.rule(chain, "ct status dnat", "accept");
        let lo = if chain == "filter_OUTPUT" { "oifname \"lo\"" } else { "iifname \"lo\"" };
        r.rule(chain, lo, "accept");
        if chain != "filter_OUTPUT" {
            r.rule(chain, "ct state invalid", "drop");
        }
        if chain != "filter_INPUT" {
            r.rule(chain, &format!("ip6 daddr {RFC3964}"), "reject with icmpv6 addr-unreachable");
        }
        let dispatch = format!("{chain}_dispatch");
        r.chain(&dispatch);
        r.rule(chain, "", &format!("jump {dispatch}"));
        if chain != "filter_OUTPUT" {
            r.rule(chain, "", REJECT);
        }
    }

    // Stage 1 (and 2 for forwarding): the zone by interface, then as the default zone.
    let to_host = input_zone_chain(zone);
    let stage2 = format!("filter_FWD_{z}_dispatch_stage2");
    let zone_to_zone = format!("filter_FWD_{z}_to_{z}");
    let host_to_zone = format!("filter_OUT_HOST_to_{z}");
    r.chain(&to_host);
    r.chain(&stage2);
    r.chain(&zone_to_zone);
    r.chain(&host_to_zone);
    for iface in zone.interfaces.iter().map(|i| format!("\"{i}\"")) {
        r.rule("filter_INPUT_dispatch", &format!("iifname {iface}"), &format!("jump {to_host}"));
        r.rule("filter_FORWARD_dispatch", &format!("iifname {iface}"), &format!("jump {stage2}"));
        r.rule(&stage2, &format!("oifname {iface}"), &format!("jump {zone_to_zone}"));
        r.rule("filter_OUTPUT_dispatch", &format!("oifname {iface}"), &format!("jump {host_to_zone}"));
    }
    r.rule("filter_INPUT_dispatch", "", &format!("jump {to_host}"));
    r.rule("filter_FORWARD_dispatch", "", &format!("jump {stage2}"));
    r.rule(&stage2, "", &format!("jump {zone_to_zone}"));
    r.rule("filter_OUTPUT_dispatch", "", &format!("jump {host_to_zone}"));

    // Stage 3: the policies in priority order (allow-host-ipv6 at -15000 comes before the zone),
    // then the zone's target.
    r.rule(&to_host, "", "jump filter_IN_policy_allow-host-ipv6");
    r.rule(&to_host, "", &format!("jump filter_IN_{z}"));
    r.rule(&to_host, "", REJECT);
    r.rule(&zone_to_zone, "", &format!("jump filter_FWD_{z}"));
    r.rule(&zone_to_zone, "", REJECT);
    r.rule(&host_to_zone, "", &format!("jump filter_OUT_{z}"));
    r.rule(&host_to_zone, "", "return");

    r.policy_chains("filter_IN_policy_allow-host-ipv6");
    for (icmp_type, with_code) in HOST_IPV6_TYPES {
        let code = if with_code { " icmpv6 code 0" } else { "" };
        r.rule(
            "filter_IN_policy_allow-host-ipv6_allow",
            &format!("meta nfproto ipv6 icmpv6 type {icmp_type}{code}"),
            "accept",
        );
    }

    r.policy_chains(&format!("filter_IN_{z}"));
    // The default zone target lets ICMP in (unless icmp-block-inversion).
    r.rule(&format!("filter_IN_{z}"), "meta l4proto { icmp, ipv6-icmp }", "accept");
    for matches in zone.services.iter().flat_map(|s| s.matches()) {
        r.rule(&format!("filter_IN_{z}_allow"), &matches, "accept");
    }
    r.policy_chains(&format!("filter_FWD_{z}"));
    if zone.forward {
        for iface in &zone.interfaces {
            r.rule(&format!("filter_FWD_{z}_allow"), &format!("oifname \"{iface}\""), "accept");
        }
    }
    r.policy_chains(&format!("filter_OUT_{z}"));

    let mut out = String::new();
    push_line!(out, "add table {TABLE}");
    for chain in &r.chains {
        push_line!(out, "{chain}");
    }
    out.push_str(&r.rules);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("add rule {TABLE} {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(&prefix)).collect()
    }

    #[test]
    fn bridge_zone_rejects_what_it_does_not_allow() {
        let text = nft_ruleset_text(&Firewalld { zone: Zone::public(&["cni0"]), counters: false });
        assert_eq!(
            rules_of(&text, "filter_INPUT_dispatch"),
            ["iifname \"cni0\" jump filter_IN_public_to_HOST", "jump filter_IN_public_to_HOST"]
        );
        assert_eq!(
            rules_of(&text, "filter_IN_public_to_HOST"),
            ["jump filter_IN_policy_allow-host-ipv6", "jump filter_IN_public", "reject with icmpx admin-prohibited"]
        );
        assert_eq!(
            rules_of(&text, "filter_IN_public_allow"),
            ["tcp dport 22 accept", "ip6 daddr fe80::/64 udp dport 546 accept"]
        );
        assert_eq!(rules_of(&text, "filter_FWD_public_allow"), ["oifname \"cni0\" accept"]);
        assert_eq!(rules_of(&text, "filter_INPUT").last(), Some(&"reject with icmpx admin-prohibited"));
        assert!(!text.contains("dport 53"));
    }

    #[test]
    fn dns_service_and_counters() {
        let mut zone = Zone::public(&["cni0"]);
        zone.services.push(Service::Dns);
        let text = nft_ruleset_text(&Firewalld { zone, counters: true });
        assert_eq!(
            rules_of(&text, "filter_IN_public_allow")[2..],
            ["tcp dport 53 counter accept", "udp dport 53 counter accept"]
        );
        assert_eq!(rules_of(&text, "filter_IN_public_to_HOST")[2], "counter reject with icmpx admin-prohibited");
        assert!(rules_of(&text, "filter_IN_public").iter().all(|r| r.contains("counter ")));
    }
}
