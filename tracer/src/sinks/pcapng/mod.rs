//! Writes what a watch sees to a pcapng file (`tracer watch --write FILE`): the packet
//! bytes the kernel copied, one interface block per (network namespace, device, link
//! type), nanosecond timestamps, and on every packet a comment for people (stage, hook
//! path and verdict, findings) and tracer's metadata for `tracer report`. Drops,
//! findings and the summary go in too, so the file alone is enough for analysis. The
//! layout is `schema::capture`; `engine::replay::reader` reads it back.
//!
//! Blocks are serialized whole and appended; a flush after each batch of events puts
//! them in the file, so a watch that dies leaves a file readable up to its last
//! complete block.

pub(crate) mod file;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    io::{self, BufWriter, Write},
};

use pcap_parser::{
    Block, EnhancedPacketBlock, InterfaceDescriptionBlock, Linktype, OptionCode, PcapNGOption, SectionHeaderBlock,
    ToVec, UnknownBlock, BOM_MAGIC, EPB_MAGIC, IDB_MAGIC, SHB_MAGIC,
};

use tracer_common::Stage;

use crate::schema::capture::{BlockMeta, CaptureMeta, RecordMeta, META_OPTION, RECORD_BLOCK, USER_APPLICATION};
use crate::{
    model::{
        firewall::{Manager, Owner},
        monotonic_now_ns,
        netfilter::HookPass,
        packet::{stage_name, Conntrack},
        pod::with_pod,
    },
    schema::{
        finding::{Evidence, Finding, Unconfirmed},
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::Summary,
    },
    sinks::forms::{hook_path, owner_phrase},
};

/// What the section header says about the capture.
pub(crate) struct CaptureInfo {
    pub meta: CaptureMeta,
    /// `shb_os`, e.g. `Linux 6.18.0`.
    pub os: Option<String>,
}

/// A packet or drop block held back until the output is flushed (after each batch of
/// events): a finding made from this very packet (a reply that reveals a problem, a drop
/// a rule did) is decided at the end of the batch and belongs in its comment.
struct Pending {
    if_id: u32,
    wall_time_ns: u64,
    data: Vec<u8>,
    original_len: u32,
    comments: Vec<String>,
    meta: BlockMeta,
}

pub(crate) struct PcapngWriter<W: Write> {
    out: W,
    /// (netns, ifindex, name, link type) → interface id, in the order the blocks were written.
    pub(crate) interfaces: HashMap<(u32, u32, Option<String>, i32), u32>,
    pending: VecDeque<Pending>,
    snaplen: u32,
    /// An I/O error happened: nothing more is written, not even on drop.
    broken: bool,
}

/// LINKTYPE_ETHERNET and LINKTYPE_RAW (an IPv4 or IPv6 header first).
const ETHERNET: Linktype = Linktype::ETHERNET;
const RAW_IP: Linktype = Linktype::RAW;
/// LINKTYPE_USER0, for drop records, which have no bytes: Wireshark calls an empty
/// frame of any protocol link type malformed, an empty private-use frame it shows as
/// it is.
const NO_BYTES: Linktype = Linktype(147);

/// The comment of a stage block without bytes.
const NOT_THIS_STAGE: &str =
    "no bytes: the kernel copies a packet once, where its way through the node starts, and NAT changed its addresses after that";

/// Blocks held back at most: a finding is decided within the batch of events its packet
/// came in, and a batch that is larger is rare (the ring buffer overflowing).
const HELD_BLOCKS: usize = 1024;

impl PcapngWriter<BufWriter<File>> {
    /// Writes the capture into `file` (opened by `file`), starting with its
    /// section header.
    pub(crate) fn to_file(file: File, info: &CaptureInfo) -> io::Result<Self> {
        PcapngWriter::new(BufWriter::with_capacity(1 << 16, file), info)
    }
}

impl<W: Write> PcapngWriter<W> {
    pub(crate) fn new(out: W, info: &CaptureInfo) -> io::Result<Self> {
        let mut writer = PcapngWriter {
            out,
            interfaces: HashMap::new(),
            pending: VecDeque::new(),
            snaplen: info.meta.snaplen,
            broken: false,
        };
        let meta = serde_json::to_string(&info.meta).map_err(io::Error::other)?;
        let mut options = vec![
            text_option(OptionCode::Comment, &section_comment(&info.meta)),
            text_option(OptionCode::ShbUserAppl, &format!("{USER_APPLICATION}{}", info.meta.tracer_version)),
            text_option(OptionCode(META_OPTION), &meta),
        ];
        if let Some(os) = &info.os {
            options.push(text_option(OptionCode::ShbOs, os));
        }
        let shb = SectionHeaderBlock {
            block_type: SHB_MAGIC,
            block_len1: 0,
            bom: BOM_MAGIC,
            major_version: 1,
            minor_version: 0,
            // Unknown until the end, and the file is written as it goes.
            section_len: -1,
            options,
            block_len2: 0,
        };
        writer.block(Block::SectionHeader(shb))?;
        writer.out.flush()?;
        Ok(writer)
    }

