//! A process the daemon acts on, held by a pidfd rather than by its pid number.
//!
//! A pid number names whichever process holds it now: once its process exits and is reaped, the
//! number goes to the next process that forks, in any pod or on the host. A pidfd stays tied to
//! the one process it was opened for. The daemon reads `/proc/<pid>/...` (there is no pidfd
//! variant of most of it), so every read goes through [`Process::read`]: the pid is valid for
//! the whole read when the process is still alive after it (a live process keeps its number).
//!
//! The caller of a connection is taken with `SO_PEERPIDFD` (Linux 6.5+), the process that called
//! `connect`; on older kernels with `pidfd_open` of the `SO_PEERCRED` pid right at accept,
//! refused when that pid's process started after the accept (it is not the one that connected).
//! There, a process that exits and has its pid taken between `connect` and `accept` is not told
//! apart: the window is the accept loop's delay, not the life of the connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// `SO_PEERPIDFD` (asm-generic value, the same on every architecture leash builds for).
const SO_PEERPIDFD: libc::c_int = 77;

/// `KCMP_FILES` (`include/uapi/linux/kcmp.h`): whether two tasks share a descriptor table.
const KCMP_FILES: libc::c_int = 2;

/// One process, held by a pidfd.
#[derive(Debug)]
pub struct Process {
    pidfd: OwnedFd,
    /// Its pid in the daemon's pid namespace (the daemon runs in the host's).
    pid: u32,
}

/// The process at the other end of a unix socket and its effective uid when it connected.
#[derive(Debug)]
pub struct Peer {
    pub process: Process,
    pub uid: u32,
}

