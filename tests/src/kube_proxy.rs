//! A node's firewall as kube-proxy (and NodeLocal DNSCache) leave it, generated for a cluster of
//! any size: the input to test tracer's attribution of DNS drops and rejects against the rule
//! layouts real nodes carry, at the scale they carry them (thousands of Services, tens of
//! thousands of rules), instead of against a handful of hand-written rules.
//!
//! # Which layouts
//!
//! Shapes learnt from kube-proxy's source and its own tests in the Kubernetes repository; the
//! generators here are written from those shapes, not from its code.
//!
//! - [`iptables_restore_text`]: kube-proxy's iptables proxier as in Kubernetes 1.31 and later (the
//!   one with `KUBE-PROXY-FIREWALL`, `KUBE-EXT-` chains, `MASQUERADE --random-fully` and the
//!   "large cluster" mode that drops the per-endpoint comments above 1 000 endpoints). The text is
//!   the node's tables after kube-proxy's first sync: its own `iptables-restore` input plus what it
//!   and the kubelet add around it with `iptables -I` (the jumps from the built-in chains, the
//!   canary chains, `KUBE-IPTABLES-HINT`).
//! - [`nft_ruleset_text`]: kube-proxy's nftables proxier with the chains and priorities of
//!   Kubernetes 1.34 (table `ip kube-proxy`; filter chains at priority 0, after DNAT, and the
//!   LoadBalancer firewall check before it in `filter-prerouting-pre-dnat` /
//!   `filter-output-pre-dnat` at -110; `cluster-ips-check`; the `no-endpoint-services` vmap). The
//!   text is its first-sync transaction, command for command, as `nft -f` takes it.
//! - [`nodelocal_dns_restore_text`]: node-cache's iptables mode (NodeLocal DNSCache).
//!
//! Chain names hash the way kube-proxy hashes them (see [`iptables_service_chain`] and
//! [`nft_service_chain`]), so a name seen on a real node and one generated here for the same
//! Service are the same name.
//!
//! # Left out
//!
//! IPv6 (kube-proxy writes the same layout again for ip6tables / `ip6 kube-proxy`); session
//! affinity; LoadBalancer IPs, externalIPs and source ranges (`KUBE-FW-`, `firewall-ips` stay
//! empty); `Local` traffic policies (`KUBE-SVL-`, `local-` chains); terminating endpoints
//! (an endpoint is ready or unused); the `nfacct` counters kube-proxy adds when the kernel has
//! nfnetlink_acct; kube-proxy's later (partial) syncs and stale-chain cleanup. kube-proxy emits
//! Services in Go map order, which changes from sync to sync; here they come in the cluster's
//! order, so the same cluster always gives the same bytes.

pub(crate) mod digest;
mod iptables;
mod nftables;
pub mod node;
mod nodelocal;

use std::fmt;
use std::net::Ipv4Addr;

use anyhow::{ensure, Result};

pub use iptables::iptables_restore_text;
pub use nftables::nft_ruleset_text;
pub use nodelocal::{nodelocal_dns_restore_text, NODELOCAL_DNS_IP, NODELOCAL_HEALTH_PORT};

/// Service CIDR of a kubeadm cluster; kube-dns's ClusterIP is its tenth address.
pub const SERVICE_CIDR: Cidr = Cidr { addr: Ipv4Addr::new(10, 96, 0, 0), prefix: 12 };
/// Pod CIDR as flannel's and kubeadm's examples set it; kube-proxy's "local traffic" test.
pub const POD_CIDR: Cidr = Cidr { addr: Ipv4Addr::new(10, 244, 0, 0), prefix: 16 };
pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// The node's own address: the `kubernetes` Service's endpoint and the one NodePort address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

/// Above this many endpoints in all, kube-proxy's iptables mode stops writing the Service's
/// name into endpoint rules, to keep the ruleset small.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// The most synthetic Services [`Cluster::synthetic`] makes: their endpoints (at most three each)
/// must fit in the pod CIDR outside 10.244.0.0/24, which the test lab's pods use.
pub const MAX_SYNTHETIC_SERVICES: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// As both kube-proxy modes write it: `udp`, `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 network, written `10.96.0.0/12`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One address of an EndpointSlice for a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Not-ready endpoints get no rules at all; a Service whose endpoints are all not ready is
    /// treated as having none.
    pub ready: bool,
}

impl Endpoint {
    pub fn ready(ip: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint { ip, port, ready: true }
    }

