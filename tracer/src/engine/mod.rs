//! The two sources of a run's events, driving the same analysis into a sink: `live` reads
//! the kernel's ring buffer until stopped, `replay` reads a capture file back. Both hand
//! their events to `analysis::Analysis`, so a report prints what the watch printed.

pub(crate) mod live;
pub(crate) mod replay;
