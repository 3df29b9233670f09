//! Decides what a packet meets in the firewall: the chains it can reach from a hook, and,
//! walking them the way the kernel does, the rules it may match and whether it may fall
//! through to a chain's policy. A packet may be known only in part (a node check knows a
//! port, not the addresses); a test on what is unknown may hold. What a rule it meets means
//! (the one that dropped a traced packet, a default-deny chain) is for the callers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use crate::model::packet::L4Proto;

use super::model::{
    nft_family_name, AddrRange, Backend, Chain, Condition, Family, Hook, IfacePattern, PortRange, Rule, Snapshot, Test,
    Verdict,
};

/// A packet as far as it is known.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Packet<'a> {
    pub family: Family,
    pub proto: L4Proto,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    /// Interfaces are not known at every hook (no output interface before routing).
    pub in_iface: Option<&'a str>,
    pub out_iface: Option<&'a str>,
}

/// How a rule's matches fit a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// A test rules the packet out.
    No,
    /// Depends on what the packet leaves unknown, or on conditions no packet description
    /// holds (conntrack state, marks, ...).
    May,
    /// Every condition holds.
    Yes,
}

/// How `rule` fits `packet`.
pub(crate) fn fit(rule: &Rule, packet: &Packet) -> Fit {
    let mut fit = if rule.matches.unparsed.is_empty() { Fit::Yes } else { Fit::May };
    for test in &rule.matches.tests {
        match holds(test, packet) {
            Some(false) => return Fit::No,
            Some(true) => {}
            None => fit = Fit::May,
        }
    }
    fit
}

/// Whether `test` holds for `packet`; `None` when the packet does not tell.
pub(crate) fn holds(test: &Test, packet: &Packet) -> Option<bool> {
    let in_ports = |ranges: &[PortRange], port: Option<u16>| {
        let port = port.filter(|_| has_ports(packet.proto.number()))?;
        Some(ranges.iter().any(|r| (r.first..=r.last).contains(&port)))
    };
    let in_iface = |patterns: &[IfacePattern], name: Option<&str>| Some(iface_matches(patterns, name?));
    let plain = match &test.condition {
        Condition::Family(family) => Some(*family == packet.family),
        Condition::Proto(protos) => Some(protos.contains(&packet.proto.number())),
        Condition::Src(ranges) => return addr_holds(ranges, packet.src, packet.family, test.negated),
        Condition::Dst(ranges) => return addr_holds(ranges, packet.dst, packet.family, test.negated),
        Condition::Sport(ranges) => in_ports(ranges, packet.sport),
        Condition::Dport(ranges) => in_ports(ranges, packet.dport),
        Condition::InIface(patterns) => in_iface(patterns, packet.in_iface),
        Condition::OutIface(patterns) => in_iface(patterns, packet.out_iface),
    };
    plain.map(|held| held != test.negated)
}

fn has_ports(proto: u8) -> bool {
    // tcp, udp, dccp, sctp, udplite
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

fn addr_holds(ranges: &[AddrRange], addr: Option<IpAddr>, family: Family, negated: bool) -> Option<bool> {
    // A rule on the other family's addresses never matches, negated or not: nft checks the
    // family first, iptables keeps the families apart.
    let v4 = addr.map_or(family == Family::Ipv4, |a| a.is_ipv4());
    let same_family: Vec<&AddrRange> = ranges.iter().filter(|r| r.first.is_ipv4() == v4).collect();
    if same_family.is_empty() {
        return Some(false);
    }
    let addr = addr?;
    Some(same_family.iter().any(|r| r.contains(addr)) != negated)
}

fn iface_matches(patterns: &[IfacePattern], name: &str) -> bool {
    patterns.iter().any(|p| if p.prefix { name.starts_with(&p.name) } else { name == p.name })
}

/// The kernel table a chain lives in: jumps and gotos never leave it. iptables-nft and
/// native nft chains of one nf_tables table (`ip filter`) share it, spelled `filter` by one
/// and `ip filter` by the other; a legacy x_tables table is a table of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct KernelTable<'a> {
    legacy: bool,
    family: Family,
    /// nf_tables' table family (`ip`, `ip6`, `inet`); empty for legacy tables.
    nft_family: &'a str,
    name: &'a str,
}

