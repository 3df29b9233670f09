//! Reads shared by every hook family: a packet's addresses and ports from its IP
//! header, the conntrack entry attached to its skb, and the filters every record
//! must pass (port first, then network namespace) before anything is reserved.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use network_types::{
    eth::EtherType,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use tracer_common::{conntrack_state, fragment, lost_slot, CtTuple, Flow, CAPTURE_MAX};

use crate::{
    config::config,
    diagnostics::{self, Problem},
    skb,
};

const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
const IPPROTO_UDP: u8 = IpProto::Udp as u8;
/// The low bits of `skb->_nfct` hold the `enum ip_conntrack_info`.
const NFCT_INFO_MASK: u64 = 7;

/// A packet's flow plus the header lengths the capture offsets need.
pub struct ParsedFlow {
    pub flow: Flow,
    pub l3_len: u16,
    pub l4_len: u16,
    /// The IP id of a fragment (IPv6's is 32 bits).
    fragment_id: u32,
}

/// What ties a later IP fragment to its first: the datagram's addresses, protocol and id.
#[repr(C)]
pub struct FragmentKey {
    src_addr: [u8; 16],
    dst_addr: [u8; 16],
    id: u32,
    l4_proto: u8,
    _pad: [u8; 3],
}

/// A traced first fragment's ports, which its later fragments do not carry.
#[repr(C)]
pub struct FragmentPorts {
    src_port_be: u16,
    dst_port_be: u16,
}

/// First fragments of traced datagrams, kept until their later fragments have passed: a
/// fragmented datagram is rare (a large DNS answer), and the least recently used goes first.
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentPorts> = LruHashMap::with_max_entries(4096, 0);

/// Whether a device belongs to the watched network namespace; returns its inode.
///
/// # Safety
/// `dev` must be a BTF-typed `net_device` pointer (see [`skb::load`]).
#[inline(always)]
pub unsafe fn netns_of_device(dev: *const u8) -> Option<u32> {
    let net = unsafe { skb::load_ptr(dev, config!(layout.dev_net)) }?;
    unsafe { netns_matches(net) }
}

/// Whether a `struct net` is the watched network namespace; returns its inode.
///
/// # Safety
/// `net` must be a BTF-typed `net` pointer.
#[inline(always)]
pub unsafe fn netns_matches(net: *const u8) -> Option<u32> {
    let inode: u32 = unsafe { skb::load(net, config!(layout.net_inum)) };
    let wanted = config!(netns_inode);
    if wanted != 0 && inode != wanted {
        return None;
    }
    Some(inode)
}

/// Where the skb's IP header is, and how many bytes of the frame follow it.
pub struct NetworkHeader {
    pub head: *const u8,
    pub l3: *const u8,
    /// `skb->network_header`: offset of the IP header from `head`.
    pub offset: u16,
    /// Bytes from the IP header to the end of the linear data (`skb->tail`): every
    /// header read must fit in them, or it would read whatever the buffer held before.
    pub available: u32,
}

/// The skb's IP header, found through `head + network_header`.
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
pub unsafe fn network_header(skb: *const u8) -> Option<NetworkHeader> {
    let head = unsafe { skb::load_ptr(skb, config!(layout.skb_head)) }?;
    let offset: u16 = unsafe { skb::load(skb, config!(layout.skb_network_header)) };
    // `tail` is an offset from `head` on 64-bit kernels.
    let tail: u32 = unsafe { skb::load(skb, config!(layout.skb_tail)) };
    Some(NetworkHeader {
        head,
        l3: head.wrapping_add(offset as usize),
        offset,
        available: tail.saturating_sub(offset as u32),
    })
}

/// The IP version of a packet, as the kernel labels it before anyone reads its header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// From `skb->protocol`, as stored (network byte order).
    #[inline(always)]
    pub fn of_skb_protocol(protocol: u16) -> Option<IpFamily> {
        if protocol == EtherType::Ipv4 as u16 {
            Some(IpFamily::V4)
        } else if protocol == EtherType::Ipv6 as u16 {
            Some(IpFamily::V6)
        } else {
            None
        }
    }
}