    fn block(&mut self, mut block: Block<'_>) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("an earlier write failed"));
        }
        let bytes = block.to_vec().map_err(|err| io::Error::other(format!("serializing a pcapng block: {err:?}")))?;
        self.out.write_all(&bytes).inspect_err(|_| self.broken = true)
    }

    /// The interface id for a device, writing its description block the first time.
    fn interface(
        &mut self,
        netns: u32,
        ifindex: u32,
        name: Option<&str>,
        bridge: Option<&str>,
        linktype: Linktype,
    ) -> io::Result<u32> {
        let key = (netns, ifindex, name.map(str::to_string), linktype.0);
        if let Some(&id) = self.interfaces.get(&key) {
            return Ok(id);
        }
        let id = self.interfaces.len() as u32;
        let mut description = format!("network namespace {netns}, ifindex {ifindex}");
        if linktype == NO_BYTES {
            description.push_str(
                ", packets without bytes at this point (a drop, or a stage before NAT changed the addresses)",
            );
        }
        if let Some(bridge) = bridge {
            if Some(bridge) == name {
                description.push_str(", a Linux bridge");
            } else {
                description.push_str(&format!(", port of bridge {bridge}"));
            }
        }
        let mut options = vec![text_option(OptionCode::IfDescription, &description)];
        if let Some(name) = name {
            options.insert(0, text_option(OptionCode::IfName, name));
        }
        let idb = InterfaceDescriptionBlock {
            block_type: IDB_MAGIC,
            block_len1: 0,
            linktype,
            reserved: 0,
            snaplen: self.snaplen,
            options,
            block_len2: 0,
            // Nanoseconds: the kernel's timestamps are.
            if_tsresol: 9,
            if_tsoffset: 0,
        };
        self.block(Block::InterfaceDescription(idb))?;
        self.interfaces.insert(key, id);
        Ok(id)
    }

    /// Holds a block back; the oldest goes to the file when too many are held.
    fn hold(&mut self, pending: Pending) -> io::Result<()> {
        self.pending.push_back(pending);
        if self.pending.len() > HELD_BLOCKS {
            if let Some(oldest) = self.pending.pop_front() {
                self.write_block(oldest)?;
            }
        }
        Ok(())
    }

    fn write_pending(&mut self) -> io::Result<()> {
        while let Some(pending) = self.pending.pop_front() {
            self.write_block(pending)?;
        }
        Ok(())
    }

    fn write_block(&mut self, pending: Pending) -> io::Result<()> {
        let meta = serde_json::to_string(&pending.meta).map_err(io::Error::other)?;
        let mut options: Vec<PcapNGOption> =
            pending.comments.iter().map(|c| text_option(OptionCode::Comment, c)).collect();
        options.push(text_option(OptionCode(META_OPTION), &meta));
        let epb = EnhancedPacketBlock {
            block_type: EPB_MAGIC,
            block_len1: 0,
            if_id: pending.if_id,
            ts_high: (pending.wall_time_ns >> 32) as u32,
            ts_low: pending.wall_time_ns as u32,
            caplen: pending.data.len() as u32,
            origlen: pending.original_len.max(pending.data.len() as u32),
            data: &pending.data,
            options,
            block_len2: 0,
        };
        self.block(Block::EnhancedPacket(epb))
    }

    fn record(&mut self, record: &RecordMeta) -> io::Result<()> {
        let body = serde_json::to_vec(record).map_err(io::Error::other)?;
        // Padded with NULs to the 4-byte boundary blocks need; the reader trims them.
        let mut data = body;
        data.resize(data.len().next_multiple_of(4), 0);
        let block = UnknownBlock { block_type: RECORD_BLOCK, block_len1: 0, data: &data, block_len2: 0 };
        self.block(Block::Unknown(block))
    }
}

/// A string option; pcapng option lengths are 16 bits, so a longer text is cut (at a
/// character boundary) rather than written wrong.
pub(crate) fn text_option(code: OptionCode, text: &str) -> PcapNGOption<'static> {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes()[..end].to_vec();
    PcapNGOption { code, len: bytes.len() as u16, value: bytes.into() }
}

