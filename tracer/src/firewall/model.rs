//! The firewall as tracer models it: chains of rules with what each matches, its verdict
//! and its counter, whichever backend they came from. Both parsers produce these types and
//! the evaluator walks them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::ipset::IpSetMatch;
use super::sets::SetRef;

pub(crate) use crate::model::{
    firewall::Backend,
    hook::{Family, Hook},
};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) enum Verdict {
    Accept,
    Drop,
    /// `with` is the answer as the tool spells it: iptables `icmp-host-prohibited`,
    /// `tcp-reset`; nftables `icmp host-prohibited`, `icmpv6 admin-prohibited`,
    /// `icmpx port-unreachable`, `tcp reset`. `None` only for an iptables-nft REJECT seen
    /// through nft, which does not show the target's options.
    Reject {
        with: Option<String>,
    },
    Jump(String),
    Goto(String),
    Return,
    /// Any other target or terminal statement as written (`DNAT --to-destination ...`,
    /// `masquerade`); `continue` for a rule without one (it only counts, logs or marks).
    Other(String),
}

/// An inclusive range of addresses (a CIDR, a single address or an nft range).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct AddrRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl AddrRange {
    pub(crate) fn single(addr: IpAddr) -> AddrRange {
        AddrRange { first: addr, last: addr }
    }

    /// `None` for a prefix longer than the address.
    pub(crate) fn cidr(addr: IpAddr, prefix: u8) -> Option<AddrRange> {
        let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
        let host_bits = bits.checked_sub(u32::from(prefix))?;
        let host = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
        let number = addr_number(addr);
        Some(AddrRange { first: same_family_addr(addr, number & !host)?, last: same_family_addr(addr, number | host)? })
    }

    /// Whether `addr` lies in the range; never for an address of the other family.
    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        self.first.is_ipv4() == addr.is_ipv4()
            && self.last.is_ipv4() == addr.is_ipv4()
            && (addr_number(self.first)..=addr_number(self.last)).contains(&addr_number(addr))
    }
}

/// An address as a number, so ranges of both families compare alike.
fn addr_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address numbered `number` in the family of `like`; `None` when it does not fit.
fn same_family_addr(like: IpAddr, number: u128) -> Option<IpAddr> {
    Some(match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(number).ok()?)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(number)),
    })
}

/// An inclusive port range; a single port has `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// An interface name; `prefix` for iptables `eth+` / nft `"eth*"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct IfacePattern {
    pub name: String,
    pub prefix: bool,
}

/// A conntrack state as the rules of a hook see a packet's: `New` for a packet that had no
/// conntrack entry before the hook, `Established` for a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) enum CtState {
    New,
    Established,
    Related,
    Invalid,
    Untracked,
}

impl CtState {
    pub(crate) const ALL: [CtState; 5] =
        [CtState::New, CtState::Established, CtState::Related, CtState::Invalid, CtState::Untracked];

    pub(crate) fn bit(self) -> u8 {
        1 << self as u8
    }

    /// nft (`established`) and iptables (`ESTABLISHED`) spell the states alike but for case.
    pub(crate) fn from_name(name: &str) -> Option<CtState> {
        CtState::ALL.into_iter().find(|state| state.name().eq_ignore_ascii_case(name))
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CtState::New => "new",
            CtState::Established => "established",
            CtState::Related => "related",
            CtState::Invalid => "invalid",
            CtState::Untracked => "untracked",
        }
    }
}

/// Conntrack states a condition accepts, as bits of [`CtState::bit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) struct CtStates(pub u8);

impl CtStates {
    pub(crate) const ALL: CtStates = CtStates(0b1_1111);

    /// `None` when a name is not a state tracer knows (iptables' `SNAT`/`DNAT` pseudo-states
    /// are conntrack statuses, not states).
    pub(crate) fn from_names<'n>(names: impl IntoIterator<Item = &'n str>) -> Option<CtStates> {
        names
            .into_iter()
            .try_fold(CtStates(0), |states, name| Some(CtStates(states.0 | CtState::from_name(name)?.bit())))
    }
}

/// `mark & mask == value` (iptables `--mark value/mask`, nft `meta mark & mask == value`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) struct MarkMatch {
    pub value: u32,
    pub mask: u32,
}

