//! Calico's Felix with its iptables dataplane, as in Calico v3.32: the filter table Felix programs
//! on a node whose workloads are [`PodNetwork`]'s pods, with Kubernetes NetworkPolicies turned
//! into `cali-po-` chains the way Calico converts them.
//!
//! What follows Felix closely, because tracer reads it on real nodes:
//! - chain names: `cali-fw-<iface>` / `cali-tw-<iface>` per workload interface, policy chains
//!   named by policy kind, namespace and name (`cali-po-knp/default/deny-dns`; v3.32 stopped
//!   writing the tier-and-`knp.default.` form, which was always hashed down to `cali-po-_<hash>`),
//!   profiles `cali-pro-kns.<namespace>` and `cali-pro-ksa.<namespace>.<serviceaccount>`; names
//!   longer than iptables' 28 characters are shortened with `_` and a SHA-256 prefix, as Felix does;
//! - every rule's first comment `cali:<hash>`, the same hash Felix computes (SHA-224 chained over
//!   the chain name and the rules before it, URL-safe base64, 16 characters), so a ruleset loaded
//!   from here reads as Felix's own to anything that checks;
//! - the mark bits of Felix's default mark mask (accept 0x10000, pass 0x20000, drop 0x40000,
//!   scratch 0x80000 and 0x100000), the per-endpoint VXLAN and IPIP drops, the tier's end-of-tier
//!   drop and the profiles' default drop;
//! - `DefaultEndpointToHostAction=ACCEPT`, as Calico's Kubernetes manifests configure Felix.
//!
//! Left out: the raw, mangle and nat tables (reverse-path checks, untracked and pre-DNAT policy,
//! NAT-outgoing: none of them decides a pod's DNS query's fate); host endpoints, whose dispatch
//! chains stay empty as on a node without any; overlay (IPIP, VXLAN, WireGuard) rules in
//! `cali-INPUT`; IPVS support; ingress NetworkPolicies (the policies here are egress only, so no
//! `cali-pi-` chain is referenced, and Felix only writes referenced chains); named ports, `to`
//! peers and more than 15 ports per protocol (which Felix renders as ipsets and match blocks);
//! merging of adjacent ports into ranges; flow logs' NFLOG rules (Calico Enterprise); IPv6.

use anyhow::{ensure, Result};

use super::{EgressPolicy, Pod, PodNetwork, Protocol};
use crate::kube_proxy::digest::{base64_url, sha224, sha256};
use crate::kube_proxy::push_line;

/// iptables' limit, which Felix shortens longer names to.
const MAX_CHAIN_NAME: usize = 28;
/// Felix's marks from its default `IptablesMarkMask` 0xffff0000, in the order it allocates them.
const MARK_ACCEPT: u32 = 0x10000;
const MARK_PASS: u32 = 0x20000;
const MARK_SCRATCH0: u32 = 0x80000;
const MARK_SCRATCH1: u32 = 0x100000;
const ALL_MARKS: u32 = MARK_ACCEPT | MARK_PASS | MARK_SCRATCH0 | MARK_SCRATCH1;
const VXLAN_PORT: u16 = 4789;
/// The tier Kubernetes NetworkPolicies are in.
pub const TIER: &str = "default";
/// The comment of the rule that drops what no policy of the tier allowed.
pub const END_OF_TIER_DROP: &str = "End of tier default. Drop if no policies passed packet";
/// iptables' limit on ports in one `multiport` match.
const MAX_MULTIPORT: usize = 15;

/// One rule as Felix builds it, before rendering: its comments after the hash comment, its
/// matches and its action, each in Felix's own long-option spelling (`--jump`, `--in-interface`),
/// which is also what Felix hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FelixRule {
    pub comments: Vec<String>,
    pub matches: String,
    pub action: String,
}

impl FelixRule {
    pub fn new(matches: &str, action: &str) -> FelixRule {
        FelixRule { comments: Vec::new(), matches: matches.into(), action: action.into() }
    }

    pub fn commented(comment: &str, matches: &str, action: &str) -> FelixRule {
        FelixRule { comments: vec![comment.into()], ..FelixRule::new(matches, action) }
    }

