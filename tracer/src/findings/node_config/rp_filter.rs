//! Reverse-path filtering: strict mode is a note on its own, and a finding once the kernel
//! is seen dropping traced packets for it.

use super::outcome::{sysctl_value, Check, DropGroup, Ranked, Status};
use crate::{
    model::sysctl::SysctlValue,
    node::checks::NamespaceState,
    schema::finding::{Evidence, Finding, FindingKind, NetnsRef, NodeEvidence},
};

/// rp_filter: strict mode is a note here; it becomes a finding when the kernel is seen
/// dropping traced packets for it (`IP_RPFILTER`).
pub(super) fn rp_filter_check(state: &NamespaceState, checks: &mut Vec<Check>) {
    let all = rp_all(state);
    let mut strict = Vec::new();
    let mut loose = Vec::new();
    let mut off = Vec::new();
    for iface in &state.rp_filter {
        match effective_rp_filter(all, iface.value) {
            1 => strict.push(iface.interface.clone()),
            2 => loose.push(iface.interface.clone()),
            _ => off.push(iface.interface.clone()),
        }
    }
    let mut parts = Vec::new();
    for (mode, list) in [("0", &off), ("2 (loose)", &loose), ("1 (strict)", &strict)] {
        if !list.is_empty() {
            parts.push(format!("{mode} on {}", list.join(", ")));
        }
    }
    checks.push(Check {
        name: "rp_filter".to_string(),
        value: format!(
            "{} (all = {})",
            if parts.is_empty() { "no routed interfaces".to_string() } else { parts.join("; ") },
            all
        ),
        status: if strict.is_empty() { Status::Ok } else { Status::Note },
        detail: if strict.is_empty() {
            String::new()
        } else {
            "strict mode drops packets whose source is routed back through another interface (asymmetric routing)"
                .to_string()
        },
    });
}

fn rp_all(state: &NamespaceState) -> u8 {
    sysctl_value(state, "net.ipv4.conf.all.rp_filter").value.and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The kernel uses the larger of `all` and the interface's own value.
fn effective_rp_filter(all: u8, iface: Option<u8>) -> u8 {
    all.max(iface.unwrap_or(0))
}

pub(super) fn rp_filter_drop(
    ranked: &mut Vec<Ranked>,
    group: &DropGroup,
    current: Option<&NamespaceState>,
    netns: &NetnsRef,
) {
    let iface = group.ifname.clone();
    if let Some(existing) = ranked
        .iter_mut()
        .find(|r| r.finding.kind == FindingKind::RpFilterDrop && r.node().is_some_and(|n| n.interface == iface))
    {
        existing.occurrences = Some(existing.occurrences.unwrap_or(0) + group.count);
        return;
    }
    let all = current.map(rp_all).unwrap_or(0);
    let own =
        current.and_then(|s| s.rp_filter.iter().find(|r| Some(&r.interface) == iface.as_ref())).and_then(|r| r.value);
    let mut sysctls =
        vec![SysctlValue { name: "net.ipv4.conf.all.rp_filter".to_string(), value: Some(all.to_string()) }];
    if let Some(name) = &iface {
        sysctls
            .push(SysctlValue { name: format!("net.ipv4.conf.{name}.rp_filter"), value: own.map(|v| v.to_string()) });
    }
    let name = iface.clone().unwrap_or_else(|| "the receiving interface".to_string());
    let effective = effective_rp_filter(all, own);
    let evidence = NodeEvidence {
        netns: netns.clone(),
        interface: iface.clone(),
        sysctls,
        drops: Some(group.evidence()),
        ..NodeEvidence::default()
    };
    let finding = Finding {
        kind: FindingKind::RpFilterDrop,
        wall_time_ns: group.wall_time_ns,
        headline: format!(
            "Reverse-path filter drops traffic arriving on {name}: {} {} → {} ({} packets, rp_filter {effective})",
            group.l4_proto,
            group.src,
            group.dst,
            group.count
        ),
        evidence: Evidence::Node(evidence),
        explanation: "The kernel dropped these packets as IP_RPFILTER: with reverse-path filtering on, a packet is \
             dropped when the route back to its source does not leave through the interface it arrived on (strict, 1) \
             or through no interface at all (loose, 2). The mode in force is the larger of \
             net.ipv4.conf.all.rp_filter and the interface's own value. Asymmetric routing (policy routing, several \
             uplinks, a pod subnet routed elsewhere) triggers it."
            .to_string(),
        fix: vec![
            format!("ip route get {} from {} iif {name}    # where the route back to the source leads", group.src.ip(), group.dst.ip()),
            format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2    # loose mode: the larger value wins, so lower both"),
            format!("printf '%s\\n' 'net.ipv4.conf.all.rp_filter = 2' 'net.ipv4.conf.{name}.rp_filter = 2' > /etc/sysctl.d/99-rp-filter.conf    # persist"),
        ],
    };
    ranked.push(Ranked {
        finding,
        more: Vec::new(),
        traffic: true,
        config: effective != 0,
        occurrences: Some(group.count),
        example: group.example.clone(),
        netns: netns.clone(),
    });
}

#[cfg(test)]
mod tests {
    use crate::findings::node_config::fixtures::*;
    use crate::findings::node_config::Traffic;
    use crate::firewall::Hook;
    use crate::model::netfilter::DropReason;
    use crate::schema::finding::FindingKind;

    #[test]
    fn rp_filter_drops_name_the_interface_and_its_setting() {
        let mut state = lab_node("1", LAB_NAT);
        state.sysctls[4] = sysctl("net.ipv4.conf.all.rp_filter", "1");
        let traffic = Traffic {
            findings: vec![],
            drops: vec![drop_group(DropReason::Named("IP_RPFILTER".into()), None, Some(Hook::PreRouting), 2)],
            kind_counts: Default::default(),
        };
        let decision = decide_one(state, traffic);
        let [only] = decision.findings.as_slice() else { panic!("{:#?}", decision.findings) };
        assert_eq!(only.finding.kind, FindingKind::RpFilterDrop);
        assert!(only.finding.headline.contains("veth-client"));
        assert!(only.finding.headline.contains("rp_filter 1"));
        assert!(only.traffic && only.config);
    }
}
