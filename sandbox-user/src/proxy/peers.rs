//! Who may use the proxy. Under `leash run` it serves only its own sandbox: the sandbox's
//! programs record every connection it makes to the proxy from the proxy's own address, by client
//! port and socket cookie (`sandbox-ebpf/src/net/identity.rs`), and a connection is served only
//! if such a record names the socket now at its client end (`sock_diag`). Anything else (another
//! local user, root outside the sandbox, whoever took a port the sandbox's socket gave up while
//! its record stayed) is closed before a byte of it is read. The kernel removes a record when the
//! sandbox's socket is released, and the proxy when the connection (or the tunnel it became) ends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::identity::OwnerSource;
use crate::kernel::programs::ConnectionOwners;

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

    /// Whether `peer`, connected to the proxy at `local`, is a connection the sandbox made.
    pub async fn admits(&self, peer: SocketAddr, local: SocketAddr) -> bool {
        if peer.ip() != local.ip() {
            return false;
        }
        for attempt in 0..=RECHECKS {
            if self.owners.owner(peer.port(), local.port()).is_some() {
                return !self.by_socket || self.owners.connection(peer, local).is_some();
            }
            if attempt < RECHECKS {
                tokio::time::sleep(RECHECK_DELAY).await;
            }
        }
        false
    }

    /// Forgets the record of the connection from `peer` to the proxy's port `listener` once it
    /// ended.
    pub fn forget(&self, peer: SocketAddr, listener: u16) {
        self.owners.forget(peer.port(), listener);
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

/// A connection from the sandbox; its record is forgotten when the last of it (the request
/// stream, or the tunnel it was upgraded to) is dropped.
pub struct AdmittedStream {
    stream: tokio::net::TcpStream,
    /// The sandbox's records, the client's address and the proxy port it connected to.
    peers: Option<(SandboxPeers, SocketAddr, u16)>,
}

impl AdmittedStream {
    pub fn new(stream: tokio::net::TcpStream, peers: Option<(SandboxPeers, SocketAddr, u16)>) -> Self {
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
        if let Some((peers, peer, listener)) = &self.peers {
            peers.forget(*peer, *listener);
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
