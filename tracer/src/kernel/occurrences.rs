//! Findings-only watches: the kernel counts each key of what can become a finding (a drop at
//! a netfilter hook, a reply leaving a bridge without conntrack) and sends a record of a key
//! at most once a second, with its count. Here those counts become how many occurrences each
//! record stands for, and the occurrences counted after a key's last record are read from the
//! kernel's map, each batch standing on that record's event.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use tracer_common::{OccurrenceCount, OccurrenceKey, Occurrences, OCCURRENCE_RESEND_NS};

use super::records::KernelEvent;
use crate::model::packet::Times;

/// Keys followed at most: twice the kernel map's, so that while the kernel holds a key this
/// side still follows it. A record of a key that found no room here stands for itself only
/// (its count since the kernel began the key may hold occurrences already told).
const MAX_FOLLOWED: usize = 2 * 16384;

/// Quiet keys are checked against the kernel's map every this many reads (once a second
/// each): a key the kernel let go of counts afresh, and is let go here too.
const PRUNE_EVERY: u32 = 30;

/// What was last read of one key.
struct Followed {
    since_ns: u64,
    total: u64,
    /// Kernel time of its last record: after two resend gaps, nothing more is counted
    /// without a new record.
    last_record_ns: u64,
    /// Its last record's event, to stand for the occurrences counted after it; none once
    /// the key is quiet (its total is kept for its next record).
    event: Option<KernelEvent>,
}

#[derive(Default)]
pub(crate) struct OccurrenceCounts {
    followed: HashMap<OccurrenceKey, Followed>,
    reads: u32,
}

impl OccurrenceCounts {
    /// The occurrences a record of `key` stands for, given the kernel's count sent with it
    /// (`total` 0: not counted, once). A record of a key the kernel began counting afresh
    /// (`since_ns` changed: its entry was evicted) stands for all it counts.
    pub(crate) fn record(&mut self, key: OccurrenceKey, counted: Occurrences, event: &KernelEvent) -> Times {
        if counted.total == 0 {
            return Times(1);
        }
        let timestamp_ns = event_time(event);
        let fresh = Followed {
            since_ns: counted.since_ns,
            total: counted.total,
            last_record_ns: timestamp_ns,
            event: Some(event.clone()),
        };
        let room = self.followed.len() < MAX_FOLLOWED;
        match self.followed.get_mut(&key) {
            Some(followed) if followed.since_ns == counted.since_ns => {
                // Two CPUs may send one key's records in the other order: the later count
                // holds the earlier one's occurrences, which then stands for none more.
                let times = counted.total.saturating_sub(followed.total);
                followed.total = followed.total.max(counted.total);
                followed.last_record_ns = followed.last_record_ns.max(timestamp_ns);
                followed.event = fresh.event;
                Times(times)
            }
            Some(followed) => {
                *followed = fresh;
                Times(counted.total)
            }
            None if room => {
                self.followed.insert(key, fresh);
                Times(counted.total)
            }
            None => Times(1),
        }
    }

    /// The occurrences the kernel counted (`kernel`: its count of a key, if it has the key)
    /// since each followed key's last record, as that record's event stamped `now_ns` and
    /// standing for them. A key two resend gaps past its last record has nothing more to
    /// count without a new one and goes quiet; quiet keys the kernel let go of are let go.
    pub(crate) fn since_last_records(
        &mut self,
        kernel: impl Fn(&OccurrenceKey) -> Option<OccurrenceCount>,
        now_ns: u64,
    ) -> Vec<KernelEvent> {
        self.reads = self.reads.wrapping_add(1);
        let prune = self.reads.is_multiple_of(PRUNE_EVERY);
        let mut events = Vec::new();
        self.followed.retain(|key, followed| {
            if followed.event.is_none() && !prune {
                return true;
            }
            let Some(count) = kernel(key) else { return false };
            let counted = count.counted;
            if counted.since_ns != followed.since_ns {
                return false;
            }
            let Some(event) = &followed.event else { return true };
            // A newer record is queued, not yet read: it carries these occurrences.
            if count.last_sent_ns > followed.last_record_ns {
                return true;
            }
            if counted.total > followed.total {
                let mut event = event.clone();
                set_times(&mut event, Times(counted.total - followed.total), now_ns);
                events.push(event);
                followed.total = counted.total;
            }
            // Counted without a record only within a resend gap of the last one sent.
            if now_ns.saturating_sub(followed.last_record_ns) >= 2 * OCCURRENCE_RESEND_NS {
                followed.event = None;
            }
            true
        });
        events
    }
}

/// The kernel's map of counted keys.
pub(crate) struct KernelCounts {
    map: BpfHashMap<MapData, OccurrenceKey, OccurrenceCount>,
}

impl KernelCounts {
    pub(crate) fn new(map: Map) -> Result<KernelCounts> {
        let map = BpfHashMap::try_from(map)
            .map_err(|err| anyhow!("the kernel's occurrence counts: {err}: rebuild tracer"))?;
        Ok(KernelCounts { map })
    }

