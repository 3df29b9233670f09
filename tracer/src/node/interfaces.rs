//! ifindex → interface table for the network namespace tracer runs in, kept current through
//! rtnetlink.
//!
//! Packet records only carry ifindexes, and interfaces come and go while tracer runs (pods start and
//! stop, veths are recreated, and the kernel reuses a freed ifindex for the next device). The table
//! is filled by one RTM_GETLINK dump and then follows RTM_NEWLINK / RTM_DELLINK notifications; when
//! notifications are lost (socket overrun) or a lookup misses, it dumps again, rate limited.
//! Notifications still queued when a dump replaces the table are replayed on top of it afterwards;
//! that is safe because each RTM_NEWLINK carries the device's whole state and they arrive in order,
//! so the last one for an ifindex is at least as new as the dump.
//!
//! Both netlink sockets are opened in `open()`, and a netlink socket stays bound to the network
//! namespace it was created in, so the table keeps describing the namespace tracer started in even
//! if a thread later switches namespaces.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::system::netlink::{set_receive_timeout, split_messages};

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceInfo {
    pub ifindex: u32,
    pub name: String,
    /// ifindex of the device this one is enslaved to (IFLA_MASTER): a bridge, bond, VRF, ...
    pub master: Option<u32>,
    /// IFLA_LINKINFO kind is "bridge".
    pub is_bridge: bool,
}

/// The interfaces of one network namespace, updated from rtnetlink notifications.
pub(crate) struct Interfaces {
    links: HashMap<u32, InterfaceInfo>,
    /// Blocking socket for dump requests; kept apart from `events` so dump replies and
    /// notifications never interleave.
    requests: Socket,
    /// Non-blocking socket subscribed to RTNLGRP_LINK.
    events: Socket,
    sequence: u32,
    last_dump: Option<Instant>,
    /// Set when the table may have missed changes (lost notifications, failed dump); the next
    /// allowed moment re-dumps.
    stale: bool,
    buf: Vec<u8>,
    /// Dumps attempted, for tests.
    dumps: u64,
    /// When queued notifications were last applied (see [`NOTIFICATION_INTERVAL`]).
    applied_at: Instant,
}

/// rtnetlink multicast group for link changes (RTNLGRP_LINK in linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
/// Re-dumps triggered by lookups of unknown ifindexes or by errors happen at most this often, so a
/// stream of packets from a vanished device cannot turn into a stream of dumps.
const MIN_REDUMP_INTERVAL: Duration = Duration::from_millis(200);
/// A link dump normally answers in well under a millisecond; this only bounds a kernel that stalls.
const DUMP_TIMEOUT: Duration = Duration::from_secs(2);
/// A dump the kernel flags as interrupted (NLM_F_DUMP_INTR: links changed meanwhile) may have
/// skipped devices; it is retried this many times before being accepted as the best available.
const DUMP_ATTEMPTS: usize = 3;
/// Kernel dump datagrams are capped at 32 KiB and link notifications are far smaller; twice that
/// leaves room, and MSG_TRUNC still detects anything larger.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Enough for a burst of a few thousand link notifications (the kernel caps it at rmem_max).
const EVENTS_RCVBUF: usize = 1 << 20;
/// Lookups apply queued notifications at most this often: applying them is a system call, and
/// a busy watch looks up several interfaces per record, tens of thousands of times a second. A
/// name may lag a change by this long (a lookup that misses applies them at once).
const NOTIFICATION_INTERVAL: Duration = Duration::from_millis(1);

impl Interfaces {
    /// Subscribes to link notifications and dumps the current links of the calling thread's network
    /// namespace.
    pub(crate) fn open() -> anyhow::Result<Interfaces> {
        let events = netlink_socket().context("cannot open an rtnetlink socket for link changes")?;
        events
            .add_membership(RTNLGRP_LINK)
            .context("cannot subscribe to rtnetlink link notifications (NETLINK_ADD_MEMBERSHIP RTNLGRP_LINK)")?;
        events.set_non_blocking(true).context("cannot make the rtnetlink notification socket non-blocking")?;
        // Best effort: with the default size a burst of changes overruns the socket sooner, which
        // is handled by a re-dump anyway.
        let _ = events.set_rx_buf_sz(EVENTS_RCVBUF);

        let requests = netlink_socket().context("cannot open an rtnetlink socket to list interfaces")?;
        set_receive_timeout(&requests, DUMP_TIMEOUT).context("cannot set a receive timeout on the rtnetlink socket")?;

        let mut interfaces = Interfaces {
            links: HashMap::new(),
            requests,
            events,
            sequence: 0,
            last_dump: None,
            stale: true,
            buf: vec![0; RECV_BUF_LEN],
            dumps: 0,
            applied_at: Instant::now(),
        };
        // Subscribed before dumping: a change racing with the dump is then also queued as a
        // notification, and replaying it on top of the dump gives the current state.
        interfaces.dump().context("cannot list network interfaces over rtnetlink")?;
        interfaces.apply_updates();
        Ok(interfaces)
    }

