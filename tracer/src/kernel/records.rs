//! Decodes the ring buffer's records into the model's events. A journey (a traced
//! packet's way through the node, sent once when it ends) becomes a packet event per bridge
//! stage, each with the netfilter hooks passed since the stage before (a hook was left when
//! anything follows it), and the drop it may have ended with, with the hooks it passed
//! since the last stage: the one it never left is where it was stopped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use tracer_common::{
    conntrack_state, journey_end, record_kind, step_kind, CtTuple, DropRecord, Flow, JourneyRecord, JourneyStep,
    OccurrenceKey, Occurrences, RecordHeader, Stage, StrayReplyRecord, CAPTURE_MAX, MAX_STEPS,
};

use super::occurrences::{event_time, set_times, KernelCounts, OccurrenceCounts};

use crate::model::{
    hook::{Family, Hook},
    monotonic_now_ns,
    netfilter::{DropEvent, HookPass, IcmpEvent, Stamped},
    packet::{Conntrack, ConntrackEntry, FlowTuple, Fragment, L4Proto, LossStamps, PacketEvent},
};

#[derive(Clone, Debug)]
pub(crate) enum KernelEvent {
    /// A frame at a bridge stage, and the netfilter hooks it passed since the stage before.
    Packet { event: PacketEvent, hooks: Vec<HookPass> },
    /// A traced packet freed as dropped: the hooks it passed since its last stage (it never
    /// left the last one of a netfilter drop), and the ICMP error the kernel answered it with.
    Dropped { drop: DropEvent, path: Vec<HookPass>, icmp: Option<IcmpEvent> },
    /// Findings-only watches: a DNS reply leaving a bridge without conntrack, and where its
    /// query was sent before DNAT, when the kernel saw that.
    StrayReply { reply: PacketEvent, asked: Option<SocketAddr> },
}

/// Turns records into events, reusing its buffers: the captured bytes of many records
/// share one allocation, and the events of one record go into a vector kept between
/// records.
#[derive(Default)]
pub(crate) struct Decoder {
    bytes: BytesMut,
    pub events: Vec<KernelEvent>,
    /// What the kernel counted of findings-only keys, per key.
    pub counts: OccurrenceCounts,
}

/// Room for this many records' bytes is allocated at once.
const BYTES_CHUNK: usize = 64 * CAPTURE_MAX;

impl Decoder {
    /// Decodes one record into `self.events` (replacing what the previous one left there).
    pub(crate) fn decode(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        self.events.clear();
        let kind_bytes: [u8; 4] =
            record.get(..4).and_then(|b| b.try_into().ok()).ok_or(DecodeError::WrongSize(record.len()))?;
        match u32::from_ne_bytes(kind_bytes) {
            record_kind::JOURNEY => self.journey(record),
            record_kind::DROP => {
                let drop: DropRecord = record_from_bytes(record)?;
                standalone_drop(&drop, &mut self.events)?;
                if drop.hook_known != 0 {
                    let key = OccurrenceKey::of_drop(
                        &drop.flow,
                        drop.hook,
                        drop.pf,
                        drop.icmp_sent,
                        drop.icmp_type,
                        drop.icmp_code,
                        drop.ifindex,
                        drop.reason,
                    );
                    self.count(key, drop.occurrences);
                }
                Ok(())
            }
            record_kind::STRAY_REPLY => self.stray_reply(record),
            other => Err(DecodeError::UnknownKind(other)),
        }
    }

    /// Into `self.events`: the occurrences the kernel counted since the last records of their
    /// keys, each batch as its key's last record standing for them.
    pub(crate) fn counted(&mut self, kernel: &KernelCounts) {
        self.events.clear();
        let counted = self.counts.since_last_records(|key| kernel.get(key), monotonic_now_ns());
        self.events.extend(counted);
    }

    /// Makes the event just decoded stand for the occurrences of `key` the kernel counted.
    /// A record whose occurrences were all told already (two CPUs sent the key's records in
    /// the other order) is left out: it would be a line standing for nothing.
    fn count(&mut self, key: OccurrenceKey, counted: Occurrences) {
        if let Some(event) = self.events.last_mut() {
            let times = self.counts.record(key, counted, event);
            if times.0 == 0 {
                self.events.pop();
                return;
            }
            set_times(event, times, event_time(event));
        }
    }