fn section_comment(meta: &CaptureMeta) -> String {
    let port = meta.port;
    let host = meta.hostname.as_deref().map(|h| format!(" on {h}")).unwrap_or_default();
    let settings: Vec<String> = meta
        .sysctls
        .iter()
        .map(|(name, value)| format!("{name} = {}", value.as_deref().unwrap_or("(absent)")))
        .collect();
    format!(
        "tracer watch{host}, {port}, snaplen {}. Packet comments name the stage, the netfilter hooks passed and the verdict; `tracer report FILE` shows the same lines and findings. Node settings at start: {}",
        meta.snaplen,
        if settings.is_empty() { "none read".to_string() } else { settings.join(", ") }
    )
}

fn conntrack_words(conntrack: &Conntrack) -> String {
    match conntrack {
        Conntrack::None => "none".to_string(),
        Conntrack::Untracked => "untracked".to_string(),
        Conntrack::Attached(entry) => {
            let mut words = vec![entry.ctinfo_name().to_string()];
            words.extend(entry.nat().iter().map(|n| n.to_string()));
            words.join(", ")
        }
    }
}

fn hooks_words(hooks: &[HookPass]) -> String {
    if hooks.is_empty() {
        "hooks: none".to_string()
    } else {
        format!("hooks: {}, verdict accept", hook_path(hooks))
    }
}

fn packet_comment(packet: &TracedPacket) -> String {
    let event = &packet.event;
    let name = |n: &Option<String>, index: u32| n.clone().unwrap_or_else(|| format!("if{index}"));
    let mut place = format!("{} on {}", stage_name(event.stage), name(&packet.names.ifname, event.ifindex));
    if event.ingress_ifindex != 0 && event.ingress_ifindex != event.ifindex {
        place.push_str(&format!(" (in on {})", name(&packet.names.in_ifname, event.ingress_ifindex)));
    }
    if let Some(bridge) = &packet.names.bridge {
        place.push_str(&format!(", bridge {bridge}"));
    }
    format!(
        "tracer: {place} | {} {} → {} | ct: {} | {}",
        event.l4_proto,
        with_pod(event.src, packet.pods.src_pod.as_ref()),
        with_pod(event.dst, packet.pods.dst_pod.as_ref()),
        conntrack_words(&event.conntrack),
        hooks_words(&packet.hooks)
    )
}

/// The comment of a drop block; `owner` is the owner of the rule that did it, once its
/// finding names one.
fn drop_comment(line: &DropLine, owner: Option<&Owner>) -> String {
    let drop = &line.drop;
    let mut place = format!("dropped on {}", line.ifname.clone().unwrap_or_else(|| format!("if{}", drop.ifindex)));
    if let Some(bridge) = &line.bridge {
        place.push_str(&format!(", bridge {bridge}"));
    }
    let path = hook_path(&line.path);
    let owned = owner
        .filter(|owner| owner.manager != Manager::Unknown)
        .map(|owner| format!(", written by {}", owner_phrase(owner)))
        .unwrap_or_default();
    let by = line.rule.as_ref().map(|r| format!(" by {r}{owned}")).unwrap_or_default();
    let icmp = line.icmp.as_ref().map(|i| format!(", ICMP {i}")).unwrap_or_default();
    format!(
        "tracer: {place} | {} → {} | hooks: {}, verdict {}{by} | {}{icmp} | no bytes: the kernel reports a drop without the packet",
        with_pod(drop.src, line.pods.src_pod.as_ref()),
        with_pod(drop.dst, line.pods.dst_pod.as_ref()),
        if path.is_empty() { "none".to_string() } else { path },
        line.verdict.name(),
        line.reason
    )
}

