//! End-to-end reliability of the real tracer binary (needs root and a built tracer, see
//! `tracer_tests::tracer_bin`): it never changes traffic, leaves nothing in the kernel however it
//! ends, counts exactly what it loses, follows pods coming and going, survives malformed packets,
//! exits cleanly into a closed pipe and says which privilege is missing.
//!
//! Every test builds its own lab. Traffic is generated from inside the lab's namespaces, either by
//! the lab's tools (dig) or by a thread of this process that entered a namespace with `setns(2)`
//! (sockets keep the namespace they were created in), so no extra tool is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::packets::*;
use tracer_tests::output::*;
use tracer_tests::tracer_bin;

// ---------------------------------------------------------------------------------------------
// 1. No traffic change
// ---------------------------------------------------------------------------------------------

/// Queries per burst, and how many may be outstanding at once (like `dnsperf -q`). The window
/// keeps dnsmasq's socket buffer from overflowing, which would lose queries with or without
/// tracer and make the comparison meaningless.
const BURST_QUERIES: u16 = 500;
const BURST_WINDOW: usize = 64;

#[test]
fn dns_burst_is_fully_answered_with_everything_traced() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let client = lab.netns(Ns::Client).to_string();

    let baseline = dns_burst(&client, CLUSTER_DNS_IP, BURST_QUERIES, BURST_WINDOW)?;
    ensure!(
        baseline.all_answered(),
        "without tracer the burst is not fully answered, the lab cannot judge tracer: {baseline:?}"
    );

    // All ports, JSON: every program has work for every frame of the burst.
    let tracer = Tracer::start(
        &lab,
        "burst",
        &["--port", "0", "--output", "json"],
        &[],
        true,
    )?
    .ready()?;
    let traced = dns_burst(&client, CLUSTER_DNS_IP, BURST_QUERIES, BURST_WINDOW)?;
    let done = tracer.stop()?;

    ensure!(
        traced.all_answered(),
        "with tracer running some queries of the burst were not answered: {traced:?}\n\
         (the same burst without tracer: {baseline:?})\n{}",
        done.describe_short()
    );
    ensure!(
        done.status.code() == Some(0),
        "tracer failed:\n{}",
        done.describe_short()
    );
    no_panic(&done.stderr)?;

    // It really traced the burst: every query entered the bridge in a record.
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;
    let queries_seen: BTreeSet<u64> = w
        .find(|p| stage_is(p, "bridge-in", CLIENT_VETH) && bool_at(p, "/dns/qr") == Some(false))
        .filter_map(|p| u64_at(p, "/dns/id"))
        .collect();
    let lost = u64_at(&w.summary, "/lost").unwrap_or(0);
    ensure!(
        lost > 0 || (1..=u64::from(BURST_QUERIES)).all(|id| queries_seen.contains(&id)),
        "tracer did not trace every query of the burst ({} of {BURST_QUERIES} seen, nothing lost); summary {}",
        queries_seen.len(),
        w.summary
    );
    Ok(())
}

#[derive(Debug)]
struct Burst {
    sent: usize,
    answered: usize,
    /// Replies that came back with an error code or without the answer.
    bad: Vec<(u16, u8)>,
    unanswered: Vec<u16>,
}

impl Burst {
    fn all_answered(&self) -> bool {
        self.answered == self.sent && self.bad.is_empty() && self.unanswered.is_empty()
    }
}

/// Sends `count` A queries for [`TEST_NAME`] (ids 1..=count) from a connected UDP socket in
/// `netns`, at most `window` outstanding, and waits up to 2 s for each reply. A connected socket
/// only accepts replies from the address it queried, like a real resolver.
fn dns_burst(netns: &str, server: &str, count: u16, window: usize) -> Result<Burst> {
    let server: SocketAddr = format!("{server}:53").parse()?;
    in_netns(netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        force_rcvbuf(&socket, 4 << 20)?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut outstanding: BTreeMap<u16, Instant> = BTreeMap::new();
        let mut next: u16 = 1;
        let mut burst = Burst {
            sent: 0,
            answered: 0,
            bad: Vec::new(),
            unanswered: Vec::new(),
        };
        let mut buf = [0u8; 1500];
        while next <= count || !outstanding.is_empty() {
            while next <= count && outstanding.len() < window {
                socket.send(&dns_query(next, TEST_NAME, 1))?;
                outstanding.insert(next, Instant::now());
                burst.sent += 1;
                next += 1;
            }
            match socket.recv(&mut buf) {
                Ok(n) if n >= 12 => {
                    let id = u16::from_be_bytes([buf[0], buf[1]]);
                    let qr = buf[2] & 0x80 != 0;
                    let rcode = buf[3] & 0x0f;
                    let answers = u16::from_be_bytes([buf[6], buf[7]]);
                    if qr && outstanding.remove(&id).is_some() {
                        if rcode == 0 && answers >= 1 {
                            burst.answered += 1;
                        } else {
                            burst.bad.push((id, rcode));
                        }
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("receiving DNS replies"),
            }
            let now = Instant::now();
            let expired: Vec<u16> = outstanding
                .iter()
                .filter(|(_, sent)| now.duration_since(**sent) > Duration::from_secs(2))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                outstanding.remove(&id);
                burst.unanswered.push(id);
            }
        }
        Ok(burst)
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Nothing left behind
// ---------------------------------------------------------------------------------------------

/// How a watch ends in the leftovers tests.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Signal(libc::c_int),
    /// `TRACER_FAULT=panic-after-attach`: panics right after printing that it watches.
    PanicAfterAttach,
    /// `TRACER_FAULT=error-mid-attach`: fails between the tracepoints and the netfilter hooks.
    ErrorMidAttach,
}

#[test]
fn nothing_left_behind_after_sigint() -> Result<()> {
    leaves_nothing_behind(Ending::Signal(libc::SIGINT))
}

#[test]
fn nothing_left_behind_after_sigterm() -> Result<()> {
    leaves_nothing_behind(Ending::Signal(libc::SIGTERM))
}

#[test]
fn nothing_left_behind_after_sigkill() -> Result<()> {
    leaves_nothing_behind(Ending::Signal(libc::SIGKILL))
}

#[test]
fn nothing_left_behind_after_a_panic() -> Result<()> {
    leaves_nothing_behind(Ending::PanicAfterAttach)
}

#[test]
fn nothing_left_behind_after_an_error_half_way_through_attaching() -> Result<()> {
    leaves_nothing_behind(Ending::ErrorMidAttach)
}

fn leaves_nothing_behind(ending: Ending) -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let before = NodeState::capture(&lab)?;
    let env: &[(&str, &str)] = match ending {
        Ending::Signal(_) => &[],
        Ending::PanicAfterAttach => &[("TRACER_FAULT", "panic-after-attach")],
        Ending::ErrorMidAttach => &[("TRACER_FAULT", "error-mid-attach")],
    };
    let mut tracer = Tracer::start(
        &lab,
        "leftovers",
        &["--port", "53", "--output", "json"],
        env,
        true,
    )?;
    let pid = tracer.pid();

    // What the process holds, collected from the start: with a fault it may be gone right after
    // attaching. `ip netns exec` execs, so the spawned pid is tracer's.
    let mut held = BpfIds::default();
    let deadline = Instant::now() + TRACER_READY_TIMEOUT;
    loop {
        held.extend(&held_by(pid));
        if tracer.stderr().contains(TRACER_READY) || !tracer.running()? {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "tracer neither watched nor exited within {TRACER_READY_TIMEOUT:?}:\n{}",
            tracer.stderr()
        );
        thread::sleep(Duration::from_millis(1));
    }
    held.extend(&held_by(pid));

    let done = match ending {
        Ending::Signal(signal) => {
            ensure!(
                tracer.stderr().contains(TRACER_READY),
                "tracer exited before watching:\n{}",
                tracer.stderr()
            );
            // A query while it runs, so the programs have worked.
            let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
            ensure!(dig.answered(), "dig was not answered:\n{}", dig.output);
            held.extend(&held_by(pid));
            tracer.signal(signal)?;
            let done = tracer.finish(STOP_GRACE)?;
            ensure!(
                !done.timed_out,
                "tracer ignored signal {signal}:\n{}",
                done.describe_short()
            );
            if signal == libc::SIGKILL {
                ensure!(
                    done.status.signal() == Some(libc::SIGKILL),
                    "expected death by SIGKILL: {}",
                    done.describe_short()
                );
            } else {
                ensure!(
                    done.status.code() == Some(0),
                    "tracer should exit 0 on signal {signal}:\n{}",
                    done.describe_short()
                );
                no_panic(&done.stderr)?;
            }
            done
        }
        Ending::PanicAfterAttach => {
            let done = tracer.finish(Duration::from_secs(10))?;
            ensure!(
                !done.timed_out,
                "TRACER_FAULT=panic-after-attach: tracer was still running 10 s after it started \
                 watching (fault not implemented?):\n{}",
                done.describe_short()
            );
            ensure!(
                done.stderr.contains(TRACER_READY) && done.stderr.contains("panicked"),
                "TRACER_FAULT=panic-after-attach: expected a panic after `{TRACER_READY}`:\n{}",
                done.describe_short()
            );
            ensure!(
                !done.status.success(),
                "a panic exited 0:\n{}",
                done.describe_short()
            );
            done
        }
        Ending::ErrorMidAttach => {
            let done = tracer.finish(Duration::from_secs(10))?;
            ensure!(
                !done.timed_out,
                "TRACER_FAULT=error-mid-attach: tracer did not fail (fault not implemented?):\n{}",
                done.describe_short()
            );
            let errors: Vec<&str> = done
                .stderr
                .lines()
                .filter(|l| l.starts_with("tracer: error:"))
                .collect();
            ensure!(
                done.status.code() == Some(2) && errors.len() == 1,
                "TRACER_FAULT=error-mid-attach: expected exit 2 with one `tracer: error:` line:\n{}",
                done.describe_short()
            );
            ensure!(
                !done.stderr.contains(TRACER_READY),
                "tracer said it watches although attaching failed:\n{}",
                done.describe_short()
            );
            no_panic(&done.stderr)?;
            done
        }
    };

    if !matches!(ending, Ending::ErrorMidAttach) {
        ensure!(
            !held.progs.is_empty() && !held.links.is_empty(),
            "saw no BPF programs or links held by tracer (pid {pid}) while it ran: {held:?}\n{}",
            done.describe_short()
        );
    }
    eprintln!("tracer pid {pid} held {held:?}");

    // The kernel's own listing must lose every one of them (freeing is deferred a little).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let remaining = held.intersection(&kernel_bpf_ids()?);
        if remaining.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "after tracer exited ({}) these of its BPF objects still exist in `bpftool prog/link/map \
             show`: {remaining:?}",
            done.status
        );
        thread::sleep(Duration::from_millis(100));
    }
    no_orphaned_tracer_programs()?;
    no_tc_or_xdp(&lab)?;
    NodeState::capture(&lab)?.compare(&before)
}

