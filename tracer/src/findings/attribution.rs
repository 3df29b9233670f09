//! Names the firewall rule that dropped or rejected a packet, from two snapshots of the
//! rulesets (taken before and after the drop) and what the kernel saw: the hook, the
//! packet and the ICMP answer or TCP reset it sent. Deciding only: the snapshots come from
//! `crate::firewall`.
//!
//! The packet is walked through the hook's chains of the snapshot read before the drop
//! (the ruleset it met), following jumps, gotos and verdict maps: the candidates are the
//! rules (and DROP policies) where a way the packet can take ends with a verdict that gives
//! the answer the kernel sent (a REJECT with the same ICMP type and code, or a DROP when
//! nothing was sent). One candidate is the answer, whatever its counter says; counters
//! confirm it, and narrow several candidates down (ways that depend on what tracer cannot
//! check) to the ones that counted. Several that remain are all reported, never one picked
//! silently. When no way explains the answer (the ruleset changed in between, or the
//! packet is known wrongly), the snapshot read after is walked, and failing that the
//! counters of every rule the packet could reach decide, as the reason says.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::model::{firewall::MapElement, packet::L4Proto};

use crate::firewall::{
    eval::{self, PacketState, Ruleset, Walk},
    Backend, Chain, Family, Hook, Rule, Snapshot, Verdict,
};

/// A packet netfilter dropped, as the hook saw it: what a rule could have matched on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct HookDrop {
    pub family: Family,
    pub hook: Hook,
    pub proto: L4Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub in_iface: Option<String>,
    pub out_iface: Option<String>,
    /// The ICMP (or ICMPv6) type and code the kernel answered with, for a REJECT.
    pub icmp: Option<(u8, u8)>,
    /// The kernel answered with a TCP reset (REJECT --reject-with tcp-reset).
    pub tcp_reset: bool,
}

impl HookDrop {
    /// What makes two drops the same problem: hook, source address, destination and
    /// protocol (a client's every query comes from a new port).
    pub(crate) fn key(&self) -> (Hook, std::net::IpAddr, SocketAddr, L4Proto) {
        (self.hook, self.src.ip(), self.dst, self.proto)
    }

    /// The packet as the firewall evaluator takes it: all of it is known but the interfaces
    /// the hook did not have.
    pub(crate) fn as_seen(&self) -> eval::Packet<'_> {
        eval::Packet {
            family: self.family,
            proto: self.proto,
            src: Some(self.src.ip()),
            dst: Some(self.dst.ip()),
            sport: Some(self.src.port()),
            dport: Some(self.dst.port()),
            in_iface: self.in_iface.as_deref(),
            out_iface: self.out_iface.as_deref(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Attribution {
    /// The rule, when exactly one fits.
    pub rule: Option<Rule>,
    /// The chain whose policy dropped the packet, when no rule fits and exactly one
    /// policy does.
    pub policy: Option<Chain>,
    /// Every rule that fits, when more than one does (`rule` is then `None`).
    pub candidates: Vec<Rule>,
    /// Every chain whose DROP policy fits, when more than one does (`policy` is then
    /// `None`), e.g. native nft base chains, which keep no policy counter.
    pub policy_candidates: Vec<Chain>,
    /// The rules the packet met on its way to `rule` or `policy`, when one was named by
    /// walking it: where the policy a NetworkPolicy engine's drop enforces shows.
    pub passed: Vec<Rule>,
    /// The nft map element whose verdict led the packet to `rule` (or is its verdict).
    pub element: Option<MapElement>,
    /// One line: how it was decided.
    pub reason: String,
}

/// The ICMP answer in words for outputs: the REJECT name where it has one, else its type
/// and code.
pub(crate) fn answer_name(family: Family, icmp_type: u8, code: u8) -> String {
    reject_name(family, icmp_type, code).map(str::to_string).unwrap_or_else(|| format!("type {icmp_type} code {code}"))
}

/// The ICMP destination-unreachable codes a REJECT answers with, and the names iptables and
/// nft give them. The first name is the one iptables `--reject-with` spells, without its
/// `icmp-` / `icmp6-` prefix.
const REJECT_CODES: [(Family, u8, &[&str]); 13] = [
    (Family::Ipv4, 0, &["net-unreachable", "net-unreach"]),
    (Family::Ipv4, 1, &["host-unreachable", "host-unreach"]),
    (Family::Ipv4, 2, &["proto-unreachable", "prot-unreachable", "proto-unreach"]),
    (Family::Ipv4, 3, &["port-unreachable", "port-unreach"]),
    (Family::Ipv4, 9, &["net-prohibited", "net-prohib"]),
    (Family::Ipv4, 10, &["host-prohibited", "host-prohib"]),
    (Family::Ipv4, 13, &["admin-prohibited", "admin-prohib"]),
    (Family::Ipv6, 0, &["no-route"]),
    (Family::Ipv6, 1, &["adm-prohibited", "admin-prohibited"]),
    (Family::Ipv6, 3, &["addr-unreachable", "addr-unreach"]),
    (Family::Ipv6, 4, &["port-unreachable", "port-unreach"]),
    (Family::Ipv6, 5, &["policy-fail"]),
    (Family::Ipv6, 6, &["reject-route"]),
];

/// The name of a REJECT answer as iptables `--reject-with` spells it, without its
/// `icmp-` / `icmp6-` prefix: IPv4 type 3 code 10 is `host-prohibited`.
pub(crate) fn reject_name(family: Family, icmp_type: u8, code: u8) -> Option<&'static str> {
    if icmp_type != icmp_unreachable_type(family) {
        return None;
    }
    REJECT_CODES.iter().find(|(f, c, _)| *f == family && *c == code).and_then(|(_, _, names)| names.first().copied())
}

/// The ICMP type and code of a reject answer named the iptables or nft way.
fn reject_code(family: Family, name: &str) -> Option<(u8, u8)> {
    REJECT_CODES
        .iter()
        .find(|(f, _, names)| *f == family && names.contains(&name))
        .map(|(_, code, _)| (icmp_unreachable_type(family), *code))
}

fn icmp_unreachable_type(family: Family) -> u8 {
    match family {
        Family::Ipv4 => 3,
        Family::Ipv6 => 1,
    }
}

/// What the kernel sent back for the dropped packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Icmp(u8, u8),
    TcpReset,
    Nothing,
}

fn packet_answer(packet: &HookDrop) -> Answer {
    if packet.tcp_reset {
        Answer::TcpReset
    } else if let Some((icmp_type, code)) = packet.icmp {
        Answer::Icmp(icmp_type, code)
    } else {
        Answer::Nothing
    }
}

fn describe_answer(family: Family, answer: Answer) -> String {
    match answer {
        Answer::Icmp(icmp_type, code) => match reject_name(family, icmp_type, code) {
            Some(name) => format!("rejects with {name}"),
            None => format!("rejects with ICMP type {icmp_type} code {code}"),
        },
        Answer::TcpReset => "rejects with tcp-reset".to_string(),
        Answer::Nothing => "drops".to_string(),
    }
}

/// The answer a REJECT sends; `None` when it cannot be told (an iptables-nft REJECT seen
/// only through nft, an unknown name).
fn reject_answer(backend: Backend, family: Family, with: Option<&str>) -> Option<Answer> {
    let with = with?;
    match backend {
        Backend::IptablesNft | Backend::IptablesLegacy => {
            if with == "tcp-reset" || with == "tcp-rst" {
                return Some(Answer::TcpReset);
            }
            let name = with.strip_prefix("icmp6-").or_else(|| with.strip_prefix("icmp-")).unwrap_or(with);
            reject_code(family, name).map(|(t, c)| Answer::Icmp(t, c))
        }
        Backend::Nftables => {
            if with == "tcp reset" {
                return Some(Answer::TcpReset);
            }
            let (kind, code) = with.split_once(' ')?;
            let numeric = code.parse::<u8>().ok();
            match (kind, family) {
                ("icmp", Family::Ipv4) | ("icmpv6", Family::Ipv6) => match numeric {
                    Some(code) => Some(Answer::Icmp(icmp_unreachable_type(family), code)),
                    None => reject_code(family, code).map(|(t, c)| Answer::Icmp(t, c)),
                },
                // icmpx: one name for both families, each with its own code.
                ("icmpx", _) => {
                    let name = match (code, family) {
                        ("host-unreachable", Family::Ipv6) => "addr-unreachable",
                        ("no-route", Family::Ipv4) => "net-unreachable",
                        (name, _) => name,
                    };
                    reject_code(family, name).map(|(t, c)| Answer::Icmp(t, c))
                }
                _ => None,
            }
        }
    }
}

/// How a rule's verdict fits what the kernel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VerdictFit {
    No,
    Yes,
    /// A REJECT, though no answer was seen: the kernel rate-limits ICMP errors
    /// (net.ipv4.icmp_ratelimit), so a REJECT can drop without answering.
    RejectWithoutAnswer,
}

