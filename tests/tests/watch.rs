//! End-to-end: the real tracer binary watching DNS cross the lab's bridge (needs root and a built
//! tracer, see `tracer_tests::tracer_bin`). Expectations follow the README's contract.

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::process::output_within;
use tracer_tests::scenario::Scenario;
use tracer_tests::unprivileged::{as_nobody, copy_of_tracer};

/// Long enough for a dig to finish well inside it, short enough to keep the suite fast.
const WATCH_SECS: u64 = 3;

#[test]
fn healthy_node_shows_query_dnat_and_reverse_natted_reply() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let secs = WATCH_SECS.to_string();
    let (w, done, (started, dig)) = Scenario::new(&lab)
        .args(&["--duration", &secs])
        .ends_by_itself_within(Duration::from_secs(WATCH_SECS + 15))
        .run_finished(|| Ok((Instant::now(), lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?)))?;
    ensure!(!done.timed_out, "tracer did not stop by itself after --duration:\n{}", done.describe());
    ensure!(
        started.elapsed() >= Duration::from_secs(WATCH_SECS - 1),
        "tracer stopped after {:?}, before --duration {WATCH_SECS}",
        started.elapsed()
    );
    dig.expect_answers(&[TEST_A])?;
    let id = dig.query_id()?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    let query_in = w.query_from_client(id)?;
    let client = str_at(query_in, "/src").unwrap_or_default().to_string();
    ensure!(ip_of(&client) == Some(CLIENT_IP), "query source {client:?} is not the client");
    let client_port = port_of(&client).context("query source has no port")?;
    expect_str(query_in, "/dst", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(query_in, "/dns/qname", "example.test.")?;
    expect_str(query_in, "/proto", "udp")?;
    expect_str(query_in, "/bridge", BRIDGE)?;
    expect_u64(query_in, "/ip_version", 4)?;

    // With bridge-nf-call-iptables=1 the bridge itself runs the frame through PREROUTING, so the
    // DNATed query is usually forwarded straight to the server's port. Only while the node still
    // has to resolve the server's MAC (the first query of a lab) does it leave through the node's
    // own stack (from-host) first. Either way it must leave on the server's port DNATed.
    let towards_server: Vec<&Value> = w
        .find(|p| (stage_is(p, "from-host", BRIDGE) || stage_is(p, "bridge-out", SERVER_VETH)) && dns_is(p, id, false))
        .collect();
    ensure!(
        towards_server.iter().any(|p| stage_is(p, "bridge-out", SERVER_VETH)),
        "no record of the DNATed query leaving on {SERVER_VETH}:\n{}",
        w.describe()
    );
    for q in towards_server {
        expect_str(q, "/dst", &format!("{SERVER_IP}:53"))?;
        expect_str(q, "/src", &client)?;
        ensure!(q["conntrack"].is_object(), "no conntrack on the DNATed query: {q}");
        let nat = str_at(q, "/conntrack/nat").unwrap_or_default();
        ensure!(
            nat.starts_with("dnat") && nat.contains(&format!("{SERVER_IP}:53")),
            "conntrack nat on the DNATed query: {q}"
        );
    }

    let reply_in = w.reply_from_server(id)?;
    expect_str(reply_in, "/src", &format!("{SERVER_IP}:53"))?;

    let reply_out = w.reply_to_client(id)?;
    expect_str(reply_out, "/dst", &format!("{CLIENT_IP}:{client_port}"))?;
    expect_str(reply_out, "/src", &format!("{CLUSTER_DNS_IP}:53"))?;
    ensure!(reply_out["conntrack"].is_object(), "no conntrack on the reply: {reply_out}");
    ensure!(str_at(reply_out, "/conntrack/nat").is_some(), "no nat on the reply's conntrack: {reply_out}");
    expect_str(reply_out, "/dns/first_answer", TEST_A)?;

    w.expect_no_findings("a healthy node should produce no findings")?;
    w.check_summary()
}

