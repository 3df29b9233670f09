//! Says up front which privilege is missing, instead of letting a load fail with a
//! bare "Operation not permitted".

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with one line naming what is missing and what to do: capabilities, a user
/// namespace (whose capabilities the kernel does not honour for eBPF), or a kernel locked
/// down against reading its memory.
pub(crate) fn check_privileges() -> Result<()> {
    if let Some(effective) = std::fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_effective_caps)
    {
        let missing = missing_caps(effective);
        if !missing.is_empty() {
            let only_net_admin = missing == ["CAP_NET_ADMIN"];
            bail!(
                "tracer needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {}): run it with sudo{}",
                missing.join(", "),
                if only_net_admin {
                    " (CAP_NET_ADMIN is what reading conntrack, the firewall and the netfilter hooks takes)"
                } else {
                    ""
                }
            );
        }
    }
    if let Ok(map) = std::fs::read_to_string("/proc/self/uid_map") {
        if !is_initial_user_namespace(&map) {
            bail!(
                "tracer runs in a user namespace (uid_map `{}`), and the kernel grants eBPF only to the host's initial user namespace, whatever capabilities the namespace gives: run it on the node itself, or in a container without its own user namespace (privileged, with the host's PID namespace)",
                map.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    if let Ok(lockdown) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        if locked_down_for_confidentiality(&lockdown) {
            bail!(
                "the kernel is locked down for confidentiality (/sys/kernel/security/lockdown), which forbids the kernel memory reads tracer's programs make: tracer can run only where lockdown is `integrity` or `none` (a boot option, lockdown=integrity)"
            );
        }
    }
    Ok(())
}

/// The initial user namespace maps every uid to itself: `0 0 4294967295`.
fn is_initial_user_namespace(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// `none integrity [confidentiality]`: the bracketed mode is the one in force.
fn locked_down_for_confidentiality(lockdown: &str) -> bool {
    lockdown.contains("[confidentiality]")
}

fn parse_effective_caps(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

fn missing_caps(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN implies what CAP_BPF and CAP_PERFMON grant (kernels before 5.8 only know it).
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_set() {
        let status = "Name:\ttracer\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn tells_user_namespaces_and_lockdown() {
        assert!(is_initial_user_namespace("         0          0 4294967295\n"));
        assert!(!is_initial_user_namespace("         0       1000          1\n"));
        assert!(!is_initial_user_namespace("0 100000 65536\n1000 1000 1\n"));
        assert!(locked_down_for_confidentiality("none integrity [confidentiality]\n"));
        assert!(!locked_down_for_confidentiality("none [integrity] confidentiality\n"));
        assert!(!locked_down_for_confidentiality("[none] integrity confidentiality\n"));
    }

    #[test]
    fn names_what_is_missing() {
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), vec!["CAP_NET_ADMIN"]);
    }
}