    /// `-A CHAIN <hash comment> <comments> <matches> <action>`; `hash` is the literal `HASH`
    /// when Felix renders a rule to hash it.
    fn render(&self, chain: &str, hash_fragment: &str) -> String {
        let mut words = vec![format!("-A {chain}"), hash_fragment.to_string()];
        words.extend(self.comments.iter().map(|c| format!("-m comment --comment \"{}\"", escape_comment(c))));
        words.extend([self.matches.clone(), self.action.clone()].into_iter().filter(|w| !w.is_empty()));
        words.join(" ")
    }
}

/// Felix replaces what a shell would not take as is, so iptables-restore never sees a quote.
fn escape_comment(comment: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || " _@%+=:,./-".contains(c);
    comment.chars().map(|c| if safe(c) { c } else { '_' }).collect()
}

/// The hashes Felix writes into its rules' `cali:` comments: each is the SHA-224 of the previous
/// one (the chain name's, first) followed by the rule, so a rule's hash also changes with its
/// position and with every rule before it.
pub fn rule_hashes(chain: &str, rules: &[FelixRule]) -> Vec<String> {
    let mut previous = sha224(chain.as_bytes()).to_vec();
    rules
        .iter()
        .map(|rule| {
            let mut input = previous.clone();
            input.extend_from_slice(rule.render(chain, "HASH").as_bytes());
            previous = sha224(&input).to_vec();
            let mut hash = base64_url(&previous);
            hash.truncate(16);
            hash
        })
        .collect()
}

/// `prefix` + `suffix`, or, when that is longer than iptables allows (or exactly as long and
/// the suffix starts with the `_` that marks a shortened name), `prefix` + `_` + as much of the
/// URL-safe base64 SHA-256 of `suffix` as fits.
pub fn length_limited(prefix: &str, suffix: &str) -> String {
    let suffix = if suffix.is_empty() { "_" } else { suffix };
    let total = prefix.len() + suffix.len();
    if total > MAX_CHAIN_NAME || (total == MAX_CHAIN_NAME && suffix.starts_with('_')) {
        let mut hash = base64_url(&sha256(suffix.as_bytes()));
        hash.truncate(MAX_CHAIN_NAME.saturating_sub(1 + prefix.len()));
        return format!("{prefix}_{hash}");
    }
    format!("{prefix}{suffix}")
}

/// `cali-po-knp/<namespace>/<name>`: the chain of a Kubernetes NetworkPolicy's egress rules.
pub fn policy_egress_chain(policy: &EgressPolicy) -> String {
    length_limited("cali-po-", &format!("knp/{}/{}", policy.namespace, policy.name))
}

/// `cali-fw-<iface>`: traffic from the workload (its egress).
pub fn from_workload_chain(iface: &str) -> String {
    length_limited("cali-fw-", iface)
}

/// `cali-tw-<iface>`: traffic to the workload (its ingress).
pub fn to_workload_chain(iface: &str) -> String {
    length_limited("cali-tw-", iface)
}

/// The profiles Calico gives every Kubernetes pod: its namespace's and its service account's
/// (always `default` here).
fn profiles(pod: &Pod) -> [String; 2] {
    [format!("kns.{}", pod.namespace), format!("ksa.{}.default", pod.namespace)]
}

fn clear_mark(mark: u32) -> String {
    format!("--jump MARK --set-mark 0/{mark:#x}")
}

fn set_mark(mark: u32) -> String {
    format!("--jump MARK --set-mark {mark:#x}/{mark:#x}")
}

fn mark_clear(mark: u32) -> String {
    format!("-m mark --mark 0/{mark:#x}")
}

fn mark_set(mark: u32) -> String {
    format!("-m mark --mark {mark:#x}/{mark:#x}")
}

/// The chain Felix jumps to from FORWARD, for workload interfaces starting with `prefix`.
pub fn forward_chain(prefix: &str) -> Vec<FelixRule> {
    vec![
        // All Calico bits but accept, which the raw and mangle chains use to pass a verdict on.
        FelixRule::new("", &clear_mark(ALL_MARKS & !MARK_ACCEPT)),
        FelixRule::new(&mark_clear(MARK_ACCEPT), "--jump cali-from-hep-forward"),
        FelixRule::new(&format!("--in-interface {prefix}+"), "--jump cali-from-wl-dispatch"),
        FelixRule::new(&format!("--out-interface {prefix}+"), "--jump cali-to-wl-dispatch"),
        FelixRule::new("", "--jump cali-to-hep-forward"),
        FelixRule::new("", "--jump cali-cidr-block"),
    ]
}

