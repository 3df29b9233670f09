//! End-to-end: the conntrack insert race of parallel A and AAAA queries (README,
//! `conntrack_insert_race`). A resolver sends both from one socket at once; when the node's
//! two CPUs handle them at the same moment, both create a conntrack entry for the same tuple
//! and the second to be confirmed clashes with the first. Kernels before 5.6 dropped it
//! (`insert_failed`); later ones resolve the clash (`clash_resolve`) and the query goes on.
//! The lab makes the race happen many times over, with the two queries of each pair sent from
//! both CPUs together, and checks tracer against the kernel's own counters: what the kernel
//! dropped tracer names (on this kernel: nothing), and a race the kernel resolved is no finding.

use std::net::UdpSocket;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::output::*;
use tracer_tests::packets::dns_query;
use tracer_tests::scenario::Scenario;

/// A and AAAA pairs sent: enough for the race to happen many times on two CPUs.
const PAIRS: u16 = 2_000;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The node namespace's conntrack statistics summed over CPUs (`conntrack -S`).
fn conntrack_stat(lab: &Lab, column: &str) -> Result<u64> {
    let out = lab.run(Ns::Node, &["conntrack", "-S"])?;
    let key = format!("{column}=");
    let mut total = 0;
    for field in out.split_whitespace().filter_map(|field| field.strip_prefix(&key)) {
        total += field.parse::<u64>().with_context(|| format!("{column} in {out}"))?;
    }
    Ok(total)
}

/// Pins the calling thread to one CPU.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed by pointer with its size, for the
    // calling thread (pid 0).
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    ensure!(ok, "pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Sends `PAIRS` pairs, each from a socket of its own: the A query from CPU 0 and the AAAA
/// query from CPU 1 at the same moment. Returns how many pairs got both answers.
fn race(lab: &Lab) -> Result<u32> {
    let sockets: Vec<UdpSocket> = in_netns(lab.netns(Ns::Client), || {
        (0..PAIRS)
            .map(|_| {
                let socket = UdpSocket::bind((CLIENT_IP, 0))?;
                socket.set_read_timeout(Some(Duration::from_secs(1)))?;
                socket.connect((CLUSTER_DNS_IP, 53))?;
                Ok(socket)
            })
            .collect()
    })?;
    let sockets = Arc::new(sockets);
    let start = Arc::new(Barrier::new(2));
    let senders: Vec<_> = [TYPE_A, TYPE_AAAA]
        .into_iter()
        .enumerate()
        .map(|(cpu, qtype)| {
            let (sockets, start) = (Arc::clone(&sockets), Arc::clone(&start));
            std::thread::spawn(move || -> Result<()> {
                pin_to(cpu)?;
                for (pair, socket) in sockets.iter().enumerate() {
                    let id = (pair as u16).wrapping_mul(2).wrapping_add(cpu as u16);
                    start.wait();
                    socket.send(&dns_query(id, TEST_NAME, qtype))?;
                    // Paced: dnsmasq answers one query at a time, and a burst beyond its
                    // socket's buffer would lose queries the race has nothing to do with.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            })
        })
        .collect();
    for sender in senders {
        sender.join().map_err(|_| anyhow::anyhow!("a sender panicked"))??;
    }
    let mut answered = 0;
    let mut buf = [0u8; 512];
    for socket in sockets.iter() {
        if (0..2).all(|_| socket.recv(&mut buf).is_ok()) {
            answered += 1;
        }
    }
    Ok(answered)
}

#[test]
fn parallel_a_and_aaaa_races_are_counted_by_the_kernel_and_named_only_when_dropped() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let (failed_before, resolved_before) =
        (conntrack_stat(&lab, "insert_failed")?, conntrack_stat(&lab, "clash_resolve")?);
    let (w, answered) =
        Scenario::new(&lab).args(&["--dns-timeout", "1"]).settle(Duration::from_millis(2000)).run(|| race(&lab))?;
    let failed = conntrack_stat(&lab, "insert_failed")? - failed_before;
    let resolved = conntrack_stat(&lab, "clash_resolve")? - resolved_before;
    let named = w.findings_of("conntrack_insert_race").count() as u64;
    eprintln!(
        "{PAIRS} A/AAAA pairs: {answered} answered in full; races the kernel resolved (clash_resolve) {resolved}, \
         dropped (insert_failed) {failed}; tracer named {named}; records lost {}",
        u64_at(&w.summary, "/lost").unwrap_or(0)
    );
    ensure!(resolved + failed > 0, "the race never happened: nothing to judge tracer by");
    ensure!(named == failed, "tracer named {named} insert races, the kernel counted {failed}:\n{}", w.describe());
    if failed == 0 {
        ensure!(
            u32::from(PAIRS) == answered,
            "every race was resolved, yet {} pairs lost an answer",
            u32::from(PAIRS) - answered
        );
        w.expect_no_findings("a race the kernel resolved costs nothing: no finding")?;
    }
    w.check_summary()
}
