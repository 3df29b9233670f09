//! What watches a run: tracer, or the manual workflow's TRACE rules and trace reader. Each is
//! stopped, and its rules removed, when it is dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Result};
use tracer_tests::lab::Lab;

use super::{
    procs::{self, Pipeline},
    results::Observed,
    stats::{self, Summary},
};

/// A tracer or a trace reader attached for one run; stopped and its rules removed when dropped.
pub struct Observer<'a> {
    pub(super) pipeline: Option<Pipeline>,
    /// The producer is tracer, whose output must end in a summary.
    pub(super) tracer: bool,
    pub(super) _rules: Option<TraceRules<'a>>,
    /// The file it writes instead of output, read for what it lost once it stopped.
    pub(super) recording: Option<Recording>,
}

/// A capture file written by a run, removed once read.
pub enum Recording {
    /// tracer's pcapng, read back with this tracer's `report`.
    Tracer { file: PathBuf, tracer: String },
    /// tcpdump's pcap: tcpdump says on exit how many packets the kernel dropped.
    Tcpdump { file: PathBuf },
}

impl Recording {
    /// A summary like tracer's: for tracer, the one its capture recorded; for tcpdump, the
    /// packets it captured and, as lost, those the kernel dropped before it could.
    fn summary(&self, producer_stderr: &str) -> Result<Summary> {
        match self {
            Recording::Tracer { file, tracer } => {
                let out = Command::new(tracer).arg("report").arg(file).args(["--output", "json"]).output()?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                stdout.lines().rev().find_map(stats::parse_summary).ok_or_else(|| {
                    anyhow!("tracer report {}: no summary: {}", file.display(), String::from_utf8_lossy(&out.stderr))
                })
            }
            Recording::Tcpdump { .. } => {
                let count = |what: &str| {
                    producer_stderr.lines().find_map(|line| line.strip_suffix(what)?.trim().parse::<u64>().ok())
                };
                let (Some(captured), Some(dropped)) = (count("packets captured"), count("packets dropped by kernel"))
                else {
                    bail!("tcpdump printed no counts: {}", producer_stderr.trim());
                };
                Ok(Summary { packets: captured, records: captured, lost: dropped, ..Summary::default() })
            }
        }
    }

    fn file(&self) -> &Path {
        match self {
            Recording::Tracer { file, .. } | Recording::Tcpdump { file } => file,
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.file());
    }
}

impl Observer<'_> {
    pub(super) fn pid(&self) -> Option<u32> {
        self.pipeline.as_ref().map(|p| p.producer.pid())
    }

    pub(super) fn finish(mut self) -> Result<Option<(procs::Counted, Option<Summary>, String)>> {
        let Some(pipeline) = self.pipeline.take() else {
            return Ok(None);
        };
        let end = pipeline.finish()?;
        let summary = match self.recording.take() {
            Some(recording) => Some(recording.summary(&end.producer_stderr)?),
            None => stats::parse_summary(&end.counted.last_line),
        };
        let exit = format!("{}", end.producer_status);
        if summary.is_none() && self.tracer {
            bail!("tracer printed no summary ({exit}); {}", end.producer_stderr.trim());
        }
        Ok(Some((end.counted, summary, exit)))
    }

    /// Stops the observer and reports what it did over a run of `wall` seconds, given its CPU
    /// seconds before and after and its peak RSS.
    pub(super) fn observed(
        self,
        cpu_before: Option<f64>,
        cpu_after: Option<f64>,
        wall: f64,
        rss_kib: Option<u64>,
    ) -> Result<Option<Observed>> {
        Ok(self.finish()?.map(|(counted, summary, exit)| Observed {
            lines: counted.lines,
            matched: counted.matched,
            bytes: counted.bytes,
            summary,
            cpu_percent: match (cpu_before, cpu_after) {
                (Some(a), Some(b)) => Some((b - a) / wall * 100.0),
                _ => None,
            },
            rss_kib,
            exit,
        }))
    }
}

/// iptables TRACE rules in the node's raw table, deleted again when dropped.
pub struct TraceRules<'a> {
    pub(super) lab: &'a Lab,
    pub(super) rules: Vec<String>,
}

impl<'a> TraceRules<'a> {
    pub(super) fn add(lab: &'a Lab, port: u16) -> Result<TraceRules<'a>> {
        let mut added = TraceRules { lab, rules: Vec::new() };
        // Both directions, as someone debugging a service would trace it (tracer too watches the
        // port on either side).
        for side in ["--dport", "--sport"] {
            let rule = format!("PREROUTING -p udp {side} {port} -j TRACE");
            lab.iptables(&format!("-t raw -A {rule}"))?;
            added.rules.push(rule);
        }
        Ok(added)
    }
}

impl Drop for TraceRules<'_> {
    fn drop(&mut self) {
        for rule in self.rules.drain(..) {
            if let Err(e) = self.lab.iptables(&format!("-t raw -D {rule}")) {
                eprintln!("bench: removing TRACE rule: {e:#}");
            }
        }
    }
}
