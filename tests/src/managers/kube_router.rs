//! kube-router's network policy controller in its iptables mode, as in kube-router v2.10: the
//! filter table it leaves once it has synced a node's pods and NetworkPolicies, and the ipsets
//! its rules match on.
//!
//! v2.10 is the last release whose rule comments name the pod, policy and namespace in words
//! ("rule to REJECT traffic destined for POD name:client namespace: default"); v2.11 shortened them
//! to `namespace/name kind` tags. Chain and set names hash the way kube-router hashes them
//! (base32 of SHA-256, 16 characters), including the sync version in the chain names: kube-router
//! writes new `KUBE-POD-FW-` and `KUBE-NWPLCY-` chains on every full sync, named after that sync's
//! start time in nanoseconds, and the generators take that version as a parameter.
//!
//! Layout: the built-in chains jump to `KUBE-ROUTER-INPUT`, `-FORWARD` and `-OUTPUT`; those send a
//! pod's traffic (by source and destination address, and for bridged traffic once more with
//! `physdev --physdev-is-bridged`) to the pod's `KUBE-POD-FW-` chain, which runs
//! `KUBE-NWPLCY-COMMON`, the policies that select the pod (or `KUBE-NWPLCY-DEFAULT` for a direction
//! no policy covers), then logs and REJECTs what no policy marked 0x10000, and marks the rest
//! 0x20000, which `KUBE-NWPLCY-TAIL` accepts.
//!
//! The text is the table's final state with every rule appended in order; kube-router itself gets
//! there by inserting the pod chain's first rules one at a time at its head and restoring the
//! saved table with its new chains. The ipset text is the sets' final state as `ipset save`
//! prints it (kube-router swaps each set in from a temporary one).
//!
//! Left out: ingress rules (`KUBE-DST-` sets, `from` peers), `to` peers and ipBlocks, named ports
//! and port ranges; `--netpol-default-deny` (its `kube-router-local-pods` set and the tail chain's
//! REJECTs); externalIPs and LoadBalancer ranges in `KUBE-ROUTER-INPUT`; IPv6 (`inet6:` sets,
//! ip6tables); the service proxy and routing controllers' own rules.

use super::{Cidr, EgressPolicy, Pod, PodNetwork};
use crate::kube_proxy::digest::{base32, sha256};
use crate::kube_proxy::push_line;

/// kube-router's default `--service-node-port-range`.
pub const NODE_PORT_RANGE: &str = "30000:32767";
/// The IP family kube-router hashes into policy chain and set names.
const FAMILY: &str = "IPv4";
const TOP_LEVEL: [(&str, &str); 3] =
    [("INPUT", "KUBE-ROUTER-INPUT"), ("FORWARD", "KUBE-ROUTER-FORWARD"), ("OUTPUT", "KUBE-ROUTER-OUTPUT")];

fn hashed(prefix: &str, input: &str) -> String {
    let mut encoded = base32(&sha256(input.as_bytes()));
    encoded.truncate(16);
    format!("{prefix}{encoded}")
}

/// `KUBE-POD-FW-<hash>`: the pod's firewall chain of sync `version`.
pub fn pod_firewall_chain(pod: &Pod, version: &str) -> String {
    hashed("KUBE-POD-FW-", &format!("{}{}{version}", pod.namespace, pod.name))
}

/// `KUBE-NWPLCY-<hash>`: the policy's chain of sync `version`.
pub fn policy_chain(namespace: &str, name: &str, version: &str) -> String {
    hashed("KUBE-NWPLCY-", &format!("{namespace}{name}{version}{FAMILY}"))
}

/// `KUBE-SRC-<hash>`: the set of the pods an egress policy selects.
pub fn policy_source_set(policy: &EgressPolicy) -> String {
    hashed("KUBE-SRC-", &format!("{}{}{FAMILY}", policy.namespace, policy.name))
}

/// The comment kube-router adds a rule's own hash to, for the rules it keeps in place with
/// `iptables -I` rather than restoring: base32 SHA-256 of the chain and the rule's words run
/// together.
fn with_rule_id(chain: &str, before: &str, comment: &str, after: &str) -> String {
    let words: String = before
        .split_whitespace()
        .chain(["-m", "comment", "--comment", comment])
        .chain(after.split_whitespace())
        .collect();
    let id = hashed("", &format!("{chain}{words}"));
    let spaced = |s: &str| if s.is_empty() { String::new() } else { format!("{s} ") };
    format!("{}-m comment --comment \"{comment} - {id}\" {after}", spaced(before))
}

