//! The Confine API's unix socket: accepting connections, identifying each caller by the process
//! that connected (held by a pidfd from accept on, `process.rs`), reading frames (with the
//! descriptor a `confine` passes) and answering each request. One thread per connection, within
//! the per-pod bounds of `limits.rs`; whatever a client sends, the daemon answers or closes that
//! connection, and keeps serving the others. A connection whose caller has exited is closed
//! unanswered, whoever holds it now.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::discovery::{self, DiscoveryError};
use super::limits::{Connections, MAX_FDS_PER_FRAME};
use super::metrics::RequestLabels;
use super::process::{Peer, Process};
use super::sandboxes::{Caller, Node};
use crate::confine_api::protocol::{self, ErrorCode, FrameError, Op, Reply, MAX_FRAME};

/// Accepts connections forever.
pub fn serve(listener: UnixListener, node: Arc<Node>) {
    let connections = Connections::default();
    let reaper = Reaper::start();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // The process that connected has exited already: nobody to answer.
        let Ok(peer) = Process::peer_of(&stream) else {
            reaper.discard(stream);
            continue;
        };
        // The pod the connection counts against, fixed at accept (`""`: not a pod's process).
        let pod = discovery::of_process(&peer.process).map(|p| p.pod_uid).unwrap_or_default();
        let slot = match connections.acquire(&pod) {
            Ok(slot) => slot,
            Err(why) => {
                // Never blocks the accept loop: the reply fits the socket's buffer or is dropped.
                let _ = stream.set_nonblocking(true);
                let _ = protocol::write_json(&mut &stream, &Reply::error(ErrorCode::Busy, why));
                reaper.discard(stream);
                continue;
            }
        };
        let node = node.clone();
        // A second descriptor of the connection: a thread that cannot start drops its own here,
        // and the last one goes to the reaper.
        let kept = stream.try_clone();
        let spawned = std::thread::Builder::new().name("leash-api".into()).spawn(move || {
            let _slot = slot;
            connection(stream, peer, &node);
        });
        match (spawned, kept) {
            (Ok(_), _) => {}
            (Err(_), kept) => {
                // The closure, its slot with it, is dropped: the place is free again.
                crate::say!("leash daemon: warning: cannot start a thread for a connection");
                if let Ok(kept) = kept {
                    reaper.discard(kept);
                }
            }
        }
    }
}

/// The thread that closes the connections the accepting thread does not serve ([`discard`]), so
/// that however long a close takes, the next pod's connection is accepted. When it is behind
/// by [`Reaper::BACKLOG`] connections, the accepting thread discards one itself.
struct Reaper {
    queue: std::sync::mpsc::SyncSender<UnixStream>,
}

impl Reaper {
    const BACKLOG: usize = 256;

    fn start() -> Self {
        let (queue, next) = std::sync::mpsc::sync_channel::<UnixStream>(Self::BACKLOG);
        let started = std::thread::Builder::new().name("leash-reaper".into()).spawn(move || {
            while let Ok(stream) = next.recv() {
                discard(stream);
            }
        });
        if started.is_err() {
            crate::say!("leash daemon: warning: cannot start the thread that closes refused connections");
        }
        Self { queue }
    }

    fn discard(&self, stream: UnixStream) {
        match self.queue.try_send(stream) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(stream) | std::sync::mpsc::TrySendError::Disconnected(stream)) => {
                discard(stream)
            }
        }
    }
}

/// Closes a connection the accepting thread does not serve, without waiting on what the client
/// left in it. Closing a stream drops the descriptors still in flight in it, in the closing
/// thread, and the last close of a TCP socket with `SO_LINGER` waits there for its unsent data to
/// leave (a pod can make that wait as long as it likes): the accepting thread, and every pod's
/// next connection, would wait with it. So what is in flight is taken out first, lingering
/// turned off, and closed; so is what is in flight in unix sockets among it (the kernel nests
/// them at most four deep).
fn discard(stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    drain_in_flight(stream.as_fd(), 0);
}