fn input_chain(prefix: &str) -> Vec<FelixRule> {
    vec![
        FelixRule::new(&format!("--in-interface {prefix}+"), "--goto cali-wl-to-host"),
        FelixRule::new(&mark_set(MARK_ACCEPT), "--jump ACCEPT"),
        FelixRule::new("", &clear_mark(ALL_MARKS)),
        FelixRule::new("", "--jump cali-from-host-endpoint"),
        FelixRule::commented("Host endpoint policy accepted packet.", &mark_set(MARK_ACCEPT), "--jump ACCEPT"),
    ]
}

/// The chain Felix jumps to from OUTPUT.
pub fn output_chain(prefix: &str) -> Vec<FelixRule> {
    vec![
        FelixRule::new(&mark_set(MARK_ACCEPT), "--jump ACCEPT"),
        FelixRule::new(&format!("--out-interface {prefix}+"), "--jump RETURN"),
        FelixRule::new("", &clear_mark(ALL_MARKS)),
        FelixRule::new("-m conntrack ! --ctstate DNAT", "--jump cali-to-host-endpoint"),
        FelixRule::commented("Host endpoint policy accepted packet.", &mark_set(MARK_ACCEPT), "--jump ACCEPT"),
    ]
}

/// Where workload-to-host traffic goes: the workload's egress policy, then the configured action.
pub fn workload_to_host_chain() -> Vec<FelixRule> {
    vec![
        FelixRule::new("", "--jump cali-from-wl-dispatch"),
        FelixRule::commented("Configured DefaultEndpointToHostAction", "", "--jump ACCEPT"),
    ]
}

/// What FORWARD gets at its head, and at its end (hashed as chain `FORWARD*appends*`).
pub fn forward_hooks() -> (Vec<FelixRule>, Vec<FelixRule>) {
    let inserted = vec![FelixRule::new("", "--jump cali-FORWARD")];
    let appended = vec![
        FelixRule::commented("Policy explicitly accepted packet.", &mark_set(MARK_ACCEPT), "--jump ACCEPT"),
        // Tells mangle POSTROUTING that this is forwarded traffic, which host endpoint egress
        // policy must leave alone.
        FelixRule::new("", &set_mark(MARK_ACCEPT)),
    ];
    (inserted, appended)
}

/// The dispatch chains for workload interfaces `names`: a rule per interface that jumps (goto) to
/// its endpoint chain, and "Unknown interface" drops for the rest. Names that share their first
/// character after the common prefix get a child chain, so that a packet passes few rules.
fn dispatch_chains(
    root: &str,
    names: &[&str],
    endpoint_chain: fn(&str) -> String,
    iface_match: &str,
) -> Vec<(String, Vec<FelixRule>)> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names.dedup();
    let common = common_prefix(&names);
    // (prefix, names with that prefix), in name order.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for name in &names {
        let prefix = name.get(..common.len() + 1).unwrap_or(name);
        match groups.last_mut() {
            Some((p, group)) if *p == prefix => group.push(name),
            _ => groups.push((prefix, vec![name])),
        }
    }
    let unknown = FelixRule::commented("Unknown interface", "", "--jump DROP");
    let mut chains = Vec::new();
    let mut root_rules = Vec::new();
    for (prefix, group) in groups {
        if let [name] = group[..] {
            root_rules
                .push(FelixRule::new(&format!("{iface_match} {name}"), &format!("--goto {}", endpoint_chain(name))));
            continue;
        }
        let child = format!("{root}-{}", prefix.get(common.len()..).unwrap_or(prefix));
        root_rules.push(FelixRule::new(&format!("{iface_match} {prefix}+"), &format!("--goto {child}")));
        let mut rules: Vec<_> = group
            .iter()
            .map(|name| FelixRule::new(&format!("{iface_match} {name}"), &format!("--goto {}", endpoint_chain(name))))
            .collect();
        rules.push(unknown.clone());
        chains.push((child, rules));
    }
    root_rules.push(unknown);
    chains.push((root.to_string(), root_rules));
    chains
}

fn common_prefix<'a>(names: &[&'a str]) -> &'a str {
    let Some(first) = names.first() else {
        return "";
    };
    let mut len = first.len();
    for name in &names[1..] {
        len = first.bytes().zip(name.bytes()).take(len).take_while(|(a, b)| a == b).count();
    }
    first.get(..len).unwrap_or("")
}

