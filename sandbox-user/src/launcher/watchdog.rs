//! The agent dies with leash. `PR_SET_PDEATHSIG` reaches only the agent's first process; a
//! detached grandchild would outlive a SIGKILLed leash, confined by the pinned programs to a
//! proxy address nobody serves any more, which another local user could then bind and serve.
//! So `leash run` starts a watchdog beside itself (outside the sandbox, as root, so the agent
//! cannot signal it): a copy of leash blocked reading a pipe whose only write end leash holds.
//! When leash exits for any reason the read returns, and the watchdog kills every process left
//! in the sandbox cgroup. It holds a copy of the proxy's listening socket (inherited, never
//! accepted on) until then, so the port cannot be taken by anyone else while a process
//! of the sandbox is alive. Once the sandbox is empty it also removes the directories leash held
//! in the working directory (`workdir_guard`), which leash sends it over the same pipe, so a
//! killed leash leaves none behind. Cleaning up the cgroup and pins stays with the next run's
//! reaper.

use std::io::Read as _;
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::kernel::cgroup::SandboxCgroup;

/// The hidden subcommand the watchdog runs as.
pub const SUBCOMMAND: &str = "__watchdog";

/// A running watchdog; dropping it (or leash dying) releases it.
pub struct Watchdog {
    /// The pipe's write end: closing it is the signal.
    _alive: OwnedFd,
    child: Child,
}

impl Watchdog {
    /// Starts a watchdog for the sandbox cgroup at `cgroup`, holding the proxy's `listener`.
    pub fn start(cgroup: &Path, listener: BorrowedFd<'_>) -> Result<Self> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("watchdog pipe")?;
        // The listener reaches the watchdog as a descriptor it inherits: a copy without
        // close-on-exec, closed here once the watchdog has it. No hook runs between fork and
        // exec, so std starts it with posix_spawn (vfork): leash's page tables are not copied and
        // leash takes no copy-on-write faults afterwards (a fork cost every start about 1 ms).
        // Nothing else starts a process while the copy exists: the agent is started later, by
        // this same thread.
        let held = dup_inheritable(listener).context("passing the proxy's socket to the watchdog")?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(SUBCOMMAND)
            .arg(cgroup)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            // Its own process group: a Ctrl-C on the terminal is for the agent, not for it.
            .process_group(0);
        let child = cmd.spawn().context("starting leash's watchdog");
        drop(held);
        Ok(Self { _alive: write, child: child? })
    }

    /// Tells the watchdog about directories leash holds for the agent (device, inode, path), to
    /// remove if leash dies before it does.
    pub fn hold<'a>(&self, held: impl Iterator<Item = (u64, u64, &'a Path)>) -> Result<()> {
        for (dev, ino, path) in held {
            let mut record = format!("{dev} {ino} ").into_bytes();
            record.extend_from_slice(path.as_os_str().as_encoded_bytes());
            record.push(0);
            let mut rest = record.as_slice();
            while !rest.is_empty() {
                let n = nix::unistd::write(&self._alive, rest).context("telling the watchdog")?;
                rest = &rest[n..];
            }
        }
        Ok(())
    }

    /// Stops the watchdog after a clean teardown.
    pub fn stop(mut self) {
        drop(self._alive);
        let _ = self.child.wait();
    }
}

/// A copy of `fd` that a started program inherits (no close-on-exec).
fn dup_inheritable(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD on a descriptor we borrow returns a new one, which we own.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(copy) })
}

/// The watchdog's body: wait for leash to go, then empty the sandbox cgroup. Exit code 0 when
/// the cgroup is empty or gone.
pub fn run(cgroup: &Path) -> Result<()> {
    let name = cgroup.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !name.starts_with("leash-") {
        bail!("{} is not a leash sandbox cgroup", cgroup.display());
    }
    let mut stdin = std::io::stdin();
    let mut held = Vec::new();
    let mut chunk = [0u8; 4096];
    // Returns 0 (end of file) when the last write end closes, that is when leash is gone.
    loop {
        match stdin.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if held.len() < MAX_HELD_BYTES => held.extend_from_slice(&chunk[..n]),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let killed = match cgroup.exists() {
        true => SandboxCgroup::open(cgroup.to_path_buf()).and_then(|c| c.kill_all(Duration::from_secs(5))),
        false => Ok(()),
    };
    // Only once no process of the sandbox is left to see a held directory go. The cgroup may be
    // gone already: another run's reaper empties and removes a dead leash's sandbox.
    let empty = match SandboxCgroup::open(cgroup.to_path_buf()).and_then(|c| c.pids()) {
        Ok(pids) => pids.is_empty(),
        Err(_) => !cgroup.exists(),
    };
    if empty {
        for record in held.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            remove_held(record);
        }
    }
    killed
}

/// Bounds what leash may send (a few dozen names of the policy's list, each a path).
const MAX_HELD_BYTES: usize = 1 << 20;

/// Removes one held directory (`<dev> <ino> <path>`) if it is still the empty one leash made.
fn remove_held(record: &[u8]) {
    use std::os::unix::fs::MetadataExt as _;
    let text = String::from_utf8_lossy(record);
    let mut parts = record.splitn(3, |b| *b == b' ');
    let (Some(dev), Some(ino), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
        eprintln!("leash watchdog: ignoring a malformed record: {text}");
        return;
    };
    let number = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.parse::<u64>().ok());
    let path = Path::new(std::ffi::OsStr::from_bytes(path));
    let same = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && Some(m.dev()) == number(dev) && Some(m.ino()) == number(ino));
    if same {
        let _ = std::fs::remove_dir(path);
    }
}
