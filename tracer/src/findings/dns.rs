//! Decides what a paired query and reply (or a query left unanswered) means.

use std::net::SocketAddr;

use tracer_common::Stage;

use crate::{
    model::{
        dns::rcode_name,
        packet::{stage_name, Conntrack},
        sysctl::SysctlValue,
    },
    node::sysctl::bridge_nf_call_sysctl,
    pipeline::{
        dns_parse::qtype_name,
        queries::{AskedServer, Correlated, QueryFlow},
    },
    schema::{
        finding::{DnsEvidence, Evidence, Finding, FindingKind, QueryRef, StaleDnat},
        packet::TracedPacket,
    },
};

/// `read_sysctl` is how the node's settings are read (the real /proc/sys in a watch).
pub(crate) fn judge(
    correlated: &Correlated,
    timeout_secs: f64,
    read_sysctl: &dyn Fn(&str) -> SysctlValue,
) -> Option<Finding> {
    match correlated {
        Correlated::ReplyToClient { query, reply } => judge_reply(query, reply, read_sysctl),
        Correlated::Unanswered { query } => Some(timeout(query, timeout_secs)),
    }
}

fn judge_reply(query: &QueryFlow, reply: &TracedPacket, read_sysctl: &dyn Fn(&str) -> SysctlValue) -> Option<Finding> {
    let actual = reply.event.src;
    if let Some(server) = query.servers.iter().find(|server| server.queried == actual) {
        // The path works: what is left to judge is the server's own answer.
        let rcode = reply.event.dns.as_ref().map(|message| message.rcode)?;
        return is_server_failure(rcode).then(|| server_failure(query, server, reply, rcode));
    }
    // The reply comes from the backend conntrack sent one of the queries to, unchanged:
    // reverse NAT never saw it.
    let skipped_by = match reply.event.conntrack {
        Conntrack::None => query.servers.iter().find(|server| server.backend == Some(actual)),
        _ => None,
    };
    let expected = skipped_by.map_or_else(|| query.queried(), |server| server.queried);
    let evidence = answered(query, expected, reply);
    Some(if skipped_by.is_some() {
        conntrack_skip(evidence, reply.wall_time_ns, read_sysctl)
    } else {
        unexpected_source(evidence, reply.wall_time_ns, query)
    })
}

fn conntrack_skip(mut evidence: DnsEvidence, wall_time_ns: u64, read_sysctl: &dyn Fn(&str) -> SysctlValue) -> Finding {
    let bridge = evidence.bridge.clone().unwrap_or_else(|| "the bridge".to_string());
    let actual = show(evidence.actual_source);
    let expected = evidence.expected_source;
    let sysctl_name = bridge_nf_call_sysctl(expected.is_ipv6());
    let sysctl = read_sysctl(sysctl_name);
    let sysctl_text = match &sysctl.value {
        Some(value) => format!("{sysctl_name} is {value} in this network namespace"),
        None => format!("{sysctl_name} does not exist here: br_netfilter is not loaded"),
    };
    let ports = match (&evidence.reply_in_port, &evidence.reply_out_port) {
        (Some(from), Some(to)) => format!(" from {from} to {to}"),
        _ => String::new(),
    };
    // Without the module the sysctl does not exist, and loading the module is the fix.
    let module_missing = sysctl.value.is_none();
    let headline = format!(
        "{}DNS replies skip conntrack on bridge {bridge}: {} gets answers from {actual} instead of {expected}",
        if module_missing { "br_netfilter is not loaded: " } else { "" },
        evidence.client.ip()
    );
    let explanation = format!(
        "The client asked the service address {expected}; conntrack sent the query to the backend {actual}. \
         The backend's reply was forwarded by {bridge}{ports} at layer 2 without passing the IP netfilter hooks, \
         so conntrack never saw it and reverse NAT never rewrote its source to {expected}. The client drops \
         a reply from an address it did not ask (\"reply from unexpected source\") and the lookup times out. \
         Bridged frames pass conntrack only when br_netfilter is loaded and {sysctl_name}=1; {sysctl_text}."
    );
    let mut fix = Vec::new();
    if module_missing {
        fix.push("modprobe br_netfilter".to_string());
        fix.push("echo br_netfilter > /etc/modules-load.d/br_netfilter.conf    # load it at every boot".to_string());
    }
    fix.push(format!("sysctl -w {sysctl_name}=1"));
    fix.push(format!("echo '{sysctl_name} = 1' > /etc/sysctl.d/99-bridge-nf-call.conf    # persist the setting"));
    evidence.sysctls = vec![sysctl];
    Finding {
        kind: FindingKind::ConntrackSkip,
        wall_time_ns,
        headline,
        evidence: Evidence::Dns(evidence),
        explanation,
        fix,
    }
}

