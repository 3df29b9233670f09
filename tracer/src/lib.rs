//! tracer: live network diagnostics for Linux nodes.

pub mod analysis;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod findings;
pub mod firewall;
pub mod kernel;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod node;
pub mod pipeline;
pub mod render;
pub mod tools;
