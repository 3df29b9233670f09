//! `cargo xtask setup`: make sure the build and lab prerequisites are installed.
//!
//! Every step prints one line, `ok` when there was nothing to do or `installing` before it
//! installs; a failing step ends setup with one line saying what failed and what to do.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd::{self, probe};
use crate::lint;

/// The bpf-linker release known to build against the nightly's own libLLVM (see PLATFORM.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages for the lab and its diagnostics.
const PACKAGES: &[&str] = &[
    "iptables",
    "nftables",
    "dnsmasq-base",
    "bind9-dnsutils",
    "conntrack",
    "tcpdump",
    "tshark",
    "iproute2",
    // The sets kube-router's and IPVS-mode kube-proxy's rules match on, for the lab's layouts
    // and for tracer's reading of a node's ipsets.
    "ipset",
    // The DNS load of `cargo xtask bench` and of the flood tests.
    "dnsperf",
    // The safety tests list the BPF objects a tracer left behind, and its attachments; the
    // bench reads its programs' run-time statistics.
    "bpftool",
    // The bench's profile of the load's CPU per mode.
    "linux-perf",
    // setpriv runs tracer without privileges in the tests; sysctl reads node settings.
    "util-linux",
    "procps",
    // The test node and `cargo xtask image`: containerd with its CRI plugin (runc comes with
    // it), the CNI plugins (bridge, host-local), the pause image's compiler, and the tools
    // that build OCI image archives without a registry or daemon.
    "containerd",
    "containernetworking-plugins",
    "gcc",
    "libc6-dev",
    "umoci",
    "skopeo",
    // The metrics test's Prometheus server and promtool.
    "prometheus",
    // Essential on Debian and so normally there, listed so a trimmed image gets them: the
    // safety tests' FIFO (mkfifo), the image test's library check (ldd), and `vm`'s kernel
    // download (apt-cache, dpkg-deb).
    "coreutils",
    "libc-bin",
    "apt",
    "dpkg",
];

/// Every program a test, the demo or the bench runs, and the package that provides it. Setup
/// ends by checking each is there, so a missing tool fails in one line naming it before any
/// suite starts, not as a puzzling test failure half-way through.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("bridge", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-nft", "iptables"),
    ("iptables-legacy", "iptables"),
    ("ip6tables", "iptables"),
    ("ip6tables-legacy", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-nft-save", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("ip6tables-save", "iptables"),
    ("ip6tables-nft-save", "iptables"),
    ("ip6tables-legacy-save", "iptables"),
    ("xtables-monitor", "iptables"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
    ("dnsmasq", "dnsmasq-base"),
    ("dig", "bind9-dnsutils"),
    ("dnsperf", "dnsperf"),
    ("conntrack", "conntrack"),
    ("tcpdump", "tcpdump"),
    ("tshark", "tshark"),
    ("bpftool", "bpftool"),
    ("perf", "linux-perf"),
    ("setpriv", "util-linux"),
    ("nsenter", "util-linux"),
    ("taskset", "util-linux"),
    ("sysctl", "procps"),
    ("containerd", "containerd"),
    ("containerd-shim-runc-v2", "containerd"),
    ("ctr", "containerd"),
    ("runc", "runc"),
    ("cc", "gcc"),
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("mkfifo", "coreutils"),
    ("ldd", "libc-bin"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
];

/// Where the lab's tools are installed; tests run them by name from these.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The tools of [`TOOLS`] that are not installed, each as `name (package)`.
fn missing_tools() -> Vec<String> {
    let tools = TOOLS.iter().filter(|(name, _)| !TOOL_DIRS.iter().any(|dir| Path::new(dir).join(name).is_file()));
    let plugins = CNI_PLUGINS.iter().filter(|(name, _)| !Path::new(CNI_DIR).join(name).is_file());
    tools.chain(plugins).map(|(name, package)| format!("{name} ({package})")).collect()
}

/// Debian packages `cargo xtask vm` boots other kernels with: the emulator; `depmod` (a kernel
/// package ships no module index); a static busybox (the initramfs that loads a distribution
/// kernel's 9p modules runs before any shared library is reachable); udevd (without the
/// /dev/virtio-ports links it makes, the guest's init cannot find the ports that carry the
/// command's output and exit code back); and the venv module that holds virtme-ng.
pub const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static", "udev", "python3-venv"];

/// The virtme-ng release `cargo xtask vm` was verified with; a pinned version keeps a new release
/// from changing how guests boot or report their exit code.
const VIRTME_NG_VERSION: &str = "1.42";

/// The CNI plugins the test node's containerd runs, where Debian installs them.
const CNI_DIR: &str = "/usr/lib/cni";
const CNI_PLUGINS: &[(&str, &str)] = &[
    ("bridge", "containernetworking-plugins"),
    ("host-local", "containernetworking-plugins"),
    ("loopback", "containernetworking-plugins"),
];

pub fn run() -> Result<()> {
    step("nightly toolchain", nightly)?;
    step("nightly rust-src", rust_src)?;
    step("lint components", lint_components)?;
    step("bpf-linker", bpf_linker)?;
    step("debian packages", |a| debian_packages(PACKAGES, a))?;
    vm()?;
    step("lab tools", lab_tools)
}

/// The last step of every setup: whatever a package list missed shows here, by name, before
/// a test, the demo or the bench trips over it.
fn lab_tools(_announce: &dyn Fn(&str)) -> Result<Done> {
    let missing = missing_tools();
    if !missing.is_empty() {
        bail!(
            "not installed: {}; install the packages named (and add them to PACKAGES in xtask/src/setup.rs)",
            missing.join(", ")
        );
    }
    Ok(Done::AlreadyThere)
}

/// The steps `cargo xtask vm` needs; `run` includes them.
pub fn vm() -> Result<()> {
    step("vm packages", |a| debian_packages(VM_PACKAGES, a))?;
    step("virtme-ng", virtme_ng)
}

/// The `vng` executable `virtme_ng` installs.
pub fn vng() -> PathBuf {
    virtme_ng_venv().join("bin/vng")
}

fn virtme_ng_venv() -> PathBuf {
    cmd::toolchain_prefix().join("virtme-ng")
}

enum Done {
    AlreadyThere,
    Installed,
}

fn step(name: &str, f: impl FnOnce(&dyn Fn(&str)) -> Result<Done>) -> Result<()> {
    let announce = |what: &str| println!("setup: {name:<18} installing {what}");
    match f(&announce) {
        Ok(Done::AlreadyThere) => {
            println!("setup: {name:<18} ok");
            Ok(())
        }
        Ok(Done::Installed) => Ok(()),
        Err(e) => Err(anyhow!("{name}: {e:#}")),
    }
}

fn rustup() -> Command {
    Command::new("rustup")
}

fn nightly_rustc(args: &[&str]) -> Option<String> {
    probe(rustup().args(["run", "nightly", "rustc"]).args(args))
}

fn nightly(announce: &dyn Fn(&str)) -> Result<Done> {
    if nightly_rustc(&["--version"]).is_some() {
        return Ok(Done::AlreadyThere);
    }
    if probe(rustup().arg("--version")).is_none() {
        bail!("rustup not found: install rustup (https://rustup.rs) and run setup again");
    }
    announce("(rustup toolchain install nightly --profile minimal)");
    cmd::run(
        rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]),
        "`rustup toolchain install nightly --profile minimal`",
    )
    .context("check network access to static.rust-lang.org")?;
    if nightly_rustc(&["--version"]).is_none() {
        bail!("`rustup run nightly rustc --version` still fails after installing; reinstall the nightly toolchain");
    }
    Ok(Done::Installed)
}

