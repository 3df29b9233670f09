//! Reads the firewall of the current network namespace: the rulesets of iptables-legacy,
//! iptables-nft and native nftables, with their counters. Read only: it runs the tools'
//! listing commands (`iptables-save -c`, `nft -j -a list ruleset`) and nothing else, so it
//! never adds a rule, enables tracing or resets a counter.

use std::io;
use std::path::Path;

use super::ipset::{attach_ipsets, parse_ipset_save, uses_ipsets};
use super::iptables::parse_iptables_save;
use super::model::{nft_family_name, Backend, Chain, Family, Snapshot};
use super::nft::parse_nft;
use super::reconcile::reconcile;
use crate::system::tools::{self, HelperError};

/// The iptables tables; nf_tables tables with these names in the ip/ip6 families may be
/// iptables-nft's.
pub(super) const IPTABLES_TABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// The rulesets of every backend in use in the network namespace of the calling thread.
/// Runs at most one listing process per backend and family (nft lists both families at
/// once) and skips a backend's tool when the kernel shows it has no tables.
pub(crate) fn snapshot() -> Snapshot {
    let mut snap = Snapshot::default();

    // nft first: its listing tells whether iptables-nft tables exist at all.
    let nft = match run_tool("nft", &["-j", "-a", "list", "ruleset"]) {
        ToolRun::Missing => {
            snap.errors.push(format!(
                "nftables: nft is not installed in {}: nftables rules, and the handles of iptables-nft's, cannot be read",
                tools::HELPER_DIRS.join(", ")
            ));
            None
        }
        ToolRun::Done { ok: true, stdout, .. } => match parse_nft(&stdout) {
            Ok(chains) => Some(chains),
            Err(e) => {
                snap.errors.push(format!("nftables: cannot parse `nft -j -a list ruleset`: {e:#}"));
                None
            }
        },
        ToolRun::Done { ok: false, stderr, code, .. } => {
            // A kernel without nf_tables has no nftables (and no iptables-nft) to read.
            if !stderr.contains("not supported") {
                snap.errors.push(format!("nftables: `nft -j -a list ruleset` failed{code}: {stderr}"));
            }
            None
        }
        ToolRun::Failed(e) => {
            snap.errors.push(format!("nftables: cannot run nft: {e}"));
            None
        }
    };

    let mut iptables_nft = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let kernel_family = nft_family_name(family);
        // Without nft's listing there is no telling whether the tables exist: ask the tool.
        let has_tables = nft.as_ref().is_none_or(|chains| {
            chains.iter().any(|c| c.kernel_family == kernel_family && IPTABLES_TABLES.contains(&c.table_name.as_str()))
        });
        if has_tables {
            iptables_nft.extend(iptables_nft_chains(family, None, &mut snap.errors));
        }
    }

    for family in [Family::Ipv4, Family::Ipv6] {
        snap.chains.extend(legacy_chains(family, None, &mut snap.errors));
    }

    let (owned, native) = reconcile(nft, iptables_nft);
    snap.chains.extend(owned);
    snap.chains.extend(native);
    if uses_ipsets(&snap.chains) {
        read_ipsets(&mut snap);
    }
    snap
}

/// The chains iptables-nft-save prints for `family`, of `tables` only when given (it reads every
/// table all the same: a reading scoped to some hooks parses and keeps only what they use).
pub(super) fn iptables_nft_chains(family: Family, tables: Option<&[&str]>, errors: &mut Vec<String>) -> Vec<Chain> {
    let tool = match family {
        Family::Ipv4 => "iptables-nft-save",
        Family::Ipv6 => "ip6tables-nft-save",
    };
    let missing = format!(
        "the kernel has its tables but {tool} is not installed in {}: its rules are read from nft instead",
        tools::HELPER_DIRS.join(", ")
    );
    // On failure it has stopped at the first rule it cannot translate (a native nft rule
    // in a table named like an iptables one); the tables it completed are still right,
    // and nft shows the rest.
    let failed = "; chains it could not show are reported from nft";
    let run = only_tables(run_tool(tool, &["-c"]), tables);
    saved_chains(run, tool, Backend::IptablesNft, family, &missing, failed, errors)
}

