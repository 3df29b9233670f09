//! Decides what a packet that died in a netfilter hook means: which rule or chain
//! policy stopped it, who owns that rule, in words, and how to undo it. A rule a manager
//! owns (kube-proxy, a NetworkPolicy engine, firewalld, Docker, ...) is rewritten by it, so
//! the advice for it changes what the manager reads; only a rule nobody is known to own is
//! edited directly. Triage's rule findings take the same advice (`managed_advice`).

use std::net::IpAddr;

use super::attribution::{answer_name, attribute, attribute_after, attribute_from_reading, Attribution, HookDrop};
use crate::{
    firewall::{
        owner::{owner_of, owner_of_chain, owner_of_element, policy_passed, purpose_of, Purpose},
        Backend, Chain, Family, Rule, Snapshot, Verdict,
    },
    model::{
        firewall::{Manager, MapElement, Owner},
        hook::Hook,
        netfilter::DropReason,
        packet::L4Proto,
    },
    schema::finding::{ChainRef, Culprit, Evidence, Finding, FindingKind, NetfilterEvidence, RuleRef},
};

/// The finding for a packet a netfilter hook dropped or rejected (`packet`, as the hook
/// saw it). `before` and `after` are the rulesets with counters from before the drop and
/// from now.
pub(crate) fn judge_drop(packet: &HookDrop, wall_time_ns: u64, before: &Snapshot, after: &Snapshot) -> Finding {
    finding_of(packet, wall_time_ns, attribute(before, after, packet))
}

/// The finding from the rulesets read just after the drop, when none read before it covers
/// its hook (see [`attribute_after`]).
pub(crate) fn judge_drop_after(packet: &HookDrop, wall_time_ns: u64, after: &Snapshot) -> Finding {
    finding_of(packet, wall_time_ns, attribute_after(after, packet))
}

/// The finding of a drop whose rule was not named, saying `why`: the hook and the kernel's
/// answer are known from the packet, the rule is left unnamed rather than guessed.
pub(crate) fn judge_drop_unnamed(packet: &HookDrop, wall_time_ns: u64, why: &str) -> Finding {
    finding_of(packet, wall_time_ns, Attribution { reason: why.to_string(), ..Attribution::default() })
}

/// The finding, when the packet's way through the chains of one `reading` (taken before the
/// drop) names one rule or policy by itself (see [`attribute_from_reading`]).
pub(crate) fn judge_drop_from_reading(packet: &HookDrop, wall_time_ns: u64, reading: &Snapshot) -> Option<Finding> {
    attribute_from_reading(reading, packet).map(|attribution| finding_of(packet, wall_time_ns, attribution))
}

fn finding_of(packet: &HookDrop, wall_time_ns: u64, attribution: Attribution) -> Finding {
    let family = packet.family;
    let icmp = packet.icmp.map(|(icmp_type, icmp_code)| answer_name(family, icmp_type, icmp_code));
    let rejected = icmp.is_some()
        || packet.tcp_reset
        || attribution.rule.as_ref().is_some_and(|r| matches!(r.verdict, Verdict::Reject { .. }));
    let kind = if rejected { FindingKind::NetfilterReject } else { FindingKind::NetfilterDrop };
    let action = if rejected { "REJECT" } else { "DROP" };
    let proto = packet.proto;
    let hook = packet.hook;
    let mut evidence = NetfilterEvidence {
        src: packet.src,
        dst: packet.dst,
        proto,
        hook,
        in_ifname: packet.in_iface.clone(),
        out_ifname: packet.out_iface.clone(),
        pods: Default::default(),
        culprit: Culprit::of(attribution.rule.as_ref().map(RuleRef::of), attribution.policy.as_ref().map(ChainRef::of)),
        candidates: attribution.candidates.iter().map(RuleRef::of).collect(),
        attribution: attribution.reason.clone(),
        icmp: icmp.clone(),
        drop_reason: DropReason::NetfilterDrop,
        owner: None,
        element: attribution.element.clone(),
        retry_of: None,
    };
    let blocker = Blocker::of(&attribution);
    let (owner, advice) = match blocker {
        Some(blocker) => {
            let (owner, advice) =
                owned_advice(blocker, evidence.element.as_ref(), &attribution.passed, &Blocked::packet(packet));
            (Some(owner), advice)
        }
        None => (None, None),
    };
    evidence.owner = owner;
    let by = culprit(&attribution);
    let cause = advice.as_ref().and_then(|a| a.cause.as_ref()).map(|c| format!(": {c}")).unwrap_or_default();
    let headline = format!("{action} in {hook}: {proto} {} → {} stopped by {by}{cause}", packet.src, packet.dst);
    let answer = match &icmp {
        Some(name) => format!(
            " The node answered the sender with ICMP {name}, which a client reports as an error at once (dig: \"host unreachable\" or \"connection refused\")."
        ),
        None if packet.tcp_reset => {
            " The node answered the sender with a TCP reset, which a client reports as an error at once (\"connection refused\").".to_string()
        }
        None => " Nothing tells the sender: it waits and times out.".to_string(),
    };
    let owner_words = match (&advice, blocker) {
        (Some(advice), _) => format!(" {}", advice.why),
        (None, Some(_)) => format!(" {UNMANAGED}"),
        (None, None) => String::new(),
    };
    // The attribution's reason is a clause of its own; the owner's words follow as sentences.
    let reason = attribution.reason.trim_end_matches('.');
    let explanation = format!(
        "The packet entered netfilter hook {hook} and never left it: {by} {} it.{answer} {reason}.{owner_words}",
        if rejected { "rejected" } else { "dropped" },
    );
    Finding {
        kind,
        wall_time_ns,
        headline,
        evidence: Evidence::Netfilter(evidence),
        explanation,
        fix: match advice {
            Some(advice) => advice.fix,
            None => fix_commands(&attribution, packet, proto.name()),
        },
    }
}

