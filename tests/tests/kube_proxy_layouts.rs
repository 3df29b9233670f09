//! kube-proxy's rule layouts ([`tracer_tests::kube_proxy`]) as the real tools take them: 5 000
//! Services loaded by iptables-restore (nf_tables and legacy) and by nft, read back by the tools'
//! own listings, and a small cluster in the lab whose DNS Service rejects while it has no
//! endpoints and answers once it has one. Needs root; every case builds its own lab, which its
//! `Drop` removes, also when the case fails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::kube_proxy::node::*;
use tracer_tests::kube_proxy::*;
use tracer_tests::lab::*;
use tracer_tests::ruleset::{rule_lines, saved_table, with_file, write_lab_file};

/// A large cluster's worth of Services: tens of thousands of iptables rules.
const SERVICES: usize = 5000;

/// Two cores are shared by every case running at once: timed loads take turns, so that the
/// printed times are the load's own and not those of two loads competing.
static TIMED: Mutex<()> = Mutex::new(());

/// Runs `argv` in the lab's node namespace and reports how long it took, taking turns with the
/// other timed commands.
fn timed(lab: &Lab, argv: &[&str]) -> Result<(String, Duration)> {
    let _turn = TIMED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = Instant::now();
    let out = lab.run(Ns::Node, argv)?;
    Ok((out, start.elapsed()))
}

tracer_tests::cases!(iptables_layout_loads_at_scale => {
    iptables_nft_loads_5000_services: ("iptables-nft-restore", "iptables-nft-save"),
    iptables_legacy_loads_5000_services: ("iptables-legacy-restore", "iptables-legacy-save"),
});

fn iptables_layout_loads_at_scale(restore: &str, save: &str) -> Result<()> {
    let cluster = Cluster::synthetic(SERVICES, KubeDns::NoEndpoints)?;
    let text = iptables_restore_text(&cluster);
    let lab = Lab::new(LabConfig::healthy())?;
    let file = write_lab_file(&lab, "kube-proxy.iptables", &text)?;

    let (_, took) = timed(&lab, &with_file(&[restore, "-w", "10"], &file)?)?;
    let (saved, listed) = timed(&lab, &[save])?;

    let loaded = rule_lines(&saved).count();
    let written = rule_lines(&text).count();
    eprintln!(
        "{restore}: {} Service ports, {loaded} rules loaded in {took:.2?}; {save} took {listed:.2?}",
        cluster.services.len()
    );
    ensure!(loaded == written, "{save} lists {loaded} rules, the restore input had {written}");
    ensure!(loaded >= 30_000, "a cluster of {SERVICES} Services should make tens of thousands of rules, not {loaded}");

    let with_endpoints = cluster.services.iter().filter(|s| s.has_ready_endpoints()).count();
    let ready_endpoints: usize = cluster.services.iter().map(|s| s.ready_endpoints().count()).sum();
    let nat = saved_table(&saved, "nat")?;
    let svc_chains = nat.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count();
    let sep_chains = nat.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count();
    ensure!(
        (svc_chains, sep_chains) == (with_endpoints, ready_endpoints),
        "{svc_chains} KUBE-SVC and {sep_chains} KUBE-SEP chains, want one per Service port with endpoints \
         ({with_endpoints}) and one per ready endpoint ({ready_endpoints})"
    );

    // As iptables-save prints it back, which is what tracer reads on a node.
    let filter = saved_table(&saved, "filter")?;
    let reject = filter.lines().find(|l| {
        l.starts_with("-A KUBE-SERVICES ") && l.contains("--comment \"kube-system/kube-dns:dns has no endpoints\"")
    });
    let Some(reject) = reject else {
        bail!("no kube-dns REJECT in filter KUBE-SERVICES:\n{filter}");
    };
    for part in ["-d 10.96.0.10/32", "-p udp", "--dport 53", "-j REJECT --reject-with icmp-port-unreachable"] {
        ensure!(reject.contains(part), "kube-dns's REJECT should have `{part}`: {reject}");
    }
    ensure!(
        !nat.contains("kube-system/kube-dns:dns cluster IP"),
        "a Service without endpoints gets no nat rules:\n{}",
        nat.lines().filter(|l| l.contains("kube-dns")).collect::<Vec<_>>().join("\n")
    );
    Ok(())
}

