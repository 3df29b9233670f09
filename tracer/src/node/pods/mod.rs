//! Which pod holds an address, as the node's container runtime says: a table read over the
//! CRI API and kept fresh by a thread of its own, so that naming a packet never waits on
//! the runtime. The table is listed again every few seconds (ready sandboxes only: a
//! stopped one has given its addresses back); right away when an interface appears in the
//! watched namespace (a new pod's veth, whose sandbox is ready a moment later: listed every
//! [`NEW_POD_POLL`] until it is); and when an address no pod held is seen, at most every
//! [`RELIST_GAP`]. Only new sandboxes are asked about; the listing itself is one call, as
//! cheap as kubelet's own relisting.

pub(crate) mod cri;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

use self::cri::{Runtime, SandboxCache};
use crate::model::pod::PodRef;
use crate::system::netlink::set_receive_timeout;

/// The table is listed again at least this often.
const RELIST_EVERY: Duration = Duration::from_secs(5);
/// And at most this often, however many unknown addresses ask for it.
const RELIST_GAP: Duration = Duration::from_secs(1);
/// After a new interface, the sandbox it belongs to is looked for this often, this many
/// times at most.
const NEW_POD_POLL: Duration = Duration::from_millis(100);
const NEW_POD_POLLS: u32 = 30;
/// rtnetlink's multicast group of link changes (RTNLGRP_LINK), and a new link's message type.
const RTNLGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;

/// Why the refreshing thread is asked to list again.
enum Ask {
    /// An address no pod held was seen.
    UnknownAddress,
    /// An interface appeared: a pod may be starting.
    NewInterface,
}

/// Addresses remembered as asked about since the last change (service and node addresses
/// are never a pod's): bounded, so a scan of many addresses cannot grow it.
const MAX_MISSES: usize = 4_096;

/// Pods by address, as of one listing.
#[derive(Debug, Default)]
pub(crate) struct PodTable {
    by_ip: HashMap<IpAddr, PodRef>,
}

impl PodTable {
    fn of(cache: &SandboxCache) -> PodTable {
        let by_ip =
            cache.sandboxes().flat_map(|sandbox| sandbox.ips.iter().map(|ip| (*ip, sandbox.pod.clone()))).collect();
        PodTable { by_ip }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_ip.values().collect::<HashSet<_>>().len()
    }
}

/// What the refreshing thread publishes.
struct Shared {
    table: Mutex<Arc<PodTable>>,
    generation: AtomicU64,
}

/// The pods of this node, looked up by address.
pub(crate) struct Pods {
    table: Arc<PodTable>,
    shared: Arc<Shared>,
    generation: u64,
    /// Asks the thread to list again now; dropping it ends the thread.
    relist: SyncSender<Ask>,
    /// Cleared on drop: ends the thread that follows new interfaces.
    following: Arc<AtomicBool>,
    missed: HashSet<IpAddr>,
}

impl Pods {
    /// Connects to the runtime at `socket`, reads its pods once (so the first packets are
    /// named), and keeps them fresh from then on. Returns the runtime's name and version too.
    pub(crate) fn start(socket: &Path) -> Result<(Pods, String)> {
        let events = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime client's event loop")?;
        // The channel's worker is spawned on the event loop it is created in.
        let mut runtime = {
            let _inside = events.enter();
            Runtime::new(socket)
        };
        let mut cache = SandboxCache::default();
        let version = events.block_on(async {
            let version = runtime.version().await?;
            cache.refresh(&mut runtime).await?;
            anyhow::Ok(version)
        })?;
        let table = Arc::new(PodTable::of(&cache));
        let shared = Arc::new(Shared { table: Mutex::new(table.clone()), generation: AtomicU64::new(0) });
        let (relist, asked) = mpsc::sync_channel(4);
        let following = Arc::new(AtomicBool::new(true));
        follow_new_interfaces(relist.clone(), following.clone())?;
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("tracer-pods".to_string())
            .spawn(move || keep_fresh(events, runtime, cache, &thread_shared, asked))
            .context("starting the thread that reads the pods")?;
        let pods = Pods { table, shared, generation: 0, relist, following, missed: HashSet::new() };
        Ok((pods, version))
    }

    /// The pods known now.
    pub(crate) fn table(&mut self) -> &PodTable {
        self.catch_up();
        &self.table
    }

    /// The pod holding `ip`, if any. An address no pod holds asks for a new listing (once,
    /// until the table changes): it may be a pod that has just started.
    pub(crate) fn pod_of(&mut self, ip: IpAddr) -> Option<&PodRef> {
        self.catch_up();
        if !self.table.by_ip.contains_key(&ip) {
            if self.missed.len() < MAX_MISSES && self.missed.insert(ip) {
                // Full: a listing is asked for already. Disconnected: the thread ended.
                let _: Result<(), TrySendError<Ask>> = self.relist.try_send(Ask::UnknownAddress);
            }
            return None;
        }
        self.table.by_ip.get(&ip)
    }

    fn catch_up(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.table = self.shared.table.lock().unwrap_or_else(PoisonError::into_inner).clone();
            self.generation = generation;
            self.missed.clear();
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.following.store(false, Ordering::Relaxed);
    }
}

/// A runtime silent this long has its table withdrawn: its sandboxes may have gone and
/// their addresses been given to new pods, and a packet named after the wrong pod is worse
/// than one named by its address.
const WITHDRAW_AFTER: Duration = Duration::from_secs(30);

