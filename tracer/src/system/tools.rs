//! Runs the node's own tools (`iptables-save`, `nft`, ...) the way a program running as
//! root on a production node must: only from fixed system directories, only when the file
//! and every directory and link on its way are root's and writable by no one else, with a
//! cleared environment, a deadline and a cap on what it may print.
//!
//! PATH is never consulted: a root shell with `.` or an empty entry in PATH, started in a
//! directory someone else can write, would otherwise run that someone's program. And the
//! caller's environment (`LD_PRELOAD`, `XTABLES_LIBDIR`, ...) never reaches the tool.

use std::{
    collections::HashMap,
    fmt,
    io::{self, Read},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

/// Where the tools tracer runs are installed on every distribution it knows.
pub(crate) const HELPER_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// The PATH a helper gets, for tools that run others by name.
const HELPER_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How long one run may take: a large ruleset lists in well under a second.
pub(crate) const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most a helper may print; a ruleset of a hundred thousand rules fits.
const STDOUT_LIMIT: usize = 256 << 20;
const STDERR_LIMIT: usize = 64 << 10;

/// Symbolic links followed at most on the way to a tool (alternatives add two or three).
const MAX_LINKS: usize = 16;

#[derive(Debug)]
pub(crate) enum HelperError {
    /// Not installed in any of [`HELPER_DIRS`].
    Missing,
    /// Installed, but a file, link or directory on its way may be changed by someone other
    /// than root: it is not run.
    Unsafe(String),
    /// It could not be started, or reading its output failed.
    Io(io::Error),
    TimedOut(Duration),
    /// It printed more than tracer reads.
    TooMuchOutput(usize),
}

impl fmt::Display for HelperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelperError::Missing => write!(f, "not installed in {}", HELPER_DIRS.join(", ")),
            HelperError::Unsafe(why) => write!(f, "not run: {why}"),
            HelperError::Io(err) => write!(f, "{err}"),
            HelperError::TimedOut(after) => write!(f, "killed after {} s without finishing", after.as_secs()),
            HelperError::TooMuchOutput(limit) => write!(f, "printed more than {} MiB", limit >> 20),
        }
    }
}

/// A tool as found: the checked file to run and the name it was found under. Tools like
/// `iptables-nft-save` are links to one program that does what its `argv[0]` names, so it
/// is started under that name.
#[derive(Clone, Debug)]
pub(crate) struct Located {
    pub program: PathBuf,
    pub invoked_as: PathBuf,
}

/// A finished run.
pub(crate) struct HelperRun {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// The checked location of a tool, found once per process: the answer does not change
/// while tracer runs, and checking every link on the way costs a few system calls.
pub(crate) fn locate(name: &str) -> Result<Located, HelperError> {
    static FOUND: OnceLock<Mutex<HashMap<String, Result<Located, String>>>> = OnceLock::new();
    let found = FOUND.get_or_init(|| Mutex::new(HashMap::new()));
    let mut found = found.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let answer = found.entry(name.to_string()).or_insert_with(|| match locate_uncached(name) {
        Ok(path) => Ok(path),
        Err(HelperError::Missing) => Err(String::new()),
        Err(err) => Err(err.to_string()),
    });
    match answer {
        Ok(path) => Ok(path.clone()),
        Err(why) if why.is_empty() => Err(HelperError::Missing),
        Err(why) => Err(HelperError::Unsafe(why.trim_start_matches("not run: ").to_string())),
    }
}

fn locate_uncached(name: &str) -> Result<Located, HelperError> {
    if name.is_empty() || name.contains('/') {
        return Err(HelperError::Unsafe(format!("{name:?} is not a plain program name")));
    }
    for dir in HELPER_DIRS {
        let candidate = Path::new(dir).join(name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(_) => {
                let program = checked_target(&candidate).map_err(HelperError::Unsafe)?;
                return Ok(Located { program, invoked_as: candidate });
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(HelperError::Io(err)),
        }
    }
    Err(HelperError::Missing)
}

/// Follows `path` through its links to the file it runs, checking that root owns, and
/// only root can write, every link, the file and each directory they are in.
fn checked_target(path: &Path) -> Result<PathBuf, String> {
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        let parent = current.parent().ok_or_else(|| format!("{} has no directory", current.display()))?;
        let parent = std::fs::canonicalize(parent).map_err(|err| format!("{}: {err}", parent.display()))?;
        check_dir_chain(&parent)?;
        let meta = std::fs::symlink_metadata(&current).map_err(|err| format!("{}: {err}", current.display()))?;
        check_owner_and_mode(&current, &meta)?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&current).map_err(|err| format!("{}: {err}", current.display()))?;
            current = if target.is_absolute() { target } else { parent.join(target) };
            continue;
        }
        if !meta.is_file() {
            return Err(format!("{} is not a regular file", current.display()));
        }
        return Ok(parent.join(current.file_name().unwrap_or_default()));
    }
    Err(format!("{} goes through more than {MAX_LINKS} symbolic links", path.display()))
}

