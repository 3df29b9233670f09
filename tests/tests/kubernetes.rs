//! tracer on a Kubernetes node: pods named from the container runtime's CRI API, on packet
//! lines, findings and captures; keeping to chosen pods; another network namespace with
//! --netns. The node is real: containerd with its CRI plugin, the CNI bridge plugin, pod
//! sandboxes created through the CRI (see `tracer_tests::node`).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::{CLUSTER_DNS_IP, STOP_GRACE, TEST_NAME};
use tracer_tests::node::{Cluster, NodeConfig, DNS_POD};
use tracer_tests::output::{str_at, WatchJson};
use tracer_tests::run_tracer;

fn pod_at(v: &Value, pointer: &str) -> Option<String> {
    let pod = v.pointer(pointer)?;
    Some(format!("{}/{}", pod.get("namespace")?.as_str()?, pod.get("name")?.as_str()?))
}

#[test]
fn conntrack_skip_names_the_client_and_dns_pods() -> Result<()> {
    let cluster = Cluster::new(false)?;
    let (client, dns) = (cluster.client.full_name(), cluster.dns.full_name());
    let done = cluster.watch_around_dig(&["--output", "json"])?;
    let json = WatchJson::from_finished(&done)?;
    ensure!(done.stderr.contains("tracer: naming pods from containerd"), "no pod naming announced:\n{}", done.stderr);

    let query = json.find_one("the client's query entering the bridge", |p| {
        str_at(p, "/stage") == Some("bridge-in") && str_at(p, "/dst") == Some(&format!("{CLUSTER_DNS_IP}:53"))
    })?;
    ensure!(pod_at(query, "/src_pod").as_deref() == Some(client.as_str()), "query line: {query}");
    ensure!(query.pointer("/dst_pod") == Some(&Value::Null), "the service address is no pod's: {query}");
    let reply = json.find_one("the backend's reply leaving the bridge", |p| {
        str_at(p, "/stage") == Some("bridge-out") && str_at(p, "/src") == Some(&format!("{}:53", cluster.dns.ip))
    })?;
    ensure!(pod_at(reply, "/src_pod").as_deref() == Some(dns.as_str()), "reply line: {reply}");
    ensure!(pod_at(reply, "/dst_pod").as_deref() == Some(client.as_str()), "reply line: {reply}");

    let finding = json.one_finding("conntrack_skip")?;
    ensure!(pod_at(finding, "/client_pod").as_deref() == Some(client.as_str()), "{finding}");
    ensure!(pod_at(finding, "/actual_source_pod").as_deref() == Some(dns.as_str()), "{finding}");
    ensure!(finding.pointer("/expected_source_pod") == Some(&Value::Null), "{finding}");
    Ok(())
}

#[test]
fn forward_reject_names_the_pods_in_text() -> Result<()> {
    let cluster = Cluster::new(true)?;
    cluster.node.iptables("-A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited")?;
    let (client, dns) = (&cluster.client, &cluster.dns);
    let done = cluster.watch_around_dig(&[])?;
    ensure!(done.status.success(), "{}", done.describe());
    let out = &done.stdout;
    let query_line = out
        .lines()
        .find(|l| l.contains("bridge-in") && l.contains(&format!("({})", client.full_name())))
        .with_context(|| format!("no bridge-in line naming the client pod:\n{out}"))?;
    ensure!(query_line.contains(&format!("{CLUSTER_DNS_IP}:53")), "{query_line}");
    let dropped = out.lines().find(|l| l.contains("dropped")).with_context(|| format!("no dropped line:\n{out}"))?;
    ensure!(
        dropped.contains(&format!("({})", client.full_name()))
            && dropped.contains(&format!("{}:53 ({})", dns.ip, dns.full_name())),
        "the dropped line names both pods: {dropped}"
    );
    ensure!(out.contains("FINDING netfilter_reject"), "no finding:\n{out}");
    let evidence = out
        .lines()
        .find(|l| l.contains("stopped in hook FORWARD"))
        .with_context(|| format!("no evidence line:\n{out}"))?;
    ensure!(
        evidence.contains(&format!("({})", client.full_name())) && evidence.contains(&format!("({})", dns.full_name())),
        "the finding names both pods: {evidence}"
    );
    Ok(())
}

