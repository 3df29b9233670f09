//! Who owns a rule or a chain, read from the ruleset alone: the table and chain names and
//! the comments each manager writes. On a Kubernetes node most REJECT and DROP rules are a
//! manager's, and the manager rewrites them, so advice has to change what the manager reads
//! (a Service, a policy, a zone) rather than the rule; this is what such advice rests on.
//!
//! The conventions, as the managers' own sources write them:
//! - kube-proxy, iptables and IPVS modes (kubernetes `pkg/proxy/iptables`, `pkg/proxy/ipvs`):
//!   chains `KUBE-SERVICES`, `KUBE-SVC-*`, `KUBE-IPVS-FILTER` ..., ipsets `KUBE-*`; comments
//!   lead with the Service port (`ns/name:port has no endpoints`, `ns/name:port cluster IP`).
//! - kube-proxy, nftables mode (`pkg/proxy/nftables`): tables `ip kube-proxy`/`ip6 kube-proxy`;
//!   per-Service chains `service-HASH-ns/name/proto/portname` (also `local-`, `external-`,
//!   `firewall-`, `endpoint-...__ip/port`); `reject-chain` is reached only from the
//!   `no-endpoint-services` / `no-endpoint-nodeports` verdict maps, whose elements carry the
//!   Service port as their comment.
//! - Calico (`felix/rules`): chains `cali-*`, policy chains `cali-pi-ID` / `cali-po-ID` (ID
//!   hashed to `_...` when too long), endpoint chains `cali-tw-IFACE` / `cali-fw-IFACE`,
//!   comments `cali:HASH`; nftables mode in table `calico`.
//! - kube-router (`pkg/controllers/netpol`): chains `KUBE-ROUTER-*`, `KUBE-NWPLCY-*`,
//!   `KUBE-POD-FW-*`; comments `... selected by policy name[:] NAME namespace NS`, newer
//!   `NS/NAME kind`, and `rule to REJECT traffic destined for POD name:X namespace: NS`.
//! - Cilium: chains `CILIUM_*` (`OLD_CILIUM_*` while it upgrades), comments `cilium:` and
//!   `cilium-feeder:`. Flannel: chains `FLANNEL-*`.
//! - firewalld (`src/firewall/core`): table `inet firewalld`, chains `filter_IN_ZONE`,
//!   `filter_FWD_ZONE`, their `_pre`/`_log`/`_deny`/`_allow`/`_post` parts and
//!   `..._policy_NAME` for policies; iptables backend the same names without `filter_`, and
//!   `INPUT_direct` and the like.
//! - Docker: `DOCKER`, `DOCKER-USER`, `DOCKER-ISOLATION-STAGE-1/2`, `DOCKER-FORWARD`, ...;
//!   Docker also sets FORWARD's policy to DROP.
//! - NodeLocal DNSCache (kubernetes/dns `cmd/node-cache`): no comments, only the shape of its
//!   rules: NOTRACK in raw and ACCEPT in filter for port 53 of its addresses (169.254.20.10,
//!   and the kube-dns address when it takes that over).

use std::net::{IpAddr, Ipv4Addr};

use super::model::{Chain, Condition, Rule, Verdict};
use crate::model::firewall::{Manager, MapElement, Owner};

/// What a manager wrote a rule for, where its names or comments say so: the cause a
/// finding names instead of the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// kube-proxy rejects traffic to a Service that has no ready endpoint anywhere.
    NoEndpoints,
    /// kube-proxy drops traffic to a Service whose traffic policy is Local on a node that
    /// has none of its endpoints.
    NoLocalEndpoints,
    /// kube-proxy drops load-balancer traffic from sources outside the Service's
    /// `loadBalancerSourceRanges`.
    SourceRanges,
    /// The ruleset does not say.
    Unstated,
}

/// Who owns a rule (or chain), what the rule is for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reading {
    owner: Owner,
    purpose: Purpose,
}

impl Reading {
    fn new(manager: Manager, evidence: String) -> Reading {
        Reading {
            owner: Owner { manager, service: None, policy: None, zone: None, evidence },
            purpose: Purpose::Unstated,
        }
    }
}

/// Where a reader looks: a rule, or a chain whose policy is in question (no comment, no
/// matches).
struct Place<'a> {
    table: &'a str,
    chain: &'a str,
    comment: Option<&'a str>,
    rule: Option<&'a Rule>,
}

impl Place<'_> {
    /// The rule as iptables-save or nft prints it, empty for a chain.
    fn text(&self) -> &str {
        self.rule.map(|rule| rule.text.as_str()).unwrap_or("")
    }

    /// `chain C` or `chain C and its comment "..."`: the evidence most readers give.
    fn named_by(&self) -> String {
        match self.comment {
            Some(comment) => format!("chain {} and its comment \"{comment}\"", self.chain),
            None => format!("chain {}", self.chain),
        }
    }
}

/// Who owns `rule`, from its table, chain and comment.
pub(crate) fn owner_of(rule: &Rule) -> Owner {
    read_rule(rule, None).owner
}

/// Who owns `rule` when `element` of a set or verdict map chose its verdict: kube-proxy's
/// `reject-chain` names no Service, the element that sent the packet there does.
pub(crate) fn owner_of_element(rule: &Rule, element: &MapElement) -> Owner {
    read_rule(rule, Some(element)).owner
}

/// What `rule` (with the map element that chose its verdict, when one did) is for.
pub(crate) fn purpose_of(rule: &Rule, element: Option<&MapElement>) -> Purpose {
    read_rule(rule, element).purpose
}

/// Who owns `chain`, for a packet its policy dropped.
pub(crate) fn owner_of_chain(chain: &Chain) -> Owner {
    if let Some(reading) = docker_forward_policy(chain) {
        return reading.owner;
    }
    let place = Place { table: &chain.table, chain: &chain.name, comment: None, rule: None };
    read(&place, None).owner
}

