//! Serves the metrics over HTTP on a thread of its own (GET and HEAD): `/metrics` (Prometheus text),
//! `/healthz` (liveness: the watch still serves its outputs) and `/readyz` (ready:
//! attached and serving). The listening socket is opened by the caller before anything
//! else, so it belongs to the network namespace tracer started in, also with `--netns`.
//!
//! Connections are served at once and side by side, each within [`CLIENT_DEADLINE`] all
//! told: a client that connects and says nothing, or sends a byte at a time, holds only
//! its own connection, never a probe's, and nothing it sends beyond a small request is kept.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{atomic::Ordering, Arc},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

use super::Metrics;

/// How long a client may take to send its request and read the answer, all told.
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);
/// Connections served at once. Beyond them a new connection is closed at once rather than
/// queued behind others: each costs a task and at most [`MAX_REQUEST`] bytes.
const MAX_CONNECTIONS: usize = 512;
/// The most of a request that is read: a request line and a few headers.
const MAX_REQUEST: usize = 8 << 10;
/// The watch serves its outputs every 250 ms; this long without is a stuck watch.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Opens the listening socket: an error names the address and what to do.
pub(crate) fn bind(address: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(address).with_context(|| {
        format!("cannot serve metrics on {address}: is the port in use, or the address not this node's? choose another with --metrics")
    })?;
    listener.set_nonblocking(true).with_context(|| format!("making the metrics socket on {address} non-blocking"))?;
    Ok(listener)
}

/// Serves `metrics` on `listener` until the process ends.
pub(crate) fn serve(listener: TcpListener, metrics: Metrics) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting the metrics server's runtime")?;
    // Registered with the runtime here, so that a failure is reported before the watch starts.
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).context("serving the metrics socket")?
    };
    thread::Builder::new()
        .name("tracer-metrics".to_string())
        .spawn(move || runtime.block_on(accept(listener, metrics)))
        .context("starting the metrics server's thread")?;
    Ok(())
}

async fn accept(listener: tokio::net::TcpListener, metrics: Metrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.refused_connections.inc();
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A client that went away, misbehaved or took too long is its own problem.
                    let _ = tokio::time::timeout(CLIENT_DEADLINE, answer(stream, &metrics)).await;
                    drop(slot);
                });
            }
            // Out of file descriptors, say: try again in a moment rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let read = stream.read(&mut chunk).await?;
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
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
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
