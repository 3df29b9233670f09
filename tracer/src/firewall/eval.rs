//! Decides what a packet meets in the firewall: the chains it can reach from a hook, and,
//! walking them the way the kernel does, the rules it may match, the verdicts that may end
//! its way and whether it may fall through to a chain's policy.
//!
//! A packet may be known only in part (a node check knows a port, not the addresses), and
//! some of what rules test is never in a packet's headers (its conntrack state, its mark,
//! whether an address is the node's). A walk follows every way the packet can take: a test
//! on something unknown splits the walk into the ways where it holds and where it fails,
//! each remembering what it assumed, so that the same unknown is never taken both ways on
//! one way (`ct state new` in two rules); what cannot be remembered (a random choice, a rate
//! limit, a match tracer does not read) may go either way at each rule. A rule that no way
//! reaches with its conditions holding is never met. What a rule it meets means (the one
//! that dropped a traced packet, a default-deny chain) is for the callers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;

use crate::model::firewall::MapElement;
use crate::model::packet::L4Proto;

use super::model::{
    has_ports, nft_family_name, AddrRange, Backend, Chain, Condition, CtState, CtStates, Family, Hook, IfacePattern,
    KeyPart, Lookup, MarkChange, MarkMatch, OtherFlow, PortRange, Rule, Side, Snapshot, Test, Verdict,
};
use super::sets::{Atom, Found, KeyField, SetElement};

/// A packet as far as its headers and interfaces are known.
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

/// What is known of a packet beyond its headers; each field unknown by default, and a test
/// on what is unknown may go either way.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PacketState<'a> {
    /// Its conntrack state as the hook's rules see it.
    pub conntrack: Option<CtState>,
    /// Its mark as it enters the hook.
    pub mark: Option<u32>,
    /// The node's own addresses (`fib daddr type local`, `-m addrtype --dst-type LOCAL`).
    /// Loopback addresses are local without it.
    pub local_addrs: Option<&'a HashSet<IpAddr>>,
}

/// How a rule's matches fit a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fit {
    /// A test rules the packet out.
    No,
    /// Depends on what is not known of the packet, or on conditions tracer cannot check
    /// (rate limits, random choices, matches it does not read).
    May,
    /// Every condition holds.
    Yes,
}

/// How `rule` fits `packet`, when nothing but its headers is known.
pub(crate) fn fit(rule: &Rule, packet: &Packet) -> Fit {
    let world = World::initial(packet, &PacketState::default());
    let mut truths = Vec::new();
    for (world, truth) in rule_truths(rule, packet, world) {
        match (truth, &rule.vmap) {
            (Truth::No, _) | (_, None) => truths.push(truth),
            (_, Some(vmap)) => {
                for (_, found) in lookup(vmap, packet, world) {
                    truths.push(match found {
                        Found::Element(_) => truth,
                        Found::Missing => Truth::No,
                        Found::Possibly { .. } => Truth::May,
                    });
                }
            }
        }
    }
    if truths.iter().all(|t| *t == Truth::No) {
        Fit::No
    } else if truths.iter().all(|t| *t == Truth::Yes) {
        Fit::Yes
    } else {
        Fit::May
    }
}

/// Whether `test` holds for `packet`, when nothing but its headers is known; `None` when
/// the packet does not tell.
pub(crate) fn holds(test: &Test, packet: &Packet) -> Option<bool> {
    match test_outcome(test, packet, &World::initial(packet, &PacketState::default())) {
        Outcome::Decided(Truth::Yes) => Some(true),
        Outcome::Decided(Truth::No) => Some(false),
        Outcome::Decided(Truth::May) | Outcome::Split(_) => None,
    }
}

/// Whether a test holds on one way through the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Truth {
    Yes,
    No,
    /// Either, and nothing remembers which (a random choice, a rate limit).
    May,
}

impl Truth {
    fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::No, _) | (_, Truth::No) => Truth::No,
            (Truth::May, _) | (_, Truth::May) => Truth::May,
            _ => Truth::Yes,
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::Yes => Truth::No,
            Truth::No => Truth::Yes,
            Truth::May => Truth::May,
        }
    }

    fn of(held: bool) -> Truth {
        if held {
            Truth::Yes
        } else {
            Truth::No
        }
    }
}

/// What one way through the chains knows or has assumed of what a packet's headers do not
/// tell. Two ways that assume the same are one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    /// Conntrack states still possible, as bits of [`CtState::bit`].
    ct: u8,
    /// Bits of the mark that are known, and their values.
    mark_known: u32,
    mark_bits: u32,
    /// Mark tests assumed to fail (a failed test says nothing of single bits), sorted.
    mark_unequal: Vec<MarkMatch>,
    src_local: Option<bool>,
    dst_local: Option<bool>,
}

/// How a test comes out on one way.
enum Outcome {
    Decided(Truth),
    /// It depends on something the way has not assumed yet: it holds in some of these
    /// ways and fails in the others (each decides it).
    Split(Vec<World>),
}

