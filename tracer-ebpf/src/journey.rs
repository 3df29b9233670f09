//! A traced packet's way through the node, built while it travels and sent once, when it
//! ends: one record per packet instead of one per stage and hook, which is what made a
//! traced packet cost a ring record (and a reader's time) at every point it passed.
//!
//! The journeys in flight are kept in an LRU table keyed by the skb's address. A bridge
//! port receiving a frame starts a journey; the bridge device, the netfilter hooks and the
//! drop and ICMP tracepoints add to it; queueing on a bridge port or another device,
//! delivery through the input hook, or a drop ends it. An end whose journey the table no
//! longer holds (evicted under a flood) is still sent, as a journey of that end alone, so
//! that a reply is never missing because its start was forgotten.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated},
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{fragment, lost_slot, record_kind, JourneyRecord, JourneyStep, CAPTURE_MAX, MAX_STEPS};

use crate::{
    output::{self, EVENTS},
    packet::{self, NetworkHeader, ParsedFlow},
};

/// Journeys in flight: far more than a node has packets in flight at once; the oldest
/// (abandoned: a packet consumed where no end is watched) make room first.
#[map]
static JOURNEYS: LruHashMap<u64, JourneyRecord> = LruHashMap::with_max_entries(4096, 0);

/// Where a journey is put together before it goes into the table (a journey is too large
/// for the stack), per CPU and per program like the other scratch space.
#[map]
static NEW_JOURNEYS: PerCpuArray<JourneyRecord> = PerCpuArray::with_max_entries(lost_slot::COUNT, 0);

/// Where a journey is packed to be sent (see `JourneyRecord`), per CPU and per program.
#[map]
static OUTGOING: PerCpuArray<JourneyRecord> = PerCpuArray::with_max_entries(lost_slot::COUNT, 0);

/// A journey older than this at its next step belonged to an earlier packet whose skb
/// address has been reused.
const MAX_AGE_NS: u64 = 1_000_000_000;

/// One step of a traced packet, as a program saw it.
pub struct Step<'a> {
    pub skb: *const u8,
    pub kind: u8,
    pub point: u8,
    pub pf: u8,
    pub ifindex: u32,
    pub other_ifindex: u32,
    pub packet_len: u32,
    pub header: &'a NetworkHeader,
    pub parsed: &'a ParsedFlow,
    pub netns_inode: u32,
    /// The calling program (`lost_slot`).
    pub slot: u32,
}

/// Records a step: into the packet's journey, or as the first of a new one when the table
/// holds none (or only an old one of a reused skb address), or always when `start`.
/// Returns true when it began a journey whose payload goes on in page fragments: the
/// caller then copies them with [`copy_fragment_payload`].
///
/// # Safety
/// `step.skb` must be a BTF-typed `sk_buff` pointer.
// A call of its own: its stack is not added to its callers' (the programs
// share 512 bytes).
#[inline(never)]
// The key is lent, not passed by value as clippy would have it: by value the compiler
// stores it a second time on the stack before the lookup (5 more instructions here), in
// a call kept out of line for the verifier's 512-byte stack.
#[allow(clippy::needless_borrows_for_generic_args)]
pub unsafe fn step(step: &Step, start: bool) -> bool {
    let key = step.skb as u64;
    let now = unsafe { bpf_ktime_get_ns() };
    if !start {
        if let Some(journey) = JOURNEYS.get_ptr_mut(&key) {
            // SAFETY: a live entry of the table; only the programs handling this skb,
            // which follow one another, touch it.
            let journey = unsafe { &mut *journey };
            // Reassembly leaves the whole datagram in the skb of the fragment that completed
            // it: a later fragment's journey would lend it bytes without the transport
            // header. It starts afresh, as the datagram it now is.
            let reassembled =
                journey.capture_flow.fragment == fragment::LATER && step.parsed.flow.fragment != fragment::LATER;
            if now.saturating_sub(journey.last_step_ns) < MAX_AGE_NS && !reassembled {
                unsafe { append(journey, step, now) };
                return false;
            }
        }
    }
    let Some(fresh) = NEW_JOURNEYS.get_ptr_mut(step.slot) else { return false };
    // SAFETY: this program's per-CPU slot.
    let fresh = unsafe { &mut *fresh };
    unsafe { begin(fresh, step, now) };
    // An insert that fails leaves the packet without a journey until its end, which is
    // then sent alone: nothing is silently lost.
    let fragments = fresh.payload_in_fragments != 0;
    JOURNEYS.insert(&key, fresh, 0).is_ok() && fragments
}

