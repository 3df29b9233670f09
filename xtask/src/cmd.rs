//! Running commands, and the facts about this checkout every task needs.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where bpf-linker and the libLLVM links it runs with are installed.
pub fn toolchain_prefix() -> PathBuf {
    match std::env::var_os("TRACER_TOOLCHAIN_PREFIX") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/opt/tracer-toolchain"),
    }
}

/// The checkout xtask was built from (its parent directory).
pub fn workspace_root() -> &'static Path {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(task: &str) -> Result<()> {
    if !is_root() {
        bail!("must run as root (it creates network namespaces and loads eBPF programs): run `cargo xtask {task}` as root");
    }
    Ok(())
}

/// Prints which phase of a task is running.
pub fn phase(task: &str, what: &str) {
    println!("==> xtask {task}: {what}");
}

/// `$PATH` with the toolchain's bin directory first, so cargo (through aya-build) finds
/// bpf-linker.
pub fn path_with_toolchain() -> OsString {
    let mut dirs = vec![toolchain_prefix().join("bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| std::env::var_os("PATH").unwrap_or_default())
}

/// The cargo that runs xtask (so the same toolchain builds tracer), in the workspace root, with
/// the toolchain on `PATH`.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root()).env("PATH", path_with_toolchain()).stdin(Stdio::null());
    cmd
}

/// Runs a command with inherited output; fails unless it exits 0.
pub fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = status(cmd, what)?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub fn status(cmd: &mut Command, what: &str) -> Result<ExitStatus> {
    cmd.stdin(Stdio::null());
    cmd.status().with_context(|| format!("could not run {what}"))
}

/// Stdout of a command that exited 0; `None` if it could not run or failed. For probes.
pub fn probe(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exit code to pass on for a child's status (a signal death becomes a plain failure).
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// `cargo build -p tracer [--release]`; returns the path of the binary cargo reports, which
/// respects `CARGO_TARGET_DIR` and any target-dir configuration.
pub fn build_tracer(build: Build) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", "tracer"]);
    let flags = match build {
        Build::Release => "--release",
        Build::Test => "--profile=checked --features=fault-injection",
    };
    cmd.args(flags.split(' '));
    let what = format!("`cargo build -p tracer {flags}`");
    cargo_executables(&mut cmd, &what)?
        .into_iter()
        .rev()
        .find(|artifact| artifact.is("bin", "tracer"))
        .map(|artifact| artifact.path)
        .with_context(|| format!("{what} succeeded but reported no tracer executable"))
}

/// Which tracer to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// Optimised, as users run it: the demo, the bench, and the check that it holds no test code.
    Release,
    /// The tests' build: optimised, with debug checks and the safety tests' fault injection
    /// (profile `checked`, feature `fault-injection`).
    Test,
}

/// An executable cargo built: its target's kinds (`bin`, `test`, ...) and name, and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executable {
    pub kinds: Vec<String>,
    pub name: String,
    pub path: PathBuf,
}

impl Executable {
    pub fn is(&self, kind: &str, name: &str) -> bool {
        self.name == name && self.kinds.iter().any(|k| k == kind)
    }
}

/// Runs `cmd` (a cargo build or `test --no-run`) with JSON messages on standard output and the
/// compiler's diagnostics rendered on standard error; returns the executables it reports, in
/// order. Fails when cargo does.
pub fn cargo_executables(cmd: &mut Command, what: &str) -> Result<Vec<Executable>> {
    let mut child = cmd
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not run {what}"))?;
    let mut executables = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.with_context(|| format!("reading the output of {what}"))?;
            executables.extend(executable_of(&line));
        }
    }
    let status = child.wait().with_context(|| format!("waiting for {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); the compiler's messages are above");
    }
    Ok(executables)
}

/// The executable a cargo JSON message reports, if it is a compiler artifact that has one.
fn executable_of(line: &str) -> Option<Executable> {
    let msg: Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = msg.get("target")?;
    let kinds = target.get("kind")?.as_array()?.iter().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let name = target.get("name")?.as_str()?.to_string();
    let path = PathBuf::from(msg.get("executable")?.as_str()?);
    Some(Executable { kinds, name, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_executables_in_cargo_messages() {
        let bin = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"tracer"},"executable":"/w/target/debug/tracer"}"#;
        let lib = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"tracer"},"executable":null}"#;
        let other = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"xtask"},"executable":"/w/target/debug/xtask"}"#;
        let tracer = executable_of(bin).unwrap();
        assert!(tracer.is("bin", "tracer"));
        assert_eq!(tracer.path, PathBuf::from("/w/target/debug/tracer"));
        assert_eq!(executable_of(lib), None);
        assert!(!executable_of(other).unwrap().is("bin", "tracer"));
        assert_eq!(executable_of(r#"{"reason":"build-finished","success":true}"#), None);
        assert_eq!(executable_of("not json"), None);
    }
}
