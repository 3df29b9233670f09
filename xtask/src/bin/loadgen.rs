//! Load generator and counters for `cargo xtask bench`, run inside the lab's network namespaces
//! (`ip netns exec NS loadgen ...`). It is a separate, release-built program so that what the bench
//! measures is the kernel path and tracer, not a debug build of the harness.
//!
//! ```text
//! loadgen send  --dst IP:PORT (--duration SECS | --count N) [--rate PPS] [--batch N] [--size BYTES (8)]
//! loadgen recv  --bind IP:PORT        count datagrams until SIGTERM/SIGINT
//! loadgen dns   --bind IP:PORT        answer every DNS query with one A record until SIGTERM/SIGINT
//! loadgen count [--match NEEDLE]      count the lines on stdin (and those containing NEEDLE)
//! ```
//!
//! `recv` and `dns` print `ready` on stdout once their socket is bound; `count` prints
//! `first-line MONO_NS` on stderr when its first line arrives. Every mode ends with one JSON object
//! on stdout. Times are CLOCK_MONOTONIC nanoseconds, the clock the bench reads too, so instants
//! from different processes compare directly.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Datagrams per sendmmsg/recvmmsg call: enough to make the per-syscall cost small next to the
/// per-packet cost, small enough that a rate-limited sender stays smooth.
const MAX_BATCH: usize = 64;
/// Largest datagram a receive slot holds; the bench sends far smaller ones.
const SLOT: usize = 2048;
/// How long a blocking receive waits before looking at the stop flag again.
const POLL: Duration = Duration::from_millis(50);
/// First bytes of every generated datagram, so a capture of the lab shows what sent it.
const MAGIC: &[u8; 8] = b"trbench\0";
/// The default payload is the magic alone: shorter than a DNS header, so tracer (which tries every
/// UDP payload as DNS, whatever the port) sees plain UDP and the run measures the bridge path, not
/// DNS bookkeeping for traffic that is not DNS. The DNS run measures that on real DNS.
const DEFAULT_SIZE: usize = MAGIC.len();

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((mode, rest)) => match mode.as_str() {
            "send" => Options::parse(rest).and_then(|o| send(&o)),
            "recv" => Options::parse(rest).and_then(|o| receive(&o)),
            "dns" => Options::parse(rest).and_then(|o| dns(&o)),
            "count" => count_lines(rest),
            _ => Err(format!("unknown mode `{}`", args.join(" "))),
        },
        None => Err("usage: loadgen send|recv|dns|count [OPTIONS]".to_string()),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Options {
    dst: Option<SocketAddrV4>,
    bind: Option<SocketAddrV4>,
    duration: Option<Duration>,
    count: Option<u64>,
    rate: Option<u64>,
    batch: usize,
    size: usize,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options { batch: MAX_BATCH, size: DEFAULT_SIZE, ..Options::default() };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?.as_str();
            let bad = |what: &str| format!("{flag} {value}: not {what}");
            match flag.as_str() {
                "--dst" => o.dst = Some(value.parse().map_err(|_| bad("an IPv4 address:port"))?),
                "--bind" => o.bind = Some(value.parse().map_err(|_| bad("an IPv4 address:port"))?),
                "--duration" => {
                    let secs: f64 = value.parse().map_err(|_| bad("seconds"))?;
                    o.duration = Some(Duration::try_from_secs_f64(secs).map_err(|_| bad("seconds"))?);
                }
                "--count" => o.count = Some(value.parse().map_err(|_| bad("a count"))?),
                "--rate" => o.rate = Some(value.parse().map_err(|_| bad("packets per second"))?),
                "--batch" => o.batch = value.parse().map_err(|_| bad("a batch size"))?,
                "--size" => o.size = value.parse().map_err(|_| bad("a payload size"))?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if !(1..=MAX_BATCH).contains(&o.batch) {
            return Err(format!("--batch must be 1..={MAX_BATCH}"));
        }
        if !(1..=1400).contains(&o.size) {
            return Err("--size must be 1..=1400".to_string());
        }
        if o.rate == Some(0) {
            return Err("--rate must be positive".to_string());
        }
        Ok(o)
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

/// setsockopt with an int value, for the options std has no setter for.
fn set_int(socket: &UdpSocket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> Result<(), String> {
    // SAFETY: the option value is a live c_int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(os_error(&format!("setsockopt {level}/{name}")));
    }
    Ok(())
}

/// The socket `recv` and `dns` receive on, bound to `addr`. A receive buffer big enough to
/// ride out scheduling hiccups of the receiver, so the count reflects what the path delivered
/// rather than how promptly we were scheduled: SO_RCVBUFFORCE (root) goes past
/// net.core.rmem_max without changing that sysctl. A blocking receive gives up after [`POLL`],
/// so the loop sees the stop flag.
fn receiving_socket(addr: SocketAddrV4) -> Result<UdpSocket, String> {
    let socket = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    if set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 32 << 20).is_err() {
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, 32 << 20);
    }
    socket.set_read_timeout(Some(POLL)).map_err(|e| format!("setsockopt SO_RCVTIMEO: {e}"))?;
    Ok(socket)
}

