//! Reads only the chains that packets at some hooks can reach. On a node with tens of thousands
//! of rules (kube-proxy's 5 000 Services) `nft -j list ruleset` takes seconds and hundreds of
//! MiB, while the chains one dropped packet meets on its hook are a handful. The packets are
//! walked through what has been read; every nf_tables chain a way jumps or goes to that is not
//! read yet is read next (`nft list chain`), with the sets, maps and counters its rules name,
//! until no way leads anywhere unread. iptables' tables are read whole (its save tools have no
//! smaller unit), only those with chains on the hooks asked about. Read only, like
//! [`snapshot`](super::snapshot::snapshot).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::eval::{ChainId, Packet, Ruleset};
use super::ipset::uses_ipsets;
use super::model::{nft_family_name, Chain, Family, Hook, Snapshot};
use super::nft::{named_objects, nft_items, parse_nft_items, NamedObject};
use super::nft_netlink::{list_chain, Listing};
use super::reconcile::reconcile;
use super::snapshot::{iptables_nft_chains, legacy_chains, read_ipsets, run_tool, snapshot, ToolRun, IPTABLES_TABLES};

/// More nf_tables chains than this and a full reading takes longer than reading chain by chain
/// what a drop needs (measured: `nft -j list ruleset` at 15 000 chains, 2.7 s; one chain, a few ms).
const LARGE_NFT_CHAINS: usize = 1_000;

/// Chains one scoped reading lists at most, one `nft` run each: ways that fan out through
/// unknown matches stop here, and the walk then says it gave up.
const MAX_CHAINS: usize = 256;

/// `nft list` runs at once: enough for a round's few chains, few enough for a small node.
const PARALLEL_LISTINGS: usize = 4;

/// The chains of every nf_tables table (no rules: `nft -j list chains` is quick at any size).
pub(crate) struct Inventory {
    chains: Vec<(ChainId, Option<Hook>)>,
    /// More chains than [`LARGE_NFT_CHAINS`].
    large: bool,
    /// When it was read: base chains come and go (rarely), so a kept inventory is read again
    /// once it is old.
    pub(crate) read_at: std::time::Instant,
}

impl Inventory {
    /// `None` when nft cannot be run or fails: then only a full reading tells why.
    pub(crate) fn read() -> Option<Inventory> {
        let ToolRun::Done { ok: true, stdout, .. } = run_tool("nft", &["-j", "list", "chains"]) else {
            return None;
        };
        let items = nft_items(&stdout).ok()?;
        let chains: Vec<_> = items
            .iter()
            .filter_map(|item| item.get("chain"))
            .filter_map(|chain| {
                let field = |name: &str| chain.get(name).and_then(Value::as_str);
                let id = ChainId {
                    family: field("family")?.to_string(),
                    table: field("table")?.to_string(),
                    name: field("name")?.to_string(),
                };
                Some((id, field("hook").and_then(Hook::from_nft)))
            })
            .collect();
        let large = chains.len() > LARGE_NFT_CHAINS;
        Some(Inventory { chains, large, read_at: std::time::Instant::now() })
    }

    /// So many chains that reading them all at once costs seconds.
    pub(crate) fn is_large(&self) -> bool {
        self.large
    }

    fn base_chains(&self, family: Family, hook: Hook) -> impl Iterator<Item = &ChainId> {
        let kernel_family = nft_family_name(family);
        self.chains
            .iter()
            .filter(move |(id, on)| *on == Some(hook) && (id.family == kernel_family || id.family == "inet"))
            .map(|(id, _)| id)
    }

    fn has_iptables_tables(&self, family: Family) -> bool {
        let kernel_family = nft_family_name(family);
        self.chains.iter().any(|(id, _)| id.family == kernel_family && IPTABLES_TABLES.contains(&id.table.as_str()))
    }
}

