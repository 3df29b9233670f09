//! A map with a fixed capacity that forgets its oldest entries first: every table that
//! follows packets or flows for a while (DNS queries, hook paths, TCP streams) is one, so
//! a long watch on a busy node stays within a known amount of memory.
//!
//! Entries are kept in insertion order in a queue. A key that is removed and inserted
//! again (the kernel reuses skb addresses, clients reuse ports) leaves a stale queue entry
//! behind; each queue entry carries the sequence number of the insertion it belongs to,
//! so a stale one is recognised and skipped rather than mistaken for the live entry. The
//! queue is compacted whenever stale entries outnumber the live ones, so it is bounded
//! too, however long expiry does not run.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

struct Slot<V> {
    value: V,
    sequence: u64,
}

pub(crate) struct BoundedTable<K, V> {
    entries: HashMap<K, Slot<V>>,
    order: VecDeque<(u64, K)>,
    next_sequence: u64,
    capacity: usize,
    /// Entries dropped to stay within the capacity before they were resolved or expired.
    pub evicted: u64,
}

impl<K: Clone + Eq + Hash, V> BoundedTable<K, V> {
    pub(crate) fn new(capacity: usize) -> BoundedTable<K, V> {
        BoundedTable {
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_sequence: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries of the insertion-order queue, live or stale.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|slot| &slot.value)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|slot| &mut slot.value)
    }

    /// Inserts `value` as the newest entry (replacing one under the same key), evicting
    /// the oldest entries when the table is full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if !self.entries.contains_key(&key) {
            self.make_room();
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.order.push_back((sequence, key.clone()));
        self.entries.insert(key, Slot { value, sequence });
        self.compact_if_stale();
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|slot| slot.value)
    }

    /// Removes and returns the oldest entries for which `expired` holds, stopping at the
    /// first live one for which it does not (entries are judged in insertion order).
    pub(crate) fn expire(&mut self, mut expired: impl FnMut(&V) -> bool) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        while let Some((sequence, key)) = self.order.front() {
            match self.entries.get(key) {
                Some(slot) if slot.sequence == *sequence => {
                    if !expired(&slot.value) {
                        break;
                    }
                    let key = key.clone();
                    if let Some(slot) = self.entries.remove(&key) {
                        gone.push((key, slot.value));
                    }
                }
                // Removed since, or the key now belongs to a newer insertion.
                _ => {}
            }
            self.order.pop_front();
        }
        gone
    }

    fn make_room(&mut self) {
        while self.entries.len() >= self.capacity {
            let Some((sequence, key)) = self.order.pop_front() else { return };
            if self.entries.get(&key).is_some_and(|slot| slot.sequence == sequence) {
                self.entries.remove(&key);
                self.evicted += 1;
            }
        }
    }

    fn compact_if_stale(&mut self) {
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(sequence, key)| entries.get(key).is_some_and(|slot| slot.sequence == *sequence));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_oldest_first_and_evictions_counted() {
        let mut table = BoundedTable::new(3);
        for key in 0..5u32 {
            table.insert(key, key * 10);
        }
        assert_eq!(table.len(), 3);
        assert_eq!(table.evicted, 2);
        assert!(table.get(&0).is_none() && table.get(&1).is_none());
        assert_eq!(table.get(&4), Some(&40));
    }

    #[test]
    fn expiry_in_insertion_order_stops_at_the_first_live_entry() {
        let mut table = BoundedTable::new(10);
        for (key, age) in [(1u32, 5u32), (2, 9), (3, 1), (4, 8)] {
            table.insert(key, age);
        }
        let gone = table.expire(|age| *age >= 5);
        assert_eq!(gone, vec![(1, 5), (2, 9)]);
        assert_eq!(table.len(), 2, "3 is young and 4 waits behind it");
    }

    #[test]
    fn reused_keys_leave_no_garbage_however_long_expiry_does_not_run() {
        // A key removed and inserted again for ever (the kernel handing one skb address to
        // packet after packet) must not grow the queue: stale entries are compacted away.
        let mut table = BoundedTable::new(100);
        for value in 0..100_000u32 {
            table.insert(7u64, value);
            table.remove(&7);
        }
        assert!(table.is_empty());
        assert!(table.queued() <= 2 * 100 + 64, "queue grew to {}", table.queued());
    }

    #[test]
    fn a_replaced_entry_is_not_expired_by_its_stale_queue_entry() {
        let mut table = BoundedTable::new(10);
        table.insert(1u32, 100u32);
        table.insert(2, 100);
        table.insert(1, 0);
        let gone = table.expire(|age| *age >= 50);
        assert_eq!(gone, vec![(2, 100)], "the stale entry of key 1 is skipped, its new value is young");
        assert_eq!(table.get(&1), Some(&0));
    }
}
