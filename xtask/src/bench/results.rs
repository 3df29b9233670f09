//! What a bench run measured: the figures `report` turns into results.json and the table.

use super::{
    stats::{Accounting, DnsPerf, Summary},
    Mode,
};

/// Everything measured, for the report.
pub struct Measured {
    pub calibration: Calibration,
    pub attach: Vec<AttachTrial>,
    pub udp: Vec<UdpRun>,
    pub lossless: Vec<UdpRun>,
    pub xtables_monitor: Option<XtablesProbe>,
    pub dns: Vec<DnsRun>,
    /// Where each mode's time goes; an error does not spoil the other figures.
    pub profiles: Result<Vec<super::profile::ModeProfile>, String>,
}

/// What tracer makes of each packet of the load, measured at a rate far below any loss.
#[derive(Clone, Debug)]
pub struct Calibration {
    pub packets: u64,
    /// Packets that entered the bridge (sent, less the lab's own drops before it).
    pub bridged: u64,
    /// Packet lines, and how many of each stage.
    pub lines: u64,
    pub stages: Vec<(String, u64)>,
    /// Netfilter hooks the lines say the packets passed, per hook.
    pub hook_passes: u64,
    pub hooks: Vec<(String, u64)>,
    pub other_lines: u64,
    pub summary: Summary,
    /// Every bridged packet one record (read or lost) and a whole number of lines per record.
    pub exact: bool,
}

impl Calibration {
    pub fn lines_per_packet(&self) -> f64 {
        self.lines as f64 / self.packets.max(1) as f64
    }

    pub fn records_per_packet(&self) -> f64 {
        self.summary.records as f64 / self.packets.max(1) as f64
    }
}

#[derive(Clone, Debug)]
pub struct AttachTrial {
    /// Start of `ip netns exec ... tracer watch` to its "watching" line.
    pub ready_ms: f64,
    /// Start to the first packet line reaching the reader, with traffic already flowing.
    pub first_event_ms: Option<f64>,
}

/// What an observer (tracer or the TRACE reader) did during a run.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub lines: u64,
    /// `bridge-in` lines (tracer only).
    pub matched: u64,
    pub bytes: u64,
    pub summary: Option<Summary>,
    pub cpu_percent: Option<f64>,
    pub rss_kib: Option<u64>,
    pub exit: String,
}

#[derive(Clone, Debug)]
pub struct UdpRun {
    pub mode: Mode,
    pub round: usize,
    pub rate_limit: Option<u64>,
    pub sent: u64,
    pub send_errors: u64,
    pub secs: f64,
    pub received: u64,
    pub rcvbuf_errors: Option<u64>,
    pub pre_bridge_drops: u64,
    pub observed: Option<Observed>,
    pub accounting: Option<Accounting>,
}

impl UdpRun {
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.secs.max(1e-9)
    }
}

#[derive(Clone, Debug)]
pub struct DnsRun {
    pub mode: Mode,
    pub round: usize,
    pub perf: DnsPerf,
    pub observed: Option<Observed>,
}

/// `tracer watch --findings-only` on a broken node under the full DNS load: what it named.
#[derive(Clone, Debug)]
pub struct FindingsUnderLoad {
    /// The load, every reply of which skips conntrack.
    pub perf: DnsPerf,
    /// Queries sent from the client's second address during the load, how many of them the
    /// client saw refused with ICMP, and the packets the REJECT's counter says it matched.
    pub rejected_queries: u64,
    pub refused_seen: u64,
    pub rule_packets: u64,
    /// Answers the bridge forwarded to the client: each left without conntrack.
    pub answers_forwarded: u64,
    pub observed: Option<Observed>,
}

#[derive(Clone, Debug)]
pub struct XtablesProbe {
    pub sent: u64,
    pub secs: f64,
    pub received: u64,
    pub lines: u64,
    /// xtables-monitor exited on its own during the load, and after how long.
    pub exited_after_ms: Option<f64>,
    pub stderr: String,
}

/// What the soak saw: (seconds since start, VmRSS KiB) samples, dnsperf's figures, tracer's summary.
pub struct SoakRun {
    pub samples: Vec<(f64, u64)>,
    pub perf: DnsPerf,
    pub summary: Option<Summary>,
}
