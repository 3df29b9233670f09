//! End-to-end: the findings (README, "Findings") in the lab variants `findings.rs` does not cover:
//! IPv6, a backend the node routes to instead of bridging, a reply from a wrong source, and a
//! healthy node that must stay silent (also when a client gives up before its answer comes).
//! Needs root and a built tracer.
//!
//! Every test also requires the packet records its conclusion rests on, so a tracer that saw
//! nothing (and therefore found nothing) cannot pass a "no finding" test.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::output::*;
use tracer_tests::packets::dns_query;
use tracer_tests::scenario::Scenario;

/// `--dns-timeout` for the tests that must not report a `dns_timeout`.
const DNS_TIMEOUT_SECS: u64 = 1;
/// How long a watch goes on after the last query in those tests: longer than the timeout plus
/// tracer's expiry tick, so a query tracer wrongly holds as unanswered would be reported.
const AFTER_LAST_QUERY: Duration = Duration::from_millis(DNS_TIMEOUT_SECS * 1000 + 1000);

/// The address the server namespace rewrites its DNS replies' source to in the wrong-source tests:
/// in the pods' subnet but nobody's address.
const WRONG_SOURCE_IP: &str = "10.244.0.8";

fn v6(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

/// A JSON watch with `--dns-timeout` [`DNS_TIMEOUT_SECS`], for the tests that must not report a
/// `dns_timeout`.
fn with_short_dns_timeout(lab: &Lab) -> Scenario<'_> {
    Scenario::new(lab).args(&["--dns-timeout", &DNS_TIMEOUT_SECS.to_string()])
}

#[test]
fn ipv6_conntrack_skip_names_the_ip6tables_sysctl() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    // The lab's setter sets both sysctls; this test is about the IPv6 one.
    let ip6 = lab.run(Ns::Node, &["sysctl", "-n", "net.bridge.bridge-nf-call-ip6tables"])?;
    ensure!(ip6.trim() == "0", "lab: bridge-nf-call-ip6tables is {ip6:?}");

    let (w, dig) = Scenario::new(&lab).run(|| lab.dig(CLUSTER_DNS_IP6, TEST_NAME, &["AAAA"]))?;
    dig.expect_timed_out().context("dig should time out on this node")?;
    let id = dig.query_id()?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    let query_in = w.query_from_client(id)?;
    expect_u64(query_in, "/ip_version", 6)?;
    expect_str(query_in, "/dst", &v6(CLUSTER_DNS_IP6, 53))?;
    let client = str_at(query_in, "/src").unwrap_or_default().to_string();
    let client_port = port_of(&client).context("query source has no port")?;
    ensure!(client == v6(CLIENT_IP6, client_port), "query source {client:?} is not the client");
    // The query was DNATed to the backend on its way (so there is a NAT to undo)...
    w.find_one("the DNATed IPv6 query leaving towards the server", |p| {
        stage_is(p, "bridge-out", SERVER_VETH)
            && dns_is(p, id, false)
            && str_at(p, "/dst") == Some(&v6(SERVER_IP6, 53))
            && str_at(p, "/conntrack/nat").is_some_and(|nat| nat.starts_with("dnat"))
    })?;
    // ...and the backend's reply was bridged back with its own source and no conntrack entry.
    let reply_out = w.reply_to_client(id)?;
    expect_reply_bridged_without_conntrack(reply_out, &v6(SERVER_IP6, 53), &client)?;

    let f = w.only_finding("conntrack_skip")?;
    expect_bridged_reply_finding(f, id, &client, &v6(CLUSTER_DNS_IP6, 53), &v6(SERVER_IP6, 53))?;
    expect_str(f, "/query/qtype", "AAAA")?;
    expect_str(f, "/sysctls/net.bridge.bridge-nf-call-ip6tables", "0")?;
    let fix = fix_lines(f);
    ensure!(
        fix.contains(&"sysctl -w net.bridge.bridge-nf-call-ip6tables=1"),
        "the fix should set bridge-nf-call-ip6tables=1: {f}"
    );
    // The IPv4 setting does not help an IPv6 reply.
    ensure!(
        !fix.iter().any(|c| c.contains("bridge-nf-call-iptables=1")),
        "the IPv6 fix should not be the IPv4 sysctl: {f}"
    );
    expect_u64(&w.summary, "/finding_counts/conntrack_skip", 1)?;
    w.check_summary()
}