/// The objects of table `ip kube-proxy` in `nft -j list ruleset` output.
fn kube_proxy_objects(listing: &Value) -> Result<Vec<&Value>> {
    let all = listing["nftables"].as_array().context("`nft -j` printed no nftables array")?;
    Ok(all
        .iter()
        .filter_map(|o| o.as_object()?.values().next())
        .filter(|body| body["family"] == "ip" && body["table"] == "kube-proxy")
        .collect())
}

/// The elements of map `name` in table `ip kube-proxy` (a map without elements has none listed).
fn map_elements<'a>(listing: &'a Value, name: &str) -> Result<&'a [Value]> {
    let all = listing["nftables"].as_array().context("`nft -j` printed no nftables array")?;
    let map = all
        .iter()
        .filter_map(|o| o.get("map"))
        .find(|m| m["table"] == "kube-proxy" && m["name"] == name)
        .with_context(|| format!("no map {name} in table ip kube-proxy"))?;
    Ok(map["elem"].as_array().map(Vec::as_slice).unwrap_or_default())
}

#[test]
fn nft_loads_5000_services() -> Result<()> {
    let cluster = Cluster::synthetic(SERVICES, KubeDns::NoEndpoints)?;
    let text = nft_ruleset_text(&cluster);
    let lab = Lab::new(LabConfig::healthy())?;
    let file = write_lab_file(&lab, "kube-proxy.nft", &text)?;

    let (_, took) = timed(&lab, &with_file(&["nft", "-f"], &file)?)?;
    let (json, listed) = timed(&lab, &["nft", "-j", "list", "ruleset"])?;
    let listing: Value = serde_json::from_str(&json).context("parsing `nft -j list ruleset`")?;

    let objects = kube_proxy_objects(&listing)?;
    let rules = objects.iter().filter(|o| o.get("expr").is_some()).count();
    let written = text.lines().filter(|l| l.starts_with("add rule ")).count();
    eprintln!(
        "nft -f: {} Service ports, {rules} rules loaded in {took:.2?}; nft -j list ruleset took {listed:.2?}",
        cluster.services.len()
    );
    ensure!(rules == written, "nft lists {rules} rules in table ip kube-proxy, the transaction added {written}");

    let with_endpoints = cluster.services.iter().filter(|s| s.has_ready_endpoints()).count();
    let service_ips = map_elements(&listing, "service-ips")?.len();
    ensure!(
        service_ips == with_endpoints && service_ips >= SERVICES,
        "service-ips holds {service_ips} elements, want one per Service port with endpoints ({with_endpoints})"
    );

    let no_endpoints = map_elements(&listing, "no-endpoint-services")?;
    let dns =
        no_endpoints.iter().find(|e| e[0]["elem"]["val"]["concat"] == serde_json::json!(["10.96.0.10", "udp", 53]));
    let Some(dns) = dns else {
        bail!("no-endpoint-services has no 10.96.0.10 . udp . 53: {no_endpoints:?}");
    };
    ensure!(dns[0]["elem"]["comment"] == "kube-system/kube-dns:dns", "element's comment: {dns}");
    ensure!(dns[1]["goto"]["target"] == "reject-chain", "element's verdict: {dns}");
    ensure!(no_endpoints.len() == 3, "only kube-dns's three ports lack endpoints: {no_endpoints:?}");
    Ok(())
}

tracer_tests::cases!(nodelocal_dns_loads => {
    nodelocal_dns_over_kube_proxy_nft: ("iptables-nft-restore", "iptables-nft-save"),
    nodelocal_dns_over_kube_proxy_legacy: ("iptables-legacy-restore", "iptables-legacy-save"),
});

