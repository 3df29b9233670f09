//! The replay source: a capture file read back (`reader`, with `frames` for the packets'
//! own bytes) and its packets handed to the same analysis a live watch uses, with the node
//! settings the capture recorded, so `tracer report` prints what the watch printed. A
//! capture another program wrote is listed packet by packet instead.

pub(crate) mod frames;
pub(crate) mod reader;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use self::reader::{CaptureError, CaptureReader, Origin, Record};
use crate::{
    analysis::{Analysis, AnalysisOptions},
    pipeline::loss::{LossWindows, LossWitness},
    schema::{
        finding::{Evidence, FindingKind, Unconfirmed},
        sink::{PlainSink, Sink},
        summary::Summary,
    },
};

/// An opened capture, before anything is printed: its origin decides which printer
/// the caller gives [`Report::run`] or [`Report::list`].
pub(crate) struct Report {
    reader: CaptureReader,
    path: PathBuf,
}

/// What the watch that wrote a capture could not confirm: a DNS finding is counted as
/// unconfirmed here exactly when it was there, so the report says what the watch said.
struct RecordedLoss {
    unconfirmed: HashSet<(FindingKind, Option<SocketAddr>, Option<u16>)>,
}

impl LossWitness for RecordedLoss {
    fn lost_since(&mut self, subject: &Unconfirmed, _windows: &LossWindows, _until_ns: u64) -> u64 {
        u64::from(self.unconfirmed.contains(&(subject.kind, subject.client, subject.query_id)))
    }
}

impl RecordedLoss {
    /// Reads the capture once for the unconfirmed findings it recorded: they come after
    /// the packets they are about, and the replay must know them when it gets there.
    fn of(path: &Path) -> RecordedLoss {
        let mut unconfirmed = HashSet::new();
        if let Ok(mut reader) = CaptureReader::open(path) {
            while let Ok(Some(record)) = reader.next_record() {
                if let Record::Unconfirmed(u) = record {
                    unconfirmed.insert((u.kind, u.client, u.query_id));
                }
            }
        }
        RecordedLoss { unconfirmed }
    }
}

/// How a report ended.
pub(crate) enum Ending {
    /// Everything readable was printed. `error` says why the file could not be read to
    /// its end (cut off, damaged), when it could not.
    Finished { error: Option<CaptureError>, notes: Vec<String> },
    /// Printing failed (the reader went away, or a write error): nothing more is printed.
    OutputFailed(std::io::Error),
}

impl Report {
    pub(crate) fn open(path: &Path) -> Result<Report, CaptureError> {
        Ok(Report { reader: CaptureReader::open(path)?, path: path.to_path_buf() })
    }

    pub(crate) fn origin(&self) -> &Origin {
        self.reader.origin()
    }

