//! Prints nft rules in nft syntax from the JSON `nft -j` lists them in. The text is for
//! people: it follows `nft -s list ruleset` for the common statements and falls back to the
//! statement's JSON for exotic ones.

use serde_json::Value;

pub(super) fn render_statement(kind: &str, arg: &Value, family: &str) -> String {
    match kind {
        "match" => {
            let left = arg.get("left").unwrap_or(&Value::Null);
            let right = arg.get("right").unwrap_or(&Value::Null);
            let op = str_field(arg, "op");
            let left_text = render_expr(left, None);
            let right_text = render_expr(right, Some(left));
            // Flags under a mask of flags: nft writes `tcp flags syn / syn,ack`.
            if let Some(Value::Array(parts)) = left.get("&") {
                if let ([expr, mask @ (Value::Array(_) | Value::String(_))], "==") = (parts.as_slice(), op) {
                    return format!(
                        "{} {} / {}",
                        render_expr(expr, None),
                        render_expr(right, Some(expr)),
                        render_expr(mask, Some(expr))
                    );
                }
            }
            // A masked value needs its operator spelled out to read unambiguously.
            let binary = left.as_object().is_some_and(|o| o.keys().any(|k| matches!(k.as_str(), "&" | "|" | "^")));
            match op {
                "==" if binary => format!("{left_text} == {right_text}"),
                "==" | "in" | "" => format!("{left_text} {right_text}"),
                op => format!("{left_text} {op} {right_text}"),
            }
        }
        "counter" => match arg {
            Value::String(name) => format!("counter name {}", quote(name)),
            _ => "counter".to_string(),
        },
        "accept" | "drop" | "return" | "continue" | "notrack" => kind.to_string(),
        "masquerade" | "redirect" if arg.is_null() => kind.to_string(),
        "jump" | "goto" => format!("{kind} {}", str_field(arg, "target")),
        "reject" => {
            let with = nft_reject_with(arg);
            let default = match family {
                "ip" => "icmp port-unreachable",
                "ip6" => "icmpv6 port-unreachable",
                _ => "icmpx port-unreachable",
            };
            if with == default || arg.is_null() {
                "reject".to_string()
            } else {
                format!("reject with {with}")
            }
        }
        "log" => {
            let mut text = "log".to_string();
            if let Some(prefix) = arg.get("prefix").and_then(Value::as_str) {
                text.push_str(&format!(" prefix {}", quote(prefix)));
            }
            for key in ["level", "group", "snaplen", "queue-threshold"] {
                if let Some(value) = arg.get(key) {
                    text.push_str(&format!(" {key} {}", render_expr(value, None)));
                }
            }
            text
        }
        "limit" => {
            let over = if arg.get("inv").and_then(Value::as_bool) == Some(true) { "over " } else { "" };
            let rate = render_expr(arg.get("rate").unwrap_or(&Value::Null), None);
            let unit = match arg.get("rate_unit").and_then(Value::as_str) {
                Some(unit) if unit != "packets" => format!(" {unit}"),
                _ => String::new(),
            };
            let per = arg.get("per").and_then(Value::as_str).unwrap_or("second");
            let mut text = format!("limit rate {over}{rate}{unit}/{per}");
            if let Some(burst) = u64_field(arg, "burst").filter(|b| *b != 0 && *b != 5) {
                let unit = arg.get("burst_unit").and_then(Value::as_str).unwrap_or("packets");
                text.push_str(&format!(" burst {burst} {unit}"));
            }
            text
        }
        "dnat" | "snat" | "masquerade" | "redirect" => {
            let mut text = kind.to_string();
            if let Some(family) = arg.get("family").and_then(Value::as_str) {
                text.push_str(&format!(" {family}"));
            }
            let addr = arg.get("addr").map(|a| render_expr(a, None));
            let port = arg.get("port").map(|p| render_expr(p, None));
            match (addr, port) {
                (Some(addr), Some(port)) if addr.contains(':') => text.push_str(&format!(" to [{addr}]:{port}")),
                (Some(addr), Some(port)) => text.push_str(&format!(" to {addr}:{port}")),
                (Some(addr), None) => text.push_str(&format!(" to {addr}")),
                (None, Some(port)) => text.push_str(&format!(" to :{port}")),
                (None, None) => {}
            }
            if let Some(flags) = arg.get("flags") {
                text.push_str(&format!(" {}", render_expr(flags, None)));
            }
            text
        }
        "mangle" => {
            let key = arg.get("key").unwrap_or(&Value::Null);
            format!(
                "{} set {}",
                render_expr(key, None),
                render_expr(arg.get("value").unwrap_or(&Value::Null), Some(key))
            )
        }
        "vmap" => format!(
            "{} vmap {}",
            render_expr(arg.get("key").unwrap_or(&Value::Null), None),
            render_expr(arg.get("data").unwrap_or(&Value::Null), arg.get("key"))
        ),
        "xt" => format!("xt {} {}", str_field(arg, "type"), quote(str_field(arg, "name"))),
        "queue" => {
            let mut text = "queue".to_string();
            if let Some(flags) = arg.get("flags") {
                text.push_str(&format!(" flags {}", render_expr(flags, None)));
            }
            if let Some(num) = arg.get("num") {
                text.push_str(&format!(" to {}", render_expr(num, None)));
            }
            text
        }
        _ if arg.is_null() => kind.to_string(),
        _ => format!("{kind} {}", compact_json(arg)),
    }
}