fn rust_src(announce: &dyn Fn(&str)) -> Result<Done> {
    let installed = || {
        probe(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .is_some_and(|list| list.lines().any(|c| c.starts_with("rust-src")))
    };
    if installed() {
        return Ok(Done::AlreadyThere);
    }
    announce("(rustup component add rust-src --toolchain nightly)");
    cmd::run(
        rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "`rustup component add rust-src --toolchain nightly`",
    )
    .context("check network access to static.rust-lang.org")?;
    if !installed() {
        bail!("rust-src is still missing after `rustup component add`; reinstall the nightly toolchain");
    }
    Ok(Done::Installed)
}

/// rustfmt and clippy, which `cargo xtask lint` runs.
fn lint_components(announce: &dyn Fn(&str)) -> Result<Done> {
    let mut done = Done::AlreadyThere;
    for component in lint::COMPONENTS.iter().filter(|c| !c.installed()) {
        let add = component.add_command();
        announce(&format!("({add})"));
        cmd::run(rustup().args(component.add), &format!("`{add}`"))
            .context("check network access to static.rust-lang.org")?;
        if !component.installed() {
            bail!("{} still does not run after `{add}`; reinstall that toolchain", component.what);
        }
        done = Done::Installed;
    }
    Ok(done)
}

fn bpf_linker(announce: &dyn Fn(&str)) -> Result<Done> {
    let prefix = cmd::toolchain_prefix();
    let linker = prefix.join("bin/bpf-linker");
    let works = || probe(Command::new(&linker).arg("--version")).is_some();
    if works() {
        return Ok(Done::AlreadyThere);
    }

    // bpf-linker must use the same LLVM as the nightly rustc that emits the bitcode; linking it
    // against the nightly's own libLLVM guarantees that and needs no system LLVM.
    let version = nightly_rustc(&["-vV"])
        .ok_or_else(|| anyhow!("`rustup run nightly rustc -vV` failed; run setup again to install the nightly"))?;
    let llvm_major =
        llvm_major(&version).ok_or_else(|| anyhow!("no `LLVM version:` in `rustc +nightly -vV`:\n{version}"))?;
    let sysroot = nightly_rustc(&["--print", "sysroot"])
        .ok_or_else(|| anyhow!("`rustup run nightly rustc --print sysroot` failed"))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let so = find_libllvm(&nightly_lib)?;

    announce(&format!(
        "(cargo install bpf-linker {BPF_LINKER_VERSION} with llvm-{llvm_major} into {}, about a minute)",
        prefix.display()
    ));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {} (run setup as root)", lib.display()))?;
    let target = nightly_lib.join(&so);
    // libLLVM.so is what `-lLLVM` links against; the versioned name is what the binary's rpath
    // ($PREFIX/lib) finds at run time.
    for name in [PathBuf::from("libLLVM.so"), PathBuf::from(&so)] {
        force_symlink(&target, &lib.join(name))?;
    }

    let mut install = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    install
        .args(["install", "--force", "--root"])
        .arg(&prefix)
        .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features"])
        .args(["--features", &format!("llvm-{llvm_major}")])
        .env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so its .cargo/config.toml cannot affect the install.
        .current_dir(std::env::temp_dir());
    cmd::run(&mut install, "`cargo install bpf-linker`").context(
        "see cargo's output above; it needs network access to crates.io and a bpf-linker release \
         with a matching llvm-N feature",
    )?;
    if !works() {
        bail!(
            "{} --version still fails after installing; remove {} and run setup again",
            linker.display(),
            prefix.display()
        );
    }
    Ok(Done::Installed)
}

/// The major version from rustc's `LLVM version: 22.1.4` line.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    let version = rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version:"))?;
    version.trim().split('.').next()?.parse().ok()
}

