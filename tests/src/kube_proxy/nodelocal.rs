//! NodeLocal DNSCache's iptables mode (node-cache): pods keep sending DNS to kube-dns's ClusterIP
//! (or to 169.254.20.10), a cache on the node listens on those addresses itself, and these rules
//! keep that traffic out of conntrack and past the filter table. They carry no comments: on a
//! node they are known by their shape only.

use std::net::Ipv4Addr;

use super::push_line;

/// The link-local address NodeLocal DNSCache's manifests listen on.
pub const NODELOCAL_DNS_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// node-cache's default health port; its liveness probe bypasses conntrack too.
pub const NODELOCAL_HEALTH_PORT: u16 = 8080;
const DNS_PORT: u16 = 53;

/// node-cache's rules for its listen addresses `local_ips` (in its iptables mode: [`NODELOCAL_DNS_IP`]
/// and kube-dns's ClusterIP), as `iptables-restore` input.
///
/// node-cache inserts each rule at the head of its chain (`iptables -I`), in a fixed order, so each
/// is written here as `-I CHAIN 1`: the text then leaves the chains as node-cache does whatever
/// they held before. Load it with `iptables-restore --noflush` on top of kube-proxy's rules, or
/// plainly into a fresh network namespace.
pub fn nodelocal_dns_restore_text(local_ips: &[Ipv4Addr]) -> String {
    let mut raw = String::new();
    let mut filter = String::new();
    for ip in local_ips {
        for proto in ["tcp", "udp"] {
            push_line!(raw, "-I PREROUTING 1 -p {proto} -d {ip} --dport {DNS_PORT} -j NOTRACK");
        }
        for proto in ["tcp", "udp"] {
            push_line!(filter, "-I INPUT 1 -p {proto} -d {ip} --dport {DNS_PORT} -j ACCEPT");
        }
        // The answers leave from the cache's own socket, so OUTPUT sees them, not FORWARD.
        for proto in ["tcp", "udp"] {
            push_line!(raw, "-I OUTPUT 1 -p {proto} -s {ip} --sport {DNS_PORT} -j NOTRACK");
        }
        for proto in ["tcp", "udp"] {
            push_line!(filter, "-I OUTPUT 1 -p {proto} -s {ip} --sport {DNS_PORT} -j ACCEPT");
        }
        // Queries from host-network pods start in OUTPUT rather than PREROUTING.
        for proto in ["tcp", "udp"] {
            push_line!(raw, "-I OUTPUT 1 -p {proto} -d {ip} --dport {DNS_PORT} -j NOTRACK");
        }
        push_line!(raw, "-I OUTPUT 1 -p tcp -d {ip} --dport {NODELOCAL_HEALTH_PORT} -j NOTRACK");
        push_line!(raw, "-I OUTPUT 1 -p tcp -s {ip} --sport {NODELOCAL_HEALTH_PORT} -j NOTRACK");
    }
    format!("*raw\n{raw}COMMIT\n*filter\n{filter}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use super::super::KUBE_DNS_IP;
    use super::*;

    #[test]
    fn later_rules_end_up_first() {
        let text = nodelocal_dns_restore_text(&[NODELOCAL_DNS_IP, KUBE_DNS_IP]);
        let prerouting: Vec<_> = text.lines().filter(|l| l.starts_with("-I PREROUTING")).collect();
        assert_eq!(
            prerouting,
            [
                "-I PREROUTING 1 -p tcp -d 169.254.20.10 --dport 53 -j NOTRACK",
                "-I PREROUTING 1 -p udp -d 169.254.20.10 --dport 53 -j NOTRACK",
                "-I PREROUTING 1 -p tcp -d 10.96.0.10 --dport 53 -j NOTRACK",
                "-I PREROUTING 1 -p udp -d 10.96.0.10 --dport 53 -j NOTRACK",
            ]
        );
        // Per address: 2 PREROUTING + 6 OUTPUT in raw, 2 INPUT + 2 OUTPUT in filter.
        assert_eq!(text.lines().filter(|l| l.starts_with("-I ")).count(), 2 * 12);
        assert!(text.starts_with("*raw\n") && text.ends_with("COMMIT\n"));
    }
}
