//! Captures written by the pcapng sink and read back by the replay source: the two ends of
//! one file format, so their tests sit above both.

use std::{net::SocketAddr, time::Duration};

use crate::model::netfilter::DropReason;
use crate::schema::capture::CaptureMeta;
use crate::sinks::pcapng::*;
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
use crate::{
    model::{netfilter::HookPass, packet::Conntrack},
    schema::{
        finding::{Evidence, Finding},
        packet::{DropLine, TracedPacket},
        sink::Sink,
        summary::Summary,
    },
};
use pcap_parser::OptionCode;
use std::{
    fs::File,
    io::{self, Write},
};
use tracer_common::Stage;

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
        traced(2, Stage::FromHost, "cni0", "10.244.0.5:40000", "10.244.0.7:53", false, dnat_entry(2)).with_hooks(vec![
            hook(Hook::PreRouting, dnat_entry(2)),
            hook(Hook::Forward, dnat_entry(2)),
            hook(Hook::PostRouting, dnat_entry(2)),
        ]),
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
            owner: None,
            element: None,
            retry_of: None,
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
    assert!(text.contains("tracer: from-host on cni0, bridge cni0 | udp 10.244.0.5:40000 → 10.244.0.7:53"), "{text}");
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
    assert!(warning.contains("writing full.pcapng failed") && warning.contains("No space left on device"), "{warning}");
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
    let mut reader =
        crate::engine::replay::reader::CaptureReader::from_reader("big", std::io::Cursor::new(bytes)).expect("open");
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

mod reading_back {
    use super::sample_capture;
    use crate::engine::replay::reader::{tests::read_all, CaptureError, PCAPNG_MAGIC, PCAP_MAGICS};

    #[test]
    fn a_capture_cut_at_every_length_reads_up_to_the_cut_without_panicking() {
        let bytes = sample_capture();
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
        let bytes = sample_capture();
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
}
