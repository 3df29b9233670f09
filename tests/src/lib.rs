//! Test support for tracer: a network-namespace lab that reproduces a Kubernetes node's DNS path
//! ([`lab`]), a node whose pods containerd runs through the CRI ([`node`]) and the OCI images it
//! imports ([`oci`]), the processes started in it ([`process`]), one watch around some traffic
//! ([`scenario`]), reading `tracer watch` output ([`output`]), building packets by hand
//! ([`packets`]), the firewall as text ([`firewall`]), generated rulesets loaded into a lab and read
//! back ([`ruleset`]), the rules kube-proxy and NodeLocal DNSCache leave on a node, at any cluster
//! size ([`kube_proxy`]), the rules other owners of a node's firewall write (Calico, kube-router,
//! firewalld, Docker: [`managers`]) and running tracer without privileges ([`unprivileged`]).
//!
//! Everything here needs root: it creates network namespaces, runs dnsmasq and changes iptables rules
//! inside those namespaces (never on the host).

pub mod dnsperf;
pub mod firewall;
pub mod kube_proxy;
pub mod lab;
pub mod managers;
pub mod netns;
pub mod node;
pub mod oci;
pub mod output;
pub mod packets;
pub mod process;
pub mod ruleset;
pub mod scenario;
pub mod unprivileged;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// One `#[test]` per case, each calling `check` with the case's arguments: a table of cases
/// that are still run and reported one by one.
///
/// ```ignore
/// tracer_tests::cases!(stops_on_signal => {
///     sigterm_stops_watch: (libc::SIGTERM),
///     sigint_stops_watch: (libc::SIGINT),
/// });
/// ```
#[macro_export]
macro_rules! cases {
    ($check:ident => { $($(#[$doc:meta])* $name:ident: ($($arg:expr),* $(,)?)),+ $(,)? }) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() -> anyhow::Result<()> {
                $check($($arg),*)
            }
        )+
    };
}

/// The tracer binary under test: `$TRACER_BIN`, else the workspace's test build
/// (`cargo build -p tracer --profile checked --features fault-injection`).
pub fn tracer_bin() -> Result<PathBuf> {
    let path = match std::env::var_os("TRACER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/checked/tracer"),
    };
    if !path.is_file() {
        bail!(
            "tracer binary not found at {}: build it with `cargo build -p tracer --profile checked \
             --features fault-injection` (`cargo xtask test` does this) or point TRACER_BIN at it",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `tracer ARGS` to completion in the test's own namespace, for what needs no lab
/// (`report` of a file) or looks at all of them (`triage` from the host).
pub fn run_tracer(args: &[&str]) -> Result<Output> {
    let bin = tracer_bin()?;
    Command::new(&bin).args(args).output().with_context(|| format!("running {} {}", bin.display(), args.join(" ")))
}

/// The workspace this crate was compiled in. The tests run from the same checkout, so the
/// compile-time path is the right one even when the current directory is not.
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

/// Whether tracer can read payloads in page fragments on this kernel: its /proc/kallsyms
/// gives the addresses of the direct map's and the page array's bases (kernels built with
/// `CONFIG_KALLSYMS_ALL`, as distro kernels are). The tests expect tracer to agree.
pub fn kernel_reads_page_fragments() -> bool {
    let Ok(symbols) = std::fs::read_to_string("/proc/kallsyms") else { return false };
    ["page_offset_base", "vmemmap_base"].iter().all(|wanted| {
        symbols.lines().any(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            fields.len() == 3 && fields[2] == *wanted && !fields[0].trim_start_matches('0').is_empty()
        })
    })
}

/// The blind spots a watch on this kernel states: `first` (those tracer names before page
/// fragments: netfilter verdicts, drop reasons), page fragments where this kernel hides
/// them, then `rest` (conntrack tuples, answered replies), in tracer's order.
pub fn expected_blind_spots<'a>(first: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut spots = first.to_vec();
    if !kernel_reads_page_fragments() {
        spots.push("page_fragment_payloads");
    }
    spots.extend_from_slice(rest);
    spots
}
