//! End-to-end: DNS stopped by a firewall rule on the node (README, `netfilter_reject` /
//! `netfilter_drop` and `dropped` packet lines), for every firewall backend, and the promise that
//! tracer reads the firewall without changing it. Needs root and a built tracer.

use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::firewall;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

/// After the last dig: time for tracer to read the rulesets again and print the finding.
const SETTLE: Duration = Duration::from_millis(700);

/// Fifteen FORWARD rules that DNS to the ClusterIP (DNATed to 10.244.0.7:53/udp) does not match,
/// several of them near misses of the REJECT that follows them: another port, another protocol,
/// another address, another interface, a LOG, an ACCEPT.
const IPTABLES_DECOYS: [&str; 15] = [
    "-A FORWARD -p tcp --dport 80 -j ACCEPT",
    "-A FORWARD -p udp --dport 5353 -j DROP",
    "-A FORWARD -s 198.51.100.0/24 -j DROP",
    "-A FORWARD -p tcp --dport 53 -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -p udp --dport 54 -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -d 10.99.0.0/16 -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited",
    "-A FORWARD -p udp --sport 67 -j LOG --log-prefix tracer-test-dhcp:",
    "-A FORWARD -i eth9 -j DROP",
    "-A FORWARD -p tcp --dport 443 -j ACCEPT",
    "-A FORWARD -p udp --dport 123 -j ACCEPT",
    "-A FORWARD -p sctp -j DROP",
    "-A FORWARD -d 203.0.113.7/32 -j REJECT",
    "-A FORWARD -p udp -s 10.244.0.99/32 --dport 53 -j DROP",
    "-A FORWARD -p tcp --dport 22 -s 192.0.2.0/24 -j DROP",
    "-A FORWARD -o eth9 -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited",
];

/// The field case: rule 16 of FORWARD.
const IPTABLES_DNS_REJECT: &str = "-A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited";

/// The same as a native nftables ruleset: fifteen misses, then the REJECT as rule 16.
const NFT_RULESET: &str = "\
table inet fw {
	chain forward {
		type filter hook forward priority 0; policy accept;
		tcp dport 80 accept
		udp dport 5353 counter drop
		ip saddr 198.51.100.0/24 drop
		tcp dport 53 counter reject with icmp type host-prohibited
		udp dport 54 counter reject with icmp type host-prohibited
		ip daddr 10.99.0.0/16 udp dport 53 counter reject with icmp type host-prohibited
		udp sport 67 log prefix \"tracer-test-dhcp: \"
		iifname \"eth9\" drop
		tcp dport 443 counter accept
		udp dport 123 accept
		meta l4proto sctp drop
		ip daddr 203.0.113.7 reject
		ip6 daddr fd00:99::/32 udp dport 53 counter reject
		tcp dport 22 ip saddr 192.0.2.0/24 drop
		oifname \"eth9\" udp dport 53 reject with icmp type host-prohibited
		udp dport 53 counter reject with icmp type host-prohibited
	}
}
";

/// `nft -f` of `ruleset` in the node namespace.
fn load_nft_ruleset(lab: &Lab, ruleset: &str) -> Result<()> {
    let file = lab.dir().join("fw.nft");
    std::fs::write(&file, ruleset)?;
    lab.run(Ns::Node, &["nft", "-f", file.to_str().context("non-UTF-8 path")?])?;
    Ok(())
}

/// What a watch and the digs during it left behind.
struct Observed {
    w: WatchJson,
    digs: Vec<Dig>,
}

/// Watches port 53 as JSON while the client digs each server once for [`TEST_NAME`].
fn watch_digs(lab: &Lab, servers: &[&str]) -> Result<Observed> {
    let (w, digs) = Scenario::new(lab)
        .settle(SETTLE)
        .run(|| servers.iter().map(|server| lab.dig(server, TEST_NAME, &[])).collect())?;
    Ok(Observed { w, digs })
}

