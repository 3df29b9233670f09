//! Netfilter hooks themselves (BPF_PROG_TYPE_NETFILTER). `netfilter_entry` is linked to
//! every IPv4/IPv6 hook at the very start of its priority range: it records that a traced
//! packet entered the hook, with what conntrack and NAT had made of it so far; that the
//! packet left the hook shows in whatever comes next (another hook, a bridge stage), and a
//! hook it never left is the one a drop that follows names. `netfilter_delivery` is linked
//! to the input hook only, at the very end of its range: a packet that gets there is
//! delivered to a socket on the node, which ends its journey.
//!
//! Kernels without BPF netfilter links (before 6.4) get the same entry step from
//! `netfilter_hook_slow`, an fentry program on `nf_hook_slow`, which runs the hook
//! functions of every hook that has some; there a journey delivered locally is not ended
//! by a program, and is swept from the table once it is old instead.
//!
//! aya-obj 0.3 does not know a `netfilter` ELF section, and refuses the whole object
//! on an unknown one. These programs therefore sit in a `socket` section, which aya
//! parses and never loads on its own; tracer's netfilter loader loads them with the
//! netfilter program type. They only observe: the verdict is always NF_ACCEPT.

use aya_ebpf::{macros::fentry, programs::FEntryContext};

use crate::prelude::*;

const NF_ACCEPT: i32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

#[unsafe(no_mangle)]
#[unsafe(link_section = "socket/netfilter")]
pub fn netfilter_entry(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the netfilter program context, whose hook state and skb are BTF-typed.
    unsafe { at_link(ctx, lost_slot::NETFILTER_ENTRY, |state, skb| entered(state, skb)) }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "socket/netfilter")]
pub fn netfilter_delivery(ctx: *mut core::ffi::c_void) -> i32 {
    // SAFETY: the netfilter program context, whose hook state and skb are BTF-typed.
    unsafe { at_link(ctx, lost_slot::NETFILTER_DELIVERY, |state, skb| delivered(state, skb)) }
}

/// A link program's body: `observe` gets the hook state and skb of the context, and the
/// diagnostics of `slot` are reported whatever it found. A generic closure rather than a
/// function pointer, so that the call is inlined (BPF has no indirect calls).
///
/// # Safety
/// `ctx` must be the netfilter program context, and `observe` safe to call with its
/// BTF-typed hook state and skb.
#[inline(always)]
unsafe fn at_link(
    ctx: *mut core::ffi::c_void,
    slot: u32,
    observe: impl FnOnce(*const u8, *const u8) -> Option<()>,
) -> i32 {
    return_if_empty!(NF_ACCEPT);
    let (state, skb) = unsafe { context_pointers(ctx) };
    let _ = observe(state, skb);
    diagnostics::report(slot);
    NF_ACCEPT
}

/// `nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state, ...)`: the entry step
/// where there are no netfilter links.
#[fentry(function = "nf_hook_slow")]
pub fn netfilter_hook_slow(ctx: FEntryContext) -> u32 {
    return_if_empty!(0);
    let skb: *const u8 = ctx.arg(0);
    let state: *const u8 = ctx.arg(1);
    // SAFETY: the function's BTF-typed arguments.
    let _ = unsafe { entered(state, skb) };
    diagnostics::report(lost_slot::NETFILTER_ENTRY);
    0
}

/// `struct bpf_nf_ctx { state; skb; }` is the program type's context ABI: the verifier
/// only allows these two loads, at these constant offsets.
///
/// # Safety
/// `ctx` must be the netfilter program context.
#[inline(always)]
unsafe fn context_pointers(ctx: *mut core::ffi::c_void) -> (*const u8, *const u8) {
    unsafe {
        let fields = ctx as *const *const u8;
        (*fields, *fields.add(1))
    }
}

/// A traced packet at a hook: the hook state, the skb, and its addresses.
struct AtHook {
    state: *const u8,
    skb: *const u8,
    pf: u8,
    netns_inode: u32,
    header: NetworkHeader,
    parsed: &'static ParsedFlow,
}

/// The hook state's family, when it is IPv4 or IPv6 in the watched namespace: `(pf, family,
/// netns inode)`. Plain loads only.
///
/// # Safety
/// `state` must be a BTF-typed hook state pointer.
#[inline(always)]
unsafe fn watched_family(state: *const u8) -> Option<(u8, IpFamily, u32)> {
    // SAFETY (loads): `state` is BTF-typed.
    let pf: u8 = unsafe { skb::load(state, config!(layout.hook_state_pf)) };
    // Links exist only at the IPv4 and IPv6 hooks.
    let family = match pf {
        NFPROTO_IPV4 => IpFamily::V4,
        NFPROTO_IPV6 => IpFamily::V6,
        _ => return None,
    };
    // A link runs only in the namespace it was made in, but fentry on nf_hook_slow runs in
    // every one: plain loads let another namespace's packets go before the packet is read.
    let net = unsafe { skb::load_ptr(state, config!(layout.hook_state_net)) }?;
    let netns_inode = unsafe { packet::netns_matches(net) }?;
    Some((pf, family, netns_inode))
}

