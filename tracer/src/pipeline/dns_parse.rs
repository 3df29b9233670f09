//! DNS message decoding for the first bytes of a UDP or TCP payload copied by the kernel programs.
//!
//! The kernel copy is bounded, so messages are routinely cut off. A general-purpose DNS crate rejects
//! such messages outright; here the header is always reported and every later part (question, first
//! answer) is reported only when it lies completely inside the capture. Input comes from the
//! network: every read is bounds-checked and nothing in this module can panic.

use std::fmt::Write as _;

pub(crate) use crate::model::dns::{qtype_name, DnsAnswer, DnsMessage};

const HEADER_LEN: usize = 12;
/// RFC 1035 3.1: a name is at most 255 octets on the wire, length octets and the root label included.
const MAX_NAME_WIRE_LEN: usize = 255;
/// Every pointer must land strictly before the part of the name that contains it, so offsets only
/// decrease and a name cannot loop; this cap is a second, cheap guarantee against pathological input.
/// A 255-octet name has at most 127 labels, so even an encoder that points at every label separately
/// stays below it.
const MAX_POINTER_JUMPS: usize = 128;

const TYPE_A: u16 = 1;
const TYPE_NS: u16 = 2;
const TYPE_CNAME: u16 = 5;
const TYPE_PTR: u16 = 12;
const TYPE_AAAA: u16 = 28;

/// Decodes the DNS message at the start of `payload`, the L4 payload as captured (maybe truncated).
/// Over TCP the message has a 2-byte length prefix (RFC 1035 4.2.2).
///
/// Returns None when there is not even a complete 12-byte header.
pub(crate) fn parse(payload: &[u8], over_tcp: bool) -> Option<DnsMessage> {
    let msg = if over_tcp {
        let declared = usize::from(read_u16(payload, 0)?);
        let rest = payload.get(2..)?;
        // One segment may carry the start of the next message right after this one; compression
        // offsets and section walking must not run into it.
        rest.get(..declared).unwrap_or(rest)
    } else {
        payload
    };
    if msg.len() < HEADER_LEN {
        return None;
    }
    let id = read_u16(msg, 0)?;
    let flags = read_u16(msg, 2)?;
    let qdcount = read_u16(msg, 4)?;
    let ancount = read_u16(msg, 6)?;

    let (qname, qtype) = if qdcount > 0 {
        match read_name(msg, HEADER_LEN) {
            Some((name, end)) => (Some(name), read_u16(msg, end)),
            None => (None, None),
        }
    } else {
        (None, None)
    };

    Some(DnsMessage {
        id,
        qr: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: (flags & 0x0f) as u8,
        truncated: flags & FLAG_TC != 0,
        qname,
        qtype,
        answer_count: ancount,
        first_answer: first_answer(msg, qdcount, ancount),
    })
}

/// Opcodes in use (RFC 1035, 1996, 2136, 8490); IQUERY (1) is obsolete but harmless.
const KNOWN_OPCODES: [u8; 6] = [0, 1, 2, 4, 5, 6];
/// The TC bit of the flags: the message was truncated.
const FLAG_TC: u16 = 0x0200;
/// The Z bit of the flags, which every DNS implementation sends as zero.
const FLAG_Z: u16 = 0x0040;
/// A question takes at least 5 octets (root name, type, class), a record at least 11.
const MIN_QUESTION_LEN: usize = 5;
const MIN_RECORD_LEN: usize = 11;

