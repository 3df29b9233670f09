//! `cargo xtask vm`: run a command on another kernel, booted under QEMU with virtme-ng.
//!
//! Production nodes run other kernels than a developer's machine, and what tracer can attach to
//! differs between them. The guest shares this machine's root file system (read-only, with
//! throw-away overlays on /etc, /tmp, /var ...) and the checkout read-write, so a tracer and the
//! lab tools installed here run there unchanged, and whatever the command writes under the
//! checkout (target/) is kept. Debian's kernel packages are downloaded once and kept in
//! `/var/lib/tracer-kernels`.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cmd::{self, probe};
use crate::setup;

/// Extracted kernel packages, one directory `<package>_<version>` each. Outside the checkout so
/// that `cargo clean` or a fresh clone does not download them again; not under /var/cache, which
/// the guest's init hides behind a tmpfs, while the guest loads its modules from here.
const CACHE: &str = "/var/lib/tracer-kernels";

/// A debug tracer build, the lab tools and a few network namespaces fit with room to spare.
const DEFAULT_MEMORY: &str = "2G";

/// Generous for TCG, which runs guest code about 20 times slower than the host; the point is that
/// a hung guest cannot hang CI.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Debian 12's kernel; the series of EKS AL2023 and GKE COS 117 nodes too.
    Debian6_1,
    /// Debian 13's series (in Debian 12 as well), as on newer EKS nodes.
    Debian6_12,
    /// The kernel this machine runs: COMMAND runs directly, without a VM.
    Host,
}

impl Kernel {
    pub fn parse(name: &str) -> Result<Kernel> {
        match name {
            "6.1" => Ok(Kernel::Debian6_1),
            "6.12" => Ok(Kernel::Debian6_12),
            "host" => Ok(Kernel::Host),
            _ => bail!("unknown kernel `{name}`: use --kernel 6.1, 6.12 or host"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Debian6_1 => "6.1",
            Kernel::Debian6_12 => "6.12",
            Kernel::Host => "host",
        }
    }

    /// The `apt-cache search` expression that lists this series' generic amd64 packages (the
    /// `cloud` flavour lacks the 9p file system the guest's root is shared with).
    fn search_pattern(self) -> Option<&'static str> {
        match self {
            Kernel::Debian6_1 => Some(r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$"),
            Kernel::Debian6_12 => Some(r"^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$"),
            Kernel::Host => None,
        }
    }

    /// How new a package of this series is (ABI number, or patch level and Debian release);
    /// `None` for other series and flavours.
    fn package_key(self, package: &str) -> Option<(u32, u32)> {
        match self {
            Kernel::Debian6_1 => {
                let abi = package.strip_prefix("linux-image-6.1.0-")?.strip_suffix("-amd64-unsigned")?;
                Some((number(abi)?, 0))
            }
            Kernel::Debian6_12 => {
                let (patch, release) =
                    package.strip_prefix("linux-image-6.12.")?.strip_suffix("-amd64-unsigned")?.split_once("+deb")?;
                Some((number(patch)?, number(release)?))
            }
            Kernel::Host => None,
        }
    }
}

/// Digits only: `parse` alone would take a sign.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// How to run a command under a kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub kernel: Kernel,
    /// The guest's memory in QEMU's notation (`2G`, `1536M`).
    pub memory: String,
    /// The whole run, boot included; the guest is killed after it.
    pub timeout: Duration,
    /// Show the kernel's console (boot messages, oopses) on standard error.
    pub verbose: bool,
}

impl Vm {
    pub fn new(kernel: Kernel) -> Vm {
        Vm { kernel, memory: DEFAULT_MEMORY.to_string(), timeout: DEFAULT_TIMEOUT, verbose: false }
    }
}

