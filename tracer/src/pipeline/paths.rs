//! A traced packet that died on its way: the drop, the netfilter hooks it passed since it
//! was last on the bridge path (it never left the last one of a netfilter drop), and the
//! endpoints whose loss buckets say whether a record of that path may be missing.

use super::loss::LossWindows;

pub(crate) use crate::model::netfilter::HookPass;
use crate::model::netfilter::{DropEvent, IcmpEvent};

/// A packet that died while traced: the drop and the hooks it passed.
#[derive(Clone, Debug)]
pub(crate) struct DroppedPacket {
    pub drop: DropEvent,
    pub path: Vec<HookPass>,
    /// The ICMP error the kernel answered with (e.g. a REJECT), when it did (a line names
    /// the answer in words).
    pub icmp: Option<IcmpEvent>,
    /// The packet's source from its first record on: a record of its path that was lost
    /// (the one that would show it left a hook) shows as growth there.
    pub loss: LossWindows,
}

impl DroppedPacket {
    pub(crate) fn new(drop: DropEvent, path: Vec<HookPass>, icmp: Option<IcmpEvent>) -> DroppedPacket {
        let mut loss = LossWindows::default();
        for stamped in path.iter().filter_map(|pass| pass.stamped) {
            loss.watch_source(stamped.src, stamped.loss, stamped.timestamp_ns);
        }
        loss.watch_source(drop.src, drop.loss, drop.timestamp_ns);
        DroppedPacket { drop, path, icmp, loss }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::netfilter::stopped_in;
    use crate::model::{
        hook::{Family, Hook},
        netfilter::Stamped,
        packet::{Conntrack, LossStamps},
    };

    fn pass(hook: Hook, left: bool, stamp: u32) -> HookPass {
        HookPass {
            hook,
            family: Family::Ipv4,
            left,
            conntrack: Conntrack::None,
            in_ifindex: 2,
            out_ifindex: 0,
            stamped: Some(Stamped {
                src: "10.244.0.5:40000".parse().expect("literal"),
                loss: LossStamps { src: stamp, dst: 0 },
                timestamp_ns: u64::from(stamp),
            }),
        }
    }

    #[test]
    fn a_drop_stops_in_the_hook_it_never_left_and_watches_its_paths_first_stamp() {
        let drop = DropEvent::example(
            10,
            "10.244.0.5:40000".parse().expect("literal"),
            "10.244.0.7:53".parse().expect("literal"),
        );
        let dropped =
            DroppedPacket::new(drop, vec![pass(Hook::PreRouting, true, 3), pass(Hook::Forward, false, 5)], None);
        assert_eq!(stopped_in(&dropped.path).map(|p| p.hook), Some(Hook::Forward));
        // The source's bucket is watched from the path's first record on.
        assert_eq!(dropped.loss.windows().iter().map(|w| w.stamp).collect::<Vec<_>>(), vec![3]);
        let accepted = DroppedPacket::new(dropped.drop.clone(), vec![pass(Hook::Forward, true, 4)], None);
        assert_eq!(stopped_in(&accepted.path), None, "a path whose hooks were all left stopped in none");
    }
}