/// Bytes of the frame read at once from the IP header on: the IP header and, where it
/// usually starts, the transport header's ports and TCP data offset. Anything else is
/// read from the packet when needed.
const HEADER_BYTES: usize = 64;

/// Room for what does not fit the programs' 512-byte stack, per CPU and per program
/// (indexed like `lost_slot`): a program can interrupt another on the same CPU (a frame
/// received in the softirq that interrupts a drop freed in process context), never
/// itself.
#[repr(C)]
pub struct Scratch {
    headers: [u8; HEADER_BYTES],
    ct_span: [u8; CT_SPAN_MAX],
    /// The flow being traced, kept here rather than copied from frame to frame of a
    /// program's 512-byte stack.
    parsed: ParsedFlow,
    fragment_key: FragmentKey,
    /// Failures that should never happen, noted deep in a program and reported at its top
    /// (see `diagnostics`).
    pub problems: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(lost_slot::COUNT, 0);

/// This CPU's scratch of program `slot`.
#[inline(always)]
pub fn scratch(slot: u32) -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU slot only this program uses on this CPU, and a program does not
    // run nested in itself: nothing else holds a reference while this one lives.
    SCRATCH.get_ptr_mut(slot).map(|scratch| unsafe { &mut *scratch })
}

/// The first bytes of a packet's network header, read once.
struct Headers<'a> {
    bytes: &'a [u8; HEADER_BYTES],
    /// How many of `bytes` are the packet's.
    len: u32,
    l3: *const u8,
}

impl Headers<'_> {
    /// The byte at a constant `offset`. Only constant offsets index the bytes read: the
    /// verifier proves those in bounds, while a variable index the compiler has bounded
    /// through a copy of it is refused.
    #[inline(always)]
    fn u8_at(&self, offset: u32) -> Option<u8> {
        if offset >= self.len {
            return None;
        }
        self.bytes.get(offset as usize).copied()
    }

    /// Four bytes at `offset` (a transport header's ports, say): from the bytes read at
    /// first where they usually are (after an IPv4 header without options or a bare IPv6
    /// header), else from the packet.
    #[inline(always)]
    fn four_at(&self, offset: u32) -> Option<[u8; 4]> {
        match offset {
            20 => self.four_at_const::<20>(),
            40 => self.four_at_const::<40>(),
            // Where a TCP header's data offset is, after those.
            32 => self.four_at_const::<32>(),
            52 => self.four_at_const::<52>(),
            _ => skb::read(self.l3, offset),
        }
    }

    #[inline(always)]
    fn four_at_const<const AT: u32>(&self) -> Option<[u8; 4]> {
        Some([self.u8_at(AT)?, self.u8_at(AT + 1)?, self.u8_at(AT + 2)?, self.u8_at(AT + 3)?])
    }
}

/// Parses the IP and L4 headers and applies the port filter: the first thing every
/// program decides, with one read of the packet, so traffic of other ports costs little.
/// `slot` names the calling program (`lost_slot`).
#[inline(always)]
pub fn read_traced_flow(header: &NetworkHeader, family: IpFamily, slot: u32) -> Option<&'static ParsedFlow> {
    let scratch = scratch(slot)?;
    let bytes = &mut scratch.headers;
    let len = if header.available < HEADER_BYTES as u32 { header.available } else { HEADER_BYTES as u32 };
    if !skb::read_into(bytes, header.l3, len as usize) {
        return None;
    }
    let headers = Headers { bytes, len, l3: header.l3 };
    let parsed = &mut scratch.parsed;
    parse_flow(&headers, header.available, family, parsed, &mut scratch.fragment_key)?;
    Some(parsed)
}

