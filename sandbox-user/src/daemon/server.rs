//! The Confine API's unix socket: accepting connections, identifying each caller by its peer
//! credentials, reading frames (with the descriptor a `confine` passes) and answering each
//! request. One thread per connection, up to [`MAX_CONNECTIONS`]; whatever a client sends, the
//! daemon answers or closes that connection, and keeps serving the others.

use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::{getsockopt, recvmsg, sockopt::PeerCredentials, ControlMessageOwned, MsgFlags};

use super::discovery::{self, DiscoveryError};
use super::metrics::RequestLabels;
use super::protocol::{self, ErrorCode, FrameError, Op, Reply, MAX_FRAME};
use super::sandboxes::{Caller, Node};

/// Connections served at once; more get a `busy` reply.
pub const MAX_CONNECTIONS: usize = 256;

/// Accepts connections forever.
pub fn serve(listener: UnixListener, node: Arc<Node>) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = protocol::write_json(&mut stream, &Reply::error(ErrorCode::Busy, "too many connections"));
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let node = node.clone();
        let open = open.clone();
        let spawned = std::thread::Builder::new().name("leash-api".into()).spawn(move || {
            connection(stream, &node);
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            eprintln!("leash daemon: warning: cannot start a thread for a connection");
        }
    }
}

/// Serves one connection until the client closes it or breaks the framing.
fn connection(mut stream: UnixStream, node: &Node) {
    let _ = stream.set_read_timeout(Some(protocol::READ_TIMEOUT));
    let peer = match getsockopt(&stream, PeerCredentials) {
        Ok(c) => c,
        Err(e) => {
            let _ = protocol::write_json(
                &mut stream,
                &Reply::error(ErrorCode::Internal, format!("no peer credentials: {e}")),
            );
            return;
        }
    };
    loop {
        let (body, fds) = match read_frame_with_fds(&stream) {
            Ok(f) => f,
            Err(FrameError::Closed) => return,
            Err(e) => {
                let code =
                    if matches!(e, FrameError::TooLarge(_)) { ErrorCode::TooLarge } else { ErrorCode::BadRequest };
                let _ = protocol::write_json(&mut stream, &Reply::error(code, e.to_string()));
                return;
            }
        };
        let started = Instant::now();
        let (op, reply) = match protocol::parse_request(&body) {
            Ok(request) => {
                let name = op_name(&request.op);
                (name, answer(node, peer.pid() as u32, request.op, fds))
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

/// Answers one parsed request from process `pid`.
fn answer(node: &Node, pid: u32, op: Op, mut fds: Vec<OwnedFd>) -> Reply {
    // Who the caller is now: it may have been confined since it connected.
    let pod = match discovery::of_pid(pid) {
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
    let caller = Caller { pid, pod };
    let result = match op {
        Op::Hello {} => Ok(serde_json::json!({
            "api_version": protocol::VERSION,
            "daemon_version": env!("CARGO_PKG_VERSION"),
            "layers": node.node_layers(),
            "policies": node.policies.names(),
        })),
        Op::Policy { policy } => node.policy_text(&caller, policy.as_deref()).map(to_json),
        Op::Confine { policy, pid } => {
            if fds.len() > 1 {
                return Reply::error(ErrorCode::BadSocket, "pass exactly one descriptor: the proxy's listening socket");
            }
            node.confine(&caller, policy.as_deref(), pid, fds.pop()).map(to_json)
        }
        Op::Status { sandbox } => node.status(&caller, &sandbox),
        Op::Release { sandbox } => node.release(&caller, &sandbox).map(|()| serde_json::json!({})),
        Op::Owner { sandbox, port } => node.owner(&caller, &sandbox, port).map(to_json),
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

/// Reads one frame with `recvmsg`, keeping any descriptors passed with its bytes (at most 4;
/// the kernel closes extra ones).
fn read_frame_with_fds(stream: &UnixStream) -> Result<(Vec<u8>, Vec<OwnedFd>), FrameError> {
    let mut fds = Vec::new();
    let mut data = Vec::new();
    let mut want = 4usize;
    let mut buf = [0u8; 8192];
    while data.len() < want {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let limit = (want - data.len()).min(buf.len());
        let mut iov = [std::io::IoSliceMut::new(&mut buf[..limit])];
        let msg = match recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            // An idle connection that timed out between requests is simply closed.
            Err(nix::errno::Errno::EAGAIN) if data.is_empty() => return Err(FrameError::Closed),
            Err(e) => return Err(FrameError::Io(e.into())),
        };
        for c in msg.cmsgs().map_err(|e| FrameError::Io(e.into()))? {
            if let ControlMessageOwned::ScmRights(received) = c {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
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