fn verdict_fit(rule: &Rule, answer: Answer) -> VerdictFit {
    let mut fit = VerdictFit::No;
    for verdict in rule.verdicts() {
        let this = one_verdict_fit(verdict, rule, answer);
        if this == VerdictFit::Yes {
            return VerdictFit::Yes;
        }
        if this == VerdictFit::RejectWithoutAnswer {
            fit = this;
        }
    }
    fit
}

/// How one verdict `rule` gives (its own or its map's) fits what the kernel did.
fn one_verdict_fit(verdict: &Verdict, rule: &Rule, answer: Answer) -> VerdictFit {
    match (verdict, answer) {
        (Verdict::Drop, Answer::Nothing) => VerdictFit::Yes,
        (Verdict::Reject { .. }, Answer::Nothing) => VerdictFit::RejectWithoutAnswer,
        (Verdict::Reject { with }, sent) => match reject_answer(rule.backend, rule.family, with.as_deref()) {
            Some(answer) if answer == sent => VerdictFit::Yes,
            Some(_) => VerdictFit::No,
            // Unknown answer: it may be this one.
            None => VerdictFit::Yes,
        },
        _ => VerdictFit::No,
    }
}

/// How much a counter moved between the snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Growth {
    Grew(u64),
    Flat,
    /// No counter to tell.
    Unknown,
    /// The reading after the drop does not have the rule (not read yet, or the rule is
    /// gone since).
    NotReadAgain,
    /// No reading before the drop to compare with: the counter's count so far.
    NotReadBefore(u64),
}

/// Identifies a rule across snapshots: by handle where nf_tables gives one, otherwise by
/// its text and which occurrence of that text in the chain it is (positions shift when a
/// rule is inserted above, text does not).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RuleKey {
    backend: Backend,
    family: Family,
    table: String,
    chain: String,
    handle: Option<u64>,
    text: String,
    occurrence: usize,
}

fn rule_keys(chain: &Chain) -> Vec<RuleKey> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    chain
        .rules
        .iter()
        .map(|rule| {
            let occurrence = seen.entry(rule.text.as_str()).or_insert(0);
            *occurrence += 1;
            RuleKey {
                backend: rule.backend,
                family: rule.family,
                table: rule.table.clone(),
                chain: rule.chain.clone(),
                handle: rule.handle,
                text: rule.text.clone(),
                occurrence: if rule.handle.is_some() { 0 } else { *occurrence },
            }
        })
        .collect()
}

/// The counters of one reading of the rulesets.
struct Reading {
    rules: HashMap<RuleKey, Option<u64>>,
    policies: HashMap<(Backend, Family, String, String), Option<u64>>,
}

impl Reading {
    fn new(snapshot: &Snapshot) -> Reading {
        let mut rules = HashMap::new();
        let mut policies = HashMap::new();
        for chain in &snapshot.chains {
            for (key, rule) in rule_keys(chain).into_iter().zip(&chain.rules) {
                rules.insert(key, rule.packets);
            }
            policies.insert(policy_key(chain), chain.policy_packets);
        }
        Reading { rules, policies }
    }
}

fn policy_key(chain: &Chain) -> (Backend, Family, String, String) {
    (chain.backend, chain.family, chain.table.clone(), chain.name.clone())
}

/// The readings before and after the drop.
struct Counters {
    /// `None` when no reading was taken before the drop.
    before: Option<Reading>,
    after: Reading,
}

impl Counters {
    fn rule_growth(&self, key: &RuleKey) -> Growth {
        match (self.after.rules.get(key), &self.before) {
            (None, _) => Growth::NotReadAgain,
            (Some(now), None) => not_read_before(*now),
            (Some(now), Some(before)) => growth(before.rules.get(key).copied(), *now),
        }
    }

    fn policy_growth(&self, chain: &Chain) -> Growth {
        let key = policy_key(chain);
        match (self.after.policies.get(&key), &self.before) {
            (None, _) => Growth::NotReadAgain,
            (Some(now), None) => not_read_before(*now),
            (Some(now), Some(before)) => growth(before.policies.get(&key).copied(), *now),
        }
    }
}

/// A counter read only after the drop: one still at zero has not counted it.
fn not_read_before(now: Option<u64>) -> Growth {
    match now {
        None => Growth::Unknown,
        Some(0) => Growth::Flat,
        Some(n) => Growth::NotReadBefore(n),
    }
}

/// `before` is `None` when the rule did not exist then, `Some(None)` when it had no counter.
fn growth(before: Option<Option<u64>>, now: Option<u64>) -> Growth {
    let Some(now) = now else { return Growth::Unknown };
    let grew = match before.flatten() {
        // A counter that went down belongs to a rule replaced in between (iptables-restore
        // without -c): all it counted is new.
        Some(then) if then <= now => now - then,
        _ => now,
    };
    if grew > 0 {
        Growth::Grew(grew)
    } else {
        Growth::Flat
    }
}

fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

fn describe_rule(rule: &Rule) -> String {
    let handle = rule.handle.map(|h| format!(" (handle {h})")).unwrap_or_default();
    format!("{} {} {} rule {}{handle}", rule.backend.name(), rule.table, rule.chain, rule.position)
}

fn describe_chain(chain: &Chain) -> String {
    format!("{} {} {}", chain.backend.name(), chain.table, chain.name)
}

fn describe_growth(growth: Growth, what: &str) -> String {
    match growth {
        Growth::Grew(n) => format!("its {what} grew by {n}"),
        Growth::Flat => format!("its {what} has not moved (yet)"),
        Growth::Unknown => format!("it has no {what} to confirm it"),
        Growth::NotReadAgain => format!("its {what} was not read again after the drop"),
        Growth::NotReadBefore(n) => format!("its {what} stands at {n}, with no reading before the drop to compare"),
    }
}

/// Names the rule (or the chain policy) that dropped `packet`: by walking it through the
/// chains of `before`, with the counters of `before` and `after` to confirm (see the
/// module's description). Nothing is known of the packet beyond its headers.
pub(crate) fn attribute(before: &Snapshot, after: &Snapshot, packet: &HookDrop) -> Attribution {
    attribute_in(before, after, packet, &PacketState::default())
}

/// The rule (or chain policy) the packet's way through the chains of one `reading` alone
/// names, when it names exactly one whose verdict gives the kernel's answer: then neither a
/// second reading nor a counter is needed, which on a node with tens of thousands of rules
/// is seconds saved. `None` when the walk leaves more than one, none, or gave up.
pub(crate) fn attribute_from_reading(reading: &Snapshot, packet: &HookDrop) -> Option<Attribution> {
    let answer = packet_answer(packet);
    let place = format!("{} ({})", packet.hook.name(), packet.family.name());
    // No second reading: no counter is known to have moved or stood still.
    let not_read_again = Snapshot::default();
    let counters = Counters { before: Some(Reading::new(reading)), after: Reading::new(&not_read_again) };
    let ruleset = Ruleset::new(reading);
    match evaluate(&ruleset, packet, &PacketState::default(), answer, &counters) {
        Evaluated::Found(found, tier) if found.len() == 1 => Some(decide_evaluated(
            found,
            &describe_tier(packet.family, answer, tier),
            &place,
            " (rulesets read before the drop)",
        )),
        _ => None,
    }
}

