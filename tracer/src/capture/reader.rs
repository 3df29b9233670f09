//! Reads a capture back: the pcapng file `tracer watch --write` wrote (packets with
//! tracer's metadata, drop lines, findings, summary), or any other pcapng/pcap file as a
//! plain list of IP packets. Parsing only: what the records mean is decided in
//! `analysis`, printing is `render`.
//!
//! What tracer adds to standard pcapng, and why it is where it is:
//! - every packet block carries a human comment (opt_comment: what Wireshark and tshark
//!   show as `frame.comment`) and tracer's metadata as JSON in a local-use option
//!   ([`META_OPTION`]); local-use codes (top bit set) need no registered enterprise number
//!   and are skipped by readers that do not know them;
//! - a dropped packet is an Enhanced Packet Block with no bytes (the kernel gives none
//!   for it) on the interface it died on, so it shows up in Wireshark in sequence;
//! - findings and the summary are local-use blocks ([`RECORD_BLOCK`]) holding JSON:
//!   they belong to no packet, and other readers skip them.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use pcap_parser::{
    traits::{PcapNGPacketBlock, PcapReaderIterator},
    Block, LegacyPcapReader, Linktype, OptionCode, PcapBlockOwned, PcapError, PcapNGOption, PcapNGReader,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracer_common::Stage;

pub use crate::model::plain::{PlainIp, PlainPacket};
use crate::{
    model::packet::LossStamps,
    model::{
        netfilter::{DropEvent, IcmpEvent},
        packet::{stage_name, Conntrack, ConntrackEntry, FlowTuple, PacketEvent, IPPROTO_TCP, IPPROTO_UDP},
        InterfaceNames, TracedPacket,
    },
    node::sysctl::SysctlValue,
    pipeline::{
        dns_decode::DNS_PORT,
        dns_parse::{self as dns, DnsMessage},
        paths::{DroppedPacket, HookPass},
    },
    findings::{ChainRef, Evidence, Finding, FindingKind, NetfilterEvidence, RuleRef, Unconfirmed},
    model::hook::Hook,
};

/// Option code of tracer's JSON metadata in a section header or packet block. The top
/// bit marks a local-use code (pcapng, "Options").
pub const META_OPTION: u16 = 0x8A11;
/// Block type of tracer's findings and summary. The top bit marks a local-use type.
pub const RECORD_BLOCK: u32 = 0x8A11_0001;
/// Names the metadata's layout; a reader refuses a layout it does not know.
pub const FORMAT: &str = "tracer-capture/1";
/// `shb_userappl` of files tracer writes starts with this.
pub const USER_APPLICATION: &str = "tracer ";

/// Written once, in the section header: how the watch was run and the node settings
/// findings cite, as they were when it started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CaptureMeta {
    pub format: String,
    pub tracer_version: String,
    pub hostname: Option<String>,
    pub port: u16,
    pub snaplen: u32,
    pub dns_timeout_ns: u64,
    /// Ports besides 53 whose payloads the watch read as DNS (`--dns-port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_ports: Vec<u16>,
    /// Sysctl name → value (null: the file did not exist).
    pub sysctls: BTreeMap<String, Option<String>>,
}