    /// The captured bytes, copied out of the ring buffer into the shared allocation.
    fn captured(&mut self, bytes: &[u8]) -> Bytes {
        if self.bytes.capacity() < bytes.len() {
            self.bytes.reserve(BYTES_CHUNK.max(bytes.len()));
        }
        self.bytes.extend_from_slice(bytes);
        self.bytes.split().freeze()
    }

    /// A journey as the kernel sends it, packed: the part before the steps, the steps
    /// recorded, the bytes captured (see `JourneyRecord`).
    fn journey(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let mut journey: JourneyRecord = record_prefix(record, JourneyRecord::STEPS_OFFSET)?;
        let steps = usize::from(journey.step_count).min(MAX_STEPS);
        let steps_end = JourneyRecord::STEPS_OFFSET + steps * size_of::<JourneyStep>();
        let step_bytes =
            record.get(JourneyRecord::STEPS_OFFSET..steps_end).ok_or(DecodeError::WrongSize(record.len()))?;
        for (step, bytes) in journey.steps.iter_mut().zip(step_bytes.chunks_exact(size_of::<JourneyStep>())) {
            *step = record_from_bytes(bytes)?;
        }
        let captured_len = usize::from(journey.captured_len).min(CAPTURE_MAX);
        let packet = record.get(steps_end..steps_end + captured_len).ok_or(DecodeError::WrongSize(record.len()))?;
        self.journey_events(&journey, packet)
    }

    /// A journey that never ended (see `kernel::journeys`), into `self.events`.
    pub(crate) fn abandoned(&mut self, journey: &JourneyRecord) -> Result<(), DecodeError> {
        self.events.clear();
        let captured_len = usize::from(journey.captured_len).min(CAPTURE_MAX);
        self.journey_events(journey, &journey.packet[..captured_len])
    }

    fn journey_events(&mut self, journey: &JourneyRecord, packet: &[u8]) -> Result<(), DecodeError> {
        let captured = self.captured(packet);
        let capture = Capture::of_journey(journey, captured);
        let steps = &journey.steps[..usize::from(journey.step_count).min(MAX_STEPS)];
        let header = &journey.header;
        let ct_tuples = (&journey.ct_original, &journey.ct_reply);
        // A journey cut short misses the steps that would show which hook was left: then
        // every hook recorded counts as left, and a drop names none.
        let last_hook_left = journey.cut != 0 || journey.end != journey_end::DROPPED;
        let mut hooks: Vec<HookPass> = Vec::new();
        for (index, step) in steps.iter().enumerate() {
            match step.kind {
                step_kind::STAGE => {
                    let event = stage_event(header, step, ct_tuples, &capture)?;
                    self.events.push(KernelEvent::Packet { event, hooks: std::mem::take(&mut hooks) });
                }
                step_kind::HOOK => {
                    // Left with what the next point saw (conntrack and NAT as the hook left
                    // them); at the journey's end, as it entered.
                    let next = steps.get(index + 1);
                    let left = next.is_some() || last_hook_left;
                    hooks.push(hook_pass(step, next.unwrap_or(step), left, ct_tuples)?);
                }
                other => return Err(DecodeError::UnknownStepKind(other)),
            }
        }
        // Hooks after the last stage belong to a packet delivered, routed away or dropped:
        // only a drop has a line to show them on.
        if journey.end == journey_end::DROPPED {
            let (src, dst) = flow_addresses(&journey.end_flow)?;
            let (family, l4_proto) = family_and_protocol(&journey.end_flow)?;
            let at_end = steps.last().map_or(header.timestamp_ns, |step| step.timestamp_ns);
            let icmp = (journey.icmp_sent != 0)
                .then_some(IcmpEvent { icmp_type: journey.icmp_type, icmp_code: journey.icmp_code });
            let drop = DropEvent {
                timestamp_ns: at_end,
                loss: loss_stamps(header),
                netns_inode: header.netns_inode,
                occurrences: Default::default(),
                ifindex: journey.end_ifindex,
                reason: journey.drop_reason,
                family,
                l4_proto,
                src,
                dst,
                fragment: Fragment::of_flow(journey.end_flow.fragment),
            };
            self.events.push(KernelEvent::Dropped { drop, path: hooks, icmp });
        }
        Ok(())
    }