/// RCODEs that say the server could not or would not answer. NXDOMAIN and an empty NOERROR
/// (no record of that type) are answers: a lookup that walks a search list or asks AAAA of
/// an IPv4-only name gets them by the dozen on a healthy cluster.
fn is_server_failure(rcode: u8) -> bool {
    matches!(rcode, 1 | 2 | 4 | 5)
}

fn server_failure(query: &QueryFlow, server: &AskedServer, reply: &TracedPacket, rcode: u8) -> Finding {
    let name = rcode_name(rcode);
    let asked = server.queried;
    let backend = server.backend.filter(|backend| *backend != asked);
    let who = match backend {
        Some(backend) => format!("{asked} (backend {backend})"),
        None => asked.to_string(),
    };
    let what = format!(
        "{} {}",
        query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string()),
        query.qname.as_deref().unwrap_or("?")
    );
    let meaning = match rcode {
        2 => "SERVFAIL: the server could not get an answer. It forwards the name to an upstream that is unreachable, slow or failing, or a DNSSEC validation failed; the server's log says which.",
        5 => "REFUSED: the server will not answer this name for this client. It has no zone and no upstream for the name (a forward or stub zone to nowhere, a resolver left without upstream servers), or an access rule turns the client away.",
        4 => "NOTIMP: the server does not implement this kind of query.",
        _ => "FORMERR: the server could not read the query (a client or a middlebox mangled it, or EDNS the server does not understand).",
    };
    let explanation = format!(
        "{} asked {who} for {what} and the server answered {name}. The query reached the server and its answer came back to the client, so the network path and the firewall are not the cause: the server is. {meaning}",
        query.client
    );
    let target = backend.unwrap_or(asked);
    let fix = vec![
        format!("dig @{} {} {}    # ask the server again from the node: the same answer?", target.ip(), query.qname.as_deref().unwrap_or("NAME"), query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "A".to_string())),
        "kubectl -n kube-system logs -l k8s-app=kube-dns --tail=100    # cluster DNS (CoreDNS): what it says about the name and its upstreams".to_string(),
        "kubectl -n kube-system get configmap coredns -o yaml    # its forward / stub zones: does one cover the name, and is its upstream reachable?".to_string(),
    ];
    Finding {
        kind: FindingKind::DnsServerFailure,
        wall_time_ns: reply.wall_time_ns,
        headline: format!("DNS server {who} answered {name} to {}'s query for {what}", query.client.ip()),
        evidence: Evidence::Dns(DnsEvidence { rcode: Some(name.to_string()), ..answered(query, asked, reply) }),
        explanation,
        fix,
    }
}

/// The evidence of an exchange whose answer reached its client, which had asked `asked`.
pub(super) fn answered(query: &QueryFlow, asked: SocketAddr, reply: &TracedPacket) -> DnsEvidence {
    DnsEvidence {
        client: query.client,
        expected_source: asked,
        actual_source: Some(reply.event.src),
        query: query_ref(query),
        bridge: reply.names.bridge.clone().or_else(|| query.bridge.clone()),
        reply_in_port: reply.names.in_ifname.clone(),
        reply_out_port: reply.names.ifname.clone(),
        last_seen: None,
        rcode: None,
        search: None,
        stale_dnat: None,
        tcp_retry: None,
        fragments: None,
        sysctls: Vec::new(),
        pods: Default::default(),
    }
}

