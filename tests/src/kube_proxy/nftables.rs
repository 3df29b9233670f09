//! kube-proxy's nftables mode: see the parent module for the version and what is left out.

use std::collections::HashSet;

use super::{nft_endpoint_chain, nft_external_chain, nft_service_chain, push_line, Cluster, Service};

const TABLE: &str = "ip kube-proxy";
/// `--masquerade-bit` 14, as kube-proxy formats it (`%#08x`).
const MASQ_MARK: &str = "0x00004000";

/// The hooked chains: the filtering that must see a Service's own address before DNAT rewrites
/// it (LoadBalancer source ranges) at -110, DNAT at -100, and the no-endpoints and invalid-port
/// checks at filter priority, after DNAT, so that they only see what DNAT left addressed to a
/// Service. Priorities are numbers because that is how kube-proxy writes them: older nft refuses
/// some priority names in some hooks.
const BASE_CHAINS: [(&str, &str, &str, i32); 8] = [
    ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
    ("filter-output-pre-dnat", "filter", "output", -110),
    ("filter-input", "filter", "input", 0),
    ("filter-forward", "filter", "forward", 0),
    ("filter-output", "filter", "output", 0),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
];

/// (chain, jumped to from, only for) in the order kube-proxy adds the jumps.
const JUMPS: [(&str, &str, &str); 11] = [
    ("nodeport-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-input", "ct state new "),
    ("service-endpoints-check", "filter-forward", "ct state new "),
    ("service-endpoints-check", "filter-output", "ct state new "),
    ("firewall-check", "filter-prerouting-pre-dnat", "ct state new "),
    ("firewall-check", "filter-output-pre-dnat", "ct state new "),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new "),
    ("cluster-ips-check", "filter-output", "ct state new "),
];

/// The transaction kube-proxy's nftables mode runs on its first sync on a fresh node, as `nft -f`
/// input: load it with `nft -f` into a fresh network namespace.
pub fn nft_ruleset_text(cluster: &Cluster) -> String {
    let mut tx =
        Transaction { out: String::with_capacity(600 * cluster.services.len() + 8192), chains: HashSet::new() };
    tx.setup(cluster);
    let mut cluster_ips = HashSet::new();
    for service in &cluster.services {
        tx.service(cluster, service, &mut cluster_ips);
    }
    tx.out
}

struct Transaction {
    out: String,
    /// Chains already added (and flushed) in this transaction: kube-proxy adds each only once,
    /// so that a second flush cannot wipe rules the transaction already wrote into it.
    chains: HashSet<String>,
}

impl Transaction {
    /// `add chain` + `flush chain`, once per chain: whatever a previous sync left in it goes.
    fn ensure_chain(&mut self, chain: &str) {
        if self.chains.insert(chain.to_string()) {
            push_line!(self.out, "add chain {TABLE} {chain}");
            push_line!(self.out, "flush chain {TABLE} {chain}");
        }
    }

    fn rule(&mut self, chain: &str, rule: &str) {
        push_line!(self.out, "add rule {TABLE} {chain} {rule}");
    }

