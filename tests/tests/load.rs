//! End-to-end: tracer while a flood of DNS overflows its ring buffer (needs root and a built
//! tracer). An incident is when a node is busy: lost records must be counted and shown and must
//! never become findings, a real problem must still be named, and a stop must be served at once.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tracer_tests::dnsperf;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

/// Long enough to overflow a 1 MiB ring buffer many times over.
const FLOOD_SECS: u32 = 6;
/// How long a flood of [`FLOOD_SECS`] may take to end and print its figures.
const FLOOD_DEADLINE: Duration = Duration::from_secs(FLOOD_SECS as u64 + 30);
/// dnsperf sockets: few, so that most clients of the node (dig, below) are not flooding.
const FLOOD_CLIENTS: u32 = 2;

/// One flood at a time: two saturate this machine's two CPUs together, and each test's bounds
/// (a stop served within a second, the ring overflowing) are about tracer under its own flood.
static ONE_FLOOD: Mutex<()> = Mutex::new(());

fn one_flood() -> MutexGuard<'static, ()> {
    // A test that failed while holding it left nothing the next one depends on.
    ONE_FLOOD.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A JSON watch with a 1 MiB ring buffer, its packet lines counted, not kept.
fn small_ring(lab: &Lab) -> Scenario<'_> {
    Scenario::new(lab).args(&["--ring-buffer-mib", "1"]).count_packets()
}

fn flood_figures(done: &Finished, w: &WatchJson, perf: &dnsperf::DnsPerf) -> String {
    format!(
        "dnsperf: {} queries sent, {} completed, {} lost ({:.0} qps); tracer: {} packet lines, {} records lost, {} findings, {} unconfirmed {}",
        perf.sent,
        perf.completed,
        perf.lost,
        perf.qps,
        done.packet_lines,
        u64_at(&w.summary, "/lost").unwrap_or(0),
        w.findings.len(),
        u64_at(&w.summary, "/unconfirmed").unwrap_or(0),
        w.summary["unconfirmed_counts"],
    )
}

#[test]
fn a_flood_on_a_healthy_node_loses_records_but_states_no_finding() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, done, flooded) = small_ring(&lab)
        // Loss is the premise here: a reader fast enough for this flood (a quiet machine, a
        // flood slowed by the tests beside it) would leave nothing to lose.
        .env("TRACER_FAULT", "slow-reader")
        // Queries still unanswered in tracer's view must have had their time by now.
        .settle(Duration::from_secs(3))
        .run_finished(|| lab.dnsperf(CLUSTER_DNS_IP, FLOOD_SECS, FLOOD_CLIENTS)?.finish(FLOOD_DEADLINE))?;
    let perf = dnsperf::parse(&flooded.stdout).with_context(|| flooded.describe())?;
    let figures = flood_figures(&done, &w, &perf);
    eprintln!("flood of a healthy node: {figures}");

    // At the highest rate a few queries may die in a full queue on the way (the kernel's, not
    // tracer's: it never drops); practically all must be answered for "healthy" to hold.
    ensure!(
        perf.completed > 10_000 && perf.lost * 1_000 <= perf.sent,
        "the lab must answer (practically) every query of the flood: {figures}"
    );
    ensure!(
        u64_at(&w.summary, "/lost").unwrap_or(0) > 0,
        "a 1 MiB ring buffer must overflow under this flood: {figures}"
    );
    ensure!(
        done.stderr.contains("records lost so far"),
        "the loss must be reported while it happens:\n{}",
        done.stderr
    );
    // dnsmasq leaves a few of the flood's queries unanswered on a slow machine (dnsperf counts
    // them): those are real timeouts, last seen leaving the bridge towards the server, and no
    // more of them than the server left unanswered. Nothing else is a finding on a healthy node.
    for f in &w.findings {
        ensure!(
            server_left_unanswered(f, &perf),
            "a healthy node, whatever was lost, has no findings but the server's own silence: {figures}\n{f:#}"
        );
    }
    let timeouts = u64_at(&w.summary, "/finding_counts/dns_timeout").unwrap_or(0);
    ensure!(
        timeouts <= perf.lost,
        "{timeouts} timeouts stated, the server left only {} queries unanswered: {figures}",
        perf.lost
    );
    ensure!(u64_at(&w.summary, "/findings") == Some(w.findings.len() as u64), "the summary must agree: {}", w.summary);
    Ok(())
}