    fn stray_reply(&mut self, record: &[u8]) -> Result<(), DecodeError> {
        let stray: StrayReplyRecord = record_prefix(record, StrayReplyRecord::PACKET_OFFSET)?;
        let captured_len = usize::from(stray.captured_len).min(CAPTURE_MAX);
        let packet = record
            .get(StrayReplyRecord::PACKET_OFFSET..StrayReplyRecord::PACKET_OFFSET + captured_len)
            .ok_or(DecodeError::WrongSize(record.len()))?;
        let captured = self.captured(packet);
        let (src, dst) = flow_addresses(&stray.flow)?;
        let (family, l4_proto) = family_and_protocol(&stray.flow)?;
        let header = &stray.header;
        let reply = PacketEvent {
            timestamp_ns: header.timestamp_ns,
            loss: loss_stamps(header),
            netns_inode: header.netns_inode,
            occurrences: Default::default(),
            stage: Stage::BridgeOut,
            ifindex: stray.ifindex,
            ingress_ifindex: stray.ingress_ifindex,
            ip_len: ip_length(&captured, usize::from(stray.l3_offset), stray.flow.ip_version)
                .unwrap_or(stray.packet_len),
            family,
            l4_proto,
            src,
            dst,
            fragment: Fragment::of_flow(stray.flow.fragment),
            conntrack: Conntrack::None,
            dns: None,
            captured,
            captured_at_stage: true,
            l3_offset: usize::from(stray.l3_offset),
            l4_offset: usize::from(stray.l4_offset),
            payload_offset: usize::from(stray.payload_offset),
        };
        let asked = match stray.asked_known {
            0 => None,
            _ => Some(SocketAddr::new(
                ip_from(stray.flow.ip_version, &stray.asked_addr)?,
                u16::from_be(stray.asked_port_be),
            )),
        };
        self.events.push(KernelEvent::StrayReply { reply, asked });
        let key = OccurrenceKey::of_stray_reply(
            &stray.flow,
            stray.ifindex,
            stray.asked_known,
            stray.asked_addr,
            stray.asked_port_be,
        );
        self.count(key, stray.occurrences);
        Ok(())
    }
}

/// The bytes a journey captured when it ended, and the addresses the packet had then.
struct Capture {
    bytes: Bytes,
    flow: Flow,
    l3_offset: usize,
    l4_offset: usize,
    payload_offset: usize,
}

impl Capture {
    fn of_journey(journey: &JourneyRecord, bytes: Bytes) -> Capture {
        Capture {
            bytes,
            flow: journey.capture_flow,
            l3_offset: usize::from(journey.l3_offset),
            l4_offset: usize::from(journey.l4_offset),
            payload_offset: usize::from(journey.payload_offset),
        }
    }
}

/// A drop with no journey: its path is the hook it entered last on that CPU, when the
/// kernel knows it, never left.
fn standalone_drop(drop: &DropRecord, events: &mut Vec<KernelEvent>) -> Result<(), DecodeError> {
    let (src, dst) = flow_addresses(&drop.flow)?;
    let (family, l4_proto) = family_and_protocol(&drop.flow)?;
    let header = &drop.header;
    let mut path = Vec::new();
    if drop.hook_known != 0 {
        path.push(HookPass {
            hook: Hook::from_number(drop.hook).ok_or(DecodeError::UnknownHook(drop.hook))?,
            family: family_of_pf(drop.pf).unwrap_or(family),
            left: false,
            conntrack: Conntrack::None,
            in_ifindex: drop.hook_in_ifindex,
            out_ifindex: drop.hook_out_ifindex,
            stamped: Some(Stamped { src, loss: loss_stamps(header), timestamp_ns: header.timestamp_ns }),
        });
    }
    let icmp = (drop.icmp_sent != 0).then_some(IcmpEvent { icmp_type: drop.icmp_type, icmp_code: drop.icmp_code });
    let drop = DropEvent {
        timestamp_ns: header.timestamp_ns,
        loss: loss_stamps(header),
        netns_inode: header.netns_inode,
        occurrences: Default::default(),
        ifindex: drop.ifindex,
        reason: drop.reason,
        family,
        l4_proto,
        src,
        dst,
        fragment: Fragment::of_flow(drop.flow.fragment),
    };
    events.push(KernelEvent::Dropped { drop, path, icmp });
    Ok(())
}