/// An expression in nft syntax. `context` is the left side of a match, which decides how
/// a value is written (interface names are quoted, marks are hex).
pub(super) fn render_expr(value: &Value, context: Option<&Value>) -> String {
    match value {
        Value::Null => String::new(),
        Value::Bool(b) => (if *b { "exists" } else { "missing" }).to_string(),
        Value::Number(n) => match (context_key(context), n.as_u64()) {
            (Some("mark"), Some(n)) => format!("0x{n:08x}"),
            _ => n.to_string(),
        },
        Value::String(s) => {
            let quoted = matches!(context_key(context), Some("iifname" | "oifname" | "iif" | "oif"));
            if quoted && !s.starts_with('@') {
                quote(s)
            } else {
                s.clone()
            }
        }
        // A list of flags: `established,related`.
        Value::Array(items) => items.iter().map(|i| render_expr(i, context)).collect::<Vec<_>>().join(","),
        Value::Object(o) => {
            let Some((kind, arg)) = o.iter().next() else {
                return String::new();
            };
            match kind.as_str() {
                "payload" => {
                    if let Some(protocol) = arg.get("protocol").and_then(Value::as_str) {
                        format!("{protocol} {}", str_field(arg, "field"))
                    } else {
                        format!(
                            "@{},{},{}",
                            str_field(arg, "base"),
                            render_expr(arg.get("offset").unwrap_or(&Value::Null), None),
                            render_expr(arg.get("len").unwrap_or(&Value::Null), None)
                        )
                    }
                }
                "meta" => {
                    let key = str_field(arg, "key");
                    if matches!(key, "iif" | "oif" | "iifname" | "oifname" | "iifgroup" | "oifgroup") {
                        key.to_string()
                    } else {
                        format!("meta {key}")
                    }
                }
                "ct" => {
                    let mut text = "ct".to_string();
                    for part in ["dir", "family"] {
                        if let Some(p) = arg.get(part).and_then(Value::as_str) {
                            text.push_str(&format!(" {p}"));
                        }
                    }
                    format!("{text} {}", str_field(arg, "key"))
                }
                "fib" => {
                    let flags = match arg.get("flags") {
                        Some(Value::Array(flags)) => {
                            flags.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" . ")
                        }
                        Some(Value::String(flag)) => flag.clone(),
                        _ => String::new(),
                    };
                    format!("fib {flags} {}", str_field(arg, "result"))
                }
                "&" | "|" | "^" | "<<" | ">>" => match arg.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{} {kind} {}", render_expr(a, context), render_expr(b, Some(a))),
                    _ => compact_json(value),
                },
                "set" => {
                    let items = match arg {
                        Value::Array(items) => items.iter().map(|i| render_set_item(i, context)).collect::<Vec<_>>(),
                        other => vec![render_set_item(other, context)],
                    };
                    format!("{{ {} }}", items.join(", "))
                }
                "range" => match arg.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{}-{}", render_expr(a, context), render_expr(b, context)),
                    _ => compact_json(value),
                },
                "prefix" => {
                    format!("{}/{}", str_field(arg, "addr"), render_expr(arg.get("len").unwrap_or(&Value::Null), None))
                }
                "concat" => match arg {
                    Value::Array(items) => items.iter().map(|i| render_expr(i, None)).collect::<Vec<_>>().join(" . "),
                    _ => compact_json(value),
                },
                "elem" => render_expr(arg.get("val").unwrap_or(&Value::Null), context),
                "map" => format!(
                    "{} map {}",
                    render_expr(arg.get("key").unwrap_or(&Value::Null), None),
                    render_expr(arg.get("data").unwrap_or(&Value::Null), None)
                ),
                "accept" | "drop" | "return" | "continue" => kind.clone(),
                "jump" | "goto" => format!("{kind} {}", str_field(arg, "target")),
                _ => compact_json(value),
            }
        }
    }
}

/// A set element; map elements are `[key, value]` pairs.
fn render_set_item(item: &Value, context: Option<&Value>) -> String {
    match item.as_array().map(Vec::as_slice) {
        Some([key, data]) => format!("{} : {}", render_expr(key, context), render_expr(data, None)),
        _ => render_expr(item, context),
    }
}

