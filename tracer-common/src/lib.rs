//! The `#[repr(C)]` types the kernel programs and userspace share: the load-time
//! configuration and the records sent through the ring buffer.
#![no_std]

/// Bytes of each traced frame copied in the kernel, from the Ethernet header on.
/// Enough for Ethernet + IPv6 + UDP + a DNS message of classic size.
pub const CAPTURE_MAX: usize = 512;

/// Where a frame was seen on its way through a Linux bridge. Userspace names it in lines and
/// captures as `bridge-in`, `bridge-out`, `to-host`, `from-host`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(strum::IntoStaticStr, strum::EnumString, strum::VariantNames),
    strum(serialize_all = "kebab-case")
)]
pub enum Stage {
    /// Received on a bridge port (before the bridge decides where it goes).
    BridgeIn = 1,
    /// Queued for transmit on a bridge port (forwarded or flooded by the bridge).
    BridgeOut = 2,
    /// Passed up from the bridge to the host's own stack (received on the bridge device).
    ToHost = 3,
    /// Sent by the host through the bridge device.
    FromHost = 4,
}

/// Serialised by its one name (strum's), as every output writes it.
#[cfg(feature = "user")]
impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str((*self).into())
    }
}

#[cfg(feature = "user")]
impl<'de> serde::Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Stage, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Stage;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str("a stage name")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Stage, E> {
                name.parse().map_err(|_| E::unknown_variant(name, <Stage as strum::VariantNames>::VARIANTS))
            }
        }
        deserializer.deserialize_str(Name)
    }
}

impl Stage {
    pub fn from_u8(raw: u8) -> Option<Stage> {
        match raw {
            1 => Some(Stage::BridgeIn),
            2 => Some(Stage::BridgeOut),
            3 => Some(Stage::ToHost),
            4 => Some(Stage::FromHost),
            _ => None,
        }
    }
}

/// The first field of every ring buffer record says which record it is.
pub mod record_kind {
    /// A traced packet's way through the node, sent once it ends: `JourneyRecord`.
    pub const JOURNEY: u32 = 1;
    /// A traced packet dropped with no journey to end (findings-only watches, or a
    /// journey the kernel's table no longer held): `DropRecord`.
    pub const DROP: u32 = 2;
    /// Findings-only watches: a DNS reply leaving a bridge without a conntrack entry:
    /// `StrayReplyRecord`.
    pub const STRAY_REPLY: u32 = 3;
}

/// What every ring buffer record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// `record_kind::*`.
    pub kind: u32,
    pub netns_inode: u32,
    /// CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub timestamp_ns: u64,
    /// Kernel address of the sk_buff: the same frame seen at several points of one
    /// pass shares it (an address may be reused once the frame is freed).
    pub skb_id: u64,
    /// The loss buckets of the flow's source and destination endpoints, as read just before
    /// this record was reserved (low 32 bits). A bucket that has grown since a record's stamp
    /// means a record involving that endpoint may have been lost after it.
    pub loss_stamp_src: u32,
    pub loss_stamp_dst: u32,
}

/// Records the ring buffer could not take are counted per endpoint (address and port) of
/// their flow, in this many buckets (a power of two), so that userspace can tell whether a
/// record of *this* exchange may have been lost rather than whether anything was lost at all.
pub const LOSS_BUCKETS: u32 = 8192;
const LOSS_BUCKET_BITS: u32 = LOSS_BUCKETS.trailing_zeros();

/// The loss bucket of one endpoint of a flow. Kernel and userspace compute it from the same
/// bytes (address as on the wire, port in network byte order), so they agree on every host.
#[inline(always)]
pub fn loss_bucket(addr: &[u8; 16], port_be: u16) -> u32 {
    let word = |at: usize| {
        (addr[at] as u32) | ((addr[at + 1] as u32) << 8) | ((addr[at + 2] as u32) << 16) | ((addr[at + 3] as u32) << 24)
    };
    let folded =
        word(0) ^ word(4).rotate_left(7) ^ word(8).rotate_left(14) ^ word(12).rotate_left(21) ^ (port_be as u32);
    // Fibonacci hashing: the high bits of the product mix every input bit.
    folded.wrapping_mul(0x9e37_79b1) >> (32 - LOSS_BUCKET_BITS)
}