#[test]
fn a_capture_and_its_report_name_the_pods() -> Result<()> {
    let cluster = Cluster::new(false)?;
    let (client, dns) = (cluster.client.full_name(), cluster.dns.full_name());
    let file = cluster.node.dir().join("dns.pcapng");
    let file_arg = file.to_str().context("capture path")?;
    let done = cluster.watch_around_dig(&["--output", "json", "--write", file_arg])?;
    ensure!(done.status.success(), "{}", done.describe());

    let report = run_tracer(&["report", file_arg])?;
    let text = String::from_utf8_lossy(&report.stdout);
    ensure!(report.status.success(), "report failed: {text}{}", String::from_utf8_lossy(&report.stderr));
    ensure!(
        text.lines().any(|l| l.contains("bridge-out")
            && l.contains(&format!("({dns}) → "))
            && l.contains(&format!("({client})"))),
        "the report's lines name both pods:\n{text}"
    );
    // Made again from the packets, the finding names the pods they recorded.
    let client_line = text.lines().find(|l| l.contains("┃ client ")).with_context(|| format!("no finding:\n{text}"))?;
    ensure!(client_line.contains(&format!("({client})")), "{client_line}");
    let reply_line =
        text.lines().find(|l| l.contains("┃ reply from ")).with_context(|| format!("no reply line:\n{text}"))?;
    ensure!(reply_line.contains(&format!("({dns})")), "{reply_line}");

    let comments = Command::new("tshark")
        .args(["-r", file_arg, "-T", "fields", "-e", "frame.comment"])
        .stdin(Stdio::null())
        .output()
        .context("running tshark (`cargo xtask setup` installs it)")?;
    let comments = String::from_utf8_lossy(&comments.stdout);
    ensure!(
        comments.lines().any(|c| c.contains("bridge-in") && c.contains(&format!("({client}) → {CLUSTER_DNS_IP}:53"))),
        "the capture's comments name the client pod:\n{comments}"
    );
    Ok(())
}

enum Shown {
    All,
    OfDnsPod,
    None,
}

/// Whether the packet line is from or to `ip`.
fn packet_names(packet: &Value, ip: &str) -> bool {
    ["/src", "/dst"].iter().any(|end| str_at(packet, end).is_some_and(|addr| addr.starts_with(&format!("{ip}:"))))
}