/// The iptables tables with chains on `hook`.
fn iptables_tables(hook: Hook) -> &'static [&'static str] {
    match hook {
        Hook::PreRouting => &["raw", "mangle", "nat"],
        Hook::LocalIn => &["mangle", "nat", "filter", "security"],
        Hook::Forward => &["mangle", "filter", "security"],
        Hook::LocalOut => &["raw", "mangle", "nat", "filter", "security"],
        Hook::PostRouting => &["mangle", "nat"],
    }
}

/// The chains that `asked` packets can reach on their hooks (each packet on its own hook), read
/// chain by chain as their ways lead; everything else the full reading has is left out.
/// Without nft's listing of its chains this is the full reading.
pub(crate) fn scoped_snapshot(asked: &[(Hook, Packet<'_>)], inventory: Option<&Inventory>) -> Snapshot {
    let read_now;
    let inventory = match inventory {
        Some(inventory) => inventory,
        None => match Inventory::read() {
            Some(inventory) => {
                read_now = inventory;
                &read_now
            }
            None => return snapshot(),
        },
    };
    let mut families: Vec<Family> = Vec::new();
    for (_, packet) in asked {
        if !families.contains(&packet.family) {
            families.push(packet.family);
        }
    }
    let mut tables: Vec<&str> = asked.iter().flat_map(|(hook, _)| iptables_tables(*hook)).copied().collect();
    tables.sort_unstable();
    tables.dedup();

    let mut errors = Vec::new();
    let mut nft = NftChains { from_kernel: inventory.is_large(), ..NftChains::default() };
    let (iptables_nft, legacy) = std::thread::scope(|scope| {
        // iptables-nft-save takes half a second on such a node, whatever it prints: meanwhile
        // nft lists the base chains.
        let iptables = scope.spawn(|| {
            let mut errors = Vec::new();
            let mut iptables_nft = Vec::new();
            let mut legacy = Vec::new();
            for &family in &families {
                if inventory.has_iptables_tables(family) {
                    iptables_nft.extend(iptables_nft_chains(family, Some(&tables), &mut errors));
                }
                legacy.extend(legacy_chains(family, Some(&tables), &mut errors));
            }
            (iptables_nft, legacy, errors)
        });
        let bases: Vec<ChainId> =
            asked.iter().flat_map(|(hook, packet)| inventory.base_chains(packet.family, *hook)).cloned().collect();
        nft.list(bases, &mut errors);
        match iptables.join() {
            Ok((iptables_nft, legacy, their_errors)) => {
                errors.extend(their_errors);
                (iptables_nft, legacy)
            }
            Err(_) => {
                errors.push("iptables: reading its tables failed unexpectedly: its rules are left out".to_string());
                (Vec::new(), Vec::new())
            }
        }
    });

    let iptables_nft = SavedChains::new(iptables_nft);
    loop {
        let mut snap = nft.snapshot(&iptables_nft);
        let ruleset = Ruleset::new(&snap);
        let unread: Vec<ChainId> = asked
            .iter()
            .flat_map(|(hook, packet)| ruleset.walk(*hook, packet))
            .flat_map(|walk| walk.unread)
            .filter(|id| !nft.chains_listed.contains(id))
            .collect();
        if unread.is_empty() || nft.chains_listed.len() >= MAX_CHAINS {
            // Legacy tables are walked on their own and lead to no nf_tables chain: they join
            // the reading only now, in the full reading's order.
            let mut chains = legacy;
            chains.append(&mut snap.chains);
            snap.chains = chains;
            errors.append(&mut snap.errors);
            snap.errors = errors;
            if uses_ipsets(&snap.chains) {
                read_ipsets(&mut snap);
            }
            return snap;
        }
        nft.list(unread, &mut errors);
    }
}

/// What was listed so far, as nft's JSON items.
#[derive(Default)]
struct NftChains {
    items: Vec<Value>,
    chains_listed: HashSet<ChainId>,
    objects_listed: HashSet<NamedObject>,
    /// Chains are read from the kernel where [`nft_netlink`](super::nft_netlink) decodes
    /// them: on a large node `nft list chain` costs up to a second each (nft 1.0.6 fetches
    /// every set of the chain's table first; kube-proxy's holds thousands).
    from_kernel: bool,
}

impl NftChains {
    /// Lists `chains` and the objects their rules name; a chain that went in between (rules
    /// change all the time on such a node) is left out. The chains nft has to list run side
    /// by side, each `nft list` as slow as its table is large.
    fn list(&mut self, chains: Vec<ChainId>, errors: &mut Vec<String>) {
        let mut for_nft = Vec::new();
        let mut listed = Vec::new();
        for id in chains {
            if self.chains_listed.len() >= MAX_CHAINS || !self.chains_listed.insert(id.clone()) {
                continue;
            }
            if self.from_kernel {
                match list_chain(&id) {
                    Listing::Read(items) => {
                        listed.extend(items);
                        continue;
                    }
                    Listing::Gone => continue,
                    Listing::Undecoded => {}
                }
            }
            for_nft.push(vec!["chain".to_string(), id.family, id.table, id.name]);
        }
        listed.extend(list_all(for_nft, errors));
        let mut objects = Vec::new();
        for object in named_objects(&listed) {
            if self.objects_listed.insert(object.clone()) {
                objects.push(vec![object.kind.to_string(), object.family, object.table, object.name]);
            }
        }
        self.items.extend(list_all(objects, errors));
        self.items.extend(listed);
    }

    /// The nf_tables chains read so far, iptables-nft's told from native ones as in a full
    /// reading (of `iptables_nft`, only those nft listed can be claimed).
    fn snapshot(&self, iptables_nft: &SavedChains) -> Snapshot {
        let mut snap = Snapshot::default();
        let nft = match parse_nft_items(&self.items) {
            Ok(chains) => Some(chains),
            Err(e) => {
                snap.errors.push(format!("nftables: cannot parse what nft listed of the chains: {e:#}"));
                None
            }
        };
        let (owned, native) = reconcile(nft, iptables_nft.listed(&self.chains_listed));
        snap.chains.extend(owned);
        snap.chains.extend(native);
        snap
    }
}

/// What iptables-nft-save printed, found by nf_tables names: each round of a scoped reading
/// takes only the chains nft listed, not every chain of the hook's tables (tens of thousands
/// of rules in kube-proxy's nat table).
struct SavedChains {
    chains: Vec<Chain>,
    at: HashMap<ChainId, usize>,
}

impl SavedChains {
    fn new(chains: Vec<Chain>) -> SavedChains {
        let at = chains
            .iter()
            .enumerate()
            .map(|(at, chain)| {
                let id = ChainId {
                    family: nft_family_name(chain.family).to_string(),
                    table: chain.table.clone(),
                    name: chain.name.clone(),
                };
                (id, at)
            })
            .collect();
        SavedChains { chains, at }
    }

    /// Copies of the chains among `listed`, in the order the tool printed them.
    fn listed(&self, listed: &HashSet<ChainId>) -> Vec<Chain> {
        let mut at: Vec<usize> = listed.iter().filter_map(|id| self.at.get(id).copied()).collect();
        at.sort_unstable();
        at.into_iter().map(|at| self.chains[at].clone()).collect()
    }
}

/// The items of every `nft list` in `what`, run at most [`PARALLEL_LISTINGS`] at a time.
fn list_all(what: Vec<Vec<String>>, errors: &mut Vec<String>) -> Vec<Value> {
    let mut items = Vec::new();
    for batch in what.chunks(PARALLEL_LISTINGS) {
        let results: Vec<(Option<Vec<Value>>, Vec<String>)> = std::thread::scope(|scope| {
            let running: Vec<_> = batch
                .iter()
                .map(|args| {
                    scope.spawn(move || {
                        let mut errors = Vec::new();
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        (list_nft(&args, &mut errors), errors)
                    })
                })
                .collect();
            running.into_iter().filter_map(|listing| listing.join().ok()).collect()
        });
        for (listed, their_errors) in results {
            items.extend(listed.unwrap_or_default());
            errors.extend(their_errors);
        }
    }
    items
}

/// `nft -j -a list WHAT...`'s items; on failure the reason goes to `errors`.
fn list_nft(what: &[&str], errors: &mut Vec<String>) -> Option<Vec<Value>> {
    let mut args = vec!["-j", "-a", "list"];
    args.extend_from_slice(what);
    let command = format!("nft {}", args.join(" "));
    match run_tool("nft", &args) {
        ToolRun::Done { ok: true, stdout, .. } => match nft_items(&stdout) {
            Ok(items) => Some(items),
            Err(e) => {
                errors.push(format!("nftables: cannot parse `{command}`: {e:#}"));
                None
            }
        },
        // Gone since the walk named it (kube-proxy replaces chains on every sync): the walk
        // then says it could not follow the way, which is all there is to say.
        ToolRun::Done { stderr, .. } if stderr.contains("No such file or directory") => None,
        ToolRun::Done { stderr, code, .. } => {
            errors.push(format!("nftables: `{command}` failed{code}: {stderr}"));
            None
        }
        ToolRun::Missing => {
            errors.push("nftables: nft went missing while reading: its rules are left out".to_string());
            None
        }
        ToolRun::Failed(e) => {
            errors.push(format!("nftables: cannot run nft: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::model::{Backend, Verdict};
    use crate::model::packet::L4Proto;
    use crate::system::netns::scratch::Netns;

    fn udp_to(dst: &str, dport: u16) -> Packet<'static> {
        Packet {
            family: Family::Ipv4,
            proto: L4Proto::Udp,
            src: Some("10.244.0.5".parse().expect("addr")),
            dst: Some(dst.parse().expect("addr")),
            sport: Some(40000),
            dport: Some(dport),
            in_iface: None,
            out_iface: None,
        }
    }

    fn chains_of(snapshot: &Snapshot) -> Vec<String> {
        snapshot.chains.iter().map(|c| format!("{} {}", c.table, c.name)).collect()
    }

    /// The certain end of the walk of `packet` at `hook`: chain, rule position and verdict.
    fn certain_end(snapshot: &Snapshot, hook: Hook, packet: &Packet) -> Vec<(String, u32, Verdict)> {
        let ruleset = Ruleset::new(snapshot);
        let walks = ruleset.walk(hook, packet);
        assert!(walks.iter().all(|w| w.complete && w.unread.is_empty()), "every way read: {:?}", chains_of(snapshot));
        walks
            .iter()
            .flat_map(|walk| walk.ends.iter().filter(|end| end.certain).map(move |end| (walk, end)))
            .map(|(walk, end)| {
                let rule = ruleset.rule(&walk.met[end.met]);
                (rule.chain.clone(), rule.position, end.verdict.clone())
            })
            .collect()
    }

    #[test]
    fn real_nftables_reads_only_the_chains_the_way_reaches() {
        let ns = Netns::new();
        let mut services = String::new();
        for n in 0..40 {
            services.push_str(&format!("chain svc-{n} {{ ip daddr 10.96.1.{n} udp dport 53 counter drop; }}\n"));
        }
        let elements: Vec<String> = (0..40).map(|n| format!("10.96.1.{n} . udp . 53 : goto svc-{n}")).collect();
        ns.nft(&format!(
            "table ip tr-scoped {{
               {services}
               map by-service {{ type ipv4_addr . inet_proto . inet_service : verdict; elements = {{ {} }} }}
               set dns-ports {{ type inet_service; elements = {{ 53, 5353 }} }}
               counter seen {{ }}
               chain forward {{ type filter hook forward priority 0; policy accept;
                 udp dport @dns-ports counter name seen
                 ip daddr . meta l4proto . th dport vmap @by-service
               }}
               chain prerouting {{ type filter hook prerouting priority 0; policy accept;
                 udp dport 9 jump svc-0
               }}
             }}",
            elements.join(", ")
        ));
        let packet = udp_to("10.96.1.7", 53);
        let snapshot = ns.run(|| scoped_snapshot(&[(Hook::Forward, packet)], None));
        // As on a large node, where the chains are read from the kernel: the same reading.
        let from_kernel = ns.run(|| {
            let mut inventory = Inventory::read().expect("nft lists the chains");
            inventory.large = true;
            scoped_snapshot(&[(Hook::Forward, packet)], Some(&inventory))
        });
        assert_eq!(from_kernel, snapshot);
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert_eq!(chains_of(&snapshot), ["ip tr-scoped forward", "ip tr-scoped svc-7"]);
        assert!(snapshot.chains.iter().all(|c| c.backend == Backend::Nftables));
        assert_eq!(certain_end(&snapshot, Hook::Forward, &packet), [("svc-7".to_string(), 1, Verdict::Drop)]);
        // The named set was read with the chain: the first rule is a certain match, not a "may".
        let forward = &snapshot.chains[0];
        assert!(forward.rules[0].matches.unparsed.is_empty(), "{:?}", forward.rules[0].matches);

        // What the full reading says of the same packet.
        let full = ns.run(snapshot_full);
        assert_eq!(full.chains.len(), 42);
        assert_eq!(certain_end(&full, Hook::Forward, &packet), certain_end(&snapshot, Hook::Forward, &packet));
    }

    fn snapshot_full() -> Snapshot {
        snapshot()
    }

    #[test]
    fn real_iptables_nft_reads_the_hooks_tables_and_claims_its_chains() {
        let ns = Netns::new();
        ns.sh("iptables-nft -N TR-USER
             iptables-nft -A FORWARD -p udp -j TR-USER
             iptables-nft -A TR-USER -d 10.96.0.10 -p udp --dport 53 -m comment --comment tr-dns -j REJECT --reject-with icmp-port-unreachable
             iptables-nft -t nat -N TR-NAT
             iptables-nft -t nat -A PREROUTING -j TR-NAT
             iptables-legacy -w -A FORWARD -p tcp --dport 9 -j DROP
             iptables-legacy -w -t nat -A PREROUTING -p tcp --dport 9 -j RETURN");
        let packet = udp_to("10.96.0.10", 53);
        let snapshot = ns.run(|| scoped_snapshot(&[(Hook::Forward, packet)], None));
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        // iptables-nft's chains hold expressions the kernel reader leaves to nft: the same reading.
        let from_kernel = ns.run(|| {
            let mut inventory = Inventory::read().expect("nft lists the chains");
            inventory.large = true;
            scoped_snapshot(&[(Hook::Forward, packet)], Some(&inventory))
        });
        assert_eq!(from_kernel, snapshot);
        let names: Vec<String> =
            snapshot.chains.iter().map(|c| format!("{} {} {}", c.backend.name(), c.table, c.name)).collect();
        // Not the nat tables, which have no chain on the forward hook; legacy's filter table
        // whole (its built-in chains always exist), iptables-nft's chains as nft has them.
        assert_eq!(
            names,
            [
                "iptables-legacy filter INPUT",
                "iptables-legacy filter FORWARD",
                "iptables-legacy filter OUTPUT",
                "iptables-nft filter FORWARD",
                "iptables-nft filter TR-USER"
            ],
        );
        let user = &snapshot.chains[4];
        assert!(user.rules[0].text.starts_with("-A TR-USER -d 10.96.0.10/32"), "{}", user.rules[0].text);
        assert!(user.rules[0].handle.is_some(), "nft's handle, claimed by iptables-nft");
        assert_eq!(
            certain_end(&snapshot, Hook::Forward, &packet),
            [("TR-USER".to_string(), 1, Verdict::Reject { with: Some("icmp-port-unreachable".to_string()) })]
        );
    }

    #[test]
    fn real_namespace_without_tables_reads_nothing() {
        let ns = Netns::new();
        let snapshot = ns.run(|| scoped_snapshot(&[(Hook::LocalIn, udp_to("10.0.0.1", 53))], None));
        assert!(snapshot.chains.is_empty() && snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        assert_eq!(ns.sh("cat /proc/net/ip_tables_names; nft list ruleset"), "");
    }
}
