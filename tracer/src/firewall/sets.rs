//! nftables sets and maps as lookups. A kube-proxy node keeps one element per Service in
//! its maps, so a key is found by hashing (keys of exact values) or by binary search (one
//! field of ranges), not by going through thousands of elements for each packet; only
//! concatenations of ranges and values tracer cannot read are searched element by element.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::model::{protocol_number, CtState, KeyPart, Verdict};
use super::nft_text::{render_expr, str_field};

/// One field's value, comparable whatever its kind: addresses as numbers (IPv4 in the
/// IPv4-mapped IPv6 range, so that the families never meet), protocol numbers, ports,
/// marks, conntrack state bits; interface names as text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Atom {
    Num(u128),
    Text(String),
}

impl Atom {
    pub(crate) fn addr(addr: IpAddr) -> Atom {
        Atom::Num(addr_number(addr))
    }
}

fn addr_number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// What an element holds for one field of the key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Span {
    Exact(Atom),
    /// An inclusive range of numbers: a prefix, an nft range.
    Range(u128, u128),
    /// An interface name wildcard, `"veth*"`.
    Prefix(String),
    /// A value tracer does not read: it may hold any key.
    Unknown,
}

/// How a field's values are written, from the set's declared type or, for an anonymous set,
/// from the key the rule looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FieldKind {
    Addr,
    Proto,
    Number,
    Iface,
    CtState,
    NfProto,
    Other,
}

impl FieldKind {
    /// From nft's type name (`ipv4_addr`, `inet_service`).
    pub(super) fn of_type(name: &str) -> FieldKind {
        match name {
            "ipv4_addr" | "ipv6_addr" => FieldKind::Addr,
            "inet_proto" => FieldKind::Proto,
            "inet_service" | "mark" | "integer" => FieldKind::Number,
            "ifname" => FieldKind::Iface,
            "ct_state" => FieldKind::CtState,
            "nf_proto" => FieldKind::NfProto,
            _ => FieldKind::Other,
        }
    }

    pub(super) fn of_key(part: &KeyPart) -> FieldKind {
        match part {
            KeyPart::Src | KeyPart::Dst => FieldKind::Addr,
            KeyPart::L4Proto => FieldKind::Proto,
            KeyPart::Sport | KeyPart::Dport | KeyPart::Mark | KeyPart::Numgen { .. } => FieldKind::Number,
            KeyPart::InIface | KeyPart::OutIface => FieldKind::Iface,
            KeyPart::CtState => FieldKind::CtState,
            KeyPart::NfProto => FieldKind::NfProto,
            KeyPart::Unknown(_) => FieldKind::Other,
        }
    }
}

/// An element of a set or map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetElement {
    key: Vec<Span>,
    /// The key as nft prints it: `10.96.0.10 . udp . 53`.
    pub text: String,
    pub comment: Option<String>,
    /// What a verdict map maps the key to.
    pub verdict: Option<Verdict>,
}

/// A named or anonymous nft set or map, with its elements indexed for lookups.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NftSet {
    /// `@name` as rules refer to it; `{ ... }` for a set written in the rule.
    pub name: String,
    pub elements: Vec<SetElement>,
    index: Index,
}

#[derive(Debug, PartialEq, Eq)]
enum Index {
    /// Every field of every element is one value: the key → the first element with it.
    Exact(HashMap<Vec<Atom>, usize>),
    /// One numeric field of ranges, disjoint (as nft keeps interval sets), by start.
    Intervals(Vec<(u128, u128, usize)>),
    /// Concatenations of ranges, wildcards, values tracer does not read.
    Scan,
}

/// A rule's reference to a set: shared by every rule (and by both families' copies of an
/// inet chain), shown by name when a rule is serialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetRef(pub Arc<NftSet>);

impl Serialize for SetRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.name)
    }
}

/// A field of the key as a packet gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyField {
    Known(Atom),
    Unknown,
    /// `numgen`: a value from `first` to `last`, each packet its own.
    AnyOf(u128, u128),
}

/// Where a key is in a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// Index of the one element that holds the key.
    Element(usize),
    Missing,
    /// The key is not known well enough: it may be in any of `elements`, and in none if
    /// `missing`.
    Possibly {
        elements: Vec<usize>,
        missing: bool,
    },
}