impl Process {
    /// Opens process `pid` (`ESRCH` when there is none, `EINVAL` for a thread that is not a
    /// thread-group leader).
    pub fn open(pid: u32) -> io::Result<Self> {
        let raw = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        if raw <= 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { pidfd, pid })
    }

    /// The process that connected `stream`, as held since it connected.
    pub fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
        let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
        let uid = cred.uid();
        let pid = u32::try_from(cred.pid()).map_err(|_| io::Error::other("the peer's pid is not visible here"))?;
        let process = match peer_pidfd(stream) {
            Ok(pidfd) => Self { pidfd, pid },
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                // Before 6.5: the pid may already name another process; one that started after
                // this moment certainly is another.
                let now = boot_ticks()?;
                let process = Self::open(pid)?;
                let started = process.read(start_ticks)?;
                if started > now {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                process
            }
            Err(e) => return Err(e),
        };
        if !process.alive() {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(Peer { process, uid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd, for `poll` (readable once the process has exited).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// False once the process has exited (a zombie counts as exited).
    pub fn alive(&self) -> bool {
        let mut fds = [libc::pollfd { fd: self.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        loop {
            // SAFETY: one valid pollfd, no waiting.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
            if rc >= 0 {
                return rc == 0;
            }
            if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }

    /// Runs `f` on the pid, and fails with `ESRCH` unless the process is alive before and after
    /// it: whatever `f` read from `/proc/<pid>` was this process's.
    pub fn read<T>(&self, f: impl FnOnce(u32) -> io::Result<T>) -> io::Result<T> {
        let gone = || io::Error::from_raw_os_error(libc::ESRCH);
        if !self.alive() {
            return Err(gone());
        }
        let value = f(self.pid)?;
        if !self.alive() {
            return Err(gone());
        }
        Ok(value)
    }

    /// How many of its descriptors are sockets the network layer would never judge: every socket
    /// but unix and netlink ones (cgroup programs judge a socket by the cgroup it was created in,
    /// so one made before confinement reaches anything). Each socket descriptor is
    /// taken with `pidfd_getfd` and asked its family, which needs no network namespace's socket
    /// tables (a thread can leave the namespace, and a main thread that exited takes the
    /// process's `/proc/<pid>/net` with it). Every thread must use the main thread's descriptor
    /// table; one with a table of its own fails the check. `except` is the proxy's listening
    /// socket, which `leash confine`'s child holds until it execs.
    pub fn network_sockets(&self, except: Option<u64>) -> io::Result<usize> {
        self.read(|pid| {
            // A main thread that exited took its descriptor table; the other threads' hold theirs.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
                return Err(io::Error::other("the process's main thread exited while other threads run"));
            }
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse::<libc::pid_t>().ok()) else {
                    continue;
                };
                if tid as u32 == pid {
                    continue;
                }
                // SAFETY: kcmp(2) with plain integer arguments.
                let same = unsafe { libc::syscall(libc::SYS_kcmp, pid as libc::pid_t, tid, KCMP_FILES, 0, 0) };
                match same {
                    0 => {}
                    // That thread exited meanwhile, with its table.
                    -1 if io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) => {}
                    _ => return Err(io::Error::other("a thread of the process has a descriptor table of its own")),
                }
            }
            let mut held = std::collections::HashSet::new();
            for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
                let entry = entry?;
                let Some(fd) = entry.file_name().to_str().and_then(|f| f.parse::<RawFd>().ok()) else { continue };
                let link = match std::fs::read_link(entry.path()) {
                    Ok(link) => link,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let inode = link
                    .to_str()
                    .and_then(|l| l.strip_prefix("socket:["))
                    .and_then(|l| l.strip_suffix(']'))
                    .and_then(|i| i.parse::<u64>().ok());
                let Some(inode) = inode.filter(|i| Some(*i) != except) else { continue };
                // Every family but unix and netlink (which the cgroup programs never judge
                // either): IP, packet, vsock, and the rest (SMC, XDP, TIPC, RDS, ...).
                if !matches!(self.socket_family(fd)?, None | Some(libc::AF_UNIX | libc::AF_NETLINK)) {
                    held.insert(inode);
                }
            }
            Ok(held.len())
        })
    }

    /// The address family of the socket at the process's descriptor `fd`, taken with
    /// `pidfd_getfd`; `None` when the descriptor was closed meanwhile.
    fn socket_family(&self, fd: RawFd) -> io::Result<Option<libc::c_int>> {
        // SAFETY: pidfd_getfd(2) on the pidfd this value owns; the result is a new descriptor.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.pidfd().as_raw_fd(), fd, 0) };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EBADF) { Ok(None) } else { Err(e) };
        }
        // SAFETY: the kernel just returned this descriptor to us, and nothing else owns it.
        let got = unsafe { OwnedFd::from_raw_fd(got as RawFd) };
        let mut family: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `family`.
        let r = unsafe {
            libc::getsockopt(got.as_raw_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN, (&raw mut family).cast(), &mut len)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(family))
    }

    /// The real, effective, saved and filesystem uids (the `Uid:` line of its status).
    pub fn uids(&self) -> io::Result<[u32; 4]> {
        self.read(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).ok_or_else(|| io::Error::other("no Uid"))?;
            let mut uids = [0u32; 4];
            let mut fields = line.split_whitespace();
            for u in &mut uids {
                *u = fields.next().and_then(|f| f.parse().ok()).ok_or_else(|| io::Error::other("bad Uid line"))?;
            }
            Ok(uids)
        })
    }
}

/// `SO_PEERPIDFD` of `stream`.
fn peer_pidfd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel installed this new descriptor for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Clock ticks since boot (the unit of a process's start time in `/proc/<pid>/stat`).
fn boot_ticks() -> io::Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    Ok(secs * hz + nanos * hz / 1_000_000_000)
}

/// The start time of process `pid` in clock ticks since boot (field 22 of its stat).
fn start_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    crate::kernel::proc_stat::field(&stat, 22).and_then(|f| f.parse().ok()).ok_or_else(|| io::Error::other("bad stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_sees_its_process_exit_and_never_the_next_one() {
        let mut child = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let p = Process::open(child.id()).unwrap();
        assert!(p.alive());
        assert_eq!(p.read(Ok).unwrap(), child.id());
        assert!(start_ticks(child.id()).unwrap() <= boot_ticks().unwrap());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!p.alive());
        assert_eq!(p.read(|_| Ok(())).unwrap_err().raw_os_error(), Some(libc::ESRCH));
        assert!(Process::open(0).is_err());
    }

    #[test]
    fn the_peer_of_a_socket_is_the_process_that_connected() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Process::peer_of(&a).unwrap();
        assert_eq!(peer.process.pid(), std::process::id());
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert!(peer.process.alive());
    }
}
