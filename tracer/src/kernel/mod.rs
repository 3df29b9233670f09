//! Loads the kernel programs, configures them for this run and attaches them; reads their
//! records back (`records`) and the running kernel's BTF (`btf`, `layout`).
//! Everything attached is owned by file descriptors of this process: the kernel
//! detaches it when the process exits, however it exits.

mod blind_spots;
pub(crate) mod btf;
pub(crate) mod diagnostics;
pub(crate) mod journeys;
mod kallsyms;
pub(crate) mod layout;
pub(crate) mod loss;
pub(crate) mod netfilter;
pub(crate) mod occurrences;
mod privileges;
pub(crate) mod records;

use std::os::{
    fd::{AsFd, OwnedFd},
    unix::fs::MetadataExt,
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FEntry},
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{lost_slot, WatchConfig, CAPTURE_MAX};

use crate::model::hook::{Family, Hook};
use crate::model::packet::PortFilter;

pub(crate) use privileges::check_privileges;

/// The kernel programs, built by build.rs for the BPF target.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// (kernel tracepoint, the programs in tracer-ebpf that can attach to it, best first: the
/// first this kernel loads is used)
const TRACEPOINT_PROGRAMS: [(&str, &[&str]); 4] = [
    ("netif_receive_skb", &["bridge_receive"]),
    ("net_dev_queue", &["bridge_transmit"]),
    // The reason argument came in 5.17.
    ("kfree_skb", &["packet_dropped", "packet_dropped_no_reason"]),
    ("icmp_send", &["icmp_answered"]),
];

/// Where there are no BPF netfilter links (before 6.4): fentry on the function that runs a
/// hook's functions.
const NETFILTER_FENTRY: (&str, &str) = ("netfilter_hook_slow", "nf_hook_slow");

/// How the programs see each job on the running kernel: probed at attach time, never
/// assumed, and said in one line when a watch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    pub netfilter: NetfilterVia,
    /// `kfree_skb` gives the drop reason (5.17 and later); without it a netfilter drop is
    /// told by the hook the packet never left.
    pub drop_reasons: bool,
    /// The programs copy payload bytes a sender left in page fragments, or why not: then
    /// a TCP segment between pods over veth shows its headers but no DNS message.
    pub page_fragments: Result<(), String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetfilterVia {
    /// BPF netfilter links at every IPv4/IPv6 hook (6.4 and later), this many.
    Links(usize),
    /// fentry on `nf_hook_slow`: every hook that has functions to run.
    FEntry,
    /// Neither: hook paths, verdicts and the rules that drop are not shown.
    Unavailable(String),
}

impl std::fmt::Display for Capabilities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.netfilter {
            NetfilterVia::Links(n) => write!(f, "netfilter verdicts: BPF netfilter links ({n})")?,
            NetfilterVia::FEntry => write!(f, "netfilter verdicts: fentry on nf_hook_slow")?,
            NetfilterVia::Unavailable(why) => {
                write!(f, "netfilter verdicts: none ({why}): hook paths and the rules that drop are not shown")?
            }
        }
        if self.drop_reasons {
            f.write_str("; drops: kfree_skb with reasons")?;
        } else {
            f.write_str("; drops: kfree_skb without reasons (netfilter drops told by the hook a packet never left)")?;
        }
        match &self.page_fragments {
            Ok(()) => f.write_str("; payloads: linear data and page fragments"),
            // The blind spot says why.
            Err(_) => f.write_str("; payloads: linear data only"),
        }
    }
}

/// Netfilter programs and where in each hook's priority range they run.
/// The netfilter programs: one at the start of every hook; one at the end of the input
/// hook, where a packet that got there is delivered (watches that follow journeys only).
const NETFILTER_ENTRY: &str = "netfilter_entry";
const NETFILTER_DELIVERY: &str = "netfilter_delivery";

#[derive(Clone, Debug)]
pub(crate) struct WatchSettings {
    /// 0 traces every port.
    pub port: PortFilter,
    /// Bytes of each frame to copy in the kernel.
    pub snaplen: u32,
    pub ring_buffer_bytes: u32,
    /// Print the kernel programs' reports of rare failures (`--debug`).
    pub debug: bool,
    /// Send only what can become a finding (`--findings-only`).
    pub findings_only: bool,
    /// Attach programs that return at once (`--empty-programs`): nothing is traced.
    pub empty_programs: bool,
}

