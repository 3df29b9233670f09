//! The node's state as tracer reads it: settings, interfaces, and each network namespace's
//! state for the node checks (bridges, sysctls, conntrack, the firewall).

pub mod checks;
pub mod interfaces;
pub mod sysctl;