#[test]
fn pod_and_namespace_filters_keep_to_the_chosen_pods() -> Result<()> {
    let cluster = Cluster::new(true)?;
    let client = cluster.client.full_name();
    // Every line of the watch has the client at one end; those from the bridge to the DNS
    // pod and back have the DNS pod (the others have the service address).
    for (args, expected) in [
        (vec!["--pod", client.as_str()], Shown::All),
        (vec!["--namespace", DNS_POD.0], Shown::OfDnsPod),
        (vec!["--pod", "default/someone-else"], Shown::None),
        (vec!["--namespace", "monitoring"], Shown::None),
    ] {
        let mut argv = vec!["--output", "json"];
        argv.extend(args.iter().copied());
        let done = cluster.watch_around_dig(&argv)?;
        let json = WatchJson::from_finished(&done)?;
        let total = json.summary.pointer("/packets").and_then(Value::as_u64).unwrap_or(0) as usize;
        ensure!(total >= 4, "the query and its reply were traced: {}", json.summary);
        let shown = json.packets.len();
        let right = match expected {
            Shown::All => shown == total,
            // Not the client's lines to the service address.
            Shown::OfDnsPod => {
                (2..total).contains(&shown) && json.packets.iter().all(|p| packet_names(p, &cluster.dns.ip))
            }
            Shown::None => shown == 0,
        };
        ensure!(right, "{args:?} shows {shown} of {total} lines:\n{}", json.describe());
        for packet in &json.packets {
            let pods = [pod_at(packet, "/src_pod"), pod_at(packet, "/dst_pod")];
            ensure!(
                pods.iter().flatten().any(|pod| pod == args[1] || pod.starts_with(&format!("{}/", args[1]))),
                "{args:?} shows only lines of the chosen pods: {packet}"
            );
        }
    }
    // Without a runtime to name pods, a filter cannot be kept: refused at start.
    let refused = cluster
        .node
        .command(&[
            tracer_tests::tracer_bin()?.to_str().context("path")?,
            "watch",
            "--pod",
            "a/b",
            "--cri-socket",
            "/nonexistent.sock",
        ])
        .output()?;
    ensure!(refused.status.code() == Some(2), "a filter without a runtime is refused: {refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(stderr.lines().count() == 1 && stderr.contains("--cri-socket"), "one line saying what to do: {stderr}");
    Ok(())
}

#[test]
fn a_pod_started_during_the_watch_is_named() -> Result<()> {
    // Three addresses: the client, the DNS pod and one more, so a pod started after one is
    // removed gets the address it freed.
    let mut cluster = Cluster::on(NodeConfig { pod_addresses: 3, ..NodeConfig::new(true) })?;
    let socket = cluster.node.socket();
    let socket = socket.to_str().context("socket path")?.to_string();
    let mut watch =
        cluster.node.spawn_tracer(&["watch", "--port", "53", "--output", "json", "--cri-socket", &socket])?;
    watch.wait_until_watching()?;
    let late = cluster.node.run_pod("default", "started-later")?;
    // The kubelet starts the pod's containers after its sandbox: a moment passes before the
    // pod sends anything.
    std::thread::sleep(Duration::from_secs(1));
    let dig = cluster.node.dig(&late, CLUSTER_DNS_IP, TEST_NAME)?;
    dig.expect_answered()?;
    std::thread::sleep(Duration::from_millis(300));
    watch.signal(libc::SIGTERM)?;
    let json = WatchJson::from_finished(&watch.finish(STOP_GRACE)?)?;
    let query = json.find_one("the new pod's query entering the bridge", |p| {
        str_at(p, "/stage") == Some("bridge-in")
            && str_at(p, "/src").is_some_and(|src| src.starts_with(&format!("{}:", late.ip)))
    })?;
    ensure!(pod_at(query, "/src_pod").as_deref() == Some(late.full_name().as_str()), "the new pod is named: {query}");

    // Gone, and its address taken by a new pod: the address names the new pod.
    cluster.node.remove_pod(&late)?;
    let again = cluster.node.run_pod("default", "took-the-address")?;
    ensure!(again.ip == late.ip, "the CNI plugin hands the freed address out again ({} then {})", late.ip, again.ip);
    cluster.client = again;
    let done = cluster.watch_around_dig(&["--output", "json"])?;
    let json = WatchJson::from_finished(&done)?;
    let query = json.find_one("the query from the reused address", |p| str_at(p, "/stage") == Some("bridge-in"))?;
    ensure!(
        pod_at(query, "/src_pod").as_deref() == Some("default/took-the-address"),
        "the address's new pod is named: {query}"
    );
    Ok(())
}

#[test]
fn netns_watches_a_node_namespace_by_name_path_or_pid() -> Result<()> {
    let cluster = Cluster::new(false)?;
    let name = cluster.node.netns().to_string();
    let path = format!("/run/netns/{name}");
    let socket = cluster.node.socket();
    let socket = socket.to_str().context("socket path")?;
    let tracer = tracer_tests::tracer_bin()?;
    for target in [name.as_str(), path.as_str(), &cluster.dns.pid.to_string()] {
        // Started in the test's own namespace: --netns alone takes it to the node (or, by
        // the DNS pod's pid, into that pod, which then sees the query arrive on eth0... as no
        // bridge: only the node's namespace has one).
        let mut cmd = Command::new(&tracer);
        cmd.args([
            "watch",
            "--port",
            "53",
            "--output",
            "json",
            "--duration",
            "4",
            "--netns",
            target,
            "--cri-socket",
            socket,
        ]);
        let started = std::time::Instant::now();
        let run = std::thread::scope(|scope| {
            let watch = scope.spawn(|| cmd.stdin(Stdio::null()).output());
            std::thread::sleep(Duration::from_millis(2500));
            let dig = cluster.node.dig(&cluster.client, CLUSTER_DNS_IP, TEST_NAME);
            (watch.join(), dig)
        });
        let (Ok(out), dig) = run else { anyhow::bail!("the watch thread panicked") };
        let out = out.context("running tracer")?;
        dig?;
        ensure!(out.status.success(), "--netns {target}: {}", String::from_utf8_lossy(&out.stderr));
        let json = WatchJson::parse(&String::from_utf8_lossy(&out.stdout))?;
        if target == cluster.dns.pid.to_string() {
            ensure!(
                json.findings.is_empty(),
                "a pod's namespace has no bridge to see the finding on: {}",
                json.describe()
            );
        } else {
            json.one_finding("conntrack_skip").with_context(|| format!("--netns {target}"))?;
        }
        ensure!(started.elapsed() < Duration::from_secs(20), "the watch ran to its --duration");
    }
    let wrong = Command::new(&tracer).args(["watch", "--netns", "no-such-namespace-here"]).output()?;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    ensure!(wrong.status.code() == Some(2) && stderr.contains("ip netns list"), "a wrong name is one line: {stderr}");
    Ok(())
}

#[test]
fn triage_names_the_pods_of_a_traffic_finding() -> Result<()> {
    let cluster = Cluster::new(false)?;
    let socket = cluster.node.socket();
    let socket = socket.to_str().context("socket path")?;
    let mut triage =
        cluster.node.spawn_tracer(&["triage", "--duration", "4", "--output", "json", "--cri-socket", socket])?;
    // The window opens once the programs are attached.
    triage.wait_until_watching()?;
    cluster.node.dig(&cluster.client, CLUSTER_DNS_IP, TEST_NAME)?.expect_timed_out()?;
    let done = triage.finish(Duration::from_secs(30))?;
    ensure!(done.status.code() == Some(1), "triage found the problem: {}", done.describe());
    let first: Value = serde_json::from_str(done.stdout.lines().next().context("no output")?)?;
    ensure!(str_at(&first, "/kind") == Some("conntrack_skip"), "{first}");
    let traffic = first
        .pointer("/evidence")
        .and_then(Value::as_array)
        .and_then(|evidence| evidence.iter().find(|e| str_at(e, "/source") == Some("traffic")))
        .with_context(|| format!("no traffic evidence: {first}"))?;
    ensure!(pod_at(traffic, "/client_pod").as_deref() == Some(cluster.client.full_name().as_str()), "{traffic}");
    ensure!(pod_at(traffic, "/actual_source_pod").as_deref() == Some(cluster.dns.full_name().as_str()), "{traffic}");
    let example = first.pointer("/example/0").with_context(|| format!("no example: {first}"))?;
    // Triage watches findings-only: its example is the stray reply, from the DNS pod to the client.
    ensure!(pod_at(example, "/src_pod").as_deref() == Some(cluster.dns.full_name().as_str()), "{example}");
    ensure!(pod_at(example, "/dst_pod").as_deref() == Some(cluster.client.full_name().as_str()), "{example}");
    Ok(())
}

#[test]
fn a_runtime_that_stops_answering_stops_naming_pods_until_it_answers_again() -> Result<()> {
    let cluster = Cluster::new(true)?;
    let socket = cluster.node.socket();
    let socket = socket.to_str().context("socket path")?.to_string();
    let mut watch =
        cluster.node.spawn_tracer(&["watch", "--port", "53", "--output", "json", "--cri-socket", &socket])?;
    watch.wait_until_watching()?;
    let lookup = || -> Result<u16> {
        let dig = cluster.node.dig(&cluster.client, CLUSTER_DNS_IP, TEST_NAME)?;
        dig.expect_answered()?;
        dig.query_id()
    };
    let wait_for = |watch: &tracer_tests::process::Process, says: &str, limit: Duration| -> Result<()> {
        let deadline = std::time::Instant::now() + limit;
        while !watch.stderr_so_far().contains(says) {
            ensure!(std::time::Instant::now() < deadline, "no `{says}` within {limit:?}:\n{}", watch.stderr_so_far());
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    };
    let before = lookup()?;
    // containerd hangs: its pods may go and their addresses be handed out again without
    // tracer hearing of it. After 30 s tracer stops naming rather than risk a wrong name.
    let frozen = cluster.node.freeze_runtime()?;
    wait_for(&watch, "has not answered for 30 s", Duration::from_secs(60))?;
    let during = lookup()?;
    drop(frozen);
    wait_for(&watch, "answers again", Duration::from_secs(30))?;
    let after = lookup()?;
    std::thread::sleep(Duration::from_millis(300));
    watch.signal(libc::SIGTERM)?;
    let json = WatchJson::from_finished(&watch.finish(STOP_GRACE)?)?;
    let query_in = |id: u16| {
        json.find_one(&format!("query {id} entering the bridge"), |p| {
            str_at(p, "/stage") == Some("bridge-in") && p.pointer("/dns/id").and_then(Value::as_u64) == Some(id.into())
        })
    };
    let client = cluster.client.full_name();
    ensure!(pod_at(query_in(before)?, "/src_pod") == Some(client.clone()), "named before: {}", query_in(before)?);
    ensure!(
        query_in(during)?["src_pod"].is_null(),
        "named by address only while the runtime hangs: {}",
        query_in(during)?
    );
    ensure!(pod_at(query_in(after)?, "/src_pod") == Some(client), "named again once it answers: {}", query_in(after)?);
    Ok(())
}