impl World {
    fn initial(packet: &Packet, state: &PacketState) -> World {
        let local = |addr: Option<IpAddr>| {
            let addr = addr?;
            if addr.is_loopback() {
                return Some(true);
            }
            state.local_addrs.map(|addrs| addrs.contains(&addr))
        };
        World {
            ct: state.conntrack.map_or(CtStates::ALL.0, CtState::bit),
            mark_known: if state.mark.is_some() { u32::MAX } else { 0 },
            mark_bits: state.mark.unwrap_or(0),
            mark_unequal: Vec::new(),
            src_local: local(packet.src),
            dst_local: local(packet.dst),
        }
    }

    fn with_ct(&self, ct: u8) -> World {
        World { ct, ..self.clone() }
    }

    /// The ways each conntrack state still possible makes, when more than one is.
    fn ct_split(&self) -> Option<Vec<World>> {
        (self.ct.count_ones() > 1).then(|| {
            CtState::ALL.iter().map(|s| s.bit()).filter(|bit| self.ct & bit != 0).map(|bit| self.with_ct(bit)).collect()
        })
    }

    /// How `mark & mask == value` comes out: `None` when the way has not assumed enough.
    fn mark_equals(&self, test: MarkMatch) -> Option<bool> {
        if test.value & !test.mask != 0 {
            return Some(false);
        }
        let known = self.mark_known & test.mask;
        if self.mark_bits & known != test.value & known {
            return Some(false);
        }
        if known == test.mask {
            return Some(true);
        }
        if self.mark_unequal.contains(&test) {
            return Some(false);
        }
        None
    }

    fn assume_mark(&self, test: MarkMatch, held: bool) -> World {
        let mut world = self.clone();
        if held {
            world.mark_known |= test.mask;
            world.mark_bits = (world.mark_bits & !test.mask) | test.value;
        } else {
            world.mark_unequal.push(test);
            world.mark_unequal.sort_unstable_by_key(|m| (m.mask, m.value));
            world.mark_unequal.dedup();
        }
        world
    }

    fn change_mark(&mut self, change: MarkChange) {
        match change {
            MarkChange::Xmark { mask, xor } => {
                // Bits under the mask become xor's; elsewhere xor flips known bits and
                // leaves unknown ones unknown.
                self.mark_known |= mask;
                self.mark_bits = ((self.mark_bits & !mask) ^ xor) & self.mark_known;
                self.mark_unequal.retain(|m| m.mask & (mask | xor) == 0);
            }
            MarkChange::Unknown => {
                self.mark_known = 0;
                self.mark_bits = 0;
                self.mark_unequal.clear();
            }
        }
    }

    fn local(&self, side: Side) -> Option<bool> {
        match side {
            Side::Src => self.src_local,
            Side::Dst => self.dst_local,
        }
    }

    fn assume_local(&self, side: Side, local: bool) -> World {
        let mut world = self.clone();
        match side {
            Side::Src => world.src_local = Some(local),
            Side::Dst => world.dst_local = Some(local),
        }
        world
    }
}

fn test_outcome(test: &Test, packet: &Packet, world: &World) -> Outcome {
    let in_ports = |ranges: &[PortRange], port: Option<u16>| match port.filter(|_| has_ports(packet.proto.number())) {
        Some(port) => Truth::of(ranges.iter().any(|r| (r.first..=r.last).contains(&port))),
        None => Truth::May,
    };
    let in_iface = |patterns: &[IfacePattern], name: Option<&str>| match name {
        Some(name) => Truth::of(iface_matches(patterns, name)),
        None => Truth::May,
    };
    let truth = match &test.condition {
        Condition::Family(family) => Truth::of(*family == packet.family),
        Condition::Proto(protos) => Truth::of(protos.contains(&packet.proto.number())),
        // The negation is part of an address test: a rule on the other family's addresses
        // never matches, negated or not.
        Condition::Src(ranges) => return Outcome::Decided(addr_holds(ranges, packet.src, packet.family, test.negated)),
        Condition::Dst(ranges) => return Outcome::Decided(addr_holds(ranges, packet.dst, packet.family, test.negated)),
        Condition::Sport(ranges) => in_ports(ranges, packet.sport),
        Condition::Dport(ranges) => in_ports(ranges, packet.dport),
        Condition::InIface(patterns) => in_iface(patterns, packet.in_iface),
        Condition::OutIface(patterns) => in_iface(patterns, packet.out_iface),
        Condition::CtState(states) => {
            let (inside, outside) = (world.ct & states.0, world.ct & !states.0);
            match (inside, outside) {
                (_, 0) => Truth::Yes,
                (0, _) => Truth::No,
                _ => return Outcome::Split(vec![world.with_ct(inside), world.with_ct(outside)]),
            }
        }
        Condition::Mark(alternatives) => {
            let outcomes: Vec<Option<bool>> = alternatives.iter().map(|m| world.mark_equals(*m)).collect();
            let open: Vec<MarkMatch> =
                alternatives.iter().zip(&outcomes).filter(|(_, o)| o.is_none()).map(|(m, _)| *m).collect();
            if outcomes.contains(&Some(true)) {
                Truth::Yes
            } else if let [only] = open.as_slice() {
                return Outcome::Split(vec![world.assume_mark(*only, true), world.assume_mark(*only, false)]);
            } else if open.is_empty() {
                Truth::No
            } else {
                Truth::May
            }
        }
        Condition::LocalAddr(side) => match world.local(*side) {
            Some(local) => Truth::of(local),
            None => return Outcome::Split(vec![world.assume_local(*side, true), world.assume_local(*side, false)]),
        },
        Condition::Random(_) => Truth::May,
        Condition::IpSet(set) => set.holds(packet).map_or(Truth::May, Truth::of),
        Condition::Lookup(lookup) => match key_fields(&lookup.key, packet, world) {
            Err(split) => return Outcome::Split(split),
            Ok(key) => match lookup.set.0.find(&key) {
                Found::Element(_) => Truth::Yes,
                Found::Missing => Truth::No,
                Found::Possibly { .. } => Truth::May,
            },
        },
    };
    Outcome::Decided(if test.negated { truth.not() } else { truth })
}

