//! A throw-away Kubernetes-like node built from network namespaces.
//!
//! ```text
//!  client netns                     node netns                          server netns
//!  eth0 10.244.0.5 ── veth-client ─┐                    ┌─ veth-server ── eth0 10.244.0.7  dnsmasq
//!       fd00:10:244::5             └── cni0 10.244.0.1 ─┘                     fd00:10:244::7
//!                                       fd00:10:244::1
//!  "ClusterIP" DNAT in the node's PREROUTING:
//!    10.96.0.10:53/udp → 10.244.0.7:53      [fd00:10:96::a]:53/udp → [fd00:10:244::7]:53
//! ```
//!
//! A query to the ClusterIP is sent to the client's gateway, the bridge, so it is DNATed whatever
//! the bridge settings: with `bridge-nf-call-iptables=1` the bridge runs it through iptables itself
//! and forwards it to the server's port; with 0 it goes up to the node's IP stack and is DNATed on
//! the routing path. The reply goes from server to client on the same subnet and is *bridged*: it
//! only passes conntrack, and so only gets its source rewritten back to the ClusterIP, when
//! `bridge-nf-call-iptables` is 1 in the node namespace. With 0 the client sees the reply come from
//! 10.244.0.7, has no socket for that, and dig times out.
//!
//! With [`LabConfig::with_routed_server`] the server pod is not on the bridge but behind a routed
//! interface of the node, and the ClusterIP DNAT points there:
//!
//! ```text
//!  client netns                     node netns                               server netns
//!  eth0 10.244.0.5 ── veth-client ── cni0 10.244.0.1     veth-routed 10.245.0.1 ── eth0 10.245.0.7  dnsmasq
//!                                                                   fd00:10:245::1      fd00:10:245::7
//!  "ClusterIP" DNAT: 10.96.0.10:53/udp → 10.245.0.7:53      [fd00:10:96::a]:53/udp → [fd00:10:245::7]:53
//! ```
//!
//! Query and reply are then routed by the node in both directions, never bridged between pods, so
//! the reply passes conntrack (and is reverse-NATed) whatever `bridge-nf-call-iptables` says.
//!
//! Every lab gets its own namespace names, so labs can run in parallel; the node-side interface
//! names (`veth-client`, `veth-server`, `cni0`) live inside the node namespace and cannot collide
//! with the host or other labs. Dropping the [`Lab`] stops dnsmasq and deletes the namespaces, also
//! while a test unwinds from a panic. Processes started through a lab ([`Process`]) borrow it, so
//! the compiler guarantees they are stopped before the namespaces go away.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

// The lab starts processes and the suites import the lab: one import gives them both.
use crate::process::{send_signal, wait_timeout};
pub use crate::process::{Finished, Process, StdoutMode, STOP_GRACE};

pub const BRIDGE: &str = "cni0";
pub const BRIDGE_IP: &str = "10.244.0.1";
pub const BRIDGE_IP6: &str = "fd00:10:244::1";
pub const CLIENT_IP: &str = "10.244.0.5";
pub const CLIENT_IP6: &str = "fd00:10:244::5";
pub const SERVER_IP: &str = "10.244.0.7";
pub const SERVER_IP6: &str = "fd00:10:244::7";
/// The DNS service's ClusterIP, DNATed to the server by the node.
pub const CLUSTER_DNS_IP: &str = "10.96.0.10";
pub const CLUSTER_DNS_IP6: &str = "fd00:10:96::a";
/// Node-side ends of the pod veths (names inside the node namespace).
pub const CLIENT_VETH: &str = "veth-client";
pub const SERVER_VETH: &str = "veth-server";
/// With [`LabConfig::with_routed_server`]: the node's routed (non-bridge) interface towards the
/// server pod, its addresses, and the server's addresses on that link.
pub const ROUTED_VETH: &str = "veth-routed";
pub const ROUTED_GW_IP: &str = "10.245.0.1";
pub const ROUTED_GW_IP6: &str = "fd00:10:245::1";
pub const ROUTED_SERVER_IP: &str = "10.245.0.7";
pub const ROUTED_SERVER_IP6: &str = "fd00:10:245::7";
/// Pod-side interface name in both the client and the server namespace.
pub const POD_IF: &str = "eth0";
/// The name dnsmasq answers, and its records.
pub const TEST_NAME: &str = "example.test";
pub const TEST_A: &str = "192.0.2.10";
pub const TEST_AAAA: &str = "2001:db8::10";
/// A name whose TXT answer (about 3 000 bytes) needs EDNS and, over IPv6 on these 1500-byte
/// links, is fragmented by the server.
pub const BIG_TXT_NAME: &str = "big.example.test";
/// The strings of that answer: twelve of 250 bytes.
pub const BIG_TXT_STRINGS: usize = 12;
/// A name in a domain dnsmasq says does not exist (NXDOMAIN): a negative answer, healthy.
pub const NXDOMAIN_NAME: &str = "absent.nxdomain.test";
/// The domain dnsmasq answers NXDOMAIN for.
const NXDOMAIN_DOMAIN: &str = "nxdomain.test";
/// A name dnsmasq has no record and no upstream server for: it answers REFUSED.
pub const REFUSED_NAME: &str = "elsewhere.invalid";
/// A pod's search list in namespace `default` (what the kubelet writes into its resolv.conf);
/// dnsmasq answers NXDOMAIN for every name under `cluster.local`.
pub const POD_SEARCH_DOMAINS: [&str; 3] = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"];
const CLUSTER_DOMAIN: &str = "cluster.local";