    /// `10.244.1.2:8080`, the form kube-proxy hashes and DNATs to.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One port of a Service, which is what kube-proxy writes rules for: a Service with three ports
/// is three of these with the same namespace, name and ClusterIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `ns/name:port`, the name kube-proxy puts in comments and hashes.
    pub fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// The endpoints kube-proxy writes rules for.
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    pub fn has_ready_endpoints(&self) -> bool {
        self.endpoints.iter().any(|e| e.ready)
    }
}

/// What the DNS Service's endpoints look like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeDns {
    /// The classic outage: the Service exists and nothing backs it, so both modes reject.
    NoEndpoints,
    /// CoreDNS pods that exist but fail their readiness probe: the same rules as no endpoints.
    NotReady(Vec<Ipv4Addr>),
    /// Ready CoreDNS pods at these addresses.
    Ready(Vec<Ipv4Addr>),
}

/// The Services one node's kube-proxy sees, and the cluster settings its rules depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub services: Vec<Service>,
    /// kube-proxy's `--cluster-cidr`: traffic from outside it to a ClusterIP is masqueraded.
    pub pod_cidr: Cidr,
    /// The ServiceCIDR: nftables mode drops traffic to its unallocated addresses.
    pub service_cidr: Cidr,
    /// The node's address, where NodePorts are served (nftables mode's `nodeport-ips`).
    pub node_ip: Ipv4Addr,
}

impl Cluster {
    /// The cluster's own Services (`default/kubernetes`, `kube-system/kube-dns` with `dns`,
    /// `dns-tcp` and `metrics` ports) and `n` synthetic ones, `ns-<i>/svc-<i>`, always built the
    /// same way for the same arguments:
    /// - ports cycle through `http` (tcp 80 → 8080), `dns` (udp 53 → 53) and `grpc` (tcp 9090);
    /// - every tenth one is a NodePort Service (30000 upwards);
    /// - 1–3 endpoints each, at increasing addresses from 10.244.1.1, and every thirteenth Service
    ///   has one more endpoint that is not ready.
    pub fn synthetic(n: usize, dns: KubeDns) -> Result<Cluster> {
        ensure!(n <= MAX_SYNTHETIC_SERVICES, "{n} synthetic Services: at most {MAX_SYNTHETIC_SERVICES} fit");
        let mut services = vec![Service {
            namespace: "default".into(),
            name: "kubernetes".into(),
            port_name: "https".into(),
            protocol: Protocol::Tcp,
            cluster_ip: KUBERNETES_SERVICE_IP,
            port: 443,
            node_port: None,
            endpoints: vec![Endpoint::ready(NODE_IP, 6443)],
        }];
        services.extend(kube_dns_services(&dns));

        let mut pod_ips = (0u32..).map(|k| Ipv4Addr::new(10, 244, (1 + k / 254) as u8, (1 + k % 254) as u8));
        for i in 0..n {
            let (port_name, protocol, port, target_port) = match i % 8 {
                5 => ("dns", Protocol::Udp, 53, 53),
                6 => ("grpc", Protocol::Tcp, 9090, 9090),
                _ => ("http", Protocol::Tcp, 80, 8080),
            };
            let ready = 1 + i % 3;
            let not_ready = usize::from(i % 13 == 12);
            let endpoints = (0..ready + not_ready)
                .zip(&mut pod_ips)
                .map(|(k, ip)| Endpoint { ip, port: target_port, ready: k < ready })
                .collect();
            services.push(Service {
                namespace: format!("ns-{i}"),
                name: format!("svc-{i}"),
                port_name: port_name.into(),
                protocol,
                // Past 10.96.0.255, so that no synthetic Service takes .1 or .10.
                cluster_ip: Ipv4Addr::from(u32::from(SERVICE_CIDR.addr) + 256 + i as u32),
                port,
                node_port: (i % 10 == 7).then(|| 30000 + (i / 10) as u16),
                endpoints,
            });
        }
        Ok(Cluster { services, pod_cidr: POD_CIDR, service_cidr: SERVICE_CIDR, node_ip: NODE_IP })
    }

    /// All endpoints, ready or not: what kube-proxy counts to decide on large-cluster mode.
    pub fn endpoint_count(&self) -> usize {
        self.services.iter().map(|s| s.endpoints.len()).sum()
    }

    /// The Service port `ns/name:port`.
    pub fn service(&self, port_name_string: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.port_name_string() == port_name_string)
    }
}

