//! kube-proxy's iptables mode: see the parent module for the version and what is left out.

use super::{
    iptables_endpoint_chain, iptables_external_chain, iptables_service_chain, push_line, Cluster, Service,
    LARGE_CLUSTER_ENDPOINTS,
};

/// `--masquerade-bit` 14, as kube-proxy formats it (`%#08x`); iptables-save prints `0x4000`.
const MASQ_MARK: &str = "0x00004000";

/// The node's filter, nat and mangle tables after kube-proxy's first sync, as `iptables-restore`
/// input: load it with `iptables-restore` (nf_tables or legacy) into a fresh network namespace.
///
/// kube-proxy itself restores only its own chains (with `--noflush`) and adds the jumps from the
/// built-in chains with `iptables -I`, one at a time, each in front of the last; the jumps here
/// are in the order that leaves them in. The kubelet's `KUBE-FIREWALL` jump was there first, so
/// it ends up last.
pub fn iptables_restore_text(cluster: &Cluster) -> String {
    let body = RestoreBody::new(cluster);
    let mut out = String::with_capacity(256 * cluster.services.len() + 8192);

    push_line!(out, "*filter");
    for chain in ["INPUT", "FORWARD", "OUTPUT"] {
        push_line!(out, ":{chain} ACCEPT [0:0]");
    }
    for chain in ["KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"] {
        push_line!(out, ":{chain} - [0:0]");
    }
    out.push_str(&body.filter_chains);
    for (chain, jumps) in [
        ("INPUT", &[FIREWALL_NEW, HEALTH_CHECK_PORTS, EXTERNAL_NEW, KUBELET_FIREWALL][..]),
        ("FORWARD", &[FIREWALL_NEW, FORWARDING, SERVICES_NEW, EXTERNAL_NEW]),
        ("OUTPUT", &[FIREWALL_NEW, SERVICES_NEW, KUBELET_FIREWALL]),
    ] {
        for jump in jumps {
            push_line!(out, "-A {chain} {jump}");
        }
    }
    out.push_str(&body.filter_rules);
    push_line!(out, "COMMIT");

    push_line!(out, "*nat");
    for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        push_line!(out, ":{chain} ACCEPT [0:0]");
    }
    for chain in ["KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"] {
        push_line!(out, ":{chain} - [0:0]");
    }
    out.push_str(&body.nat_chains);
    push_line!(out, "-A PREROUTING {SERVICE_PORTALS}");
    push_line!(out, "-A OUTPUT {SERVICE_PORTALS}");
    push_line!(out, "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING");
    out.push_str(&body.nat_rules);
    push_line!(out, "COMMIT");

    // The kubelet's and kube-proxy's canaries (a flush of the table removes them, which tells
    // them to resync) and the kubelet's hint at which iptables backend the node uses.
    push_line!(out, "*mangle");
    for chain in ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"] {
        push_line!(out, ":{chain} ACCEPT [0:0]");
    }
    for chain in ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY", "KUBE-PROXY-CANARY"] {
        push_line!(out, ":{chain} - [0:0]");
    }
    push_line!(out, "COMMIT");
    out
}

const FIREWALL_NEW: &str =
    "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL";
const HEALTH_CHECK_PORTS: &str = "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS";
const EXTERNAL_NEW: &str = "-m conntrack --ctstate NEW -m comment --comment \
                            \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES";
const KUBELET_FIREWALL: &str = "-j KUBE-FIREWALL";
const FORWARDING: &str = "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD";
const SERVICES_NEW: &str =
    "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
const SERVICE_PORTALS: &str = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";

