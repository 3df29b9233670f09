//! Reads the node state `tracer triage` checks, per network namespace: its bridges and their
//! ports, the forwarding, bridge-netfilter and reverse-path-filter sysctls, conntrack table
//! usage and statistics, IPVS services and the firewall rulesets. Reading only: what the
//! values mean is decided in `findings::node_config`.
//!
//! Another namespace is read from a thread of its own that enters it with setns(2): the
//! sysctls under /proc/sys/net, /proc/thread-self/net and netlink sockets all answer for the
//! calling thread's namespace, and the firewall tools started from that thread inherit it.
//! The thread ends with the read, so no other thread ever runs in a foreign namespace.

use std::{
    collections::BTreeMap,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};

use super::{interfaces::Interfaces, sysctl::read_sysctl};
use crate::{
    firewall::{self, Snapshot},
    model::sysctl::SysctlValue,
};

/// Where `ip netns add` pins named network namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace triage looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Netns {
    /// Its `ip netns` name, when it has one.
    pub name: Option<String>,
    /// The nsfs inode, which tracer's packet records call `netns`.
    pub inode: u64,
    /// The namespace tracer runs (and watches traffic) in.
    pub current: bool,
    /// The file that pins it, to enter it by (None for the current one).
    path: Option<PathBuf>,
}

impl Netns {
    /// `trlab1-node (netns 4026532595)` or `this namespace (netns 4026531840)`.
    pub(crate) fn label(&self) -> String {
        match (&self.name, self.current) {
            (Some(name), true) => format!("this namespace, {name} (netns {})", self.inode),
            (Some(name), false) => format!("{name} (netns {})", self.inode),
            (None, _) => format!("this namespace (netns {})", self.inode),
        }
    }

    /// What a command has to be prefixed with to act on this namespace from the host.
    pub(crate) fn exec_prefix(&self) -> String {
        match (&self.name, self.current) {
            (Some(name), false) => format!("ip netns exec {name} "),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
impl Netns {
    /// A namespace as a recorded reading names it; it cannot be entered.
    pub(crate) fn recorded(name: Option<&str>, inode: u64, current: bool) -> Netns {
        Netns { name: name.map(str::to_string), inode, current, path: None }
    }
}

/// The namespaces triage reads, the current one first; problems finding them, one line each.
///
/// Namespaces pinned under /run/netns are only looked at when tracer runs in the initial
/// network namespace: there they are the node's (pods, nested nodes). Run inside a namespace
/// with `ip netns exec`, tracer was pointed at that node, and the other pinned namespaces are
/// its siblings, not parts of it. When init's namespace cannot be read (some sandboxes deny
/// it even to root), a namespace that is itself pinned under /run/netns counts as such a
/// node and any other as the host's.
pub(crate) fn visible_namespaces() -> (Vec<Netns>, Vec<String>) {
    let mut errors = Vec::new();
    let current_inode = match std::fs::metadata("/proc/self/ns/net") {
        Ok(meta) => meta.ino(),
        Err(err) => {
            errors.push(format!("cannot read /proc/self/ns/net: {err}"));
            0
        }
    };
    let pinned = match pinned_namespaces(Path::new(NETNS_RUN_DIR)) {
        Ok(pinned) => pinned,
        Err(err) => {
            errors.push(format!("cannot list {NETNS_RUN_DIR}: {err}"));
            Vec::new()
        }
    };
    let current = Netns {
        name: pinned.iter().find(|(_, inode, _)| *inode == current_inode).map(|(name, _, _)| name.clone()),
        inode: current_inode,
        current: true,
        path: None,
    };
    let initial = match std::fs::metadata("/proc/1/ns/net") {
        Ok(meta) => meta.ino() == current_inode,
        Err(_) => current.name.is_none(),
    };
    let mut namespaces = vec![current];
    if initial {
        for (name, inode, path) in pinned {
            // One namespace may be pinned under several names: read it once.
            if namespaces.iter().all(|ns| ns.inode != inode) {
                namespaces.push(Netns { name: Some(name), inode, current: false, path: Some(path) });
            }
        }
    }
    (namespaces, errors)
}

/// (name, inode, path) of every namespace pinned in `dir`, by name. A missing directory means
/// none are pinned.
fn pinned_namespaces(dir: &Path) -> io::Result<Vec<(String, u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut pinned = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        // A name `ip netns add` created but never bound (or a stale file) is not nsfs: its
        // stat fails or gives a regular file's inode, and entering it fails later, reported then.
        if let Ok(meta) = std::fs::metadata(&path) {
            pinned.push((name, meta.ino(), path));
        }
    }
    pinned.sort();
    Ok(pinned)
}

/// Runs `read` in `netns`: directly for the current namespace, otherwise on a thread of its
/// own that enters the namespace first.
pub(crate) fn in_namespace<T: Send>(netns: &Netns, read: impl FnOnce() -> T + Send) -> Result<T> {
    match &netns.path {
        None => Ok(read()),
        Some(path) => crate::system::netns::run_in(path, read),
    }
}

/// A Linux bridge and the devices enslaved to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bridge {
    pub name: String,
    pub ports: Vec<String>,
}

/// An interface whose reverse-path filter matters: a bridge (the pods' gateway) or a routed
/// interface that is not a bridge port (a routed pod veth, an uplink).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RpFilter {
    pub interface: String,
    pub is_bridge: bool,
    /// `net.ipv4.conf.<interface>.rp_filter`.
    pub value: Option<u8>,
}