/// The NetworkPolicy a rule the packet passed on its way to `stopped` (the rule that dropped
/// it, in a pod's chain) sends it through: a policy engine's drop sits in the pod's chain
/// after the policies let the packet through unmarked, so the policies show on the way. Calico
/// jumps to `cali-po-ID`/`cali-pi-ID`; kube-router comments its jump `run through nw policy
/// NAME`, in the namespace of the pod its chain is for (a NetworkPolicy selects pods of its own).
pub(crate) fn policy_passed(passed: &Rule, stopped: &Rule) -> Option<String> {
    if let Verdict::Jump(target) | Verdict::Goto(target) = &passed.verdict {
        if let Some((id, _)) = calico_policy_chain(target) {
            return calico_policy(id);
        }
    }
    let name = passed.comment.as_deref()?.strip_prefix("run through nw policy ")?.split_whitespace().next()?;
    let pod = kube_router_pod(stopped.comment.as_deref()?)?;
    let (namespace, _) = pod.split_once('/')?;
    Some(format!("{namespace}/{name}"))
}

fn read_rule(rule: &Rule, element: Option<&MapElement>) -> Reading {
    let place = Place { table: &rule.table, chain: &rule.chain, comment: rule.comment.as_deref(), rule: Some(rule) };
    read(&place, element)
}

/// The first manager whose conventions `place` follows. Table-wide conventions (nftables)
/// come first, then chain names and comments from the most to the least specific: kube-router
/// before kube-proxy (both use `KUBE-`), firewalld's iptables chain names late (their
/// prefixes are short), NodeLocal DNSCache last (only a rule's shape tells).
fn read(place: &Place, element: Option<&MapElement>) -> Reading {
    kube_proxy_nft(place, element)
        .or_else(|| calico(place))
        .or_else(|| kube_router(place))
        .or_else(|| cilium(place))
        .or_else(|| flannel(place))
        .or_else(|| docker(place))
        .or_else(|| kube_proxy_iptables(place))
        .or_else(|| firewalld(place))
        .or_else(|| node_local_dns(place))
        .unwrap_or_else(|| Reading::new(Manager::Unknown, "no manager's table, chain or comment".to_string()))
}

/// `(family, name)` of an nftables table as rules name it (`ip kube-proxy`); `None` for an
/// iptables table (`filter`).
fn nft_table(table: &str) -> Option<(&str, &str)> {
    let (family, name) = table.split_once(' ')?;
    matches!(family, "ip" | "ip6" | "inet" | "arp" | "bridge" | "netdev").then_some((family, name))
}

// ---------------------------------------------------------------------------------------
// kube-proxy
// ---------------------------------------------------------------------------------------

/// kube-proxy's iptables and IPVS chains; the per-Service ones by prefix below.
const KUBE_PROXY_CHAINS: [&str; 17] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    "KUBE-FIREWALL",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-PROXY-CANARY",
    // IPVS mode.
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-NODE-PORT-LOCAL",
];

const KUBE_PROXY_CHAIN_PREFIXES: [&str; 6] =
    ["KUBE-SVC-", "KUBE-SEP-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SVL-", "KUBE-XLB-"];

/// kube-proxy's nftables per-Service chains, before their `HASH-ns/name/proto/port` base.
const KUBE_PROXY_NFT_SERVICE_PREFIXES: [&str; 5] = ["service-", "local-", "external-", "endpoint-", "firewall-"];

fn kube_proxy_iptables(place: &Place) -> Option<Reading> {
    let chain = place.chain;
    let kube_chain =
        KUBE_PROXY_CHAINS.contains(&chain) || KUBE_PROXY_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p));
    let comment_purpose = place.comment.map(comment_purpose).unwrap_or(Purpose::Unstated);
    let ipset = kube_ipset(place.text());
    if !kube_chain && comment_purpose == Purpose::Unstated && ipset.is_none() {
        return None;
    }
    let evidence = match ipset {
        Some(set) if !kube_chain => format!("its match on ipset {set} (kube-proxy's IPVS mode)"),
        _ => place.named_by(),
    };
    let mut reading = Reading::new(Manager::KubeProxy, evidence);
    reading.owner.service = place.comment.and_then(service_in_comment);
    reading.purpose = comment_purpose;
    Some(reading)
}

/// What a kube-proxy comment says the rule is for.
fn comment_purpose(comment: &str) -> Purpose {
    if service_in_comment(comment).is_none() {
        Purpose::Unstated
    } else if comment.ends_with(" has no endpoints") {
        Purpose::NoEndpoints
    } else if comment.ends_with(" has no local endpoints") {
        Purpose::NoLocalEndpoints
    } else if comment.contains(" traffic not accepted by ") {
        Purpose::SourceRanges
    } else {
        Purpose::Unstated
    }
}

/// The ipset of kube-proxy's IPVS mode a rule matches on (`-m set --match-set KUBE-CLUSTER-IP dst,dst`).
fn kube_ipset(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    words.find(|word| *word == "--match-set")?;
    words.next().filter(|set| set.starts_with("KUBE-"))
}

fn kube_proxy_nft(place: &Place, element: Option<&MapElement>) -> Option<Reading> {
    let (family, name) = nft_table(place.table)?;
    if name != "kube-proxy" || !matches!(family, "ip" | "ip6") {
        return None;
    }
    let chain = place.chain;
    let mut reading = Reading::new(Manager::KubeProxy, format!("table {}, chain {chain}", place.table));
    reading.owner.service = nft_chain_service(chain);
    if chain == "reject-chain" {
        // kube-proxy sends only packets to Services without endpoints here.
        reading.purpose = Purpose::NoEndpoints;
        reading.owner.evidence =
            format!("table {}, chain reject-chain (reached from its no-endpoint maps only)", place.table);
    } else if chain.starts_with("firewall-") && reading.owner.service.is_some() {
        reading.purpose = Purpose::SourceRanges;
    }
    if let Some(element) = element {
        read_kube_proxy_element(&mut reading, place.table, element);
    }
    Some(reading)
}

