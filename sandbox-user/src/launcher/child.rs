//! Starting the agent: fork, then in the child — before exec, with async-signal-safe calls only —
//! enter its own mount namespace, a session of its own and the sandbox cgroup, drop privileges, set `no_new_privs`, enter the Landlock domain,
//! install the socket-family filter, forbid core dumps, ask to die with leash, and mark every
//! inherited descriptor above stderr close-on-exec (a socket created outside the sandbox cgroup
//! is not judged by its programs). The agent's own code never runs outside the sandbox.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::process::{Child, Command};

use super::identity::Identity;
use super::mount_ns::PrivateMounts;
use super::seccomp::SocketFamilyFilter;
use super::terminal::{self, Terminal};

/// Everything the child needs, prepared in the parent (no allocation happens after fork).
pub struct ChildSetup<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
    pub env: Vec<(OsString, OsString)>,
    /// Who the agent becomes; `None`: it stays who leash is (an unprivileged `leash confine`).
    pub identity: Option<&'a Identity>,
    /// How the child enters its sandbox.
    pub enter: Enter<'a>,
    /// Prepared Landlock ruleset, if this kernel has Landlock.
    pub landlock: Option<RawFd>,
    /// The socket-family filter.
    pub seccomp: &'a SocketFamilyFilter,
    /// The agent's own mount namespace (`leash run`; entered while still root).
    pub mounts: Option<PrivateMounts>,
    /// A session of its own, and its own pty (`leash run`); `None` keeps leash's.
    pub terminal: Option<Terminal>,
}

/// How the child gets into its sandbox before exec.
pub enum Enter<'a> {
    /// Writes itself into the sandbox's `cgroup.procs`, open for writing (`leash run`).
    Cgroup(&'a File),
    /// Asks the node daemon: connects to its socket (so the daemon's peer credentials name the
    /// child), hands that connection to leash over `handoff`, and waits there for one byte,
    /// `1` once the daemon confined it (`leash confine`).
    /// `leash_end` is leash's end of the handoff pair, which the child closes first (so that
    /// leash closing its copy reads as "no" in the child).
    Daemon { socket: &'a nix::sys::socket::UnixAddr, handoff: RawFd, leash_end: RawFd },
    /// No sandbox (degraded run without cgroups).
    None,
}

/// The byte leash sends over the handoff socket once the daemon confined the child.
pub const CONFINED: u8 = b'1';

/// Spawns the agent. Errors are those of fork, the pre-exec steps or exec itself (ENOENT when
/// the command is not found, EACCES when it is not executable).
pub fn spawn(setup: ChildSetup<'_>) -> io::Result<Child> {
    let mut cmd = Command::new(setup.program);
    cmd.args(setup.args).env_clear().envs(setup.env).kill_on_drop(false);
    let procs_fd = match setup.enter {
        Enter::Cgroup(f) => Some(f.as_raw_fd()),
        _ => None,
    };
    let daemon = match setup.enter {
        Enter::Daemon { socket, handoff, leash_end } => Some((*socket, handoff, leash_end)),
        _ => None,
    };
    let landlock_fd = setup.landlock;
    let ids = setup.identity.map(|i| (i.uid.as_raw(), i.gid.as_raw()));
    let groups: Vec<libc::gid_t> =
        setup.identity.map(|i| i.groups.iter().map(|g| g.as_raw()).collect()).unwrap_or_default();
    let parent = std::process::id() as libc::pid_t;
    let seccomp = setup.seccomp.clone();
    let mounts = setup.mounts;
    let session = setup.terminal;
    // SAFETY: the closure only makes raw syscalls on data prepared above; it allocates nothing
    // and takes no locks, as required between fork and exec in a multi-threaded process.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
            // Before the sandbox: its BPF-LSM rules may refuse mount(2), which leash itself uses
            // here to build the agent's view of the filesystem.
            if let Some(m) = &mounts {
                m.enter()?;
            }
            if let Some(t) = &session {
                terminal::enter(t)?;
            }
            if let Some(fd) = procs_fd {
                // Writing 0 moves the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((socket, handoff, leash_end)) = &daemon {
                libc::close(*leash_end);
                enter_through_daemon(socket, *handoff)?;
            }
            if let Some((uid, gid)) = ids {
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if let Some(fd) = landlock_fd {
                if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            seccomp.install()?;
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            // Set after the uid change (which clears it); then make sure leash did not already die.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            cloexec_from(3);
            Ok(())
        });
    }
    cmd.spawn()
}

/// The child's half of `Enter::Daemon`, with raw syscalls only.
fn enter_through_daemon(socket: &nix::sys::socket::UnixAddr, handoff: RawFd) -> io::Result<()> {
    use nix::sys::socket::SockaddrLike as _;
    // SAFETY: raw syscalls on descriptors and buffers that live through this function.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::connect(fd, socket.as_ptr().cast(), socket.len()) != 0 {
            return Err(io::Error::last_os_error());
        }
        // One byte of data carrying the descriptor.
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut control = [0u64; 4];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        if libc::sendmsg(handoff, &msg, 0) != 1 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
        loop {
            let n = libc::read(handoff, byte.as_mut_ptr().cast(), 1);
            if n == 1 && byte[0] == CONFINED {
                return Ok(());
            }
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // leash said no (and why, on its stderr), or died.
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
}

/// Marks every descriptor from `first` up close-on-exec (std's own exec-error pipe already is,
/// so it keeps working). `close_range(CLOSE_RANGE_CLOEXEC)` needs 5.11; older kernels get a
/// loop over the descriptor limit.
unsafe fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: raw syscalls with no memory arguments.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 { lim.rlim_cur.min(1 << 20) } else { 4096 };
        for fd in first as libc::rlim_t..max {
            libc::fcntl(fd as i32, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
