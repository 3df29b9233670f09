//! Where the bench's processes run: the load generator on a CPU of its own, everything else
//! (the bench, the receiver, the observer and its reader) on the others.
//!
//! Left to the scheduler, a 2-CPU machine sometimes puts the observer's reader on the load's CPU
//! and sometimes not, and the same mode measures differently from round to round. The load's
//! packets are switched, bridged, NATed and traced in softirq on the CPU that sends them, so with
//! the sender alone on its CPU a mode's cost on that path is what its ratio measures; the reader's
//! work lands on the other CPU, where it shows as CPU time and losses.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Result};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub load: usize,
    pub others: Vec<usize>,
}

static PLACEMENT: OnceLock<Option<Placement>> = OnceLock::new();

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET bounds the index by the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// The CPUs this process may run on.
fn allowed() -> Result<Vec<usize>> {
    // SAFETY: as in cpu_set; sched_getaffinity writes at most the size it is given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads within the set.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

fn set_affinity(cpus: &[usize]) -> Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: a valid set of the size given, for the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's CPUs as they were before [`place`]; given back when dropped, so what
/// runs after the bench (the rest of `cargo xtask test`) has every CPU again.
pub struct Placed {
    before: Vec<usize>,
    pub placement: Option<Placement>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        if self.placement.is_some() {
            let _ = set_affinity(&self.before);
        }
    }
}

/// Splits the allowed CPUs: the last for the load, the rest for this thread and everything it
/// starts from now on. With a single CPU there is nothing to split, and nothing is pinned.
pub fn place() -> Result<Placed> {
    let before = allowed()?;
    let placement = match before.split_last() {
        Some((&load, others)) if !others.is_empty() => {
            set_affinity(others)?;
            Some(Placement { load, others: others.to_vec() })
        }
        _ => None,
    };
    let placement = PLACEMENT.get_or_init(|| placement).clone();
    Ok(Placed { before, placement })
}

/// The load's CPU, if the CPUs were split.
pub fn load_cpu() -> Option<usize> {
    PLACEMENT.get().and_then(|p| p.as_ref()).map(|p| p.load)
}

/// Runs `cmd` on the load's CPU, if the CPUs were split.
pub fn on_load_cpu(cmd: &mut Command) {
    let Some(load) = load_cpu() else {
        return;
    };
    let set = cpu_set(&[load]);
    // SAFETY: between fork and exec the closure only makes one system call on a set built
    // before the fork; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The placement as results.json records it.
pub fn placement_json() -> Value {
    match PLACEMENT.get() {
        Some(Some(p)) => json!({"load_cpu": p.load, "other_cpus": p.others}),
        _ => json!({"load_cpu": null, "other_cpus": null, "note": "not pinned: one CPU"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_cpus_are_read() {
        let cpus = allowed().expect("affinity");
        assert!(!cpus.is_empty());
        // A cgroup's CPU quota can make the parallelism Rust reports smaller, never larger.
        assert!(cpus.len() >= std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    }
}
