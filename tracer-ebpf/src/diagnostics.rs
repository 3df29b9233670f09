//! Reports of what should never happen in the kernel programs (a kernel read refused), for
//! `tracer watch --debug`. A failure deep in a program is noted in the program's per-CPU
//! scratch space and reported through aya-log when the program returns: logging where it
//! happens would add aya-log's stack to the deepest call chain, which the 512-byte stack
//! of older verifiers (6.1) does not have room for. Without `--debug` the configuration
//! says so, the verifier drops the reporting as dead code, and the programs cost nothing.

use crate::{config::config, packet};

/// A failure that should never happen.
#[derive(Clone, Copy)]
pub enum Problem {
    /// The kernel refused to copy a traced frame's bytes.
    CopyRefused = 1,
    /// The conntrack entry attached to a traced packet could not be read.
    ConntrackUnreadable = 2,
}

/// Notes `problem` for program `slot` (`lost_slot`), to be reported when it returns.
#[inline(always)]
pub fn note(slot: u32, problem: Problem) {
    if config!(debug) == 0 {
        return;
    }
    if let Some(scratch) = packet::scratch(slot) {
        scratch.problems |= problem as u32;
    }
}

/// Reports and clears what program `slot` noted on this run. Called at a program's top.
#[inline(always)]
pub fn report(slot: u32) {
    if config!(debug) == 0 {
        return;
    }
    let Some(scratch) = packet::scratch(slot) else { return };
    let problems = scratch.problems;
    if problems == 0 {
        return;
    }
    scratch.problems = 0;
    // aya-log's macros take a program context they do not read.
    if problems & Problem::CopyRefused as u32 != 0 {
        aya_log_ebpf::warn!(&(), "the kernel refused to copy the bytes of a traced frame (program {})", slot);
    }
    if problems & Problem::ConntrackUnreadable as u32 != 0 {
        aya_log_ebpf::warn!(
            &(),
            "the conntrack entry attached to a traced packet could not be read (program {})",
            slot
        );
    }
}