fn stage_event(
    header: &RecordHeader,
    step: &JourneyStep,
    ct_tuples: (&CtTuple, &CtTuple),
    capture: &Capture,
) -> Result<PacketEvent, DecodeError> {
    let stage = Stage::from_u8(step.point).ok_or(DecodeError::UnknownStage(step.point))?;
    let (src, dst) = flow_addresses(&step.flow)?;
    let (family, l4_proto) = family_and_protocol(&step.flow)?;
    Ok(PacketEvent {
        timestamp_ns: step.timestamp_ns,
        loss: LossStamps { src: step.loss_stamp_src, dst: step.loss_stamp_dst },
        netns_inode: header.netns_inode,
        occurrences: Default::default(),
        stage,
        ifindex: step.ifindex,
        ingress_ifindex: step.other_ifindex,
        // NAT does not change the length: the captured header's holds at every stage.
        ip_len: ip_length(&capture.bytes, capture.l3_offset, capture.flow.ip_version).unwrap_or(step.packet_len),
        family,
        l4_proto,
        src,
        dst,
        fragment: Fragment::of_flow(step.flow.fragment),
        conntrack: conntrack_of(step.ct_state, step.ct_info, step.ct_status, ct_tuples, step.flow.ip_version)?,
        dns: None,
        // Every stage carries the payload; only where the packet had the addresses it was
        // captured with are the bytes this stage's frame.
        captured: capture.bytes.clone(),
        captured_at_stage: step.flow == capture.flow,
        l3_offset: capture.l3_offset,
        l4_offset: capture.l4_offset,
        payload_offset: capture.payload_offset,
    })
}

/// A hook the packet entered at `step`, with the conntrack state `after` saw (the next
/// point, when it left the hook).
fn hook_pass(
    step: &JourneyStep,
    after: &JourneyStep,
    left: bool,
    ct_tuples: (&CtTuple, &CtTuple),
) -> Result<HookPass, DecodeError> {
    let (src, _) = flow_addresses(&step.flow)?;
    let (family, _) = family_and_protocol(&step.flow)?;
    Ok(HookPass {
        hook: Hook::from_number(step.point).ok_or(DecodeError::UnknownHook(step.point))?,
        family: family_of_pf(step.pf).unwrap_or(family),
        left,
        conntrack: conntrack_of(after.ct_state, after.ct_info, after.ct_status, ct_tuples, after.flow.ip_version)?,
        in_ifindex: step.ifindex,
        out_ifindex: step.other_ifindex,
        stamped: Some(Stamped {
            src,
            loss: LossStamps { src: step.loss_stamp_src, dst: step.loss_stamp_dst },
            timestamp_ns: step.timestamp_ns,
        }),
    })
}