/// The toolchain's own libLLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn find_libllvm(dir: &Path) -> Result<String> {
    let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(name);
        }
    }
    bail!("no libLLVM.so.*-rust-* in {}; the nightly toolchain looks incomplete, reinstall it", dir.display())
}

fn force_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing old {}", link.display()))?;
    }
    symlink(target, link).with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

fn debian_packages(packages: &[&str], announce: &dyn Fn(&str)) -> Result<Done> {
    if probe(Command::new("dpkg-query").arg("--version")).is_none() {
        bail!(
            "dpkg-query not found: this is not a Debian-based system; install the equivalents of {} yourself",
            packages.join(" ")
        );
    }
    let missing = || -> Vec<&str> { packages.iter().copied().filter(|p| !installed(p)).collect() };
    let wanted = missing();
    if wanted.is_empty() {
        return Ok(Done::AlreadyThere);
    }
    if !cmd::is_root() {
        bail!("{} not installed; run `cargo xtask setup` as root to install them", wanted.join(" "));
    }
    announce(&wanted.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]), "`apt-get update`")
        .context("check the network and /etc/apt/sources.list")?;
    cmd::run(
        Command::new("apt-get").args(["install", "-y", "-q"]).args(&wanted).env("DEBIAN_FRONTEND", "noninteractive"),
        "`apt-get install`",
    )
    .context("see apt-get's output above")?;
    let still = missing();
    if !still.is_empty() {
        bail!("{} still not installed after apt-get install", still.join(" "));
    }
    Ok(Done::Installed)
}

fn virtme_ng(announce: &dyn Fn(&str)) -> Result<Done> {
    let venv = virtme_ng_venv();
    let vng = vng();
    let pip_show = || probe(Command::new(venv.join("bin/pip")).args(["show", "virtme-ng"]));
    let right_version = || {
        pip_show().is_some_and(|info| pip_show_version(&info) == Some(VIRTME_NG_VERSION))
            && probe(Command::new(&vng).arg("--version")).is_some()
    };
    if right_version() {
        return Ok(Done::AlreadyThere);
    }
    if !cmd::is_root() {
        bail!("virtme-ng {VIRTME_NG_VERSION} is not installed in {}; run `cargo xtask setup` as root", venv.display());
    }
    announce(&format!("(virtme-ng {VIRTME_NG_VERSION} from PyPI into the venv {})", venv.display()));
    // Debian's own python3: a python from elsewhere on PATH may lack the venv module or vanish
    // with a user's environment, and the venv keeps a link to the interpreter it was made with.
    if !venv.join("bin/pip").exists() {
        cmd::run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv), "`/usr/bin/python3 -m venv`")
            .context("install python3-venv (the `vm packages` step does) and run setup again")?;
    }
    cmd::run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("virtme-ng=={VIRTME_NG_VERSION}"),
        ]),
        "`pip install virtme-ng`",
    )
    .context("check network access to PyPI")?;
    if !right_version() {
        bail!(
            "{} --version still fails after installing; remove {} and run setup again",
            vng.display(),
            venv.display()
        );
    }
    Ok(Done::Installed)
}

/// The `Version:` field of `pip show`.
fn pip_show_version(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.strip_prefix("Version:")).map(str::trim)
}

/// The packages of `VM_PACKAGES` that are not installed.
pub fn missing_vm_packages() -> Vec<&'static str> {
    VM_PACKAGES.iter().copied().filter(|p| !installed(p)).collect()
}

fn installed(package: &str) -> bool {
    probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.0\n"), None);
    }

    #[test]
    fn reads_pip_show_version() {
        let info = "Name: virtme-ng\nVersion: 1.42\nSummary: Build and run a kernel\n";
        assert_eq!(pip_show_version(info), Some("1.42"));
        assert_eq!(pip_show_version("Name: x\n"), None);
    }
}
