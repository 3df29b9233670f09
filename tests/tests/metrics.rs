//! `tracer watch --metrics`: a real Prometheus server scrapes the endpoint of a watch of the
//! test node, and `promtool check metrics` accepts what it serves. tracer runs in the test's
//! own namespace and reaches the node with --netns, so its metrics port is on this
//! namespace's loopback, where the Prometheus server is.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::{Lab, LabConfig, Ns, StdoutMode, CLUSTER_DNS_IP, STOP_GRACE, TEST_NAME};
use tracer_tests::node::Cluster;
use tracer_tests::process::Process;

/// `GET path` from `address`: the status code and the body.
fn get(address: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").with_context(|| format!("no HTTP answer: {answer}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("no status: {head}"))?;
    Ok((status, body.to_string()))
}

/// Polls `probe` every 200 ms until it gives a value, for at most `limit`.
fn eventually<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A port on loopback that nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The value of the first series a Prometheus query answers with.
fn query(prometheus: &str, promql: &str) -> Result<Option<f64>> {
    let encoded: String = promql
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let Ok((200, body)) = get(prometheus, &format!("/api/v1/query?query={encoded}")) else { return Ok(None) };
    let answer: Value = serde_json::from_str(&body).with_context(|| format!("Prometheus answered {body}"))?;
    Ok(answer.pointer("/data/result/0/value/1").and_then(Value::as_str).and_then(|v| v.parse().ok()))
}

/// `tracer watch --metrics` of network namespace `netns` with `extra` arguments, serving on
/// this namespace's loopback: the watch and the address it announced.
fn metrics_watch(netns: &str, extra: &[&str]) -> Result<(Process<'static>, String)> {
    let mut cmd = Command::new(tracer_tests::tracer_bin()?);
    cmd.args(["watch", "--port", "53", "--output", "none", "--metrics", "127.0.0.1:0", "--netns", netns]).args(extra);
    let mut watch = Process::spawn(cmd, "tracer watch --metrics".to_string(), StdoutMode::Capture)?;
    watch.wait_until_watching()?;
    let stderr = watch.stderr_so_far();
    let address = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tracer: serving metrics on http://"))
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .with_context(|| format!("no metrics address announced:\n{stderr}"))?
        .to_string();
    Ok((watch, address))
}

#[test]
fn idle_clients_do_not_hold_up_the_probes() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (mut watch, address) = metrics_watch(lab.netns(Ns::Node), &[])?;
    eventually(Duration::from_secs(5), "the watch was not ready", || {
        Ok((get(&address, "/readyz")?.0 == 200).then_some(()))
    })?;

    // 50 clients connect and say nothing, as a port scanner or a stuck scraper on the node
    // network does; one more sends its request a byte at a time.
    let mut idle = (0..50).map(|_| TcpStream::connect(&address)).collect::<std::io::Result<Vec<_>>>()?;
    let mut dripping = TcpStream::connect(&address)?;
    dripping.write_all(b"GET /met")?;
    idle.push(dripping);
    std::thread::sleep(Duration::from_millis(300));
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let started = Instant::now();
        let (status, body) = get(&address, probe)?;
        let took = started.elapsed();
        eprintln!("{probe}: {status} in {took:?} beside 51 idle clients");
        ensure!(status == 200, "{probe} answered {status} beside idle clients: {body}");
        ensure!(took < Duration::from_millis(200), "{probe} took {took:?} beside 51 idle clients");
        if probe == "/metrics" {
            let refused = "tracer_metrics_refused_connections_total 0";
            ensure!(
                body.lines().any(|l| l == refused),
                "51 clients are well within what is served: no `{refused}` in\n{body}"
            );
        }
    }
    // The server closes each idle connection after its deadline instead of keeping it.
    let started = Instant::now();
    for mut client in idle {
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).context("an idle client was not closed by the server")?;
    }
    ensure!(started.elapsed() < Duration::from_secs(6), "idle clients were held for {:?}", started.elapsed());

    watch.signal(libc::SIGTERM)?;
    let done = watch.finish(STOP_GRACE)?;
    ensure!(done.status.success(), "{}", done.describe());
    Ok(())
}

