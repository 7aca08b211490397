//! The agent dies with leash. `PR_SET_PDEATHSIG` reaches only the agent's first process; a
//! detached grandchild would outlive a SIGKILLed leash, confined by the pinned programs to a
//! proxy address nobody serves any more, which another local user could then bind and serve.
//! So `leash run` keeps a watchdog beside itself (outside the sandbox, as root, so the agent
//! cannot signal it), blocked reading a socket whose other end only leash holds. When leash exits
//! for any reason the read ends, and the watchdog kills every process left in the sandbox cgroup.
//! It holds the proxy's listening sockets until the cgroup is empty, so no one else can take
//! their ports while a process of the sandbox is alive. Then it also removes the directories
//! leash held in the working directory (`workdir_guard`), which leash sends it over the same
//! socket, so a killed leash leaves none behind. Cleaning up the cgroup and pins stays with the
//! next run's reaper.
//!
//! The watchdog is forked first thing in `leash run`, while leash has one thread and little memory
//! of its own: the copy is cheap, and it holds nothing leash reads later (no credentials file, no
//! key; its environment is leash's, as any child's is).
//! It learns the cgroup and gets the sockets once they exist. A process of its own, not a clone
//! sharing leash's memory: the OOM killer kills every process sharing the memory of the one it
//! picks, and before 5.16 so does a core dump. Starting a copy of leash's binary instead cost
//! every start about 1 ms of exec and dynamic linking.

use std::io::{IoSlice, IoSliceMut, Write as _};
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::kernel::cgroup::SandboxCgroup;

/// The watchdog's name in `/proc/<pid>/comm`.
const NAME: &std::ffi::CStr = c"leash-watchdog";
/// A message naming the cgroup, with the sockets to hold.
const WATCH: u8 = b'W';
/// A message naming a held directory: `<dev> <ino> <path>`.
const HOLD: u8 = b'H';
/// Bounds what leash may send (a few dozen names of the policy's list, each a path).
const MAX_HELD_BYTES: usize = 1 << 20;
/// The most sockets a watch message passes (the proxy's, and transparent mode's two).
const MAX_SOCKETS: usize = 4;
/// How long a clean `leash run` waits for its watchdog to exit.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A running watchdog; dropping it (or leash dying) releases it.
pub struct Watchdog {
    /// Leash's end of the socket pair: closing it is the signal.
    link: OwnedFd,
    pid: nix::unistd::Pid,
}

impl Watchdog {
    /// Forks the watchdog.
    ///
    /// # Safety
    /// Only while the process has one thread (before the async runtime starts): the child goes on
    /// with a copy of this thread's memory alone.
    pub unsafe fn fork() -> Result<Self> {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .context("watchdog socket pair")?;
        // SAFETY: the caller guarantees one thread; the child never returns from `serve`.
        match unsafe { nix::unistd::fork() }.context("starting leash's watchdog")? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                serve(theirs)
            }
            nix::unistd::ForkResult::Parent { child } => Ok(Self { link: ours, pid: child }),
        }
    }

    /// Tells the watchdog the sandbox cgroup to empty when leash goes, and gives it `sockets`
    /// (the proxy's) to hold until then.
    pub fn watch(&self, cgroup: &Path, sockets: &[BorrowedFd<'_>]) -> Result<()> {
        let mut message = vec![WATCH];
        message.extend_from_slice(cgroup.as_os_str().as_bytes());
        let fds: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        socket::sendmsg::<()>(self.link.as_raw_fd(), &[IoSlice::new(&message)], &rights, MsgFlags::empty(), None)
            .context("telling the watchdog the sandbox")?;
        Ok(())
    }

    /// Tells the watchdog about directories leash holds for the agent (device, inode, path), to
    /// remove if leash dies before it does.
    pub fn hold<'a>(&self, held: impl Iterator<Item = (u64, u64, &'a Path)>) -> Result<()> {
        for (dev, ino, path) in held {
            let mut record = vec![HOLD];
            record.extend_from_slice(format!("{dev} {ino} ").as_bytes());
            record.extend_from_slice(path.as_os_str().as_bytes());
            socket::send(self.link.as_raw_fd(), &record, MsgFlags::empty()).context("telling the watchdog")?;
        }
        Ok(())
    }

    /// Lets the watchdog go once leash has emptied the sandbox cgroup: it empties it once more,
    /// gives the ports up and exits while leash tears the rest down. [`Stopping::wait`] reaps it.
    pub fn release(self) -> Stopping {
        let Self { link, pid } = self;
        drop(link);
        Stopping { pid }
    }
}

/// A watchdog told to stop.
pub struct Stopping {
    pid: nix::unistd::Pid,
}

impl Stopping {
    /// Waits for the watchdog, a bounded time: one that is still killing what is left of the
    /// sandbox after that goes on alone.
    pub fn wait(self) {
        let pid = self.pid;
        if !reaped_within(pid, STOP_WAIT) {
            crate::say!("leash: warning: the watchdog (pid {pid}) is still emptying the sandbox; it goes on alone");
        }
    }
}