/// A workload's endpoint chain in one direction: conntrack, mark reset, (egress) encapsulation
/// drops, the tier's policies, then its profiles.
fn endpoint_chain(pod: &Pod, policies: &[&EgressPolicy], egress: bool) -> Vec<FelixRule> {
    let mut rules = vec![
        FelixRule::new("-m conntrack --ctstate RELATED,ESTABLISHED", "--jump ACCEPT"),
        FelixRule::new("-m conntrack --ctstate INVALID", "--jump DROP"),
        FelixRule::new("", &clear_mark(MARK_ACCEPT | MARK_PASS)),
    ];
    if egress {
        // Encapsulated packets from a pod could carry anything past its egress policy.
        rules.push(FelixRule::commented(
            "Drop VXLAN encapped packets originating in workloads",
            &format!("-p 17 -m multiport --destination-ports {VXLAN_PORT}"),
            "--jump DROP",
        ));
        rules.push(FelixRule::commented(
            "Drop IPinIP encapped packets originating in workloads",
            "-p 4",
            "--jump DROP",
        ));
    }
    if !policies.is_empty() {
        rules.push(FelixRule::commented(&format!("Start of tier {TIER}"), "", &clear_mark(MARK_PASS)));
        for policy in policies {
            rules.push(FelixRule::new(&mark_clear(MARK_PASS), &format!("--jump {}", policy_egress_chain(policy))));
            rules.push(FelixRule::commented("Return if policy accepted", &mark_set(MARK_ACCEPT), "--jump RETURN"));
        }
        rules.push(FelixRule::commented(END_OF_TIER_DROP, &mark_clear(MARK_PASS), "--jump DROP"));
    }
    let profile_prefix = if egress { "cali-pro-" } else { "cali-pri-" };
    for profile in profiles(pod) {
        rules.push(FelixRule::new("", &format!("--jump {}", length_limited(profile_prefix, &profile))));
        rules.push(FelixRule::commented("Return if profile accepted", &mark_set(MARK_ACCEPT), "--jump RETURN"));
    }
    rules.push(FelixRule::commented("Drop if no profiles matched", "", "--jump DROP"));
    rules
}

/// A NetworkPolicy's egress chain: Calico turns the egress rule into one rule per protocol with
/// all of that protocol's ports, which sets the accept mark, and a return on it. The last return
/// is left out, as Felix strips a chain's trailing returns.
fn policy_chain(policy: &EgressPolicy) -> Result<Vec<FelixRule>> {
    let mut rules = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let mut ports: Vec<u16> = policy.ports.iter().filter(|p| p.protocol == protocol).map(|p| p.port).collect();
        if ports.is_empty() {
            continue;
        }
        ports.sort_unstable();
        ports.dedup();
        ensure!(
            ports.len() <= MAX_MULTIPORT,
            "policy {}/{}: more than {MAX_MULTIPORT} {protocol} ports need Felix's match blocks, which are left out",
            policy.namespace,
            policy.name
        );
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        rules.push(FelixRule::new(
            &format!("-p {protocol} -m multiport --destination-ports {}", list.join(",")),
            &set_mark(MARK_ACCEPT),
        ));
        rules.push(FelixRule::new(&mark_set(MARK_ACCEPT), "--jump RETURN"));
    }
    rules.pop();
    let comment = format!("KubernetesNetworkPolicy {}/{} egress", policy.namespace, policy.name);
    match rules.first_mut() {
        Some(first) => first.comments.push(comment),
        None => rules.push(FelixRule::commented(&comment, "", "")),
    }
    Ok(rules)
}

/// A profile chain: Kubernetes namespace profiles allow everything, service account profiles
/// carry only labels, so their chain is the comment alone.
fn profile_chain(profile: &str, egress: bool) -> Vec<FelixRule> {
    let direction = if egress { "egress" } else { "ingress" };
    let comment = format!("Profile {profile} {direction}");
    if profile.starts_with("kns.") {
        vec![FelixRule::commented(&comment, "", &set_mark(MARK_ACCEPT))]
    } else {
        vec![FelixRule::commented(&comment, "", "")]
    }
}

