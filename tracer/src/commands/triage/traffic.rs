//! What triage keeps of its traffic window: the watch writes into a [`Collector`], which
//! prints no packet lines, keeps the findings, groups the drops, remembers recent packet
//! lines to show as examples, and draws a progress line on a terminal.

use std::{
    collections::{HashMap, VecDeque},
    io::{self, Write as _},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    findings::node_config::{DropGroup, Example, Traffic},
    model::netfilter::DropReason,
    model::{hook::Hook, packet::L4Proto},
    schema::{
        finding::{Evidence, Finding},
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::Summary,
    },
    sinks::{forms::to_value, text::TextOutput},
};

/// Packet lines kept to find examples in; older ones are forgotten.
const RECENT_LINES: usize = 4096;
/// Lines one example shows at most (a query and its reply cross the bridge in about four).
const EXAMPLE_LINES: usize = 8;
/// Drop groups kept at most; further drops are only counted.
const MAX_DROP_GROUPS: usize = 1024;
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A packet line as it would have been printed, with what identifies its flow.
struct Recent {
    src: SocketAddr,
    dst: SocketAddr,
    /// The DNS message id, when it is one.
    dns_id: Option<u16>,
    text: String,
    json: Value,
}

type DropKey = (DropReason, Option<Hook>, Option<Hook>, IpAddr, SocketAddr, L4Proto);

/// Keeps what the watch reports for the triage report.
pub(crate) struct Collector {
    started: Instant,
    window: Duration,
    /// Draw the progress line (stderr is a terminal).
    progress: bool,
    last_progress: Option<Instant>,
    recent: VecDeque<Recent>,
    findings: Vec<(Finding, Example)>,
    drops: Vec<DropGroup>,
    drop_index: HashMap<DropKey, usize>,
    /// Drops beyond `MAX_DROP_GROUPS` groups.
    pub drops_not_grouped: u64,
    packets: u64,
    summary: Option<Summary>,
}

impl Collector {
    pub(crate) fn new(window: Duration, progress: bool) -> Collector {
        Collector {
            started: Instant::now(),
            window,
            progress,
            last_progress: None,
            recent: VecDeque::with_capacity(RECENT_LINES),
            findings: Vec::new(),
            drops: Vec::new(),
            drop_index: HashMap::new(),
            drops_not_grouped: 0,
            packets: 0,
            summary: None,
        }
    }

    /// What the watch saw, for `findings::node_config::decide`, and its summary.
    pub(crate) fn finish(self) -> (Traffic, Option<Summary>) {
        let kind_counts = self.summary.as_ref().map(|s| s.finding_counts.clone()).unwrap_or_default();
        (Traffic { findings: self.findings, drops: self.drops, kind_counts }, self.summary)
    }

    fn remember(&mut self, recent: Recent) {
        if self.recent.len() == RECENT_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(recent);
    }

    /// The latest lines of the flow of `client` (and of DNS message `id`, when given).
    fn example(&self, client: SocketAddr, id: Option<u16>) -> Example {
        let mut picked: Vec<&Recent> = self
            .recent
            .iter()
            .rev()
            .filter(|r| (r.src == client || r.dst == client) && (id.is_none() || r.dns_id.is_none() || r.dns_id == id))
            .take(EXAMPLE_LINES)
            .collect();
        picked.reverse();
        Example {
            lines: picked.iter().map(|r| r.text.clone()).collect(),
            json: picked.iter().map(|r| r.json.clone()).collect(),
        }
    }

    fn draw_progress(&mut self, force: bool) {
        if !self.progress {
            return;
        }
        if !force && self.last_progress.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last_progress = Some(Instant::now());
        let findings = self.findings.len();
        // \r and "erase line": the line is redrawn in place; it goes to stderr so the report
        // on stdout stays clean when redirected.
        let _ = write!(
            std::io::stderr().lock(),
            "\r\x1b[Ktracer triage: watching traffic {:.1}/{:.0} s · {} packets · {} finding{}",
            self.started.elapsed().as_secs_f64().min(self.window.as_secs_f64()),
            self.window.as_secs_f64(),
            self.packets,
            findings,
            if findings == 1 { "" } else { "s" }
        );
    }

