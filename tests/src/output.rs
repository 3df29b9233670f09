//! Reading `tracer watch --output json` (JSON Lines; field names as in the README), and how
//! the commands the tests run ended.

use std::process::{ExitStatus, Output};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::lab::{Finished, BRIDGE, CLIENT_VETH, SERVER_VETH};

/// A whole JSON watch: packet and finding records, and the summary that must end it.
#[derive(Debug)]
pub struct WatchJson {
    pub packets: Vec<Value>,
    pub findings: Vec<Value>,
    pub summary: Value,
}

impl WatchJson {
    /// Every non-empty stdout line must be a JSON object with a `type` the README documents; the
    /// summary must be the last line and the only one.
    pub fn parse(stdout: &str) -> Result<WatchJson> {
        let mut packets = Vec::new();
        let mut findings = Vec::new();
        let mut summary = None;
        for (n, line) in stdout.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let value: Value =
                serde_json::from_str(line).with_context(|| format!("stdout line {} is not JSON: {line}", n + 1))?;
            if summary.is_some() {
                bail!("stdout line {} comes after the summary: {line}", n + 1);
            }
            match value.get("type").and_then(Value::as_str) {
                Some("packet") => packets.push(value),
                Some("finding") => findings.push(value),
                Some("summary") => summary = Some(value),
                _ => bail!("stdout line {} has no known \"type\": {line}", n + 1),
            }
        }
        let Some(summary) = summary else {
            bail!("no summary line; stdout was:\n{stdout}");
        };
        Ok(WatchJson { packets, findings, summary })
    }

    /// The output of a watch that must have exited 0.
    pub fn from_finished(done: &Finished) -> Result<WatchJson> {
        // The head of stdout: a watch of a burst prints thousands of lines, and a line that is
        // not JSON is quoted by the parser.
        ensure!(done.status.success(), "tracer failed:\n{}", done.describe_short());
        WatchJson::parse(&done.stdout).with_context(|| done.describe_short())
    }

    /// The summary's counts match the lines printed, and nothing was lost.
    pub fn check_summary(&self) -> Result<()> {
        let s = &self.summary;
        ensure!(u64_at(s, "/lost") == Some(0), "summary lost should be 0: {s}");
        let packets = u64_at(s, "/packets");
        // A findings-only line may stand for many packets the kernel counted.
        let lines: u64 = self.packets.iter().map(|line| line["occurrences"].as_u64().unwrap_or(1)).sum();
        ensure!(
            packets == Some(lines),
            "summary packets {packets:?} but {} packet lines standing for {lines}",
            self.packets.len()
        );
        // Each distinct finding is printed once, so the lines are the distinct findings.
        let findings = u64_at(s, "/findings");
        ensure!(
            findings == Some(self.findings.len() as u64),
            "summary findings {findings:?} but {} finding lines",
            self.findings.len()
        );
        Ok(())
    }

    /// Every packet record comes from the network namespace with this inode.
    pub fn check_netns(&self, inode: u64) -> Result<()> {
        for p in &self.packets {
            ensure!(u64_at(p, "/netns") == Some(inode), "record from outside namespace {inode}: {p}");
        }
        Ok(())
    }

    /// The first packet for which `pred` holds, or an error listing all of them.
    pub fn find_one(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<&Value> {
        match self.packets.iter().find(|p| pred(p)) {
            Some(p) => Ok(p),
            None => bail!("no record of {what} among:\n{}", self.describe()),
        }
    }

    /// The packets for which `pred` holds.
    pub fn find<'a>(&'a self, pred: impl Fn(&Value) -> bool + 'a) -> impl Iterator<Item = &'a Value> + 'a {
        self.packets.iter().filter(move |p| pred(p))
    }

    /// The query with DNS id `id` as it entered the bridge from the client's port; its source
    /// is the client's socket.
    pub fn query_from_client(&self, id: u16) -> Result<&Value> {
        self.find_one(&format!("query {id} entering the bridge from the client ({CLIENT_VETH})"), |p| {
            stage_is(p, "bridge-in", CLIENT_VETH) && dns_is(p, id, false)
        })
    }

    /// The reply to query `id` as it entered the bridge from the server's port.
    pub fn reply_from_server(&self, id: u16) -> Result<&Value> {
        self.find_one(&format!("the reply to {id} entering the bridge from the server ({SERVER_VETH})"), |p| {
            stage_is(p, "bridge-in", SERVER_VETH) && dns_is(p, id, true)
        })
    }

    /// The reply to query `id` as it left the bridge towards the client.
    pub fn reply_to_client(&self, id: u16) -> Result<&Value> {
        self.find_one(&format!("the reply to {id} leaving the bridge to the client ({CLIENT_VETH})"), |p| {
            stage_is(p, "bridge-out", CLIENT_VETH) && dns_is(p, id, true)
        })
    }

    /// The finding of `kind`, which must be the only one of its kind.
    pub fn one_finding(&self, kind: &str) -> Result<&Value> {
        let of_kind: Vec<&Value> = self.findings.iter().filter(|f| str_at(f, "/kind") == Some(kind)).collect();
        match of_kind.as_slice() {
            [finding] => Ok(finding),
            _ => bail!("expected one {kind} finding, got {}:\n{}", of_kind.len(), self.describe()),
        }
    }

    /// The finding of `kind`, which must be the only finding at all.
    pub fn only_finding(&self, kind: &str) -> Result<&Value> {
        let finding = self.one_finding(kind)?;
        ensure!(self.findings.len() == 1, "expected exactly one finding, of kind {kind}:\n{}", self.describe());
        Ok(finding)
    }

    /// There is no finding at all; `expected` says why none is expected.
    pub fn expect_no_findings(&self, expected: &str) -> Result<()> {
        ensure!(self.findings.is_empty(), "{expected}:\n{}", self.describe());
        Ok(())
    }

    /// The findings of one kind (`conntrack_skip`, `dns_timeout`, ...).
    pub fn findings_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.findings.iter().filter(move |f| str_at(f, "/kind") == Some(kind))
    }

    /// `tracer report CAPTURE` states the findings this watch stated, writing `CAPTURE`.
    pub fn expect_report_agrees(&self, capture: &str) -> Result<()> {
        let out = crate::run_tracer(&["report", capture, "--output", "json"])?;
        let report = WatchJson::parse(&String::from_utf8_lossy(&out.stdout)).with_context(|| describe_output(&out))?;
        ensure!(
            report.findings == self.findings,
            "the report's findings differ from the watch's:\n{}\n---\n{}",
            report.describe(),
            self.describe()
        );
        Ok(())
    }

    /// One line per packet, then the findings and the summary, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s: String = self.packets.iter().map(|p| describe_packet(p) + "\n").collect();
        for f in &self.findings {
            s.push_str(&format!("{f}\n"));
        }
        s.push_str(&self.summary.to_string());
        s
    }
}