/// `ConntrackRecord::state` values.
pub mod conntrack_state {
    /// `skb->_nfct` was empty: conntrack has not seen this frame on this path.
    pub const NONE: u8 = 0;
    /// A conntrack entry is attached; tuples and status are filled in.
    pub const ATTACHED: u8 = 1;
    /// Marked untracked (e.g. a `-j NOTRACK` / `notrack` rule).
    pub const UNTRACKED: u8 = 2;
}

/// Slots of the per-CPU `LOST` counter array, one per program. Netfilter programs nest (a
/// REJECT's ICMP answer passes the output hooks while the rejected packet is still in its
/// hook), so the counters are incremented atomically.
pub mod lost_slot {
    pub const BRIDGE_RECEIVE: u32 = 0;
    pub const BRIDGE_TRANSMIT: u32 = 1;
    pub const NETFILTER_ENTRY: u32 = 2;
    pub const NETFILTER_DELIVERY: u32 = 3;
    pub const KFREE_SKB: u32 = 4;
    pub const ICMP_SEND: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// One direction of a conntrack entry, as the kernel stores it. Ports are in
/// network byte order, addresses are 4 (IPv4, rest zero) or 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtTuple {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protonum: u8,
    pub _pad: [u8; 3],
}

/// Addresses and ports of a packet as it was at the point of the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port_be: u16,
    pub dst_port_be: u16,
    /// 4 or 6.
    pub ip_version: u8,
    /// IPPROTO_UDP (17) or IPPROTO_TCP (6).
    pub l4_proto: u8,
    /// `fragment::*`: whether this packet is a whole datagram or one of its IP fragments.
    pub fragment: u8,
    pub _pad: u8,
}

/// `Flow::fragment` values. A datagram larger than a link's MTU travels as IP fragments,
/// of which only the first carries the transport header; a later one is traced when its
/// first was (matched by addresses, protocol and IP id), with the first one's ports.
pub mod fragment {
    pub const WHOLE: u8 = 0;
    /// Offset 0 with more fragments to come: holds the transport header.
    pub const FIRST: u8 = 1;
    /// A fragment at a non-zero offset: payload only.
    pub const LATER: u8 = 2;
}

/// The conntrack entry attached to an skb (`skb->_nfct`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackRecord {
    /// `conntrack_state::*`.
    pub state: u8,
    /// The `enum ip_conntrack_info` bits of `skb->_nfct`.
    pub info: u8,
    pub _pad: [u8; 2],
    /// `nf_conn->status` (IPS_* bits).
    pub status: u32,
    pub original: CtTuple,
    pub reply: CtTuple,
}

/// `JourneyStep::kind` values.
pub mod step_kind {
    /// A frame at a bridge stage (`point` is a `Stage`).
    pub const STAGE: u8 = 1;
    /// A packet entering a netfilter hook (`point` is the hook number). It left the hook
    /// when another step follows it.
    pub const HOOK: u8 = 2;
}

/// `JourneyRecord::end` values: how a traced packet's way through the node ended.
pub mod journey_end {
    /// Queued on a bridge port: it leaves the bridge.
    pub const LEFT_BRIDGE: u8 = 1;
    /// Queued on a device that is no bridge or bridge port: it leaves the node's bridges.
    pub const LEFT_DEVICE: u8 = 2;
    /// Through the input hook: it is delivered to a socket on the node.
    pub const DELIVERED: u8 = 3;
    /// Freed as dropped (`drop_reason`, `drop_location`).
    pub const DROPPED: u8 = 4;
}

/// The drop reason of a kernel whose `kfree_skb` tracepoint has none (before 5.17), and
/// of `reason_*` values a kernel does not have: never an `enum skb_drop_reason` value.
pub const NO_DROP_REASON: u32 = u32::MAX;

