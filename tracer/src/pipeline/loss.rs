//! Whether a record that could change a finding may have been lost.
//!
//! The kernel counts every record the ring buffer could not take once for each endpoint
//! (address and port) of its flow, in a table of buckets userspace reads directly, and
//! stamps each record it does send with the counts of its own two endpoints' buckets as
//! they were just before. A finding about a client's DNS query, or about a packet's way
//! through the netfilter hooks, rests on records that all involve one endpoint: the
//! client's (before and after any NAT), or the packet's source. If that endpoint's bucket
//! grew after the first record of the finding was stamped, a record of it may be missing,
//! and the finding is not stated as fact: it is counted as unconfirmed. Losses of other
//! flows (another client's flood) leave it alone, so a real problem is still named while
//! the ring buffer overflows.
//!
//! Programs the kernel skipped because another was running on the same CPU
//! (`recursion_misses`) left no stamp and no bucket: they count against every finding
//! whose window they fall in.

use std::net::SocketAddr;

use crate::{
    kernel::loss::KernelLoss,
    model::{monotonic_now_ns, packet::LossStamps},
    schema::finding::Unconfirmed,
};

/// One endpoint's loss bucket as a record of the finding stamped it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LossWindow {
    pub endpoint: SocketAddr,
    pub stamp: u32,
    /// Kernel time of the stamping record.
    pub since_ns: u64,
}

/// Windows kept for one finding at most: the client before and after NAT, and a spare.
const MAX_WINDOWS: usize = 3;

/// The endpoints a finding rests on, each from the first record that showed it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LossWindows(Vec<LossWindow>);

impl LossWindows {
    /// Watches `endpoint` from this record on, unless an earlier record already does.
    pub(crate) fn watch(&mut self, endpoint: SocketAddr, stamp: u32, since_ns: u64) {
        if self.0.len() < MAX_WINDOWS && !self.0.iter().any(|w| w.endpoint == endpoint) {
            self.0.push(LossWindow { endpoint, stamp, since_ns });
        }
    }

    /// Watches a record's source endpoint.
    pub(crate) fn watch_source(&mut self, src: SocketAddr, stamps: LossStamps, timestamp_ns: u64) {
        self.watch(src, stamps.src, timestamp_ns);
    }

    pub(crate) fn windows(&self) -> &[LossWindow] {
        &self.0
    }

    pub(crate) fn earliest_ns(&self) -> Option<u64> {
        self.0.iter().map(|w| w.since_ns).min()
    }
}

/// Answers whether records may have been lost.
pub(crate) trait LossWitness {
    /// Called before a batch of questions, all about records drained before this call.
    fn begin_settling(&mut self) {}

    /// Records involving the windows' endpoints that may have been lost since their stamps,
    /// counting up to now (which is after kernel time `until_ns`). 0 means the finding's
    /// records are complete. `subject` is what would be counted if they are not.
    fn lost_since(&mut self, subject: &Unconfirmed, windows: &LossWindows, until_ns: u64) -> u64;
}

/// A witness for runs where nothing can have been lost (tests).
#[cfg(test)]
pub(crate) struct NothingLost;

#[cfg(test)]
impl LossWitness for NothingLost {
    fn lost_since(&mut self, _subject: &Unconfirmed, _windows: &LossWindows, _until_ns: u64) -> u64 {
        0
    }
}

/// Recursion-miss readings over time, to find the count as it was before a window began.
pub(crate) struct MissHistory {
    /// (CLOCK_MONOTONIC ns taken just after the reading, total) in reading order.
    readings: Vec<(u64, u64)>,
    /// The reading taken when the programs were attached: the floor for any window.
    first: u64,
}

/// Readings kept: one per drain pass and tick, several seconds' worth.
const MAX_READINGS: usize = 256;

impl MissHistory {
    pub(crate) fn new(first: u64) -> MissHistory {
        MissHistory { readings: Vec::new(), first }
    }

