//! Prints what a run reports: packet lines, findings and the summary as text for people or
//! JSON Lines for programs, a plain listing of a foreign capture, and triage's report.

pub mod json;
pub mod listing;
pub mod text;
pub mod triage;
