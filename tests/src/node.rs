//! A Kubernetes node as the kubelet sees it, without the kubelet: containerd (Debian's, with
//! its CRI plugin) runs inside a network namespace of the test's own, with its own root,
//! state and socket under the test's directory, and the CNI `bridge` plugin wires its pods
//! to a bridge `cni0` (10.244.0.0/24) in that namespace. Pods are sandboxes created through
//! the CRI API itself (`RunPodSandbox`) from a pause image built here and imported (no
//! registry), so they get veths on the bridge and addresses from the plugin, as on a real
//! node. A kube-proxy-like DNAT sends the DNS service address 10.96.0.10:53 to a pod that
//! runs dnsmasq.
//!
//! ```text
//!  pod default/client ── vethXXXX ─┐                       ┌─ vethYYYY ── pod kube-system/coredns-…  dnsmasq
//!     10.244.0.N                   └── cni0 10.244.0.1 ────┘               10.244.0.M
//!                                     node netns: containerd, CNI, DNAT 10.96.0.10:53 → 10.244.0.M:53
//! ```
//!
//! Dropping the [`Node`] removes everything, also while a test unwinds from a panic: its pods
//! through the CRI (which deletes their veths and namespaces), then containerd, its shims,
//! the node namespace and the directory.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tonic::transport::Channel;
use tracer_cri::v1::{
    runtime_service_client::RuntimeServiceClient, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};

use crate::lab::{
    check, claim_scratch, delete_netns, dig_entering, dnsmasq_argv, read_lossy, run_on_host, stop_child, Dig,
    StdoutMode, CLUSTER_DNS_IP,
};
use crate::process::{send_signal, Finished, Process};

pub const BRIDGE: &str = "cni0";
pub const SUBNET: &str = "10.244.0.0/24";
pub const GATEWAY: &str = "10.244.0.1";

/// Node namespaces and directories start with this, then the owning process id.
const NAME_PREFIX: &str = "trnode";

/// How long containerd may take to start serving, and a pod to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const CRI_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct NodeConfig {
    /// `net.bridge.bridge-nf-call-iptables` and `-ip6tables` in the node namespace.
    pub bridge_nf_call_iptables: bool,
    /// How many addresses the CNI plugin hands out (from 10.244.0.2 on): when all are taken,
    /// a new pod gets the address a removed one freed.
    pub pod_addresses: u8,
}

impl NodeConfig {
    pub fn new(bridge_nf_call_iptables: bool) -> NodeConfig {
        NodeConfig { bridge_nf_call_iptables, pod_addresses: 16 }
    }
}

/// A pod sandbox the node runs.
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub namespace: String,
    pub name: String,
    /// Its address on the bridge, from the CNI plugin.
    pub ip: String,
    /// The sandbox's process: its network namespace is the pod's.
    pub pid: u32,
}

impl Pod {
    /// `namespace/name`, as tracer names it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A command that runs its arguments in the pod's network namespace.
    pub fn enter(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.pid.to_string(), "-n"]).stdin(Stdio::null());
        cmd
    }
}

pub struct Node {
    prefix: String,
    netns: String,
    dir: PathBuf,
    containerd: Option<Child>,
    events: tokio::runtime::Runtime,
    cri: RuntimeServiceClient<Channel>,
    /// Created and not yet removed: a watch may run (borrowing the node) while pods come and go.
    pods: Mutex<Vec<Pod>>,
    dnsmasq: Option<Child>,
    /// A namespace was created and must be deleted.
    netns_created: bool,
}

impl Node {
    /// Starts the node: its namespace, containerd with the CNI configuration, the pause
    /// image imported. A failure part-way removes what was built.
    pub fn new(config: NodeConfig) -> Result<Node> {
        let (prefix, dir) = claim_scratch(sweep_stale_nodes, unique_prefix)?;
        let events =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a tokio runtime")?;
        // The channel's worker is spawned on the event loop it is created in.
        let cri = {
            let _inside = events.enter();
            RuntimeServiceClient::new(tracer_cri::unix_channel(&dir.join("containerd.sock"), CRI_TIMEOUT))
        };
        let mut node = Node {
            netns: format!("{prefix}-node"),
            prefix,
            dir,
            containerd: None,
            events,
            cri,
            pods: Mutex::new(Vec::new()),
            dnsmasq: None,
            netns_created: false,
        };
        node.build(config).with_context(|| format!("building node {}", node.prefix))?;
        Ok(node)
    }

