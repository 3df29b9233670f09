//! `cargo xtask image [--out FILE]`: tracer's OCI image archive, from the release build, for
//! containerd (`ctr images import FILE`) and the DaemonSet in deploy/. No registry, no
//! daemon: `umoci` and `skopeo` build it from files on this machine (see
//! `tracer_tests::oci`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, phase};
use crate::setup;

/// The name the archive gives the image, which `ctr images import` takes.
pub const REFERENCE: &str = "localhost/tracer:latest";

/// Where the archive goes unless --out says otherwise.
pub fn default_archive() -> PathBuf {
    cmd::workspace_root().join("target/image/tracer.tar")
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let out = match args {
        [] => default_archive(),
        [flag, file] if flag == "--out" => PathBuf::from(file),
        _ => bail!("usage: cargo xtask image [--out FILE]"),
    };
    setup::run()?;
    phase("image", "cargo build -p tracer --release");
    let release = cmd::build_tracer(cmd::Build::Release)?;
    build(&release, &out)?;
    Ok(ExitCode::SUCCESS)
}

/// Builds the archive of `tracer` at `out`; prints its size.
pub fn build(tracer: &Path, out: &Path) -> Result<()> {
    phase("image", &format!("{REFERENCE} from {} into {}", tracer.display(), out.display()));
    let dir = out.parent().context("the archive needs a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let scratch = dir.join("build");
    tracer_tests::oci::tracer_image(tracer, REFERENCE, &scratch, out)?;
    std::fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    let size = std::fs::metadata(out)?.len();
    phase(
        "image",
        &format!(
            "{} ({:.1} MiB): ctr -n k8s.io images import {}",
            out.display(),
            size as f64 / 1048576.0,
            out.display()
        ),
    );
    Ok(())
}
