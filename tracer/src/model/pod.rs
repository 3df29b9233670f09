//! Pods, as the node's container runtime names them: what packet lines, findings and
//! captures put next to an address that belongs to one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A pod by its Kubernetes namespace and name. Serialised, `{"namespace": …, "name": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct PodRef {
    pub namespace: String,
    pub name: String,
}

/// `namespace/name`, as kubectl spells a pod.
impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The pods at either end of a packet: `src_pod` and `dst_pod` beside `src` and `dst`
/// (null for an address no pod on this node holds, and on nodes without a runtime).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndpointPods {
    #[serde(default)]
    pub src_pod: Option<PodRef>,
    #[serde(default)]
    pub dst_pod: Option<PodRef>,
}

impl EndpointPods {
    pub(crate) fn is_empty(&self) -> bool {
        self.src_pod.is_none() && self.dst_pod.is_none()
    }

    /// Either end, for filters.
    pub(crate) fn any(&self) -> impl Iterator<Item = &PodRef> {
        self.src_pod.iter().chain(self.dst_pod.iter())
    }
}

/// `10.244.0.5:41234 (default/client)`: an address with its pod, when it has one.
pub(crate) fn with_pod(address: impl fmt::Display, pod: Option<&PodRef>) -> String {
    match pod {
        Some(pod) => format!("{address} ({pod})"),
        None => address.to_string(),
    }
}

/// The pods of a DNS finding's addresses, each beside its address: `client_pod`,
/// `expected_source_pod` (when the client asked a pod rather than a service) and
/// `actual_source_pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DnsPods {
    #[serde(default)]
    pub client_pod: Option<PodRef>,
    #[serde(default)]
    pub expected_source_pod: Option<PodRef>,
    #[serde(default)]
    pub actual_source_pod: Option<PodRef>,
}

/// Which pods a watch shows (`--pod NS/NAME`, `--namespace NS`): a line or finding is
/// shown when a pod at either end is one of `pods` or lives in one of `namespaces`. Empty,
/// everything is shown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PodFilter {
    pub pods: Vec<PodRef>,
    pub namespaces: Vec<String>,
}

impl PodFilter {
    pub(crate) fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.namespaces.is_empty()
    }

    pub(crate) fn admits(&self, pod: &PodRef) -> bool {
        self.pods.contains(pod) || self.namespaces.contains(&pod.namespace)
    }

    /// Whether something with these pods at its ends is shown.
    pub(crate) fn shows<'a>(&self, mut pods: impl Iterator<Item = &'a PodRef>) -> bool {
        self.is_empty() || pods.any(|pod| self.admits(pod))
    }
}

impl std::str::FromStr for PodRef {
    type Err = String;

    /// `namespace/name`, both non-empty.
    fn from_str(text: &str) -> Result<PodRef, String> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(PodRef { namespace: namespace.to_string(), name: name.to_string() })
            }
            _ => Err(format!("`{text}` is not NAMESPACE/NAME, e.g. kube-system/coredns-5d78c9869d-6kx2p")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(text: &str) -> PodRef {
        text.parse().expect("pod")
    }

    #[test]
    fn pods_are_spelled_namespace_slash_name() {
        assert_eq!(pod("kube-system/coredns-1"), PodRef { namespace: "kube-system".into(), name: "coredns-1".into() });
        assert_eq!(pod("default/client").to_string(), "default/client");
        for wrong in ["coredns", "/coredns", "kube-system/", "a/b/c", ""] {
            assert!(wrong.parse::<PodRef>().is_err(), "{wrong}");
        }
    }

    #[test]
    fn a_filter_shows_what_has_a_chosen_pod_at_either_end() {
        let filter = PodFilter { pods: vec![pod("default/client")], namespaces: vec!["kube-system".into()] };
        let ends = |src: Option<&str>, dst: Option<&str>| EndpointPods { src_pod: src.map(pod), dst_pod: dst.map(pod) };
        assert!(filter.shows(ends(Some("default/client"), None).any()));
        assert!(filter.shows(ends(Some("default/other"), Some("kube-system/coredns-1")).any()));
        assert!(!filter.shows(ends(Some("default/other"), None).any()));
        assert!(!filter.shows(ends(None, None).any()));
        assert!(PodFilter::default().shows(ends(None, None).any()));
    }
}