/// Fills `parsed` for a packet of the traced port; `None` for any other packet. The port is
/// found and tested before the addresses are copied: most packets on a node are of other
/// ports, and they should cost only the reads that find it. Values go straight into the
/// per-CPU `parsed` rather than through locals, which would count against the stack that
/// older kernels limit to 512 bytes across a program and its calls. A later IP fragment
/// is traced when its first fragment was, with the first one's ports.
#[inline(always)]
fn parse_flow(
    headers: &Headers,
    available: u32,
    family: IpFamily,
    parsed: &mut ParsedFlow,
    key: &mut FragmentKey,
) -> Option<()> {
    match family {
        IpFamily::V4 => {
            let first = headers.u8_at(0)?;
            let header_len = ((first & 0x0f) as u16) * 4;
            if first >> 4 != 4 || header_len < Ipv4Hdr::LEN as u16 {
                return None;
            }
            parsed.flow.ip_version = 4;
            parsed.flow.l4_proto = headers.u8_at(9)?;
            parsed.l3_len = header_len;
            let flags_offset = u16::from_be_bytes([headers.u8_at(6)?, headers.u8_at(7)?]);
            parsed.fragment_id = u16::from_be_bytes([headers.u8_at(4)?, headers.u8_at(5)?]) as u32;
            parsed.flow.fragment = fragment_kind(flags_offset & 0x1fff != 0, flags_offset & 0x2000 != 0);
        }
        IpFamily::V6 => {
            if headers.u8_at(0)? >> 4 != 6 || headers.len < Ipv6Hdr::LEN as u32 {
                return None;
            }
            parsed.flow.fragment = fragment::WHOLE;
            let (next_header, l3_len) = skip_ipv6_extensions(headers, available, headers.u8_at(6)?, parsed)?;
            parsed.flow.ip_version = 6;
            parsed.flow.l4_proto = next_header;
            parsed.l3_len = l3_len;
        }
    }
    if parsed.flow.fragment == fragment::LATER {
        return later_fragment(headers, parsed, key);
    }
    let l4_offset = parsed.l3_len as u32;
    let ports = match parsed.flow.l4_proto {
        IPPROTO_UDP => {
            if available < l4_offset + UdpHdr::LEN as u32 {
                return None;
            }
            parsed.l4_len = UdpHdr::LEN as u16;
            headers.four_at(l4_offset)?
        }
        IPPROTO_TCP => {
            if available < l4_offset + TcpHdr::LEN as u32 {
                return None;
            }
            // Byte 12 holds the data offset, in 32-bit words, at least the fixed header's five.
            let data_offset = ((headers.four_at(l4_offset + 12)?[0] >> 4) as u16) * 4;
            if data_offset < TcpHdr::LEN as u16 {
                return None;
            }
            parsed.l4_len = data_offset;
            headers.four_at(l4_offset)?
        }
        _ => return None,
    };
    // Ports stay in network byte order, as the records carry them.
    let flow = &mut parsed.flow;
    flow.src_port_be = u16::from_ne_bytes([ports[0], ports[1]]);
    flow.dst_port_be = u16::from_ne_bytes([ports[2], ports[3]]);
    let port = config!(port_be);
    if port != 0 && flow.src_port_be != port && flow.dst_port_be != port {
        return None;
    }
    flow._pad = 0;
    copy_addresses(headers, flow)?;
    if flow.fragment == fragment::FIRST {
        remember_first_fragment(parsed, key);
    }
    Some(())
}

/// `fragment::*` of a packet from its IP header: a fragment offset, and more fragments to come.
#[inline(always)]
fn fragment_kind(at_offset: bool, more: bool) -> u8 {
    if at_offset {
        fragment::LATER
    } else if more {
        fragment::FIRST
    } else {
        fragment::WHOLE
    }
}

/// A traced first fragment's ports, kept for its later fragments.
#[inline(never)]
fn remember_first_fragment(parsed: &ParsedFlow, key: &mut FragmentKey) {
    fill_fragment_key(parsed, key);
    let ports = FragmentPorts { src_port_be: parsed.flow.src_port_be, dst_port_be: parsed.flow.dst_port_be };
    // A full map evicts its oldest entry; a failure only leaves later fragments untraced.
    let _ = FRAGMENTS.insert(key, &ports, 0);
}