/// What kube-proxy's own `iptables-restore` input holds, in the order it writes it: chain lines
/// first, then the rules, per table.
struct RestoreBody {
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

impl RestoreBody {
    fn new(cluster: &Cluster) -> RestoreBody {
        let mut body = RestoreBody {
            filter_chains: String::new(),
            filter_rules: String::new(),
            nat_chains: String::new(),
            nat_rules: String::with_capacity(240 * cluster.services.len()),
        };
        for chain in
            ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"]
        {
            push_line!(body.filter_chains, ":{chain} - [0:0]");
        }
        for chain in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
            push_line!(body.nat_chains, ":{chain} - [0:0]");
        }
        push_line!(body.nat_rules, "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN");
        push_line!(body.nat_rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
        push_line!(
            body.nat_rules,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
             -j MASQUERADE --random-fully"
        );
        push_line!(body.nat_rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
        // Written because NodePorts are served on 127.0.0.1 too (kube-proxy's default), which
        // needs route_localnet and this rule against its abuse.
        push_line!(body.filter_chains, ":KUBE-FIREWALL - [0:0]");
        push_line!(
            body.filter_rules,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 \
             ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );

        let large_cluster = cluster.endpoint_count() > LARGE_CLUSTER_ENDPOINTS;
        for service in &cluster.services {
            body.service(cluster, service, large_cluster);
        }

        push_line!(
            body.nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule \
             in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
        );
        push_line!(body.filter_rules, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
        push_line!(
            body.filter_rules,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark \
             --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
        );
        push_line!(
            body.filter_rules,
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate \
             RELATED,ESTABLISHED -j ACCEPT"
        );
        body
    }

    fn service(&mut self, cluster: &Cluster, service: &Service, large_cluster: bool) {
        let name = service.port_name_string();
        let proto = service.protocol;
        let (ip, port) = (service.cluster_ip, service.port);
        let svc_chain = iptables_service_chain(service);
        let ext_chain = iptables_external_chain(service);
        let endpoints: Vec<_> = service.ready_endpoints().collect();

        if endpoints.is_empty() {
            // No nat chains at all for the Service: the filter table rejects what is sent to it.
            push_line!(
                self.filter_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" -m {proto} -p {proto} -d {ip} \
                 --dport {port} -j REJECT"
            );
            if let Some(node_port) = service.node_port {
                push_line!(
                    self.filter_rules,
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"{name} has no endpoints\" -m addrtype \
                     --dst-type LOCAL -m {proto} -p {proto} --dport {node_port} -j REJECT"
                );
            }
            return;
        }

        push_line!(
            self.nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port} \
             -j {svc_chain}"
        );
        if let Some(node_port) = service.node_port {
            push_line!(
                self.nat_rules,
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {node_port} -j {ext_chain}"
            );
        }

        push_line!(
            self.nat_rules,
            "-A {svc_chain} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {ip} --dport {port} \
             ! -s {} -j KUBE-MARK-MASQ",
            cluster.pod_cidr
        );
        if service.node_port.is_some() {
            push_line!(self.nat_chains, ":{ext_chain} - [0:0]");
            push_line!(
                self.nat_rules,
                "-A {ext_chain} -m comment --comment \"masquerade traffic for {name} external destinations\" \
                 -j KUBE-MARK-MASQ"
            );
            push_line!(self.nat_rules, "-A {ext_chain} -j {svc_chain}");
        }

        // Endpoint i of n is taken with probability 1/(n-i), so that each is equally likely; the
        // last rule takes whatever is left.
        push_line!(self.nat_chains, ":{svc_chain} - [0:0]");
        let n = endpoints.len();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let comment = comment_unless_large(large_cluster, &format!("\"{name} -> {}\"", endpoint.addr()));
            let statistic = if i + 1 < n {
                format!(" -m statistic --mode random --probability {:.10}", 1.0 / (n - i) as f64)
            } else {
                String::new()
            };
            let sep = iptables_endpoint_chain(service, endpoint);
            push_line!(self.nat_rules, "-A {svc_chain}{comment}{statistic} -j {sep}");
        }

        let comment = comment_unless_large(large_cluster, &name);
        for endpoint in &endpoints {
            let sep = iptables_endpoint_chain(service, endpoint);
            push_line!(self.nat_chains, ":{sep} - [0:0]");
            // A pod reaching itself through its Service must be masqueraded, or it would answer
            // itself directly and the client socket would not recognise the reply.
            push_line!(self.nat_rules, "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ", endpoint.ip);
            push_line!(
                self.nat_rules,
                "-A {sep}{comment} -m {proto} -p {proto} -j DNAT --to-destination {}",
                endpoint.addr()
            );
        }
    }
}

/// ` -m comment --comment TEXT`, or nothing in a large cluster, where kube-proxy leaves the
/// endpoint rules without it (they are most of the rules).
fn comment_unless_large(large_cluster: bool, text: &str) -> String {
    if large_cluster {
        String::new()
    } else {
        format!(" -m comment --comment {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{small_cluster_with_dns_pods, Cluster, KubeDns, Service};
    use super::*;

    fn rules<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    fn kube_dns_udp(cluster: &Cluster) -> &Service {
        cluster.service("kube-system/kube-dns:dns").expect("kube-dns")
    }

    #[test]
    fn kube_dns_without_endpoints_is_rejected_in_filter() -> anyhow::Result<()> {
        let cluster = Cluster::synthetic(20, KubeDns::NoEndpoints)?;
        let text = iptables_restore_text(&cluster);
        let filter = &text[..text.find("*nat").expect("nat table")];
        assert!(filter.contains(
            "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp -p udp \
             -d 10.96.0.10 --dport 53 -j REJECT\n"
        ));
        let svc_chain = iptables_service_chain(kube_dns_udp(&cluster));
        assert!(!text.contains(&svc_chain), "a Service without endpoints has no KUBE-SVC chain");
        assert!(!text.contains("kube-dns:dns cluster IP"));
        Ok(())
    }

    #[test]
    fn kube_dns_with_endpoints_is_dnated() -> anyhow::Result<()> {
        let cluster = small_cluster_with_dns_pods()?;
        let text = iptables_restore_text(&cluster);
        let svc = kube_dns_udp(&cluster);
        let svc_chain = iptables_service_chain(svc);
        let seps: Vec<_> = svc.endpoints.iter().map(|e| iptables_endpoint_chain(svc, e)).collect();
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp -p udp \
             -d 10.96.0.10 --dport 53 -j {svc_chain}\n"
        )));
        assert_eq!(
            rules(&text, &format!("-A {svc_chain} ")),
            [
                format!(
                    "-A {svc_chain} -m comment --comment \"kube-system/kube-dns:dns cluster IP\" -m udp -p udp \
                     -d 10.96.0.10 --dport 53 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"
                ),
                format!(
                    "-A {svc_chain} -m comment --comment \"kube-system/kube-dns:dns -> 10.244.0.7:53\" -m statistic \
                     --mode random --probability 0.5000000000 -j {}",
                    seps[0]
                ),
                format!(
                    "-A {svc_chain} -m comment --comment \"kube-system/kube-dns:dns -> 10.244.0.8:53\" -j {}",
                    seps[1]
                ),
            ]
        );
        assert_eq!(
            rules(&text, &format!("-A {} ", seps[0])),
            [
                format!("-A {} -m comment --comment kube-system/kube-dns:dns -s 10.244.0.7 -j KUBE-MARK-MASQ", seps[0]),
                format!(
                    "-A {} -m comment --comment kube-system/kube-dns:dns -m udp -p udp -j DNAT --to-destination \
                     10.244.0.7:53",
                    seps[0]
                ),
            ]
        );
        assert!(!text.contains("has no endpoints"));
        Ok(())
    }

