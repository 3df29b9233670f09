//! `--debug`: the kernel programs' reports of what should never happen (a kernel read
//! refused, a value outside what the kernel documents), printed on standard error as
//! `tracer: debug: kernel: ...`. Without `--debug` the programs' log level is 0 and they
//! report nothing.

use aya::Ebpf;
use aya_log::EbpfLogger;

/// The programs' log level: 0 switches every report off; with `--debug` all are on.
pub(crate) fn log_level(debug: bool) -> u8 {
    if debug {
        aya_log::Level::Trace as u8
    } else {
        0
    }
}

/// Prints the reports the programs queued; [`KernelReports::flush`] reads them.
pub(crate) struct KernelReports {
    logger: EbpfLogger<StderrLog>,
}

impl KernelReports {
    /// Takes the programs' report buffer out of `ebpf`. Call it after every program that
    /// writes to the buffer is loaded: loaders that relocate against `ebpf`'s maps need it.
    pub(crate) fn take(ebpf: &mut Ebpf) -> anyhow::Result<KernelReports> {
        let logger = EbpfLogger::init_with_logger(ebpf, StderrLog)
            .map_err(|err| anyhow::anyhow!("reading the kernel programs' reports (--debug): {err}: rebuild tracer"))?;
        Ok(KernelReports { logger })
    }

    /// Prints every report queued so far.
    pub(crate) fn flush(&mut self) {
        self.logger.flush();
    }
}

/// A `log` sink for the kernel's reports only: one line each on standard error.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        crate::note_line!("tracer: debug: kernel: {}", record.args());
    }

    fn flush(&self) {}
}