/// A `dns_timeout` of a query last seen leaving the bridge towards the DNS server, in a run in
/// which the server left queries unanswered: the server's silence, not a path fault.
fn server_left_unanswered(finding: &serde_json::Value, perf: &dnsperf::DnsPerf) -> bool {
    str_at(finding, "/kind") == Some("dns_timeout")
        && str_at(finding, "/last_seen/ifname") == Some(SERVER_VETH)
        && perf.lost > 0
}

#[test]
fn a_flood_on_a_node_that_skips_conntrack_still_names_it() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let (w, done, (flooded, digs)) = small_ring(&lab).run_finished(|| {
        let flood = lab.dnsperf(CLUSTER_DNS_IP, FLOOD_SECS, FLOOD_CLIENTS)?;
        // Another client's lookups while the flood goes on: their records are as likely to be
        // lost as any, but losses of the flood's own sockets do not hide them. A lookup is
        // named only if both of its journeys (query and reply) reached tracer, and on a slow
        // machine more than half of all records are lost under this flood: many lookups, each
        // on its own socket, make it near certain that some exchange arrives whole.
        let digs = dig_concurrently(&lab, DIGGERS, Duration::from_secs(u64::from(FLOOD_SECS) - 1))?;
        Ok((flood.finish(FLOOD_DEADLINE)?, digs))
    })?;
    let perf = dnsperf::parse(&flooded.stdout).with_context(|| flooded.describe())?;
    let figures = flood_figures(&done, &w, &perf);
    eprintln!("flood of a node that skips conntrack ({digs} digs meanwhile): {figures}");

    ensure!(
        u64_at(&w.summary, "/lost").unwrap_or(0) > 0,
        "a 1 MiB ring buffer must overflow under this flood: {figures}"
    );
    let skip = w.findings_of("conntrack_skip").next().with_context(|| {
        format!("the conntrack skip must still be named under the flood: {figures}\n{:#?}", w.findings)
    })?;
    expect_str(skip, "/bridge", BRIDGE)?;
    expect_str(skip, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(skip, "/actual_source", &format!("{SERVER_IP}:53"))?;
    for f in &w.findings {
        // The flood is more than the DNS server answers on a slow machine (dnsperf counts the
        // queries it never answered): a query that reached the server and got no reply from it
        // is a real timeout then, and says so by where it was last seen. Anything else is not.
        ensure!(
            str_at(f, "/kind") == Some("conntrack_skip") || server_left_unanswered(f, &perf),
            "only the conntrack skip is real here (every query the server answered was answered by the wrong address; it left {} unanswered): {f}",
            perf.lost
        );
    }
    Ok(())
}

/// Threads that each run one dig after another during the flood.
const DIGGERS: usize = 8;

/// Runs `diggers` loops of `dig +time=1` against the ClusterIP for `window`; returns how many
/// lookups were made. Each times out, as the wrong source answers it on this node.
fn dig_concurrently(lab: &Lab, diggers: usize, window: Duration) -> Result<u32> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let loops: Vec<_> = (0..diggers)
            .map(|_| {
                scope.spawn(|| -> Result<u32> {
                    let mut digs = 0;
                    while started.elapsed() < window {
                        lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+time=1"])?;
                        digs += 1;
                    }
                    Ok(digs)
                })
            })
            .collect();
        let mut digs = 0;
        for one in loops {
            digs += one.join().map_err(|_| anyhow::anyhow!("a dig loop panicked"))??;
        }
        Ok(digs)
    })
}