/// A later fragment: traced with its first fragment's ports when that one was, else not.
/// It has no transport header, so its payload starts right after the IP header.
#[inline(never)]
fn later_fragment(headers: &Headers, parsed: &mut ParsedFlow, key: &mut FragmentKey) -> Option<()> {
    if parsed.flow.l4_proto != IPPROTO_UDP && parsed.flow.l4_proto != IPPROTO_TCP {
        return None;
    }
    parsed.l4_len = 0;
    parsed.flow._pad = 0;
    copy_addresses(headers, &mut parsed.flow)?;
    fill_fragment_key(parsed, key);
    // SAFETY: the value is copied out at once; an LRU entry may be replaced meanwhile, and
    // then the ports read are another datagram's, which the port filter passed all the same.
    let ports = unsafe { FRAGMENTS.get(key) }?;
    parsed.flow.src_port_be = ports.src_port_be;
    parsed.flow.dst_port_be = ports.dst_port_be;
    Some(())
}

#[inline(always)]
fn fill_fragment_key(parsed: &ParsedFlow, key: &mut FragmentKey) {
    key.src_addr = parsed.flow.src_addr;
    key.dst_addr = parsed.flow.dst_addr;
    key.id = parsed.fragment_id;
    key.l4_proto = parsed.flow.l4_proto;
    key._pad = [0; 3];
}

/// The packet's addresses into `flow`, for the traced packets only. A call of its own: inlined,
/// the copy kept the ports and header offsets alive across it, and the spills doubled the
/// stack of the programs that parse, past what older kernels allow with their calls.
#[inline(never)]
fn copy_addresses(headers: &Headers, flow: &mut Flow) -> Option<()> {
    // An IPv4 address takes the first four bytes; the rest stay zero, as userspace reads them.
    if flow.ip_version == 4 {
        for i in 0..4u32 {
            flow.src_addr[i as usize] = headers.u8_at(12 + i)?;
            flow.dst_addr[i as usize] = headers.u8_at(16 + i)?;
        }
        for i in 4..16 {
            flow.src_addr[i] = 0;
            flow.dst_addr[i] = 0;
        }
    } else {
        for i in 0..16u32 {
            flow.src_addr[i as usize] = headers.u8_at(8 + i)?;
            flow.dst_addr[i as usize] = headers.u8_at(24 + i)?;
        }
    }
    Some(())
}

/// IPv6 extension headers tracer walks past to the UDP or TCP header. A large DNS answer
/// over IPv6 is fragmented by its sender, and its first fragment carries a fragment header.
const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const IPV6_DESTINATION_OPTIONS: u8 = IpProto::Ipv6Opts as u8;
/// Real packets carry one or two; the bound keeps the verifier's walk short.
const MAX_IPV6_EXTENSIONS: usize = 6;

/// Follows the extension header chain from the fixed header's next-header field; returns
/// the upper-layer protocol and its offset, and notes a fragment header's id and place in
/// `parsed`.
#[inline(always)]
fn skip_ipv6_extensions(headers: &Headers, available: u32, first: u8, parsed: &mut ParsedFlow) -> Option<(u8, u16)> {
    let mut next_header = first;
    let mut offset: u32 = Ipv6Hdr::LEN as u32;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                if available < offset + 2 {
                    return None;
                }
                // Next header, then the length in 8-octet units not counting the first.
                let extension = headers.four_at(offset)?;
                next_header = extension[0];
                offset += (extension[1] as u32 + 1) * 8;
            }
            IPV6_FRAGMENT => {
                if available < offset + 8 {
                    return None;
                }
                let header = headers.four_at(offset)?;
                let id = headers.four_at(offset + 4)?;
                let offset_more = u16::from_be_bytes([header[2], header[3]]);
                parsed.fragment_id = u32::from_be_bytes(id);
                parsed.flow.fragment = fragment_kind(offset_more & 0xfff8 != 0, offset_more & 0x0001 != 0);
                next_header = header[0];
                offset += 8;
            }
            _ => break,
        }
    }
    Some((next_header, offset as u16))
}

/// Bytes of `nf_conn` read at once: both tuples and the status (userspace leaves the span
/// zero, and conntrack tuples unread, on a kernel where they lie further apart).
pub const CT_SPAN_MAX: usize = 128;