/// `filter/FORWARD #16` (what the drop line names), when the attribution is certain.
pub(crate) fn short_label(finding: &Finding) -> Option<String> {
    let Evidence::Netfilter(nf) = &finding.evidence else { return None };
    match (nf.culprit.rule(), nf.culprit.policy_chain()) {
        (Some(rule), _) => Some(format!("{}/{} #{}", rule.table, rule.chain, rule.position)),
        (None, Some(policy)) => Some(format!("{} policy", policy.label())),
        _ if !nf.candidates.is_empty() => Some(format!("one of {} rules", nf.candidates.len())),
        _ => None,
    }
}

fn culprit(attribution: &Attribution) -> String {
    if let Some(rule) = &attribution.rule {
        return format!(
            "{} rule #{} of {}/{} ({})",
            rule.backend.name(),
            rule.position,
            rule.table,
            rule.chain,
            rule.text
        );
    }
    if let Some(chain) = &attribution.policy {
        return format!("the DROP policy of {} chain {}/{}", chain.backend.name(), chain.table, chain.name);
    }
    if !attribution.candidates.is_empty() {
        return format!("one of {} rules that could have matched (listed below)", attribution.candidates.len());
    }
    "a rule tracer could not name".to_string()
}

fn fix_commands(attribution: &Attribution, packet: &HookDrop, proto: &str) -> Vec<String> {
    let port = packet.dst.port();
    let allow_match = format!("-p {proto} -d {} --dport {port}", packet.dst.ip());
    if let Some(rule) = &attribution.rule {
        let allow = match rule.backend {
            Backend::Nftables => format!(
                "nft insert rule {} {} {} daddr {} {proto} dport {port} accept    # or let this traffic through, at the top of the chain",
                rule.table,
                rule.chain,
                if packet.family == Family::Ipv6 { "ip6" } else { "ip" },
                packet.dst.ip()
            ),
            backend => format!(
                "{} -t {} -I {} 1 {allow_match} -j ACCEPT    # or let this traffic through, at the top of the chain",
                backend.iptables_command(rule.family),
                rule.table,
                rule.chain
            ),
        };
        return vec![
            format!("{}    # look at the rule and its neighbours first", rule.show_command()),
            format!("{}    # remove the rule", rule.delete_command()),
            allow,
        ];
    }
    if let Some(chain) = &attribution.policy {
        return match chain.backend {
            Backend::Nftables => vec![format!(
                "nft add rule {} {} {} daddr {} {proto} dport {port} accept    # the chain's policy is drop: accept this traffic explicitly",
                chain.table,
                chain.name,
                if packet.family == Family::Ipv6 { "ip6" } else { "ip" },
                packet.dst.ip()
            )],
            backend => {
                let cmd = backend.iptables_command(chain.family);
                vec![format!(
                    "{cmd} -t {} -A {} {allow_match} -j ACCEPT    # the chain's policy is DROP: accept this traffic explicitly",
                    chain.table, chain.name
                )]
            }
        };
    }
    vec![
        "iptables -S; ip6tables -S; iptables-legacy -S; nft -a list ruleset    # find the REJECT/DROP rule for this traffic".to_string(),
    ]
}

// ---------------------------------------------------------------------------------------
// Advice that follows the owner
// ---------------------------------------------------------------------------------------

/// What a rule nobody is known to own still needs said: an edit may not stay.
pub(crate) const UNMANAGED: &str =
    "No manager tracer knows wrote it; if a tool manages this ruleset anyway (a firewall \
     service, a CNI plugin, configuration management), it puts an edited rule back: change that tool's configuration \
     instead.";