/// Whether a span holds a field; `None` when it cannot be told.
fn span_holds(span: &Span, field: &KeyField) -> Option<bool> {
    match field {
        KeyField::Unknown => None,
        KeyField::Known(atom) => match (span, atom) {
            (Span::Unknown, _) => None,
            (Span::Exact(want), have) => Some(want == have),
            (Span::Range(first, last), Atom::Num(n)) => Some((first..=last).contains(&n)),
            (Span::Prefix(prefix), Atom::Text(name)) => Some(name.starts_with(prefix.as_str())),
            _ => Some(false),
        },
        // Each packet draws its own value: a span some values reach may hold, one that
        // none reaches never does.
        KeyField::AnyOf(first, last) => match span {
            Span::Exact(Atom::Num(n)) if !(first..=last).contains(&n) => Some(false),
            Span::Range(a, b) if a > last || first > b => Some(false),
            Span::Exact(Atom::Text(_)) | Span::Prefix(_) => Some(false),
            _ => None,
        },
    }
}

impl NftSet {
    /// A set from nft's JSON elements (`elem` of a set or map object, or `set` of an anonymous
    /// one); `kinds` says how each field of the key is written.
    pub(super) fn from_json<V: Borrow<Value>>(
        name: String,
        items: impl IntoIterator<Item = V>,
        kinds: &[FieldKind],
        is_map: bool,
    ) -> NftSet {
        let elements: Vec<SetElement> = items.into_iter().map(|item| element(item.borrow(), kinds, is_map)).collect();
        let index = build_index(&elements);
        NftSet { name, elements, index }
    }

    /// Finds `key` (one field per field of the set's key).
    pub(crate) fn find(&self, key: &[KeyField]) -> Found {
        let all_known: Option<Vec<&Atom>> = key
            .iter()
            .map(|field| match field {
                KeyField::Known(atom) => Some(atom),
                _ => None,
            })
            .collect();
        if let Some(atoms) = all_known {
            match &self.index {
                Index::Exact(map) => {
                    let owned: Vec<Atom> = atoms.into_iter().cloned().collect();
                    return map.get(&owned).map_or(Found::Missing, |&at| Found::Element(at));
                }
                Index::Intervals(ranges) => {
                    let [Atom::Num(n)] = atoms.as_slice() else { return Found::Missing };
                    let after = ranges.partition_point(|(first, _, _)| first <= n);
                    return match after.checked_sub(1).map(|at| ranges[at]) {
                        Some((_, last, element)) if *n <= last => Found::Element(element),
                        _ => Found::Missing,
                    };
                }
                Index::Scan => {}
            }
        }
        self.scan(key)
    }

    /// Whether keys are found by hashing, as in kube-proxy's maps.
    #[cfg(test)]
    pub(crate) fn is_hashed(&self) -> bool {
        matches!(self.index, Index::Exact(_))
    }

    fn scan(&self, key: &[KeyField]) -> Found {
        let mut certain = Vec::new();
        let mut possible = Vec::new();
        for (at, element) in self.elements.iter().enumerate() {
            if element.key.len() != key.len() {
                possible.push(at);
                continue;
            }
            let mut held = Some(true);
            for (span, field) in element.key.iter().zip(key) {
                match span_holds(span, field) {
                    Some(false) => {
                        held = Some(false);
                        break;
                    }
                    None => held = None,
                    Some(true) => {}
                }
            }
            match held {
                Some(true) => certain.push(at),
                None => possible.push(at),
                Some(false) => {}
            }
        }
        match (certain.as_slice(), possible.is_empty()) {
            ([at], true) => Found::Element(*at),
            ([], true) => Found::Missing,
            _ => {
                let missing = certain.is_empty() && !self.covers(key);
                certain.extend(possible);
                certain.sort_unstable();
                Found::Possibly { elements: certain, missing }
            }
        }
    }

    /// Whether every value a lone numgen field can take is in some element
    /// (`numgen random mod 2 vmap { 0 : ..., 1 : ... }` always finds one).
    fn covers(&self, key: &[KeyField]) -> bool {
        let [KeyField::AnyOf(first, last)] = key else { return false };
        if last.saturating_sub(*first) > u128::from(u16::MAX) {
            return false;
        }
        (*first..=*last).all(|n| {
            self.elements.iter().any(|e| match e.key.as_slice() {
                [Span::Exact(Atom::Num(v))] => *v == n,
                [Span::Range(a, b)] => (a..=b).contains(&&n),
                _ => false,
            })
        })
    }
}

fn build_index(elements: &[SetElement]) -> Index {
    let exact: Option<Vec<Vec<Atom>>> = elements
        .iter()
        .map(|e| {
            e.key
                .iter()
                .map(|span| match span {
                    Span::Exact(atom) => Some(atom.clone()),
                    _ => None,
                })
                .collect()
        })
        .collect();
    if let Some(keys) = exact {
        let mut map = HashMap::with_capacity(keys.len());
        for (at, key) in keys.into_iter().enumerate() {
            map.entry(key).or_insert(at);
        }
        return Index::Exact(map);
    }
    let ranges: Option<Vec<(u128, u128, usize)>> = elements
        .iter()
        .enumerate()
        .map(|(at, e)| match e.key.as_slice() {
            [Span::Exact(Atom::Num(n))] => Some((*n, *n, at)),
            [Span::Range(first, last)] => Some((*first, *last, at)),
            _ => None,
        })
        .collect();
    if let Some(mut ranges) = ranges {
        ranges.sort_unstable();
        if ranges.windows(2).all(|pair| pair[0].1 < pair[1].0) {
            return Index::Intervals(ranges);
        }
    }
    Index::Scan
}