/// Copies the payload that follows the captured linear data in page fragments into the
/// skb's journey, begun by [`step`]. Called by the program itself, not from `step`: the
/// deepest call chain has no stack left for it.
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(never)]
pub unsafe fn copy_fragment_payload(skb: *const u8) {
    let Some(journey) = JOURNEYS.get_ptr_mut(skb as u64) else { return };
    // SAFETY: a live entry of the table (see `step`).
    let journey = unsafe { &mut *journey };
    if journey.payload_in_fragments == 0 {
        return;
    }
    journey.payload_in_fragments = 0;
    let at = journey.captured_len as usize;
    let added = unsafe { packet::append_first_page_fragment(skb, &mut journey.packet, at) };
    journey.captured_len = (at + added) as u16;
}

/// Starts `journey` afresh with `step`.
#[inline(always)]
unsafe fn begin(journey: &mut JourneyRecord, step: &Step, now: u64) {
    let header = &mut journey.header;
    header.kind = record_kind::JOURNEY;
    header.netns_inode = step.netns_inode;
    header.timestamp_ns = now;
    header.skb_id = step.skb as u64;
    header.loss_stamp_src = 0;
    header.loss_stamp_dst = 0;
    journey.end = 0;
    journey.step_count = 0;
    journey.cut = 0;
    journey.icmp_sent = 0;
    journey.icmp_type = 0;
    journey.icmp_code = 0;
    journey._pad = 0;
    journey.end_ifindex = 0;
    journey.drop_reason = 0;
    journey.drop_location = 0;
    journey.last_step_ns = now;
    journey.ct_original = packet::zero_tuple();
    journey.ct_reply = packet::zero_tuple();
    // The bytes are captured once, at the first step: a journey that never ends (its
    // packet merged into another by reassembly) still has them.
    journey.capture_flow = step.parsed.flow;
    journey.end_flow = step.parsed.flow;
    let captured = unsafe { packet::capture(step.skb, step.header, step.parsed, &mut journey.packet, step.slot) };
    journey.captured_len = captured.len;
    journey.l3_offset = captured.l3_offset;
    journey.l4_offset = captured.l4_offset;
    journey.payload_offset = captured.payload_offset;
    journey.payload_in_fragments = u8::from(captured.fragments_follow);
    unsafe { append(journey, step, now) };
}

#[inline(always)]
unsafe fn append(journey: &mut JourneyRecord, step: &Step, now: u64) {
    journey.last_step_ns = now;
    let index = journey.step_count as usize;
    if index >= MAX_STEPS {
        journey.cut = 1;
        return;
    }
    // The tuples go straight into the journey: an entry's tuples do not change once it
    // has them, so the latest are the journey's.
    let conntrack =
        unsafe { packet::read_conntrack(step.skb, step.slot, &mut journey.ct_original, &mut journey.ct_reply) };
    let stamp = output::loss_stamp(&step.parsed.flow);
    // Field by field: a whole step built first would not fit the programs' stack.
    let entry: &mut JourneyStep = &mut journey.steps[index];
    entry.timestamp_ns = now;
    entry.kind = step.kind;
    entry.point = step.point;
    entry.pf = step.pf;
    entry.ct_state = conntrack.state;
    entry.ifindex = step.ifindex;
    entry.other_ifindex = step.other_ifindex;
    entry.packet_len = step.packet_len;
    entry.ct_info = conntrack.info;
    entry._pad = [0; 3];
    entry.ct_status = conntrack.status;
    entry.loss_stamp_src = stamp.src;
    entry.loss_stamp_dst = stamp.dst;
    entry.flow = step.parsed.flow;
    journey.step_count += 1;
}

/// How a journey ends.
pub struct End {
    pub kind: u8,
    pub ifindex: u32,
    pub drop_reason: u32,
    pub drop_location: u64,
}