/// What stopped the traffic: a rule, or the chain whose policy did.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Blocker<'a> {
    Rule(&'a Rule),
    Policy(&'a Chain),
}

impl<'a> Blocker<'a> {
    fn of(attribution: &'a Attribution) -> Option<Blocker<'a>> {
        match (&attribution.rule, &attribution.policy) {
            (Some(rule), _) => Some(Blocker::Rule(rule)),
            (None, Some(chain)) => Some(Blocker::Policy(chain)),
            (None, None) => None,
        }
    }

    /// Who owns it and what for; a rule's reading takes in the map element that chose its
    /// verdict, when one is known.
    fn ownership(self, element: Option<&MapElement>) -> (Owner, Purpose) {
        match self {
            Blocker::Rule(rule) => {
                let owner = match element {
                    Some(element) => owner_of_element(rule, element),
                    None => owner_of(rule),
                };
                (owner, purpose_of(rule, element))
            }
            Blocker::Policy(chain) => (owner_of_chain(chain), Purpose::Unstated),
        }
    }

    fn backend(self) -> Backend {
        match self {
            Blocker::Rule(rule) => rule.backend,
            Blocker::Policy(chain) => chain.backend,
        }
    }

    fn family(self) -> Family {
        match self {
            Blocker::Rule(rule) => rule.family,
            Blocker::Policy(chain) => chain.family,
        }
    }

    fn chain(self) -> &'a str {
        match self {
            Blocker::Rule(rule) => &rule.chain,
            Blocker::Policy(chain) => &chain.name,
        }
    }
}

/// The traffic a fix has to let through: a dropped packet, or the traced port's probes.
#[derive(Clone, Debug)]
pub(crate) struct Blocked {
    /// Its protocols: the packet's, or both for a probe of the port.
    pub protos: Vec<L4Proto>,
    pub dst: Option<IpAddr>,
    /// `None`: every port.
    pub port: Option<u16>,
    /// The node forwards it (hook FORWARD), rather than receiving or sending it.
    pub forwarded: bool,
    /// The interface it came in on, when known.
    pub in_iface: Option<String>,
    /// Put before commands that change the firewall of another network namespace
    /// (`ip netns exec NAME `); empty for the current one.
    pub netns_prefix: String,
}

impl Blocked {
    fn packet(packet: &HookDrop) -> Blocked {
        Blocked {
            protos: vec![packet.proto],
            dst: Some(packet.dst.ip()),
            port: Some(packet.dst.port()),
            forwarded: packet.hook == Hook::Forward,
            in_iface: packet.in_iface.clone(),
            netns_prefix: String::new(),
        }
    }

    fn is_dns(&self) -> bool {
        self.port == Some(53)
    }

    /// `-p udp -d 10.96.0.10 --dport 53`, one per protocol: what an iptables ACCEPT matches.
    fn iptables_matches(&self) -> Vec<String> {
        self.protos
            .iter()
            .map(|proto| {
                let dst = self.dst.map(|dst| format!(" -d {dst}")).unwrap_or_default();
                let port = self.port.map(|port| format!(" --dport {port}")).unwrap_or_default();
                format!("-p {proto}{dst}{port}")
            })
            .collect()
    }
}

/// What to say and do about traffic a managed rule or policy stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Advice {
    /// The cause in a few words, for a headline, where the ruleset tells it.
    pub cause: Option<String>,
    /// For the explanation: who wrote the rule and why, and why editing it does not last.
    pub why: String,
    pub fix: Vec<String>,
}

/// Who owns `blocker` (with `element`, the map element that chose a rule's verdict, when
/// known) and the advice that follows from it for `blocked`; no advice when no manager is
/// known to own it, so that editing the rule itself is the advice.
pub(crate) fn owned_advice(
    blocker: Blocker,
    element: Option<&MapElement>,
    passed: &[Rule],
    blocked: &Blocked,
) -> (Owner, Option<Advice>) {
    let (mut owner, purpose) = blocker.ownership(element);
    // A policy engine's drop sits in the pod's chain, after its policies let the packet through
    // unmarked: the policy is named by the chains the packet passed on its way there.
    let policy_engine = matches!(owner.manager, Manager::Calico | Manager::KubeRouter | Manager::Cilium);
    if let (true, None, Blocker::Rule(stopped)) = (policy_engine, &owner.policy, blocker) {
        let passed_policy = passed.iter().rev().find_map(|rule| Some((policy_passed(rule, stopped)?, rule)));
        if let Some((policy, rule)) = passed_policy {
            owner.evidence =
                format!("{}; on its way there the packet went through policy {policy} ({})", owner.evidence, rule.text);
            owner.policy = Some(policy);
        }
    }
    let advice = managed_advice(&owner, purpose, blocker, blocked);
    (owner, advice)
}

fn managed_advice(owner: &Owner, purpose: Purpose, blocker: Blocker, blocked: &Blocked) -> Option<Advice> {
    Some(match owner.manager {
        Manager::Unknown => return None,
        Manager::KubeProxy => kube_proxy_advice(owner, purpose, blocked),
        Manager::Calico | Manager::KubeRouter | Manager::Cilium => policy_engine_advice(owner, blocked),
        Manager::Firewalld => firewalld_advice(owner, blocker, blocked),
        Manager::Docker => docker_advice(blocker, blocked),
        Manager::Flannel => Advice {
            cause: None,
            why: format!(
                "Flannel wrote this rule ({}) and restores its chains whenever it resyncs: any edit here is undone. Its \
                 rules follow the pod network in its configuration.",
                owner.evidence
            ),
            fix: vec![
                "kubectl get configmap -A -l app=flannel -o yaml    # flannel's net-conf.json: the pod network its rules cover"
                    .to_string(),
            ],
        },
        Manager::NodeLocalDns => Advice {
            cause: None,
            why: format!(
                "NodeLocal DNSCache wrote this rule ({}) and puts its rules back within seconds: any edit here is \
                 undone. Its rules only skip conntrack for, and accept, DNS to the addresses it serves; change its \
                 configuration instead.",
                owner.evidence
            ),
            fix: vec![
                "kubectl -n kube-system get pods -l k8s-app=node-local-dns -o wide    # is it running on this node?"
                    .to_string(),
                "kubectl -n kube-system get daemonset node-local-dns -o yaml    # its -localip addresses and its configuration"
                    .to_string(),
            ],
        },
    })
}

/// The parts of kube-proxy's name for a Service port, `namespace/name[:port]`.
struct ServicePort<'a> {
    namespace: &'a str,
    name: &'a str,
}

