//! Follows each traced skb through the netfilter hooks. Hook records pile up per skb
//! until the packet shows up again on the bridge path (the hooks it passed are then
//! that packet line's path) or dies (a drop record: the path ends in the hook it
//! entered and never left).

use super::{bounded::BoundedTable, loss::LossWindows};
use serde::{Deserialize, Serialize};

pub use crate::model::netfilter::HookPass;
use crate::{
    model::netfilter::{DropEvent, HookEvent, IcmpEvent},
};

/// A packet that died while traced. Serialised, the kernel's part of its `dropped` line:
/// the drop and the hooks it passed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DroppedPacket {
    #[serde(flatten)]
    pub drop: DropEvent,
    #[serde(rename = "hooks")]
    pub path: Vec<HookPass>,
    /// The ICMP error the kernel answered with (e.g. a REJECT), when it did (a line names
    /// the answer in words).
    #[serde(skip)]
    pub icmp: Option<IcmpEvent>,
    /// The packet's source from its first record on: a record of its path that was lost
    /// (the one that would show it left a hook) shows as growth there.
    #[serde(skip)]
    pub loss: LossWindows,
}

impl DroppedPacket {
    /// The hook the packet entered and never left: where it was stopped.
    pub fn stopped_in(&self) -> Option<&HookPass> {
        self.path.last().filter(|pass| !pass.left)
    }
}

#[derive(Default)]
struct Pending {
    path: Vec<HookPass>,
    icmp: Option<IcmpEvent>,
    last_seen_ns: u64,
    loss: LossWindows,
}

pub struct HookPaths {
    pending: BoundedTable<u64, Pending>,
    /// How long a path may wait for its packet to show up again.
    max_age_ns: u64,
}

impl HookPaths {
    pub fn new(capacity: usize, max_age_ns: u64) -> HookPaths {
        HookPaths { pending: BoundedTable::new(capacity), max_age_ns }
    }

    /// Paths dropped to stay within the capacity.
    pub fn evicted(&self) -> u64 {
        self.pending.evicted
    }

    pub fn hook(&mut self, event: &HookEvent) {
        let pending = self.pending.get_or_insert_with(event.skb_id, Pending::default);
        pending.last_seen_ns = event.timestamp_ns;
        pending.loss.watch_source(event.src, event.loss, event.timestamp_ns);
        let same_hook = pending.path.last_mut().filter(|pass| pass.hook == event.hook && !pass.left);
        match (event.early, same_hook) {
            (false, Some(pass)) => {
                pass.left = true;
                pass.conntrack = event.conntrack.clone();
                pass.out_ifindex = event.out_ifindex;
            }
            // A late record without its early one (attached mid-flight, or the early
            // link is not there): the packet still passed the hook.
            (false, None) | (true, _) => pending.path.push(HookPass {
                hook: event.hook,
                family: event.family,
                left: !event.early,
                conntrack: event.conntrack.clone(),
                in_ifindex: event.in_ifindex,
                out_ifindex: event.out_ifindex,
            }),
        }
    }

    pub fn icmp(&mut self, event: &IcmpEvent) {
        if let Some(pending) = self.pending.get_mut(&event.skb_id) {
            pending.icmp = Some(event.clone());
        }
    }

    /// The hooks a packet passed since it was last on the bridge path.
    pub fn take_path(&mut self, skb_id: u64) -> Vec<HookPass> {
        self.pending.remove(&skb_id).map(|p| p.path).unwrap_or_default()
    }

    pub fn drop(&mut self, event: &DropEvent) -> DroppedPacket {
        let pending = self.pending.remove(&event.skb_id).unwrap_or_default();
        let mut loss = pending.loss;
        loss.watch_source(event.src, event.loss, event.timestamp_ns);
        DroppedPacket { drop: event.clone(), path: pending.path, icmp: pending.icmp, loss }
    }

