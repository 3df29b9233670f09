//! Follows each DNS query through the node and pairs it with its reply.
//!
//! A query is keyed by the client that sent it and its DNS id. The client is taken
//! from the conntrack entry's original tuple when one is attached, so a query that
//! was source-NATed on its way still matches its reply. A resolver that sends the same
//! query (same socket, same id) to several nameservers at once, as musl does, has one
//! flow that remembers every server it asked: a reply from any of them is expected.

use std::net::SocketAddr;

use tracer_common::Stage;

use super::{bounded::BoundedTable, loss::LossWindows};
use crate::{
    model::packet::{Conntrack, L4Proto, PacketEvent},
    schema::{finding::Sighting, packet::TracedPacket},
};

/// One server a client sent a query to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AskedServer {
    /// The address the client sent the query to, before any NAT: it accepts a reply from
    /// there only.
    pub queried: SocketAddr,
    /// Where conntrack sent the query, when it rewrote its destination (DNAT).
    pub backend: Option<SocketAddr>,
}

/// Servers remembered per query: resolvers list at most three nameservers.
const MAX_SERVERS: usize = 4;

/// What we know of one DNS query.
#[derive(Clone, Debug)]
pub(crate) struct QueryFlow {
    /// The query's sender, before any NAT.
    pub client: SocketAddr,
    /// Every server the client asked under this id, in the order it asked them; never empty.
    pub servers: Vec<AskedServer>,
    pub id: u16,
    pub qname: Option<String>,
    pub qtype: Option<u16>,
    pub bridge: Option<String>,
    pub first_seen_ns: u64,
    pub last_seen: Sighting,
    /// A reply was seen somewhere on the node (even if not yet on its way to the client).
    pub reply_seen: bool,
    /// The query was DNATed by a conntrack entry that had already seen a reply: an entry of
    /// an earlier exchange from the same client port, whose backend the rules chose then.
    pub entry_reused: bool,
    /// When tracer first saw the DNAT entry this query went by (kernel time): the entry is at
    /// least that old. The kernel keeps no entry's age unless conntrack timestamps are on.
    pub entry_since_ns: Option<u64>,
    /// The client's endpoints (before and after any source NAT) from their first records:
    /// a lost record of this exchange shows as growth there.
    pub loss: LossWindows,
}

impl QueryFlow {
    /// The server the client asked first.
    pub(crate) fn queried(&self) -> SocketAddr {
        self.servers.first().map_or(self.client, |server| server.queried)
    }

    /// The backend conntrack sent the query to first, if any.
    pub(crate) fn backend(&self) -> Option<SocketAddr> {
        self.servers.iter().find_map(|server| server.backend)
    }

