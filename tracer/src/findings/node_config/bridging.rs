//! Whether bridged pod traffic gets through the node's IP stack: `bridge-nf-call-iptables`
//! where service addresses are NATed, and IP forwarding where there are bridges.

use super::outcome::{node_evidence, shown, sysctl_value, where_, Check, Status};
use crate::{
    firewall::{Family, Snapshot, Verdict},
    node::{checks::NamespaceState, sysctl::bridge_nf_call_sysctl},
    schema::finding::{Evidence, Finding, FindingKind},
};

/// Rules that DNAT traffic of a family: the service addresses whose replies need conntrack.
fn dnat_rules(firewall: &Snapshot, family: Family) -> usize {
    firewall
        .chains
        .iter()
        .filter(|chain| chain.family == family)
        .flat_map(|chain| &chain.rules)
        .filter(|rule| matches!(&rule.verdict, Verdict::Other(text) if text.to_ascii_lowercase().contains("dnat")))
        .count()
}

/// `bridge-nf-call-iptables` / `-ip6tables`. Off matters when the namespace NATs service
/// addresses (DNAT rules, IPVS): a backend's reply to a client on the same bridge then
/// skips reverse NAT. Without service NAT, bridged traffic works; only FORWARD rules do not
/// apply to it, which is a note.
pub(super) fn bridge_netfilter(
    state: &NamespaceState,
    bridges: &[String],
    now_ns: u64,
    checks: &mut Vec<Check>,
) -> Option<Finding> {
    let mut off = Vec::new();
    let mut notes = Vec::new();
    for ipv6 in [false, true] {
        let name = bridge_nf_call_sysctl(ipv6);
        let value = sysctl_value(state, name);
        let family = if ipv6 { Family::Ipv6 } else { Family::Ipv4 };
        let dnat = dnat_rules(&state.firewall, family);
        // IPVS balances both families from one table; count it for both.
        let service_nat = dnat + state.ipvs_services;
        let on = value.value.as_deref() == Some("1");
        let (status, detail) = if bridges.is_empty() {
            (Status::Ok, "no bridges here".to_string())
        } else if on {
            (Status::Ok, String::new())
        } else if service_nat > 0 {
            (Status::Finding(FindingKind::ConntrackSkip), nat_words(dnat, state.ipvs_services, family))
        } else {
            (
                Status::Note,
                format!("bridged {} traffic bypasses iptables/nftables; no DNAT rules need it now", family.name()),
            )
        };
        checks.push(Check {
            name: name.trim_start_matches("net.bridge.").to_string(),
            value: shown(&value),
            status,
            detail: detail.clone(),
        });
        if matches!(status, Status::Finding(_)) {
            off.push(value);
            notes.push(detail);
        }
    }
    if off.is_empty() {
        return None;
    }
    let netns = &state.netns;
    let bridge_list = bridges.join(", ");
    let names: Vec<String> = off.iter().map(|v| format!("{} = {}", v.name, shown(v))).collect();
    // Without the module the sysctls do not exist, and loading it is the fix.
    let module_missing = off.iter().all(|v| v.value.is_none());
    let headline = if module_missing {
        format!("br_netfilter is not loaded: bridged traffic on {bridge_list} skips conntrack{} while service addresses are DNATed", where_(netns))
    } else {
        format!(
            "Bridged traffic on {bridge_list} skips conntrack{}: {} while service addresses are DNATed",
            where_(netns),
            names.join(", ")
        )
    };
    let explanation = format!(
        "A frame a Linux bridge forwards from one of its ports to another passes the IP netfilter hooks \
         (conntrack, NAT, the FORWARD chain) only when br_netfilter is loaded and bridge-nf-call-iptables \
         (-ip6tables for IPv6) is 1 in the bridge's network namespace. Here it is not, and the namespace \
         NATs service addresses ({}). When a client on {bridge_list} asks a service address and the backend \
         sits on the same bridge, the backend's reply is bridged straight back without reverse NAT: the \
         client sees it come from the backend's own address instead of the service's, drops it, and the \
         lookup times out.",
        notes.join("; ")
    );
    let prefix = netns.exec_prefix();
    let mut fix = Vec::new();
    if module_missing {
        fix.push("modprobe br_netfilter".to_string());
        fix.push("echo br_netfilter > /etc/modules-load.d/br_netfilter.conf    # load it at every boot".to_string());
    }
    for value in &off {
        fix.push(format!("{prefix}sysctl -w {}=1", value.name));
    }
    let persisted: Vec<String> = off.iter().map(|v| format!("{} = 1", v.name)).collect();
    fix.push(format!(
        "printf '%s\\n' {} > /etc/sysctl.d/99-bridge-nf-call.conf    # persist the settings{}",
        persisted.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(" "),
        if netns.current { "" } else { " (for the host; a namespace's are set by whatever creates it)" }
    ));
    let mut evidence = node_evidence(netns);
    evidence.bridges = bridges.to_vec();
    evidence.sysctls = off;
    evidence.notes = notes.iter().map(|n| format!("service NAT: {n}")).collect();
    Some(Finding {
        kind: FindingKind::ConntrackSkip,
        wall_time_ns: now_ns,
        headline,
        evidence: Evidence::Node(evidence),
        explanation,
        fix,
    })
}

