//! What a run makes of its events: DNS payloads recognised, queries paired with their
//! replies, hook paths joined to their packets, findings judged and logged once, drops
//! handed to the rule worker (`firewall`), pods named (`pods`). Both sources in `engine`
//! (the live watch and the replay of a capture) drive it, so both print the same lines and
//! findings for the same packets. It decides nothing itself: the pipeline pairs, the
//! findings judge; this is where their results meet a sink.
//!
//! A finding is stated only when no record it rests on may have been lost: would-be
//! findings wait in `pending` until [`Analysis::settle`] asks a [`LossWitness`], and those
//! whose records may be incomplete are counted as unconfirmed instead.

pub(crate) mod firewall;
pub(crate) mod pods;

use std::{collections::HashMap, io, mem, time::Duration};

use self::firewall::{Answer, DropKey, FirewallWorker, NatAnswer, NatQuestion, Request};
use crate::{
    findings::{
        attribution::HookDrop,
        dns::{judge, stale_dnat},
        fragments::FragmentedAnswers,
        netfilter::short_label,
        search_path::SearchWalks,
        tcp_retry::{self, TcpRetries},
        FindingLog, Occurrence, UnconfirmedLog,
    },
    model::{
        hook::{Family, Hook},
        netfilter::{stopped_in, DropReason},
        packet::{Fate, Fragment, L4Proto, PacketEvent, Times, TCP_RST},
        sysctl::SysctlValue,
        WallClock,
    },
    node::{
        interfaces::Interfaces,
        sysctl::{self as node},
    },
    pipeline::{
        bounded::BoundedTable,
        dns_decode::{DnsDecoder, Segment},
        loss::{LossWindows, LossWitness},
        paths::DroppedPacket,
        queries::{Correlated, DnsFlows, QueryFlow},
    },
    schema::{
        finding::{Evidence, Finding, FindingKind, Unconfirmed},
        packet::{DropLine, DroppedStage, TracedPacket},
        sink::Sink,
    },
};

/// DNS queries tracked at once; beyond it the oldest are dropped (and counted), so
/// a long watch on a busy node stays bounded.
const MAX_TRACKED_QUERIES: usize = 65_536;

/// Bounds the attribution cache like the finding log.
const MAX_ATTRIBUTED: usize = 10_000;
/// An attribution older than this is asked again: the rules may have changed (the fix was
/// applied, or another rule took over), and a drop named after a rule that no longer stops it
/// would be a false answer. A reading of the rulesets this young is reused, so asking again
/// costs a new reading at most this often.
const ATTRIBUTION_FRESH_NS: u64 = 10_000_000_000;
/// Drop lines held back at most while the rules behind them are read; beyond it they are
/// printed without their rule.
const MAX_WAITING_LINES: usize = 4_096;

/// TCP resets remembered at once (by the socket they went to).
const MAX_RESETS: usize = 4_096;
/// A REJECT's reset and the drop of the packet it answers happen in one pass of the rule: a
/// reset further from the drop than this answered something else.
const RESET_WITH_DROP_NS: u64 = 50_000_000;

#[derive(Default)]
pub(crate) struct Stats {
    pub packets: u64,
    /// Records read from the kernel (a journey, a drop, a stray reply each).
    pub records: u64,
    /// Journeys that never ended, read from the kernel's table (see `kernel::journeys`).
    pub abandoned: u64,
    pub malformed: u64,
    pub last_error: String,
}

/// How a run recognises DNS and when it gives up on a reply.
#[derive(Clone, Debug)]
pub(crate) struct AnalysisOptions {
    /// A query with no reply after this long is a `dns_timeout`.
    pub dns_timeout: Duration,
    /// Ports besides 53 whose payloads are DNS.
    pub dns_ports: Vec<u16>,
}

/// Where the node settings a finding cites come from.
pub(crate) enum NodeSettings {
    /// Read from this node's /proc/sys when the finding is made (a live watch).
    Live,
    /// As a capture recorded them (`tracer report`): the node is elsewhere, or gone.
    Recorded(HashMap<String, Option<String>>),
}

impl NodeSettings {
    fn read(&self, name: &str) -> SysctlValue {
        match self {
            NodeSettings::Live => node::read_sysctl(name),
            NodeSettings::Recorded(values) => {
                SysctlValue { name: name.to_string(), value: values.get(name).cloned().flatten() }
            }
        }
    }
}

/// A finding judged from its records, waiting for the loss check.
struct PendingFinding {
    finding: Finding,
    subject: Unconfirmed,
    loss: LossWindows,
    until_ns: u64,
    /// Occurrences it stands for (a stray reply the kernel counted stands for many).
    times: Times,
}

/// How long the worker's answer on where a Service's rules send a client's queries stands
/// for that client's further unanswered queries: rules change, but not query by query.
const NAT_ANSWER_FRESH_NS: u64 = 10_000_000_000;

/// A client's address and the Service address it asked.
type ClientService = (std::net::IpAddr, std::net::SocketAddr);

/// Answers kept at most (client and Service pairs); past it they are all let go.
const MAX_NAT_ANSWERS: usize = 4_096;

