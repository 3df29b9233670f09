//! End-to-end: the most common DNS REJECT on a cluster is kube-proxy's own, for a DNS Service
//! without ready endpoints. On a node with kube-proxy's rules for 5 000 Services (iptables mode
//! on both iptables backends, nftables mode), tracer names the rule (and in nftables mode the map
//! element that chose it), its owner and Service, and advises the endpoints, never an edit of a
//! chain kube-proxy rewrites, and no second finding for the rejected query. Each case prints how
//! long tracing took to start, how long after the drop the finding came and tracer's peak memory:
//! figures to read, not limits a test on a shared machine could hold (the bench measures cost).
//! NodeLocal DNSCache, untracked by design, gives no finding. Needs root and a built tracer; every
//! case builds its own lab, which its `Drop` removes, also when it fails.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::kube_proxy::node::*;
use tracer_tests::kube_proxy::*;
use tracer_tests::lab::*;
use tracer_tests::output::{edits_firewall, fix_lines, WatchJson};
use tracer_tests::ruleset::{with_file, write_lab_file};
use tracer_tests::scenario::Scenario;

/// A large cluster's worth of Services: tens of thousands of iptables rules, vmaps of 5 000.
const SERVICES: usize = 5000;

/// How long the finding may take: the rulesets of such a node take seconds to read, and the
/// finding must come all the same.
const FINDING_DEADLINE: Duration = Duration::from_secs(30);

tracer_tests::cases!(kube_proxy_no_endpoints_reject_is_named => {
    no_endpoints_named_iptables_nft: (Backend::Iptables { restore: "iptables-nft-restore" }),
    no_endpoints_named_iptables_legacy: (Backend::Iptables { restore: "iptables-legacy-restore" }),
    no_endpoints_named_nftables: (Backend::Nftables),
});

fn kube_proxy_no_endpoints_reject_is_named(backend: Backend) -> Result<()> {
    let lab = lab_for_kube_proxy()?;
    let cluster = Cluster::synthetic(SERVICES, KubeDns::NoEndpoints)?;
    backend.load(&lab, &cluster).with_context(|| format!("{backend:?}: loading kube-proxy's rules"))?;

    let launched = Instant::now();
    let mut watch = Scenario::new(&lab).spawn()?;
    watch.wait_until_watching()?;
    let started = launched.elapsed();

    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    ensure!(dig.refused(), "{backend:?}: kube-dns without endpoints should be refused:\n{}", dig.output);
    let dropped = Instant::now();
    let attributed = loop {
        if watch.stdout_so_far().lines().any(|line| line.contains("\"type\":\"finding\"")) {
            break dropped.elapsed();
        }
        if dropped.elapsed() > FINDING_DEADLINE {
            bail!("{backend:?}: no finding within {FINDING_DEADLINE:?}; stderr:\n{}", watch.stderr_so_far());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let peak_mib = peak_memory_mib(watch.pid())?;
    let done = watch.stop()?;
    let w = WatchJson::from_finished(&done)?;
    eprintln!(
        "{backend:?}, {} Service ports: tracing {started:.2?} after launch, the finding {attributed:.2?} after the drop, peak memory {peak_mib} MiB",
        cluster.services.len()
    );

    let finding = w.only_finding("netfilter_reject")?;
    eprintln!("{backend:?}: {}", finding["attribution"].as_str().unwrap_or_default());
    check_kube_proxy_finding(backend, finding)?;
    ensure!(
        w.findings_of("dns_timeout").next().is_none(),
        "{backend:?}: the rejected query is the reject's finding, not also a timeout:\n{}",
        w.describe()
    );
    Ok(())
}

/// The rule, its owner and Service, and advice that does not touch kube-proxy's chains.
fn check_kube_proxy_finding(backend: Backend, finding: &Value) -> Result<()> {
    let text = |field: &str| finding[field].as_str().unwrap_or_default().to_string();
    match backend {
        Backend::Iptables { .. } => {
            ensure!(
                text("table") == "filter" && text("chain") == "KUBE-SERVICES",
                "{backend:?}: the reject is kube-proxy's rule in filter/KUBE-SERVICES:\n{finding:#}"
            );
            ensure!(
                text("rule_text").contains("kube-system/kube-dns:dns has no endpoints"),
                "{backend:?}: the rule named is the no-endpoints reject:\n{finding:#}"
            );
        }
        Backend::Nftables => {
            ensure!(
                text("table") == "ip kube-proxy" && text("chain") == "reject-chain",
                "{backend:?}: the reject is kube-proxy's reject-chain:\n{finding:#}"
            );
            let element = &finding["element"];
            ensure!(
                element["key"].as_str().is_some_and(|key| key.contains("10.96.0.10 . udp . 53"))
                    && element["comment"] == "kube-system/kube-dns:dns",
                "{backend:?}: the no-endpoint-services element that chose the reject, with its comment:\n{finding:#}"
            );
        }
    }
    ensure!(
        finding["candidates"].as_array().is_some_and(Vec::is_empty),
        "{backend:?}: one rule, not candidates:\n{finding:#}"
    );
    let owner = &finding["owner"];
    ensure!(
        owner["manager"] == "kube-proxy" && owner["service"] == "kube-system/kube-dns:dns",
        "{backend:?}: owned by kube-proxy, for the Service kube-system/kube-dns:dns:\n{finding:#}"
    );
    let fix = fix_lines(finding);
    ensure!(
        fix.iter().any(|line| line.contains("endpointslices") && line.contains("kubernetes.io/service-name=kube-dns")),
        "{backend:?}: the fix shows the Service's endpoints:\n{finding:#}"
    );
    ensure!(
        !fix.iter().any(|line| edits_firewall(line)),
        "{backend:?}: never an edit of a chain kube-proxy rewrites:\n{finding:#}"
    );
    let explanation = text("explanation");
    ensure!(
        explanation.contains("no ready endpoints") && explanation.contains("kube-proxy"),
        "{backend:?}: the explanation names the cause and who wrote the rule:\n{finding:#}"
    );
    Ok(())
}

/// The peak resident set of process `pid` so far (`VmHWM`), in MiB.
fn peak_memory_mib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib / 1024)
}

