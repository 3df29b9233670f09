//! The rulesets that other owners of a node's firewall write, generated from the shapes their
//! public sources emit, so that tracer's attribution of a DNS drop or reject can be tested against
//! what each owner really leaves on a node, and its advice against what that owner accepts as a fix:
//!
//! - [`calico`]: Calico's Felix with its iptables dataplane, enforcing a Kubernetes NetworkPolicy;
//! - [`kube_router`]: kube-router's network policy controller (iptables and ipsets);
//! - [`firewalld`]: firewalld with its nftables backend and its zones;
//! - [`docker`]: Docker's bridge networks, in the layout before and since Docker 28.
//!
//! Each module says at its top which release it follows and what it leaves out. The text each one
//! returns is what that release would load itself (or leave behind), in the form the real tool
//! takes unmodified: `iptables-restore`, `ipset restore` or `nft -f` input, for a fresh network
//! namespace. Everything is IPv4 only, and the same input always gives the same bytes.
//!
//! The pods and policies the Kubernetes managers enforce are one [`PodNetwork`], so that Calico
//! and kube-router can be given the same scenario: [`PodNetwork::deny_dns`].

pub mod calico;
pub mod docker;
pub mod firewalld;
pub mod kube_router;

use std::net::Ipv4Addr;

pub use crate::kube_proxy::{Cidr, Protocol};

/// The policy of [`PodNetwork::deny_dns`], in the client's namespace.
pub const DENY_DNS_POLICY: &str = "deny-dns";
/// The namespace of [`PodNetwork::deny_dns`]'s client pod and policy.
pub const CLIENT_NAMESPACE: &str = "default";
/// The port the deny-dns policy still allows, so that the policy is not simply "deny all egress".
pub const ALLOWED_PORT: u16 = 443;

/// A pod running on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node-side end of the pod's veth: what Calico dispatches on.
    pub iface: String,
}

impl Pod {
    pub fn new(namespace: &str, name: &str, ip: Ipv4Addr, iface: &str) -> Pod {
        Pod { namespace: namespace.into(), name: name.into(), ip, iface: iface.into() }
    }
}

/// One `ports` entry of a NetworkPolicy rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A Kubernetes NetworkPolicy with `policyTypes: [Egress]` and one egress rule that allows
/// `ports` to any destination (no `to`): egress of the selected pods is denied except to those
/// ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    pub namespace: String,
    pub name: String,
    /// Names of the pods of `namespace` that its pod selector selects.
    pub selected: Vec<String>,
    pub ports: Vec<PolicyPort>,
}

impl EgressPolicy {
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.selected.contains(&pod.name)
    }
}

/// The node's pods and the NetworkPolicies that apply to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub pods: Vec<Pod>,
    pub policies: Vec<EgressPolicy>,
}

impl PodNetwork {
    /// `client` in namespace [`CLIENT_NAMESPACE`] with NetworkPolicy `default/deny-dns`, which
    /// allows its egress only to TCP [`ALLOWED_PORT`], so that its DNS queries to `server` are
    /// denied; with `allow_dns` the same policy also allows UDP and TCP 53 (the fix a cluster owner
    /// makes), and the queries pass.
    pub fn deny_dns(client: Pod, server: Pod, allow_dns: bool) -> PodNetwork {
        let mut ports = vec![PolicyPort { protocol: Protocol::Tcp, port: ALLOWED_PORT }];
        if allow_dns {
            ports.push(PolicyPort { protocol: Protocol::Udp, port: 53 });
            ports.push(PolicyPort { protocol: Protocol::Tcp, port: 53 });
        }
        let policy = EgressPolicy {
            namespace: CLIENT_NAMESPACE.into(),
            name: DENY_DNS_POLICY.into(),
            selected: vec![client.name.clone()],
            ports,
        };
        PodNetwork { pods: vec![client, server], policies: vec![policy] }
    }

    /// The policies that select `pod`, in the network's order.
    pub fn policies_for<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a EgressPolicy> {
        self.policies.iter().filter(move |p| p.selects(pod))
    }
}

/// The lab's client pod (`default/client`) and its DNS server (`kube-system/coredns`) at `server_ip`
/// behind node interface `server_iface`: the pods of the scenarios in the test lab.
pub fn lab_pods(server_ip: Ipv4Addr, server_iface: &str) -> (Pod, Pod) {
    let client = Pod::new(CLIENT_NAMESPACE, "client", Ipv4Addr::new(10, 244, 0, 5), crate::lab::CLIENT_VETH);
    (client, Pod::new("kube-system", "coredns", server_ip, server_iface))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_pods_are_the_labs() {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 245, 0, 7), crate::lab::ROUTED_VETH);
        assert_eq!(client.ip.to_string(), crate::lab::CLIENT_IP);
        assert_eq!((client.iface.as_str(), server.iface.as_str()), (crate::lab::CLIENT_VETH, crate::lab::ROUTED_VETH));
    }

    #[test]
    fn deny_dns_selects_the_client_only() {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 244, 0, 7), crate::lab::SERVER_VETH);
        let network = PodNetwork::deny_dns(client, server, false);
        assert_eq!(network.policies_for(&network.pods[0]).count(), 1);
        assert_eq!(network.policies_for(&network.pods[1]).count(), 0);
        assert!(network.policies[0].ports.iter().all(|p| p.port != 53));
    }
}
