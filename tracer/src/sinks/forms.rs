//! The forms several sinks share: phrases for people (times, DNS messages, hook paths, a
//! finding's evidence) and JSON values for programs. Not a sink itself: text, the listing,
//! triage and the capture's comments print with these, so they say the same thing the
//! same way.

use std::{borrow::Cow, fmt::Write};

use serde::Serialize;
use serde_json::Value;

use crate::{
    model::{
        dns,
        firewall::{Manager, Owner},
        netfilter::HookPass,
        packet::{stage_name, Conntrack},
        pod::with_pod,
    },
    schema::finding::{DnsEvidence, Evidence, NetfilterEvidence, NodeEvidence, RuleRef},
};

/// `text` with control characters, and the Unicode marks that reorder text, written as
/// escapes (`\x1b`, `\u{202e}`): a name from a packet, a capture file or the node (an
/// interface, a pod, a rule's comment) can then neither move the cursor, recolour or clear
/// a terminal, nor make a line read other than it is. Every line for people goes through it.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    fn escaped(c: char) -> bool {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !escaped(c) => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// `HH:MM:SS.micro` in UTC: node logs and kernel messages are read in UTC too.
pub(crate) fn time_of_day(wall_ns: u64) -> String {
    let secs = wall_ns / 1_000_000_000;
    let micros = (wall_ns % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, (day % 3600) / 60, day % 60, micros)
}

pub(crate) fn dns_text(message: &dns::DnsMessage) -> String {
    let qname = message.qname.as_deref().unwrap_or("?");
    let qtype = message.qtype.map(|t| dns::qtype_name(t).into_owned()).unwrap_or_else(|| "?".to_string());
    if message.qr {
        let answer = message.first_answer.as_ref().map(|a| format!(" → {a}")).unwrap_or_default();
        let truncated = if message.truncated { " (truncated: TC)" } else { "" };
        format!("DNS reply #{:04x} {} {qtype} {qname}{answer}{truncated}", message.id, dns::rcode_name(message.rcode))
    } else {
        format!("DNS query #{:04x} {qtype} {qname}", message.id)
    }
}

