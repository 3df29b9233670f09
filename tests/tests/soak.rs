//! Soak: a watch over many minutes of churn, whose memory must stay flat (README, "Safety";
//! bench/RESULTS.md has the figures). Pods come and go on the bridge, each asking a lookup
//! from an address of its own; every 10 s a REJECT for DNS is added or removed, so rules
//! change under the watch and findings come from ever more clients. The second soak does the
//! same on a node carrying kube-proxy's rules for 5 000 Services, where each finding's rule
//! reading is of tens of thousands of rules: the figure the DaemonSet's memory request and limit
//! are taken from. Ignored by default: run them with `cargo test -p tracer-tests --test soak --
//! --ignored --nocapture`, for TRACER_SOAK_SECS seconds (600 by default; the kube-proxy mode
//! from TRACER_SOAK_BACKEND: `iptables-nft` by default, `iptables-legacy` or `nftables`).
//! Needs root and a built tracer.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tracer_tests::kube_proxy::node::{lab_for_kube_proxy, Backend};
use tracer_tests::kube_proxy::{Cluster, KubeDns};
use tracer_tests::lab::*;

/// The reject that comes and goes.
const REJECT: &str = "FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited";

/// A figure of the process's `/proc/PID/status`, in KiB: `VmRSS` now, or `VmHWM`, the
/// high-water mark (between samples, a ruleset reading may have needed more than any saw).
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

#[test]
#[ignore = "runs for minutes: cargo test -p tracer-tests --test soak -- --ignored --nocapture"]
fn memory_stays_flat_under_churning_pods_rules_and_findings() -> Result<()> {
    soak(&Lab::new(LabConfig::healthy())?, "lab")
}

#[test]
#[ignore = "runs for minutes: cargo test -p tracer-tests --test soak -- --ignored --nocapture"]
fn memory_stays_flat_on_a_node_with_kube_proxys_rules_for_5000_services() -> Result<()> {
    let backend = match std::env::var("TRACER_SOAK_BACKEND").as_deref() {
        Err(_) | Ok("iptables-nft") => Backend::Iptables { restore: "iptables-nft-restore" },
        Ok("iptables-legacy") => Backend::Iptables { restore: "iptables-legacy-restore" },
        Ok("nftables") => Backend::Nftables,
        Ok(other) => bail!("TRACER_SOAK_BACKEND={other}: say iptables-nft, iptables-legacy or nftables"),
    };
    let lab = lab_for_kube_proxy()?;
    let cluster = Cluster::synthetic(5000, KubeDns::Ready(vec![lab.server_ip().parse()?]))?;
    backend.load(&lab, &cluster).with_context(|| format!("{backend:?}: loading kube-proxy's rules"))?;
    soak(&lab, &format!("kube-proxy {backend:?}, 5 000 Services"))
}

fn soak(lab: &Lab, node: &str) -> Result<()> {
    let secs: u64 = std::env::var("TRACER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let mut watch = lab.spawn_tracer(&["watch", "--port", "53", "--output", "none"], &[], StdoutMode::Capture)?;
    watch.wait_until_watching()?;
    let pid = watch.pid();
    let started = Instant::now();
    let (mut samples, mut lookups, mut pods, mut rejecting) = (Vec::new(), 0u64, 0u64, false);
    let mut toggled = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        if toggled.elapsed() >= Duration::from_secs(10) {
            let op = if rejecting { "-D" } else { "-A" };
            lab.iptables(&format!("{op} {REJECT}"))?;
            rejecting = !rejecting;
            toggled = Instant::now();
        }
        // A new pod each round, on one of 200 addresses: a client address comes back only
        // after 199 others, with a new veth and ifindex.
        let n = pods % 200;
        let ip = format!("10.244.0.{}", 20 + n);
        let pod = LabPod::create(lab, &format!("s{n}"), &format!("veth-s{n}"), &ip, None)?;
        let _ = pod.dig()?;
        pod.delete(lab)?;
        pods += 1;
        lookups += 1;
        samples.push((started.elapsed().as_secs(), status_kib(pid, "VmRSS")?));
    }
    let high_water = status_kib(pid, "VmHWM")?;
    watch.signal(libc::SIGTERM)?;
    let done = watch.finish(STOP_GRACE)?;
    ensure!(done.status.success(), "{}", done.describe());
    let at = |fraction: f64| samples[((samples.len() - 1) as f64 * fraction) as usize].1;
    let peak = samples.iter().map(|(_, kib)| *kib).max().unwrap_or(0);
    let summary =
        done.stderr.lines().find(|l| l.starts_with("-- ") && l.contains(" packets")).unwrap_or_default().to_string();
    println!(
        "soak ({node}): {secs} s, {pods} pods, {lookups} lookups; RSS KiB at 10% {}, 50% {}, end {}, peak sampled \
         {peak}, high-water mark {high_water}; {summary}",
        at(0.1),
        at(0.5),
        at(1.0)
    );
    // The churn reached the rule readings: the REJECT was stated.
    ensure!(summary.contains("netfilter_reject"), "no netfilter_reject finding in: {summary}");
    // Flat: from a tenth of the way to the end it grows by less than a quarter.
    ensure!(at(1.0) * 4 <= at(0.1) * 5, "memory grew from {} KiB to {} KiB", at(0.1), at(1.0));
    Ok(())
}
