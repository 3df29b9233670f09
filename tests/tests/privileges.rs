//! End-to-end: without a privilege tracer says which (README, "Safety"). As a user with only
//! CAP_NET_ADMIN, or only CAP_BPF and CAP_PERFMON, it refuses in one line that names exactly what
//! is missing; with the three of them it watches. Needs root (to hand out the capabilities) and a
//! built tracer.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tracer_tests::lab::*;
use tracer_tests::output::{describe_output, expect_exit_saying, Exit};
use tracer_tests::process::output_within;
use tracer_tests::unprivileged::{as_nobody, copy_of_tracer};

#[test]
fn missing_capabilities_are_named_in_one_line() -> Result<()> {
    let lab = Lab::new(LabConfig::healthy())?;
    let bin = copy_of_tracer(lab.dir())?;

    for (caps, missing, present) in [
        (&["net_admin"][..], &["CAP_BPF", "CAP_PERFMON"][..], &["CAP_NET_ADMIN"][..]),
        (&["bpf", "perfmon"][..], &["CAP_NET_ADMIN"][..], &["CAP_BPF", "CAP_PERFMON"][..]),
    ] {
        let out = watch_with_caps(&lab, &bin, caps, &["--port", "53"])?;
        let what = format!("non-root with only {caps:?}: {}", describe_output(&out));
        ensure!(!out.status.success() && out.status.code().is_some(), "{what}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(lines.len() == 1, "expected exactly one line on stderr: {what}");
        let named = lines[0]
            .split_once("missing")
            .map(|(_, rest)| rest)
            .with_context(|| format!("the line does not say what is missing: {what}"))?;
        for cap in missing {
            ensure!(named.contains(cap), "{cap} is not named as missing: {what}");
        }
        for cap in present {
            ensure!(!named.contains(cap), "{cap} is held but named as missing: {what}");
        }
        ensure!(!stderr.contains("panicked"), "{what}");
    }

    // The control: exactly these three capabilities are enough.
    let caps = ["net_admin", "bpf", "perfmon"];
    let out = watch_with_caps(&lab, &bin, &caps, &["--port", "53", "--duration", "1"])?;
    expect_exit_saying(&out, Exit::Success, TRACER_READY, &format!("non-root with {caps:?} should watch"))
}

/// Runs `BIN watch ARGS` in the node namespace as nobody with exactly `caps`. Killed after 20 s:
/// a tracer that wrongly watches would never end by itself.
fn watch_with_caps(lab: &Lab, bin: &Path, caps: &[&str], args: &[&str]) -> Result<Output> {
    let mut watch_args = vec!["watch"];
    watch_args.extend_from_slice(args);
    let argv = as_nobody(caps, bin, &watch_args)?;
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    output_within(lab.command(Ns::Node, &argv).current_dir("/"), Duration::from_secs(20))
}