/// Per-packet metadata: what the kernel told tracer about the packet beyond its bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockMeta {
    Packet(PacketMeta),
    Drop(DropMeta),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PacketMeta {
    /// Kernel monotonic clock, ns (queries are aged against it).
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub netns: u32,
    pub stage: String,
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub in_ifindex: u32,
    pub in_ifname: Option<String>,
    pub bridge: Option<String>,
    pub ip_len: u32,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Offset of the IP header in the packet bytes (0: no link-layer header).
    pub l3_offset: usize,
    pub conntrack: CtMeta,
    pub hooks: Vec<HookMeta>,
    /// Node settings a finding made at this packet cited, as read then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, Option<String>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CtMeta {
    None,
    Untracked,
    Attached { ctinfo: u8, status: Option<u32>, original: Option<TupleMeta>, reply: Option<TupleMeta> },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct TupleMeta {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HookMeta {
    pub hook: String,
    pub ipv6: bool,
    pub left: bool,
    pub conntrack: CtMeta,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DropMeta {
    pub timestamp_ns: u64,
    pub skb_id: u64,
    pub netns: u32,
    pub ifindex: u32,
    pub ifname: Option<String>,
    pub bridge: Option<String>,
    pub reason_code: u32,
    pub location: u64,
    pub reason: String,
    pub l4_proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub path: Vec<HookMeta>,
    pub icmp: Option<IcmpMeta>,
    pub verdict: String,
    pub icmp_name: Option<String>,
    pub rule: Option<String>,
    /// Records of the packet's flow that may have been lost while it was followed (no rule
    /// was named then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_lost: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IcmpMeta {
    pub timestamp_ns: u64,
    pub ifindex: u32,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// The body of a [`RECORD_BLOCK`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordMeta {
    /// A finding as the JSON output prints it (`render::json::finding_json`).
    Finding { wall_time_ns: u64, finding: Value },
    /// A finding the watch did not state because records it rests on may have been lost.
    Unconfirmed(Unconfirmed),
    Summary(SummaryMeta),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SummaryMeta {
    pub packets: u64,
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    pub duration_secs: f64,
    pub findings: usize,
    pub finding_counts: BTreeMap<String, u64>,
    pub evicted_flows: u64,
    #[serde(default)]
    pub evicted_paths: u64,
    #[serde(default)]
    pub findings_overflow: u64,
    #[serde(default)]
    pub unconfirmed: u64,
    #[serde(default)]
    pub unconfirmed_counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub recursion_misses: u64,
    /// Kernel monotonic clock when the watch ended: queries still unanswered then and
    /// older than the timeout are the last `dns_timeout`s.
    pub end_timestamp_ns: u64,
}

impl CtMeta {
    pub fn of(conntrack: &Conntrack) -> CtMeta {
        let tuple = |t: &Option<FlowTuple>| t.map(|t| TupleMeta { src: t.src, dst: t.dst });
        match conntrack {
            Conntrack::None => CtMeta::None,
            Conntrack::Untracked => CtMeta::Untracked,
            Conntrack::Attached(entry) => CtMeta::Attached {
                ctinfo: entry.ctinfo,
                status: entry.status,
                original: tuple(&entry.original),
                reply: tuple(&entry.reply),
            },
        }
    }

    fn conntrack(&self) -> Conntrack {
        let tuple = |t: &Option<TupleMeta>| t.map(|t| FlowTuple { src: t.src, dst: t.dst });
        match self {
            CtMeta::None => Conntrack::None,
            CtMeta::Untracked => Conntrack::Untracked,
            CtMeta::Attached { ctinfo, status, original, reply } => Conntrack::Attached(ConntrackEntry {
                ctinfo: *ctinfo,
                status: *status,
                original: tuple(original),
                reply: tuple(reply),
            }),
        }
    }
}

impl HookMeta {
    pub fn of(pass: &HookPass) -> HookMeta {
        HookMeta {
            hook: pass.hook.name().to_string(),
            ipv6: pass.ipv6,
            left: pass.left,
            conntrack: CtMeta::of(&pass.conntrack),
            in_ifindex: pass.in_ifindex,
            out_ifindex: pass.out_ifindex,
        }
    }

    fn pass(&self) -> Result<HookPass, String> {
        Ok(HookPass {
            hook: hook_named(&self.hook).ok_or_else(|| format!("unknown netfilter hook {:?}", self.hook))?,
            ipv6: self.ipv6,
            left: self.left,
            conntrack: self.conntrack.conntrack(),
            in_ifindex: self.in_ifindex,
            out_ifindex: self.out_ifindex,
        })
    }
}

fn hook_named(name: &str) -> Option<Hook> {
    Hook::ALL.into_iter().find(|hook| hook.name() == name)
}

fn stage_named(name: &str) -> Option<Stage> {
    [Stage::BridgeIn, Stage::BridgeOut, Stage::ToHost, Stage::FromHost].into_iter().find(|s| stage_name(*s) == name)
}

impl PacketMeta {
    pub fn of(packet: &TracedPacket, hooks: &[HookPass]) -> PacketMeta {
        let event = &packet.event;
        PacketMeta {
            timestamp_ns: event.timestamp_ns,
            skb_id: event.skb_id,
            netns: event.netns_inode,
            stage: stage_name(event.stage).to_string(),
            ifindex: event.ifindex,
            ifname: packet.names.ifname.clone(),
            in_ifindex: event.ingress_ifindex,
            in_ifname: packet.names.in_ifname.clone(),
            bridge: packet.names.bridge.clone(),
            ip_len: event.ip_len,
            l4_proto: event.l4_proto,
            src: event.src,
            dst: event.dst,
            l3_offset: event.l3_offset,
            conntrack: CtMeta::of(&event.conntrack),
            hooks: hooks.iter().map(HookMeta::of).collect(),
            sysctls: BTreeMap::new(),
        }
    }

    /// The packet as the watch saw it; its DNS message is parsed again from its bytes.
    fn packet(self, wall_time_ns: u64, captured: Vec<u8>) -> Result<ReadPacket, String> {
        let stage = stage_named(&self.stage).ok_or_else(|| format!("unknown stage {:?}", self.stage))?;
        let hooks = self.hooks.iter().map(HookMeta::pass).collect::<Result<Vec<_>, _>>()?;
        let headers = ip_headers(&captured, self.l3_offset);
        let event = PacketEvent {
            timestamp_ns: self.timestamp_ns,
            skb_id: self.skb_id,
            // Whether records were lost around this packet is recorded with the findings
            // the watch could not confirm, not per packet.
            loss: LossStamps::default(),
            netns_inode: self.netns,
            stage,
            ifindex: self.ifindex,
            ingress_ifindex: self.in_ifindex,
            ip_len: self.ip_len,
            l4_proto: self.l4_proto,
            src: self.src,
            dst: self.dst,
            conntrack: self.conntrack.conntrack(),
            dns: None,
            l4_offset: headers.map_or(captured.len(), |h| h.l4_offset),
            payload_offset: headers.map_or(captured.len(), |h| h.payload_offset),
            captured,
            l3_offset: self.l3_offset,
        };
        let names = InterfaceNames { ifname: self.ifname, in_ifname: self.in_ifname, bridge: self.bridge };
        let sysctls = self.sysctls.into_iter().map(|(name, value)| SysctlValue { name, value }).collect();
        Ok(ReadPacket { packet: TracedPacket { event, wall_time_ns, names }, hooks, sysctls })
    }
}

impl DropMeta {
    pub fn of(line: &crate::analysis::output::DropLine) -> DropMeta {
        let drop = &line.dropped.drop;
        DropMeta {
            timestamp_ns: drop.timestamp_ns,
            skb_id: drop.skb_id,
            netns: drop.netns_inode,
            ifindex: drop.ifindex,
            ifname: line.ifname.clone(),
            bridge: line.bridge.clone(),
            reason_code: drop.reason,
            location: drop.location,
            reason: line.reason.clone(),
            l4_proto: drop.l4_proto,
            src: drop.src,
            dst: drop.dst,
            path: line.dropped.path.iter().map(HookMeta::of).collect(),
            icmp: line.dropped.icmp.as_ref().map(|i| IcmpMeta {
                timestamp_ns: i.timestamp_ns,
                ifindex: i.ifindex,
                icmp_type: i.icmp_type,
                icmp_code: i.icmp_code,
            }),
            verdict: line.verdict.to_string(),
            icmp_name: line.icmp.clone(),
            rule: line.rule.clone(),
            records_lost: line.records_lost,
        }
    }

    fn drop(self, wall_time_ns: u64) -> Result<crate::analysis::output::DropLine, String> {
        let path = self.path.iter().map(HookMeta::pass).collect::<Result<Vec<_>, _>>()?;
        let verdict = match self.verdict.as_str() {
            "reject" => "reject",
            "drop" => "drop",
            other => return Err(format!("unknown verdict {other:?}")),
        };
        let drop = DropEvent {
            loss: LossStamps::default(),
            timestamp_ns: self.timestamp_ns,
            skb_id: self.skb_id,
            netns_inode: self.netns,
            ifindex: self.ifindex,
            reason: self.reason_code,
            location: self.location,
            l4_proto: self.l4_proto,
            src: self.src,
            dst: self.dst,
        };
        let icmp = self.icmp.map(|i| IcmpEvent {
            loss: LossStamps::default(),
            timestamp_ns: i.timestamp_ns,
            skb_id: self.skb_id,
            ifindex: i.ifindex,
            icmp_type: i.icmp_type,
            icmp_code: i.icmp_code,
            l4_proto: self.l4_proto,
            src: self.src,
            dst: self.dst,
        });
        Ok(crate::analysis::output::DropLine {
            dropped: DroppedPacket { drop, path, icmp, loss: Default::default() },
            wall_time_ns,
            ifname: self.ifname,
            bridge: self.bridge,
            reason: self.reason,
            verdict,
            icmp: self.icmp_name,
            rule: self.rule,
            records_lost: self.records_lost,
        })
    }
}

/// A packet line read back, with the hooks it passed and the node settings recorded
/// with it.
#[derive(Clone, Debug)]
pub struct ReadPacket {
    pub packet: TracedPacket,
    pub hooks: Vec<HookPass>,
    pub sysctls: Vec<SysctlValue>,
}

/// A finding as recorded. Netfilter findings are rebuilt in full (they cannot be made
/// again away from the node's rulesets); DNS findings are made again from the packets.
#[derive(Clone, Debug)]
pub struct ReadFinding {
    pub kind: String,
    pub wall_time_ns: u64,
    pub netfilter: Option<Finding>,
}

#[derive(Clone, Debug)]
pub enum Record {
    Packet(Box<ReadPacket>),
    Dropped(Box<crate::analysis::output::DropLine>),
    Finding(Box<ReadFinding>),
    Unconfirmed(Unconfirmed),
    Summary(SummaryMeta),
    Plain(PlainPacket),
}

/// Who wrote a capture.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    Tracer(CaptureMeta),
    /// Another program (its `shb_userappl`, when it said), or a classic pcap file.
    Other { application: Option<String>, pcap: bool },
}

/// Why a capture cannot be read (further). Each says what is wrong and what to do.
#[derive(Debug)]
pub enum CaptureError {
    Open { path: String, error: std::io::Error },
    Empty { path: String },
    NotACapture { path: String },
    /// The file ends inside a block: the program writing it stopped mid-write.
    CutOff { path: String, offset: u64 },
    Corrupt { path: String, offset: u64, detail: String },
    /// tracer's own metadata is there but cannot be read.
    Metadata { path: String, offset: u64, detail: String },
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Open { path, error } => write!(f, "cannot read {path}: {error}"),
            CaptureError::Empty { path } => write!(f, "{path} is empty: no capture was written to it"),
            CaptureError::NotACapture { path } => write!(
                f,
                "{path} is not a pcapng or pcap file: give a file written by `tracer watch --write` (or another capture tool)"
            ),
            CaptureError::CutOff { path, offset } => write!(
                f,
                "{path} is cut off at byte {offset}, inside a block (the program writing it stopped or the copy is incomplete): what came before is shown; copy the file again if it should be complete"
            ),
            CaptureError::Corrupt { path, offset, detail } => write!(
                f,
                "{path} is damaged at byte {offset} ({detail}): what came before is shown; the rest cannot be read"
            ),
            CaptureError::Metadata { path, offset, detail } => write!(
                f,
                "tracer's metadata in {path} at byte {offset} cannot be read ({detail}): the file was changed after tracer wrote it, or by a newer tracer"
            ),
        }
    }
}

impl std::error::Error for CaptureError {}

/// A pcapng section's interface, as packets refer to it.
struct Interface {
    linktype: Linktype,
    name: Option<String>,
    /// Timestamp units per second.
    units_per_sec: u64,
    offset_secs: i64,
}

/// Reads a capture record by record, in file order, in bounded memory.
pub struct CaptureReader {
    path: String,
    reader: Box<dyn PcapReaderIterator + Send>,
    origin: Origin,
    interfaces: Vec<Interface>,
    /// Classic pcap: the link type and timestamp units from its header.
    legacy: Option<(Linktype, u64)>,
    offset: u64,
    done: bool,
    pending: Option<Record>,
    /// The read buffer's size: a block must fit in it whole.
    capacity: usize,
}

/// Start size of the read buffer; a block larger than it (a jumbo frame with options)
/// grows it up to [`MAX_BLOCK`].
const BUFFER: usize = 1 << 14;
/// No block tracer writes comes near this; a larger one means a damaged file.
const MAX_BLOCK: usize = 64 << 20;

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xa1, 0xb2, 0xc3, 0xd4], [0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d], [0x4d, 0x3c, 0xb2, 0xa1]];