/// `dir` and every directory above it.
fn check_dir_chain(dir: &Path) -> Result<(), String> {
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor).map_err(|err| format!("{}: {err}", ancestor.display()))?;
        check_owner_and_mode(ancestor, &meta)?;
    }
    Ok(())
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!("{} belongs to uid {}, not root", path.display(), meta.uid()));
    }
    // A link's own mode is always 0777 and means nothing; its directory is what guards it.
    if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by group or others (mode {:o})", path.display(), meta.mode() & 0o7777));
    }
    Ok(())
}

/// Runs the tool `name` with `args`, from its checked location, in a cleared environment,
/// for at most `timeout`.
pub(crate) fn run(name: &str, args: &[&str], timeout: Duration) -> Result<HelperRun, HelperError> {
    let located = locate(name)?;
    // The checked file itself is run (a link swapped after the check changes nothing),
    // under the name it was found by.
    let mut child = Command::new(&located.program)
        .arg0(&located.invoked_as)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", HELPER_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HelperError::Io)?;
    let stdout = child.stdout.take().map(|pipe| thread::spawn(move || read_capped(pipe, STDOUT_LIMIT)));
    let stderr = child.stderr.take().map(|pipe| thread::spawn(move || read_capped(pipe, STDERR_LIMIT)));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(HelperError::Io)? {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => break None,
            None => thread::sleep(Duration::from_millis(2)),
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(HelperError::TimedOut(timeout));
    };
    let collect = |reader: Option<OutputReader>, limit: usize| -> Result<Vec<u8>, HelperError> {
        let Some(reader) = reader else { return Ok(Vec::new()) };
        match reader.join() {
            Ok(Ok((bytes, false))) => Ok(bytes),
            Ok(Ok((_, true))) => Err(HelperError::TooMuchOutput(limit)),
            Ok(Err(err)) => Err(HelperError::Io(err)),
            Err(_) => Err(HelperError::Io(io::Error::other("the output reader panicked"))),
        }
    };
    Ok(HelperRun { status, stdout: collect(stdout, STDOUT_LIMIT)?, stderr: collect(stderr, STDERR_LIMIT)? })
}

/// A thread reading one of a helper's pipes: the bytes, and whether there were more.
type OutputReader = thread::JoinHandle<io::Result<(Vec<u8>, bool)>>;

/// Reads at most `limit` bytes; true when there was more (the rest is read and dropped, so
/// the writer is not blocked on a full pipe while it is waited for).
fn read_capped(mut pipe: impl Read, limit: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    (&mut pipe).take(limit as u64).read_to_end(&mut bytes)?;
    let mut rest = [0u8; 4096];
    let mut over = false;
    loop {
        match pipe.read(&mut rest) {
            Ok(0) => return Ok((bytes, over)),
            Ok(_) => over = true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn runs_a_system_tool_with_a_clean_environment() {
        let run = run("env", &[], HELPER_TIMEOUT).expect("env runs");
        assert!(run.status.success());
        let text = String::from_utf8_lossy(&run.stdout);
        let mut vars: Vec<&str> = text.lines().collect();
        vars.sort_unstable();
        assert_eq!(vars, vec!["LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    }

    #[test]
    fn names_with_a_slash_and_missing_tools_are_refused() {
        assert!(matches!(locate("../bin/sh"), Err(HelperError::Unsafe(_))));
        assert!(matches!(locate("tracer-no-such-tool"), Err(HelperError::Missing)));
    }

    #[test]
    fn a_tool_that_does_not_finish_is_killed() {
        let started = Instant::now();
        let result = run("sleep", &["30"], Duration::from_millis(200));
        assert!(matches!(result, Err(HelperError::TimedOut(_))), "{:?}", result.err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn files_others_can_write_or_own_are_refused() {
        let dir = std::env::temp_dir().join(format!("tracer-helpers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let tool = dir.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let refused = checked_target(&tool);
        let _ = std::fs::remove_dir_all(&dir);
        // /tmp itself is world-writable (sticky): refused either way.
        assert!(refused.is_err());
    }
}
