//! One line per packet for a person reading a terminal: time, where the frame went,
//! addresses, what the DNS message says and what conntrack knows. Colour only on a TTY.

use std::io::{self, Write};

use tracer_common::Stage;

use crate::{
    analysis::output::{DropLine, Output, Summary},
    findings::{DnsEvidence, Evidence, Finding, NetfilterEvidence, NodeEvidence, RuleRef},
    model::{
        dns,
        netfilter::HookPass,
        packet::{stage_name, Conntrack},
        pod::with_pod,
        TracedPacket,
    },
};

pub struct TextOutput<W: Write> {
    out: W,
    colour: bool,
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const RED_BOLD: &str = "\x1b[1;31m";

impl<W: Write> TextOutput<W> {
    pub fn new(out: W, colour: bool) -> Self {
        TextOutput { out, colour }
    }

    fn paint(&self, colour: &'static str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}

/// `--output none`: no lines, only the summary (on standard error, for the agent's log).
pub struct SummaryOnly<W: Write> {
    text: TextOutput<W>,
}

impl<W: Write> SummaryOnly<W> {
    pub fn new(out: W) -> Self {
        SummaryOnly { text: TextOutput::new(out, false) }
    }
}

impl<W: Write> Output for SummaryOnly<W> {
    fn packet(&mut self, _packet: &TracedPacket) -> io::Result<()> {
        Ok(())
    }

    fn dropped(&mut self, _line: &DropLine) -> io::Result<()> {
        Ok(())
    }

    fn finding(&mut self, _finding: &Finding) -> io::Result<()> {
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.text.summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `HH:MM:SS.micro` in UTC: node logs and kernel messages are read in UTC too.
pub fn time_of_day(wall_ns: u64) -> String {
    let secs = wall_ns / 1_000_000_000;
    let micros = (wall_ns % 1_000_000_000) / 1_000;
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02}.{:06}", day / 3600, (day % 3600) / 60, day % 60, micros)
}

/// "from → to" for the stage: where the frame was and where it is going.
fn path(packet: &TracedPacket) -> (String, String) {
    let name = |n: &Option<String>, index: u32| n.clone().unwrap_or_else(|| format!("if{index}"));
    let event = &packet.event;
    let here = name(&packet.names.ifname, event.ifindex);
    let bridge = packet.names.bridge.clone().unwrap_or_else(|| "bridge".to_string());
    match event.stage {
        Stage::BridgeIn => (here, bridge),
        Stage::ToHost => (here, "host".to_string()),
        Stage::FromHost => ("host".to_string(), here),
        Stage::BridgeOut => {
            let from =
                if event.ingress_ifindex == 0 { bridge } else { name(&packet.names.in_ifname, event.ingress_ifindex) };
            (from, here)
        }
    }
}

pub fn dns_text(message: &dns::DnsMessage) -> String {
    let qname = message.qname.as_deref().unwrap_or("?");
    let qtype = message.qtype.map(|t| dns::qtype_name(t).into_owned()).unwrap_or_else(|| "?".to_string());
    if message.qr {
        let answer = message.first_answer.as_ref().map(|a| format!(" → {a}")).unwrap_or_default();
        format!("DNS reply #{:04x} {} {qtype} {qname}{answer}", message.id, dns::rcode_name(message.rcode))
    } else {
        format!("DNS query #{:04x} {qtype} {qname}", message.id)
    }
}

/// `PRE_ROUTING(ct new, dnat 10.96.0.10:53→10.244.0.7:53) → FORWARD → POST_ROUTING`
pub fn hook_path(hooks: &[HookPass]) -> String {
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

impl<W: Write> Output for TextOutput<W> {
    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        let drop = &line.dropped.drop;
        let path = hook_path(&line.dropped.path);
        let by = line.rule.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        let icmp = line.icmp.as_ref().map(|i| format!(", ICMP {i}")).unwrap_or_default();
        let verdict = self.paint(RED_BOLD, &format!("✗ {}{by}", line.verdict.name().to_uppercase()));
        let place = line.ifname.clone().unwrap_or_else(|| format!("if{}", drop.ifindex));
        let lost = match line.records_lost {
            Some(n) => {
                self.paint(YELLOW, &format!(" ({n} records of this flow lost: its hook and rule are not certain)"))
            }
            None => String::new(),
        };
        let text = format!(
            "{} {:>15}   {:<15} {} {:<45} {}{}{verdict} [{}{icmp}]{lost}",
            self.paint(DIM, &time_of_day(line.wall_time_ns)),
            place,
            "",
            self.paint(RED_BOLD, &format!("{:<10}", "dropped")),
            format!(
                "{} → {}",
                with_pod(drop.src, line.pods.src_pod.as_ref()),
                with_pod(drop.dst, line.pods.dst_pod.as_ref())
            ),
            path,
            if path.is_empty() { "" } else { " " },
            line.reason
        );
        writeln!(self.out, "{text}")
    }

    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        let hooks = &packet.hooks;
        let event = &packet.event;
        let (from, to) = path(packet);
        let pods = &packet.pods;
        let flow =
            format!("{} → {}", with_pod(event.src, pods.src_pod.as_ref()), with_pod(event.dst, pods.dst_pod.as_ref()));
        let what = match &event.dns {
            Some(message) => dns_text(message),
            None => format!("{} {} bytes", event.l4_proto.name(), event.ip_len),
        };
        let conntrack = match &event.conntrack {
            Conntrack::None => self.paint(YELLOW, "ct:no"),
            Conntrack::Untracked => self.paint(YELLOW, "ct:untracked"),
            Conntrack::Attached(entry) => {
                let nat: Vec<String> = entry.nat().iter().map(|n| n.to_string()).collect();
                let text = if nat.is_empty() { "ct:yes".to_string() } else { format!("ct:yes {}", nat.join(", ")) };
                self.paint(GREEN, &text)
            }
        };
        let line = format!(
            "{} {:>15} → {:<15} {} {:<45} {:<48} {}",
            self.paint(DIM, &time_of_day(packet.wall_time_ns)),
            from,
            to,
            self.paint(CYAN, &format!("{:<10}", stage_name(event.stage))),
            flow,
            what,
            conntrack
        );
        if hooks.is_empty() {
            writeln!(self.out, "{}", line.trim_end())
        } else {
            writeln!(self.out, "{}  via {}", line.trim_end(), hook_path(hooks))
        }
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        let bar = self.paint(RED_BOLD, "┃");
        writeln!(self.out, "{}", self.paint(RED_BOLD, &format!("┏━ FINDING {} ━━", finding.kind.name())))?;
        writeln!(self.out, "{bar} {}", finding.headline)?;
        for line in evidence_lines(&finding.evidence) {
            writeln!(self.out, "{bar} {line}")?;
        }
        writeln!(self.out, "{bar} why: {}", finding.explanation)?;
        for (n, fix) in finding.fix.iter().enumerate() {
            let label = if n == 0 { "fix:" } else { "    " };
            writeln!(self.out, "{bar} {label} {fix}")?;
        }
        writeln!(self.out, "{}", self.paint(RED_BOLD, "┗━━"))
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        let lost = if summary.lost == 0 {
            "0 lost".to_string()
        } else {
            self.paint(YELLOW, &format!("{} lost (ring buffer full; try --ring-buffer-mib)", summary.lost))
        };
        let findings = if summary.findings == 0 {
            "no findings".to_string()
        } else {
            let counts: Vec<String> = summary.finding_counts.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
            self.paint(
                RED_BOLD,
                &format!(
                    "{} finding{} ({})",
                    summary.findings,
                    if summary.findings == 1 { "" } else { "s" },
                    counts.join(", ")
                ),
            )
        };
        let mut notes = String::new();
        if summary.unconfirmed > 0 {
            let counts: Vec<String> =
                summary.unconfirmed_counts.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
            notes.push_str(&self.paint(
                YELLOW,
                &format!(
                    ", {} unconfirmed ({}: records of their flows were lost, so they are not stated)",
                    summary.unconfirmed,
                    counts.join(", ")
                ),
            ));
        }
        if summary.evicted_flows > 0 {
            notes.push_str(&format!(", {} queries dropped from tracking (table full)", summary.evicted_flows));
        }
        if summary.evicted_paths > 0 {
            notes.push_str(&format!(
                ", {} packet journeys that never ended (shown as far as they went)",
                summary.evicted_paths
            ));
        }
        if summary.findings_overflow > 0 {
            notes.push_str(&format!(
                ", {} occurrences of further distinct findings not kept (log full)",
                summary.findings_overflow
            ));
        }
        writeln!(
            self.out,
            "-- {} packets, {lost}, {findings}{notes}, {:.1} s",
            summary.packets, summary.duration_secs
        )?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A finding's evidence as the lines of its block.
pub fn evidence_lines(evidence: &Evidence) -> Vec<String> {
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
        lines.push(format!(
            "reply from {} (expected {expected}){ports}",
            with_pod(actual, pods.actual_source_pod.as_ref())
        ));
    }
    if let Some(seen) = &dns.last_seen {
        let place = seen.ifname.clone().unwrap_or_else(|| format!("if{}", seen.ifindex));
        lines.push(format!("last seen {} on {place} at {}", stage_name(seen.stage), time_of_day(seen.wall_time_ns)));
    }
    for sysctl in &dns.sysctls {
        lines.push(format!("{} = {}", sysctl.name, sysctl.value.as_deref().unwrap_or("(absent)")));
    }
    lines
}

/// `iptables-nft filter/FORWARD #16: -A FORWARD ... -j REJECT ...`
pub fn rule_label(rule: &RuleRef) -> String {
    let handle = rule.handle.map(|h| format!(" handle {h}")).unwrap_or_default();
    format!("{} {}/{} #{}{handle}: {}", rule.backend, rule.table, rule.chain, rule.position, rule.text)
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
    for candidate in &nf.candidates {
        lines.push(format!("candidate: {}", rule_label(candidate)));
    }
    lines.push(format!("attribution: {}", nf.attribution));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_day_is_utc_with_micros() {
        // 2026-11-23T13:45:01.123456789Z
        let ns = 1_795_441_501_123_456_789u64;
        assert_eq!(time_of_day(ns), "13:45:01.123456");
    }
}
