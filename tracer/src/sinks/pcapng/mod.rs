//! Writes what a watch sees to a pcapng file (`tracer watch --write FILE`): the packet
//! bytes the kernel copied, one interface block per (network namespace, device, link
//! type), nanosecond timestamps, and on every packet a comment for people (stage, hook
//! path and verdict, findings) and tracer's metadata for `tracer report`. Drops,
//! findings and the summary go in too, so the file alone is enough for analysis. The
//! layout is described in `capture::reader`, which reads it back.
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
    sinks::forms::hook_path,
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
    interfaces: HashMap<(u32, u32, Option<String>, i32), u32>,
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
    /// Writes the capture into `file` (opened by `capture::file`), starting with its
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
fn text_option(code: OptionCode, text: &str) -> PcapNGOption<'static> {
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

fn drop_comment(line: &DropLine) -> String {
    let drop = &line.drop;
    let mut place = format!("dropped on {}", line.ifname.clone().unwrap_or_else(|| format!("if{}", drop.ifindex)));
    if let Some(bridge) = &line.bridge {
        place.push_str(&format!(", bridge {bridge}"));
    }
    let path = hook_path(&line.path);
    let by = line.rule.as_ref().map(|r| format!(" by {r}")).unwrap_or_default();
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
            comments: vec![drop_comment(line)],
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
            pending.comments.push(format!("tracer FINDING {}: {}", finding.kind.name(), finding.headline));
        }
        self.write_pending()?;
        self.record(&RecordMeta::Finding { finding: Box::new(finding.clone()) })
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