#[test]
fn routed_backend_is_not_a_conntrack_skip() -> Result<()> {
    // bridge-nf-call-iptables=0 as on the broken node, but the backend is reached through the
    // node's routing: the reply comes back through the node's IP stack, passes conntrack and is
    // reverse-NATed there, and only then crosses the bridge to the client. Nothing is wrong.
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off().with_routed_server())?;
    let ports = lab.run(Ns::Node, &["ip", "-o", "link", "show", "master", BRIDGE])?;
    ensure!(
        ports.contains(CLIENT_VETH) && !ports.contains(ROUTED_VETH) && !ports.contains(SERVER_VETH),
        "lab: the server must not be on {BRIDGE}; its ports are:\n{ports}"
    );

    let (w, (dig, dig6)) = with_short_dns_timeout(&lab).settle(AFTER_LAST_QUERY).run(|| {
        let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
        Ok((dig, lab.dig(CLUSTER_DNS_IP6, TEST_NAME, &["AAAA"])?))
    })?;
    dig.expect_answers(&[TEST_A])?;
    dig6.expect_answers(&[TEST_AAAA]).context("the IPv6 query")?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    for (dig, service, backend) in [
        (&dig, format!("{CLUSTER_DNS_IP}:53"), format!("{ROUTED_SERVER_IP}:53")),
        (&dig6, v6(CLUSTER_DNS_IP6, 53), v6(ROUTED_SERVER_IP6, 53)),
    ] {
        let id = dig.query_id()?;
        let query_in = w.query_from_client(id)?;
        expect_str(query_in, "/dst", &service)?;
        let client = str_at(query_in, "/src").unwrap_or_default();

        // The reply the test is about: it leaves the bridge towards the client from the service
        // address, with the DNAT's conntrack entry attached.
        let reply_out = w.reply_to_client(id)?;
        expect_str(reply_out, "/src", &service)?;
        expect_str(reply_out, "/dst", client)?;
        ensure!(reply_out["conntrack"].is_object(), "no conntrack on the routed reply: {reply_out}");
        ensure!(
            str_at(reply_out, "/conntrack/nat").is_some_and(|nat| nat.starts_with("dnat") && nat.contains(&backend)),
            "the reply's conntrack entry should be the DNAT to {backend}: {reply_out}"
        );
        // It came up from the node's own stack, not bridged in from a pod's port.
        w.find_one(&format!("the reply from {service} sent by the node"), |p| {
            stage_is(p, "from-host", BRIDGE) && dns_is(p, id, true)
        })?;
        ensure!(
            w.find(|p| str_at(p, "/stage") == Some("bridge-in") && dns_is(p, id, true)).next().is_none(),
            "a reply entered the bridge from a pod's port, yet the server is routed:\n{}",
            w.describe()
        );
    }
    // The routed interface is not a bridge port: nothing on it is traced.
    ensure!(
        w.find(|p| str_at(p, "/ifname") == Some(ROUTED_VETH)).next().is_none(),
        "records on the routed interface {ROUTED_VETH}:\n{}",
        w.describe()
    );

    w.expect_no_findings("a routed backend's reverse-NATed reply is healthy, yet")?;
    w.check_summary()
}

