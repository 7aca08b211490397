//! Who may use the proxy. Under `leash run` it serves only its own sandbox: the sandbox's
//! programs record every connection it makes to the proxy from the proxy's own address, by client
//! port and socket cookie (`sandbox-ebpf/src/net/identity.rs`), and a connection is served only
//! if such a record names the socket now at its client end (`sock_diag`). Anything else (another
//! local user, root outside the sandbox, whoever took a port the sandbox's socket gave up while
//! its record stayed) is closed before a byte of it is read. The proxy forgets a record when the
//! connection (or the tunnel it became) ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::identity::OwnerSource;
use crate::kernel::programs::{holds, ConnectionOwners};

/// The sandbox's connection records, shared by the admission check and `binaries:` rules.
#[derive(Clone)]
pub struct SandboxPeers {
    owners: Arc<ConnectionOwners>,
    holders: Option<Arc<Holders>>,
    /// Whether a record must name the socket at the connection's client end
    /// (`ConnectionOwners::connection`); only a degraded run (no `sock_diag`) admits by record
    /// alone.
    by_socket: bool,
}

/// How often, and how long apart, a missing record is looked for again: the client side's
/// ingress program makes it at the SYN-ACK, before the final ACK, so it is normally there at
/// accept.
const RECHECKS: u32 = 3;
const RECHECK_DELAY: Duration = Duration::from_millis(2);

impl SandboxPeers {
    pub fn new(owners: ConnectionOwners) -> Self {
        Self { owners: Arc::new(owners), holders: None, by_socket: true }
    }

    /// Admits by the kernel's record alone, without asking which socket holds the client end: for
    /// a run `--allow-degraded` lets start without `sock_diag`.
    pub fn by_record_alone(mut self) -> Self {
        self.by_socket = false;
        self
    }

    /// Also checks, for `binaries:` rules, that every process of the sandbox (`procs`, its
    /// `cgroup.procs`) holding the connection's socket runs the executable that connected.
    /// `proxy` is the proxy's address (any of its ports).
    pub fn with_holders(mut self, procs: PathBuf, proxy: std::net::IpAddr) -> Self {
        self.holders = Some(Arc::new(Holders { procs, proxy }));
        self
    }

    /// Where the sandbox's connection from `peer` was meant to go, when transparent mode
    /// redirected it to the proxy; `None` for a connection made to the proxy itself.
    pub fn destination(&self, peer: SocketAddr, listener: u16) -> Option<SocketAddr> {
        self.owners.destination(peer, listener)
    }

    /// Whether `stream`, accepted from `peer` at the proxy's `local`, is a connection the
    /// sandbox made: a record names the socket now at its client end, and the proxy's end is
    /// still connected to it. (A reset connection is not: its client end may be another socket
    /// by now, even one of the sandbox that took the freed port after it.)
    pub async fn admits(&self, stream: &TcpStream, peer: SocketAddr, local: SocketAddr) -> Option<Admitted> {
        if peer.ip() != local.ip() {
            return None;
        }
        for attempt in 0..=RECHECKS {
            if let Some(owner) = self.owners.owner(peer.port(), local.port()) {
                let admitted = !self.by_socket || (holds(&owner, peer, local) && still_connected(stream));
                return admitted.then_some(Admitted { peer, listener: local.port(), cookie: owner.cookie });
            }
            if attempt < RECHECKS {
                tokio::time::sleep(RECHECK_DELAY).await;
            }
        }
        None
    }

    /// Forgets the record of an admitted connection once it ended.
    pub fn forget(&self, admitted: &Admitted) {
        self.owners.forget(admitted.peer.port(), admitted.listener, admitted.cookie);
    }

    /// The same records as a source of connection owners (for `binaries:` rules).
    pub fn owner_source(&self) -> Box<dyn OwnerSource> {
        Box::new(Shared { owners: self.owners.clone(), holders: self.holders.clone() })
    }
}

struct Shared {
    owners: Arc<ConnectionOwners>,
    holders: Option<Arc<Holders>>,
}

impl OwnerSource for Shared {
    /// The executable that connected, if every process now holding the socket runs it too: a
    /// process that connected and then exec'd an allowed program, or passed the socket on,
    /// does not lend that program's rights to the others holding the socket.
    fn binary(&self, peer: SocketAddr, listener: u16) -> Option<PathBuf> {
        let exe = self.owners.binary(peer, listener)?;
        match &self.holders {
            Some(h) if !h.all_run(peer, listener, &exe) => None,
            _ => Some(exe),
        }
    }

    fn pid(&self, peer: SocketAddr, listener: u16) -> Option<u32> {
        self.owners.pid(peer, listener)
    }

    fn destination(&self, peer: SocketAddr, listener: u16) -> Option<SocketAddr> {
        self.owners.destination(peer, listener)
    }
}

/// Who in the sandbox holds a connection's client socket.
struct Holders {
    procs: PathBuf,
    proxy: std::net::IpAddr,
}

impl Holders {
    fn all_run(&self, peer: SocketAddr, listener: u16, exe: &std::path::Path) -> bool {
        let to = SocketAddr::new(self.proxy, listener);
        super::identity::holders_all_run(&self.procs, std::path::Path::new("/proc/net"), peer, to, exe)
    }
}

/// Which connection [`SandboxPeers::admits`] let in: the client's address, the proxy port it
/// connected to, and the cookie of its socket.
pub struct Admitted {
    peer: SocketAddr,
    listener: u16,
    cookie: u64,
}

/// Whether the proxy's end of a connection is still connected: established (or, accepted early
/// by TCP Fast Open, about to be), or the client has only finished sending. Not after a reset.
fn still_connected(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd as _;
    // `struct tcp_info` starts with the state; the kernel copies no more than asked for.
    let mut info = [0u8; 8];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`; the descriptor is open.
    let r = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    // TCP_ESTABLISHED, TCP_SYN_RECV and TCP_CLOSE_WAIT (`include/net/tcp_states.h`).
    r == 0 && len >= 1 && matches!(info[0], 1 | 3 | 8)
}

/// A connection from the sandbox; its record is forgotten when the last of it (the request
/// stream, or the tunnel it was upgraded to) is dropped.
pub struct AdmittedStream {
    stream: TcpStream,
    /// The sandbox's records and the connection they admitted.
    peers: Option<(SandboxPeers, Admitted)>,
}

impl AdmittedStream {
    pub fn new(stream: TcpStream, peers: Option<(SandboxPeers, Admitted)>) -> Self {
        Self { stream, peers }
    }
}

impl AdmittedStream {
    /// Reads the first bytes waiting on the connection without consuming them.
    pub async fn peek(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.peek(buf).await
    }
}

impl Drop for AdmittedStream {
    fn drop(&mut self) {
        if let Some((peers, admitted)) = &self.peers {
            peers.forget(admitted);
        }
    }
}

impl tokio::io::AsyncRead for AdmittedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for AdmittedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy's end of a connection counts as connected while the client is there or has
    /// only shut its sending side, and not once the client reset it.
    #[tokio::test]
    async fn a_reset_connection_is_not_still_connected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();

        let live = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(still_connected(&accepted), "a live connection");
        live.shutdown(std::net::Shutdown::Write).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(still_connected(&accepted), "a client that only finished sending");

        let reset = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // SO_LINGER with a zero timeout: close sends a reset.
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        use std::os::fd::AsRawFd as _;
        // SAFETY: setsockopt with a linger struct of its own size on an open socket.
        let r = unsafe {
            libc::setsockopt(
                reset.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        drop(reset);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!still_connected(&accepted), "a connection its client reset");
    }
}
