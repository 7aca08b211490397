//! The Confine API's unix socket: accepting connections, identifying each caller by the process
//! that connected (held by a pidfd from accept on, `process.rs`), reading frames (with the
//! descriptor a `confine` passes) and answering each request. One thread per connection, within
//! the per-pod bounds of `limits.rs`; whatever a client sends, the daemon answers or closes that
//! connection, and keeps serving the others. A connection whose caller has exited is closed
//! unanswered, whoever holds it now.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::closer::{recv_with_fds, Closer};
use super::discovery::{self, DiscoveryError};
use super::limits::{Connections, MAX_FDS_PER_FRAME};
use super::metrics::RequestLabels;
use super::process::{Peer, Process};
use super::sandboxes::{Caller, Node};
use crate::confine_api::protocol::{self, ErrorCode, FrameError, Op, Reply, MAX_FRAME};

/// Accepts connections forever.
pub fn serve(listener: UnixListener, node: Arc<Node>) {
    let connections = Connections::default();
    let closer = Closer::start();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        // The process that connected has exited already: nobody to answer.
        let Ok(peer) = Process::peer_of(&stream) else {
            closer.close(stream);
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
                closer.close(stream);
                continue;
            }
        };
        let node = node.clone();
        // The connection goes to its thread once that has started: one that cannot start leaves
        // it here, for the closer.
        let (hand, handed) = std::sync::mpsc::sync_channel::<UnixStream>(1);
        let spawned = std::thread::Builder::new().name("leash-api".into()).spawn(move || {
            let _slot = slot;
            if let Ok(stream) = handed.recv() {
                connection(stream, peer, &node);
            }
        });
        match spawned {
            Ok(_) => {
                if let Err(e) = hand.send(stream) {
                    closer.close(e.0);
                }
            }
            Err(_) => {
                // The closure, its slot with it, is dropped: the place is free again.
                crate::say!("leash daemon: warning: cannot start a thread for a connection");
                closer.close(stream);
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
