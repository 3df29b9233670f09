//! `tracer triage`'s report — verdict, ranked findings, node checks, traffic — as text or
//! JSON Lines.

use std::{
    io::{self, Write},
    time::{Duration, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::forms::{evidence_json, evidence_lines, printable};
use crate::model::packet::PortFilter;
use crate::{
    findings::node_config::{Check, Decision, DropGroup, Ranked, Status},
    model::hook::Hook,
    schema::{finding::Evidence, summary::Summary},
};

/// What the report says besides the decision.
pub(crate) struct ReportContext<'a> {
    pub port: PortFilter,
    /// The watch's summary (packets, lost records, duration).
    pub summary: &'a Summary,
    pub drops: &'a [DropGroup],
    pub drops_not_grouped: u64,
    /// Problems reading the node that belong to no namespace.
    pub errors: &'a [String],
    pub exit_code: u8,
}

fn seen_in(ranked: &Ranked) -> Vec<&'static str> {
    let mut seen = Vec::new();
    if ranked.traffic {
        seen.push("traffic");
    }
    if ranked.config {
        seen.push("config");
    }
    seen
}

/// The evidence of a merged finding, each piece with where it came from.
fn sourced_evidence(ranked: &Ranked) -> Vec<(&'static str, &Evidence)> {
    std::iter::once(&ranked.finding.evidence)
        .chain(&ranked.more)
        .map(|evidence| (if matches!(evidence, Evidence::Node(_)) { "config" } else { "traffic" }, evidence))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------

const RESET: &str = "\x1b[0m";
const RED_BOLD: &str = "\x1b[1;31m";
const GREEN_BOLD: &str = "\x1b[1;32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";

fn paint(colour: bool, code: &str, text: &str) -> String {
    if colour {
        format!("{code}{text}{RESET}")
    } else {
        text.to_string()
    }
}

pub(crate) fn print_text(
    out: &mut dyn Write,
    decision: &Decision,
    context: &ReportContext,
    colour: bool,
) -> io::Result<()> {
    let verdict = if decision.findings.is_empty() {
        paint(colour, GREEN_BOLD, &format!("verdict: {}", decision.verdict))
    } else {
        paint(colour, RED_BOLD, &format!("verdict: {}", decision.verdict))
    };
    writeln!(out, "{verdict}")?;
    writeln!(out)?;
    for (n, ranked) in decision.findings.iter().enumerate() {
        finding_block(out, n + 1, ranked, colour)?;
        writeln!(out)?;
    }
    writeln!(out, "node checks ({} in FORWARD/INPUT):", context.port)?;
    for namespace in &decision.namespaces {
        writeln!(out, "  {}", printable(&namespace.label))?;
        let width = namespace.checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
        for check in &namespace.checks {
            check_line(out, check, width, colour)?;
        }
        for error in &namespace.errors {
            writeln!(out, "    {}", paint(colour, YELLOW, &printable(&format!("! {error}"))))?;
        }
    }
    for error in context.errors {
        writeln!(out, "  {}", paint(colour, YELLOW, &printable(&format!("! {error}"))))?;
    }
    let summary = context.summary;
    let lost = if summary.lost == 0 {
        "0 lost".to_string()
    } else {
        paint(colour, YELLOW, &format!("{} lost (ring buffer full; try --ring-buffer-mib)", summary.lost))
    };
    let unconfirmed = if summary.unconfirmed == 0 {
        String::new()
    } else {
        let counts: Vec<String> = summary.unconfirmed_counts.iter().map(|(kind, n)| format!("{kind} ×{n}")).collect();
        paint(
            colour,
            YELLOW,
            &format!(
                "; {} unconfirmed ({}): records of their flows were lost, so they are not findings and do not decide the exit code",
                summary.unconfirmed,
                counts.join(", ")
            ),
        )
    };
    writeln!(
        out,
        "traffic: {} packets on {} in {:.1} s, {lost}{unconfirmed}",
        summary.packets, context.port, summary.duration_secs
    )?;
    for group in context.drops {
        let device = group.ifname.as_ref().map(|i| format!(" on {i}")).unwrap_or_default();
        let place = match (group.stopped_in, group.after) {
            (Some(hook), _) => format!(" in {}", hook.name()),
            (None, Some(hook)) => format!(" after {}", hook.name()),
            _ => String::new(),
        };
        writeln!(
            out,
            "  dropped by the kernel: {} × {}{place}{device}: {} → {}{}",
            group.count,
            group.reason,
            group.src.ip(),
            group.dst,
            group.rule.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        )?;
    }
    if context.drops_not_grouped > 0 {
        writeln!(out, "  and {} more drops", context.drops_not_grouped)?;
    }
    for spot in &summary.blind_spots {
        writeln!(out, "{}", paint(colour, YELLOW, &printable(&format!("blind spot: {spot}"))))?;
    }
    writeln!(
        out,
        "{}",
        paint(
            colour,
            DIM,
            &format!(
                "exit code {}: {}",
                context.exit_code,
                if context.exit_code == 0 { "healthy" } else { "findings" }
            )
        )
    )?;
    out.flush()
}

fn finding_block(out: &mut dyn Write, rank: usize, ranked: &Ranked, colour: bool) -> io::Result<()> {
    let finding = &ranked.finding;
    let bar = paint(colour, RED_BOLD, "┃");
    let seen = match (ranked.traffic, ranked.config) {
        (true, true) => "seen in traffic, confirmed by the node's configuration",
        (true, false) => "seen in traffic",
        (false, _) => "from the node's configuration (no traffic showed it during the window)",
    };
    writeln!(out, "{}", paint(colour, RED_BOLD, &format!("┏━ {rank}. {} ━━ {seen}", finding.kind.name())))?;
    writeln!(out, "{bar} {}", printable(&finding.headline))?;
    if let Some(n) = ranked.occurrences {
        writeln!(out, "{bar} occurred {n}× during the window")?;
    }
    for (source, evidence) in sourced_evidence(ranked) {
        let lines = evidence_lines(evidence);
        for (i, line) in lines.iter().enumerate() {
            let label = if i == 0 { format!("{source}:") } else { " ".repeat(source.len() + 1) };
            writeln!(out, "{bar} {label} {}", printable(line))?;
        }
    }
    if !ranked.example.lines.is_empty() {
        writeln!(out, "{bar} example:")?;
        for line in &ranked.example.lines {
            writeln!(out, "{bar}   {}", printable(line))?;
        }
    }
    writeln!(out, "{bar} why: {}", printable(&finding.explanation))?;
    for (n, fix) in finding.fix.iter().enumerate() {
        let label = if n == 0 { "fix:" } else { "    " };
        writeln!(out, "{bar} {label} {}", printable(fix))?;
    }
    writeln!(out, "{}", paint(colour, RED_BOLD, "┗━━"))
}

fn check_line(out: &mut dyn Write, check: &Check, width: usize, colour: bool) -> io::Result<()> {
    let (mark, status) = match check.status {
        Status::Ok => (paint(colour, GREEN_BOLD, "ok"), String::new()),
        Status::Note => (paint(colour, YELLOW, "note"), String::new()),
        Status::Finding(kind) => (paint(colour, RED_BOLD, "FAIL"), format!(" → {}", kind.name())),
    };
    let detail = if check.detail.is_empty() { String::new() } else { format!("  ({})", printable(&check.detail)) };
    let value = printable(&check.value);
    writeln!(out, "    {mark:<4} {:<width$}  {value}{status}{detail}", check.name, mark = mark, width = width)
}

// ---------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Note => "note",
        Status::Finding(_) => "finding",
    }
}

