//! Netfilter's IP hooks and the two IP families, as every part of tracer names them: the
//! kernel programs attach to them, packet paths pass them, firewall chains sit on them.

use serde::{Deserialize, Serialize};

super::named_enum! {
    /// `enum nf_inet_hooks`, the order every IP family's hooks are numbered in.
    #[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
    pub(crate) enum Hook {
        PreRouting = 0,
        LocalIn = 1,
        Forward = 2,
        LocalOut = 3,
        PostRouting = 4,
    }
}

impl Hook {
    pub(crate) const ALL: [Hook; 5] =
        [Hook::PreRouting, Hook::LocalIn, Hook::Forward, Hook::LocalOut, Hook::PostRouting];

    pub(crate) fn from_number(number: u8) -> Option<Hook> {
        Hook::ALL.into_iter().find(|hook| *hook as u8 == number)
    }

    /// The hook of a built-in iptables chain.
    pub(crate) fn from_iptables_chain(name: &str) -> Option<Hook> {
        match name {
            "PREROUTING" => Some(Hook::PreRouting),
            "INPUT" => Some(Hook::LocalIn),
            "FORWARD" => Some(Hook::Forward),
            "OUTPUT" => Some(Hook::LocalOut),
            "POSTROUTING" => Some(Hook::PostRouting),
            _ => None,
        }
    }

    pub(crate) fn from_nft(name: &str) -> Option<Hook> {
        match name {
            "prerouting" => Some(Hook::PreRouting),
            "input" => Some(Hook::LocalIn),
            "forward" => Some(Hook::Forward),
            "output" => Some(Hook::LocalOut),
            "postrouting" => Some(Hook::PostRouting),
            // ingress/egress run before/after the IP stack, not at an IP hook.
            _ => None,
        }
    }
}

/// IPv4 or IPv6: of a packet, a hook, a firewall table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// As people write it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`: the protocol family netfilter links are made for
    /// (the kernel refuses the bridge and inet families).
    pub(crate) fn nfproto(self) -> u32 {
        match self {
            Family::Ipv4 => 2,
            Family::Ipv6 => 10,
        }
    }
}