/// Receives what is queued on socket `fd`, without waiting, and closes the descriptors in it
/// with lingering off, taking out what is in flight in them in turn (`depth` deep so far): what
/// is queued on a socket among them, and on the connections a listening one among them holds.
fn drain_in_flight(fd: BorrowedFd<'_>, depth: usize) {
    /// Messages read from one socket, and connections taken from one listening socket.
    const MAX_MESSAGES: usize = 1024;
    if sockopt_int(fd, libc::SO_ACCEPTCONN) == Some(1) {
        for _ in 0..MAX_MESSAGES {
            // SAFETY: accept4 on a descriptor we hold; the new descriptor is ours.
            let accepted = unsafe {
                libc::accept4(
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if accepted < 0 {
                return;
            }
            // SAFETY: accept4 just made this descriptor for us.
            let accepted = unsafe { OwnedFd::from_raw_fd(accepted) };
            drain_in_flight(accepted.as_fd(), depth + 1);
        }
        return;
    }
    let stream = sockopt_int(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM);
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_MESSAGES {
        // Room for SCM_MAX_FD (253): a truncated message would have the rest closed here.
        let Ok(got) = recv_with_fds(fd, &mut buf, 253) else { return };
        // A stream's end; an empty datagram is only one message.
        if got.bytes == 0 && got.fds.is_empty() && stream {
            return;
        }
        for received in got.fds {
            // What was sent on it is read without credentials, a pidfd or a security label
            // taking the room of descriptors; a closed one does not linger.
            for option in [libc::SO_PASSCRED, libc::SO_PASSSEC, SO_PASSPIDFD] {
                set_sockopt_int(received.as_fd(), option, 0);
            }
            let off = libc::linger { l_onoff: 0, l_linger: 0 };
            // SAFETY: SO_LINGER with a valid struct linger; on a descriptor that is no socket
            // it fails (ENOTSOCK), harmlessly.
            unsafe {
                libc::setsockopt(
                    received.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::addr_of!(off).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            // The kernel nests sockets in flight at most four deep.
            if depth < 5 {
                drain_in_flight(received.as_fd(), depth + 1);
            }
        }
    }
}

/// `SO_PASSPIDFD` (6.5+; refused harmlessly before).
const SO_PASSPIDFD: libc::c_int = 76;

/// An integer socket option of `fd`, if it is a socket that has it.
fn sockopt_int(fd: BorrowedFd<'_>, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a local int of the size given.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, option, std::ptr::addr_of_mut!(value).cast(), &mut len)
    };
    (rc == 0).then_some(value)
}

fn set_sockopt_int(fd: BorrowedFd<'_>, option: libc::c_int, value: libc::c_int) {
    // SAFETY: setsockopt from a local int of the size given; errors are harmless here.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// One message received without waiting: its bytes, every descriptor the kernel installed with
/// it (also when it had more than `room` and truncated the rest, which it then closed), and
/// whether it did.
struct Received {
    bytes: usize,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// recvmsg(2) of one message on `fd` into `buf`, with room for `room` descriptors. Unlike a
/// parser that refuses a truncated control buffer, it keeps every descriptor installed, so none
/// is left open unowned.
fn recv_with_fds(fd: BorrowedFd<'_>, buf: &mut [u8], room: usize) -> std::io::Result<Received> {
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((room * std::mem::size_of::<libc::c_int>()) as u32) } as usize;
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
    // set; each SCM_RIGHTS one holds whole ints, installed descriptors that are ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = ((*c).cmsg_len as usize).saturating_sub(data as usize - c as usize);
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let raw = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<libc::c_int>()).cast::<libc::c_int>(),
                    );
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received { bytes: n as usize, fds, truncated: msg.msg_flags & libc::MSG_CTRUNC != 0 })
}

/// Serves one connection until the client closes it, breaks the framing or its caller exits.
fn connection(mut stream: UnixStream, peer: Peer, node: &Node) {
    let _ = stream.set_write_timeout(Some(protocol::WRITE_TIMEOUT));
    loop {
        let (body, fds) = match read_frame_with_fds(&stream, &peer.process) {
            Ok(f) => f,
            Err(FrameError::Closed) => return,
            Err(e) => {
                let code =
                    if matches!(e, FrameError::TooLarge(_)) { ErrorCode::TooLarge } else { ErrorCode::BadRequest };
                let _ = protocol::write_json(&mut stream, &Reply::error(code, e.to_string()));
                return;
            }
        };
        // The caller is the process that connected; whoever sends on its connection once it is
        // gone gets nothing.
        if !peer.process.alive() {
            return;
        }
        let started = Instant::now();
        let (op, reply) = match protocol::parse_request(&body) {
            Ok(request) => {
                let name = op_name(&request.op);
                (name, answer(node, &peer, request.op, fds))
            }
            Err(reply) => ("invalid", reply),
        };
        let result =
            reply.error.as_ref().map(|e| format!("{:?}", e.code).to_lowercase()).unwrap_or_else(|| "ok".into());
        if op == "confine" && reply.ok {
            node.metrics.confine_seconds.observe(started.elapsed().as_secs_f64());
        }
        node.metrics.requests.get_or_create(&RequestLabels { op: op.into(), result }).inc();
        if protocol::write_json(&mut stream, &reply).and_then(|()| stream.flush()).is_err() {
            return;
        }
    }
}

/// Answers one parsed request from `peer`.
fn answer(node: &Node, peer: &Peer, op: Op, mut fds: Vec<OwnedFd>) -> Reply {
    // Who the caller is now: it may have been confined since it connected.
    let pod = match discovery::of_process(&peer.process) {
        Ok(p) => p,
        Err(DiscoveryError::NoProcess(..)) => {
            return Reply::error(ErrorCode::NoSuchProcess, "the calling process exited")
        }
        Err(e) => return Reply::error(ErrorCode::NotInPod, format!("the caller is not in a pod's container: {e}")),
    };
    if let Some(sandbox) = &pod.sandbox {
        return Reply::error(
            ErrorCode::Confined,
            format!("the caller is confined (sandbox {sandbox}) and may not use the daemon"),
        );
    }
    let caller = Caller { process: &peer.process, uid: peer.uid, pod };
    let result = match op {
        Op::Hello {} => Ok(serde_json::json!({
            "api_version": protocol::VERSION,
            "daemon_version": env!("CARGO_PKG_VERSION"),
            "layers": node.node_layers(),
            "policies": node.own_policy(&caller).into_iter().collect::<Vec<_>>(),
        })),
        Op::Policy { policy } => node.policy_text(&caller, policy.as_deref()).map(to_json),
        Op::Confine { policy, pid } => {
            node.confine(&caller, policy.as_deref(), pid, std::mem::take(&mut fds)).map(to_json)
        }
        Op::Status { sandbox } => node.status(&caller, &sandbox),
        Op::Release { sandbox } => node.release(&caller, &sandbox).map(|()| serde_json::json!({})),
        Op::Owner { sandbox, port, listener, cookie } => {
            node.owner(&caller, &sandbox, port, listener, cookie).map(to_json)
        }
    };
    match result {
        Ok(v) => Reply::ok(v),
        Err(reply) => reply,
    }
}

fn to_json(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Hello {} => "hello",
        Op::Policy { .. } => "policy",
        Op::Confine { .. } => "confine",
        Op::Status { .. } => "status",
        Op::Release { .. } => "release",
        Op::Owner { .. } => "owner",
    }
}