/// `cargo xtask vm ...`: exits with COMMAND's exit code.
pub fn task(args: &[String]) -> Result<ExitCode> {
    let (vm, command) = parse_args(args)?;
    let started = Instant::now();
    let status = run(&vm, &command)?;
    let shown = match status.code() {
        Some(code) => format!("exited with {code}"),
        None => format!("ended by {status}"),
    };
    eprintln!(
        "vm: `{}` {shown} ({} kernel, {:.1} s in all)",
        shell_words(&command),
        vm.kernel.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(cmd::exit_code(status))
}

/// Runs `command` as root in the current directory under `vm.kernel`, its output streamed to
/// ours; returns its exit status. An error means it could not run or did not finish (no kernel,
/// the guest did not boot, the timeout struck).
pub fn run(vm: &Vm, command: &[String]) -> Result<ExitStatus> {
    let (program, args) = command.split_first().ok_or_else(|| anyhow!("no command given: put it after `--`"))?;
    if vm.kernel == Kernel::Host {
        let mut direct = Command::new(program);
        direct.args(args);
        return wait_for(direct, Output::Inherit, vm.timeout, &format!("`{program}`"));
    }

    if !cmd::is_root() {
        bail!("must run as root (it keeps kernels in {CACHE} and runs the command as root in the guest): run `cargo xtask vm` as root");
    }
    check_prerequisites()?;
    let kernel = kernel_files(vm.kernel)?;

    let cwd = std::env::current_dir().context("reading the current directory")?;
    let workspace = cmd::workspace_root();
    for dir in [&cwd, workspace] {
        check_shareable(dir)?;
    }
    // The command's exit code comes back through the shared checkout: virtme-ng reports 255 both
    // for a command that exited 255 and for a guest that died before the command ended.
    let exit_dir = workspace.join("target/xtask-vm");
    fs::create_dir_all(&exit_dir).with_context(|| format!("creating {}", exit_dir.display()))?;
    let exit_file = exit_dir.join(format!("exit-code-{}", std::process::id()));
    remove_if_present(&exit_file)?;

    eprintln!(
        "vm: booting {} ({} {}) under QEMU without KVM{}",
        kernel.release,
        kernel.package,
        kernel.version,
        if vm.verbose { "" } else { "; --verbose shows its console" }
    );
    let mut vng = Command::new(setup::vng());
    vng.arg("--run")
        .arg(&kernel.image)
        // KVM boots hang on these machines; TCG is slow but dependable.
        .arg("--disable-kvm")
        .args(["--memory", &vm.memory])
        .arg("--rwdir")
        .arg(workspace)
        .arg("--cwd")
        .arg(&cwd)
        .args(["--exec", &guest_script(&cwd, command, &exit_file)])
        .env("PATH", path_with_venv());
    if vm.verbose {
        vng.arg("--verbose");
    }
    let status = wait_for(vng, Output::Relay, vm.timeout, &format!("the {} guest", kernel.release));
    let reported = fs::read_to_string(&exit_file);
    remove_if_present(&exit_file)?;
    let status = status?;
    match reported.ok().and_then(|s| s.trim().parse::<i32>().ok()) {
        Some(code) => Ok(ExitStatus::from_raw((code & 0xff) << 8)),
        None => bail!(
            "the {} guest stopped before the command finished (virtme-ng: {status}): the kernel did not boot or crashed{}",
            kernel.release,
            if vm.verbose {
                "; its console is above"
            } else {
                "; run again with --verbose to see its console"
            }
        ),
    }
}

/// A shell script for the guest: runs `command` in `cwd` and leaves its exit code in
/// `exit_file`.
fn guest_script(cwd: &Path, command: &[String], exit_file: &Path) -> String {
    let words: Vec<String> = command.iter().map(|w| quote(w)).collect();
    format!(
        "cd -- {cwd} && {command}\nrc=$?\necho \"$rc\" > {exit}\nexit \"$rc\"\n",
        cwd = quote(&cwd.to_string_lossy()),
        command = words.join(" "),
        exit = quote(&exit_file.to_string_lossy()),
    )
}

/// `command` as one would type it.
fn shell_words(command: &[String]) -> String {
    let plain = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    let words: Vec<String> = command.iter().map(|w| if plain(w) { w.clone() } else { quote(w) }).collect();
    words.join(" ")
}

/// One shell word that stands for `s` exactly.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// virtme-ng splits its own arguments on white space and reads `=` in a shared directory as
/// `guest=host`.
fn check_shareable(dir: &Path) -> Result<()> {
    let text = dir.to_string_lossy();
    if text.chars().any(|c| c.is_whitespace() || c == '=') {
        bail!(
            "{} contains white space or `=`, which virtme-ng cannot share with the guest: use a checkout and directory without them",
            dir.display()
        );
    }
    Ok(())
}

fn remove_if_present(file: &Path) -> Result<()> {
    match fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// virtme-ng runs its helpers (virtme-run) from `PATH`.
fn path_with_venv() -> OsString {
    let mut dirs = Vec::new();
    if let Some(bin) = setup::vng().parent() {
        dirs.push(bin.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_else(|_| std::env::var_os("PATH").unwrap_or_default())
}

fn check_prerequisites() -> Result<()> {
    let vng = setup::vng();
    if probe(Command::new(&vng).arg("--version")).is_none() {
        bail!("virtme-ng not found at {}: run `cargo xtask setup` (as root)", vng.display());
    }
    let missing = setup::missing_vm_packages();
    if !missing.is_empty() {
        bail!("Debian packages {} are not installed: run `cargo xtask setup` (as root)", missing.join(" "));
    }
    Ok(())
}

/// How the child's output reaches ours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Inherit,
    /// Through pipes we copy from. QEMU opens its output files anew with O_TRUNC and makes them
    /// non-blocking: given our stdout or stderr as a file, it would erase what was written
    /// before (in CI logs too), and as a terminal, it would leave it non-blocking for us.
    Relay,
}

/// Starts `command` in its own process group and waits for it, killing the whole group (QEMU
/// included) when `timeout` passes or we are told to stop.
fn wait_for(mut command: Command, output: Output, timeout: Duration, what: &str) -> Result<ExitStatus> {
    catch_stop_signals();
    if output == Output::Relay {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child =
        command.stdin(Stdio::null()).process_group(0).spawn().with_context(|| format!("could not start {what}"))?;
    let mut relays = Vec::new();
    if let Some(out) = child.stdout.take() {
        relays.push(std::thread::spawn(move || relay(out, std::io::stdout)));
    }
    if let Some(err) = child.stderr.take() {
        relays.push(std::thread::spawn(move || relay(err, std::io::stderr)));
    }
    let status = wait_with_deadline(&mut child, timeout, what);
    // Outside a wait nobody looks at the flag, so a Ctrl-C must stop us the ordinary way again.
    restore_stop_signals();
    // The pipes end once every process of the group has gone, which has happened when the wait
    // returns (normally or by killing the group).
    for r in relays {
        let _ = r.join();
    }
    status
}

/// Copies everything from `from` to `to()` as it comes, without waiting for whole lines.
fn relay<W: Write>(mut from: impl Read, to: fn() -> W) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut to = to();
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn wait_with_deadline(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            return Ok(status);
        }
        let signal = STOP_SIGNAL.load(Ordering::Relaxed);
        if signal != 0 {
            kill_group(child);
            bail!("stopped by signal {signal}; killed {what}");
        }
        if Instant::now() >= deadline {
            kill_group(child);
            bail!(
                "{what} did not finish within {} s and was killed: raise --timeout if it needs longer",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the group is the one the child leads.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.wait();
}

/// The signal that asked us to stop, 0 while none did. The child runs in its own process group,
/// so a Ctrl-C on the terminal reaches only us and we must pass it on.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_stop_signal(signal: libc::c_int) {
    STOP_SIGNAL.store(signal, Ordering::Relaxed);
}

const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn catch_stop_signals() {
    for signal in STOP_SIGNALS {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, note_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

fn restore_stop_signals() {
    for signal in STOP_SIGNALS {
        // SAFETY: restoring the default disposition has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
}

/// An extracted kernel package.
struct KernelFiles {
    package: String,
    version: String,
    /// `boot/vmlinuz-<release>`; virtme-ng finds the modules beside it in `lib/modules/<release>`.
    image: PathBuf,
    release: String,
}

/// The newest kernel package of the series, downloaded and extracted into the cache unless it is
/// there already. Falls back on the newest cached one when apt cannot help (no network).
fn kernel_files(kernel: Kernel) -> Result<KernelFiles> {
    let pattern = kernel.search_pattern().ok_or_else(|| anyhow!("the {} kernel is not a package", kernel.name()))?;
    let mut candidate = newest_in_apt(kernel, pattern)?;
    if candidate.is_none() {
        // A fresh machine may have no apt lists yet.
        eprintln!("vm: no {} kernel package in the apt lists; running apt-get update", kernel.name());
        let updated = cmd::status(
            Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::from(std::io::stderr())),
            "`apt-get update`",
        );
        if updated.is_ok_and(|s| s.success()) {
            candidate = newest_in_apt(kernel, pattern)?;
        }
    }
    let cached = newest_cached(kernel);
    let Some((package, version)) = candidate else {
        return match cached {
            Some(dir) => {
                eprintln!(
                    "vm: apt offers no {} kernel package (`apt-cache search '{pattern}'`); using the cached {}",
                    kernel.name(),
                    dir.display()
                );
                read_kernel_dir(&dir)
            }
            None => bail!(
                "no package matches `{pattern}` in the apt sources and none is cached: add Debian 12 (bookworm) with its updates and security suites to /etc/apt/sources.list, then run apt-get update"
            ),
        };
    };

    let dir = Path::new(CACHE).join(format!("{package}_{version}"));
    if dir.is_dir() {
        return read_kernel_dir(&dir);
    }
    match download(&package, &version, &dir) {
        Ok(()) => {
            prune_older(kernel, &dir);
            read_kernel_dir(&dir)
        }
        Err(e) => match cached {
            Some(old) => {
                eprintln!("vm: could not fetch {package} {version} ({e:#}); using the cached {}", old.display());
                read_kernel_dir(&old)
            }
            None => Err(e),
        },
    }
}

/// The newest package of the series apt offers, with its candidate version.
fn newest_in_apt(kernel: Kernel, pattern: &str) -> Result<Option<(String, String)>> {
    let search = probe(Command::new("apt-cache").args(["search", "--names-only", pattern]))
        .ok_or_else(|| anyhow!("`apt-cache search` failed: this needs a Debian system with apt"))?;
    let Some(package) = newest_package(kernel, &search) else {
        return Ok(None);
    };
    let policy = probe(Command::new("apt-cache").args(["policy", &package]))
        .ok_or_else(|| anyhow!("`apt-cache policy {package}` failed"))?;
    Ok(candidate_version(&policy).map(|version| (package, version)))
}

/// The newest package of the series in `apt-cache search` output (`name - description` lines).
fn newest_package(kernel: Kernel, search: &str) -> Option<String> {
    search
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| kernel.package_key(name).map(|key| (key, name)))
        .max()
        .map(|(_, name)| name.to_string())
}

/// The `Candidate:` version in `apt-cache policy` output; `None` when nothing is installable.
fn candidate_version(policy: &str) -> Option<String> {
    let version = policy.lines().find_map(|l| l.trim().strip_prefix("Candidate:"))?.trim();
    (!version.is_empty() && version != "(none)").then(|| version.to_string())
}

/// The package a cache directory `<package>_<version>` holds.
fn cached_package(dir_name: &str) -> Option<&str> {
    let (package, version) = dir_name.split_once('_')?;
    (!version.is_empty()).then_some(package)
}

fn cached_of(kernel: Kernel) -> Vec<(PathBuf, (u32, u32))> {
    let Ok(entries) = fs::read_dir(CACHE) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let key = kernel.package_key(cached_package(&name)?)?;
            Some((e.path(), key))
        })
        .collect()
}

fn newest_cached(kernel: Kernel) -> Option<PathBuf> {
    cached_of(kernel).into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0))).map(|(path, _)| path)
}