    fn build(&mut self, config: NodeConfig) -> Result<()> {
        run_on_host(&["ip", "netns", "add", &self.netns])?;
        self.netns_created = true;
        self.run(&["ip", "link", "set", "lo", "up"])?;
        self.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.set_bridge_nf_call_iptables(config.bridge_nf_call_iptables)?;
        self.write_config(config.pod_addresses)?;
        let log = fs::File::create(self.dir.join("containerd.log"))?;
        let config_path = self.dir.join("containerd.toml");
        // nsenter rather than `ip netns exec`, which also mounts a sysfs of the namespace over
        // /sys and so hides the cgroup mounts runc needs: only the network namespace changes.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd (is it installed? `cargo xtask setup`)")?;
        self.containerd = Some(child);
        self.wait_for_containerd()?;
        let image = crate::oci::pause_image(&self.dir)?;
        self.ctr(&["images", "import", "--snapshotter", "native"], Some(&image))?;
        Ok(())
    }

    fn write_config(&self, pod_addresses: u8) -> Result<()> {
        let dir = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Sandboxes may not get a lower OOM score than containerd's own where this process
  # lacks the privilege to set one.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{dir}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"#,
            pause = crate::oci::PAUSE_IMAGE
        );
        fs::write(self.dir.join("containerd.toml"), config)?;
        fs::create_dir(self.dir.join("cni"))?;
        // host-local keeps its leases under the test's directory, not the machine's
        // /var/lib/cni: nodes in parallel each hand out their own addresses.
        let network = format!(
            r#"{{"cniVersion": "0.4.0", "name": "{prefix}", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, "hairpinMode": true, "ipam": {{"type": "host-local", "dataDir": "{dir}/ipam", "ranges": [[{{"subnet": "{SUBNET}", "gateway": "{GATEWAY}", "rangeStart": "10.244.0.2", "rangeEnd": "10.244.0.{last}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}}}]}}"#,
            prefix = self.prefix,
            last = u16::from(pod_addresses) + 1
        );
        fs::write(self.dir.join("cni/10-pods.conflist"), network)?;
        Ok(())
    }

    fn wait_for_containerd(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.socket().exists() {
            if let Some(child) = self.containerd.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("containerd exited ({status}): {}", self.containerd_log());
                }
            }
            if Instant::now() >= deadline {
                bail!("containerd did not serve within {START_TIMEOUT:?}: {}", self.containerd_log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// containerd's CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The node's network namespace, as `ip netns` knows it.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A directory of the node's own (removed with it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn containerd_log(&self) -> String {
        read_lossy(&self.dir.join("containerd.log"))
    }

    /// `ip netns exec NODE argv...`, not started yet.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).args(argv).stdin(Stdio::null());
        cmd
    }

    /// Runs a command in the node namespace; fails unless it exits 0. Returns its stdout.
    pub fn run(&self, argv: &[&str]) -> Result<String> {
        let out =
            self.command(argv).output().with_context(|| format!("running `{}` in {}", argv.join(" "), self.netns))?;
        check(&out, &format!("`{}` in {}", argv.join(" "), self.netns))
    }

    /// `ctr --address SOCKET --namespace k8s.io ARGS [FILE]` (the CRI's images and containers).
    pub fn ctr(&self, args: &[&str], file: Option<&Path>) -> Result<String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(["--namespace", "k8s.io"]).args(args);
        if let Some(file) = file {
            cmd.arg(file);
        }
        let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running ctr {}", args.join(" ")))?;
        check(&out, &format!("`ctr {}`", args.join(" ")))
    }

    /// `iptables RULE` (split on whitespace) in the node namespace.
    pub fn iptables(&self, rule: &str) -> Result<()> {
        let mut argv = vec!["iptables", "-w", "10"];
        argv.extend(rule.split_whitespace());
        self.run(&argv).map(drop)
    }

    pub fn set_bridge_nf_call_iptables(&self, on: bool) -> Result<()> {
        let value = u8::from(on);
        for key in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"] {
            self.run(&["sysctl", "-qw", &format!("{key}={value}")])?;
        }
        Ok(())
    }

    /// Runs a pod sandbox through the CRI, as the kubelet would for pod `namespace/name`.
    pub fn run_pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("{}-{namespace}-{name}", self.prefix),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.dir.join("pod-logs").join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                // The node's own cgroup parent, removed with it.
                cgroup_parent: format!("/{}", self.prefix),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let mut cri = self.cri.clone();
        let id = self
            .events
            .block_on(cri.run_pod_sandbox(request))
            .map_err(|status| {
                anyhow!("RunPodSandbox {namespace}/{name}: {status}\ncontainerd log:\n{}", self.containerd_log())
            })?
            .into_inner()
            .pod_sandbox_id;
        // Kept before anything else can fail, so that drop removes it.
        self.created().push(Pod {
            id: id.clone(),
            namespace: namespace.into(),
            name: name.into(),
            ip: String::new(),
            pid: 0,
        });
        let reply = self
            .events
            .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: true }))
            .map_err(|status| anyhow!("PodSandboxStatus {id}: {status}"))?
            .into_inner();
        let ip = reply.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
        if ip.is_empty() {
            bail!("pod {namespace}/{name} got no address from the CNI plugin");
        }
        let pid = sandbox_pid(&reply.info).with_context(|| format!("the sandbox process of {namespace}/{name}"))?;
        let pod = Pod { id, namespace: namespace.into(), name: name.into(), ip, pid };
        if let Some(kept) = self.created().iter_mut().find(|p| p.id == pod.id) {
            *kept = pod.clone();
        }
        Ok(pod)
    }

    /// Stops and removes a pod through the CRI, as the kubelet does when it is deleted.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.created().retain(|p| p.id != pod.id);
        self.remove_sandbox(&pod.id)
    }

    fn remove_sandbox(&self, id: &str) -> Result<()> {
        let mut cri = self.cri.clone();
        self.events
            .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.to_string() }))
            .map_err(|status| anyhow!("StopPodSandbox {id}: {status}"))?;
        self.events
            .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.to_string() }))
            .map_err(|status| anyhow!("RemovePodSandbox {id}: {status}"))?;
        Ok(())
    }

    /// Runs dnsmasq in `pod` (answering [`crate::lab::TEST_NAME`]) and sends the DNS service
    /// address [`CLUSTER_DNS_IP`]:53 to it with a DNAT in the node's PREROUTING, as
    /// kube-proxy does for a ClusterIP.
    pub fn serve_dns(&mut self, pod: &Pod) -> Result<()> {
        let log_file = self.dir.join("dnsmasq.log");
        let args = dnsmasq_argv(&[&pod.ip], &self.dir.join("dnsmasq.pid"), &log_file);
        let child = pod
            .enter()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq in the pod (is dnsmasq-base installed? `cargo xtask setup`)")?;
        self.dnsmasq = Some(child);
        let want = format!("{}:53", pod.ip);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = pod.enter().args(["ss", "-Hlun"]).output()?;
            if String::from_utf8_lossy(&out.stdout).contains(&want) {
                break;
            }
            if Instant::now() >= deadline {
                bail!("dnsmasq is not listening on {want} after 10 s: {}", read_lossy(&log_file));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.iptables(&format!(
            "-t nat -A PREROUTING -d {CLUSTER_DNS_IP}/32 -p udp --dport 53 -j DNAT --to-destination {}:53",
            pod.ip
        ))
    }

    /// dig from `pod` (see [`crate::lab::Lab::dig`]).
    pub fn dig(&self, pod: &Pod, server: &str, name: &str) -> Result<Dig> {
        dig_entering(pod.enter(), server, name, &[])
    }

    /// Starts `tracer ARGS` in the node namespace, stdout captured.
    pub fn spawn_tracer(&self, args: &[&str]) -> Result<Process<'_>> {
        let tracer = crate::tracer_bin()?;
        let tracer = tracer.to_str().ok_or_else(|| anyhow!("non-UTF-8 tracer path"))?;
        let mut argv = vec![tracer];
        argv.extend_from_slice(args);
        Process::spawn(self.command(&argv), argv.join(" "), StdoutMode::Capture)
    }

    /// Stops containerd where it stands (SIGSTOP): its socket accepts connections and never
    /// answers, as a hung runtime does. It goes on when the guard is dropped, also on failure.
    pub fn freeze_runtime(&self) -> Result<FrozenRuntime> {
        let pid = self.containerd.as_ref().map(Child::id).ok_or_else(|| anyhow!("containerd is not running"))?;
        crate::process::send_signal(pid, libc::SIGSTOP)?;
        Ok(FrozenRuntime { pid })
    }

    /// The pods created and not yet removed.
    pub fn pods(&self) -> Vec<Pod> {
        self.created().clone()
    }

    fn created(&self) -> MutexGuard<'_, Vec<Pod>> {
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// containerd held still by [`Node::freeze_runtime`]; dropping it lets it go on.
pub struct FrozenRuntime {
    pid: u32,
}

