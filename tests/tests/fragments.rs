//! End-to-end: a DNS answer too large for one packet travels as IP fragments, and losing any
//! of them loses the answer (README, `dns_fragment_lost`). The kernel programs follow a traced
//! first fragment's later ones by IP id. Labs: a node rule that drops fragments before
//! conntrack reassembles them, and fragments lost before the node (the node discards the first
//! when the reassembly timeout runs out); the healthy twin, the same answer reassembled and
//! delivered, says nothing.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

/// About 3 000 bytes of TXT over UDP (no truncation): on 1500-byte links the server sends it
/// in three fragments.
const BIG_OVER_UDP: &[&str] = &["TXT", "+bufsize=4096", "+ignore"];

/// Drops every IPv4 fragment but the first, at a priority before conntrack's reassembly
/// (-400): a hardening rule some nodes carry.
const DROP_FRAGMENTS: &str = "table ip fragment_guard {
	chain prerouting {
		type filter hook prerouting priority -450; policy accept;
		ip frag-off & 0x1fff != 0 counter drop
	}
}
";

/// The server's egress loses its later fragments before the node sees them, as a link or a
/// middlebox on the way would.
fn server_egress_drop_fragments() -> String {
    format!(
        "table netdev lossy_link {{
	chain egress {{
		type filter hook egress device {POD_IF} priority 0; policy accept;
		ip frag-off & 0x1fff != 0 counter drop
	}}
}}
"
    )
}

fn load_nft(lab: &Lab, ns: Ns, name: &str, ruleset: &str) -> Result<()> {
    let file = lab.dir().join(name);
    std::fs::write(&file, ruleset)?;
    lab.run(ns, &["nft", "-f", file.to_str().context("non-UTF-8 path")?]).map(drop)
}

/// Watches with `--dns-timeout 1` for `after` past the traffic, writing a capture that
/// `tracer report` must read to the same findings.
fn watched<T>(lab: &Lab, after: Duration, traffic: impl FnOnce() -> Result<T>) -> Result<(WatchJson, T)> {
    let capture = lab.dir().join("fragments.pcapng");
    let capture = capture.to_str().context("capture path")?;
    let _ = std::fs::remove_file(capture);
    let (w, made) = Scenario::new(lab).args(&["--dns-timeout", "1", "--write", capture]).settle(after).run(traffic)?;
    w.expect_report_agrees(capture)?;
    Ok((w, made))
}

/// The finding is about the big TXT query `id`, its answer's size and the lost fragment.
fn about_the_answer<'a>(f: &'a Value, id: u16, dropped: &str, reason: &str) -> Result<&'a Value> {
    expect_u64(f, "/query/id", id.into())?;
    expect_str(f, "/query/qname", &format!("{BIG_TXT_NAME}."))?;
    expect_str(f, "/query/qtype", "TXT")?;
    expect_str(f, "/fragments/dropped", dropped)?;
    ensure!(f["actual_source"].is_null(), "no answer reached the client: {f}");
    ensure!(str_at(f, "/fragments/server").and_then(ip_of) == Some(SERVER_IP), "the answer came from the DNS pod: {f}");
    expect_str(f, "/fragments/drop_reason", reason)?;
    let len = u64_at(f, "/fragments/answer_len").unwrap_or(0);
    ensure!(len > 2_500, "the answer's size is that of the whole datagram, about 3 000 bytes: {f}");
    ensure!(
        fix_lines(f).iter().any(|line| line.contains("bufsize 1232")),
        "the fix keeps answers within one packet: {f}"
    );
    Ok(f)
}

#[test]
fn a_rule_that_drops_fragments_loses_every_large_answer() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    load_nft(&lab, Ns::Node, "guard.nft", DROP_FRAGMENTS)?;
    let (w, (big, small)) = watched(&lab, Duration::from_millis(1500), || {
        let big = lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, BIG_OVER_UDP)?;
        Ok((big, lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?))
    })?;
    big.expect_timed_out()?;
    small.expect_answers(&[TEST_A])?;
    let id = big.query_id()?;
    // The later fragments were traced by their first one's ports, and their drop seen.
    let server = format!("{}:53", lab.server_ip());
    w.find_one("a later fragment of the answer dropped", |p| {
        str_at(p, "/stage") == Some("dropped")
            && str_at(p, "/fragment") == Some("later")
            && str_at(p, "/src") == Some(server.as_str())
    })?;

    let f = about_the_answer(w.only_finding("dns_fragment_lost")?, id, "later", "NETFILTER_DROP")?;
    eprintln!("finding: {f}");
    expect_str(f, "/fragments/hook", "PRE_ROUTING")?;
    let counted = lab.run(Ns::Node, &["nft", "list", "table", "ip", "fragment_guard"])?;
    ensure!(!counted.contains("packets 0 "), "the rule really dropped them:\n{counted}");
    w.check_summary()?;

    // The healthy twin: without the rule the same answer is reassembled and delivered.
    lab.run(Ns::Node, &["nft", "delete", "table", "ip", "fragment_guard"])?;
    let (w, big) = watched(&lab, Duration::from_millis(1500), || lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, BIG_OVER_UDP))?;
    big.expect_answered()?;
    let last_string = big_txt_strings().pop().unwrap_or_default();
    ensure!(big.output.contains(&last_string), "the whole answer arrived:\n{}", big.output);
    w.reply_to_client(big.query_id()?)?;
    w.expect_no_findings("an answer in fragments that arrives whole is healthy")
}

#[test]
fn fragments_lost_before_the_node_end_in_a_reassembly_timeout() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    load_nft(&lab, Ns::Server, "lossy.nft", &server_egress_drop_fragments())?;
    // The node gives up on an incomplete datagram after 1 s instead of 30.
    lab.run(Ns::Node, &["sysctl", "-qw", "net.ipv4.ipfrag_time=1"])?;
    let (w, big) = watched(&lab, Duration::from_millis(2500), || lab.dig(CLUSTER_DNS_IP, BIG_TXT_NAME, BIG_OVER_UDP))?;
    big.expect_timed_out()?;
    let id = big.query_id()?;
    w.reply_from_server(id)?;

    let f = about_the_answer(w.only_finding("dns_fragment_lost")?, id, "first", "FRAG_REASM_TIMEOUT")?;
    eprintln!("finding: {f}");
    let explanation = str_at(f, "/explanation").unwrap_or_default();
    ensure!(explanation.contains("the others never did"), "the explanation says the rest never came: {explanation}");
    w.check_summary()
}
