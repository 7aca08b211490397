//! The agent's terminal. The agent always starts a session of its own (`setsid`), so the user's
//! terminal is not its controlling terminal and `TIOCSTI` cannot push characters into the user's
//! input queue (nor can `TIOCSCTTY` take the terminal over). When one of leash's standard
//! descriptors is a terminal, the agent gets a pseudo-terminal of its own whose slave replaces
//! each of its standard descriptors that was a terminal, and leash relays bytes between the two
//! (as sudo's `use_pty` does): its output always, keystrokes when stdin is the terminal, which is
//! put in raw mode meanwhile, so Ctrl-C and friends reach the agent through its own terminal's
//! line discipline. Window-size changes are passed on. A terminal the agent held itself, even
//! one that is only leash's stdout, could be read (the user's next keystrokes) and set.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::termios::{self, SetArg, Termios};

/// What the child does with its terminal before exec.
#[derive(Debug, Clone, Copy)]
pub enum Terminal {
    /// A new session, descriptors as inherited (leash's stdin is not a terminal).
    NewSession,
    /// A new session with this pty slave as controlling terminal, replacing the standard
    /// descriptors that were terminals.
    Pty { slave: RawFd, replace: [bool; 3] },
}

/// leash's side of the agent's pseudo-terminal while the agent runs.
pub struct Relay {
    /// The settings of the user's terminal, stdin, put in raw mode: restored when the relay ends.
    restore: Option<Termios>,
    /// leash's copy of the slave, until the agent holds its own.
    slave: Option<OwnedFd>,
    output: Option<std::thread::JoinHandle<()>>,
    winch: tokio::task::JoinHandle<()>,
}

/// Whether descriptor `fd` is a terminal.
fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// A pty for the agent when any of stdin, stdout and stderr is a terminal, else `None` (the
/// agent gets a new session only). Even a terminal that is only leash's stdout can be read and
/// set by whoever holds it: the agent would read what the user types next, and leave echo off.
/// The pty is made in `devpts`, the agent's own ([`super::mount_ns::detached_devpts`]), where
/// given (its terminal is then `/dev/pts/0` of the agent's namespace, owned by `agent_uid`); in
/// the host's otherwise.
pub fn open(devpts: Option<BorrowedFd<'_>>, agent_uid: u32) -> Result<Option<Relay>> {
    let Some(tty) = (0..3).find(|&fd| is_tty(fd)) else { return Ok(None) };
    // SAFETY: `tty` is a terminal (checked above) and stays open for the life of leash.
    let user = unsafe { BorrowedFd::borrow_raw(tty) };
    let saved = termios::tcgetattr(user).context("reading the terminal's settings")?;
    let pty = match devpts {
        Some(devpts) => pty_in(devpts, agent_uid, &saved).context("opening a pseudo-terminal for the agent")?,
        None => nix::pty::openpty(None, Some(&saved)).context("opening a pseudo-terminal for the agent")?,
    };
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    }
    copy_window_size(tty, pty.master.as_raw_fd());
    let master_fd = pty.master.as_raw_fd();
    let winch = tokio::spawn(async move {
        let Ok(mut changes) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
            return;
        };
        while changes.recv().await.is_some() {
            copy_window_size(tty, master_fd);
        }
    });
    // Keystrokes, when stdin is the terminal: the user's terminal to the agent's, in raw mode
    // meanwhile. This thread blocks on the user's terminal and ends with leash.
    let restore = if tty == 0 {
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(user, SetArg::TCSADRAIN, &raw).context("putting the terminal in raw mode")?;
        let keys = File::from(dup(0)?);
        let to_agent = File::from(pty.master.try_clone().context("duplicating the pty master")?);
        std::thread::Builder::new()
            .name("leash-tty-in".into())
            .spawn(move || pump(keys, to_agent))
            .context("starting the terminal relay")?;
        Some(saved)
    } else {
        None
    };
    // Output: the agent's terminal to the first of stdout and stderr that is a terminal.
    let screen = match [1, 2].into_iter().find(|&fd| is_tty(fd)) {
        Some(fd) => File::from(dup(fd)?),
        None => File::options().write(true).open("/dev/null").context("opening /dev/null")?,
    };
    let from_agent = File::from(pty.master);
    let output = std::thread::Builder::new()
        .name("leash-tty-out".into())
        .spawn(move || pump(from_agent, screen))
        .context("starting the terminal relay")?;
    Ok(Some(Relay { restore, slave: Some(pty.slave), output: Some(output), winch }))
}