fn install_stop_handler() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe). No SA_RESTART, so a
        // blocked receive returns EINTR and the loop sees the flag at once.
        unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn announce_ready() -> Result<(), String> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready").and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
}

/// `UdpRcvbufErrors` from /proc/net/snmp of this network namespace: datagrams the kernel dropped
/// because a receiving socket's buffer was full.
fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Sends datagrams of `size` bytes to `dst` with sendmmsg, as fast as the kernel takes them or at
/// `rate`, for `duration` or until `count` are sent.
fn send(o: &Options) -> Result<String, String> {
    let dst = o.dst.ok_or("send needs --dst")?;
    if o.duration.is_none() && o.count.is_none() {
        return Err("send needs --duration or --count".to_string());
    }
    install_stop_handler();
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| format!("socket: {e}"))?;
    // A large send buffer keeps sendmmsg from blocking on socket memory; the path itself is
    // what should limit the rate.
    if set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20).is_err() {
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, 8 << 20);
    }
    socket.connect(dst).map_err(|e| format!("connect {dst}: {e}"))?;

    // With a rate, batches shrink so one batch is at most about a millisecond of traffic.
    let batch = match o.rate {
        Some(rate) => o.batch.min((rate / 1000).max(1) as usize),
        None => o.batch,
    };
    let mut payloads = vec![[0u8; 1400]; batch];
    for p in &mut payloads {
        p[..MAGIC.len()].copy_from_slice(MAGIC);
    }
    let mut iovecs: Vec<libc::iovec> =
        payloads.iter_mut().map(|p| libc::iovec { iov_base: p.as_mut_ptr().cast(), iov_len: o.size }).collect();
    // SAFETY: mmsghdr is plain data; zeroed means no name, no control data.
    let mut msgs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }

    let start = monotonic_ns();
    let deadline = o.duration.map(|d| start + d.as_nanos() as u64);
    let limit = o.count.unwrap_or(u64::MAX);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error = None;
    loop {
        let now = monotonic_ns();
        if sent >= limit || deadline.is_some_and(|d| now >= d) || STOP.load(Ordering::Relaxed) {
            break;
        }
        if let Some(rate) = o.rate {
            // Keep `sent` at or below what the rate allows by now; sleep off any lead.
            let allowed = (u128::from(now - start) * u128::from(rate) / 1_000_000_000) as u64;
            if sent >= allowed {
                let ahead_ns = (sent + 1 - allowed) * 1_000_000_000 / rate;
                std::thread::sleep(Duration::from_nanos(ahead_ns.min(1_000_000)));
                continue;
            }
        }
        let n = (limit - sent).min(batch as u64) as usize;
        if o.size >= MAGIC.len() + 8 {
            // Room for a sequence number after the magic: it makes datagrams in a capture
            // distinguishable.
            for (i, p) in payloads.iter_mut().take(n).enumerate() {
                let seq = sent + i as u64;
                p[MAGIC.len()..MAGIC.len() + 8].copy_from_slice(&seq.to_be_bytes());
            }
        }
        // SAFETY: msgs[..n] point at live iovecs and payload buffers.
        let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // ECONNREFUSED (an ICMP error from an earlier datagram) or ENOBUFS: the datagram was
            // not sent; count it and carry on so a transient error does not end the run.
            errors += 1;
            first_error.get_or_insert_with(|| err.to_string());
            continue;
        }
        sent += rc as u64;
    }
    let end = monotonic_ns();
    Ok(format!(
        r#"{{"sent":{sent},"errors":{errors},"first_error":{},"secs":{},"start_ns":{start},"end_ns":{end}}}"#,
        json_string(first_error.as_deref()),
        (end - start) as f64 / 1e9
    ))
}

