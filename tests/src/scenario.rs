//! One watch of a lab, the shape of most end-to-end tests: start `tracer watch` with the arguments
//! the test needs, make traffic while it watches, end it, and read what it printed.
//!
//! ```no_run
//! # use tracer_tests::{lab::*, scenario::*};
//! # fn f() -> anyhow::Result<()> {
//! let lab = Lab::new(LabConfig::healthy())?;
//! let (w, dig) = Scenario::new(&lab).run(|| lab.dig(CLUSTER_DNS_IP, TEST_NAME, &[]))?;
//! w.reply_to_client(dig.query_id()?)?;
//! # Ok(()) }
//! ```

use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::lab::{Lab, StdoutMode, STOP_GRACE};
use crate::output::WatchJson;
use crate::process::{Finished, Process};

/// How long a [`Scenario::settled`] watch goes on after its traffic: enough for tracer to read
/// and print the records of the last packets before it is stopped.
pub const RECORDS_PRINTED: Duration = Duration::from_millis(200);

/// A watch to run: `tracer watch --port 53 --output json` in the lab's node namespace unless
/// told otherwise, stopped with SIGTERM as soon as the traffic is made.
pub struct Scenario<'lab> {
    lab: &'lab Lab,
    port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdout: StdoutMode,
    settle: Duration,
    end: End,
}

/// How a [`Scenario`]'s watch ends once its traffic is made.
#[derive(Clone, Copy, Debug)]
enum End {
    /// This signal, after the settle time; tracer gets [`STOP_GRACE`] to exit.
    Signal(libc::c_int),
    /// tracer ends by itself (`--duration`); it is stopped if it is still running at this
    /// deadline ([`Finished::timed_out`]).
    ByItselfWithin(Duration),
}

impl<'lab> Scenario<'lab> {
    pub fn new(lab: &'lab Lab) -> Scenario<'lab> {
        Scenario {
            lab,
            port: 53,
            args: Vec::new(),
            env: Vec::new(),
            stdout: StdoutMode::Capture,
            settle: Duration::ZERO,
            end: End::Signal(libc::SIGTERM),
        }
    }

    /// A watch that goes on for [`RECORDS_PRINTED`] after its traffic before it is stopped.
    pub fn settled(lab: &'lab Lab) -> Scenario<'lab> {
        Scenario::new(lab).settle(RECORDS_PRINTED)
    }

    /// `--port PORT` instead of 53 (0: every port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// More arguments, after `--port` and `--output`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for tracer (e.g. `TRACER_FAULT`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Packet lines are counted ([`Finished::packet_lines`]), not kept: for floods.
    pub fn count_packets(mut self) -> Self {
        self.stdout = StdoutMode::CountPackets;
        self
    }

    /// How long tracer goes on watching after the traffic before it is signalled, e.g. for its
    /// records to be printed or a timeout to pass.
    pub fn settle(mut self, time: Duration) -> Self {
        self.settle = time;
        self
    }

    /// Ends the watch with `signal` instead of SIGTERM.
    pub fn stop_with(mut self, signal: libc::c_int) -> Self {
        self.end = End::Signal(signal);
        self
    }

    /// The watch ends by itself (the test gives `--duration`); waits up to `deadline` for that.
    pub fn ends_by_itself_within(mut self, deadline: Duration) -> Self {
        self.end = End::ByItselfWithin(deadline);
        self
    }

    /// Starts the JSON watch without waiting for it to attach, for tests that follow the
    /// attaching itself.
    pub fn spawn(&self) -> Result<Process<'lab>> {
        self.spawn_with_output(true)
    }

    /// Starts the JSON watch and returns once it is watching, for tests that act on the process
    /// while it runs (stop it, watch its stderr).
    pub fn start(&self) -> Result<Process<'lab>> {
        let mut watch = self.spawn()?;
        watch.wait_until_watching()?;
        Ok(watch)
    }

    /// Runs the JSON watch around `traffic`; returns what tracer printed, which must be complete
    /// and from a tracer that exited 0, and what `traffic` returned.
    pub fn run<T>(self, traffic: impl FnOnce() -> Result<T>) -> Result<(WatchJson, T)> {
        let (json, _, traffic) = self.run_finished(traffic)?;
        Ok((json, traffic))
    }

    /// Like [`Scenario::run`], and also how tracer ended (its stderr, whether it had to be
    /// stopped).
    pub fn run_finished<T>(self, traffic: impl FnOnce() -> Result<T>) -> Result<(WatchJson, Finished, T)> {
        let (done, traffic) = self.watch_around(true, traffic)?;
        let json = WatchJson::from_finished(&done)?;
        Ok((json, done, traffic))
    }

    /// Runs the JSON watch around `traffic` whatever its exit: for tests of a watch that
    /// runs to its end and then fails.
    pub fn run_json_any_exit<T>(self, traffic: impl FnOnce() -> Result<T>) -> Result<(Finished, T)> {
        self.watch_around(true, traffic)
    }

    /// Runs the watch with tracer's text output around `traffic`; its output is the test's to
    /// read.
    pub fn run_text<T>(self, traffic: impl FnOnce() -> Result<T>) -> Result<(Finished, T)> {
        self.watch_around(false, traffic)
    }

    fn spawn_with_output(&self, json: bool) -> Result<Process<'lab>> {
        let port = self.port.to_string();
        let mut args = vec!["watch", "--port", &port];
        if json {
            args.extend(["--output", "json"]);
        }
        args.extend(self.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.lab.spawn_tracer(&args, &env, self.stdout)
    }

    fn watch_around<T>(self, json: bool, traffic: impl FnOnce() -> Result<T>) -> Result<(Finished, T)> {
        let mut watch = self.spawn_with_output(json)?;
        watch.wait_until_watching()?;
        let traffic = traffic().with_context(|| {
            format!("making traffic while tracer watched; its stderr so far:\n{}", watch.stderr_so_far())
        })?;
        let done = match self.end {
            End::Signal(signal) => {
                thread::sleep(self.settle);
                watch.signal(signal)?;
                watch.finish(STOP_GRACE)?
            }
            End::ByItselfWithin(deadline) => watch.finish(deadline)?,
        };
        Ok((done, traffic))
    }
}
