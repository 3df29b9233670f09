//! What a run reports as it goes, to whoever prints or records it: packet lines, dropped
//! packets, findings, unconfirmed findings and the closing summary. `render` prints them,
//! `capture` records them; `Tee` sends them to both.

use std::{collections::BTreeMap, io};

use serde::{Deserialize, Serialize};

use crate::{
    findings::{Finding, FindingKind, Unconfirmed},
    model::{packet::Verdict, pod::EndpointPods, serde_forms, TracedPacket},
    pipeline::paths::DroppedPacket,
};

/// A traced packet that died in the kernel, as its line reports it (live, or read back
/// from a capture). Serialised, it is the JSON `"stage": "dropped"` line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename = "packet")]
pub struct DropLine {
    #[serde(rename = "time", with = "serde_forms::wall_time")]
    pub wall_time_ns: u64,
    pub stage: DroppedStage,
    #[serde(flatten)]
    pub dropped: DroppedPacket,
    pub ifname: Option<String>,
    /// The pods holding the source and destination addresses.
    #[serde(flatten)]
    pub pods: EndpointPods,
    /// The bridge the device belongs to (or is).
    pub bridge: Option<String>,
    /// The kernel's drop reason without its `SKB_DROP_REASON_` prefix.
    #[serde(rename = "drop_reason")]
    pub reason: String,
    /// `reject` when the kernel answered with an ICMP error or a REJECT rule did it, else
    /// `drop`.
    pub verdict: Verdict,
    /// The ICMP answer in words, e.g. `host-prohibited`.
    pub icmp: Option<String>,
    /// The rule that did it, e.g. `filter/FORWARD #16`, when known.
    pub rule: Option<String>,
    /// Records of this packet's flow that may have been lost while it was followed: then
    /// the hook it stopped in is not certain, and no rule is named.
    pub records_lost: Option<u64>,
}

#[cfg(test)]
impl DropLine {
    /// `dropped` as a REJECT rule in filter/FORWARD answered it with ICMP host-prohibited
    /// on port veth-server of bridge cni0, for tests.
    pub fn example(dropped: &DroppedPacket) -> DropLine {
        DropLine {
            dropped: dropped.clone(),
            wall_time_ns: 1_800_000_000_009_000_000,
            ifname: Some("veth-server".to_string()),
            pods: Default::default(),
            bridge: Some("cni0".to_string()),
            reason: "NETFILTER_DROP".to_string(),
            stage: Default::default(),
            verdict: Verdict::Reject,
            icmp: Some("host-prohibited".to_string()),
            rule: Some("filter/FORWARD #16".to_string()),
            records_lost: None,
        }
    }
}

/// The stage of every dropped line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DroppedStage {
    #[default]
    Dropped,
}

/// What a watch counted, printed when it ends. Serialised, the JSON `"type": "summary"`
/// line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename = "summary")]
pub struct Summary {
    /// Packet lines: one per bridge stage a traced packet passed, and per drop.
    pub packets: u64,
    /// Records read from the kernel: one per packet's way through the node (its journey),
    /// per drop without one, per stray reply.
    #[serde(default)]
    pub records: u64,
    /// Records the kernel could not queue: each took its packet's lines with it.
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    #[serde(serialize_with = "serde_forms::millis::serialize")]
    pub duration_secs: f64,
    /// Distinct findings, and occurrences per kind (`conntrack_skip`, ...).
    pub findings: usize,
    pub finding_counts: BTreeMap<FindingKind, u64>,
    /// Findings not stated because records they rest on may have been lost, per kind.
    #[serde(default)]
    pub unconfirmed: u64,
    #[serde(default)]
    pub unconfirmed_counts: BTreeMap<FindingKind, u64>,
    /// Runs of the kernel programs the kernel skipped (already running on that CPU); also
    /// counted in `lost`.
    #[serde(default)]
    pub recursion_misses: u64,
    /// DNS queries dropped from tracking to keep memory bounded.
    pub evicted_flows: u64,
    /// Packet journeys that never ended (a fragment merged into another by reassembly),
    /// shown as far as they went.
    #[serde(default)]
    pub evicted_paths: u64,
    /// Occurrences of findings not kept because the finding log was full.
    #[serde(default)]
    pub findings_overflow: u64,
}