/// Older kernels of the series are of no further use; each takes 100-400 MB.
fn prune_older(kernel: Kernel, keep: &Path) {
    for (dir, _) in cached_of(kernel) {
        if dir != keep {
            match fs::remove_dir_all(&dir) {
                Ok(()) => eprintln!("vm: removed the older {}", dir.display()),
                Err(e) => eprintln!("vm: could not remove the older {}: {e}", dir.display()),
            }
        }
    }
}

/// `apt-get download` and `dpkg-deb -x` into a scratch directory renamed to `dir` when complete,
/// so an interrupted download is never taken for a cached kernel.
fn download(package: &str, version: &str, dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = Path::new(CACHE).join(format!(".partial-{name}"));
    if partial.exists() {
        fs::remove_dir_all(&partial).with_context(|| format!("removing the leftover {}", partial.display()))?;
    }
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    eprintln!("vm: downloading {package} {version} into {CACHE}");
    let to_stderr = || Stdio::from(std::io::stderr());
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q"])
            // apt's download user cannot write to a root-only directory.
            .args(["-o", "APT::Sandbox::User=root"])
            .arg(format!("{package}={version}"))
            .current_dir(&partial)
            .stdout(to_stderr()),
        &format!("`apt-get download {package}={version}`"),
    )
    .context("check the network and the apt sources")?;
    let deb = only_entry(&partial, |n| n.ends_with(".deb"))?
        .ok_or_else(|| anyhow!("apt-get download left no .deb in {}", partial.display()))?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial).stdout(to_stderr()), "`dpkg-deb -x`")?;
    fs::remove_file(&deb).with_context(|| format!("removing {}", deb.display()))?;
    let files = read_kernel_dir(&partial)?;
    // A kernel package leaves the module index to its postinst; without it the guest's modprobe
    // finds nothing.
    cmd::run(
        Command::new("depmod").args(["-a", "-b"]).arg(&partial).arg(&files.release).stdout(to_stderr()),
        "`depmod`",
    )
    .context("depmod comes with the kmod package: run `cargo xtask setup`")?;
    fs::rename(&partial, dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))
}