/// What conntrack had attached to an skb at one point of its way.
pub struct ConntrackView {
    /// `conntrack_state::*`.
    pub state: u8,
    /// The `enum ip_conntrack_info` bits of `skb->_nfct`.
    pub info: u8,
    /// IPS_* bits.
    pub status: u32,
}

/// The conntrack entry attached to `skb`; its tuples, when an entry is attached and the
/// kernel's layout is known, are written to `original` and `reply` (in place: the
/// programs' stack has no room for copies). `slot` names the calling program (`lost_slot`).
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
pub unsafe fn read_conntrack(skb: *const u8, slot: u32, original: &mut CtTuple, reply: &mut CtTuple) -> ConntrackView {
    let nfct: u64 = unsafe { skb::load(skb, config!(layout.skb_nfct)) };
    let conn = (nfct & !NFCT_INFO_MASK) as *const u8;
    let mut view = ConntrackView {
        state: if nfct == 0 {
            conntrack_state::NONE
        } else if conn.is_null() {
            conntrack_state::UNTRACKED
        } else {
            conntrack_state::ATTACHED
        },
        info: (nfct & NFCT_INFO_MASK) as u8,
        status: 0,
    };
    let span_len = config!(layout.ct_span_len);
    if conn.is_null() || span_len == 0 {
        return view;
    }
    let start = config!(layout.ct_span_start);
    let Some(scratch) = scratch(slot) else { return view };
    let span = &mut scratch.ct_span;
    if !skb::read_into(span, conn.wrapping_add(start as usize), span_len as usize) {
        diagnostics::note(slot, Problem::ConntrackUnreadable);
        return view;
    }
    view.status = u64::from_ne_bytes(span_bytes(span, config!(layout.ct_status).wrapping_sub(start))) as u32;
    let at = config!(layout.ct_tuple_original).wrapping_sub(start);
    tuple_into(span, at, original);
    tuple_into(span, at + config!(layout.ct_tuplehash_size), reply);
    view
}

/// `skb->mac_header` when no link-layer header was set.
const MAC_HEADER_UNSET: u16 = 0xffff;

/// Where the captured bytes' headers are.
pub struct Captured {
    pub len: u16,
    pub l3_offset: u16,
    pub l4_offset: u16,
    pub payload_offset: u16,
    /// The skb's payload goes on in page fragments, which were not copied.
    pub fragments_follow: bool,
}

/// Copies the frame's first bytes (at most the snaplen) into `into`, from the Ethernet
/// header when the skb has one in its linear data, else from the IP header. `slot` names
/// the calling program (`lost_slot`).
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
pub unsafe fn capture(
    skb: *const u8,
    header: &NetworkHeader,
    parsed: &ParsedFlow,
    into: &mut [u8; CAPTURE_MAX],
    slot: u32,
) -> Captured {
    let mac_header: u16 = unsafe { skb::load(skb, config!(layout.skb_mac_header)) };
    let start = if mac_header != MAC_HEADER_UNSET && mac_header <= header.offset { mac_header } else { header.offset };
    let l3_offset = header.offset - start;
    // `tail` is an offset from `head` on 64-bit kernels: the end of the linear data.
    let tail: u32 = unsafe { skb::load(skb, config!(layout.skb_tail)) };
    let linear = tail.saturating_sub(start as u32) as usize;
    let mut want = config!(snaplen) as usize;
    if want > linear {
        want = linear;
    }
    let copied = skb::read_into::<CAPTURE_MAX>(into, header.head.wrapping_add(start as usize), want);
    if !copied {
        diagnostics::note(slot, Problem::CopyRefused);
    }
    // The payload follows the linear data in page fragments when the sender left it there
    // (TCP between pods over veth carries only its headers in the linear part): copied by
    // the caller, in a call of its own (`append_first_page_fragment`).
    let fragments_follow = copied
        && want == linear
        && want < config!(snaplen) as usize
        && config!(layout.page_offset_base_addr) != 0
        && unsafe { skb::load::<u32>(skb, config!(layout.skb_data_len)) } != 0;
    Captured {
        len: if copied { want.min(CAPTURE_MAX) as u16 } else { 0 },
        fragments_follow,
        l3_offset,
        l4_offset: l3_offset + parsed.l3_len,
        payload_offset: l3_offset + parsed.l3_len + parsed.l4_len,
    }
}