/// An element from its JSON: a value, `{"elem": {"val": ..., "comment": ...}}`, or for a
/// map `[key, data]`.
fn element(item: &Value, kinds: &[FieldKind], is_map: bool) -> SetElement {
    let (key, data) = match item.as_array().map(Vec::as_slice) {
        Some([key, data]) if is_map => (key, Some(data)),
        _ => (item, None),
    };
    let wrapped = key.get("elem");
    let value = wrapped.and_then(|e| e.get("val")).unwrap_or(key);
    let comment = wrapped.and_then(|e| e.get("comment")).and_then(Value::as_str).map(str::to_string);
    let spans = match (kinds, value.get("concat").and_then(Value::as_array)) {
        ([kind], _) => vec![span(*kind, value)],
        (kinds, Some(parts)) if parts.len() == kinds.len() => {
            kinds.iter().zip(parts).map(|(kind, part)| span(*kind, part)).collect()
        }
        (kinds, _) => vec![Span::Unknown; kinds.len()],
    };
    SetElement { key: spans, text: render_expr(value, None), comment, verdict: data.and_then(map_verdict) }
}

/// The verdict of a verdict map's element; `None` for a data map's value.
pub(super) fn map_verdict(data: &Value) -> Option<Verdict> {
    let (kind, arg) = data.as_object().and_then(|o| o.iter().next())?;
    Some(match kind.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "continue" => Verdict::Other("continue".to_string()),
        "jump" => Verdict::Jump(str_field(arg, "target").to_string()),
        "goto" => Verdict::Goto(str_field(arg, "target").to_string()),
        _ => return None,
    })
}

fn span(kind: FieldKind, value: &Value) -> Span {
    if let Some(prefix) = value.get("prefix") {
        let parsed = str_field(prefix, "addr").parse::<IpAddr>().ok().zip(prefix.get("len").and_then(Value::as_u64));
        return match parsed {
            Some((addr, len)) if kind == FieldKind::Addr => prefix_span(addr, len).unwrap_or(Span::Unknown),
            _ => Span::Unknown,
        };
    }
    if let Some([first, last]) = value.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        return match (number(kind, first), number(kind, last)) {
            (Some(first), Some(last)) if first <= last => Span::Range(first, last),
            _ => Span::Unknown,
        };
    }
    if kind == FieldKind::Iface {
        return match value.as_str() {
            Some(name) => match name.strip_suffix('*') {
                Some(prefix) if !prefix.ends_with('\\') => Span::Prefix(prefix.to_string()),
                _ => Span::Exact(Atom::Text(name.replace("\\*", "*"))),
            },
            None => Span::Unknown,
        };
    }
    number(kind, value).map_or(Span::Unknown, |n| Span::Exact(Atom::Num(n)))
}

fn prefix_span(addr: IpAddr, len: u64) -> Option<Span> {
    // In the mapped range an IPv4 prefix is 96 bits longer.
    let len = u32::try_from(len).ok()? + if addr.is_ipv4() { 96 } else { 0 };
    let host_bits = 128u32.checked_sub(len)?;
    let host = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    let base = addr_number(addr);
    Some(Span::Range(base & !host, base | host))
}