fn pod_label(pod: &Pod) -> String {
    format!("POD name:{} namespace: {}", pod.name, pod.namespace)
}

/// kube-router's filter table for `network` after sync `version`, with ClusterIPs in
/// `service_cidr`, as `iptables-restore` input for a fresh network namespace.
pub fn iptables_restore_text(network: &PodNetwork, version: &str, service_cidr: Cidr) -> String {
    let mut chains: Vec<String> = TOP_LEVEL.iter().map(|(_, custom)| custom.to_string()).collect();
    chains.extend(["KUBE-NWPLCY-COMMON", "KUBE-NWPLCY-DEFAULT", "KUBE-NWPLCY-TAIL"].map(String::from));
    let mut rules = String::new();

    for (builtin, custom) in TOP_LEVEL {
        let rule = with_rule_id(builtin, "", "kube-router netpol", &format!("-j {custom}"));
        push_line!(rules, "-A {builtin} {rule}");
    }
    let input = "KUBE-ROUTER-INPUT";
    let cluster_ips = with_rule_id(
        input,
        "",
        "allow traffic to primary/secondary cluster IP range",
        &format!("-d {service_cidr} -j RETURN"),
    );
    push_line!(rules, "-A {input} {cluster_ips}");
    for (proto, name) in [("tcp", "TCP"), ("udp", "UDP"), ("sctp", "SCTP")] {
        let rule = with_rule_id(
            input,
            &format!("-p {proto}"),
            &format!("allow LOCAL {name} traffic to node ports"),
            &format!("-m addrtype --dst-type LOCAL -m multiport --dports {NODE_PORT_RANGE} -j RETURN"),
        );
        push_line!(rules, "-A {input} {rule}");
    }

    let mut pod_chains = String::new();
    for pod in &network.pods {
        let chain = pod_firewall_chain(pod, version);
        chains.push(chain.clone());
        let ip = pod.ip;
        let to = format!("\"rule to jump traffic destined to {} to chain {chain}\"", pod_label(pod));
        let from = format!("\"rule to jump traffic from {} to chain {chain}\"", pod_label(pod));
        // Routed traffic, traffic a service proxy sends back to a pod of this node, and traffic
        // between pods of the node's bridge.
        push_line!(rules, "-A KUBE-ROUTER-FORWARD -m comment --comment {to} -d {ip} -j {chain}");
        push_line!(rules, "-A KUBE-ROUTER-OUTPUT -m comment --comment {to} -d {ip} -j {chain}");
        push_line!(
            rules,
            "-A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -m comment --comment {to} -d {ip} -j {chain}"
        );
        for (_, custom) in TOP_LEVEL {
            push_line!(rules, "-A {custom} -m comment --comment {from} -s {ip} -j {chain}");
        }
        push_line!(
            rules,
            "-A KUBE-ROUTER-FORWARD -m physdev --physdev-is-bridged -m comment --comment {from} -s {ip} -j {chain}"
        );
        pod_chain(&mut pod_chains, network, pod, &chain, version);
    }
    for (_, custom) in TOP_LEVEL {
        push_line!(
            rules,
            "-A {custom} -m comment --comment \"rule to explicitly handle traffic for network policies ACCEPT/REJECT \
             decision\" -j KUBE-NWPLCY-TAIL"
        );
    }
    rules.push_str(&pod_chains);

    push_line!(
        rules,
        "-A KUBE-NWPLCY-COMMON -m comment --comment \"rule to drop invalid state for pod\" -m conntrack --ctstate \
         INVALID -j DROP"
    );
    push_line!(
        rules,
        "-A KUBE-NWPLCY-COMMON -m comment --comment \"rule for stateful firewall for pod\" -m conntrack --ctstate \
         RELATED,ESTABLISHED -j ACCEPT"
    );
    for (icmp_type, what) in [
        ("echo-request", "echo requests"),
        ("destination-unreachable", "destination unreachable messages"),
        ("time-exceeded", "time exceeded messages"),
    ] {
        push_line!(
            rules,
            "-A KUBE-NWPLCY-COMMON -m comment --comment \"allow icmp {what}\" -p icmp --icmp-type {icmp_type} -j ACCEPT"
        );
    }
    push_line!(
        rules,
        "-A KUBE-NWPLCY-DEFAULT -j MARK -m comment --comment \"rule to mark traffic matching a network policy\" \
         --set-xmark 0x10000/0x10000"
    );
    push_line!(
        rules,
        "-A KUBE-NWPLCY-TAIL -m comment --comment \"rule to explicitly ACCEPT traffic that comply to network \
         policies\" -m mark --mark 0x20000/0x20000 -j ACCEPT"
    );

    for policy in &network.policies {
        let chain = policy_chain(&policy.namespace, &policy.name, version);
        chains.push(chain.clone());
        let set = policy_source_set(policy);
        let comment = format!(
            "\"rule to ACCEPT traffic from source pods to all destinations selected by policy name: {} namespace {}\"",
            policy.name, policy.namespace
        );
        for port in &policy.ports {
            // The protocol as the NetworkPolicy spells it, upper case, and no explicit match
            // module: iptables loads the protocol's own.
            let matches = format!(
                "-m comment --comment {comment} -m set --match-set {set} src -p {} --dport {}",
                port.protocol.as_str().to_uppercase(),
                port.port
            );
            push_line!(rules, "-A {chain} {matches} -j MARK --set-xmark 0x10000/0x10000");
            push_line!(rules, "-A {chain} {matches} -m mark --mark 0x10000/0x10000 -j RETURN");
        }
    }

    let mut out = String::new();
    push_line!(out, "*filter");
    for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
        push_line!(out, ":{builtin} ACCEPT [0:0]");
    }
    for chain in &chains {
        push_line!(out, ":{chain} - [0:0]");
    }
    out.push_str(&rules);
    push_line!(out, "COMMIT");
    out
}

