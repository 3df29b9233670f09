//! Turns kernel records into packet events a person or a program can read:
//! decoded headers, DNS, wall-clock time and interface names.

pub mod dns;
pub mod dns_decode;
pub mod firewall;
pub mod helpers;
pub mod interfaces;
pub mod netfilter;
pub mod node;
pub mod node_checks;
pub mod record;
pub mod packet;
pub mod pcapng;

use packet::PacketEvent;

/// Interface names for one event, resolved in the watched network namespace when
/// the event arrived (so a later rename or an ifindex reused after deletion does not
/// rewrite history).
#[derive(Clone, Debug, Default)]
pub struct InterfaceNames {
    pub ifname: Option<String>,
    pub in_ifname: Option<String>,
    pub bridge: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TracedPacket {
    pub event: PacketEvent,
    /// Nanoseconds since the Unix epoch.
    pub wall_time_ns: u64,
    pub names: InterfaceNames,
}

impl TracedPacket {
    pub fn new(event: PacketEvent, clock: &WallClock, interfaces: &mut interfaces::Interfaces) -> TracedPacket {
        let names = InterfaceNames {
            ifname: interfaces.name(event.ifindex),
            in_ifname: if event.ingress_ifindex == 0 { None } else { interfaces.name(event.ingress_ifindex) },
            bridge: interfaces.bridge_of(event.ifindex),
        };
        TracedPacket { wall_time_ns: clock.wall_ns(event.timestamp_ns), event, names }
    }
}

/// Maps the kernel's monotonic timestamps to wall-clock time. The offset is taken
/// once at start so that event order and spacing are exactly the kernel's.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        WallClock { offset_ns: realtime - monotonic }
    }

    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        u64::try_from(monotonic_ns as i128 + self.offset_ns).unwrap_or(0)
    }
}

/// The kernel's `bpf_ktime_get_ns` clock (CLOCK_MONOTONIC), in which records are stamped.
pub fn monotonic_now_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and a live timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}
