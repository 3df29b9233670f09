//! Processes the bench starts: each is stopped (SIGTERM, then SIGKILL) when its handle is dropped,
//! so an error or Ctrl-C half-way through a run leaves nothing running in the lab's namespaces when
//! the lab removes them. Output is read by threads into line buffers with arrival times, which is
//! how the bench notices "ready" lines and times the first event.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tracer_tests::process::for_each_line;

/// How long a process gets to exit after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);

/// CLOCK_MONOTONIC in nanoseconds: the clock loadgen reports instants in, so times taken here and
/// there compare directly.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Lines a thread reads from a pipe, each with the monotonic time it arrived.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<LineBuf>, Condvar)>);

#[derive(Default)]
struct LineBuf {
    lines: Vec<(u64, String)>,
    eof: bool,
}

impl Lines {
    fn lock(&self) -> MutexGuard<'_, LineBuf> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read_from(pipe: impl Read + Send + 'static) -> (Lines, JoinHandle<()>) {
        let lines = Lines::default();
        let sink = lines.clone();
        let handle = thread::spawn(move || {
            for_each_line(pipe, |text| {
                let now = monotonic_ns();
                sink.lock().lines.push((now, text.trim_end().to_string()));
                sink.0 .1.notify_all();
            });
            sink.lock().eof = true;
            sink.0 .1.notify_all();
        });
        (lines, handle)
    }

    /// The first line matching `pred` (arrival time and text), waiting up to `timeout`; None if
    /// the pipe closed or the time ran out first.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<(u64, String)> {
        let deadline = Instant::now() + timeout;
        let mut buf = self.lock();
        loop {
            if let Some(found) = buf.lines.iter().find(|(_, l)| pred(l)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if buf.eof || now >= deadline {
                return None;
            }
            buf = match self.0 .1.wait_timeout(buf, deadline - now) {
                Ok((b, _)) => b,
                Err(p) => p.into_inner().0,
            };
        }
    }

    pub fn texts(&self) -> Vec<String> {
        self.lock().lines.iter().map(|(_, l)| l.clone()).collect()
    }

    pub fn joined(&self) -> String {
        self.texts().join("\n")
    }
}

/// Where a started process's stdout goes.
pub enum Stdout {
    /// Read into [`Proc::out`].
    Capture,
    /// Left as a pipe for the caller to take ([`Proc::take_stdout`]), e.g. to feed another process.
    Pipe,
}

/// A running process, stopped when dropped.
pub struct Proc {
    what: String,
    child: Child,
    pub out: Lines,
    pub err: Lines,
    readers: Vec<JoinHandle<()>>,
    reaped: bool,
}