/// What a rule does to the packet's mark when it matches, before its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum MarkChange {
    /// `mark = (mark & !mask) ^ xor`: iptables `MARK --set-xmark xor/mask` (what
    /// iptables-save prints for every MARK option), nft `meta mark set mark or|xor|and N`.
    Xmark { mask: u32, xor: u32 },
    /// Set from something tracer does not know (`CONNMARK --restore-mark`, `ct mark`).
    Unknown,
}

/// Which address of a packet a condition looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub(crate) enum Side {
    Src,
    Dst,
}

/// One field of an nft lookup key (`ip daddr . meta l4proto . th dport`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum KeyPart {
    Src,
    Dst,
    Sport,
    Dport,
    L4Proto,
    NfProto,
    InIface,
    OutIface,
    Mark,
    CtState,
    /// `numgen random|inc mod N offset O`: a different value for each packet.
    Numgen {
        modulus: u32,
        offset: u32,
    },
    /// A field tracer does not read from a packet, as nft prints it.
    Unknown(String),
}

/// A lookup of a key in an nft set or map: a set match (`ip daddr . th dport @allowed`),
/// a verdict map (`... vmap @service-ips`), a data map (`dnat to ip daddr map @m`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Lookup {
    pub key: Vec<KeyPart>,
    pub set: SetRef,
}

/// One condition a rule puts on a packet. A list means "any of these".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Condition {
    /// nft `meta nfproto`, or implied by `ip`/`ip6`/`icmp`/`icmpv6` payload matches in an
    /// inet table.
    Family(Family),
    /// IP protocol numbers.
    Proto(Vec<u8>),
    Src(Vec<AddrRange>),
    Dst(Vec<AddrRange>),
    Sport(Vec<PortRange>),
    Dport(Vec<PortRange>),
    InIface(Vec<IfacePattern>),
    OutIface(Vec<IfacePattern>),
    /// nft `ct state`, iptables `-m conntrack --ctstate` / `-m state --state`.
    CtState(CtStates),
    /// nft `meta mark`, iptables `-m mark --mark`.
    Mark(Vec<MarkMatch>),
    /// The address is one of the node's own: nft `fib daddr type local`, iptables
    /// `-m addrtype --dst-type LOCAL`.
    LocalAddr(Side),
    /// A choice made anew for every packet (`-m statistic --mode random`, nft `numgen`):
    /// either way is possible, as written.
    Random(String),
    /// iptables `-m set --match-set NAME src,dst`.
    IpSet(IpSetMatch),
    /// The key is an element of an nft set (or map).
    Lookup(Lookup),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Test {
    pub negated: bool,
    pub condition: Condition,
}

/// What a rule matches, as far as it could be understood. A packet fits the rule only if
/// every test holds; `unparsed` conditions (rate limits, quotas, extensions tracer does not
/// read) cannot be checked against a packet and so count as "may match".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct RuleMatches {
    pub tests: Vec<Test>,
    pub unparsed: Vec<String>,
}