/// Like [`parse`], but only for a message whose header is one a DNS implementation would
/// send: a known opcode, the Z bit clear, at most one question (exactly one in a standard
/// query, which carries no answers), and section counts that fit in `message_len`, the
/// message's real length (the capture may hold less). Traffic on a DNS port that is not
/// DNS (or not at a message boundary) rarely passes all of these.
pub(crate) fn parse_plausible(payload: &[u8], over_tcp: bool, message_len: usize) -> Option<DnsMessage> {
    let msg = if over_tcp { payload.get(2..)? } else { payload };
    let flags = read_u16(msg, 2)?;
    let qdcount = read_u16(msg, 4)?;
    let ancount = read_u16(msg, 6)?;
    let nscount = read_u16(msg, 8)?;
    let arcount = read_u16(msg, 10)?;
    let opcode = ((flags >> 11) & 0x0f) as u8;
    let query = flags & 0x8000 == 0;
    if !KNOWN_OPCODES.contains(&opcode) || flags & FLAG_Z != 0 || qdcount > 1 {
        return None;
    }
    if query && opcode == 0 && (qdcount != 1 || ancount != 0 || nscount != 0 || flags & 0x000f != 0) {
        return None;
    }
    let records = usize::from(ancount) + usize::from(nscount) + usize::from(arcount);
    let smallest = HEADER_LEN + usize::from(qdcount) * MIN_QUESTION_LEN + records * MIN_RECORD_LEN;
    if smallest > message_len {
        return None;
    }
    parse(payload, over_tcp)
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Skips the question section and decodes the first answer record; None when any of it is outside
/// the capture or malformed.
fn first_answer(msg: &[u8], qdcount: u16, ancount: u16) -> Option<DnsAnswer> {
    if ancount == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..qdcount {
        // Every question takes at least 5 bytes, so this ends quickly even for a huge QDCOUNT.
        let (_, end) = read_name(msg, pos)?;
        pos = end.checked_add(4)?;
    }
    let (_, owner_end) = read_name(msg, pos)?;
    let rtype = read_u16(msg, owner_end)?;
    // TYPE, CLASS (2), TTL (4), then RDLENGTH.
    let rdlength = usize::from(read_u16(msg, owner_end.checked_add(8)?)?);
    let rdata_start = owner_end.checked_add(10)?;
    let rdata_end = rdata_start.checked_add(rdlength)?;
    let rdata = msg.get(rdata_start..rdata_end)?;
    match rtype {
        TYPE_A => <[u8; 4]>::try_from(rdata).ok().map(|octets| DnsAnswer::Address(octets.into())),
        TYPE_AAAA => <[u8; 16]>::try_from(rdata).ok().map(|octets| DnsAnswer::Address(octets.into())),
        TYPE_CNAME | TYPE_PTR | TYPE_NS => {
            // The name may be compressed, but its in-place part must fill RDATA exactly.
            let (name, end) = read_name(msg, rdata_start)?;
            (end == rdata_end).then_some(DnsAnswer::Name(name))
        }
        other => Some(DnsAnswer::Other(other)),
    }
}

/// Reads the (possibly compressed) name at `start` in `msg` and returns it in presentation form
/// together with the offset just past the name's in-place bytes (after its first pointer, if any).
/// None when any byte of it lies outside the capture or the name is malformed.
fn read_name(msg: &[u8], start: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut pos = start;
    // Pointers must land strictly before the start of the run of labels they end, which rules out
    // both forward pointers and loops.
    let mut run_start = start;
    let mut end_in_place = None;
    let mut wire_len = 1; // the root label
    let mut jumps = 0;
    loop {
        let len_byte = *msg.get(pos)?;
        match len_byte & 0xc0 {
            0x00 => {
                // The two type bits are clear, so the length is at most 63 (RFC 1035 2.3.4).
                let len = usize::from(len_byte);
                if len == 0 {
                    if out.is_empty() {
                        out.push('.');
                    }
                    return Some((out, end_in_place.unwrap_or(pos + 1)));
                }
                wire_len += 1 + len;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return None;
                }
                let label = msg.get(pos + 1..pos + 1 + len)?;
                push_label(&mut out, label);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1)?;
                let target = (usize::from(len_byte & 0x3f) << 8) | usize::from(low);
                if target >= run_start || jumps >= MAX_POINTER_JUMPS {
                    return None;
                }
                jumps += 1;
                end_in_place.get_or_insert(pos + 2);
                run_start = target;
                pos = target;
            }
            // 0x40 (extended label, RFC 6891 deprecated it) and 0x80 are reserved: a length octet of
            // 64..=191 is never a valid label, which also covers labels longer than 63 bytes.
            _ => return None,
        }
    }
}

