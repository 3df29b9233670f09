//! Decides which traced payloads are DNS messages. A payload is read as DNS only when one
//! of its ports is a DNS port (53, or one given with `--dns-port`), its header is one a DNS
//! implementation would send, and, over TCP, only where a message starts: at the first
//! byte after the SYN and after each message of the stream. Anything else (HTTP, statsd,
//! the middle of a long TCP answer) is never mistaken for a query, which would otherwise
//! end as a `dns_timeout` no server could have answered.

use std::net::SocketAddr;

use super::{
    bounded::BoundedTable,
    dns_parse::{self as dns, DnsMessage},
};
use crate::model::packet::{L4Proto, TCP_FLAGS_AT, TCP_RST, TCP_SYN};

/// The DNS port every deployment uses.
pub(crate) const DNS_PORT: u16 = 53;

/// TCP streams on DNS ports followed at once.
const MAX_TCP_STREAMS: usize = 16_384;

/// One direction of a TCP connection on a DNS port.
#[derive(Clone, Copy, Debug)]
struct TcpStream {
    /// Sequence number of the 2-byte length that starts the next message.
    next_message: u32,
    /// Where the last message read started: the same segment seen again at another stage,
    /// or retransmitted, is read again.
    last_message: Option<u32>,
}

/// A transport segment as captured.
pub(crate) struct Segment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub l4_proto: L4Proto,
    /// The transport header and the payload bytes that were captured after it.
    pub bytes: &'a [u8],
    /// Length of the transport header in `bytes`.
    pub header_len: usize,
    /// The payload's real length (more than was captured when the copy was cut short).
    pub payload_len: usize,
}

pub(crate) struct DnsDecoder {
    ports: Vec<u16>,
    streams: BoundedTable<(SocketAddr, SocketAddr), TcpStream>,
}

impl DnsDecoder {
    /// DNS on port 53 and on `extra_ports`.
    pub(crate) fn new(extra_ports: &[u16]) -> DnsDecoder {
        let mut ports = vec![DNS_PORT];
        ports.extend(extra_ports.iter().copied().filter(|port| *port != DNS_PORT && *port != 0));
        DnsDecoder { ports, streams: BoundedTable::new(MAX_TCP_STREAMS) }
    }

    pub(crate) fn decode(&mut self, segment: &Segment) -> Option<DnsMessage> {
        if !self.ports.contains(&segment.src.port()) && !self.ports.contains(&segment.dst.port()) {
            return None;
        }
        match segment.l4_proto {
            L4Proto::Udp => {
                let payload = segment.bytes.get(segment.header_len..)?;
                dns::parse_plausible(payload, false, segment.payload_len)
            }
            L4Proto::Tcp => self.decode_tcp(segment),
        }
    }

    fn decode_tcp(&mut self, segment: &Segment) -> Option<DnsMessage> {
        let header = segment.bytes.get(..14)?;
        let sequence = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let flags = header[TCP_FLAGS_AT];
        let key = (segment.src, segment.dst);
        if flags & TCP_RST != 0 {
            self.streams.remove(&key);
            return None;
        }
        // Data on a SYN (TCP Fast Open) starts one past its sequence number.
        let data_start = if flags & TCP_SYN != 0 {
            let start = sequence.wrapping_add(1);
            self.streams.insert(key, TcpStream { next_message: start, last_message: None });
            start
        } else {
            sequence
        };
        if segment.payload_len == 0 {
            return None;
        }
        let payload = segment.bytes.get(segment.header_len..)?;
        // A stream whose SYN tracer did not see (it started before the watch) is never read:
        // there is no telling where its messages start.
        let stream = self.streams.get_mut(&key)?;
        if stream.last_message != Some(data_start) {
            if stream.next_message != data_start {
                return None;
            }
            match next_message_after(payload, segment.payload_len) {
                Some(length) => {
                    stream.last_message = Some(data_start);
                    stream.next_message = data_start.wrapping_add(length);
                }
                // Messages run on beyond what was captured of this segment: where the next
                // one starts is lost, and with it the stream.
                None => {
                    self.streams.remove(&key);
                    return None;
                }
            }
        }
        let declared = usize::from(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        dns::parse_plausible(payload, true, declared)
    }
}

/// Bytes from the start of a segment's payload to the first message that starts after it
/// (a segment may carry several length-prefixed messages, the last one maybe unfinished).
/// `None` when a length prefix inside the segment was not captured.
fn next_message_after(captured: &[u8], payload_len: usize) -> Option<u32> {
    let mut at = 0usize;
    while at < payload_len {
        let prefix = captured.get(at..at + 2)?;
        at += 2 + usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    }
    u32::try_from(at).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `example.test. A`, as dig sends it (no EDNS).
    fn query(id: u16) -> Vec<u8> {
        let mut msg = id.to_be_bytes().to_vec();
        msg.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        msg.extend(b"\x07example\x04test\x00\x00\x01\x00\x01");
        msg
    }

    fn udp(src: &str, dst: &str, payload: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>) {
        let mut bytes = vec![0u8; 8];
        bytes.extend_from_slice(payload);
        (src.parse().expect("literal"), dst.parse().expect("literal"), bytes)
    }

    fn decode_udp(decoder: &mut DnsDecoder, src: &str, dst: &str, payload: &[u8]) -> Option<DnsMessage> {
        let (src, dst, bytes) = udp(src, dst, payload);
        decoder.decode(&Segment {
            src,
            dst,
            l4_proto: L4Proto::Udp,
            bytes: &bytes,
            header_len: 8,
            payload_len: payload.len(),
        })
    }

    fn tcp(sequence: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; 20];
        bytes[4..8].copy_from_slice(&sequence.to_be_bytes());
        bytes[12] = 5 << 4;
        bytes[TCP_FLAGS_AT] = flags;
        bytes.extend_from_slice(payload);
        bytes
    }