impl<W: Write> Sink for PcapngWriter<W> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        let event = &packet.event;
        // The kernel copies a packet's bytes once, where its way starts: a stage after NAT
        // changed its addresses gets no bytes rather than a frame it never was; its line, in
        // the metadata, says what it was.
        let (linktype, data) = match event.captured_at_stage {
            true if event.l3_offset > 0 => (ETHERNET, event.captured.to_vec()),
            true => (RAW_IP, event.captured.to_vec()),
            false => (NO_BYTES, Vec::new()),
        };
        let if_id = self.interface(
            event.netns_inode,
            event.ifindex,
            packet.names.ifname.as_deref(),
            packet.names.bridge.as_deref(),
            linktype,
        )?;
        let original_len = if data.is_empty() { 0 } else { (event.l3_offset as u32).saturating_add(event.ip_len) };
        let mut comments = vec![packet_comment(packet)];
        if data.is_empty() {
            comments.push(NOT_THIS_STAGE.to_string());
        }
        self.hold(Pending {
            if_id,
            wall_time_ns: packet.wall_time_ns,
            data,
            original_len,
            comments,
            meta: BlockMeta::Packet { line: Box::new(packet.clone()), sysctls: BTreeMap::new() },
        })
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        let drop = &line.drop;
        let if_id =
            self.interface(drop.netns_inode, drop.ifindex, line.ifname.as_deref(), line.bridge.as_deref(), NO_BYTES)?;
        self.hold(Pending {
            if_id,
            wall_time_ns: line.wall_time_ns,
            data: Vec::new(),
            original_len: 0,
            comments: vec![drop_comment(line, None)],
            meta: BlockMeta::Drop { line: Box::new(line.clone()) },
        })
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        // Only a finding a held-back block itself reveals goes into its comment: a reply
        // from the wrong source, a drop by a rule. A timeout is about no packet.
        let revealing = self.pending.iter_mut().rev().find(|pending| match (&finding.evidence, &pending.meta) {
            (Evidence::Dns(dns), BlockMeta::Packet { line, .. }) => {
                let event = &line.event;
                dns.actual_source == Some(event.src) && event.dst == dns.client && event.stage == Stage::BridgeOut
            }
            (Evidence::Netfilter(nf), BlockMeta::Drop { line }) => {
                let drop = &line.drop;
                drop.src == nf.src && drop.dst == nf.dst
            }
            _ => false,
        });
        if let Some(pending) = revealing {
            if let (Evidence::Dns(dns), BlockMeta::Packet { sysctls, .. }) = (&finding.evidence, &mut pending.meta) {
                // What `tracer report` cites when it makes this finding again.
                *sysctls = dns.sysctls.iter().map(|s| (s.name.clone(), s.value.clone())).collect();
            }
            name_owner(pending, finding);
            pending.comments.push(format!("tracer FINDING {}: {}", finding.kind.name(), finding.headline));
        }
        self.write_pending()?;
        self.record(&RecordMeta::Finding { finding: Box::new(finding.clone()) })
    }

    fn repeated(&mut self, finding: &Finding, _times: u64) -> io::Result<()> {
        // A repeat is given as first reported, from another source port: the drop it is
        // about has the same source address and destination.
        let Evidence::Netfilter(nf) = &finding.evidence else { return Ok(()) };
        let repeat = self.pending.iter_mut().rev().find(|pending| {
            matches!(&pending.meta, BlockMeta::Drop { line } if line.drop.src.ip() == nf.src.ip() && line.drop.dst == nf.dst)
        });
        if let Some(pending) = repeat {
            name_owner(pending, finding);
        }
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.write_pending()?;
        self.record(&RecordMeta::Summary { summary: summary.clone(), end_timestamp_ns: monotonic_now_ns() })?;
        self.flush()
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        self.write_pending()?;
        self.record(&RecordMeta::Unconfirmed(unconfirmed.clone()))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush().inspect_err(|_| self.broken = true)
    }
}

/// Puts the owner of the rule a netfilter finding names into the comment of the drop it
/// is about.
fn name_owner(pending: &mut Pending, finding: &Finding) {
    if let (Evidence::Netfilter(nf), BlockMeta::Drop { line }) = (&finding.evidence, &pending.meta) {
        if let Some(first) = pending.comments.first_mut() {
            *first = drop_comment(line, nf.owner.as_ref());
        }
    }
}

impl<W: Write> Drop for PcapngWriter<W> {
    /// A watch that ends early (its output closed) still leaves its last packet in the file.
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{hook::Family, netfilter::DropEvent, packet::L4Proto};

    #[test]
    fn a_drop_comment_names_the_owner_of_its_rule() {
        let drop = DropEvent {
            timestamp_ns: 0,
            loss: Default::default(),
            netns_inode: 1,
            occurrences: Default::default(),
            ifindex: 2,
            reason: 0,
            family: Family::Ipv4,
            l4_proto: L4Proto::Udp,
            src: "10.244.0.5:41234".parse().expect("addr"),
            dst: "10.96.0.10:53".parse().expect("addr"),
            fragment: Default::default(),
        };
        let line = DropLine::example(drop, Vec::new());
        let finding = crate::findings::netfilter::tests::kube_proxy_finding();
        let Evidence::Netfilter(nf) = &finding.evidence else { panic!("netfilter evidence") };
        let comment = drop_comment(&line, nf.owner.as_ref());
        assert!(
            comment.contains(
                "verdict reject by filter/FORWARD #16, written by kube-proxy (Service kube-system/kube-dns:dns) |"
            ),
            "{comment}"
        );
        let mut unknown = nf.owner.clone().expect("an owner");
        unknown.manager = crate::model::firewall::Manager::Unknown;
        for nobody in [None, Some(&unknown)] {
            assert!(!drop_comment(&line, nobody).contains("written by"), "no manager, nothing to say");
        }
    }
}
