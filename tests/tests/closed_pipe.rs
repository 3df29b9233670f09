//! End-to-end: a closed pipe is not an error (README, "Safety"). `tracer watch | head -5` ends
//! when head does: tracer exits 0 without a word of error and puts its summary on standard error,
//! its output being gone; a standard error nobody reads costs tracer its notes, nothing else.
//! Needs root and a built tracer.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::output::no_panic;
use tracer_tests::process::wait_timeout;
use tracer_tests::tracer_bin;

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
    ensure!(lines[5] == "pipestatus 0 0", "tracer (first) and head (second) should both exit 0:\n{described}");
    ensure!(tracer_err.contains(TRACER_READY), "tracer never watched:\n{described}");
    no_panic(&tracer_err)?;
    for word in ["error", "Broken pipe"] {
        ensure!(!tracer_err.contains(word), "tracer printed `{word}`:\n{described}");
    }
    ensure!(
        tracer_err.lines().any(|l| l.starts_with("-- ") && l.contains("packets")),
        "with its output gone, the summary goes to standard error:\n{described}"
    );
    Ok(())
}

#[test]
fn a_watch_whose_standard_error_is_gone_runs_to_its_end() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // Standard error is a pipe nobody reads any more: each note tracer writes there fails
    // (EPIPE). The watch must neither panic nor lose a thread over it.
    let (read_end, write_end) = pipe()?;
    drop(read_end);
    let mut watch = lab.tracer_command(&["watch", "--port", "53", "--output", "json", "--duration", "3"], &[])?;
    watch.stdout(Stdio::piped()).stderr(Stdio::from(write_end));
    let child = watch.spawn().context("starting tracer")?;
    thread::sleep(Duration::from_millis(1500));
    lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?.expect_answered()?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "the watch ran to its end: {:?}\n{stdout}", out.status);
    ensure!(
        stdout.lines().any(|l| l.contains(r#""type":"packet""#) && l.contains(r#""stage":"bridge-out""#))
            && stdout.lines().last().is_some_and(|l| l.contains(r#""type":"summary""#)),
        "the watch traced the query and closed with its summary:\n{stdout}"
    );
    Ok(())
}

#[test]
fn a_watch_whose_reader_stopped_reading_still_stops_on_sigterm() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    // Standard output is a pipe whose reader holds it open and never reads: once the pipe and
    // tracer's buffer are full, every write would wait for good.
    let (read_end, write_end) = pipe()?;
    let mut watch = lab.tracer_command(&["watch", "--port", "53", "--output", "json"], &[])?;
    watch.stdout(Stdio::from(write_end)).stderr(Stdio::piped());
    let mut child = watch.spawn().context("starting tracer")?;
    thread::sleep(Duration::from_millis(1500));
    // About 5 KiB of JSON lines per lookup: 60 fill the pipe (64 KiB) and the buffer (64 KiB).
    for _ in 0..60 {
        lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[])?.expect_answered()?;
    }
    thread::sleep(Duration::from_millis(1000));
    // SAFETY: kill(2) on our own child.
    ensure!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) } == 0, "kill");
    let status = wait_timeout(&mut child, Duration::from_secs(10))?;
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(read_end);
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use std::io::Read;
        let _ = err.read_to_string(&mut stderr);
    }
    let status = status.with_context(|| format!("tracer did not stop within 10 s of SIGTERM:\n{stderr}"))?;
    ensure!(status.success(), "a stop asked for is a clean end: {status:?}\n{stderr}");
    no_panic(&stderr)?;
    ensure!(
        stderr.lines().any(|l| l.starts_with("-- ") && l.contains("packets")),
        "the summary goes to standard error when standard output is not read:\n{stderr}"
    );
    Ok(())
}

/// A new pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills two new fds.
    ensure!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0, "pipe2");
    // SAFETY: both fds are new and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
