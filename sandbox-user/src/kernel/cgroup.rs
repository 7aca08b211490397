//! Sandbox cgroups: one cgroup v2 directory per sandbox, `<cgroup2 root>/leash-<id>`.
//!
//! The cgroup is what the network programs attach to and what the maps are keyed by (its id is
//! the directory's inode number). Processes enter it before they exec, and leave it only by
//! dying: the agent runs unprivileged and cannot write to any `cgroup.procs`.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Prefix of every sandbox cgroup directory name (and of its pin directory).
pub const PREFIX: &str = "leash-";

/// A sandbox cgroup.
#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    path: PathBuf,
    id: u64,
}

impl SandboxCgroup {
    /// Creates `<root>/leash-<name>`; fails if it already exists.
    pub fn create(root: &Path, name: &str) -> Result<Self> {
        let path = root.join(format!("{PREFIX}{name}"));
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Self::open(path)
    }

    /// Opens an existing cgroup directory.
    pub fn open(path: PathBuf) -> Result<Self> {
        let id = fs::metadata(&path).with_context(|| format!("reading cgroup {}", path.display()))?.ino();
        Ok(Self { path, id })
    }

    /// A cgroup known by its path and id, which may be gone (to remove what is left of it).
    pub fn known(path: PathBuf, id: u64) -> Self {
        Self { path, id }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id the kernel reports to BPF programs (`bpf_get_current_cgroup_id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// An open directory handle, which is what program attachment takes.
    pub fn dir(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("opening cgroup {}", self.path.display()))
    }

    /// The cgroup's directory, open: what `clone3(CLONE_INTO_CGROUP)` starts a process in.
    pub fn open_dir(&self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt as _;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let p = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kills every process in the cgroup and waits (up to `timeout`) until it is empty.
    /// Uses `cgroup.kill` (5.14+); before, freezes the cgroup (5.2+; a quarter of `timeout` at
    /// most) so that no process of it can fork or exit and free its pid while the listed pids are
    /// signalled, then signals each one (a frozen process dies of SIGKILL). A cgroup still
    /// populated at the end is thawed again.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let kill_file = self.path.join("cgroup.kill");
        let used_kill_file = kill_file.exists() && write_str(&kill_file, "1").is_ok();
        let frozen = !used_kill_file && self.freeze(start + timeout / 4);
        let deadline = Instant::now() + timeout;
        loop {
            let pids = self.pids()?;
            if pids.is_empty() {
                return Ok(());
            }
            if !used_kill_file {
                for pid in pids.into_iter().filter(|pid| *pid > 0) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
            }
            if Instant::now() > deadline {
                if frozen {
                    let _ = write_str(&self.path.join("cgroup.freeze"), "0");
                }
                let how = if used_kill_file {
                    "cgroup.kill"
                } else if frozen {
                    "frozen"
                } else {
                    "not frozen"
                };
                bail!("processes still running in {} after SIGKILL ({how})", self.path.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The cgroup frozen (no process of it runs, forks or exits) until the guard is dropped;
    /// an error when it did not report frozen within `timeout` (it is thawed again).
    pub fn frozen(&self, timeout: Duration) -> Result<Frozen<'_>> {
        if !self.freeze(Instant::now() + timeout) {
            let _ = write_str(&self.path.join("cgroup.freeze"), "0");
            bail!("{} did not freeze within {timeout:?}", self.path.display());
        }
        Ok(Frozen(self))
    }

    /// Freezes the cgroup and waits (until `deadline`) for it to report frozen. False when it
    /// could not be frozen in time.
    fn freeze(&self, deadline: Instant) -> bool {
        if write_str(&self.path.join("cgroup.freeze"), "1").is_err() {
            return false;
        }
        loop {
            let events = fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default();
            if events.lines().any(|l| l.trim() == "frozen 1") {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes the (empty) cgroup directory, retrying briefly while the kernel finishes
    /// releasing exited tasks.
    pub fn remove(self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).with_context(|| format!("removing cgroup {}", self.path.display())),
            }
        }
    }
}

/// Every `leash-*` cgroup directly under `root`, with the name after the prefix.
pub fn list(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(PREFIX) {
            if entry.file_type()?.is_dir() {
                out.push((rest.to_owned(), entry.path()));
            }
        }
    }
    Ok(out)
}

fn write_str(path: &Path, s: &str) -> std::io::Result<()> {
    OpenOptions::new().write(true).open(path)?.write_all(s.as_bytes())
}

/// A cgroup frozen by [`SandboxCgroup::frozen`]: thawed when dropped.
pub struct Frozen<'a>(&'a SandboxCgroup);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = write_str(&self.0.path.join("cgroup.freeze"), "0");
    }
}
