//! Reads of kernel objects at offsets resolved from the running kernel's BTF.
//!
//! Objects the verifier knows the type of (a tracepoint's `sk_buff *`, the netfilter
//! context's hook state, and pointer fields loaded from them) are read with plain loads:
//! the offsets come from the read-only configuration, which the verifier treats as
//! constants, so it checks each load against the type, and the kernel turns a fault into
//! zero. Everything else (packet bytes, a conntrack entry reached through `_nfct`) goes
//! through bpf_probe_read_kernel, in as few calls as the layout allows.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};

/// Loads the field at `offset` of a kernel object.
///
/// # Safety
/// `base` must be a pointer whose type the verifier knows (a BTF-typed tracepoint
/// argument or context field, or a pointer field loaded from one), and `offset` a field
/// of that type from the configuration.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    unsafe { core::ptr::read(base.wrapping_add(offset as usize) as *const T) }
}

/// Loads a pointer field; `None` when it is null.
///
/// # Safety
/// As for [`load`].
#[inline(always)]
pub unsafe fn load_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    let value: u64 = unsafe { load(base, offset) };
    if value == 0 {
        None
    } else {
        Some(value as *const u8)
    }
}

#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: probe reads are fault-safe, whatever `base` points at.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }.ok()
}

/// Copies `len` bytes (at most `N`) from kernel memory into `dst`. Returns false when
/// the kernel refused the read.
#[inline(always)]
pub fn read_into<const N: usize>(dst: &mut [u8; N], src: *const u8, len: usize) -> bool {
    // The explicit clamp is what lets the verifier bound the size argument.
    let len = if len > N { N } else { len };
    // SAFETY: dst holds N bytes and len <= N; the source read is fault-safe.
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            dst.as_mut_ptr() as *mut core::ffi::c_void,
            len as u32,
            src as *const core::ffi::c_void,
        )
    };
    ret == 0
}