impl Relay {
    /// How the child takes the pty.
    pub fn for_child(&self) -> Terminal {
        match &self.slave {
            Some(slave) => Terminal::Pty { slave: slave.as_raw_fd(), replace: [is_tty(0), is_tty(1), is_tty(2)] },
            None => Terminal::NewSession,
        }
    }

    /// Called once the agent started: leash's copy of the slave is closed, so the relay sees the
    /// end when the agent's processes close theirs.
    pub fn started(&mut self) {
        self.slave = None;
    }

    /// Ends the relay once the agent exited: waits briefly for its last output, then restores
    /// the user's terminal.
    pub fn finish(mut self) {
        self.winch.abort();
        if let Some(output) = self.output.take() {
            let deadline = std::time::Instant::now() + Duration::from_millis(500);
            while !output.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.restore_terminal();
    }

    fn restore_terminal(&self) {
        if let Some(saved) = &self.restore {
            // SAFETY: fd 0 is the terminal whose settings were saved in `open`.
            let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
            let _ = termios::tcsetattr(stdin, SetArg::TCSADRAIN, saved);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // As in `finish`; restoring twice is harmless.
        self.restore_terminal();
    }
}

/// A new pty of the devpts at `devpts`, its slave owned by `uid` (as `grantpt` would make it)
/// with the settings `termios`.
fn pty_in(devpts: BorrowedFd<'_>, uid: u32, termios: &Termios) -> Result<nix::pty::OpenptyResult> {
    // `TIOCGPTPEER` (`asm-generic/ioctls.h`, 4.13+): the slave of a master, opened without a path.
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: openat(2) and ioctl(2)s on descriptors owned here; each result is checked, and
    // each new descriptor owned at once.
    unsafe {
        let master = libc::openat(devpts.as_raw_fd(), c"ptmx".as_ptr(), flags);
        if master < 0 {
            return Err(std::io::Error::last_os_error()).context("opening ptmx of the agent's devpts");
        }
        let master = OwnedFd::from_raw_fd(master);
        let unlock: libc::c_int = 0;
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) != 0 {
            return Err(std::io::Error::last_os_error()).context("unlocking the pty");
        }
        let slave = libc::ioctl(master.as_raw_fd(), TIOCGPTPEER, flags);
        if slave < 0 {
            return Err(std::io::Error::last_os_error()).context("opening the pty's slave");
        }
        let slave = OwnedFd::from_raw_fd(slave);
        // Its group stays the devpts's (`tty`, `mount_ns::devpts_options`).
        if libc::fchown(slave.as_raw_fd(), uid, u32::MAX) != 0 {
            return Err(std::io::Error::last_os_error()).context("giving the agent its terminal");
        }
        termios::tcsetattr(&slave, SetArg::TCSANOW, termios).context("setting the agent's terminal")?;
        Ok(nix::pty::OpenptyResult { master, slave })
    }
}

/// A close-on-exec duplicate of `fd`.
fn dup(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor this process owns, or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("duplicating descriptor {fd}"));
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Copies bytes from `from` to `to` until either side ends.
fn pump(mut from: File, mut to: File) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// Copies the window size of terminal `from` to terminal `to`.
fn copy_window_size(from: RawFd, to: RawFd) {
    // SAFETY: TIOCGWINSZ and TIOCSWINSZ read and write one winsize struct.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &size);
        }
    }
}

/// The child's half, before exec, with raw syscalls only: a new session, and the pty as its
/// controlling terminal and standard descriptors.
pub fn enter(terminal: &Terminal) -> std::io::Result<()> {
    // SAFETY: raw syscalls on descriptors that stay open through this function.
    unsafe {
        if libc::setsid() < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Terminal::Pty { slave, replace } = terminal {
            if libc::ioctl(*slave, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (fd, yes) in replace.iter().enumerate() {
                if *yes && libc::dup2(*slave, fd as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
    }
    Ok(())
}
