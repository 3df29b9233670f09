//! Kernel programs of tracer. Built only for the BPF target (by `tracer/build.rs`);
//! a host build of this crate yields an empty program so workspace-wide commands work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds to map values (loss counters that nested programs share).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, adt_const_params))]
#![cfg_attr(target_arch = "bpf", allow(internal_features, incomplete_features))]

#[cfg(target_arch = "bpf")]
mod bridge;
#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod diagnostics;
#[cfg(target_arch = "bpf")]
mod drops;
#[cfg(target_arch = "bpf")]
mod findings_only;
#[cfg(target_arch = "bpf")]
mod journey;
#[cfg(target_arch = "bpf")]
mod netfilter;
#[cfg(target_arch = "bpf")]
mod output;
#[cfg(target_arch = "bpf")]
mod packet;
#[cfg(target_arch = "bpf")]
mod skb;

/// What every program module (bridge, drops, netfilter) works with: each reads the
/// configuration, parses the traced packet, records journey steps or findings and reports
/// its diagnostics, so each imports all of this with `use crate::prelude::*`.
#[cfg(target_arch = "bpf")]
mod prelude {
    pub(crate) use tracer_common::{journey_end, lost_slot, step_kind};

    pub(crate) use crate::{
        config::{config, return_if_empty},
        diagnostics, findings_only,
        journey::{self, End, Step},
        packet::{self, IpFamily, NetworkHeader, ParsedFlow},
        skb,
    };
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path, so a
    // program that loads never gets here.
    unsafe { core::hint::unreachable_unchecked() }
}

// GPL-compatible: bpf_probe_read_kernel and bpf_ktime_get_ns are GPL-only helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
