//! `cargo xtask lint`: the checks a change passes before any test runs, in order: the
//! formatting, clippy with warnings denied on the userspace crates (host) and on the kernel
//! programs (their BPF target), and the layering of tracer/src (see [`layers`]). The first
//! that fails ends the task with one line saying what to run or change.

mod layers;
mod scan;

use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd::{self, phase, probe};

const FMT: &[&str] = &["fmt", "--all", "--check"];

/// On the host, tracer-ebpf is a placeholder (every program module is
/// `cfg(target_arch = "bpf")`), so clippy there sees an empty `main` and passes whatever
/// the programs hold: they are checked for their own target by [`ebpf_clippy`] instead.
const CLIPPY: &[&str] = &["clippy", "--workspace", "--exclude", "tracer-ebpf", "--all-targets", "--", "-D", "warnings"];

/// A rustup component the lint runs: how to tell it is there, and the rustup arguments that
/// add it. The nightly comes with the minimal profile, which has neither rustfmt nor clippy.
pub struct Component {
    pub what: &'static str,
    probe: fn() -> Command,
    pub add: &'static [&'static str],
}

pub const COMPONENTS: [Component; 3] = [
    Component { what: "rustfmt", probe: || cargo_with(&["fmt", "--version"]), add: &["component", "add", "rustfmt"] },
    Component { what: "clippy", probe: || cargo_with(&["clippy", "--version"]), add: &["component", "add", "clippy"] },
    Component {
        what: "clippy for the nightly toolchain",
        probe: || {
            let mut command = Command::new("rustup");
            command.args(["run", "nightly", "cargo", "clippy", "--version"]);
            command
        },
        add: &["component", "add", "clippy", "--toolchain", "nightly"],
    },
];

impl Component {
    pub fn installed(&self) -> bool {
        probe(&mut (self.probe)()).is_some()
    }

    pub fn add_command(&self) -> String {
        format!("rustup {}", self.add.join(" "))
    }
}

fn cargo_with(args: &[&str]) -> Command {
    let mut command = cmd::cargo();
    command.args(args);
    command
}

pub fn run() -> Result<()> {
    if let Some(missing) = COMPONENTS.iter().find(|c| !c.installed()) {
        bail!("{} is not installed: run `{}` (`cargo xtask setup` does)", missing.what, missing.add_command());
    }

    phase("lint", &format!("cargo {}", FMT.join(" ")));
    if !cmd::status(cmd::cargo().args(FMT), "`cargo fmt`")?.success() {
        bail!("`cargo {}` found unformatted code (the diff is above): run `cargo fmt --all`", FMT.join(" "));
    }

    phase("lint", &format!("cargo {}", CLIPPY.join(" ")));
    if !cmd::status(cmd::cargo().args(CLIPPY), "`cargo clippy`")?.success() {
        bail!("clippy failed on the userspace crates: fix what it reports above (`cargo clippy --fix` mends some)");
    }

    let (mut ebpf, shown) = ebpf_clippy();
    phase("lint", &shown);
    if !cmd::status(&mut ebpf, "`cargo clippy` for tracer-ebpf")?.success() {
        bail!(
            "clippy failed on tracer-ebpf for {}: fix what it reports above in tracer-ebpf/src (an #[allow] \
             needs a comment saying why); if core could not be built, run `cargo xtask setup`",
            ebpf_target()
        );
    }

    phase("lint", &format!("layering of tracer/src (the table in {})", layers::TABLE_FILE));
    let src = cmd::workspace_root().join("tracer/src");
    let (modules, sources) = layers::read_crate(&src, "tracer/src")?;
    let problems = layers::check(&layers::TABLE, &modules, &sources);
    for problem in &problems {
        eprintln!("{problem}");
    }
    if !problems.is_empty() {
        bail!(
            "the layering check of tracer/src found {} problem(s), listed above: give each module a place in \
             the table in {}, and import only from lower layers",
            problems.len(),
            layers::TABLE_FILE
        );
    }
    phase("lint", "all checks passed");
    Ok(())
}

/// What aya-build (0.2.0) builds the kernel programs for: the BPF target of the host's
/// byte order.
fn ebpf_target() -> &'static str {
    if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    }
}

/// clippy on tracer-ebpf as aya-build (0.2.0) compiles it from tracer/build.rs, so it sees
/// the code the kernel gets: the nightly toolchain, core built for the BPF target,
/// `--release` (no debug assertions), and the rustflags aya-build sets, whose
/// `bpf_target_arch` cfg selects aya-ebpf's code for the host's architecture. Returns the
/// command and how to show it.
fn ebpf_clippy() -> (Command, String) {
    let args = [
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "tracer-ebpf",
        "--bins",
        "--release",
        "--target",
        ebpf_target(),
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ];
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let rustflags = [arch.as_str(), "-Cdebuginfo=2", "-Clink-arg=--btf"];
    let mut command = Command::new("rustup");
    command
        .args(args)
        .current_dir(cmd::workspace_root())
        .env("PATH", cmd::path_with_toolchain())
        // As aya-build: the rustc of the cargo running xtask must not stand in for the
        // nightly's. clippy sets its own wrapper.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    let shown = format!("rustup {} (with aya-build's rustflags: {})", args.join(" "), rustflags.join(" "));
    (command, shown)
}