    pub(crate) fn get(&self, key: &OccurrenceKey) -> Option<OccurrenceCount> {
        self.map.get(key, 0).ok()
    }
}

pub(crate) fn event_time(event: &KernelEvent) -> u64 {
    match event {
        KernelEvent::Packet { event, .. } | KernelEvent::StrayReply { reply: event, .. } => event.timestamp_ns,
        KernelEvent::Dropped { drop, .. } => drop.timestamp_ns,
    }
}

/// Makes `event` stand for `times` occurrences, the last of them at `timestamp_ns`.
pub(crate) fn set_times(event: &mut KernelEvent, times: Times, timestamp_ns: u64) {
    match event {
        KernelEvent::Packet { event, .. } | KernelEvent::StrayReply { reply: event, .. } => {
            event.occurrences = times;
            event.timestamp_ns = timestamp_ns;
        }
        KernelEvent::Dropped { drop, path, .. } => {
            drop.occurrences = times;
            drop.timestamp_ns = timestamp_ns;
            for pass in path {
                if let Some(stamped) = pass.stamped.as_mut() {
                    stamped.timestamp_ns = timestamp_ns;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::netfilter::DropEvent;

    fn drop_at(timestamp_ns: u64) -> KernelEvent {
        let src: SocketAddr = "10.244.0.5:40000".parse().expect("addr");
        let dst: SocketAddr = "10.96.0.10:53".parse().expect("addr");
        KernelEvent::Dropped { drop: DropEvent::example(timestamp_ns, src, dst), path: Vec::new(), icmp: None }
    }

    fn key(n: u8) -> OccurrenceKey {
        OccurrenceKey { hook: n, ..OccurrenceKey::default() }
    }

    #[test]
    fn each_record_stands_for_the_occurrences_since_the_one_before() {
        let mut counts = OccurrenceCounts::default();
        let counted = |total| Occurrences { since_ns: 7, total };
        assert_eq!(counts.record(key(1), counted(1), &drop_at(10)), Times(1));
        assert_eq!(counts.record(key(1), counted(250), &drop_at(20)), Times(249));
        // Sent by two CPUs, read in the other order: already counted.
        assert_eq!(counts.record(key(1), counted(240), &drop_at(21)), Times(0));
        assert_eq!(counts.record(key(1), counted(251), &drop_at(22)), Times(1));
        // Another key, and the first key counted afresh after the kernel let it go.
        assert_eq!(counts.record(key(2), counted(3), &drop_at(30)), Times(3));
        assert_eq!(counts.record(key(1), Occurrences { since_ns: 9, total: 4 }, &drop_at(40)), Times(4));
        // Not counted: once.
        assert_eq!(counts.record(key(3), Occurrences::default(), &drop_at(50)), Times(1));
    }

    #[test]
    fn a_quiet_key_keeps_its_count_for_its_next_record() {
        let mut counts = OccurrenceCounts::default();
        let counted = |total| Occurrences { since_ns: 7, total };
        let second = 1_000_000_000;
        // The kernel's entry: its record sent at 1 s.
        let kernel = |total| OccurrenceCount { counted: counted(total), last_sent_ns: second };
        assert_eq!(counts.record(key(1), counted(1), &drop_at(second)), Times(1));
        // Two more counted after the record, read a second later.
        let later = counts.since_last_records(|_| Some(kernel(3)), 2 * second);
        let [KernelEvent::Dropped { drop, .. }] = &later[..] else { panic!("one batch: {later:?}") };
        assert_eq!((drop.occurrences, drop.timestamp_ns), (Times(2), 2 * second));
        // Quiet for a minute, then one more: it stands for itself, not for all three before.
        for at in 3..60 {
            assert!(counts.since_last_records(|_| Some(kernel(3)), at * second).is_empty());
        }
        assert_eq!(counts.record(key(1), counted(4), &drop_at(61 * second)), Times(1));
        // The kernel let the key go: its next count begins afresh.
        for at in 62..100 {
            counts.since_last_records(|_| None, at * second);
        }
        assert_eq!(counts.record(key(1), Occurrences { since_ns: 99, total: 2 }, &drop_at(100 * second)), Times(2));
    }

    #[test]
    fn occurrences_a_queued_record_carries_are_left_to_it() {
        let mut counts = OccurrenceCounts::default();
        let counted = |total| Occurrences { since_ns: 7, total };
        assert_eq!(counts.record(key(1), counted(1), &drop_at(10)), Times(1));
        // The kernel sent another record at 20, not read yet: its count is its to tell.
        let queued = OccurrenceCount { counted: counted(5), last_sent_ns: 20 };
        assert!(counts.since_last_records(|_| Some(queued), 30).is_empty());
        assert_eq!(counts.record(key(1), counted(5), &drop_at(20)), Times(4));
    }

    #[test]
    fn an_event_made_to_stand_for_later_occurrences_says_how_many_and_when() {
        let mut event = drop_at(10);
        set_times(&mut event, Times(42), 99);
        let KernelEvent::Dropped { drop, .. } = event else { panic!("a drop") };
        assert_eq!((drop.occurrences, drop.timestamp_ns), (Times(42), 99));
    }
}