    /// Forgets paths whose packet did not show up again by kernel time `now_ns`
    /// (delivered to a local socket, or sent out a device that is not a bridge port).
    pub fn expire(&mut self, now_ns: u64) {
        let max_age_ns = self.max_age_ns;
        self.pending.expire(|p| now_ns.saturating_sub(p.last_seen_ns) >= max_age_ns);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Entries of the expiry queue, live or stale: bounded like the paths themselves.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.pending.queued()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        hook::{Family, Hook},
        packet::Conntrack,
    };

    fn hook_event(skb_id: u64, at: u64, hook: Hook, early: bool) -> HookEvent {
        HookEvent {
            timestamp_ns: at,
            skb_id,
            loss: Default::default(),
            family: Family::Ipv4,
            hook,
            early,
            in_ifindex: 2,
            out_ifindex: 0,
            src: "10.244.0.5:40000".parse().expect("literal"),
            conntrack: Conntrack::None,
        }
    }

    fn drop_event(skb_id: u64) -> DropEvent {
        DropEvent::example(skb_id, 10, "10.244.0.5:40000".parse().expect("literal"), "10.244.0.7:53".parse().expect("literal"))
    }

    #[test]
    fn path_ends_in_the_hook_entered_and_never_left() {
        let mut paths = HookPaths::new(100, 1_000);
        for (at, hook, early) in [(1, Hook::PreRouting, true), (2, Hook::PreRouting, false), (3, Hook::Forward, true)] {
            paths.hook(&hook_event(7, at, hook, early));
        }
        let dropped = paths.drop(&drop_event(7));
        assert_eq!(dropped.path.len(), 2);
        assert!(dropped.path[0].left);
        assert_eq!(dropped.stopped_in().map(|p| p.hook), Some(Hook::Forward));
        assert!(paths.is_empty());
    }

    #[test]
    fn accepted_path_goes_to_the_next_packet_line() {
        let mut paths = HookPaths::new(100, 1_000);
        for (at, hook, early) in [(1, Hook::PreRouting, true), (2, Hook::PreRouting, false), (3, Hook::Forward, true), (4, Hook::Forward, false)] {
            paths.hook(&hook_event(9, at, hook, early));
        }
        let path = paths.take_path(9);
        assert_eq!(path.iter().map(|p| (p.hook, p.left)).collect::<Vec<_>>(), vec![(Hook::PreRouting, true), (Hook::Forward, true)]);
        assert!(paths.take_path(9).is_empty());
    }

    #[test]
    fn reused_skb_addresses_do_not_pile_up_in_the_expiry_queue() {
        // The kernel hands one skb address to packet after packet; whenever the expiry
        // runs, the address belongs to a live packet whose path is not taken yet. Matching
        // by address alone, that live packet hid every stale entry queued before it.
        let mut paths = HookPaths::new(100, 1_000);
        for at in 0..10_000u64 {
            paths.hook(&hook_event(7, at, Hook::PreRouting, true));
            paths.expire(at);
            paths.take_path(7);
        }
        assert!(paths.is_empty());
        assert!(paths.queued() <= 1, "stale entries piled up: {}", paths.queued());
    }

    #[test]
    fn paths_of_reused_addresses_stay_bounded_without_expiry() {
        // Node-local traffic passes the hooks and never reaches a bridge; with the drain
        // loop busy, expiry may not run for a while.
        let mut paths = HookPaths::new(100, 1_000);
        for at in 0..50_000u64 {
            paths.hook(&hook_event(at % 1_000, at, Hook::LocalIn, true));
        }
        assert!(paths.len() <= 100);
        assert!(paths.queued() <= 2 * 100 + 64, "queue grew to {}", paths.queued());
    }

    #[test]
    fn bounded_and_expiring() {
        let mut paths = HookPaths::new(2, 1_000);
        for skb in 0..4 {
            paths.hook(&hook_event(skb, skb, Hook::LocalIn, true));
        }
        assert_eq!(paths.len(), 2);
        assert_eq!(paths.evicted(), 2);
        paths.expire(10_000);
        assert!(paths.is_empty());
    }
}
