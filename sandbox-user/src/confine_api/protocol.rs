//! The Confine API, version 1: what `leash confine` (or any client in a pod) and `leash daemon`
//! say to each other on the daemon's unix socket.
//!
//! # Framing
//! Every message, either way, is one frame: a 4-byte big-endian length `N`, then `N` bytes of
//! UTF-8 JSON (1 ≤ N ≤ [`MAX_FRAME`]). A connection carries any number of request/reply pairs,
//! strictly alternating. The daemon answers every request it can read with a reply — an error
//! reply for anything malformed — and closes the connection after a framing error, when a
//! request (or the whole of one frame) does not arrive within [`READ_TIMEOUT`], when a reply
//! cannot be written within [`WRITE_TIMEOUT`], and when a frame carries more than one descriptor.
//!
//! # Who is asking
//! The caller is the process that connected, held by a pidfd from then on (`SO_PEERPIDFD`,
//! Linux 6.5+; on older kernels `pidfd_open` of the `SO_PEERCRED` pid right at accept, which
//! leaves a window between connect and accept there), with its effective uid at connect time: pidfd → cgroup
//! → pod. Nothing a caller writes can change who it is, and no pid number stands for it: once
//! the process that connected exits, its connection is closed and nothing sent on it is
//! answered, even by a process that inherited it. A caller must be in a pod's container cgroup,
//! and not inside a leash sandbox.
//!
//! # Bounds (per pod; see `daemon/limits.rs`)
//! At most 16 connections per pod (256 per node) are served at once, more get `busy`; a pod
//! holds at most half the node's `--max-sandboxes` (at least one) live sandboxes at once, more get
//! `busy`.
//!
//! # Requests (`{"version":1,"op":...}`)
//! | op | fields | answer (`result`) |
//! |---|---|---|
//! | `hello` | — | daemon version, API version, layers this node enforces, the policy this pod may use (`policies`: none or one) |
//! | `policy` | `policy`? | the name and YAML text of the policy this pod may use (for its proxy) |
//! | `confine` | `policy`?, `pid`? + descriptors (SCM_RIGHTS): the proxy's listening TCP socket; for transparent mode also its transparent listener (TCP) and resolver (UDP) sockets | the new sandbox |
//! | `status` | `sandbox` | the sandbox: policy, proxy, processes, verdict counters |
//! | `release` | `sandbox` | — (every process in it is killed and its state removed) |
//! | `owner` | `sandbox`, `port`, `listener`?, `cookie` | the process that opened the proxy connection from client port `port` to the proxy's port `listener` (default: the proxy's own; or the transparent listener's), whose client socket has cookie `cookie` (as `sock_diag` reports it in the pod's network namespace); answered once, then the record is removed |
//!
//! `confine` moves process `pid` (as the caller sees it, in its own PID namespace: a container's,
//! or the node's for a `hostPID` pod; default: the caller) into a new cgroup
//! below its container's cgroup, confined to the address the passed socket listens on, in that
//! socket's network namespace. `policy`, when given, must be the one the pod may use (its
//! `leash.dev/policy` annotation, or the node's default). The target is held by a pidfd taken
//! when the request is read; its pod and uids are read through it and checked again after every
//! wait and right before and after the move (`cgroup.procs` takes only a number), so a target
//! that exits meanwhile is not replaced by whatever process gets its number. What is left: a
//! target that exits, is reaped and has its number taken in the microseconds between the last
//! check and the write. The daemon sees it after the write and answers `no_such_process`; the
//! process that was moved stays in a sandbox until it exits, and no pod owns that sandbox: the
//! caller can read its id in its own cgroupfs, but `status`, `release` and `owner` refuse it.
//!
//! `pid` must be in the caller's pod and run with the caller's uid: its real, effective and
//! saved uids must all equal the caller's effective uid. Root in a pod gets no exception (it may
//! confine only processes that are root throughout): the containers of a pod do not trust each
//! other's users, and the daemon cannot tell a container's root from another's. A process that
//! does not exist, is in another pod, or runs as another user gets one and the same answer,
//! `no_such_process` "no process N of yours": the answers tell nothing of processes outside the
//! caller's reach. `hello` names only the policy the caller's pod may use.
//!
//! With three descriptors the sandbox is in transparent mode: its TCP connects to anywhere but the
//! proxy go to the second socket (a listening TCP socket) and its DNS to the third (a bound UDP
//! socket), both on the proxy's address and in its network namespace; `owner` then also says
//! where a redirected connection was going (`dest`).
//!
//! A target that holds a TCP, UDP, raw, ping or packet socket (other than the passed proxy
//! listener, which `leash confine`'s child holds until it execs) is refused with `not_allowed`:
//! the cgroup programs judge a socket by the cgroup it was made in, so one made outside would go
//! unjudged. Checked again after the move; a target that holds one then is killed.
//!
//! # Replies
//! `{"version":1,"ok":true,"result":{...}}` or
//! `{"version":1,"ok":false,"error":{"code":"...","message":"..."}}` with a code of [`ErrorCode`].

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The API version this build speaks.
pub const VERSION: u32 = 1;

