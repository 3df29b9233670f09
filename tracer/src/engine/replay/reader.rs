//! Reads a capture back: the pcapng file `tracer watch --write` wrote (packets with
//! tracer's metadata, drop lines, findings, summary), or any other pcapng/pcap file as a
//! plain list of IP packets. Parsing only: what the records mean is decided in
//! `analysis`, printing is for the sinks.
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

use std::{fs::File, io::Read, path::Path};

use pcap_parser::{
    traits::{PcapNGPacketBlock, PcapReaderIterator},
    Block, LegacyPcapReader, Linktype, OptionCode, PcapBlockOwned, PcapError, PcapNGOption, PcapNGReader,
};

use super::frames::{ip_headers, l3_offset_for, plain_packet};
use crate::model::plain::PlainPacket;
use crate::{
    model::sysctl::SysctlValue,
    schema::{
        capture::{BlockMeta, CaptureMeta, RecordMeta, FORMAT, META_OPTION, RECORD_BLOCK, USER_APPLICATION},
        finding::{Finding, Unconfirmed},
        packet::{DropLine, TracedPacket},
        summary::Summary,
    },
};

/// A packet line read back, with the node settings recorded with it.
#[derive(Clone, Debug)]
pub(crate) struct ReadPacket {
    /// With its hooks, and its bytes as captured.
    pub packet: TracedPacket,
    pub sysctls: Vec<SysctlValue>,
}

#[derive(Clone, Debug)]
pub(crate) enum Record {
    Packet(Box<ReadPacket>),
    Dropped(Box<DropLine>),
    Finding(Box<Finding>),
    Unconfirmed(Unconfirmed),
    Summary { summary: Box<Summary>, end_timestamp_ns: u64 },
    Plain(PlainPacket),
}

/// Who wrote a capture.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Origin {
    Tracer(CaptureMeta),
    /// Another program (its `shb_userappl`, when it said), or a classic pcap file.
    Other {
        application: Option<String>,
        pcap: bool,
    },
}

/// Why a capture cannot be read (further). Each says what is wrong and what to do.
#[derive(Debug)]
pub(crate) enum CaptureError {
    Open {
        path: String,
        error: std::io::Error,
    },
    Empty {
        path: String,
    },
    NotACapture {
        path: String,
    },
    /// The file ends inside a block: the program writing it stopped mid-write.
    CutOff {
        path: String,
        offset: u64,
    },
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
    },
    /// tracer's own metadata is there but cannot be read.
    Metadata {
        path: String,
        offset: u64,
        detail: String,
    },
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
pub(crate) struct CaptureReader {
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

pub(crate) const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
pub(crate) const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xa1, 0xb2, 0xc3, 0xd4], [0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d], [0x4d, 0x3c, 0xb2, 0xa1]];

