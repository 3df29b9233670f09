//! Journeys that never ended: a packet the kernel merged into another (IPv4/IPv6
//! reassembly continues with another fragment's skb), or consumed where no end is watched.
//! They stay in the kernel's table until it needs the room; read here once they are old
//! enough that no program is still adding to them, they are reported with the steps they
//! have, so the points the packet passed are still shown.

use anyhow::{anyhow, Result};
use aya::maps::{HashMap, MapData};
use tracer_common::JourneyRecord;

/// A journey whose last step is this old is no longer travelling: a packet crosses a node
/// in microseconds.
pub(crate) const ABANDONED_AFTER_NS: u64 = 200_000_000;

/// Journeys read and removed at most per sweep: a table full of them is cleared over a few
/// sweeps rather than in one long stall of the watch loop.
const MAX_PER_SWEEP: usize = 512;

pub(crate) struct Journeys {
    table: HashMap<MapData, u64, JourneyRecord>,
}

impl Journeys {
    pub(crate) fn new(map: aya::maps::Map) -> Result<Journeys> {
        let table =
            HashMap::try_from(map).map_err(|err| anyhow!("the kernel's journey table: {err}: rebuild tracer"))?;
        Ok(Journeys { table })
    }

    /// Removes the journeys whose last step is older than [`ABANDONED_AFTER_NS`] at kernel
    /// time `now_ns`, and returns them as records (unended).
    pub(crate) fn sweep(&mut self, now_ns: u64) -> Vec<JourneyRecord> {
        let mut abandoned = Vec::new();
        let keys: Vec<u64> = self.table.keys().filter_map(Result::ok).take(4 * MAX_PER_SWEEP).collect();
        for key in keys {
            if abandoned.len() >= MAX_PER_SWEEP {
                break;
            }
            let Ok(journey) = self.table.get(&key, 0) else { continue };
            if now_ns.saturating_sub(journey.last_step_ns) < ABANDONED_AFTER_NS {
                continue;
            }
            // A program may have started a fresh journey under a reused address since the
            // read: removing it then loses its first steps, never its end, which is sent
            // on its own.
            if self.table.remove(&key).is_ok() {
                abandoned.push(journey);
            }
        }
        abandoned
    }
}