impl Drop for FrozenRuntime {
    fn drop(&mut self) {
        let _ = crate::process::send_signal(self.pid, libc::SIGCONT);
    }
}

/// A node with a client pod and a DNS pod behind the service address.
pub struct Cluster {
    pub node: Node,
    pub client: Pod,
    pub dns: Pod,
}

/// The DNS pod, as a cluster's CoreDNS is named.
pub const DNS_POD: (&str, &str) = ("kube-system", "coredns-7db6d8ff4d-x8f2k");

impl Cluster {
    pub fn new(bridge_nf_call_iptables: bool) -> Result<Cluster> {
        Cluster::on(NodeConfig::new(bridge_nf_call_iptables))
    }

    pub fn on(config: NodeConfig) -> Result<Cluster> {
        let mut node = Node::new(config)?;
        let client = node.run_pod("default", "client")?;
        let dns = node.run_pod(DNS_POD.0, DNS_POD.1)?;
        node.serve_dns(&dns)?;
        Ok(Cluster { node, client, dns })
    }

    /// `tracer ARGS --cri-socket SOCKET` in the node namespace around one dig from the
    /// client to the service; stopped with SIGTERM once the dig is done.
    pub fn watch_around_dig(&self, args: &[&str]) -> Result<Finished> {
        let socket = self.node.socket();
        let socket = socket.to_str().context("socket path")?;
        let mut argv = vec!["watch", "--port", "53"];
        argv.extend_from_slice(args);
        argv.extend(["--cri-socket", socket]);
        let mut watch = self.node.spawn_tracer(&argv)?;
        watch.wait_until_watching()?;
        self.node.dig(&self.client, CLUSTER_DNS_IP, crate::lab::TEST_NAME)?;
        std::thread::sleep(Duration::from_millis(300));
        watch.signal(libc::SIGTERM)?;
        watch.finish(crate::process::STOP_GRACE)
    }
}

