//! What a run counted, printed when it ends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    model::serde_forms,
    schema::{blind_spot::BlindSpot, finding::FindingKind},
};

/// What a watch counted, printed when it ends. Serialised, the JSON `"type": "summary"`
/// line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename = "summary")]
pub(crate) struct Summary {
    /// Packet lines: one per bridge stage a traced packet passed, and per drop.
    pub packets: u64,
    /// Records read from the kernel: one per packet's way through the node (its journey),
    /// per drop without one, per stray reply.
    #[serde(default)]
    pub records: u64,
    /// Records the kernel could not queue: each took its packet's lines with it.
    pub lost: u64,
    pub lost_per_cpu: Vec<u64>,
    #[serde(serialize_with = "serde_forms::millis::serialize")]
    pub duration_secs: f64,
    /// Distinct findings, and occurrences per kind (`conntrack_skip`, ...).
    pub findings: usize,
    pub finding_counts: BTreeMap<FindingKind, u64>,
    /// Findings not stated because records they rest on may have been lost, per kind.
    #[serde(default)]
    pub unconfirmed: u64,
    #[serde(default)]
    pub unconfirmed_counts: BTreeMap<FindingKind, u64>,
    /// Runs of the kernel programs the kernel skipped (already running on that CPU); also
    /// counted in `lost`.
    #[serde(default)]
    pub recursion_misses: u64,
    /// DNS queries dropped from tracking to keep memory bounded.
    pub evicted_flows: u64,
    /// Packet journeys that never ended (a fragment merged into another by reassembly),
    /// shown as far as they went.
    #[serde(default)]
    pub evicted_paths: u64,
    /// Findings forgotten: not seen for 30 minutes, or the one seen longest ago when 10 000
    /// were remembered. Each is stated again if it recurs; its occurrences stay counted.
    #[serde(default)]
    pub findings_forgotten: u64,
    /// What this run could not see, and the findings it therefore could not state.
    #[serde(default)]
    pub blind_spots: Vec<BlindSpot>,
}

/// What a run has let go of so far to keep its memory bounded, told to the outputs now and
/// then while it runs (the summary has the final counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Evictions {
    /// DNS queries dropped from tracking (`evicted_flows`).
    pub dns_queries: u64,
    /// Packet journeys that never ended (`evicted_paths`).
    pub journeys: u64,
    /// Findings forgotten (`findings_forgotten`).
    pub findings: u64,
}