fn context_key(context: Option<&Value>) -> Option<&str> {
    let context = context?;
    if let Some(meta) = context.get("meta") {
        return meta.get("key").and_then(Value::as_str);
    }
    if let Some(ct) = context.get("ct") {
        return ct.get("key").and_then(Value::as_str);
    }
    // `meta mark & 0xff00`: the masked expression decides.
    if let Some(Value::Array(parts)) = context.get("&").or_else(|| context.get("|")) {
        return context_key(parts.first());
    }
    None
}

pub(super) fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn compact_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `icmp host-prohibited`, `icmpv6 port-unreachable`, `icmpx admin-prohibited`, `tcp reset`.
pub(super) fn nft_reject_with(arg: &Value) -> String {
    let kind = str_field(arg, "type");
    match arg.get("expr") {
        Some(Value::String(code)) => format!("{kind} {code}"),
        Some(Value::Number(code)) => format!("{kind} {code}"),
        _ if kind.is_empty() => "icmpx port-unreachable".to_string(),
        _ => kind.to_string(),
    }
}

pub(super) fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

pub(super) fn u64_field(value: &Value, key: &str) -> Option<u64> {
    value.get(key).and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use crate::firewall::fixtures::NATIVE_JSON;
    use crate::firewall::nft::parse_nft_json;

    /// Handle and text of every rule, as `nft -s -a list ruleset` printed them.
    const NATIVE_TEXT: &[(&str, u64, &str)] = &[
        ("inet fw", 6, r#"ct state established,related accept"#),
        ("inet fw", 7, r#"ct state invalid counter drop"#),
        (
            "inet fw",
            8,
            r#"meta nfproto ipv4 iifname "veth*" oifname != "eth0" udp dport 53 counter reject with icmp host-prohibited"#,
        ),
        ("inet fw", 9, r#"ip saddr @blocked counter name "cnt1" drop"#),
        ("inet fw", 11, r#"ip6 daddr fd00::/64 tcp dport { 80, 443, 8000-8080 } counter reject with tcp reset"#),
        ("inet fw", 12, r#"udp dport 54 reject"#),
        ("inet fw", 13, r#"udp dport 55 reject with icmpx admin-prohibited"#),
        ("inet fw", 14, r#"ip6 nexthdr udp udp sport 1000-2000 reject with icmpv6 addr-unreachable"#),
        ("inet fw", 15, r#"th dport 99 counter drop comment "block 99""#),
        ("inet fw", 16, r#"ip protocol icmp icmp type echo-request limit rate 5/second accept"#),
        ("inet fw", 17, r#"meta mark 0x00000010 log prefix "fw: " level info drop"#),
        ("inet fw", 18, r#"meta mark & 0x0000ff00 == 0x00000100 drop"#),
        ("inet fw", 20, r#"ip daddr vmap { 1.2.3.4 : drop, 5.6.7.8 : accept }"#),
        ("inet fw", 21, r#"iif "lo" accept"#),
        ("inet fw", 22, r#"ip saddr != 10.0.0.0/8 ip daddr 192.168.1.1 jump sub"#),
        ("inet fw", 23, r#"goto sub"#),
        ("inet fw", 24, r#"meta nfproto ipv4 tcp flags syn / syn,ack counter drop"#),
        ("inet fw", 25, r#"fib daddr type local drop"#),
        ("inet fw", 26, r#"ip dscp cs1 drop"#),
        ("inet fw", 28, r#"meta l4proto { tcp, udp } th dport 5353 drop"#),
        ("inet fw", 30, r#"udp dport != { 1, 2 } drop"#),
        ("inet fw", 31, r#"ip saddr 10.0.0.1-10.0.0.9 drop"#),
        ("inet fw", 32, r#"udp dport 123 drop"#),
        ("inet fw", 33, r#"return"#),
        ("ip natty", 3, r#"ip daddr 10.96.0.10 udp dport 53 dnat to 10.244.0.7:53"#),
        ("ip natty", 4, r#"tcp dport 80 redirect to :8080"#),
        ("ip natty", 5, r#"oifname "eth0" masquerade"#),
        ("ip natty", 6, r#"ip saddr 10.0.0.0/8 snat to 1.2.3.4"#),
        ("ip6 six", 2, r#"icmpv6 type echo-request drop"#),
        ("ip6 six", 3, r#"reject with icmpv6 admin-prohibited"#),
        ("ip6 six", 4, r#"reject"#),
    ];

    #[test]
    fn nft_rules_read_as_nft_prints_them() {
        let chains = parse_nft_json(NATIVE_JSON).expect("parse");
        for (table, handle, text) in NATIVE_TEXT {
            let rule = chains
                .iter()
                .flat_map(|c| &c.rules)
                .find(|r| r.table == *table && r.handle == Some(*handle))
                .unwrap_or_else(|| panic!("no rule {table} handle {handle}"));
            assert_eq!(rule.text, *text, "{table} handle {handle}");
        }
    }
}
