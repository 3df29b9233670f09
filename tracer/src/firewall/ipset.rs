//! The node's ipsets, for iptables rules that match them (`-m set --match-set NAME src,dst`):
//! kube-proxy's ipvs mode, Calico and firewalld keep address lists there. Read from what
//! `ipset save` prints; a set is found by hashing, one table per combination of prefix
//! lengths, most specific first, the way the kernel's hash:net types look them up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

use super::eval::Packet;
use super::model::{has_ports, protocol_number, Chain, Condition, Family, Side};

/// Every set of a network namespace, by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct IpSets {
    sets: HashMap<String, IpSet>,
}

#[derive(Debug, PartialEq, Eq)]
enum IpSet {
    Hash(Hashed),
    /// `list:set`: matches when one of its member sets does, in order.
    List(Vec<String>),
    /// A type tracer does not read (`hash:mac`, `bitmap:ip,mac`, ...): any packet may match.
    Unread,
}

/// One field of a hash set's entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    /// An address; `hash:ip` with `netmask N` keeps networks of one size.
    Addr { netmask: Option<u8> },
    /// A network of any prefix length (`hash:net`), with `nomatch` exceptions.
    Net,
    /// Protocol and port, `udp:53` (a port alone is TCP).
    Port,
}

/// Entries of one combination of prefix lengths: the key masked to them → whether the
/// entry is `nomatch`.
#[derive(Debug, PartialEq, Eq)]
struct PrefixGroup {
    prefixes: Vec<u32>,
    entries: HashMap<Vec<u128>, bool>,
}

#[derive(Debug, PartialEq, Eq)]
struct Hashed {
    family: Family,
    dims: Vec<Dim>,
    /// Entries grouped by their prefix lengths (one per field), most specific first.
    groups: Vec<PrefixGroup>,
    /// An entry could not be read: a packet it would hold may be missed, so no lookup is
    /// certain.
    unread_entry: bool,
}

/// How deep `list:set` members may nest (the kernel refuses a list in a list).
const MAX_LIST_DEPTH: usize = 4;

impl IpSets {
    /// Whether `packet` is in set `name`, its fields picked by `flags` (`src,dst`); `None`
    /// when it cannot be told (the set is unknown or of a type tracer does not read, a field
    /// it needs is not known).
    pub(crate) fn contains(&self, name: &str, flags: &[Side], packet: &Packet) -> Option<bool> {
        self.contains_at(name, flags, packet, 0)
    }

    fn contains_at(&self, name: &str, flags: &[Side], packet: &Packet, depth: usize) -> Option<bool> {
        match self.sets.get(name)? {
            IpSet::Hash(set) => set.contains(flags, packet),
            IpSet::List(members) if depth < MAX_LIST_DEPTH => {
                let mut unknown = false;
                for member in members {
                    match self.contains_at(member, flags, packet, depth + 1) {
                        Some(true) => return Some(true),
                        Some(false) => {}
                        None => unknown = true,
                    }
                }
                (!unknown).then_some(false)
            }
            IpSet::List(_) | IpSet::Unread => None,
        }
    }
}

impl Hashed {
    fn contains(&self, flags: &[Side], packet: &Packet) -> Option<bool> {
        if packet.family != self.family {
            return Some(false);
        }
        if self.unread_entry {
            return None;
        }
        // The kernel refuses to match with fewer directions than the set has fields.
        if flags.len() < self.dims.len() {
            return None;
        }
        let mut key = Vec::with_capacity(self.dims.len());
        for (dim, side) in self.dims.iter().zip(flags) {
            let value = match dim {
                Dim::Addr { .. } | Dim::Net => {
                    let addr = match side {
                        Side::Src => packet.src,
                        Side::Dst => packet.dst,
                    };
                    addr_number(addr?)
                }
                Dim::Port => {
                    let port = match side {
                        Side::Src => packet.sport,
                        Side::Dst => packet.dport,
                    };
                    port_key(packet.proto.number(), port?)
                }
            };
            key.push(value);
        }
        for PrefixGroup { prefixes, entries } in &self.groups {
            let masked: Vec<u128> = key
                .iter()
                .zip(&self.dims)
                .zip(prefixes)
                .map(|((value, dim), prefix)| match dim {
                    Dim::Port => *value,
                    _ => *value & prefix_mask(*prefix),
                })
                .collect();
            if let Some(nomatch) = entries.get(&masked) {
                return Some(!nomatch);
            }
        }
        Some(false)
    }
}

