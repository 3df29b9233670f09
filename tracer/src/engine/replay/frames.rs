//! What a captured frame's bytes say: where its IP header starts for its link type, its
//! addresses and ports, and the DNS message it carries. Input from files anyone may hand
//! tracer: every read is bounds-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pcap_parser::Linktype;

use crate::{
    model::{
        dns::DnsMessage,
        packet::L4Proto,
        plain::{PlainIp, PlainPacket},
    },
    pipeline::{dns_decode::DNS_PORT, dns_parse as dns},
};

/// Where the IP header starts for a link type, from the frame's own bytes.
pub(crate) fn l3_offset_for(linktype: Linktype, data: &[u8]) -> Option<usize> {
    let be16 = |at: usize| data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ip_ethertype = |t: u16| t == 0x0800 || t == 0x86dd;
    match linktype {
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => Some(0),
        Linktype::ETHERNET => {
            // Skip 802.1Q / 802.1ad tags.
            let mut at = 12;
            while matches!(be16(at)?, 0x8100 | 0x88a8) {
                at += 4;
            }
            ip_ethertype(be16(at)?).then_some(at + 2)
        }
        Linktype::LINUX_SLL => ip_ethertype(be16(14)?).then_some(16),
        Linktype::LINUX_SLL2 => ip_ethertype(be16(0)?).then_some(20),
        // BSD loopback: a 4-byte address family in the writer's byte order.
        Linktype::NULL | Linktype::LOOP => (data.len() >= 4).then_some(4),
        _ => None,
    }
}

/// What the IP and transport headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct IpHeaders {
    pub version: u8,
    pub l4_proto: L4Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ip_len: u32,
    /// Where the IP header, the transport header and its payload start in the frame.
    pub l3_offset: usize,
    pub l4_offset: usize,
    pub payload_offset: usize,
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

pub(crate) fn ip_headers(data: &[u8], l3: usize) -> Option<IpHeaders> {
    let ip = data.get(l3..)?;
    let version = ip.first()? >> 4;
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
    let (src_ip, dst_ip, mut proto, mut at, ip_len) = match version {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let header = ip.get(..20)?;
            // A later fragment has no transport header to read.
            if be16(header, 6)? & 0x1fff != 0 || ihl < 20 {
                return None;
            }
            let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), header[9], ihl, u32::from(be16(header, 2)?))
        }
        6 => {
            let header = ip.get(..40)?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&header[8..24]);
            dst.copy_from_slice(&header[24..40]);
            let ip_len = u32::from(be16(header, 4)?) + 40;
            (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), header[6], 40, ip_len)
        }
        _ => return None,
    };
    // Bounded: a handful of extension headers at most fit in a captured frame.
    for _ in 0..8 {
        match (version, proto) {
            (6, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS) => {
                let ext = ip.get(at..at + 2)?;
                proto = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            (6, IPV6_FRAGMENT) => {
                let ext = ip.get(at..at + 8)?;
                if be16(ext, 2)? & 0xfff8 != 0 {
                    return None;
                }
                proto = ext[0];
                at += 8;
            }
            _ => break,
        }
    }
    let l4 = ip.get(at..)?;
    let (sport, dport) = (be16(l4, 0)?, be16(l4, 2)?);
    let l4_proto = L4Proto::from_number(proto)?;
    let l4_len = match l4_proto {
        L4Proto::Udp => 8,
        L4Proto::Tcp => usize::from(l4.get(12)? >> 4) * 4,
    };
    Some(IpHeaders {
        version,
        l4_proto,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        ip_len,
        l3_offset: l3,
        l4_offset: l3 + at,
        payload_offset: l3 + at + l4_len,
    })
}