fn unexpected_source(evidence: DnsEvidence, wall_time_ns: u64, query: &QueryFlow) -> Finding {
    let actual = show(evidence.actual_source);
    let expected = evidence.expected_source;
    let nat_note = match query.backend() {
        Some(backend) if Some(backend) != evidence.actual_source => format!(
            " Conntrack had sent the query to {backend}, and the reply comes from neither that backend nor the service."
        ),
        Some(_) => " Conntrack saw the reply but did not rewrite its source back to the service address.".to_string(),
        None => String::new(),
    };
    let asked: Vec<String> = query.servers.iter().map(|server| server.queried.to_string()).collect();
    let headline = format!(
        "DNS reply from unexpected source: {} asked {} but the answer comes from {actual}",
        evidence.client.ip(),
        asked.join(" and ")
    );
    let explanation = format!(
        "A DNS client accepts an answer only from an address and port it sent the query to. This reply reaches \
         {} from {actual}, so the client drops it and the lookup times out.{nat_note} Typical causes: a \
         SNAT or MASQUERADE rule that matches the reply, a DNS server that answers from another of its \
         addresses, or asymmetric routing around conntrack.",
        evidence.client
    );
    let fix = vec![
        format!("iptables-save -t nat | grep -iE 'SNAT|MASQUERADE'    # a rule rewriting replies from {actual}?"),
        "nft list ruleset | grep -iE 'snat|masquerade'".to_string(),
        format!("conntrack -L -p udp --orig-port-dst {}    # how conntrack tracks the flow", expected.port()),
        "make the DNS server answer from the address it was queried on (bind it to that address)".to_string(),
    ];
    Finding {
        kind: FindingKind::UnexpectedReplySource,
        wall_time_ns,
        headline,
        evidence: Evidence::Dns(evidence),
        explanation,
        fix,
    }
}

/// A query that got no reply, sent by a conntrack entry of an earlier exchange to
/// `backend`, where the nat rules now send new flows to `current` instead.
pub(crate) fn stale_dnat(
    query: &QueryFlow,
    backend: SocketAddr,
    current: Vec<SocketAddr>,
    timeout_secs: f64,
) -> Finding {
    let client = query.client;
    let service = query.queried();
    let now: Vec<String> = current.iter().map(SocketAddr::to_string).collect();
    let now = now.join(", ");
    let headline = format!(
        "Stale conntrack entry: {client}'s DNS queries to {service} still go to {backend}, which the Service's rules no longer choose (now {now})"
    );
    let explanation = format!(
        "No reply to {client}'s query came within {timeout_secs} s. The query was not NATed by the rules: it \
         reused the conntrack entry of an earlier exchange from the same client port, which sends everything \
         from {client} to {service} to {backend}, the backend the rules chose when the entry was made. The \
         Service's nat rules now send new flows to {now}: {backend} was replaced (a DNS pod restarted \
         elsewhere, an endpoint removed). A UDP entry lives for as long as its client keeps sending within \
         the UDP timeout, and a resolver that keeps its source port keeps it alive forever; it is not removed \
         when the endpoint goes unless the proxy clears it (kube-proxy does, when it sees the endpoint go and \
         its conntrack tool works). Every query of this client goes to {backend} until the entry is deleted."
    );
    // To the second: the entry's sightings are a lower bound, not a measurement.
    let seen_for_secs = (query.first_seen_ns.saturating_sub(query.entry_since_ns.unwrap_or(query.first_seen_ns))
        / 1_000_000_000) as f64;
    let age = if seen_for_secs >= 1.0 {
        format!(" The entry was there {seen_for_secs:.0} s before this query already (tracer saw it then): it is at least that old")
    } else {
        " The entry predates this query: it had seen a reply".to_string()
    };
    let explanation = format!(
        "{explanation}{age} (the kernel keeps an entry's age only with net.netfilter.nf_conntrack_timestamp=1)."
    );
    let proto = "udp";
    let fix = vec![
        format!(
            "conntrack -D -p {proto} --orig-src {} --orig-port-src {} --orig-dst {} --orig-port-dst {}    # deletes exactly this entry; the next query is NATed by the rules",
            client.ip(),
            client.port(),
            service.ip(),
            service.port()
        ),
        format!(
            "conntrack -L -p {proto} --orig-src {} --orig-port-src {} --orig-dst {} -o ktimestamp    # the entry, with its age where conntrack timestamps are on",
            client.ip(),
            client.port(),
            service.ip()
        ),
        format!("conntrack -L -p {proto} --orig-dst {} --reply-src {}    # other clients held on {backend}", service.ip(), backend.ip()),
        "kubectl -n kube-system logs -l k8s-app=kube-proxy --tail=100 | grep -i conntrack    # why the proxy did not clear it".to_string(),
    ];
    let seen = query.last_seen.clone();
    Finding {
        kind: FindingKind::StaleConntrackDnat,
        wall_time_ns: seen.wall_time_ns,
        headline,
        evidence: Evidence::Dns(DnsEvidence {
            client,
            expected_source: service,
            actual_source: None,
            query: query_ref(query),
            bridge: query.bridge.clone(),
            reply_in_port: None,
            reply_out_port: None,
            last_seen: Some(seen),
            rcode: None,
            search: None,
            stale_dnat: Some(StaleDnat { backend, current, seen_for_secs }),
            tcp_retry: None,
            fragments: None,
            sysctls: Vec::new(),
            pods: Default::default(),
        }),
        explanation,
        fix,
    }
}