/// Rule lines (`-A ...`) of a chain as `iptables -S` prints them.
fn iptables_rules(lab: &Lab, program: &str, chain: &str) -> Result<Vec<String>> {
    let out = lab.run(Ns::Node, &[program, "-w", "10", "-S", chain])?;
    Ok(out.lines().filter(|l| l.starts_with("-A ")).map(str::to_string).collect())
}

/// The nf_tables handles of a chain's rules, in order (`nft -a list chain ...`).
fn nft_handles(lab: &Lab, family: &str, table: &str, chain: &str) -> Result<Vec<u64>> {
    let out = lab.run(Ns::Node, &["nft", "-a", "list", "chain", family, table, chain])?;
    let handles = out
        .lines()
        .map(str::trim)
        // Rule lines; the chain line itself ends in `{ # handle N`.
        .filter(|l| !l.ends_with('{') && !l.contains("{ #") && !l.starts_with("type "))
        .filter_map(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().parse::<u64>())
        .collect::<Result<Vec<u64>, _>>()
        .with_context(|| format!("parsing handles of:\n{out}"))?;
    Ok(handles)
}

/// The hooks of a `dropped` line end in `hook`, which the packet never left; it left every hook
/// before that one.
fn check_stopped_in(line: &Value, hook: &str) -> Result<()> {
    let hooks = line["hooks"].as_array().with_context(|| format!("dropped line without hooks array: {line}"))?;
    let (last, before) = hooks.split_last().with_context(|| format!("dropped line with empty hooks: {line}"))?;
    expect_str(last, "/hook", hook)?;
    expect_str(last, "/family", "ipv4")?;
    ensure!(bool_at(last, "/left") == Some(false), "the last hook of a dropped line must have left: false: {line}");
    for h in before {
        ensure!(bool_at(h, "/left") == Some(true), "a hook before the last one was not left: {line}");
    }
    Ok(())
}

/// What a REJECT of the client's query should have produced.
struct Expected<'a> {
    backend: &'a str,
    table: &'a str,
    chain: &'a str,
    hook: &'a str,
    rule: u64,
    /// `Some` for nf_tables backends: the rule's handle.
    handle: Option<u64>,
    icmp: &'a str,
    rule_text: &'a [&'a str],
    /// Where the query was going when it was stopped (after DNAT).
    dst: &'a str,
}

/// The one finding of `kind` (and none of `other_kind`) about the query `dig` sent, and the
/// client socket that query came from.
fn the_finding<'a>(w: &'a WatchJson, dig: &Dig, kind: &str, other_kind: &str) -> Result<(&'a Value, &'a str)> {
    let query = w.query_from_client(dig.query_id()?)?;
    let client = str_at(query, "/src").unwrap_or_default();
    let f = w.one_finding(kind)?;
    ensure!(w.findings_of(other_kind).next().is_none(), "a {kind} is not also a {other_kind}:\n{}", w.describe());
    Ok((f, client))
}

/// The `dropped` line of the query that came from `client`.
fn dropped_line<'a>(w: &'a WatchJson, client: &str) -> Result<&'a Value> {
    w.find_one("the query's dropped line", |p| {
        str_at(p, "/stage") == Some("dropped") && str_at(p, "/src") == Some(client)
    })
}

