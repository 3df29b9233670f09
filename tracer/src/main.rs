use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use tracer::{
    analysis::AnalysisOptions,
    cli::{parse_duration, parse_ring_mib, OutputFormat},
    events::{
        node::{bridge_nf_call_sysctl, read_sysctl},
        pcapng::{CaptureMeta, Origin, FORMAT},
    },
    hooks::{check_privileges, WatchSettings},
    outputs::{
        capture_file::CaptureFile,
        json::JsonOutput,
        listing::Listing,
        pcapng::{CaptureInfo, PcapngWriter},
        text::TextOutput,
        Output, Tee,
    },
    report::{self, Report},
    watch::{self, Ending, WatchOptions},
};

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
    /// Watches the network namespace tracer runs in; for a node that lives in a
    /// namespace use `ip netns exec NODE tracer watch ...`. Stops on Ctrl-C, SIGTERM
    /// or after --duration, and then prints a summary with the number of records the
    /// kernel could not deliver (`lost`).
    ///
    /// Examples:
    ///   sudo tracer watch --port 53
    ///   sudo tracer watch --port 53 --output json --duration 10 > dns.jsonl
    ///   sudo tracer watch --port 53 --write dns.pcapng
    #[command(verbatim_doc_comment)]
    Watch(WatchArgs),

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
    Report(ReportArgs),

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
    Triage(tracer::triage::TriageArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The capture file.
    file: PathBuf,

    /// `text` for people (colour on a terminal), `json` for JSON Lines (fields in README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Port to trace, as source or destination, UDP and TCP. 0 traces every port.
    #[arg(long, default_value_t = 53)]
    port: u16,

    /// `text` for people (colour on a terminal), `json` for JSON Lines (fields in README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    /// Stop by itself after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Bytes of each packet copied in the kernel, from the Ethernet header on.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=512))]
    snaplen: u32,

    /// A DNS query with no reply after this many seconds is reported as `dns_timeout`.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    dns_timeout: Duration,

    /// Also read payloads to or from this port as DNS (port 53 always is; nothing else is
    /// taken for DNS). Repeat for more ports, e.g. --dns-port 5353 --dns-port 1053.
    #[arg(long = "dns-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    dns_ports: Vec<u16>,

    /// Size of the kernel-to-tracer ring buffer in MiB (a power of two). Raise it when
    /// the summary reports lost records.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    ring_buffer_mib: u32,

    /// Also write every traced packet to FILE as pcapng (mode 0600), with a comment per
    /// packet and the findings; read it with `tracer report FILE`, Wireshark or tshark.
    /// FILE must not exist (see --force); links, FIFOs and devices are refused.
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,

    /// With --write: replace FILE if it is an earlier capture of yours (a regular file you
    /// own, with no other name). The new capture is written beside it and takes its name
    /// only when the watch ends, so a watch that fails to start keeps the old one.
    #[arg(long, requires = "write")]
    force: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Watch(args) => run_watch(args),
        Command::Report(args) => run_report(args),
        Command::Triage(args) => tracer::triage::run(args),
    }
}