/// Receive slots for recvmmsg, with room for each sender's address.
struct Slots {
    bufs: Vec<[u8; SLOT]>,
    iovecs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    msgs: Vec<libc::mmsghdr>,
}

impl Slots {
    fn new() -> Box<Slots> {
        // SAFETY (both zeroed): plain data, valid when all-zero.
        let mut s = Box::new(Slots {
            bufs: vec![[0u8; SLOT]; MAX_BATCH],
            iovecs: Vec::with_capacity(MAX_BATCH),
            names: vec![unsafe { mem::zeroed() }; MAX_BATCH],
            msgs: (0..MAX_BATCH).map(|_| unsafe { mem::zeroed() }).collect(),
        });
        let s2 = &mut *s;
        for b in &mut s2.bufs {
            s2.iovecs.push(libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: SLOT });
        }
        for i in 0..MAX_BATCH {
            s2.msgs[i].msg_hdr.msg_iov = &mut s2.iovecs[i];
            s2.msgs[i].msg_hdr.msg_iovlen = 1;
            s2.msgs[i].msg_hdr.msg_name = (&mut s2.names[i] as *mut libc::sockaddr_in).cast();
        }
        s
    }

    /// One recvmmsg: the number of datagrams received, 0 on timeout or signal.
    fn receive(&mut self, fd: libc::c_int, flags: libc::c_int) -> Result<usize, String> {
        for m in &mut self.msgs {
            m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_len = 0;
        }
        // SAFETY: every slot points at live buffers owned by self.
        let rc = unsafe {
            libc::recvmmsg(fd, self.msgs.as_mut_ptr(), MAX_BATCH as libc::c_uint, flags, std::ptr::null_mut())
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(format!("recvmmsg: {err}")),
            };
        }
        Ok(rc as usize)
    }
}

/// Counts datagrams until told to stop, then takes what is still queued.
fn receive(o: &Options) -> Result<String, String> {
    let bind = o.bind.ok_or("recv needs --bind")?;
    install_stop_handler();
    let socket = receiving_socket(bind)?;
    let dropped_before = udp_rcvbuf_errors();
    announce_ready()?;
    let mut slots = Slots::new();
    let (mut received, mut bytes) = (0u64, 0u64);
    let (mut first_ns, mut last_ns) = (0u64, 0u64);
    let mut tally = |n: usize, slots: &Slots| {
        if n == 0 {
            return;
        }
        let now = monotonic_ns();
        if received == 0 {
            first_ns = now;
        }
        last_ns = now;
        received += n as u64;
        bytes += slots.msgs[..n].iter().map(|m| u64::from(m.msg_len)).sum::<u64>();
    };
    while !STOP.load(Ordering::Relaxed) {
        let n = slots.receive(socket.as_raw_fd(), libc::MSG_WAITFORONE)?;
        tally(n, &slots);
    }
    // What arrived before the stop and still sits in the socket buffer counts.
    loop {
        let n = slots.receive(socket.as_raw_fd(), libc::MSG_DONTWAIT)?;
        if n == 0 {
            break;
        }
        tally(n, &slots);
    }
    let dropped = match (dropped_before, udp_rcvbuf_errors()) {
        (Some(a), Some(b)) => b.saturating_sub(a).to_string(),
        _ => "null".to_string(),
    };
    Ok(format!(
        r#"{{"received":{received},"bytes":{bytes},"first_ns":{first_ns},"last_ns":{last_ns},"rcvbuf_errors":{dropped}}}"#
    ))
}