impl CaptureReader {
    pub(crate) fn open(path: &Path) -> Result<CaptureReader, CaptureError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|error| CaptureError::Open { path: shown.clone(), error })?;
        CaptureReader::from_reader(&shown, file)
    }

    /// Reads a capture from any byte stream; `name` names it in errors.
    pub(crate) fn from_reader<R: Read + Send + 'static>(
        name: &str,
        mut input: R,
    ) -> Result<CaptureReader, CaptureError> {
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
            PcapError::ReadError => {
                CaptureError::Open { path: shown.clone(), error: std::io::Error::other("read failed") }
            }
            _ => {
                CaptureError::Corrupt { path: shown.clone(), offset: 0, detail: "its header does not fit".to_string() }
            }
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

    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The next record; `None` at the end of the file. After an error there are no more.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>, CaptureError> {
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
                    let header =
                        matches!(block, PcapBlockOwned::NG(Block::SectionHeader(_)) | PcapBlockOwned::LegacyHeader(_));
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
                        return Err(CaptureError::Open {
                            path: self.path.clone(),
                            error: std::io::Error::other("read failed"),
                        });
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
                return Err(BlockError::Corrupt(format!(
                    "a packet refers to interface {} that was never described",
                    epb.if_id
                )));
            };
            let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
            let wall = wall_ns(ts, interface.units_per_sec, interface.offset_secs);
            let meta = option_str(&epb.options, META_OPTION);
            match (&*origin, meta) {
                (Origin::Tracer(_), Some(meta)) => {
                    let meta: BlockMeta =
                        serde_json::from_str(meta).map_err(|err| format!("packet metadata: {err}"))?;
                    match meta {
                        BlockMeta::Packet { line, sysctls } => {
                            let packet = with_bytes(*line, wall, interface.linktype, epb.packet_data());
                            let sysctls =
                                sysctls.into_iter().map(|(name, value)| SysctlValue { name, value }).collect();
                            Ok(Some(Record::Packet(Box::new(ReadPacket { packet, sysctls }))))
                        }
                        BlockMeta::Drop { mut line } => {
                            line.wall_time_ns = wall;
                            Ok(Some(Record::Dropped(line)))
                        }
                    }
                }
                _ => Ok(Some(Record::Plain(plain_packet(
                    wall,
                    interface.name.clone(),
                    interface.linktype,
                    epb.packet_data(),
                    epb.origlen,
                )))),
            }
        }
        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
            // A simple packet has no timestamp and always belongs to the first interface.
            let Some(interface) = interfaces.first() else { return Ok(None) };
            let data = spb.packet_data();
            Ok(Some(Record::Plain(plain_packet(0, interface.name.clone(), interface.linktype, data, spb.origlen))))
        }
        PcapBlockOwned::NG(Block::Unknown(block))
            if block.block_type == RECORD_BLOCK && matches!(origin, Origin::Tracer(_)) =>
        {
            let text = std::str::from_utf8(block.data).map_err(|_| "a record block is not UTF-8".to_string())?;
            // The body is padded to 4 bytes with NULs, which JSON text never contains.
            let record: RecordMeta =
                serde_json::from_str(text.trim_end_matches('\0')).map_err(|err| format!("record block: {err}"))?;
            Ok(Some(match record {
                RecordMeta::Finding { finding } => Record::Finding(finding),
                RecordMeta::Unconfirmed(unconfirmed) => Record::Unconfirmed(unconfirmed),
                RecordMeta::Summary { summary, end_timestamp_ns } => {
                    Record::Summary { summary: Box::new(summary), end_timestamp_ns }
                }
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

/// A packet line read back with the bytes its block holds: the block's time is the line's
/// (a program that saved the file again may have shifted it), and where the headers start
/// in the bytes is read from the bytes.
fn with_bytes(mut packet: TracedPacket, wall_time_ns: u64, linktype: Linktype, data: &[u8]) -> TracedPacket {
    packet.wall_time_ns = wall_time_ns;
    let event = &mut packet.event;
    event.captured = bytes::Bytes::copy_from_slice(data);
    event.captured_at_stage = !data.is_empty();
    let headers = l3_offset_for(linktype, data).and_then(|l3| ip_headers(data, l3));
    event.l3_offset = headers.map_or(0, |h| h.l3_offset);
    event.l4_offset = headers.map_or(data.len(), |h| h.l4_offset);
    event.payload_offset = headers.map_or(data.len(), |h| h.payload_offset);
    packet
}

/// A pcapng timestamp in nanoseconds since the epoch, without overflow on odd units.
fn wall_ns(ts: u64, units_per_sec: u64, offset_secs: i64) -> u64 {
    let ns = u128::from(ts) * 1_000_000_000 / u128::from(units_per_sec.max(1));
    let offset = i128::from(offset_secs) * 1_000_000_000;
    u64::try_from((ns as i128).saturating_add(offset).max(0)).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{engine::replay::frames::tests::dns_query_frame, system::scratch_dir::ScratchDir};

    /// Reads every record; the error that ended the file, if one did.
    pub(crate) fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<CaptureError>) {
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
    fn timestamps_in_any_resolution() {
        assert_eq!(wall_ns(1_500_000, 1_000_000, 0), 1_500_000_000);
        assert_eq!(wall_ns(3, 1_000_000_000, 2), 2_000_000_003);
        assert_eq!(wall_ns(u64::MAX, 1, 0), u64::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn garbage_and_empty_files_are_refused_clearly() {
        let dir = ScratchDir::new("reader-garbage");
        let empty = dir.file("empty", b"");
        assert!(matches!(CaptureReader::open(&empty), Err(CaptureError::Empty { .. })));
        let text = dir.file("text", b"hello, this is not a capture\n");
        let err = CaptureReader::open(&text).err().expect("refused");
        assert!(err.to_string().contains("not a pcapng or pcap file"), "{err}");
        let missing = dir.join("missing");
        assert!(matches!(CaptureReader::open(&missing), Err(CaptureError::Open { .. })));
    }
}