    #[test]
    fn large_clusters_lose_the_endpoint_comments() -> anyhow::Result<()> {
        let cluster = Cluster::synthetic(1000, KubeDns::NoEndpoints)?;
        assert!(cluster.endpoint_count() > LARGE_CLUSTER_ENDPOINTS);
        let text = iptables_restore_text(&cluster);
        let svc = cluster.service("ns-2/svc-2:http").expect("ns-2/svc-2:http");
        let svc_chain = iptables_service_chain(svc);
        let dispatch = rules(&text, &format!("-A {svc_chain} "));
        assert_eq!(dispatch.len(), 4, "{dispatch:#?}");
        assert!(dispatch[0].contains("\"ns-2/svc-2:http cluster IP\""), "the masquerade rule keeps its comment");
        assert!(dispatch[1].ends_with(&format!(
            "-m statistic --mode random --probability 0.3333333333 -j {}",
            iptables_endpoint_chain(svc, &svc.endpoints[0])
        )));
        assert!(dispatch[2].contains("--probability 0.5000000000"));
        assert!(dispatch[1..].iter().all(|r| !r.contains("--comment")), "{dispatch:#?}");
        assert!(rules(&text, "-A KUBE-SEP-").iter().all(|r| !r.contains("--comment")));
        Ok(())
    }

    #[test]
    fn node_ports_go_through_the_external_chain() -> anyhow::Result<()> {
        let cluster = Cluster::synthetic(20, KubeDns::NoEndpoints)?;
        let text = iptables_restore_text(&cluster);
        let svc = cluster.service("ns-7/svc-7:http").expect("ns-7/svc-7:http");
        let ext = iptables_external_chain(svc);
        assert!(text.contains(&format!(
            "-A KUBE-NODEPORTS -m comment --comment ns-7/svc-7:http -m tcp -p tcp --dport 30000 -j {ext}\n"
        )));
        assert!(text.contains(&format!("-A {ext} -j {}\n", iptables_service_chain(svc))));
        // The last rule of nat KUBE-SERVICES hands what is left to the NodePorts.
        let services = rules(&text, "-A KUBE-SERVICES ");
        assert!(services.last().is_some_and(|r| r.ends_with("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")));
        Ok(())
    }

    #[test]
    fn same_cluster_same_bytes() -> anyhow::Result<()> {
        let a = iptables_restore_text(&Cluster::synthetic(300, KubeDns::NoEndpoints)?);
        let b = iptables_restore_text(&Cluster::synthetic(300, KubeDns::NoEndpoints)?);
        assert_eq!(a, b);
        Ok(())
    }
}
