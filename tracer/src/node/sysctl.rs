//! Reads the node settings findings cite as evidence, in the network namespace tracer
//! runs in (`/proc/sys/net` always shows the reading process's own namespace).

use std::path::Path;

use crate::model::sysctl::SysctlValue;

pub(crate) fn read_sysctl(name: &str) -> SysctlValue {
    read_sysctl_under(Path::new("/proc/sys"), name)
}

fn read_sysctl_under(root: &Path, name: &str) -> SysctlValue {
    let path = root.join(name.replace('.', "/"));
    SysctlValue {
        name: name.to_string(),
        value: std::fs::read_to_string(path).ok().map(|text| text.trim().to_string()),
    }
}

/// The sysctl that decides whether bridged IPv4 / IPv6 frames pass the IP netfilter hooks.
pub(crate) fn bridge_nf_call_sysctl(ipv6: bool) -> &'static str {
    if ipv6 {
        "net.bridge.bridge-nf-call-ip6tables"
    } else {
        "net.bridge.bridge-nf-call-iptables"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_namespaces_sysctl() {
        let forward = read_sysctl("net.ipv4.ip_forward");
        assert_eq!(forward.name, "net.ipv4.ip_forward");
        assert!(matches!(forward.value.as_deref(), Some("0") | Some("1")));
    }

    #[test]
    fn missing_sysctl_has_no_value() {
        let dir = std::env::temp_dir();
        let missing = read_sysctl_under(&dir, "net.tracer-test-missing.value");
        assert_eq!(missing.value, None);
    }
}
