//! Reads shared by every hook family: a packet's addresses and ports from its IP
//! header, the conntrack entry attached to its skb, and the filters every record
//! must pass (network namespace and port) before anything is reserved.

use network_types::{
    eth::EtherType,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};
use tracer_common::{conntrack_state, ConntrackRecord, CtTuple, Flow};

use crate::{config::config, diagnostics::rare_failure, skb};

const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
const IPPROTO_UDP: u8 = IpProto::Udp as u8;
/// The low bits of `skb->_nfct` hold the `enum ip_conntrack_info`.
const NFCT_INFO_MASK: u64 = 7;

/// A packet's flow plus the header lengths the capture offsets need.
pub struct ParsedFlow {
    pub flow: Flow,
    pub l3_len: u16,
    pub l4_len: u16,
}

/// Whether a device belongs to the watched network namespace; returns its inode.
#[inline(always)]
pub fn netns_of_device(dev: *const u8) -> Option<u32> {
    let net = skb::read_ptr(dev, config!(layout.dev_net))?;
    netns_matches(net)
}

/// Whether a `struct net` is the watched network namespace; returns its inode.
#[inline(always)]
pub fn netns_matches(net: *const u8) -> Option<u32> {
    let inode: u32 = skb::read(net, config!(layout.net_inum))?;
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
#[inline(always)]
pub fn network_header(skb: *const u8) -> Option<NetworkHeader> {
    let head = skb::read_ptr(skb, config!(layout.skb_head))?;
    let offset: u16 = skb::read(skb, config!(layout.skb_network_header))?;
    // `tail` is an offset from `head` on 64-bit kernels.
    let tail: u32 = skb::read(skb, config!(layout.skb_tail))?;
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

/// Parses the IP and L4 headers and applies the port filter.
#[inline(always)]
pub fn read_traced_flow(header: &NetworkHeader, family: IpFamily) -> Option<ParsedFlow> {
    let parsed = read_flow(header.l3, header.available, family)?;
    let port = config!(port_be);
    if port != 0 && parsed.flow.src_port_be != port && parsed.flow.dst_port_be != port {
        return None;
    }
    Some(parsed)
}

#[inline(always)]
fn read_flow(l3: *const u8, available: u32, family: IpFamily) -> Option<ParsedFlow> {
    let mut parsed = ParsedFlow {
        flow: Flow {
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port_be: 0,
            dst_port_be: 0,
            ip_version: 0,
            l4_proto: 0,
            _pad: [0; 2],
        },
        l3_len: 0,
        l4_len: 0,
    };
    let flow = &mut parsed.flow;
    match family {
        IpFamily::V4 => {
            if available < Ipv4Hdr::LEN as u32 {
                return None;
            }
            let ip: Ipv4Hdr = skb::read(l3, 0)?;
            let header_len = ip.ihl() as u16;
            if ip.version() != 4 || header_len < Ipv4Hdr::LEN as u16 {
                return None;
            }
            // Only the first fragment carries the ports.
            if ip.frag_offset() != 0 {
                return None;
            }
            flow.ip_version = 4;
            flow.l4_proto = ip.proto;
            parsed.l3_len = header_len;
            flow.src_addr[..4].copy_from_slice(&ip.src_addr);
            flow.dst_addr[..4].copy_from_slice(&ip.dst_addr);
        }
        IpFamily::V6 => {
            if available < Ipv6Hdr::LEN as u32 {
                return None;
            }
            let ip: Ipv6Hdr = skb::read(l3, 0)?;
            if ip.version() != 6 {
                return None;
            }
            flow.ip_version = 6;
            flow.src_addr = ip.src_addr;
            flow.dst_addr = ip.dst_addr;
            let (next_header, l3_len) = skip_ipv6_extensions(l3, available, ip.next_hdr)?;
            flow.l4_proto = next_header;
            parsed.l3_len = l3_len;
        }
    }
    let l4_offset = parsed.l3_len as u32;
    // Ports stay in network byte order, as the records carry them.
    match flow.l4_proto {
        IPPROTO_UDP => {
            if available < l4_offset + UdpHdr::LEN as u32 {
                return None;
            }
            let udp: UdpHdr = skb::read(l3, l4_offset)?;
            flow.src_port_be = u16::from_ne_bytes(udp.src);
            flow.dst_port_be = u16::from_ne_bytes(udp.dst);
            parsed.l4_len = UdpHdr::LEN as u16;
        }
        IPPROTO_TCP => {
            if available < l4_offset + TcpHdr::LEN as u32 {
                return None;
            }
            let tcp: TcpHdr = skb::read(l3, l4_offset)?;
            // The data offset is in 32-bit words, at least the fixed header's five.
            let data_offset = tcp.doff() * 4;
            if data_offset < TcpHdr::LEN as u16 {
                return None;
            }
            flow.src_port_be = u16::from_ne_bytes(tcp.source);
            flow.dst_port_be = u16::from_ne_bytes(tcp.dest);
            parsed.l4_len = data_offset;
        }
        _ => return None,
    }
    Some(parsed)
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
/// the upper-layer protocol and its offset. `None` for a fragment other than the first,
/// which carries no ports.
#[inline(always)]
fn skip_ipv6_extensions(l3: *const u8, available: u32, first: u8) -> Option<(u8, u16)> {
    let mut next_header = first;
    let mut offset: u32 = 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next_header {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                if available < offset + 2 {
                    return None;
                }
                // Next header, then the length in 8-octet units not counting the first.
                let extension: [u8; 2] = skb::read(l3, offset)?;
                next_header = extension[0];
                offset += (extension[1] as u32 + 1) * 8;
            }
            IPV6_FRAGMENT => {
                if available < offset + 8 {
                    return None;
                }
                let fragment: [u8; 4] = skb::read(l3, offset)?;
                if u16::from_be_bytes([fragment[2], fragment[3]]) & 0xfff8 != 0 {
                    return None;
                }
                next_header = fragment[0];
                offset += 8;
            }
            _ => break,
        }
    }
    Some((next_header, offset as u16))
}

/// Fills `out` with the conntrack entry attached to `skb`.
///
/// # Safety
/// `out` must point at a ConntrackRecord inside a reserved ring buffer record.
#[inline(always)]
pub unsafe fn fill_conntrack(skb: *const u8, out: *mut ConntrackRecord) {
    let nfct: u64 = skb::read(skb, config!(layout.skb_nfct)).unwrap_or(0);
    let conn = (nfct & !NFCT_INFO_MASK) as *const u8;
    unsafe {
        (*out).info = (nfct & NFCT_INFO_MASK) as u8;
        (*out)._pad = [0; 2];
        (*out).status = 0;
        (*out).original = zero_tuple();
        (*out).reply = zero_tuple();
        (*out).state = if nfct == 0 {
            conntrack_state::NONE
        } else if conn.is_null() {
            conntrack_state::UNTRACKED
        } else {
            conntrack_state::ATTACHED
        };
        // A zero tuplehash size means the running kernel's BTF has no nf_conn: we
        // know a conntrack entry is attached but not how to read it.
        let tuplehash_size = config!(layout.ct_tuplehash_size);
        if conn.is_null() || tuplehash_size == 0 {
            return;
        }
        (*out).status = match skb::read::<u64>(conn, config!(layout.ct_status)) {
            Some(status) => status as u32,
            None => {
                rare_failure!("the conntrack entry attached to a traced packet could not be read");
                0
            }
        };
        let original = config!(layout.ct_tuple_original);
        read_tuple(conn.wrapping_add(original as usize), core::ptr::addr_of_mut!((*out).original));
        read_tuple(
            conn.wrapping_add((original + tuplehash_size) as usize),
            core::ptr::addr_of_mut!((*out).reply),
        );
    }
}

#[inline(always)]
fn zero_tuple() -> CtTuple {
    CtTuple {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port_be: 0,
        dst_port_be: 0,
        protonum: 0,
        _pad: [0; 3],
    }
}

/// # Safety
/// `out` must point at a CtTuple inside a reserved record.
#[inline(always)]
unsafe fn read_tuple(tuple: *const u8, out: *mut CtTuple) {
    unsafe {
        (*out).src_addr = skb::read(tuple, config!(layout.tuple_src_addr)).unwrap_or([0; 16]);
        (*out).dst_addr = skb::read(tuple, config!(layout.tuple_dst_addr)).unwrap_or([0; 16]);
        (*out).src_port_be = skb::read(tuple, config!(layout.tuple_src_port)).unwrap_or(0);
        (*out).dst_port_be = skb::read(tuple, config!(layout.tuple_dst_port)).unwrap_or(0);
        (*out).protonum = skb::read(tuple, config!(layout.tuple_protonum)).unwrap_or(0);
    }
}
