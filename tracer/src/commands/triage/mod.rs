//! `tracer triage`: one command for the on-call engineer. Reads the node's state (in the
//! namespace tracer runs in and, from the initial namespace, in every namespace that holds
//! a bridge), watches the traced port's traffic for a while with the same kernel programs
//! as `watch`, reads the conntrack counters again, and prints the findings ranked by how
//! likely each explains broken traffic. Orchestration only: reading is in
//! `node::checks`, deciding in `findings::node_config`, printing in `sinks::triage`.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

mod traffic;

use self::traffic::Collector;
use crate::model::packet::PortFilter;
use crate::{
    commands::cli::{parse_duration, OutputFormat},
    commands::{agent::RuntimeArgs, watch::TracingArgs},
    engine::live::{self, Ending},
    findings::node_config,
    kernel::check_privileges,
    node::checks::{read_conntrack, read_namespace, visible_namespaces, ConntrackReading},
    sinks::triage::{print_json, print_text, ReportContext},
};

/// Check the node and watch its traffic for a while; report what breaks it, most likely cause first.
///
/// Node checks: bridge-nf-call-iptables/-ip6tables where bridges exist, ip_forward,
/// rp_filter, conntrack table usage and the counters that explain lost packets
/// (insert_failed, drop, early_drop), REJECT/DROP rules and DROP policies in
/// FORWARD/INPUT that stop the port, on every firewall backend. Traffic: the same
/// kernel programs as `watch`, for --duration seconds. Findings that the configuration
/// and the traffic both point at are merged.
///
/// Exit code: 0 healthy (no findings), 1 findings, 2 could not run.
///
/// Examples:
///   sudo tracer triage
///   sudo ip netns exec NODE tracer triage --port 53 --duration 10 --output json
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct TriageArgs {
    /// Port to check and trace, as source or destination, UDP and TCP. 0: every port.
    #[arg(long, default_value = "53")]
    pub port: PortFilter,

    /// How long to watch traffic, in seconds (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub duration: Duration,

    /// `text` for people (colour on a terminal), `json` for one JSON object per finding and
    /// a summary line (fields in README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    #[command(flatten)]
    pub tracing: TracingArgs,

    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Exit codes promised in the README.
const HEALTHY: u8 = 0;
const FINDINGS: u8 = 1;
const COULD_NOT_RUN: u8 = 2;

fn could_not_run(err: &anyhow::Error) -> ExitCode {
    crate::note_line!("tracer: error: {err:#}");
    ExitCode::from(COULD_NOT_RUN)
}

pub(crate) fn run(args: TriageArgs) -> ExitCode {
    // Before reading anything: without the privileges the watch cannot attach, and a report
    // of node checks alone would pass for a complete one.
    if let Err(err) = check_privileges().and_then(|()| args.tracing.enter_netns()) {
        return could_not_run(&err);
    }

    let (namespaces, mut errors) = visible_namespaces();
    let mut states = Vec::new();
    for netns in &namespaces {
        match read_namespace(netns) {
            Ok(Some(state)) => states.push(state),
            Ok(None) => {}
            // A namespace deleted since it was listed, or one tracer may not enter.
            Err(err) => errors.push(format!("{}: {err:#}", netns.label())),
        }
    }

    let mut collector = Collector::new(args.duration, std::io::stderr().is_terminal());
    // The watch's default snaplen: a finding's example shows whole DNS messages.
    // Findings-only: triage reports findings, and watches the busy nodes it is run on.
    let options = args.tracing.watch_options(args.port, 512, Some(args.duration), true);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return could_not_run(&anyhow::anyhow!(err).context("starting the event loop")),
    };
    // Traffic findings and their examples name the pods, when the node's runtime answers.
    let watched = args
        .runtime
        .named(Box::new(&mut collector))
        .and_then(|mut output| runtime.block_on(live::run(&options, output.as_mut())));
    let summary = match watched {
        Ok(Ending::Finished(summary)) => summary,
        // The collector never fails a write, so this does not happen; were it to, the
        // traffic part would be incomplete.
        Ok(Ending::OutputClosed(_) | Ending::OutputFailed(_)) => {
            return could_not_run(&anyhow::anyhow!("the traffic watch ended early"))
        }
        Err(err) => return could_not_run(&err),
    };

    // The second reading of the counters: what grew during the window is what the kernel
    // lost while we watched, not history since boot.
    let after: Vec<ConntrackReading> = states
        .iter()
        .map(|state| {
            read_conntrack(&state.netns).unwrap_or_else(|err| ConntrackReading {
                errors: vec![format!("second conntrack reading: {err:#}")],
                ..ConntrackReading::default()
            })
        })
        .collect();
    let drops_not_grouped = collector.drops_not_grouped;
    let (traffic, _) = collector.finish();
    let drops = traffic.drops.clone();
    let decision = node_config::decide(&states, &after, traffic, args.port, wall_clock_ns());
    let exit_code = if decision.findings.is_empty() { HEALTHY } else { FINDINGS };
    let context = ReportContext {
        port: args.port,
        summary: &summary,
        drops: &drops,
        drops_not_grouped,
        errors: &errors,
        exit_code,
    };

    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let printed = match args.output {
        OutputFormat::Text => print_text(&mut out, &decision, &context, colour),
        OutputFormat::Json => print_json(&mut out, &decision, &context),
    };
    match printed.and_then(|()| out.flush()) {
        // A reader that went away (`| head`) does not change what was found.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => could_not_run(&anyhow::anyhow!(
            "writing the report to standard output failed ({err}): write it to a file or pipe that has room"
        )),
        _ => ExitCode::from(exit_code),
    }
}

fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}