/// DNS in a capture another program wrote: only on port 53 and with a plausible header,
/// as a watch reads it; over TCP only a segment that holds one whole message (a listing
/// follows no streams).
fn dns_of(data: &[u8], ip: &IpHeaders) -> Option<DnsMessage> {
    if ip.src.port() != DNS_PORT && ip.dst.port() != DNS_PORT {
        return None;
    }
    let payload = data.get(ip.payload_offset..).filter(|p| !p.is_empty())?;
    let transport_len = usize::try_from(ip.ip_len).ok()?.checked_sub(ip.l4_offset.checked_sub(ip.l3_offset)?)?;
    let payload_len = transport_len.checked_sub(ip.payload_offset - ip.l4_offset)?;
    if ip.l4_proto == L4Proto::Tcp {
        let declared = usize::from(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        (declared + 2 == payload_len).then(|| dns::parse_plausible(payload, true, declared)).flatten()
    } else {
        dns::parse_plausible(payload, false, payload_len)
    }
}

pub(crate) fn plain_packet(
    wall_time_ns: u64,
    ifname: Option<String>,
    linktype: Linktype,
    data: &[u8],
    original_len: u32,
) -> PlainPacket {
    let ip = l3_offset_for(linktype, data).and_then(|l3| ip_headers(data, l3)).map(|h| PlainIp {
        version: h.version,
        l4_proto: h.l4_proto,
        src: h.src,
        dst: h.dst,
        ip_len: h.ip_len,
        dns: dns_of(data, &h),
    });
    PlainPacket { wall_time_ns, stage: (), ifname, linktype: linktype.0, captured_len: data.len(), original_len, ip }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::packet::IPPROTO_UDP;

    /// An Ethernet + IPv4 + UDP frame carrying a DNS message for `example.test. A`
    /// (a query, or a reply with no answers).
    pub(crate) fn dns_frame(src: SocketAddr, dst: SocketAddr, id: u16, qr: bool) -> Vec<u8> {
        let flags: u8 = if qr { 0x81 } else { 0x01 };
        let dns: Vec<u8> = [
            &[(id >> 8) as u8, id as u8, flags, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
            b"\x07example\x04test\x00",
            &[0, 1, 0, 1],
        ]
        .concat();
        let (IpAddr::V4(src_ip), IpAddr::V4(dst_ip)) = (src.ip(), dst.ip()) else { panic!("IPv4 only") };
        let udp_len = 8 + dns.len() as u16;
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&src_ip.octets());
        frame.extend_from_slice(&dst_ip.octets());
        frame.extend_from_slice(&src.port().to_be_bytes());
        frame.extend_from_slice(&dst.port().to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&dns);
        frame
    }

    pub(crate) fn dns_query_frame() -> Vec<u8> {
        dns_frame(
            "10.244.0.5:41234".parse().expect("literal"),
            "10.96.0.10:53".parse().expect("literal"),
            0x1a2b,
            false,
        )
    }

    #[test]
    fn headers_and_dns_from_an_ethernet_frame() {
        let frame = dns_query_frame();
        let plain = plain_packet(5, Some("eth0".into()), Linktype::ETHERNET, &frame, frame.len() as u32);
        let ip = plain.ip.expect("an IP packet");
        assert_eq!(ip.src.to_string(), "10.244.0.5:41234");
        assert_eq!(ip.dst.to_string(), "10.96.0.10:53");
        assert_eq!(ip.ip_len as usize, frame.len() - 14);
        let dns = ip.dns.expect("a DNS message");
        assert_eq!((dns.id, dns.qr, dns.qname.as_deref()), (0x1a2b, false, Some("example.test.")));
        // The same bytes without the Ethernet header, as raw IP.
        let raw = plain_packet(5, None, Linktype::RAW, &frame[14..], 0);
        assert_eq!(raw.ip.map(|ip| ip.src), Some(ip.src));
        assert!(plain_packet(5, None, Linktype(147), &frame, 0).ip.is_none(), "unknown link type");
    }

    #[test]
    fn ipv6_with_an_extension_header() {
        let mut packet = vec![0x60, 0, 0, 0, 0, 16, IPV6_DEST_OPTS, 64];
        packet.extend_from_slice(&"fd00::5".parse::<Ipv6Addr>().expect("literal").octets());
        packet.extend_from_slice(&"fd00::a".parse::<Ipv6Addr>().expect("literal").octets());
        packet.extend_from_slice(&[IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let headers = ip_headers(&packet, 0).expect("headers");
        assert_eq!(headers.src.to_string(), "[fd00::5]:5000");
        assert_eq!(headers.payload_offset, 40 + 8 + 8);
    }
}