/// The sandbox process's pid from `PodSandboxStatus`'s verbose `info` (containerd puts it
/// in the JSON under `info`).
fn sandbox_pid(info: &HashMap<String, String>) -> Result<u32> {
    let json = info.get("info").ok_or_else(|| anyhow!("no verbose info: {info:?}"))?;
    let value: serde_json::Value = serde_json::from_str(json)?;
    value
        .get("pid")
        .and_then(serde_json::Value::as_u64)
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0)
        .ok_or_else(|| anyhow!("no pid in the sandbox's info: {json}"))
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("node {}: containerd log:\n{}", self.prefix, self.containerd_log());
        }
        if let Some(child) = self.dnsmasq.take() {
            stop_child(child);
        }
        if self.containerd.is_some() {
            for pod in std::mem::take(&mut *self.created()) {
                if let Err(err) = self.remove_sandbox(&pod.id) {
                    eprintln!("node cleanup: {err:#}");
                }
            }
        }
        if let Some(child) = self.containerd.take() {
            stop_child(child);
        }
        kill_shims(&self.socket());
        unmount_below(&self.dir);
        remove_cgroups(&self.prefix);
        if self.netns_created {
            if let Err(err) = delete_netns(&self.netns) {
                eprintln!("node cleanup: {err:#}");
            }
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("node cleanup: removing {}: {err}", self.dir.display());
        }
    }
}

/// Kills the runtime shims of the containerd at `socket` that outlived it (they run in a
/// session of their own, so nothing else ends them).
fn kill_shims(socket: &Path) {
    let socket = socket.display().to_string();
    kill_where(|cmdline| cmdline.contains("containerd-shim") && cmdline.contains(&socket));
}

/// Kills every process whose command line (arguments joined by spaces) `chosen` picks.
fn kill_where(chosen: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir("/proc") else { return };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        if chosen(&String::from_utf8_lossy(&cmdline).replace('\0', " ")) {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Unmounts whatever the runtime left mounted below `dir` (a sandbox's rootfs, its
/// shm), deepest first, so the directory can be removed.
fn unmount_below(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else { return };
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).stdin(Stdio::null()).status();
    }
}

/// Removes the node's cgroup parent from every hierarchy (each pod's own cgroup went with it).
fn remove_cgroups(prefix: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return };
    for hierarchy in hierarchies.flatten() {
        let _ = fs::remove_dir(hierarchy.path().join(prefix));
    }
}

fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{NAME_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Removes nodes whose test process is gone (SIGKILLed, so its `Drop`s never ran): their
/// containerd and shims, namespace and directory.
fn sweep_stale_nodes() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("tracer-").and_then(|n| n.strip_prefix(NAME_PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let socket = dir.join("containerd.sock");
        kill_containerd(&dir);
        kill_shims(&socket);
        unmount_below(&dir);
        remove_cgroups(&name["tracer-".len()..]);
        let _ = delete_netns(&format!("{}-node", &name["tracer-".len()..]));
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Kills a containerd whose configuration is in `dir`.
fn kill_containerd(dir: &Path) {
    let config = dir.join("containerd.toml").display().to_string();
    kill_where(|cmdline| cmdline.contains(&config));
}