#[test]
fn bridge_nf_call_iptables_off_shows_reply_from_pod_without_conntrack() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let (w, dig) = Scenario::new(&lab).run(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_timed_out().context("dig should time out on this node")?;
    let id = dig.query_id()?;
    w.check_netns(lab.netns_inode(Ns::Node)?)?;

    let query_in = w.query_from_client(id)?;
    let client = str_at(query_in, "/src").unwrap_or_default();

    // The bridge does not pass the frame to iptables, so the query (addressed to the bridge's MAC,
    // the client's gateway) goes up to the node, is DNATed on its routing path and comes back.
    let up =
        w.find_one("the query going up to the node", |p| stage_is(p, "to-host", BRIDGE) && dns_is(p, id, false))?;
    expect_str(up, "/dst", &format!("{CLUSTER_DNS_IP}:53"))?;
    for (stage, dev) in [("from-host", BRIDGE), ("bridge-out", SERVER_VETH)] {
        let q = w.find_one(&format!("the DNATed query at {stage} on {dev}"), |p| {
            stage_is(p, stage, dev) && dns_is(p, id, false)
        })?;
        expect_str(q, "/dst", &format!("{SERVER_IP}:53"))?;
        expect_str(q, "/src", client)?;
        ensure!(
            str_at(q, "/conntrack/nat").is_some_and(|nat| nat.starts_with("dnat")),
            "no DNAT conntrack entry on the query at {stage}: {q}"
        );
    }

    let reply_out = w.reply_to_client(id)?;
    expect_reply_bridged_without_conntrack(reply_out, &format!("{SERVER_IP}:53"), client)?;

    let f = w.one_finding("conntrack_skip")?;
    expect_bridged_reply_finding(f, id, client, &format!("{CLUSTER_DNS_IP}:53"), &format!("{SERVER_IP}:53"))?;
    expect_str(f, "/query/qname", "example.test.")?;
    expect_str(f, "/sysctls/net.bridge.bridge-nf-call-iptables", "0")?;
    expect_text(f, "/headline")?;
    ensure!(
        fix_lines(f).iter().any(|c| c.contains("bridge-nf-call-iptables=1")),
        "the fix should set bridge-nf-call-iptables=1: {f}"
    );
    expect_u64(&w.summary, "/finding_counts/conntrack_skip", 1)?;
    w.check_summary()
}

#[test]
fn other_ports_produce_no_records() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, (other, control)) = Scenario::new(&lab).run(|| {
        lab.send_udp(Ns::Client, SERVER_IP, 5353, 5)?;
        // A real DNS message too, so only the port can tell it apart from the control query.
        let other = lab.dig(SERVER_IP, TEST_NAME, &["-p", "5353", "+time=1"])?;
        Ok((other, lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?))
    })?;
    ensure!(!other.answered(), "nothing listens on 5353, yet:\n{}", other.output);
    control.expect_answered().context("the control query")?;
    w.query_from_client(control.query_id()?)?;
    for p in &w.packets {
        let ports: Vec<Option<u16>> = ["/src", "/dst"].iter().map(|k| str_at(p, k).and_then(port_of)).collect();
        ensure!(!ports.contains(&Some(5353)), "record for port 5353 while watching 53: {p}");
        ensure!(ports.contains(&Some(53)), "record without port 53 while watching 53: {p}");
    }
    w.check_summary()
}

#[test]
fn port_zero_traces_all_ports() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, ()) = Scenario::settled(&lab).port(0).run(|| lab.send_udp(Ns::Client, SERVER_IP, 5353, 3))?;
    w.find_one("a datagram to port 5353", |p| {
        stage_is(p, "bridge-in", CLIENT_VETH) && str_at(p, "/dst") == Some("10.244.0.7:5353")
    })?;
    w.check_summary()
}

fn stops_on_signal(signal: libc::c_int) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, done, dig) =
        Scenario::settled(&lab).stop_with(signal).run_finished(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_answered()?;
    ensure!(!done.timed_out, "tracer ignored signal {signal}:\n{}", done.describe());
    ensure!(!w.packets.is_empty(), "no packets recorded for an answered query:\n{}", done.describe());
    ensure!(w.summary["duration_secs"].is_number(), "summary without duration_secs: {}", w.summary);
    w.check_summary()
}

tracer_tests::cases!(stops_on_signal => {
    sigterm_stops_watch_with_summary: (libc::SIGTERM),
    sigint_stops_watch_with_summary: (libc::SIGINT),
});

