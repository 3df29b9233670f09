//! Building packets and DNS messages by hand, for tests that send what no tool would, and sending
//! them as raw Ethernet frames.

use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::netns::in_netns;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q: one VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad: the outer tag of a double-tagged frame.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A DNS header: `id`, `flags`, `questions` and `answers`, no authority or additional records.
pub fn dns_header(id: u16, flags: u16, questions: u16, answers: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    for v in [id, flags, questions, answers, 0, 0] {
        h.extend_from_slice(&v.to_be_bytes());
    }
    h
}

/// A standard DNS query (RD set, one question of class IN).
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = dns_header(id, 0x0100, 1, 0);
    m.extend_from_slice(&qname(name));
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// A name in DNS wire form.
pub fn qname(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// The id of a DNS message, when it has a header.
pub fn dns_id(message: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for pair in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The bytes of an IPv4 address written as text (the lab's constants).
pub fn octets4(ip: &str) -> Result<[u8; 4]> {
    Ok(ip.parse::<Ipv4Addr>().with_context(|| format!("IPv4 address {ip:?}"))?.octets())
}

/// The bytes of an IPv6 address written as text.
pub fn octets6(ip: &str) -> Result<[u8; 16]> {
    Ok(ip.parse::<Ipv6Addr>().with_context(|| format!("IPv6 address {ip:?}"))?.octets())
}

pub fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet; `options` must be a multiple of 4 bytes; `frag` is the flags+offset field.
pub fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, options: &[u8], id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut p = Vec::with_capacity(header_len + payload.len());
    p.push(0x40 | (header_len / 4) as u8);
    p.push(0);
    p.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(options);
    fix_ipv4_checksum(&mut p);
    p.extend_from_slice(payload);
    p
}

/// Recomputes the header checksum of an IPv4 packet, e.g. after a test changed a header field
/// on purpose and wants only that field to be wrong.
pub fn fix_ipv4_checksum(packet: &mut [u8]) {
    let header_len = (usize::from(packet[0] & 0x0f) * 4).min(packet.len());
    packet[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum(&packet[..header_len]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
}

pub fn ipv6(src: [u8; 16], dst: [u8; 16], next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next_header, 64]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram with its checksum over the IPv4 pseudo-header.
pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, PROTO_UDP]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    udp(pseudo, sport, dport, payload)
}

/// A UDP datagram with its checksum over the IPv6 pseudo-header.
pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, PROTO_UDP]);
    udp(pseudo, sport, dport, payload)
}

fn udp(mut pseudo_header: Vec<u8>, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    pseudo_header.extend_from_slice(&d);
    // 0 means "no checksum" in UDP, so a sum of 0 is sent as its other form.
    let sum = match checksum(&pseudo_header) {
        0 => 0xffff,
        s => s,
    };
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

/// A TCP segment (PSH|ACK) with the given data offset in words, checksum left 0.
pub fn tcp4(sport: u16, dport: u16, doff: u8, payload: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.extend_from_slice(&1u32.to_be_bytes());
    s.push(doff << 4);
    s.push(0x18);
    s.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    s.extend_from_slice(payload);
    s
}

/// Sends raw Ethernet frames, each named for error messages, out of `ifname` in `netns`
/// (AF_PACKET), a few milliseconds apart.
pub fn send_frames(netns: &str, ifname: &str, frames: &[(String, Vec<u8>)]) -> Result<()> {
    let ifname = CString::new(ifname)?;
    in_netns(netns, move || {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        ensure!(ifindex != 0, "no interface {ifname:?}: {}", io::Error::last_os_error());
        for (what, frame) in frames {
            ensure!(frame.len() >= 14, "{what} is shorter than an Ethernet header");
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = u16::from_ne_bytes([frame[12], frame[13]]);
            addr.sll_ifindex = ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: the buffer and the address live across the call, lengths match.
            let sent = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            ensure!(sent == frame.len() as isize, "sending {what}: {}", io::Error::last_os_error());
            thread::sleep(Duration::from_millis(3));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], PROTO_UDP, &[1, 1, 1, 0], 7, 0, &[]);
        assert_eq!(checksum(&packet), 0);
        let datagram = udp4([10, 0, 0, 1], [10, 0, 0, 2], 1000, 53, &dns_query(1, "a.test", 1));
        let mut pseudo = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, PROTO_UDP];
        pseudo.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&datagram);
        assert_eq!(checksum(&pseudo), 0);
    }
}
