//! Says up front which privilege is missing, instead of letting a load fail with a
//! bare "Operation not permitted".

use anyhow::{bail, Result};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check_privileges() -> Result<()> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        // Without /proc we cannot tell; let the kernel decide at load time.
        return Ok(());
    };
    let Some(effective) = parse_effective_caps(&status) else { return Ok(()) };
    let missing = missing_caps(effective);
    if !missing.is_empty() {
        bail!(
            "tracer needs root or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {}): run it with sudo",
            missing.join(", ")
        );
    }
    Ok(())
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
    fn names_what_is_missing() {
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]);
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN)).is_empty());
        assert_eq!(missing_caps(1 << CAP_SYS_ADMIN), vec!["CAP_NET_ADMIN"]);
    }
}
