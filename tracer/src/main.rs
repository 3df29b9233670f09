use std::{io::IsTerminal, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use tracer::{
    hooks::WatchSettings,
    outputs::{json::JsonOutput, text::TextOutput, Output},
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
    #[command(verbatim_doc_comment)]
    Watch(WatchArgs),
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Port to trace, as source or destination, UDP and TCP. 0 traces every port.
    #[arg(long, default_value_t = 53)]
    port: u16,

    /// `text` for people (colour on a terminal), `json` for JSON Lines (fields in README).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,

    /// Stop by itself after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Bytes of each packet copied in the kernel, from the Ethernet header on.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..=512))]
    snaplen: u32,

    /// A DNS query with no reply after this many seconds is reported as `dns_timeout`.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    dns_timeout: Duration,

    /// Size of the kernel-to-tracer ring buffer in MiB (a power of two). Raise it when
    /// the summary reports lost records.
    #[arg(long, value_name = "MIB", default_value_t = 8, value_parser = parse_ring_mib)]
    ring_buffer_mib: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("the duration must be a positive number of seconds".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|err| err.to_string())
}

fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text.parse().map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err("the ring buffer size must be a power of two from 1 to 1024 MiB".to_string());
    }
    Ok(mib)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Watch(args) => run_watch(args),
    }
}

fn run_watch(args: WatchArgs) -> ExitCode {
    let options = WatchOptions {
        settings: WatchSettings { port: args.port, snaplen: args.snaplen, ring_buffer_bytes: args.ring_buffer_mib << 20 },
        duration: args.duration,
        dns_timeout: args.dns_timeout,
    };
    let stdout = std::io::stdout();
    let colour = stdout.is_terminal();
    let mut output: Box<dyn Output> = match args.output {
        Format::Text => Box::new(TextOutput::new(stdout.lock(), colour)),
        Format::Json => Box::new(JsonOutput::new(std::io::BufWriter::new(stdout.lock()))),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::anyhow!(err).context("starting the event loop")),
    };
    match runtime.block_on(watch::run(&options, output.as_mut())) {
        Ok(Ending::Finished(_)) | Ok(Ending::OutputClosed) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("tracer: error: {err:#}");
    ExitCode::from(2)
}
