//! Where a run's reports go, side by side: text for people, JSON Lines for programs, a
//! plain listing of a foreign capture, triage's ranked report, the pcapng capture file and
//! the Prometheus metrics. Each implements `schema::sink::Sink` (triage's report is
//! printed from the outcome instead); none imports another. `tee` sends one run's reports
//! to the main sink and a capture at once; `forms` holds the phrases and JSON values
//! several sinks share.

pub mod forms;
pub mod json;
pub mod listing;
pub mod metrics;
pub mod pcapng;
pub mod tee;
pub mod text;
pub mod triage;