fn addr_holds(ranges: &[AddrRange], addr: Option<IpAddr>, family: Family, negated: bool) -> Truth {
    // nft checks the family first, iptables keeps the families apart.
    let v4 = addr.map_or(family == Family::Ipv4, |a| a.is_ipv4());
    let same_family: Vec<&AddrRange> = ranges.iter().filter(|r| r.first.is_ipv4() == v4).collect();
    if same_family.is_empty() {
        return Truth::No;
    }
    match addr {
        Some(addr) => Truth::of(same_family.iter().any(|r| r.contains(addr)) != negated),
        None => Truth::May,
    }
}

fn iface_matches(patterns: &[IfacePattern], name: &str) -> bool {
    patterns.iter().any(|p| if p.prefix { name.starts_with(&p.name) } else { name == p.name })
}

/// The fields of a lookup key as the packet and the way give them; `Err` with the ways to
/// take first when a field is the conntrack state and more than one is still possible.
fn key_fields(key: &[KeyPart], packet: &Packet, world: &World) -> Result<Vec<KeyField>, Vec<World>> {
    let known = |value: Option<Atom>| value.map_or(KeyField::Unknown, KeyField::Known);
    let port =
        |port: Option<u16>| known(port.filter(|_| has_ports(packet.proto.number())).map(|p| Atom::Num(p.into())));
    let iface = |name: Option<&str>| known(name.map(|n| Atom::Text(n.to_string())));
    key.iter()
        .map(|part| {
            Ok(match part {
                KeyPart::Src => known(packet.src.map(Atom::addr)),
                KeyPart::Dst => known(packet.dst.map(Atom::addr)),
                KeyPart::Sport => port(packet.sport),
                KeyPart::Dport => port(packet.dport),
                KeyPart::L4Proto => KeyField::Known(Atom::Num(packet.proto.number().into())),
                KeyPart::NfProto => KeyField::Known(Atom::Num(packet.family.nfproto().into())),
                KeyPart::InIface => iface(packet.in_iface),
                KeyPart::OutIface => iface(packet.out_iface),
                KeyPart::Mark if world.mark_known == u32::MAX => KeyField::Known(Atom::Num(world.mark_bits.into())),
                KeyPart::Mark | KeyPart::Unknown(_) => KeyField::Unknown,
                KeyPart::CtState => match world.ct_split() {
                    Some(split) => return Err(split),
                    None => KeyField::Known(Atom::Num(world.ct.into())),
                },
                KeyPart::Numgen { modulus, offset } => {
                    let first = u128::from(*offset);
                    match modulus.checked_sub(1) {
                        Some(0) => KeyField::Known(Atom::Num(first)),
                        Some(span) => KeyField::AnyOf(first, first + u128::from(span)),
                        None => KeyField::Unknown,
                    }
                }
            })
        })
        .collect()
}

/// Where the packet's key is in a lookup's set, on each way (a way that has not settled
/// its conntrack state is split first).
fn lookup(lookup: &Lookup, packet: &Packet, world: World) -> Vec<(World, Found)> {
    let mut pending = vec![world];
    let mut found = Vec::new();
    while let Some(world) = pending.pop() {
        match key_fields(&lookup.key, packet, &world) {
            Ok(key) => found.push((world, lookup.set.0.find(&key))),
            Err(split) => pending.extend(split),
        }
    }
    found
}

/// Splits one rule's tests may make of a way: each of a split's ways decides the test that
/// split it, so a rule splits at most once per test; this only guards against a test that
/// would not.
const MAX_SPLITS: usize = 64;

/// How a rule's tests come out on a way: the ways it splits into, each with its truth.
fn rule_truths(rule: &Rule, packet: &Packet, world: World) -> Vec<(World, Truth)> {
    let mut done = Vec::new();
    let mut pending = vec![(world, Truth::Yes, 0usize)];
    let mut splits = 0;
    while let Some((world, truth, at)) = pending.pop() {
        let Some(test) = rule.matches.tests.get(at) else {
            let unparsed = if rule.matches.unparsed.is_empty() { Truth::Yes } else { Truth::May };
            done.push((world, truth.and(unparsed)));
            continue;
        };
        match test_outcome(test, packet, &world) {
            Outcome::Decided(Truth::No) => done.push((world, Truth::No)),
            Outcome::Decided(held) => pending.push((world, truth.and(held), at + 1)),
            Outcome::Split(_) if splits >= MAX_SPLITS => pending.push((world, truth.and(Truth::May), at + 1)),
            // The test is evaluated again on each of the ways, which decide it.
            Outcome::Split(worlds) => {
                splits += 1;
                pending.extend(worlds.into_iter().map(|w| (w, truth, at)));
            }
        }
    }
    done
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

/// Rule evaluations (a rule on one way) one walk may spend: a ruleset with thousands of
/// per-pod chains stays cheap.
const WALK_BUDGET: usize = 200_000;
/// Deeper than the kernel allows (nf_tables 16, x_tables' stack 32 with room to spare).
const MAX_JUMP_DEPTH: usize = 32;

/// The chains of a snapshot, found by the names jumps and gotos give them.
pub(crate) struct Ruleset<'a> {
    snapshot: &'a Snapshot,
    by_name: HashMap<(KernelTable<'a>, &'a str), usize>,
    /// The chains on a hook, in snapshot order: a handful among thousands of chains.
    hooked: Vec<usize>,
}