impl<W: Write> Drop for PcapngWriter<W> {
    /// A watch that ends early (its output closed) still leaves its last packet in the file.
    fn drop(&mut self) {
        if !self.broken {
            let _ = self.flush();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::SocketAddr, time::Duration};

    use tracer_common::Stage;

    use super::*;
    use crate::model::netfilter::DropReason;
    use crate::{
        analysis::{Analysis, AnalysisOptions},
        engine::replay::{frames::tests::dns_frame, Ending, Report},
        firewall::Backend,
        model::{
            hook::{Family, Hook},
            netfilter::{DropEvent, IcmpEvent},
            packet::L4Proto,
        },
        pipeline::{
            dns_parse as dns,
            loss::NothingLost,
            paths::DroppedPacket,
            queries::tests::{dnat_entry, packet},
        },
        schema::{
            capture::FORMAT,
            finding::{Culprit, FindingKind, NetfilterEvidence, RuleRef},
        },
        sinks::json::JsonOutput,
        sinks::tee::Tee,
        system::scratch_dir::ScratchDir,
    };

    const SETTING: &str = "net.bridge.bridge-nf-call-iptables";

    fn info() -> CaptureInfo {
        CaptureInfo {
            meta: CaptureMeta {
                format: FORMAT.to_string(),
                tracer_version: "0.0.0-test".to_string(),
                hostname: Some("node-a".to_string()),
                port: 53.into(),
                snaplen: 512,
                dns_timeout_ns: 2_000_000_000,
                dns_ports: Vec::new(),
                sysctls: [(SETTING.to_string(), Some("0".to_string()))].into_iter().collect(),
            },
            os: Some("Linux test".to_string()),
        }
    }

    /// A packet with real bytes, as the kernel copies them (Ethernet first).
    fn traced(
        at_ms: u64,
        stage: Stage,
        ifname: &str,
        src: &str,
        dst: &str,
        qr: bool,
        conntrack: Conntrack,
    ) -> TracedPacket {
        let mut traced = packet(at_ms, stage, ifname, src, dst, qr, conntrack);
        let addr = |text: &str| text.parse::<SocketAddr>().expect("literal");
        let frame = dns_frame(addr(src), addr(dst), 0x6aab, qr);
        traced.event.dns = dns::parse(&frame[42..], false);
        traced.event.ip_len = (frame.len() - 14) as u32;
        traced.event.l3_offset = 14;
        traced.event.l4_offset = 34;
        traced.event.payload_offset = 42;
        traced.event.captured = frame.into();
        traced
    }

    fn hook(hook: Hook, conntrack: Conntrack) -> HookPass {
        HookPass { hook, family: Family::Ipv4, left: true, conntrack, in_ifindex: 3, out_ifindex: 5, stamped: None }
    }

    /// The lab's conntrack-skip query and reply, then a REJECTed packet twice.
    fn scenario() -> (Vec<TracedPacket>, DroppedPacket, Finding) {
        let packets = vec![
            traced(0, Stage::BridgeIn, "veth-client", "10.244.0.5:40000", "10.96.0.10:53", false, Conntrack::None),
            traced(1, Stage::ToHost, "cni0", "10.244.0.5:40000", "10.96.0.10:53", false, Conntrack::None),
            traced(2, Stage::FromHost, "cni0", "10.244.0.5:40000", "10.244.0.7:53", false, dnat_entry(2)).with_hooks(
                vec![
                    hook(Hook::PreRouting, dnat_entry(2)),
                    hook(Hook::Forward, dnat_entry(2)),
                    hook(Hook::PostRouting, dnat_entry(2)),
                ],
            ),
            traced(3, Stage::BridgeOut, "veth-server", "10.244.0.5:40000", "10.244.0.7:53", false, dnat_entry(2)),
            traced(4, Stage::BridgeIn, "veth-server", "10.244.0.7:53", "10.244.0.5:40000", true, Conntrack::None),
            traced(5, Stage::BridgeOut, "veth-client", "10.244.0.7:53", "10.244.0.5:40000", true, Conntrack::None),
        ];
        let src: SocketAddr = "10.244.0.5:40001".parse().expect("literal");
        let dst: SocketAddr = "10.244.0.7:53".parse().expect("literal");
        let drop = DropEvent { ifindex: 4, ..DropEvent::example(9_000_000, src, dst) };
        let icmp = IcmpEvent { icmp_type: 3, icmp_code: 10 };
        let mut stopped = hook(Hook::Forward, dnat_entry(2));
        stopped.left = false;
        let dropped = DroppedPacket {
            drop,
            path: vec![hook(Hook::PreRouting, dnat_entry(2)), stopped],
            icmp: Some(icmp),
            loss: Default::default(),
        };
        let rule = RuleRef {
            backend: Backend::IptablesNft,
            table: "filter".to_string(),
            chain: "FORWARD".to_string(),
            position: 16,
            handle: Some(40),
            text: "-A FORWARD -p udp -m udp --dport 53 -j REJECT --reject-with icmp-host-prohibited".to_string(),
        };
        let finding = Finding {
            kind: FindingKind::NetfilterReject,
            wall_time_ns: 1_800_000_000_009_000_000,
            headline: "REJECT in FORWARD: udp 10.244.0.5:40001 → 10.244.0.7:53 stopped by rule #16".to_string(),
            evidence: Evidence::Netfilter(NetfilterEvidence {
                src,
                dst,
                proto: L4Proto::Udp,
                hook: Hook::Forward,
                in_ifname: Some("cni0".to_string()),
                out_ifname: Some("cni0".to_string()),
                pods: Default::default(),
                culprit: Culprit::of(Some(rule.clone()), None),
                candidates: vec![rule],
                attribution: "the only rule that fits".to_string(),
                icmp: Some("host-prohibited".to_string()),
                drop_reason: DropReason::NetfilterDrop,
            }),
            explanation: "A rule rejected it.".to_string(),
            fix: vec!["iptables -t filter -D FORWARD 16".to_string()],
        };
        (packets, dropped, finding)
    }

    /// Plays the scenario through the analysis a watch uses, into JSON and a capture.
    fn play(output: &mut dyn Sink) {
        play_with(output, &mut NothingLost);
    }

    fn play_with(output: &mut dyn Sink, witness: &mut dyn crate::pipeline::loss::LossWitness) {
        let (packets, dropped, finding) = scenario();
        let recorded = info().meta.sysctls.into_iter().collect();
        let options = AnalysisOptions { dns_timeout: Duration::from_secs(2), dns_ports: Vec::new() };
        let mut analysis = Analysis::replay(&options, recorded);
        for packet in packets {
            analysis.packet_with_hooks(packet, output).expect("output");
            analysis.settle(witness, output).expect("output");
        }
        analysis.replay_drop(&DropLine::example(dropped.drop.clone(), dropped.path.clone()), output).expect("output");
        analysis.replay_netfilter_finding(finding, output).expect("output");
        analysis.replay_drop(&DropLine::example(dropped.drop.clone(), dropped.path.clone()), output).expect("output");
        let summary = Summary {
            packets: analysis.stats.packets,
            lost: 3,
            lost_per_cpu: vec![1, 2],
            duration_secs: 1.5,
            findings: analysis.log.distinct(),
            finding_counts: analysis.log.counts().into_iter().collect(),
            ..Summary::default()
        };
        output.summary(&summary).expect("output");
    }

    /// The scenario as `tracer watch --write` would write it.
    pub(crate) fn sample_capture() -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut writer = PcapngWriter::new(&mut bytes, &info()).expect("header");
            play(&mut writer);
        }
        bytes
    }

    /// Plays the scenario into JSON and a capture file, as a watch with `--write` would,
    /// then reports the file: the live lines, how the report ended, the replayed lines.
    fn watch_then_report(name: &str, witness: &mut dyn crate::pipeline::loss::LossWitness) -> (String, Ending, String) {
        let dir = ScratchDir::new(name);
        let path = dir.join("dns.pcapng");
        let mut live = Vec::new();
        {
            let writer = PcapngWriter::to_file(File::create(&path).expect("create"), &info()).expect("header");
            let mut tee = Tee::new(Box::new(JsonOutput::new(&mut live)), Some((Box::new(writer), "test".to_string())));
            play_with(&mut tee, witness);
            assert!(tee.warning.is_none());
        }
        let report = Report::open(&path).expect("open");
        let mut replayed = Vec::new();
        let ending = report.run(&mut JsonOutput::new(&mut replayed));
        (String::from_utf8_lossy(&live).into_owned(), ending, String::from_utf8_lossy(&replayed).into_owned())
    }

    #[test]
    fn report_of_a_capture_prints_what_the_watch_printed() {
        let (live, ending, replayed) = watch_then_report("writer-roundtrip", &mut NothingLost);
        let Ending::Finished { error: None, .. } = ending else { panic!("the report should read the whole file") };
        assert_eq!(live.lines().collect::<Vec<_>>(), replayed.lines().collect::<Vec<_>>());
        assert!(live.contains("\"kind\":\"conntrack_skip\""), "{live}");
        assert!(live.contains("\"netfilter_reject\":2"), "the repeat drop is counted: {live}");
    }

    /// Says every window lost a record.
    struct EverythingLost;

    impl crate::pipeline::loss::LossWitness for EverythingLost {
        fn lost_since(
            &mut self,
            _: &crate::schema::finding::Unconfirmed,
            _: &crate::pipeline::loss::LossWindows,
            _: u64,
        ) -> u64 {
            1
        }
    }

    #[test]
    fn a_finding_the_watch_could_not_confirm_is_not_stated_by_the_report_either() {
        let (_, ending, replayed) = watch_then_report("writer-unconfirmed", &mut EverythingLost);
        let Ending::Finished { error: None, .. } = ending else { panic!("the report should read the whole file") };
        assert!(!replayed.contains("\"kind\":\"conntrack_skip\""), "{replayed}");
        let summary = replayed.lines().find(|line| line.contains("\"type\":\"summary\"")).expect("a summary line");
        let summary: Summary = serde_json::from_str(summary).expect("the summary reads back");
        assert_eq!(summary.unconfirmed_counts, [(FindingKind::ConntrackSkip, 1)].into());
    }

    #[test]
    fn comments_name_stage_hooks_verdict_and_finding() {
        let bytes = sample_capture();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("tracer: from-host on cni0, bridge cni0 | udp 10.244.0.5:40000 → 10.244.0.7:53"),
            "{text}"
        );
        assert!(text.contains("hooks: PRE_ROUTING(ct new, dnat 10.96.0.10:53→10.244.0.7:53) → FORWARD"), "{text}");
        assert!(text.contains("verdict accept"), "{text}");
        assert!(text.contains("tracer FINDING conntrack_skip: DNS replies skip conntrack"), "{text}");
        assert!(text.contains("verdict reject by filter/FORWARD #16 | NETFILTER_DROP, ICMP host-prohibited"), "{text}");
        assert!(text.contains("tracer FINDING netfilter_reject"), "{text}");
    }

    #[test]
    fn interfaces_are_described_once_per_device_and_link_type() {
        // veth-client, cni0, veth-server (Ethernet) and veth-server (drops, no bytes).
        let mut writer = PcapngWriter::new(Vec::new(), &info()).expect("header");
        let (packets, dropped, _) = scenario();
        for packet in &packets {
            writer.packet(packet).expect("write");
        }
        writer.dropped(&DropLine::example(dropped.drop.clone(), dropped.path.clone())).expect("write");
        assert_eq!(writer.interfaces.len(), 4);
    }

    /// Fails every write after the first `budget` bytes, like a disk that fills.
    struct FillingDisk {
        budget: usize,
        writes_after_full: usize,
    }

    impl Write for FillingDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if buf.len() > self.budget {
                self.writes_after_full += 1;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.budget -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_warns_once_and_the_main_output_goes_on() {
        let mut disk = FillingDisk { budget: 3000, writes_after_full: 0 };
        let mut main = Vec::new();
        let warning = {
            let writer = PcapngWriter::new(&mut disk, &info()).expect("header fits");
            let mut tee =
                Tee::new(Box::new(JsonOutput::new(&mut main)), Some((Box::new(writer), "full.pcapng".to_string())));
            play(&mut tee);
            tee.warning.clone()
        };
        let warning = warning.expect("a warning");
        assert!(
            warning.contains("writing full.pcapng failed") && warning.contains("No space left on device"),
            "{warning}"
        );
        assert_eq!(disk.writes_after_full, 1, "nothing is tried after the first failure");
        let main = String::from_utf8_lossy(&main);
        assert_eq!(main.lines().filter(|l| l.contains("\"type\":\"packet\"")).count(), 8, "{main}");
        assert!(main.contains("\"type\":\"summary\""));
    }

    #[test]
    fn a_block_larger_than_the_read_buffer_is_read_whole() {
        let (packets, _, _) = scenario();
        let mut big = packets[0].clone();
        let mut bytes = big.event.captured.to_vec();
        bytes.resize(100_000, 0xab);
        big.event.captured = bytes.into();
        let mut bytes = Vec::new();
        {
            let mut writer = PcapngWriter::new(&mut bytes, &info()).expect("header");
            writer.packet(&big).expect("write");
        }
        let mut reader = crate::engine::replay::reader::CaptureReader::from_reader("big", std::io::Cursor::new(bytes))
            .expect("open");
        let Ok(Some(crate::engine::replay::reader::Record::Packet(read))) = reader.next_record() else {
            panic!("a packet")
        };
        let event = &read.packet.event;
        assert_eq!(event.captured.len(), 100_000);
        assert_eq!(dns::parse(&event.captured[event.payload_offset..], false).map(|d| d.id), Some(0x6aab));
        assert!(matches!(reader.next_record(), Ok(None)));
    }

    #[test]
    fn long_texts_are_cut_to_what_an_option_holds() {
        let long = "é".repeat(40_000);
        let option = text_option(OptionCode::Comment, &long);
        assert!(option.value.len() <= usize::from(u16::MAX));
        assert_eq!(usize::from(option.len), option.value.len());
        assert!(std::str::from_utf8(&option.value).is_ok());
    }
}
