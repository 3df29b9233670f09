//! Parses what `nft -j -a list ruleset` prints into chains of rules with their matches,
//! verdicts and counters, resolving named sets, maps and counters of each table.

use std::collections::HashMap;

use anyhow::Context;
use serde_json::Value;

use super::model::{
    protocol_number, AddrRange, Backend, Chain, Condition, Family, Hook, IfacePattern, PortRange, Rule, RuleMatches,
    Verdict,
};
use super::nft_text::{nft_reject_with, quote, render_statement, str_field, u64_field};

/// Parses `nft -j -a list ruleset`. Every chain of the ip, ip6 and inet families, whoever
/// made it (`reconcile` sorts out the ones iptables-nft owns); an inet chain is listed once
/// per family, as IPv4 and IPv6 packets both traverse it. Other families (arp, bridge,
/// netdev) do not see packets at the IP hooks and are left out.
pub(crate) fn parse_nft_json(json: &str) -> anyhow::Result<Vec<Chain>> {
    Ok(parse_nft(json)?.into_iter().map(|c| c.chain).collect())
}

/// A chain as nft listed it, with what `reconcile` needs to compare it with iptables-nft-save.
pub(super) struct NftChain {
    pub(super) chain: Chain,
    /// `ip`, `ip6` or `inet`.
    pub(super) kernel_family: String,
    pub(super) table_name: String,
    /// Per rule: it has a set or map lookup that did not become a test (`meta mark { 1, 2 }`,
    /// a vmap), which `reconcile` cannot compare with what iptables-nft-save printed.
    pub(super) opaque_lookups: Vec<bool>,
}

/// Named sets, maps and counters of one table, for resolving `@name` and `counter name`.
#[derive(Default)]
struct NftObjects {
    sets: HashMap<(String, String, String), Vec<Value>>,
    counters: HashMap<(String, String, String), (u64, u64)>,
}