impl ServicePort<'_> {
    fn parse(service: &str) -> Option<ServicePort<'_>> {
        let (namespace, rest) = service.split_once('/')?;
        let name = rest.split(':').next().unwrap_or(rest);
        Some(ServicePort { namespace, name })
    }

    fn is_kube_dns(&self) -> bool {
        self.namespace == "kube-system" && self.name == "kube-dns"
    }

    /// `kubectl -n NS get endpointslices -l kubernetes.io/service-name=NAME -o wide`
    fn endpointslices(&self, comment: &str) -> String {
        format!(
            "kubectl -n {} get endpointslices -l kubernetes.io/service-name={} -o wide    # {comment}",
            self.namespace, self.name
        )
    }

    fn get_service(&self, output: &str, comment: &str) -> String {
        format!("kubectl -n {} get service {} -o {output}    # {comment}", self.namespace, self.name)
    }
}

const KUBE_PROXY_REWRITES: &str = "kube-proxy rewrites this chain on every sync: any edit here is undone (a deleted \
     rule is back within seconds, and an ACCEPT put above it only hides the cause).";

/// Where the CoreDNS pods behind kube-dns are, and why they may not be ready.
const KUBE_DNS_COMMANDS: [&str; 2] = [
    "kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide    # the CoreDNS pods behind kube-dns: running and ready?",
    "kubectl -n kube-system describe deployment coredns    # its replicas, readiness and recent events",
];

fn kube_proxy_advice(owner: &Owner, purpose: Purpose, blocked: &Blocked) -> Advice {
    let service = owner.service.as_deref().and_then(ServicePort::parse);
    let named = owner.service.as_deref().map(|s| format!("Service {s}"));
    let subject = named.clone().unwrap_or_else(|| "The Service this traffic is addressed to".to_string());
    // Without the Service's name: which Service the address belongs to, then its slices.
    let find_service = || -> Vec<String> {
        let mut commands = Vec::new();
        if let Some(dst) = blocked.dst {
            commands.push(format!("kubectl get services -A -o wide | grep -w {dst}    # the Service at this address"));
        }
        commands.push(
            "kubectl get endpointslices -A -o wide    # a Service without ready endpoints lists none".to_string(),
        );
        commands
    };
    let kube_dns = service.as_ref().map_or(blocked.is_dns(), ServicePort::is_kube_dns);
    let (cause, why, mut fix) = match purpose {
        Purpose::NoEndpoints => {
            let mut why = format!(
                "{subject} has no ready endpoints: its pods are down, not ready, or its selector matches none. \
                 kube-proxy wrote this REJECT because the Service has nowhere to send the traffic, and \
                 {KUBE_PROXY_REWRITES} The fix is to get the Service ready endpoints."
            );
            if kube_dns {
                why.push_str(
                    " kube-dns is the cluster's DNS: CoreDNS is down or not ready, so every pod's lookups fail.",
                );
            }
            let fix = match &service {
                Some(service) => vec![
                    service.endpointslices("its endpoints: none is ready now"),
                    service.get_service("jsonpath='{.spec.selector}'", "the labels its pods must carry"),
                    format!(
                        "kubectl -n {} get pods -l <selector> -o wide    # <selector>: the labels printed above as \
                         key=value,key=value; are those pods running and ready?",
                        service.namespace
                    ),
                ],
                None => find_service(),
            };
            let cause = named
                .as_ref()
                .map_or("the Service has no ready endpoints".to_string(), |s| format!("{s} has no ready endpoints"));
            (Some(cause), why, fix)
        }
        Purpose::NoLocalEndpoints => {
            let why = format!(
                "{subject} has endpoints, but none on this node, and its traffic policy is Local \
                 (internalTrafficPolicy for its cluster IP, externalTrafficPolicy for node ports and load balancers): \
                 kube-proxy drops such traffic on a node without an endpoint. {KUBE_PROXY_REWRITES} Run an endpoint \
                 on this node or set the policy to Cluster."
            );
            let fix = match &service {
                Some(service) => vec![
                    service.get_service(
                        "jsonpath='{.spec.internalTrafficPolicy} {.spec.externalTrafficPolicy}'",
                        "Local: only endpoints on the receiving node serve",
                    ),
                    service.endpointslices("the nodes its endpoints run on"),
                ],
                None => find_service(),
            };
            let cause = format!(
                "{} has no endpoint on this node (traffic policy Local)",
                named.as_deref().unwrap_or("the Service")
            );
            (Some(cause), why, fix)
        }
        Purpose::SourceRanges => {
            let why = format!(
                "{subject} admits only the sources in its loadBalancerSourceRanges, and this one is not among them: \
                 kube-proxy drops the rest. {KUBE_PROXY_REWRITES} If this client should connect, add its range to the \
                 Service."
            );
            let fix = match &service {
                Some(service) => vec![
                    service.get_service("jsonpath='{.spec.loadBalancerSourceRanges}'", "the sources it admits"),
                    format!(
                        "kubectl -n {} edit service {}    # add the client's range to spec.loadBalancerSourceRanges",
                        service.namespace, service.name
                    ),
                ],
                None => find_service(),
            };
            let cause =
                format!("source outside the loadBalancerSourceRanges of {}", named.as_deref().unwrap_or("the Service"));
            (Some(cause), why, fix)
        }
        Purpose::Unstated => {
            let about = named.as_ref().map(|s| format!(" for {s}")).unwrap_or_default();
            let why = format!(
                "kube-proxy wrote this rule{about} ({}). Its rules follow the Services and their EndpointSlices (and \
                 kube-proxy's own configuration), and {KUBE_PROXY_REWRITES} Change the Service or its endpoints, not \
                 the chain.",
                owner.evidence
            );
            let fix = match &service {
                Some(service) => vec![
                    service.get_service("yaml", "the spec kube-proxy's rules follow"),
                    service.endpointslices("its endpoints and whether they are ready"),
                ],
                None => {
                    let mut fix = find_service();
                    fix.push(
                        "kubectl -n kube-system get configmap kube-proxy -o yaml    # kube-proxy's own configuration (mode, \
                         masquerading, ...)"
                            .to_string(),
                    );
                    fix
                }
            };
            (None, why, fix)
        }
    };
    if kube_dns && matches!(purpose, Purpose::NoEndpoints) {
        fix.extend(KUBE_DNS_COMMANDS.iter().map(|c| c.to_string()));
    }
    Advice { cause, why, fix }
}