/// One `netfilter_reject` finding naming the expected rule, and the `dropped` line of the query
/// of the watch's only dig naming it too. Returns the finding.
fn check_reject<'a>(o: &'a Observed, want: &Expected) -> Result<&'a Value> {
    let w = &o.w;
    let (f, client) = the_finding(w, &o.digs[0], "netfilter_reject", "netfilter_drop")?;
    expect_str(f, "/hook", want.hook)?;
    expect_str(f, "/backend", want.backend)?;
    expect_str(f, "/table", want.table)?;
    expect_str(f, "/chain", want.chain)?;
    expect_u64(f, "/rule", want.rule)?;
    match want.handle {
        Some(handle) => expect_u64(f, "/handle", handle)?,
        None => ensure!(f.get("handle") == Some(&Value::Null), "handle should be null: {f}"),
    }
    let text = str_at(f, "/rule_text").unwrap_or_default();
    for part in want.rule_text {
        ensure!(text.contains(part), "rule_text should contain {part:?}: {f}");
    }
    expect_str(f, "/icmp", want.icmp)?;
    expect_str(f, "/drop_reason", "NETFILTER_DROP")?;
    expect_str(f, "/proto", "udp")?;
    expect_str(f, "/src", client)?;
    expect_str(f, "/dst", want.dst)?;
    ensure!(f.get("policy") == Some(&Value::Null), "a rule did it, not a policy: {f}");
    ensure!(f["candidates"].as_array().is_some_and(|c| c.is_empty()), "only one rule fits, so no candidates: {f}");
    for key in ["/headline", "/explanation", "/attribution"] {
        expect_text(f, key)?;
    }
    ensure!(!fix_lines(f).is_empty(), "finding without fix: {f}");

    let label = format!("{}/{} #{}", want.table, want.chain, want.rule);
    let dropped = dropped_line(w, client)?;
    expect_str(dropped, "/verdict", "reject")?;
    expect_str(dropped, "/icmp", want.icmp)?;
    expect_str(dropped, "/rule", &label)?;
    expect_str(dropped, "/drop_reason", "NETFILTER_DROP")?;
    expect_str(dropped, "/dst", want.dst)?;
    expect_str(dropped, "/proto", "udp")?;
    check_stopped_in(dropped, want.hook)?;
    eprintln!("dropped line: {dropped}");
    ensure!(
        w.find(|p| str_at(p, "/stage") == Some("dropped")).count() == 1,
        "one query, one dropped line:\n{}",
        w.describe()
    );
    Ok(f)
}

/// Runs the finding's "remove the rule" command as an operator would paste it, after checking it
/// names the backend's own program and deletes by specification or handle, not by a position
/// the next resync may shift; then the query must get through.
fn the_fix_removes_the_rule(lab: &Lab, f: &Value, program: &str) -> Result<()> {
    let fix = fix_lines(f);
    let remove = fix
        .iter()
        .find_map(|line| line.strip_suffix("# remove the rule"))
        .map(str::trim)
        .with_context(|| format!("no command that removes the rule: {fix:?}"))?;
    ensure!(remove.split_whitespace().next() == Some(program), "the fix must run {program}: {remove}");
    let words: Vec<&str> = remove.split_whitespace().collect();
    if let Some(at) = words.iter().position(|w| *w == "-D") {
        ensure!(
            words.get(at + 2).is_some_and(|w| w.parse::<u32>().is_err()),
            "the fix deletes by position, which the next resync may shift: {remove}"
        );
    } else {
        ensure!(remove.contains(" handle "), "nft deletes by handle: {remove}");
    }
    lab.run(Ns::Node, &["bash", "-c", remove])?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_answered().with_context(|| format!("after `{remove}` the query should get through"))?;
    Ok(())
}

/// dig heard the node's ICMP host-prohibited at once.
fn check_host_unreachable(dig: &Dig) -> Result<()> {
    ensure!(
        !dig.answered() && !dig.timed_out && dig.output.contains("host unreachable"),
        "dig should report host unreachable:\n{}",
        dig.output
    );
    Ok(())
}