/// BPF object ids.
#[derive(Clone, Debug, Default)]
struct BpfIds {
    progs: BTreeSet<u32>,
    links: BTreeSet<u32>,
    maps: BTreeSet<u32>,
}

impl BpfIds {
    fn extend(&mut self, other: &BpfIds) {
        self.progs.extend(&other.progs);
        self.links.extend(&other.links);
        self.maps.extend(&other.maps);
    }

    fn intersection(&self, other: &BpfIds) -> BpfIds {
        BpfIds {
            progs: self.progs.intersection(&other.progs).copied().collect(),
            links: self.links.intersection(&other.links).copied().collect(),
            maps: self.maps.intersection(&other.maps).copied().collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.progs.is_empty() && self.links.is_empty() && self.maps.is_empty()
    }
}

/// The BPF objects a process holds file descriptors to, from `/proc/PID/fdinfo` (bpftool 7.1
/// here cannot show `pids`: it needs a BPF iterator this kernel refuses). A link's fdinfo also
/// names its program.
fn held_by(pid: u32) -> BpfIds {
    let mut ids = BpfIds::default();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Ok(id) = value.trim().parse::<u32>() else {
                continue;
            };
            match key {
                "prog_id" => ids.progs.insert(id),
                "link_id" => ids.links.insert(id),
                "map_id" => ids.maps.insert(id),
                _ => false,
            };
        }
    }
    ids
}

/// Every BPF program, link and map the kernel lists.
fn kernel_bpf_ids() -> Result<BpfIds> {
    let ids = |kind: &str| -> Result<BTreeSet<u32>> {
        Ok(bpftool(&[kind, "show"])?
            .iter()
            .filter_map(|o| o.get("id").and_then(Value::as_u64))
            .map(|id| id as u32)
            .collect())
    };
    Ok(BpfIds {
        progs: ids("prog")?,
        links: ids("link")?,
        maps: ids("map")?,
    })
}

fn bpftool(args: &[&str]) -> Result<Vec<Value>> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running bpftool (is bpftool installed?)")?;
    ensure!(
        out.status.success(),
        "bpftool {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("bpftool {} printed no JSON: {text}", args.join(" ")))?;
    Ok(value.as_array().cloned().unwrap_or_default())
}

/// Names tracer's kernel programs have in `bpftool prog show` (at most 15 characters).
const TRACER_PROGRAMS: [&str; 6] = [
    "bridge_receive",
    "bridge_transmit",
    "packet_dropped",
    "icmp_answered",
    "netfilter_early",
    "netfilter_late",
];

/// No program with one of tracer's names may exist without a live process holding it: such a
/// program would be kept by a pin or a leaked attachment. Other tracers (parallel tests) hold
/// theirs; one that is just exiting frees its programs within moments, hence the retries.
fn no_orphaned_tracer_programs() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let progs: Vec<(u32, String)> = bpftool(&["prog", "show"])?
            .iter()
            .filter_map(|p| {
                let name = p.get("name")?.as_str()?;
                let id = p.get("id")?.as_u64()? as u32;
                TRACER_PROGRAMS
                    .contains(&name)
                    .then(|| (id, name.to_string()))
            })
            .collect();
        let held = if progs.is_empty() {
            BpfIds::default()
        } else {
            held_by_anyone()
        };
        let orphans: Vec<&(u32, String)> = progs
            .iter()
            .filter(|(id, _)| !held.progs.contains(id))
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "tracer programs exist that no process holds (leaked): {orphans:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn held_by_anyone() -> BpfIds {
    let mut ids = BpfIds::default();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            {
                ids.extend(&held_by(pid));
            }
        }
    }
    ids
}

/// What tracer must not change or leave: the node's firewall (counters aside), bpffs pins, tc
/// and XDP attachments.
struct NodeState {
    firewall: BTreeMap<&'static str, String>,
    bpffs: Vec<String>,
}

impl NodeState {
    fn capture(lab: &Lab) -> Result<NodeState> {
        let mut firewall = BTreeMap::new();
        for (name, argv) in [
            ("iptables-nft-save", &["iptables-nft-save"][..]),
            ("ip6tables-nft-save", &["ip6tables-nft-save"][..]),
            ("iptables-legacy-save", &["iptables-legacy-save"][..]),
            ("ip6tables-legacy-save", &["ip6tables-legacy-save"][..]),
            ("nft list ruleset", &["nft", "list", "ruleset"][..]),
        ] {
            let out = lab.exec(Ns::Node, argv)?;
            let text = if out.status.success() {
                strip_counters(&String::from_utf8_lossy(&out.stdout))
            } else {
                format!("failed: {}", String::from_utf8_lossy(&out.stderr))
            };
            firewall.insert(name, text);
        }
        let mut bpffs = Vec::new();
        list_tree(Path::new("/sys/fs/bpf"), &mut bpffs);
        Ok(NodeState { firewall, bpffs })
    }

