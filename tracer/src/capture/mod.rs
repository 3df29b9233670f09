//! Captures: the file `tracer watch --write` writes (pcapng with tracer's metadata), and
//! reading one back for `tracer report`.

pub mod file;
pub mod reader;
pub mod writer;
