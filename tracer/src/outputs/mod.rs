//! Prints what a watch saw: packet lines and the closing summary, as text for people
//! or JSON Lines for programs.

pub mod json;
pub mod text;

use std::io;

use crate::{events::TracedPacket, findings::Finding};

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
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()>;
    /// A new finding (repeats are only counted in the summary).
    fn finding(&mut self, finding: &Finding) -> io::Result<()>;
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// Called after each batch of events, so a reader at the other end of a pipe sees
    /// them promptly without a write per line.
    fn flush(&mut self) -> io::Result<()>;
}