/// An unanswered query an old conntrack entry sent to `backend`, waiting for the worker to
/// say where the nat rules send such a query now.
struct PendingStale {
    id: u64,
    query: QueryFlow,
    backend: std::net::SocketAddr,
    until_ns: u64,
}

/// A packet a netfilter hook dropped, waiting for the loss check and its rule: its line,
/// the loss windows of its path, and the packet as the hook saw it.
struct PendingDrop {
    key: DropKey,
    line: DropLine,
    loss: LossWindows,
    packet: HookDrop,
}

/// Correlation state and findings of one run.
pub(crate) struct Analysis {
    pub flows: DnsFlows,
    pub log: FindingLog,
    pub unconfirmed: UnconfirmedLog,
    pub timeout_secs: f64,
    pub stats: Stats,
    decoder: DnsDecoder,
    search_walks: SearchWalks,
    tcp_retries: TcpRetries,
    fragmented: FragmentedAnswers,
    /// TCP resets seen, by the socket they went to, and when: a REJECT with tcp-reset sends
    /// one to the sender of the packet it drops, just before the drop.
    resets: BoundedTable<std::net::SocketAddr, u64>,
    pending: Vec<PendingFinding>,
    pending_drops: Vec<PendingDrop>,
    pending_stale: Vec<PendingStale>,
    questions_asked: u64,
    /// The worker's answers by (client address, Service), with the kernel time of the query
    /// that asked; and the questions it has not answered yet.
    nat_known: HashMap<ClientService, (u64, Option<Vec<std::net::SocketAddr>>)>,
    nat_in_flight: HashMap<ClientService, u64>,
    /// Replays: the stale-entry findings the capture recorded, by client and the backend its
    /// entry sent it to; and the queries (client, id) they were recorded for, not judged yet.
    recorded_stale: HashMap<(std::net::SocketAddr, std::net::SocketAddr), Finding>,
    stated_stale: std::collections::HashSet<(std::net::SocketAddr, u16)>,
    /// Reads the rulesets and names rules, off the drain loop (live watches only).
    firewall: Option<FirewallWorker>,
    /// Drops already attributed, by what makes them the same problem, with the kernel time
    /// of the drop that was attributed: repeats within [`ATTRIBUTION_FRESH_NS`] are counted
    /// without reading the rulesets again.
    attributed: HashMap<DropKey, (Option<String>, Finding, u64)>,
    /// Replays: the occurrences of a drop line read before its rule's finding, which was
    /// stated from it (bounded by the findings the capture holds).
    replayed_unattributed: HashMap<DropKey, Times>,
    /// Drop lines held back until the worker names their rule.
    waiting: HashMap<DropKey, Vec<DropLine>>,
    waiting_lines: usize,
    pub settings: NodeSettings,
}

impl Analysis {
    /// For a live watch: `firewall` has read the rulesets already, as the "before" of the
    /// first drop.
    pub(crate) fn live(options: &AnalysisOptions, firewall: FirewallWorker) -> Analysis {
        Analysis::new(options, Some(firewall), NodeSettings::Live)
    }

    /// For replaying a capture: nothing is read from the node this runs on.
    pub(crate) fn replay(options: &AnalysisOptions, recorded: HashMap<String, Option<String>>) -> Analysis {
        Analysis::new(options, None, NodeSettings::Recorded(recorded))
    }

    fn new(options: &AnalysisOptions, firewall: Option<FirewallWorker>, settings: NodeSettings) -> Analysis {
        Analysis {
            flows: DnsFlows::new(options.dns_timeout.as_nanos() as u64, MAX_TRACKED_QUERIES),
            log: FindingLog::default(),
            unconfirmed: UnconfirmedLog::default(),
            timeout_secs: options.dns_timeout.as_secs_f64(),
            stats: Stats::default(),
            decoder: DnsDecoder::new(&options.dns_ports),
            search_walks: SearchWalks::default(),
            tcp_retries: TcpRetries::new(options.dns_timeout.as_nanos() as u64),
            fragmented: FragmentedAnswers::new(options.dns_timeout.as_nanos() as u64),
            resets: BoundedTable::new(MAX_RESETS),
            pending: Vec::new(),
            pending_drops: Vec::new(),
            pending_stale: Vec::new(),
            questions_asked: 0,
            nat_known: HashMap::new(),
            nat_in_flight: HashMap::new(),
            recorded_stale: HashMap::new(),
            stated_stale: Default::default(),
            firewall,
            attributed: HashMap::new(),
            replayed_unattributed: HashMap::new(),
            waiting: HashMap::new(),
            waiting_lines: 0,
            settings,
        }
    }

    /// Node settings a capture recorded with a packet: findings made from here on cite them.
    pub(crate) fn recorded_settings(&mut self, values: &[SysctlValue]) {
        if let NodeSettings::Recorded(recorded) = &mut self.settings {
            for value in values {
                recorded.insert(value.name.clone(), value.value.clone());
            }
        }
    }