/// # Safety
/// `state` and `skb` must be BTF-typed hook state and skb pointers.
#[inline(always)]
unsafe fn traced_at_hook(state: *const u8, skb: *const u8, slot: u32) -> Option<AtHook> {
    let (pf, family, netns_inode) = unsafe { watched_family(state) }?;
    // Then the port: nearly every packet on a busy node is of other traffic.
    let header = unsafe { packet::network_header(skb) }?;
    let parsed = packet::read_traced_flow(&header, family, slot)?;
    Some(AtHook { state, skb, pf, netns_inode, header, parsed })
}

/// # Safety
/// `state` and `skb` must be BTF-typed hook state and skb pointers.
#[inline(always)]
unsafe fn entered(state: *const u8, skb: *const u8) -> Option<()> {
    let slot = lost_slot::NETFILTER_ENTRY;
    if config!(findings_only) != 0 {
        // The hook is noted for whatever drop may follow. Where every packet is noted it is not
        // read: that is left to the drop, which is rare, while every packet passes the hooks.
        let pf = if findings_only::notes_every_packet() {
            unsafe { watched_family(state) }?.0
        } else {
            unsafe { traced_at_hook(state, skb, slot) }?.pf
        };
        let (hook, in_ifindex, out_ifindex) = unsafe { hook_and_devices(state) };
        findings_only::note_hook(skb, hook, pf, in_ifindex, out_ifindex);
        return Some(());
    }
    let at = unsafe { traced_at_hook(state, skb, slot) }?;
    let (hook, in_ifindex, out_ifindex) = unsafe { hook_and_devices(at.state) };
    let step = unsafe { hook_step(&at, hook, in_ifindex, out_ifindex, slot) }?;
    if unsafe { journey::step(&step, false) } {
        unsafe { journey::copy_fragment_payload(at.skb) };
    }
    Some(())
}

/// The hook, and the ifindex of its input and output devices (0: none).
///
/// # Safety
/// `state` must be the context's BTF-typed hook state.
#[inline(always)]
unsafe fn hook_and_devices(state: *const u8) -> (u8, u32, u32) {
    // SAFETY (loads): `state` is BTF-typed.
    unsafe {
        (
            skb::load(state, config!(layout.hook_state_hook)),
            device_ifindex(state, config!(layout.hook_state_in)),
            device_ifindex(state, config!(layout.hook_state_out)),
        )
    }
}

/// # Safety
/// `state` and `skb` must be BTF-typed hook state and skb pointers.
#[inline(always)]
unsafe fn delivered(state: *const u8, skb: *const u8) -> Option<()> {
    let slot = lost_slot::NETFILTER_DELIVERY;
    let at = unsafe { traced_at_hook(state, skb, slot) }?;
    // The input hook's own step was recorded on entry; this only ends the journey.
    let step = unsafe { hook_step(&at, 0, 0, 0, slot) }?;
    let end = End { kind: journey_end::DELIVERED, ifindex: 0, drop_reason: 0, drop_location: 0 };
    unsafe { journey::finish(&step, false, &end) };
    Some(())
}

/// # Safety
/// `at` must come from [`traced_at_hook`].
#[inline(always)]
unsafe fn hook_step<'a>(at: &'a AtHook, hook: u8, in_ifindex: u32, out_ifindex: u32, slot: u32) -> Option<Step<'a>> {
    Some(Step {
        skb: at.skb,
        kind: step_kind::HOOK,
        point: hook,
        pf: at.pf,
        ifindex: in_ifindex,
        other_ifindex: out_ifindex,
        packet_len: 0,
        header: &at.header,
        parsed: at.parsed,
        netns_inode: at.netns_inode,
        slot,
    })
}

/// # Safety
/// `state` must be the context's BTF-typed hook state.
#[inline(always)]
unsafe fn device_ifindex(state: *const u8, field: u32) -> u32 {
    match unsafe { skb::load_ptr(state, field) } {
        Some(dev) => (unsafe { skb::load::<i32>(dev, config!(layout.dev_ifindex)) }) as u32,
        None => 0,
    }
}