impl CaptureReader {
    pub fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|error| CaptureError::Open { path: shown.clone(), error })?;
        CaptureReader::from_reader(&shown, file)
    }

    /// Reads a capture from any byte stream; `name` names it in errors.
    pub fn from_reader<R: Read + Send + 'static>(name: &str, mut input: R) -> Result<CaptureReader, CaptureError> {
        let shown = name.to_string();
        let open = |error| CaptureError::Open { path: shown.clone(), error };
        // The parsers look at the header in their first read: hand them all of its
        // start at once (a plain read may return a few bytes).
        let mut start = vec![0u8; BUFFER];
        let mut got = 0;
        while got < start.len() {
            match input.read(&mut start[got..]).map_err(open)? {
                0 => break,
                n => got += n,
            }
        }
        start.truncate(got);
        let whole = got < BUFFER;
        if got == 0 {
            return Err(CaptureError::Empty { path: shown });
        }
        let magic = start.get(..4);
        let pcapng = magic == Some(&PCAPNG_MAGIC[..]);
        if !pcapng && !PCAP_MAGICS.iter().any(|m| magic == Some(&m[..])) {
            return Err(CaptureError::NotACapture { path: shown });
        }
        let input = std::io::Cursor::new(start).chain(input);
        let reader: Result<Box<dyn PcapReaderIterator + Send>, _> = if pcapng {
            PcapNGReader::new(BUFFER, input).map(|r| Box::new(r) as _)
        } else {
            LegacyPcapReader::new(BUFFER, input).map(|r| Box::new(r) as _)
        };
        let reader = reader.map_err(|err| match err {
            PcapError::Incomplete(_) | PcapError::Eof | PcapError::UnexpectedEof if whole => {
                CaptureError::CutOff { path: shown.clone(), offset: 0 }
            }
            PcapError::Incomplete(_) => CaptureError::Corrupt {
                path: shown.clone(),
                offset: 0,
                detail: format!("a section header larger than {} KiB", BUFFER >> 10),
            },
            PcapError::ReadError => CaptureError::Open { path: shown.clone(), error: std::io::Error::other("read failed") },
            _ => CaptureError::Corrupt { path: shown.clone(), offset: 0, detail: "its header does not fit".to_string() },
        })?;
        let mut capture = CaptureReader {
            path: shown,
            reader,
            origin: Origin::Other { application: None, pcap: !pcapng },
            interfaces: Vec::new(),
            legacy: None,
            offset: 0,
            done: false,
            pending: None,
            capacity: BUFFER,
        };
        // The first block says who wrote the file: read it now so `origin` is known
        // before any record is. (Only a header comes first; keep a record all the same.)
        capture.pending = capture.next_inner(true)?;
        Ok(capture)
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The next record; `None` at the end of the file. After an error there are no more.
    pub fn next_record(&mut self) -> Result<Option<Record>, CaptureError> {
        if let Some(record) = self.pending.take() {
            return Ok(Some(record));
        }
        self.next_inner(false)
    }

    /// `header_only`: stop after the first block (the section or pcap header).
    fn next_inner(&mut self, header_only: bool) -> Result<Option<Record>, CaptureError> {
        let mut stalls = 0;
        while !self.done {
            let (consumed, result) = match self.reader.next() {
                Ok((consumed, block)) => {
                    let header = matches!(block, PcapBlockOwned::NG(Block::SectionHeader(_)) | PcapBlockOwned::LegacyHeader(_));
                    let result = handle_block(block, &mut self.origin, &mut self.interfaces, &mut self.legacy);
                    (consumed, (header, result))
                }
                Err(PcapError::Eof) => {
                    self.done = true;
                    return Ok(None);
                }
                Err(PcapError::Incomplete(_)) => {
                    stalls += 1;
                    if stalls > 64 {
                        return Err(self.fail_cut_off());
                    }
                    if self.reader.refill().is_err() {
                        self.done = true;
                        return Err(CaptureError::Open { path: self.path.clone(), error: std::io::Error::other("read failed") });
                    }
                    continue;
                }
                Err(PcapError::UnexpectedEof) => return Err(self.fail_cut_off()),
                Err(PcapError::BufferTooSmall) => {
                    let size = self.capacity * 2;
                    if size > MAX_BLOCK || !self.reader.grow(size) {
                        let offset = self.offset;
                        return Err(self.fail_corrupt(offset, format!("a block larger than {} MiB", MAX_BLOCK >> 20)));
                    }
                    self.capacity = size;
                    if self.reader.refill().is_err() {
                        return Err(self.fail_cut_off());
                    }
                    continue;
                }
                Err(err) => {
                    let detail = match err {
                        PcapError::HeaderNotRecognized => "no section header".to_string(),
                        _ => "a block's lengths or fields do not fit".to_string(),
                    };
                    let offset = self.offset;
                    return Err(self.fail_corrupt(offset, detail));
                }
            };
            stalls = 0;
            let block_offset = self.offset;
            self.reader.consume(consumed);
            self.offset += consumed as u64;
            let (header, result) = result;
            match result {
                Ok(Some(record)) => return Ok(Some(record)),
                Ok(None) if header && header_only => return Ok(None),
                Ok(None) => {}
                Err(BlockError::Metadata(detail)) => {
                    self.done = true;
                    return Err(CaptureError::Metadata { path: self.path.clone(), offset: block_offset, detail });
                }
                Err(BlockError::Corrupt(detail)) => return Err(self.fail_corrupt(block_offset, detail)),
            }
        }
        Ok(None)
    }

    fn fail_cut_off(&mut self) -> CaptureError {
        self.done = true;
        CaptureError::CutOff { path: self.path.clone(), offset: self.offset }
    }

    fn fail_corrupt(&mut self, offset: u64, detail: String) -> CaptureError {
        self.done = true;
        CaptureError::Corrupt { path: self.path.clone(), offset, detail }
    }
}