impl<'a> KernelTable<'a> {
    fn of(chain: &'a Chain) -> KernelTable<'a> {
        let (legacy, nft_family, name) = match chain.backend {
            Backend::IptablesLegacy => (true, "", chain.table.as_str()),
            Backend::IptablesNft => (false, nft_family_name(chain.family), chain.table.as_str()),
            Backend::Nftables => {
                let (nft_family, name) = chain.table.split_once(' ').unwrap_or(("", &chain.table));
                (false, nft_family, name)
            }
        };
        KernelTable { legacy, family: chain.family, nft_family, name }
    }
}

/// Rule evaluations one walk may spend: a ruleset with thousands of per-pod chains stays cheap.
const WALK_BUDGET: usize = 200_000;
const MAX_JUMP_DEPTH: usize = 32;

/// The chains of a snapshot, found by the names jumps and gotos give them.
pub(crate) struct Ruleset<'a> {
    snapshot: &'a Snapshot,
    by_name: HashMap<(KernelTable<'a>, &'a str), usize>,
}

/// A rule a walk met that may match the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Met {
    /// Index of the chain in the snapshot.
    pub chain: usize,
    /// Index of the rule in its chain.
    pub rule: usize,
    pub fit: Fit,
    /// A rule met before it may accept the packet, which then never gets here.
    pub after_accept: bool,
}

/// One base chain, walked.
#[derive(Clone, Debug)]
pub(crate) struct Walk {
    /// Index of the base chain in the snapshot.
    pub base: usize,
    /// The rules the packet may match, in the order the kernel meets them, jumped-to chains
    /// included.
    pub met: Vec<Met>,
    /// Some rule may accept the packet.
    pub accept_possible: bool,
    /// A verdict is certain before the chain ends: the packet never reaches its policy.
    pub decided: bool,
}

impl<'a> Ruleset<'a> {
    pub(crate) fn new(snapshot: &'a Snapshot) -> Ruleset<'a> {
        let by_name = snapshot
            .chains
            .iter()
            .enumerate()
            .map(|(at, chain)| ((KernelTable::of(chain), chain.name.as_str()), at))
            .collect();
        Ruleset { snapshot, by_name }
    }

    pub(crate) fn chain(&self, at: usize) -> &'a Chain {
        &self.snapshot.chains[at]
    }

    pub(crate) fn rule(&self, met: &Met) -> &'a Rule {
        &self.chain(met.chain).rules[met.rule]
    }

    /// The base chains on `hook` for `family`, in snapshot order. The snapshot keeps no
    /// chain priorities, so they are not ordered by them, and each is walked on its own.
    pub(crate) fn base_chains(&self, family: Family, hook: Hook) -> impl Iterator<Item = usize> + '_ {
        let chains = &self.snapshot.chains;
        (0..chains.len()).filter(move |&at| chains[at].family == family && chains[at].hook == Some(hook))
    }

    /// The chain a jump or goto to `name` in `from` leads to.
    fn target(&self, from: &'a Chain, name: &str) -> Option<usize> {
        self.by_name.get(&(KernelTable::of(from), name)).copied()
    }

    /// Every chain a packet at `hook` can reach, whatever it is: the base chains and every
    /// chain a rule of a reachable chain may jump or go to, in snapshot order.
    pub(crate) fn reachable(&self, family: Family, hook: Hook) -> Vec<usize> {
        let mut seen: HashSet<usize> = HashSet::new();
        let mut queue: VecDeque<usize> = self.base_chains(family, hook).collect();
        seen.extend(queue.iter().copied());
        while let Some(at) = queue.pop_front() {
            let chain = self.chain(at);
            for verdict in chain.rules.iter().flat_map(Rule::verdicts) {
                let (Verdict::Jump(target) | Verdict::Goto(target)) = verdict else {
                    continue;
                };
                if let Some(next) = self.target(chain, target) {
                    if seen.insert(next) {
                        queue.push_back(next);
                    }
                }
            }
        }
        let mut reachable: Vec<usize> = seen.into_iter().collect();
        reachable.sort_unstable();
        reachable
    }

    /// Walks `packet` through every base chain on `hook` for its family, one walk a chain
    /// (an accept in one base chain does not spare the packet the others).
    pub(crate) fn walk(&self, hook: Hook, packet: &Packet) -> Vec<Walk> {
        self.base_chains(packet.family, hook)
            .map(|base| {
                let mut walker =
                    Walker { ruleset: self, packet, budget: WALK_BUDGET, met: Vec::new(), accept_possible: false };
                let decided = walker.chain(base, 0) == Flow::Stop;
                Walk { base, met: walker.met, accept_possible: walker.accept_possible, decided }
            })
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Go on with the next rule.
    Next,
    /// The chain returns to its caller.
    Return,
    /// A verdict was certainly reached.
    Stop,
}

