//! Running code in another network namespace. setns(2) with CLONE_NEWNET moves only the
//! calling thread, so the code runs on a thread of its own that enters the namespace first:
//! the caller's threads (the watch loop, the test harness) stay where they are, and the
//! switch ends with the thread.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

use anyhow::{anyhow, Context, Result};

/// Runs `body` on a new thread inside the namespace pinned at `path` (e.g.
/// `/run/netns/NAME`); sockets it opens and programs it starts belong to that namespace.
/// A panic in `body` is passed on to the caller.
pub fn run_in<T: Send>(path: &Path, body: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(io::Error::last_os_error()).context(format!("entering network namespace {}", path.display())));
                }
                Ok(body())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