fn family_of_pf(pf: u8) -> Option<Family> {
    match pf {
        2 => Some(Family::Ipv4),
        10 => Some(Family::Ipv6),
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    WrongSize(usize),
    UnknownKind(u32),
    UnknownStepKind(u8),
    UnknownStage(u8),
    UnknownHook(u8),
    UnknownIpVersion(u8),
    UnknownProtocol(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::WrongSize(n) => write!(
                f,
                "ring buffer record of {n} bytes is too short for its kind: kernel programs and tracer binary are from different builds"
            ),
            DecodeError::UnknownKind(k) => write!(f, "record of unknown kind {k}: kernel programs and tracer binary are from different builds"),
            DecodeError::UnknownStepKind(k) => write!(f, "journey with a step of unknown kind {k}: kernel programs and tracer binary are from different builds"),
            DecodeError::UnknownStage(s) => write!(f, "record with unknown stage {s}"),
            DecodeError::UnknownHook(h) => write!(f, "record with unknown netfilter hook {h}"),
            DecodeError::UnknownIpVersion(v) => write!(f, "record with unknown IP version {v}"),
            DecodeError::UnknownProtocol(p) => write!(f, "record with untraced protocol {p}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Copies a record out of ring buffer memory. The slot is only 8-byte aligned by the
/// kernel, so read it unaligned rather than casting.
pub(crate) fn record_from_bytes<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::WrongSize(bytes.len()));
    }
    // SAFETY: length checked; the record types are plain integers and byte arrays
    // (aya::Pod), so every bit pattern is a valid value.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// A record sent without its unused tail (the captured bytes beyond what was captured):
/// the first `required` bytes must be there, the rest of `T` reads as zero.
fn record_prefix<T: aya::Pod>(bytes: &[u8], required: usize) -> Result<T, DecodeError> {
    if bytes.len() < required || required > size_of::<T>() {
        return Err(DecodeError::WrongSize(bytes.len()));
    }
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let len = bytes.len().min(size_of::<T>());
    // SAFETY: `len` bytes fit both the source and `T`; the zeroed rest and the copied
    // bytes form a valid `T` (aya::Pod: every bit pattern is).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.as_mut_ptr() as *mut u8, len);
        Ok(value.assume_init())
    }
}

fn loss_stamps(header: &RecordHeader) -> LossStamps {
    LossStamps { src: header.loss_stamp_src, dst: header.loss_stamp_dst }
}

/// Source and destination of a record's flow.
pub(crate) fn flow_addresses(flow: &Flow) -> Result<(SocketAddr, SocketAddr), DecodeError> {
    let src = SocketAddr::new(ip_from(flow.ip_version, &flow.src_addr)?, u16::from_be(flow.src_port_be));
    let dst = SocketAddr::new(ip_from(flow.ip_version, &flow.dst_addr)?, u16::from_be(flow.dst_port_be));
    Ok((src, dst))
}

/// The family and transport protocol of a record's flow.
fn family_and_protocol(flow: &Flow) -> Result<(Family, L4Proto), DecodeError> {
    let family = match flow.ip_version {
        4 => Family::Ipv4,
        6 => Family::Ipv6,
        other => return Err(DecodeError::UnknownIpVersion(other)),
    };
    let proto = L4Proto::from_number(flow.l4_proto).ok_or(DecodeError::UnknownProtocol(flow.l4_proto))?;
    Ok((family, proto))
}

/// What conntrack had attached at one point: its state there, and the entry's tuples.
pub(crate) fn conntrack_of(
    state: u8,
    info: u8,
    status: u32,
    (original, reply): (&CtTuple, &CtTuple),
    ip_version: u8,
) -> Result<Conntrack, DecodeError> {
    Ok(match state {
        conntrack_state::ATTACHED => {
            // All-zero tuples mean the kernel had no layout to read the entry with.
            let known = *original != CtTuple::default();
            let tuple = |t: &CtTuple| -> Result<Option<FlowTuple>, DecodeError> {
                if !known {
                    return Ok(None);
                }
                Ok(Some(FlowTuple {
                    src: SocketAddr::new(ip_from(ip_version, &t.src_addr)?, u16::from_be(t.src_port_be)),
                    dst: SocketAddr::new(ip_from(ip_version, &t.dst_addr)?, u16::from_be(t.dst_port_be)),
                }))
            };
            Conntrack::Attached(ConntrackEntry {
                ctinfo: info,
                status: known.then_some(status),
                original: tuple(original)?,
                reply: tuple(reply)?,
            })
        }
        conntrack_state::UNTRACKED => Conntrack::Untracked,
        _ => Conntrack::None,
    })
}

/// The IP header's own length field: unlike `skb->len` it does not depend on whether
/// the link-layer header is still in front of the packet at this stage.
fn ip_length(captured: &[u8], l3_offset: usize, version: u8) -> Option<u32> {
    let field = |at: usize| -> Option<u32> {
        let bytes = captured.get(l3_offset + at..l3_offset + at + 2)?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]) as u32)
    };
    match version {
        4 => field(2),
        6 => field(4).map(|payload| payload + 40),
        _ => None,
    }
}