/// Felix's filter table for the node's workloads `network`, whose interfaces all start with
/// `interface_prefix` (Felix's `InterfacePrefix`, `cali` on a stock node), as `iptables-restore`
/// input for a fresh network namespace. The built-in chains hold only Felix's jumps: Felix
/// inserts its FORWARD, INPUT and OUTPUT jumps first and appends its two FORWARD rules.
pub fn iptables_restore_text(network: &PodNetwork, interface_prefix: &str) -> Result<String> {
    let mut chains: Vec<(String, Vec<FelixRule>)> = vec![
        ("cali-FORWARD".into(), forward_chain(interface_prefix)),
        ("cali-INPUT".into(), input_chain(interface_prefix)),
        ("cali-OUTPUT".into(), output_chain(interface_prefix)),
        ("cali-wl-to-host".into(), workload_to_host_chain()),
    ];
    // Host endpoint and service-loop chains: referenced, and empty without host endpoints.
    for empty in [
        "cali-cidr-block",
        "cali-from-hep-forward",
        "cali-from-host-endpoint",
        "cali-to-hep-forward",
        "cali-to-host-endpoint",
    ] {
        chains.push((empty.into(), Vec::new()));
    }
    let ifaces: Vec<&str> = network.pods.iter().map(|p| p.iface.as_str()).collect();
    chains.extend(dispatch_chains("cali-from-wl-dispatch", &ifaces, from_workload_chain, "--in-interface"));
    chains.extend(dispatch_chains("cali-to-wl-dispatch", &ifaces, to_workload_chain, "--out-interface"));

    let mut profiles_used: Vec<(String, bool)> = Vec::new();
    let mut policies_used: Vec<&EgressPolicy> = Vec::new();
    for pod in &network.pods {
        let policies: Vec<&EgressPolicy> = network.policies_for(pod).collect();
        chains.push((to_workload_chain(&pod.iface), endpoint_chain(pod, &[], false)));
        chains.push((from_workload_chain(&pod.iface), endpoint_chain(pod, &policies, true)));
        for egress in [false, true] {
            profiles_used.extend(profiles(pod).into_iter().map(|p| (p, egress)));
        }
        policies_used.extend(policies);
    }
    profiles_used.sort();
    profiles_used.dedup();
    for (profile, egress) in &profiles_used {
        let prefix = if *egress { "cali-pro-" } else { "cali-pri-" };
        chains.push((length_limited(prefix, profile), profile_chain(profile, *egress)));
    }
    policies_used.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    policies_used.dedup();
    for policy in policies_used {
        chains.push((policy_egress_chain(policy), policy_chain(policy)?));
    }

    let mut out = String::new();
    push_line!(out, "*filter");
    for builtin in ["INPUT", "FORWARD", "OUTPUT"] {
        push_line!(out, ":{builtin} ACCEPT [0:0]");
    }
    for (name, _) in &chains {
        push_line!(out, ":{name} - [0:0]");
    }
    let (forward_inserted, forward_appended) = forward_hooks();
    write_rules(&mut out, "FORWARD", "FORWARD", &forward_inserted);
    write_rules(&mut out, "FORWARD", "FORWARD*appends*", &forward_appended);
    write_rules(&mut out, "INPUT", "INPUT", &[FelixRule::new("", "--jump cali-INPUT")]);
    write_rules(&mut out, "OUTPUT", "OUTPUT", &[FelixRule::new("", "--jump cali-OUTPUT")]);
    for (name, rules) in &chains {
        write_rules(&mut out, name, name, rules);
    }
    push_line!(out, "COMMIT");
    Ok(out)
}