/// A rule a walk met that may match the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Met {
    /// Index of the chain in the snapshot.
    pub chain: usize,
    /// Index of the rule in its chain.
    pub rule: usize,
    /// `Yes` when the rule matches on every way that reaches it.
    pub fit: Fit,
    /// A rule met before it may accept the packet, which then never gets here.
    pub after_accept: bool,
    /// Index in [`Walk::met`] of the rule whose jump or goto (its own or its verdict map's)
    /// led into this rule's chain; `None` in the base chain.
    pub via: Option<usize>,
    /// The element of the rule's verdict map that chose the verdict the packet met, when
    /// the packet's key finds exactly one.
    pub element: Option<MapElement>,
}

/// A verdict that may end the packet's way through a base chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct End {
    /// Index in [`Walk::met`] of the rule that gave it.
    pub met: usize,
    /// The verdict as given: the rule's own or its map element's.
    pub verdict: Verdict,
    pub element: Option<MapElement>,
    /// Nothing unknown was assumed on the way: the packet certainly ends here.
    pub certain: bool,
}

/// One base chain, walked.
#[derive(Clone, Debug)]
pub(crate) struct Walk {
    /// Index of the base chain in the snapshot.
    pub base: usize,
    /// The rules the packet may match, in the order the kernel meets them, jumped-to chains
    /// included.
    pub met: Vec<Met>,
    /// Every verdict that may end the packet's way (accepts, drops, rejects, NAT), each
    /// once per rule and map element, in the order met.
    pub ends: Vec<End>,
    /// Some rule may accept the packet.
    pub accept_possible: bool,
    /// No way reaches the end of the base chain: the packet never meets its policy.
    pub decided: bool,
    /// A way that assumed nothing reaches the end of the base chain: the packet certainly
    /// meets its policy.
    pub policy_certain: bool,
    /// Every way was followed to its end. A walk that ran out of budget, jumped too deep or
    /// to a chain the snapshot does not have is not complete: its ends and `decided` may
    /// miss ways.
    pub complete: bool,
    /// Chains of nf_tables tables a way jumped or went to that the snapshot does not have: a
    /// reading of only some chains (see `scoped`) reads these next.
    pub unread: Vec<ChainId>,
}

/// An nf_tables chain by its kernel names: what `nft list chain FAMILY TABLE NAME` takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ChainId {
    /// `ip`, `ip6` or `inet`.
    pub family: String,
    pub table: String,
    pub name: String,
}

impl Walk {
    /// The rules from the base chain to `met`: each jump or goto on the way, then `met`.
    pub(crate) fn path(&self, met: usize) -> Vec<usize> {
        let mut path = vec![met];
        let mut at = met;
        while let Some(via) = self.met.get(at).and_then(|m| m.via) {
            // Met indices only grow along a way; anything else would be a loop.
            if via >= at {
                break;
            }
            path.push(via);
            at = via;
        }
        path.reverse();
        path
    }
}

