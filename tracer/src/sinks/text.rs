//! One line per packet for a person reading a terminal: time, where the frame went,
//! addresses, what the DNS message says and what conntrack knows. Colour only on a TTY.

use std::io::{self, Write};

use tracer_common::Stage;

use super::forms::{dns_text, evidence_lines, hook_path, printable, time_of_day};
use crate::{
    model::{
        packet::{stage_name, Conntrack, Fragment, Times},
        pod::with_pod,
    },
    schema::{
        finding::Finding,
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::Summary,
    },
};

pub(crate) struct TextOutput<W: Write> {
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
    pub(crate) fn new(out: W, colour: bool) -> Self {
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
pub(crate) struct SummaryOnly<W: Write> {
    text: TextOutput<W>,
}

impl<W: Write> SummaryOnly<W> {
    pub(crate) fn new(out: W) -> Self {
        SummaryOnly { text: TextOutput::new(out, false) }
    }
}

impl<W: Write> Sink for SummaryOnly<W> {
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

/// A findings-only line standing for the occurrences the kernel counted since the last one
/// of its kind: how many.
fn times_counted(times: Times) -> String {
    if times.is_once() {
        String::new()
    } else {
        format!(" ×{} (counted in the kernel)", times.0)
    }
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

impl<W: Write> Sink for TextOutput<W> {
    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        let drop = &line.drop;
        // Names from packets, captures and the node are escaped before any colour is added.
        let path = printable(&hook_path(&line.path)).into_owned();
        let by = line.rule.as_ref().map(|r| printable(&format!(" ({r})")).into_owned()).unwrap_or_default();
        let icmp = line.icmp.as_ref().map(|i| format!(", ICMP {i}")).unwrap_or_default();
        let fragment = match drop.fragment {
            Fragment::Whole => String::new(),
            fragment => format!(", {fragment} IP fragment"),
        };
        let verdict = self.paint(RED_BOLD, &format!("✗ {}{by}", line.verdict.name().to_uppercase()));
        let place = line.ifname.as_deref().map_or_else(|| format!("if{}", drop.ifindex), |n| printable(n).into_owned());
        let lost = match line.records_lost {
            Some(n) => {
                self.paint(YELLOW, &format!(" ({n} records of this flow lost: its hook and rule are not certain)"))
            }
            None => String::new(),
        };
        let times = times_counted(drop.occurrences);
        let text = format!(
            "{} {:>15}   {:<15} {} {:<45} {}{}{verdict} [{}{icmp}{fragment}]{lost}{times}",
            self.paint(DIM, &time_of_day(line.wall_time_ns)),
            place,
            "",
            self.paint(RED_BOLD, &format!("{:<10}", "dropped")),
            printable(&format!(
                "{} → {}",
                with_pod(drop.src, line.pods.src_pod.as_ref()),
                with_pod(drop.dst, line.pods.dst_pod.as_ref())
            )),
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
        let (from, to) = (printable(&from).into_owned(), printable(&to).into_owned());
        let pods = &packet.pods;
        let flow =
            format!("{} → {}", with_pod(event.src, pods.src_pod.as_ref()), with_pod(event.dst, pods.dst_pod.as_ref()));
        let flow = printable(&flow);
        let what = match (&event.dns, event.fragment) {
            (Some(message), _) => dns_text(message),
            (None, Fragment::Whole) => format!("{} {} bytes", event.l4_proto.name(), event.ip_len),
            (None, fragment) => format!("{} {} bytes ({fragment} IP fragment)", event.l4_proto.name(), event.ip_len),
        };
        let what = printable(&what);
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
        let times = times_counted(event.occurrences);
        if hooks.is_empty() {
            writeln!(self.out, "{}{times}", line.trim_end())
        } else {
            writeln!(self.out, "{}  via {}{times}", line.trim_end(), printable(&hook_path(hooks)))
        }
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        let bar = self.paint(RED_BOLD, "┃");
        writeln!(self.out, "{}", self.paint(RED_BOLD, &format!("┏━ FINDING {} ━━", finding.kind.name())))?;
        writeln!(self.out, "{bar} {}", printable(&finding.headline))?;
        for line in evidence_lines(&finding.evidence) {
            writeln!(self.out, "{bar} {}", printable(&line))?;
        }
        writeln!(self.out, "{bar} why: {}", printable(&finding.explanation))?;
        for (n, fix) in finding.fix.iter().enumerate() {
            let label = if n == 0 { "fix:" } else { "    " };
            writeln!(self.out, "{bar} {label} {}", printable(fix))?;
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
            let n = summary.evicted_paths;
            let journeys = if n == 1 { "journey" } else { "journeys" };
            notes.push_str(&format!(", {n} packet {journeys} that never ended (shown as far as they went)"));
        }
        if summary.findings_forgotten > 0 {
            notes.push_str(&format!(
                ", {} findings forgotten (not seen for 30 min, or to make room): stated again when they recur",
                summary.findings_forgotten
            ));
        }
        writeln!(
            self.out,
            "-- {} packets, {lost}, {findings}{notes}, {:.1} s",
            summary.packets, summary.duration_secs
        )?;
        // After the counts: "no findings" under a blind spot is not "healthy".
        for spot in &summary.blind_spots {
            writeln!(self.out, "{}", self.paint(YELLOW, &printable(&format!("-- blind spot: {spot}"))))?;
        }
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kube_proxy_finding_names_its_owner_and_the_endpoints_to_look_at() {
        let finding = crate::findings::netfilter::tests::kube_proxy_finding();
        let mut out = Vec::new();
        TextOutput::new(&mut out, false).finding(&finding).expect("in memory");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "┃ owner: kube-proxy (Service kube-system/kube-dns:dns) — chain KUBE-SERVICES and its comment \"kube-system/kube-dns:dns has no endpoints\"\n",
            "┃ fix: kubectl -n kube-system get endpointslices -l kubernetes.io/service-name=kube-dns -o wide    # its endpoints: none is ready now\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
    }

    #[test]
    fn time_of_day_is_utc_with_micros() {
        // 2026-11-23T13:45:01.123456789Z
        let ns = 1_795_441_501_123_456_789u64;
        assert_eq!(time_of_day(ns), "13:45:01.123456");
    }
}