/// The engine's name in prose.
fn engine_name(manager: Manager) -> &'static str {
    match manager {
        Manager::Calico => "Calico",
        Manager::Cilium => "Cilium",
        _ => manager.name(),
    }
}

fn policy_engine_advice(owner: &Owner, blocked: &Blocked) -> Advice {
    let engine = engine_name(owner.manager);
    let policy = owner.policy.as_deref();
    let named = policy.map(|p| format!(", for policy {p}")).unwrap_or_default();
    let enforced_in = match owner.manager {
        Manager::Cilium => " Cilium enforces network policies in eBPF programs rather than these chains; its drops show in its monitor.",
        _ => "",
    };
    let allow = if blocked.is_dns() {
        "If DNS should pass, a policy that selects the client pods must allow egress to the kube-dns pods (namespace \
         kube-system, label k8s-app=kube-dns) on port 53, UDP and TCP, and a policy that selects the DNS pods must let \
         that traffic in."
            .to_string()
    } else {
        let port = blocked.port.map(|p| format!(" on port {p}")).unwrap_or_default();
        format!(
            "If this traffic should pass, the policies that select the pods at either end must allow it{port}: \
             egress from the client, ingress to the server."
        )
    };
    let why = format!(
        "{engine} wrote this rule to enforce the cluster's network policies{named} ({}). {engine} rewrites its chains \
         whenever policies, pods or namespaces change: any edit here is undone.{enforced_in} {allow}",
        owner.evidence
    );
    let mut fix = vec![
        "kubectl get networkpolicy -A    # the policies; those selecting the pods at either end decide".to_string()
    ];
    if let Some((namespace, name)) = policy.and_then(|p| p.split_once('/')) {
        fix.push(format!("kubectl -n {namespace} describe networkpolicy {name}    # what it allows"));
    }
    match owner.manager {
        Manager::Calico => fix.extend([
            "calicoctl get networkpolicy --all-namespaces -o wide    # Calico's own policies, which kubectl does not list"
                .to_string(),
            "calicoctl get globalnetworkpolicy -o wide    # and its cluster-wide ones".to_string(),
        ]),
        Manager::Cilium => fix.extend([
            "kubectl get ciliumnetworkpolicies,ciliumclusterwidenetworkpolicies -A    # Cilium's own policies".to_string(),
            "kubectl -n kube-system exec ds/cilium -- cilium-dbg monitor --type drop    # the drops Cilium makes, as they \
             happen"
                .to_string(),
        ]),
        _ => {}
    }
    let cause = Some(match policy {
        Some(policy) => format!("{engine} network policy {policy}"),
        None => format!("{engine} network policy"),
    });
    Advice { cause, why, fix }
}

fn firewalld_advice(owner: &Owner, blocker: Blocker, blocked: &Blocked) -> Advice {
    let reload = "firewall-cmd --reload    # apply the permanent configuration".to_string();
    if blocker.chain().ends_with("_direct") {
        return Advice {
            cause: Some("a firewalld direct rule".to_string()),
            why: format!(
                "This is a firewalld direct rule ({}), added with firewall-cmd --direct; firewalld rewrites its rules \
                 whenever it reloads, so change the direct rule in firewalld, not in the table.",
                owner.evidence
            ),
            fix: vec![
                "firewall-cmd --direct --get-all-rules    # the direct rules, this one among them".to_string(),
                "firewall-cmd --permanent --direct --remove-rule <ipv4|ipv6> <table> <chain> <priority> <args>    # \
                 with the rule as listed above"
                    .to_string(),
                reload,
            ],
        };
    }
    // A zone or a policy, as firewalld's own commands take them.
    let (target, label) = match (&owner.zone, &owner.policy) {
        (Some(zone), _) => (format!("--zone={zone}"), format!("zone {zone}")),
        (None, Some(policy)) => (format!("--policy={policy}"), format!("policy {policy}")),
        (None, None) => ("--zone=<zone>".to_string(), "the zone of the interface the traffic arrives on".to_string()),
    };
    let mut fix = vec![
        "firewall-cmd --get-active-zones    # which zone each interface and source is in".to_string(),
        format!("firewall-cmd {target} --list-all    # what it allows now"),
    ];
    if blocked.is_dns() {
        fix.push(format!("firewall-cmd --permanent {target} --add-service=dns    # allow DNS (port 53, UDP and TCP)"));
    } else if let Some(port) = blocked.port {
        fix.extend(
            blocked.protos.iter().map(|proto| format!("firewall-cmd --permanent {target} --add-port={port}/{proto}")),
        );
    }
    if blocked.forwarded {
        let iface = blocked.in_iface.as_deref().unwrap_or("<pod bridge>");
        fix.push(format!(
            "firewall-cmd --permanent --zone=trusted --add-interface={iface}    # or, for traffic the node forwards \
             between pods: trust the pod network's interface"
        ));
    }
    fix.push(reload);
    Advice {
        cause: Some(format!("firewalld {label}")),
        why: format!(
            "firewalld wrote this rule from its configuration of {label} ({}) and rewrites its rules whenever it \
             reloads: an nft or iptables edit of them is lost at the next reload or restart. Allow the traffic in \
             firewalld's permanent configuration instead.",
            owner.evidence
        ),
        fix,
    }
}