#[test]
fn prometheus_scrapes_findings_and_node_checks() -> Result<()> {
    let cluster = Cluster::new(false)?;
    let socket = cluster.node.socket();
    let (mut watch, address) = metrics_watch(cluster.node.netns(), &["--cri-socket", &socket.to_string_lossy()])?;

    cluster.node.dig(&cluster.client, CLUSTER_DNS_IP, TEST_NAME)?.expect_timed_out()?;
    let finding = r#"tracer_findings_total{kind="conntrack_skip",bridge="cni0",hook="",rule="",owner=""} 1"#;
    let metrics = eventually(Duration::from_secs(10), "the finding was not counted", || {
        let (status, body) = get(&address, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body.contains(finding).then_some(body))
    })?;
    for line in [
        r#"tracer_node_check{check="bridge-nf-call-iptables",status="finding"} 1"#,
        r#"tracer_node_check{check="ip_forward",status="ok"} 1"#,
        r#"tracer_node_check_findings{kind="conntrack_skip"} 1"#,
        "# TYPE tracer_packets_total counter",
        r#"tracer_packets_total{stage="bridge-out"} 2"#,
        "tracer_lost_records_total 0",
        r#"tracer_evicted_total{what="dns_queries"} 0"#,
        r#"tracer_evicted_total{what="findings"} 0"#,
    ] {
        ensure!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
    // This kernel shows every finding to a tracing watch: no finding is unavailable.
    ensure!(
        !metrics.lines().any(|l| l.starts_with("tracer_finding_unavailable{")),
        "no finding is unavailable here:\n{metrics}"
    );
    ensure!(
        !metrics.contains(&cluster.client.ip) && !metrics.contains("default/client"),
        "no addresses or pods as labels:\n{metrics}"
    );
    for probe in ["/healthz", "/readyz"] {
        let (status, body) = get(&address, probe)?;
        ensure!(status == 200, "{probe} answered {status}: {body}");
    }

    // promtool, the exposition format's own checker, finds nothing to say.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus; `cargo xtask setup`)")?;
    check.stdin.take().context("promtool's stdin")?.write_all(metrics.as_bytes())?;
    let checked = check.wait_with_output()?;
    ensure!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {checked:?}"
    );

    // A Prometheus server scrapes it every second.
    let dir = cluster.node.dir();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{address}']\n"),
    )?;
    let web = format!("127.0.0.1:{}", free_port()?);
    let mut server = Command::new("prometheus");
    server
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"));
    let mut prometheus = Process::spawn(server, "prometheus".to_string(), StdoutMode::Capture)?;
    let scraped = eventually(Duration::from_secs(60), "Prometheus did not scrape the finding", || {
        query(&web, r#"tracer_findings_total{job="tracer",kind="conntrack_skip",bridge="cni0"}"#)
    });
    let scraped = scraped.with_context(|| format!("prometheus:\n{}", prometheus.stderr_so_far()))?;
    ensure!(scraped == 1.0, "Prometheus has {scraped} conntrack_skip findings");
    let up = query(&web, r#"up{job="tracer"}"#)?;
    ensure!(up == Some(1.0), "the target is up: {up:?}");
    let check = query(&web, r#"tracer_node_check{check="bridge-nf-call-iptables",status="finding"}"#)?;
    ensure!(check == Some(1.0), "the node check reached Prometheus: {check:?}");
    prometheus.signal(libc::SIGTERM)?;
    prometheus.finish(STOP_GRACE)?;

    // --output none: nothing on stdout, the summary on stderr.
    watch.signal(libc::SIGTERM)?;
    let done = watch.finish(STOP_GRACE)?;
    ensure!(done.status.success(), "{}", done.describe());
    ensure!(done.stdout.is_empty(), "--output none prints nothing on stdout: {}", done.stdout);
    ensure!(
        done.stderr.lines().any(|l| l.starts_with("-- ") && l.contains("1 finding")),
        "the summary on stderr:\n{}",
        done.stderr
    );
    Ok(())
}

#[test]
fn the_alerting_rules_are_valid_and_fire_as_their_tests_say() -> Result<()> {
    let root = tracer_tests::workspace_root();
    for (args, what) in [
        (vec!["check", "rules", "deploy/alerts.yaml"], "promtool check rules"),
        (vec!["test", "rules", "tests/data/alerts_test.yaml"], "promtool test rules"),
    ] {
        let out = Command::new("promtool").args(&args).current_dir(root).output().context("running promtool")?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success() && said.contains("SUCCESS"), "{what}:\n{said}");
    }
    Ok(())
}