/// Appends one label and its trailing dot in zone-file presentation form (RFC 1035 5.1), so names
/// with dots, backslashes or control bytes inside labels stay unambiguous and safe to print.
fn push_label(out: &mut String, label: &[u8]) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x21..=0x7e => out.push(char::from(byte)),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('.');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dns::rcode_name;
    use std::net::IpAddr;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Real messages, captured with tcpdump on loopback in a throwaway network namespace: dig 9.18
    // asking dnsmasq 2.89 (--local=/example.test/ --host-record=example.test,10.0.0.1,fd00::1
    // --cname=a.example.test,b.example.test --cname=b.example.test,example.test
    // --ptr-record=1.0.0.10.in-addr.arpa,example.test).

    /// `dig example.test A`: the query, with an EDNS OPT record and a cookie.
    const QUERY_A: &[u8] = &[
        0xfe, 0x3b, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x08, 0xd6, 0x31, 0x3b, 0x46, 0x77, 0xc8, 0xf7, 0x00,
    ];

    /// Its answer: example.test. A 10.0.0.1, owner name compressed to the question.
    const RESPONSE_A: &[u8] = &[
        0xfe, 0x3b, 0x85, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];

    /// `dig example.test AAAA` answered with fd00::1.
    const RESPONSE_AAAA: &[u8] = &[
        0x02, 0x3d, 0x85, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70,
        0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x1c, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x1c, 0x00, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// `dig a.example.test A`: a.example.test. CNAME b.example.test., b.example.test. CNAME
    /// example.test., example.test. A 10.0.0.1. The second and third owners are pointers into the
    /// previous records' RDATA (0xc02c, 0xc048).
    const RESPONSE_CNAME_CHAIN: &[u8] = &[
        0x81, 0x41, 0x85, 0x80, 0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x01, 0x61, 0x07, 0x65, 0x78, 0x61,
        0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x05,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x01, 0x62, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65,
        0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0xc0, 0x2c, 0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e,
        0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0xc0, 0x48, 0x00, 0x01,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// `dig nothere.example.test A`: NXDOMAIN, no answers.
    const RESPONSE_NXDOMAIN: &[u8] = &[
        0x00, 0x70, 0x81, 0x83, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x07, 0x6e, 0x6f, 0x74, 0x68, 0x65,
        0x72, 0x65, 0x07, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01,
        0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    /// `dig -x 10.0.0.1`: 1.0.0.10.in-addr.arpa. PTR example.test.
    const RESPONSE_PTR: &[u8] = &[
        0xc0, 0x94, 0x85, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x01, 0x31, 0x01, 0x30, 0x01, 0x30,
        0x02, 0x31, 0x30, 0x07, 0x69, 0x6e, 0x2d, 0x61, 0x64, 0x64, 0x72, 0x04, 0x61, 0x72, 0x70, 0x61, 0x00, 0x00,
        0x0c, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x0c, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0e, 0x07, 0x65, 0x78,
        0x61, 0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
    ];

    /// `dig +tcp example.test A`: the query segment's payload, with its length prefix.
    const TCP_QUERY_A: &[u8] = &[
        0x00, 0x35, 0x56, 0x0b, 0x01, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61,
        0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04,
        0xd0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x08, 0x08, 0xab, 0x57, 0xd9, 0x69, 0x48, 0x4a,
        0xcc,
    ];

    /// Its answer segment.
    const TCP_RESPONSE_A: &[u8] = &[
        0x00, 0x39, 0x56, 0x0b, 0x85, 0x80, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x07, 0x65, 0x78, 0x61,
        0x6d, 0x70, 0x6c, 0x65, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x01, 0x00, 0x01, 0xc0, 0x0c, 0x00, 0x01,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x0a, 0x00, 0x00, 0x01, 0x00, 0x00, 0x29, 0x04, 0xd0, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    const ALL_REAL: &[&[u8]] =
        &[QUERY_A, RESPONSE_A, RESPONSE_AAAA, RESPONSE_CNAME_CHAIN, RESPONSE_NXDOMAIN, RESPONSE_PTR];

    /// A hand-built message: header with the given counts, then `body`.
    fn message(id: u16, flags: u16, qdcount: u16, ancount: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        for v in [id, flags, qdcount, ancount, 0, 0] {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(body);
        m
    }

    /// Wire form of a dotted name without compression.
    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// A resource record header (TYPE IN TTL=60 RDLENGTH) following an already written owner name.
    fn rr_fixed(rtype: u16, rdlength: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&60u32.to_be_bytes());
        out.extend_from_slice(&rdlength.to_be_bytes());
        out
    }

    #[test]
    fn real_query() {
        let m = parse(QUERY_A, false).unwrap();
        assert_eq!(
            m,
            DnsMessage {
                id: 0xfe3b,
                qr: false,
                opcode: 0,
                rcode: 0,
                truncated: false,
                qname: Some("example.test.".into()),
                qtype: Some(1),
                answer_count: 0,
                first_answer: None,
            }
        );
    }

    #[test]
    fn real_response_a() {
        let m = parse(RESPONSE_A, false).unwrap();
        assert_eq!(m.id, 0xfe3b);
        assert!(m.qr);
        assert_eq!(m.opcode, 0);
        assert_eq!(rcode_name(m.rcode), "NOERROR");
        assert_eq!(m.qname.as_deref(), Some("example.test."));
        assert_eq!(m.qtype, Some(1));
        assert_eq!(m.answer_count, 1);
        assert_eq!(m.first_answer, Some(DnsAnswer::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))));
    }

    #[test]
    fn real_response_aaaa() {
        let m = parse(RESPONSE_AAAA, false).unwrap();
        assert_eq!(m.qtype.map(qtype_name).as_deref(), Some("AAAA"));
        let want: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(m.first_answer, Some(DnsAnswer::Address(IpAddr::V6(want))));
        assert_eq!(m.first_answer.unwrap().to_string(), "fd00::1");
    }

    #[test]
    fn real_cname_chain_reports_the_first_record() {
        let m = parse(RESPONSE_CNAME_CHAIN, false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("a.example.test."));
        assert_eq!(m.answer_count, 3);
        assert_eq!(m.first_answer, Some(DnsAnswer::Name("b.example.test.".into())));
        // The later owner names are pointers into earlier RDATA; they must resolve too.
        assert_eq!(read_name(RESPONSE_CNAME_CHAIN, 60).unwrap(), ("b.example.test.".into(), 62));
        assert_eq!(read_name(RESPONSE_CNAME_CHAIN, 86).unwrap(), ("example.test.".into(), 88));
    }

    #[test]
    fn real_nxdomain() {
        let m = parse(RESPONSE_NXDOMAIN, false).unwrap();
        assert_eq!(m.id, 0x0070);
        assert!(m.qr);
        assert_eq!(m.rcode, 3);
        assert_eq!(rcode_name(m.rcode), "NXDOMAIN");
        assert_eq!(m.qname.as_deref(), Some("nothere.example.test."));
        assert_eq!(m.answer_count, 0);
        assert_eq!(m.first_answer, None);
    }

    #[test]
    fn real_ptr() {
        let m = parse(RESPONSE_PTR, false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("1.0.0.10.in-addr.arpa."));
        assert_eq!(m.qtype.map(qtype_name).as_deref(), Some("PTR"));
        assert_eq!(m.first_answer, Some(DnsAnswer::Name("example.test.".into())));
    }

    #[test]
    fn real_over_tcp() {
        let q = parse(TCP_QUERY_A, true).unwrap();
        assert_eq!((q.id, q.qr), (0x560b, false));
        assert_eq!(q.qname.as_deref(), Some("example.test."));
        let r = parse(TCP_RESPONSE_A, true).unwrap();
        assert_eq!((r.id, r.qr), (0x560b, true));
        assert_eq!(r.first_answer, Some(DnsAnswer::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))));
        // The same bytes without the prefix are the UDP form of the message.
        assert_eq!(parse(&TCP_RESPONSE_A[2..], false), Some(r.clone()));
        assert!(!r.truncated);
        // TC is the third bit of the second flags byte: a server that cut the answer sets it.
        let mut cut = TCP_RESPONSE_A[2..].to_vec();
        cut[2] |= 0x02;
        assert!(parse(&cut, false).is_some_and(|m| m.truncated && m.qr));
    }

    #[test]
    fn tcp_prefix_bounds_the_message() {
        // Too short for the prefix, or for a header after it.
        assert_eq!(parse(&[], true), None);
        assert_eq!(parse(&[0x00], true), None);
        assert_eq!(parse(&TCP_QUERY_A[..13], true), None);
        assert!(parse(&TCP_QUERY_A[..14], true).is_some());
        // A declared length below 12 cannot hold a header even if more bytes follow.
        let mut short = TCP_QUERY_A.to_vec();
        short[..2].copy_from_slice(&11u16.to_be_bytes());
        assert_eq!(parse(&short, true), None);
        // Two messages in one segment: the first one ends where its prefix says.
        let mut two = TCP_RESPONSE_A.to_vec();
        two.extend_from_slice(TCP_QUERY_A);
        assert_eq!(parse(&two, true), parse(TCP_RESPONSE_A, true));
        // A prefix declaring the message shorter than its answer: the answer is out of bounds.
        let mut cut = TCP_RESPONSE_A.to_vec();
        cut[..2].copy_from_slice(&40u16.to_be_bytes());
        let m = parse(&cut, true).unwrap();
        assert_eq!(m.qname.as_deref(), Some("example.test."));
        assert_eq!(m.first_answer, None);
    }

    #[test]
    fn truncated_at_every_length() {
        for whole in ALL_REAL {
            let full = parse(whole, false).unwrap();
            let qname_end = 12 + wire_name(full.qname.as_deref().unwrap()).len();
            for n in 0..=whole.len() {
                let got = parse(&whole[..n], false);
                if n < 12 {
                    assert_eq!(got, None, "{n} bytes");
                    continue;
                }
                let got = got.unwrap_or_else(|| panic!("header not parsed from {n} bytes"));
                assert_eq!(
                    (got.id, got.qr, got.opcode, got.rcode, got.answer_count),
                    (full.id, full.qr, full.opcode, full.rcode, full.answer_count)
                );
                assert_eq!(got.qname.is_some(), n >= qname_end, "qname from {n} bytes");
                assert_eq!(got.qtype.is_some(), n >= qname_end + 2, "qtype from {n} bytes");
                if got.qname.is_some() {
                    assert_eq!(got.qname, full.qname);
                }
                if got.first_answer.is_some() {
                    assert_eq!(got.first_answer, full.first_answer);
                }
            }
        }
        // Exactly where the first answer becomes visible: the end of its RDATA.
        for (whole, answer_end) in [(RESPONSE_A, 46), (RESPONSE_AAAA, 58), (RESPONSE_CNAME_CHAIN, 60)] {
            assert_eq!(parse(&whole[..answer_end - 1], false).unwrap().first_answer, None);
            assert!(parse(&whole[..answer_end], false).unwrap().first_answer.is_some());
        }
        // And the TCP form, prefix included.
        for n in 0..=TCP_RESPONSE_A.len() {
            let got = parse(&TCP_RESPONSE_A[..n], true);
            assert_eq!(got.is_some(), n >= 14, "{n} bytes over TCP");
        }
    }

    #[test]
    fn compressed_rdata_name() {
        // www.example.test. CNAME example.test., the target a pointer to the question's suffix.
        let mut body = wire_name("www.example.test.");
        body.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
        body.extend_from_slice(&[0xc0, 0x0c]);
        body.extend_from_slice(&rr_fixed(TYPE_CNAME, 2));
        body.extend_from_slice(&[0xc0, 0x10]); // 12 + 1 + 3: "example.test."
        let m = parse(&message(7, 0x8180, 1, 1, &body), false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("www.example.test."));
        assert_eq!(m.first_answer, Some(DnsAnswer::Name("example.test.".into())));

        // Labels followed by a pointer: "mail." + pointer to "example.test.".
        let mut body2 = body.clone();
        let len = body2.len();
        body2.truncate(len - 2);
        let rdlen_at = body2.len() - 2;
        body2[rdlen_at..].copy_from_slice(&7u16.to_be_bytes());
        body2.extend_from_slice(&[4, b'm', b'a', b'i', b'l', 0xc0, 0x10]);
        let m = parse(&message(7, 0x8180, 1, 1, &body2), false).unwrap();
        assert_eq!(m.first_answer, Some(DnsAnswer::Name("mail.example.test.".into())));

        // RDLENGTH longer than the name inside it is malformed.
        let mut body3 = body.clone();
        let rdlen_at = body3.len() - 4;
        body3[rdlen_at..rdlen_at + 2].copy_from_slice(&3u16.to_be_bytes());
        body3.push(0);
        assert_eq!(parse(&message(7, 0x8180, 1, 1, &body3), false).unwrap().first_answer, None);
    }

    #[test]
    fn other_answer_types_and_bad_address_lengths() {
        let mut body = wire_name("example.test.");
        body.extend_from_slice(&[0x00, 0x10, 0x00, 0x01]);
        body.extend_from_slice(&[0xc0, 0x0c]);
        body.extend_from_slice(&rr_fixed(16, 4));
        body.extend_from_slice(&[3, b'a', b'b', b'c']);
        let m = parse(&message(1, 0x8180, 1, 1, &body), false).unwrap();
        assert_eq!(m.first_answer, Some(DnsAnswer::Other(16)));
        assert_eq!(m.first_answer.unwrap().to_string(), "TXT");

        // An A record whose RDATA is not 4 bytes is not an address.
        let mut bad = wire_name("example.test.");
        bad.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
        bad.extend_from_slice(&[0xc0, 0x0c]);
        bad.extend_from_slice(&rr_fixed(TYPE_A, 5));
        bad.extend_from_slice(&[10, 0, 0, 1, 9]);
        assert_eq!(parse(&message(1, 0x8180, 1, 1, &bad), false).unwrap().first_answer, None);
    }

    #[test]
    fn several_questions_are_skipped_before_the_answer() {
        let mut body = wire_name("one.test.");
        body.extend_from_slice(&[0x00, 0x01, 0x00, 0x01]);
        body.extend_from_slice(&wire_name("two.test."));
        body.extend_from_slice(&[0x00, 0x1c, 0x00, 0x01]);
        body.extend_from_slice(&[0xc0, 0x0c]);
        body.extend_from_slice(&rr_fixed(TYPE_A, 4));
        body.extend_from_slice(&[192, 0, 2, 1]);
        let m = parse(&message(1, 0x8180, 2, 1, &body), false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("one.test."));
        assert_eq!(m.first_answer, Some(DnsAnswer::Address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))));
    }

    #[test]
    fn no_question() {
        // An answer-only message (as in some NOTIFY/UPDATE responses): answers start at byte 12.
        let mut body = wire_name("example.test.");
        body.extend_from_slice(&rr_fixed(TYPE_A, 4));
        body.extend_from_slice(&[10, 0, 0, 2]);
        let m = parse(&message(9, 0x8180, 0, 1, &body), false).unwrap();
        assert_eq!((m.qname, m.qtype), (None, None));
        assert_eq!(m.first_answer, Some(DnsAnswer::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))));
    }

    #[test]
    fn header_fields() {
        // QR=1, opcode 5 (UPDATE), AA, RCODE 5 (REFUSED).
        let m = parse(&message(0xbeef, 0x8000 | (5 << 11) | 0x0400 | 5, 0, 0, &[]), false).unwrap();
        assert_eq!((m.id, m.qr, m.opcode, m.rcode), (0xbeef, true, 5, 5));
        assert_eq!(rcode_name(m.rcode), "REFUSED");
        assert_eq!(parse(&[0; 11], false), None);
        assert!(parse(&[0; 12], false).is_some());
    }

    #[test]
    fn root_name() {
        // `dig . NS`
        let m = parse(&message(1, 0x0100, 1, 0, &[0, 0x00, 0x02, 0x00, 0x01]), false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("."));
        assert_eq!(m.qtype.map(qtype_name).as_deref(), Some("NS"));
    }

    #[test]
    fn unprintable_and_special_bytes_are_escaped() {
        let body = [5, b'a', b'.', b'\\', b' ', 0x07, 3, 0xff, b'x', 0x7f, 0, 0, 1, 0, 1];
        let m = parse(&message(1, 0x0100, 1, 0, &body), false).unwrap();
        assert_eq!(m.qname.as_deref(), Some("a\\.\\\\\\032\\007.\\255x\\127."));
    }

    #[test]
    fn compression_loop_is_rejected() {
        // A pointer to itself, and two pointers to each other.
        let self_loop = message(1, 0x0100, 1, 0, &[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(read_name(&self_loop, 12), None);
        assert_eq!(parse(&self_loop, false).unwrap().qname, None);

        let mut body = wire_name("a.test.");
        body.extend_from_slice(&[0, 1, 0, 1]);
        // Answer owner at 12 + 12 = 24: label "x" then a pointer to 24 (the name's own start).
        body.extend_from_slice(&[1, b'x', 0xc0, 24]);
        let m = message(1, 0x8180, 1, 1, &body);
        assert_eq!(read_name(&m, 24), None);
        assert_eq!(parse(&m, false).unwrap().first_answer, None);

        // Two names pointing at each other: the second jump would go forward again.
        let mut ping_pong = message(1, 0x0100, 1, 0, &[]);
        ping_pong.extend_from_slice(&[1, b'p', 0xc0, 16, 1, b'q', 0xc0, 12]);
        assert_eq!(read_name(&ping_pong, 16), None);
        assert_eq!(read_name(&ping_pong, 12), None);
    }

    #[test]
    fn forward_pointer_is_rejected() {
        // The question's name points at a valid name placed after it.
        let mut body = vec![0xc0, 14];
        body.extend_from_slice(&wire_name("fwd.test."));
        let m = message(1, 0x0100, 1, 0, &body);
        assert_eq!(parse(&m, false).unwrap().qname, None);
        // The same name reached directly is fine.
        assert_eq!(read_name(&m, 14).map(|(n, _)| n).as_deref(), Some("fwd.test."));
    }

    #[test]
    fn pointer_chains_resolve() {
        // "c." + ptr → "b." + ptr → "a.test.", each pointing strictly backwards.
        let mut m = message(1, 0x0100, 0, 0, &[]);
        m.extend_from_slice(&wire_name("a.test.")); // at 12
        m.extend_from_slice(&[1, b'b', 0xc0, 12]); // at 20
        m.extend_from_slice(&[1, b'c', 0xc0, 20]); // at 24
        assert_eq!(read_name(&m, 24), Some(("c.b.a.test.".into(), 28)));
    }

    #[test]
    fn label_lengths() {
        let mut ok = vec![63];
        ok.extend(std::iter::repeat_n(b'a', 63));
        ok.extend_from_slice(&[0, 0, 1, 0, 1]);
        let m = parse(&message(1, 0x0100, 1, 0, &ok), false).unwrap();
        assert_eq!(m.qname.map(|n| n.len()), Some(64));

        // 64 has the 0x40 type bit set: a reserved label type, so no 64-byte label can exist.
        let mut too_long = vec![64];
        too_long.extend(std::iter::repeat_n(b'a', 64));
        too_long.extend_from_slice(&[0, 0, 1, 0, 1]);
        let m = parse(&message(1, 0x0100, 1, 0, &too_long), false).unwrap();
        assert_eq!((m.qname, m.qtype), (None, None));

        // 0x80 is reserved too.
        let m = parse(&message(1, 0x0100, 1, 0, &[0x80, 0, 0, 1, 0, 1]), false).unwrap();
        assert_eq!(m.qname, None);
    }

    #[test]
    fn name_length_limit() {
        // Three 63-byte labels and one 61-byte label: 4 * 1 + 3 * 63 + 61 + 1 = 255 octets.
        let name_of = |last: usize| {
            let mut wire = Vec::new();
            for len in [63, 63, 63, last] {
                wire.push(len as u8);
                wire.extend(std::iter::repeat_n(b'z', len));
            }
            wire.push(0);
            wire
        };
        let at_limit = message(1, 0x0100, 1, 0, &name_of(61));
        assert_eq!(name_of(61).len(), 255);
        let qname = parse(&at_limit, false).unwrap().qname.unwrap();
        assert_eq!(qname.len(), 254);
        let over = message(1, 0x0100, 1, 0, &name_of(62));
        assert_eq!(parse(&over, false).unwrap().qname, None);

        // The limit counts the name as a whole, across pointers.
        let mut m = message(1, 0x0100, 0, 0, &[]);
        m.extend_from_slice(&name_of(61)[63 + 1..]); // 191 octets at 12
        m.extend_from_slice(&[63]);
        m.extend(std::iter::repeat_n(b'y', 63));
        m.extend_from_slice(&[0xc0, 12]); // 64 + 191 = 255
        let start = 12 + 191;
        assert!(read_name(&m, start).is_some());
        let mut m2 = message(1, 0x0100, 0, 0, &[]);
        m2.extend_from_slice(&name_of(62)[63 + 1..]); // 192 octets
        m2.extend_from_slice(&[63]);
        m2.extend(std::iter::repeat_n(b'y', 63));
        m2.extend_from_slice(&[0xc0, 12]);
        assert_eq!(read_name(&m2, 12 + 192), None);
    }

    #[test]
    fn type_and_rcode_names() {
        assert_eq!(qtype_name(1), "A");
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(65), "HTTPS");
        assert_eq!(qtype_name(64), "SVCB");
        assert_eq!(qtype_name(255), "ANY");
        assert_eq!(qtype_name(0), "TYPE0");
        assert_eq!(qtype_name(65535), "TYPE65535");
        assert_eq!(rcode_name(0), "NOERROR");
        assert_eq!(rcode_name(2), "SERVFAIL");
        assert_eq!(rcode_name(4), "NOTIMP");
        assert_eq!(rcode_name(12), "RCODE12");
        assert_eq!(rcode_name(200), "RCODE?");
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn check_invariants(buf: &[u8], over_tcp: bool) {
        let Some(m) = parse(buf, over_tcp) else {
            return;
        };
        if let Some(name) = &m.qname {
            assert!(name.ends_with('.'), "{name:?}");
            // 255 wire octets, each at most 4 bytes escaped.
            assert!(name.len() <= 4 * 255, "{}", name.len());
            assert!(name.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{name:?}");
        }
        assert!(m.qtype.is_none() || m.qname.is_some());
        assert!(m.opcode < 16 && m.rcode < 16);
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = Vec::new();
        for round in 0..200_000 {
            buf.clear();
            match round % 4 {
                // Pure noise.
                0 => {
                    let len = rng.below(600);
                    buf.extend((0..len).map(|_| rng.next() as u8));
                }
                // A plausible header with random counts, then bytes biased towards label
                // lengths, pointers and zeros so the name code is exercised in depth.
                1 => {
                    buf.extend_from_slice(&message(
                        rng.next() as u16,
                        rng.next() as u16,
                        rng.below(4) as u16,
                        rng.below(4) as u16,
                        &[],
                    ));
                    let len = rng.below(300);
                    for _ in 0..len {
                        let byte = match rng.below(6) {
                            0 => 0,
                            1 => 0xc0 | (rng.below(2) as u8),
                            2 => (rng.below(64)) as u8,
                            3 => rng.below(buf.len().max(1)) as u8,
                            _ => rng.next() as u8,
                        };
                        buf.push(byte);
                    }
                }
                // Real messages with a few bytes changed, then cut at a random length.
                _ => {
                    buf.extend_from_slice(ALL_REAL[rng.below(ALL_REAL.len())]);
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(buf.len());
                        buf[at] = rng.next() as u8;
                    }
                    let keep = rng.below(buf.len() + 1);
                    buf.truncate(keep);
                }
            }
            check_invariants(&buf, false);
            check_invariants(&buf, true);
        }
    }
}
