//! The node's state as tracer reads it: settings, interfaces, the pods its container
//! runtime runs, and each network namespace's state for the node checks (bridges, sysctls,
//! conntrack, the firewall).

pub(crate) mod checks;
pub(crate) mod interfaces;
pub(crate) mod pods;
pub(crate) mod sysctl;
