//! Where a policy's `kernel:` paths are looked up: this process's own filesystem (`leash run`),
//! or another process's root directory (the node daemon resolving a pod's paths through
//! `/proc/<pid>/root`). In another root every lookup goes through `openat2(RESOLVE_IN_ROOT)`,
//! so an absolute symlink inside the pod's image (`/var/run -> /run`) resolves inside the pod,
//! never on the node. Minimum kernel for a foreign root: 5.6.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// A filesystem root for lookups.
pub enum FsRoot {
    /// This process's own root.
    Own,
    /// Another root, open as a directory.
    Dir(OwnedFd),
}

impl FsRoot {
    /// The root directory of process `pid` (needs ptrace-read access to it: the node daemon has
    /// CAP_SYS_PTRACE).
    pub fn of_process(pid: u32) -> io::Result<Self> {
        let path = format!("/proc/{pid}/root");
        let dir = File::open(&path)?;
        Ok(Self::Dir(dir.into()))
    }

    /// `stat` following symlinks.
    pub fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        match self {
            Self::Own => std::fs::metadata(path),
            Self::Dir(root) => open_in(root, path, libc::O_PATH, true)?.metadata(),
        }
    }

    /// The file at `path`, following symlinks, open as `O_PATH` (it names the file; nothing is
    /// read).
    pub fn open_path(&self, path: &Path) -> io::Result<File> {
        match self {
            Self::Own => {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path)
            }
            Self::Dir(root) => open_in(root, path, libc::O_PATH, true),
        }
    }

    /// `lstat`.
    pub fn symlink_metadata(&self, path: &Path) -> io::Result<Metadata> {
        match self {
            Self::Own => std::fs::symlink_metadata(path),
            Self::Dir(root) => open_in(root, path, libc::O_PATH | libc::O_NOFOLLOW, false)?.metadata(),
        }
    }

    /// The entries of directory `path`, as paths below it, sorted; empty when unreadable. At
    /// most `max` of them are read (a pod's image decides how many there are): a caller that
    /// gets `max` knows there may be more.
    pub fn read_dir_sorted(&self, path: &Path, max: usize) -> Vec<PathBuf> {
        let names: Vec<PathBuf> = match self {
            Self::Own => std::fs::read_dir(path)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).take(max).collect())
                .unwrap_or_default(),
            Self::Dir(root) => match open_in(root, path, libc::O_RDONLY | libc::O_DIRECTORY, true) {
                Ok(dir) => std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                    .map(|rd| rd.filter_map(|e| e.ok().map(|e| path.join(e.file_name()))).take(max).collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            },
        };
        let mut names = names;
        names.sort();
        names
    }

    /// Calls `f` with each entry of directory `path` (as a path below it) as it is read, in no
    /// particular order and without holding the listing, until `f` returns false; nothing when
    /// unreadable.
    pub fn each_entry(&self, path: &Path, mut f: impl FnMut(PathBuf) -> bool) {
        let entries = match self {
            Self::Own => std::fs::read_dir(path),
            Self::Dir(root) => match open_in(root, path, libc::O_RDONLY | libc::O_DIRECTORY, true) {
                Ok(dir) => std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())),
                Err(e) => Err(e),
            },
        };
        let Ok(entries) = entries else { return };
        for entry in entries.flatten() {
            if !f(path.join(entry.file_name())) {
                return;
            }
        }
    }

    pub fn exists(&self, path: &Path) -> bool {
        self.metadata(path).is_ok()
    }
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT)`.
fn open_in(root: &OwnedFd, path: &Path, flags: libc::c_int, follow: bool) -> io::Result<File> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
    let c = std::ffi::CString::new(relative.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64 | if follow { 0 } else { libc::O_NOFOLLOW as u64 };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // RESOLVE_IN_ROOT answers EAGAIN to a path through `..` when a rename or mount anywhere
    // on the host raced the lookup (`/var/run -> ../run` in many images): tried again.
    let mut tries = 0;
    let fd = loop {
        // SAFETY: openat2 reads the path and `how` (of the size given) and returns a new descriptor.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            break fd;
        }
        let e = io::Error::last_os_error();
        tries += 1;
        if e.raw_os_error() != Some(libc::EAGAIN) || tries == 8 {
            return Err(e);
        }
    };
    // SAFETY: the kernel returned a new descriptor we own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let base = std::env::temp_dir().join(format!("leash-fsroot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("run/secrets")).unwrap();
        std::fs::create_dir_all(base.join("var")).unwrap();
        std::fs::write(base.join("run/secrets/token"), b"t").unwrap();
        // /var/run -> /run, absolute: outside this root it would name the host's /run.
        std::os::unix::fs::symlink("/run", base.join("var/run")).unwrap();
        let root = FsRoot::Dir(File::open(&base).unwrap().into());
        let inside = root.metadata(Path::new("/var/run/secrets/token")).unwrap();
        let real = std::fs::metadata(base.join("run/secrets/token")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(inside.ino(), real.ino());
        assert!(root.symlink_metadata(Path::new("/var/run")).unwrap().file_type().is_symlink());
        assert_eq!(root.read_dir_sorted(Path::new("/run/secrets"), 10), vec![PathBuf::from("/run/secrets/token")]);
        // `..` cannot climb out of the root either.
        assert!(root.metadata(Path::new("/../../../../etc/passwd")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
