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

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use super::discovery::{self, DiscoveryError};
use super::limits::{Connections, MAX_FDS_PER_FRAME};
use super::metrics::RequestLabels;
use super::process::{Peer, Process};
use super::sandboxes::{Caller, Node};
use crate::confine_api::protocol::{self, ErrorCode, FrameError, Op, Reply, MAX_FRAME};

/// Accepts connections forever.
pub fn serve(listener: UnixListener, node: Arc<Node>) {
    let connections = Connections::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // The process that connected has exited already: nobody to answer.
        let Ok(peer) = Process::peer_of(&stream) else {
            discard(stream);
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
                discard(stream);
                continue;
            }
        };
        let node = node.clone();
        let spawned = std::thread::Builder::new().name("leash-api".into()).spawn(move || {
            let _slot = slot;
            connection(stream, peer, &node);
        });
        if spawned.is_err() {
            // The closure, its slot and the connection with it, is dropped: the place is free again.
            crate::say!("leash daemon: warning: cannot start a thread for a connection");
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
/// with lingering off, taking out what is in flight in them in turn (`depth` deep so far).
fn drain_in_flight(fd: BorrowedFd<'_>, depth: usize) {
    /// Messages read from one socket: enough for any queue a socket buffer holds.
    const MAX_MESSAGES: usize = 1024;
    for _ in 0..MAX_MESSAGES {
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        // Room for SCM_MAX_FD (253): a truncated message would have the rest closed here.
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
        let Ok(msg) = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) else { return };
        let mut received = Vec::new();
        for c in msg.cmsgs().into_iter().flatten() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                received.extend(fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if msg.bytes == 0 && received.is_empty() {
            return;
        }
        for fd in received {
            let off = libc::linger { l_onoff: 0, l_linger: 0 };
            // SAFETY: SO_LINGER with a valid struct linger; on a descriptor that is no socket
            // it fails (ENOTSOCK), harmlessly.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    std::ptr::addr_of!(off).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            if depth < 5 {
                drain_in_flight(fd.as_fd(), depth + 1);
            }
        }
    }
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
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS_PER_FRAME + 1]);
        let limit = (want - data.len()).min(buf.len());
        let mut iov = [std::io::IoSliceMut::new(&mut buf[..limit])];
        let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
        let msg = match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), flags) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(FrameError::Io(e.into())),
        };
        let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
        for c in msg.cmsgs().map_err(|e| FrameError::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if truncated || fds.len() > MAX_FDS_PER_FRAME {
            return Err(FrameError::TooManyDescriptors);
        }
        let n = msg.bytes;
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
