//! Decides what became of a client's retry over TCP after a truncated UDP answer.
//!
//! An answer too large for UDP (512 bytes without EDNS, else the size the client offered)
//! comes back with TC set and without its records, and the client asks again over TCP. A
//! path that carries DNS over UDP but not over TCP — a NetworkPolicy or firewall rule that
//! allows only `udp/53`, a DNS Service without its TCP port, a server that does not listen
//! on TCP — answers every small name and fails every large one. Each retry is followed from
//! its SYN, on the client's TCP socket, for one DNS timeout: an answer over TCP ends it
//! quietly; a netfilter rule that stops it is that rule's finding (which names the query it
//! was retrying); a kernel drop for another reason, a reset, or silence is this module's.

use std::net::{IpAddr, SocketAddr};

use super::dns::{answered, query_ref};
use crate::{
    model::{
        hook::Hook,
        netfilter::DropReason,
        packet::{stage_name, L4Proto, TCP_ACK, TCP_RST, TCP_SYN},
    },
    pipeline::{
        bounded::BoundedTable,
        dns_parse::qtype_name,
        queries::{dnat_backend, QueryFlow},
    },
    schema::{
        finding::{Evidence, Finding, FindingKind, QueryRef, RetryOutcome, Sighting, TcpRetry},
        packet::{DropLine, TracedPacket},
    },
};

/// Clients with a truncated answer not yet retried, and retries followed, at once.
const CAPACITY: usize = 4_096;
/// Truncated answers kept per client: a client asks A and AAAA side by side, of a few names.
const KEPT_PER_CLIENT: usize = 8;

/// A truncated answer that reached its client, waiting for the client's TCP connection.
#[derive(Clone)]
struct Truncated {
    query: QueryFlow,
    reply: Box<TracedPacket>,
}

impl Truncated {
    /// The connection goes where the query went: the address asked, or its backend once
    /// conntrack rewrote it.
    fn retried_by(&self, dst: SocketAddr) -> bool {
        self.query.servers.iter().any(|server| server.queried == dst || server.backend == Some(dst))
    }
}

/// One retry over TCP, followed from its SYN.
struct Retry {
    truncated: Truncated,
    syn_ns: u64,
    /// Where the connection went: the address asked, then the backend conntrack chose.
    server: SocketAddr,
    dnat_seen: bool,
    last_seen: Sighting,
    /// The client sent data on the connection: its query.
    sent: bool,
    /// That query was decoded: it is followed as a query of its own (a payload the kernel
    /// holds outside the packet's linear data is not captured, and then it is not).
    followed: bool,
    reset: bool,
    dropped: Option<DropLine>,
}

/// A TCP retry a netfilter hook stopped: what its rule's finding adds.
struct Stopped {
    query: QueryRef,
    at_ns: u64,
}

pub(crate) struct TcpRetries {
    timeout_ns: u64,
    /// Per client address; created with the first truncated answer, so a watch that sees none
    /// keeps no tables.
    truncated: Option<BoundedTable<IpAddr, Vec<Truncated>>>,
    /// Per client TCP socket.
    retries: Option<BoundedTable<SocketAddr, Retry>>,
    stopped: Option<BoundedTable<SocketAddr, Stopped>>,
    /// What came back to a client socket of a truncated answer's client before its SYN was
    /// read: a connection's records need not arrive in the order its packets went.
    early: Option<BoundedTable<SocketAddr, Early>>,
}

/// Segments towards a client socket not followed (yet), and a rule's drop of its SYN read
/// before the SYN itself.
#[derive(Default)]
struct Early {
    first_ns: u64,
    reset: bool,
    data: bool,
    stopped_by_rule: bool,
}

impl TcpRetries {
    pub(crate) fn new(timeout_ns: u64) -> TcpRetries {
        TcpRetries { timeout_ns, truncated: None, retries: None, stopped: None, early: None }
    }

    /// An answer that reached its client: a truncated UDP one waits for the client's retry.
    pub(crate) fn answered(&mut self, query: &QueryFlow, reply: &TracedPacket) {
        let truncated = reply.event.dns.as_ref().is_some_and(|message| message.truncated);
        if !truncated || reply.event.l4_proto != L4Proto::Udp {
            return;
        }
        let table = self.truncated.get_or_insert_with(|| BoundedTable::new(CAPACITY));
        let client = query.client.ip();
        if table.get(&client).is_none() {
            table.insert(client, Vec::new());
        }
        let Some(waiting) = table.get_mut(&client) else { return };
        let timeout_ns = self.timeout_ns;
        let now = reply.event.timestamp_ns;
        waiting.retain(|t| now.saturating_sub(t.reply.event.timestamp_ns) <= timeout_ns);
        if waiting.len() >= KEPT_PER_CLIENT {
            waiting.remove(0);
        }
        waiting.push(Truncated { query: query.clone(), reply: Box::new(reply.clone()) });
    }