/// Copies the bytes of the skb's first page fragment after the `at` bytes of linear data
/// captured in `into`, up to the snaplen; returns how many. Nothing when the configuration
/// gives no way to find a page's bytes (see `KernelLayout::page_offset_base_addr`).
///
/// # Safety
/// `skb` must be a BTF-typed `sk_buff` pointer.
#[inline(always)]
pub unsafe fn append_first_page_fragment(skb: *const u8, into: &mut [u8; CAPTURE_MAX], at: usize) -> usize {
    // The kernel values are read into the end of the capture buffer, past anything captured
    // so far (`at` < 256 below), not onto the stack. The fragment's bytes may overwrite them
    // afterwards.
    if config!(layout.page_offset_base_addr) == 0 || at >= SCRATCH_AT {
        return 0;
    }
    let Some(head) = (unsafe { skb::load_ptr(skb, config!(layout.skb_head)) }) else { return 0 };
    // `end` is an offset from `head` on 64-bit kernels: where skb_shared_info starts.
    let end: u32 = unsafe { skb::load(skb, config!(layout.skb_end)) };
    let shared_info = head.wrapping_add(end as usize);
    if !scratch_read::<SCRATCH_FRAGMENTS, 1>(into, shared_info.wrapping_add(config!(layout.shinfo_nr_frags) as usize))
        || into[SCRATCH_FRAGMENTS] == 0
    {
        return 0;
    }
    let fragment = shared_info.wrapping_add(config!(layout.shinfo_frags) as usize);
    if !scratch_read::<SCRATCH_PAGE, 8>(into, fragment.wrapping_add(config!(layout.frag_page) as usize))
        || !scratch_read::<SCRATCH_LEN, 4>(into, fragment.wrapping_add(config!(layout.frag_len) as usize))
        || !scratch_read::<SCRATCH_OFFSET, 4>(into, fragment.wrapping_add(config!(layout.frag_offset) as usize))
        || !scratch_read::<SCRATCH_DIRECT_MAP, 8>(into, config!(layout.page_offset_base_addr) as *const u8)
        || !scratch_read::<SCRATCH_VMEMMAP, 8>(into, config!(layout.vmemmap_base_addr) as *const u8)
    {
        return 0;
    }
    let page = u64::from_ne_bytes(bytes_at(into, SCRATCH_PAGE));
    let vmemmap = u64::from_ne_bytes(bytes_at(into, SCRATCH_VMEMMAP));
    let page_struct_size = config!(layout.page_struct_size) as u64;
    // A netmem with its low bit set is device memory (a net_iov), not a page in the direct map.
    if page & 1 != 0 || page_struct_size == 0 || page < vmemmap {
        return 0;
    }
    let frame = (page - vmemmap) / page_struct_size;
    let fragment_offset = u32::from_ne_bytes(bytes_at(into, SCRATCH_OFFSET)) as u64;
    let bytes = (u64::from_ne_bytes(bytes_at(into, SCRATCH_DIRECT_MAP))
        + (frame << config!(layout.page_shift))
        + fragment_offset) as *const u8;
    let snaplen = config!(snaplen) as usize;
    if at >= snaplen {
        return 0;
    }
    let mut len = u32::from_ne_bytes(bytes_at(into, SCRATCH_LEN)) as usize;
    if len > snaplen - at {
        len = snaplen - at;
    }
    // Each branch gives the verifier a constant bound on where the copy starts and on its
    // length, whose sum fits the capture buffer. Linear data of 256 bytes or more already
    // holds what a DNS message's header and question need.
    if at < 128 {
        copy_at::<127, { CAPTURE_MAX - 128 }>(into, at, bytes, len)
    } else if at < 256 {
        copy_at::<255, { CAPTURE_MAX - 256 }>(into, at, bytes, len)
    } else {
        0
    }
}

