//! `cargo xtask demo`: tracer watching DNS through a namespace lab: a healthy node, one where
//! bridged replies skip conntrack, the same after the fix, and one whose firewall rejects DNS.
//!
//! Runs without a terminal too (nothing is read from stdin). Ctrl-C, SIGTERM or SIGHUP stop it at
//! the next step and the lab is removed before exiting.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tracer_tests::lab::*;

use crate::cmd::{self, phase};
use crate::setup;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run() -> Result<ExitCode> {
    cmd::require_root("demo")?;
    // Instead of dying on the spot (leaving namespaces and dnsmasq behind), note the signal and
    // unwind through the lab's Drop. Children in our process group get Ctrl-C themselves: tracer
    // prints its summary and exits, dig gives up.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }

    match build_and_show() {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            say("Interrupted; nothing is left behind.");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e),
    }
}

fn build_and_show() -> Result<()> {
    phase("demo", "setup");
    setup::run()?;
    phase("demo", "cargo build --release -p tracer");
    let tracer = cmd::build_tracer(cmd::Build::Release)?;
    check_interrupted()?;

    phase("demo", "building the lab");
    let lab = Lab::new(LabConfig::healthy())?;
    let shown = show(&lab, &tracer);
    say("\nRemoving the lab.");
    drop(lab);
    shown
}

fn show(lab: &Lab, tracer: &Path) -> Result<()> {
    say(&format!(
        "\nA Kubernetes-like node in network namespaces ({node}):\n  \
         bridge {BRIDGE} {BRIDGE_IP}/24 with two pods on veths:\n    \
         client {CLIENT_IP} on {CLIENT_VETH}\n    \
         server {SERVER_IP} on {SERVER_VETH}, running dnsmasq (knows {TEST_NAME})\n  \
         The DNS service's ClusterIP {CLUSTER_DNS_IP}:53 is DNATed to {SERVER_IP}:53 by iptables on the node.\n\n\
         The client asks the ClusterIP; the node DNATs the query and it crosses the bridge to the server.\n\
         The server's reply goes straight across the bridge to the client, and conntrack on the node must\n\
         turn its source back into {CLUSTER_DNS_IP}:53 on the way.",
        node = lab.netns(Ns::Node),
    ));

    say(&format!(
        "\n=== 1/4: a healthy node (net.bridge.bridge-nf-call-iptables=1) ===\n\
         Running `tracer watch --port 53` in the node namespace; the client asks {CLUSTER_DNS_IP} twice.\n"
    ));
    watch_queries(lab, tracer, &["A", "AAAA"])?;
    say(&format!(
        "\nEach query enters the bridge on {CLIENT_VETH} (bridge-in) addressed to the ClusterIP. The bridge\n\
         passes it through iptables itself, conntrack DNATs it, and it leaves on {SERVER_VETH} towards\n\
         {SERVER_IP}:53 (bridge-out, ct:yes; the very first one takes a detour through the node, from-host,\n\
         while the node learns the server's MAC address). The reply leaving on {CLIENT_VETH} carries the\n\
         conntrack entry and comes from {CLUSTER_DNS_IP}:53 again: dig accepts it."
    ));

    check_interrupted()?;
    lab.set_bridge_nf_call_iptables(false)?;
    say(&format!(
        "\n=== 2/4: the same node with net.bridge.bridge-nf-call-iptables=0 ===\n\
         (what happens when br_netfilter's setting is lost on a node)\n\
         The client asks {CLUSTER_DNS_IP} again; dig will wait 2 s and give up.\n"
    ));
    watch_queries(lab, tracer, &["A"])?;
    say(&format!(
        "\nNow the bridge hands the query up to the node (to-host), which DNATs it on its routing path and\n\
         sends it back down (from-host) to {SERVER_VETH}. But look at the reply's bridge-out line on\n\
         {CLIENT_VETH}: it leaves the bridge from {SERVER_IP}:53 with no conntrack entry (ct:no). Bridged\n\
         frames skip iptables, so the reverse NAT never happens and the client drops an answer from an\n\
         address it never asked. tracer names the problem and the fix in its FINDING block."
    ));

    check_interrupted()?;
    lab.set_bridge_nf_call_iptables(true)?;
    say("\n=== 3/4: after the fix: sysctl -w net.bridge.bridge-nf-call-iptables=1 ===\n\
         The same query again: the reply is reverse-NATed on the bridge and no finding is left.\n");
    watch_queries(lab, tracer, &["A"])?;

    check_interrupted()?;
    say("\n=== 4/4: a firewall rule that eats DNS ===\n\
         The node's FORWARD chain gets two harmless rules and then, as rule 3,\n  \
         -A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited\n\
         tracer finds the rule without touching the firewall: no TRACE rule, nothing added.\n");
    for rule in [
        "-A FORWARD -p tcp --dport 80 -j ACCEPT",
        "-A FORWARD -p udp --dport 5353 -j DROP",
        "-A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited",
    ] {
        lab.iptables(rule)?;
    }
    watch_queries(lab, tracer, &["A"])?;
    say(&format!(
        "\nThe query passes PRE_ROUTING (conntrack DNATs it to {SERVER_IP}:53), enters FORWARD and never\n\
         leaves it: the dropped line and the netfilter_reject FINDING name the hook, the backend\n\
         (iptables-nft), rule #3 of filter/FORWARD with its text, and the ICMP host-prohibited answer\n\
         that makes dig report \"host unreachable\"."
    ));
    Ok(())
}

/// One watch in the terminal around a few digs from the client.
fn watch_queries(lab: &Lab, tracer: &Path, qtypes: &[&str]) -> Result<()> {
    let watch = lab.watch_with(tracer, &["--port", "53"], StdoutMode::Terminal)?;
    for qtype in qtypes {
        check_interrupted()?;
        say(&format!("client$ dig @{CLUSTER_DNS_IP} {TEST_NAME} {qtype}"));
        let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[qtype])?;
        check_interrupted()?;
        match (&dig.status, dig.timed_out) {
            (Some(status), _) => say(&format!("  dig: {status} {}", dig.answers.join(" "))),
            (None, true) => say("  dig: timed out, no answer accepted"),
            (None, false) => {
                let errors: Vec<&str> = dig.output.lines().filter(|l| l.contains("error")).collect();
                if errors.is_empty() {
                    say(&format!("  dig failed:\n{}", dig.output));
                } else {
                    say(&format!("  dig: {}", errors.join(" ")));
                }
            }
        }
        // Let tracer's lines for this query reach the terminal before the next step talks.
        pause(Duration::from_millis(700))?;
    }
    say("Stopping tracer (SIGTERM); it prints its summary:");
    let finished = watch.stop()?;
    if !finished.status.success() {
        bail!("tracer exited with {}:\n{}", finished.status, finished.stderr);
    }
    Ok(())
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing sensible to do if the terminal went away; the demo goes on to clean up.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn pause(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        check_interrupted()?;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