fn timeout(query: &QueryFlow, timeout_secs: f64) -> Finding {
    let seen = &query.last_seen;
    let place = format!(
        "{} on {}",
        stage_name(seen.stage),
        seen.ifname.clone().unwrap_or_else(|| format!("if{}", seen.ifindex))
    );
    let (where_lost, fix) = match seen.stage {
        Stage::BridgeOut => (
            format!(
                "It left the bridge towards the server ({place}){} and no reply came back: the server did not \
                 answer, or its answer was dropped before reaching the bridge.",
                query.backend().map(|b| format!(", sent to {b}")).unwrap_or_default()
            ),
            vec![
                format!(
                    "check the DNS server at {} is running and listening",
                    show(query.backend().or(Some(query.queried())))
                ),
                "check firewall rules on the server side (iptables -S; nft list ruleset)".to_string(),
            ],
        ),
        Stage::ToHost | Stage::BridgeIn => (
            format!(
                "It was last seen at {place}: the node did not forward it. A firewall rule, a missing route or \
                 ip_forward=0 stops it there."
            ),
            vec![
                "iptables -S; iptables -t nat -S; nft list ruleset    # REJECT/DROP rules or DROP policies".to_string(),
                "sysctl net.ipv4.ip_forward    # must be 1 to route pod traffic".to_string(),
                format!(
                    "ip route get {}    # is there a route to the server?",
                    query.backend().unwrap_or_else(|| query.queried()).ip()
                ),
            ],
        ),
        Stage::FromHost => (
            format!("It was last seen at {place}: the node sent it but it never left the bridge through a port."),
            vec!["bridge fdb show; ip neigh    # does the bridge know where the server is?".to_string()],
        ),
    };
    Finding {
        kind: FindingKind::DnsTimeout,
        wall_time_ns: seen.wall_time_ns,
        headline: format!(
            "DNS query unanswered: {} asked {} and got no reply within {timeout_secs} s",
            query.client,
            query.queried()
        ),
        evidence: Evidence::Dns(DnsEvidence {
            client: query.client,
            expected_source: query.queried(),
            actual_source: None,
            query: query_ref(query),
            bridge: query.bridge.clone(),
            reply_in_port: None,
            reply_out_port: None,
            last_seen: Some(seen.clone()),
            rcode: None,
            search: None,
            stale_dnat: None,
            tcp_retry: None,
            fragments: None,
            sysctls: Vec::new(),
            pods: Default::default(),
        }),
        explanation: format!(
            "No reply to the {} query for {} was seen on this node. {where_lost}",
            query.qtype.map(|t| qtype_name(t).into_owned()).unwrap_or_else(|| "DNS".to_string()),
            query.qname.as_deref().unwrap_or("?")
        ),
        fix,
    }
}

pub(super) fn query_ref(query: &QueryFlow) -> QueryRef {
    QueryRef { id: query.id, qname: query.qname.clone(), qtype: query.qtype }
}

