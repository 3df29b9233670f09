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

/// The kernel's map holds this many keys; a reader following more would only follow
/// keys the kernel has let go of.
const MAX_FOLLOWED: usize = 16384;

/// What was last read of one key.
struct Followed {
    since_ns: u64,
    total: u64,
    /// Kernel time of its last record: after two resend gaps, nothing more is counted
    /// without a new record.
    last_record_ns: u64,
    /// Its last record's event, to stand for the occurrences counted after it.
    event: KernelEvent,
}

#[derive(Default)]
pub(crate) struct OccurrenceCounts {
    followed: HashMap<OccurrenceKey, Followed>,
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
        if let Some(followed) = self.followed.get_mut(&key).filter(|f| f.since_ns == counted.since_ns) {
            // Two CPUs may send one key's records in the other order: the later count holds
            // the earlier one's occurrences, which then stands for none more.
            let times = counted.total.saturating_sub(followed.total);
            followed.total = followed.total.max(counted.total);
            followed.last_record_ns = followed.last_record_ns.max(timestamp_ns);
            followed.event = event.clone();
            return Times(times);
        }
        if self.followed.len() < MAX_FOLLOWED || self.followed.contains_key(&key) {
            let followed = Followed {
                since_ns: counted.since_ns,
                total: counted.total,
                last_record_ns: timestamp_ns,
                event: event.clone(),
            };
            self.followed.insert(key, followed);
        }
        Times(counted.total)
    }

    /// The occurrences the kernel counted since each followed key's last record, as that
    /// record's event stamped `now_ns` and standing for them. Keys with nothing more to
    /// count, or gone from the kernel's map, are let go.
    pub(crate) fn since_last_records(&mut self, kernel: &KernelCounts, now_ns: u64) -> Vec<KernelEvent> {
        let mut events = Vec::new();
        self.followed.retain(|key, followed| {
            let Some(counted) = kernel.get(key) else { return false };
            if counted.since_ns != followed.since_ns {
                return false;
            }
            if counted.total > followed.total {
                let mut event = followed.event.clone();
                set_times(&mut event, Times(counted.total - followed.total), now_ns);
                events.push(event);
                followed.total = counted.total;
            }
            // Counted without a record only within a resend gap of the last one sent.
            now_ns.saturating_sub(followed.last_record_ns) < 2 * OCCURRENCE_RESEND_NS
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

    fn get(&self, key: &OccurrenceKey) -> Option<Occurrences> {
        self.map.get(key, 0).ok().map(|count| count.counted)
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
    fn an_event_made_to_stand_for_later_occurrences_says_how_many_and_when() {
        let mut event = drop_at(10);
        set_times(&mut event, Times(42), 99);
        let KernelEvent::Dropped { drop, .. } = event else { panic!("a drop") };
        assert_eq!((drop.occurrences, drop.timestamp_ns), (Times(42), 99));
    }
}