/// Ends the packet's journey: records `step` (when the end is a step of its own) and
/// sends the journey. With no journey in the table, one of `step` alone is sent; with
/// neither, nothing (`false`).
///
/// # Safety
/// `step.skb` must be a BTF-typed `sk_buff` pointer.
// A call of its own: its stack is not added to its callers' (the programs
// share 512 bytes).
#[inline(never)]
// The key is lent, as in `step` (by value: 10 more instructions here).
#[allow(clippy::needless_borrows_for_generic_args)]
pub unsafe fn finish(step: &Step, is_step: bool, end: &End) -> bool {
    let key = step.skb as u64;
    let now = unsafe { bpf_ktime_get_ns() };
    let journey = match JOURNEYS.get_ptr_mut(&key) {
        // SAFETY: a live entry of the table (see `step`).
        Some(journey) => unsafe { &mut *journey },
        None if is_step => match NEW_JOURNEYS.get_ptr_mut(step.slot) {
            Some(fresh) => {
                // SAFETY: this program's per-CPU slot.
                let fresh = unsafe { &mut *fresh };
                unsafe { begin(fresh, step, now) };
                unsafe { send(fresh, step, end) };
                return true;
            }
            None => return false,
        },
        None => return false,
    };
    if is_step {
        unsafe { append(journey, step, now) };
    }
    unsafe { send(journey, step, end) };
    let _ = JOURNEYS.remove(&key);
    true
}

/// The ICMP error the kernel answered the packet with: kept for the journey's end, which
/// follows (the REJECT that sent it drops the packet).
#[inline(always)]
// The key is lent, as in `step` (by value, `icmp_answered`, which inlines this, comes out
// with its stores reordered).
#[allow(clippy::needless_borrows_for_generic_args)]
pub fn note_icmp(skb: *const u8, icmp_type: u8, icmp_code: u8) {
    if let Some(journey) = JOURNEYS.get_ptr_mut(&(skb as u64)) {
        // SAFETY: a live entry of the table (see `step`).
        let journey = unsafe { &mut *journey };
        journey.icmp_sent = 1;
        journey.icmp_type = icmp_type;
        journey.icmp_code = icmp_code;
    }
}

/// Whether the table holds a journey of this skb.
#[inline(always)]
pub fn in_flight(skb: *const u8) -> bool {
    JOURNEYS.get_ptr_mut(skb as u64).is_some()
}

#[inline(always)]
unsafe fn send(journey: &mut JourneyRecord, step: &Step, end: &End) {
    journey.end = end.kind;
    journey.end_ifindex = end.ifindex;
    journey.drop_reason = end.drop_reason;
    journey.drop_location = end.drop_location;
    journey.end_flow = step.parsed.flow;
    // The stamps of the end's endpoints; each step carries those of its own.
    let stamp = output::loss_stamp(&step.parsed.flow);
    journey.header.loss_stamp_src = stamp.src;
    journey.header.loss_stamp_dst = stamp.dst;
    // Packed: most journeys use a few of their steps and bytes, and the ring buffer holds
    // that many more of them.
    let Some(out) = OUTGOING.get_ptr_mut(step.slot) else { return };
    let out = out as *mut u8;
    let mut steps = journey.step_count as usize;
    if steps > MAX_STEPS {
        steps = MAX_STEPS;
    }
    let mut captured = journey.captured_len as usize;
    if captured > CAPTURE_MAX {
        captured = CAPTURE_MAX;
    }
    let head = JourneyRecord::STEPS_OFFSET + steps * core::mem::size_of::<JourneyStep>();
    let source = journey as *const JourneyRecord as *const u8;
    // SAFETY: `out` is this program's per-CPU slot of `size_of::<JourneyRecord>()` bytes;
    // `head` is at most PACKET_OFFSET and `captured` at most CAPTURE_MAX, so both copies
    // stay inside it and inside the journey they copy from.
    let copied = unsafe {
        generated::bpf_probe_read_kernel(out as *mut c_void, head as u32, source as *const c_void) == 0
            && generated::bpf_probe_read_kernel(
                out.wrapping_add(head) as *mut c_void,
                captured as u32,
                source.wrapping_add(JourneyRecord::PACKET_OFFSET) as *const c_void,
            ) == 0
    };
    if !copied {
        return;
    }
    // SAFETY: the first `head + captured` bytes of the slot were just written.
    let bytes = unsafe { core::slice::from_raw_parts(out as *const u8, head + captured) };
    if EVENTS.output::<[u8]>(bytes, output::wakeup_flags()).is_err() {
        output::count_lost_journey(step.slot, journey);
    }
}