/// Reads what `ipset save` (or `ipset list -o save`) prints. Lines it does not understand
/// are skipped; a set whose type it does not read matches "maybe".
pub(crate) fn parse_ipset_save(text: &str) -> IpSets {
    let mut sets = HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = split_quoted(line);
        match words.as_slice() {
            ["create", name, kind, options @ ..] => {
                sets.insert(name.to_string(), new_set(kind, options));
            }
            ["add", name, entry, options @ ..] => match sets.get_mut(*name) {
                Some(IpSet::Hash(set)) => set.add(entry, options.contains(&"nomatch")),
                Some(IpSet::List(members)) => members.push(entry.to_string()),
                _ => {}
            },
            _ => {}
        }
    }
    IpSets { sets }
}

fn new_set(kind: &str, options: &[&str]) -> IpSet {
    let option = |name: &str| options.iter().position(|o| *o == name).and_then(|at| options.get(at + 1));
    let family = if option("family") == Some(&"inet6") { Family::Ipv6 } else { Family::Ipv4 };
    let netmask = option("netmask").and_then(|m| m.parse::<u8>().ok());
    let dims = match kind {
        "hash:ip" => vec![Dim::Addr { netmask }],
        "hash:net" => vec![Dim::Net],
        "hash:ip,port" => vec![Dim::Addr { netmask: None }, Dim::Port],
        "hash:net,port" => vec![Dim::Net, Dim::Port],
        "hash:ip,port,ip" => vec![Dim::Addr { netmask: None }, Dim::Port, Dim::Addr { netmask: None }],
        "hash:ip,port,net" => vec![Dim::Addr { netmask: None }, Dim::Port, Dim::Net],
        "hash:net,net" => vec![Dim::Net, Dim::Net],
        "hash:net,port,net" => vec![Dim::Net, Dim::Port, Dim::Net],
        "list:set" => return IpSet::List(Vec::new()),
        _ => return IpSet::Unread,
    };
    IpSet::Hash(Hashed { family, dims, groups: Vec::new(), unread_entry: false })
}

impl Hashed {
    /// `10.96.0.10,udp:53`, `10.0.0.0/8`, `10.2.0.0/16,tcp:80,192.168.0.1`.
    fn add(&mut self, entry: &str, nomatch: bool) {
        let fields: Vec<&str> = entry.split(',').collect();
        if fields.len() != self.dims.len() {
            self.unread_entry = true;
            return;
        }
        let mut key = Vec::with_capacity(fields.len());
        let mut prefixes = Vec::with_capacity(fields.len());
        for (dim, field) in self.dims.iter().zip(&fields) {
            let parsed = match dim {
                Dim::Port => parse_port(field).map(|port| (port, 0)),
                Dim::Addr { netmask } => {
                    let (addr, len) = parse_net(field, self.family);
                    let len = netmask.map(|m| mapped_len(u32::from(m), self.family)).unwrap_or(len);
                    addr.map(|a| (addr_number(a) & prefix_mask(len), len))
                }
                Dim::Net => {
                    let (addr, len) = parse_net(field, self.family);
                    addr.map(|a| (addr_number(a) & prefix_mask(len), len))
                }
            };
            let Some((value, prefix)) = parsed else {
                self.unread_entry = true;
                return;
            };
            key.push(value);
            prefixes.push(prefix);
        }
        if !self.groups.iter().any(|g| g.prefixes == prefixes) {
            self.groups.push(PrefixGroup { prefixes: prefixes.clone(), entries: HashMap::new() });
            // Most specific first: the kernel tries the longest prefixes first.
            self.groups.sort_by_key(|g| std::cmp::Reverse(g.prefixes.iter().sum::<u32>()));
        }
        if let Some(group) = self.groups.iter_mut().find(|g| g.prefixes == prefixes) {
            group.entries.insert(key, nomatch);
        }
    }
}

/// An address and its prefix length in the IPv4-mapped numbering; `None` for text that
/// is not an address of the set's family.
fn parse_net(text: &str, family: Family) -> (Option<IpAddr>, u32) {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, len.parse::<u32>().ok()),
        None => (text, None),
    };
    let full = if family == Family::Ipv4 { 32 } else { 128 };
    let len = len.unwrap_or(full);
    let addr = addr.parse::<IpAddr>().ok().filter(|a| a.is_ipv4() == (family == Family::Ipv4) && len <= full);
    (addr, mapped_len(len.min(full), family))
}

fn mapped_len(len: u32, family: Family) -> u32 {
    if family == Family::Ipv4 {
        len + 96
    } else {
        len
    }
}

fn addr_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn prefix_mask(len: u32) -> u128 {
    u128::MAX.checked_shl(128u32.saturating_sub(len)).unwrap_or(0)
}

/// `udp:53`, `53` (TCP), `icmp:echo-request` (kept under ICMP with no port: no traced
/// packet is ICMP). `None` for a port that is not a number.
fn parse_port(text: &str) -> Option<u128> {
    let (proto, port) = match text.split_once(':') {
        Some((proto, port)) => (protocol_number(proto).flatten()?, port),
        None => (6, text),
    };
    let port = match port.parse::<u16>() {
        Ok(port) => port,
        Err(_) if !has_ports(proto) => 0,
        Err(_) => return None,
    };
    Some(port_key(proto, port))
}

