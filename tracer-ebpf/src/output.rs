//! The ring buffer records leave through, what every record starts with, and the
//! counts of the records it could not take.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, PerCpuArray, RingBuf},
};
use tracer_common::{loss_bucket, Flow, JourneyRecord, RecordHeader, LOSS_BUCKETS};

use crate::config::config;

/// Userspace resizes this at load time (`--ring-buffer-mib`); the size here only
/// satisfies the ELF map definition.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Records dropped because EVENTS was full, per CPU, one slot per program
/// (`tracer_common::lost_slot`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(tracer_common::lost_slot::COUNT, 0);

/// The same losses, counted once for each endpoint of the lost record's flow
/// (`tracer_common::loss_bucket`). Userspace maps it and compares a bucket with the stamp
/// an earlier record of the same endpoint carries.
#[map]
pub static LOSS_BY_ENDPOINT: Array<u64> = Array::with_max_entries(LOSS_BUCKETS, BPF_F_MMAPABLE);

/// The loss buckets of a flow's two endpoints and their counts before a record is reserved.
pub struct LossStamp {
    src_bucket: u32,
    dst_bucket: u32,
    pub src: u32,
    pub dst: u32,
}

#[inline(always)]
pub fn loss_stamp(flow: &Flow) -> LossStamp {
    let src_bucket = loss_bucket(&flow.src_addr, flow.src_port_be);
    let dst_bucket = loss_bucket(&flow.dst_addr, flow.dst_port_be);
    let count = |bucket: u32| match LOSS_BY_ENDPOINT.get_ptr(bucket) {
        // An aligned 64-bit load is never torn, and the BPF backend has no atomic-load
        // instruction to ask for one: a volatile read is that load.
        // SAFETY: a live, aligned u64 of an array map.
        Some(value) => (unsafe { core::ptr::read_volatile(value) }) as u32,
        None => 0,
    };
    LossStamp { src_bucket, dst_bucket, src: count(src_bucket), dst: count(dst_bucket) }
}

#[inline(always)]
fn add_one(value: Option<*mut u64>) {
    if let Some(value) = value {
        // The BPF target has no `AtomicU64::fetch_add` (no compare-and-swap), but the
        // instruction set has an atomic add, which this intrinsic lowers to.
        // SAFETY: a live, aligned u64 of a map value for the whole program run.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(value, 1) };
    }
}

/// Counts a record EVENTS could not take: per program and CPU for the totals, per
/// endpoint for the findings that rest on the flow.
#[inline(always)]
pub fn count_lost(slot: u32, stamp: &LossStamp) {
    add_one(LOST.get_ptr_mut(slot));
    add_one(LOSS_BY_ENDPOINT.get_ptr_mut(stamp.src_bucket));
    add_one(LOSS_BY_ENDPOINT.get_ptr_mut(stamp.dst_bucket));
}

/// Counts a journey EVENTS could not take, for the endpoints of its first step and of its
/// end: together they include the client and server of the exchange it belongs to.
#[inline(always)]
pub fn count_lost_journey(slot: u32, journey: &JourneyRecord) {
    add_one(LOST.get_ptr_mut(slot));
    let first = &journey.steps[0].flow;
    let end = &journey.end_flow;
    for (addr, port) in [
        (&first.src_addr, first.src_port_be),
        (&first.dst_addr, first.dst_port_be),
        (&end.src_addr, end.src_port_be),
        (&end.dst_addr, end.dst_port_be),
    ] {
        add_one(LOSS_BY_ENDPOINT.get_ptr_mut(loss_bucket(addr, port)));
    }
}

/// Reserves a record of type `T` (whose first field is its `RecordHeader`), or counts it
/// lost.
#[inline(always)]
pub fn reserve<T: 'static>(slot: u32, stamp: &LossStamp) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(slot, stamp);
    }
    entry
}

/// Hands a filled record to the reader.
#[inline(always)]
pub fn submit<T: 'static>(entry: RingBufEntry<T>) {
    entry.submit(wakeup_flags());
}

/// Below the threshold the reader is not woken: it drains on its timer, and a wakeup per
/// record (an interrupt on this CPU) cost more than the record. The record that fills the
/// ring past the threshold wakes it, once: forcing a wakeup for every record beyond it, as
/// a reader that lags lets the ring stay full, would cost more again.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let queued = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = config!(wakeup_bytes) as u64;
    if queued >= threshold && queued < threshold + WAKEUP_WINDOW {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Bytes past the threshold within which a record wakes the reader: two of the largest
/// records, so that one of every producer's records lands in it.
const WAKEUP_WINDOW: u64 = 2 * core::mem::size_of::<JourneyRecord>() as u64;

/// Fills the header every record starts with.
///
/// # Safety
/// `header` must point into a reserved ring buffer record.
#[inline(always)]
pub unsafe fn fill_header(header: *mut RecordHeader, kind: u32, netns_inode: u32, skb: *const u8, stamp: &LossStamp) {
    unsafe {
        (*header).kind = kind;
        (*header).netns_inode = netns_inode;
        (*header).timestamp_ns = bpf_ktime_get_ns();
        (*header).skb_id = skb as u64;
        (*header).loss_stamp_src = stamp.src;
        (*header).loss_stamp_dst = stamp.dst;
    }
}
