//! `tracer watch --findings-only`: the kernel sends only what can become a finding, so a
//! watch can stay on a busy node. No journeys are built. What is kept instead:
//!
//! - per CPU, the netfilter hook a traced packet entered last: a hook that drops a packet
//!   frees it on the same CPU before anything else runs there, so the drop can name it;
//! - per DNS query the kernel saw DNAT rewrite, the destination the client asked, keyed by
//!   client and backend: a reply from that backend that leaves a bridge without conntrack
//!   (which would have rewritten its source back) is sent with it;
//! - per key of what can become a finding (`OccurrenceKey`), how often it happened: a key's
//!   record goes out at most once a second, carrying the count, so a broken node's storm of
//!   identical drops or stray replies costs a map update each instead of a record each.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use tracer_common::{
    record_kind, DropRecord, Flow, OccurrenceCount, OccurrenceKey, Occurrences, StrayReplyRecord, NO_DROP_REASON,
    OCCURRENCE_RESEND_NS,
};

use crate::{
    config::config,
    output,
    packet::{self, NetworkHeader, ParsedFlow},
    skb,
};

/// A hook a packet entered on this CPU, and the ICMP answer it got there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastHook {
    skb: u64,
    in_ifindex: u32,
    out_ifindex: u32,
    hook: u8,
    pf: u8,
    icmp_sent: u8,
    icmp_type: u8,
    icmp_code: u8,
    _pad: [u8; 3],
}

/// Notes of the hooks packets entered last on a CPU, the newest at `next - 1`. More than one:
/// a REJECT sends its ICMP error through the output hooks (noted too) before the hook drops
/// the packet it answers, and the drop must still find that packet's note.
#[repr(C)]
pub struct LastHooks {
    next: u32,
    _pad: u32,
    notes: [LastHook; LAST_HOOKS],
}

/// Notes kept per CPU: the rejected packet's, and those of the error it is answered with.
const LAST_HOOKS: usize = 8;

#[map]
static LAST_HOOK: PerCpuArray<LastHooks> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's newest note of `skb`, where one is kept.
#[inline(always)]
fn note_of(hooks: &mut LastHooks, skb: *const u8) -> Option<&mut LastHook> {
    let newest = hooks.next as usize;
    let mut found = None;
    // Oldest first, so the newest match is the one kept.
    for age in (0..LAST_HOOKS).rev() {
        let index = newest.wrapping_sub(age + 1) % LAST_HOOKS;
        if hooks.notes[index].skb == skb as u64 {
            found = Some(index);
        }
    }
    found.map(|index| &mut hooks.notes[index % LAST_HOOKS])
}

/// Whether hooks note every packet, without reading it (`note_hook`): where the kernel names
/// netfilter's drops, so that a note is used only for such a drop. Without drop reasons a note
/// of another packet whose skb address was reused could pass for the dropped one's; there only
/// the traced port's packets are noted, as each has to be read anyway.
#[inline(always)]
pub fn notes_every_packet() -> bool {
    config!(layout.reason_netfilter_drop) != NO_DROP_REASON
}

/// A DNATed query's client and backend (addresses as on the wire, ports in network byte
/// order).
#[repr(C)]
pub struct QueryKey {
    client_addr: [u8; 16],
    backend_addr: [u8; 16],
    client_port_be: u16,
    backend_port_be: u16,
    l4_proto: u8,
    _pad: [u8; 3],
}

impl QueryKey {
    /// The key of a query's flow, or of its reply's (which goes the other way).
    #[inline(always)]
    fn of(flow: &Flow, reply: bool) -> QueryKey {
        let (client, backend) = if reply {
            ((flow.dst_addr, flow.dst_port_be), (flow.src_addr, flow.src_port_be))
        } else {
            ((flow.src_addr, flow.src_port_be), (flow.dst_addr, flow.dst_port_be))
        };
        QueryKey {
            client_addr: client.0,
            backend_addr: backend.0,
            client_port_be: client.1,
            backend_port_be: backend.1,
            l4_proto: flow.l4_proto,
            _pad: [0; 3],
        }
    }
}

