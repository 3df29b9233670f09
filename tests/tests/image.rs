//! tracer's image as users run it: the archive `cargo xtask image` builds is imported into the
//! test node's containerd and run with `ctr run` with the privileges deploy/daemonset.yaml
//! gives it (the node's network namespace, the runtime's default seccomp profile, its
//! capabilities and no others, BTF and the runtime's directory mounted read-only), and it names the broken node's finding, pods
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

/// deploy/daemonset.yaml, as written.
fn manifest() -> Result<String> {
    Ok(std::fs::read_to_string(tracer_tests::workspace_root().join("deploy/daemonset.yaml"))?)
}

/// The capabilities deploy/daemonset.yaml adds (`add: [A, B]`), and that it drops all others.
fn manifest_capabilities(manifest: &str) -> Result<Vec<String>> {
    ensure!(manifest.contains("drop: [ALL]"), "the manifest drops every capability first");
    let added = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: [").and_then(|rest| rest.strip_suffix(']')))
        .context("no `add: [...]` capabilities in deploy/daemonset.yaml")?;
    Ok(added.split(',').map(|c| c.trim().to_string()).collect())
}

/// The settings of the manifest's pod, line by line (`key: value`, comments left out).
fn settings(manifest: &str) -> Vec<(String, String)> {
    manifest
        .lines()
        .map(|l| l.split(" #").next().unwrap_or_default().trim().trim_start_matches("- "))
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect()
}

#[test]
fn the_manifest_asks_for_least_privilege() -> Result<()> {
    let manifest = manifest()?;
    let settings = settings(&manifest);
    let value =
        |key: &str| -> Vec<&str> { settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect() };
    // Only the node's network namespace: nothing else of the node's is shared.
    ensure!(value("hostNetwork") == ["true"], "hostNetwork: {:?}", value("hostNetwork"));
    for shared in ["hostPID", "hostIPC", "hostUsers"] {
        ensure!(value(shared).is_empty(), "{shared} is not asked for");
    }
    ensure!(value("automountServiceAccountToken") == ["false"], "no service-account token is mounted");
    ensure!(
        value("type").contains(&"RuntimeDefault") && !value("type").contains(&"Unconfined"),
        "seccomp: {:?}",
        value("type")
    );
    ensure!(value("privileged") == ["false"] && value("allowPrivilegeEscalation") == ["false"], "not privileged");
    ensure!(value("readOnlyRootFilesystem") == ["true"], "a read-only root");
    let mut added = manifest_capabilities(&manifest)?;
    added.sort();
    ensure!(added == ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"], "capabilities added: {added:?}");
    // Metrics on the node's own address, from the downward API.
    ensure!(value("fieldPath") == ["status.hostIP"], "HOST_IP comes from status.hostIP");
    ensure!(
        manifest.contains("--metrics=$(HOST_IP):9742") && !manifest.contains("0.0.0.0"),
        "metrics bound to HOST_IP"
    );
    // Probes with explicit timeouts; memory bounded.
    ensure!(value("timeoutSeconds").len() == 2, "both probes give a timeout: {:?}", value("timeoutSeconds"));
    ensure!(value("memory").len() == 2, "a memory request and limit: {:?}", value("memory"));
    // The runtime's directory, never its socket file, mounted read-only.
    ensure!(!value("type").contains(&"Socket"), "the runtime socket is not mounted as a file");
    ensure!(value("mountPath").contains(&"/run/containerd"), "the runtime's directory is mounted");
    ensure!(value("readOnly").iter().all(|v| *v == "true") && value("readOnly").len() == 2, "mounts are read-only");
    Ok(())
}

#[test]
fn the_image_run_by_containerd_names_the_finding_and_the_pods() -> Result<()> {
    let archive = image_archive()?;
    let added = manifest_capabilities(&manifest()?)?;
    let cluster = Cluster::new(false)?;
    let node = &cluster.node;
    let imported = node.ctr(&["images", "import", "--snapshotter", "native"], Some(&archive))?;
    ensure!(imported.contains("localhost/tracer:latest"), "ctr imported: {imported}");

    ensure!(node.socket().parent() == Some(node.dir()), "the node's socket is in its directory");
    let socket = node.socket();
    let container = format!("tracer-{}", std::process::id());
    let mut ctr = std::process::Command::new("ctr");
    ctr.arg("--address").arg(&socket).args(["--namespace", "k8s.io", "run", "--rm", "--snapshotter", "native"]);
    // hostNetwork: containerd runs in the node's namespace, and so does a container that
    // gets none of its own. seccomp RuntimeDefault: containerd's default profile.
    ctr.args(["--net-host", "--seccomp"]);
    for capability in DEFAULT_CAPABILITIES.iter().filter(|c| !added.iter().any(|a| a == *c)) {
        ctr.arg("--cap-drop").arg(format!("CAP_{capability}"));
    }
    for capability in &added {
        ctr.arg("--cap-add").arg(format!("CAP_{capability}"));
    }
    ctr.args(["--mount", "type=bind,src=/sys/kernel/btf,dst=/sys/kernel/btf,options=rbind:ro"])
        .arg("--mount")
        .arg(format!("type=bind,src={},dst=/run/containerd,options=bind:ro", node.dir().display()))
        .args(["localhost/tracer:latest", &container])
        .args(["/usr/local/bin/tracer", "watch", "--port", "53", "--output", "json"])
        .args(["--cri-socket", "/run/containerd/containerd.sock"]);
    let mut tracer = Process::spawn(ctr, "ctr run localhost/tracer:latest watch".to_string(), StdoutMode::Capture)?;
    tracer.wait_until_watching()?;
    // The watch runs filtered by the runtime's default seccomp profile (mode 2: filter).
    let tasks = node.ctr(&["tasks", "ls"], None)?;
    let pid = tasks
        .lines()
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next() == Some(container.as_str())).then(|| fields.next()).flatten()
        })
        .with_context(|| format!("no task {container} in:\n{tasks}"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    ensure!(status.lines().any(|l| l == "Seccomp:\t2"), "tracer runs under a seccomp filter:\n{status}");
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
