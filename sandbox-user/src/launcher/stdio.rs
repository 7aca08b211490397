//! The agent inherits leash's stdin, stdout and stderr. If one of them is a network socket, it
//! was created outside the sandbox cgroup and no cgroup program judges it: refuse to start.

use anyhow::{bail, Result};

/// Fails when fd 0, 1 or 2 is a socket of a family other than AF_UNIX.
pub fn refuse_network_sockets() -> Result<()> {
    for fd in 0..3 {
        // SAFETY: fstat and getsockopt only write into the locals passed to them.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                continue;
            }
            let mut domain: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let ok = libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                (&mut domain as *mut libc::c_int).cast(),
                &mut len,
            ) == 0;
            if !ok || domain != libc::AF_UNIX {
                bail!("file descriptor {fd} (stdin/stdout/stderr) is a network socket; the agent would use it unconfined. Redirect it (for example through a pipe) and try again");
            }
        }
    }
    Ok(())
}