/// The one entry of `dir` whose name satisfies `wanted`.
fn only_entry(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let mut found = None;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if wanted(&entry.file_name().to_string_lossy()) {
            if found.is_some() {
                bail!("more than one candidate in {}: remove it and run again", dir.display());
            }
            found = Some(entry.path());
        }
    }
    Ok(found)
}

fn read_kernel_dir(dir: &Path) -> Result<KernelFiles> {
    let broken = || format!("{} is not an extracted kernel package: remove it and run again", dir.display());
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (package, version) = name
        .trim_start_matches(".partial-")
        .split_once('_')
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .ok_or_else(|| anyhow!(broken()))?;
    let image = only_entry(&dir.join("boot"), |n| n.starts_with("vmlinuz-"))
        .with_context(broken)?
        .ok_or_else(|| anyhow!(broken()))?;
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_string)
        .ok_or_else(|| anyhow!(broken()))?;
    Ok(KernelFiles { package, version, image, release })
}

const USAGE_HINT: &str =
    "usage: cargo xtask vm --kernel 6.1|6.12|host [--memory 2G] [--timeout SECS] [--verbose] -- COMMAND [ARGS...]";

/// `--kernel K [--memory M] [--timeout S] [--verbose] -- COMMAND...` (`--opt=value` works too).
fn parse_args(args: &[String]) -> Result<(Vm, Vec<String>)> {
    let mut kernel = None;
    let mut memory = DEFAULT_MEMORY.to_string();
    let mut timeout = DEFAULT_TIMEOUT;
    let mut verbose = false;
    let mut rest = args.iter();
    let mut command = None;
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone().or_else(|| rest.next().cloned()) {
                Some(v) => Ok(v),
                None => bail!("{name} needs a value\n{USAGE_HINT}"),
            }
        };
        match flag {
            "--" => {
                command = Some(rest.by_ref().cloned().collect::<Vec<_>>());
                break;
            }
            "--kernel" => kernel = Some(Kernel::parse(&value("--kernel")?)?),
            "--memory" => {
                memory = value("--memory")?;
                if !valid_memory(&memory) {
                    bail!("--memory {memory}: give a size such as 2G, 1536M or 2048 (MiB)");
                }
            }
            "--timeout" => {
                let secs = value("--timeout")?;
                timeout = match number(&secs) {
                    Some(s) if s > 0 => Duration::from_secs(u64::from(s)),
                    _ => bail!("--timeout {secs}: give a whole number of seconds above 0"),
                };
            }
            "--verbose" | "-v" if inline.is_none() => verbose = true,
            _ => bail!("unknown argument `{arg}` (the command goes after `--`)\n{USAGE_HINT}"),
        }
    }
    let kernel = kernel.ok_or_else(|| anyhow!("--kernel is required (6.1, 6.12 or host)\n{USAGE_HINT}"))?;
    let command = match command {
        Some(c) if !c.is_empty() => c,
        _ => bail!("no command given: put it after `--`\n{USAGE_HINT}"),
    };
    let vm = Vm { memory, timeout, verbose, ..Vm::new(kernel) };
    Ok((vm, command))
}