    /// Every traced TCP packet: a client's SYN to where a truncated answer came from starts a
    /// retry; later packets tell how it goes.
    pub(crate) fn packet(&mut self, packet: &TracedPacket) {
        let event = &packet.event;
        if event.l4_proto != L4Proto::Tcp || (self.truncated.is_none() && self.retries.is_none()) {
            return;
        }
        let Some(flags) = event.tcp_flags() else { return };
        let sighting = Sighting {
            stage: event.stage,
            ifname: packet.names.ifname.clone(),
            ifindex: event.ifindex,
            wall_time_ns: packet.wall_time_ns,
        };
        let retries = self.retries.get_or_insert_with(|| BoundedTable::new(CAPACITY));
        if let Some(retry) = retries.get_mut(&event.src) {
            retry.last_seen = sighting;
            if let Some(backend) = dnat_backend(event) {
                retry.server = backend;
                retry.dnat_seen = true;
            }
            retry.sent |= carries_data(packet);
            retry.followed |= event.dns.as_ref().is_some_and(|message| !message.qr);
            return;
        }
        if let Some(retry) = retries.get_mut(&event.dst) {
            if carries_data(packet) {
                // The server answered over TCP: the retry did its job.
                retries.remove(&event.dst);
            } else if flags & TCP_RST != 0 {
                retry.reset = true;
            }
            return;
        }
        let Some(table) = self.truncated.as_mut() else { return };
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            if table.get(&event.dst.ip()).is_some_and(|waiting| !waiting.is_empty()) {
                let early = self.early.get_or_insert_with(|| BoundedTable::new(CAPACITY));
                if early.get(&event.dst).is_none() {
                    early.insert(event.dst, Early { first_ns: event.timestamp_ns, ..Early::default() });
                }
                if let Some(early) = early.get_mut(&event.dst) {
                    early.reset |= flags & TCP_RST != 0;
                    early.data |= carries_data(packet);
                }
            }
            return;
        }
        let Some(waiting) = table.get_mut(&event.src.ip()) else { return };
        let timeout_ns = self.timeout_ns;
        let now = event.timestamp_ns;
        let Some(at) = waiting
            .iter()
            .position(|t| t.retried_by(event.dst) && now.saturating_sub(t.reply.event.timestamp_ns) <= timeout_ns)
        else {
            return;
        };
        let mut truncated = waiting.remove(at);
        // Records of the connection lost while it is followed make its finding unconfirmed.
        truncated.query.loss.watch_source(event.src, event.loss, now);
        let dnat = dnat_backend(event);
        let early = self.early.as_mut().and_then(|early| early.remove(&event.src)).filter(|e| e.first_ns >= now);
        if early.as_ref().is_some_and(|early| early.data) {
            // Answered before its SYN was read.
            return;
        }
        if early.as_ref().is_some_and(|early| early.stopped_by_rule) {
            // A rule's drop read before the SYN: the reset, if any, was the rule's REJECT.
            let stopped = self.stopped.get_or_insert_with(|| BoundedTable::new(CAPACITY));
            stopped.insert(event.src, Stopped { query: query_ref(&truncated.query), at_ns: now });
            return;
        }
        retries.insert(
            event.src,
            Retry {
                truncated,
                syn_ns: now,
                server: dnat.unwrap_or(event.dst),
                dnat_seen: dnat.is_some(),
                last_seen: sighting,
                sent: false,
                followed: false,
                reset: early.is_some_and(|early| early.reset),
                dropped: None,
            },
        );
    }

    /// A traced packet the kernel dropped: one of a retry ends it. A drop whose netfilter rule
    /// is being named (`by_rule`) is that rule's finding, which [`TcpRetries::retrying`] tells
    /// what it retried.
    pub(crate) fn dropped(&mut self, line: &DropLine, by_rule: bool) {
        let client = line.drop.src;
        if line.drop.l4_proto != L4Proto::Tcp {
            return;
        }
        let followed = self.retries.as_ref().is_some_and(|retries| retries.get(&client).is_some());
        if !followed {
            // The records of one connection need not arrive in order: a rule's drop of a SYN
            // to where a truncated answer came from may be read before the SYN.
            let awaited = self.truncated.as_ref().and_then(|t| t.get(&client.ip())).is_some_and(|w| !w.is_empty());
            if by_rule && awaited {
                let early = self.early.get_or_insert_with(|| BoundedTable::new(CAPACITY));
                if early.get(&client).is_none() {
                    early.insert(client, Early { first_ns: line.drop.timestamp_ns, ..Early::default() });
                }
                if let Some(early) = early.get_mut(&client) {
                    early.stopped_by_rule = true;
                }
            }
            return;
        }
        let Some(retries) = self.retries.as_mut() else { return };
        if by_rule {
            let Some(retry) = retries.remove(&client) else { return };
            let stopped = self.stopped.get_or_insert_with(|| BoundedTable::new(CAPACITY));
            stopped.insert(client, Stopped { query: query_ref(&retry.truncated.query), at_ns: line.drop.timestamp_ns });
        } else if let Some(retry) = retries.get_mut(&client) {
            retry.dropped.get_or_insert_with(|| line.clone());
        }
    }

    /// The query whose truncated answer the TCP connection from `client` retried, when a
    /// netfilter hook stopped it.
    pub(crate) fn retrying(&self, client: SocketAddr) -> Option<QueryRef> {
        self.stopped.as_ref()?.get(&client).map(|stopped| stopped.query.clone())
    }

    /// Retries older than the timeout at kernel time `now_ns`: each that failed is a finding
    /// (with the query it rests on, for the loss check).
    pub(crate) fn expire(&mut self, now_ns: u64) -> Vec<(Finding, QueryFlow)> {
        let timeout_ns = self.timeout_ns;
        if let Some(stopped) = self.stopped.as_mut() {
            // Long enough for the worker to name the rule on a large node.
            stopped.expire(|s| now_ns.saturating_sub(s.at_ns) >= 30 * timeout_ns);
        }
        if let Some(early) = self.early.as_mut() {
            early.expire(|e| now_ns.saturating_sub(e.first_ns) >= timeout_ns);
        }
        let Some(retries) = self.retries.as_mut() else { return Vec::new() };
        let stopped = self.stopped.as_ref();
        retries
            .expire(|retry| now_ns.saturating_sub(retry.syn_ns) >= timeout_ns)
            .into_iter()
            .filter_map(|(client, retry)| {
                // A rule stopped this connection (its drop may have been read before or after
                // its SYN, or been of a retransmitted SYN): the rule's finding tells it, and
                // the reset the client saw was the rule's REJECT.
                if stopped.is_some_and(|stopped| stopped.get(&client).is_some()) {
                    return None;
                }
                let finding = failed(client, &retry, timeout_ns)?;
                Some((finding, retry.truncated.query))
            })
            .collect()
    }
}