/// Why a block that parsed as pcapng cannot be used.
enum BlockError {
    /// tracer's metadata is there but unreadable.
    Metadata(String),
    /// The block contradicts the file (e.g. names an interface never described).
    Corrupt(String),
}

impl From<String> for BlockError {
    fn from(detail: String) -> BlockError {
        BlockError::Metadata(detail)
    }
}

impl From<&str> for BlockError {
    fn from(detail: &str) -> BlockError {
        BlockError::Metadata(detail.to_string())
    }
}

/// One block: updates what the section knows, and returns a record when the block is one.
fn handle_block(
    block: PcapBlockOwned<'_>,
    origin: &mut Origin,
    interfaces: &mut Vec<Interface>,
    legacy: &mut Option<(Linktype, u64)>,
) -> Result<Option<Record>, BlockError> {
    match block {
        PcapBlockOwned::LegacyHeader(header) => {
            let units = if header.is_nanosecond_precision() { 1_000_000_000 } else { 1_000_000 };
            *legacy = Some((header.network, units));
            *origin = Origin::Other { application: None, pcap: true };
            Ok(None)
        }
        PcapBlockOwned::Legacy(frame) => {
            let Some((linktype, units)) = *legacy else { return Ok(None) };
            let data = frame.data.get(..frame.caplen as usize).unwrap_or(frame.data);
            let wall = u64::from(frame.ts_sec).saturating_mul(1_000_000_000)
                + u64::from(frame.ts_usec).saturating_mul(1_000_000_000 / units);
            Ok(Some(Record::Plain(plain_packet(wall, None, linktype, data, frame.origlen))))
        }
        PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
            // A new section starts over: its interfaces are its own.
            interfaces.clear();
            *origin = section_origin(&shb.options, shb.shb_userappl().and_then(Result::ok))?;
            Ok(None)
        }
        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
            interfaces.push(Interface {
                linktype: idb.linktype,
                name: idb.if_name().and_then(Result::ok).map(str::to_string),
                units_per_sec: idb.ts_resolution().filter(|u| *u > 0).unwrap_or(1_000_000),
                offset_secs: idb.ts_offset(),
            });
            Ok(None)
        }
        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
            let Some(interface) = interfaces.get(epb.if_id as usize) else {
                return Err(BlockError::Corrupt(format!("a packet refers to interface {} that was never described", epb.if_id)));
            };
            let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
            let wall = wall_ns(ts, interface.units_per_sec, interface.offset_secs);
            let meta = option_str(&epb.options, META_OPTION);
            match (&*origin, meta) {
                (Origin::Tracer(_), Some(meta)) => {
                    let meta: BlockMeta = serde_json::from_str(meta).map_err(|err| format!("packet metadata: {err}"))?;
                    match meta {
                        BlockMeta::Packet(meta) => Ok(Some(Record::Packet(Box::new(meta.packet(wall, epb.packet_data().to_vec())?)))),
                        BlockMeta::Drop(meta) => Ok(Some(Record::Dropped(Box::new(meta.drop(wall)?)))),
                    }
                }
                _ => Ok(Some(Record::Plain(plain_packet(wall, interface.name.clone(), interface.linktype, epb.packet_data(), epb.origlen)))),
            }
        }
        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
            // A simple packet has no timestamp and always belongs to the first interface.
            let Some(interface) = interfaces.first() else { return Ok(None) };
            let data = spb.packet_data();
            Ok(Some(Record::Plain(plain_packet(0, interface.name.clone(), interface.linktype, data, spb.origlen))))
        }
        PcapBlockOwned::NG(Block::Unknown(block)) if block.block_type == RECORD_BLOCK && matches!(origin, Origin::Tracer(_)) => {
            let text = std::str::from_utf8(block.data).map_err(|_| "a record block is not UTF-8".to_string())?;
            // The body is padded to 4 bytes with NULs, which JSON text never contains.
            let record: RecordMeta =
                serde_json::from_str(text.trim_end_matches('\0')).map_err(|err| format!("record block: {err}"))?;
            Ok(Some(match record {
                RecordMeta::Finding { wall_time_ns, finding } => Record::Finding(Box::new(read_finding(wall_time_ns, &finding)?)),
                RecordMeta::Unconfirmed(unconfirmed) => Record::Unconfirmed(unconfirmed),
                RecordMeta::Summary(summary) => Record::Summary(summary),
            }))
        }
        PcapBlockOwned::NG(_) => Ok(None),
    }
}