impl<'a> Ruleset<'a> {
    pub(crate) fn new(snapshot: &'a Snapshot) -> Ruleset<'a> {
        let by_name = snapshot
            .chains
            .iter()
            .enumerate()
            .map(|(at, chain)| ((KernelTable::of(chain), chain.name.as_str()), at))
            .collect();
        let hooked = (0..snapshot.chains.len()).filter(|&at| snapshot.chains[at].hook.is_some()).collect();
        Ruleset { snapshot, by_name, hooked }
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
        self.hooked.iter().copied().filter(move |&at| chains[at].family == family && chains[at].hook == Some(hook))
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

    /// Walks `packet`, of which nothing but its headers is known, through every base chain
    /// on `hook` for its family.
    pub(crate) fn walk(&self, hook: Hook, packet: &Packet) -> Vec<Walk> {
        self.walk_with(hook, packet, &PacketState::default())
    }

    /// Walks `packet` in `state` through every base chain on `hook` for its family, one walk
    /// a chain (an accept in one base chain does not spare the packet the others).
    pub(crate) fn walk_with(&self, hook: Hook, packet: &Packet, state: &PacketState) -> Vec<Walk> {
        self.base_chains(packet.family, hook)
            .map(|base| {
                let mut walker = Walker {
                    ruleset: self,
                    packet,
                    budget: WALK_BUDGET,
                    met: Vec::new(),
                    ends: Vec::new(),
                    end_at: HashMap::new(),
                    accept_possible: false,
                    complete: true,
                    unread: Vec::new(),
                };
                let start = vec![Way { world: World::initial(packet, state), certain: true }];
                let fell_through = walker.chain(base, start, None, 0);
                Walk {
                    base,
                    met: walker.met,
                    ends: walker.ends,
                    accept_possible: walker.accept_possible,
                    decided: fell_through.is_empty(),
                    policy_certain: fell_through.iter().any(|w| w.certain),
                    complete: walker.complete,
                    unread: walker.unread,
                }
            })
            .collect()
    }
}

/// A way the packet takes, as far as it has come.
#[derive(Clone, Debug)]
struct Way {
    world: World,
    /// Nothing was assumed and no "may" was taken on it.
    certain: bool,
}

/// Ways that assume the same are one; it is certain if one of them was.
fn merge(ways: Vec<Way>) -> Vec<Way> {
    let mut merged: Vec<Way> = Vec::with_capacity(ways.len());
    for way in ways {
        match merged.iter_mut().find(|w| w.world == way.world) {
            Some(same) => same.certain |= way.certain,
            None => merged.push(way),
        }
    }
    merged
}

/// Where a way goes from a rule: on to the next rule, or to a verdict.
enum Step<'a> {
    Next(Way),
    /// The rule's own verdict, or its map's for these elements.
    Verdict {
        way: Way,
        verdict: &'a Verdict,
        element: Option<usize>,
    },
}

struct Walker<'w, 'a> {
    ruleset: &'w Ruleset<'a>,
    packet: &'w Packet<'w>,
    budget: usize,
    met: Vec<Met>,
    ends: Vec<End>,
    /// (met, verdict, element key) → index in `ends`, so each end is listed once.
    end_at: HashMap<(usize, String, Option<String>), usize>,
    accept_possible: bool,
    complete: bool,
    unread: Vec<ChainId>,
}

/// A verdict some ways take at a rule: the ways, and the map elements that chose it.
struct Taken<'a> {
    verdict: &'a Verdict,
    elements: Vec<usize>,
    ways: Vec<Way>,
}