/// The finding of a retry the timeout ended, if it failed. One whose query went out over
/// the connection is followed as that query (a timeout, a server failure), not here.
fn failed(client: SocketAddr, retry: &Retry, timeout_ns: u64) -> Option<Finding> {
    let outcome = match (&retry.dropped, retry.reset, retry.followed) {
        (Some(_), _, _) => RetryOutcome::Dropped,
        (None, true, _) => RetryOutcome::Reset,
        (None, false, false) => RetryOutcome::Unanswered,
        (None, false, true) => return None,
    };
    let Truncated { query, reply } = &retry.truncated;
    let mut evidence = answered(query, query.queried(), reply);
    evidence.tcp_retry = Some(TcpRetry {
        client,
        server: retry.server,
        outcome,
        drop_reason: retry.dropped.as_ref().map(|line| line.reason.clone()),
        last_seen: Some(retry.last_seen.clone()),
    });
    let asked = query.queried();
    let port = asked.port();
    let name = query.qname.as_deref().unwrap_or("?");
    let qtype = query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string());
    let who = query.client.ip();
    let truncated = format!(
        "The answer to {who}'s {qtype} query for {name} from {asked} came back over UDP truncated (TC): it did not \
         fit, and the client asked again over TCP from {client}."
    );
    let partial = "Small answers still fit in UDP, so most names resolve and only large ones (many records, long \
                   TXT or DNSSEC answers) fail.";
    let service =
        format!("kubectl get services -A -o wide | grep -w '{}'    # the Service with this ClusterIP", asked.ip());
    let add_port = format!(
        "add {{name: dns-tcp, port: {port}, protocol: TCP, targetPort: {port}}} to that Service's spec.ports    \
         # then TCP is DNATed too"
    );
    let dropped_where = |line: &DropLine| {
        format!(
            "on {} ({}{})",
            line.ifname.as_deref().unwrap_or("the node"),
            line.reason,
            line.icmp.as_ref().map(|icmp| format!(", answered ICMP {icmp}")).unwrap_or_default()
        )
    };
    let (headline, cause, fix) = match (outcome, &retry.dropped) {
        // Routing comes after the nat hooks: a connection still bound for the Service address
        // there was not DNATed, while its UDP query was.
        (RetryOutcome::Dropped, Some(line)) if not_dnated(retry, line, asked, query) => (
            format!("DNS over TCP fails: {asked} is DNATed for UDP but not for TCP, so {who} cannot retry a truncated answer"),
            format!(
                "Its UDP query was DNATed to {}, but its TCP connection to {asked} was not DNATed at all, and the \
                 kernel dropped it {}: no nat rule sends TCP port {port} of this address anywhere. The Service \
                 has no TCP port {port}, or its proxy has not written the rules for it.",
                query.backend().map(|b| b.to_string()).unwrap_or_default(),
                dropped_where(line)
            ),
            vec![service, add_port],
        ),
        (_, Some(line)) => (
            format!(
                "DNS over TCP fails: the kernel dropped {who}'s retry of a truncated answer to {} ({})",
                retry.server, line.reason
            ),
            format!(
                "The kernel dropped its connection to {} {}{}.",
                retry.server,
                dropped_where(line),
                if line.reason.is_netfilter_drop() {
                    format!(", in network namespace {}, whose rules tracer does not read", line.drop.netns_inode)
                } else {
                    String::new()
                }
            ),
            vec![
                format!("ip route get {}    # where the node sends TCP to the server", retry.server.ip()),
                format!("allow TCP port {port} to the DNS servers wherever UDP is allowed"),
            ],
        ),
        (RetryOutcome::Reset, None) => (
            format!("DNS over TCP fails: {} reset {who}'s retry of a truncated answer", retry.server),
            format!(
                "Its connection to {} was reset: nothing there accepts TCP, though {asked} answers over UDP. \
                 The server does not listen on TCP, or the Service sends TCP to another port than UDP.",
                retry.server
            ),
            vec![
                format!(
                    "ss -ltn 'sport = :{}'    # in the DNS server's network namespace: does it listen on TCP?",
                    retry.server.port()
                ),
                format!("kubectl get services -A -o yaml | grep -B2 -A4 'port: {port}'    # targetPort of TCP and UDP"),
            ],
        ),
        _ => (
            format!(
                "DNS over TCP fails: {who}'s retry of a truncated answer got no answer from {} within {} s",
                retry.server,
                timeout_ns as f64 / 1e9
            ),
            format!(
                "{} {} was last seen {} on {}, and nothing came back. No rule on this node was seen to stop it: a \
                 firewall beyond the node or the server's own, a NetworkPolicy that allows port {port} over UDP \
                 only, or a Service without a TCP port {port} (TCP is not DNATed) does.",
                if retry.sent { "Its query went out over the connection to" } else { "Its connection to" },
                retry.server,
                stage_name(retry.last_seen.stage),
                retry.last_seen.ifname.as_deref().unwrap_or("?"),
            ),
            vec![
                "kubectl get networkpolicy -A -o yaml | grep -B3 -A3 'port: 53'    # egress that allows UDP only"
                    .to_string(),
                service,
                format!("allow TCP port {port} to the DNS servers wherever UDP is allowed"),
            ],
        ),
    };
    Some(Finding {
        kind: FindingKind::DnsTcpRetryFailed,
        wall_time_ns: retry.last_seen.wall_time_ns.max(reply.wall_time_ns),
        headline,
        explanation: format!("{truncated} {cause} {partial}"),
        evidence: Evidence::Dns(evidence),
        fix,
    })
}

