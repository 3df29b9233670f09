//! `cargo xtask test`: setup, build tracer, run every test in the workspace against that build.

use std::process::ExitCode;

use anyhow::Result;

use crate::cmd::{self, phase};
use crate::setup;

pub fn run(cargo_test_args: &[String]) -> Result<ExitCode> {
    cmd::require_root("test")?;

    phase("test", "setup");
    setup::run()?;

    phase("test", "cargo build -p tracer");
    let tracer = cmd::build_tracer(false)?;

    phase(
        "test",
        &format!("cargo test --workspace (TRACER_BIN={})", tracer.display()),
    );
    let status = cmd::status(
        cmd::cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(cargo_test_args)
            .env("TRACER_BIN", &tracer),
        "`cargo test --workspace`",
    )?;
    phase(
        "test",
        if status.success() {
            "all tests passed"
        } else {
            "tests FAILED"
        },
    );
    Ok(cmd::exit_code(status))
}
