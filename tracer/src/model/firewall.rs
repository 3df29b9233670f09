//! Which firewall a ruleset belongs to: the three backends a node can have side by side.

use super::hook::Family;

super::named_enum! {
    /// Which tool wrote a ruleset and manages its rules: iptables through nf_tables, legacy
    /// iptables (x_tables), or native nftables.
    #[strum(serialize_all = "kebab-case")]
    pub(crate) enum Backend {
        IptablesNft,
        IptablesLegacy,
        Nftables,
    }
}

impl Backend {
    /// The iptables program that manages this backend's rules of `family`, by its exact
    /// name: on a node with both iptables backends, plain `iptables` is only one of them.
    /// (nftables rules are edited with nft; callers handle that backend themselves.)
    pub(crate) fn iptables_command(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::IptablesLegacy, Family::Ipv4) => "iptables-legacy",
            (Backend::IptablesLegacy, Family::Ipv6) => "ip6tables-legacy",
            (Backend::IptablesNft | Backend::Nftables, Family::Ipv4) => "iptables-nft",
            (Backend::IptablesNft | Backend::Nftables, Family::Ipv6) => "ip6tables-nft",
        }
    }
}

super::named_enum! {
    /// Who writes and rewrites a ruleset's rules, read from the ruleset itself (table and
    /// chain names, comments). A rule a manager owns is rewritten by it: advice edits what
    /// the manager reads (a Service, a policy, a zone), never the rule.
    #[strum(serialize_all = "kebab-case")]
    pub(crate) enum Manager {
        KubeProxy,
        Calico,
        KubeRouter,
        Cilium,
        Flannel,
        Firewalld,
        Docker,
        NodeLocalDns,
        /// Nothing in the ruleset names a manager: a person, or a tool tracer does not know.
        Unknown,
    }
}

/// Who owns a rule, and what it is for as the owner names it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Owner {
    pub manager: Manager,
    /// kube-proxy: the Service port the rule or map element is for (`namespace/name:port`).
    pub service: Option<String>,
    /// A NetworkPolicy engine: the policy (`namespace/name`), where its ruleset carries it.
    pub policy: Option<String>,
    /// firewalld: the zone or policy the chain belongs to.
    pub zone: Option<String>,
    /// What in the ruleset gave the owner away (a chain name, a table, a comment).
    pub evidence: String,
}

/// The element of an nftables set or verdict map that decided a rule's verdict, e.g.
/// `10.96.0.10 . udp . 53 : goto reject-chain` of `no-endpoint-services`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct MapElement {
    /// The set or map, as the rule names it (`@no-endpoint-services`).
    pub map: String,
    /// The element's key as nft prints it.
    pub key: String,
    /// The verdict it maps to (verdict maps only).
    pub verdict: Option<String>,
    pub comment: Option<String>,
}