    /// A packet line: a frame at a bridge stage with the hooks it passed since the stage
    /// before (from the kernel, or read back from a capture).
    pub(crate) fn packet_with_hooks(&mut self, mut packet: TracedPacket, output: &mut dyn Sink) -> io::Result<()> {
        self.stats.packets += packet.event.occurrences.0;
        // A stage a capture holds no bytes of keeps the message its line recorded.
        if !packet.event.captured.is_empty() {
            packet.event.dns = segment(&packet.event).and_then(|segment| self.decoder.decode(&segment));
        }
        output.packet(&packet)?;
        if packet.event.tcp_flags().is_some_and(|flags| flags & TCP_RST != 0) {
            self.resets.insert(packet.event.dst, packet.event.timestamp_ns);
        }
        self.tcp_retries.packet(&packet);
        if packet.event.fragment == Fragment::First {
            let answer = packet.event.dns.as_ref().filter(|message| message.qr);
            let query = answer.and_then(|message| self.flows.query(packet.event.dst, message.id));
            if let Some((finding, query)) = query.and_then(|query| self.fragmented.first_fragment(&packet, query)) {
                self.hold(finding, &query, packet.event.timestamp_ns);
            }
        }
        if let Some(correlated) = self.flows.observe(&packet) {
            let until_ns = packet.event.timestamp_ns;
            self.consider(&correlated, until_ns);
        }
        Ok(())
    }

    /// Findings-only watches: a DNS reply that left a bridge without conntrack, with where
    /// the kernel saw its query sent before DNAT. Such a reply proves the skip on its own,
    /// with the query's destination: it is judged as a reply to that query.
    pub(crate) fn stray_reply(
        &mut self,
        mut reply: TracedPacket,
        asked: Option<std::net::SocketAddr>,
        output: &mut dyn Sink,
    ) -> io::Result<()> {
        self.stats.packets += reply.event.occurrences.0;
        if !reply.event.captured.is_empty() {
            reply.event.dns = segment(&reply.event).and_then(|segment| self.decoder.decode(&segment));
        }
        reply.asked = asked;
        output.packet(&reply)?;
        if let Some(correlated) = asked.and_then(|asked| crate::pipeline::queries::paired_reply(&reply, asked)) {
            let until_ns = reply.event.timestamp_ns;
            self.consider(&correlated, until_ns);
        }
        Ok(())
    }

    /// Queries older than the timeout at kernel time `now_ns` (the newest record drained,
    /// or the present when the ring buffer is empty): their findings wait for the next
    /// [`Analysis::settle`].
    pub(crate) fn expire(&mut self, now_ns: u64) {
        for correlated in self.flows.expire(now_ns) {
            self.consider(&correlated, now_ns);
        }
        for (finding, query) in self.tcp_retries.expire(now_ns) {
            self.hold(finding, &query, now_ns);
        }
    }

    fn consider(&mut self, correlated: &Correlated, until_ns: u64) {
        match correlated {
            Correlated::Unanswered { query } => {
                if self.ask_where_rules_send(query, until_ns) {
                    return;
                }
            }
            Correlated::ReplyToClient { query, reply } => self.tcp_retries.answered(query, reply),
        }
        let settings = &self.settings;
        let search_walks = &mut self.search_walks;
        // A healthy answer may still end a costly walk through the search list.
        let finding = judge(correlated, self.timeout_secs, &|name| settings.read(name)).or_else(|| match correlated {
            Correlated::ReplyToClient { query, reply } => search_walks.answered(query, reply),
            Correlated::Unanswered { .. } => None,
        });
        let Some(finding) = finding else { return };
        let (query, times) = match correlated {
            Correlated::ReplyToClient { query, reply } => (query, reply.event.occurrences),
            Correlated::Unanswered { query } => (query, Times::default()),
        };
        self.hold_times(finding, query, until_ns, times);
    }

    /// A finding waits for the loss check of its query's records.
    fn hold(&mut self, finding: Finding, query: &QueryFlow, until_ns: u64) {
        self.hold_times(finding, query, until_ns, Times::default());
    }

    fn hold_times(&mut self, finding: Finding, query: &QueryFlow, until_ns: u64, times: Times) {
        let subject = Unconfirmed {
            kind: finding.kind,
            wall_time_ns: finding.wall_time_ns,
            records_lost: 0,
            client: Some(query.client),
            query_id: Some(query.id),
        };
        self.pending.push(PendingFinding { finding, subject, loss: query.loss.clone(), until_ns, times });
    }

