//! The rulesets of other firewall owners ([`tracer_tests::managers`]) loaded by the real tools and
//! tried with real DNS traffic: each one, put on a lab's node, drops or rejects a `dig` from the
//! client pod the way its owner's rule does, that rule's counter goes up, and the same owner's fix
//! (the ruleset it writes once the cluster allows DNS) lets the answer through. Needs root (and
//! `ipset` for kube-router's sets); every case builds its own lab, which its `Drop` removes, also
//! when the case fails.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::managers::*;
use tracer_tests::output::{edits_firewall, fix_lines};
use tracer_tests::ruleset::{nft_rule_packets, rule_lines, rule_packets, saved_table, with_file, write_lab_file};
use tracer_tests::scenario::Scenario;

/// How an iptables ruleset is loaded and listed: the nf_tables or the legacy backend.
#[derive(Clone, Copy, Debug)]
struct Xtables {
    restore: &'static str,
    save: &'static str,
}

const NFT: Xtables = Xtables { restore: "iptables-nft-restore", save: "iptables-nft-save" };
const LEGACY: Xtables = Xtables { restore: "iptables-legacy-restore", save: "iptables-legacy-save" };

impl Xtables {
    /// Loads `text` into the node, replacing the tables it names, and returns `iptables-save -c`.
    fn load(self, lab: &Lab, name: &str, text: &str) -> Result<String> {
        let file = write_lab_file(lab, name, text)?;
        lab.run(Ns::Node, &with_file(&[self.restore, "-w", "10"], &file)?)
            .with_context(|| format!("{} {name}", self.restore))?;
        // Only the tables written: the lab keeps its own DNAT in the nat table.
        let listed = lab.run(Ns::Node, &[self.save])?;
        let mut loaded = 0;
        for table in text.lines().filter_map(|l| l.strip_prefix('*')) {
            loaded += rule_lines(saved_table(&listed, table)?).count();
        }
        let written = rule_lines(text).count();
        ensure!(loaded == written, "{}: {loaded} rules listed, {written} written:\n{listed}", self.save);
        self.saved(lab)
    }

    fn saved(self, lab: &Lab) -> Result<String> {
        lab.run(Ns::Node, &[self.save, "-c"])
    }

    /// The packets counted by the one rule of `chain` with all of `parts`, and that rule.
    fn packets(self, lab: &Lab, chain: &str, parts: &[&str]) -> Result<(u64, String)> {
        let saved = self.saved(lab)?;
        rule_packets(&saved, chain, parts).map(|(packets, rule)| (packets, rule.to_string()))
    }
}

/// After the dig: time for tracer to name the rule and print the finding.
const SETTLE: Duration = Duration::from_millis(700);

/// Runs `dig` under a tracer watch; returns what the dig saw and the one finding tracer stated,
/// which must be the rule's, of `kind`, owned by `manager`, with no second finding for the query.
fn dig_watched(lab: &Lab, kind: &str, manager: &str, dig: impl FnOnce() -> Result<Dig>) -> Result<(Dig, Value)> {
    let (w, dig) = Scenario::new(lab).settle(SETTLE).run(dig)?;
    let finding = w.only_finding(kind)?.clone();
    ensure!(finding["owner"]["manager"] == manager, "the rule is {manager}'s:\n{finding:#}");
    Ok((dig, finding))
}

/// No fix line edits the rules of a manager that rewrites them: `iptables`/`nft` on its chains.
/// The finding names [`deny_dns`]'s policy as the owner's (`which` says how it comes in) and
/// its fix shows it.
fn ensure_policy_named(finding: &Value, xtables: Xtables, which: &str) -> Result<()> {
    ensure!(finding["owner"]["policy"] == "default/deny-dns", "{xtables:?}: {which}:\n{finding:#}");
    ensure!(
        fix_lines(finding).iter().any(|line| line.contains("describe networkpolicy deny-dns")),
        "{xtables:?}: the fix shows the policy:\n{finding:#}"
    );
    Ok(())
}

fn ensure_no_edit_of(finding: &Value, chains: &[&str]) -> Result<()> {
    for line in fix_lines(finding) {
        ensure!(
            !(edits_firewall(line) && chains.iter().any(|chain| line.contains(chain))),
            "a fix edits a chain its manager rewrites: {line}\n{finding:#}"
        );
    }
    Ok(())
}

