//! tracer: live network diagnostics for Linux nodes.

pub mod analysis;
pub mod commands;
pub mod engine;
pub mod findings;
pub mod firewall;
pub mod kernel;
pub mod model;
pub mod node;
pub mod pipeline;
pub mod schema;
pub mod sinks;
pub mod system;