    /// A query a conntrack entry of an earlier exchange sent to its backend got no answer:
    /// the worker is asked where the nat rules send such a query now (live watches of pods'
    /// UDP queries only). False when there is nothing to ask.
    fn ask_where_rules_send(&mut self, query: &QueryFlow, until_ns: u64) -> bool {
        let (true, Some(backend), Some(bridge)) = (query.entry_reused, query.backend(), query.bridge.clone()) else {
            return false;
        };
        let Some(worker) = self.firewall.as_mut() else {
            // A replay has not the rules: what the watch found is in the capture, before this
            // or after (`replay_stale_finding`); until then the query waits, unjudged.
            if !matches!(self.settings, NodeSettings::Recorded(_)) {
                return false;
            }
            if self.stated_stale.remove(&(query.client, query.id)) {
                return true;
            }
            match self.recorded_stale.get(&(query.client, backend)) {
                // Another query held on the same entry: a repeat, as the watch counted it.
                Some(finding) => self.hold(finding.clone(), query, until_ns),
                None => self.pending_stale.push(PendingStale { id: 0, query: query.clone(), backend, until_ns }),
            }
            return true;
        };
        let service = query.queried();
        // One question per client and Service at a time, and its answer kept a while: under
        // load (a flood from a few fixed ports, records lost) every query would ask again,
        // and every question is a reading of the rulesets.
        let key = (query.client.ip(), service);
        if let Some((asked_ns, targets)) = self.nat_known.get(&key) {
            if until_ns.saturating_sub(*asked_ns) <= NAT_ANSWER_FRESH_NS {
                let targets = targets.clone();
                let pending = PendingStale { id: 0, query: query.clone(), backend, until_ns };
                self.stale_answered_with(pending, targets);
                return true;
            }
        }
        if let Some(&id) = self.nat_in_flight.get(&key) {
            self.pending_stale.push(PendingStale { id, query: query.clone(), backend, until_ns });
            return true;
        }
        let packet = HookDrop {
            family: if service.is_ipv6() { Family::Ipv6 } else { Family::Ipv4 },
            // A pod's query enters the node's IP stack from its bridge.
            hook: Hook::PreRouting,
            proto: L4Proto::Udp,
            src: query.client,
            dst: service,
            in_iface: Some(bridge),
            out_iface: None,
            icmp: None,
            tcp_reset: false,
        };
        self.questions_asked += 1;
        let id = self.questions_asked;
        if !worker.ask_nat(NatQuestion { id, packet }) {
            return false;
        }
        self.nat_in_flight.insert(key, id);
        self.pending_stale.push(PendingStale { id, query: query.clone(), backend, until_ns });
        true
    }

    /// The worker said where the rules send the query of a pending stale check: elsewhere
    /// than its entry did, and it is the entry's finding; anywhere else (the same backend,
    /// nowhere, not known), the timeout's.
    fn stale_answered(&mut self, answer: NatAnswer) {
        let (answered, waiting): (Vec<PendingStale>, Vec<PendingStale>) =
            mem::take(&mut self.pending_stale).into_iter().partition(|pending| pending.id == answer.id);
        self.pending_stale = waiting;
        self.nat_in_flight.retain(|_, id| *id != answer.id);
        if let Some(first) = answered.first() {
            if self.nat_known.len() >= MAX_NAT_ANSWERS {
                self.nat_known.clear();
            }
            let key = (first.query.client.ip(), first.query.queried());
            self.nat_known.insert(key, (first.until_ns, answer.targets.clone()));
        }
        for pending in answered {
            self.stale_answered_with(pending, answer.targets.clone());
        }
    }

    fn stale_answered_with(&mut self, pending: PendingStale, targets: Option<Vec<std::net::SocketAddr>>) {
        let PendingStale { query, backend, until_ns, .. } = pending;
        let finding = match targets {
            Some(current) if !current.is_empty() && !current.contains(&backend) => {
                Some(stale_dnat(&query, backend, current, self.timeout_secs))
            }
            _ => {
                let settings = &self.settings;
                let unanswered = Correlated::Unanswered { query: query.clone() };
                judge(&unanswered, self.timeout_secs, &|name| settings.read(name))
            }
        };
        if let Some(finding) = finding {
            self.hold(finding, &query, until_ns);
        }
    }

    /// A stale-entry finding read back from a capture: made from rulesets only the capturing
    /// node had, it is taken as recorded, and its query is no timeout.
    pub(crate) fn replay_stale_finding(&mut self, finding: Finding, output: &mut dyn Sink) -> io::Result<()> {
        if let (Evidence::Dns(dns), Some(stale)) = (&finding.evidence, finding_stale_backend(&finding)) {
            let query = (dns.client, dns.query.id);
            match self.pending_stale.iter().position(|p| (p.query.client, p.query.id) == query) {
                Some(at) => drop(self.pending_stale.swap_remove(at)),
                None => drop(self.stated_stale.insert(query)),
            }
            // Queries of the same client held on the same entry, waiting: repeats.
            let key = (dns.client, stale);
            let (same, others): (Vec<PendingStale>, Vec<PendingStale>) =
                mem::take(&mut self.pending_stale).into_iter().partition(|p| (p.query.client, p.backend) == key);
            self.pending_stale = others;
            for pending in same {
                self.hold(finding.clone(), &pending.query, pending.until_ns);
            }
            self.recorded_stale.insert(key, finding.clone());
        }
        state(&mut self.log, finding, Times::default(), output)
    }