fn section_origin(options: &[PcapNGOption<'_>], application: Option<&str>) -> Result<Origin, String> {
    let tracer = application.is_some_and(|a| a.starts_with(USER_APPLICATION));
    match (tracer, option_str(options, META_OPTION)) {
        (true, Some(meta)) => {
            let meta: CaptureMeta = serde_json::from_str(meta).map_err(|err| format!("section metadata: {err}"))?;
            if meta.format != FORMAT {
                return Err(format!("layout {:?}, this tracer reads {FORMAT:?}", meta.format));
            }
            Ok(Origin::Tracer(meta))
        }
        _ => Ok(Origin::Other { application: application.map(str::to_string), pcap: false }),
    }
}

fn option_str<'a>(options: &'a [PcapNGOption<'_>], code: u16) -> Option<&'a str> {
    options.iter().find(|o| o.code == OptionCode(code)).and_then(|o| o.as_str().ok())
}

/// A pcapng timestamp in nanoseconds since the epoch, without overflow on odd units.
fn wall_ns(ts: u64, units_per_sec: u64, offset_secs: i64) -> u64 {
    let ns = u128::from(ts) * 1_000_000_000 / u128::from(units_per_sec.max(1));
    let offset = i128::from(offset_secs) * 1_000_000_000;
    u64::try_from((ns as i128).saturating_add(offset).max(0)).unwrap_or(u64::MAX)
}

/// Rebuilds a netfilter finding from its JSON (the fields README documents).
fn read_finding(wall_time_ns: u64, json: &Value) -> Result<ReadFinding, String> {
    let kind = json.get("kind").and_then(Value::as_str).ok_or("a finding without a kind")?.to_string();
    let netfilter = match kind.as_str() {
        "netfilter_reject" | "netfilter_drop" => Some(netfilter_finding(wall_time_ns, &kind, json)?),
        _ => None,
    };
    Ok(ReadFinding { kind, wall_time_ns, netfilter })
}

fn netfilter_finding(wall_time_ns: u64, kind: &str, json: &Value) -> Result<Finding, String> {
    let text = |field: &str| json.get(field).and_then(Value::as_str).map(str::to_string);
    let need = |field: &str| text(field).ok_or_else(|| format!("finding field {field:?} missing"));
    let addr = |field: &str| -> Result<SocketAddr, String> {
        need(field)?.parse().map_err(|_| format!("finding field {field:?} is not an address"))
    };
    let backend = |value: Option<&Value>| -> Result<&'static str, String> {
        let name = value.and_then(Value::as_str).unwrap_or_default();
        ["iptables-nft", "iptables-legacy", "nftables"]
            .into_iter()
            .find(|b| *b == name)
            .ok_or_else(|| format!("unknown firewall backend {name:?}"))
    };
    let rule = |value: &Value| -> Result<RuleRef, String> {
        Ok(RuleRef {
            backend: backend(value.get("backend"))?,
            table: value.get("table").and_then(Value::as_str).unwrap_or_default().to_string(),
            chain: value.get("chain").and_then(Value::as_str).unwrap_or_default().to_string(),
            position: value.get("rule").and_then(Value::as_u64).unwrap_or_default() as u32,
            handle: value.get("handle").and_then(Value::as_u64),
            text: value.get("rule_text").and_then(Value::as_str).unwrap_or_default().to_string(),
        })
    };
    let hook = hook_named(&need("hook")?).ok_or("unknown hook in a finding")?.name();
    let proto = if need("proto")? == "tcp" { "tcp" } else { "udp" };
    let has_rule = json.get("rule").is_some_and(|r| !r.is_null());
    let policy = match (has_rule, json.get("policy").and_then(Value::as_str)) {
        (false, Some(_)) => Some(ChainRef {
            backend: backend(json.get("backend"))?,
            table: need("table")?,
            chain: need("chain")?,
        }),
        _ => None,
    };
    let evidence = NetfilterEvidence {
        src: addr("src")?,
        dst: addr("dst")?,
        proto,
        hook,
        in_ifname: text("in_ifname"),
        out_ifname: text("out_ifname"),
        rule: if has_rule { Some(rule(json)?) } else { None },
        policy,
        candidates: json
            .get("candidates")
            .and_then(Value::as_array)
            .map(|all| all.iter().map(rule).collect::<Result<Vec<_>, _>>())
            .transpose()?
            .unwrap_or_default(),
        attribution: text("attribution").unwrap_or_default(),
        icmp: text("icmp"),
        drop_reason: text("drop_reason").unwrap_or_default(),
    };
    Ok(Finding {
        kind: if kind == "netfilter_reject" { FindingKind::NetfilterReject } else { FindingKind::NetfilterDrop },
        wall_time_ns,
        headline: need("headline")?,
        evidence: Evidence::Netfilter(evidence),
        explanation: text("explanation").unwrap_or_default(),
        fix: json
            .get("fix")
            .and_then(Value::as_array)
            .map(|lines| lines.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

/// Where the IP header starts for a link type, from the frame's own bytes.
fn l3_offset_for(linktype: Linktype, data: &[u8]) -> Option<usize> {
    let be16 = |at: usize| data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let ip_ethertype = |t: u16| t == 0x0800 || t == 0x86dd;
    match linktype {
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 => Some(0),
        Linktype::ETHERNET => {
            // Skip 802.1Q / 802.1ad tags.
            let mut at = 12;
            while matches!(be16(at)?, 0x8100 | 0x88a8) {
                at += 4;
            }
            ip_ethertype(be16(at)?).then_some(at + 2)
        }
        Linktype::LINUX_SLL => ip_ethertype(be16(14)?).then_some(16),
        Linktype::LINUX_SLL2 => ip_ethertype(be16(0)?).then_some(20),
        // BSD loopback: a 4-byte address family in the writer's byte order.
        Linktype::NULL | Linktype::LOOP => (data.len() >= 4).then_some(4),
        _ => None,
    }
}

/// What the IP and transport headers say.
#[derive(Clone, Copy, Debug, PartialEq)]
struct IpHeaders {
    version: u8,
    l4_proto: u8,
    src: SocketAddr,
    dst: SocketAddr,
    ip_len: u32,
    /// Where the IP header, the transport header and its payload start in the frame.
    l3_offset: usize,
    l4_offset: usize,
    payload_offset: usize,
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

fn ip_headers(data: &[u8], l3: usize) -> Option<IpHeaders> {
    let ip = data.get(l3..)?;
    let version = ip.first()? >> 4;
    let be16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
    let (src_ip, dst_ip, mut proto, mut at, ip_len) = match version {
        4 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let header = ip.get(..20)?;
            // A later fragment has no transport header to read.
            if be16(header, 6)? & 0x1fff != 0 || ihl < 20 {
                return None;
            }
            let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
            let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), header[9], ihl, u32::from(be16(header, 2)?))
        }
        6 => {
            let header = ip.get(..40)?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&header[8..24]);
            dst.copy_from_slice(&header[24..40]);
            let ip_len = u32::from(be16(header, 4)?) + 40;
            (IpAddr::V6(Ipv6Addr::from(src)), IpAddr::V6(Ipv6Addr::from(dst)), header[6], 40, ip_len)
        }
        _ => return None,
    };
    // Bounded: a handful of extension headers at most fit in a captured frame.
    for _ in 0..8 {
        match (version, proto) {
            (6, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS) => {
                let ext = ip.get(at..at + 2)?;
                proto = ext[0];
                at += (usize::from(ext[1]) + 1) * 8;
            }
            (6, IPV6_FRAGMENT) => {
                let ext = ip.get(at..at + 8)?;
                if be16(ext, 2)? & 0xfff8 != 0 {
                    return None;
                }
                proto = ext[0];
                at += 8;
            }
            _ => break,
        }
    }
    let l4 = ip.get(at..)?;
    let (sport, dport) = (be16(l4, 0)?, be16(l4, 2)?);
    let l4_len = match proto {
        IPPROTO_UDP => 8,
        IPPROTO_TCP => usize::from(l4.get(12)? >> 4) * 4,
        _ => return None,
    };
    Some(IpHeaders {
        version,
        l4_proto: proto,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        ip_len,
        l3_offset: l3,
        l4_offset: l3 + at,
        payload_offset: l3 + at + l4_len,
    })
}

/// DNS in a capture another program wrote: only on port 53 and with a plausible header,
/// as a watch reads it; over TCP only a segment that holds one whole message (a listing
/// follows no streams).
fn dns_of(data: &[u8], ip: &IpHeaders) -> Option<DnsMessage> {
    if ip.src.port() != DNS_PORT && ip.dst.port() != DNS_PORT {
        return None;
    }
    let payload = data.get(ip.payload_offset..).filter(|p| !p.is_empty())?;
    let transport_len = usize::try_from(ip.ip_len).ok()?.checked_sub(ip.l4_offset.checked_sub(ip.l3_offset)?)?;
    let payload_len = transport_len.checked_sub(ip.payload_offset - ip.l4_offset)?;
    if ip.l4_proto == IPPROTO_TCP {
        let declared = usize::from(u16::from_be_bytes([*payload.first()?, *payload.get(1)?]));
        (declared + 2 == payload_len).then(|| dns::parse_plausible(payload, true, declared)).flatten()
    } else {
        dns::parse_plausible(payload, false, payload_len)
    }
}

fn plain_packet(wall_time_ns: u64, ifname: Option<String>, linktype: Linktype, data: &[u8], original_len: u32) -> PlainPacket {
    let ip = l3_offset_for(linktype, data).and_then(|l3| ip_headers(data, l3)).map(|h| PlainIp {
        version: h.version,
        l4_proto: h.l4_proto,
        src: h.src,
        dst: h.dst,
        ip_len: h.ip_len,
        dns: dns_of(data, &h),
    });
    PlainPacket { wall_time_ns, ifname, linktype: linktype.0, captured_len: data.len(), original_len, ip }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame carrying a DNS message for `example.test. A`
    /// (a query, or a reply with no answers).
    pub fn dns_frame(src: SocketAddr, dst: SocketAddr, id: u16, qr: bool) -> Vec<u8> {
        let flags: u8 = if qr { 0x81 } else { 0x01 };
        let dns: Vec<u8> = [
            &[(id >> 8) as u8, id as u8, flags, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
            b"\x07example\x04test\x00",
            &[0, 1, 0, 1],
        ]
        .concat();
        let (IpAddr::V4(src_ip), IpAddr::V4(dst_ip)) = (src.ip(), dst.ip()) else { panic!("IPv4 only") };
        let udp_len = 8 + dns.len() as u16;
        let ip_len = 20 + udp_len;
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&src_ip.octets());
        frame.extend_from_slice(&dst_ip.octets());
        frame.extend_from_slice(&src.port().to_be_bytes());
        frame.extend_from_slice(&dst.port().to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(&dns);
        frame
    }

    fn dns_query_frame() -> Vec<u8> {
        dns_frame("10.244.0.5:41234".parse().expect("literal"), "10.96.0.10:53".parse().expect("literal"), 0x1a2b, false)
    }

    /// Reads every record; the error that ended the file, if one did.
    fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<CaptureError>) {
        let mut reader = match CaptureReader::from_reader("test", std::io::Cursor::new(bytes.to_vec())) {
            Ok(reader) => reader,
            Err(err) => return (Vec::new(), Some(err)),
        };
        let mut records = Vec::new();
        loop {
            match reader.next_record() {
                Ok(Some(record)) => records.push(record),
                Ok(None) => return (records, None),
                Err(err) => return (records, Some(err)),
            }
        }
    }

    #[test]
    fn a_capture_cut_at_every_length_reads_up_to_the_cut_without_panicking() {
        let bytes = crate::capture::writer::tests::sample_capture();
        let (whole, error) = read_all(&bytes);
        assert!(error.is_none(), "{error:?}");
        assert!(whole.len() >= 8, "{whole:?}");
        for len in 0..bytes.len() {
            let (records, error) = read_all(&bytes[..len]);
            assert!(records.len() <= whole.len());
            match error {
                // Cutting exactly between blocks leaves a shorter, valid capture.
                None => assert!(len > 0),
                Some(CaptureError::Empty { .. }) => assert_eq!(len, 0),
                Some(CaptureError::CutOff { offset, .. }) => assert!(offset as usize <= len),
                Some(CaptureError::NotACapture { .. }) => assert!(len < 4),
                Some(other) => panic!("a cut at {len} should be reported as cut off, not {other}"),
            }
        }
    }

    #[test]
    fn damaged_and_random_bytes_never_panic() {
        let bytes = crate::capture::writer::tests::sample_capture();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        // Every byte flipped once; every few set to a random value too (all of them
        // would make the test slow in a debug build without finding more).
        for at in 0..bytes.len() {
            let values = if at % 8 == 0 { vec![bytes[at] ^ 0xff, next() as u8] } else { vec![bytes[at] ^ 0xff] };
            for value in values {
                let mut damaged = bytes.clone();
                damaged[at] = value;
                let _ = read_all(&damaged);
            }
        }
        // Random bytes behind each magic, and random bytes alone.
        for round in 0..300 {
            let len = (next() % 4096) as usize;
            let mut noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let magic: &[u8] = match round % 3 {
                0 => &PCAPNG_MAGIC,
                1 => &PCAP_MAGICS[1],
                _ => &[],
            };
            noise.splice(0..0, magic.iter().copied());
            let _ = read_all(&noise);
        }
    }

    #[test]
    fn a_classic_pcap_lists_its_packets() {
        let frame = dns_query_frame();
        let mut bytes = Vec::new();
        for field in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        for field in [1_700_000_000u32, 250_000, frame.len() as u32, frame.len() as u32] {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(&frame);
        let (records, error) = read_all(&bytes);
        assert!(error.is_none(), "{error:?}");
        let [Record::Plain(packet)] = records.as_slice() else { panic!("one plain packet: {records:?}") };
        assert_eq!(packet.wall_time_ns, 1_700_000_000_250_000_000);
        assert_eq!(packet.ip.as_ref().and_then(|ip| ip.dns.as_ref()).map(|d| d.id), Some(0x1a2b));
    }

    #[test]
    fn headers_and_dns_from_an_ethernet_frame() {
        let frame = dns_query_frame();
        let plain = plain_packet(5, Some("eth0".into()), Linktype::ETHERNET, &frame, frame.len() as u32);
        let ip = plain.ip.expect("an IP packet");
        assert_eq!(ip.src.to_string(), "10.244.0.5:41234");
        assert_eq!(ip.dst.to_string(), "10.96.0.10:53");
        assert_eq!(ip.ip_len as usize, frame.len() - 14);
        let dns = ip.dns.expect("a DNS message");
        assert_eq!((dns.id, dns.qr, dns.qname.as_deref()), (0x1a2b, false, Some("example.test.")));
        // The same bytes without the Ethernet header, as raw IP.
        let raw = plain_packet(5, None, Linktype::RAW, &frame[14..], 0);
        assert_eq!(raw.ip.map(|ip| ip.src), Some(ip.src));
        assert!(plain_packet(5, None, Linktype(147), &frame, 0).ip.is_none(), "unknown link type");
    }

    #[test]
    fn ipv6_with_an_extension_header() {
        let mut packet = vec![0x60, 0, 0, 0, 0, 16, IPV6_DEST_OPTS, 64];
        packet.extend_from_slice(&"fd00::5".parse::<Ipv6Addr>().expect("literal").octets());
        packet.extend_from_slice(&"fd00::a".parse::<Ipv6Addr>().expect("literal").octets());
        packet.extend_from_slice(&[IPPROTO_UDP, 0, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
        let headers = ip_headers(&packet, 0).expect("headers");
        assert_eq!(headers.src.to_string(), "[fd00::5]:5000");
        assert_eq!(headers.payload_offset, 40 + 8 + 8);
    }

    #[test]
    fn timestamps_in_any_resolution() {
        assert_eq!(wall_ns(1_500_000, 1_000_000, 0), 1_500_000_000);
        assert_eq!(wall_ns(3, 1_000_000_000, 2), 2_000_000_003);
        assert_eq!(wall_ns(u64::MAX, 1, 0), u64::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn garbage_and_empty_files_are_refused_clearly() {
        let dir = std::env::temp_dir().join(format!("tracer-pcapng-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").expect("write");
        assert!(matches!(CaptureReader::open(&empty), Err(CaptureError::Empty { .. })));
        let text = dir.join("text");
        std::fs::write(&text, b"hello, this is not a capture\n").expect("write");
        let err = CaptureReader::open(&text).err().expect("refused");
        assert!(err.to_string().contains("not a pcapng or pcap file"), "{err}");
        let missing = dir.join("missing");
        assert!(matches!(CaptureReader::open(&missing), Err(CaptureError::Open { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
