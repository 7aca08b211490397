//! Starting the agent: fork, then in the child — before exec, with async-signal-safe calls only —
//! enter the sandbox cgroup, drop privileges, set `no_new_privs`, enter the Landlock domain,
//! install the socket-family filter, forbid core dumps, ask to die with leash, and mark every
//! inherited descriptor above stderr close-on-exec (a socket created outside the sandbox cgroup
//! is not judged by its programs). The agent's own code never runs outside the sandbox.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio::process::{Child, Command};

use super::identity::Identity;
use super::seccomp::SocketFamilyFilter;

/// Everything the child needs, prepared in the parent (no allocation happens after fork).
pub struct ChildSetup<'a> {
    pub program: &'a OsString,
    pub args: &'a [OsString],
    pub env: Vec<(OsString, OsString)>,
    pub identity: &'a Identity,
    /// `cgroup.procs` of the sandbox, open for writing; `None` when degraded without cgroups.
    pub cgroup_procs: Option<&'a File>,
    /// Prepared Landlock ruleset, if this kernel has Landlock.
    pub landlock: Option<RawFd>,
    /// The socket-family filter.
    pub seccomp: &'a SocketFamilyFilter,
}

/// Spawns the agent. Errors are those of fork, the pre-exec steps or exec itself (ENOENT when
/// the command is not found, EACCES when it is not executable).
pub fn spawn(setup: ChildSetup<'_>) -> io::Result<Child> {
    let mut cmd = Command::new(setup.program);
    cmd.args(setup.args).env_clear().envs(setup.env).kill_on_drop(false);
    let procs_fd = setup.cgroup_procs.map(|f| f.as_raw_fd());
    let landlock_fd = setup.landlock;
    let uid = setup.identity.uid.as_raw();
    let gid = setup.identity.gid.as_raw();
    let groups: Vec<libc::gid_t> = setup.identity.groups.iter().map(|g| g.as_raw()).collect();
    let parent = std::process::id() as libc::pid_t;
    let seccomp = setup.seccomp.clone();
    // SAFETY: the closure only makes raw syscalls on data prepared above; it allocates nothing
    // and takes no locks, as required between fork and exec in a multi-threaded process.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0))?;
            if let Some(fd) = procs_fd {
                // Writing 0 moves the writing process itself.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setresgid(gid, gid, gid))?;
            check(libc::setresuid(uid, uid, uid))?;
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
