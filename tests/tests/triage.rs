//! End-to-end: `tracer triage` on the lab (README, "Triage"): node checks plus a traffic window,
//! findings ranked, config and traffic evidence merged, exit codes 0 / 1 / 2. Needs root and a
//! built tracer. The conntrack table-full and insert-race findings are tested on recorded kernel
//! data in tracer's unit tests (`findings::node_config`): nf_conntrack_max cannot be changed inside
//! a namespace, and tests must not change the host's.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::output::*;
use tracer_tests::{run_tracer, tracer_bin};

/// The traffic window: long enough for a dig (with its 2 s timeout) to finish inside it.
const WINDOW_SECS: &str = "4";
/// How long a triage may take in all: node checks, attaching, the window, the report.
const TRIAGE_DEADLINE: Duration = Duration::from_secs(60);

/// What one triage run left behind.
struct Triage {
    exit_code: Option<i32>,
    done: Finished,
}

impl Triage {
    fn json(&self) -> Result<WatchJson> {
        WatchJson::parse(&self.done.stdout).with_context(|| self.done.describe())
    }

    /// The JSON report of a triage that found problems, and so exited 1.
    fn json_with_findings(&self) -> Result<WatchJson> {
        self.expect_exit(1, "findings")?;
        self.json()
    }

    /// It exited with `code`, which means `meaning`.
    fn expect_exit(&self, code: i32, meaning: &str) -> Result<()> {
        ensure!(self.exit_code == Some(code), "exit code {code} ({meaning}) expected:\n{}", self.done.describe());
        Ok(())
    }
}

/// The first-ranked finding, which must be of `kind` and be seen both in the traffic and in the
/// node's configuration (one finding, not one of each).
fn first_finding_seen_twice<'a>(w: &'a WatchJson, kind: &str) -> Result<&'a Value> {
    let first = w.findings.first().with_context(|| format!("no findings:\n{}", w.describe()))?;
    expect_str(first, "/kind", kind)?;
    ensure!(
        first.get("seen_in") == Some(&serde_json::json!(["traffic", "config"])),
        "seen in traffic and config: {first}"
    );
    Ok(first)
}

/// Runs `tracer triage ARGS` in the lab's node namespace and digs the ClusterIP once from the
/// client while it watches; returns the triage and the dig.
fn triage_with_dig(lab: &Lab, args: &[&str]) -> Result<(Triage, Dig)> {
    let mut argv = vec!["triage", "--duration", WINDOW_SECS];
    argv.extend_from_slice(args);
    let mut process = lab.spawn_tracer(&argv, &[], StdoutMode::Capture)?;
    // The traffic window starts once the kernel programs are attached, as for a watch.
    process.wait_until_watching()?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    let done = process.finish(TRIAGE_DEADLINE)?;
    ensure!(!done.timed_out, "triage did not end by itself:\n{}", done.describe());
    Ok((Triage { exit_code: done.status.code(), done }, dig))
}

/// The finding's evidence from `source` (`traffic` or `config`).
fn evidence<'a>(finding: &'a Value, source: &str) -> Vec<&'a Value> {
    finding
        .get("evidence")
        .and_then(Value::as_array)
        .map(|all| all.iter().filter(|e| str_at(e, "/source") == Some(source)).collect())
        .unwrap_or_default()
}

