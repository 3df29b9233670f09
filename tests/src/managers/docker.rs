//! Docker's bridge networks in iptables, the filter and nat tables as the daemon leaves them for
//! its networks, in the two layouts nodes carry:
//!
//! - [`Release::V27`], Docker 25 to 27: `FORWARD` jumps to `DOCKER-USER` and
//!   `DOCKER-ISOLATION-STAGE-1`, then holds four rules per network; traffic from one network's
//!   bridge to another's is dropped in `DOCKER-ISOLATION-STAGE-2` (`-o <bridge> -j DROP`).
//! - [`Release::V28`], Docker 28 and later (checked against 29.7): `FORWARD` jumps to `DOCKER-USER`
//!   and `DOCKER-FORWARD`, which runs `DOCKER-CT`, `DOCKER-INTERNAL` and `DOCKER-BRIDGE`; the
//!   isolation chains are gone, and what enters a network's bridge from anywhere else without a
//!   published port is dropped at the end of `DOCKER` (`! -i <bridge> -o <bridge> -j DROP`).
//!
//! Networks are given in the order they were created, the default bridge first: the daemon inserts
//! most rules at the head of their chain, so later networks' rules come first where it does.
//! Bridge names and subnets are parameters, so the layout can be put on any lab's interfaces.
//! `FORWARD`'s policy is DROP, as Docker sets it when it enables IP forwarding itself.
//!
//! The fix Docker documents for traffic between networks is a rule in `DOCKER-USER`, the one chain
//! the daemon never rewrites: [`allow_between`] writes it.
//!
//! Left out: published ports (the nat `DOCKER` chain's DNATs, the filter `DOCKER` chain's
//! ACCEPTs and, since 28, the raw table's direct-routing drops); internal networks, `icc=false`,
//! the `routed` and `nat-unprotected` gateway modes; the userland-proxy-off hairpin MASQUERADE;
//! IPv6 (ip6tables gets the same layout); Docker 29's optional nftables backend.

use super::Cidr;
use crate::kube_proxy::push_line;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Docker 25 to 27: the isolation chains.
    V27,
    /// Docker 28 and later: `DOCKER-FORWARD` and its sub-chains.
    V28,
}

/// A bridge network: the host-side interface its containers' traffic leaves and enters through,
/// and its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub bridge: String,
    pub subnet: Cidr,
}

/// A Docker host's networks, and the rules its administrator added to `DOCKER-USER`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerHost {
    pub release: Release,
    /// In creation order, the default bridge first.
    pub networks: Vec<Network>,
    /// Rule specifications (`-i a -o b -j ACCEPT`), in their order in `DOCKER-USER`.
    pub user_rules: Vec<String>,
}

/// The `DOCKER-USER` rules that let `from`'s containers reach `to`'s, and the replies back: the
/// replies need their own rule wherever the isolation chains would drop them.
pub fn allow_between(from: &Network, to: &Network) -> Vec<String> {
    vec![
        format!("-i {} -o {} -j ACCEPT", from.bridge, to.bridge),
        format!("-i {} -o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", to.bridge, from.bridge),
    ]
}

/// The chain holding the rule that drops traffic into `network` from another network.
pub fn isolation_chain(release: Release) -> &'static str {
    match release {
        Release::V27 => "DOCKER-ISOLATION-STAGE-2",
        Release::V28 => "DOCKER",
    }
}

/// The filter and nat tables of `host`, as `iptables-restore` input for a fresh network namespace.
pub fn iptables_restore_text(host: &DockerHost) -> String {
    let mut out = String::new();
    let newest_first: Vec<&Network> = host.networks.iter().rev().collect();

    push_line!(out, "*nat");
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        push_line!(out, ":{chain} ACCEPT [0:0]");
    }
    push_line!(out, ":DOCKER - [0:0]");
    push_line!(out, "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    // With the userland proxy (the default), the proxy answers connections to published ports on
    // loopback, so loopback is left out.
    push_line!(out, "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER");
    for net in &newest_first {
        push_line!(out, "-A POSTROUTING -s {} ! -o {} -j MASQUERADE", net.subnet, net.bridge);
    }
    if host.release == Release::V27 {
        for net in &newest_first {
            push_line!(out, "-A DOCKER -i {} -j RETURN", net.bridge);
        }
    }
    push_line!(out, "COMMIT");

    push_line!(out, "*filter");
    push_line!(out, ":INPUT ACCEPT [0:0]");
    push_line!(out, ":FORWARD DROP [0:0]");
    push_line!(out, ":OUTPUT ACCEPT [0:0]");
    match host.release {
        Release::V27 => filter_v27(&mut out, host, &newest_first),
        Release::V28 => filter_v28(&mut out, host),
    }
    push_line!(out, "COMMIT");
    out
}