/// What tracer prints on stderr once its programs are attached.
pub const TRACER_READY: &str = "tracer: watching";
/// Loading and attaching can take a while with a debug build parsing the kernel's BTF.
pub const TRACER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Namespace names start with this, then the owning process id; stale labs left behind by a killed
/// test process are recognised by it and removed by the next lab.
const NAME_PREFIX: &str = "trlab";

#[derive(Clone, Debug)]
pub struct LabConfig {
    /// `net.bridge.bridge-nf-call-iptables` and `-ip6tables` in the node namespace. `false`
    /// reproduces the broken node: bridged DNS replies bypass conntrack and keep the pod's source.
    pub bridge_nf_call_iptables: bool,
    /// How the DNS server pod is attached to the node (default: a port of the bridge).
    pub server_attachment: ServerAttachment,
    /// Whether the lab loads br_netfilter when the kernel has it as a module not yet loaded.
    pub br_netfilter: BrNetfilter,
}

/// br_netfilter is built in on some kernels and a module on distribution kernels, where the
/// bridge-nf-call sysctls exist only once it is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BrNetfilter {
    /// Load it if it is a module not yet loaded, as a node that relies on it does at boot.
    #[default]
    Load,
    /// The node that never loaded it: the lab refuses to build where it is loaded or built in,
    /// since such a kernel cannot show this case.
    NotLoaded,
}

/// Where the bridge-nf-call sysctls appear once br_netfilter is in the kernel.
const BRIDGE_NF_SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

/// Where the DNS server pod (dnsmasq, the ClusterIP's DNAT backend) sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerAttachment {
    /// On the client's bridge: `veth-server` in `cni0`, 10.244.0.7 / fd00:10:244::7.
    #[default]
    Bridge,
    /// Behind the node's routed interface `veth-routed`: 10.245.0.7 / fd00:10:245::7.
    Routed,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self::healthy()
    }
}

impl LabConfig {
    pub fn healthy() -> Self {
        LabConfig {
            bridge_nf_call_iptables: true,
            server_attachment: ServerAttachment::Bridge,
            br_netfilter: BrNetfilter::Load,
        }
    }

    pub fn bridge_nf_call_iptables_off() -> Self {
        LabConfig {
            bridge_nf_call_iptables: false,
            server_attachment: ServerAttachment::Bridge,
            br_netfilter: BrNetfilter::Load,
        }
    }

    /// The node of a distribution kernel that never loaded br_netfilter: bridged replies skip
    /// conntrack as with `bridge-nf-call-iptables=0`, and the sysctl does not even exist. Builds
    /// only on a kernel where br_netfilter is a module not loaded yet (a fresh VM of
    /// `cargo xtask test --kernels`).
    pub fn without_br_netfilter() -> Self {
        LabConfig {
            bridge_nf_call_iptables: false,
            server_attachment: ServerAttachment::Bridge,
            br_netfilter: BrNetfilter::NotLoaded,
        }
    }

    /// The same lab with the server pod behind a routed interface of the node instead of on the
    /// bridge (see the module docs).
    pub fn with_routed_server(mut self) -> Self {
        self.server_attachment = ServerAttachment::Routed;
        self
    }
}

/// One of the lab's namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ns {
    Node,
    Client,
    Server,
}

pub struct Lab {
    prefix: String,
    node: String,
    client: String,
    server: String,
    /// Namespaces that exist and must be deleted, in creation order.
    created: Vec<String>,
    dir: PathBuf,
    dnsmasq: Option<Child>,
    server_attachment: ServerAttachment,
}

impl Lab {
    /// Builds a complete lab: namespaces, bridge, veths, addresses, routes, sysctls, the ClusterIP
    /// DNAT rules and a running dnsmasq. A failure part-way removes what was already built.
    pub fn new(config: LabConfig) -> Result<Lab> {
        let (prefix, dir) = claim_scratch(sweep_stale_labs, unique_prefix)?;
        let mut lab = Lab {
            node: format!("{prefix}-node"),
            client: format!("{prefix}-cli"),
            server: format!("{prefix}-srv"),
            prefix,
            created: Vec::new(),
            dir,
            dnsmasq: None,
            server_attachment: config.server_attachment,
        };
        if let Err(e) = lab.build(&config) {
            return Err(e.context(format!("building lab {}", lab.prefix)));
        }
        Ok(lab)
    }

    /// The name of a namespace as `ip netns` knows it.
    pub fn netns(&self, ns: Ns) -> &str {
        match ns {
            Ns::Node => &self.node,
            Ns::Client => &self.client,
            Ns::Server => &self.server,
        }
    }

