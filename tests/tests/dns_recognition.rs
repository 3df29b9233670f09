//! End-to-end: what tracer takes for DNS, and which replies it expects (needs root and a built
//! tracer). Payloads are DNS only on DNS ports and with a plausible header; a resolver that asks
//! several nameservers at once accepts an answer from any of them; an answer too large for one
//! IPv6 packet arrives in fragments and is still traced and paired.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::output::*;
use tracer_tests::packets::{dns_id, dns_query};
use tracer_tests::scenario::Scenario;

/// A watch of `--duration 5`: longer than the DNS timeout (2 s) after the traffic, so a query
/// tracer wrongly believed in would have timed out.
fn five_seconds(lab: &Lab) -> Scenario<'_> {
    Scenario::new(lab).args(&["--duration", "5"]).ends_by_itself_within(Duration::from_secs(20))
}

fn dst_port(p: &Value) -> Option<u16> {
    str_at(p, "/dst").and_then(port_of)
}

#[test]
fn all_ports_with_http_and_statsd_traffic_gives_no_dns_findings() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, ()) = five_seconds(&lab).port(0).run(|| traffic_that_is_not_dns(&lab))?;
    for port in [8125, 8080] {
        ensure!(
            w.find(|p| dst_port(p) == Some(port)).next().is_some(),
            "no packet to port {port} was traced:\n{}",
            w.describe()
        );
    }
    ensure!(
        w.find(|p| dst_port(p) == Some(53)).next().is_some(),
        "the text sent to port 53 was not traced:\n{}",
        w.describe()
    );
    for p in w.find(|p| p["dns"].is_object()) {
        ensure!(false, "a payload that is not DNS was read as DNS: {p}");
    }
    w.expect_no_findings("HTTP and statsd traffic are no DNS problem")
}

/// statsd datagrams, text to the DNS port and an HTTP exchange from the client to the server.
fn traffic_that_is_not_dns(lab: &Lab) -> Result<()> {
    // statsd metrics (UDP 8125), nobody listening: the node answers port unreachable.
    let statsd: SocketAddr = format!("{SERVER_IP}:8125").parse()?;
    // Text on the DNS port itself, as a misdirected client would send: port 53, not DNS.
    let dns_port: SocketAddr = format!("{SERVER_IP}:53").parse()?;
    in_netns(lab.netns(Ns::Client), || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..20 {
            socket.send_to(format!("web.requests.count:{i}|c|#pod:client").as_bytes(), statsd)?;
        }
        socket.send_to(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", dns_port)?;
        Ok(())
    })?;

    // An HTTP exchange over TCP 8080.
    let http: SocketAddr = format!("{SERVER_IP}:8080").parse()?;
    let listener = in_netns(lab.netns(Ns::Server), || Ok(TcpListener::bind(http)?))?;
    let served = thread::scope(|s| -> Result<String> {
        let server = s.spawn(move || -> Result<()> {
            let (mut conn, _) = listener.accept()?;
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request)?;
            ensure!(n > 0, "empty request");
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello there")?;
            Ok(())
        });
        let reply = in_netns(lab.netns(Ns::Client), || {
            let mut conn = TcpStream::connect_timeout(&http, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: server\r\nUser-Agent: probe\r\n\r\n")?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok(reply)
        })?;
        server.join().map_err(|_| anyhow::anyhow!("the HTTP server thread panicked"))??;
        Ok(reply)
    })?;
    ensure!(served.ends_with("hello there"), "the HTTP exchange failed: {served:?}");
    Ok(())
}

#[test]
fn a_client_asking_two_nameservers_accepts_either_answer() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // Like musl: one socket, one query id, every nameserver at once. The first one listed (the
    // node's bridge address) runs no DNS server; the cluster DNS answers.
    let id = 0x4d55;
    let first: SocketAddr = format!("{BRIDGE_IP}:53").parse()?;
    let second: SocketAddr = format!("{CLUSTER_DNS_IP}:53").parse()?;
    let (w, (from, answer)) = five_seconds(&lab).run(|| {
        in_netns(lab.netns(Ns::Client), || {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(3)))?;
            let query = dns_query(id, TEST_NAME, 1);
            socket.send_to(&query, first)?;
            socket.send_to(&query, second)?;
            let mut buf = [0u8; 512];
            let (n, from) = socket.recv_from(&mut buf).context("no answer from either nameserver")?;
            Ok((from, buf[..n].to_vec()))
        })
    })?;
    ensure!(from == second && dns_id(&answer) == Some(id), "the answer came from {from}");

    ensure!(
        w.find(|p| str_at(p, "/dst") == Some(&first.to_string()) && dns_is(p, id, false)).next().is_some(),
        "the query to the first nameserver must have been traced:\n{}",
        w.describe()
    );
    // The answer must have been traced on its way to the client.
    w.reply_to_client(id)?;
    w.expect_no_findings("an answer from a nameserver the client asked is expected")
}

#[test]
fn an_ipv6_answer_in_fragments_is_traced_and_paired() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // About 3 000 bytes of TXT over UDP: on 1500-byte links the server sends it in fragments.
    let (w, dig) =
        five_seconds(&lab).run(|| lab.dig(CLUSTER_DNS_IP6, BIG_TXT_NAME, &["TXT", "+bufsize=4096", "+ignore"]))?;
    dig.expect_answered()?;
    let last_string = big_txt_strings().pop().unwrap_or_default();
    ensure!(dig.output.contains(&last_string), "the answer arrived incomplete:\n{}", dig.output);
    let id = dig.query_id()?;

    // The answer's first fragment, which holds the DNS header.
    let answer_in = w.reply_from_server(id)?;
    ensure!(u64_at(answer_in, "/ip_version") == Some(6), "an IPv6 answer: {answer_in}");
    // The first fragment holds only part of the datagram.
    let len = u64_at(answer_in, "/len").unwrap_or(0);
    ensure!(
        len <= 1500,
        "the first fragment is at most the link's MTU, not the {len} bytes of a whole answer: {answer_in}"
    );
    w.reply_to_client(id)?;
    w.expect_no_findings("the answer was paired with its query, no timeout")
}