    /// Applies all queued link notifications without blocking. Problems are not reported: lost
    /// notifications or socket errors mark the table stale and it is re-dumped (rate limited).
    pub(crate) fn apply_updates(&mut self) {
        self.applied_at = Instant::now();
        loop {
            let mut chunk = &mut self.buf[..];
            // MSG_TRUNC makes recv return the datagram's real length, revealing truncation.
            match self.events.recv(&mut chunk, libc::MSG_TRUNC | libc::MSG_DONTWAIT) {
                Ok(0) => break,
                Ok(len) if len > self.buf.len() => self.stale = true,
                Ok(len) => self.apply_datagram(len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ENOBUFS: the kernel dropped notifications because the socket was full; the rest of
                // the queue is still worth reading.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.stale = true,
                Err(_) => {
                    self.stale = true;
                    break;
                }
            }
        }
        if self.stale && self.dump_allowed() {
            // A failure leaves `stale` set, so a later call tries again.
            let _ = self.dump();
        }
    }

    /// The interface with this ifindex. Pending notifications are applied first (at most every
    /// [`NOTIFICATION_INTERVAL`], and always on a miss); on a miss the links are dumped again
    /// (rate limited) before giving up.
    pub(crate) fn get(&mut self, ifindex: u32) -> Option<&InterfaceInfo> {
        // ifindex 0 means "no device" in the kernel; never worth a dump.
        if ifindex == 0 {
            return None;
        }
        if self.applied_at.elapsed() >= NOTIFICATION_INTERVAL || !self.links.contains_key(&ifindex) {
            self.apply_updates();
            if !self.links.contains_key(&ifindex) && self.dump_allowed() {
                let _ = self.dump();
            }
        }
        self.links.get(&ifindex)
    }

    /// The interface's name, None when no such interface exists.
    pub(crate) fn name(&mut self, ifindex: u32) -> Option<String> {
        self.get(ifindex).map(|info| info.name.clone())
    }

    /// The bridge an interface belongs to: itself if it is a bridge, its master if the master is a
    /// bridge.
    pub(crate) fn bridge_of(&mut self, ifindex: u32) -> Option<String> {
        let info = self.get(ifindex)?;
        if info.is_bridge {
            return Some(info.name.clone());
        }
        let master = info.master?;
        self.get(master).filter(|m| m.is_bridge).map(|m| m.name.clone())
    }

    fn dump_allowed(&self) -> bool {
        self.last_dump.is_none_or(|at| at.elapsed() >= MIN_REDUMP_INTERVAL)
    }

    /// Replaces the table with a fresh RTM_GETLINK dump.
    fn dump(&mut self) -> anyhow::Result<()> {
        self.dumps += 1;
        let result = self.dump_consistent();
        // Measured from the end: a dump slowed down by RTNL lock contention must not be followed
        // by another one right away.
        self.last_dump = Some(Instant::now());
        if result.is_err() {
            self.stale = true;
        }
        result
    }

    fn dump_consistent(&mut self) -> anyhow::Result<()> {
        let mut interrupted = None;
        for _ in 0..DUMP_ATTEMPTS {
            let (links, consistent) = self.dump_once()?;
            if consistent {
                self.links = links;
                self.stale = false;
                return Ok(());
            }
            interrupted = Some(links);
        }
        if let Some(links) = interrupted {
            self.links = links;
        }
        // Possibly incomplete: leave it stale so a later call dumps again.
        self.stale = true;
        Ok(())
    }

    /// One dump; the flag is false when the kernel says links changed while it was being produced.
    fn dump_once(&mut self) -> anyhow::Result<(HashMap<u32, InterfaceInfo>, bool)> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut request = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())),
        );
        request.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        request.header.sequence_number = sequence;
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.requests.send_to(&bytes, &SocketAddr::new(0, 0), 0).context("sending the RTM_GETLINK request failed")?;

        let mut links = HashMap::new();
        let mut consistent = true;
        loop {
            let mut chunk = &mut self.buf[..];
            let len = match self.requests.recv(&mut chunk, libc::MSG_TRUNC) {
                Ok(len) => len,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    bail!("the kernel did not finish the link dump within {DUMP_TIMEOUT:?}")
                }
                Err(e) => return Err(e).context("reading the link dump failed"),
            };
            if len > self.buf.len() {
                bail!("a link dump message was larger than {} bytes", self.buf.len());
            }
            for raw in split_messages(&self.buf[..len]) {
                let Ok(header) = NetlinkBuffer::new_checked(raw) else {
                    continue;
                };
                // Replies to an earlier dump that was abandoned (timeout) may still be queued.
                if header.sequence_number() != sequence {
                    continue;
                }
                if header.flags() & NLM_F_DUMP_INTR != 0 {
                    consistent = false;
                }
                // A message this crate cannot decode costs only that one device, which a later
                // miss retries; failing the whole dump would cost all of them.
                let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                    continue;
                };
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok((links, consistent)),
                    // An error message with code 0 is an acknowledgement, not a failure.
                    NetlinkPayload::Error(error) if error.code.is_some() => {
                        return Err(error.to_io()).context("the kernel refused the link dump");
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        if let Some(info) = interface_info(&link) {
                            links.insert(info.ifindex, info);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn apply_datagram(&mut self, len: usize) {
        for raw in split_messages(&self.buf[..len]) {
            let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                // A change we cannot decode is a change we do not know: dump to learn it.
                self.stale = true;
                continue;
            };
            match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) if is_device_message(&link) => {
                    match interface_info(&link) {
                        Some(info) => {
                            self.links.insert(info.ifindex, info);
                        }
                        None => self.stale = true,
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) if is_device_message(&link) => {
                    self.links.remove(&link.header.index);
                }
                NetlinkPayload::Overrun(_) => self.stale = true,
                _ => {}
            }
        }
    }
}

