//! Which pod holds an address, as the node's container runtime says: a table read over the
//! CRI API and kept fresh by a thread of its own, so that naming a packet never waits on
//! the runtime. The table is listed again every few seconds (ready sandboxes only: a
//! stopped one has given its addresses back), and sooner when an address no pod held is
//! seen, so a pod that just started is named within about a second. Only new sandboxes
//! are asked about; the listing itself is one call, as cheap as kubelet's own relisting.

pub mod cri;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use self::cri::{Runtime, SandboxCache};
use crate::model::pod::PodRef;

/// The table is listed again at least this often.
const RELIST_EVERY: Duration = Duration::from_secs(5);
/// And at most this often, however many unknown addresses ask for it.
const RELIST_GAP: Duration = Duration::from_secs(1);
/// Addresses remembered as asked about since the last change (service and node addresses
/// are never a pod's): bounded, so a scan of many addresses cannot grow it.
const MAX_MISSES: usize = 4_096;

/// Pods by address, as of one listing.
#[derive(Debug, Default)]
pub struct PodTable {
    by_ip: HashMap<IpAddr, PodRef>,
}

impl PodTable {
    fn of(cache: &SandboxCache) -> PodTable {
        let by_ip = cache.sandboxes().flat_map(|sandbox| sandbox.ips.iter().map(|ip| (*ip, sandbox.pod.clone()))).collect();
        PodTable { by_ip }
    }

    pub fn len(&self) -> usize {
        self.by_ip.values().collect::<HashSet<_>>().len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// What the refreshing thread publishes.
struct Shared {
    table: Mutex<Arc<PodTable>>,
    generation: AtomicU64,
}

/// The pods of this node, looked up by address.
pub struct Pods {
    table: Arc<PodTable>,
    shared: Arc<Shared>,
    generation: u64,
    /// Asks the thread to list again now; dropping it ends the thread.
    relist: SyncSender<()>,
    missed: HashSet<IpAddr>,
    socket: PathBuf,
}

impl Pods {
    /// Connects to the runtime at `socket`, reads its pods once (so the first packets are
    /// named), and keeps them fresh from then on. Returns the runtime's name and version too.
    pub fn start(socket: &Path) -> Result<(Pods, String)> {
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
        let (relist, asked) = mpsc::sync_channel(1);
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("tracer-pods".to_string())
            .spawn(move || keep_fresh(events, runtime, cache, &thread_shared, asked))
            .context("starting the thread that reads the pods")?;
        Ok((Pods { table, shared, generation: 0, relist, missed: HashSet::new(), socket: socket.to_path_buf() }, version))
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pods known now.
    pub fn table(&mut self) -> &PodTable {
        self.catch_up();
        &self.table
    }

    /// The pod holding `ip`, if any. An address no pod holds asks for a new listing (once,
    /// until the table changes): it may be a pod that has just started.
    pub fn pod_of(&mut self, ip: IpAddr) -> Option<&PodRef> {
        self.catch_up();
        if !self.table.by_ip.contains_key(&ip) {
            if self.missed.len() < MAX_MISSES && self.missed.insert(ip) {
                // Full: a listing is asked for already. Disconnected: the thread ended.
                let _: Result<(), TrySendError<()>> = self.relist.try_send(());
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

/// The refreshing thread: lists the sandboxes every [`RELIST_EVERY`], or when asked (at
/// most every [`RELIST_GAP`]), and publishes a new table when anything changed. A runtime
/// that stops answering is reported once, and again when it answers again; the last table
/// stays in use meanwhile. Ends when the [`Pods`] is dropped.
fn keep_fresh(events: tokio::runtime::Runtime, mut runtime: Runtime, mut cache: SandboxCache, shared: &Shared, asked: mpsc::Receiver<()>) {
    let mut failing = false;
    let mut last = Instant::now();
    loop {
        match asked.recv_timeout(RELIST_EVERY) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let since = last.elapsed();
        if since < RELIST_GAP {
            thread::sleep(RELIST_GAP - since);
        }
        last = Instant::now();
        match events.block_on(cache.refresh(&mut runtime)) {
            Ok(changed) => {
                if failing {
                    eprintln!("tracer: pod names: the runtime at {} answers again", runtime.socket().display());
                    failing = false;
                }
                if changed {
                    *shared.table.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(PodTable::of(&cache));
                    shared.generation.fetch_add(1, Ordering::Release);
                }
            }
            Err(err) if !failing => {
                eprintln!("tracer: warning: pod names: {err:#}; packets are named by the pods known before, until it answers");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