    fn setup(&mut self, cluster: &Cluster) {
        let out = &mut self.out;
        push_line!(out, "add table {TABLE} {{ comment \"rules for kube-proxy\" ; }}");
        // On its first sync kube-proxy deletes its base chains once, so that a change of hook or
        // priority since the last kube-proxy version cannot make the transaction fail.
        for (name, kind, hook, priority) in BASE_CHAINS {
            push_line!(out, "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}");
            push_line!(out, "delete chain {TABLE} {name}");
        }
        for (name, kind, hook, priority) in BASE_CHAINS {
            push_line!(out, "add chain {TABLE} {name} {{ type {kind} hook {hook} priority {priority} ; }}");
            push_line!(out, "flush chain {TABLE} {name}");
        }
        for (chain, from, only) in JUMPS {
            self.ensure_chain(chain);
            self.rule(from, &format!("{only}jump {chain}"));
        }
        for chain in ["services", "cluster-ips-check", "masquerading", "mark-for-masquerade"] {
            self.ensure_chain(chain);
        }
        self.rule("mark-for-masquerade", &format!("mark set mark or {MASQ_MARK}"));
        self.rule("masquerading", &format!("mark and {MASQ_MARK} == 0 return"));
        self.rule("masquerading", &format!("mark set mark xor {MASQ_MARK}"));
        self.rule("masquerading", "masquerade fully-random");

        push_line!(self.out, "add set {TABLE} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}");
        push_line!(
            self.out,
            "add rule {TABLE} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid \
             ports of ClusterIPs\""
        );
        push_line!(
            self.out,
            "add rule {TABLE} cluster-ips-check ip daddr {{ {} }} drop comment \"Drop traffic to unallocated \
             ClusterIPs\"",
            cluster.service_cidr
        );

        // NodePorts on the node's primary address only: nftables mode's default.
        push_line!(
            self.out,
            "add set {TABLE} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
        );
        push_line!(self.out, "flush set {TABLE} nodeport-ips");
        push_line!(self.out, "add element {TABLE} nodeport-ips {{ {} }}", cluster.node_ip);

        push_line!(
            self.out,
            "add map {TABLE} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; \
             comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        );
        push_line!(
            self.out,
            "add map {TABLE} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to \
             drop or reject packets to service nodeports with no endpoints\" ; }}"
        );
        push_line!(
            self.out,
            "add chain {TABLE} reject-chain {{ comment \"helper for @no-endpoint-services / \
             @no-endpoint-nodeports\" ; }}"
        );
        push_line!(self.out, "flush chain {TABLE} reject-chain");
        self.rule("reject-chain", "reject");
        self.rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services");
        self.rule(
            "nodeport-endpoints-check",
            "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        );

        push_line!(
            self.out,
            "add map {TABLE} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \
             \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        );
        self.ensure_chain("firewall-check");
        self.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips");

        push_line!(
            self.out,
            "add map {TABLE} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \
             \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        );
        push_line!(
            self.out,
            "add map {TABLE} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort \
             traffic\" ; }}"
        );
        self.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips");
        self.rule("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports");

        push_line!(self.out, "flush set {TABLE} cluster-ips");
        for map in ["service-ips", "firewall-ips", "no-endpoint-services", "no-endpoint-nodeports", "service-nodeports"]
        {
            push_line!(self.out, "flush map {TABLE} {map}");
        }
    }

    fn service(&mut self, cluster: &Cluster, service: &Service, cluster_ips: &mut HashSet<std::net::Ipv4Addr>) {
        let name = service.port_name_string();
        let proto = service.protocol;
        let (ip, port) = (service.cluster_ip, service.port);
        let endpoints: Vec<_> = service.ready_endpoints().collect();
        let endpoint_chains: Vec<_> = endpoints.iter().map(|e| nft_endpoint_chain(service, e)).collect();
        let svc_chain = nft_service_chain(service);
        let ext_chain = nft_external_chain(service);
        let has_endpoints = !endpoints.is_empty();
        let external = has_endpoints && service.node_port.is_some();

        for chain in &endpoint_chains {
            self.ensure_chain(chain);
        }
        if has_endpoints {
            self.ensure_chain(&svc_chain);
        }
        if external {
            self.ensure_chain(&ext_chain);
        }

        // One element per address, however many ports share it.
        if cluster_ips.insert(ip) {
            push_line!(self.out, "add element {TABLE} cluster-ips {{ {ip} }}");
        }
        if has_endpoints {
            push_line!(self.out, "add element {TABLE} service-ips {{ {ip} . {proto} . {port} : goto {svc_chain} }}");
        } else {
            push_line!(
                self.out,
                "add element {TABLE} no-endpoint-services {{ {ip} . {proto} . {port} comment \"{name}\" : goto \
                 reject-chain }}"
            );
        }
        if let Some(node_port) = service.node_port {
            if has_endpoints {
                push_line!(
                    self.out,
                    "add element {TABLE} service-nodeports {{ {proto} . {node_port} : goto {ext_chain} }}"
                );
            } else {
                push_line!(
                    self.out,
                    "add element {TABLE} no-endpoint-nodeports {{ {proto} . {node_port} comment \"{name}\" : goto \
                     reject-chain }}"
                );
            }
        }
        if !has_endpoints {
            return;
        }

        self.rule(
            &svc_chain,
            &format!("ip daddr {ip} {proto} dport {port} ip saddr != {} jump mark-for-masquerade", cluster.pod_cidr),
        );
        if external {
            self.rule(&ext_chain, "jump mark-for-masquerade");
            self.rule(&ext_chain, &format!("goto {svc_chain}"));
        }
        let choices: Vec<_> =
            endpoint_chains.iter().enumerate().map(|(i, chain)| format!("{i} : goto {chain}")).collect();
        self.rule(&svc_chain, &format!("numgen random mod {} vmap {{ {} }}", endpoints.len(), choices.join(" , ")));
        for (endpoint, chain) in endpoints.iter().zip(&endpoint_chains) {
            self.rule(chain, &format!("ip saddr {} jump mark-for-masquerade", endpoint.ip));
            self.rule(chain, &format!("meta l4proto {proto} dnat to {}", endpoint.addr()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{small_cluster_with_dns_pods, Cluster, KubeDns};
    use super::*;

    #[test]
    fn kube_dns_without_endpoints_goes_to_the_reject_chain() -> anyhow::Result<()> {
        let text = nft_ruleset_text(&Cluster::synthetic(20, KubeDns::NoEndpoints)?);
        for (proto, port, port_name) in [("udp", 53, "dns"), ("tcp", 53, "dns-tcp"), ("tcp", 9153, "metrics")] {
            let element = format!(
                "add element ip kube-proxy no-endpoint-services {{ 10.96.0.10 . {proto} . {port} comment \
                 \"kube-system/kube-dns:{port_name}\" : goto reject-chain }}\n"
            );
            assert!(text.contains(&element), "missing: {element}");
        }
        assert_eq!(text.matches("add element ip kube-proxy cluster-ips { 10.96.0.10 }").count(), 1);
        assert!(!text.contains("kube-system/kube-dns/udp/dns"), "no chains for a Service without endpoints");
        Ok(())
    }

    #[test]
    fn kube_dns_with_endpoints_is_dnated() -> anyhow::Result<()> {
        let cluster = small_cluster_with_dns_pods()?;
        let text = nft_ruleset_text(&cluster);
        let svc = cluster.service("kube-system/kube-dns:dns").expect("kube-dns");
        let chain = nft_service_chain(svc);
        let (ep0, ep1) = (nft_endpoint_chain(svc, &svc.endpoints[0]), nft_endpoint_chain(svc, &svc.endpoints[1]));
        for want in [
            format!("add element ip kube-proxy service-ips {{ 10.96.0.10 . udp . 53 : goto {chain} }}"),
            format!(
                "add rule ip kube-proxy {chain} ip daddr 10.96.0.10 udp dport 53 ip saddr != 10.244.0.0/16 jump \
                 mark-for-masquerade"
            ),
            format!("add rule ip kube-proxy {chain} numgen random mod 2 vmap {{ 0 : goto {ep0} , 1 : goto {ep1} }}"),
            format!("add rule ip kube-proxy {ep0} ip saddr 10.244.0.7 jump mark-for-masquerade"),
            format!("add rule ip kube-proxy {ep0} meta l4proto udp dnat to 10.244.0.7:53"),
        ] {
            assert!(text.contains(&format!("{want}\n")), "missing: {want}");
        }
        assert!(!text.contains("add element ip kube-proxy no-endpoint-services"), "every Service has endpoints");
        Ok(())
    }

    #[test]
    fn every_chain_is_added_once() -> anyhow::Result<()> {
        let text = nft_ruleset_text(&Cluster::synthetic(200, KubeDns::NoEndpoints)?);
        let mut seen = HashSet::new();
        for chain in text.lines().filter_map(|l| l.strip_prefix("add chain ip kube-proxy ")) {
            let name = chain.split_whitespace().next().unwrap_or_default();
            let base = BASE_CHAINS.iter().any(|(b, ..)| *b == name);
            // Base chains are added twice: once to be deleted, once for good.
            assert!(seen.insert(name.to_string()) || base, "{name} added twice");
        }
        Ok(())
    }

    #[test]
    fn same_cluster_same_bytes() -> anyhow::Result<()> {
        let a = nft_ruleset_text(&Cluster::synthetic(300, KubeDns::NoEndpoints)?);
        assert_eq!(a, nft_ruleset_text(&Cluster::synthetic(300, KubeDns::NoEndpoints)?));
        Ok(())
    }
}