    fn asked(&mut self, queried: SocketAddr, backend: Option<SocketAddr>) {
        if let Some(server) = self.servers.iter_mut().find(|server| server.queried == queried) {
            if server.backend.is_none() {
                server.backend = backend;
            }
        } else if self.servers.len() < MAX_SERVERS {
            self.servers.push(AskedServer { queried, backend });
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Correlated {
    /// A reply to a tracked query leaves a bridge through a port towards its client.
    ReplyToClient { query: QueryFlow, reply: Box<TracedPacket> },
    /// No reply was seen on the node within the timeout.
    Unanswered { query: QueryFlow },
}

type FlowKey = (SocketAddr, u16);

/// A client socket's DNAT entry, as tracer saw it.
struct EntrySighting {
    backend: SocketAddr,
    first_ns: u64,
    last_ns: u64,
}

/// Sightings of one socket's entry further apart than this may be of two entries (the first
/// expired, a new one made for the same backend): below every UDP timeout a node sets.
const ENTRY_SURVIVES_NS: u64 = 10_000_000_000;

pub(crate) struct DnsFlows {
    flows: BoundedTable<FlowKey, QueryFlow>,
    /// Each client socket's DNAT entry, by when tracer first saw it.
    entries: BoundedTable<SocketAddr, EntrySighting>,
    /// Client sockets whose packets a netfilter hook stopped, and when.
    stopped: BoundedTable<SocketAddr, u64>,
    timeout_ns: u64,
}

impl DnsFlows {
    pub(crate) fn new(timeout_ns: u64, capacity: usize) -> DnsFlows {
        DnsFlows {
            flows: BoundedTable::new(capacity),
            entries: BoundedTable::new(capacity),
            stopped: BoundedTable::new(capacity),
            timeout_ns,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The query `client` sent under `id`, while it is followed.
    pub(crate) fn query(&self, client: SocketAddr, id: u16) -> Option<&QueryFlow> {
        self.flows.get(&(client, id))
    }

    /// Queries dropped from tracking to stay within the capacity.
    pub(crate) fn evicted(&self) -> u64 {
        self.flows.evicted
    }

    pub(crate) fn observe(&mut self, packet: &TracedPacket) -> Option<Correlated> {
        let message = packet.event.dns.as_ref()?;
        let event = &packet.event;
        let sighting = Sighting {
            stage: event.stage,
            ifname: packet.names.ifname.clone(),
            ifindex: event.ifindex,
            wall_time_ns: packet.wall_time_ns,
        };
        if !message.qr {
            let (client, queried) = pre_nat_endpoints(event);
            let key = (client, message.id);
            let backend = dnat_backend(event);
            // UDP only: a TCP connection's entry has seen replies by its second query.
            let entry_reused = backend.is_some()
                && event.l4_proto == L4Proto::Udp
                && matches!(&event.conntrack, Conntrack::Attached(entry) if entry.seen_reply());
            let entry_since_ns = match backend {
                Some(backend) if event.l4_proto == L4Proto::Udp => {
                    Some(self.entry_seen(client, backend, event.timestamp_ns))
                }
                _ => None,
            };
            if let Some(flow) = self.flows.get_mut(&key) {
                flow.last_seen = sighting;
                flow.entry_reused |= entry_reused;
                flow.entry_since_ns = flow.entry_since_ns.or(entry_since_ns);
                flow.asked(queried, backend);
                flow.loss.watch_source(event.src, event.loss, event.timestamp_ns);
                return None;
            }
            let mut loss = LossWindows::default();
            loss.watch_source(event.src, event.loss, event.timestamp_ns);
            self.flows.insert(
                key,
                QueryFlow {
                    client,
                    servers: vec![AskedServer { queried, backend }],
                    id: message.id,
                    qname: message.qname.clone(),
                    qtype: message.qtype,
                    bridge: packet.names.bridge.clone(),
                    first_seen_ns: event.timestamp_ns,
                    last_seen: sighting,
                    reply_seen: false,
                    entry_reused,
                    entry_since_ns,
                    loss,
                },
            );
            return None;
        }

        // A reply travels from the server to the client: the client is its destination
        // before any NAT. When the reply belongs to the query's conntrack entry (it is
        // in the entry's reply direction) that is the original tuple's source. A reply
        // from an address the query never went to gets an entry of its own, whose
        // original direction is the reply itself: then it is that tuple's destination.
        let client = match &event.conntrack {
            Conntrack::Attached(entry) => match entry.original {
                Some(original) if entry.is_reply_direction() => original.src,
                Some(original) => original.dst,
                None => event.dst,
            },
            _ => event.dst,
        };
        let key = (client, message.id);
        let flow = self.flows.get_mut(&key)?;
        flow.reply_seen = true;
        if event.stage != Stage::BridgeOut || event.dst != flow.client {
            return None;
        }
        let query = self.flows.remove(&key)?;
        Some(Correlated::ReplyToClient { query, reply: Box::new(packet.clone()) })
    }

    /// When tracer first saw `client`'s entry to `backend`, seen again at `at_ns`.
    fn entry_seen(&mut self, client: SocketAddr, backend: SocketAddr, at_ns: u64) -> u64 {
        if let Some(entry) = self.entries.get_mut(&client) {
            if entry.backend == backend && at_ns.saturating_sub(entry.last_ns) <= ENTRY_SURVIVES_NS {
                entry.last_ns = entry.last_ns.max(at_ns);
                return entry.first_ns;
            }
        }
        self.entries.insert(client, EntrySighting { backend, first_ns: at_ns, last_ns: at_ns });
        at_ns
    }

    /// A netfilter hook dropped or rejected a packet `client` sent, at kernel time `at_ns`:
    /// that drop is the finding, so the queries of that socket (an exchange keeps its source
    /// port) do not time out as a second one.
    pub(crate) fn stopped_by_firewall(&mut self, client: SocketAddr, at_ns: u64) {
        let timeout_ns = self.timeout_ns;
        // Kept for two timeouts: long enough for every query of the exchange to expire.
        self.stopped.expire(|stopped_ns| at_ns.saturating_sub(*stopped_ns) >= 2 * timeout_ns);
        self.stopped.insert(client, at_ns);
    }

    /// Resolves the flows older than the timeout at kernel time `now_ns`: unanswered
    /// queries are reported, answered ones that never went back over a bridge (a client
    /// elsewhere) are dropped.
    pub(crate) fn expire(&mut self, now_ns: u64) -> Vec<Correlated> {
        let timeout_ns = self.timeout_ns;
        self.flows
            .expire(|flow| now_ns.saturating_sub(flow.first_seen_ns) >= timeout_ns)
            .into_iter()
            .filter(|(_, flow)| !flow.reply_seen && self.stopped.get(&flow.client).is_none())
            .map(|(_, query)| Correlated::Unanswered { query })
            .collect()
    }
}

/// A reply the kernel saw leave a bridge without conntrack, and the destination its query
/// was sent to before DNAT (which the kernel saw too): the query and its reply, as
/// [`DnsFlows::observe`] would have paired them had it followed both.
pub(crate) fn paired_reply(reply: &TracedPacket, asked: SocketAddr) -> Option<Correlated> {
    let message = reply.event.dns.as_ref().filter(|message| message.qr)?;
    let event = &reply.event;
    let query = QueryFlow {
        client: event.dst,
        servers: vec![AskedServer { queried: asked, backend: (asked != event.src).then_some(event.src) }],
        id: message.id,
        qname: message.qname.clone(),
        qtype: message.qtype,
        bridge: reply.names.bridge.clone(),
        first_seen_ns: event.timestamp_ns,
        last_seen: Sighting {
            stage: event.stage,
            ifname: reply.names.ifname.clone(),
            ifindex: event.ifindex,
            wall_time_ns: reply.wall_time_ns,
        },
        reply_seen: true,
        entry_reused: false,
        entry_since_ns: None,
        loss: LossWindows::default(),
    };
    Some(Correlated::ReplyToClient { query, reply: Box::new(reply.clone()) })
}

/// (source, destination) as the client saw them: the conntrack entry's original
/// tuple when one is attached, else the packet's own addresses.
fn pre_nat_endpoints(event: &PacketEvent) -> (SocketAddr, SocketAddr) {
    match &event.conntrack {
        Conntrack::Attached(entry) => match entry.original {
            Some(original) => (original.src, original.dst),
            None => (event.src, event.dst),
        },
        _ => (event.src, event.dst),
    }
}

/// The address conntrack rewrote the destination to, if it did.
pub(crate) fn dnat_backend(event: &PacketEvent) -> Option<SocketAddr> {
    let Conntrack::Attached(entry) = &event.conntrack else { return None };
    let (original, reply) = (entry.original?, entry.reply?);
    (original.dst != reply.src).then_some(reply.src)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;

    use tracer_common::Stage;

    use super::*;
    use crate::{
        model::{
            dns::DnsMessage,
            hook::Family,
            packet::{ConntrackEntry, FlowTuple, L4Proto},
        },
        schema::packet::InterfaceNames,
    };

    pub(crate) fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    /// A packet as the kernel would report it, for replaying recorded sequences.
    pub(crate) fn packet(
        at_ms: u64,
        stage: Stage,
        ifname: &str,
        src: &str,
        dst: &str,
        qr: bool,
        conntrack: Conntrack,
    ) -> TracedPacket {
        TracedPacket {
            event: PacketEvent {
                timestamp_ns: at_ms * 1_000_000,
                loss: Default::default(),
                netns_inode: 1,
                occurrences: Default::default(),
                stage,
                ifindex: 7,
                ingress_ifindex: 0,
                ip_len: 80,
                family: Family::Ipv4,
                l4_proto: L4Proto::Udp,
                src: addr(src),
                dst: addr(dst),
                fragment: Default::default(),
                conntrack,
                dns: Some(DnsMessage {
                    id: 0x6aab,
                    qr,
                    opcode: 0,
                    rcode: 0,
                    truncated: false,
                    qname: Some("example.test.".to_string()),
                    qtype: Some(1),
                    answer_count: u16::from(qr),
                    first_answer: None,
                }),
                captured: Default::default(),
                captured_at_stage: true,
                l3_offset: 0,
                l4_offset: 0,
                payload_offset: 0,
            },
            wall_time_ns: 1_800_000_000_000_000_000 + at_ms * 1_000_000,
            names: InterfaceNames {
                ifname: Some(ifname.to_string()),
                in_ifname: None,
                bridge: Some("cni0".to_string()),
            },
            pods: Default::default(),
            hooks: Vec::new(),
            verdict: None,
            asked: None,
        }
    }

    pub(crate) fn dnat_entry(ctinfo: u8) -> Conntrack {
        Conntrack::Attached(ConntrackEntry {
            ctinfo,
            status: Some((1 << 3) | (1 << 5) | (1 << 8)),
            original: Some(FlowTuple { src: addr("10.244.0.5:40000"), dst: addr("10.96.0.10:53") }),
            reply: Some(FlowTuple { src: addr("10.244.0.7:53"), dst: addr("10.244.0.5:40000") }),
        })
    }

    /// The DNS pod's answer to [`query_path`]'s query, unchanged by NAT: entering the bridge
    /// from the server (`BridgeIn`) or leaving it towards the client (`BridgeOut`).
    pub(crate) fn backend_reply(at_ms: u64, stage: Stage) -> TracedPacket {
        let port = if stage == Stage::BridgeIn { "veth-server" } else { "veth-client" };
        packet(at_ms, stage, port, "10.244.0.7:53", "10.244.0.5:40000", true, Conntrack::None)
    }

    /// The query's way through a node with a ClusterIP DNAT, as recorded in the lab.
    pub(crate) fn query_path() -> Vec<TracedPacket> {
        vec![
            packet(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.96.0.10:53", false, Conntrack::None),
            packet(1, Stage::ToHost, "cni0", "10.244.0.5:40000", "10.96.0.10:53", false, Conntrack::None),
            packet(2, Stage::FromHost, "cni0", "10.244.0.5:40000", "10.244.0.7:53", false, dnat_entry(2)),
            packet(3, Stage::BridgeOut, "veth-server", "10.244.0.5:40000", "10.244.0.7:53", false, dnat_entry(2)),
        ]
    }

    fn replay(flows: &mut DnsFlows, packets: &[TracedPacket]) -> Vec<Correlated> {
        packets.iter().filter_map(|p| flows.observe(p)).collect()
    }

    /// The source of the reply as the client got it, when `packets` pair exactly one reply
    /// with its query.
    fn paired_reply_source(packets: &[TracedPacket]) -> SocketAddr {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let correlated = replay(&mut flows, packets);
        let [Correlated::ReplyToClient { reply, .. }] = correlated.as_slice() else {
            panic!("expected one reply paired: {correlated:#?}")
        };
        reply.event.src
    }

    #[test]
    fn bridged_reply_without_conntrack_pairs_with_its_query() {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let mut packets = query_path();
        packets.push(backend_reply(4, Stage::BridgeIn));
        packets.push(backend_reply(5, Stage::BridgeOut));
        let correlated = replay(&mut flows, &packets);
        assert_eq!(correlated.len(), 1);
        let Correlated::ReplyToClient { query, reply } = &correlated[0] else { panic!("expected a reply") };
        assert_eq!(query.client, addr("10.244.0.5:40000"));
        assert_eq!(query.queried(), addr("10.96.0.10:53"));
        assert_eq!(query.backend(), Some(addr("10.244.0.7:53")));
        assert_eq!(reply.event.src, addr("10.244.0.7:53"));
        assert!(flows.is_empty(), "a resolved flow is forgotten");
    }

    #[test]
    fn reverse_natted_reply_pairs_by_conntrack_original_tuple() {
        let mut packets = query_path();
        packets.push(packet(
            5,
            Stage::BridgeOut,
            "veth-client",
            "10.96.0.10:53",
            "10.244.0.5:40000",
            true,
            dnat_entry(3),
        ));
        assert_eq!(paired_reply_source(&packets), addr("10.96.0.10:53"));
    }

    #[test]
    fn unanswered_query_expires_with_where_it_was_last_seen() {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        assert!(replay(&mut flows, &query_path()).is_empty());
        assert!(flows.expire(1_999_000_000).is_empty(), "not before the timeout");
        let expired = flows.expire(2_000_000_000);
        let [Correlated::Unanswered { query }] = expired.as_slice() else { panic!("expected one timeout") };
        assert_eq!(query.last_seen.stage, Stage::BridgeOut);
        assert_eq!(query.last_seen.ifname.as_deref(), Some("veth-server"));
        assert!(flows.is_empty());
    }

    #[test]
    fn reply_seen_elsewhere_is_not_a_timeout() {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let mut packets = query_path();
        // The client is not behind this bridge: the reply goes up to the host and away.
        packets.push(packet(4, Stage::ToHost, "cni0", "10.244.0.7:53", "10.244.0.5:40000", true, dnat_entry(3)));
        assert!(replay(&mut flows, &packets).is_empty());
        assert!(flows.expire(10_000_000_000).is_empty());
    }

    #[test]
    fn reply_with_its_own_conntrack_entry_still_pairs() {
        // The server answers from 10.244.0.8: conntrack on the node does not match it
        // to the query's entry and creates a new one, original direction = the reply.
        let own_entry = Conntrack::Attached(ConntrackEntry {
            ctinfo: 2,
            status: Some(1 << 3),
            original: Some(FlowTuple { src: addr("10.244.0.8:53"), dst: addr("10.244.0.5:40000") }),
            reply: Some(FlowTuple { src: addr("10.244.0.5:40000"), dst: addr("10.244.0.8:53") }),
        });
        let packets = [
            packet(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.244.0.7:53", false, Conntrack::None),
            packet(1, Stage::BridgeOut, "veth-client", "10.244.0.8:53", "10.244.0.5:40000", true, own_entry),
        ];
        assert_eq!(paired_reply_source(&packets), addr("10.244.0.8:53"));
    }

    #[test]
    fn table_is_capped_and_evictions_counted() {
        let mut flows = DnsFlows::new(2_000_000_000, 3);
        for port in 0..5u16 {
            let src = format!("10.244.0.5:{}", 30000 + port);
            flows.observe(&packet(
                port as u64,
                Stage::BridgeIn,
                "veth-client",
                &src,
                "10.96.0.10:53",
                false,
                Conntrack::None,
            ));
        }
        assert_eq!(flows.len(), 3);
        assert_eq!(flows.evicted(), 2);
    }

    #[test]
    fn a_query_sent_to_several_servers_remembers_each() {
        // musl asks every nameserver at once, from one socket, with one id.
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let to_first =
            packet(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.244.0.7:53", false, Conntrack::None);
        let to_second =
            packet(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.244.0.8:53", false, Conntrack::None);
        replay(&mut flows, &[to_first, to_second]);
        let reply =
            packet(1, Stage::BridgeOut, "veth-client", "10.244.0.8:53", "10.244.0.5:40000", true, Conntrack::None);
        let correlated = replay(&mut flows, &[reply]);
        let [Correlated::ReplyToClient { query, .. }] = correlated.as_slice() else {
            panic!("expected the reply paired")
        };
        let asked: Vec<SocketAddr> = query.servers.iter().map(|s| s.queried).collect();
        assert_eq!(asked, vec![addr("10.244.0.7:53"), addr("10.244.0.8:53")]);
    }

    #[test]
    fn retries_share_one_flow() {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        replay(&mut flows, &query_path());
        replay(&mut flows, &query_path());
        assert_eq!(flows.len(), 1);
    }
}