/// A value of a numeric field as a number; `None` when it is not one tracer reads.
fn number(kind: FieldKind, value: &Value) -> Option<u128> {
    match (kind, value) {
        (FieldKind::Addr, Value::String(addr)) => addr.parse::<IpAddr>().ok().map(addr_number),
        (FieldKind::Proto, Value::String(name)) => protocol_number(name).flatten().map(u128::from),
        (FieldKind::CtState, Value::String(name)) => CtState::from_name(name).map(|s| u128::from(s.bit())),
        (FieldKind::NfProto, Value::String(name)) => match name.as_str() {
            "ipv4" => Some(2),
            "ipv6" => Some(10),
            _ => None,
        },
        (FieldKind::Proto | FieldKind::Number | FieldKind::NfProto, Value::Number(n)) => n.as_u64().map(u128::from),
        (FieldKind::Number, Value::String(n)) => n.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str, kinds: &[FieldKind], is_map: bool) -> NftSet {
        let items: Vec<Value> = serde_json::from_str(json).expect("json");
        NftSet::from_json("@s".to_string(), &items, kinds, is_map)
    }

    fn addr(text: &str) -> KeyField {
        KeyField::Known(Atom::addr(text.parse().expect("addr")))
    }

    fn num(n: u128) -> KeyField {
        KeyField::Known(Atom::Num(n))
    }

    #[test]
    fn exact_keys_are_hashed_and_found_with_their_comment_and_verdict() {
        let map = set(
            r#"[[{"elem": {"val": {"concat": ["10.96.0.10", "udp", 53]}, "comment": "kube-system/kube-dns:dns"}}, {"goto": {"target": "reject-chain"}}],
                [{"concat": ["10.96.0.20", "tcp", 80]}, {"goto": {"target": "svc"}}]]"#,
            &[FieldKind::Addr, FieldKind::Proto, FieldKind::Number],
            true,
        );
        assert!(map.is_hashed());
        let Found::Element(at) = map.find(&[addr("10.96.0.10"), num(17), num(53)]) else { panic!("not found") };
        let element = &map.elements[at];
        assert_eq!(element.text, "10.96.0.10 . udp . 53");
        assert_eq!(element.comment.as_deref(), Some("kube-system/kube-dns:dns"));
        assert_eq!(element.verdict, Some(Verdict::Goto("reject-chain".to_string())));
        assert_eq!(map.find(&[addr("10.96.0.10"), num(6), num(53)]), Found::Missing);
        // The address unknown: the elements with udp . 53 may hold it, or none.
        assert_eq!(
            map.find(&[KeyField::Unknown, num(17), num(53)]),
            Found::Possibly { elements: vec![0], missing: true }
        );
        assert_eq!(map.find(&[KeyField::Unknown, num(17), num(54)]), Found::Missing);
    }

    #[test]
    fn one_field_of_ranges_is_searched_in_order() {
        let ranges = set(
            r#"[{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": ["192.168.1.1", "192.168.1.9"]}, "172.16.0.1"]"#,
            &[FieldKind::Addr],
            false,
        );
        assert!(matches!(ranges.index, Index::Intervals(_)));
        assert_eq!(ranges.find(&[addr("10.200.0.1")]), Found::Element(0));
        assert_eq!(ranges.find(&[addr("192.168.1.9")]), Found::Element(1));
        assert_eq!(ranges.find(&[addr("172.16.0.1")]), Found::Element(2));
        assert_eq!(ranges.find(&[addr("192.168.1.10")]), Found::Missing);
        assert_eq!(ranges.find(&[addr("::a00:1")]), Found::Missing, "never an address of the other family");
        assert_eq!(ranges.elements[0].text, "10.0.0.0/8");
    }

    #[test]
    fn concatenated_ranges_wildcards_and_numgen() {
        let intervals = set(
            r#"[{"concat": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": [80, 90]}]}]"#,
            &[FieldKind::Addr, FieldKind::Number],
            false,
        );
        assert!(matches!(intervals.index, Index::Scan));
        assert_eq!(intervals.find(&[addr("10.1.1.1"), num(85)]), Found::Element(0));
        assert_eq!(intervals.find(&[addr("10.1.1.1"), num(91)]), Found::Missing);
        assert_eq!(intervals.elements[0].text, "10.0.0.0/8 . 80-90");

        let ifaces = set(r#"["veth*", "eth0"]"#, &[FieldKind::Iface], false);
        let name = |n: &str| KeyField::Known(Atom::Text(n.to_string()));
        assert_eq!(ifaces.find(&[name("veth1234")]), Found::Element(0));
        assert_eq!(ifaces.find(&[name("eth0")]), Found::Element(1));
        assert_eq!(ifaces.find(&[name("eth1")]), Found::Missing);

        let numgen = set(
            r#"[[0, {"goto": {"target": "endpoint-a"}}], [1, {"goto": {"target": "endpoint-b"}}]]"#,
            &[FieldKind::Number],
            true,
        );
        assert_eq!(numgen.find(&[KeyField::AnyOf(0, 1)]), Found::Possibly { elements: vec![0, 1], missing: false });
        assert_eq!(numgen.find(&[KeyField::AnyOf(0, 2)]), Found::Possibly { elements: vec![0, 1], missing: true });
    }

    #[test]
    fn values_tracer_cannot_read_may_hold_any_key() {
        let odd = set(r#"[{"concat": ["10.0.0.1", "whatever"]}, 7]"#, &[FieldKind::Addr, FieldKind::Other], false);
        assert_eq!(
            odd.find(&[addr("10.0.0.1"), KeyField::Unknown]),
            Found::Possibly { elements: vec![0, 1], missing: true }
        );
        assert_eq!(
            odd.find(&[addr("10.0.0.2"), KeyField::Unknown]),
            Found::Possibly { elements: vec![1], missing: true }
        );
    }
}
