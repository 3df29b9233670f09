//! Serves the metrics over HTTP on a thread of its own (GET and HEAD): `/metrics` (Prometheus text),
//! `/healthz` (liveness: the watch still serves its outputs) and `/readyz` (ready:
//! attached and serving). The listening socket is opened by the caller before anything
//! else, so it belongs to the network namespace tracer started in, also with `--netns`.
//!
//! Requests are small and answered one at a time, each within [`CLIENT_TIMEOUT`]: a slow
//! or silent client cannot hold the thread for longer, and nothing it sends is kept.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

use super::Metrics;

/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request that is read: a request line and a few headers.
const MAX_REQUEST: usize = 8 << 10;
/// The watch serves its outputs every 250 ms; this long without is a stuck watch.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Opens the listening socket: an error names the address and what to do.
pub(crate) fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).with_context(|| {
        format!("cannot serve metrics on {address}: is the port in use, or the address not this node's? choose another with --metrics")
    })
}

/// Serves `metrics` on `listener` until the process ends.
pub(crate) fn serve(listener: TcpListener, metrics: Metrics) -> Result<()> {
    thread::Builder::new()
        .name("tracer-metrics".to_string())
        .spawn(move || {
            loop {
                match listener.accept() {
                    // A client that went away or misbehaved is its own problem.
                    Ok((stream, _)) => drop(answer(stream, &metrics)),
                    // Out of file descriptors, say: try again in a moment rather than spin.
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .context("starting the metrics server's thread")?;
    Ok(())
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    // Each read waits at most the timeout, and so does the whole request: a client that
    // sends a byte at a time is cut off too.
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        if Instant::now() >= deadline {
            return Ok(());
        }
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics.encode()),
        ("GET" | "HEAD", "/healthz") => health(metrics, false),
        ("GET" | "HEAD", "/readyz") => health(metrics, true),
        ("GET" | "HEAD", _) => {
            ("404 Not Found", "text/plain", "not found: try /metrics, /healthz or /readyz\n".to_string())
        }
        _ => ("405 Method Not Allowed", "text/plain", "only GET and HEAD are served\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

/// Live while the watch serves its outputs (or has not yet begun to); ready once it has.
fn health(metrics: &Metrics, ready: bool) -> (&'static str, &'static str, String) {
    let served_ms = metrics.last_served_ms.load(Ordering::Relaxed);
    let now = metrics.started.elapsed();
    let (ok, text) = if served_ms == 0 {
        (!ready, "not watching yet\n")
    } else if now.saturating_sub(Duration::from_millis(served_ms)) > STUCK_AFTER {
        (false, "the watch has not served its outputs for over 10 s\n")
    } else {
        (true, "watching\n")
    };
    (if ok { "200 OK" } else { "503 Service Unavailable" }, "text/plain", text.to_string())
}
