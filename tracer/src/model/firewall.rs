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