/// Largest frame body either side accepts.
pub const MAX_FRAME: u32 = 64 * 1024;

/// How long the daemon waits for a request, from the moment it starts waiting to its last byte.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the daemon waits for a client to take a reply before it closes the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A request as sent on the wire (parsed with [`parse_request`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub op: Op,
}

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// (A struct variant, so that unknown fields are refused here too.)
    Hello {},
    Policy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
    },
    Confine {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
    },
    Status {
        sandbox: String,
    },
    Release {
        sandbox: String,
    },
    Owner {
        sandbox: String,
        port: u16,
        /// The proxy port the connection went to; default: the proxy's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listener: Option<u16>,
        /// The cookie of the socket at the connection's client end, as `sock_diag` in the pod's
        /// network namespace reports it: the sandbox's record is kept under it.
        cookie: u64,
    },
}

/// A reply as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a frame, not JSON, not a request of this version, or a field out of range.
    BadRequest,
    /// `version` is not one this daemon speaks.
    UnsupportedVersion,
    /// The frame is longer than [`MAX_FRAME`].
    TooLarge,
    /// The caller is not in a pod's container cgroup.
    NotInPod,
    /// The caller is inside a leash sandbox: confined processes cannot ask for anything.
    Confined,
    /// The pod may not use leash, or not that policy; or the API server has not shown the pod
    /// within the daemon's `--pod-wait-ms`.
    NotAllowed,
    /// No policy of that name on this node (or it does not compile).
    NoSuchPolicy,
    /// The process does not exist (any more), is in another pod or runs as another user: the
    /// three are not told apart.
    NoSuchProcess,
    /// The sandbox belongs to another pod, or does not exist: the two are not told apart.
    NoSuchSandbox,
    /// The passed descriptor is missing or not a listening TCP socket on a specific address.
    BadSocket,
    /// The policy needs a layer this node cannot enforce (fail closed).
    LayerMissing,
    /// The daemon or the caller's pod is at its limit of sandboxes or connections.
    Busy,
    /// Something failed on the daemon's side; the message says what.
    Internal,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Self {
        Self { version: VERSION, ok: true, result: Some(result), error: None }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { version: VERSION, ok: false, result: None, error: Some(ErrorBody { code, message: message.into() }) }
    }
}

/// The `confine` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confined {
    /// The sandbox's id, for `status`, `release` and `owner`.
    pub sandbox: String,
    pub policy: String,
    /// The one address the sandbox reaches.
    pub proxy: SocketAddr,
    /// Whether connects are also checked against the proxy's network namespace (5.14+ kernels
    /// report the socket's namespace).
    pub netns_scoped: bool,
    /// The layers in force for it.
    pub layers: Vec<String>,
    /// Whether its connects elsewhere and its DNS go to the passed transparent sockets.
    #[serde(default)]
    pub transparent: bool,
}

/// The `policy` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyText {
    pub name: String,
    pub yaml: String,
}

/// The `owner` answer: the process that opened a proxy connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The pid as the caller's pid namespace sees it (0 when it does not see it).
    pub pid: u32,
    pub uid: u32,
    /// The executable, when the daemon could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Where the process connected, when transparent mode redirected the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<SocketAddr>,
}