fn docker_advice(blocker: Blocker, blocked: &Blocked) -> Advice {
    let iptables = format!("{}{}", blocked.netns_prefix, blocker.backend().iptables_command(blocker.family()));
    let mut fix = vec![format!(
        "{iptables} -L DOCKER-USER -v -n --line-numbers    # the administrators' rules, which FORWARD consults first"
    )];
    let why = match blocker {
        Blocker::Rule(rule) if rule.chain == "DOCKER-USER" => {
            fix.push(format!(
                "{}{}    # remove the rule, if this traffic should pass",
                blocked.netns_prefix,
                rule.delete_command()
            ));
            "The rule is in DOCKER-USER, the chain Docker creates and leaves to administrators: someone put it there, \
             and Docker keeps it. Remove it, or accept this traffic above it."
                .to_string()
        }
        Blocker::Rule(rule) => format!(
            "Docker wrote {} and rewrites its chains when it starts and whenever its networks or containers change: \
             any edit of DOCKER, DOCKER-FORWARD or DOCKER-ISOLATION-* is undone. Docker leaves DOCKER-USER to \
             administrators and FORWARD consults it first: allow this traffic there.",
            rule.chain
        ),
        Blocker::Policy(_) => {
            "Docker set FORWARD's policy to DROP when it started, so the node drops forwarded traffic \
             that none of FORWARD's rules accepts (pods on another bridge, for one). Docker leaves DOCKER-USER to \
             administrators and FORWARD consults it first: allow this traffic there."
                .to_string()
        }
    };
    fix.extend(blocked.iptables_matches().into_iter().map(|matches| {
        format!("{iptables} -I DOCKER-USER {matches} -j ACCEPT    # let this traffic through, ahead of Docker's rules")
    }));
    Advice { cause: Some("Docker's firewall".to_string()), why, fix }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::firewall::{parse_iptables_save, parse_nft_json};

    /// An iptables-nft snapshot of an IPv4 iptables-save listing.
    fn iptables(save: &str) -> Snapshot {
        Snapshot { chains: parse_iptables_save(save, Backend::IptablesNft, Family::Ipv4), errors: Vec::new() }
    }

    /// A DNS query from a pod to the kube-dns address, forwarded by the node.
    pub(crate) fn dns_query(icmp: Option<(u8, u8)>) -> HookDrop {
        HookDrop {
            family: Family::Ipv4,
            hook: Hook::Forward,
            proto: L4Proto::Udp,
            src: "10.244.0.5:41234".parse().expect("addr"),
            dst: "10.96.0.10:53".parse().expect("addr"),
            in_iface: Some("cni0".to_string()),
            out_iface: Some("eth0".to_string()),
            icmp,
            tcp_reset: false,
        }
    }

    const PORT_UNREACHABLE: Option<(u8, u8)> = Some((3, 3));

    /// kube-proxy's REJECT for a Service without endpoints, as its iptables mode writes it,
    /// with the counter the rule had (`before`) or has after the drop.
    fn kube_proxy_no_endpoints(packets: u64) -> String {
        format!(
            "*filter\n:FORWARD ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
             [9:540] -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             [{packets}:0] -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n\
             COMMIT\n"
        )
    }

    /// The finding a kube-proxy no-endpoints REJECT of a DNS query makes.
    pub(crate) fn kube_proxy_finding() -> Finding {
        let (before, after) = (iptables(&kube_proxy_no_endpoints(3)), iptables(&kube_proxy_no_endpoints(4)));
        judge_drop(&dns_query(PORT_UNREACHABLE), 1_800_000_000_000_000_000, &before, &after)
    }

    #[test]
    fn kube_proxy_no_endpoints_names_the_service_and_sends_to_its_endpoints() {
        let finding = kube_proxy_finding();
        let Evidence::Netfilter(nf) = &finding.evidence else { panic!("netfilter evidence") };
        let owner = nf.owner.as_ref().expect("an owner");
        assert_eq!((owner.manager, owner.service.as_deref()), (Manager::KubeProxy, Some("kube-system/kube-dns:dns")));
        assert!(
            finding.headline.ends_with(": Service kube-system/kube-dns:dns has no ready endpoints"),
            "{}",
            finding.headline
        );
        for words in [
            "Service kube-system/kube-dns:dns has no ready endpoints: its pods are down, not ready, or its selector matches none",
            "kube-proxy rewrites this chain on every sync: any edit here is undone",
            "CoreDNS is down or not ready",
        ] {
            assert!(finding.explanation.contains(words), "{words:?} in {}", finding.explanation);
        }
        assert_eq!(
            finding.fix,
            [
                "kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns -o wide    # its endpoints: none is ready now",
                "kubectl -n kube-system get service kube-dns -o jsonpath='{.spec.selector}'    # the labels its pods must carry",
                "kubectl -n kube-system get pods -l <selector> -o wide    # <selector>: the labels printed above as key=value,key=value; are those pods running and ready?",
                "kubectl -n kube-system get pods -l k8s-app=kube-dns -o wide    # the CoreDNS pods behind kube-dns: running and ready?",
                "kubectl -n kube-system describe deployment coredns    # its replicas, readiness and recent events",
            ]
        );
    }

    #[test]
    fn kube_proxy_nftables_reject_chain_is_the_no_endpoints_advice_too() {
        let ruleset = |packets: u64| {
            let json = format!(
                r#"{{"nftables": [
                {{"table": {{"family": "ip", "name": "kube-proxy", "handle": 1}}}},
                {{"chain": {{"family": "ip", "table": "kube-proxy", "name": "filter-forward", "handle": 2, "type": "filter", "hook": "forward", "prio": -110, "policy": "accept"}}}},
                {{"chain": {{"family": "ip", "table": "kube-proxy", "name": "reject-chain", "handle": 3}}}},
                {{"rule": {{"family": "ip", "table": "kube-proxy", "chain": "filter-forward", "handle": 4, "expr": [{{"goto": {{"target": "reject-chain"}}}}]}}}},
                {{"rule": {{"family": "ip", "table": "kube-proxy", "chain": "reject-chain", "handle": 5, "expr": [{{"counter": {{"packets": {packets}, "bytes": 0}}}}, {{"reject": null}}]}}}}
                ]}}"#
            );
            Snapshot { chains: parse_nft_json(&json).expect("nft json"), errors: Vec::new() }
        };
        let finding = judge_drop(&dns_query(PORT_UNREACHABLE), 0, &ruleset(0), &ruleset(1));
        let Evidence::Netfilter(nf) = &finding.evidence else { panic!("netfilter evidence") };
        assert_eq!(nf.culprit.chain.as_deref(), Some("reject-chain"), "{}", nf.attribution);
        assert_eq!(nf.owner.as_ref().map(|o| o.manager), Some(Manager::KubeProxy));
        // The element that chose reject-chain is not known here: the Service is found by its address.
        assert_eq!(
            finding.fix.first().map(String::as_str),
            Some("kubectl get services -A -o wide | grep -w 10.96.0.10    # the Service at this address")
        );
        assert!(finding.fix.iter().all(|f| f.starts_with("kubectl ")), "{:?}", finding.fix);
        assert!(finding.headline.ends_with(": the Service has no ready endpoints"), "{}", finding.headline);
    }

    fn rule_of(save: &str) -> Rule {
        let chains = parse_iptables_save(save, Backend::IptablesNft, Family::Ipv4);
        let rules: Vec<Rule> = chains.into_iter().flat_map(|c| c.rules).collect();
        let [rule] = rules.as_slice() else { panic!("one rule expected: {rules:#?}") };
        rule.clone()
    }

    /// The advice for a rule, as a dropped DNS query to 10.96.0.10 gets it.
    fn advice_for(rule: &Rule) -> Option<Advice> {
        owned_advice(Blocker::Rule(rule), None, &[], &Blocked::packet(&dns_query(None))).1
    }

    #[test]
    fn other_kube_proxy_rules_send_to_the_service_spec() {
        let local = rule_of(
            "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n\
             -A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"ingress/nginx:http has no local endpoints\" -m tcp --dport 30080 -j DROP\nCOMMIT\n",
        );
        let advice = advice_for(&local).expect("managed");
        assert_eq!(
            advice.cause.as_deref(),
            Some("Service ingress/nginx:http has no endpoint on this node (traffic policy Local)")
        );
        assert!(advice.fix[0].starts_with("kubectl -n ingress get service nginx -o jsonpath='{.spec.internalTrafficPolicy} {.spec.externalTrafficPolicy}'"));

        let plain =
            rule_of("*filter\n:KUBE-FORWARD - [0:0]\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n");
        let advice = advice_for(&plain).expect("managed");
        assert_eq!(advice.cause, None);
        assert!(advice.why.contains("Change the Service or its endpoints, not the chain"), "{}", advice.why);
        assert!(advice.fix.iter().all(|f| f.starts_with("kubectl ")), "{:?}", advice.fix);
    }

    #[test]
    fn network_policy_engines_send_to_the_policy_that_must_allow_dns() {
        let calico = rule_of(
            "*filter\n:cali-po-default/knp.default.deny-egress - [0:0]\n\
             -A cali-po-default/knp.default.deny-egress -m comment --comment \"cali:M4Und37HGrw6jUk8\" -j DROP\nCOMMIT\n",
        );
        let advice = advice_for(&calico).expect("managed");
        assert_eq!(advice.cause.as_deref(), Some("Calico network policy default/deny-egress"));
        assert!(advice.why.contains(
            "egress to the kube-dns pods (namespace kube-system, label k8s-app=kube-dns) on port 53, UDP and TCP"
        ));
        assert!(advice.why.contains("any edit here is undone"));
        assert_eq!(
            advice.fix,
            [
                "kubectl get networkpolicy -A    # the policies; those selecting the pods at either end decide",
                "kubectl -n default describe networkpolicy deny-egress    # what it allows",
                "calicoctl get networkpolicy --all-namespaces -o wide    # Calico's own policies, which kubectl does not list",
                "calicoctl get globalnetworkpolicy -o wide    # and its cluster-wide ones",
            ]
        );

        let kube_router = rule_of(
            "*filter\n:KUBE-POD-FW-XIOATVM5TOINSO4V - [0:0]\n\
             -A KUBE-POD-FW-XIOATVM5TOINSO4V -m comment --comment \"rule to REJECT traffic destined for POD name:coredns-1 namespace: kube-system\" -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n",
        );
        let advice = advice_for(&kube_router).expect("managed");
        assert!(advice.why.contains("names pod kube-system/coredns-1"), "{}", advice.why);
        assert_eq!(advice.fix.len(), 1, "no policy named: {:?}", advice.fix);

        let cilium = rule_of("*filter\n:CILIUM_FORWARD - [0:0]\n-A CILIUM_FORWARD -j DROP\nCOMMIT\n");
        let advice = advice_for(&cilium).expect("managed");
        assert!(advice.fix.iter().any(|f| f.contains("cilium-dbg monitor --type drop")), "{:?}", advice.fix);
    }

    #[test]
    fn firewalld_is_changed_through_its_zone_and_reloaded() {
        let json = r#"{"nftables": [
            {"table": {"family": "inet", "name": "firewalld", "handle": 1}},
            {"chain": {"family": "inet", "table": "firewalld", "name": "filter_IN_public", "handle": 2}},
            {"rule": {"family": "inet", "table": "firewalld", "chain": "filter_IN_public", "handle": 3, "expr": [{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}}
            ]}"#;
        let chains = parse_nft_json(json).expect("nft json");
        let rule = chains.iter().flat_map(|c| &c.rules).next().expect("a rule").clone();
        let advice = advice_for(&rule).expect("managed");
        assert_eq!(advice.cause.as_deref(), Some("firewalld zone public"));
        assert_eq!(
            advice.fix,
            [
                "firewall-cmd --get-active-zones    # which zone each interface and source is in",
                "firewall-cmd --zone=public --list-all    # what it allows now",
                "firewall-cmd --permanent --zone=public --add-service=dns    # allow DNS (port 53, UDP and TCP)",
                "firewall-cmd --permanent --zone=trusted --add-interface=cni0    # or, for traffic the node forwards between pods: trust the pod network's interface",
                "firewall-cmd --reload    # apply the permanent configuration",
            ]
        );
        assert!(advice.why.contains("lost at the next reload"), "{}", advice.why);
        assert!(advice.fix.iter().all(|f| !f.starts_with("nft ")), "never an edit of firewalld's table");
    }

    #[test]
    fn docker_rules_are_mended_in_docker_user() {
        let isolation = rule_of(
            "*filter\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP\nCOMMIT\n",
        );
        let advice = advice_for(&isolation).expect("managed");
        assert_eq!(
            advice.fix,
            [
                "iptables-nft -L DOCKER-USER -v -n --line-numbers    # the administrators' rules, which FORWARD consults first",
                "iptables-nft -I DOCKER-USER -p udp -d 10.96.0.10 --dport 53 -j ACCEPT    # let this traffic through, ahead of Docker's rules",
            ]
        );
        assert!(advice.why.contains("DOCKER-ISOLATION-* is undone"), "{}", advice.why);

        let users = rule_of("*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -p udp -m udp --dport 53 -j DROP\nCOMMIT\n");
        let advice = advice_for(&users).expect("managed");
        assert!(
            advice.fix.iter().any(|f| f.starts_with("iptables-nft -t filter -D DOCKER-USER -p udp")),
            "{:?}",
            advice.fix
        );
    }

    #[test]
    fn flannel_and_node_local_dns_send_to_their_configuration() {
        let flannel = rule_of("*filter\n:FLANNEL-FWD - [0:0]\n-A FLANNEL-FWD -j DROP\nCOMMIT\n");
        let advice = advice_for(&flannel).expect("managed");
        assert!(advice.fix[0].starts_with("kubectl get configmap -A -l app=flannel"), "{:?}", advice.fix);
        let node_local = rule_of("*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -j NOTRACK\nCOMMIT\n");
        let advice = advice_for(&node_local).expect("managed");
        assert!(advice.why.contains("any edit here is undone"), "{}", advice.why);
        assert!(advice.fix[0].contains("k8s-app=node-local-dns"), "{:?}", advice.fix);
    }

    #[test]
    fn a_rule_nobody_is_known_to_own_keeps_the_edit_and_says_it_may_not_stay() {
        let rule = |packets: u64| {
            iptables(&format!(
                "*filter\n:FORWARD ACCEPT [0:0]\n[{packets}:0] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n"
            ))
        };
        let finding = judge_drop(&dns_query(PORT_UNREACHABLE), 0, &rule(0), &rule(1));
        let Evidence::Netfilter(nf) = &finding.evidence else { panic!("netfilter evidence") };
        assert_eq!(nf.owner.as_ref().map(|o| o.manager), Some(Manager::Unknown));
        assert!(finding.explanation.ends_with(UNMANAGED), "{}", finding.explanation);
        assert!(
            finding.fix.iter().any(|f| f.starts_with("iptables-nft -t filter -D FORWARD -p udp -m udp --dport 53")),
            "{:?}",
            finding.fix
        );
    }
}