pub(super) fn parse_nft(json: &str) -> anyhow::Result<Vec<NftChain>> {
    let root: Value = serde_json::from_str(json).context("not JSON")?;
    let items = root.get("nftables").and_then(Value::as_array).context("no \"nftables\" array")?;

    let mut objects = NftObjects::default();
    let mut chains: Vec<NftChain> = Vec::new();
    let mut chain_at: HashMap<(String, String, String), usize> = HashMap::new();
    let mut rules: Vec<&Value> = Vec::new();
    for item in items {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let family = str_field(body, "family");
        if !matches!(family, "ip" | "ip6" | "inet") {
            continue;
        }
        let key = |name: &str| (family.to_string(), str_field(body, "table").to_string(), name.to_string());
        match kind.as_str() {
            "set" | "map" => {
                let elements = body.get("elem").and_then(Value::as_array).cloned().unwrap_or_default();
                objects.sets.insert(key(str_field(body, "name")), elements);
            }
            "counter" => {
                let counter = (u64_field(body, "packets").unwrap_or(0), u64_field(body, "bytes").unwrap_or(0));
                objects.counters.insert(key(str_field(body, "name")), counter);
            }
            "chain" => {
                let name = str_field(body, "name");
                chain_at.insert(key(name), chains.len());
                let hook = body.get("hook").and_then(Value::as_str);
                chains.push(NftChain {
                    chain: Chain {
                        backend: Backend::Nftables,
                        family: Family::Ipv4,
                        table: format!("{family} {}", str_field(body, "table")),
                        name: name.to_string(),
                        hook: hook.and_then(Hook::from_nft),
                        policy: hook.and(body.get("policy").and_then(Value::as_str)).map(|p| match p {
                            "accept" => Verdict::Accept,
                            "drop" => Verdict::Drop,
                            other => Verdict::Other(other.to_string()),
                        }),
                        policy_packets: None,
                        rules: Vec::new(),
                    },
                    kernel_family: family.to_string(),
                    table_name: str_field(body, "table").to_string(),
                    opaque_lookups: Vec::new(),
                });
            }
            "rule" => rules.push(body),
            _ => {}
        }
    }

    for body in rules {
        let family = str_field(body, "family");
        let key = (family.to_string(), str_field(body, "table").to_string(), str_field(body, "chain").to_string());
        let Some(&at) = chain_at.get(&key) else { continue };
        let table_key = (key.0.clone(), key.1.clone());
        let nft_chain = &mut chains[at];
        let position = u32::try_from(nft_chain.chain.rules.len() + 1).unwrap_or(u32::MAX);
        let parsed = parse_nft_rule(body, family, &table_key, &objects);
        nft_chain.opaque_lookups.push(parsed.opaque_lookup);
        nft_chain.chain.rules.push(Rule {
            backend: Backend::Nftables,
            family: Family::Ipv4,
            table: nft_chain.chain.table.clone(),
            chain: nft_chain.chain.name.clone(),
            position,
            handle: body.get("handle").and_then(Value::as_u64),
            text: parsed.text,
            comment: body.get("comment").and_then(Value::as_str).map(str::to_string),
            verdict: parsed.verdict,
            map_verdicts: parsed.map_verdicts,
            matches: parsed.matches,
            packets: parsed.counter.map(|(p, _)| p),
            bytes: parsed.counter.map(|(_, b)| b),
        });
    }

    let mut out = Vec::new();
    for nft_chain in chains {
        let families: &[Family] = match nft_chain.kernel_family.as_str() {
            "ip" => &[Family::Ipv4],
            "ip6" => &[Family::Ipv6],
            _ => &[Family::Ipv4, Family::Ipv6],
        };
        for &family in families {
            let mut copy = NftChain {
                chain: nft_chain.chain.clone(),
                kernel_family: nft_chain.kernel_family.clone(),
                table_name: nft_chain.table_name.clone(),
                opaque_lookups: nft_chain.opaque_lookups.clone(),
            };
            copy.chain.family = family;
            for rule in &mut copy.chain.rules {
                rule.family = family;
            }
            out.push(copy);
        }
    }
    Ok(out)
}

struct ParsedNftRule {
    text: String,
    verdict: Verdict,
    map_verdicts: Vec<Verdict>,
    matches: RuleMatches,
    counter: Option<(u64, u64)>,
    opaque_lookup: bool,
}

fn parse_nft_rule(body: &Value, family: &str, table: &(String, String), objects: &NftObjects) -> ParsedNftRule {
    let mut rule = ParsedNftRule {
        text: String::new(),
        verdict: Verdict::Other("continue".to_string()),
        map_verdicts: Vec::new(),
        matches: RuleMatches::default(),
        counter: None,
        opaque_lookup: false,
    };
    let mut words: Vec<String> = Vec::new();
    let statements = body.get("expr").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    for statement in statements {
        let Some((kind, arg)) = statement.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let text = render_statement(kind, arg, family);
        match kind.as_str() {
            "match" => {
                let unparsed = rule.matches.unparsed.len();
                parse_nft_match(arg, &text, table, objects, &mut rule.matches);
                if rule.matches.unparsed.len() > unparsed && contains_set_reference(arg) {
                    rule.opaque_lookup = true;
                }
            }
            "counter" => {
                rule.counter = match arg {
                    Value::String(name) => {
                        objects.counters.get(&(table.0.clone(), table.1.clone(), name.clone())).copied()
                    }
                    _ => Some((u64_field(arg, "packets").unwrap_or(0), u64_field(arg, "bytes").unwrap_or(0))),
                };
            }
            "accept" => rule.verdict = Verdict::Accept,
            "drop" => rule.verdict = Verdict::Drop,
            "return" => rule.verdict = Verdict::Return,
            "jump" => rule.verdict = Verdict::Jump(str_field(arg, "target").to_string()),
            "goto" => rule.verdict = Verdict::Goto(str_field(arg, "target").to_string()),
            "reject" => rule.verdict = Verdict::Reject { with: Some(nft_reject_with(arg)) },
            "xt" if str_field(arg, "type") == "target" => {
                rule.verdict = match str_field(arg, "name") {
                    // iptables-nft's REJECT; nft does not show its options.
                    "REJECT" => Verdict::Reject { with: None },
                    "ACCEPT" => Verdict::Accept,
                    "DROP" => Verdict::Drop,
                    _ => Verdict::Other(text.clone()),
                }
            }
            "xt" => rule.matches.unparsed.push(text.clone()),
            "vmap" => {
                rule.opaque_lookup = true;
                rule.map_verdicts = vmap_verdicts(arg, table, objects);
                rule.matches.unparsed.push(text.clone());
                rule.verdict = Verdict::Other(text.clone());
            }
            // Conditions that stop the rule for some packets.
            "limit" | "quota" | "ct count" | "connlimit" => rule.matches.unparsed.push(text.clone()),
            // Terminal statements other than verdicts.
            "dnat" | "snat" | "masquerade" | "redirect" | "queue" | "tproxy" | "synproxy" | "continue" => {
                rule.verdict = Verdict::Other(text.clone())
            }
            _ => {}
        }
        words.push(text);
    }
    if let Some(comment) = body.get("comment").and_then(Value::as_str) {
        words.push(format!("comment {}", quote(comment)));
    }
    rule.text = words.join(" ");
    rule
}