/// Steps a journey records; a longer one keeps its first steps and says it was cut.
pub const MAX_STEPS: usize = 12;

/// One point of a traced packet's way: a bridge stage or a netfilter hook it entered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JourneyStep {
    /// CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// `step_kind::*`.
    pub kind: u8,
    /// `Stage` as u8, or the hook number (NF_INET_PRE_ROUTING 0 ... POST_ROUTING 4).
    pub point: u8,
    /// A hook's NFPROTO_IPV4 (2) or NFPROTO_IPV6 (10).
    pub pf: u8,
    /// `conntrack_state::*` of the packet here.
    pub ct_state: u8,
    /// A stage's device, or a hook's input device (0 when none).
    pub ifindex: u32,
    /// A stage's `skb->skb_iif` (the device it last arrived on), or a hook's output device.
    pub other_ifindex: u32,
    /// A stage's `skb->len`.
    pub packet_len: u32,
    /// The `enum ip_conntrack_info` bits and the entry's IPS_* status here.
    pub ct_info: u8,
    pub _pad: [u8; 3],
    pub ct_status: u32,
    /// The loss buckets of this step's endpoints as they were here (see `RecordHeader`).
    pub loss_stamp_src: u32,
    pub loss_stamp_dst: u32,
    /// Addresses and ports here (NAT changes them on the way).
    pub flow: Flow,
}

/// A traced packet's way through the node: the bridge stages and netfilter hooks it
/// passed, in order, and how it ended. The kernel builds it in a table keyed by the skb
/// while the packet travels and sends it once, when the journey ends, packed: the part
/// before `steps`, then the `step_count` steps recorded, then the `captured_len` bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct JourneyRecord {
    /// Kind `record_kind::JOURNEY`; the timestamp is the first step's, the namespace the
    /// watched one.
    pub header: RecordHeader,
    /// `journey_end::*`.
    pub end: u8,
    pub step_count: u8,
    /// More steps happened than `MAX_STEPS`: the ones after are missing.
    pub cut: u8,
    /// The kernel answered the packet with ICMP (`icmp_type`, `icmp_code`), as a REJECT does.
    pub icmp_sent: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The kernel's own: the payload after the captured linear data is in page fragments,
    /// still to be copied (see the programs' `journey::copy_fragment_payload`).
    pub payload_in_fragments: u8,
    pub _pad: u8,
    /// The device it ended on (queued on, or dropped on).
    pub end_ifindex: u32,
    /// `enum skb_drop_reason` of a dropped packet; names come from the kernel's BTF.
    pub drop_reason: u32,
    pub drop_location: u64,
    /// When the last step was recorded (a journey that old at the next step belongs to an
    /// earlier packet of a reused skb address).
    pub last_step_ns: u64,
    /// The conntrack entry's tuples as last seen: set up with the entry, then fixed.
    pub ct_original: CtTuple,
    pub ct_reply: CtTuple,
    /// The addresses of the packet as its bytes were captured, at its first step.
    pub capture_flow: Flow,
    /// The addresses of the packet where its journey ended (where it was dropped, say).
    pub end_flow: Flow,
    /// Bytes of `packet` copied at the first step.
    pub captured_len: u16,
    /// Offsets into `packet` of the IP header, the L4 header and the L4 payload.
    /// `l3_offset` is 0 when the capture starts at the IP header.
    pub l3_offset: u16,
    pub l4_offset: u16,
    pub payload_offset: u16,
    pub steps: [JourneyStep; MAX_STEPS],
    pub packet: [u8; CAPTURE_MAX],
}

impl JourneyRecord {
    /// The part always sent, before the steps.
    pub const STEPS_OFFSET: usize = core::mem::offset_of!(JourneyRecord, steps);
    pub const PACKET_OFFSET: usize = core::mem::offset_of!(JourneyRecord, packet);
}

