//! Who may use the proxy. Under `leash run` it serves only its own sandbox: the sandbox's
//! programs record every connection it makes to the proxy under its socket's cookie
//! (`sandbox-ebpf/src/net/identity.rs`), and a connection from the proxy's own address is served
//! only if the socket the kernel says is at its client end (`sock_diag`) has such a record.
//! Anything else (another local user, root outside the sandbox, whoever took a port the
//! sandbox's socket gave up) is closed before a byte of it is read. The proxy takes an admitted
//! connection's record out of the kernel's map and forgets it when the connection (or the tunnel
//! it became) ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

use super::identity::OwnerSource;
use crate::kernel::programs::ConnectionOwners;
use sandbox_common::ConnOwner;

/// The sandbox's connection records, shared by the admission check and `binaries:` rules.
#[derive(Clone)]
pub struct SandboxPeers {
    owners: Arc<ConnectionOwners>,
    admitted: Arc<Admissions>,
    holders: Option<Arc<Holders>>,
    /// Whether the kernel can say which socket is at a connection's client end (`sock_diag`);
    /// without it no record can be found, and a degraded run serves no connection.
    by_socket: bool,
}

/// The records of the connections being served, by client address and proxy port. A record
/// leaves the kernel's map when its connection is admitted: the map is shared by every sandbox
/// on the host and evicts its oldest records when full, and a record kept here can be evicted
/// by no one, nor does reading it again (`binaries:` rules, per request) ask `sock_diag`.
type Admissions = Mutex<HashMap<(SocketAddr, u16), ConnOwner>>;

impl SandboxPeers {
    pub fn new(owners: ConnectionOwners) -> Self {
        Self { owners: Arc::new(owners), admitted: Arc::default(), holders: None, by_socket: true }
    }

    /// Admits no connection: for a run `--allow-degraded` lets start without `sock_diag`, which
    /// cannot tell the sandbox's connections from others'.
    pub fn without_sock_diag(mut self) -> Self {
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

    /// Whether `stream`, accepted from `peer` at the proxy's `local`, is a connection the
    /// sandbox made: the sandbox recorded the socket now at its client end, and the proxy's end is
    /// still connected to it. (A reset connection is not: its client end may be another socket
    /// by now, even one of the sandbox that took the freed port after it.) The record is made at
    /// `connect()`, before the SYN leaves, so it is there by the time the proxy accepts; an
    /// admitted connection's record moves from the kernel's map to this proxy's.
    pub fn admits(&self, stream: &TcpStream, peer: SocketAddr, local: SocketAddr) -> Option<Admitted> {
        if !self.by_socket || peer.ip() != local.ip() {
            return None;
        }
        let owner = self.owners.connection(peer, local)?;
        if !still_connected(stream) {
            return None;
        }
        self.owners.forget(owner.cookie);
        let key = (peer, local.port());
        self.admitted.lock().ok()?.insert(key, owner);
        Some(Admitted { key, owner, admissions: self.admitted.clone() })
    }

    /// The same records as a source of connection owners (for `binaries:` rules).
    pub fn owner_source(&self) -> Box<dyn OwnerSource> {
        Box::new(Shared { admitted: self.admitted.clone(), holders: self.holders.clone() })
    }
}

struct Shared {
    admitted: Arc<Admissions>,
    holders: Option<Arc<Holders>>,
}

impl Shared {
    fn owner(&self, peer: SocketAddr, listener: u16) -> Option<ConnOwner> {
        self.admitted.lock().ok()?.get(&(peer, listener)).copied()
    }
}

impl OwnerSource for Shared {
    /// The executable that connected, if every process now holding the socket runs it too: a
    /// process that connected and then exec'd an allowed program, or passed the socket on,
    /// does not lend that program's rights to the others holding the socket.
    fn binary(&self, peer: SocketAddr, listener: u16) -> Option<PathBuf> {
        let owner = self.owner(peer, listener)?;
        let exe = std::fs::read_link(format!("/proc/{}/exe", owner.pid)).ok()?;
        match &self.holders {
            Some(h) if !h.all_run(peer, listener, &exe) => None,
            _ => Some(exe),
        }
    }

    fn pid(&self, peer: SocketAddr, listener: u16) -> Option<u32> {
        self.owner(peer, listener).map(|o| o.pid)
    }

    fn destination(&self, peer: SocketAddr, listener: u16) -> Option<SocketAddr> {
        crate::kernel::programs::original_destination(&self.owner(peer, listener)?.dest)
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

/// Which connection [`SandboxPeers::admits`] let in: its client address and proxy port, and the
/// record of its client socket, which the proxy forgets when this is dropped (unless a later
/// connection from the same address, admitted since, holds the key now).
pub struct Admitted {
    key: (SocketAddr, u16),
    owner: ConnOwner,
    admissions: Arc<Admissions>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut map) = self.admissions.lock() {
            if map.get(&self.key).is_some_and(|o| o.cookie == self.owner.cookie) {
                map.remove(&self.key);
            }
        }
    }
}

impl Admitted {
    /// Where the connection was meant to go, when transparent mode redirected it to the proxy;
    /// `None` for a connection made to the proxy itself.
    pub fn destination(&self) -> Option<SocketAddr> {
        crate::kernel::programs::original_destination(&self.owner.dest)
    }
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
    /// The connection's admission, when the proxy serves only its sandbox.
    _admitted: Option<Admitted>,
}

impl AdmittedStream {
    pub fn new(stream: TcpStream, admitted: Option<Admitted>) -> Self {
        Self { stream, _admitted: admitted }
    }
}

impl AdmittedStream {
    /// Reads the first bytes waiting on the connection without consuming them.
    pub async fn peek(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.peek(buf).await
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
    use std::time::Duration;

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
