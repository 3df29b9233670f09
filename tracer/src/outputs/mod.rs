//! Prints what a watch saw: packet lines and the closing summary, as text for people
//! or JSON Lines for programs.

pub mod json;
pub mod text;

use std::io;

use crate::{
    correlation::paths::{DroppedPacket, HookPass},
    events::TracedPacket,
    findings::Finding,
};

/// A traced packet that died in the kernel, as its line reports it.
pub struct DropLine<'a> {
    pub dropped: &'a DroppedPacket,
    pub wall_time_ns: u64,
    pub ifname: Option<String>,
    /// The bridge the device belongs to (or is).
    pub bridge: Option<String>,
    /// The kernel's drop reason without its `SKB_DROP_REASON_` prefix.
    pub reason: String,
    /// `reject` when the kernel answered with an ICMP error, else `drop`.
    pub verdict: &'static str,
    /// The ICMP answer in words, e.g. `host-prohibited`.
    pub icmp: Option<String>,
    /// The rule that did it, e.g. `filter/FORWARD #16`, when known.
    pub rule: Option<String>,
}

/// What a watch counted, printed when it ends.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub packets: u64,
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    pub duration_secs: f64,
    /// Distinct findings, and occurrences per kind (`conntrack_skip`, ...).
    pub findings: usize,
    pub finding_counts: Vec<(&'static str, u64)>,
    /// DNS queries dropped from tracking to keep memory bounded.
    pub evicted_flows: u64,
}

pub trait Output {
    /// `hooks` are the netfilter hooks the packet passed since it was last on the
    /// bridge path (empty when it passed none).
    fn packet(&mut self, packet: &TracedPacket, hooks: &[HookPass]) -> io::Result<()>;
    fn dropped(&mut self, line: &DropLine) -> io::Result<()>;
    /// A new finding (repeats are only counted in the summary).
    fn finding(&mut self, finding: &Finding) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// Called after each batch of events, so a reader at the other end of a pipe sees
    /// them promptly without a write per line.
    fn flush(&mut self) -> io::Result<()>;
}