/// The field case with an iptables frontend (`iptables` or `iptables-legacy`): fifteen rules that
/// do not match, then the REJECT for DNS as rule 16 of FORWARD.
fn forward_reject_with_iptables(program: &str, backend: &str) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    for rule in IPTABLES_DECOYS.iter().chain([&IPTABLES_DNS_REJECT]) {
        lab.xtables(Ns::Node, program, rule)?;
    }
    let rules = iptables_rules(&lab, program, "FORWARD")?;
    ensure!(
        rules.len() == 16 && rules[15].contains("--dport 53") && rules[15].contains("REJECT"),
        "the REJECT should be rule 16 of FORWARD: {rules:#?}"
    );
    let handle = if backend == "iptables-nft" {
        let handles = nft_handles(&lab, "ip", "filter", "FORWARD")?;
        ensure!(handles.len() == 16, "16 handles expected: {handles:?}");
        Some(handles[15])
    } else {
        None
    };

    let o = watch_digs(&lab, &[CLUSTER_DNS_IP])?;
    check_host_unreachable(&o.digs[0])?;
    let f = check_reject(
        &o,
        &Expected {
            backend,
            table: "filter",
            chain: "FORWARD",
            hook: "FORWARD",
            rule: 16,
            handle,
            icmp: "host-prohibited",
            rule_text: &["--dport 53", "-j REJECT --reject-with icmp-host-prohibited"],
            dst: &format!("{SERVER_IP}:53"),
        },
    )?;
    eprintln!("{backend} finding: {f}");
    // The rule really was the one: its counter went up (read after the watch).
    let counted = lab.run(Ns::Node, &[program, "-w", "10", "-L", "FORWARD", "16", "-v", "-n", "-x"])?;
    ensure!(counted.split_whitespace().next().is_some_and(|n| n != "0"), "rule 16 did not count the query: {counted}");
    o.w.check_summary()?;
    the_fix_removes_the_rule(&lab, f, backend)
}

/// On a kernel where tracer sees no netfilter verdicts (no BPF netfilter links, no fentry:
/// simulated with `TRACER_FAULT=no-netfilter`), the REJECT cannot be named: the watch says so
/// at start and in its summary, and states no rule.
#[test]
fn without_netfilter_verdicts_the_blind_spot_is_said_and_no_rule_is_named() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.xtables(Ns::Node, "iptables", IPTABLES_DNS_REJECT)?;
    let (w, done, dig) = Scenario::new(&lab)
        .settle(SETTLE)
        .env("TRACER_FAULT", "no-netfilter")
        .run_finished(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
    check_host_unreachable(&dig)?;
    ensure!(
        done.stderr.lines().any(|l| l.starts_with("tracer: blind spot: no netfilter verdicts")
            && l.contains("netfilter_reject, netfilter_drop cannot be found")),
        "the start says what cannot be seen:\n{}",
        done.stderr
    );
    let spots = w.summary["blind_spots"].as_array().context("summary blind_spots")?;
    let missing: Vec<&str> = spots.iter().filter_map(|spot| str_at(spot, "/missing")).collect();
    ensure!(
        missing == tracer_tests::expected_blind_spots(&["netfilter_verdicts"], &[])
            && spots[0]["unavailable"] == serde_json::json!(["netfilter_reject", "netfilter_drop"]),
        "the summary repeats it: {}",
        w.summary
    );
    ensure!(
        w.findings.iter().all(|f| !str_at(f, "/kind").is_some_and(|k| k.starts_with("netfilter_"))),
        "no rule is named without netfilter verdicts:\n{}",
        w.describe()
    );
    Ok(())
}

tracer_tests::cases!(forward_reject_with_iptables => {
    iptables_nft_reject_is_named_by_rule_number: ("iptables", "iptables-nft"),
    iptables_legacy_reject_is_named_by_rule_number: ("iptables-legacy", "iptables-legacy"),
});

#[test]
fn native_nftables_reject_is_named_by_rule_and_handle() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    load_nft_ruleset(&lab, NFT_RULESET)?;
    let handles = nft_handles(&lab, "inet", "fw", "forward")?;
    ensure!(handles.len() == 16, "16 rules expected: {handles:?}");

    let o = watch_digs(&lab, &[CLUSTER_DNS_IP])?;
    check_host_unreachable(&o.digs[0])?;
    let f = check_reject(
        &o,
        &Expected {
            backend: "nftables",
            table: "inet fw",
            chain: "forward",
            hook: "FORWARD",
            rule: 16,
            handle: Some(handles[15]),
            icmp: "host-prohibited",
            rule_text: &["udp dport 53", "reject"],
            dst: &format!("{SERVER_IP}:53"),
        },
    )?;
    eprintln!("nftables finding: {f}");
    let text = str_at(f, "/rule_text").unwrap_or_default();
    ensure!(
        !text.contains("10.99.0.0") && !text.contains("eth9") && !text.contains("fd00:99"),
        "rule_text is one of the near misses: {f}"
    );
    o.w.check_summary()?;
    the_fix_removes_the_rule(&lab, f, "nft")
}

