//! The one interface every sink implements: what a run reports as it goes, to whoever
//! prints or records it (packet lines, dropped packets, findings, unconfirmed findings and
//! the closing summary). The live loop and the replay of a capture call it; text, JSON,
//! the capture file and the metrics implement it.

use std::io;

use crate::{
    model::plain::PlainPacket,
    schema::{
        blind_spot::BlindSpot,
        finding::{Finding, Unconfirmed},
        packet::{DropLine, TracedPacket},
        summary::{Evictions, Summary},
    },
};

pub(crate) trait Sink {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()>;
    fn dropped(&mut self, line: &DropLine) -> io::Result<()>;
    /// A new finding (repeats are only counted in the summary).
    fn finding(&mut self, finding: &Finding) -> io::Result<()>;
    /// More occurrences (`times`) of a finding already reported (given as first reported).
    /// Outputs for people and captures leave them to the summary; the metrics count them.
    fn repeated(&mut self, _finding: &Finding, _times: u64) -> io::Result<()> {
        Ok(())
    }
    /// A finding not stated because records it rests on may have been lost. Outputs for
    /// people only count these (in the summary); a capture records each, so that a report
    /// of it counts the same.
    fn unconfirmed(&mut self, _unconfirmed: &Unconfirmed) -> io::Result<()> {
        Ok(())
    }
    /// The records lost so far in the kernel (ring buffer full), once a second while the
    /// watch runs; the summary has the final count.
    fn lost(&mut self, _total: u64) {}
    /// What the run has let go of so far to bound its memory, along with `lost`.
    fn evictions(&mut self, _so_far: &Evictions) {}
    /// What the run cannot see, once, before its first record (the summary repeats it).
    fn blind_spots(&mut self, _spots: &[BlindSpot]) {}
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// Called after each batch of events, so a reader at the other end of a pipe sees
    /// them promptly without a write per line.
    fn flush(&mut self) -> io::Result<()>;
}

/// An output lent to a run that its owner reads afterwards (triage's collector).
impl<T: Sink + ?Sized> Sink for &mut T {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        (**self).packet(packet)
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        (**self).dropped(line)
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        (**self).finding(finding)
    }

    fn repeated(&mut self, finding: &Finding, times: u64) -> io::Result<()> {
        (**self).repeated(finding, times)
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        (**self).unconfirmed(unconfirmed)
    }

    fn lost(&mut self, total: u64) {
        (**self).lost(total);
    }

    fn evictions(&mut self, so_far: &Evictions) {
        (**self).evictions(so_far);
    }

    fn blind_spots(&mut self, spots: &[BlindSpot]) {
        (**self).blind_spots(spots);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        (**self).summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// Where the packets of a capture another program wrote are listed: no stages, hooks or
/// findings, only what the packets themselves say.
pub(crate) trait PlainSink {
    fn packet(&mut self, packet: &PlainPacket) -> io::Result<()>;
    /// The end of the file: how many packets there were, and how many held IP.
    fn end(&mut self, packets: u64, ip_packets: u64) -> io::Result<()>;
}