/// What attaching gives the watch: the programs, the ring buffer their records arrive
/// on, and the loss counters findings are checked against.
pub(crate) struct Attached {
    pub hooks: KernelHooks,
    pub events: RingBuf<MapData>,
    pub loss: loss::KernelLoss,
    /// With `--debug`: the programs' reports, to flush now and then.
    pub reports: Option<diagnostics::KernelReports>,
    /// The journeys in flight, swept for those that never ended.
    pub journeys: journeys::Journeys,
    /// Findings-only watches: what the kernel counted per key.
    pub counts: occurrences::KernelCounts,
}

/// The attached kernel programs. Dropping it detaches them.
pub(crate) struct KernelHooks {
    _ebpf: Ebpf,
    _netfilter: Vec<netfilter::NetfilterProgram>,
    lost: PerCpuArray<MapData, u64>,
    pub netns_inode: u32,
    pub conntrack_known: bool,
    /// How the programs see each job on this kernel.
    pub capabilities: Capabilities,
    /// `enum skb_drop_reason` of the running kernel: value → name without the
    /// `SKB_DROP_REASON_` prefix (numbers change between kernels, names do not).
    pub drop_reasons: std::collections::HashMap<u32, String>,
}

impl KernelHooks {
    /// What this run cannot see with these hooks (and in this mode).
    pub(crate) fn blind_spots(&self, findings_only: bool) -> Vec<crate::schema::blind_spot::BlindSpot> {
        blind_spots::blind_spots(&self.capabilities, self.conntrack_known, findings_only)
    }

