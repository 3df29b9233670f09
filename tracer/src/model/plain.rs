//! A packet from a capture another program wrote: only what its bytes say.

use std::net::SocketAddr;

use super::dns::DnsMessage;

/// A packet from a capture tracer did not write: what its bytes say.
#[derive(Clone, Debug, PartialEq)]
pub struct PlainPacket {
    pub wall_time_ns: u64,
    pub ifname: Option<String>,
    pub linktype: i32,
    pub captured_len: usize,
    pub original_len: u32,
    /// None when the link type is unknown or the bytes hold no IPv4/IPv6 UDP or TCP.
    pub ip: Option<PlainIp>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlainIp {
    pub version: u8,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ip_len: u32,
    pub dns: Option<DnsMessage>,
}