/// `PRE_ROUTING(ct new, dnat 10.96.0.10:53→10.244.0.7:53) → FORWARD → POST_ROUTING`
pub(crate) fn hook_path(hooks: &[HookPass]) -> String {
    hooks
        .iter()
        .map(|pass| {
            let mut notes = Vec::new();
            match &pass.conntrack {
                Conntrack::Attached(entry) => notes.push(format!("ct {}", entry.ctinfo_name())),
                Conntrack::Untracked => notes.push("untracked".to_string()),
                Conntrack::None => {}
            }
            notes.extend(pass.nat().iter().map(|n| n.to_string()));
            if notes.is_empty() {
                pass.hook.name().to_string()
            } else {
                format!("{}({})", pass.hook.name(), notes.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

/// A finding's evidence as the lines of its block.
pub(crate) fn evidence_lines(evidence: &Evidence) -> Vec<String> {
    match evidence {
        Evidence::Dns(dns) => dns_evidence_lines(dns),
        Evidence::Netfilter(nf) => netfilter_evidence_lines(nf),
        Evidence::Node(node) => node_evidence_lines(node),
    }
}

fn dns_evidence_lines(dns: &DnsEvidence) -> Vec<String> {
    let query = format!(
        "{} {} (id {:#06x})",
        dns.query.qtype.map(|t| dns::qtype_name(t).into_owned()).unwrap_or_else(|| "?".to_string()),
        dns.query.qname.as_deref().unwrap_or("?"),
        dns.query.id
    );
    let pods = &dns.pods;
    let expected = with_pod(dns.expected_source, pods.expected_source_pod.as_ref());
    let mut lines =
        vec![format!("client {}  asked {expected}  for {query}", with_pod(dns.client, pods.client_pod.as_ref()))];
    if let Some(actual) = dns.actual_source {
        let ports = match (&dns.reply_in_port, &dns.reply_out_port) {
            (Some(from), Some(to)) => format!(", bridged {from} → {to}"),
            _ => String::new(),
        };
        let from = with_pod(actual, pods.actual_source_pod.as_ref());
        let answer = dns.rcode.as_deref().map(|rcode| format!(": {rcode}")).unwrap_or_default();
        if actual == dns.expected_source {
            lines.push(format!("reply from {from}{answer}{ports}"));
        } else {
            lines.push(format!("reply from {from} (expected {expected}){answer}{ports}"));
        }
    }
    if let Some(seen) = &dns.last_seen {
        let place = seen.ifname.clone().unwrap_or_else(|| format!("if{}", seen.ifindex));
        lines.push(format!("last seen {} on {place} at {}", stage_name(seen.stage), time_of_day(seen.wall_time_ns)));
    }
    if let Some(stale) = &dns.stale_dnat {
        let now: Vec<String> = stale.current.iter().map(|addr| addr.to_string()).collect();
        lines.push(format!(
            "sent to {} by a conntrack entry of an earlier exchange; the rules send new flows to {}",
            stale.backend,
            now.join(", ")
        ));
    }
    if let Some(retry) = &dns.tcp_retry {
        let how = match &retry.drop_reason {
            Some(reason) => format!("{} ({reason})", retry.outcome),
            None => retry.outcome.to_string(),
        };
        let seen = retry.last_seen.as_ref().map(|seen| {
            let place = seen.ifname.clone().unwrap_or_else(|| format!("if{}", seen.ifindex));
            format!(", last seen {} on {place}", stage_name(seen.stage))
        });
        lines.push(format!(
            "the answer came truncated (TC); the retry over TCP from {} to {}: {how}{}",
            retry.client,
            retry.server,
            seen.unwrap_or_default()
        ));
    }
    if let Some(lost) = &dns.fragments {
        let size = lost.answer_len.map(|len| format!("{len} bytes, ")).unwrap_or_default();
        let place = lost.ifname.as_deref().unwrap_or("?");
        let hook = lost.hook.map(|hook| format!(" in hook {hook}")).unwrap_or_default();
        lines.push(format!(
            "the answer from {} ({size}in IP fragments): its {} fragment dropped on {place}{hook} ({})",
            lost.server, lost.dropped, lost.drop_reason
        ));
    }
    if let Some(walk) = &dns.search {
        lines.push(format!("tried first, each NXDOMAIN: {}", walk.tried.join(", ")));
        lines.push(format!("{:.1} ms from the first of them to asking {}", walk.lost_ms, walk.name));
    }
    for sysctl in &dns.sysctls {
        lines.push(format!("{} = {}", sysctl.name, sysctl.value.as_deref().unwrap_or("(absent)")));
    }
    lines
}

/// `iptables-nft filter/FORWARD #16: -A FORWARD ... -j REJECT ...`
pub(crate) fn rule_label(rule: &RuleRef) -> String {
    let handle = rule.handle.map(|h| format!(" handle {h}")).unwrap_or_default();
    format!("{} {}/{} #{}{handle}: {}", rule.backend, rule.table, rule.chain, rule.position, rule.text)
}

/// `kube-proxy (Service kube-system/kube-dns:dns)`: who owns a rule, and what for, as far as
/// the ruleset names it.
pub(crate) fn owner_phrase(owner: &Owner) -> String {
    let details: Vec<String> = [("Service", &owner.service), ("policy", &owner.policy), ("zone", &owner.zone)]
        .into_iter()
        .filter_map(|(what, value)| value.as_ref().map(|value| format!("{what} {value}")))
        .collect();
    if details.is_empty() {
        owner.manager.name().to_string()
    } else {
        format!("{} ({})", owner.manager, details.join(", "))
    }
}

/// The `owner:` line of a finding's evidence: the owner and what gave it away.
fn owner_line(owner: &Owner) -> String {
    match owner.manager {
        Manager::Unknown => format!("owner: none known — {}", owner.evidence),
        _ => format!("owner: {} — {}", owner_phrase(owner), owner.evidence),
    }
}

fn netfilter_evidence_lines(nf: &NetfilterEvidence) -> Vec<String> {
    let devices = match (&nf.in_ifname, &nf.out_ifname) {
        (Some(i), Some(o)) => format!(" ({i} → {o})"),
        (Some(i), None) => format!(" (in {i})"),
        _ => String::new(),
    };
    let (src, dst) = (with_pod(nf.src, nf.pods.src_pod.as_ref()), with_pod(nf.dst, nf.pods.dst_pod.as_ref()));
    let mut lines = vec![format!("{} {src} → {dst} stopped in hook {}{devices}", nf.proto, nf.hook)];
    if let Some(icmp) = &nf.icmp {
        lines.push(format!("the node answered with ICMP {icmp}"));
    }
    match (nf.culprit.rule(), nf.culprit.policy_chain()) {
        (Some(rule), _) => lines.push(format!("rule: {}", rule_label(&rule))),
        (None, Some(policy)) => lines.push(format!("policy of {} chain {}", policy.backend, policy.label())),
        (None, None) => {}
    }
    lines.extend(nf.owner.as_ref().map(owner_line));
    for candidate in &nf.candidates {
        lines.push(format!("candidate: {}", rule_label(candidate)));
    }
    lines.push(format!("attribution: {}", nf.attribution));
    if let Some(query) = &nf.retry_of {
        lines.push(format!(
            "the client's retry over TCP of {} {} (id {:#06x}), whose UDP answer came truncated (TC)",
            query.qtype.map(|t| dns::qtype_name(t).into_owned()).unwrap_or_else(|| "?".to_string()),
            query.qname.as_deref().unwrap_or("?"),
            query.id
        ));
    }
    lines
}

fn node_evidence_lines(node: &NodeEvidence) -> Vec<String> {
    let mut lines = Vec::new();
    if !node.netns.current {
        let name = node.netns.name.as_deref().unwrap_or("(unnamed)");
        lines.push(format!("network namespace {name} (netns {})", node.netns.inode));
    }
    if !node.bridges.is_empty() {
        lines.push(format!("bridges: {}", node.bridges.join(", ")));
    }
    if let Some(interface) = &node.interface {
        lines.push(format!("interface: {interface}"));
    }
    for sysctl in &node.sysctls {
        lines.push(format!("{} = {}", sysctl.name, sysctl.value.as_deref().unwrap_or("(absent)")));
    }
    if let Some(conntrack) = &node.conntrack {
        let usage = match (conntrack.count, conntrack.max) {
            (Some(count), Some(max)) => format!("{count} / {max} entries"),
            (Some(count), None) => format!("{count} entries"),
            _ => "entries unknown".to_string(),
        };
        let counters: Vec<String> = conntrack
            .counters
            .iter()
            .map(|c| match c.growth {
                Some(growth) => format!("{} {} (+{growth} in the window)", c.name, c.total),
                None => format!("{} {}", c.name, c.total),
            })
            .collect();
        lines.push(format!("conntrack: {usage}; {}", counters.join(", ")));
    }
    if let Some(rule) = &node.rule {
        lines.push(format!("rule: {}", rule_label(rule)));
    }
    if let Some(policy) = node.policy_chain() {
        lines.push(format!("DROP policy of {} {}", policy.backend, policy.label()));
    }
    lines.extend(node.owner.as_ref().map(owner_line));
    if let Some(drops) = &node.drops {
        let device = drops.ifname.as_ref().map(|i| format!(" on {i}")).unwrap_or_default();
        lines.push(format!(
            "kernel drops: {} × {} {}, first {} {} → {}{device}",
            drops.count, drops.reason, drops.place, drops.proto, drops.src, drops.dst
        ));
    }
    lines.extend(node.notes.iter().cloned());
    lines
}

/// A value as the JSON tree outputs embed (triage's examples and evidence). Serialising
/// model values cannot fail: they hold no maps with non-string keys.
pub(crate) fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A finding's evidence as the fields of an object.
pub(crate) fn evidence_json(evidence: &Evidence) -> Value {
    to_value(evidence)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn controls_and_reordering_marks_are_escaped_and_the_rest_kept() {
        assert!(matches!(printable("veth-client → cni0 ✓"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(printable("\u{1b}[31mred\u{7}"), "\\x1b[31mred\\x07");
        assert_eq!(printable("a\nb\tc\u{7f}\u{9b}"), "a\\x0ab\\x09c\\x7f\\x9b");
        assert_eq!(printable("pod-\u{202e}gnp.exe"), "pod-\\u{202e}gnp.exe");
        assert_eq!(printable("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
    }
}