/// The deny-dns scenario on `lab`'s pods, the server behind the node's `server_iface`.
fn deny_dns(lab: &Lab, server_iface: &str, allow_dns: bool) -> Result<PodNetwork> {
    let (client, server) = lab_pods(lab.server_ip().parse()?, server_iface);
    Ok(PodNetwork::deny_dns(client, server, allow_dns))
}

// ---- Calico ----

/// The lab with the client attached as Calico attaches a pod: its veth routed by the node (a /32
/// route and proxy ARP answering for every address the pod asks for) instead of bridged, so that
/// the pod's packets are forwarded with the veth as their input interface, which is what Felix
/// dispatches on. The server sits behind the node's other routed veth.
fn lab_for_calico() -> Result<Lab> {
    let lab = Lab::new(LabConfig::healthy().with_routed_server())?;
    let client = format!("{CLIENT_IP}/32");
    let proxy_arp = format!("net.ipv4.conf.{CLIENT_VETH}.proxy_arp=1");
    for argv in [
        &["ip", "link", "set", CLIENT_VETH, "nomaster"][..],
        &["ip", "route", "add", &client, "dev", CLIENT_VETH],
        &["sysctl", "-qw", &proxy_arp],
    ] {
        lab.run(Ns::Node, argv)?;
    }
    Ok(lab)
}

tracer_tests::cases!(calico_drops_dns_until_the_policy_allows_it => {
    calico_iptables_nft: (NFT),
    calico_iptables_legacy: (LEGACY),
});