/// What the client asked: the destination before DNAT.
#[repr(C)]
pub struct AskedDestination {
    addr: [u8; 16],
    port_be: u16,
    _pad: [u8; 6],
    timestamp_ns: u64,
}

#[map]
static ASKED: LruHashMap<QueryKey, AskedDestination> = LruHashMap::with_max_entries(16384, 0);

/// Counted keys; the reader looks up the ones it has had records of, for the occurrences
/// since their last record. An evicted key counts afresh under a new `since_ns`.
#[map]
static OCCURRENCES: LruHashMap<OccurrenceKey, OccurrenceCount> = LruHashMap::with_max_entries(16384, 0);

/// Counts one occurrence of `key`; `Some` with the key's count when a record of it is to go
/// out: the first of the key, or the first a second after the last one sent.
#[inline(always)]
fn count_occurrence(key: &OccurrenceKey) -> Option<Occurrences> {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = OCCURRENCES.get_ptr_mut(key) {
        // SAFETY: a live, aligned map value for the whole program run; other CPUs update it
        // too, so the count is added atomically and the rest read as it is.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::addr_of_mut!((*entry).counted.total), 1);
            let last_sent = core::ptr::read_volatile(core::ptr::addr_of!((*entry).last_sent_ns));
            if now.saturating_sub(last_sent) < OCCURRENCE_RESEND_NS {
                return None;
            }
            (*entry).last_sent_ns = now;
            return Some(Occurrences {
                since_ns: (*entry).counted.since_ns,
                total: core::ptr::read_volatile(core::ptr::addr_of!((*entry).counted.total)),
            });
        }
    }
    let counted = Occurrences { since_ns: now, total: 1 };
    let fresh = OccurrenceCount { counted, last_sent_ns: now };
    if OCCURRENCES.insert(key, fresh, BPF_NOEXIST as u64).is_ok() {
        return Some(counted);
    }
    // Another CPU made the entry meanwhile: its record is going out; this one is counted.
    if let Some(entry) = OCCURRENCES.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::addr_of_mut!((*entry).counted.total), 1)
        };
        return None;
    }
    // Evicted at once: sent uncounted rather than lost.
    Some(Occurrences::default())
}

/// A record of `key` that was due could not be queued (the ring buffer was full; it is
/// counted lost): the next occurrence tries again instead of waiting out the resend gap, so a
/// key is never left without a record.
#[inline(always)]
fn not_sent(key: &OccurrenceKey) {
    if let Some(entry) = OCCURRENCES.get_ptr_mut(key) {
        // SAFETY: a live map value; a racing write of another CPU's send is as good.
        unsafe { (*entry).last_sent_ns = 0 };
    }
}

/// The key of a drop at the hook `last`.
#[inline(always)]
fn drop_key(flow: &Flow, last: &LastHook, ifindex: u32, reason: u32) -> OccurrenceKey {
    OccurrenceKey::of_drop(flow, last.hook, last.pf, last.icmp_sent, last.icmp_type, last.icmp_code, ifindex, reason)
}

/// Counts a drop at the hook `last`; true, with the key's count in `sent`, when its record is
/// to go out.
// Calls of their own: the key's frame is not added to the drop program's, which also ends
// journeys (the programs share 512 bytes of stack).
#[inline(never)]
fn count_drop(flow: &Flow, last: &LastHook, ifindex: u32, reason: u32, sent: &mut Occurrences) -> bool {
    match count_occurrence(&drop_key(flow, last, ifindex, reason)) {
        Some(counted) => {
            *sent = counted;
            true
        }
        None => false,
    }
}

#[inline(never)]
fn drop_not_sent(flow: &Flow, last: &LastHook, ifindex: u32, reason: u32) {
    not_sent(&drop_key(flow, last, ifindex, reason));
}

/// IPS_DST_NAT: conntrack rewrote the destination.
const IPS_DST_NAT: u32 = 1 << 5;
/// Bytes of the UDP header before a DNS message.
const UDP_HEADER: u32 = 8;

