//! Closing what a pod left in a connection the daemon does not serve. Closing a unix stream drops
//! the descriptors still in flight in it, in the closing thread, and some closes wait as long as
//! the pod likes: a TCP socket's `SO_LINGER` with unsent data, a socket nested in flight in a
//! unix socket that holds one. Done on the accepting thread, that stalled every pod's next
//! connection. So refused connections go to the [`Closer`]'s thread, which takes out what is in
//! flight (lingering turned off, nested sockets and listeners' connections drained too) before it
//! closes; and a close that waits all the same is cut short: such waits end at a signal, and a
//! watcher signals the closing thread while one has taken longer than [`PATIENCE`].

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one close may take before the closing thread is interrupted.
const PATIENCE: Duration = Duration::from_millis(100);

/// Connections waiting for the closing thread; past that the caller's thread closes one itself.
const BACKLOG: usize = 256;

/// Receives and accepts done to empty one connection of what is in flight in it.
const MAX_OPERATIONS: usize = 1 << 16;

/// `SO_PASSPIDFD` (6.5+; refused harmlessly before) and its control message, `SCM_PIDFD`.
const SO_PASSPIDFD: libc::c_int = 76;
const SCM_PIDFD: libc::c_int = 4;

/// The thread that closes refused connections.
pub struct Closer {
    queue: std::sync::mpsc::SyncSender<UnixStream>,
}

impl Closer {
    pub fn start() -> Self {
        let (queue, next) = std::sync::mpsc::sync_channel::<UnixStream>(BACKLOG);
        // When the current close began (ms since `epoch`, plus one), 0 when none is under way;
        // and the closing thread, for the watcher to signal.
        let busy = Arc::new(AtomicU64::new(0));
        let thread = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        interruptible_waits();
        let (b, t) = (busy.clone(), thread.clone());
        let started = std::thread::Builder::new().name("leash-closer".into()).spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            t.store(unsafe { libc::pthread_self() } as u64, Ordering::SeqCst);
            while let Ok(stream) = next.recv() {
                b.store(epoch.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
                discard(stream);
                b.store(0, Ordering::SeqCst);
            }
        });
        let watched = std::thread::Builder::new().name("leash-closer-watch".into()).spawn(move || loop {
            std::thread::sleep(PATIENCE / 2);
            let since = busy.load(Ordering::SeqCst);
            let closer = thread.load(Ordering::SeqCst);
            if since != 0 && closer != 0 && epoch.elapsed().as_millis() as u64 + 1 > since + PATIENCE.as_millis() as u64
            {
                // SAFETY: signalling a thread of this process that lives as long as it does
                // (the closing thread never ends while the queue's sender lives).
                unsafe { libc::pthread_kill(closer as libc::pthread_t, libc::SIGURG) };
            }
        });
        if started.is_err() || watched.is_err() {
            crate::say!("leash daemon: warning: cannot start the threads that close refused connections");
        }
        Self { queue }
    }

    /// Closes `stream` on the closing thread, or here when that is behind.
    pub fn close(&self, stream: UnixStream) {
        match self.queue.try_send(stream) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(stream) | std::sync::mpsc::TrySendError::Disconnected(stream)) => {
                discard(stream)
            }
        }
    }
}

/// SIGURG, handled by doing nothing and without `SA_RESTART`: a wait it interrupts ends (the
/// closing thread's only), where by default SIGURG is ignored and interrupts nothing.
fn interruptible_waits() {
    extern "C" fn nothing(_: libc::c_int) {}
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(nothing),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGURG, &action) };
}

/// Takes out what is in flight in `stream`, then closes it.
fn discard(stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let mut work = vec![stream.into()];
    let mut seen = HashSet::new();
    let mut operations = 0;
    while let Some(fd) = work.pop() {
        drain_one(fd, &mut work, &mut seen, &mut operations);
    }
}

/// Receives what is queued on socket `fd` (or accepts what a listening one holds) without
/// waiting, each descriptor received or accepted going to `work` with its lingering turned off,
/// then closes `fd`. A socket already drained (`seen`) is only closed.
fn drain_one(fd: OwnedFd, work: &mut Vec<OwnedFd>, seen: &mut HashSet<(u64, u64)>, operations: &mut usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let Ok(stat) = nix::sys::stat::fstat(&fd) else { return };
    if !seen.insert((stat.st_dev, stat.st_ino)) {
        return;
    }
    // Its own flags are the pod's to set: no waiting here, and no linger when it is closed.
    let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK));
    let _ = setsockopt(&fd, sockopt::Linger, &libc::linger { l_onoff: 0, l_linger: 0 });
    if getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
        while *operations < MAX_OPERATIONS {
            *operations += 1;
            match nix::sys::socket::accept4(fd.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 just made this descriptor for us.
                Ok(accepted) => work.push(unsafe { OwnedFd::from_raw_fd(accepted) }),
                Err(_) => return,
            }
        }
        return;
    }
    let datagrams = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == nix::sys::socket::SockType::Datagram);
    // Credentials, a pidfd or a security label would take the room of descriptors.
    let _ = setsockopt(&fd, sockopt::PassCred, &false);
    for option in [libc::SO_PASSSEC, SO_PASSPIDFD] {
        let off: libc::c_int = 0;
        // SAFETY: setsockopt from a local int of the size given; refused harmlessly.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::addr_of!(off).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let mut buf = [0u8; 4096];
    while *operations < MAX_OPERATIONS {
        *operations += 1;
        let Ok(got) = recv_with_fds(fd.as_fd(), &mut buf, 253) else { return };
        // The end of a stream; an empty datagram is only one message.
        if got.bytes == 0 && got.fds.is_empty() && !datagrams {
            return;
        }
        work.extend(got.fds);
    }
}

/// One message received without waiting: its bytes, and every descriptor the kernel installed
/// with it (also when it truncated the rest, which it then closed), and whether it did.
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

/// recvmsg(2) of one message on `fd` into `buf`, with room for `room` descriptors and for
/// credentials, a pidfd and a security label besides. Unlike a parser that refuses a truncated
/// control buffer, it owns every descriptor installed (`SCM_RIGHTS`, `SCM_PIDFD`), so none is
/// left open.
pub fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> std::io::Result<Received> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((room * std::mem::size_of::<libc::c_int>()) as u32) } as usize + 4096;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: a zeroed msghdr is valid; its buffers are set below and outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    // SAFETY: recvmsg into the buffers described by `msg`.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, within the length it
    // set; SCM_RIGHTS and SCM_PIDFD hold whole ints, installed descriptors that are ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && matches!((*c).cmsg_type, libc::SCM_RIGHTS | SCM_PIDFD) {
                let data = libc::CMSG_DATA(c);
                let len = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let at = data.add(i * std::mem::size_of::<libc::c_int>()).cast::<libc::c_int>();
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(at)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received { bytes: n as usize, fds, truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}