#[test]
fn bridge_nf_call_iptables_off_ranks_conntrack_skip_first_with_both_evidences() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let (triage, dig) = triage_with_dig(&lab, &["--output", "json"])?;
    dig.expect_timed_out().context("dig should time out on this node")?;
    let w = triage.json_with_findings()?;
    let first = first_finding_seen_twice(&w, "conntrack_skip")?;
    expect_u64(first, "/rank", 1)?;
    ensure!(
        str_at(first, "/headline").is_some_and(|h| h.starts_with("DNS replies skip conntrack on bridge cni0: ")),
        "the traffic finding names the problem: {first}"
    );

    let traffic = evidence(first, "traffic");
    let [traffic] = traffic.as_slice() else { anyhow::bail!("one traffic evidence expected: {first}") };
    ensure!(str_at(traffic, "/client").and_then(ip_of) == Some(CLIENT_IP), "the client's query: {traffic}");
    expect_str(traffic, "/expected_source", &format!("{CLUSTER_DNS_IP}:53"))?;
    expect_str(traffic, "/actual_source", &format!("{SERVER_IP}:53"))?;
    ensure!(u64_at(traffic, "/query/id") == dig.id.map(u64::from), "the dig's query: {traffic}");

    let config = evidence(first, "config");
    let [config] = config.as_slice() else { anyhow::bail!("one config evidence expected: {first}") };
    expect_str(config, "/sysctls/net.bridge.bridge-nf-call-iptables", "0")?;
    ensure!(config.get("bridges") == Some(&serde_json::json!([BRIDGE])), "the bridge: {config}");
    expect_str(config, "/netns/name", lab.netns(Ns::Node))?;

    ensure!(
        first.get("example").and_then(Value::as_array).is_some_and(|e| e.iter().any(|p| stage_is(
            p,
            "bridge-out",
            CLIENT_VETH
        ))),
        "the example path shows the reply leaving the bridge towards the client: {first}"
    );
    ensure!(fix_lines(first).contains(&"sysctl -w net.bridge.bridge-nf-call-iptables=1"), "the fix: {first}");
    // The config finding was merged, not reported a second time.
    ensure!(w.findings_of("conntrack_skip").count() == 1, "one conntrack_skip finding:\n{}", w.describe());

    let s = &w.summary;
    expect_u64(s, "/exit_code", 1)?;
    ensure!(
        str_at(s, "/verdict").is_some_and(|v| v.starts_with("DNS replies skip conntrack on bridge cni0: ")),
        "verdict: {s}"
    );
    expect_u64(s, "/findings", w.findings.len() as u64)?;
    let checks = s.pointer("/namespaces/0/checks").and_then(Value::as_array).context("checks")?;
    let bridge_nf = checks
        .iter()
        .find(|c| str_at(c, "/check") == Some("bridge-nf-call-iptables"))
        .context("bridge-nf-call-iptables check")?;
    expect_str(bridge_nf, "/value", "0")?;
    expect_str(bridge_nf, "/status", "finding")?;
    Ok(())
}

#[test]
fn text_report_starts_with_the_verdict() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let (triage, _) = triage_with_dig(&lab, &[])?;
    triage.expect_exit(1, "findings")?;
    let out = &triage.done.stdout;
    let first = out.lines().next().unwrap_or_default();
    ensure!(
        first.starts_with(
            "verdict: DNS replies skip conntrack on bridge cni0: 10.244.0.5 gets answers from 10.244.0.7:53"
        ),
        "the first line is the verdict:\n{out}"
    );
    for want in [
        "┏━ 1. conntrack_skip ━━ seen in traffic, confirmed by the node's configuration",
        "config: bridges: cni0",
        "net.bridge.bridge-nf-call-iptables = 0",
        // br_netfilter is in this kernel: the fix is the sysctl, with no module to load.
        "fix: sysctl -w net.bridge.bridge-nf-call-iptables=1",
        "FAIL bridge-nf-call-iptables",
        "exit code 1: findings",
    ] {
        ensure!(out.contains(want), "missing {want:?}:\n{out}");
    }
    ensure!(!out.contains("modprobe"), "no modprobe when the module is loaded:\n{out}");
    ensure!(!out.contains('\x1b'), "no colour when stdout is not a terminal:\n{out}");
    Ok(())
}

#[test]
fn reject_rule_is_netfilter_reject_from_traffic_and_ruleset() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables("-A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited")?;
    let (triage, dig) = triage_with_dig(&lab, &["--output", "json"])?;
    ensure!(!dig.answered(), "dig should be rejected:\n{}", dig.output);
    // The rejected packets and the rule are one finding.
    let w = triage.json_with_findings()?;
    let first = first_finding_seen_twice(&w, "netfilter_reject")?;
    // The rejected packet, and (once --dns-timeout passed within the window) the query that
    // therefore looked unanswered to the watch.
    let traffic = evidence(first, "traffic");
    let (rejected, unanswered) = match traffic.as_slice() {
        [rejected] => (*rejected, None),
        [rejected, unanswered] => (*rejected, Some(*unanswered)),
        _ => anyhow::bail!("the rejected packet and at most its timeout: {first}"),
    };
    expect_str(rejected, "/hook", "FORWARD")?;
    expect_str(rejected, "/icmp", "host-prohibited")?;
    if let Some(unanswered) = unanswered {
        ensure!(u64_at(unanswered, "/query/id") == dig.id.map(u64::from), "the dig's query: {unanswered}");
        ensure!(unanswered.get("actual_source") == Some(&Value::Null), "no reply: {unanswered}");
    }
    let config = evidence(first, "config");
    let [config] = config.as_slice() else { anyhow::bail!("one config evidence: {first}") };
    expect_str(config, "/rule/chain", "FORWARD")?;
    expect_u64(config, "/rule/rule", 1)?;
    ensure!(
        str_at(config, "/rule/rule_text").is_some_and(|t| t.contains("--dport 53") && t.contains("REJECT")),
        "the rule's text: {config}"
    );
    // The rule is reported once. The rejected query looked unanswered to the watch; the reject
    // explains it, so there is no separate dns_timeout, and nothing else is wrong.
    w.only_finding("netfilter_reject")?;
    Ok(())
}