/// How a command should have ended.
#[derive(Clone, Copy, Debug)]
pub enum Exit {
    Success,
    /// Any end but exit 0: an error code or a signal.
    Failure,
    Code(i32),
}

impl Exit {
    fn fits(self, status: ExitStatus) -> bool {
        match self {
            Exit::Success => status.success(),
            Exit::Failure => !status.success(),
            Exit::Code(code) => status.code() == Some(code),
        }
    }
}

/// `out` ended as `exit` says; `expected` says what was expected, for the failure message.
pub fn expect_exit(out: &Output, exit: Exit, expected: &str) -> Result<()> {
    ensure!(exit.fits(out.status), "{expected}:\n{}", describe_output(out));
    Ok(())
}

/// `out` ended as `exit` says, and its stderr contains `says`.
pub fn expect_exit_saying(out: &Output, exit: Exit, says: &str, expected: &str) -> Result<()> {
    expect_exit(out, exit, expected)?;
    expect_stderr(out, says, expected)
}

/// `out`'s stderr contains `says`, however it ended.
pub fn expect_stderr(out: &Output, says: &str, expected: &str) -> Result<()> {
    ensure!(String::from_utf8_lossy(&out.stderr).contains(says), "{expected}:\n{}", describe_output(out));
    Ok(())
}

/// A finished command's status and output, for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The record is at `stage` on device `ifname`.
pub fn stage_is(p: &Value, stage: &str, ifname: &str) -> bool {
    str_at(p, "/stage") == Some(stage) && str_at(p, "/ifname") == Some(ifname)
}

/// The record carries DNS message `id` in direction `qr` (false: query, true: response).
pub fn dns_is(p: &Value, id: u16, qr: bool) -> bool {
    u64_at(p, "/dns/id") == Some(u64::from(id)) && bool_at(p, "/dns/qr") == Some(qr)
}

/// The string at `pointer` is `want`.
pub fn expect_str(v: &Value, pointer: &str, want: &str) -> Result<()> {
    let got = str_at(v, pointer);
    ensure!(got == Some(want), "{pointer}: expected {want:?}, got {got:?} in {v}");
    Ok(())
}

/// The number at `pointer` is `want`.
pub fn expect_u64(v: &Value, pointer: &str, want: u64) -> Result<()> {
    let got = u64_at(v, pointer);
    ensure!(got == Some(want), "{pointer}: expected {want}, got {got:?} in {v}");
    Ok(())
}

/// There is a non-empty string at `pointer` (a headline, an explanation...).
pub fn expect_text(v: &Value, pointer: &str) -> Result<()> {
    ensure!(str_at(v, pointer).is_some_and(|s| !s.is_empty()), "{pointer}: expected a text in {v}");
    Ok(())
}