/// Reads the ipsets iptables rules match, for their lookups; without them those matches
/// stay "may match".
pub(super) fn read_ipsets(snap: &mut Snapshot) {
    let problem = match run_tool("ipset", &["save"]) {
        ToolRun::Done { ok: true, stdout, .. } => {
            let sets = std::sync::Arc::new(parse_ipset_save(&stdout));
            attach_ipsets(&mut snap.chains, &sets);
            return;
        }
        ToolRun::Missing => format!("ipset is not installed in {}", tools::HELPER_DIRS.join(", ")),
        ToolRun::Done { ok: false, stderr, code, .. } => format!("`ipset save` failed{code}: {stderr}"),
        ToolRun::Failed(e) => format!("cannot run ipset: {e}"),
    };
    snap.errors.push(format!(
        "ipset: rules match ipsets but {problem}: those matches are taken as \"may match\"; install ipset to have them checked"
    ));
}

/// The chains of the legacy x_tables of `family`, of `tables` only when given.
pub(super) fn legacy_chains(family: Family, tables: Option<&[&str]>, errors: &mut Vec<String>) -> Vec<Chain> {
    let names_file = match family {
        Family::Ipv4 => "ip_tables_names",
        Family::Ipv6 => "ip6_tables_names",
    };
    // The kernel lists the x_tables tables instantiated in this namespace; reading the list
    // instantiates nothing (unlike `iptables-legacy -L`), and an empty list spares the
    // process. thread-self: the calling thread may have entered another namespace.
    match read_proc_net(names_file) {
        Ok(names) if names.trim().is_empty() => return Vec::new(),
        Ok(_) => {}
        // No legacy x_tables in this kernel.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        // Unreadable: let the tool decide.
        Err(_) => {}
    }
    let (tool, fallback) = match family {
        Family::Ipv4 => ("iptables-legacy-save", "iptables-save"),
        Family::Ipv6 => ("ip6tables-legacy-save", "ip6tables-save"),
    };
    let mut run = run_tool(tool, &["-c"]);
    if matches!(run, ToolRun::Missing) {
        // iptables before 1.8 has no -legacy names; its plain iptables-save is legacy.
        run = match run_tool(fallback, &["-c"]) {
            ToolRun::Done { stdout, .. } if stdout.contains("(nf_tables)") => ToolRun::Missing,
            other => other,
        };
    }
    let missing = format!("the kernel has legacy tables but {tool} is not installed");
    saved_chains(only_tables(run, tables), tool, Backend::IptablesLegacy, family, &missing, "", errors)
}

/// What an iptables save tool printed, cut down to the sections of `tables` when given.
fn only_tables(run: ToolRun, tables: Option<&[&str]>) -> ToolRun {
    let (Some(tables), ToolRun::Done { ok, stdout, stderr, code }) = (tables, &run) else {
        return run;
    };
    let mut kept = String::new();
    let mut keeping = false;
    for line in stdout.lines() {
        if let Some(table) = line.strip_prefix('*') {
            keeping = tables.contains(&table.trim());
        }
        if keeping {
            kept.push_str(line);
            kept.push('\n');
        }
        if line.trim() == "COMMIT" {
            keeping = false;
        }
    }
    ToolRun::Done { ok: *ok, stdout: kept, stderr: stderr.clone(), code: code.clone() }
}

/// The chains an iptables save tool printed, from its run; what went wrong is added to
/// `errors`, one line each: `missing` when the tool is not installed, and `failed` after
/// the tool's own message when it failed.
fn saved_chains(
    run: ToolRun,
    tool: &str,
    backend: Backend,
    family: Family,
    missing: &str,
    failed: &str,
    errors: &mut Vec<String>,
) -> Vec<Chain> {
    let who = format!("{} ({})", backend.name(), family.name());
    match run {
        ToolRun::Missing => {
            errors.push(format!("{who}: {missing}"));
            Vec::new()
        }
        ToolRun::Done { ok, stdout, stderr, code } => {
            if !ok {
                errors.push(format!("{who}: `{tool} -c` failed{code}: {stderr}{failed}"));
            }
            parse_iptables_save(&stdout, backend, family)
        }
        ToolRun::Failed(e) => {
            errors.push(format!("{who}: cannot run {tool}: {e}"));
            Vec::new()
        }
    }
}