    /// Compares with the state before tracer ran; tc and XDP must have nothing at all.
    fn compare(&self, before: &NodeState) -> Result<()> {
        for (name, text) in &self.firewall {
            let was = before.firewall.get(name).map(String::as_str).unwrap_or("");
            ensure!(
                text == was,
                "`{name}` in the node namespace changed while tracer ran:\n--- before ---\n{was}\n\
                 --- after ---\n{text}"
            );
        }
        ensure!(
            self.bpffs == before.bpffs,
            "/sys/fs/bpf changed: before {:?}, after {:?}",
            before.bpffs,
            self.bpffs
        );
        Ok(())
    }
}

/// tracer attaches nothing through tc or XDP: every interface of the node namespace has no
/// filters, no clsact/ingress qdisc, and bpftool lists no tc/tcx/XDP program there.
fn no_tc_or_xdp(lab: &Lab) -> Result<()> {
    for ifname in interfaces(lab, Ns::Node)? {
        for direction in ["ingress", "egress"] {
            let out = lab.exec(
                Ns::Node,
                &["tc", "filter", "show", "dev", &ifname, direction],
            )?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(
                text.trim().is_empty(),
                "tc {direction} filters on {ifname} after tracer exited:\n{text}"
            );
        }
        let qdiscs = lab.run(Ns::Node, &["tc", "qdisc", "show", "dev", &ifname])?;
        ensure!(
            !qdiscs.contains("clsact") && !qdiscs.contains("ingress"),
            "a clsact/ingress qdisc on {ifname} after tracer exited:\n{qdiscs}"
        );
    }
    let net = lab.run(Ns::Node, &["bpftool", "-j", "net", "show"])?;
    let net: Value =
        serde_json::from_str(&net).with_context(|| format!("bpftool net show: {net}"))?;
    for section in net.as_array().into_iter().flatten() {
        for (kind, list) in section.as_object().into_iter().flatten() {
            ensure!(
                list.as_array().is_none_or(Vec::is_empty),
                "bpftool net show lists {kind} attachments in the node namespace: {list}"
            );
        }
    }
    Ok(())
}

fn interfaces(lab: &Lab, ns: Ns) -> Result<Vec<String>> {
    let json = lab.run(ns, &["ip", "-j", "link", "show"])?;
    let links: Value = serde_json::from_str(&json)?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("ifname")?.as_str().map(str::to_string))
        .collect())
}

/// iptables-save / nft output without packet and byte counters and without the dated comments.
fn strip_counters(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words: Vec<&str> = Vec::new();
        let mut tokens = line.split_whitespace().peekable();
        while let Some(token) = tokens.next() {
            let is_counter = token.starts_with('[')
                && token.ends_with(']')
                && token[1..token.len() - 1]
                    .split(':')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if is_counter {
                continue;
            }
            if (token == "packets" || token == "bytes")
                && tokens
                    .peek()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                tokens.next();
                continue;
            }
            words.push(token);
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

fn list_tree(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        out.push(path.display().to_string());
        if path.is_dir() {
            list_tree(&path, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Lost records are counted exactly
// ---------------------------------------------------------------------------------------------

const LOST_PORT: u16 = 9999;

#[test]
fn slow_consumer_loses_records_and_counts_every_one() -> Result<()> {
    // bridge-nf-call-iptables=0 and client and server on one subnet: a datagram is forwarded at
    // layer 2 and passes no netfilter hook, so it makes exactly two records.
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let client = lab.netns(Ns::Client).to_string();
    // Resolve MACs and fill the bridge's FDB before counting: nothing is flooded later.
    send_datagrams(&client, SERVER_IP, LOST_PORT, 3, None)?;
    thread::sleep(Duration::from_millis(300));

    // The formula, with a consumer that keeps up.
    let tracer = Tracer::start(
        &lab,
        "lost-formula",
        &[
            "--port",
            "9999",
            "--output",
            "json",
            "--ring-buffer-mib",
            "1",
        ],
        &[],
        true,
    )?
    .ready()?;
    let before = udp_arrived(&lab, Ns::Server)?;
    send_datagrams(
        &client,
        SERVER_IP,
        LOST_PORT,
        200,
        Some(Duration::from_millis(1)),
    )?;
    thread::sleep(Duration::from_millis(300));
    let delivered = udp_arrived(&lab, Ns::Server)? - before;
    let done = tracer.stop()?;
    ensure!(
        done.status.code() == Some(0),
        "tracer failed:\n{}",
        done.describe_short()
    );
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;
    ensure!(
        delivered == 200,
        "only {delivered} of 200 datagrams arrived at the server"
    );
    let dst = format!("{SERVER_IP}:{LOST_PORT}");
    let ins = w
        .find(|p| stage_is(p, "bridge-in", CLIENT_VETH) && str_at(p, "/dst") == Some(&dst))
        .count() as u64;
    let outs = w
        .find(|p| stage_is(p, "bridge-out", SERVER_VETH) && str_at(p, "/dst") == Some(&dst))
        .count() as u64;
    ensure!(
        ins == delivered && outs == delivered && w.packets.len() as u64 == 2 * delivered,
        "expected exactly {delivered} bridge-in on {CLIENT_VETH} and {delivered} bridge-out on \
         {SERVER_VETH} (2 records per datagram), got {ins} and {outs} of {} records:\n{}",
        w.packets.len(),
        w.describe()
    );
    w.check_summary()?;

    // The slow consumer: stopped while the kernel fills its 1 MiB ring buffer many times over.
    const BLAST: u32 = 20_000;
    let mut tracer = Tracer::start(
        &lab,
        "lost-slow",
        &[
            "--port",
            "9999",
            "--output",
            "json",
            "--ring-buffer-mib",
            "1",
        ],
        &[],
        true,
    )?
    .ready()?;
    let before = udp_arrived(&lab, Ns::Server)?;
    tracer.signal(libc::SIGSTOP)?;
    send_datagrams(&client, SERVER_IP, LOST_PORT, BLAST, None)?;
    thread::sleep(Duration::from_millis(300));
    let delivered = udp_arrived(&lab, Ns::Server)? - before;
    tracer.signal(libc::SIGCONT)?;
    // Long enough for the live report (at most once per second) to come out.
    thread::sleep(Duration::from_millis(2500));
    let done = tracer.stop()?;
    ensure!(
        done.status.code() == Some(0),
        "tracer failed:\n{}",
        done.describe_short()
    );
    no_panic(&done.stderr)?;
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;
    let s = &w.summary;
    let packets = u64_at(s, "/packets").context("summary without packets")?;
    let lost = u64_at(s, "/lost").context("summary without lost")?;
    let per_cpu: Vec<u64> = s
        .get("lost_per_cpu")
        .and_then(Value::as_array)
        .context("summary without lost_per_cpu")?
        .iter()
        .map(|v| v.as_u64().context("lost_per_cpu entry is not a count"))
        .collect::<Result<_>>()?;
    eprintln!("sent {BLAST}, server got {delivered}; packets {packets}, lost {lost} {per_cpu:?}");
    ensure!(
        packets == w.packets.len() as u64,
        "summary packets {packets} but {} packet lines",
        w.packets.len()
    );
    ensure!(
        lost > 0,
        "a stopped consumer with a 1 MiB ring buffer lost nothing: {s}"
    );
    ensure!(
        per_cpu.iter().sum::<u64>() == lost,
        "lost {lost} is not the sum of lost_per_cpu {per_cpu:?}"
    );
    ensure!(
        packets + lost == 2 * delivered,
        "{delivered} datagrams crossed the bridge (2 records each = {}), but packets {packets} + \
         lost {lost} = {}",
        2 * delivered,
        packets + lost
    );
    let lost_lines: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| l.starts_with("tracer: ") && l.contains("lost") && !l.contains(TRACER_READY))
        .collect();
    ensure!(
        !lost_lines.is_empty(),
        "no live `tracer: ... lost` line on stderr while records were lost:\n{}",
        done.stderr
    );
    // Everything was lost while tracer was stopped, so a report after SIGCONT has the total.
    let total = lost.to_string();
    ensure!(
        lost_lines
            .iter()
            .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|n| n == total)),
        "no live lost line gives the running total {total}: {lost_lines:?}"
    );
    // At most one a second: tracer ran about 3 s after SIGCONT.
    ensure!(
        lost_lines.len() <= 5,
        "more live lost lines than one a second: {lost_lines:?}"
    );
    Ok(())
}

/// Sends `count` UDP datagrams from `netns` to `ip:port` from one unconnected socket (so ICMP
/// errors do not fail later sends); with `pause`, sleeps that long between datagrams.
fn send_datagrams(
    netns: &str,
    ip: &str,
    port: u16,
    count: u32,
    pause: Option<Duration>,
) -> Result<()> {
    let to: SocketAddr = format!("{ip}:{port}").parse()?;
    in_netns(netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..count {
            let payload = format!("tracer-lost-probe {i}");
            socket
                .send_to(payload.as_bytes(), to)
                .with_context(|| format!("sending datagram {i}"))?;
            if let Some(pause) = pause {
                thread::sleep(pause);
            }
        }
        Ok(())
    })
}