    /// Attaches the programs.
    pub(crate) fn attach(settings: &WatchSettings) -> Result<Attached> {
        check_privileges()?;
        let kernel_btf = layout::KernelBtf::load_running()?;
        let mut resolved = layout::resolve_layout(&kernel_btf)?;
        let page_fragments = layout::resolve_page_fragments(&kernel_btf, &mut resolved.layout, kallsyms::running)
            .map_err(|why| format!("{why:#}"));
        let netns_inode = current_netns_inode()?;
        let drop_reasons = kernel_btf
            .enum_variants("skb_drop_reason")?
            .into_iter()
            .filter_map(|(name, value)| {
                let value = u32::try_from(value).ok()?;
                Some((value, name.trim_start_matches("SKB_DROP_REASON_").trim_start_matches("SKB_").to_string()))
            })
            .collect();
        let config = WatchConfig {
            port_be: settings.port.number().to_be(),
            _pad: 0,
            netns_inode,
            snaplen: settings.snaplen.min(CAPTURE_MAX as u32),
            // An eighth of the ring: a reader asleep on its drain timer is woken well
            // before the ring could fill.
            wakeup_bytes: settings.ring_buffer_bytes / 8,
            findings_only: u32::from(settings.findings_only),
            debug: u32::from(settings.debug),
            empty_programs: u32::from(settings.empty_programs),
            _pad2: 0,
            layout: resolved.layout,
        };

        let btf =
            Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux failed: tracer needs a kernel with BTF")?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("CONFIG", &config, true)
            .override_global("AYA_LOG_LEVEL", &diagnostics::log_level(settings.debug), true)
            .map_max_entries("EVENTS", settings.ring_buffer_bytes)
            .load(PROGRAMS)
            .map_err(|err| explain_load_error(anyhow!(err)))?;

        let mut reasons_given = true;
        for (tracepoint, candidates) in TRACEPOINT_PROGRAMS {
            // A findings-only watch starts nothing where frames enter a bridge.
            if settings.findings_only && tracepoint == "netif_receive_skb" {
                continue;
            }
            let program = attach_tracepoint(&mut ebpf, &btf, tracepoint, candidates)?;
            if program == "packet_dropped_no_reason" {
                reasons_given = false;
            }
        }

        #[cfg(feature = "fault-injection")]
        if injected_fault("error-mid-attach") {
            bail!("injected fault (TRACER_FAULT=error-mid-attach): stopping half-way through attaching");
        }

        let mut netfilter_programs = Vec::new();
        #[cfg(feature = "fault-injection")]
        let no_netfilter = injected_fault("no-netfilter");
        #[cfg(not(feature = "fault-injection"))]
        let no_netfilter = false;
        let netfilter = if !resolved.netfilter_known {
            NetfilterVia::Unavailable("no netfilter in this kernel's BTF".to_string())
        } else if no_netfilter {
            // The blind-spot tests' kernel without netfilter links or fentry.
            NetfilterVia::Unavailable("TRACER_FAULT=no-netfilter: no BPF netfilter links, no fentry".to_string())
        } else {
            match attach_netfilter_links(&ebpf, settings.findings_only) {
                Ok(programs) => {
                    netfilter_programs = programs;
                    NetfilterVia::Links(netfilter_programs.iter().map(|p| p.link_count()).sum())
                }
                Err(links) => match attach_fentry(&mut ebpf, &btf, NETFILTER_FENTRY) {
                    Ok(()) => NetfilterVia::FEntry,
                    Err(fentry) => {
                        NetfilterVia::Unavailable(format!("no BPF netfilter links: {links:#}; no fentry: {fentry:#}"))
                    }
                },
            }
        };
        let reports = if settings.debug { Some(diagnostics::KernelReports::take(&mut ebpf)?) } else { None };

        let events = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("map EVENTS missing from the kernel object: rebuild tracer"))?,
        )?;
        let lost = PerCpuArray::try_from(
            ebpf.take_map("LOST").ok_or_else(|| anyhow!("map LOST missing from the kernel object: rebuild tracer"))?,
        )?;
        let journeys = journeys::Journeys::new(
            ebpf.take_map("JOURNEYS")
                .ok_or_else(|| anyhow!("map JOURNEYS missing from the kernel object: rebuild tracer"))?,
        )?;
        let counts = occurrences::KernelCounts::new(
            ebpf.take_map("OCCURRENCES")
                .ok_or_else(|| anyhow!("map OCCURRENCES missing from the kernel object: rebuild tracer"))?,
        )?;
        let buckets = match ebpf.take_map("LOSS_BY_ENDPOINT") {
            Some(aya::maps::Map::Array(data)) => data,
            _ => bail!("map LOSS_BY_ENDPOINT missing from the kernel object: rebuild tracer"),
        };
        let mut program_fds: Vec<OwnedFd> = Vec::new();
        for (name, program) in ebpf.programs() {
            // Programs aya never loaded (the netfilter ones sit in its object too) have no fd.
            let Ok(fd) = program.fd() else { continue };
            program_fds.push(
                fd.as_fd().try_clone_to_owned().with_context(|| format!("duplicating the fd of program {name}"))?,
            );
        }
        for program in &netfilter_programs {
            if let Some(fd) = program.fd() {
                program_fds.push(fd.try_clone().context("duplicating a netfilter program's fd")?);
            }
        }
        let loss = loss::KernelLoss::new(buckets, program_fds)?;
        Ok(Attached {
            hooks: KernelHooks {
                _ebpf: ebpf,
                _netfilter: netfilter_programs,
                lost,
                netns_inode,
                conntrack_known: resolved.conntrack_known,
                capabilities: Capabilities { netfilter, drop_reasons: reasons_given, page_fragments },
                drop_reasons,
            },
            events,
            loss,
            reports,
            journeys,
            counts,
        })
    }

    /// Records the kernel could not queue, per CPU, over all programs.
    pub(crate) fn lost_per_cpu(&self) -> Result<Vec<u64>> {
        let mut per_cpu: Vec<u64> = Vec::new();
        for slot in 0..lost_slot::COUNT {
            let values = self.lost.get(&slot, 0).context("reading the lost-record counters")?;
            if per_cpu.len() < values.len() {
                per_cpu.resize(values.len(), 0);
            }
            for (total, value) in per_cpu.iter_mut().zip(values.iter()) {
                *total += *value;
            }
        }
        Ok(per_cpu)
    }
}