/// NodeLocal DNSCache's rules go in front of kube-proxy's, as node-cache inserts them on a node
/// where kube-proxy already synced.
fn nodelocal_dns_loads(restore: &str, save: &str) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let cluster = Cluster::synthetic(20, KubeDns::Ready(vec![lab.server_ip().parse()?]))?;
    let kube_proxy = write_lab_file(&lab, "kube-proxy.iptables", &iptables_restore_text(&cluster))?;
    let nodelocal = nodelocal_dns_restore_text(&[NODELOCAL_DNS_IP, KUBE_DNS_IP]);
    let nodelocal_file = write_lab_file(&lab, "nodelocaldns.iptables", &nodelocal)?;

    lab.run(Ns::Node, &with_file(&[restore, "-w", "10"], &kube_proxy)?)?;
    let (_, took) = timed(&lab, &with_file(&[restore, "-w", "10", "--noflush"], &nodelocal_file)?)?;
    eprintln!(
        "{restore} --noflush: NodeLocal DNSCache's {} rules loaded in {took:.2?}",
        rule_lines(&nodelocal).count()
    );
    let saved = lab.run(Ns::Node, &[save])?;

    let raw = saved_table(&saved, "raw")?;
    let notrack: Vec<_> = raw.lines().filter(|l| l.starts_with("-A PREROUTING ")).collect();
    ensure!(notrack.len() == 4, "raw PREROUTING should hold 4 NOTRACK rules:\n{raw}");
    // Inserted last, so listed first: kube-dns's address, udp.
    for part in ["-d 10.96.0.10/32", "-p udp", "--dport 53", "-j NOTRACK"] {
        ensure!(notrack[0].contains(part), "first raw PREROUTING rule should have `{part}`:\n{raw}");
    }
    let filter = saved_table(&saved, "filter")?;
    let input: Vec<_> = filter.lines().filter(|l| l.starts_with("-A INPUT ")).collect();
    ensure!(
        input.len() == 8
            && input[..4].iter().all(|l| l.ends_with("-j ACCEPT"))
            && input[7] == "-A INPUT -j KUBE-FIREWALL",
        "filter INPUT should be NodeLocal DNSCache's 4 ACCEPTs, then kube-proxy's 3 jumps and the kubelet's:\n{}",
        input.join("\n")
    );
    ensure!(
        rule_lines(&saved).count()
            == rule_lines(&nodelocal).count() + rule_lines(&iptables_restore_text(&cluster)).count(),
        "both layouts' rules should all be there:\n{saved}"
    );
    Ok(())
}

tracer_tests::cases!(kube_dns_rejects_without_endpoints_and_answers_with_one => {
    dns_traffic_nftables: (Backend::Nftables),
    dns_traffic_iptables_nft: (Backend::Iptables { restore: "iptables-nft-restore" }),
    dns_traffic_iptables_legacy: (Backend::Iptables { restore: "iptables-legacy-restore" }),
});

fn kube_dns_rejects_without_endpoints_and_answers_with_one(backend: Backend) -> Result<()> {
    let lab = lab_for_kube_proxy()?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    ensure!(
        !dig.answered() && !dig.refused(),
        "{backend:?}: before any rules nothing should answer or refuse:\n{}",
        dig.output
    );

    lab_load(&lab, backend, KubeDns::NoEndpoints)?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    ensure!(
        dig.refused(),
        "{backend:?}: kube-dns without endpoints should be refused (ICMP port unreachable):\n{}",
        dig.output
    );

    lab_load(&lab, backend, KubeDns::Ready(vec![lab.server_ip().parse()?]))?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_answers(&[TEST_A]).with_context(|| format!("{backend:?}: kube-dns with the lab's DNS pod"))?;
    // From the pod CIDR, so not masqueraded: the DNS pod sees the client itself.
    let asked = format!("query[A] {TEST_NAME} from {CLIENT_IP}");
    ensure!(lab.dnsmasq_log().contains(&asked), "{backend:?}: dnsmasq should log `{asked}`:\n{}", lab.dnsmasq_log());
    Ok(())
}

fn lab_load(lab: &Lab, backend: Backend, dns: KubeDns) -> Result<()> {
    let cluster = Cluster::synthetic(20, dns)?;
    backend.load(lab, &cluster).with_context(|| format!("{backend:?}: loading kube-proxy's rules"))
}