    fn decode_tcp(decoder: &mut DnsDecoder, bytes: &[u8]) -> Option<DnsMessage> {
        decoder.decode(&Segment {
            src: "10.0.0.5:40000".parse().expect("literal"),
            dst: "10.0.0.7:53".parse().expect("literal"),
            l4_proto: L4Proto::Tcp,
            bytes,
            header_len: 20,
            payload_len: bytes.len() - 20,
        })
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(message);
        framed
    }

    #[test]
    fn dns_only_on_dns_ports() {
        let mut decoder = DnsDecoder::new(&[]);
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:53", &query(7)).is_some());
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:8125", &query(7)).is_none(), "statsd port");
        let mut decoder = DnsDecoder::new(&[5353]);
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:5353", &query(7)).is_some());
    }

    #[test]
    fn implausible_headers_on_port_53_are_not_dns() {
        let mut decoder = DnsDecoder::new(&[]);
        // Text that happens to reach port 53: "GET / HTTP/1.1".
        assert!(
            decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:53", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_none()
        );
        // A standard query that claims answers, or two questions.
        let mut bad = query(1);
        bad[7] = 1;
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:53", &bad).is_none());
        let mut bad = query(1);
        bad[5] = 2;
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:53", &bad).is_none());
        // Counts that cannot fit in the message.
        let mut bad = query(1);
        bad[11] = 200;
        assert!(decode_udp(&mut decoder, "10.0.0.5:40000", "10.0.0.7:53", &bad).is_none());
    }

    #[test]
    fn tcp_messages_only_where_they_start() {
        let mut decoder = DnsDecoder::new(&[]);
        let first = framed(&query(1));
        let second = framed(&query(2));
        assert!(decode_tcp(&mut decoder, &tcp(1000, TCP_SYN, &[])).is_none());
        let message = decode_tcp(&mut decoder, &tcp(1001, 0x18, &first)).expect("first message");
        assert_eq!(message.id, 1);
        // The same segment at another stage reads the same.
        assert_eq!(decode_tcp(&mut decoder, &tcp(1001, 0x18, &first)).map(|m| m.id), Some(1));
        // A segment that does not start where a message starts is not read, even when its
        // bytes look like one.
        assert!(decode_tcp(&mut decoder, &tcp(1002, 0x18, &first)).is_none());
        let next = 1001 + first.len() as u32;
        assert_eq!(decode_tcp(&mut decoder, &tcp(next, 0x18, &second)).map(|m| m.id), Some(2));
    }

    #[test]
    fn tcp_streams_begun_before_the_watch_are_not_read() {
        let mut decoder = DnsDecoder::new(&[]);
        assert!(decode_tcp(&mut decoder, &tcp(5000, 0x18, &framed(&query(3)))).is_none());
    }

    #[test]
    fn two_messages_in_one_segment_keep_the_stream_in_step() {
        let mut decoder = DnsDecoder::new(&[]);
        let mut both = framed(&query(1));
        both.extend(framed(&query(2)));
        decode_tcp(&mut decoder, &tcp(1, TCP_SYN, &[]));
        assert_eq!(decode_tcp(&mut decoder, &tcp(2, 0x18, &both)).map(|m| m.id), Some(1));
        let third = framed(&query(3));
        assert_eq!(decode_tcp(&mut decoder, &tcp(2 + both.len() as u32, 0x18, &third)).map(|m| m.id), Some(3));
    }
}
