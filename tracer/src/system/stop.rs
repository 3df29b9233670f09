//! A stop asked for with SIGINT or SIGTERM, seen also where it cannot be awaited: a write to
//! a standard output that nobody reads blocks the watch's loop, which then never gets back to
//! the signal. A thread of its own notes the signal and then interrupts the blocked write;
//! [`StopAwareWriter`] gives up instead of writing again.

use std::{
    fs::File,
    io::{self, Write},
    os::fd::AsFd,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
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
            interrupt_blocked_writes();
        })
        .context("starting the signal watcher's thread")?;
    Ok(())
}

/// How often a write still blocked after a stop is interrupted again.
const INTERRUPT_EVERY: Duration = Duration::from_millis(100);

/// A write blocked this long after a stop is taken for one nobody will read. A reader that
/// is only slow (a counter behind a flood of lines) frees room sooner, and each write that
/// returns begins the wait again: its last lines and the summary still reach it.
const BLOCKED_FOR: Duration = Duration::from_secs(1);

/// The thread inside a write to standard output (its `pthread_t`), 0 when none is.
static WRITING: AtomicU64 = AtomicU64::new(0);

/// When that write began (`CLOCK_MONOTONIC`, ms).
static WRITING_SINCE_MS: AtomicU64 = AtomicU64::new(0);

fn monotonic_ms() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000
}

/// Does nothing: it is there so that SIGUSR1, installed without `SA_RESTART`, makes a
/// blocked write(2) return `EINTR`.
extern "C" fn interrupt_write(_: libc::c_int) {}

/// After a stop, interrupts the write standard output is blocked in, until there is none.
fn interrupt_blocked_writes() -> ! {
    loop {
        let thread = WRITING.load(Ordering::Acquire);
        let blocked_ms = monotonic_ms().saturating_sub(WRITING_SINCE_MS.load(Ordering::Acquire));
        if thread != 0 && blocked_ms >= BLOCKED_FOR.as_millis() as u64 {
            // SAFETY: a thread that marked itself writing is alive until it clears the mark;
            // at worst the signal finds it just after, where the handler does nothing.
            unsafe { libc::pthread_kill(thread as libc::pthread_t, libc::SIGUSR1) };
        }
        thread::sleep(INTERRUPT_EVERY);
    }
}

/// Standard output (a duplicate of its descriptor, unbuffered) whose write, blocked because
/// nobody reads, is interrupted once a stop was asked for and then fails with `BrokenPipe`:
/// the watch ends as when the reader has gone. Until then writes are plain blocking writes,
/// whole, at no cost but marking the writing thread.
pub(crate) struct StopAwareWriter {
    out: File,
}

impl StopAwareWriter {
    pub(crate) fn stdout() -> io::Result<StopAwareWriter> {
        // SAFETY: an all-zero sigaction with a handler and no flags (no SA_RESTART).
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt_write as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StopAwareWriter { out: File::from(io::stdout().as_fd().try_clone_to_owned()?) })
    }
}

impl Write for StopAwareWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        WRITING_SINCE_MS.store(monotonic_ms(), Ordering::Release);
        // SAFETY: pthread_self has no preconditions.
        WRITING.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
        let written = self.out.write(buf);
        WRITING.store(0, Ordering::Release);
        match written {
            Err(err) if err.kind() == io::ErrorKind::Interrupted && requested() => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "standard output was not being read when the watch was stopped",
            )),
            written => written,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