/// UDP datagrams that reached the UDP layer of a namespace (delivered, no port, or dropped at
/// the socket), from its `/proc/net/snmp`.
fn udp_arrived(lab: &Lab, ns: Ns) -> Result<u64> {
    let text = lab.run(ns, &["cat", "/proc/net/snmp"])?;
    let udp: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("Udp:"))
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    ensure!(udp.len() == 2, "no Udp lines in /proc/net/snmp:\n{text}");
    let mut total = 0;
    for key in ["InDatagrams", "NoPorts", "InErrors"] {
        let i = udp[0]
            .iter()
            .position(|k| *k == key)
            .with_context(|| format!("no Udp {key} in /proc/net/snmp"))?;
        total += udp[1][i].parse::<u64>()?;
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// 4. Churn
// ---------------------------------------------------------------------------------------------

#[test]
fn pods_created_and_deleted_during_a_watch_are_followed() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let tracer = Tracer::start(
        &lab,
        "churn",
        &["--port", "53", "--output", "json"],
        &[],
        true,
    )?
    .ready()?;

    let first = Pod::create(&lab, "pa", "veth-pa", "10.244.0.9", None)?;
    let index = first.node_ifindex(&lab)?;
    let dig_a = first.dig()?;
    // Let tracer print the first pod's records before its ifindex gets a new owner.
    thread::sleep(Duration::from_millis(500));
    first.delete(&lab)?;
    thread::sleep(Duration::from_millis(300));

    let second = Pod::create(&lab, "pb", "veth-pb", "10.244.0.11", Some(index))?;
    ensure!(
        second.node_ifindex(&lab)? == index,
        "the second pod's veth did not get ifindex {index}"
    );
    let dig_b = second.dig()?;
    thread::sleep(Duration::from_millis(300));
    second.delete(&lab)?;
    thread::sleep(Duration::from_millis(300));
    // And the lab's own client still works after the churn.
    let dig_c = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    thread::sleep(Duration::from_millis(200));
    let done = tracer.stop()?;

    for (who, dig) in [("pod A", &dig_a), ("pod B", &dig_b), ("client", &dig_c)] {
        ensure!(
            dig.answered(),
            "{who}'s query was not answered:\n{}",
            dig.output
        );
    }
    ensure!(
        done.status.code() == Some(0),
        "tracer failed:\n{}",
        done.describe_short()
    );
    let complaints: Vec<&str> = done
        .stderr
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("warning") || l.contains("panicked")
        })
        .collect();
    ensure!(
        complaints.is_empty(),
        "tracer complained about the churn:\n{}",
        done.stderr
    );
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;
    for (who, dig, veth, ip) in [
        ("pod A", &dig_a, "veth-pa", "10.244.0.9"),
        ("pod B", &dig_b, "veth-pb", "10.244.0.11"),
    ] {
        let id = dig
            .id
            .with_context(|| format!("{who}'s dig printed no id"))?;
        let query = w.find_one(
            &format!("{who}'s query entering the bridge on {veth}"),
            |p| {
                str_at(p, "/stage") == Some("bridge-in")
                    && dns_is(p, id, false)
                    && str_at(p, "/src").and_then(ip_of) == Some(ip)
            },
        )?;
        expect_str(query, "/ifname", veth)?;
        ensure!(
            u64_at(query, "/ifindex") == Some(u64::from(index)),
            "{who}'s query is not on ifindex {index}: {query}"
        );
        let reply = w.find_one(
            &format!("{who}'s reply leaving the bridge on {veth}"),
            |p| {
                str_at(p, "/stage") == Some("bridge-out")
                    && dns_is(p, id, true)
                    && str_at(p, "/dst").and_then(ip_of) == Some(ip)
            },
        )?;
        expect_str(reply, "/ifname", veth)?;
    }
    let id = dig_c.id.context("client dig printed no id")?;
    w.find_one("the client's query after the churn", |p| {
        stage_is(p, "bridge-in", CLIENT_VETH) && dns_is(p, id, false)
    })?;
    w.check_summary()
}

/// A pod added to a running lab: its own namespace, a veth into the node's bridge.
struct Pod {
    netns: String,
    veth: String,
    deleted: bool,
}

impl Pod {
    fn create(lab: &Lab, tag: &str, veth: &str, ip: &str, index: Option<u32>) -> Result<Pod> {
        let node = lab.netns(Ns::Node).to_string();
        // "<lab prefix>-<tag>": a lab left behind by a killed test run is swept with it.
        let netns = format!("{}-{tag}", node.strip_suffix("-node").unwrap_or(&node));
        cmd(&["ip", "netns", "add", &netns])?;
        let pod = Pod {
            netns: netns.clone(),
            veth: veth.to_string(),
            deleted: false,
        };
        let index = index.map(|i| i.to_string());
        let mut add = vec!["ip", "-n", &node, "link", "add", veth];
        if let Some(index) = &index {
            add.extend(["index", index.as_str()]);
        }
        add.extend(["type", "veth", "peer", "name", POD_IF, "netns", &netns]);
        cmd(&add)?;
        cmd(&[
            "ip", "-n", &node, "link", "set", veth, "master", BRIDGE, "up",
        ])?;
        cmd(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        cmd(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            POD_IF,
        ])?;
        cmd(&["ip", "-n", &netns, "link", "set", POD_IF, "up"])?;
        cmd(&[
            "ip", "-n", &netns, "route", "add", "default", "via", BRIDGE_IP,
        ])?;
        Ok(pod)
    }

    fn node_ifindex(&self, lab: &Lab) -> Result<u32> {
        let json = lab.run(Ns::Node, &["ip", "-j", "link", "show", &self.veth])?;
        let links: Value = serde_json::from_str(&json)?;
        links
            .pointer("/0/ifindex")
            .and_then(Value::as_u64)
            .map(|i| i as u32)
            .with_context(|| format!("no ifindex for {}: {json}", self.veth))
    }