/// Where in the capture buffer `append_first_page_fragment` reads kernel values.
const SCRATCH_AT: usize = CAPTURE_MAX - 40;
const SCRATCH_DIRECT_MAP: usize = SCRATCH_AT;
const SCRATCH_VMEMMAP: usize = SCRATCH_AT + 8;
const SCRATCH_PAGE: usize = SCRATCH_AT + 16;
const SCRATCH_LEN: usize = SCRATCH_AT + 24;
const SCRATCH_OFFSET: usize = SCRATCH_AT + 28;
const SCRATCH_FRAGMENTS: usize = SCRATCH_AT + 32;

/// Reads `N` bytes of kernel memory into `into[AT..AT + N]`; false when the kernel refused.
#[inline(always)]
fn scratch_read<const AT: usize, const N: usize>(into: &mut [u8; CAPTURE_MAX], src: *const u8) -> bool {
    const { assert!(AT + N <= CAPTURE_MAX) };
    // SAFETY: AT + N <= CAPTURE_MAX; the source read is fault-safe.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            into.as_mut_ptr().wrapping_add(AT) as *mut core::ffi::c_void,
            N as u32,
            src as *const core::ffi::c_void,
        ) == 0
    }
}

/// Copies at most `MAX_LEN` bytes from kernel memory to `into[at..]`, where `at` is at
/// most `MASK` (all ones); returns how many were copied (0 when the kernel refused).
#[inline(always)]
fn copy_at<const MASK: usize, const MAX_LEN: usize>(
    into: &mut [u8; CAPTURE_MAX],
    at: usize,
    src: *const u8,
    len: usize,
) -> usize {
    const { assert!(MASK + MAX_LEN < CAPTURE_MAX && (MASK + 1).is_power_of_two()) };
    // The compiler knows `at <= MASK` from the caller's test and would drop the mask, and
    // the verifier would then see an offset bounded only by a copy of `at` it tested
    // separately. Read through memory, `at` is unknown to the compiler: the mask stays, and
    // the verifier bounds the offset by it.
    let at = unsafe { core::ptr::read_volatile(&at) } & MASK;
    let len = if len > MAX_LEN { MAX_LEN } else { len };
    if len == 0 {
        return 0;
    }
    // SAFETY: at + len <= MASK + MAX_LEN < CAPTURE_MAX; the source read is fault-safe.
    let ret = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            into.as_mut_ptr().wrapping_add(at) as *mut core::ffi::c_void,
            len as u32,
            src as *const core::ffi::c_void,
        )
    };
    if ret == 0 {
        len
    } else {
        0
    }
}

/// `N` bytes at `at` of the span read from a conntrack entry (zeros outside it).
#[inline(always)]
fn span_bytes<const N: usize>(span: &[u8; CT_SPAN_MAX], at: u32) -> [u8; N] {
    bytes_at(span, at as usize)
}

/// `N` bytes at `at` of a buffer the programs read kernel memory into (zeros outside it).
#[inline(always)]
fn bytes_at<const N: usize, const M: usize>(buffer: &[u8; M], at: usize) -> [u8; N] {
    let mut value = [0u8; N];
    if let Some(bytes) = buffer.get(at..at + N) {
        value.copy_from_slice(bytes);
    }
    value
}

#[inline(always)]
pub fn zero_tuple() -> CtTuple {
    CtTuple { src_addr: [0; 16], dst_addr: [0; 16], src_port_be: 0, dst_port_be: 0, protonum: 0, _pad: [0; 3] }
}

/// The `nf_conntrack_tuple` at `at` in the span read from a conntrack entry.
#[inline(always)]
fn tuple_into(span: &[u8; CT_SPAN_MAX], at: u32, tuple: &mut CtTuple) {
    tuple.src_addr = span_bytes(span, at + config!(layout.tuple_src_addr));
    tuple.dst_addr = span_bytes(span, at + config!(layout.tuple_dst_addr));
    tuple.src_port_be = u16::from_ne_bytes(span_bytes(span, at + config!(layout.tuple_src_port)));
    tuple.dst_port_be = u16::from_ne_bytes(span_bytes(span, at + config!(layout.tuple_dst_port)));
    tuple.protonum = span_bytes::<1>(span, at + config!(layout.tuple_protonum))[0];
    tuple._pad = [0; 3];
}
