//! End-to-end: lost records are counted exactly (README, "Safety"). With a consumer that keeps
//! up, a known number of datagrams gives exactly one record (its journey) and two packet lines
//! each; with a stopped consumer and a 1 MiB ring buffer, `records + lost` is still exactly one
//! per datagram, every record received is two lines, `lost` is the sum of `lost_per_cpu`, and the
//! loss is reported on stderr while it happens. Needs root and a built tracer.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::output::*;
use tracer_tests::scenario::Scenario;

const LOST_PORT: u16 = 9999;

/// A JSON watch of [`LOST_PORT`] with a ring buffer of 1 MiB, which a stopped consumer overflows
/// many times over.
fn small_ring_on_lost_port(lab: &Lab) -> Scenario<'_> {
    Scenario::new(lab).port(LOST_PORT).args(&["--ring-buffer-mib", "1"])
}

#[test]
fn slow_consumer_loses_records_and_counts_every_one() -> Result<()> {
    // bridge-nf-call-iptables=0 and client and server on one subnet: a datagram is forwarded at
    // layer 2 and passes no netfilter hook, so its journey is exactly two stages.
    let lab = Lab::new(LabConfig::bridge_nf_call_iptables_off())?;
    let client = lab.netns(Ns::Client).to_string();
    // Resolve MACs and fill the bridge's FDB before counting: nothing is flooded later.
    send_datagrams(&client, SERVER_IP, LOST_PORT, 3, None)?;
    thread::sleep(Duration::from_millis(300));

    // The formula, with a consumer that keeps up.
    let (w, delivered) = small_ring_on_lost_port(&lab).run(|| {
        let before = udp_arrived(&lab, Ns::Server)?;
        send_datagrams(&client, SERVER_IP, LOST_PORT, 200, Some(Duration::from_millis(1)))?;
        thread::sleep(Duration::from_millis(300));
        Ok(udp_arrived(&lab, Ns::Server)? - before)
    })?;
    ensure!(delivered == 200, "only {delivered} of 200 datagrams arrived at the server");
    let dst = format!("{SERVER_IP}:{LOST_PORT}");
    let ins = w.find(|p| stage_is(p, "bridge-in", CLIENT_VETH) && str_at(p, "/dst") == Some(&dst)).count() as u64;
    let outs = w.find(|p| stage_is(p, "bridge-out", SERVER_VETH) && str_at(p, "/dst") == Some(&dst)).count() as u64;
    ensure!(
        ins == delivered && outs == delivered && w.packets.len() as u64 == 2 * delivered,
        "expected exactly {delivered} bridge-in on {CLIENT_VETH} and {delivered} bridge-out on \
         {SERVER_VETH} (2 lines per datagram), got {ins} and {outs} of {} lines:\n{}",
        w.packets.len(),
        w.describe()
    );
    w.check_summary()?;

    // The slow consumer: stopped while the kernel fills its 1 MiB ring buffer many times over.
    const BLAST: u32 = 20_000;
    let mut tracer = small_ring_on_lost_port(&lab).start()?;
    let before = udp_arrived(&lab, Ns::Server)?;
    tracer.signal(libc::SIGSTOP)?;
    send_datagrams(&client, SERVER_IP, LOST_PORT, BLAST, None)?;
    thread::sleep(Duration::from_millis(300));
    let delivered = udp_arrived(&lab, Ns::Server)? - before;
    tracer.signal(libc::SIGCONT)?;
    // Long enough for the live report (at most once per second) to come out.
    thread::sleep(Duration::from_millis(2500));
    let done = tracer.stop()?;
    let w = WatchJson::from_finished(&done)?;
    no_panic(&done.stderr)?;
    let s = &w.summary;
    let packets = u64_at(s, "/packets").context("summary without packets")?;
    let records = u64_at(s, "/records").context("summary without records")?;
    let lost = u64_at(s, "/lost").context("summary without lost")?;
    let per_cpu: Vec<u64> = s
        .get("lost_per_cpu")
        .and_then(Value::as_array)
        .context("summary without lost_per_cpu")?
        .iter()
        .map(|v| v.as_u64().context("lost_per_cpu entry is not a count"))
        .collect::<Result<_>>()?;
    eprintln!("sent {BLAST}, server got {delivered}; records {records}, packets {packets}, lost {lost} {per_cpu:?}");
    ensure!(packets == w.packets.len() as u64, "summary packets {packets} but {} packet lines", w.packets.len());
    ensure!(lost > 0, "a stopped consumer with a 1 MiB ring buffer lost nothing: {s}");
    ensure!(per_cpu.iter().sum::<u64>() == lost, "lost {lost} is not the sum of lost_per_cpu {per_cpu:?}");
    ensure!(
        records + lost == delivered && packets == 2 * records,
        "{delivered} datagrams crossed the bridge (a record of two lines each), but records \
         {records} + lost {lost} = {}, with {packets} lines",
        records + lost
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
        lost_lines.iter().any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|n| n == total)),
        "no live lost line gives the running total {total}: {lost_lines:?}"
    );
    // At most one a second: tracer ran about 3 s after SIGCONT.
    ensure!(lost_lines.len() <= 5, "more live lost lines than one a second: {lost_lines:?}");
    Ok(())
}

/// Sends `count` UDP datagrams from `netns` to `ip:port` from one unconnected socket (so ICMP
/// errors do not fail later sends); with `pause`, sleeps that long between datagrams.
fn send_datagrams(netns: &str, ip: &str, port: u16, count: u32, pause: Option<Duration>) -> Result<()> {
    let to: SocketAddr = format!("{ip}:{port}").parse()?;
    in_netns(netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for i in 0..count {
            let payload = format!("tracer-lost-probe {i}");
            socket.send_to(payload.as_bytes(), to).with_context(|| format!("sending datagram {i}"))?;
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
    let udp: Vec<Vec<&str>> =
        text.lines().filter(|l| l.starts_with("Udp:")).map(|l| l.split_whitespace().skip(1).collect()).collect();
    ensure!(udp.len() == 2, "no Udp lines in /proc/net/snmp:\n{text}");
    let mut total = 0;
    for key in ["InDatagrams", "NoPorts", "InErrors"] {
        let i = udp[0].iter().position(|k| *k == key).with_context(|| format!("no Udp {key} in /proc/net/snmp"))?;
        total += udp[1][i].parse::<u64>()?;
    }
    Ok(total)
}