/// Whether a link notification describes the device itself. The bridge code also sends
/// RTM_NEWLINK / RTM_DELLINK with family AF_BRIDGE on the same group when a port joins or leaves
/// a bridge: those carry no link kind, and their DELLINK means "no longer a port", not "gone".
fn is_device_message(link: &LinkMessage) -> bool {
    link.header.interface_family == AddressFamily::Unspec
}

fn interface_info(link: &LinkMessage) -> Option<InterfaceInfo> {
    let mut name = None;
    let mut master = None;
    let mut is_bridge = false;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Controller(index) if *index != 0 => master = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                is_bridge = infos.iter().any(|info| matches!(info, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    Some(InterfaceInfo { ifindex: link.header.index, name: name?, master, is_bridge })
}

fn netlink_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::netns::scratch::{ip, ip_with_input, Netns};
    use std::process::Command;

    /// `ip -n NS ARGS...`
    fn ipn(ns: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `test` in a fresh namespace, with the interfaces opened there before it starts.
    fn with_interfaces(test: impl FnOnce(&str, &mut Interfaces) + Send) {
        let netns = Netns::new();
        netns.run(|| test(&netns.name, &mut Interfaces::open().unwrap()));
    }

    /// Adds a device that is neither bridge nor port, optionally at a given ifindex. dummy is the
    /// obvious kind but not built into every kernel (this machine's lacks it); ifb is the fallback.
    fn add_plain(ns: &str, name: &str, index: Option<u32>) {
        let index = index.map(|i| i.to_string());
        let mut last_error = String::new();
        for kind in ["dummy", "ifb"] {
            let mut args = vec!["-n", ns, "link", "add", name];
            if let Some(index) = &index {
                args.extend(["index", index.as_str()]);
            }
            args.extend(["type", kind]);
            let out = Command::new("ip").args(&args).output().expect("run ip");
            if out.status.success() {
                return;
            }
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        panic!("cannot add {name} as dummy or ifb: {last_error}");
    }

    /// ifindex of a device, as `ip` sees it.
    fn ifindex(ns: &str, dev: &str) -> u32 {
        let line = ipn(ns, &["-o", "link", "show", "dev", dev]);
        line.split(':').next().unwrap().trim().parse().unwrap()
    }

    #[test]
    fn names_masters_and_bridges_follow_changes() {
        with_interfaces(|ns, ifs| {
            // A fresh namespace holds only lo, always ifindex 1.
            assert_eq!(ifs.name(1).as_deref(), Some("lo"));
            assert_eq!(ifs.links.len(), 1, "{:?}", ifs.links);
            let dumps = ifs.dumps;

            ipn(ns, &["link", "add", "br-t", "type", "bridge"]);
            ipn(ns, &["link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b"]);
            ipn(ns, &["link", "set", "veth-a", "master", "br-t"]);
            ipn(ns, &["link", "set", "br-t", "up"]);
            ipn(ns, &["link", "set", "veth-a", "up"]);
            let (br, a, b) = (ifindex(ns, "br-t"), ifindex(ns, "veth-a"), ifindex(ns, "veth-b"));

            ifs.apply_updates();
            let bridge = ifs.get(br).unwrap().clone();
            assert_eq!(bridge, InterfaceInfo { ifindex: br, name: "br-t".into(), master: None, is_bridge: true });
            let port = ifs.get(a).unwrap().clone();
            assert_eq!(port, InterfaceInfo { ifindex: a, name: "veth-a".into(), master: Some(br), is_bridge: false });
            assert_eq!(ifs.name(b).as_deref(), Some("veth-b"));
            assert_eq!(ifs.bridge_of(br).as_deref(), Some("br-t"));
            assert_eq!(ifs.bridge_of(a).as_deref(), Some("br-t"));
            assert_eq!(ifs.bridge_of(b), None);
            assert_eq!(ifs.bridge_of(1), None);
            // All of that came from notifications, not from re-dumps.
            assert_eq!(ifs.dumps, dumps);

            // Leaving the bridge makes the kernel send an AF_BRIDGE RTM_DELLINK for the port; the
            // device itself must stay.
            ipn(ns, &["link", "set", "veth-a", "nomaster"]);
            assert_eq!(ifs.get(a).map(|i| (i.name.as_str(), i.master)), Some(("veth-a", None)));
            assert_eq!(ifs.bridge_of(a), None);

            // Renames show up.
            ipn(ns, &["link", "set", "veth-a", "name", "veth-renamed"]);
            assert_eq!(ifs.name(a).as_deref(), Some("veth-renamed"));

            // Deleting a veth removes both ends, by notification: looked at before any lookup,
            // since a lookup that misses may re-dump (once the rate limit allows, which a slow
            // run reaches).
            ipn(ns, &["link", "del", "veth-renamed"]);
            ifs.apply_updates();
            assert!(!ifs.links.contains_key(&a) && !ifs.links.contains_key(&b), "{:?}", ifs.links);
            assert!(ifs.links.contains_key(&br));
            assert_eq!(ifs.dumps, dumps);
            assert_eq!(ifs.name(a), None);
            assert_eq!(ifs.name(b), None);
            assert_eq!(ifs.get(0), None);
        });
    }

    #[test]
    fn reused_ifindex_shows_the_new_interface() {
        with_interfaces(|ns, ifs| {
            ipn(ns, &["link", "add", "br-old", "type", "bridge"]);
            let index = ifindex(ns, "br-old");
            assert_eq!(ifs.bridge_of(index).as_deref(), Some("br-old"));

            ipn(ns, &["link", "del", "br-old"]);
            add_plain(ns, "plain-new", Some(index));
            let info = ifs.get(index).unwrap();
            assert_eq!(info.name, "plain-new");
            assert!(!info.is_bridge);
            assert_eq!(ifs.bridge_of(index), None);

            // Also when both changes are already queued before the next look.
            ipn(ns, &["link", "del", "plain-new"]);
            let index_arg = index.to_string();
            let add_bridge = ["link", "add", "br-new", "index", &index_arg, "type", "bridge"];
            ipn(ns, &add_bridge);
            assert_eq!(ifs.bridge_of(index).as_deref(), Some("br-new"));
        });
    }

    #[test]
    fn lost_notifications_trigger_a_dump() {
        with_interfaces(|ns, ifs| {
            // The smallest receive buffer the kernel allows, then far more notifications than fit.
            ifs.events.set_rx_buf_sz(0i32).unwrap();
            // Bridges: a kind every kernel that runs tracer has.
            let batch: String = (0..200).map(|i| format!("link add dm{i} type bridge\n")).collect();
            ip_with_input(&["-n", ns, "-batch", "-"], &batch);

            let dumps = ifs.dumps;
            // Any dump in the last MIN_REDUMP_INTERVAL would delay the forced one.
            std::thread::sleep(MIN_REDUMP_INTERVAL);
            ifs.apply_updates();
            assert!(ifs.dumps > dumps, "the overrun was not noticed");
            assert!(!ifs.stale);
            assert_eq!(ifs.links.len(), 201);
            for i in [0, 99, 199] {
                let index = ifindex(ns, &format!("dm{i}"));
                assert_eq!(ifs.name(index), Some(format!("dm{i}")));
            }
        });
    }

    #[test]
    fn misses_redump_at_a_limited_rate() {
        with_interfaces(|ns, ifs| {
            // Drop the notification socket's subscription so only a dump can learn of new links.
            ifs.events.drop_membership(RTNLGRP_LINK).unwrap();
            add_plain(ns, "dm-a", None);
            let a = ifindex(ns, "dm-a");
            std::thread::sleep(MIN_REDUMP_INTERVAL);
            let dumps = ifs.dumps;
            assert_eq!(ifs.name(a).as_deref(), Some("dm-a"));
            assert_eq!(ifs.dumps, dumps + 1);

            // A device that never existed: one dump, then no more until the interval passes.
            assert_eq!(ifs.get(9999), None);
            assert_eq!(ifs.get(9999), None);
            assert_eq!(ifs.dumps, dumps + 1);
            std::thread::sleep(MIN_REDUMP_INTERVAL);
            assert_eq!(ifs.get(9999), None);
            assert_eq!(ifs.dumps, dumps + 2);
        });
    }

    #[test]
    fn dump_covers_many_link_kinds() {
        let netns = Netns::new();
        netns.run(|| {
            let ns = netns.name.as_str();
            ipn(ns, &["link", "add", "br0", "type", "bridge"]);
            ipn(ns, &["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
            ipn(ns, &["link", "set", "v0", "master", "br0"]);
            add_plain(ns, "p0", None);
            let optional: [&[&str]; 8] = [
                &["link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789"],
                &["link", "set", "vx0", "master", "br0"],
                &["tuntap", "add", "tap0", "mode", "tap"],
                &["link", "add", "vl0", "link", "v1", "type", "vlan", "id", "7"],
                &["link", "add", "mv0", "link", "v1", "type", "macvlan"],
                &["link", "add", "bond0", "type", "bond"],
                &["link", "add", "vrf0", "type", "vrf", "table", "10"],
                &["link", "set", "p0", "master", "vrf0"],
            ];
            for args in optional {
                // Kinds this kernel lacks are skipped; whatever exists must be listed.
                let _ = Command::new("ip").args(["-n", ns]).args(args).output();
            }
            let out = Command::new("ip").args(["-n", ns, "-o", "link", "show"]).output().unwrap();
            let listed: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|line| {
                    let mut fields = line.split(": ");
                    let index = fields.next().unwrap().trim().parse().unwrap();
                    let name = fields.next().unwrap().split('@').next().unwrap().to_string();
                    (index, name)
                })
                .collect();
            assert!(listed.len() >= 5, "{listed:?}");

            let mut ifs = Interfaces::open().unwrap();
            assert_eq!(ifs.links.len(), listed.len(), "{:?}", ifs.links);
            for (index, name) in &listed {
                assert_eq!(ifs.name(*index).as_ref(), Some(name));
            }
            assert_eq!(ifs.bridge_of(ifindex(ns, "v0")).as_deref(), Some("br0"));
            assert_eq!(ifs.bridge_of(ifindex(ns, "v1")), None);
            // p0 is either free or a VRF port: no bridge either way.
            assert_eq!(ifs.bridge_of(ifindex(ns, "p0")), None);
        });
    }

    #[test]
    fn interfaces_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<Interfaces>();
    }
}
