//! A lab node run by kube-proxy: its rules loaded by the real tools, in either mode, and the
//! routes a real node has for Service addresses.

use anyhow::Result;

use super::{iptables_restore_text, nft_ruleset_text, Cluster, NODE_IP};
use crate::lab::{Lab, LabConfig, Ns};
use crate::ruleset::{with_file, write_lab_file};

/// How one backend puts a cluster's rules on the lab's node, replacing the last cluster's.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Nftables,
    Iptables { restore: &'static str },
}

impl Backend {
    pub fn load(self, lab: &Lab, cluster: &Cluster) -> Result<()> {
        match self {
            Backend::Nftables => {
                let file = write_lab_file(lab, "kube-proxy.nft", &nft_ruleset_text(cluster))?;
                let listing = lab.run(Ns::Node, &["nft", "list", "tables"])?;
                if listing.lines().any(|l| l.trim() == "table ip kube-proxy") {
                    lab.run(Ns::Node, &["nft", "delete", "table", "ip", "kube-proxy"])?;
                }
                lab.run(Ns::Node, &with_file(&["nft", "-f"], &file)?).map(drop)
            }
            Backend::Iptables { restore } => {
                let file = write_lab_file(lab, "kube-proxy.iptables", &iptables_restore_text(cluster))?;
                lab.run(Ns::Node, &with_file(&[restore, "-w", "10"], &file)?).map(drop)
            }
        }
    }
}

/// The lab with kube-proxy in charge of the ClusterIP: the lab's own DNAT to the DNS pod goes, and
/// the node gets what routes Service addresses on a real node, a default route out of an uplink
/// with the node's address. Without any route the node would answer "unreachable" itself before
/// the forward hook, where kube-proxy rejects; with a route back out of the bridge it would send
/// the client an ICMP redirect first, which uses up the client's ICMP rate-limit allowance and
/// swallows the rejection.
pub fn lab_for_kube_proxy() -> Result<Lab> {
    let lab = Lab::new(LabConfig::healthy())?;
    lab.iptables("-t nat -F PREROUTING")?;
    let node_ip = format!("{NODE_IP}/24");
    for argv in [
        &["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer"][..],
        &["ip", "link", "set", "uplink-peer", "up"],
        &["ip", "link", "set", "uplink", "up"],
        &["ip", "addr", "add", &node_ip, "dev", "uplink"],
        &["ip", "route", "add", "default", "via", "192.168.0.1", "dev", "uplink"],
    ] {
        lab.run(Ns::Node, argv)?;
    }
    Ok(lab)
}
