//! End-to-end: a DNS pod is replaced while a client keeps its source port (README,
//! `stale_conntrack_dnat`). The client's conntrack entry still DNATs its queries to the old
//! pod's address, which nobody holds; the Service's rule points at the new pod. tracer names
//! the entry, the gone backend and the current one, and the `conntrack -D` it gives makes the
//! next query reach the new pod. Its twin: the pod comes back at the same address (the rule
//! unchanged), and the unanswered query stays a timeout. Needs root and a built tracer.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

/// The client's fixed source port: a resolver that keeps its socket.
const CLIENT_PORT: u16 = 5300;
/// The replacing DNS pod's address.
const NEW_SERVER_IP: &str = "10.244.0.8";
/// tracer's timeout here, and how long the watch goes on after the last query.
const DNS_TIMEOUT: &str = "1";
const AFTER_LAST_QUERY: Duration = Duration::from_millis(2500);

fn dig_from_fixed_port(lab: &Lab) -> Result<Dig> {
    lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["-b", &format!("{CLIENT_IP}#{CLIENT_PORT}"), "+tries=1", "+time=2"])
}

/// The old pod's address goes: its queries reach nobody.
fn old_pod_gone(lab: &Lab) -> Result<()> {
    lab.run(Ns::Server, &["ip", "addr", "del", &format!("{SERVER_IP}/24"), "dev", POD_IF]).map(drop)
}

#[test]
fn a_stale_entry_is_named_with_the_gone_and_the_current_backend_and_its_fix_works() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    dig_from_fixed_port(&lab)?.expect_answers(&[TEST_A])?;

    // The DNS pod is replaced: a new one at another address, the Service's rule follows it.
    // (In the old pod's namespace, for brevity: the new address must outlive the old one,
    // which is its subnet's primary.)
    lab.run(Ns::Server, &["sysctl", "-qw", &format!("net.ipv4.conf.{POD_IF}.promote_secondaries=1")])?;
    lab.run(Ns::Server, &["ip", "addr", "add", &format!("{NEW_SERVER_IP}/24"), "dev", POD_IF])?;
    old_pod_gone(&lab)?;
    let new_dnsmasq = lab.dir().join("dnsmasq-new");
    std::fs::create_dir_all(&new_dnsmasq)?;
    let argv = dnsmasq_argv(&[NEW_SERVER_IP], &new_dnsmasq.join("pid"), &new_dnsmasq.join("log"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _new_pod = lab.spawn(Ns::Server, &argv)?;
    let rule = |op: &str, to: &str| {
        format!("-t nat {op} PREROUTING -d {CLUSTER_DNS_IP}/32 -p udp --dport 53 -j DNAT --to-destination {to}:53")
    };
    lab.iptables(&rule("-D", SERVER_IP))?;
    lab.iptables(&rule("-A", NEW_SERVER_IP))?;
    // A client from another port already gets the new pod.
    lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+tries=3", "+time=1"])?.expect_answers(&[TEST_A])?;

    let capture = lab.dir().join("stale.pcapng");
    let capture_arg = capture.to_str().context("capture path")?;
    let (w, dig) = Scenario::new(&lab)
        .args(&["--dns-timeout", DNS_TIMEOUT, "--write", capture_arg])
        .settle(AFTER_LAST_QUERY)
        .run(|| dig_from_fixed_port(&lab))?;
    ensure!(dig.timed_out, "the client held on the old pod gets no answer:\n{}", dig.output);
    // The report has not the node's rules: it takes the finding as the watch recorded it, and
    // the query is not also a timeout.
    w.expect_report_agrees(capture_arg)?;

    let f = w.only_finding("stale_conntrack_dnat")?;
    let client = format!("{CLIENT_IP}:{CLIENT_PORT}");
    expect_str(f, "/client", &client)?;
    expect_str(f, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(f, "/stale_dnat/backend", &format!("{SERVER_IP}:53"))?;
    // Made before the watch: tracer knows only that it predates the query.
    ensure!(f["stale_dnat"]["seen_for_secs"].as_f64() == Some(0.0), "no sighting before the query: {f}");
    let explanation = str_at(f, "/explanation").unwrap_or_default();
    ensure!(explanation.contains("The entry predates this query"), "what is known of its age: {explanation}");
    ensure!(
        f["stale_dnat"]["current"] == serde_json::json!([format!("{NEW_SERVER_IP}:53")]),
        "the rules' current backend: {f}"
    );
    let fix = fix_lines(f);
    let delete = fix.first().and_then(|line| line.split("    #").next()).context("a fix")?.trim().to_string();
    ensure!(
        delete
            == format!(
                "conntrack -D -p udp --orig-src {CLIENT_IP} --orig-port-src {CLIENT_PORT} --orig-dst {CLUSTER_DNS_IP} --orig-port-dst 53"
            ),
        "the fix deletes exactly this entry: {f}"
    );
    ensure!(!fix.iter().any(|line| edits_firewall(line)), "no firewall edit: {f}");

    // The fix as given: the next query from the same port is NATed by the rules again.
    let argv: Vec<&str> = delete.split_whitespace().collect();
    lab.run(Ns::Node, &argv)?;
    dig_from_fixed_port(&lab)?.expect_answers(&[TEST_A])?;
    Ok(())
}

#[test]
fn a_pod_gone_at_the_address_the_rules_still_choose_is_a_timeout_not_a_stale_entry() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    dig_from_fixed_port(&lab)?.expect_answers(&[TEST_A])?;
    old_pod_gone(&lab)?;
    let (w, dig) = Scenario::new(&lab)
        .args(&["--dns-timeout", DNS_TIMEOUT])
        .settle(AFTER_LAST_QUERY)
        .run(|| dig_from_fixed_port(&lab))?;
    ensure!(dig.timed_out, "nobody answers:\n{}", dig.output);
    w.only_finding("dns_timeout")?;
    ensure!(
        w.findings_of("stale_conntrack_dnat").next().is_none(),
        "the rules still choose that pod:\n{}",
        w.describe()
    );
    Ok(())
}