fn calico_drops_dns_until_the_policy_allows_it(xtables: Xtables) -> Result<()> {
    let lab = lab_for_calico()?;
    let server = lab.server_ip();
    lab.dig(server, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("the routed client before any policy")?;

    let text = calico::iptables_restore_text(&deny_dns(&lab, ROUTED_VETH, false)?, "veth")?;
    let saved = xtables.load(&lab, "calico.iptables", &text)?;
    let fw = calico::from_workload_chain(CLIENT_VETH);
    let drop = ["--comment \"End of tier default. Drop if no policies passed packet\"", "-j DROP"];
    let (before, rule) = rule_packets(&saved, &fw, &drop)?;
    ensure!(before == 0, "nothing was sent yet: {rule}");

    let (dig, finding) = dig_watched(&lab, "netfilter_drop", "calico", || lab.dig(server, TEST_NAME, &[]))?;
    dig.expect_timed_out().context("Calico drops the query silently")?;
    ensure!(finding["chain"] == fw.as_str(), "{xtables:?}: the end-of-tier drop in {fw}:\n{finding:#}");
    ensure_policy_named(&finding, xtables, "the policy whose tier ended in the drop")?;
    ensure_no_edit_of(&finding, &["cali-"])?;
    let (after, rule) = xtables.packets(&lab, &fw, &drop)?;
    ensure!(after >= 1, "{xtables:?}: the end-of-tier drop should have counted the query: {rule}");
    eprintln!("{xtables:?}: dropped by [{after} packets] {rule}");

    let text = calico::iptables_restore_text(&deny_dns(&lab, ROUTED_VETH, true)?, "veth")?;
    xtables.load(&lab, "calico-allow-dns.iptables", &text)?;
    lab.dig(server, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("the policy allows DNS")?;
    let saved = xtables.saved(&lab)?;
    let (dropped, _) = rule_packets(&saved, &fw, &drop)?;
    let policy = calico::policy_egress_chain(&deny_dns(&lab, ROUTED_VETH, true)?.policies[0]);
    let (allowed, rule) = rule_packets(&saved, &policy, &["-p udp", "--dports 53", "MARK"])?;
    ensure!(
        dropped == 0 && allowed >= 1,
        "{xtables:?}: the policy's UDP 53 rule should pass the query ({allowed}: {rule}), not the drop ({dropped})"
    );
    Ok(())
}

// ---- kube-router ----

/// A sync version as kube-router writes it: the sync's start in nanoseconds.
const KUBE_ROUTER_SYNC: &str = "1767225600000000000";

/// Loads kube-router's sets (before its rules, which refer to them) and then its rules.
fn load_kube_router(lab: &Lab, xtables: Xtables, network: &PodNetwork) -> Result<String> {
    let sets = write_lab_file(lab, "kube-router.ipset", &kube_router::ipset_restore_text(network))?;
    lab.run(Ns::Node, &with_file(&["ipset", "restore", "-exist", "-file"], &sets)?)
        .context("ipset restore (is ipset installed? apt-get install ipset)")?;
    let text = kube_router::iptables_restore_text(network, KUBE_ROUTER_SYNC, tracer_tests::kube_proxy::SERVICE_CIDR);
    xtables.load(lab, "kube-router.iptables", &text)
}

tracer_tests::cases!(kube_router_rejects_dns_until_the_policy_allows_it => {
    kube_router_iptables_nft: (NFT),
    kube_router_iptables_legacy: (LEGACY),
});

/// Pods on the lab's bridge, as kube-router's own bridge puts them: the query is bridged, and
/// br_netfilter hands it to the FORWARD chain with the physdev match kube-router relies on.
fn kube_router_rejects_dns_until_the_policy_allows_it(xtables: Xtables) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let server = lab.server_ip();
    let network = deny_dns(&lab, SERVER_VETH, false)?;
    let saved = load_kube_router(&lab, xtables, &network)?;
    let chain = kube_router::pod_firewall_chain(&network.pods[0], KUBE_ROUTER_SYNC);
    let reject = ["rule to REJECT traffic destined for POD name:client namespace: default", "-j REJECT"];
    let (before, rule) = rule_packets(&saved, &chain, &reject)?;
    ensure!(before == 0 && rule.contains("--reject-with icmp-port-unreachable"), "{rule}");
    let sets = lab.run(Ns::Node, &["ipset", "list", &kube_router::policy_source_set(&network.policies[0])])?;
    ensure!(sets.contains(CLIENT_IP), "the policy's source set should hold the client:\n{sets}");

    let (dig, finding) = dig_watched(&lab, "netfilter_reject", "kube-router", || lab.dig(server, TEST_NAME, &[]))?;
    ensure!(dig.refused(), "{xtables:?}: kube-router rejects with port unreachable:\n{}", dig.output);
    ensure!(finding["chain"] == chain.as_str(), "{xtables:?}: the pod firewall's REJECT in {chain}:\n{finding:#}");
    ensure_policy_named(&finding, xtables, "the policy that selected the pod")?;
    ensure_no_edit_of(&finding, &["KUBE-POD-FW-", "KUBE-NWPLCY-", "KUBE-ROUTER-"])?;
    let (after, rule) = xtables.packets(&lab, &chain, &reject)?;
    ensure!(after >= 1, "{xtables:?}: the pod chain's REJECT should have counted the query: {rule}");
    eprintln!("{xtables:?}: rejected by [{after} packets] {rule}");

    let network = deny_dns(&lab, SERVER_VETH, true)?;
    let saved = load_kube_router(&lab, xtables, &network)?;
    ensure!(rule_packets(&saved, &chain, &reject)?.0 == 0, "a restore starts the counters again");
    lab.dig(server, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("the policy allows DNS")?;
    let saved = xtables.saved(&lab)?;
    let policy = kube_router::policy_chain(CLIENT_NAMESPACE, DENY_DNS_POLICY, KUBE_ROUTER_SYNC);
    let (marked, rule) = rule_packets(&saved, &policy, &["-p udp", "--dport 53", "-j MARK"])?;
    let (rejected, _) = rule_packets(&saved, &chain, &reject)?;
    ensure!(
        marked >= 1 && rejected == 0,
        "{xtables:?}: the policy's UDP 53 rule should pass the query ({marked}: {rule}), not the REJECT ({rejected})"
    );
    Ok(())
}

// ---- firewalld ----

/// A DNS server on the node itself, listening on the bridge's address, as a node-local cache
/// does: what firewalld's input zone decides about.
fn start_node_dns(lab: &Lab) -> Result<Process<'_>> {
    let (pid, log) = (lab.dir().join("node-dnsmasq.pid"), lab.dir().join("node-dnsmasq.log"));
    let args = dnsmasq_argv(&[BRIDGE_IP], &pid, &log);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let dnsmasq = lab.spawn(Ns::Node, &argv)?;
    let want = format!("{BRIDGE_IP}:53");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.run(Ns::Node, &["ss", "-Hlun"])?.contains(&want) {
        ensure!(Instant::now() < deadline, "dnsmasq on the node is not listening on {want} after 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(dnsmasq)
}

fn load_firewalld(lab: &Lab, name: &str, config: &firewalld::Firewalld) -> Result<()> {
    let listing = lab.run(Ns::Node, &["nft", "list", "tables"])?;
    if listing.lines().any(|l| l.trim() == "table inet firewalld") {
        lab.run(Ns::Node, &["nft", "delete", "table", "inet", "firewalld"])?;
    }
    let file = write_lab_file(lab, name, &firewalld::nft_ruleset_text(config))?;
    lab.run(Ns::Node, &with_file(&["nft", "-f"], &file)?).map(drop).with_context(|| format!("nft -f {name}"))
}

fn nft_chain(lab: &Lab, chain: &str) -> Result<String> {
    lab.run(Ns::Node, &["nft", "-a", "list", "chain", "inet", "firewalld", chain])
}

/// The packets counted by the one rule of firewalld's `chain` with all of `parts`, and that rule.
fn nft_packets(lab: &Lab, chain: &str, parts: &[&str]) -> Result<(u64, String)> {
    let listing = nft_chain(lab, chain)?;
    nft_rule_packets(&listing, parts).map(|(packets, rule)| (packets, rule.to_string()))
}

/// The client's query to a DNS server on the node enters through `cni0`, which is in the default
/// `public` zone: no service there allows DNS, so the zone's input chain rejects it.
#[test]
fn firewalld_rejects_dns_to_the_node_until_the_zone_allows_it() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let _dnsmasq = start_node_dns(&lab)?;
    lab.dig(BRIDGE_IP, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("the node's DNS before firewalld")?;

    let mut config = firewalld::Firewalld { zone: firewalld::Zone::public(&[BRIDGE]), counters: true };
    load_firewalld(&lab, "firewalld.nft", &config)?;
    let chain = firewalld::input_zone_chain(&config.zone);
    let reject = ["reject with icmpx", "admin-prohibited"];
    let (before, rule) = nft_packets(&lab, &chain, &reject)?;
    ensure!(before == 0, "nothing was sent yet: {rule}");
    let dispatch = nft_chain(&lab, "filter_INPUT_dispatch")?;
    ensure!(dispatch.contains(&format!("iifname \"{BRIDGE}\" ")), "dispatch by the bridge:\n{dispatch}");

    let (dig, finding) = dig_watched(&lab, "netfilter_reject", "firewalld", || lab.dig(BRIDGE_IP, TEST_NAME, &[]))?;
    ensure!(dig.host_unreachable(), "firewalld rejects with admin-prohibited:\n{}", dig.output);
    ensure!(finding["owner"]["zone"] == "public", "the zone whose input chain rejects:\n{finding:#}");
    let fix = fix_lines(&finding);
    ensure!(
        fix.iter().any(|line| line.contains("firewall-cmd") && line.contains("--zone=public") && line.contains("dns")),
        "the fix allows DNS in the zone with firewall-cmd:\n{finding:#}"
    );
    ensure!(
        !fix.iter().any(|line| line.starts_with("nft ") && line.contains("firewalld")),
        "never an edit of firewalld's own table:\n{finding:#}"
    );
    let (after, rule) = nft_packets(&lab, &chain, &reject)?;
    ensure!(after >= 1, "the zone's reject should have counted the query: {rule}");
    eprintln!("rejected in {chain} by {rule}");

    config.zone.services.push(firewalld::Service::Dns);
    load_firewalld(&lab, "firewalld-dns.nft", &config)?;
    lab.dig(BRIDGE_IP, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("the zone allows the dns service")?;
    let (allowed, rule) = nft_packets(&lab, "filter_IN_public_allow", &["udp dport 53"])?;
    let (rejected, _) = nft_packets(&lab, &chain, &reject)?;
    ensure!(
        allowed >= 1 && rejected == 0,
        "the dns service should accept the query ({allowed}: {rule}), not the reject ({rejected})"
    );
    Ok(())
}

// ---- Docker ----

/// The lab as two Docker networks: the client's bridge `cni0` as the default bridge, and the
/// server's routed veth as a user network's bridge (Docker's rules only name interfaces).
fn docker_host(release: docker::Release, allow: bool) -> docker::DockerHost {
    let cidr = |third| Cidr { addr: std::net::Ipv4Addr::new(10, third, 0, 0), prefix: 24 };
    let networks = vec![
        docker::Network { bridge: BRIDGE.into(), subnet: cidr(244) },
        docker::Network { bridge: ROUTED_VETH.into(), subnet: cidr(245) },
    ];
    let user_rules = if allow { docker::allow_between(&networks[0], &networks[1]) } else { Vec::new() };
    docker::DockerHost { release, networks, user_rules }
}

tracer_tests::cases!(docker_drops_dns_between_networks_until_docker_user_allows_it => {
    docker_27_iptables_nft: (docker::Release::V27, NFT),
    docker_27_iptables_legacy: (docker::Release::V27, LEGACY),
    docker_28_iptables_nft: (docker::Release::V28, NFT),
    docker_28_iptables_legacy: (docker::Release::V28, LEGACY),
});

/// A query from a container on one network to a DNS server container on another: Docker drops it
/// silently, and passes it once `DOCKER-USER` accepts traffic between the two.
fn docker_drops_dns_between_networks_until_docker_user_allows_it(
    release: docker::Release,
    xtables: Xtables,
) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy().with_routed_server())?;
    let server = lab.server_ip();
    let saved = xtables.load(&lab, "docker.iptables", &docker::iptables_restore_text(&docker_host(release, false)))?;
    let chain = docker::isolation_chain(release);
    let drop = match release {
        docker::Release::V27 => vec![format!("-o {ROUTED_VETH} -j DROP")],
        docker::Release::V28 => vec![format!("! -i {ROUTED_VETH} -o {ROUTED_VETH} -j DROP")],
    };
    let drop: Vec<&str> = drop.iter().map(String::as_str).collect();
    let (before, rule) = rule_packets(&saved, chain, &drop)?;
    ensure!(before == 0, "nothing was sent yet: {rule}");

    let (dig, finding) = dig_watched(&lab, "netfilter_drop", "docker", || lab.dig(server, TEST_NAME, &[]))?;
    dig.expect_timed_out().with_context(|| format!("{release:?} isolates the networks"))?;
    ensure!(finding["chain"] == chain, "{release:?} {xtables:?}: Docker's isolation drop in {chain}:\n{finding:#}");
    ensure!(
        fix_lines(&finding).iter().any(|line| line.contains("DOCKER-USER")),
        "{release:?} {xtables:?}: the fix goes in DOCKER-USER:\n{finding:#}"
    );
    ensure_no_edit_of(&finding, &["DOCKER-ISOLATION", "-A DOCKER ", "-I DOCKER "])?;
    let (after, rule) = xtables.packets(&lab, chain, &drop)?;
    ensure!(after >= 1, "{release:?} {xtables:?}: the isolation drop should have counted the query: {rule}");
    eprintln!("{release:?} {xtables:?}: dropped by [{after} packets] {rule}");

    xtables.load(&lab, "docker-user.iptables", &docker::iptables_restore_text(&docker_host(release, true)))?;
    lab.dig(server, TEST_NAME, &[])?.expect_answers(&[TEST_A]).context("DOCKER-USER allows the networks to talk")?;
    let (accepted, rule) =
        xtables.packets(&lab, "DOCKER-USER", &[&format!("-i {BRIDGE} -o {ROUTED_VETH} -j ACCEPT")])?;
    let (dropped, _) = xtables.packets(&lab, chain, &drop)?;
    ensure!(
        accepted >= 1 && dropped == 0,
        "{release:?} {xtables:?}: DOCKER-USER should accept the query ({accepted}: {rule}), not the drop ({dropped})"
    );
    Ok(())
}