/// What a process left behind.
pub struct Ended {
    pub status: ExitStatus,
    pub out: Vec<String>,
    pub err: String,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str, stdout: Stdout) -> Result<Proc> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let mut readers = Vec::new();
        let out = match stdout {
            Stdout::Capture => match child.stdout.take() {
                Some(pipe) => {
                    let (lines, handle) = Lines::read_from(pipe);
                    readers.push(handle);
                    lines
                }
                None => Lines::default(),
            },
            Stdout::Pipe => Lines::default(),
        };
        let err = match child.stderr.take() {
            Some(pipe) => {
                let (lines, handle) = Lines::read_from(pipe);
                readers.push(handle);
                lines
            }
            None => Lines::default(),
        };
        Ok(Proc { what: what.to_string(), child, out, err, readers, reaped: false })
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&mut self, signal: libc::c_int) {
        // Only while it has not been reaped: afterwards the pid may belong to someone else.
        if self.running() {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) takes plain integers.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Waits until a stdout line matches, failing with what the process said if it exits or the
    /// time runs out first.
    pub fn wait_stdout(&mut self, timeout: Duration, needle: &str) -> Result<u64> {
        self.wait_line(&self.out, timeout, needle)
    }

    /// Like [`Proc::wait_stdout`] for stderr.
    pub fn wait_stderr(&mut self, timeout: Duration, needle: &str) -> Result<u64> {
        self.wait_line(&self.err, timeout, needle)
    }

    /// The arrival time of the first line of `lines` (this process's stdout or stderr) that
    /// contains `needle`. The error quotes stderr either way: that is where a process says why
    /// it gave up.
    fn wait_line(&self, lines: &Lines, timeout: Duration, needle: &str) -> Result<u64> {
        match lines.wait_for(timeout, |l| l.contains(needle)) {
            Some((at, _)) => Ok(at),
            None => bail!("{} did not print {needle:?} within {timeout:?}; stderr:\n{}", self.what, self.err.joined()),
        }
    }

    fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself, then SIGTERM, then SIGKILL after
    /// [`GRACE`]; collects its output.
    pub fn finish(mut self, timeout: Duration) -> Result<Ended> {
        let status = match self.wait_timeout(timeout)? {
            Some(status) => status,
            None => {
                self.signal(libc::SIGTERM);
                match self.wait_timeout(GRACE)? {
                    Some(status) => status,
                    None => {
                        self.child.kill().ok();
                        self.child.wait().with_context(|| format!("waiting for {}", self.what))?
                    }
                }
            }
        };
        self.reaped = true;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok(Ended { status, out: self.out.texts(), err: self.err.joined() })
    }

    /// SIGTERM now, then [`Proc::finish`].
    pub fn stop(mut self) -> Result<Ended> {
        self.signal(libc::SIGTERM);
        self.finish(GRACE)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.signal(libc::SIGTERM);
        if !matches!(self.wait_timeout(Duration::from_secs(3)), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last JSON object a process printed on stdout (loadgen reports this way).
pub fn last_json(ended: &Ended, what: &str) -> Result<Value> {
    let line = ended
        .out
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("{what} printed no result ({}); stderr:\n{}", ended.status, ended.err))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed bad JSON: {line}"))
}

/// What `loadgen count` saw of a producer's output.
#[derive(Clone, Debug, Default)]
pub struct Counted {
    pub lines: u64,
    /// Lines containing the needle the pipeline was started with.
    pub matched: u64,
    pub bytes: u64,
    pub last_line: String,
}

/// A producer (tracer, or a trace monitor) in a lab namespace with its stdout piped into
/// `loadgen count`, so the bench never holds the stream in memory and the reader costs what a
/// pipe into a file would.
pub struct Pipeline {
    pub producer: Proc,
    counter: Proc,
    pub spawned_ns: u64,
}

/// How a pipeline ended.
pub struct PipelineEnd {
    pub counted: Counted,
    pub producer_status: ExitStatus,
    pub producer_stderr: String,
}

impl Pipeline {
    pub fn spawn(producer: Command, what: &str, loadgen: &Path, matching: Option<&str>) -> Result<Pipeline> {
        let spawned_ns = monotonic_ns();
        let mut producer = Proc::spawn(producer, what, Stdout::Pipe)?;
        let stdout = producer.take_stdout().ok_or_else(|| anyhow!("{what} has no stdout pipe"))?;
        let mut counter = Command::new(loadgen);
        counter.arg("count").stdin(Stdio::from(stdout));
        if let Some(needle) = matching {
            counter.args(["--match", needle]);
        }
        let counter = Proc::spawn(counter, "loadgen count", Stdout::Capture)?;
        Ok(Pipeline { producer, counter, spawned_ns })
    }

    /// When the first line of output reached the counter, if it did within `timeout`.
    pub fn first_line_ns(&self, timeout: Duration) -> Option<u64> {
        let (_, line) = self.counter.err.wait_for(timeout, |l| l.starts_with("first-line "))?;
        line.strip_prefix("first-line ")?.trim().parse().ok()
    }

    /// Stops the producer (SIGTERM: tracer then prints its summary) and collects the count.
    pub fn finish(self) -> Result<PipelineEnd> {
        let Pipeline { producer, counter, .. } = self;
        let what = producer.what().to_string();
        let ended = producer.stop()?;
        // The producer's exit closed the pipe, so the counter ends by itself.
        let counted = counter.finish(Duration::from_secs(5))?;
        let v = last_json(&counted, "loadgen count")?;
        Ok(PipelineEnd {
            counted: Counted {
                lines: v["lines"].as_u64().unwrap_or(0),
                matched: v["matched"].as_u64().unwrap_or(0),
                bytes: v["bytes"].as_u64().unwrap_or(0),
                last_line: v["last_line"].as_str().unwrap_or("").to_string(),
            },
            producer_status: ended.status,
            producer_stderr: format!("{what}: {}", ended.err),
        })
    }
}

/// CPU time a process has used (user + system) in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after its ')' are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// Peak resident set size (VmHWM) in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident set size now (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
}