/// What walking a packet through the chains of one snapshot tells.
enum Evaluated<'s> {
    /// No base chain on the packet's hook.
    NoChains,
    /// The walk gave up before following every way.
    GaveUp,
    /// No way ends with a verdict that gives the kernel's answer.
    NoneFits,
    /// The rules or policies that end the packet's ways with that answer.
    Found(Vec<Candidate<'s>>, Tier),
}

fn evaluate<'s>(
    ruleset: &Ruleset<'s>,
    packet: &HookDrop,
    state: &PacketState,
    answer: Answer,
    counters: &Counters,
) -> Evaluated<'s> {
    let walks = ruleset.walk_with(packet.hook, &packet.as_seen(), state);
    if walks.is_empty() {
        return Evaluated::NoChains;
    }
    if walks.iter().any(|walk| !walk.complete) {
        return Evaluated::GaveUp;
    }
    match candidates(ruleset, &walks, answer, counters) {
        Some((found, tier)) => Evaluated::Found(found, tier),
        None => Evaluated::NoneFits,
    }
}

/// [`attribute`], knowing what `state` tells of the packet beyond its headers (its
/// conntrack state, the node's own addresses).
pub(crate) fn attribute_in(before: &Snapshot, after: &Snapshot, packet: &HookDrop, state: &PacketState) -> Attribution {
    attribute_with(Some(before), after, packet, state)
}

/// [`attribute`] when no reading of the packet's hook was taken before the drop (on a large
/// node, the chains a drop needs are read when it comes): the way through the rulesets read
/// just after it names the rule, and no counter can have moved in between.
pub(crate) fn attribute_after(after: &Snapshot, packet: &HookDrop) -> Attribution {
    attribute_with(None, after, packet, &PacketState::default())
}

fn attribute_with(before: Option<&Snapshot>, after: &Snapshot, packet: &HookDrop, state: &PacketState) -> Attribution {
    let answer = packet_answer(packet);
    let place = format!("{} ({})", packet.hook.name(), packet.family.name());
    let counters = Counters { before: before.map(Reading::new), after: Reading::new(after) };
    let mut why = String::new();
    // The rulesets the packet met are those read before it; when no way through them
    // explains the kernel's answer, they may have changed since, as those read after show.
    let readings = before.map(|before| (before, false)).into_iter().chain([(after, true)]);
    for (snapshot, read_after) in readings {
        let which = if read_after { "read after the drop" } else { "read before the drop" };
        let ruleset = Ruleset::new(snapshot);
        match evaluate(&ruleset, packet, state, answer, &counters) {
            Evaluated::NoChains => {}
            Evaluated::GaveUp => {
                why = format!(
                    "the walk through the chains of {place} (rulesets {which}) gave up before following every way (too many rules or jumps, or a jump to a chain not read)"
                );
                break;
            }
            Evaluated::Found(found, tier) => {
                let changed = match (read_after, before.is_some()) {
                    (false, _) => "",
                    (true, true) => {
                        " (in the rulesets read after the drop: those read before cannot have done it, they changed in between)"
                    }
                    (true, false) => " (rulesets read just after the drop)",
                };
                return decide_evaluated(found, &describe_tier(packet.family, answer, tier), &place, changed);
            }
            Evaluated::NoneFits if why.is_empty() => {
                why = format!(
                    "no way the packet can take through the chains of {place} ends with a verdict that {} (rulesets {which}): the rulesets changed, or the packet is known wrongly",
                    describe_answer(packet.family, answer)
                );
            }
            Evaluated::NoneFits => {}
        }
    }
    attribute_by_counters(after, packet, &counters, &why)
}

/// Which verdicts a candidate's gives: the answer the kernel sent, or (no answer seen) a
/// REJECT whose ICMP error the kernel's rate limit swallowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Answer,
    SilentReject,
}

fn describe_tier(family: Family, answer: Answer, tier: Tier) -> String {
    match tier {
        Tier::Answer => describe_answer(family, answer),
        Tier::SilentReject => "rejects (no ICMP answer was seen: the kernel rate-limits ICMP errors)".to_string(),
    }
}

/// A rule or DROP policy where a way of the packet ends with a verdict that fits.
struct Candidate<'s> {
    /// The base chain whose walk it ends.
    base: usize,
    /// The way to it assumes nothing tracer does not know.
    certain: bool,
    rule: Option<&'s Rule>,
    policy: Option<&'s Chain>,
    /// The way to it: `FORWARD rule 1 → KUBE-FORWARD rule 3`.
    path: String,
    element: Option<MapElement>,
    growth: Growth,
    /// The rules the packet met on its way there, in order (those of chains it jumped into
    /// and returned from too): where a NetworkPolicy engine's policy chains show.
    passed: Vec<&'s Rule>,
}

impl Candidate<'_> {
    fn describe(&self) -> String {
        match (self.rule, self.policy) {
            (Some(rule), _) => describe_rule(rule),
            (None, Some(chain)) => format!("the DROP policy of {}", describe_chain(chain)),
            (None, None) => String::new(),
        }
    }
}

/// Rules a way through KUBE-SERVICES meets are thousands; the policy chains of the engine that
/// dropped a packet are the last it passed before the drop.
const PASSED_KEPT: usize = 256;

/// The rules `walk` met before its `end`-th, the last [`PASSED_KEPT`] of them.
fn passed_before<'s>(ruleset: &Ruleset<'s>, walk: &Walk, end: usize) -> Vec<&'s Rule> {
    let end = end.min(walk.met.len());
    walk.met[end.saturating_sub(PASSED_KEPT)..end].iter().map(|met| ruleset.rule(met)).collect()
}

/// The ends of `walks` whose verdict fits the kernel's answer, each rule or policy once,
/// with the tier they fit in; `None` when none does.
fn candidates<'s>(
    ruleset: &Ruleset<'s>,
    walks: &[Walk],
    answer: Answer,
    counters: &Counters,
) -> Option<(Vec<Candidate<'s>>, Tier)> {
    let mut fitting: Vec<Candidate<'s>> = Vec::new();
    let mut silent: Vec<Candidate<'s>> = Vec::new();
    let mut seen: Vec<(usize, usize)> = Vec::new();
    for walk in walks {
        for end in &walk.ends {
            let met = &walk.met[end.met];
            if seen.contains(&(met.chain, met.rule)) {
                continue;
            }
            let rule = ruleset.rule(met);
            let tier = match one_verdict_fit(&end.verdict, rule, answer) {
                VerdictFit::No => continue,
                VerdictFit::Yes => Tier::Answer,
                VerdictFit::RejectWithoutAnswer => Tier::SilentReject,
            };
            seen.push((met.chain, met.rule));
            let chain = ruleset.chain(met.chain);
            let key = rule_keys(chain).swap_remove(met.rule);
            let path = walk.path(end.met);
            let element =
                end.element.clone().or_else(|| path.iter().rev().find_map(|&at| walk.met[at].element.clone()));
            let candidate = Candidate {
                base: walk.base,
                certain: end.certain,
                rule: Some(rule),
                policy: None,
                path: describe_path(ruleset, walk, &path),
                element,
                growth: counters.rule_growth(&key),
                passed: passed_before(ruleset, walk, end.met),
            };
            match tier {
                Tier::Answer => fitting.push(candidate),
                Tier::SilentReject => silent.push(candidate),
            }
        }
        let base = ruleset.chain(walk.base);
        if !walk.decided && answer == Answer::Nothing && base.policy == Some(Verdict::Drop) {
            fitting.push(Candidate {
                base: walk.base,
                certain: walk.policy_certain,
                rule: None,
                policy: Some(base),
                path: format!("{} to its end", base.name),
                element: None,
                growth: counters.policy_growth(base),
                passed: passed_before(ruleset, walk, walk.met.len()),
            });
        }
    }
    if !fitting.is_empty() {
        Some((fitting, Tier::Answer))
    } else if answer == Answer::Nothing && !silent.is_empty() {
        Some((silent, Tier::SilentReject))
    } else {
        None
    }
}

