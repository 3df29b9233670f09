//! What a run cannot see, and so cannot state: said at start, in the summary, in triage and
//! as metrics, so that a quiet run on a kernel that lacks something is never read as a
//! healthy one.

use serde::{Deserialize, Serialize};

use crate::schema::finding::FindingKind;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlindSpot {
    /// What is missing, as a label: `netfilter_verdicts`, `drop_reasons`, `conntrack_tuples`
    /// or `answered_replies`.
    pub missing: String,
    /// Why: what the kernel lacks, or what the mode leaves out.
    pub why: String,
    /// Findings this run cannot state because of it.
    pub unavailable: Vec<FindingKind>,
    /// What the run shows in their place.
    pub instead: String,
}

impl std::fmt::Display for BlindSpot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no {} ({})", self.missing.replace('_', " "), self.why)?;
        if !self.unavailable.is_empty() {
            let names: Vec<&str> = self.unavailable.iter().map(|kind| kind.name()).collect();
            write!(f, ": {} cannot be found", names.join(", "))?;
        }
        write!(f, "; {}", self.instead)
    }
}
