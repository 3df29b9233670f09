//! Where `tracer watch --write FILE` writes, decided the way a program running as root must
//! decide it: it never follows a link, never writes into a file someone else owns or that has
//! another name elsewhere (a hard link), never opens a FIFO or device, and never destroys an
//! earlier capture before a new one exists.
//!
//! Without `--force` FILE must not exist: it is created exclusively, mode 0600. With
//! `--force` an existing FILE is replaced only when it is a regular file of the caller's
//! with no other link, and only at the end: the capture is written to a temporary file in
//! the same directory and renamed over FILE once the watch ended, so a failed attach or a
//! crash leaves the earlier capture as it was.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// An open capture file and how it reaches its name.
pub(crate) struct CaptureFile {
    /// The name the user gave.
    path: PathBuf,
    /// What is written: `path` itself, or a temporary file beside it.
    written: PathBuf,
    /// Kept to sync the data before the capture is called done.
    file: File,
    /// Whether `written` replaces `path` at the end (`--force` over an existing file).
    replaces: bool,
}

/// Why a capture file was refused, in words for the one-line error.
#[derive(Debug)]
pub(crate) struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

const MODE: u32 = 0o600;

fn exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(MODE)
        // No link is followed, and opening never blocks (a FIFO would wait for a reader).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

impl CaptureFile {
    /// Opens the file the capture goes to; returns it with a handle to write through.
    pub(crate) fn create(path: &Path, force: bool) -> Result<(CaptureFile, File), Refused> {
        let shown = path.display();
        match exclusive(path) {
            Ok(file) => return CaptureFile::opened(path, path.to_path_buf(), file, false),
            Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                return Err(Refused(format!(
                    "cannot create {shown}: {err}; give --write a path in a directory you can write"
                )));
            }
            Err(_) => {}
        }
        if !force {
            return Err(Refused(format!(
                "{shown} already exists and tracer does not overwrite files: choose a new name, or add --force to replace a capture of yours"
            )));
        }
        existing_is_replaceable(path)?;
        let temporary = temporary_beside(path);
        let file = exclusive(&temporary).map_err(|err| {
            Refused(format!(
                "cannot create {} to replace {shown}: {err}; give --write a path in a directory you can write",
                temporary.display()
            ))
        })?;
        CaptureFile::opened(path, temporary, file, true)
    }

    fn opened(path: &Path, written: PathBuf, file: File, replaces: bool) -> Result<(CaptureFile, File), Refused> {
        // The mode asked for at creation is reduced by the umask; 0600 exactly is what it
        // must be (never readable by others, always by its owner).
        let writer = file.set_permissions(std::fs::Permissions::from_mode(MODE)).and_then(|()| file.try_clone());
        match writer {
            Ok(writer) => Ok((CaptureFile { path: path.to_path_buf(), written, file, replaces }, writer)),
            Err(err) => {
                let _ = std::fs::remove_file(&written);
                Err(Refused(format!("cannot prepare {}: {err}", written.display())))
            }
        }
    }

    /// The file being written, when it is not the one named (it replaces that one at the end).
    pub(crate) fn temporary(&self) -> Option<&Path> {
        self.replaces.then_some(self.written.as_path())
    }

    /// The watch ended: the data reaches the disk, and with `--force` the capture takes
    /// its name.
    pub(crate) fn finish(self) -> io::Result<()> {
        self.file.sync_all()?;
        if self.replaces {
            std::fs::rename(&self.written, &self.path)?;
        }
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            // The new name must survive a crash too.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The watch never started: what was created goes, and an earlier capture stays as it was.
    pub(crate) fn abandon(self) {
        // Only what this process created, and only while the name still points at it.
        let ours = match (self.file.metadata(), std::fs::symlink_metadata(&self.written)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        };
        if ours {
            let _ = std::fs::remove_file(&self.written);
        }
    }
}

/// What `--force` may replace: a regular file, of the caller, with no other name.
fn existing_is_replaceable(path: &Path) -> Result<(), Refused> {
    let shown = path.display();
    // Opened without following a link and without blocking on a FIFO, then looked at through
    // the open file: what is checked is what is there.
    let existing = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::ELOOP) => {
                Refused(format!("{shown} is a symbolic link: refused, tracer never writes through links"))
            }
            _ => Refused(format!("cannot look at {shown}: {err}")),
        })?;
    let meta = existing.metadata().map_err(|err| Refused(format!("cannot look at {shown}: {err}")))?;
    if !meta.is_file() {
        return Err(Refused(format!(
            "{shown} is not a regular file (a FIFO, device or directory): refused, choose another name"
        )));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let caller = unsafe { libc::geteuid() };
    if meta.uid() != caller {
        return Err(Refused(format!(
            "{shown} belongs to uid {}, not to you (uid {caller}): refused even with --force, choose another name",
            meta.uid()
        )));
    }
    if meta.nlink() > 1 {
        return Err(Refused(format!(
            "{shown} has {} names (hard links): replacing it would leave the others, refused; choose another name",
            meta.nlink()
        )));
    }
    Ok(())
}

/// `.NAME.tracer-PID.partial` in NAME's directory: the rename at the end stays in one file
/// system, and the name says what it is if a crash leaves it behind.
fn temporary_beside(path: &Path) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".tracer-{}.partial", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::system::scratch_dir::ScratchDir;

    #[test]
    fn a_new_file_is_created_0600_and_an_existing_one_is_refused() {
        let dir = ScratchDir::new("file-new");
        let path = dir.join("dns.pcapng");
        let (capture, mut file) = CaptureFile::create(&path, false).expect("created");
        file.write_all(b"data").expect("write");
        capture.finish().expect("finish");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let refused = CaptureFile::create(&path, false).err().expect("refused");
        assert!(refused.0.contains("already exists") && refused.0.contains("--force"), "{refused}");
        assert_eq!(std::fs::read(&path).expect("read"), b"data");
    }

    #[test]
    fn force_replaces_only_at_the_end_and_abandon_keeps_the_old_capture() {
        let dir = ScratchDir::new("file-force");
        let path = dir.file("dns.pcapng", b"old capture");
        let (capture, mut file) = CaptureFile::create(&path, true).expect("created");
        let temporary = capture.temporary().expect("a temporary file").to_path_buf();
        file.write_all(b"new").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"old capture", "untouched while the watch runs");
        capture.abandon();
        assert!(!temporary.exists());
        assert_eq!(std::fs::read(&path).expect("read"), b"old capture");

        let (capture, mut file) = CaptureFile::create(&path, true).expect("created");
        file.write_all(b"new capture").expect("write");
        capture.finish().expect("finish");
        assert_eq!(std::fs::read(&path).expect("read"), b"new capture");
    }

    #[test]
    fn links_fifos_and_hard_links_are_refused_even_with_force() {
        let dir = ScratchDir::new("file-refused");
        let target = dir.file("target", b"keep");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let hard = dir.join("hard");
        std::fs::hard_link(&target, &hard).expect("hard link");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for (path, says) in [(&link, "symbolic link"), (&hard, "hard links"), (&fifo, "not a regular file")] {
            for force in [false, true] {
                let refused = CaptureFile::create(path, force).err().expect("refused");
                let expected = if force { says } else { "already exists" };
                assert!(refused.0.contains(expected), "{} (force {force}): {refused}", path.display());
            }
        }
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
    }
}