/// Appends `rules` to `chain`, hashed as chain `hashed_as`.
fn write_rules(out: &mut String, chain: &str, hashed_as: &str, rules: &[FelixRule]) {
    for (rule, hash) in rules.iter().zip(rule_hashes(hashed_as, rules)) {
        push_line!(out, "{}", rule.render(chain, &format!("-m comment --comment \"cali:{hash}\"")));
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::lab_pods;
    use super::*;

    /// Hashes of a Felix node's own `iptables-save` (Calico's functional tests keep one), for
    /// chains whose rules do not depend on the node: a hash or rendering that drifts from
    /// Felix's fails here.
    #[test]
    fn hashes_match_felix() {
        let (inserted, appended) = forward_hooks();
        assert_eq!(rule_hashes("FORWARD", &inserted), ["wUHhoiAYhphO9Mso"]);
        assert_eq!(rule_hashes("FORWARD*appends*", &appended), ["S93hcgKJrXEqnTfs", "mp77cMpurHhyjLrM"]);
        assert_eq!(rule_hashes("INPUT", &[FelixRule::new("", "--jump cali-INPUT")]), ["Cz_u1IQiXIMmKD4c"]);
        assert_eq!(rule_hashes("OUTPUT", &[FelixRule::new("", "--jump cali-OUTPUT")]), ["tVnHkvAo15HuiPy0"]);
        assert_eq!(
            rule_hashes("cali-FORWARD", &forward_chain("cali")),
            [
                "W_vvds1Nw3n9QE2f",
                "ZfgmjuiLaA8Pg0kp",
                "tAzwBLPaV-j53OOZ",
                "4Z0Pf0byo05NFe-P",
                "hQ7Oc16wmUtLuneJ",
                "rnKNH2WxGcRQcIlD"
            ]
        );
        // That node had VXLAN on, and its saved ruleset lost the rules that need Felix's ipsets:
        // their hashes still count in the rules after them.
        let mut output = output_chain("cali");
        output.insert(
            2,
            FelixRule::commented(
                "Allow IPv4 VXLAN packets to other allowed hosts",
                "-p 17 -m multiport --destination-ports 4789 -m addrtype --src-type LOCAL -m set --match-set \
                 cali40all-vxlan-net dst",
                "--jump ACCEPT",
            ),
        );
        let mut hashes = rule_hashes("cali-OUTPUT", &output);
        hashes.remove(2);
        assert_eq!(
            hashes,
            ["Mq1_rAdXXH3YkrzW", "69FkRTJDvD5Vu6Vl", "6T0hFtymUtXMOfEV", "IpTGXsDHURPUaLjJ", "wgnULo2gucg1umsA"]
        );
        assert_eq!(rule_hashes("cali-wl-to-host", &workload_to_host_chain()), ["Ee9Sbo10IpVujdIY", "nSZbcOoG1xPONxb8"]);
        let dispatch = dispatch_chains("cali-from-wl-dispatch", &[], from_workload_chain, "--in-interface");
        assert_eq!(rule_hashes("cali-from-wl-dispatch", &dispatch[0].1), ["zTj6P0TIgYvgz-md"]);
        let dispatch = dispatch_chains("cali-to-wl-dispatch", &[], to_workload_chain, "--out-interface");
        assert_eq!(rule_hashes("cali-to-wl-dispatch", &dispatch[0].1), ["7KNphB1nNHw80nIO"]);
        // That node had VXLAN on: its INPUT chain starts with the VXLAN check.
        let mut input = vec![
            FelixRule::commented(
                "Allow IPv4 VXLAN packets from allowed hosts",
                "-p 17 -m multiport --destination-ports 4789 -m set --match-set cali40all-vxlan-net src -m addrtype \
                 --dst-type LOCAL",
                "--jump ACCEPT",
            ),
            FelixRule::commented(
                "Drop IPv4 VXLAN packets from non-allowed hosts",
                "-p 17 -m multiport --destination-ports 4789 -m addrtype --dst-type LOCAL",
                "--jump DROP",
            ),
        ];
        input.extend(input_chain("cali"));
        let mut hashes = rule_hashes("cali-INPUT", &input);
        hashes.remove(0);
        assert_eq!(
            hashes,
            [
                "EDCNTTxYfggApx8C",
                "H03xYXARh4e8pwd4",
                "MN6K3isIWBigb1Va",
                "aKDQAoV0P_FFAIwV",
                "vIx3xkWzuvLW9fr4",
                "5W9XghKma9wuz47x"
            ]
        );
    }

    #[test]
    fn names_are_shortened_like_felix() {
        let policy = |namespace: &str, name: &str| EgressPolicy {
            namespace: namespace.into(),
            name: name.into(),
            selected: Vec::new(),
            ports: Vec::new(),
        };
        // Exactly 28 characters: kept.
        assert_eq!(policy_egress_chain(&policy("default", "deny-dns")), "cali-po-knp/default/deny-dns");
        let long = policy_egress_chain(&policy("default", "deny-dns-everywhere"));
        assert!(long.starts_with("cali-po-_") && long.len() == MAX_CHAIN_NAME, "{long}");
        assert_eq!(from_workload_chain("veth-client"), "cali-fw-veth-client");
        assert_eq!(length_limited("cali-pro-", "ksa.default.default"), "cali-pro-ksa.default.default");
        // 28 characters starting with the shortening mark would be mistaken for a shortened name.
        assert!(length_limited("cali-fw-", "_abcdefghijklmnopqrs").starts_with("cali-fw-_"));
        assert_ne!(length_limited("cali-fw-", "_abcdefghijklmnopqrs"), "cali-fw-_abcdefghijklmnopqrs");
    }

    #[test]
    fn deny_dns_drops_at_the_end_of_the_tier() -> Result<()> {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 245, 0, 7), "veth-routed");
        let text = iptables_restore_text(&PodNetwork::deny_dns(client, server, false), "veth")?;
        let fw: Vec<&str> = text.lines().filter(|l| l.starts_with("-A cali-fw-veth-client ")).collect();
        let tail: Vec<String> =
            fw.iter().map(|l| l.split_once("\" ").map_or(*l, |(_, rest)| rest).to_string()).collect();
        assert_eq!(
            tail[5..10],
            [
                "-m comment --comment \"Start of tier default\" --jump MARK --set-mark 0/0x20000",
                "-m mark --mark 0/0x20000 --jump cali-po-knp/default/deny-dns",
                "-m comment --comment \"Return if policy accepted\" -m mark --mark 0x10000/0x10000 --jump RETURN",
                "-m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark \
                 0/0x20000 --jump DROP",
                "--jump cali-pro-kns.default",
            ]
        );
        let policy: Vec<&str> = text.lines().filter(|l| l.starts_with("-A cali-po-knp/default/deny-dns ")).collect();
        assert_eq!(policy.len(), 1, "{policy:#?}");
        assert!(policy[0].ends_with(
            "-m comment --comment \"KubernetesNetworkPolicy default/deny-dns egress\" -p tcp -m multiport \
             --destination-ports 443 --jump MARK --set-mark 0x10000/0x10000"
        ));
        assert!(text.contains("-A cali-from-wl-dispatch "));
        assert!(text.contains("--in-interface veth-client --goto cali-fw-veth-client"));
        assert!(text.contains("--out-interface veth-routed --goto cali-tw-veth-routed"));
        assert!(!text.contains("cali-pi-"), "no ingress policy, so no ingress policy chain");
        Ok(())
    }

    #[test]
    fn allowing_dns_adds_a_rule_per_protocol() -> Result<()> {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 245, 0, 7), "veth-routed");
        let text = iptables_restore_text(&PodNetwork::deny_dns(client, server, true), "veth")?;
        let policy: Vec<&str> = text.lines().filter(|l| l.starts_with("-A cali-po-knp/default/deny-dns ")).collect();
        assert_eq!(policy.len(), 3, "{policy:#?}");
        assert!(policy[0]
            .ends_with("-p tcp -m multiport --destination-ports 53,443 --jump MARK --set-mark 0x10000/0x10000"));
        assert!(policy[1].ends_with("-m mark --mark 0x10000/0x10000 --jump RETURN"));
        assert!(
            policy[2].ends_with("-p udp -m multiport --destination-ports 53 --jump MARK --set-mark 0x10000/0x10000")
        );
        Ok(())
    }

    #[test]
    fn shared_prefixes_get_a_child_dispatch_chain() {
        let chains = dispatch_chains(
            "cali-to-wl-dispatch",
            &["cali12", "cali13", "calib"],
            to_workload_chain,
            "--out-interface",
        );
        let names: Vec<&str> = chains.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["cali-to-wl-dispatch-1", "cali-to-wl-dispatch"]);
        let root: Vec<String> = chains[1].1.iter().map(|r| format!("{} {}", r.matches, r.action)).collect();
        assert_eq!(
            root,
            [
                "--out-interface cali1+ --goto cali-to-wl-dispatch-1",
                "--out-interface calib --goto cali-tw-calib",
                " --jump DROP",
            ]
        );
        assert_eq!(chains[0].1.len(), 3, "two interfaces and the unknown-interface drop");
    }

    #[test]
    fn same_network_same_bytes() -> Result<()> {
        let (client, server) = lab_pods(Ipv4Addr::new(10, 245, 0, 7), "veth-routed");
        let network = PodNetwork::deny_dns(client, server, false);
        assert_eq!(iptables_restore_text(&network, "veth")?, iptables_restore_text(&network, "veth")?);
        Ok(())
    }
}