tracer_tests::cases!(nodelocal_dns_is_healthy => {
    nodelocal_dns_healthy_watch: (&[]),
    nodelocal_dns_healthy_findings_only: (&["--findings-only"]),
});

/// NodeLocal DNSCache: a cache in the node's own network namespace listens on its link-local
/// address and on the kube-dns ClusterIP, and raw-table NOTRACK rules keep its traffic out of
/// conntrack (so kube-proxy's DNAT never applies). Untracked replies from the address asked are
/// healthy: no finding, whether the client asks the link-local address or the ClusterIP.
fn nodelocal_dns_is_healthy(extra: &[&str]) -> Result<()> {
    let lab = lab_for_kube_proxy()?;
    let cluster = Cluster::synthetic(20, KubeDns::Ready(vec![lab.server_ip().parse()?]))?;
    Backend::Iptables { restore: "iptables-nft-restore" }.load(&lab, &cluster)?;
    let local_ips = [NODELOCAL_DNS_IP, KUBE_DNS_IP];
    let rules = write_lab_file(&lab, "nodelocal.iptables", &nodelocal_dns_restore_text(&local_ips))?;
    lab.run(Ns::Node, &with_file(&["iptables-nft-restore", "--noflush", "-w", "10"], &rules)?)?;
    for ip in local_ips {
        lab.run(Ns::Node, &["ip", "addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
    }
    let addresses: Vec<String> = local_ips.iter().map(|ip| ip.to_string()).collect();
    let listen: Vec<&str> = addresses.iter().map(String::as_str).collect();
    let argv = dnsmasq_argv(&listen, &lab.dir().join("nodelocal.pid"), &lab.dir().join("nodelocal.log"));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let _cache = lab.spawn(Ns::Node, &argv)?;
    wait_for_cache(&lab, &addresses[0])?;

    let (w, digs) = Scenario::settled(&lab)
        .args(extra)
        .run(|| addresses.iter().map(|address| lab.dig(address, TEST_NAME, &[])).collect::<Result<Vec<_>>>())?;
    for dig in &digs {
        dig.expect_answers(&[TEST_A]).context("the node-local cache answers")?;
    }
    w.expect_no_findings("NodeLocal DNSCache answering untracked from the address asked is healthy")?;
    Ok(())
}

/// dnsmasq binds its addresses a moment after it starts.
fn wait_for_cache(lab: &Lab, address: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dig = lab.dig(address, TEST_NAME, &["+tries=1", "+time=1"])?;
        if dig.answered() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node-local cache on {address} never answered:\n{}", dig.output);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