/// A minimal authoritative answer: the query with QR/AA/RA set, one A record for its question.
/// Returns the reply length, or None for something that is not a one-question query.
fn dns_answer(query: &[u8], reply: &mut [u8; SLOT]) -> Option<usize> {
    const HEADER: usize = 12;
    if query.len() < HEADER + 5 || query[2] & 0x80 != 0 {
        return None;
    }
    if u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // End of the question: the name's labels, then type and class.
    let mut i = HEADER;
    loop {
        let len = *query.get(i)? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        i += 1 + len;
    }
    let question_end = i + 4;
    if question_end > query.len() {
        return None;
    }
    let answer: [u8; 16] = [
        0xc0, 0x0c, // the name: a pointer to the question's
        0x00, 0x01, // type A
        0x00, 0x01, // class IN
        0x00, 0x00, 0x00, 0x00, // TTL 0
        0x00, 0x04, // 4 bytes of data
        192, 0, 2, 10, // the lab's test address
    ];
    let len = question_end + answer.len();
    if len > SLOT {
        return None;
    }
    reply[..question_end].copy_from_slice(&query[..question_end]);
    reply[2] = 0x80 | 0x04 | (query[2] & 0x01); // QR, AA, the query's RD
    reply[3] = 0x80; // RA, NOERROR
    reply[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    reply[8..12].fill(0); // no authority, no additional records
    reply[question_end..len].copy_from_slice(&answer);
    Some(len)
}

/// Answers DNS queries in batches until told to stop. Our own responder rather than the lab's
/// dnsmasq, which logs every query to a file and would be the bottleneck of a DNS load.
fn dns(o: &Options) -> Result<String, String> {
    let bind = o.bind.ok_or("dns needs --bind")?;
    install_stop_handler();
    let socket = receiving_socket(bind)?;
    announce_ready()?;
    let mut slots = Slots::new();
    let mut replies = vec![[0u8; SLOT]; MAX_BATCH];
    let mut reply_iovecs: Vec<libc::iovec> =
        replies.iter_mut().map(|r| libc::iovec { iov_base: r.as_mut_ptr().cast(), iov_len: 0 }).collect();
    // SAFETY: plain data, valid when all-zero.
    let mut out: Vec<libc::mmsghdr> = (0..MAX_BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    let (mut queries, mut answered, mut send_errors) = (0u64, 0u64, 0u64);
    while !STOP.load(Ordering::Relaxed) {
        let n = slots.receive(socket.as_raw_fd(), libc::MSG_WAITFORONE)?;
        queries += n as u64;
        let mut k = 0;
        for i in 0..n {
            let len = slots.msgs[i].msg_len as usize;
            let Some(reply_len) = dns_answer(&slots.bufs[i][..len], &mut replies[k]) else {
                continue;
            };
            reply_iovecs[k].iov_len = reply_len;
            let m = &mut out[k].msg_hdr;
            m.msg_iov = &mut reply_iovecs[k];
            m.msg_iovlen = 1;
            m.msg_name = (&mut slots.names[i] as *mut libc::sockaddr_in).cast();
            m.msg_namelen = slots.msgs[i].msg_hdr.msg_namelen;
            k += 1;
        }
        let mut done = 0;
        while done < k {
            // SAFETY: out[done..k] point at live reply buffers and sender addresses.
            let rc =
                unsafe { libc::sendmmsg(socket.as_raw_fd(), out[done..].as_mut_ptr(), (k - done) as libc::c_uint, 0) };
            if rc <= 0 {
                if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The failed reply is skipped; the client counts it as lost.
                send_errors += 1;
                done += 1;
                continue;
            }
            done += rc as usize;
            answered += rc as u64;
        }
    }
    Ok(format!(r#"{{"queries":{queries},"answered":{answered},"send_errors":{send_errors}}}"#))
}

/// Counts the lines of stdin (tracer's or a trace monitor's output) without parsing them, so the
/// reader costs about what a pipe into a file would. With `--match NEEDLE` it also counts the
/// lines that contain NEEDLE. Remembers the last line (tracer's summary).
fn count_lines(args: &[String]) -> Result<String, String> {
    let needle = match args {
        [] => None,
        [flag, needle] if flag == "--match" && !needle.is_empty() => Some(needle.as_str()),
        _ => return Err("usage: loadgen count [--match NEEDLE]".to_string()),
    };
    // Keep counting through SIGINT: the producer gets it too and ends its output, and its last
    // line is the summary we are here for.
    // SAFETY: ignoring a signal is always allowed.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 1 << 18];
    let (mut lines, mut matched, mut bytes) = (0u64, 0u64, 0u64);
    let mut first_line_ns = None;
    let mut partial: Vec<u8> = Vec::new();
    let mut last_line: Vec<u8> = Vec::new();
    let matches = |line: &[u8], needle: &str| {
        // str::contains has a vectorised search for short needles; output lines are UTF-8.
        std::str::from_utf8(line).is_ok_and(|l| l.contains(needle))
    };
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading stdin: {e}")),
        };
        let chunk = &buf[..n];
        bytes += n as u64;
        let Some(last) = chunk.iter().rposition(|&b| b == b'\n') else {
            // Lines are at most a few KiB; anything longer is not a line we will need whole.
            if partial.len() < 1 << 20 {
                partial.extend_from_slice(chunk);
            }
            continue;
        };
        if first_line_ns.is_none() {
            let now = monotonic_ns();
            first_line_ns = Some(now);
            eprintln!("first-line {now}");
        }
        let complete = &chunk[..last];
        match needle {
            // Without a needle, counting newlines (vectorised) is all there is to do.
            None => lines += 1 + complete.iter().filter(|&&b| b == b'\n').count() as u64,
            Some(needle) => {
                let mut pieces = complete.split(|&b| b == b'\n');
                if let Some(first) = pieces.next() {
                    partial.extend_from_slice(first);
                    lines += 1;
                    matched += u64::from(matches(&partial, needle));
                }
                for line in pieces {
                    lines += 1;
                    matched += u64::from(matches(line, needle));
                }
            }
        }
        match complete.iter().rposition(|&b| b == b'\n') {
            Some(prev) => {
                last_line.clear();
                last_line.extend_from_slice(&complete[prev + 1..]);
            }
            None if needle.is_some() => last_line = mem::take(&mut partial),
            None => {
                last_line = mem::take(&mut partial);
                last_line.extend_from_slice(complete);
            }
        }
        partial.clear();
        partial.extend_from_slice(&chunk[last + 1..]);
    }
    let last = String::from_utf8_lossy(&last_line);
    Ok(format!(
        r#"{{"lines":{lines},"matched":{matched},"bytes":{bytes},"first_line_ns":{},"last_line":{}}}"#,
        first_line_ns.map_or("null".to_string(), |n| n.to_string()),
        json_string(Some(&last))
    ))
}

fn json_string(s: Option<&str>) -> String {
    match s {
        None => "null".to_string(),
        Some(s) => serde_json::Value::String(s.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_query_with_one_a_record() {
        // id 0x1234, RD, one question: example.test. A IN
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x07example\x04test\x00\x00\x01\x00\x01");
        let mut reply = [0u8; SLOT];
        let len = dns_answer(&q, &mut reply).expect("answered");
        assert_eq!(len, q.len() + 16);
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[2], 0x85);
        assert_eq!(&reply[6..8], &[0, 1]);
        assert_eq!(&reply[len - 4..len], &[192, 0, 2, 10]);
    }

    #[test]
    fn ignores_replies_and_garbage() {
        let mut reply = [0u8; SLOT];
        let mut r = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        r.extend_from_slice(b"\x01a\x00\x00\x01\x00\x01");
        assert_eq!(dns_answer(&r, &mut reply), None);
        assert_eq!(dns_answer(b"trbench\0", &mut reply), None);
        let truncated = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 9, b'a'];
        assert_eq!(dns_answer(&truncated, &mut reply), None);
    }

    #[test]
    fn parses_options() {
        let args: Vec<String> =
            ["--dst", "10.96.0.10:7000", "--duration", "0.5", "--rate", "1000"].iter().map(|s| s.to_string()).collect();
        let o = Options::parse(&args).expect("valid");
        assert_eq!(o.dst, Some(SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 7000)));
        assert_eq!(o.duration, Some(Duration::from_millis(500)));
        assert_eq!(o.rate, Some(1000));
        assert!(Options::parse(&["--batch".to_string(), "0".to_string()]).is_err());
        assert!(Options::parse(&["--what".to_string(), "1".to_string()]).is_err());
    }
}