    /// The end of a replay: a query the capture recorded no stale-entry finding for is the
    /// timeout it looked like.
    pub(crate) fn finish_replay(&mut self, witness: &mut dyn LossWitness, output: &mut dyn Sink) -> io::Result<()> {
        for pending in mem::take(&mut self.pending_stale) {
            self.stale_answered_with(pending, None);
        }
        self.settle(witness, output)
    }

    /// A traced packet the kernel freed as dropped. One that a netfilter hook dropped waits
    /// for the loss check and for its rule to be named; any other is printed now.
    pub(crate) fn dropped(
        &mut self,
        dropped: DroppedPacket,
        reason: DropReason,
        clock: &WallClock,
        interfaces: &mut Interfaces,
        output: &mut dyn Sink,
    ) -> io::Result<()> {
        self.stats.packets += dropped.drop.occurrences.0;
        let DroppedPacket { drop, path, icmp: answer, loss } = dropped;
        let icmp = answer.as_ref().map(|i| icmp_name(drop.src.is_ipv6(), i.icmp_type, i.icmp_code));
        let stopped_in = stopped_in(&path).map(|pass| (pass.hook, pass.family, pass.in_ifindex, pass.out_ifindex));
        let line = DropLine {
            stage: DroppedStage::Dropped,
            wall_time_ns: clock.wall_ns(drop.timestamp_ns),
            ifname: interfaces.name(drop.ifindex),
            pods: Default::default(),
            bridge: interfaces.bridge_of(drop.ifindex),
            verdict: if icmp.is_some() { Fate::Reject } else { Fate::Drop },
            icmp,
            rule: None,
            records_lost: None,
            drop,
            path,
            reason,
        };
        let by_rule = line.stopped_by_rule();
        self.follow_drop(&line, by_rule);
        match stopped_in {
            Some((hook, family, in_ifindex, out_ifindex)) if by_rule => {
                self.flows.stopped_by_firewall(line.drop.src, line.drop.timestamp_ns);
                let name =
                    |interfaces: &mut Interfaces, index: u32| if index == 0 { None } else { interfaces.name(index) };
                let drop = &line.drop;
                let packet = HookDrop {
                    family,
                    hook,
                    proto: drop.l4_proto,
                    src: drop.src,
                    dst: drop.dst,
                    in_iface: name(interfaces, in_ifindex),
                    out_iface: name(interfaces, out_ifindex),
                    icmp: answer.map(|i| (i.icmp_type, i.icmp_code)),
                    tcp_reset: drop.l4_proto == L4Proto::Tcp
                        && self
                            .resets
                            .remove(&drop.src)
                            .is_some_and(|at| at.abs_diff(drop.timestamp_ns) <= RESET_WITH_DROP_NS),
                };
                self.pending_drops.push(PendingDrop { key: packet.key(), line, loss, packet });
                Ok(())
            }
            _ => output.dropped(&line),
        }
    }

    /// A drop, live or read back, for what follows drops: a TCP retry it ends (`by_rule`: its
    /// rule is being named, and that finding tells the retry), an answer's fragment it loses.
    fn follow_drop(&mut self, line: &DropLine, by_rule: bool) {
        self.tcp_retries.dropped(line, by_rule);
        if let Some((finding, query)) = self.fragmented.dropped(line) {
            self.hold_times(finding, &query, line.drop.timestamp_ns, line.drop.occurrences);
        }
    }

    /// Decides the findings waiting for the loss check: stated when their records are
    /// complete, counted as unconfirmed when not. Also prints the drop lines whose rule
    /// has been named meanwhile.
    pub(crate) fn settle(&mut self, witness: &mut dyn LossWitness, output: &mut dyn Sink) -> io::Result<()> {
        if !self.pending.is_empty() || !self.pending_drops.is_empty() {
            witness.begin_settling();
        }
        for pending in mem::take(&mut self.pending) {
            let lost = witness.lost_since(&pending.subject, &pending.loss, pending.until_ns);
            if lost == 0 {
                state(&mut self.log, pending.finding, pending.times, output)?;
            } else {
                self.count_unconfirmed(Unconfirmed { records_lost: lost, ..pending.subject }, output)?;
            }
        }
        for pending in mem::take(&mut self.pending_drops) {
            self.settle_drop(pending, witness, output)?;
        }
        let answers = self.firewall.as_mut().map(FirewallWorker::ready).unwrap_or_default();
        for answer in answers {
            self.answered(answer, output)?;
        }
        // Their findings are settled with the next pass's.
        for answer in self.firewall.as_mut().map(FirewallWorker::nat_ready).unwrap_or_default() {
            self.stale_answered(answer);
        }
        Ok(())
    }

    /// The end of a run: settles what is pending and waits (until `deadline`) for the rules
    /// of held-back drop lines; lines whose rule could not be read in time are printed
    /// without it.
    pub(crate) fn finish(
        &mut self,
        witness: &mut dyn LossWitness,
        output: &mut dyn Sink,
        deadline: std::time::Instant,
    ) -> io::Result<()> {
        self.settle(witness, output)?;
        let answers = self.firewall.as_mut().map(|worker| worker.wait(deadline)).unwrap_or_default();
        for answer in answers {
            self.answered(answer, output)?;
        }
        for answer in self.firewall.as_mut().map(FirewallWorker::nat_ready).unwrap_or_default() {
            self.stale_answered(answer);
        }
        // The findings those answers made.
        self.settle(witness, output)?;
        for (_, lines) in mem::take(&mut self.waiting) {
            for line in lines {
                output.dropped(&line)?;
            }
        }
        self.waiting_lines = 0;
        Ok(())
    }