#[inline(always)]
pub fn note_hook(skb: *const u8, hook: u8, pf: u8, in_ifindex: u32, out_ifindex: u32) {
    if let Some(hooks) = LAST_HOOK.get_ptr_mut(0) {
        // SAFETY: this CPU's notes; a hook is not interrupted by another hook's program on
        // the same CPU, and what runs inside it (a REJECT's ICMP error) notes after it.
        let hooks = unsafe { &mut *hooks };
        let index = hooks.next as usize % LAST_HOOKS;
        hooks.next = hooks.next.wrapping_add(1);
        let note = &mut hooks.notes[index];
        note.skb = skb as u64;
        note.hook = hook;
        note.pf = pf;
        note.in_ifindex = in_ifindex;
        note.out_ifindex = out_ifindex;
        note.icmp_sent = 0;
    }
}

#[inline(always)]
pub fn note_icmp(skb: *const u8, icmp_type: u8, icmp_code: u8) {
    if let Some(hooks) = LAST_HOOK.get_ptr_mut(0) {
        // SAFETY: as in `note_hook`.
        if let Some(note) = note_of(unsafe { &mut *hooks }, skb) {
            note.icmp_sent = 1;
            note.icmp_type = icmp_type;
            note.icmp_code = icmp_code;
        }
    }
}

/// Sends a drop of a traced packet with the hook it entered last on this CPU, if that
/// hook saw this very skb.
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
pub unsafe fn send_drop(
    skb: *const u8,
    slot: u32,
    netns_inode: u32,
    ifindex: u32,
    reason: u32,
    location: u64,
    parsed: &ParsedFlow,
) {
    // Read once: the key and the record must say the same (a hook of a packet in a softirq
    // could note itself in between). Where every packet is noted, a note names the hook of
    // netfilter's drops only.
    let netfilter_drop = !notes_every_packet() || reason == config!(layout.reason_netfilter_drop);
    let last = match LAST_HOOK.get_ptr_mut(0) {
        // SAFETY: this CPU's notes, as in `note_hook`.
        Some(hooks) if netfilter_drop => note_of(unsafe { &mut *hooks }, skb).map(|note| *note),
        _ => None,
    };
    // A drop at a netfilter hook is counted by its key; others (and all drops of a traced
    // watch, which sends journeys) go out each.
    let mut occurrences = Occurrences::default();
    let counting = if config!(findings_only) != 0 { last.as_ref() } else { None };
    if let Some(last) = counting {
        if !count_drop(&parsed.flow, last, ifindex, reason, &mut occurrences) {
            return;
        }
    }
    let stamp = output::loss_stamp(&parsed.flow);
    let Some(mut entry) = output::reserve::<DropRecord>(slot, &stamp) else {
        if let Some(last) = counting {
            drop_not_sent(&parsed.flow, last, ifindex, reason);
        }
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of size_of::<DropRecord>().
    unsafe {
        output::fill_header(core::ptr::addr_of_mut!((*record).header), record_kind::DROP, netns_inode, skb, &stamp);
        (*record).ifindex = ifindex;
        (*record).reason = reason;
        (*record).location = location;
        (*record).flow = parsed.flow;
        (*record).hook_known = 0;
        (*record).hook = 0;
        (*record).pf = 0;
        (*record).icmp_sent = 0;
        (*record).icmp_type = 0;
        (*record).icmp_code = 0;
        (*record)._pad = [0; 2];
        (*record).hook_in_ifindex = 0;
        (*record).hook_out_ifindex = 0;
        (*record).occurrences = occurrences;
        if let Some(last) = last {
            (*record).hook_known = 1;
            (*record).hook = last.hook;
            (*record).pf = last.pf;
            (*record).icmp_sent = last.icmp_sent;
            (*record).icmp_type = last.icmp_type;
            (*record).icmp_code = last.icmp_code;
            (*record).hook_in_ifindex = last.in_ifindex;
            (*record).hook_out_ifindex = last.out_ifindex;
        }
    }
    output::submit(entry);
}

/// The DNS header's QR bit of a UDP packet: `Some(false)` a query, `Some(true)` a reply.
#[inline(always)]
fn dns_qr(header: &NetworkHeader, parsed: &ParsedFlow) -> Option<bool> {
    if parsed.flow.l4_proto != 17 {
        return None;
    }
    let at = parsed.l3_len as u32 + UDP_HEADER;
    // A DNS header is 12 bytes; its third holds QR and the opcode.
    if header.available < at + 12 {
        return None;
    }
    let flags: [u8; 2] = skb::read(header.l3, at + 2)?;
    // Standard queries only (opcode 0).
    if flags[0] & 0x78 != 0 {
        return None;
    }
    Some(flags[0] & 0x80 != 0)
}

/// A traced packet queued on a bridge port.
pub struct AtPort<'a> {
    pub skb: *const u8,
    pub header: &'a NetworkHeader,
    pub parsed: &'a ParsedFlow,
    pub netns_inode: u32,
    pub ifindex: u32,
    /// The calling program (`lost_slot`).
    pub slot: u32,
}