/// Fault injection for the safety tests (`TRACER_FAULT=error-mid-attach` or
/// `panic-after-attach`): they prove that a failure half-way through attaching, or a
/// panic while attached, leaves nothing behind in the kernel; and for the loss tests
/// (`slow-reader`), which need the ring buffer to overflow. Compiled only into the test
/// suite's build (feature `fault-injection`), never into a release.
#[cfg(feature = "fault-injection")]
pub(crate) fn injected_fault(name: &str) -> bool {
    std::env::var("TRACER_FAULT").is_ok_and(|fault| fault == name)
}

/// The inode the kernel identifies this process's network namespace by
/// (`net->ns.inum`), so the programs can keep to it.
fn current_netns_inode() -> Result<u32> {
    let meta = std::fs::metadata("/proc/self/ns/net").context("cannot read /proc/self/ns/net: is /proc mounted?")?;
    u32::try_from(meta.ino()).context("network namespace inode does not fit 32 bits")
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    // Under lockdown=confidentiality the kernel hides the helper from the verifier.
    if text.contains("bpf_probe_read_kernel") && (text.contains("unknown func") || text.contains("invalid func")) {
        return anyhow!(
            "the kernel refuses the kernel memory reads tracer's programs make: it is most likely locked down for confidentiality (see /sys/kernel/security/lockdown); tracer can run only where lockdown is `integrity` or `none`"
        );
    }
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        err.context("the kernel refused to load eBPF programs: run tracer as root (or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)")
    } else {
        err
    }
}

/// Loads and attaches the first of `candidates` this kernel accepts on `tracepoint`; returns
/// its name. When none loads, the error is the first candidate's (the one for the newest
/// kernels, whose verifier output says most).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    tracepoint: &str,
    candidates: &[&'static str],
) -> Result<&'static str> {
    let mut first_error = None;
    for &program in candidates {
        let hook: &mut BtfTracePoint = program_of(ebpf, program, "a BTF tracepoint")?;
        match hook.load(tracepoint, btf) {
            Ok(()) => {
                hook.attach()
                    .map_err(|err| anyhow!(err).context(format!("attaching {program} to tracepoint {tracepoint}")))?;
                return Ok(program);
            }
            Err(err) => {
                first_error.get_or_insert_with(|| {
                    explain_load_error(anyhow!(err).context(format!("loading {program} on tracepoint {tracepoint}")))
                });
            }
        }
    }
    Err(first_error.unwrap_or_else(|| anyhow!("no program for tracepoint {tracepoint}: rebuild tracer")))
}

/// The netfilter programs linked to every IPv4/IPv6 hook (BPF netfilter links, 6.4 and
/// later): the entry at the start of each, and, for a watch that follows journeys, the
/// delivery at the end of the input hook.
fn attach_netfilter_links(ebpf: &Ebpf, findings_only: bool) -> Result<Vec<netfilter::NetfilterProgram>> {
    let object = netfilter::RelocatedObject::new(PROGRAMS, ebpf)?;
    let mut programs = Vec::new();
    let mut entry = object.program(NETFILTER_ENTRY)?;
    entry.load().map_err(explain_load_error)?;
    for family in [Family::Ipv4, Family::Ipv6] {
        for hook in Hook::ALL {
            entry.attach(family, hook, netfilter::PRIORITY_EARLIEST)?;
        }
    }
    programs.push(entry);
    if !findings_only {
        let mut delivery = object.program(NETFILTER_DELIVERY)?;
        delivery.load().map_err(explain_load_error)?;
        for family in [Family::Ipv4, Family::Ipv6] {
            delivery.attach(family, Hook::LocalIn, netfilter::PRIORITY_LATEST)?;
        }
        programs.push(delivery);
    }
    Ok(programs)
}

/// An fentry program on a kernel function, as (program, function).
fn attach_fentry(ebpf: &mut Ebpf, btf: &Btf, (program, function): (&str, &str)) -> Result<()> {
    let fentry: &mut FEntry = program_of(ebpf, program, "an fentry program")?;
    fentry.load(function, btf).map_err(|err| anyhow!(err).context(format!("loading {program} on {function}")))?;
    fentry.attach().map_err(|err| anyhow!(err).context(format!("attaching {program} to {function}")))?;
    Ok(())
}

/// Program `name` of the kernel object as the type it is built as (`kind`, for the error).
fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the kernel object: rebuild tracer"))?
        .try_into()
        .with_context(|| format!("program {name} is not {kind}: rebuild tracer"))
}