impl<'a> Walker<'_, 'a> {
    /// Walks `entering` through chain `at`; returns the ways that come back out of it (fall
    /// off its end or return). `via` is the met rule that jumped or went here.
    fn chain(&mut self, at: usize, entering: Vec<Way>, via: Option<usize>, depth: usize) -> Vec<Way> {
        if depth > MAX_JUMP_DEPTH {
            self.complete = false;
            return entering;
        }
        let chain = self.ruleset.chain(at);
        let mut ways = entering;
        let mut returned: Vec<Way> = Vec::new();
        for (position, rule) in chain.rules.iter().enumerate() {
            if ways.is_empty() {
                break;
            }
            if self.budget < ways.len() {
                self.complete = false;
                break;
            }
            self.budget -= ways.len();
            let (steps, all_hold) = self.steps(rule, ways);
            let mut next = Vec::new();
            let mut taken: Vec<Taken<'a>> = Vec::new();
            let mut taken_at: HashMap<&'a Verdict, usize> = HashMap::new();
            for step in steps {
                match step {
                    Step::Next(way) => next.push(way),
                    Step::Verdict { way, verdict, element } => match taken_at.get(verdict) {
                        Some(&at) => {
                            taken[at].ways.push(way);
                            taken[at].elements.extend(element);
                        }
                        None => {
                            taken_at.insert(verdict, taken.len());
                            taken.push(Taken { verdict, elements: element.into_iter().collect(), ways: vec![way] });
                        }
                    },
                }
            }
            if taken.is_empty() {
                ways = merge(next);
                continue;
            }
            for group in &mut taken {
                group.elements.sort_unstable();
                group.elements.dedup();
            }
            let met = self.met.len();
            let element = match taken.as_slice() {
                [only] => self.element(rule, only),
                _ => None,
            };
            let fit = if all_hold { Fit::Yes } else { Fit::May };
            self.met.push(Met { chain: at, rule: position, fit, after_accept: self.accept_possible, via, element });
            for group in taken {
                let element = self.element(rule, &group);
                let mut ways = merge(group.ways);
                if let Some(change) = rule.mark_change {
                    for way in &mut ways {
                        way.world.change_mark(change);
                    }
                }
                match group.verdict {
                    Verdict::Accept => {
                        self.accept_possible = true;
                        self.end(met, group.verdict, element, &ways);
                    }
                    Verdict::Drop | Verdict::Reject { .. } => self.end(met, group.verdict, element, &ways),
                    Verdict::Jump(target) => next.extend(self.follow(chain, target, ways, met, depth)),
                    Verdict::Goto(target) => returned.extend(self.follow(chain, target, ways, met, depth)),
                    Verdict::Return => returned.extend(ways),
                    Verdict::Other(text) => match Verdict::other_flow(text) {
                        OtherFlow::Continue => next.extend(ways),
                        OtherFlow::Ends => {
                            // NAT accepts the packet; a queue hands it on.
                            self.accept_possible = true;
                            self.end(met, group.verdict, element, &ways);
                        }
                        OtherFlow::Either => {
                            let ways: Vec<Way> = ways.into_iter().map(|w| Way { certain: false, ..w }).collect();
                            self.end(met, group.verdict, element, &ways);
                            next.extend(ways);
                        }
                    },
                }
            }
            ways = merge(next);
        }
        returned.extend(ways);
        merge(returned)
    }

    /// The ways a jump or goto to `target` comes back out of it with.
    fn follow(&mut self, from: &'a Chain, target: &str, ways: Vec<Way>, met: usize, depth: usize) -> Vec<Way> {
        match self.ruleset.target(from, target) {
            Some(next) => self.chain(next, ways, Some(met), depth + 1),
            None => {
                // A chain the snapshot does not have: what it does is not known.
                self.complete = false;
                let table = KernelTable::of(from);
                if !table.legacy {
                    let id = ChainId {
                        family: table.nft_family.to_string(),
                        table: table.name.to_string(),
                        name: target.to_string(),
                    };
                    if !self.unread.contains(&id) {
                        self.unread.push(id);
                    }
                }
                ways
            }
        }
    }

    fn end(&mut self, met: usize, verdict: &Verdict, element: Option<MapElement>, ways: &[Way]) {
        let certain = ways.iter().any(|w| w.certain);
        let key = (met, verdict.nft_text(), element.as_ref().map(|e| e.key.clone()));
        match self.end_at.get(&key) {
            Some(&at) => self.ends[at].certain |= certain,
            None => {
                self.end_at.insert(key, self.ends.len());
                self.ends.push(End { met, verdict: verdict.clone(), element, certain });
            }
        }
    }

    /// The element that chose a verdict, when exactly one did.
    fn element(&self, rule: &Rule, taken: &Taken) -> Option<MapElement> {
        let vmap = rule.vmap.as_ref()?;
        let [at] = taken.elements.as_slice() else { return None };
        let element: &SetElement = vmap.set.0.elements.get(*at)?;
        let set = &vmap.set.0;
        Some(MapElement {
            map: if set.name.is_empty() { "anonymous map".to_string() } else { set.name.clone() },
            key: element.text.clone(),
            verdict: element.verdict.as_ref().map(Verdict::nft_text),
            comment: element.comment.clone(),
        })
    }

    /// Where each way goes from `rule`, and whether the rule's conditions (and its map's
    /// lookup) hold on every way.
    fn steps(&self, rule: &'a Rule, ways: Vec<Way>) -> (Vec<Step<'a>>, bool) {
        let mut steps = Vec::new();
        let mut all_hold = true;
        for way in ways {
            let was_certain = way.certain;
            for (world, truth) in rule_truths(rule, self.packet, way.world.clone()) {
                // A split makes assumptions: what follows is certain only given them.
                let certain = was_certain && world == way.world;
                if truth == Truth::No {
                    all_hold = false;
                    steps.push(Step::Next(Way { world, certain }));
                    continue;
                }
                let held = certain && truth == Truth::Yes;
                if truth == Truth::May {
                    all_hold = false;
                    steps.push(Step::Next(Way { world: world.clone(), certain: false }));
                }
                let Some(vmap) = &rule.vmap else {
                    steps.push(Step::Verdict {
                        way: Way { world, certain: held },
                        verdict: &rule.verdict,
                        element: None,
                    });
                    continue;
                };
                let before = world.clone();
                for (world, found) in lookup(vmap, self.packet, world) {
                    // Looking up a conntrack state splits the way by state: an assumption.
                    let same = world == before;
                    match found {
                        Found::Element(at) => match vmap.set.0.elements.get(at).and_then(|e| e.verdict.as_ref()) {
                            Some(verdict) => steps.push(Step::Verdict {
                                way: Way { world, certain: held && same },
                                verdict,
                                element: Some(at),
                            }),
                            None => steps.push(Step::Next(Way { world, certain: false })),
                        },
                        Found::Missing => {
                            all_hold = false;
                            // Whether or not the conditions held, the packet goes on.
                            steps.push(Step::Next(Way { world, certain: certain && same }));
                        }
                        Found::Possibly { elements, missing } => {
                            all_hold = false;
                            for at in elements {
                                if let Some(verdict) = vmap.set.0.elements.get(at).and_then(|e| e.verdict.as_ref()) {
                                    let way = Way { world: world.clone(), certain: false };
                                    steps.push(Step::Verdict { way, verdict, element: Some(at) });
                                }
                            }
                            if missing {
                                steps.push(Step::Next(Way { world, certain: false }));
                            }
                        }
                    }
                }
            }
        }
        (steps, all_hold)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::firewall::ipset::{attach_ipsets, parse_ipset_save};
    use crate::firewall::{parse_iptables_save, parse_nft_json};
    use crate::system::netns::scratch::Netns;

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

    /// A DNS query from 10.244.0.5 to 10.96.0.10, from cni0 to eth0.
    fn dns_query() -> Packet<'static> {
        Packet {
            src: Some("10.244.0.5".parse().expect("addr")),
            dst: Some("10.96.0.10".parse().expect("addr")),
            sport: Some(40000),
            in_iface: Some("cni0"),
            out_iface: Some("eth0"),
            ..udp_to(53)
        }
    }

    fn walk_forward(snapshot: &Snapshot, packet: &Packet, state: &PacketState) -> (Vec<(String, u32)>, Walk) {
        let ruleset = Ruleset::new(snapshot);
        let [walk] = ruleset.walk_with(Hook::Forward, packet, state).try_into().expect("one base chain");
        assert!(walk.complete);
        let ends = walk
            .ends
            .iter()
            .map(|end| {
                let rule = ruleset.rule(&walk.met[end.met]);
                (rule.chain.clone(), rule.position)
            })
            .collect();
        (ends, walk)
    }

    fn at(chain: &str, position: u32) -> (String, u32) {
        (chain.to_string(), position)
    }

    fn in_state(conntrack: CtState) -> PacketState<'static> {
        PacketState { conntrack: Some(conntrack), ..PacketState::default() }
    }

    #[test]
    fn a_conntrack_state_is_assumed_once_on_a_way() {
        let snapshot = forward(
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
             -A FORWARD -m state --state NEW -j SUB\n\
             -A FORWARD -m conntrack --ctstate NEW -j REJECT --reject-with icmp-host-prohibited\n\
             -A FORWARD -m conntrack --ctstate INVALID -j DROP\n\
             -A SUB -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable\n",
        );
        // Unknown: an established or related packet is accepted, a new one rejected in SUB
        // (so never by FORWARD rule 3), an invalid one dropped; an untracked one gets through.
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 1), at("SUB", 1), at("FORWARD", 4)]);
        assert!(walk.ends.iter().all(|end| !end.certain));
        assert!(!walk.decided);

        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &in_state(CtState::New));
        assert_eq!(ends, [at("SUB", 1)]);
        assert!(walk.ends[0].certain && walk.decided);
        let (ends, _) = walk_forward(&snapshot, &dns_query(), &in_state(CtState::Established));
        assert_eq!(ends, [at("FORWARD", 1)]);
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &in_state(CtState::Untracked));
        assert!(ends.is_empty() && walk.policy_certain);
    }

    #[test]
    fn a_comment_is_never_a_condition() {
        let snapshot =
            forward("-A FORWARD -m comment --comment \"kube-system/kube-dns:dns has no endpoints\" -j DROP\n");
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 1)]);
        assert!(walk.ends[0].certain);
    }

    #[test]
    fn a_mark_set_on_the_way_is_known_further_on() {
        // kube-proxy's iptables layout: KUBE-MARK-MASQ marks, a later rule tests the mark.
        let snapshot = forward(
            "-A FORWARD -p udp -j SUB\n\
             -A FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
             -A FORWARD -j DROP\n\
             -A SUB -m mark ! --mark 0x1/0x1 -j MARK --set-xmark 0x4000/0x4000\n",
        );
        // Whatever the mark was: with bit 0 clear SUB sets bit 14 and the packet is accepted;
        // with bit 0 set it keeps its bit 14, whatever that is.
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 2), at("FORWARD", 3)]);
        assert!(!walk.ends[0].certain && walk.decided);
        let marked = |mark| PacketState { mark: Some(mark), ..PacketState::default() };
        assert_eq!(walk_forward(&snapshot, &dns_query(), &marked(0)).0, [at("FORWARD", 2)]);
        assert_eq!(walk_forward(&snapshot, &dns_query(), &marked(1)).0, [at("FORWARD", 3)]);
        assert_eq!(walk_forward(&snapshot, &dns_query(), &marked(0x4001)).0, [at("FORWARD", 2)]);
    }

    #[test]
    fn an_address_is_local_only_if_the_node_has_it() {
        let snapshot = forward(
            "-A FORWARD -m addrtype --dst-type LOCAL -j DROP\n\
             -A FORWARD -m addrtype ! --src-type LOCAL -j ACCEPT\n\
             -A FORWARD -j REJECT\n",
        );
        // Unknown: the destination may be the node's, the source too.
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 1), at("FORWARD", 2), at("FORWARD", 3)]);
        assert!(walk.decided);

        let node: HashSet<IpAddr> = ["10.96.0.10".parse().expect("addr")].into();
        let knowing = PacketState { local_addrs: Some(&node), ..PacketState::default() };
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &knowing);
        assert_eq!(ends, [at("FORWARD", 1)]);
        assert!(walk.ends[0].certain);

        let other: HashSet<IpAddr> = ["10.0.0.1".parse().expect("addr")].into();
        let knowing = PacketState { local_addrs: Some(&other), ..PacketState::default() };
        assert_eq!(walk_forward(&snapshot, &dns_query(), &knowing).0, [at("FORWARD", 2)]);
        // A loopback address is always the node's.
        let looped = Packet { src: Some("127.0.0.1".parse().expect("addr")), ..dns_query() };
        assert_eq!(walk_forward(&snapshot, &looped, &knowing).0, [at("FORWARD", 3)]);
    }

    #[test]
    fn a_random_choice_takes_every_branch() {
        // kube-proxy's iptables endpoint choice: one of two, each packet anew.
        let snapshot = forward(
            "-A FORWARD -m statistic --mode random --probability 0.50000000000 -j SUB\n\
             -A FORWARD -j DROP\n\
             -A SUB -j REJECT --reject-with icmp-host-prohibited\n",
        );
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("SUB", 1), at("FORWARD", 2)]);
        assert!(walk.ends.iter().all(|end| !end.certain) && walk.decided);
        let rule = &snapshot.chains[0].rules[0];
        assert_eq!(
            rule.matches.tests,
            [Test {
                negated: false,
                condition: Condition::Random("-m statistic --mode random --probability 0.50000000000".to_string())
            }]
        );
    }

    /// What `ipset save` prints for kube-proxy's ipvs mode's ClusterIP set and a network
    /// list with an exception.
    const IPSETS: &str = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.10,udp:53
