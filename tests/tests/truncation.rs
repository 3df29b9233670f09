//! End-to-end: answers too large for UDP come back truncated (TC) and the client asks again
//! over TCP (README, `dns_tcp_retry_failed`). Each way that retry fails on a real node is
//! named: a DNS Service without its TCP port, a rule that allows DNS over UDP only, a TCP
//! port that leads nowhere; and a retry that works stays quiet.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

/// dig without EDNS: dnsmasq cuts the big TXT answer at 512 bytes and sets TC; dig then asks
/// over TCP, as every stub resolver does.
const NO_EDNS: &[&str] = &["TXT", "+noedns"];

/// Watches long enough after the traffic for the retry's timeout (1 s) to pass, writing a
/// capture; `tracer report` of it must find what the watch found.
fn watched<T>(lab: &Lab, traffic: impl FnOnce() -> Result<T>) -> Result<(WatchJson, T)> {
    let capture = lab.dir().join("truncation.pcapng");
    let capture = capture.to_str().context("capture path")?;
    let _ = std::fs::remove_file(capture);
    let (w, made) = Scenario::new(lab)
        .args(&["--dns-timeout", "1", "--write", capture])
        .settle(Duration::from_millis(1800))
        .run(traffic)?;
    w.expect_report_agrees(capture)?;
    Ok((w, made))
}

/// The Service's TCP port, as kube-proxy writes it for a `dns-tcp` port (`to`: where it leads).
fn add_tcp_port(lab: &Lab, to: &str) -> Result<()> {
    lab.iptables(&format!(
        "-t nat -A PREROUTING -d {CLUSTER_DNS_IP}/32 -p tcp --dport 53 -j DNAT --to-destination {to}"
    ))
}

/// The UDP query's truncated answer reached the client, flagged as such.
fn truncated_answer_reached_the_client(w: &WatchJson, id: u16) -> Result<()> {
    let reply = w.reply_to_client(id)?;
    ensure!(bool_at(reply, "/dns/truncated") == Some(true), "the answer should be flagged truncated: {reply}");
    ensure!(str_at(reply, "/proto") == Some("udp"), "the truncated answer came over UDP: {reply}");
    Ok(())
}

/// The finding is about the big TXT query `id` and its retry over TCP from the client.
fn about_the_retry<'a>(f: &'a Value, id: u16, outcome: &str) -> Result<&'a Value> {
    expect_u64(f, "/query/id", id.into())?;
    expect_str(f, "/query/qname", &format!("{BIG_TXT_NAME}."))?;
    expect_str(f, "/query/qtype", "TXT")?;
    expect_str(f, "/tcp_retry/outcome", outcome)?;
    let retry_client = str_at(f, "/tcp_retry/client").unwrap_or_default();
    ensure!(ip_of(retry_client) == Some(CLIENT_IP), "the retry comes from the client: {f}");
    ensure!(str_at(f, "/client") != Some(retry_client), "the retry is a socket of its own (TCP): {f}");
    let explanation = str_at(f, "/explanation").unwrap_or_default();
    ensure!(explanation.contains("truncated (TC)"), "the explanation says why TCP was used: {explanation}");
    Ok(f)
}

#[test]
fn a_dns_service_without_its_tcp_port_fails_every_truncated_answer() -> Result<()> {
    // The lab's Service DNATs UDP port 53 only, as a DNS Service with no `dns-tcp` port.
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, (big, small)) = watched(&lab, || {
        let big = lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, NO_EDNS)?;
        Ok((big, lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?))
    })?;
    ensure!(!big.answered() && big.output.contains("Truncated, retrying in TCP mode"), "{}", big.output);
    small.expect_answers(&[TEST_A])?;
    let id = big.query_id()?;
    truncated_answer_reached_the_client(&w, id)?;

    let f = about_the_retry(w.only_finding("dns_tcp_retry_failed")?, id, "dropped")?;
    eprintln!("finding: {f}");
    expect_str(f, "/tcp_retry/drop_reason", "IP_INNOROUTES")?;
    expect_str(f, "/tcp_retry/server", &format!("{CLUSTER_DNS_IP}:53"))?;
    let headline = str_at(f, "/headline").unwrap_or_default();
    ensure!(headline.contains("DNATed for UDP but not for TCP"), "the headline names the cause: {headline}");
    ensure!(fix_lines(f).iter().any(|l| l.contains("protocol: TCP")), "the fix adds the TCP port to the Service: {f}");
    w.check_summary()?;

    // The fix: the Service gets its TCP port. The same lookup is then answered over TCP, quietly.
    add_tcp_port(&lab, &format!("{}:53", lab.server_ip()))?;
    let (w, big) = watched(&lab, || lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, NO_EDNS))?;
    big.expect_answered()?;
    let last_string = big_txt_strings().pop().unwrap_or_default();
    ensure!(big.output.contains(&last_string), "the whole answer came over TCP:\n{}", big.output);
    truncated_answer_reached_the_client(&w, big.query_id()?)?;
    w.find_one("the answer over TCP leaving the bridge to the client", |p| {
        stage_is(p, "bridge-out", CLIENT_VETH)
            && str_at(p, "/proto") == Some("tcp")
            && str_at(p, "/src") == Some(&format!("{CLUSTER_DNS_IP}:53"))
            && u64_at(p, "/len").is_some_and(|len| len > 512)
    })?;
    dns_over_tcp_read_where_the_kernel_allows(&w)?;
    w.expect_no_findings("a truncated answer retried over TCP and answered is healthy")
}