/// A traced packet freed as dropped (`skb:kfree_skb` with a drop reason) when no journey
/// of it was followed, with the netfilter hook it was last in on this CPU, when known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DropRecord {
    /// Kind `record_kind::DROP`.
    pub header: RecordHeader,
    pub ifindex: u32,
    /// `enum skb_drop_reason`; its names are read from the kernel's BTF.
    pub reason: u32,
    /// Kernel text address that dropped it.
    pub location: u64,
    pub flow: Flow,
    /// The hook the packet entered last (`hook_known` 0: none seen), its NFPROTO and devices.
    pub hook_known: u8,
    pub hook: u8,
    pub pf: u8,
    pub icmp_sent: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: [u8; 2],
    pub hook_in_ifindex: u32,
    pub hook_out_ifindex: u32,
    /// Findings-only watches: what of its key the kernel has counted (`total` 0: not counted).
    pub occurrences: Occurrences,
}

/// Findings-only watches count every occurrence of what can become a finding in the kernel and
/// send a record of one key at most once a second (`OCCURRENCE_RESEND_NS`): on a broken node
/// each of tens of thousands of packets a second would otherwise be a record, a line and a
/// JSON object. What one key counts (addresses as on the wire, the port in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OccurrenceKey {
    /// For a drop, its source and destination; for a stray reply, the backend and the client.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// A stray reply's query's destination before DNAT (`asked_known` 0: not seen): replies
    /// of one backend to one client for two Services are two findings.
    pub asked_addr: [u8; 16],
    /// For a drop, its destination port; for a stray reply, the backend's (its source port).
    pub port_be: u16,
    pub asked_port_be: u16,
    pub l4_proto: u8,
    /// `record_kind::DROP` or `record_kind::STRAY_REPLY`.
    pub kind: u8,
    /// A drop's hook, NFPROTO and ICMP answer (type and code, `icmp_sent` 0: none).
    pub hook: u8,
    pub pf: u8,
    pub icmp_sent: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub asked_known: u8,
    /// The drop's device, or the bridge port the reply leaves by.
    pub ifindex: u32,
    /// A drop's `skb_drop_reason` (0 for a stray reply).
    pub reason: u32,
    pub _pad: u32,
}

impl OccurrenceKey {
    /// A drop at a netfilter hook: the same packet to the same place, stopped the same way.
    /// Built by the kernel and again by the reader from the drop's record, alike.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn of_drop(
        flow: &Flow,
        hook: u8,
        pf: u8,
        icmp_sent: u8,
        icmp_type: u8,
        icmp_code: u8,
        ifindex: u32,
        reason: u32,
    ) -> OccurrenceKey {
        OccurrenceKey {
            src_addr: flow.src_addr,
            dst_addr: flow.dst_addr,
            asked_addr: [0; 16],
            port_be: flow.dst_port_be,
            asked_port_be: 0,
            l4_proto: flow.l4_proto,
            kind: record_kind::DROP as u8,
            hook,
            pf,
            icmp_sent,
            icmp_type,
            icmp_code,
            asked_known: 0,
            ifindex,
            reason,
            _pad: 0,
        }
    }

    /// A DNS reply leaving bridge port `ifindex` without conntrack: one backend's replies
    /// to one client for one asked destination (`asked_known` 0: not seen), whatever ports
    /// the client's queries came from.
    #[inline(always)]
    pub fn of_stray_reply(
        flow: &Flow,
        ifindex: u32,
        asked_known: u8,
        asked_addr: [u8; 16],
        asked_port_be: u16,
    ) -> OccurrenceKey {
        OccurrenceKey {
            src_addr: flow.src_addr,
            dst_addr: flow.dst_addr,
            asked_addr,
            port_be: flow.src_port_be,
            asked_port_be,
            l4_proto: flow.l4_proto,
            kind: record_kind::STRAY_REPLY as u8,
            hook: 0,
            pf: 0,
            icmp_sent: 0,
            icmp_type: 0,
            icmp_code: 0,
            asked_known,
            ifindex,
            reason: 0,
            _pad: 0,
        }
    }
}