fn port_key(proto: u8, port: u16) -> u128 {
    (u128::from(proto) << 16) | u128::from(port)
}

/// Whether a rule of `chains` matches an ipset.
pub(super) fn uses_ipsets(chains: &[Chain]) -> bool {
    chains
        .iter()
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.matches.tests)
        .any(|t| matches!(t.condition, Condition::IpSet(_)))
}

/// Gives every ipset match of `chains` the node's sets to look packets up in.
pub(super) fn attach_ipsets(chains: &mut [Chain], sets: &Arc<IpSets>) {
    for test in chains.iter_mut().flat_map(|c| &mut c.rules).flat_map(|r| &mut r.matches.tests) {
        if let Condition::IpSet(set) = &mut test.condition {
            set.sets = Some(Arc::clone(sets));
        }
    }
}

/// Words of an `ipset save` line; `comment "two words"` stays one word.
fn split_quoted(line: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            words.push(&quoted[..end]);
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            words.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// An iptables `-m set` match: the set's name, which of the packet's fields each of the
/// set's fields is taken from, and the node's sets once they are read.
#[derive(Clone, Debug)]
pub(crate) struct IpSetMatch {
    pub name: String,
    pub flags: Vec<Side>,
    /// `None` until the sets are read (and when they cannot be): the match may hold.
    pub sets: Option<Arc<IpSets>>,
}

impl IpSetMatch {
    /// `--match-set NAME src,dst`; `None` for flags it does not know.
    pub(crate) fn parse(name: &str, flags: &str) -> Option<IpSetMatch> {
        let flags = flags
            .split(',')
            .map(|flag| match flag {
                "src" => Some(Side::Src),
                "dst" => Some(Side::Dst),
                _ => None,
            })
            .collect::<Option<Vec<Side>>>()?;
        Some(IpSetMatch { name: name.to_string(), flags, sets: None })
    }

    pub(crate) fn holds(&self, packet: &Packet) -> Option<bool> {
        self.sets.as_ref()?.contains(&self.name, &self.flags, packet)
    }
}

impl PartialEq for IpSetMatch {
    fn eq(&self, other: &IpSetMatch) -> bool {
        self.name == other.name && self.flags == other.flags
    }
}

impl Eq for IpSetMatch {}

impl Serialize for IpSetMatch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let flags: Vec<&str> = self
            .flags
            .iter()
            .map(|side| match side {
                Side::Src => "src",
                Side::Dst => "dst",
            })
            .collect();
        serializer.serialize_str(&format!("{} {}", self.name, flags.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::packet::L4Proto;
    use crate::system::netns::scratch::Netns;

    /// Sets of the types nodes use, made with the real ipset in a scratch namespace.
    const SETS: &str = "ipset create KUBE-CLUSTER-IP hash:ip,port
ipset add KUBE-CLUSTER-IP 10.96.0.10,udp:53
ipset add KUBE-CLUSTER-IP 10.96.0.10,tcp:53
ipset create NETS hash:net
ipset add NETS 10.0.0.0/8
ipset add NETS 10.1.0.0/16 nomatch
ipset add NETS 192.168.1.5
ipset create V6 hash:ip family inet6
ipset add V6 fd00::1
ipset create NET-PORTS hash:net,port
ipset add NET-PORTS 10.2.0.0/16,tcp:80-82
ipset add NET-PORTS 10.3.0.0/16,53
ipset create LOOP hash:ip,port,ip
ipset add LOOP 10.244.0.7,udp:53,10.244.0.7
ipset create SOURCES hash:ip,port,net
ipset add SOURCES 10.96.0.50,tcp:80,192.168.0.0/24
ipset create COMMENTED hash:ip comment timeout 0
ipset add COMMENTED 1.1.1.1 timeout 0 comment \"two words\"
ipset create PORTS bitmap:port range 0-1024
ipset add PORTS 53
ipset create ALL list:set
ipset add ALL NETS
ipset add ALL KUBE-CLUSTER-IP";

    fn packet(proto: L4Proto, src: &str, sport: u16, dst: &str, dport: u16) -> Packet<'static> {
        let src: IpAddr = src.parse().expect("addr");
        Packet {
            family: if src.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 },
            proto,
            src: Some(src),
            dst: Some(dst.parse().expect("addr")),
            sport: Some(sport),
            dport: Some(dport),
            in_iface: None,
            out_iface: None,
        }
    }

    const DST: [Side; 1] = [Side::Dst];
    const SRC: [Side; 1] = [Side::Src];
    const DST_DST: [Side; 2] = [Side::Dst, Side::Dst];

    #[test]
    fn real_ipset_save_of_every_type_nodes_use() {
        let ns = Netns::new();
        ns.sh(SETS);
        let saved = ns.sh("ipset save");
        let sets = parse_ipset_save(&saved);
        let udp = |src: &str, dst: &str, dport: u16| packet(L4Proto::Udp, src, 40000, dst, dport);
        let tcp = |src: &str, dst: &str, dport: u16| packet(L4Proto::Tcp, src, 40000, dst, dport);

        let dns = udp("10.244.0.5", "10.96.0.10", 53);
        assert_eq!(sets.contains("KUBE-CLUSTER-IP", &DST_DST, &dns), Some(true));
        assert_eq!(sets.contains("KUBE-CLUSTER-IP", &DST_DST, &udp("10.244.0.5", "10.96.0.10", 54)), Some(false));
        assert_eq!(sets.contains("KUBE-CLUSTER-IP", &DST, &dns), None, "fewer directions than fields");

        // The most specific network decides: 10.1.0.0/16 is an exception to 10.0.0.0/8.
        assert_eq!(sets.contains("NETS", &SRC, &udp("10.9.0.1", "1.1.1.1", 1)), Some(true));
        assert_eq!(sets.contains("NETS", &SRC, &udp("10.1.0.1", "1.1.1.1", 1)), Some(false));
        assert_eq!(sets.contains("NETS", &DST, &udp("1.1.1.1", "192.168.1.5", 1)), Some(true));
        assert_eq!(sets.contains("NETS", &DST, &udp("1.1.1.1", "192.168.1.6", 1)), Some(false));

        let v6 = packet(L4Proto::Udp, "fd00::2", 1, "fd00::1", 1);
        assert_eq!(sets.contains("V6", &DST, &v6), Some(true));
        assert_eq!(sets.contains("V6", &DST, &dns), Some(false), "never a packet of the other family");

        // ipset save lists a port range one port a line; a port alone is TCP's.
        assert_eq!(sets.contains("NET-PORTS", &DST_DST, &tcp("1.1.1.1", "10.2.3.4", 81)), Some(true));
        assert_eq!(sets.contains("NET-PORTS", &DST_DST, &udp("1.1.1.1", "10.2.3.4", 81)), Some(false));
        assert_eq!(sets.contains("NET-PORTS", &DST_DST, &tcp("1.1.1.1", "10.3.0.9", 53)), Some(true));

        let looped = udp("10.244.0.7", "10.244.0.7", 53);
        assert_eq!(sets.contains("LOOP", &[Side::Dst, Side::Dst, Side::Src], &looped), Some(true));
        let sources = tcp("192.168.0.9", "10.96.0.50", 80);
        assert_eq!(sets.contains("SOURCES", &[Side::Dst, Side::Dst, Side::Src], &sources), Some(true));
        assert_eq!(sets.contains("COMMENTED", &DST, &udp("2.2.2.2", "1.1.1.1", 1)), Some(true));

        // A type tracer does not read, a set it does not know: either way.
        assert_eq!(sets.contains("PORTS", &DST, &dns), None);
        assert_eq!(sets.contains("NOT-THERE", &DST, &dns), None);

        // A list matches when a member does; here NETS cannot tell, so neither can ALL
        // unless KUBE-CLUSTER-IP matches.
        assert_eq!(sets.contains("ALL", &DST_DST, &dns), Some(true));
        assert_eq!(sets.contains("ALL", &DST_DST, &udp("10.244.0.5", "10.1.0.1", 53)), Some(false));
        assert_eq!(sets.contains("ALL", &DST_DST, &udp("10.244.0.5", "10.9.0.1", 53)), Some(true));
    }

    #[test]
    fn what_a_packet_does_not_tell_is_unknown() {
        let sets = parse_ipset_save("create S hash:ip,port family inet\nadd S 10.96.0.10,udp:53\n");
        let probe = Packet { src: None, dst: None, ..packet(L4Proto::Udp, "1.1.1.1", 1, "2.2.2.2", 53) };
        assert_eq!(sets.contains("S", &DST_DST, &probe), None);
    }

    #[test]
    fn odd_lines_never_panic() {
        let sets = parse_ipset_save(
            "create\nadd\ncreate X hash:net family\nadd X 10.0.0.0/99\nadd X ::1/8\nadd X \"unterminated\n\
             create Y hash:ip,port\nadd Y 1.2.3.4,bogus:1\nadd Y 1.2.3.4\nadd Z 1.1.1.1\ncreate L list:set\nadd L L\n",
        );
        let probe = packet(L4Proto::Udp, "1.1.1.1", 1, "10.0.0.1", 53);
        assert_eq!(sets.contains("X", &DST, &probe), None, "an entry it could not read may have held it");
        assert_eq!(sets.contains("L", &DST, &probe), None, "a list in itself stops");
    }
}