/// The retry's connection was dropped where the nat hooks had passed it, still bound for the
/// address the client asked, when its UDP query had been DNATed: TCP is not.
fn not_dnated(retry: &Retry, line: &DropLine, asked: SocketAddr, query: &QueryFlow) -> bool {
    const NO_ROUTE: &str = "IP_INNOROUTES";
    let after_nat = line.reason == DropReason::Named(NO_ROUTE.to_string())
        || line.path.iter().any(|pass| pass.hook == Hook::PreRouting && pass.left);
    !retry.dnat_seen && after_nat && line.drop.dst == asked && query.backend().is_some()
}

/// A netfilter finding about a TCP connection that retried `query`'s truncated answer: the
/// rule it names stops the large answers only, which is why most lookups still work.
pub(crate) fn stops_retries_of(finding: &mut Finding, query: QueryRef) {
    let Evidence::Netfilter(evidence) = &mut finding.evidence else { return };
    let name = query.qname.as_deref().unwrap_or("?");
    let qtype = query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string());
    finding.explanation.push_str(&format!(
        " The connection it stopped was {}'s retry over TCP of {qtype} {name} (id {}), whose UDP answer came back \
         truncated (TC): answers too large for UDP need TCP, so small lookups keep working and large ones fail.",
        evidence.src.ip(),
        query.id
    ));
    evidence.retry_of = Some(query);
}

/// A segment with payload: on a retry's connection, the query or its answer.
fn carries_data(packet: &TracedPacket) -> bool {
    let event = &packet.event;
    let headers = event.payload_offset.saturating_sub(event.l3_offset);
    event.ip_len as usize > headers
}
