//! The ring buffer records leave through, and the per-CPU count of those it could not take.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};

/// Userspace resizes this at load time (`--ring-buffer-mib`); the size here only
/// satisfies the ELF map definition.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Records dropped because EVENTS was full, per CPU, one slot per program
/// (`tracer_common::lost_slot`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::lost_slot::COUNT, 0);

#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // A plain increment is exact: the slot is per CPU and per program, and the
        // kernel never runs one tracing program nested in itself on a CPU (a softirq
        // interrupting a program runs a *different* program, with its own slot).
        // SAFETY: the map value is a live, aligned u64 for the whole program run.
        unsafe { *counter += 1 };
    }
}