    fn count_unconfirmed(&mut self, unconfirmed: Unconfirmed, output: &mut dyn Sink) -> io::Result<()> {
        self.unconfirmed.record(unconfirmed.kind);
        output.unconfirmed(&unconfirmed)
    }

    fn settle_drop(
        &mut self,
        pending: PendingDrop,
        witness: &mut dyn LossWitness,
        output: &mut dyn Sink,
    ) -> io::Result<()> {
        let PendingDrop { key, mut line, loss, packet } = pending;
        let drop = &line.drop;
        let kind = if line.icmp.is_some() { FindingKind::NetfilterReject } else { FindingKind::NetfilterDrop };
        let subject = Unconfirmed {
            kind,
            wall_time_ns: line.wall_time_ns,
            records_lost: 0,
            client: Some(drop.src),
            query_id: None,
        };
        // A record of this packet's path may be missing, the one showing it left the hook
        // above all: then where it stopped is not known, and no rule is named.
        let lost = witness.lost_since(&subject, &loss, drop.timestamp_ns);
        if lost > 0 {
            line.records_lost = Some(lost);
            self.count_unconfirmed(Unconfirmed { records_lost: lost, ..subject }, output)?;
            return output.dropped(&line);
        }
        if self
            .attributed
            .get(&key)
            .is_some_and(|(_, _, at)| line.drop.timestamp_ns.saturating_sub(*at) >= ATTRIBUTION_FRESH_NS)
        {
            self.attributed.remove(&key);
        }
        if let Some((label, finding, _)) = self.attributed.get(&key) {
            line.rule = label.clone();
            if finding.kind == FindingKind::NetfilterReject {
                line.verdict = Fate::Reject;
            }
            let finding = finding.clone();
            output.dropped(&line)?;
            return state(&mut self.log, finding, line.drop.occurrences, output);
        }
        if self.waiting_lines >= MAX_WAITING_LINES {
            return output.dropped(&line);
        }
        if let Some(lines) = self.waiting.get_mut(&key) {
            lines.push(line);
            self.waiting_lines += 1;
            return Ok(());
        }
        let request = Request { key, packet, wall_time_ns: line.wall_time_ns, timestamp_ns: line.drop.timestamp_ns };
        let requested = self.firewall.as_mut().is_some_and(|worker| worker.request(request));
        if !requested {
            return output.dropped(&line);
        }
        self.waiting.insert(key, vec![line]);
        self.waiting_lines += 1;
        Ok(())
    }

    /// The worker named the rule behind a drop: its held-back lines are printed with it,
    /// each an occurrence of the finding.
    fn answered(&mut self, mut answer: Answer, output: &mut dyn Sink) -> io::Result<()> {
        let lines = self.waiting.remove(&answer.key).unwrap_or_default();
        self.waiting_lines = self.waiting_lines.saturating_sub(lines.len());
        let label = answer.finding.as_ref().and_then(short_label);
        // A TCP connection that retried a truncated answer: the rule stops large answers only.
        let retried = lines.first().and_then(|line| self.tcp_retries.retrying(line.drop.src));
        if let (Some(finding), Some(query)) = (answer.finding.as_mut(), retried) {
            tcp_retry::stops_retries_of(finding, query);
        }
        if let (Some(finding), Some(first)) = (&answer.finding, lines.first()) {
            if self.attributed.len() < MAX_ATTRIBUTED {
                self.attributed.insert(answer.key, (label.clone(), finding.clone(), first.drop.timestamp_ns));
            }
        }
        for mut line in lines {
            line.rule = label.clone();
            let Some(finding) = &answer.finding else {
                output.dropped(&line)?;
                continue;
            };
            if finding.kind == FindingKind::NetfilterReject {
                line.verdict = Fate::Reject;
            }
            output.dropped(&line)?;
            state(&mut self.log, finding.clone(), line.drop.occurrences, output)?;
        }
        Ok(())
    }

    /// A drop line read back from a capture. Its rule was attributed when it was
    /// captured (the rulesets are not here to read); a repeat of a drop whose finding
    /// was already recorded is counted like the live watch counts it, and one the watch
    /// could not confirm is counted as it did.
    pub(crate) fn replay_drop(&mut self, line: &DropLine, output: &mut dyn Sink) -> io::Result<()> {
        self.stats.packets += line.drop.occurrences.0;
        let by_rule = line.stopped_by_rule();
        self.follow_drop(line, by_rule);
        if by_rule {
            self.flows.stopped_by_firewall(line.drop.src, line.drop.timestamp_ns);
        }
        if line.records_lost.is_some() {
            let kind = if line.icmp.is_some() { FindingKind::NetfilterReject } else { FindingKind::NetfilterDrop };
            self.unconfirmed.record(kind);
        } else if let Some(key) = drop_key(line) {
            // A line whose rule is not the recorded finding's was attributed afresh to another
            // rule: that finding follows it in the capture.
            if let Some((_, finding, _)) = self.attributed.get(&key).filter(|(label, _, _)| *label == line.rule) {
                let finding = finding.clone();
                output.dropped(line)?;
                return state(&mut self.log, finding, line.drop.occurrences, output);
            }
            // Not attributed yet: the finding recorded after it was stated from it.
            if self.replayed_unattributed.len() < MAX_ATTRIBUTED {
                self.replayed_unattributed.insert(key, line.drop.occurrences);
            }
        }
        output.dropped(line)
    }