fn run_watch(args: WatchArgs) -> ExitCode {
    let options = WatchOptions {
        settings: WatchSettings { port: args.port, snaplen: args.snaplen, ring_buffer_bytes: args.ring_buffer_mib << 20 },
        duration: args.duration,
        analysis: AnalysisOptions { dns_timeout: args.dns_timeout, dns_ports: args.dns_ports.clone() },
    };
    // The capture file is created before anything is attached, so a path that cannot
    // be written is reported at once; and after the privileges are checked, so a watch
    // that cannot start creates nothing.
    if args.write.is_some() {
        if let Err(err) = check_privileges() {
            return fail(&err);
        }
    }
    let mut capture_file = None;
    let capture = match &args.write {
        Some(path) => {
            let (file, handle) = match CaptureFile::create(path, args.force) {
                Ok(created) => created,
                Err(refused) => return fail(&anyhow::anyhow!(refused)),
            };
            let writer = match PcapngWriter::to_file(handle, &capture_info(&args)) {
                Ok(writer) => writer,
                Err(err) => {
                    file.abandon();
                    return fail(&anyhow::anyhow!("cannot write the capture to {}: {err}", path.display()));
                }
            };
            match file.temporary() {
                Some(temporary) => eprintln!(
                    "tracer: writing the traced packets to {} (pcapng, mode 0600); it replaces {} when the watch ends",
                    temporary.display(),
                    path.display()
                ),
                None => eprintln!("tracer: writing the traced packets to {} (pcapng, mode 0600)", path.display()),
            }
            capture_file = Some(file);
            Some((Box::new(writer) as Box<dyn Output>, path.display().to_string()))
        }
        None => None,
    };
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    let main: Box<dyn Output> = match args.output {
        OutputFormat::Text => Box::new(TextOutput::new(stdout.lock(), colour)),
        OutputFormat::Json => Box::new(JsonOutput::new(std::io::BufWriter::new(stdout.lock()))),
    };
    let mut output = Tee::new(main, capture);
    let ended = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(watch::run(&options, &mut output)),
        Err(err) => Err(anyhow::anyhow!(err).context("starting the event loop")),
    };
    // Flushes and closes the capture before it is synced and named.
    drop(output);
    let ending = match ended {
        Ok(ending) => ending,
        Err(err) => {
            // Nothing was traced: what the watch created goes, an earlier capture stays.
            if let Some(file) = capture_file {
                file.abandon();
            }
            return fail(&err);
        }
    };
    if let Some(file) = capture_file {
        let path = args.write.as_deref().unwrap_or(Path::new("-"));
        if let Err(err) = file.finish() {
            return fail(&anyhow::anyhow!("finishing the capture {} failed: {err}; what was written may be incomplete", path.display()));
        }
    }
    match ending {
        Ending::Finished(_) => ExitCode::SUCCESS,
        // `| head`: the reader has what it wanted. The summary goes to the terminal instead.
        Ending::OutputClosed(summary) => {
            let _ = TextOutput::new(std::io::stderr().lock(), false).summary(&summary);
            ExitCode::SUCCESS
        }
        Ending::OutputFailed { error, .. } => {
            fail(&anyhow::anyhow!("writing to standard output failed ({error}): the watch stopped; write to a file or pipe that has room"))
        }
    }
}

/// What the capture's section header records: how the watch runs and the node
/// settings findings cite, as they are now.
fn capture_info(args: &WatchArgs) -> CaptureInfo {
    let sysctls: BTreeMap<String, Option<String>> = [bridge_nf_call_sysctl(false), bridge_nf_call_sysctl(true)]
        .into_iter()
        .map(|name| (name.to_string(), read_sysctl(name).value))
        .collect();
    CaptureInfo {
        meta: CaptureMeta {
            format: FORMAT.to_string(),
            tracer_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: read_sysctl("kernel.hostname").value,
            port: args.port,
            snaplen: args.snaplen,
            dns_timeout_ns: args.dns_timeout.as_nanos() as u64,
            dns_ports: args.dns_ports.clone(),
            sysctls,
        },
        os: read_sysctl("kernel.osrelease").value.map(|release| format!("Linux {release}")),
    }
}

fn run_report(args: ReportArgs) -> ExitCode {
    let report = match Report::open(&args.file) {
        Ok(report) => report,
        Err(err) => return fail(&anyhow::anyhow!(err)),
    };
    let stdout = std::io::stdout();
    let json = matches!(args.output, OutputFormat::Json);
    let ending = match report.origin().clone() {
        Origin::Tracer(meta) => {
            let host = meta.hostname.map(|h| format!(" on {h}")).unwrap_or_default();
            eprintln!("tracer: report of {}: a tracer {} watch{host}", args.file.display(), meta.tracer_version);
            let mut output: Box<dyn Output> = if json {
                Box::new(JsonOutput::new(std::io::BufWriter::new(stdout.lock())))
            } else {
                Box::new(TextOutput::new(stdout.lock(), stdout.is_terminal()))
            };
            report.run(output.as_mut())
        }
        Origin::Other { application, pcap } => {
            let writer = match (pcap, application) {
                (true, _) => "a pcap file".to_string(),
                (false, Some(app)) => format!("a pcapng file written by {app}"),
                (false, None) => "a pcapng file not written by tracer".to_string(),
            };
            eprintln!(
                "tracer: {} is {writer}: listing its packets without stages, hook paths or findings (those need a capture from `tracer watch --write`)",
                args.file.display()
            );
            report.list(&mut Listing::new(std::io::BufWriter::new(stdout.lock()), json))
        }
    };
    match ending {
        report::Ending::OutputFailed(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        report::Ending::OutputFailed(err) => fail(&anyhow::anyhow!("writing to standard output failed ({err}): the report stopped")),
        report::Ending::Finished { error, notes, .. } => {
            for note in notes {
                eprintln!("tracer: note: {note}");
            }
            match error {
                Some(err) => {
                    eprintln!("tracer: error: {err}");
                    ExitCode::from(1)
                }
                None => ExitCode::SUCCESS,
            }
        }
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("tracer: error: {err:#}");
    ExitCode::from(2)
}