pub(crate) fn finding_json(rank: usize, ranked: &Ranked) -> Value {
    let finding = &ranked.finding;
    let time = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(finding.wall_time_ns)).to_string();
    let evidence: Vec<Value> = sourced_evidence(ranked)
        .into_iter()
        .map(|(source, evidence)| {
            let mut fields = serde_json::Map::new();
            fields.insert("source".to_string(), Value::String(source.to_string()));
            if let Value::Object(more) = evidence_json(evidence) {
                fields.extend(more);
            }
            Value::Object(fields)
        })
        .collect();
    json!({
        "type": "finding",
        "rank": rank,
        "kind": finding.kind.name(),
        "time": time,
        "headline": finding.headline,
        "seen_in": seen_in(ranked),
        "occurrences": ranked.occurrences,
        "netns": { "name": ranked.netns.name, "inode": ranked.netns.inode, "current": ranked.netns.current },
        "evidence": evidence,
        "example": ranked.example.json,
        "explanation": finding.explanation,
        "fix": finding.fix,
    })
}

pub(crate) fn summary_json(decision: &Decision, context: &ReportContext) -> Value {
    let summary = context.summary;
    let mut counts: Vec<(&'static str, u64)> = Vec::new();
    for ranked in &decision.findings {
        match counts.iter_mut().find(|(kind, _)| *kind == ranked.finding.kind.name()) {
            Some((_, n)) => *n += 1,
            None => counts.push((ranked.finding.kind.name(), 1)),
        }
    }
    json!({
        "type": "summary",
        "verdict": decision.verdict,
        "exit_code": context.exit_code,
        "port": context.port,
        "findings": decision.findings.len(),
        "finding_counts": counts.into_iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "packets": summary.packets,
        "lost": summary.lost,
        "unconfirmed": summary.unconfirmed,
        "unconfirmed_counts": summary.unconfirmed_counts.iter().map(|(kind, n)| (kind.to_string(), json!(n))).collect::<serde_json::Map<String, Value>>(),
        "duration_secs": (summary.duration_secs * 1000.0).round() / 1000.0,
        "drops": context.drops.iter().map(|g| json!({
            "count": g.count,
            "reason": g.reason,
            "stopped_in": g.stopped_in.map(Hook::name),
            "after": g.after.map(Hook::name),
            "src": g.src.to_string(),
            "dst": g.dst.to_string(),
            "ifname": g.ifname,
            "rule": g.rule,
        })).collect::<Vec<_>>(),
        "namespaces": decision.namespaces.iter().map(|ns| json!({
            "name": ns.netns.name,
            "inode": ns.netns.inode,
            "current": ns.netns.current,
            "checks": ns.checks.iter().map(|c| json!({
                "check": c.name,
                "value": c.value,
                "status": status_name(c.status),
                "finding": match c.status { Status::Finding(kind) => Some(kind.name()), _ => None },
                "detail": c.detail,
            })).collect::<Vec<_>>(),
            "errors": ns.errors,
        })).collect::<Vec<_>>(),
        "errors": context.errors,
        "blind_spots": summary.blind_spots,
    })
}

/// One line per finding, most likely cause first, then the summary line.
pub(crate) fn print_json(out: &mut dyn Write, decision: &Decision, context: &ReportContext) -> io::Result<()> {
    for (n, ranked) in decision.findings.iter().enumerate() {
        serde_json::to_writer(&mut *out, &finding_json(n + 1, ranked))?;
        writeln!(out)?;
    }
    serde_json::to_writer(&mut *out, &summary_json(decision, context))?;
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        findings::node_config::{Example, NamespaceChecks},
        schema::finding::{Finding, FindingKind, NetnsRef, NodeEvidence},
    };

    fn decision(findings: Vec<Ranked>) -> Decision {
        Decision {
            verdict: findings
                .first()
                .map(|r| r.finding.headline.clone())
                .unwrap_or_else(|| "healthy: no findings".into()),
            findings,
            namespaces: vec![NamespaceChecks {
                netns: NetnsRef { name: Some("node".into()), inode: 7, current: true },
                label: "this namespace, node (netns 7)".into(),
                checks: vec![Check {
                    name: "ip_forward".into(),
                    value: "1".into(),
                    status: Status::Ok,
                    detail: String::new(),
                }],
                errors: vec![],
            }],
        }
    }

    #[test]
    fn json_report_is_findings_then_one_summary() {
        let netns = NetnsRef { name: Some("node".into()), inode: 7, current: true };
        let ranked = Ranked {
            finding: Finding {
                kind: FindingKind::IpForwardOff,
                wall_time_ns: 1_800_000_000_000_000_000,
                headline: "IP forwarding is off".into(),
                evidence: Evidence::Node(NodeEvidence {
                    netns: netns.clone(),
                    bridges: vec!["cni0".into()],
                    ..NodeEvidence::default()
                }),
                explanation: "why".into(),
                fix: vec!["sysctl -w net.ipv4.ip_forward=1".into()],
            },
            more: vec![],
            traffic: false,
            config: true,
            occurrences: None,
            example: Example::default(),
            netns,
        };
        let summary = Summary { packets: 4, duration_secs: 1.0, ..Summary::default() };
        let context = ReportContext {
            port: 53.into(),
            summary: &summary,
            drops: &[],
            drops_not_grouped: 0,
            errors: &[],
            exit_code: 1,
        };
        let mut out = Vec::new();
        print_json(&mut out, &decision(vec![ranked]), &context).expect("in memory");
        let lines: Vec<Value> =
            String::from_utf8(out).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "finding");
        assert_eq!(lines[0]["kind"], "ip_forward_off");
        assert_eq!(lines[0]["rank"], 1);
        assert_eq!(lines[0]["seen_in"], json!(["config"]));
        assert_eq!(lines[0]["evidence"][0]["source"], "config");
        assert_eq!(lines[0]["evidence"][0]["bridges"], json!(["cni0"]));
        assert_eq!(lines[1]["type"], "summary");
        assert_eq!(lines[1]["exit_code"], 1);
        assert_eq!(lines[1]["finding_counts"], json!({ "ip_forward_off": 1 }));
        assert_eq!(lines[1]["namespaces"][0]["checks"][0]["status"], "ok");
    }

    #[test]
    fn text_report_opens_with_the_verdict() {
        let summary = Summary::default();
        let context = ReportContext {
            port: 53.into(),
            summary: &summary,
            drops: &[],
            drops_not_grouped: 0,
            errors: &[],
            exit_code: 0,
        };
        let mut out = Vec::new();
        print_text(&mut out, &decision(vec![]), &context, false).expect("in memory");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.starts_with("verdict: healthy: no findings\n"), "{text}");
        assert!(text.contains("    ok   ip_forward  1\n"), "{text}");
        assert!(text.ends_with("exit code 0: healthy\n"), "{text}");
    }
}