#[test]
fn forward_drop_policy_is_a_netfilter_drop() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables("-A FORWARD -p tcp --dport 80 -j ACCEPT")?;
    lab.iptables("-P FORWARD DROP")?;

    let o = watch_digs(&lab, &[CLUSTER_DNS_IP])?;
    let (w, dig) = (&o.w, &o.digs[0]);
    dig.expect_timed_out()?;
    let (f, client) = the_finding(w, dig, "netfilter_drop", "netfilter_reject")?;
    eprintln!("policy finding: {f}");
    expect_str(f, "/hook", "FORWARD")?;
    expect_str(f, "/policy", "filter/FORWARD")?;
    expect_str(f, "/src", client)?;
    expect_str(f, "/dst", &format!("{SERVER_IP}:53"))?;
    expect_str(f, "/drop_reason", "NETFILTER_DROP")?;
    for key in ["icmp", "rule", "rule_text"] {
        ensure!(f.get(key) == Some(&Value::Null), "{key} should be null for a policy drop: {f}");
    }
    ensure!(!fix_lines(f).is_empty(), "finding without fix: {f}");

    let dropped = dropped_line(w, client)?;
    expect_str(dropped, "/verdict", "drop")?;
    ensure!(
        str_at(dropped, "/rule").is_some_and(|r| r.starts_with("filter/FORWARD")),
        "the dropped line should name the FORWARD policy: {dropped}"
    );
    expect_str(dropped, "/drop_reason", "NETFILTER_DROP")?;
    ensure!(dropped.get("icmp") == Some(&Value::Null), "a silent drop has no ICMP answer: {dropped}");
    check_stopped_in(dropped, "FORWARD")?;
    eprintln!("dropped line: {dropped}");
    o.w.check_summary()
}

#[test]
fn input_reject_of_dns_to_the_node_itself() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // A DNS server on the node, next to the lab's own dnsmasq in the server pod.
    let pid_file = lab.dir().join("node-dnsmasq.pid");
    let pid_arg = format!("--pid-file={}", pid_file.display());
    let listen = format!("--listen-address={BRIDGE_IP}");
    let record = format!("--host-record={TEST_NAME},{TEST_A}");
    let mut dnsmasq = lab.spawn(
        Ns::Node,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--user=root",
            &pid_arg,
            &record,
            "--log-facility=-",
        ],
    )?;
    let bound = format!("{BRIDGE_IP}:53");
    for _ in 0..200 {
        if lab.run(Ns::Node, &["ss", "-Hlun"])?.contains(&bound) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let before = lab.dig(BRIDGE_IP, TEST_NAME, &[])?;
    before.expect_answers(&[TEST_A]).context("the node's dnsmasq should answer before the REJECT")?;
    lab.iptables("-A INPUT -p udp --dport 53 -j REJECT")?;

    let o = watch_digs(&lab, &[BRIDGE_IP])?;
    let dig = &o.digs[0];
    ensure!(
        !dig.answered() && dig.output.contains("connection refused"),
        "dig should be refused (ICMP port unreachable):\n{}",
        dig.output
    );
    let handles = nft_handles(&lab, "ip", "filter", "INPUT")?;
    let f = check_reject(
        &o,
        &Expected {
            backend: "iptables-nft",
            table: "filter",
            chain: "INPUT",
            hook: "LOCAL_IN",
            rule: 1,
            handle: handles.first().copied(),
            icmp: "port-unreachable",
            rule_text: &["-A INPUT", "--dport 53", "-j REJECT"],
            dst: &bound,
        },
    )?;
    eprintln!("INPUT finding: {f}");
    dnsmasq.signal(libc::SIGTERM)?;
    o.w.check_summary()
}