/// `filter-forward rule 1 → service-endpoints-check rule 1 (element ...: goto
/// reject-chain) → reject-chain rule 1`.
fn describe_path(ruleset: &Ruleset, walk: &Walk, path: &[usize]) -> String {
    let steps: Vec<String> = path
        .iter()
        .map(|&at| {
            let met = &walk.met[at];
            let rule = ruleset.rule(met);
            let mut step = format!("{} rule {} ({})", rule.chain, rule.position, rule.text);
            if let Some(element) = &met.element {
                step.push_str(&format!(", {}", describe_element(element)));
            }
            step
        })
        .collect();
    steps.join(" → ")
}

/// `element `10.96.0.10 . udp . 53` of @no-endpoint-services ("kube-system/kube-dns:dns"):
/// goto reject-chain`.
fn describe_element(element: &MapElement) -> String {
    let comment = element.comment.as_ref().map(|c| format!(" (\"{c}\")")).unwrap_or_default();
    let verdict = element.verdict.as_ref().map(|v| format!(": {v}")).unwrap_or_default();
    format!("element `{}` of {}{comment}{verdict}", element.key, element.map)
}

/// Decides among the candidates evaluation left: one is the answer; several are narrowed
/// to those whose counter did not stand still.
fn decide_evaluated(found: Vec<Candidate>, what: &str, place: &str, changed: &str) -> Attribution {
    let total = found.len();
    let moved: Vec<&Candidate> = found.iter().filter(|c| c.growth != Growth::Flat).collect();
    let remaining: Vec<&Candidate> = if moved.is_empty() { found.iter().collect() } else { moved };
    let counter = |c: &Candidate| if c.rule.is_some() { "counter" } else { "policy counter" };
    match remaining.as_slice() {
        [only] => {
            let how = if total == 1 {
                format!(
                    "is where the packet's way through the chains of {place} ends with a verdict that {what}{changed}"
                )
            } else {
                format!(
                    "is, of {total} rules or policies that end the packet's ways through the chains of {place} with a verdict that {what}{changed}, the only one whose counter did not stand still"
                )
            };
            Attribution {
                rule: only.rule.cloned(),
                policy: only.policy.cloned(),
                element: only.element.clone(),
                passed: only.passed.iter().map(|rule| (*rule).clone()).collect(),
                reason: format!(
                    "{} {how}: {}; {}",
                    only.describe(),
                    only.path,
                    describe_growth(only.growth, counter(only))
                ),
                ..Attribution::default()
            }
        }
        several => {
            let names: Vec<String> = several.iter().map(|c| c.describe()).collect();
            let ruled_out = match total - several.len() {
                0 => String::new(),
                n => format!("; {} ruled out as their counters did not move", plural(n, "other", "others")),
            };
            let mut bases: Vec<usize> = several.iter().map(|c| c.base).collect();
            bases.sort_unstable();
            bases.dedup();
            let mut why = Vec::new();
            if bases.len() > 1 {
                why.push(format!("{} base chains, met in an order tracer does not read", bases.len()));
            }
            if several.iter().any(|c| !c.certain) {
                why.push("ways that depend on what tracer cannot check".to_string());
            }
            Attribution {
                candidates: several.iter().filter_map(|c| c.rule.cloned()).collect(),
                policy_candidates: several.iter().filter_map(|c| c.policy.cloned()).collect(),
                reason: format!(
                    "on the packet's ways through the chains of {place} ({}), {} end it with a verdict that {what}{changed} ({}{ruled_out}), not telling which: {}",
                    why.join("; "),
                    plural(several.len(), "rule or policy", "rules or policies"),
                    describe_counts(several),
                    names.join(", ")
                ),
                ..Attribution::default()
            }
        }
    }
}

/// What the counters of several candidates say: `1 with a counter that grew, 1 without a
/// counter`.
fn describe_counts(candidates: &[&Candidate]) -> String {
    let count = |wanted: fn(Growth) -> bool| candidates.iter().filter(|c| wanted(c.growth)).count();
    let parts = [
        (count(|g| matches!(g, Growth::Grew(_))), "with a counter that grew"),
        (count(|g| g == Growth::Unknown), "without a counter"),
        (count(|g| g == Growth::NotReadAgain), "not in the reading after the drop"),
        (count(|g| matches!(g, Growth::NotReadBefore(_))), "not read before the drop"),
        (count(|g| g == Growth::Flat), "whose counter has not moved"),
    ];
    let described: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect();
    described.join(", ")
}

/// What the counters say when evaluation cannot, after `why` it cannot.
fn attribute_by_counters(after: &Snapshot, packet: &HookDrop, counters: &Counters, why: &str) -> Attribution {
    let mut attribution = by_counters(after, packet, counters);
    if !why.is_empty() {
        attribution.reason = format!("{why}; by counters: {}", attribution.reason);
    }
    attribution
}

/// Every rule in a chain the packet could reach (whatever the jumps to it match) whose
/// verdict and matches fit the packet and whose counter grew, in the rulesets of `after`.
fn by_counters(after: &Snapshot, packet: &HookDrop, counters: &Counters) -> Attribution {
    let answer = packet_answer(packet);
    let what = describe_answer(packet.family, answer);
    let place = format!("{} ({})", packet.hook.name(), packet.family.name());
    let ruleset = Ruleset::new(after);
    let chains: Vec<&Chain> =
        ruleset.reachable(packet.family, packet.hook).into_iter().map(|at| ruleset.chain(at)).collect();
    if chains.is_empty() {
        return Attribution {
            reason: format!("no firewall chain is attached to {place} in any backend read"),
            ..Attribution::default()
        };
    }
    let seen = packet.as_seen();

    let mut fitting: Vec<(&Rule, Growth)> = Vec::new();
    let mut silent_rejects: Vec<(&Rule, Growth)> = Vec::new();
    let mut rules_checked = 0usize;
    for chain in &chains {
        for (rule, key) in chain.rules.iter().zip(rule_keys(chain)) {
            rules_checked += 1;
            let fit = verdict_fit(rule, answer);
            if fit == VerdictFit::No || eval::fit(rule, &seen) == eval::Fit::No {
                continue;
            }
            let growth = counters.rule_growth(&key);
            if growth == Growth::Flat {
                continue;
            }
            match fit {
                VerdictFit::Yes => fitting.push((rule, growth)),
                _ => silent_rejects.push((rule, growth)),
            }
        }
    }
    let scope = format!(
        "{} in {} reachable from {place}",
        plural(rules_checked, "rule", "rules"),
        plural(chains.len(), "chain", "chains")
    );

    if let Some(found) = decide_rules(&fitting, &what, &scope) {
        return found;
    }

    // A policy can only drop, never answer.
    if answer == Answer::Nothing {
        let policies: Vec<(&Chain, Growth)> = chains
            .iter()
            .filter(|c| c.hook == Some(packet.hook) && c.policy == Some(Verdict::Drop))
            .map(|c| (*c, counters.policy_growth(c)))
            .filter(|(_, g)| *g != Growth::Flat)
            .collect();
        match policies.as_slice() {
            [(chain, growth)] => {
                return Attribution {
                    policy: Some((*chain).clone()),
                    reason: format!(
                        "no rule fits ({scope}); the DROP policy of {} did it: {}",
                        describe_chain(chain),
                        describe_growth(*growth, "policy counter")
                    ),
                    ..Attribution::default()
                }
            }
            [] => {}
            several => {
                let names: Vec<String> = several.iter().map(|(c, _)| describe_chain(c)).collect();
                return Attribution {
                    policy_candidates: several.iter().map(|(c, _)| (*c).clone()).collect(),
                    reason: format!(
                        "no rule fits ({scope}); {} DROP policies could have dropped it, not telling which: {}",
                        several.len(),
                        names.join(", ")
                    ),
                    ..Attribution::default()
                };
            }
        }

        let what = "rejects (no ICMP answer was seen: the kernel rate-limits ICMP errors)";
        if let Some(found) = decide_rules(&silent_rejects, what, &scope) {
            return found;
        }
    }

    Attribution {
        reason: format!(
            "no rule that {what} matches the packet with a counter that grew, and no DROP policy counted it ({scope})"
        ),
        ..Attribution::default()
    }
}