/// What the map element that chose the verdict says: the Service (its comment, or the
/// Service chain it jumps to) and, from the map it is in, what it is for.
fn read_kube_proxy_element(reading: &mut Reading, table: &str, element: &MapElement) {
    let map = element.map.trim_start_matches('@');
    let verdict = element.verdict.as_deref().unwrap_or("");
    let service = element
        .comment
        .as_deref()
        .and_then(service_in_comment)
        .or_else(|| verdict.split_whitespace().nth(1).and_then(nft_chain_service));
    if service.is_some() {
        reading.owner.service = service;
    }
    match map {
        "no-endpoint-services" | "no-endpoint-nodeports" if verdict == "drop" => {
            reading.purpose = Purpose::NoLocalEndpoints
        }
        "no-endpoint-services" | "no-endpoint-nodeports" => reading.purpose = Purpose::NoEndpoints,
        "firewall-ips" => reading.purpose = Purpose::SourceRanges,
        _ => {}
    }
    let comment = element.comment.as_deref().map(|c| format!(" commented \"{c}\"")).unwrap_or_default();
    reading.owner.evidence = format!("table {table}, element {} of map {map}{comment}", element.key);
}

/// `ns/name:port` of a kube-proxy nftables per-Service chain
/// (`service-ULMVA6XW-ns1/svc1/tcp/p80`, `endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80`).
fn nft_chain_service(chain: &str) -> Option<String> {
    let rest = KUBE_PROXY_NFT_SERVICE_PREFIXES.iter().find_map(|prefix| chain.strip_prefix(prefix))?;
    let (hash, base) = rest.split_once('-')?;
    if hash.len() != 8 {
        return None;
    }
    let base = base.split("__").next().unwrap_or(base);
    let mut parts = base.split('/');
    let (namespace, name, _protocol, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    service_port_name(namespace, name, port)
}

/// The Service port a kube-proxy comment is about: its first word shaped `ns/name:port`
/// (or `ns/name` for an unnamed port).
fn service_in_comment(comment: &str) -> Option<String> {
    comment.split_whitespace().find_map(|word| {
        let (namespace, rest) = word.split_once('/')?;
        let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
        service_port_name(namespace, name, port)
    })
}

/// `ns/name:port`, as kube-proxy names a Service port, when each part is a valid
/// Kubernetes name: namespaces and port names are DNS labels, Service names too (a dot
/// is let through for older names), so an address such as `10.0.0.0/8` is never taken.
fn service_port_name(namespace: &str, name: &str, port: &str) -> Option<String> {
    let label = |text: &str, dots: bool| {
        !text.is_empty()
            && text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
    };
    if !label(namespace, false) || !label(name, true) || !(port.is_empty() || label(port, false)) {
        return None;
    }
    Some(if port.is_empty() { format!("{namespace}/{name}") } else { format!("{namespace}/{name}:{port}") })
}

// ---------------------------------------------------------------------------------------
// NetworkPolicy engines and CNI plugins
// ---------------------------------------------------------------------------------------

fn calico(place: &Place) -> Option<Reading> {
    let nft_calico = nft_table(place.table).is_some_and(|(_, name)| name == "calico");
    // Calico's nftables chains carry the table kind they replace (`filter-cali-pi-...`).
    let chain = ["filter-", "raw-", "mangle-", "nat-"]
        .iter()
        .find_map(|prefix| place.chain.strip_prefix(prefix))
        .filter(|_| nft_calico)
        .unwrap_or(place.chain);
    let calico_chain = chain.starts_with("cali-");
    let calico_comment = place.comment.is_some_and(|c| c.starts_with("cali:"));
    if !(nft_calico || calico_chain || calico_comment) {
        return None;
    }
    let no_policy_passed = place.text().contains("Drop if no policies passed packet");
    let mut reading = Reading::new(Manager::Calico, String::new());
    reading.owner.evidence = if let Some((id, direction)) = calico_policy_chain(chain) {
        reading.owner.policy = calico_policy(id);
        match reading.owner.policy {
            Some(_) => format!("Calico policy chain {chain} ({direction})"),
            None => format!("Calico policy chain {chain} ({direction}; the policy's name is hashed)"),
        }
    } else if let Some(iface) = chain.strip_prefix("cali-tw-") {
        format!("Calico chain {chain}: the ingress policies of the pod on {iface}")
    } else if let Some(iface) = chain.strip_prefix("cali-fw-") {
        format!("Calico chain {chain}: the egress policies of the pod on {iface}")
    } else if calico_chain {
        format!("Calico chain {chain}")
    } else if nft_calico {
        format!("table {}", place.table)
    } else {
        format!("Calico's rule comment \"{}\" in chain {chain}", place.comment.unwrap_or(""))
    };
    if no_policy_passed {
        reading.owner.evidence.push_str(", where no policy allowed the packet");
    }
    Some(reading)
}

/// The policy ID and direction of a Calico policy chain (`cali-pi-ID`, `cali-po-ID`).
fn calico_policy_chain(chain: &str) -> Option<(&str, &'static str)> {
    if let Some(id) = chain.strip_prefix("cali-pi-") {
        Some((id, "inbound"))
    } else {
        chain.strip_prefix("cali-po-").map(|id| (id, "outbound"))
    }
}

/// The policy a Calico policy ID names; `None` when Calico hashed it (`_...`: the name was
/// too long for a chain). A Kubernetes NetworkPolicy appears as `ns/knp.default.NAME` (before
/// Calico 3.32) or `knp/ns/NAME`.
fn calico_policy(id: &str) -> Option<String> {
    if id.is_empty() || id.starts_with('_') {
        return None;
    }
    // Calico 3.32 names a Kubernetes NetworkPolicy's chain `knp/NS/NAME`.
    if let Some(kubernetes) = id.strip_prefix("knp/").filter(|rest| rest.contains('/')) {
        return Some(kubernetes.to_string());
    }
    Some(match id.split_once('/') {
        Some((namespace, name)) => match name.strip_prefix("knp.default.") {
            Some(kubernetes_name) => format!("{namespace}/{kubernetes_name}"),
            None => id.to_string(),
        },
        None => id.to_string(),
    })
}

fn kube_router(place: &Place) -> Option<Reading> {
    let chain = place.chain;
    let kube_router_chain = ["KUBE-ROUTER-", "KUBE-NWPLCY-", "KUBE-POD-FW-"].iter().any(|p| chain.starts_with(p));
    let comment = place.comment.unwrap_or("");
    let policy = kube_router_policy(comment).or_else(|| {
        // Newer kube-router leads every comment with `ns/name`: the policy's in its policy
        // chains, the pod's in its pod chains.
        chain.starts_with("KUBE-NWPLCY-").then(|| leading_name(comment)).flatten()
    });
    if !kube_router_chain && policy.is_none() && !comment.starts_with("kube-router netpol") {
        return None;
    }
    let mut reading = Reading::new(Manager::KubeRouter, place.named_by());
    if let Some(pod) =
        kube_router_pod(comment).or_else(|| chain.starts_with("KUBE-POD-FW-").then(|| leading_name(comment)).flatten())
    {
        reading.owner.evidence = format!("chain {chain}, whose comment names pod {pod}");
    }
    reading.owner.policy = policy;
    Some(reading)
}

/// `ns/name` from kube-router's `... selected by policy name[:] NAME namespace NS`.
fn kube_router_policy(comment: &str) -> Option<String> {
    let words: Vec<&str> = comment.split_whitespace().collect();
    let at = words.windows(2).position(|pair| pair[0] == "policy" && matches!(pair[1], "name" | "name:"))?;
    let name = words.get(at + 2)?;
    let namespace = words.get(at + 4).filter(|_| words.get(at + 3) == Some(&"namespace"))?;
    Some(format!("{namespace}/{name}"))
}

/// `ns/name` of the pod from kube-router's `... destined for POD name:X namespace: NS`.
fn kube_router_pod(comment: &str) -> Option<String> {
    let after = |key: &str| -> Option<&str> {
        let (_, rest) = comment.split_once(key)?;
        rest.split_whitespace().next()
    };
    comment.contains("POD name:").then_some(())?;
    Some(format!("{}/{}", after("namespace:")?, after("name:")?))
}

/// The `ns/name` a comment starts with, as newer kube-router writes them.
fn leading_name(comment: &str) -> Option<String> {
    let first = comment.split_whitespace().next()?;
    let (namespace, name) = first.split_once('/')?;
    service_port_name(namespace, name, "")
}

fn cilium(place: &Place) -> Option<Reading> {
    let chain = place.chain;
    let cilium_chain = ["CILIUM_", "OLD_CILIUM_", "CILIUM-"].iter().any(|p| chain.starts_with(p));
    let cilium_comment = place.comment.is_some_and(|c| c.starts_with("cilium:") || c.starts_with("cilium-feeder:"));
    (cilium_chain || cilium_comment).then(|| Reading::new(Manager::Cilium, place.named_by()))
}

fn flannel(place: &Place) -> Option<Reading> {
    place.chain.starts_with("FLANNEL-").then(|| Reading::new(Manager::Flannel, place.named_by()))
}

/// Docker's chains; `DOCKER-ISOLATION-STAGE-1/2` by their prefix.
const DOCKER_CHAINS: [&str; 7] =
    ["DOCKER", "DOCKER-USER", "DOCKER-FORWARD", "DOCKER-BRIDGE", "DOCKER-CT", "DOCKER-INGRESS", "DOCKER-INTERNAL"];

fn is_docker_chain(chain: &str) -> bool {
    DOCKER_CHAINS.contains(&chain) || chain.starts_with("DOCKER-ISOLATION-")
}

fn docker(place: &Place) -> Option<Reading> {
    if !is_docker_chain(place.chain) {
        return None;
    }
    let evidence = if place.chain == "DOCKER-USER" {
        "chain DOCKER-USER, which Docker creates and leaves to administrators".to_string()
    } else {
        place.named_by()
    };
    Some(Reading::new(Manager::Docker, evidence))
}

/// Docker sets FORWARD's policy to DROP when it starts; a FORWARD that jumps to Docker's
/// chains and drops what they leave is that.
fn docker_forward_policy(chain: &Chain) -> Option<Reading> {
    let jumps_to_docker = chain
        .rules
        .iter()
        .any(|rule| matches!(&rule.verdict, Verdict::Jump(target) | Verdict::Goto(target) if is_docker_chain(target)));
    (nft_table(&chain.table).is_none()
        && chain.name == "FORWARD"
        && chain.policy == Some(Verdict::Drop)
        && jumps_to_docker)
        .then(|| {
            Reading::new(
                Manager::Docker,
                "FORWARD jumps to Docker's chains, and Docker sets FORWARD's policy to DROP".to_string(),
            )
        })
}

// ---------------------------------------------------------------------------------------
// firewalld
// ---------------------------------------------------------------------------------------

/// firewalld's fixed iptables chains (its iptables backend); zone chains are read by name.
const FIREWALLD_IPTABLES_CHAINS: [&str; 11] = [
    "INPUT_direct",
    "FORWARD_direct",
    "OUTPUT_direct",
    "PREROUTING_direct",
    "POSTROUTING_direct",
    "INPUT_ZONES",
    "FORWARD_IN_ZONES",
    "FORWARD_OUT_ZONES",
    "PREROUTING_ZONES",
    "POSTROUTING_ZONES",
    "OUTPUT_POLICIES",
];

/// A zone's (or policy's) chain, as firewalld names it: `IN_public`, `FWD_public_deny`,
/// `IN_policy_allow-host-ipv6`.
enum FirewalldSection<'a> {
    Zone(&'a str),
    Policy(&'a str),
}

fn firewalld_section(chain: &str) -> Option<FirewalldSection<'_>> {
    let rest = ["IN_", "FWDI_", "FWDO_", "FWD_", "OUT_", "PRE_", "POST_"].iter().find_map(|p| chain.strip_prefix(p))?;
    // firewalld 2.5 dispatches in stages: `IN_public_to_HOST` is the public zone's input to the host.
    let rest = rest.strip_suffix("_to_HOST").unwrap_or(rest);
    let base = ["_pre", "_log", "_deny", "_allow", "_post"].iter().find_map(|s| rest.strip_suffix(s)).unwrap_or(rest);
    match base.strip_prefix("policy_") {
        Some(policy) if !policy.is_empty() => Some(FirewalldSection::Policy(policy)),
        _ if !base.is_empty() => Some(FirewalldSection::Zone(base)),
        _ => None,
    }
}

fn firewalld(place: &Place) -> Option<Reading> {
    let section = match nft_table(place.table) {
        Some((_, name)) if name == "firewalld" || name.starts_with("firewalld_") => {
            let chain = ["filter_", "nat_", "mangle_", "raw_"]
                .iter()
                .find_map(|prefix| place.chain.strip_prefix(prefix))
                .unwrap_or(place.chain);
            firewalld_section(chain)
        }
        Some(_) => return None,
        None if FIREWALLD_IPTABLES_CHAINS.contains(&place.chain) => None,
        // The iptables backend's zone chains; only in filter, where firewalld rejects, as
        // the prefixes alone are too short to tell.
        None if place.table == "filter" => Some(firewalld_section(place.chain)?),
        None => return None,
    };
    let evidence = if nft_table(place.table).is_some() {
        format!("table {}, chain {}", place.table, place.chain)
    } else {
        format!("chain {}, named as firewalld's iptables backend names its chains", place.chain)
    };
    let mut reading = Reading::new(Manager::Firewalld, evidence);
    match section {
        Some(FirewalldSection::Zone(zone)) => reading.owner.zone = Some(zone.to_string()),
        Some(FirewalldSection::Policy(policy)) => reading.owner.policy = Some(policy.to_string()),
        None => {}
    }
    Some(reading)
}

// ---------------------------------------------------------------------------------------
// NodeLocal DNSCache
// ---------------------------------------------------------------------------------------

/// The link-local address NodeLocal DNSCache listens on by default.
const NODE_LOCAL_DNS_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));