    pub(crate) fn record(&mut self, taken_after_ns: u64, total: u64) {
        if self.readings.len() == MAX_READINGS {
            self.readings.drain(..MAX_READINGS / 2);
        }
        self.readings.push((taken_after_ns, total));
    }

    /// The total as read no later than `at_ns`: at most what it was then. Without such a
    /// reading, the one taken at attach time.
    pub(crate) fn before(&self, at_ns: u64) -> u64 {
        self.readings.iter().rev().find(|(taken, _)| *taken <= at_ns).map_or(self.first, |(_, total)| *total)
    }

    /// The newest reading, if it was taken after `at_ns`.
    pub(crate) fn after(&self, at_ns: u64) -> Option<u64> {
        self.readings.last().filter(|(taken, _)| *taken >= at_ns).map(|(_, total)| *total)
    }
}

/// Answers [`LossWitness`] from the running kernel programs: their per-endpoint loss
/// counts, and their recursion misses read over time.
pub(crate) struct KernelWitness {
    kernel: KernelLoss,
    history: MissHistory,
}

impl KernelWitness {
    pub(crate) fn new(kernel: KernelLoss) -> KernelWitness {
        let first = kernel.recursion_misses();
        KernelWitness { kernel, history: MissHistory::new(first) }
    }

    pub(crate) fn kernel(&self) -> &KernelLoss {
        &self.kernel
    }

    /// Takes a reading of the recursion misses, for windows that begin after it.
    pub(crate) fn read_misses(&mut self) {
        let total = self.kernel.recursion_misses();
        self.history.record(monotonic_now_ns(), total);
    }
}

impl LossWitness for KernelWitness {
    fn begin_settling(&mut self) {
        self.read_misses();
    }

    fn lost_since(&mut self, _subject: &Unconfirmed, windows: &LossWindows, until_ns: u64) -> u64 {
        let mut lost: u64 = windows
            .windows()
            .iter()
            .map(|window| u64::from((self.kernel.endpoint_losses(window.endpoint) as u32).wrapping_sub(window.stamp)))
            .sum();
        if let Some(since) = windows.earliest_ns() {
            let now = match self.history.after(until_ns) {
                Some(total) => total,
                None => {
                    self.read_misses();
                    self.history.after(until_ns).unwrap_or_else(|| self.kernel.recursion_misses())
                }
            };
            lost += now.saturating_sub(self.history.before(since));
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loss::bucket_of;

    #[test]
    fn buckets_match_the_kernels_function() {
        // The kernel hashes the address bytes as on the wire and the port as stored in the
        // record: network byte order read as a native u16.
        let endpoint: SocketAddr = "10.244.0.5:40000".parse().expect("literal");
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 244, 0, 5]);
        let port_be = u16::from_ne_bytes(40000u16.to_be_bytes());
        assert_eq!(bucket_of(endpoint), tracer_common::loss_bucket(&addr, port_be));
        assert!(bucket_of(endpoint) < tracer_common::LOSS_BUCKETS);
        let other: SocketAddr = "10.244.0.5:40001".parse().expect("literal");
        assert_ne!(bucket_of(endpoint), bucket_of(other), "neighbouring ports spread");
    }

    #[test]
    fn windows_keep_the_first_stamp_of_each_endpoint() {
        let client: SocketAddr = "10.244.0.5:40000".parse().expect("literal");
        let mut windows = LossWindows::default();
        windows.watch(client, 3, 100);
        windows.watch(client, 9, 200);
        assert_eq!(windows.windows(), &[LossWindow { endpoint: client, stamp: 3, since_ns: 100 }]);
    }

    #[test]
    fn miss_history_answers_with_a_reading_from_before_the_window() {
        let mut history = MissHistory::new(1);
        history.record(100, 2);
        history.record(200, 5);
        assert_eq!(history.before(50), 1, "nothing read before: the attach-time floor");
        assert_eq!(history.before(150), 2);
        assert_eq!(history.before(250), 5);
        assert_eq!(history.after(150), Some(5));
        assert_eq!(history.after(250), None, "the newest reading is older than asked");
    }
}