/// The server answers from another address than the one it was queried on: in the server
/// namespace a stateless nftables rule rewrites the source of every DNS reply it sends, as a
/// wrong SNAT would. Verified by hand on this kernel: tcpdump in the client shows
/// `10.244.0.8.53 > 10.244.0.5.N: ... A 192.0.2.10` answering a query to 10.244.0.7, the UDP
/// checksum is fixed up by nft, the client counts UdpNoPorts and dig times out. (The client's
/// port unreachable never shows on the wire: it would go to 10.244.0.8, which no one answers ARP
/// for.) The client queries the server pod directly, so no DNAT is involved.
fn wrong_reply_source(config: LabConfig) -> Result<()> {
    let lab = Lab::new(config)?;
    for cmd in ["add table ip wrongsnat", "add chain ip wrongsnat out { type filter hook output priority 0 ; }"] {
        lab.run(Ns::Server, &["nft", cmd])?;
    }
    lab.run(Ns::Server, &["nft", &format!("add rule ip wrongsnat out udp sport 53 ip saddr set {WRONG_SOURCE_IP}")])?;

    let (w, dig) = with_short_dns_timeout(&lab)
        // dig waits 2 s, longer than --dns-timeout; a little more for tracer's expiry tick, so a
        // query tracer wrongly holds as unanswered would be reported as dns_timeout.
        .settle(Duration::from_millis(1000))
        .run(|| lab.dig(SERVER_IP, TEST_NAME, &[]))?;
    dig.expect_timed_out().with_context(|| format!("dig should not accept a reply from {WRONG_SOURCE_IP}"))?;
    ensure!(lab.dnsmasq_log().contains(TEST_NAME), "dnsmasq did not answer the query:\n{}", lab.dnsmasq_log());
    let id = dig.query_id()?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    let query_in = w.query_from_client(id)?;
    expect_str(query_in, "/dst", &format!("{SERVER_IP}:53"))?;
    let client = str_at(query_in, "/src").unwrap_or_default().to_string();
    let wrong = format!("{WRONG_SOURCE_IP}:53");
    // The on-wire symptom as the node sees it: the reply arrives from the server's port with the
    // rewritten source and is forwarded to the client like that.
    let reply_in = w.reply_from_server(id)?;
    expect_str(reply_in, "/src", &wrong)?;
    let reply_out = w.reply_to_client(id)?;
    expect_str(reply_out, "/src", &wrong)?;
    expect_str(reply_out, "/dst", &client)?;

    ensure!(
        w.findings_of("conntrack_skip").next().is_none(),
        "no DNAT was involved, so this is no conntrack_skip:\n{}",
        w.describe()
    );
    let f = w.only_finding("unexpected_reply_source")?;
    expect_bridged_reply_finding(f, id, &client, &format!("{SERVER_IP}:53"), &wrong)?;
    expect_str(f, "/query/qname", "example.test.")?;
    expect_text(f, "/headline")?;
    expect_u64(&w.summary, "/finding_counts/unexpected_reply_source", 1)?;
    w.check_summary()
}

tracer_tests::cases!(wrong_reply_source => {
    /// The realistic case: a correctly configured node (bridged traffic passes conntrack) and a
    /// server that answers from the wrong address. The node's conntrack does not match the reply
    /// to the query's entry (other source), so the reply carries a *new* conntrack entry of its
    /// own.
    wrong_reply_source_on_healthy_node_is_unexpected_reply_source: (LabConfig::healthy()),
    /// The same server on a node whose bridge skips conntrack: the reply carries no conntrack
    /// entry, but there was no DNAT either, so it is still not a conntrack_skip.
    wrong_reply_source_without_bridge_conntrack_is_unexpected_reply_source:
        (LabConfig::bridge_nf_call_iptables_off()),
});

#[test]
fn healthy_node_with_several_queries_has_no_findings() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // (server, name, extra dig args, the source the reply must come from)
    let queries = [
        (CLUSTER_DNS_IP, TEST_NAME, vec![], format!("{CLUSTER_DNS_IP}:53")),
        (CLUSTER_DNS_IP, TEST_NAME, vec!["AAAA"], format!("{CLUSTER_DNS_IP}:53")),
        (CLUSTER_DNS_IP6, TEST_NAME, vec!["AAAA"], v6(CLUSTER_DNS_IP6, 53)),
        (SERVER_IP, TEST_NAME, vec![], format!("{SERVER_IP}:53")),
        (SERVER_IP6, TEST_NAME, vec!["A"], v6(SERVER_IP6, 53)),
        // A negative answer is an answer: no timeout, and not the server failing.
        (CLUSTER_DNS_IP, NXDOMAIN_NAME, vec![], format!("{CLUSTER_DNS_IP}:53")),
    ];
    let (w, (answered, last_query)) = with_short_dns_timeout(&lab).settle(AFTER_LAST_QUERY).run(|| {
        let mut answered = Vec::new();
        for (server, name, extra, source) in &queries {
            let dig = lab.dig(server, name, extra)?;
            ensure!(dig.status.is_some(), "dig @{server} {name} got no reply:\n{}", dig.output);
            answered.push((dig, source));
        }
        Ok((answered, Instant::now()))
    })?;
    ensure!(
        last_query.elapsed() > Duration::from_secs(DNS_TIMEOUT_SECS),
        "the watch ended within --dns-timeout of the last query"
    );
    ensure!(
        answered[0].0.answers == [TEST_A] && answered[2].0.answers == [TEST_AAAA],
        "unexpected answers:\n{}\n{}",
        answered[0].0.output,
        answered[2].0.output
    );
    ensure!(
        answered[5].0.status.as_deref() == Some("NXDOMAIN"),
        "dnsmasq should deny {NXDOMAIN_NAME}:\n{}",
        answered[5].0.output
    );
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    // Every query and its reply were seen, the reply leaving towards the client from the address
    // the client asked: tracer had everything it needed to pair them.
    for (dig, source) in &answered {
        let id = dig.query_id()?;
        let client = str_at(w.query_from_client(id)?, "/src").unwrap_or_default();
        let reply_out = w.reply_to_client(id)?;
        expect_str(reply_out, "/src", source)?;
        expect_str(reply_out, "/dst", client)?;
    }

    w.expect_no_findings("a healthy node should produce no findings")?;
    ensure!(
        w.summary["finding_counts"].as_object().is_some_and(|counts| counts.is_empty()),
        "summary finding_counts should be empty: {}",
        w.summary
    );
    w.check_summary()
}

