//! The node's firewall: the rulesets of iptables-legacy, iptables-nft and native nftables,
//! read with their counters, and what they do to a packet. Read only: nothing here adds a
//! rule, enables tracing or resets a counter.
//!
//! - `model`: chains, rules, what a rule matches and its verdict, whichever backend.
//! - `snapshot`: runs the tools' listing commands in the current network namespace.
//! - `scoped`: reads only the chains some packets' ways through their hooks reach, chain by
//!   chain: on a node with tens of thousands of rules, milliseconds instead of seconds.
//! - `ipset`: the node's ipsets (`ipset save`), which iptables rules look packets up in.
//! - `iptables`, `nft`: parse `iptables-save -c` and `nft -j -a list ruleset`;
//!   `nft_text` prints nft's JSON back in nft syntax, for rule texts people recognise;
//!   `sets`: nft's sets and maps, indexed so a packet's key is found without a scan.
//! - `reconcile`: iptables-nft keeps its rules in nf_tables tables, so nft lists them a
//!   second time; every chain is reported once, as the backend that made it.
//! - `eval`: what a packet meets on its way through the chains of a hook: the one place
//!   that walks chains, follows jumps and matches rules against a packet.
//! - `owner`: who wrote a rule or chain (kube-proxy, a NetworkPolicy engine, firewalld,
//!   Docker, ...), read from table and chain names and comments.

pub(crate) mod eval;
mod ipset;
mod iptables;
mod model;
mod nft;
mod nft_netlink;
mod nft_text;
pub(crate) mod owner;
mod reconcile;
mod scoped;
mod sets;
mod snapshot;

#[cfg(test)]
pub(crate) mod fixtures;
#[cfg(test)]
mod kube_proxy_tests;

pub(crate) use iptables::parse_iptables_save;
pub(crate) use model::{Backend, Chain, Condition, Family, Hook, OtherFlow, Rule, Snapshot, Verdict};
pub(crate) use nft::parse_nft_json;
pub(crate) use scoped::{scoped_snapshot, Inventory};
pub(crate) use snapshot::snapshot;