/// The kernel's count of one key, as kept in its map and sent with each record of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occurrences {
    /// When the kernel began counting the key (CLOCK_MONOTONIC ns): a key whose entry was
    /// evicted and made again counts from 1 again, under a new `since_ns`.
    pub since_ns: u64,
    /// Occurrences counted since then, this record's included.
    pub total: u64,
}

/// The value of the kernel's map of counted keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OccurrenceCount {
    pub counted: Occurrences,
    /// When a record of the key was last sent.
    pub last_sent_ns: u64,
}

/// Between two records of one counted key.
pub const OCCURRENCE_RESEND_NS: u64 = 1_000_000_000;

/// Findings-only watches: a DNS reply queued on a bridge port with no conntrack entry
/// attached, and the destination its query was sent to when the kernel saw that query
/// rewritten by DNAT (`asked_known`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StrayReplyRecord {
    /// Kind `record_kind::STRAY_REPLY`.
    pub header: RecordHeader,
    /// The bridge port it leaves by, and the device it arrived on (`skb_iif`).
    pub ifindex: u32,
    pub ingress_ifindex: u32,
    pub flow: Flow,
    pub asked_addr: [u8; 16],
    pub asked_port_be: u16,
    pub asked_known: u8,
    pub _pad: u8,
    pub packet_len: u32,
    pub captured_len: u16,
    pub l3_offset: u16,
    pub l4_offset: u16,
    pub payload_offset: u16,
    /// What of its key the kernel has counted.
    pub occurrences: Occurrences,
    pub packet: [u8; CAPTURE_MAX],
}

impl StrayReplyRecord {
    pub const PACKET_OFFSET: usize = core::mem::offset_of!(StrayReplyRecord, packet);
}

/// Byte offsets into kernel structs, read from the running kernel's BTF at start
/// (never compiled in: they differ between kernel builds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_len: u32,
    pub skb_tail: u32,
    pub skb_mac_header: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    pub skb_iif: u32,
    pub skb_nfct: u32,
    pub dev_ifindex: u32,
    /// Byte offset of the 32 bits that hold `net_device.priv_flags`.
    pub dev_priv_flags: u32,
    /// `net_device.nd_net.net`: a `struct net *`.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    pub ct_status: u32,
    /// `nf_conn.tuplehash[0].tuple`; the reply direction follows at `+ ct_tuplehash_size`.
    pub ct_tuple_original: u32,
    pub ct_tuplehash_size: u32,
    /// The bytes of `nf_conn` the programs read at once (both tuples and the status), at
    /// most 128; a zero length when conntrack is unknown.
    pub ct_span_start: u32,
    pub ct_span_len: u32,
    pub tuple_src_addr: u32,
    pub tuple_src_port: u32,
    pub tuple_dst_addr: u32,
    pub tuple_dst_port: u32,
    pub tuple_protonum: u32,
    /// `IFF_BRIDGE_PORT` and `IFF_EBRIDGE` from `enum netdev_priv_flags`.
    pub flag_bridge_port: u32,
    pub flag_bridge: u32,
    /// `nf_hook_state` fields.
    pub hook_state_hook: u32,
    pub hook_state_pf: u32,
    pub hook_state_in: u32,
    pub hook_state_out: u32,
    pub hook_state_net: u32,
    /// `enum skb_drop_reason` values that are not drops.
    pub reason_not_dropped_yet: u32,
    pub reason_consumed: u32,
    /// The reason netfilter's drops (NF_DROP, a REJECT) have: a findings-only watch names a
    /// hook for these only.
    pub reason_netfilter_drop: u32,
    /// Keeps the 64-bit fields aligned without implicit padding.
    pub _pad_reasons: u32,
    /// `sk_buff.end` (an offset from `head` on 64-bit kernels, where `skb_shared_info`
    /// starts) and `sk_buff.data_len` (the bytes outside the linear data).
    pub skb_end: u32,
    pub skb_data_len: u32,
    /// `skb_shared_info.nr_frags` (one byte) and `.frags`.
    pub shinfo_nr_frags: u32,
    pub shinfo_frags: u32,
    /// One `skb_frag_t`: its size and where its page (or netmem) pointer, length and
    /// offset are.
    pub frag_size: u32,
    pub frag_page: u32,
    pub frag_len: u32,
    pub frag_offset: u32,
    /// `sizeof(struct page)` and log2 of the page size: a page's place in the direct map.
    pub page_struct_size: u32,
    pub page_shift: u32,
    /// Kernel addresses of the variables `page_offset_base` (where the direct map of all
    /// memory starts) and `vmemmap_base` (where the `struct page` array starts). 0 when
    /// not known: then the programs copy linear data only.
    pub page_offset_base_addr: u64,
    pub vmemmap_base_addr: u64,
}