fn decide_rules(fitting: &[(&Rule, Growth)], what: &str, scope: &str) -> Option<Attribution> {
    match fitting {
        [] => None,
        [(rule, growth)] => Some(Attribution {
            rule: Some((*rule).clone()),
            reason: format!(
                "{} is the only rule that {what} and matches the packet ({scope}); {}",
                describe_rule(rule),
                describe_growth(*growth, "counter")
            ),
            ..Attribution::default()
        }),
        several => {
            let names: Vec<String> = several.iter().map(|(r, _)| describe_rule(r)).collect();
            let uncounted = several.iter().filter(|(_, g)| *g == Growth::Unknown).count();
            let counted = if uncounted == 0 {
                "all with counters that grew".to_string()
            } else {
                format!("{uncounted} of them without a counter")
            };
            Some(Attribution {
                candidates: several.iter().map(|(r, _)| (*r).clone()).collect(),
                reason: format!(
                    "{} rules {what} and match the packet ({counted}; {scope}), not telling which: {}",
                    several.len(),
                    names.join(", ")
                ),
                ..Attribution::default()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        firewall::{parse_iptables_save, parse_nft_json},
        system::netns::scratch::Netns,
    };

    fn iptables(backend: Backend, family: Family, save: &str) -> Snapshot {
        Snapshot { chains: parse_iptables_save(save, backend, family), errors: Vec::new() }
    }

    fn nft4(save: &str) -> Snapshot {
        iptables(Backend::IptablesNft, Family::Ipv4, save)
    }

    /// A UDP packet to port 53 forwarded from veth-client to eth0.
    fn dns_packet(icmp: Option<(u8, u8)>) -> HookDrop {
        HookDrop {
            family: Family::Ipv4,
            hook: Hook::Forward,
            proto: L4Proto::Udp,
            src: "10.244.0.5:41234".parse().unwrap(),
            dst: "10.96.0.10:53".parse().unwrap(),
            in_iface: Some("veth-client".to_string()),
            out_iface: Some("eth0".to_string()),
            icmp,
            tcp_reset: false,
        }
    }

    const HOST_PROHIBITED: Option<(u8, u8)> = Some((3, 10));

    /// The field case: the REJECT is rule 16, after 15 rules that do not fit the packet,
    /// several of which counted packets meanwhile.
    const FIELD_BEFORE: &str = "*filter
:INPUT ACCEPT [100:6000]
:FORWARD ACCEPT [50:3000]
:OUTPUT ACCEPT [100:6000]
[10:600] -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[0:0] -A FORWARD -p tcp -m tcp --dport 53 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -p udp -m udp --dport 54 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -s 192.168.0.0/16 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -d 10.96.0.11/32 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -i eth1 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD ! -o eth+ -j REJECT --reject-with icmp-host-prohibited
[3:180] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable
[7:420] -A FORWARD -p udp -m udp --dport 53 -j DROP
[20:1200] -A FORWARD -p udp -m udp --dport 53
[0:0] -A FORWARD -p udp -m udp --sport 1:1024 -j REJECT --reject-with icmp-host-prohibited
[5:300] -A FORWARD -p udp -m udp --dport 53 -j ACCEPT
[0:0] -A FORWARD -s 10.244.0.5/32 -p icmp -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -p udp -m multiport --dports 80,443,1000:2000 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with tcp-reset
[4:240] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
COMMIT
";

    /// One REJECT for DNS in FORWARD, which has not counted anything yet.
    const FORWARD_REJECT: &str =
        "*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\nCOMMIT\n";
    /// A rule's counter before a packet, and after one.
    const UNCOUNTED: &str = "[0:0] -A";
    const COUNTED_ONCE: &str = "[1:60] -A";

    fn grow(save: &str, changes: &[(&str, &str)]) -> String {
        let mut text = save.to_string();
        for (from, to) in changes {
            assert!(text.contains(from), "{from}");
            text = text.replacen(from, to, 1);
        }
        text
    }

    #[test]
    fn field_case_names_rule_16() {
        // Everything that counts udp/53 grew, the ACCEPTs and the DROP too. Rule 8 would
        // reject this packet with port-unreachable before it reaches rule 16, so no way
        // through FORWARD gives host-prohibited: the rulesets read are not the ones the
        // packet met, and the counters decide.
        let after = grow(
            FIELD_BEFORE,
            &[
                ("[10:600] -A FORWARD -m conntrack", "[12:720] -A FORWARD -m conntrack"),
                (
                    "[3:180] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port",
                    "[4:240] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port",
                ),
                ("[7:420]", "[9:540]"),
                ("[20:1200]", "[21:1260]"),
                ("[5:300]", "[6:360]"),
                (
                    "[4:240] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host",
                    "[5:300] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host",
                ),
            ],
        );
        let attribution = attribute(&nft4(FIELD_BEFORE), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        let rule = attribution.rule.as_ref().unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!(rule.position, 16);
        assert_eq!(rule.chain, "FORWARD");
        assert_eq!(rule.text, "-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited");
        assert!(attribution.candidates.is_empty() && attribution.policy.is_none());
        assert_eq!(
            attribution.reason,
            "no way the packet can take through the chains of FORWARD (IPv4) ends with a verdict that rejects with \
             host-prohibited (rulesets read before the drop): the rulesets changed, or the packet is known wrongly; by \
             counters: iptables-nft filter FORWARD rule 16 is the only rule that rejects with host-prohibited and matches \
             the packet (16 rules in 1 chain reachable from FORWARD (IPv4)); its counter grew by 1"
        );
        assert!(!attribution.reason.contains('\n'));
    }

    #[test]
    fn the_first_rule_on_the_way_is_named_whatever_counters_moved_behind_it() {
        let before = "*filter
:FORWARD ACCEPT [0:0]
[0:0] -A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -d 10.96.0.0/12 -j REJECT --reject-with icmp-host-prohibited
COMMIT
";
        // Rule 2 counted other traffic; this packet never gets past rule 1.
        let after = before.replace(UNCOUNTED, COUNTED_ONCE);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule.map(|r| r.position), Some(1), "{}", attribution.reason);
        let after = before.replacen("[0:0] -A FORWARD -d", "[1:60] -A FORWARD -d", 1);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule.map(|r| r.position), Some(1), "{}", attribution.reason);
        assert!(attribution.reason.ends_with("its counter has not moved (yet)"), "{}", attribution.reason);
    }

    #[test]
    fn rules_evaluation_cannot_tell_apart_are_all_listed_unless_counters_do() {
        // A rate limit is a condition no packet description settles: rule 1 may let the
        // packet on to rule 2.
        let before = "*filter
:FORWARD ACCEPT [0:0]
[0:0] -A FORWARD -p udp -m udp --dport 53 -m limit --limit 1/sec -j REJECT --reject-with icmp-host-prohibited
[0:0] -A FORWARD -d 10.96.0.0/12 -j REJECT --reject-with icmp-host-prohibited
COMMIT
";
        let after = before.replace(UNCOUNTED, COUNTED_ONCE);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule, None);
        assert_eq!(attribution.candidates.iter().map(|r| r.position).collect::<Vec<_>>(), [1, 2]);
        assert!(
            attribution.reason.contains(
                "2 rules or policies end it with a verdict that rejects with host-prohibited (2 with a counter that grew)"
            ),
            "{}",
            attribution.reason
        );
        assert!(attribution
            .reason
            .contains("not telling which: iptables-nft filter FORWARD rule 1, iptables-nft filter FORWARD rule 2"));

        // Only the second counter moved: that one.
        let after = before.replacen("[0:0] -A FORWARD -d", "[1:60] -A FORWARD -d", 1);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule.as_ref().map(|r| r.position), Some(2), "{}", attribution.reason);
        assert!(
            attribution.reason.contains("the only one whose counter did not stand still"),
            "{}",
            attribution.reason
        );
    }

    #[test]
    fn drop_policy() {
        let before = "*filter
:FORWARD DROP [5:300]
[0:0] -A FORWARD -p tcp -j DROP
[9:540] -A FORWARD -p udp -m udp --dport 54 -j REJECT --reject-with icmp-host-prohibited
COMMIT
";
        let after = before.replace("[5:300]", "[6:360]").replace("[9:540]", "[10:600]");
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(None));
        let policy = attribution.policy.as_ref().unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!((policy.table.as_str(), policy.name.as_str()), ("filter", "FORWARD"));
        assert_eq!(attribution.rule, None);
        assert!(
            attribution.reason.starts_with(
                "the DROP policy of iptables-nft filter FORWARD is where the packet's way through the chains of FORWARD \
                 (IPv4) ends with a verdict that drops: FORWARD to its end; its policy counter grew by 1"
            ),
            "{}",
            attribution.reason
        );

        // The policy is the only way the packet can be dropped: named, its counter still or not.
        let attribution = attribute(&nft4(before), &nft4(before), &dns_packet(None));
        assert_eq!(attribution.policy.map(|c| c.name), Some("FORWARD".to_string()), "{}", attribution.reason);
        assert!(attribution.reason.ends_with("its policy counter has not moved (yet)"), "{}", attribution.reason);

        // An ACCEPT policy drops nothing: with no rule that can drop it either, the counters
        // are asked, and nothing moved.
        let accepting = before.replace(":FORWARD DROP", ":FORWARD ACCEPT");
        let attribution = attribute(&nft4(&accepting), &nft4(&accepting), &dns_packet(None));
        assert_eq!((attribution.rule, attribution.policy), (None, None));
        assert!(
            attribution.reason.contains("; by counters: no rule that drops matches the packet"),
            "{}",
            attribution.reason
        );
    }

    #[test]
    fn a_reject_without_an_answer_is_named_when_nothing_else_fits() {
        // ICMP errors are rate limited: a REJECT may drop without answering.
        let before = FORWARD_REJECT;
        let after = before.replace(UNCOUNTED, COUNTED_ONCE);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(None));
        assert_eq!(attribution.rule.map(|r| r.position), Some(1));
        assert!(attribution.reason.contains("rate-limits"), "{}", attribution.reason);
    }

    #[test]
    fn a_jump_leads_into_a_user_chain_and_unreached_chains_do_not_count() {
        let before = "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:ONLY-INPUT - [0:0]
[0:0] -A INPUT -j ONLY-INPUT
[0:0] -A FORWARD -i veth+ -j KUBE-FORWARD
[0:0] -A KUBE-FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
[0:0] -A ONLY-INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
COMMIT
";
        let after = before.replace(UNCOUNTED, COUNTED_ONCE);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        let rule = attribution.rule.unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!((rule.chain.as_str(), rule.position), ("KUBE-FORWARD", 1));
        assert!(
            attribution
                .reason
                .contains(": FORWARD rule 1 (-A FORWARD -i veth+ -j KUBE-FORWARD) → KUBE-FORWARD rule 1 ("),
            "{}",
            attribution.reason
        );

        // The jump needs the input interface: from another one no way leads to a REJECT.
        // The kernel did reject, so what tracer knows of the packet is wrong; the counters
        // of every chain it could reach say which rule it was, and the reason says so.
        let mut packet = dns_packet(HOST_PROHIBITED);
        packet.in_iface = Some("eth1".to_string());
        let attribution = attribute(&nft4(before), &nft4(&after), &packet);
        assert_eq!(attribution.rule.map(|r| r.chain), Some("KUBE-FORWARD".to_string()));
        assert!(attribution.reason.starts_with("no way the packet can take"), "{}", attribution.reason);
        assert!(attribution.reason.contains("2 chains reachable from FORWARD"), "{}", attribution.reason);
    }

    #[test]
    fn a_rule_added_after_the_first_reading_is_found_in_the_second() {
        let before = "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        let after = FORWARD_REJECT.replace(UNCOUNTED, COUNTED_ONCE);
        let attribution = attribute(&nft4(before), &nft4(&after), &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule.map(|r| r.position), Some(1), "{}", attribution.reason);
        assert!(
            attribution.reason.contains("(in the rulesets read after the drop: those read before cannot have done it"),
            "{}",
            attribution.reason
        );
    }

    #[test]
    fn each_backend_is_told_apart() {
        let save = FORWARD_REJECT;
        let grown = save.replace(UNCOUNTED, COUNTED_ONCE);
        let mut before = nft4(save);
        before.chains.extend(iptables(Backend::IptablesLegacy, Family::Ipv4, save).chains);
        let mut after = nft4(save);
        after.chains.extend(iptables(Backend::IptablesLegacy, Family::Ipv4, &grown).chains);
        let attribution = attribute(&before, &after, &dns_packet(HOST_PROHIBITED));
        assert_eq!(attribution.rule.map(|r| r.backend), Some(Backend::IptablesLegacy));
    }

    /// Native nft: an inet table with a counted REJECT, an uncounted DROP and a jump.
    const NFT_BEFORE: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"table": {"family": "inet", "name": "tr-native", "handle": 4}},
{"chain": {"family": "inet", "table": "tr-native", "name": "forward_hook", "handle": 1, "type": "filter", "hook": "forward", "prio": 10, "policy": "accept"}},
{"chain": {"family": "inet", "table": "tr-native", "name": "tr-sub", "handle": 2}},
{"rule": {"family": "inet", "table": "tr-native", "chain": "forward_hook", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.96.0.10"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, {"counter": {"packets": 0, "bytes": 0}}, {"reject": {"type": "icmp", "expr": "host-prohibited"}}]}},
{"rule": {"family": "inet", "table": "tr-native", "chain": "forward_hook", "handle": 6, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": {"set": [5353, 5355]}}}, {"drop": null}]}},
{"rule": {"family": "inet", "table": "tr-native", "chain": "forward_hook", "handle": 7, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "veth*"}}, {"jump": {"target": "tr-sub"}}]}},
{"rule": {"family": "inet", "table": "tr-native", "chain": "tr-sub", "handle": 8, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": {"prefix": {"addr": "fd00::", "len": 8}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]}}]}"#;

    fn nft(json: &str) -> Snapshot {
        Snapshot { chains: parse_nft_json(json).expect("parse"), errors: Vec::new() }
    }

    #[test]
    fn nft_native_reject_is_named_with_its_handle() {
        let after = NFT_BEFORE.replacen(r#""packets": 0, "bytes": 0"#, r#""packets": 1, "bytes": 60"#, 1);
        let attribution = attribute(&nft(NFT_BEFORE), &nft(&after), &dns_packet(HOST_PROHIBITED));
        let rule = attribution.rule.unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!(
            (rule.backend, rule.family, rule.handle, rule.position),
            (Backend::Nftables, Family::Ipv4, Some(4), 1)
        );
        assert_eq!(rule.table, "inet tr-native");
        assert_eq!(rule.text, "ip daddr 10.96.0.10 udp dport 53 counter reject with icmp host-prohibited");
        assert!(
            attribution.reason.starts_with(
                "nftables inet tr-native forward_hook rule 1 (handle 4) is where the packet's way through the chains"
            ),
            "{}",
            attribution.reason
        );

        // IPv6 through the jump: icmpx admin-prohibited is ICMPv6 type 1 code 1 there.
        let after = NFT_BEFORE.replace(
            r#""packets": 0, "bytes": 0}}, {"reject": {"type": "icmpx""#,
            r#""packets": 1, "bytes": 80}}, {"reject": {"type": "icmpx""#,
        );
        let packet = HookDrop {
            family: Family::Ipv6,
            src: "[fd00::5]:41234".parse().unwrap(),
            dst: "[fd00::10]:53".parse().unwrap(),
            icmp: Some((1, 1)),
            ..dns_packet(None)
        };
        let attribution = attribute(&nft(NFT_BEFORE), &nft(&after), &packet);
        let rule = attribution.rule.unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!((rule.chain.as_str(), rule.handle, rule.family), ("tr-sub", Some(8), Family::Ipv6));
    }

    #[test]
    fn a_rule_without_counter_can_only_be_listed() {
        let mut packet = dns_packet(None);
        packet.dst = "10.96.0.10:5353".parse().unwrap();
        let attribution = attribute(&nft(NFT_BEFORE), &nft(NFT_BEFORE), &packet);
        let rule = attribution.rule.unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!(rule.handle, Some(6));
        assert!(attribution.reason.ends_with("it has no counter to confirm it"), "{}", attribution.reason);

        // With a counted DROP that moved beside it, both are listed.
        let mut before = nft(NFT_BEFORE);
        let counted = "*filter\n:FORWARD ACCEPT [0:0]\n[0:0] -A FORWARD -p udp -j DROP\nCOMMIT\n";
        before.chains.extend(nft4(counted).chains);
        let mut after = nft(NFT_BEFORE);
        after.chains.extend(nft4(&counted.replace(UNCOUNTED, COUNTED_ONCE)).chains);
        let attribution = attribute(&before, &after, &packet);
        assert_eq!(attribution.rule, None);
        assert_eq!(attribution.candidates.len(), 2);
        assert!(
            attribution.reason.contains("(1 with a counter that grew, 1 without a counter)"),
            "{}",
            attribution.reason
        );
    }

    #[test]
    fn tcp_reset_and_negations() {
        let before = "*filter
:INPUT ACCEPT [0:0]
[0:0] -A INPUT ! -i lo -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset
[0:0] -A INPUT -i lo -p tcp -m tcp --dport 22 -j REJECT --reject-with tcp-reset
[0:0] -A INPUT -p tcp -m tcp ! --dport 22 -j REJECT --reject-with tcp-reset
[0:0] -A INPUT -p tcp -j REJECT --reject-with icmp-port-unreachable
COMMIT
";
        let after = before.replace(UNCOUNTED, COUNTED_ONCE);
        let packet = HookDrop {
            hook: Hook::LocalIn,
            proto: L4Proto::Tcp,
            dst: "10.0.0.1:22".parse().unwrap(),
            in_iface: Some("eth0".to_string()),
            out_iface: None,
            tcp_reset: true,
            ..dns_packet(None)
        };
        let attribution = attribute(&nft4(before), &nft4(&after), &packet);
        assert_eq!(attribution.rule.map(|r| r.position), Some(1), "{}", attribution.reason);
    }

    #[test]
    fn nothing_on_the_hook() {
        let attribution = attribute(&Snapshot::default(), &Snapshot::default(), &dns_packet(HOST_PROHIBITED));
        assert_eq!(
            attribution,
            Attribution {
                reason: "no firewall chain is attached to FORWARD (IPv4) in any backend read".to_string(),
                ..Attribution::default()
            }
        );
    }

    #[test]
    fn reject_names() {
        let v4 = [
            (0, "net-unreachable"),
            (1, "host-unreachable"),
            (3, "port-unreachable"),
            (9, "net-prohibited"),
            (10, "host-prohibited"),
            (13, "admin-prohibited"),
        ];
        for (code, name) in v4 {
            assert_eq!(reject_name(Family::Ipv4, 3, code), Some(name));
            let with = format!("icmp-{name}");
            assert_eq!(reject_answer(Backend::IptablesLegacy, Family::Ipv4, Some(&with)), Some(Answer::Icmp(3, code)));
        }
        let v6 = [(0, "no-route"), (1, "adm-prohibited"), (3, "addr-unreachable"), (4, "port-unreachable")];
        for (code, name) in v6 {
            assert_eq!(reject_name(Family::Ipv6, 1, code), Some(name));
            let with = format!("icmp6-{name}");
            assert_eq!(reject_answer(Backend::IptablesNft, Family::Ipv6, Some(&with)), Some(Answer::Icmp(1, code)));
        }
        assert_eq!(reject_name(Family::Ipv4, 1, 10), None);
        assert_eq!(reject_name(Family::Ipv6, 3, 10), None);
        let nft = |family, with: &str| reject_answer(Backend::Nftables, family, Some(with));
        assert_eq!(nft(Family::Ipv4, "icmp host-prohibited"), Some(Answer::Icmp(3, 10)));
        assert_eq!(nft(Family::Ipv4, "icmp 5"), Some(Answer::Icmp(3, 5)));
        assert_eq!(nft(Family::Ipv6, "icmpv6 admin-prohibited"), Some(Answer::Icmp(1, 1)));
        assert_eq!(nft(Family::Ipv4, "icmpx admin-prohibited"), Some(Answer::Icmp(3, 13)));
        assert_eq!(nft(Family::Ipv6, "icmpx port-unreachable"), Some(Answer::Icmp(1, 4)));
        assert_eq!(nft(Family::Ipv6, "icmpx host-unreachable"), Some(Answer::Icmp(1, 3)));
        assert_eq!(nft(Family::Ipv4, "tcp reset"), Some(Answer::TcpReset));
        assert_eq!(nft(Family::Ipv6, "icmp host-prohibited"), None);
        assert_eq!(reject_answer(Backend::IptablesNft, Family::Ipv4, Some("tcp-reset")), Some(Answer::TcpReset));
        assert_eq!(reject_answer(Backend::Nftables, Family::Ipv4, None), None);
    }

    #[test]
    fn real_kube_proxy_nft_service_without_endpoints_is_named_with_its_element() {
        // kube-proxy's nftables mode rejects DNS to kube-dns, which has no endpoints, through
        // an element of a verdict map; its ClusterIP check would reject it too, were it
        // reached. Neither rule has a counter.
        let node = Netns::new();
        node.nft(crate::firewall::fixtures::KUBE_PROXY_NFT);
        let before = node.run(crate::firewall::snapshot);
        assert!(before.errors.is_empty(), "{:?}", before.errors);
        let packet = dns_packet(Some((3, 3)));
        // The reading after the drop is not there yet.
        let attribution = attribute(&before, &Snapshot::default(), &packet);
        let rule = attribution.rule.as_ref().unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!((rule.table.as_str(), rule.chain.as_str(), rule.position), ("ip kube-proxy", "reject-chain", 1));
        assert!(attribution.candidates.is_empty());
        let element = MapElement {
            map: "@no-endpoint-services".to_string(),
            key: "10.96.0.10 . udp . 53".to_string(),
            verdict: Some("goto reject-chain".to_string()),
            comment: Some("kube-system/kube-dns:dns".to_string()),
        };
        assert_eq!(attribution.element.as_ref(), Some(&element));
        assert_eq!(
            attribution.reason,
            format!(
                "nftables ip kube-proxy reject-chain rule 1 (handle {}) is where the packet's way through the chains of \
                 FORWARD (IPv4) ends with a verdict that rejects with port-unreachable: filter-forward rule 1 (ct state \
                 new jump service-endpoints-check) → service-endpoints-check rule 1 (ip daddr . meta l4proto . th dport \
                 vmap @no-endpoint-services), element `10.96.0.10 . udp . 53` of @no-endpoint-services \
                 (\"kube-system/kube-dns:dns\"): goto reject-chain → reject-chain rule 1 (reject); its counter was not read \
                 again after the drop",
                rule.handle.expect("a handle")
            )
        );

        // The finding carries the element.
        let finding = super::super::netfilter::judge_drop(&packet, 0, &before, &before);
        let crate::schema::finding::Evidence::Netfilter(evidence) = &finding.evidence else { panic!("evidence") };
        assert_eq!(evidence.element.as_ref(), Some(&element));
        assert!(evidence.candidates.is_empty());
    }

    // ---- real drops: a client namespace sends DNS through a node namespace whose FORWARD
    // chain rejects it at rule 16 ----

    struct Lab {
        node: Netns,
        client: Netns,
    }

    impl Lab {
        fn new() -> Lab {
            let node = Netns::new();
            let client = Netns::new();
            let out = std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    "c0",
                    "netns",
                    &client.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "n0",
                    "netns",
                    &node.name,
                ])
                .output()
                .expect("run ip");
            assert!(out.status.success(), "veth: {}", String::from_utf8_lossy(&out.stderr));
            client.sh("ip addr add 10.0.1.2/24 dev c0; ip link set c0 up; ip route add default via 10.0.1.1");
            // The way out (n1) only has to exist: FORWARD runs before the next hop is resolved.
            node.sh("ip addr add 10.0.1.1/24 dev n0; ip link set n0 up
                 ip link add n1 type veth peer name n1p; ip addr add 10.0.2.1/24 dev n1
                 ip link set n1 up; ip link set n1p up
                 sysctl -qw net.ipv4.ip_forward=1");
            // A fixed neighbour entry for the gateway, so the query is not parked waiting
            // for ARP while the second snapshot is taken.
            let mac = node.sh("cat /sys/class/net/n0/address");
            client.sh(&format!("ip neigh replace 10.0.1.1 lladdr {} dev c0 nud permanent", mac.trim()));
            Lab { node, client }
        }

        fn attribute_one_query(&self) -> Attribution {
            let before = self.node.run(crate::firewall::snapshot);
            self.client.send_udp("10.0.2.2:53".parse().unwrap(), 1);
            // The node forwards it in softirq context, maybe on another CPU.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let after = self.node.run(crate::firewall::snapshot);
            assert!(after.errors.is_empty(), "{:?}", after.errors);
            let packet = HookDrop {
                family: Family::Ipv4,
                hook: Hook::Forward,
                proto: L4Proto::Udp,
                src: "10.0.1.2:40000".parse().unwrap(),
                dst: "10.0.2.2:53".parse().unwrap(),
                in_iface: Some("n0".to_string()),
                out_iface: Some("n1".to_string()),
                icmp: HOST_PROHIBITED,
                tcp_reset: false,
            };
            attribute(&before, &after, &packet)
        }
    }

    /// 15 rules that do not stop a DNS query from 10.0.1.2 to 10.0.2.2 (one only counts it).
    const FIFTEEN: &str = "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -p tcp --dport 53 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -p udp --dport 54 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -s 192.168.0.0/16 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -d 10.0.3.0/24 -j DROP
-A FORWARD -i eth1 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -o n0 -j DROP
-A FORWARD -p udp --dport 53
-A FORWARD -p udp --sport 53 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -p icmp -j DROP
-A FORWARD -p udp -m multiport --dports 80,443 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -p tcp --dport 53 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp --dport 53 -m mark --mark 0x7 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD -d 10.0.2.3 -j REJECT --reject-with icmp-host-prohibited
-A FORWARD ! -s 10.0.0.0/8 -j DROP";

    const RULE_16: &str = "-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited";

    fn iptables_script(tool: &str) -> String {
        let mut script: Vec<String> = FIFTEEN.lines().map(|rule| format!("{tool} {rule}")).collect();
        script.push(format!("{tool} {RULE_16}"));
        script.join("\n")
    }

    fn check_rule_16(attribution: &Attribution, backend: Backend, chain: &str) {
        let rule = attribution.rule.as_ref().unwrap_or_else(|| panic!("{}", attribution.reason));
        assert_eq!((rule.backend, rule.position, rule.chain.as_str()), (backend, 16, chain), "{}", attribution.reason);
        assert!(attribution.reason.contains("its counter grew by 1"), "{}", attribution.reason);
    }

    #[test]
    fn real_iptables_nft_rule_16() {
        let lab = Lab::new();
        lab.node.sh(&iptables_script("iptables-nft"));
        let attribution = lab.attribute_one_query();
        check_rule_16(&attribution, Backend::IptablesNft, "FORWARD");
        let rule = attribution.rule.expect("rule");
        assert_eq!(rule.text, RULE_16);
        assert!(rule.handle.is_some());
    }

    #[test]
    fn real_iptables_legacy_rule_16() {
        let lab = Lab::new();
        lab.node.sh(&iptables_script("iptables-legacy -w"));
        let attribution = lab.attribute_one_query();
        check_rule_16(&attribution, Backend::IptablesLegacy, "FORWARD");
        assert_eq!(attribution.rule.expect("rule").text, RULE_16);
    }

    #[test]
    fn real_nftables_rule_16() {
        let lab = Lab::new();
        lab.node.nft(
            "table inet tr-filter {
               chain forward {
                 type filter hook forward priority 0; policy accept;
                 ct state established,related accept
                 tcp dport 53 counter reject with icmp host-prohibited
                 udp dport 54 counter reject with icmp host-prohibited
                 ip saddr 192.168.0.0/16 counter reject with icmp host-prohibited
                 ip daddr 10.0.3.0/24 counter drop
                 iifname \"eth1\" counter reject with icmp host-prohibited
                 oifname \"n0\" counter drop
                 udp dport 53 counter
                 udp sport 53 counter reject with icmp host-prohibited
                 ip protocol icmp counter drop
                 udp dport { 80, 443 } counter reject with icmp host-prohibited
                 tcp dport 53 reject with tcp reset
                 udp dport 53 meta mark 0x7 counter reject with icmp host-prohibited
                 ip daddr 10.0.2.3 counter reject with icmp host-prohibited
                 ip saddr != 10.0.0.0/8 drop
                 udp dport 53 counter reject with icmp host-prohibited
               }
             }",
        );
        let attribution = lab.attribute_one_query();
        check_rule_16(&attribution, Backend::Nftables, "forward");
        let rule = attribution.rule.expect("rule");
        // nft adds the family check an ICMP reject needs in an inet table.
        assert_eq!(rule.text, "meta nfproto ipv4 udp dport 53 counter reject with icmp host-prohibited");
        assert_eq!(rule.table, "inet tr-filter");
        assert!(rule.handle.is_some());
    }

    #[test]
    fn real_legacy_and_nft_side_by_side() {
        // Both backends hold the same REJECT: each counts its own packets; the one that
        // rejected is the one whose counter moved (iptables-legacy runs first here, so it is
        // the legacy rule, and the iptables-nft one never sees the packet).
        let lab = Lab::new();
        lab.node.sh(&format!("iptables-legacy -w {RULE_16}\niptables-nft {RULE_16}"));
        let attribution = lab.attribute_one_query();
        let rule = attribution.rule.unwrap_or_else(|| panic!("{}", attribution.reason));
        let other =
            if rule.backend == Backend::IptablesLegacy { Backend::IptablesNft } else { Backend::IptablesLegacy };
        assert_eq!(rule.position, 1);
        assert!(!attribution.reason.contains(other.name()), "{}", attribution.reason);
    }
}
