//! leash's own lines on stderr. The agent inherits the same open stderr (the same pipe, socket
//! or file description), so it can set `O_NONBLOCK` on it and fill it: `eprintln!` would then
//! panic in the middle of a teardown. [`say!`](crate::say) writes a line and, when the
//! descriptor would block, waits for it to take more for a bounded time, then gives up on the
//! line; it never panics. Once a line was given up on, later ones are tried once and dropped if
//! stderr is still full (the proxy writes refusal lines on its one thread, which must not wait
//! for each), until one gets through or [`restore`] is called for the last lines, once the
//! agent's processes are gone: it makes stderr blocking again if the agent made it
//! non-blocking. The crate denies `eprintln!` (`clippy::print_stderr`).

use std::io::Write as _;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one line may wait for a stderr the agent made non-blocking and full.
const PATIENCE: Duration = Duration::from_secs(2);

/// Set when a line was given up on: stderr is full and nobody drains it.
static STALLED: AtomicBool = AtomicBool::new(false);

/// Whether stderr was non-blocking when leash started ([`remember`]).
static WAS_NONBLOCKING: AtomicBool = AtomicBool::new(false);

/// Notes whether the stderr leash was given is non-blocking; call it before the agent starts.
pub fn remember() {
    WAS_NONBLOCKING.store(nonblocking().unwrap_or(false), Ordering::Relaxed);
}

/// For leash's last lines, once no process of the agent is left: a stderr the agent made
/// non-blocking is made blocking again (as leash was given it; the agent can no longer change
/// it), so that the last lines wait for a reader that pauses rather than being lost, and lines
/// wait again.
pub fn restore() {
    if !WAS_NONBLOCKING.load(Ordering::Relaxed) && nonblocking() == Some(true) {
        let fd = std::io::stderr().as_fd().as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on stderr change only its file status flags.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
    }
    STALLED.store(false, Ordering::Relaxed);
}

/// Whether stderr is non-blocking now; `None` when it cannot be told (closed).
fn nonblocking() -> Option<bool> {
    // SAFETY: F_GETFL reads the file status flags of stderr.
    let flags = unsafe { libc::fcntl(std::io::stderr().as_fd().as_raw_fd(), libc::F_GETFL) };
    (flags >= 0).then_some(flags & libc::O_NONBLOCK != 0)
}

/// Writes `args` and a newline to stderr; see the module's text. What a terminal would act on is
/// written out ([`printable`]): names the agent made reach these lines.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = printable(&args.to_string()).into_owned();
    text.push('\n');
    let stderr = std::io::stderr();
    let mut locked = stderr.lock();
    let mut rest = text.as_bytes();
    let deadline = if STALLED.load(Ordering::Relaxed) { Instant::now() } else { Instant::now() + PATIENCE };
    while !rest.is_empty() {
        match locked.write(rest) {
            Ok(0) => return,
            Ok(n) => {
                rest = &rest[n..];
                STALLED.store(false, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    STALLED.store(true, Ordering::Relaxed);
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

/// `text` with every character a terminal acts on written out as `\u{..}`: control characters
/// (a newline too: one call, one line, so that no name forges a line of leash's), and the
/// format characters that reorder or hide text (bidi controls, zero-width ones).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(acted_on) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars().map(|c| if acted_on(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// Whether a terminal (or a viewer of text) acts on `c` rather than showing it: control
/// characters (C0, DEL, C1) and the format characters that reorder or hide text.
pub fn acted_on(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Puts a terminal on stderr back in order after the agent had it: ends a control string it
/// left open (whatever leash wrote next would vanish into it), resets text attributes (hidden,
/// colours), selects the usual character set and shows the cursor. Nothing when stderr is not
/// a terminal.
pub fn reset_terminal() {
    let stderr = std::io::stderr();
    // SAFETY: isatty on stderr's descriptor.
    if unsafe { libc::isatty(stderr.as_fd().as_raw_fd()) } == 1 {
        // CAN, ST, SGR 0, SI, G0 = ASCII, cursor shown.
        let _ = stderr.lock().write_all(b"\x18\x1b\\\x1b[0m\x0f\x1b(B\x1b[?25h");
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
    #[test]
    fn what_a_terminal_acts_on_is_written_out() {
        assert_eq!(super::printable("plain: ümlaut é ✓"), "plain: ümlaut é ✓");
        let forged = "m\r\u{1b}[2A\u{1b}]52;c;eA==\u{7}leash: sandbox x ended (exit 0)\n\u{9b}\u{202e}abc\u{200b}";
        let shown = super::printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}' || c == '\u{200b}'), "{shown:?}");
        assert!(shown.contains("\\u{1b}") && shown.contains("\\u{a}") && shown.contains("\\u{202e}"), "{shown}");
    }

    /// A full, non-blocking stderr: the line is given up on after a while, without a panic, and
    /// the next at once.
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
            let next = std::time::Instant::now();
            crate::say!("leash: so does this one");
            assert!(next.elapsed() < super::PATIENCE / 4, "a stalled stderr made the next line wait too");
            super::restore();
            let flags = nix::fcntl::fcntl(std::io::stderr(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
            assert_eq!(flags & libc::O_NONBLOCK, 0, "restore left the stderr it was given as blocking non-blocking");
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
