//! The operating system as tracer uses it: running helper programs from fixed system
//! directories with a clean environment and a timeout, and entering network namespaces.
//! Knows nothing of tracer's own types.

pub(crate) mod netlink;
pub(crate) mod netns;
#[cfg(test)]
pub(crate) mod scratch_dir;
pub(crate) mod stop;
pub(crate) mod tools;
