//! Processes the tests start and stop: their output captured while they run, their end
//! recorded ([`Finished`]).

use std::io::{self, BufRead, BufReader, Read};
use std::marker::PhantomData;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::lab::{Lab, TRACER_READY, TRACER_READY_TIMEOUT};

/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Where a spawned process's stdout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdoutMode {
    /// Collected, returned by [`Process::finish`] / [`Process::stop`].
    Capture,
    /// Collected, but JSON packet lines (`"type":"packet"`) are only counted
    /// ([`Finished::packet_lines`]): a watch under a flood prints more of them than a test
    /// should hold.
    CountPackets,
    /// Inherited (the terminal); stderr is still captured and also echoed to our stderr.
    Terminal,
}

/// A background process started in a lab namespace. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Process<'lab> {
    what: String,
    child: Child,
    stdout: Option<Arc<Captured>>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    reaped: bool,
    _lab: PhantomData<&'lab Lab>,
}

/// What a [`Process`] left behind.
#[derive(Debug)]
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    /// Empty with [`StdoutMode::Terminal`].
    pub stdout: String,
    pub stderr: String,
    /// It was still running at the deadline given to [`Process::finish`] (or ignored SIGTERM
    /// from [`Process::stop`]) and had to be signalled.
    pub timed_out: bool,
    /// JSON packet lines counted rather than kept in `stdout` ([`StdoutMode::CountPackets`]).
    pub packet_lines: u64,
}

impl Finished {
    /// Status and output, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited with {}{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what,
            self.status,
            if self.timed_out { " (after being signalled at its deadline)" } else { "" },
            self.stdout,
            self.stderr
        )
    }

    /// It exited 0.
    pub fn expect_success(&self) -> Result<()> {
        ensure!(self.status.success(), "`{}` failed:\n{}", self.what, self.describe());
        Ok(())
    }

    /// A line of stdout holds every one of `words`; `expected` names that line, for the
    /// failure message.
    pub fn expect_line_with(&self, words: &[&str], expected: &str) -> Result<()> {
        ensure!(
            self.stdout.lines().any(|line| words.iter().all(|word| line.contains(word))),
            "no line with {} ({expected}):\n{}",
            words.join(", "),
            self.describe()
        );
        Ok(())
    }

    /// Like [`Finished::describe`] with only the head of stdout, for watches that print
    /// thousands of lines.
    pub fn describe_short(&self) -> String {
        const HEAD_LINES: usize = 20;
        let head: String = self.stdout.lines().take(HEAD_LINES).map(|l| format!("{l}\n")).collect();
        let total = self.stdout.lines().count();
        let short = Finished {
            what: self.what.clone(),
            status: self.status,
            stdout: if total > HEAD_LINES {
                format!("{head}... (the first {HEAD_LINES} lines of {total})\n")
            } else {
                head
            },
            stderr: self.stderr.clone(),
            timed_out: self.timed_out,
            packet_lines: self.packet_lines,
        };
        short.describe()
    }
}