    /// A netfilter finding read back from a capture: it was made from rulesets only the
    /// capturing node had, so it is taken as recorded rather than judged again.
    pub(crate) fn replay_netfilter_finding(&mut self, finding: Finding, output: &mut dyn Sink) -> io::Result<()> {
        if let Evidence::Netfilter(nf) = &finding.evidence {
            let key: DropKey = (nf.hook, nf.src.ip(), nf.dst, nf.proto);
            if self.attributed.len() < MAX_ATTRIBUTED || self.attributed.contains_key(&key) {
                // The capture recorded each new attribution as it was made: the latest stands.
                self.attributed.insert(key, (short_label(&finding), finding.clone(), 0));
            }
            let times = self.replayed_unattributed.remove(&key).unwrap_or_default();
            return state(&mut self.log, finding, times, output);
        }
        state(&mut self.log, finding, Times::default(), output)
    }
}

/// The backend a stale-entry finding's entry sent its query to.
fn finding_stale_backend(finding: &Finding) -> Option<std::net::SocketAddr> {
    match &finding.evidence {
        Evidence::Dns(dns) => dns.stale_dnat.as_ref().map(|stale| stale.backend),
        _ => None,
    }
}

/// Logs an occurrence of a finding and tells the output: a new finding is reported, a
/// repeat only counted (by outputs that count, such as the metrics).
fn state(log: &mut FindingLog, finding: Finding, times: Times, output: &mut dyn Sink) -> io::Result<()> {
    match log.record_times(finding, times.0) {
        Occurrence::New(new) => {
            output.finding(new)?;
            match times.0 {
                0 | 1 => Ok(()),
                more => output.repeated(new, more - 1),
            }
        }
        Occurrence::Repeat(_) if times.0 == 0 => Ok(()),
        Occurrence::Repeat(first) => output.repeated(first, times.0),
    }
}

/// The transport segment a packet carries, as far as it was captured. A later IP fragment
/// carries none: only payload, from the middle of its datagram.
fn segment(event: &PacketEvent) -> Option<Segment<'_>> {
    if event.fragment == Fragment::Later {
        return None;
    }
    let bytes = event.captured.get(event.l4_offset..)?;
    let header_len = event.payload_offset.checked_sub(event.l4_offset)?;
    let transport_len = (event.ip_len as usize).checked_sub(event.l4_offset.checked_sub(event.l3_offset)?)?;
    let mut payload_len = transport_len.saturating_sub(header_len);
    if event.l4_proto == L4Proto::Udp {
        // The UDP length covers the whole datagram, also when this is the first fragment
        // of a larger one.
        if let Some(length) = bytes.get(4..6).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) {
            payload_len = payload_len.max(length.saturating_sub(8));
        }
    }
    Some(Segment { src: event.src, dst: event.dst, l4_proto: event.l4_proto, bytes, header_len, payload_len })
}

/// What makes two drops the same problem, as the live watch keys its attribution cache.
fn drop_key(line: &DropLine) -> Option<DropKey> {
    let drop = &line.drop;
    let pass = line.stopped_in()?;
    line.stopped_by_rule().then(|| (pass.hook, drop.src.ip(), drop.dst, drop.l4_proto))
}

fn icmp_name(ipv6: bool, icmp_type: u8, icmp_code: u8) -> String {
    let family = if ipv6 { crate::firewall::Family::Ipv6 } else { crate::firewall::Family::Ipv4 };
    crate::findings::attribution::answer_name(family, icmp_type, icmp_code)
}

#[cfg(test)]
mod tests {
    use tracer_common::Stage;

    use super::*;
    use crate::{
        model::packet::Conntrack,
        pipeline::{
            loss::NothingLost,
            queries::tests::{backend_reply, query_path},
        },
        schema::summary::Summary,
    };

    /// A witness that says so many records were lost in every window.
    struct Lost(u64);

    impl LossWitness for Lost {
        fn lost_since(&mut self, _subject: &Unconfirmed, _windows: &LossWindows, _until_ns: u64) -> u64 {
            self.0
        }
    }

    #[derive(Default)]
    struct Recorded {
        findings: Vec<Finding>,
        unconfirmed: Vec<Unconfirmed>,
    }

