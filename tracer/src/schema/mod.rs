//! What tracer emits, as one set of types: packet lines and dropped packets, findings and
//! the findings it could not confirm, the closing summary, and a capture's metadata; and
//! the [`sink::Sink`] interface every output implements. JSON Lines and captures are these
//! types serialised, and `tracer report` reads a capture back through the same types.
//! Built on `model` only: the parts of tracer that make these values sit above it, the
//! sinks that print or record them beside each other above them.

pub mod capture;
pub mod finding;
pub mod packet;
pub mod sink;
pub mod summary;
