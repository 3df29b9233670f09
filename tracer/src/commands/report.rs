//! `tracer report FILE`: its arguments, and the wiring of a report: the capture opened by
//! the replay source (`engine::replay`), printed by the text, JSON or listing sink.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use crate::{
    analysis::pods::PodNames,
    commands::cli::{fail, OutputFormat},
    engine::replay::{reader::Origin, Ending, Report},
    schema::sink::Sink,
    sinks::{json::JsonOutput, listing::Listing, text::TextOutput},
};

#[derive(clap::Args)]
pub(crate) struct ReportArgs {
    /// The capture file.
    pub file: PathBuf,

    /// `text` for people (colour on a terminal), `json` for JSON Lines (fields in README).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// `tracer report`: the capture read back and printed, and the exit code.
pub(crate) fn command(args: ReportArgs) -> ExitCode {
    let report = match Report::open(&args.file) {
        Ok(report) => report,
        Err(err) => return fail(&anyhow::anyhow!(err)),
    };
    let stdout = std::io::stdout();
    let json = matches!(args.output, OutputFormat::Json);
    let ending = match report.origin().clone() {
        Origin::Tracer(meta) => {
            let host = meta.hostname.map(|h| format!(" on {h}")).unwrap_or_default();
            crate::note_line!(
                "tracer: report of {}: a tracer {} watch{host}",
                args.file.display(),
                meta.tracer_version
            );
            let printer: Box<dyn Sink> = if json {
                Box::new(JsonOutput::new(std::io::BufWriter::new(stdout.lock())))
            } else {
                Box::new(TextOutput::new(stdout.lock(), stdout.is_terminal()))
            };
            // Findings made again from the packets name the pods the packets recorded.
            report.run(&mut PodNames::recorded(printer))
        }
        Origin::Other { application, pcap } => {
            let writer = match (pcap, application) {
                (true, _) => "a pcap file".to_string(),
                (false, Some(app)) => format!("a pcapng file written by {app}"),
                (false, None) => "a pcapng file not written by tracer".to_string(),
            };
            crate::note_line!(
                "tracer: {} is {writer}: listing its packets without stages, hook paths or findings (those need a capture from `tracer watch --write`)",
                args.file.display()
            );
            report.list(&mut Listing::new(std::io::BufWriter::new(stdout.lock()), json))
        }
    };
    match ending {
        Ending::OutputFailed(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Ending::OutputFailed(err) => {
            fail(&anyhow::anyhow!("writing to standard output failed ({err}): the report stopped"))
        }
        Ending::Finished { error, notes, .. } => {
            for note in notes {
                crate::note_line!("tracer: note: {note}");
            }
            match error {
                Some(err) => {
                    crate::note_line!("tracer: error: {err}");
                    ExitCode::from(1)
                }
                None => ExitCode::SUCCESS,
            }
        }
    }
}
