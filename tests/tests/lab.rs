//! The lab itself, without tracer: it must reproduce both behaviours the end-to-end tests rely on,
//! and clean up after itself.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;

#[test]
fn lab_reproduces_both_symptoms() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;

    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_answers(&[TEST_A]).context("healthy lab")?;

    let dig6 = lab.dig(CLUSTER_DNS_IP6, TEST_NAME, &["AAAA"])?;
    dig6.expect_answers(&[TEST_AAAA]).context("healthy lab, IPv6")?;

    lab.set_bridge_nf_call_iptables(false)?;
    let tcpdump = lab.start_tcpdump(Ns::Client, &["-l", "-c", "1", "udp and src port 53"])?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_timed_out().context("bridge-nf-call-iptables=0")?;
    let captured = tcpdump.finish(Duration::from_secs(5))?;
    let from_pod = format!("{SERVER_IP}.53 > {CLIENT_IP}.");
    ensure!(
        captured.stdout.contains(&from_pod),
        "bridge-nf-call-iptables=0: the reply in the client should come from the pod itself\n{}",
        captured.describe()
    );
    ensure!(
        lab.dnsmasq_log().matches("query[A] example.test").count() == 2,
        "dnsmasq should have answered both A queries:\n{}",
        lab.dnsmasq_log()
    );
    Ok(())
}

#[test]
fn lab_starting_broken_times_out() -> Result<()> {
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let dig = lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?;
    dig.expect_timed_out()?;
    ensure!(dig.id.is_some(), "no query id parsed from:\n{}", dig.output);
    // Talking to the server directly is bridged both ways and needs no NAT: it works.
    let direct = lab.dig(SERVER_IP, TEST_NAME, &[])?;
    direct.expect_answered().context("the direct query")?;
    let tcp = lab.dig(SERVER_IP, TEST_NAME, &["+tcp"])?;
    tcp.expect_answered().context("the direct TCP query")?;
    Ok(())
}

#[test]
fn labs_are_independent_and_removed_on_drop() -> Result<()> {
    let a = Lab::new(LabConfig::healthy())?;
    let b = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let names: Vec<String> = [&a, &b]
        .iter()
        .flat_map(|lab| [Ns::Node, Ns::Client, Ns::Server].map(|ns| lab.netns(ns).to_string()))
        .collect();
    ensure!(
        names.iter().collect::<std::collections::HashSet<_>>().len() == names.len(),
        "namespace names collide: {names:?}"
    );
    ensure!(a.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?.answered(), "lab a should answer");
    ensure!(b.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?.timed_out, "lab b should time out");
    let dirs = [a.dir().to_path_buf(), b.dir().to_path_buf()];
    drop(a);
    drop(b);
    for name in &names {
        ensure!(!Path::new("/run/netns").join(name).exists(), "{name} still exists");
    }
    for dir in &dirs {
        ensure!(!dir.exists(), "{} still exists", dir.display());
    }
    Ok(())
}

#[test]
fn lab_is_removed_when_a_test_panics() -> Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let lab = Lab::new(LabConfig::healthy()).expect("lab");
        let sleeper = lab.spawn(Ns::Node, &["sleep", "600"]).expect("spawn");
        let names = [Ns::Node, Ns::Client, Ns::Server].map(|ns| lab.netns(ns).to_string());
        tx.send((names, sleeper.pid())).expect("send");
        panic!("deliberate panic with a lab and a process alive");
    })
    .join()
    .is_err();
    ensure!(panicked, "the helper thread should have panicked");
    let (names, pid) = rx.recv()?;
    for name in &names {
        ensure!(!Path::new("/run/netns").join(name).exists(), "{name} still exists");
    }
    ensure!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still running");
    Ok(())
}