    fn dig(&self) -> Result<Dig> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .args(["dig", "+tries=1", "+time=2", "+qr"])
            .arg(format!("@{CLUSTER_DNS_IP}"))
            .arg(TEST_NAME)
            .stdin(Stdio::null())
            .output()
            .context("running dig in a pod")?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(Dig::parse(text, out.status.code()))
    }

    /// Deletes the node-side veth (its peer goes with it), then the namespace.
    fn delete(mut self, lab: &Lab) -> Result<()> {
        self.deleted = true;
        cmd(&["ip", "-n", lab.netns(Ns::Node), "link", "del", &self.veth])?;
        cmd(&["ip", "netns", "del", &self.netns])
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = cmd(&["ip", "netns", "del", &self.netns]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Malformed input
// ---------------------------------------------------------------------------------------------

/// DNS ids of the well-formed queries hidden in unusual packets.
const ID_IPV4_OPTIONS: u16 = 0x0a01;
const ID_IPV4_LONG_OPTIONS: u16 = 0x0a02;
const ID_IPV6_HOP_BY_HOP: u16 = 0x0a03;
const ID_IPV6_FRAGMENT_HEADER: u16 = 0x0a04;
const ID_IPV4_FRAGMENTS: u16 = 0x0a05;
const ID_VLAN: u16 = 0x0a06;

#[test]
fn malformed_packets_through_the_bridge_do_not_disturb_the_watch() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let client_mac = mac_of(&lab, Ns::Client, POD_IF)?;
    let server_mac = mac_of(&lab, Ns::Server, POD_IF)?;
    let gateway_mac = mac_of(&lab, Ns::Node, BRIDGE)?;
    // Neighbour entries so the server's answers to the valid ones go out without delay.
    lab.dig(SERVER_IP, TEST_NAME, &[])?;

    let mut tracer = Tracer::start(
        &lab,
        "malformed",
        &["--port", "53", "--output", "json"],
        &[],
        true,
    )?
    .ready()?;

    let frames = malformed_frames(client_mac, server_mac, gateway_mac);
    let count = frames.len();
    send_frames(lab.netns(Ns::Client), POD_IF, &frames)?;
    thread::sleep(Duration::from_millis(500));
    ensure!(
        tracer.running()?,
        "tracer died on malformed input:\n{}",
        tracer.stderr()
    );

    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    thread::sleep(Duration::from_millis(300));
    let done = tracer.stop()?;
    ensure!(
        dig.answered(),
        "normal query after the bad ones not answered:\n{}",
        dig.output
    );
    ensure!(
        done.status.code() == Some(0),
        "tracer failed after {count} malformed frames:\n{}",
        done.describe_short()
    );
    no_panic(&done.stderr)?;
    for word in ["malformed", "could not be decoded", "error"] {
        ensure!(
            !done.stderr.to_lowercase().contains(word),
            "tracer printed `{word}` on stderr:\n{}",
            done.stderr
        );
    }
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;
    let id = dig.id.context("dig printed no id")?;
    w.find_one("the normal query after the malformed ones", |p| {
        stage_is(p, "bridge-in", CLIENT_VETH) && dns_is(p, id, false)
    })?;
    // A query in an IPv4 packet with options is an ordinary query to port 53.
    for (what, id) in [
        ("the query in an IPv4 packet with options", ID_IPV4_OPTIONS),
        (
            "the query in an IPv4 packet with a 60-byte header",
            ID_IPV4_LONG_OPTIONS,
        ),
    ] {
        let q = w.find_one(what, |p| {
            stage_is(p, "bridge-in", CLIENT_VETH) && dns_is(p, id, false)
        })?;
        expect_str(q, "/dns/qname", "example.test.")?;
        expect_str(q, "/dst", &format!("{SERVER_IP}:53"))?;
    }
    for (what, id) in [
        ("IPv6 with a hop-by-hop header", ID_IPV6_HOP_BY_HOP),
        ("IPv6 with a fragment header", ID_IPV6_FRAGMENT_HEADER),
        ("IPv4 fragments", ID_IPV4_FRAGMENTS),
        ("802.1Q-tagged", ID_VLAN),
    ] {
        let seen: Vec<String> = w
            .find(|p| u64_at(p, "/dns/id") == Some(u64::from(id)))
            .map(describe_packet)
            .collect();
        eprintln!("query in {what}: {} records {seen:#?}", seen.len());
    }
    eprintln!(
        "{count} malformed frames; summary {}; {} packet records",
        w.summary,
        w.packets.len()
    );
    Ok(())
}

/// A frame that ends inside its IP or UDP header has no ports: the kernel side must not read the
/// missing bytes from beyond the frame (what is there is left over from earlier packets). Each cut
/// frame follows a complete query, whose bytes are the likeliest leftovers.
#[test]
fn frames_cut_inside_their_headers_are_not_read_past_their_end() -> Result<()> {
    // bridge-nf-call-iptables=0: the bridge forwards the broken frames without looking at them.
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let client_mac = mac_of(&lab, Ns::Client, POD_IF)?;
    let server_mac = mac_of(&lab, Ns::Server, POD_IF)?;
    let cip: [u8; 4] = CLIENT_IP.parse::<Ipv4Addr>()?.octets();
    let sip: [u8; 4] = SERVER_IP.parse::<Ipv4Addr>()?.octets();
    let cip6: [u8; 16] = CLIENT_IP6.parse::<Ipv6Addr>()?.octets();
    let sip6: [u8; 16] = SERVER_IP6.parse::<Ipv6Addr>()?.octets();
    // The cut frames come from addresses and ports no complete frame uses.
    let (other, other_dst) = ([10, 9, 9, 9], [10, 8, 8, 8]);
    let (other6, other6_dst) = (
        [0xfd, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        [0xfd, 0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8],
    );
    let v4 = ipv4(
        other,
        other_dst,
        17,
        &[],
        0x500,
        0,
        &udp4(other, other_dst, 1111, 2222, &[0x55; 30]),
    );
    let v6 = ipv6(
        other6,
        other6_dst,
        17,
        &udp6(other6, other6_dst, 1111, 2222, &[0x55; 30]),
    );
    let cuts: [(&str, u16, &[u8]); 4] = [
        ("IPv4 header cut at 10 bytes", 0x0800, &v4[..10]),
        ("IPv4 header and 2 bytes of UDP", 0x0800, &v4[..22]),
        ("IPv6 header cut at 30 bytes", 0x86dd, &v6[..30]),
        ("IPv6 header and 2 bytes of UDP", 0x86dd, &v6[..42]),
    ];
    let mut frames = Vec::new();
    for (i, (what, ethertype, cut)) in cuts.iter().enumerate() {
        let i = i as u16;
        let query = dns_query(0x7700 + i, TEST_NAME, 1);
        let complete = if *ethertype == 0x0800 {
            ipv4(
                cip,
                sip,
                17,
                &[],
                0x400 + i,
                0,
                &udp4(cip, sip, 40300 + i, 53, &query),
            )
        } else {
            ipv6(cip6, sip6, 17, &udp6(cip6, sip6, 40300 + i, 53, &query))
        };
        frames.push((
            format!("complete query {i}"),
            ether(server_mac, client_mac, *ethertype, &complete),
        ));
        frames.push((
            what.to_string(),
            ether(server_mac, client_mac, *ethertype, cut),
        ));
    }

    let tracer =
        Tracer::start(&lab, "cut", &["--port", "0", "--output", "json"], &[], true)?.ready()?;
    // Several rounds: whether leftovers look like a UDP header is up to the allocator.
    for _ in 0..3 {
        send_frames(lab.netns(Ns::Client), POD_IF, &frames)?;
    }
    thread::sleep(Duration::from_millis(300));
    let done = tracer.stop()?;
    ensure!(
        done.status.code() == Some(0),
        "tracer failed:\n{}",
        done.describe_short()
    );
    no_panic(&done.stderr)?;
    let w = WatchJson::parse(&done.stdout).with_context(|| done.describe_short())?;

    // Every record must be one of the complete queries or its reply.
    let complete_flow = |p: &Value| {
        let ports: Vec<Option<u16>> = ["/src", "/dst"]
            .iter()
            .map(|k| str_at(p, k).and_then(port_of))
            .collect();
        ports.contains(&Some(53))
            && ports
                .iter()
                .flatten()
                .any(|port| (40300..40304).contains(port))
    };
    let phantoms: Vec<String> = w
        .find(|p| !complete_flow(p))
        .map(|p| format!("{} len={}", describe_packet(p), p["len"]))
        .collect();
    ensure!(
        phantoms.is_empty(),
        "records for frames cut inside their IP/UDP header, with addresses or ports read from \
         beyond the frame's end:\n{}\n(all records:\n{})",
        phantoms.join("\n"),
        w.describe()
    );
    ensure!(
        w.find(|p| stage_is(p, "bridge-in", CLIENT_VETH)).count() == 3 * cuts.len(),
        "expected one bridge-in record per complete query (more: a cut frame was reported with a \
         previous frame's headers):\n{}",
        w.describe()
    );
    Ok(())
}

fn mac_of(lab: &Lab, ns: Ns, ifname: &str) -> Result<[u8; 6]> {
    let json = lab.run(ns, &["ip", "-j", "link", "show", ifname])?;
    let links: Value = serde_json::from_str(&json)?;
    let text = links
        .pointer("/0/address")
        .and_then(Value::as_str)
        .with_context(|| format!("no address for {ifname}: {json}"))?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes.try_into().map_err(|_| anyhow!("MAC {text}"))
}

/// Frames from the client pod: broken DNS to the server (bridged) and to the ClusterIP (routed up
/// to the node and DNATed), and well-formed queries in unusual IP packets.
fn malformed_frames(client: [u8; 6], server: [u8; 6], gateway: [u8; 6]) -> Vec<(String, Vec<u8>)> {
    let cip: [u8; 4] = CLIENT_IP.parse::<Ipv4Addr>().unwrap().octets();
    let sip: [u8; 4] = SERVER_IP.parse::<Ipv4Addr>().unwrap().octets();
    let vip: [u8; 4] = CLUSTER_DNS_IP.parse::<Ipv4Addr>().unwrap().octets();
    let cip6: [u8; 16] = CLIENT_IP6.parse::<Ipv6Addr>().unwrap().octets();
    let sip6: [u8; 16] = SERVER_IP6.parse::<Ipv6Addr>().unwrap().octets();
    let mut frames = Vec::new();

    let payloads = malformed_dns();
    for (dst_mac, dst_ip, via) in [(server, sip, "bridged"), (gateway, vip, "ClusterIP")] {
        for (i, (what, dns)) in payloads.iter().enumerate() {
            let udp = udp4(cip, dst_ip, 40000 + i as u16, 53, dns);
            let ip = ipv4(cip, dst_ip, 17, &[], 0x100 + i as u16, 0, &udp);
            frames.push((
                format!("{what} ({via})"),
                ether(dst_mac, client, 0x0800, &ip),
            ));
        }
    }

    let query = |id| dns_query(id, TEST_NAME, 1);
    let v4 = |udp: &[u8], options: &[u8], id: u16| ipv4(cip, sip, 17, options, id, 0, udp);

    // Empty UDP payload; a UDP length longer than the datagram; a UDP length below 8.
    let mut lies = udp4(cip, sip, 40100, 53, &query(0x0b01));
    lies[4..6].copy_from_slice(&400u16.to_be_bytes());
    let mut short = udp4(cip, sip, 40101, 53, &query(0x0b02));
    short[4..6].copy_from_slice(&3u16.to_be_bytes());
    for (what, udp) in [
        ("empty UDP payload", udp4(cip, sip, 40102, 53, &[])),
        ("UDP length longer than the datagram", lies),
        ("UDP length below 8", short),
    ] {
        frames.push((
            what.to_string(),
            ether(server, client, 0x0800, &v4(&udp, &[], 0x200)),
        ));
    }

    // IPv4 header claims more than the frame holds; IP header cut short; version 6 in 0x0800.
    let udp = udp4(cip, sip, 40103, 53, &query(0x0b03));
    let mut long_total = v4(&udp, &[], 0x201);
    long_total[2..4].copy_from_slice(&1400u16.to_be_bytes());
    fix_ipv4_checksum(&mut long_total);
    frames.push((
        "IPv4 total length beyond the frame".into(),
        ether(server, client, 0x0800, &long_total),
    ));
    let cut = v4(&udp, &[], 0x202);
    frames.push((
        "IPv4 header cut at 10 bytes".into(),
        ether(server, client, 0x0800, &cut[..10]),
    ));
    frames.push((
        "IPv4 cut inside the UDP header".into(),
        ether(server, client, 0x0800, &cut[..24]),
    ));
    let mut wrong_version = v4(&udp, &[], 0x203);
    wrong_version[0] = 0x65;
    frames.push((
        "IP version 6 in an IPv4 frame".into(),
        ether(server, client, 0x0800, &wrong_version),
    ));
    let mut ihl_too_big = v4(&udp, &[], 0x204);
    ihl_too_big[0] = 0x4f;
    fix_ipv4_checksum(&mut ihl_too_big);
    frames.push((
        "IPv4 IHL 15 without the options".into(),
        ether(server, client, 0x0800, &ihl_too_big),
    ));

    // Well-formed queries in IPv4 packets with options: NOPs + end (24-byte header), and a
    // 60-byte header full of NOPs.
    let udp = udp4(cip, sip, 40104, 53, &query(ID_IPV4_OPTIONS));
    frames.push((
        "IPv4 with options".into(),
        ether(server, client, 0x0800, &v4(&udp, &[1, 1, 1, 0], 0x205)),
    ));
    let udp = udp4(cip, sip, 40105, 53, &query(ID_IPV4_LONG_OPTIONS));
    let mut nops = vec![1u8; 39];
    nops.push(0);
    frames.push((
        "IPv4 with a 60-byte header".into(),
        ether(server, client, 0x0800, &v4(&udp, &nops, 0x206)),
    ));

    // IPv4 fragments of a query, the ports in the first; then a lone second fragment.
    let udp = udp4(cip, sip, 40106, 53, &query(ID_IPV4_FRAGMENTS));
    let (head, tail) = udp.split_at(16);
    let first = ipv4(cip, sip, 17, &[], 0x300, 0x2000, head);
    let second = ipv4(cip, sip, 17, &[], 0x300, (16 / 8) as u16, tail);
    frames.push((
        "IPv4 first fragment".into(),
        ether(server, client, 0x0800, &first),
    ));
    frames.push((
        "IPv4 second fragment".into(),
        ether(server, client, 0x0800, &second),
    ));
    let lone = ipv4(cip, sip, 17, &[], 0x301, 0x2000 | 3, &[0u8; 24]);
    frames.push((
        "IPv4 lone middle fragment".into(),
        ether(server, client, 0x0800, &lone),
    ));

    // IPv6: a hop-by-hop header (PadN) before UDP; an atomic fragment header before UDP.
    let udp = udp6(cip6, sip6, 40107, 53, &query(ID_IPV6_HOP_BY_HOP));
    let mut hbh = vec![17u8, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&udp);
    frames.push((
        "IPv6 hop-by-hop header".into(),
        ether(server, client, 0x86dd, &ipv6(cip6, sip6, 0, &hbh)),
    ));
    let udp = udp6(cip6, sip6, 40108, 53, &query(ID_IPV6_FRAGMENT_HEADER));
    let mut frag = vec![17u8, 0, 0, 0, 0, 0, 0x12, 0x34];
    frag.extend_from_slice(&udp);
    frames.push((
        "IPv6 fragment header".into(),
        ether(server, client, 0x86dd, &ipv6(cip6, sip6, 44, &frag)),
    ));
    let udp = udp6(cip6, sip6, 40109, 53, &[0xff; 3]);
    let mut truncated6 = ipv6(cip6, sip6, 17, &udp);
    truncated6.truncate(30);
    frames.push((
        "IPv6 header cut at 30 bytes".into(),
        ether(server, client, 0x86dd, &truncated6),
    ));

    // An 802.1Q-tagged query (VLAN 100), and a double-tagged one.
    let udp = udp4(cip, sip, 40110, 53, &query(ID_VLAN));
    let ip = v4(&udp, &[], 0x207);
    let mut tagged = vec![0x00, 100];
    tagged.extend_from_slice(&0x0800u16.to_be_bytes());
    tagged.extend_from_slice(&ip);
    frames.push((
        "802.1Q tagged".into(),
        ether(server, client, 0x8100, &tagged),
    ));
    let mut double = vec![0x00, 200];
    double.extend_from_slice(&0x8100u16.to_be_bytes());
    double.extend_from_slice(&tagged);
    frames.push((
        "802.1ad double tagged".into(),
        ether(server, client, 0x88a8, &double),
    ));

    // TCP to port 53: a data offset pointing past the segment, a data offset of 0, and a DNS
    // length prefix longer than the data.
    let mut dns_tcp = 4000u16.to_be_bytes().to_vec();
    dns_tcp.extend_from_slice(&query(0x0b04));
    for (what, doff, payload) in [
        ("TCP data offset past the segment", 15u8, &[][..]),
        ("TCP data offset 0", 0u8, &dns_tcp[..]),
        ("TCP DNS length prefix beyond the data", 5u8, &dns_tcp[..]),
    ] {
        let seg = tcp4(40111, 53, doff, payload);
        frames.push((
            what.to_string(),
            ether(
                server,
                client,
                0x0800,
                &ipv4(cip, sip, 6, &[], 0x208, 0, &seg),
            ),
        ));
    }
    frames
}

/// DNS messages that break the rules.
fn malformed_dns() -> Vec<(&'static str, Vec<u8>)> {
    let with = |mut h: Vec<u8>, tail: &[u8]| {
        h.extend_from_slice(tail);
        h
    };
    let mut long_label = vec![64u8];
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut long_name = Vec::new();
    for _ in 0..5 {
        long_name.push(63u8);
        long_name.extend(std::iter::repeat_n(b'b', 63));
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut reply_question = qname(TEST_NAME);
    reply_question.extend_from_slice(&[0, 1, 0, 1]);
    let mut cut_answer = reply_question.clone();
    // Answer: pointer to the question's name, A IN, TTL, RDLENGTH 0xffff, two bytes of data.
    cut_answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0xff, 0xff, 192, 0]);
    let mut looping_answer = reply_question.clone();
    let at = 12 + looping_answer.len() as u8;
    looping_answer.extend_from_slice(&[0xc0, at, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, at]);
    vec![
        (
            "DNS header cut at 5 bytes",
            vec![0x12, 0x34, 0x01, 0x00, 0x00],
        ),
        (
            "question cut inside a label",
            with(dns_header(0x0c01, 0x0100, 1, 0), &[7, b'e', b'x', b'a']),
        ),
        (
            "question without type and class",
            with(dns_header(0x0c02, 0x0100, 1, 0), &qname(TEST_NAME)),
        ),
        (
            "compression pointer to itself",
            with(dns_header(0x0c03, 0x0100, 1, 0), &[0xc0, 12, 0, 1, 0, 1]),
        ),
        (
            "two compression pointers in a loop",
            with(
                dns_header(0x0c04, 0x0100, 1, 0),
                &[0xc0, 14, 0xc0, 12, 0, 1, 0, 1],
            ),
        ),
        (
            "compression pointer past the message",
            with(dns_header(0x0c05, 0x0100, 1, 0), &[0xc0, 0xff, 0, 1, 0, 1]),
        ),
        (
            "label of 64 bytes",
            with(dns_header(0x0c06, 0x0100, 1, 0), &long_label),
        ),
        (
            "name over 255 bytes",
            with(dns_header(0x0c07, 0x0100, 1, 0), &long_name),
        ),
        (
            "65535 questions",
            with(dns_header(0x0c08, 0x0100, 0xffff, 0xffff), &reply_question),
        ),
        (
            "response with a cut answer",
            with(dns_header(0x0c09, 0x8180, 1, 3), &cut_answer),
        ),
        (
            "response with a looping CNAME answer",
            with(dns_header(0x0c0a, 0x8180, 1, 1), &looping_answer),
        ),
        ("all 0xff", vec![0xff; 300]),
    ]
}

// ---------------------------------------------------------------------------------------------
// 6. Closed pipe
// ---------------------------------------------------------------------------------------------

#[test]
fn watch_into_head_exits_cleanly_when_the_pipe_closes() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let tracer = tracer_bin()?;
    let err_file = lab.dir().join("pipe.err");
    let script = format!(
        "'{}' watch --port 53 2>'{}' | head -5; echo \"pipestatus ${{PIPESTATUS[0]}} ${{PIPESTATUS[1]}}\"",
        tracer.display(),
        err_file.display()
    );
    let mut child = lab
        .command(Ns::Node, &["bash", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("starting the pipeline")?;
    let group = child.id();
    let stop = AtomicBool::new(false);
    let (status, queries) = thread::scope(|s| {
        let querier = s.spawn(|| {
            let mut n = 0;
            // Queries until the pipeline ends; the first may come before tracer watches.
            while !stop.load(Ordering::Relaxed) {
                let _ = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &["+time=1"]);
                n += 1;
                thread::sleep(Duration::from_millis(150));
            }
            n
        });
        let status = wait_timeout(&mut child, Duration::from_secs(25));
        stop.store(true, Ordering::Relaxed);
        (status, querier.join().unwrap_or(0))
    });
    let status = status?;
    if status.is_none() {
        // SAFETY: kill(2) on the pipeline's own process group.
        unsafe { libc::kill(-(group as libc::pid_t), libc::SIGKILL) };
        let _ = child.wait();
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let tracer_err = fs::read_to_string(&err_file).unwrap_or_default();
    let described = format!(
        "{queries} queries sent\n--- stdout ---\n{stdout}--- bash stderr ---\n{}--- tracer stderr ---\n{tracer_err}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        status.is_some(),
        "the pipeline `tracer watch | head -5` did not end within 25 s (tracer kept running after \
         head exited?):\n{described}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.len() == 6 && lines[..5].iter().all(|l| !l.trim().is_empty()),
        "head should print 5 tracer lines, then the exit statuses:\n{described}"
    );
    ensure!(
        lines[5] == "pipestatus 0 0",
        "tracer (first) and head (second) should both exit 0:\n{described}"
    );
    ensure!(
        tracer_err.contains(TRACER_READY),
        "tracer never watched:\n{described}"
    );
    no_panic(&tracer_err)?;
    for word in ["error", "Broken pipe"] {
        ensure!(
            !tracer_err.contains(word),
            "tracer printed `{word}`:\n{described}"
        );
    }
    ensure!(
        tracer_err.lines().any(|l| l.starts_with("-- ") && l.contains("packets")),
        "with its output gone, the summary goes to standard error:\n{described}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Privileges
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_capabilities_are_named_in_one_line() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // A copy uid 65534 can execute whatever the checkout's permissions.
    let bin = lab.dir().join("tracer-unprivileged");
    fs::copy(tracer_bin()?, &bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(lab.dir(), fs::Permissions::from_mode(0o755))?;

    for (caps, missing, present) in [
        (
            &["net_admin"][..],
            &["CAP_BPF", "CAP_PERFMON"][..],
            &["CAP_NET_ADMIN"][..],
        ),
        (
            &["bpf", "perfmon"][..],
            &["CAP_NET_ADMIN"][..],
            &["CAP_BPF", "CAP_PERFMON"][..],
        ),
    ] {
        let (status, stdout, stderr) = run_with_caps(&lab, &bin, caps, &["--port", "53"])?;
        let what = format!(
            "non-root with only {caps:?}: exit {status}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
        );
        ensure!(!status.success() && status.code().is_some(), "{what}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(
            lines.len() == 1,
            "expected exactly one line on stderr: {what}"
        );
        let named = lines[0]
            .split_once("missing")
            .map(|(_, rest)| rest)
            .with_context(|| format!("the line does not say what is missing: {what}"))?;
        for cap in missing {
            ensure!(named.contains(cap), "{cap} is not named as missing: {what}");
        }
        for cap in present {
            ensure!(
                !named.contains(cap),
                "{cap} is held but named as missing: {what}"
            );
        }
        ensure!(!stderr.contains("panicked"), "{what}");
    }

    // The control: exactly these three capabilities are enough.
    let caps = ["net_admin", "bpf", "perfmon"];
    let (status, stdout, stderr) =
        run_with_caps(&lab, &bin, &caps, &["--port", "53", "--duration", "1"])?;
    ensure!(
        status.success() && stderr.contains(TRACER_READY),
        "non-root with {caps:?} should watch: exit {status}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
    );
    Ok(())
}

/// Runs `BIN watch ARGS` in the node namespace as uid 65534 with exactly `caps` (ambient, so they
/// survive the exec); returns its status, stdout and stderr. Killed after 20 s.
fn run_with_caps(
    lab: &Lab,
    bin: &Path,
    caps: &[&str],
    args: &[&str],
) -> Result<(ExitStatus, String, String)> {
    let list = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let inh = format!("--inh-caps={list}");
    let amb = format!("--ambient-caps={list}");
    let bin = bin.to_str().context("non-UTF-8 path")?;
    let mut argv = vec![
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &inh,
        &amb,
        bin,
        "watch",
    ];
    argv.extend_from_slice(args);
    let mut child = lab
        .command(Ns::Node, &argv)
        .current_dir("/")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running setpriv")?;
    if wait_timeout(&mut child, Duration::from_secs(20))?.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "tracer with {caps:?} still running after 20 s; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Support
// ---------------------------------------------------------------------------------------------

/// `tracer watch` in a lab's node namespace with stdout and stderr going to files in the lab's
/// directory (stdout to /dev/null unless kept), so it can be started with an environment,
/// stopped with SIGSTOP, and its pid inspected. Dropping it kills it.
struct Tracer<'lab> {
    child: Child,
    what: String,
    stdout: Option<PathBuf>,
    stderr: PathBuf,
    reaped: bool,
    _lab: PhantomData<&'lab Lab>,
}

/// How a [`Tracer`] ended.
struct Done {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// It had to be signalled at the deadline.
    timed_out: bool,
}

impl Done {
    /// Status and stderr, and the head of stdout.
    fn describe_short(&self) -> String {
        let head: String = self
            .stdout
            .lines()
            .take(20)
            .map(|l| format!("{l}\n"))
            .collect();
        format!(
            "`{}` exited with {}{}\n--- stdout (first 20 lines of {}) ---\n{head}--- stderr ---\n{}",
            self.what,
            self.status,
            if self.timed_out { " (signalled at its deadline)" } else { "" },
            self.stdout.lines().count(),
            self.stderr
        )
    }
}

impl<'lab> Tracer<'lab> {
    fn start(
        lab: &'lab Lab,
        tag: &str,
        args: &[&str],
        env: &[(&str, &str)],
        keep_stdout: bool,
    ) -> Result<Tracer<'lab>> {
        let bin = tracer_bin()?;
        let bin = bin.to_str().context("non-UTF-8 tracer path")?.to_string();
        let mut argv = vec![bin.as_str(), "watch"];
        argv.extend_from_slice(args);
        let what = format!(
            "{}{}",
            env.iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>(),
            argv.join(" ")
        );
        let stdout = keep_stdout.then(|| lab.dir().join(format!("{tag}.out")));
        let stderr = lab.dir().join(format!("{tag}.err"));
        let mut cmd = lab.command(Ns::Node, &argv);
        cmd.envs(env.iter().copied())
            .stderr(File::create(&stderr)?)
            .stdout(match &stdout {
                Some(path) => Stdio::from(File::create(path)?),
                None => Stdio::null(),
            });
        let child = cmd.spawn().with_context(|| format!("starting `{what}`"))?;
        Ok(Tracer {
            child,
            what,
            stdout,
            stderr,
            reaped: false,
            _lab: PhantomData,
        })
    }

    /// Waits until it printed [`TRACER_READY`].
    fn ready(mut self) -> Result<Self> {
        let deadline = Instant::now() + TRACER_READY_TIMEOUT;
        loop {
            if self.stderr().contains(TRACER_READY) {
                return Ok(self);
            }
            if !self.running()? {
                bail!("`{}` exited before watching:\n{}", self.what, self.stderr());
            }
            ensure!(
                Instant::now() < deadline,
                "`{}` did not watch within {TRACER_READY_TIMEOUT:?}:\n{}",
                self.what,
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap_or_default()).into_owned()
    }

    fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.running()? {
            // SAFETY: kill(2) on our own, not yet reaped child.
            if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
                return Err(io::Error::last_os_error()).context("signalling tracer");
            }
        }
        Ok(())
    }

    /// SIGTERM, then as [`Tracer::finish`] with [`STOP_GRACE`].
    fn stop(mut self) -> Result<Done> {
        self.signal(libc::SIGTERM)?;
        self.finish(STOP_GRACE)
    }

    /// Waits up to `timeout` for it to exit; then SIGTERM, and SIGKILL after [`STOP_GRACE`].
    fn finish(mut self, timeout: Duration) -> Result<Done> {
        let mut timed_out = false;
        let status = match wait_timeout(&mut self.child, timeout)? {
            Some(status) => status,
            None => {
                timed_out = true;
                self.signal(libc::SIGCONT)?;
                self.signal(libc::SIGTERM)?;
                match wait_timeout(&mut self.child, STOP_GRACE)? {
                    Some(status) => status,
                    None => {
                        self.child.kill()?;
                        self.child.wait()?
                    }
                }
            }
        };
        self.reaped = true;
        Ok(Done {
            what: self.what.clone(),
            status,
            stdout: match &self.stdout {
                Some(path) => String::from_utf8_lossy(&fs::read(path)?).into_owned(),
                None => String::new(),
            },
            stderr: self.stderr(),
            timed_out,
        })
    }
}

impl Drop for Tracer<'_> {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SO_RCVBUFFORCE (root may exceed rmem_max).
fn force_rcvbuf(socket: &UdpSocket, bytes: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt with a live int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_RCVBUFFORCE");
    }
    Ok(())
}

/// Runs a command in the host namespace; fails unless it exits 0.
fn cmd(argv: &[&str]) -> Result<()> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", argv.join(" ")))?;
    ensure!(
        out.status.success(),
        "`{}` failed: {}",
        argv.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn no_panic(stderr: &str) -> Result<()> {
    ensure!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "tracer panicked:\n{stderr}"
    );
    Ok(())
}