fn ip_from(version: u8, raw: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match version {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(*raw))),
        other => Err(DecodeError::UnknownIpVersion(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::packet::{IPPROTO_UDP, IPS_DST_NAT};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut raw = [0; 16];
        raw[..4].copy_from_slice(&a);
        raw
    }

    fn udp_flow(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> Flow {
        Flow {
            src_addr: v4(src),
            dst_addr: v4(dst),
            src_port_be: src_port.to_be(),
            dst_port_be: dst_port.to_be(),
            ip_version: 4,
            l4_proto: IPPROTO_UDP,
            fragment: 0,
            _pad: 0,
        }
    }

    fn udp_tuple(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> CtTuple {
        CtTuple {
            src_addr: v4(src),
            dst_addr: v4(dst),
            src_port_be: src_port.to_be(),
            dst_port_be: dst_port.to_be(),
            protonum: IPPROTO_UDP,
            _pad: [0; 3],
        }
    }

    const QUERY: Flow = Flow {
        src_addr: [10, 244, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        dst_addr: [10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        src_port_be: 41234u16.to_be(),
        dst_port_be: 53u16.to_be(),
        ip_version: 4,
        l4_proto: IPPROTO_UDP,
        fragment: 0,
        _pad: 0,
    };

    fn stage(at: u64, stage: Stage, ifindex: u32, flow: Flow, ct_state: u8) -> JourneyStep {
        JourneyStep {
            timestamp_ns: at,
            kind: step_kind::STAGE,
            point: stage as u8,
            ifindex,
            packet_len: 95,
            ct_state,
            flow,
            ..Default::default()
        }
    }

    fn hook(at: u64, hook: u8, flow: Flow, ct_state: u8, ct_status: u32) -> JourneyStep {
        JourneyStep {
            timestamp_ns: at,
            kind: step_kind::HOOK,
            point: hook,
            pf: 2,
            ifindex: 3,
            ct_state,
            ct_info: 2,
            ct_status,
            flow,
            ..Default::default()
        }
    }

    /// A journey's bytes as the kernel sends them: the fixed part and the captured bytes.
    fn sent(journey: &JourneyRecord) -> Vec<u8> {
        // SAFETY: JourneyRecord is plain data without implicit padding.
        let all = unsafe {
            std::slice::from_raw_parts(journey as *const JourneyRecord as *const u8, size_of::<JourneyRecord>())
        };
        let steps_end = JourneyRecord::STEPS_OFFSET + usize::from(journey.step_count) * size_of::<JourneyStep>();
        let packet = JourneyRecord::PACKET_OFFSET;
        [&all[..steps_end], &all[packet..packet + usize::from(journey.captured_len)]].concat()
    }

    fn journey(steps: &[JourneyStep], end: u8) -> JourneyRecord {
        // SAFETY: all-zero is a valid JourneyRecord (plain integers and arrays).
        let mut journey: JourneyRecord = unsafe { std::mem::zeroed() };
        journey.header.kind = record_kind::JOURNEY;
        journey.header.skb_id = 0xffff_8880_0000_1000;
        journey.end = end;
        journey.step_count = steps.len() as u8;
        journey.steps[..steps.len()].copy_from_slice(steps);
        journey.capture_flow = steps.first().map_or(QUERY, |step| step.flow);
        journey.end_flow = steps.last().map_or(QUERY, |step| step.flow);
        journey
    }

    fn decoded(journey: &JourneyRecord) -> Vec<KernelEvent> {
        let mut decoder = Decoder::default();
        decoder.decode(&sent(journey)).expect("a valid journey");
        decoder.events
    }

    /// The DNATed query of the lab: in on the client's port, through PRE_ROUTING (DNAT),
    /// FORWARD and POST_ROUTING, out on the server's port.
    fn dnat_query() -> JourneyRecord {
        let backend = udp_flow([10, 244, 0, 5], 41234, [10, 244, 0, 7], 53);
        let dnat = (1 << 3) | IPS_DST_NAT | (1 << 8);
        let mut journey = journey(
            &[
                stage(1, Stage::BridgeIn, 4, QUERY, conntrack_state::NONE),
                hook(2, 0, QUERY, conntrack_state::NONE, 0),
                hook(3, 2, backend, conntrack_state::ATTACHED, dnat),
                hook(4, 4, backend, conntrack_state::ATTACHED, dnat),
                stage(5, Stage::BridgeOut, 6, backend, conntrack_state::ATTACHED),
            ],
            journey_end::LEFT_BRIDGE,
        );
        journey.steps[4].ct_status = dnat;
        journey.ct_original = udp_tuple([10, 244, 0, 5], 41234, [10, 96, 0, 10], 53);
        journey.ct_reply = udp_tuple([10, 244, 0, 7], 53, [10, 244, 0, 5], 41234);
        journey.l3_offset = 14;
        journey.captured_len = 34;
        journey.packet[14] = 0x45;
        journey.packet[16..18].copy_from_slice(&81u16.to_be_bytes());
        journey
    }

    #[test]
    fn a_journey_becomes_its_stages_with_the_hooks_between_them() {
        let events = decoded(&dnat_query());
        let [KernelEvent::Packet { event: first, hooks: before }, KernelEvent::Packet { event: last, hooks }] =
            &events[..]
        else {
            panic!("two stages: {events:?}")
        };
        assert!(before.is_empty());
        assert_eq!(
            hooks.iter().map(|h| (h.hook, h.left)).collect::<Vec<_>>(),
            [(Hook::PreRouting, true), (Hook::Forward, true), (Hook::PostRouting, true)]
        );
        // PRE_ROUTING is left with what FORWARD saw: the DNAT it did.
        let Conntrack::Attached(entry) = &hooks[0].conntrack else { panic!("{hooks:?}") };
        assert_eq!(entry.nat()[0].to_string(), "dnat 10.96.0.10:53→10.244.0.7:53");
        // The bytes were captured at the first step: they are the bridge-in frame's, not the
        // bridge-out one's (DNAT changed its destination), but both carry them (and the IP
        // length they say).
        assert_eq!((first.captured_at_stage, last.captured_at_stage), (true, false));
        assert_eq!((first.ip_len, last.ip_len), (81, 81));
        assert_eq!(first.dst.to_string(), "10.96.0.10:53");
        assert_eq!(last.dst.to_string(), "10.244.0.7:53");
        assert_eq!(first.captured.len(), 34);
    }

    #[test]
    fn a_journey_dropped_in_a_hook_ends_in_it_never_left() {
        let mut journey = journey(
            &[
                stage(1, Stage::BridgeIn, 4, QUERY, conntrack_state::NONE),
                hook(2, 2, QUERY, conntrack_state::ATTACHED, 1 << 3),
            ],
            journey_end::DROPPED,
        );
        journey.icmp_sent = 1;
        journey.icmp_type = 3;
        journey.icmp_code = 10;
        journey.drop_reason = 7;
        journey.end_ifindex = 4;
        let events = decoded(&journey);
        let [KernelEvent::Packet { .. }, KernelEvent::Dropped { drop, path, icmp: Some(icmp) }] = &events[..] else {
            panic!("a stage, then the drop with its ICMP answer: {events:?}")
        };
        assert_eq!((drop.reason, drop.ifindex), (7, 4));
        assert_eq!((icmp.icmp_type, icmp.icmp_code), (3, 10));
        assert_eq!(path.iter().map(|h| (h.hook, h.left)).collect::<Vec<_>>(), [(Hook::Forward, false)]);
        // A journey cut short may miss the step that left the hook: no hook is blamed.
        journey.cut = 1;
        let events = decoded(&journey);
        let [_, KernelEvent::Dropped { path, .. }] = &events[..] else { panic!("{events:?}") };
        assert!(path.iter().all(|h| h.left), "{path:?}");
    }

    #[test]
    fn a_drop_without_journey_stops_in_the_hook_it_was_last_in() {
        let mut drop = DropRecord {
            reason: 7,
            ifindex: 4,
            flow: QUERY,
            hook_known: 1,
            hook: 1,
            pf: 2,
            hook_in_ifindex: 3,
            ..Default::default()
        };
        drop.header.kind = record_kind::DROP;
        let mut decoder = Decoder::default();
        // SAFETY (both): DropRecord is plain data without implicit padding.
        decoder
            .decode(unsafe {
                std::slice::from_raw_parts(&drop as *const DropRecord as *const u8, size_of::<DropRecord>())
            })
            .expect("valid");
        let [KernelEvent::Dropped { path, .. }] = &decoder.events[..] else { panic!("{:?}", decoder.events) };
        assert_eq!(
            path.iter().map(|h| (h.hook, h.left, h.in_ifindex)).collect::<Vec<_>>(),
            [(Hook::LocalIn, false, 3)]
        );
        drop.hook_known = 0;
        decoder
            .decode(unsafe {
                std::slice::from_raw_parts(&drop as *const DropRecord as *const u8, size_of::<DropRecord>())
            })
            .expect("valid");
        assert!(
            matches!(&decoder.events[..], [KernelEvent::Dropped { path, .. }] if path.is_empty()),
            "{:?}",
            decoder.events
        );
    }

    #[test]
    fn a_stray_reply_says_what_its_query_asked() {
        // SAFETY: all-zero is a valid StrayReplyRecord.
        let mut stray: StrayReplyRecord = unsafe { std::mem::zeroed() };
        stray.header.kind = record_kind::STRAY_REPLY;
        stray.flow = udp_flow([10, 244, 0, 7], 53, [10, 244, 0, 5], 41234);
        stray.asked_addr = v4([10, 96, 0, 10]);
        stray.asked_port_be = 53u16.to_be();
        stray.asked_known = 1;
        // SAFETY: plain data without implicit padding.
        let all = unsafe {
            std::slice::from_raw_parts(&stray as *const StrayReplyRecord as *const u8, size_of::<StrayReplyRecord>())
        };
        let mut decoder = Decoder::default();
        decoder.decode(&all[..StrayReplyRecord::PACKET_OFFSET]).expect("valid");
        let [KernelEvent::StrayReply { reply, asked }] = &decoder.events[..] else { panic!("{:?}", decoder.events) };
        assert_eq!(reply.stage, Stage::BridgeOut);
        assert_eq!(asked.map(|a| a.to_string()).as_deref(), Some("10.96.0.10:53"));
    }

    #[test]
    fn attached_without_layout_has_no_tuples() {
        let mut journey =
            journey(&[stage(1, Stage::BridgeIn, 4, QUERY, conntrack_state::ATTACHED)], journey_end::LEFT_BRIDGE);
        journey.steps[0].ct_status = 1 << 3;
        let [KernelEvent::Packet { event, .. }] = &decoded(&journey)[..] else { panic!() };
        let Conntrack::Attached(entry) = &event.conntrack else { panic!("expected attached entry") };
        assert_eq!(entry.status, None);
        assert!(entry.nat().is_empty());
    }

    #[test]
    fn ipv6_addresses_render_bracketed() {
        let mut flow = QUERY;
        flow.ip_version = 6;
        flow.src_addr = "fd00:10:244::5".parse::<Ipv6Addr>().expect("literal").octets();
        flow.dst_addr = "fd00:10:96::a".parse::<Ipv6Addr>().expect("literal").octets();
        let journey = journey(&[stage(1, Stage::BridgeIn, 4, flow, conntrack_state::NONE)], journey_end::LEFT_BRIDGE);
        let [KernelEvent::Packet { event, .. }] = &decoded(&journey)[..] else { panic!() };
        assert_eq!(event.src.to_string(), "[fd00:10:244::5]:41234");
        assert_eq!(event.dst.to_string(), "[fd00:10:96::a]:53");
    }

    #[test]
    fn short_unknown_and_malformed_records_are_errors() {
        let mut decoder = Decoder::default();
        assert_eq!(decoder.decode(&[1, 0]).err(), Some(DecodeError::WrongSize(2)));
        assert_eq!(decoder.decode(&99u32.to_ne_bytes()).err(), Some(DecodeError::UnknownKind(99)));
        assert_eq!(decoder.decode(&record_kind::JOURNEY.to_ne_bytes()).err(), Some(DecodeError::WrongSize(4)));
        let mut bad = journey(&[stage(1, Stage::BridgeIn, 4, QUERY, 0)], journey_end::LEFT_BRIDGE);
        bad.steps[0].point = 99;
        assert_eq!(decoder.decode(&sent(&bad)).err(), Some(DecodeError::UnknownStage(99)));
        bad.steps[0].point = Stage::BridgeIn as u8;
        bad.steps[0].flow.l4_proto = 1;
        assert_eq!(decoder.decode(&sent(&bad)).err(), Some(DecodeError::UnknownProtocol(1)));
        // A captured length beyond what was sent.
        let mut cut = dnat_query();
        cut.captured_len = 34;
        let bytes = sent(&cut);
        assert_eq!(decoder.decode(&bytes[..bytes.len() - 1]).err(), Some(DecodeError::WrongSize(bytes.len() - 1)));
    }
}
