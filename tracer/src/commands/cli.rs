//! Command-line value types and parsers shared by the subcommands, so that `watch`,
//! `report` and `triage` accept and reject the same spellings with the same words.

use std::{process::ExitCode, time::Duration};

/// `--output`: `text` for people, `json` for JSON Lines.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    Text,
    Json,
}

/// `--output` of `watch`: also `none`, for an agent whose results are its metrics.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum WatchFormat {
    Text,
    Json,
    None,
}

/// A positive number of seconds, fractions allowed.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let secs: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err("the duration must be a positive number of seconds".to_string());
    }
    Duration::try_from_secs_f64(secs).map_err(|err| err.to_string())
}

/// A ring buffer size in MiB: the kernel wants a power of two.
pub(crate) fn parse_ring_mib(text: &str) -> Result<u32, String> {
    let mib: u32 = text.parse().map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    if !mib.is_power_of_two() || mib > 1024 {
        return Err("the ring buffer size must be a power of two from 1 to 1024 MiB".to_string());
    }
    Ok(mib)
}

/// The one line a command that cannot go on prints, and exit code 2.
pub(crate) fn fail(err: &anyhow::Error) -> ExitCode {
    crate::note_line!("tracer: error: {err:#}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_ring_sizes() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_ring_mib("8"), Ok(8));
        assert!(parse_ring_mib("6").is_err());
        assert!(parse_ring_mib("2048").is_err());
    }
}