/// The three ports of `kube-system/kube-dns` at [`KUBE_DNS_IP`], as CoreDNS's manifests define them.
pub fn kube_dns_services(dns: &KubeDns) -> Vec<Service> {
    let (pods, ready) = match dns {
        KubeDns::NoEndpoints => (&[][..], false),
        KubeDns::NotReady(pods) => (&pods[..], false),
        KubeDns::Ready(pods) => (&pods[..], true),
    };
    [("dns", Protocol::Udp, 53), ("dns-tcp", Protocol::Tcp, 53), ("metrics", Protocol::Tcp, 9153)]
        .into_iter()
        .map(|(port_name, protocol, port)| Service {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            port_name: port_name.into(),
            protocol,
            cluster_ip: KUBE_DNS_IP,
            port,
            node_port: None,
            endpoints: pods.iter().map(|&ip| Endpoint { ip, port, ready }).collect(),
        })
        .collect()
}

/// kube-proxy's iptables hash: base32 of SHA-256 over `ns/name:port` + protocol (+ endpoint),
/// first 16 characters.
fn iptables_hash(service: &Service, endpoint: Option<&Endpoint>) -> String {
    let mut input = service.port_name_string() + service.protocol.as_str();
    if let Some(endpoint) = endpoint {
        input.push_str(&endpoint.addr());
    }
    let mut encoded = digest::base32(&digest::sha256(input.as_bytes()));
    encoded.truncate(16);
    encoded
}

/// `KUBE-SVC-<hash>`: the Service port's chain in the nat table.
pub fn iptables_service_chain(service: &Service) -> String {
    format!("KUBE-SVC-{}", iptables_hash(service, None))
}

/// `KUBE-EXT-<hash>`: where NodePort traffic for the Service port goes first.
pub fn iptables_external_chain(service: &Service) -> String {
    format!("KUBE-EXT-{}", iptables_hash(service, None))
}

/// `KUBE-SEP-<hash>`: one endpoint's DNAT chain.
pub fn iptables_endpoint_chain(service: &Service, endpoint: &Endpoint) -> String {
    format!("KUBE-SEP-{}", iptables_hash(service, Some(endpoint)))
}

/// nftables mode names its per-Service chains by what they are for, readably, behind eight
/// base32 characters of the SHA-256 of that readable part (which keeps names unique should they
/// ever be cut at nftables' length limit; Kubernetes names never get that long).
fn nft_hashed(readable: String) -> String {
    let mut hash = digest::base32(&digest::sha256(readable.as_bytes()));
    hash.truncate(8);
    format!("{hash}-{readable}")
}

fn nft_service_base(service: &Service) -> String {
    nft_hashed(format!("{}/{}/{}/{}", service.namespace, service.name, service.protocol, service.port_name))
}

/// `service-<hash>-ns/name/proto/port`: the Service port's endpoint dispatch chain.
pub fn nft_service_chain(service: &Service) -> String {
    format!("service-{}", nft_service_base(service))
}

/// `external-<hash>-ns/name/proto/port`: where NodePort traffic for the Service port goes first.
pub fn nft_external_chain(service: &Service) -> String {
    format!("external-{}", nft_service_base(service))
}

/// `endpoint-<hash>-ns/name/proto/port__ip/port`: one endpoint's DNAT chain.
pub fn nft_endpoint_chain(service: &Service, endpoint: &Endpoint) -> String {
    let readable = format!(
        "{}/{}/{}/{}__{}/{}",
        service.namespace, service.name, service.protocol, service.port_name, endpoint.ip, endpoint.port
    );
    format!("endpoint-{}", nft_hashed(readable))
}

/// Twenty Services and kube-dns backed by two pods, 10.244.0.7 and 10.244.0.8: the generators'
/// unit tests' cluster with DNS endpoints.
#[cfg(test)]
fn small_cluster_with_dns_pods() -> Result<Cluster> {
    Cluster::synthetic(20, KubeDns::Ready(vec![Ipv4Addr::new(10, 244, 0, 7), Ipv4Addr::new(10, 244, 0, 8)]))
}