    impl Sink for Recorded {
        fn packet(&mut self, _packet: &TracedPacket) -> io::Result<()> {
            Ok(())
        }
        fn dropped(&mut self, _line: &DropLine) -> io::Result<()> {
            Ok(())
        }
        fn finding(&mut self, finding: &Finding) -> io::Result<()> {
            self.findings.push(finding.clone());
            Ok(())
        }
        fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
            self.unconfirmed.push(unconfirmed.clone());
            Ok(())
        }
        fn summary(&mut self, _summary: &Summary) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn analysis() -> Analysis {
        let options = AnalysisOptions { dns_timeout: Duration::from_secs(2), dns_ports: Vec::new() };
        Analysis::replay(&options, [("net.bridge.bridge-nf-call-iptables".to_string(), Some("0".to_string()))].into())
    }

    /// The lab's conntrack skip: the query DNATed, the reply bridged back unchanged. The
    /// analysis decodes DNS from the bytes, which these packets do not carry: their DNS is set.
    fn play_conntrack_skip(analysis: &mut Analysis) {
        let mut packets = query_path();
        packets.push(backend_reply(4, Stage::BridgeIn));
        packets.push(backend_reply(5, Stage::BridgeOut));
        for packet in packets {
            analysis.stats.packets += 1;
            if let Some(correlated) = analysis.flows.observe(&packet) {
                analysis.consider(&correlated, packet.event.timestamp_ns);
            }
        }
    }

    #[test]
    fn a_finding_whose_records_are_complete_is_stated() {
        let (mut analysis, mut output) = (analysis(), Recorded::default());
        play_conntrack_skip(&mut analysis);
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        assert_eq!(output.findings.len(), 1);
        assert_eq!(output.findings[0].kind, FindingKind::ConntrackSkip);
        assert!(output.unconfirmed.is_empty());
    }

    #[test]
    fn a_finding_whose_records_may_be_lost_is_only_counted() {
        let (mut analysis, mut output) = (analysis(), Recorded::default());
        play_conntrack_skip(&mut analysis);
        analysis.settle(&mut Lost(3), &mut output).expect("output");
        assert!(output.findings.is_empty(), "{:?}", output.findings);
        assert_eq!(analysis.log.distinct(), 0);
        let [unconfirmed] = output.unconfirmed.as_slice() else { panic!("one unconfirmed: {:?}", output.unconfirmed) };
        assert_eq!(unconfirmed.kind, FindingKind::ConntrackSkip);
        assert_eq!(unconfirmed.records_lost, 3);
        assert_eq!(unconfirmed.query_id, Some(0x6aab));
        assert_eq!(analysis.unconfirmed.counts(), vec![(FindingKind::ConntrackSkip, 1)]);
    }

    #[test]
    fn timeouts_run_on_kernel_time_not_on_the_clock() {
        // A reader that fell behind has drained records up to 1.9 s after the query: whatever
        // the wall clock says, the reply may still be queued.
        let (mut analysis, mut output) = (analysis(), Recorded::default());
        for packet in query_path() {
            analysis.flows.observe(&packet);
        }
        analysis.expire(1_900_000_000);
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        assert!(output.findings.is_empty());
        analysis.expire(2_003_000_000);
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        assert_eq!(output.findings.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![FindingKind::DnsTimeout]);
    }

    #[test]
    fn a_query_a_firewall_rule_stopped_is_that_rules_finding_not_also_a_timeout() {
        // The query of the lab, then a REJECT in FORWARD of the client's packet; the rule
        // worker is not running here, so the drop line goes out without its rule.
        let (mut analysis, mut output) = (analysis(), Recorded::default());
        for packet in query_path() {
            analysis.flows.observe(&packet);
        }
        let client: std::net::SocketAddr = "10.244.0.5:40000".parse().expect("literal");
        let backend: std::net::SocketAddr = "10.244.0.7:53".parse().expect("literal");
        let drop = crate::model::netfilter::DropEvent::example(3_000_000, client, backend);
        let stopped = crate::model::netfilter::HookPass {
            hook: crate::model::hook::Hook::Forward,
            family: crate::model::hook::Family::Ipv4,
            left: false,
            conntrack: Conntrack::None,
            in_ifindex: 2,
            out_ifindex: 3,
            stamped: None,
        };
        let dropped = DroppedPacket::new(drop, vec![stopped], None);
        let mut interfaces = Interfaces::open().expect("rtnetlink answers");
        analysis
            .dropped(dropped, DropReason::NetfilterDrop, &WallClock::now(), &mut interfaces, &mut output)
            .expect("output");
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        analysis.expire(2_100_000_000);
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        assert!(
            output.findings.iter().all(|f| f.kind != FindingKind::DnsTimeout),
            "a timeout was stated beside the drop: {:?}",
            output.findings
        );
        // Another client's unanswered query still times out.
        let (mut analysis, mut output) = (self::analysis(), Recorded::default());
        for packet in query_path() {
            analysis.flows.observe(&packet);
        }
        analysis.expire(2_100_000_000);
        analysis.settle(&mut NothingLost, &mut output).expect("output");
        assert_eq!(output.findings.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![FindingKind::DnsTimeout]);
    }
}