#[test]
fn healthy_lab_exits_0_without_findings() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (triage, dig) = triage_with_dig(&lab, &["--output", "json"])?;
    dig.expect_answers(&[TEST_A])?;
    triage.expect_exit(0, "healthy")?;
    let w = triage.json()?;
    w.expect_no_findings("no findings expected")?;
    let s = &w.summary;
    expect_str(s, "/verdict", "healthy: no findings")?;
    ensure!(u64_at(s, "/exit_code") == Some(0) && u64_at(s, "/findings") == Some(0), "summary: {s}");
    // Triage watches findings-only: a healthy exchange sends nothing to trace.
    ensure!(
        u64_at(s, "/packets") == Some(0) && u64_at(s, "/lost") == Some(0),
        "a healthy node's traffic gives triage nothing to read: {s}"
    );
    // What a findings-only watch cannot see is said, even on a kernel that shows everything.
    let blind: Vec<&str> =
        s["blind_spots"].as_array().context("blind_spots")?.iter().filter_map(|b| str_at(b, "/missing")).collect();
    ensure!(
        blind == tracer_tests::expected_blind_spots(&[], &["answered_replies"]),
        "triage states what findings-only (and this kernel) cannot see: {s}"
    );
    let namespaces = s.get("namespaces").and_then(Value::as_array).context("namespaces")?;
    ensure!(namespaces.len() == 1, "only the node's namespace is checked from inside it: {s}");
    expect_str(&namespaces[0], "/name", lab.netns(Ns::Node))?;
    for check in namespaces[0].get("checks").and_then(Value::as_array).context("checks")? {
        ensure!(str_at(check, "/status") != Some("finding"), "a failed check on a healthy node: {check}");
    }
    Ok(())
}

#[test]
fn from_the_host_it_checks_namespaces_that_hold_bridges() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    // In the host's namespace: the lab's node is one of the namespaces under /run/netns. Other
    // tests' labs may be there too, so only this lab's namespaces are looked at.
    let out = run_tracer(&["triage", "--duration", "1", "--output", "json"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "this lab alone is a finding: exit 1 expected\n{stdout}\n{stderr}");
    let w = WatchJson::parse(&stdout)?;
    let node = lab.netns(Ns::Node);
    let namespaces = w.summary.get("namespaces").and_then(Value::as_array).context("namespaces")?;
    let ours = namespaces
        .iter()
        .find(|ns| str_at(ns, "/name") == Some(node))
        .with_context(|| format!("the lab's node namespace {node} was not checked: {}", w.summary))?;
    ensure!(ours.get("current") == Some(&Value::Bool(false)), "not the namespace tracer runs in: {ours}");
    for pod in [Ns::Client, Ns::Server] {
        ensure!(
            namespaces.iter().all(|ns| str_at(ns, "/name") != Some(lab.netns(pod))),
            "a namespace without a bridge is not reported: {}",
            w.summary
        );
    }
    let finding = w
        .findings_of("conntrack_skip")
        .find(|f| str_at(f, "/netns/name") == Some(node))
        .with_context(|| format!("no conntrack_skip for {node}:\n{}", w.describe()))?;
    ensure!(finding.get("seen_in") == Some(&serde_json::json!(["config"])), "config only (not watched): {finding}");
    let in_namespace = format!("ip netns exec {node} sysctl -w net.bridge.bridge-nf-call-iptables=1");
    ensure!(fix_lines(finding).contains(&in_namespace.as_str()), "the fix enters the namespace: {finding}");
    Ok(())
}

#[test]
fn without_privileges_it_could_not_run() -> Result<()> {
    let tracer = tracer_bin()?;
    // Nobody, with no capabilities left: the kernel programs cannot be loaded.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(&tracer)
        .args(["triage", "--duration", "1"])
        .output()
        .context("running setpriv (util-linux)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2),
        "exit code 2 (could not run) expected, got {:?}: {stderr}",
        out.status.code()
    );
    ensure!(stderr.contains("tracer needs root"), "says what is missing: {stderr}");
    ensure!(
        out.stdout.is_empty(),
        "no report from a run that did not happen: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}