/// QEMU's `-m` sizes: a number of MiB, or one with a K/M/G/T suffix.
fn valid_memory(memory: &str) -> bool {
    let digits = memory.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    memory.len() - digits.len() <= 1 && number(digits).is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    const SEARCH: &str = "\
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.1.0-100-amd64-dbg - Debug symbols
linux-image-6.12.107+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-6.12.99+deb13-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.+deb12-amd64-unsigned - broken
";

    #[test]
    fn picks_the_newest_generic_package_of_each_series() {
        // Numerically, not as text: 57 > 9, 117 > 99.
        assert_eq!(newest_package(Kernel::Debian6_1, SEARCH).as_deref(), Some("linux-image-6.1.0-57-amd64-unsigned"));
        assert_eq!(
            newest_package(Kernel::Debian6_12, SEARCH).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(newest_package(Kernel::Debian6_1, ""), None);
        assert_eq!(newest_package(Kernel::Host, SEARCH), None);
    }

    #[test]
    fn package_keys_reject_other_flavours_and_series() {
        use Kernel::{Debian6_1, Debian6_12};
        for (kernel, package, key) in [
            (Debian6_1, "linux-image-6.1.0-57-amd64-unsigned", Some((57, 0))),
            (Debian6_1, "linux-image-6.1.0-57-cloud-amd64-unsigned", None),
            (Debian6_1, "linux-image-6.1.0-+5-amd64-unsigned", None),
            (Debian6_1, "linux-image-6.12.117+deb12-amd64-unsigned", None),
            (Debian6_12, "linux-image-6.12.117+deb12-amd64-unsigned", Some((117, 12))),
            (Debian6_12, "linux-image-6.12.117+deb12-rt-amd64-unsigned", None),
            (Debian6_12, "linux-image-6.1.0-57-amd64-unsigned", None),
        ] {
            assert_eq!(kernel.package_key(package), key, "{} {package}", kernel.name());
        }
    }

    #[test]
    fn reads_the_candidate_version() {
        let policy = "\
linux-image-6.1.0-57-amd64-unsigned:
  Installed: (none)
  Candidate: 6.1.192-3
  Version table:
     6.1.192-3 500
        500 http://deb.example/debian bookworm/main amd64 Packages
";
        assert_eq!(candidate_version(policy).as_deref(), Some("6.1.192-3"));
        assert_eq!(candidate_version("x:\n  Installed: (none)\n  Candidate: (none)\n"), None);
        assert_eq!(candidate_version(""), None);
    }

    #[test]
    fn cache_directories_name_their_package() {
        assert_eq!(
            cached_package("linux-image-6.12.117+deb12-amd64-unsigned_6.12.117-1~deb12u1"),
            Some("linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(
            cached_package(".partial-linux-image-6.1.0-57-amd64-unsigned_6.1.192-3")
                .and_then(|p| Kernel::Debian6_1.package_key(p)),
            None
        );
        assert_eq!(cached_package("linux-image-6.1.0-57-amd64-unsigned_"), None);
    }

    #[test]
    fn parses_kernel_options_and_command() {
        let (vm, command) = parse_args(&strings(&[
            "--kernel",
            "6.1",
            "--memory=1536M",
            "--timeout",
            "60",
            "-v",
            "--",
            "tracer",
            "watch",
            "--port",
            "53",
        ]))
        .expect("valid arguments");
        assert_eq!(
            vm,
            Vm { kernel: Kernel::Debian6_1, memory: "1536M".into(), timeout: Duration::from_secs(60), verbose: true }
        );
        assert_eq!(command, strings(&["tracer", "watch", "--port", "53"]));

        let (vm, command) = parse_args(&strings(&["--kernel=6.12", "--", "sh", "-c", "exit 3"])).expect("valid");
        assert_eq!(vm, Vm::new(Kernel::Debian6_12));
        assert_eq!(command, strings(&["sh", "-c", "exit 3"]));
    }

    #[test]
    fn rejects_bad_arguments() {
        let err = |args: &[&str]| parse_args(&strings(args)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(&["--", "true"]).contains("--kernel is required"));
        assert!(err(&["--kernel", "5.15", "--", "true"]).contains("unknown kernel `5.15`"));
        assert!(err(&["--kernel", "6.1"]).contains("no command given"));
        assert!(err(&["--kernel", "6.1", "--"]).contains("no command given"));
        assert!(err(&["--kernel", "6.1", "true"]).contains("unknown argument `true`"));
        assert!(err(&["--kernel"]).contains("--kernel needs a value"));
        assert!(err(&["--kernel", "6.1", "--memory", "2X", "--", "true"]).contains("--memory 2X"));
        assert!(err(&["--kernel", "6.1", "--timeout", "0", "--", "true"]).contains("--timeout 0"));
        assert!(err(&["--kernel", "6.1", "--verbose=yes", "--", "true"]).contains("unknown"));
    }

    #[test]
    fn memory_sizes() {
        for ok in ["2G", "2048", "1536M", "512m"] {
            assert!(valid_memory(ok), "{ok}");
        }
        for bad in ["", "G", "2GG", "-2G", "0", "2 G", "2GiB"] {
            assert!(!valid_memory(bad), "{bad}");
        }
    }

    #[test]
    fn guest_script_quotes_every_word_and_reports_the_exit_code() {
        let script = guest_script(
            Path::new("/w/it's"),
            &strings(&["sh", "-c", "echo \"$1\"; exit 3", "x", "a b"]),
            Path::new("/w/target/xtask-vm/exit-code-1"),
        );
        assert_eq!(
            script,
            "cd -- '/w/it'\\''s' && 'sh' '-c' 'echo \"$1\"; exit 3' 'x' 'a b'\n\
             rc=$?\n\
             echo \"$rc\" > '/w/target/xtask-vm/exit-code-1'\n\
             exit \"$rc\"\n"
        );
    }

    #[test]
    fn shows_commands_as_typed() {
        assert_eq!(shell_words(&strings(&["sh", "-c", "exit 3", "it's", ""])), "sh -c 'exit 3' 'it'\\''s' ''");
        assert_eq!(
            shell_words(&strings(&["target/debug/tracer", "watch", "--port=53"])),
            "target/debug/tracer watch --port=53"
        );
    }

    #[test]
    fn kernel_names_round_trip() {
        for k in [Kernel::Debian6_1, Kernel::Debian6_12, Kernel::Host] {
            assert_eq!(Kernel::parse(k.name()).ok(), Some(k));
        }
    }
}
