//! The client side of the Confine API (used by `leash confine`, the tests and the benchmark).

use std::io::Write as _;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use super::protocol::{self, ErrorBody, Op, Reply, Request, VERSION};

/// A failed request: the daemon's error, or a broken connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the leash daemon refused: {} ({:?})", .0.message, .0.code)]
    Refused(ErrorBody),
    #[error("talking to the leash daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the leash daemon sent an unreadable reply: {0}")]
    Reply(String),
}

/// One connection to the daemon.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "connecting to {}: {e} (is the leash daemon running on this node, and the socket mounted?)",
                    socket.display()
                ),
            )
        })?;
        Ok(Self::from_stream(stream))
    }

    pub fn from_stream(stream: UnixStream) -> Self {
        Self { stream }
    }

    /// Sends `op` and returns the reply's result.
    pub fn call(&mut self, op: Op) -> Result<serde_json::Value, ClientError> {
        self.call_with_fd(op, None)
    }

    /// Sends `op` with `fd` passed alongside (SCM_RIGHTS) and returns the reply's result.
    pub fn call_with_fd(&mut self, op: Op, fd: Option<BorrowedFd<'_>>) -> Result<serde_json::Value, ClientError> {
        self.call_with_fds(op, fd.as_slice())
    }

    /// One request whose frame carries `fds` (`confine` in transparent mode passes three).
    pub fn call_with_fds(&mut self, op: Op, fds: &[BorrowedFd<'_>]) -> Result<serde_json::Value, ClientError> {
        let body =
            serde_json::to_vec(&Request { version: VERSION, op }).map_err(|e| ClientError::Reply(e.to_string()))?;
        self.send_frame_with(&protocol::frame(&body), fds)?;
        self.read_reply()
    }

    /// Sends one frame as given (tests send malformed ones), its first byte carrying `fd`.
    pub fn send_frame(&mut self, frame: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
        self.send_frame_with(frame, fd.as_slice())
    }

    /// Sends one frame, its first byte carrying `fds`.
    fn send_frame_with(&mut self, frame: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if fds.is_empty() {
            return self.stream.write_all(frame);
        }
        let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [std::io::IoSlice::new(frame)];
        let sent = sendmsg::<()>(self.stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)?;
        self.stream.write_all(&frame[sent..])
    }

    /// Reads one reply.
    pub fn read_reply(&mut self) -> Result<serde_json::Value, ClientError> {
        let body = protocol::read_frame(&mut self.stream).map_err(|e| match e {
            protocol::FrameError::Io(e) => ClientError::Io(e),
            other => ClientError::Reply(other.to_string()),
        })?;
        let reply: Reply = serde_json::from_slice(&body).map_err(|e| ClientError::Reply(e.to_string()))?;
        match (reply.ok, reply.result, reply.error) {
            (true, Some(result), _) => Ok(result),
            (false, _, Some(error)) => Err(ClientError::Refused(error)),
            _ => Err(ClientError::Reply("neither a result nor an error".into())),
        }
    }

    /// The connection, for tests that send raw bytes.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}