struct Walker<'w, 'a> {
    ruleset: &'w Ruleset<'a>,
    packet: &'w Packet<'w>,
    budget: usize,
    met: Vec<Met>,
    accept_possible: bool,
}

impl Walker<'_, '_> {
    fn chain(&mut self, at: usize, depth: usize) -> Flow {
        if depth > MAX_JUMP_DEPTH {
            return Flow::Next;
        }
        let chain = self.ruleset.chain(at);
        for (position, rule) in chain.rules.iter().enumerate() {
            if self.budget == 0 {
                return Flow::Next;
            }
            self.budget -= 1;
            let fit = fit(rule, self.packet);
            if fit == Fit::No {
                continue;
            }
            self.met.push(Met { chain: at, rule: position, fit, after_accept: self.accept_possible });
            let certain = fit == Fit::Yes;
            match &rule.verdict {
                Verdict::Accept => {
                    self.accept_possible = true;
                    if certain {
                        return Flow::Stop;
                    }
                }
                Verdict::Drop | Verdict::Reject { .. } if certain => return Flow::Stop,
                Verdict::Jump(target) | Verdict::Goto(target) => {
                    if let Some(next) = self.ruleset.target(chain, target) {
                        if self.chain(next, depth + 1) == Flow::Stop && certain {
                            return Flow::Stop;
                        }
                    }
                    // A goto never comes back to this chain.
                    if certain && matches!(rule.verdict, Verdict::Goto(_)) {
                        return Flow::Return;
                    }
                }
                Verdict::Return if certain => return Flow::Return,
                Verdict::Drop | Verdict::Reject { .. } | Verdict::Return | Verdict::Other(_) => {}
            }
            for verdict in &rule.map_verdicts {
                match verdict {
                    Verdict::Accept => self.accept_possible = true,
                    Verdict::Jump(target) | Verdict::Goto(target) => {
                        if let Some(next) = self.ruleset.target(chain, target) {
                            self.chain(next, depth + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        Flow::Next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::{parse_iptables_save, parse_nft_json};

    fn udp_to(port: u16) -> Packet<'static> {
        Packet {
            family: Family::Ipv4,
            proto: L4Proto::Udp,
            src: None,
            dst: None,
            sport: None,
            dport: Some(port),
            in_iface: None,
            out_iface: None,
        }
    }

    fn forward(save: &str) -> Snapshot {
        let save = format!("*filter\n:FORWARD ACCEPT [0:0]\n:SUB - [0:0]\n{save}COMMIT\n");
        Snapshot { chains: parse_iptables_save(&save, Backend::IptablesNft, Family::Ipv4), errors: Vec::new() }
    }

    fn met_positions(ruleset: &Ruleset, walk: &Walk) -> Vec<(String, u32, Fit)> {
        walk.met
            .iter()
            .map(|met| {
                let rule = ruleset.rule(met);
                (rule.chain.clone(), rule.position, met.fit)
            })
            .collect()
    }

    fn reached<'a>(ruleset: &Ruleset<'a>, family: Family) -> Vec<&'a Chain> {
        ruleset.reachable(family, Hook::Forward).into_iter().map(|at| ruleset.chain(at)).collect()
    }

    #[test]
    fn a_certain_accept_ends_the_walk_and_what_is_unknown_may_match() {
        let snapshot = forward(
            "-A FORWARD -p tcp -j DROP\n-A FORWARD -d 10.0.0.1/32 -j DROP\n-A FORWARD -p udp -m udp --dport 53 -j ACCEPT\n\
             -A FORWARD -j DROP\n",
        );
        let ruleset = Ruleset::new(&snapshot);
        let [walk] = ruleset.walk(Hook::Forward, &udp_to(53)).try_into().expect("one base chain");
        assert_eq!(
            met_positions(&ruleset, &walk),
            [("FORWARD".to_string(), 2, Fit::May), ("FORWARD".to_string(), 3, Fit::Yes)]
        );
        assert!(walk.decided && walk.accept_possible);
        assert!(!walk.met[1].after_accept);

        let [walk] = ruleset.walk(Hook::Forward, &udp_to(54)).try_into().expect("one base chain");
        let last = walk.met.last().expect("the catch-all");
        assert_eq!((ruleset.rule(last).position, last.fit, last.after_accept), (4, Fit::Yes, false));
    }

    #[test]
    fn jumps_returns_and_gotos_are_followed() {
        let snapshot = forward(
            "-A FORWARD -j SUB\n-A FORWARD -p udp -j DROP\n-A SUB -p udp -m udp --dport 53 -j RETURN\n-A SUB -j ACCEPT\n",
        );
        let ruleset = Ruleset::new(&snapshot);
        let [walk] = ruleset.walk(Hook::Forward, &udp_to(53)).try_into().expect("one base chain");
        let positions: Vec<(String, u32)> =
            met_positions(&ruleset, &walk).into_iter().map(|(c, p, _)| (c, p)).collect();
        assert_eq!(positions, [("FORWARD".to_string(), 1), ("SUB".to_string(), 1), ("FORWARD".to_string(), 2)]);
        assert!(walk.decided && !walk.accept_possible);

        let [walk] = ruleset.walk(Hook::Forward, &udp_to(54)).try_into().expect("one base chain");
        let positions: Vec<(String, u32)> =
            met_positions(&ruleset, &walk).into_iter().map(|(c, p, _)| (c, p)).collect();
        assert_eq!(positions, [("FORWARD".to_string(), 1), ("SUB".to_string(), 2)], "past the return, to the accept");
        assert!(walk.decided && walk.accept_possible);

        let goto = forward("-A FORWARD -g SUB\n-A FORWARD -j DROP\n-A SUB -j RETURN\n");
        let ruleset = Ruleset::new(&goto);
        let [walk] = ruleset.walk(Hook::Forward, &udp_to(53)).try_into().expect("one base chain");
        assert_eq!(walk.met.len(), 2, "a goto does not come back");
        assert!(!walk.decided, "the return from a goto ends the base chain: its policy applies");
    }

    #[test]
    fn reachable_follows_every_jump_whatever_it_matches() {
        let snapshot = forward("-A FORWARD -i eth9 -j SUB\n");
        let ruleset = Ruleset::new(&snapshot);
        let names: Vec<&str> = reached(&ruleset, Family::Ipv4).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["FORWARD", "SUB"]);
        assert!(ruleset.reachable(Family::Ipv6, Hook::Forward).is_empty());
    }

    #[test]
    fn a_jump_stays_in_its_kernel_table() {
        // Two tables named `fw`, one ip and one inet, each with its own `sub`.
        let json = r#"{"nftables": [
{"chain": {"family": "ip", "table": "fw", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
{"chain": {"family": "ip", "table": "fw", "name": "sub", "handle": 2}},
{"chain": {"family": "inet", "table": "fw", "name": "sub", "handle": 3}},
{"rule": {"family": "ip", "table": "fw", "chain": "fwd", "handle": 4, "expr": [{"jump": {"target": "sub"}}]}}]}"#;
        let snapshot = Snapshot { chains: parse_nft_json(json).expect("parse"), errors: Vec::new() };
        let ruleset = Ruleset::new(&snapshot);
        let tables: Vec<&str> = reached(&ruleset, Family::Ipv4).iter().map(|c| c.table.as_str()).collect();
        assert_eq!(tables, ["ip fw", "ip fw"]);
    }

    #[test]
    fn tests_on_unknown_fields_may_hold_and_other_families_never_do() {
        let packet = udp_to(53);
        let test = |negated, condition| holds(&Test { negated, condition }, &packet);
        let v6 = AddrRange::cidr("fd00::".parse().expect("addr"), 8).expect("cidr");
        let v4 = AddrRange::cidr("10.0.0.0".parse().expect("addr"), 8).expect("cidr");
        assert_eq!(test(false, Condition::Dst(vec![v4.clone()])), None);
        assert_eq!(test(true, Condition::Dst(vec![v6.clone()])), Some(false));
        assert_eq!(test(false, Condition::Sport(vec![PortRange { first: 1, last: 9 }])), None);
        assert_eq!(test(true, Condition::Dport(vec![PortRange { first: 53, last: 53 }])), Some(false));
        let known = Packet { dst: Some("10.1.2.3".parse().expect("addr")), in_iface: Some("veth1"), ..packet };
        let iface = IfacePattern { name: "veth".to_string(), prefix: true };
        assert_eq!(holds(&Test { negated: false, condition: Condition::Dst(vec![v4]) }, &known), Some(true));
        assert_eq!(holds(&Test { negated: true, condition: Condition::InIface(vec![iface]) }, &known), Some(false));
    }
}