    /// The namespace's inode, which tracer reports as `netns`.
    pub fn netns_inode(&self, ns: Ns) -> Result<u64> {
        let path = format!("/run/netns/{}", self.netns(ns));
        Ok(fs::metadata(&path).with_context(|| format!("stat {path}"))?.ino())
    }

    /// The DNS server pod's IPv4 address: [`SERVER_IP`], or [`ROUTED_SERVER_IP`] with a routed
    /// server. The ClusterIP is DNATed to it.
    pub fn server_ip(&self) -> &'static str {
        match self.server_attachment {
            ServerAttachment::Bridge => SERVER_IP,
            ServerAttachment::Routed => ROUTED_SERVER_IP,
        }
    }

    /// The DNS server pod's IPv6 address: [`SERVER_IP6`], or [`ROUTED_SERVER_IP6`].
    pub fn server_ip6(&self) -> &'static str {
        match self.server_attachment {
            ServerAttachment::Bridge => SERVER_IP6,
            ServerAttachment::Routed => ROUTED_SERVER_IP6,
        }
    }

    /// A lab-private directory (removed with the lab), e.g. for files a test needs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn build(&mut self, config: &LabConfig) -> Result<()> {
        for (ns, name) in
            [(Ns::Node, self.node.clone()), (Ns::Client, self.client.clone()), (Ns::Server, self.server.clone())]
        {
            run_on_host(&["ip", "netns", "add", &name])?;
            self.created.push(name);
            // Without duplicate address detection every IPv6 address, link-local ones included,
            // is usable at once. Otherwise the node cannot send a neighbour solicitation from
            // cni0's still-tentative link-local address for a second or two, and the first
            // forwarded IPv6 query of a fresh lab outlives dig's timeout. Set before any
            // interface exists, so the defaults apply to all of them.
            for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
                self.run(ns, &["sysctl", "-qw", &format!("{key}=0")])?;
            }
        }

        let node = self.node.clone();
        let n = |args: &[&str]| -> Result<()> {
            let mut argv = vec!["ip", "-n", &node];
            argv.extend_from_slice(args);
            run_on_host(&argv).map(drop)
        };
        n(&["link", "set", "lo", "up"])?;
        n(&["link", "add", BRIDGE, "type", "bridge"])?;
        n(&["addr", "add", &format!("{BRIDGE_IP}/24"), "dev", BRIDGE])?;
        n(&["addr", "add", &format!("{BRIDGE_IP6}/64"), "dev", BRIDGE])?;
        n(&["link", "set", BRIDGE, "up"])?;
        self.run(Ns::Node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.run(Ns::Node, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])?;
        match config.br_netfilter {
            BrNetfilter::Load => {
                if !Path::new(BRIDGE_NF_SYSCTL).exists() {
                    run_on_host(&["modprobe", "br_netfilter"])
                        .context("br_netfilter is a module here and the lab needs it loaded")?;
                }
                self.set_bridge_nf_call_iptables(config.bridge_nf_call_iptables)?;
            }
            BrNetfilter::NotLoaded => ensure!(
                !Path::new(BRIDGE_NF_SYSCTL).exists(),
                "br_netfilter is loaded or built into this kernel ({BRIDGE_NF_SYSCTL} exists): a lab \
                 without it needs a kernel where it is a module not loaded yet (cargo xtask test --kernels 6.1)"
            ),
        }

        // (pod, node-side veth, pod addresses, the pod's gateway on that link, is it a bridge port)
        let server = match self.server_attachment {
            ServerAttachment::Bridge => (Ns::Server, SERVER_VETH, SERVER_IP, SERVER_IP6, BRIDGE_IP, BRIDGE_IP6, true),
            ServerAttachment::Routed => {
                (Ns::Server, ROUTED_VETH, ROUTED_SERVER_IP, ROUTED_SERVER_IP6, ROUTED_GW_IP, ROUTED_GW_IP6, false)
            }
        };
        let client = (Ns::Client, CLIENT_VETH, CLIENT_IP, CLIENT_IP6, BRIDGE_IP, BRIDGE_IP6, true);
        for (pod, veth, ip, ip6, gw, gw6, bridged) in [client, server] {
            let pod_ns = self.netns(pod).to_string();
            // Created inside the node namespace and the peer moved straight into the pod, so the
            // node-side name never exists in the host namespace.
            n(&["link", "add", veth, "type", "veth", "peer", "name", POD_IF, "netns", &pod_ns])?;
            if bridged {
                n(&["link", "set", veth, "master", BRIDGE, "up"])?;
            } else {
                // A routed link: the node's end gets the gateway addresses, no bridge.
                n(&["addr", "add", &format!("{gw}/24"), "dev", veth])?;
                n(&["addr", "add", &format!("{gw6}/64"), "dev", veth])?;
                n(&["link", "set", veth, "up"])?;
            }
            let p = |args: &[&str]| -> Result<()> {
                let mut argv = vec!["ip", "-n", &pod_ns];
                argv.extend_from_slice(args);
                run_on_host(&argv).map(drop)
            };
            p(&["link", "set", "lo", "up"])?;
            p(&["addr", "add", &format!("{ip}/24"), "dev", POD_IF])?;
            p(&["addr", "add", &format!("{ip6}/64"), "dev", POD_IF])?;
            p(&["link", "set", POD_IF, "up"])?;
            p(&["route", "add", "default", "via", gw])?;
            p(&["-6", "route", "add", "default", "via", gw6])?;
        }

        let (server_ip, server_ip6) = (self.server_ip(), self.server_ip6());
        self.iptables(&format!(
            "-t nat -A PREROUTING -d {CLUSTER_DNS_IP}/32 -p udp --dport 53 \
             -j DNAT --to-destination {server_ip}:53"
        ))?;
        self.ip6tables(&format!(
            "-t nat -A PREROUTING -d {CLUSTER_DNS_IP6}/128 -p udp --dport 53 \
             -j DNAT --to-destination [{server_ip6}]:53"
        ))?;

        self.start_dnsmasq()
    }

    fn start_dnsmasq(&mut self) -> Result<()> {
        let pid_file = self.dir.join("dnsmasq.pid");
        let log_file = self.dir.join("dnsmasq.log");
        let (server_ip, server_ip6) = (self.server_ip(), self.server_ip6());
        let args = dnsmasq_argv(&[server_ip, server_ip6], &pid_file, &log_file);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .command(Ns::Server, &argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dnsmasq (is dnsmasq-base installed? `cargo xtask setup`)")?;
        self.dnsmasq = Some(child);

        // Queries sent before dnsmasq has bound its sockets would be refused with ICMP and make
        // the first test query fail for reasons unrelated to what is being tested.
        let want = [format!("{server_ip}:53"), format!("[{server_ip6}]:53")];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = self.run(Ns::Server, &["ss", "-Hlun"])?;
            if want.iter().all(|w| listening.contains(w.as_str())) {
                return Ok(());
            }
            if let Some(child) = self.dnsmasq.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("dnsmasq exited ({status}): {}", read_lossy(&log_file));
                }
            }
            if Instant::now() >= deadline {
                bail!("dnsmasq is not listening on {want:?} after 10 s: {}", read_lossy(&log_file));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets `net.bridge.bridge-nf-call-iptables` and `-ip6tables` in the node namespace (these are
    /// per namespace, the host's value is not touched).
    pub fn set_bridge_nf_call_iptables(&self, on: bool) -> Result<()> {
        let v = if on { 1 } else { 0 };
        for key in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"] {
            self.run(Ns::Node, &["sysctl", "-qw", &format!("{key}={v}")])?;
        }
        Ok(())
    }

    /// `iptables RULE` in the node namespace, RULE split on whitespace.
    pub fn iptables(&self, rule: &str) -> Result<()> {
        self.xtables(Ns::Node, "iptables", rule)
    }

    /// `ip6tables RULE` in the node namespace, RULE split on whitespace.
    pub fn ip6tables(&self, rule: &str) -> Result<()> {
        self.xtables(Ns::Node, "ip6tables", rule)
    }

    /// `iptables`/`ip6tables RULE` in any lab namespace.
    pub fn xtables(&self, ns: Ns, program: &str, rule: &str) -> Result<()> {
        // -w: iptables-legacy takes a host-wide lock, and labs are built in parallel.
        let mut argv = vec![program, "-w", "10"];
        argv.extend(rule.split_whitespace());
        self.run(ns, &argv).map(drop)
    }

    /// `ip netns exec NS argv...`, not started yet.
    pub fn command(&self, ns: Ns, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns(ns)]).args(argv).stdin(Stdio::null());
        cmd
    }

    /// Gives programs run in `ns` through `ip netns exec` this resolv.conf (it bind-mounts
    /// `/etc/netns/NS/resolv.conf`), as a pod's resolver reads its own. Removed with the namespace.
    pub fn resolv_conf(&self, ns: Ns, text: &str) -> Result<()> {
        let dir = Path::new(ETC_NETNS).join(self.netns(ns));
        // Twice: another lab may remove /etc/netns, empty, between our two mkdirs.
        fs::create_dir_all(&dir)
            .or_else(|_| fs::create_dir_all(&dir))
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("resolv.conf");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Runs a command in a namespace to completion, whatever its exit status.
    pub fn exec(&self, ns: Ns, argv: &[&str]) -> Result<Output> {
        self.command(ns, argv).output().with_context(|| format!("running `{}` in {}", argv.join(" "), self.netns(ns)))
    }

    /// Runs a command in a namespace; fails unless it exits 0. Returns its stdout.
    pub fn run(&self, ns: Ns, argv: &[&str]) -> Result<String> {
        let out = self.exec(ns, argv)?;
        check(&out, &format!("`{}` in {}", argv.join(" "), self.netns(ns)))
    }

    /// Starts a command in a namespace with stdout and stderr captured.
    pub fn spawn(&self, ns: Ns, argv: &[&str]) -> Result<Process<'_>> {
        Process::spawn(self.command(ns, argv), argv.join(" "), StdoutMode::Capture)
    }

    /// `tracer ARGS` (the binary from [`crate::tracer_bin`]) in the node namespace with `env`
    /// added to its environment, not started yet.
    pub fn tracer_command(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Command> {
        self.tracer_command_at(&crate::tracer_bin()?, args, env)
    }

    fn tracer_command_at(&self, tracer: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Command> {
        let tracer = tracer.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", tracer.display()))?;
        let mut argv = vec![tracer];
        argv.extend_from_slice(args);
        let mut cmd = self.command(Ns::Node, &argv);
        cmd.envs(env.iter().copied());
        Ok(cmd)
    }

    /// Starts `tracer ARGS` (the binary from [`crate::tracer_bin`]) in the node namespace with
    /// `env` added to its environment, without waiting for it to watch.
    pub fn spawn_tracer(&self, args: &[&str], env: &[(&str, &str)], mode: StdoutMode) -> Result<Process<'_>> {
        self.spawn_tracer_at(&crate::tracer_bin()?, args, env, mode)
    }

    fn spawn_tracer_at(
        &self,
        tracer: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        mode: StdoutMode,
    ) -> Result<Process<'_>> {
        let cmd = self.tracer_command_at(tracer, args, env)?;
        let env_words: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        let what = format!("{env_words}{} {}", tracer.display(), args.join(" "));
        Process::spawn(cmd, what, mode)
    }

    /// Starts `tracer watch ARGS` (the binary from [`crate::tracer_bin`]) in the node namespace
    /// with its output captured, and returns once it reported that it is watching.
    pub fn watch(&self, args: &[&str]) -> Result<Process<'_>> {
        self.watch_with(&crate::tracer_bin()?, args, StdoutMode::Capture)
    }

    /// Like [`Lab::watch`] with a given binary; with [`StdoutMode::Terminal`] the packet lines go
    /// straight to this process's stdout and tracer's stderr is echoed to ours.
    pub fn watch_with(&self, tracer: &Path, args: &[&str], mode: StdoutMode) -> Result<Process<'_>> {
        let mut argv = vec!["watch"];
        argv.extend_from_slice(args);
        let mut process = self.spawn_tracer_at(tracer, &argv, &[], mode)?;
        process.wait_until_watching()?;
        Ok(process)
    }

    /// Runs dig in the client namespace: `dig +tries=1 +time=2 +qr @SERVER NAME EXTRA...`.
    /// A timeout is a result, not an error: see [`Dig::timed_out`].
    pub fn dig(&self, server: &str, name: &str, extra: &[&str]) -> Result<Dig> {
        dig_in(self.netns(Ns::Client), server, name, extra)
    }

    /// `ip -j link show [IFNAME]` in a namespace: one JSON object per interface.
    pub fn links(&self, ns: Ns, ifname: Option<&str>) -> Result<Vec<Value>> {
        let mut argv = vec!["ip", "-j", "link", "show"];
        argv.extend(ifname);
        let json = self.run(ns, &argv)?;
        let links: Value = serde_json::from_str(&json).with_context(|| format!("`{}`: {json}", argv.join(" ")))?;
        match links {
            Value::Array(links) => Ok(links),
            other => bail!("`{}` printed no list: {other}", argv.join(" ")),
        }
    }

    /// Starts `tcpdump -i eth0 -n ARGS` in a pod's namespace and returns once it is capturing.
    pub fn start_tcpdump(&self, pod: Ns, args: &[&str]) -> Result<Process<'_>> {
        let mut argv = vec!["tcpdump", "-i", POD_IF, "-n"];
        argv.extend_from_slice(args);
        let mut tcpdump = self.spawn(pod, &argv)?;
        tcpdump.wait_for_stderr("listening on", Duration::from_secs(10))?;
        Ok(tcpdump)
    }

    /// Sends `count` small UDP datagrams from a namespace to `ip:port` (bash's /dev/udp), without
    /// waiting for any answer.
    pub fn send_udp(&self, ns: Ns, ip: &str, port: u16, count: u32) -> Result<()> {
        let script =
            format!("for i in $(seq {count}); do printf 'tracer-probe %s' \"$i\" > /dev/udp/{ip}/{port}; done");
        self.run(ns, &["bash", "-c", &script]).map(drop)
    }

    /// Starts dnsperf in the client namespace: as many queries for [`TEST_NAME`] as the lab
    /// takes, to `server`, for `secs` seconds, from `clients` sockets.
    pub fn dnsperf(&self, server: &str, secs: u32, clients: u32) -> Result<Process<'_>> {
        let queries = self.dir.join("dnsperf-queries.txt");
        if !queries.exists() {
            fs::write(&queries, format!("{TEST_NAME} A\n"))
                .with_context(|| format!("writing {}", queries.display()))?;
        }
        let queries = queries.to_str().ok_or_else(|| anyhow!("non-UTF-8 lab directory"))?;
        let (secs, clients) = (secs.to_string(), clients.to_string());
        self.spawn(
            Ns::Client,
            &["dnsperf", "-s", server, "-d", queries, "-l", &secs, "-c", &clients, "-q", "200", "-t", "2"],
        )
    }

    /// Counts the UDP answers from `port` the node's bridge forwards between its ports (a
    /// bridge-family rule on the forward hook): queries to a ClusterIP reach the bridge's own
    /// address and leave the node's way, so only answers pass there. Read with
    /// [`Lab::answers_forwarded`].
    pub fn count_answers_forwarded(&self, port: u16) -> Result<()> {
        let port = port.to_string();
        for argv in [
            &["nft", "add", "table", "bridge", "answers"][..],
            &["nft", "add", "chain", "bridge", "answers", "forward", "{ type filter hook forward priority 0; }"],
            &["nft", "add", "rule", "bridge", "answers", "forward", "udp", "sport", &port, "counter"],
        ] {
            self.run(Ns::Node, argv)?;
        }
        Ok(())
    }

    pub fn answers_forwarded(&self) -> Result<u64> {
        let listing = self.run(Ns::Node, &["nft", "list", "chain", "bridge", "answers", "forward"])?;
        listing
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow!("unreadable answer counter: {listing}"))
    }

    /// Packets rule `position` of the node's FORWARD chain matched, by its counter.
    pub fn forward_rule_packets(&self, position: u32) -> Result<u64> {
        let position = position.to_string();
        let listing = self.run(Ns::Node, &["iptables", "-w", "10", "-L", "FORWARD", &position, "-v", "-n", "-x"])?;
        listing
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unreadable counter of FORWARD rule {position}: {listing}"))
    }

    /// dnsmasq's query log so far.
    pub fn dnsmasq_log(&self) -> String {
        read_lossy(&self.dir.join("dnsmasq.log"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("lab {}: dnsmasq log:\n{}", self.prefix, self.dnsmasq_log());
        }
        if let Some(child) = self.dnsmasq.take() {
            stop_child(child);
        }
        for name in self.created.drain(..).rev() {
            if let Err(e) = delete_netns(&name) {
                eprintln!("lab cleanup: {e:#}");
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("lab cleanup: removing {}: {e}", self.dir.display());
        }
    }
}

/// Runs dig like [`Lab::dig`] in any network namespace (`/run/netns/NETNS`), e.g. one a test
/// added to the lab.
pub fn dig_in(netns: &str, server: &str, name: &str, extra: &[&str]) -> Result<Dig> {
    let mut enter = Command::new("ip");
    enter.args(["netns", "exec", netns]);
    dig_entering(enter, server, name, extra)
}

/// Runs dig like [`Lab::dig`] through `enter`, a command that runs its arguments where the
/// query should come from (`ip netns exec NS`, `nsenter -t PID -n`).
pub fn dig_entering(mut enter: Command, server: &str, name: &str, extra: &[&str]) -> Result<Dig> {
    let at = format!("@{server}");
    // +qr prints the query as sent, so the query id is known even when no reply arrives.
    let mut argv = vec!["dig", "+tries=1", "+time=2", "+qr", &at, name];
    argv.extend_from_slice(extra);
    let what = format!("{enter:?}");
    let out = enter
        .args(&argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}` through {what}", argv.join(" ")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Dig::parse(text, out.status.code()))
}

/// The result of one dig run.
#[derive(Clone, Debug)]
pub struct Dig {
    /// Everything dig printed (stdout then stderr).
    pub output: String,
    pub exit_code: Option<i32>,
    /// The DNS message id of the query dig sent.
    pub id: Option<u16>,
    /// The reply's status (`NOERROR`, `NXDOMAIN`, ...); `None` when no reply was accepted.
    pub status: Option<String>,
    /// The reply's answer section, data only (e.g. `192.0.2.10`).
    pub answers: Vec<String>,
    /// dig gave up waiting for a reply.
    pub timed_out: bool,
}

impl Dig {
    pub fn parse(output: String, exit_code: Option<i32>) -> Dig {
        let mut id = None;
        let mut status = None;
        let mut answers = Vec::new();
        let mut in_reply = false;
        let mut in_answer = false;
        for line in output.lines() {
            if line.starts_with(";; Got answer:") {
                in_reply = true;
            } else if let Some(header) = line.strip_prefix(";; ->>HEADER<<- ") {
                // "opcode: QUERY, status: NOERROR, id: 14044"
                let field = |key: &str| header.split(", ").find_map(|kv| kv.strip_prefix(key)).map(str::trim);
                if id.is_none() {
                    id = field("id:").and_then(|v| v.parse().ok());
                }
                if in_reply {
                    status = field("status:").map(str::to_string);
                }
            } else if in_reply && line.starts_with(";; ANSWER SECTION:") {
                in_answer = true;
            } else if in_answer {
                if line.trim().is_empty() {
                    in_answer = false;
                } else if !line.starts_with(';') {
                    if let Some(data) = line.split_whitespace().last() {
                        answers.push(data.to_string());
                    }
                }
            }
        }
        let timed_out = status.is_none() && output.contains("timed out");
        Dig { output, exit_code, id, status, answers, timed_out }
    }

    /// The id of the query dig sent.
    pub fn query_id(&self) -> Result<u16> {
        self.id.with_context(|| format!("dig printed no query id:\n{}", self.output))
    }

    /// dig got a reply with status NOERROR.
    pub fn answered(&self) -> bool {
        self.status.as_deref() == Some("NOERROR")
    }

    /// [`Dig::answered`], or an error with what dig printed.
    pub fn expect_answered(&self) -> Result<()> {
        if !self.answered() {
            bail!("dig was not answered:\n{}", self.output);
        }
        Ok(())
    }

    /// dig was answered with exactly these records (e.g. [`TEST_A`]).
    pub fn expect_answers(&self, want: &[&str]) -> Result<()> {
        if !(self.answered() && self.answers == want) {
            bail!("dig was not answered with {want:?}:\n{}", self.output);
        }
        Ok(())
    }

    /// No reply, and dig was told why with ICMP port unreachable (a REJECT's default).
    pub fn refused(&self) -> bool {
        self.status.is_none() && self.output.contains("connection refused")
    }

    /// No reply, and dig was told why with ICMP host unreachable or administratively prohibited.
    pub fn host_unreachable(&self) -> bool {
        self.status.is_none() && self.output.contains("host unreachable")
    }

    /// dig gave up waiting for a reply, or an error with what it printed.
    pub fn expect_timed_out(&self) -> Result<()> {
        if !self.timed_out {
            bail!("dig should have timed out:\n{}", self.output);
        }
        Ok(())
    }
}

/// dnsmasq answering [`TEST_NAME`] and [`BIG_TXT_NAME`] on `listen` (addresses), in the
/// foreground, reading no file of the machine's, logging queries to `log_file`.
pub fn dnsmasq_argv(listen: &[&str], pid_file: &Path, log_file: &Path) -> Vec<String> {
    let mut args = vec![
        "dnsmasq".to_string(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
    ];
    args.extend(listen.iter().map(|address| format!("--listen-address={address}")));
    args.extend([
        "--user=root".into(),
        format!("--pid-file={}", pid_file.display()),
        format!("--host-record={TEST_NAME},{TEST_A},{TEST_AAAA}"),
        format!("--txt-record={BIG_TXT_NAME},{}", big_txt_strings().join(",")),
        // An address form without an address: every name in the domain is NXDOMAIN.
        format!("--address=/{NXDOMAIN_DOMAIN}/"),
        format!("--address=/{CLUSTER_DOMAIN}/"),
        // dnsmasq's default (1232) would truncate the big answer instead of sending it.
        "--edns-packet-max=4096".into(),
        "--log-queries".into(),
        format!("--log-facility={}", log_file.display()),
    ]);
    args
}

/// The strings of [`BIG_TXT_NAME`]'s TXT record.
pub fn big_txt_strings() -> Vec<String> {
    (0..BIG_TXT_STRINGS).map(|i| char::from(b'a' + i as u8).to_string().repeat(250)).collect()
}

pub(crate) fn ensure_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, iptables, dnsmasq): run the tests as root");
    }
    Ok(())
}

/// What every test fixture that builds on the host does first: checks it runs as root, removes
/// what killed test processes left behind (`sweep`), and claims a fresh name (from `name`) with a
/// private directory `tracer-NAME` in the temporary directory.
pub(crate) fn claim_scratch(sweep: fn(), name: fn() -> String) -> Result<(String, PathBuf)> {
    ensure_root()?;
    sweep();
    let prefix = name();
    let dir = std::env::temp_dir().join(format!("tracer-{prefix}"));
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok((prefix, dir))
}

fn unique_prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seq = NEXT.fetch_add(1, Ordering::Relaxed);
    // The stale sweep skips labs whose pid is alive again (reused by another process); the time
    // part keeps a new lab from colliding with such a leftover.
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_micros() % 4096).unwrap_or(0);
    format!("{NAME_PREFIX}{}-{seq}{stamp:03x}", std::process::id())
}

/// Removes labs whose creating process no longer exists (a test binary that was SIGKILLed, so its
/// `Drop`s never ran). Best effort: a lab another process is removing at the same time is fine.
fn sweep_stale_labs() {
    let Ok(list) = run_on_host(&["ip", "netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = delete_netns(name);
        if let Some((prefix, _role)) = name.rsplit_once('-') {
            let _ = fs::remove_dir_all(std::env::temp_dir().join(format!("tracer-{prefix}")));
        }
    }
}

pub(crate) fn delete_netns(name: &str) -> Result<()> {
    // Anything still running in a lab namespace was started by the lab (a process handle that was
    // leaked); it would keep the namespace alive after `ip netns del`.
    if let Ok(pids) = run_on_host(&["ip", "netns", "pids", name]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
            let _ = send_signal(pid, libc::SIGKILL);
        }
    }
    // A namespace's own /etc files (`Lab::resolv_conf`) outlive `ip netns del`.
    let _ = fs::remove_dir_all(Path::new(ETC_NETNS).join(name));
    // And the directory itself, once no namespace has files there (fails while one has).
    let _ = fs::remove_dir(ETC_NETNS);
    run_on_host(&["ip", "netns", "del", name]).map(drop)
}

/// Where `ip netns exec` finds a namespace's own files for /etc.
const ETC_NETNS: &str = "/etc/netns";

pub(crate) fn stop_child(mut child: Child) {
    if let Ok(None) = child.try_wait() {
        let _ = send_signal(child.id(), libc::SIGTERM);
        if !matches!(wait_timeout(&mut child, Duration::from_secs(3)), Ok(Some(_))) {
            let _ = child.kill();
        }
    }
    let _ = child.wait();
}

/// Runs a command in the test's own (the host's) namespace; fails unless it exits 0. Returns
/// its stdout.
pub fn run_on_host(argv: &[&str]) -> Result<String> {
    let (program, args) = argv.split_first().ok_or_else(|| anyhow!("empty command"))?;
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", argv.join(" ")))?;
    check(&out, &format!("`{}`", argv.join(" ")))
}

pub(crate) fn check(out: &Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// A pod added to a running lab: its own namespace, a veth into the node's bridge.
pub struct LabPod {
    netns: String,
    veth: String,
    deleted: bool,
}

impl LabPod {
    pub fn create(lab: &Lab, tag: &str, veth: &str, ip: &str, index: Option<u32>) -> Result<LabPod> {
        let node = lab.netns(Ns::Node).to_string();
        // "<lab prefix>-<tag>": a lab left behind by a killed test run is swept with it.
        let netns = format!("{}-{tag}", node.strip_suffix("-node").unwrap_or(&node));
        run_on_host(&["ip", "netns", "add", &netns])?;
        let pod = LabPod { netns: netns.clone(), veth: veth.to_string(), deleted: false };
        let index = index.map(|i| i.to_string());
        let mut add = vec!["ip", "-n", &node, "link", "add", veth];
        if let Some(index) = &index {
            add.extend(["index", index.as_str()]);
        }
        add.extend(["type", "veth", "peer", "name", POD_IF, "netns", &netns]);
        run_on_host(&add)?;
        run_on_host(&["ip", "-n", &node, "link", "set", veth, "master", BRIDGE, "up"])?;
        run_on_host(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        run_on_host(&["ip", "-n", &netns, "addr", "add", &format!("{ip}/24"), "dev", POD_IF])?;
        run_on_host(&["ip", "-n", &netns, "link", "set", POD_IF, "up"])?;
        run_on_host(&["ip", "-n", &netns, "route", "add", "default", "via", BRIDGE_IP])?;
        Ok(pod)
    }

    pub fn node_ifindex(&self, lab: &Lab) -> Result<u32> {
        let links = lab.links(Ns::Node, Some(&self.veth))?;
        links
            .first()
            .and_then(|l| crate::output::u64_at(l, "/ifindex"))
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("no ifindex for {}: {links:?}", self.veth))
    }

    pub fn dig(&self) -> Result<Dig> {
        dig_in(&self.netns, CLUSTER_DNS_IP, TEST_NAME, &[])
    }

    /// Deletes the node-side veth (its peer goes with it), then the namespace.
    pub fn delete(mut self, lab: &Lab) -> Result<()> {
        self.deleted = true;
        run_on_host(&["ip", "-n", lab.netns(Ns::Node), "link", "del", &self.veth])?;
        run_on_host(&["ip", "netns", "del", &self.netns]).map(drop)
    }
}

impl Drop for LabPod {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = run_on_host(&["ip", "netns", "del", &self.netns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `dig +qr` prints first: the query it sends, with message id `id`.
    fn sending(id: u16) -> String {
        format!(
            "\
;; Sending:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: {id}
;; flags: rd ad; QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 1
"
        )
    }

    #[test]
    fn parses_answered_dig() {
        let out = sending(14044)
            + "
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 14044
;; flags: qr aa rd ra; QUERY: 1, ANSWER: 1, AUTHORITY: 0, ADDITIONAL: 1

;; QUESTION SECTION:
;example.test.			IN	A

;; ANSWER SECTION:
example.test.		0	IN	A	192.0.2.10

;; Query time: 0 msec
";
        let dig = Dig::parse(out, Some(0));
        assert_eq!(dig.id, Some(14044));
        assert_eq!(dig.status.as_deref(), Some("NOERROR"));
        assert_eq!(dig.answers, vec!["192.0.2.10".to_string()]);
        assert!(dig.answered());
        assert!(!dig.timed_out);
    }

    #[test]
    fn parses_timed_out_dig() {
        let out = sending(18352)
            + "
;; QUERY SIZE: 53

;; communications error to 10.96.0.10#53: timed out
;; no servers could be reached
";
        let dig = Dig::parse(out, Some(9));
        assert_eq!(dig.id, Some(18352));
        assert_eq!(dig.status, None);
        assert!(dig.answers.is_empty());
        assert!(!dig.answered());
        assert!(dig.timed_out);
    }
}
