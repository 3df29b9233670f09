//! The command line: the subcommands' arguments and their wiring (which source, which
//! sinks, which exit code). What runs is in `engine`, what prints in `sinks`.

pub(crate) mod agent;
pub(crate) mod cli;
pub(crate) mod report;
pub(crate) mod triage;
pub(crate) mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Live network diagnostics for Linux nodes.
///
/// tracer follows packets through the node's Linux bridges — which port they came in
/// on, where they left, whether conntrack saw them and what NAT did to them — using
/// eBPF programs that only observe: traffic and firewall are never changed, and
/// everything attached is released when tracer exits.
#[derive(Parser)]
#[command(name = "tracer", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show every packet to or from a port as it crosses the node's Linux bridges.
    ///
    /// Watches the network namespace tracer runs in, or the one --netns names. On a
    /// Kubernetes node, addresses are shown with their pods (namespace/name), read from
    /// the container runtime's CRI socket. Stops on Ctrl-C, SIGTERM or after --duration,
    /// and then prints a summary with the number of records the kernel could not
    /// deliver (`lost`).
    ///
    /// Examples:
    ///   sudo tracer watch --port 53
    ///   sudo tracer watch --port 53 --output json --duration 10 > dns.jsonl
    ///   sudo tracer watch --port 53 --write dns.pcapng
    ///   sudo tracer watch --netns NODE --namespace kube-system
    ///   sudo tracer watch --pod default/client-7c9f --pod kube-system/coredns-5d78c9869d-6kx2p
    ///   sudo tracer watch --output none --metrics 0.0.0.0:9742      # an agent for Prometheus
    #[command(verbatim_doc_comment)]
    Watch(watch::WatchArgs),

    /// Show a capture written by `tracer watch --write` as the watch showed it.
    ///
    /// Prints the same packet lines and findings (made again from the packets and the
    /// metadata in the file) and the summary; needs no privileges and no access to the
    /// node that captured. A pcapng or pcap file from another program gets a plain
    /// packet listing. Exits 1 when the file is cut off or damaged (what could be read
    /// is shown), 2 when it cannot be read at all.
    ///
    /// Examples:
    ///   tracer report dns.pcapng
    ///   tracer report dns.pcapng --output json | jq 'select(.type == "finding")'
    #[command(verbatim_doc_comment)]
    Report(report::ReportArgs),

    /// One-shot incident triage: node checks plus traffic, findings ranked.
    ///
    /// Checks the node's configuration (bridge-nf-call-iptables where bridges exist,
    /// ip_forward, rp_filter, conntrack table and statistics, REJECT/DROP rules and
    /// DROP policies for the port on every firewall backend), watches the port's
    /// traffic for --duration seconds with the same kernel programs as `watch`, and
    /// prints the findings ranked by how likely they explain broken traffic, with
    /// evidence and fix commands, a one-line verdict first. Config and traffic
    /// findings that point at the same cause are merged.
    ///
    /// Exit code: 0 healthy, 1 findings, 2 could not run.
    ///
    /// Examples:
    ///   sudo tracer triage
    ///   sudo ip netns exec NODE tracer triage --port 53 --duration 20 --output json
    #[command(verbatim_doc_comment)]
    Triage(triage::TriageArgs),
}

/// The `tracer` binary: parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Watch(args) => watch::command(args),
        Command::Report(args) => report::command(args),
        Command::Triage(args) => triage::run(args),
    }
}