/// A pod's firewall chain: common rules, the node's own traffic to it, default or policy chains
/// per direction, then the verdict: log and REJECT what no policy marked, mark the rest for the
/// tail chain's ACCEPT.
fn pod_chain(out: &mut String, network: &PodNetwork, pod: &Pod, chain: &str, version: &str) {
    let ip = pod.ip;
    push_line!(
        out,
        "-A {chain} -m comment --comment \"common bi-directional traffic policy rules\" -j KUBE-NWPLCY-COMMON"
    );
    push_line!(
        out,
        "-A {chain} -m comment --comment \"rule to permit the traffic traffic to pods when source is the pod's local \
         node\" -m addrtype --src-type LOCAL -d {ip} -j ACCEPT"
    );
    let policies: Vec<&EgressPolicy> = network.policies_for(pod).collect();
    if policies.is_empty() {
        push_line!(
            out,
            "-A {chain} -s {ip} -m comment --comment \"run through default egress network policy chain\" -j \
             KUBE-NWPLCY-DEFAULT"
        );
    }
    // The policies here cover egress only, so ingress always takes the default chain.
    push_line!(
        out,
        "-A {chain} -d {ip} -m comment --comment \"run through default ingress network policy chain\" -j \
         KUBE-NWPLCY-DEFAULT"
    );
    // Inserted one by one at the head, so the last policy ends up first.
    for policy in policies.iter().rev() {
        let policy_chain = policy_chain(&policy.namespace, &policy.name, version);
        push_line!(
            out,
            "-A {chain} -s {ip} -m comment --comment \"run through nw policy {}\" -j {policy_chain}",
            policy.name
        );
    }
    let label = pod_label(pod);
    push_line!(
        out,
        "-A {chain} -m comment --comment \"rule to log dropped traffic {label}\" -m mark ! --mark 0x10000/0x10000 -j \
         NFLOG --nflog-group 100 -m limit --limit 10/minute --limit-burst 10"
    );
    push_line!(
        out,
        "-A {chain} -m comment --comment \"rule to REJECT traffic destined for {label}\" -m mark ! --mark \
         0x10000/0x10000 -j REJECT"
    );
    push_line!(out, "-A {chain} -j MARK --set-mark 0/0x10000");
    push_line!(
        out,
        "-A {chain} -m comment --comment \"set mark to ACCEPT traffic that comply to network policies\" -j MARK \
         --set-mark 0x20000/0x20000"
    );
}

