//! leash's own lines on stderr. The agent inherits the same open stderr (the same pipe, socket
//! or file description), so it can set `O_NONBLOCK` on it and fill it: `eprintln!` would then
//! panic in the middle of a teardown. [`say!`](crate::say) writes a line and, when the
//! descriptor would block, waits for it to take more for a bounded time, then gives up on the
//! line; it never panics. The crate denies `eprintln!` (`clippy::print_stderr`).

use std::io::Write as _;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::time::{Duration, Instant};

/// How long one line may wait for a stderr the agent made non-blocking and full.
const PATIENCE: Duration = Duration::from_secs(2);

/// Writes `args` and a newline to stderr; see the module's text.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    let stderr = std::io::stderr();
    let mut locked = stderr.lock();
    let mut rest = text.as_bytes();
    let deadline = Instant::now() + PATIENCE;
    while !rest.is_empty() {
        match locked.write(rest) {
            Ok(0) => return,
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                let wait = left.min(Duration::from_millis(100)).as_millis() as libc::c_int;
                let mut fd = libc::pollfd { fd: stderr.as_fd().as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: poll(2) on one valid descriptor; it writes only `revents`.
                let _ = unsafe { libc::poll(&mut fd, 1, wait) };
            }
            Err(_) => return,
        }
    }
}

/// `eprintln!` that never panics: [`line`].
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::stderr::line(format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    /// A full, non-blocking stderr: the line is given up on after a while, without a panic.
    #[test]
    fn a_full_nonblocking_stderr_loses_the_line_without_a_panic() {
        // A child process, so that this test's own stderr stays as it is.
        let exe = std::env::current_exe().unwrap();
        if std::env::var_os("LEASH_STDERR_CHILD").is_some() {
            let (_read, write) = nix::unistd::pipe().unwrap();
            nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
            while nix::unistd::write(&write, &[b'x'; 4096]).is_ok() {}
            nix::unistd::dup2_stderr(&write).unwrap();
            let started = std::time::Instant::now();
            crate::say!("leash: this line finds the pipe full");
            assert!(started.elapsed() >= super::PATIENCE, "gave up at once");
            std::process::exit(7);
        }
        let status = std::process::Command::new(exe)
            .args(["--exact", "stderr::tests::a_full_nonblocking_stderr_loses_the_line_without_a_panic"])
            .env("LEASH_STDERR_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(7), "the child panicked or failed: {status}");
    }
}