/// Load-time settings, written into the programs' read-only data by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Port to trace (either side), network byte order; 0 traces every port.
    pub port_be: u16,
    pub _pad: u16,
    /// Only frames on devices of this network namespace; 0 means every namespace.
    pub netns_inode: u32,
    /// Bytes of each frame to copy, at most `CAPTURE_MAX`.
    pub snaplen: u32,
    /// Records are queued without waking the reader until this many bytes wait in the ring
    /// buffer: a wakeup per record costs more than the record itself. The reader also
    /// drains on a short timer, so nothing waits long.
    pub wakeup_bytes: u32,
    /// Findings-only watches (`--findings-only`): the kernel sends only what can become a
    /// finding (drops, DNS replies leaving a bridge without conntrack), no journeys.
    pub findings_only: u32,
    /// `--debug`: the programs report failures that should never happen (see the programs'
    /// `diagnostics`); 0 leaves the reporting out of the programs the verifier accepts.
    pub debug: u32,
    /// Programs that return at once (`--empty-programs`): what the attach points alone
    /// cost, the floor `cargo xtask bench` measures the programs' own cost against. 0 in
    /// every real watch, where the verifier drops the test as dead code.
    pub empty_programs: u32,
    /// Keeps `layout`, which holds 64-bit addresses, aligned without implicit padding.
    pub _pad2: u32,
    pub layout: KernelLayout,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid.
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::JourneyRecord {}
    unsafe impl aya::Pod for super::JourneyStep {}
    unsafe impl aya::Pod for super::DropRecord {}
    unsafe impl aya::Pod for super::StrayReplyRecord {}
    unsafe impl aya::Pod for super::OccurrenceKey {}
    unsafe impl aya::Pod for super::OccurrenceCount {}
}

// The kernel aligns ring buffer records to 8 bytes and userspace reads them by size:
// keep every record a multiple of 8 with no implicit padding.
const _: () = assert!(core::mem::size_of::<RecordHeader>() == 32);
// The configuration is written into the programs' read-only data byte for byte: no
// implicit padding, whose bytes would be undefined.
const _: () = assert!(core::mem::size_of::<KernelLayout>() == 44 * 4 + 2 * 8);
const _: () = assert!(core::mem::offset_of!(WatchConfig, layout) == 32);
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 32 + core::mem::size_of::<KernelLayout>());
const _: () = assert!(core::mem::size_of::<JourneyStep>() == 80);
const _: () = assert!(JourneyRecord::STEPS_OFFSET == 232);
const _: () = assert!(JourneyRecord::PACKET_OFFSET == JourneyRecord::STEPS_OFFSET + MAX_STEPS * 80);
const _: () = assert!(core::mem::size_of::<JourneyRecord>() == JourneyRecord::PACKET_OFFSET + CAPTURE_MAX);
const _: () = assert!(core::mem::size_of::<DropRecord>() == 120);
const _: () = assert!(StrayReplyRecord::PACKET_OFFSET == 128);
const _: () = assert!(core::mem::size_of::<StrayReplyRecord>() == 128 + CAPTURE_MAX);
// Map keys are compared byte for byte: no implicit padding.
const _: () = assert!(core::mem::size_of::<OccurrenceKey>() == 72);
const _: () = assert!(core::mem::size_of::<OccurrenceCount>() == 24);