#[test]
fn healthy_ruleset_gives_no_finding() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    for rule in [
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A FORWARD -p tcp --dport 22 -j DROP",
        "-A FORWARD -p udp --dport 5353 -j REJECT --reject-with icmp-host-prohibited",
        "-A FORWARD -d 10.99.0.0/16 -p udp --dport 53 -j REJECT",
        "-A FORWARD -p udp --dport 53 -j ACCEPT",
        "-A FORWARD -j REJECT --reject-with icmp-host-prohibited",
        "-A INPUT -p udp --dport 53 -j ACCEPT",
    ] {
        lab.iptables(rule)?;
    }
    lab.xtables(Ns::Node, "iptables-legacy", "-A FORWARD -p tcp --dport 53 -j DROP")?;

    let o = watch_digs(&lab, &[CLUSTER_DNS_IP, SERVER_IP])?;
    let w = &o.w;
    for dig in &o.digs {
        dig.expect_answers(&[TEST_A])?;
        w.query_from_client(dig.query_id()?)?;
    }
    w.expect_no_findings("an accepting ruleset should produce no findings")?;
    ensure!(
        w.find(|p| str_at(p, "/stage") == Some("dropped")).next().is_none(),
        "nothing was dropped:\n{}",
        w.describe()
    );
    // Both the query and the reply are forwarded by the bridge through the IP hooks.
    let id = o.digs[0].query_id()?;
    for qr in [false, true] {
        let forwarded: Vec<&Value> =
            w.find(|p| dns_is(p, id, qr) && p["hooks"].as_array().is_some_and(|h| !h.is_empty())).collect();
        ensure!(
            forwarded.iter().any(|p| p["hooks"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| str_at(h, "/hook") == Some("FORWARD")))),
            "no {} line that passed FORWARD:\n{}",
            if qr { "reply" } else { "query" },
            w.describe()
        );
        for p in forwarded {
            expect_str(p, "/verdict", "accept")?;
            ensure!(
                p["hooks"].as_array().is_some_and(|h| h.iter().all(|h| bool_at(h, "/left") == Some(true))),
                "an accepted packet left every hook: {p}"
            );
        }
    }
    for p in w.find(|p| p["hooks"].as_array().is_some_and(|h| h.is_empty())) {
        ensure!(p.get("verdict") == Some(&Value::Null), "no hooks passed, so no verdict: {p}");
    }
    w.check_summary()
}