add KUBE-CLUSTER-IP 10.96.0.10,tcp:53
create BLOCKED hash:net family inet hashsize 1024 maxelem 65536
add BLOCKED 10.244.0.0/16
add BLOCKED 10.244.0.0/24 nomatch
";

    #[test]
    fn an_ipset_match_looks_the_packet_up_in_the_nodes_set() {
        let mut snapshot = forward(
            "-A FORWARD -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\n\
             -A FORWARD -m set --match-set BLOCKED src -j DROP\n\
             -A FORWARD -m set ! --match-set BLOCKED dst -j REJECT\n",
        );
        // The sets not read: each may match.
        let (ends, _) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 1), at("FORWARD", 2), at("FORWARD", 3)]);

        attach_ipsets(&mut snapshot.chains, &Arc::new(parse_ipset_save(IPSETS)));
        let (ends, walk) = walk_forward(&snapshot, &dns_query(), &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 1)]);
        assert!(walk.ends[0].certain);
        // Port 54 is not in the set; 10.244.0.5 is in 10.244.0.0/16, but in its nomatch /24.
        let (ends, _) = walk_forward(&snapshot, &Packet { dport: Some(54), ..dns_query() }, &PacketState::default());
        assert_eq!(ends, [at("FORWARD", 3)]);
        let from_elsewhere = Packet { src: Some("10.244.9.9".parse().expect("addr")), dport: Some(54), ..dns_query() };
        assert_eq!(walk_forward(&snapshot, &from_elsewhere, &PacketState::default()).0, [at("FORWARD", 2)]);
    }

    #[test]
    fn real_nft_state_matches_sets_and_maps() {
        let ns = Netns::new();
        ns.nft(
            "table inet fw {
               set allowed { type ipv4_addr . inet_service; flags interval; elements = { 10.0.0.0/8 . 80-90 }; }
               chain forward-hook {
                 type filter hook forward priority 0; policy drop;
                 ct state vmap { invalid : drop, established : accept, related : accept }
                 iifname . oifname { \"cni0\" . \"eth0\" } jump to-world
                 fib daddr type local reject
               }
               chain to-world {
                 ip daddr . th dport @allowed accept
                 ip daddr . th dport != @allowed meta mark & 0x1 == 0x1 accept
               }
             }",
        );
        let json = ns.sh("nft -j -a list ruleset");
        let snapshot = Snapshot { chains: parse_nft_json(&json).expect("parse"), errors: Vec::new() };
        let ruleset = Ruleset::new(&snapshot);
        let to = |dst: &str, dport: u16| Packet {
            proto: L4Proto::Tcp,
            dst: Some(dst.parse().expect("addr")),
            dport: Some(dport),
            ..dns_query()
        };
        let ends = |packet: &Packet, state: &PacketState| {
            let [walk] = ruleset.walk_with(Hook::Forward, packet, state).try_into().expect("one base chain");
            let ends: Vec<(String, u32, String, bool)> = walk
                .ends
                .iter()
                .map(|end| {
                    let rule = ruleset.rule(&walk.met[end.met]);
                    (rule.chain.clone(), rule.position, end.verdict.nft_text(), end.certain)
                })
                .collect();
            (ends, walk.decided)
        };
        let new = in_state(CtState::New);
        let end = |chain: &str, position: u32, verdict: &str, certain: bool| {
            (chain.to_string(), position, verdict.to_string(), certain)
        };

        // Allowed: new traffic accepted in to-world, for sure.
        assert_eq!(ends(&to("10.1.2.3", 85), &new), (vec![end("to-world", 1, "accept", true)], true));
        // Any state: the ct state map decides established, related and invalid packets.
        let (any, _) = ends(&to("10.1.2.3", 85), &PacketState::default());
        assert_eq!(
            any,
            [
                end("forward-hook", 1, "drop", false),
                end("forward-hook", 1, "accept", false),
                end("to-world", 1, "accept", false)
            ]
        );
        let (est, decided) = ends(&to("10.1.2.3", 85), &in_state(CtState::Established));
        assert_eq!((est, decided), (vec![end("forward-hook", 1, "accept", true)], true));

        // Not allowed: accepted only if marked; else back in forward-hook, where whether the
        // destination is the node's decides between the reject and the drop policy.
        let (denied, decided) = ends(&to("10.1.2.3", 95), &new);
        assert_eq!(
            denied,
            [end("to-world", 2, "accept", false), end("forward-hook", 3, "reject with icmpx port-unreachable", false)]
        );
        assert!(!decided);
        let node: HashSet<IpAddr> = ["192.168.1.1".parse().expect("addr")].into();
        let marked = PacketState { mark: Some(1), local_addrs: Some(&node), ..new };
        assert_eq!(ends(&to("10.1.2.3", 95), &marked), (vec![end("to-world", 2, "accept", true)], true));
        let unmarked = PacketState { mark: Some(0), ..marked };
        assert_eq!(ends(&to("10.1.2.3", 95), &unmarked), (vec![], false));
        // From another interface the jump is never taken.
        let elsewhere = Packet { in_iface: Some("eth1"), ..to("10.1.2.3", 85) };
        let (ends_elsewhere, _) = ends(&elsewhere, &unmarked);
        assert!(ends_elsewhere.is_empty(), "{ends_elsewhere:?}");
    }
}
