//! tracer's image as users run it: the archive `cargo xtask image` builds is imported into the
//! test node's containerd and run with `ctr run` with the privileges deploy/daemonset.yaml
//! gives it (the node's network namespace, the node's PIDs, its capabilities and no others,
//! BTF and the CRI socket mounted read-only), and it names the broken node's finding, pods
//! included, as the binary does.

use std::path::PathBuf;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::{StdoutMode, CLUSTER_DNS_IP, STOP_GRACE, TEST_NAME};
use tracer_tests::node::Cluster;
use tracer_tests::output::WatchJson;
use tracer_tests::process::Process;

/// The capabilities a container starts with unless told otherwise (the OCI runtime's
/// defaults, which `ctr run` gives); the manifest drops them all.
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `$TRACER_IMAGE` (set by `cargo xtask test`), else `cargo xtask image`'s default archive.
fn image_archive() -> Result<PathBuf> {
    let path = match std::env::var_os("TRACER_IMAGE") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => tracer_tests::workspace_root().join("target/image/tracer.tar"),
    };
    ensure!(
        path.is_file(),
        "no image archive at {}: build it with `cargo xtask image` (`cargo xtask test` does)",
        path.display()
    );
    Ok(path)
}

/// The capabilities deploy/daemonset.yaml adds (`add: [A, B]`), and that it drops all others.
fn manifest_capabilities() -> Result<Vec<String>> {
    let manifest = std::fs::read_to_string(tracer_tests::workspace_root().join("deploy/daemonset.yaml"))?;
    ensure!(manifest.contains("drop: [ALL]"), "the manifest drops every capability first");
    ensure!(
        manifest.contains("hostNetwork: true") && manifest.contains("hostPID: true"),
        "the manifest runs in the node's namespaces"
    );
    let added = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: [").and_then(|rest| rest.strip_suffix(']')))
        .context("no `add: [...]` capabilities in deploy/daemonset.yaml")?;
    Ok(added.split(',').map(|c| c.trim().to_string()).collect())
}

#[test]
fn the_image_run_by_containerd_names_the_finding_and_the_pods() -> Result<()> {
    let archive = image_archive()?;
    let added = manifest_capabilities()?;
    let cluster = Cluster::new(false)?;
    let node = &cluster.node;
    let imported = node.ctr(&["images", "import", "--snapshotter", "native"], Some(&archive))?;
    ensure!(imported.contains("localhost/tracer:latest"), "ctr imported: {imported}");

    let socket = node.socket();
    let mut ctr = std::process::Command::new("ctr");
    ctr.arg("--address").arg(&socket).args(["--namespace", "k8s.io", "run", "--rm", "--snapshotter", "native"]);
    // hostNetwork: containerd runs in the node's namespace, and so does a container that
    // gets none of its own. hostPID: the PID namespace runc itself runs in, this machine's.
    ctr.args(["--net-host", "--with-ns", "pid:/proc/self/ns/pid"]);
    for capability in DEFAULT_CAPABILITIES.iter().filter(|c| !added.iter().any(|a| a == *c)) {
        ctr.arg("--cap-drop").arg(format!("CAP_{capability}"));
    }
    for capability in &added {
        ctr.arg("--cap-add").arg(format!("CAP_{capability}"));
    }
    ctr.args(["--mount", "type=bind,src=/sys/kernel/btf,dst=/sys/kernel/btf,options=rbind:ro"])
        .arg("--mount")
        .arg(format!("type=bind,src={},dst=/run/containerd/containerd.sock,options=bind:ro", socket.display()))
        .args(["localhost/tracer:latest", &format!("tracer-{}", std::process::id())])
        .args(["/usr/local/bin/tracer", "watch", "--port", "53", "--output", "json"])
        .args(["--cri-socket", "/run/containerd/containerd.sock"]);
    let mut tracer = Process::spawn(ctr, "ctr run localhost/tracer:latest watch".to_string(), StdoutMode::Capture)?;
    tracer.wait_until_watching()?;
    let dig = node.dig(&cluster.client, CLUSTER_DNS_IP, TEST_NAME)?;
    dig.expect_timed_out()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    // ctr passes the signal on to the container's process.
    tracer.signal(libc::SIGTERM)?;
    let done = tracer.finish(STOP_GRACE)?;
    let json = WatchJson::from_finished(&done)?;
    ensure!(done.stderr.contains("naming pods from containerd"), "the image names pods:\n{}", done.stderr);
    let finding = json.one_finding("conntrack_skip")?;
    let pod = |field: &str| -> Result<String> {
        let pod = finding.get(field).with_context(|| format!("no {field}: {finding}"))?;
        match (pod.get("namespace").and_then(Value::as_str), pod.get("name").and_then(Value::as_str)) {
            (Some(namespace), Some(name)) => Ok(format!("{namespace}/{name}")),
            _ => bail!("{field} names no pod: {finding}"),
        }
    };
    ensure!(pod("client_pod")? == cluster.client.full_name(), "{finding}");
    ensure!(pod("actual_source_pod")? == cluster.dns.full_name(), "{finding}");
    Ok(())
}
