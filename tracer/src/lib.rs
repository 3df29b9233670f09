//! tracer: live network diagnostics for Linux nodes.
//!
//! The data's way through the crate: `hooks` (kernel programs) → `events` (decoded
//! packet records) → `outputs` (text or JSON); `watch` runs the pipeline.

pub mod events;
pub mod hooks;
pub mod outputs;
pub mod watch;