fn nat_words(dnat: usize, ipvs: usize, family: Family) -> String {
    let mut parts = Vec::new();
    if dnat > 0 {
        parts.push(format!("{dnat} {} DNAT rule{}", family.name(), if dnat == 1 { "" } else { "s" }));
    }
    if ipvs > 0 {
        parts.push(format!("{ipvs} IPVS service{}", if ipvs == 1 { "" } else { "s" }));
    }
    parts.join(" and ")
}

/// `ip_forward`. Pods send everything not on their own subnet — service addresses included —
/// to the bridge's address, their gateway; the node only routes it on with forwarding on.
pub(super) fn forwarding(
    state: &NamespaceState,
    bridges: &[String],
    now_ns: u64,
    checks: &mut Vec<Check>,
) -> Option<Finding> {
    let v4 = sysctl_value(state, "net.ipv4.ip_forward");
    let v6 = sysctl_value(state, "net.ipv6.conf.all.forwarding");
    let off = v4.value.as_deref() != Some("1");
    let status = match (bridges.is_empty(), off) {
        (false, true) => Status::Finding(FindingKind::IpForwardOff),
        _ => Status::Ok,
    };
    checks.push(Check {
        name: "ip_forward".to_string(),
        value: v4.value.clone().unwrap_or_else(|| "(absent)".to_string()),
        status,
        detail: String::new(),
    });
    let v6_off = v6.value.as_deref() == Some("0");
    checks.push(Check {
        name: "ipv6 forwarding".to_string(),
        value: v6.value.clone().unwrap_or_else(|| "(absent)".to_string()),
        status: if v6_off && !bridges.is_empty() { Status::Note } else { Status::Ok },
        detail: if v6_off && !bridges.is_empty() {
            "IPv6 pod traffic is not routed (fine on an IPv4-only node)".to_string()
        } else {
            String::new()
        },
    });
    if status == Status::Ok {
        return None;
    }
    let netns = &state.netns;
    let bridge_list = bridges.join(", ");
    let mut evidence = node_evidence(netns);
    evidence.bridges = bridges.to_vec();
    evidence.sysctls = vec![v4.clone()];
    Some(Finding {
        kind: FindingKind::IpForwardOff,
        wall_time_ns: now_ns,
        headline: format!(
            "IP forwarding is off{}: net.ipv4.ip_forward = {} on a node with bridges ({bridge_list})",
            where_(netns),
            shown(&v4)
        ),
        evidence: Evidence::Node(evidence),
        explanation: format!(
            "Pods on {bridge_list} send traffic for other networks to the bridge's address, their gateway, and the \
             node routes it on only when net.ipv4.ip_forward is 1. With 0 such packets stop at the node (tracer \
             sees them reach the host and go no further): traffic to other nodes and the outside fails, and so \
             does a service address DNATed to a backend that is not on the same bridge."
        ),
        fix: vec![
            format!("{}sysctl -w net.ipv4.ip_forward=1", netns.exec_prefix()),
            "echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/99-ip-forward.conf    # persist".to_string(),
        ],
    })
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::{Status, Traffic};
    use crate::schema::finding::{Evidence, FindingKind};

    #[test]
    fn bridge_nf_call_off_with_dnat_is_conntrack_skip() {
        let decision = decide_one(lab_node("0", LAB_NAT), Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::ConntrackSkip);
        assert!(only.config && !only.traffic);
        let Evidence::Node(node) = &only.finding.evidence else { panic!("node evidence") };
        assert_eq!(node.bridges, vec!["cni0"]);
        let names: Vec<&str> = node.sysctls.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"]);
        assert!(
            only.finding.fix.iter().any(|f| f == "sysctl -w net.bridge.bridge-nf-call-iptables=1"),
            "{:?}",
            only.finding.fix
        );
    }

    #[test]
    fn bridge_nf_call_off_without_service_nat_is_a_note() {
        let decision = decide_one(lab_node("0", "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"), Traffic::default());
        // The IPv6 DNAT of the lab is still there: only IPv4 lacks service NAT.
        let kinds: Vec<FindingKind> = decision.findings.iter().map(|r| r.finding.kind).collect();
        assert_eq!(kinds, vec![FindingKind::ConntrackSkip]);
        let Evidence::Node(node) = &decision.findings[0].finding.evidence else { panic!() };
        assert_eq!(node.sysctls.len(), 1, "{:?}", node.sysctls);
        assert_eq!(node.sysctls[0].name, "net.bridge.bridge-nf-call-ip6tables");
        let v4 = decision.namespaces[0].checks.iter().find(|c| c.name == "bridge-nf-call-iptables").expect("check");
        assert_eq!(v4.status, Status::Note);
    }

    #[test]
    fn ip_forward_off_on_a_bridged_node() {
        let mut state = lab_node("1", LAB_NAT);
        state.sysctls[2] = sysctl("net.ipv4.ip_forward", "0");
        let decision = decide_one(state, Traffic::default());
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::IpForwardOff);
        assert!(only.finding.fix.iter().any(|f| f == "sysctl -w net.ipv4.ip_forward=1"));
    }
}
