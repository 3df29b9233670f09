//! Gives a kernel event its place in the world: wall-clock time and the names of the
//! devices it was on, resolved when it arrives (so a later rename or an ifindex reused
//! after deletion does not rewrite history).

use crate::{
    model::{packet::PacketEvent, WallClock},
    node::interfaces::Interfaces,
    schema::packet::{InterfaceNames, TracedPacket},
};

pub(crate) fn traced(event: PacketEvent, clock: &WallClock, interfaces: &mut Interfaces) -> TracedPacket {
    let names = InterfaceNames {
        ifname: interfaces.name(event.ifindex),
        in_ifname: if event.ingress_ifindex == 0 { None } else { interfaces.name(event.ingress_ifindex) },
        bridge: interfaces.bridge_of(event.ifindex),
    };
    TracedPacket {
        wall_time_ns: clock.wall_ns(event.timestamp_ns),
        event,
        names,
        pods: Default::default(),
        hooks: Vec::new(),
        verdict: None,
        asked: None,
    }
}
