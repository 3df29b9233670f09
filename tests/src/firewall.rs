//! A namespace's firewall as text, to show that tracer leaves it as it found it.

use anyhow::Result;

use crate::lab::{Lab, Ns};

/// Every ruleset of namespace `ns` as each backend's own tool prints it (iptables and ip6tables
/// through nf_tables and legacy, native nftables), each under a `==== TOOL` line, without packet
/// and byte counters and without the generation comments, which change on their own.
pub fn rulesets(lab: &Lab, ns: Ns) -> Result<String> {
    let mut state = String::new();
    for argv in [
        &["iptables-nft-save"][..],
        &["ip6tables-nft-save"],
        &["iptables-legacy-save"],
        &["ip6tables-legacy-save"],
        &["nft", "list", "ruleset"],
    ] {
        let out = lab.run(ns, argv)?;
        state.push_str(&format!("==== {}\n", argv.join(" ")));
        for line in out.lines().filter(|l| !l.trim_start().starts_with('#')) {
            state.push_str(&strip_counters(line));
            state.push('\n');
        }
    }
    Ok(state)
}

/// `:FORWARD ACCEPT [12:345]` → `:FORWARD ACCEPT`; `counter packets 3 bytes 180` → `counter`.
pub fn strip_counters(line: &str) -> String {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut words: Vec<&str> = Vec::new();
    let mut tokens = line.split_whitespace().peekable();
    while let Some(token) = tokens.next() {
        let bracketed = token.len() >= 2
            && token.starts_with('[')
            && token.ends_with(']')
            && token[1..token.len() - 1].split(':').all(all_digits);
        if bracketed {
            continue;
        }
        if (token == "packets" || token == "bytes") && tokens.peek().is_some_and(|n| all_digits(n)) {
            tokens.next();
            continue;
        }
        words.push(token);
    }
    let indent = &line[..line.len() - line.trim_start().len()];
    format!("{indent}{}", words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_counters_keeps_rules() {
        assert_eq!(strip_counters(":FORWARD ACCEPT [12:345]"), ":FORWARD ACCEPT");
        assert_eq!(
            strip_counters("\t\tudp dport 53 counter packets 3 bytes 180 reject"),
            "\t\tudp dport 53 counter reject"
        );
        assert_eq!(
            strip_counters("-A FORWARD -p udp -m udp --dport 53 -j ACCEPT"),
            "-A FORWARD -p udp -m udp --dport 53 -j ACCEPT"
        );
        assert_eq!(strip_counters("[0:0] -A FORWARD -j DROP"), "-A FORWARD -j DROP");
    }
}
