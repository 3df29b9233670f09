//! Netfilter hooks themselves (BPF_PROG_TYPE_NETFILTER): the same two programs are
//! linked to every IPv4/IPv6 hook, once at the very start of the hook's priority
//! range and once at its very end, so userspace can tell which hooks a packet
//! entered, which it left, and what conntrack and NAT made of it on the way.
//!
//! aya-obj 0.3 does not know a `netfilter` ELF section, and refuses the whole object
//! on an unknown one. These programs therefore sit in a `socket` section, which aya
//! parses and never loads on its own; tracer's netfilter loader loads them with the
//! netfilter program type. They only observe: the verdict is always NF_ACCEPT.

use tracer_common::{hook_position, lost_slot, record_kind, HookRecord};

use crate::{
    config::config,
    diagnostics::rare_failure,
    output,
    packet::{self, IpFamily},
    skb,
};

const NF_ACCEPT: i32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

#[unsafe(no_mangle)]
#[unsafe(link_section = "socket/netfilter")]
pub fn netfilter_early(ctx: *mut core::ffi::c_void) -> i32 {
    let _ = observe(ctx, hook_position::EARLY, lost_slot::NETFILTER_EARLY);
    NF_ACCEPT
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "socket/netfilter")]
pub fn netfilter_late(ctx: *mut core::ffi::c_void) -> i32 {
    let _ = observe(ctx, hook_position::LATE, lost_slot::NETFILTER_LATE);
    NF_ACCEPT
}

#[inline(always)]
fn observe(ctx: *mut core::ffi::c_void, position: u8, lost_slot: u32) -> Option<()> {
    // `struct bpf_nf_ctx { state; skb; }` is the program type's context ABI: the
    // verifier only allows these two loads, at these constant offsets.
    // SAFETY: ctx is the netfilter program context.
    let (state, skb) = unsafe {
        let fields = ctx as *const *const u8;
        (*fields, *fields.add(1))
    };
    let pf: u8 = skb::read(state, config!(layout.hook_state_pf))?;
    let family = match pf {
        NFPROTO_IPV4 => IpFamily::V4,
        NFPROTO_IPV6 => IpFamily::V6,
        other => {
            // Links exist only for the IPv4 and IPv6 hooks.
            rare_failure!("a netfilter hook ran for protocol family {}", other);
            return None;
        }
    };
    let net = skb::read_ptr(state, config!(layout.hook_state_net))?;
    let netns_inode = packet::netns_matches(net)?;
    let header = packet::network_header(skb)?;
    let parsed = packet::read_traced_flow(&header, family)?;

    let stamp = output::loss_stamp(&parsed.flow);
    let mut entry = output::reserve::<HookRecord>(lost_slot, &stamp)?;
    let record = entry.as_mut_ptr();
    // SAFETY: a reserved, exclusively owned slot of size_of::<HookRecord>().
    unsafe {
        output::fill_header(core::ptr::addr_of_mut!((*record).header), record_kind::HOOK, netns_inode, skb, &stamp);
        (*record).in_ifindex = device_ifindex(state, config!(layout.hook_state_in));
        (*record).out_ifindex = device_ifindex(state, config!(layout.hook_state_out));
        (*record).pf = pf;
        (*record).hook = match skb::read(state, config!(layout.hook_state_hook)) {
            Some(hook) => hook,
            None => {
                rare_failure!("the hook number of a netfilter hook state could not be read");
                u8::MAX
            }
        };
        (*record).position = position;
        (*record)._pad = [0; 5];
        (*record).flow = parsed.flow;
        packet::fill_conntrack(skb, core::ptr::addr_of_mut!((*record).conntrack));
    }
    entry.submit(0);
    Some(())
}

#[inline(always)]
fn device_ifindex(state: *const u8, field: u32) -> u32 {
    match skb::read_ptr(state, field) {
        Some(dev) => skb::read::<i32>(dev, config!(layout.dev_ifindex)).unwrap_or(0) as u32,
        None => 0,
    }
}