/// A finding about the reply to query `id` that the lab's server sent across the bridge, in at
/// the server's port and out at the client's (`conntrack_skip`, `unexpected_reply_source`): whom
/// it was for, where it should have come from and where it came from.
pub fn expect_bridged_reply_finding(
    finding: &Value,
    id: u16,
    client: &str,
    expected_source: &str,
    actual_source: &str,
) -> Result<()> {
    expect_u64(finding, "/query/id", id.into())?;
    expect_str(finding, "/client", client)?;
    expect_str(finding, "/expected_source", expected_source)?;
    expect_str(finding, "/actual_source", actual_source)?;
    expect_str(finding, "/bridge", BRIDGE)?;
    expect_str(finding, "/reply_in_port", SERVER_VETH)?;
    expect_str(finding, "/reply_out_port", CLIENT_VETH)
}

/// The reply left the bridge towards `client` from `source` with no conntrack entry: bridged at
/// layer 2 as the server sent it, so nothing undid a DNAT on its way.
pub fn expect_reply_bridged_without_conntrack(reply_out: &Value, source: &str, client: &str) -> Result<()> {
    expect_str(reply_out, "/src", source)?;
    expect_str(reply_out, "/dst", client)?;
    ensure!(
        reply_out.get("conntrack") == Some(&Value::Null),
        "the bridged reply must have no conntrack entry: {reply_out}"
    );
    Ok(())
}

/// The commands of a finding's `fix`.
pub fn fix_lines(finding: &Value) -> Vec<&str> {
    finding["fix"].as_array().map(|fix| fix.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// A fix line that changes a firewall ruleset by hand (`iptables`, `ip6tables`, `nft`).
pub fn edits_firewall(line: &str) -> bool {
    line.starts_with("iptables") || line.starts_with("ip6tables") || line.starts_with("nft ")
}

/// tracer's stderr shows no Rust panic.
pub fn no_panic(stderr: &str) -> Result<()> {
    ensure!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "tracer panicked:\n{stderr}");
    Ok(())
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

pub fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

pub fn bool_at(v: &Value, pointer: &str) -> Option<bool> {
    v.pointer(pointer).and_then(Value::as_bool)
}

/// The port of an `"ip:port"` / `"[ipv6]:port"` address.
pub fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

/// The address part of an `"ip:port"` / `"[ipv6]:port"` address, without brackets.
pub fn ip_of(addr: &str) -> Option<&str> {
    let (ip, _) = addr.rsplit_once(':')?;
    Some(ip.strip_prefix('[').and_then(|ip| ip.strip_suffix(']')).unwrap_or(ip))
}

/// A compact summary of a packet record.
pub fn describe_packet(p: &Value) -> String {
    let s = |ptr| str_at(p, ptr).unwrap_or("-");
    let dns = match p.get("dns") {
        Some(d) if !d.is_null() => format!(
            "dns id={} qr={} {}",
            u64_at(d, "/id").map_or("-".into(), |v| v.to_string()),
            bool_at(d, "/qr").map_or("-".into(), |v| v.to_string()),
            str_at(d, "/qname").unwrap_or("-"),
        ),
        _ => "dns -".into(),
    };
    let ct = match p.get("conntrack") {
        Some(c) if !c.is_null() => format!("ct nat={}", str_at(c, "/nat").unwrap_or("-")),
        _ => "ct -".into(),
    };
    format!("{:<10} {:<12} {} {} -> {} {dns} {ct}", s("/stage"), s("/ifname"), s("/proto"), s("/src"), s("/dst"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(port_of("10.96.0.10:53"), Some(53));
        assert_eq!(ip_of("10.96.0.10:53"), Some("10.96.0.10"));
        assert_eq!(port_of("[fd00::5]:41234"), Some(41234));
        assert_eq!(ip_of("[fd00::5]:41234"), Some("fd00::5"));
        assert_eq!(port_of("nonsense"), None);
    }

    #[test]
    fn summary_must_come_last() {
        let ok = "{\"type\":\"packet\"}\n{\"type\":\"finding\",\"kind\":\"dns_timeout\"}\n\
                  {\"type\":\"summary\",\"packets\":1}\n";
        let parsed = WatchJson::parse(ok).map_err(|e| e.to_string());
        assert_eq!(parsed.as_ref().map(|w| w.packets.len()), Ok(1));
        assert_eq!(parsed.as_ref().map(|w| w.findings_of("dns_timeout").count()), Ok(1));
        assert!(WatchJson::parse("{\"type\":\"mystery\"}\n{\"type\":\"summary\"}\n").is_err());
        assert!(WatchJson::parse("{\"type\":\"packet\"}\n").is_err());
        assert!(WatchJson::parse("{\"type\":\"summary\"}\n{\"type\":\"packet\"}\n").is_err());
        assert!(WatchJson::parse("not json\n{\"type\":\"summary\"}\n").is_err());
    }
}