    fn clear_progress(&self) {
        if self.progress && self.last_progress.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

fn render_text(write: impl FnOnce(&mut TextOutput<&mut Vec<u8>>) -> io::Result<()>) -> String {
    let mut buf = Vec::new();
    // Writing into memory cannot fail.
    let _ = write(&mut TextOutput::new(&mut buf, false));
    String::from_utf8_lossy(&buf).trim_end().to_string()
}

impl Sink for Collector {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.packets += packet.event.occurrences.0;
        let text = render_text(|out| out.packet(packet));
        let event = &packet.event;
        self.remember(Recent {
            src: event.src,
            dst: event.dst,
            dns_id: event.dns.as_ref().map(|d| d.id),
            text,
            json: to_value(packet),
        });
        self.draw_progress(false);
        Ok(())
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.packets += line.drop.occurrences.0;
        let drop = &line.drop;
        self.remember(Recent {
            src: drop.src,
            dst: drop.dst,
            dns_id: None,
            text: render_text(|out| out.dropped(line)),
            json: to_value(line),
        });
        let stopped_in = line.stopped_in().map(|pass| pass.hook);
        let after = if stopped_in.is_none() { line.path.last().map(|pass| pass.hook) } else { None };
        let key: DropKey = (line.reason.clone(), stopped_in, after, drop.src.ip(), drop.dst, drop.l4_proto);
        // A line of a drop the kernel counted stands for every occurrence since the last one.
        let times = drop.occurrences.0;
        if let Some(&at) = self.drop_index.get(&key) {
            self.drops[at].count += times;
        } else if self.drops.len() < MAX_DROP_GROUPS {
            let example = self.example(drop.src, None);
            self.drop_index.insert(key, self.drops.len());
            self.drops.push(DropGroup {
                reason: line.reason.clone(),
                stopped_in,
                after,
                src: drop.src,
                dst: drop.dst,
                l4_proto: drop.l4_proto,
                ifname: line.ifname.clone(),
                rule: line.rule.clone(),
                count: times,
                wall_time_ns: line.wall_time_ns,
                example,
            });
        } else {
            self.drops_not_grouped += 1;
        }
        self.draw_progress(false);
        Ok(())
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        // Called right after the packet that completed the finding: its flow is in `recent`.
        let example = match &finding.evidence {
            Evidence::Dns(dns) => self.example(dns.client, Some(dns.query.id)),
            Evidence::Netfilter(nf) => self.example(nf.src, None),
            Evidence::Node(_) => Example::default(),
        };
        self.findings.push((finding.clone(), example));
        self.draw_progress(true);
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.clear_progress();
        self.summary = Some(summary.clone());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.draw_progress(false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::Stage;

    use super::*;
    use crate::{
        model::{
            hook::Family,
            netfilter::{DropEvent, HookPass},
            packet::Conntrack,
        },
        pipeline::{
            paths::DroppedPacket,
            queries::tests::{addr, backend_reply, packet, query_path},
        },
        schema::finding::FindingKind,
    };

    fn dropped(src: &str, path: Vec<HookPass>) -> DroppedPacket {
        DroppedPacket {
            loss: Default::default(),
            drop: DropEvent::example(5, addr(src), addr("10.96.0.10:53")),
            path,
            icmp: None,
        }
    }

    fn pass(hook: Hook, left: bool) -> HookPass {
        HookPass {
            hook,
            family: Family::Ipv4,
            left,
            conntrack: Conntrack::None,
            in_ifindex: 2,
            out_ifindex: 0,
            stamped: None,
        }
    }

    #[test]
    fn drops_are_grouped_by_reason_place_and_client_address() {
        let mut collector = Collector::new(Duration::from_secs(1), false);
        for packet in query_path().iter().take(1) {
            collector.packet(packet).expect("in memory");
        }
        let in_pre_routing = dropped("10.244.0.5:40000", vec![pass(Hook::PreRouting, false)]);
        let again_other_port = dropped("10.244.0.5:40001", vec![pass(Hook::PreRouting, false)]);
        let after_local_in = dropped("10.244.0.5:40002", vec![pass(Hook::PreRouting, true), pass(Hook::LocalIn, true)]);
        for d in [&in_pre_routing, &again_other_port, &after_local_in] {
            collector.dropped(&DropLine::example(d.drop.clone(), d.path.clone())).expect("in memory");
        }
        let (traffic, _) = collector.finish();
        let groups: Vec<(Option<Hook>, Option<Hook>, u64)> =
            traffic.drops.iter().map(|g| (g.stopped_in, g.after, g.count)).collect();
        assert_eq!(groups, vec![(Some(Hook::PreRouting), None, 2), (None, Some(Hook::LocalIn), 1)]);
        // The example of the first drop: the query that entered the bridge, then the drop line.
        let example = &traffic.drops[0].example.lines;
        assert_eq!(example.len(), 2, "{example:#?}");
        assert!(example[0].contains("bridge-in") && example[1].contains("dropped"), "{example:#?}");
    }

    #[test]
    fn a_findings_example_is_its_querys_way() {
        let mut collector = Collector::new(Duration::from_secs(1), false);
        let mut packets = query_path();
        packets.push(backend_reply(5, Stage::BridgeOut));
        // Another client's query in between is not part of the example.
        packets.insert(
            2,
            packet(1, Stage::BridgeIn, "veth-other", "10.244.0.9:5000", "10.96.0.10:53", false, Conntrack::None),
        );
        for p in &packets {
            collector.packet(p).expect("in memory");
        }
        let finding = Finding {
            kind: FindingKind::ConntrackSkip,
            wall_time_ns: 0,
            headline: "h".into(),
            evidence: Evidence::Dns(crate::schema::finding::DnsEvidence {
                client: addr("10.244.0.5:40000"),
                expected_source: addr("10.96.0.10:53"),
                actual_source: Some(addr("10.244.0.7:53")),
                query: crate::schema::finding::QueryRef { id: 0x6aab, qname: None, qtype: None },
                bridge: Some("cni0".into()),
                reply_in_port: None,
                reply_out_port: None,
                last_seen: None,
                rcode: None,
                search: None,
                stale_dnat: None,
                tcp_retry: None,
                fragments: None,
                sysctls: vec![],
                pods: Default::default(),
            }),
            explanation: String::new(),
            fix: vec![],
        };
        collector.finding(&finding).expect("in memory");
        let (traffic, _) = collector.finish();
        let (_, example) = &traffic.findings[0];
        assert_eq!(example.lines.len(), 5, "{:#?}", example.lines);
        assert!(example.lines.iter().all(|l| !l.contains("10.244.0.9")), "{:#?}", example.lines);
        assert_eq!(example.json.len(), 5);
        assert_eq!(example.json[4]["stage"], "bridge-out");
    }
}