fn show(addr: Option<SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_else(|| "?".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::Occurrence;
    use crate::pipeline::queries::{
        tests::{addr, backend_reply, dnat_entry, packet, query_path},
        DnsFlows,
    };

    fn sysctl_zero(name: &str) -> SysctlValue {
        SysctlValue { name: name.to_string(), value: Some("0".to_string()) }
    }

    fn run(packets: &[TracedPacket]) -> Vec<Finding> {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let mut correlated: Vec<Correlated> = packets.iter().filter_map(|p| flows.observe(p)).collect();
        correlated.extend(flows.expire(u64::MAX));
        correlated.iter().filter_map(|c| judge(c, 2.0, &sysctl_zero)).collect()
    }

    #[test]
    fn a_stale_entry_names_both_backends_and_the_delete_of_exactly_its_tuple() {
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        for packet in query_path() {
            flows.observe(&packet);
        }
        let expired = flows.expire(u64::MAX);
        let [Correlated::Unanswered { query }] = expired.as_slice() else {
            panic!("one unanswered query: {expired:?}")
        };
        let query = query.clone();
        let finding = stale_dnat(&query, addr("10.244.0.7:53"), vec![addr("10.244.0.8:53")], 2.0);
        assert_eq!(finding.kind, FindingKind::StaleConntrackDnat);
        assert!(
            finding.headline.contains("still go to 10.244.0.7:53") && finding.headline.contains("now 10.244.0.8:53")
        );
        assert!(finding.fix[0].starts_with(
            "conntrack -D -p udp --orig-src 10.244.0.5 --orig-port-src 40000 --orig-dst 10.96.0.10 --orig-port-dst 53    #"
        ));
        assert!(!finding.explanation.contains("  "), "{}", finding.explanation);
        assert!(finding.explanation.contains("The entry predates this query: it had seen a reply"));

        // Seen 42.5 s before the query already: at least 42 s old, to the second.
        let mut seen_before = query.clone();
        seen_before.first_seen_ns = 42_500_000_000;
        seen_before.entry_since_ns = Some(0);
        let finding = stale_dnat(&seen_before, addr("10.244.0.7:53"), vec![addr("10.244.0.8:53")], 2.0);
        assert!(
            finding.explanation.contains("The entry was there 42 s before this query already"),
            "{}",
            finding.explanation
        );
        let Evidence::Dns(evidence) = &finding.evidence else { panic!("DNS evidence") };
        assert_eq!(evidence.stale_dnat.as_ref().map(|stale| stale.seen_for_secs), Some(42.0));
    }

    #[test]
    fn bridged_reply_from_backend_is_conntrack_skip() {
        let mut packets = query_path();
        packets.push(backend_reply(4, Stage::BridgeIn));
        let mut reply =
            packet(5, Stage::BridgeOut, "veth-client", "10.244.0.7:53", "10.244.0.5:40000", true, Conntrack::None);
        reply.names.in_ifname = Some("veth-server".to_string());
        packets.push(reply);
        let findings = run(&packets);
        let [finding] = findings.as_slice() else { panic!("expected one finding, got {findings:?}") };
        assert_eq!(finding.kind, FindingKind::ConntrackSkip);
        let fix = &finding.fix;
        let Evidence::Dns(finding) = &finding.evidence else { panic!("DNS evidence") };
        assert_eq!(finding.client, addr("10.244.0.5:40000"));
        assert_eq!(finding.expected_source, addr("10.96.0.10:53"));
        assert_eq!(finding.actual_source, Some(addr("10.244.0.7:53")));
        assert_eq!(finding.reply_in_port.as_deref(), Some("veth-server"));
        assert_eq!(finding.reply_out_port.as_deref(), Some("veth-client"));
        assert_eq!(finding.sysctls[0].name, "net.bridge.bridge-nf-call-iptables");
        assert!(fix.iter().any(|f| f == "sysctl -w net.bridge.bridge-nf-call-iptables=1"));
        assert!(!fix.iter().any(|f| f.starts_with("modprobe")), "the module is loaded: {fix:?}");
    }

    #[test]
    fn without_br_netfilter_the_finding_says_load_it_first() {
        let mut packets = query_path();
        packets.push(backend_reply(5, Stage::BridgeOut));
        let mut flows = DnsFlows::new(2_000_000_000, 100);
        let correlated: Vec<Correlated> = packets.iter().filter_map(|p| flows.observe(p)).collect();
        let absent = |name: &str| SysctlValue { name: name.to_string(), value: None };
        let [finding] = &correlated.iter().filter_map(|c| judge(c, 2.0, &absent)).collect::<Vec<_>>()[..] else {
            panic!()
        };
        assert!(
            finding.headline.starts_with("br_netfilter is not loaded: DNS replies skip conntrack on bridge cni0"),
            "{}",
            finding.headline
        );
        assert_eq!(finding.fix[0], "modprobe br_netfilter");
        assert!(finding.fix[1].contains("/etc/modules-load.d/br_netfilter.conf"), "{:?}", finding.fix);
    }

    #[test]
    fn reverse_natted_reply_is_healthy() {
        assert!(answered_with(0).is_empty());
    }

    /// The findings of `query_path` with its reverse-NATed reply, of `rcode`.
    fn answered_with(rcode: u8) -> Vec<Finding> {
        let mut packets = query_path();
        let mut reply =
            packet(5, Stage::BridgeOut, "veth-client", "10.96.0.10:53", "10.244.0.5:40000", true, dnat_entry(3));
        reply.event.dns.as_mut().expect("a DNS reply").rcode = rcode;
        packets.push(reply);
        run(&packets)
    }

    #[test]
    fn a_failure_answer_is_the_servers_and_a_negative_answer_is_healthy() {
        for (rcode, name) in [(2, "SERVFAIL"), (5, "REFUSED"), (4, "NOTIMP"), (1, "FORMERR")] {
            let findings = answered_with(rcode);
            let [finding] = findings.as_slice() else { panic!("{name}: one finding, got {findings:?}") };
            assert_eq!(finding.kind, FindingKind::DnsServerFailure);
            assert!(
                finding
                    .headline
                    .starts_with(&format!("DNS server 10.96.0.10:53 (backend 10.244.0.7:53) answered {name}")),
                "{}",
                finding.headline
            );
            assert!(finding.explanation.contains("not the cause: the server is"), "{}", finding.explanation);
            assert!(finding.fix[0].starts_with("dig @10.244.0.7 "), "{:?}", finding.fix);
            let Evidence::Dns(evidence) = &finding.evidence else { panic!("DNS evidence") };
            assert_eq!(evidence.rcode.as_deref(), Some(name));
            assert_eq!(evidence.actual_source, Some(addr("10.96.0.10:53")));
        }
        // NXDOMAIN is an answer a healthy cluster gives all the time (NOERROR: the test above).
        assert!(answered_with(3).is_empty());
    }

    #[test]
    fn reply_from_a_third_address_is_unexpected_source() {
        let packets = vec![
            packet(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.244.0.8:53", false, Conntrack::None),
            packet(1, Stage::BridgeOut, "veth-server", "10.244.0.5:40000", "10.244.0.8:53", false, Conntrack::None),
            packet(2, Stage::BridgeOut, "veth-client", "10.244.0.1:53", "10.244.0.5:40000", true, Conntrack::None),
        ];
        let findings = run(&packets);
        let [finding] = findings.as_slice() else { panic!("expected one finding, got {findings:?}") };
        assert_eq!(finding.kind, FindingKind::UnexpectedReplySource);
        let Evidence::Dns(finding) = &finding.evidence else { panic!("DNS evidence") };
        assert_eq!(finding.expected_source, addr("10.244.0.8:53"));
        assert_eq!(finding.actual_source, Some(addr("10.244.0.1:53")));
    }

    #[test]
    fn unanswered_query_is_a_timeout_naming_the_last_place() {
        let findings = run(&query_path());
        let [finding] = findings.as_slice() else { panic!("expected one finding, got {findings:?}") };
        assert_eq!(finding.kind, FindingKind::DnsTimeout);
        let Evidence::Dns(evidence) = &finding.evidence else { panic!("DNS evidence") };
        let seen = evidence.last_seen.as_ref().expect("last seen");
        assert_eq!(seen.stage, Stage::BridgeOut);
        assert!(finding.explanation.contains("veth-server"), "{}", finding.explanation);
    }

    #[test]
    fn repeats_are_counted_once_per_client_and_server() {
        let mut log = super::super::FindingLog::default();
        let mut packets = query_path();
        packets.push(backend_reply(5, Stage::BridgeOut));
        let finding = run(&packets).remove(0);
        let mut other_port = finding.clone();
        if let Evidence::Dns(dns) = &mut other_port.evidence {
            dns.client = addr("10.244.0.5:40001");
        }
        assert!(matches!(log.record(finding.clone()), Occurrence::New(_)));
        assert!(matches!(log.record(finding), Occurrence::Repeat(_)));
        assert!(matches!(log.record(other_port), Occurrence::Repeat(_)));
        assert_eq!(log.distinct(), 1);
        assert_eq!(log.counts(), vec![(FindingKind::ConntrackSkip, 3)]);
    }
}