/// Appends one line to generated text. Writing into a `String` cannot fail.
macro_rules! push_line {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(crate) use push_line;

#[cfg(test)]
mod tests {
    use super::*;

    fn service(namespace: &str, name: &str, port_name: &str, protocol: Protocol) -> Service {
        Service {
            namespace: namespace.into(),
            name: name.into(),
            port_name: port_name.into(),
            protocol,
            cluster_ip: Ipv4Addr::new(172, 30, 0, 41),
            port: 80,
            node_port: None,
            endpoints: Vec::new(),
        }
    }

    /// Chain names kube-proxy's own tests expect for their Services, so a hash scheme that drifts
    /// from kube-proxy's fails here.
    #[test]
    fn chain_names_match_kube_proxys() {
        let svc1 = service("ns1", "svc1", "p80", Protocol::Tcp);
        let ep = Endpoint::ready(Ipv4Addr::new(10, 180, 0, 1), 80);
        assert_eq!(iptables_service_chain(&svc1), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(iptables_endpoint_chain(&svc1, &ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        let svc5 = service("ns5", "svc5", "p80", Protocol::Tcp);
        assert_eq!(iptables_external_chain(&svc5), "KUBE-EXT-NUKIZ6OKUXPJNT4C");

        assert_eq!(nft_service_chain(&svc1), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(nft_endpoint_chain(&svc1, &ep), "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80");
        let svc2 = service("ns2", "svc2", "p80", Protocol::Tcp);
        assert_eq!(nft_external_chain(&svc2), "external-42NFTM6N-ns2/svc2/tcp/p80");
    }

    #[test]
    fn protocol_is_part_of_the_hash() {
        let udp = service("kube-system", "kube-dns", "dns", Protocol::Udp);
        let tcp = service("kube-system", "kube-dns", "dns", Protocol::Tcp);
        assert_ne!(iptables_service_chain(&udp), iptables_service_chain(&tcp));
        assert_ne!(nft_service_chain(&udp), nft_service_chain(&tcp));
    }

    #[test]
    fn synthetic_cluster_is_deterministic_and_well_formed() -> Result<()> {
        let cluster = Cluster::synthetic(5000, KubeDns::NoEndpoints)?;
        assert_eq!(cluster, Cluster::synthetic(5000, KubeDns::NoEndpoints)?);
        // default/kubernetes, kube-dns's three ports, then the synthetic ones.
        assert_eq!(cluster.services.len(), 5004);

        let svc = cluster.service("ns-17/svc-17:http").expect("ns-17/svc-17:http");
        assert_eq!((svc.protocol, svc.port, svc.node_port), (Protocol::Tcp, 80, Some(30001)));
        assert!(cluster.service("ns-13/svc-13:dns").is_some_and(|s| s.protocol == Protocol::Udp));

        let mut ips: Vec<_> = cluster.services.iter().map(|s| s.cluster_ip).collect();
        ips.dedup(); // kube-dns's ports share one address
        let unique: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(unique.len(), ips.len(), "ClusterIPs must not repeat");
        let pods: std::collections::HashSet<_> =
            cluster.services.iter().flat_map(|s| &s.endpoints).map(|e| e.ip).collect();
        assert_eq!(pods.len(), cluster.endpoint_count(), "endpoint addresses must not repeat");
        for s in &cluster.services[4..] {
            let ready = s.ready_endpoints().count();
            assert!((1..=3).contains(&ready), "{}: {ready} ready endpoints", s.port_name_string());
            assert!(s.endpoints.iter().all(|e| e.ip.octets()[..3] != [10, 244, 0]), "lab pod subnet");
        }
        assert!(cluster.endpoint_count() > LARGE_CLUSTER_ENDPOINTS);
        Ok(())
    }

    #[test]
    fn kube_dns_endpoints_follow_the_choice() {
        let pods = vec![Ipv4Addr::new(10, 244, 0, 7)];
        for (dns, ready) in
            [(KubeDns::NoEndpoints, 0), (KubeDns::NotReady(pods.clone()), 0), (KubeDns::Ready(pods.clone()), 1)]
        {
            let services = kube_dns_services(&dns);
            let names: Vec<_> = services.iter().map(Service::port_name_string).collect();
            assert_eq!(
                names,
                ["kube-system/kube-dns:dns", "kube-system/kube-dns:dns-tcp", "kube-system/kube-dns:metrics"]
            );
            assert!(services.iter().all(|s| s.ready_endpoints().count() == ready), "{dns:?}");
        }
    }

    #[test]
    fn too_many_synthetic_services_is_an_error() {
        assert!(Cluster::synthetic(MAX_SYNTHETIC_SERVICES + 1, KubeDns::NoEndpoints).is_err());
    }
}