/// The conntrack table of one namespace at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConntrackReading {
    /// `net.netfilter.nf_conntrack_count`: entries in this namespace.
    pub count: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`: the limit (set in the initial namespace).
    pub max: Option<u64>,
    /// `/proc/net/stat/nf_conntrack`; None when conntrack is not in use or not built.
    pub stats: Option<ConntrackStats>,
    /// Why something could not be read, one line each.
    pub errors: Vec<String>,
}

/// `/proc/net/stat/nf_conntrack`: one row per CPU, one column per counter, in hex. The
/// columns differ between kernels (older ones have `searched`, newer `clashres`), so they
/// are taken from the header line, never from a fixed list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ConntrackStats {
    pub columns: Vec<String>,
    /// Per CPU, in column order. The kernel prints unsigned 32-bit counters that wrap.
    pub per_cpu: Vec<Vec<u32>>,
}

impl ConntrackStats {
    pub(crate) fn parse(text: &str) -> Result<ConntrackStats> {
        let mut lines = text.lines().filter(|line| !line.trim().is_empty());
        let header = lines.next().ok_or_else(|| anyhow!("empty statistics"))?;
        let columns: Vec<String> = header.split_whitespace().map(str::to_string).collect();
        if columns.is_empty() {
            bail!("no column names in the header");
        }
        let mut per_cpu = Vec::new();
        for (row, line) in lines.enumerate() {
            let values = line
                .split_whitespace()
                .map(|field| u32::from_str_radix(field, 16))
                .collect::<Result<Vec<u32>, _>>()
                .with_context(|| format!("row {} is not hexadecimal: {line:?}", row + 1))?;
            if values.len() != columns.len() {
                bail!("row {} has {} values for {} columns", row + 1, values.len(), columns.len());
            }
            per_cpu.push(values);
        }
        if per_cpu.is_empty() {
            bail!("no per-CPU rows");
        }
        Ok(ConntrackStats { columns, per_cpu })
    }

    fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// A counter summed over the CPUs; None when this kernel has no such column. `entries`
    /// is the namespace's entry count, the same on every row, and is not summed.
    pub(crate) fn total(&self, name: &str) -> Option<u64> {
        let at = self.column(name)?;
        if name == "entries" {
            return self.per_cpu.first().map(|row| u64::from(row[at]));
        }
        Some(self.per_cpu.iter().map(|row| u64::from(row[at])).sum())
    }

    /// How much a counter grew from `self` to `later`, CPU by CPU, allowing each CPU's 32-bit
    /// counter to have wrapped once. None when either reading lacks the counter or the CPUs
    /// differ (CPU hot-plug: the rows no longer pair up).
    pub(crate) fn growth(&self, later: &ConntrackStats, name: &str) -> Option<u64> {
        let (a, b) = (self.column(name)?, later.column(name)?);
        if self.per_cpu.len() != later.per_cpu.len() {
            return None;
        }
        Some(
            self.per_cpu
                .iter()
                .zip(&later.per_cpu)
                .map(|(before, after)| u64::from(after[b].wrapping_sub(before[a])))
                .sum(),
        )
    }
}

/// Everything triage checks in one namespace.
#[derive(Clone, Debug)]
pub(crate) struct NamespaceState {
    pub netns: Netns,
    pub bridges: Vec<Bridge>,
    /// `net.bridge.bridge-nf-call-iptables` / `-ip6tables`, `net.ipv4.ip_forward`,
    /// `net.ipv6.conf.all.forwarding`, `net.ipv4.conf.{all,default}.rp_filter`.
    pub sysctls: Vec<SysctlValue>,
    pub rp_filter: Vec<RpFilter>,
    pub conntrack: ConntrackReading,
    /// Virtual services IPVS balances (kube-proxy's IPVS mode): service NAT without DNAT rules.
    pub ipvs_services: usize,
    pub firewall: Snapshot,
    /// What could not be read, one line each.
    pub errors: Vec<String>,
}

impl NamespaceState {
    pub(crate) fn sysctl(&self, name: &str) -> Option<&SysctlValue> {
        self.sysctls.iter().find(|s| s.name == name)
    }
}

/// The sysctls read in every namespace that has bridges.
pub(crate) const SYSCTLS: [&str; 6] = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
];

/// Reads `netns`. Another namespace without bridges gives None: triage only looks into the
/// namespaces that hold a node's bridges (the current one is always read).
pub(crate) fn read_namespace(netns: &Netns) -> Result<Option<NamespaceState>> {
    let current = netns.current;
    let owned = netns.clone();
    in_namespace(netns, move || {
        let mut errors = Vec::new();
        let links = match list_links() {
            Ok(links) => links,
            Err(err) => {
                errors.push(format!("cannot list interfaces: {err:#}"));
                Vec::new()
            }
        };
        let bridges = bridges_of(&links);
        if bridges.is_empty() && !current {
            return None;
        }
        let rp_filter = links
            .iter()
            .filter(|link| link.name != "lo" && (link.is_bridge || link.master.is_none()))
            .map(|link| RpFilter {
                interface: link.name.clone(),
                is_bridge: link.is_bridge,
                value: read_sysctl(&format!("net.ipv4.conf.{}.rp_filter", link.name))
                    .value
                    .and_then(|v| v.parse().ok()),
            })
            .collect();
        let firewall = firewall::snapshot();
        errors.extend(firewall.errors.iter().cloned());
        Some(NamespaceState {
            netns: owned,
            bridges,
            sysctls: SYSCTLS.iter().map(|name| read_sysctl(name)).collect(),
            rp_filter,
            conntrack: read_conntrack_here(),
            ipvs_services: count_ipvs_services(),
            firewall,
            errors,
        })
    })
}

/// The conntrack table of `netns` now (the second reading, after the traffic window).
pub(crate) fn read_conntrack(netns: &Netns) -> Result<ConntrackReading> {
    in_namespace(netns, read_conntrack_here)
}

fn read_conntrack_here() -> ConntrackReading {
    let mut reading = ConntrackReading::default();
    let number = |name: &str| read_sysctl(name).value.and_then(|v| v.parse::<u64>().ok());
    reading.count = number("net.netfilter.nf_conntrack_count");
    reading.max = number("net.netfilter.nf_conntrack_max");
    match read_proc_net("stat/nf_conntrack") {
        Ok(text) => match ConntrackStats::parse(&text) {
            Ok(stats) => reading.stats = Some(stats),
            Err(err) => reading.errors.push(format!("cannot parse /proc/net/stat/nf_conntrack: {err:#}")),
        },
        // No conntrack in this kernel or namespace: nothing to count.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => reading.errors.push(format!("cannot read /proc/net/stat/nf_conntrack: {err}")),
    }
    reading
}

/// `/proc/thread-self/net/<file>`: the calling thread's namespace, which may differ from the
/// process's.
fn read_proc_net(file: &str) -> io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/thread-self/net").join(file))
}

/// Virtual services in `/proc/net/ip_vs` (lines starting with the protocol), 0 without IPVS.
fn count_ipvs_services() -> usize {
    read_proc_net("ip_vs").map(|text| parse_ipvs_services(&text)).unwrap_or(0)
}

fn parse_ipvs_services(text: &str) -> usize {
    text.lines().filter(|line| ["TCP ", "UDP ", "SCTP ", "FWM "].iter().any(|p| line.starts_with(p))).count()
}

/// One interface of the namespace, as far as triage needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    name: String,
    ifindex: u32,
    master: Option<u32>,
    is_bridge: bool,
}

/// The interfaces of the calling thread's namespace: names from /proc/net/dev, kinds and
/// masters from an rtnetlink dump of the same namespace.
fn list_links() -> Result<Vec<Link>> {
    let dev = read_proc_net("dev").context("reading /proc/net/dev")?;
    let mut table = Interfaces::open()?;
    let mut links = Vec::new();
    for name in parse_dev_names(&dev) {
        let Ok(cname) = std::ffi::CString::new(name.as_str()) else { continue };
        // SAFETY: a NUL-terminated name; the call only reads it. It asks a socket of this
        // thread's namespace, like the netlink dump.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        // 0: the device went away since /proc/net/dev was read.
        if ifindex == 0 {
            continue;
        }
        if let Some(info) = table.get(ifindex) {
            links.push(Link { name: info.name.clone(), ifindex, master: info.master, is_bridge: info.is_bridge });
        }
    }
    links.sort_by_key(|link| link.ifindex);
    Ok(links)
}

/// Interface names from `/proc/net/dev` (`  name: rx-bytes ...` after two header lines).
fn parse_dev_names(text: &str) -> Vec<String> {
    text.lines()
        .skip(2)
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim().to_string()))
        .filter(|name| !name.is_empty())
        .collect()
}

fn bridges_of(links: &[Link]) -> Vec<Bridge> {
    let mut ports: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for link in links {
        if let Some(master) = link.master {
            ports.entry(master).or_default().push(link.name.clone());
        }
    }
    links
        .iter()
        .filter(|link| link.is_bridge)
        .map(|link| Bridge { name: link.name.clone(), ports: ports.remove(&link.ifindex).unwrap_or_default() })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Recorded on kernel 6.18 (2 CPUs) by `tracer triage` in the node namespace of a lab whose
    /// conntrack table had been filled to nf_conntrack_max (262144) with assured UDP flows over
    /// loopback, so none could be evicted: before and after a window in which a pod's three DNS
    /// queries to the ClusterIP were refused (`drop` +3; the 130 before are from the fill).
    pub(crate) const TABLE_FULL_BEFORE: &str = include_str!("../../tests/data/nf_conntrack_stat.table_full.before");
    pub(crate) const TABLE_FULL_AFTER: &str = include_str!("../../tests/data/nf_conntrack_stat.table_full.after");

    /// Recorded on kernel 6.18 (2 CPUs) in a namespace that received 20000 TCP SYNs twice
    /// each, the two copies sent at the same moment from both CPUs: the copy confirmed second
    /// clashed with the first and was dropped (TCP cannot resolve a clash). The kernel counts
    /// such a loss in both `insert_failed` and `drop`.
    pub(crate) const INSERT_RACE_BEFORE: &str = include_str!("../../tests/data/nf_conntrack_stat.insert_race.before");
    pub(crate) const INSERT_RACE_AFTER: &str = include_str!("../../tests/data/nf_conntrack_stat.insert_race.after");

    #[test]
    fn parses_per_cpu_hex_into_totals() {
        let before = ConntrackStats::parse(TABLE_FULL_BEFORE).expect("parses");
        let after = ConntrackStats::parse(TABLE_FULL_AFTER).expect("parses");
        assert_eq!(after.per_cpu.len(), 2);
        assert_eq!(after.columns[0], "entries");
        assert_eq!(after.total("entries"), Some(262_144));
        assert_eq!(before.total("entries"), Some(262_144));
        assert_eq!(after.total("drop"), Some(0x43 + 0x42));
        assert_eq!(after.total("early_drop"), Some(0));
        assert_eq!(before.growth(&after, "drop"), Some(3));
        assert_eq!(before.growth(&after, "early_drop"), Some(0));
        assert_eq!(before.growth(&after, "insert_failed"), Some(0));
        assert_eq!(after.total("searched"), None, "a column this kernel does not have");

        let before = ConntrackStats::parse(INSERT_RACE_BEFORE).expect("parses");
        let after = ConntrackStats::parse(INSERT_RACE_AFTER).expect("parses");
        assert_eq!(before.growth(&after, "insert_failed"), Some(0xf2a + 0x3cdb - 1));
        assert_eq!(before.growth(&after, "drop"), before.growth(&after, "insert_failed"));
    }

    #[test]
    fn older_kernel_columns_are_taken_from_the_header() {
        // The 4.x layout: `searched` and `delete_list`, no `clashres`.
        let text = "entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                    000001a4  00000000 0000beef 00000000 00000010 00000000 00000000 00000000 00000000 00000007 00000000 00000000 00000000  00000000 00000000 00000000 00000003\n\
                    000001a4  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let stats = ConntrackStats::parse(text).expect("parses");
        assert_eq!(stats.total("entries"), Some(0x1a4));
        assert_eq!(stats.total("insert_failed"), Some(9));
        assert_eq!(stats.total("found"), Some(0xbef0));
        assert_eq!(stats.total("clashres"), None);
    }

    #[test]
    fn growth_survives_a_wrapped_counter() {
        let before = ConntrackStats { columns: vec!["drop".into()], per_cpu: vec![vec![u32::MAX - 1], vec![5]] };
        let after = ConntrackStats { columns: vec!["drop".into()], per_cpu: vec![vec![2], vec![6]] };
        assert_eq!(before.growth(&after, "drop"), Some(4 + 1));
        let fewer_cpus = ConntrackStats { columns: vec!["drop".into()], per_cpu: vec![vec![2]] };
        assert_eq!(before.growth(&fewer_cpus, "drop"), None);
    }

    #[test]
    fn malformed_statistics_are_errors_not_zeros() {
        assert!(ConntrackStats::parse("").is_err());
        assert!(ConntrackStats::parse("entries drop\n").is_err(), "no rows");
        assert!(ConntrackStats::parse("entries drop\n00000001\n").is_err(), "short row");
        assert!(ConntrackStats::parse("entries drop\n0000000g 00000000\n").is_err(), "not hex");
        assert!(ConntrackStats::parse("entries drop\n1ffffffff 00000000\n").is_err(), "beyond 32 bits");
    }

    #[test]
    fn interface_names_from_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
                    cni0:    1234      10    0    0    0     0          0         0     5678      12    0    0    0     0       0          0\n\
                    veth-client:  1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n";
        assert_eq!(parse_dev_names(text), vec!["lo", "cni0", "veth-client"]);
    }

    #[test]
    fn bridges_collect_their_ports() {
        let link = |name: &str, ifindex, master, is_bridge| Link { name: name.to_string(), ifindex, master, is_bridge };
        let links = vec![
            link("lo", 1, None, false),
            link("cni0", 2, None, true),
            link("veth-client", 3, Some(2), false),
            link("veth-server", 4, Some(2), false),
            link("bond0", 5, None, false),
            link("eth1", 6, Some(5), false),
        ];
        assert_eq!(
            bridges_of(&links),
            vec![Bridge { name: "cni0".into(), ports: vec!["veth-client".into(), "veth-server".into()] }]
        );
    }

    #[test]
    fn ipvs_services_are_counted() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\nUDP  0A60000A:0035 rr\n  -> 0AF40007:0035      Masq    1      0          0\nTCP  0A600001:01BB rr\n";
        assert_eq!(parse_ipvs_services(text), 2);
        assert_eq!(parse_ipvs_services("IP Virtual Server version 1.2.1 (size=4096)\n"), 0);
    }

    #[test]
    fn reads_this_namespace() {
        let (namespaces, _) = visible_namespaces();
        let current = &namespaces[0];
        assert!(current.current);
        let state = read_namespace(current).expect("reads").expect("the current namespace is always read");
        assert_eq!(state.sysctls.len(), SYSCTLS.len());
        assert!(matches!(state.sysctl("net.ipv4.ip_forward").and_then(|s| s.value.as_deref()), Some("0") | Some("1")));
    }
}
