//! Running code of the test process itself inside one of a lab's network namespaces.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::thread;

use anyhow::{anyhow, Context, Result};

/// Runs `f` on a thread inside network namespace `netns` (`/run/netns/NAME`). Sockets it creates
/// belong to that namespace; the thread, and with it the namespace switch, ends with `f`.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    thread::scope(|s| {
        s.spawn(|| {
            let ns = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns(2) with an open namespace file; it moves only this thread, which
            // ends with the closure.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error()).with_context(|| format!("entering {netns}"));
            }
            f()
        })
        .join()
        .map_err(|_| anyhow!("the thread in {netns} panicked"))?
    })
}