impl RuleMatches {
    pub(super) fn test(&mut self, negated: bool, condition: Condition) {
        self.tests.push(Test { negated, condition });
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Rule {
    pub backend: Backend,
    pub family: Family,
    /// iptables: `filter`, `nat`, ...; nftables: family and name as nft names the table,
    /// e.g. `inet fw` (nft table names are only unique within a family).
    pub table: String,
    pub chain: String,
    /// 1-based, as `iptables -L CHAIN --line-numbers` numbers it; for nft the position in
    /// the chain.
    pub position: u32,
    /// The nf_tables rule handle (nftables and iptables-nft rules).
    pub handle: Option<u64>,
    /// iptables: the `-A CHAIN ...` line as iptables-save prints it, without counters;
    /// nft: the rule in nft syntax, stateless (`counter` without values, as `nft -s`
    /// prints it), so the text of a rule stays the same while its counter moves.
    pub text: String,
    /// The rule's comment (`-m comment --comment`, nft `comment`): where managers such as
    /// kube-proxy name what the rule is for.
    pub comment: Option<String>,
    pub verdict: Verdict,
    /// Verdicts an nft verdict map in the rule can choose (`ip daddr vmap { ... }`);
    /// empty for other rules.
    pub map_verdicts: Vec<Verdict>,
    /// The verdict map the rule ends with: the element the packet's key finds chooses the
    /// verdict, and a key in no element lets the packet go on to the next rule.
    pub vmap: Option<Lookup>,
    /// How the rule changes the packet's mark when it matches.
    pub mark_change: Option<MarkChange>,
    pub matches: RuleMatches,
    /// `None` when the rule has no counter (a native nft rule without `counter`).
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Chain {
    pub backend: Backend,
    pub family: Family,
    pub table: String,
    pub name: String,
    /// `None` for a chain only reached by jumps (iptables user chains, nft regular chains).
    pub hook: Option<Hook>,
    pub policy: Option<Verdict>,
    /// Packets the policy decided (iptables only; nft keeps no policy counter).
    pub policy_packets: Option<u64>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Snapshot {
    pub chains: Vec<Chain>,
    /// A backend that is in use but could not be read, one line each.
    pub errors: Vec<String>,
}

/// What a verdict that is not a plain one (`Verdict::Other`) does to the packet's way
/// through the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OtherFlow {
    /// The next rule follows (LOG, MARK, a rule that only counts).
    Continue,
    /// The traversal ends: NAT targets accept the packet, a queue hands it to a program.
    Ends,
    /// A target tracer does not know: either may happen.
    Either,
}

impl Verdict {
    /// Where a DNAT verdict sends the packet: iptables' `DNAT --to-destination ADDR[:PORT]`,
    /// nft's `dnat [ip|ip6] to ADDR[:PORT]`; a packet for `port` keeps it when none is given.
    /// `None` for any other verdict, and for ranges and maps, which name no one address.
    pub(crate) fn dnat_destination(&self, port: u16) -> Option<std::net::SocketAddr> {
        let Verdict::Other(text) = self else { return None };
        let mut words = text.split_whitespace();
        let target = match words.next()? {
            "DNAT" => {
                let mut words = words.skip_while(|word| *word != "--to-destination");
                words.next()?;
                words.next()?
            }
            "dnat" => {
                let mut words = words.skip_while(|word| *word != "to");
                words.next()?;
                words.next()?
            }
            _ => return None,
        };
        if let Ok(addr) = target.parse::<std::net::SocketAddr>() {
            return Some(addr);
        }
        let ip = target.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok()?;
        Some(std::net::SocketAddr::new(ip, port))
    }

    /// How an `Other` verdict (target or statement as written) goes on.
    pub(crate) fn other_flow(text: &str) -> OtherFlow {
        let name = text.split_whitespace().next().unwrap_or("");
        const ENDS: [&str; 12] = [
            "DNAT",
            "SNAT",
            "MASQUERADE",
            "REDIRECT",
            "NETMAP",
            "NFQUEUE",
            "QUEUE",
            "dnat",
            "snat",
            "masquerade",
            "redirect",
            "queue",
        ];
        const CONTINUES: [&str; 22] = [
            "continue",
            "LOG",
            "NFLOG",
            "ULOG",
            "MARK",
            "CONNMARK",
            "CT",
            "NOTRACK",
            "TRACE",
            "CLASSIFY",
            "DSCP",
            "TOS",
            "TTL",
            "HL",
            "TCPMSS",
            "CHECKSUM",
            "AUDIT",
            "SET",
            "IDLETIMER",
            "SECMARK",
            "CONNSECMARK",
            "NFCT",
        ];
        if ENDS.contains(&name) {
            OtherFlow::Ends
        } else if CONTINUES.contains(&name) {
            OtherFlow::Continue
        } else {
            OtherFlow::Either
        }
    }

    /// As nft writes a verdict in a verdict map: `goto reject-chain`, `accept`.
    pub(crate) fn nft_text(&self) -> String {
        match self {
            Verdict::Accept => "accept".to_string(),
            Verdict::Drop => "drop".to_string(),
            Verdict::Reject { with: Some(with) } => format!("reject with {with}"),
            Verdict::Reject { with: None } => "reject".to_string(),
            Verdict::Jump(target) => format!("jump {target}"),
            Verdict::Goto(target) => format!("goto {target}"),
            Verdict::Return => "return".to_string(),
            Verdict::Other(text) => text.clone(),
        }
    }
}

impl Rule {
    /// The verdicts the rule can give: its own, and those its verdict map can choose.
    pub(crate) fn verdicts(&self) -> impl Iterator<Item = &Verdict> {
        std::iter::once(&self.verdict).chain(&self.map_verdicts)
    }

    /// The command that shows the rule with its neighbours.
    pub(crate) fn show_command(&self) -> String {
        match self.backend {
            Backend::Nftables => format!("nft -a list chain {} {}", self.table, self.chain),
            backend => format!(
                "{} -t {} -L {} -v -n --line-numbers",
                backend.iptables_command(self.family),
                self.table,
                self.chain
            ),
        }
    }

    /// The command that deletes exactly this rule: by its specification (iptables) or its
    /// handle (nftables), never by its position, which the next resync of kube-proxy or a
    /// firewall manager may have shifted by the time someone runs it.
    pub(crate) fn delete_command(&self) -> String {
        match self.backend {
            Backend::Nftables => {
                let handle = self
                    .handle
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "<handle from nft -a list ruleset>".to_string());
                format!("nft delete rule {} {} handle {handle}", self.table, self.chain)
            }
            backend => {
                let append = format!("-A {} ", self.chain);
                let spec = self.text.strip_prefix(&append).unwrap_or(&self.text);
                format!("{} -t {} -D {} {spec}", backend.iptables_command(self.family), self.table, self.chain)
            }
        }
    }
}

/// How nf_tables names the table family of `family` (`ip`, `ip6`).
pub(crate) fn nft_family_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

/// Whether packets of IP protocol `proto` have ports: tcp, udp, dccp, sctp, udplite.
pub(crate) fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 33 | 132 | 136)
}