/// Parses a request body: the version first (so an old or new client hears which versions this
/// daemon speaks), then the operation, refusing unknown operations and fields.
pub fn parse_request(body: &[u8]) -> Result<Request, Reply> {
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Reply::error(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let object =
        value.as_object_mut().ok_or_else(|| Reply::error(ErrorCode::BadRequest, "a request is a JSON object"))?;
    let version = object
        .remove("version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Reply::error(ErrorCode::BadRequest, "`version` (a number) is missing"))?;
    if version != u64::from(VERSION) {
        return Err(Reply::error(
            ErrorCode::UnsupportedVersion,
            format!("API version {version} is not spoken here; this daemon speaks version {VERSION}"),
        ));
    }
    let op = serde_json::from_value(value).map_err(|e| Reply::error(ErrorCode::BadRequest, e.to_string()))?;
    Ok(Request { version: VERSION, op })
}

/// A framing failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("empty frame")]
    Empty,
    #[error("a frame carries at most one descriptor")]
    TooManyDescriptors,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame body. `Closed` only when the peer closed cleanly before a frame began.
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// The bytes of one frame holding `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes `value` as one frame.
pub fn write_json(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let body = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    w.write_all(&frame(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_with_their_documented_spelling() {
        let r = parse_request(br#"{"version":1,"op":"confine","policy":"default"}"#).unwrap();
        assert_eq!(r.op, Op::Confine { policy: Some("default".into()), pid: None });
        let r = parse_request(br#"{"version":1,"op":"owner","sandbox":"ab","port":4,"cookie":9}"#).unwrap();
        assert_eq!(r.op, Op::Owner { sandbox: "ab".into(), port: 4, listener: None, cookie: 9 });
        let back = serde_json::to_vec(&r).unwrap();
        assert_eq!(parse_request(&back).unwrap(), r);
    }

    #[test]
    fn unknown_ops_and_fields_are_refused() {
        let code = |body: &[u8]| parse_request(body).unwrap_err().error.unwrap().code;
        assert_eq!(code(br#"{"version":1,"op":"escape"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"status"}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"owner","sandbox":"a","port":70000,"cookie":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"owner","sandbox":"a","port":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":1,"op":"hello","extra":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"version":2,"op":"hello"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(br#"[1]"#), ErrorCode::BadRequest);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::BadRequest);
    }

    #[test]
    fn frames_are_length_checked() {
        let mut big = (MAX_FRAME + 1).to_be_bytes().to_vec();
        big.extend([0u8; 8]);
        assert!(matches!(read_frame(&mut big.as_slice()), Err(FrameError::TooLarge(_))));
        assert!(matches!(read_frame(&mut [0u8, 0, 0, 0].as_slice()), Err(FrameError::Empty)));
        assert!(matches!(read_frame(&mut [0u8, 0].as_slice()), Err(FrameError::Io(_))));
        assert!(matches!(read_frame(&mut [0u8; 0].as_slice()), Err(FrameError::Closed)));
        let f = frame(b"{}");
        assert_eq!(read_frame(&mut f.as_slice()).unwrap(), b"{}");
    }
}

/// Generated frames and requests (issue 16); the `confine_frame` fuzz target also bounds the
/// decoder's allocations.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn a_frame_is_read_whole_or_refused(len in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            match read_frame(&mut bytes.as_slice()) {
                Ok(read) => {
                    prop_assert!((1..=MAX_FRAME).contains(&len) && read.len() == len as usize);
                    prop_assert_eq!(&read[..], &body[..len as usize]);
                }
                Err(FrameError::Empty) => prop_assert_eq!(len, 0),
                Err(FrameError::TooLarge(n)) => prop_assert!(n == len && len > MAX_FRAME),
                Err(FrameError::Io(_)) => prop_assert!((len as usize) > body.len() && len <= MAX_FRAME),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn every_body_gets_a_request_or_an_error_reply(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            match parse_request(&body) {
                Ok(r) => prop_assert_eq!(parse_request(&serde_json::to_vec(&r).expect("json")).expect("again"), r),
                Err(reply) => prop_assert!(!reply.ok && reply.error.is_some()),
            }
        }

        #[test]
        fn generated_requests_round_trip(sandbox in "\\PC{0,12}", port in any::<u16>(), pid in proptest::option::of(any::<u32>())) {
            for op in [Op::Owner { sandbox: sandbox.clone(), port, listener: pid.map(|p| p as u16), cookie: u64::from(port) << 40 }, Op::Confine { policy: Some(sandbox.clone()), pid }] {
                let request = Request { version: VERSION, op };
                let body = serde_json::to_vec(&request).expect("json");
                prop_assert_eq!(read_frame(&mut frame(&body).as_slice()).expect("a frame"), body.clone());
                prop_assert_eq!(parse_request(&body).expect("parses"), request);
            }
        }
    }
}