    /// A capture tracer wrote: replays its packets through the same analysis as a
    /// live watch, with the node settings the capture recorded.
    pub(crate) fn run(mut self, output: &mut dyn Sink) -> Ending {
        let Origin::Tracer(meta) = self.reader.origin().clone() else {
            return Ending::Finished { error: None, notes: vec!["not a capture tracer wrote".to_string()] };
        };
        let options = AnalysisOptions {
            dns_timeout: Duration::from_nanos(meta.dns_timeout_ns),
            dns_ports: meta.dns_ports.clone(),
        };
        let mut analysis = Analysis::replay(&options, meta.sysctls.into_iter().collect());
        let mut witness = RecordedLoss::of(&self.path);
        let mut recorded: Option<(Box<Summary>, u64)> = None;
        let mut span: Option<(u64, u64)> = None;
        let mut last_ts = 0u64;
        let mut without_metadata = 0u64;
        let mut error = None;
        loop {
            let record = match self.reader.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(err) => {
                    error = Some(err);
                    break;
                }
            };
            let printed = match record {
                Record::Packet(read) => {
                    let read = *read;
                    let timestamp_ns = read.packet.event.timestamp_ns;
                    last_ts = last_ts.max(timestamp_ns);
                    let wall = read.packet.wall_time_ns;
                    span = Some(span.map_or((wall, wall), |(first, last)| (first.min(wall), last.max(wall))));
                    // Queries older than the timeout at this packet's time were
                    // reported by the watch before it; so here.
                    analysis.expire(timestamp_ns);
                    analysis.recorded_settings(&read.sysctls);
                    // A findings-only watch's stray reply is judged as it was live.
                    let asked = read.packet.asked;
                    analysis
                        .settle(&mut witness, output)
                        .and_then(|()| match asked {
                            Some(asked) => analysis.stray_reply(read.packet, Some(asked), output),
                            None => analysis.packet_with_hooks(read.packet, output),
                        })
                        .and_then(|()| analysis.settle(&mut witness, output))
                }
                Record::Dropped(read) => {
                    last_ts = last_ts.max(read.drop.timestamp_ns);
                    analysis.expire(read.drop.timestamp_ns);
                    analysis.settle(&mut witness, output).and_then(|()| analysis.replay_drop(&read, output))
                }
                // Known from the first reading (RecordedLoss).
                Record::Unconfirmed(_) => Ok(()),
                // DNS findings are made again from the packets; netfilter findings need
                // the rulesets the capturing node had, so they are taken as recorded.
                Record::Finding(finding) => match finding.evidence {
                    Evidence::Netfilter(_) => analysis.replay_netfilter_finding(*finding, output),
                    // Made from the nat rules of the capturing node, like netfilter findings.
                    Evidence::Dns(_) if finding.kind == FindingKind::StaleConntrackDnat => {
                        analysis.replay_stale_finding(*finding, output)
                    }
                    _ => Ok(()),
                },
                Record::Summary { summary, end_timestamp_ns } => {
                    recorded = Some((summary, end_timestamp_ns));
                    Ok(())
                }
                Record::Plain(_) => {
                    without_metadata += 1;
                    Ok(())
                }
            };
            if let Err(err) = printed {
                return Ending::OutputFailed(err);
            }
        }
        let end_ts = recorded.as_ref().map_or(last_ts, |(_, end_ns)| (*end_ns).max(last_ts));
        let recorded = recorded.map(|(summary, _)| summary);
        analysis.expire(end_ts);
        if let Err(err) = analysis.finish_replay(&mut witness, output) {
            return Ending::OutputFailed(err);
        }
        let mut notes = Vec::new();
        if without_metadata > 0 {
            notes.push(format!(
                "{without_metadata} packets without tracer's metadata (added by another program?) are not shown"
            ));
        }
        if recorded.is_none() && error.is_none() {
            notes.push("the capture has no summary: the watch that wrote it did not end normally; packets lost in the kernel are unknown".to_string());
        }
        let summary = Summary {
            packets: analysis.stats.packets,
            records: recorded.as_ref().map_or(0, |s| s.records),
            lost: recorded.as_ref().map_or(0, |s| s.lost),
            lost_per_cpu: recorded.as_ref().map_or_else(Vec::new, |s| s.lost_per_cpu.clone()),
            duration_secs: recorded
                .as_ref()
                .map(|s| s.duration_secs)
                .unwrap_or_else(|| span.map_or(0.0, |(first, last)| (last - first) as f64 / 1e9)),
            findings: analysis.log.distinct(),
            finding_counts: analysis.log.counts().into_iter().collect(),
            evicted_flows: analysis.flows.evicted(),
            evicted_paths: recorded.as_ref().map_or(0, |s| s.evicted_paths),
            findings_forgotten: analysis.log.evicted + analysis.log.expired,
            unconfirmed: analysis.unconfirmed.total(),
            unconfirmed_counts: analysis.unconfirmed.counts().into_iter().collect(),
            recursion_misses: recorded.as_ref().map_or(0, |s| s.recursion_misses),
            blind_spots: recorded.as_ref().map_or_else(Vec::new, |s| s.blind_spots.clone()),
        };
        if let Err(err) = output.summary(&summary) {
            return Ending::OutputFailed(err);
        }
        Ending::Finished { error, notes }
    }

    /// A capture another program wrote: one plain line per packet.
    pub(crate) fn list(mut self, listing: &mut dyn PlainSink) -> Ending {
        let (mut packets, mut ip_packets) = (0u64, 0u64);
        let mut error = None;
        loop {
            match self.reader.next_record() {
                Ok(Some(Record::Plain(packet))) => {
                    packets += 1;
                    ip_packets += u64::from(packet.ip.is_some());
                    if let Err(err) = listing.packet(&packet) {
                        return Ending::OutputFailed(err);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(err) => {
                    error = Some(err);
                    break;
                }
            }
        }
        if let Err(err) = listing.end(packets, ip_packets) {
            return Ending::OutputFailed(err);
        }
        Ending::Finished { error, notes: Vec::new() }
    }
}
