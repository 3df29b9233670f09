//! The subcommands: each runs the pipeline and prints what it found.

pub mod agent;
pub mod cli;
pub mod report;
pub mod triage;
pub mod watch;
