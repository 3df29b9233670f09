//! End-to-end: tracer never changes traffic (README, "Safety"). A burst of DNS queries with every
//! program of tracer working on every frame is answered as fully as without it. Needs root and a
//! built tracer.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::netns::in_netns;
use tracer_tests::output::*;
use tracer_tests::packets::dns_query;
use tracer_tests::scenario::Scenario;

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
    let (w, done, traced) =
        Scenario::new(&lab).port(0).run_finished(|| dns_burst(&client, CLUSTER_DNS_IP, BURST_QUERIES, BURST_WINDOW))?;

    ensure!(
        traced.all_answered(),
        "with tracer running some queries of the burst were not answered: {traced:?}\n\
         (the same burst without tracer: {baseline:?})\n{}",
        done.describe_short()
    );
    no_panic(&done.stderr)?;

    // It really traced the burst: every query entered the bridge in a record.
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
        let mut burst = Burst { sent: 0, answered: 0, bad: Vec::new(), unanswered: Vec::new() };
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
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
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