/// A traced packet queued on a bridge port: remembers what a DNATed DNS query asked, and
/// sends a DNS reply that leaves without conntrack.
///
/// # Safety
/// `at.skb` must be a BTF-typed `sk_buff` pointer.
// A call of its own: its stack is not added to its callers' (the programs share 512 bytes).
#[inline(never)]
pub unsafe fn bridge_out(at: &AtPort) {
    let AtPort { skb, header, parsed, netns_inode, ifindex, slot } = *at;
    let Some(reply) = dns_qr(header, parsed) else { return };
    let flow = &parsed.flow;
    if !reply {
        let mut original = packet::zero_tuple();
        let mut reply = packet::zero_tuple();
        let conntrack = unsafe { packet::read_conntrack(skb, slot, &mut original, &mut reply) };
        if conntrack.status & IPS_DST_NAT == 0 {
            return;
        }
        let key = QueryKey::of(flow, false);
        let asked = AskedDestination {
            addr: original.dst_addr,
            port_be: original.dst_port_be,
            _pad: [0; 6],
            timestamp_ns: unsafe { bpf_ktime_get_ns() },
        };
        let _ = ASKED.insert(&key, &asked, 0);
        return;
    }
    let nfct: u64 = unsafe { skb::load(skb, config!(layout.skb_nfct)) };
    if nfct != 0 {
        return;
    }
    let (asked_known, asked_addr, asked_port_be) = match ASKED.get(QueryKey::of(flow, true)) {
        Some(asked) => (1, asked.addr, asked.port_be),
        None => (0, [0; 16], 0),
    };
    let counted = OccurrenceKey::of_stray_reply(flow, ifindex, asked_known, asked_addr, asked_port_be);
    let Some(occurrences) = count_occurrence(&counted) else { return };
    let stamp = output::loss_stamp(flow);
    let Some(mut entry) = output::reserve::<StrayReplyRecord>(slot, &stamp) else {
        not_sent(&counted);
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of size_of::<StrayReplyRecord>().
    unsafe {
        output::fill_header(
            core::ptr::addr_of_mut!((*record).header),
            record_kind::STRAY_REPLY,
            netns_inode,
            skb,
            &stamp,
        );
        (*record).ifindex = ifindex;
        (*record).ingress_ifindex = skb::load::<i32>(skb, config!(layout.skb_iif)) as u32;
        (*record).flow = *flow;
        (*record).packet_len = skb::load::<u32>(skb, config!(layout.skb_len));
        (*record).asked_addr = asked_addr;
        (*record).asked_port_be = asked_port_be;
        (*record).asked_known = asked_known;
        (*record)._pad = 0;
        (*record).occurrences = occurrences;
        let captured = packet::capture(skb, header, parsed, &mut *core::ptr::addr_of_mut!((*record).packet), slot);
        (*record).captured_len = captured.len;
        (*record).l3_offset = captured.l3_offset;
        (*record).l4_offset = captured.l4_offset;
        (*record).payload_offset = captured.payload_offset;
    }
    output::submit(entry);
}
