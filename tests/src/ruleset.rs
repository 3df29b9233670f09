//! Putting a generated ruleset into a lab's namespace as its own tool takes it (a file), and
//! reading back what the tool's listing shows.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::lab::Lab;

/// Writes `text` to `name` in the lab's private directory.
pub fn write_lab_file(lab: &Lab, name: &str, text: &str) -> Result<PathBuf> {
    let path = lab.dir().join(name);
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `argv` with `file` appended: how the loaders take a ruleset.
pub fn with_file<'a>(argv: &[&'a str], file: &'a Path) -> Result<Vec<&'a str>> {
    let mut argv = argv.to_vec();
    argv.push(file.to_str().context("non-UTF-8 lab directory")?);
    Ok(argv)
}

/// One table of `iptables-save` output, from `*TABLE` to its `COMMIT`.
pub fn saved_table<'a>(saved: &'a str, table: &str) -> Result<&'a str> {
    let header = format!("*{table}\n");
    let start = saved.find(&header).with_context(|| format!("no {table} table in:\n{saved}"))?;
    let rest = &saved[start..];
    let end = rest.find("\nCOMMIT\n").with_context(|| format!("{table} table without COMMIT"))?;
    Ok(&rest[..end])
}

/// The rules of `iptables-save` output or `iptables-restore` input.
pub fn rule_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
}

/// The rules of `chain` in `iptables-save -c` output, without their counters, each with its packet
/// count.
pub fn counted_rules<'a>(saved: &'a str, chain: &str) -> Result<Vec<(u64, &'a str)>> {
    let prefix = format!("-A {chain} ");
    let mut rules = Vec::new();
    for line in saved.lines() {
        let Some((counters, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        if !rule.starts_with(&prefix) {
            continue;
        }
        let packets = counters.split(':').next().unwrap_or_default();
        let packets = packets.parse().with_context(|| format!("counters of `{line}`"))?;
        rules.push((packets, rule));
    }
    Ok(rules)
}

/// The packets counted by the one rule of `chain` containing all of `parts`, in `iptables-save
/// -c` output, and the rule as it was printed.
pub fn rule_packets<'a>(saved: &'a str, chain: &str, parts: &[&str]) -> Result<(u64, &'a str)> {
    let rules = counted_rules(saved, chain)?;
    let matching: Vec<_> = rules.iter().filter(|(_, rule)| parts.iter().all(|p| rule.contains(p))).collect();
    match matching[..] {
        [&found] => Ok(found),
        _ => bail!("want one rule of {chain} with {parts:?}, found {}:\n{saved}", matching.len()),
    }
}

/// The packets counted by the one rule containing all of `parts` in an `nft list` listing (whose
/// rules count with `counter packets N bytes M`), and the rule as it was printed.
pub fn nft_rule_packets<'a>(listing: &'a str, parts: &[&str]) -> Result<(u64, &'a str)> {
    let matching: Vec<&str> = listing.lines().map(str::trim).filter(|l| parts.iter().all(|p| l.contains(p))).collect();
    let [rule] = matching[..] else {
        bail!("want one rule with {parts:?}, found {}:\n{listing}", matching.len());
    };
    let packets = rule
        .split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .with_context(|| format!("no counter in `{rule}`"))?;
    Ok((packets.parse().with_context(|| format!("counter of `{rule}`"))?, rule))
}
