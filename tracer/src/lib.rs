//! tracer: live network diagnostics for Linux nodes.
//!
//! The data's way through the crate: `hooks` (kernel programs) → `events` (decoded
//! packet records) → `correlation` (queries paired with replies) → `findings`
//! (problems named, with evidence and fix) → `outputs` (text or JSON); `watch` runs
//! the pipeline.

pub mod correlation;
pub mod events;
pub mod findings;
pub mod hooks;
pub mod outputs;
pub mod watch;
