//! `cargo xtask test`: setup, lint (see [`lint`]), build tracer (the test build with fault
//! injection, and the release build, and the image of the release build), run every test in the
//! workspace against them, then a smoke run of the bench. With `--kernels 6.1,6.12`: the
//! end-to-end core inside each of those kernels instead (see [`kernels`]).

mod kernels;

use std::process::ExitCode;

use anyhow::Result;

use crate::bench;
use crate::cmd::{self, phase};
use crate::image;
use crate::lint;
use crate::setup;

pub fn run(args: &[String]) -> Result<ExitCode> {
    cmd::require_root("test")?;
    let (kernels, cargo_test_args) = kernels::split_args(args)?;

    phase("test", "setup");
    setup::run()?;

    // Before the builds, so that a slip the lint catches stops the run before the long builds
    // and tests, not after them.
    phase("test", "cargo xtask lint");
    lint::run()?;

    phase("test", "cargo build -p tracer --profile=checked --features=fault-injection");
    let tracer = cmd::build_tracer(cmd::Build::Test)?;
    // The build users run, for the test that it holds none of the test build's fault
    // injection.
    phase("test", "cargo build -p tracer --release");
    let release = cmd::build_tracer(cmd::Build::Release)?;
    if !kernels.is_empty() {
        kernels::run(&kernels, &tracer, &release)?;
        phase("test", "the end-to-end core passed on every kernel asked for");
        return Ok(ExitCode::SUCCESS);
    }
    // The image users run, for the test that imports it into containerd and runs it.
    let image = image::default_archive();
    image::build(&release, &image)?;

    phase(
        "test",
        &format!(
            "cargo test --workspace (TRACER_BIN={}, TRACER_RELEASE_BIN={}, TRACER_IMAGE={})",
            tracer.display(),
            release.display(),
            image.display()
        ),
    );
    let status = cmd::status(
        cmd::cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(&cargo_test_args)
            .env("TRACER_BIN", &tracer)
            .env("TRACER_RELEASE_BIN", &release)
            .env("TRACER_IMAGE", &image),
        "`cargo test --workspace`",
    )?;
    phase("test", if status.success() { "all tests passed" } else { "tests FAILED" });

    // The bench must keep working as tracer changes; its figures are not judged here (a debug
    // build on a shared machine says nothing about cost), only that it runs from end to end.
    phase("test", "bench smoke run (cargo xtask bench --smoke, with this test build)");
    let smoke = bench::smoke(&tracer);
    match &smoke {
        Ok(file) => phase("test", &format!("bench smoke run ok ({})", file.display())),
        Err(e) => phase("test", &format!("bench smoke run FAILED: {e:#}")),
    }
    if !status.success() {
        return Ok(cmd::exit_code(status));
    }
    smoke.map(|_| ExitCode::SUCCESS)
}