#[test]
fn the_firewall_is_untouched() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    for (program, rule) in [
        ("iptables", "-A FORWARD -p tcp --dport 80 -j ACCEPT"),
        ("ip6tables", "-A FORWARD -p tcp --dport 8080 -j ACCEPT"),
        ("iptables-legacy", "-A FORWARD -p tcp --dport 25 -j DROP"),
        // A DNS drop tracer has to name: the node routes 192.0.2.53 out of cni0, the legacy rule
        // rejects the query in FORWARD, so tracer reads every ruleset again during the watch.
        (
            "iptables-legacy",
            "-A FORWARD -d 192.0.2.53/32 -p udp --dport 53 -j REJECT --reject-with icmp-admin-prohibited",
        ),
        ("ip6tables-legacy", "-A INPUT -p tcp --dport 25 -j DROP"),
    ] {
        lab.xtables(Ns::Node, program, rule)?;
    }
    lab.run(Ns::Node, &["ip", "route", "add", "192.0.2.53/32", "dev", BRIDGE])?;
    // Forwarding out of the interface it came in on would make the node send an ICMP redirect
    // first, and the REJECT's ICMP answer would then fall to the per-host ICMP rate limit.
    for dev in ["all", BRIDGE] {
        let key = format!("net.ipv4.conf.{dev}.send_redirects=0");
        lab.run(Ns::Node, &["sysctl", "-qw", &key])?;
    }
    load_nft_ruleset(&lab, &NFT_RULESET.replace("udp dport 53 counter reject", "udp dport 5300 counter reject"))?;

    let before = firewall::rulesets(&lab, Ns::Node)?;
    for needle in ["192.0.2.53", "fw", "dport 8080", "dport 25"] {
        ensure!(before.contains(needle), "ruleset misses {needle}:\n{before}");
    }

    let (w, (answered, rejected, during)) = Scenario::new(&lab).run(|| {
        let answered = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
        let rejected = lab.dig("192.0.2.53", TEST_NAME, &[])?;
        thread::sleep(SETTLE);
        Ok((answered, rejected, firewall::rulesets(&lab, Ns::Node)?))
    })?;
    let after = firewall::rulesets(&lab, Ns::Node)?;

    answered.expect_answered()?;
    ensure!(
        !rejected.answered() && !rejected.timed_out,
        "the legacy REJECT should answer with ICMP:\n{}",
        rejected.output
    );
    w.query_from_client(answered.query_id()?)?;
    let f = w
        .findings_of("netfilter_reject")
        .next()
        .with_context(|| format!("no netfilter_reject for the legacy rule:\n{}", w.describe()))?;
    eprintln!("legacy (routed) finding: {f}");
    expect_str(f, "/backend", "iptables-legacy")?;
    expect_str(f, "/icmp", "admin-prohibited")?;
    expect_u64(f, "/rule", 2)?;

    for (when, state) in [("during", &during), ("after", &after)] {
        ensure!(
            *state == before,
            "the firewall changed {when} the watch:\n--- before ---\n{before}--- {when} ---\n{state}"
        );
    }
    for state in [&before, &during, &after] {
        ensure!(!state.contains("TRACE") && !state.contains("nftrace"), "TRACE/nftrace in the ruleset:\n{state}");
    }
    w.check_summary()
}

#[test]
fn a_rule_replaced_during_the_watch_is_named_afresh() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables(IPTABLES_DNS_REJECT)?;
    let capture = lab.dir().join("replaced.pcapng");
    let capture = capture.to_str().context("capture path")?;
    let (w, (first, second)) = Scenario::new(&lab).args(&["--write", capture]).settle(SETTLE).run(|| {
        let first = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+tries=1", "+time=1"])?;
        // Someone replaces the REJECT with a silent DROP further down: a drop named after the
        // REJECT from here on would be a false answer.
        lab.iptables("-D FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited")?;
        lab.iptables("-A FORWARD -p tcp --dport 443 -j ACCEPT")?;
        lab.iptables("-A FORWARD -p udp --dport 53 -j DROP")?;
        // Past the time an attribution is trusted without reading the rules again.
        thread::sleep(Duration::from_secs(11));
        let second = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+tries=1", "+time=1"])?;
        Ok((first, second))
    })?;
    check_host_unreachable(&first)?;
    ensure!(second.timed_out, "the DROP is silent:\n{}", second.output);
    ensure!(w.findings.len() == 2, "two rules, two findings:\n{}", w.describe());
    let reject = w.one_finding("netfilter_reject")?;
    expect_u64(reject, "/rule", 1)?;
    let drop = w.one_finding("netfilter_drop")?;
    expect_u64(drop, "/rule", 2)?;
    ensure!(str_at(drop, "/rule_text").is_some_and(|t| t.contains("-j DROP")), "the DROP is named: {drop}");
    let labels: Vec<&str> =
        w.find(|p| str_at(p, "/stage") == Some("dropped")).filter_map(|p| str_at(p, "/rule")).collect();
    ensure!(labels == ["filter/FORWARD #1", "filter/FORWARD #2"], "each drop names its own rule: {labels:?}");
    w.expect_report_agrees(capture)?;
    Ok(())
}
