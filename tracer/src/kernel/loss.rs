//! The kernel side of loss accounting: the per-endpoint loss buckets, mapped into this
//! process, and the programs' recursion misses (runs the kernel skipped because the same
//! program was already running on that CPU), read from the programs' info.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context, Result};
use aya::maps::MapData;
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
use tracer_common::LOSS_BUCKETS;

/// `LOSS_BY_ENDPOINT`, mapped read-only.
struct Buckets {
    base: *const AtomicU64,
    len_bytes: usize,
    // Keeps the map's fd open for as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory read through atomics only; it is unmapped once,
// by its single owner.
unsafe impl Send for Buckets {}

impl Buckets {
    fn map(map: MapData) -> Result<Buckets> {
        let len_bytes = LOSS_BUCKETS as usize * size_of::<u64>();
        // SAFETY: a fresh read-only shared mapping of an mmapable array map's values; the
        // kernel checks the length against the map.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            bail!("mapping the loss counters: {}", std::io::Error::last_os_error());
        }
        Ok(Buckets { base: base as *const AtomicU64, len_bytes, _map: map })
    }

    fn count(&self, bucket: u32) -> u64 {
        if bucket >= LOSS_BUCKETS {
            return 0;
        }
        // SAFETY: in bounds of the live mapping; the kernel adds to the values atomically.
        unsafe { (*self.base.add(bucket as usize)).load(Ordering::Relaxed) }
    }
}

impl Drop for Buckets {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped exactly once.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len_bytes) };
    }
}

/// The kernel's loss counters: per endpoint (mapped) and the programs' recursion misses.
pub(crate) struct KernelLoss {
    buckets: Buckets,
    /// Duplicates of the programs' fds, to read their info by.
    programs: Vec<OwnedFd>,
}

impl KernelLoss {
    pub(crate) fn new(buckets: MapData, programs: Vec<OwnedFd>) -> Result<KernelLoss> {
        Ok(KernelLoss { buckets: Buckets::map(buckets)?, programs })
    }

    /// Records involving `endpoint` (or another endpoint of its bucket) the ring buffer
    /// could not take, since the programs were loaded.
    pub(crate) fn endpoint_losses(&self, endpoint: SocketAddr) -> u64 {
        self.buckets.count(bucket_of(endpoint))
    }

    /// Runs of the programs the kernel skipped, over all programs, now.
    pub(crate) fn recursion_misses(&self) -> u64 {
        recursion_misses(&self.programs)
    }
}

/// The kernel's loss bucket of an endpoint: the same function over the same bytes as the
/// kernel programs (address as on the wire, port in network byte order).
pub(crate) fn bucket_of(endpoint: SocketAddr) -> u32 {
    let mut addr = [0u8; 16];
    match endpoint {
        SocketAddr::V4(v4) => addr[..4].copy_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => addr.copy_from_slice(&v6.ip().octets()),
    }
    tracer_common::loss_bucket(&addr, endpoint.port().to_be())
}

fn recursion_misses(programs: &[OwnedFd]) -> u64 {
    programs.iter().filter_map(|fd| program_info(fd).ok()).map(|info| info.recursion_misses).sum()
}

fn program_info(fd: &OwnedFd) -> Result<bpf_prog_info> {
    // SAFETY: plain data; zero is "not set" for every field.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_OBJ_GET_INFO_BY_FD member of the union.
    let get = unsafe { &mut attr.info };
    get.bpf_fd = fd.as_raw_fd() as u32;
    get.info_len = size_of::<bpf_prog_info>() as u32;
    get.info = &mut info as *mut bpf_prog_info as u64;
    // SAFETY: attr is a valid bpf_attr pointing at a live bpf_prog_info of the given size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_long,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error()).context("reading a program's info");
    }
    Ok(info)
}