/// Watches under a flood until records are being lost, then ends the watch with `signal` (or
/// lets it end by itself, at its `--duration`): how long the end took, and what tracer printed.
fn time_to_end_while_overflowing(
    lab: &Lab,
    args: &[&str],
    signal: Option<libc::c_int>,
    deadline: Duration,
) -> Result<(Duration, WatchJson)> {
    let mut watch = small_ring(lab).args(args).start()?;
    let flood = lab.dnsperf(CLUSTER_DNS_IP, 30, FLOOD_CLIENTS)?;
    watch.wait_for_stderr("records lost so far", Duration::from_secs(20))?;
    let started = Instant::now();
    if let Some(signal) = signal {
        watch.signal(signal)?;
    }
    let done = watch.finish(deadline)?;
    let took = started.elapsed();
    drop(flood);
    ensure!(!done.timed_out, "tracer did not end within {deadline:?} under load:\n{}", done.describe_short());
    Ok((took, WatchJson::from_finished(&done)?))
}

#[test]
fn ctrl_c_is_served_within_a_second_while_the_ring_overflows() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::healthy())?;
    let (took, w) = time_to_end_while_overflowing(&lab, &[], Some(libc::SIGINT), Duration::from_secs(10))?;
    ensure!(took < Duration::from_secs(1), "SIGINT took {took:?} to end the watch under load");
    ensure!(u64_at(&w.summary, "/lost").unwrap_or(0) > 0, "the summary must count the loss: {}", w.summary);
    Ok(())
}

#[test]
fn the_duration_is_kept_within_a_second_while_the_ring_overflows() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::healthy())?;
    let (took, w) = time_to_end_while_overflowing(&lab, &["--duration", "4"], None, Duration::from_secs(15))?;
    ensure!(took < Duration::from_secs(5), "--duration 4 ended the watch only {took:?} after it was watching");
    let secs = w.summary["duration_secs"].as_f64().unwrap_or(0.0);
    ensure!((4.0..5.0).contains(&secs), "summary duration {secs} s for --duration 4");
    Ok(())
}

#[test]
fn triage_under_a_flood_of_a_healthy_node_exits_healthy() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::healthy())?;
    let (w, done) = triage_under_flood(&lab)?;
    // Triage watches findings-only: a healthy node's traffic sends nothing, so a flood of it
    // costs triage nothing and can lose it nothing.
    ensure!(
        u64_at(&w.summary, "/packets") == Some(0) && u64_at(&w.summary, "/lost") == Some(0),
        "a healthy flood must send triage nothing: {}",
        w.summary
    );
    ensure!(
        done.status.code() == Some(0) && w.findings.is_empty(),
        "a healthy node is healthy (exit {:?}): {}\n{:#?}",
        done.status.code(),
        w.summary,
        w.findings
    );
    Ok(())
}

#[test]
fn triage_under_a_flood_of_a_node_that_skips_conntrack_names_it() -> Result<()> {
    let _flood = one_flood();
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let (w, done) = triage_under_flood(&lab)?;
    eprintln!(
        "triage under a flood of stray replies: lost {}, unconfirmed {}",
        w.summary["lost"], w.summary["unconfirmed"]
    );
    ensure!(
        done.status.code() == Some(1) && w.findings.iter().any(|f| str_at(f, "/kind") == Some("conntrack_skip")),
        "every reply of the flood skips conntrack: triage must name it (exit {:?}): {}\n{:#?}",
        done.status.code(),
        w.summary,
        w.findings
    );
    Ok(())
}

/// A 6 s triage with a 1 MiB ring buffer while dnsperf floods the lab's DNS service.
fn triage_under_flood(lab: &Lab) -> Result<(WatchJson, Finished)> {
    let mut triage = lab.spawn_tracer(
        &["triage", "--duration", "6", "--ring-buffer-mib", "1", "--output", "json"],
        &[],
        StdoutMode::Capture,
    )?;
    triage.wait_until_watching()?;
    let flood = lab.dnsperf(CLUSTER_DNS_IP, 5, FLOOD_CLIENTS)?;
    let done = triage.finish(Duration::from_secs(60))?;
    drop(flood);
    ensure!(!done.timed_out, "triage did not end by itself:\n{}", done.describe());
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe())?;
    Ok((w, done))
}
