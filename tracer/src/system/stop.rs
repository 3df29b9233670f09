//! A stop asked for with SIGINT or SIGTERM, seen also where it cannot be awaited: a write to
//! a standard output that nobody reads blocks the watch's loop, which then never gets back to
//! the signal. A thread of its own notes the signal; [`StopAwareWriter`] gives up waiting to
//! write once it has.

use std::{
    fs::File,
    io::{self, Write},
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived since [`note_signals`] started.
pub(crate) fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Starts noting SIGINT and SIGTERM. The watch's own loop still gets them: tokio tells every
/// listener of a signal.
pub(crate) fn note_signals() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher's runtime")?;
    // Installed here, before the watch starts, so that no early signal is missed.
    let (mut term, mut int) = {
        let _entered = runtime.enter();
        let term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        (term, int)
    };
    thread::Builder::new()
        .name("tracer-signals".to_string())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            });
            STOP.store(true, Ordering::Relaxed);
        })
        .context("starting the signal watcher's thread")?;
    Ok(())
}

/// How long a write waits for room before it looks whether a stop was asked for.
const WAIT_STEP: Duration = Duration::from_millis(100);
/// What a pipe takes at once without blocking once poll(2) says it has room.
const PIPE_BUF: usize = 4096;

/// Standard output (a duplicate of its descriptor, unbuffered) whose writes wait for room
/// in steps, and give up with `BrokenPipe` once a stop was asked for: the reader is not
/// reading, and the watch ends as when the reader has gone. Regular files are written as
/// they are: they do not wait for a reader.
pub(crate) struct StopAwareWriter {
    out: File,
    waits: bool,
}

impl StopAwareWriter {
    pub(crate) fn stdout() -> io::Result<StopAwareWriter> {
        let out = File::from(io::stdout().as_fd().try_clone_to_owned()?);
        let waits = !out.metadata().map(|meta| meta.file_type().is_file()).unwrap_or(false);
        Ok(StopAwareWriter { out, waits })
    }
}

impl Write for StopAwareWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.waits {
            return self.out.write(buf);
        }
        loop {
            let mut ready = libc::pollfd { fd: self.out.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
            // SAFETY: one valid pollfd.
            let polled = unsafe { libc::poll(&mut ready, 1, WAIT_STEP.as_millis() as libc::c_int) };
            if polled < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // Room (or an error or hang-up, which the write reports).
            if polled > 0 {
                return self.out.write(&buf[..buf.len().min(PIPE_BUF)]);
            }
            if requested() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "standard output was not being read when the watch was stopped",
                ));
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
