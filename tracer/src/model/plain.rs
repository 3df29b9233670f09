//! A packet from a capture another program wrote: only what its bytes say.

use std::net::SocketAddr;

use serde::Serialize;

use super::{dns::DnsMessage, packet::L4Proto, serde_forms};

/// A packet from a capture tracer did not write: what its bytes say. Serialised, the JSON
/// line `tracer report` prints for it: a `packet` line whose `stage` is null (only a
/// watch knows stages), with the IP fields when the bytes hold them.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename = "packet")]
pub(crate) struct PlainPacket {
    #[serde(rename = "time", serialize_with = "serde_forms::wall_time::serialize")]
    pub wall_time_ns: u64,
    #[serde(serialize_with = "serde_forms::null")]
    pub stage: (),
    pub ifname: Option<String>,
    #[serde(rename = "link_type")]
    pub linktype: i32,
    pub captured_len: usize,
    #[serde(skip)]
    pub original_len: u32,
    /// None when the link type is unknown or the bytes hold no IPv4/IPv6 UDP or TCP.
    #[serde(flatten)]
    pub ip: Option<PlainIp>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct PlainIp {
    #[serde(rename = "ip_version")]
    pub version: u8,
    #[serde(rename = "proto")]
    pub l4_proto: L4Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    #[serde(rename = "len")]
    pub ip_len: u32,
    pub dns: Option<DnsMessage>,
}
