//! Running tracer as a user without root's privileges, to see what it says is missing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The uid and gid of nobody.
const NOBODY: u32 = 65534;

/// Copies the tracer under test into `dir` where nobody can execute it, whatever the
/// permissions of the checkout (it may live in /root).
pub fn copy_of_tracer(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let bin = dir.join("tracer");
    fs::copy(crate::tracer_bin()?, &bin).with_context(|| format!("copying tracer to {}", bin.display()))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    Ok(bin)
}

/// `setpriv ... BIN ARGS`: BIN as nobody (no groups) with exactly `caps` (as setpriv names
/// them: `net_admin`, `bpf`...) as its inheritable and ambient capabilities, so that they, and
/// only they, survive the exec.
pub fn as_nobody(caps: &[&str], bin: &Path, args: &[&str]) -> Result<Vec<String>> {
    let list: String =
        std::iter::once("-all".to_string()).chain(caps.iter().map(|c| format!("+{c}"))).collect::<Vec<_>>().join(",");
    let mut argv = vec![
        "setpriv".to_string(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".to_string(),
        format!("--inh-caps={list}"),
        format!("--ambient-caps={list}"),
        bin.to_str().context("non-UTF-8 path")?.to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    Ok(argv)
}