/// Waits up to `timeout` for child `pid` to exit, and reaps it. False if it is still running.
fn reaped_within(pid: nix::unistd::Pid, timeout: Duration) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + timeout;
    // SAFETY: pidfd_open(2) of our own child; the descriptor is checked and owned below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    // SAFETY: a descriptor the kernel just made, ours alone.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) });
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            _ => return true,
        }
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else { return false };
        match &pidfd {
            // Readable once the child has exited.
            Some(fd) => {
                let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: poll(2) of one local pollfd.
                unsafe { libc::poll(&mut poll, 1, left.as_millis().try_into().unwrap_or(i32::MAX)) };
            }
            // Before pidfd_open (5.3), or where a seccomp profile refuses it.
            None => std::thread::sleep(left.min(Duration::from_millis(1))),
        }
    }
}

/// The watchdog: wait for leash to go, empty the sandbox cgroup, remove the held directories.
fn serve(link: OwnedFd) -> ! {
    detach(link.as_raw_fd());
    let mut cgroup: Option<PathBuf> = None;
    let mut sockets: Vec<OwnedFd> = Vec::new();
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut held_bytes = 0;
    // Ends (end of file) when leash's end closes, that is when leash is gone.
    while let Some((message, fds)) = receive(&link) {
        match message.split_first() {
            Some((&WATCH, path)) if cgroup.is_none() => {
                cgroup = Some(PathBuf::from(std::ffi::OsStr::from_bytes(path)));
                sockets = fds;
            }
            Some((&HOLD, record)) if held_bytes + record.len() <= MAX_HELD_BYTES => {
                held_bytes += record.len();
                held.push(record.to_vec());
            }
            _ => {}
        }
    }
    // Without a sandbox cgroup (a degraded run) nothing says the agent is gone: what leash held
    // stays held, as when leash ends while a process of the agent lives on.
    if let Some(path) = &cgroup {
        empty_cgroup(path);
        for record in &held {
            remove_held(record);
        }
    }
    drop(sockets);
    // SAFETY: _exit without running the exit handlers of a copy of leash.
    unsafe { libc::_exit(0) }
}

/// Makes the forked process the watchdog: its own process group (a Ctrl-C on the terminal is
/// for the agent), a name, signals that would end it early ignored (`pkill leash` matches its
/// name), stdin and stdout on /dev/null, and no descriptor of leash's but `link` and stderr.
fn detach(link: RawFd) {
    // SAFETY: calls on the watchdog's own process state, with valid arguments.
    unsafe {
        libc::setpgid(0, 0);
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr());
        for signal in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
        let closed = [(3, link - 1), (link + 1, libc::c_int::MAX)].into_iter().all(|(first, last)| {
            first > last || libc::syscall(libc::SYS_close_range, first as u32, last as u32, 0u32) == 0
        });
        if !closed {
            // close_range is 5.9+, and some seccomp profiles refuse it.
            let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect();
            for fd in open.into_iter().filter(|fd| *fd > 2 && *fd != link) {
                libc::close(fd);
            }
        }
    }
}

/// The next message and the descriptors it carried; `None` at end of file or on an error.
fn receive(link: &OwnedFd) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buffer = vec![0u8; 8192];
    loop {
        let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = socket::recvmsg::<()>(link.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC);
        let message = match received {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
            Ok(m) => m,
        };
        if message.bytes == 0 {
            return None;
        }
        let mut fds = Vec::new();
        for cmsg in message.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors the kernel just installed for this process.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let (bytes, cut) = (message.bytes, message.flags.contains(MsgFlags::MSG_TRUNC));
        if cut {
            continue;
        }
        return Some((buffer[..bytes].to_vec(), fds));
    }
}

/// Kills what is left in the cgroup until it is empty or gone. While a process of the sandbox is
/// alive the watchdog keeps its sockets, so it keeps trying.
fn empty_cgroup(path: &Path) {
    let mut said = false;
    loop {
        // Gone: leash removed it, the usual end. Asked first, so that the usual end makes no
        // error (with RUST_BACKTRACE set, each captures a backtrace, and leash waits for this).
        if !path.exists() {
            return;
        }
        let killed = SandboxCgroup::open(path.to_path_buf()).and_then(|c| c.kill_all(Duration::from_secs(5)));
        if killed.is_ok() || !path.exists() {
            return;
        }
        if let (Err(e), false) = (killed, said) {
            // Not eprintln: a panic on a closed stderr would end the watchdog, and free the ports.
            let _ = writeln!(std::io::stderr(), "leash watchdog: {e:#}; still trying");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Removes one held directory (`<dev> <ino> <path>`) if it is still the empty one leash made.
fn remove_held(record: &[u8]) {
    use std::os::unix::fs::MetadataExt as _;
    let mut parts = record.splitn(3, |b| *b == b' ');
    let (Some(dev), Some(ino), Some(path)) = (parts.next(), parts.next(), parts.next()) else { return };
    let number = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| s.parse::<u64>().ok());
    let path = Path::new(std::ffi::OsStr::from_bytes(path));
    let same = std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && Some(m.dev()) == number(dev) && Some(m.ino()) == number(ino));
    if same {
        let _ = std::fs::remove_dir(path);
    }
}