/// The query and answer over TCP between pods travel in page fragments (veth keeps TCP
/// payloads there): where the kernel lets tracer find a page's bytes, both are decoded;
/// where it does not, the blind spot says so and no TCP segment claims a message.
fn dns_over_tcp_read_where_the_kernel_allows(w: &WatchJson) -> Result<()> {
    let over_tcp_about = |p: &Value, qr: bool| {
        str_at(p, "/proto") == Some("tcp")
            && bool_at(p, "/dns/qr") == Some(qr)
            && str_at(p, "/dns/qname") == Some(&format!("{BIG_TXT_NAME}."))
    };
    let spots: Vec<&str> = w.summary["blind_spots"]
        .as_array()
        .context("summary blind_spots")?
        .iter()
        .filter_map(|spot| str_at(spot, "/missing"))
        .collect();
    if tracer_tests::kernel_reads_page_fragments() {
        ensure!(!spots.contains(&"page_fragment_payloads"), "this kernel gives page bytes: {}", w.summary);
        let query = w.find_one("the query over TCP, decoded", |p| {
            stage_is(p, "bridge-in", CLIENT_VETH) && over_tcp_about(p, false)
        })?;
        expect_str(query, "/dns/qtype", "TXT")?;
        let answer = w.find_one("the answer over TCP, decoded", |p| {
            stage_is(p, "bridge-out", CLIENT_VETH) && over_tcp_about(p, true)
        })?;
        ensure!(bool_at(answer, "/dns/truncated") != Some(true), "over TCP the answer is whole: {answer}");
        ensure!(u64_at(answer, "/dns/answers") == Some(1), "its TXT record is counted: {answer}");
        ensure!(u64_at(answer, "/dns/id") == u64_at(query, "/dns/id"), "one exchange: {query} {answer}");
    } else {
        ensure!(spots.contains(&"page_fragment_payloads"), "the blind spot is stated: {}", w.summary);
        let claimed = w.find(|p| str_at(p, "/proto") == Some("tcp") && !p["dns"].is_null()).count();
        ensure!(claimed == 0, "no TCP segment read without its payload claims a message:\n{}", w.describe());
    }
    Ok(())
}

#[test]
fn a_rule_that_allows_dns_over_udp_only_is_named_with_the_query_it_stops() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    add_tcp_port(&lab, &format!("{}:53", lab.server_ip()))?;
    // What a firewall or NetworkPolicy that opens `udp/53` only amounts to.
    lab.iptables("-A FORWARD -p tcp --dport 53 -j REJECT --reject-with tcp-reset")?;
    let (w, (big, small)) = watched(&lab, || {
        let big = lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, NO_EDNS)?;
        Ok((big, lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?))
    })?;
    ensure!(!big.answered(), "{}", big.output);
    small.expect_answers(&[TEST_A])?;
    let id = big.query_id()?;
    truncated_answer_reached_the_client(&w, id)?;

    // The rule is the cause, and its finding says which query it stopped: one finding, not two.
    let f = w.only_finding("netfilter_reject")?;
    eprintln!("finding: {f}");
    expect_str(f, "/chain", "FORWARD")?;
    expect_u64(f, "/rule", 1)?;
    expect_str(f, "/proto", "tcp")?;
    expect_u64(f, "/retry_of/id", id.into())?;
    expect_str(f, "/retry_of/qname", &format!("{BIG_TXT_NAME}."))?;
    let explanation = str_at(f, "/explanation").unwrap_or_default();
    ensure!(explanation.contains("retry over TCP of TXT"), "the explanation names the retry: {explanation}");
    // The REJECT answered with a TCP reset, which the client saw at once: not a silent drop.
    ensure!(
        explanation.contains("answered the sender with a TCP reset")
            && !explanation.contains("Nothing tells the sender"),
        "the explanation says what the client was told: {explanation}"
    );
    let attribution = str_at(f, "/attribution").unwrap_or_default();
    ensure!(attribution.contains("rejects with tcp-reset"), "the rule is named by the reset it sent: {attribution}");
    w.check_summary()
}

#[test]
fn a_tcp_port_that_leads_nowhere_resets_the_retry() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // The Service's TCP port points at a target port nothing listens on: the server's kernel
    // answers the SYN with a reset.
    let nowhere = format!("{}:5353", lab.server_ip());
    add_tcp_port(&lab, &nowhere)?;
    let (w, big) = watched(&lab, || lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, NO_EDNS))?;
    ensure!(!big.answered(), "{}", big.output);
    let id = big.query_id()?;
    truncated_answer_reached_the_client(&w, id)?;

    let f = about_the_retry(w.only_finding("dns_tcp_retry_failed")?, id, "reset")?;
    eprintln!("finding: {f}");
    let headline = str_at(f, "/headline").unwrap_or_default();
    ensure!(headline.contains("reset"), "the headline says the connection was reset: {headline}");
    w.check_summary()
}
