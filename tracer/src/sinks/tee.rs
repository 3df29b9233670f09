//! The watch's main sink with a capture file written beside it.

use std::{cell::OnceCell, io, rc::Rc};

use crate::schema::{
    blind_spot::BlindSpot,
    finding::{Finding, Unconfirmed},
    packet::{DropLine, TracedPacket},
    sink::Sink,
    summary::{Evictions, Summary},
};

/// The watch's main output (text or JSON on standard output) with a capture file
/// written beside it. The main output's errors end the watch as before; the capture's
/// first I/O error (a full disk, a lost mount) stops the capture with one warning on
/// standard error, and the watch goes on; the failure is kept for the exit code
/// ([`Tee::capture_failure`]).
pub(crate) struct Tee<'a> {
    main: Box<dyn Sink + 'a>,
    capture: Option<Box<dyn Sink + 'a>>,
    /// Names the capture in the warning, e.g. its path.
    capture_name: String,
    /// The warning printed, if any (tests read it).
    pub warning: Option<String>,
    /// Why the capture stopped, set once; shared with whoever decides the exit code.
    failure: Rc<OnceCell<String>>,
}

impl<'a> Tee<'a> {
    pub(crate) fn new(main: Box<dyn Sink + 'a>, capture: Option<(Box<dyn Sink + 'a>, String)>) -> Tee<'a> {
        let (capture, capture_name) = match capture {
            Some((capture, name)) => (Some(capture), name),
            None => (None, String::new()),
        };
        Tee { main, capture, capture_name, warning: None, failure: Rc::new(OnceCell::new()) }
    }

    /// Set when the capture stopped early, with the error: the watch then ran to its end
    /// but its capture holds less than it saw.
    pub(crate) fn capture_failure(&self) -> Rc<OnceCell<String>> {
        Rc::clone(&self.failure)
    }

    /// Runs `write` on the capture, then on the main output, whose result is the call's: a
    /// capture that fails only stops the capture.
    fn write_both(&mut self, write: impl Fn(&mut dyn Sink) -> io::Result<()>) -> io::Result<()> {
        self.on_capture(&write);
        write(self.main.as_mut())
    }

    /// Runs `write` on the capture; on its first error warns once and drops it.
    fn on_capture(&mut self, write: impl FnOnce(&mut dyn Sink) -> io::Result<()>) {
        let Some(capture) = self.capture.as_mut() else { return };
        if let Err(err) = write(capture.as_mut()) {
            let warning = format!(
                "tracer: warning: writing {} failed ({err}): the capture stops here and keeps what was written before; the watch goes on",
                self.capture_name
            );
            crate::note_line!("{warning}");
            self.warning = Some(warning);
            let _ = self.failure.set(err.to_string());
            self.capture = None;
        }
    }
}

impl Sink for Tee<'_> {
    fn packet(&mut self, packet: &TracedPacket) -> io::Result<()> {
        self.write_both(|output| output.packet(packet))
    }

    fn dropped(&mut self, line: &DropLine) -> io::Result<()> {
        self.write_both(|output| output.dropped(line))
    }

    fn finding(&mut self, finding: &Finding) -> io::Result<()> {
        self.write_both(|output| output.finding(finding))
    }

    fn unconfirmed(&mut self, unconfirmed: &Unconfirmed) -> io::Result<()> {
        self.write_both(|output| output.unconfirmed(unconfirmed))
    }

    fn repeated(&mut self, finding: &Finding, times: u64) -> io::Result<()> {
        // The capture names the owner of the rule on each repeated drop's comment.
        self.write_both(|output| output.repeated(finding, times))
    }

    fn lost(&mut self, total: u64) {
        self.main.lost(total);
    }

    fn evictions(&mut self, so_far: &Evictions) {
        self.main.evictions(so_far);
    }

    fn blind_spots(&mut self, spots: &[BlindSpot]) {
        self.main.blind_spots(spots);
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.write_both(|output| output.summary(summary))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_both(|output| output.flush())
    }
}