/// The refreshing thread: lists the sandboxes every [`RELIST_EVERY`] and when asked, and
/// publishes a new table when anything changed. A runtime that stops answering is reported
/// once, and again when it answers again; the last table stays in use meanwhile, for at most
/// [`WITHDRAW_AFTER`]. Ends when the [`Pods`] is dropped.
fn keep_fresh(
    events: tokio::runtime::Runtime,
    runtime: Runtime,
    cache: SandboxCache,
    shared: &Shared,
    asked: mpsc::Receiver<Ask>,
) {
    let mut lister = Lister { events, runtime, cache, failing_since: None, withdrawn: false };
    let mut last = Instant::now();
    loop {
        match asked.recv_timeout(RELIST_EVERY) {
            Ok(Ask::NewInterface) => {
                for _ in 0..NEW_POD_POLLS {
                    if lister.list(shared) {
                        break;
                    }
                    thread::sleep(NEW_POD_POLL);
                }
            }
            Ok(Ask::UnknownAddress) => {
                let since = last.elapsed();
                if since < RELIST_GAP {
                    thread::sleep(RELIST_GAP - since);
                }
                lister.list(shared);
            }
            Err(RecvTimeoutError::Timeout) => {
                lister.list(shared);
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        last = Instant::now();
    }
}

struct Lister {
    events: tokio::runtime::Runtime,
    runtime: Runtime,
    cache: SandboxCache,
    /// Since when the runtime has not answered.
    failing_since: Option<Instant>,
    /// The table was withdrawn for a silent runtime: packets are named by address only.
    withdrawn: bool,
}

impl Lister {
    /// Lists the sandboxes once; true when the table changed (and is published).
    fn list(&mut self, shared: &Shared) -> bool {
        match self.events.block_on(self.cache.refresh(&mut self.runtime)) {
            Ok(changed) => {
                if self.failing_since.take().is_some() {
                    crate::note_line!(
                        "tracer: pod names: the runtime at {} answers again",
                        self.runtime.socket().display()
                    );
                }
                let publish = changed || self.withdrawn;
                if publish {
                    publish_table(shared, PodTable::of(&self.cache));
                    self.withdrawn = false;
                }
                publish
            }
            Err(err) => {
                let since = *self.failing_since.get_or_insert_with(|| {
                    crate::note_line!("tracer: warning: pod names: {err:#}; packets are named by the pods known before, until it answers");
                    Instant::now()
                });
                if !self.withdrawn && since.elapsed() >= WITHDRAW_AFTER {
                    crate::note_line!(
                        "tracer: warning: pod names: the runtime at {} has not answered for {} s: packets are named by address only until it does (its pods' addresses may belong to other pods by now)",
                        self.runtime.socket().display(),
                        WITHDRAW_AFTER.as_secs()
                    );
                    publish_table(shared, PodTable::default());
                    self.withdrawn = true;
                }
                false
            }
        }
    }
}

fn publish_table(shared: &Shared, table: PodTable) {
    *shared.table.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    shared.generation.fetch_add(1, Ordering::Release);
}

/// Follows rtnetlink's link notifications in the watched namespace (the calling thread's)
/// on a thread of its own, and asks for a listing when an interface appears. Ends once
/// `following` is cleared (within a second: its reads time out).
fn follow_new_interfaces(relist: SyncSender<Ask>, following: Arc<AtomicBool>) -> Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket for new interfaces")?;
    socket.bind_auto().context("binding the rtnetlink socket")?;
    socket.add_membership(RTNLGRP_LINK).context("following link changes")?;
    set_receive_timeout(&socket, Duration::from_secs(1)).context("setting the rtnetlink socket's read timeout")?;
    thread::Builder::new()
        .name("tracer-pod-links".to_string())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            while following.load(Ordering::Relaxed) {
                // A timeout, or an overrun (the next listing catches up anyway).
                let Ok(len) = socket.recv(&mut &mut buf[..], 0) else { continue };
                if has_new_link(buf.get(..len).unwrap_or_default()) {
                    let _: Result<(), TrySendError<Ask>> = relist.try_send(Ask::NewInterface);
                }
            }
        })
        .context("starting the thread that follows new interfaces")?;
    Ok(())
}

/// Whether a datagram of netlink messages holds an RTM_NEWLINK.
fn has_new_link(mut datagram: &[u8]) -> bool {
    // Each message: u32 length (header included), u16 type, ...; padded to 4 bytes.
    while let (Some(len), Some(kind)) = (datagram.get(0..4), datagram.get(4..6)) {
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if u16::from_ne_bytes([kind[0], kind[1]]) == RTM_NEWLINK {
            return true;
        }
        if len < 16 {
            return false;
        }
        datagram = datagram.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, len: u32) -> Vec<u8> {
        let mut bytes = len.to_ne_bytes().to_vec();
        bytes.extend(kind.to_ne_bytes());
        bytes.resize(len.next_multiple_of(4) as usize, 0);
        bytes
    }

    #[test]
    fn a_new_link_is_found_among_other_messages() {
        let mut datagram = message(17, 21); // RTM_DELLINK, padded
        assert!(!has_new_link(&datagram));
        datagram.extend(message(RTM_NEWLINK, 32));
        assert!(has_new_link(&datagram));
        assert!(!has_new_link(&message(RTM_NEWLINK, 32)[..5]), "a cut header is not read");
        assert!(!has_new_link(&message(20, 3)), "a length shorter than a header ends the walk");
    }
}