/// What a connection's thread waited for.
enum Ready {
    Readable,
    PeerExited,
    TimedOut,
}

/// Waits up to `timeout` for `stream` to be readable or `peer` to exit.
fn wait(stream: BorrowedFd<'_>, peer: BorrowedFd<'_>, timeout: Duration) -> std::io::Result<Ready> {
    let mut fds = [
        libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: peer.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: two valid pollfds.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(Ready::Readable) } else { Err(e) };
    }
    Ok(if fds[1].revents != 0 {
        Ready::PeerExited
    } else if fds[0].revents != 0 {
        Ready::Readable
    } else {
        Ready::TimedOut
    })
}

/// Reads one frame with `recvmsg`, keeping the descriptor passed with its bytes. More than
/// [`MAX_FDS_PER_FRAME`] descriptors fail the frame at once (the received ones are closed, the
/// connection with its queued ones too). The whole frame must arrive within `READ_TIMEOUT` of
/// its first byte, as must the first byte; the caller's exit ends the wait.
fn read_frame_with_fds(stream: &UnixStream, peer: &Process) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut fds = Vec::new();
    let mut data = Vec::new();
    let mut want = 4usize;
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + protocol::READ_TIMEOUT;
    while data.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match wait(stream.as_fd(), peer.pidfd(), left).map_err(FrameError::Io)? {
            Ready::Readable => {}
            Ready::PeerExited => return Err(FrameError::Closed),
            // An idle connection that timed out between requests is simply closed.
            Ready::TimedOut if data.is_empty() => return Err(FrameError::Closed),
            Ready::TimedOut => return Err(FrameError::Io(std::io::ErrorKind::TimedOut.into())),
        }
        let limit = (want - data.len()).min(buf.len());
        let got = match recv_with_fds(stream.as_fd(), &mut buf[..limit], MAX_FDS_PER_FRAME + 1) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock) => continue,
            Err(e) => return Err(FrameError::Io(e)),
        };
        // Installed descriptors are owned (and closed with `fds`) even when there were too many.
        fds.extend(got.fds);
        if got.truncated || fds.len() > MAX_FDS_PER_FRAME {
            return Err(FrameError::TooManyDescriptors);
        }
        let n = got.bytes;
        if n == 0 {
            return Err(if data.is_empty() {
                FrameError::Closed
            } else {
                FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        data.extend_from_slice(&buf[..n]);
        if want == 4 && data.len() >= 4 {
            let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            if len == 0 {
                return Err(FrameError::Empty);
            }
            if len > MAX_FRAME {
                return Err(FrameError::TooLarge(len));
            }
            want = 4 + len as usize;
        }
    }
    data.drain(..4);
    Ok((data, fds))
}