impl<'lab> Process<'lab> {
    /// Starts `cmd` (made with [`Lab::command`], so it cannot outlive the lab), described as
    /// `what` in errors.
    pub fn start(_lab: &'lab Lab, cmd: Command, what: &str, mode: StdoutMode) -> Result<Process<'lab>> {
        Process::spawn(cmd, what.to_string(), mode)
    }

    /// Starts `cmd` with its output captured as `mode` says; `what` names it in messages.
    pub fn spawn(mut cmd: Command, what: String, mode: StdoutMode) -> Result<Process<'lab>> {
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        match mode {
            StdoutMode::Capture | StdoutMode::CountPackets => cmd.stdout(Stdio::piped()),
            StdoutMode::Terminal => cmd.stdout(Stdio::inherit()),
        };
        let mut child = cmd.spawn().with_context(|| format!("starting `{what}`"))?;
        let mut readers = Vec::new();
        let stdout = match child.stdout.take() {
            Some(pipe) => {
                let sink = Arc::new(Captured::default());
                readers.push(capture(pipe, sink.clone(), false, mode == StdoutMode::CountPackets));
                Some(sink)
            }
            None => None,
        };
        let stderr = Arc::new(Captured::default());
        if let Some(pipe) = child.stderr.take() {
            readers.push(capture(pipe, stderr.clone(), mode == StdoutMode::Terminal, false));
        }
        Ok(Process { what, child, stdout, stderr, readers, reaped: false, _lab: PhantomData })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// It has not exited yet.
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait().with_context(|| format!("waiting for `{}`", self.what))?.is_none())
    }

    /// Waits until stderr contains `needle`. Fails if the process exits first or the timeout
    /// passes, with what it printed.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let buf = self.stderr.lock();
                if buf.text.contains(needle) {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                // Let the reader pick up what was written just before the exit.
                let text = self.stderr.wait_eof(Duration::from_secs(1));
                if text.contains(needle) {
                    return Ok(());
                }
                bail!("`{}` exited ({status}) before printing {needle:?}; stderr:\n{text}", self.what);
            }
            let now = Instant::now();
            if now >= deadline {
                let text = self.stderr.lock().text.clone();
                bail!("`{}` did not print {needle:?} within {timeout:?}; stderr so far:\n{text}", self.what);
            }
            let buf = self.stderr.lock();
            let wait = (deadline - now).min(Duration::from_millis(50));
            drop(self.stderr.grew.wait_timeout(buf, wait));
        }
    }

    /// Waits until tracer said that its programs are attached ([`TRACER_READY`]).
    pub fn wait_until_watching(&mut self) -> Result<()> {
        self.wait_for_stderr(TRACER_READY, TRACER_READY_TIMEOUT)
    }

    /// Sends a signal, unless the process has already exited (its pid may then belong to
    /// someone else).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            send_signal(self.child.id(), signal).with_context(|| format!("signalling `{}`", self.what))?;
        }
        Ok(())
    }

    /// Stderr captured so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().text.clone()
    }

    /// Stdout captured so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.as_ref().map(|s| s.lock().text.clone()).unwrap_or_default()
    }

    /// Waits up to `timeout` for the process to exit by itself; then SIGTERM, and SIGKILL if it is
    /// still there after [`STOP_GRACE`].
    pub fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let mut timed_out = false;
        let status = match wait_timeout(&mut self.child, timeout)? {
            Some(status) => status,
            None => {
                timed_out = true;
                self.escalate()?
            }
        };
        Ok(self.collect(status, timed_out))
    }

    /// SIGTERM now, then like [`Process::finish`] with [`STOP_GRACE`].
    pub fn stop(mut self) -> Result<Finished> {
        self.signal(libc::SIGTERM)?;
        self.finish(STOP_GRACE)
    }

    fn escalate(&mut self) -> Result<ExitStatus> {
        // A test may have stopped it (SIGSTOP); stopped, it would not act on SIGTERM.
        self.signal(libc::SIGCONT)?;
        self.signal(libc::SIGTERM)?;
        if let Some(status) = wait_timeout(&mut self.child, STOP_GRACE)? {
            return Ok(status);
        }
        self.child.kill().with_context(|| format!("killing `{}`", self.what))?;
        self.child.wait().with_context(|| format!("waiting for `{}`", self.what))
    }

    fn collect(&mut self, status: ExitStatus, timed_out: bool) -> Finished {
        self.reaped = true;
        // The pipes close with the process, so the readers end.
        for reader in self.readers.drain(..) {
            if reader.join().is_err() {
                eprintln!("output reader of `{}` panicked", self.what);
            }
        }
        Finished {
            what: self.what.clone(),
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr.lock().text.clone(),
            timed_out,
            packet_lines: self.stdout.as_ref().map_or(0, |s| s.lock().counted),
        }
    }
}

impl Drop for Process<'_> {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        match self.child.try_wait() {
            Ok(Some(_)) => {}
            _ => {
                let _ = send_signal(self.child.id(), libc::SIGTERM);
                if !matches!(wait_timeout(&mut self.child, Duration::from_secs(3)), Ok(Some(_))) {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                }
            }
        }
    }
}

#[derive(Default)]
struct Captured {
    buf: Mutex<Buffer>,
    grew: Condvar,
}

#[derive(Default)]
struct Buffer {
    text: String,
    /// Lines counted rather than kept ([`StdoutMode::CountPackets`]).
    counted: u64,
    eof: bool,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A reader thread that panicked mid-append leaves usable text behind.
        self.buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_eof(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = self.lock();
        while !buf.eof {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            buf = match self.grew.wait_timeout(buf, deadline - now) {
                Ok((buf, _)) => buf,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        buf.text.clone()
    }
}

fn capture(pipe: impl Read + Send + 'static, sink: Arc<Captured>, echo: bool, count_packets: bool) -> JoinHandle<()> {
    thread::spawn(move || {
        for_each_line(pipe, |text| {
            if echo {
                eprint!("{text}");
            }
            if count_packets && text.contains("\"type\":\"packet\"") {
                sink.lock().counted += 1;
                return;
            }
            sink.lock().text.push_str(text);
            sink.grew.notify_all();
        });
        sink.lock().eof = true;
        sink.grew.notify_all();
    })
}

/// Calls `each` with every line read from `pipe`, its newline included, until the pipe
/// closes or fails. A child's output is not always UTF-8 (a tool's error quoting raw
/// bytes), so invalid bytes are replaced rather than ending the read.
pub fn for_each_line(pipe: impl Read, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => each(&String::from_utf8_lossy(&line)),
        }
    }
}

pub(crate) fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) only takes plain integers.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `cmd` to completion with its output captured, like [`Command::output`], but kills it
/// after `limit`: for commands that would run forever if the behaviour under test were wrong.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    if wait_timeout(&mut child, limit)?.is_none() {
        child.kill().with_context(|| format!("killing {what}"))?;
        let out = child.wait_with_output()?;
        bail!("{what} was still running after {limit:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(child.wait_with_output()?)
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
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
