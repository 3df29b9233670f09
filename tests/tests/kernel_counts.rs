//! End-to-end: on a broken node a findings-only watch must not cost more the worse things get.
//! The kernel counts each repeat of what can become a finding (the same drop at the same hook,
//! the same stray reply) and sends a record of it at most once a second; the finding is still
//! stated from the first record, with the exact count. Needs root and a built tracer; every
//! case builds its own lab, which its `Drop` removes, also when it fails.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use tracer_tests::dnsperf::parse;
use tracer_tests::lab::*;
use tracer_tests::output::{u64_at, WatchJson};
use tracer_tests::run_tracer;
use tracer_tests::scenario::Scenario;

/// Datagrams of the storm: each from a socket of its own, so from a port of its own.
const STORM: u32 = 3000;

fn capture_path(lab: &Lab) -> Result<String> {
    let capture = lab.dir().join("counted.pcapng");
    let _ = std::fs::remove_file(&capture);
    Ok(capture.to_str().context("capture path")?.to_string())
}

/// `tracer report` of the watch's capture states the same findings with the same counts: each
/// line the capture holds stands for as many occurrences as it did live.
fn report_counts_alike(w: &WatchJson, capture: &str) -> Result<()> {
    w.expect_report_agrees(capture)?;
    let out = run_tracer(&["report", capture, "--output", "json"])?;
    let report = WatchJson::parse(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(
        report.summary["finding_counts"] == w.summary["finding_counts"],
        "the report counts {} where the watch counted {}",
        report.summary["finding_counts"],
        w.summary["finding_counts"]
    );
    Ok(())
}

#[test]
fn a_storm_of_rejected_packets_is_one_finding_counted_exactly_from_few_records() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables("-I FORWARD 1 -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited")?;
    let capture = capture_path(&lab)?;
    let (w, ()) = Scenario::settled(&lab)
        .args(&["--findings-only", "--write", &capture])
        .run(|| lab.send_udp(Ns::Client, CLUSTER_DNS_IP, 53, STORM))?;
    let matched = lab.forward_rule_packets(1)?;
    ensure!(matched >= u64::from(STORM), "the REJECT matched {matched} of {STORM} datagrams");

    // One problem, however many packets: the REJECT's ICMP answers are rate-limited, so some
    // drops carry one and some none, but they are the same drop at the same hook.
    let finding = w.only_finding("netfilter_reject")?;
    ensure!(
        finding["rule"]["chain"] == "FORWARD" || finding.to_string().contains("FORWARD"),
        "the finding names the FORWARD rule:\n{finding}"
    );
    let counted = u64_at(&w.summary, "/finding_counts/netfilter_reject");
    ensure!(
        counted == Some(matched),
        "the finding's occurrences ({counted:?}) are the rule's packets ({matched}): {}",
        w.summary
    );
    ensure!(u64_at(&w.summary, "/lost") == Some(0), "nothing lost: {}", w.summary);
    // Records: the first of each key, then one a second per key at most.
    let records = u64_at(&w.summary, "/records").unwrap_or(u64::MAX);
    ensure!(records * 20 <= matched, "{records} records for {matched} drops: repeats were not counted in the kernel");
    eprintln!("{matched} drops, {records} records, counted {counted:?}; lines {}", w.packets.len());
    let lines_count: u64 = w.packets.iter().map(|line| line["occurrences"].as_u64().unwrap_or(1)).sum();
    ensure!(
        lines_count == matched,
        "the drop lines' occurrences add up to the rule's packets ({lines_count} vs {matched}):\n{}",
        w.describe()
    );
    report_counts_alike(&w, &capture)?;
    w.check_summary()
}

#[test]
fn a_storm_of_replies_without_conntrack_is_one_finding_counted_exactly() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    // The reference count: answers the bridge forwarded from the server to the client (queries
    // reach the bridge's own address and leave the node's way, never through its forward hook).
    lab.count_answers_forwarded(53)?;
    let capture = capture_path(&lab)?;
    let (w, (perf, forwarded)) = Scenario::settled(&lab).args(&["--findings-only", "--write", &capture]).run(|| {
        let done = lab.dnsperf(CLUSTER_DNS_IP, 2, 4)?.finish(Duration::from_secs(30))?;
        let perf = parse(&done.stdout).ok_or_else(|| anyhow!("no dnsperf statistics:\n{}", done.describe()))?;
        // Answers dnsperf stopped waiting for still come on a slow machine: the count is taken
        // once it stands still, while the watch still runs.
        let mut forwarded = lab.answers_forwarded()?;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(500));
            let now = lab.answers_forwarded()?;
            if now == forwarded {
                break;
            }
            forwarded = now;
        }
        Ok((perf, forwarded))
    })?;
    ensure!(perf.completed >= 100 && forwarded >= perf.completed, "dnsperf: {perf:?}; {forwarded} answers forwarded");
    // Every answer left the bridge without conntrack: one problem, counted as often.
    w.only_finding("conntrack_skip")?;
    let counted = u64_at(&w.summary, "/finding_counts/conntrack_skip");
    let records = u64_at(&w.summary, "/records").unwrap_or(u64::MAX);
    eprintln!("{perf:?}, {forwarded} answers forwarded, {records} records, counted {counted:?}");
    ensure!(
        counted == Some(forwarded),
        "the finding's occurrences ({counted:?}) are the answers the bridge forwarded ({forwarded}): {}",
        w.summary
    );
    ensure!(records * 20 <= forwarded, "{records} records for {forwarded} answers");
    report_counts_alike(&w, &capture)?;
    w.check_summary()
}

/// Rejected lookups a few a second, with pauses: each key's records come seconds apart (and
/// the REJECT's rate-limited ICMP answers split them over two keys), so a key falls quiet and
/// wakes again; each occurrence is counted once all the same.
#[test]
fn rejected_lookups_with_pauses_are_counted_exactly() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables("-I FORWARD 1 -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited")?;
    let capture = capture_path(&lab)?;
    let (w, ()) = Scenario::settled(&lab).args(&["--findings-only", "--write", &capture]).run(|| {
        for burst in 0..3 {
            if burst > 0 {
                std::thread::sleep(Duration::from_millis(2500));
            }
            for _ in 0..5 {
                let _ = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+tries=1"])?;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    })?;
    let matched = lab.forward_rule_packets(1)?;
    let counted = u64_at(&w.summary, "/finding_counts/netfilter_reject");
    ensure!(matched >= 15, "the REJECT matched {matched} queries");
    ensure!(counted == Some(matched), "counted {counted:?} of the REJECT's {matched}:\n{}", w.describe());
    report_counts_alike(&w, &capture)?;
    w.check_summary()
}
