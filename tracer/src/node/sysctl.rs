//! Reads the node settings findings cite as evidence, in the network namespace tracer
//! runs in (`/proc/sys/net` always shows the reading process's own namespace).

use std::path::Path;

/// A sysctl's name and its value as read now; `None` when the file does not exist
/// (e.g. `net.bridge.*` when br_netfilter is a module that is not loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlValue {
    pub name: String,
    pub value: Option<String>,
}

/// Settings as JSON shows them: `{"net.ipv4.ip_forward": "1", "net.bridge.x": null}`.
pub mod by_name {
    use serde::{ser::SerializeMap, Deserialize, Deserializer, Serializer};

    use super::SysctlValue;

    pub fn serialize<S: Serializer>(values: &[SysctlValue], serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(values.len()))?;
        for value in values {
            map.serialize_entry(&value.name, &value.value)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SysctlValue>, D::Error> {
        let values = std::collections::BTreeMap::<String, Option<String>>::deserialize(deserializer)?;
        Ok(values.into_iter().map(|(name, value)| SysctlValue { name, value }).collect())
    }
}

pub fn read_sysctl(name: &str) -> SysctlValue {
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
pub fn bridge_nf_call_sysctl(ipv6: bool) -> &'static str {
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