fn filter_v27(out: &mut String, host: &DockerHost, newest_first: &[&Network]) {
    for chain in ["DOCKER", "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-USER"] {
        push_line!(out, ":{chain} - [0:0]");
    }
    push_line!(out, "-A FORWARD -j DOCKER-USER");
    push_line!(out, "-A FORWARD -j DOCKER-ISOLATION-STAGE-1");
    for net in newest_first {
        let br = &net.bridge;
        push_line!(out, "-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
        push_line!(out, "-A FORWARD -o {br} -j DOCKER");
        push_line!(out, "-A FORWARD -i {br} ! -o {br} -j ACCEPT");
        push_line!(out, "-A FORWARD -i {br} -o {br} -j ACCEPT");
    }
    for net in newest_first {
        push_line!(out, "-A DOCKER-ISOLATION-STAGE-1 -i {0} ! -o {0} -j DOCKER-ISOLATION-STAGE-2", net.bridge);
    }
    push_line!(out, "-A DOCKER-ISOLATION-STAGE-1 -j RETURN");
    for net in newest_first {
        push_line!(out, "-A DOCKER-ISOLATION-STAGE-2 -o {} -j DROP", net.bridge);
    }
    push_line!(out, "-A DOCKER-ISOLATION-STAGE-2 -j RETURN");
    for rule in &host.user_rules {
        push_line!(out, "-A DOCKER-USER {rule}");
    }
    push_line!(out, "-A DOCKER-USER -j RETURN");
}

fn filter_v28(out: &mut String, host: &DockerHost) {
    for chain in ["DOCKER", "DOCKER-BRIDGE", "DOCKER-CT", "DOCKER-FORWARD", "DOCKER-INTERNAL", "DOCKER-USER"] {
        push_line!(out, ":{chain} - [0:0]");
    }
    push_line!(out, "-A FORWARD -j DOCKER-USER");
    push_line!(out, "-A FORWARD -j DOCKER-FORWARD");
    for net in &host.networks {
        push_line!(out, "-A DOCKER ! -i {0} -o {0} -j DROP", net.bridge);
    }
    for net in &host.networks {
        push_line!(out, "-A DOCKER-BRIDGE -o {} -j DOCKER", net.bridge);
    }
    for net in &host.networks {
        push_line!(out, "-A DOCKER-CT -o {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", net.bridge);
    }
    for chain in ["DOCKER-CT", "DOCKER-INTERNAL", "DOCKER-BRIDGE"] {
        push_line!(out, "-A DOCKER-FORWARD -j {chain}");
    }
    for net in &host.networks {
        push_line!(out, "-A DOCKER-FORWARD -i {} -j ACCEPT", net.bridge);
    }
    for rule in &host.user_rules {
        push_line!(out, "-A DOCKER-USER {rule}");
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn host(release: Release) -> DockerHost {
        let net = |bridge: &str, third: u8| Network {
            bridge: bridge.into(),
            subnet: Cidr { addr: Ipv4Addr::new(172, 17 + third, 0, 0), prefix: 16 },
        };
        DockerHost { release, networks: vec![net("docker0", 0), net("br-5d1b1ab2cd1e", 1)], user_rules: Vec::new() }
    }

    fn rules<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
        let prefix = format!("-A {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(&prefix)).collect()
    }

    #[test]
    fn docker_27_isolates_in_stage_two_newest_network_first() {
        let text = iptables_restore_text(&host(Release::V27));
        assert_eq!(
            rules(&text, "DOCKER-ISOLATION-STAGE-2"),
            ["-o br-5d1b1ab2cd1e -j DROP", "-o docker0 -j DROP", "-j RETURN"]
        );
        let forward = rules(&text, "FORWARD");
        assert_eq!(
            forward[..3],
            [
                "-j DOCKER-USER",
                "-j DOCKER-ISOLATION-STAGE-1",
                "-o br-5d1b1ab2cd1e -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ]
        );
        assert_eq!(forward.len(), 2 + 4 * 2);
        assert_eq!(rules(&text, "POSTROUTING")[1], "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE");
        assert_eq!(rules(&text, "DOCKER-USER"), ["-j RETURN"]);
    }

    #[test]
    fn docker_28_drops_at_the_end_of_docker() {
        let mut host = host(Release::V28);
        host.user_rules = allow_between(&host.networks[0], &host.networks[1]);
        let text = iptables_restore_text(&host);
        assert!(!text.contains("ISOLATION"));
        assert_eq!(
            rules(&text, "DOCKER"),
            ["! -i docker0 -o docker0 -j DROP", "! -i br-5d1b1ab2cd1e -o br-5d1b1ab2cd1e -j DROP"]
        );
        assert_eq!(rules(&text, "FORWARD"), ["-j DOCKER-USER", "-j DOCKER-FORWARD"]);
        assert_eq!(rules(&text, "DOCKER-FORWARD").len(), 3 + 2);
        assert_eq!(rules(&text, "DOCKER-USER")[0], "-i docker0 -o br-5d1b1ab2cd1e -j ACCEPT");
        assert_eq!(isolation_chain(Release::V28), "DOCKER");
    }
}
