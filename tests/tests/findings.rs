//! End-to-end: the findings tracer derives from pairing DNS queries with their replies (README,
//! "Findings"). Needs root and a built tracer.

use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;

#[test]
fn dns_timeout_says_where_the_query_was_last_seen() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // The backend silently ignores DNS: the query leaves the node towards it and nothing returns.
    lab.xtables(Ns::Server, "iptables", "-A INPUT -p udp --dport 53 -j DROP")?;
    let watch = lab.watch(&["--port", "53", "--output", "json", "--dns-timeout", "1"])?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    thread::sleep(Duration::from_millis(500));
    let done = watch.stop()?;
    ensure!(dig.timed_out, "dig should time out:\n{}", dig.output);
    let id = dig.id.context("dig printed no query id")?;
    let w = WatchJson::from_finished(&done)?;

    let query_in = w.find_one("the query entering the bridge", |p| {
        stage_is(p, "bridge-in", CLIENT_VETH) && dns_is(p, id, false)
    })?;
    let client = str_at(query_in, "/src").unwrap_or_default();

    let timeouts: Vec<&Value> = w.findings_of("dns_timeout").collect();
    ensure!(
        timeouts.len() == 1,
        "expected one dns_timeout finding:\n{}",
        w.describe()
    );
    let f = timeouts[0];
    expect_str(f, "/client", client)?;
    expect_str(f, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    ensure!(
        f.get("actual_source") == Some(&Value::Null),
        "actual_source should be null: {f}"
    );
    ensure!(
        u64_at(f, "/query/id") == Some(u64::from(id)),
        "finding for another query: {f}"
    );
    expect_str(f, "/last_seen/stage", "bridge-out")?;
    expect_str(f, "/last_seen/ifname", SERVER_VETH)?;
    ensure!(
        w.findings_of("conntrack_skip").next().is_none(),
        "no reply, so no conntrack_skip:\n{}",
        w.describe()
    );
    w.check_summary()
}

#[test]
fn repeated_conntrack_skip_is_printed_once_and_counted() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let watch = lab.watch(&["--port", "53", "--output", "json"])?;
    // The same client socket both times, so it is the same problem whatever "client" means.
    let source = format!("-b{CLIENT_IP}#40053");
    for _ in 0..2 {
        let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[&source])?;
        ensure!(dig.timed_out, "dig should time out:\n{}", dig.output);
    }
    let w = WatchJson::from_finished(&watch.stop()?)?;
    ensure!(
        w.findings_of("conntrack_skip").count() == 1,
        "the repeat should not print a second finding:\n{}",
        w.describe()
    );
    ensure!(
        u64_at(&w.summary, "/finding_counts/conntrack_skip") == Some(2),
        "the summary should count both occurrences: {}",
        w.summary
    );
    w.check_summary()
}

#[test]
fn text_output_shows_the_conntrack_skip_finding() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let watch = lab.watch(&["--port", "53"])?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    let done = watch.stop()?;
    ensure!(dig.timed_out, "dig should time out:\n{}", dig.output);
    ensure!(done.status.success(), "tracer failed:\n{}", done.describe());
    ensure!(
        done.stdout.contains("FINDING conntrack_skip"),
        "no conntrack_skip finding block:\n{}",
        done.describe()
    );
    ensure!(
        done.stdout.contains("bridge-nf-call-iptables=1"),
        "the finding should say how to fix it:\n{}",
        done.describe()
    );
    Ok(())
}