/// `Udp: ... NoPorts` of a namespace's /proc/net/snmp: datagrams that came for a port no socket
/// held.
fn udp_no_ports(lab: &Lab, ns: Ns) -> Result<u64> {
    let snmp = lab.run(ns, &["cat", "/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { bail!("no Udp lines in:\n{snmp}") };
    let column = names.split_whitespace().position(|name| name == "NoPorts").context("no NoPorts column")?;
    values.split_whitespace().nth(column).context("no NoPorts value")?.parse().context("NoPorts")
}

/// The lab's dnsmasq, stopped (SIGSTOP) while this lives: a server too slow for its clients.
/// It goes on (SIGCONT) when this is dropped, also when the test fails.
struct SlowServer(libc::pid_t);

impl SlowServer {
    fn stop(lab: &Lab) -> Result<SlowServer> {
        let pid_file = lab.dir().join("dnsmasq.pid");
        let pid = std::fs::read_to_string(&pid_file)?.trim().parse().context("dnsmasq's pid file")?;
        // SAFETY: kill(2) with a pid the lab's own dnsmasq wrote.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGSTOP) } == 0,
            "stopping dnsmasq: {}",
            std::io::Error::last_os_error()
        );
        Ok(SlowServer(pid))
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A client that gives up before its answer arrives (a resolver whose timeout is shorter than
/// a slow server's answer) has a healthy exchange: the answer came within tracer's timeout, to
/// where it was asked from. The server is held still while each client sends its query and
/// closes its socket, then answers; tracer pairs them and says nothing, and the client's kernel
/// counts each answer as one for a closed port, which proves the client had gone.
#[test]
fn a_client_that_gives_up_before_its_answer_is_no_finding() -> Result<()> {
    const QUERIES: u16 = 3;
    let lab = Lab::new(LabConfig::healthy())?;
    let client_ns = lab.netns(Ns::Client).to_string();
    let before = udp_no_ports(&lab, Ns::Client)?;
    let (w, ()) = with_short_dns_timeout(&lab).settle(AFTER_LAST_QUERY).run(|| {
        let slow = SlowServer::stop(&lab)?;
        in_netns(&client_ns, || {
            for id in 0..QUERIES {
                let socket = std::net::UdpSocket::bind((CLIENT_IP, 0))?;
                socket.send_to(&dns_query(0x5100 + id, TEST_NAME, 1), (CLUSTER_DNS_IP, 53))?;
            }
            Ok(())
        })?;
        std::thread::sleep(Duration::from_millis(300));
        drop(slow);
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    })?;
    let closed = udp_no_ports(&lab, Ns::Client)? - before;
    ensure!(closed == u64::from(QUERIES), "{closed} of {QUERIES} answers came after their client had gone");
    for id in 0..QUERIES {
        w.reply_to_client(0x5100 + id)?;
    }
    w.expect_no_findings("an answer that came in time is healthy, whether or not its client waited")?;
    w.check_summary()
}

/// A server that answers REFUSED (dnsmasq without an upstream for the name) is named as the
/// server's failure, with its answer and the backend behind the Service address, not as a
/// fault of the path: the query got there and the answer came back.
#[test]
fn refused_answer_is_named_as_the_servers_failure() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, dig) =
        with_short_dns_timeout(&lab).settle(AFTER_LAST_QUERY).run(|| lab.dig(CLUSTER_DNS_IP, REFUSED_NAME, &[]))?;
    ensure!(dig.status.as_deref() == Some("REFUSED"), "dnsmasq should refuse {REFUSED_NAME}:\n{}", dig.output);
    let id = dig.query_id()?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;
    let client = str_at(w.query_from_client(id)?, "/src").unwrap_or_default().to_string();
    expect_str(w.reply_to_client(id)?, "/src", &format!("{CLUSTER_DNS_IP}:53"))?;

    let f = w.only_finding("dns_server_failure")?;
    expect_str(f, "/rcode", "REFUSED")?;
    expect_str(f, "/client", &client)?;
    expect_str(f, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(f, "/query/qname", &format!("{REFUSED_NAME}."))?;
    let headline = str_at(f, "/headline").unwrap_or_default();
    ensure!(
        headline.contains(&format!("backend {SERVER_IP}:53")) && headline.contains("REFUSED"),
        "the headline names the answer and the backend behind {CLUSTER_DNS_IP}: {f}"
    );
    let fix = fix_lines(f);
    ensure!(
        fix.iter().any(|line| line.starts_with(&format!("dig @{SERVER_IP} {REFUSED_NAME}"))),
        "the fix asks the server again: {f}"
    );
    ensure!(
        !fix.iter().any(|line| line.contains("iptables") || line.contains("nft ")),
        "the server answered: nothing in the path to fix: {f}"
    );
    ensure!(w.findings_of("dns_timeout").next().is_none(), "an answer is not a timeout:\n{}", w.describe());
    expect_u64(&w.summary, "/finding_counts/dns_server_failure", 1)?;
    w.check_summary()
}

/// The resolv.conf the kubelet writes into a pod of namespace `default`, with the lab's
/// ClusterIP as its nameserver.
fn pod_resolv_conf() -> String {
    format!("nameserver {CLUSTER_DNS_IP}\nsearch {}\noptions ndots:5\n", POD_SEARCH_DOMAINS.join(" "))
}

/// `getent ahostsv4 NAME` in the client pod: glibc's own resolver, with the pod's resolv.conf.
fn lookup(lab: &Lab, name: &str) -> Result<String> {
    lab.run(Ns::Client, &["getent", "ahostsv4", name])
}

/// A pod looks up a name outside the cluster with fewer dots than ndots: glibc tries it with
/// each search domain first (three NXDOMAIN answers), then the name itself. Named once per
/// client with the names tried and the time lost; the second lookup is the same finding again.
#[test]
fn a_search_list_walk_is_named_with_the_names_tried() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.resolv_conf(Ns::Client, &pod_resolv_conf())?;
    let (w, answers) = with_short_dns_timeout(&lab)
        .settle(AFTER_LAST_QUERY)
        .run(|| Ok([lookup(&lab, TEST_NAME)?, lookup(&lab, TEST_NAME)?]))?;
    ensure!(answers.iter().all(|a| a.contains(TEST_A)), "getent should find {TEST_NAME}: {answers:?}");

    let f = w.only_finding("dns_search_amplification")?;
    expect_str(f, "/search/name", TEST_NAME)?;
    let tried: Vec<&str> =
        f["search"]["tried"].as_array().context("search.tried")?.iter().filter_map(|t| t.as_str()).collect();
    let expected: Vec<String> = POD_SEARCH_DOMAINS.iter().map(|domain| format!("{TEST_NAME}.{domain}")).collect();
    ensure!(tried == expected, "the names tried, in the order asked: {tried:?}, expected {expected:?}");
    expect_str(f, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(f, "/query/qname", &format!("{TEST_NAME}."))?;
    ensure!(
        fix_lines(f).first().is_some_and(|line| line.starts_with(&format!("{TEST_NAME}. "))),
        "the first fix is the absolute name: {f}"
    );
    expect_u64(&w.summary, "/finding_counts/dns_search_amplification", 2)?;
    w.check_summary()
}

/// The healthy twins: an absolute name is asked once, and a name that exists nowhere walks the
/// search list to an NXDOMAIN, which is an answer, not a cost to report.
#[test]
fn absolute_names_and_names_that_do_not_exist_are_not_walks() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.resolv_conf(Ns::Client, &pod_resolv_conf())?;
    let (w, (absolute, absent)) = with_short_dns_timeout(&lab).settle(AFTER_LAST_QUERY).run(|| {
        let absolute = lookup(&lab, &format!("{TEST_NAME}."))?;
        let absent = lab.exec(Ns::Client, &["getent", "ahostsv4", NXDOMAIN_NAME])?;
        Ok((absolute, absent))
    })?;
    ensure!(absolute.contains(TEST_A), "getent should find {TEST_NAME}.: {absolute}");
    ensure!(!absent.status.success(), "{NXDOMAIN_NAME} should not be found: {absent:?}");
    let asked = w.find(|p| str_at(p, "/dns/qname").is_some_and(|q| q.ends_with("cluster.local."))).count();
    ensure!(asked >= 3, "the absent name walked the search list ({asked} queries seen):\n{}", w.describe());
    w.expect_no_findings("no finding for healthy lookups")
}