fn contains_set_reference(value: &Value) -> bool {
    match value {
        Value::String(s) => s.starts_with('@'),
        Value::Object(o) => o.iter().any(|(k, v)| k == "set" || k == "map" || contains_set_reference(v)),
        Value::Array(a) => a.iter().any(contains_set_reference),
        _ => false,
    }
}

/// The verdicts a vmap can choose, from an anonymous map or a named one.
fn vmap_verdicts(arg: &Value, table: &(String, String), objects: &NftObjects) -> Vec<Verdict> {
    let elements: Vec<Value> = match arg.get("data") {
        Some(Value::Object(o)) => o.get("set").and_then(Value::as_array).cloned().unwrap_or_default(),
        Some(Value::String(name)) => name
            .strip_prefix('@')
            .and_then(|name| objects.sets.get(&(table.0.clone(), table.1.clone(), name.to_string())))
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut verdicts = Vec::new();
    for element in elements {
        let Some(verdict) = element.as_array().and_then(|pair| pair.get(1)) else {
            continue;
        };
        let Some((kind, arg)) = verdict.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let verdict = match kind.as_str() {
            "accept" => Verdict::Accept,
            "drop" => Verdict::Drop,
            "return" => Verdict::Return,
            "jump" => Verdict::Jump(str_field(arg, "target").to_string()),
            "goto" => Verdict::Goto(str_field(arg, "target").to_string()),
            other => Verdict::Other(other.to_string()),
        };
        if !verdicts.contains(&verdict) {
            verdicts.push(verdict);
        }
    }
    verdicts
}

/// What a match tests, when it is one of the packet fields attribution can check.
enum NftField {
    Family,
    Proto,
    Src,
    Dst,
    Sport,
    Dport,
    InIface,
    OutIface,
}

fn parse_nft_match(arg: &Value, text: &str, table: &(String, String), objects: &NftObjects, matches: &mut RuleMatches) {
    let left = arg.get("left").unwrap_or(&Value::Null);
    let right = arg.get("right").unwrap_or(&Value::Null);
    let op = arg.get("op").and_then(Value::as_str).unwrap_or("==");

    // A match on a protocol's header also requires that protocol (and family), whatever
    // the operator: nft adds the dependency, e.g. `tcp dport != 80` only matches TCP.
    if let Some(payload) = left.get("payload") {
        match str_field(payload, "protocol") {
            "ip" | "icmp" => matches.test(false, Condition::Family(Family::Ipv4)),
            "ip6" | "icmpv6" => matches.test(false, Condition::Family(Family::Ipv6)),
            _ => {}
        }
        let proto = str_field(payload, "protocol");
        let transport = ["tcp", "udp", "sctp", "dccp", "udplite", "icmp", "icmpv6", "esp", "ah", "comp", "igmp"];
        if transport.contains(&proto) {
            if let Some(Some(number)) = protocol_number(proto) {
                matches.test(false, Condition::Proto(vec![number]));
            }
        }
    }

    let field = if let Some(payload) = left.get("payload") {
        match (str_field(payload, "protocol"), str_field(payload, "field")) {
            ("ip", "saddr") | ("ip6", "saddr") => Some(NftField::Src),
            ("ip", "daddr") | ("ip6", "daddr") => Some(NftField::Dst),
            ("ip", "protocol") | ("ip6", "nexthdr") => Some(NftField::Proto),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "sport") => Some(NftField::Sport),
            ("tcp" | "udp" | "sctp" | "dccp" | "udplite" | "th", "dport") => Some(NftField::Dport),
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match str_field(meta, "key") {
            "l4proto" => Some(NftField::Proto),
            "nfproto" => Some(NftField::Family),
            "iifname" | "iif" => Some(NftField::InIface),
            "oifname" | "oif" => Some(NftField::OutIface),
            _ => None,
        }
    } else {
        None
    };

    let negated = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => {
            // `tcp dport < 1024` and friends are ranges.
            if let (Some(NftField::Sport | NftField::Dport), Some(bound)) = (&field, right.as_u64()) {
                if let Some(range) = comparison_range(op, bound) {
                    let condition = match field {
                        Some(NftField::Sport) => Condition::Sport(vec![range]),
                        _ => Condition::Dport(vec![range]),
                    };
                    matches.test(false, condition);
                    return;
                }
            }
            matches.unparsed.push(text.to_string());
            return;
        }
    };

    // The values the field is compared with: one, an anonymous set or a named set.
    let values: Option<Vec<Value>> = match right {
        Value::Object(o) if o.contains_key("set") => o.get("set").and_then(Value::as_array).cloned(),
        Value::String(s) if s.starts_with('@') => {
            objects.sets.get(&(table.0.clone(), table.1.clone(), s[1..].to_string())).cloned()
        }
        other => Some(vec![other.clone()]),
    };
    let condition = match (field, values) {
        (Some(field), Some(values)) => nft_condition(field, &values),
        _ => None,
    };
    match condition {
        Some(condition) => matches.test(negated, condition),
        None => matches.unparsed.push(text.to_string()),
    }
}

