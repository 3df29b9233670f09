//! Where a run's reports go, side by side: text for people, JSON Lines for programs, a
//! plain listing of a foreign capture, triage's ranked report, the pcapng capture file and
//! the Prometheus metrics. Each implements `schema::sink::Sink` (triage's report is
//! printed from the outcome instead); none imports another. `tee` sends one run's reports
//! to the main sink and a capture at once; `forms` holds the phrases and JSON values
//! several sinks share.

pub(crate) mod forms;
pub(crate) mod json;
pub(crate) mod listing;
pub(crate) mod metrics;
pub(crate) mod pcapng;
pub(crate) mod tee;
pub(crate) mod text;
pub(crate) mod triage;
