//! What tracer emits, as one set of types: packet lines and dropped packets, findings and
//! the findings it could not confirm, the closing summary, and a capture's metadata; and
//! the [`sink::Sink`] interface every output implements. JSON Lines and captures are these
//! types serialised, and `tracer report` reads a capture back through the same types.
//! Built on `model` only: the parts of tracer that make these values sit above it, the
//! sinks that print or record them beside each other above them.

pub(crate) mod blind_spot;
pub(crate) mod capture;
pub(crate) mod finding;
pub(crate) mod packet;
pub(crate) mod sink;
pub(crate) mod summary;