fn comparison_range(op: &str, bound: u64) -> Option<PortRange> {
    let bound = u16::try_from(bound).ok()?;
    match op {
        "<" => Some(PortRange { first: 0, last: bound.checked_sub(1)? }),
        "<=" => Some(PortRange { first: 0, last: bound }),
        ">" => Some(PortRange { first: bound.checked_add(1)?, last: u16::MAX }),
        ">=" => Some(PortRange { first: bound, last: u16::MAX }),
        _ => None,
    }
}

/// A condition from nft values; `None` when any value is not understood (the whole match
/// then counts as unparsed rather than half-checked).
fn nft_condition(field: NftField, values: &[Value]) -> Option<Condition> {
    // Elements of sets with per-element statements come as {"elem": {"val": ...}}.
    let values: Vec<&Value> = values.iter().map(|v| v.get("elem").and_then(|e| e.get("val")).unwrap_or(v)).collect();
    match field {
        NftField::Family => match values.as_slice() {
            [Value::String(f)] if f == "ipv4" => Some(Condition::Family(Family::Ipv4)),
            [Value::String(f)] if f == "ipv6" => Some(Condition::Family(Family::Ipv6)),
            _ => None,
        },
        NftField::Proto => values
            .iter()
            .map(|v| match v {
                Value::String(name) => protocol_number(name).flatten(),
                Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .map(Condition::Proto),
        NftField::Src | NftField::Dst => {
            let ranges = values.iter().map(|v| nft_addr_range(v)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::Src) { Condition::Src } else { Condition::Dst };
            Some(condition(ranges))
        }
        NftField::Sport | NftField::Dport => {
            let ranges = values.iter().map(|v| nft_port_range(v)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::Sport) { Condition::Sport } else { Condition::Dport };
            Some(condition(ranges))
        }
        NftField::InIface | NftField::OutIface => {
            let names = values.iter().map(|v| v.as_str().map(nft_iface)).collect::<Option<Vec<_>>>()?;
            let condition = if matches!(field, NftField::InIface) { Condition::InIface } else { Condition::OutIface };
            Some(condition(names))
        }
    }
}

fn nft_addr_range(value: &Value) -> Option<AddrRange> {
    match value {
        Value::String(addr) => Some(AddrRange::single(addr.parse().ok()?)),
        Value::Object(o) => {
            if let Some(prefix) = o.get("prefix") {
                let addr = str_field(prefix, "addr").parse().ok()?;
                let len = u8::try_from(u64_field(prefix, "len")?).ok()?;
                AddrRange::cidr(addr, len)
            } else if let Some(range) = o.get("range").and_then(Value::as_array) {
                Some(AddrRange {
                    first: range.first()?.as_str()?.parse().ok()?,
                    last: range.get(1)?.as_str()?.parse().ok()?,
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

fn nft_port_range(value: &Value) -> Option<PortRange> {
    let port = |v: &Value| -> Option<u16> {
        match v {
            Value::Number(n) => u16::try_from(n.as_u64()?).ok(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    match value {
        Value::Object(o) => {
            let range = o.get("range")?.as_array()?;
            Some(PortRange { first: port(range.first()?)?, last: port(range.get(1)?)? })
        }
        other => {
            let p = port(other)?;
            Some(PortRange { first: p, last: p })
        }
    }
}

/// nft's `"eth*"` is a prefix; `\*` is a literal star.
fn nft_iface(name: &str) -> IfacePattern {
    match name.strip_suffix('*') {
        Some(prefix) if !prefix.ends_with('\\') => IfacePattern { name: prefix.to_string(), prefix: true },
        _ => IfacePattern { name: name.replace("\\*", "*"), prefix: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::fixtures::{chain, chain_names, cidr, iface, ports, reject_with, test, NATIVE_JSON};

    #[test]
    fn nft_native_ruleset() {
        let chains = parse_nft_json(NATIVE_JSON).expect("parse");
        // inet chains once per family; bridge, netdev and arp tables left out.
        let names = chain_names(&chains);
        assert_eq!(
            names,
            [
                "Ipv4 inet fw myfwd",
                "Ipv6 inet fw myfwd",
                "Ipv4 inet fw sub",
                "Ipv6 inet fw sub",
                "Ipv4 inet fw ing",
                "Ipv6 inet fw ing",
                "Ipv4 ip natty pre",
                "Ipv4 ip natty post",
                "Ipv6 ip6 six inp",
            ]
        );
        assert!(chains.iter().all(|c| c.backend == Backend::Nftables && c.policy_packets.is_none()));

        let forward = chain(&chains, Family::Ipv4, "inet fw", "myfwd");
        assert_eq!((forward.hook, &forward.policy), (Some(Hook::Forward), &Some(Verdict::Drop)));
        assert_eq!(chain(&chains, Family::Ipv4, "inet fw", "ing").hook, None);
        assert_eq!(chain(&chains, Family::Ipv4, "inet fw", "sub").policy, None);
        let rule = |handle: u64| forward.rules.iter().find(|r| r.handle == Some(handle)).expect("rule");

        let dns = rule(8);
        assert_eq!(dns.position, 3);
        assert_eq!(dns.verdict, reject_with("icmp host-prohibited"));
        assert_eq!((dns.packets, dns.bytes), (Some(0), Some(0)));
        assert_eq!(
            dns.matches.tests,
            [
                test(false, Condition::Family(Family::Ipv4)),
                test(false, Condition::InIface(vec![iface("veth", true)])),
                test(true, Condition::OutIface(vec![iface("eth0", false)])),
                test(false, Condition::Proto(vec![17])),
                test(false, Condition::Dport(vec![ports(53, 53)])),
            ]
        );
        // A named set is looked up; a named counter is read from its object.
        let blocked = rule(9);
        assert_eq!(
            blocked.matches.tests[1],
            test(false, Condition::Src(vec![cidr("10.1.0.0/16"), cidr("10.9.9.9/32")]))
        );
        assert_eq!(blocked.packets, Some(0));
        assert_eq!(rule(11).verdict, reject_with("tcp reset"));
        assert_eq!(
            rule(11).matches.tests[3],
            test(false, Condition::Dport(vec![ports(80, 80), ports(443, 443), ports(8000, 8080)]))
        );
        // A bare `reject` in an inet table answers with icmpx port-unreachable.
        assert_eq!(rule(12).verdict, reject_with("icmpx port-unreachable"));
        assert_eq!(rule(12).packets, None);
        assert_eq!(rule(14).verdict, reject_with("icmpv6 addr-unreachable"));
        assert_eq!(rule(15).matches.tests, [test(false, Condition::Dport(vec![ports(99, 99)]))]);
        assert!(rule(16).matches.unparsed.contains(&"limit rate 5/second".to_string()));
        assert_eq!(rule(17).matches.unparsed, ["meta mark 0x00000010"]);
        assert_eq!(rule(20).map_verdicts, [Verdict::Drop, Verdict::Accept]);
        assert_eq!(rule(21).matches.tests, [test(false, Condition::InIface(vec![iface("lo", false)]))]);
        assert_eq!(rule(22).verdict, Verdict::Jump("sub".to_string()));
        assert_eq!(rule(22).matches.tests[1], test(true, Condition::Src(vec![cidr("10.0.0.0/8")])));
        assert_eq!(rule(23).verdict, Verdict::Goto("sub".to_string()));
        assert_eq!(
            rule(28).matches.tests,
            [test(false, Condition::Proto(vec![6, 17])), test(false, Condition::Dport(vec![ports(5353, 5353)]))]
        );
        assert_eq!(rule(30).matches.tests[1], test(true, Condition::Dport(vec![ports(1, 1), ports(2, 2)])));

        let pre = chain(&chains, Family::Ipv4, "ip natty", "pre");
        assert_eq!(pre.rules[0].verdict, Verdict::Other("dnat to 10.244.0.7:53".to_string()));
        let six = chain(&chains, Family::Ipv6, "ip6 six", "inp");
        assert_eq!(six.rules[1].verdict, reject_with("icmpv6 admin-prohibited"));
        assert_eq!(six.rules[2].verdict, reject_with("icmpv6 port-unreachable"));
    }

    #[test]
    fn tool_output_never_panics() {
        for bad in ["", "{", "[]", "{\"nftables\": 3}", "{\"x\": []}"] {
            assert!(parse_nft_json(bad).is_err(), "{bad}");
        }
        let odd = r#"{"nftables": [1, "x", {}, {"rule": {}}, {"chain": {"family": "ip"}},
            {"rule": {"family": "ip", "table": "", "chain": "", "expr": [1, {"match": 2}, {"match": {"left": 3}},
            {"counter": "nope"}, {"reject": 7}, {"vmap": {"data": "@missing"}}, {"jump": null},
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"range": [1]}}},
            {"match": {"op": "<", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 0}},
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "1.2.3.4", "len": 99}}}}]}}]}"#;
        let chains = parse_nft_json(odd).expect("odd but valid JSON");
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].rules.len(), 1);
    }
}
