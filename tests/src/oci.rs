//! OCI image archives built from files on this machine, with no registry and no daemon:
//! `umoci` lays out the image and its one layer, `skopeo` writes the archive that
//! `ctr images import` reads. Used for the test node's pause image and for tracer's own
//! image (`cargo xtask image`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// What goes into an image: files copied from this machine, and symbolic links.
#[derive(Default)]
pub struct Contents {
    /// (file on this machine, absolute path in the image)
    pub files: Vec<(PathBuf, String)>,
    /// (absolute path in the image, what it points to)
    pub links: Vec<(String, String)>,
}

impl Contents {
    /// Adds `binaries` at the same paths, with every shared library they load (and the
    /// dynamic loader), as `ldd` resolves them here.
    pub fn with_libraries(mut self, binaries: &[&Path]) -> Result<Contents> {
        let mut needed = BTreeSet::new();
        for binary in binaries {
            needed.insert(binary.to_path_buf());
            needed.extend(shared_libraries(binary)?);
        }
        for path in needed {
            let dest = path.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", path.display()))?.to_string();
            if !self.files.iter().any(|(_, d)| *d == dest) {
                self.files.push((path, dest));
            }
        }
        Ok(self)
    }
}

/// The libraries `binary` loads, resolved to real files (a library's link is followed).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: nothing to add.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|word| word.starts_with('/')),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            if path.contains("not found") {
                bail!("{} needs a library that is not installed: {line}", binary.display());
            }
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Builds an OCI archive at `out` of an image named `reference` (e.g. `tracer.test/pause:1`)
/// holding `contents`, which runs `entrypoint`. `scratch` is a directory the build may use.
pub fn build_archive(
    reference: &str,
    contents: &Contents,
    entrypoint: &[&str],
    scratch: &Path,
    out: &Path,
) -> Result<()> {
    let layout = scratch.join("layout");
    let bundle = scratch.join("bundle");
    for dir in [&layout, &bundle] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let image = format!("{}:latest", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    for (source, dest) in &contents.files {
        let target = in_rootfs(&rootfs, dest)?;
        make_parents(&rootfs, &target)?;
        // Links on the way (lib → usr/lib) are resolved: the image holds the file itself.
        fs::copy(source, &target).with_context(|| format!("copying {} into the image", source.display()))?;
    }
    for (link, points_to) in &contents.links {
        let target = in_rootfs(&rootfs, link)?;
        make_parents(&rootfs, &target)?;
        symlink(points_to, &target).with_context(|| format!("linking {link} in the image"))?;
    }
    run(Command::new("umoci").args(["repack", "--image", &image]).arg(&bundle))?;
    let mut config = Command::new("umoci");
    config.args(["config", "--image", &image]);
    for word in entrypoint {
        config.arg(format!("--config.entrypoint={word}"));
    }
    run(&mut config)?;
    if out.exists() {
        fs::remove_file(out).with_context(|| format!("removing the old {}", out.display()))?;
    }
    run(Command::new("skopeo")
        .args(["copy", "--quiet", &format!("oci:{image}")])
        .arg(format!("oci-archive:{}:{reference}", out.display())))
}

fn in_rootfs(rootfs: &Path, path: &str) -> Result<PathBuf> {
    let relative = path.strip_prefix('/').ok_or_else(|| anyhow!("image paths are absolute: {path}"))?;
    Ok(rootfs.join(relative))
}

/// Creates the directories up to `target`, each 0755 (tracer runs only tools whose every
/// directory is root's and writable by no one else).
fn make_parents(rootfs: &Path, target: &Path) -> Result<()> {
    let Some(parent) = target.parent() else { return Ok(()) };
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut dir = parent;
    while dir.starts_with(rootfs) && dir != rootfs {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        dir = match dir.parent() {
            Some(up) => up,
            None => break,
        };
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what} (is it installed? `cargo xtask setup`)"))?;
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The test node's pause image: `tests/images/pause.c`, built statically, as
/// `tracer.test/pause:1`. Returns the archive's path (in `dir`).
pub fn pause_image(dir: &Path) -> Result<PathBuf> {
    let source = crate::workspace_root().join("tests/images/pause.c");
    let binary = dir.join("pause");
    run(Command::new("cc").args(["-static", "-Os", "-o"]).arg(&binary).arg(&source))?;
    let contents = Contents { files: vec![(binary, "/pause".to_string())], links: Vec::new() };
    let out = dir.join("pause.tar");
    build_archive(PAUSE_IMAGE, &contents, &["/pause"], &dir.join("pause-build"), &out)?;
    Ok(out)
}

/// The name the test node's runtime knows its pause image by.
pub const PAUSE_IMAGE: &str = "tracer.test/pause:1";

/// The firewall tools tracer runs to name the rule behind a drop, as links to the programs
/// that do what their name says (as Debian installs them).
const FIREWALL_TOOLS: [(&str, &str); 4] = [
    ("/usr/sbin/iptables-nft-save", "xtables-nft-multi"),
    ("/usr/sbin/ip6tables-nft-save", "xtables-nft-multi"),
    ("/usr/sbin/iptables-legacy-save", "xtables-legacy-multi"),
    ("/usr/sbin/ip6tables-legacy-save", "xtables-legacy-multi"),
];

/// Where the iptables programs load their match and target modules from.
const XTABLES_MODULES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// tracer's image: the `tracer` binary at /usr/local/bin/tracer as its entrypoint, with the
/// libraries it loads, and the firewall tools it runs (nft, iptables-save of both backends)
/// with theirs, so a drop's rule is named from inside the container too.
pub fn tracer_image(tracer: &Path, reference: &str, scratch: &Path, out: &Path) -> Result<()> {
    let programs = [
        Path::new("/usr/sbin/nft"),
        Path::new("/usr/sbin/xtables-nft-multi"),
        Path::new("/usr/sbin/xtables-legacy-multi"),
    ];
    let mut modules: Vec<PathBuf> = fs::read_dir(XTABLES_MODULES)
        .with_context(|| format!("listing {XTABLES_MODULES} (is iptables installed?)"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "so"))
        .collect();
    modules.sort();
    let mut binaries: Vec<&Path> = programs.to_vec();
    binaries.push(tracer);
    binaries.extend(modules.iter().map(PathBuf::as_path));
    let mut contents = Contents::default().with_libraries(&binaries)?;
    // The binary's own place is /usr/local/bin, whatever its path here.
    contents.files.retain(|(source, _)| source != tracer);
    contents.files.push((tracer.to_path_buf(), "/usr/local/bin/tracer".to_string()));
    contents.links.extend(FIREWALL_TOOLS.iter().map(|(link, to)| (link.to_string(), to.to_string())));
    // The tools print protocols and services by name, as they do on the node.
    for table in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if Path::new(table).is_file() {
            contents.files.push((PathBuf::from(table), table.to_string()));
        }
    }
    build_archive(reference, &contents, &["/usr/local/bin/tracer"], scratch, out)
}