/// The sets kube-router's rules for `network` match on, as `ipset restore` input: one `hash:ip`
/// set per egress policy with the addresses of the pods it selects.
pub fn ipset_restore_text(network: &PodNetwork) -> String {
    let mut out = String::new();
    for policy in &network.policies {
        let set = policy_source_set(policy);
        push_line!(out, "create {set} hash:ip timeout 0");
        for pod in network.pods.iter().filter(|p| policy.selects(p)) {
            push_line!(out, "add {set} {} timeout 0", pod.ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::{lab_pods, Cidr};
    use super::*;

    const SERVICE_CIDR: Cidr = Cidr { addr: Ipv4Addr::new(10, 96, 0, 0), prefix: 12 };

    fn network(allow_dns: bool) -> PodNetwork {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 244, 0, 7), "veth-server");
        PodNetwork::deny_dns(client, server, allow_dns)
    }

    /// Chain names kube-router's own tests expect for their policies (sync version "1").
    #[test]
    fn policy_chains_match_kube_routers() {
        assert_eq!(policy_chain("nsA", "simple-egress", "1"), "KUBE-NWPLCY-C23KD7UE4TAT3Y5M");
        assert_eq!(policy_chain("nsA", "simple-ingress-egress", "1"), "KUBE-NWPLCY-IDIX352DRLNY3D23");
        assert_eq!(policy_chain("nsA", "simple-egress-pr", "1"), "KUBE-NWPLCY-2UTXQIFBI5TAPUCL");
    }

    #[test]
    fn client_is_rejected_unless_a_policy_marks_it() {
        let net = network(false);
        let text = iptables_restore_text(&net, "1767225600000000000", SERVICE_CIDR);
        let chain = pod_firewall_chain(&net.pods[0], "1767225600000000000");
        let policy = policy_chain("default", "deny-dns", "1767225600000000000");
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("-A {chain} "))).collect();
        assert_eq!(rules.len(), 8, "{rules:#?}");
        assert!(rules[3]
            .ends_with(&format!("-s 10.244.0.5 -m comment --comment \"run through nw policy deny-dns\" -j {policy}")));
        assert!(rules[5].ends_with(
            "--comment \"rule to REJECT traffic destined for POD name:client namespace: default\" -m mark ! --mark \
             0x10000/0x10000 -j REJECT"
        ));
        // The server has no policy: both directions run through the default chain.
        let server = pod_firewall_chain(&net.pods[1], "1767225600000000000");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(&format!("-A {server} ")) && l.contains("KUBE-NWPLCY-DEFAULT"))
                .count(),
            2
        );
        let set = policy_source_set(&net.policies[0]);
        let allowed: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("-A {policy} "))).collect();
        assert_eq!(allowed.len(), 2);
        assert!(allowed[0].contains(&format!("-m set --match-set {set} src -p TCP --dport 443 -j MARK")));
        assert_eq!(
            ipset_restore_text(&net),
            format!("create {set} hash:ip timeout 0\nadd {set} 10.244.0.5 timeout 0\n")
        );
    }

    #[test]
    fn allowing_dns_adds_a_mark_and_return_per_port() {
        let text = iptables_restore_text(&network(true), "2", SERVICE_CIDR);
        let policy = policy_chain("default", "deny-dns", "2");
        let ports: Vec<&str> =
            text.lines().filter(|l| l.starts_with(&format!("-A {policy} ")) && l.ends_with("-j RETURN")).collect();
        assert_eq!(ports.len(), 3);
        assert!(ports[1].contains("-p UDP --dport 53 -m mark"));
    }

    #[test]
    fn kept_rules_carry_their_id() {
        let text = iptables_restore_text(&network(false), "1", SERVICE_CIDR);
        let jump = text.lines().find(|l| l.starts_with("-A FORWARD ")).unwrap_or_default();
        let id = hashed("", "FORWARD-mcomment--commentkube-router netpol-jKUBE-ROUTER-FORWARD");
        assert_eq!(
            jump,
            format!("-A FORWARD -m comment --comment \"kube-router netpol - {id}\" -j KUBE-ROUTER-FORWARD")
        );
        assert!(text
            .contains("-A KUBE-ROUTER-INPUT -p udp -m comment --comment \"allow LOCAL UDP traffic to node ports - "));
    }
}
