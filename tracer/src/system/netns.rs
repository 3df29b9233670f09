//! Running code in another network namespace. setns(2) with CLONE_NEWNET moves only the
//! calling thread, so the code runs on a thread of its own that enters the namespace first:
//! the caller's threads (the watch loop, the test harness) stay where they are, and the
//! switch ends with the thread. `--netns` is the one exception: it moves the process's
//! only thread at start, for the whole run.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};

/// Runs `body` on a new thread inside the namespace pinned at `path` (e.g.
/// `/run/netns/NAME`); sockets it opens and programs it starts belong to that namespace.
/// A panic in `body` is passed on to the caller.
pub(crate) fn run_in<T: Send>(path: &Path, body: impl FnOnce() -> T + Send) -> Result<T> {
    let file = open_namespace(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(anyhow!(io::Error::last_os_error())
                        .context(format!("entering network namespace {}", path.display())));
                }
                Ok(body())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Where `ip netns add` pins named namespaces (`/var/run` is a link to `/run` on most
/// distributions; both are tried).
const PINNED_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The namespace file `--netns` names: a PID (`/proc/PID/ns/net`), a path, or a name
/// pinned by `ip netns add`.
pub(crate) fn resolve(target: &str) -> Result<PathBuf> {
    if let Some(pid) = pid_of(target) {
        return Ok(PathBuf::from(format!("/proc/{pid}/ns/net")));
    }
    if target.contains('/') {
        return Ok(PathBuf::from(target));
    }
    if target.is_empty() || target == "." || target == ".." {
        return Err(anyhow!("--netns needs a name, a path or a PID"));
    }
    PINNED_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(target))
        .find(|path| path.exists())
        .ok_or_else(|| anyhow!("no network namespace named {target} in /run/netns (`ip netns list` shows them); give a name, a path such as /proc/PID/ns/net, or a PID"))
}

/// Moves the calling thread into the network namespace `target` names (see [`resolve`]),
/// for good. Call it while the process has only this one thread: threads started later
/// inherit the namespace, so the watch, its workers and the tools they run all live there,
/// as under `ip netns exec`.
pub(crate) fn enter(target: &str) -> Result<()> {
    if let Some(pid) = pid_of(target) {
        // A pidfd holds on to the process itself: its PID cannot be reused by another
        // process between here and setns(2), as a path under /proc/PID could be.
        match pidfd_open(pid) {
            Ok(pidfd) => {
                // SAFETY: a valid fd; with CLONE_NEWNET setns enters the process's network namespace.
                if unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                    return Ok(());
                }
                let err = io::Error::last_os_error();
                // Before 5.8 setns takes no pidfd (EINVAL): through /proc below.
                if err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(setns_error(err, target, &format!("process {pid}")));
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {
                return Err(anyhow!("--netns {target}: no process {pid} (has it exited?)"));
            }
            // Before 5.3 there is no pidfd_open: through /proc below.
            Err(_) => {}
        }
    }
    let path = resolve(target)?;
    let file = open_namespace(&path).with_context(|| format!("--netns {target}"))?;
    // SAFETY: a valid fd; CLONE_NEWNET only accepts a network namespace file.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(setns_error(io::Error::last_os_error(), target, &path.display().to_string()));
    }
    Ok(())
}

/// A PID, when `target` is one.
fn pid_of(target: &str) -> Option<libc::pid_t> {
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    target.parse().ok()
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn setns_error(err: io::Error, target: &str, what: &str) -> anyhow::Error {
    if err.raw_os_error() == Some(libc::EINVAL) {
        return anyhow!("--netns {target}: {what} is not a network namespace");
    }
    anyhow!(err).context(format!("--netns {target}: entering {what}"))
}

/// `statfs(2)`'s magic number of nsfs, the file system namespace files live on.
const NSFS_MAGIC: libc::c_long = 0x6e73_6673;

/// Opens a namespace file for setns(2), refusing anything else before it could block or
/// act: a FIFO, a device, a socket or a directory is refused by its type, without opening
/// it; what is opened is opened non-blocking and checked to be on nsfs.
fn open_namespace(path: &Path) -> Result<File> {
    let not_a_namespace = || {
        anyhow!(
            "{} is not a namespace file: give a name from `ip netns list`, a path such as /run/netns/NAME or /proc/PID/ns/net, or a PID",
            path.display()
        )
    };
    let meta = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(not_a_namespace());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: an all-zero statfs is valid; fstatfs fills it for an open fd.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 || fs.f_type as libc::c_long != NSFS_MAGIC {
        return Err(not_a_namespace());
    }
    Ok(file)
}

/// Network namespaces for tests that touch real interfaces and firewalls: each test gets
/// its own, deleted on drop even when the test fails, so nothing leaks into the host.
#[cfg(test)]
pub(crate) mod scratch {
    use std::io::Write;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs `ip ARGS`; panics with its output when it fails. Returns its standard output.
    pub(crate) fn ip(args: &[&str]) -> String {
        ip_with_input(args, "")
    }

    /// Runs `ip ARGS` with `input` on its standard input (`ip -batch -`, `nft -f -`); panics
    /// with its output when it fails. Returns its standard output.
    pub(crate) fn ip_with_input(args: &[&str], input: &str) -> String {
        let mut child = Command::new("ip")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ip");
        // Dropping the pipe once written ends the input.
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write to ip");
        let out = child.wait_with_output().expect("wait for ip");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "ip {}:\n{stdout}{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        stdout
    }

    pub(crate) struct Netns {
        pub name: String,
    }

    impl Netns {
        pub(crate) fn new() -> Netns {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("tr-ns-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            ip(&["netns", "add", &name]);
            let netns = Netns { name };
            netns.sh("ip link set lo up");
            netns
        }

        /// Runs a shell script inside the namespace; panics with its output when it fails.
        pub(crate) fn sh(&self, script: &str) -> String {
            ip(&["netns", "exec", &self.name, "sh", "-ec", script])
        }

        /// Loads an nft ruleset into the namespace.
        pub(crate) fn nft(&self, ruleset: &str) {
            ip_with_input(&["netns", "exec", &self.name, "nft", "-f", "-"], ruleset);
        }

        /// Runs `body` on a thread of its own that has entered the namespace: the tools
        /// snapshot() starts inherit it, and the test harness's threads stay where they are.
        pub(crate) fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
            let path = std::path::PathBuf::from(format!("/run/netns/{}", self.name));
            super::run_in(&path, body).expect("enter the namespace")
        }

        /// Sends UDP datagrams from inside the namespace (they may be refused: the firewall
        /// under test drops them).
        pub(crate) fn send_udp(&self, to: std::net::SocketAddr, count: usize) {
            self.run(|| {
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let socket = std::net::UdpSocket::bind(bind).expect("bind");
                for _ in 0..count {
                    let _ = socket.send_to(b"tracer", to);
                }
            })
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        }
    }
}