/// IP protocol number of a name or number; `Some(None)` for "any".
pub(crate) fn protocol_number(name: &str) -> Option<Option<u8>> {
    let number = match name.to_ascii_lowercase().as_str() {
        "all" | "any" => return Some(None),
        "icmp" => 1,
        "igmp" => 2,
        "ipip" | "ipencap" => 4,
        "tcp" => 6,
        "udp" => 17,
        "ipv6" => 41,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" | "icmp6" => 58,
        "ospf" | "ospfigp" => 89,
        "pim" => 103,
        "vrrp" => 112,
        "l2tp" => 115,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "comp" => 108,
        other => other.parse().ok()?,
    };
    Some(Some(number))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_destinations_of_both_tools() {
        let other = |text: &str| Verdict::Other(text.to_string());
        for (text, want) in [
            ("DNAT --to-destination 10.244.0.7:53", Some("10.244.0.7:53")),
            ("DNAT --to-destination 10.244.0.7", Some("10.244.0.7:5353")),
            ("DNAT --to-destination [fd00::7]:53", Some("[fd00::7]:53")),
            ("dnat to 10.244.1.25:8080", Some("10.244.1.25:8080")),
            ("dnat ip to 10.0.0.5:80", Some("10.0.0.5:80")),
            ("dnat ip6 to [fd00::5]:80", Some("[fd00::5]:80")),
            ("dnat to 10.0.0.7", Some("10.0.0.7:5353")),
            ("DNAT --to-destination 10.0.0.1-10.0.0.9:53", None),
            ("dnat to ip daddr map @backends", None),
            ("SNAT --to-source 10.0.0.1", None),
            ("masquerade", None),
        ] {
            let want = want.map(|w| w.parse::<std::net::SocketAddr>().expect("address"));
            assert_eq!(other(text).dnat_destination(5353), want, "{text}");
        }
        assert_eq!(Verdict::Accept.dnat_destination(53), None);
    }

    fn range(addr: &str, prefix: u8) -> Option<(String, String)> {
        let range = AddrRange::cidr(addr.parse().expect("addr"), prefix)?;
        Some((range.first.to_string(), range.last.to_string()))
    }

    #[test]
    fn a_cidr_covers_its_prefix_in_either_family() {
        let pair = |a: &str, b: &str| Some((a.to_string(), b.to_string()));
        assert_eq!(range("10.1.2.3", 8), pair("10.0.0.0", "10.255.255.255"));
        assert_eq!(range("10.1.2.3", 0), pair("0.0.0.0", "255.255.255.255"));
        assert_eq!(range("10.1.2.3", 32), pair("10.1.2.3", "10.1.2.3"));
        assert_eq!(range("10.1.2.3", 33), None);
        assert_eq!(range("fd00::1:2", 64), pair("fd00::", "fd00::ffff:ffff:ffff:ffff"));
        assert_eq!(range("fd00::1", 0), pair("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(range("fd00::1", 129), None);

        let net = AddrRange::cidr("10.0.0.0".parse().expect("addr"), 8).expect("cidr");
        assert!(net.contains("10.9.9.9".parse().expect("addr")));
        assert!(!net.contains("11.0.0.0".parse().expect("addr")));
        assert!(!net.contains("::a00:1".parse().expect("addr")), "never an address of the other family");
    }
}
