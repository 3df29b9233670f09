//! A node setting as read, and the form JSON gives a list of them.

/// A sysctl's name and its value as read now; `None` when the file does not exist
/// (e.g. `net.bridge.*` when br_netfilter is a module that is not loaded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SysctlValue {
    pub name: String,
    pub value: Option<String>,
}

/// Settings as JSON shows them: `{"net.ipv4.ip_forward": "1", "net.bridge.x": null}`.
pub(crate) mod by_name {
    use serde::{ser::SerializeMap, Deserialize, Deserializer, Serializer};

    use super::SysctlValue;

    pub(crate) fn serialize<S: Serializer>(values: &[SysctlValue], serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(values.len()))?;
        for value in values {
            map.serialize_entry(&value.name, &value.value)?;
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<SysctlValue>, D::Error> {
        let values = std::collections::BTreeMap::<String, Option<String>>::deserialize(deserializer)?;
        Ok(values.into_iter().map(|(name, value)| SysctlValue { name, value }).collect())
    }
}