fn node_local_dns(place: &Place) -> Option<Reading> {
    let rule = place.rule?;
    let dns_port = rule.matches.tests.iter().any(|test| {
        !test.negated
            && matches!(&test.condition, Condition::Dport(ranges) | Condition::Sport(ranges)
                if ranges.iter().any(|r| r.first <= 53 && 53 <= r.last))
    });
    let addresses: Vec<IpAddr> = rule
        .matches
        .tests
        .iter()
        .filter(|test| !test.negated)
        .filter_map(|test| match &test.condition {
            Condition::Dst(ranges) | Condition::Src(ranges) => Some(ranges),
            _ => None,
        })
        .flatten()
        .filter(|range| range.first == range.last)
        .map(|range| range.first)
        .collect();
    let notrack = matches!(&rule.verdict, Verdict::Other(target)
        if target == "NOTRACK" || target == "CT --notrack" || target == "notrack");
    let accept = rule.verdict == Verdict::Accept;
    if !dns_port || addresses.is_empty() {
        return None;
    }
    let evidence = if addresses.contains(&NODE_LOCAL_DNS_ADDRESS) && (notrack || accept) {
        format!("port 53 of {NODE_LOCAL_DNS_ADDRESS}, NodeLocal DNSCache's address, in chain {}", place.chain)
    } else if notrack && place.table == "raw" && addresses.len() == 1 {
        format!(
            "a NOTRACK for port 53 of {} in raw/{}, as NodeLocal DNSCache writes for the addresses it serves",
            addresses[0], place.chain
        )
    } else {
        return None;
    };
    Some(Reading::new(Manager::NodeLocalDns, evidence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{parse_iptables_save, parse_nft_json, Backend, Family};

    /// The rules of an iptables-save listing, every chain's in order.
    fn iptables_rules(save: &str) -> Vec<Rule> {
        parse_iptables_save(save, Backend::IptablesNft, Family::Ipv4).into_iter().flat_map(|c| c.rules).collect()
    }

    fn only_rule(save: &str) -> Rule {
        let rules = iptables_rules(save);
        let [rule] = rules.as_slice() else { panic!("one rule expected: {rules:#?}") };
        rule.clone()
    }

    fn chain_named(chains: Vec<Chain>, name: &str) -> Chain {
        chains.into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no chain {name}"))
    }

    /// A rule as nft JSON expressions, with its comment if it has one.
    type NftRule<'a> = (&'a str, Option<&'a str>);

    /// A native nftables ruleset of one table and its chains, each with its rules.
    fn nft_rules(family: &str, table: &str, chains: &[(&str, &[NftRule])]) -> Vec<Rule> {
        let mut items = vec![format!(r#"{{"table": {{"family": "{family}", "name": "{table}", "handle": 1}}}}"#)];
        let mut handle = 2;
        for (chain, rules) in chains {
            items.push(format!(
                r#"{{"chain": {{"family": "{family}", "table": "{table}", "name": "{chain}", "handle": {handle}}}}}"#
            ));
            for (expr, comment) in rules.iter() {
                handle += 1;
                let comment = comment.map(|c| format!(r#", "comment": "{c}""#)).unwrap_or_default();
                items.push(format!(
                    r#"{{"rule": {{"family": "{family}", "table": "{table}", "chain": "{chain}", "handle": {handle}, "expr": {expr}{comment}}}}}"#
                ));
            }
            handle += 1;
        }
        let json = format!(r#"{{"nftables": [{}]}}"#, items.join(","));
        // An inet table's chains come once per family; one is enough here.
        let chains = parse_nft_json(&json).expect("nft json");
        chains.into_iter().filter(|c| c.family == Family::Ipv4).flat_map(|c| c.rules).collect()
    }

    const REJECT: &str = r#"[{"reject": null}]"#;
    const DROP: &str = r#"[{"drop": null}]"#;

    fn element(map: &str, key: &str, verdict: &str, comment: Option<&str>) -> MapElement {
        MapElement {
            map: map.to_string(),
            key: key.to_string(),
            verdict: Some(verdict.to_string()),
            comment: comment.map(str::to_string),
        }
    }

    #[test]
    fn kube_proxy_iptables_names_the_service_and_why_it_rejects() {
        let rule = only_rule(
            "*filter\n:KUBE-SERVICES - [0:0]\n\
             [3:180] -A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n\
             COMMIT\n",
        );
        let owner = owner_of(&rule);
        assert_eq!(owner.manager, Manager::KubeProxy);
        assert_eq!(owner.service.as_deref(), Some("kube-system/kube-dns:dns"));
        assert!(owner.evidence.contains("KUBE-SERVICES"), "{}", owner.evidence);
        assert_eq!(purpose_of(&rule, None), Purpose::NoEndpoints);

        let rules = iptables_rules(
            "*filter\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n\
             -A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"ingress/nginx:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP\n\
             -A KUBE-PROXY-FIREWALL -d 203.0.113.7/32 -p tcp -m comment --comment \"web/front:https traffic not accepted by KUBE-FW-ABCDEFGHIJKLMNOP\" -m tcp --dport 443 -j DROP\n\
             COMMIT\n*nat\n:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]\n\
             -A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment \"default/web\" -j KUBE-SEP-AAAAAAAAAAAAAAAA\n\
             COMMIT\n",
        );
        let readings: Vec<(Option<String>, Purpose)> =
            rules.iter().map(|r| (owner_of(r).service, purpose_of(r, None))).collect();
        assert_eq!(
            readings,
            [
                (Some("ingress/nginx:http".into()), Purpose::NoLocalEndpoints),
                (Some("web/front:https".into()), Purpose::SourceRanges),
                (Some("default/web".into()), Purpose::Unstated),
            ]
        );
        assert!(rules.iter().all(|r| owner_of(r).manager == Manager::KubeProxy));
    }

    #[test]
    fn kube_proxy_ipvs_mode_is_known_by_its_chains_and_ipsets() {
        let rules = iptables_rules(
            "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-IPVS-FILTER - [0:0]\n\
             -A KUBE-IPVS-FILTER -m set --match-set KUBE-IPVS-IPS dst -m conntrack --ctstate NEW -j REJECT --reject-with icmp-port-unreachable\n\
             -A INPUT -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n\
             COMMIT\n",
        );
        let owners: Vec<Owner> = rules.iter().map(owner_of).collect();
        assert!(owners.iter().all(|o| o.manager == Manager::KubeProxy), "{owners:#?}");
        let input = rules.iter().position(|r| r.chain == "INPUT").expect("the INPUT rule");
        assert!(owners[input].evidence.contains("KUBE-CLUSTER-IP"), "{}", owners[input].evidence);
    }

    #[test]
    fn kube_proxy_nftables_names_the_service_from_the_element_that_chose_reject_chain() {
        let rules = nft_rules(
            "ip",
            "kube-proxy",
            &[
                ("reject-chain", &[(REJECT, None)]),
                ("firewall-HVFWP5L3-ns5/svc5/tcp/p80", &[(DROP, None)]),
                ("service-ULMVA6XW-ns1/svc1/tcp/p80", &[(r#"[{"jump": {"target": "mark-for-masquerade"}}]"#, None)]),
            ],
        );
        let [reject, firewall, service] = rules.as_slice() else { panic!("{rules:#?}") };

        let alone = owner_of(reject);
        assert_eq!((alone.manager, alone.service.as_deref()), (Manager::KubeProxy, None));
        assert_eq!(
            purpose_of(reject, None),
            Purpose::NoEndpoints,
            "reject-chain serves only Services without endpoints"
        );

        let chose = element(
            "@no-endpoint-services",
            "10.96.0.10 . udp . 53",
            "goto reject-chain",
            Some("kube-system/kube-dns:dns"),
        );
        let owner = owner_of_element(reject, &chose);
        assert_eq!(owner.service.as_deref(), Some("kube-system/kube-dns:dns"));
        assert!(owner.evidence.contains("no-endpoint-services"), "{}", owner.evidence);
        assert_eq!(purpose_of(reject, Some(&chose)), Purpose::NoEndpoints);
        let local_only = element("@no-endpoint-services", "10.96.0.11 . tcp . 80", "drop", Some("web/front:http"));
        assert_eq!(purpose_of(reject, Some(&local_only)), Purpose::NoLocalEndpoints);

        assert_eq!(owner_of(firewall).service.as_deref(), Some("ns5/svc5:p80"));
        assert_eq!(purpose_of(firewall, None), Purpose::SourceRanges);
        assert_eq!(owner_of(service).service.as_deref(), Some("ns1/svc1:p80"));
        let dispatched = element(
            "@service-ips",
            "10.96.0.1 . tcp . 443",
            "goto service-42NFTM6N-default/kubernetes/tcp/https",
            None,
        );
        assert_eq!(owner_of_element(reject, &dispatched).service.as_deref(), Some("default/kubernetes:https"));
    }

    #[test]
    fn service_names_are_only_taken_where_every_part_is_a_kubernetes_name() {
        assert_eq!(service_in_comment("ns/name:port has no endpoints").as_deref(), Some("ns/name:port"));
        assert_eq!(service_in_comment("masquerade traffic for a/b:c external destinations").as_deref(), Some("a/b:c"));
        assert_eq!(service_in_comment("default/nginx:").as_deref(), Some("default/nginx"));
        assert_eq!(service_in_comment("10.0.0.0/8 is private"), None);
        assert_eq!(service_in_comment("block incoming localnet connections"), None);
        assert_eq!(
            nft_chain_service("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").as_deref(),
            Some("ns1/svc1:p80")
        );
        assert_eq!(nft_chain_service("services"), None);
        assert_eq!(nft_chain_service("service-SHORT-a/b/tcp/p"), None);
    }

    #[test]
    fn calico_policy_chains_name_the_policy_unless_hashed() {
        let rules = iptables_rules(
            "*filter\n:cali-po-default/knp.default.deny-all - [0:0]\n:cali-pi-_tTE-E7yY40ogArNVgKt - [0:0]\n:cali-fw-cali95aa86cbb2a - [0:0]\n\
             -A cali-po-default/knp.default.deny-all -m comment --comment \"cali:M4Und37HGrw6jUk8\" -j DROP\n\
             -A cali-pi-_tTE-E7yY40ogArNVgKt -m comment --comment \"cali:3qMRSx5JyHXSv6AE\" -j DROP\n\
             -A cali-fw-cali95aa86cbb2a -m comment --comment \"cali:6kNf2_vqiCYkwInx\" -m comment --comment \"Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP\n\
             COMMIT\n",
        );
        let owners: Vec<Owner> = rules.iter().map(owner_of).collect();
        assert!(owners.iter().all(|o| o.manager == Manager::Calico), "{owners:#?}");
        assert_eq!(owners[0].policy.as_deref(), Some("default/deny-all"));
        assert_eq!(owners[1].policy, None);
        assert!(owners[1].evidence.contains("hashed"), "{}", owners[1].evidence);
        assert!(
            owners[2].evidence.contains("egress policies of the pod on cali95aa86cbb2a")
                && owners[2].evidence.contains("no policy allowed"),
            "{}",
            owners[2].evidence
        );
        let nft = nft_rules("ip", "calico", &[("filter-cali-pi-allow-dns", &[(DROP, None)])]);
        assert_eq!(owner_of(&nft[0]).policy.as_deref(), Some("allow-dns"));
    }

    #[test]
    fn kube_router_names_the_policy_or_the_pod_its_comment_names() {
        let rules = iptables_rules(
            "*filter\n:KUBE-NWPLCY-5VLCZNPWIAXAL2HB - [0:0]\n:KUBE-POD-FW-XIOATVM5TOINSO4V - [0:0]\n\
             -A KUBE-NWPLCY-5VLCZNPWIAXAL2HB -p tcp -m comment --comment \"rule to ACCEPT traffic from source pods to dest pods selected by policy name allow-web namespace shop\" -m tcp --dport 8082 -j MARK --set-xmark 0x10000/0x10000\n\
             -A KUBE-NWPLCY-5VLCZNPWIAXAL2HB -m comment --comment \"shop/deny-db egress pods\" -j RETURN\n\
             -A KUBE-POD-FW-XIOATVM5TOINSO4V -m comment --comment \"rule to REJECT traffic destined for POD name:coredns-7db6d8ff4d-x8f2k namespace: kube-system\" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable\n\
             COMMIT\n",
        );
        let owners: Vec<Owner> = rules.iter().map(owner_of).collect();
        assert!(owners.iter().all(|o| o.manager == Manager::KubeRouter), "{owners:#?}");
        assert_eq!(owners[0].policy.as_deref(), Some("shop/allow-web"));
        assert_eq!(owners[1].policy.as_deref(), Some("shop/deny-db"));
        assert_eq!(owners[2].policy, None);
        assert!(owners[2].evidence.contains("pod kube-system/coredns-7db6d8ff4d-x8f2k"), "{}", owners[2].evidence);
    }

    #[test]
    fn cilium_flannel_and_docker_are_known_by_their_chains() {
        let rules = iptables_rules(
            "*filter\n:CILIUM_FORWARD - [0:0]\n:FLANNEL-FWD - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n:FORWARD ACCEPT [0:0]\n\
             -A CILIUM_FORWARD -o cilium_host -m comment --comment \"cilium: any->cluster on cilium_host forward accept\" -j ACCEPT\n\
             -A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP\n\
             -A DOCKER-USER -p udp -m udp --dport 53 -j DROP\n\
             -A FORWARD -m comment --comment \"cilium-feeder: CILIUM_FORWARD\" -j CILIUM_FORWARD\n\
             COMMIT\n",
        );
        let managers: Vec<Manager> = rules.iter().map(|r| owner_of(r).manager).collect();
        assert_eq!(managers, [Manager::Cilium, Manager::Flannel, Manager::Docker, Manager::Docker, Manager::Cilium]);
        assert!(owner_of(&rules[3]).evidence.contains("leaves to administrators"));

        let chains = parse_iptables_save(
            "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n:DOCKER-FORWARD - [0:0]\n\
             -A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\nCOMMIT\n",
            Backend::IptablesNft,
            Family::Ipv4,
        );
        let forward = owner_of_chain(&chain_named(chains, "FORWARD"));
        assert_eq!(forward.manager, Manager::Docker, "{forward:?}");
        let plain = parse_iptables_save("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n", Backend::IptablesNft, Family::Ipv4);
        assert_eq!(owner_of_chain(&chain_named(plain, "FORWARD")).manager, Manager::Unknown);
    }

    #[test]
    fn firewalld_names_the_zone_or_policy_of_its_chains_on_both_backends() {
        let rules = nft_rules(
            "inet",
            "firewalld",
            &[
                ("filter_IN_public", &[(r#"[{"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]"#, None)]),
                ("filter_FWD_internal_deny", &[(DROP, None)]),
                ("filter_IN_policy_allow-host-ipv6", &[(DROP, None)]),
                ("filter_INPUT", &[(DROP, None)]),
                // firewalld 2.5's staged dispatch: the zone's input to the host.
                ("filter_IN_public_to_HOST", &[(DROP, None)]),
            ],
        );
        let owners: Vec<Owner> = rules.iter().map(owner_of).collect();
        assert!(owners.iter().all(|o| o.manager == Manager::Firewalld), "{owners:#?}");
        let places: Vec<(Option<&str>, Option<&str>)> =
            owners.iter().map(|o| (o.zone.as_deref(), o.policy.as_deref())).collect();
        assert_eq!(
            places,
            [
                (Some("public"), None),
                (Some("internal"), None),
                (None, Some("allow-host-ipv6")),
                (None, None),
                (Some("public"), None)
            ]
        );

        let iptables = iptables_rules(
            "*filter\n:IN_public - [0:0]\n:INPUT_direct - [0:0]\n\
             -A IN_public -j REJECT --reject-with icmp-host-prohibited\n\
             -A INPUT_direct -p udp -m udp --dport 53 -j DROP\n\
             COMMIT\n",
        );
        let zone = owner_of(&iptables[0]);
        assert_eq!((zone.manager, zone.zone.as_deref()), (Manager::Firewalld, Some("public")));
        assert_eq!(owner_of(&iptables[1]).manager, Manager::Firewalld);
    }

    #[test]
    fn the_policy_a_pod_chain_drop_enforces_is_read_from_the_way_there() {
        let calico = iptables_rules(
            "*filter\n:cali-fw-veth-client - [0:0]\n:cali-po-knp/default/deny-dns - [0:0]\n\
             -A cali-fw-veth-client -m comment --comment \"cali:Zpu2q7e0fS0SWFxk\" -j cali-po-knp/default/deny-dns\n\
             -A cali-fw-veth-client -m comment --comment \"cali:RYntH8nadAC8g8cr\" -m comment --comment \"End of tier default. Drop if no policies passed packet\" -m mark --mark 0x0/0x20000 -j DROP\n\
             COMMIT\n",
        );
        assert_eq!(policy_passed(&calico[0], &calico[1]).as_deref(), Some("default/deny-dns"));
        assert_eq!(policy_passed(&calico[1], &calico[1]), None, "a drop is no way through a policy");

        let kube_router = iptables_rules(
            "*filter\n:KUBE-POD-FW-SHZT46OVNO7XTJ6M - [0:0]\n:KUBE-NWPLCY-ABC - [0:0]\n\
             -A KUBE-POD-FW-SHZT46OVNO7XTJ6M -s 10.244.0.5/32 -m comment --comment \"run through nw policy deny-dns\" -j KUBE-NWPLCY-ABC\n\
             -A KUBE-POD-FW-SHZT46OVNO7XTJ6M -m comment --comment \"rule to REJECT traffic destined for POD name:client namespace: default\" -m mark ! --mark 0x10000/0x10000 -j REJECT --reject-with icmp-port-unreachable\n\
             COMMIT\n",
        );
        assert_eq!(policy_passed(&kube_router[0], &kube_router[1]).as_deref(), Some("default/deny-dns"));
        let unnamed_pod = iptables_rules("*filter\n:X - [0:0]\n-A X -j REJECT\nCOMMIT\n");
        assert_eq!(policy_passed(&kube_router[0], &unnamed_pod[0]), None, "no namespace, no policy");
    }

    #[test]
    fn node_local_dns_is_known_by_the_shape_of_its_rules() {
        let rules = iptables_rules(
            "*raw\n:PREROUTING ACCEPT [0:0]\n\
             -A PREROUTING -d 169.254.20.10/32 -p udp -m udp --dport 53 -j NOTRACK\n\
             -A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 53 -j NOTRACK\n\
             COMMIT\n*filter\n:INPUT ACCEPT [0:0]\n\
             -A INPUT -d 169.254.20.10/32 -p udp -m udp --dport 53 -j ACCEPT\n\
             -A INPUT -d 10.96.0.10/32 -p udp -m udp --dport 53 -j ACCEPT\n\
             COMMIT\n",
        );
        let managers: Vec<Manager> = rules.iter().map(|r| owner_of(r).manager).collect();
        assert_eq!(
            managers,
            [Manager::NodeLocalDns, Manager::NodeLocalDns, Manager::NodeLocalDns, Manager::Unknown],
            "an ACCEPT of the kube-dns address alone could be anyone's"
        );
    }

    #[test]
    fn a_rule_no_manager_wrote_is_unknown() {
        let rule = only_rule("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n");
        let owner = owner_of(&rule);
        assert_eq!((owner.manager, owner.service, owner.policy, owner.zone), (Manager::Unknown, None, None, None));
        assert_eq!(purpose_of(&rule, None), Purpose::Unstated);
        let nft = nft_rules("inet", "fw", &[("input", &[(DROP, Some("block 99"))])]);
        assert_eq!(owner_of(&nft[0]).manager, Manager::Unknown);
    }
}
