//! Reads of kernel objects at offsets resolved from the running kernel's BTF.
//! Every read goes through bpf_probe_read_kernel: a bad pointer gives an error, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};

#[inline(always)]
pub fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    // SAFETY: probe reads are fault-safe; `base` is a kernel pointer from the tracepoint.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }.ok()
}

#[inline(always)]
pub fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    let value: u64 = read(base, offset)?;
    if value == 0 {
        None
    } else {
        Some(value as *const u8)
    }
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
