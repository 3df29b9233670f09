//! tracer: live network diagnostics for Linux nodes.
//!
//! The data's way through the crate: `hooks` (kernel programs) → `events` (decoded
//! packet records) → `correlation` (queries paired with replies) → `findings`
//! (problems named, with evidence and fix) → `outputs` (text, JSON, a pcapng capture);
//! `analysis` holds one run's correlation and findings. `watch` runs the pipeline on
//! the kernel's events, `report` on the events a capture recorded
//! (`events::pcapng` reads them back).

pub mod analysis;
pub mod cli;
pub mod correlation;
pub mod events;
pub mod findings;
pub mod hooks;
pub mod outputs;
pub mod report;
pub mod triage;
pub mod watch;