#[test]
fn unprivileged_watch_fails_with_one_line() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tracer-unpriv-{}", std::process::id()));
    let result = (|| {
        let argv = as_nobody(&[], &copy_of_tracer(&dir)?, &["watch", "--port", "53"])?;
        // If it wrongly starts watching it would never exit by itself.
        output_within(Command::new(&argv[0]).args(&argv[1..]).current_dir("/"), Duration::from_secs(20))
    })();
    let _ = fs::remove_dir_all(&dir);
    let out = result?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    ensure!(
        out.status.code().is_some_and(|c| c != 0),
        "tracer should fail without privileges; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "expected exactly one line on stderr, got:\n{stderr}");
    let line = lines[0];
    ensure!(line.contains("root") || line.contains("CAP_BPF"), "the error should mention root or CAP_BPF: {line}");
    Ok(())
}

#[test]
fn text_output_names_port_stage_and_query() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (done, dig) = Scenario::settled(&lab).run_text(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    dig.expect_answered()?;
    done.expect_success()?;
    done.expect_line_with(&[CLIENT_VETH, "bridge-in", "example.test"], "the query entering the bridge")
}

#[test]
fn ipv6_query_and_reply_are_traced() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, dig) = Scenario::settled(&lab).run(|| lab.dig(CLUSTER_DNS_IP6, TEST_NAME, &["AAAA"]))?;
    dig.expect_answers(&[TEST_AAAA])?;
    let id = dig.query_id()?;

    let query_in = w.query_from_client(id)?;
    expect_u64(query_in, "/ip_version", 6)?;
    let client = str_at(query_in, "/src").unwrap_or_default();
    ensure!(ip_of(client) == Some(CLIENT_IP6), "query source {client:?} is not the client");
    ensure!(client.starts_with('['), "IPv6 address without brackets: {client}");
    expect_str(query_in, "/dst", &format!("[{CLUSTER_DNS_IP6}]:53"))?;
    expect_str(query_in, "/dns/qtype", "AAAA")?;

    let reply_out = w.reply_to_client(id)?;
    expect_str(reply_out, "/src", &format!("[{CLUSTER_DNS_IP6}]:53"))?;
    expect_str(reply_out, "/dst", client)?;
    expect_str(reply_out, "/dns/first_answer", TEST_AAAA)?;
    ensure!(reply_out["conntrack"].is_object(), "no conntrack on the reply: {reply_out}");
    w.check_summary()
}

#[test]
fn tcp_queries_are_traced() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, dig) = Scenario::settled(&lab).run(|| lab.dig(SERVER_IP, TEST_NAME, &["+tcp"]))?;
    dig.expect_answered().context("dig +tcp")?;
    w.find_one("a TCP segment to the server's port 53", |p| {
        stage_is(p, "bridge-in", CLIENT_VETH)
            && str_at(p, "/proto") == Some("tcp")
            && str_at(p, "/dst") == Some("10.244.0.7:53")
    })?;
    w.find_one("a TCP segment from the server's port 53", |p| {
        stage_is(p, "bridge-out", CLIENT_VETH)
            && str_at(p, "/proto") == Some("tcp")
            && str_at(p, "/src") == Some("10.244.0.7:53")
    })?;
    w.check_summary()
}

#[test]
fn traffic_of_other_namespaces_is_not_traced() -> Result<()> {
    let watched = Lab::new(LabConfig::healthy())?;
    let other = Lab::new(LabConfig::healthy())?;
    let (w, (elsewhere, here)) = Scenario::settled(&watched).run(|| {
        let elsewhere = other.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
        Ok((elsewhere, watched.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?))
    })?;
    ensure!(elsewhere.answered() && here.answered(), "queries not answered");
    let (here_id, elsewhere_id) = (here.id.context("no query id")?, elsewhere.id.context("no query id")?);
    w.check_netns(watched.netns_inode(Ns::Node)?)?;
    w.find_one("the watched lab's query", |p| dns_is(p, here_id, false))?;
    // Both labs use the same addresses: only the DNS id tells the queries apart.
    if here_id != elsewhere_id {
        ensure!(
            w.find(|p| u64_at(p, "/dns/id") == Some(u64::from(elsewhere_id))).next().is_none(),
            "the other lab's query was traced:\n{}",
            w.describe()
        );
    }
    w.check_summary()
}