fn read_proc_net(file: &str) -> io::Result<String> {
    match std::fs::read_to_string(Path::new("/proc/thread-self/net").join(file)) {
        // Kernels before 3.17 have no thread-self.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/thread-self").exists() => {
            std::fs::read_to_string(Path::new("/proc/self/net").join(file))
        }
        other => other,
    }
}

pub(super) enum ToolRun {
    Missing,
    /// `code` is "" on success, " (exit N)" otherwise; `stderr` is one line.
    Done {
        ok: bool,
        stdout: String,
        stderr: String,
        code: String,
    },
    Failed(HelperError),
}

pub(super) fn run_tool(name: &str, args: &[&str]) -> ToolRun {
    match tools::run(name, args, tools::HELPER_TIMEOUT) {
        Ok(out) => {
            let code = match out.status.code() {
                _ if out.status.success() => String::new(),
                Some(code) => format!(" (exit {code})"),
                None => " (killed by a signal)".to_string(),
            };
            ToolRun::Done {
                ok: out.status.success(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: one_line(&String::from_utf8_lossy(&out.stderr)),
                code,
            }
        }
        Err(HelperError::Missing) => ToolRun::Missing,
        Err(err) => ToolRun::Failed(err),
    }
}

/// Tool messages as one line, bounded.
fn one_line(text: &str) -> String {
    let joined = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    if joined.chars().count() > 300 {
        let cut: String = joined.chars().take(300).collect();
        format!("{cut}...")
    } else if joined.is_empty() {
        "no message".to_string()
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::eval::{Packet, Ruleset};
    use crate::firewall::fixtures::reject_with;
    use crate::firewall::model::{Chain, Condition, Hook, Verdict};
    use crate::model::packet::L4Proto;
    use crate::system::netns::scratch::Netns;

    fn names(snapshot: &Snapshot) -> Vec<String> {
        snapshot.chains.iter().map(|c| format!("{} {:?} {} {}", c.backend.name(), c.family, c.table, c.name)).collect()
    }

    fn find<'a>(snapshot: &'a Snapshot, backend: Backend, family: Family, table: &str, name: &str) -> &'a Chain {
        snapshot
            .chains
            .iter()
            .find(|c| c.backend == backend && c.family == family && c.table == table && c.name == name)
            .unwrap_or_else(|| panic!("no {} {table} {name} in {:?}", backend.name(), names(snapshot)))
    }

    /// The firewall of `ns`, read without an error.
    fn read_cleanly(ns: &Netns) -> Snapshot {
        let snapshot = ns.run(snapshot);
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        snapshot
    }

    #[test]
    fn real_empty_namespace_has_nothing_and_gets_nothing() {
        let ns = Netns::new();
        let snapshot = ns.run(snapshot);
        assert!(snapshot.chains.is_empty(), "{:?}", names(&snapshot));
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        // Reading created no table in any backend.
        assert_eq!(ns.sh("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names"), "");
        assert_eq!(ns.sh("nft list ruleset"), "");
    }

    #[test]
    fn real_iptables_nft() {
        let ns = Netns::new();
        ns.sh("iptables-nft -P OUTPUT ACCEPT
             iptables-nft -N TR-USER
             iptables-nft -A OUTPUT -p tcp --dport 22 -j ACCEPT
             iptables-nft -A OUTPUT -o lo -p udp -j TR-USER
             iptables-nft -A TR-USER -d 127.0.0.1 -p udp --dport 9 -j REJECT --reject-with icmp-host-prohibited
             ip6tables-nft -A OUTPUT -p udp --dport 9 -j REJECT --reject-with icmp6-adm-prohibited");
        let ruleset_before = ns.sh("nft list ruleset");
        ns.send_udp("127.0.0.1:9".parse().unwrap(), 2);
        let snapshot = read_cleanly(&ns);
        assert_eq!(
            names(&snapshot),
            ["iptables-nft Ipv4 filter OUTPUT", "iptables-nft Ipv4 filter TR-USER", "iptables-nft Ipv6 filter OUTPUT"]
        );
        let output = find(&snapshot, Backend::IptablesNft, Family::Ipv4, "filter", "OUTPUT");
        assert_eq!(output.hook, Some(Hook::LocalOut));
        assert_eq!(output.rules[1].verdict, Verdict::Jump("TR-USER".to_string()));
        assert_eq!(output.rules[1].packets, Some(2));
        let user = find(&snapshot, Backend::IptablesNft, Family::Ipv4, "filter", "TR-USER");
        let reject = &user.rules[0];
        assert_eq!(
            reject.text,
            "-A TR-USER -d 127.0.0.1/32 -p udp -m udp --dport 9 -j REJECT --reject-with icmp-host-prohibited"
        );
        assert_eq!(reject.packets, Some(2));
        assert!(reject.handle.is_some());
        // Read only: the ruleset (counters aside) is what it was.
        assert_eq!(ns.sh("nft -s list ruleset"), strip_counters(&ruleset_before));
    }

    fn strip_counters(ruleset: &str) -> String {
        ruleset
            .lines()
            .map(|line| match line.find("counter packets ") {
                Some(at) => {
                    let rest = &line[at + "counter packets ".len()..];
                    let after = rest.splitn(4, ' ').nth(3).unwrap_or("");
                    format!("{}counter {after}", &line[..at])
                }
                None => line.to_string(),
            })
            .map(|line| line.trim_end().to_string() + "\n")
            .collect()
    }

    #[test]
    fn real_iptables_legacy() {
        let ns = Netns::new();
        ns.sh("iptables-legacy -w -P FORWARD DROP
             iptables-legacy -w -A OUTPUT -o lo -p udp --dport 9 -j DROP
             iptables-legacy -w -t raw -A OUTPUT -p udp --dport 7 -j CT --notrack
             ip6tables-legacy -w -A OUTPUT -p tcp --dport 9 -j REJECT --reject-with tcp-reset");
        let tables_before = ns.sh("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names");
        ns.send_udp("127.0.0.1:9".parse().unwrap(), 3);
        let snapshot = read_cleanly(&ns);
        assert!(snapshot.chains.iter().all(|c| c.backend == Backend::IptablesLegacy), "{:?}", names(&snapshot));
        let forward = find(&snapshot, Backend::IptablesLegacy, Family::Ipv4, "filter", "FORWARD");
        assert_eq!((&forward.policy, forward.policy_packets), (&Some(Verdict::Drop), Some(0)));
        let output = find(&snapshot, Backend::IptablesLegacy, Family::Ipv4, "filter", "OUTPUT");
        assert_eq!(output.rules[0].packets, Some(3));
        assert_eq!(output.rules[0].verdict, Verdict::Drop);
        let raw = find(&snapshot, Backend::IptablesLegacy, Family::Ipv4, "raw", "OUTPUT");
        assert_eq!(raw.rules[0].verdict, Verdict::Other("CT --notrack".to_string()));
        let v6 = find(&snapshot, Backend::IptablesLegacy, Family::Ipv6, "filter", "OUTPUT");
        assert_eq!(v6.rules[0].verdict, reject_with("tcp-reset"));
        assert_eq!(ns.sh("cat /proc/net/ip_tables_names /proc/net/ip6_tables_names"), tables_before);
    }

    #[test]
    fn real_nftables() {
        let ns = Netns::new();
        ns.nft(
            "table inet tr-test {
               chain out { type filter hook output priority 0; policy accept;
                 udp dport 9 counter reject with icmpx admin-prohibited
                 udp dport 10 drop
               }
             }
             table ip filter {
               chain input { type filter hook input priority 0; policy drop; }
             }",
        );
        ns.send_udp("127.0.0.1:9".parse().unwrap(), 2);
        let snapshot = read_cleanly(&ns);
        // `ip filter` is a name iptables uses, but iptables-nft-save does not show its
        // lower-case chain: native.
        assert_eq!(
            names(&snapshot),
            ["nftables Ipv4 inet tr-test out", "nftables Ipv6 inet tr-test out", "nftables Ipv4 ip filter input"]
        );
        let out = find(&snapshot, Backend::Nftables, Family::Ipv4, "inet tr-test", "out");
        assert_eq!(out.rules[0].text, "udp dport 9 counter reject with icmpx admin-prohibited");
        assert_eq!(out.rules[0].packets, Some(2));
        assert_eq!(out.rules[1].packets, None);
        let input = find(&snapshot, Backend::Nftables, Family::Ipv4, "ip filter", "input");
        assert_eq!((input.hook, &input.policy), (Some(Hook::LocalIn), &Some(Verdict::Drop)));
    }

    #[test]
    fn real_all_backends_at_once() {
        let ns = Netns::new();
        ns.sh("iptables-nft -A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
             iptables-legacy -w -A FORWARD -p udp --dport 53 -j REJECT --reject-with icmp-host-prohibited
             ip6tables-nft -A FORWARD -p udp --dport 53 -j DROP");
        ns.nft(
            "table ip tr-native {
               chain forward_5 {
                 type filter hook forward priority 5;
                 udp dport 53 counter drop
               }
             }",
        );
        let snapshot = read_cleanly(&ns);
        let forward: Vec<String> = snapshot
            .chains
            .iter()
            .filter(|c| c.hook == Some(Hook::Forward))
            .map(|c| format!("{} {:?} {} {}", c.backend.name(), c.family, c.table, c.name))
            .collect();
        assert_eq!(
            forward,
            [
                "iptables-legacy Ipv4 filter FORWARD",
                "iptables-nft Ipv4 filter FORWARD",
                "iptables-nft Ipv6 filter FORWARD",
                "nftables Ipv4 ip tr-native forward_5",
            ]
        );
        // Each rule once: the iptables-nft rule does not come back as a native one.
        let dns_rules = snapshot.chains.iter().flat_map(|c| &c.rules).filter(|r| r.family == Family::Ipv4).count();
        assert_eq!(dns_rules, 3);
    }

    #[test]
    fn real_iptables_nft_save_failure_is_reported_and_nft_fills_in() {
        let ns = Netns::new();
        ns.nft(
            "table ip mangle {
               chain OUTPUT {
                 type route hook output priority -150; policy accept;
                 meta mark set 1
               }
             }
             table ip filter {
               chain FORWARD {
                 type filter hook forward priority 0; policy accept;
                 ip saddr { 1.1.1.1, 2.2.2.2 } counter drop
               }
             }",
        );
        let snapshot = ns.run(snapshot);
        assert_eq!(snapshot.errors.len(), 1, "{:?}", snapshot.errors);
        assert!(
            snapshot.errors[0].starts_with("iptables-nft (IPv4): `iptables-nft-save -c` failed (exit"),
            "{}",
            snapshot.errors[0]
        );
        assert!(!snapshot.errors[0].contains('\n'));
        assert_eq!(names(&snapshot), ["nftables Ipv4 ip mangle OUTPUT", "nftables Ipv4 ip filter FORWARD"]);
        let forward = find(&snapshot, Backend::Nftables, Family::Ipv4, "ip filter", "FORWARD");
        assert_eq!(forward.rules[0].text, "ip saddr { 1.1.1.1, 2.2.2.2 } counter drop");
    }

    #[test]
    fn real_ipset_matches_are_read_with_their_sets() {
        let ns = Netns::new();
        ns.sh("ipset create TR-DNS hash:ip,port
             ipset add TR-DNS 10.96.0.10,udp:53
             iptables-nft -A FORWARD -m set --match-set TR-DNS dst,dst -j REJECT --reject-with icmp-host-prohibited");
        let snapshot = read_cleanly(&ns);
        let forward = find(&snapshot, Backend::IptablesNft, Family::Ipv4, "filter", "FORWARD");
        assert_eq!(
            forward.rules[0].text,
            "-A FORWARD -m set --match-set TR-DNS dst,dst -j REJECT --reject-with icmp-host-prohibited"
        );
        let Condition::IpSet(set) = &forward.rules[0].matches.tests[0].condition else {
            panic!("{:?}", forward.rules[0].matches)
        };
        assert!(set.sets.is_some(), "the sets were read");

        let ruleset = Ruleset::new(&snapshot);
        let to = |dport: u16| Packet {
            family: Family::Ipv4,
            proto: L4Proto::Udp,
            src: Some("10.244.0.5".parse().expect("addr")),
            dst: Some("10.96.0.10".parse().expect("addr")),
            sport: Some(40000),
            dport: Some(dport),
            in_iface: None,
            out_iface: None,
        };
        let ends = |dport| -> Vec<bool> {
            ruleset.walk(Hook::Forward, &to(dport)).iter().flat_map(|w| w.ends.iter().map(|e| e.certain)).collect()
        };
        assert_eq!(ends(53), [true]);
        assert!(ends(54).is_empty());
    }
}
