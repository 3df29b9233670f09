//! Captures: the file `tracer watch --write` writes (pcapng with tracer's metadata), and
//! reading one back for `tracer report`.

pub mod file;
pub mod format;
pub mod frames;
pub mod reader;
pub mod writer;

#[cfg(test)]
pub(crate) mod scratch;