pub trait Output {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()>;
    fn dropped(&mut self, line: &DropLine) -> io::Result<()>;
    /// A new finding (repeats are only counted in the summary).
    fn finding(&mut self, finding: &Finding) -> io::Result<()>;
    /// Another occurrence of a finding already reported (given as first reported), or of
    /// one past the bound of distinct findings. Outputs for people and captures leave it
    /// to the summary; the metrics count it.
    fn repeated(&mut self, _finding: &Finding) -> io::Result<()> {
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
    fn summary(&mut self, summary: &Summary) -> io::Result<()>;
    /// Called after each batch of events, so a reader at the other end of a pipe sees
    /// them promptly without a write per line.
    fn flush(&mut self) -> io::Result<()>;
}

/// An output lent to a run that its owner reads afterwards (triage's collector).
impl<T: Output + ?Sized> Output for &mut T {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        (**self).packet(packet)
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        (**self).dropped(line)
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        (**self).finding(finding)
    }

    fn repeated(&mut self, finding: &Finding) -> io::Result<()> {
        (**self).repeated(finding)
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        (**self).unconfirmed(unconfirmed)
    }

    fn lost(&mut self, total: u64) {
        (**self).lost(total);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        (**self).summary(summary)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// The watch's main output (text or JSON on standard output) with a capture file
/// written beside it. The main output's errors end the watch as before; the capture's
/// first I/O error (a full disk, a lost mount) stops the capture with one warning on
/// standard error, and the watch goes on.
pub struct Tee<'a> {
    main: Box<dyn Output + 'a>,
    capture: Option<Box<dyn Output + 'a>>,
    /// Names the capture in the warning, e.g. its path.
    capture_name: String,
    /// The warning printed, if any (tests read it).
    pub warning: Option<String>,
}

impl<'a> Tee<'a> {
    pub fn new(main: Box<dyn Output + 'a>, capture: Option<(Box<dyn Output + 'a>, String)>) -> Tee<'a> {
        let (capture, capture_name) = match capture {
            Some((capture, name)) => (Some(capture), name),
            None => (None, String::new()),
        };
        Tee { main, capture, capture_name, warning: None }
    }

    /// Runs `write` on the capture, then on the main output, whose result is the call's: a
    /// capture that fails only stops the capture.
    fn write_both(&mut self, write: impl Fn(&mut dyn Output) -> io::Result<()>) -> io::Result<()> {
        self.on_capture(&write);
        write(self.main.as_mut())
    }

    /// Runs `write` on the capture; on its first error warns once and drops it.
    fn on_capture(&mut self, write: impl FnOnce(&mut dyn Output) -> io::Result<()>) {
        let Some(capture) = self.capture.as_mut() else { return };
        if let Err(err) = write(capture.as_mut()) {
            let warning = format!(
                "tracer: warning: writing {} failed ({err}): the capture stops here and keeps what was written before; the watch goes on",
                self.capture_name
            );
            eprintln!("{warning}");
            self.warning = Some(warning);
            self.capture = None;
        }
    }
}

impl Output for Tee<'_> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.write_both(|output| output.packet(packet))
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.write_both(|output| output.dropped(line))
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.write_both(|output| output.finding(finding))
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        self.write_both(|output| output.unconfirmed(unconfirmed))
    }

    fn repeated(&mut self, finding: &Finding) -> io::Result<()> {
        self.main.repeated(finding)
    }

    fn lost(&mut self, total: u64) {
        self.main.lost(total);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.write_both(|output| output.summary(summary))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_both(|output| output.flush())
    }
}
